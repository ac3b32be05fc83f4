//! `auth = { type = "...", ... }`: how a subscription's requests are authenticated.
//!
//! The types here are the config as written; `delivery::auth` turns them into
//! headers, query parameters and tokens. Every secret is a [`Secret`], so the
//! derived `Debug` prints `***` for it; the non-secret parts (user names, client
//! ids, issuers, header names) stay visible because they help debugging.
//!
//! Validation ([`validate_auth`]) names the field (`subscriptions[0].auth.token_url`)
//! and, for `jwt` with RS256, reads and parses the private key file, so a bad key
//! stops walhook at startup (exit 2) instead of failing every delivery.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use super::{deserialize_url, ConfigError, Duration, Secret, SecretList};

/// Lifetime of a minted JWT when `ttl` is absent: long enough for clock skew
/// and one slow request, short enough that a leaked token is soon useless.
pub const DEFAULT_JWT_TTL: Duration = Duration::from_secs(5 * 60);

/// Claims walhook sets itself; `claims` may not override them.
pub const JWT_RESERVED_CLAIMS: [&str; 6] = ["iss", "aud", "sub", "iat", "exp", "jti"];

/// Headers walhook sets per request; an API-key header must not replace them.
const RESERVED_HEADERS: [&str; 5] = [
    "content-type",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "host",
];

fn default_jwt_ttl() -> Duration {
    DEFAULT_JWT_TTL
}

/// `auth = { type = "...", ... }`: how requests are authenticated.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(from = "AuthToml")]
pub enum AuthConfig {
    /// No authentication.
    #[default]
    None,
    /// `Authorization: Basic base64(user:password)`.
    Basic {
        /// The user name (no `:`).
        user: String,
        /// The password.
        password: Secret,
    },
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// The static token.
        token: Secret,
    },
    /// One header carrying an API key, e.g. `X-Api-Key: <value>`.
    Header {
        /// The header name.
        name: String,
        /// The header value.
        value: Secret,
    },
    /// Standard Webhooks `webhook-signature` (HMAC-SHA256); several secrets during rotation.
    Hmac {
        /// One secret or a list; `whsec_`-prefixed secrets are base64.
        secret: SecretList,
    },
    /// 简道云 signing: `?timestamp=&nonce=`, `X-JDY-Signature`, `X-JDY-DeliverId`.
    Jiandaoyun {
        /// The push secret shown by 简道云.
        secret: Secret,
    },
    /// OAuth 2.0 client credentials: a cached access token sent as a bearer token.
    OAuth2(OAuth2Config),
    /// A short-lived JWT minted per request, sent as a bearer token.
    Jwt(JwtConfig),
}

/// `auth = { type = "oauth2", ... }`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Config {
    /// The token endpoint (http or https).
    #[serde(deserialize_with = "deserialize_url")]
    pub token_url: url::Url,
    /// The client id.
    pub client_id: String,
    /// The client secret.
    pub client_secret: Secret,
    /// Space-separated scopes requested, if any.
    pub scope: Option<String>,
    /// `audience` form parameter (Auth0 and others need it), if any.
    pub audience: Option<String>,
    /// How the client authenticates to the token endpoint.
    #[serde(default)]
    pub client_auth: ClientAuth,
}

/// Like a subscription's `url`, the token URL shows only its origin (a query
/// may carry a key).
impl std::fmt::Debug for OAuth2Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth2Config")
            .field(
                "token_url",
                &format_args!("{}/***", self.token_url.origin().ascii_serialization()),
            )
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("scope", &self.scope)
            .field("audience", &self.audience)
            .field("client_auth", &self.client_auth)
            .finish()
    }
}

/// How the OAuth2 client credentials reach the token endpoint (RFC 6749 2.3.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// HTTP Basic (`client_secret_basic`), which every server must support.
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form body (`client_secret_post`).
    Post,
}

/// `auth = { type = "jwt", ... }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Signing algorithm.
    pub algorithm: JwtAlgorithm,
    /// HS256 shared secret.
    pub secret: Option<Secret>,
    /// RS256 private key (PEM, PKCS#1 or PKCS#8), read at startup.
    pub private_key_file: Option<PathBuf>,
    /// `iss` claim.
    pub issuer: String,
    /// `aud` claim.
    pub audience: String,
    /// `sub` claim, if any.
    pub subject: Option<String>,
    /// Token lifetime (`exp - iat`).
    #[serde(default = "default_jwt_ttl")]
    pub ttl: Duration,
    /// Extra claims (TOML values, written as JSON).
    #[serde(default)]
    pub claims: BTreeMap<String, serde_json::Value>,
}

