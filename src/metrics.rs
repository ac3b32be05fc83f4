//! Prometheus metrics: every name and label as a const, and the recorder of
//! one running walhook.
//!
//! Each [`Metrics`] owns its own recorder (no process-wide global), so
//! several walhooks in one process (the tests, the demo) never mix their
//! numbers; the admin server renders it at `GET /metrics`.
//!
//! Labels are few and bounded: `subscription` and `form` come from the
//! config, `op` and `outcome` are small fixed sets. Event ids, URLs, status
//! codes and error texts are never labels.
//!
//! Besides the Prometheus numbers (cumulative since start), each
//! subscription keeps a rolling one-hour window of its attempts
//! ([`RecentSummary`]: success rate, p50/p99 delivery latency) for the
//! status page and the JSON API, in memory: it starts empty after a restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use serde::Serialize;

use crate::store::AttemptOutcome;

/// Events handed over by capture (re-sent ones included), by `form` and `op`.
pub const EVENTS_CAPTURED: &str = "walhook_events_captured_total";
/// Events newly written to the store (re-sent duplicates not counted).
pub const EVENTS_STORED: &str = "walhook_events_stored_total";
/// Events retained in the store.
pub const STORE_EVENTS: &str = "walhook_store_events";
/// Bytes of the store on disk (database and its WAL file).
pub const STORE_BYTES: &str = "walhook_store_bytes";
/// Events a subscription has not handled yet, by `subscription`.
pub const BACKLOG: &str = "walhook_backlog_events";
/// Delivery attempts by `subscription` and `outcome` ([`AttemptOutcome`]).
pub const DELIVERIES: &str = "walhook_deliveries_total";
/// Seconds from an event's commit in PostgreSQL to its 2xx, by `subscription`.
pub const DELIVERY_LATENCY: &str = "walhook_delivery_latency_seconds";
/// Seconds one HTTP attempt took, by `subscription`.
pub const ATTEMPT_DURATION: &str = "walhook_attempt_duration_seconds";
/// Attempts that were retries (second attempt of a request or later), by `subscription`.
pub const RETRIES: &str = "walhook_retries_total";
/// Events moved to dead letters, by `subscription`.
pub const DEAD_LETTERS: &str = "walhook_dead_letters_total";
/// WAL bytes between the server's current position and the slot's confirmed position.
pub const REPLICATION_LAG_BYTES: &str = "walhook_replication_lag_bytes";
/// PostgreSQL's flush lag of walhook's walsender (`pg_stat_replication.flush_lag`), 0 when caught up.
pub const REPLICATION_LAG_SECONDS: &str = "walhook_replication_lag_seconds";
/// The slot's `confirmed_flush_lsn` as a number.
pub const CONFIRMED_LSN: &str = "walhook_confirmed_flush_lsn";
/// The highest LSN durably stored (what walhook may acknowledge) as a number.
pub const DURABLE_LSN: &str = "walhook_durable_lsn";
/// Replication reconnects since start.
pub const RECONNECTS: &str = "walhook_replication_reconnects_total";
/// 1 while replication is streaming, else 0.
pub const STREAMING: &str = "walhook_replication_streaming";
/// Admin requests refused for a missing or wrong bearer token.
pub const ADMIN_UNAUTHORIZED: &str = "walhook_admin_unauthorized_total";
/// Admin connections refused by `admin.allow`.
pub const ADMIN_REJECTED: &str = "walhook_admin_rejected_connections_total";

/// Label: the subscription's name.
pub const LABEL_SUBSCRIPTION: &str = "subscription";
/// Label: the form's name.
pub const LABEL_FORM: &str = "form";
/// Label: the event op (`data_create`, ...).
pub const LABEL_OP: &str = "op";
/// Label: an attempt's outcome (`delivered`, `retry`, `dead_letter`, `disabled`).
pub const LABEL_OUTCOME: &str = "outcome";

/// Buckets of [`DELIVERY_LATENCY`] (seconds): from a fast local receiver to
/// an endpoint that was down for an hour.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];
/// Buckets of [`ATTEMPT_DURATION`] (seconds): up to the longest sensible timeout.
const ATTEMPT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

const METADATA: Metadata<'static> = Metadata::new("walhook", Level::INFO, Some("walhook"));

/// The metrics of one running walhook (cheap `Clone`); see the module docs.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

