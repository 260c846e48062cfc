//! The daemon's side of the peer echo: which echo requests arriving on the heartbeat port get an
//! answer, and what the answer says. `enipeer check --preflight` ([`super::preflight`]) asks.
//!
//! An answer goes only to a configured peer address, at most [`BURST`] per [`WINDOW`] per source
//! address, is never larger than the request (echoes have one fixed size) and carries the
//! request's nonce. Authentic requests pass the same replay filter as heartbeats (an
//! [`Acceptor`] of their own). A request that does not verify under our keys is still answered,
//! signed with our key, so that the asking side can tell a key mismatch from a closed port; that
//! answer carries nothing but our own header, a status and the nonce it was sent.
//!
//! Pure: times are arguments, and the caller sends the bytes.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::filter::{Acceptor, RateLimiter, Reject, WARN_INTERVAL};
use super::wire::{self, Echo, EchoKind, EchoStatus, Header, Keys, WireError};
use crate::ids::NodeName;

/// Answers per source address per [`WINDOW`]: a preflight sends a handful, an attacker who can
/// spoof a peer's address gets no more than this reflected at that peer.
pub const BURST: u32 = 4;
pub const WINDOW: Duration = Duration::from_secs(1);

/// Why an echo datagram got no answer; the label is also its counter name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// From an address that is not one of our peers' configured addresses.
    NotAPeer,
    RateLimited,
    /// An echo reply: this daemon never asks, so it never expects one.
    Unexpected,
    Malformed,
    StaleTimestamp,
    Replay,
}

impl Dropped {
    pub fn as_str(self) -> &'static str {
        match self {
            Dropped::NotAPeer => "not-a-peer",
            Dropped::RateLimited => "rate-limited",
            Dropped::Unexpected => "unexpected-reply",
            Dropped::Malformed => "malformed",
            Dropped::StaleTimestamp => "stale-timestamp",
            Dropped::Replay => "replay",
        }
    }
}

/// Decides about echo requests; one per [`super::PeerLink`].
#[derive(Debug)]
pub struct Responder {
    group_id: u32,
    me: NodeName,
    incarnation: u64,
    /// Sequence of our replies; replies are matched by nonce, this only keeps headers distinct.
    seq: u64,
    peer_ips: HashSet<IpAddr>,
    acceptor: Acceptor,
    /// Per source address: start of its current window (monotonic ms) and answers in it. Only
    /// peer addresses get an entry, so it stays as small as the configuration.
    budget: HashMap<IpAddr, (u64, u32)>,
    window_ms: u64,
    /// For the key-mismatch warning, which unauthenticated traffic can trigger.
    limiter: RateLimiter,
    answered: u64,
    dropped: u64,
}

impl Responder {
    pub fn new(
        group_id: u32,
        me: &NodeName,
        incarnation: u64,
        peers: &[(NodeName, Vec<SocketAddr>)],
        max_skew: Duration,
    ) -> Responder {
        Responder {
            group_id,
            me: me.clone(),
            incarnation,
            seq: 0,
            peer_ips: peers
                .iter()
                .flat_map(|(_, addrs)| addrs.iter().map(|a| a.ip()))
                .collect(),
            acceptor: Acceptor::new(
                group_id,
                me.clone(),
                peers.iter().map(|(n, _)| n.clone()),
                max_skew,
            )
            .labelled("echo request"),
            budget: HashMap::new(),
            window_ms: u64::try_from(WINDOW.as_millis()).unwrap_or(u64::MAX),
            limiter: RateLimiter::new(WARN_INTERVAL),
            answered: 0,
            dropped: 0,
        }
    }

    /// Echo requests answered since start.
    pub fn answered(&self) -> u64 {
        self.answered
    }

    /// Echo datagrams dropped since start, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The signed reply to send back to `from`, or why there is none. `buf` is an echo-shaped
    /// datagram ([`wire::is_echo`]).
    pub fn handle(
        &mut self,
        buf: &[u8],
        from: SocketAddr,
        keys: &Keys,
        now_mono_ms: u64,
        now_unix_ms: u64,
    ) -> Result<Vec<u8>, Dropped> {
        let verdict = self.judge(buf, from, keys, now_mono_ms, now_unix_ms);
        let reply = verdict.and_then(|(status, nonce)| {
            self.seq += 1;
            let reply = Echo {
                kind: EchoKind::Reply,
                status,
                header: Header {
                    group_id: self.group_id,
                    sender: self.me.clone(),
                    incarnation: self.incarnation,
                    seq: self.seq,
                    timestamp_ms: now_unix_ms,
                },
                nonce,
            };
            // Our own name was checked at startup, so this cannot fail; dropping beats panicking.
            wire::encode_echo(&reply, keys.current()).map_err(|_| Dropped::Malformed)
        });
        match &reply {
            Ok(_) => self.answered += 1,
            Err(_) => self.dropped += 1,
        }
        reply
    }

