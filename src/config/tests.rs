//! Unit tests of parsing and validation: the example file, defaults, every rule, line numbers.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::*;

const EXAMPLE: &str = include_str!("../../conf/enipeer.toml");

/// A minimal valid config, one `(header, lines)` per table, edited per test case.
pub(super) struct Cfg(Vec<(String, Vec<(String, String)>)>);

impl Cfg {
    pub(super) fn minimal() -> Self {
        let t = |h: &str, kv: &[(&str, &str)]| {
            (
                h.to_owned(),
                kv.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            )
        };
        Cfg(vec![
            t("[node]", &[("name", "\"node-a\"")]),
            t(
                "[[peer]]",
                &[("name", "\"node-b\""), ("addresses", "[\"198.18.0.11\"]")],
            ),
            t(
                "[group]",
                &[("id", "7"), ("eni", "\"eni-0123456789abcdef0\"")],
            ),
            t("[heartbeat]", &[("bind", "\"198.18.0.10\"")]),
        ])
    }

    /// Sets `key = value` in `header`, adding the table when it is not there yet.
    pub(super) fn set(mut self, header: &str, key: &str, value: &str) -> Self {
        let idx = match self.0.iter().position(|(h, _)| h == header) {
            Some(i) => i,
            None => {
                self.0.push((header.to_owned(), Vec::new()));
                self.0.len() - 1
            }
        };
        let table = &mut self.0[idx].1;
        match table.iter_mut().find(|(k, _)| k == key) {
            Some(kv) => kv.1 = value.to_owned(),
            None => table.push((key.to_owned(), value.to_owned())),
        }
        self
    }

    pub(super) fn without_table(mut self, header: &str) -> Self {
        self.0.retain(|(h, _)| h != header);
        self
    }

    pub(super) fn without_key(mut self, header: &str, key: &str) -> Self {
        for (h, kv) in &mut self.0 {
            if h == header {
                kv.retain(|(k, _)| k != key);
            }
        }
        self
    }

    pub(super) fn text(&self) -> String {
        let mut s = String::new();
        for (h, kv) in &self.0 {
            s.push_str(h);
            s.push('\n');
            for (k, v) in kv {
                s.push_str(&format!("{k} = {v}\n"));
            }
            s.push('\n');
        }
        s
    }

    pub(super) fn parse(&self) -> Result<Settings, ConfigError> {
        parse(&self.text(), Path::new("test.toml"))
    }
}

fn problems(text: &str) -> Vec<Problem> {
    match parse(text, Path::new("test.toml")) {
        Ok(s) => panic!("expected problems, got {s:#?}\nfrom:\n{text}"),
        Err(e) => e.problems,
    }
}

fn keys(text: &str) -> Vec<String> {
    problems(text).into_iter().map(|p| p.key).collect()
}

