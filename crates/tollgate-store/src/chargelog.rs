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
//! the process died, so its batch was never acknowledged.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::journal::{IdemRecord, StoreError, UsageRecord};
use crate::ledger::{AcctKey, AcctKind, Entry};

/// First bytes of every segment file.
pub const MAGIC: &[u8; 8] = b"TGCLOG01";
/// A segment is closed and a new one started past this size.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// The largest record accepted when reading (a larger length is damage).
const MAX_RECORD: usize = 64 << 20;

const TAG_CHARGE: u8 = 1;
const TAG_ENTRIES: u8 = 2;

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

fn begin(out: &mut Vec<u8>, lsn: u64, tag: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]);
    put_u64(out, lsn);
    out.push(tag);
    start
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
        let rest = &buf[pos..];
        if rest.len() < 8 {
            return (out, Some((pos, Damaged("truncated frame"))));
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if len == 0 || len > MAX_RECORD || rest.len() - 8 < len {
            return (out, Some((pos, Damaged("truncated record"))));
        }
        let payload = &rest[8..8 + len];
        if crc32fast::hash(payload) != crc {
            return (out, Some((pos, Damaged("checksum mismatch"))));
        }
        match decode_payload(payload) {
            Ok(r) => out.push(r),
            Err(e) => return (out, Some((pos, e))),
        }
        pos += 8 + len;
    }
    (out, None)
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
    /// Next sequence number to hand out.
    pub next_lsn: u64,
}

impl LogWriter {
    /// Start a new segment in `dir` (after any already there) whose first record will be
    /// `next_lsn`.
    pub fn create(dir: &Path, next_lsn: u64) -> Result<LogWriter, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io("cannot create", dir, e))?;
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
            next_lsn,
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

    /// Append `buf` (whole framed records) and make it durable. On failure nothing of `buf`
    /// counts as written: the segment is closed (a reader stops at the partial batch) and the
    /// next append goes to a fresh segment.
    pub fn append(&mut self, buf: &[u8], sync: bool) -> Result<(), StoreError> {
        let r =
            self.file.write_all(buf).and_then(
                |()| {
                    if sync {
                        self.file.sync_data()
                    } else {
                        Ok(())
                    }
                },
            );
        match r {
            Ok(()) => {
                self.bytes += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                let err = io("cannot write", &self.path, e);
                match Self::new_segment(&self.dir, self.segno + 1) {
                    Ok((file, path)) => {
                        self.segno += 1;
                        self.file = file;
                        self.path = path;
                        self.bytes = MAGIC.len() as u64;
                    }
                    Err(e2) => tracing::error!(error = %e2, "no new charge log segment"),
                }
                Err(err)
            }
        }
    }

    /// When the segment is full: sync it, start the next one, and return the path of the
    /// closed one together with the last sequence number it holds.
    pub fn rotate_if_full(&mut self) -> Result<Option<(PathBuf, u64)>, StoreError> {
        if self.bytes < SEGMENT_BYTES {
            return Ok(None);
        }
        self.file
            .sync_data()
            .map_err(|e| io("cannot sync", &self.path, e))?;
        let (file, path) = Self::new_segment(&self.dir, self.segno + 1)?;
        self.segno += 1;
        let old = std::mem::replace(&mut self.path, path);
        self.file = file;
        self.bytes = MAGIC.len() as u64;
        Ok(Some((old, self.next_lsn - 1)))
    }
}

/// Read every record of the segments in `dir` with a sequence number above `after`, oldest
/// first. Damage ends a segment (logged); it can only be the unacknowledged tail of a crash.
pub fn read_after(dir: &Path, after: u64) -> Result<(Vec<(u64, Record)>, u64), StoreError> {
    let mut out = Vec::new();
    let mut max_lsn = after;
    let segs = segments(dir)?;
    let last = segs.len().saturating_sub(1);
    for (i, p) in segs.iter().enumerate() {
        let buf = std::fs::read(p).map_err(|e| io("cannot read", p, e))?;
        let (recs, damage) = read_segment(&buf);
        if let Some((at, why)) = damage {
            if i == last {
                tracing::info!(segment = %p.display(), offset = at, reason = why.0,
                    "charge log ends in a partly written batch (never acknowledged); ignored");
            } else {
                tracing::error!(segment = %p.display(), offset = at, reason = why.0,
                    "charge log segment damaged before its end; later records of it are lost");
            }
        }
        for (lsn, r) in recs {
            max_lsn = max_lsn.max(lsn);
            if lsn > after {
                out.push((lsn, r));
            }
        }
    }
    Ok((out, max_lsn))
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
