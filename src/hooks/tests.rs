use std::path::Path;

use nix::errno::Errno;
use nix::sys::signal::kill;

use super::*;

/// Guard against a broken runner hanging the test run; never the thing asserted on.
const GUARD: Duration = Duration::from_secs(30);

fn settings(timeout: Duration) -> HookSettings {
    HookSettings {
        timeout,
        on_master: vec![],
        on_backup: vec![],
        on_fault: vec![],
        on_stop: vec![],
        on_event: Vec::new(),
    }
}

fn sh(script: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}

fn env() -> HookEnv {
    HookEnv {
        node: "a".into(),
        role: "master".into(),
        reason: "peer b dead for 3s".into(),
        eni: "eni-0123456789abcdef0".into(),
        interface: Some("eni1".into()),
        addresses: vec![Ipv4Addr::new(198, 18, 0, 10), Ipv4Addr::new(198, 18, 0, 11)],
        addresses_v6: vec!["2001:db8::10".parse().unwrap()],
        event: None,
    }
}

async fn next(reports: &mut mpsc::UnboundedReceiver<HookReport>) -> HookReport {
    tokio::time::timeout(GUARD, reports.recv())
        .await
        .expect("a report arrives")
        .expect("runner alive")
}

fn quoted(path: &Path) -> String {
    format!("'{}'", path.display())
}

#[tokio::test]
async fn environment_reaches_the_child() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("env");
    let mut s = settings(GUARD);
    s.on_master = vec![sh(&format!(
        "printf '%s\\n' \"$ENIPEER_TRANSITION\" \"$ENIPEER_NODE\" \"$ENIPEER_ROLE\" \
         \"$ENIPEER_REASON\" \"$ENIPEER_ENI\" \"$ENIPEER_INTERFACE\" \"$ENIPEER_ADDRESSES\" \
         \"$ENIPEER_ADDRESSES_V6\" > {}",
        quoted(&out)
    ))];
    s.on_backup = vec![sh(&format!(
        "echo \"[$ENIPEER_ROLE][$ENIPEER_INTERFACE][$ENIPEER_ADDRESSES][$ENIPEER_ADDRESSES_V6]\" > {}",
        quoted(&dir.path().join("backup"))
    ))];
    let (hooks, mut reports) = HookRunner::spawn(s);

    hooks.run(Transition::Master, env());
    let report = next(&mut reports).await;
    assert_eq!(report.transition, Transition::Master);
    assert_eq!(report.results[0].outcome, HookOutcome::Exited { code: 0 });
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "master\na\nmaster\npeer b dead for 3s\neni-0123456789abcdef0\neni1\n198.18.0.10 198.18.0.11\n2001:db8::10\n"
    );

    let backup = HookEnv {
        role: "backup".into(),
        interface: None,
        addresses: vec![],
        addresses_v6: vec![],
        ..env()
    };
    hooks.run(Transition::Backup, backup);
    next(&mut reports).await;
    assert_eq!(
        std::fs::read_to_string(dir.path().join("backup")).unwrap(),
        "[backup][][][]\n"
    );
}

#[tokio::test]
async fn commands_and_transitions_run_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = quoted(&dir.path().join("log"));
    let mut s = settings(GUARD);
    s.on_master = vec![
        // The first one is the slowest: a runner that overlapped commands would log it last.
        sh(&format!("sleep 0.2; echo master-1 >> {log}")),
        sh(&format!("echo master-2 >> {log}")),
    ];
    s.on_backup = vec![sh(&format!("echo backup-1 >> {log}"))];
    let (hooks, mut reports) = HookRunner::spawn(s);

    hooks.run(Transition::Master, env());
    hooks.run(Transition::Backup, env());
    hooks.run(Transition::Master, env());

    let order: Vec<Transition> = vec![
        next(&mut reports).await.transition,
        next(&mut reports).await.transition,
        next(&mut reports).await.transition,
    ];
    assert_eq!(
        order,
        [Transition::Master, Transition::Backup, Transition::Master]
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("log")).unwrap(),
        "master-1\nmaster-2\nbackup-1\nmaster-1\nmaster-2\n"
    );
}

