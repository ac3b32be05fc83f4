//! Delivery: one worker per subscription pushes the durable log to its
//! webhook endpoint.
//!
//! Each worker reads the shared log through its own cursor (so a slow or
//! failing endpoint never delays another subscription), filters events by
//! form and op, renders the body (`render`), authenticates it as `auth.type`
//! says (`auth`: Standard Webhooks signatures from `sign`, basic/bearer/API-key
//! headers, 简道云 signing, OAuth2 client credentials, per-request JWTs),
//! sends it with the shared `reqwest::Client`, or the subscription's own one
//! when it has `tls` settings (`http`), and
//! lets the retry policy (`retry`, the one place that classifies outcomes)
//! decide: delivered, retry later, dead letter, or disable on 410 Gone.
//! Per subscription, `batch` groups events into one request (`batch`),
//! `rate_limit` spaces requests (`rate`), and `disable_after` disables the
//! subscription after that many failed attempts in a row (`streak`).
//! `ordering = "key"` delivers different row keys in parallel lanes (`lanes`);
//! both modes send through one step (`request`).
//!
//! Guarantees (DESIGN.md 2–4): at-least-once with stable ids (an event is only
//! marked delivered after a 2xx; a crash re-sends the unflushed tail with the
//! same `webhook-id`); strict commit order per subscription (one request in
//! flight: an event, or a batch delivered or retried as a unit), or with
//! `ordering = "key"` commit order per row key; isolation
//! (own cursor, retry state and dead letters per subscription; a global
//! semaphore caps concurrent requests).
//!
//! Wiring: build `Deliveries` once with the store, `[delivery]` config, the
//! append signal (a `watch` of the last appended seq) and the shutdown token,
//! then `spawn` the workers and join the returned `JoinSet` on exit.

mod auth;
mod batch;
mod egress;
#[cfg(any(fuzzing, test))]
#[doc(hidden)]
pub mod fuzzing;
mod http;
mod lanes;
mod rate;
mod render;
mod request;
mod retry;
mod sign;
mod streak;
pub(crate) mod template;
mod worker;

#[cfg(test)]
mod tests;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{DeliveryConfig, SubscriptionConfig};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError, StoredEvent};

pub use auth::{jiandaoyun_signature, AuthError, AuthSetupError};
pub use egress::{non_public, BlockedAddress, EgressPolicy};
pub use http::{build_client, HttpClient, UnsendableError};
pub use lanes::lane_of;
pub use render::{FilterError, RenderError};
pub use sign::{signature_header, InvalidSecret, SigningKey};

/// Worker-fatal delivery problems. Failed attempts are not errors: they are
/// outcomes the retry policy handles.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// A store call failed; the worker stops (exit code 5 territory).
    #[error("delivery for subscription '{subscription}' could not {action} in the store")]
    Store {
        /// The subscription.
        subscription: String,
        /// What the worker was doing.
        action: &'static str,
        /// The store's error (boxed: SQLite errors are large).
        #[source]
        source: Box<StoreError>,
    },
    /// A blocking store call panicked or was cancelled.
    #[error("delivery for subscription '{subscription}': a store call did not complete")]
    StoreTask {
        /// The subscription.
        subscription: String,
        /// The join error.
        #[source]
        source: tokio::task::JoinError,
    },
    /// A delivery lane (`ordering = "key"`) panicked or was cancelled.
    #[error("delivery for subscription '{subscription}': a lane stopped unexpectedly")]
    Lane {
        /// The subscription.
        subscription: String,
        /// The join error.
        #[source]
        source: tokio::task::JoinError,
    },
    /// A subscription's worker panicked: a bug. walhook stops (exit 1)
    /// rather than go on without delivering to that subscription.
    #[error("delivery for subscription '{subscription}' stopped unexpectedly (a bug; please report it with the log); restart walhook to resume")]
    Worker {
        /// The subscription.
        subscription: String,
        /// The join error (the panic).
        #[source]
        source: tokio::task::JoinError,
    },
    /// The HTTP client could not be built (TLS setup).
    #[error("cannot build the HTTP client for deliveries")]
    Client(#[source] reqwest::Error),
    /// A subscription's `tls.ca_file` is unusable (validation normally catches it).
    #[error("subscriptions.{subscription}.tls.ca_file cannot be used")]
    CaFile {
        /// The subscription.
        subscription: String,
        /// Why.
        #[source]
        source: crate::config::CaFileError,
    },
    /// A signing secret is unusable.
    #[error("subscriptions.{subscription}.auth.secret is invalid")]
    Secret {
        /// The subscription.
        subscription: String,
        /// Why.
        #[source]
        source: InvalidSecret,
    },
    /// The subscription's auth cannot be prepared (a bad key, a value that cannot be a header).
    #[error("subscriptions.{subscription}: cannot prepare its auth")]
    Auth {
        /// The subscription.
        subscription: String,
        /// Why.
        #[source]
        source: AuthSetupError,
    },
    /// A static header has an invalid name or value (the value is not shown: it may be a secret).
    #[error(
        "subscriptions.{subscription}.headers: header {header:?} has an invalid name or value"
    )]
    Header {
        /// The subscription.
        subscription: String,
        /// The header name as configured.
        header: String,
    },
    /// A filter or template does not compile.
    #[error("subscriptions.{subscription}: a filter or template does not compile")]
    Template {
        /// The subscription.
        subscription: String,
        /// Which key and why.
        #[source]
        source: template::CompileError,
    },
    /// The test event could not be turned into a request.
    #[error("cannot build the test request for subscription '{subscription}'")]
    Unsendable {
        /// The subscription.
        subscription: String,
        /// Why.
        #[source]
        source: UnsendableError,
    },
    /// The test request could not be authenticated (e.g. no OAuth2 token).
    #[error("the test request to subscription '{subscription}' could not be authenticated")]
    Authenticate {
        /// The subscription.
        subscription: String,
        /// Why.
        #[source]
        source: AuthError,
    },
    /// The egress policy refused the test request's destination.
    #[error("the test request to subscription '{subscription}' was not sent")]
    Blocked {
        /// The subscription.
        subscription: String,
        /// Which address and why.
        #[source]
        source: BlockedAddress,
    },
    /// The test request got no HTTP answer (timeout, connection refused, TLS).
    #[error("the test request to subscription '{subscription}' got no answer")]
    Send {
        /// The subscription.
        subscription: String,
        /// The HTTP client's error (URL stripped).
        #[source]
        source: reqwest::Error,
    },
}