    fn judge(
        &mut self,
        buf: &[u8],
        from: SocketAddr,
        keys: &Keys,
        now_mono_ms: u64,
        now_unix_ms: u64,
    ) -> Result<(EchoStatus, u64), Dropped> {
        // Cheap checks first, so that nobody but a peer makes us compute a MAC.
        if !self.peer_ips.contains(&from.ip()) {
            return Err(Dropped::NotAPeer);
        }
        let (kind, unverified_nonce) = wire::peek_echo(buf).ok_or(Dropped::Malformed)?;
        if kind != EchoKind::Request {
            return Err(Dropped::Unexpected);
        }
        if !self.spend(from.ip(), now_mono_ms) {
            return Err(Dropped::RateLimited);
        }
        let echo = match wire::decode_echo(buf, keys) {
            Ok((echo, _)) => echo,
            Err(WireError::BadMac) => {
                if let Some(suppressed) = self.limiter.allow("bad-mac", now_mono_ms) {
                    tracing::warn!(%from, suppressed, "echo request from a peer address failed \
                        authentication: the peer's key differs from ours; answering so that its \
                        preflight can tell");
                }
                return Ok((EchoStatus::BadMac, unverified_nonce));
            }
            Err(_) => return Err(Dropped::Malformed),
        };
        match self
            .acceptor
            .accept_header(&echo.header, Some(from), now_unix_ms)
        {
            Ok(()) => {
                tracing::info!(%from, peer = %echo.header.sender, "answering a peer echo (preflight)");
                Ok((EchoStatus::Ok, echo.nonce))
            }
            Err(Reject::UnknownGroup) => Ok((EchoStatus::OtherGroup, echo.nonce)),
            Err(Reject::UnknownNode) => Ok((EchoStatus::UnknownNode, echo.nonce)),
            Err(Reject::StaleTimestamp) => Err(Dropped::StaleTimestamp),
            Err(Reject::Replay) => Err(Dropped::Replay),
        }
    }

