//! The one "deliver this request until it is delivered or dead-lettered"
//! step, shared by the commit-order worker (`super::worker`) and the lanes
//! of `ordering = "key"` (`super::lanes`).
//!
//! A [`Sender`] holds what every request of a subscription shares: the
//! endpoint, the renderer, the rate limiter and the `disable_after` streak
//! (both behind a mutex, so with lanes they apply across all lanes of the
//! subscription) and the global semaphore (in `Shared`). The retry state of
//! the request being delivered ([`RetryState`]) belongs to the caller: the
//! commit worker has one, each lane has its own.
//!
//! Every attempt is counted in the subscription's metrics and recorded for
//! the delivery history (`store::history`): a failure, dead letter or
//! disable writes the buffered history with its own state change; delivered
//! attempts wait in the buffer for the worker's next cursor flush
//! ([`Sender::take_history`]), so they cost no commit of their own.

use std::borrow::Cow;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use tokio::time::Instant;
use tracing::{debug, error, warn};

use super::http::{Attempt, Endpoint, UnsendableError};
use super::rate::RateLimiter;
use super::render::{Rendered, Renderer};
use super::retry::{decide, Decision};
use super::streak::FailureStreak;
use super::worker::{unix_ms, unix_secs, Worker};
use super::{DeliveryError, Shared};
use crate::config::SubscriptionConfig;
use crate::metrics::SubscriptionMetrics;
use crate::store::{AttemptOutcome, AttemptRecord, Store, StoreError, StoredEvent};

/// Delivered attempts buffered for the history are written by the worker's
/// next flush, or on their own once this many are waiting (lanes whose
/// cursor is held back by a stuck key do not flush the cursor).
pub(crate) const HISTORY_FLUSH_ROWS: usize = 64;

/// Attempts not yet written to the history.
#[derive(Debug, Default)]
struct HistoryBuffer {
    rows: Vec<AttemptRecord>,
    since: Option<Instant>,
}

/// Failed attempts of the request being delivered, and the backoff before its next attempt.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RetryState {
    pub(crate) attempts: u32,
    pub(crate) pending_wait: Option<Duration>,
}

/// How a request ended.
#[derive(Debug)]
pub(crate) enum Done {
    /// A 2xx.
    Delivered,
    /// Every event became a dead letter; `disable` is set when this failure
    /// completed a `disable_after` streak.
    DeadLettered { disable: Option<String> },
    /// The subscription must be disabled with this reason (410 Gone, or a
    /// `disable_after` streak reached on a retry). Nothing was written yet.
    Disable(String),
    /// Shutdown came first; the request is not finished.
    Stopped,
}

/// Where the cursor goes when a request is dead-lettered.
pub(crate) enum CursorMode<'a> {
    /// Commit order: pending advances are flushed before a failure or dead
    /// letter is written (`Store::advance` resets the attempt counter), and
    /// a dead letter moves the cursor past its event.
    Commit(&'a mut Worker),
    /// A lane: the cursor is the dispatcher's low watermark; dead letters
    /// leave it alone.
    Lane,
}

/// What every request of one subscription shares (cheap to clone).
#[derive(Clone)]
pub(crate) struct Sender {
    pub(crate) sub: Arc<SubscriptionConfig>,
    endpoint: Arc<Endpoint>,
    pub(crate) renderer: Arc<Renderer>,
    pub(crate) shared: Shared,
    rate: Option<Arc<Mutex<RateLimiter>>>,
    streak: Arc<Mutex<FailureStreak>>,
    metrics: SubscriptionMetrics,
    history: Arc<Mutex<HistoryBuffer>>,
}

impl Sender {
    pub(crate) fn new(
        sub: SubscriptionConfig,
        endpoint: Endpoint,
        renderer: Renderer,
        shared: Shared,
    ) -> Sender {
        Sender {
            rate: sub
                .rate_limit
                .map(|limit| Arc::new(Mutex::new(RateLimiter::new(limit)))),
            streak: Arc::new(Mutex::new(FailureStreak::new(sub.disable_after))),
            metrics: shared.metrics.subscription(&sub.name),
            history: Arc::new(Mutex::new(HistoryBuffer::default())),
            sub: Arc::new(sub),
            endpoint: Arc::new(endpoint),
            renderer: Arc::new(renderer),
            shared,
        }
    }

