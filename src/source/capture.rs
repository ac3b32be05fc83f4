//! The replication session: pgoutput in, store appends out.
//!
//! # Progress tracking (the acknowledgement rule)
//!
//! Capture never decides what Postgres may forget. It sends, in stream order,
//! `Append` items to the store writer: event chunks, then `Commit { end_lsn }`
//! when a transaction's Commit message arrives, or `Progress { lsn }` for
//! positions outside any transaction (keepalives, heartbeat messages). The
//! writer appends them in one SQLite transaction per group (fsynced, WAL mode,
//! `synchronous=FULL`) and only then publishes the new durable LSN on a
//! `watch` channel; capture forwards that value, and only that value, to
//! pgwire-replication's `update_applied_lsn`, whose background worker reports
//! it to the server and answers keepalives even while we are busy.
//!
//! - Only commit `end_lsn`s (never an LSN from inside a transaction) and
//!   positions seen while no transaction is open are ever acknowledged.
//! - A transaction cut off by a disconnect is simply dropped on our side:
//!   nothing of it was acknowledged, so Postgres sends it again from BEGIN;
//!   events already appended are ignored by their unique ids.
//! - A keepalive's `wal_end` outside a transaction is safe to acknowledge:
//!   everything before it was already handed to the writer (in order), so it
//!   is durable by the time the writer reports it. This keeps an idle slot
//!   moving; the heartbeat (`pg_logical_emit_message`) makes sure there is
//!   something to move to when the published tables are quiet.
//! - On shutdown we wait until the writer has made everything durable and the
//!   final position has actually been sent (`feedback_pending_since` is
//!   `None`) before closing: pgwire-replication's `shutdown()` itself does
//!   not send a pending acknowledgement.
//!
//! # Reconnects
//!
//! pgwire-replication does not reconnect by itself. [`Capture::run`] retries
//! transient failures (connection errors, server restarts, SQLSTATE classes
//! 08/53/57 and 55006 "slot is active", which happens while the server has
//! not yet noticed our previous connection died) with exponential backoff and
//! jitter, giving up after `source.max_connect_attempts` consecutive failures;
//! a busy slot is retried for the server's `wal_sender_timeout` plus a
//! margin, then reported as held by another reader (exit 3), naming the
//! holder's pid, application name and address.
//! Anything else (authentication, a lost slot, a decode or mapping error)
//! stops walhook with a clear error instead of looping.
//!
//! # Silent connections
//!
//! A network path can die without an error: packets are dropped, nothing
//! resets the connection, and reads just wait (a black hole). Writes still
//! succeed into the kernel's buffer, so pgwire-replication (which has no read
//! timeout) would wait forever while the slot holds WAL. Two guards:
//!
//! - Connecting, including authentication and START_REPLICATION, must finish
//!   within `source.connect_timeout`.
//! - A receive watchdog: an idle stream still carries our heartbeat message
//!   every `source.heartbeat`, so when nothing at all (not even a keepalive)
//!   arrived for `source.receive_timeout` the connection is checked: over a
//!   fresh SQL connection, is our slot's walsender alive and has it heard our
//!   status updates (`pg_stat_replication.reply_time`) within the timeout? If
//!   the check cannot connect or says no, the session is torn down (reported
//!   as degraded, with a warning) and reconnected; the old walsender is
//!   dropped by the server's `wal_sender_timeout`. If it says yes, the server
//!   is only busy (decoding a large transaction of unpublished tables sends
//!   nothing for a while) and the stream is kept: pgwire-replication cannot
//!   send PostgreSQL's reply-requested ping, which is how PostgreSQL's own
//!   receivers tell the two cases apart, so we ask over SQL instead.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pgwire_replication::{FeedbackObserver, Lsn, ReplicationClient, ReplicationEvent};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::pgoutput::{self, Message};
use super::{ConnParams, SlotProblem, SourceError};
use crate::config::Config;
use crate::event::mapping::{FormMapper, TxContext};
use crate::event::Event;
use crate::health::Health;
use crate::store::queue::AppendSender;
use crate::store::{Append, FormSchema, NewEvent};
use std::collections::HashMap;