struct Inner {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    captured: Mutex<HashMap<(String, String), Counter>>,
    backlogs: Mutex<HashMap<String, Gauge>>,
    subscriptions: Mutex<HashMap<String, SubscriptionMetrics>>,
    stored: Counter,
    store_events: Gauge,
    store_bytes: Gauge,
    lag_bytes: Gauge,
    lag_seconds: Gauge,
    confirmed_lsn: Gauge,
    durable_lsn: Gauge,
    reconnects: Counter,
    streaming: Gauge,
    unauthorized: Counter,
    rejected: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh recorder with every process-wide metric registered (at 0).
    pub fn new() -> Metrics {
        let builder = PrometheusBuilder::new();
        // Full-name matchers on fixed names cannot be invalid.
        let builder = builder
            .set_buckets_for_metric(Matcher::Full(DELIVERY_LATENCY.into()), LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(ATTEMPT_DURATION.into()), ATTEMPT_BUCKETS)
            })
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        describe(&recorder);
        let handle = recorder.handle();
        let counter =
            |name: &'static str| recorder.register_counter(&Key::from_name(name), &METADATA);
        let gauge = |name: &'static str| recorder.register_gauge(&Key::from_name(name), &METADATA);
        let inner = Inner {
            stored: counter(EVENTS_STORED),
            store_events: gauge(STORE_EVENTS),
            store_bytes: gauge(STORE_BYTES),
            lag_bytes: gauge(REPLICATION_LAG_BYTES),
            lag_seconds: gauge(REPLICATION_LAG_SECONDS),
            confirmed_lsn: gauge(CONFIRMED_LSN),
            durable_lsn: gauge(DURABLE_LSN),
            reconnects: counter(RECONNECTS),
            streaming: gauge(STREAMING),
            unauthorized: counter(ADMIN_UNAUTHORIZED),
            rejected: counter(ADMIN_REJECTED),
            captured: Mutex::new(HashMap::new()),
            backlogs: Mutex::new(HashMap::new()),
            subscriptions: Mutex::new(HashMap::new()),
            handle,
            recorder,
        };
        Metrics {
            inner: Arc::new(inner),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.inner.handle.render()
    }

    /// Folds histogram samples into their buckets; call now and then so
    /// memory stays bounded between scrapes.
    pub fn upkeep(&self) {
        self.inner.handle.run_upkeep();
    }

    /// `n` events of `form` with `op` were handed over by capture.
    pub fn captured(&self, form: &str, op: &str, n: u64) {
        let mut map = lock(&self.inner.captured);
        let key = (form.to_owned(), op.to_owned());
        let counter = map.entry(key).or_insert_with(|| {
            let labels = vec![
                Label::new(LABEL_FORM, form.to_owned()),
                Label::new(LABEL_OP, op.to_owned()),
            ];
            self.inner
                .recorder
                .register_counter(&Key::from_parts(EVENTS_CAPTURED, labels), &METADATA)
        });
        counter.increment(n);
    }

    /// `n` events were newly stored.
    pub fn stored(&self, n: u64) {
        self.inner.stored.increment(n);
    }

    /// The store's size.
    pub fn set_store(&self, events: u64, bytes: u64) {
        self.inner.store_events.set(events as f64);
        self.inner.store_bytes.set(bytes as f64);
    }

    /// The durable LSN.
    pub fn set_durable_lsn(&self, lsn: u64) {
        self.inner.durable_lsn.set(lsn as f64);
    }

    /// A subscription's backlog.
    pub fn set_backlog(&self, subscription: &str, events: u64) {
        let mut map = lock(&self.inner.backlogs);
        let gauge = map.entry(subscription.to_owned()).or_insert_with(|| {
            self.inner.recorder.register_gauge(
                &Key::from_parts(
                    BACKLOG,
                    vec![Label::new(LABEL_SUBSCRIPTION, subscription.to_owned())],
                ),
                &METADATA,
            )
        });
        gauge.set(events as f64);
    }

    /// The slot as last sampled.
    pub fn set_slot(
        &self,
        lag_bytes: Option<i64>,
        lag_seconds: Option<f64>,
        confirmed: Option<u64>,
    ) {
        if let Some(bytes) = lag_bytes {
            self.inner.lag_bytes.set(bytes.max(0) as f64);
        }
        if let Some(seconds) = lag_seconds {
            self.inner.lag_seconds.set(seconds.max(0.0));
        }
        if let Some(lsn) = confirmed {
            self.inner.confirmed_lsn.set(lsn as f64);
        }
    }

    /// Capture's streaming state and reconnect count (from [`crate::health::Health`]).
    pub fn set_replication(&self, streaming: bool, reconnects: u64) {
        self.inner.streaming.set(if streaming { 1.0 } else { 0.0 });
        self.inner.reconnects.absolute(reconnects);
    }

    /// An admin request was refused for its token.
    pub fn unauthorized(&self) {
        self.inner.unauthorized.increment(1);
    }

    /// An admin connection was refused by `admin.allow`.
    pub fn rejected(&self) {
        self.inner.rejected.increment(1);
    }

    /// The handles of one subscription (the same ones on every call, so a
    /// restarted worker keeps counting in the same series and window).
    pub fn subscription(&self, name: &str) -> SubscriptionMetrics {
        let mut map = lock(&self.inner.subscriptions);
        map.entry(name.to_owned())
            .or_insert_with(|| SubscriptionMetrics::register(&self.inner.recorder, name))
            .clone()
    }

    /// The last hour of a subscription's attempts (empty if it made none).
    pub fn recent(&self, name: &str, now_ms: i64) -> RecentSummary {
        let map = lock(&self.inner.subscriptions);
        map.get(name)
            .map(|m| lock(&m.recent).summary(now_ms))
            .unwrap_or_default()
    }
}

