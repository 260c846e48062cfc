//! Documents generated for the packages: the man pages and the bash, zsh and fish completions.
//! The command pages (`enipeer(8)`, `enipeer-<subcommand>(8)`) come from the CLI definition
//! (clap_mangen) plus what it cannot say (signals, exit status, environment, files), the config
//! page `enipeer.toml(5)` from the key reference in `config::keys`, the completions from the CLI
//! definition (clap_complete). Everything is written through the `roff` crate, which escapes.
//! `make packages` writes them with the hidden `enipeer generate-assets DIR`, so they can never
//! drift from the real command line and config.

use std::io;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::{Generator, Shell};
use clap_mangen::Man;
use roff::{bold, italic, roman, Inline, Roff};

use super::Cli;

mod config_page;

/// The shells whose completions the packages ship.
const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

#[derive(Debug, thiserror::Error)]
pub enum AssetsError {
    #[error("cannot create directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot render {name}")]
    Render {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl AssetsError {
    pub fn kind(&self) -> &'static str {
        match self {
            AssetsError::CreateDir { .. } => "create-dir",
            AssetsError::Render { .. } => "render",
            AssetsError::Write { .. } => "write",
        }
    }
}

/// `enipeer generate-assets DIR`: prints each file written; returns the exit code.
pub fn generate_command(dir: &Path) -> i32 {
    match generate(dir) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            crate::exit::OK
        }
        Err(e) => {
            eprintln!("enipeer: {}", super::error_chain(&e));
            crate::exit::FAILURE
        }
    }
}

/// Writes `DIR/man/enipeer.8`, one `DIR/man/enipeer-<subcommand>.8` per subcommand,
/// `DIR/man/enipeer.toml.5` and `DIR/completions/{enipeer.bash,_enipeer,enipeer.fish}`. Returns
/// the paths written.
pub fn generate(dir: &Path) -> Result<Vec<PathBuf>, AssetsError> {
    let mut written = Vec::new();

    let man_dir = dir.join("man");
    create_dir(&man_dir)?;
    for (name, text) in man_pages()? {
        written.push(write(&man_dir.join(name), &text)?);
    }

    let completions_dir = dir.join("completions");
    create_dir(&completions_dir)?;
    for shell in SHELLS {
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "enipeer", &mut text);
        written.push(write(
            &completions_dir.join(shell.file_name("enipeer")),
            &text,
        )?);
    }
    Ok(written)
}

/// The man section of every command page. `enipeer run` is a system daemon, and each other
/// subcommand administers it and needs root (or the `control.group`): `check` reads the
/// root-only config and key, `role`, `yield` and `maintenance` use the control socket (mode
/// 0600 by default), `keygen` writes into /etc/enipeer. man-pages(7) puts such commands in 8,
/// as ip(8), nft(8) and keepalived(8); section 1 is for commands any user runs (systemctl(1)
/// is there because it also manages user units). One section for the whole binary also keeps
/// `man enipeer-role` and the cross references predictable.
const SECTION: &str = "8";

/// The section of the config file's page: file formats (man-pages(7)).
const CONFIG_SECTION: &str = "5";

/// `(file name, roff text)` for `enipeer(8)`, each subcommand's page and `enipeer.toml(5)`.
pub fn man_pages() -> Result<Vec<(String, Vec<u8>)>, AssetsError> {
    // Built, so that subcommands know their full name ("enipeer keygen", page "enipeer-keygen").
    // `help` is clap's own subcommand: it would get an empty page of its own.
    let mut root = Cli::command().disable_help_subcommand(true);
    root.build();

    let mut pages = Vec::new();
    let main = Man::new(root.clone()).section(SECTION);
    let name = main.get_filename();
    pages.push((name.clone(), render(&name, |w| render_main(&main, w))?));

    for sub in root.get_subcommands().filter(|s| !s.is_hide_set()) {
        let man = Man::new(sub.clone()).section(SECTION);
        let name = man.get_filename();
        let text = render(&name, |w| {
            man.render(w)?;
            let mut see_also = Roff::new();
            section(&mut see_also, "SEE ALSO");
            see_also.text(references(&[
                ("enipeer", SECTION),
                ("enipeer.toml", CONFIG_SECTION),
            ]));
            see_also.to_writer(w)
        })?;
        pages.push((name, text));
    }

    let name = format!("enipeer.toml.{CONFIG_SECTION}");
    let text = render(&name, |w| config_page::render(CONFIG_SECTION, SECTION, w))?;
    pages.push((name, text));
    Ok(pages)
}

