//! Retry and classification tests: the pure decision functions directly, and the whole SDK stack
//! (serialization, error parsing, our retry loop) through a replaying HTTP connector plugged into
//! the SDK's own `HttpClient` seam.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aws_sdk_ec2::config::http::HttpRequest;
use aws_sdk_ec2::config::{Credentials, HttpClient, Region, RuntimeComponents};
use aws_smithy_runtime_api::client::http::{
    HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;

use super::*;
use crate::cloud::CloudErrorKind;

const ENI: &str = "eni-0123456789abcdef0";
const ME: &str = "i-0aaaaaaaaaaaaaaaa";

fn policy(deadline_ms: u64) -> RetryPolicy {
    RetryPolicy {
        deadline: Duration::from_millis(deadline_ms),
        attempt_timeout: Duration::from_millis(500),
        backoff_base: Duration::from_millis(2),
        backoff_cap: Duration::from_millis(10),
    }
}

#[test]
fn codes_win_over_statuses() {
    assert_eq!(
        classify(Some("RequestLimitExceeded"), Some(503)),
        CloudErrorKind::Throttled
    );
    assert_eq!(
        classify(Some("DryRunOperation"), Some(412)),
        CloudErrorKind::DryRun
    );
    assert_eq!(
        classify(Some("UnauthorizedOperation"), Some(403)),
        CloudErrorKind::Unauthorized
    );
    assert_eq!(
        classify(Some("InvalidNetworkInterfaceID.NotFound"), Some(400)),
        CloudErrorKind::NotFound
    );
    assert_eq!(
        classify(Some("InvalidAttachmentID.NotFound"), Some(400)),
        CloudErrorKind::NotFound
    );
    assert_eq!(
        classify(Some("InvalidNetworkInterface.InUse"), Some(400)),
        CloudErrorKind::InUse
    );
    assert_eq!(
        classify(Some("InvalidParameterValue"), Some(400)),
        CloudErrorKind::InvalidParameter
    );
    assert_eq!(
        classify(Some("InternalError"), Some(500)),
        CloudErrorKind::Http5xx
    );
}

#[test]
fn statuses_decide_without_a_code() {
    assert_eq!(classify(None, Some(503)), CloudErrorKind::Throttled);
    assert_eq!(classify(None, Some(502)), CloudErrorKind::Http5xx);
    assert_eq!(classify(None, Some(400)), CloudErrorKind::Api);
    assert_eq!(
        classify(Some("SomethingNew"), Some(400)),
        CloudErrorKind::Api
    );
    assert_eq!(
        classify(Some("SomethingNew"), Some(500)),
        CloudErrorKind::Http5xx
    );
}

#[test]
fn backoff_doubles_is_capped_and_jittered() {
    let p = RetryPolicy {
        deadline: Duration::from_secs(10),
        attempt_timeout: Duration::from_secs(2),
        backoff_base: Duration::from_millis(50),
        backoff_cap: Duration::from_secs(1),
    };
    assert_eq!(backoff_delay(&p, 0, 0.0), Duration::from_millis(25));
    assert_eq!(backoff_delay(&p, 0, 1.0), Duration::from_millis(50));
    assert_eq!(backoff_delay(&p, 1, 0.0), Duration::from_millis(50));
    assert_eq!(backoff_delay(&p, 3, 1.0), Duration::from_millis(400));
    assert_eq!(backoff_delay(&p, 10, 1.0), Duration::from_secs(1));
    assert_eq!(backoff_delay(&p, 40, 0.0), Duration::from_millis(500));
    // Out-of-range jitter is clamped rather than trusted.
    assert_eq!(backoff_delay(&p, 0, 7.0), Duration::from_millis(50));
}

#[test]
fn next_step_respects_class_and_deadline() {
    let p = RetryPolicy::for_deadline(Duration::from_secs(10));
    let throttled = CloudErrorKind::Throttled;
    assert_eq!(
        next_step(throttled, &p, 0, Duration::from_secs(5), 0.0),
        NextStep::RetryAfter(Duration::from_millis(25))
    );
    assert_eq!(
        next_step(throttled, &p, 0, Duration::from_millis(10), 0.0),
        NextStep::Deadline
    );
    assert_eq!(
        next_step(CloudErrorKind::NotFound, &p, 0, Duration::from_secs(5), 0.0),
        NextStep::Fail
    );
}

#[test]
fn policy_for_deadline_keeps_attempts_shorter_than_the_deadline() {
    let p = RetryPolicy::for_deadline(Duration::from_secs(10));
    assert_eq!(p.attempt_timeout, Duration::from_millis(2500));
    let short = RetryPolicy::for_deadline(Duration::from_millis(300));
    assert_eq!(short.attempt_timeout, Duration::from_millis(300));
    let long = RetryPolicy::for_deadline(Duration::from_secs(60));
    assert_eq!(long.attempt_timeout, Duration::from_secs(3));
}

#[test]
fn cidr_parsing() {
    assert_eq!(
        parse_cidr("198.18.1.0/24"),
        Some(Ipv4Net {
            addr: Ipv4Addr::new(198, 18, 1, 0),
            prefix: 24
        })
    );
    assert_eq!(parse_cidr("198.18.1.0/33"), None);
    assert_eq!(parse_cidr("198.18.1.0"), None);
}

/// Answers each request with the next canned (status, body); counts requests.
#[derive(Debug, Clone, Default)]
struct Replay {
    answers: Arc<Mutex<VecDeque<(u16, String)>>>,
    /// Answer used once the queue is empty.
    fallback: Arc<Mutex<Option<(u16, String)>>>,
    requests: Arc<AtomicUsize>,
    actions: Arc<Mutex<Vec<String>>>,
}

impl Replay {
    fn new(answers: Vec<(u16, String)>) -> Self {
        Replay {
            answers: Arc::new(Mutex::new(answers.into())),
            ..Default::default()
        }
    }

    fn always(status: u16, body: String) -> Self {
        let r = Replay::default();
        *r.fallback.lock().unwrap() = Some((status, body));
        r
    }

    fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl HttpConnector for Replay {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let body = request
            .body()
            .bytes()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        let action = body
            .split('&')
            .find_map(|kv| kv.strip_prefix("Action="))
            .unwrap_or("?")
            .to_owned();
        self.actions.lock().unwrap().push(action);
        let next = self
            .answers
            .lock()
            .unwrap()
            .pop_front()
            .or_else(|| self.fallback.lock().unwrap().clone());
        let (status, body) = next.expect("replay ran out of answers");
        let response = aws_sdk_ec2::config::http::HttpResponse::new(
            StatusCode::try_from(status).unwrap(),
            SdkBody::from(body),
        );
        HttpConnectorFuture::ready(Ok(response))
    }
}

impl HttpClient for Replay {
    fn http_connector(
        &self,
        _settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(self.clone())
    }
}

fn cloud_with(replay: &Replay, policy: RetryPolicy) -> Ec2Cloud {
    let conf = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("AKID", "SECRET", None, None, "test"))
        .http_client(replay.clone())
        .retry_config(RetryConfig::disabled())
        .build();
    Ec2Cloud::from_parts(
        Client::from_conf(conf),
        Identity {
            instance_id: ME.parse().unwrap(),
            region: Some("us-east-1".into()),
            availability_zone: Some("us-east-1a".into()),
        },
        ENI.parse().unwrap(),
        1,
        policy,
        Duration::from_millis(100),
    )
}

