//! Two real `enipeer run` processes on 127.0.0.1 with the file-backed fake cloud: heartbeats,
//! failover after SIGKILL, `enipeer role`, `enipeer yield`, a restart that keeps the ENI, and
//! forged or broken packets that are rejected and counted while the daemon keeps working; the
//! Prometheus scrape, systemd's readiness and watchdog notifications on a fake notify socket,
//! and `role --check`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use enipeer::cloud::fake::FakeState;
use enipeer::core::{Advert, HolderBelief, Role, YieldMsg};
use enipeer::peer::wire::{encode, Header, Packet};
use enipeer::report::{Holder, RoleReport};

const BIN: &str = env!("CARGO_BIN_EXE_enipeer");
const ENI: &str = "eni-0123456789abcdef0";
const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

struct Node {
    port: u16,
    metrics_port: u16,
    /// The fake systemd notify socket the daemon is started with (NOTIFY_SOCKET).
    notify: UnixDatagram,
    notify_path: PathBuf,
    config: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// ENIPEER_LOG for the daemon; `None` leaves the level to `log.level`.
    log_env: Option<&'static str>,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Cluster {
    dir: tempfile::TempDir,
    a: Node,
    b: Node,
}

impl Cluster {
    fn new(holder: Option<&str>) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("peer.key");
        std::fs::write(&key, format!("{KEY}\n")).expect("key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        FakeState::new(ENI, holder)
            .write(&dir.path().join("cloud.json"))
            .expect("cloud state");
        let (pa, pb) = (free_port(), free_port());
        let a = Self::node(dir.path(), "node-a", "i-0000000a", pa, "node-b", pb);
        let b = Self::node(dir.path(), "node-b", "i-0000000b", pb, "node-a", pa);
        Cluster { dir, a, b }
    }

    fn node(
        dir: &Path,
        name: &'static str,
        instance: &'static str,
        port: u16,
        peer: &str,
        peer_port: u16,
    ) -> Node {
        let config = dir.join(format!("{name}.toml"));
        let metrics_port = free_tcp_port();
        let notify_path = dir.join(format!("{name}.notify"));
        let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
        notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let socket = dir.join(format!("{name}.sock"));
        let marker = dir.join(format!("{name}.hook"));
        let text = format!(
            r#"
[node]
name = "{name}"
instance-id = "{instance}"
state-dir = "{state}"

[[peer]]
name = "{peer}"
addresses = ["127.0.0.1:{peer_port}"]

[group]
id = 7
eni = "{ENI}"
hold-down = "2s"

[heartbeat]
bind = "127.0.0.1:{port}"
interval = "50ms"
dead-interval = "300ms"

[auth]
key-file = "{key}"

[aws]
verify-interval = "1s"

[hooks]
timeout = "5s"
on-master = [["/bin/sh", "-c", "echo $ENIPEER_TRANSITION $ENIPEER_ADDRESSES notify=${{NOTIFY_SOCKET:-unset}} >> {marker}"]]
on-event = [["/bin/sh", "-c", "echo $ENIPEER_EVENT $ENIPEER_EVENT_PEER >> {events}"]]

[control]
socket = "{socket}"

[metrics]
listen = "127.0.0.1:{metrics_port}"

[stop]
mode = "hold"
restart-grace = "3s"
handover-timeout = "5s"

[testing]
fake-cloud = "{cloud}"
fake-net = true
"#,
            key = dir.join("peer.key").display(),
            marker = marker.display(),
            socket = socket.display(),
            cloud = dir.join("cloud.json").display(),
            state = dir.join(format!("{name}.state")).display(),
            events = dir.join(format!("{name}.events")).display(),
        );
        std::fs::write(&config, text).expect("config");
        Node {
            port,
            metrics_port,
            notify,
            notify_path,
            config,
            socket,
            log: dir.join(format!("{name}.log")),
            child: None,
            log_env: Some("debug"),
        }
    }

    fn cloud(&self) -> FakeState {
        FakeState::read(&self.dir.path().join("cloud.json")).expect("cloud state")
    }

    fn holder(&self) -> Option<String> {
        self.cloud().attached_to.map(|(i, _)| i)
    }
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free TCP port")
}

