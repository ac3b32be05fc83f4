//! An independent Standard Webhooks verifier, written from the specification
//! (<https://www.standardwebhooks.com/>) without walhook's signing code, as a receiver
//! would use it:
//!
//! - the secret is `whsec_<base64>` (the key is the decoded bytes) or raw text;
//! - the signed content is `{webhook-id}.{webhook-timestamp}.{body}`, the raw body bytes;
//! - `webhook-signature` is a space-separated list of `v<n>,<base64>`; only `v1`
//!   (HMAC-SHA256) is understood, and one matching signature is enough;
//! - `webhook-timestamp` must be within [`TOLERANCE`] of the receiver's clock, in
//!   either direction, so a captured request cannot be replayed later.
//!
//! Signatures are compared in constant time (`Mac::verify_slice`).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far `webhook-timestamp` may be from now: the reference libraries' five minutes.
pub const TOLERANCE_SECS: u64 = 5 * 60;

/// Why a request does not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    /// A `webhook-*` header is missing.
    MissingHeader(&'static str),
    /// `webhook-timestamp` is not a number of seconds.
    BadTimestamp,
    /// The timestamp is more than the tolerance in the past.
    TooOld,
    /// The timestamp is more than the tolerance in the future.
    TooNew,
    /// No `v1` signature in the header matches.
    NoMatchingSignature,
}

/// Verifies requests signed with one secret.
pub struct Verifier {
    key: Vec<u8>,
}

impl Verifier {
    /// A verifier for `secret` (`whsec_<base64>` or raw text); panics on bad base64.
    pub fn new(secret: &str) -> Verifier {
        let key = match secret.strip_prefix("whsec_") {
            Some(encoded) => BASE64
                .decode(encoded)
                .unwrap_or_else(|err| panic!("whsec_ secret is not base64: {err}")),
            None => secret.as_bytes().to_vec(),
        };
        Verifier { key }
    }

    /// Checks one request as received at unix time `now`.
    pub fn verify(
        &self,
        id: Option<&str>,
        timestamp: Option<&str>,
        signatures: Option<&str>,
        body: &[u8],
        now: u64,
    ) -> Result<(), Rejected> {
        let id = id.ok_or(Rejected::MissingHeader("webhook-id"))?;
        let timestamp = timestamp.ok_or(Rejected::MissingHeader("webhook-timestamp"))?;
        let signatures = signatures.ok_or(Rejected::MissingHeader("webhook-signature"))?;
        let ts: u64 = timestamp.parse().map_err(|_| Rejected::BadTimestamp)?;
        if now > ts + TOLERANCE_SECS {
            return Err(Rejected::TooOld);
        }
        if ts > now + TOLERANCE_SECS {
            return Err(Rejected::TooNew);
        }
        for candidate in signatures.split(' ') {
            if self.verify_one(candidate, id, timestamp, body) {
                return Ok(());
            }
        }
        Err(Rejected::NoMatchingSignature)
    }

    /// Whether one `v1,<base64>` signature matches.
    pub fn verify_one(&self, signature: &str, id: &str, timestamp: &str, body: &[u8]) -> bool {
        let Some(encoded) = signature.strip_prefix("v1,") else {
            return false;
        };
        let Ok(expected) = BASE64.decode(encoded) else {
            return false;
        };
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC accepts any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.verify_slice(&expected).is_ok()
    }

    /// Checks a request recorded by the test receiver at unix time `now`.
    pub fn verify_request(
        &self,
        request: &super::receiver::Request,
        now: u64,
    ) -> Result<(), Rejected> {
        self.verify(
            request.header("webhook-id"),
            request.header("webhook-timestamp"),
            request.header("webhook-signature"),
            &request.body,
            now,
        )
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}
