//! SIGHUP: re-read the config file, validate it as `enipeer check` does, and apply what can
//! change live (timings, priority, preempt, hold-down, stop behaviour, hooks, and the keys, which
//! are re-read for a rotation). An invalid file, or one that changes what cannot change live, is
//! refused whole with the same messages, and the daemon runs on as before. No role changes.

use std::path::PathBuf;

use tokio::sync::mpsc;
use tracing::{error, info};

use super::{core_config, Daemon, DaemonError};
use crate::config::{self, Settings};

/// SIGHUP, as a stream of reload requests (without a handler SIGHUP would end the daemon, and
/// systemd would count that as a clean exit).
pub fn reload_signals() -> Result<mpsc::Receiver<()>, DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signal)?;
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            // A reload already queued covers this one too.
            let _ = tx.try_send(());
        }
    });
    Ok(rx)
}

impl Daemon {
    pub(super) async fn reload(&mut self) {
        let Some(path) = self.config_path.clone() else {
            return error!("reload requested, but this daemon was not started from a file");
        };
        match self.reloaded_settings(path) {
            Ok(Some(new)) => self.apply(new).await,
            Ok(None) => {}
            Err(()) => {}
        }
    }

    /// The new settings, or `Err` after logging why they are refused.
    fn reloaded_settings(&self, path: PathBuf) -> Result<Option<Settings>, ()> {
        let new = match config::load(&path) {
            Ok(s) => s,
            Err(e) => {
                error!(
                    file = %path.display(),
                    "reload refused, still running on the previous config:\n{e}"
                );
                return Err(());
            }
        };
        match config::live_changes(&self.settings, &new) {
            Ok(changed) => {
                info!(file = %path.display(), changed = ?changed, "config reloaded");
                Ok(Some(new))
            }
            Err(refused) => {
                for p in &refused {
                    error!(key = %p.key, "reload refused: {}: {}", p.key, p.message);
                }
                Err(())
            }
        }
    }

    async fn apply(&mut self, new: Settings) {
        match config::keyfile::read_keys(&new.auth) {
            Ok(keys) => self.peer.set_keys(keys),
            Err(e) => {
                // The rest applies; the keys in use stay (a node that cannot read its key file
                // must not stop authenticating).
                error!(error = %e, "reload: cannot read the key files; keeping the keys in use")
            }
        }
        self.hooks.update(new.hooks.clone());
        self.settings = new;
        let cfg = core_config(&self.settings, &self.instance_id);
        let actions = self.node.reconfigure(cfg, self.now());
        self.execute(actions).await;
    }
}
