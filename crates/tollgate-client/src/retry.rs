//! When to try again: exponential backoff for quota-style 402s, `Retry-After` for 429s, and
//! an injectable sleeper so tests never really wait.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The retry schedule.
///
/// Quota-style 402 (`QUOTA_EXCEEDED`, `SPENDING_CAP_REACHED`): never retried at once; retry `n`
/// (0-based) waits `max(quota_initial * 2^n, Retry-After)`. 429: waits `Retry-After`, or
/// `rate_limit_initial * 2^n` without one. At most `max_retries` retries in all; a wait longer
/// than `max_wait` is not slept: the client gives up at once and reports when to come back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// First wait on a quota-style 402 (30 s).
    pub quota_initial: Duration,
    /// First wait on a 429 without `Retry-After` (1 s).
    pub rate_limit_initial: Duration,
    /// Retries after the first attempt (3).
    pub max_retries: u32,
    /// Longest single wait the client accepts (5 min).
    pub max_wait: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            quota_initial: Duration::from_secs(30),
            rate_limit_initial: Duration::from_secs(1),
            max_retries: 3,
            max_wait: Duration::from_secs(300),
        }
    }
}

/// Which kind of refusal is being waited out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitKind {
    /// A quota-style 402.
    Quota,
    /// A 429.
    RateLimit,
}

/// The decision for one refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Sleep this long, then retry.
    Wait(Duration),
    /// Out of retries.
    GiveUp,
    /// The wait needed is longer than `max_wait`.
    TooLong(Duration),
}

impl Backoff {
    /// The wait before retry number `retry` (0-based), given the server's `Retry-After`.
    pub fn delay(&self, kind: WaitKind, retry: u32, retry_after: Option<Duration>) -> Duration {
        let factor = 2u32.saturating_pow(retry.min(30));
        match kind {
            WaitKind::Quota => {
                let exp = self.quota_initial.saturating_mul(factor);
                retry_after.map_or(exp, |ra| ra.max(exp))
            }
            WaitKind::RateLimit => {
                retry_after.unwrap_or_else(|| self.rate_limit_initial.saturating_mul(factor))
            }
        }
    }

    /// What to do after `retries_done` retries have already been spent.
    pub fn step(&self, kind: WaitKind, retries_done: u32, retry_after: Option<Duration>) -> Step {
        if retries_done >= self.max_retries {
            return Step::GiveUp;
        }
        let d = self.delay(kind, retries_done, retry_after);
        if d > self.max_wait {
            Step::TooLong(d)
        } else {
            Step::Wait(d)
        }
    }
}

/// Something that waits (tokio's timer in production, a recorder in tests).
pub trait Sleeper: Send + Sync {
    /// Waits `d`.
    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// Real waiting.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioSleeper;

impl Sleeper for TokioSleeper {
    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(tokio::time::sleep(d))
    }
}

/// Records the waits asked for and returns at once (tests, dry runs).
#[derive(Clone, Debug, Default)]
pub struct RecordingSleeper {
    waits: Arc<Mutex<Vec<Duration>>>,
}

impl RecordingSleeper {
    /// The waits asked for so far.
    pub fn waits(&self) -> Vec<Duration> {
        self.waits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Sleeper for RecordingSleeper {
    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        self.waits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(d);
        Box::pin(std::future::ready(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn quota_schedule_is_30_60_120_then_give_up() {
        let b = Backoff::default();
        let steps: Vec<Step> = (0..4).map(|i| b.step(WaitKind::Quota, i, None)).collect();
        assert_eq!(
            steps,
            vec![
                Step::Wait(S(30)),
                Step::Wait(S(60)),
                Step::Wait(S(120)),
                Step::GiveUp
            ]
        );
    }

    #[test]
    fn retry_after_wins_when_larger_and_caps_apply() {
        let b = Backoff::default();
        assert_eq!(b.step(WaitKind::Quota, 0, Some(S(45))), Step::Wait(S(45)));
        assert_eq!(b.step(WaitKind::Quota, 1, Some(S(5))), Step::Wait(S(60)));
        // A monthly quota resetting in days: not slept, reported.
        assert_eq!(
            b.step(WaitKind::Quota, 0, Some(S(86_400))),
            Step::TooLong(S(86_400))
        );
        assert_eq!(b.step(WaitKind::RateLimit, 0, Some(S(2))), Step::Wait(S(2)));
        assert_eq!(b.step(WaitKind::RateLimit, 2, None), Step::Wait(S(4)));
        assert_eq!(b.step(WaitKind::RateLimit, 3, Some(S(1))), Step::GiveUp);
    }

    proptest! {
        /// Quota waits are never shorter than 30 s nor than Retry-After, and never shrink.
        #[test]
        fn quota_waits_never_immediate(ra in proptest::option::of(0u64..1_000_000), n in 0u32..40) {
            let b = Backoff::default();
            let d = b.delay(WaitKind::Quota, n, ra.map(S));
            prop_assert!(d >= S(30));
            if let Some(ra) = ra { prop_assert!(d >= S(ra)); }
            prop_assert!(b.delay(WaitKind::Quota, n + 1, ra.map(S)) >= d);
        }
    }
}
