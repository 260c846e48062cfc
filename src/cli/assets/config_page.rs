//! `enipeer.toml(5)`: the config file's reference page, rendered from the key reference
//! ([`crate::config::keys`]) that the config unit tests hold against validation, so the page
//! lists every key with the default and range the daemon really applies.

use std::io::{self, Write};

use roff::{bold, italic, roman, Roff};

use super::{inline, paragraph, references, section};
use crate::config::keys::{KeyDefault, KeyDoc, TableDoc, KEYS, TABLES};

/// Writes the page. `section_no` is this page's section, `commands` the command pages'.
pub(super) fn render(section_no: &str, commands: &str, w: &mut dyn Write) -> io::Result<()> {
    let mut r = Roff::new();
    r.control("TH", ["enipeer.toml", section_no]);
    section(&mut r, "NAME");
    r.text([roman(
        "enipeer.toml - configuration of enipeer, the EC2 ENI failover daemon",
    )]);
    section(&mut r, "SYNOPSIS");
    r.text([italic("/etc/enipeer/enipeer.toml")]);
    section(&mut r, "DESCRIPTION");
    for text in INTRO {
        paragraph(&mut r, text);
    }
    for table in TABLES {
        render_table(&mut r, table);
    }
    section(&mut r, "FILES");
    super::item(
        &mut r,
        "/etc/enipeer/enipeer.toml",
        "The configuration read by `enipeer run` and `enipeer check` (`-c` for another file).",
    );
    super::item(
        &mut r,
        "/usr/share/doc/enipeer/enipeer.toml.example",
        "The packaged example, every key shown with a comment (the optional ones commented \
         out).",
    );
    section(&mut r, "SEE ALSO");
    r.text(references(&[
        ("enipeer", commands),
        ("enipeer-check", commands),
    ]));
    r.to_writer(w)
}

const INTRO: &[&str] = &[
    "The file is TOML. Unknown tables and keys are errors, so a misspelt key is reported rather \
     than ignored. `enipeer check -c FILE` lists every problem at once, each with its line and \
     key, or prints a summary; `enipeer run` refuses an invalid file the same way (exit status \
     78).",
    "Durations are strings with a unit: `\"200ms\"`, `\"1s\"`, `\"5m\"`. Addresses are IP \
     addresses, not names. Each key below gives its type, its default (what applies when the key \
     is left out) and, where values are restricted, the range accepted; integer ranges are \
     inclusive (`1..=254`).",
    "node-b uses the same file as node-a with `[node]` and `[[peer]]` swapped and its own \
     `heartbeat.bind`; `group`, `heartbeat.port` and the key must be the same on both.",
];

fn render_table(r: &mut Roff, table: &TableDoc) {
    let required = if table.required {
        " This table is required."
    } else {
        ""
    };
    section(r, &table.header());
    r.text(inline(&format!("{}{required}", table.doc)));
    for key in KEYS.iter().filter(|k| k.table == table.name) {
        render_key(r, key);
    }
}

fn render_key(r: &mut Roff, k: &KeyDoc) {
    r.control("TP", []);
    r.text([bold(k.key), roman(" ("), italic(k.kind), roman(")")]);
    r.text(inline(k.doc));
    let default = match k.default {
        KeyDefault::Required => "Required.".to_owned(),
        KeyDefault::Value(v) => format!("Default: `{v}`."),
        KeyDefault::Unset(meaning) | KeyDefault::Derived(meaning) => {
            format!("Default: {meaning}.")
        }
    };
    let line = match k.range.describe() {
        Some(range) => format!("{default} Range: {range}."),
        None => default,
    };
    r.control("br", []);
    r.text(inline(&line));
}