/// Events the replication worker may buffer ahead of us. It counts events,
/// not bytes, so keep it small: with 10 MB rows, 64 events are 640 MB.
/// Throughput comes from our own chunking, not from this buffer.
const REPLICATION_BUFFER_EVENTS: usize = 64;

/// A chunk of events is handed to the writer once it holds this many events...
const CHUNK_EVENTS: usize = 1024;

/// ...or this many payload bytes, so a 1-million-row transaction streams into
/// the store in bounded pieces instead of accumulating in memory.
const CHUNK_BYTES: usize = 2 * 1024 * 1024;

/// The serialization buffer is kept between events up to this capacity; a
/// larger one (a huge row) is released after use.
const SCRATCH_KEEP: usize = 64 * 1024;

/// First reconnect delay; doubled per consecutive failure up to
/// [`RECONNECT_MAX_DELAY`].
const RECONNECT_INITIAL_DELAY: Duration = Duration::from_millis(500);

/// Upper bound of the reconnect delay.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(30);

/// How long a clean stop waits, at least, for the final acknowledgement to be
/// sent (and for the server to end the stream); `status_interval` is added.
const FINAL_ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// How long "slot is active" (SQLSTATE 55006) is retried beyond the server's
/// `wal_sender_timeout`: by then the server has dropped a walsender whose
/// client vanished (it checks the timeout at least twice per period), so a
/// slot still busy belongs to a live reader.
const SLOT_BUSY_MARGIN: Duration = Duration::from_secs(5);

/// How long "slot is active" is retried when the server's
/// `wal_sender_timeout` cannot be read or is 0 (disabled): a bit more than
/// its default (60 s).
const SLOT_BUSY_FALLBACK: Duration = Duration::from_secs(90);

/// Consecutive heartbeat failures after which each failure is a warning: one
/// failure is a blip, a series means the slot may stop advancing.
const HEARTBEAT_WARN_AFTER: u32 = 3;

/// State of the transaction being received.
struct Tx {
    ctx: TxContext,
    index: u32,
    chunk: Vec<NewEvent>,
    chunk_bytes: usize,
    /// schema changes seen in this transaction, stored with its commit
    form_schemas: Vec<FormSchema>,
}

/// The capture task.
pub struct Capture {
    cfg: Arc<Config>,
    params: ConnParams,
    mapper: FormMapper,
    /// Reused for serializing each event; the stored payload is an exact-size
    /// copy (no growth reallocations, no unused capacity held in the queue).
    scratch: Vec<u8>,
    writer: AppendSender,
    durable: watch::Receiver<u64>,
    token: CancellationToken,
    /// the highest position handed to the writer
    last_sent: u64,
    /// form schemas as of the last commit handed to the writer
    committed_schemas: HashMap<String, String>,
    /// called once each session is streaming (readiness, tests)
    on_streaming: Option<Box<dyn Fn() + Send + Sync>>,
    /// called with the reason when the watchdog finds the connection dead,
    /// and with `None` once a new session streams (health, tests)
    on_degraded: Option<Box<dyn Fn(Option<String>) + Send + Sync>>,
    /// streaming state, reconnects and the last commit, for `/readyz`
    health: Health,
}

impl Capture {
    /// Builds the capture task; `durable` carries the writer's durable LSN,
    /// `committed_schemas` the form schemas the store holds.
    pub fn new(
        cfg: Arc<Config>,
        params: ConnParams,
        mapper: FormMapper,
        committed_schemas: HashMap<String, String>,
        writer: AppendSender,
        durable: watch::Receiver<u64>,
        token: CancellationToken,
    ) -> Self {
        let last_sent = *durable.borrow();
        Capture {
            cfg,
            params,
            mapper,
            scratch: Vec::new(),
            writer,
            durable,
            token,
            last_sent,
            committed_schemas,
            on_streaming: None,
            on_degraded: None,
            health: Health::new(),
        }
    }

    /// Reports the session's state into `health` (shared with the admin server).
    pub fn with_health(mut self, health: Health) -> Self {
        self.health = health;
        self
    }