#[test]
fn example_config_parses() {
    let s = parse(EXAMPLE, Path::new("conf/enipeer.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.node.name, "node-a");
    assert_eq!(s.node.priority, 150);
    assert_eq!(s.peers.len(), 1);
    assert_eq!(s.peers[0].name, "node-b");
    assert_eq!(
        s.peers[0].addresses,
        vec!["198.18.0.11:7460".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(s.group.eni.as_str(), "eni-0123456789abcdef0");
    assert_eq!(
        s.heartbeat.bind,
        "198.18.0.10:7460".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(s.auth.key_file, Path::new("/etc/enipeer/peer.key"));
    assert_eq!(
        s.hooks.on_master,
        vec![vec![
            "/usr/sbin/nginx".to_owned(),
            "-s".to_owned(),
            "reload".to_owned()
        ]]
    );
    assert_eq!(s.testing, None);
    // The shipped check: nginx on the ENI's address, port 80, every default.
    assert_eq!(
        s.checks,
        vec![CheckSettings {
            name: "http-80".to_owned(),
            probe: ProbeSpec::Http(HttpProbe {
                host: CheckHost::EniAddress,
                port: 80,
                path: "/".to_owned(),
                status: StatusRange { lo: 200, hi: 399 },
                body_contains: None,
            }),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise: 2,
            fall: 2,
        }]
    );
}

// That the example shows every key (and no other) is tested with the key reference, in
// `keys/tests.rs`.

#[test]
fn defaults_are_applied() {
    let s = Cfg::minimal().parse().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.node.priority, 100);
    assert_eq!(s.node.instance_id, None);
    assert_eq!(s.peers[0].addresses[0].port(), 7460);
    assert_eq!(s.group.id, 7);
    assert_eq!(s.group.device_index, 1);
    assert!(!s.group.preempt);
    assert_eq!(s.group.preempt_delay, Duration::from_secs(30));
    assert_eq!(s.group.hold_down, Duration::from_secs(30));
    assert_eq!(s.group.hold_down_max, Duration::from_secs(600));
    assert_eq!(s.heartbeat.port, 7460);
    assert_eq!(s.heartbeat.bind.port(), 7460);
    assert_eq!(s.heartbeat.interval, Duration::from_millis(200));
    assert_eq!(s.heartbeat.dead_interval, Duration::from_secs(1));
    assert_eq!(s.heartbeat.max_clock_skew, Duration::from_secs(30));
    assert_eq!(s.auth.key_file, Path::new("/etc/enipeer/peer.key"));
    assert_eq!(s.aws.region, None);
    assert_eq!(s.aws.endpoint_url, None);
    assert_eq!(s.aws.operation_timeout, Duration::from_secs(10));
    assert_eq!(s.aws.force_detach_grace, Duration::from_secs(2));
    assert_eq!(s.aws.verify_interval, Duration::from_secs(5));
    assert_eq!(s.aws.poll_interval, Duration::from_millis(100));
    assert_eq!(s.network.interface_name, None);
    assert_eq!(s.network.route_table, 10_001);
    assert_eq!(s.network.rule_priority, 1000);
    assert_eq!(s.network.rp_filter, Some(2));
    assert_eq!(s.network.mtu, None);
    assert!(s.network.repair);
    assert_eq!(s.network.reconcile_interval, Duration::from_secs(30));
    assert_eq!(s.network.link_timeout, Duration::from_secs(15));
    assert_eq!(s.hooks.timeout, Duration::from_secs(30));
    assert!(s.hooks.on_master.is_empty() && s.hooks.on_stop.is_empty());
    assert_eq!(s.control.socket, Path::new("/run/enipeer/control.sock"));
    assert_eq!(s.control.group, None);
    assert_eq!(s.metrics.listen, None, "metrics are off by default");
    assert_eq!(s.stop.mode, StopMode::Auto);
    assert_eq!(s.stop.restart_grace, Duration::from_secs(30));
    assert_eq!(s.stop.handover_timeout, Duration::from_secs(20));
    assert_eq!(s.testing, None);
    assert!(s.checks.is_empty());
}

#[test]
fn metrics_listen_takes_v4_and_v6_addresses() {
    for text in ["127.0.0.1:9460", "[::1]:9460"] {
        let s = Cfg::minimal()
            .set("[metrics]", "listen", &format!("{text:?}"))
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.metrics.listen, Some(text.parse().unwrap()));
    }
}

#[test]
fn device_index_is_an_integer_then_the_next_two_or_a_list() {
    let parse = |v: &str| {
        Cfg::minimal()
            .set("[group]", "device-index", v)
            .parse()
            .unwrap_or_else(|e| panic!("{e}"))
            .group
    };
    let g = Cfg::minimal()
        .without_key("[group]", "device-index")
        .parse()
        .unwrap_or_else(|e| panic!("{e}"))
        .group;
    assert_eq!((g.device_index, g.device_indexes), (1, vec![1, 2, 3]));
    let g = parse("2");
    assert_eq!((g.device_index, g.device_indexes), (2, vec![2, 3, 4]));
    assert_eq!(parse("30").device_indexes, [30, 31]);
    let g = parse("[4, 1]");
    assert_eq!((g.device_index, g.device_indexes), (4, vec![4, 1]));
    let s = Cfg::minimal()
        .set("[group]", "device-index", "[3, 1]")
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        s.network.route_table, 10_003,
        "the first index names the table"
    );
}

#[test]
fn device_index_lists_are_checked_naming_the_entry() {
    let at = |v: &str| keys(&Cfg::minimal().set("[group]", "device-index", v).text());
    assert_eq!(at("[1, 0]"), ["group.device-index[1]"]);
    assert_eq!(at("[1, 2, 1]"), ["group.device-index[2]"]);
    assert_eq!(at("[]"), ["group.device-index"]);
    let bad = keys(
        &Cfg::minimal()
            .set("[group]", "device-index", "\"one\"")
            .text(),
    );
    assert!(
        bad.iter().any(|k| k.contains("device-index")),
        "a wrong type names the key: {bad:?}"
    );
}

#[test]
fn route_table_default_follows_device_index() {
    let s = Cfg::minimal()
        .set("[group]", "device-index", "3")
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.network.route_table, 10_003);
}

#[test]
fn port_in_bind_becomes_the_default_peer_port() {
    let s = Cfg::minimal()
        .set("[heartbeat]", "bind", "\"198.18.0.10:7500\"")
        .set(
            "[[peer]]",
            "addresses",
            "[\"198.18.0.11\", \"198.18.1.11:7600\"]",
        )
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.heartbeat.port, 7500);
    assert_eq!(s.heartbeat.bind.port(), 7500);
    assert_eq!(s.peers[0].addresses[0].port(), 7500);
    assert_eq!(s.peers[0].addresses[1].port(), 7600);

    let s = Cfg::minimal()
        .set("[heartbeat]", "port", "7501")
        .set("[[peer]]", "addresses", "[\"::1\"]")
        .set("[heartbeat]", "bind", "\"::1\"")
        .parse();
    // Same address and port as bind: rejected even in IPv6 form.
    assert!(s.is_err());

    let s = Cfg::minimal()
        .set("[heartbeat]", "port", "7501")
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.heartbeat.bind.port(), 7501);
    assert_eq!(s.peers[0].addresses[0].port(), 7501);
}

#[test]
fn testing_table_is_accepted_with_an_instance_id() {
    let s = Cfg::minimal()
        .set("[node]", "instance-id", "\"i-0123456789abcdef0\"")
        .set("[testing]", "fake-cloud", "\"/tmp/cloud.json\"")
        .set("[testing]", "fake-net", "true")
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        s.testing,
        Some(TestingSettings {
            fake_cloud: "/tmp/cloud.json".into(),
            fake_net: true
        })
    );
}

