//! Issue 12 in the lab: the operator's side of the pair on a real EC2 layout.
//!
//! - Maintenance mode on the master (`enipeer maintenance on --reason … --timeout …`) hands the
//!   ENI over to the backup before it answers: the client, probing the Elastic IP every 10 ms,
//!   is served throughout apart from the handover's short gap. The mode is shown in both nodes'
//!   `enipeer role`, survives a restart of the agent (node-a comes back backup, still in
//!   maintenance, and the ENI stays where it is), and `maintenance off` moves nothing (preempt
//!   is off in the shipped example).
//!
//! - The on-event hook (docs/notifications.md) runs with `peer-lost node-b` when node-b's agent
//!   is SIGKILLed (host and nginx up) and with `peer-back node-b` when it is started again; the
//!   ENI stays on node-a and the client sees nothing.
//!
//! Needs root; without it each test says so and passes as skipped. Its own test binary, since
//! the lab's namespaces have fixed names and e2e.rs keeps its own lab for its whole run; the
//! tests here take turns (one lab at a time).

mod support;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::lab::{
    agent_config_table, state_dir_path, tail, AgentOptions, Lab, Probe, Profile, Samples,
};
use support::Side::{A, B};

/// One lab at a time: the namespaces have fixed names.
static SERIAL: Mutex<()> = Mutex::new(());

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Both agents' log tails, for a failure message.
fn logs(lab: &Lab) -> String {
    format!(
        "--- node-a ---\n{}\n--- node-b ---\n{}",
        tail(&lab.logs(A), 40),
        tail(&lab.logs(B), 40)
    )
}

/// A CLI call's output, for a failure message.
fn output(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// ENI moves since the call log was last cleared: attaches and detaches the cloud carried out.
fn eni_moves(lab: &Lab) -> usize {
    lab.front
        .calls()
        .iter()
        .filter(|c| {
            matches!(
                c.action.as_str(),
                "AttachNetworkInterface" | "DetachNetworkInterface"
            ) && c.status == 200
        })
        .count()
}

/// Prints what the client saw, in a form that can be quoted.
fn figures(what: &str, s: &Samples) {
    eprintln!(
        "  {what}: {} of {} probes failed, longest gap {} ms",
        s.failed(),
        s.samples.len(),
        s.longest_gap().as_millis()
    );
}

/// For `within`, checks every 250 ms that `f` holds; panics with `what` and the logs otherwise.
fn holds_for(lab: &Lab, what: &str, within: Duration, mut f: impl FnMut(&Lab) -> bool) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        assert!(f(lab), "{what} stopped holding\n{}", logs(lab));
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(f(lab), "{what} stopped holding\n{}", logs(lab));
}

/// The longest client gap an orderly handover may cost: detach, attach and the host's network
/// configuration, no detection time. The aws-like profile adds 4.3 s of cloud and hot-plug
/// delays.
fn handover_gap_bound(lab: &Lab) -> Duration {
    match lab.profile {
        Profile::Instant => secs(2.0),
        Profile::AwsLike => secs(7.0),
    }
}