fn render(
    name: &str,
    f: impl FnOnce(&mut Vec<u8>) -> io::Result<()>,
) -> Result<Vec<u8>, AssetsError> {
    let mut out = Vec::new();
    f(&mut out).map_err(|source| AssetsError::Render {
        name: name.to_string(),
        source,
    })?;
    Ok(out)
}

/// clap_mangen's sections, with what an operator looks for in a daemon's page (what it does,
/// signals, exit status, environment, files) added in man-pages(7) order; see also last.
fn render_main(man: &Man, w: &mut Vec<u8>) -> io::Result<()> {
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    let mut description = Roff::new();
    for text in DESCRIPTION {
        paragraph(&mut description, text);
    }
    description.to_writer(w)?;
    man.render_options_section(w)?;
    man.render_subcommands_section(w)?;
    let mut extra = Roff::new();
    for (title, items) in MAIN_SECTIONS {
        section(&mut extra, title);
        for (term, text) in *items {
            item(&mut extra, term, text);
        }
    }
    extra.to_writer(w)?;
    man.render_version_section(w)?;
    let mut see_also = Roff::new();
    section(&mut see_also, "SEE ALSO");
    let mut refs = references(&[
        ("enipeer.toml", CONFIG_SECTION),
        ("systemctl", "1"),
        ("journalctl", "1"),
        ("sd_notify", "3"),
    ]);
    refs.extend([
        roman("; "),
        italic("/usr/share/doc/enipeer/README.md"),
        roman("; what each warning and fault means and what to do: "),
        italic("/usr/share/doc/enipeer/troubleshooting.md"),
        roman("."),
    ]);
    see_also.text(refs);
    see_also.to_writer(w)
}

/// `.SH TITLE`.
fn section(roff: &mut Roff, title: &str) {
    roff.control("SH", [title]);
}

/// A paragraph of [`inline`] text.
fn paragraph(roff: &mut Roff, text: &str) {
    roff.control("PP", []);
    roff.text(inline(text));
}

/// A tagged paragraph: the term in [`inline`] markup (a term without backticks is set in
/// italic: a path), then the text.
fn item(roff: &mut Roff, term: &str, text: &str) {
    roff.control("TP", []);
    if term.contains('`') {
        roff.text(inline(term));
    } else {
        roff.text([italic(term)]);
    }
    roff.text(inline(text));
}

/// Text whose `backticked` parts (names, values, commands) are set in bold, the rest in roman.
/// The roff writer escapes the rest, hyphens included, so paths and options copy-paste as ASCII.
fn inline(text: &str) -> Vec<Inline> {
    text.split('`')
        .enumerate()
        .filter(|(_, part)| !part.is_empty())
        .map(|(i, part)| if i % 2 == 1 { bold(part) } else { roman(part) })
        .collect()
}

/// `name(section), name(section)` with the names in bold.
fn references(pages: &[(&str, &str)]) -> Vec<Inline> {
    let mut out = Vec::new();
    for (i, (name, sec)) in pages.iter().enumerate() {
        if i > 0 {
            out.push(roman(", "));
        }
        out.push(bold(*name));
        out.push(roman(format!("({sec})")));
    }
    out
}

