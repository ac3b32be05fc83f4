//! The HTTP side of one attempt: the shared client, a subscription's fixed
//! request parts (`Endpoint`), and sending one signed request.
//!
//! Every attempt gets a fresh `webhook-timestamp` and signature; the
//! `webhook-id` stays the event id so receivers can dedupe redeliveries. The
//! subscription's `timeout` is a total deadline (connect, send, headers and
//! the body we read), not a per-read timeout. Redirects are never followed.
//! Every client is built with the egress policy (`super::egress`): with
//! `delivery.deny_private_networks` its resolver refuses non-public addresses,
//! and IP-literal URLs are checked here before each attempt.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use reqwest::{Client, Method};

use super::auth::{Auth, AuthError, AuthSetupError};
use super::egress::{blocked_in, BlockedAddress, EgressPolicy, GuardedResolver};
use super::render::RenderError;
use super::retry::Outcome;
use super::DeliveryError;
use crate::config::{load_ca_file, DeliveryConfig, HttpMethod, SubscriptionConfig};
use tracing::warn;

/// `user-agent` of every request.
pub const USER_AGENT_VALUE: &str = concat!("walhook/", env!("CARGO_PKG_VERSION"));

/// How much of an error response's body is kept for the dead letter: enough
/// to show a receiver's error message, small enough to store for every event.
pub const EXCERPT_BYTES: usize = 512;

/// How much of a 2xx body we read so the connection can go back to the pool;
/// a larger body is dropped with its connection instead of being downloaded.
const DRAIN_LIMIT: usize = 64 * 1024;

/// Idle keep-alive connections kept per host. Each subscription has at most
/// one request in flight, so this bounds reuse for up to 64 subscriptions that
/// share a host without keeping thousands of idle sockets open.
const POOL_MAX_IDLE_PER_HOST: usize = 64;

/// How long an idle pooled connection is kept (reqwest's default, stated).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// TCP keepalive probes notice receivers that vanished without a FIN.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");

/// The HTTP client deliveries share, with the egress policy it enforces.
#[derive(Clone, Debug)]
pub struct HttpClient {
    client: Client,
    egress: Arc<EgressPolicy>,
}

impl HttpClient {
    /// The reqwest client (its resolver already applies the policy).
    pub(crate) fn inner(&self) -> &Client {
        &self.client
    }

    /// The policy, for the subscriptions' own clients and IP-literal checks.
    pub(crate) fn egress(&self) -> &Arc<EgressPolicy> {
        &self.egress
    }
}

/// Builds the one client shared by every worker (and by `send_test`):
/// rustls, keep-alive pooling, no redirects, `[delivery]`'s egress policy.
pub fn build_client(config: &DeliveryConfig) -> Result<HttpClient, DeliveryError> {
    let egress = Arc::new(EgressPolicy::from_config(config));
    let client = client_builder(&egress)
        .build()
        .map_err(DeliveryError::Client)?;
    Ok(HttpClient { client, egress })
}

/// The shared client's settings, for per-subscription TLS clients too.
fn client_builder(egress: &Arc<EgressPolicy>) -> reqwest::ClientBuilder {
    let builder = Client::builder()
        .use_rustls_tls()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .tcp_nodelay(true)
        .tcp_keepalive(TCP_KEEPALIVE);
    if egress.is_active() {
        // Through a proxy the address finally connected to is the proxy's
        // choice, which the guard cannot see: connect directly.
        builder
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver::system(egress.clone())))
    } else {
        builder
    }
}