#[test]
fn each_rule_names_its_key() {
    let long_name = format!("\"{}\"", "a".repeat(33));
    let cases: Vec<(Cfg, &str)> = vec![
        (Cfg::minimal().set("[node]", "name", "\"\""), "node.name"),
        (
            Cfg::minimal().set("[node]", "name", "\"node a\""),
            "node.name",
        ),
        (
            Cfg::minimal().set("[node]", "name", &long_name),
            "node.name",
        ),
        (Cfg::minimal().without_key("[node]", "name"), "node.name"),
        (
            Cfg::minimal().set("[node]", "priority", "0"),
            "node.priority",
        ),
        (
            Cfg::minimal().set("[node]", "priority", "255"),
            "node.priority",
        ),
        (
            Cfg::minimal().set("[node]", "instance-id", "\"i-xyz\""),
            "node.instance-id",
        ),
        (
            Cfg::minimal().set("[[peer]]", "name", "\"node-a\""),
            "peer[0].name",
        ),
        (
            Cfg::minimal().set("[[peer]]", "name", "\"b/c\""),
            "peer[0].name",
        ),
        (
            Cfg::minimal().set("[[peer]]", "addresses", "[]"),
            "peer[0].addresses",
        ),
        (
            Cfg::minimal().without_key("[[peer]]", "addresses"),
            "peer[0].addresses",
        ),
        (
            Cfg::minimal().set("[[peer]]", "addresses", "[\"198.18.0.11\", \"nope\"]"),
            "peer[0].addresses[1]",
        ),
        (
            Cfg::minimal().set("[[peer]]", "addresses", "[\"198.18.0.10\"]"),
            "peer[0].addresses[0]",
        ),
        (
            Cfg::minimal().set("[[peer]]", "addresses", "[\"0.0.0.0\"]"),
            "peer[0].addresses[0]",
        ),
        (
            Cfg::minimal().set("[[peer]]", "addresses", "[\"[::1]:7460\"]"),
            "peer[0].addresses[0]",
        ),
        (
            Cfg::minimal().set("[[peer]]", "addresses", "[\"198.18.0.11:0\"]"),
            "peer[0].addresses[0]",
        ),
        (
            Cfg::minimal().set(
                "[[peer]]",
                "addresses",
                "[\"198.18.0.11\", \"198.18.0.11:7460\"]",
            ),
            "peer[0].addresses[1]",
        ),
        (
            Cfg::minimal().set("[[peer]]", "instance-id", "\"eni-0123456789abcdef0\""),
            "peer[0].instance-id",
        ),
        (
            Cfg::minimal()
                .set("[node]", "instance-id", "\"i-0123456789abcdef0\"")
                .set("[[peer]]", "instance-id", "\"i-0123456789abcdef0\""),
            "peer[0].instance-id",
        ),
        (Cfg::minimal().set("[group]", "id", "-1"), "group.id"),
        (
            Cfg::minimal().set("[group]", "id", "4294967296"),
            "group.id",
        ),
        (Cfg::minimal().without_key("[group]", "id"), "group.id"),
        (Cfg::minimal().without_key("[group]", "eni"), "group.eni"),
        (
            Cfg::minimal().set("[group]", "eni", "\"eni-XYZ\""),
            "group.eni",
        ),
        (
            Cfg::minimal().set("[group]", "eni", "\"i-0123456789abcdef0\""),
            "group.eni",
        ),
        (
            Cfg::minimal().set("[group]", "device-index", "0"),
            "group.device-index",
        ),
        (
            Cfg::minimal().set("[group]", "device-index", "32"),
            "group.device-index",
        ),
        (
            Cfg::minimal().set("[group]", "preempt-delay", "\"soon\""),
            "group.preempt-delay",
        ),
        (
            Cfg::minimal().set("[group]", "hold-down", "\"0s\""),
            "group.hold-down",
        ),
        (
            Cfg::minimal().set("[group]", "hold-down", "\"10m\"").set(
                "[group]",
                "hold-down-max",
                "\"5m\"",
            ),
            "group.hold-down",
        ),
        (
            Cfg::minimal().without_key("[heartbeat]", "bind"),
            "heartbeat.bind",
        ),
        (
            Cfg::minimal().set("[heartbeat]", "bind", "\"localhost\""),
            "heartbeat.bind",
        ),
        (
            Cfg::minimal().set("[heartbeat]", "bind", "\"198.18.0.10:0\""),
            "heartbeat.bind",
        ),
        (
            Cfg::minimal().set("[heartbeat]", "port", "0"),
            "heartbeat.port",
        ),
        (
            Cfg::minimal().set("[heartbeat]", "port", "65536"),
            "heartbeat.port",
        ),
        (
            Cfg::minimal()
                .set("[heartbeat]", "bind", "\"198.18.0.10:7500\"")
                .set("[heartbeat]", "port", "7460"),
            "heartbeat.port",
        ),
        (
            Cfg::minimal().set("[heartbeat]", "interval", "\"10ms\""),
            "heartbeat.interval",
        ),
        (
            Cfg::minimal().set("[heartbeat]", "interval", "\"fast\""),
            "heartbeat.interval",
        ),
        (
            Cfg::minimal().set("[heartbeat]", "dead-interval", "\"200ms\""),
            "heartbeat.dead-interval",
        ),
        (
            Cfg::minimal().set("[heartbeat]", "dead-interval", "\"400ms\""),
            "heartbeat.dead-interval",
        ),
        (
            Cfg::minimal().set("[heartbeat]", "max-clock-skew", "\"500ms\""),
            "heartbeat.max-clock-skew",
        ),
        (
            Cfg::minimal().set("[auth]", "key-file", "\"\""),
            "auth.key-file",
        ),
        (
            Cfg::minimal().set("[auth]", "previous-key-file", "\"\""),
            "auth.previous-key-file",
        ),
        (
            Cfg::minimal()
                .set("[auth]", "key-file", "\"/etc/enipeer/new.key\"")
                .set("[auth]", "previous-key-file", "\"/etc/enipeer/new.key\""),
            "auth.previous-key-file",
        ),
        (
            Cfg::minimal().set("[aws]", "region", "\"us-east\""),
            "aws.region",
        ),
        (
            Cfg::minimal().set("[aws]", "region", "\"US-EAST-1\""),
            "aws.region",
        ),
        (
            Cfg::minimal().set("[aws]", "region", "\"useast-1\""),
            "aws.region",
        ),
        (
            Cfg::minimal().set("[aws]", "endpoint-url", "\"ec2.example\""),
            "aws.endpoint-url",
        ),
        (
            Cfg::minimal().set("[aws]", "endpoint-url", "\"https://\""),
            "aws.endpoint-url",
        ),
        (
            Cfg::minimal().set("[aws]", "operation-timeout", "\"0s\""),
            "aws.operation-timeout",
        ),
        (
            Cfg::minimal().set("[aws]", "force-detach-grace", "\"20s\""),
            "aws.force-detach-grace",
        ),
        (
            Cfg::minimal().set("[aws]", "verify-interval", "\"0ms\""),
            "aws.verify-interval",
        ),
        (
            Cfg::minimal().set("[aws]", "poll-interval", "\"5ms\""),
            "aws.poll-interval",
        ),
        (
            Cfg::minimal().set("[aws]", "poll-interval", "\"6s\""),
            "aws.poll-interval",
        ),
        (
            Cfg::minimal().set("[aws]", "poll-interval", "100"),
            "aws.poll-interval",
        ),
        (
            Cfg::minimal().set("[network]", "route-table", "0"),
            "network.route-table",
        ),
        (
            Cfg::minimal().set("[network]", "route-table", "253"),
            "network.route-table",
        ),
        (
            Cfg::minimal().set("[network]", "route-table", "254"),
            "network.route-table",
        ),
        (
            Cfg::minimal().set("[network]", "route-table", "255"),
            "network.route-table",
        ),
        (
            Cfg::minimal().set("[network]", "route-table", "-5"),
            "network.route-table",
        ),
        (
            Cfg::minimal().set("[network]", "rule-priority", "0"),
            "network.rule-priority",
        ),
        (
            Cfg::minimal().set("[network]", "rule-priority", "32766"),
            "network.rule-priority",
        ),
        (
            Cfg::minimal().set("[network]", "rp-filter", "3"),
            "network.rp-filter",
        ),
        (
            Cfg::minimal().set("[network]", "rp-filter", "-1"),
            "network.rp-filter",
        ),
        (Cfg::minimal().set("[network]", "mtu", "575"), "network.mtu"),
        (
            Cfg::minimal().set("[network]", "mtu", "9002"),
            "network.mtu",
        ),
        (
            Cfg::minimal().set("[network]", "interface-name", "\"\""),
            "network.interface-name",
        ),
        (
            Cfg::minimal().set("[network]", "interface-name", "\"sixteen-chars-xx\""),
            "network.interface-name",
        ),
        (
            Cfg::minimal().set("[network]", "interface-name", "\"a/b\""),
            "network.interface-name",
        ),
        (
            Cfg::minimal().set("[network]", "interface-name", "\"a b\""),
            "network.interface-name",
        ),
        (
            Cfg::minimal().set("[network]", "interface-name", "\".\""),
            "network.interface-name",
        ),
        (
            Cfg::minimal().set("[network]", "interface-name", "\"..\""),
            "network.interface-name",
        ),
        (
            Cfg::minimal().set("[network]", "reconcile-interval", "\"0s\""),
            "network.reconcile-interval",
        ),
        (
            Cfg::minimal().set("[network]", "link-timeout", "\"0s\""),
            "network.link-timeout",
        ),
        (
            Cfg::minimal().set("[hooks]", "timeout", "\"0s\""),
            "hooks.timeout",
        ),
        (
            Cfg::minimal().set("[hooks]", "on-master", "[[]]"),
            "hooks.on-master[0]",
        ),
        (
            Cfg::minimal().set("[hooks]", "on-backup", "[[\"/bin/true\"], [\"\", \"x\"]]"),
            "hooks.on-backup[1][0]",
        ),
        (
            Cfg::minimal().set("[hooks]", "on-fault", "[[]]"),
            "hooks.on-fault[0]",
        ),
        (
            Cfg::minimal().set("[hooks]", "on-stop", "[[\" \"]]"),
            "hooks.on-stop[0][0]",
        ),
        (
            Cfg::minimal().set("[control]", "socket", "\"run/x.sock\""),
            "control.socket",
        ),
        (
            Cfg::minimal().set("[control]", "group", "\"\""),
            "control.group",
        ),
        (
            Cfg::minimal().set("[metrics]", "listen", "\"localhost:9460\""),
            "metrics.listen",
        ),
        (
            Cfg::minimal().set("[metrics]", "listen", "\"127.0.0.1:0\""),
            "metrics.listen",
        ),
        (
            Cfg::minimal().set("[metrics]", "port", "9460"),
            "metrics.port",
        ),
        (
            Cfg::minimal().set("[log]", "level", "\"info,enipeer=verbose\""),
            "log.level",
        ),
        (
            Cfg::minimal().set("[log]", "level", "\"warning\""),
            "log.level",
        ),
        (Cfg::minimal().set("[log]", "level", "\"\""), "log.level"),
        (
            Cfg::minimal().set("[stop]", "mode", "\"never\""),
            "stop.mode",
        ),
        (
            Cfg::minimal().set("[stop]", "restart-grace", "\"0s\""),
            "stop.restart-grace",
        ),
        (
            Cfg::minimal().set("[stop]", "handover-timeout", "\"0s\""),
            "stop.handover-timeout",
        ),
        (
            Cfg::minimal().set("[testing]", "fake-cloud", "\"/tmp/cloud.json\""),
            "node.instance-id",
        ),
        (
            Cfg::minimal().set("[testing]", "fake-net", "true"),
            "testing.fake-cloud",
        ),
        (Cfg::minimal().without_table("[node]"), "node"),
        (Cfg::minimal().without_table("[[peer]]"), "peer"),
        (Cfg::minimal().without_table("[group]"), "group"),
        (Cfg::minimal().without_table("[heartbeat]"), "heartbeat"),
        (
            Cfg::minimal().set("[node]", "colour", "\"blue\""),
            "node.colour",
        ),
        (Cfg::minimal().set("[[peer]]", "port", "1"), "peer[0].port"),
        (Cfg::minimal().set("[bogus]", "x", "1"), "bogus"),
        (
            Cfg::minimal().set("[node]", "priority", "\"high\""),
            "node.priority",
        ),
        (
            Cfg::minimal().set("[group]", "preempt", "\"yes\""),
            "group.preempt",
        ),
        (
            Cfg::minimal().set("[hooks]", "on-master", "[[\"a\", 1]]"),
            "hooks.on-master[0][1]",
        ),
    ];
    for (cfg, key) in cases {
        let text = cfg.text();
        let got = problems(&text);
        assert!(
            got.iter().any(|p| p.key == key),
            "expected a problem on {key}, got {got:#?}\nfrom:\n{text}"
        );
        for p in &got {
            assert!(!p.message.is_empty(), "{p:?}");
        }
    }
}

