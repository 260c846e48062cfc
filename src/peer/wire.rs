//! The wire format on the heartbeat port: hand-written big-endian framing, authenticated with
//! HMAC-SHA256 under the shared key ([`Keys`]: the current key, and during a rotation the
//! previous one, which is accepted but never used to sign).
//!
//! Version 1 is the heartbeat, a [`Header`] and an [`Advert`]. Version 2 is the echo family
//! ([`Echo`]), which `enipeer check --preflight` uses to ask a peer's daemon for an authenticated
//! answer. Heartbeats stay version 1 so that nodes of earlier releases keep hearing this one, and
//! such a node counts every version-2 packet as `bad-version` and drops it: it never answers an
//! echo, but nor can an echo confuse it.
//!
//! Heartbeat layout (all integers big-endian, strings are a u8 length then UTF-8, at most 32
//! bytes):
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
//! Echo layout: fixed at [`ECHO_LEN`] bytes, so a reply is never larger than the request it
//! answers (no amplification), and the nonce sits at a fixed offset:
//!
//! ```text
//! "ENIP" | version u8 = 2 | kind u8 (1 request, 2 reply) | status u8 (0 in a request)
//! group id u32 | sender: length u8 + 32 bytes, zero-padded | incarnation u64 | sequence u64
//! timestamp (Unix ms) u64 | nonce u64 (a reply carries its request's)
//! HMAC-SHA256 (32 bytes) over everything before it
//! ```
//!
//! Decoding authenticates before it interprets: nothing but the fixed preamble is looked at until
//! the MAC has been verified, so a peer without the key cannot reach the parser with crafted input.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::core::advert::{Advert, HolderBelief, Role, YieldMsg};
use crate::ids::{InstanceId, NodeName};

pub const MAGIC: [u8; 4] = *b"ENIP";
/// The heartbeat's version.
pub const VERSION: u8 = 1;
/// The echo family's version (see the module docs for why it is not a heartbeat flag).
pub const ECHO_VERSION: u8 = 2;
/// Far above what a valid packet can reach (about 210 bytes), and small enough never to be
/// fragmented on any path.
pub const MAX_PACKET: usize = 512;
/// Longest node name, instance id or yield target the format carries.
pub const MAX_STR: usize = 32;
// Every node name fits: encoding a heartbeat cannot fail on one.
const _: () = assert!(crate::ids::MAX_NAME_LEN <= MAX_STR);
pub const MAC_LEN: usize = 32;

const PREAMBLE_LEN: usize = MAGIC.len() + 1;
/// The body with every string empty and both tagged fields at their shortest.
const MIN_BODY_LEN: usize = 4 + 1 + 8 + 8 + 8 + 1 + 1 + 1 + 1 + 1 + 4 + 1;
/// The shortest byte string that can be a valid packet.
pub const MIN_PACKET: usize = PREAMBLE_LEN + MIN_BODY_LEN + MAC_LEN;

/// Preamble, kind, status, group, padded name, incarnation, sequence, timestamp, nonce, MAC.
pub const ECHO_LEN: usize = PREAMBLE_LEN + 1 + 1 + 4 + 1 + MAX_STR + 8 + 8 + 8 + 8 + MAC_LEN;
/// Where the nonce starts: the last field before the MAC.
const ECHO_NONCE_AT: usize = ECHO_LEN - MAC_LEN - 8;

const FLAG_WANTS_MASTER: u8 = 0x01;
const FLAG_UNHEALTHY: u8 = 0x02;
const FLAG_MAINTENANCE: u8 = 0x04;

type HmacSha256 = Hmac<Sha256>;

/// Who sent a heartbeat, and where it sits in that sender's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub group_id: u32,
    pub sender: NodeName,
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

/// The keys a node authenticates with. It signs with `current` only; `previous` is accepted as
/// well while a key rotation is under way, so the two nodes need not switch at the same moment.
#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    current: Vec<u8>,
    previous: Option<Vec<u8>>,
}

impl Keys {
    pub fn new(current: Vec<u8>, previous: Option<Vec<u8>>) -> Keys {
        Keys { current, previous }
    }

    /// The key every packet is signed with.
    pub fn current(&self) -> &[u8] {
        &self.current
    }

