//! Issue 10 in the lab (own-subnet layout): the host side of a failover on a real EC2 layout.
//!
//! - The on-master hook starts only once the host network is applied. nginx on both nodes is
//!   bound to the ENI's address (`listen 198.18.1.25:80`, not the wildcard), the hook restarts
//!   it, and the guest sees the hot-plugged ENI 1 s after the cloud says `attached` (as AWS
//!   documents it may). After the master host freezes, the new master serves the client through
//!   the EIP and its timeline shows `hooks started` after `host network applied`. The negative
//!   control runs the same scenario with the daemon's test seam that starts the hook at the
//!   transition (`ENIPEER_TEST_EARLY_MASTER_HOOK`, debug builds only): nginx fails to bind with
//!   EADDRNOTAVAIL and the new master never serves.
//!
//! - After a forced detach the cloud refuses the old device index on that instance (as AWS may);
//!   failing back attaches at the next index. The negative control configures the single index
//!   of old (`device-index = [1]`) and node-a never serves again.
//!
//! Needs root; without it each test says so and passes as skipped. Its own test binary, since
//! the lab's namespaces have fixed names and e2e.rs keeps its own lab for its whole run; the
//! tests here take turns (one lab at a time).

mod support;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::lab::{tail, AgentOptions, Lab, Profile};
use support::Side::{self, A, B};

/// One lab at a time: the namespaces have fixed names.
static SERIAL: Mutex<()> = Mutex::new(());

fn options() -> AgentOptions {
    AgentOptions {
        // Short, so the old master may take the ENI back soon after it returns (failback).
        hold_down: "3s",
        ..AgentOptions::default()
    }
}

/// Both agents up with nginx bound to the ENI's address and the restart hook: node-a master
/// and serving, node-b backup hearing it. `early_on_b` starts node-b with the early-hook seam.
fn bound_pair(lab: &mut Lab, early_on_b: bool) {
    let o = options();
    for side in Side::BOTH {
        let hook = lab.bound_nginx(side);
        lab.write_config_with_hook(side, &o, &hook);
    }
    lab.start_agent(A);
    lab.wait_for("node-a master and serving", Duration::from_secs(20), |l| {
        l.role_name(A) == "master" && l.serving(A)
    });
    if early_on_b {
        lab.agent_env
            .push(("ENIPEER_TEST_EARLY_MASTER_HOOK".into(), "1".into()));
    }
    lab.start_agent(B);
    lab.agent_env.clear();
    lab.wait_for(
        "node-b backup hearing node-a",
        Duration::from_secs(20),
        |l| {
            let heard = |r: &enipeer::report::RoleReport| {
                r.peers[0].alive && r.peers[0].last_heard_ms_ago.is_some()
            };
            l.role(B).is_some_and(|r| r.role == "backup" && heard(&r))
                && l.role(A).is_some_and(|r| heard(&r))
        },
    );
    // After node-a's own start: from now on the guest sees an attached ENI 1 s late.
    lab.set_hotplug_delay(Duration::from_secs(1));
}

/// What the failover to node-b looked like.
struct Takeover {
    served: bool,
    /// The labels of node-b's failover timeline, in order.
    steps: Vec<String>,
    /// nginx on node-b said it could not bind the ENI's address.
    bind_failed: bool,
}

impl Takeover {
    fn position(&self, label: &str) -> Option<usize> {
        self.steps.iter().position(|s| s == label)
    }

    /// `hooks started` after `host network applied`, both present.
    fn hooks_after_net(&self) -> bool {
        match (
            self.position("host network applied"),
            self.position("hooks started"),
        ) {
            (Some(net), Some(hooks)) => hooks > net,
            _ => false,
        }
    }
}

/// Freezes node-a's host; waits for node-b to be master, then up to 8 s for it to serve.
fn fail_over_to_b(lab: &mut Lab) -> Takeover {
    lab.freeze(A);
    lab.wait_for("node-b master", Duration::from_secs(20), |l| {
        l.role_name(B) == "master"
    });
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut served = false;
    while Instant::now() < deadline && !served {
        served = lab.serving(B);
        std::thread::sleep(Duration::from_millis(50));
    }
    // The timeline may finish a moment after the first answer.
    std::thread::sleep(Duration::from_millis(300));
    let steps = lab
        .role(B)
        .and_then(|r| r.last_failover)
        .map(|t| t.steps.into_iter().map(|s| s.label).collect())
        .unwrap_or_default();
    let needle = "Cannot assign requested address";
    let bind_failed = lab.bound_nginx_errors(B).contains(needle) || lab.logs(B).contains(needle);
    Takeover {
        served,
        steps,
        bind_failed,
    }
}

fn context(lab: &Lab, t: &Takeover) -> String {
    format!(
        "served {}, steps {:?}, bind failed {}\n--- node-b ---\n{}\n--- node-b nginx ---\n{}",
        t.served,
        t.steps,
        t.bind_failed,
        tail(&lab.logs(B), 40),
        tail(&lab.bound_nginx_errors(B), 10)
    )
}

#[test]
fn lab_hooks_start_after_the_address_exists() {
    if support::lab::unavailable() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = Lab::up(Profile::from_env(), support::lab::agent_bin());
    bound_pair(&mut lab, false);
    let t = fail_over_to_b(&mut lab);
    assert!(
        t.served,
        "node-b serves through the EIP: {}",
        context(&lab, &t)
    );
    assert!(t.hooks_after_net(), "{}", context(&lab, &t));
    assert!(!t.bind_failed, "{}", context(&lab, &t));
}

