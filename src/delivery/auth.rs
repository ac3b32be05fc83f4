//! Request authentication: what `auth.type` adds to each attempt.
//!
//! [`Auth`] is prepared once per worker from the subscription's `auth` (keys
//! decoded, the RS256 key parsed, header values checked) and applied to every
//! attempt by [`Auth::apply`], which returns the headers to add and, for
//! 简道云, the URL with its `timestamp` and `nonce` query parameters.
//!
//! - `basic`, `bearer`, `header`: one fixed `Authorization` or API-key header.
//! - `hmac`: Standard Webhooks `webhook-signature` (see `sign`).
//! - `jiandaoyun`: `?timestamp=<unix s>&nonce=<random>` appended to the URL
//!   (existing query parameters kept), `X-JDY-Signature` =
//!   `hex(sha1("{nonce}:{body}:{secret}:{timestamp}"))` over the exact body
//!   bytes sent, and `X-JDY-DeliverId` = the event id.
//! - `oauth2`: client credentials. The access token is cached per subscription
//!   (shared by its worker's clones of the endpoint) until
//!   [`refresh_margin`] before `expires_in`; a 401 from the endpoint drops it,
//!   so the retry of that failed attempt fetches a fresh one. A failed token
//!   fetch is a failed attempt (retried like a connection error), with the
//!   token endpoint's status and OAuth error code as the reason.
//! - `jwt`: a token minted per attempt (`iat` = the attempt's timestamp,
//!   `exp` = `iat + ttl`, `jti` = the event id) sent as a bearer token.
//!
//! Secrets stay inside: `Debug` shows only the kind, header values are marked
//! sensitive, and no error or log line carries a token or key.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use reqwest::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Client;
use serde::Deserialize;
use sha1::{Digest, Sha1};
use tracing::{debug, info};

use super::sign::{signature_header, InvalidSecret, SigningKey};
use crate::config::{
    load_rsa_key, AuthConfig, ClientAuth, JwtAlgorithm, JwtConfig, KeyFileError, OAuth2Config,
    Secret,
};

const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");
const JDY_SIGNATURE: HeaderName = HeaderName::from_static("x-jdy-signature");
const JDY_DELIVER_ID: HeaderName = HeaderName::from_static("x-jdy-deliverid");

/// Longest a cached OAuth2 token is used before its expiry: covers clock
/// skew and a request in flight at the moment it expires.
const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(30);

/// How long a token whose response has no `expires_in` is reused (RFC 6749
/// leaves the lifetime to documentation); a 401 drops it earlier.
const TOKEN_DEFAULT_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// How much of a token endpoint's `error_description` is kept in a reason.
const TOKEN_ERROR_EXCERPT: usize = 200;

