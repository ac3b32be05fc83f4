//! Standard Webhooks signing: a pure function of (secret, id, timestamp, body).
//!
//! The signature is `v1,<base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))>`
//! (<https://www.standardwebhooks.com/>). A secret written as `whsec_<base64>`
//! is base64-decoded to get the key, exactly as the Standard Webhooks and Svix
//! libraries do, so receivers built on them verify with the same string; any
//! other secret is used as raw UTF-8 bytes. With several secrets (rotation) the
//! header carries one space-separated signature per secret, and a receiver
//! accepts the request if any of them verifies.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix marking a base64-encoded Standard Webhooks secret.
const WHSEC_PREFIX: &str = "whsec_";

/// A secret that cannot be turned into an HMAC key.
#[derive(Debug, thiserror::Error)]
#[error("a secret starting with whsec_ must be followed by valid base64; use the secret exactly as the receiver shows it")]
pub struct InvalidSecret(#[source] base64::DecodeError);

/// An HMAC key decoded from a configured secret; its `Debug` prints `***`.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl SigningKey {
    /// Decodes `whsec_<base64>` secrets; other secrets are used as raw bytes.
    pub fn from_secret(secret: &str) -> Result<Self, InvalidSecret> {
        match secret.strip_prefix(WHSEC_PREFIX) {
            Some(encoded) => BASE64
                .decode(encoded)
                .map(SigningKey)
                .map_err(InvalidSecret),
            None => Ok(SigningKey(secret.as_bytes().to_vec())),
        }
    }

    /// `v1,<base64>` over `"{id}.{timestamp}.{body}"`.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        // new_from_slice accepts any key length for HMAC, so this never fails;
        // the fallback keeps the function total without a panic path.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.0) else {
            return String::from("v1,");
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The `webhook-signature` header value: one signature per key, space-separated.
///
/// The Standard Webhooks specification's published test vector:
/// ```
/// use walhook::delivery::{signature_header, SigningKey};
/// let key = SigningKey::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
/// let header = signature_header(&[key], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
/// assert_eq!(header, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
/// ```
pub fn signature_header(keys: &[SigningKey], id: &str, timestamp: u64, body: &[u8]) -> String {
    keys.iter()
        .map(|key| key.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const VECTOR_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const VECTOR_TS: u64 = 1_614_265_330;
    const VECTOR_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const VECTOR_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn reproduces_the_standard_webhooks_vector() {
        let key = SigningKey::from_secret(VECTOR_SECRET).unwrap();
        assert_eq!(key.sign(VECTOR_ID, VECTOR_TS, VECTOR_BODY), VECTOR_SIG);
        assert_eq!(
            signature_header(&[key], VECTOR_ID, VECTOR_TS, VECTOR_BODY),
            VECTOR_SIG
        );
    }

    #[test]
    fn two_secrets_give_two_signatures() {
        let keys = [
            SigningKey::from_secret(VECTOR_SECRET).unwrap(),
            SigningKey::from_secret("plain-text-secret").unwrap(),
        ];
        let header = signature_header(&keys, VECTOR_ID, VECTOR_TS, VECTOR_BODY);
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], VECTOR_SIG);
        assert!(parts[1].starts_with("v1,"));
        assert_ne!(parts[1], VECTOR_SIG);
    }

    #[test]
    fn unprefixed_secret_is_raw_bytes() {
        let raw = SigningKey::from_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_ne!(raw.sign(VECTOR_ID, VECTOR_TS, VECTOR_BODY), VECTOR_SIG);
    }

    #[test]
    fn bad_base64_after_prefix_is_an_error() {
        assert!(SigningKey::from_secret("whsec_not base64!").is_err());
    }

    #[test]
    fn debug_hides_the_key() {
        let key = SigningKey::from_secret(VECTOR_SECRET).unwrap();
        assert_eq!(format!("{key:?}"), "***");
    }
}
