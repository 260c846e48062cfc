//! The heartbeat socket: one UDP socket, sending signed adverts to every address of every peer
//! and handing back only the ones the [`Acceptor`] believes. Echo requests arriving on it are
//! answered here, by the [`Responder`], and never reach the caller.

use std::io;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::UdpSocket;

use super::echo::Responder;
use super::filter::{Acceptor, RateLimiter, WARN_INTERVAL};
use super::wire::{self, Header, KeyUsed, Keys, WireError, MAX_PACKET};
use crate::core::advert::Advert;
use crate::ids::NodeName;

/// DSCP CS6 (network control) in the TOS byte, so that QoS-aware paths do not queue heartbeats
/// behind bulk traffic.
const TOS_CS6: u32 = 0xC0;

/// Large enough that an oversize datagram is seen as oversize rather than silently cut to size.
const RECV_BUF: usize = 2048;

/// Back-off after a receive error other than an ICMP report, so a persistent error cannot turn
/// the receive loop into a busy loop.
const RECV_ERROR_PAUSE: Duration = Duration::from_millis(20);

/// Why the heartbeat link could not be set up or used.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("cannot bind the heartbeat socket to {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot set up the heartbeat socket: {0}")]
    Socket(#[source] io::Error),
    #[error("the heartbeat socket needs a running tokio runtime")]
    NoRuntime,
    #[error("the shared key is empty")]
    EmptyKey,
    #[error(
        "address {addr} of peer {peer} is not of the same IP family as the local address {local}"
    )]
    AddressFamily {
        peer: NodeName,
        addr: SocketAddr,
        local: SocketAddr,
    },
    #[error("cannot encode a heartbeat: {0}")]
    Encode(#[from] WireError),
}

impl PeerError {
    /// A short stable label for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            PeerError::Bind { .. } => "bind",
            PeerError::Socket(_) => "socket",
            PeerError::NoRuntime => "no-runtime",
            PeerError::EmptyKey => "empty-key",
            PeerError::AddressFamily { .. } => "address-family",
            PeerError::Encode(_) => "encode",
        }
    }
}

/// What one call to [`PeerLink::recv`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    Accepted {
        peer: NodeName,
        advert: Advert,
        incarnation: u64,
    },
    /// Already counted and (rate-limited) logged; returned so the caller can react if it wants.
    Rejected {
        reason: &'static str,
        from: SocketAddr,
    },
}

/// A fresh random incarnation for this daemon start.
pub fn random_incarnation() -> u64 {
    match getrandom::u64() {
        Ok(n) => n,
        Err(e) => {
            // Uniqueness across restarts is what matters, not secrecy (packets are signed), so
            // the clock and pid are an acceptable fallback.
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            tracing::warn!(error = %e, "no OS randomness, deriving the incarnation from the clock");
            nanos ^ (u64::from(std::process::id()) << 40)
        }
    }
}

