//! Which authenticated heartbeats to believe: the right group, a configured peer, a plausible
//! timestamp, and never the same or an older packet twice. Also owns the per-reason reject
//! counters and the rate limit on reject warnings.
//!
//! Pure: the current time is always an argument, so every rule is testable without a clock.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use super::wire::{Header, Packet, WireError};
use crate::ids::NodeName;

/// At most one warning per reason per this interval; the rest are counted and summarised.
pub const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Why an authenticated packet was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Reject {
    #[error("packet for another group")]
    UnknownGroup,
    #[error("sender is not a configured peer")]
    UnknownNode,
    #[error("timestamp outside the allowed clock skew")]
    StaleTimestamp,
    #[error("replayed or out-of-order packet")]
    Replay,
}

impl Reject {
    /// A short stable label for counters and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::UnknownGroup => "unknown-group",
            Reject::UnknownNode => "unknown-node",
            Reject::StaleTimestamp => "stale-timestamp",
            Reject::Replay => "replay",
        }
    }
}

/// Counter names that always appear in [`Acceptor::counters`], even at zero, so that reports
/// have the same rows on every node.
const COUNTER_NAMES: &[&str] = &[
    "accepted",
    "unknown-group",
    "unknown-node",
    "stale-timestamp",
    "replay",
    "oversize",
    "truncated",
    "bad-magic",
    "bad-version",
    "bad-mac",
    "malformed",
];

/// The last packet accepted from one peer.
#[derive(Debug, Clone, Copy)]
struct Seen {
    incarnation: u64,
    seq: u64,
    timestamp_ms: u64,
}

/// Decides whether to believe a decoded packet, remembering what each peer last sent.
#[derive(Debug)]
pub struct Acceptor {
    group_id: u32,
    me: NodeName,
    peers: HashSet<NodeName>,
    max_skew_ms: u64,
    seen: HashMap<NodeName, Seen>,
    counters: BTreeMap<&'static str, u64>,
    limiter: RateLimiter,
    /// What is being judged, for the reject warning ("heartbeat", "echo request").
    what: &'static str,
}

impl Acceptor {
    pub fn new(
        group_id: u32,
        me: NodeName,
        peers: impl IntoIterator<Item = NodeName>,
        max_skew: Duration,
    ) -> Self {
        // Our own name is never a peer, even if the configuration lists it: a reflected copy of
        // our own heartbeat must not be mistaken for a live peer.
        let peers = peers.into_iter().filter(|p| *p != me).collect();
        Acceptor {
            group_id,
            me,
            peers,
            max_skew_ms: u64::try_from(max_skew.as_millis()).unwrap_or(u64::MAX),
            seen: HashMap::new(),
            counters: COUNTER_NAMES.iter().map(|&n| (n, 0)).collect(),
            limiter: RateLimiter::new(WARN_INTERVAL),
            what: "heartbeat",
        }
    }

    /// The same rules for another kind of packet (echo requests get their own acceptor, so an
    /// echo can neither advance nor be blocked by the heartbeat replay window); `what` names it
    /// in warnings.
    pub fn labelled(mut self, what: &'static str) -> Self {
        self.what = what;
        self
    }

    /// Checks one authenticated packet; on success remembers it so it cannot be accepted again.
    pub fn accept(&mut self, p: &Packet, now_unix_ms: u64) -> Result<(), Reject> {
        self.accept_from(p, None, now_unix_ms)
    }

    /// [`Acceptor::accept`], naming the source address in the reject warning.
    pub fn accept_from(
        &mut self,
        p: &Packet,
        from: Option<SocketAddr>,
        now_unix_ms: u64,
    ) -> Result<(), Reject> {
        self.accept_header(&p.header, from, now_unix_ms)
    }

    /// The rules only look at the header; this is [`Acceptor::accept_from`] for packets that
    /// carry no advert.
    pub fn accept_header(
        &mut self,
        h: &Header,
        from: Option<SocketAddr>,
        now_unix_ms: u64,
    ) -> Result<(), Reject> {
        match self.check(h, now_unix_ms) {
            Ok(()) => {
                self.count("accepted");
                self.seen.insert(
                    h.sender.clone(),
                    Seen {
                        incarnation: h.incarnation,
                        seq: h.seq,
                        timestamp_ms: h.timestamp_ms,
                    },
                );
                Ok(())
            }
            Err(reason) => {
                self.count(reason.as_str());
                if let Some(suppressed) = self.limiter.allow(reason.as_str(), now_unix_ms) {
                    tracing::warn!(
                        reason = reason.as_str(),
                        from = from.map(tracing::field::display),
                        sender = %h.sender,
                        group_id = h.group_id,
                        incarnation = h.incarnation,
                        seq = h.seq,
                        timestamp_ms = h.timestamp_ms,
                        now_ms = now_unix_ms,
                        suppressed,
                        "rejected {}: {reason}",
                        self.what
                    );
                } else {
                    tracing::debug!(reason = reason.as_str(), sender = %h.sender, what = self.what, "rejected");
                }
                Err(reason)
            }
        }
    }

