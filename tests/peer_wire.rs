//! Property tests of the heartbeat and echo wire formats through the public API: decoding never
//! panics, whatever arrives, every encodable packet decodes to itself, and any change to an
//! encoded packet is caught.

use enipeer::core::advert::{Advert, HolderBelief, Role, YieldMsg};
use enipeer::ids::{InstanceId, NodeName};
use enipeer::peer::wire::{
    decode, decode_echo, decode_keys, encode, encode_echo, peek_echo, Echo, EchoKind, EchoStatus,
    Header, KeyUsed, Keys, Packet, WireError, ECHO_LEN, MAX_PACKET,
};
use proptest::prelude::*;

const KEY: &[u8] = b"property test key";
const OLD_KEY: &[u8] = b"the key being rotated out";

/// Any valid node name: 1 to 32 of the characters the config allows.
fn node_name() -> impl Strategy<Value = NodeName> {
    proptest::string::string_regex("[A-Za-z0-9._-]{1,32}")
        .expect("a valid regex")
        .prop_map(|s| s.parse().expect("the regex only makes valid names"))
}

/// Any valid instance id, short (8 hex digits) or long (17).
fn instance_id() -> impl Strategy<Value = InstanceId> {
    proptest::string::string_regex("i-([0-9a-f]{8}|[0-9a-f]{17})")
        .expect("a valid regex")
        .prop_map(|s| s.parse().expect("the regex only makes valid ids"))
}

fn role() -> impl Strategy<Value = Role> {
    (0u8..=5).prop_map(|c| Role::from_code(c).unwrap())
}

fn holder() -> impl Strategy<Value = HolderBelief> {
    prop_oneof![
        Just(HolderBelief::Unknown),
        Just(HolderBelief::Nobody),
        instance_id().prop_map(HolderBelief::Instance),
    ]
}

fn yield_msg() -> impl Strategy<Value = YieldMsg> {
    prop_oneof![
        Just(YieldMsg::None),
        (any::<u32>(), node_name()).prop_map(|(id, to)| YieldMsg::Offer { id, to }),
        (any::<u32>(), node_name()).prop_map(|(id, to)| YieldMsg::Accept { id, to }),
        (any::<u32>(), node_name()).prop_map(|(id, to)| YieldMsg::Reject { id, to }),
        (any::<u32>(), node_name()).prop_map(|(id, to)| YieldMsg::Released { id, to }),
    ]
}

prop_compose! {
    fn advert()(
        role in role(),
        priority in any::<u8>(),
        instance_id in instance_id(),
        holder in holder(),
        yield_msg in yield_msg(),
        stopping_ms in any::<u32>(),
        wants_master in any::<bool>(),
        healthy in any::<bool>(),
        maintenance in any::<bool>(),
    ) -> Advert {
        Advert {
            role, priority, instance_id, holder, yield_msg, stopping_ms, wants_master, healthy,
            maintenance,
        }
    }
}

prop_compose! {
    fn packet()(
        group_id in any::<u32>(),
        sender in node_name(),
        incarnation in any::<u64>(),
        seq in any::<u64>(),
        timestamp_ms in any::<u64>(),
        advert in advert(),
    ) -> Packet {
        Packet { header: Header { group_id, sender, incarnation, seq, timestamp_ms }, advert }
    }
}

prop_compose! {
    fn header()(
        group_id in any::<u32>(),
        sender in node_name(),
        incarnation in any::<u64>(),
        seq in any::<u64>(),
        timestamp_ms in any::<u64>(),
    ) -> Header {
        Header { group_id, sender, incarnation, seq, timestamp_ms }
    }
}

