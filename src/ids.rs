//! AWS identifiers that enipeer handles, checked for their prefix and shape when parsed so that a
//! typo in the config is caught at `enipeer check` time rather than at the first failover.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a string is not a valid AWS resource id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a valid {what} id: expected `{prefix}` followed by 8 or 17 lowercase hex digits")]
pub struct IdError {
    pub value: String,
    pub what: &'static str,
    pub prefix: &'static str,
}

fn check_id(value: &str, prefix: &'static str, what: &'static str) -> Result<(), IdError> {
    let ok = value
        .strip_prefix(prefix)
        .map(|hex| {
            (hex.len() == 8 || hex.len() == 17)
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(IdError {
            value: value.to_owned(),
            what,
            prefix,
        })
    }
}

macro_rules! aws_id {
    ($name:ident, $prefix:literal, $what:literal) => {
        #[doc = concat!("An AWS ", $what, " id (`", $prefix, "…`).")]
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                check_id(s, $prefix, $what)?;
                Ok(Self(s.to_owned()))
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                check_id(&s, $prefix, $what)?;
                Ok(Self(s))
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

aws_id!(EniId, "eni-", "network interface");
aws_id!(InstanceId, "i-", "instance");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_short_and_long_forms() {
        assert!("eni-0123abcd".parse::<EniId>().is_ok());
        assert!("eni-0123456789abcdef0".parse::<EniId>().is_ok());
        assert!("i-0123456789abcdef0".parse::<InstanceId>().is_ok());
    }

    #[test]
    fn rejects_wrong_prefix_length_and_case() {
        for bad in [
            "i-0123abcd",
            "eni-0123abc",
            "eni-0123ABCD",
            "eni-",
            "eni-0123abcg",
            "",
        ] {
            let err = bad.parse::<EniId>().unwrap_err();
            assert_eq!(err.value, bad);
        }
        assert!("eni-0123abcd".parse::<InstanceId>().is_err());
    }
}