#[test]
fn lab_maintenance_on_the_master_hands_over_and_survives_a_restart() {
    if support::lab::unavailable() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = Lab::up(Profile::from_env(), support::lab::agent_bin());
    lab.start_pair(&AgentOptions::default());
    lab.front.clear_calls();

    // Maintenance on the master: it answers once node-b has taken over.
    let probe = Probe::start(secs(60.0));
    std::thread::sleep(secs(1.0));
    let asked = Instant::now();
    let out = lab.cli(
        A,
        &[
            "maintenance",
            "on",
            "--reason",
            "kernel update",
            "--timeout",
            "15s",
        ],
    );
    let answered = asked.elapsed();
    assert!(
        out.status.success(),
        "maintenance on: {}\n{}",
        output(&out),
        logs(&lab)
    );
    assert_eq!(
        lab.role_name(B),
        "master",
        "node-b is master when the command answers\n{}",
        logs(&lab)
    );
    lab.wait_for("node-b serving", secs(10.0), |l| l.serving(B));
    lab.wait_for(
        "node-a backup in maintenance, node-b seeing it",
        secs(5.0),
        |l| {
            l.role(A).is_some_and(|r| r.role == "backup")
                && l.role(B)
                    .is_some_and(|r| r.peers[0].maintenance == Some(true))
        },
    );
    let a = lab.role(A).expect("node-a answers");
    assert_eq!(a.maintenance.as_deref(), Some("kernel update"));
    let b = lab.role(B).expect("node-b answers");
    assert_eq!(b.role, "master");
    assert_eq!(b.peers[0].name, A.name());
    assert_eq!(b.peers[0].maintenance, Some(true), "node-b knows");
    // Long enough to see node-b serve steadily after the gap.
    std::thread::sleep(secs(1.0));
    let s = probe.finish();
    eprintln!("  maintenance on answered in {} ms", answered.as_millis());
    figures("maintenance handover node-a -> node-b", &s);
    assert_eq!(
        lab.holder(),
        Some(B),
        "the cloud attaches the ENI to node-b"
    );
    assert!(s.samples.len() > 100, "{} samples", s.samples.len());
    assert!(
        s.longest_gap() < handover_gap_bound(&lab),
        "the client's longest gap {:?}\n{}",
        s.longest_gap(),
        logs(&lab)
    );
    assert_eq!(s.last(), Some(B.name()), "node-b answers last");
    assert_eq!(s.failed_at_end(20), 0, "the last probes succeed");
    assert!(
        lab.front
            .calls()
            .iter()
            .all(|c| c.params.get("Force").map(String::as_str) != Some("true")),
        "an orderly handover never forces a detach"
    );

    // The mode survives a restart of node-a's agent; nothing moves, the client sees nothing.
    lab.front.clear_calls();
    let probe = Probe::start(secs(60.0));
    std::thread::sleep(secs(0.3));
    let saved = state_dir_path(A, lab.dir()).join("maintenance");
    assert_eq!(
        std::fs::read_to_string(&saved).ok().as_deref(),
        Some("kernel update\n"),
        "node-a saved the mode in its own state dir"
    );
    lab.kill_agent(A);
    lab.start_agent(A);
    lab.wait_for(
        "node-a back: backup, in maintenance, hearing node-b",
        secs(15.0),
        |l| {
            l.role(A).is_some_and(|r| {
                r.role == "backup"
                    && r.maintenance.as_deref() == Some("kernel update")
                    && r.peers[0].alive
            })
        },
    );
    assert!(
        lab.logs(A).contains("starting in maintenance"),
        "the restarted agent read the saved mode\n{}",
        logs(&lab)
    );
    lab.wait_for("node-b sees node-a in maintenance", secs(5.0), |l| {
        l.role(B)
            .is_some_and(|r| r.peers[0].alive && r.peers[0].maintenance == Some(true))
    });
    holds_for(
        &lab,
        "the ENI on node-b, node-b master, node-a backup",
        secs(3.0),
        |l| l.holder() == Some(B) && l.role_name(B) == "master" && l.role_name(A) == "backup",
    );

    // Off: node-a is a candidate again, but preempt is off, so node-b stays master.
    let out = lab.cli(A, &["maintenance", "off"]);
    assert!(
        out.status.success(),
        "maintenance off: {}\n{}",
        output(&out),
        logs(&lab)
    );
    lab.wait_for(
        "node-a out of maintenance, node-b seeing it",
        secs(5.0),
        |l| {
            l.role(A).is_some_and(|r| r.maintenance.is_none())
                && l.role(B)
                    .is_some_and(|r| r.peers[0].alive && r.peers[0].maintenance != Some(true))
        },
    );
    assert!(!saved.exists(), "the saved mode is removed");
    holds_for(
        &lab,
        "the ENI on node-b after maintenance off",
        secs(3.0),
        |l| l.holder() == Some(B) && l.role_name(B) == "master" && l.role_name(A) == "backup",
    );
    let s = probe.finish();
    figures("node-a restarted in maintenance, then maintenance off", &s);
    assert_eq!(eni_moves(&lab), 0, "the ENI moved\n{}", logs(&lab));
    assert!(s.samples.len() > 100, "{} samples", s.samples.len());
    assert_eq!(s.failed(), 0, "the client saw failures\n{}", logs(&lab));
    assert!(
        s.samples.iter().all(|x| x.1.as_deref() == Some(B.name())),
        "someone other than node-b answered"
    );
}