    fn check(&self, h: &Header, now_unix_ms: u64) -> Result<(), Reject> {
        if h.group_id != self.group_id {
            return Err(Reject::UnknownGroup);
        }
        if h.sender == self.me || !self.peers.contains(&h.sender) {
            return Err(Reject::UnknownNode);
        }
        if h.timestamp_ms.abs_diff(now_unix_ms) > self.max_skew_ms {
            return Err(Reject::StaleTimestamp);
        }
        if let Some(last) = self.seen.get(&h.sender) {
            if h.incarnation == last.incarnation {
                if h.seq <= last.seq {
                    return Err(Reject::Replay);
                }
            } else if h.timestamp_ms < last.timestamp_ms {
                // A packet of a different incarnation that is older than what we already have
                // is a recording of a previous run (or of a run that has since restarted).
                return Err(Reject::Replay);
            }
        }
        Ok(())
    }

    /// Counts (and, rate-limited, logs) a datagram that did not even decode.
    pub fn record_decode_error(&mut self, err: &WireError, from: SocketAddr, now_unix_ms: u64) {
        let kind = err.kind();
        self.count(kind);
        if let Some(suppressed) = self.limiter.allow(kind, now_unix_ms) {
            tracing::warn!(reason = kind, %from, suppressed, "dropped datagram: {err}");
        } else {
            tracing::debug!(reason = kind, %from, "dropped datagram: {err}");
        }
    }

    fn count(&mut self, name: &'static str) {
        *self.counters.entry(name).or_insert(0) += 1;
    }

    /// Every counter by name, sorted by name.
    pub fn counters(&self) -> Vec<(String, u64)> {
        self.counters
            .iter()
            .map(|(&k, &v)| (k.to_owned(), v))
            .collect()
    }
}

/// Lets one event per key through per interval and counts the ones it holds back.
#[derive(Debug)]
pub struct RateLimiter {
    interval_ms: u64,
    slots: HashMap<&'static str, Slot>,
}

#[derive(Debug)]
struct Slot {
    last_ms: u64,
    suppressed: u64,
}

impl RateLimiter {
    pub fn new(interval: Duration) -> Self {
        RateLimiter {
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            slots: HashMap::new(),
        }
    }

