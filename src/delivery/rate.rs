//! `rate_limit = "N/period"`: requests of one subscription are spaced at
//! least `period / N` apart.
//!
//! This is GCRA with a burst of one (equivalently, a token bucket of
//! capacity one refilled every `period / N`): the next request may go at
//! `max(now, previous slot + interval)`. Even spacing keeps every window of
//! length `period` at or below N requests, whatever its alignment, and never
//! releases a pent-up burst after an idle spell or an outage. A batch is one
//! request; retries are requests too. Waiting here is not a failure: the
//! attempt simply goes later.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::RateLimit;

/// One subscription's limiter.
#[derive(Debug, Clone)]
pub(crate) struct RateLimiter {
    interval: Duration,
    /// The earliest moment the next request may go.
    next_free: Option<Instant>,
}

impl RateLimiter {
    /// A limiter for `limit`.
    pub(crate) fn new(limit: RateLimit) -> RateLimiter {
        RateLimiter {
            interval: limit.interval(),
            next_free: None,
        }
    }

    /// Takes the next slot at or after `now`; returns how long to wait for it.
    pub(crate) fn reserve(&mut self, now: Instant) -> Duration {
        let at = self.next_free.map_or(now, |free| free.max(now));
        self.next_free = Some(at + self.interval);
        at - now
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn limiter(text: &str) -> RateLimiter {
        RateLimiter::new(text.parse().unwrap())
    }

    async fn acquire(limiter: &mut RateLimiter) {
        let wait = limiter.reserve(Instant::now());
        tokio::time::sleep(wait).await;
    }

    #[tokio::test(start_paused = true)]
    async fn requests_are_spaced_by_the_interval() {
        let mut rl = limiter("600/min");
        let start = Instant::now();
        let mut at = Vec::new();
        for _ in 0..5 {
            acquire(&mut rl).await;
            at.push(start.elapsed());
        }
        let ms: Vec<u128> = at.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [0, 100, 200, 300, 400]);
    }

    #[tokio::test(start_paused = true)]
    async fn no_burst_builds_up_while_idle() {
        let mut rl = limiter("2/s");
        acquire(&mut rl).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let start = Instant::now();
        acquire(&mut rl).await;
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "an idle limiter lets one go at once"
        );
        acquire(&mut rl).await;
        assert_eq!(start.elapsed(), Duration::from_millis(500), "but only one");
    }

    #[tokio::test(start_paused = true)]
    async fn slow_requests_are_not_delayed_further() {
        let mut rl = limiter("10/s");
        acquire(&mut rl).await;
        // The request itself took longer than the interval.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(rl.reserve(Instant::now()), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_n_per_period_in_any_window() {
        let mut rl = limiter("100/min");
        let start = Instant::now();
        let mut count_in_first_minute = 0;
        loop {
            acquire(&mut rl).await;
            if start.elapsed() >= Duration::from_secs(60) {
                break;
            }
            count_in_first_minute += 1;
        }
        assert_eq!(count_in_first_minute, 100);
    }
}