    /// Registers a callback run each time a session starts streaming.
    pub fn on_streaming(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_streaming = Some(Box::new(f));
        self
    }

    /// Registers a callback told when the connection is found dead by the
    /// receive watchdog (`Some(reason)`) and when streaming resumes (`None`).
    pub fn on_degraded(mut self, f: impl Fn(Option<String>) + Send + Sync + 'static) -> Self {
        self.on_degraded = Some(Box::new(f));
        self
    }

    fn degraded(&self, reason: Option<String>) {
        self.health.set_degraded(reason.clone());
        if let Some(f) = &self.on_degraded {
            f(reason);
        }
    }

    /// Runs sessions until cancelled or a permanent error occurs.
    pub async fn run(mut self) -> Result<(), SourceError> {
        let mut failures: u32 = 0;
        let mut first_failure: Option<Instant> = None;
        let mut slot_busy_budget: Option<Duration> = None;
        loop {
            if self.token.is_cancelled() {
                return Ok(());
            }
            let durable_before = *self.durable.borrow();
            let mut streamed = false;
            let err = match self.session(&mut streamed).await {
                Ok(()) => {
                    self.health.set_not_streaming("stopped");
                    return Ok(());
                }
                Err(err) => err,
            };
            if !err.is_transient() {
                let err = self.explain_permanent(err).await;
                self.health.set_not_streaming(format!("stopped: {err}"));
                return Err(err);
            }
            // A session that made progress resets the budget; one that only
            // connected does not, so a server that keeps failing right
            // after START_REPLICATION still ends in an exit.
            if streamed && *self.durable.borrow() > durable_before {
                failures = 0;
                first_failure = None;
            }
            failures += 1;
            let since = *first_failure.get_or_insert_with(Instant::now);
            // After a lost connection the server keeps the old walsender
            // (and the slot, SQLSTATE 55006) until wal_sender_timeout
            // notices; wait that out instead of counting attempts.
            let slot_busy = err.sqlstate().as_deref() == Some("55006");
            let delay = reconnect_delay(failures);
            if slot_busy {
                let holder = self.slot_holder().await;
                let budget = match slot_busy_budget {
                    Some(budget) => budget,
                    None => *slot_busy_budget.insert(self.slot_busy_budget().await),
                };
                if since.elapsed() > budget {
                    let err = SourceError::SlotBusy {
                        slot: self.cfg.source.slot.clone(),
                        holder,
                        waited_s: since.elapsed().as_secs(),
                    };
                    tracing::error!(error = %err, "giving up on the replication slot");
                    self.health.set_not_streaming(format!("stopped: {err}"));
                    return Err(err);
                }
                tracing::warn!(
                    slot = %self.cfg.source.slot, holder = %holder, attempt = failures,
                    delay_ms = delay.as_millis() as u64, gives_up_after_s = budget.as_secs(),
                    "replication slot is in use by another connection: another walhook may be reading it, or the server has not yet noticed that our previous connection died; retrying"
                );
            } else if failures > self.cfg.source.max_connect_attempts {
                tracing::error!(error = %err, attempts = failures - 1, "giving up on the replication connection");
                let err = self.explain_permanent(err).await;
                self.health.set_not_streaming(format!("stopped: {err}"));
                return Err(err);
            } else {
                tracing::warn!(error = %err, attempt = failures, delay_ms = delay.as_millis() as u64, "replication connection lost; reconnecting");
            }
            self.health
                .reconnecting(format!("reconnecting after: {err}"));
            tokio::select! {
                biased;
                _ = self.token.cancelled() => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Who holds our slot, for the log: the walsender's pid, client
    /// application name and address as the server shows them.
    async fn slot_holder(&self) -> String {
        let sql = "SELECT s.active_pid, a.application_name, a.client_addr::text \
                   FROM pg_replication_slots s LEFT JOIN pg_stat_activity a ON a.pid = s.active_pid \
                   WHERE s.slot_name = $1";
        let Ok(client) = self.params.connect_sql().await else {
            return "holder unknown: cannot query the server".into();
        };
        match client.query_opt(sql, &[&self.cfg.source.slot]).await {
            Ok(Some(row)) => match row.get::<_, Option<i32>>(0) {
                Some(pid) => format!(
                    "server pid {pid}, application_name '{}', client {}",
                    row.get::<_, Option<String>>(1).unwrap_or_default(),
                    row.get::<_, Option<String>>(2)
                        .unwrap_or_else(|| "local socket".into())
                ),
                None => "released meanwhile".into(),
            },
            Ok(None) => "the slot no longer exists".into(),
            Err(_) => "holder unknown: pg_replication_slots not readable".into(),
        }
    }

    /// How long a busy slot is retried: the server's `wal_sender_timeout`
    /// plus [`SLOT_BUSY_MARGIN`], or [`SLOT_BUSY_FALLBACK`].
    async fn slot_busy_budget(&self) -> Duration {
        let sql = "SELECT setting::int8 FROM pg_settings WHERE name = 'wal_sender_timeout'";
        let timeout_ms = match self.params.connect_sql().await {
            Ok(client) => client
                .query_one(sql, &[])
                .await
                .ok()
                .map(|row| row.get::<_, i64>(0)),
            Err(_) => None,
        };
        match timeout_ms
            .and_then(|ms| u64::try_from(ms).ok())
            .filter(|ms| *ms > 0)
        {
            Some(ms) => Duration::from_millis(ms) + SLOT_BUSY_MARGIN,
            None => SLOT_BUSY_FALLBACK,
        }
    }

    /// A replication error we stop on may really be a slot that was dropped
    /// or invalidated while we ran: that deserves its own exit code and
    /// message (resync), so look before reporting.
    async fn explain_permanent(&self, err: SourceError) -> SourceError {
        let Ok(client) = self.params.connect_sql().await else {
            return err;
        };
        let slot = &self.cfg.source.slot;
        // 42704 (undefined object) from the walsender: pgoutput could not load
        // our publication at the position it was decoding.
        if err.sqlstate().as_deref() == Some(UNDEFINED_OBJECT) {
            if let Ok(exists) =
                super::setup::publication_exists(&client, &self.cfg.source.publication).await
            {
                return publication_unusable(
                    &self.cfg.source.publication,
                    slot,
                    exists,
                    Some(*self.durable.borrow()),
                );
            }
        }
        let durable = super::setup::durable_text(Some(*self.durable.borrow()));
        match super::setup::slot_info(&client, slot).await {
            Ok(None) => SourceError::SlotLost {
                kind: SlotProblem::Missing,
                slot: slot.clone(),
                state: "does not exist (it was dropped while walhook ran)".into(),
                durable,
            },
            Ok(Some(info)) if info.wal_status.as_deref() == Some("lost") => SourceError::SlotLost {
                kind: SlotProblem::Lost,
                slot: slot.clone(),
                state: "was invalidated while walhook ran (wal_status = lost)".into(),
                durable,
            },
            _ => err,
        }
    }

    async fn session(&mut self, streamed: &mut bool) -> Result<(), SourceError> {
        self.mapper.reset_schemas(
            self.committed_schemas
                .iter()
                .map(|(f, j)| (f.as_str(), j.as_str())),
        );
        let durable = *self.durable.borrow();
        let mut rcfg = self
            .params
            .replication_config(&self.cfg.source.slot, &self.cfg.source.publication)
            .with_buffer_size(REPLICATION_BUFFER_EVENTS)
            .with_status_interval(self.cfg.source.status_interval.get())
            .with_wakeup_interval(self.cfg.source.status_interval.get())
            // Without an observer the client keeps no record of whether the
            // last raise was sent; shutdown needs to know.
            .with_feedback_observer(FeedbackObserver::new(|_| {}));
        if durable > 0 {
            rcfg = rcfg.with_ack_lsn(Lsn(durable));
        }
        let mut client = ReplicationClient::connect(rcfg)
            .await
            .map_err(|e| self.params.replication_error(e))?;
        let connect_timeout = self.params.connect_timeout();
        tokio::select! {
            biased;
            _ = self.token.cancelled() => {
                client.abort();
                return Ok(());
            }
            started = tokio::time::timeout(connect_timeout, client.wait_started()) => match started {
                Ok(started) => started.map_err(|e| self.params.replication_error(e))?,
                Err(_) => {
                    // Dropping the client would leave its worker waiting on
                    // the silent socket; abort it.
                    client.abort();
                    return Err(SourceError::ConnectTimeout {
                        target: self.params.target(),
                        what: "replication",
                        after: connect_timeout,
                    });
                }
            },
        }
        *streamed = true;
        self.degraded(None);
        self.health.set_streaming();
        tracing::info!(slot = %self.cfg.source.slot, durable = %crate::event::lsn_text(durable), "replication streaming");
        if let Some(f) = &self.on_streaming {
            f();
        }
        let mut tx: Option<Tx> = None;
        let receive_timeout = self.cfg.source.receive_timeout();
        // Time spent in `handle` (waiting for the store) is not silence.
        let mut quiet_until = tokio::time::Instant::now() + receive_timeout;
        loop {
            tokio::select! {
                biased;
                _ = self.token.cancelled() => break,
                changed = self.durable.changed() => {
                    if changed.is_err() {
                        return Err(SourceError::StoreGone);
                    }
                    let lsn = *self.durable.borrow_and_update();
                    client.update_applied_lsn(Lsn(lsn));
                }
                ev = client.recv() => match ev {
                    Ok(Some(ev)) => {
                        self.handle(ev, &mut tx).await?;
                        quiet_until = tokio::time::Instant::now() + receive_timeout;
                    }
                    Ok(None) => {
                        return Err(SourceError::Replication(pgwire_replication::PgWireError::Io(
                            Arc::new(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the server ended the replication stream")),
                        )))
                    }
                    Err(e) => return Err(SourceError::Replication(e)),
                },
                _ = tokio::time::sleep_until(quiet_until) => {
                    match self.check_walsender(receive_timeout).await {
                        Ok(reply_age) => {
                            tracing::info!(
                                silent_for = ?receive_timeout, server_heard_us_ago = ?reply_age,
                                "nothing received from PostgreSQL, but its walsender is alive and hears us (busy decoding?); keeping the stream"
                            );
                            quiet_until = tokio::time::Instant::now() + receive_timeout;
                        }
                        Err(detail) => {
                            client.abort();
                            let err = SourceError::Silent { after: receive_timeout, detail };
                            tracing::warn!(error = %err, "replication connection degraded");
                            self.degraded(Some(err.to_string()));
                            return Err(err);
                        }
                    }
                }
            }
        }
        // Clean stop: a half-received transaction is dropped (never acked, so
        // it is sent again next time); wait for the writer to make everything
        // handed over durable, then make sure the final ack went out.
        let deadline = Instant::now() + FINAL_ACK_TIMEOUT + self.cfg.source.status_interval.get();
        while *self.durable.borrow() < self.last_sent && Instant::now() < deadline {
            if tokio::time::timeout(Duration::from_millis(50), self.durable.changed())
                .await
                .is_ok_and(|r| r.is_err())
            {
                break;
            }
        }
        client.update_applied_lsn(Lsn(*self.durable.borrow()));
        while client.feedback_pending_since().is_some() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // shutdown() reads until the server ends the stream; a partitioned
        // network must not keep SIGTERM from finishing.
        match tokio::time::timeout(FINAL_ACK_TIMEOUT, client.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::debug!(error = %err, "replication shutdown"),
            Err(_) => {
                tracing::warn!("the server did not end the replication stream in time; closing it");
                client.abort();
            }
        }
        tracing::info!(acked = %crate::event::lsn_text(*self.durable.borrow()), "replication stopped");
        Ok(())
    }

    /// Asks the server, over a fresh SQL connection, whether our slot's
    /// walsender is alive and received one of our status updates within
    /// `within`; `Ok(age of that update)` if so, else what was found.
    async fn check_walsender(&self, within: Duration) -> Result<Duration, String> {
        let budget = self.params.connect_timeout();
        let check = async {
            let client = self
                .params
                .connect_sql()
                .await
                .map_err(|e| format!("the server cannot be reached to check it ({e})"))?;
            let row = client
                .query_opt(
                    "SELECT extract(epoch FROM clock_timestamp() - r.reply_time)::float8 \
                     FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid \
                     WHERE s.slot_name = $1",
                    &[&self.cfg.source.slot],
                )
                .await
                .map_err(|e| format!("the check query failed ({e})"))?;
            let age: Option<f64> = row
                .ok_or("the server has no walsender for the slot any more")?
                .get(0);
            let age = age
                .map(|secs| Duration::from_secs_f64(secs.max(0.0)))
                .ok_or("the walsender never heard from us")?;
            if age > within {
                return Err(format!("the walsender last heard from us {age:?} ago"));
            }
            Ok(age)
        };
        tokio::time::timeout(budget, check)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "checking it over SQL did not finish within {budget:?}"
                ))
            })
    }

