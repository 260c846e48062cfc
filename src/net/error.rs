//! The host network adapter's errors: one [`NetError`] with a typed [`NetErrorKind`], and for a
//! removal that failed in part, a [`TeardownError`] naming every object that could not be
//! removed (the others were removed all the same).

use std::fmt;

/// What went wrong, as a short machine label ([`NetErrorKind::as_str`]) for logs and metrics,
/// and whether trying the same operation again may succeed ([`NetErrorKind::retryable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NetErrorKind {
    /// The plan's MAC does not parse.
    BadMac,
    /// The hot-plugged link did not appear in time.
    LinkTimeout,
    /// The link is not (or no longer) on this host.
    LinkGone,
    /// The configured name is taken or invalid.
    Rename,
    /// The kernel refused a request or the netlink socket failed.
    Netlink,
    /// Reading or writing a sysctl (rp_filter) failed.
    Sysctl,
    /// One or more removal steps failed; the error lists every one.
    Teardown,
}

impl NetErrorKind {
    /// Every kind, for tests and documentation tables.
    pub const ALL: [NetErrorKind; 7] = [
        NetErrorKind::BadMac,
        NetErrorKind::LinkTimeout,
        NetErrorKind::LinkGone,
        NetErrorKind::Rename,
        NetErrorKind::Netlink,
        NetErrorKind::Sysctl,
        NetErrorKind::Teardown,
    ];

    /// The label logged as `kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            NetErrorKind::BadMac => "bad-mac",
            NetErrorKind::LinkTimeout => "link-timeout",
            NetErrorKind::LinkGone => "link-gone",
            NetErrorKind::Rename => "rename",
            NetErrorKind::Netlink => "netlink",
            NetErrorKind::Sysctl => "sysctl",
            NetErrorKind::Teardown => "teardown",
        }
    }

    /// Whether the same operation, tried again later, may succeed without anyone changing the
    /// config or the host. A teardown error decides by its parts ([`NetError::retryable`]).
    pub fn retryable(self) -> bool {
        match self {
            // A bad MAC is a bug in the plan, and a taken name needs the operator: neither goes
            // away by itself.
            NetErrorKind::BadMac | NetErrorKind::Rename => false,
            // The link may still arrive (the API runs ahead of the guest), may come back after
            // a re-attach, or may have been renamed under us (procfs paths are by name).
            NetErrorKind::LinkTimeout | NetErrorKind::LinkGone | NetErrorKind::Sysctl => true,
            // Socket failures and busy kernels are transient; a retry costs one request.
            NetErrorKind::Netlink => true,
            NetErrorKind::Teardown => true,
        }
    }
}

impl fmt::Display for NetErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A host network error: its kind, a message naming what failed, and for
/// [`NetErrorKind::Teardown`] the typed list of failed objects.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct NetError {
    pub kind: NetErrorKind,
    pub message: String,
    /// Set for [`NetErrorKind::Teardown`] only (the message is its rendering).
    pub teardown: Option<TeardownError>,
}

impl NetError {
    pub fn new(kind: NetErrorKind, message: impl Into<String>) -> Self {
        NetError {
            kind,
            message: message.into(),
            teardown: None,
        }
    }

    /// The short machine label, as the other adapters' errors offer it.
    pub fn kind(&self) -> &'static str {
        self.kind.as_str()
    }

    /// Whether trying again may help. A teardown is worth retrying when any of its failures is:
    /// a retry removes again whatever is still there.
    pub fn retryable(&self) -> bool {
        match &self.teardown {
            Some(t) => t.failed.iter().any(|f| f.kind.retryable()),
            None => self.kind.retryable(),
        }
    }
}

impl From<TeardownError> for NetError {
    fn from(t: TeardownError) -> Self {
        NetError {
            kind: NetErrorKind::Teardown,
            message: t.to_string(),
            teardown: Some(t),
        }
    }
}

/// The kinds of object a plan puts on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NetObject {
    /// The link's own settings: name, MTU, up state, rp_filter.
    Link,
    Address,
    Rule,
    Route,
}

impl NetObject {
    pub fn as_str(self) -> &'static str {
        match self {
            NetObject::Link => "link",
            NetObject::Address => "address",
            NetObject::Rule => "rule",
            NetObject::Route => "route",
        }
    }
}

impl fmt::Display for NetObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One object a removal could not remove (or could not list), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectError {
    pub object: NetObject,
    pub kind: NetErrorKind,
    pub message: String,
}

impl ObjectError {
    pub fn new(object: NetObject, error: NetError) -> Self {
        ObjectError {
            object,
            kind: error.kind,
            message: error.message,
        }
    }
}

impl fmt::Display for ObjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.object, self.kind, self.message)
    }
}

/// Removing a plan failed for some objects; every other object was removed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{} step(s) failed removing the plan for {mac}: {}",
    failed.len(),
    join(failed)
)]
pub struct TeardownError {
    /// The plan's MAC.
    pub mac: String,
    pub failed: Vec<ObjectError>,
}

fn join(failed: &[ObjectError]) -> String {
    failed
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_and_stable() {
        let labels: Vec<&str> = NetErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            labels,
            [
                "bad-mac",
                "link-timeout",
                "link-gone",
                "rename",
                "netlink",
                "sysctl",
                "teardown"
            ]
        );
        let e = NetError::new(NetErrorKind::LinkTimeout, "no link");
        assert_eq!(e.kind(), "link-timeout");
        assert_eq!(e.to_string(), "link-timeout: no link");
    }

    #[test]
    fn retryable_by_kind() {
        let permanent: Vec<NetErrorKind> = NetErrorKind::ALL
            .into_iter()
            .filter(|k| !k.retryable())
            .collect();
        assert_eq!(permanent, [NetErrorKind::BadMac, NetErrorKind::Rename]);
    }

    fn failure(object: NetObject, kind: NetErrorKind, message: &str) -> ObjectError {
        ObjectError::new(object, NetError::new(kind, message))
    }

    #[test]
    fn teardown_lists_every_failed_object_and_retries_if_any_part_may_succeed() {
        let t = TeardownError {
            mac: "0a:1b:2c:3d:4e:5f".into(),
            failed: vec![
                failure(
                    NetObject::Rule,
                    NetErrorKind::Netlink,
                    "delete rule x: EPERM",
                ),
                failure(NetObject::Link, NetErrorKind::Rename, "cannot rename"),
            ],
        };
        let e = NetError::from(t.clone());
        assert_eq!(e.kind, NetErrorKind::Teardown);
        assert_eq!(
            e.to_string(),
            "teardown: 2 step(s) failed removing the plan for 0a:1b:2c:3d:4e:5f: \
             rule (netlink): delete rule x: EPERM; link (rename): cannot rename"
        );
        assert!(e.retryable(), "the rule may go on the next try");
        let only_permanent = TeardownError {
            failed: vec![t.failed[1].clone()],
            ..t
        };
        assert!(!NetError::from(only_permanent).retryable());
    }
}
