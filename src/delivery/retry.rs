//! Retry policy: the one place that decides what an attempt's outcome means.
//!
//! DESIGN.md "Request headers": 2xx is delivered; 410 Gone disables the
//! subscription; every other status (3xx included: redirects are not
//! followed), timeouts and connection errors are retried with exponential
//! backoff until `retry.max_attempts`, then the event becomes a dead letter.
//! A body that cannot be rendered and a destination the egress policy refuses
//! (`delivery.deny_private_networks`) are dead letters at once: sending again
//! cannot succeed until the config changes.
//! 429 and 503 honour `Retry-After` (delta-seconds or an HTTP date): the next
//! attempt comes no earlier than the receiver asked, and no earlier than the
//! backoff schedule either, so an overloaded receiver still sees the delays
//! grow. Everything here is pure: time and randomness are passed in.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;

use crate::config::RetryConfig;

/// Relative jitter applied to every backoff delay (±20%), so that many
/// subscriptions failing together do not retry in lockstep.
const JITTER: f64 = 0.2;

/// Upper bound on a `Retry-After` we honour: a bogus far-future date must not
/// park a subscription for good, and no rate-limit window is longer than a day.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// What happened to one attempt, as far as the policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// The receiver answered with this status.
    Status {
        /// HTTP status code.
        code: u16,
        /// The raw `Retry-After` header, if any.
        retry_after: Option<&'a str>,
    },
    /// The request did not complete within the subscription's timeout.
    Timeout,
    /// Connection refused/reset, DNS, TLS or protocol error.
    Transport,
    /// The body could not be rendered; sending again cannot help.
    Unrenderable,
    /// The egress policy refused the destination; sending again cannot help.
    Blocked,
}

/// What the worker does next with the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Advance the cursor past the event.
    Delivered,
    /// Disable the subscription (410 Gone); the event stays in the log.
    Disable,
    /// Try again after this delay.
    Retry(Duration),
    /// Give up on the event: store it as a dead letter and move on.
    DeadLetter,
}

/// Classifies an attempt. `attempt` is the 1-based number of the attempt that
/// produced `outcome` (the failed attempts of this event so far, this one included).
pub fn decide(
    outcome: Outcome<'_>,
    attempt: u32,
    retry: &RetryConfig,
    now: SystemTime,
    rng: &mut impl Rng,
) -> Decision {
    let asked = match outcome {
        Outcome::Status {
            code: 200..=299, ..
        } => return Decision::Delivered,
        Outcome::Status { code: 410, .. } => return Decision::Disable,
        Outcome::Status {
            code: 429 | 503,
            retry_after,
        } => retry_after.and_then(|value| parse_retry_after(value, now)),
        // 1xx/3xx/4xx/5xx, timeouts and connection errors are all retried:
        // a receiver's 400 is often a passing misconfiguration (Svix, 简道云).
        Outcome::Status { .. } | Outcome::Timeout | Outcome::Transport => None,
        Outcome::Unrenderable | Outcome::Blocked => return Decision::DeadLetter,
    };
    if attempt >= retry.max_attempts {
        return Decision::DeadLetter;
    }
    let delay = backoff(attempt, retry.initial.get(), retry.max.get(), rng);
    Decision::Retry(asked.map_or(delay, |asked| asked.min(MAX_RETRY_AFTER).max(delay)))
}

/// Delay after the `attempt`-th failure: `initial * 2^(attempt-1)`, capped at
/// `max`, then ±20% jitter, never above `max`.
pub fn backoff(attempt: u32, initial: Duration, max: Duration, rng: &mut impl Rng) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
    let base = initial.saturating_mul(factor).min(max);
    let jitter = rng.random_range((1.0 - JITTER)..=(1.0 + JITTER));
    Duration::try_from_secs_f64(base.as_secs_f64() * jitter)
        .unwrap_or(max)
        .min(max)
}

