//! Probes and the runner against tiny servers on 127.0.0.1 (port 0), started by each test.
//! No timing assertions: deadlines here only keep a broken test from hanging.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::*;
use crate::config::{ExecProbe, HttpProbe, TcpProbe};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Only a guard against a hung test, never an expectation about speed.
const GUARD: Duration = Duration::from_secs(10);

fn check(probe: ProbeSpec) -> CheckSettings {
    CheckSettings {
        name: "test".to_owned(),
        probe,
        interval: Duration::from_secs(1),
        timeout: Duration::from_millis(300),
        rise: 2,
        fall: 2,
    }
}

fn http_check(port: u16, path: &str, status: StatusRange, body: Option<&str>) -> CheckSettings {
    check(ProbeSpec::Http(HttpProbe {
        host: CheckHost::EniAddress,
        port,
        path: path.to_owned(),
        status,
        body_contains: body.map(str::to_owned),
    }))
}

fn target() -> ProbeTarget {
    ProbeTarget {
        ip: LOOPBACK,
        source: None,
    }
}

/// What the test server saw of one request.
#[derive(Debug)]
struct Seen {
    peer: SocketAddr,
    request: String,
}

/// Answers every connection with `status` (changeable while running) and `body`, then closes.
/// Serves at most 50 connections, so a runaway test cannot loop forever.
async fn http_server(
    status: Arc<AtomicU16>,
    body: Vec<u8>,
) -> (u16, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        for _ in 0..50 {
            let Ok((mut stream, peer)) = listener.accept().await else {
                return;
            };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let code = status.load(Ordering::SeqCst);
            let head = format!(
                "HTTP/1.1 {code} Whatever\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&body).await;
            let _ = stream.shutdown().await;
            let _ = tx.send(Seen {
                peer,
                request: String::from_utf8_lossy(&request).into_owned(),
            });
        }
    });
    (port, rx)
}

async fn serve(code: u16, body: &str) -> (u16, mpsc::UnboundedReceiver<Seen>) {
    http_server(Arc::new(AtomicU16::new(code)), body.as_bytes().to_vec()).await
}

/// Accepts connections and never answers (holding them open until the test ends).
async fn silent_server() -> u16 {
    let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        for _ in 0..50 {
            match listener.accept().await {
                Ok((stream, _)) => held.push(stream),
                Err(_) => return,
            }
        }
    });
    port
}