/// JWT signing algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with `secret`.
    HS256,
    /// RSASSA-PKCS1-v1_5 SHA-256 with `private_key_file`.
    RS256,
}

/// The TOML shape of [`AuthConfig`]: serde's internally tagged unit variants accept
/// any extra keys, so `none` is an empty struct variant here to reject them.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum AuthToml {
    None {},
    Basic {
        user: String,
        password: Secret,
    },
    Bearer {
        token: Secret,
    },
    Header {
        name: String,
        value: Secret,
    },
    Hmac {
        secret: SecretList,
    },
    Jiandaoyun {
        secret: Secret,
    },
    // Internally tagged newtype variants take the struct's fields (and its
    // deny_unknown_fields) next to `type`.
    #[serde(rename = "oauth2")]
    OAuth2(OAuth2Config),
    Jwt(JwtConfig),
}

impl From<AuthToml> for AuthConfig {
    fn from(auth: AuthToml) -> Self {
        match auth {
            AuthToml::None {} => Self::None,
            AuthToml::Basic { user, password } => Self::Basic { user, password },
            AuthToml::Bearer { token } => Self::Bearer { token },
            AuthToml::Header { name, value } => Self::Header { name, value },
            AuthToml::Hmac { secret } => Self::Hmac { secret },
            AuthToml::Jiandaoyun { secret } => Self::Jiandaoyun { secret },
            AuthToml::OAuth2(config) => Self::OAuth2(config),
            AuthToml::Jwt(config) => Self::Jwt(config),
        }
    }
}

/// Why an RS256 private key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file cannot be read.
    #[error("cannot read the file")]
    Read(#[source] std::io::Error),
    /// The file is not a usable RSA private key.
    #[error("not a usable RSA private key in PEM form (BEGIN RSA PRIVATE KEY or BEGIN PRIVATE KEY, at least 2048 bits)")]
    Parse(#[source] jsonwebtoken::errors::Error),
}

/// Reads an RS256 private key and proves it can sign (parsing the PEM alone
/// does not check the key itself).
pub fn load_rsa_key(path: &Path) -> Result<jsonwebtoken::EncodingKey, KeyFileError> {
    let pem = std::fs::read(path).map_err(KeyFileError::Read)?;
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).map_err(KeyFileError::Parse)?;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &serde_json::json!({}),
        &key,
    )
    .map_err(KeyFileError::Parse)?;
    Ok(key)
}

type Check = std::result::Result<(), ConfigError>;

fn invalid(field: &str, key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::invalid(format!("{field}.{key}"), message)
}

fn header_value_ok(value: &str) -> bool {
    reqwest::header::HeaderValue::from_str(value).is_ok()
}

/// Checks `auth` of the subscription at `field` (`subscriptions[2]`); errors name
/// the key (`subscriptions[2].auth.token_url`) and never quote a secret.
pub(super) fn validate_auth(auth: &AuthConfig, field: &str) -> Check {
    let field = &format!("{field}.auth");
    match auth {
        AuthConfig::None => Ok(()),
        AuthConfig::Basic { user, password } => {
            if user.is_empty() || user.contains(':') || !header_value_ok(user) {
                return Err(invalid(
                    field,
                    "user",
                    "must be non-empty, without ':' or control characters (RFC 7617)",
                ));
            }
            if !header_value_ok(password.expose()) {
                return Err(invalid(
                    field,
                    "password",
                    "must not contain line breaks or control characters",
                ));
            }
            Ok(())
        }
        AuthConfig::Bearer { token } => {
            let token = token.expose();
            if token.is_empty() || !header_value_ok(token) {
                return Err(invalid(
                    field,
                    "token",
                    "must be non-empty, without line breaks or control characters; give the token without the \"Bearer \" prefix",
                ));
            }
            Ok(())
        }
        AuthConfig::Header { name, value } => {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(invalid(
                    field,
                    "name",
                    format!(
                        "\"{name}\" is not a valid HTTP header name; use letters, digits and -"
                    ),
                ));
            }
            if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(invalid(
                    field,
                    "name",
                    format!("{name} is set by walhook itself; pick the header your receiver reads the key from, like X-Api-Key"),
                ));
            }
            if value.expose().is_empty() || !header_value_ok(value.expose()) {
                return Err(invalid(
                    field,
                    "value",
                    "must be non-empty, without line breaks or control characters",
                ));
            }
            Ok(())
        }
        AuthConfig::Hmac { secret } => validate_hmac(secret, field),
        AuthConfig::Jiandaoyun { secret } => {
            if secret.expose().is_empty() {
                return Err(invalid(
                    field,
                    "secret",
                    "is empty; copy the secret from 简道云's data push settings",
                ));
            }
            Ok(())
        }
        AuthConfig::OAuth2(oauth) => validate_oauth2(oauth, field),
        AuthConfig::Jwt(jwt) => validate_jwt(jwt, field),
    }
}