fn error_body(code: &str) -> String {
    format!(
        "<Response><Errors><Error><Code>{code}</Code><Message>test says {code}</Message></Error>\
         </Errors><RequestID>r-1</RequestID></Response>"
    )
}

fn describe_body(attachment: &str) -> String {
    format!(
        r#"<DescribeNetworkInterfacesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
<requestId>r-1</requestId><networkInterfaceSet><item>
{attachment}
<availabilityZone>us-east-1a</availabilityZone><macAddress>02:00:00:00:00:01</macAddress>
<networkInterfaceId>{ENI}</networkInterfaceId><privateIpAddress>198.18.1.25</privateIpAddress>
<privateIpAddressesSet><item><privateIpAddress>198.18.1.25</privateIpAddress><primary>true</primary></item>
<item><privateIpAddress>198.18.1.26</privateIpAddress><primary>false</primary></item></privateIpAddressesSet>
<status>{status}</status><subnetId>subnet-0123456789abcdef0</subnetId>
</item></networkInterfaceSet></DescribeNetworkInterfacesResponse>"#,
        status = if attachment.is_empty() {
            "available"
        } else {
            "in-use"
        }
    )
}

fn attached_to(instance: &str, dot: bool) -> String {
    format!(
        "<attachment><attachmentId>eni-attach-0123456789abcdef0</attachmentId>\
         <deleteOnTermination>{dot}</deleteOnTermination><deviceIndex>1</deviceIndex>\
         <instanceId>{instance}</instanceId><status>attached</status></attachment>"
    )
}

