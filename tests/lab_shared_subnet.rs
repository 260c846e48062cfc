//! The ENI in the instances' own subnet (the lab's [`Layout::SharedSubnet`]): the common EC2
//! layout, with the instances' routes at metric 100 as Ubuntu's netplan writes them and AWS's
//! source/destination check enforced per NIC. The new master's heartbeats must keep leaving
//! through its primary interface once the ENI is configured; if they left through the ENI (the
//! kernel's prefix route for the ENI's address in the main table, metric 0), the check would drop
//! them, the backup would hear nothing and take the ENI back at the end of its hold-down, for
//! ever. Needs root; without it the test says so and passes as skipped. Its own test binary,
//! since the lab's namespaces have fixed names and e2e.rs keeps its own lab for its whole run.

mod support;

use std::time::{Duration, Instant};

use support::lab::{AgentOptions, Lab, Layout, Profile};
use support::netns::{link_by_mac, sh};
use support::Side::{self, A, B};

/// The device the master's heartbeats to its peer leave through (`ip route get <peer> from
/// <bind>`).
fn heartbeat_dev(side: Side) -> String {
    let out = sh(&[
        "ip",
        "-n",
        side.ns(),
        "-j",
        "route",
        "get",
        side.peer().node_ip(),
        "from",
        side.node_ip(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j route get");
    v[0]["dev"].as_str().unwrap_or("?").to_owned()
}

/// The ENI's link in `side`'s namespace (found by MAC, as the agent finds it).
fn eni_dev(lab: &Lab, side: Side) -> String {
    link_by_mac(side.ns(), &lab.seeded.mac).expect("the ENI's link on the master")
}

/// How long ago `side` last heard its peer, in ms (`None`: down or never).
fn heard_ms_ago(lab: &Lab, side: Side) -> Option<u64> {
    lab.role(side)
        .and_then(|r| r.peers.first().and_then(|p| p.last_heard_ms_ago))
}

/// Watches the pair for `window`: `master` keeps the ENI (cloud and roles agree), its peer hears
/// it within the dead interval, the client is served by `master` through the EIP, and the
/// heartbeat path stays on eth0. Returns the first violation.
fn steady(lab: &Lab, master: Side, window: Duration) -> Result<(), String> {
    let start = Instant::now();
    let mut served = 0;
    let mut probes = 0;
    while start.elapsed() < window {
        let t = start.elapsed().as_secs_f64();
        if lab.holder() != Some(master) {
            return Err(format!("{t:.1}s: the cloud's holder changed"));
        }
        let roles = (lab.role_name(master), lab.role_name(master.peer()));
        if roles != ("master".into(), "backup".into()) {
            return Err(format!("{t:.1}s: roles changed to {roles:?}"));
        }
        match heard_ms_ago(lab, master.peer()) {
            Some(ms) if ms < 1000 => {}
            other => {
                return Err(format!(
                    "{t:.1}s: the backup last heard the master {other:?} ms ago"
                ))
            }
        }
        let dev = heartbeat_dev(master);
        if dev != "eth0" {
            return Err(format!("{t:.1}s: heartbeats leave via {dev}"));
        }
        probes += 1;
        if lab.serving(master) {
            served += 1;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // A probe can time out on a loaded machine; a service that is down fails them all.
    if served * 10 < probes * 9 {
        return Err(format!(
            "served {served} of {probes} probes through the EIP"
        ));
    }
    Ok(())
}

#[test]
fn lab_shared_subnet_the_new_master_keeps_its_heartbeats_on_the_primary_interface() {
    if let Err(e) = Lab::preflight() {
        eprintln!("SKIPPED: {e}");
        return;
    }
    let mut lab = Lab::up_with(
        Profile::from_env(),
        support::lab::agent_bin(),
        Layout::SharedSubnet,
    );
    let o = AgentOptions::default();
    lab.start_pair(&o);
    assert_eq!(heartbeat_dev(A), "eth0", "node-a, master with the ENI");

    // The failover of the issue: node-b takes over, node-a is backup and must keep hearing it.
    let out = lab.cli(A, &["yield", "--timeout", "15s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.wait_for("node-b serving", Duration::from_secs(15), |l| l.serving(B));
    lab.wait_for("node-a backup", Duration::from_secs(10), |l| {
        l.role_name(A) == "backup"
    });
    let dev = eni_dev(&lab, B);
    let main = sh(&["ip", "-n", B.ns(), "route", "show", "table", "main"]);
    assert!(
        !main.contains(&format!("dev {dev}")),
        "the main table is enipeer's to leave alone:\n{main}"
    );
    if let Err(e) = steady(&lab, B, Duration::from_secs(60)) {
        panic!(
            "{e}\n--- node-a ---\n{}\n--- node-b ---\n{}",
            support::lab::tail(&lab.logs(A), 30),
            support::lab::tail(&lab.logs(B), 30)
        );
    }

    // Negative control: the route the old address handling left in main (the kernel's prefix
    // route of an address added without IFA_F_NOPREFIXROUTE; tests/net_netlink.rs shows the old
    // handling produces exactly this) sends the heartbeats through the ENI, where the source
    // check drops them: node-a stops hearing node-b, so the check above can fail.
    let eni_ip = lab.layout.eni_ip().to_string();
    sh(&[
        "ip",
        "-n",
        B.ns(),
        "route",
        "add",
        "198.18.0.0/24",
        "dev",
        &dev,
        "proto",
        "kernel",
        "scope",
        "link",
        "src",
        &eni_ip,
    ]);
    assert_eq!(heartbeat_dev(B), dev);
    lab.wait_for(
        "node-a no longer hearing node-b",
        Duration::from_secs(5),
        |l| heard_ms_ago(l, A).is_none_or(|ms| ms > 1000),
    );
    assert!(steady(&lab, B, Duration::from_secs(2)).is_err());
}
