//! A fast webhook sink for benchmarks: accepts every POST with 204 and counts
//! events (a JSON object is one event, `{"events": [...]}` or an array is
//! many). `GET /stats` answers `{"events": N, "requests": M}`.
//!
//! Usage: `cargo run --release --example sink -- 127.0.0.1:0` (prints the
//! bound address on stdout).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};

#[derive(Default)]
struct Counts {
    events: AtomicU64,
    requests: AtomicU64,
}

async fn receive(State(c): State<Arc<Counts>>, body: Bytes) -> StatusCode {
    let n = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Array(a)) => a.len() as u64,
        Ok(v) => v
            .get("events")
            .and_then(|e| e.as_array())
            .map_or(1, |a| a.len() as u64),
        Err(_) => 1,
    };
    c.events.fetch_add(n, Ordering::Relaxed);
    c.requests.fetch_add(1, Ordering::Relaxed);
    StatusCode::NO_CONTENT
}

async fn stats(State(c): State<Arc<Counts>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "events": c.events.load(Ordering::Relaxed),
        "requests": c.requests.load(Ordering::Relaxed),
    }))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_string());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("{}", listener.local_addr()?);
    let counts = Arc::new(Counts::default());
    let app = Router::new()
        .route("/stats", get(stats))
        .route("/{*path}", post(receive))
        .with_state(counts);
    axum::serve(listener, app).await?;
    Ok(())
}