#[tokio::test]
async fn a_failing_command_is_reported_and_the_next_still_runs() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    let mut s = settings(GUARD);
    s.on_fault = vec![
        sh("echo oops >&2; exit 3"),
        vec!["touch".into(), marker.display().to_string()],
    ];
    let (hooks, mut reports) = HookRunner::spawn(s);

    hooks.run(Transition::Fault, env());
    let report = next(&mut reports).await;
    assert_eq!(report.results.len(), 2);
    assert_eq!(report.results[0].outcome, HookOutcome::Exited { code: 3 });
    assert!(!report.results[0].outcome.is_success());
    assert_eq!(report.results[0].argv, sh("echo oops >&2; exit 3"));
    assert_eq!(report.results[1].outcome, HookOutcome::Exited { code: 0 });
    assert!(marker.exists());
}

#[tokio::test]
async fn a_missing_program_fails_to_start() {
    let mut s = settings(GUARD);
    s.on_stop = vec![vec!["/nonexistent/enipeer-hook".into()], vec![]];
    let (hooks, mut reports) = HookRunner::spawn(s);

    hooks.run(Transition::Stop, env());
    let report = next(&mut reports).await;
    match &report.results[0].outcome {
        HookOutcome::FailedToStart { error } => {
            assert!(error.contains("No such file"), "{error}")
        }
        other => panic!("expected failed-to-start, got {other:?}"),
    }
    assert!(matches!(
        &report.results[1].outcome,
        HookOutcome::FailedToStart { error } if error == "empty command"
    ));
}

#[tokio::test]
async fn a_transition_without_commands_still_reports() {
    let (hooks, mut reports) = HookRunner::spawn(settings(GUARD));
    hooks.run(Transition::Backup, env());
    let report = next(&mut reports).await;
    assert_eq!(report.transition, Transition::Backup);
    assert!(report.results.is_empty());
}

/// True once `pid` is neither running nor a zombie (reaped, or never ours to reap and gone).
fn gone(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH)
}

/// Not running any more: gone, or a zombie waiting for a reaper that is not us.
fn not_running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
    }
}

#[tokio::test]
async fn a_hook_past_its_timeout_is_killed_and_reaped() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let childfile = dir.path().join("child");
    let mut s = settings(Duration::from_millis(200));
    s.on_master = vec![
        // `exec` so the pid written is the very process the runner spawned.
        sh(&format!("echo $$ > {}; exec sleep 30", quoted(&pidfile))),
        // A descendant in the background: the timeout reaches the whole process group.
        sh(&format!(
            "sleep 30 & echo $! > {}; wait",
            quoted(&childfile)
        )),
    ];
    let (hooks, mut reports) = HookRunner::spawn(s);

    hooks.run(Transition::Master, env());
    let report = next(&mut reports).await;
    assert_eq!(report.results[0].outcome, HookOutcome::TimedOut);
    assert_eq!(report.results[1].outcome, HookOutcome::TimedOut);

    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(gone(pid), "hook {pid} was left running or as a zombie");

    let descendant: i32 = std::fs::read_to_string(&childfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Signal delivery to the group is asynchronous for processes that are not ours to wait for.
    let deadline = Instant::now() + GUARD;
    while !not_running(descendant) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(not_running(descendant), "descendant {descendant} survived");
}

#[tokio::test]
async fn run_returns_at_once_while_a_long_hook_runs() {
    let mut s = settings(Duration::from_millis(300));
    s.on_master = vec![vec!["sleep".into(), "30".into()]];
    let (hooks, mut reports) = HookRunner::spawn(s);

    hooks.run(Transition::Master, env());
    // Let the runner start the first hook, then queue more behind it.
    tokio::task::yield_now().await;
    hooks.run(Transition::Master, env());
    hooks.run(Transition::Stop, env());
    // `sleep 30` cannot have finished: no report yet although all three calls returned.
    assert!(matches!(
        reports.try_recv(),
        Err(mpsc::error::TryRecvError::Empty)
    ));

    assert_eq!(
        next(&mut reports).await.results[0].outcome,
        HookOutcome::TimedOut
    );
    assert_eq!(
        next(&mut reports).await.results[0].outcome,
        HookOutcome::TimedOut
    );
    assert_eq!(next(&mut reports).await.transition, Transition::Stop);
}