fn describe(recorder: &PrometheusRecorder) {
    let counters = [
        (EVENTS_CAPTURED, "Events handed over by capture (re-sent ones included), by form and op."),
        (EVENTS_STORED, "Events newly written to the store."),
        (DELIVERIES, "Delivery attempts by subscription and outcome (delivered, retry, dead_letter, disabled)."),
        (RETRIES, "Delivery attempts that were retries."),
        (DEAD_LETTERS, "Events moved to dead letters."),
        (RECONNECTS, "Replication reconnects since start."),
        (ADMIN_UNAUTHORIZED, "Admin requests refused for a missing or wrong bearer token."),
        (ADMIN_REJECTED, "Admin connections refused by admin.allow."),
    ];
    for (name, help) in counters {
        recorder.describe_counter(KeyName::from(name), None, help.into());
    }
    let gauges = [
        (STORE_EVENTS, None, "Events retained in the store."),
        (
            STORE_BYTES,
            Some(Unit::Bytes),
            "Bytes of the store on disk.",
        ),
        (BACKLOG, None, "Events a subscription has not handled yet."),
        (
            REPLICATION_LAG_BYTES,
            Some(Unit::Bytes),
            "WAL bytes between the server's position and the slot's confirmed_flush_lsn.",
        ),
        (
            REPLICATION_LAG_SECONDS,
            Some(Unit::Seconds),
            "flush_lag of walhook's walsender in pg_stat_replication (0 when caught up).",
        ),
        (CONFIRMED_LSN, None, "The slot's confirmed_flush_lsn."),
        (DURABLE_LSN, None, "The highest LSN durably stored."),
        (STREAMING, None, "1 while replication is streaming."),
    ];
    for (name, unit, help) in gauges {
        recorder.describe_gauge(KeyName::from(name), unit, help.into());
    }
    recorder.describe_histogram(
        KeyName::from(DELIVERY_LATENCY),
        Some(Unit::Seconds),
        "Seconds from an event's commit to its 2xx.".into(),
    );
    recorder.describe_histogram(
        KeyName::from(ATTEMPT_DURATION),
        Some(Unit::Seconds),
        "Seconds one delivery attempt took.".into(),
    );
}

/// The metric handles and rolling window of one subscription.
#[derive(Clone)]
pub struct SubscriptionMetrics {
    delivered: Counter,
    retry: Counter,
    dead_letter: Counter,
    disabled: Counter,
    retries: Counter,
    dead_letters: Counter,
    latency: Histogram,
    attempt_duration: Histogram,
    recent: Arc<Mutex<Recent>>,
}

impl std::fmt::Debug for SubscriptionMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionMetrics")
            .finish_non_exhaustive()
    }
}