/// Why a subscription's auth cannot be prepared (a startup error).
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// An HMAC secret is not usable.
    #[error("auth.secret is invalid")]
    Secret(#[source] InvalidSecret),
    /// A configured value cannot be a header (the value is not shown).
    #[error("auth.{key} cannot be sent in an HTTP header (line breaks or control characters)")]
    Header {
        /// The config key.
        key: &'static str,
    },
    /// The RS256 private key cannot be used.
    #[error("auth.private_key_file cannot be used")]
    Key(#[source] KeyFileError),
    /// HS256 without a secret or RS256 without a key file (validation prevents it).
    #[error("auth.{0} is required for this algorithm")]
    Missing(&'static str),
}

/// Why one attempt could not be authenticated; the attempt counts as failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token request got no answer.
    #[error("cannot get an OAuth2 access token: the token endpoint did not answer")]
    TokenRequest(#[source] reqwest::Error),
    /// The token endpoint refused.
    #[error(
        "cannot get an OAuth2 access token: the token endpoint answered HTTP {status}{detail}"
    )]
    TokenStatus {
        /// HTTP status.
        status: u16,
        /// `: error (description)` from an RFC 6749 error body, or empty.
        detail: String,
    },
    /// The token endpoint's 2xx answer has no usable access token.
    #[error("cannot get an OAuth2 access token: the token endpoint's answer is not a JSON object with an access_token")]
    TokenResponse,
    /// The JWT could not be signed.
    #[error("cannot sign the JWT")]
    Jwt(#[source] jsonwebtoken::errors::Error),
}

impl AuthError {
    /// Whether the token request timed out (reported like a request timeout).
    pub(crate) fn is_timeout(&self) -> bool {
        matches!(self, AuthError::TokenRequest(err) if err.is_timeout())
    }
}

/// A subscription's prepared auth.
#[derive(Clone)]
pub(crate) enum Auth {
    None,
    /// `basic`, `bearer` and `header`: one fixed header.
    Fixed(HeaderName, HeaderValue),
    Hmac(Vec<SigningKey>),
    Jiandaoyun(Secret),
    OAuth2(Arc<OAuth2>),
    Jwt(Arc<JwtSigner>),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Fixed(name, _) => write!(f, "Fixed({name}: ***)"),
            Auth::Hmac(keys) => write!(f, "Hmac({} x ***)", keys.len()),
            Auth::Jiandaoyun(_) => f.write_str("Jiandaoyun(***)"),
            Auth::OAuth2(oauth) => write!(
                f,
                "OAuth2(client_id: {}, token_url host: {:?}, secret: ***)",
                oauth.config.client_id,
                oauth.config.token_url.host_str()
            ),
            Auth::Jwt(signer) => write!(
                f,
                "Jwt({:?}, iss: {}, key: ***)",
                signer.algorithm, signer.issuer
            ),
        }
    }
}

/// What [`Auth::apply`] adds to one attempt.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    /// Headers to set (they replace static headers of the same name).
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    /// A replacement URL (简道云's query parameters).
    pub(crate) url: Option<url::Url>,
    /// The OAuth2 token sent, so a 401 can drop exactly that one.
    pub(crate) token: Option<Secret>,
}

