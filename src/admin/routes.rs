//! The admin routes and their JSON shapes.
//!
//! Every handler returns JSON (the status page and `/metrics` aside); a bad
//! request, an unknown subscription or a store that is not open yet is a
//! JSON `{"error": "..."}` with 400, 404 or 503. Handlers never panic on
//! input: path, query and body rejections are mapped to 400.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, Request, State as AxumState};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::{page, AdminContext, Attached, Control, Peer};
use crate::config::{Secret, SubscriptionConfig};
use crate::health::HealthState;
use crate::metrics::RecentSummary;
use crate::store::replay::ReplayKind;
use crate::store::{AttemptFilter, StoreError, StoredAttempt, SubscriptionState};

/// Default and largest `limit` of `GET /api/deliveries`.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 1000;

/// How long a mutating call waits for the supervisor (a paused worker may
/// first finish its in-flight request within `delivery.shutdown_grace`).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);

/// The router's state.
#[derive(Clone)]
pub(super) struct State {
    ctx: AdminContext,
    token: Option<Secret>,
    client: crate::delivery::HttpClient,
}

impl State {
    pub(super) fn new(
        ctx: AdminContext,
        token: Option<Secret>,
        client: crate::delivery::HttpClient,
    ) -> Self {
        State { ctx, token, client }
    }
}

type Shared = AxumState<Arc<State>>;

pub(super) fn router(state: State) -> Router {
    let state = Arc::new(state);
    let protected = Router::new()
        .route("/", get(status_page))
        .route("/metrics", get(metrics))
        .route("/api/subscriptions", get(list_subscriptions))
        .route("/api/subscriptions/{name}", get(one_subscription))
        .route("/api/subscriptions/{name}/replay", post(replay))
        .route("/api/subscriptions/{name}/test", post(send_test))
        .route("/api/subscriptions/{name}/pause", post(pause))
        .route("/api/subscriptions/{name}/resume", post(resume))
        .route("/api/deliveries", get(deliveries))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(protected)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// A JSON error response.
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn unknown_subscription(name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!("no subscription named '{name}' in the running config"),
        )
    }

    fn starting() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "walhook is starting: the store is not open yet; try again shortly",
        )
    }

    fn store(err: &StoreError) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("store error: {err}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
}

/// Checks `Authorization: Bearer <admin.token>` when a token is configured.
async fn require_token(
    AxumState(state): Shared,
    ConnectInfo(peer): ConnectInfo<Peer>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = &state.token else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(given) if constant_time_eq(given.as_bytes(), token.expose().as_bytes()) => {
            next.run(request).await
        }
        _ => {
            state.ctx.metrics.unauthorized();
            let why = if given.is_some() {
                "wrong bearer token"
            } else {
                "missing bearer token"
            };
            tracing::warn!(client = %peer.0, path = %request.uri().path(), "admin request refused: {why}");
            let mut response = ApiError::new(
                StatusCode::UNAUTHORIZED,
                format!("{why}; send Authorization: Bearer <admin.token>"),
            )
            .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"walhook\""),
            );
            response
        }
    }
}

/// Compares without stopping at the first difference, so the time taken
/// does not reveal how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One line of the audit log per mutating call.
fn audit(peer: &Peer, action: &str, subscription: &str, status: StatusCode, result: &str) {
    tracing::info!(
        target: "walhook::audit",
        client = %peer.0,
        action,
        subscription,
        status = status.as_u16(),
        result,
        "admin audit"
    );
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(AxumState(state): Shared) -> Response {
    match state.ctx.health.snapshot().readiness() {
        Ok(()) => Json(serde_json::json!({ "ready": true })).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "ready": false, "reason": reason })),
        )
            .into_response(),
    }
}

fn attached(state: &State) -> Result<Attached, ApiError> {
    state
        .ctx
        .attached
        .get()
        .cloned()
        .ok_or_else(ApiError::starting)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(ApiError::store(&err)),
        Err(err) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("store task failed: {err}"),
        )),
    }
}

