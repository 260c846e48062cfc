//! The shared heartbeat key file: 32 random bytes written as 64 lowercase hex characters and a
//! newline, readable by its owner only.
//!
//! Anyone holding the key can forge heartbeats and make a node release its ENI, so a key file
//! that group or others can read or write is refused outright rather than warned about. Error
//! messages never quote the file's content.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Length of the key in bytes.
pub const KEY_LEN: usize = 32;

/// Refuse files larger than this: a key file is 65 bytes, anything much larger is the wrong file.
const MAX_FILE_LEN: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{}: does not exist; create one with `enipeer keygen {}`", path.display(), path.display())]
    Missing { path: PathBuf },
    #[error("{}: is not a regular file", path.display())]
    NotRegular { path: PathBuf },
    #[error(
        "{}: mode {mode:04o} lets group or others access the key; run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{}: {reason}; expected {} lowercase hex characters (create one with `enipeer keygen`)", path.display(), KEY_LEN * 2)]
    Content { path: PathBuf, reason: String },
    #[error("{}: already exists; use --force to replace it", path.display())]
    Exists { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("no random bytes from the operating system: {0}")]
    Random(getrandom::Error),
}

impl KeyFileError {
    /// Short machine label for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Missing { .. } => "missing",
            Self::NotRegular { .. } => "not_regular",
            Self::Permissions { .. } => "permissions",
            Self::Content { .. } => "content",
            Self::Exists { .. } => "exists",
            Self::Io { .. } => "io",
            Self::Random(_) => "random",
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Reads both key files of `[auth]`: the current key, and the previous one while a rotation is
/// under way. Each is checked as [`read_key`] checks it.
pub fn read_keys(auth: &super::AuthSettings) -> Result<crate::peer::Keys, KeyFileError> {
    let current = read_key(&auth.key_file)?;
    let previous = auth
        .previous_key_file
        .as_deref()
        .map(read_key)
        .transpose()?;
    Ok(crate::peer::Keys::new(current, previous))
}

/// Reads and checks the key: a regular file, no group/other permission bits, 64 hex characters.
pub fn read_key(path: &Path) -> Result<Vec<u8>, KeyFileError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(KeyFileError::Missing {
                path: path.to_owned(),
            })
        }
        Err(e) => return Err(io_err(path)(e)),
    };
    // Checked on the open handle, so the file we check is the file we read.
    let meta = file.metadata().map_err(io_err(path))?;
    if !meta.file_type().is_file() {
        return Err(KeyFileError::NotRegular {
            path: path.to_owned(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    let mut text = String::new();
    file.take(MAX_FILE_LEN + 1)
        .read_to_string(&mut text)
        .map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => KeyFileError::Content {
                path: path.to_owned(),
                reason: "not text".to_owned(),
            },
            _ => io_err(path)(e),
        })?;
    decode_key(text.trim()).map_err(|reason| KeyFileError::Content {
        path: path.to_owned(),
        reason,
    })
}

fn decode_key(hex: &str) -> Result<Vec<u8>, String> {
    if hex.is_empty() {
        return Err("empty".to_owned());
    }
    if hex.len() != KEY_LEN * 2 {
        return Err(format!("{} characters long", hex.len()));
    }
    let nibble = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    hex.as_bytes()
        .chunks_exact(2)
        .map(|pair| match (nibble(pair[0]), nibble(pair[1])) {
            (Some(hi), Some(lo)) => Ok(hi << 4 | lo),
            _ => Err("contains a character that is not lowercase hex".to_owned()),
        })
        .collect()
}

fn encode_key(key: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(key.len() * 2 + 1);
    for b in key {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s.push('\n');
    s
}

/// Writes a fresh random key with mode 0600. Without `force` an existing file is never touched
/// (`create_new`); with `force` the key is written to a temp file beside it and renamed over, so
/// a crash leaves either the old key or the new one, never half of one.
pub fn write_new_key(path: &Path, force: bool) -> Result<(), KeyFileError> {
    let mut key = [0u8; KEY_LEN];
    getrandom::fill(&mut key).map_err(KeyFileError::Random)?;
    let text = encode_key(&key);

    if !force {
        let mut file = match create_0600(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(KeyFileError::Exists {
                    path: path.to_owned(),
                })
            }
            Err(e) => return Err(io_err(path)(e)),
        };
        if let Err(e) = file
            .write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
        {
            // Never leave a truncated key behind for the daemon to trip over.
            let _ = fs::remove_file(path);
            return Err(io_err(path)(e));
        }
        sync_parent(path);
        return Ok(());
    }

    let file_name = path.file_name().ok_or_else(|| KeyFileError::Io {
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "not a file path"),
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    // A stale temp file from a crashed run with the same pid would make create_new fail.
    let _ = fs::remove_file(&tmp);
    let result = create_0600(&tmp)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(path)(e));
    }
    sync_parent(path);
    Ok(())
}

fn create_0600(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Makes the new directory entry durable; best effort, the key itself is already synced.
fn sync_parent(path: &Path) {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn written_key_reads_back_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peer.key");
        write_new_key(&path, false).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 65);
        assert!(text.ends_with('\n'));
        let key = read_key(&path).unwrap();
        assert_eq!(key.len(), KEY_LEN);
        assert_eq!(encode_key(&key), text);
    }

    #[test]
    fn refuses_overwrite_without_force_and_replaces_with_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peer.key");
        write_new_key(&path, false).unwrap();
        let first = fs::read_to_string(&path).unwrap();
        let err = write_new_key(&path, false).unwrap_err();
        assert!(matches!(err, KeyFileError::Exists { .. }), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), first);

        write_new_key(&path, true).unwrap();
        let second = fs::read_to_string(&path).unwrap();
        assert_ne!(first, second);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // No temp file left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn refuses_group_or_other_access_with_chmod_hint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peer.key");
        write_new_key(&path, false).unwrap();
        for mode in [0o640, 0o604, 0o620, 0o644] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = read_key(&path).unwrap_err();
            assert!(matches!(err, KeyFileError::Permissions { .. }), "{err}");
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(read_key(&path).is_ok());
    }

    #[test]
    fn checks_content_and_ignores_surrounding_whitespace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peer.key");
        let good = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        for (content, ok) in [
            (format!("  {good}\n\n"), true),
            (good.to_owned(), true),
            (good.to_uppercase(), false),
            (good[..62].to_owned(), false),
            (format!("{good}00"), false),
            (good.replace('a', "g"), false),
            (String::new(), false),
        ] {
            let _ = fs::remove_file(&path);
            create_0600(&path)
                .unwrap()
                .write_all(content.as_bytes())
                .unwrap();
            let res = read_key(&path);
            assert_eq!(res.is_ok(), ok, "{content:?}: {res:?}");
            if !ok {
                let err = res.unwrap_err();
                assert!(matches!(err, KeyFileError::Content { .. }), "{err}");
            }
        }
        let key = read_key(&path.with_file_name("missing")).unwrap_err();
        assert!(matches!(key, KeyFileError::Missing { .. }));
    }

    #[test]
    fn directory_is_not_a_key_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let err = read_key(dir.path()).unwrap_err();
        assert!(matches!(err, KeyFileError::NotRegular { .. }), "{err}");
    }
}
