//! The one retry policy for HTTP peers — AEP, webhooks, CRMs, token
//! endpoints: how to read a status, and how long to wait before the next
//! attempt. Each peer decides what a verdict means for it (AEP splits a
//! batch on bad content; a journey action fails), never which statuses are
//! worth another try.

use rand::Rng as _;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use std::time::Duration;

/// What an HTTP status says about the request that got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: done.
    Success,
    /// 408, 429, 5xx but 501: transient; wait (honouring `Retry-After`)
    /// and resend.
    Retry,
    /// 401, 403: the credential was refused. Worth one more try with a
    /// renewed token, never more: a revoked or wrong credential does not
    /// heal by waiting.
    Unauthorized,
    /// 400, 413: the request's content was refused. A batch is split to
    /// find the offending message; a single message is refused for good.
    BadContent,
    /// Any other status (404, 410, 422, 501, ...): refused for good.
    Reject,
}

/// Classifies an HTTP status code.
pub fn classify(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Success,
        // 501: the server does not implement the request (AEP: no
        // syncValidation in this region); waiting will not change that.
        501 => Verdict::Reject,
        408 | 429 | 500..=599 => Verdict::Retry,
        401 | 403 => Verdict::Unauthorized,
        400 | 413 => Verdict::BadContent,
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
    fn statuses_are_classified_as_aep_and_journey_actions_document_them() {
        assert_eq!(classify(207), Verdict::Success);
        assert_eq!(classify(400), Verdict::BadContent);
        assert_eq!(classify(413), Verdict::BadContent);
        for s in [408, 429, 500, 503] {
            assert_eq!(classify(s), Verdict::Retry, "{s}");
        }
        assert_eq!(classify(401), Verdict::Unauthorized);
        assert_eq!(classify(403), Verdict::Unauthorized);
        assert_eq!(classify(404), Verdict::Reject);
        assert_eq!(classify(501), Verdict::Reject);
        assert_eq!(classify(302), Verdict::Reject);
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
