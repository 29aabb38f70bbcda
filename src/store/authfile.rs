//! Docker and containers auth files (`config.json`, `auth.json`), edited in place: the
//! engine under `ecr-edge configure` ([`crate::commands::configure`]) and the daemon's sinks.
//!
//! An update parses the file as one JSON object keeping every other key and value (order kept,
//! numbers to the digit), applies a pure edit, and writes only when something changed: under
//! a lock of the file's directory (concurrent runs serialise, no lock file is left behind),
//! atomically, keeping the file's mode and owner. A symlink or a file that is not a JSON object
//! is reported and left untouched.

use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::store::files::{self, FilesError};

/// Largest auth file read: Docker configs are a few KiB even with many registries.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Why an auth file could not be updated.
#[derive(Debug)]
pub enum AuthFileError {
    /// The existing file is not a JSON object; it was left untouched.
    NotJson {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        detail: String,
    },
    /// A key ecr-edge edits (`credHelpers`, `auths`) is not an object; the file was left
    /// untouched.
    NotAnObject {
        /// The file.
        path: PathBuf,
        /// The key.
        key: &'static str,
    },
    /// Reading, locking or writing failed.
    Files(FilesError),
}

impl fmt::Display for AuthFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthFileError::NotJson { path, detail } => write!(
                f,
                "{} is not a valid JSON object ({detail}); left untouched",
                path.display()
            ),
            AuthFileError::NotAnObject { path, key } => write!(
                f,
                "{}: \"{key}\" is not an object; left untouched",
                path.display()
            ),
            AuthFileError::Files(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for AuthFileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AuthFileError::Files(e) => Some(e),
            _ => None,
        }
    }
}

impl From<FilesError> for AuthFileError {
    fn from(e: FilesError) -> Self {
        AuthFileError::Files(e)
    }
}

/// The JSON object in `old` (empty text: a new, empty object).
///
/// # Errors
/// [`EditError::NotObject`] when `old` is not a JSON object.
pub fn parse_object(old: &str) -> Result<Map<String, Value>, EditError> {
    if old.trim().is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Value>(old) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(EditError::NotObject(
            "the top level is not an object".into(),
        )),
        // Auth files hold passwords (`auths`): say where, never what.
        Err(e) => Err(EditError::NotObject(crate::input::describe_json_error(&e))),
    }
}

/// `root` as Docker writes its config: tab-indented, with a final newline.
///
/// # Errors
/// [`EditError::NotObject`] if serialisation fails (it does not for parsed input).
pub fn to_text(root: Map<String, Value>) -> Result<String, EditError> {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    serde::Serialize::serialize(&Value::Object(root), &mut ser)
        .map_err(|e| EditError::NotObject(e.to_string()))?;
    out.push(b'\n');
    Ok(String::from_utf8(out).unwrap_or_default())
}

/// Why an edit refused a file.
#[derive(Debug, PartialEq, Eq)]
pub enum EditError {
    /// Not JSON, or not an object at the top.
    NotObject(String),
    /// This key is not an object.
    NotAnObject(&'static str),
}

/// How long an update waits for another one on the same directory (`configure`, a sink).
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Rewrites the JSON file at `path` with `edit` (old text in; new text and changes out) under
/// the directory lock, atomically, keeping the file's mode and owner; writes nothing when there
/// are no changes or with `dry_run`. A missing file is created (0600, its directory 0700); a
/// symlink at `path` is refused.
///
/// # Errors
/// [`AuthFileError`]; the file is unchanged in every error case.
pub fn update<C>(
    path: &Path,
    dry_run: bool,
    edit: impl FnOnce(&str) -> Result<(String, Vec<C>), EditError>,
) -> Result<Vec<C>, AuthFileError> {
    update_with(path, dry_run, false, edit)
}

/// [`update`] for a file that holds tokens (a daemon's sink): the lock is a private lock file
/// beside it (`.<name>.lock`, 0600, the writer's own), so a reader of the directory cannot
/// `flock` it and hold updates back; and the file is never left readable by group or others:
/// a wider mode found on it is narrowed to the owner's read and write, rewriting it even when
/// nothing else changed.
///
/// # Errors
/// As [`update`].
pub fn update_secret<C>(
    path: &Path,
    edit: impl FnOnce(&str) -> Result<(String, Vec<C>), EditError>,
) -> Result<Vec<C>, AuthFileError> {
    update_with(path, false, true, edit)
}

/// The lock file [`update_secret`] takes for `path`.
pub fn secret_lock_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.lock"))
}

fn update_with<C>(
    path: &Path,
    dry_run: bool,
    secret: bool,
    edit: impl FnOnce(&str) -> Result<(String, Vec<C>), EditError>,
) -> Result<Vec<C>, AuthFileError> {
    // A user's auth file edited by root is edited as its owner (a daemon's sink is the
    // daemon's own).
    let _as_owner = (!secret).then(|| files::act_as_owner_of(path));
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    if !dir.exists() && !dry_run {
        files::ensure_private_dir(&dir)?;
    }
    // Serialise concurrent runs: a lock on the directory itself, so no lock file is left behind
    // in a user's folder; for a file of tokens, a lock file only its writer can open.
    let _lock = if dir.exists() && !dry_run {
        let until = Instant::now() + LOCK_WAIT;
        Some(match secret {
            true => files::lock_exclusive(&secret_lock_path(path), until)?,
            false => files::lock_exclusive_dir(&dir, until)?,
        })
    } else {
        None
    };
    let existing = match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(FilesError::Unexpected {
                path: path.to_owned(),
                found: "a symlink",
            }
            .into())
        }
        Ok(m) if !m.file_type().is_file() => {
            return Err(FilesError::Unexpected {
                path: path.to_owned(),
                found: "not a regular file",
            }
            .into())
        }
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(FilesError::Io {
                path: path.to_owned(),
                source,
            }
            .into())
        }
    };
    let old = match &existing {
        Some(_) => files::read_limited(path, MAX_FILE_BYTES)?,
        None => Vec::new(),
    };
    let old = String::from_utf8(old).map_err(|_| AuthFileError::NotJson {
        path: path.to_owned(),
        detail: "not UTF-8".into(),
    })?;
    let (new, changes) = edit(&old).map_err(|e| match e {
        EditError::NotObject(detail) => AuthFileError::NotJson {
            path: path.to_owned(),
            detail,
        },
        EditError::NotAnObject(key) => AuthFileError::NotAnObject {
            path: path.to_owned(),
            key,
        },
    })?;
    let (mut mode, owner) = match &existing {
        Some(m) => (m.mode() & 0o7777, Some((m.uid(), m.gid()))),
        None => (0o600, None),
    };
    let too_wide = secret && mode & 0o7177 != 0;
    if secret {
        mode &= 0o600;
    }
    if (changes.is_empty() && !too_wide) || dry_run {
        return Ok(changes);
    }
    files::write_atomic_owned(path, new.as_bytes(), mode, owner)?;
    Ok(changes)
}
