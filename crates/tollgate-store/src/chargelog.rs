//! The charge log: the durable record of settled requests on the hot path.
//!
//! Every settled request (usage event, balanced entries, idempotency outcome) is appended to a
//! segment file as one checksummed record, and a whole batch of records shares one
//! `fdatasync` (group commit). A strict-mode response is released once its record is on disk.
//! The SQLite database is a projection of this log: a projector thread applies records in
//! large transactions (see [`crate::journal`]) and notes in `meta.log_lsn` how far it got.
//! On open, records past that mark are applied again (every insert is keyed by the charge id
//! and leg, so applying one twice is a no-op) and the segments are removed.
//!
//! Segment layout: an 8-byte magic, then records `[len: u32 LE][crc32: u32 LE][payload]`,
//! the checksum over the payload. Payload: `[lsn: u64][tag: u8][body]`. A record that is
//! short, fails its checksum or does not decode ends the segment: it was being written when
//! the process died, so its batch was never acknowledged. A batch whose write or sync failed
//! is voided in place; should that fail too, its numbers start the next segment again, that
//! segment opening with a void marker (a frame with the batch's first number and no record),
//! and a reader drops a segment's records whose numbers the next non-empty segment starts from.
//!
//! Prefilled segments: once the log sees steady traffic, the next segment is written out in
//! full (magic, then zeros to [`SEGMENT_BYTES`]) and synced by a background thread before it
//! is needed, then renamed into place. Appends to such a segment overwrite blocks the file
//! already has, so each `fdatasync` writes the data alone; an append that grows the file also
//! commits the file system's journal for the new size, which is what makes the tail of
//! fdatasync latency (and of every strict-mode response) long. A zero frame header marks the
//! end of the written part of a prefilled segment.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::journal::{IdemRecord, StoreError, UsageRecord};
use crate::ledger::{AcctKey, AcctKind, Entry};
use crate::logstats::LogStats;

/// First bytes of every segment file.
pub const MAGIC: &[u8; 8] = b"TGCLOG01";
/// A segment is closed and a new one started past this size.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// A spare (prefilled) segment is prepared once the current segment holds this much, so a
/// quiet log (a test, an idle gateway) never writes one.
const PREPARE_AFTER: u64 = 1 << 20;
/// The size of each write that prefills a spare segment: one page.
const PREFILL_WRITE: usize = 4096;
/// Prefill writes between two syncs of the spare (1 MiB).
const PREFILL_SYNC_EVERY: u32 = 256;
/// Name of the segment being prefilled; it becomes a segment by a rename.
const SPARE_NAME: &str = "next.spare";
/// The largest record accepted when reading (a larger length is damage).
const MAX_RECORD: usize = 64 << 20;

const TAG_CHARGE: u8 = 1;
const TAG_ENTRIES: u8 = 2;
/// A void marker: no record, only a sequence number. The first frame of a segment started
/// after a failed batch that could not be voided in place; it gives the segment the batch's
/// first number, so a reader drops the batch (see [`for_each_after`]) even when no record
/// follows the marker. Readers skip it.
const TAG_VOID: u8 = 3;
/// Payload bytes of a void marker: the sequence number and the tag.
const VOID_PAYLOAD: usize = 9;

/// Entry kinds as stored in the log (`Entry::kind` is a static string).
const ENTRY_KINDS: &[&str] = &["charge", "quota", "cap", "bytes", "topup", "adjust", "x402"];

/// A record of the log, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A settled request.
    Charge {
        /// Usage event.
        usage: Box<UsageRecord>,
        /// Its entries.
        entries: Vec<Entry>,
        /// Idempotency outcome.
        idem: Option<Box<IdemRecord>>,
    },
    /// Follow-up entries of a charge.
    Entries {
        /// The charge.
        charge_id: String,
        /// When.
        occurred_ms: i64,
        /// The entries.
        entries: Vec<Entry>,
    },
}

/// Why a record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("charge log record damaged: {0}")]
pub struct Damaged(pub &'static str);

// ---------------------------------------------------------------------------------------------
// Encoding

fn put_u16(b: &mut Vec<u8>, v: u16) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_i64(b: &mut Vec<u8>, v: i64) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_bytes(b: &mut Vec<u8>, v: &[u8]) {
    b.extend_from_slice(&(v.len() as u32).to_le_bytes());
    b.extend_from_slice(v);
}
fn put_opt_bytes(b: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        None => b.push(0),
        Some(v) => {
            b.push(1);
            put_bytes(b, v);
        }
    }
}
fn put_acct(b: &mut Vec<u8>, a: &AcctKey) {
    b.push(a.kind as u8);
    put_i64(b, a.owner);
    put_i64(b, a.period);
}
fn put_entries(b: &mut Vec<u8>, es: &[Entry]) {
    put_u16(b, es.len() as u16);
    for e in es {
        put_u16(b, e.leg);
        put_bytes(b, e.kind.as_bytes());
        put_acct(b, &e.debit);
        put_acct(b, &e.credit);
        put_i64(b, e.amount);
    }
}

/// Append the framed record for a charge to `out`.
pub fn encode_charge(
    out: &mut Vec<u8>,
    lsn: u64,
    usage: &UsageRecord,
    entries: &[Entry],
    idem: Option<&IdemRecord>,
) {
    let start = begin(out, lsn, TAG_CHARGE);
    let u = usage;
    put_bytes(out, u.charge_id.as_bytes());
    put_bytes(out, u.request_id.as_bytes());
    put_i64(out, u.tenant_seq);
    put_i64(out, u.consumer_seq);
    put_opt_bytes(out, u.key_id.as_deref().map(str::as_bytes));
    put_bytes(out, u.route.as_bytes());
    put_u16(out, u.status);
    put_i64(out, u.requests);
    put_i64(out, u.bytes);
    put_i64(out, u.cost);
    out.push(u8::from(u.charged));
    put_i64(out, u.occurred_ms);
    put_entries(out, entries);
    match idem {
        None => out.push(0),
        Some(i) => {
            out.push(1);
            put_i64(out, i.consumer_seq);
            put_bytes(out, i.key.as_bytes());
            out.extend_from_slice(&i.fingerprint);
            put_u16(out, i.status);
            put_u16(out, i.headers.len() as u16);
            for (k, v) in &i.headers {
                put_bytes(out, k.as_bytes());
                put_bytes(out, v.as_bytes());
            }
            put_opt_bytes(out, i.body.as_deref());
            put_i64(out, i.created_ms);
        }
    }
    finish(out, start);
}

