//! The settings the core decides with, taken from the validated config by the daemon.

use std::time::Duration;

use crate::ids::{InstanceId, NodeName};

/// What the core needs from the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct CoreConfig {
    pub name: NodeName,
    pub priority: u8,
    pub instance_id: InstanceId,
    /// Peer names, and their instance ids where the config gives them.
    pub peers: Vec<(NodeName, Option<InstanceId>)>,
    pub heartbeat_interval: Duration,
    pub dead_interval: Duration,
    pub preempt: bool,
    pub preempt_delay: Duration,
    pub hold_down: Duration,
    pub hold_down_max: Duration,
    pub verify_interval: Duration,
    pub restart_grace: Duration,
    pub handover_timeout: Duration,
    /// Delay before retrying a failed cloud query or claim, and how long a fault lasts before
    /// the node starts over.
    pub retry_delay: Duration,
    /// Consecutive failed probes through the ENI's address that corroborate a silent holder's
    /// death; `None` without checks: takeover on silence alone (uncorroborated).
    pub corroborate_fall: Option<u32>,
    /// Maintenance mode as it was when the daemon last stopped (its reason), restored at start.
    pub maintenance: Option<String>,
}

impl CoreConfig {
    /// Short, test-friendly timings (a 10 s hold-down instead of the file default of 30 s).
    ///
    /// Panics on an invalid name or instance id: it is for tests and examples with literal
    /// values, never for input.
    pub fn example(name: &str, instance_id: &str, peers: &[(&str, Option<&str>)]) -> Self {
        let name_of = |n: &str| n.parse::<NodeName>().expect("example node name");
        let id_of = |i: &str| i.parse::<InstanceId>().expect("example instance id");
        CoreConfig {
            name: name_of(name),
            priority: 100,
            instance_id: id_of(instance_id),
            peers: peers
                .iter()
                .map(|(n, i)| (name_of(n), i.map(id_of)))
                .collect(),
            heartbeat_interval: Duration::from_millis(200),
            dead_interval: Duration::from_millis(1000),
            preempt: false,
            preempt_delay: Duration::from_secs(30),
            hold_down: Duration::from_secs(10),
            hold_down_max: Duration::from_secs(300),
            verify_interval: Duration::from_secs(5),
            restart_grace: Duration::from_secs(30),
            handover_timeout: Duration::from_secs(20),
            retry_delay: Duration::from_secs(1),
            corroborate_fall: None,
            maintenance: None,
        }
    }

    /// How long a node waits for heartbeats after (re)starting before it decides anything.
    pub(super) fn settle(&self) -> Duration {
        (self.heartbeat_interval * 3).min(self.dead_interval)
    }
}
