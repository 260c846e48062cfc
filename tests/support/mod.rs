//! Shared test support for the EC2 adapter tests and the lab: a moto server (started on a free
//! loopback port, killed on drop), the seeded cloud ([`Seeded`]: VPC, subnet, the two instances
//! of [`Side`] A and B, an ENI), and the settings an adapter needs to reach it.

#![allow(dead_code)]

pub mod agent_config;
pub mod cloud_front;
pub mod imds;
pub mod lab;
pub mod netns;
pub mod ra;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
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
        "moto {} is required for these tests: run `make lab-deps` (installs it into .venv/), \
         or set ENIPEER_MOTO_PYTHON to a Python that has it",
        MOTO_VERSION.trim()
    )
}

/// The Python that runs moto: `$ENIPEER_MOTO_PYTHON` when set, else the project's own virtual
/// environment that `make lab-deps` fills from tests/requirements-lab.txt. Never `python3` from
/// PATH: the system's Python may hold another moto, or none.
fn moto_python() -> PathBuf {
    if let Some(python) = std::env::var_os("ENIPEER_MOTO_PYTHON") {
        return PathBuf::from(python);
    }
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: {}",
        python.display(),
        install_hint()
    );
    python
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
    /// Starts `<moto_python> -m moto.server` on a free 127.0.0.1 port and waits until it answers.
    /// Panics (failing the test) when moto is missing or not the pinned version: a silent skip
    /// would hide a broken CI.
    pub fn start() -> Moto {
        env_once();
        let python = moto_python();
        let version = Command::new(&python)
            .args(["-c", "import moto; print(moto.__version__)"])
            .output();
        let version = match version {
            Ok(out) if out.status.success() => {
                String::from_utf8_lossy(&out.stdout).trim().to_owned()
            }
            Ok(out) => panic!(
                "{}\n({} could not import moto: {})",
                install_hint(),
                python.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => panic!(
                "{}\n({} not runnable: {e})",
                install_hint(),
                python.display()
            ),
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
        let mut cmd = Command::new(&python);
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

    /// Forgets every resource (`POST /moto-api/reset`, 15 ms, where a restart takes seconds).
    pub fn reset(&self) {
        let mut s = TcpStream::connect(self.addr).expect("connect to moto");
        s.write_all(
            b"POST /moto-api/reset HTTP/1.1\r\nHost: moto\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .expect("moto reset");
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        assert!(buf.starts_with("HTTP/1.1 200"), "moto reset: {buf}");
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

/// One of the two instances (and, in the lab, nodes) of the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    A,
    B,
}

impl Side {
    pub const BOTH: [Side; 2] = [Side::A, Side::B];

    /// The other one.
    pub fn peer(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    /// The node name the lab gives it.
    pub fn name(self) -> &'static str {
        match self {
            Side::A => "node-a",
            Side::B => "node-b",
        }
    }

    /// Picks this side's value of a pair written `[a, b]`.
    pub fn pick<T: Copy>(self, pair: [T; 2]) -> T {
        match self {
            Side::A => pair[0],
            Side::B => pair[1],
        }
    }
}

/// The seeded cloud: what [`seed`] created in moto.
#[derive(Debug, Clone)]
pub struct Seeded {
    pub vpc: String,
    pub subnet: String,
    pub a: InstanceId,
    pub b: InstanceId,
    pub eni: EniId,
    /// The MAC moto gave the ENI (the lab's NIC gets it).
    pub mac: String,
}

impl Seeded {
    pub fn instance(&self, side: Side) -> &InstanceId {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }

    /// Which side an instance id belongs to.
    pub fn side_of(&self, id: &str) -> Option<Side> {
        Side::BOTH
            .into_iter()
            .find(|s| self.instance(*s).as_str() == id)
    }
}

/// Creates VPC 198.18.0.0/16, subnet 198.18.1.0/24, two instances and an ENI with private IP
/// 198.18.1.25 (and secondary 198.18.1.26), tagged `enipeer-group`. The first call also warms
/// moto up (its first EC2 request is slow).
pub async fn seed(ec2: &aws_sdk_ec2::Client) -> Seeded {
    seed_in(ec2, "198.18.1.0/24", ENI_IP, ENI_SECONDARY_IP, None).await
}

/// [`seed`] with the ENI's subnet and addresses chosen (the lab's layouts).
pub async fn seed_in(
    ec2: &aws_sdk_ec2::Client,
    subnet_cidr: &str,
    eni_ip: Ipv4Addr,
    eni_secondary_ip: Ipv4Addr,
    ipv6: Option<(&str, std::net::Ipv6Addr)>,
) -> Seeded {
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
        .cidr_block(subnet_cidr)
        .set_ipv6_cidr_block(ipv6.map(|(cidr, _)| cidr.to_owned()))
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
                .private_ip_address(eni_ip.to_string())
                .primary(true)
                .build(),
        )
        .private_ip_addresses(
            PrivateIpAddressSpecification::builder()
                .private_ip_address(eni_secondary_ip.to_string())
                .primary(false)
                .build(),
        )
        .set_ipv6_addresses(ipv6.map(|(_, addr)| {
            vec![aws_sdk_ec2::types::InstanceIpv6Address::builder()
                .ipv6_address(addr.to_string())
                .build()]
        }))
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
    let mac = eni_mac(ec2, &eni).await;
    Seeded {
        vpc,
        subnet,
        a: ids[0].clone(),
        b: ids[1].clone(),
        eni: eni.parse().expect("moto's ENI id"),
        mac,
    }
}

/// The MAC moto gave the ENI.
async fn eni_mac(ec2: &aws_sdk_ec2::Client, eni: &str) -> String {
    ec2.describe_network_interfaces()
        .network_interface_ids(eni)
        .send()
        .await
        .expect("describe the ENI")
        .network_interfaces()
        .first()
        .and_then(|n| n.mac_address().map(str::to_owned))
        .expect("ENI MAC")
}

/// Attaches the ENI directly (bypassing the adapter) and returns the attachment id.
pub async fn attach_directly(ec2: &aws_sdk_ec2::Client, lab: &Seeded, to: &InstanceId) -> String {
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
        poll_interval: Duration::from_millis(100),
    }
}

/// An adapter for instance `me`, with the instance id overridden (no IMDS here).
pub async fn cloud(endpoint: &str, lab: &Seeded, me: &InstanceId) -> Ec2Cloud {
    cloud_with_timeout(endpoint, lab, me, Duration::from_secs(5)).await
}

pub async fn cloud_with_timeout(
    endpoint: &str,
    lab: &Seeded,
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
pub fn settings(
    endpoint: &str,
    lab: &Seeded,
    me: &InstanceId,
    peer: Option<InstanceId>,
) -> Settings {
    Settings {
        node: NodeSettings {
            name: "node-a".parse().unwrap(),
            priority: 100,
            instance_id: Some(me.clone()),
            state_dir: std::env::temp_dir(),
        },
        peers: vec![PeerSettings {
            name: "node-b".parse().unwrap(),
            addresses: vec![SocketAddr::from(([127, 0, 0, 1], 6543))],
            instance_id: peer,
        }],
        group: GroupSettings {
            id: 1,
            eni: lab.eni.clone(),
            device_index: 1,
            device_indexes: vec![1, 2, 3],
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
            on_event: Vec::new(),
        },
        control: ControlSettings {
            socket: PathBuf::from("/nonexistent/sock"),
            group: None,
        },
        metrics: Default::default(),
        log: enipeer::config::LogSettings {
            level: "info".into(),
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
        device_indexes: vec![1],
    }
}