#[test]
fn peers_are_checked_against_each_other() {
    let text = Cfg::minimal().text()
        + "[[peer]]\nname = \"node-b\"\naddresses = [\"198.18.0.11\"]\n\n[[peer]]\nname = \"node-c\"\naddresses = [\"198.18.0.12\"]\n";
    let got = problems(&text);
    let keys: Vec<&str> = got.iter().map(|p| p.key.as_str()).collect();
    assert!(keys.contains(&"peer[1].name"), "{got:#?}");
    assert!(keys.contains(&"peer[1].addresses[0]"), "{got:#?}");
    assert!(!keys.iter().any(|k| k.starts_with("peer[2]")), "{got:#?}");
}

#[test]
fn peer_written_as_a_single_table_or_empty_array_is_explained() {
    let text = Cfg::minimal().text().replace("[[peer]]", "[peer]");
    let got = problems(&text);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0].key, "peer");
    assert!(got[0].message.contains("[[peer]]"), "{got:#?}");

    let text = Cfg::minimal()
        .without_table("[[peer]]")
        .text()
        .replace("[node]", "peer = []\n[node]");
    let got = problems(&text);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0].key, "peer");
    assert!(got[0].message.contains("at least one peer"), "{got:#?}");
}

#[test]
fn several_problems_are_reported_at_once() {
    let text = Cfg::minimal()
        .set("[node]", "priority", "0")
        .set("[node]", "colour", "\"blue\"")
        .set("[group]", "eni", "\"eni-nothex00\"")
        .set("[heartbeat]", "dead-interval", "\"300ms\"")
        .set("[network]", "route-table", "254")
        .set("[unknown]", "x", "1")
        .text();
    let keys = keys(&text);
    for key in [
        "node.priority",
        "node.colour",
        "group.eni",
        "heartbeat.dead-interval",
        "network.route-table",
        "unknown",
    ] {
        assert!(keys.iter().any(|k| k == key), "{key} not in {keys:?}");
    }
}