#[tokio::test]
async fn throttled_then_ok_succeeds() {
    let replay = Replay::new(vec![
        (503, error_body("RequestLimitExceeded")),
        (503, error_body("RequestLimitExceeded")),
        (
            500,
            "<html><body>Internal Server Error</body></html>".into(),
        ),
        (200, describe_body("")),
    ]);
    let cloud = cloud_with(&replay, policy(5_000));
    let info = cloud.describe_raw(cloud.deadline()).await.unwrap();
    assert_eq!(info.primary_ip, Ipv4Addr::new(198, 18, 1, 25));
    assert_eq!(info.secondary_ips, vec![Ipv4Addr::new(198, 18, 1, 26)]);
    assert_eq!(info.attachment, None);
    assert_eq!(replay.count(), 4);
}

#[tokio::test]
async fn deadline_exceeded_fails_with_the_deadline_error() {
    let replay = Replay::always(503, error_body("RequestLimitExceeded"));
    let cloud = cloud_with(&replay, policy(150));
    let err = cloud.describe_raw(cloud.deadline()).await.unwrap_err();
    assert_eq!(err.kind, CloudErrorKind::Deadline);
    assert!(err.retryable());
    assert!(
        err.message.contains("RequestLimitExceeded"),
        "the last error is named: {err}"
    );
    assert!(replay.count() >= 2, "it retried before giving up");
}

#[tokio::test]
async fn not_found_is_not_retried() {
    let replay = Replay::always(400, error_body("InvalidNetworkInterfaceID.NotFound"));
    let cloud = cloud_with(&replay, policy(5_000));
    let err = cloud.describe_raw(cloud.deadline()).await.unwrap_err();
    assert_eq!(err.kind, CloudErrorKind::NotFound);
    assert!(!err.retryable());
    assert_eq!(replay.count(), 1);
}

#[tokio::test]
async fn unauthorized_is_not_retried() {
    let replay = Replay::always(403, error_body("UnauthorizedOperation"));
    let cloud = cloud_with(&replay, policy(5_000));
    let err = cloud.release().await.unwrap_err();
    assert_eq!(err.kind, CloudErrorKind::Unauthorized);
    assert!(!err.retryable());
    assert_eq!(replay.count(), 1);
}

