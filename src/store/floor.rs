//! The time floor kept in a file, so that a device that reboots without a clock starts from the
//! last time AWS gave it (src/clock.rs holds the floor in memory).

use std::sync::atomic::{AtomicI64, Ordering};

/// The daemon's floor file as the package installs it (`StateDirectory=ecr-edge`): helpers
/// read it too.
pub const DAEMON_FLOOR: &str = "/var/lib/ecr-edge/time-floor";

/// The floor kept in a file (`time-floor`: seconds since the epoch, one line), so that a device
/// that reboots without a clock starts from the last time AWS gave it. Written atomically, and
/// only when the floor rose by [`FloorFile::STEP`] since the last write (flash storage).
#[derive(Debug)]
pub struct FloorFile {
    path: std::path::PathBuf,
    mode: u32,
    written: AtomicI64,
}

impl FloorFile {
    /// Least rise of the floor worth a write, seconds.
    pub const STEP: i64 = 3600;

    /// The file `time-floor` in `dir`, written with `mode`; the floor it holds (if any) raises
    /// this process's.
    pub fn open(dir: &std::path::Path, mode: u32) -> FloorFile {
        let path = dir.join("time-floor");
        let kept = read_floor(&path).unwrap_or(0);
        crate::clock::raise_floor(kept);
        FloorFile {
            path,
            mode,
            written: AtomicI64::new(kept),
        }
    }

    /// Writes the floor when it rose by [`Self::STEP`] since the last write. Errors are for
    /// the caller to log: the floor in memory stands either way.
    ///
    /// # Errors
    /// The write's, in words.
    pub fn save(&self) -> Result<bool, super::files::FilesError> {
        let floor = crate::clock::floor();
        if floor
            < self
                .written
                .load(Ordering::Relaxed)
                .saturating_add(Self::STEP)
        {
            return Ok(false);
        }
        super::files::write_atomic(&self.path, format!("{floor}\n").as_bytes(), self.mode)?;
        self.written.store(floor, Ordering::Relaxed);
        Ok(true)
    }
}

/// The floor a `time-floor` file holds: `None` when it is missing, unreadable or not a number
/// (a damaged file is ignored: the build time stands).
pub fn read_floor(path: &std::path::Path) -> Option<i64> {
    let text = super::files::read_limited(path, 64).ok()?;
    std::str::from_utf8(&text).ok()?.trim().parse().ok()
}

/// Raises this process's floor to the floors this device kept: the daemon's and a helper's in
/// `cache_dir`. Only reads: commands that judge certificates without fetching a token
/// (`doctor`, `credentials`) use it.
pub fn raise_to_kept(cache_dir: &std::path::Path) {
    let kept = [
        read_floor(std::path::Path::new(DAEMON_FLOOR)),
        read_floor(&cache_dir.join("time-floor")),
    ];
    for floor in kept.into_iter().flatten() {
        crate::clock::raise_floor(floor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_floor_is_read_and_a_damaged_one_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("time-floor");
        assert_eq!(read_floor(&path), None);
        std::fs::write(&path, "1796300000\n").unwrap();
        assert_eq!(read_floor(&path), Some(1_796_300_000));
        std::fs::write(&path, "soon\n").unwrap();
        assert_eq!(read_floor(&path), None, "a damaged file is ignored");
    }

    #[test]
    fn the_floor_is_written_when_it_rose_by_an_hour() {
        let dir = tempfile::tempdir().unwrap();
        let file = FloorFile::open(dir.path(), 0o600);
        // This process's floor is at least the build time: the first save writes it.
        assert!(file.save().unwrap());
        assert!(!file.save().unwrap(), "nothing rose: no write");
        assert_eq!(
            read_floor(&dir.path().join("time-floor")),
            Some(crate::clock::floor())
        );
    }
}
