//! The command line: subcommands and their dispatch. Each subcommand returns an exit code.
//! [`Cli`] is the public interface, which the man pages and completions document; the binary
//! parses it together with hidden build-time helpers (see [`assets`]).

pub mod assets;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand};

use crate::config;
use crate::control::{self, Request, Response};

const ABOUT: &str = "Failover agent for AWS EC2: moves a secondary ENI between two instances";

/// The public command line, as documented in `enipeer(8)` and the shell completions.
#[derive(Debug, Parser)]
#[command(name = "enipeer", version, about = ABOUT)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What the binary parses: [`Cli`] plus hidden helpers. Kept apart from [`Cli`] because
/// clap_complete lists hidden subcommands too, and the packages must not advertise them.
#[derive(Debug, Parser)]
#[command(name = "enipeer", version, about = ABOUT)]
struct Invocation {
    #[command(subcommand)]
    command: Hidden,
}

#[derive(Debug, Subcommand)]
enum Hidden {
    #[command(flatten)]
    Public(Command),
    /// Write the man pages and shell completions into DIR (used when building the packages).
    #[command(hide = true)]
    GenerateAssets { dir: PathBuf },
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
        /// Config file.
        #[arg(short, long, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// Also check the cloud side (the ENI, its AZ, IAM permissions by DryRun) and every peer
        /// (an authenticated echo to each address: key, group id, port). Exits 1 if any fails.
        #[arg(long)]
        preflight: bool,
    },
    /// Show this node's role, its peers, the ENI holder and the last failover.
    Role {
        /// Config file (read for `control.socket`).
        #[arg(short, long, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// Control socket (overrides the config's `control.socket`).
        #[arg(short, long)]
        socket: Option<PathBuf>,
        /// Print JSON instead of a summary (documented in docs/role-json.md).
        #[arg(long, conflicts_with = "check")]
        json: bool,
        /// Print one line and exit like a monitoring plugin: 0 OK, 1 WARNING, 2 CRITICAL,
        /// 3 UNKNOWN (daemon unreachable).
        #[arg(long)]
        check: bool,
    },
    /// Hand the ENI to the peer on purpose (on the master). Exits 0 once the peer is master.
    Yield {
        /// Config file (read for `control.socket`).
        #[arg(short, long, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// Control socket (overrides the config's `control.socket`).
        #[arg(short, long)]
        socket: Option<PathBuf>,
        /// How long to wait for the peer to become master before taking the ENI back.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Maintenance mode: a node in maintenance never takes the ENI; a master hands it over to a
    /// healthy peer first. Survives restarts. Exits 0 once done.
    Maintenance {
        /// `on` or `off`.
        #[arg(value_enum)]
        mode: OnOff,
        /// Why (shown in `enipeer role` and on the peer).
        #[arg(long, default_value = "operator")]
        reason: String,
        /// On a master with no healthy peer: enter maintenance anyway and keep the ENI until a
        /// peer can take it.
        #[arg(long)]
        force: bool,
        /// Config file (read for `control.socket`).
        #[arg(short, long, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// Control socket (overrides the config's `control.socket`).
        #[arg(short, long)]
        socket: Option<PathBuf>,
        /// How long a master waits for the peer to take over.
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
    let command = match Invocation::parse().command {
        Hidden::GenerateAssets { dir } => return assets::generate_command(&dir),
        Hidden::Public(command) => command,
    };
    match command {
        Command::Check { config, preflight } => match config::check_command(&config) {
            (crate::exit::OK, Some(settings)) if preflight => {
                println!("preflight:");
                let cloud = crate::cloud::ec2::preflight_command(&settings);
                let peers = crate::peer::preflight::preflight_command(&settings);
                if cloud != crate::exit::OK {
                    cloud
                } else {
                    peers
                }
            }
            (code, _) => code,
        },
        Command::Keygen { path, force } => config::keygen_command(&path, force),
        Command::Run { config } => run(&config),
        Command::Role {
            config,
            socket,
            json,
            check,
        } => {
            if check {
                role_check(&config, socket)
            } else {
                role(&config, socket, json)
            }
        }
        Command::Yield {
            config,
            socket,
            timeout,
        } => yield_(&config, socket, timeout),
        Command::Maintenance {
            mode,
            reason,
            force,
            config,
            socket,
            timeout,
        } => {
            let req = Request::Maintenance {
                on: mode == OnOff::On,
                reason,
                force,
                timeout_ms: timeout.as_millis() as u64,
            };
            ask(&socket_path(&config, socket), req, timeout, "maintenance")
        }
    }
}

/// `enipeer run`: refuses an invalid config exactly as `enipeer check` does (exit 78).
fn run(path: &Path) -> i32 {
    let settings = match config::load(path) {
        Ok(s) => s,
        Err(e) => {
            eprint!("{e}");
            eprintln!("enipeer: refusing to start with an invalid config");
            return crate::exit::CONFIG;
        }
    };
    crate::logging::init(&settings.log.level);
    // One thread: the daemon's work is a few packets a second and some API calls, and a
    // single-threaded runtime keeps its footprint small and its behaviour easy to reason about.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return crate::exit::SOFTWARE;
        }
    };
    match rt.block_on(crate::daemon::run(settings, Some(path.to_path_buf()))) {
        Ok(()) => crate::exit::OK,
        Err(e) => {
            tracing::error!(kind = e.kind(), "{}", error_chain(&e));
            crate::exit::UNAVAILABLE
        }
    }
}

