//! Maintenance mode across restarts: a file in `node.state-dir` holds the operator's reason while
//! the node is in maintenance, so a daemon restart (or a reboot for the very patch the mode was
//! for) does not make the node claim the ENI again behind the operator's back.

use std::path::{Path, PathBuf};

use tracing::{error, info};

use super::Daemon;

const FILE: &str = "maintenance";

pub(super) fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// The saved reason, if the node was in maintenance when it stopped.
pub(super) fn load(state_dir: &Path) -> Option<String> {
    let p = path(state_dir);
    match std::fs::read_to_string(&p) {
        Ok(reason) => {
            let reason = reason.trim().to_string();
            info!(file = %p.display(), %reason, "starting in maintenance (saved before the last stop)");
            Some(reason)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            // Unreadable: staying out of the election is the safe reading of "maybe".
            error!(
                file = %p.display(),
                error = %e,
                "cannot read the maintenance state; starting in maintenance to be safe. Fix the \
                 file's permissions, then `enipeer maintenance off`"
            );
            Some(format!("state file unreadable: {e}"))
        }
    }
}

impl Daemon {
    /// Writes (or removes) the state file to match the core's mode.
    pub(super) fn persist_maintenance(&self) {
        let p = path(&self.settings.node.state_dir);
        let result = match self.node.maintenance() {
            Some(reason) => std::fs::create_dir_all(&self.settings.node.state_dir)
                .and_then(|()| std::fs::write(&p, format!("{reason}\n"))),
            None => match std::fs::remove_file(&p) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                r => r,
            },
        };
        if let Err(e) = result {
            error!(
                file = %p.display(),
                error = %e,
                "cannot save the maintenance mode: a restart would forget it. Check that \
                 node.state-dir exists and is writable (the unit's StateDirectory= creates it)"
            );
        }
    }
}
