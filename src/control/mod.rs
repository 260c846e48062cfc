//! The control socket between the CLI (`enipeer role`, `enipeer yield`) and the daemon.
//!
//! Owns the wire protocol (a 4-byte big-endian length, then JSON, at most [`MAX_MESSAGE`] bytes;
//! one request and one response per connection), the server side ([`bind`], [`serve`]) that hands
//! each request to the daemon as an [`Incoming`] and writes back its reply, and the client side
//! ([`request`]) whose errors tell the operator what to do next.
//!
//! Access control is the socket file's mode (0600, or 0660 with a group), so peer credentials are
//! not checked.

use std::future::Future;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{self as sock, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::report::RoleReport;

/// Largest message accepted or sent, in bytes (the length prefix excluded). A role report is a few
/// KiB; the cap keeps a confused or hostile client from making the daemon allocate freely.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// What the CLI asks of the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// A snapshot of this node's state.
    Role,
    /// Hand the ENI to the peer; the daemon answers once the peer is master or the attempt ended.
    Yield { timeout_ms: u64 },
    /// Maintenance on or off; on a master, answered once the handover is over.
    Maintenance {
        on: bool,
        reason: String,
        force: bool,
        timeout_ms: u64,
    },
}

/// What the daemon answers.
// One response per connection, so the size of the enum does not matter; boxing the report would
// only make the daemon and CLI code noisier.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Role(RoleReport),
    Yielded { message: String },
    Error { message: String },
}