    /// `Some(n)` when the event may be logged now, `n` being how many were held back since the
    /// last one that was; `None` when it must be held back.
    pub fn allow(&mut self, key: &'static str, now_ms: u64) -> Option<u64> {
        match self.slots.get_mut(key) {
            None => {
                self.slots.insert(
                    key,
                    Slot {
                        last_ms: now_ms,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
            // A clock that stepped backwards counts as "interval elapsed": otherwise a large
            // step back would silence the warnings for as long as the step.
            Some(slot) if now_ms < slot.last_ms || now_ms - slot.last_ms >= self.interval_ms => {
                let suppressed = std::mem::take(&mut slot.suppressed);
                slot.last_ms = now_ms;
                Some(suppressed)
            }
            Some(slot) => {
                slot.suppressed += 1;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::advert::{Advert, HolderBelief, Role, YieldMsg};
    use crate::peer::wire::Header;

    const GROUP: u32 = 7;
    const NOW: u64 = 1_700_000_000_000;
    const SKEW: Duration = Duration::from_secs(30);

    fn name(s: &str) -> NodeName {
        s.parse().unwrap()
    }

    fn acceptor() -> Acceptor {
        Acceptor::new(GROUP, name("a"), [name("b"), name("c")], SKEW)
    }

    fn pkt(sender: &str, incarnation: u64, seq: u64, timestamp_ms: u64) -> Packet {
        Packet {
            header: Header {
                group_id: GROUP,
                sender: sender.parse().unwrap(),
                incarnation,
                seq,
                timestamp_ms,
            },
            advert: Advert {
                role: Role::Backup,
                priority: 100,
                instance_id: "i-0123456789abcdef0".parse().unwrap(),
                holder: HolderBelief::Unknown,
                yield_msg: YieldMsg::None,
                stopping_ms: 0,
                wants_master: false,
                healthy: true,
                maintenance: false,
            },
        }
    }

    fn counter(acc: &Acceptor, name: &str) -> u64 {
        acc.counters()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no counter {name}"))
    }

    #[test]
    fn accepts_an_increasing_stream() {
        let mut acc = acceptor();
        for seq in 1..=5 {
            assert_eq!(acc.accept(&pkt("b", 1, seq, NOW + seq), NOW + seq), Ok(()));
        }
        assert_eq!(counter(&acc, "accepted"), 5);
    }

    #[test]
    fn rejects_replay_and_old_seq() {
        let mut acc = acceptor();
        acc.accept(&pkt("b", 1, 10, NOW), NOW).unwrap();
        assert_eq!(acc.accept(&pkt("b", 1, 10, NOW), NOW), Err(Reject::Replay));
        assert_eq!(acc.accept(&pkt("b", 1, 9, NOW), NOW), Err(Reject::Replay));
        // A rejected packet does not move the window: 11 is still next.
        assert_eq!(acc.accept(&pkt("b", 1, 11, NOW), NOW), Ok(()));
        assert_eq!(counter(&acc, "replay"), 2);
    }

    #[test]
    fn peers_have_independent_windows() {
        let mut acc = acceptor();
        acc.accept(&pkt("b", 1, 10, NOW), NOW).unwrap();
        assert_eq!(acc.accept(&pkt("c", 1, 1, NOW), NOW), Ok(()));
    }

    #[test]
    fn new_incarnation_needs_a_newer_timestamp() {
        let mut acc = acceptor();
        acc.accept(&pkt("b", 1, 100, NOW), NOW).unwrap();
        // A restart: sequence numbers start again, timestamp moves on.
        assert_eq!(acc.accept(&pkt("b", 2, 1, NOW + 1000), NOW + 1000), Ok(()));
        // A recording from the first run, still within the skew window.
        assert_eq!(
            acc.accept(&pkt("b", 1, 101, NOW + 500), NOW + 1000),
            Err(Reject::Replay)
        );
        // The new incarnation goes on undisturbed.
        assert_eq!(acc.accept(&pkt("b", 2, 2, NOW + 1100), NOW + 1100), Ok(()));
        // Equal timestamps are allowed (a restart within the same millisecond).
        assert_eq!(acc.accept(&pkt("b", 3, 1, NOW + 1100), NOW + 1100), Ok(()));
    }

    #[test]
    fn rejects_stale_timestamps_both_ways() {
        let mut acc = acceptor();
        let skew = SKEW.as_millis() as u64;
        assert_eq!(
            acc.accept(&pkt("b", 1, 1, NOW - skew - 1), NOW),
            Err(Reject::StaleTimestamp)
        );
        assert_eq!(
            acc.accept(&pkt("b", 1, 2, NOW + skew + 1), NOW),
            Err(Reject::StaleTimestamp)
        );
        // The edges of the window are inside it.
        assert_eq!(acc.accept(&pkt("b", 1, 3, NOW - skew), NOW), Ok(()));
        assert_eq!(acc.accept(&pkt("b", 1, 4, NOW + skew), NOW), Ok(()));
        assert_eq!(counter(&acc, "stale-timestamp"), 2);
    }

    #[test]
    fn rejects_unknown_nodes_and_own_name() {
        let mut acc = acceptor();
        assert_eq!(
            acc.accept(&pkt("mallory", 1, 1, NOW), NOW),
            Err(Reject::UnknownNode)
        );
        assert_eq!(
            acc.accept(&pkt("a", 1, 1, NOW), NOW),
            Err(Reject::UnknownNode)
        );
        // Even when the configuration wrongly lists our own name as a peer.
        let mut acc = Acceptor::new(GROUP, name("a"), [name("a"), name("b")], SKEW);
        assert_eq!(
            acc.accept(&pkt("a", 1, 1, NOW), NOW),
            Err(Reject::UnknownNode)
        );
        assert_eq!(counter(&acc, "unknown-node"), 1);
    }

    #[test]
    fn rejects_wrong_group() {
        let mut acc = acceptor();
        let mut p = pkt("b", 1, 1, NOW);
        p.header.group_id = GROUP + 1;
        assert_eq!(acc.accept(&p, NOW), Err(Reject::UnknownGroup));
        assert_eq!(counter(&acc, "unknown-group"), 1);
        assert_eq!(counter(&acc, "accepted"), 0);
    }

    #[test]
    fn counts_decode_errors_by_kind() {
        let mut acc = acceptor();
        let from: SocketAddr = "127.0.0.1:9".parse().unwrap();
        acc.record_decode_error(&WireError::BadMac, from, NOW);
        acc.record_decode_error(&WireError::BadMac, from, NOW);
        acc.record_decode_error(&WireError::Truncated { len: 3 }, from, NOW);
        assert_eq!(counter(&acc, "bad-mac"), 2);
        assert_eq!(counter(&acc, "truncated"), 1);
        assert_eq!(counter(&acc, "oversize"), 0);
        let names: Vec<_> = acc.counters().into_iter().map(|(n, _)| n).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
    }

    #[test]
    fn rate_limiter_suppresses_and_reports() {
        let mut rl = RateLimiter::new(Duration::from_secs(10));
        assert_eq!(rl.allow("bad-mac", 1_000), Some(0));
        assert_eq!(rl.allow("bad-mac", 2_000), None);
        assert_eq!(rl.allow("bad-mac", 10_999), None);
        // Another reason has its own budget.
        assert_eq!(rl.allow("replay", 3_000), Some(0));
        assert_eq!(rl.allow("bad-mac", 11_000), Some(2));
        assert_eq!(rl.allow("bad-mac", 11_001), None);
        assert_eq!(rl.allow("bad-mac", 21_000), Some(1));
        assert_eq!(rl.allow("bad-mac", 25_000), None);
        // A clock stepped back does not silence the reason until it catches up.
        assert_eq!(rl.allow("bad-mac", 5_000), Some(1));
    }
}