    async fn handle(
        &mut self,
        ev: ReplicationEvent,
        tx: &mut Option<Tx>,
    ) -> Result<(), SourceError> {
        match ev {
            ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => {
                *tx = Some(Tx {
                    ctx: TxContext {
                        commit_lsn: final_lsn.0,
                        xid,
                        commit_time: super::value::commit_time_rfc3339(commit_time_micros),
                    },
                    index: 0,
                    chunk: Vec::new(),
                    chunk_bytes: 0,
                    form_schemas: Vec::new(),
                });
            }
            ReplicationEvent::XLogData { data, .. } => {
                let msg = pgoutput::decode(&data)?;
                // The message's values share `data`'s buffer; without this
                // handle they free it as soon as they are mapped, before the
                // event is serialized (a 10 MB row is not held twice).
                drop(data);
                self.handle_message(msg, tx).await?;
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                let mut form_schemas = Vec::new();
                if let Some(mut t) = tx.take() {
                    self.flush_chunk(&mut t).await?;
                    self.health.commit_seen(
                        t.ctx.commit_lsn,
                        t.ctx.commit_time.clone(),
                        crate::app::now_ms(),
                    );
                    form_schemas = t.form_schemas;
                }
                for schema in &form_schemas {
                    self.committed_schemas
                        .insert(schema.form.clone(), schema.fields_json.clone());
                }
                self.send(Append::Commit {
                    end_lsn: end_lsn.0,
                    form_schemas,
                })
                .await?;
                self.last_sent = self.last_sent.max(end_lsn.0);
            }
            ReplicationEvent::Message { lsn, .. } => {
                if tx.is_none() && lsn.0 > self.last_sent {
                    self.send(Append::Progress { lsn: lsn.0 }).await?;
                    self.last_sent = lsn.0;
                }
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                if tx.is_none() && wal_end.0 > self.last_sent {
                    self.send(Append::Progress { lsn: wal_end.0 }).await?;
                    self.last_sent = wal_end.0;
                }
            }
            ReplicationEvent::StoppedAt { .. } => {}
        }
        Ok(())
    }