impl Node {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut cmd = Command::new(BIN);
        match self.log_env {
            Some(level) => cmd.env("ENIPEER_LOG", level),
            None => cmd.env_remove("ENIPEER_LOG"),
        };
        let child = cmd
            .args(["run", "-c"])
            .arg(&self.config)
            .env("NOTIFY_SOCKET", &self.notify_path)
            // Pets every second (half of it).
            .env("WATCHDOG_USEC", "2000000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start enipeer");
        self.child = Some(child);
    }

    fn signal(&mut self, sig: &str) {
        if let Some(c) = self.child.as_ref() {
            let status = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status()
                .expect("kill");
            assert!(status.success());
        }
    }

    fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    self.child = None;
                    return Some(st);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .expect("run enipeer cli")
    }

    fn role(&self) -> Option<RoleReport> {
        let out = self.cli(&["role", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    fn role_name(&self) -> Option<String> {
        self.role().map(|r| r.role)
    }

    /// `GET /metrics`, parsed by a real Prometheus text parser.
    fn scrape(&self) -> prometheus_parse::Scrape {
        let mut s = TcpStream::connect(("127.0.0.1", self.metrics_port)).expect("connect metrics");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .expect("send");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("read");
        let (head, body) = answer.split_once("\r\n\r\n").expect("headers");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("application/openmetrics-text"), "{head}");
        prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("parse")
    }

    /// Every notification received so far.
    fn notifications(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.notify.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The value of one sample, by metric name and one label (or none).
fn sample(s: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
        .find_map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn two_daemons_fail_over_yield_restart_and_reject_bad_packets() {
    let mut c = Cluster::new(Some("i-0000000a"));
    c.a.start();
    c.b.start();
    let ctx = |c: &Cluster| {
        format!(
            "\n--- node-a log ---\n{}\n--- node-b log ---\n{}",
            c.a.logs(),
            c.b.logs()
        )
    };

    // node-a holds the ENI in the cloud: it adopts it; node-b becomes backup.
    wait_for(
        "node-a master and node-b backup",
        Duration::from_secs(10),
        || {
            c.a.role()
                .is_some_and(|r| r.role == "master" && r.peers[0].role.as_deref() == Some("backup"))
                && c.b.role().is_some_and(|r| {
                    r.role == "backup" && r.peers[0].role.as_deref() == Some("master")
                })
        },
    );
    let rb = c.b.role().expect("role of node-b");
    let peer = &rb.peers[0];
    assert_eq!(peer.name, "node-a");
    assert_eq!(
        peer.role.as_deref(),
        Some("master"),
        "heartbeats carry the role{}",
        ctx(&c)
    );
    assert!(peer.alive);
    assert_eq!(
        rb.cloud_holder,
        Holder::Instance {
            id: "i-0000000a".into()
        }
    );
    assert_eq!(rb.schema_version, 1);

    // systemd: READY=1 once the sockets are bound, then WATCHDOG=1 from the loop.
    // Each call drains the socket, so what earlier polls read is kept.
    let mut got = String::new();
    wait_for("READY=1 and WATCHDOG=1", Duration::from_secs(5), || {
        got.push_str(&c.a.notifications().join("\n"));
        got.contains("READY=1") && got.contains("WATCHDOG=1")
    });

    // The scrape: the master's role, heartbeats both ways, its live peer.
    let m = c.a.scrape();
    assert_eq!(
        sample(&m, "enipeer_role", Some(("role", "master"))),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, "enipeer_role", Some(("role", "backup"))),
        Some(0.0)
    );
    assert!(sample(&m, "enipeer_heartbeats_sent_total", None) > Some(0.0));
    assert!(sample(&m, "enipeer_heartbeats_received_total", None) > Some(0.0));
    assert_eq!(
        sample(&m, "enipeer_peer_alive", Some(("peer", "node-b"))),
        Some(1.0)
    );
    assert_eq!(sample(&m, "enipeer_healthy", None), Some(1.0));
    assert_eq!(sample(&m, "enipeer_loop_responsive", None), Some(1.0));
    let mb = c.b.scrape();
    assert_eq!(
        sample(&mb, "enipeer_role", Some(("role", "backup"))),
        Some(1.0)
    );
    assert_eq!(
        sample(&mb, "enipeer_transitions_total", Some(("to", "backup"))),
        Some(1.0)
    );

    // role --check: a healthy pair is OK from both sides.
    for n in [&c.a, &c.b] {
        let out = n.cli(&["role", "--check"]);
        let line = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(out.status.code(), Some(0), "{line}");
        assert!(line.starts_with("ENIPEER OK: "), "{line}");
    }
    // The human summary names the role and the peer.
    let human = String::from_utf8_lossy(&c.b.cli(&["role"]).stdout).to_string();
    assert!(
        human.contains("BACKUP") && human.contains("peer node-a: master"),
        "{human}"
    );
    // Adopting does not move the ENI.
    assert!(
        c.cloud().calls.is_empty(),
        "adopt made cloud calls: {:?}",
        c.cloud().calls
    );

    // Yield on the backup is refused.
    let out = c.b.cli(&["yield", "--timeout", "2s"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not master"));

    // Yield on the master hands over and exits 0 once node-b is master.
    let out = c.a.cli(&["yield", "--timeout", "5s"]);
    assert!(
        out.status.success(),
        "yield failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        ctx(&c)
    );
    assert_eq!(c.holder().as_deref(), Some("i-0000000b"));
    wait_for("node-a backup after yield", Duration::from_secs(3), || {
        c.a.role_name().as_deref() == Some("backup")
    });
    // An orderly handover never forces.
    assert!(c.cloud().calls.iter().all(|x| x.action != "detach-force"));

    // Kill node-b (the master now): node-a claims with a forced detach.
    c.b.signal("-KILL");
    c.b.wait_exit(Duration::from_secs(5))
        .expect("node-b exited");
    let killed = Instant::now();
    wait_for(
        "node-a claims after node-b died",
        Duration::from_secs(10),
        || {
            c.holder().as_deref() == Some("i-0000000a")
                && c.a.role_name().as_deref() == Some("master")
        },
    );
    println!("failover after SIGKILL observed in {:?}", killed.elapsed());
    let calls = c.cloud().calls;
    assert_eq!(calls.last().map(|x| x.action.as_str()), Some("attach"));
    assert!(calls
        .iter()
        .any(|x| x.action == "detach-force" && x.instance == "i-0000000a"));
    let ra = c.a.role().expect("role of node-a");
    let tl = ra.last_failover.expect("a failover timeline");
    assert_eq!(tl.kind, "failover");
    assert!(tl.steps.iter().any(|s| s.label == "attached"), "{tl:?}");
    assert!(tl.steps.iter().any(|s| s.label == "hooks done"), "{tl:?}");
    // The master hook ran with the ENI's address in its environment.
    let marker = std::fs::read_to_string(c.dir.path().join("node-a.hook")).unwrap_or_default();
    assert!(
        marker.contains("master 198.18.1.25"),
        "hook output: {marker:?}"
    );
    // Hooks do not get to speak for the daemon to systemd.
    assert!(marker.contains("notify=unset"), "hook output: {marker:?}");
    // node-b is dead: no redundancy, a WARNING.
    let out = c.a.cli(&["role", "--check"]);
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{line}");
    assert!(line.contains("no redundancy: peer node-b dead"), "{line}");
    let m = c.a.scrape();
    assert_eq!(
        sample(&m, "enipeer_peer_alive", Some(("peer", "node-b"))),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &m,
            "enipeer_cloud_requests_total",
            Some(("action", "claim"))
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            "enipeer_failover_duration_seconds_count",
            Some(("kind", "failover"))
        ),
        Some(1.0)
    );

    // Bad packets at node-a's heartbeat port: rejected, counted, and node-a keeps working.
    attack(c.a.port);
    wait_for("rejections counted", Duration::from_secs(3), || {
        let r = c.a.role().expect("role");
        let n = |k: &str| {
            r.rejected
                .iter()
                .find(|x| x.reason == k)
                .map_or(0, |x| x.count)
        };
        n("bad-mac") >= 1
            && n("replay") >= 1
            && n("truncated") >= 1
            && n("unknown-node") >= 1
            && n("stale-timestamp") >= 1
            && n("bad-magic") >= 1
    });
    assert_eq!(c.a.role_name().as_deref(), Some("master"));
    let m = c.a.scrape();
    for reason in ["bad-mac", "replay", "unknown-node", "stale-timestamp"] {
        assert!(
            sample(
                &m,
                "enipeer_heartbeats_rejected_total",
                Some(("reason", reason))
            ) >= Some(1.0),
            "{reason}"
        );
    }

    // node-b comes back: it sees node-a hold the ENI and stays backup (heartbeats still work).
    c.b.start();
    wait_for("node-b backup again", Duration::from_secs(10), || {
        c.b.role()
            .is_some_and(|r| r.role == "backup" && r.peers[0].alive)
    });
    assert_eq!(c.holder().as_deref(), Some("i-0000000a"));

    // A restart of the master (SIGTERM, stop mode hold) keeps the ENI where it is.
    let calls_before = c.cloud().calls.len();
    c.a.signal("-TERM");
    let st =
        c.a.wait_exit(Duration::from_secs(10))
            .expect("node-a stopped");
    assert!(st.success(), "exit status {st:?}{}", ctx(&c));
    c.a.start();
    wait_for("node-a master again", Duration::from_secs(10), || {
        c.a.role_name().as_deref() == Some("master")
    });
    assert_eq!(c.holder().as_deref(), Some("i-0000000a"));
    assert_eq!(
        c.cloud().calls.len(),
        calls_before,
        "the restart moved the ENI{}",
        ctx(&c)
    );
    assert_eq!(c.b.role_name().as_deref(), Some("backup"));
}

/// Sends garbage, a truncated packet, a packet signed with the wrong key, one from an unknown
/// node, one with an old timestamp, and a valid packet twice (the second is a replay).
fn attack(port: u16) {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("attacker socket");
    let to = ("127.0.0.1", port);
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let key: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&KEY[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    let packet = |sender: &str, seq: u64, ts: u64| Packet {
        header: Header {
            group_id: 7,
            sender: sender.parse().expect("a valid name"),
            incarnation: 0xfeed,
            seq,
            timestamp_ms: ts,
        },
        advert: Advert {
            role: Role::Backup,
            priority: 100,
            instance_id: "i-0000000b".parse().expect("an instance id"),
            holder: HolderBelief::Instance("i-0000000a".parse().expect("an instance id")),
            yield_msg: YieldMsg::None,
            stopping_ms: 0,
            wants_master: false,
            healthy: true,
            maintenance: false,
        },
    };
    let good = encode(&packet("node-b", 1, now_ms), &key).expect("encode");
    let forged = encode(&packet("node-b", 2, now_ms), b"not the key").expect("encode");
    let unknown = encode(&packet("node-z", 1, now_ms), &key).expect("encode");
    let stale = encode(&packet("node-b", 3, now_ms - 3_600_000), &key).expect("encode");
    let mut rng = 0x1234_5678_u64;
    let random: Vec<u8> = (0..200)
        .map(|_| {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1);
            (rng >> 33) as u8
        })
        .collect();
    for p in [
        &random[..],
        &good[..good.len() / 2],
        &forged[..],
        &unknown[..],
        &stale[..],
        &good[..],
        &good[..],
    ] {
        sock.send_to(p, to).expect("send");
    }
}

#[test]
fn maintenance_hands_over_survives_a_restart_and_never_claims() {
    let mut c = Cluster::new(Some("i-0000000a"));
    c.a.start();
    c.b.start();
    wait_for("a master, b backup", Duration::from_secs(10), || {
        c.b.role_name().as_deref() == Some("backup")
            && c.a.role().is_some_and(|r| {
                r.role == "master" && r.peers.iter().all(|p| p.role.as_deref() == Some("backup"))
            })
    });
    // On the master: hands over first, answers once b is master.
    let out = c.a.cli(&[
        "maintenance",
        "on",
        "--reason",
        "kernel update",
        "--timeout",
        "10s",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(c.holder().as_deref(), Some("i-0000000b"));
    let a = c.a.role().expect("role");
    assert_eq!(a.role, "backup");
    assert_eq!(a.maintenance.as_deref(), Some("kernel update"));
    assert_eq!(
        sample(&c.a.scrape(), "enipeer_maintenance", None),
        Some(1.0),
        "and in metrics"
    );
    let b = c.b.role().expect("role");
    assert_eq!(b.peers[0].maintenance, Some(true), "the peer knows");
    // b in turn cannot hand over to a node in maintenance without --force.
    let out = c.b.cli(&["maintenance", "on"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    // The mode survives a restart of a; with b dead, a still does not claim.
    c.a.signal("-KILL");
    c.a.wait_exit(Duration::from_secs(5));
    c.a.start();
    wait_for("a back, in maintenance", Duration::from_secs(10), || {
        // Heard b too: a holder never heard since start is not forced off without a check.
        c.a.role().is_some_and(|r| {
            r.role == "backup"
                && r.maintenance.is_some()
                && r.peers.iter().all(|p| p.last_heard_ms_ago.is_some())
        })
    });
    c.b.signal("-KILL");
    c.b.wait_exit(Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(c.a.role_name().as_deref(), Some("backup"));
    assert_eq!(
        c.holder().as_deref(),
        Some("i-0000000b"),
        "no claim in maintenance"
    );
    // Off: a takes over the dead b's ENI.
    let out = c.a.cli(&["maintenance", "off"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.a.role_name().as_deref() != Some("master") {
        assert!(Instant::now() < deadline, "a not master: {}", c.a.logs());
        std::thread::sleep(Duration::from_millis(25));
    }
    // The on-event hook was told when b was lost, and is told when it is back.
    let events = || std::fs::read_to_string(c.dir.path().join("node-a.events")).unwrap_or_default();
    assert!(events().contains("peer-lost node-b"), "{}", events());
    c.b.start();
    wait_for("peer-back event", Duration::from_secs(10), || {
        events().contains("peer-back node-b")
    });
}

#[test]
fn sighup_reloads_what_can_change_and_refuses_the_rest_without_a_role_change() {
    let mut c = Cluster::new(Some("i-0000000a"));
    c.a.log_env = None;
    c.a.start();
    c.b.start();
    wait_for("a master", Duration::from_secs(10), || {
        c.a.role_name().as_deref() == Some("master")
    });
    let original = std::fs::read_to_string(&c.a.config).expect("config");
    let since = c.a.role().expect("role").since_unix_ms;
    let reload = |node: &mut Node, text: &str, expect: &str| {
        std::fs::write(&node.config, text).expect("config");
        node.signal("-HUP");
        let n: &Node = node;
        wait_for(expect, Duration::from_secs(10), || {
            n.logs().contains(expect)
        });
    };
    // A valid change: applied live.
    let changed = original.replace("hold-down = \"2s\"", "hold-down = \"3s\"");
    assert_ne!(changed, original);
    reload(&mut c.a, &changed, "config reloaded");
    assert!(c.a.logs().contains("group.hold-down"), "{}", c.a.logs());
    // The log level and the metrics endpoint change live too. At `info` (log.level's default,
    // no ENIPEER_LOG) a control request logs nothing; at `debug` it does.
    c.a.role().expect("role");
    assert!(!c.a.logs().contains("control request"), "{}", c.a.logs());
    let old_port = c.a.metrics_port;
    let new_port = free_tcp_port();
    let live = format!(
        "{}\n[log]\nlevel = \"debug\"\n",
        changed.replace(
            &format!("127.0.0.1:{old_port}"),
            &format!("127.0.0.1:{new_port}")
        )
    );
    reload(&mut c.a, &live, "log level changed");
    c.a.role().expect("role");
    wait_for("a debug line", Duration::from_secs(5), || {
        c.a.logs().contains("control request")
    });
    c.a.metrics_port = new_port;
    let scrape = c.a.scrape();
    assert!(!scrape.samples.is_empty(), "metrics on the new port");
    assert!(
        TcpStream::connect(("127.0.0.1", old_port)).is_err(),
        "the old metrics port is closed"
    );
    // A metrics address that cannot be bound refuses the whole reload: the level stays.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_port = taken.local_addr().expect("addr").port();
    let clash = live
        .replace(
            &format!("127.0.0.1:{new_port}"),
            &format!("127.0.0.1:{taken_port}"),
        )
        .replace("level = \"debug\"", "level = \"warn\"");
    reload(&mut c.a, &clash, "cannot listen there (metrics.listen)");
    let debug_lines = c.a.logs().matches("control request").count();
    c.a.role().expect("role");
    wait_for("still at debug", Duration::from_secs(5), || {
        c.a.logs().matches("control request").count() > debug_lines
    });
    assert!(
        !c.a.scrape().samples.is_empty(),
        "still on the previous port"
    );
    drop(taken);
    // The same port on all interfaces: cannot be bound beside the old socket, moves anyway.
    let all = live.replace(
        &format!("127.0.0.1:{new_port}"),
        &format!("0.0.0.0:{new_port}"),
    );
    reload(&mut c.a, &all, "listen=0.0.0.0:");
    assert!(!c.a.scrape().samples.is_empty(), "served on 0.0.0.0 too");
    // An invalid file: refused with check's messages, the daemon runs on.
    // (Waits for the key's name: earlier refusals are in the log already.)
    reload(&mut c.a, &format!("{changed}\n[bogus]\n"), "bogus");
    // A key that cannot change live: refused, naming it.
    let eni = changed.replace("eni-0123456789abcdef0", "eni-0fedcba9876543210");
    reload(&mut c.a, &eni, "reload refused: group.eni");
    // Nothing moved and the daemon is still there.
    assert!(
        c.a.wait_exit(Duration::from_millis(300)).is_none(),
        "still running"
    );
    let r = c.a.role().expect("role");
    assert_eq!((r.role.as_str(), r.since_unix_ms), ("master", since));
    assert_eq!(c.holder().as_deref(), Some("i-0000000a"));
}

/// `role --check` with no daemon behind the socket: UNKNOWN, exit 3, one line.
#[test]
fn role_check_without_a_daemon_is_unknown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .args(["role", "--check", "--socket"])
        .arg(dir.path().join("nothing.sock"))
        .output()
        .expect("run enipeer");
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(3), "{line}");
    assert!(
        line.starts_with("ENIPEER UNKNOWN: daemon unreachable"),
        "{line}"
    );
    assert_eq!(line.lines().count(), 1, "{line}");
}
