//! Where the daemon's log goes. Under systemd, when stderr really is the journal (`JOURNAL_STREAM`
//! names stderr's device and inode), events go to journald natively through `tracing-journald`:
//! levels become real priorities (`journalctl -p warning -u enipeer` shows warnings and errors)
//! and every structured field becomes a journal field named `ENIPEER_<FIELD>`, so that
//! `journalctl -u enipeer ENIPEER_TO=master` lists the takeovers. Anywhere else: plain text on
//! stderr.
//!
//! Field names: tracing-journald upper-cases the field name, keeps only ASCII letters, digits and
//! `_` (a `.` becomes `_`), and puts the prefix and `_` before it; the event's message is
//! `MESSAGE`. The prefix is ours ([`FIELD_PREFIX`]), so `from`, `to` and `reason` of a
//! transition are `ENIPEER_FROM`, `ENIPEER_TO` and `ENIPEER_REASON` (the README lists them).

use std::os::fd::AsFd;
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

/// Put before every structured field's name in the journal.
pub const FIELD_PREFIX: &str = "ENIPEER";

/// What [`choose`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// stderr is the journal: log natively to journald.
    Journal,
    /// Plain text on stderr, with timestamps unless a journal stamps the lines anyway.
    Plain { timestamps: bool },
}

/// `journal_stream` is `$JOURNAL_STREAM` ("DEVICE:INODE", both decimal), `stderr` the device and
/// inode of fd 2. systemd sets the variable for the service's own stderr; a child or a shell
/// redirect inherits the variable with another stderr, and then it does not count.
pub fn choose(journal_stream: Option<&str>, stderr: Option<(u64, u64)>) -> Target {
    let named = journal_stream.and_then(|v| {
        let (dev, ino) = v.trim().split_once(':')?;
        Some((dev.parse::<u64>().ok()?, ino.parse::<u64>().ok()?))
    });
    match (named, stderr) {
        (Some(n), Some(s)) if n == s => Target::Journal,
        _ => Target::Plain { timestamps: true },
    }
}

/// The journal field a structured log field becomes (see the module docs).
pub fn journal_field(name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| if c == '.' { '_' } else { c })
        .skip_while(|&c| c == '_')
        .filter(|&c| c == '_' || c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    format!("{FIELD_PREFIX}_{name}")
}

fn stderr_id() -> Option<(u64, u64)> {
    let st = nix::sys::stat::fstat(std::io::stderr().as_fd()).ok()?;
    Some((st.st_dev, st.st_ino))
}

/// `ENIPEER_LOG` as a filter: set, not empty and valid (checked as `log.level` is).
fn env_filter() -> Option<EnvFilter> {
    let env = std::env::var(ENV).ok()?;
    crate::config::check_log_filter(&env).ok()?;
    EnvFilter::builder().parse(&env).ok()
}

/// The filter in force: `ENIPEER_LOG` when it is usable, otherwise `log.level` (which validation
/// has checked), otherwise `info`.
fn filter(level: &str) -> EnvFilter {
    env_filter().unwrap_or_else(|| {
        EnvFilter::builder()
            .parse(level)
            .unwrap_or_else(|_| EnvFilter::new("info"))
    })
}

/// Said once the logger is up: an `ENIPEER_LOG` that is set but cannot be used is ignored.
fn warn_unusable_env() {
    if let Ok(env) = std::env::var(ENV) {
        if let Err(why) = crate::config::check_log_filter(&env) {
            tracing::warn!(value = %env, "ENIPEER_LOG ignored ({why}); logging at log.level: fix or unset it");
        }
    }
}

/// Overrides `log.level` when set (for a one-off debug session without editing the file).
const ENV: &str = "ENIPEER_LOG";

/// The running filter, so a reload can change it without reinstalling the subscriber.
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Why a reload could not change the log level.
#[derive(Debug, thiserror::Error)]
pub enum LevelError {
    #[error("ENIPEER_LOG is set and overrides log.level: unset it (e.g. in the unit's drop-in) to set the level from the file")]
    Overridden,
    #[error("{0:?} is not a log filter")]
    Invalid(String),
    #[error("the logger is not installed (not running as `enipeer run`)")]
    NotInstalled,
}

impl LevelError {
    pub fn kind(&self) -> &'static str {
        match self {
            LevelError::Overridden => "overridden",
            LevelError::Invalid(_) => "invalid",
            LevelError::NotInstalled => "not-installed",
        }
    }
}

/// Changes the running log filter to `level` (a reload of `log.level`).
pub fn set_level(level: &str) -> Result<(), LevelError> {
    if env_filter().is_some() {
        return Err(LevelError::Overridden);
    }
    crate::config::check_log_filter(level).map_err(|_| LevelError::Invalid(level.to_owned()))?;
    let f = EnvFilter::builder()
        .parse(level)
        .map_err(|_| LevelError::Invalid(level.to_owned()))?;
    let handle = FILTER.get().ok_or(LevelError::NotInstalled)?;
    handle.reload(f).map_err(|_| LevelError::NotInstalled)
}

/// Installs the global subscriber for `enipeer run`, filtering at `level` (`log.level`).
pub fn init(level: &str) {
    let (filter, handle) = reload::Layer::new(filter(level));
    let _ = FILTER.set(handle);
    let registry = tracing_subscriber::registry().with(filter);
    let stream = std::env::var("JOURNAL_STREAM").ok();
    let target = choose(stream.as_deref(), stderr_id());
    if target == Target::Journal {
        match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer
                    .with_field_prefix(Some(FIELD_PREFIX.to_string()))
                    .with_syslog_identifier("enipeer".to_string());
                registry.with(layer).init();
                warn_unusable_env();
                return;
            }
            Err(e) => {
                // stderr is still the journal: plain lines there, stamped by journald.
                registry.with(plain(false)).init();
                tracing::warn!(error = %e, "cannot log natively to journald; logging plain text to stderr (priorities and fields are lost)");
                return;
            }
        }
    }
    registry.with(plain(true)).init();
    warn_unusable_env();
}

/// Plain lines on stderr; without timestamps where the journal stamps them anyway.
fn plain<S>(timestamps: bool) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false);
    if timestamps {
        layer.boxed()
    } else {
        layer.without_time().boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_only_when_it_is_stderr() {
        assert_eq!(choose(Some("8:17"), Some((8, 17))), Target::Journal);
        assert_eq!(choose(Some(" 8:17\n"), Some((8, 17))), Target::Journal);
        // Inherited by something whose stderr went elsewhere.
        assert_eq!(
            choose(Some("8:17"), Some((8, 18))),
            Target::Plain { timestamps: true }
        );
        assert_eq!(
            choose(None, Some((8, 17))),
            Target::Plain { timestamps: true }
        );
        assert_eq!(
            choose(Some("8:17"), None),
            Target::Plain { timestamps: true }
        );
        for junk in ["", "8", "8:", ":17", "a:b", "8:17:1"] {
            assert_eq!(
                choose(Some(junk), Some((8, 17))),
                Target::Plain { timestamps: true },
                "{junk:?}"
            );
        }
    }

    #[test]
    fn fields_map_to_prefixed_journal_names() {
        assert_eq!(journal_field("from"), "ENIPEER_FROM");
        assert_eq!(journal_field("to"), "ENIPEER_TO");
        assert_eq!(journal_field("reason"), "ENIPEER_REASON");
        assert_eq!(journal_field("gap_ms"), "ENIPEER_GAP_MS");
        assert_eq!(journal_field("log.target"), "ENIPEER_LOG_TARGET");
        assert_eq!(journal_field("_private-x"), "ENIPEER_PRIVATEX");
    }
}
