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

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

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

fn filter() -> EnvFilter {
    EnvFilter::try_from_env("ENIPEER_LOG").unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the global subscriber for `enipeer run`.
pub fn init() {
    let stream = std::env::var("JOURNAL_STREAM").ok();
    let target = choose(stream.as_deref(), stderr_id());
    if target == Target::Journal {
        match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer
                    .with_field_prefix(Some(FIELD_PREFIX.to_string()))
                    .with_syslog_identifier("enipeer".to_string());
                tracing_subscriber::registry()
                    .with(filter())
                    .with(layer)
                    .init();
                return;
            }
            Err(e) => {
                // stderr is still the journal: plain lines there, stamped by journald.
                plain(false);
                tracing::warn!(error = %e, "cannot log natively to journald; logging plain text to stderr (priorities and fields are lost)");
                return;
            }
        }
    }
    plain(true);
}

fn plain(timestamps: bool) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false);
    if timestamps {
        builder.init();
    } else {
        builder.without_time().init();
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
