//! Heartbeats between peers: the authenticated wire format ([`wire`]), the rules for believing a
//! packet ([`filter`]) and the UDP link that sends and receives them ([`PeerLink`]).
//!
//! This module is the only user of `socket2`, `hmac` and `sha2`: the rest of the crate sees
//! [`Advert`](crate::core::advert::Advert)s in and out, never bytes or keys at work.

pub mod filter;
mod transport;
pub mod wire;

pub use transport::{random_incarnation, PeerError, PeerLink, Received};