    async fn handle_message(
        &mut self,
        msg: Message,
        tx: &mut Option<Tx>,
    ) -> Result<(), SourceError> {
        let events: Vec<Event> = match msg {
            Message::Relation(rel) => {
                let Some(change) = self.mapper.on_relation(rel)? else {
                    return Ok(());
                };
                let schema = FormSchema {
                    form: change.form.clone(),
                    fields_json: change.fields_json.clone(),
                };
                match tx.as_mut() {
                    Some(t) => {
                        t.form_schemas.push(schema);
                        if change.initial {
                            Vec::new()
                        } else {
                            vec![self.mapper.form_update(&change, &t.ctx, t.index)]
                        }
                    }
                    // pgoutput sends Relation inside the transaction that
                    // uses it; should one come outside, no event depends on
                    // it, so it only updates what we know.
                    None => {
                        self.committed_schemas
                            .insert(schema.form, schema.fields_json);
                        Vec::new()
                    }
                }
            }
            Message::Insert { relation_id, new } => {
                let t = in_tx(tx, "INSERT")?;
                vec![self.mapper.insert(relation_id, &new, &t.ctx, t.index)?]
            }
            Message::Update {
                relation_id,
                old,
                new,
            } => {
                let t = in_tx(tx, "UPDATE")?;
                vec![self
                    .mapper
                    .update(relation_id, old.as_ref(), &new, &t.ctx, t.index)?]
            }
            Message::Delete { relation_id, old } => {
                let t = in_tx(tx, "DELETE")?;
                vec![self.mapper.delete(relation_id, &old, &t.ctx, t.index)?]
            }
            Message::Truncate {
                relation_ids,
                options,
            } => {
                let t = in_tx(tx, "TRUNCATE")?;
                self.mapper
                    .truncate(&relation_ids, options, &t.ctx, t.index)?
            }
            Message::Type { id, schema, name } => {
                self.mapper.on_type(id, &schema, &name);
                Vec::new()
            }
            Message::Origin { .. } => Vec::new(),
            // pgwire-replication hands these over as their own events; seeing
            // them here would mean it changed, which we want to know about.
            Message::Begin { .. } | Message::Commit { .. } | Message::Message { .. } => {
                tracing::debug!("transaction boundary inside XLogData ignored");
                Vec::new()
            }
        };
        if events.is_empty() {
            return Ok(());
        }
        if crate::failpoint::failpoint!("capture_after_row") {
            // `error`: as if the stream broke here (a transient failure:
            // capture reconnects and Postgres sends the transaction again).
            return Err(SourceError::Replication(
                pgwire_replication::PgWireError::Io(Arc::new(std::io::Error::other(
                    "failpoint capture_after_row",
                ))),
            ));
        }
        let Some(t) = tx.as_mut() else {
            return Ok(());
        };
        for ev in events {
            self.scratch.clear();
            serde_json::to_writer(&mut self.scratch, &ev).map_err(|e| {
                SourceError::Internal(format!("cannot serialize event {}: {e}", ev.id))
            })?;
            let payload = if self.scratch.len() > SCRATCH_KEEP {
                // A large event takes the buffer itself rather than a copy;
                // shrinking a block that large gives the rest back in place.
                let mut payload = std::mem::take(&mut self.scratch);
                payload.shrink_to_fit();
                payload
            } else {
                let payload = self.scratch.as_slice().to_vec();
                if self.scratch.capacity() > SCRATCH_KEEP {
                    self.scratch = Vec::new();
                }
                payload
            };
            t.index += 1;
            t.chunk_bytes += payload.len();
            let key = self.mapper.row_key(&ev);
            t.chunk.push(NewEvent {
                key,
                id: ev.id,
                commit_lsn: t.ctx.commit_lsn,
                op: ev.op.as_str().to_string(),
                form: ev.form,
                payload,
            });
        }
        if t.chunk.len() >= CHUNK_EVENTS || t.chunk_bytes >= CHUNK_BYTES {
            let chunk = std::mem::take(&mut t.chunk);
            t.chunk_bytes = 0;
            self.send(Append::Events(chunk)).await?;
        }
        Ok(())
    }

