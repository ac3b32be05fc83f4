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
