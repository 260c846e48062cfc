//! Fault injectors for the e2e scenarios of issue 11: stalls, a wrong key, lossy heartbeats, a
//! primary link down, the service stopped. Each one is bounded (it ends by itself or
//! [`Lab::reset`] undoes it) and touches only the lab's own namespaces.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::{ip, sh, Lab, Side};

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
        super::load_nft(&self.dir, "loss.nft", &rules);
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

    /// How long after the cloud says `attached` the guest sees the device, from now on (the
    /// profile's, or `ENIPEER_LAB_DELAYS`', until changed).
    pub fn set_hotplug_delay(&self, delay: Duration) {
        *self.hotplug.delay.lock().unwrap_or_else(|e| e.into_inner()) = delay;
    }

    /// Replaces the lab's nginx on `side` (the wildcard `listen 80`) with one bound to the ENI's
    /// primary address only (`listen <eni-ip>:80`), as a service that must restart after a
    /// failover is configured. It is not started here: it cannot bind while the address is
    /// absent. Returns the on-master hook that restarts it with nginx's own commands (there is
    /// no systemd in the lab): stop the running one and wait for its pid file to go (a zombie
    /// waiting for PID 1 to reap it counts as gone), then start it; nginx daemonizes, so the
    /// hook ends, with nginx's exit status, once the new one has bound or failed to.
    pub fn bound_nginx(&mut self, side: Side) -> Vec<String> {
        self.stop_nginx(side);
        let name = side.name();
        let dir = self.dir.display().to_string();
        let conf = self.dir.join(format!("nginx-bound-{name}.conf"));
        let pid = format!("{dir}/nginx-bound-{name}.pid");
        let text = format!(
            "daemon on;\nmaster_process on;\nworker_processes 1;\npid {pid};\n\
             error_log {dir}/nginx-bound-{name}.err warn;\nevents {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  server {{\n    listen {ip}:80;\n    default_type text/plain;\n\
             \x20   location / {{ return 200 \"{name}\\n\"; }}\n  }}\n}}\n",
            ip = self.layout.eni_ip(),
        );
        std::fs::write(&conf, text).expect("nginx conf");
        let conf = conf.display().to_string();
        let script = format!(
            "if [ -s {pid} ]; then /usr/sbin/nginx -c {conf} -s stop; i=0; \
             while [ -e {pid} ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; fi; \
             exec /usr/sbin/nginx -c {conf}"
        );
        vec!["/bin/sh".into(), "-c".into(), script]
    }

    /// What nginx bound by [`Lab::bound_nginx`] on `side` logged (its startup errors).
    pub fn bound_nginx_errors(&self, side: Side) -> String {
        let f = self.dir.join(format!("nginx-bound-{}.err", side.name()));
        std::fs::read_to_string(f).unwrap_or_default()
    }

    /// Writes the agent config of `side` with `on_master` as its only on-master hook.
    pub fn write_config_with_hook(
        &self,
        side: Side,
        o: &super::AgentOptions,
        on_master: &[String],
    ) {
        let mut c = super::agent_config_table(side, self.seeded.eni.as_str(), o, &self.dir);
        c.set("hooks", "on-master", vec![on_master.to_vec()]);
        std::fs::write(&self.node(side).config, c.render()).expect("agent config");
    }
}
