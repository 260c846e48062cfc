//! The peer part of `enipeer check --preflight`: for every address of every configured peer,
//! ask the peer's daemon for an authenticated echo over the heartbeat path and say what came
//! back, so that a wrong key, a wrong group id or a closed port is found before it matters.
//!
//! Each address gets its own ephemeral socket on the configured bind address (port 0, so a
//! running daemon on the same host is not disturbed), a few attempts with a short timeout, and
//! one verdict ([`Outcome`]). A reply is matched to its request by the random nonce it carries;
//! anything else arriving on the socket is ignored.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use super::transport::{random_incarnation, unix_ms_now};
use super::wire::{self, Echo, EchoKind, EchoStatus, Header, KeyUsed, Keys, WireError};
use crate::config::Settings;
use crate::ids::NodeName;

/// Attempts per address: a single lost datagram must not fail the check.
pub const ATTEMPTS: u32 = 3;
/// Per attempt. Far above any in-VPC round trip, short enough that a silent peer costs about 2 s.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(700);

/// What asking one peer address produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The peer answered, authenticated, same group, under the configured name.
    Ok {
        rtt: Duration,
        /// Which of our keys verified the answer: `Previous` means the peer has not switched to
        /// our current key yet (fine during a rotation).
        key: KeyUsed,
    },
    /// Nothing came back. `refused`: the host said ICMP port unreachable (it is reachable, but
    /// nothing listens on that port).
    NoAnswer {
        refused: bool,
    },
    /// The peer answered, but under a key we do not hold.
    KeyMismatch,
    /// The peer answered under our previous key, saying our request did not verify: it does not
    /// have our current key yet.
    PeerLacksOurKey,
    OtherGroup {
        theirs: u32,
    },
    /// The peer does not list our node name among its peers.
    UnknownToPeer,
    /// The peer answered under another name than the one configured for it.
    WrongName {
        answered_as: String,
    },
    /// The check itself could not run (socket, send).
    Error(String),
}

/// One row of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCheck {
    pub peer: String,
    pub addr: SocketAddr,
    pub outcome: Outcome,
}

impl PeerCheck {
    pub fn ok(&self) -> bool {
        matches!(self.outcome, Outcome::Ok { .. })
    }

    /// One line for humans: the verdict and the most likely causes.
    pub fn detail(&self, group_id: u32) -> String {
        match &self.outcome {
            Outcome::Ok { rtt, key } => format!(
                "answered in {:.1} ms{}",
                rtt.as_secs_f64() * 1000.0,
                match key {
                    KeyUsed::Current => "",
                    KeyUsed::Previous =>
                        " (signed with our previous key: the peer has not switched to the new key yet)",
                }
            ),
            Outcome::NoAnswer { refused: true } => format!(
                "no answer: port {} is closed on the peer (ICMP port unreachable): its agent is \
                 down or listens on another port",
                self.addr.port()
            ),
            Outcome::NoAnswer { refused: false } => format!(
                "no answer: UDP port {} blocked (security group, \
                 network ACL or host firewall, both directions), the peer host or its agent \
                 down, the peer's clock off by more than its max-clock-skew, or the peer runs a \
                 release without echo support",
                self.addr.port()
            ),
            Outcome::KeyMismatch => "the peer answered but its answer fails authentication: the \
                 key files differ (copy the key file, or see key rotation in the README)"
                .to_owned(),
            Outcome::PeerLacksOurKey => "the peer does not have our current key (it answered \
                 under our previous key): install the new key on the peer too"
                .to_owned(),
            Outcome::OtherGroup { theirs } => format!(
                "wrong group id: the peer is in group {theirs}, we are in group {group_id}"
            ),
            Outcome::UnknownToPeer => "the peer does not list this node's name among its \
                 peers: check its [[peer]] name"
                .to_owned(),
            Outcome::WrongName { answered_as } => format!(
                "the peer calls itself `{answered_as}`: rename [[peer]] `{}` or its node.name",
                self.peer
            ),
            Outcome::Error(e) => e.clone(),
        }
    }
}

/// Everything needed to ask; built from the settings, or by tests.
#[derive(Debug, Clone)]
pub struct Asker {
    pub group_id: u32,
    pub me: NodeName,
    /// Our bind address; the check binds it with port 0.
    pub local: IpAddr,
    pub keys: Keys,
    pub attempts: u32,
    pub attempt_timeout: Duration,
}

impl Asker {
    pub fn from_settings(settings: &Settings, keys: Keys) -> Asker {
        Asker {
            group_id: settings.group.id,
            me: settings.node.name.clone(),
            local: settings.heartbeat.bind.ip(),
            keys,
            attempts: ATTEMPTS,
            attempt_timeout: ATTEMPT_TIMEOUT,
        }
    }

    /// Asks every address of every peer, all at once; rows in configuration order.
    pub async fn check_all(&self, peers: &[(NodeName, Vec<SocketAddr>)]) -> Vec<PeerCheck> {
        let asks = peers.iter().flat_map(|(name, addrs)| {
            addrs.iter().map(move |&addr| async move {
                PeerCheck {
                    peer: name.to_string(),
                    addr,
                    outcome: self.check(name, addr).await,
                }
            })
        });
        futures::future::join_all(asks).await
    }

