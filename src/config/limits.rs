//! Per-subscription delivery limits: `batch = { ... }` and `rate_limit = "100/min"`.
//!
//! Both are parsed by serde into typed values, so a malformed value is a parse error
//! that names the key and its line (like durations); ranges are checked in `validate`.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::Duration;

/// Events per batch when `batch` is given without `max_events`: Svix and most batch
/// receivers handle ~100 comfortably.
pub const DEFAULT_BATCH_MAX_EVENTS: u32 = 100;
/// Body size cap when `batch` is given without `max_bytes`: 1 MiB passes the default
/// body limits of common frameworks (nginx 1m, express 100kb-1mb) without tuning.
pub const DEFAULT_BATCH_MAX_BYTES: ByteSize = ByteSize(1024 * 1024);
/// How long a partial batch waits for more events: long enough to fill a batch under
/// load, short enough that a lone event is not noticeably late.
pub const DEFAULT_BATCH_MAX_WAIT: Duration = Duration::from_secs(1);

/// `batch = { max_events, max_bytes, max_wait }`: several events per request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// At most this many events per request (>= 1).
    pub max_events: u32,
    /// At most this many body bytes per request; a single larger event goes alone.
    pub max_bytes: ByteSize,
    /// How long a partial batch waits for more events once its first event is available.
    pub max_wait: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_events: DEFAULT_BATCH_MAX_EVENTS,
            max_bytes: DEFAULT_BATCH_MAX_BYTES,
            max_wait: DEFAULT_BATCH_MAX_WAIT,
        }
    }
}

/// A size in bytes: an integer, or a string like `"512KB"`, `"1MB"`, `"1MiB"`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The number of bytes.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}B", self.0)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;

    /// `"1000"`, `"1000B"`, `"64KB"` (×1000), `"64KiB"` (×1024), `"1MB"`, `"1MiB"`,
    /// `"1GB"`, `"1GiB"`; units are case-insensitive.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1000,
            "kib" => 1024,
            "mb" => 1000 * 1000,
            "mib" => 1024 * 1024,
            "gb" => 1000 * 1000 * 1000,
            "gib" => 1024 * 1024 * 1024,
            _ => 0,
        };
        let bytes = digits
            .parse::<u64>()
            .ok()
            .filter(|_| factor > 0)
            .and_then(|n| n.checked_mul(factor));
        bytes.map(ByteSize).ok_or_else(|| {
            format!(
                "invalid size {s:?}; write a number of bytes (1048576) or a number with a unit, \
                 like \"512KB\", \"1MB\" or \"1MiB\""
            )
        })
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;

        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of bytes or a size string such as \"1MB\"")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("invalid size {v}; it must not be negative")))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_any(SizeVisitor)
    }
}

/// `rate_limit = "100/min"`: at most `count` requests per `period`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests allowed per period (>= 1).
    pub count: u32,
    /// The period.
    pub period: std::time::Duration,
}

impl RateLimit {
    /// The even spacing of requests that keeps to the limit: `period / count`.
    pub fn interval(self) -> std::time::Duration {
        self.period / self.count.max(1)
    }
}

impl fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.count,
            humantime::format_duration(self.period)
        )
    }
}

impl std::str::FromStr for RateLimit {
    type Err = String;

    /// `"10/s"`, `"100/min"`, `"1000/h"` (also `sec`, `second`, `m`, `minute`, `hour`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "invalid rate limit {s:?}; write requests per period, like \"10/s\", \
                 \"100/min\" or \"1000/h\", with at least 1 request"
            )
        };
        let (count, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = count
            .trim()
            .parse()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(bad)?;
        let secs = match unit.trim().to_ascii_lowercase().as_str() {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3600,
            _ => return Err(bad()),
        };
        Ok(RateLimit {
            count,
            period: std::time::Duration::from_secs(secs),
        })
    }
}

impl<'de> Deserialize<'de> for RateLimit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        for (text, bytes) in [
            ("0", 0),
            ("1000", 1000),
            ("10B", 10),
            ("64KB", 64_000),
            ("64kib", 65_536),
            ("1MB", 1_000_000),
            (" 1 MiB ", 1_048_576),
            ("2GB", 2_000_000_000),
            ("1GiB", 1_073_741_824),
        ] {
            assert_eq!(text.parse::<ByteSize>().unwrap().get(), bytes, "{text}");
        }
        for bad in ["", "MB", "1.5MB", "1TB", "-1", "99999999999999999999GB"] {
            let err = bad.parse::<ByteSize>().unwrap_err();
            assert!(err.contains("\"1MB\""), "{err}");
        }
    }

    #[test]
    fn rate_limits() {
        let rl: RateLimit = "100/min".parse().unwrap();
        assert_eq!(rl.count, 100);
        assert_eq!(rl.interval(), std::time::Duration::from_millis(600));
        let rl: RateLimit = " 10 / s ".parse().unwrap();
        assert_eq!(rl.interval(), std::time::Duration::from_millis(100));
        let rl: RateLimit = "3600/h".parse().unwrap();
        assert_eq!(rl.interval(), std::time::Duration::from_secs(1));
        for bad in [
            "100", "0/min", "-1/s", "ten/s", "5/day", "5/", "/s", "1.5/s",
        ] {
            let err = bad.parse::<RateLimit>().unwrap_err();
            assert!(err.contains("\"100/min\""), "{bad}: {err}");
        }
    }
}
