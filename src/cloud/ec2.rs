//! The EC2 adapter: [`Cloud`] implemented with aws-sdk-ec2, plus the preflight checks.
//!
//! This is the only module that talks to the AWS SDK. It owns the SDK client (created once, so a
//! failover spends no time on TLS setup or credential fetches), this instance's identity, the
//! retry budget of every EC2 call, and the claim/release procedures with their timeline steps.
//!
//! The SDK's own retries are turned off: its standard mode backs off from about a second, far too
//! slow for a failover. Instead every call goes through [`Ec2Cloud::call`], which retries the
//! retryable errors (see [`classify`]) with capped, jittered exponential backoff until the
//! operation's deadline (`aws.operation-timeout`) and answers everything else at once.

use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{AttachmentStatus, NetworkInterface, NetworkInterfaceAttachmentChanges};
use aws_sdk_ec2::Client;
use futures::future::BoxFuture;
use futures::FutureExt;
use tracing::{debug, info, warn};

use crate::cloud::{
    poll_delay, AttachState, Attachment, ClaimOutcome, ClaimRequest, Cloud, CloudError, EniInfo,
    Identity, Ipv4Net, ReleaseOutcome,
};
use crate::config::{AwsSettings, Settings};
use crate::ids::{EniId, InstanceId};
use crate::timeline::Step;

/// How one failed attempt is treated: a short label for logs and metrics, and whether trying the
/// same request again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorClass {
    pub kind: &'static str,
    pub retryable: bool,
}

impl ErrorClass {
    const fn retry(kind: &'static str) -> Self {
        ErrorClass {
            kind,
            retryable: true,
        }
    }

    const fn answer(kind: &'static str) -> Self {
        ErrorClass {
            kind,
            retryable: false,
        }
    }
}

/// Classifies an EC2 error by its code and HTTP status. Codes win over statuses: EC2 answers
/// `RequestLimitExceeded` with 503 and `DryRunOperation` with 412, and both mean something
/// specific.
pub fn classify(code: Option<&str>, status: Option<u16>) -> ErrorClass {
    if let Some(code) = code {
        match code {
            "RequestLimitExceeded"
            | "Throttling"
            | "ThrottlingException"
            | "RequestThrottled"
            | "SlowDown"
            | "TooManyRequestsException" => return ErrorClass::retry("throttled"),
            "InternalError" | "InternalFailure" | "ServiceUnavailable" | "Unavailable" => {
                return ErrorClass::retry("http-5xx")
            }
            "UnauthorizedOperation"
            | "AuthFailure"
            | "AccessDenied"
            | "OptInRequired"
            | "Blocked"
            | "SignatureDoesNotMatch"
            | "InvalidClientTokenId" => return ErrorClass::answer("unauthorized"),
            "DryRunOperation" => return ErrorClass::answer("dry-run"),
            "InvalidNetworkInterface.InUse" => return ErrorClass::answer("in-use"),
            "IncorrectState" | "IncorrectInstanceState" | "InvalidInstanceID" => {
                return ErrorClass::answer("incorrect-state")
            }
            c if c.ends_with(".NotFound") || c.ends_with(".Malformed") => {
                return ErrorClass::answer("not-found")
            }
            c if c.starts_with("InvalidParameter") || c == "MissingParameter" => {
                return ErrorClass::answer("invalid-parameter")
            }
            _ => {}
        }
    }
    match status {
        Some(503) | Some(429) => ErrorClass::retry("throttled"),
        Some(s) if s >= 500 => ErrorClass::retry("http-5xx"),
        _ => ErrorClass::answer("api-error"),
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
    class: ErrorClass,
    policy: &RetryPolicy,
    retry: u32,
    remaining: Duration,
    jitter: f64,
) -> NextStep {
    if !class.retryable {
        return NextStep::Fail;
    }
    let delay = backoff_delay(policy, retry, jitter);
    if delay >= remaining {
        NextStep::Deadline
    } else {
        NextStep::RetryAfter(delay)
    }
}

/// A failed EC2 call after the retry loop: the last attempt's class, code and message.
#[derive(Debug, Clone)]
struct ApiError {
    class: ErrorClass,
    code: Option<String>,
    message: String,
}

impl ApiError {
    fn is(&self, kind: &str) -> bool {
        self.class.kind == kind
    }

    fn from_sdk<E>(err: SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match &err {
            SdkError::ServiceError(ctx) => {
                let code = ctx.err().code().map(str::to_owned);
                let status = ctx.raw().status().as_u16();
                let class = classify(code.as_deref(), Some(status));
                let message = format!(
                    "HTTP {status} {}: {}",
                    code.as_deref().unwrap_or("(no code)"),
                    ctx.err().message().unwrap_or("(no message)")
                );
                ApiError {
                    class,
                    code,
                    message,
                }
            }
            SdkError::TimeoutError(_) => ApiError {
                class: ErrorClass::retry("timeout"),
                code: None,
                message: "attempt timed out".into(),
            },
            SdkError::DispatchFailure(d) => {
                let class = if d.is_timeout() {
                    ErrorClass::retry("timeout")
                } else if d.is_user() {
                    ErrorClass::answer("dispatch")
                } else {
                    ErrorClass::retry("dispatch")
                };
                ApiError {
                    class,
                    code: None,
                    message: format!("request not sent or no answer: {}", error_chain(&err)),
                }
            }
            SdkError::ResponseError(r) => {
                // An unparseable answer: moto's HTML 500 pages land here, and so would a proxy's.
                let status = r.raw().status().as_u16();
                ApiError {
                    class: classify(None, Some(status)),
                    code: None,
                    message: format!("unparseable HTTP {status} answer: {}", error_chain(&err)),
                }
            }
            _ => ApiError {
                class: ErrorClass::answer("sdk"),
                code: None,
                message: error_chain(&err),
            },
        }
    }
}

impl From<ApiError> for CloudError {
    fn from(e: ApiError) -> Self {
        CloudError {
            kind: e.class.kind,
            message: e.message,
            transient: e.class.retryable,
        }
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A random fraction in 0..1 for jitter; the OS generator is fine at a few calls per second.
fn jitter() -> f64 {
    let r = getrandom::u32().unwrap_or(u32::MAX / 2);
    f64::from(r) / f64::from(u32::MAX)
}

/// Poll interval with up to 20% jitter, so two nodes polling the same ENI do not stay in step.
fn poll_interval(attempt: u32) -> Duration {
    poll_delay(attempt).mul_f64(0.8 + 0.2 * jitter())
}

/// Whether a wait for detachment may force the detach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forcing {
    /// Never (already forced, or not entitled, or releasing our own attachment).
    Never,
    /// After `force_detach_grace` from the start of the wait.
    AfterGrace,
}

/// The EC2 implementation of [`Cloud`] for one ENI.
pub struct Ec2Cloud {
    client: Client,
    eni: EniId,
    device_index: u32,
    identity: Identity,
    policy: RetryPolicy,
    force_detach_grace: Duration,
    /// The ENI's subnet never changes, so its CIDR is looked up once.
    subnet_cidr: Mutex<Option<(String, Ipv4Net)>>,
    /// Retries since the last claim or release finished, so its timeline shows them.
    retries: Mutex<Vec<Step>>,
}

impl std::fmt::Debug for Ec2Cloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ec2Cloud")
            .field("eni", &self.eni)
            .field("device_index", &self.device_index)
            .field("identity", &self.identity)
            .field("policy", &self.policy)
            .finish()
    }
}

