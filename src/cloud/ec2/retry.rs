//! How EC2 errors are classified and retried: the error code and HTTP status mapped to a
//! [`CloudErrorKind`], the retry budget of one operation, and the backoff between attempts. Pure
//! functions, so the decisions are tested without a network.

use std::time::{Duration, Instant};

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};

use crate::cloud::{CloudError, CloudErrorKind};

/// Classifies an EC2 error by its code and HTTP status. Codes win over statuses: EC2 answers
/// `RequestLimitExceeded` with 503 and `DryRunOperation` with 412, and both mean something
/// specific.
pub fn classify(code: Option<&str>, status: Option<u16>) -> CloudErrorKind {
    use CloudErrorKind::*;
    if let Some(code) = code {
        match code {
            "RequestLimitExceeded"
            | "Throttling"
            | "ThrottlingException"
            | "RequestThrottled"
            | "SlowDown"
            | "TooManyRequestsException" => return Throttled,
            "InternalError" | "InternalFailure" | "ServiceUnavailable" | "Unavailable" => {
                return Http5xx
            }
            "UnauthorizedOperation"
            | "AuthFailure"
            | "AccessDenied"
            | "OptInRequired"
            | "Blocked"
            | "SignatureDoesNotMatch"
            | "InvalidClientTokenId" => return Unauthorized,
            "DryRunOperation" => return DryRun,
            "InvalidNetworkInterface.InUse" => return InUse,
            "IncorrectState" | "IncorrectInstanceState" | "InvalidInstanceID" => {
                return IncorrectState
            }
            c if c.ends_with(".NotFound") || c.ends_with(".Malformed") => return NotFound,
            c if c.starts_with("InvalidParameter") || c == "MissingParameter" => {
                return InvalidParameter
            }
            _ => {}
        }
    }
    match status {
        Some(503) | Some(429) => Throttled,
        Some(s) if s >= 500 => Http5xx,
        _ => Api,
    }
}

/// The retry budget of one cloud operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Overall deadline of one operation (claim, release, describe), retries and waits included.
    pub deadline: Duration,
    /// One request may take this long before it is abandoned and retried: a hung connection must
    /// not eat the whole deadline.
    pub attempt_timeout: Duration,
    /// First backoff; doubles per retry up to `backoff_cap`.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
}

impl RetryPolicy {
    /// A policy for a failover path: attempts of a quarter of the deadline (between 0.5 s and
    /// 3 s) leave room for at least a few retries; backoff starts at 50 ms because EC2's token
    /// buckets refill continuously.
    pub fn for_deadline(deadline: Duration) -> Self {
        let attempt = (deadline / 4)
            .clamp(Duration::from_millis(500), Duration::from_secs(3))
            .min(deadline);
        RetryPolicy {
            deadline,
            attempt_timeout: attempt,
            backoff_base: Duration::from_millis(50),
            backoff_cap: Duration::from_secs(1),
        }
    }
}

/// Backoff before retry number `retry` (0 for the first retry), with "equal jitter": half of the
/// exponential step is fixed and half random (`jitter` in 0..=1), so two nodes throttled together
/// spread out, yet no retry fires immediately.
pub fn backoff_delay(policy: &RetryPolicy, retry: u32, jitter: f64) -> Duration {
    let step = policy
        .backoff_base
        .saturating_mul(1u32 << retry.min(16))
        .min(policy.backoff_cap);
    step / 2 + step.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    /// The error is an answer: report it.
    Fail,
    /// Sleep this long, then try again.
    RetryAfter(Duration),
    /// Retryable, but the backoff would end past the deadline.
    Deadline,
}

/// Decides the next step after a failed attempt, given the time left until the deadline.
pub fn next_step(
    kind: CloudErrorKind,
    policy: &RetryPolicy,
    retry: u32,
    remaining: Duration,
    jitter: f64,
) -> NextStep {
    if !kind.retryable() {
        return NextStep::Fail;
    }
    let delay = backoff_delay(policy, retry, jitter);
    if delay >= remaining {
        NextStep::Deadline
    } else {
        NextStep::RetryAfter(delay)
    }
}

/// One failed SDK attempt as a [`CloudError`].
pub(super) fn from_sdk<E>(err: SdkError<E, HttpResponse>) -> CloudError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(ctx) => {
            let code = ctx.err().code();
            let status = ctx.raw().status().as_u16();
            CloudError::new(
                classify(code, Some(status)),
                format!(
                    "HTTP {status} {}: {}",
                    code.unwrap_or("(no code)"),
                    ctx.err().message().unwrap_or("(no message)")
                ),
            )
        }
        SdkError::TimeoutError(_) => CloudError::new(CloudErrorKind::Timeout, "attempt timed out"),
        SdkError::DispatchFailure(d) => {
            let kind = if d.is_timeout() {
                CloudErrorKind::Timeout
            } else if d.is_user() {
                CloudErrorKind::InvalidRequest
            } else {
                CloudErrorKind::Dispatch
            };
            CloudError::new(
                kind,
                format!("request not sent or no answer: {}", error_chain(&err)),
            )
        }
        SdkError::ResponseError(r) => {
            // An unparseable answer: moto's HTML 500 pages land here, and so would a proxy's.
            let status = r.raw().status().as_u16();
            CloudError::new(
                classify(None, Some(status)),
                format!("unparseable HTTP {status} answer: {}", error_chain(&err)),
            )
        }
        _ => CloudError::new(CloudErrorKind::Sdk, error_chain(&err)),
    }
}

pub(super) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The error of an operation whose deadline passed, naming the last attempt's error.
pub(super) fn deadline_error(
    action: &str,
    attempts: u32,
    started: Instant,
    last: Option<&CloudError>,
) -> CloudError {
    let last_text = last
        .map(|e| format!("; last error: {}: {}", e.kind, e.message))
        .unwrap_or_default();
    CloudError::new(
        CloudErrorKind::Deadline,
        format!(
            "{action}: deadline reached after {attempts} attempt(s) in {} ms{last_text}",
            started.elapsed().as_millis()
        ),
    )
}

/// A random fraction in 0..1 for jitter; the OS generator is fine at a few calls per second.
pub(super) fn jitter() -> f64 {
    let r = getrandom::u32().unwrap_or(u32::MAX / 2);
    f64::from(r) / f64::from(u32::MAX)
}
