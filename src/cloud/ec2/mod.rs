//! The EC2 adapter: the claim primitives ([`Primitives`]) and [`Cloud`] implemented with
//! aws-sdk-ec2, plus the preflight checks ([`preflight`]).
//!
//! This is the only module that talks to the AWS SDK. It owns the SDK client (created once, so a
//! failover spends no time on TLS setup or credential fetches), this instance's identity and the
//! retry budget of every EC2 call. The claim and release procedures themselves live in
//! [`crate::cloud::claim`], shared with the fake and the simulation.
//!
//! The SDK's own retries are turned off: its standard mode backs off from about a second, far too
//! slow for a failover. Instead every call goes through [`Ec2Cloud::call`], which retries the
//! retryable errors (see [`classify`]) with capped, jittered exponential backoff until the
//! operation's deadline (`aws.operation-timeout`) and answers everything else at once.

mod preflight;
mod retry;

pub use preflight::{preflight, preflight_command, PreflightCheck};
pub use retry::{backoff_delay, classify, next_step, NextStep, RetryPolicy};
use retry::{deadline_error, error_chain, from_sdk, jitter};

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    AttachmentStatus, NetworkInterface, NetworkInterfaceAttachmentChanges, SubnetCidrBlockStateCode,
};
use aws_sdk_ec2::Client;
use futures::future::BoxFuture;
use futures::FutureExt;
use tracing::{debug, info, warn};

use crate::cloud::claim::{self, Context, Limits, Primitives};
use crate::cloud::{
    AttachState, Attachment, ClaimHints, ClaimOutcome, ClaimRequest, Cloud, CloudError,
    CloudErrorKind, EniInfo, EniIpv6, Identity, Ipv4Net, Ipv6Net, PollSchedule, ReleaseOutcome,
    Watched,
};
use crate::config::AwsSettings;
use crate::ids::{EniId, InstanceId};
use crate::timeline::Step;

/// The EC2 implementation of [`Cloud`] for one ENI.
pub struct Ec2Cloud {
    client: Client,
    eni: EniId,
    device_index: u32,
    identity: Identity,
    policy: RetryPolicy,
    force_detach_grace: Duration,
    poll: PollSchedule,
    /// The ENI's subnet never changes, so its CIDRs are looked up once.
    subnet_cidr: Mutex<Option<(String, SubnetCidrs)>>,
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
            CloudError::new(
                CloudErrorKind::Imds,
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
                    CloudError::new(
                        CloudErrorKind::BadResponse,
                        format!("instance metadata instance-id: {e}"),
                    )
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
            return Err(CloudError::new(
                CloudErrorKind::NoRegion,
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
        cloud.poll = PollSchedule::every(aws.poll_interval);
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
            Err(e) => warn!(instance_id = %me, kind = e.kind_str(), error = %e.message,
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
            poll: PollSchedule::default(),
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
    ) -> Result<T, CloudError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let started = Instant::now();
        let mut retry = 0u32;
        let mut last: Option<CloudError> = None;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(deadline_error(action, retry, started, last.as_ref()));
            }
            let budget = remaining.min(self.policy.attempt_timeout);
            let err = match tokio::time::timeout(budget, op()).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => from_sdk(e),
                Err(_) => CloudError::new(
                    CloudErrorKind::Timeout,
                    format!("no answer within {} ms", budget.as_millis()),
                ),
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            match next_step(err.kind, &self.policy, retry, remaining, jitter()) {
                NextStep::Fail => {
                    debug!(action, kind = err.kind_str(), error = %err.message, "EC2 answered");
                    return Err(err);
                }
                NextStep::Deadline => {
                    warn!(action, kind = err.kind_str(), attempts = retry + 1, error = %err.message,
                        "EC2 call failed, deadline reached");
                    return Err(deadline_error(action, retry + 1, started, Some(&err)));
                }
                NextStep::RetryAfter(delay) => {
                    warn!(action, kind = err.kind_str(), attempt = retry + 1,
                        delay_ms = delay.as_millis() as u64, error = %err.message,
                        "EC2 call failed, retrying");
                    self.retries
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(Step::now(format!(
                            "{action} failed ({}), retry {}",
                            err.kind,
                            retry + 1
                        )));
                    tokio::time::sleep(delay).await;
                    retry += 1;
                    last = Some(err);
                }
            }
        }
    }

