//! Human-friendly durations in the config file (`"500ms"`, `"10s"`, `"5m"`, `"1h"`, `"7d"`).
//!
//! Durations are always written as strings so that the unit is explicit; a bare
//! number would leave readers guessing between seconds and milliseconds.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A duration read from the config, such as `"10s"` or `"7d"`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(std::time::Duration);

impl Duration {
    /// A duration of `secs` seconds (for defaults and tests).
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    /// A duration of `millis` milliseconds (for defaults and tests).
    pub const fn from_millis(millis: u64) -> Self {
        Self(std::time::Duration::from_millis(millis))
    }

    /// The standard-library duration.
    pub const fn get(self) -> std::time::Duration {
        self.0
    }

    /// Whether the duration is zero (used by validation of timeouts and intervals).
    pub const fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Self(d)
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl std::str::FromStr for Duration {
    type Err = String;

    /// Parses `"500ms"`, `"10s"`, `"5m"`, `"1h"`, `"7d"`; the error names the bad value.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s.trim())
            .map(Self)
            .map_err(|err| {
                format!(
                    "invalid duration {s:?} ({err}); write a number with a unit, \
                 like \"500ms\", \"10s\", \"5m\", \"1h\" or \"7d\""
                )
            })
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = Duration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a duration string such as \"500ms\", \"10s\", \"5m\", \"1h\" or \"7d\"",
                )
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                v.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_str(DurationVisitor)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_units() {
        for (text, secs) in [("10s", 10), ("5m", 300), ("1h", 3600), ("7d", 7 * 86400)] {
            assert_eq!(
                text.parse::<Duration>().unwrap().get().as_secs(),
                secs,
                "{text}"
            );
        }
        assert_eq!("500ms".parse::<Duration>().unwrap().get().as_millis(), 500);
    }

    #[test]
    fn error_names_the_value() {
        let err = "10 parsecs".parse::<Duration>().unwrap_err();
        assert!(err.contains("\"10 parsecs\""), "{err}");
        assert!(err.contains("\"10s\""), "{err}");
    }
}
