//! Which checks run where, and what their reports mean for the core.
//!
//! Every `[[check]]` is an *own* check against its target. A check whose target is the ENI's
//! address (the default) tells about this node's own service only while it is master (only then
//! is the address here); on a backup its answers would come from whoever holds the ENI, so it
//! runs only on a master. Checks with an explicit host and exec checks run, and count,
//! everywhere.
//!
//! The first http or tcp check also runs as the *corroborating probe* on every node that is not
//! master: the same definition against the ENI's address from this node's primary address, the
//! way clients reach the service. Its raw results go to the core, which counts them against a
//! holder's silence (a master has no holder to corroborate). It runs at the check's interval
//! while heartbeats flow and is poked at the heartbeat cadence once they are late
//! ([`Supervisor::poke_through_eni`]), with a timeout no longer than the heartbeat interval, so
//! that `fall` fresh failures are known by the time the dead interval ends.
//!
//! So each node sends the service one probe per interval, not two: a backup's own probe of the
//! ENI's address would only repeat the corroborating one, and a master's corroborating probe
//! its own check.

use std::net::IpAddr;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{spawn, CheckHandle, CheckReport, HealthState, ProbeTarget};
use crate::config::{CheckHost, CheckSettings, ProbeSpec};

/// The report id of the corroborating probe (own checks use their index).
const THROUGH_ENI: usize = usize::MAX;

/// What one report means for the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// This node's own health changed.
    Own { healthy: bool, detail: String },
    /// One corroborating probe through the ENI, started at `sent`.
    ThroughEni { sent: Instant, ok: bool },
}

/// One check as `enipeer role` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckView {
    pub name: String,
    pub state: HealthState,
    /// Counts toward this node's own health right now.
    pub counts: bool,
    pub last_error: Option<String>,
}

struct Own {
    check: CheckSettings,
    handle: Option<CheckHandle>,
    state: HealthState,
    last_error: Option<String>,
    /// Reports of probes started before this are stale: they may have been answered by the
    /// previous holder of the ENI (see [`Supervisor::set_master`]).
    since: Instant,
}

impl Own {
    fn targets_eni(&self) -> bool {
        matches!(self.check.probe.host(), Some(CheckHost::EniAddress))
    }

    /// Forgets what the check said so far; `start_own` starts it again.
    fn restart(&mut self) {
        self.handle = None;
        self.state = HealthState::Unknown;
        self.last_error = None;
        self.since = Instant::now();
    }
}

pub struct Supervisor {
    own: Vec<Own>,
    /// The definition the corroborating probe uses, with its cadence and timeout adapted.
    through_eni: Option<CheckSettings>,
    through_eni_handle: Option<CheckHandle>,
    primary: Option<IpAddr>,
    eni: Option<IpAddr>,
    master: bool,
    /// Became master, host network not applied yet: the ENI's checks start again once it is.
    awaiting_network: bool,
    healthy: bool,
    reports: mpsc::Sender<CheckReport>,
}

impl Supervisor {
    /// Starts the checks that need no ENI address. `primary` is this node's own address (the
    /// heartbeat bind address), the source of the corroborating probe; `None` lets the kernel
    /// choose.
    pub fn new(
        checks: &[CheckSettings],
        primary: Option<IpAddr>,
        heartbeat_interval: Duration,
        reports: mpsc::Sender<CheckReport>,
    ) -> Self {
        let own = checks
            .iter()
            .map(|c| Own {
                check: c.clone(),
                handle: None,
                state: HealthState::Unknown,
                last_error: None,
                since: Instant::now(),
            })
            .collect();
        let mut s = Supervisor {
            own,
            through_eni: corroborating(checks, heartbeat_interval),
            through_eni_handle: None,
            primary,
            eni: None,
            master: false,
            awaiting_network: false,
            healthy: true,
            reports,
        };
        s.start_own();
        s
    }

    /// The `fall` the core counts corroborating failures against; `None` without a probe.
    pub fn corroborate_fall(checks: &[CheckSettings]) -> Option<u32> {
        corroborating(checks, Duration::from_secs(1)).map(|c| c.fall)
    }