/// A request handed to the daemon; the connection stays open until `reply` is used or dropped.
#[derive(Debug)]
pub struct Incoming {
    pub request: Request,
    pub reply: oneshot::Sender<Response>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot create the control socket directory {}: {source}", path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("another enipeer daemon is already listening on {}", path.display())]
    AlreadyRunning { path: PathBuf },
    #[error("{} exists and is not a socket; refusing to remove it (fix control.socket or move the file)", path.display())]
    NotASocket { path: PathBuf },
    #[error("cannot inspect the existing control socket {}: {source}", path.display())]
    Inspect { path: PathBuf, source: io::Error },
    #[error("cannot remove the stale control socket {}: {source}", path.display())]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("cannot bind the control socket {}: {source}", path.display())]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot set the permissions of {}: {source}", path.display())]
    Permissions { path: PathBuf, source: io::Error },
    #[error("control.group: no group named `{group}` on this host")]
    UnknownGroup { group: String },
    #[error("control.group: cannot look up group `{group}`: {source}")]
    GroupLookup { group: String, source: nix::Error },
    #[error("cannot give {} to group `{group}`: {source}", path.display())]
    Chown {
        path: PathBuf,
        group: String,
        source: io::Error,
    },
    #[error("is the daemon running? (no socket at {})", path.display())]
    NotRunning { path: PathBuf },
    #[error("is the daemon running? (nothing listens on {}; the socket file is stale)", path.display())]
    Refused { path: PathBuf },
    #[error("permission denied on {}: run as root or a member of the control group", path.display())]
    PermissionDenied { path: PathBuf },
    #[error("cannot connect to {}: {source}", path.display())]
    Connect { path: PathBuf, source: io::Error },
    #[error("no answer from the daemon on {} within {}", path.display(), humantime::format_duration(*timeout))]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("the other side closed the connection without answering")]
    Closed,
    #[error("message of {len} bytes exceeds the limit of {MAX_MESSAGE} bytes")]
    TooLarge { len: usize },
    #[error("malformed message: {0}")]
    Decode(#[source] serde_json::Error),
    #[error("cannot encode message: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("control socket I/O: {0}")]
    Io(#[from] io::Error),
}

impl ControlError {
    /// Short machine label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ControlError::CreateDir { .. } => "create_dir",
            ControlError::AlreadyRunning { .. } => "already_running",
            ControlError::NotASocket { .. } => "not_a_socket",
            ControlError::Inspect { .. } => "inspect",
            ControlError::RemoveStale { .. } => "remove_stale",
            ControlError::Bind { .. } => "bind",
            ControlError::Permissions { .. } => "permissions",
            ControlError::UnknownGroup { .. } => "unknown_group",
            ControlError::GroupLookup { .. } => "group_lookup",
            ControlError::Chown { .. } => "chown",
            ControlError::NotRunning { .. } => "not_running",
            ControlError::Refused { .. } => "refused",
            ControlError::PermissionDenied { .. } => "permission_denied",
            ControlError::Connect { .. } => "connect",
            ControlError::Timeout { .. } => "timeout",
            ControlError::Closed => "closed",
            ControlError::TooLarge { .. } => "too_large",
            ControlError::Decode(_) => "decode",
            ControlError::Encode(_) => "encode",
            ControlError::Io(_) => "io",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Framing

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, ControlError> {
    let len = r.read_u32().await.map_err(eof_is_closed)? as usize;
    if len > MAX_MESSAGE {
        // Refuse before reading (or allocating for) the body.
        return Err(ControlError::TooLarge { len });
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).await.map_err(eof_is_closed)?;
    Ok(body)
}

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> Result<(), ControlError> {
    if body.len() > MAX_MESSAGE {
        return Err(ControlError::TooLarge { len: body.len() });
    }
    // One buffer, one write: the peer never sees a length without its body because of us.
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(body);
    w.write_all(&frame).await?;
    w.flush().await?;
    Ok(())
}

fn eof_is_closed(e: io::Error) -> ControlError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        ControlError::Closed
    } else {
        ControlError::Io(e)
    }
}

// ---------------------------------------------------------------------------------------------
// Server

/// Creates the control socket at `path` and starts listening. Must run inside a tokio runtime.
///
/// The socket gets its final mode and group before `listen`, so there is no moment in which a
/// client could connect through a laxer mode left by the umask.
pub fn bind(path: &Path, group: Option<&str>) -> Result<UnixListener, ControlError> {
    // Resolve the group first so a typo fails before anything on disk changes.
    let gid = match group {
        None => None,
        Some(name) => match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => Some((name, g.gid.as_raw())),
            Ok(None) => {
                return Err(ControlError::UnknownGroup {
                    group: name.to_string(),
                })
            }
            Err(source) => {
                return Err(ControlError::GroupLookup {
                    group: name.to_string(),
                    source,
                })
            }
        },
    };

    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_parent(parent)?;
    }
    clear_stale(path)?;

    let bind_err = |source| ControlError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let socket = unix_stream_socket(SockFlag::empty()).map_err(bind_err)?;
    let addr = UnixAddr::new(path).map_err(|e| bind_err(e.into()))?;
    sock::bind(socket.as_raw_fd(), &addr).map_err(|e| bind_err(e.into()))?;
    // From here on the file is ours: remove it again if setting it up fails.
    let finish = || -> Result<UnixListener, ControlError> {
        let mode = if gid.is_some() { 0o660 } else { 0o600 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(
            |source| ControlError::Permissions {
                path: path.to_path_buf(),
                source,
            },
        )?;
        if let Some((name, gid)) = gid {
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(|source| {
                ControlError::Chown {
                    path: path.to_path_buf(),
                    group: name.to_string(),
                    source,
                }
            })?;
        }
        let backlog = Backlog::new(128).map_err(|e| bind_err(e.into()))?;
        sock::listen(&socket, backlog).map_err(|e| bind_err(e.into()))?;
        let std_listener = std::os::unix::net::UnixListener::from(socket);
        std_listener.set_nonblocking(true).map_err(bind_err)?;
        UnixListener::from_std(std_listener).map_err(bind_err)
    };
    match finish() {
        Ok(listener) => {
            info!(path = %path.display(), mode = if gid.is_some() { "0660" } else { "0600" }, group = group.unwrap_or(""), "control socket listening");
            Ok(listener)
        }
        Err(e) => {
            let _ = std::fs::remove_file(path);
            Err(e)
        }
    }
}