/// A subscription's own client when it has `tls` settings: extra roots from
/// `ca_file`, or no certificate checks with `verify = false` (warned about).
fn tls_client(
    sub: &SubscriptionConfig,
    egress: &Arc<EgressPolicy>,
) -> Result<Option<Client>, DeliveryError> {
    let Some(tls) = &sub.tls else {
        return Ok(None);
    };
    let mut builder = client_builder(egress);
    if let Some(path) = &tls.ca_file {
        let certs = load_ca_file(path).map_err(|source| DeliveryError::CaFile {
            subscription: sub.name.clone(),
            source,
        })?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    if !tls.verify {
        warn!(
            subscription = %sub.name,
            "tls.verify = false: this endpoint's certificate and host name are NOT checked, \
             so anyone on the network path can read and alter its webhooks; use tls.ca_file instead"
        );
        builder = builder.danger_accept_invalid_certs(true);
    }
    builder.build().map(Some).map_err(DeliveryError::Client)
}

/// Why an event could not be turned into a request at all.
#[derive(Debug, thiserror::Error)]
pub enum UnsendableError {
    /// The body could not be rendered.
    #[error("cannot render the request body")]
    Render(#[from] RenderError),
    /// The event id cannot be a header value (a corrupt store row).
    #[error("event id {0:?} is not a valid webhook-id header value")]
    InvalidId(String),
    /// The body is larger than the subscription may send.
    #[error("payload too large: the body has {bytes} bytes, more than the limit of {limit} bytes (max_body_bytes)")]
    TooLarge {
        /// The rendered body's size.
        bytes: usize,
        /// The subscription's limit.
        limit: usize,
    },
}

/// What one attempt produced.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// The receiver answered.
    Response {
        /// HTTP status code.
        status: u16,
        /// Raw `Retry-After` header.
        retry_after: Option<String>,
        /// First bytes of a non-2xx body (lossy UTF-8).
        excerpt: Option<String>,
    },
    /// No answer: timeout, connection or protocol error (URL stripped).
    Failed(reqwest::Error),
    /// The request could not be built.
    Unsendable(UnsendableError),
    /// The request could not be authenticated (an OAuth2 token fetch failed).
    Auth(AuthError),
    /// The egress policy refused the destination (endpoint or token URL).
    Blocked(BlockedAddress),
}

impl Attempt {
    /// The attempt as the retry policy sees it.
    pub(crate) fn outcome(&self) -> Outcome<'_> {
        match self {
            Attempt::Response {
                status,
                retry_after,
                ..
            } => Outcome::Status {
                code: *status,
                retry_after: retry_after.as_deref(),
            },
            Attempt::Failed(err) if err.is_timeout() => Outcome::Timeout,
            Attempt::Failed(_) => Outcome::Transport,
            Attempt::Unsendable(_) => Outcome::Unrenderable,
            // A token endpoint that fails is retried like an unreachable receiver.
            Attempt::Auth(err) if err.is_timeout() => Outcome::Timeout,
            Attempt::Auth(_) => Outcome::Transport,
            Attempt::Blocked(_) => Outcome::Blocked,
        }
    }

    /// The HTTP status, when there was a response.
    pub(crate) fn status(&self) -> Option<u16> {
        match self {
            Attempt::Response { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The response body excerpt, when there was a non-2xx response.
    pub(crate) fn excerpt(&self) -> Option<&str> {
        match self {
            Attempt::Response { excerpt, .. } => excerpt.as_deref(),
            _ => None,
        }
    }

    /// One line for `last_error`, dead letters and logs: status or error
    /// chain, never a body.
    pub(crate) fn describe(&self, timeout: Duration) -> String {
        match self {
            Attempt::Response { status, .. } => {
                let reason = reqwest::StatusCode::from_u16(*status)
                    .ok()
                    .and_then(|s| s.canonical_reason());
                match reason {
                    Some(reason) => format!("HTTP {status} {reason}"),
                    None => format!("HTTP {status}"),
                }
            }
            Attempt::Failed(err) if err.is_timeout() => {
                format!(
                    "request timed out after {}",
                    humantime::format_duration(timeout)
                )
            }
            Attempt::Failed(err) => error_chain(err),
            Attempt::Unsendable(err) => error_chain(err),
            Attempt::Auth(err) => error_chain(err),
            Attempt::Blocked(blocked) => blocked.to_string(),
        }
    }
}

/// `err: cause: cause`, for the store's text columns.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(err) = cause {
        text.push_str(": ");
        text.push_str(&err.to_string());
        cause = err.source();
    }
    text
}

/// A subscription's fixed request parts, prepared once per worker.
#[derive(Clone)]
pub(crate) struct Endpoint {
    method: Method,
    url: url::Url,
    headers: HeaderMap,
    auth: Auth,
    timeout: Duration,
    /// The subscription's own client (it has `tls` settings), used instead of the shared one.
    client: Option<Client>,
    /// Checks IP-literal hosts (host names are checked by the clients' resolver).
    egress: Arc<EgressPolicy>,
}

impl Endpoint {
    /// Validates headers and secrets; errors name the subscription. `egress`
    /// must be the shared client's policy.
    pub(crate) fn new(
        sub: &SubscriptionConfig,
        egress: &Arc<EgressPolicy>,
    ) -> Result<Self, DeliveryError> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        // Static headers may override content-type and user-agent; the
        // webhook-* headers are set per attempt and always win.
        for (name, value) in &sub.headers {
            let invalid = || DeliveryError::Header {
                subscription: sub.name.clone(),
                header: name.clone(),
            };
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid())?;
            let mut value = HeaderValue::from_str(value).map_err(|_| invalid())?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let auth = Auth::new(&sub.auth).map_err(|err| match err {
            AuthSetupError::Secret(source) => DeliveryError::Secret {
                subscription: sub.name.clone(),
                source,
            },
            source => DeliveryError::Auth {
                subscription: sub.name.clone(),
                source,
            },
        })?;
        let method = match sub.method {
            HttpMethod::Post => Method::POST,
            HttpMethod::Put => Method::PUT,
            HttpMethod::Patch => Method::PATCH,
        };
        Ok(Endpoint {
            method,
            url: sub.url.clone(),
            headers,
            auth,
            timeout: sub.timeout.get(),
            client: tls_client(sub, egress)?,
            egress: egress.clone(),
        })
    }

    /// The total request deadline.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends one attempt; every failure is an `Attempt`, never an error.
    pub(crate) async fn send(
        &self,
        client: &Client,
        id: &str,
        timestamp: u64,
        body: Bytes,
        templated: &HeaderMap,
    ) -> Attempt {
        let client = self.client.as_ref().unwrap_or(client);
        // IP literals never reach the guarded resolver: check them first,
        // before an OAuth2 token is fetched from a blocked token_url.
        let literal = std::iter::once(&self.url).chain(self.auth.token_url());
        for url in literal {
            if let Err(blocked) = self.egress.check_url(url) {
                return Attempt::Blocked(blocked);
            }
        }
        let mut headers = self.headers.clone();
        // Rendered header templates replace their configured raw values.
        for (name, value) in templated {
            headers.insert(name.clone(), value.clone());
        }
        let Ok(id_value) = HeaderValue::from_str(id) else {
            return Attempt::Unsendable(UnsendableError::InvalidId(id.to_owned()));
        };
        headers.insert(WEBHOOK_ID, id_value);
        headers.insert(WEBHOOK_TIMESTAMP, HeaderValue::from(timestamp));
        let applied = match self
            .auth
            .apply(client, &self.url, id, timestamp, &body, self.timeout)
            .await
        {
            Ok(applied) => applied,
            Err(err) => {
                if let Some(blocked) = blocked_in(&err) {
                    return Attempt::Blocked(blocked.clone());
                }
                return Attempt::Auth(err);
            }
        };
        for (name, value) in applied.headers {
            headers.insert(name, value);
        }
        let url = applied.url.unwrap_or_else(|| self.url.clone());
        let sent = client
            .request(self.method.clone(), url)
            .headers(headers)
            .timeout(self.timeout)
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(err) => {
                if let Some(blocked) = blocked_in(&err) {
                    return Attempt::Blocked(blocked.clone());
                }
                // The URL may carry a token (chat robots put keys in the query).
                return Attempt::Failed(err.without_url());
            }
        };
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            self.auth.unauthorized(applied.token.as_ref()).await;
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let excerpt = if status.is_success() {
            drain(response).await;
            None
        } else {
            read_excerpt(response).await
        };
        Attempt::Response {
            status: status.as_u16(),
            retry_after,
            excerpt,
        }
    }
}