/// Parses `Retry-After`: delta-seconds or an HTTP date (IMF-fixdate, RFC 850
/// or asctime, as RFC 9110 requires recipients to accept). A date in the
/// past means "now". Unparseable values are ignored (None).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly many digits still mean "a long time", not "ignore".
        return Some(
            value
                .parse::<u64>()
                .map_or(MAX_RETRY_AFTER, Duration::from_secs),
        );
    }
    let at = parse_http_date(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Parses the three HTTP date formats of RFC 9110 §5.6.7 (always GMT).
fn parse_http_date(value: &str) -> Option<SystemTime> {
    let tokens: Vec<&str> = value.split([' ', ',']).filter(|t| !t.is_empty()).collect();
    let (day, month, year, time) = match tokens.as_slice() {
        // IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
        [_, day, month, year, time, "GMT"] => (*day, *month, parse_year(year)?, *time),
        // RFC 850: Sunday, 06-Nov-94 08:49:37 GMT
        [_, date, time, "GMT"] => {
            let mut parts = date.split('-');
            let (day, month, year) = (parts.next()?, parts.next()?, parts.next()?);
            if parts.next().is_some() {
                return None;
            }
            (day, month, parse_year(year)?, *time)
        }
        // asctime: Sun Nov  6 08:49:37 1994
        [_, month, day, time, year] => (*day, *month, parse_year(year)?, *time),
        _ => return None,
    };
    let day: u32 = day.parse().ok().filter(|d| (1..=31).contains(d))?;
    let month = month_number(month)?;
    let mut hms = time.split(':').map(|p| p.parse::<u32>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if hms.next().is_some() || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + i64::from(h) * 3600 + i64::from(m) * 60 + i64::from(s);
    Some(u64::try_from(secs).map_or(UNIX_EPOCH, |secs| UNIX_EPOCH + Duration::from_secs(secs)))
}

fn parse_year(text: &str) -> Option<i64> {
    let year: i64 = text.parse().ok()?;
    match text.len() {
        // RFC 850's two-digit years: RFC 9110 says to read them as the most
        // recent past year with those digits; 70..99 → 19xx is close enough.
        2 if year >= 70 => Some(1900 + year),
        2 => Some(2000 + year),
        4 => Some(year),
        _ => None,
    }
}

fn month_number(name: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let index = MONTHS.iter().position(|m| *m == name)?;
    u32::try_from(index + 1).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    fn policy(max_attempts: u32) -> RetryConfig {
        serde_json::from_value(serde_json::json!({
            "max_attempts": max_attempts, "initial": "1s", "max": "1h"
        }))
        .unwrap()
    }

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    #[test]
    fn backoff_doubles_within_jitter_bounds() {
        let mut rng = rng();
        let initial = Duration::from_secs(1);
        let max = Duration::from_secs(3600);
        for attempt in 1..=10u32 {
            let base = 2f64.powi(i32::try_from(attempt).unwrap() - 1);
            for _ in 0..200 {
                let d = backoff(attempt, initial, max, &mut rng).as_secs_f64();
                assert!(
                    d >= base * 0.8 - 1e-9 && d <= base * 1.2 + 1e-9,
                    "attempt {attempt}: {d}"
                );
            }
        }
    }

    #[test]
    fn backoff_is_capped_at_max() {
        let mut rng = rng();
        let initial = Duration::from_millis(10);
        let max = Duration::from_millis(100);
        for attempt in [5u32, 8, 30, 64, u32::MAX] {
            for _ in 0..200 {
                let d = backoff(attempt, initial, max, &mut rng);
                assert!(d <= max, "{d:?}");
                assert!(d >= max.mul_f64(0.8), "{d:?}");
            }
        }
        // A huge cap must not overflow.
        let d = backoff(u32::MAX, Duration::from_secs(1), Duration::MAX, &mut rng);
        assert!(d > Duration::from_secs(1));
    }

    #[test]
    fn backoff_jitter_varies() {
        let mut rng = rng();
        let one = Duration::from_secs(1);
        let samples: std::collections::BTreeSet<Duration> = (0..50)
            .map(|_| backoff(1, one, Duration::from_secs(60), &mut rng))
            .collect();
        assert!(samples.len() > 10);
    }

    #[test]
    fn classification_table() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let retry = policy(5);
        let status = |code| Outcome::Status {
            code,
            retry_after: None,
        };
        let class = |outcome, attempt| match decide(outcome, attempt, &retry, now, &mut rng()) {
            Decision::Retry(_) => "retry",
            Decision::Delivered => "delivered",
            Decision::Disable => "disable",
            Decision::DeadLetter => "dead",
        };
        let table: &[(Outcome<'_>, u32, &str)] = &[
            (status(200), 1, "delivered"),
            (status(201), 3, "delivered"),
            (status(204), 5, "delivered"),
            (status(299), 9, "delivered"),
            (status(410), 1, "disable"),
            (status(410), 5, "disable"),
            (status(301), 1, "retry"),
            (status(302), 1, "retry"),
            (status(308), 1, "retry"),
            (status(400), 1, "retry"),
            (status(401), 1, "retry"),
            (status(404), 4, "retry"),
            (status(404), 5, "dead"),
            (status(429), 1, "retry"),
            (status(500), 1, "retry"),
            (status(503), 4, "retry"),
            (status(503), 5, "dead"),
            (status(100), 1, "retry"),
            (Outcome::Timeout, 1, "retry"),
            (Outcome::Timeout, 5, "dead"),
            (Outcome::Transport, 2, "retry"),
            (Outcome::Transport, 6, "dead"),
            (Outcome::Unrenderable, 1, "dead"),
            (Outcome::Blocked, 1, "dead"),
        ];
        for (outcome, attempt, want) in table {
            assert_eq!(
                class(*outcome, *attempt),
                *want,
                "{outcome:?} attempt {attempt}"
            );
        }
    }

    #[test]
    fn max_attempts_one_dead_letters_at_once() {
        let d = decide(
            Outcome::Status {
                code: 500,
                retry_after: None,
            },
            1,
            &policy(1),
            UNIX_EPOCH,
            &mut rng(),
        );
        assert_eq!(d, Decision::DeadLetter);
    }

    #[test]
    fn retry_after_is_honoured_on_429_and_503_only() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let retry = policy(5);
        for code in [429, 503] {
            let d = decide(
                Outcome::Status {
                    code,
                    retry_after: Some("120"),
                },
                1,
                &retry,
                now,
                &mut rng(),
            );
            assert_eq!(d, Decision::Retry(Duration::from_secs(120)));
        }
        let d = decide(
            Outcome::Status {
                code: 500,
                retry_after: Some("120"),
            },
            1,
            &retry,
            now,
            &mut rng(),
        );
        match d {
            Decision::Retry(delay) => assert!(delay <= Duration::from_millis(1200)),
            other => panic!("{other:?}"),
        }
        // Never earlier than the backoff schedule.
        let d = decide(
            Outcome::Status {
                code: 429,
                retry_after: Some("0"),
            },
            1,
            &retry,
            now,
            &mut rng(),
        );
        match d {
            Decision::Retry(delay) => assert!(delay >= Duration::from_millis(800)),
            other => panic!("{other:?}"),
        }
        // Capped.
        let d = decide(
            Outcome::Status {
                code: 429,
                retry_after: Some("99999999"),
            },
            1,
            &retry,
            now,
            &mut rng(),
        );
        assert_eq!(d, Decision::Retry(MAX_RETRY_AFTER));
    }

    #[test]
    fn retry_after_seconds() {
        let now = SystemTime::now();
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after(" 30 ", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("1.5", now), None);
        assert_eq!(parse_retry_after("", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn retry_after_http_dates() {
        // 1994-11-06T08:49:37Z
        let date = UNIX_EPOCH + Duration::from_secs(784_111_777);
        let now = date - Duration::from_secs(90);
        for text in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(
                parse_retry_after(text, now),
                Some(Duration::from_secs(90)),
                "{text}"
            );
        }
        // In the past: retry now.
        let later = date + Duration::from_secs(10);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", later),
            Some(Duration::ZERO)
        );
        // A leap day and a date after 2038.
        let leap = UNIX_EPOCH + Duration::from_secs(4_107_456_000); // 2100-02-28T00:00:00Z
        assert_eq!(
            parse_retry_after("Mon, 01 Mar 2100 00:00:00 GMT", leap),
            Some(Duration::from_secs(86_400))
        );
        let leap2024 = UNIX_EPOCH + Duration::from_secs(1_709_164_800); // 2024-02-29T00:00:00Z
        assert_eq!(
            parse_retry_after("Fri, 01 Mar 2024 00:00:00 GMT", leap2024),
            Some(Duration::from_secs(86_400))
        );
        for bad in [
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:49:37 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
            "Sun, 06 Nov 1994 08:49:37 CET",
            "Sunday, 06-Nov-94-1 08:49:37 GMT",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad}");
        }
    }
}