/// Append the framed record for follow-up entries to `out`.
pub fn encode_entries(
    out: &mut Vec<u8>,
    lsn: u64,
    charge_id: &str,
    occurred_ms: i64,
    entries: &[Entry],
) {
    let start = begin(out, lsn, TAG_ENTRIES);
    put_bytes(out, charge_id.as_bytes());
    put_i64(out, occurred_ms);
    put_entries(out, entries);
    finish(out, start);
}

/// Number a frame encoded with a placeholder sequence number (`frame` holds exactly one
/// record) and seal it with its length and checksum again.
pub(crate) fn seal(frame: &mut [u8], lsn: u64) {
    if frame.len() < 16 {
        return;
    }
    frame[8..16].copy_from_slice(&lsn.to_le_bytes());
    finish(frame, 0);
}

fn begin(out: &mut Vec<u8>, lsn: u64, tag: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]);
    put_u64(out, lsn);
    out.push(tag);
    start
}

/// Append a void marker numbered `lsn` ([`TAG_VOID`]).
fn encode_void(out: &mut Vec<u8>, lsn: u64) {
    let start = begin(out, lsn, TAG_VOID);
    finish(out, start);
}

fn finish(out: &mut [u8], start: usize) {
    let payload = &out[start + 8..];
    let len = payload.len() as u32;
    let crc = crc32fast::hash(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

// ---------------------------------------------------------------------------------------------
// Decoding

struct Rd<'a> {
    b: &'a [u8],
}

impl<'a> Rd<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Damaged> {
        if self.b.len() < n {
            return Err(Damaged("truncated field"));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, Damaged> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Damaged> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, Damaged> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u64(&mut self) -> Result<u64, Damaged> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn i64(&mut self) -> Result<i64, Damaged> {
        Ok(self.u64()? as i64)
    }
    fn bytes(&mut self) -> Result<&'a [u8], Damaged> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<String, Damaged> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| Damaged("string not UTF-8"))
    }
    fn opt_bytes(&mut self) -> Result<Option<&'a [u8]>, Damaged> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.bytes()?)),
            _ => Err(Damaged("bad option tag")),
        }
    }
    fn acct(&mut self) -> Result<AcctKey, Damaged> {
        let kind = AcctKind::from_u8(self.u8()?).ok_or(Damaged("unknown account kind"))?;
        Ok(AcctKey {
            kind,
            owner: self.i64()?,
            period: self.i64()?,
        })
    }
    fn entries(&mut self) -> Result<Vec<Entry>, Damaged> {
        let n = self.u16()? as usize;
        let mut v = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            let leg = self.u16()?;
            let kind_raw = self.bytes()?;
            let kind = ENTRY_KINDS
                .iter()
                .find(|k| k.as_bytes() == kind_raw)
                .copied()
                .ok_or(Damaged("unknown entry kind"))?;
            v.push(Entry {
                leg,
                kind,
                debit: self.acct()?,
                credit: self.acct()?,
                amount: self.i64()?,
            });
        }
        Ok(v)
    }
}

/// The consumer a charge record's payload is for, read without decoding the rest; `None` for
/// any other record or one too short to say.
pub(crate) fn charge_consumer(p: &[u8]) -> Option<i64> {
    let mut r = Rd { b: p };
    r.u64().ok()?;
    if r.u8().ok()? != TAG_CHARGE {
        return None;
    }
    r.bytes().ok()?;
    r.bytes().ok()?;
    r.i64().ok()?;
    r.i64().ok()
}

/// Decode one record payload (after its frame) into `(lsn, record)`.
pub fn decode_payload(p: &[u8]) -> Result<(u64, Record), Damaged> {
    let mut r = Rd { b: p };
    let lsn = r.u64()?;
    let rec = match r.u8()? {
        TAG_CHARGE => {
            let usage = UsageRecord {
                charge_id: r.string()?,
                request_id: r.string()?,
                tenant_seq: r.i64()?,
                consumer_seq: r.i64()?,
                key_id: r
                    .opt_bytes()?
                    .map(|b| String::from_utf8(b.to_vec()))
                    .transpose()
                    .map_err(|_| Damaged("key id not UTF-8"))?,
                route: r.string()?,
                status: r.u16()?,
                requests: r.i64()?,
                bytes: r.i64()?,
                cost: r.i64()?,
                charged: r.u8()? != 0,
                occurred_ms: r.i64()?,
            };
            let entries = r.entries()?;
            let idem = match r.u8()? {
                0 => None,
                1 => {
                    let consumer_seq = r.i64()?;
                    let key = r.string()?;
                    let mut fingerprint = [0u8; 32];
                    fingerprint.copy_from_slice(r.take(32)?);
                    let status = r.u16()?;
                    let n = r.u16()? as usize;
                    let mut headers = Vec::with_capacity(n.min(64));
                    for _ in 0..n {
                        headers.push((r.string()?, r.string()?));
                    }
                    let body = r.opt_bytes()?.map(<[u8]>::to_vec);
                    Some(Box::new(IdemRecord {
                        consumer_seq,
                        key,
                        fingerprint,
                        status,
                        headers,
                        body,
                        created_ms: r.i64()?,
                    }))
                }
                _ => return Err(Damaged("bad idempotency tag")),
            };
            Record::Charge {
                usage: Box::new(usage),
                entries,
                idem,
            }
        }
        TAG_ENTRIES => Record::Entries {
            charge_id: r.string()?,
            occurred_ms: r.i64()?,
            entries: r.entries()?,
        },
        TAG_VOID => return Err(Damaged("a void marker, not a record")),
        _ => return Err(Damaged("unknown record tag")),
    };
    if !r.b.is_empty() {
        return Err(Damaged("trailing bytes"));
    }
    Ok((lsn, rec))
}