    /// Asks one address of peer `peer`.
    pub async fn check(&self, peer: &str, addr: SocketAddr) -> Outcome {
        let socket = match UdpSocket::bind(SocketAddr::new(self.local, 0)).await {
            Ok(s) => s,
            Err(e) => {
                return Outcome::Error(format!(
                    "cannot bind {}:0 (heartbeat.bind): {e}",
                    self.local
                ))
            }
        };
        report_icmp_errors(&socket, self.local);
        let incarnation = random_incarnation();
        let mut refused = false;
        for seq in 1..=u64::from(self.attempts) {
            let nonce = random_incarnation();
            let request = Echo {
                kind: EchoKind::Request,
                status: EchoStatus::Ok,
                header: Header {
                    group_id: self.group_id,
                    sender: self.me.clone(),
                    incarnation,
                    seq,
                    timestamp_ms: unix_ms_now(),
                },
                nonce,
            };
            let bytes = match wire::encode_echo(&request, self.keys.current()) {
                Ok(b) => b,
                Err(e) => return Outcome::Error(format!("cannot encode the echo request: {e}")),
            };
            let sent_at = Instant::now();
            match socket.send_to(&bytes, addr).await {
                Ok(_) => {}
                // An ICMP error from an earlier attempt can surface here instead of on receive.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    refused = true;
                    continue;
                }
                Err(e) => return Outcome::Error(format!("cannot send to {addr}: {e}")),
            }
            match self.await_reply(&socket, peer, nonce, sent_at).await {
                Wait::Answer(outcome) => return outcome,
                Wait::Refused => refused = true,
                Wait::Timeout => {}
            }
        }
        Outcome::NoAnswer { refused }
    }

    /// Reads the socket until the reply to `nonce` arrives or the attempt times out.
    async fn await_reply(
        &self,
        socket: &UdpSocket,
        peer: &str,
        nonce: u64,
        sent_at: Instant,
    ) -> Wait {
        let deadline = tokio::time::Instant::from_std(sent_at + self.attempt_timeout);
        let mut buf = [0u8; wire::MAX_PACKET + 1];
        // Bounded by the deadline; each datagram that is not our reply costs one iteration.
        loop {
            let got = match tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
                Err(_elapsed) => return Wait::Timeout,
                Ok(got) => got,
            };
            match got {
                Ok((n, _from)) => {
                    if let Some(outcome) = self.judge(&buf[..n], peer, nonce, sent_at) {
                        return Wait::Answer(outcome);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Wait::Refused,
                // Anything else (e.g. a host unreachable report) is treated as silence for this
                // attempt; the next attempt tries again.
                Err(_) => return Wait::Timeout,
            }
        }
    }

    /// What a datagram says about the peer, or None if it is not the reply to `nonce`.
    fn judge(&self, buf: &[u8], peer: &str, nonce: u64, sent_at: Instant) -> Option<Outcome> {
        match wire::peek_echo(buf) {
            Some((EchoKind::Reply, n)) if n == nonce => {}
            _ => return None,
        }
        let (reply, key) = match wire::decode_echo(buf, &self.keys) {
            Ok(got) => got,
            // The nonce is ours, so this is the peer answering, under a key we do not have.
            Err(WireError::BadMac) => return Some(Outcome::KeyMismatch),
            Err(_) => return None,
        };
        let h = &reply.header;
        Some(match reply.status {
            EchoStatus::BadMac => Outcome::PeerLacksOurKey,
            EchoStatus::OtherGroup => Outcome::OtherGroup { theirs: h.group_id },
            EchoStatus::UnknownNode => Outcome::UnknownToPeer,
            EchoStatus::Ok if h.group_id != self.group_id => {
                Outcome::OtherGroup { theirs: h.group_id }
            }
            EchoStatus::Ok if h.sender != peer => Outcome::WrongName {
                answered_as: h.sender.to_string(),
            },
            EchoStatus::Ok => Outcome::Ok {
                rtt: sent_at.elapsed(),
                key,
            },
        })
    }
}

enum Wait {
    Answer(Outcome),
    Refused,
    Timeout,
}

/// Asks the kernel to report ICMP errors on this unconnected socket (IP_RECVERR), so that a
/// closed port shows as "refused" rather than silence. Best effort: without it the check still
/// works and a closed port reads as no answer.
fn report_icmp_errors(socket: &UdpSocket, local: IpAddr) {
    use nix::sys::socket::{setsockopt, sockopt};
    let fd = socket.as_fd();
    let set = match local {
        IpAddr::V4(_) => setsockopt(&fd, sockopt::Ipv4RecvErr, &true),
        IpAddr::V6(_) => setsockopt(&fd, sockopt::Ipv6RecvErr, &true),
    };
    if let Err(e) = set {
        tracing::debug!(error = %e, "cannot enable IP_RECVERR on the preflight socket");
    }
}

/// `enipeer check --preflight`, peer part: prints one line per peer address and returns the exit
/// code (FAILURE when any peer address fails).
pub fn preflight_command(settings: &Settings) -> i32 {
    let keys = match crate::config::keyfile::read_keys(&settings.auth) {
        Ok(k) => k,
        Err(e) => {
            println!("FAIL  peers: cannot read the key: {e}");
            return crate::exit::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("preflight: cannot start the async runtime: {e}");
            return crate::exit::SOFTWARE;
        }
    };
    let peers: Vec<(NodeName, Vec<SocketAddr>)> = settings
        .peers
        .iter()
        .map(|p| (p.name.clone(), p.addresses.clone()))
        .collect();
    let asker = Asker::from_settings(settings, keys);
    let checks = rt.block_on(asker.check_all(&peers));
    for c in &checks {
        println!(
            "{:<4}  peer {} at {}: {}",
            if c.ok() { "ok" } else { "FAIL" },
            c.peer,
            c.addr,
            c.detail(settings.group.id)
        );
    }
    let mut failed: Vec<&str> = Vec::new();
    for c in checks.iter().filter(|c| !c.ok()) {
        if !failed.contains(&c.peer.as_str()) {
            failed.push(&c.peer);
        }
    }
    if failed.is_empty() {
        crate::exit::OK
    } else {
        println!("peer check failed for: {}", failed.join(", "));
        crate::exit::FAILURE
    }
}

#[cfg(test)]
mod tests;
