//! `walhook demo`: a throwaway PostgreSQL, a local receiver, and walhook
//! between them, so a newcomer sees events flow with one command.
//!
//! Everything lives in one temporary directory (the cluster, the store) that
//! is removed when the demo ends (Ctrl-C, or `--events N` reached).

pub mod cluster;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::app::{self, Error, Hooks};
use crate::delivery::{signature_header, SigningKey};
use crate::source::SourceError;
use cluster::{ClusterOptions, TempCluster};

/// The demo's signing secret (a throwaway, printed so users can verify by hand).
const DEMO_SECRET: &str = "whsec_ZGVtby1zZWNyZXQtZm9yLXdhbGhvb2stZGVtbw==";

/// How often the demo writes another change after the first batch.
const WRITE_EVERY: Duration = Duration::from_secs(3);

struct Received {
    count: AtomicUsize,
    notify: Notify,
}

/// Runs the demo until `token` is cancelled or `stop_after` events arrived
/// (0 = until cancelled).
pub async fn run(token: CancellationToken, stop_after: usize) -> Result<(), Error> {
    println!("walhook demo: starting a throwaway PostgreSQL (initdb + pg_ctl in a temp dir)...");
    let cluster = tokio::task::spawn_blocking(|| TempCluster::start(ClusterOptions::default()))
        .await
        .map_err(|e| Error::Internal(format!("demo: {e}")))?
        .map_err(|e| {
            Error::Source(SourceError::Precondition {
                problem: format!("demo: cannot start PostgreSQL: {e}"),
                fix: "install the PostgreSQL server binaries (apt-get install postgresql) or set WALHOOK_PG_BIN".into(),
            })
        })?;
    let result = run_with(&cluster, token, stop_after).await;
    println!(
        "walhook demo: stopping PostgreSQL and removing {}",
        cluster.root().display()
    );
    drop(cluster);
    result
}