fn echo() -> impl Strategy<Value = Echo> {
    let request = (header(), any::<u64>()).prop_map(|(header, nonce)| Echo {
        kind: EchoKind::Request,
        status: EchoStatus::Ok,
        header,
        nonce,
    });
    let status = prop_oneof![
        Just(EchoStatus::Ok),
        Just(EchoStatus::OtherGroup),
        Just(EchoStatus::UnknownNode),
        Just(EchoStatus::BadMac),
    ];
    let reply = (header(), any::<u64>(), status).prop_map(|(header, nonce, status)| Echo {
        kind: EchoKind::Reply,
        status,
        header,
        nonce,
    });
    prop_oneof![request, reply]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..=1024)) {
        let _ = decode(&bytes, KEY);
    }

    #[test]
    fn decode_never_panics_past_the_preamble(rest in prop::collection::vec(any::<u8>(), 0..=1024)) {
        let mut bytes = b"ENIP\x01".to_vec();
        bytes.extend_from_slice(&rest);
        let r = decode(&bytes, KEY);
        // Random bytes cannot carry a valid MAC.
        prop_assert!(r.is_err());
    }

    #[test]
    fn round_trip(p in packet()) {
        let bytes = encode(&p, KEY).unwrap();
        prop_assert!(bytes.len() <= MAX_PACKET);
        prop_assert_eq!(decode(&bytes, KEY).unwrap(), p);
    }

    #[test]
    fn corruption_is_rejected(p in packet(), at in any::<prop::sample::Index>(), mask in 1u8..=255) {
        let mut bytes = encode(&p, KEY).unwrap();
        let i = at.index(bytes.len());
        bytes[i] ^= mask;
        let e = decode(&bytes, KEY).unwrap_err();
        prop_assert!(
            matches!(e, WireError::BadMac | WireError::BadMagic | WireError::BadVersion(_)),
            "{:?}", e
        );
    }

    #[test]
    fn decode_echo_never_panics_past_the_preamble(rest in prop::collection::vec(any::<u8>(), 0..=600)) {
        let mut bytes = b"ENIP\x02".to_vec();
        bytes.extend_from_slice(&rest);
        let keys = Keys::new(KEY.to_vec(), Some(OLD_KEY.to_vec()));
        prop_assert!(decode_echo(&bytes, &keys).is_err());
        // A node that only knows heartbeats drops it cleanly.
        prop_assert!(decode(&bytes, KEY).is_err());
        let _ = peek_echo(&bytes);
    }

    #[test]
    fn echo_round_trip_at_a_fixed_size(e in echo()) {
        let bytes = encode_echo(&e, KEY).unwrap();
        prop_assert_eq!(bytes.len(), ECHO_LEN);
        prop_assert_eq!(peek_echo(&bytes), Some((e.kind, e.nonce)));
        let keys = Keys::new(OLD_KEY.to_vec(), Some(KEY.to_vec()));
        prop_assert_eq!(decode_echo(&bytes, &keys).unwrap(), (e, KeyUsed::Previous));
        prop_assert_eq!(decode(&bytes, KEY).unwrap_err(), WireError::BadVersion(2));
    }

    #[test]
    fn echo_corruption_is_rejected(e in echo(), at in any::<prop::sample::Index>(), mask in 1u8..=255) {
        let mut bytes = encode_echo(&e, KEY).unwrap();
        let i = at.index(bytes.len());
        bytes[i] ^= mask;
        let err = decode_echo(&bytes, &Keys::from(KEY.to_vec())).unwrap_err();
        prop_assert!(
            matches!(err, WireError::BadMac | WireError::BadMagic | WireError::BadVersion(_)),
            "{:?}", err
        );
    }

    #[test]
    fn either_key_decodes_a_heartbeat(p in packet(), previous in any::<bool>()) {
        let keys = Keys::new(KEY.to_vec(), Some(OLD_KEY.to_vec()));
        let signer = if previous { OLD_KEY } else { KEY };
        let used = if previous { KeyUsed::Previous } else { KeyUsed::Current };
        let bytes = encode(&p, signer).unwrap();
        prop_assert_eq!(decode_keys(&bytes, &keys).unwrap(), (p, used));
    }
}