/// Builds the SDK client once: region and endpoint from config, the default credential chain,
/// tight timeouts, and no SDK retries (ours are in [`Ec2Cloud::call`]).
async fn build_client(aws: &AwsSettings, policy: &RetryPolicy) -> (Client, Option<String>) {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(policy.attempt_timeout.min(Duration::from_secs(1)))
        .operation_attempt_timeout(policy.attempt_timeout)
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(timeouts)
        .retry_config(RetryConfig::disabled());
    if let Some(region) = &aws.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(url) = &aws.endpoint_url {
        loader = loader.endpoint_url(url.clone());
    }
    let sdk = loader.load().await;
    let region = sdk.region().map(|r| r.to_string());
    (Client::new(&sdk), region)
}

async fn imds_get(imds: &aws_config::imds::Client, path: &str) -> Result<String, CloudError> {
    imds.get(path)
        .await
        .map(|v| v.as_ref().trim().to_owned())
        .map_err(|e| {
            CloudError::transient(
                "imds",
                format!("instance metadata {path}: {}", error_chain(&e)),
            )
        })
}

impl Ec2Cloud {
    /// Creates the client and resolves this instance's identity: the instance id from IMDSv2
    /// unless overridden (aws-config's IMDS client honours `AWS_EC2_METADATA_SERVICE_ENDPOINT`),
    /// the Region from config, the environment or IMDS, and the Availability Zone from IMDS (or
    /// from DescribeInstances when the instance id is overridden and no IMDS is consulted).
    pub async fn new(
        aws: &AwsSettings,
        eni: EniId,
        device_index: u32,
        instance_override: Option<InstanceId>,
    ) -> Result<Ec2Cloud, CloudError> {
        let policy = RetryPolicy::for_deadline(aws.operation_timeout);
        let (mut client, mut region) = build_client(aws, &policy).await;
        let (instance_id, az) = match instance_override {
            Some(id) => (id, None),
            None => {
                let imds = aws_config::imds::Client::builder().build();
                let id = imds_get(&imds, "/latest/meta-data/instance-id").await?;
                let id: InstanceId = id.parse().map_err(|e| {
                    CloudError::permanent("imds", format!("instance metadata instance-id: {e}"))
                })?;
                let az = imds_get(&imds, "/latest/meta-data/placement/availability-zone").await?;
                if region.is_none() {
                    let from_imds = imds_get(&imds, "/latest/meta-data/placement/region").await?;
                    // The client was built without a Region; rebuild it with the one IMDS gave.
                    let mut with_region = aws.clone();
                    with_region.region = Some(from_imds.clone());
                    client = build_client(&with_region, &policy).await.0;
                    region = Some(from_imds);
                }
                (id, Some(az))
            }
        };
        if region.is_none() {
            return Err(CloudError::permanent(
                "no-region",
                "no Region: set aws.region (instance metadata is not consulted when \
                 node.instance-id is set)",
            ));
        }
        let mut cloud = Ec2Cloud::from_parts(
            client,
            Identity {
                instance_id,
                region,
                availability_zone: az,
            },
            eni,
            device_index,
            policy,
            aws.force_detach_grace,
        );
        // One call now resolves the credentials and opens a connection, so the first failover
        // pays for neither. Best effort: an unreachable endpoint at start is reported by the
        // first real operation (and by preflight), not by refusing to start.
        let me = cloud.identity.instance_id.clone();
        match cloud.instance_az(&me, cloud.deadline()).await {
            Ok(Some(az)) => {
                if cloud.identity.availability_zone.is_none() {
                    cloud.identity.availability_zone = Some(az);
                }
            }
            Ok(None) => warn!(instance_id = %me, "DescribeInstances does not know this instance"),
            Err(e) => warn!(instance_id = %me, kind = e.kind, error = %e.message,
                "warm-up DescribeInstances failed"),
        }
        info!(
            instance_id = %cloud.identity.instance_id,
            region = cloud.identity.region.as_deref().unwrap_or("?"),
            az = cloud.identity.availability_zone.as_deref().unwrap_or("?"),
            eni = %cloud.eni,
            "EC2 adapter ready"
        );
        Ok(cloud)
    }

