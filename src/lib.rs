//! enipeer: a failover agent that moves a secondary ENI between two EC2 instances.
//!
//! The [`core`] decides (pure, no I/O); adapters act: [`cloud`] (EC2), [`net`] (netlink),
//! [`peer`] (heartbeats), [`hooks`] (child processes), [`health`] (service checks) and [`control`]
//! (the CLI's Unix socket).
//! [`daemon`] wires them together; [`cli`] is the command line.

pub mod alerts;
pub mod cli;
pub mod cloud;
pub mod config;
pub mod control;
pub mod core;
pub mod daemon;
pub mod health;
pub mod hooks;
pub mod ids;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod peer;
pub mod process;
pub mod report;
pub mod timeline;

/// Exit codes, from sysexits(3) where one fits.
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILURE: i32 = 1;
    pub const USAGE: i32 = 64;
    pub const UNAVAILABLE: i32 = 69;
    pub const SOFTWARE: i32 = 70;
    pub const CONFIG: i32 = 78;
}
