//! The spend state: what was paid (or reserved) today, persisted in a small JSON file so the
//! daily budget survives restarts and is shared by every process using the same file.
//!
//! A payment is *reserved* before it is signed and stays counted unless the server refuses it
//! explicitly; an unknown outcome (timeout, pending settlement) keeps it counted — the budget
//! errs on the side of spending less. Updates take a lock file (`<file>.lock`) and replace the
//! file atomically (write to a temporary file, then rename).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use alloy::primitives::U256;
use serde::{Deserialize, Serialize};
use tollgate_x402::TokenAmount;

/// How long to wait for another process's lock before giving up.
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// A lock file older than this is left over from a crashed process and is removed.
const LOCK_STALE: Duration = Duration::from_secs(60);

/// State of one recorded payment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// Signed and sent; outcome not known yet (counted).
    Reserved,
    /// The server returned a successful settlement (counted).
    Settled,
    /// The outcome is unknown (timeout, pending settlement, no receipt); counted.
    Unknown,
    /// The server refused the payment; not counted.
    Released,
}

impl PaymentStatus {
    /// Whether the payment counts against the budget.
    pub fn counts(self) -> bool {
        !matches!(self, Self::Released)
    }
}

/// One payment of the day.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRecord {
    /// Id within the day.
    pub id: u64,
    /// Unix seconds when reserved.
    pub at: u64,
    /// The resource URL.
    pub url: String,
    /// CAIP-2 network.
    pub network: String,
    /// Token contract.
    pub asset: String,
    /// Recipient.
    pub pay_to: String,
    /// Amount in atomic units.
    pub amount: TokenAmount,
    /// Status.
    pub status: PaymentStatus,
    /// Settlement transaction, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx: Option<String>,
}

/// The persisted state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendFile {
    /// Format version (1).
    pub version: u32,
    /// The UTC day the records belong to (`YYYY-MM-DD`).
    pub day: String,
    /// Today's payments.
    pub payments: Vec<PaymentRecord>,
}

impl SpendFile {
    /// Total counted today.
    pub fn spent(&self) -> U256 {
        self.payments
            .iter()
            .filter(|p| p.status.counts())
            .fold(U256::ZERO, |acc, p| acc.saturating_add(p.amount.0))
    }

    fn roll_to(&mut self, day: &str) {
        if self.day != day {
            self.day = day.to_owned();
            self.payments.clear();
        }
        self.version = 1;
    }
}

/// Why the spend state could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading, writing or locking the file failed.
    #[error("spend state {path}: {message}")]
    Io {
        /// File.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The file is not a spend state.
    #[error("spend state {path} is corrupt: {message} (move it away to start a new day's budget)")]
    Corrupt {
        /// File.
        path: PathBuf,
        /// Parser message.
        message: String,
    },
    /// Reserving would pass the daily budget (another process spent in between).
    #[error("daily budget {max} would be passed: {spent} already spent today")]
    OverBudget {
        /// Spent (or reserved) today.
        spent: U256,
        /// Limit.
        max: U256,
    },
}

/// Where the state lives: a file, or memory only (tests, `--state` not wanted).
#[derive(Debug)]
pub struct SpendState {
    path: Option<PathBuf>,
    memory: Mutex<SpendFile>,
}

/// The UTC day (`YYYY-MM-DD`) of a Unix time.
pub fn utc_day(unix_secs: u64) -> String {
    // Howard Hinnant's civil_from_days.
    let z = (unix_secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}")
}

impl SpendState {
    /// State kept in memory only (lost at exit).
    pub fn in_memory() -> Self {
        Self {
            path: None,
            memory: Mutex::new(SpendFile::default()),
        }
    }

    /// State persisted in `path` (created on first payment).
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self {
            path: Some(path.into()),
            memory: Mutex::new(SpendFile::default()),
        }
    }

    /// The file, if persisted.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Today's state (read-only snapshot).
    pub fn load(&self, now: u64) -> Result<SpendFile, StateError> {
        self.update(now, |f| Ok(f.clone()))
    }

    /// Amount counted today.
    pub fn spent_today(&self, now: u64) -> Result<U256, StateError> {
        Ok(self.load(now)?.spent())
    }

    /// Records a payment as reserved if it fits `max_per_day`; returns its id.
    pub fn reserve(
        &self,
        now: u64,
        max_per_day: Option<U256>,
        mut record: PaymentRecord,
    ) -> Result<u64, StateError> {
        self.update(now, |f| {
            let spent = f.spent();
            if let Some(max) = max_per_day {
                let fits = spent.checked_add(record.amount.0).is_some_and(|t| t <= max);
                if !fits {
                    return Err(StateError::OverBudget { spent, max });
                }
            }
            let id = f.payments.iter().map(|p| p.id).max().map_or(1, |m| m + 1);
            record.id = id;
            record.at = now;
            record.status = PaymentStatus::Reserved;
            f.payments.push(record);
            Ok(id)
        })
    }

    /// Sets the status (and transaction) of a reserved payment. A payment reserved on a day
    /// that has rolled over is gone from the file; that is not an error.
    pub fn finish(
        &self,
        now: u64,
        id: u64,
        status: PaymentStatus,
        tx: Option<String>,
    ) -> Result<(), StateError> {
        self.update(now, |f| {
            if let Some(p) = f.payments.iter_mut().find(|p| p.id == id) {
                p.status = status;
                if tx.is_some() {
                    p.tx = tx;
                }
            }
            Ok(())
        })
    }

    fn update<T>(
        &self,
        now: u64,
        op: impl FnOnce(&mut SpendFile) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let day = utc_day(now);
        let Some(path) = &self.path else {
            let mut f = self
                .memory
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f.roll_to(&day);
            return op(&mut f);
        };
        let _lock = FileLock::acquire(path)?;
        let mut f = read_file(path)?;
        let before = f.clone();
        f.roll_to(&day);
        let out = op(&mut f)?;
        if f != before {
            write_file(path, &f)?;
        }
        Ok(out)
    }
}

