//! One process at a time per output directory. Two `study` or `train` runs on one `--out`
//! would delete each other's checkpoints in flight, or silently do the same work twice.
//!
//! The lock is an advisory `flock` on `DIR/.ldmscale.lock`, held for the life of a
//! [`DirLock`]. The kernel releases it when the process ends however it ends, so a killed run
//! never leaves a lock that blocks the next one; the file itself records who holds it, for the
//! error message, and is left in place (deleting it would let two processes lock two inodes).
//! The shards of a sharded run (`--shard i/N`, e.g. the tasks of a Slurm array) share the
//! directory's lock and each holds its own shard's lock exclusively.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The lock file's name inside a locked directory.
pub const LOCK_FILE: &str = ".ldmscale.lock";

/// Why a directory could not be locked.
#[derive(Debug)]
pub enum LockError {
    /// Another live process holds it.
    InUse {
        /// The directory.
        dir: PathBuf,
        /// Who holds it, as its lock file records ("pid 12 on host since ... : command").
        holder: String,
    },
    /// The path exists and is not a directory.
    NotADirectory(PathBuf),
    /// The directory or its lock file could not be made or read.
    Io {
        /// The path that failed.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::InUse { dir, holder } => write!(
                f,
                "{}: in use by {holder}; wait for it to finish or choose another --out",
                dir.display()
            ),
            LockError::NotADirectory(dir) => write!(
                f,
                "{}: exists and is not a directory; choose another output directory",
                dir.display()
            ),
            LockError::Io { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

// No `source`: the I/O error is part of the message already and would print twice.
impl std::error::Error for LockError {}

/// A held lock on an output directory; dropping it releases the lock.
#[derive(Debug)]
pub struct DirLock {
    file: File,
    dir: PathBuf,
    /// A shard's shared hold on the directory's lock (its own lock is `file`).
    _shared: Option<File>,
}

impl DirLock {
    /// Creates `dir` if needed and locks it for `command` (a few words for the error another
    /// process will see), or says which process holds it.
    pub fn acquire(dir: &Path, command: &str) -> Result<Self, LockError> {
        make_dir(dir)?;
        let file = lock_file(dir, LOCK_FILE, false)?;
        Self::hold(dir, file, command, None)
    }

    /// Locks shard `index` of `count` of `part` of `dir` (e.g. the sweep, or one section's
    /// training array) for `command`: shards of one directory run at the same time (each
    /// writes only its own results), while a whole run there, or the same shard of the same
    /// part twice, is refused.
    pub fn acquire_shard(
        dir: &Path,
        command: &str,
        part: &str,
        (index, count): (usize, usize),
    ) -> Result<Self, LockError> {
        make_dir(dir)?;
        let shared = lock_file(dir, LOCK_FILE, true)?;
        let name = format!(".ldmscale.{part}.shard{index}of{count}.lock");
        let file = lock_file(dir, &name, false)?;
        Self::hold(dir, file, command, Some(shared))
    }

    /// Records `command` as the holder of the locked `file`.
    fn hold(
        dir: &Path,
        mut file: File,
        command: &str,
        shared: Option<File>,
    ) -> Result<Self, LockError> {
        if let Some(stale) = record_of(&mut file) {
            tracing::info!(
                "{}: the lock of {stale} was left behind (that process is gone); taking it over",
                dir.display()
            );
        }
        write_record(&mut file, command).map_err(|source| LockError::Io {
            path: dir.join(LOCK_FILE),
            source,
        })?;
        Ok(Self {
            file,
            dir: dir.to_path_buf(),
            _shared: shared,
        })
    }

    /// The locked directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // An empty record means "released cleanly"; the flock goes with the file handle.
        let _ = self.file.set_len(0);
    }
}

/// Creates `dir` if needed (a file in its place is an error).
fn make_dir(dir: &Path) -> Result<(), LockError> {
    if dir.exists() && !dir.is_dir() {
        return Err(LockError::NotADirectory(dir.to_path_buf()));
    }
    std::fs::create_dir_all(dir).map_err(|source| LockError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

/// `dir/name` opened and locked (shared or exclusive), or who holds it.
fn lock_file(dir: &Path, name: &str, shared: bool) -> Result<File, LockError> {
    let path = dir.join(name);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|source| LockError::Io {
            path: path.clone(),
            source,
        })?;
    let locked = match shared {
        true => file.try_lock_shared(),
        false => file.try_lock(),
    };
    match locked {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(LockError::InUse {
            dir: dir.to_path_buf(),
            holder: record_of(&mut file)
                .unwrap_or_else(|| "another process (or shards of a sharded run)".into()),
        }),
        Err(TryLockError::Error(source)) => Err(LockError::Io { path, source }),
    }
}

fn record_of(file: &mut File) -> Option<String> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

fn write_record(file: &mut File, command: &str) -> std::io::Result<()> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "this host".into());
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| utc_text(d.as_secs()))
        .unwrap_or_default();
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    writeln!(
        file,
        "pid {} on {host} since {since} ({command})",
        std::process::id()
    )?;
    file.sync_all()
}