impl SubscriptionMetrics {
    fn register(recorder: &PrometheusRecorder, name: &str) -> SubscriptionMetrics {
        let sub = || Label::new(LABEL_SUBSCRIPTION, name.to_owned());
        let outcome = |o: AttemptOutcome| {
            let labels = vec![sub(), Label::new(LABEL_OUTCOME, o.as_str())];
            recorder.register_counter(&Key::from_parts(DELIVERIES, labels), &METADATA)
        };
        SubscriptionMetrics {
            delivered: outcome(AttemptOutcome::Delivered),
            retry: outcome(AttemptOutcome::Retry),
            dead_letter: outcome(AttemptOutcome::DeadLetter),
            disabled: outcome(AttemptOutcome::Disabled),
            retries: recorder.register_counter(&Key::from_parts(RETRIES, vec![sub()]), &METADATA),
            dead_letters: recorder
                .register_counter(&Key::from_parts(DEAD_LETTERS, vec![sub()]), &METADATA),
            latency: recorder
                .register_histogram(&Key::from_parts(DELIVERY_LATENCY, vec![sub()]), &METADATA),
            attempt_duration: recorder
                .register_histogram(&Key::from_parts(ATTEMPT_DURATION, vec![sub()]), &METADATA),
            recent: Arc::new(Mutex::new(Recent::default())),
        }
    }

    /// One attempt ended with `outcome` after `duration`; `retry` when it
    /// was not the request's first attempt; `latencies` are the commit → 2xx
    /// times of its events when delivered.
    pub fn attempt(
        &self,
        outcome: AttemptOutcome,
        duration: Duration,
        retry: bool,
        latencies: &[Duration],
        now_ms: i64,
    ) {
        match outcome {
            AttemptOutcome::Delivered => self.delivered.increment(1),
            AttemptOutcome::Retry => self.retry.increment(1),
            AttemptOutcome::DeadLetter => self.dead_letter.increment(1),
            AttemptOutcome::Disabled => self.disabled.increment(1),
        }
        if retry {
            self.retries.increment(1);
        }
        self.attempt_duration.record(duration.as_secs_f64());
        for latency in latencies {
            self.latency.record(latency.as_secs_f64());
        }
        lock(&self.recent).record(now_ms, outcome == AttemptOutcome::Delivered, latencies);
    }

    /// `n` events became dead letters.
    pub fn dead_lettered(&self, n: u64) {
        self.dead_letters.increment(n);
    }
}

/// A subscription's last hour, for the status page and the API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct RecentSummary {
    /// Attempts in the window.
    pub attempts: u64,
    /// Of which delivered (2xx).
    pub delivered: u64,
    /// delivered / attempts, when there were attempts.
    pub success_rate: Option<f64>,
    /// Median commit → 2xx latency (ms), within the window's bucket precision (±12%).
    pub p50_latency_ms: Option<u64>,
    /// 99th percentile commit → 2xx latency (ms), same precision.
    pub p99_latency_ms: Option<u64>,
}

/// One-minute slots over the last hour.
const WINDOW_SLOTS: usize = 60;
const SLOT_MS: i64 = 60_000;
/// Latency buckets grow by this factor (so a reported percentile is within ±12%).
const BUCKET_GROWTH: f64 = 1.25;
/// Enough buckets to reach beyond a day (1.25^95 ms ≈ 18 days).
const LATENCY_SLOTS: usize = 96;

#[derive(Clone)]
struct Slot {
    minute: i64,
    attempts: u64,
    delivered: u64,
    latency: [u32; LATENCY_SLOTS],
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            minute: -1,
            attempts: 0,
            delivered: 0,
            latency: [0; LATENCY_SLOTS],
        }
    }
}

/// A ring of per-minute counts and latency histograms.
#[derive(Clone)]
struct Recent {
    slots: Vec<Slot>,
}

impl Default for Recent {
    fn default() -> Self {
        Recent {
            slots: vec![Slot::default(); WINDOW_SLOTS],
        }
    }
}

impl Recent {
    fn record(&mut self, now_ms: i64, delivered: bool, latencies: &[Duration]) {
        let minute = now_ms.div_euclid(SLOT_MS);
        let index = usize::try_from(minute.rem_euclid(WINDOW_SLOTS as i64)).unwrap_or(0);
        let slot = &mut self.slots[index];
        if slot.minute != minute {
            *slot = Slot {
                minute,
                ..Slot::default()
            };
        }
        slot.attempts += 1;
        if delivered {
            slot.delivered += 1;
        }
        for latency in latencies {
            let bucket = latency_bucket(u64::try_from(latency.as_millis()).unwrap_or(u64::MAX));
            slot.latency[bucket] = slot.latency[bucket].saturating_add(1);
        }
    }

