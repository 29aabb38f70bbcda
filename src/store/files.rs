//! Private files: how ecr-edge reads and writes anything on disk.
//!
//! Every write is atomic (a fresh temp file in the same directory, fsync, rename, fsync of the
//! directory), so a crash or power cut on a device leaves the old file or the new one, never half
//! of either. Files are created 0600 and directories 0700. Paths are opened without following
//! symlinks, and directories and files must belong to the effective user: a cache in a shared
//! place such as `/tmp/ecr-edge-<uid>` could otherwise be pre-created by another user to read or
//! plant tokens.
//!
//! Root editing a file in another user's directory (`sudo -E ecr-edge configure`, `HOME` in
//! their home) does it as that user ([`act_as_owner_of`]): a symlink the user planted on the
//! path leads only where the user could write anyway, and what is created is theirs.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::unistd::{geteuid, setfsgid, setfsuid, Gid, Uid};

/// A failure to use a private file or directory.
#[derive(Debug)]
pub enum FilesError {
    /// The operating system refused an operation on `path`.
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// `path` belongs to another user, so it cannot be trusted with or for secrets.
    NotOwned {
        /// The file or directory involved.
        path: PathBuf,
        /// Its owner's uid.
        owner: u32,
    },
    /// `path` is a symlink, or not the kind of file expected (a directory where a file should
    /// be, a FIFO, …).
    Unexpected {
        /// The file or directory involved.
        path: PathBuf,
        /// What was found instead.
        found: &'static str,
    },
    /// The file is larger than the reader's limit.
    TooLarge {
        /// The file involved.
        path: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },
    /// Another process held the lock until the deadline.
    LockTimeout {
        /// The lock file.
        path: PathBuf,
    },
}

impl std::fmt::Display for FilesError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FilesError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            FilesError::NotOwned { path, owner } => write!(
                f,
                "{} belongs to uid {owner}, not to this user (uid {}); refusing to use it",
                path.display(),
                fs_uid()
            ),
            FilesError::Unexpected { path, found } => {
                write!(f, "{} is {found}; refusing to use it", path.display())
            }
            FilesError::TooLarge { path, limit } => {
                write!(f, "{} is larger than {limit} bytes", path.display())
            }
            FilesError::LockTimeout { path } => {
                write!(f, "timed out waiting for lock {}", path.display())
            }
        }
    }
}

impl std::error::Error for FilesError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FilesError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FilesError + '_ {
    move |source| FilesError::Io {
        path: path.to_owned(),
        source,
    }
}

fn kind_of(meta: &fs::Metadata) -> &'static str {
    let ft = meta.file_type();
    if ft.is_symlink() {
        "a symlink"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_file() {
        "a regular file"
    } else {
        "a special file"
    }
}

thread_local! {
    /// The user this thread's file operations run as, while an [`ActingAs`] lives.
    static ACTING_UID: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
}

/// The user files are created as and checked against: the effective user, or the one an
/// [`ActingAs`] stands for.
fn fs_uid() -> u32 {
    ACTING_UID
        .with(|a| a.get())
        .unwrap_or_else(|| geteuid().as_raw())
}

/// While it lives, this thread's file operations run as another user (Linux's file-system
/// user and group, `setfsuid`); dropping it returns to root's.
#[derive(Debug)]
pub struct ActingAs {
    previous: Option<(Uid, Gid, Option<u32>)>,
}

impl Drop for ActingAs {
    fn drop(&mut self) {
        if let Some((uid, gid, acting)) = self.previous.take() {
            setfsuid(uid);
            setfsgid(gid);
            ACTING_UID.with(|a| a.set(acting));
        }
    }
}

/// When root is about to write `path` and the nearest existing directory on its way (or a
/// symlink there) belongs to another user, the file operations until the guard is dropped run
/// as that user and group: a symlink planted in a parent cannot lead root's write into
/// `/etc` or another home, and a directory or file created there belongs to the user. Does
/// nothing for other callers, or under root's own directories. (Per thread: the commands that
/// use it run on one.)
pub fn act_as_owner_of(path: &Path) -> ActingAs {
    let none = ActingAs { previous: None };
    if !geteuid().is_root() {
        return none;
    }
    let owner = path.ancestors().skip(1).find_map(|dir| {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        fs::symlink_metadata(dir).ok()
    });
    let Some(meta) = owner.filter(|m| m.uid() != 0) else {
        return none;
    };
    // The group first, while the file-system user is still root.
    let gid = setfsgid(Gid::from_raw(meta.gid()));
    let uid = setfsuid(Uid::from_raw(meta.uid()));
    let acting = ACTING_UID.with(|a| a.replace(Some(meta.uid())));
    ActingAs {
        previous: Some((uid, gid, acting)),
    }
}

