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

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, StartFrom, SubscriptionConfig};
use crate::delivery::{Deliveries, DeliveryError};
use crate::event::mapping::FormMapper;
use crate::exit;
use crate::source::capture::{heartbeat, Capture};
use crate::source::setup::{self, CheckLine};
use crate::source::{ConnParams, SourceError};
use crate::store::{Append, Start, Store, StoreError};

/// Items queued between capture and the store writer. Each item is at most
/// one chunk (≈2 MB or 1024 events), so this bounds that queue's memory.
const WRITER_QUEUE_ITEMS: usize = 8;

/// The writer groups what is queued into one SQLite transaction (one fsync)
/// up to this many items.
const GROUP_COMMIT_ITEMS: usize = 64;

/// How often the supervisor looks for replay requests filed by `walhook replay`.
const REPLAY_POLL: Duration = Duration::from_secs(1);

/// How often retention cleanup and the backlog check run.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);

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
            Error::Config(_) | Error::Usage(_) => exit::CONFIG,
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
                text: format!("connected to {}", params.target()),
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
    setup::preflight(cfg, &client, report).await?;
    Ok(())
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
pub async fn replay(cfg: &Config, name: &str, what: Replay) -> Result<(), Error> {
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
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            println!("replay of '{name}' filed (request {id}); the running walhook has not applied it yet");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Observers and inputs for embedding (the binary, tests, the demo).
#[derive(Default)]
pub struct Hooks {
    /// called each time replication starts streaming
    pub on_streaming: Option<Arc<dyn Fn() + Send + Sync>>,
    /// new configurations to apply to the subscriptions (SIGHUP)
    pub reload: Option<mpsc::Receiver<Config>>,
}

/// Runs walhook until `token` is cancelled or a task fails.
pub async fn run(cfg: Config, token: CancellationToken, hooks: Hooks) -> Result<(), Error> {
    let cfg = Arc::new(cfg);
    let params = ConnParams::from_config(&cfg.source)?;

    let client = connect_with_retry(&params, &cfg, &token).await?;
    let Some(client) = client else {
        return Ok(());
    };
    let mut lines = Vec::new();
    let preflight = setup::preflight(&cfg, &client, &mut |line| lines.push(line)).await;
    for line in &lines {
        if line.ok {
            tracing::info!("check: {}", line.text);
        } else {
            tracing::error!("check failed: {}", line.text);
        }
    }
    let resolved = preflight?;

    let store_path = cfg.store.path.clone();
    let store = blocking(move || Store::open(&store_path)).await?;
    let durable = {
        let s = store.clone();
        blocking(move || s.durable_lsn()).await?
    };
    setup::ensure_publication(&cfg, &client).await?;
    setup::ensure_slot(&cfg, &client, durable).await?;
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

    let (writer_tx, writer_rx) = mpsc::channel::<Append>(WRITER_QUEUE_ITEMS);
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
    let deliveries = Deliveries::new(store.clone(), &cfg.delivery, seq_rx, token.clone())?;
    let workers = Workers::start(&deliveries, &cfg.subscriptions, &token)?;

    let mut tasks: JoinSet<Result<(), Error>> = JoinSet::new();
    {
        let store = store.clone();
        let token = token.clone();
        tasks.spawn(async move { store_writer(store, writer_rx, durable_tx, seq_tx, token).await });
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
        );
        if let Some(f) = hooks.on_streaming.clone() {
            capture = capture.on_streaming(move || f());
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
        let store = store.clone();
        let token = token.clone();
        let reload = hooks.reload;
        let running = cfg.clone();
        tasks.spawn(
            async move { supervise(workers, deliveries, store, running, reload, token).await },
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
/// the process-wide one) so a reload can stop and restart them.
struct Workers {
    set: JoinSet<Result<(), DeliveryError>>,
    stops: Vec<CancellationToken>,
}

impl Workers {
    /// Builds every enabled subscription's worker (all or none), then spawns them.
    fn start(
        deliveries: &Deliveries,
        subs: &[SubscriptionConfig],
        token: &CancellationToken,
    ) -> Result<Workers, DeliveryError> {
        let mut futures = Vec::new();
        let mut stops = Vec::new();
        for sub in subs.iter().filter(|s| s.enabled) {
            let stop = token.child_token();
            futures.push(deliveries.worker_until(sub, stop.clone())?);
            stops.push(stop);
        }
        let mut set = JoinSet::new();
        for f in futures {
            set.spawn(f);
        }
        Ok(Workers { set, stops })
    }

    /// Stops every worker and waits until each has flushed its place.
    async fn stop(mut self) -> Result<(), DeliveryError> {
        for stop in &self.stops {
            stop.cancel();
        }
        let mut first = Ok(());
        while let Some(joined) = self.set.join_next().await {
            if let Ok(Err(e)) = joined {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

/// Runs the delivery workers and applies reloaded configurations: every
/// worker is stopped (each flushes its cursor), new subscriptions get their
/// place, and the enabled ones start again from where they were. Capture is
/// never touched; changes to `[source]`, `[store]` or `[[tables]]` need a
/// restart and are reported as such.
async fn supervise(
    mut workers: Workers,
    deliveries: Deliveries,
    store: Store,
    mut running: Arc<Config>,
    mut reload: Option<mpsc::Receiver<Config>>,
    token: CancellationToken,
) -> Result<(), Error> {
    let mut replay_check = tokio::time::interval(REPLAY_POLL);
    replay_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next = async {
            match reload.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = token.cancelled() => break,
            _ = replay_check.tick() => {
                let s = store.clone();
                let pending = blocking(move || s.pending_replays()).await?;
                if pending.is_empty() {
                    continue;
                }
                // Rewinds happen while no worker runs, so no worker's
                // in-memory position can overwrite them.
                workers.stop().await?;
                for req in pending {
                    let s = store.clone();
                    let r = req.clone();
                    let outcome = blocking(move || s.apply_replay(&r)).await?;
                    tracing::info!(subscription = %req.subscription, request = req.id, requeued = outcome.requeued, "replay: {}", outcome.summary);
                }
                workers = Workers::start(&deliveries, &running.subscriptions, &token)?;
            }
            joined = workers.set.join_next(), if !workers.set.is_empty() => {
                // A worker ends by itself only when it disabled its
                // subscription (410 Gone or disable_after; Ok) or on a store error.
                if let Some(Ok(Err(e))) = joined {
                    return Err(e.into());
                }
            }
            new = next => {
                let Some(new) = new else {
                    reload = None;
                    continue;
                };
                if needs_restart(&running, &new) {
                    tracing::warn!("config reload: [source], [store], [delivery] and [[tables]] changes take effect only after a restart; applying the subscription changes");
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
            }
        }
    }
    workers.stop().await?;
    Ok(())
}

/// Whether `new` changes anything outside `[[subscriptions]]` that matters.
fn needs_restart(old: &Config, new: &Config) -> bool {
    old.source.url.expose() != new.source.url.expose()
        || old.source.slot != new.source.slot
        || old.source.publication != new.source.publication
        || old.store.path != new.store.path
        || old.delivery != new.delivery
        || old.tables != new.tables
}

/// Connects for SQL, retrying transient failures with backoff; `None` when
/// cancelled meanwhile.
async fn connect_with_retry(
    params: &ConnParams,
    cfg: &Config,
    token: &CancellationToken,
) -> Result<Option<tokio_postgres::Client>, Error> {
    let mut attempt: u32 = 0;
    loop {
        match params.connect_sql().await {
            Ok(c) => return Ok(Some(c)),
            Err(e) if e.is_transient() && attempt + 1 < cfg.source.max_connect_attempts => {
                attempt += 1;
                let delay = Duration::from_millis(250u64 << attempt.min(7));
                tracing::warn!(error = %e, attempt, delay_ms = delay.as_millis() as u64, "cannot connect to PostgreSQL; retrying");
                tokio::select! {
                    biased;
                    _ = token.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => return Err(e.into()),
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
    mut rx: mpsc::Receiver<Append>,
    durable_tx: watch::Sender<u64>,
    seq_tx: watch::Sender<i64>,
    token: CancellationToken,
) -> Result<(), Error> {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < GROUP_COMMIT_ITEMS {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let has_commit = batch.iter().any(|i| matches!(i, Append::Commit { .. }));
        let (durable, last_seq) = append_until_written(&store, Arc::new(batch), &token).await?;
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
/// returns the durable LSN and the last seq after it. Any other store error,
/// or shutdown while paused, ends walhook (exit 5) with nothing of the batch
/// acknowledged: Postgres sends it again after the restart.
async fn append_until_written(
    store: &Store,
    batch: Arc<Vec<Append>>,
    token: &CancellationToken,
) -> Result<(Option<u64>, i64), Error> {
    let mut failures: u32 = 0;
    let mut paused_at: Option<tokio::time::Instant> = None;
    loop {
        let (s, b) = (store.clone(), batch.clone());
        let result = tokio::task::spawn_blocking(move || {
            let durable = s.append(&b)?;
            Ok::<_, StoreError>((durable, s.last_seq()?))
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
/// subscription has passed, and warns about backlogs over `store.max_backlog`.
async fn housekeeping(
    store: Store,
    cfg: Arc<Config>,
    token: CancellationToken,
) -> Result<(), Error> {
    let retention = cfg.store.retention.get();
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
        let (deleted, backlogs) = blocking(move || {
            let deleted = s.prune(retention, now_ms, &names)?;
            let mut backlogs = Vec::new();
            if max_backlog.is_some() {
                for name in &names {
                    if s.subscription(name)?.is_some() {
                        backlogs.push((name.clone(), s.backlog(name)?));
                    }
                }
            }
            Ok((deleted, backlogs))
        })
        .await?;
        if deleted > 0 {
            tracing::info!(deleted, "retention cleanup");
        }
        if let Some(max) = max_backlog {
            for (name, backlog) in backlogs.into_iter().filter(|(_, b)| *b > max) {
                tracing::warn!(subscription = %name, backlog, max_backlog = max, "backlog above store.max_backlog; the endpoint is not keeping up");
            }
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
