//! The identifiers enipeer handles: AWS ids (checked for their prefix and shape) and node names.
//! Each is parsed once at the edge (config, heartbeat decoding, the cloud's answers), so that a
//! typo in the config is caught at `enipeer check` time rather than at the first failover, and
//! the core holds no unchecked id or name. (A name derefs to `&str` and an id compares with one,
//! so the types keep the two apart where a value is stored or passed typed, not everywhere.)

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

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
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

/// Longest node name: it travels in every heartbeat.
pub const MAX_NAME_LEN: usize = 32;

/// Why a string is not a valid node name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("{0:?} is {len} bytes long: expected at most {MAX_NAME_LEN}", len = .0.len())]
    TooLong(String),
    #[error("{0:?} has characters other than letters, digits, '.', '_' and '-'")]
    BadCharacter(String),
}

/// A node's name (`node.name`, `peer[].name`): unique within the group, carried in every
/// heartbeat and used as the final tie-breaker, so it is short and plain ASCII.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeName(String);

impl NodeName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn check(s: &str) -> Result<(), NameError> {
        if s.is_empty() {
            Err(NameError::Empty)
        } else if s.len() > MAX_NAME_LEN {
            Err(NameError::TooLong(s.to_owned()))
        } else if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            Err(NameError::BadCharacter(s.to_owned()))
        } else {
            Ok(())
        }
    }
}

impl FromStr for NodeName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        Self::check(s)?;
        Ok(Self(s.to_owned()))
    }
}

impl TryFrom<String> for NodeName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        Self::check(&s)?;
        Ok(Self(s))
    }
}

impl From<NodeName> for String {
    fn from(n: NodeName) -> String {
        n.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// A valid name is a valid `&str` (the other way needs parsing). Instance ids do not deref, so a
// function taking a name as `&str` cannot be handed an instance id by mistake.
impl std::ops::Deref for NodeName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

// Same order, equality and hash as the string itself, so maps keyed by name answer `&str`.
impl std::borrow::Borrow<str> for NodeName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for NodeName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for NodeName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_short_plain_ascii() {
        assert!("node-a.eu_1".parse::<NodeName>().is_ok());
        assert!("a".repeat(MAX_NAME_LEN).parse::<NodeName>().is_ok());
        assert_eq!("".parse::<NodeName>(), Err(NameError::Empty));
        let long = "a".repeat(MAX_NAME_LEN + 1);
        assert_eq!(
            long.parse::<NodeName>(),
            Err(NameError::TooLong(long.clone()))
        );
        for bad in ["node a", "nöde", "a/b", "a:b"] {
            assert_eq!(
                bad.parse::<NodeName>(),
                Err(NameError::BadCharacter(bad.to_owned()))
            );
        }
    }

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
