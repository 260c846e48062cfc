//! [`KEYS`] against the truth: the parser's fields, validation's defaults and ranges, and the
//! example file.

use std::collections::BTreeSet;

use serde::de::DeserializeOwned;

use super::super::raw::*;
use super::super::tests::Cfg;
use super::super::{ConfigError, Settings};
use super::*;

const EXAMPLE: &str = include_str!("../../../conf/enipeer.toml");

fn table(name: &str) -> &'static TableDoc {
    TABLES
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("{name} is not in TABLES"))
}

/// How `enipeer check` names the key in a problem: `peer[0].name` in an array of tables.
fn problem_key(k: &KeyDoc) -> String {
    if table(k.table).array {
        format!("{}[0].{}", k.table, k.key)
    } else {
        k.path()
    }
}

/// The minimal valid config, plus an http check when the key belongs to `[[check]]`.
fn base(k: &KeyDoc) -> Cfg {
    let cfg = Cfg::minimal();
    if k.table == "check" {
        cfg.set("[[check]]", "kind", "\"http\"")
    } else {
        cfg
    }
}

/// `cfg` with `k = value`; `dead-interval`'s lower bound is only reachable with a short
/// interval (it must also be more than twice the interval).
fn with(k: &KeyDoc, value: &str) -> Cfg {
    let cfg = base(k).set(&table(k.table).header(), k.key, value);
    if k.path() == "heartbeat.dead-interval" {
        cfg.set("[heartbeat]", "interval", "\"50ms\"")
    } else {
        cfg
    }
}

fn outcome(cfg: &Cfg) -> Result<Settings, ConfigError> {
    cfg.parse()
}

/// The problems `enipeer check` reports about `k` itself.
fn problems_of(k: &KeyDoc, cfg: &Cfg) -> Vec<String> {
    match outcome(cfg) {
        Ok(_) => Vec::new(),
        Err(e) => e
            .problems
            .into_iter()
            .filter(|p| p.key == problem_key(k))
            .map(|p| p.message)
            .collect(),
    }
}

#[test]
fn every_key_belongs_to_a_documented_table_and_appears_once() {
    let mut seen = BTreeSet::new();
    for k in KEYS {
        table(k.table);
        assert!(seen.insert(k.path()), "{} is listed twice", k.path());
        assert!(!k.doc.is_empty(), "{} has no doc", k.path());
    }
    for t in TABLES {
        assert!(
            KEYS.iter().any(|k| k.table == t.name),
            "{} has no keys",
            t.name
        );
    }
}

/// serde's "unknown field" error lists every field the struct accepts: the parser's own list of
/// keys, so a key added to `raw` without a [`KeyDoc`] fails here.
fn parser_fields<T: DeserializeOwned + std::fmt::Debug>() -> BTreeSet<String> {
    let err = toml::from_str::<T>("not-a-key-of-any-table = 1").unwrap_err();
    let msg = err.to_string();
    let (_, list) = msg
        .split_once("expected one of ")
        .or_else(|| msg.split_once("expected "))
        .unwrap_or_else(|| panic!("no field list in {msg:?}"));
    // "expected `a`", "expected `a` or `b`", "expected one of `a`, `b`, `c`".
    let list = list
        .lines()
        .next()
        .unwrap_or_default()
        .replace("` or `", "`, `");
    list.split(", ")
        .map(|f| f.trim().trim_matches('`').to_owned())
        .collect()
}

#[test]
fn the_documented_keys_are_exactly_the_parsers_keys() {
    let parser: &[(&str, BTreeSet<String>)] = &[
        ("node", parser_fields::<RawNode>()),
        ("peer", parser_fields::<RawPeer>()),
        ("group", parser_fields::<RawGroup>()),
        ("heartbeat", parser_fields::<RawHeartbeat>()),
        ("auth", parser_fields::<RawAuth>()),
        ("aws", parser_fields::<RawAws>()),
        ("network", parser_fields::<RawNetwork>()),
        ("hooks", parser_fields::<RawHooks>()),
        ("control", parser_fields::<RawControl>()),
        ("stop", parser_fields::<RawStop>()),
        ("metrics", parser_fields::<RawMetrics>()),
        ("log", parser_fields::<RawLog>()),
        ("check", parser_fields::<RawCheck>()),
    ];
    let sections: BTreeSet<String> = parser_fields::<RawConfig>();
    let documented: BTreeSet<String> = TABLES.iter().map(|t| t.name.to_owned()).collect();
    let mut expected_sections = documented.clone();
    expected_sections.insert("testing".to_owned());
    assert_eq!(sections, expected_sections, "tables: parser vs TABLES");
    assert_eq!(
        SECTIONS
            .iter()
            .map(|s| (*s).to_owned())
            .collect::<BTreeSet<_>>(),
        expected_sections
    );
    for (name, fields) in parser {
        let doc: BTreeSet<String> = KEYS
            .iter()
            .filter(|k| k.table == *name)
            .map(|k| k.key.to_owned())
            .collect();
        assert_eq!(&doc, fields, "[{name}]: KEYS vs the parser");
    }
    // Every documented table is compared above.
    assert_eq!(parser.len(), TABLES.len());
}

