//! The journey-action retry loop every executor shares: one time window for
//! the whole action, at most `max_retries` retries inside it, jittered
//! backoff that honours `Retry-After`, and the last failure as the result.

use super::ActionResult;
use crate::retry::{classify, retry_after, Backoff, Verdict};
use std::future::Future;
use std::time::{Duration, Instant};

/// How one attempt ended.
pub(super) enum Attempt {
    /// It happened, with this outcome code.
    Done(String),
    /// It failed in a way another attempt may fix.
    Retry {
        /// The outcome code (`http_503`, `timedout`, `smtp_451`, ...).
        outcome: String,
        /// What went wrong.
        reason: String,
        /// How long the peer asked to wait.
        retry_after: Option<Duration>,
    },
    /// It failed for good.
    Fail {
        /// The outcome code.
        outcome: String,
        /// What went wrong.
        reason: String,
    },
}

/// Runs `attempt` (given the time left in the window) until it is done,
/// fails for good, runs out of retries, or the window closes.
pub(super) async fn within_window<F, Fut>(
    window: Duration,
    max_retries: u32,
    what: &str,
    mut attempt: F,
) -> ActionResult
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Attempt>,
{
    let deadline = Instant::now() + window;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let mut last = ActionResult::Failed {
        outcome: "timedout".into(),
        reason: "no attempt fit the window".into(),
    };
    for n in 0..=max_retries {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let retry_after = match attempt(left).await {
            Attempt::Done(outcome) => return ActionResult::Done(outcome),
            Attempt::Fail { outcome, reason } => return ActionResult::Failed { outcome, reason },
            Attempt::Retry {
                outcome,
                reason,
                retry_after,
            } => {
                last = ActionResult::Failed { outcome, reason };
                retry_after
            }
        };
        if n == max_retries {
            break;
        }
        let wait = backoff.next(retry_after);
        if Instant::now() + wait >= deadline {
            break;
        }
        tracing::debug!(
            target_name = what,
            attempt = n,
            "action attempt failed; retrying"
        );
        tokio::time::sleep(wait).await;
    }
    last
}

/// An HTTP answer (or transport failure) as an attempt, by the one
/// classifier ([`crate::retry::classify`]): 2xx done, transient statuses and
/// transport failures retried, every other status final (journey actions
/// never retry 401, 403 or 404).
pub(super) async fn http_attempt(
    url: &reqwest::Url,
    sent: reqwest::Result<reqwest::Response>,
) -> Attempt {
    match sent {
        Ok(response) => {
            let status = response.status().as_u16();
            let verdict = classify(status);
            if verdict == Verdict::Success {
                return Attempt::Done(format!("http_{status}"));
            }
            let retry_after = retry_after(response.headers());
            let text = response.text().await.unwrap_or_default();
            let outcome = format!("http_{status}");
            let reason = format!(
                "{url} answered {status}: {}",
                text.chars().take(500).collect::<String>()
            );
            if verdict == Verdict::Retry {
                Attempt::Retry {
                    outcome,
                    reason,
                    retry_after,
                }
            } else {
                Attempt::Fail { outcome, reason }
            }
        }
        Err(e) => Attempt::Retry {
            outcome: if e.is_timeout() { "timedout" } else { "error" }.into(),
            reason: format!("{url}: {e}"),
            retry_after: None,
        },
    }
}