fn validate_hmac(secret: &SecretList, field: &str) -> Check {
    if secret.secrets().is_empty() {
        return Err(invalid(
            field,
            "secret",
            "is an empty list; give at least one secret",
        ));
    }
    for (j, s) in secret.secrets().iter().enumerate() {
        let s = s.expose();
        let bad = match s.strip_prefix("whsec_") {
            Some(b64) => {
                b64.is_empty()
                    || base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .is_err()
            }
            None => s.is_empty(),
        };
        if bad {
            return Err(invalid(
                field,
                &format!("secret[{j}]"),
                "must be non-empty, and a whsec_ secret must be followed by valid base64 \
                 (copy it exactly as the receiver shows it)",
            ));
        }
    }
    Ok(())
}

fn validate_oauth2(oauth: &OAuth2Config, field: &str) -> Check {
    if !matches!(oauth.token_url.scheme(), "http" | "https") || !oauth.token_url.has_host() {
        return Err(invalid(
            field,
            "token_url",
            "must be an http:// or https:// URL with a host, like \"https://auth.example.com/oauth/token\"",
        ));
    }
    if oauth.client_id.is_empty() || !header_value_ok(&oauth.client_id) {
        return Err(invalid(
            field,
            "client_id",
            "must be non-empty, without control characters",
        ));
    }
    if oauth.client_auth == ClientAuth::Basic && oauth.client_id.contains(':') {
        return Err(invalid(
            field,
            "client_id",
            "contains ':', which HTTP Basic cannot carry; set client_auth = \"post\"",
        ));
    }
    if oauth.client_secret.expose().is_empty() {
        return Err(invalid(field, "client_secret", "is empty"));
    }
    for (key, value) in [("scope", &oauth.scope), ("audience", &oauth.audience)] {
        if value.as_deref().is_some_and(str::is_empty) {
            return Err(invalid(
                field,
                key,
                "is empty; remove the key or give a value",
            ));
        }
    }
    Ok(())
}

