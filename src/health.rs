//! What `/readyz` and the status page know about the running process: is
//! replication streaming (and if not, why), is the store open, is the
//! connection degraded, the last commit seen, how often capture reconnected.
//!
//! One [`Health`] is shared (cheap `Clone`) by capture, which updates it, the
//! app, which sets the store state, and the admin server, which reads
//! [`Health::snapshot`]. Updates are a few field writes under a mutex that is
//! never held across an await.
//!
//! Readiness: ready only while replication is streaming, the store is open
//! and nothing marked the connection degraded ([`Health::set_degraded`], for
//! a receive-timeout watchdog that notices a silent network before the
//! connection errors out).

use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

/// The shared health state; see the module docs.
#[derive(Clone, Debug, Default)]
pub struct Health {
    inner: Arc<Mutex<HealthState>>,
}

/// The replication slot as last sampled from PostgreSQL.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SlotSample {
    /// Whether the slot exists.
    pub exists: bool,
    /// Whether a walsender holds it.
    pub active: bool,
    /// WAL bytes between the server's current position and `confirmed_flush_lsn`.
    pub lag_bytes: Option<i64>,
    /// `pg_stat_replication.flush_lag` of its walsender in seconds (0 when caught up).
    pub lag_seconds: Option<f64>,
    /// The slot's `confirmed_flush_lsn`.
    pub confirmed_flush_lsn: Option<u64>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    /// When it was sampled (ms since the Unix epoch).
    pub sampled_at_ms: i64,
}

/// A copy of the health state at one moment.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HealthState {
    /// Replication is streaming (START_REPLICATION answered, no error since).
    pub streaming: bool,
    /// Why replication is not streaming (connecting, reconnecting after an error, stopped).
    pub reason: Option<String>,
    /// Set while the connection looks unhealthy although no error ended it
    /// (e.g. nothing received for longer than the receive timeout).
    pub degraded: Option<String>,
    /// The store is open and writable.
    pub store_open: bool,
    /// Commit LSN of the last transaction received.
    pub last_commit_lsn: Option<u64>,
    /// Commit time (RFC 3339, UTC) of that transaction.
    pub last_commit_time: Option<String>,
    /// When it was received (ms since the Unix epoch).
    pub last_commit_seen_ms: Option<i64>,
    /// Replication reconnects since start.
    pub reconnects: u64,
    /// The slot, as last sampled (every few seconds while running).
    pub slot: Option<SlotSample>,
}

impl HealthState {
    /// `Ok` when ready; otherwise the reason (the first that applies).
    pub fn readiness(&self) -> Result<(), String> {
        if !self.store_open {
            return Err("the store is not open".into());
        }
        if !self.streaming {
            return Err(match &self.reason {
                Some(reason) => format!("replication is not streaming: {reason}"),
                None => "replication is not streaming yet".into(),
            });
        }
        if let Some(why) = &self.degraded {
            return Err(format!("degraded: {why}"));
        }
        Ok(())
    }
}

impl Health {
    /// A fresh state: not streaming ("starting"), store not open.
    pub fn new() -> Health {
        let health = Health::default();
        health.lock().reason = Some("starting".into());
        health
    }

    /// Replication started streaming; clears the reason and any degraded mark.
    pub fn set_streaming(&self) {
        let mut state = self.lock();
        state.streaming = true;
        state.reason = None;
        state.degraded = None;
    }

    /// Replication is not streaming, for `reason`.
    pub fn set_not_streaming(&self, reason: impl Into<String>) {
        let mut state = self.lock();
        state.streaming = false;
        state.reason = Some(reason.into());
    }

    /// Capture lost its connection and is about to connect again.
    pub fn reconnecting(&self, reason: impl Into<String>) {
        let mut state = self.lock();
        state.streaming = false;
        state.reason = Some(reason.into());
        state.reconnects += 1;
    }

    /// Marks the connection degraded (`Some(reason)`) or healthy again (`None`)
    /// without changing the streaming state.
    pub fn set_degraded(&self, reason: Option<String>) {
        self.lock().degraded = reason;
    }

    /// Whether the store is open.
    pub fn set_store_open(&self, open: bool) {
        self.lock().store_open = open;
    }

    /// A transaction's commit arrived.
    pub fn commit_seen(&self, commit_lsn: u64, commit_time: String, now_ms: i64) {
        let mut state = self.lock();
        state.last_commit_lsn = Some(commit_lsn);
        state.last_commit_time = Some(commit_time);
        state.last_commit_seen_ms = Some(now_ms);
    }

    /// A new sample of the slot.
    pub fn set_slot(&self, sample: SlotSample) {
        self.lock().slot = Some(sample);
    }

    /// The current state.
    pub fn snapshot(&self) -> HealthState {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, HealthState> {
        // The state stays consistent whatever panicked while holding it.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_streaming_with_an_open_store_and_not_degraded() {
        let health = Health::new();
        assert_eq!(
            health.snapshot().readiness(),
            Err("the store is not open".into())
        );
        health.set_store_open(true);
        assert_eq!(
            health.snapshot().readiness(),
            Err("replication is not streaming: starting".into())
        );
        health.set_streaming();
        assert_eq!(health.snapshot().readiness(), Ok(()));
        health.set_degraded(Some("nothing received for 30s".into()));
        assert_eq!(
            health.snapshot().readiness(),
            Err("degraded: nothing received for 30s".into())
        );
        health.reconnecting("connection reset");
        let state = health.snapshot();
        assert_eq!(state.reconnects, 1);
        assert!(!state.streaming);
        // A new session clears the degraded mark.
        health.set_streaming();
        assert_eq!(health.snapshot().readiness(), Ok(()));
        assert_eq!(health.snapshot().reconnects, 1);
    }
}
