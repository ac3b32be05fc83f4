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
//! jitter, giving up after `source.max_connect_attempts` consecutive failures.
//! Anything else (authentication, a lost slot, a decode or mapping error)
//! stops walhook with a clear error instead of looping.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pgwire_replication::{FeedbackObserver, Lsn, ReplicationClient, ReplicationEvent};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::pgoutput::{self, Message};
use super::{ConnParams, SourceError};
use crate::config::Config;
use crate::event::mapping::{FormMapper, TxContext};
use crate::event::Event;
use crate::store::{Append, NewEvent};

/// Events the replication worker may buffer ahead of us. It counts events,
/// not bytes, so keep it small: with 10 MB rows, 64 events are 640 MB.
/// Throughput comes from our own chunking, not from this buffer.
const REPLICATION_BUFFER_EVENTS: usize = 64;

/// A chunk of events is handed to the writer once it holds this many events...
const CHUNK_EVENTS: usize = 1024;

/// ...or this many payload bytes, so a 1-million-row transaction streams into
/// the store in bounded pieces instead of accumulating in memory.
const CHUNK_BYTES: usize = 2 * 1024 * 1024;

/// First reconnect delay; doubled per consecutive failure up to
/// [`RECONNECT_MAX_DELAY`].
const RECONNECT_INITIAL_DELAY: Duration = Duration::from_millis(500);

/// Upper bound of the reconnect delay.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(30);

/// How long a clean stop waits for the final acknowledgement to be sent.
const FINAL_ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// State of the transaction being received.
struct Tx {
    ctx: TxContext,
    index: u32,
    chunk: Vec<NewEvent>,
    chunk_bytes: usize,
}

/// The capture task.
pub struct Capture {
    cfg: Arc<Config>,
    params: ConnParams,
    mapper: FormMapper,
    writer: mpsc::Sender<Append>,
    durable: watch::Receiver<u64>,
    token: CancellationToken,
    /// the highest position handed to the writer
    last_sent: u64,
    /// called once each session is streaming (readiness, tests)
    on_streaming: Option<Box<dyn Fn() + Send + Sync>>,
}

impl Capture {
    /// Builds the capture task; `durable` carries the writer's durable LSN.
    pub fn new(
        cfg: Arc<Config>,
        params: ConnParams,
        mapper: FormMapper,
        writer: mpsc::Sender<Append>,
        durable: watch::Receiver<u64>,
        token: CancellationToken,
    ) -> Self {
        let last_sent = *durable.borrow();
        Capture {
            cfg,
            params,
            mapper,
            writer,
            durable,
            token,
            last_sent,
            on_streaming: None,
        }
    }

    /// Registers a callback run each time a session starts streaming.
    pub fn on_streaming(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_streaming = Some(Box::new(f));
        self
    }

