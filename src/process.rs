//! Child processes (hooks, exec checks): waiting for one while reading both of its pipes, so a
//! chatty child never blocks on a full pipe, then giving the pipes a grace period, since
//! something the child started may hold them open after it is gone.

use std::future::Future;
use std::time::Duration;

/// Runs `work` (waiting for or supervising the child) while `out` and `err` read its pipes;
/// once `work` is done, reads on for at most `grace`.
pub async fn while_draining<T>(
    work: impl Future<Output = T>,
    out: impl Future<Output = ()>,
    err: impl Future<Output = ()>,
    grace: Duration,
) -> T {
    tokio::pin!(work, out, err);
    let (mut out_done, mut err_done) = (false, false);
    let result = loop {
        tokio::select! {
            r = &mut work => break r,
            _ = &mut out, if !out_done => out_done = true,
            _ = &mut err, if !err_done => err_done = true,
        }
    };
    let rest = async {
        if !out_done {
            out.await;
        }
        if !err_done {
            err.await;
        }
    };
    let _ = tokio::time::timeout(grace, rest).await;
    result
}
