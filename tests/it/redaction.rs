//! Row 32: secrets never reach the output, even at `RUST_LOG=trace`.
//!
//! The real binary runs `check`, `check --print-config`, `run` (deliveries with every
//! auth type, a token endpoint that refuses, a receiver that answers 401), `send-test`,
//! and `check`/`run` with a wrong database password, all at trace level with the
//! secrets coming from the environment. Every stdout, stderr and log file is searched
//! for each secret and for the `Authorization` values built from them.

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;

use crate::pipeline::db_name;
use crate::runner::{binary, eventually, scratch_dir, terminate, wait_exit, ConfigText};
use crate::support::db::TestDb;
use crate::support::receiver::{Reply, TestReceiver};

const WAIT: Duration = Duration::from_secs(60);

const HMAC_KEY: &str = "redaction-hmac-key-new-0001";
const HMAC_OLD: &str = "hm4c-old-s3cret-7a1";
const BASIC_USER: &str = "walhook-user";
const BASIC_PASSWORD: &str = "b4sic-pa55-s3cret-2b2";
const BEARER: &str = "b34rer-t0ken-s3cret-3c3";
const API_KEY: &str = "ap1-key-s3cret-4d4";
const OAUTH_CLIENT: &str = "walhook-client";
const OAUTH_SECRET: &str = "oauth-cl13nt-s3cret-5e5";
const ACCESS_TOKEN: &str = "acc3ss-t0ken-6f6";
const JWT_SECRET: &str = "jwt-hs256-s3cret-7g7";
const JDY_SECRET: &str = "jdy-s3cret-8h8";
const ROBOT_TOKEN: &str = "r0bot-url-t0ken-9i9";
const WRONG_PASSWORD: &str = "wr0ng-db-pa55word-0j0";

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn hmac_new() -> String {
    format!("whsec_{}", b64(HMAC_KEY))
}

