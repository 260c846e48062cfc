//! The command line: subcommands and their dispatch. Each subcommand returns an exit code.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config;

#[derive(Debug, Parser)]
#[command(
    name = "enipeer",
    version,
    about = "Failover agent for AWS EC2: moves a secondary ENI between two instances"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Run {
        /// Config file.
        #[arg(short, long, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Check a config file: list every problem, or print a summary. Exits 78 when invalid.
    Check {
        #[arg(short, long, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// Also check the cloud side: the ENI, its AZ, IAM permissions (DryRun), the peers.
        #[arg(long)]
        preflight: bool,
    },
    /// Show this node's role, its peers, the ENI holder and the last failover.
    Role {
        #[arg(short, long, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// Control socket (overrides the config's `control.socket`).
        #[arg(short, long)]
        socket: Option<PathBuf>,
        /// Print JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Hand the ENI to the peer on purpose (on the master). Exits 0 once the peer is master.
    Yield {
        #[arg(short, long, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        #[arg(short, long)]
        socket: Option<PathBuf>,
        /// How long to wait for the peer to become master before taking the ENI back.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Write a new random shared key for heartbeat authentication (mode 0600).
    Keygen {
        /// Where to write it.
        #[arg(default_value = "/etc/enipeer/peer.key")]
        path: PathBuf,
        /// Overwrite an existing key file.
        #[arg(long)]
        force: bool,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e}"))
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config, preflight } => config::check_command(&config, preflight),
        Command::Keygen { path, force } => config::keygen_command(&path, force),
        Command::Run { .. } | Command::Role { .. } | Command::Yield { .. } => {
            eprintln!("enipeer: not implemented yet");
            crate::exit::SOFTWARE
        }
    }
}
