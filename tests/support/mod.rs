//! Shared test support for the EC2 adapter tests: a moto server per test (started on a free
//! loopback port, killed on drop), a seeded lab (VPC, subnet, two instances, an ENI), and the
//! settings an adapter needs to reach it.

#![allow(dead_code)]

pub mod cloud_front;
pub mod imds;
pub mod lab;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{PrivateIpAddressSpecification, ResourceType, Tag, TagSpecification};
use enipeer::cloud::ec2::Ec2Cloud;
use enipeer::config::*;
use enipeer::ids::{EniId, InstanceId};

/// The moto version the tests are written against; .ci/run and the README read the same file.
pub const MOTO_VERSION: &str = include_str!("../moto-version.txt");

pub const REGION: &str = "us-east-1";
pub const AZ: &str = "us-east-1a";
pub const ENI_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 25);
pub const ENI_SECONDARY_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 26);

fn install_hint() -> String {
    format!(
        "moto is required for these tests: pip install 'moto[server]=={}'",
        MOTO_VERSION.trim()
    )
}

/// Sets the process environment once, before any test reads it: static credentials (moto
/// accepts any signature) and no instance metadata, so nothing here can reach outside.
pub fn env_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        std::env::set_var("AWS_CONFIG_FILE", "/nonexistent/enipeer-test-aws-config");
        std::env::set_var(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/enipeer-test-aws-credentials",
        );
    });
}

/// A moto server process, killed when dropped.
pub struct Moto {
    pub addr: SocketAddr,
    child: Child,
    log: PathBuf,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().unwrap().port()
}

