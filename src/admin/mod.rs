//! The admin HTTP server: health, Prometheus metrics, the JSON API and a
//! status page, on `admin.listen` (default `127.0.0.1:9187`).
//!
//! Routes (`routes`): `GET /healthz` (the process is up), `GET /readyz`
//! (200 only while replication streams and the store is open, else 503
//! with the reason), `GET /metrics`, `GET /` (the status page, `page`),
//! `GET /api/subscriptions[/NAME]`, `GET /api/deliveries` (the attempt
//! history), and the mutating `POST /api/subscriptions/NAME/{replay,test,
//! pause,resume}`.
//!
//! Access: `admin.allow` (CIDRs) is enforced at accept time, so a client
//! outside it never gets to send a byte; with `admin.token` every route but
//! `/healthz` and `/readyz` needs `Authorization: Bearer <token>` (401 and
//! the `walhook_admin_unauthorized_total` counter otherwise). Every mutating
//! call is logged as an audit line (target `walhook::audit`) with the
//! caller's address. Every error is a JSON body `{"error": "..."}`.
//!
//! The server starts before walhook connects to PostgreSQL, so `/healthz`
//! answers (and `/readyz` says why it is not ready) during start-up; the
//! routes that need the store answer 503 until it is open ([`Attached`]).
//! Pause, resume and replay are carried out by the app's supervisor, which
//! owns the delivery workers ([`Control`]).

mod page;
mod routes;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::store::replay::ReplayOutcome;
use crate::store::Store;

/// Requests queued from the API to the supervisor; a handful suffices since
/// each caller waits for its answer.
pub const CONTROL_QUEUE: usize = 16;

/// How long open admin connections get to finish when walhook stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why the admin server cannot run.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// `admin.listen` cannot be bound.
    #[error("admin.listen {listen}: cannot listen ({source}); choose a free address or set admin.enabled = false")]
    Bind {
        /// The configured address.
        listen: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP client for test deliveries cannot be built.
    #[error("admin server: cannot build the HTTP client for test deliveries")]
    Client(#[source] crate::delivery::DeliveryError),
    /// The server failed while running.
    #[error("admin server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// What the API asks the supervisor (which owns the workers) to do.
#[derive(Debug)]
pub enum Control {
    /// Pause the subscription: mark it in the store, stop its worker.
    Pause {
        /// The subscription.
        name: String,
        /// Done, or why not.
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Resume the subscription: clear the mark, start its worker.
    Resume {
        /// The subscription.
        name: String,
        /// Done, or why not.
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Apply the filed replay requests now (instead of at the next poll).
    ApplyReplays {
        /// The applied requests by id.
        reply: oneshot::Sender<Vec<(i64, ReplayOutcome)>>,
    },
}

/// What the API needs once the store is open and the workers run.
#[derive(Debug, Clone)]
pub struct Attached {
    /// The open store.
    pub store: Store,
    /// Requests to the supervisor.
    pub control: mpsc::Sender<Control>,
}

/// Everything the admin server reads.
#[derive(Clone)]
pub struct AdminContext {
    /// Replication and store state.
    pub health: Health,
    /// The metrics it renders.
    pub metrics: Metrics,
    /// The running config (replaced on reload).
    pub config: watch::Receiver<Arc<Config>>,
    /// Set once the store is open and the supervisor runs.
    pub attached: Arc<OnceLock<Attached>>,
}

/// Binds `admin.listen`.
pub async fn bind(listen: &str) -> Result<TcpListener, AdminError> {
    TcpListener::bind(listen)
        .await
        .map_err(|source| AdminError::Bind {
            listen: listen.to_owned(),
            source,
        })
}

/// Serves the admin routes on `listener` until `shutdown` is cancelled.
/// Token and allow list are taken from the config at start.
pub async fn serve(
    listener: TcpListener,
    ctx: AdminContext,
    shutdown: CancellationToken,
) -> Result<(), AdminError> {
    let cfg = ctx.config.borrow().clone();
    // Validated at load; should an entry not parse here, refuse to serve
    // rather than fall back to "anyone may connect".
    let allow = cfg.admin.allowed_networks().map_err(|(i, entry)| {
        AdminError::Serve(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("admin.allow[{i}] {entry:?} is not a network"),
        ))
    })?;
    let client = crate::delivery::build_client(&cfg.delivery).map_err(AdminError::Client)?;
    let addr = listener.local_addr().map_err(AdminError::Serve)?;
    tracing::info!(
        addr = %addr,
        token = cfg.admin.token.is_some(),
        allow = ?cfg.admin.allow,
        "admin server listening (status page, /healthz, /readyz, /metrics, /api)"
    );
    let app = routes::router(routes::State::new(
        ctx.clone(),
        cfg.admin.token.clone(),
        client,
    ));
    let listener = Filtered {
        inner: listener,
        allow: Arc::new(allow),
        metrics: ctx.metrics.clone(),
    };
    let stopped = shutdown.clone();
    let server = axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
        .with_graceful_shutdown(async move { stopped.cancelled().await });
    // Graceful shutdown waits for open connections; a client that keeps one
    // busy must not hold walhook's exit.
    let server = std::future::IntoFuture::into_future(server);
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result.map_err(AdminError::Serve),
        () = async { shutdown.cancelled().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => Ok(()),
    }
}

/// The caller's address, as handlers see it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub(crate) SocketAddr);

impl Connected<IncomingStream<'_, Filtered>> for Peer {
    fn connect_info(stream: IncomingStream<'_, Filtered>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// A listener that closes connections from outside `admin.allow` at once.
pub(crate) struct Filtered {
    inner: TcpListener,
    allow: Arc<Vec<ipnet::IpNet>>,
    metrics: Metrics,
}

impl Filtered {
    fn allows(&self, addr: &SocketAddr) -> bool {
        let ip = addr.ip().to_canonical();
        self.allow.is_empty() || self.allow.iter().any(|net| net.contains(&ip))
    }
}

impl axum::serve::Listener for Filtered {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
            if self.allows(&addr) {
                return (stream, addr);
            }
            // Debug only: a scan must not flood the log; the counter shows it.
            self.metrics.rejected();
            tracing::debug!(client = %addr, "admin connection refused: not in admin.allow");
            drop(stream);
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl std::fmt::Debug for Filtered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filtered")
            .field("allow", &self.allow)
            .finish_non_exhaustive()
    }
}
