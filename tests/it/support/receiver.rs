//! A real HTTP server on 127.0.0.1 that records every request and answers by a script.
//!
//! Replies come from the script (set with [`TestReceiver::set_script`]) in order, then
//! from the default ([`TestReceiver::set_default`], initially `200`). A request is recorded
//! when its body has arrived, before the reply is sent, so [`TestReceiver::wait_for`] also
//! sees requests answered with a delay or [`Reply::Hang`].
//!
//! The server runs on the runtime of the test that started it and stops when the
//! `TestReceiver` is dropped. Under `tokio::time::pause()` the paused clock also drives
//! [`Reply::Delay`] and the `wait_for` timeout.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Router;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// How the receiver answers one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Answer with this status and an empty body.
    Status(u16),
    /// Answer with this status and these headers (e.g. `Retry-After`).
    StatusWithHeaders(u16, Vec<(String, String)>),
    /// Wait, then answer with this status.
    Delay(Duration, u16),
    /// Never answer (the client's timeout has to fire).
    Hang,
}

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Request {
    /// `POST`, `GET`, ...
    pub method: String,
    /// Path and query, e.g. `/hook?x=1`.
    pub path: String,
    /// All headers as received (names lowercase, in arrival order).
    pub headers: Vec<(String, String)>,
    /// The raw body.
    pub body: Bytes,
    /// When the request reached the handler.
    pub at: Instant,
    /// The reply the script chose for it.
    pub reply: Reply,
    /// The status of that reply; 0 for [`Reply::Hang`]. (A client that timed out during
    /// a [`Reply::Delay`] never saw it.)
    pub status: u16,
}

impl Request {
    /// The first value of the header (names are case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The body parsed as JSON; panics with the body if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!(
                "{} {}: body is not JSON ({err}): {}",
                self.method,
                self.path,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn summary(&self) -> String {
        const PREVIEW: usize = 200;
        let body = String::from_utf8_lossy(&self.body);
        let preview: String = body.chars().take(PREVIEW).collect();
        let more = if body.chars().count() > PREVIEW {
            "…"
        } else {
            ""
        };
        format!(
            "{} {} -> {:?} ({} bytes): {preview}{more}",
            self.method,
            self.path,
            self.reply,
            self.body.len()
        )
    }
}

/// A per-request answer chosen from the body; `None` falls through to the script.
pub type Rule = Arc<dyn Fn(&[u8]) -> Option<Reply> + Send + Sync>;

struct Shared {
    requests: Mutex<Vec<Request>>,
    rule: Mutex<Option<Rule>>,
    script: Mutex<VecDeque<Reply>>,
    default: Mutex<Reply>,
    arrived: Notify,
}

/// The receiver; see the module docs.
pub struct TestReceiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl TestReceiver {
    /// Binds 127.0.0.1:0 and serves every method and path.
    pub async fn start() -> TestReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the test receiver on 127.0.0.1:0");
        let addr = listener.local_addr().expect("receiver local address");
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            rule: Mutex::new(None),
            script: Mutex::new(VecDeque::new()),
            default: Mutex::new(Reply::Status(200)),
            arrived: Notify::new(),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("the test receiver failed");
        });
        TestReceiver {
            addr,
            shared,
            server,
        }
    }

    /// `http://127.0.0.1:<port>` (append a path as needed).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the script: these replies are used in order, then the default.
    pub fn set_script(&self, replies: Vec<Reply>) {
        *lock(&self.shared.script) = replies.into();
    }

    /// Answers requests for which `rule` returns a reply with that reply, before the
    /// script and the default (e.g. fail every request for one row key).
    pub fn set_rule(&self, rule: impl Fn(&[u8]) -> Option<Reply> + Send + Sync + 'static) {
        *lock(&self.shared.rule) = Some(Arc::new(rule));
    }

    /// Sets the reply used once the script is exhausted.
    pub fn set_default(&self, reply: Reply) {
        *lock(&self.shared.default) = reply;
    }

    /// Every request recorded so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.shared.requests).clone()
    }

    /// Every body so far parsed as JSON (panics on a non-JSON body).
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.requests().iter().map(Request::json).collect()
    }

    /// Waits for at least `n` requests (see [`TestReceiver::wait_for`]) and returns all
    /// bodies parsed as JSON.
    pub async fn events_after_wait(&self, n: usize, timeout: Duration) -> Vec<serde_json::Value> {
        self.wait_for(n, timeout)
            .await
            .iter()
            .map(Request::json)
            .collect()
    }

    /// Forgets the requests recorded so far.
    pub fn clear(&self) {
        lock(&self.shared.requests).clear();
    }

    /// Waits until at least `n` requests have arrived and returns all of them; panics on
    /// timeout, listing what did arrive.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Request> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Arm before checking, so a request arriving in between still wakes us.
            let notified = self.shared.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let requests = self.requests();
            if requests.len() >= n {
                return requests;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let requests = self.requests();
                let list: Vec<String> = requests
                    .iter()
                    .enumerate()
                    .map(|(i, request)| format!("  #{i}: {}", request.summary()))
                    .collect();
                panic!(
                    "test receiver: timed out after {timeout:?} waiting for {n} request(s); \
                     {} arrived:\n{}",
                    requests.len(),
                    list.join("\n")
                );
            }
        }
    }
}

impl Drop for TestReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn handle(State(shared): State<Arc<Shared>>, request: axum::extract::Request) -> Response {
    let at = Instant::now();
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        // The client went away mid-body: nothing to record or answer.
        return status_response(400, &[]);
    };
    let rule = lock(&shared.rule).clone();
    let reply = if let Some(reply) = rule.and_then(|rule| rule(&body)) {
        reply
    } else {
        let next = lock(&shared.script).pop_front();
        next.unwrap_or_else(|| lock(&shared.default).clone())
    };
    lock(&shared.requests).push(Request {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned()),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect(),
        body,
        at,
        status: match &reply {
            Reply::Status(status)
            | Reply::StatusWithHeaders(status, _)
            | Reply::Delay(_, status) => *status,
            Reply::Hang => 0,
        },
        reply: reply.clone(),
    });
    shared.arrived.notify_waiters();
    match reply {
        Reply::Status(status) => status_response(status, &[]),
        Reply::StatusWithHeaders(status, headers) => status_response(status, &headers),
        Reply::Delay(delay, status) => {
            tokio::time::sleep(delay).await;
            status_response(status, &[])
        }
        Reply::Hang => std::future::pending().await,
    }
}

fn status_response(status: u16, headers: &[(String, String)]) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or_else(|_| panic!("invalid scripted status {status}"));
    for (name, value) in headers {
        response.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes())
                .unwrap_or_else(|_| panic!("invalid scripted header name {name:?}")),
            HeaderValue::from_str(value)
                .unwrap_or_else(|_| panic!("invalid scripted header value {value:?}")),
        );
    }
    response
}

/// Locks ignoring poisoning: a panicking test must not hide what the receiver recorded.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
