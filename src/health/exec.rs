//! The exec probe: runs the check's argv without a shell, in its own process group, with the
//! check's timeout; exit status 0 passes. On timeout the whole group is killed and reaped.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::{Passed, ProbeError, ProbeTarget};
use crate::config::ExecProbe;

/// Bytes kept of each of stdout and stderr (the start; the rest is read and dropped, so a
/// chatty program never blocks on a full pipe).
pub const OUTPUT_CAP: usize = 1024;
/// After the program exits, how long its pipes may stay open (held by something it started)
/// before we stop reading them.
const PIPE_GRACE: Duration = Duration::from_millis(50);

/// The command as it will be spawned: argv, no shell, the check's variables, and without
/// `NOTIFY_SOCKET`, so a check can never speak to systemd in the daemon's name.
pub(super) fn command(probe: &ExecProbe, name: &str, target: Option<&ProbeTarget>) -> Command {
    let (program, args) = probe
        .command
        .split_first()
        .map_or(("", &[][..]), |(p, a)| (p.as_str(), a));
    let mut command = Command::new(program);
    command
        .args(args)
        .env_remove("NOTIFY_SOCKET")
        .env("ENIPEER_CHECK_NAME", name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so a timeout also reaches what the program started.
        .process_group(0)
        // If the runner is aborted mid-probe, the child dies with it.
        .kill_on_drop(true);
    if let Some(t) = target {
        command.env("ENIPEER_CHECK_ADDRESS", t.ip.to_string());
        if let Some(source) = t.source {
            command.env("ENIPEER_CHECK_SOURCE", source.to_string());
        }
    }
    command
}

pub(super) async fn exec(
    probe: &ExecProbe,
    name: &str,
    target: Option<&ProbeTarget>,
    timeout: Duration,
) -> Result<Passed, ProbeError> {
    if probe.command.is_empty() {
        return Err(ProbeError::Spawn {
            error: "empty command".to_owned(),
        });
    }
    let deadline = Instant::now() + timeout;
    let mut child = command(probe, name, target)
        .spawn()
        .map_err(|e| ProbeError::Spawn {
            error: e.to_string(),
        })?;
    let mut stdout = Capped::default();
    let mut stderr = Capped::default();
    let waited =
        tokio::time::timeout_at(deadline, wait(&mut child, &mut stdout, &mut stderr)).await;
    match waited {
        Ok(Ok(status)) => judge(status, &stdout, &stderr),
        Ok(Err(e)) => {
            kill(&mut child).await;
            Err(ProbeError::Wait {
                error: e.to_string(),
            })
        }
        Err(_) => {
            kill(&mut child).await;
            Err(ProbeError::TimedOut { timeout })
        }
    }
}

/// Waits for the child while reading both pipes.
async fn wait(
    child: &mut Child,
    stdout: &mut Capped,
    stderr: &mut Capped,
) -> std::io::Result<ExitStatus> {
    let out = drain(child.stdout.take(), stdout);
    let err = drain(child.stderr.take(), stderr);
    crate::process::while_draining(child.wait(), out, err, PIPE_GRACE).await
}

/// Kills the program's process group and reaps it, so no zombie and no straggler is left.
async fn kill(child: &mut Child) {
    // None once reaped: the pid (the group id) may then belong to someone else.
    if let Some(pid) = child.id() {
        // SIGKILL straight away: the probe is already late, and the next one is due soon.
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    let _ = child.wait().await;
}

fn judge(status: ExitStatus, stdout: &Capped, stderr: &Capped) -> Result<Passed, ProbeError> {
    use std::os::unix::process::ExitStatusExt;
    // What the program said, for the log: stderr, or stdout when it wrote nothing there.
    let output = || {
        let text = stderr.text();
        if text.is_empty() {
            stdout.text()
        } else {
            text
        }
    };
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(Passed::Exited),
        (Some(code), _) => Err(ProbeError::Exit {
            code,
            output: output(),
        }),
        (None, Some(signal)) => Err(ProbeError::Signaled { signal }),
        (None, None) => Err(ProbeError::Wait {
            error: format!("unexpected status {status}"),
        }),
    }
}

/// The first [`OUTPUT_CAP`] bytes of a stream.
#[derive(Debug, Default)]
struct Capped {
    bytes: Vec<u8>,
}

impl Capped {
    fn push(&mut self, chunk: &[u8]) {
        let room = OUTPUT_CAP.saturating_sub(self.bytes.len());
        self.bytes
            .extend_from_slice(&chunk[..room.min(chunk.len())]);
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).trim_end().to_owned()
    }
}

async fn drain<R: AsyncRead + Unpin>(pipe: Option<R>, into: &mut Capped) {
    let Some(mut pipe) = pipe else { return };
    let mut buf = [0u8; 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => into.push(&buf[..n]),
        }
    }
}
