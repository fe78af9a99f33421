//! Fuzzes the charge log's record decoder, which reads segment files after a crash: whatever a
//! damaged or foreign file holds must end the segment with a `Damaged` reason, never a panic.
//!
//! Run: `cargo fuzz run charge_log --sanitizer none` (from `fuzz/`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_store::chargelog::{
    decode_payload, encode_charge, encode_entries, read_segment, Record, MAGIC,
};

/// Encode `rec` as the log writes it (frame header and payload).
fn encode(lsn: u64, rec: &Record) -> Vec<u8> {
    let mut out = Vec::new();
    match rec {
        Record::Charge {
            usage,
            entries,
            idem,
        } => encode_charge(&mut out, lsn, usage, entries, idem.as_deref()),
        Record::Entries {
            charge_id,
            occurred_ms,
            entries,
        } => encode_entries(&mut out, lsn, charge_id, *occurred_ms, entries),
    }
    out
}

fuzz_target!(|data: &[u8]| {
    // The input as a payload: a valid checksum around it, so the decoder itself is exercised
    // (random bytes almost never pass the CRC).
    if let Ok((lsn, rec)) = decode_payload(data) {
        // Whatever decodes survives a round trip unchanged.
        let framed = encode(lsn, &rec);
        assert_eq!(
            decode_payload(&framed[8..]).expect("re-decodes"),
            (lsn, rec)
        );
    }
    let mut seg = MAGIC.to_vec();
    seg.extend_from_slice(&(data.len() as u32).to_le_bytes());
    seg.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    seg.extend_from_slice(data);
    let (records, damage) = read_segment(&seg);
    // One frame: either its record, or the damage that ends the segment there.
    assert!(records.len() <= 1);
    assert!(records.is_empty() || damage.is_none());
    assert_eq!(
        records.len() == 1,
        decode_payload(data).is_ok() && !data.is_empty()
    );
    // The input as a whole segment file (magic, frames, a torn tail, zeros).
    let (_, damage) = read_segment(data);
    if let Some((at, _)) = damage {
        assert!(at <= data.len());
    }
});
