//! The daemon logging to a real systemd-journald: priorities are real (`journalctl -p warning`
//! shows warnings and errors only) and structured fields are journal fields
//! (`journalctl ENIPEER_TO=master`).
//!
//! journald runs in a private mount namespace (`unshare -m`) with its own tmpfs on /run and
//! /var/log, so it never meets the host's journal. Skipped unless root with `unshare` and
//! systemd-journald installed.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use enipeer::cloud::fake::FakeState;

const BIN: &str = env!("CARGO_BIN_EXE_enipeer");
const JOURNALD: &str = "/lib/systemd/systemd-journald";
const ENI: &str = "eni-0123456789abcdef0";
const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn usable() -> bool {
    let root = nix::unistd::geteuid().is_root();
    let tools = Path::new(JOURNALD).exists()
        && Command::new("unshare").arg("--help").output().is_ok()
        && Command::new("journalctl").arg("--version").output().is_ok()
        && Path::new("/etc/machine-id").exists();
    root && tools
}

fn config(dir: &Path) -> std::path::PathBuf {
    let key = dir.join("peer.key");
    std::fs::write(&key, format!("{KEY}\n")).expect("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    FakeState::new(ENI, Some("i-0000000a"))
        .write(&dir.join("cloud.json"))
        .expect("cloud state");
    let path = dir.join("node-a.toml");
    let text = format!(
        r#"
[node]
name = "node-a"
instance-id = "i-0000000a"

[[peer]]
name = "node-b"
addresses = ["127.0.0.1:9"]

[group]
id = 7
eni = "{ENI}"

[heartbeat]
bind = "127.0.0.1:{port}"
interval = "50ms"
dead-interval = "300ms"

[auth]
key-file = "{key}"

[control]
socket = "{socket}"

[stop]
mode = "hold"

[testing]
fake-cloud = "{cloud}"
fake-net = true
"#,
        port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .map(|a| a.port())
            .expect("a free port"),
        key = key.display(),
        socket = dir.join("a.sock").display(),
        cloud = dir.join("cloud.json").display(),
    );
    std::fs::write(&path, text).expect("config");
    path
}

/// One JSON object per line, as `journalctl -o json` prints them.
fn entries(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn structured_fields_and_priorities_reach_a_real_journal() {
    if !usable() {
        eprintln!("skipped: needs root, unshare and systemd-journald");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    let d = dir.path().display();
    // stderr goes to a file whose device and inode JOURNAL_STREAM names, as systemd does for a
    // service whose stderr is the journal; the daemon then logs natively to journald.
    // journald gets no stdio of ours (it would keep the test waiting on the pipes) and is
    // killed however the script ends.
    let script = format!(
        r#"mount -t tmpfs tmpfs /run || exit 1
mount -t tmpfs tmpfs /var/log || exit 1
mkdir -p /run/systemd/journal /run/log/journal
{JOURNALD} </dev/null >/dev/null 2>&1 & J=$!
trap 'kill $J' EXIT
for i in $(seq 100); do [ -S /run/systemd/journal/socket ] && break; sleep 0.05; done
: > {d}/stderr
export JOURNAL_STREAM=$(stat -c '%d:%i' {d}/stderr)
{BIN} run -c {cfg} 2>>{d}/stderr & E=$!
sleep 2
kill -TERM $E; wait $E
sleep 0.3
journalctl --no-pager -o json SYSLOG_IDENTIFIER=enipeer ENIPEER_TO=master > {d}/to-master.json
journalctl --no-pager -o json SYSLOG_IDENTIFIER=enipeer -p warning > {d}/warnings.json
journalctl --no-pager -o json SYSLOG_IDENTIFIER=enipeer > {d}/all.json
"#,
        cfg = cfg.display()
    );
    let out = Command::new("timeout")
        .args([
            "30",
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
        ])
        .arg(&script)
        .output()
        .expect("run unshare");
    let ctx = format!(
        "status {:?}\nstderr of the script: {}\nstderr of the daemon: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default()
    );
    let all = entries(&dir.path().join("all.json"));
    assert!(!all.is_empty(), "nothing in the journal\n{ctx}");
    // Native logging, not stderr lines: stderr stays empty.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default(),
        "",
        "{ctx}"
    );

    let to_master = entries(&dir.path().join("to-master.json"));
    let t = to_master
        .iter()
        .find(|e| e["MESSAGE"] == "transition")
        .unwrap_or_else(|| panic!("no transition to master in {to_master:#?}\n{ctx}"));
    assert_eq!(t["ENIPEER_FROM"], "starting", "{t:#}");
    assert!(t["ENIPEER_REASON"].as_str().is_some(), "{t:#}");
    // tracing's INFO is journald's notice (5).
    assert_eq!(t["PRIORITY"], "5", "{t:#}");

    let warnings = entries(&dir.path().join("warnings.json"));
    assert!(
        warnings.iter().any(|e| e["MESSAGE"]
            .as_str()
            .is_some_and(|m| m.contains("FAKE cloud"))),
        "the fake-cloud warning: {warnings:#?}"
    );
    for w in &warnings {
        let p: u8 = w["PRIORITY"]
            .as_str()
            .and_then(|p| p.parse().ok())
            .unwrap_or(9);
        assert!(p <= 4, "-p warning shows warnings and worse only: {w:#}");
    }
    assert!(
        all.iter().any(|e| e["PRIORITY"] == "5"),
        "info lines are there, just not among the warnings"
    );
}
