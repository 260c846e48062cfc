//! The preflight against real PeerLinks on loopback: each test starts an answering link in a
//! task and asks it. The only time limits are guards against hanging.

use std::net::UdpSocket as StdUdpSocket;

use super::*;
use crate::peer::PeerLink;

const KEY: &[u8] = b"preflight key, 32 bytes long....";
const OLD: &[u8] = b"previous key, 32 bytes long.....";
const WRONG: &[u8] = b"a different key, 32 bytes long..";
const GROUP: u32 = 42;
const SKEW: Duration = Duration::from_secs(30);
const GUARD: Duration = Duration::from_secs(20);

/// A link called `name` in `group` under `keys` that answers echoes in a background task, and
/// knows "a" on loopback (any port: the asker uses an ephemeral one).
fn answering(name: &str, group: u32, keys: Keys) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let sock = StdUdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    let mut link = PeerLink::from_std(
        sock,
        group,
        name.parse().unwrap(),
        vec![("a".parse().unwrap(), vec!["127.0.0.1:9".parse().unwrap()])],
        keys,
        SKEW,
        7,
    )
    .unwrap();
    let task = tokio::spawn(async move {
        loop {
            // Echoes never come out of recv; anything that does is ignored here.
            let _ = link.recv().await;
        }
    });
    (addr, task)
}

fn asker(keys: Keys) -> Asker {
    Asker {
        group_id: GROUP,
        me: "a".parse().unwrap(),
        local: "127.0.0.1".parse().unwrap(),
        keys,
        attempts: 2,
        attempt_timeout: Duration::from_millis(300),
    }
}

async fn ask(asker: &Asker, peer: &str, addr: SocketAddr) -> Outcome {
    tokio::time::timeout(GUARD, asker.check(peer, addr))
        .await
        .expect("the check finishes on its own")
}

#[tokio::test]
async fn a_live_peer_with_the_same_key_answers() {
    let (addr, task) = answering("b", GROUP, KEY.to_vec().into());
    let checks = tokio::time::timeout(
        GUARD,
        asker(KEY.to_vec().into()).check_all(&[("b".parse().unwrap(), vec![addr])]),
    )
    .await
    .unwrap();
    assert_eq!(checks.len(), 1);
    assert!(
        matches!(
            checks[0].outcome,
            Outcome::Ok {
                key: KeyUsed::Current,
                ..
            }
        ),
        "{checks:?}"
    );
    assert!(checks[0].ok());
    assert!(checks[0].detail(GROUP).starts_with("answered in"));
    task.abort();
}

#[tokio::test]
async fn a_peer_with_another_key_is_a_key_mismatch() {
    let (addr, task) = answering("b", GROUP, WRONG.to_vec().into());
    let outcome = ask(&asker(KEY.to_vec().into()), "b", addr).await;
    assert_eq!(outcome, Outcome::KeyMismatch);
    let row = PeerCheck {
        peer: "b".into(),
        addr,
        outcome,
    };
    assert!(!row.ok());
    assert!(row.detail(GROUP).contains("key files differ"));
    task.abort();
}

#[tokio::test]
async fn a_closed_port_is_no_answer() {
    let closed = StdUdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let outcome = ask(&asker(KEY.to_vec().into()), "b", addr).await;
    // On loopback the ICMP port unreachable comes back, and IP_RECVERR surfaces it.
    assert_eq!(outcome, Outcome::NoAnswer { refused: true });
    let row = PeerCheck {
        peer: "b".into(),
        addr,
        outcome,
    };
    assert!(row.detail(GROUP).contains("closed"), "{row:?}");
    let silent = PeerCheck {
        outcome: Outcome::NoAnswer { refused: false },
        ..row
    };
    assert!(silent.detail(GROUP).contains("security group"));
}

#[tokio::test]
async fn a_peer_in_another_group_is_named() {
    let (addr, task) = answering("b", GROUP + 1, KEY.to_vec().into());
    assert_eq!(
        ask(&asker(KEY.to_vec().into()), "b", addr).await,
        Outcome::OtherGroup { theirs: GROUP + 1 }
    );
    task.abort();
}

#[tokio::test]
async fn names_that_do_not_match_are_named() {
    let (addr, task) = answering("b", GROUP, KEY.to_vec().into());
    assert_eq!(
        ask(&asker(KEY.to_vec().into()), "node-b", addr).await,
        Outcome::WrongName {
            answered_as: "b".into()
        }
    );
    let mut stranger = asker(KEY.to_vec().into());
    stranger.me = "z".parse().unwrap();
    assert_eq!(ask(&stranger, "b", addr).await, Outcome::UnknownToPeer);
    task.abort();
}

/// Halfway through a rotation: this node has the new key (old one as previous), the peer still
/// only the old one, and the other way round.
#[tokio::test]
async fn mid_rotation_each_side_says_what_is_missing() {
    let rotated = Keys::new(KEY.to_vec(), Some(OLD.to_vec()));
    let (old_peer, t1) = answering("b", GROUP, OLD.to_vec().into());
    assert_eq!(
        ask(&asker(rotated.clone()), "b", old_peer).await,
        Outcome::PeerLacksOurKey
    );
    let (rotated_peer, t2) = answering("b", GROUP, rotated.clone());
    // A rotated peer answers a not-yet-rotated node under the new key, which that node lacks.
    assert_eq!(
        ask(&asker(OLD.to_vec().into()), "b", rotated_peer).await,
        Outcome::KeyMismatch
    );
    // Both rotated: fine.
    assert!(matches!(
        ask(&asker(rotated), "b", rotated_peer).await,
        Outcome::Ok {
            key: KeyUsed::Current,
            ..
        }
    ));
    t1.abort();
    t2.abort();
}