/// Wall clock for `webhook-timestamp` and persisted retry times; replaceable in tests.
#[derive(Clone)]
pub(crate) struct Clock(Arc<dyn Fn() -> SystemTime + Send + Sync>);

impl Clock {
    fn system() -> Self {
        Clock(Arc::new(SystemTime::now))
    }

    pub(crate) fn now(&self) -> SystemTime {
        (self.0)()
    }
}

/// What every worker shares.
#[derive(Clone)]
pub(crate) struct Shared {
    store: Store,
    client: HttpClient,
    limiter: Arc<Semaphore>,
    appended: watch::Receiver<i64>,
    shutdown: CancellationToken,
    grace: Duration,
    clock: Clock,
    /// `delivery.max_body_bytes`: the body limit of subscriptions without their own.
    max_body_bytes: u64,
    metrics: Metrics,
}

impl Shared {
    /// The largest body `sub` may send (its `max_body_bytes`, else the global one).
    pub(crate) fn max_body_bytes(&self, sub: &SubscriptionConfig) -> usize {
        let limit = sub.max_body_bytes.map_or(self.max_body_bytes, |b| b.get());
        usize::try_from(limit).unwrap_or(usize::MAX)
    }
}

/// Spawns and equips the per-subscription workers.
pub struct Deliveries {
    shared: Shared,
}

impl fmt::Debug for Deliveries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deliveries")
            .field(
                "available_permits",
                &self.shared.limiter.available_permits(),
            )
            .field("grace", &self.shared.grace)
            .finish_non_exhaustive()
    }
}

impl Deliveries {
    /// `appended` carries the seq of the last appended event (workers also
    /// poll the store); cancelling `shutdown` stops every worker, letting an
    /// in-flight request finish within `config.shutdown_grace`.
    pub fn new(
        store: Store,
        config: &DeliveryConfig,
        appended: watch::Receiver<i64>,
        shutdown: CancellationToken,
    ) -> Result<Self, DeliveryError> {
        Ok(Deliveries {
            shared: Shared {
                store,
                client: build_client(config)?,
                limiter: Arc::new(Semaphore::new(config.max_concurrency.max(1))),
                appended,
                shutdown,
                grace: config.shutdown_grace.get(),
                clock: Clock::system(),
                max_body_bytes: config.max_body_bytes.get(),
                metrics: Metrics::new(),
            },
        })
    }

