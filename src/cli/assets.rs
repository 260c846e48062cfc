//! Documents generated from the CLI definition for the packages: the man pages (clap_mangen)
//! and the bash, zsh and fish completions (clap_complete). `make packages` writes them with the
//! hidden `enipeer generate-assets DIR`, so they can never drift from the real command line.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::{Generator, Shell};
use clap_mangen::Man;

use super::Cli;

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

/// Writes `DIR/man/enipeer.1`, one `DIR/man/enipeer-<subcommand>.1` per subcommand, and
/// `DIR/completions/{enipeer.bash,_enipeer,enipeer.fish}`. Returns the paths written.
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

/// `(file name, roff text)` for `enipeer(1)` and each subcommand's page.
pub fn man_pages() -> Result<Vec<(String, Vec<u8>)>, AssetsError> {
    // Built, so that subcommands know their full name ("enipeer keygen", page "enipeer-keygen").
    // `help` is clap's own subcommand: it would get an empty page of its own.
    let mut root = Cli::command().disable_help_subcommand(true);
    root.build();

    let mut pages = Vec::new();
    let main = Man::new(root.clone());
    let name = main.get_filename();
    pages.push((name.clone(), render(&name, |w| render_main(&main, w))?));

    for sub in root.get_subcommands().filter(|s| !s.is_hide_set()) {
        let man = Man::new(sub.clone());
        let name = man.get_filename();
        let text = render(&name, |w| {
            man.render(w)?;
            w.write_all(SUBCOMMAND_SEE_ALSO.as_bytes())
        })?;
        pages.push((name, text));
    }
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

/// clap_mangen's sections, with the ones an operator looks for in a daemon's page (exit
/// status, files, environment) placed before the version, as man-pages(7) orders them.
fn render_main(man: &Man, w: &mut Vec<u8>) -> io::Result<()> {
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    man.render_options_section(w)?;
    man.render_subcommands_section(w)?;
    w.extend_from_slice(MAIN_EXTRA_SECTIONS.as_bytes());
    man.render_version_section(w)
}

/// Hand-written roff: what the CLI definition cannot say. Hyphens are `\-` so that paths and
/// options copy-paste as ASCII.
const MAIN_EXTRA_SECTIONS: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
Success.
.TP
\fB1\fR
The daemon answered with an error (for example \fByield\fR found no live peer, or the peer did
not become master within \fB\-\-timeout\fR).
.TP
\fB2\fR
Invalid command line.
.TP
\fB69\fR
The daemon is not reachable on its control socket, or \fBrun\fR failed after starting
(EX_UNAVAILABLE).
.TP
\fB70\fR
Internal error (EX_SOFTWARE).
.TP
\fB73\fR
\fBkeygen\fR could not create the key file (EX_CANTCREAT).
.TP
\fB78\fR
The config file is invalid; every problem is listed on stderr with its line and key
(EX_CONFIG). \fBrun\fR refuses to start the same way.
.SH FILES
.TP
\fI/etc/enipeer/enipeer.toml\fR
The configuration (mode 0640). A commented example is in
\fI/usr/share/doc/enipeer/enipeer.toml.example\fR.
.TP
\fI/etc/enipeer/peer.key\fR
The shared heartbeat key, the same on both nodes, mode 0600. Create it with
\fBenipeer keygen /etc/enipeer/peer.key\fR and copy it to the peer.
.TP
\fI/run/enipeer/control.sock\fR
The control socket used by \fBrole\fR and \fByield\fR.
.TP
\fI/usr/share/doc/enipeer/iam\-policy.json\fR
A least\-privilege IAM policy for the instances' role.
.SH ENVIRONMENT
.TP
\fBENIPEER_LOG\fR
Log filter for \fBrun\fR (default \fBinfo\fR; \fBdebug\fR for more). Logs go to stderr, which
is the journal under systemd: \fBjournalctl \-u enipeer\fR.
.SH "SEE ALSO"
\fBsystemctl\fR(1), \fBjournalctl\fR(1), \fI/usr/share/doc/enipeer/README.md\fR
"#;

const SUBCOMMAND_SEE_ALSO: &str = r#".SH "SEE ALSO"
\fBenipeer\fR(1)
"#;

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
    fn writes_one_page_per_subcommand_and_three_completions() {
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
                "man/enipeer-check.1",
                "man/enipeer-keygen.1",
                "man/enipeer-maintenance.1",
                "man/enipeer-role.1",
                "man/enipeer-run.1",
                "man/enipeer-yield.1",
                "man/enipeer.1",
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

    #[test]
    fn main_page_documents_every_subcommand_and_the_operator_sections() {
        let pages = man_pages().unwrap();
        let (name, text) = &pages[0];
        assert_eq!(name, "enipeer.1");
        let text = String::from_utf8(text.clone()).unwrap();
        assert!(
            text.starts_with(".ie") || text.contains(".TH enipeer 1"),
            "{text}"
        );
        for sub in ["run", "check", "role", "yield", "keygen"] {
            assert!(
                text.contains(&format!("enipeer\\-{sub}(1)")),
                "no {sub} in:\n{text}"
            );
        }
        for section in ["EXIT STATUS", ".SH FILES", ".SH ENVIRONMENT", "SEE ALSO"] {
            assert!(text.contains(section), "no {section} in:\n{text}");
        }
        // Sections are in man-pages(7) order: exit status before files, version last.
        let exit = text.find("EXIT STATUS").unwrap();
        let files = text.find(".SH FILES").unwrap();
        let version = text.find(".SH VERSION").unwrap();
        assert!(exit < files && files < version);
    }

    #[test]
    fn subcommand_pages_describe_their_own_options() {
        let pages = man_pages().unwrap();
        let (_, keygen) = pages
            .iter()
            .find(|(name, _)| name == "enipeer-keygen.1")
            .unwrap();
        let keygen = String::from_utf8(keygen.clone()).unwrap();
        assert!(keygen.contains(r"\-\-force"), "{keygen}");
        assert!(keygen.contains("enipeer\\fR(1)"), "{keygen}");
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