    /// Sends `events` as one request until it is delivered, dead-lettered,
    /// the subscription must be disabled, or shutdown stops it. The events
    /// are taken by value so a dead letter stores them without another copy
    /// (a 10 MB row must not be held three times).
    pub(crate) async fn deliver(
        &self,
        retry: &mut RetryState,
        events: Vec<StoredEvent>,
        mut mode: CursorMode<'_>,
    ) -> Result<Done, DeliveryError> {
        let Some(first) = events.first() else {
            return Ok(Done::Delivered);
        };
        let (id, op, form) = (first.id.clone(), first.op.clone(), first.form.clone());
        let count = events.len();
        let mut events = events;
        let (mut rendered, mut unsendable, lent) = self.prepare(&mut events);
        loop {
            if let Some(wait) = retry.pending_wait.take() {
                if !self.sleep_unless_cancelled(wait).await {
                    return Ok(Done::Stopped);
                }
            }
            let (attempt, took) = match unsendable.take() {
                Some(err) => (Attempt::Unsendable(err), Duration::ZERO),
                None => match self.send(&id, &rendered).await {
                    Some(sent) => sent,
                    None => return Ok(Done::Stopped),
                },
            };
            let number = retry.attempts.saturating_add(1);
            let now = self.shared.clock.now();
            let decision = decide(
                attempt.outcome(),
                number,
                &self.sub.retry,
                now,
                &mut rand::rng(),
            );
            let reason = attempt.describe(self.endpoint.timeout());
            let outcome = match decision {
                Decision::Delivered => AttemptOutcome::Delivered,
                Decision::Retry(_) => AttemptOutcome::Retry,
                Decision::DeadLetter => AttemptOutcome::DeadLetter,
                Decision::Disable => AttemptOutcome::Disabled,
            };
            let latencies: Vec<Duration> = if outcome == AttemptOutcome::Delivered {
                if lent {
                    // The single event's payload is the body.
                    commit_latency(&rendered.body, now).into_iter().collect()
                } else {
                    events
                        .iter()
                        .filter_map(|e| commit_latency(&e.payload, now))
                        .collect()
                }
            } else {
                Vec::new()
            };
            let now_ms = unix_ms(now);
            self.metrics
                .attempt(outcome, took, number > 1, &latencies, now_ms);
            let record = AttemptRecord {
                event_id: id.clone(),
                op: op.clone(),
                form: form.clone(),
                events: u32::try_from(count).unwrap_or(u32::MAX),
                attempt: number,
                outcome,
                status: attempt.status(),
                duration_ms: i64::try_from(took.as_millis()).unwrap_or(i64::MAX),
                latency_ms: latencies
                    .first()
                    .map(|l| i64::try_from(l.as_millis()).unwrap_or(i64::MAX)),
                error: (outcome != AttemptOutcome::Delivered).then(|| reason.clone()),
                at_ms: now_ms,
            };
            match decision {
                Decision::Delivered => {
                    if crate::failpoint::failpoint!("after_2xx_before_mark") {
                        // `error`: forget this 2xx, as a crash would, and retry.
                        retry.pending_wait = Some(Duration::from_millis(100));
                        continue;
                    }
                    debug!(subscription = %self.sub.name, event_id = %id, events = count, attempt = number, "delivered");
                    self.buffer_history(record);
                    *retry = RetryState::default();
                    lock(&self.streak).succeeded();
                    return Ok(Done::Delivered);
                }
                Decision::Retry(delay) => {
                    warn!(
                        subscription = %self.sub.name, event_id = %id, events = count, attempt = number,
                        status = attempt.status(), error = %reason,
                        retry_in = %humantime::format_duration(round_ms(delay)),
                        "delivery attempt failed; will retry"
                    );
                    if let CursorMode::Commit(worker) = &mut mode {
                        worker.flush().await?;
                    }
                    let next_at = unix_ms(now)
                        .saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
                    let recorded = reason.clone();
                    let mut history = self.take_history();
                    history.push(record);
                    self.store_call("record a failed attempt", move |s, name| {
                        s.record_failure_with(name, number, next_at, &recorded, &history)
                    })
                    .await?;
                    retry.attempts = number;
                    retry.pending_wait = Some(delay);
                    if lock(&self.streak).failed() {
                        return Ok(Done::Disable(self.streak_reason(&reason)));
                    }
                }
                Decision::DeadLetter => {
                    warn!(
                        subscription = %self.sub.name, event_id = %id, events = count, attempt = number,
                        status = attempt.status(), error = %reason,
                        "delivery attempt failed; moved to dead letters"
                    );
                    let move_cursor = match &mut mode {
                        CursorMode::Commit(worker) => {
                            worker.flush().await?;
                            true
                        }
                        CursorMode::Lane => false,
                    };
                    let status = attempt.status();
                    let excerpt = attempt.excerpt().map(str::to_owned);
                    let recorded = reason.clone();
                    if lent {
                        // The request is over, so the body is ours alone
                        // again: this moves the bytes back, without a copy.
                        events[0].payload = Vec::from(std::mem::take(&mut rendered.body));
                    }
                    let mut history = self.take_history();
                    history.push(record);
                    self.metrics.dead_lettered(events.len() as u64);
                    // One dead letter per event, each with the batch's reason.
                    self.store_call("store a dead letter", move |s, name| {
                        s.record_attempts(name, &history)?;
                        for event in &events {
                            let excerpt = excerpt.as_deref();
                            if move_cursor {
                                s.dead_letter(name, event, number, status, &recorded, excerpt)?;
                            } else {
                                s.dead_letter_keep_cursor(
                                    name, event, number, status, &recorded, excerpt,
                                )?;
                            }
                        }
                        Ok(())
                    })
                    .await?;
                    *retry = RetryState::default();
                    let disable = lock(&self.streak)
                        .failed()
                        .then(|| self.streak_reason(&reason));
                    return Ok(Done::DeadLettered { disable });
                }
                Decision::Disable => {
                    error!(
                        subscription = %self.sub.name, event_id = %id, attempt = number,
                        status = attempt.status(), error = %reason, "endpoint is gone; subscription disabled"
                    );
                    // Written by the worker's flush before it disables the subscription.
                    self.buffer_history(record);
                    return Ok(Done::Disable(format!(
                        "endpoint answered {reason} to event {id}; fix the subscription's url, \
                         then reload walhook (SIGHUP) or restart it to re-enable the subscription"
                    )));
                }
            }
        }
    }