    /// Takes one answer from the source's budget; false when it is spent for this window.
    fn spend(&mut self, ip: IpAddr, now_ms: u64) -> bool {
        let (start, used) = self.budget.entry(ip).or_insert((now_ms, 0));
        // A monotonic clock does not go back; `<` only guards the arithmetic.
        if now_ms < *start || now_ms - *start >= self.window_ms {
            *start = now_ms;
            *used = 0;
        }
        if *used >= BURST {
            return false;
        }
        *used += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::wire::KeyUsed;

    const KEY: &[u8] = b"echo test key, 32 bytes long....";
    const OTHER: &[u8] = b"some other key, 32 bytes long...";
    const GROUP: u32 = 9;
    const NOW: u64 = 1_700_000_000_000;
    const SKEW: Duration = Duration::from_secs(30);

    fn peer_addr() -> SocketAddr {
        "198.18.0.11:40000".parse().unwrap()
    }

    fn responder() -> Responder {
        Responder::new(
            GROUP,
            &"a".parse().unwrap(),
            77,
            &[(
                "b".parse().unwrap(),
                vec!["198.18.0.11:7460".parse().unwrap()],
            )],
            SKEW,
        )
    }

    fn request(sender: &str, group_id: u32, seq: u64, nonce: u64, key: &[u8]) -> Vec<u8> {
        wire::encode_echo(
            &Echo {
                kind: EchoKind::Request,
                status: EchoStatus::Ok,
                header: Header {
                    group_id,
                    sender: sender.parse().unwrap(),
                    incarnation: 5,
                    seq,
                    timestamp_ms: NOW,
                },
                nonce,
            },
            key,
        )
        .unwrap()
    }

    fn answer(r: &mut Responder, buf: &[u8], mono: u64) -> Result<Echo, Dropped> {
        let keys = Keys::from(KEY.to_vec());
        let bytes = r.handle(buf, peer_addr(), &keys, mono, NOW)?;
        assert_eq!(
            bytes.len(),
            buf.len(),
            "a reply is exactly as large as its request"
        );
        let (echo, used) = wire::decode_echo(&bytes, &keys).expect("reply verifies");
        assert_eq!(used, KeyUsed::Current);
        Ok(echo)
    }

    #[test]
    fn answers_an_authentic_request_with_its_nonce() {
        let mut r = responder();
        let reply = answer(&mut r, &request("b", GROUP, 1, 0xabc, KEY), 0).unwrap();
        assert_eq!(reply.kind, EchoKind::Reply);
        assert_eq!(reply.status, EchoStatus::Ok);
        assert_eq!(reply.nonce, 0xabc);
        assert_eq!(reply.header.sender, "a");
        assert_eq!(reply.header.group_id, GROUP);
        assert_eq!(reply.header.incarnation, 77);
        assert_eq!(r.answered(), 1);
    }

    #[test]
    fn replays_are_filtered_like_heartbeats() {
        let mut r = responder();
        let req = request("b", GROUP, 1, 1, KEY);
        assert!(answer(&mut r, &req, 0).is_ok());
        assert_eq!(answer(&mut r, &req, 0).unwrap_err(), Dropped::Replay);
        // The next sequence number goes through.
        assert!(answer(&mut r, &request("b", GROUP, 2, 2, KEY), 0).is_ok());
        assert_eq!(r.dropped(), 1);
    }

    #[test]
    fn only_configured_peer_addresses_get_an_answer() {
        let mut r = responder();
        let keys = Keys::from(KEY.to_vec());
        let stranger: SocketAddr = "203.0.113.9:7460".parse().unwrap();
        let err = r
            .handle(&request("b", GROUP, 1, 1, KEY), stranger, &keys, 0, NOW)
            .unwrap_err();
        assert_eq!(err, Dropped::NotAPeer);
    }

    #[test]
    fn rate_limited_per_source() {
        let mut r = responder();
        for seq in 1..=u64::from(BURST) {
            assert!(answer(&mut r, &request("b", GROUP, seq, seq, KEY), 10).is_ok());
        }
        let next = u64::from(BURST) + 1;
        assert_eq!(
            answer(&mut r, &request("b", GROUP, next, 0, KEY), 999).unwrap_err(),
            Dropped::RateLimited
        );
        // A new window, a new budget.
        assert!(answer(&mut r, &request("b", GROUP, next + 1, 0, KEY), 1010).is_ok());
    }

    #[test]
    fn a_request_under_another_key_gets_a_bad_mac_answer_under_ours() {
        let mut r = responder();
        let reply = answer(&mut r, &request("b", GROUP, 1, 0x5eed, OTHER), 0).unwrap();
        assert_eq!(reply.status, EchoStatus::BadMac);
        assert_eq!(reply.nonce, 0x5eed);
        // The asking side, holding only the other key, cannot verify that answer.
        let bytes = r
            .handle(
                &request("b", GROUP, 2, 1, OTHER),
                peer_addr(),
                &Keys::from(KEY.to_vec()),
                0,
                NOW,
            )
            .unwrap();
        assert_eq!(
            wire::decode_echo(&bytes, &Keys::from(OTHER.to_vec())).unwrap_err(),
            WireError::BadMac
        );
        assert_eq!(wire::peek_echo(&bytes), Some((EchoKind::Reply, 1)));
    }

    #[test]
    fn wrong_group_and_unknown_sender_are_named() {
        let mut r = responder();
        let reply = answer(&mut r, &request("b", GROUP + 1, 1, 1, KEY), 0).unwrap();
        assert_eq!(reply.status, EchoStatus::OtherGroup);
        assert_eq!(reply.header.group_id, GROUP);
        let reply = answer(&mut r, &request("mallory", GROUP, 1, 1, KEY), 0).unwrap();
        assert_eq!(reply.status, EchoStatus::UnknownNode);
    }

    #[test]
    fn replies_and_garbage_are_dropped() {
        let mut r = responder();
        let mut reply = request("b", GROUP, 1, 1, KEY);
        reply[5] = 2; // kind: reply (the MAC no longer matters, kind is looked at first)
        assert_eq!(answer(&mut r, &reply, 0).unwrap_err(), Dropped::Unexpected);
        assert_eq!(
            answer(&mut r, b"ENIP\x02garbage", 0).unwrap_err(),
            Dropped::Malformed
        );
        let mut stale = request("b", GROUP, 1, 1, KEY);
        stale.truncate(stale.len() - 1);
        assert_eq!(answer(&mut r, &stale, 0).unwrap_err(), Dropped::Malformed);
    }
}