#[tokio::test]
async fn claim_when_already_attached_here_makes_no_mutating_call() {
    let replay = Replay::new(vec![
        (200, describe_body(&attached_to(ME, false))),
        (
            200,
            "<DescribeSubnetsResponse><subnetSet><item><subnetId>subnet-0123456789abcdef0\
             </subnetId><cidrBlock>198.18.1.0/24</cidrBlock></item></subnetSet>\
             </DescribeSubnetsResponse>"
                .into(),
        ),
    ]);
    let cloud = cloud_with(&replay, policy(5_000));
    let out = cloud
        .claim(ClaimRequest {
            expected_holder: None,
            force: false,
            device_indexes: vec![1],
        })
        .await
        .unwrap();
    match out {
        ClaimOutcome::Claimed {
            already_mine, info, ..
        } => {
            assert!(already_mine);
            assert_eq!(info.subnet_cidr.map(|n| n.prefix), Some(24));
        }
        other => panic!("expected Claimed, got {other:?}"),
    }
    assert_eq!(
        *replay.actions.lock().unwrap(),
        ["DescribeNetworkInterfaces", "DescribeSubnets"]
    );
}

#[tokio::test]
async fn claim_stops_at_an_unexpected_holder() {
    let other = "i-0bbbbbbbbbbbbbbbb";
    let replay = Replay::always(200, describe_body(&attached_to(other, false)));
    let cloud = cloud_with(&replay, policy(5_000));
    *cloud.subnet_cidr.lock().unwrap() = parse_cidr("198.18.1.0/24").map(|n| {
        (
            "subnet-0123456789abcdef0".to_owned(),
            SubnetCidrs {
                v4: Some(n),
                v6: None,
            },
        )
    });
    let out = cloud
        .claim(ClaimRequest {
            expected_holder: Some("i-0cccccccccccccccc".parse().unwrap()),
            force: true,
            device_indexes: vec![1],
        })
        .await
        .unwrap();
    match out {
        ClaimOutcome::HeldBy { holder, .. } => assert_eq!(holder.as_str(), other),
        other => panic!("expected HeldBy, got {other:?}"),
    }
    assert_eq!(
        *replay.actions.lock().unwrap(),
        ["DescribeNetworkInterfaces"]
    );
}

#[tokio::test]
async fn describe_reads_ipv6_addresses_and_the_associated_ipv6_subnet_block() {
    // As EC2 answers for a dual-stack ENI: `ipv6AddressesSet`, and in the subnet a
    // disassociated block before the one in force.
    let body = describe_body("").replace(
        "<status>",
        "<ipv6AddressesSet><item><ipv6Address>2001:db8:0:1::25</ipv6Address></item>\
         <item><ipv6Address>not-an-address</ipv6Address></item></ipv6AddressesSet><status>",
    );
    let replay = Replay::new(vec![
        (200, body),
        (
            200,
            "<DescribeSubnetsResponse><subnetSet><item><subnetId>subnet-0123456789abcdef0\
             </subnetId><cidrBlock>198.18.1.0/24</cidrBlock><ipv6CidrBlockAssociationSet>\
             <item><ipv6CidrBlock>2001:db8:0:9::/64</ipv6CidrBlock><ipv6CidrBlockState>\
             <state>disassociated</state></ipv6CidrBlockState></item>\
             <item><ipv6CidrBlock>2001:db8:0:1::/64</ipv6CidrBlock><ipv6CidrBlockState>\
             <state>associated</state></ipv6CidrBlockState></item>\
             </ipv6CidrBlockAssociationSet></item></subnetSet></DescribeSubnetsResponse>"
                .into(),
        ),
    ]);
    let cloud = cloud_with(&replay, policy(5_000));
    let info = cloud.describe().await.unwrap();
    assert_eq!(
        info.ipv6.as_deref(),
        Some(&crate::cloud::EniIpv6 {
            addresses: vec!["2001:db8:0:1::25".parse().unwrap()],
            subnet_cidr: Some(crate::cloud::Ipv6Net {
                addr: "2001:db8:0:1::".parse().unwrap(),
                prefix: 64
            }),
        }),
        "an address that does not parse is left out"
    );
    assert_eq!(info.subnet_cidr.map(|n| n.prefix), Some(24));
}