    /// Describe without the subnet lookup, for tests that count requests.
    #[cfg(test)]
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
                CloudError::new(
                    CloudErrorKind::NotFound,
                    format!("network interface {} not in the answer", self.eni),
                )
            })?;
        let subnet = ni.subnet_id().map(str::to_owned);
        let cached = self.cached_cidr(subnet.as_deref()).unwrap_or_default();
        Ok((eni_info(&self.eni, ni, cached)?, subnet))
    }

    fn cached_cidr(&self, subnet: Option<&str>) -> Option<SubnetCidrs> {
        let cache = self.subnet_cidr.lock().ok()?;
        cache
            .as_ref()
            .filter(|(id, _)| Some(id.as_str()) == subnet)
            .map(|(_, nets)| *nets)
    }

    /// Describe plus the subnet's CIDRs (looked up once and cached).
    async fn describe_full(&self, deadline: Instant) -> Result<EniInfo, CloudError> {
        let (mut info, subnet) = self.describe_with_subnet(deadline).await?;
        // Looked up again while the ENI has IPv6 addresses but the subnet had no IPv6 block
        // yet (one associated after the first look).
        let v6_missing = info
            .ipv6
            .as_ref()
            .is_some_and(|v6| v6.subnet_cidr.is_none());
        let missing = info.subnet_cidr.is_none() || v6_missing;
        if let (true, Some(subnet)) = (missing, subnet) {
            let out = self
                .call("DescribeSubnets", deadline, || {
                    self.client.describe_subnets().subnet_ids(&subnet).send()
                })
                .await?;
            let nets = out.subnets().first().map(|s| SubnetCidrs {
                v4: s.cidr_block().and_then(parse_cidr),
                // Only an association in force: a disassociated block lingers in the answer.
                v6: s
                    .ipv6_cidr_block_association_set()
                    .iter()
                    .filter(|a| {
                        a.ipv6_cidr_block_state().and_then(|st| st.state())
                            == Some(&SubnetCidrBlockStateCode::Associated)
                    })
                    .find_map(|a| a.ipv6_cidr_block().and_then(parse_cidr6)),
            });
            let nets = nets.unwrap_or_default();
            if let (Some(_), Ok(mut cache)) = (nets.v4, self.subnet_cidr.lock()) {
                *cache = Some((subnet, nets));
            }
            info.subnet_cidr = nets.v4;
            if let Some(v6) = info.ipv6.as_mut() {
                v6.subnet_cidr = nets.v6;
            }
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

    fn me(&self) -> &InstanceId {
        &self.identity.instance_id
    }
}

/// The CIDRs of the ENI's subnet.
#[derive(Debug, Clone, Copy, Default)]
struct SubnetCidrs {
    v4: Option<Ipv4Net>,
    v6: Option<Ipv6Net>,
}

fn parse_cidr6(s: &str) -> Option<Ipv6Net> {
    let (addr, prefix) = s.split_once('/')?;
    let addr: Ipv6Addr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    (prefix <= 128).then_some(Ipv6Net { addr, prefix })
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
    subnet: SubnetCidrs,
) -> Result<EniInfo, CloudError> {
    let bad = |what: &str| {
        CloudError::new(
            CloudErrorKind::BadResponse,
            format!("DescribeNetworkInterfaces for {eni}: {what}"),
        )
    };
    let attachment = match ni.attachment() {
        None => None,
        Some(a) => {
            let instance_id = a
                .instance_id()
                .ok_or_else(|| {
                    CloudError::new(
                        CloudErrorKind::ForeignAttachment,
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
    let ipv6_addresses: Vec<Ipv6Addr> = ni
        .ipv6_addresses()
        .iter()
        .filter_map(|a| a.ipv6_address()?.parse().ok())
        .collect();
    let ipv6 = (!ipv6_addresses.is_empty()).then(|| {
        Box::new(EniIpv6 {
            addresses: ipv6_addresses,
            subnet_cidr: subnet.v6,
        })
    });
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
        subnet_cidr: subnet.v4,
        ipv6,
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
        async move { self.claim_watching(req, ClaimHints::default()).await.result }.boxed()
    }

    fn claim_watching<'a>(
        &'a self,
        req: ClaimRequest,
        hints: ClaimHints<'a>,
    ) -> BoxFuture<'a, Watched> {
        async move {
            self.take_retries();
            let mut out = claim::run_claim_watching(self, req, hints).await;
            let retried = self.take_retries();
            if let Some(calls) = out.calls.as_mut() {
                calls.retries += u32::try_from(retried.len()).unwrap_or(u32::MAX);
            }
            match &mut out.result {
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
            let mut out = claim::run_release(self).await;
            let retried = self.take_retries();
            if let Ok(r) = &mut out {
                r.steps.extend(retried);
            }
            out
        }
        .boxed()
    }
}

/// The four EC2 calls of a claim or release, each retried within the procedure's deadline.
impl Primitives for Ec2Cloud {
    fn context(&self) -> Context {
        Context {
            me: self.me().clone(),
            eni: self.eni.clone(),
            limits: Limits {
                deadline: self.policy.deadline,
                force_detach_grace: self.force_detach_grace,
                poll_jitter: jitter,
            },
        }
    }

    fn poll_schedule(&self) -> PollSchedule {
        self.poll
    }

    /// DescribeNetworkInterfaces; DescribeSubnets too the first time (its answer is cached).
    fn describe_eni(&self, deadline: Instant) -> BoxFuture<'_, Result<EniInfo, CloudError>> {
        self.describe_full(deadline).boxed()
    }

    fn attach(
        &self,
        device_index: u32,
        deadline: Instant,
    ) -> BoxFuture<'_, Result<(), CloudError>> {
        async move {
            let index = i32::try_from(device_index).map_err(|_| {
                CloudError::new(
                    CloudErrorKind::InvalidParameter,
                    format!("device index {device_index} too large"),
                )
            })?;
            self.call("AttachNetworkInterface", deadline, || {
                self.client
                    .attach_network_interface()
                    .network_interface_id(self.eni.as_str())
                    .instance_id(self.me().as_str())
                    .device_index(index)
                    .send()
            })
            .await
            .map(drop)
        }
        .boxed()
    }

    fn detach<'a>(
        &'a self,
        attachment_id: &'a str,
        force: bool,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<(), CloudError>> {
        async move {
            self.call("DetachNetworkInterface", deadline, || {
                self.client
                    .detach_network_interface()
                    .attachment_id(attachment_id)
                    .force(force)
                    .send()
            })
            .await
            .map(drop)
        }
        .boxed()
    }

    fn keep_on_termination<'a>(
        &'a self,
        attachment_id: &'a str,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<(), CloudError>> {
        async move {
            let changes = NetworkInterfaceAttachmentChanges::builder()
                .attachment_id(attachment_id)
                .delete_on_termination(false)
                .build();
            self.call("ModifyNetworkInterfaceAttribute", deadline, || {
                self.client
                    .modify_network_interface_attribute()
                    .network_interface_id(self.eni.as_str())
                    .attachment(changes.clone())
                    .send()
            })
            .await
            .map(drop)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests;
