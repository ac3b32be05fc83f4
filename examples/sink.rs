//! A fast webhook sink for benchmarks: accepts every POST with 204 and counts
//! events (a JSON object is one event, `{"events": [...]}` or an array is
//! many). For each event that carries its commit time (walhook's
//! `source.commit_time`, or Debezium's `source.ts_us` / `source.ts_ms`, also
//! under `payload`) it keeps the commit → arrival latency.
//!
//! - `GET /stats`: `{"events", "requests", "in_flight", "max_in_flight",
//!   "first_ms", "last_ms", "latency_ms": {"count", "p50", "p99", "max"}}`
//!   (times in Unix milliseconds);
//! - `POST /reset`: zeroes everything;
//! - any other `POST`: an event delivery (bodies up to 64 MiB).
//!
//! Usage: `cargo run --release --example sink -- [ADDR] [--delay-ms N]`;
//! prints the bound address on stdout. `--delay-ms` answers each request
//! after N ms (a slow endpoint; requests wait concurrently).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;

#[derive(Default)]
struct Counts {
    events: AtomicU64,
    requests: AtomicU64,
    in_flight: AtomicI64,
    max_in_flight: AtomicI64,
    first_us: AtomicI64,
    last_us: AtomicI64,
    /// Commit → arrival latencies in microseconds.
    latencies: Mutex<Vec<u32>>,
    delay: Duration,
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2026-11-22T04:20:00.123456Z` (UTC, optional fraction) → Unix µs.
fn rfc3339_utc_us(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || !s.ends_with('Z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let days = days_from_civil(num(0..4)?, num(5..7)?, num(8..10)?);
    let secs = days * 86_400 + num(11..13)? * 3600 + num(14..16)? * 60 + num(17..19)?;
    let mut micros = 0;
    if b.get(19) == Some(&b'.') {
        let frac = &s[20..s.len() - 1];
        let digits: String = frac.chars().take(6).collect();
        micros = digits.parse::<i64>().ok()? * 10_i64.pow(6 - digits.len() as u32);
    }
    Some(secs * 1_000_000 + micros)
}

fn commit_us(event: &Value) -> Option<i64> {
    let event = event.get("payload").unwrap_or(event);
    let source = event.get("source")?;
    if let Some(t) = source.get("commit_time").and_then(Value::as_str) {
        return rfc3339_utc_us(t);
    }
    if let Some(us) = source.get("ts_us").and_then(Value::as_i64) {
        return Some(us);
    }
    source
        .get("ts_ms")
        .and_then(Value::as_i64)
        .map(|ms| ms * 1000)
}

async fn receive(State(c): State<Arc<Counts>>, body: Bytes) -> StatusCode {
    let now = now_us();
    let n = c.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
    c.max_in_flight.fetch_max(n, Ordering::AcqRel);
    let parsed = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
    let events: Vec<&Value> = match &parsed {
        Value::Array(a) => a.iter().collect(),
        v => match v.get("events").and_then(Value::as_array) {
            Some(a) => a.iter().collect(),
            None => vec![v],
        },
    };
    {
        let mut lat = c.latencies.lock().unwrap_or_else(|e| e.into_inner());
        for e in &events {
            if let Some(at) = commit_us(e) {
                lat.push(u32::try_from((now - at).max(0)).unwrap_or(u32::MAX));
            }
        }
    }
    if !c.delay.is_zero() {
        tokio::time::sleep(c.delay).await;
    }
    c.events.fetch_add(events.len() as u64, Ordering::AcqRel);
    c.requests.fetch_add(1, Ordering::AcqRel);
    let _ = c
        .first_us
        .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
    c.last_us.fetch_max(now_us(), Ordering::AcqRel);
    c.in_flight.fetch_sub(1, Ordering::AcqRel);
    StatusCode::NO_CONTENT
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    f64::from(sorted[i]) / 1000.0
}

async fn stats(State(c): State<Arc<Counts>>) -> Json<Value> {
    let mut lat = c
        .latencies
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    lat.sort_unstable();
    Json(serde_json::json!({
        "events": c.events.load(Ordering::Acquire),
        "requests": c.requests.load(Ordering::Acquire),
        "in_flight": c.in_flight.load(Ordering::Acquire),
        "max_in_flight": c.max_in_flight.load(Ordering::Acquire),
        "first_ms": c.first_us.load(Ordering::Acquire) as f64 / 1000.0,
        "last_ms": c.last_us.load(Ordering::Acquire) as f64 / 1000.0,
        "latency_ms": {
            "count": lat.len(),
            "p50": percentile(&lat, 0.50),
            "p99": percentile(&lat, 0.99),
            "max": percentile(&lat, 1.0),
        },
    }))
}

async fn reset(State(c): State<Arc<Counts>>) -> StatusCode {
    c.events.store(0, Ordering::Release);
    c.requests.store(0, Ordering::Release);
    c.max_in_flight
        .store(c.in_flight.load(Ordering::Acquire), Ordering::Release);
    c.first_us.store(0, Ordering::Release);
    c.last_us.store(0, Ordering::Release);
    c.latencies
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    StatusCode::NO_CONTENT
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut addr = "127.0.0.1:0".to_string();
    let mut delay = Duration::ZERO;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--delay-ms" {
            let ms = args.next().and_then(|v| v.parse().ok());
            delay = Duration::from_millis(ms.ok_or_else(|| anyhow::anyhow!("--delay-ms N"))?);
        } else {
            addr = arg;
        }
    }
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("{}", listener.local_addr()?);
    let counts = Arc::new(Counts {
        delay,
        ..Counts::default()
    });
    let app = Router::new()
        .route("/stats", get(stats))
        .route("/reset", post(reset))
        .route("/{*path}", post(receive))
        // Bodies up to 64 MiB (axum's default limit is 2 MB): 10 MB rows.
        .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
        .with_state(counts);
    axum::serve(listener, app).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_times_parse_to_unix_micros() {
        assert_eq!(rfc3339_utc_us("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_utc_us("2026-11-22T04:20:00.123456Z"),
            Some(1_795_321_200_123_456)
        );
        assert_eq!(
            rfc3339_utc_us("2000-03-01T00:00:01.5Z"),
            Some(951_868_801_500_000)
        );
        assert_eq!(rfc3339_utc_us("not a time"), None);
    }
}
