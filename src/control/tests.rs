use std::os::unix::fs::{MetadataExt, PermissionsExt};

use tokio::task::JoinHandle;

use super::*;

/// Guard against a broken server hanging the test run; never the thing asserted on.
const GUARD: Duration = Duration::from_secs(30);

fn sample_report() -> RoleReport {
    RoleReport {
        schema_version: crate::report::SCHEMA_VERSION,
        node: "a".into(),
        instance_id: "i-0123456789abcdef0".into(),
        eni: "eni-0123456789abcdef0".into(),
        role: "master".into(),
        since_unix_ms: 1_700_000_000_000,
        last_transition: None,
        peers: vec![],
        cloud_holder: crate::report::Holder::Instance {
            id: "i-0123456789abcdef0".into(),
        },
        cloud_checked_ms_ago: Some(1200),
        hold_down_ms_left: None,
        last_failover: None,
        rejected: vec![crate::report::RejectCount {
            reason: "bad-mac".into(),
            count: 3,
        }],
        health: crate::report::HealthReport {
            healthy: false,
            detail: "http-80: connection refused".into(),
            degraded: true,
            corroborated: true,
            ..Default::default()
        },
        maintenance: None,
        leftovers: vec!["ENI 02:00:00:00:00:01: teardown: rule: EBUSY".into()],
        ipv6_problem: None,
    }
}

struct Server {
    path: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn shutdown(mut self) -> PathBuf {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(GUARD, &mut self.task)
            .await
            .expect("serve returns after shutdown")
            .expect("serve task does not panic");
        self.path.clone()
    }
}

/// Binds a fresh socket and serves it; the caller gets the daemon side of the channel.
fn start(limits: ServeLimits) -> (Server, mpsc::Receiver<Incoming>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctl.sock");
    let listener = bind(&path, None).unwrap();
    let (tx, rx) = mpsc::channel(4);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_with(
        listener,
        tx,
        async {
            let _ = stopped.await;
        },
        limits,
    ));
    (
        Server {
            path,
            stop: Some(stop),
            task,
            _dir: dir,
        },
        rx,
    )
}

/// Answers like the real daemon would, quickly.
fn fake_daemon(mut rx: mpsc::Receiver<Incoming>) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(incoming) = rx.recv().await {
            let response = match incoming.request {
                Request::Role => Response::Role(sample_report()),
                Request::Yield { timeout_ms } => Response::Yielded {
                    message: format!("peer b is master (waited at most {timeout_ms} ms)"),
                },
                Request::Maintenance { on, .. } => Response::Yielded {
                    message: format!("maintenance {on}"),
                },
            };
            let _ = incoming.reply.send(response);
        }
    })
}

async fn raw_exchange(path: &Path, bytes: &[u8]) -> Result<Response, ControlError> {
    let mut stream = UnixStream::connect(path).await?;
    stream.write_all(bytes).await?;
    let body = read_frame(&mut stream).await?;
    serde_json::from_slice(&body).map_err(ControlError::Decode)
}

#[tokio::test]
async fn role_and_yield_round_trip() {
    let (server, rx) = start(ServeLimits::default());
    let daemon = fake_daemon(rx);

    let role = request(&server.path, &Request::Role, GUARD).await.unwrap();
    assert_eq!(role, Response::Role(sample_report()));

    let yielded = request(&server.path, &Request::Yield { timeout_ms: 1234 }, GUARD)
        .await
        .unwrap();
    assert_eq!(
        yielded,
        Response::Yielded {
            message: "peer b is master (waited at most 1234 ms)".into()
        }
    );

    let path = server.shutdown().await;
    assert!(!path.exists(), "serve removes its socket on shutdown");
    daemon.abort();
}