/// `2026-12-05 17:30:12 UTC` for seconds since the Unix epoch (the proleptic Gregorian
/// calendar, by Hinnant's days-to-civil algorithm).
fn utc_text(secs: u64) -> String {
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder_and_a_released_one_is_taken_again() {
        let dir = std::env::temp_dir().join(format!("ldmscale-lock-{}", std::process::id()));
        let first = DirLock::acquire(&dir, "study --preset tiny").unwrap();
        // flock is per open file description: a second open in this process conflicts too.
        let err = DirLock::acquire(&dir, "train").unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, LockError::InUse { .. }), "{err:?}");
        assert!(
            text.contains(&format!("pid {}", std::process::id()))
                && text.contains("study --preset tiny")
                && text.contains(" UTC"),
            "{text}"
        );
        drop(first);
        let again = DirLock::acquire(&dir, "train").unwrap();
        assert_eq!(again.dir(), dir);
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn shards_lock_apart_and_exclude_a_whole_run() {
        let dir = std::env::temp_dir().join(format!("ldmscale-shards-{}", std::process::id()));
        let zero = DirLock::acquire_shard(&dir, "study --shard 0/2", "sweep", (0, 2)).unwrap();
        let one = DirLock::acquire_shard(&dir, "study --shard 1/2", "sweep", (1, 2)).unwrap();
        let twice = DirLock::acquire_shard(&dir, "study --shard 1/2", "sweep", (1, 2)).unwrap_err();
        assert!(twice.to_string().contains("study --shard 1/2"), "{twice}");
        let other_part = DirLock::acquire_shard(&dir, "study --shard 1/2", "distill", (1, 2));
        assert!(
            other_part.is_ok(),
            "another part's shard 1/2 is independent"
        );
        drop(other_part);
        assert!(matches!(
            DirLock::acquire(&dir, "study"),
            Err(LockError::InUse { .. })
        ));
        drop((zero, one));
        let whole = DirLock::acquire(&dir, "study").unwrap();
        assert!(matches!(
            DirLock::acquire_shard(&dir, "study --shard 0/2", "sweep", (0, 2)),
            Err(LockError::InUse { .. })
        ));
        drop(whole);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_lock_file_left_by_a_dead_process_does_not_block() {
        let dir = std::env::temp_dir().join(format!("ldmscale-stale-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(LOCK_FILE),
            "pid 999999 on gone since then (study)\n",
        )
        .unwrap();
        let lock = DirLock::acquire(&dir, "study").unwrap();
        let record = std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap();
        assert!(
            record.starts_with(&format!("pid {} ", std::process::id())),
            "{record}"
        );
        drop(lock);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn utc_text_matches_known_dates() {
        assert_eq!(utc_text(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_text(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_text(1_796_488_212), "2026-12-05 16:30:12 UTC");
    }
}