#[test]
fn every_bad_key_of_one_table_is_reported_and_its_good_keys_still_checked() {
    let text = Cfg::minimal()
        .set("[node]", "colour", "\"blue\"")
        .set("[node]", "size", "3")
        .set("[node]", "priority", "300")
        .text();
    let keys = keys(&text);
    assert_eq!(keys, vec!["node.colour", "node.size", "node.priority"]);
}

#[test]
fn a_key_of_the_wrong_type_is_reported_once() {
    // The bad key is removed to let the table deserialize; validation must not then also call
    // the required key missing.
    let text = Cfg::minimal().set("[group]", "eni", "5").text();
    let got = problems(&text);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0].key, "group.eni");
    assert!(got[0].message.contains("invalid type"), "{got:#?}");
}

#[test]
fn unknown_keys_and_tables_carry_their_line() {
    let text = "[node]\nname = \"node-a\"\ncolour = \"blue\"\n\n[[peer]]\nname = \"node-b\"\naddresses = [\"198.18.0.11\"]\n\n[[peer]]\nname = \"node-c\"\nadresses = [\"198.18.0.12\"]\n\n[group]\nid = 1\neni = \"eni-0123456789abcdef0\"\n\n[heartbeat]\nbind = \"198.18.0.10\"\n\n[extras]\nx = 1\n";
    let got = problems(text);
    let find = |key: &str| {
        got.iter()
            .find(|p| p.key == key)
            .unwrap_or_else(|| panic!("{key} not in {got:#?}"))
    };
    assert_eq!(find("node.colour").line, Some(3));
    assert!(find("node.colour").message.contains("unknown key `colour`"));
    assert_eq!(find("peer[1].adresses").line, Some(11));
    assert_eq!(find("extras").line, Some(20));
}