#[tokio::test]
async fn a_chatty_hook_does_not_block_on_its_pipes() {
    let mut s = settings(GUARD);
    // Far more than a pipe buffer on both streams: only works if both are read while it runs.
    s.on_master = vec![sh(
        "head -c 300000 /dev/zero; head -c 300000 /dev/zero >&2; echo done",
    )];
    let (hooks, mut reports) = HookRunner::spawn(s);
    hooks.run(Transition::Master, env());
    let report = next(&mut reports).await;
    assert_eq!(report.results[0].outcome, HookOutcome::Exited { code: 0 });
}

#[tokio::test]
async fn the_channel_closes_after_the_last_handle_and_queued_hooks() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("stopped");
    let mut s = settings(GUARD);
    s.on_stop = vec![sh(&format!("sleep 0.1; touch {}", quoted(&marker)))];
    let (hooks, mut reports) = HookRunner::spawn(s);
    hooks.run(Transition::Stop, env());
    drop(hooks);
    // What the daemon does at shutdown: drain until closed, and the stop hook has run.
    assert_eq!(next(&mut reports).await.transition, Transition::Stop);
    assert!(tokio::time::timeout(GUARD, reports.recv())
        .await
        .unwrap()
        .is_none());
    assert!(marker.exists());
}

#[test]
fn run_without_a_runner_does_not_panic() {
    let (queue, rx) = mpsc::unbounded_channel();
    drop(rx);
    let settings = Arc::new(Mutex::new(super::super::config::HookSettings {
        timeout: Duration::from_secs(1),
        on_master: Vec::new(),
        on_backup: Vec::new(),
        on_fault: Vec::new(),
        on_stop: Vec::new(),
        on_event: Vec::new(),
    }));
    HookHandle { queue, settings }.run(Transition::Master, env());
}

#[test]
fn tail_keeps_the_last_bytes() {
    let mut tail = Tail::default();
    tail.push(&[b'a'; OUTPUT_TAIL]);
    tail.push(b"end");
    let text = tail.text();
    assert_eq!(text.len(), OUTPUT_TAIL);
    assert!(text.ends_with("aend"));
}

#[test]
fn outcome_reads_like_a_sentence() {
    assert_eq!(HookOutcome::Exited { code: 3 }.to_string(), "exit status 3");
    assert_eq!(
        HookOutcome::Signaled { signal: 9 }.to_string(),
        "killed by SIGKILL"
    );
    assert_eq!(Transition::Fault.as_str(), "fault");
}

#[tokio::test]
async fn a_hook_ignoring_sigterm_is_killed_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let mut s = settings(Duration::from_millis(200));
    s.on_fault = vec![sh(&format!(
        "trap '' TERM; echo $$ > {}; while :; do sleep 0.05; done",
        quoted(&pidfile)
    ))];
    let (hooks, mut reports) = HookRunner::spawn(s);

    hooks.run(Transition::Fault, env());
    let report = next(&mut reports).await;
    assert_eq!(report.results[0].outcome, HookOutcome::TimedOut);
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(gone(pid), "hook {pid} survived SIGTERM and SIGKILL");
}

#[test]
fn event_hooks_get_the_event_and_its_details() {
    let mut e = env();
    e.event = Some(("peer-lost".into(), vec![("peer".into(), "b".into())]));
    let vars = e.vars(Transition::Event);
    assert!(vars.contains(&("ENIPEER_TRANSITION".into(), "event".into())));
    assert!(vars.contains(&("ENIPEER_EVENT".into(), "peer-lost".into())));
    assert!(vars.contains(&("ENIPEER_EVENT_PEER".into(), "b".into())));
}

#[test]
fn event_hooks_are_rate_limited_per_minute() {
    let mut l = EventLimit::default();
    let t0 = Instant::now();
    let allowed = (0..50).filter(|_| l.allow(t0)).count();
    assert_eq!(allowed as u32, EVENTS_PER_MINUTE);
    assert!(l.allow(t0 + Duration::from_secs(61)), "a new window");
}