/// What the daemon does, after clap's one-line about.
const DESCRIPTION: &[&str] = &[
    "`enipeer run` is the daemon. Two EC2 instances in one availability zone run it with the \
     same `group.id` and shared key; they exchange authenticated UDP heartbeats \
     (`heartbeat.port`, default 7460). The live node with the higher `node.priority` is master: \
     it holds the secondary network interface `group.eni`, configures its addresses and \
     source-based policy routing over netlink, and runs the `on-master` hooks. The other node is \
     backup.",
    "When the master's heartbeats have been silent for `heartbeat.dead-interval` and, with \
     health checks configured, the service no longer answers through the ENI's address, the \
     backup moves the ENI to itself through the EC2 API, forcing the detach from the silent \
     holder. A node that lost the ENI while master waits `group.hold-down` before forcing it \
     away from anyone again, so a partition that cuts only heartbeats moves the ENI at most once \
     per hold-down. A master whose checks fail hands over to a healthy backup.",
    "The other subcommands administer the daemon: `check` validates a config (with \
     `--preflight` also the cloud side and the peers), `role` shows the state, `yield` and \
     `maintenance` move the ENI on purpose, `keygen` creates the shared key. The configuration \
     is described in enipeer.toml(5).",
    "Under systemd (the packaged unit is `Type=notify`) the daemon reports ready once its \
     heartbeat and control sockets are bound, and shows its role in `systemctl status enipeer`. \
     Every role change is logged at info with its reason.",
];

/// Sections the CLI definition cannot say, in man-pages(7) order: `(title, [(term, text)])`.
const MAIN_SECTIONS: &[(&str, &[(&str, &str)])] = &[
    (
        "SIGNALS",
        &[
            (
                "`SIGTERM`, `SIGINT`",
                "Stop. The daemon tells its peers, then a master does what `stop.mode` says: \
                 with `auto` (the default) it keeps the ENI across a plain restart (the peer \
                 waits `stop.restart-grace` for it) and hands it over to a live peer when the \
                 host is shutting down; `hold` always keeps it, `handover` always hands it over \
                 (waiting at most `stop.handover-timeout`). Then the `on-stop` hooks run and the \
                 daemon exits 0.",
            ),
            (
                "`SIGHUP`",
                "Reload (`systemctl reload enipeer`): the config file is read and validated as \
                 `enipeer check` does; timings, priority, preempt, the hold-down, stop \
                 behaviour, hooks, `log.level` and `metrics.listen` change at once without a \
                 role change, and the key files are re-read (key rotation). A file that is \
                 invalid, that changes what cannot change live (node name, peers, group id, \
                 ENI, bind address, network, checks, control socket), or whose new metrics \
                 address cannot be bound, is refused whole with messages naming each key, and \
                 the daemon runs on with the old config.",
            ),
        ],
    ),
    (
        "EXIT STATUS",
        &[
            ("`0`", "Success; for `run`, a clean stop."),
            (
                "`1`",
                "The daemon answered with an error (for example `yield` found no live peer, or \
                 the peer did not become master within `--timeout`), or a `check --preflight` \
                 test failed.",
            ),
            ("`2`", "Invalid command line."),
            (
                "`69`",
                "The daemon is not reachable on its control socket, or `run` failed after \
                 starting, e.g. a socket could not be bound (EX_UNAVAILABLE).",
            ),
            ("`70`", "Internal error (EX_SOFTWARE)."),
            (
                "`73`",
                "`keygen` could not create the key file (EX_CANTCREAT).",
            ),
            (
                "`78`",
                "The config file or a key file is invalid; every problem is listed on stderr \
                 with its line and key (EX_CONFIG). `run` refuses to start the same way, and the \
                 unit does not restart it (`RestartPreventExitStatus=78`).",
            ),
        ],
    ),
    (
        "ENVIRONMENT",
        &[
            (
                "`ENIPEER_LOG`",
                "Log filter for `run`, in tracing's EnvFilter syntax: `info`, `debug` for more, \
                 or per module such as `info,enipeer::peer=debug`. Overrides `log.level` from \
                 the file (which, unlike this, changes on reload).",
            ),
            (
                "`JOURNAL_STREAM`",
                "Set by systemd when stderr is the journal. The daemon then logs to the journal \
                 natively: warnings and errors keep their priority (`journalctl -u enipeer -p \
                 warning`) and structured fields become journal fields named `ENIPEER_<FIELD>` \
                 (`journalctl -u enipeer ENIPEER_TO=master`). Anywhere else, logs are plain text \
                 on stderr.",
            ),
            (
                "`NOTIFY_SOCKET`",
                "Set by systemd for a `Type=notify` unit: the daemon sends `READY=1` once its \
                 sockets are bound, `STATUS=` with its role on every change and `STOPPING=1` \
                 when it stops. Hooks and health-check programs do not inherit it, so they \
                 cannot speak to systemd in the daemon's name. Without it, nothing is sent.",
            ),
            (
                "`WATCHDOG_USEC`",
                "Set by systemd when the unit has `WatchdogSec=`: the event loop itself sends \
                 `WATCHDOG=1` at half that period, so a wedged loop is killed and restarted.",
            ),
            (
                "`AWS_*`",
                "The AWS SDK's usual variables are honoured (credentials, `AWS_REGION`, \
                 `AWS_EC2_METADATA_SERVICE_ENDPOINT`); on EC2 none is needed: the instance \
                 profile's credentials and the instance's region are used.",
            ),
        ],
    ),
    (
        "FILES",
        &[
            (
                "/etc/enipeer/enipeer.toml",
                "The configuration (mode 0640), described in enipeer.toml(5). A commented \
                 example is /usr/share/doc/enipeer/enipeer.toml.example.",
            ),
            (
                "/etc/enipeer/peer.key",
                "The shared heartbeat key, the same on both nodes, mode 0600. Create it with \
                 `enipeer keygen /etc/enipeer/peer.key` and copy it to the peer.",
            ),
            (
                "/run/enipeer/control.sock",
                "The control socket used by `role`, `yield` and `maintenance` \
                 (`control.socket`).",
            ),
            (
                "/var/lib/enipeer/maintenance",
                "Present while the node is in maintenance mode, so the mode survives restarts \
                 and reboots (`node.state-dir`).",
            ),
            (
                "/usr/share/doc/enipeer/iam-policy.json",
                "A least-privilege IAM policy for the instances' role.",
            ),
        ],
    ),
];