impl Auth {
    /// Prepares `auth`: decodes keys, reads the RS256 key, checks header values.
    pub(crate) fn new(auth: &AuthConfig) -> Result<Self, AuthSetupError> {
        Ok(match auth {
            AuthConfig::None => Auth::None,
            AuthConfig::Basic { user, password } => Auth::Fixed(
                AUTHORIZATION,
                sensitive(&basic_value(user, password.expose()), "password")?,
            ),
            AuthConfig::Bearer { token } => Auth::Fixed(
                AUTHORIZATION,
                sensitive(&format!("Bearer {}", token.expose()), "token")?,
            ),
            AuthConfig::Header { name, value } => Auth::Fixed(
                HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| AuthSetupError::Header { key: "name" })?,
                sensitive(value.expose(), "value")?,
            ),
            AuthConfig::Hmac { secret } => Auth::Hmac(
                secret
                    .secrets()
                    .iter()
                    .map(|s| SigningKey::from_secret(s.expose()))
                    .collect::<Result<_, _>>()
                    .map_err(AuthSetupError::Secret)?,
            ),
            AuthConfig::Jiandaoyun { secret } => Auth::Jiandaoyun(secret.clone()),
            AuthConfig::OAuth2(config) => Auth::OAuth2(Arc::new(OAuth2::new(config.clone()))),
            AuthConfig::Jwt(config) => Auth::Jwt(Arc::new(JwtSigner::new(config)?)),
        })
    }

    /// The headers (and URL) that authenticate one attempt of `body` for event
    /// `id` at unix time `timestamp`. `timeout` bounds an OAuth2 token request.
    pub(crate) async fn apply(
        &self,
        client: &Client,
        url: &url::Url,
        id: &str,
        timestamp: u64,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Applied, AuthError> {
        let mut applied = Applied::default();
        match self {
            Auth::None => {}
            Auth::Fixed(name, value) => applied.headers.push((name.clone(), value.clone())),
            Auth::Hmac(keys) => {
                let signature = signature_header(keys, id, timestamp, body);
                // Base64 and "v1," are always valid header characters.
                if let Ok(value) = HeaderValue::from_str(&signature) {
                    applied.headers.push((WEBHOOK_SIGNATURE, value));
                }
            }
            Auth::Jiandaoyun(secret) => {
                let nonce = jiandaoyun_nonce();
                let signature = jiandaoyun_signature(&nonce, body, secret.expose(), timestamp);
                applied.url = Some(jiandaoyun_url(url, timestamp, &nonce));
                // Hex digits are valid header characters.
                if let Ok(value) = HeaderValue::from_str(&signature) {
                    applied.headers.push((JDY_SIGNATURE, value));
                }
                // The id was already checked as a header value by the caller.
                if let Ok(value) = HeaderValue::from_str(id) {
                    applied.headers.push((JDY_DELIVER_ID, value));
                }
            }
            Auth::OAuth2(oauth) => {
                let token = oauth.token(client, timeout).await?;
                applied.headers.push((AUTHORIZATION, bearer(&token)?));
                applied.token = Some(token);
            }
            Auth::Jwt(signer) => {
                let token = signer.mint(id, timestamp).map_err(AuthError::Jwt)?;
                applied
                    .headers
                    .push((AUTHORIZATION, bearer(&Secret::new(token))?));
            }
        }
        Ok(applied)
    }

    /// The OAuth2 token endpoint, the one other URL an attempt may contact.
    pub(crate) fn token_url(&self) -> Option<&url::Url> {
        match self {
            Auth::OAuth2(oauth) => Some(&oauth.config.token_url),
            _ => None,
        }
    }

    /// Tells the auth that the endpoint answered 401 to a request carrying `token`.
    pub(crate) async fn unauthorized(&self, token: Option<&Secret>) {
        if let (Auth::OAuth2(oauth), Some(token)) = (self, token) {
            oauth.invalidate(token).await;
        }
    }
}

fn sensitive(value: &str, key: &'static str) -> Result<HeaderValue, AuthSetupError> {
    let mut value = HeaderValue::from_str(value).map_err(|_| AuthSetupError::Header { key })?;
    value.set_sensitive(true);
    Ok(value)
}

fn bearer(token: &Secret) -> Result<HeaderValue, AuthError> {
    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        .map_err(|_| AuthError::TokenResponse)?;
    value.set_sensitive(true);
    Ok(value)
}

/// `Basic base64(user:password)` (RFC 7617).
pub(crate) fn basic_value(user: &str, password: &str) -> String {
    format!("Basic {}", BASE64.encode(format!("{user}:{password}")))
}