fn create_parent(parent: &Path) -> Result<(), ControlError> {
    let missing: Vec<&Path> = parent.ancestors().take_while(|p| !p.exists()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let err = |source| ControlError::CreateDir {
        path: parent.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(parent)
        .map_err(err)?;
    // The umask may have narrowed the mode; the CLI users (the control group) need to traverse.
    for dir in missing {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(err)?;
    }
    Ok(())
}

/// Removes a socket file left behind by a daemon that died; refuses anything else at the path.
fn clear_stale(path: &Path) -> Result<(), ControlError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ControlError::Inspect {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ControlError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    let inspect = |source| ControlError::Inspect {
        path: path.to_path_buf(),
        source,
    };
    // Non-blocking, so a live daemon with a full backlog answers EAGAIN instead of making us wait.
    let probe = unix_stream_socket(SockFlag::SOCK_NONBLOCK).map_err(inspect)?;
    let addr = UnixAddr::new(path).map_err(|e| inspect(e.into()))?;
    match sock::connect(probe.as_raw_fd(), &addr).map_err(io::Error::from) {
        Ok(()) => Err(ControlError::AlreadyRunning {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(ControlError::AlreadyRunning {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            info!(path = %path.display(), "removing stale control socket");
            std::fs::remove_file(path).map_err(|source| ControlError::RemoveStale {
                path: path.to_path_buf(),
                source,
            })
        }
        Err(source) => Err(inspect(source)),
    }
}

/// Bounds the server keeps; [`serve`] uses the defaults, tests shorten them.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// Connections handled at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// A client must have sent its whole request within this long, so an idle connection cannot
    /// hold a slot forever.
    pub read_timeout: Duration,
    /// How long the daemon may take to answer `Role`.
    pub role_reply_timeout: Duration,
    /// Added to a `Yield`'s own timeout: the daemon answers after the attempt ends, plus a
    /// reclaim if the peer never took over.
    pub yield_reply_slack: Duration,
    /// Writing the response; responses are small, so only a client that stopped reading hits it.
    pub write_timeout: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_connections: 16,
            read_timeout: Duration::from_secs(5),
            role_reply_timeout: Duration::from_secs(5),
            yield_reply_slack: Duration::from_secs(10),
            write_timeout: Duration::from_secs(5),
        }
    }
}

/// Accepts connections until `shutdown` resolves, then removes the socket file and returns.
/// Connections still open at shutdown are dropped.
pub async fn serve(
    listener: UnixListener,
    requests: mpsc::Sender<Incoming>,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(listener, requests, shutdown, ServeLimits::default()).await
}

/// [`serve`] with explicit limits.
pub async fn serve_with(
    listener: UnixListener,
    requests: mpsc::Sender<Incoming>,
    shutdown: impl Future<Output = ()>,
    limits: ServeLimits,
) {
    let path = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_path_buf));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // Take a slot before accepting: while all are busy, new clients wait in the backlog
        // instead of being accepted and then starved.
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break, // never closed; nothing sensible to do but stop
            },
        };
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(handle(stream, requests.clone(), limits, permit));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning on a failing accept.
                    warn!(error = %e, "control socket accept failed");
                    drop(permit);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
        while connections.try_join_next().is_some() {}
    }
    connections.abort_all();
    if let Some(path) = path {
        match std::fs::remove_file(&path) {
            Ok(()) => debug!(path = %path.display(), "control socket removed"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warn!(path = %path.display(), error = %e, "cannot remove control socket"),
        }
    }
}

