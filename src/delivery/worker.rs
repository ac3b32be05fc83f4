//! One subscription's delivery loop.
//!
//! (With `ordering = "key"` the worker hands over to `super::lanes` after
//! loading its state; both modes send through `super::request`.)
//!
//! The worker owns the subscription's cursor over the shared log and sends
//! one request at a time, in commit order: one event, or with `batch` a
//! batch of events (`super::batch` decides what fits). The next request
//! waits until the previous one is delivered or dead-lettered. Events the
//! subscription does not want (by `forms`, `ops` or `filter`) are skipped by
//! moving the cursor (or, while a batch is open, by letting the batch's
//! cursor advance cover them); a filter that fails on an event is logged and
//! counts as not matching.
//!
//! Batches: a full batch (by count or bytes) goes at once; a partial one
//! goes once the log is caught up and `batch.max_wait` has passed since its
//! first event was taken, so a backlog never waits. A batch is one request:
//! the same body and `webhook-id` (its first event's id) on every retry,
//! one attempt count and backoff, and on giving up every event of the batch
//! becomes a dead letter with the reason. After a 2xx the cursor moves to
//! the batch's last event. `rate_limit` spaces the requests (`super::rate`).
//!
//! Auto-disable: every failed attempt extends a streak that a delivered
//! request ends (`super::streak`); when it reaches `disable_after`, as on
//! 410 Gone, the subscription is disabled in the store with the reason and
//! the worker stops. Its events stay in the log and its cursor is kept; the
//! supervisor (`app`) clears the flag on a reload or restart.
//!
//! Persistence: the cursor advance after a 2xx is coalesced (every
//! `FLUSH_EVERY_EVENTS` events, every `FLUSH_INTERVAL`, whenever the worker
//! catches up, and on exit). Losing an unflushed advance in a crash only
//! re-sends those events with the same ids (at-least-once). Pending advances
//! are always written before a failure, dead letter or disable, because
//! `Store::advance` resets the attempt counter. Failed attempts are written
//! with `record_failure` (attempts + next attempt time), so a restart resumes
//! the backoff schedule instead of hammering the receiver.
//!
//! Shutdown: on cancellation the worker takes no new event and stops waiting
//! for backoff, for a batch to fill, for the rate limit or for a permit; a
//! request already in flight may finish within the grace period, else it is
//! abandoned (not marked delivered, so it is re-sent after restart).

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::{value::Error as ValueError, IntoDeserializer};
use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use super::batch::{Batch, Limits};
use super::render::Renderer;
use super::request::{CursorMode, Done, RetryState, Sender};
use super::{DeliveryError, Shared};
use crate::config::{Op, Ordering, SubscriptionConfig};
use crate::store::{Start, Store, StoreError, StoredEvent};

/// Events read from the store per query: large enough to amortise the read,
/// small enough to keep a page of large events bounded in memory.
pub(super) const PAGE_SIZE: usize = 256;

/// Persist the cursor after this many unflushed delivered/skipped events: at
/// most this many duplicates after a crash.
const FLUSH_EVERY_EVENTS: u64 = 64;

