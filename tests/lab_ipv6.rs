//! Issue 10, point 4, in the lab: IPv6 on the ENI ([`Layout::DualStack`]). The ENI has
//! 2001:db8:0:1::25 besides its IPv4 addresses; the router advertises itself on the ENI's subnet
//! from AWS's router link-local address and drops an ENI address that arrives over the
//! management bridge (the source/destination check); the client on the "internet" reaches the
//! ENI's IPv6 address directly.
//!
//! - Failover: node-a serves the client over IPv6; its host freezes; node-b takes over and the
//!   client is served over IPv6 by node-b, its IPv6 rule and routes in the ENI's table, the
//!   default via the router's link-local address as learned from the advertisements. node-a,
//!   thawed, removes its IPv6 rule (the routes left with the link); then `enipeer yield` on
//!   node-b hands the ENI back, node-a serves over IPv6 again and node-b has no IPv6 rule or
//!   route left.
//! - Negative control: the same failover with node-b running the daemon's seam that leaves the
//!   IPv6 policy rules and routes out of the plan (`ENIPEER_TEST_IPV6_UNROUTED`, debug builds
//!   only; the addresses stay). node-b serves through the EIP but never over IPv6: its replies
//!   from the ENI's IPv6 address follow the main table out of the primary interface and the
//!   router's source/destination check drops them (its counter rises; in the first test it
//!   stays at 0).
//!
//! Needs root; without it each test says so and passes as skipped. Its own test binary (the
//! lab's namespaces have fixed names); the tests here take turns.

mod support;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::lab::{tail, AgentOptions, Lab, Layout, Profile, ENI_IP6};
use support::Side::{A, B};

/// One lab at a time: the namespaces have fixed names.
static SERIAL: Mutex<()> = Mutex::new(());

fn dual_stack_lab() -> Lab {
    Lab::up_with(
        Profile::from_env(),
        support::lab::agent_bin(),
        Layout::DualStack,
    )
}

fn options() -> AgentOptions {
    AgentOptions {
        hold_down: "3s",
        ..AgentOptions::default()
    }
}