    /// Runs sessions until cancelled or a permanent error occurs.
    pub async fn run(mut self) -> Result<(), SourceError> {
        let mut failures: u32 = 0;
        loop {
            if self.token.is_cancelled() {
                return Ok(());
            }
            let mut streamed = false;
            match self.session(&mut streamed).await {
                Ok(()) => return Ok(()),
                Err(err) if err.is_transient() => {
                    if streamed {
                        failures = 0;
                    }
                    failures += 1;
                    if failures > self.cfg.source.max_connect_attempts {
                        tracing::error!(error = %err, attempts = failures - 1, "giving up on the replication connection");
                        return Err(err);
                    }
                    let delay = reconnect_delay(failures);
                    tracing::warn!(error = %err, attempt = failures, delay_ms = delay.as_millis() as u64, "replication connection lost; reconnecting");
                    tokio::select! {
                        biased;
                        _ = self.token.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Err(err) => return Err(err),
            }
        }
    }

    async fn session(&mut self, streamed: &mut bool) -> Result<(), SourceError> {
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
            .map_err(SourceError::Replication)?;
        tokio::select! {
            biased;
            _ = self.token.cancelled() => {
                client.abort();
                return Ok(());
            }
            started = client.wait_started() => started.map_err(SourceError::Replication)?,
        }
        *streamed = true;
        tracing::info!(slot = %self.cfg.source.slot, durable = %crate::event::lsn_text(durable), "replication streaming");
        if let Some(f) = &self.on_streaming {
            f();
        }
        let mut tx: Option<Tx> = None;
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
                    Ok(Some(ev)) => self.handle(ev, &mut tx).await?,
                    Ok(None) => {
                        return Err(SourceError::Replication(pgwire_replication::PgWireError::Io(
                            Arc::new(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the server ended the replication stream")),
                        )))
                    }
                    Err(e) => return Err(SourceError::Replication(e)),
                },
            }
        }
        // Clean stop: a half-received transaction is dropped (never acked, so
        // it is sent again next time); wait for the writer to make everything
        // handed over durable, then make sure the final ack went out.
        let deadline = Instant::now() + FINAL_ACK_TIMEOUT;
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
        if let Err(err) = client.shutdown().await {
            tracing::debug!(error = %err, "replication shutdown");
        }
        tracing::info!(acked = %crate::event::lsn_text(*self.durable.borrow()), "replication stopped");
        Ok(())
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
                });
            }
            ReplicationEvent::XLogData { data, .. } => {
                let msg = pgoutput::decode(&data)?;
                self.handle_message(msg, tx).await?;
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                if let Some(mut t) = tx.take() {
                    self.flush_chunk(&mut t).await?;
                }
                self.send(Append::Commit { end_lsn: end_lsn.0 }).await?;
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
                let change = self.mapper.on_relation(rel)?;
                let Some(change) = change else {
                    return Ok(());
                };
                self.send(Append::FormSchema {
                    form: change.form.clone(),
                    fields_json: change.fields_json.clone(),
                })
                .await?;
                match (change.initial, tx.as_mut()) {
                    (false, Some(t)) => {
                        let ev = self.mapper.form_update(&change, &t.ctx, t.index);
                        vec![ev]
                    }
                    _ => Vec::new(),
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
            Message::Truncate { relation_ids, .. } => {
                let t = in_tx(tx, "TRUNCATE")?;
                self.mapper.truncate(&relation_ids, &t.ctx, t.index)?
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
        let Some(t) = tx.as_mut() else {
            return Ok(());
        };
        for ev in events {
            let payload = serde_json::to_vec(&ev).map_err(|e| SourceError::Precondition {
                problem: format!("cannot serialize event {}: {e}", ev.id),
                fix: "this is a bug; please report it".into(),
            })?;
            t.index += 1;
            t.chunk_bytes += payload.len();
            t.chunk.push(NewEvent {
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

fn in_tx<'a>(tx: &'a mut Option<Tx>, what: &str) -> Result<&'a mut Tx, SourceError> {
    tx.as_mut().ok_or_else(|| SourceError::Precondition {
        problem: format!("replication stream sent {what} outside a transaction"),
        fix: "this is a protocol error; please report it with the PostgreSQL version".into(),
    })
}

/// Exponential reconnect delay with ±20% jitter.
fn reconnect_delay(failures: u32) -> Duration {
    let exp = RECONNECT_INITIAL_DELAY.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let base = exp.min(RECONNECT_MAX_DELAY);
    let jitter: f64 = rand::random_range(0.8..1.2);
    base.mul_f64(jitter)
}

/// Periodically writes a non-transactional logical message so an idle slot
/// has a position to advance to even when the published tables are quiet
/// (the WAL of other tables and databases would otherwise pile up).
pub async fn heartbeat(
    params: ConnParams,
    every: Duration,
    token: CancellationToken,
) -> Result<(), SourceError> {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = token.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = params.connect_sql().await.ok();
        }
        if let Some(c) = &client {
            if let Err(err) = c
                .execute(
                    "SELECT pg_logical_emit_message(false, 'walhook.heartbeat', '')",
                    &[],
                )
                .await
            {
                tracing::debug!(error = %err, "heartbeat failed; will retry");
                client = None;
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
