//! Every auth type end to end: Postgres → walhook → a real receiver that
//! verifies the credentials itself (base64, sha1 and the jsonwebtoken decoder
//! here, never walhook's own signing code).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};
use sha1::{Digest, Sha1};

use crate::pipeline::db_name;
use crate::runner::{run_cli, scratch_dir, ConfigText, InProcess};
use crate::support::db::TestDb;
use crate::support::receiver::{Reply, Request, TestReceiver};

const WAIT: Duration = Duration::from_secs(30);
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/fixtures");
/// Fast retries so a scripted failure is retried within the test's patience.
const RETRY: &str = "retry = { max_attempts = 20, initial = \"50ms\", max = \"200ms\" }";

/// A database with `orders(id, total)` and a config for it (no subscriptions yet).
async fn setup() -> (TestDb, ConfigText) {
    let db = TestDb::new().await;
    db.execute("CREATE TABLE orders (id int4 PRIMARY KEY, total numeric)")
        .await;
    let name = db_name(&db);
    let cfg = ConfigText::new(&db.url(), &name, &scratch_dir(&name)).table("name = \"orders\"");
    (db, cfg)
}

async fn insert_orders(db: &TestDb, ids: &[i32]) {
    for id in ids {
        db.execute(&format!(
            "INSERT INTO orders (id, total) VALUES ({id}, {id}.50)"
        ))
        .await;
    }
}

fn requests_to(receiver: &TestReceiver, path: &str) -> Vec<Request> {
    receiver
        .requests()
        .into_iter()
        .filter(|r| r.path.split('?').next() == Some(path))
        .collect()
}

/// Waits until `path` has received `n` requests.
async fn wait_path(receiver: &TestReceiver, path: &str, n: usize) -> Vec<Request> {
    crate::runner::eventually(WAIT, &format!("{n} requests to {path}"), || {
        let got = requests_to(receiver, path);
        async move { (got.len() >= n).then_some(got) }
    })
    .await
}

fn header(req: &Request, name: &str) -> String {
    req.header(name)
        .unwrap_or_else(|| panic!("{} has no {name} header: {:?}", req.path, req.headers))
        .to_owned()
}

