//! One subscription's delivery loop.
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
use tracing::{debug, error, info, warn};

use super::batch::{Batch, Limits};
use super::http::{Attempt, UnsendableError};
use super::rate::RateLimiter;
use super::render::{Rendered, Renderer};
use super::retry::{decide, Decision};
use super::streak::FailureStreak;
use super::{DeliveryError, Shared};
use crate::config::{Op, SubscriptionConfig};
use crate::store::{Start, Store, StoreError, StoredEvent};

/// Events read from the store per query: large enough to amortise the read,
/// small enough to keep a page of large events bounded in memory.
const PAGE_SIZE: usize = 256;

/// Persist the cursor after this many unflushed delivered/skipped events: at
/// most this many duplicates after a crash.
const FLUSH_EVERY_EVENTS: u64 = 64;

/// Persist the cursor at least this often while events keep flowing, so the
/// status API and a crash never lag far behind.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

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
    sub: SubscriptionConfig,
    endpoint: super::http::Endpoint,
    renderer: Renderer,
    shared: Shared,
    appended: watch::Receiver<i64>,
    appended_closed: bool,
    limits: Limits,
    rate: Option<RateLimiter>,
    streak: FailureStreak,
    /// Events read from the store and not yet taken, in seq order.
    buffer: VecDeque<StoredEvent>,
    /// The highest seq read from the store.
    read_pos: i64,
    /// Last event delivered, dead-lettered or skipped.
    cursor: i64,
    /// Cursor as last written to the store.
    persisted: i64,
    unflushed_delivered: u64,
    unflushed_events: u64,
    dirty_since: Option<Instant>,
    /// Failed attempts of the next wanted event (or batch).
    attempts: u32,
    /// Backoff to wait before the next attempt.
    pending_wait: Option<Duration>,
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
            limits: Limits::of(&sub),
            rate: sub.rate_limit.map(RateLimiter::new),
            streak: FailureStreak::new(sub.disable_after),
            sub,
            endpoint,
            renderer,
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
            attempts: 0,
            pending_wait: None,
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
        self.cursor = state.cursor;
        self.persisted = state.cursor;
        self.read_pos = state.cursor;
        self.attempts = state.attempts;
        let now_ms = unix_ms(self.shared.clock.now());
        self.pending_wait = state
            .next_attempt_at_ms
            .map(|at| Duration::from_millis(u64::try_from(at.saturating_sub(now_ms)).unwrap_or(0)));
        info!(subscription = %self.sub.name, cursor = self.cursor, attempts = self.attempts, "delivery worker started");
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
                // A body that cannot be rendered is dead-lettered on its own,
                // never with the healthy events around it.
                let body_len = match self.renderer.render_event(&event) {
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

    fn wants(&self, event: &StoredEvent) -> bool {
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
            && self.renderer.matches(event).unwrap_or_else(|err| {
                warn!(subscription = %self.sub.name, event_id = %event.id, error = %err, "filter failed on this event; counting it as not matching");
                false
            })
    }

    /// Sends `batch` until it is delivered, dead-lettered or the worker stops.
    async fn deliver(&mut self, batch: Batch) -> Result<Step, DeliveryError> {
        let through = batch.through();
        let events = batch.into_events();
        let Some(first) = events.first() else {
            return Ok(Step::Next);
        };
        let id = first.id.clone();
        let count = u64::try_from(events.len()).unwrap_or(u64::MAX);
        // A render failure is permanent: the policy dead-letters it at once.
        let (rendered, mut unsendable) = match self.renderer.render(&events) {
            Ok(rendered) => (rendered, None),
            Err(err) => (Rendered::default(), Some(UnsendableError::from(err))),
        };
        loop {
            if let Some(wait) = self.pending_wait.take() {
                if !self.sleep_unless_cancelled(wait).await {
                    return Ok(Step::Stop);
                }
            }
            let attempt = match unsendable.take() {
                Some(err) => Attempt::Unsendable(err),
                None => match self.send(&id, &rendered).await {
                    Some(attempt) => attempt,
                    None => return Ok(Step::Stop),
                },
            };
            let number = self.attempts.saturating_add(1);
            let now = self.shared.clock.now();
            let decision = decide(
                attempt.outcome(),
                number,
                &self.sub.retry,
                now,
                &mut rand::rng(),
            );
            let reason = attempt.describe(self.endpoint.timeout());
            match decision {
                Decision::Delivered => {
                    debug!(subscription = %self.sub.name, event_id = %id, events = count, attempt = number, "delivered");
                    self.attempts = 0;
                    self.streak.succeeded();
                    self.moved_past(through, count);
                    return Ok(Step::Next);
                }
                Decision::Retry(delay) => {
                    warn!(
                        subscription = %self.sub.name, event_id = %id, events = count, attempt = number,
                        status = attempt.status(), error = %reason,
                        retry_in = %humantime::format_duration(round_ms(delay)),
                        "delivery attempt failed; will retry"
                    );
                    self.flush().await?;
                    let next_at = unix_ms(now)
                        .saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
                    let recorded = reason.clone();
                    self.store_call("record a failed attempt", move |s, name| {
                        s.record_failure(name, number, next_at, &recorded)
                    })
                    .await?;
                    self.attempts = number;
                    self.pending_wait = Some(delay);
                    if self.streak.failed() {
                        return self.disable_after_streak(&reason).await;
                    }
                }
                Decision::DeadLetter => {
                    warn!(
                        subscription = %self.sub.name, event_id = %id, events = count, attempt = number,
                        status = attempt.status(), error = %reason,
                        "delivery attempt failed; moved to dead letters"
                    );
                    self.flush().await?;
                    let status = attempt.status();
                    let excerpt = attempt.excerpt().map(str::to_owned);
                    let recorded = reason.clone();
                    let last = events.last().map_or(0, |e| e.seq);
                    // One dead letter per event, each with the batch's reason.
                    self.store_call("store a dead letter", move |s, name| {
                        for event in &events {
                            s.dead_letter(
                                name,
                                event,
                                number,
                                status,
                                &recorded,
                                excerpt.as_deref(),
                            )?;
                        }
                        Ok(())
                    })
                    .await?;
                    self.attempts = 0;
                    self.persisted = self.persisted.max(last);
                    self.cursor = self.cursor.max(last);
                    if through > last {
                        // Unwanted events after the batch: skipped.
                        self.moved_past(through, 0);
                    }
                    if self.streak.failed() {
                        return self.disable_after_streak(&reason).await;
                    }
                    return Ok(Step::Next);
                }
                Decision::Disable => {
                    let why = format!(
                        "endpoint answered {reason} to event {id}; fix the subscription's url, \
                         then reload walhook (SIGHUP) or restart it to re-enable the subscription"
                    );
                    error!(
                        subscription = %self.sub.name, event_id = %id, attempt = number,
                        status = attempt.status(), "endpoint is gone; subscription disabled"
                    );
                    self.disable(why).await?;
                    return Ok(Step::Stop);
                }
            }
        }
    }

    /// `disable_after` consecutive failed attempts: disable and stop.
    async fn disable_after_streak(&mut self, last_error: &str) -> Result<Step, DeliveryError> {
        let failures = self.streak.count();
        let why = format!(
            "disabled after {failures} consecutive failed attempts (last: {last_error}); fix the \
             endpoint, then reload walhook (SIGHUP) or restart it to re-enable the subscription"
        );
        error!(
            subscription = %self.sub.name, failures, last_error = %last_error,
            "subscription disabled after {failures} consecutive failed attempts (disable_after); \
             its events are kept; reload (SIGHUP) or restart walhook to re-enable it"
        );
        self.disable(why).await?;
        Ok(Step::Stop)
    }

    /// Flushes the cursor and marks the subscription disabled in the store.
    async fn disable(&mut self, why: String) -> Result<(), DeliveryError> {
        self.flush().await?;
        self.store_call("disable the subscription", move |s, name| {
            s.set_disabled(name, Some(&why))
        })
        .await
    }

    /// One HTTP attempt under the rate limit and the global limit; None when
    /// shutdown stopped it.
    async fn send(&mut self, id: &str, rendered: &Rendered) -> Option<Attempt> {
        if let Some(rate) = self.rate.as_mut() {
            let wait = rate.reserve(Instant::now());
            if !wait.is_zero() && !self.sleep_unless_cancelled(wait).await {
                return None;
            }
        }
        let shutdown = &self.shared.shutdown;
        let permit = tokio::select! {
            biased;
            () = shutdown.cancelled() => return None,
            permit = self.shared.limiter.clone().acquire_owned() => permit.ok()?,
        };
        let timestamp = unix_secs(self.shared.clock.now());
        let request = self.endpoint.send(
            &self.shared.client,
            id,
            timestamp,
            rendered.body.clone(),
            &rendered.headers,
        );
        let grace = async {
            shutdown.cancelled().await;
            tokio::time::sleep(self.shared.grace).await;
        };
        let attempt = tokio::select! {
            biased;
            attempt = request => attempt,
            () = grace => {
                warn!(subscription = %self.sub.name, event_id = %id, "shutdown grace period over; abandoning the in-flight request, it will be re-sent after restart");
                return None;
            }
        };
        drop(permit);
        Some(attempt)
    }

    /// Waits for an append signal, the poll interval or `deadline`
    /// (whichever comes first); false on shutdown.
    async fn wait_for_events(&mut self, deadline: Option<Instant>) -> bool {
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

    /// Sleeps for `wait`; false if shutdown came first.
    async fn sleep_unless_cancelled(&self, wait: Duration) -> bool {
        tokio::select! {
            biased;
            () = self.shared.shutdown.cancelled() => false,
            () = tokio::time::sleep(wait) => true,
        }
    }

    /// Moves the in-memory cursor; the store sees it at the next flush.
    fn moved_past(&mut self, seq: i64, delivered: u64) {
        self.cursor = self.cursor.max(seq);
        self.unflushed_delivered += delivered;
        self.unflushed_events += delivered.max(1);
        self.dirty_since.get_or_insert_with(Instant::now);
    }

    async fn maybe_flush(&mut self) -> Result<(), DeliveryError> {
        let due = self.unflushed_events >= FLUSH_EVERY_EVENTS
            || self
                .dirty_since
                .is_some_and(|since| since.elapsed() >= FLUSH_INTERVAL);
        if due {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes the coalesced cursor advance, if any.
    async fn flush(&mut self) -> Result<(), DeliveryError> {
        if self.cursor <= self.persisted && self.unflushed_delivered == 0 {
            self.unflushed_events = 0;
            self.dirty_since = None;
            return Ok(());
        }
        let (seq, delivered) = (self.cursor, self.unflushed_delivered);
        self.store_call("advance its cursor", move |s, name| {
            s.advance(name, seq, delivered)
        })
        .await?;
        self.persisted = seq;
        self.unflushed_delivered = 0;
        self.unflushed_events = 0;
        self.dirty_since = None;
        Ok(())
    }

    /// Runs a blocking store call off the async threads.
    async fn store_call<T, F>(&self, action: &'static str, call: F) -> Result<T, DeliveryError>
    where
        T: Send + 'static,
        F: FnOnce(&Store, &str) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.shared.store.clone();
        let name = self.sub.name.clone();
        match tokio::task::spawn_blocking(move || call(&store, &name)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(DeliveryError::Store {
                subscription: self.sub.name.clone(),
                action,
                source: Box::new(source),
            }),
            Err(source) => Err(DeliveryError::StoreTask {
                subscription: self.sub.name.clone(),
                source,
            }),
        }
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