    async fn flush_chunk(&mut self, t: &mut Tx) -> Result<(), SourceError> {
        if t.chunk.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::take(&mut t.chunk);
        t.chunk_bytes = 0;
        self.send(Append::Events(chunk)).await
    }

    async fn send(&self, item: Append) -> Result<(), SourceError> {
        self.writer
            .send(item)
            .await
            .map_err(|_| SourceError::StoreGone)
    }
}

/// SQLSTATE `undefined_object`: what the walsender (PostgreSQL 14–17) raises
/// when the publication does not exist at the position it decodes.
const UNDEFINED_OBJECT: &str = "42704";

/// The error for a publication the slot cannot use: missing (`exists` is
/// false: dropped, or never created), or created after the slot, whose
/// history before the publication cannot be decoded with it. `acked` is the
/// durable LSN when the replication stream itself failed on it, so nothing
/// after it was acknowledged.
pub fn publication_unusable(
    publication: &str,
    slot: &str,
    exists: bool,
    acked: Option<u64>,
) -> SourceError {
    let acked = acked
        .map(|lsn| {
            format!(
                "; nothing after LSN {} was acknowledged",
                crate::event::lsn_text(lsn)
            )
        })
        .unwrap_or_default();
    let recreate_slot = format!(
        "stop walhook, SELECT pg_drop_replication_slot('{slot}'), and start walhook again with source.create_slot = true (if its store already holds events, move the store directory away first: changes made before the new slot are not captured)"
    );
    if !exists {
        return SourceError::Precondition {
            problem: format!("publication '{publication}' does not exist (was it dropped?){acked}"),
            fix: format!(
                "recreate it (walhook creates it at start with source.manage_publication = true), then recreate the slot after it, because a slot cannot decode a publication for the time it did not exist: {recreate_slot}"
            ),
        };
    }
    SourceError::Precondition {
        problem: format!(
            "publication '{publication}' was created after replication slot '{slot}', which cannot decode changes from before the publication existed{acked}"
        ),
        fix: format!("recreate the slot after the publication: {recreate_slot}"),
    }
}

