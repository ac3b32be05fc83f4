//! The files of `docker/` checked without a Docker engine: the compose setup's
//! `init.sql`, `walhook.toml` and sample `receiver.py` run here against the test
//! cluster, so a user who runs `docker compose up` gets the same pieces, proven to work
//! together: least-privilege role, pre-created publication, signatures verified by an
//! independent (Python) implementation.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::runner::{binary, eventually, scratch_dir, terminate, wait_exit};
use crate::support::db::TestDb;

const WAIT: Duration = Duration::from_secs(60);
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn repo(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|err| panic!("{}: {err}", full.display()))
}

/// Starts `docker/receiver.py` on a free port; returns the child, its URL and its lines.
fn start_receiver() -> (Child, String, Arc<Mutex<Vec<String>>>) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/receiver.py");
    let mut child = Command::new("python3")
        .arg("-u")
        .arg(&script)
        .env("LISTEN", "127.0.0.1:0")
        .env("WEBHOOK_SECRET", SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|err| {
            panic!(
                "cannot run python3 ({err}); install it (apt-get install python3) to run this test"
            )
        });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("receiver.py printed nothing").unwrap();
    let port = first
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or_else(|| {
            panic!("receiver.py's first line is not 'listening on HOST:PORT': {first}")
        });
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    (child, format!("http://127.0.0.1:{port}/hooks/orders"), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_files_deliver_verified_events_without_docker() {
    let db = TestDb::new().await;
    // The compose PostgreSQL runs init.sql as the application's owner.
    db.execute(&repo("docker/init.sql")).await;
    let (mut receiver, receiver_url, lines) = start_receiver();

    // docker/walhook.toml as is, but for paths and the admin address (the container's
    // 0.0.0.0:9187 could clash with another test here).
    let dir = scratch_dir(db.name());
    let config = repo("docker/walhook.toml")
        .replace(
            "/var/lib/walhook/store",
            &dir.join("store").display().to_string(),
        )
        .replace("listen = \"0.0.0.0:9187\"", "enabled = false");
    assert!(
        config.contains("enabled = false"),
        "docker/walhook.toml lost its [admin] listen line"
    );
    let config_path = dir.join("walhook.toml");
    std::fs::write(&config_path, config).unwrap();
    let slot_name = "walhook";
    let cluster = db.cluster();
    let database_url = format!(
        "postgres://walhook:walhook-demo-password@127.0.0.1:{}/{}",
        cluster.port(),
        db.name()
    );
    let log = std::fs::File::create(dir.join("walhook.log")).unwrap();
    let mut walhook = Command::new(binary())
        .args(["run", "-c"])
        .arg(&config_path)
        .env("RUST_LOG", "info")
        .env("WALHOOK_DATABASE_URL", &database_url)
        .env("RECEIVER_URL", &receiver_url)
        .env("WEBHOOK_SECRET", SECRET)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();

    eventually(
        WAIT,
        "walhook (as the least-privilege role) to stream",
        || async { db.slot_active(slot_name).await.then_some(()) },
    )
    .await;
    for total in ["12.50", "199.99", "0.01"] {
        db.execute(&format!(
            "INSERT INTO orders (customer, total) VALUES ('demo', {total})"
        ))
        .await;
    }
    let verified = eventually(WAIT, "receiver.py to verify 3 events", || async {
        let got: Vec<String> = lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("verified "))
            .cloned()
            .collect();
        (got.len() >= 3).then_some(got)
    })
    .await;

    terminate(&walhook);
    let status = wait_exit(&mut walhook, Duration::from_secs(30));
    let _ = receiver.kill();
    let _ = receiver.wait();
    db.execute(&format!("SELECT pg_drop_replication_slot('{slot_name}')"))
        .await;

    let all = lines.lock().unwrap().clone();
    assert!(
        all.iter().all(|l| !l.starts_with("rejected")),
        "receiver.py rejected a signature: {all:?}"
    );
    assert_eq!(verified.len(), 3, "{verified:?}");
    assert!(
        verified[0].contains("data_create orders"),
        "{}",
        verified[0]
    );
    assert!(verified[1].contains("\"total\": 199.99"), "{}", verified[1]);
    assert_eq!(status.code(), Some(0), "walhook did not stop cleanly");
}