/// Negative control: the same failover with the hook started at the transition (the order
/// before issue 10) leaves node-b master without its service.
#[test]
fn lab_hooks_started_early_leave_the_new_master_without_its_service() {
    if support::lab::unavailable() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = Lab::up(Profile::from_env(), support::lab::agent_bin());
    bound_pair(&mut lab, true);
    let t = fail_over_to_b(&mut lab);
    assert!(!t.served, "{}", context(&lab, &t));
    assert!(t.bind_failed, "EADDRNOTAVAIL: {}", context(&lab, &t));
    // The hook started before the address existed (the timeline may end at `hooks done`,
    // before the host network is applied at all).
    assert!(
        t.position("hooks started").is_some() && !t.hooks_after_net(),
        "{}",
        context(&lab, &t)
    );
}

/// Point 3 of issue 10: after a forced detach from node-a (its host froze), the cloud refuses
/// node-a's old device index (as AWS may until the instance is stopped and started). Failing
/// back to node-a attaches the ENI at the next index and the client is served.
#[test]
fn lab_failback_after_a_forced_detach_attaches_at_the_next_index() {
    if support::lab::unavailable() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = Lab::up(Profile::from_env(), support::lab::agent_bin());
    let f = fail_back(&mut lab, &options());
    assert!(f.yielded, "{}", f.context);
    assert!(f.served, "node-a serving again: {}", f.context);
    assert!(
        f.attaches
            .contains(&("1".into(), "device-index-after-forced-detach", 400))
            && f.attaches.contains(&("2".into(), "forwarded", 200)),
        "node-a's attaches: {:?}",
        f.attaches
    );
    assert!(
        f.steps
            .iter()
            .any(|s| s == "attach refused at device index 1; trying 2"),
        "the timeline says which index was used: {:?}",
        f.steps
    );
}

/// Negative control: the same failback with only the old index to try (`device-index = [1]`,
/// what every release before issue 10 did) never serves on node-a: the refusal is final.
#[test]
fn lab_failback_with_a_single_device_index_never_serves_again() {
    if support::lab::unavailable() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = Lab::up(Profile::from_env(), support::lab::agent_bin());
    let single = AgentOptions {
        device_indexes: Some(&[1]),
        ..options()
    };
    let f = fail_back(&mut lab, &single);
    assert!(!f.served, "node-a must not serve: {}", f.context);
    assert!(
        f.attaches
            .contains(&("1".into(), "device-index-after-forced-detach", 400)),
        "node-a's attaches: {:?}",
        f.attaches
    );
    assert!(
        f.attaches.iter().all(|(index, _, _)| index == "1"),
        "no other index was tried: {:?}",
        f.attaches
    );
}

/// What a failback to node-a after a forced detach from it looked like.
struct Failback {
    /// `enipeer yield` on node-b reported success.
    yielded: bool,
    /// node-a served through the EIP within 20 s of the yield.
    served: bool,
    /// node-a's AttachNetworkInterface calls: (device index, front's outcome, HTTP status).
    attaches: Vec<(String, &'static str, u16)>,
    /// node-a's last failover timeline labels.
    steps: Vec<String>,
    context: String,
}

/// Freezes node-a so node-b force-detaches the ENI, thaws it, waits out its hold-down and has
/// node-b yield back to it. The front refuses node-a's old index after the forced detach.
fn fail_back(lab: &mut Lab, o: &AgentOptions) -> Failback {
    lab.front.refuse_index_after_forced_detach();
    lab.start_pair(o);
    lab.freeze(A);
    lab.wait_for("node-b serving", Duration::from_secs(20), |l| l.serving(B));
    let forced =
        lab.front.calls().into_iter().any(|c| {
            c.action == "DetachNetworkInterface" && c.outcome == "forced" && c.status == 200
        });
    assert!(forced, "the failover forced the detach from node-a");
    lab.thaw(A);
    lab.wait_for(
        "node-a backup, out of hold-down",
        Duration::from_secs(30),
        |l| {
            l.role(A)
                .is_some_and(|r| r.role == "backup" && r.hold_down_ms_left.is_none())
        },
    );
    let out = lab.cli(B, &["yield", "--timeout", "15s"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut served = false;
    while Instant::now() < deadline && !served {
        served = lab.serving(A);
        std::thread::sleep(Duration::from_millis(100));
    }
    let a_id = lab.seeded.instance(A).to_string();
    let attaches = lab
        .front
        .calls()
        .into_iter()
        .filter(|c| c.action == "AttachNetworkInterface")
        .filter(|c| c.params.get("InstanceId") == Some(&a_id))
        .map(|c| {
            (
                c.params.get("DeviceIndex").cloned().unwrap_or_default(),
                c.outcome,
                c.status,
            )
        })
        .collect();
    let steps = lab
        .role(A)
        .and_then(|r| r.last_failover)
        .map(|t| t.steps.into_iter().map(|s| s.label).collect())
        .unwrap_or_default();
    let context = format!(
        "yield: {}{}\n--- node-a ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        tail(&lab.logs(A), 40)
    );
    Failback {
        yielded: out.status.success(),
        served,
        attaches,
        steps,
        context,
    }
}