fn validate_jwt(jwt: &JwtConfig, field: &str) -> Check {
    match jwt.algorithm {
        JwtAlgorithm::HS256 => {
            if jwt.private_key_file.is_some() {
                return Err(invalid(
                    field,
                    "private_key_file",
                    "is for RS256; HS256 signs with secret, so remove private_key_file or set algorithm = \"RS256\"",
                ));
            }
            match &jwt.secret {
                None => {
                    return Err(invalid(
                        field,
                        "secret",
                        "is required with algorithm = \"HS256\"",
                    ))
                }
                Some(secret) if secret.expose().is_empty() => {
                    return Err(invalid(field, "secret", "is empty"))
                }
                Some(_) => {}
            }
        }
        JwtAlgorithm::RS256 => {
            if jwt.secret.is_some() {
                return Err(invalid(
                    field,
                    "secret",
                    "is for HS256; RS256 signs with private_key_file, so remove secret or set algorithm = \"HS256\"",
                ));
            }
            let Some(path) = &jwt.private_key_file else {
                return Err(invalid(
                    field,
                    "private_key_file",
                    "is required with algorithm = \"RS256\" (a PEM file, e.g. from `openssl genrsa 2048`)",
                ));
            };
            if let Err(err) = load_rsa_key(path) {
                let cause = std::error::Error::source(&err)
                    .map(|c| format!(" ({c})"))
                    .unwrap_or_default();
                return Err(invalid(
                    field,
                    "private_key_file",
                    format!("{}: {err}{cause}", path.display()),
                ));
            }
        }
    }
    if jwt.issuer.is_empty() {
        return Err(invalid(field, "issuer", "is empty"));
    }
    if jwt.audience.is_empty() {
        return Err(invalid(field, "audience", "is empty"));
    }
    if jwt.ttl.is_zero() {
        return Err(invalid(
            field,
            "ttl",
            "must be greater than 0; write a duration like \"5m\"",
        ));
    }
    if let Some(name) = jwt
        .claims
        .keys()
        .find(|k| JWT_RESERVED_CLAIMS.contains(&k.as_str()))
    {
        return Err(invalid(
            field,
            &format!("claims.{name}"),
            "is set by walhook (iss, aud and sub from issuer, audience and subject; iat, exp and jti per request); remove it",
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::{from_str_with_env, Config};
    use super::*;

    const RSA_KEY: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/it/fixtures/jwt-rs256.key.pem"
    );

    fn env(name: &str) -> Option<String> {
        (name == "TOKEN").then(|| "SECRET-from-env".to_owned())
    }

    fn parse(auth: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "[source]\nurl = \"postgres://u@h/db\"\n[[tables]]\nname = \"orders\"\n\
             [[subscriptions]]\nname = \"s\"\nurl = \"https://example.com/h\"\nauth = {auth}\n"
        );
        from_str_with_env(&text, "walhook.toml", &env)
    }

    fn auth(text: &str) -> AuthConfig {
        parse(text)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .subscriptions
            .remove(0)
            .auth
    }

    /// The field an `Invalid` error names, or the whole message of another error.
    fn field(text: &str) -> String {
        match parse(text).unwrap_err() {
            ConfigError::Invalid { field, .. } => field,
            other => other.to_string(),
        }
    }

    /// Every `# auth = {...}` example in the shipped config parses and validates.
    #[test]
    fn the_examples_in_config_example_toml_are_valid() {
        const EXAMPLE: &str = include_str!("../../config.example.toml");
        let examples: Vec<&str> = EXAMPLE
            .lines()
            .filter_map(|line| line.strip_prefix("# auth = "))
            .collect();
        assert_eq!(examples.len(), 8, "{examples:?}");
        let mut kinds = std::collections::BTreeSet::new();
        for example in examples {
            // ${VAR}s become a literal value; the key path becomes the test key.
            let mut text = example.replace("/etc/walhook/jwt.pem", RSA_KEY);
            while let Some(start) = text.find("${") {
                let end = start + text[start..].find('}').unwrap();
                text.replace_range(start..=end, "example-value");
            }
            let config = auth(&text);
            kinds.insert(
                format!("{config:?}")
                    .split([' ', '(', '{'])
                    .next()
                    .unwrap()
                    .to_owned(),
            );
        }
        assert_eq!(
            kinds.into_iter().collect::<Vec<_>>(),
            [
                "Basic",
                "Bearer",
                "Header",
                "Jiandaoyun",
                "Jwt",
                "None",
                "OAuth2"
            ]
        );
    }

    #[test]
    fn every_type_parses() {
        assert!(matches!(auth(r#"{ type = "none" }"#), AuthConfig::None));
        match auth(r#"{ type = "basic", user = "alice", password = "${TOKEN}" }"#) {
            AuthConfig::Basic { user, password } => {
                assert_eq!(user, "alice");
                assert_eq!(password.expose(), "SECRET-from-env");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            auth(r#"{ type = "bearer", token = "${TOKEN}" }"#),
            AuthConfig::Bearer { .. }
        ));
        assert!(matches!(
            auth(r#"{ type = "header", name = "X-Api-Key", value = "k" }"#),
            AuthConfig::Header { .. }
        ));
        assert!(matches!(
            auth(r#"{ type = "jiandaoyun", secret = "s" }"#),
            AuthConfig::Jiandaoyun { .. }
        ));
        match auth(
            r#"{ type = "oauth2", token_url = "https://auth.example.com/token", client_id = "c", client_secret = "${TOKEN}", scope = "a b", audience = "x" }"#,
        ) {
            AuthConfig::OAuth2(o) => {
                assert_eq!(o.client_auth, ClientAuth::Basic);
                assert_eq!(o.scope.as_deref(), Some("a b"));
            }
            other => panic!("{other:?}"),
        }
        match auth(
            r#"{ type = "jwt", algorithm = "HS256", secret = "s", issuer = "i", audience = "a", claims = { tenant = "acme", level = 3 } }"#,
        ) {
            AuthConfig::Jwt(j) => {
                assert_eq!(j.ttl, DEFAULT_JWT_TTL);
                assert_eq!(j.claims["level"], serde_json::json!(3));
            }
            other => panic!("{other:?}"),
        }
        let rs = format!(
            r#"{{ type = "jwt", algorithm = "RS256", private_key_file = "{RSA_KEY}", issuer = "i", audience = "a", subject = "s", ttl = "30s" }}"#
        );
        assert!(matches!(auth(&rs), AuthConfig::Jwt(_)));
    }

    #[test]
    fn unknown_keys_and_missing_keys_name_the_auth_table() {
        for text in [
            r#"{ type = "bearer", token = "t", extra = 1 }"#,
            r#"{ type = "oauth2", token_url = "https://a/t", client_id = "c" }"#,
            r#"{ type = "jwt", algorithm = "ES256", secret = "s", issuer = "i", audience = "a" }"#,
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains("subscriptions[0].auth"), "{text}: {err}");
        }
    }

    #[test]
    fn validation_names_the_field() {
        let cases = [
            (
                r#"{ type = "basic", user = "a:b", password = "p" }"#,
                "user",
            ),
            (r#"{ type = "bearer", token = "" }"#, "token"),
            (
                r#"{ type = "header", name = "bad name", value = "v" }"#,
                "name",
            ),
            (
                r#"{ type = "header", name = "webhook-id", value = "v" }"#,
                "name",
            ),
            (
                r#"{ type = "header", name = "X-Key", value = "" }"#,
                "value",
            ),
            (r#"{ type = "jiandaoyun", secret = "" }"#, "secret"),
            (
                r#"{ type = "oauth2", token_url = "ftp://a/t", client_id = "c", client_secret = "s" }"#,
                "token_url",
            ),
            (
                r#"{ type = "oauth2", token_url = "https://a/t", client_id = "", client_secret = "s" }"#,
                "client_id",
            ),
            (
                r#"{ type = "oauth2", token_url = "https://a/t", client_id = "c", client_secret = "" }"#,
                "client_secret",
            ),
            (
                r#"{ type = "oauth2", token_url = "https://a/t", client_id = "c", client_secret = "s", scope = "" }"#,
                "scope",
            ),
            (
                r#"{ type = "jwt", algorithm = "HS256", issuer = "i", audience = "a" }"#,
                "secret",
            ),
            (
                r#"{ type = "jwt", algorithm = "RS256", issuer = "i", audience = "a" }"#,
                "private_key_file",
            ),
            (
                r#"{ type = "jwt", algorithm = "RS256", private_key_file = "/nonexistent/key.pem", issuer = "i", audience = "a" }"#,
                "private_key_file",
            ),
            (
                r#"{ type = "jwt", algorithm = "HS256", secret = "s", issuer = "", audience = "a" }"#,
                "issuer",
            ),
            (
                r#"{ type = "jwt", algorithm = "HS256", secret = "s", issuer = "i", audience = "a", ttl = "0s" }"#,
                "ttl",
            ),
            (
                r#"{ type = "jwt", algorithm = "HS256", secret = "s", issuer = "i", audience = "a", claims = { exp = 1 } }"#,
                "claims.exp",
            ),
        ];
        for (text, key) in cases {
            assert_eq!(
                field(text),
                format!("subscriptions[0].auth.{key}"),
                "{text}"
            );
        }
    }

    #[test]
    fn a_bad_rsa_key_is_a_config_error_at_load() {
        let dir = std::env::temp_dir().join(format!("walhook-cfgkey-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("not-a-key.pem");
        std::fs::write(&path, "hello").unwrap();
        let text = format!(
            r#"{{ type = "jwt", algorithm = "RS256", private_key_file = "{}", issuer = "i", audience = "a" }}"#,
            path.display()
        );
        let err = parse(&text).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("subscriptions[0].auth.private_key_file")
                && message.contains("not a usable RSA private key"),
            "{message}"
        );
    }

    #[test]
    fn errors_and_debug_never_show_secrets() {
        let configs = [
            r#"{ type = "basic", user = "alice", password = "${TOKEN}" }"#,
            r#"{ type = "bearer", token = "${TOKEN}" }"#,
            r#"{ type = "header", name = "X-Api-Key", value = "${TOKEN}" }"#,
            r#"{ type = "hmac", secret = "${TOKEN}" }"#,
            r#"{ type = "jiandaoyun", secret = "${TOKEN}" }"#,
            r#"{ type = "oauth2", token_url = "https://a/t?key=${TOKEN}", client_id = "c", client_secret = "${TOKEN}" }"#,
            r#"{ type = "jwt", algorithm = "HS256", secret = "${TOKEN}", issuer = "i", audience = "a" }"#,
        ];
        for text in configs {
            let config = parse(text).unwrap();
            let debug = format!("{config:?}");
            assert!(!debug.contains("SECRET-from-env"), "{debug}");
            assert!(debug.contains("***"), "{debug}");
        }
        // A validation error in a table holding a secret does not echo it.
        let err = parse(r#"{ type = "basic", user = "", password = "${TOKEN}" }"#)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("SECRET-from-env"), "{err}");
    }
}