async fn handle(
    mut stream: UnixStream,
    requests: mpsc::Sender<Incoming>,
    limits: ServeLimits,
    _permit: OwnedSemaphorePermit,
) {
    let response = match tokio::time::timeout(limits.read_timeout, read_frame(&mut stream)).await {
        Err(_) => {
            debug!("control client sent no complete request in time; dropping it");
            return;
        }
        Ok(Err(ControlError::TooLarge { len })) => Response::Error {
            message: format!("request of {len} bytes exceeds the limit of {MAX_MESSAGE} bytes"),
        },
        Ok(Err(e)) => {
            debug!(error = %e, kind = e.kind(), "control client went away before its request");
            return;
        }
        Ok(Ok(body)) => match serde_json::from_slice::<Request>(&body) {
            Err(e) => Response::Error {
                message: format!("malformed request: {e}"),
            },
            Ok(request) => ask_daemon(request, &requests, &limits).await,
        },
    };
    let body = match serde_json::to_vec(&response) {
        Ok(b) if b.len() <= MAX_MESSAGE => b,
        Ok(b) => error_body(&format!(
            "response of {} bytes exceeds the limit of {MAX_MESSAGE} bytes",
            b.len()
        )),
        Err(e) => error_body(&format!("cannot encode response: {e}")),
    };
    match tokio::time::timeout(limits.write_timeout, write_frame(&mut stream, &body)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(error = %e, "cannot write control response"),
        Err(_) => debug!("control client did not read its response in time"),
    }
}

async fn ask_daemon(
    request: Request,
    requests: &mpsc::Sender<Incoming>,
    limits: &ServeLimits,
) -> Response {
    let wait = match &request {
        Request::Role => limits.role_reply_timeout,
        Request::Yield { timeout_ms } | Request::Maintenance { timeout_ms, .. } => {
            Duration::from_millis(*timeout_ms).saturating_add(limits.yield_reply_slack)
        }
    };
    debug!(?request, "control request");
    let (reply, answer) = oneshot::channel();
    let exchange = async {
        requests
            .send(Incoming { request, reply })
            .await
            .map_err(|_| "the daemon is shutting down")?;
        answer
            .await
            .map_err(|_| "the daemon dropped the request without answering")
    };
    match tokio::time::timeout(wait, exchange).await {
        Ok(Ok(response)) => response,
        Ok(Err(message)) => Response::Error {
            message: message.to_string(),
        },
        Err(_) => Response::Error {
            message: format!(
                "the daemon did not answer within {}",
                humantime::format_duration(wait)
            ),
        },
    }
}

fn error_body(message: &str) -> Vec<u8> {
    // Serializing a plain string variant cannot fail; the fallback is a valid frame regardless.
    serde_json::to_vec(&Response::Error {
        message: message.to_string(),
    })
    .unwrap_or_else(|_| br#"{"Error":{"message":"internal error"}}"#.to_vec())
}

// ---------------------------------------------------------------------------------------------
// Client

/// Sends one request and waits for its response, all within `timeout`. For a `Yield` the caller
/// should allow the yield's own timeout plus some slack.
pub async fn request(
    path: &Path,
    req: &Request,
    timeout: Duration,
) -> Result<Response, ControlError> {
    match tokio::time::timeout(timeout, exchange(path, req)).await {
        Ok(result) => result,
        Err(_) => Err(ControlError::Timeout {
            path: path.to_path_buf(),
            timeout,
        }),
    }
}

async fn exchange(path: &Path, req: &Request) -> Result<Response, ControlError> {
    let mut stream = UnixStream::connect(path).await.map_err(|source| {
        let path = path.to_path_buf();
        match source.kind() {
            io::ErrorKind::NotFound => ControlError::NotRunning { path },
            io::ErrorKind::ConnectionRefused => ControlError::Refused { path },
            io::ErrorKind::PermissionDenied => ControlError::PermissionDenied { path },
            _ => ControlError::Connect { path, source },
        }
    })?;
    let body = serde_json::to_vec(req).map_err(ControlError::Encode)?;
    write_frame(&mut stream, &body).await?;
    let answer = read_frame(&mut stream).await?;
    serde_json::from_slice(&answer).map_err(ControlError::Decode)
}

#[cfg(test)]
mod tests;

/// A Unix stream socket, close-on-exec, created unbound so its mode can be set between bind and
/// listen (no client can connect through the umask's default mode).
fn unix_stream_socket(flags: SockFlag) -> io::Result<OwnedFd> {
    sock::socket(
        AddressFamily::Unix,
        SockType::Stream,
        flags | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)
}