async fn metrics(AxumState(state): Shared) -> Response {
    let ctx = &state.ctx;
    let health = ctx.health.snapshot();
    ctx.metrics
        .set_replication(health.streaming, health.reconnects);
    // Store gauges are read at scrape time, so they are never stale.
    if let Some(attached) = ctx.attached.get() {
        let store = attached.store.clone();
        let names: Vec<String> = ctx
            .config
            .borrow()
            .subscriptions
            .iter()
            .map(|s| s.name.clone())
            .collect();
        let sampled = blocking(move || {
            let stats = store.stats()?;
            let mut backlogs = Vec::new();
            for name in names {
                if store.subscription(&name)?.is_some() {
                    let backlog = store.backlog(&name)?;
                    backlogs.push((name, backlog));
                }
            }
            Ok((stats, backlogs))
        })
        .await;
        match sampled {
            Ok((stats, backlogs)) => {
                ctx.metrics.set_store(stats.events, stats.file_bytes);
                ctx.metrics.set_durable_lsn(stats.durable_lsn.unwrap_or(0));
                for (name, backlog) in backlogs {
                    ctx.metrics.set_backlog(&name, backlog);
                }
            }
            Err(err) => return err.into_response(),
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        ctx.metrics.render(),
    )
        .into_response()
}

/// A subscription as the API and the page show it.
#[derive(Debug, Clone, Serialize)]
pub(super) struct SubscriptionView {
    /// Its name.
    pub name: String,
    /// `active`, `paused` (admin API), `disabled` (410 Gone or `disable_after`),
    /// `off` (`enabled = false` in the config) or `new` (not in the store yet).
    pub state: &'static str,
    /// `enabled` in the config.
    pub enabled: bool,
    /// Paused through the admin API.
    pub paused: bool,
    /// Why it was disabled.
    pub disabled_reason: Option<String>,
    /// The endpoint's scheme, host and port (the path may hold a token).
    pub endpoint: String,
    /// `walhook`, `jiandaoyun` or `template`.
    pub format: crate::config::Format,
    /// `commit` or `key`.
    pub ordering: crate::config::Ordering,
    /// Events not handled yet.
    pub backlog: u64,
    /// Events delivered, ever.
    pub delivered: u64,
    /// Dead letters kept.
    pub dead_letters: u64,
    /// Failed attempts of the current event (commit order).
    pub attempts: u32,
    /// The last failure, if the current event is failing.
    pub last_error: Option<String>,
    /// When the next attempt is due (ms since the epoch), while retrying.
    pub next_attempt_at_ms: Option<i64>,
    /// The last hour, in memory since walhook started.
    pub last_hour: RecentSummary,
}

fn view(
    sub: &SubscriptionConfig,
    stored: Option<&(SubscriptionState, u64, u64)>,
    recent: RecentSummary,
) -> SubscriptionView {
    let state = crate::status::subscription_state(sub.enabled, stored.map(|(s, _, _)| s));
    SubscriptionView {
        name: sub.name.clone(),
        state,
        enabled: sub.enabled,
        paused: stored.is_some_and(|(s, _, _)| s.paused),
        disabled_reason: stored.and_then(|(s, _, _)| s.disabled_reason.clone()),
        endpoint: sub.url.origin().ascii_serialization(),
        format: sub.format,
        ordering: sub.ordering,
        backlog: stored.map_or(0, |(_, backlog, _)| *backlog),
        delivered: stored.map_or(0, |(s, _, _)| s.delivered),
        dead_letters: stored.map_or(0, |(_, _, dead)| *dead),
        attempts: stored.map_or(0, |(s, _, _)| s.attempts),
        last_error: stored.and_then(|(s, _, _)| s.last_error.clone()),
        next_attempt_at_ms: stored.and_then(|(s, _, _)| s.next_attempt_at_ms),
        last_hour: recent,
    }
}

/// The views of the configured subscriptions (all, or the one named).
pub(super) async fn subscription_views(
    state: &State,
    only: Option<&str>,
) -> Result<Vec<SubscriptionView>, ApiError> {
    let attached = attached(state)?;
    let cfg = state.ctx.config.borrow().clone();
    let subs: Vec<SubscriptionConfig> = cfg
        .subscriptions
        .iter()
        .filter(|s| only.is_none_or(|name| s.name == name))
        .cloned()
        .collect();
    if let (Some(name), true) = (only, subs.is_empty()) {
        return Err(ApiError::unknown_subscription(name));
    }
    let names: Vec<String> = subs.iter().map(|s| s.name.clone()).collect();
    let store = attached.store.clone();
    let stored = blocking(move || {
        let mut out = Vec::new();
        for name in names {
            let entry = match store.subscription(&name)? {
                Some(s) => {
                    let backlog = store.backlog(&name)?;
                    let dead = store.dead_letter_count(&name)?;
                    Some((s, backlog, dead))
                }
                None => None,
            };
            out.push(entry);
        }
        Ok(out)
    })
    .await?;
    let now = crate::app::now_ms();
    Ok(subs
        .iter()
        .zip(stored.iter())
        .map(|(sub, stored)| {
            view(
                sub,
                stored.as_ref(),
                state.ctx.metrics.recent(&sub.name, now),
            )
        })
        .collect())
}

async fn list_subscriptions(AxumState(state): Shared) -> Result<Response, ApiError> {
    let subscriptions = subscription_views(&state, None).await?;
    Ok(Json(serde_json::json!({ "subscriptions": subscriptions })).into_response())
}

async fn one_subscription(
    AxumState(state): Shared,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let mut views = subscription_views(&state, Some(&name)).await?;
    match views.pop() {
        Some(view) => Ok(Json(view).into_response()),
        None => Err(ApiError::unknown_subscription(&name)),
    }
}

/// Query of `GET /api/deliveries`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveriesQuery {
    subscription: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
    before: Option<i64>,
}

