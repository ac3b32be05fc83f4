//! Worker tests against a real HTTP receiver on 127.0.0.1:0 and a real store.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::{DeliveryConfig, SubscriptionConfig};
use crate::store::{Append, DeadLetter, NewEvent, Start, Store, SubscriptionState};

/// Upper bound for every wait in these tests; generous for a loaded CI box.
const WAIT: Duration = Duration::from_secs(10);

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

// ---------------------------------------------------------------- receiver

/// How the receiver answers one request.
#[derive(Debug, Clone)]
enum Reply {
    Status(u16),
    WithHeader(u16, &'static str, String),
    Body(u16, String),
    Redirect(&'static str),
    Delay(Duration, u16),
    Hang,
}

#[derive(Debug, Clone)]
struct Hit {
    path: String,
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

impl Hit {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

struct ReceiverState {
    hits: Mutex<Vec<Hit>>,
    script: Mutex<VecDeque<Reply>>,
    default: Reply,
    count: watch::Sender<usize>,
}

/// A scripted webhook receiver: answers from `script`, then `default`.
struct Receiver {
    base: String,
    state: Arc<ReceiverState>,
}

impl Receiver {
    async fn start(script: Vec<Reply>, default: Reply) -> Receiver {
        let state = Arc::new(ReceiverState {
            hits: Mutex::new(Vec::new()),
            script: Mutex::new(script.into()),
            default,
            count: watch::channel(0).0,
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { base, state }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn hits(&self) -> Vec<Hit> {
        self.state.hits.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived; returns all of them.
    async fn wait_hits(&self, n: usize) -> Vec<Hit> {
        let mut count = self.state.count.subscribe();
        tokio::time::timeout(WAIT, count.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| panic!("receiver got {} of {n} requests", self.hits().len()))
            .unwrap();
        self.hits()
    }
}

async fn handle(
    State(state): State<Arc<ReceiverState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let reply = state
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| state.default.clone());
    state.hits.lock().unwrap().push(Hit {
        path: uri.path().to_owned(),
        headers,
        body,
        at: Instant::now(),
    });
    state.count.send_modify(|c| *c += 1);
    let status = |code: u16| StatusCode::from_u16(code).unwrap();
    match reply {
        Reply::Status(code) => status(code).into_response(),
        Reply::WithHeader(code, name, value) => (status(code), [(name, value)]).into_response(),
        Reply::Body(code, body) => (status(code), body).into_response(),
        Reply::Redirect(to) => (StatusCode::PERMANENT_REDIRECT, [("location", to)]).into_response(),
        Reply::Delay(delay, code) => {
            tokio::time::sleep(delay).await;
            status(code).into_response()
        }
        Reply::Hang => std::future::pending().await,
    }
}

// ---------------------------------------------------------------- store

/// A fresh directory under the system temp dir, removed on drop.
struct TestDir(PathBuf);

impl TestDir {
    fn new() -> TestDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let unique = format!(
            "walhook-delivery-{}-{}-{}",
            std::process::id(),
            worker::unix_ms(SystemTime::now()),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(unique);
        std::fs::create_dir_all(&path).unwrap();
        TestDir(path)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn event_id(n: u64) -> String {
    format!("{:016X}-{:04}", 0x0100_0000 + n, 0)
}

fn payload(id: &str, op: &str, form: &str, n: u64) -> Vec<u8> {
    // Digits as Postgres prints them: must reach the receiver unchanged.
    format!(r#"{{"id":"{id}","op":"{op}","form":"{form}","data":{{"n":{n},"total":120.50}}}}"#)
        .into_bytes()
}

// ---------------------------------------------------------------- harness

fn subscription(name: &str, url: &str, extra: serde_json::Value) -> SubscriptionConfig {
    let mut value = json!({
        "name": name,
        "url": url,
        "method": "POST",
        "headers": {},
        "timeout": "5s",
        "retry": {"max_attempts": 5, "initial": "10ms", "max": "20ms"},
        "auth": {"type": "none"},
        "enabled": true,
    });
    for (k, v) in extra.as_object().unwrap() {
        value[k] = v.clone();
    }
    serde_json::from_value(value).unwrap()
}

struct Harness {
    store: Store,
    appended: watch::Sender<i64>,
    shutdown: CancellationToken,
    deliveries: Deliveries,
    tasks: JoinSet<Result<(), DeliveryError>>,
    next: u64,
    _dir: TestDir,
}

impl Harness {
    fn new(grace: &str) -> Harness {
        Harness::with_config(json!({"max_concurrency": 16, "shutdown_grace": grace}))
    }

    /// A harness whose `[delivery]` section is `config` (JSON).
    fn with_config(config: serde_json::Value) -> Harness {
        let dir = TestDir::new();
        let store = Store::open(&dir.0).unwrap();
        let (appended, rx) = watch::channel(0);
        let shutdown = CancellationToken::new();
        let config: DeliveryConfig = serde_json::from_value(config).unwrap();
        let deliveries = Deliveries::new(store.clone(), &config, rx, shutdown.clone()).unwrap();
        Harness {
            store,
            appended,
            shutdown,
            deliveries,
            tasks: JoinSet::new(),
            next: 0,
            _dir: dir,
        }
    }

    /// Creates the subscriptions' cursors at the log start, then spawns workers.
    fn spawn(&mut self, subs: &[SubscriptionConfig]) {
        for sub in subs {
            self.store
                .ensure_subscription(&sub.name, Start::Earliest)
                .unwrap();
        }
        assert!(self.tasks.is_empty(), "spawn once per harness");
        self.tasks = self.deliveries.spawn(subs).unwrap();
    }

    /// Appends one event per (op, form) in one transaction; returns their ids.
    fn append(&mut self, events: &[(&str, &str)]) -> Vec<String> {
        let mut new = Vec::new();
        for (op, form) in events {
            self.next += 1;
            let id = event_id(self.next);
            new.push(NewEvent {
                id: id.clone(),
                commit_lsn: 0x0100_0000 + self.next,
                op: (*op).to_owned(),
                form: (*form).to_owned(),
                payload: payload(&id, op, form, self.next),
                key: Some(self.next.to_string()),
            });
        }
        let ids = new.iter().map(|e| e.id.clone()).collect();
        self.store
            .append(&[
                Append::Events(new),
                Append::Commit {
                    end_lsn: 0x0100_0000 + self.next + 1,
                    form_schemas: Vec::new(),
                },
            ])
            .unwrap();
        self.appended.send_replace(self.store.last_seq().unwrap());
        ids
    }

    fn append_n(&mut self, n: usize) -> Vec<String> {
        self.append(&vec![("data_create", "orders"); n])
    }

    fn state(&self, name: &str) -> SubscriptionState {
        self.store.subscription(name).unwrap().unwrap()
    }

    fn dead_letters(&self, name: &str) -> Vec<DeadLetter> {
        self.store.dead_letters(name, 100).unwrap()
    }

    /// Polls the store until `check` holds (the store has no change signal).
    async fn wait_state(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&SubscriptionState) -> bool,
    ) -> SubscriptionState {
        let deadline = Instant::now() + WAIT;
        loop {
            let state = self.state(name);
            if check(&state) {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {state:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Cancels and joins every worker; returns their results.
    async fn stop(mut self) -> (Vec<Result<(), DeliveryError>>, Store) {
        self.shutdown.cancel();
        let mut results = Vec::new();
        while let Some(joined) = tokio::time::timeout(WAIT, self.tasks.join_next())
            .await
            .expect("workers did not stop")
        {
            results.push(joined.unwrap());
        }
        (results, self.store.clone())
    }
}

fn verify_signature(hit: &Hit, secret: &str) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let signed = [
        hit.header("webhook-id").as_bytes(),
        b".",
        hit.header("webhook-timestamp").as_bytes(),
        b".",
        &hit.body,
    ]
    .concat();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(&signed);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    hit.header("webhook-signature")
        .split(' ')
        .any(|sig| sig == expected)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn delivers_in_order_with_headers_and_a_verifiable_signature() {
    let receiver = Receiver::start(vec![], Reply::Status(204)).await;
    let mut h = Harness::new("1s");
    let sub = subscription(
        "crm",
        &receiver.url("/hooks"),
        json!({"headers": {"X-Team": "ops"}, "auth": {"type": "hmac", "secret": SECRET}}),
    );
    h.spawn(&[sub]);
    let ids = h.append_n(20);
    let hits = receiver.wait_hits(20).await;
    let got: Vec<&str> = hits.iter().map(|hit| hit.header("webhook-id")).collect();
    assert_eq!(got, ids.iter().map(String::as_str).collect::<Vec<_>>());
    for (n, hit) in hits.iter().enumerate() {
        assert_eq!(hit.path, "/hooks");
        assert_eq!(hit.header("content-type"), "application/json");
        assert_eq!(
            hit.header("user-agent"),
            concat!("walhook/", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(hit.header("x-team"), "ops");
        let ts: u64 = hit.header("webhook-timestamp").parse().unwrap();
        assert!(ts.abs_diff(unix_now()) < 60);
        assert!(hit.header("webhook-signature").starts_with("v1,"));
        assert!(verify_signature(hit, SECRET), "signature of request {n}");
        // The body is the stored event JSON, byte for byte.
        let seq = u64::try_from(n).unwrap() + 1;
        assert_eq!(hit.body, payload(&ids[n], "data_create", "orders", seq));
    }
    let state = h
        .wait_state("crm", "cursor at the end", |s| s.delivered == 20)
        .await;
    assert_eq!(state.cursor, h.store.last_seq().unwrap());
    assert_eq!(state.attempts, 0);
    let (results, _) = h.stop().await;
    assert!(results.iter().all(Result::is_ok));
}

#[tokio::test]
async fn rotation_signs_with_every_secret() {
    let receiver = Receiver::start(vec![], Reply::Status(200)).await;
    let other = "whsec_c2Vjb25kLXNlY3JldC1rZXktZm9yLXJvdGF0aW9u";
    let mut h = Harness::new("1s");
    let sub = subscription(
        "rot",
        &receiver.url("/"),
        json!({"auth": {"type": "hmac", "secret": [SECRET, other]}}),
    );
    h.spawn(&[sub]);
    h.append_n(1);
    let hits = receiver.wait_hits(1).await;
    assert_eq!(hits[0].header("webhook-signature").split(' ').count(), 2);
    assert!(verify_signature(&hits[0], SECRET));
    assert!(verify_signature(&hits[0], other));
    h.stop().await;
}

#[tokio::test]
async fn retries_server_errors_with_the_same_id_and_fresh_timestamps() {
    let receiver = Receiver::start(
        vec![Reply::Status(500), Reply::Status(500), Reply::Status(500)],
        Reply::Status(200),
    )
    .await;
    let mut h = Harness::new("1s");
    // webhook-timestamp has one-second resolution: a clock running 1000x
    // faster makes the 10 ms backoffs whole seconds apart.
    let base = SystemTime::now();
    let started = Instant::now();
    h.deliveries
        .set_clock(move || base + started.elapsed() * 1000);
    let sub = subscription(
        "flaky",
        &receiver.url("/"),
        json!({"auth": {"type": "hmac", "secret": SECRET}}),
    );
    h.spawn(&[sub]);
    let ids = h.append_n(2);
    let hits = receiver.wait_hits(5).await;
    let first: Vec<&Hit> = hits.iter().take(4).collect();
    assert!(first.iter().all(|hit| hit.header("webhook-id") == ids[0]));
    assert_eq!(hits[4].header("webhook-id"), ids[1]);
    let stamps: Vec<u64> = first
        .iter()
        .map(|hit| hit.header("webhook-timestamp").parse().unwrap())
        .collect();
    assert!(
        stamps.windows(2).all(|w| w[0] < w[1]),
        "timestamps {stamps:?}"
    );
    assert!(first.iter().all(|hit| verify_signature(hit, SECRET)));
    let state = h
        .wait_state("flaky", "both delivered", |s| s.delivered == 2)
        .await;
    assert_eq!(state.attempts, 0);
    assert_eq!(state.last_error, None);
    assert!(h.dead_letters("flaky").is_empty());
    h.stop().await;
}

#[tokio::test]
async fn failures_are_persisted_for_a_restart() {
    let receiver = Receiver::start(vec![], Reply::Status(502)).await;
    let mut h = Harness::new("1s");
    let sub = subscription(
        "down",
        &receiver.url("/"),
        json!({"retry": {"max_attempts": 10, "initial": "1h", "max": "1h"}}),
    );
    h.spawn(&[sub]);
    h.append_n(1);
    receiver.wait_hits(1).await;
    let state = h
        .wait_state("down", "failure recorded", |s| s.attempts == 1)
        .await;
    assert_eq!(state.cursor, 0);
    assert_eq!(state.last_error.as_deref(), Some("HTTP 502 Bad Gateway"));
    let at = state.next_attempt_at_ms.unwrap();
    let in_ms = at - worker::unix_ms(SystemTime::now());
    assert!(
        in_ms > 2_500_000 && in_ms <= 4_320_000,
        "next attempt in {in_ms} ms"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_restart_respects_a_pending_backoff_and_continues_the_count() {
    let receiver = Receiver::start(vec![], Reply::Body(500, "still down".into())).await;
    let mut h = Harness::new("1s");
    let sub = subscription(
        "resumed",
        &receiver.url("/"),
        json!({"retry": {"max_attempts": 3, "initial": "10ms", "max": "10ms"}}),
    );
    h.store
        .ensure_subscription("resumed", Start::Earliest)
        .unwrap();
    let ids = h.append_n(1);
    // As a previous run left it: two failed attempts, next one due in 600 ms.
    let due = worker::unix_ms(SystemTime::now()) + 600;
    h.store
        .record_failure("resumed", 2, due, "HTTP 500 Internal Server Error")
        .unwrap();
    let started = Instant::now();
    h.spawn(&[sub]);
    let hits = receiver.wait_hits(1).await;
    assert!(hits[0].at.duration_since(started) >= Duration::from_millis(500));
    h.wait_state("resumed", "dead letter", |s| s.dead_lettered == 1)
        .await;
    let dead = h.dead_letters("resumed");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event_id, ids[0]);
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(receiver.hits().len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn client_errors_until_max_attempts_become_dead_letters() {
    let long_body = format!("{}é{}", "x".repeat(511), "y".repeat(600));
    let receiver = Receiver::start(vec![], Reply::Body(400, long_body)).await;
    let mut h = Harness::new("1s");
    let sub = subscription(
        "strict",
        &receiver.url("/"),
        json!({"retry": {"max_attempts": 3, "initial": "10ms", "max": "10ms"}}),
    );
    h.spawn(&[sub]);
    let ids = h.append_n(2);
    let state = h
        .wait_state("strict", "two dead letters", |s| s.dead_lettered == 2)
        .await;
    assert_eq!(state.cursor, h.store.last_seq().unwrap());
    assert_eq!(state.attempts, 0);
    let hits = receiver.hits();
    assert_eq!(hits.len(), 6);
    // Order holds through dead letters: all of the first event's attempts come first.
    let order: Vec<&str> = hits.iter().map(|hit| hit.header("webhook-id")).collect();
    assert_eq!(
        order,
        [&ids[0], &ids[0], &ids[0], &ids[1], &ids[1], &ids[1]]
    );
    let dead = h.dead_letters("strict");
    assert_eq!(dead.len(), 2);
    for (letter, id) in dead.iter().zip(&ids) {
        assert_eq!(&letter.event_id, id);
        assert_eq!(letter.attempts, 3);
        assert_eq!(letter.status, Some(400));
        assert_eq!(letter.reason, "HTTP 400 Bad Request");
        let excerpt = letter.body_excerpt.as_deref().unwrap();
        // The first 512 bytes; the 'é' cut in half is replaced, not an error.
        assert_eq!(excerpt, format!("{}\u{FFFD}", "x".repeat(511)));
    }
    h.stop().await;
}

#[tokio::test]
async fn gone_disables_the_subscription_and_stops_sending() {
    let receiver = Receiver::start(vec![], Reply::Status(410)).await;
    let mut h = Harness::new("1s");
    let sub = subscription("gone", &receiver.url("/"), json!({}));
    h.spawn(std::slice::from_ref(&sub));
    h.append_n(3);
    receiver.wait_hits(1).await;
    // The worker ends by itself.
    let ended = tokio::time::timeout(WAIT, h.tasks.join_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(ended.is_ok());
    let state = h.state("gone");
    assert!(
        state.disabled_reason.as_deref().unwrap().contains("410"),
        "{state:?}"
    );
    assert_eq!(state.cursor, 0, "events stay in the log");
    // A restarted worker sees the disabled state and sends nothing.
    let again = h.deliveries.worker(&sub).unwrap();
    tokio::time::timeout(WAIT, again).await.unwrap().unwrap();
    h.append_n(1);
    assert_eq!(receiver.hits().len(), 1);
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let receiver = Receiver::start(vec![], Reply::Redirect("/target")).await;
    let mut h = Harness::new("1s");
    let sub = subscription(
        "moved",
        &receiver.url("/start"),
        json!({"retry": {"max_attempts": 2, "initial": "10ms", "max": "10ms"}}),
    );
    h.spawn(&[sub]);
    h.append_n(1);
    h.wait_state("moved", "dead letter", |s| s.dead_lettered == 1)
        .await;
    let dead = h.dead_letters("moved");
    assert_eq!(dead[0].status, Some(308));
    let hits = receiver.hits();
    assert_eq!(hits.len(), 2);
    assert!(
        hits.iter().all(|hit| hit.path == "/start"),
        "redirect target was hit"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_redirect_to_another_port_is_never_followed() {
    let target = Receiver::start(vec![], Reply::Status(200)).await;
    let to: &'static str = Box::leak(target.url("/stolen").into_boxed_str());
    let receiver = Receiver::start(vec![], Reply::Redirect(to)).await;
    let mut h = Harness::new("1s");
    let sub = subscription(
        "moved",
        &receiver.url("/start"),
        json!({"retry": {"max_attempts": 3, "initial": "10ms", "max": "10ms"}}),
    );
    h.spawn(&[sub]);
    h.append_n(1);
    h.wait_state("moved", "dead letter", |s| s.dead_lettered == 1)
        .await;
    let dead = h.dead_letters("moved");
    assert_eq!(dead[0].status, Some(308));
    assert_eq!(dead[0].attempts, 3, "each 308 is a failed attempt");
    assert_eq!(receiver.hits().len(), 3);
    assert!(
        target.hits().is_empty(),
        "the redirect target on another port was hit"
    );
    h.stop().await;
}

#[tokio::test]
async fn deny_private_networks_dead_letters_loopback_at_once_without_connecting() {
    let receiver = Receiver::start(vec![], Reply::Status(200)).await;
    let port = receiver.base.rsplit(':').next().unwrap().to_owned();
    let mut h = Harness::with_config(json!({"deny_private_networks": true}));
    let retry = json!({"retry": {"max_attempts": 5, "initial": "10ms", "max": "10ms"}});
    let subs = [
        ("literal", format!("http://127.0.0.1:{port}/")),
        ("named", format!("http://localhost:{port}/")),
        ("v6", format!("http://[::1]:{port}/")),
        ("mapped", format!("http://[::ffff:127.0.0.1]:{port}/")),
        (
            "metadata",
            "http://169.254.169.254/latest/meta-data/".to_owned(),
        ),
        ("rfc1918", "http://10.0.0.1/".to_owned()),
    ];
    let configs: Vec<_> = subs
        .iter()
        .map(|(name, url)| subscription(name, url, retry.clone()))
        .collect();
    h.spawn(&configs);
    h.append_n(1);
    for (name, _) in &subs {
        h.wait_state(name, "dead letter", |s| s.dead_lettered == 1)
            .await;
        let dead = h.dead_letters(name);
        assert_eq!(dead[0].attempts, 1, "{name}: blocked is not retried");
        assert_eq!(dead[0].status, None, "{name}");
        assert!(
            dead[0].reason.starts_with("blocked: ")
                && dead[0]
                    .reason
                    .ends_with("; allow it in delivery.allow_networks"),
            "{name}: {}",
            dead[0].reason
        );
    }
    let reason = |name: &str| h.dead_letters(name)[0].reason.clone();
    assert!(reason("literal").contains("127.0.0.1 is a loopback address"));
    assert!(reason("named").starts_with("blocked: localhost resolves to "));
    assert!(reason("v6").contains("::1 is a loopback address"));
    assert!(reason("mapped").contains("is a loopback address"));
    assert!(reason("metadata").contains("169.254.169.254 is a link-local address"));
    assert!(reason("rfc1918").contains("10.0.0.1 is a private address"));
    assert!(
        receiver.hits().is_empty(),
        "a blocked request reached the receiver"
    );
    h.stop().await;
}

#[tokio::test]
async fn allow_networks_lets_a_listed_private_receiver_through() {
    let receiver = Receiver::start(vec![], Reply::Status(200)).await;
    let port = receiver.base.rsplit(':').next().unwrap().to_owned();
    let mut h = Harness::with_config(json!({
        "deny_private_networks": true,
        "allow_networks": ["127.0.0.1/32"],
    }));
    let retry = json!({"retry": {"max_attempts": 1, "initial": "10ms", "max": "10ms"}});
    h.spawn(&[
        subscription(
            "literal",
            &format!("http://127.0.0.1:{port}/a"),
            retry.clone(),
        ),
        // localhost may also resolve to ::1, which stays blocked: 127.0.0.1 is used.
        subscription(
            "named",
            &format!("http://localhost:{port}/b"),
            retry.clone(),
        ),
        subscription("other", &format!("http://127.0.0.2:{port}/c"), retry),
    ]);
    h.append_n(1);
    h.wait_state("literal", "delivered", |s| s.delivered == 1)
        .await;
    h.wait_state("named", "delivered", |s| s.delivered == 1)
        .await;
    h.wait_state("other", "dead letter", |s| s.dead_lettered == 1)
        .await;
    assert!(h.dead_letters("other")[0]
        .reason
        .contains("127.0.0.2 is a loopback address"));
    let mut paths: Vec<String> = receiver.hits().into_iter().map(|hit| hit.path).collect();
    paths.sort();
    assert_eq!(paths, ["/a", "/b"]);
    h.stop().await;
}

#[tokio::test]
async fn send_test_reports_a_blocked_destination() {
    let client =
        build_client(&serde_json::from_value(json!({"deny_private_networks": true})).unwrap())
            .unwrap();
    let sub = subscription("probe", "http://[::1]:9/", json!({}));
    let err = send_test(&sub, &client).await.unwrap_err();
    assert!(matches!(err, DeliveryError::Blocked { .. }), "{err:?}");
    let oauth = subscription(
        "probe",
        "https://hooks.example.com/",
        json!({"auth": {"type": "oauth2", "token_url": "http://10.1.2.3/token",
                        "client_id": "c", "client_secret": "s"}}),
    );
    let err = send_test(&oauth, &client).await.unwrap_err();
    match err {
        DeliveryError::Blocked { source, .. } => {
            assert_eq!(
                source.addr.to_string(),
                "10.1.2.3",
                "the token URL is checked"
            )
        }
        other => panic!("expected Blocked, got {other:?}"),
    }
}

#[tokio::test]
async fn a_hanging_receiver_hits_the_timeout() {
    let receiver = Receiver::start(vec![], Reply::Hang).await;
    let mut h = Harness::new("1s");
    let sub = subscription(
        "slow",
        &receiver.url("/"),
        json!({"timeout": "200ms", "retry": {"max_attempts": 1, "initial": "10ms", "max": "10ms"}}),
    );
    h.spawn(&[sub]);
    let started = Instant::now();
    h.append_n(1);
    h.wait_state("slow", "dead letter", |s| s.dead_lettered == 1)
        .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let dead = h.dead_letters("slow");
    assert_eq!(dead[0].status, None);
    assert_eq!(dead[0].body_excerpt, None);
    assert!(
        dead[0].reason.contains("timed out after 200ms"),
        "{}",
        dead[0].reason
    );
    h.stop().await;
}

#[tokio::test]
async fn a_connection_error_is_retried() {
    // Bind then drop a listener to get a port nobody listens on.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut h = Harness::new("1s");
    let sub = subscription(
        "refused",
        &format!("http://127.0.0.1:{port}/"),
        json!({"retry": {"max_attempts": 2, "initial": "10ms", "max": "10ms"}}),
    );
    h.spawn(&[sub]);
    h.append_n(1);
    h.wait_state("refused", "dead letter", |s| s.dead_lettered == 1)
        .await;
    let dead = h.dead_letters("refused");
    assert_eq!(dead[0].attempts, 2);
    assert_eq!(dead[0].status, None);
    assert!(
        !dead[0].reason.contains("127.0.0.1"),
        "url leaked: {}",
        dead[0].reason
    );
    h.stop().await;
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let receiver = Receiver::start(
        vec![Reply::WithHeader(429, "retry-after", "1".into())],
        Reply::Status(200),
    )
    .await;
    let mut h = Harness::new("1s");
    h.spawn(&[subscription("limited", &receiver.url("/"), json!({}))]);
    h.append_n(1);
    let hits = receiver.wait_hits(2).await;
    assert!(hits[1].at.duration_since(hits[0].at) >= Duration::from_millis(950));
    h.wait_state("limited", "delivered", |s| s.delivered == 1)
        .await;
    h.stop().await;
}

#[tokio::test]
async fn a_slow_subscription_does_not_delay_another() {
    let stuck = Receiver::start(vec![], Reply::Hang).await;
    let fine = Receiver::start(vec![], Reply::Status(200)).await;
    let mut h = Harness::new("50ms");
    h.spawn(&[
        subscription("stuck", &stuck.url("/"), json!({"timeout": "30s"})),
        subscription("fine", &fine.url("/"), json!({})),
    ]);
    let ids = h.append_n(10);
    let hits = fine.wait_hits(10).await;
    assert_eq!(hits.len(), 10);
    assert_eq!(hits[9].header("webhook-id"), ids[9]);
    assert_eq!(stuck.hits().len(), 1);
    let (results, store) = h.stop().await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(store.subscription("stuck").unwrap().unwrap().cursor, 0);
}

#[tokio::test]
async fn unwanted_events_are_skipped_and_the_cursor_moves() {
    let receiver = Receiver::start(vec![], Reply::Status(200)).await;
    let mut h = Harness::new("1s");
    let sub = subscription(
        "orders-only",
        &receiver.url("/"),
        json!({"forms": ["orders"], "ops": ["data_create", "data_remove"]}),
    );
    h.spawn(&[sub]);
    let ids = h.append(&[
        ("data_create", "users"),
        ("data_create", "orders"),
        ("data_update", "orders"),
        ("data_truncate", "orders"),
        ("some_future_op", "orders"),
        ("data_remove", "orders"),
        ("data_create", "users"),
    ]);
    let state = h
        .wait_state("orders-only", "cursor at the end", |s| s.cursor == 7)
        .await;
    assert_eq!(state.delivered, 2);
    let got: Vec<String> = receiver
        .hits()
        .iter()
        .map(|hit| hit.header("webhook-id").to_owned())
        .collect();
    assert_eq!(got, [ids[1].clone(), ids[5].clone()]);
    h.stop().await;
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_request_finish_within_the_grace() {
    let receiver = Receiver::start(vec![], Reply::Delay(Duration::from_millis(300), 200)).await;
    let mut h = Harness::new("5s");
    h.spawn(&[subscription("graceful", &receiver.url("/"), json!({}))]);
    h.append_n(3);
    receiver.wait_hits(1).await;
    let (results, store) = h.stop().await;
    assert!(results.iter().all(Result::is_ok));
    // The first was in flight and finished; nothing new was taken.
    assert_eq!(receiver.hits().len(), 1);
    let state = store.subscription("graceful").unwrap().unwrap();
    assert_eq!((state.cursor, state.delivered), (1, 1));
}

#[tokio::test]
async fn shutdown_abandons_a_request_after_the_grace() {
    let receiver = Receiver::start(vec![], Reply::Hang).await;
    let mut h = Harness::new("100ms");
    h.spawn(&[subscription(
        "abandoned",
        &receiver.url("/"),
        json!({"timeout": "30s"}),
    )]);
    h.append_n(1);
    receiver.wait_hits(1).await;
    let started = Instant::now();
    let (results, store) = h.stop().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(results.iter().all(Result::is_ok));
    let state = store.subscription("abandoned").unwrap().unwrap();
    assert_eq!((state.cursor, state.delivered, state.attempts), (0, 0, 0));
    assert!(store.dead_letters("abandoned", 10).unwrap().is_empty());
}

#[tokio::test]
async fn coalesced_advances_are_flushed_on_shutdown() {
    let receiver = Receiver::start(vec![], Reply::Status(200)).await;
    let mut h = Harness::new("1s");
    h.spawn(&[subscription("flush", &receiver.url("/"), json!({}))]);
    let n = 300; // more than a page and more than one flush batch
    h.append_n(n);
    receiver.wait_hits(n).await;
    let (_, store) = h.stop().await;
    let state = store.subscription("flush").unwrap().unwrap();
    assert_eq!(state.cursor, store.last_seq().unwrap());
    assert_eq!(state.delivered, 300);
}

#[tokio::test]
async fn send_test_delivers_a_signed_test_event() {
    let receiver = Receiver::start(vec![], Reply::Status(202)).await;
    let sub = subscription(
        "probe",
        &receiver.url("/t"),
        json!({"forms": ["orders"], "auth": {"type": "hmac", "secret": SECRET}}),
    );
    let client = build_client(&DeliveryConfig::default()).unwrap();
    assert_eq!(send_test(&sub, &client).await.unwrap(), 202);
    let hits = receiver.wait_hits(1).await;
    let body: serde_json::Value = serde_json::from_slice(&hits[0].body).unwrap();
    assert_eq!(body["op"], "test");
    assert_eq!(body["form"], "orders");
    assert_eq!(body["id"], hits[0].header("webhook-id"));
    assert!(verify_signature(&hits[0], SECRET));

    let refused = subscription("probe", "http://127.0.0.1:1/", json!({"timeout": "2s"}));
    let err = send_test(&refused, &client).await.unwrap_err();
    assert!(matches!(err, DeliveryError::Send { .. }), "{err:?}");
}

#[test]
fn debug_output_never_shows_secrets() {
    let sub = subscription(
        "secretive",
        "https://hooks.example.com/x?key=url-token-123",
        json!({
            "headers": {"Authorization": "Bearer header-token-456"},
            "auth": {"type": "hmac", "secret": "plain-secret-789"}
        }),
    );
    let endpoint = http::Endpoint::new(&sub, &Arc::new(EgressPolicy::default())).unwrap();
    let shown = format!("{endpoint:?}");
    for secret in ["url-token-123", "header-token-456", "plain-secret-789"] {
        assert!(!shown.contains(secret), "{shown}");
    }
    assert!(shown.contains("***"));
}

#[test]
fn invalid_secret_fails_before_anything_runs() {
    let sub = subscription(
        "broken",
        "http://127.0.0.1:1/",
        json!({"auth": {"type": "hmac", "secret": "whsec_!!!"}}),
    );
    let err = http::Endpoint::new(&sub, &Arc::new(EgressPolicy::default())).unwrap_err();
    assert!(matches!(err, DeliveryError::Secret { .. }));
    assert!(err.to_string().contains("subscriptions.broken.auth.secret"));
}

// ---------------------------------------------------------------- batching, rate limit, disable_after

fn batch_ids(hit: &Hit) -> Vec<String> {
    let body: serde_json::Value = serde_json::from_slice(&hit.body).unwrap();
    body["events"]
        .as_array()
        .unwrap_or_else(|| panic!("not a batch: {body}"))
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_backlog_is_sent_in_full_batches_in_order() {
    let receiver = Receiver::start(vec![], Reply::Status(200)).await;
    let mut h = Harness::new("1s");
    let ids = h.append_n(25);
    h.spawn(&[subscription(
        "batched",
        &receiver.url("/"),
        json!({"batch": {"max_events": 10, "max_wait": "500ms"},
               "auth": {"type": "hmac", "secret": SECRET}}),
    )]);
    let started = Instant::now();
    let hits = receiver.wait_hits(3).await;
    // Full batches do not wait; only the last, partial one does.
    assert!(hits[1].at.duration_since(started) < Duration::from_millis(400));
    assert!(hits[2].at.duration_since(started) >= Duration::from_millis(450));
    let sizes: Vec<usize> = hits.iter().map(|hit| batch_ids(hit).len()).collect();
    assert_eq!(sizes, [10, 10, 5]);
    let all: Vec<String> = hits.iter().flat_map(batch_ids).collect();
    assert_eq!(all, ids);
    for hit in &hits {
        assert_eq!(hit.header("webhook-id"), batch_ids(hit)[0]);
        assert!(verify_signature(hit, SECRET));
    }
    // The items are the stored events, byte for byte.
    let first = std::str::from_utf8(&hits[0].body).unwrap();
    let payload1 = String::from_utf8(payload(&ids[0], "data_create", "orders", 1)).unwrap();
    assert!(first.starts_with(&format!("{{\"events\":[{payload1},")));
    let state = h
        .wait_state("batched", "cursor at the end", |s| s.delivered == 25)
        .await;
    assert_eq!(state.cursor, 25);
    h.stop().await;
}

#[tokio::test]
async fn a_partial_batch_waits_max_wait_for_more_events() {
    let receiver = Receiver::start(vec![], Reply::Status(200)).await;
    let mut h = Harness::new("1s");
    h.spawn(&[subscription(
        "waiting",
        &receiver.url("/"),
        json!({"batch": {"max_events": 100, "max_wait": "400ms"}}),
    )]);
    let started = Instant::now();
    h.append_n(1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.append_n(2);
    let hits = receiver.wait_hits(1).await;
    let waited = hits[0].at.duration_since(started);
    assert!(
        waited >= Duration::from_millis(380),
        "sent after {waited:?}"
    );
    assert_eq!(
        batch_ids(&hits[0]).len(),
        3,
        "later events joined the batch"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_failing_batch_is_retried_as_a_unit_then_dead_lettered_whole() {
    let receiver = Receiver::start(
        vec![Reply::Status(500), Reply::Status(503)],
        Reply::Status(200),
    )
    .await;
    let mut h = Harness::new("1s");
    let ids = h.append_n(4);
    h.spawn(&[subscription(
        "unit",
        &receiver.url("/"),
        json!({"batch": {"max_events": 3, "max_wait": "0s"},
               "retry": {"max_attempts": 5, "initial": "10ms", "max": "20ms"}}),
    )]);
    let hits = receiver.wait_hits(4).await;
    assert_eq!(batch_ids(&hits[0]), ids[..3]);
    assert_eq!(hits[0].body, hits[1].body, "same body on retry");
    assert_eq!(hits[1].body, hits[2].body);
    assert!(hits[..3]
        .iter()
        .all(|hit| hit.header("webhook-id") == ids[0]));
    assert_eq!(batch_ids(&hits[3]), ids[3..]);
    let state = h
        .wait_state("unit", "all delivered", |s| s.delivered == 4)
        .await;
    assert_eq!(state.cursor, 4);
    h.stop().await;

    let receiver = Receiver::start(vec![], Reply::Body(400, "nope".into())).await;
    let mut h = Harness::new("1s");
    let ids = h.append_n(3);
    h.spawn(&[subscription(
        "dead",
        &receiver.url("/"),
        json!({"batch": {"max_events": 2, "max_wait": "0s"},
               "retry": {"max_attempts": 2, "initial": "10ms", "max": "10ms"}}),
    )]);
    let state = h
        .wait_state("dead", "three dead letters", |s| s.dead_lettered == 3)
        .await;
    assert_eq!(state.cursor, 3);
    let dead = h.dead_letters("dead");
    let dead_ids: Vec<&str> = dead.iter().map(|d| d.event_id.as_str()).collect();
    assert_eq!(dead_ids, ids.iter().map(String::as_str).collect::<Vec<_>>());
    for letter in &dead {
        assert_eq!(letter.reason, "HTTP 400 Bad Request");
        assert_eq!(letter.attempts, 2);
        assert_eq!(letter.body_excerpt.as_deref(), Some("nope"));
    }
    assert_eq!(receiver.hits().len(), 4, "two batches, two attempts each");
    h.stop().await;
}

#[tokio::test]
async fn batches_respect_max_bytes_and_unwanted_events_inside_are_skipped() {
    let receiver = Receiver::start(vec![], Reply::Status(200)).await;
    let mut h = Harness::new("1s");
    let ids = h.append(&[
        ("data_create", "orders"),
        ("data_create", "users"),
        ("data_create", "orders"),
        ("data_create", "orders"),
        ("data_create", "users"),
    ]);
    let one = payload(&ids[0], "data_create", "orders", 1).len();
    // Room for two events, not three.
    let max = render::batch_len([one, one]);
    h.spawn(&[subscription(
        "bytes",
        &receiver.url("/"),
        json!({"forms": ["orders"], "batch": {"max_events": 100, "max_bytes": max, "max_wait": "0s"}}),
    )]);
    let hits = receiver.wait_hits(2).await;
    assert_eq!(batch_ids(&hits[0]), [ids[0].clone(), ids[2].clone()]);
    assert_eq!(batch_ids(&hits[1]), [ids[3].clone()]);
    assert!(hits.iter().all(|hit| hit.body.len() <= max));
    h.wait_state("bytes", "cursor past the trailing skipped event", |s| {
        s.cursor == 5
    })
    .await;
    h.stop().await;
}

#[tokio::test]
async fn rate_limit_spaces_requests() {
    let receiver = Receiver::start(vec![], Reply::Status(200)).await;
    let mut h = Harness::new("1s");
    h.append_n(4);
    h.spawn(&[subscription(
        "paced",
        &receiver.url("/"),
        json!({"rate_limit": "20/s"}),
    )]);
    let hits = receiver.wait_hits(4).await;
    // 20/s: hit k is sent no earlier than k × 50 ms after the first; arrival
    // times lag sending by scheduling delay (the first's too), so allow 20 ms.
    for (k, hit) in hits.iter().enumerate().skip(1) {
        let since_first = hit.at.duration_since(hits[0].at);
        let floor = Duration::from_millis(50 * k as u64 - 20);
        assert!(
            since_first >= floor,
            "hit {k} after {since_first:?}, expected at least {floor:?}"
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn disable_after_consecutive_failures_disables_and_stops() {
    let receiver = Receiver::start(vec![], Reply::Status(500)).await;
    let mut h = Harness::new("1s");
    h.append_n(3);
    let sub = subscription(
        "flaky",
        &receiver.url("/"),
        // Failures count across events: two dead letters, then the fifth
        // failed attempt disables.
        json!({"disable_after": 5, "retry": {"max_attempts": 2, "initial": "10ms", "max": "10ms"}}),
    );
    h.spawn(std::slice::from_ref(&sub));
    let state = h
        .wait_state("flaky", "disabled", |s| s.disabled_reason.is_some())
        .await;
    let reason = state.disabled_reason.unwrap();
    assert!(
        reason.contains("disabled after 5 consecutive failed attempts"),
        "{reason}"
    );
    assert!(reason.contains("HTTP 500"), "{reason}");
    assert!(reason.contains("SIGHUP"), "{reason}");
    assert_eq!(state.dead_lettered, 2);
    assert_eq!(state.cursor, 2, "the third event stays in the log");
    // The worker ended by itself.
    let joined = tokio::time::timeout(WAIT, h.tasks.join_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(joined.is_ok());
    assert_eq!(receiver.hits().len(), 5);
    h.stop().await;
}

#[tokio::test]
async fn a_success_resets_the_failure_streak() {
    let receiver = Receiver::start(
        vec![Reply::Status(500), Reply::Status(500), Reply::Status(200)],
        Reply::Status(500),
    )
    .await;
    let mut h = Harness::new("1s");
    h.append_n(2);
    h.spawn(&[subscription(
        "recovering",
        &receiver.url("/"),
        json!({"disable_after": 3, "retry": {"max_attempts": 100, "initial": "10ms", "max": "10ms"}}),
    )]);
    // 2 failures, success, then 3 more failures: disabled at the 6th request.
    let state = h
        .wait_state("recovering", "disabled", |s| s.disabled_reason.is_some())
        .await;
    assert_eq!(state.delivered, 1);
    assert_eq!(receiver.hits().len(), 6);
    h.stop().await;
}

// ---------------------------------------------------------------- body size limit

impl Harness {
    /// Appends one event whose `data` carries `pad` bytes of padding; returns its id.
    fn append_padded(&mut self, pad: usize) -> String {
        self.next += 1;
        let id = event_id(self.next);
        let payload = format!(
            r#"{{"id":"{id}","op":"data_create","form":"orders","data":{{"n":{},"pad":"{}"}}}}"#,
            self.next,
            "x".repeat(pad)
        );
        self.store
            .append(&[
                Append::Events(vec![NewEvent {
                    id: id.clone(),
                    commit_lsn: 0x0100_0000 + self.next,
                    op: "data_create".to_owned(),
                    form: "orders".to_owned(),
                    payload: payload.into_bytes(),
                    key: Some(self.next.to_string()),
                }]),
                Append::Commit {
                    end_lsn: 0x0100_0000 + self.next + 1,
                    form_schemas: Vec::new(),
                },
            ])
            .unwrap();
        self.appended.send_replace(self.store.last_seq().unwrap());
        id
    }
}

#[tokio::test]
async fn a_body_over_max_body_bytes_is_dead_lettered_at_once_and_never_sent() {
    let receiver = Receiver::start(vec![], Reply::Status(200)).await;
    let mut h = Harness::new("1s");
    let small = h.append_padded(10);
    let big = h.append_padded(5_000);
    let after = h.append_padded(10);
    h.spawn(&[subscription(
        "capped",
        &receiver.url("/"),
        json!({"max_body_bytes": "1KiB",
               "retry": {"max_attempts": 5, "initial": "10ms", "max": "20ms"}}),
    )]);
    let state = h
        .wait_state("capped", "two delivered, one dead letter", |s| {
            s.delivered == 2 && s.dead_lettered == 1
        })
        .await;
    assert_eq!(
        state.cursor, 3,
        "the oversized event does not block the next"
    );
    let sent: Vec<String> = receiver
        .hits()
        .iter()
        .map(|hit| hit.header("webhook-id").to_owned())
        .collect();
    assert_eq!(
        sent,
        [small, after.clone()],
        "the oversized body never went out"
    );
    let dead = h.dead_letters("capped");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event_id, big);
    assert_eq!(dead[0].attempts, 1, "not retried: it cannot get smaller");
    assert_eq!(dead[0].status, None);
    assert!(
        dead[0].reason.starts_with("payload too large") && dead[0].reason.contains("1024"),
        "{}",
        dead[0].reason
    );
    h.stop().await;
}

#[tokio::test]
async fn batches_stop_growing_at_max_body_bytes() {
    let receiver = Receiver::start(vec![], Reply::Status(200)).await;
    let mut h = Harness::new("1s");
    let ids: Vec<String> = (0..6).map(|_| h.append_padded(300)).collect();
    h.spawn(&[subscription(
        "capped_batches",
        &receiver.url("/"),
        json!({"max_body_bytes": 1000,
               "batch": {"max_events": 100, "max_bytes": "1MiB", "max_wait": "50ms"}}),
    )]);
    h.wait_state("capped_batches", "all delivered", |s| s.delivered == 6)
        .await;
    let hits = receiver.hits();
    assert!(hits.len() >= 3, "{} requests", hits.len());
    for hit in &hits {
        assert!(hit.body.len() <= 1000, "a {}-byte batch", hit.body.len());
    }
    let all: Vec<String> = hits.iter().flat_map(batch_ids).collect();
    assert_eq!(all, ids);
    assert!(h.dead_letters("capped_batches").is_empty());
    h.stop().await;
}

// ---------------------------------------------------------------- retry schedule (matrix rows 22, 23)

#[tokio::test]
async fn server_errors_are_retried_on_the_backoff_schedule_within_jitter() {
    // 500 three times, then 200: four attempts for one event.
    let receiver = Receiver::start(
        vec![Reply::Status(500), Reply::Status(500), Reply::Status(500)],
        Reply::Status(200),
    )
    .await;
    let mut h = Harness::new("1s");
    // webhook-timestamp has one-second resolution: a wall clock running
    // 1000x faster makes every attempt's timestamp distinct, while the
    // backoff sleeps (tokio time) stay real.
    let base = SystemTime::now();
    let started = Instant::now();
    h.deliveries
        .set_clock(move || base + started.elapsed() * 1000);
    h.spawn(&[subscription(
        "schedule",
        &receiver.url("/"),
        json!({"auth": {"type": "hmac", "secret": SECRET},
               "retry": {"max_attempts": 10, "initial": "200ms", "max": "10s"}}),
    )]);
    let ids = h.append_n(1);
    let hits = receiver.wait_hits(4).await;
    h.wait_state("schedule", "delivered", |s| s.delivered == 1)
        .await;
    assert_eq!(receiver.hits().len(), 4, "exactly four attempts");
    assert!(hits.iter().all(|hit| hit.header("webhook-id") == ids[0]));
    assert!(
        hits.iter().all(|hit| verify_signature(hit, SECRET)),
        "every attempt is signed anew and verifies"
    );
    let stamps: Vec<u64> = hits
        .iter()
        .map(|hit| hit.header("webhook-timestamp").parse().unwrap())
        .collect();
    assert!(
        stamps.windows(2).all(|w| w[0] < w[1]),
        "fresh timestamps {stamps:?}"
    );
    // initial 200 ms doubling: 200, 400, 800 ms, each ±20%. The gap between
    // arrivals is the delay plus the request round trips, so the lower bound
    // is exact and the upper bound gets a little room for the round trips.
    let gaps: Vec<Duration> = hits.windows(2).map(|w| w[1].at - w[0].at).collect();
    for (i, gap) in gaps.iter().enumerate() {
        let scheduled = Duration::from_millis(200 << i);
        let (low, high) = (scheduled.mul_f64(0.8), scheduled.mul_f64(1.2));
        assert!(
            *gap >= low && *gap <= high + Duration::from_millis(150),
            "retry {} came after {gap:?}, outside {scheduled:?} ± 20% ({gaps:?})",
            i + 1
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn retry_after_two_seconds_holds_the_next_attempt_back_at_least_that_long() {
    let receiver = Receiver::start(
        vec![Reply::WithHeader(429, "retry-after", "2".into())],
        Reply::Status(200),
    )
    .await;
    let mut h = Harness::new("1s");
    // A 50 ms backoff: only Retry-After can explain a two-second wait.
    h.spawn(&[subscription(
        "limited2",
        &receiver.url("/"),
        json!({"retry": {"max_attempts": 5, "initial": "50ms", "max": "100ms"}}),
    )]);
    h.append_n(1);
    let hits = receiver.wait_hits(2).await;
    let gap = hits[1].at - hits[0].at;
    assert!(
        gap >= Duration::from_secs(2),
        "the next attempt came {gap:?} after a 429 with Retry-After: 2"
    );
    assert!(
        gap < Duration::from_secs(5),
        "Retry-After: 2 means seconds, not more ({gap:?})"
    );
    h.wait_state("limited2", "delivered", |s| s.delivered == 1)
        .await;
    h.stop().await;
}

// ---------------------------------------------------------------- deadlines and leaks

/// A raw TCP server on its own threads (outside the test's runtime, so it adds no
/// tasks there): `hang` reads and never answers; otherwise it answers one byte of an
/// HTTP response every 20 ms. Counts connections accepted and still open.
struct RawServer {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicU64>,
    open: Arc<AtomicU64>,
}

impl RawServer {
    fn start(hang: bool) -> RawServer {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let open = Arc::new(AtomicU64::new(0));
        let (a, o) = (accepted.clone(), open.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                let o = o.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    if hang {
                        // Until the client closes its side.
                        while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
                    } else {
                        let _ = stream.read(&mut buf);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-padding: ";
                        let endless = answer.iter().copied().chain(std::iter::repeat(b'a'));
                        for byte in endless.take(10_000) {
                            if stream.write_all(&[byte]).is_err() {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        RawServer {
            addr,
            accepted,
            open,
        }
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Rows 24/25 in-process: 100 attempts against a receiver that never answers and one
/// that dribbles its headers each end at the total deadline as failed attempts, and
/// leave no task of this runtime and no connection behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_attempts_leave_no_tasks_or_connections_behind() {
    let hang = RawServer::start(true);
    let loris = RawServer::start(false);
    let mut h = Harness::new("1s");
    let patient = json!({"timeout": "50ms", "retry": {"max_attempts": 100000, "initial": "1ms", "max": "1ms"}});
    h.spawn(&[
        subscription("hang", &format!("http://{}/", hang.addr), patient.clone()),
        subscription("loris", &format!("http://{}/", loris.addr), patient),
    ]);
    h.append_n(1);
    let metrics = tokio::runtime::Handle::current().metrics();
    let wait_attempts = |n: u64| {
        let (hang, loris) = (&hang, &loris);
        let deadline = Instant::now() + Duration::from_secs(60);
        async move {
            while hang.accepted() < n || loris.accepted() < n {
                assert!(Instant::now() < deadline, "fewer than {n} attempts each");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_attempts(10).await;
    let tasks_before = metrics.num_alive_tasks();
    wait_attempts(110).await;
    let tasks_after = metrics.num_alive_tasks();
    assert!(
        tasks_after <= tasks_before + 2,
        "live tasks grew from {tasks_before} to {tasks_after} over 100 timed-out attempts"
    );
    for name in ["hang", "loris"] {
        let state = h.state(name);
        assert_eq!(state.delivered, 0, "{name}: {state:?}");
        assert!(state.attempts >= 100, "{name}: {state:?}");
        assert_eq!(
            state.last_error.as_deref(),
            Some("request timed out after 50ms"),
            "{name}"
        );
    }
    h.stop().await;
    // Stopped workers closed their last connection too.
    let deadline = Instant::now() + WAIT;
    while hang.open.load(Ordering::SeqCst) + loris.open.load(Ordering::SeqCst) > 0 {
        assert!(
            Instant::now() < deadline,
            "connections left open: hang {}, loris {}",
            hang.open.load(Ordering::SeqCst),
            loris.open.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
