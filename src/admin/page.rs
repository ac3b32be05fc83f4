//! The status page (`GET /`): one small server-rendered HTML document, no
//! script, refreshed by the browser every [`REFRESH_SECS`] seconds.
//!
//! Per subscription: state, backlog, success rate and p50/p99 delivery
//! latency over the last hour (since start when walhook ran for less),
//! dead letters and the last error; and the source: slot, streaming state,
//! lag, last commit seen, reconnects. Every value is HTML-escaped; nothing
//! on the page comes from row data.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use super::routes::{rfc3339_ms, SubscriptionView};
use crate::health::HealthState;

/// How often the page reloads itself.
pub(super) const REFRESH_SECS: u32 = 5;

/// What the page shows.
pub(super) struct PageData<'a> {
    /// The slot's name.
    pub slot: &'a str,
    /// Replication and store state.
    pub health: &'a HealthState,
    /// The subscriptions, or why they cannot be read (starting up).
    pub subscriptions: Result<&'a [SubscriptionView], &'a str>,
    /// The time of rendering.
    pub now: SystemTime,
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem;color:#1d2330;background:#f7f8fa}
h1{font-size:1.4rem;margin:0 0 .2rem}h2{font-size:1.1rem;margin:1.6rem 0 .6rem}
.muted{color:#6b7280;font-size:.85rem}
table{border-collapse:collapse;background:#fff;box-shadow:0 1px 2px rgba(0,0,0,.08);min-width:60%}
th,td{padding:.45rem .8rem;border-bottom:1px solid #e5e7eb;text-align:left;vertical-align:top}
th{background:#eef0f4;font-weight:600;font-size:.85rem}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.state{display:inline-block;padding:.1rem .5rem;border-radius:.6rem;font-size:.8rem;font-weight:600}
.ok{background:#d1fae5;color:#065f46}.warn{background:#fef3c7;color:#92400e}.bad{background:#fee2e2;color:#991b1b}.off{background:#e5e7eb;color:#374151}
.error{color:#991b1b;max-width:32rem;word-break:break-word}
dl{display:grid;grid-template-columns:max-content auto;gap:.3rem 1.2rem;background:#fff;padding:1rem;box-shadow:0 1px 2px rgba(0,0,0,.08);max-width:48rem}
dt{font-weight:600}dd{margin:0}";

/// The page as HTML.
pub(super) fn render(data: &PageData<'_>) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>walhook status</title><style>{STYLE}</style></head><body>\
         <h1>walhook</h1><p class=\"muted\">{} · refreshes every {REFRESH_SECS} s · \
         <a href=\"/metrics\">metrics</a> · <a href=\"/api/subscriptions\">API</a></p>",
        esc(&humantime::format_rfc3339_seconds(data.now).to_string()),
    );
    source_section(&mut out, data);
    out.push_str("<h2>Subscriptions</h2>");
    match data.subscriptions {
        Err(why) => {
            let _ = write!(
                out,
                "<p class=\"error\" id=\"subscriptions-error\">{}</p>",
                esc(why)
            );
        }
        Ok(subs) => subscriptions_table(&mut out, subs),
    }
    out.push_str("</body></html>");
    out
}

fn source_section(out: &mut String, data: &PageData<'_>) {
    let h = data.health;
    let (class, state) = match (h.streaming, &h.degraded) {
        (true, None) => ("ok", "streaming".to_string()),
        (true, Some(why)) => ("warn", format!("degraded: {why}")),
        (false, _) => (
            "bad",
            format!(
                "not streaming: {}",
                h.reason.as_deref().unwrap_or("starting")
            ),
        ),
    };
    let _ = write!(
        out,
        "<h2>Source</h2><dl id=\"source\"><dt>Slot</dt><dd>{}</dd>\
         <dt>Replication</dt><dd><span class=\"state {class}\" id=\"replication-state\">{}</span></dd>",
        esc(data.slot),
        esc(&state)
    );
    match &h.slot {
        Some(slot) if slot.exists => {
            let lag = match (slot.lag_bytes, slot.lag_seconds) {
                (Some(bytes), Some(secs)) => format!("{} · {secs:.1} s", bytes_text(bytes)),
                (Some(bytes), None) => bytes_text(bytes),
                _ => "-".into(),
            };
            let _ = write!(
                out,
                "<dt>Slot lag</dt><dd id=\"slot-lag\">{}</dd><dt>Confirmed LSN</dt><dd>{}</dd>\
                 <dt>WAL status</dt><dd>{}</dd>",
                esc(&lag),
                slot.confirmed_flush_lsn
                    .map_or("-".into(), crate::event::lsn_text),
                esc(slot.wal_status.as_deref().unwrap_or("-")),
            );
        }
        Some(_) => {
            out.push_str("<dt>Slot lag</dt><dd class=\"error\">the slot does not exist</dd>")
        }
        None => out.push_str("<dt>Slot lag</dt><dd>not sampled yet</dd>"),
    }
    let commit = match (
        h.last_commit_lsn,
        &h.last_commit_time,
        h.last_commit_seen_ms,
    ) {
        (Some(lsn), Some(time), Some(seen)) => format!(
            "{} committed {time}, received {}",
            crate::event::lsn_text(lsn),
            ago(data.now, seen)
        ),
        _ => "none since start".into(),
    };
    let _ = write!(
        out,
        "<dt>Last commit seen</dt><dd id=\"last-commit\">{}</dd>\
         <dt>Reconnects</dt><dd>{}</dd><dt>Store</dt><dd>{}</dd></dl>",
        esc(&commit),
        h.reconnects,
        if h.store_open { "open" } else { "not open" }
    );
}

fn subscriptions_table(out: &mut String, subs: &[SubscriptionView]) {
    if subs.is_empty() {
        out.push_str(
            "<p class=\"muted\">No subscriptions are configured: events are only stored.</p>",
        );
        return;
    }
    out.push_str(
        "<table id=\"subscriptions\"><thead><tr><th>Subscription</th><th>State</th>\
         <th>Backlog</th><th>Success (1 h)</th><th>p50</th><th>p99</th><th>Delivered</th>\
         <th>Dead letters</th><th>Last error</th></tr></thead><tbody>",
    );
    for sub in subs {
        let class = match sub.state {
            "active" if sub.last_error.is_some() => "warn",
            "active" => "ok",
            "paused" | "new" => "warn",
            "off" => "off",
            _ => "bad",
        };
        let success = sub.last_hour.success_rate.map_or("-".into(), |r| {
            format!("{:.1}% of {}", r * 100.0, sub.last_hour.attempts)
        });
        let error = sub
            .disabled_reason
            .as_deref()
            .or(sub.last_error.as_deref())
            .unwrap_or("");
        let _ = write!(
            out,
            "<tr data-subscription=\"{name}\"><td>{name}<div class=\"muted\">{endpoint}</div></td>\
             <td><span class=\"state {class}\">{state}</span></td><td class=\"num\">{backlog}</td>\
             <td class=\"num\">{success}</td><td class=\"num\">{p50}</td><td class=\"num\">{p99}</td>\
             <td class=\"num\">{delivered}</td><td class=\"num\">{dead}</td><td class=\"error\">{error}</td></tr>",
            name = esc(&sub.name),
            endpoint = esc(&sub.endpoint),
            state = esc(sub.state),
            backlog = sub.backlog,
            success = esc(&success),
            p50 = ms_text(sub.last_hour.p50_latency_ms),
            p99 = ms_text(sub.last_hour.p99_latency_ms),
            delivered = sub.delivered,
            dead = sub.dead_letters,
            error = esc(error),
        );
    }
    out.push_str("</tbody></table>");
}

fn ms_text(ms: Option<u64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) if ms < 1000 => format!("{ms} ms"),
        Some(ms) if ms < 60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        Some(ms) => humantime::format_duration(Duration::from_secs(ms / 1000)).to_string(),
    }
}

fn bytes_text(bytes: i64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes.max(0) as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn ago(now: SystemTime, then_ms: i64) -> String {
    let now_ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let secs = (now_ms - then_ms).max(0) / 1000;
    if secs == 0 {
        "just now".into()
    } else {
        format!(
            "{} ago ({})",
            humantime::format_duration(Duration::from_secs(u64::try_from(secs).unwrap_or(0))),
            rfc3339_ms(then_ms)
        )
    }
}

/// Escapes text for HTML element content and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::RecentSummary;

    fn sub(name: &str, error: Option<&str>) -> SubscriptionView {
        SubscriptionView {
            name: name.into(),
            state: "active",
            enabled: true,
            paused: false,
            disabled_reason: None,
            endpoint: "http://127.0.0.1:8080".into(),
            format: crate::config::Format::Walhook,
            ordering: crate::config::Ordering::Commit,
            backlog: 3,
            delivered: 10,
            dead_letters: 1,
            attempts: 0,
            last_error: error.map(String::from),
            next_attempt_at_ms: None,
            last_hour: RecentSummary {
                attempts: 4,
                delivered: 3,
                success_rate: Some(0.75),
                p50_latency_ms: Some(42),
                p99_latency_ms: Some(2500),
            },
        }
    }

    #[test]
    fn the_page_escapes_everything_and_refreshes_itself() {
        let health = HealthState {
            streaming: true,
            store_open: true,
            ..HealthState::default()
        };
        let subs = vec![
            sub("crm", Some("<script>alert(1)</script>")),
            sub("erp", None),
        ];
        let html = render(&PageData {
            slot: "walhook",
            health: &health,
            subscriptions: Ok(&subs),
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        });
        assert!(html.contains("http-equiv=\"refresh\" content=\"5\""));
        assert!(html.contains("<tr data-subscription=\"crm\">"));
        assert!(html.contains("<tr data-subscription=\"erp\">"));
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;"));
        assert!(html.contains("75.0% of 4"));
        assert!(html.contains("42 ms") && html.contains("2.5 s"));
        assert!(html.contains(">streaming<"));
    }
}
