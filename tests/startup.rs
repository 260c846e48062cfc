//! Start-up robustness (issue 11, point 6): a daemon that cannot reach the cloud at start stays
//! up, answers `enipeer role` with what it waits for, and carries on once the cloud answers. The
//! file-backed fake cloud stands in for EC2: its state file missing is a transient failure.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use enipeer::cloud::fake::FakeState;
use enipeer::report::RoleReport;

const BIN: &str = env!("CARGO_BIN_EXE_enipeer");
const ENI: &str = "eni-0123456789abcdef0";
const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn role(config: &std::path::Path) -> Option<RoleReport> {
    let out = Command::new(BIN)
        .args(["role", "--json", "-c"])
        .arg(config)
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn a_cloud_unreachable_at_start_is_waited_for_not_fatal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("peer.key");
    std::fs::write(&key, format!("{KEY}\n")).expect("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let cloud = dir.path().join("cloud.json");
    let config = dir.path().join("a.toml");
    let text = format!(
        r#"
[node]
name = "node-a"
instance-id = "i-0000000a"

[[peer]]
name = "node-b"
addresses = ["127.0.0.1:{peer}"]

[group]
id = 7
eni = "{ENI}"

[heartbeat]
bind = "127.0.0.1:{port}"

[auth]
key-file = "{key}"

[control]
socket = "{socket}"

[testing]
fake-cloud = "{cloud}"
fake-net = true
"#,
        peer = free_port(),
        port = free_port(),
        key = key.display(),
        socket = dir.path().join("a.sock").display(),
        cloud = cloud.display(),
    );
    std::fs::write(&config, text).expect("config");
    let log = std::fs::File::create(dir.path().join("a.log")).expect("log");
    let child = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start enipeer");
    let mut child = Kill(child);

    // No cloud yet: the daemon stays up and says what it waits for.
    let mut waiting = None;
    wait_for("role while waiting", Duration::from_secs(10), || {
        waiting = role(&config);
        waiting.is_some()
    });
    let waiting = waiting.expect("a report");
    assert_eq!(waiting.role, "starting");
    let reason = waiting
        .last_transition
        .map(|t| t.reason)
        .unwrap_or_default();
    assert!(reason.contains("waiting for the cloud"), "{reason}");
    assert!(child.0.try_wait().expect("status").is_none(), "exited");

    // The cloud answers (the ENI is attached here): the daemon adopts it.
    FakeState::new(ENI, Some("i-0000000a"))
        .write(&cloud)
        .expect("cloud state");
    wait_for("master", Duration::from_secs(20), || {
        role(&config).is_some_and(|r| r.role == "master")
    });
    let logs = std::fs::read_to_string(dir.path().join("a.log")).unwrap_or_default();
    assert!(logs.contains("retrying"), "the wait was logged: {logs}");
}