/// The ConfigMap's `walhook.toml` in `deploy/kubernetes/sidecar.yaml` is a valid
/// configuration once the Secret's variables are set, and every variable it uses is
/// one the Secret provides.
#[test]
fn kubernetes_sidecar_config_is_valid_with_the_secret_env() {
    let manifest = repo("deploy/kubernetes/sidecar.yaml");
    // The block scalar under `walhook.toml: |`, indented by four spaces.
    let toml: String = manifest
        .lines()
        .skip_while(|l| l.trim() != "walhook.toml: |")
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    assert!(
        toml.contains("[source]"),
        "no walhook.toml in the ConfigMap:\n{toml}"
    );
    let secret_keys: Vec<&str> = manifest
        .lines()
        .skip_while(|l| l.trim() != "stringData:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.trim().split_once(':').map(|(k, _)| k))
        .collect();
    assert!(secret_keys.contains(&"PGPASSWORD"), "{secret_keys:?}");
    let env = |name: &str| {
        secret_keys
            .contains(&name)
            .then(|| format!("value-of-{name}"))
    };
    let cfg = walhook::config::from_str_with_env(&toml, "sidecar.yaml", &env)
        .unwrap_or_else(|err| panic!("the sidecar's walhook.toml: {err}\n{toml}"));
    assert_eq!(cfg.subscriptions.len(), 1);
}

/// `docker/walhook.toml` parses with the variables compose.yaml sets.
#[test]
fn compose_config_is_valid_with_the_compose_env() {
    let compose = repo("docker/compose.yaml");
    let toml = repo("docker/walhook.toml");
    for name in ["WALHOOK_DATABASE_URL", "RECEIVER_URL", "WEBHOOK_SECRET"] {
        assert!(
            compose.contains(&format!("{name}:")),
            "compose.yaml does not set {name}"
        );
    }
    let env = |name: &str| match name {
        "WALHOOK_DATABASE_URL" => Some("postgres://walhook:pw@postgres:5432/app".to_string()),
        "RECEIVER_URL" => Some("http://receiver:8080/hooks/orders".to_string()),
        "WEBHOOK_SECRET" => Some(SECRET.to_string()),
        _ => None,
    };
    walhook::config::from_str_with_env(&toml, "walhook.toml", &env)
        .unwrap_or_else(|err| panic!("docker/walhook.toml: {err}"));
}

/// Runs one of `examples/verify/` on a request description; returns its output line.
fn run_verifier(program: &str, script: &str, request: &serde_json::Value, dir: &Path) -> String {
    let file = dir.join(format!("request-{}.json", rand::random::<u32>()));
    std::fs::write(&file, request.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/verify")
        .join(script);
    let out = Command::new(program)
        .arg(&script)
        .arg(&file)
        .output()
        .unwrap_or_else(|err| {
            panic!("cannot run {program} ({err}); install it (apt-get install {program}) to run this test")
        });
    assert!(
        out.status.success(),
        "{program} {}: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The receiver-side examples in `examples/verify/` (Python and Node; the Go one is the
/// same algorithm) accept real walhook requests — Standard Webhooks with two secrets
/// during a rotation, and 简道云's sha1 scheme — and reject a tampered body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_examples_accept_real_requests_and_reject_tampering() {
    use crate::runner::{ConfigText, InProcess};
    use crate::support::receiver::TestReceiver;

    let db = TestDb::new().await;
    db.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        .await;
    let receiver = TestReceiver::start().await;
    let dir = scratch_dir(db.name());
    let (old, new) = ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "plain-secret-ü");
    let cfg = ConfigText::new(&db.url(), &db.slot_name(), &dir.join("store"))
        .table("name = \"notes\"")
        .subscription(
            "std",
            &format!("{}/std", receiver.url()),
            &format!("auth = {{ type = \"hmac\", secret = [\"{new}\", \"{old}\"] }}"),
        )
        .subscription(
            "jdy",
            &format!("{}/jdy", receiver.url()),
            "format = \"jiandaoyun\"\nauth = { type = \"jiandaoyun\", secret = \"jdy-secret\" }",
        );
    let app = InProcess::start(cfg.parse()).await;
    db.execute("INSERT INTO notes VALUES (1, 'héllo 🎉 \"quoted\"')")
        .await;
    let requests = receiver.wait_for(2, WAIT).await;
    app.stop().await.unwrap();

    let headers = |r: &crate::support::receiver::Request| -> serde_json::Value {
        r.headers
            .iter()
            .map(|(k, v)| (k.to_lowercase(), serde_json::Value::from(v.as_str())))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let std_req = requests
        .iter()
        .find(|r| r.path.starts_with("/std"))
        .unwrap();
    let jdy_req = requests
        .iter()
        .find(|r| r.path.starts_with("/jdy"))
        .unwrap();
    let query: serde_json::Map<String, serde_json::Value> =
        url::Url::parse(&format!("http://x{}", jdy_req.path))
            .unwrap()
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned().into()))
            .collect();
    let body = |r: &crate::support::receiver::Request| String::from_utf8(r.body.to_vec()).unwrap();
    let cases = [
        ("hmac", new, std_req, serde_json::Value::Null),
        ("hmac", old, std_req, serde_json::Value::Null),
        ("jiandaoyun", "jdy-secret", jdy_req, query.clone().into()),
    ];
    for (program, script) in [("python3", "verify.py"), ("node", "verify.js")] {
        for (scheme, secret, req, query) in &cases {
            let mut request = serde_json::json!({
                "secret": secret, "scheme": scheme, "headers": headers(req),
                "query": query, "body": body(req),
            });
            assert_eq!(
                run_verifier(program, script, &request, &dir),
                "ok",
                "{script} rejected a real {scheme} request"
            );
            request["body"] = body(req).replacen("1", "2", 1).into();
            assert_eq!(
                run_verifier(program, script, &request, &dir),
                "bad",
                "{script} accepted a tampered {scheme} body"
            );
        }
    }
}
