//! `enipeer check` and `enipeer keygen` run as the real binary: exit codes, what lands on
//! stdout and stderr, and the key file they create.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use enipeer::config::keyfile;

const EXAMPLE: &str = include_str!("../conf/enipeer.toml");

fn enipeer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_enipeer"))
        .args(args)
        .output()
        .expect("run enipeer")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The example config with its key file pointing at a fresh 0600 key in `dir`.
fn example_with_key(dir: &Path) -> (PathBuf, PathBuf) {
    let key = dir.join("peer.key");
    keyfile::write_new_key(&key, false).expect("write key");
    let config = dir.join("enipeer.toml");
    let body = EXAMPLE.replace("/etc/enipeer/peer.key", key.to_str().expect("utf-8 path"));
    assert_ne!(body, EXAMPLE, "the example must name /etc/enipeer/peer.key");
    fs::write(&config, body).expect("write config");
    (config, key)
}

#[test]
fn example_config_passes_and_prints_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _key) = example_with_key(dir.path());
    let out = enipeer(&["check", "-c", config.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "stderr: {}", text(&out.stderr));
    for needle in [
        "node-a",
        "node-b: 198.18.0.11:7460",
        "eni-0123456789abcdef0",
        "device index 1",
        "on-master 1",
        "/run/enipeer/control.sock",
    ] {
        assert!(stdout.contains(needle), "{needle} missing from:\n{stdout}");
    }
}

/// `body` with its key file pointing at a fresh 0600 key in `dir`, written as `name`.
fn with_key(dir: &Path, name: &str, body: &str) -> PathBuf {
    let key = dir.join("peer.key");
    if !key.exists() {
        keyfile::write_new_key(&key, false).expect("write key");
    }
    let config = dir.join(name);
    let replaced = body.replace("/etc/enipeer/peer.key", key.to_str().expect("utf-8 path"));
    assert_ne!(replaced, body, "{name} must name /etc/enipeer/peer.key");
    fs::write(&config, replaced).expect("write config");
    config
}

#[test]
fn example_config_has_an_active_check_for_nginx() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _key) = example_with_key(dir.path());
    let out = enipeer(&["check", "-c", config.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(
        stdout.contains("check      http-80: GET http://<ENI address>:80/ status 200-399"),
        "{stdout}"
    );
    assert!(!text(&out.stderr).contains("uncorroborated"));
}

#[test]
fn every_good_config_passes_and_lists_its_checks() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs/good");
    let dir = tempfile::tempdir().unwrap();
    let mut seen = 0;
    for entry in fs::read_dir(&src).expect("tests/configs/good") {
        let file = entry.expect("dir entry").path();
        if file.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        seen += 1;
        let body = fs::read_to_string(&file).unwrap();
        let name = file.file_name().unwrap().to_str().unwrap();
        let config = with_key(dir.path(), name, &body);
        let out = enipeer(&["check", "-c", config.to_str().unwrap()]);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out.stderr));
        let tables = body.lines().filter(|l| l.trim() == "[[check]]").count();
        let listed = stdout.lines().filter(|l| l.starts_with("check ")).count();
        assert_eq!(listed, tables, "{name}: {stdout}");
    }
    assert!(seen >= 1, "no good configs");
}

#[test]
fn a_config_without_checks_passes_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let start = EXAMPLE
        .find("\n[[check]]")
        .expect("the example has a check");
    let config = with_key(dir.path(), "no-check.toml", &EXAMPLE[..start]);
    let out = enipeer(&["check", "-c", config.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: no [[check]] configured: takeover is uncorroborated"),
        "{stderr}"
    );
}

#[test]
fn preflight_reports_an_unreachable_cloud_as_failed_checks() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _key) = example_with_key(dir.path());
    // Nothing listens on port 9 of loopback: every cloud check must fail, quickly and by name.
    let body = fs::read_to_string(&config).unwrap().replace(
        "[aws]\n",
        "[aws]\nregion = \"us-east-1\"\nendpoint-url = \"http://127.0.0.1:9\"\n",
    );
    let body = body.replace("operation-timeout = \"10s\"", "operation-timeout = \"3s\"");
    let body = body.replace(
        "[node]\n",
        "[node]\ninstance-id = \"i-0123456789abcdef0\"\n",
    );
    fs::write(&config, body).unwrap();
    let out = enipeer(&["check", "--preflight", "-c", config.to_str().unwrap()]);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("FAIL"), "{all}");
    // The peer check runs too and names the peer; here it cannot even bind, since the example's
    // heartbeat.bind (198.18.0.10) is not an address of this host.
    assert!(
        all.contains("FAIL  peer node-b at 198.18.0.11:7460: cannot bind 198.18.0.10:0"),
        "{all}"
    );
    assert!(all.contains("peer check failed for: node-b"), "{all}");
}