#[test]
fn validation_problems_carry_the_line_of_their_key() {
    let text = "[node]\nname = \"node-a\"\npriority = 0\n\n[[peer]]\nname = \"node-b\"\naddresses = [\n  \"198.18.0.11\",\n  \"198.18.0.10\",\n]\n\n[group]\nid = 1\n\n[heartbeat]\nbind = \"198.18.0.10\"\n";
    let got = problems(text);
    let line = |key: &str| {
        got.iter()
            .find(|p| p.key == key)
            .unwrap_or_else(|| panic!("{key} not in {got:#?}"))
            .line
    };
    assert_eq!(line("node.priority"), Some(3));
    assert_eq!(line("peer[0].addresses[1]"), Some(9));
    // A missing key points at its table.
    assert_eq!(line("group.eni"), Some(12));
}

#[test]
fn syntax_error_is_one_problem_with_its_line() {
    let text = "[node]\nname = \"node-a\"\n\n[group\nid = 1\n";
    let got = problems(text);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0].line, Some(4));
    assert!(got[0].message.contains("syntax"), "{got:#?}");
}

#[test]
fn display_prints_file_line_key_and_message() {
    let text = Cfg::minimal()
        .set("[heartbeat]", "dead-interval", "\"300ms\"")
        .text();
    let err = parse(&text, Path::new("/etc/enipeer/enipeer.toml")).unwrap_err();
    let shown = err.to_string();
    assert_eq!(shown.lines().count(), 1, "{shown}");
    assert!(
        shown.starts_with(
            "/etc/enipeer/enipeer.toml:14: heartbeat.dead-interval: \"300ms\" must be more than 2 x heartbeat.interval (200ms)"
        ),
        "{shown}"
    );
    assert_eq!(err.count(), 1);
}

#[test]
fn summary_names_the_essentials() {
    let s = parse(EXAMPLE, Path::new("x")).unwrap_or_else(|e| panic!("{e}"));
    let summary = s.summary();
    for needle in [
        "node-a",
        "node-b",
        "198.18.0.11:7460",
        "eni-0123456789abcdef0",
        "device index 1",
        "200ms",
        "on-master 1",
        "/run/enipeer/control.sock",
    ] {
        assert!(
            summary.contains(needle),
            "{needle} missing from:\n{summary}"
        );
    }
    assert!(summary.lines().count() <= 24);
}

#[test]
fn load_checks_the_key_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("peer.key");
    keyfile::write_new_key(&key, false).unwrap();
    let config = dir.path().join("enipeer.toml");
    std::fs::write(
        &config,
        EXAMPLE.replace("/etc/enipeer/peer.key", key.to_str().unwrap()),
    )
    .unwrap();
    load(&config).unwrap_or_else(|e| panic!("{e}"));

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = load(&config).unwrap_err();
    assert_eq!(err.problems.len(), 1, "{err}");
    assert_eq!(err.problems[0].key, "auth.key-file");
    assert!(err.problems[0].line.is_some());
    assert!(err.to_string().contains("chmod 600"), "{err}");

    let err = load(&dir.path().join("absent.toml")).unwrap_err();
    assert!(err.io.is_some());
    assert_eq!(err.count(), 1);
}

#[test]
fn load_checks_the_previous_key_file_like_the_key_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("peer.key");
    let old = dir.path().join("peer.key.old");
    keyfile::write_new_key(&key, false).unwrap();
    let config = dir.path().join("enipeer.toml");
    let body = EXAMPLE.replace("/etc/enipeer/peer.key", key.to_str().unwrap());
    let body = body.replace(
        "\nkey-file = ",
        &format!(
            "\nprevious-key-file = {:?}\nkey-file = ",
            old.to_str().unwrap()
        ),
    );
    std::fs::write(&config, body).unwrap();

    let err = load(&config).unwrap_err();
    assert_eq!(err.problems.len(), 1, "{err}");
    assert_eq!(err.problems[0].key, "auth.previous-key-file");
    assert!(err.problems[0].line.is_some());
    assert!(err.to_string().contains("does not exist"), "{err}");

    keyfile::write_new_key(&old, false).unwrap();
    let s = load(&config).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.auth.previous_key_file.as_deref(), Some(old.as_path()));
    assert!(s.summary().contains("also accepting"), "{}", s.summary());
    let keys = keyfile::read_keys(&s.auth).unwrap();
    assert!(keys.has_previous());

    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = load(&config).unwrap_err();
    assert_eq!(err.problems.len(), 1, "{err}");
    assert_eq!(err.problems[0].key, "auth.previous-key-file");
    assert!(err.to_string().contains("chmod 600"), "{err}");

    // The same key under two names: the rotation was never started.
    std::fs::copy(&key, &old).unwrap();
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = load(&config).unwrap_err();
    assert_eq!(err.problems.len(), 1, "{err}");
    assert!(err.to_string().contains("same key"), "{err}");
}

