//! Fault injectors for the e2e scenarios of issue 11: stalls, a wrong key, lossy heartbeats, a
//! primary link down, the service stopped. Each one is bounded (it ends by itself or
//! [`Lab::reset`] undoes it) and touches only the lab's own namespaces.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::{ip, sh, Lab, Side, NS_RT};

/// The table the heartbeat injectors use: [`Lab::heal_partition`] (and so `reset`) removes it.
const PART_TABLE: &str = "enpl_part";

impl Lab {
    /// Stops the agent of `side` (SIGSTOP) for `pause`, `times` times, running `between`
    /// in between: a process starved or stopped by a debugger, not a dead one.
    pub fn stall_agent(&mut self, side: Side, pause: Duration, times: usize, between: Duration) {
        for i in 0..times {
            self.signal_agent(side, Signal::SIGSTOP);
            std::thread::sleep(pause);
            self.signal_agent(side, Signal::SIGCONT);
            if i + 1 < times {
                std::thread::sleep(between);
            }
        }
    }

    /// Drops `percent` % of the heartbeats (both directions) on the management bridge, at
    /// random, until [`Lab::heal_partition`].
    pub fn lossy_heartbeats(&self, percent: u32) {
        assert!(percent <= 100);
        let rules = format!(
            "table bridge {PART_TABLE} {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    udp dport 7460 numgen random mod 100 < {percent} drop\n  }}\n}}\n"
        );
        let f = self.dir.join("loss.nft");
        std::fs::write(&f, rules).expect("nft file");
        sh(&[
            "ip",
            "netns",
            "exec",
            NS_RT,
            "nft",
            "-f",
            f.to_str().expect("utf-8"),
        ]);
    }

    /// Writes the agent config of `side` with its own heartbeat key (64 hex digits) instead of
    /// the shared one: the setup mistake of a key that differs between the nodes.
    pub fn write_config_with_key(&self, side: Side, o: &super::AgentOptions, key_hex: &str) {
        let shared = self.dir.join("peer.key").display().to_string();
        let own = self.dir.join(format!("{}-other.key", side.name()));
        std::fs::write(&own, format!("{key_hex}\n")).expect("key");
        sh(&["chmod", "600", own.to_str().expect("utf-8")]);
        let text = super::agent_config(side, self.seeded.eni.as_str(), o, &self.dir);
        assert_eq!(text.matches(&shared).count(), 1, "one key-file in\n{text}");
        let text = text.replace(&shared, &own.display().to_string());
        std::fs::write(&self.node(side).config, text).expect("agent config");
    }

    /// Takes the instance's primary interface (eth0, in its own namespace) down or up; the
    /// ENI's interface is untouched. Down deletes the routes through it; up restores them.
    pub fn set_primary_link(&self, side: Side, up: bool) {
        if up {
            ip(side.ns(), &["link", "set", "eth0", "up"]);
            // The connected route comes back with the link; the default route does not.
            ip(
                side.ns(),
                &[
                    "route",
                    "replace",
                    "default",
                    "via",
                    "198.18.0.1",
                    "dev",
                    "eth0",
                ],
            );
        } else {
            ip(side.ns(), &["link", "set", "eth0", "down"]);
        }
    }

    /// Undoes [`Lab::set_primary_link`] on both nodes (for `reset`, after a test that panicked
    /// with a link down).
    pub(super) fn restore_primary_links(&self) {
        for side in Side::BOTH {
            let state = ip(side.ns(), &["-o", "link", "show", "eth0"]);
            if !state.contains("state UP") && !state.contains(",UP") {
                self.set_primary_link(side, true);
            }
        }
    }

    /// Stops nginx on `side` (SIGTERM: a fast shutdown, workers included) and waits for it;
    /// the host and the agent stay up. `reset` starts it again.
    pub fn stop_nginx(&mut self, side: Side) {
        let Some(mut child) = self.node_mut(side).nginx.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts nginx on `side` again after [`Lab::stop_nginx`].
    pub fn restart_nginx(&mut self, side: Side) {
        if self.node(side).nginx.is_none() {
            self.start_nginx(side);
        }
    }

    /// Whether nginx on `side` is still listening: a stopped nginx's workers must be gone too.
    pub fn nginx_listening(&self, side: Side) -> bool {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", side.ns(), "ss", "-Hltn", "sport", "= :80"])
            .output();
        out.map(|o| !o.stdout.is_empty()).unwrap_or(false)
    }
}