/// Persist the cursor at least this often while events keep flowing, so the
/// status API and a crash never lag far behind.
pub(super) const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Re-check the store this often even without an append signal (a missed or
/// closed signal must not stall delivery).
const STORE_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Whether the loop goes on to the next request.
enum Step {
    Next,
    Stop,
}

/// One subscription's worker; `run` consumes it.
pub(crate) struct Worker {
    pub(super) sub: SubscriptionConfig,
    pub(super) shared: Shared,
    pub(super) appended: watch::Receiver<i64>,
    appended_closed: bool,
    limits: Limits,
    sender: Sender,
    /// Events read from the store and not yet taken, in seq order.
    pub(super) buffer: VecDeque<StoredEvent>,
    /// The highest seq read from the store.
    pub(super) read_pos: i64,
    /// Last event delivered, dead-lettered or skipped.
    pub(super) cursor: i64,
    /// Cursor as last written to the store.
    pub(super) persisted: i64,
    unflushed_delivered: u64,
    unflushed_events: u64,
    dirty_since: Option<Instant>,
    /// Failed attempts of the next wanted event (or batch), and its backoff.
    retry: RetryState,
}

impl Worker {
    pub(crate) fn new(
        sub: SubscriptionConfig,
        endpoint: super::http::Endpoint,
        renderer: Renderer,
        shared: Shared,
    ) -> Self {
        let appended = shared.appended.clone();
        Worker {
            limits: Limits::of(&sub, shared.max_body_bytes(&sub)),
            sender: Sender::new(sub.clone(), endpoint, renderer, shared.clone()),
            sub,
            shared,
            appended,
            appended_closed: false,
            buffer: VecDeque::new(),
            read_pos: 0,
            cursor: 0,
            persisted: 0,
            unflushed_delivered: 0,
            unflushed_events: 0,
            dirty_since: None,
            retry: RetryState::default(),
        }
    }

    /// Runs until shutdown, a disable (410 or `disable_after`), or a store error.
    pub(crate) async fn run(mut self) -> Result<(), DeliveryError> {
        let state = self
            .store_call("load its delivery state", |s, name| {
                s.ensure_subscription(name, Start::End)
            })
            .await?;
        if let Some(reason) = state.disabled_reason {
            warn!(subscription = %self.sub.name, reason = %reason, "subscription is disabled in the store; not delivering");
            return Ok(());
        }
        if state.paused {
            info!(subscription = %self.sub.name, "subscription is paused (admin API); not delivering until it is resumed");
            return Ok(());
        }
        self.cursor = state.cursor;
        self.persisted = state.cursor;
        self.read_pos = state.cursor;
        if self.sub.ordering == Ordering::Key {
            // Lanes keep their retry state in memory only (see `super::lanes`).
            info!(subscription = %self.sub.name, cursor = self.cursor, lanes = self.sub.lanes, "delivery worker started (ordering = \"key\")");
            let sender = self.sender.clone();
            let result = super::lanes::run(&mut self, sender).await;
            let flushed = self.flush().await;
            info!(subscription = %self.sub.name, cursor = self.persisted, "delivery worker stopped");
            return result.and(flushed);
        }
        self.retry.attempts = state.attempts;
        let now_ms = unix_ms(self.shared.clock.now());
        self.retry.pending_wait = state
            .next_attempt_at_ms
            .map(|at| Duration::from_millis(u64::try_from(at.saturating_sub(now_ms)).unwrap_or(0)));
        info!(subscription = %self.sub.name, cursor = self.cursor, attempts = self.retry.attempts, "delivery worker started");
        let result = self.deliver_loop().await;
        // Flush even after an error in the loop; the loop's error wins.
        let flushed = self.flush().await;
        info!(subscription = %self.sub.name, cursor = self.persisted, "delivery worker stopped");
        result.and(flushed)
    }

    async fn deliver_loop(&mut self) -> Result<(), DeliveryError> {
        loop {
            let Some(batch) = self.next_batch().await? else {
                return Ok(());
            };
            if let Step::Stop = self.deliver(batch).await? {
                return Ok(());
            }
            self.maybe_flush().await?;
        }
    }

    /// Gathers the next request's events; None on shutdown.
    async fn next_batch(&mut self) -> Result<Option<Batch>, DeliveryError> {
        let mut batch = Batch::new(self.limits);
        loop {
            if self.shared.shutdown.is_cancelled() {
                return Ok(None);
            }
            while let Some(event) = self.buffer.pop_front() {
                if !self.wants(&event) {
                    if batch.is_empty() {
                        self.moved_past(event.seq, 0);
                    } else {
                        batch.pass_over(event.seq);
                    }
                    continue;
                }
                // Without `batch` every request is one event and its size
                // does not matter: don't render it twice.
                if self.sub.batch.is_none() {
                    let _ = batch.push(event, 0, Instant::now());
                    return Ok(Some(batch));
                }
                // A body that cannot be rendered is dead-lettered on its own,
                // never with the healthy events around it.
                let body_len = match self.sender.renderer.render_event(&event) {
                    Ok(body) => body.len(),
                    Err(_) if batch.is_empty() => {
                        let _ = batch.push(event, 0, Instant::now());
                        return Ok(Some(batch));
                    }
                    Err(_) => {
                        self.buffer.push_front(event);
                        return Ok(Some(batch));
                    }
                };
                if let Err(event) = batch.push(event, body_len, Instant::now()) {
                    self.buffer.push_front(event);
                    return Ok(Some(batch));
                }
                if batch.is_full() {
                    return Ok(Some(batch));
                }
            }
            self.maybe_flush().await?;
            // Mark the signal seen before reading, so an append that lands
            // during the read wakes the wait below instead of being missed.
            self.appended.borrow_and_update();
            let after = self.read_pos;
            let page = self
                .store_call("read events", move |s, name| {
                    s.read_for(name, after, PAGE_SIZE)
                })
                .await?;
            if let Some(last) = page.last() {
                self.read_pos = last.seq;
                self.buffer.extend(page);
                continue;
            }
            // Caught up.
            match batch.deadline() {
                None => {
                    self.flush().await?;
                    if !self.wait_for_events(None).await {
                        return Ok(None);
                    }
                }
                Some(deadline) if Instant::now() >= deadline => return Ok(Some(batch)),
                Some(deadline) => {
                    if !self.wait_for_events(Some(deadline)).await {
                        return Ok(None);
                    }
                }
            }
        }
    }

    pub(super) fn wants(&self, event: &StoredEvent) -> bool {
        let parsed: Result<Op, ValueError> = Op::deserialize(event.op.as_str().into_deserializer());
        let wanted = match parsed {
            Ok(op) => self.sub.wants(op, &event.form),
            Err(_) => {
                warn!(subscription = %self.sub.name, event_id = %event.id, op = %event.op, "event has an op this walhook does not know; skipping it");
                false
            }
        };
        // A filter that fails on one event skips that event; the error names
        // the problem but never a row value.
        wanted
            && self.sender.renderer.matches(event).unwrap_or_else(|err| {
                warn!(subscription = %self.sub.name, event_id = %event.id, error = %err, "filter failed on this event; counting it as not matching");
                false
            })
    }

    /// Sends `batch` until it is delivered, dead-lettered or the worker stops.
    async fn deliver(&mut self, batch: Batch) -> Result<Step, DeliveryError> {
        let through = batch.through();
        let events = batch.into_events();
        let Some(last) = events.last().map(|e| e.seq) else {
            return Ok(Step::Next);
        };
        let count = u64::try_from(events.len()).unwrap_or(u64::MAX);
        let sender = self.sender.clone();
        let mut retry = self.retry;
        let done = sender
            .deliver(&mut retry, events, CursorMode::Commit(self))
            .await;
        self.retry = retry;
        match done? {
            Done::Delivered => {
                self.moved_past(through, count);
                Ok(Step::Next)
            }
            Done::DeadLettered { disable } => {
                // The store moved the cursor past the dead letters.
                self.persisted = self.persisted.max(last);
                self.cursor = self.cursor.max(last);
                if through > last {
                    // Unwanted events after the batch: skipped.
                    self.moved_past(through, 0);
                }
                match disable {
                    Some(why) => {
                        self.disable(why).await?;
                        Ok(Step::Stop)
                    }
                    None => Ok(Step::Next),
                }
            }
            Done::Disable(why) => {
                self.disable(why).await?;
                Ok(Step::Stop)
            }
            Done::Stopped => Ok(Step::Stop),
        }
    }

    /// Flushes the cursor and marks the subscription disabled in the store.
    pub(crate) async fn disable(&mut self, why: String) -> Result<(), DeliveryError> {
        self.flush().await?;
        self.store_call("disable the subscription", move |s, name| {
            s.set_disabled(name, Some(&why))
        })
        .await
    }

    /// Waits for an append signal, the poll interval or `deadline`
    /// (whichever comes first); false on shutdown.
    pub(super) async fn wait_for_events(&mut self, deadline: Option<Instant>) -> bool {
        let poll = Instant::now() + STORE_POLL_INTERVAL;
        let until = deadline.map_or(poll, |d| d.min(poll));
        tokio::select! {
            biased;
            () = self.shared.shutdown.cancelled() => false,
            changed = self.appended.changed(), if !self.appended_closed => {
                if changed.is_err() {
                    // The appender is gone; keep polling the store.
                    self.appended_closed = true;
                }
                true
            }
            () = tokio::time::sleep_until(until) => true,
        }
    }

    /// Moves the in-memory cursor; the store sees it at the next flush.
    pub(super) fn moved_past(&mut self, seq: i64, delivered: u64) {
        self.cursor = self.cursor.max(seq);
        self.unflushed_delivered += delivered;
        self.unflushed_events += delivered.max(1);
        self.dirty_since.get_or_insert_with(Instant::now);
    }

    pub(super) async fn maybe_flush(&mut self) -> Result<(), DeliveryError> {
        let due = self.unflushed_events >= FLUSH_EVERY_EVENTS
            || self
                .dirty_since
                .is_some_and(|since| since.elapsed() >= FLUSH_INTERVAL);
        if due {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes the coalesced cursor advance, if any, with the attempts
    /// waiting for the delivery history.
    pub(crate) async fn flush(&mut self) -> Result<(), DeliveryError> {
        let history = self.sender.take_history();
        if self.cursor <= self.persisted && self.unflushed_delivered == 0 {
            self.unflushed_events = 0;
            self.dirty_since = None;
            return self.write_history(history).await;
        }
        let (seq, delivered) = (self.cursor, self.unflushed_delivered);
        self.store_call("advance its cursor", move |s, name| {
            s.advance_with(name, seq, delivered, &history)
        })
        .await?;
        self.persisted = seq;
        self.unflushed_delivered = 0;
        self.unflushed_events = 0;
        self.dirty_since = None;
        Ok(())
    }

    /// Writes buffered attempts on their own when they are due (used while
    /// the cursor cannot move, e.g. behind a stuck lane).
    pub(super) async fn flush_history_if_due(&mut self) -> Result<(), DeliveryError> {
        if self.sender.history_due(FLUSH_INTERVAL) {
            let history = self.sender.take_history();
            self.write_history(history).await?;
        }
        Ok(())
    }

    async fn write_history(
        &self,
        history: Vec<crate::store::AttemptRecord>,
    ) -> Result<(), DeliveryError> {
        if history.is_empty() {
            return Ok(());
        }
        self.store_call("record delivery attempts", move |s, name| {
            s.record_attempts(name, &history)
        })
        .await
    }

    /// Runs a blocking store call off the async threads.
    pub(super) async fn store_call<T, F>(
        &self,
        action: &'static str,
        call: F,
    ) -> Result<T, DeliveryError>
    where
        T: Send + 'static,
        F: Fn(&Store, &str) -> Result<T, StoreError> + Send + Sync + 'static,
    {
        self.sender.store_call(action, call).await
    }
}

/// Milliseconds since the Unix epoch (0 for a clock before 1970).
pub(crate) fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Seconds since the Unix epoch, for `webhook-timestamp`.
pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