/// Polls the client's IPv6 GET every 50 ms until `side` answers, up to `within`; how long it
/// took, or `None`.
fn served6_within(lab: &Lab, side: support::Side, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if lab.client_fetch6(Duration::from_millis(300)).as_deref() == Some(side.name()) {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn logs(lab: &Lab) -> String {
    format!(
        "--- node-a ---\n{}\n--- node-b ---\n{}",
        tail(&lab.logs(A), 30),
        tail(&lab.logs(B), 30)
    )
}

/// node-a master and serving over IPv6, node-b backup; then node-a's host freezes and node-b
/// is master. Returns how long after the freeze node-b served over IPv4 (EIP) and IPv6.
fn fail_over_to_b(lab: &mut Lab) -> (Option<Duration>, Option<Duration>) {
    let frozen = Instant::now();
    lab.freeze(A);
    lab.wait_for("node-b master", Duration::from_secs(20), |l| {
        l.role_name(B) == "master"
    });
    let mut v4 = None;
    let mut v6 = None;
    while frozen.elapsed() < Duration::from_secs(15) && (v4.is_none() || v6.is_none()) {
        if v4.is_none() && lab.serving(B) {
            v4 = Some(frozen.elapsed());
        }
        if v6.is_none()
            && lab.client_fetch6(Duration::from_millis(300)).as_deref() == Some(B.name())
        {
            v6 = Some(frozen.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (v4, v6)
}

#[test]
fn lab_ipv6_client_is_served_after_failover_and_nothing_ipv6_is_left_behind() {
    if support::lab::unavailable() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = dual_stack_lab();
    lab.start_pair(&options());
    let first = served6_within(&lab, A, Duration::from_secs(10));
    assert!(first.is_some(), "node-a serves over IPv6: {}", logs(&lab));

    let (v4, v6) = fail_over_to_b(&mut lab);
    eprintln!("after the freeze of node-a: served by node-b over IPv4 {v4:?}, over IPv6 {v6:?}");
    assert!(
        v4.is_some(),
        "node-b serves through the EIP: {}",
        logs(&lab)
    );
    assert!(v6.is_some(), "node-b serves over IPv6: {}", logs(&lab));
    let (rules, routes) = lab.eni_ipv6_state(B);
    assert_eq!(rules.len(), 1, "node-b's IPv6 rule: {rules:?}");
    assert!(
        routes
            .iter()
            .any(|r| r.starts_with("default via fe80::1ff:fe23:4567:890a dev ")),
        "node-b's IPv6 default via the advertised router: {routes:?}"
    );
    assert!(
        routes
            .iter()
            .any(|r| r.starts_with("2001:db8:0:1::/64 dev ")),
        "{routes:?}"
    );
    assert_eq!(lab.ipv6_source_check_drops(), 0, "nothing left a wrong NIC");

    // node-a comes back: it lost the ENI (force-detached) and must drop its IPv6 rule too.
    lab.thaw(A);
    lab.wait_for("node-a backup, clean", Duration::from_secs(20), |l| {
        l.role_name(A) == "backup" && l.eni_ipv6_state(A) == (vec![], vec![])
    });

    // A clean handover back: node-b removes its IPv6 rule and routes.
    let out = lab.cli(B, &["yield", "--timeout", "15s"]);
    assert!(
        out.status.success(),
        "yield: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let back = served6_within(&lab, A, Duration::from_secs(15));
    eprintln!("after the yield: node-a served over IPv6 after {back:?}");
    assert!(
        back.is_some(),
        "node-a serves over IPv6 again: {}",
        logs(&lab)
    );
    lab.wait_for("node-b backup", Duration::from_secs(10), |l| {
        l.role_name(B) == "backup"
    });
    assert_eq!(
        lab.eni_ipv6_state(B),
        (vec![], vec![]),
        "node-b keeps no IPv6 rule or route for {ENI_IP6}"
    );
}

/// Negative control: node-b adds the ENI's IPv6 address but not its policy rule and routes (the
/// seam), so after the failover the client is served through the EIP but not over IPv6, and the
/// router's source check is what drops node-b's replies.
#[test]
fn lab_ipv6_client_is_not_served_without_ipv6_policy_routing() {
    if support::lab::unavailable() {
        return;
    }
    if !cfg!(debug_assertions) {
        eprintln!("SKIPPED: the IPv4-only seam exists in debug builds only");
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = dual_stack_lab();
    let o = options();
    lab.write_config(A, &o);
    lab.write_config(B, &o);
    lab.start_agent(A);
    lab.wait_for("node-a master and serving", Duration::from_secs(20), |l| {
        l.role_name(A) == "master" && l.serving(A)
    });
    lab.agent_env
        .push(("ENIPEER_TEST_IPV6_UNROUTED".into(), "1".into()));
    lab.start_agent(B);
    lab.agent_env.clear();
    lab.wait_for("node-b backup", Duration::from_secs(20), |l| {
        l.role(B)
            .is_some_and(|r| r.role == "backup" && r.peers[0].alive)
    });
    assert!(served6_within(&lab, A, Duration::from_secs(10)).is_some());
    let before = lab.ipv6_source_check_drops();
    let (v4, v6) = fail_over_to_b(&mut lab);
    assert!(
        v4.is_some(),
        "node-b serves through the EIP: {}",
        logs(&lab)
    );
    assert_eq!(v6, None, "no IPv6 service without IPv6 policy routing");
    assert_eq!(lab.eni_ipv6_state(B), (vec![], vec![]));
    let drops = lab.ipv6_source_check_drops() - before;
    eprintln!("the router's IPv6 source check dropped {drops} packets from node-b");
    assert!(
        drops > 0,
        "the router's source check dropped node-b's replies"
    );
}