/// Where a segment stops being readable, and why.
pub type DamageAt = (usize, Damaged);

/// Read the records of one segment's bytes (magic included). Returns the records read and,
/// when the segment ends in damage, what was wrong and at which offset.
pub fn read_segment(buf: &[u8]) -> (Vec<(u64, Record)>, Option<DamageAt>) {
    let mut out = Vec::new();
    if buf.len() < MAGIC.len() || &buf[..MAGIC.len()] != MAGIC {
        return (out, Some((0, Damaged("not a charge log segment"))));
    }
    let mut pos = MAGIC.len();
    while pos < buf.len() {
        let payload = match frame(&buf[pos..]) {
            Ok(Some(p)) => p,
            // The unwritten (zero-filled) rest of a prefilled segment.
            Ok(None) => break,
            Err(e) => return (out, Some((pos, e))),
        };
        if !is_void_marker(payload) {
            match decode_payload(payload) {
                Ok(r) => out.push(r),
                Err(e) => return (out, Some((pos, e))),
            }
        }
        pos += 8 + payload.len();
    }
    (out, None)
}

/// Whether a frame's payload is a void marker ([`TAG_VOID`]) rather than a record.
fn is_void_marker(payload: &[u8]) -> bool {
    payload.len() == VOID_PAYLOAD && payload[8] == TAG_VOID
}

/// The frame at the start of `rest`: its payload, checksum verified; `None` at a zero frame
/// header (the end of the written part of a prefilled segment).
fn frame(rest: &[u8]) -> Result<Option<&[u8]>, Damaged> {
    let Some(h) = rest.get(..8) else {
        return Err(Damaged("truncated frame"));
    };
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if len == 0 && crc == 0 {
        return Ok(None);
    }
    if len == 0 || len > MAX_RECORD || rest.len() - 8 < len {
        return Err(Damaged("truncated record"));
    }
    let payload = &rest[8..8 + len];
    if crc32fast::hash(payload) != crc {
        return Err(Damaged("checksum mismatch"));
    }
    Ok(Some(payload))
}

// ---------------------------------------------------------------------------------------------
// Files

/// The directory holding the segments of the database at `db`.
pub fn dir_for(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-log");
    PathBuf::from(s)
}

fn segment_name(segno: u64) -> String {
    format!("{segno:020}.seg")
}

fn io(what: &str, p: &Path, e: std::io::Error) -> StoreError {
    StoreError::Sql(format!("charge log: {what} {}: {e}", p.display()))
}

/// The segment files in `dir`, oldest first.
pub fn segments(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("cannot list", dir, e)),
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    Ok(v)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("cannot sync", dir, e))
}

/// Remove a segment whose records are all in the database.
pub fn remove_segment(p: &Path) {
    if let Err(e) = std::fs::remove_file(p) {
        tracing::warn!(segment = %p.display(), error = %e, "charge log segment not removed");
    }
}

/// The segment being appended to.
pub struct LogWriter {
    dir: PathBuf,
    file: File,
    path: PathBuf,
    bytes: u64,
    segno: u64,
    /// The current segment was prefilled: appends overwrite, `fdatasync` writes data only.
    prefilled: bool,
    /// The next segment, being prefilled by a background thread.
    spare: Option<JoinHandle<std::io::Result<File>>>,
    /// Next sequence number to hand out.
    pub next_lsn: u64,
    /// Sync latency and commit counters.
    stats: Arc<LogStats>,
    /// Tests: the next sync fails (as an `fdatasync` reporting EIO would).
    #[cfg(test)]
    fail_next_sync: bool,
    /// Tests: the next [`LogWriter::void`] fails.
    #[cfg(test)]
    fail_next_void: bool,
}

