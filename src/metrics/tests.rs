use super::http::{route, Route};
use super::*;
use crate::report::{CheckState, HealthReport, Holder, PeerReport};

fn report() -> RoleReport {
    RoleReport {
        schema_version: crate::report::SCHEMA_VERSION,
        node: "node-a".into(),
        instance_id: "i-0000000a".into(),
        eni: "eni-0123456789abcdef0".into(),
        role: "backup".into(),
        since_unix_ms: 0,
        last_transition: None,
        peers: vec![PeerReport {
            name: "node-b".into(),
            role: Some("master".into()),
            instance_id: None,
            last_heard_ms_ago: Some(250),
            alive: true,
            healthy: Some(true),
            maintenance: None,
        }],
        cloud_holder: Holder::Unknown,
        cloud_checked_ms_ago: None,
        hold_down_ms_left: Some(1500),
        last_failover: None,
        rejected: vec![],
        maintenance: None,
        leftovers: Vec::new(),
        ipv6_problem: None,
        health: HealthReport {
            healthy: false,
            checks: vec![
                CheckState {
                    name: "http-80".into(),
                    state: "down".into(),
                    counts: true,
                    last_error: None,
                },
                CheckState {
                    name: "tcp-22".into(),
                    state: "unknown".into(),
                    counts: true,
                    last_error: None,
                },
            ],
            ..Default::default()
        },
    }
}

fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find(|l| l.starts_with(prefix))
}

#[test]
fn maintenance_shows_for_this_node_and_its_peer() {
    let m = Metrics::new();
    let mut r = report();
    r.maintenance = Some("kernel update".into());
    r.peers[0].maintenance = Some(true);
    m.apply(&r);
    let text = m.encode();
    assert!(text.contains("enipeer_maintenance 1"), "{text}");
    assert!(
        text.contains("enipeer_peer_maintenance{peer=\"node-b\"} 1"),
        "{text}"
    );
}

#[test]
fn the_snapshot_sets_the_state_gauges() {
    let m = Metrics::new();
    m.apply(&report());
    let text = m.encode();
    assert_eq!(
        line(&text, "enipeer_role{role=\"backup\"}"),
        Some("enipeer_role{role=\"backup\"} 1")
    );
    assert_eq!(
        line(&text, "enipeer_role{role=\"master\"}"),
        Some("enipeer_role{role=\"master\"} 0")
    );
    assert!(
        text.contains("enipeer_peer_alive{peer=\"node-b\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("enipeer_peer_last_heard_seconds{peer=\"node-b\"} 0.25"),
        "{text}"
    );
    assert!(
        text.contains("enipeer_hold_down_seconds_remaining 1.5"),
        "{text}"
    );
    assert!(
        text.contains("enipeer_check_up{check=\"http-80\"} 0"),
        "{text}"
    );
    assert!(
        !text.contains("tcp-22"),
        "an unknown check has no value: {text}"
    );
    assert!(text.contains("enipeer_healthy 0"), "{text}");
    assert!(text.contains("enipeer_maintenance 0"), "{text}");
    assert!(
        !text.contains("enipeer_peer_maintenance{"),
        "a peer not known to be in maintenance or not has no value: {text}"
    );
    assert!(text.contains("enipeer_loop_responsive 1"), "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
    m.stale();
    assert!(m.encode().contains("enipeer_loop_responsive 0"));
}

#[test]
fn counters_and_histograms_are_exposed_with_their_labels() {
    let m = Metrics::new();
    m.heartbeats_sent.inc();
    m.transitions
        .get_or_create(&TransitionLabels {
            from: "backup".into(),
            to: "claiming".into(),
        })
        .inc();
    m.heartbeats_rejected
        .get_or_create(&ReasonLabel { reason: "bad-mac" })
        .inc();
    m.cloud_requests
        .get_or_create(&CloudLabels {
            action: "claim",
            outcome: "throttled",
        })
        .inc();
    m.cloud_duration
        .get_or_create(&ActionLabel { action: "claim" })
        .observe(0.3);
    m.failover_duration
        .get_or_create(&KindLabel {
            kind: "failover".into(),
        })
        .observe(2.5);
    let text = m.encode();
    for want in [
        "enipeer_heartbeats_sent_total 1",
        "enipeer_heartbeats_rejected_total{reason=\"bad-mac\"} 1",
        "enipeer_cloud_requests_total{action=\"claim\",outcome=\"throttled\"} 1",
        "enipeer_cloud_request_duration_seconds_count{action=\"claim\"} 1",
        "enipeer_failover_duration_seconds_bucket{le=\"4.0\",kind=\"failover\"} 1",
        "enipeer_transitions_total{from=\"backup\",to=\"claiming\"} 1",
        "# TYPE enipeer_failover_duration_seconds histogram",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
}

#[test]
fn hook_outcomes_have_stable_labels() {
    assert_eq!(hook_outcome(&HookOutcome::Exited { code: 0 }), "ok");
    assert_eq!(hook_outcome(&HookOutcome::Exited { code: 2 }), "failed");
    assert_eq!(hook_outcome(&HookOutcome::TimedOut), "timed-out");
}

#[test]
fn only_get_metrics_is_served() {
    assert_eq!(
        route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap(),
        Some(Route::Metrics)
    );
    assert_eq!(
        route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n").unwrap(),
        Some(Route::Metrics)
    );
    assert_eq!(
        route(b"GET / HTTP/1.1\r\n\r\n").unwrap(),
        Some(Route::NotFound)
    );
    assert_eq!(
        route(b"POST /metrics HTTP/1.1\r\n\r\n").unwrap(),
        Some(Route::BadMethod)
    );
    assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost:").unwrap(), None);
    assert!(route(b"\x00\x01garbage\r\n\r\n").is_err());
}