    /// The ENI's primary address, once the cloud told it: starts what targets it.
    pub fn eni_known(&mut self, eni: IpAddr) {
        if self.eni == Some(eni) {
            return;
        }
        self.eni = Some(eni);
        for o in self.own.iter_mut().filter(|o| o.targets_eni()) {
            o.restart();
        }
        self.start_own();
        self.through_eni_handle = None;
        self.start_through_eni();
    }

    /// The corroborating probe, on a node that is not master and knows the ENI's address.
    fn start_through_eni(&mut self) {
        let (Some(c), Some(eni)) = (&self.through_eni, self.eni) else {
            return;
        };
        if self.master || self.through_eni_handle.is_some() {
            return;
        }
        let target = ProbeTarget {
            ip: eni,
            source: self.primary,
        };
        let handle = spawn(THROUGH_ENI, c.clone(), target, self.reports.clone());
        self.through_eni_handle = Some(handle);
    }

    fn start_own(&mut self) {
        for (i, o) in self.own.iter_mut().enumerate() {
            if o.handle.is_some() {
                continue;
            }
            let target = match (o.check.probe.host(), self.eni) {
                (Some(CheckHost::Ip(ip)), _) => ProbeTarget { ip, source: None },
                (Some(CheckHost::EniAddress), Some(eni)) if self.master => {
                    ProbeTarget::of_check(&o.check, eni)
                }
                (Some(CheckHost::EniAddress), _) => continue,
                // Exec probes are told the ENI's address when it is known.
                (None, eni) => ProbeTarget {
                    ip: eni
                        .or(self.primary)
                        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
                    source: None,
                },
            };
            o.handle = Some(spawn(i, o.check.clone(), target, self.reports.clone()));
        }
    }

    /// The role changed: checks on the ENI's address count for own health only on a master.
    ///
    /// A node that becomes master starts those checks afresh: until now their probes were
    /// answered by the previous holder, and a holder that died (the very reason for a
    /// failover) left them failing. Counting that history would make the new master judge
    /// itself unhealthy and hand the ENI straight back to the node that just failed.
    ///
    /// A node that stops being master stops those checks (their answers would come from the
    /// next holder) and starts the corroborating probe, which a master does without.
    pub fn set_master(&mut self, master: bool) -> Option<Verdict> {
        let was = self.master;
        self.awaiting_network = master;
        self.master = master;
        match (was, master) {
            (false, true) => {
                self.through_eni_handle = None;
                self.restart_eni_checks();
            }
            (true, false) => {
                for o in self.own.iter_mut().filter(|o| o.targets_eni()) {
                    o.restart();
                }
                self.start_through_eni();
            }
            _ => {}
        }
        self.recompute()
    }

    /// The host network is applied on this master: the ENI's checks start once more, so that
    /// the probes sent while the address was not configured here yet (certain failures) do
    /// not count toward `fall`. Once per mastership: a check that fails must reach `fall`.
    pub fn network_applied(&mut self) -> Option<Verdict> {
        if !(self.master && self.awaiting_network) {
            return None;
        }
        self.awaiting_network = false;
        self.restart_eni_checks();
        self.recompute()
    }

    fn restart_eni_checks(&mut self) {
        for o in self.own.iter_mut().filter(|o| o.targets_eni()) {
            o.restart();
        }
        self.start_own();
    }

    /// Heartbeats from the holder are late: probe through the ENI now rather than at the next
    /// interval, so the core has fresh results when the dead interval ends.
    pub fn poke_through_eni(&self) {
        if let Some(h) = &self.through_eni_handle {
            h.probe_now();
        }
    }

    pub fn on_report(&mut self, r: &CheckReport) -> Option<Verdict> {
        if r.id == THROUGH_ENI {
            return Some(Verdict::ThroughEni {
                sent: r.started,
                ok: r.result.is_ok(),
            });
        }
        let o = self.own.get_mut(r.id)?;
        if r.started < o.since {
            // From a runner replaced since (or queued before it was): stale.
            return None;
        }
        o.state = r.state;
        o.last_error = r.result.as_ref().err().map(|e| e.to_string());
        self.recompute()
    }