impl LogWriter {
    /// Start a new segment in `dir` (after any already there) whose first record will be
    /// `next_lsn`.
    pub fn create(dir: &Path, next_lsn: u64) -> Result<LogWriter, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io("cannot create", dir, e))?;
        // A spare left by an earlier run may be incomplete: it is made again when needed.
        let spare = dir.join(SPARE_NAME);
        match std::fs::remove_file(&spare) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("cannot remove", &spare, e)),
        }
        let segno = segments(dir)?
            .last()
            .and_then(|p| p.file_stem()?.to_str()?.parse::<u64>().ok())
            .map_or(1, |n| n + 1);
        let (file, path) = Self::new_segment(dir, segno)?;
        Ok(LogWriter {
            dir: dir.to_path_buf(),
            file,
            path,
            bytes: MAGIC.len() as u64,
            segno,
            prefilled: false,
            spare: None,
            next_lsn,
            stats: Arc::default(),
            #[cfg(test)]
            fail_next_sync: false,
            #[cfg(test)]
            fail_next_void: false,
        })
    }

    fn new_segment(dir: &Path, segno: u64) -> Result<(File, PathBuf), StoreError> {
        let path = dir.join(segment_name(segno));
        let mut file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(|e| io("cannot create", &path, e))?;
        file.write_all(MAGIC)
            .and_then(|()| file.sync_data())
            .map_err(|e| io("cannot write", &path, e))?;
        sync_dir(dir)?;
        Ok((file, path))
    }

    /// Write the spare segment in full and sync it; the returned file is positioned after
    /// the magic.
    fn prefill(path: &Path) -> std::io::Result<File> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(path)?;
        // One page per write: the page cache then holds the segment in single pages. Written
        // in larger pieces, a kernel that caches files in large folios (ext4 on Linux 6.18
        // here) holds it in folios of up to some MiB, and every later append of a few hundred
        // bytes dirties a whole folio that the next fdatasync writes out in full. Measured at
        // 5000 governed req/s (bench/ab): the log writer wrote 108,990 bytes to the disk per
        // request with 1 MiB prefill writes, 1,545 with these.
        let zeros = [0u8; PREFILL_WRITE];
        file.write_all(MAGIC)?;
        let mut left = SEGMENT_BYTES - MAGIC.len() as u64;
        let mut writes = 0u32;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            file.write_all(&zeros[..n])?;
            left -= n as u64;
            writes += 1;
            if writes.is_multiple_of(PREFILL_SYNC_EVERY) {
                // Written back a MiB at a time: 64 MiB handed to the disk at once queue ahead
                // of the log's own fdatasync, which then waits for all of them (measured on
                // a 2-core VM: a log sync took up to 13-17 ms during a 64 MiB burst, at most
                // 0.4-2.7 ms while the same 64 MiB went out a MiB at a time).
                file.sync_data()?;
            }
        }
        file.sync_all()?;
        file.seek(SeekFrom::Start(MAGIC.len() as u64))?;
        Ok(file)
    }

    /// The writer's counters (sync latency, commits), to read while it runs.
    pub fn stats(&self) -> Arc<LogStats> {
        Arc::clone(&self.stats)
    }

    /// Whether the current segment is prefilled (for tests and diagnostics).
    pub fn prefilled(&self) -> bool {
        self.prefilled
    }

    /// Append `buf` (whole framed records) and make it durable. On failure nothing of `buf`
    /// counts as written: its bytes are voided ([`LogWriter::void`]), the segment is closed and
    /// the next append goes to a fresh segment.
    pub fn append(&mut self, buf: &[u8], sync: bool) -> Result<(), StoreError> {
        let start = self.bytes;
        let r = self.file.write_all(buf).and_then(|()| {
            if sync {
                let started = std::time::Instant::now();
                let r = self.file.sync_data();
                #[cfg(test)]
                let r = match std::mem::take(&mut self.fail_next_sync) {
                    true => Err(std::io::Error::other("injected sync failure")),
                    false => r,
                };
                self.stats.record_sync(started.elapsed());
                r
            } else {
                Ok(())
            }
        });
        match r {
            Ok(()) => {
                self.bytes += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                let err = io("cannot write", &self.path, e);
                let mut unvoided = None;
                if !buf.is_empty() {
                    match self.void(start, buf.len()) {
                        Ok(()) => tracing::warn!(segment = %self.path.display(), offset = start,
                            "charge log batch failed; its bytes were voided"),
                        Err(e) => {
                            tracing::error!(segment = %self.path.display(), offset = start, error = %e,
                                "charge log batch failed and could not be voided");
                            unvoided = frame_lsn(buf);
                        }
                    }
                }
                match Self::new_segment(&self.dir, self.segno + 1) {
                    Ok((file, path)) => {
                        self.segno += 1;
                        self.file = file;
                        self.path = path;
                        self.bytes = MAGIC.len() as u64;
                        self.prefilled = false;
                        if let Some(lsn) = unvoided {
                            self.mark_void(lsn);
                        }
                    }
                    Err(e2) => tracing::error!(error = %e2,
                        "no new charge log segment; a reader may still find the failed batch's records"),
                }
                Err(err)
            }
        }
    }

    /// Start the fresh segment with a void marker numbered `lsn`, the first number of a failed
    /// batch that could not be voided in place, and sync it: a reader then drops that batch's
    /// records from the segment before, though no later record may follow before a crash.
    fn mark_void(&mut self, lsn: u64) {
        let mut m = Vec::with_capacity(8 + VOID_PAYLOAD);
        encode_void(&mut m, lsn);
        match self.file.write_all(&m).and_then(|()| self.file.sync_data()) {
            Ok(()) => {
                self.bytes += m.len() as u64;
                tracing::warn!(segment = %self.path.display(), lsn,
                    "charge log: the failed batch is marked void at the start of the next segment");
            }
            Err(e) => tracing::error!(segment = %self.path.display(), lsn, error = %e,
                "charge log: the failed batch could not be marked void; a reader may still find its records"),
        }
    }

    /// Void the `len` bytes of a failed batch written at `start`, so that a reader of the
    /// segment ends before them, and sync that. A batch whose write or sync failed was
    /// answered with an error (the caller's request was not charged), yet some or all of its
    /// records may have reached the disk; read back after a restart they would charge the
    /// request after all. A prefilled segment gets its zeros back (a zero frame header ends
    /// a segment), a plain one is cut back to `start`.
    fn void(&mut self, start: u64, len: usize) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        #[cfg(test)]
        if std::mem::take(&mut self.fail_next_void) {
            return Err(std::io::Error::other("injected void failure"));
        }
        if self.prefilled {
            let zeros = vec![0u8; len];
            self.file.write_all_at(&zeros, start)?;
        } else {
            self.file.set_len(start)?;
        }
        self.file.sync_data()
    }

    /// Called after each batch. When the segment is full, or when a prefilled spare is ready
    /// while the segment is not prefilled: sync the segment, start the next one, and return
    /// the path of the closed one together with the last sequence number it holds. Starts
    /// prefilling a spare when the log is busy enough to need one; never waits for it.
    pub fn rotate_if_full(&mut self) -> Result<Option<(PathBuf, u64)>, StoreError> {
        if self.spare.is_none() && (self.prefilled || self.bytes >= PREPARE_AFTER) {
            let path = self.dir.join(SPARE_NAME);
            match std::thread::Builder::new()
                .name("tollgate-prefill".into())
                .spawn(move || Self::prefill(&path))
            {
                Ok(h) => self.spare = Some(h),
                Err(e) => tracing::warn!(error = %e, "charge log prefill thread not started"),
            }
        }
        let spare_ready = self.spare.as_ref().is_some_and(JoinHandle::is_finished);
        let full = self.bytes >= SEGMENT_BYTES;
        let upgrade = spare_ready && !self.prefilled;
        if !full && !upgrade {
            return Ok(None);
        }
        self.file
            .sync_data()
            .map_err(|e| io("cannot sync", &self.path, e))?;
        let segno = self.segno + 1;
        let next = if spare_ready {
            self.take_spare(segno)
        } else {
            None
        };
        let (file, path, prefilled) = match next {
            Some((file, path)) => (file, path, true),
            None => {
                let (file, path) = Self::new_segment(&self.dir, segno)?;
                (file, path, false)
            }
        };
        self.segno = segno;
        let old = std::mem::replace(&mut self.path, path);
        self.file = file;
        self.bytes = MAGIC.len() as u64;
        self.prefilled = prefilled;
        Ok(Some((old, self.next_lsn - 1)))
    }

    /// The finished spare, renamed into place as segment `segno`; `None` (logged) when it
    /// could not be made, and a plain segment is started instead.
    fn take_spare(&mut self, segno: u64) -> Option<(File, PathBuf)> {
        let handle = self.spare.take()?;
        let spare = self.dir.join(SPARE_NAME);
        let file = match handle.join() {
            Ok(Ok(file)) => file,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "charge log segment could not be prefilled; appending instead");
                let _ = std::fs::remove_file(&spare);
                return None;
            }
            Err(_) => {
                tracing::error!("charge log prefill thread panicked");
                return None;
            }
        };
        let path = self.dir.join(segment_name(segno));
        let renamed = std::fs::rename(&spare, &path)
            .map_err(|e| io("cannot rename", &spare, e))
            .and_then(|()| sync_dir(&self.dir));
        match renamed {
            Ok(()) => Some((file, path)),
            Err(e) => {
                tracing::warn!(error = %e, "prefilled charge log segment not used");
                None
            }
        }
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        // A spare still being written is finished first, so a writer opened next on the same
        // directory never meets a half-written one under the same name.
        if let Some(h) = self.spare.take() {
            let _ = h.join();
        }
    }
}

