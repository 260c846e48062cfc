//! Property tests of the heartbeat wire format through the public API: decoding never panics,
//! whatever arrives, and every encodable packet decodes to itself.

use enipeer::core::advert::{Advert, HolderBelief, Role, YieldMsg};
use enipeer::peer::wire::{decode, encode, Header, Packet, WireError, MAX_PACKET, MAX_STR};
use proptest::prelude::*;

const KEY: &[u8] = b"property test key";

fn short_string() -> impl Strategy<Value = String> {
    // Any Unicode, cut to what the format carries, so multi-byte characters are covered too.
    prop::collection::vec(any::<char>(), 0..=MAX_STR).prop_map(|chars| {
        let mut s = String::new();
        for c in chars {
            if s.len() + c.len_utf8() > MAX_STR {
                break;
            }
            s.push(c);
        }
        s
    })
}

fn role() -> impl Strategy<Value = Role> {
    (0u8..=5).prop_map(|c| Role::from_code(c).unwrap())
}

fn holder() -> impl Strategy<Value = HolderBelief> {
    prop_oneof![
        Just(HolderBelief::Unknown),
        Just(HolderBelief::Nobody),
        short_string().prop_map(HolderBelief::Instance),
    ]
}

fn yield_msg() -> impl Strategy<Value = YieldMsg> {
    prop_oneof![
        Just(YieldMsg::None),
        (any::<u32>(), short_string()).prop_map(|(id, to)| YieldMsg::Offer { id, to }),
        (any::<u32>(), short_string()).prop_map(|(id, to)| YieldMsg::Accept { id, to }),
        (any::<u32>(), short_string()).prop_map(|(id, to)| YieldMsg::Reject { id, to }),
        (any::<u32>(), short_string()).prop_map(|(id, to)| YieldMsg::Released { id, to }),
    ]
}

prop_compose! {
    fn advert()(
        role in role(),
        priority in any::<u8>(),
        instance_id in short_string(),
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
        sender in short_string(),
        incarnation in any::<u64>(),
        seq in any::<u64>(),
        timestamp_ms in any::<u64>(),
        advert in advert(),
    ) -> Packet {
        Packet { header: Header { group_id, sender, incarnation, seq, timestamp_ms }, advert }
    }
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
}