#[tokio::test]
async fn oversize_length_prefix_is_refused_without_reading_the_body() {
    let (server, rx) = start(ServeLimits::default());
    let _daemon = fake_daemon(rx);
    // Only the prefix is sent: a server waiting for the body would drop us after the read
    // timeout instead of answering.
    let prefix = ((MAX_MESSAGE + 1) as u32).to_be_bytes();
    let response = tokio::time::timeout(GUARD, raw_exchange(&server.path, &prefix))
        .await
        .unwrap()
        .unwrap();
    match response {
        Response::Error { message } => assert!(message.contains("exceeds"), "{message}"),
        other => panic!("expected an error, got {other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn garbage_json_gets_an_error_response() {
    let (server, rx) = start(ServeLimits::default());
    let _daemon = fake_daemon(rx);
    let body = b"{\"Role\": nonsense";
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    let response = tokio::time::timeout(GUARD, raw_exchange(&server.path, &frame))
        .await
        .unwrap()
        .unwrap();
    match response {
        Response::Error { message } => {
            assert!(message.starts_with("malformed request"), "{message}")
        }
        other => panic!("expected an error, got {other:?}"),
    }
    // The server is still there for well-formed requests.
    let role = request(&server.path, &Request::Role, GUARD).await.unwrap();
    assert!(matches!(role, Response::Role(_)));
    server.shutdown().await;
}

#[tokio::test]
async fn client_refuses_an_oversize_response() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctl.sock");
    let listener = bind(&path, None).unwrap();
    let liar = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let _ = read_frame(&mut stream).await;
        stream
            .write_all(&((MAX_MESSAGE as u32) + 1).to_be_bytes())
            .await
            .unwrap();
        // Keep the connection open: the client must not wait for a body.
        tokio::time::sleep(GUARD).await;
    });
    let err = request(&path, &Request::Role, GUARD).await.unwrap_err();
    assert_eq!(err.kind(), "too_large", "{err}");
    liar.abort();
}

#[tokio::test]
async fn stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctl.sock");
    // A listener that went away leaves its file behind, like a crashed daemon.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());

    let listener = bind(&path, None).unwrap();
    let (tx, rx) = mpsc::channel(1);
    let _daemon = fake_daemon(rx);
    let server = tokio::spawn(serve(listener, tx, std::future::pending()));
    let role = request(&path, &Request::Role, GUARD).await.unwrap();
    assert!(matches!(role, Response::Role(_)));
    server.abort();
}

#[tokio::test]
async fn a_regular_file_at_the_path_is_kept_and_bind_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctl.sock");
    std::fs::write(&path, "precious").unwrap();

    let err = bind(&path, None).unwrap_err();
    assert_eq!(err.kind(), "not_a_socket");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
}

#[tokio::test]
async fn a_live_socket_makes_bind_fail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctl.sock");
    let other = std::os::unix::net::UnixListener::bind(&path).unwrap();

    let err = bind(&path, None).unwrap_err();
    assert_eq!(err.kind(), "already_running", "{err}");
    // The other daemon's socket is untouched and still reachable.
    std::os::unix::net::UnixStream::connect(&path).unwrap();
    drop(other);
}

#[tokio::test]
async fn socket_is_private_by_default_and_parents_are_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run").join("enipeer").join("ctl.sock");
    let _listener = bind(&path, None).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);
    for dir in [
        path.parent().unwrap(),
        path.parent().unwrap().parent().unwrap(),
    ] {
        let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755, "{}", dir.display());
    }
}

#[tokio::test]
async fn group_socket_is_0660_and_owned_by_the_group() {
    // Our own primary group: chown to it needs no privileges.
    let gid = nix::unistd::getegid();
    let Some(group) = nix::unistd::Group::from_gid(gid).ok().flatten() else {
        eprintln!("skipping: gid {gid} has no name on this host");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctl.sock");
    let _listener = bind(&path, Some(&group.name)).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
    assert_eq!(meta.gid(), gid.as_raw());
}

#[tokio::test]
async fn unknown_group_is_named_and_nothing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub").join("ctl.sock");
    let err = bind(&path, Some("no-such-group-enipeer")).unwrap_err();
    assert_eq!(err.kind(), "unknown_group");
    assert!(err.to_string().contains("no-such-group-enipeer"), "{err}");
    assert!(!path.parent().unwrap().exists());
}