/// Wall-clock Unix time in milliseconds (0 if the clock is before 1970).
pub(super) fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Every (peer, address) pair, checked: addresses this socket can reach. (Names always fit the
/// wire format: a [`NodeName`] is at most as long as a packet's strings.)
fn flatten_targets(
    peers: &[(NodeName, Vec<SocketAddr>)],
    local: SocketAddr,
) -> Result<Vec<(NodeName, SocketAddr)>, PeerError> {
    let mut targets = Vec::new();
    for (peer, addrs) in peers {
        for &addr in addrs {
            // A v4 socket cannot reach a v6 address and vice versa: every heartbeat would
            // fail, so refuse at startup instead.
            if addr.is_ipv4() != local.is_ipv4() {
                return Err(PeerError::AddressFamily {
                    peer: peer.clone(),
                    addr,
                    local,
                });
            }
            targets.push((peer.clone(), addr));
        }
    }
    Ok(targets)
}

impl PeerLink {
    /// A reload re-read the key files: sign with the new current key from now on, accept the
    /// previous one if configured (a key rotation without a failover).
    pub fn set_keys(&mut self, keys: impl Into<Keys>) {
        self.keys = keys.into();
    }
}

/// The authenticated heartbeat link to the configured peers.
#[derive(Debug)]
pub struct PeerLink {
    socket: UdpSocket,
    local: SocketAddr,
    group_id: u32,
    me: NodeName,
    incarnation: u64,
    keys: Keys,
    /// Last sequence number sent; the first packet carries 1.
    seq: u64,
    /// Every (peer, address) pair, flattened once so a send is a plain loop.
    targets: Vec<(NodeName, SocketAddr)>,
    acceptor: Acceptor,
    responder: Responder,
    /// Heartbeats accepted that were signed with the previous key: while this grows, some peer
    /// has not switched to the current key yet.
    accepted_previous_key: u64,
    /// For I/O error warnings, on a monotonic clock (they have no wall-clock dependence).
    io_limiter: RateLimiter,
    started: Instant,
    sent: u64,
    send_errors: u64,
    recv_errors: u64,
    buf: Box<[u8; RECV_BUF]>,
}

impl PeerLink {
    /// Creates and binds the socket. Must be called inside a tokio runtime.
    pub fn bind(
        local: SocketAddr,
        group_id: u32,
        me: NodeName,
        peers: Vec<(NodeName, Vec<SocketAddr>)>,
        key: impl Into<Keys>,
        max_skew: Duration,
        incarnation: u64,
    ) -> Result<PeerLink, PeerError> {
        let socket = Socket::new(Domain::for_address(local), Type::DGRAM, Some(Protocol::UDP))
            .map_err(PeerError::Socket)?;
        // Off so that a second daemon on the same address fails loudly instead of sharing it.
        socket.set_reuse_address(false).map_err(PeerError::Socket)?;
        socket
            .bind(&local.into())
            .map_err(|source| PeerError::Bind {
                addr: local,
                source,
            })?;
        PeerLink::from_std(
            socket.into(),
            group_id,
            me,
            peers,
            key,
            max_skew,
            incarnation,
        )
    }

    /// Wraps an already bound socket (tests and socket activation bind first, then learn the
    /// address). Sets non-blocking mode and the TOS itself. Must be called inside a tokio runtime.
    pub fn from_std(
        socket: StdUdpSocket,
        group_id: u32,
        me: NodeName,
        peers: Vec<(NodeName, Vec<SocketAddr>)>,
        key: impl Into<Keys>,
        max_skew: Duration,
        incarnation: u64,
    ) -> Result<PeerLink, PeerError> {
        let keys = key.into();
        if keys.current().is_empty() {
            return Err(PeerError::EmptyKey);
        }
        let local = socket.local_addr().map_err(PeerError::Socket)?;
        let targets = flatten_targets(&peers, local)?;

        let sock = SockRef::from(&socket);
        // Best effort: some environments refuse it, and heartbeats still work without it.
        let tos = match local {
            SocketAddr::V4(_) => sock.set_tos_v4(TOS_CS6),
            // set_tclass_v6 needs socket2's "all" feature, which tokio's "net" already enables.
            SocketAddr::V6(_) => sock.set_tclass_v6(TOS_CS6),
        };
        if let Err(e) = tos {
            tracing::debug!(error = %e, "cannot mark heartbeats as network control (CS6)");
        }
        socket.set_nonblocking(true).map_err(PeerError::Socket)?;

        if tokio::runtime::Handle::try_current().is_err() {
            return Err(PeerError::NoRuntime);
        }
        let socket = UdpSocket::from_std(socket).map_err(PeerError::Socket)?;

        let responder = Responder::new(group_id, &me, incarnation, &peers, max_skew);
        let acceptor = Acceptor::new(
            group_id,
            me.clone(),
            peers.into_iter().map(|(name, _)| name),
            max_skew,
        );
        tracing::info!(
            %local, group_id, node = %me, incarnation, peers = targets.len(),
            previous_key = keys.has_previous(), "heartbeat link up"
        );
        Ok(PeerLink {
            socket,
            local,
            group_id,
            me,
            incarnation,
            keys,
            seq: 0,
            targets,
            acceptor,
            responder,
            accepted_previous_key: 0,
            io_limiter: RateLimiter::new(WARN_INTERVAL),
            started: Instant::now(),
            sent: 0,
            send_errors: 0,
            recv_errors: 0,
            buf: Box::new([0; RECV_BUF]),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    fn mono_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Signs the advert with the next sequence number and sends it to every peer address. A
    /// failed send to one address is logged and counted; only an unencodable advert is an error.
    pub async fn send(&mut self, advert: &Advert) -> Result<(), PeerError> {
        self.seq += 1;
        let header = Header {
            group_id: self.group_id,
            sender: self.me.clone(),
            incarnation: self.incarnation,
            seq: self.seq,
            timestamp_ms: unix_ms_now(),
        };
        let bytes = wire::encode_parts(&header, advert, self.keys.current())?;
        for (peer, addr) in &self.targets {
            match self.socket.send_to(&bytes, addr).await {
                Ok(_) => self.sent += 1,
                Err(e) => {
                    self.send_errors += 1;
                    let now = self.mono_ms();
                    if let Some(suppressed) = self.io_limiter.allow("send-error", now) {
                        tracing::warn!(%peer, %addr, error = %e, suppressed, "cannot send heartbeat");
                    } else {
                        tracing::debug!(%peer, %addr, error = %e, "cannot send heartbeat");
                    }
                }
            }
        }
        Ok(())
    }

    /// Waits for the next datagram and says what became of it. Transient socket errors are
    /// absorbed here, so this only ever returns a datagram's fate.
    ///
    /// Cancel-safe: the only await points are `recv_from` (itself cancel-safe) and an error
    /// back-off; the acceptor's state changes only after a datagram has been fully received, in
    /// the same poll that returns it.
    pub async fn recv(&mut self) -> Received {
        loop {
            let (n, from) = match self.socket.recv_from(&mut self.buf[..]).await {
                Ok(got) => got,
                // Linux reports an ICMP port unreachable for an earlier send on the next socket
                // call: it only means a peer is not listening right now.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::trace!("ICMP port unreachable from a peer");
                    continue;
                }
                Err(e) => {
                    self.recv_errors += 1;
                    let now = self.mono_ms();
                    if let Some(suppressed) = self.io_limiter.allow("recv-error", now) {
                        tracing::warn!(error = %e, suppressed, "heartbeat receive error");
                    }
                    if e.kind() != io::ErrorKind::Interrupted {
                        tokio::time::sleep(RECV_ERROR_PAUSE).await;
                    }
                    continue;
                }
            };
            let now = unix_ms_now();
            if n <= MAX_PACKET && wire::is_echo(&self.buf[..n]) {
                self.answer_echo(n, from, now);
                continue;
            }
            let datagram = &self.buf[..n];
            let (packet, key_used) = match wire::decode_keys(datagram, &self.keys) {
                Ok(got) => got,
                Err(e) => {
                    // recv_from reports at most the buffer size: a full buffer means the
                    // datagram was larger still.
                    let e = if n > MAX_PACKET {
                        WireError::Oversize { len: n }
                    } else {
                        e
                    };
                    self.acceptor.record_decode_error(&e, from, now);
                    return Received::Rejected {
                        reason: e.kind(),
                        from,
                    };
                }
            };
            return match self.acceptor.accept_from(&packet, Some(from), now) {
                Ok(()) => {
                    if key_used == KeyUsed::Previous {
                        self.accepted_previous_key += 1;
                    }
                    tracing::trace!(peer = %packet.header.sender, seq = packet.header.seq, %from, ?key_used, "heartbeat");
                    Received::Accepted {
                        peer: packet.header.sender,
                        advert: packet.advert,
                        incarnation: packet.header.incarnation,
                    }
                }
                Err(reason) => Received::Rejected {
                    reason: reason.as_str(),
                    from,
                },
            };
        }
    }

    /// Answers (or drops) the echo datagram in the first `n` bytes of the buffer. Sends with
    /// `try_send_to`, so that `recv` stays cancel-safe: a reply that would block is dropped, as
    /// the network could have dropped it.
    fn answer_echo(&mut self, n: usize, from: SocketAddr, now_unix_ms: u64) {
        let now_mono = self.mono_ms();
        match self
            .responder
            .handle(&self.buf[..n], from, &self.keys, now_mono, now_unix_ms)
        {
            Ok(reply) => {
                if let Err(e) = self.socket.try_send_to(&reply, from) {
                    self.send_errors += 1;
                    tracing::debug!(%from, error = %e, "cannot send an echo reply");
                }
            }
            Err(why) => {
                let reason = why.as_str();
                if let Some(suppressed) = self.io_limiter.allow("echo-dropped", now_mono) {
                    tracing::warn!(%from, reason, suppressed, "dropped an echo request");
                } else {
                    tracing::debug!(%from, reason, "dropped an echo request");
                }
            }
        }
    }

    /// Echo requests answered since start (not a counter of [`PeerLink::counters`], whose
    /// non-`accepted` rows are read as rejections).
    pub fn echo_answered(&self) -> u64 {
        self.responder.answered()
    }

    /// The acceptor's counters plus this link's own counters, sorted by name.
    /// `accepted-previous-key` counts heartbeats that verified only under the previous key
    /// (a rotation is complete once it stops growing on every node); `echo-dropped` counts echo
    /// datagrams that got no answer. Echoes answered are not a rejection and are only logged.
    pub fn counters(&self) -> Vec<(String, u64)> {
        let mut all = self.acceptor.counters();
        all.extend([
            ("sent".to_owned(), self.sent),
            ("send-error".to_owned(), self.send_errors),
            ("recv-error".to_owned(), self.recv_errors),
            (
                "accepted-previous-key".to_owned(),
                self.accepted_previous_key,
            ),
            ("echo-dropped".to_owned(), self.responder.dropped()),
        ]);
        all.sort();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::advert::{HolderBelief, Role, YieldMsg};
    use crate::peer::wire::Packet;

    const KEY: &[u8] = b"test key, 32 bytes long........";
    const GROUP: u32 = 42;
    const SKEW: Duration = Duration::from_secs(30);
    /// A guard against hanging forever, not a timing assertion.
    const GUARD: Duration = Duration::from_secs(10);

    fn advert(role: Role, priority: u8) -> Advert {
        Advert {
            role,
            priority,
            instance_id: "i-0123456789abcdef0".parse().unwrap(),
            holder: HolderBelief::Nobody,
            yield_msg: YieldMsg::None,
            stopping_ms: 0,
            wants_master: false,
            healthy: true,
            maintenance: false,
        }
    }

    fn loopback() -> StdUdpSocket {
        StdUdpSocket::bind("127.0.0.1:0").unwrap()
    }

    /// Two links that know each other's (port 0) addresses.
    fn pair() -> (PeerLink, PeerLink) {
        let (sa, sb) = (loopback(), loopback());
        let (aa, ab) = (sa.local_addr().unwrap(), sb.local_addr().unwrap());
        let a = PeerLink::from_std(
            sa,
            GROUP,
            "a".parse().unwrap(),
            vec![("b".parse().unwrap(), vec![ab])],
            KEY.to_vec(),
            SKEW,
            1,
        )
        .unwrap();
        let b = PeerLink::from_std(
            sb,
            GROUP,
            "b".parse().unwrap(),
            vec![("a".parse().unwrap(), vec![aa])],
            KEY.to_vec(),
            SKEW,
            2,
        )
        .unwrap();
        (a, b)
    }

    async fn recv(link: &mut PeerLink) -> Received {
        tokio::time::timeout(GUARD, link.recv())
            .await
            .expect("nothing received")
    }

    fn counter(link: &PeerLink, name: &str) -> u64 {
        link.counters()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no counter {name}"))
    }

    #[tokio::test]
    async fn bind_reports_its_address() {
        let link = PeerLink::bind(
            "127.0.0.1:0".parse().unwrap(),
            GROUP,
            "a".parse().unwrap(),
            vec![],
            KEY.to_vec(),
            SKEW,
            random_incarnation(),
        )
        .unwrap();
        let addr = link.local_addr();
        assert!(addr.ip().is_loopback());
        assert_ne!(addr.port(), 0);
        // Without SO_REUSEADDR a second bind to the same address fails.
        let err = PeerLink::bind(
            addr,
            GROUP,
            "a".parse().unwrap(),
            vec![],
            KEY.to_vec(),
            SKEW,
            1,
        )
        .unwrap_err();
        assert_eq!(err.kind(), "bind");
    }

    #[tokio::test]
    async fn refuses_bad_setup() {
        let err = PeerLink::from_std(
            loopback(),
            GROUP,
            "a".parse().unwrap(),
            vec![],
            vec![],
            SKEW,
            1,
        )
        .unwrap_err();
        assert_eq!(err.kind(), "empty-key");
        let err = PeerLink::from_std(
            loopback(),
            GROUP,
            "a".parse().unwrap(),
            vec![("b".parse().unwrap(), vec!["[::1]:9".parse().unwrap()])],
            KEY.to_vec(),
            SKEW,
            1,
        )
        .unwrap_err();
        assert_eq!(err.kind(), "address-family");
    }

    #[test]
    fn refuses_without_runtime() {
        let err = PeerLink::from_std(
            loopback(),
            GROUP,
            "a".parse().unwrap(),
            vec![],
            KEY.to_vec(),
            SKEW,
            1,
        )
        .unwrap_err();
        assert_eq!(err.kind(), "no-runtime");
    }

    #[tokio::test]
    async fn two_links_exchange_adverts() {
        let (mut a, mut b) = pair();
        let from_a = advert(Role::Master, 200);
        a.send(&from_a).await.unwrap();
        assert_eq!(
            recv(&mut b).await,
            Received::Accepted {
                peer: "a".parse().unwrap(),
                advert: from_a,
                incarnation: 1,
            }
        );
        let from_b = Advert {
            wants_master: true,
            healthy: true,
            maintenance: false,
            yield_msg: YieldMsg::Accept {
                id: 3,
                to: "a".parse().unwrap(),
            },
            ..advert(Role::Backup, 100)
        };
        b.send(&from_b).await.unwrap();
        assert_eq!(
            recv(&mut a).await,
            Received::Accepted {
                peer: "b".parse().unwrap(),
                advert: from_b,
                incarnation: 2,
            }
        );
        // Successive sends carry increasing sequence numbers, so both are accepted.
        a.send(&advert(Role::Master, 200)).await.unwrap();
        assert!(matches!(recv(&mut b).await, Received::Accepted { .. }));
        assert_eq!(counter(&a, "sent"), 2);
        assert_eq!(counter(&b, "accepted"), 2);
    }

    /// A packet as node "a" (incarnation 1) would send it, signed with `key`.
    fn from_a(seq: u64, advert: Advert, key: &[u8]) -> Vec<u8> {
        let header = Header {
            group_id: GROUP,
            sender: "a".parse().unwrap(),
            incarnation: 1,
            seq,
            timestamp_ms: unix_ms_now(),
        };
        wire::encode(&Packet { header, advert }, key).unwrap()
    }

    #[tokio::test]
    async fn garbage_and_forgeries_are_counted_and_the_link_survives() {
        let (mut a, mut b) = pair();
        let attacker = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let target = b.local_addr();

        attacker.send_to(b"hello", target).await.unwrap();
        assert_eq!(
            recv(&mut b).await,
            Received::Rejected {
                reason: "truncated",
                from: attacker.local_addr().unwrap(),
            }
        );

        attacker.send_to(&[0u8; 600], target).await.unwrap();
        assert!(matches!(
            recv(&mut b).await,
            Received::Rejected {
                reason: "oversize",
                ..
            }
        ));

        // A well-formed packet claiming to be "a", signed with the wrong key.
        let forged = from_a(1_000, advert(Role::Master, 255), b"not the key");
        attacker.send_to(&forged, target).await.unwrap();
        assert!(matches!(
            recv(&mut b).await,
            Received::Rejected {
                reason: "bad-mac",
                ..
            }
        ));

        // A recorded genuine packet, replayed.
        let genuine = advert(Role::Master, 200);
        a.send(&genuine).await.unwrap();
        assert!(matches!(recv(&mut b).await, Received::Accepted { .. }));
        let replay = from_a(1, genuine.clone(), KEY);
        attacker.send_to(&replay, target).await.unwrap();
        assert!(matches!(
            recv(&mut b).await,
            Received::Rejected {
                reason: "replay",
                ..
            }
        ));

        // Still working.
        a.send(&genuine).await.unwrap();
        assert_eq!(
            recv(&mut b).await,
            Received::Accepted {
                peer: "a".parse().unwrap(),
                advert: genuine,
                incarnation: 1,
            }
        );
        assert_eq!(counter(&b, "truncated"), 1);
        assert_eq!(counter(&b, "oversize"), 1);
        assert_eq!(counter(&b, "bad-mac"), 1);
        assert_eq!(counter(&b, "replay"), 1);
        assert_eq!(counter(&b, "accepted"), 2);
    }

    #[tokio::test]
    async fn icmp_refused_does_not_break_recv() {
        // "b" is a peer whose port has nobody listening: sends provoke ICMP port unreachable.
        // Whether the kernel surfaces it as ECONNREFUSED depends on IP_RECVERR and the platform;
        // either way a dead peer must not stop heartbeats from the live one.
        let dead = loopback();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        let (sa, sc) = (loopback(), loopback());
        let ac = sc.local_addr().unwrap();
        let mut a = PeerLink::from_std(
            sa,
            GROUP,
            "a".parse().unwrap(),
            vec![
                ("b".parse().unwrap(), vec![dead_addr]),
                ("c".parse().unwrap(), vec![ac]),
            ],
            KEY.to_vec(),
            SKEW,
            1,
        )
        .unwrap();
        let mut c = PeerLink::from_std(
            sc,
            GROUP,
            "c".parse().unwrap(),
            vec![("a".parse().unwrap(), vec![a.local_addr()])],
            KEY.to_vec(),
            SKEW,
            3,
        )
        .unwrap();
        for _ in 0..3 {
            a.send(&advert(Role::Master, 1)).await.unwrap();
        }
        c.send(&advert(Role::Backup, 1)).await.unwrap();
        assert_eq!(
            recv(&mut a).await,
            Received::Accepted {
                peer: "c".parse().unwrap(),
                advert: advert(Role::Backup, 1),
                incarnation: 3,
            }
        );
    }

    #[tokio::test]
    async fn recv_is_cancel_safe_in_select() {
        let (mut a, mut b) = pair();
        // Poll recv and then drop it a few times, as a select! loop with a timer would.
        for _ in 0..3 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                r = b.recv() => panic!("nothing was sent yet, got {r:?}"),
            }
        }
        a.send(&advert(Role::Master, 9)).await.unwrap();
        assert!(matches!(recv(&mut b).await, Received::Accepted { .. }));
    }

    /// "a" mid-rotation: signs with NEW, accepts OLD too; "b" has not rotated yet.
    fn rotating_pair() -> (PeerLink, PeerLink) {
        const NEW: &[u8] = b"the new key after the rotation..";
        let (sa, sb) = (loopback(), loopback());
        let (aa, ab) = (sa.local_addr().unwrap(), sb.local_addr().unwrap());
        let a = PeerLink::from_std(
            sa,
            GROUP,
            "a".parse().unwrap(),
            vec![("b".parse().unwrap(), vec![ab])],
            Keys::new(NEW.to_vec(), Some(KEY.to_vec())),
            SKEW,
            1,
        )
        .unwrap();
        let b = PeerLink::from_std(
            sb,
            GROUP,
            "b".parse().unwrap(),
            vec![("a".parse().unwrap(), vec![aa])],
            KEY.to_vec(),
            SKEW,
            2,
        )
        .unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn previous_key_heartbeats_are_accepted_and_counted() {
        let (mut a, mut b) = rotating_pair();
        assert_eq!(counter(&a, "accepted-previous-key"), 0);
        for _ in 0..2 {
            b.send(&advert(Role::Master, 9)).await.unwrap();
            assert!(matches!(recv(&mut a).await, Received::Accepted { .. }));
        }
        assert_eq!(counter(&a, "accepted-previous-key"), 2);
        // "a" signs with the new key only, which "b" does not have yet.
        a.send(&advert(Role::Backup, 1)).await.unwrap();
        assert!(matches!(
            recv(&mut b).await,
            Received::Rejected {
                reason: "bad-mac",
                ..
            }
        ));
        assert_eq!(counter(&b, "accepted-previous-key"), 0);
    }

    #[tokio::test]
    async fn echoes_are_answered_inside_recv_and_never_returned() {
        let (mut a, mut b) = pair();
        let asker = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let request = wire::Echo {
            kind: wire::EchoKind::Request,
            status: wire::EchoStatus::Ok,
            header: Header {
                group_id: GROUP,
                sender: "a".parse().unwrap(),
                incarnation: 99,
                seq: 1,
                timestamp_ms: unix_ms_now(),
            },
            nonce: 4242,
        };
        let bytes = wire::encode_echo(&request, KEY).unwrap();
        asker.send_to(&bytes, b.local_addr()).await.unwrap();
        // The same request again: a replay, dropped.
        asker.send_to(&bytes, b.local_addr()).await.unwrap();
        // A stranger's address (127.0.0.2 is loopback but not a configured peer address).
        let stranger = tokio::net::UdpSocket::bind("127.0.0.2:0").await;
        if let Ok(s) = &stranger {
            s.send_to(&bytes, b.local_addr()).await.unwrap();
        }
        a.send(&advert(Role::Master, 5)).await.unwrap();
        // The first thing recv returns is the heartbeat; the echoes were handled on the way.
        assert!(matches!(recv(&mut b).await, Received::Accepted { .. }));
        let mut buf = [0u8; 512];
        let (n, from) = tokio::time::timeout(GUARD, asker.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(from, b.local_addr());
        assert_eq!(n, bytes.len());
        let (reply, _) = wire::decode_echo(&buf[..n], &Keys::from(KEY.to_vec())).unwrap();
        assert_eq!(reply.nonce, 4242);
        assert_eq!(reply.header.sender, "b");
        assert_eq!(b.echo_answered(), 1);
        let dropped = if stranger.is_ok() { 2 } else { 1 };
        assert_eq!(counter(&b, "echo-dropped"), dropped);
        // Echoes do not touch the heartbeat counters.
        assert_eq!(counter(&b, "replay"), 0);
        assert_eq!(counter(&b, "accepted"), 1);
    }

    #[test]
    fn incarnations_differ() {
        assert_ne!(random_incarnation(), random_incarnation());
    }
}