impl fmt::Debug for Endpoint {
    // Header values, URL query and keys may hold secrets: show shapes only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("method", &self.method)
            .field("host", &self.url.host_str())
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("auth", &self.auth)
            .field("timeout", &self.timeout)
            .field("own_client", &self.client.is_some())
            .finish()
    }
}

/// Reads and discards a small success body so the connection is reusable.
async fn drain(mut response: reqwest::Response) {
    let mut read = 0usize;
    while read <= DRAIN_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            Ok(None) | Err(_) => return,
        }
    }
}

/// The first `EXCERPT_BYTES` of the body, lossy UTF-8; None when empty.
async fn read_excerpt(mut response: reqwest::Response) -> Option<String> {
    let mut buf = Vec::new();
    while buf.len() < EXCERPT_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            // A body cut short by the deadline still yields what arrived.
            Ok(None) | Err(_) => break,
        }
    }
    buf.truncate(EXCERPT_BYTES);
    (!buf.is_empty()).then(|| String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects formatted log output.
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn endpoint_logs(tls: serde_json::Value) -> (Endpoint, String) {
        let mut sub = serde_json::json!({"name": "s", "url": "https://127.0.0.1:1/"});
        if !tls.is_null() {
            sub["tls"] = tls;
        }
        let sub: SubscriptionConfig = serde_json::from_value(sub).unwrap();
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let egress = Arc::new(EgressPolicy::default());
        let endpoint =
            tracing::subscriber::with_default(subscriber, || Endpoint::new(&sub, &egress).unwrap());
        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        (endpoint, text)
    }

    #[test]
    fn verify_false_gets_its_own_client_and_a_loud_warning() {
        let (endpoint, logs) = endpoint_logs(serde_json::json!({"verify": false}));
        assert!(endpoint.client.is_some());
        assert!(
            logs.contains("WARN")
                && logs.contains("tls.verify = false")
                && logs.contains("subscription=s"),
            "{logs}"
        );
    }

    #[test]
    fn without_tls_the_shared_client_is_used_silently() {
        let (endpoint, logs) = endpoint_logs(serde_json::Value::Null);
        assert!(endpoint.client.is_none());
        assert!(logs.is_empty(), "{logs}");
        let (endpoint, logs) = endpoint_logs(serde_json::json!({"verify": true}));
        assert!(endpoint.client.is_some());
        assert!(logs.is_empty(), "{logs}");
    }
}
