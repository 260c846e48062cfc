//! The failover core: pure decisions.

pub mod advert;