/// One attempt of `GET /api/deliveries`.
#[derive(Debug, Serialize)]
struct DeliveryView {
    #[serde(flatten)]
    attempt: StoredAttempt,
    /// `at_ms` as RFC 3339 (UTC).
    at: String,
}

async fn deliveries(
    AxumState(state): Shared,
    query: Result<Query<DeliveriesQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let failed = match query.status.as_deref() {
        None | Some("all") => None,
        Some("failed") => Some(true),
        Some("delivered") => Some(false),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "status={other:?}: use failed, delivered or all"
            )))
        }
    };
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit={limit}: use 1 to {MAX_LIMIT}"
        )));
    }
    let attached = attached(&state)?;
    let filter = AttemptFilter {
        subscription: query.subscription,
        failed,
        before_id: query.before,
        limit,
    };
    let rows = blocking(move || attached.store.attempts(&filter)).await?;
    let deliveries: Vec<DeliveryView> = rows
        .into_iter()
        .map(|attempt| DeliveryView {
            at: rfc3339_ms(attempt.record.at_ms),
            attempt,
        })
        .collect();
    Ok(Json(serde_json::json!({ "deliveries": deliveries })).into_response())
}

pub(super) fn rfc3339_ms(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}

fn configured(state: &State, name: &str) -> Result<SubscriptionConfig, ApiError> {
    state
        .ctx
        .config
        .borrow()
        .subscriptions
        .iter()
        .find(|s| s.name == name)
        .cloned()
        .ok_or_else(|| ApiError::unknown_subscription(name))
}

/// Sends `make(reply)` to the supervisor and waits for the answer.
async fn ask<T>(
    attached: &Attached,
    make: impl FnOnce(oneshot::Sender<T>) -> Control,
) -> Result<T, ApiError> {
    let (tx, rx) = oneshot::channel();
    let stopping = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "walhook is stopping; the request was not carried out",
        )
    };
    attached
        .control
        .send(make(tx))
        .await
        .map_err(|_| stopping())?;
    match tokio::time::timeout(CONTROL_TIMEOUT, rx).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(_)) => Err(stopping()),
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "the request is still being carried out; check GET /api/subscriptions/NAME",
        )),
    }
}

/// Body of `POST /api/subscriptions/NAME/replay`: exactly one of the two.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    /// Re-deliver what was stored within this long ago ("2h", "7d").
    since: Option<String>,
    /// Re-queue the dead letters.
    #[serde(default)]
    dead: bool,
}

async fn replay(
    AxumState(state): Shared,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(name): Path<String>,
    body: Result<Json<ReplayBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let result = replay_inner(&state, &name, body).await;
    log_mutation(&peer, "replay", &name, &result);
    result
}