fn create_dir(path: &Path) -> Result<(), AssetsError> {
    std::fs::create_dir_all(path).map_err(|source| AssetsError::CreateDir {
        path: path.to_path_buf(),
        source,
    })
}

fn write(path: &Path, text: &[u8]) -> Result<PathBuf, AssetsError> {
    std::fs::write(path, text).map_err(|source| AssetsError::Write {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::super::Invocation;
    use super::*;

    fn visible_subcommands(cmd: &clap::Command) -> Vec<String> {
        cmd.get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| s.get_name().to_string())
            .collect()
    }

    #[test]
    fn both_command_definitions_are_valid() {
        Cli::command().debug_assert();
        Invocation::command().debug_assert();
    }

    #[test]
    fn the_binary_parses_exactly_the_documented_cli_plus_hidden_helpers() {
        let public = Cli::command();
        let parsed = Invocation::command();
        assert_eq!(visible_subcommands(&public), visible_subcommands(&parsed));
        assert_eq!(public.get_version(), parsed.get_version());
        assert_eq!(
            public.get_about().map(|s| s.to_string()),
            parsed.get_about().map(|s| s.to_string())
        );
        let hidden: Vec<_> = parsed
            .get_subcommands()
            .filter(|s| s.is_hide_set())
            .map(|s| s.get_name().to_string())
            .collect();
        assert_eq!(hidden, ["generate-assets"]);
    }

    #[test]
    fn writes_one_page_per_subcommand_the_config_page_and_three_completions() {
        let dir = tempfile::tempdir().unwrap();
        let written = generate(dir.path()).unwrap();
        let mut names: Vec<String> = written
            .iter()
            .map(|p| {
                p.strip_prefix(dir.path())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "completions/_enipeer",
                "completions/enipeer.bash",
                "completions/enipeer.fish",
                "man/enipeer-check.8",
                "man/enipeer-keygen.8",
                "man/enipeer-maintenance.8",
                "man/enipeer-role.8",
                "man/enipeer-run.8",
                "man/enipeer-yield.8",
                "man/enipeer.8",
                "man/enipeer.toml.5",
            ]
        );
        for p in &written {
            assert!(
                std::fs::metadata(p).unwrap().len() > 0,
                "{} is empty",
                p.display()
            );
        }
    }

    #[test]
    fn nothing_generated_mentions_the_hidden_helper() {
        let dir = tempfile::tempdir().unwrap();
        for p in generate(dir.path()).unwrap() {
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(
                !text.contains("generate-assets") && !text.contains(r"generate\-assets"),
                "{} mentions generate-assets",
                p.display()
            );
        }
    }

    fn page(name: &str) -> String {
        let pages = man_pages().unwrap();
        let (_, text) = pages
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no page {name}"));
        String::from_utf8(text.clone()).unwrap()
    }

    #[test]
    fn daemon_page_documents_every_subcommand_and_the_operator_sections() {
        let pages = man_pages().unwrap();
        assert_eq!(pages[0].0, "enipeer.8");
        let text = page("enipeer.8");
        assert!(text.contains(".TH enipeer 8"), "{text}");
        for sub in ["run", "check", "role", "yield", "maintenance", "keygen"] {
            assert!(
                text.contains(&format!("enipeer\\-{sub}(8)")),
                "no {sub} in:\n{text}"
            );
        }
        // man-pages(7) order, see also last.
        let order = [
            ".SH DESCRIPTION",
            ".SH SIGNALS",
            ".SH \"EXIT STATUS\"",
            ".SH ENVIRONMENT",
            ".SH FILES",
            ".SH VERSION",
            ".SH \"SEE ALSO\"",
        ];
        let at: Vec<usize> = order
            .iter()
            .map(|s| text.find(s).unwrap_or_else(|| panic!("no {s} in:\n{text}")))
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{order:?} at {at:?}");
        for word in [
            r"\fBSIGTERM\fR",
            r"\fBSIGHUP\fR",
            r"\fBENIPEER_LOG\fR",
            r"\fBJOURNAL_STREAM\fR",
            r"\fBNOTIFY_SOCKET\fR",
            r"\fB78\fR",
            r"\fI/etc/enipeer/peer.key\fR",
            r"\fBenipeer.toml\fR(5)",
        ] {
            assert!(text.contains(word), "no {word} in:\n{text}");
        }
    }

    #[test]
    fn subcommand_pages_describe_their_own_options() {
        let keygen = page("enipeer-keygen.8");
        assert!(keygen.contains(".TH enipeer-keygen 8"), "{keygen}");
        assert!(keygen.contains(r"\-\-force"), "{keygen}");
        assert!(keygen.contains(r"\fBenipeer\fR(8)"), "{keygen}");
    }

    #[test]
    fn config_page_lists_every_key_with_its_default_and_range() {
        use crate::config::keys::{KeyDefault, KEYS, TABLES};
        let text = page("enipeer.toml.5");
        assert!(text.contains(".TH enipeer.toml 5"), "{text}");
        let esc = |s: &str| s.replace('-', r"\-");
        for t in TABLES {
            assert!(
                text.contains(&format!(".SH {}", esc(&t.header()))),
                "no {} in:\n{text}",
                t.header()
            );
        }
        for k in KEYS {
            // Each key under its own table's heading.
            let header = TABLES.iter().find(|t| t.name == k.table).unwrap().header();
            let heading = text.find(&format!(".SH {}\n", esc(&header))).unwrap();
            let entry = text[heading..]
                .find(&format!(".TP\n\\fB{}\\fR (", esc(k.key)))
                .unwrap_or_else(|| panic!("no {} in:\n{text}", k.path()));
            let body = &text[heading + entry..];
            let body = &body[..body[4..].find(".TP").map_or(body.len(), |e| e + 4)];
            if let KeyDefault::Value(v) = k.default {
                let shown = format!(r"Default: \fB{}\fR", esc(v));
                assert!(
                    body.contains(&shown),
                    "{}: no {shown} in:\n{body}",
                    k.path()
                );
            }
            if let Some(range) = k.range.describe() {
                let shown = format!("Range: {}", esc(&range));
                assert!(
                    body.contains(&shown),
                    "{}: no {shown} in:\n{body}",
                    k.path()
                );
            }
        }
    }

    #[test]
    fn completions_offer_the_subcommands() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path()).unwrap();
        for file in ["enipeer.bash", "_enipeer", "enipeer.fish"] {
            let text = std::fs::read_to_string(dir.path().join("completions").join(file)).unwrap();
            for sub in ["run", "check", "role", "yield", "keygen"] {
                assert!(text.contains(sub), "{file} lacks {sub}");
            }
        }
    }
}
