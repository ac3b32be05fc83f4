//! Secrets (passwords, tokens, signing keys) that must never reach logs or error messages.
//!
//! `Secret` is a newtype whose `Debug` and `Display` print `***`; the only way to the
//! value is [`Secret::expose`], which makes every use greppable.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};

/// A secret string; prints as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value (for tests and programmatic configs).
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value; call only where it is sent or used for signing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SecretVisitor;

        impl Visitor<'_> for SecretVisitor {
            type Value = Secret;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_owned()))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Secret, E> {
                Ok(Secret(v))
            }
        }

        deserializer.deserialize_string(SecretVisitor)
    }
}

/// One secret or several (during key rotation every one of them is used to sign).
///
/// In TOML: `secret = "..."` or `secret = ["new", "old"]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretList(Vec<Secret>);

impl SecretList {
    /// A list from secrets (for tests and programmatic configs).
    pub fn new(secrets: Vec<Secret>) -> Self {
        Self(secrets)
    }

    /// The secrets, newest first as written.
    pub fn secrets(&self) -> &[Secret] {
        &self.0
    }
}

impl<'de> Deserialize<'de> for SecretList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;

        impl<'de> Visitor<'de> for ListVisitor {
            type Value = SecretList;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a secret string or a list of secret strings")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<SecretList, E> {
                Ok(SecretList(vec![Secret(v.to_owned())]))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SecretList, A::Error> {
                let mut secrets = Vec::new();
                while let Some(secret) = seq.next_element::<Secret>()? {
                    secrets.push(secret);
                }
                Ok(SecretList(secrets))
            }
        }

        deserializer.deserialize_any(ListVisitor)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        assert_eq!(s.expose(), "hunter2");
        let list = SecretList::new(vec![s.clone(), Secret::new("b")]);
        assert!(!format!("{list:?}").contains("hunter2"));
    }
}
