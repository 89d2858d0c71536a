//! The one retry policy for HTTP peers: how to read a status, and how long
//! to wait before the next attempt.

use rand::Rng as _;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use std::time::Duration;

/// What to do with an HTTP answer for a whole request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Done; read the body.
    Success,
    /// The request as a whole was refused for its content (400, 413): split
    /// it to isolate the offending message, or reject a single one.
    Split,
    /// Transient (429, 5xx, 408, auth that may be renewed): wait and resend.
    Retry,
    /// Refused for good (other 4xx).
    Reject,
}

/// Classifies an AEP streaming ingestion status code.
pub fn classify(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Success,
        400 | 413 => Verdict::Split,
        401 | 403 | 408 | 429 | 500..=599 => Verdict::Retry,
        _ => Verdict::Reject,
    }
}

/// `Retry-After` in seconds (the HTTP-date form is rare from AEP and read
/// as absent).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Exponential backoff with full jitter, capped; a server's `Retry-After`
/// overrides it when longer.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `base`, doubling each attempt, never above `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The next wait: a random duration up to the current step, or the
    /// server's `Retry-After` when that is longer.
    pub fn next(&mut self, retry_after: Option<Duration>) -> Duration {
        let step = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.cap);
        self.attempt += 1;
        let jittered = rand::rng().random_range(step / 2..=step);
        match retry_after {
            Some(server) if server > jittered => server,
            _ => jittered,
        }
    }

    /// Attempts made so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_as_aep_documents_them() {
        assert_eq!(classify(207), Verdict::Success);
        assert_eq!(classify(400), Verdict::Split);
        assert_eq!(classify(413), Verdict::Split);
        for s in [401, 403, 429, 500, 503] {
            assert_eq!(classify(s), Verdict::Retry, "{s}");
        }
        assert_eq!(classify(404), Verdict::Reject);
    }

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        assert!(b.next(None) <= Duration::from_millis(100));
        assert!(b.next(None) <= Duration::from_millis(200));
        for _ in 0..10 {
            assert!(b.next(None) <= Duration::from_secs(1));
        }
        assert_eq!(b.next(Some(Duration::from_secs(5))), Duration::from_secs(5));
    }
}
