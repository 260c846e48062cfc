//! The heartbeat wire format, version 1: hand-written big-endian framing of a [`Header`] and an
//! [`Advert`], authenticated with HMAC-SHA256 under the shared key.
//!
//! Layout (all integers big-endian, strings are a u8 length then UTF-8, at most 32 bytes):
//!
//! ```text
//! "ENIP" | version u8 = 1
//! group id u32 | sender string | incarnation u64 | sequence u64 | timestamp (Unix ms) u64
//! role u8 | priority u8 | instance id string
//! holder: tag u8 (0 unknown, 1 nobody, 2 instance + string)
//! yield:  tag u8 (0 none, 1 offer, 2 accept, 3 reject, 4 released; 1-4 then id u32 + string)
//! stopping_ms u32 | flags u8 (bit 0 wants_master, bit 1 unhealthy, bit 2 maintenance, the rest
//! must be 0)
//! HMAC-SHA256 (32 bytes) over everything before it
//! ```
//!
//! Decoding authenticates before it interprets: nothing but the fixed preamble is looked at until
//! the MAC has been verified, so a peer without the key cannot reach the parser with crafted input.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::core::advert::{Advert, HolderBelief, Role, YieldMsg};

pub const MAGIC: [u8; 4] = *b"ENIP";
pub const VERSION: u8 = 1;
/// Far above what a valid packet can reach (about 210 bytes), and small enough never to be
/// fragmented on any path.
pub const MAX_PACKET: usize = 512;
/// Longest node name, instance id or yield target the format carries.
pub const MAX_STR: usize = 32;
pub const MAC_LEN: usize = 32;

const PREAMBLE_LEN: usize = MAGIC.len() + 1;
/// The body with every string empty and both tagged fields at their shortest.
const MIN_BODY_LEN: usize = 4 + 1 + 8 + 8 + 8 + 1 + 1 + 1 + 1 + 1 + 4 + 1;
/// The shortest byte string that can be a valid packet.
pub const MIN_PACKET: usize = PREAMBLE_LEN + MIN_BODY_LEN + MAC_LEN;

const FLAG_WANTS_MASTER: u8 = 0x01;
const FLAG_UNHEALTHY: u8 = 0x02;
const FLAG_MAINTENANCE: u8 = 0x04;

type HmacSha256 = Hmac<Sha256>;

/// Who sent a heartbeat, and where it sits in that sender's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub group_id: u32,
    pub sender: String,
    /// Random per daemon start, so sequence numbers can restart at 1 without looking like replays.
    pub incarnation: u64,
    pub seq: u64,
    pub timestamp_ms: u64,
}

/// One heartbeat as it travels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub header: Header,
    pub advert: Advert,
}

/// Why bytes could not be turned into a [`Packet`], or a packet into bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// `len` is a lower bound when the receive buffer truncated the datagram.
    #[error("packet of {len} bytes exceeds the {MAX_PACKET}-byte limit")]
    Oversize { len: usize },
    #[error(
        "packet of {len} bytes is shorter than the smallest valid packet ({MIN_PACKET} bytes)"
    )]
    Truncated { len: usize },
    #[error("not an enipeer packet (bad magic)")]
    BadMagic,
    #[error("unsupported protocol version {0} (this build speaks {VERSION})")]
    BadVersion(u8),
    #[error("authentication failed: wrong key or corrupted packet")]
    BadMac,
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    #[error("{field} is {len} bytes long; at most {MAX_STR} fit in a packet")]
    TooLong { field: &'static str, len: usize },
    #[error("the key cannot be used for HMAC-SHA256")]
    BadKey,
}

impl WireError {
    /// A short stable label for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            WireError::Oversize { .. } => "oversize",
            WireError::Truncated { .. } => "truncated",
            WireError::BadMagic => "bad-magic",
            WireError::BadVersion(_) => "bad-version",
            WireError::BadMac => "bad-mac",
            WireError::Malformed(_) => "malformed",
            WireError::TooLong { .. } => "too-long",
            WireError::BadKey => "bad-key",
        }
    }
}

fn new_mac(key: &[u8]) -> Result<HmacSha256, WireError> {
    // HMAC accepts keys of any length, so this cannot fail today; the error path only keeps a
    // future change of primitive from turning into a panic.
    <HmacSha256 as Mac>::new_from_slice(key).map_err(|_| WireError::BadKey)
}

