//! The parsed-but-untyped TOML document: splits it into [`RawConfig`] one top-level table at a
//! time and maps byte spans and dotted keys (`peer[1].addresses[0]`) back to line numbers.
//!
//! serde stops at the first error inside one struct, so deserializing the whole file at once
//! would report one problem per run. Deserializing each table from the spanned document instead
//! gives one problem per broken table, each with the line toml points at.

use std::collections::BTreeSet;
use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use super::raw::{RawConfig, DURATION_KEYS, SECTIONS};
use super::Problem;

pub(crate) struct Document<'a> {
    text: &'a str,
    root: DeTable<'a>,
}

/// The outcome of splitting a document into its tables.
pub(crate) struct Sections {
    pub raw: RawConfig,
    /// Tables that are present but could not be deserialized (already reported); validation
    /// must not also call them missing.
    pub failed: BTreeSet<&'static str>,
    pub problems: Vec<Problem>,
    /// Dotted keys that were reported and removed to let their table deserialize; validation
    /// sees them as absent and must not complain about them a second time.
    pub stripped: Vec<String>,
}

impl<'a> Document<'a> {
    /// Parses the TOML syntax only; a syntax error is a single problem with its line.
    pub fn parse(text: &'a str) -> Result<Self, Problem> {
        match DeTable::parse(text) {
            Ok(root) => Ok(Self {
                text,
                root: root.into_inner(),
            }),
            Err(err) => Err(Problem {
                key: String::new(),
                line: err.span().map(|s| line_of_offset(text, s.start)),
                message: format!("TOML syntax error: {}", tidy_message(err.message())),
            }),
        }
    }

    pub fn line_of_offset(&self, offset: usize) -> usize {
        line_of_offset(self.text, offset)
    }

    /// The line of the deepest part of a dotted key that exists in the file: the value itself
    /// when present, otherwise its table (so "missing key" problems point at the table header).
    pub fn line_of_key(&self, key: &str) -> Option<usize> {
        let mut segments = parse_key(key)?.into_iter();
        let first = match segments.next()? {
            Segment::Key(k) => self.root.get(k)?,
            Segment::Index(_) => return None,
        };
        let mut current: &Spanned<DeValue<'a>> = first;
        for seg in segments {
            let next = match (seg, current.get_ref()) {
                (Segment::Key(k), DeValue::Table(t)) => t.get(k),
                (Segment::Index(i), DeValue::Array(a)) => a.get(i),
                _ => None,
            };
            match next {
                Some(v) => current = v,
                None => break,
            }
        }
        Some(self.line_of_offset(current.span().start))
    }