#[test]
fn writing_a_documented_default_changes_nothing() {
    let mut tested = 0;
    for k in KEYS {
        let KeyDefault::Value(value) = k.default else {
            continue;
        };
        let implicit = outcome(&base(k)).unwrap_or_else(|e| panic!("{}: {e}", k.path()));
        let explicit = outcome(&with(k, value)).unwrap_or_else(|e| {
            panic!(
                "{} = {value} (the documented default) is refused: {e}",
                k.path()
            )
        });
        let implicit = if k.path() == "heartbeat.dead-interval" {
            outcome(&base(k).set("[heartbeat]", "interval", "\"50ms\"")).unwrap()
        } else {
            implicit
        };
        assert_eq!(
            implicit,
            explicit,
            "{} = {value} is not the default",
            k.path()
        );
        tested += 1;
    }
    assert!(tested > 30, "only {tested} defaults tested");
}

/// The test above can fail: a wrong documented default is caught.
#[test]
fn a_wrong_default_would_be_caught() {
    let k = KEYS.iter().find(|k| k.path() == "node.priority").unwrap();
    assert_ne!(
        outcome(&base(k)).unwrap(),
        outcome(&with(k, "101")).unwrap()
    );
}

#[test]
fn required_keys_are_reported_missing() {
    for k in KEYS.iter().filter(|k| k.default == KeyDefault::Required) {
        let cfg = base(k).without_key(&table(k.table).header(), k.key);
        let messages = problems_of(k, &cfg);
        assert!(
            messages.iter().any(|m| m.contains("missing")),
            "{} left out: {messages:?}",
            k.path()
        );
    }
}

fn ms(d: &str) -> u128 {
    humantime::parse_duration(d)
        .unwrap_or_else(|e| panic!("{d}: {e}"))
        .as_millis()
}

#[test]
fn documented_ranges_are_what_validation_accepts() {
    for k in KEYS {
        let (inside, outside): (Vec<String>, Vec<String>) = match k.range {
            Range::Any => continue,
            Range::Int(lo, hi) => (
                vec![lo.to_string(), hi.to_string()],
                vec![(lo - 1).to_string(), (hi + 1).to_string()],
            ),
            Range::AtLeast(min) => (
                vec![format!("\"{min}\"")],
                vec![format!("\"{}ms\"", ms(min) - 1)],
            ),
            Range::NonZero => (vec!["\"1ms\"".to_owned()], vec!["\"0s\"".to_owned()]),
            Range::OneOf(choices) => (
                choices.iter().map(|c| format!("\"{c}\"")).collect(),
                vec!["\"no-such-choice\"".to_owned()],
            ),
        };
        for v in &inside {
            let messages = problems_of(k, &with(k, v));
            assert!(
                messages.is_empty(),
                "{} = {v} is documented as allowed: {messages:?}",
                k.path()
            );
        }
        for v in &outside {
            assert!(
                !problems_of(k, &with(k, v)).is_empty(),
                "{} = {v} is outside the documented range but accepted",
                k.path()
            );
        }
    }
}

/// The body of `header` in the example: the lines up to the next table header.
fn example_body(header: &str) -> Vec<&'static str> {
    let start = EXAMPLE
        .lines()
        .position(|l| l.trim() == header)
        .unwrap_or_else(|| panic!("{header} missing from the example"));
    EXAMPLE
        .lines()
        .skip(start + 1)
        .take_while(|l| !l.starts_with('['))
        .collect()
}

/// `key` when the line sets it, commented out or not (`# mtu = 1500`, `port = 7460`).
fn key_of_line(line: &str) -> Option<&str> {
    let l = line.trim_start_matches(['#', ' ']);
    let (key, _) = l.split_once(" = ")?;
    (!key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')).then_some(key)
}

/// Every key is in the example (commented out when optional) and the example shows no key that
/// is not documented, so the example stays a complete reference too.
#[test]
fn the_example_shows_exactly_the_documented_keys() {
    for t in TABLES {
        let body = example_body(&t.header());
        let shown: BTreeSet<&str> = body.iter().filter_map(|l| key_of_line(l)).collect();
        let doc: BTreeSet<&str> = KEYS
            .iter()
            .filter(|k| k.table == t.name)
            .map(|k| k.key)
            .collect();
        assert_eq!(shown, doc, "{}: the example vs KEYS", t.header());
    }
    assert!(!EXAMPLE.contains("[testing]"));
}

/// The comment above a key in the example states the same default as [`KEYS`] (or the key's
/// line shows it), so the two texts an operator may read agree.
#[test]
fn the_example_states_the_documented_defaults() {
    for k in KEYS {
        let KeyDefault::Value(value) = k.default else {
            continue;
        };
        let body = example_body(&table(k.table).header());
        let at = body
            .iter()
            .rposition(|l| key_of_line(l) == Some(k.key))
            .unwrap_or_else(|| panic!("{} not in the example", k.path()));
        let comment: Vec<&str> = body[..at]
            .iter()
            .rev()
            .take_while(|l| l.starts_with('#') && key_of_line(l).is_none())
            .copied()
            .collect();
        let line = body[at].trim_start_matches(['#', ' ']);
        // An empty hook list is "none" in prose.
        let prose = if value == "[]" { "none" } else { value };
        let stated =
            comment.iter().any(|l| l.contains(prose)) || line == format!("{} = {value}", k.key);
        assert!(
            stated,
            "{}: the example neither says the default is {value} nor sets it so:\n{}\n{}",
            k.path(),
            comment.iter().rev().copied().collect::<Vec<_>>().join("\n"),
            body[at]
        );
    }
}