fn in_tx<'a>(tx: &'a mut Option<Tx>, what: &str) -> Result<&'a mut Tx, SourceError> {
    tx.as_mut().ok_or_else(|| {
        SourceError::Internal(format!(
            "the replication stream sent {what} outside a transaction (please report this with the PostgreSQL version)"
        ))
    })
}

/// Exponential reconnect delay with ±20% jitter (also used for the first
/// connection at start-up).
pub(crate) fn reconnect_delay(failures: u32) -> Duration {
    let exp = RECONNECT_INITIAL_DELAY.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let base = exp.min(RECONNECT_MAX_DELAY);
    let jitter: f64 = rand::random_range(0.8..1.2);
    base.mul_f64(jitter)
}

/// Periodically writes a non-transactional logical message so an idle slot
/// has a position to advance to even when the published tables are quiet
/// (the WAL of other tables and databases would otherwise pile up).
///
/// Each beat also checks that the publication still exists: PostgreSQL 18's
/// pgoutput skips a missing publication with a server-side WARNING instead of
/// failing the stream, so without this check a dropped publication would go
/// unnoticed. A missing publication stops walhook (exit 3).
pub async fn heartbeat(
    params: ConnParams,
    every: Duration,
    publication: String,
    slot: String,
    token: CancellationToken,
) -> Result<(), SourceError> {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut failures: u32 = 0;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = token.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        // Raced against cancellation: a server that stopped answering must
        // not hold up shutdown.
        let beat = async {
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                client = Some(params.connect_sql().await?);
            }
            if let Some(c) = &client {
                c.execute(
                    "SELECT pg_logical_emit_message(false, 'walhook.heartbeat', '')",
                    &[],
                )
                .await
                .map_err(|source| SourceError::Sql {
                    context: "heartbeat".into(),
                    source,
                })?;
                return super::setup::publication_exists(c, &publication).await;
            }
            Ok::<bool, SourceError>(true)
        };
        let result = tokio::select! {
            biased;
            _ = token.cancelled() => return Ok(()),
            r = tokio::time::timeout(every.max(Duration::from_secs(5)), beat) => r,
        };
        match result {
            Ok(Ok(true)) => failures = 0,
            Ok(Ok(false)) => return Err(publication_unusable(&publication, &slot, false, None)),
            Ok(Err(err)) => {
                failures += 1;
                client = None;
                if failures >= HEARTBEAT_WARN_AFTER {
                    tracing::warn!(error = %err, failures, "heartbeat failing; an idle slot cannot advance");
                } else {
                    tracing::debug!(error = %err, "heartbeat failed; will retry");
                }
            }
            Err(_) => {
                failures += 1;
                client = None;
                if failures >= HEARTBEAT_WARN_AFTER {
                    tracing::warn!(failures, "heartbeat timed out; an idle slot cannot advance");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delay_grows_and_caps() {
        let first = reconnect_delay(1);
        assert!(first >= Duration::from_millis(400) && first <= Duration::from_millis(600));
        let late = reconnect_delay(30);
        assert!(late <= RECONNECT_MAX_DELAY.mul_f64(1.2));
        assert!(late >= RECONNECT_MAX_DELAY.mul_f64(0.8));
    }
}