/// Read every record of the segments in `dir` with a sequence number above `after`, oldest
/// first. Damage ends a segment (logged); it can only be the unacknowledged tail of a crash.
/// Returns the records and the highest sequence number seen (`after` when there is none).
pub fn read_after(dir: &Path, after: u64) -> Result<(Vec<(u64, Record)>, u64), StoreError> {
    let mut out = Vec::new();
    let max_lsn = for_each_after(dir, after, |lsn, r| {
        out.push((lsn, r));
        Ok(())
    })?;
    Ok((out, max_lsn))
}

/// Hand every record of the segments in `dir` with a sequence number above `after` to `f`,
/// oldest first, one segment in memory at a time; stops at `f`'s first error. Returns the
/// highest sequence number seen (`after` when there is none).
pub fn for_each_after(
    dir: &Path,
    after: u64,
    mut f: impl FnMut(u64, Record) -> Result<(), StoreError>,
) -> Result<u64, StoreError> {
    let mut max_lsn = after;
    let segs = segments(dir)?;
    let last = segs.len().saturating_sub(1);
    let firsts: Vec<Option<u64>> = segs.iter().map(|p| first_lsn(p)).collect();
    for (i, p) in segs.iter().enumerate() {
        // Numbers the next segment starts again from belong to a batch that failed here and
        // could not be voided (see `LogWriter::void`): its callers were answered with an error.
        let next_first = firsts
            .get(i + 1..)
            .and_then(|f| f.iter().flatten().next().copied());
        let buf = std::fs::read(p).map_err(|e| io("cannot read", p, e))?;
        let (recs, damage) = read_segment(&buf);
        drop(buf);
        if let Some((at, why)) = damage {
            if i == last {
                tracing::info!(segment = %p.display(), offset = at, reason = why.0,
                    "charge log ends in a partly written batch (never acknowledged); ignored");
            } else {
                tracing::error!(segment = %p.display(), offset = at, reason = why.0,
                    "charge log segment damaged before its end; later records of it are lost");
            }
        }
        let mut failed = 0usize;
        for (lsn, r) in recs {
            if next_first.is_some_and(|n| lsn >= n) {
                failed += 1;
                continue;
            }
            max_lsn = max_lsn.max(lsn);
            if lsn > after {
                f(lsn, r)?;
            }
        }
        if failed > 0 {
            tracing::error!(segment = %p.display(), records = failed,
                "charge log records of a failed batch (their numbers start the next segment again) not applied");
        }
    }
    Ok(max_lsn)
}

/// The sequence number of the first frame (a record or a void marker) of the segment at `p`,
/// when it has a readable one.
fn first_lsn(p: &Path) -> Option<u64> {
    use std::io::Read;
    let mut file = File::open(p).ok()?;
    let at = MAGIC.len();
    let mut buf = vec![0u8; at + 8];
    file.read_exact(&mut buf).ok()?;
    if &buf[..at] != MAGIC {
        return None;
    }
    let len = u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
    if len > MAX_RECORD {
        return None;
    }
    buf.resize(at + 8 + len, 0);
    file.read_exact(&mut buf[at + 8..]).ok()?;
    frame_lsn_of_payload(frame(&buf[at..]).ok()??)
}

