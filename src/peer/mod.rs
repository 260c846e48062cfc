//! Heartbeats between peers: the authenticated wire format ([`wire`]), the rules for believing a
//! packet ([`filter`]), the UDP link that sends and receives them ([`PeerLink`]), and the peer
//! echo: the daemon's answers ([`echo`]) and `enipeer check --preflight`'s questions
//! ([`preflight`]).
//!
//! This module is the only user of `socket2`, `hmac` and `sha2`: the rest of the crate sees
//! [`Advert`](crate::core::advert::Advert)s in and out, never bytes or keys at work.

pub mod echo;
pub mod filter;
pub mod preflight;
mod transport;
pub mod wire;

pub use transport::{random_incarnation, PeerError, PeerLink, Received};
pub use wire::Keys;