    /// Deserializes every top-level table on its own, collecting one problem per broken table
    /// (per broken `[[peer]]` entry) and one per unknown table.
    // Over 80 lines on purpose: one arm per top-level table, a flat dispatch table.
    pub fn sections(&self) -> Sections {
        let mut out = Sections {
            raw: RawConfig::default(),
            failed: BTreeSet::new(),
            problems: Vec::new(),
            stripped: Vec::new(),
        };
        for (key, value) in self.root.iter() {
            let name: &str = key.get_ref();
            let Some(&section) = SECTIONS.iter().find(|s| **s == name) else {
                out.problems.push(Problem {
                    key: name.to_owned(),
                    line: Some(self.line_of_offset(key.span().start)),
                    message: format!(
                        "unknown table [{name}]: expected one of {}",
                        SECTIONS
                            .iter()
                            .filter(|s| **s != "testing")
                            .map(|s| if matches!(*s, "peer" | "check") {
                                format!("[[{s}]]")
                            } else {
                                format!("[{s}]")
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
                continue;
            };
            let ok = match section {
                "node" => self.table(
                    section,
                    value,
                    &mut out.problems,
                    &mut out.stripped,
                    &mut out.raw.node,
                ),
                "peer" => self.array_of_tables(
                    section,
                    value,
                    &mut out.problems,
                    &mut out.stripped,
                    &mut out.raw.peer,
                ),
                "check" => self.array_of_tables(
                    section,
                    value,
                    &mut out.problems,
                    &mut out.stripped,
                    &mut out.raw.check,
                ),
                "group" => self.table(
                    section,
                    value,
                    &mut out.problems,
                    &mut out.stripped,
                    &mut out.raw.group,
                ),
                "heartbeat" => self.table(
                    section,
                    value,
                    &mut out.problems,
                    &mut out.stripped,
                    &mut out.raw.heartbeat,
                ),
                "auth" => self.table(
                    section,
                    value,
                    &mut out.problems,
                    &mut out.stripped,
                    &mut out.raw.auth,
                ),
                "aws" => self.table(
                    section,
                    value,
                    &mut out.problems,
                    &mut out.stripped,
                    &mut out.raw.aws,
                ),
                "network" => self.table(
                    section,
                    value,
                    &mut out.problems,
                    &mut out.stripped,
                    &mut out.raw.network,
                ),
                "hooks" => self.table(
                    section,
                    value,
                    &mut out.problems,
                    &mut out.stripped,
                    &mut out.raw.hooks,
                ),
                "control" => self.table(
                    section,
                    value,
                    &mut out.problems,
                    &mut out.stripped,
                    &mut out.raw.control,
                ),
                "metrics" => self.table(
                    section,
                    value,
                    &mut out.problems,
                    &mut out.stripped,
                    &mut out.raw.metrics,
                ),
                "log" => self.table(
                    section,
                    value,
                    &mut out.problems,
                    &mut out.stripped,
                    &mut out.raw.log,
                ),
                "stop" => self.table(
                    section,
                    value,
                    &mut out.problems,
                    &mut out.stripped,
                    &mut out.raw.stop,
                ),
                "testing" => self.table(
                    section,
                    value,
                    &mut out.problems,
                    &mut out.stripped,
                    &mut out.raw.testing,
                ),
                _ => true,
            };
            if !ok {
                out.failed.insert(section);
            }
        }
        out
    }

    fn table<T: DeserializeOwned>(
        &self,
        name: &str,
        value: &Spanned<DeValue<'a>>,
        problems: &mut Vec<Problem>,
        stripped: &mut Vec<String>,
        slot: &mut Option<T>,
    ) -> bool {
        if !matches!(value.get_ref(), DeValue::Table(_)) {
            problems.push(Problem {
                key: name.to_owned(),
                line: Some(self.line_of_offset(value.span().start)),
                message: format!(
                    "must be a table ([{name}]), found {}",
                    value.get_ref().type_str()
                ),
            });
            return false;
        }
        match self.deserialize(name, value, problems, stripped) {
            Some(v) => {
                *slot = Some(v);
                true
            }
            None => false,
        }
    }

    /// `[[peer]]` and `[[check]]` entries are deserialized one by one so each broken entry is
    /// reported with its index and the others still get validated.
    fn array_of_tables<T: DeserializeOwned>(
        &self,
        name: &str,
        value: &Spanned<DeValue<'a>>,
        problems: &mut Vec<Problem>,
        stripped: &mut Vec<String>,
        slot: &mut Option<Vec<T>>,
    ) -> bool {
        let DeValue::Array(items) = value.get_ref() else {
            problems.push(Problem {
                key: name.to_owned(),
                line: Some(self.line_of_offset(value.span().start)),
                message: format!(
                    "must be an array of tables, written [[{name}]] (double brackets), found {}",
                    value.get_ref().type_str()
                ),
            });
            return false;
        };
        let mut ok = true;
        let mut entries = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let key = format!("{name}[{i}]");
            if !matches!(item.get_ref(), DeValue::Table(_)) {
                problems.push(Problem {
                    key,
                    line: Some(self.line_of_offset(item.span().start)),
                    message: format!("must be a table, found {}", item.get_ref().type_str()),
                });
                ok = false;
                continue;
            }
            match self.deserialize(&key, item, problems, stripped) {
                Some(p) => entries.push(p),
                None => ok = false,
            }
        }
        if ok {
            *slot = Some(entries);
        }
        ok
    }

    /// Deserializes one table. serde stops at the first bad key, so each bad key (unknown, or
    /// of the wrong type) is reported, removed and the table retried: every bad key of the
    /// table is reported in one run and the rest of the table still gets validated.
    fn deserialize<T: DeserializeOwned>(
        &self,
        prefix: &str,
        value: &Spanned<DeValue<'a>>,
        problems: &mut Vec<Problem>,
        stripped: &mut Vec<String>,
    ) -> Option<T> {
        let mut value = value.clone();
        // Each retry removes one key, so this bounds the loop by the table's size.
        let limit = match value.get_ref() {
            DeValue::Table(t) => t.len() + 1,
            _ => 1,
        };
        for _ in 0..limit {
            let err = match T::deserialize(ValueDeserializer::from(value.clone())) {
                Ok(v) => return Some(v),
                Err(err) => err,
            };
            let Some(span) = err.span() else {
                problems.push(Problem {
                    key: prefix.to_owned(),
                    line: Some(self.line_of_offset(value.span().start)),
                    message: tidy_message(err.message()),
                });
                return None;
            };
            let key = key_at(prefix, &value, &span);
            let mut message = tidy_message(err.message());
            if DURATION_KEYS.contains(&without_indices(&key).as_str()) {
                message.push_str(" with a unit, like \"200ms\", \"1s\" or \"5m\"");
            }
            problems.push(Problem {
                key,
                line: Some(self.line_of_offset(span.start)),
                message,
            });
            let DeValue::Table(table) = value.get_mut() else {
                return None;
            };
            // No culprit means the error is about the table as a whole: nothing to strip.
            let culprit = table
                .iter()
                .find(|(k, v)| contains(k.span(), span.start) || contains(v.span(), span.start))
                .map(|(k, _)| k.get_ref().to_string())?;
            table.remove(culprit.as_str());
            stripped.push(format!("{prefix}.{culprit}"));
        }
        None
    }
}

fn contains(range: Range<usize>, pos: usize) -> bool {
    range.start <= pos && pos < range.end.max(range.start + 1)
}

/// 1-based line of a byte offset.
pub(crate) fn line_of_offset(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The dotted key whose key or value span contains `span.start`, descending as deep as possible.
fn key_at(prefix: &str, value: &Spanned<DeValue<'_>>, span: &Range<usize>) -> String {
    let pos = span.start;
    match value.get_ref() {
        DeValue::Table(t) => {
            for (k, v) in t.iter() {
                if contains(k.span(), pos) || contains(v.span(), pos) {
                    return key_at(&format!("{prefix}.{}", k.get_ref()), v, span);
                }
            }
            prefix.to_owned()
        }
        DeValue::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                if contains(v.span(), pos) {
                    return key_at(&format!("{prefix}[{i}]"), v, span);
                }
            }
            prefix.to_owned()
        }
        _ => prefix.to_owned(),
    }
}

/// serde's wording is written for Rust programmers; operators read TOML.
fn tidy_message(message: &str) -> String {
    message
        .trim_end()
        .replace("unknown field", "unknown key")
        .replace("missing field", "missing key")
        .replace("expected i64", "expected an integer")
        .replace("expected a sequence", "expected an array")
}

/// `check[2].interval` as `check.interval`: the form the per-key tables list.
fn without_indices(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut depth = 0usize;
    for ch in key.chars() {
        match ch {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            _ if depth == 0 => out.push(ch),
            _ => {}
        }
    }
    out
}

enum Segment<'k> {
    Key(&'k str),
    Index(usize),
}

/// Splits `peer[1].addresses[0]` into `peer`, 1, `addresses`, 0.
fn parse_key(key: &str) -> Option<Vec<Segment<'_>>> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if name.is_empty() {
            return None;
        }
        out.push(Segment::Key(name));
        while let Some(inner) = rest.strip_prefix('[') {
            let close = inner.find(']')?;
            out.push(Segment::Index(inner[..close].parse().ok()?));
            rest = &inner[close + 1..];
        }
    }
    Some(out)
}