/// "outer: inner: innermost", so a log line carries the whole cause.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The control socket: `--socket`, else the config's, else the default. The config is only
/// parsed (no key file checks) so an unprivileged `enipeer role` still finds the socket.
fn socket_path(config: &Path, socket: Option<PathBuf>) -> PathBuf {
    if let Some(s) = socket {
        return s;
    }
    std::fs::read_to_string(config)
        .ok()
        .and_then(|text| config::parse(&text, config).ok())
        .map(|s| s.control.socket)
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_SOCKET))
}

fn request(socket: &Path, req: Request, timeout: Duration) -> Result<Response, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    rt.block_on(control::request(socket, &req, timeout))
        .map_err(|e| error_chain(&e))
}

fn role(config: &Path, socket: Option<PathBuf>, json: bool) -> i32 {
    let socket = socket_path(config, socket);
    match request(&socket, Request::Role, Duration::from_secs(5)) {
        Ok(Response::Role(report)) => {
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("enipeer: {e}");
                        return crate::exit::SOFTWARE;
                    }
                }
            } else {
                print!(
                    "{}",
                    report.render(crate::timeline::unix_ms(SystemTime::now()))
                );
            }
            crate::exit::OK
        }
        Ok(Response::Error { message }) => {
            eprintln!("enipeer: {message}");
            crate::exit::FAILURE
        }
        Ok(other) => {
            eprintln!("enipeer: unexpected answer from the daemon: {other:?}");
            crate::exit::SOFTWARE
        }
        Err(e) => {
            eprintln!("enipeer: {e}");
            crate::exit::UNAVAILABLE
        }
    }
}

/// `enipeer role --check`: every way of not getting a report is UNKNOWN (3), as monitoring
/// plugins expect, never a code that could read as WARNING or CRITICAL.
fn role_check(config: &Path, socket: Option<PathBuf>) -> i32 {
    use crate::report::{check::unknown_line, CheckStatus};
    let socket = socket_path(config, socket);
    let (status, line) = match request(&socket, Request::Role, Duration::from_secs(5)) {
        Ok(Response::Role(report)) => report.check(),
        Ok(Response::Error { message }) => (CheckStatus::Unknown, unknown_line(&message)),
        Ok(other) => (
            CheckStatus::Unknown,
            unknown_line(&format!("unexpected answer: {other:?}")),
        ),
        Err(e) => (CheckStatus::Unknown, unknown_line(&e)),
    };
    println!("{line}");
    status.code()
}

fn yield_(config: &Path, socket: Option<PathBuf>, timeout: Duration) -> i32 {
    let req = Request::Yield {
        timeout_ms: timeout.as_millis() as u64,
    };
    ask(&socket_path(config, socket), req, timeout, "yield")
}

/// A request the daemon answers once it is carried out (or failed).
fn ask(socket: &Path, req: Request, timeout: Duration, what: &str) -> i32 {
    // The daemon answers within the timeout plus its own slack; wait a little longer than that.
    match request(socket, req, timeout + Duration::from_secs(15)) {
        Ok(Response::Yielded { message }) => {
            println!("{message}");
            crate::exit::OK
        }
        Ok(Response::Error { message }) => {
            eprintln!("enipeer: {what} failed: {message}");
            crate::exit::FAILURE
        }
        Ok(other) => {
            eprintln!("enipeer: unexpected answer from the daemon: {other:?}");
            crate::exit::SOFTWARE
        }
        Err(e) => {
            eprintln!("enipeer: {e}");
            crate::exit::UNAVAILABLE
        }
    }
}

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}