#[tokio::test]
async fn client_against_a_missing_socket_asks_if_the_daemon_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctl.sock");
    let err = request(&path, &Request::Role, GUARD).await.unwrap_err();
    assert_eq!(err.kind(), "not_running");
    let text = err.to_string();
    assert!(text.contains("is the daemon running?"), "{text}");
    assert!(text.contains(&path.display().to_string()), "{text}");
}

#[tokio::test]
async fn client_against_a_stale_socket_asks_if_the_daemon_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctl.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let err = request(&path, &Request::Role, GUARD).await.unwrap_err();
    assert_eq!(err.kind(), "refused");
    assert!(err.to_string().contains("is the daemon running?"), "{err}");
}

#[tokio::test]
async fn client_times_out_when_the_daemon_is_silent() {
    let (server, mut rx) = start(ServeLimits::default());
    // Hold on to the reply without answering.
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(incoming) = rx.recv().await {
            held.push(incoming);
        }
    });
    let err = request(&server.path, &Request::Role, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "timeout");
    silent.abort();
    server.shutdown().await;
}

#[tokio::test]
async fn daemon_dropping_the_reply_gives_an_error_response() {
    let (server, mut rx) = start(ServeLimits::default());
    let dropper = tokio::spawn(async move {
        while let Some(incoming) = rx.recv().await {
            drop(incoming.reply);
        }
    });
    let response = request(&server.path, &Request::Role, GUARD).await.unwrap();
    assert!(
        matches!(&response, Response::Error { message } if message.contains("dropped")),
        "{response:?}"
    );
    dropper.abort();
    server.shutdown().await;
}

#[tokio::test]
async fn silent_role_reply_times_out_on_the_server() {
    let limits = ServeLimits {
        role_reply_timeout: Duration::from_millis(50),
        ..ServeLimits::default()
    };
    let (server, mut rx) = start(limits);
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(incoming) = rx.recv().await {
            held.push(incoming);
        }
    });
    let response = request(&server.path, &Request::Role, GUARD).await.unwrap();
    assert!(
        matches!(&response, Response::Error { message } if message.contains("did not answer")),
        "{response:?}"
    );
    silent.abort();
    server.shutdown().await;
}

#[tokio::test]
async fn an_idle_client_is_dropped_and_others_are_still_served() {
    // One slot only: the second client can be served only once the idle one has been dropped.
    let limits = ServeLimits {
        max_connections: 1,
        read_timeout: Duration::from_millis(200),
        ..ServeLimits::default()
    };
    let (server, rx) = start(limits);
    let _daemon = fake_daemon(rx);

    let mut idle = UnixStream::connect(&server.path).await.unwrap();
    // Sends half a length prefix and then nothing.
    idle.write_all(&[0, 0]).await.unwrap();

    let role = request(&server.path, &Request::Role, GUARD).await.unwrap();
    assert!(matches!(role, Response::Role(_)));

    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(GUARD, idle.read(&mut buf))
        .await
        .expect("the idle connection is closed by the server")
        .unwrap();
    assert_eq!(n, 0, "the server closes without answering");
    server.shutdown().await;
}

#[tokio::test]
async fn requests_after_the_daemon_is_gone_get_an_error() {
    let (server, rx) = start(ServeLimits::default());
    drop(rx);
    let response = request(&server.path, &Request::Yield { timeout_ms: 10 }, GUARD)
        .await
        .unwrap();
    assert!(
        matches!(&response, Response::Error { message } if message.contains("shutting down")),
        "{response:?}"
    );
    server.shutdown().await;
}

#[test]
fn wire_format_is_stable() {
    // The CLI and daemon may come from different builds during an upgrade.
    assert_eq!(serde_json::to_string(&Request::Role).unwrap(), "\"Role\"");
    assert_eq!(
        serde_json::to_string(&Request::Yield { timeout_ms: 5 }).unwrap(),
        r#"{"Yield":{"timeout_ms":5}}"#
    );
}