    /// Own health: no counting check is down (unknown counts as healthy: a node is not
    /// punished for checks that have not run yet).
    fn recompute(&mut self) -> Option<Verdict> {
        let failing: Vec<String> = self
            .own
            .iter()
            .filter(|o| self.counts(o) && o.state == HealthState::Down)
            .map(|o| match &o.last_error {
                Some(e) => format!("{}: {e}", o.check.name),
                None => o.check.name.clone(),
            })
            .collect();
        let healthy = failing.is_empty();
        if healthy == self.healthy {
            return None;
        }
        self.healthy = healthy;
        let detail = if healthy {
            "all checks pass".to_string()
        } else {
            failing.join("; ")
        };
        Some(Verdict::Own { healthy, detail })
    }

    fn counts(&self, o: &Own) -> bool {
        self.master || !o.targets_eni()
    }

    pub fn views(&self) -> Vec<CheckView> {
        self.own
            .iter()
            .map(|o| CheckView {
                name: o.check.name.clone(),
                state: o.state,
                counts: self.counts(o),
                last_error: o.last_error.clone(),
            })
            .collect()
    }
}

/// The corroborating probe's definition: the first http or tcp check, with its timeout capped
/// at the heartbeat interval (at least 100 ms) so that two fresh failures fit in a dead interval.
fn corroborating(checks: &[CheckSettings], heartbeat: Duration) -> Option<CheckSettings> {
    let c = checks
        .iter()
        .find(|c| matches!(c.probe, ProbeSpec::Http(_) | ProbeSpec::Tcp(_)))?;
    let mut c = c.clone();
    c.name = format!("{} (through the ENI)", c.name);
    c.timeout = c.timeout.min(heartbeat.max(Duration::from_millis(100)));
    c.interval = c.interval.max(c.timeout + Duration::from_millis(1));
    Some(c)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::Arc;

    use super::super::ProbeError;
    use super::*;
    use crate::config::{HttpProbe, StatusRange};

    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn http(host: CheckHost, name: &str) -> CheckSettings {
        CheckSettings {
            name: name.into(),
            probe: ProbeSpec::Http(HttpProbe {
                host,
                port: 9,
                path: "/".into(),
                status: StatusRange::DEFAULT,
                body_contains: None,
            }),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise: 2,
            fall: 3,
        }
    }

    fn report(id: usize, state: HealthState, ok: bool) -> CheckReport {
        CheckReport {
            id,
            name: Arc::from("x"),
            target: ProbeTarget {
                ip: LOOPBACK,
                source: None,
            },
            result: if ok {
                Ok(super::super::Passed::Connected)
            } else {
                Err(ProbeError::TimedOut {
                    timeout: Duration::from_millis(1),
                })
            },
            started: Instant::now(),
            duration: Duration::ZERO,
            state,
            change: None,
        }
    }

    fn supervisor(checks: &[CheckSettings]) -> Supervisor {
        let (tx, _rx) = mpsc::channel(8);
        Supervisor::new(checks, Some(LOOPBACK), Duration::from_millis(200), tx)
    }

    #[tokio::test]
    async fn an_eni_check_counts_for_own_health_only_on_a_master() {
        let mut s = supervisor(&[http(CheckHost::EniAddress, "web")]);
        assert_eq!(s.on_report(&report(0, HealthState::Down, false)), None);
        assert_eq!(
            s.set_master(true),
            None,
            "a backup's failures are forgotten"
        );
        let v = s.on_report(&report(0, HealthState::Down, false));
        assert!(
            matches!(v, Some(Verdict::Own { healthy: false, ref detail }) if detail.contains("web"))
        );
        assert_eq!(
            s.set_master(false),
            Some(Verdict::Own {
                healthy: true,
                detail: "all checks pass".into()
            })
        );
    }

    /// A failover's new master must not judge itself by probes the dead holder failed: the
    /// lab saw a new master hand the ENI straight back to the node that had just died.
    #[tokio::test]
    async fn probes_started_before_becoming_master_do_not_count() {
        let mut s = supervisor(&[http(CheckHost::EniAddress, "web")]);
        let before = report(0, HealthState::Down, false);
        assert_eq!(s.set_master(true), None);
        assert_eq!(s.on_report(&before), None, "a stale report counted");
        assert!(s.views()[0].state == HealthState::Unknown);
    }

    #[tokio::test]
    async fn a_check_with_its_own_host_always_counts_and_unknown_is_healthy() {
        let mut s = supervisor(&[
            http(CheckHost::EniAddress, "web"),
            http(CheckHost::Ip(LOOPBACK), "local"),
        ]);
        assert_eq!(s.on_report(&report(1, HealthState::Unknown, false)), None);
        assert!(matches!(
            s.on_report(&report(1, HealthState::Down, false)),
            Some(Verdict::Own { healthy: false, .. })
        ));
        assert!(s.views().iter().all(|v| v.counts == (v.name == "local")));
    }

    #[tokio::test]
    async fn through_eni_reports_go_to_the_core_raw() {
        let mut s = supervisor(&[http(CheckHost::EniAddress, "web")]);
        let r = report(THROUGH_ENI, HealthState::Unknown, false);
        assert_eq!(
            s.on_report(&r),
            Some(Verdict::ThroughEni {
                sent: r.started,
                ok: false
            })
        );
    }

    /// The first probe of a new master runs before its host network is applied and fails;
    /// with one more failure a healthy service would count as down (the lab saw a handover
    /// 0.3 s after one real failure).
    #[tokio::test]
    async fn probes_before_the_network_is_applied_do_not_count() {
        let mut s = supervisor(&[http(CheckHost::EniAddress, "web")]);
        assert_eq!(s.set_master(true), None);
        let early = report(0, HealthState::Down, false);
        assert_eq!(s.network_applied(), None);
        assert_eq!(s.on_report(&early), None, "a pre-network report counted");
        let later = report(0, HealthState::Down, false);
        assert!(s.on_report(&later).is_some());
        assert_eq!(s.network_applied(), None, "only once per mastership");
        assert!(s.views()[0].state == HealthState::Down);
    }

    /// One probe of the service per node and interval: the ENI's own checks only on a master,
    /// the corroborating probe only on the others. (The ENI's address here is loopback: these
    /// probes really run.)
    #[tokio::test]
    async fn each_node_probes_the_service_once() {
        let mut s = supervisor(&[
            http(CheckHost::EniAddress, "web"),
            http(CheckHost::Ip(LOOPBACK), "local"),
        ]);
        let running = |s: &Supervisor| {
            let own: Vec<bool> = s.own.iter().map(|o| o.handle.is_some()).collect();
            (own, s.through_eni_handle.is_some())
        };
        assert_eq!(
            running(&s),
            (vec![false, true], false),
            "no ENI address yet"
        );
        s.eni_known(LOOPBACK);
        assert_eq!(running(&s), (vec![false, true], true), "backup");
        s.set_master(true);
        assert_eq!(running(&s), (vec![true, true], false), "master");
        s.network_applied();
        assert_eq!(
            running(&s),
            (vec![true, true], false),
            "master, network applied"
        );
        s.set_master(false);
        assert_eq!(running(&s), (vec![false, true], true), "backup again");
        assert_eq!(s.views()[0].state, HealthState::Unknown);
    }

    #[test]
    fn the_corroborating_probe_is_the_first_network_check_with_a_short_timeout() {
        let checks = [http(CheckHost::EniAddress, "web")];
        let c = corroborating(&checks, Duration::from_millis(200)).expect("http check");
        assert_eq!(c.timeout, Duration::from_millis(200));
        assert!(c.interval > c.timeout);
        assert_eq!(Supervisor::corroborate_fall(&checks), Some(3));
        assert_eq!(Supervisor::corroborate_fall(&[]), None);
    }
}
