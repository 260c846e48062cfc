//! The config file exactly as written: one serde struct per table, every key optional and
//! unknown keys rejected. Defaults and range checks live in `validate`, not here, so that a
//! missing or out-of-range value becomes a problem naming its key instead of a serde error that
//! stops the whole parse.
//!
//! Integers are read as `i64` and durations as strings on purpose: `priority = 0` or
//! `interval = "2 fortnights"` must reach validation, which quotes the value and the expected range.

use serde::Deserialize;

/// The whole file. `parse` never deserializes this in one go (serde would stop at the first bad
/// table); it fills it section by section so every table gets its own error.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RawConfig {
    pub node: Option<RawNode>,
    pub peer: Option<Vec<RawPeer>>,
    pub group: Option<RawGroup>,
    pub heartbeat: Option<RawHeartbeat>,
    pub auth: Option<RawAuth>,
    pub aws: Option<RawAws>,
    pub network: Option<RawNetwork>,
    pub hooks: Option<RawHooks>,
    pub control: Option<RawControl>,
    pub metrics: Option<RawMetrics>,
    pub log: Option<RawLog>,
    pub stop: Option<RawStop>,
    pub testing: Option<RawTesting>,
    pub check: Option<Vec<RawCheck>>,
}

/// Top-level table names accepted in the file, in the order the example documents them.
pub const SECTIONS: &[&str] = &[
    "node",
    "peer",
    "group",
    "heartbeat",
    "auth",
    "aws",
    "network",
    "hooks",
    "control",
    "metrics",
    "log",
    "stop",
    "check",
    "testing",
];

/// Keys whose value is a duration string; a bare number there gets a hint about units.
pub const DURATION_KEYS: &[&str] = &[
    "group.preempt-delay",
    "group.hold-down",
    "group.hold-down-max",
    "heartbeat.interval",
    "heartbeat.dead-interval",
    "heartbeat.max-clock-skew",
    "aws.operation-timeout",
    "aws.force-detach-grace",
    "aws.verify-interval",
    "aws.poll-interval",
    "network.reconcile-interval",
    "network.link-timeout",
    "hooks.timeout",
    "stop.restart-grace",
    "stop.handover-timeout",
    "check.interval",
    "check.timeout",
];

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RawNode {
    pub name: Option<String>,
    pub priority: Option<i64>,
    pub instance_id: Option<String>,
    pub state_dir: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RawPeer {
    pub name: Option<String>,
    pub addresses: Option<Vec<String>>,
    pub instance_id: Option<String>,
}

/// `group.device-index`: one index, or the indexes to try in order.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawIndexes {
    One(i64),
    List(Vec<i64>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RawGroup {
    pub id: Option<i64>,
    pub eni: Option<String>,
    pub device_index: Option<RawIndexes>,
    pub preempt: Option<bool>,
    pub preempt_delay: Option<String>,
    pub hold_down: Option<String>,
    pub hold_down_max: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RawHeartbeat {
    pub bind: Option<String>,
    pub port: Option<i64>,
    pub interval: Option<String>,
    pub dead_interval: Option<String>,
    pub max_clock_skew: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RawAuth {
    pub key_file: Option<String>,
    pub previous_key_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RawAws {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub operation_timeout: Option<String>,
    pub force_detach_grace: Option<String>,
    pub verify_interval: Option<String>,
    pub poll_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RawNetwork {
    pub interface_name: Option<String>,
    pub route_table: Option<i64>,
    pub rule_priority: Option<i64>,
    pub rp_filter: Option<i64>,
    pub mtu: Option<i64>,
    pub repair: Option<bool>,
    pub reconcile_interval: Option<String>,
    pub link_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RawHooks {
    pub timeout: Option<String>,
    pub on_master: Option<Vec<Vec<String>>>,
    pub on_backup: Option<Vec<Vec<String>>>,
    pub on_fault: Option<Vec<Vec<String>>>,
    pub on_stop: Option<Vec<Vec<String>>>,
    pub on_event: Option<Vec<Vec<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RawControl {
    pub socket: Option<String>,
    pub group: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RawMetrics {
    pub listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RawLog {
    pub level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RawStop {
    pub mode: Option<String>,
    pub restart_grace: Option<String>,
    pub handover_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RawTesting {
    pub fake_cloud: Option<String>,
    pub fake_net: Option<bool>,
}

/// One `[[check]]` table. Which keys apply depends on `kind`; validation reports a key given for
/// a kind it does not apply to, rather than serde, so the message can say which kinds take it.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RawCheck {
    pub kind: Option<String>,
    pub name: Option<String>,
    pub host: Option<String>,
    pub port: Option<i64>,
    pub path: Option<String>,
    pub command: Option<Vec<String>>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub rise: Option<i64>,
    pub fall: Option<i64>,
    pub status: Option<RawStatus>,
    pub body_contains: Option<String>,
}

/// `status` as written: `"200-299"`, `"204"`, `[200, 299]` or `204`. Range checks are left to
/// validation, which quotes the value; only the shape is decided here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawStatus {
    Text(String),
    Pair(Vec<i64>),
    Code(i64),
}

impl<'de> Deserialize<'de> for RawStatus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawStatus;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a status range like \"200-399\", [200, 399] or 200")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawStatus, E> {
                Ok(RawStatus::Text(v.to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawStatus, E> {
                Ok(RawStatus::Code(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawStatus, E> {
                Ok(RawStatus::Code(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RawStatus, A::Error> {
                // Any length is taken: validation reports an array that is not a pair.
                let mut out = Vec::new();
                while let Some(v) = seq.next_element::<i64>()? {
                    out.push(v);
                }
                Ok(RawStatus::Pair(out))
            }
        }
        d.deserialize_any(Visitor)
    }
}