/// The sequence number of the first frame in `buf` (whole framed records).
fn frame_lsn(buf: &[u8]) -> Option<u64> {
    frame_lsn_of_payload(buf.get(8..)?)
}

fn frame_lsn_of_payload(p: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(p.get(..8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use proptest::prelude::*;

    fn usage(id: &str) -> UsageRecord {
        UsageRecord {
            charge_id: id.into(),
            request_id: format!("r-{id}"),
            tenant_seq: 1,
            consumer_seq: 2,
            key_id: Some("k1".into()),
            route: "api".into(),
            status: 200,
            requests: 1,
            bytes: 512,
            cost: 10_000,
            charged: true,
            occurred_ms: 1_700_000_000_000,
        }
    }

    fn entry(leg: u16, amount: i64) -> Entry {
        Entry {
            leg,
            kind: "charge",
            debit: AcctKey {
                kind: AcctKind::Balance,
                owner: 2,
                period: 0,
            },
            credit: AcctKey {
                kind: AcctKind::Revenue,
                owner: 1,
                period: 0,
            },
            amount,
        }
    }

    fn sample() -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        encode_charge(&mut b, 1, &usage("a"), &[entry(0, 5), entry(1, 1)], None);
        let idem = IdemRecord {
            consumer_seq: 2,
            key: "ik".into(),
            fingerprint: [7; 32],
            status: 201,
            headers: vec![("x".into(), "y".into())],
            body: Some(b"hello".to_vec()),
            created_ms: 9,
        };
        encode_charge(&mut b, 2, &usage("b"), &[], Some(&idem));
        encode_entries(&mut b, 3, "a", 10, &[entry(200, 64)]);
        b
    }

    #[test]
    fn round_trip() {
        let b = sample();
        let (recs, damage) = read_segment(&b);
        assert_eq!(damage, None);
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[0].0, 1);
        match &recs[1].1 {
            Record::Charge { usage, idem, .. } => {
                assert_eq!(usage.charge_id, "b");
                let i = idem.as_ref().unwrap();
                assert_eq!(i.body.as_deref(), Some(&b"hello"[..]));
                assert_eq!(i.headers, vec![("x".to_string(), "y".to_string())]);
            }
            r => panic!("unexpected {r:?}"),
        }
        assert_eq!(
            recs[2].1,
            Record::Entries {
                charge_id: "a".into(),
                occurred_ms: 10,
                entries: vec![entry(200, 64)]
            }
        );
    }

    #[test]
    fn writer_rotates_and_reader_skips_applied() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("db-log");
        let mut w = LogWriter::create(&d, 1).unwrap();
        for i in 0..3u64 {
            let mut b = Vec::new();
            encode_entries(&mut b, w.next_lsn, &format!("c{i}"), 0, &[entry(0, 1)]);
            w.next_lsn += 1;
            w.append(&b, true).unwrap();
        }
        let (recs, max) = read_after(&d, 1).unwrap();
        assert_eq!(max, 3);
        assert_eq!(recs.iter().map(|r| r.0).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(w.rotate_if_full().unwrap(), None);
    }

    #[test]
    fn a_busy_log_moves_to_prefilled_segments() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("db-log");
        let mut w = LogWriter::create(&d, 1).unwrap();
        let big = "x".repeat(60_000);
        let mut expect = Vec::new();
        let write = |w: &mut LogWriter, expect: &mut Vec<u64>| {
            let mut b = Vec::new();
            encode_entries(&mut b, w.next_lsn, &big, 0, &[entry(0, 1)]);
            expect.push(w.next_lsn);
            w.next_lsn += 1;
            w.append(&b, true).unwrap();
        };
        for _ in 0..20 {
            write(&mut w, &mut expect);
        }
        assert!(!w.prefilled());
        // Past PREPARE_AFTER a spare is being prefilled; the writer switches once it is ready.
        let mut rotated = None;
        for _ in 0..500 {
            rotated = w.rotate_if_full().unwrap();
            if rotated.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let (old, last) = rotated.expect("the prefilled spare was never taken");
        assert_eq!(last, 20);
        assert!(w.prefilled());
        let segs = segments(&d).unwrap();
        assert_eq!(segs.len(), 2, "{segs:?}");
        assert_eq!(segs[0], old);
        assert_eq!(std::fs::metadata(&segs[1]).unwrap().len(), SEGMENT_BYTES);
        for _ in 0..5 {
            write(&mut w, &mut expect);
        }
        // The file did not grow: the appends overwrote the zeros.
        assert_eq!(std::fs::metadata(&segs[1]).unwrap().len(), SEGMENT_BYTES);
        let (recs, max) = read_after(&d, 0).unwrap();
        assert_eq!(max, 25);
        assert_eq!(recs.iter().map(|r| r.0).collect::<Vec<_>>(), expect);
        // Its zero tail is a clean end, not damage.
        let (_, damage) = read_segment(&std::fs::read(&segs[1]).unwrap());
        assert_eq!(damage, None);
        // A torn record before the zeros ends the segment at that record.
        let mut torn = std::fs::read(&segs[1]).unwrap();
        let (five, _) = read_segment(&torn);
        let mut b = Vec::new();
        encode_entries(&mut b, 26, "torn", 0, &[entry(0, 1)]);
        let at = w.bytes as usize;
        let half = b.len() / 2;
        torn[at..at + half].copy_from_slice(&b[..half]);
        let (recs, damage) = read_segment(&torn);
        assert_eq!(recs.len(), 5);
        assert!(recs == five, "the records before the torn one are intact");
        assert_eq!(damage.map(|d| d.0), Some(at));
    }

    /// Append one record for `charge` and sync it; returns where it was written and its length.
    fn append(w: &mut LogWriter, charge: &str) -> (u64, usize) {
        let mut b = Vec::new();
        encode_entries(&mut b, w.next_lsn, charge, 0, &[entry(0, 1)]);
        w.next_lsn += 1;
        let at = w.bytes;
        w.append(&b, true).unwrap();
        (at, b.len())
    }

    /// Append past PREPARE_AFTER, so that a spare is prefilled (by its own thread, as when
    /// serving), and wait until the writer has moved to it.
    fn fill_until_prefilled(w: &mut LogWriter) {
        let big = "x".repeat(60_000);
        for _ in 0..20 {
            append(w, &big);
        }
        for _ in 0..500 {
            if w.rotate_if_full().unwrap().is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(w.prefilled(), "the prefilled spare was never taken");
    }

    #[test]
    fn a_voided_batch_is_not_read_back_in_plain_or_prefilled_segments() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("db-log");
        let mut w = LogWriter::create(&d, 1).unwrap();
        let read = |d: &Path| {
            let (recs, _) = read_after(d, 0).unwrap();
            recs.into_iter().map(|(l, _)| l).collect::<Vec<_>>()
        };
        // A plain segment: the failed batch (records 3 and 4, written as one) is cut off.
        append(&mut w, "a");
        append(&mut w, "b");
        let mut b = Vec::new();
        encode_entries(&mut b, 3, "c", 0, &[entry(0, 1)]);
        encode_entries(&mut b, 4, "d", 0, &[entry(0, 1)]);
        let at = w.bytes;
        w.append(&b, true).unwrap();
        assert_eq!(read(&d), [1, 2, 3, 4]);
        w.void(at, b.len()).unwrap();
        assert_eq!(read(&d), [1, 2]);
        let (_, damage) = read_segment(&std::fs::read(&w.path).unwrap());
        assert_eq!(
            damage, None,
            "the segment ends cleanly where the batch began"
        );
        // A prefilled segment: the batch's bytes are zeros again, the records before it stay.
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("db-log");
        let mut w = LogWriter::create(&d, 1).unwrap();
        fill_until_prefilled(&mut w);
        append(&mut w, "e");
        let (at, len) = append(&mut w, "f");
        assert_eq!(read(&d), (1..=22).collect::<Vec<_>>());
        w.void(at, len).unwrap();
        assert_eq!(read(&d), (1..=21).collect::<Vec<_>>());
        assert_eq!(std::fs::metadata(&w.path).unwrap().len(), SEGMENT_BYTES);
        let (_, damage) = read_segment(&std::fs::read(&w.path).unwrap());
        assert_eq!(damage, None);
    }

    /// The records after `after` in the log at `d` as (number, charge id), and the highest
    /// number read.
    fn read_names(d: &Path, after: u64) -> (Vec<(u64, String)>, u64) {
        let (recs, max) = read_after(d, after).unwrap();
        let names = recs
            .into_iter()
            .map(|(l, r)| match r {
                Record::Entries { charge_id, .. } => (l, charge_id),
                r => panic!("unexpected {r:?}"),
            })
            .collect();
        (names, max)
    }

    /// A log (prefilled or not) with one record, "kept", then a batch of two ("lost-1",
    /// "lost-2") whose sync fails, and the void of it too when `void_fails`. Returns the
    /// directory (kept alive), the log's path, the writer, the number of "kept" and the path of
    /// the segment the batch failed in.
    fn fail_a_batch(
        prefilled: bool,
        void_fails: bool,
    ) -> (tempfile::TempDir, PathBuf, LogWriter, u64, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("db-log");
        let mut w = LogWriter::create(&d, 1).unwrap();
        if prefilled {
            fill_until_prefilled(&mut w);
        }
        append(&mut w, "kept");
        let kept = w.next_lsn - 1;
        let failing = w.path.clone();
        let mut b = Vec::new();
        encode_entries(&mut b, kept + 1, "lost-1", 0, &[entry(0, 1)]);
        encode_entries(&mut b, kept + 2, "lost-2", 0, &[entry(0, 1)]);
        w.fail_next_sync = true;
        w.fail_next_void = void_fails;
        assert!(w.append(&b, true).is_err());
        (dir, d, w, kept, failing)
    }

    /// As the journal does after a failed batch: its numbers are handed out again, to a record
    /// "next" that the log then reads right after "kept".
    fn next_takes_the_failed_numbers(w: &mut LogWriter, d: &Path, kept: u64, prefilled: bool) {
        w.next_lsn = kept + 1;
        append(w, "next");
        let (names, max) = read_names(d, kept - 1);
        assert_eq!(
            names,
            [(kept, "kept".to_string()), (kept + 1, "next".to_string())],
            "prefilled: {prefilled}"
        );
        assert_eq!(max, kept + 1);
    }

    #[test]
    fn a_batch_whose_sync_fails_is_not_read_back_and_its_numbers_go_to_the_next() {
        for prefilled in [false, true] {
            let (_dir, d, mut w, kept, failing) = fail_a_batch(prefilled, false);
            assert_ne!(w.path, failing, "the writer moved to a fresh segment");
            next_takes_the_failed_numbers(&mut w, &d, kept, prefilled);
            // The failed segment itself ends cleanly before the batch (voided), whatever a
            // reader of the whole log would drop.
            let (in_failing, damage) = read_segment(&std::fs::read(&failing).unwrap());
            assert_eq!(damage, None);
            assert_eq!(in_failing.last().map(|r| r.0), Some(kept));
        }
    }

    #[test]
    fn a_failed_batch_that_cannot_be_voided_is_marked_void_in_the_next_segment() {
        for prefilled in [false, true] {
            let (_dir, d, mut w, kept, failing) = fail_a_batch(prefilled, true);
            // The batch is still in the failed segment...
            let (in_failing, _) = read_segment(&std::fs::read(&failing).unwrap());
            assert_eq!(in_failing.last().map(|r| r.0), Some(kept + 2));
            // ...and the process ends before any later record: a reader drops the batch all
            // the same, for the fresh segment starts with a marker numbered like it.
            assert_eq!(first_lsn(&w.path), Some(kept + 1), "prefilled: {prefilled}");
            let (names, max) = read_names(&d, kept - 1);
            assert_eq!(
                names,
                [(kept, "kept".to_string())],
                "prefilled: {prefilled}"
            );
            assert_eq!(max, kept);
            // Records numbered on from the marker are read; the marker itself is not a record.
            next_takes_the_failed_numbers(&mut w, &d, kept, prefilled);
            let (in_fresh, damage) = read_segment(&std::fs::read(&w.path).unwrap());
            assert_eq!(damage, None);
            assert_eq!(in_fresh.len(), 1);
        }
    }

    #[test]
    fn a_void_marker_is_skipped_and_does_not_decode_as_a_record() {
        let mut seg = MAGIC.to_vec();
        encode_void(&mut seg, 7);
        encode_entries(&mut seg, 7, "a", 0, &[entry(0, 1)]);
        let (recs, damage) = read_segment(&seg);
        assert_eq!(damage, None);
        assert_eq!(recs.iter().map(|r| r.0).collect::<Vec<_>>(), [7]);
        assert_eq!(frame_lsn(&seg[MAGIC.len()..]), Some(7));
        assert!(decode_payload(&seg[MAGIC.len() + 8..MAGIC.len() + 8 + VOID_PAYLOAD]).is_err());
    }

    #[test]
    fn records_numbered_again_by_the_next_segment_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("db-log");
        std::fs::create_dir_all(&d).unwrap();
        let segment = |n: u64, recs: &[(u64, &str)]| {
            let mut b = MAGIC.to_vec();
            for (lsn, name) in recs {
                encode_entries(&mut b, *lsn, name, 0, &[entry(0, 1)]);
            }
            std::fs::write(d.join(segment_name(n)), b).unwrap();
        };
        // Segment 1 holds a failed batch (3, 4) that was not voided; the writer moved on and
        // numbered its next records from 3 again. An empty segment between them (a failure
        // right after a rotation) does not hide that.
        segment(1, &[(1, "a"), (2, "b"), (3, "lost-3"), (4, "lost-4")]);
        segment(2, &[]);
        segment(3, &[(3, "c"), (4, "d"), (5, "e")]);
        let (names, max) = read_names(&d, 0);
        let want: Vec<(u64, String)> = [(1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, "e")]
            .into_iter()
            .map(|(l, n)| (l, n.to_string()))
            .collect();
        assert_eq!(names, want);
        assert_eq!(max, 5);
        // Segments numbered on from each other lose nothing.
        segment(4, &[(6, "f")]);
        assert_eq!(read_after(&d, 0).unwrap().0.len(), 6);
    }

    /// Bytes this thread has caused to be written to storage (`write_bytes` of
    /// /proc/thread-self/io: counted when a page is dirtied, a whole folio at a time).
    fn dirtied_by_this_thread() -> u64 {
        let io = std::fs::read_to_string("/proc/thread-self/io")
            .expect("/proc/thread-self/io (task I/O accounting) is needed by this test");
        io.lines()
            .find_map(|l| l.strip_prefix("write_bytes:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("write_bytes in /proc/thread-self/io")
    }

    #[test]
    fn an_append_to_a_prefilled_segment_writes_about_a_page() {
        // On a disk-backed directory (the workspace's target/, not a tmpfs /tmp), so that
        // the kernel counts the writes.
        let scratch = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tmp");
        std::fs::create_dir_all(&scratch).unwrap();
        let dir = tempfile::tempdir_in(&scratch).unwrap();
        let d = dir.path().join("db-log");
        let mut w = LogWriter::create(&d, 1).unwrap();
        fill_until_prefilled(&mut w);
        // Measured some MiB into the segment and over 2 MB of appends of about 1 KB, as a
        // busy gateway's batches: page-cache folios are aligned to their size, so those near
        // the start of a file are small whatever wrote it.
        let big = "x".repeat(60_000);
        for _ in 0..70 {
            append(&mut w, &big);
        }
        let appends = 2000u64;
        let before = dirtied_by_this_thread();
        for i in 0..appends {
            append(&mut w, &format!("charge-{i:06}-{}", "y".repeat(900)));
        }
        let per_append = (dirtied_by_this_thread() - before) / appends;
        assert!(
            per_append > 0,
            "no writes counted: is {} on a disk?",
            scratch.display()
        );
        // One page, or two when a record straddles a page boundary (pages of up to 16 KiB).
        // Prefilled in 1 MiB writes, the segment sat in large folios and each append wrote one
        // out whole: 344,676 bytes per append here (Linux 6.18, ext4), against 5,095 now.
        assert!(
            per_append <= 32 * 1024,
            "each small append to a prefilled segment wrote {per_append} bytes to the disk"
        );
    }

    proptest! {
        // A crash can leave any prefix of a batch, or garbage, at the end: reading never
        // panics and yields exactly the whole records before the damage.
        #[test]
        fn truncation_and_corruption_never_panic(cut in 0usize..400, flip in any::<Option<(usize, u8)>>()) {
            let full = sample();
            let mut b = full[..cut.min(full.len())].to_vec();
            if let Some((at, x)) = flip {
                if !b.is_empty() {
                    let i = at % b.len();
                    b[i] ^= x | 1;
                }
            }
            let (recs, _) = read_segment(&b);
            let (all, _) = read_segment(&full);
            prop_assert!(recs.len() <= all.len());
            if flip.is_none() {
                prop_assert_eq!(&recs[..], &all[..recs.len()]);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_payload(&data);
            let mut b = MAGIC.to_vec();
            b.extend_from_slice(&data);
            let _ = read_segment(&b);
        }
    }
}
