//! The loop's deadline (the core's next wake-up) as a timerfd: the thread wakes once, at the
//! deadline.
//!
//! tokio's timer wheel wakes its thread early for a sleep longer than 64 ms: at the start of the
//! coarser slot the timer sits in, to move it to a finer one, and then again at the deadline.
//! The loop sleeps up to a heartbeat interval (200 ms by default), so that was one wake-up in
//! three while idle (strace in the lab: a wake every 192 ms, 3 × 64, besides the sends and the
//! receives). Where a timerfd cannot be had the loop falls back to tokio's sleep.

use std::os::fd::{AsFd, AsRawFd, RawFd};

use nix::errno::Errno;
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::time::Instant;

/// What tokio's `AsyncFd` needs: the raw fd (nix's `TimerFd` lends only a borrowed one).
struct Fd(TimerFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// A one-shot monotonic timer, set anew for each wait.
pub(super) struct Deadline {
    fd: AsyncFd<Fd>,
}

impl Deadline {
    /// Must be called within the tokio runtime.
    pub(super) fn new() -> std::io::Result<Deadline> {
        let flags = TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC;
        let timer = TimerFd::new(ClockId::CLOCK_MONOTONIC, flags)?;
        // SAFETY: `Fd` owns the timer's descriptor, which stays open, and is the same one every
        // `as_raw_fd` returns, for as long as the `AsyncFd` holds it (it is never taken out).
        let fd = unsafe { AsyncFd::register_with_interest(Fd(timer), Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Deadline { fd })
    }

    /// Resolves at `at`, at once if that has passed. Cancel-safe: each call sets the timer
    /// again (which also resets an expiry nobody read), so a wait dropped for another event
    /// leaves nothing behind.
    async fn until(&self, at: Instant) -> std::io::Result<()> {
        let left = at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            // A zero one-shot would disarm the timer rather than fire it.
            return Ok(());
        }
        let expiry = Expiration::OneShot(TimeSpec::from_duration(left));
        self.fd
            .get_ref()
            .0
            .set(expiry, TimerSetTimeFlags::empty())?;
        loop {
            let mut ready = self.fd.readable().await?;
            // Non-blocking: reads the expiry count, or EAGAIN when readiness was stale.
            match ready.get_inner().0.wait() {
                Ok(()) => return Ok(()),
                Err(Errno::EAGAIN) => ready.clear_ready(),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Sleeps until `at` on `deadline`, or on tokio's timer without one (or should it fail).
pub(super) async fn sleep_until(deadline: Option<&Deadline>, at: Instant) {
    if let Some(d) = deadline {
        match d.until(at).await {
            Ok(()) => return,
            Err(e) => tracing::debug!(error = %e, "timerfd wait failed; tokio's timer instead"),
        }
    }
    tokio::time::sleep_until(at).await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn wakes_at_the_deadline_and_not_before() {
        let d = Deadline::new().expect("timerfd");
        for ms in [0, 1, 30, 120] {
            let start = Instant::now();
            let at = start + Duration::from_millis(ms);
            sleep_until(Some(&d), at).await;
            assert!(Instant::now() >= at, "woke before the deadline ({ms} ms)");
        }
    }

    /// A wait abandoned for another event (as the loop's select does) leaves the next one
    /// correct: it neither fires at the old deadline nor never.
    #[tokio::test]
    async fn an_abandoned_wait_does_not_disturb_the_next() {
        let d = Deadline::new().expect("timerfd");
        let start = Instant::now();
        let abandoned = tokio::time::timeout(
            Duration::from_millis(5),
            sleep_until(Some(&d), start + Duration::from_millis(20)),
        )
        .await;
        assert!(abandoned.is_err());
        // Let the abandoned expiry pass unread, then wait for a later deadline.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let at = Instant::now() + Duration::from_millis(40);
        sleep_until(Some(&d), at).await;
        assert!(Instant::now() >= at, "a stale expiry ended the wait early");
    }
}