/// A fresh random nonce for 简道云 signing (16 hex digits).
fn jiandaoyun_nonce() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// `hex(sha1("{nonce}:{body}:{secret}:{timestamp}"))`, the body as raw bytes.
pub fn jiandaoyun_signature(nonce: &str, body: &[u8], secret: &str, timestamp: u64) -> String {
    let mut sha = Sha1::new();
    sha.update(nonce.as_bytes());
    sha.update(b":");
    sha.update(body);
    sha.update(b":");
    sha.update(secret.as_bytes());
    sha.update(b":");
    sha.update(timestamp.to_string().as_bytes());
    sha.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// `url` with `timestamp` and `nonce` appended to its query (existing parameters kept).
pub(crate) fn jiandaoyun_url(url: &url::Url, timestamp: u64, nonce: &str) -> url::Url {
    let mut url = url.clone();
    url.query_pairs_mut()
        .append_pair("timestamp", &timestamp.to_string())
        .append_pair("nonce", nonce);
    url
}

// ------------------------------------------------------------------ jwt

/// Mints the per-request JWTs of one subscription.
pub(crate) struct JwtSigner {
    algorithm: jsonwebtoken::Algorithm,
    key: jsonwebtoken::EncodingKey,
    issuer: String,
    audience: String,
    subject: Option<String>,
    ttl_secs: u64,
    claims: serde_json::Map<String, serde_json::Value>,
}

impl JwtSigner {
    pub(crate) fn new(config: &JwtConfig) -> Result<Self, AuthSetupError> {
        let (algorithm, key) = match config.algorithm {
            JwtAlgorithm::HS256 => {
                let secret = config
                    .secret
                    .as_ref()
                    .ok_or(AuthSetupError::Missing("secret"))?;
                (
                    jsonwebtoken::Algorithm::HS256,
                    jsonwebtoken::EncodingKey::from_secret(secret.expose().as_bytes()),
                )
            }
            JwtAlgorithm::RS256 => {
                let path = config
                    .private_key_file
                    .as_ref()
                    .ok_or(AuthSetupError::Missing("private_key_file"))?;
                (
                    jsonwebtoken::Algorithm::RS256,
                    load_rsa_key(path).map_err(AuthSetupError::Key)?,
                )
            }
        };
        Ok(JwtSigner {
            algorithm,
            key,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            subject: config.subject.clone(),
            ttl_secs: config.ttl.get().as_secs().max(1),
            claims: config.claims.clone().into_iter().collect(),
        })
    }

    /// A token for event `id` issued at unix time `now`.
    pub(crate) fn mint(&self, id: &str, now: u64) -> Result<String, jsonwebtoken::errors::Error> {
        let mut claims = self.claims.clone();
        claims.insert("iss".into(), self.issuer.clone().into());
        claims.insert("aud".into(), self.audience.clone().into());
        if let Some(subject) = &self.subject {
            claims.insert("sub".into(), subject.clone().into());
        }
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), now.saturating_add(self.ttl_secs).into());
        claims.insert("jti".into(), id.into());
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(self.algorithm),
            &claims,
            &self.key,
        )
    }
}

// ------------------------------------------------------------------ oauth2

/// How long before `expires_in` a token is refreshed: [`TOKEN_REFRESH_MARGIN`],
/// or half the lifetime for very short-lived tokens.
pub(crate) fn refresh_margin(lifetime: Duration) -> Duration {
    TOKEN_REFRESH_MARGIN.min(lifetime / 2)
}

/// The cached access token; a pure state machine over explicit instants.
#[derive(Default)]
pub(crate) struct TokenCache {
    cached: Option<(Secret, Instant)>,
}

impl TokenCache {
    /// The token if it is still fresh at `now`.
    pub(crate) fn get(&self, now: Instant) -> Option<&Secret> {
        self.cached
            .as_ref()
            .filter(|(_, refresh_at)| now < *refresh_at)
            .map(|(token, _)| token)
    }

    /// Stores a token fetched at `now` that lives `lifetime`.
    pub(crate) fn put(&mut self, token: Secret, lifetime: Duration, now: Instant) {
        let refresh_at = now + lifetime.saturating_sub(refresh_margin(lifetime));
        self.cached = Some((token, refresh_at));
    }

    /// Drops the cached token if it is `token` (a newer one is kept).
    pub(crate) fn invalidate(&mut self, token: &Secret) -> bool {
        let hit = self.cached.as_ref().is_some_and(|(t, _)| t == token);
        if hit {
            self.cached = None;
        }
        hit
    }
}

/// RFC 6749 5.1 / 5.2 answer fields we read. `expires_in` may be a string
/// (some servers quote it).
#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    expires_in: Option<serde_json::Value>,
    error: Option<String>,
    error_description: Option<String>,
}

/// One subscription's client-credentials flow and token cache.
pub(crate) struct OAuth2 {
    config: OAuth2Config,
    // A tokio mutex held across the fetch, so a burst of attempts triggers one request.
    cache: tokio::sync::Mutex<TokenCache>,
}