fn ids(requests: &[Request]) -> Vec<String> {
    requests
        .iter()
        .map(|r| r.json()["data"]["id"].to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_bearer_and_api_key_headers_reach_the_receiver() {
    let (db, cfg) = setup().await;
    let receiver = TestReceiver::start().await;
    let url = receiver.url();
    let wh = InProcess::start(
        cfg.subscription(
            "basic",
            &format!("{url}/basic"),
            "auth = { type = \"basic\", user = \"alice\", password = \"pa:ss w0rd\" }",
        )
        .subscription(
            "bearer",
            &format!("{url}/bearer"),
            "auth = { type = \"bearer\", token = \"bearer-tok-123\" }",
        )
        .subscription(
            "apikey",
            &format!("{url}/apikey"),
            "auth = { type = \"header\", name = \"X-Api-Key\", value = \"key-456\" }\nheaders = { \"X-Api-Key\" = \"static-loses\" }",
        )
        .parse(),
    )
    .await;
    insert_orders(&db, &[1, 2]).await;

    for req in wait_path(&receiver, "/basic", 2).await {
        let value = header(&req, "authorization");
        let encoded = value.strip_prefix("Basic ").expect("Basic scheme");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        assert_eq!(decoded, b"alice:pa:ss w0rd");
    }
    for req in wait_path(&receiver, "/bearer", 2).await {
        assert_eq!(header(&req, "authorization"), "Bearer bearer-tok-123");
    }
    let apikey = wait_path(&receiver, "/apikey", 2).await;
    for req in &apikey {
        // The auth header wins over a static header of the same name.
        assert_eq!(header(req, "x-api-key"), "key-456");
        assert!(req.header("authorization").is_none());
    }
    assert_eq!(ids(&apikey), ["1", "2"]);
    wh.stop().await.unwrap();
}

/// 简道云's receiver check, written from its documentation: sha1 over
/// `nonce:body:secret:timestamp` with nonce and timestamp from the query.
fn jiandaoyun_verifies(req: &Request, secret: &str) -> bool {
    let query: BTreeMap<String, String> = url::Url::parse(&format!("http://x{}", req.path))
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    let mut input = Vec::new();
    input.extend_from_slice(query["nonce"].as_bytes());
    input.push(b':');
    input.extend_from_slice(&req.body);
    input.push(b':');
    input.extend_from_slice(secret.as_bytes());
    input.push(b':');
    input.extend_from_slice(query["timestamp"].as_bytes());
    let digest: String = Sha1::digest(&input)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    req.header("x-jdy-signature") == Some(digest.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jiandaoyun_signature_verifies_over_the_received_body_and_query() {
    let (db, cfg) = setup().await;
    let receiver = TestReceiver::start().await;
    // The first attempt fails: the retry must carry a fresh nonce and a valid signature.
    receiver.set_script(vec![Reply::Status(500)]);
    let wh = InProcess::start(
        cfg.subscription(
            "jdy",
            &format!("{}/jdy?app=crm", receiver.url()),
            &format!("auth = {{ type = \"jiandaoyun\", secret = \"jdy-s3cret\" }}\n{RETRY}"),
        )
        .parse(),
    )
    .await;
    insert_orders(&db, &[7, 8]).await;
    let requests = wait_path(&receiver, "/jdy", 3).await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for req in &requests {
        assert!(jiandaoyun_verifies(req, "jdy-s3cret"), "{req:?}");
        assert!(!jiandaoyun_verifies(req, "wrong-secret"));
        let query: BTreeMap<String, String> = url::Url::parse(&format!("http://x{}", req.path))
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect();
        assert_eq!(query["app"], "crm", "existing query parameters are kept");
        let ts: u64 = query["timestamp"].parse().unwrap();
        assert!(ts.abs_diff(now) < 120, "timestamp {ts} is unix seconds");
        let id = header(req, "webhook-id");
        assert_eq!(header(req, "x-jdy-deliverid"), id);
        assert_eq!(req.json()["id"], Value::String(id));
    }
    assert_ne!(
        requests[0].path, requests[1].path,
        "a fresh nonce per attempt"
    );
    assert_eq!(requests[0].json()["id"], requests[1].json()["id"]);
    assert_eq!(ids(&requests[1..]), ["7", "8"]);
    wh.stop().await.unwrap();
}

/// A client-credentials token endpoint that issues `token-<n>`.
#[derive(Default)]
struct TokenEndpoint {
    requests: AtomicUsize,
    forms: Mutex<Vec<BTreeMap<String, String>>>,
}

async fn issue_token(
    axum::extract::State(state): axum::extract::State<Arc<TokenEndpoint>>,
    headers: axum::http::HeaderMap,
    body: String,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("walhook-client:cl13nt-s3cret")
    );
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return (
            axum::http::StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let n = state.requests.fetch_add(1, Ordering::SeqCst) + 1;
    state.forms.lock().unwrap().push(
        url::form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect(),
    );
    axum::Json(
        json!({"access_token": format!("token-{n}"), "token_type": "Bearer", "expires_in": 3600}),
    )
    .into_response()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_token_is_cached_and_refreshed_after_a_401() {
    let (db, cfg) = setup().await;
    let tokens = Arc::new(TokenEndpoint::default());
    let app = axum::Router::new()
        .route("/oauth/token", axum::routing::post(issue_token))
        .with_state(tokens.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let token_url = format!("http://{}/oauth/token", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let receiver = TestReceiver::start().await;
    // The endpoint refuses the first token (revoked, say).
    receiver.set_script(vec![Reply::Status(401)]);
    let wh = InProcess::start(
        cfg.subscription(
            "oauth",
            &format!("{}/oauth", receiver.url()),
            &format!(
                "auth = {{ type = \"oauth2\", token_url = \"{token_url}\", client_id = \"walhook-client\", client_secret = \"cl13nt-s3cret\", scope = \"hooks\" }}\n{RETRY}"
            ),
        )
        .parse(),
    )
    .await;
    insert_orders(&db, &[1, 2, 3]).await;
    let requests = wait_path(&receiver, "/oauth", 4).await;
    let bearers: Vec<String> = requests
        .iter()
        .map(|r| header(r, "authorization"))
        .collect();
    assert_eq!(
        bearers,
        [
            "Bearer token-1",
            "Bearer token-2",
            "Bearer token-2",
            "Bearer token-2"
        ],
        "one refresh after the 401, then the cached token"
    );
    assert_eq!(requests[0].status, 401);
    assert!(requests[1..].iter().all(|r| r.status == 200));
    assert_eq!(
        requests[0].json()["id"],
        requests[1].json()["id"],
        "the refused event is retried and delivered"
    );
    assert_eq!(ids(&requests[1..]), ["1", "2", "3"]);
    assert_eq!(tokens.requests.load(Ordering::SeqCst), 2);
    let form = tokens.forms.lock().unwrap()[0].clone();
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["scope"], "hooks");
    wh.stop().await.unwrap();
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_token_endpoint_failure_is_retried_with_a_clear_reason() {
    let (db, cfg) = setup().await;
    let receiver = TestReceiver::start().await;
    // A token endpoint that always refuses: the receiver must never be called.
    let refusing = TestReceiver::start().await;
    refusing.set_default(Reply::Status(503));
    let store = cfg.store.clone();
    let wh = InProcess::start(
        cfg.subscription(
            "oauth",
            &format!("{}/never", receiver.url()),
            &format!(
                "auth = {{ type = \"oauth2\", token_url = \"{}/token\", client_id = \"c\", client_secret = \"cl13nt-s3cret\" }}\nretry = {{ max_attempts = 2, initial = \"50ms\", max = \"100ms\" }}",
                refusing.url()
            ),
        )
        .parse(),
    )
    .await;
    insert_orders(&db, &[1]).await;
    // Two attempts, each a refused token request; the second one dead-letters
    // the event before the worker can stop.
    refusing.wait_for(2, WAIT).await;
    wh.stop().await.unwrap();
    let dead = walhook::store::Store::open(&store)
        .unwrap()
        .dead_letters("oauth", 10)
        .unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].attempts, 2);
    assert_eq!(dead[0].status, None, "no response from the endpoint itself");
    assert!(
        dead[0]
            .reason
            .contains("cannot get an OAuth2 access token: the token endpoint answered HTTP 503"),
        "{}",
        dead[0].reason
    );
    assert!(!dead[0].reason.contains("cl13nt-s3cret"));
    assert!(receiver.requests().is_empty());
}

fn rsa_key_path() -> String {
    format!("{FIXTURES}/jwt-rs256.key.pem")
}

fn verify_jwt(req: &Request, algorithm: Algorithm, key: &DecodingKey) -> Value {
    let token = header(req, "authorization");
    let token = token.strip_prefix("Bearer ").expect("Bearer scheme");
    let mut validation = Validation::new(algorithm);
    validation.set_audience(&["https://api.example.com"]);
    validation.set_issuer(&["walhook"]);
    validation.set_required_spec_claims(&["exp", "iat", "jti", "iss", "aud"]);
    validation.leeway = 0;
    let claims = jsonwebtoken::decode::<Value>(token, key, &validation)
        .unwrap_or_else(|e| panic!("token does not verify: {e}"))
        .claims;
    assert_eq!(claims["jti"], Value::String(header(req, "webhook-id")));
    let iat = claims["iat"].as_u64().unwrap();
    assert_eq!(claims["exp"].as_u64().unwrap(), iat + 60);
    claims
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_hs256_and_rs256_tokens_verify_at_the_receiver() {
    let (db, cfg) = setup().await;
    let receiver = TestReceiver::start().await;
    let url = receiver.url();
    let common = "issuer = \"walhook\", audience = \"https://api.example.com\", ttl = \"60s\"";
    let wh = InProcess::start(
        cfg.subscription(
            "hs",
            &format!("{url}/hs"),
            &format!("auth = {{ type = \"jwt\", algorithm = \"HS256\", secret = \"jwt-s3cret\", {common}, subject = \"crm\", claims = {{ tenant = \"acme\" }} }}"),
        )
        .subscription(
            "rs",
            &format!("{url}/rs"),
            &format!(
                "auth = {{ type = \"jwt\", algorithm = \"RS256\", private_key_file = \"{}\", {common} }}",
                rsa_key_path()
            ),
        )
        .parse(),
    )
    .await;
    insert_orders(&db, &[1, 2]).await;

    let hs = wait_path(&receiver, "/hs", 2).await;
    let secret = DecodingKey::from_secret(b"jwt-s3cret");
    for req in &hs {
        let claims = verify_jwt(req, Algorithm::HS256, &secret);
        assert_eq!(claims["sub"], "crm");
        assert_eq!(claims["tenant"], "acme");
    }
    let wrong = DecodingKey::from_secret(b"not-the-secret");
    let token = header(&hs[0], "authorization");
    let mut lax = Validation::new(Algorithm::HS256);
    lax.validate_aud = false;
    assert!(jsonwebtoken::decode::<Value>(&token[7..], &wrong, &lax).is_err());

    let public = std::fs::read(format!("{FIXTURES}/jwt-rs256.pub.pem")).unwrap();
    let public = DecodingKey::from_rsa_pem(&public).unwrap();
    for req in wait_path(&receiver, "/rs", 2).await {
        let claims = verify_jwt(&req, Algorithm::RS256, &public);
        assert!(claims.get("sub").is_none());
    }
    wh.stop().await.unwrap();
}

#[test]
fn a_bad_rs256_key_file_exits_2_naming_the_field() {
    let dir = scratch_dir("badkey");
    let key = dir.join("broken.pem");
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let config = dir.join("walhook.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nurl = \"postgres://u:p@127.0.0.1:1/db\"\n[[tables]]\nname = \"t\"\n\
             [[subscriptions]]\nname = \"x\"\nurl = \"https://example.com/h\"\n\
             auth = {{ type = \"jwt\", algorithm = \"RS256\", private_key_file = \"{}\", issuer = \"i\", audience = \"a\" }}\n",
            key.display()
        ),
    )
    .unwrap();
    for command in ["check", "run"] {
        let out = run_cli(&[command, "-c", config.to_str().unwrap()]);
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(2), "{command}: {text}");
        assert!(
            text.contains("subscriptions[0].auth.private_key_file"),
            "{command}: {text}"
        );
    }
}
