//! `walhook status`: what an operator needs at a glance, read without
//! disturbing a running walhook (the store is read without its lock, the
//! slot through an ordinary SQL connection).

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::app::Error;
use crate::config::Config;
use crate::store::inspect::StoreView;
use crate::store::SubscriptionState;

/// A subscription's state as `status`, the admin API and the status page
/// name it: `off` when the config says `enabled = false`, else `disabled`
/// (410 Gone or `disable_after`), `paused` (admin API), `new` (the store
/// has no place for it yet) or `active`.
pub fn subscription_state(enabled: bool, stored: Option<&SubscriptionState>) -> &'static str {
    match stored {
        _ if !enabled => "off",
        Some(s) if s.disabled_reason.is_some() => "disabled",
        Some(s) if s.paused => "paused",
        Some(_) => "active",
        None => "new",
    }
}

/// How long `status` waits for the database before reporting it unreachable.
const SOURCE_TIMEOUT: Duration = Duration::from_secs(5);

/// One subscription's line.
#[derive(Debug, Serialize)]
pub struct SubscriptionStatus {
    /// name
    pub name: String,
    /// `active`, `paused` (admin API), `disabled` (410 Gone or `disable_after`),
    /// `off` (`enabled = false`) or `new` (not in the store yet); see [`subscription_state`]
    pub state: String,
    /// events stored that it has not passed yet
    pub backlog: u64,
    /// events delivered (2xx)
    pub delivered: u64,
    /// dead letters kept
    pub dead_letters: u64,
    /// failed attempts of the current event
    pub attempts: u32,
    /// the last failure, if the current event is failing
    pub last_error: Option<String>,
}

/// The slot as Postgres reports it.
#[derive(Debug, Serialize)]
pub struct SlotStatus {
    /// slot name
    pub slot: String,
    /// whether it exists
    pub exists: bool,
    /// whether a walsender (walhook) holds it now
    pub active: bool,
    /// WAL bytes between the server's current position and the slot's confirmed position
    pub lag_bytes: Option<i64>,
    /// `reserved`, `extended`, `unreserved` or `lost`
    pub wal_status: Option<String>,
    /// why the slot could not be read (database unreachable...)
    pub error: Option<String>,
}

/// A slot replaced by `walhook run --resync`: a gap in the captured changes.
#[derive(Debug, Serialize)]
pub struct ResyncStatus {
    /// when it happened (RFC 3339, UTC)
    pub at: String,
    /// the slot's name
    pub slot: String,
    /// what was wrong with the old slot
    pub reason: String,
    /// the store's durable LSN before the resync (the gap starts after it)
    pub gap_from: String,
    /// the new slot's start (the gap ends there)
    pub gap_to: String,
}

/// Everything `walhook status` prints.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    /// events held in the store
    pub stored_events: u64,
    /// the highest LSN stored durably
    pub durable_lsn: Option<String>,
    /// the replication slot
    pub slot: SlotStatus,
    /// every slot replacement (`walhook run --resync`), oldest first
    pub resyncs: Vec<ResyncStatus>,
    /// one entry per configured subscription
    pub subscriptions: Vec<SubscriptionStatus>,
}

impl StatusReport {
    /// The report as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

impl fmt::Display for StatusReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.slot;
        match (&s.error, s.exists) {
            (Some(err), _) => writeln!(f, "slot {}: unknown ({err})", s.slot)?,
            (None, false) => writeln!(f, "slot {}: missing", s.slot)?,
            (None, true) => writeln!(
                f,
                "slot {}: {}, lag {} bytes, wal_status {}",
                s.slot,
                if s.active { "active" } else { "inactive" },
                s.lag_bytes.map_or("-".to_string(), |b| b.to_string()),
                s.wal_status.as_deref().unwrap_or("-")
            )?,
        }
        writeln!(
            f,
            "store: {} events, durable up to {}",
            self.stored_events,
            self.durable_lsn.as_deref().unwrap_or("-")
        )?;
        for r in &self.resyncs {
            writeln!(
                f,
                "resync at {}: slot {} replaced ({}); changes after {} up to {} were not captured",
                r.at, r.slot, r.reason, r.gap_from, r.gap_to
            )?;
        }
        writeln!(
            f,
            "{:<24} {:<9} {:>9} {:>10} {:>6} {:>8}  last error",
            "subscription", "state", "backlog", "delivered", "dead", "attempts"
        )?;
        for sub in &self.subscriptions {
            writeln!(
                f,
                "{:<24} {:<9} {:>9} {:>10} {:>6} {:>8}  {}",
                sub.name,
                sub.state,
                sub.backlog,
                sub.delivered,
                sub.dead_letters,
                sub.attempts,
                sub.last_error.as_deref().unwrap_or("-")
            )?;
        }
        Ok(())
    }
}