/// Creates `dir` (mode 0700) if missing, or checks an existing one: a real directory, not a
/// symlink, owned by this user. An existing directory of ours that others can enter is tightened
/// to 0700. Missing parents are created with the default mode (they are not ours to restrict).
///
/// # Errors
/// [`FilesError`] when the directory cannot be created, is a symlink or not a directory, or
/// belongs to another user.
pub fn ensure_private_dir(dir: &Path) -> Result<(), FilesError> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent() {
                fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
            match fs::DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => {}
                // Another process created it between our look and our mkdir: check theirs.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(dir)(e)),
            }
            check_dir(dir)
        }
        Err(e) => Err(io_err(dir)(e)),
        Ok(_) => check_dir(dir),
    }
}

fn check_dir(dir: &Path) -> Result<(), FilesError> {
    let meta = fs::symlink_metadata(dir).map_err(io_err(dir))?;
    if !meta.file_type().is_dir() {
        return Err(FilesError::Unexpected {
            path: dir.to_owned(),
            found: kind_of(&meta),
        });
    }
    if meta.uid() != fs_uid() {
        return Err(FilesError::NotOwned {
            path: dir.to_owned(),
            owner: meta.uid(),
        });
    }
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
    }
    Ok(())
}

/// Reads a whole file of this user's, at most `limit` bytes, without following a symlink.
///
/// Returns `Ok(None)` when the file does not exist.
///
/// # Errors
/// [`FilesError`] when the file is a symlink or not a regular file, belongs to another user, is
/// larger than `limit`, or cannot be read.
pub fn read_private(path: &Path, limit: u64) -> Result<Option<Vec<u8>>, FilesError> {
    read_checked(path, limit, true)
}

/// Reads a whole regular file, at most `limit` bytes, without following a symlink, whoever owns
/// it (a user's Docker config edited by root keeps its owner).
///
/// # Errors
/// As [`read_private`], except ownership; a missing file is an error here.
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, FilesError> {
    read_checked(path, limit, false)?.ok_or_else(|| FilesError::Io {
        path: path.to_owned(),
        source: io::Error::from(io::ErrorKind::NotFound),
    })
}

fn read_checked(path: &Path, limit: u64, must_own: bool) -> Result<Option<Vec<u8>>, FilesError> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).bits())
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(FilesError::Unexpected {
                path: path.to_owned(),
                found: "a symlink",
            })
        }
        Err(e) => return Err(io_err(path)(e)),
    };
    let meta = file.metadata().map_err(io_err(path))?;
    if !meta.file_type().is_file() {
        return Err(FilesError::Unexpected {
            path: path.to_owned(),
            found: kind_of(&meta),
        });
    }
    if must_own && meta.uid() != fs_uid() {
        return Err(FilesError::NotOwned {
            path: path.to_owned(),
            owner: meta.uid(),
        });
    }
    let mut buf = Vec::with_capacity(meta.len().min(limit) as usize);
    // Read one byte past the limit so a file that grew after fstat is still caught.
    file.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(io_err(path))?;
    if buf.len() as u64 > limit {
        return Err(FilesError::TooLarge {
            path: path.to_owned(),
            limit,
        });
    }
    Ok(Some(buf))
}

/// Distinguishes temp files of threads in one process; the pid distinguishes processes.
static TEMP_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Replaces `path` with `contents` atomically, creating it with `mode` (e.g. 0o600).
///
/// The temp file is created with `O_EXCL | O_NOFOLLOW` next to `path`, written, fsynced and
/// renamed over `path` (rename replaces a symlink at `path` rather than writing through it); the
/// directory is fsynced so the rename survives a power cut. On failure the temp file is removed
/// and `path` is untouched.
///
/// # Errors
/// [`FilesError::Io`] for any failed step.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), FilesError> {
    write_atomic_owned(path, contents, mode, None)
}