/// The `# expect: ...` lines at the top of a bad config.
fn expectations(body: &str) -> Vec<String> {
    body.lines()
        .map_while(|l| l.strip_prefix("# expect: "))
        .map(|s| s.trim().to_owned())
        .collect()
}

#[test]
fn every_bad_config_is_rejected_naming_the_problem() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs/bad");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .expect("tests/configs/bad")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 15, "only {} bad configs", files.len());
    for file in files {
        let body = fs::read_to_string(&file).unwrap();
        let expected = expectations(&body);
        assert!(
            !expected.is_empty(),
            "{} has no `# expect:` line",
            file.display()
        );
        let path = file.to_str().unwrap();
        let out = enipeer(&["check", "-c", path]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{path}: stderr: {stderr}");
        assert!(
            out.stdout.is_empty(),
            "{path}: stdout: {}",
            text(&out.stdout)
        );
        for e in &expected {
            assert!(
                stderr.contains(e.as_str()),
                "{path}: expected {e:?} in:\n{stderr}"
            );
        }
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("enipeer: ") && last.ends_with(&format!("problem(s) in {path}")),
            "{path}: last line {last:?}"
        );
        // Every other line is one problem, prefixed with the file.
        for line in stderr.lines().filter(|l| *l != last) {
            assert!(line.starts_with(&format!("{path}:")), "{path}: {line:?}");
        }
    }
}

#[test]
fn key_file_readable_by_others_is_refused_with_chmod_hint() {
    let dir = tempfile::tempdir().unwrap();
    let (config, key) = example_with_key(dir.path());
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let out = enipeer(&["check", "-c", config.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("auth.key-file"), "{stderr}");
    assert!(
        stderr.contains(&format!("chmod 600 {}", key.display())),
        "{stderr}"
    );
    assert!(stderr.contains("1 problem(s)"), "{stderr}");
}

#[test]
fn previous_key_file_is_checked_like_the_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let (config, key) = example_with_key(dir.path());
    let old = dir.path().join("peer.key.old");
    keyfile::write_new_key(&old, false).expect("write old key");
    let body = fs::read_to_string(&config).unwrap().replace(
        &format!("key-file = \"{}\"\n", key.display()),
        &format!(
            "key-file = \"{}\"\nprevious-key-file = \"{}\"\n",
            key.display(),
            old.display()
        ),
    );
    fs::write(&config, body).unwrap();
    let out = enipeer(&["check", "-c", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("also accepting"),
        "{}",
        text(&out.stdout)
    );

    fs::set_permissions(&old, fs::Permissions::from_mode(0o644)).unwrap();
    let out = enipeer(&["check", "-c", config.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("auth.previous-key-file"), "{stderr}");
    assert!(
        stderr.contains(&format!("chmod 600 {}", old.display())),
        "{stderr}"
    );

    fs::remove_file(&old).unwrap();
    let out = enipeer(&["check", "-c", config.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
}

#[test]
fn missing_config_file_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let out = enipeer(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        text(&out.stderr).contains("cannot read"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn keygen_creates_a_private_key_and_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("peer.key");
    let path = key.to_str().unwrap();

    let out = enipeer(&["keygen", path]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(path));
    let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let first = keyfile::read_key(&key).expect("keygen output is a valid key");
    assert_eq!(first.len(), 32);

    let out = enipeer(&["keygen", path]);
    assert_eq!(out.status.code(), Some(73));
    assert!(
        text(&out.stderr).contains("--force"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        keyfile::read_key(&key).unwrap(),
        first,
        "key must be untouched"
    );

    let out = enipeer(&["keygen", "--force", path]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let second = keyfile::read_key(&key).unwrap();
    assert_ne!(second, first);
    let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let out = enipeer(&["keygen", dir.path().join("no/such/dir/k").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(73));
}
