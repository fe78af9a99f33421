//! GCRA rate limiting on one atomic per key or consumer. The state lives inside the key and
//! consumer records (no separate map to look up), and the rate comes from the plan in the
//! current config snapshot, so a reload changes limits without resetting anyone's state.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// Monotonic nanoseconds since the first call.
pub fn now_ns() -> u64 {
    base().elapsed().as_nanos() as u64
}

/// Admit one request against `tat` with emission interval `t` and tolerance `tau` (ns).
/// `Err(wait_ns)` says how long until it would be admitted.
pub fn gcra(tat: &AtomicU64, t: u64, tau: u64, now: u64) -> Result<(), u64> {
    // Offset so that a fresh cell (0) is always in the past.
    let now = now + t + tau;
    let mut cur = tat.load(Ordering::Relaxed);
    loop {
        let start = cur.max(now);
        if start - now > tau {
            return Err(start - now - tau);
        }
        match tat.compare_exchange_weak(cur, start + t, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return Ok(()),
            Err(actual) => cur = actual,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let tat = AtomicU64::new(0);
        let t = 100; // one per 100 ns
        let tau = t * 4; // burst of 5
        for _ in 0..5 {
            assert!(gcra(&tat, t, tau, 1000).is_ok());
        }
        let wait = gcra(&tat, t, tau, 1000).unwrap_err();
        assert_eq!(wait, 100);
        assert!(gcra(&tat, t, tau, 1100).is_ok());
        assert!(gcra(&tat, t, tau, 1100).is_err());
    }
}