    /// Renders the request. A single event sent as stored (see
    /// [`Renderer::sends_payload_as_is`]) lends its payload to the body
    /// (`true` in the result) instead of copying it, so a 10 MB row is held
    /// once, not twice, while it is sent. A render failure, like a body over
    /// `max_body_bytes`, is returned as the error that dead-letters the
    /// request at once.
    fn prepare(&self, events: &mut [StoredEvent]) -> (Rendered, Option<UnsendableError>, bool) {
        let limit = self.shared.max_body_bytes(&self.sub);
        let too_large = |bytes: usize| Some(UnsendableError::TooLarge { bytes, limit });
        if let [event] = events {
            if self.renderer.sends_payload_as_is() {
                let bytes = event.payload.len();
                if bytes > limit {
                    return (Rendered::default(), too_large(bytes), false);
                }
                let body = Bytes::from(std::mem::take(&mut event.payload));
                let rendered = Rendered {
                    body,
                    headers: Default::default(),
                };
                return (rendered, None, true);
            }
        }
        match self.renderer.render(events) {
            Ok(rendered) if rendered.body.len() > limit => {
                (Rendered::default(), too_large(rendered.body.len()), false)
            }
            Ok(rendered) => (rendered, None, false),
            Err(err) => (Rendered::default(), Some(UnsendableError::from(err)), false),
        }
    }

    /// Adds a finished attempt to the history buffer.
    fn buffer_history(&self, record: AttemptRecord) {
        let mut buffer = lock(&self.history);
        buffer.since.get_or_insert_with(Instant::now);
        buffer.rows.push(record);
    }

    /// Takes the attempts not yet written to the history.
    pub(crate) fn take_history(&self) -> Vec<AttemptRecord> {
        let mut buffer = lock(&self.history);
        buffer.since = None;
        std::mem::take(&mut buffer.rows)
    }