/// Collects the report for `cfg`.
pub async fn collect(cfg: &Config) -> Result<StatusReport, Error> {
    let dir = cfg.store.path.clone();
    let (durable, events, subs, resyncs) = tokio::task::spawn_blocking(move || {
        let view = StoreView::open(&dir)?;
        Ok::<_, crate::store::StoreError>((
            view.durable_lsn()?,
            view.events()?,
            view.subscriptions()?,
            view.resyncs()?,
        ))
    })
    .await
    .map_err(|e| Error::Internal(format!("status: {e}")))??;

    let subscriptions = cfg
        .subscriptions
        .iter()
        .map(|sub| {
            let seen = subs.iter().find(|v| v.state.name == sub.name);
            let state = subscription_state(sub.enabled, seen.map(|v| &v.state));
            SubscriptionStatus {
                name: sub.name.clone(),
                state: state.to_string(),
                backlog: seen.map_or(0, |v| v.backlog),
                delivered: seen.map_or(0, |v| v.state.delivered),
                dead_letters: seen.map_or(0, |v| v.dead_letters),
                attempts: seen.map_or(0, |v| v.state.attempts),
                last_error: seen.and_then(|v| {
                    v.state
                        .disabled_reason
                        .clone()
                        .or_else(|| v.state.last_error.clone())
                }),
            }
        })
        .collect();

    Ok(StatusReport {
        stored_events: events,
        durable_lsn: durable.map(crate::event::lsn_text),
        slot: slot_status(cfg).await,
        resyncs: resyncs
            .into_iter()
            .map(|r| ResyncStatus {
                at: rfc3339_ms(r.at_ms),
                slot: r.slot,
                reason: r.reason,
                gap_from: crate::source::setup::durable_text(r.old_durable_lsn),
                gap_to: crate::event::lsn_text(r.new_start_lsn),
            })
            .collect(),
        subscriptions,
    })
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC (seconds precision).
fn rfc3339_ms(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

async fn slot_status(cfg: &Config) -> SlotStatus {
    let slot = cfg.source.slot.clone();
    let unknown = |error: String| SlotStatus {
        slot: slot.clone(),
        exists: false,
        active: false,
        lag_bytes: None,
        wal_status: None,
        error: Some(error),
    };
    let query = async {
        let params = crate::source::ConnParams::from_config(&cfg.source)?;
        let client = params.connect_sql().await?;
        client
            .query_opt(
                "SELECT active, (pg_current_wal_lsn() - confirmed_flush_lsn)::int8, wal_status \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&cfg.source.slot],
            )
            .await
            .map_err(|source| crate::source::SourceError::Sql {
                context: "read pg_replication_slots".into(),
                source,
            })
    };
    match tokio::time::timeout(SOURCE_TIMEOUT, query).await {
        Err(_) => unknown("the database did not answer in time".into()),
        Ok(Err(e)) => unknown(e.to_string()),
        Ok(Ok(None)) => SlotStatus {
            slot: slot.clone(),
            exists: false,
            active: false,
            lag_bytes: None,
            wal_status: None,
            error: None,
        },
        Ok(Ok(Some(row))) => SlotStatus {
            slot: slot.clone(),
            exists: true,
            active: row.get(0),
            lag_bytes: row.get(1),
            wal_status: row.get(2),
            error: None,
        },
    }
}