    fn from_parts(
        client: Client,
        identity: Identity,
        eni: EniId,
        device_index: u32,
        policy: RetryPolicy,
        force_detach_grace: Duration,
    ) -> Self {
        Ec2Cloud {
            client,
            eni,
            device_index,
            identity,
            policy,
            force_detach_grace,
            subnet_cidr: Mutex::new(None),
            retries: Mutex::new(Vec::new()),
        }
    }

    /// The retry budget in use.
    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }

    fn take_retries(&self) -> Vec<Step> {
        std::mem::take(&mut *self.retries.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.policy.deadline
    }

    /// Runs one EC2 request with the retry policy until `deadline`. Each attempt is bounded by
    /// the attempt timeout (and the deadline), so a hung connection is abandoned and retried.
    async fn call<T, E, F, Fut>(
        &self,
        action: &'static str,
        deadline: Instant,
        mut op: F,
    ) -> Result<T, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let started = Instant::now();
        let mut retry = 0u32;
        let mut last: Option<ApiError> = None;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(deadline_error(action, retry, started, last.as_ref()));
            }
            let budget = remaining.min(self.policy.attempt_timeout);
            let err = match tokio::time::timeout(budget, op()).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => ApiError::from_sdk(e),
                Err(_) => ApiError {
                    class: ErrorClass::retry("timeout"),
                    code: None,
                    message: format!("no answer within {} ms", budget.as_millis()),
                },
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            match next_step(err.class, &self.policy, retry, remaining, jitter()) {
                NextStep::Fail => {
                    debug!(action, kind = err.class.kind, error = %err.message, "EC2 answered");
                    return Err(err);
                }
                NextStep::Deadline => {
                    warn!(action, kind = err.class.kind, attempts = retry + 1, error = %err.message,
                        "EC2 call failed, deadline reached");
                    return Err(deadline_error(action, retry + 1, started, Some(&err)));
                }
                NextStep::RetryAfter(delay) => {
                    warn!(action, kind = err.class.kind, attempt = retry + 1,
                        delay_ms = delay.as_millis() as u64, error = %err.message,
                        "EC2 call failed, retrying");
                    self.retries
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(Step::now(format!(
                            "{action} failed ({}), retry {}",
                            err.class.kind,
                            retry + 1
                        )));
                    tokio::time::sleep(delay).await;
                    retry += 1;
                    last = Some(err);
                }
            }
        }
    }

    async fn describe_raw(&self, deadline: Instant) -> Result<EniInfo, CloudError> {
        Ok(self.describe_with_subnet(deadline).await?.0)
    }

    /// One DescribeNetworkInterfaces by id (never the `attachment.*` filters: moto answers them
    /// with HTTP 500), mapped to [`EniInfo`] with the cached subnet CIDR, plus the subnet id.
    async fn describe_with_subnet(
        &self,
        deadline: Instant,
    ) -> Result<(EniInfo, Option<String>), CloudError> {
        let out = self
            .call("DescribeNetworkInterfaces", deadline, || {
                self.client
                    .describe_network_interfaces()
                    .network_interface_ids(self.eni.as_str())
                    .send()
            })
            .await?;
        let ni = out
            .network_interfaces()
            .iter()
            .find(|n| n.network_interface_id() == Some(self.eni.as_str()))
            .ok_or_else(|| {
                CloudError::permanent(
                    "not-found",
                    format!("network interface {} not in the answer", self.eni),
                )
            })?;
        let subnet = ni.subnet_id().map(str::to_owned);
        let cached = self.cached_cidr(subnet.as_deref());
        Ok((eni_info(&self.eni, ni, cached)?, subnet))
    }

    fn cached_cidr(&self, subnet: Option<&str>) -> Option<Ipv4Net> {
        let cache = self.subnet_cidr.lock().ok()?;
        cache
            .as_ref()
            .filter(|(id, _)| Some(id.as_str()) == subnet)
            .map(|(_, net)| *net)
    }

    /// Describe plus the subnet's CIDR (looked up once and cached).
    async fn describe_full(&self, deadline: Instant) -> Result<EniInfo, CloudError> {
        let (mut info, subnet) = self.describe_with_subnet(deadline).await?;
        if let (None, Some(subnet)) = (info.subnet_cidr, subnet) {
            let out = self
                .call("DescribeSubnets", deadline, || {
                    self.client.describe_subnets().subnet_ids(&subnet).send()
                })
                .await?;
            let net = out
                .subnets()
                .first()
                .and_then(|s| s.cidr_block())
                .and_then(parse_cidr);
            if let (Some(net), Ok(mut cache)) = (net, self.subnet_cidr.lock()) {
                *cache = Some((subnet, net));
            }
            info.subnet_cidr = net;
        }
        Ok(info)
    }

    async fn instance_az(
        &self,
        id: &InstanceId,
        deadline: Instant,
    ) -> Result<Option<String>, CloudError> {
        let out = self
            .call("DescribeInstances", deadline, || {
                self.client
                    .describe_instances()
                    .instance_ids(id.as_str())
                    .send()
            })
            .await?;
        Ok(out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find(|i| i.instance_id() == Some(id.as_str()))
            .and_then(|i| i.placement())
            .and_then(|p| p.availability_zone())
            .map(str::to_owned))
    }

    async fn detach(
        &self,
        attachment_id: &str,
        force: bool,
        deadline: Instant,
        steps: &mut Vec<Step>,
    ) -> Result<(), CloudError> {
        steps.push(Step::now(if force {
            "force detach requested"
        } else {
            "detach requested"
        }));
        let res = self
            .call("DetachNetworkInterface", deadline, || {
                self.client
                    .detach_network_interface()
                    .attachment_id(attachment_id)
                    .force(force)
                    .send()
            })
            .await;
        match res {
            Ok(_) => {
                steps.push(Step::now("detach accepted"));
                Ok(())
            }
            // The attachment is already gone: the state we wanted.
            Err(e) if e.is("not-found") => {
                steps.push(Step::now("detach: attachment already gone"));
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Polls until the ENI is detached. Under [`Forcing::AfterGrace`] a normal detach that has
    /// not finished within the grace is repeated with `Force=true`. Returns the holder if someone
    /// other than `expected` (or this instance) attached it meanwhile.
    async fn wait_detached(
        &self,
        expected: Option<&InstanceId>,
        mut forcing: Forcing,
        deadline: Instant,
        steps: &mut Vec<Step>,
    ) -> Result<Result<EniInfo, InstanceId>, CloudError> {
        let started = Instant::now();
        let mut polls = 0u32;
        loop {
            let info = self.describe_raw(deadline).await?;
            match &info.attachment {
                None => {
                    steps.push(Step::now("detached"));
                    return Ok(Ok(info));
                }
                Some(a) if a.state == AttachState::Detached => {
                    steps.push(Step::now("detached"));
                    return Ok(Ok(info));
                }
                Some(a) if Some(&a.instance_id) != expected && a.instance_id != *self.me() => {
                    if info.holder().is_some() {
                        return Ok(Err(a.instance_id.clone()));
                    }
                }
                Some(a) => {
                    if forcing == Forcing::AfterGrace
                        && started.elapsed() >= self.force_detach_grace
                    {
                        warn!(holder = %a.instance_id, eni = %self.eni,
                            grace_ms = self.force_detach_grace.as_millis() as u64,
                            "normal detach did not finish within the grace: forcing");
                        let id = a.attachment_id.clone();
                        self.detach(&id, true, deadline, steps).await?;
                        forcing = Forcing::Never;
                    }
                }
            }
            self.sleep_poll(polls, deadline, "detach").await?;
            polls += 1;
        }
    }

    async fn sleep_poll(
        &self,
        polls: u32,
        deadline: Instant,
        what: &str,
    ) -> Result<(), CloudError> {
        let delay = poll_interval(polls);
        if Instant::now() + delay >= deadline {
            return Err(CloudError::transient(
                "deadline",
                format!(
                    "{what} of {} not finished within {} ms",
                    self.eni,
                    self.policy.deadline.as_millis()
                ),
            ));
        }
        tokio::time::sleep(delay).await;
        Ok(())
    }

    fn me(&self) -> &InstanceId {
        &self.identity.instance_id
    }

    async fn attach(
        &self,
        deadline: Instant,
        device_index: u32,
        steps: &mut Vec<Step>,
    ) -> Result<Option<InstanceId>, CloudError> {
        steps.push(Step::now("attach requested"));
        let index = i32::try_from(device_index).map_err(|_| {
            CloudError::permanent(
                "invalid-parameter",
                format!("device index {device_index} too large"),
            )
        })?;
        let res = self
            .call("AttachNetworkInterface", deadline, || {
                self.client
                    .attach_network_interface()
                    .network_interface_id(self.eni.as_str())
                    .instance_id(self.me().as_str())
                    .device_index(index)
                    .send()
            })
            .await;
        match res {
            Ok(_) => {
                steps.push(Step::now("attach accepted"));
                Ok(None)
            }
            Err(e) if e.is("in-use") => {
                // A lost race: name the winner from a fresh look.
                steps.push(Step::now("attach refused: in use"));
                let info = self.describe_raw(deadline).await?;
                match info.attachment {
                    // An earlier attempt whose answer was lost did attach: carry on.
                    Some(a) if a.instance_id == *self.me() => {
                        steps.push(Step::now("attach accepted"));
                        Ok(None)
                    }
                    Some(a) => Ok(Some(a.instance_id)),
                    _ => Err(CloudError::transient(
                        "in-use",
                        format!("{}: {} but no other holder is visible", self.eni, e.message),
                    )),
                }
            }
            Err(e) if e.is("invalid-parameter") => Err(CloudError::permanent(
                "invalid-parameter",
                format!(
                    "attach {} to {} at device index {device_index}: {} (is another interface \
                     at that index?)",
                    self.eni,
                    self.me(),
                    e.message
                ),
            )),
            Err(e) => Err(e.into()),
        }
    }

    async fn wait_attached(
        &self,
        deadline: Instant,
        steps: &mut Vec<Step>,
    ) -> Result<Result<EniInfo, InstanceId>, CloudError> {
        let mut polls = 0u32;
        loop {
            let info = self.describe_raw(deadline).await?;
            if let Some(a) = &info.attachment {
                if a.instance_id != *self.me() {
                    if info.holder().is_some() {
                        return Ok(Err(a.instance_id.clone()));
                    }
                } else if a.state == AttachState::Attached {
                    steps.push(Step::now("attached"));
                    return Ok(Ok(info));
                } else if matches!(a.state, AttachState::Detaching | AttachState::Detached) {
                    return Err(CloudError::transient(
                        "detached-meanwhile",
                        format!(
                            "{} was detached from this instance while attaching",
                            self.eni
                        ),
                    ));
                }
            }
            self.sleep_poll(polls, deadline, "attach").await?;
            polls += 1;
        }
    }

    /// Makes sure terminating this instance does not delete the ENI.
    async fn ensure_kept_on_termination(
        &self,
        info: &mut EniInfo,
        deadline: Instant,
        steps: &mut Vec<Step>,
    ) -> Result<(), CloudError> {
        let Some(a) = info.attachment.as_mut() else {
            return Ok(());
        };
        if !a.delete_on_termination {
            return Ok(());
        }
        steps.push(Step::now("delete-on-termination clear requested"));
        let changes = NetworkInterfaceAttachmentChanges::builder()
            .attachment_id(a.attachment_id.clone())
            .delete_on_termination(false)
            .build();
        self.call("ModifyNetworkInterfaceAttribute", deadline, || {
            self.client
                .modify_network_interface_attribute()
                .network_interface_id(self.eni.as_str())
                .attachment(changes.clone())
                .send()
        })
        .await?;
        a.delete_on_termination = false;
        steps.push(Step::now("delete-on-termination cleared"));
        Ok(())
    }

    async fn claim_inner(&self, req: ClaimRequest) -> Result<ClaimOutcome, CloudError> {
        let deadline = self.deadline();
        let mut steps = vec![Step::now("describe requested")];
        let mut info = self.describe_full(deadline).await?;
        steps.push(Step::now("described"));
        let cidr = info.subnet_cidr;
        let me = self.me().clone();

        match info.attachment.clone() {
            Some(a) if a.instance_id == me && a.state == AttachState::Attached => {
                self.ensure_kept_on_termination(&mut info, deadline, &mut steps)
                    .await?;
                return Ok(ClaimOutcome::Claimed {
                    info,
                    already_mine: true,
                    steps,
                });
            }
            Some(a) if a.instance_id == me && a.state == AttachState::Attaching => {
                return self.finish_attach(deadline, cidr, true, steps).await;
            }
            Some(a) if a.instance_id != me && info.holder().is_some() => {
                if req.expected_holder.as_ref() != Some(&a.instance_id) {
                    info!(holder = %a.instance_id, expected = ?req.expected_holder.as_ref().map(|i| i.as_str()),
                        eni = %self.eni, "claim stopped: held by an unexpected instance");
                    return Ok(ClaimOutcome::HeldBy {
                        holder: a.instance_id,
                        steps,
                    });
                }
                if req.force {
                    warn!(holder = %a.instance_id, eni = %self.eni,
                        "holder believed dead: detaching with Force=true");
                } else {
                    info!(holder = %a.instance_id, eni = %self.eni, "detaching from the peer");
                }
                self.detach(&a.attachment_id, req.force, deadline, &mut steps)
                    .await?;
                let forcing = if req.force {
                    Forcing::Never
                } else {
                    Forcing::AfterGrace
                };
                let expected = Some(a.instance_id.clone());
                if let Err(holder) = self
                    .wait_detached(expected.as_ref(), forcing, deadline, &mut steps)
                    .await?
                {
                    return Ok(ClaimOutcome::HeldBy { holder, steps });
                }
            }
            Some(a) if a.state == AttachState::Detaching => {
                // Someone (maybe this node, earlier) is detaching it: wait, forcing only if the
                // caller is entitled to replace that instance.
                let entitled =
                    req.expected_holder.as_ref() == Some(&a.instance_id) || a.instance_id == me;
                let forcing = match (entitled, req.force) {
                    (false, _) => Forcing::Never,
                    (true, false) => Forcing::AfterGrace,
                    (true, true) => {
                        warn!(holder = %a.instance_id, eni = %self.eni,
                            "holder believed dead and its detach is pending: forcing");
                        self.detach(&a.attachment_id, true, deadline, &mut steps)
                            .await?;
                        Forcing::Never
                    }
                };
                let expected = entitled.then(|| a.instance_id.clone());
                if let Err(holder) = self
                    .wait_detached(expected.as_ref(), forcing, deadline, &mut steps)
                    .await?
                {
                    return Ok(ClaimOutcome::HeldBy { holder, steps });
                }
            }
            _ => {}
        }

        if let Some(holder) = self.attach(deadline, req.device_index, &mut steps).await? {
            info!(holder = %holder, eni = %self.eni, "lost the race for the ENI");
            return Ok(ClaimOutcome::HeldBy { holder, steps });
        }
        self.finish_attach(deadline, cidr, false, steps).await
    }

    async fn finish_attach(
        &self,
        deadline: Instant,
        cidr: Option<Ipv4Net>,
        already_mine: bool,
        mut steps: Vec<Step>,
    ) -> Result<ClaimOutcome, CloudError> {
        let mut info = match self.wait_attached(deadline, &mut steps).await? {
            Ok(info) => info,
            Err(holder) => return Ok(ClaimOutcome::HeldBy { holder, steps }),
        };
        info.subnet_cidr = info.subnet_cidr.or(cidr);
        self.ensure_kept_on_termination(&mut info, deadline, &mut steps)
            .await?;
        info!(eni = %self.eni, steps = steps.len(), "ENI attached here");
        Ok(ClaimOutcome::Claimed {
            info,
            already_mine,
            steps,
        })
    }

    async fn release_inner(&self) -> Result<ReleaseOutcome, CloudError> {
        let deadline = self.deadline();
        let mut steps = vec![Step::now("describe requested")];
        let info = self.describe_raw(deadline).await?;
        steps.push(Step::now("described"));
        let Some(a) = info
            .attachment
            .filter(|a| a.instance_id == *self.me() && a.state != AttachState::Detached)
        else {
            return Ok(ReleaseOutcome {
                detached: false,
                steps,
            });
        };
        if a.state != AttachState::Detaching {
            self.detach(&a.attachment_id, false, deadline, &mut steps)
                .await?;
        }
        let me = self.me().clone();
        // Releasing never forces: this instance is alive and detaching itself.
        self.wait_detached(Some(&me), Forcing::Never, deadline, &mut steps)
            .await?
            .map_err(|holder| {
                CloudError::transient(
                    "in-use",
                    format!("{} was attached to {holder} while releasing", self.eni),
                )
            })?;
        info!(eni = %self.eni, "ENI released");
        Ok(ReleaseOutcome {
            detached: true,
            steps,
        })
    }
}

fn deadline_error(
    action: &str,
    attempts: u32,
    started: Instant,
    last: Option<&ApiError>,
) -> ApiError {
    let last_text = last
        .map(|e| format!("; last error: {}: {}", e.class.kind, e.message))
        .unwrap_or_default();
    ApiError {
        class: ErrorClass::retry("deadline"),
        code: last.and_then(|e| e.code.clone()),
        message: format!(
            "{action}: deadline reached after {attempts} attempt(s) in {} ms{last_text}",
            started.elapsed().as_millis()
        ),
    }
}

fn parse_cidr(s: &str) -> Option<Ipv4Net> {
    let (addr, prefix) = s.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    (prefix <= 32).then_some(Ipv4Net { addr, prefix })
}

fn attach_state(s: Option<&AttachmentStatus>) -> AttachState {
    match s {
        Some(AttachmentStatus::Attaching) => AttachState::Attaching,
        Some(AttachmentStatus::Attached) => AttachState::Attached,
        Some(AttachmentStatus::Detaching) => AttachState::Detaching,
        Some(AttachmentStatus::Detached) => AttachState::Detached,
        // An unknown state is treated as in transition toward attached: never as free.
        _ => AttachState::Attaching,
    }
}

/// Maps EC2's view of the ENI to [`EniInfo`].
fn eni_info(
    eni: &EniId,
    ni: &NetworkInterface,
    subnet_cidr: Option<Ipv4Net>,
) -> Result<EniInfo, CloudError> {
    let bad = |what: &str| {
        CloudError::permanent(
            "bad-response",
            format!("DescribeNetworkInterfaces for {eni}: {what}"),
        )
    };
    let attachment = match ni.attachment() {
        None => None,
        Some(a) => {
            let instance_id = a
                .instance_id()
                .ok_or_else(|| {
                    CloudError::permanent(
                        "foreign-attachment",
                        format!(
                            "{eni} is attached to something that is not an instance (owner {})",
                            a.instance_owner_id().unwrap_or("?")
                        ),
                    )
                })?
                .parse::<InstanceId>()
                .map_err(|e| bad(&e.to_string()))?;
            Some(Attachment {
                instance_id,
                attachment_id: a.attachment_id().unwrap_or_default().to_owned(),
                device_index: a
                    .device_index()
                    .and_then(|i| u32::try_from(i).ok())
                    .unwrap_or(0),
                state: attach_state(a.status()),
                delete_on_termination: a.delete_on_termination().unwrap_or(false),
            })
        }
    };
    let primary_ip: Ipv4Addr = ni
        .private_ip_address()
        .ok_or_else(|| bad("no private IP"))?
        .parse()
        .map_err(|_| bad("private IP is not IPv4"))?;
    let secondary_ips = ni
        .private_ip_addresses()
        .iter()
        .filter(|p| p.primary() != Some(true))
        .filter_map(|p| p.private_ip_address()?.parse().ok())
        .collect();
    Ok(EniInfo {
        eni_id: eni.clone(),
        status: ni
            .status()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
        attachment,
        mac: ni.mac_address().unwrap_or_default().to_owned(),
        primary_ip,
        secondary_ips,
        subnet_cidr,
        availability_zone: ni.availability_zone().map(str::to_owned),
    })
}

impl Cloud for Ec2Cloud {
    fn identity(&self) -> BoxFuture<'_, Result<Identity, CloudError>> {
        let id = self.identity.clone();
        async move { Ok(id) }.boxed()
    }

    fn describe(&self) -> BoxFuture<'_, Result<EniInfo, CloudError>> {
        async move { self.describe_full(self.deadline()).await }.boxed()
    }

    fn claim(&self, req: ClaimRequest) -> BoxFuture<'_, Result<ClaimOutcome, CloudError>> {
        async move {
            self.take_retries();
            let mut out = self.claim_inner(req).await;
            let retried = self.take_retries();
            match &mut out {
                Ok(ClaimOutcome::Claimed { steps, .. })
                | Ok(ClaimOutcome::HeldBy { steps, .. }) => steps.extend(retried),
                Err(_) => {}
            }
            out
        }
        .boxed()
    }

    fn release(&self) -> BoxFuture<'_, Result<ReleaseOutcome, CloudError>> {
        async move {
            self.take_retries();
            let mut out = self.release_inner().await;
            let retried = self.take_retries();
            if let Ok(r) = &mut out {
                r.steps.extend(retried);
            }
            out
        }
        .boxed()
    }
}