#[test]
fn lab_on_event_hook_fires_for_peer_lost_and_back() {
    if support::lab::unavailable() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = Lab::up(Profile::from_env(), support::lab::agent_bin());
    let o = AgentOptions::default();
    let events_file = lab.dir().join("node-a.events");
    let mut a = agent_config_table(A, lab.seeded.eni.as_str(), &o, lab.dir());
    a.set(
        "hooks",
        "on-event",
        vec![vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            format!(
                "echo $ENIPEER_EVENT $ENIPEER_EVENT_PEER >> {}",
                events_file.display()
            ),
        ]],
    );
    lab.write_config_table(A, &a);
    lab.write_config(B, &o);
    lab.start_pair_as_written();
    lab.front.clear_calls();
    let events = || std::fs::read_to_string(&events_file).unwrap_or_default();
    let probe = Probe::start(secs(60.0));
    std::thread::sleep(secs(0.3));
    // The pair forming is not news: a peer heard for the first time is not "back".
    assert!(
        !events().contains("peer-lost") && !events().contains("peer-back"),
        "no peer lost or back yet: {}",
        events()
    );
    // What the hook wrote from here on.
    let before = events().lines().count();
    let since_kill = || -> Vec<String> {
        events()
            .lines()
            .skip(before)
            .map(|l| l.trim().to_owned())
            .collect()
    };

    // node-b's agent dies; its host and nginx stay up.
    let killed = Instant::now();
    lab.kill_agent(B);
    lab.wait_for("peer-lost node-b", secs(5.0), |_| {
        since_kill().iter().any(|l| l == "peer-lost node-b")
    });
    let lost_after = killed.elapsed();
    holds_for(
        &lab,
        "the ENI on node-a, node-a master without its peer",
        secs(3.0),
        |l| {
            l.holder() == Some(A)
                && l.role(A)
                    .is_some_and(|r| r.role == "master" && !r.peers[0].alive)
        },
    );

    // node-b's agent is back.
    let started = Instant::now();
    lab.start_agent(B);
    lab.wait_for("peer-back node-b after the peer-lost", secs(10.0), |_| {
        since_kill()
            .iter()
            .skip_while(|l| *l != "peer-lost node-b")
            .any(|l| l == "peer-back node-b")
    });
    let back_after = started.elapsed();
    lab.wait_for("node-b backup hearing node-a", secs(10.0), |l| {
        l.role(B)
            .is_some_and(|r| r.role == "backup" && r.peers[0].alive)
    });
    std::thread::sleep(secs(0.5));
    let s = probe.finish();
    eprintln!(
        "  peer-lost {} ms after the kill, peer-back {} ms after the start; events:\n{}",
        lost_after.as_millis(),
        back_after.as_millis(),
        events().trim_end()
    );
    figures("node-b's agent killed and restarted", &s);
    assert_eq!(
        since_kill(),
        ["peer-lost node-b", "peer-back node-b"],
        "one event each, in order"
    );
    assert_eq!(eni_moves(&lab), 0, "the ENI moved\n{}", logs(&lab));
    assert_eq!(lab.holder(), Some(A), "node-a keeps the ENI");
    assert_eq!(lab.role_name(A), "master");
    assert!(s.samples.len() > 100, "{} samples", s.samples.len());
    assert_eq!(s.failed(), 0, "the client saw failures\n{}", logs(&lab));
    assert!(
        s.samples.iter().all(|x| x.1.as_deref() == Some(A.name())),
        "someone other than node-a answered"
    );
}