    pub fn has_previous(&self) -> bool {
        self.previous.is_some()
    }
}

impl From<Vec<u8>> for Keys {
    fn from(current: Vec<u8>) -> Keys {
        Keys::new(current, None)
    }
}

/// Never prints key material, so a `{:?}` of a struct holding keys cannot leak them into a log.
impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("current", &format_args!("<{} bytes>", self.current.len()))
            .field("previous", &self.previous.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Which of the [`Keys`] authenticated a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUsed {
    Current,
    Previous,
}

/// What an echo packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EchoKind {
    Request,
    Reply,
}

impl EchoKind {
    fn code(self) -> u8 {
        match self {
            EchoKind::Request => 1,
            EchoKind::Reply => 2,
        }
    }

    fn from_code(c: u8) -> Option<EchoKind> {
        match c {
            1 => Some(EchoKind::Request),
            2 => Some(EchoKind::Reply),
            _ => None,
        }
    }
}

/// What the answering daemon thought of the request; always [`EchoStatus::Ok`] in a request.
/// It lets the asking side name the problem instead of reporting silence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EchoStatus {
    Ok,
    /// The request was authentic but for another group id (the reply carries the answerer's).
    OtherGroup,
    /// The request was authentic but its sender is not one of the answerer's peers.
    UnknownNode,
    /// The request did not verify under the answerer's keys: it signs this reply with its own
    /// current key, which the asking side can verify only if it holds that key as its previous.
    BadMac,
}

impl EchoStatus {
    fn code(self) -> u8 {
        match self {
            EchoStatus::Ok => 0,
            EchoStatus::OtherGroup => 1,
            EchoStatus::UnknownNode => 2,
            EchoStatus::BadMac => 3,
        }
    }

    fn from_code(c: u8) -> Option<EchoStatus> {
        match c {
            0 => Some(EchoStatus::Ok),
            1 => Some(EchoStatus::OtherGroup),
            2 => Some(EchoStatus::UnknownNode),
            3 => Some(EchoStatus::BadMac),
            _ => None,
        }
    }
}