    /// Counts attempts, latencies and dead letters in `metrics` (instead of
    /// a private recorder nobody reads).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.shared.metrics = metrics;
        self
    }

    /// The shared HTTP client (for `send_test` from the admin API).
    pub fn client(&self) -> &HttpClient {
        &self.shared.client
    }

    /// Validates every enabled subscription, then spawns one worker each.
    /// Nothing is spawned if one is invalid. A worker ends with `Ok` on
    /// shutdown, when its endpoint answers 410 or after `disable_after`
    /// failed attempts (the subscription is then disabled in the store), and
    /// with `Err` on a store error.
    pub fn spawn(
        &self,
        subs: &[SubscriptionConfig],
    ) -> Result<JoinSet<Result<(), DeliveryError>>, DeliveryError> {
        let workers = subs
            .iter()
            .filter(|sub| sub.enabled)
            .map(|sub| self.worker(sub))
            .collect::<Result<Vec<_>, _>>()?;
        let mut set = JoinSet::new();
        for worker in workers {
            set.spawn(worker);
        }
        Ok(set)
    }

    /// One subscription's worker as a future, for callers that spawn it themselves.
    pub fn worker(
        &self,
        sub: &SubscriptionConfig,
    ) -> Result<impl Future<Output = Result<(), DeliveryError>> + Send + 'static, DeliveryError>
    {
        self.worker_until(sub, self.shared.shutdown.clone())
    }

    /// Like [`Self::worker`], but the worker stops when `shutdown` is
    /// cancelled (a child of the shared token), so one subscription can be
    /// stopped and restarted on a config reload while the others go on.
    pub fn worker_until(
        &self,
        sub: &SubscriptionConfig,
        shutdown: CancellationToken,
    ) -> Result<impl Future<Output = Result<(), DeliveryError>> + Send + 'static, DeliveryError>
    {
        let endpoint = http::Endpoint::new(sub, self.shared.client.egress())?;
        let renderer = renderer(sub)?;
        let mut shared = self.shared.clone();
        shared.shutdown = shutdown;
        Ok(worker::Worker::new(sub.clone(), endpoint, renderer, shared).run())
    }

    /// Replaces the wall clock for workers spawned afterwards.
    #[cfg(test)]
    fn set_clock(&mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) {
        self.shared.clock = Clock(Arc::new(clock));
    }
}

/// Compiles the subscription's filter and templates (checked at config load
/// already, so an error here means a config that bypassed validation).
fn renderer(sub: &SubscriptionConfig) -> Result<render::Renderer, DeliveryError> {
    render::Renderer::new(sub).map_err(|source| DeliveryError::Template {
        subscription: sub.name.clone(),
        source,
    })
}

/// Form name of the synthetic test event when the subscription lists no forms.
const TEST_FORM: &str = "walhook_test";

/// Delivers one synthetic event with op `test` (same headers and signature as
/// real events, a fresh id) and returns the receiver's status, whatever it is.
/// `client` (from [`build_client`]) brings the egress policy.
pub async fn send_test(
    sub: &SubscriptionConfig,
    client: &HttpClient,
) -> Result<u16, DeliveryError> {
    let endpoint = http::Endpoint::new(sub, client.egress())?;
    let now = SystemTime::now();
    let event = test_event(sub, now);
    let unsendable = |source: UnsendableError| DeliveryError::Unsendable {
        subscription: sub.name.clone(),
        source,
    };
    let rendered = renderer(sub)?
        .render(std::slice::from_ref(&event))
        .map_err(|e| unsendable(e.into()))?;
    match endpoint
        .send(
            client.inner(),
            &event.id,
            worker::unix_secs(now),
            rendered.body,
            &rendered.headers,
        )
        .await
    {
        http::Attempt::Response { status, .. } => Ok(status),
        http::Attempt::Failed(source) => Err(DeliveryError::Send {
            subscription: sub.name.clone(),
            source,
        }),
        http::Attempt::Unsendable(source) => Err(unsendable(source)),
        http::Attempt::Auth(source) => Err(DeliveryError::Authenticate {
            subscription: sub.name.clone(),
            source,
        }),
        http::Attempt::Blocked(source) => Err(DeliveryError::Blocked {
            subscription: sub.name.clone(),
            source,
        }),
    }
}

/// The synthetic event `send_test` delivers, shaped like a real one.
fn test_event(sub: &SubscriptionConfig, now: SystemTime) -> StoredEvent {
    let form = sub
        .forms
        .as_ref()
        .and_then(|forms| forms.first())
        .map_or(TEST_FORM, String::as_str);
    let now_ms = worker::unix_ms(now);
    let id = format!("test-{now_ms}");
    let payload = serde_json::json!({
        "id": id,
        "op": "test",
        "form": form,
        "data": {"message": "walhook test event"},
        "source": {
            "schema": "",
            "table": "",
            "lsn": "0/0",
            "xid": 0,
            "commit_time": humantime::format_rfc3339_micros(now).to_string(),
        },
    });
    StoredEvent {
        seq: 0,
        id,
        op: "test".to_owned(),
        form: form.to_owned(),
        commit_lsn: 0,
        payload: payload.to_string().into_bytes(),
        stored_at_ms: now_ms,
        key: None,
    }
}
