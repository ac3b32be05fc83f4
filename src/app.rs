//! Wires source → store → delivery, owns the tasks and the shutdown.
//!
//! Start-up is all-or-nothing: the config is valid, every preflight check
//! passes, the store opens (and is ours alone), the publication and then the
//! slot exist; only then do tasks start. Any task failing stops the others;
//! the error that caused it (not the knock-on "store writer stopped") is what
//! is reported and decides the exit code.
//!
//! Shutdown (SIGTERM/SIGINT cancel the token): capture stops reading, waits
//! for the writer to make everything durable and sends the final LSN;
//! delivery workers stop taking events and finish in-flight requests within
//! `delivery.shutdown_grace`; the writer drains its queue and exits when
//! capture drops its sender.
//!
//! The admin server (`admin`) starts first, before the database is even
//! reached, so `/healthz` answers and `/readyz` says why walhook is not
//! ready yet; it stops last. Its pause, resume and replay requests are
//! carried out by the supervisor, which owns the delivery workers and
//! stops or starts one subscription's worker at a time.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminContext, AdminError, Attached, Control};
use crate::config::{Config, ConfigError, StartFrom, SubscriptionConfig};
use crate::delivery::{Deliveries, DeliveryError};
use crate::event::mapping::FormMapper;
use crate::exit;
use crate::health::{Health, SlotSample};
use crate::metrics::Metrics;
use crate::source::capture::{heartbeat, Capture};
use crate::source::setup::{self, CheckLine};
use crate::source::{ConnParams, SourceError};
use crate::store::queue::AppendReceiver;
use crate::store::replay::ReplayOutcome;
use crate::store::{Append, Start, Store, StoreError};

/// Payload bytes queued between capture and the store writer (see
/// [`crate::store::queue`]): enough for capture to keep decoding through an
/// fsync, small beside the memory target.
const WRITER_QUEUE_BYTES: usize = 4 * 1024 * 1024;

/// The writer groups what is queued into one SQLite transaction (one fsync)
/// up to this many items.
const GROUP_COMMIT_ITEMS: usize = 1024;

/// How often the supervisor looks for replay requests filed by `walhook replay`.
const REPLAY_POLL: Duration = Duration::from_secs(1);

/// How often retention cleanup (events and delivery history) and the
/// backlog check run; the first run is at start-up.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);

/// How often the slot's lag is sampled from PostgreSQL for metrics and the
/// status page: fresh enough for a dashboard, one cheap query per interval.
const SLOT_SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// How long one slot sample may take before it is abandoned.
const SLOT_SAMPLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Every error that can end walhook; [`Error::exit_code`] maps it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// bad configuration or usage
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// the database side
    #[error(transparent)]
    Source(#[from] SourceError),
    /// the local store
    #[error(transparent)]
    Store(#[from] StoreError),
    /// delivery
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
    /// the admin server cannot start
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// a usage error of the CLI
    #[error("{0}")]
    Usage(String),
    /// anything else (a bug)
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The process exit code for this error (DESIGN.md "CLI").
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) | Error::Usage(_) | Error::Admin(_) => exit::CONFIG,
            Error::Source(SourceError::SlotLost { .. }) => exit::SLOT_LOST,
            Error::Source(
                SourceError::Decode(_) | SourceError::Map(_) | SourceError::Internal(_),
            ) => exit::UNEXPECTED,
            Error::Source(SourceError::StoreGone) => exit::STORE,
            Error::Source(_) => exit::DATABASE,
            Error::Store(_) => exit::STORE,
            Error::Delivery(DeliveryError::Store { .. }) => exit::STORE,
            Error::Delivery(_) | Error::Internal(_) => exit::UNEXPECTED,
        }
    }

    /// The message for the user: the error, and for delivery errors (whose
    /// messages name the subscription but not the cause) each cause in turn,
    /// e.g. why `send-test` got no answer.
    pub fn report(&self) -> String {
        let mut text = self.to_string();
        if let Error::Delivery(err) = self {
            let mut cause = std::error::Error::source(err);
            while let Some(err) = cause {
                text.push_str(": ");
                text.push_str(&err.to_string());
                cause = err.source();
            }
        }
        text
    }

    /// Knock-on errors lose against their cause when several tasks fail.
    fn is_knock_on(&self) -> bool {
        matches!(self, Error::Source(SourceError::StoreGone))
    }
}

/// Connects and runs every preflight check, reporting one line per check.
pub async fn check(cfg: &Config, report: &mut (dyn FnMut(CheckLine) + Send)) -> Result<(), Error> {
    let params = ConnParams::from_config(&cfg.source)?;
    let client = match params.connect_sql().await {
        Ok(c) => {
            report(CheckLine {
                ok: true,
                text: params.describe_session(&c).await,
            });
            c
        }
        Err(e) => {
            report(CheckLine {
                ok: false,
                text: e.to_string(),
            });
            return Err(e.into());
        }
    };
    let expect = setup::SlotExpectation {
        durable: stored_durable_lsn(cfg).await,
        resync: false,
    };
    let preflight = setup::preflight(cfg, &client, expect, report).await;
    let replication = setup::check_replication_connection(cfg, &params).await;
    report(match &replication {
        Ok(text) => CheckLine {
            ok: true,
            text: text.clone(),
        },
        Err(e) => CheckLine {
            ok: false,
            text: e.to_string(),
        },
    });
    preflight?;
    replication?;
    Ok(())
}