/// A port nothing listens on: bound once to get a free number, then closed.
async fn closed_port() -> u16 {
    let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn http_passes_and_sends_a_well_formed_request() {
    let (port, mut seen) = serve(200, "<h1>ready</h1>").await;
    let c = http_check(port, "/health?x=1", StatusRange::DEFAULT, Some("ready"));
    assert_eq!(
        probe_once(&c, &target()).await,
        Ok(Passed::Http { status: 200 })
    );
    let req = seen.recv().await.unwrap().request;
    assert!(req.starts_with("GET /health?x=1 HTTP/1.1\r\n"), "{req}");
    assert!(
        req.contains(&format!("\r\nHost: 127.0.0.1:{port}\r\n")),
        "{req}"
    );
    assert!(req.contains("\r\nConnection: close\r\n"), "{req}");
}

#[tokio::test]
async fn http_status_outside_the_range_fails() {
    let (port, _seen) = serve(503, "ready").await;
    let c = http_check(port, "/", StatusRange::DEFAULT, None);
    let got = probe_once(&c, &target()).await;
    assert_eq!(
        got,
        Err(ProbeError::Status {
            got: 503,
            want: StatusRange::DEFAULT
        })
    );
    assert_eq!(got.unwrap_err().kind(), "status");

    // A redirect is inside the default range, not inside a narrowed one.
    let (port, _seen) = serve(302, "").await;
    let c = http_check(port, "/", StatusRange::DEFAULT, None);
    assert_eq!(
        probe_once(&c, &target()).await,
        Ok(Passed::Http { status: 302 })
    );
    let (port, _seen) = serve(302, "").await;
    let narrow = StatusRange { lo: 200, hi: 299 };
    let c = http_check(port, "/", narrow, None);
    assert!(matches!(
        probe_once(&c, &target()).await,
        Err(ProbeError::Status { got: 302, .. })
    ));
}

#[tokio::test]
async fn http_body_without_the_substring_fails() {
    let (port, _seen) = serve(200, "<h1>maintenance</h1>").await;
    let c = http_check(port, "/", StatusRange::DEFAULT, Some("ready"));
    let got = probe_once(&c, &target()).await;
    assert!(
        matches!(&got, Err(ProbeError::BodyMissing { needle, truncated: false, .. }) if needle == "ready"),
        "{got:?}"
    );
}

#[tokio::test]
async fn http_reads_at_most_the_cap() {
    // The needle sits past the cap: the probe must stop reading and say so.
    let mut body = vec![b'a'; MAX_RESPONSE + 4096];
    body.extend_from_slice(b"ready");
    let (port, _seen) = http_server(Arc::new(AtomicU16::new(200)), body).await;
    let mut c = http_check(port, "/", StatusRange::DEFAULT, Some("ready"));
    c.timeout = Duration::from_secs(5);
    let got = probe_once(&c, &target()).await;
    assert!(
        matches!(got, Err(ProbeError::BodyMissing { truncated: true, read, .. }) if read < MAX_RESPONSE),
        "{got:?}"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let port = silent_server().await;
    let c = http_check(port, "/", StatusRange::DEFAULT, None);
    let got = tokio::time::timeout(GUARD, probe_once(&c, &target()))
        .await
        .expect("the probe ends at its own timeout");
    assert_eq!(
        got,
        Err(ProbeError::TimedOut {
            timeout: Duration::from_millis(300)
        })
    );
    assert_eq!(got.unwrap_err().kind(), "timeout");
}

#[tokio::test]
async fn connection_refused_is_reported_as_such() {
    let port = closed_port().await;
    let addr = SocketAddr::new(LOOPBACK, port);
    let c = http_check(port, "/", StatusRange::DEFAULT, None);
    assert_eq!(
        probe_once(&c, &target()).await,
        Err(ProbeError::Refused { addr })
    );
    let t = check(ProbeSpec::Tcp(TcpProbe {
        host: CheckHost::EniAddress,
        port,
    }));
    assert_eq!(
        probe_once(&t, &target()).await,
        Err(ProbeError::Refused { addr })
    );
}

#[tokio::test]
async fn tcp_passes_on_connect() {
    let port = silent_server().await;
    let t = check(ProbeSpec::Tcp(TcpProbe {
        host: CheckHost::EniAddress,
        port,
    }));
    assert_eq!(probe_once(&t, &target()).await, Ok(Passed::Connected));
}

#[tokio::test]
async fn the_source_address_is_the_one_the_server_sees() {
    let (port, mut seen) = serve(200, "").await;
    let c = http_check(port, "/", StatusRange::DEFAULT, None);
    // All of 127/8 is loopback on Linux: .2 differs from the kernel's own choice (.1).
    let source: IpAddr = "127.0.0.2".parse().unwrap();
    let through = ProbeTarget::through_eni(LOOPBACK, source);
    assert_eq!(
        probe_once(&c, &through).await,
        Ok(Passed::Http { status: 200 })
    );
    assert_eq!(seen.recv().await.unwrap().peer.ip(), source);

    let v6 = ProbeTarget::through_eni(LOOPBACK, "::1".parse().unwrap());
    let got = probe_once(&c, &v6).await;
    assert_eq!(got.map_err(|e| e.kind()), Err("bind"));
}

#[test]
fn the_target_is_the_checks_host_or_the_eni_address() {
    let eni: IpAddr = "198.18.0.20".parse().unwrap();
    let c = http_check(80, "/", StatusRange::DEFAULT, None);
    assert_eq!(ProbeTarget::of_check(&c, eni).ip, eni);
    let mut fixed = c.clone();
    if let ProbeSpec::Http(h) = &mut fixed.probe {
        h.host = CheckHost::Ip(LOOPBACK);
    }
    assert_eq!(ProbeTarget::of_check(&fixed, eni).ip, LOOPBACK);
    // Through the ENI means the ENI, whatever host the check names.
    let primary: IpAddr = "198.18.0.10".parse().unwrap();
    let t = ProbeTarget::through_eni(eni, primary);
    assert_eq!((t.ip, t.source), (eni, Some(primary)));
}

fn exec_check(argv: &[&str]) -> CheckSettings {
    check(ProbeSpec::Exec(ExecProbe {
        command: argv.iter().map(|s| (*s).to_owned()).collect(),
    }))
}

#[tokio::test]
async fn exec_passes_on_exit_zero_and_fails_otherwise() {
    let t = ProbeTarget {
        ip: "198.18.0.20".parse().unwrap(),
        source: None,
    };
    let ok = exec_check(&[
        "/bin/sh",
        "-c",
        "test \"$ENIPEER_CHECK_ADDRESS\" = 198.18.0.20 && test \"$ENIPEER_CHECK_NAME\" = test",
    ]);
    assert_eq!(probe_once(&ok, &t).await, Ok(Passed::Exited));

    let fail = exec_check(&["/bin/sh", "-c", "echo not ready >&2; exit 3"]);
    assert_eq!(
        probe_once(&fail, &t).await,
        Err(ProbeError::Exit {
            code: 3,
            output: "not ready".to_owned()
        })
    );

    let missing = exec_check(&["/nonexistent/enipeer-check"]);
    assert_eq!(
        probe_once(&missing, &t).await.map_err(|e| e.kind()),
        Err("spawn")
    );
}

#[tokio::test]
async fn exec_output_is_capped() {
    // 1 MB on stdout: read through (the program must not block) but only the start kept.
    let c = exec_check(&[
        "/bin/sh",
        "-c",
        "head -c 1000000 /dev/zero | tr '\\0' x; exit 1",
    ]);
    let mut c = c;
    c.timeout = Duration::from_secs(5);
    match probe_once(&c, &target()).await {
        Err(ProbeError::Exit { code: 1, output }) => assert_eq!(output.len(), OUTPUT_CAP),
        other => panic!("{other:?}"),
    }
}

/// True once `pid` is gone or a zombie (killed, waiting for whoever reaps orphans).
fn is_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test]
async fn exec_timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    // The sleep outlives the guard: only a kill ends the probe before the guard fires.
    let script = format!("sleep 120 & echo $! > {}; wait", pidfile.display());
    let c = exec_check(&["/bin/sh", "-c", &script]);
    let got = tokio::time::timeout(GUARD, probe_once(&c, &target()))
        .await
        .expect("the probe returns once its timeout kills the program");
    assert_eq!(got.map_err(|e| e.kind()), Err("timeout"));
    let pid: u32 = read_pid(&pidfile);
    let deadline = std::time::Instant::now() + GUARD;
    while !is_dead(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "the check's child {pid} survived the timeout"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn read_pid(path: &Path) -> u32 {
    let text = std::fs::read_to_string(path).expect("the script wrote its child's pid");
    text.trim().parse().expect("a pid")
}

#[test]
fn exec_does_not_pass_notify_socket_on() {
    let c = ExecProbe {
        command: vec!["/bin/true".to_owned()],
    };
    let cmd = exec::command(&c, "x", Some(&target()));
    let envs: Vec<_> = cmd.as_std().get_envs().collect();
    assert!(
        envs.contains(&(std::ffi::OsStr::new("NOTIFY_SOCKET"), None)),
        "{envs:?}"
    );
    assert!(envs.contains(&(
        std::ffi::OsStr::new("ENIPEER_CHECK_ADDRESS"),
        Some(std::ffi::OsStr::new("127.0.0.1"))
    )));
}

async fn next(rx: &mut mpsc::Receiver<CheckReport>) -> CheckReport {
    tokio::time::timeout(GUARD, rx.recv())
        .await
        .expect("a report within the guard")
        .expect("the runner is alive")
}

#[tokio::test]
async fn the_runner_reports_every_probe_and_debounced_changes() {
    let status = Arc::new(AtomicU16::new(200));
    let (port, _seen) = http_server(Arc::clone(&status), b"ok".to_vec()).await;
    let mut c = http_check(port, "/", StatusRange::DEFAULT, None);
    c.interval = Duration::from_millis(100);
    c.timeout = Duration::from_millis(50);
    let (tx, mut rx) = mpsc::channel(4);
    let _handle = spawn(7, c, target(), tx);

    let first = next(&mut rx).await;
    assert_eq!(first.id, 7);
    assert_eq!(&*first.name, "test");
    assert_eq!(first.result, Ok(Passed::Http { status: 200 }));
    assert_eq!((first.state, first.change), (HealthState::Unknown, None));
    let second = next(&mut rx).await;
    assert_eq!(
        second.change,
        Some(Change {
            from: HealthState::Unknown,
            to: HealthState::Up
        })
    );

    status.store(500, Ordering::SeqCst);
    // A probe may have been in flight: skip passes until the first failure.
    let mut failure = next(&mut rx).await;
    while failure.result.is_ok() {
        failure = next(&mut rx).await;
    }
    assert_eq!((failure.state, failure.change), (HealthState::Up, None));
    let down = next(&mut rx).await;
    assert_eq!(down.result.as_ref().map_err(|e| e.kind()), Err("status"));
    assert_eq!(
        down.change,
        Some(Change {
            from: HealthState::Up,
            to: HealthState::Down
        })
    );
}

#[tokio::test]
async fn probe_now_does_not_wait_for_the_interval() {
    let (port, _seen) = serve(200, "").await;
    let mut c = http_check(port, "/", StatusRange::DEFAULT, None);
    // Without probe_now the second report would come an hour later: the guard would fire.
    c.interval = Duration::from_secs(3600);
    let (tx, mut rx) = mpsc::channel(4);
    let handle = spawn(0, c, target(), tx);
    next(&mut rx).await;
    handle.probe_now();
    let second = next(&mut rx).await;
    assert!(second.result.is_ok());
}

#[tokio::test]
async fn the_runner_stops_when_nobody_listens() {
    let port = closed_port().await;
    let mut c = http_check(port, "/", StatusRange::DEFAULT, None);
    c.interval = Duration::from_millis(100);
    c.timeout = Duration::from_millis(50);
    let (tx, rx) = mpsc::channel(1);
    let handle = spawn(0, c, target(), tx);
    drop(rx);
    let deadline = std::time::Instant::now() + GUARD;
    while !handle.is_finished() {
        assert!(std::time::Instant::now() < deadline, "runner still running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