    /// Whether buffered attempts should be written even without a cursor
    /// move: many are waiting, or the oldest waited `max_wait`.
    pub(crate) fn history_due(&self, max_wait: Duration) -> bool {
        let buffer = lock(&self.history);
        buffer.rows.len() >= HISTORY_FLUSH_ROWS
            || buffer
                .since
                .is_some_and(|since| since.elapsed() >= max_wait)
    }

    /// The disable reason for a `disable_after` streak, logged once.
    fn streak_reason(&self, last_error: &str) -> String {
        let failures = lock(&self.streak).count();
        error!(
            subscription = %self.sub.name, failures, last_error = %last_error,
            "subscription disabled after {failures} consecutive failed attempts (disable_after); \
             its events are kept; reload (SIGHUP) or restart walhook to re-enable it"
        );
        format!(
            "disabled after {failures} consecutive failed attempts (last: {last_error}); fix the \
             endpoint, then reload walhook (SIGHUP) or restart it to re-enable the subscription"
        )
    }

    /// One HTTP attempt under the rate limit and the global limit, and how
    /// long the request itself took; None when shutdown stopped it.
    async fn send(&self, id: &str, rendered: &Rendered) -> Option<(Attempt, Duration)> {
        if let Some(rate) = &self.rate {
            let wait = lock(rate).reserve(Instant::now());
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
        let started = Instant::now();
        let request = self.endpoint.send(
            self.shared.client.inner(),
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
        Some((attempt, started.elapsed()))
    }

    /// Sleeps for `wait`; false if shutdown came first.
    pub(crate) async fn sleep_unless_cancelled(&self, wait: Duration) -> bool {
        tokio::select! {
            biased;
            () = self.shared.shutdown.cancelled() => false,
            () = tokio::time::sleep(wait) => true,
        }
    }

    /// Runs a blocking store call off the async threads. A full store
    /// ([`StoreError::is_full`]) pauses the subscription: the call is retried
    /// with backoff until it succeeds, or fails with the error on shutdown.
    pub(crate) async fn store_call<T, F>(
        &self,
        action: &'static str,
        call: F,
    ) -> Result<T, DeliveryError>
    where
        T: Send + 'static,
        F: Fn(&Store, &str) -> Result<T, StoreError> + Send + Sync + 'static,
    {
        // Shared, not cloned, between retries: a dead letter's call holds
        // its events, and a 10 MB row must not be copied per attempt.
        let call = Arc::new(call);
        let mut failures: u32 = 0;
        loop {
            let store = self.shared.store.clone();
            let name = self.sub.name.clone();
            let attempt = Arc::clone(&call);
            let source = match tokio::task::spawn_blocking(move || attempt(&store, &name)).await {
                Ok(Ok(value)) => {
                    if failures > 0 {
                        warn!(subscription = %self.sub.name, action, "the store is writable again; delivery resumes");
                    }
                    return Ok(value);
                }
                Ok(Err(source)) => source,
                Err(source) => {
                    return Err(DeliveryError::StoreTask {
                        subscription: self.sub.name.clone(),
                        source,
                    })
                }
            };
            let store_error = |source| DeliveryError::Store {
                subscription: self.sub.name.clone(),
                action,
                source: Box::new(source),
            };
            if !source.is_full() {
                return Err(store_error(source));
            }
            failures += 1;
            let delay = crate::store::full_retry_delay(failures);
            error!(
                subscription = %self.sub.name, action, error = %source, attempt = failures,
                retry_in_ms = delay.as_millis() as u64,
                "the store is full: delivery is paused; free space on the store's filesystem and walhook resumes by itself"
            );
            if !self.sleep_unless_cancelled(delay).await {
                return Err(store_error(source));
            }
        }
    }
}

/// Time from the event's commit (`source.commit_time` in its JSON) to `now`;
/// None for events without one (or a clock that went backwards).
fn commit_latency(payload: &[u8], now: SystemTime) -> Option<Duration> {
    #[derive(serde::Deserialize)]
    struct Event<'a> {
        #[serde(borrow)]
        source: Option<Source<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Source<'a> {
        #[serde(borrow)]
        commit_time: Option<Cow<'a, str>>,
    }
    let event: Event<'_> = serde_json::from_slice(payload).ok()?;
    let committed = humantime::parse_rfc3339(&event.source?.commit_time?).ok()?;
    now.duration_since(committed).ok()
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Locks ignoring poisoning (the guarded values stay consistent on panic).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