fn put_str(out: &mut Vec<u8>, field: &'static str, s: &str) -> Result<(), WireError> {
    let len = s.len();
    if len > MAX_STR {
        return Err(WireError::TooLong { field, len });
    }
    // Cannot truncate: checked against MAX_STR just above.
    out.push(len as u8);
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// Frames and signs a packet.
pub fn encode(p: &Packet, key: &[u8]) -> Result<Vec<u8>, WireError> {
    encode_parts(&p.header, &p.advert, key)
}

/// [`encode`] without needing an owned [`Packet`], so the sender does not clone its advert.
pub(crate) fn encode_parts(h: &Header, a: &Advert, key: &[u8]) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);

    out.extend_from_slice(&h.group_id.to_be_bytes());
    put_str(&mut out, "sender name", &h.sender)?;
    out.extend_from_slice(&h.incarnation.to_be_bytes());
    out.extend_from_slice(&h.seq.to_be_bytes());
    out.extend_from_slice(&h.timestamp_ms.to_be_bytes());

    out.push(a.role.code());
    out.push(a.priority);
    put_str(&mut out, "instance id", &a.instance_id)?;
    match &a.holder {
        HolderBelief::Unknown => out.push(0),
        HolderBelief::Nobody => out.push(1),
        HolderBelief::Instance(id) => {
            out.push(2);
            put_str(&mut out, "holder instance id", id)?;
        }
    }
    let (tag, rest) = match &a.yield_msg {
        YieldMsg::None => (0, None),
        YieldMsg::Offer { id, to } => (1, Some((id, to))),
        YieldMsg::Accept { id, to } => (2, Some((id, to))),
        YieldMsg::Reject { id, to } => (3, Some((id, to))),
        YieldMsg::Released { id, to } => (4, Some((id, to))),
    };
    out.push(tag);
    if let Some((id, to)) = rest {
        out.extend_from_slice(&id.to_be_bytes());
        put_str(&mut out, "yield target", to)?;
    }
    out.extend_from_slice(&a.stopping_ms.to_be_bytes());
    // Unhealthy rather than healthy as the bit, so a healthy node's packets stay what a node
    // from before health checks accepts (it rejects unknown bits).
    let mut flags = 0;
    if a.wants_master {
        flags |= FLAG_WANTS_MASTER;
    }
    if !a.healthy {
        flags |= FLAG_UNHEALTHY;
    }
    if a.maintenance {
        flags |= FLAG_MAINTENANCE;
    }
    out.push(flags);

    let mut mac = new_mac(key)?;
    mac.update(&out);
    out.extend_from_slice(&mac.finalize().into_bytes());

    if out.len() > MAX_PACKET {
        return Err(WireError::Oversize { len: out.len() });
    }
    Ok(out)
}

/// Checks, authenticates and parses one datagram.
pub fn decode(buf: &[u8], key: &[u8]) -> Result<Packet, WireError> {
    let len = buf.len();
    if len > MAX_PACKET {
        return Err(WireError::Oversize { len });
    }
    if len < MIN_PACKET {
        return Err(WireError::Truncated { len });
    }
    if buf[..MAGIC.len()] != MAGIC {
        return Err(WireError::BadMagic);
    }
    let version = buf[MAGIC.len()];
    if version != VERSION {
        return Err(WireError::BadVersion(version));
    }

    let (signed, tag) = buf.split_at(len - MAC_LEN);
    let mut mac = new_mac(key)?;
    mac.update(signed);
    // verify_slice compares in constant time, so timing reveals nothing about the expected tag.
    mac.verify_slice(tag).map_err(|_| WireError::BadMac)?;

    let mut r = Reader {
        buf: &signed[PREAMBLE_LEN..],
    };
    let header = Header {
        group_id: r.u32()?,
        sender: r.string()?,
        incarnation: r.u64()?,
        seq: r.u64()?,
        timestamp_ms: r.u64()?,
    };
    let role = Role::from_code(r.u8()?).ok_or(WireError::Malformed("unknown role code"))?;
    let priority = r.u8()?;
    let instance_id = r.string()?;
    let holder = match r.u8()? {
        0 => HolderBelief::Unknown,
        1 => HolderBelief::Nobody,
        2 => HolderBelief::Instance(r.string()?),
        _ => return Err(WireError::Malformed("unknown holder tag")),
    };
    let yield_msg = match r.u8()? {
        0 => YieldMsg::None,
        tag @ 1..=4 => {
            let id = r.u32()?;
            let to = r.string()?;
            match tag {
                1 => YieldMsg::Offer { id, to },
                2 => YieldMsg::Accept { id, to },
                3 => YieldMsg::Reject { id, to },
                _ => YieldMsg::Released { id, to },
            }
        }
        _ => return Err(WireError::Malformed("unknown yield tag")),
    };
    let stopping_ms = r.u32()?;
    let flags = r.u8()?;
    if flags & !(FLAG_WANTS_MASTER | FLAG_UNHEALTHY | FLAG_MAINTENANCE) != 0 {
        return Err(WireError::Malformed("reserved flag bits set"));
    }
    if !r.buf.is_empty() {
        return Err(WireError::Malformed("trailing bytes"));
    }
    Ok(Packet {
        header,
        advert: Advert {
            role,
            priority,
            instance_id,
            holder,
            yield_msg,
            stopping_ms,
            wants_master: flags & FLAG_WANTS_MASTER != 0,
            healthy: flags & FLAG_UNHEALTHY == 0,
            maintenance: flags & FLAG_MAINTENANCE != 0,
        },
    })
}