async fn run_with(
    cluster: &TempCluster,
    token: CancellationToken,
    stop_after: usize,
) -> Result<(), Error> {
    let url = cluster.url("postgres");
    let params_cfg = crate::config::from_str_with_env(
        &format!("[source]\nurl = \"{url}\"\n[[tables]]\nname = \"x\"\n"),
        "demo",
        &|_| None,
    )?;
    let params = crate::source::ConnParams::from_config(&params_cfg.source)?;
    let db = params.connect_sql().await?;
    db.batch_execute(
        "CREATE TABLE public.orders (
            id serial PRIMARY KEY,
            customer text NOT NULL,
            total numeric(10,2) NOT NULL,
            status text NOT NULL DEFAULT 'new',
            tags text[] NOT NULL DEFAULT '{}',
            updated_at timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .map_err(|source| SourceError::Sql {
        context: "demo: cannot create the sample table".into(),
        source,
    })?;

    let received = Arc::new(Received {
        count: AtomicUsize::new(0),
        notify: Notify::new(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::Internal(format!("demo: cannot listen on 127.0.0.1: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("demo: {e}")))?;
    let router = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(received.clone());
    let server_token = token.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move { server_token.cancelled().await })
            .await;
    });
    println!("walhook demo: receiver listening on http://{addr}/hook");

    let store = cluster.root().join("store");
    let config_text = format!(
        r#"[source]
url = "{url}"
slot = "walhook_demo"
publication = "walhook_demo"
heartbeat = "5s"
status_interval = "500ms"

[store]
path = "{store}"

[[tables]]
name = "public.orders"
form = "orders"

[[subscriptions]]
name = "demo-receiver"
url = "http://{addr}/hook"
auth = {{ type = "hmac", secret = "{DEMO_SECRET}" }}
retry = {{ max_attempts = 5, initial = "200ms", max = "2s" }}
"#,
        store = store.display()
    );
    let cfg = crate::config::from_str_with_env(&config_text, "demo config", &|_| None)?;
    println!("walhook demo: config in use (secret: {DEMO_SECRET}):\n{config_text}");

    let app_token = token.child_token();
    let streaming = Arc::new(Notify::new());
    let s = streaming.clone();
    // The admin server on a free port, so a demo never collides with a
    // walhook already on 9187.
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::Internal(format!("demo: cannot listen on 127.0.0.1: {e}")))?;
    if let Ok(addr) = admin.local_addr() {
        println!("walhook demo: status page on http://{addr}/ (metrics: http://{addr}/metrics)");
    }
    let hooks = Hooks {
        on_streaming: Some(Arc::new(move || s.notify_one())),
        admin_listener: Some(admin),
        ..Hooks::default()
    };
    let mut app_task = tokio::spawn(app::run(cfg, app_token.clone(), hooks));
    tokio::select! {
        _ = streaming.notified() => {}
        r = &mut app_task => {
            return match r {
                Ok(res) => res,
                Err(e) => Err(Error::Internal(format!("demo: {e}"))),
            };
        }
        _ = token.cancelled() => {}
    }

    let statements = [
        "INSERT INTO orders (customer, total, tags) VALUES ('Ada', 120.50, '{vip}')",
        "INSERT INTO orders (customer, total) VALUES ('Grace', 42.00)",
        "UPDATE orders SET status = 'paid', updated_at = now() WHERE customer = 'Ada'",
        "DELETE FROM orders WHERE customer = 'Grace'",
    ];
    let limit = if stop_after == 0 {
        usize::MAX
    } else {
        stop_after
    };
    let mut written = 0usize;
    let write_next = |written: &mut usize| {
        let sql = match statements.get(*written) {
            Some(s) => s.to_string(),
            None => format!(
                "INSERT INTO orders (customer, total) VALUES ('customer {}', {}.99)",
                *written,
                *written * 7 % 500
            ),
        };
        *written += 1;
        sql
    };
    while written < statements.len().min(limit) {
        let sql = write_next(&mut written);
        println!("walhook demo: SQL> {sql}");
        exec(&db, &sql).await;
    }
    let mut tick = tokio::time::interval(WRITE_EVERY);
    tick.tick().await;
    loop {
        if received.count.load(Ordering::SeqCst) >= limit {
            break;
        }
        tokio::select! {
            _ = token.cancelled() => break,
            r = &mut app_task => {
                return match r {
                    Ok(res) => res,
                    Err(e) => Err(Error::Internal(format!("demo: {e}"))),
                };
            }
            _ = received.notify.notified() => continue,
            _ = tick.tick() => {}
        }
        if written < limit {
            let sql = write_next(&mut written);
            println!("walhook demo: SQL> {sql}");
            exec(&db, &sql).await;
        }
    }
    app_token.cancel();
    match app_task.await {
        Ok(res) => res,
        Err(e) => Err(Error::Internal(format!("demo: {e}"))),
    }
}

async fn exec(db: &tokio_postgres::Client, sql: &str) {
    if let Err(e) = db.batch_execute(sql).await {
        println!("walhook demo: write failed: {e}");
    }
}

async fn receive(
    State(received): State<Arc<Received>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let id = header("webhook-id");
    let ts = header("webhook-timestamp");
    let verified = match (SigningKey::from_secret(DEMO_SECRET), ts.parse::<u64>()) {
        (Ok(key), Ok(ts)) => {
            let expected = signature_header(std::slice::from_ref(&key), &id, ts, &body);
            header("webhook-signature") == expected
        }
        _ => false,
    };
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let data = serde_json::to_string(&event["data"]).unwrap_or_default();
    println!(
        "walhook demo: <- {} {} {} {data}  (signature {})",
        event["op"].as_str().unwrap_or("?"),
        event["form"].as_str().unwrap_or("?"),
        id,
        if verified { "ok" } else { "INVALID" }
    );
    received.count.fetch_add(1, Ordering::SeqCst);
    received.notify.notify_one();
    StatusCode::NO_CONTENT
}