#[test]
fn empty_file_lists_the_required_tables_in_file_order() {
    assert_eq!(keys(""), vec!["node", "peer", "group", "heartbeat"]);
}

#[test]
fn a_bare_number_for_a_duration_gets_a_unit_hint() {
    let got = problems(&Cfg::minimal().set("[heartbeat]", "interval", "200").text());
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0].key, "heartbeat.interval");
    assert!(got[0].message.contains("\"200ms\""), "{got:#?}");
}

fn check_cfg(kind: &str) -> Cfg {
    Cfg::minimal().set("[[check]]", "kind", &format!("\"{kind}\""))
}

fn only_check(cfg: Cfg) -> CheckSettings {
    let s = cfg.parse().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.checks.len(), 1);
    s.checks.into_iter().next().unwrap()
}

#[test]
fn check_defaults_follow_the_kind() {
    let http = only_check(check_cfg("http"));
    assert_eq!(http.name, "http-80");
    assert_eq!(
        http.probe,
        ProbeSpec::Http(HttpProbe {
            host: CheckHost::EniAddress,
            port: 80,
            path: "/".to_owned(),
            status: StatusRange::DEFAULT,
            body_contains: None,
        })
    );
    assert_eq!(
        (http.interval, http.timeout, http.rise, http.fall),
        (Duration::from_secs(1), Duration::from_millis(500), 2, 2)
    );

    let tcp = only_check(check_cfg("tcp").set("[[check]]", "port", "5432").set(
        "[[check]]",
        "host",
        "\"127.0.0.1\"",
    ));
    assert_eq!(tcp.name, "tcp-5432");
    assert_eq!(
        tcp.probe,
        ProbeSpec::Tcp(TcpProbe {
            host: CheckHost::Ip("127.0.0.1".parse().unwrap()),
            port: 5432
        })
    );

    let exec = only_check(check_cfg("exec").set(
        "[[check]]",
        "command",
        "[\"/usr/bin/pg_isready\", \"-q\"]",
    ));
    assert_eq!(exec.name, "exec-pg_isready");
    assert_eq!(
        exec.probe,
        ProbeSpec::Exec(ExecProbe {
            command: vec!["/usr/bin/pg_isready".to_owned(), "-q".to_owned()]
        })
    );
}

#[test]
fn check_values_are_taken_as_written() {
    let c = only_check(
        check_cfg("http")
            .set("[[check]]", "name", "\"nginx\"")
            .set("[[check]]", "port", "8080")
            .set("[[check]]", "path", "\"/healthz?full=1\"")
            .set("[[check]]", "body-contains", "\"ok\"")
            .set("[[check]]", "interval", "\"2s\"")
            .set("[[check]]", "timeout", "\"1s\"")
            .set("[[check]]", "rise", "3")
            .set("[[check]]", "fall", "1"),
    );
    assert_eq!(c.name, "nginx");
    let ProbeSpec::Http(h) = &c.probe else {
        panic!("{c:?}")
    };
    assert_eq!((h.port, h.path.as_str()), (8080, "/healthz?full=1"));
    assert_eq!(h.body_contains.as_deref(), Some("ok"));
    assert_eq!(
        (c.interval, c.timeout, c.rise, c.fall),
        (Duration::from_secs(2), Duration::from_secs(1), 3, 1)
    );
}

#[test]
fn check_status_has_three_spellings() {
    for (written, lo, hi) in [
        ("\"200-299\"", 200, 299),
        ("\"204\"", 204, 204),
        ("[200, 204]", 200, 204),
        ("301", 301, 301),
    ] {
        let c = only_check(check_cfg("http").set("[[check]]", "status", written));
        let ProbeSpec::Http(h) = c.probe else {
            panic!()
        };
        assert_eq!(h.status, StatusRange { lo, hi }, "{written}");
    }
}

#[test]
fn a_short_interval_shortens_the_default_timeout() {
    let c = only_check(check_cfg("tcp").set("[[check]]", "port", "22").set(
        "[[check]]",
        "interval",
        "\"300ms\"",
    ));
    assert_eq!(c.timeout, Duration::from_millis(150));
}

