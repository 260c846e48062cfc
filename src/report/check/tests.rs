use super::*;
use crate::report::{HealthReport, PeerReport, TransitionReport};

/// A healthy pair seen from its master: node-a holds the ENI, node-b is a live backup.
fn master() -> RoleReport {
    RoleReport {
        schema_version: crate::report::SCHEMA_VERSION,
        node: "node-a".into(),
        instance_id: "i-0000000a".into(),
        eni: "eni-0123456789abcdef0".into(),
        role: "master".into(),
        since_unix_ms: 1_700_000_000_000,
        last_transition: None,
        peers: vec![PeerReport {
            name: "node-b".into(),
            role: Some("backup".into()),
            instance_id: Some("i-0000000b".into()),
            last_heard_ms_ago: Some(120),
            alive: true,
            healthy: Some(true),
            maintenance: None,
        }],
        cloud_holder: Holder::Instance {
            id: "i-0000000a".into(),
        },
        cloud_checked_ms_ago: Some(900),
        hold_down_ms_left: None,
        last_failover: None,
        rejected: vec![],
        maintenance: None,
        leftovers: Vec::new(),
        ipv6_problem: None,
        health: HealthReport {
            healthy: true,
            ..Default::default()
        },
    }
}

/// The same pair seen from the backup.
fn backup() -> RoleReport {
    let mut r = master();
    r.node = "node-b".into();
    r.instance_id = "i-0000000b".into();
    r.role = "backup".into();
    r.peers[0].name = "node-a".into();
    r.peers[0].role = Some("master".into());
    r
}

fn judged(r: &RoleReport) -> (CheckStatus, String) {
    let (s, line) = r.check();
    assert!(!line.contains('\n'), "one line: {line:?}");
    assert!(line.starts_with(&format!("ENIPEER {s}: ")), "{line}");
    (s, line)
}

#[test]
fn a_healthy_pair_is_ok_from_either_side() {
    let (s, line) = judged(&master());
    assert_eq!(s, CheckStatus::Ok);
    assert_eq!(s.code(), 0);
    assert_eq!(
        line,
        "ENIPEER OK: node-a master, peer node-b backup, ENI eni-0123456789abcdef0 on i-0000000a"
    );
    assert_eq!(judged(&backup()).0, CheckStatus::Ok);
}

#[test]
fn a_dead_peer_is_a_warning() {
    let mut r = master();
    r.peers[0].alive = false;
    r.peers[0].last_heard_ms_ago = Some(65_000);
    let (s, line) = judged(&r);
    assert_eq!((s, s.code()), (CheckStatus::Warning, 1));
    assert!(
        line.contains("no redundancy: peer node-b dead (last heard 65.0s ago)"),
        "{line}"
    );
}

#[test]
fn a_peer_never_heard_is_a_warning() {
    let mut r = master();
    r.peers[0].alive = false;
    r.peers[0].role = None;
    r.peers[0].last_heard_ms_ago = None;
    let (s, line) = judged(&r);
    assert_eq!(s, CheckStatus::Warning);
    assert!(line.contains("never heard"), "{line}");
}

#[test]
fn a_peer_with_failing_checks_is_a_warning() {
    let mut r = master();
    r.peers[0].healthy = Some(false);
    let (s, line) = judged(&r);
    assert_eq!(s, CheckStatus::Warning);
    assert!(line.contains("peer node-b's checks fail"), "{line}");
}

#[test]
fn hold_down_is_a_warning() {
    let mut r = backup();
    r.hold_down_ms_left = Some(4_000);
    let (s, line) = judged(&r);
    assert_eq!(s, CheckStatus::Warning);
    assert!(line.contains("hold-down active (4000ms left)"), "{line}");
}

#[test]
fn failing_checks_on_a_backup_are_a_warning() {
    let mut r = backup();
    r.health.healthy = false;
    r.health.detail = "http-80: connection refused".into();
    let (s, line) = judged(&r);
    assert_eq!(s, CheckStatus::Warning);
    assert!(
        line.contains("this node's checks fail (http-80: connection refused)"),
        "{line}"
    );
}

