//! `disable_after = N`: counts consecutive failed attempts of a subscription.
//!
//! Every failed attempt counts (each retry, across events: a dead letter does
//! not reset the count, only a delivered request does), so a subscription
//! whose endpoint has been failing for N attempts in a row is disabled even
//! when `retry.max_attempts` keeps dead-lettering events in between (as
//! 简道云 disables a push after 100 consecutive failures). The count lives in
//! the worker, so a restart or a reload starts it again.

/// Consecutive failed attempts against a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FailureStreak {
    limit: Option<u32>,
    count: u32,
}

impl FailureStreak {
    /// A streak of zero; `limit = None` never trips.
    pub(crate) fn new(limit: Option<u32>) -> FailureStreak {
        FailureStreak { limit, count: 0 }
    }

    /// Counts one failed attempt; true when the limit is reached.
    pub(crate) fn failed(&mut self) -> bool {
        self.count = self.count.saturating_add(1);
        self.limit.is_some_and(|limit| self.count >= limit)
    }

    /// A delivered request ends the streak.
    pub(crate) fn succeeded(&mut self) {
        self.count = 0;
    }

    /// Failed attempts in a row so far.
    pub(crate) fn count(&self) -> u32 {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_at_the_limit_and_resets_on_success() {
        let mut streak = FailureStreak::new(Some(3));
        assert!(!streak.failed());
        assert!(!streak.failed());
        streak.succeeded();
        assert!(!streak.failed());
        assert!(!streak.failed());
        assert!(streak.failed(), "third in a row");
        assert_eq!(streak.count(), 3);
    }

    #[test]
    fn off_by_default() {
        let mut streak = FailureStreak::new(None);
        for _ in 0..10_000 {
            assert!(!streak.failed());
        }
    }

    #[test]
    fn a_limit_of_one_trips_at_the_first_failure() {
        let mut streak = FailureStreak::new(Some(1));
        assert!(streak.failed());
    }
}