/// [`write_atomic`], and the new file gets `owner` (uid, gid) before it replaces the old one, so
/// a file edited by root for a user stays the user's.
///
/// # Errors
/// [`FilesError::Io`] for any failed step.
pub fn write_atomic_owned(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), FilesError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        // The umask may have narrowed `mode`; never widened it, but make it exact.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err(&tmp))?;
        let made = file.metadata().map_err(io_err(&tmp))?;
        if let Some((uid, gid)) = owner.filter(|&o| o != (made.uid(), made.gid())) {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(io_err(&tmp))?;
            // chown clears set-id bits; restore the exact mode.
            file.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(io_err(&tmp))?;
        }
        file.write_all(contents).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// An exclusive advisory lock on a file, released when dropped (or when the process dies, so a
/// crashed helper never wedges the others).
#[derive(Debug)]
pub struct Lock {
    _flock: Flock<File>,
}

/// Takes an exclusive `flock` on `path` (created 0600 if missing), waiting until `deadline`.
///
/// Waiting polls with short sleeps, since `flock` has no timeout of its own; the holder is
/// another helper that is fetching a token, which takes tens of milliseconds to seconds.
///
/// # Errors
/// [`FilesError::LockTimeout`] when the deadline passes; [`FilesError::Io`] when the lock file
/// cannot be opened.
pub fn lock_exclusive(path: &Path, deadline: Instant) -> Result<Lock, FilesError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
        .open(path)
        .map_err(io_err(path))?;
    lock_file(file, path, deadline)
}

/// Takes an exclusive `flock` on the directory `dir` itself (no lock file is left behind),
/// waiting until `deadline`.
///
/// # Errors
/// As [`lock_exclusive`].
pub fn lock_exclusive_dir(dir: &Path, deadline: Instant) -> Result<Lock, FilesError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_DIRECTORY | OFlag::O_CLOEXEC).bits())
        .open(dir)
        .map_err(io_err(dir))?;
    lock_file(file, dir, deadline)
}

fn lock_file(mut file: File, path: &Path, deadline: Instant) -> Result<Lock, FilesError> {
    let mut pause = Duration::from_millis(2);
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(flock) => return Ok(Lock { _flock: flock }),
            Err((f, nix::errno::Errno::EWOULDBLOCK)) => file = f,
            Err((_, errno)) => return Err(io_err(path)(io::Error::from(errno))),
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(FilesError::LockTimeout {
                path: path.to_owned(),
            });
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(25));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn atomic_write_creates_0600_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.json");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        // No temp files left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn atomic_write_replaces_a_symlink_instead_of_writing_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("victim");
        fs::write(&target, b"keep").unwrap();
        let p = dir.path().join("link");
        symlink(&target, &p).unwrap();
        write_atomic(&p, b"new", 0o600).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"keep");
        assert!(!fs::symlink_metadata(&p).unwrap().file_type().is_symlink());
    }

    #[test]
    fn read_refuses_symlinks_and_big_files() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::write(&real, b"12345").unwrap();
        let link = dir.path().join("link");
        symlink(&real, &link).unwrap();
        assert!(matches!(
            read_private(&link, 100),
            Err(FilesError::Unexpected { .. })
        ));
        assert!(matches!(
            read_private(&real, 4),
            Err(FilesError::TooLarge { .. })
        ));
        assert_eq!(read_private(&real, 5).unwrap().unwrap(), b"12345");
        assert!(read_private(&dir.path().join("none"), 5).unwrap().is_none());
        assert!(matches!(
            read_private(dir.path(), 5),
            Err(FilesError::Unexpected { .. })
        ));
    }

    #[test]
    fn private_dir_is_created_0700_and_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b");
        ensure_private_dir(&p).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o700);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&p).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o700);
    }

    #[test]
    fn private_dir_refuses_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        symlink(&real, &link).unwrap();
        assert!(matches!(
            ensure_private_dir(&link),
            Err(FilesError::Unexpected { .. })
        ));
    }

    #[test]
    fn lock_times_out_while_held() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l");
        let held = lock_exclusive(&p, Instant::now()).unwrap();
        let err = lock_exclusive(&p, Instant::now() + Duration::from_millis(30)).unwrap_err();
        assert!(matches!(err, FilesError::LockTimeout { .. }));
        drop(held);
        lock_exclusive(&p, Instant::now()).unwrap();
    }
}
