//! One gateway per database: an exclusive lock on a file beside it (`<database>-lock`).
//!
//! Two processes writing the same database would each number and append their own charge log
//! segments and fold the same records into the account totals, so [`Store::open`] takes this
//! lock first and the store's background threads hold it until the last of them has stopped
//! (the projector's last commit included). A store dropped in a process and opened again at
//! once therefore waits for the old one's threads instead of racing them. The operating system
//! releases the lock when its holder exits, however it exits (`kill -9` included), so nothing
//! stale is left to clean up.
//!
//! [`Store::open`]: crate::Store::open

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::journal::StoreError;

/// How long [`DbLock::acquire`] waits for a holder to let go before it reports the database
/// as in use.
pub const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Between two attempts to take the lock.
const RETRY_EVERY: Duration = Duration::from_millis(5);

/// The lock file of the database at `db`.
pub fn lock_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-lock");
    PathBuf::from(s)
}

/// The held lock; released when the last clone is dropped (the file is closed).
#[derive(Debug)]
pub struct DbLock {
    _file: File,
}

impl DbLock {
    /// Take the lock of the database at `db`, waiting up to `wait` for its holder.
    pub fn acquire(db: &Path, wait: Duration) -> Result<Arc<DbLock>, StoreError> {
        let path = lock_path(db);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::Sql(format!("{}: {e}", path.display())))?;
        let deadline = Instant::now() + wait;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Arc::new(DbLock { _file: file })),
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(RETRY_EVERY);
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(StoreError::Conflict(format!(
                        "the database {} is in use by another tollgate (it holds {})",
                        db.display(),
                        path.display()
                    )))
                }
                Err(TryLockError::Error(e)) => {
                    return Err(StoreError::Sql(format!(
                        "cannot lock {}: {e}",
                        path.display()
                    )))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_refused_by_name_and_free_again_once_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let held = DbLock::acquire(&db, Duration::ZERO).unwrap();
        let second = Arc::clone(&held);
        drop(held);
        // A clone keeps it held.
        let err = DbLock::acquire(&db, Duration::from_millis(20)).unwrap_err();
        assert!(
            matches!(&err, StoreError::Conflict(m) if m.contains("in use") && m.contains("t.db-lock")),
            "{err}"
        );
        drop(second);
        DbLock::acquire(&db, Duration::ZERO).unwrap();
    }

    #[test]
    fn a_waiting_open_gets_the_lock_when_the_holder_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let held = DbLock::acquire(&db, Duration::ZERO).unwrap();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(held);
        });
        DbLock::acquire(&db, Duration::from_secs(5)).unwrap();
        t.join().unwrap();
    }
}