    fn summary(&self, now_ms: i64) -> RecentSummary {
        let minute = now_ms.div_euclid(SLOT_MS);
        let live = self.slots.iter().filter(|s| {
            s.minute >= 0 && s.minute > minute - WINDOW_SLOTS as i64 && s.minute <= minute
        });
        let mut out = RecentSummary::default();
        let mut buckets = [0u64; LATENCY_SLOTS];
        for slot in live {
            out.attempts += slot.attempts;
            out.delivered += slot.delivered;
            for (sum, n) in buckets.iter_mut().zip(slot.latency.iter()) {
                *sum += u64::from(*n);
            }
        }
        if out.attempts > 0 {
            out.success_rate = Some(out.delivered as f64 / out.attempts as f64);
        }
        out.p50_latency_ms = percentile(&buckets, 0.50);
        out.p99_latency_ms = percentile(&buckets, 0.99);
        out
    }
}

/// Bucket 0 holds 0 ms; bucket i ≥ 1 holds [1.25^(i-1), 1.25^i) ms.
fn latency_bucket(ms: u64) -> usize {
    if ms == 0 {
        return 0;
    }
    let index = ((ms as f64).ln() / BUCKET_GROWTH.ln()).floor() as usize + 1;
    index.min(LATENCY_SLOTS - 1)
}

/// A representative value of bucket `i` (the geometric middle of its bounds).
fn bucket_value(i: usize) -> u64 {
    if i == 0 {
        return 0;
    }
    let low = BUCKET_GROWTH.powi(i32::try_from(i - 1).unwrap_or(i32::MAX));
    (low * BUCKET_GROWTH.sqrt()).round() as u64
}

fn percentile(buckets: &[u64], q: f64) -> Option<u64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    // The rank of the q-quantile (1-based), at least 1.
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(bucket_value(i));
        }
    }
    None
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_window_forgets_attempts_older_than_an_hour() {
        let mut recent = Recent::default();
        let t0 = 1_700_000_000_000;
        recent.record(t0, true, &[Duration::from_millis(100)]);
        recent.record(t0, false, &[]);
        let s = recent.summary(t0);
        assert_eq!((s.attempts, s.delivered), (2, 1));
        assert_eq!(s.success_rate, Some(0.5));
        // 59 minutes later it still counts; 61 minutes later it does not.
        assert_eq!(recent.summary(t0 + 59 * 60_000).attempts, 2);
        assert_eq!(recent.summary(t0 + 61 * 60_000), RecentSummary::default());
        // A slot reused an hour later starts from zero.
        recent.record(t0 + 60 * 60_000, true, &[]);
        assert_eq!(recent.summary(t0 + 60 * 60_000).attempts, 1);
    }

    #[test]
    fn percentiles_are_within_the_bucket_precision() {
        let mut recent = Recent::default();
        let now = 1_700_000_000_000;
        // 98 fast deliveries and 2 slow ones.
        let fast: Vec<Duration> = (0..98).map(|_| Duration::from_millis(40)).collect();
        recent.record(now, true, &fast);
        recent.record(now, true, &[Duration::from_secs(5), Duration::from_secs(5)]);
        let s = recent.summary(now);
        let p50 = s.p50_latency_ms.unwrap();
        let p99 = s.p99_latency_ms.unwrap();
        assert!((35..=45).contains(&p50), "p50 {p50}");
        assert!((4400..=5600).contains(&p99), "p99 {p99}");
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(u64::MAX), LATENCY_SLOTS - 1);
    }

    #[test]
    fn metrics_render_with_their_labels() {
        let metrics = Metrics::new();
        metrics.captured("orders", "data_create", 3);
        metrics.set_backlog("crm", 7);
        let sub = metrics.subscription("crm");
        sub.attempt(
            AttemptOutcome::Delivered,
            Duration::from_millis(20),
            false,
            &[Duration::from_millis(30)],
            0,
        );
        let text = metrics.render();
        assert!(
            text.contains(r#"walhook_events_captured_total{form="orders",op="data_create"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"walhook_backlog_events{subscription="crm"} 7"#),
            "{text}"
        );
        assert!(
            text.contains(r#"walhook_deliveries_total{subscription="crm",outcome="delivered"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"walhook_delivery_latency_seconds_bucket{subscription="crm",le="0.05"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains("# HELP walhook_events_stored_total"),
            "{text}"
        );
    }
}