#[test]
fn each_check_rule_names_its_key() {
    let cases: Vec<(Cfg, &str, &str)> = vec![
        (
            Cfg::minimal().set("[[check]]", "port", "80"),
            "check[0].kind",
            "missing",
        ),
        (
            check_cfg("icmp"),
            "check[0].kind",
            "\"icmp\" is not a check kind",
        ),
        (check_cfg("tcp"), "check[0].port", "missing"),
        (check_cfg("exec"), "check[0].command", "missing"),
        (
            check_cfg("exec").set("[[check]]", "command", "[]"),
            "check[0].command",
            "empty command",
        ),
        (
            check_cfg("exec").set("[[check]]", "command", "[\"\"]"),
            "check[0].command[0]",
            "must not be empty",
        ),
        (
            check_cfg("http").set("[[check]]", "port", "0"),
            "check[0].port",
            "out of range",
        ),
        (
            check_cfg("http").set("[[check]]", "port", "65536"),
            "check[0].port",
            "out of range",
        ),
        (
            check_cfg("http").set("[[check]]", "host", "\"localhost\""),
            "check[0].host",
            "not an IP address",
        ),
        (
            check_cfg("http").set("[[check]]", "host", "\"127.0.0.1:80\""),
            "check[0].host",
            "port = N",
        ),
        (
            check_cfg("http").set("[[check]]", "host", "\"0.0.0.0\""),
            "check[0].host",
            "unicast",
        ),
        (
            check_cfg("http").set("[[check]]", "path", "\"health\""),
            "check[0].path",
            "must start with '/'",
        ),
        (
            check_cfg("http").set("[[check]]", "path", "\"/a b\""),
            "check[0].path",
            "percent-encode",
        ),
        (
            check_cfg("http").set("[[check]]", "status", "\"200-\""),
            "check[0].status",
            "not a status range",
        ),
        (
            check_cfg("http").set("[[check]]", "status", "\"399-200\""),
            "check[0].status",
            "empty",
        ),
        (
            check_cfg("http").set("[[check]]", "status", "[200, 700]"),
            "check[0].status",
            "100..=599",
        ),
        (
            check_cfg("http").set("[[check]]", "status", "[200]"),
            "check[0].status",
            "not a status range",
        ),
        (
            check_cfg("http").set("[[check]]", "status", "true"),
            "check[0].status",
            "a status range like",
        ),
        (
            check_cfg("http").set("[[check]]", "body-contains", "\"\""),
            "check[0].body-contains",
            "must not be empty",
        ),
        (
            check_cfg("http").set("[[check]]", "interval", "\"10ms\""),
            "check[0].interval",
            "too short",
        ),
        (
            check_cfg("http").set("[[check]]", "interval", "1"),
            "check[0].interval",
            "with a unit",
        ),
        (
            check_cfg("http").set("[[check]]", "timeout", "\"0s\""),
            "check[0].timeout",
            "must not be zero",
        ),
        (
            check_cfg("http").set("[[check]]", "timeout", "\"1s\""),
            "check[0].timeout",
            "must be shorter than check[0].interval (1s)",
        ),
        (
            check_cfg("http").set("[[check]]", "rise", "0"),
            "check[0].rise",
            "out of range",
        ),
        (
            check_cfg("http").set("[[check]]", "fall", "101"),
            "check[0].fall",
            "out of range",
        ),
        (
            check_cfg("http").set("[[check]]", "name", "\"my check\""),
            "check[0].name",
            "characters other than",
        ),
        (
            check_cfg("tcp")
                .set("[[check]]", "port", "22")
                .set("[[check]]", "path", "\"/\""),
            "check[0].path",
            "does not apply to kind = \"tcp\": only to kind = \"http\"",
        ),
        (
            check_cfg("exec")
                .set("[[check]]", "command", "[\"/bin/true\"]")
                .set("[[check]]", "port", "80"),
            "check[0].port",
            "only to kind = \"http\" or \"tcp\"",
        ),
        (
            check_cfg("http").set("[[check]]", "command", "[\"/bin/true\"]"),
            "check[0].command",
            "does not apply to kind = \"http\"",
        ),
        (
            check_cfg("http").set("[[check]]", "url", "\"http://x/\""),
            "check[0].url",
            "unknown key",
        ),
    ];
    for (cfg, key, needle) in cases {
        let text = cfg.text();
        let got = problems(&text);
        assert!(
            got.iter()
                .any(|p| p.key == key && p.message.contains(needle)),
            "expected {key}: ...{needle}... from:\n{text}\ngot {got:#?}"
        );
        assert!(
            got.iter().all(|p| p.line.is_some()),
            "every check problem has a line: {got:#?}"
        );
    }
}

#[test]
fn check_names_are_unique_and_derived_ones_are_told_apart() {
    let base = Cfg::minimal().text();
    let two = |a: &str, b: &str| format!("{base}[[check]]\n{a}\n\n[[check]]\n{b}\n");
    let s = parse(
        &two("kind = \"http\"", "kind = \"http\"\npath = \"/other\""),
        Path::new("t.toml"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = s.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["http-80", "http-80-1"]);

    let text = two(
        "kind = \"http\"\nname = \"web\"",
        "kind = \"tcp\"\nport = 443\nname = \"web\"",
    );
    let got = problems(&text);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0].key, "check[1].name");
    assert!(got[0].message.contains("already used by check[0]"));
    // The second table's name: after minimal()'s text come the first table's header, kind,
    // name, a blank line, then the second's header, kind, port and name.
    let expected_line = base.lines().count() + 8;
    assert_eq!(got[0].line, Some(expected_line), "{text}");
}

#[test]
fn too_many_checks_are_refused() {
    let mut text = Cfg::minimal().text();
    for _ in 0..=MAX_CHECKS {
        text.push_str("[[check]]\nkind = \"http\"\n\n");
    }
    let keys = keys(&text);
    assert!(keys.contains(&format!("check[{MAX_CHECKS}]")), "{keys:?}");
}

#[test]
fn check_written_as_a_single_table_is_explained() {
    let text = format!("{}[check]\nkind = \"http\"\n", Cfg::minimal().text());
    let got = problems(&text);
    assert!(
        got.iter()
            .any(|p| p.key == "check" && p.message.contains("[[check]] (double brackets)")),
        "{got:#?}"
    );
}

#[test]
fn summary_lists_the_checks() {
    let s = parse(EXAMPLE, Path::new("conf/enipeer.toml")).unwrap_or_else(|e| panic!("{e}"));
    let summary = s.summary();
    assert!(
        summary.contains(
            "check      http-80: GET http://<ENI address>:80/ status 200-399, every 1s, timeout 500ms, rise 2, fall 2"
        ),
        "{summary}"
    );
}