impl OAuth2 {
    fn new(config: OAuth2Config) -> Self {
        OAuth2 {
            config,
            cache: tokio::sync::Mutex::new(TokenCache::default()),
        }
    }

    /// The cached token, or a freshly fetched one.
    async fn token(&self, client: &Client, timeout: Duration) -> Result<Secret, AuthError> {
        let mut cache = self.cache.lock().await;
        let now = tokio::time::Instant::now().into_std();
        if let Some(token) = cache.get(now) {
            return Ok(token.clone());
        }
        let (token, lifetime) = self.fetch(client, timeout).await?;
        info!(
            client_id = %self.config.client_id,
            expires_in = %humantime::format_duration(lifetime),
            "fetched an oauth2 access token"
        );
        cache.put(
            token.clone(),
            lifetime,
            tokio::time::Instant::now().into_std(),
        );
        Ok(token)
    }

    async fn invalidate(&self, token: &Secret) {
        if self.cache.lock().await.invalidate(token) {
            info!(client_id = %self.config.client_id, "endpoint answered 401; dropped the cached oauth2 token, the retry fetches a fresh one");
        }
    }

    async fn fetch(
        &self,
        client: &Client,
        timeout: Duration,
    ) -> Result<(Secret, Duration), AuthError> {
        let c = &self.config;
        let mut request = client
            .post(c.token_url.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(timeout);
        if c.client_auth == ClientAuth::Basic {
            // RFC 6749 2.3.1: form-encode id and secret before Basic encoding.
            let enc =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let mut value = HeaderValue::from_str(&basic_value(
                &enc(&c.client_id),
                &enc(c.client_secret.expose()),
            ))
            .map_err(|_| AuthError::TokenResponse)?;
            value.set_sensitive(true);
            request = request.header(AUTHORIZATION, value);
        }
        let response = request
            .body(token_form(c))
            .send()
            .await
            .map_err(|err| AuthError::TokenRequest(err.without_url()))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|err| AuthError::TokenRequest(err.without_url()))?;
        let parsed: Option<TokenResponse> = serde_json::from_slice(&body).ok();
        if !status.is_success() {
            let detail = parsed
                .and_then(|p| {
                    p.error.map(|error| match p.error_description {
                        Some(d) => format!(": {error} ({})", excerpt(&d)),
                        None => format!(": {error}"),
                    })
                })
                .unwrap_or_default();
            debug!(status = status.as_u16(), "oauth2 token request refused");
            return Err(AuthError::TokenStatus {
                status: status.as_u16(),
                detail,
            });
        }
        let parsed = parsed.ok_or(AuthError::TokenResponse)?;
        let token = parsed
            .access_token
            .filter(|t| !t.is_empty() && HeaderValue::from_str(&format!("Bearer {t}")).is_ok())
            .ok_or(AuthError::TokenResponse)?;
        let lifetime = match parsed.expires_in {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        }
        .filter(|secs| *secs > 0)
        .map_or(TOKEN_DEFAULT_LIFETIME, Duration::from_secs);
        Ok((Secret::new(token), lifetime))
    }
}

/// The token request's form body (RFC 6749 4.4.2).
fn token_form(c: &OAuth2Config) -> String {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", "client_credentials");
    if let Some(scope) = &c.scope {
        form.append_pair("scope", scope);
    }
    if let Some(audience) = &c.audience {
        form.append_pair("audience", audience);
    }
    if c.client_auth == ClientAuth::Post {
        form.append_pair("client_id", &c.client_id);
        form.append_pair("client_secret", c.client_secret.expose());
    }
    form.finish()
}

fn excerpt(text: &str) -> String {
    let mut out: String = text.chars().take(TOKEN_ERROR_EXCERPT).collect();
    if text.chars().count() > TOKEN_ERROR_EXCERPT {
        out.push('…');
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