#[test]
fn a_degraded_master_is_a_warning() {
    let mut r = master();
    r.health.healthy = false;
    r.health.degraded = true;
    r.health.detail = "tcp-5432: timed out".into();
    r.peers[0].healthy = Some(false);
    let (s, line) = judged(&r);
    assert_eq!(s, CheckStatus::Warning);
    assert!(line.contains("degraded master"), "{line}");
    assert!(line.contains("peer node-b's checks fail"), "{line}");
}

#[test]
fn an_unknown_holder_is_a_warning() {
    let mut r = master();
    r.cloud_holder = Holder::Unknown;
    assert_eq!(judged(&r).0, CheckStatus::Warning);
}

#[test]
fn a_backup_that_sees_no_master_warns() {
    let mut r = backup();
    r.peers[0].role = Some("backup".into());
    let (s, line) = judged(&r);
    assert_eq!(s, CheckStatus::Warning);
    assert!(
        line.contains("no master in sight (ENI held by i-0000000a)"),
        "{line}"
    );
}

#[test]
fn nobody_holding_the_eni_is_critical() {
    let mut r = backup();
    r.cloud_holder = Holder::Nobody;
    r.peers[0].role = Some("backup".into());
    let (s, line) = judged(&r);
    assert_eq!((s, s.code()), (CheckStatus::Critical, 2));
    assert!(line.contains("nobody holds the ENI"), "{line}");
}

#[test]
fn fault_is_critical_and_outranks_the_warnings() {
    let mut r = master();
    r.role = "fault".into();
    r.last_transition = Some(TransitionReport {
        from: "master".into(),
        to: "fault".into(),
        reason: "host network config failed 3 times".into(),
        at_unix_ms: 1_700_000_000_000,
    });
    r.peers[0].alive = false;
    let (s, line) = judged(&r);
    assert_eq!(s, CheckStatus::Critical);
    assert_eq!(
        line,
        "ENIPEER CRITICAL: this node is in FAULT: host network config failed 3 times \
         (node-a fault)"
    );
}

#[test]
fn two_masters_are_critical() {
    let mut r = master();
    r.peers[0].role = Some("master".into());
    let (s, line) = judged(&r);
    assert_eq!(s, CheckStatus::Critical);
    assert!(line.contains("two masters: this node and node-b"), "{line}");
}

#[test]
fn unknown_is_code_3() {
    assert_eq!(CheckStatus::Unknown.code(), 3);
    assert_eq!(
        unknown_line("connection refused"),
        "ENIPEER UNKNOWN: daemon unreachable: connection refused"
    );
}

#[test]
fn the_json_distinguishes_holders_by_kind_and_names_reject_counts() {
    let mut r = master();
    r.rejected = vec![crate::report::RejectCount {
        reason: "bad-mac".into(),
        count: 3,
    }];
    let v: serde_json::Value = serde_json::to_value(&r).unwrap();
    assert_eq!(v["schema_version"], 1);
    assert_eq!(
        v["cloud_holder"],
        serde_json::json!({"kind": "instance", "id": "i-0000000a"})
    );
    assert_eq!(
        v["rejected"],
        serde_json::json!([{"reason": "bad-mac", "count": 3}])
    );
    r.cloud_holder = Holder::Nobody;
    assert_eq!(
        serde_json::to_value(&r).unwrap()["cloud_holder"],
        serde_json::json!({"kind": "nobody"})
    );
    r.cloud_holder = Holder::Unknown;
    let text = serde_json::to_string(&r).unwrap();
    assert!(
        text.contains(r#""cloud_holder":{"kind":"unknown"}"#),
        "{text}"
    );
    let back: RoleReport = serde_json::from_str(&text).unwrap();
    assert_eq!(back, r);
}

#[test]
fn ipv6_missing_on_the_master_is_a_warning_and_shown() {
    let mut r = master();
    r.ipv6_problem = Some("add address 2001:db8::25/64: Permission denied".into());
    let (s, line) = judged(&r);
    assert_eq!((s, s.code()), (CheckStatus::Warning, 1));
    assert!(line.contains("IPv6 not configured on the host"), "{line}");
    assert!(r
        .render(0)
        .contains("IPv6 NOT configured on the host (retried): add address"));
}