/// A cursor over the authenticated body. Running short here means the sender framed it wrongly
/// (the length is authentic), hence `Malformed` rather than `Truncated`.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Malformed("field runs past the end"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String, WireError> {
        let len = usize::from(self.u8()?);
        if len > MAX_STR {
            return Err(WireError::Malformed("string longer than 32 bytes"));
        }
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| WireError::Malformed("string is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn header() -> Header {
        Header {
            group_id: 0xdead_beef,
            sender: "node-a".into(),
            incarnation: 0x0102_0304_0506_0708,
            seq: 42,
            timestamp_ms: 1_700_000_000_123,
        }
    }

    fn advert() -> Advert {
        Advert {
            role: Role::Master,
            priority: 150,
            instance_id: "i-0123456789abcdef0".into(),
            holder: HolderBelief::Instance("i-0123456789abcdef0".into()),
            yield_msg: YieldMsg::Offer {
                id: 7,
                to: "node-b".into(),
            },
            stopping_ms: 5000,
            wants_master: true,
            healthy: false,
            maintenance: true,
        }
    }

    fn packet() -> Packet {
        Packet {
            header: header(),
            advert: advert(),
        }
    }

    /// Re-signs a hand-edited packet, so tests can reach the parser past the MAC.
    fn resign(mut body: Vec<u8>) -> Vec<u8> {
        let mut mac = new_mac(KEY).unwrap();
        mac.update(&body);
        body.extend_from_slice(&mac.finalize().into_bytes());
        body
    }

    fn unsigned(p: &Packet) -> Vec<u8> {
        let mut b = encode(p, KEY).unwrap();
        b.truncate(b.len() - MAC_LEN);
        b
    }

    #[test]
    fn round_trips_every_variant() {
        let roles = [
            Role::Starting,
            Role::Backup,
            Role::Claiming,
            Role::Master,
            Role::Releasing,
            Role::Fault,
        ];
        let holders = [
            HolderBelief::Unknown,
            HolderBelief::Nobody,
            HolderBelief::Instance("i-0abc".into()),
            HolderBelief::Instance(String::new()),
        ];
        let to = "n".repeat(MAX_STR);
        let yields = [
            YieldMsg::None,
            YieldMsg::Offer {
                id: 1,
                to: to.clone(),
            },
            YieldMsg::Accept {
                id: u32::MAX,
                to: "b".into(),
            },
            YieldMsg::Reject {
                id: 0,
                to: "ü".into(),
            },
            YieldMsg::Released {
                id: 99,
                to: String::new(),
            },
        ];
        for role in roles {
            for holder in &holders {
                for y in &yields {
                    for wants_master in [false, true] {
                        let p = Packet {
                            header: Header {
                                sender: "é".repeat(16),
                                seq: u64::MAX,
                                ..header()
                            },
                            advert: Advert {
                                role,
                                holder: holder.clone(),
                                yield_msg: y.clone(),
                                wants_master,
                                healthy: !wants_master,
                                maintenance: wants_master,
                                stopping_ms: u32::MAX,
                                ..advert()
                            },
                        };
                        let bytes = encode(&p, KEY).unwrap();
                        assert!(bytes.len() <= MAX_PACKET);
                        assert_eq!(decode(&bytes, KEY).unwrap(), p);
                    }
                }
            }
        }
    }

    #[test]
    fn layout_is_big_endian_and_stable() {
        let bytes = encode(&packet(), KEY).unwrap();
        assert_eq!(&bytes[..5], b"ENIP\x01");
        assert_eq!(&bytes[5..9], &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(bytes[9], 6);
        assert_eq!(&bytes[10..16], b"node-a");
        assert_eq!(&bytes[16..24], &[1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn encode_refuses_long_fields() {
        let long = "x".repeat(MAX_STR + 1);
        let mut p = packet();
        p.header.sender = long.clone();
        assert_eq!(encode(&p, KEY).unwrap_err().kind(), "too-long");
        let mut p = packet();
        p.advert.instance_id = long.clone();
        assert_eq!(encode(&p, KEY).unwrap_err().kind(), "too-long");
        let mut p = packet();
        p.advert.holder = HolderBelief::Instance(long.clone());
        assert_eq!(encode(&p, KEY).unwrap_err().kind(), "too-long");
        let mut p = packet();
        p.advert.yield_msg = YieldMsg::Released { id: 1, to: long };
        assert_eq!(encode(&p, KEY).unwrap_err().kind(), "too-long");
    }

    #[test]
    fn rejects_oversize_and_short() {
        let big = vec![0u8; MAX_PACKET + 1];
        assert_eq!(decode(&big, KEY).unwrap_err().kind(), "oversize");
        assert_eq!(decode(&[], KEY).unwrap_err().kind(), "truncated");
        assert_eq!(decode(b"ENIP\x01", KEY).unwrap_err().kind(), "truncated");
    }

    #[test]
    fn rejects_bad_magic_and_version() {
        let mut b = encode(&packet(), KEY).unwrap();
        b[0] = b'X';
        assert_eq!(decode(&b, KEY).unwrap_err(), WireError::BadMagic);
        let mut b = encode(&packet(), KEY).unwrap();
        b[4] = 2;
        assert_eq!(decode(&b, KEY).unwrap_err(), WireError::BadVersion(2));
    }

    #[test]
    fn rejects_wrong_key() {
        let b = encode(&packet(), KEY).unwrap();
        assert_eq!(decode(&b, b"another key").unwrap_err(), WireError::BadMac);
    }

    #[test]
    fn every_bit_flip_is_rejected() {
        let b = encode(&packet(), KEY).unwrap();
        for i in 0..b.len() {
            for bit in 0..8 {
                let mut c = b.clone();
                c[i] ^= 1 << bit;
                let e = decode(&c, KEY).unwrap_err();
                assert!(
                    matches!(
                        e,
                        WireError::BadMac | WireError::BadMagic | WireError::BadVersion(_)
                    ),
                    "byte {i} bit {bit}: {e:?}"
                );
            }
        }
    }

    #[test]
    fn every_truncation_is_rejected() {
        let b = encode(&packet(), KEY).unwrap();
        for n in 0..b.len() {
            assert!(
                decode(&b[..n], KEY).is_err(),
                "prefix of {n} bytes accepted"
            );
        }
        // One byte too many is caught as well (the MAC no longer lines up).
        let mut longer = b.clone();
        longer.push(0);
        assert!(decode(&longer, KEY).is_err());
    }

    #[test]
    fn rejects_authentic_but_malformed_bodies() {
        let base = unsigned(&packet());
        // Offsets: preamble 5, group 4, sender 1+6, incarnation/seq/timestamp 24 => role at 40.
        let role_at = 5 + 4 + 1 + 6 + 24;

        let mut b = base.clone();
        b[role_at] = 6;
        assert_eq!(
            decode(&resign(b), KEY).unwrap_err(),
            WireError::Malformed("unknown role code")
        );

        // Holder tag sits after role, priority and the instance id string.
        let holder_at = role_at + 2 + 1 + packet().advert.instance_id.len();
        let mut b = base.clone();
        b[holder_at] = 3;
        assert_eq!(
            decode(&resign(b), KEY).unwrap_err(),
            WireError::Malformed("unknown holder tag")
        );

        let mut p = packet();
        p.advert.holder = HolderBelief::Nobody;
        let mut b = unsigned(&p);
        b[holder_at + 1] = 5;
        assert_eq!(
            decode(&resign(b), KEY).unwrap_err(),
            WireError::Malformed("unknown yield tag")
        );

        let mut b = base.clone();
        let last = b.len() - 1;
        b[last] |= 0x08;
        assert_eq!(
            decode(&resign(b), KEY).unwrap_err(),
            WireError::Malformed("reserved flag bits set")
        );

        let mut b = base.clone();
        b.push(0);
        assert_eq!(
            decode(&resign(b), KEY).unwrap_err(),
            WireError::Malformed("trailing bytes")
        );

        let mut b = base.clone();
        b[10] = 0xff; // first byte of the sender name
        assert_eq!(
            decode(&resign(b), KEY).unwrap_err(),
            WireError::Malformed("string is not UTF-8")
        );

        let mut b = base.clone();
        b[9] = 33; // sender length beyond the limit
        assert_eq!(
            decode(&resign(b), KEY).unwrap_err(),
            WireError::Malformed("string longer than 32 bytes")
        );

        let mut b = base.clone();
        b.truncate(b.len() - 3);
        assert_eq!(
            decode(&resign(b), KEY).unwrap_err(),
            WireError::Malformed("field runs past the end")
        );
    }

    #[test]
    fn error_kinds_are_distinct() {
        let all = [
            WireError::Oversize { len: 0 },
            WireError::Truncated { len: 0 },
            WireError::BadMagic,
            WireError::BadVersion(0),
            WireError::BadMac,
            WireError::Malformed(""),
            WireError::TooLong { field: "", len: 0 },
            WireError::BadKey,
        ];
        let kinds: std::collections::HashSet<_> = all.iter().map(WireError::kind).collect();
        assert_eq!(kinds.len(), all.len());
    }
}