fn io_err(path: &Path, what: &str, e: impl std::fmt::Display) -> StateError {
    StateError::Io {
        path: path.to_owned(),
        message: format!("{what}: {e}"),
    }
}

fn read_file(path: &Path) -> Result<SpendFile, StateError> {
    match fs::read(path) {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Ok(SpendFile::default()),
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
            path: path.to_owned(),
            message: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SpendFile::default()),
        Err(e) => Err(io_err(path, "read", e)),
    }
}

fn write_file(path: &Path, f: &SpendFile) -> Result<(), StateError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let json = serde_json::to_vec_pretty(f).map_err(|e| io_err(path, "encode", e))?;
    let mut file = fs::File::create(&tmp).map_err(|e| io_err(&tmp, "create", e))?;
    file.write_all(&json)
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .map_err(|e| io_err(&tmp, "write", e))?;
    fs::rename(&tmp, path).map_err(|e| io_err(path, "rename", e))
}

/// An exclusive lock on `<path>.lock`, taken by creating the file (O_EXCL) and released by
/// removing it. A lock older than [`LOCK_STALE`] is taken over.
struct FileLock {
    path: PathBuf,
}

impl FileLock {
    fn acquire(state: &Path) -> Result<Self, StateError> {
        let mut p = state.as_os_str().to_owned();
        p.push(".lock");
        let path = PathBuf::from(p);
        let start = Instant::now();
        loop {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    let _ = writeln!(f, "{}", std::process::id());
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let stale = fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| SystemTime::now().duration_since(t).ok())
                        .is_some_and(|age| age > LOCK_STALE);
                    if stale {
                        let _ = fs::remove_file(&path);
                        continue;
                    }
                    if start.elapsed() > LOCK_WAIT {
                        return Err(io_err(&path, "lock", "held by another process"));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(io_err(&path, "lock", e)),
            }
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(amount: u64) -> PaymentRecord {
        PaymentRecord {
            id: 0,
            at: 0,
            url: "http://x/paid".into(),
            network: "eip155:31337".into(),
            asset: "0x5FbDB2315678afecb367f032d93F642f64180aa3".into(),
            pay_to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C".into(),
            amount: TokenAmount::from_u128(u128::from(amount)),
            status: PaymentStatus::Reserved,
            tx: None,
        }
    }

    #[test]
    fn utc_days() {
        assert_eq!(utc_day(0), "1970-01-01");
        assert_eq!(utc_day(951_782_400), "2000-02-29");
        assert_eq!(utc_day(1_795_392_000 - 1), "2026-11-22");
        assert_eq!(utc_day(1_795_392_000), "2026-11-23");
    }

    #[test]
    fn budget_survives_restarts_and_rolls_over_at_midnight_utc() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spend.json");
        let t = 1_795_392_000 - 3600; // 2026-11-22 23:00 UTC
        let max = Some(U256::from(25_000));
        let a = SpendState::file(&path);
        let id = a.reserve(t, max, rec(10_000)).unwrap();
        a.finish(t, id, PaymentStatus::Settled, Some("0xabc".into()))
            .unwrap();
        // A new process (new SpendState) sees the same day's spend.
        let b = SpendState::file(&path);
        assert_eq!(b.spent_today(t).unwrap(), U256::from(10_000));
        b.reserve(t, max, rec(10_000)).unwrap();
        assert!(matches!(
            b.reserve(t, max, rec(10_000)),
            Err(StateError::OverBudget { .. })
        ));
        // Released payments do not count.
        let id = b.reserve(t, max, rec(5_000)).unwrap();
        b.finish(t, id, PaymentStatus::Released, None).unwrap();
        assert_eq!(b.spent_today(t).unwrap(), U256::from(20_000));
        // Next UTC day: a fresh budget.
        assert_eq!(b.spent_today(t + 3600).unwrap(), U256::ZERO);
        assert!(!path.with_extension("json.lock").exists());
        let file: SpendFile = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(file.day, "2026-11-23");
    }

    #[test]
    fn corrupt_file_is_an_error_not_a_fresh_budget() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spend.json");
        fs::write(&path, "{not json").unwrap();
        let s = SpendState::file(&path);
        assert!(matches!(s.spent_today(0), Err(StateError::Corrupt { .. })));
    }

    #[test]
    fn concurrent_reservations_never_pass_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spend.json");
        let max = Some(U256::from(50_000));
        let ok = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let st = SpendState::file(&path);
                    for _ in 0..4 {
                        if st.reserve(1000, max, rec(10_000)).is_ok() {
                            ok.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        assert_eq!(ok.load(std::sync::atomic::Ordering::SeqCst), 5);
        assert_eq!(
            SpendState::file(&path).spent_today(1000).unwrap(),
            U256::from(50_000)
        );
    }
}