/// A token endpoint: `/token` issues `ACCESS_TOKEN-<n>` to the right client, `/refuse`
/// always answers 401 `invalid_client`. Returns its base URL and the issue count.
async fn token_endpoint() -> (String, Arc<AtomicUsize>) {
    use axum::response::IntoResponse;
    let issued = Arc::new(AtomicUsize::new(0));
    let counter = issued.clone();
    let expected = format!("Basic {}", b64(&format!("{OAUTH_CLIENT}:{OAUTH_SECRET}")));
    let app = axum::Router::new()
        .route(
            "/token",
            axum::routing::post(move |headers: axum::http::HeaderMap| {
                let (counter, expected) = (counter.clone(), expected.clone());
                async move {
                    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
                    if auth != Some(expected.as_str()) {
                        return axum::http::StatusCode::UNAUTHORIZED.into_response();
                    }
                    let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                    axum::Json(serde_json::json!({
                        "access_token": format!("{ACCESS_TOKEN}-{n}"),
                        "token_type": "Bearer",
                        "expires_in": 3600,
                    }))
                    .into_response()
                }
            }),
        )
        .route(
            "/refuse",
            axum::routing::post(|| async {
                (
                    axum::http::StatusCode::UNAUTHORIZED,
                    axum::Json(serde_json::json!({"error": "invalid_client"})),
                )
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the token endpoint");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, issued)
}

/// Runs `walhook ARGS` at trace level with `env`, to completion.
fn run_traced(args: &[&str], env: &BTreeMap<&str, String>) -> Output {
    Command::new(binary())
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .output()
        .expect("cannot run the walhook binary")
}

/// Everything a command printed, labelled.
fn printed(label: &str, out: &Output) -> (String, String) {
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (label.to_owned(), text)
}

/// Panics naming every secret found in any output, with the line it is on.
fn assert_no_secret(outputs: &[(String, String)], secrets: &[(&str, String)]) {
    let mut found = Vec::new();
    for (label, text) in outputs {
        for (name, secret) in secrets {
            if let Some(line) = text.lines().find(|line| line.contains(secret.as_str())) {
                let line: String = line.chars().take(300).collect();
                found.push(format!("{name} in {label}: {line}"));
            }
        }
    }
    assert!(
        found.is_empty(),
        "{} secret(s) in the output:\n{}",
        found.len(),
        found.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_any_output_at_trace_level() {
    let db = TestDb::new().await;
    db.execute("CREATE TABLE t (id int PRIMARY KEY, note text)")
        .await;
    let receiver = TestReceiver::start().await;
    let picky = TestReceiver::start().await;
    picky.set_default(Reply::Status(401));
    let (tokens, issued) = token_endpoint().await;
    let name = db_name(&db);
    let dir = scratch_dir(&name);
    let store = dir.join("store");
    let password = db.cluster().password().to_owned();
    let url = |path: &str| format!("{}/{path}", receiver.url());
    let retry = "retry = { max_attempts = 2, initial = \"50ms\", max = \"50ms\" }";

    let db_url = db.url().replace(&password, "${PGPASSWORD}");
    assert!(
        db_url.contains("${PGPASSWORD}"),
        "the URL carries the password"
    );
    let cfg = ConfigText::new(&db_url, &name, &store)
        .table("name = \"t\"")
        .subscription(
            "hmac",
            &url("hmac"),
            "auth = { type = \"hmac\", secret = [\"${HMAC_NEW}\", \"${HMAC_OLD}\"] }",
        )
        .subscription(
            "basic",
            &url("basic"),
            &format!("auth = {{ type = \"basic\", user = \"{BASIC_USER}\", password = \"${{BASIC_PASSWORD}}\" }}"),
        )
        .subscription(
            "refused_basic",
            &format!("{}/refused", picky.url()),
            &format!("auth = {{ type = \"basic\", user = \"{BASIC_USER}\", password = \"${{BASIC_PASSWORD}}\" }}\n{retry}"),
        )
        .subscription(
            "bearer",
            &url("bearer"),
            "auth = { type = \"bearer\", token = \"${BEARER}\" }",
        )
        .subscription(
            "apikey",
            &url("apikey"),
            "auth = { type = \"header\", name = \"X-Api-Key\", value = \"${API_KEY}\" }",
        )
        .subscription(
            "oauth",
            &url("oauth"),
            &format!("auth = {{ type = \"oauth2\", token_url = \"{tokens}/token\", client_id = \"{OAUTH_CLIENT}\", client_secret = \"${{OAUTH_SECRET}}\" }}"),
        )
        .subscription(
            "refused_oauth",
            &url("never"),
            &format!("auth = {{ type = \"oauth2\", token_url = \"{tokens}/refuse\", client_id = \"{OAUTH_CLIENT}\", client_secret = \"${{OAUTH_SECRET}}\" }}\n{retry}"),
        )
        .subscription(
            "jwt",
            &url("jwt"),
            "auth = { type = \"jwt\", algorithm = \"HS256\", secret = \"${JWT_SECRET}\", issuer = \"walhook\", audience = \"receiver\" }",
        )
        .subscription(
            "jdy",
            &url("jdy"),
            "format = \"jiandaoyun\"\nauth = { type = \"jiandaoyun\", secret = \"${JDY_SECRET}\" }",
        )
        .subscription(
            "robot",
            &format!("{}?access_token=${{ROBOT_TOKEN}}", url("robot")),
            "headers = { \"X-Robot-Token\" = \"${ROBOT_TOKEN}\" }",
        );
    let config = cfg.write(&dir);
    let config = config.to_str().expect("utf-8 path");
    let mut env: BTreeMap<&str, String> = BTreeMap::new();
    env.insert("PGPASSWORD", password.clone());
    env.insert("HMAC_NEW", hmac_new());
    env.insert("HMAC_OLD", HMAC_OLD.into());
    env.insert("BASIC_PASSWORD", BASIC_PASSWORD.into());
    env.insert("BEARER", BEARER.into());
    env.insert("API_KEY", API_KEY.into());
    env.insert("OAUTH_SECRET", OAUTH_SECRET.into());
    env.insert("JWT_SECRET", JWT_SECRET.into());
    env.insert("JDY_SECRET", JDY_SECRET.into());
    env.insert("ROBOT_TOKEN", ROBOT_TOKEN.into());

    let mut outputs = Vec::new();
    let check = run_traced(&["check", "-c", config], &env);
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        printed("check", &check).1
    );
    outputs.push(printed("check", &check));

    let dump = run_traced(&["check", "--print-config", "-c", config], &env);
    let (_, dump_text) = printed("check --print-config", &dump);
    assert_eq!(dump.status.code(), Some(0), "{dump_text}");
    assert!(
        dump_text.contains("url: ***") && dump_text.contains("password: ***"),
        "{dump_text}"
    );
    outputs.push(("check --print-config".into(), dump_text));

    // The running walhook, delivering with every auth type.
    let log = dir.join("run.log");
    let out = std::fs::File::create(&log).expect("log file");
    let mut child = Command::new(binary())
        .args(["run", "-c", config])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log file"))
        .stderr(out)
        .spawn()
        .expect("spawn walhook");
    eventually(WAIT, "walhook to start streaming", || async {
        db.slot_active(&name).await.then_some(())
    })
    .await;
    db.execute("INSERT INTO t VALUES (1, 'one'), (2, 'two')")
        .await;
    let paths = [
        "/hmac", "/basic", "/bearer", "/apikey", "/oauth", "/jwt", "/jdy", "/robot",
    ];
    eventually(WAIT, "two deliveries to every path", || {
        let requests = receiver.requests();
        let done = paths.iter().all(|p| {
            requests
                .iter()
                .filter(|r| r.path.split('?').next() == Some(*p))
                .count()
                >= 2
        });
        async move { done.then_some(()) }
    })
    .await;
    eventually(WAIT, "the refused auth attempts", || async {
        (picky.requests().len() >= 4).then_some(())
    })
    .await;
    terminate(&child);
    assert_eq!(wait_exit(&mut child, WAIT).code(), Some(0));
    assert!(issued.load(Ordering::SeqCst) >= 1, "a token was issued");
    // The requests really carried the credentials (so there was something to leak).
    let sent = receiver.requests();
    let header_of = |path: &str, name: &str| {
        sent.iter()
            .find(|r| r.path.split('?').next() == Some(path))
            .and_then(|r| r.header(name))
            .unwrap_or_default()
            .to_owned()
    };
    let basic_value = format!("Basic {}", b64(&format!("{BASIC_USER}:{BASIC_PASSWORD}")));
    assert_eq!(header_of("/basic", "authorization"), basic_value);
    assert_eq!(
        header_of("/bearer", "authorization"),
        format!("Bearer {BEARER}")
    );
    assert_eq!(header_of("/apikey", "x-api-key"), API_KEY);
    assert!(header_of("/oauth", "authorization").starts_with(&format!("Bearer {ACCESS_TOKEN}")));
    let jwt = header_of("/jwt", "authorization");
    assert!(jwt.starts_with("Bearer eyJ"), "{jwt}");
    let run_log = std::fs::read_to_string(&log).expect("read the run log");
    assert!(
        run_log.contains("TRACE"),
        "the run did not log at trace level:\n{}",
        run_log.chars().take(2000).collect::<String>()
    );
    outputs.push(("run (log)".into(), run_log));

    for sub in ["hmac", "basic", "oauth", "jwt", "robot", "refused_oauth"] {
        let out = run_traced(&["send-test", sub, "-c", config], &env);
        outputs.push(printed(&format!("send-test {sub}"), &out));
    }

    // A wrong database password: check and run both fail with exit 3.
    let mut wrong = env.clone();
    wrong.insert("PGPASSWORD", WRONG_PASSWORD.into());
    for args in [["check", "-c", config], ["run", "-c", config]] {
        let out = run_traced(&args, &wrong);
        let (label, text) = printed(&format!("{} with a wrong password", args[0]), &out);
        assert_eq!(out.status.code(), Some(3), "{label}: {text}");
        assert!(text.contains("rejected the login"), "{label}: {text}");
        outputs.push((label, text));
    }

    let secrets: Vec<(&str, String)> = vec![
        ("database password", password.clone()),
        ("wrong database password", WRONG_PASSWORD.into()),
        ("hmac secret", hmac_new()),
        ("hmac key", HMAC_KEY.into()),
        ("old hmac secret", HMAC_OLD.into()),
        ("basic password", BASIC_PASSWORD.into()),
        (
            "basic Authorization",
            b64(&format!("{BASIC_USER}:{BASIC_PASSWORD}")),
        ),
        ("bearer token", BEARER.into()),
        ("API key", API_KEY.into()),
        ("oauth client secret", OAUTH_SECRET.into()),
        (
            "oauth client Authorization",
            b64(&format!("{OAUTH_CLIENT}:{OAUTH_SECRET}")),
        ),
        ("oauth access token", ACCESS_TOKEN.into()),
        ("jwt secret", JWT_SECRET.into()),
        ("a minted JWT", jwt.trim_start_matches("Bearer ").to_owned()),
        ("jiandaoyun secret", JDY_SECRET.into()),
        ("token in a URL and a header", ROBOT_TOKEN.into()),
    ];
    assert_no_secret(&outputs, &secrets);
    let _ = db
        .client()
        .batch_execute(&format!("SELECT pg_drop_replication_slot('{name}')"))
        .await;
}
