//! What a reload (SIGHUP) may change in a running daemon. Timings, priorities, preempt, the
//! hold-down, stop behaviour, hooks, the log level and the metrics endpoint change live; what identifies the node, the group, the ENI
//! or the sockets, and what the host network and cloud client were built from, does not: a
//! reload that changes those is refused whole, naming each key, so the daemon never runs on a
//! mix of two files. Key files are re-read on every reload (that is how keys are rotated).

use std::fmt::Debug;

use super::{Problem, Settings};

/// The new settings if everything that differs from `old` can change live; otherwise each key
/// that cannot, with what to do.
// Over 80 lines on purpose: two flat tables (keys fixed while running, keys that change live),
// one line per key, so that a new key is added where its kind is plain to see.
pub fn live_changes(old: &Settings, new: &Settings) -> Result<Vec<&'static str>, Vec<Problem>> {
    let mut refused = Vec::new();
    let mut fixed = |key: &'static str, a: &dyn Debug, b: &dyn Debug| {
        let (a, b) = (format!("{a:?}"), format!("{b:?}"));
        if a != b {
            refused.push(Problem {
                key: key.into(),
                line: None,
                message: format!(
                    "cannot change while the daemon runs (from {a} to {b}): keep the old \
                     value to reload the rest, or restart the daemon to apply it"
                ),
            });
        }
    };
    fixed("node.name", &old.node.name, &new.node.name);
    fixed(
        "node.instance-id",
        &old.node.instance_id,
        &new.node.instance_id,
    );
    fixed("node.state-dir", &old.node.state_dir, &new.node.state_dir);
    fixed("peer", &old.peers, &new.peers);
    fixed("group.id", &old.group.id, &new.group.id);
    fixed("group.eni", &old.group.eni, &new.group.eni);
    fixed(
        "group.device-index",
        &old.group.device_indexes,
        &new.group.device_indexes,
    );
    fixed("heartbeat.bind", &old.heartbeat.bind, &new.heartbeat.bind);
    fixed(
        "heartbeat.max-clock-skew",
        &old.heartbeat.max_clock_skew,
        &new.heartbeat.max_clock_skew,
    );
    fixed("aws.region", &old.aws.region, &new.aws.region);
    fixed(
        "aws.endpoint-url",
        &old.aws.endpoint_url,
        &new.aws.endpoint_url,
    );
    fixed(
        "aws.operation-timeout",
        &old.aws.operation_timeout,
        &new.aws.operation_timeout,
    );
    fixed("network", &old.network, &new.network);
    fixed("control", &old.control, &new.control);
    fixed("check", &old.checks, &new.checks);
    fixed("testing", &old.testing, &new.testing);
    if !refused.is_empty() {
        return Err(refused);
    }
    let mut changed = Vec::new();
    let mut live = |key: &'static str, a: &dyn Debug, b: &dyn Debug| {
        if format!("{a:?}") != format!("{b:?}") {
            changed.push(key);
        }
    };
    live("node.priority", &old.node.priority, &new.node.priority);
    live(
        "heartbeat.interval",
        &old.heartbeat.interval,
        &new.heartbeat.interval,
    );
    live(
        "heartbeat.dead-interval",
        &old.heartbeat.dead_interval,
        &new.heartbeat.dead_interval,
    );
    live("group.preempt", &old.group.preempt, &new.group.preempt);
    live(
        "group.preempt-delay",
        &old.group.preempt_delay,
        &new.group.preempt_delay,
    );
    live(
        "group.hold-down",
        &old.group.hold_down,
        &new.group.hold_down,
    );
    live(
        "group.hold-down-max",
        &old.group.hold_down_max,
        &new.group.hold_down_max,
    );
    live(
        "aws.verify-interval",
        &old.aws.verify_interval,
        &new.aws.verify_interval,
    );
    live("hooks", &old.hooks, &new.hooks);
    live("stop", &old.stop, &new.stop);
    live("log.level", &old.log.level, &new.log.level);
    live("metrics.listen", &old.metrics.listen, &new.metrics.listen);
    live("auth", &old.auth, &new.auth);
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn settings(extra: &str) -> Settings {
        let text = format!(
            r#"
[node]
name = "a"
priority = 100
[[peer]]
name = "b"
addresses = ["198.18.0.12"]
[group]
id = 1
eni = "eni-0123456789abcdef0"
[heartbeat]
bind = "198.18.0.11:7460"
{extra}
"#
        );
        super::super::parse(&text, Path::new("test.toml")).expect("valid")
    }

    #[test]
    fn timings_priority_and_hooks_change_live() {
        let old = settings("");
        let mut new = old.clone();
        new.node.priority = 200;
        new.heartbeat.interval = std::time::Duration::from_millis(100);
        new.hooks.on_master = vec![vec!["/bin/true".into()]];
        let changed = live_changes(&old, &new).expect("live");
        assert_eq!(changed, ["node.priority", "heartbeat.interval", "hooks"]);
        assert_eq!(live_changes(&old, &old).expect("same"), Vec::<&str>::new());
    }

    #[test]
    fn what_identifies_the_node_or_the_eni_is_refused_naming_each_key() {
        let old = settings("");
        let mut new = old.clone();
        new.group.eni = "eni-0fedcba9876543210".parse().expect("id");
        new.heartbeat.bind = "198.18.0.11:7461".parse().expect("addr");
        new.node.priority = 1;
        let refused = live_changes(&old, &new).expect_err("refused");
        let keys: Vec<&str> = refused.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["group.eni", "heartbeat.bind"]);
        assert!(refused[0].message.contains("restart the daemon"));
    }
}