/// One echo request or reply as it travels. The header is the sender's own (a reply names the
/// answering node, its group and its clock); only the nonce ties a reply to its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Echo {
    pub kind: EchoKind,
    pub status: EchoStatus,
    pub header: Header,
    pub nonce: u64,
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
    put_str(&mut out, "sender name", h.sender.as_str())?;
    out.extend_from_slice(&h.incarnation.to_be_bytes());
    out.extend_from_slice(&h.seq.to_be_bytes());
    out.extend_from_slice(&h.timestamp_ms.to_be_bytes());

    out.push(a.role.code());
    out.push(a.priority);
    put_str(&mut out, "instance id", a.instance_id.as_str())?;
    match &a.holder {
        HolderBelief::Unknown => out.push(0),
        HolderBelief::Nobody => out.push(1),
        HolderBelief::Instance(id) => {
            out.push(2);
            put_str(&mut out, "holder instance id", id.as_str())?;
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
        put_str(&mut out, "yield target", to.as_str())?;
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

/// Checks, authenticates and parses one heartbeat under a single key.
pub fn decode(buf: &[u8], key: &[u8]) -> Result<Packet, WireError> {
    decode_inner(buf, key, None).map(|(p, _)| p)
}

/// [`decode`] accepting either of the [`Keys`], and saying which one verified.
pub fn decode_keys(buf: &[u8], keys: &Keys) -> Result<(Packet, KeyUsed), WireError> {
    decode_inner(buf, &keys.current, keys.previous.as_deref())
}

/// Verifies the trailing MAC under the current key, then under the previous one. Each check
/// compares in constant time (`verify_slice`), so timing reveals nothing about an expected tag;
/// that the second check follows a failed first one only reveals that a rotation is under way.
fn authenticate<'a>(
    buf: &'a [u8],
    current: &[u8],
    previous: Option<&[u8]>,
) -> Result<(&'a [u8], KeyUsed), WireError> {
    let (signed, tag) = buf.split_at(buf.len().saturating_sub(MAC_LEN));
    let verifies = |key: &[u8]| -> Result<bool, WireError> {
        let mut mac = new_mac(key)?;
        mac.update(signed);
        Ok(mac.verify_slice(tag).is_ok())
    };
    if verifies(current)? {
        return Ok((signed, KeyUsed::Current));
    }
    match previous {
        Some(key) if verifies(key)? => Ok((signed, KeyUsed::Previous)),
        _ => Err(WireError::BadMac),
    }
}

/// The checks every datagram gets before its MAC: size, magic, version.
fn check_preamble(buf: &[u8], min: usize, version: u8) -> Result<(), WireError> {
    let len = buf.len();
    if len > MAX_PACKET {
        return Err(WireError::Oversize { len });
    }
    if len < min {
        return Err(WireError::Truncated { len });
    }
    if buf[..MAGIC.len()] != MAGIC {
        return Err(WireError::BadMagic);
    }
    let got = buf[MAGIC.len()];
    if got != version {
        return Err(WireError::BadVersion(got));
    }
    Ok(())
}

fn decode_inner(
    buf: &[u8],
    current: &[u8],
    previous: Option<&[u8]>,
) -> Result<(Packet, KeyUsed), WireError> {
    check_preamble(buf, MIN_PACKET, VERSION)?;
    let (signed, used) = authenticate(buf, current, previous)?;
    parse_heartbeat(&signed[PREAMBLE_LEN..]).map(|p| (p, used))
}

/// Parses an authenticated heartbeat body (everything between the preamble and the MAC).
fn parse_heartbeat(body: &[u8]) -> Result<Packet, WireError> {
    let mut r = Reader { buf: body };
    let header = Header {
        group_id: r.u32()?,
        sender: r.name("invalid sender name")?,
        incarnation: r.u64()?,
        seq: r.u64()?,
        timestamp_ms: r.u64()?,
    };
    let role = Role::from_code(r.u8()?).ok_or(WireError::Malformed("unknown role code"))?;
    let priority = r.u8()?;
    let instance_id = r.instance("invalid instance id")?;
    let holder = match r.u8()? {
        0 => HolderBelief::Unknown,
        1 => HolderBelief::Nobody,
        2 => HolderBelief::Instance(r.instance("invalid holder instance id")?),
        _ => return Err(WireError::Malformed("unknown holder tag")),
    };
    let yield_msg = match r.u8()? {
        0 => YieldMsg::None,
        tag @ 1..=4 => {
            let id = r.u32()?;
            let to = r.name("invalid yield target")?;
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

/// True when a datagram claims to be an echo (magic and version 2); nothing else is looked at.
pub fn is_echo(buf: &[u8]) -> bool {
    buf.len() > PREAMBLE_LEN && buf[..MAGIC.len()] == MAGIC && buf[MAGIC.len()] == ECHO_VERSION
}

/// The kind and nonce of an echo-shaped datagram, read WITHOUT authenticating it. Only for the
/// two places that must deal with echoes that fail authentication: answering a request signed
/// under another key (so the asking side learns of the key mismatch), and recognising such an
/// answer to our own request. Nothing read here may be trusted beyond that.
pub fn peek_echo(buf: &[u8]) -> Option<(EchoKind, u64)> {
    if buf.len() != ECHO_LEN || !is_echo(buf) {
        return None;
    }
    let kind = EchoKind::from_code(buf[PREAMBLE_LEN])?;
    let mut nonce = [0u8; 8];
    nonce.copy_from_slice(&buf[ECHO_NONCE_AT..ECHO_NONCE_AT + 8]);
    Some((kind, u64::from_be_bytes(nonce)))
}

/// Frames and signs an echo request or reply; the result is always [`ECHO_LEN`] bytes.
pub fn encode_echo(e: &Echo, key: &[u8]) -> Result<Vec<u8>, WireError> {
    let h = &e.header;
    let name_len = h.sender.as_str().len();
    if name_len > MAX_STR {
        return Err(WireError::TooLong {
            field: "sender name",
            len: name_len,
        });
    }
    let mut out = Vec::with_capacity(ECHO_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(ECHO_VERSION);
    out.push(e.kind.code());
    out.push(e.status.code());
    out.extend_from_slice(&h.group_id.to_be_bytes());
    // Cannot truncate: checked against MAX_STR just above. Padded to a fixed width so that a
    // reply from a node with a longer name is not larger than the request.
    out.push(name_len as u8);
    out.extend_from_slice(h.sender.as_str().as_bytes());
    out.resize(out.len() + MAX_STR - name_len, 0);
    out.extend_from_slice(&h.incarnation.to_be_bytes());
    out.extend_from_slice(&h.seq.to_be_bytes());
    out.extend_from_slice(&h.timestamp_ms.to_be_bytes());
    out.extend_from_slice(&e.nonce.to_be_bytes());
    let mut mac = new_mac(key)?;
    mac.update(&out);
    out.extend_from_slice(&mac.finalize().into_bytes());
    debug_assert_eq!(out.len(), ECHO_LEN);
    Ok(out)
}

/// Checks, authenticates (under either key) and parses one echo datagram.
pub fn decode_echo(buf: &[u8], keys: &Keys) -> Result<(Echo, KeyUsed), WireError> {
    check_preamble(buf, ECHO_LEN, ECHO_VERSION)?;
    if buf.len() != ECHO_LEN {
        // Longer than the fixed size: not something this build ever sends.
        return Err(WireError::Malformed("echo longer than its fixed size"));
    }
    let (signed, used) = authenticate(buf, &keys.current, keys.previous.as_deref())?;
    let mut r = Reader {
        buf: &signed[PREAMBLE_LEN..],
    };
    let kind = EchoKind::from_code(r.u8()?).ok_or(WireError::Malformed("unknown echo kind"))?;
    let status =
        EchoStatus::from_code(r.u8()?).ok_or(WireError::Malformed("unknown echo status"))?;
    if kind == EchoKind::Request && status != EchoStatus::Ok {
        return Err(WireError::Malformed("echo request with a status"));
    }
    let group_id = r.u32()?;
    let name_len = usize::from(r.u8()?);
    if name_len > MAX_STR {
        return Err(WireError::Malformed("string longer than 32 bytes"));
    }
    let field = r.take(MAX_STR)?;
    let (name, padding) = field.split_at(name_len);
    if padding.iter().any(|&b| b != 0) {
        return Err(WireError::Malformed("echo name padding is not zero"));
    }
    let sender = std::str::from_utf8(name)
        .map_err(|_| WireError::Malformed("string is not UTF-8"))?
        .parse::<NodeName>()
        .map_err(|_| WireError::Malformed("invalid sender name"))?;
    let header = Header {
        group_id,
        sender,
        incarnation: r.u64()?,
        seq: r.u64()?,
        timestamp_ms: r.u64()?,
    };
    let nonce = r.u64()?;
    Ok((
        Echo {
            kind,
            status,
            header,
            nonce,
        },
        used,
    ))
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

    /// A node name, checked as the config checks it: the core only ever sees valid names.
    fn name(&mut self, what: &'static str) -> Result<NodeName, WireError> {
        self.string()?
            .parse()
            .map_err(|_| WireError::Malformed(what))
    }

    fn instance(&mut self, what: &'static str) -> Result<InstanceId, WireError> {
        self.string()?
            .parse()
            .map_err(|_| WireError::Malformed(what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn header() -> Header {
        Header {
            group_id: 0xdead_beef,
            sender: "node-a".parse().unwrap(),
            incarnation: 0x0102_0304_0506_0708,
            seq: 42,
            timestamp_ms: 1_700_000_000_123,
        }
    }

    fn advert() -> Advert {
        Advert {
            role: Role::Master,
            priority: 150,
            instance_id: "i-0123456789abcdef0".parse().unwrap(),
            holder: HolderBelief::Instance("i-0123456789abcdef0".parse().unwrap()),
            yield_msg: YieldMsg::Offer {
                id: 7,
                to: "node-b".parse().unwrap(),
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
            HolderBelief::Instance("i-0000000a".parse().unwrap()),
            HolderBelief::Instance("i-0123456789abcdef0".parse().unwrap()),
        ];
        let to: NodeName = "n".repeat(MAX_STR).parse().unwrap();
        let yields = [
            YieldMsg::None,
            YieldMsg::Offer {
                id: 1,
                to: to.clone(),
            },
            YieldMsg::Accept {
                id: u32::MAX,
                to: "b".parse().unwrap(),
            },
            YieldMsg::Reject {
                id: 0,
                to: "c.d_e-f".parse().unwrap(),
            },
            YieldMsg::Released {
                id: 99,
                to: "d".parse().unwrap(),
            },
        ];
        for role in roles {
            for holder in &holders {
                for y in &yields {
                    for wants_master in [false, true] {
                        let p = Packet {
                            header: Header {
                                sender: "e".repeat(MAX_STR).parse().unwrap(),
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

    /// The types keep invalid names and ids out of `encode`; a peer (or a future build) could
    /// still sign one, and the core must never see it.
    #[test]
    fn decode_refuses_invalid_names_and_ids() {
        let base = unsigned(&packet());
        let edit = |from: &[u8], to: &[u8]| {
            let at = base
                .windows(from.len())
                .position(|w| w == from)
                .expect("field present");
            let mut b = base.clone();
            b[at..at + to.len()].copy_from_slice(to);
            decode(&resign(b), KEY).unwrap_err()
        };
        assert_eq!(
            edit(b"node-a", b"node a"),
            WireError::Malformed("invalid sender name")
        );
        assert_eq!(
            edit(b"i-0123456789abcdef0", b"i-0123456789ABCDEF0"),
            WireError::Malformed("invalid instance id")
        );
        assert_eq!(
            edit(b"node-b", b"node/b"),
            WireError::Malformed("invalid yield target")
        );
        // The holder is the second copy of the instance id, after the holder tag and its length.
        let first = base.windows(19).position(|w| w == b"i-0123456789abcdef0");
        let holder_at = first.map(|f| f + 19 + 2).expect("instance id present");
        let mut b = base.clone();
        b[holder_at..holder_at + 2].copy_from_slice(b"j-");
        assert_eq!(
            decode(&resign(b), KEY).unwrap_err(),
            WireError::Malformed("invalid holder instance id")
        );
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
        let holder_at = role_at + 2 + 1 + packet().advert.instance_id.as_str().len();
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

    const OLD_KEY: &[u8] = b"the key before the rotation.....";

    fn echo(kind: EchoKind, status: EchoStatus) -> Echo {
        Echo {
            kind,
            status,
            header: header(),
            nonce: 0x1122_3344_5566_7788,
        }
    }

    #[test]
    fn previous_key_is_accepted_and_named() {
        let keys = Keys::new(KEY.to_vec(), Some(OLD_KEY.to_vec()));
        let under_current = encode(&packet(), KEY).unwrap();
        let under_previous = encode(&packet(), OLD_KEY).unwrap();
        assert_eq!(
            decode_keys(&under_current, &keys).unwrap(),
            (packet(), KeyUsed::Current)
        );
        assert_eq!(
            decode_keys(&under_previous, &keys).unwrap(),
            (packet(), KeyUsed::Previous)
        );
        // Without the previous key (rotation finished) the old key is a mismatch again.
        let keys = Keys::from(KEY.to_vec());
        assert_eq!(
            decode_keys(&under_previous, &keys).unwrap_err(),
            WireError::BadMac
        );
        let third = encode(&packet(), b"neither").unwrap();
        let keys = Keys::new(KEY.to_vec(), Some(OLD_KEY.to_vec()));
        assert_eq!(decode_keys(&third, &keys).unwrap_err(), WireError::BadMac);
    }

    #[test]
    fn keys_debug_shows_no_key_material() {
        let keys = Keys::new(KEY.to_vec(), Some(OLD_KEY.to_vec()));
        let shown = format!("{keys:?}");
        assert!(!shown.contains("0123"), "{shown}");
        assert!(!shown.contains("48, 49"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }

    #[test]
    fn echo_round_trips_and_has_a_fixed_size() {
        let keys = Keys::from(KEY.to_vec());
        let statuses = [
            EchoStatus::Ok,
            EchoStatus::OtherGroup,
            EchoStatus::UnknownNode,
            EchoStatus::BadMac,
        ];
        for name in ["a", "node-a", &"e".repeat(MAX_STR)] {
            let mut req = echo(EchoKind::Request, EchoStatus::Ok);
            req.header.sender = name.parse().unwrap();
            let bytes = encode_echo(&req, KEY).unwrap();
            assert_eq!(bytes.len(), ECHO_LEN);
            assert!(is_echo(&bytes));
            assert_eq!(peek_echo(&bytes), Some((EchoKind::Request, req.nonce)));
            assert_eq!(
                decode_echo(&bytes, &keys).unwrap(),
                (req.clone(), KeyUsed::Current)
            );
            for status in statuses {
                let mut reply = echo(EchoKind::Reply, status);
                reply.header.sender = "x".repeat(MAX_STR).parse().unwrap();
                let bytes = encode_echo(&reply, KEY).unwrap();
                // Never larger than the request, whatever the names.
                assert_eq!(bytes.len(), ECHO_LEN);
                assert_eq!(decode_echo(&bytes, &keys).unwrap().0, reply);
            }
        }
    }

    #[test]
    fn echo_layout_is_stable() {
        let b = encode_echo(&echo(EchoKind::Reply, EchoStatus::BadMac), KEY).unwrap();
        assert_eq!(&b[..8], b"ENIP\x02\x02\x03\xde");
        assert_eq!(b[11], 6);
        assert_eq!(&b[12..18], b"node-a");
        assert!(b[18..44].iter().all(|&x| x == 0));
        assert_eq!(
            &b[68..76],
            &[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]
        );
    }

    #[test]
    fn heartbeats_and_echoes_do_not_mix() {
        let keys = Keys::from(KEY.to_vec());
        let hb = encode(&packet(), KEY).unwrap();
        let req = encode_echo(&echo(EchoKind::Request, EchoStatus::Ok), KEY).unwrap();
        assert!(!is_echo(&hb));
        assert_eq!(peek_echo(&hb), None);
        // What a node that only knows heartbeats makes of an echo: a clean bad-version reject.
        assert_eq!(decode(&req, KEY).unwrap_err(), WireError::BadVersion(2));
        assert_eq!(decode_echo(&hb, &keys).unwrap_err().kind(), "bad-version");
    }

    #[test]
    fn echo_tampering_is_rejected() {
        let keys = Keys::from(KEY.to_vec());
        let b = encode_echo(&echo(EchoKind::Request, EchoStatus::Ok), KEY).unwrap();
        for i in 0..b.len() {
            for bit in 0..8 {
                let mut c = b.clone();
                c[i] ^= 1 << bit;
                let e = decode_echo(&c, &keys).unwrap_err();
                assert!(
                    matches!(
                        e,
                        WireError::BadMac | WireError::BadMagic | WireError::BadVersion(_)
                    ),
                    "byte {i} bit {bit}: {e:?}"
                );
            }
        }
        for n in 0..b.len() {
            assert!(decode_echo(&b[..n], &keys).is_err(), "prefix of {n} bytes");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert_eq!(decode_echo(&longer, &keys).unwrap_err().kind(), "malformed");
        assert_eq!(peek_echo(&longer), None);
        assert_eq!(
            decode_echo(&b, &Keys::from(OLD_KEY.to_vec())).unwrap_err(),
            WireError::BadMac
        );
    }

    #[test]
    fn echo_rejects_authentic_but_malformed_bodies() {
        let keys = Keys::from(KEY.to_vec());
        let base = {
            let mut b = encode_echo(&echo(EchoKind::Request, EchoStatus::Ok), KEY).unwrap();
            b.truncate(ECHO_LEN - MAC_LEN);
            b
        };
        let cases: [(usize, u8, &str); 6] = [
            (5, 3, "unknown echo kind"),
            (6, 9, "unknown echo status"),
            (6, 1, "echo request with a status"),
            (11, 33, "string longer than 32 bytes"),
            (12, 0xff, "string is not UTF-8"),
            (40, 1, "echo name padding is not zero"),
        ];
        for (at, value, why) in cases {
            let mut b = base.clone();
            b[at] = value;
            assert_eq!(
                decode_echo(&resign(b), &keys).unwrap_err(),
                WireError::Malformed(why)
            );
        }
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