impl Moto {
    /// Starts `python3 -m moto.server` on a free 127.0.0.1 port and waits until it answers.
    /// Panics (failing the test) when moto is missing or not the pinned version: a silent skip
    /// would hide a broken CI.
    pub fn start() -> Moto {
        env_once();
        let version = Command::new("python3")
            .args(["-c", "import moto; print(moto.__version__)"])
            .output();
        let version = match version {
            Ok(out) if out.status.success() => {
                String::from_utf8_lossy(&out.stdout).trim().to_owned()
            }
            Ok(out) => panic!(
                "{}\n(python3 could not import moto: {})",
                install_hint(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => panic!("{}\n(python3 not runnable: {e})", install_hint()),
        };
        assert_eq!(
            version,
            MOTO_VERSION.trim(),
            "moto {version} is installed but the tests pin {}: {}",
            MOTO_VERSION.trim(),
            install_hint()
        );
        let port = free_port();
        let log = std::env::temp_dir().join(format!("enipeer-moto-{port}.log"));
        let log_file = std::fs::File::create(&log).expect("moto log file");
        let mut cmd = Command::new("python3");
        cmd.args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log fd"))
        .stderr(log_file);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{}\n(spawn failed: {e})", install_hint()));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut moto = Moto { addr, child, log };
        let started = Instant::now();
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!(
                    "moto exited ({status}) before listening: {}\n{}",
                    std::fs::read_to_string(&moto.log).unwrap_or_default(),
                    install_hint()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "moto did not listen on {addr} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        moto
    }

    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// An SDK client for seeding and inspecting moto directly.
pub async fn sdk_client(endpoint: &str) -> aws_sdk_ec2::Client {
    env_once();
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(endpoint)
        .load()
        .await;
    aws_sdk_ec2::Client::new(&conf)
}

/// What [`seed`] created.
#[derive(Debug, Clone)]
pub struct Lab {
    pub vpc: String,
    pub subnet: String,
    pub a: InstanceId,
    pub b: InstanceId,
    pub eni: EniId,
}

/// Creates VPC 198.18.0.0/16, subnet 198.18.1.0/24, two instances and an ENI with private IP
/// 198.18.1.25 (and secondary 198.18.1.26), tagged `enipeer-group`. The first call also warms
/// moto up (its first EC2 request is slow).
pub async fn seed(ec2: &aws_sdk_ec2::Client) -> Lab {
    let vpc = ec2
        .create_vpc()
        .cidr_block("198.18.0.0/16")
        .send()
        .await
        .expect("CreateVpc")
        .vpc
        .and_then(|v| v.vpc_id)
        .expect("vpc id");
    let subnet = ec2
        .create_subnet()
        .vpc_id(&vpc)
        .cidr_block("198.18.1.0/24")
        .availability_zone(AZ)
        .send()
        .await
        .expect("CreateSubnet")
        .subnet
        .and_then(|s| s.subnet_id)
        .expect("subnet id");
    let run = ec2
        .run_instances()
        .image_id("ami-12345678")
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
        .min_count(2)
        .max_count(2)
        .subnet_id(&subnet)
        .send()
        .await
        .expect("RunInstances");
    let ids: Vec<InstanceId> = run
        .instances()
        .iter()
        .map(|i| i.instance_id().unwrap().parse().unwrap())
        .collect();
    let eni = ec2
        .create_network_interface()
        .subnet_id(&subnet)
        .private_ip_addresses(
            PrivateIpAddressSpecification::builder()
                .private_ip_address(ENI_IP.to_string())
                .primary(true)
                .build(),
        )
        .private_ip_addresses(
            PrivateIpAddressSpecification::builder()
                .private_ip_address(ENI_SECONDARY_IP.to_string())
                .primary(false)
                .build(),
        )
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::NetworkInterface)
                .tags(Tag::builder().key("enipeer-group").value("web").build())
                .build(),
        )
        .send()
        .await
        .expect("CreateNetworkInterface")
        .network_interface
        .and_then(|n| n.network_interface_id)
        .expect("eni id");
    Lab {
        vpc,
        subnet,
        a: ids[0].clone(),
        b: ids[1].clone(),
        eni: eni.parse().unwrap(),
    }
}

/// Attaches the ENI directly (bypassing the adapter) and returns the attachment id.
pub async fn attach_directly(ec2: &aws_sdk_ec2::Client, lab: &Lab, to: &InstanceId) -> String {
    ec2.attach_network_interface()
        .network_interface_id(lab.eni.as_str())
        .instance_id(to.as_str())
        .device_index(1)
        .send()
        .await
        .expect("AttachNetworkInterface")
        .attachment_id
        .expect("attachment id")
}

pub fn aws_settings(endpoint: &str, operation_timeout: Duration) -> AwsSettings {
    AwsSettings {
        region: Some(REGION.into()),
        endpoint_url: Some(endpoint.into()),
        operation_timeout,
        force_detach_grace: Duration::from_millis(300),
        verify_interval: Duration::from_secs(5),
    }
}

/// An adapter for instance `me`, with the instance id overridden (no IMDS here).
pub async fn cloud(endpoint: &str, lab: &Lab, me: &InstanceId) -> Ec2Cloud {
    cloud_with_timeout(endpoint, lab, me, Duration::from_secs(5)).await
}

pub async fn cloud_with_timeout(
    endpoint: &str,
    lab: &Lab,
    me: &InstanceId,
    operation_timeout: Duration,
) -> Ec2Cloud {
    env_once();
    Ec2Cloud::new(
        &aws_settings(endpoint, operation_timeout),
        lab.eni.clone(),
        1,
        Some(me.clone()),
    )
    .await
    .expect("Ec2Cloud::new")
}

/// Full settings for a node `me` with peer `peer` (for preflight).
pub fn settings(endpoint: &str, lab: &Lab, me: &InstanceId, peer: Option<InstanceId>) -> Settings {
    Settings {
        node: NodeSettings {
            name: "node-a".into(),
            priority: 100,
            instance_id: Some(me.clone()),
        },
        peers: vec![PeerSettings {
            name: "node-b".into(),
            addresses: vec![SocketAddr::from(([127, 0, 0, 1], 6543))],
            instance_id: peer,
        }],
        group: GroupSettings {
            id: 1,
            eni: lab.eni.clone(),
            device_index: 1,
            preempt: false,
            preempt_delay: Duration::from_secs(0),
            hold_down: Duration::from_secs(1),
            hold_down_max: Duration::from_secs(8),
        },
        heartbeat: HeartbeatSettings {
            bind: SocketAddr::from(([127, 0, 0, 1], 6543)),
            port: 6543,
            interval: Duration::from_millis(200),
            dead_interval: Duration::from_millis(1000),
            max_clock_skew: Duration::from_secs(30),
        },
        auth: AuthSettings {
            key_file: PathBuf::from("/nonexistent/key"),
            previous_key_file: None,
        },
        aws: aws_settings(endpoint, Duration::from_secs(5)),
        network: NetworkSettings {
            interface_name: None,
            route_table: 10001,
            rule_priority: 10001,
            rp_filter: None,
            mtu: None,
            repair: true,
            reconcile_interval: Duration::from_secs(10),
            link_timeout: Duration::from_secs(10),
        },
        hooks: HookSettings {
            timeout: Duration::from_secs(10),
            on_master: vec![],
            on_backup: vec![],
            on_fault: vec![],
            on_stop: vec![],
        },
        control: ControlSettings {
            socket: PathBuf::from("/nonexistent/sock"),
            group: None,
        },
        stop: StopSettings {
            mode: StopMode::Auto,
            restart_grace: Duration::from_secs(30),
            handover_timeout: Duration::from_secs(10),
        },
        checks: Vec::new(),
        testing: None,
    }
}

/// The labels of a claim's or release's timeline steps.
pub fn labels(steps: &[enipeer::timeline::Step]) -> Vec<&str> {
    steps.iter().map(|s| s.label.as_str()).collect()
}

/// A claim at device index 1 replacing `expected`.
pub fn req(expected: Option<&InstanceId>, force: bool) -> enipeer::cloud::ClaimRequest {
    enipeer::cloud::ClaimRequest {
        expected_holder: expected.cloned(),
        force,
        device_index: 1,
    }
}
