//! Cloud errors: a typed kind with a short label for logs, and the one notion of "retryable" that
//! the EC2 retry loop, the claim procedure and the daemon (via `core::Failure`) all use.

/// What went wrong, as far as anyone acting on the error needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloudErrorKind {
    /// EC2 throttled the request (`RequestLimitExceeded` and friends, HTTP 503/429).
    Throttled,
    /// EC2 failed internally (HTTP 5xx).
    Http5xx,
    /// One attempt got no answer in time.
    Timeout,
    /// The request was not sent or got no answer (connection refused, reset, DNS).
    Dispatch,
    /// The operation's overall deadline passed, retries and waits included.
    Deadline,
    /// Instance metadata could not be read.
    Imds,
    /// The attachment went away from this instance while it was attaching.
    DetachedMeanwhile,
    /// The ENI changed hands while the operation ran (an attach refused as in use with no other
    /// holder visible, or attached elsewhere while releasing): a later attempt may succeed.
    Contended,
    /// The file-backed fake could not read or write its state file.
    FakeIo,
    /// EC2 answered: not allowed.
    Unauthorized,
    /// EC2 answered `DryRunOperation`: the caller would be allowed.
    DryRun,
    /// EC2 answered `InvalidNetworkInterface.InUse` to an attach.
    InUse,
    /// The instance or interface is in a state that does not allow the call.
    IncorrectState,
    /// An id EC2 does not know (`*.NotFound`, `*.Malformed`).
    NotFound,
    /// EC2 refused a parameter (e.g. a device index that is taken).
    InvalidParameter,
    /// Any other answer from EC2.
    Api,
    /// The SDK refused the request before sending it (a bad endpoint URL, ...).
    InvalidRequest,
    /// The SDK failed in a way it does not classify.
    Sdk,
    /// No Region is configured or discoverable.
    NoRegion,
    /// An answer that does not make sense (a missing field, an id of the wrong shape).
    BadResponse,
    /// The ENI is attached to something that is not an instance.
    ForeignAttachment,
    /// The fake's state file is not what it wrote.
    FakeCorrupt,
    /// The configuration does not allow building this cloud.
    Config,
}

impl CloudErrorKind {
    /// The short label used in logs and tests.
    pub fn as_str(self) -> &'static str {
        use CloudErrorKind::*;
        match self {
            Throttled => "throttled",
            Http5xx => "http-5xx",
            Timeout => "timeout",
            Dispatch => "dispatch",
            Deadline => "deadline",
            Imds => "imds",
            DetachedMeanwhile => "detached-meanwhile",
            Contended => "contended",
            FakeIo => "fake-io",
            Unauthorized => "unauthorized",
            DryRun => "dry-run",
            InUse => "in-use",
            IncorrectState => "incorrect-state",
            NotFound => "not-found",
            InvalidParameter => "invalid-parameter",
            Api => "api-error",
            InvalidRequest => "invalid-request",
            Sdk => "sdk",
            NoRegion => "no-region",
            BadResponse => "bad-response",
            ForeignAttachment => "foreign-attachment",
            FakeCorrupt => "fake-corrupt",
            Config => "config",
        }
    }

    /// Whether the same request, tried again later, may succeed. The EC2 retry loop retries
    /// exactly these within an operation's deadline, and the core treats every other kind as an
    /// answer that puts the node in fault (via `core::Failure::permanent`).
    ///
    /// `InUse` is an answer, not a reason to retry: the claim procedure handles it by looking
    /// at who holds the ENI. When that look explains nothing, the procedure reports `Contended`.
    pub fn retryable(self) -> bool {
        use CloudErrorKind::*;
        match self {
            Throttled | Http5xx | Timeout | Dispatch | Deadline | Imds | DetachedMeanwhile
            | Contended | FakeIo => true,
            Unauthorized | DryRun | InUse | IncorrectState | NotFound | InvalidParameter | Api
            | InvalidRequest | Sdk | NoRegion | BadResponse | ForeignAttachment | FakeCorrupt
            | Config => false,
        }
    }
}

impl std::fmt::Display for CloudErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A cloud error: its kind and a message for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct CloudError {
    pub kind: CloudErrorKind,
    pub message: String,
}

impl CloudError {
    pub fn new(kind: CloudErrorKind, message: impl Into<String>) -> Self {
        CloudError {
            kind,
            message: message.into(),
        }
    }

    /// See [`CloudErrorKind::retryable`].
    pub fn retryable(&self) -> bool {
        self.kind.retryable()
    }

    /// The kind's label, for structured log fields.
    pub fn kind_str(&self) -> &'static str {
        self.kind.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::CloudErrorKind::*;

    #[test]
    fn answers_are_not_retryable_and_transient_failures_are() {
        for k in [Throttled, Http5xx, Timeout, Deadline, Contended] {
            assert!(k.retryable(), "{k}");
        }
        for k in [Unauthorized, NotFound, InUse, InvalidParameter, DryRun] {
            assert!(!k.retryable(), "{k}");
        }
        assert_eq!(NotFound.as_str(), "not-found");
        assert_eq!(Api.to_string(), "api-error");
    }
}