/// The durable LSN of the configured store, read without its lock (so it
/// works beside a running walhook); None when there is no store yet or it
/// cannot be read (opening it for real reports that properly).
async fn stored_durable_lsn(cfg: &Config) -> Option<u64> {
    let dir = cfg.store.path.clone();
    tokio::task::spawn_blocking(move || {
        crate::store::inspect::StoreView::open(&dir)
            .and_then(|view| view.durable_lsn())
            .ok()
            .flatten()
    })
    .await
    .ok()
    .flatten()
}

/// How long `walhook replay` waits for a running walhook to apply its request.
const REPLAY_WAIT: Duration = Duration::from_secs(15);

/// What `walhook replay` puts back in front of a subscription.
#[derive(Debug, Clone, Copy)]
pub enum Replay {
    /// retained events stored within this long ago
    Since(Duration),
    /// its dead letters
    Dead,
}

/// Files a replay for `name` and reports what it re-queued.
/// A running walhook applies it within a second; without one, it is applied
/// here and now.
pub async fn replay(cfg: &Config, name: &str, what: Replay, wait: bool) -> Result<(), Error> {
    use crate::store::replay::{replay_outcome, submit_replay, ReplayKind};
    let dir = cfg.store.path.clone();
    let kind = match what {
        Replay::Since(ago) => ReplayKind::Since(
            now_ms().saturating_sub(i64::try_from(ago.as_millis()).unwrap_or(i64::MAX)),
        ),
        Replay::Dead => ReplayKind::Dead,
    };
    let (d, n) = (dir.clone(), name.to_string());
    let id = blocking(move || submit_replay(&d, &n, kind)).await?;
    // Not running: the lock is free, apply it ourselves.
    let d = dir.clone();
    match blocking(move || Store::open(&d)).await {
        Ok(store) => {
            let outcome = blocking(move || {
                let mut last = None;
                for req in store.pending_replays()? {
                    last = Some(store.apply_replay(&req)?);
                }
                Ok(last)
            })
            .await?;
            let summary = outcome.map_or("nothing to apply".to_string(), |o| o.summary);
            println!("replay of '{name}': {summary}; delivered when walhook runs");
            return Ok(());
        }
        Err(Error::Store(StoreError::Locked { .. })) => {}
        Err(e) => return Err(e),
    }
    let deadline = tokio::time::Instant::now() + REPLAY_WAIT;
    loop {
        let d = dir.clone();
        if let Some(summary) = blocking(move || replay_outcome(&d, id)).await? {
            println!("replay of '{name}': {summary} (applied by the running walhook)");
            if wait {
                follow_backlog(&dir, name).await?;
            }
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            println!("replay of '{name}' filed (request {id}); the running walhook has not applied it yet");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `walhook replay --wait`: prints the subscription's backlog as the running
/// walhook delivers it (a line when it changes, at most one a second), until
/// it is empty. An endpoint that is down keeps it waiting: Ctrl-C stops only
/// the watching.
async fn follow_backlog(dir: &std::path::Path, name: &str) -> Result<(), Error> {
    let mut last: Option<u64> = None;
    loop {
        let (d, n) = (dir.to_path_buf(), name.to_string());
        let backlog = blocking(move || {
            let view = crate::store::inspect::StoreView::open(&d)?;
            Ok(view
                .subscriptions()?
                .into_iter()
                .find(|s| s.state.name == n)
                .map_or(0, |s| s.backlog))
        })
        .await?;
        if backlog == 0 {
            println!("replay of '{name}': delivered, backlog 0");
            return Ok(());
        }
        if last != Some(backlog) {
            println!("replay of '{name}': {backlog} events left to deliver");
            last = Some(backlog);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Observers and inputs for embedding (the binary, tests, the demo).
#[derive(Default)]
pub struct Hooks {
    /// called each time replication starts streaming
    pub on_streaming: Option<Arc<dyn Fn() + Send + Sync>>,
    /// called with the reason when the receive watchdog finds the replication
    /// connection dead (it is then replaced), and with `None` once streaming
    /// resumes (health: "degraded")
    pub on_degraded: Option<Arc<dyn Fn(Option<String>) + Send + Sync>>,
    /// new configurations to apply to the subscriptions (SIGHUP)
    pub reload: Option<mpsc::Receiver<Config>>,
    /// `walhook run --resync`: the operator allows replacing a lost, missing
    /// or foreign-advanced slot (the changes in between are skipped and the
    /// gap recorded); without it such a slot stops walhook with exit code 4.
    pub resync: bool,
    /// a listener the admin server uses instead of binding `admin.listen`
    /// (tests and the demo bind `127.0.0.1:0` and know the port)
    pub admin_listener: Option<tokio::net::TcpListener>,
}

/// What the admin server and the tasks share: health, metrics, the running
/// config and, once the store is open, the store and the supervisor's inbox.
struct Observed {
    health: Health,
    metrics: Metrics,
    config: Arc<watch::Sender<Arc<Config>>>,
    attached: Arc<OnceLock<Attached>>,
}

/// Runs walhook until `token` is cancelled or a task fails.
pub async fn run(cfg: Config, token: CancellationToken, mut hooks: Hooks) -> Result<(), Error> {
    let cfg = Arc::new(cfg);
    let observed = Observed {
        health: Health::new(),
        metrics: Metrics::new(),
        config: Arc::new(watch::channel(cfg.clone()).0),
        attached: Arc::new(OnceLock::new()),
    };
    // Not a child of `token`: the admin server keeps answering (readyz:
    // not ready) while the rest drains, and stops last.
    let admin_stop = CancellationToken::new();
    let admin_task = if cfg.admin.enabled {
        let listener = match hooks.admin_listener.take() {
            Some(listener) => listener,
            None => admin::bind(&cfg.admin.listen).await?,
        };
        let ctx = AdminContext {
            health: observed.health.clone(),
            metrics: observed.metrics.clone(),
            config: observed.config.subscribe(),
            attached: observed.attached.clone(),
        };
        Some(tokio::spawn(admin::serve(
            listener,
            ctx,
            admin_stop.clone(),
        )))
    } else {
        None
    };
    let result = run_pipeline(cfg, token, hooks, &observed).await;
    observed.health.set_store_open(false);
    admin_stop.cancel();
    if let Some(task) = admin_task {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::error!(error = %err, "admin server stopped"),
            Err(err) => tracing::error!(error = %err, "admin server task failed"),
        }
    }
    result
}

async fn run_pipeline(
    cfg: Arc<Config>,
    token: CancellationToken,
    hooks: Hooks,
    observed: &Observed,
) -> Result<(), Error> {
    let health = observed.health.clone();
    let metrics = observed.metrics.clone();
    let params = ConnParams::from_config(&cfg.source)?;
    health.set_not_streaming("connecting to PostgreSQL");

    let client = connect_with_retry(&params, &cfg, &token).await?;
    let Some(client) = client else {
        return Ok(());
    };
    tracing::info!("{}", params.describe_session(&client).await);
    let mut lines = Vec::new();
    let expect = setup::SlotExpectation {
        durable: stored_durable_lsn(&cfg).await,
        resync: hooks.resync,
    };
    let preflight = setup::preflight(&cfg, &client, expect, &mut |line| lines.push(line)).await;
    for line in &lines {
        if line.ok {
            tracing::info!("check: {}", line.text);
        } else {
            tracing::error!("check failed: {}", line.text);
        }
    }
    let resolved = match preflight {
        Ok(resolved) => resolved,
        Err(err) => {
            health.set_not_streaming(format!("a start-up check failed: {err}"));
            return Err(err.into());
        }
    };
    // Before anything is created: a replication connection the server
    // refuses would otherwise fail only after the slot exists.
    match setup::check_replication_connection(&cfg, &params).await {
        Ok(text) => tracing::info!("check: {text}"),
        Err(e) if e.is_transient() => {
            tracing::warn!(error = %e, "replication connection not checked; capture will retry it");
        }
        Err(e) => {
            tracing::error!("check failed: {e}");
            health.set_not_streaming(format!("a start-up check failed: {e}"));
            return Err(e.into());
        }
    }

    let store_path = cfg.store.path.clone();
    let store = blocking(move || Store::open(&store_path)).await?;
    health.set_store_open(true);
    let durable = {
        let s = store.clone();
        blocking(move || s.durable_lsn()).await?
    };
    setup::ensure_publication(&cfg, &client).await?;
    let expect = setup::SlotExpectation {
        durable,
        resync: hooks.resync,
    };
    if let Some(resynced) = setup::ensure_slot(&cfg, &client, expect).await? {
        record_resync(&store, &cfg.source.slot, resynced).await?;
    }
    let durable = {
        let s = store.clone();
        blocking(move || s.durable_lsn()).await?
    };
    drop(client);

    let mut mapper = FormMapper::new(&cfg.tables);
    let schemas = {
        let s = store.clone();
        blocking(move || s.form_schemas()).await?
    };
    // With REPLICA IDENTITY FULL, Postgres flags every column as a key; the
    // catalog's primary key is the real one.
    for table in &resolved {
        mapper.seed_primary_key(&table.schema, &table.table, table.primary_key.clone());
    }

    let (writer_tx, writer_rx) = crate::store::queue::append_queue(WRITER_QUEUE_BYTES);
    let (durable_tx, durable_rx) = watch::channel(durable.unwrap_or(0));
    let last_seq = {
        let s = store.clone();
        blocking(move || s.last_seq()).await?
    };
    let (seq_tx, seq_rx) = watch::channel(last_seq);

    // Every subscription's place is fixed before capture appends anything:
    // a new subscription starts at the end of the log as it is now, not at
    // whatever capture appended before its worker got scheduled.
    ensure_places(&store, &cfg.subscriptions).await?;
    // Built before any task starts, so a bad secret or header leaves nothing running.
    let deliveries = Deliveries::new(store.clone(), &cfg.delivery, seq_rx, token.clone())?
        .with_metrics(metrics.clone());
    let workers = Workers::start(&deliveries, &cfg.subscriptions, &token)?;
    let (control_tx, control_rx) = mpsc::channel(admin::CONTROL_QUEUE);
    let _ = observed.attached.set(Attached {
        store: store.clone(),
        control: control_tx,
    });

    let mut tasks: JoinSet<Result<(), Error>> = JoinSet::new();
    {
        let store = store.clone();
        let metrics = metrics.clone();
        let health = health.clone();
        let token = token.clone();
        tasks.spawn(async move {
            let result = store_writer(store, writer_rx, durable_tx, seq_tx, metrics, token).await;
            if result.is_err() {
                health.set_store_open(false);
            }
            result
        });
    }
    {
        let mut capture = Capture::new(
            cfg.clone(),
            params.clone(),
            mapper,
            schemas,
            writer_tx,
            durable_rx,
            token.clone(),
        )
        .with_health(health.clone());
        if let Some(f) = hooks.on_streaming.clone() {
            capture = capture.on_streaming(move || f());
        }
        if let Some(f) = hooks.on_degraded.clone() {
            capture = capture.on_degraded(move |reason| f(reason));
        }
        tasks.spawn(async move { capture.run().await.map_err(Error::from) });
    }
    {
        let params = params.clone();
        let every = cfg.source.heartbeat.get();
        let token = token.clone();
        let (publication, slot) = (cfg.source.publication.clone(), cfg.source.slot.clone());
        tasks.spawn(async move {
            heartbeat(params, every, publication, slot, token)
                .await
                .map_err(Error::from)
        });
    }
    {
        let params = params.clone();
        let slot = cfg.source.slot.clone();
        let (health, metrics, token) = (health.clone(), metrics.clone(), token.clone());
        tasks.spawn(async move {
            sample_slot(params, slot, health, metrics, token).await;
            Ok(())
        });
    }
    {
        let store = store.clone();
        let token = token.clone();
        let inputs = Inputs {
            reload: hooks.reload,
            control: control_rx,
            config: observed.config.clone(),
        };
        let running = cfg.clone();
        tasks.spawn(
            async move { supervise(workers, deliveries, store, running, inputs, token).await },
        );
    }
    {
        let store = store.clone();
        let cfg = cfg.clone();
        let token = token.clone();
        tasks.spawn(async move { housekeeping(store, cfg, token).await });
    }

    let mut errors: Vec<Error> = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let result = match joined {
            Ok(r) => r,
            Err(join_err) => Err(Error::Internal(format!("a task failed: {join_err}"))),
        };
        if let Err(err) = result {
            if !token.is_cancelled() {
                tracing::error!(error = %err, "stopping walhook");
                token.cancel();
            }
            errors.push(err);
        }
    }
    match errors.iter().position(|e| !e.is_knock_on()) {
        Some(i) => Err(errors.swap_remove(i)),
        None => errors.into_iter().next().map_or(Ok(()), Err),
    }
}

/// Records a slot replaced by `--resync` in the store (which also moves the
/// durable LSN to the new slot's start) and writes the audit line.
async fn record_resync(store: &Store, slot: &str, resynced: setup::Resynced) -> Result<(), Error> {
    let reason = format!("slot {}: it {}", resynced.kind, resynced.state);
    let gap_from = setup::durable_text(resynced.old_durable);
    let gap_to = crate::event::lsn_text(resynced.new_lsn);
    {
        let (s, slot, reason) = (store.clone(), slot.to_string(), reason.clone());
        let (old, new) = (resynced.old_durable, resynced.new_lsn);
        blocking(move || s.record_resync(&slot, &reason, old, new)).await?;
    }
    tracing::warn!(
        audit = "resync",
        slot = %slot,
        reason = %reason,
        old_durable_lsn = %gap_from,
        new_slot_lsn = %gap_to,
        "resync: replaced the replication slot; changes committed between the old durable LSN and the new slot's start were not captured; events already stored are still delivered"
    );
    Ok(())
}

/// Creates the store's place (cursor) of every subscription it does not know
/// yet, at the end of the log or, with `start = "earliest"`, at its start.
///
/// It also re-enables every subscription that is `enabled` in the config but
/// was disabled by its endpoint (410 Gone) or by `disable_after`: this runs
/// at start-up and on each reload, so after fixing the endpoint an operator
/// re-enables it with a SIGHUP or a restart. Its cursor was kept, so it
/// resumes where it stopped.
async fn ensure_places(store: &Store, subs: &[SubscriptionConfig]) -> Result<(), Error> {
    let s = store.clone();
    let places: Vec<(String, Start, bool)> = subs
        .iter()
        .map(|sub| {
            let start = match sub.start {
                StartFrom::End => Start::End,
                StartFrom::Earliest => Start::Earliest,
            };
            (sub.name.clone(), start, sub.enabled)
        })
        .collect();
    blocking(move || {
        for (name, start, enabled) in places {
            let state = s.ensure_subscription(&name, start)?;
            if let (true, Some(reason)) = (enabled, state.disabled_reason) {
                s.set_disabled(&name, None)?;
                tracing::warn!(subscription = %name, was = %reason, "re-enabling a disabled subscription (the config says enabled = true); it resumes at its cursor");
            }
        }
        Ok(())
    })
    .await
}

/// The running delivery workers, each with its own stop token (a child of
/// the process-wide one) so the supervisor can stop and restart one
/// subscription (pause, resume, replay) or all of them (reload).
struct Workers {
    set: JoinSet<Result<(), DeliveryError>>,
    stops: HashMap<String, CancellationToken>,
    names: HashMap<tokio::task::Id, String>,
}

impl Workers {
    /// Builds every enabled subscription's worker (all or none), then spawns them.
    fn start(
        deliveries: &Deliveries,
        subs: &[SubscriptionConfig],
        token: &CancellationToken,
    ) -> Result<Workers, DeliveryError> {
        let mut prepared = Vec::new();
        for sub in subs.iter().filter(|s| s.enabled) {
            let stop = token.child_token();
            let future = deliveries.worker_until(sub, stop.clone())?;
            prepared.push((sub.name.clone(), stop, future));
        }
        let mut workers = Workers {
            set: JoinSet::new(),
            stops: HashMap::new(),
            names: HashMap::new(),
        };
        for (name, stop, future) in prepared {
            let id = workers.set.spawn(future).id();
            workers.names.insert(id, name.clone());
            workers.stops.insert(name, stop);
        }
        Ok(workers)
    }

    /// Starts the worker of `sub` unless it runs or is disabled in the config.
    fn start_one(
        &mut self,
        deliveries: &Deliveries,
        sub: &SubscriptionConfig,
        token: &CancellationToken,
    ) -> Result<(), DeliveryError> {
        if !sub.enabled || self.stops.contains_key(&sub.name) {
            return Ok(());
        }
        let stop = token.child_token();
        let future = deliveries.worker_until(sub, stop.clone())?;
        let id = self.set.spawn(future).id();
        self.names.insert(id, sub.name.clone());
        self.stops.insert(sub.name.clone(), stop);
        Ok(())
    }

    /// Stops the worker of `name` (if it runs) and waits until it flushed
    /// its place. A store error of any worker that ends meanwhile is returned.
    async fn stop_one(&mut self, name: &str) -> Result<(), DeliveryError> {
        let Some(stop) = self.stops.get(name) else {
            return Ok(());
        };
        stop.cancel();
        while let Some(joined) = self.set.join_next_with_id().await {
            let ended = self.ended(joined)?;
            if ended.as_deref() == Some(name) {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Forgets a worker that ended; its store error, if it had one.
    /// Returns its name.
    fn ended(
        &mut self,
        joined: Result<(tokio::task::Id, Result<(), DeliveryError>), tokio::task::JoinError>,
    ) -> Result<Option<String>, DeliveryError> {
        let (id, result) = match joined {
            Ok((id, result)) => (id, result),
            Err(err) => {
                let id = err.id();
                let subscription = self.names.get(&id).cloned().unwrap_or_default();
                tracing::error!(subscription = %subscription, error = %err, "a delivery worker panicked");
                // A panic is a bug: stop (exit 1) rather than run on silently
                // without this subscription's deliveries.
                let result = if err.is_panic() {
                    Err(DeliveryError::Worker {
                        subscription,
                        source: err,
                    })
                } else {
                    Ok(())
                };
                (id, result)
            }
        };
        let name = self.names.remove(&id);
        if let Some(name) = &name {
            self.stops.remove(name);
        }
        result.map(|()| name)
    }

    /// Stops every worker and waits until each has flushed its place.
    async fn stop(mut self) -> Result<(), DeliveryError> {
        for stop in self.stops.values() {
            stop.cancel();
        }
        let mut first = Ok(());
        while let Some(joined) = self.set.join_next_with_id().await {
            if let Err(e) = self.ended(joined) {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

/// What the supervisor listens to besides its workers.
struct Inputs {
    /// new configurations (SIGHUP)
    reload: Option<mpsc::Receiver<Config>>,
    /// pause, resume and replay from the admin API
    control: mpsc::Receiver<Control>,
    /// where the running config is published (for the admin API)
    config: Arc<watch::Sender<Arc<Config>>>,
}

/// Runs the delivery workers and applies reloaded configurations: every
/// worker is stopped (each flushes its cursor), new subscriptions get their
/// place, and the enabled ones start again from where they were. Capture is
/// never touched; changes to `[source]`, `[store]` or `[[tables]]` need a
/// restart and are reported as such. It also applies replay requests (filed
/// by `walhook replay`, polled, or by the admin API) and pauses or resumes
/// single subscriptions for the admin API.
async fn supervise(
    mut workers: Workers,
    deliveries: Deliveries,
    store: Store,
    mut running: Arc<Config>,
    mut inputs: Inputs,
    token: CancellationToken,
) -> Result<(), Error> {
    let mut replay_check = tokio::time::interval(REPLAY_POLL);
    replay_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut control_open = true;
    loop {
        let next = async {
            match inputs.reload.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = token.cancelled() => break,
            _ = replay_check.tick() => {
                apply_replays(&mut workers, &deliveries, &store, &running, &token).await?;
            }
            control = inputs.control.recv(), if control_open => {
                let Some(control) = control else {
                    control_open = false;
                    continue;
                };
                match control {
                    Control::Pause { name, reply } => {
                        let s = store.clone();
                        let n = name.clone();
                        if let Err(err) = blocking(move || s.set_paused(&n, true)).await {
                            let _ = reply.send(Err(err.to_string()));
                            continue;
                        }
                        workers.stop_one(&name).await?;
                        tracing::info!(subscription = %name, "subscription paused (admin API); it stays paused across restarts until resumed");
                        let _ = reply.send(Ok(()));
                    }
                    Control::Resume { name, reply } => {
                        let s = store.clone();
                        let n = name.clone();
                        if let Err(err) = blocking(move || s.set_paused(&n, false)).await {
                            let _ = reply.send(Err(err.to_string()));
                            continue;
                        }
                        if let Some(sub) = running.subscriptions.iter().find(|s| s.name == name) {
                            workers.start_one(&deliveries, sub, &token)?;
                        }
                        tracing::info!(subscription = %name, "subscription resumed (admin API)");
                        let _ = reply.send(Ok(()));
                    }
                    Control::ApplyReplays { reply } => {
                        let applied = apply_replays(&mut workers, &deliveries, &store, &running, &token).await?;
                        let _ = reply.send(applied);
                    }
                }
            }
            joined = workers.set.join_next_with_id(), if !workers.set.is_empty() => {
                // A worker ends by itself only when its subscription is
                // disabled (410 Gone, disable_after) or paused (Ok), or on a
                // store error.
                if let Some(joined) = joined {
                    workers.ended(joined)?;
                }
            }
            new = next => {
                let Some(new) = new else {
                    inputs.reload = None;
                    continue;
                };
                if needs_restart(&running, &new) {
                    tracing::warn!("config reload: [source], [store], [delivery], [admin], [log] and [[tables]] changes take effect only after a restart; applying the subscription changes");
                }
                // Validate what can fail before stopping anything.
                let probe: Result<Vec<_>, _> = new
                    .subscriptions
                    .iter()
                    .filter(|s| s.enabled)
                    .map(|s| deliveries.worker_until(s, CancellationToken::new()).map(drop))
                    .collect();
                if let Err(e) = probe {
                    tracing::error!(error = %e, "config reload rejected; keeping the running subscriptions");
                    continue;
                }
                workers.stop().await?;
                ensure_places(&store, &new.subscriptions).await?;
                workers = Workers::start(&deliveries, &new.subscriptions, &token)?;
                tracing::info!(
                    subscriptions = new.subscriptions.len(),
                    enabled = new.subscriptions.iter().filter(|s| s.enabled).count(),
                    "config reloaded"
                );
                running = Arc::new(new);
                inputs.config.send_replace(running.clone());
            }
        }
    }
    workers.stop().await?;
    Ok(())
}

/// Applies the pending replay requests: stops the workers of the
/// subscriptions concerned (so no in-memory position overwrites a rewind),
/// applies the requests in order, and starts those workers again.
async fn apply_replays(
    workers: &mut Workers,
    deliveries: &Deliveries,
    store: &Store,
    running: &Config,
    token: &CancellationToken,
) -> Result<Vec<(i64, ReplayOutcome)>, Error> {
    let s = store.clone();
    let pending = blocking(move || s.pending_replays()).await?;
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    let names: BTreeSet<String> = pending.iter().map(|r| r.subscription.clone()).collect();
    for name in &names {
        workers.stop_one(name).await?;
    }
    let mut applied = Vec::with_capacity(pending.len());
    for req in pending {
        let s = store.clone();
        let r = req.clone();
        let outcome = blocking(move || s.apply_replay(&r)).await?;
        tracing::info!(subscription = %req.subscription, request = req.id, requeued = outcome.requeued, "replay: {}", outcome.summary);
        applied.push((req.id, outcome));
    }
    for name in &names {
        if let Some(sub) = running.subscriptions.iter().find(|s| &s.name == name) {
            workers.start_one(deliveries, sub, token)?;
        }
    }
    Ok(applied)
}

/// Whether `new` changes anything outside `[[subscriptions]]` that matters.
fn needs_restart(old: &Config, new: &Config) -> bool {
    old.source.url.expose() != new.source.url.expose()
        || old.source.slot != new.source.slot
        || old.source.publication != new.source.publication
        || old.store.path != new.store.path
        || old.delivery != new.delivery
        || old.tables != new.tables
        || old.log != new.log
        || old.store.history_retention != new.store.history_retention
        || old.admin.enabled != new.admin.enabled
        || old.admin.listen != new.admin.listen
        || old.admin.allow != new.admin.allow
        || old.admin.token.as_ref().map(|t| t.expose())
            != new.admin.token.as_ref().map(|t| t.expose())
}

/// Connects for SQL, retrying transient failures with backoff; `None` when
/// cancelled meanwhile.
async fn connect_with_retry(
    params: &ConnParams,
    cfg: &Config,
    token: &CancellationToken,
) -> Result<Option<tokio_postgres::Client>, Error> {
    let max = cfg.source.max_connect_attempts.max(1);
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        let err = tokio::select! {
            biased;
            _ = token.cancelled() => return Ok(None),
            connected = params.connect_sql() => match connected {
                Ok(c) => return Ok(Some(c)),
                Err(e) => e,
            },
        };
        // Authentication and configuration problems need a person: retrying
        // would only add failed logins to the server's log.
        if !err.is_transient() {
            return Err(err.into());
        }
        if attempt >= max {
            return Err(SourceError::GaveUp {
                attempts: attempt,
                last: Box::new(err),
            }
            .into());
        }
        // Exponential with jitter, sleeping (not polling) in between.
        let delay = crate::source::capture::reconnect_delay(attempt);
        tracing::warn!(error = %err, attempt, max_attempts = max, delay_ms = delay.as_millis() as u64, "cannot connect to PostgreSQL; retrying");
        tokio::select! {
            biased;
            _ = token.cancelled() => return Ok(None),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Runs a blocking store call off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("store task failed: {e}")))?
        .map_err(Error::from)
}

/// Appends what capture hands over, grouping whatever is queued into one
/// SQLite transaction, and publishes the durable LSN and the last sequence
/// number only after that transaction committed (fsynced).
///
/// A full store (disk full, SQLITE_FULL) pauses instead of stopping walhook:
/// the batch is retried with backoff until it fits ([`append_until_written`]).
/// Meanwhile capture blocks on this task's bounded queue, the replication
/// client stops reading (TCP backpressure holds Postgres' walsender) and
/// keeps reporting the unchanged durable LSN, so nothing past the last
/// durable transaction is acknowledged and Postgres keeps the WAL.
async fn store_writer(
    store: Store,
    mut rx: AppendReceiver,
    durable_tx: watch::Sender<u64>,
    seq_tx: watch::Sender<i64>,
    metrics: Metrics,
    token: CancellationToken,
) -> Result<(), Error> {
    while let Some(first) = rx.recv().await {
        // The permits go back to capture's budget only once the batch is
        // written, so what waits here and what is being written share it.
        let mut permits = Vec::new();
        let mut batch = vec![first.item];
        permits.push(first.permit);
        while batch.len() < GROUP_COMMIT_ITEMS {
            match rx.try_recv() {
                Some(q) => {
                    batch.push(q.item);
                    permits.push(q.permit);
                }
                None => break,
            }
        }
        // Counted per (form, op) before the batch moves to the store thread.
        let mut captured: HashMap<(&str, &str), u64> = HashMap::new();
        for item in &batch {
            if let Append::Events(events) = item {
                for event in events {
                    *captured.entry((&event.form, &event.op)).or_default() += 1;
                }
            }
        }
        for ((form, op), n) in captured {
            metrics.captured(form, op, n);
        }
        let has_commit = batch.iter().any(|i| matches!(i, Append::Commit { .. }));
        let (durable, last_seq, inserted) =
            append_until_written(&store, Arc::new(batch), &token).await?;
        drop(permits);
        metrics.stored(inserted);
        if has_commit && crate::failpoint::failpoint!("after_store_commit_before_ack") {
            return Err(Error::Internal(
                "failpoint after_store_commit_before_ack: simulated writer failure".into(),
            ));
        }
        if let Some(lsn) = durable {
            durable_tx.send_if_modified(|cur| {
                let raised = lsn > *cur;
                if raised {
                    *cur = lsn;
                }
                raised
            });
        }
        seq_tx.send_if_modified(|cur| {
            let raised = last_seq > *cur;
            if raised {
                *cur = last_seq;
            }
            raised
        });
    }
    Ok(())
}

/// Appends `batch` (one transaction), retrying while the store is full;
/// returns the durable LSN, the last seq after it and how many events were
/// new. Any other store error,
/// or shutdown while paused, ends walhook (exit 5) with nothing of the batch
/// acknowledged: Postgres sends it again after the restart.
async fn append_until_written(
    store: &Store,
    batch: Arc<Vec<Append>>,
    token: &CancellationToken,
) -> Result<(Option<u64>, i64, u64), Error> {
    let mut failures: u32 = 0;
    let mut paused_at: Option<tokio::time::Instant> = None;
    loop {
        let (s, b) = (store.clone(), batch.clone());
        let result = tokio::task::spawn_blocking(move || {
            let (durable, inserted) = s.append_counted(&b)?;
            Ok::<_, StoreError>((durable, s.last_seq()?, inserted))
        })
        .await
        .map_err(|e| Error::Internal(format!("store task failed: {e}")))?;
        let err = match result {
            Ok(written) => {
                if let Some(at) = paused_at {
                    tracing::warn!(
                        paused_ms = at.elapsed().as_millis() as u64,
                        "the store is writable again; replication resumes"
                    );
                }
                return Ok(written);
            }
            Err(err) if err.is_full() => err,
            Err(err) => return Err(err.into()),
        };
        failures += 1;
        paused_at.get_or_insert_with(tokio::time::Instant::now);
        let durable = store.durable_lsn()?.unwrap_or(0);
        let delay = crate::store::full_retry_delay(failures);
        tracing::error!(
            error = %err,
            durable_lsn = %crate::event::lsn_text(durable),
            attempt = failures,
            retry_in_ms = delay.as_millis() as u64,
            "the store is full: replication is paused and Postgres is acknowledged nothing past the durable LSN; free space on the store's filesystem and walhook resumes by itself"
        );
        tokio::select! {
            biased;
            _ = token.cancelled() => return Err(err.into()),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Periodic store upkeep: deletes events past retention that every
/// subscription has passed and delivery history past
/// `store.history_retention`, and warns about backlogs over `store.max_backlog`.
async fn housekeeping(
    store: Store,
    cfg: Arc<Config>,
    token: CancellationToken,
) -> Result<(), Error> {
    let retention = cfg.store.retention.get();
    let history_retention = cfg.store.history_retention.get();
    let max_backlog = cfg.store.max_backlog;
    let names: Vec<String> = cfg.subscriptions.iter().map(|s| s.name.clone()).collect();
    let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = token.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let s = store.clone();
        let names = names.clone();
        let now_ms = now_ms();
        let (deleted, history, backlogs) = blocking(move || {
            let deleted = s.prune(retention, now_ms, &names)?;
            let history = s.prune_history(history_retention, now_ms)?;
            let mut backlogs = Vec::new();
            if max_backlog.is_some() {
                for name in &names {
                    if s.subscription(name)?.is_some() {
                        backlogs.push((name.clone(), s.backlog(name)?));
                    }
                }
            }
            Ok((deleted, history, backlogs))
        })
        .await?;
        if deleted > 0 {
            tracing::info!(deleted, "retention cleanup");
        }
        if history > 0 {
            tracing::info!(
                deleted = history,
                "delivery history cleanup (store.history_retention)"
            );
        }
        if let Some(max) = max_backlog {
            for (name, backlog) in backlogs.into_iter().filter(|(_, b)| *b > max) {
                tracing::warn!(subscription = %name, backlog, max_backlog = max, "backlog above store.max_backlog; the endpoint is not keeping up");
            }
        }
    }
}

/// Samples the slot (lag in bytes and seconds, confirmed LSN, WAL status)
/// every [`SLOT_SAMPLE_EVERY`] into `health` and `metrics`. Failures are
/// logged at debug level and retried with a new connection: capture reports
/// a database that is really gone.
async fn sample_slot(
    params: ConnParams,
    slot: String,
    health: Health,
    metrics: Metrics,
    token: CancellationToken,
) {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut tick = tokio::time::interval(SLOT_SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        let sample = async {
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                client = Some(params.connect_sql().await?);
            }
            let Some(c) = &client else {
                return Ok(None);
            };
            c.query_opt(
                "SELECT s.active, (pg_current_wal_lsn() - s.confirmed_flush_lsn)::int8,
                        extract(epoch FROM r.flush_lag)::float8,
                        (s.confirmed_flush_lsn - '0/0'::pg_lsn)::int8, s.wal_status
                 FROM pg_replication_slots s
                 LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid
                 WHERE s.slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|source| SourceError::Sql {
                context: "sample the replication slot".into(),
                source,
            })
        };
        let result = tokio::select! {
            biased;
            _ = token.cancelled() => return,
            r = tokio::time::timeout(SLOT_SAMPLE_TIMEOUT, sample) => r,
        };
        let now = now_ms();
        let sampled = match result {
            Ok(Ok(Some(row))) => {
                let active: bool = row.get(0);
                let flush_lag: Option<f64> = row.get(2);
                let confirmed: Option<i64> = row.get(3);
                SlotSample {
                    exists: true,
                    active,
                    lag_bytes: row.get(1),
                    // Postgres clears flush_lag once the client caught up.
                    lag_seconds: active.then(|| flush_lag.unwrap_or(0.0)),
                    confirmed_flush_lsn: confirmed.and_then(|l| u64::try_from(l).ok()),
                    wal_status: row.get(4),
                    sampled_at_ms: now,
                }
            }
            Ok(Ok(None)) => SlotSample {
                sampled_at_ms: now,
                ..SlotSample::default()
            },
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "cannot sample the replication slot");
                client = None;
                continue;
            }
            Err(_) => {
                tracing::debug!("sampling the replication slot timed out");
                client = None;
                continue;
            }
        };
        metrics.set_slot(
            sampled.lag_bytes,
            sampled.lag_seconds,
            sampled.confirmed_flush_lsn,
        );
        let state = health.snapshot();
        metrics.set_replication(state.streaming, state.reconnects);
        health.set_slot(sampled);
        metrics.upkeep();
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