async fn replay_inner(
    state: &State,
    name: &str,
    body: Result<Json<ReplayBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    configured(state, name)?;
    let Json(body) = body.map_err(|e| {
        ApiError::bad_request(format!(
            "{}; send {{\"since\": \"2h\"}} or {{\"dead\": true}}",
            e.body_text()
        ))
    })?;
    let kind = match (body.since, body.dead) {
        (Some(since), false) => {
            let ago = humantime::parse_duration(&since).map_err(|e| {
                ApiError::bad_request(format!("since {since:?}: {e}; write e.g. 30m, 2h or 7d"))
            })?;
            let ago_ms = i64::try_from(ago.as_millis()).unwrap_or(i64::MAX);
            ReplayKind::Since(crate::app::now_ms().saturating_sub(ago_ms))
        }
        (None, true) => ReplayKind::Dead,
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of \"since\" (e.g. \"2h\") and \"dead\": true",
            ))
        }
    };
    let attached = attached(state)?;
    let store = attached.store.clone();
    let owned = name.to_owned();
    let id = blocking(move || store.file_replay(&owned, kind)).await?;
    let applied = ask(&attached, |reply| Control::ApplyReplays { reply }).await?;
    let Some((_, outcome)) = applied.into_iter().find(|(applied, _)| *applied == id) else {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("replay request {id} was filed but not applied"),
        ));
    };
    Ok(Json(serde_json::json!({
        "subscription": name,
        "request": id,
        "requeued": outcome.requeued,
        "summary": outcome.summary,
    }))
    .into_response())
}

/// The result of `POST /api/subscriptions/NAME/test`.
#[derive(Debug, Serialize)]
struct TestResult {
    subscription: String,
    /// Whether the endpoint answered 2xx.
    delivered: bool,
    /// The HTTP status, when it answered.
    status: Option<u16>,
    /// How long it took (ms).
    duration_ms: u64,
    /// Why it was not delivered.
    error: Option<String>,
}

async fn send_test(
    AxumState(state): Shared,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let result = send_test_inner(&state, &name).await;
    log_mutation(&peer, "test", &name, &result);
    result
}

async fn send_test_inner(state: &State, name: &str) -> Result<Response, ApiError> {
    let sub = configured(state, name)?;
    let started = Instant::now();
    let sent = crate::delivery::send_test(&sub, &state.client).await;
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let result = match sent {
        Ok(status) => TestResult {
            subscription: name.to_owned(),
            delivered: (200..300).contains(&status),
            status: Some(status),
            duration_ms,
            error: (!(200..300).contains(&status)).then(|| format!("HTTP {status}")),
        },
        Err(err) => TestResult {
            subscription: name.to_owned(),
            delivered: false,
            status: None,
            duration_ms,
            error: Some(error_chain(&err)),
        },
    };
    Ok(Json(result).into_response())
}

async fn pause(
    AxumState(state): Shared,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let result = pause_or_resume(&state, &name, true).await;
    log_mutation(&peer, "pause", &name, &result);
    result
}

async fn resume(
    AxumState(state): Shared,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let result = pause_or_resume(&state, &name, false).await;
    log_mutation(&peer, "resume", &name, &result);
    result
}

async fn pause_or_resume(state: &State, name: &str, pause: bool) -> Result<Response, ApiError> {
    configured(state, name)?;
    let attached = attached(state)?;
    let owned = name.to_owned();
    let answer = ask(&attached, |reply| {
        if pause {
            Control::Pause { name: owned, reply }
        } else {
            Control::Resume { name: owned, reply }
        }
    })
    .await?;
    answer.map_err(|why| ApiError::new(StatusCode::CONFLICT, why))?;
    let mut views = subscription_views(state, Some(name)).await?;
    match views.pop() {
        Some(view) => Ok(Json(view).into_response()),
        None => Err(ApiError::unknown_subscription(name)),
    }
}

fn log_mutation(peer: &Peer, action: &str, name: &str, result: &Result<Response, ApiError>) {
    match result {
        Ok(response) => audit(peer, action, name, response.status(), "ok"),
        Err(err) => audit(peer, action, name, err.status, &err.message),
    }
}

/// `err: cause: cause` (the test delivery's error chain; URLs are stripped by the client).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(err) = cause {
        text.push_str(": ");
        text.push_str(&err.to_string());
        cause = err.source();
    }
    text
}

async fn status_page(AxumState(state): Shared) -> Response {
    let health: HealthState = state.ctx.health.snapshot();
    let cfg = state.ctx.config.borrow().clone();
    let subscriptions = subscription_views(&state, None).await;
    let html = page::render(&page::PageData {
        slot: &cfg.source.slot,
        health: &health,
        subscriptions: subscriptions
            .as_ref()
            .map(Vec::as_slice)
            .map_err(|e| e.message.as_str()),
        now: SystemTime::now(),
    });
    let mut response = Html(html).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