/// One line of the preflight report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreflightCheck {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

impl PreflightCheck {
    fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        PreflightCheck {
            name: name.into(),
            ok: true,
            detail: detail.into(),
        }
    }

    fn fail(name: impl Into<String>, detail: impl Into<String>) -> Self {
        PreflightCheck {
            name: name.into(),
            ok: false,
            detail: detail.into(),
        }
    }
}

/// Interprets the answer to a `DryRun=true` request: `DryRunOperation` means allowed.
fn dry_run_check<T>(action: &str, res: Result<T, ApiError>) -> PreflightCheck {
    let name = format!("iam {action}");
    match res {
        Err(e) if e.is("dry-run") => PreflightCheck::pass(name, "allowed (DryRun)"),
        Err(e) if e.is("unauthorized") => PreflightCheck::fail(
            name,
            format!(
                "not allowed: grant {action} to this instance's role ({})",
                e.message
            ),
        ),
        Err(e) => PreflightCheck::fail(name, format!("could not check: {}", e.message)),
        Ok(_) => PreflightCheck::fail(
            name,
            "the endpoint ignored DryRun=true and performed the call",
        ),
    }
}

/// Checks that this node can fail over: the ENI exists in this instance's AZ and is nobody's
/// primary interface, IAM allows the four EC2 actions (by `DryRun=true`), and the configured
/// peers exist. Never changes anything.
pub async fn preflight(settings: &Settings) -> Vec<PreflightCheck> {
    let mut checks = Vec::new();
    let cloud = match Ec2Cloud::new(
        &settings.aws,
        settings.group.eni.clone(),
        settings.group.device_index,
        settings.node.instance_id.clone(),
    )
    .await
    {
        Ok(c) => {
            checks.push(PreflightCheck::pass(
                "identity",
                format!(
                    "instance {} in {}",
                    c.identity.instance_id,
                    c.identity
                        .availability_zone
                        .as_deref()
                        .unwrap_or("unknown AZ")
                ),
            ));
            c
        }
        Err(e) => {
            checks.push(PreflightCheck::fail("identity", e.to_string()));
            return checks;
        }
    };
    let deadline = cloud.deadline();
    let eni = cloud.eni.as_str();
    let me = cloud.me().as_str();

    let info = match cloud.describe_full(deadline).await {
        Ok(info) => {
            checks.push(PreflightCheck::pass(
                "eni exists",
                format!(
                    "{eni}: {} {} mac {}",
                    info.status, info.primary_ip, info.mac
                ),
            ));
            Some(info)
        }
        Err(e) => {
            checks.push(PreflightCheck::fail("eni exists", format!("{eni}: {e}")));
            None
        }
    };
    if let Some(info) = &info {
        let mine = cloud.identity.availability_zone.as_deref();
        let theirs = info.availability_zone.as_deref();
        checks.push(match (mine, theirs) {
            (Some(a), Some(b)) if a == b => PreflightCheck::pass("same az", a),
            (Some(a), Some(b)) => PreflightCheck::fail(
                "same az",
                format!("{eni} is in {b} but this instance is in {a}: it can never attach here"),
            ),
            _ => PreflightCheck::fail("same az", "Availability Zone unknown"),
        });
        checks.push(match &info.attachment {
            Some(a) if a.device_index == 0 => PreflightCheck::fail(
                "not a primary interface",
                format!(
                    "{eni} is device index 0 (the primary interface) of {}: it cannot move",
                    a.instance_id
                ),
            ),
            Some(a) => PreflightCheck::pass(
                "not a primary interface",
                format!(
                    "attached to {} at device index {}",
                    a.instance_id, a.device_index
                ),
            ),
            None => PreflightCheck::pass("not a primary interface", "not attached"),
        });
    }

    let index = i32::try_from(settings.group.device_index).unwrap_or(i32::MAX);
    let describe = cloud
        .call("DescribeNetworkInterfaces", deadline, || {
            cloud
                .client
                .describe_network_interfaces()
                .network_interface_ids(eni)
                .dry_run(true)
                .send()
        })
        .await;
    checks.push(dry_run_check("ec2:DescribeNetworkInterfaces", describe));
    let attach = cloud
        .call("AttachNetworkInterface", deadline, || {
            cloud
                .client
                .attach_network_interface()
                .network_interface_id(eni)
                .instance_id(me)
                .device_index(index)
                .dry_run(true)
                .send()
        })
        .await;
    checks.push(dry_run_check("ec2:AttachNetworkInterface", attach));
    // Detach and modify need an attachment id; when the ENI is not attached, a well-formed id
    // that names nothing still exercises the permission check, which EC2 does first.
    let attachment_id = info
        .as_ref()
        .and_then(|i| i.attachment.as_ref())
        .map(|a| a.attachment_id.clone())
        .unwrap_or_else(|| "eni-attach-00000000000000000".into());
    let detach = cloud
        .call("DetachNetworkInterface", deadline, || {
            cloud
                .client
                .detach_network_interface()
                .attachment_id(&attachment_id)
                .dry_run(true)
                .send()
        })
        .await;
    checks.push(dry_run_check("ec2:DetachNetworkInterface", detach));
    let changes = NetworkInterfaceAttachmentChanges::builder()
        .attachment_id(&attachment_id)
        .delete_on_termination(false)
        .build();
    let modify = cloud
        .call("ModifyNetworkInterfaceAttribute", deadline, || {
            cloud
                .client
                .modify_network_interface_attribute()
                .network_interface_id(eni)
                .attachment(changes.clone())
                .dry_run(true)
                .send()
        })
        .await;
    checks.push(dry_run_check("ec2:ModifyNetworkInterfaceAttribute", modify));

    for peer in &settings.peers {
        let Some(id) = &peer.instance_id else {
            continue;
        };
        let name = format!("peer {}", peer.name);
        checks.push(match cloud.instance_az(id, deadline).await {
            Ok(Some(az)) => PreflightCheck::pass(name, format!("{id} exists in {az}")),
            Ok(None) => PreflightCheck::fail(name, format!("instance {id} not found")),
            Err(e) if e.kind == "not-found" => {
                PreflightCheck::fail(name, format!("instance {id} not found"))
            }
            Err(e) => PreflightCheck::fail(name, format!("{id}: {e}")),
        });
    }
    checks
}

/// `enipeer check --preflight`: runs [`preflight`], prints one line per check and returns the
/// exit code (0 when every check passed).
pub fn preflight_command(settings: &Settings) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("preflight: cannot start the async runtime: {e}");
            return crate::exit::SOFTWARE;
        }
    };
    let checks = rt.block_on(preflight(settings));
    for c in &checks {
        println!(
            "{:<4}  {}: {}",
            if c.ok { "ok" } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    if checks.iter().all(|c| c.ok) {
        crate::exit::OK
    } else {
        crate::exit::FAILURE
    }
}

#[cfg(test)]
mod tests;
