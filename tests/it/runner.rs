//! Runs walhook for a test: in-process (fast, for most scenarios) or as the
//! real binary (for crash tests and exit codes).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use walhook::app::{self, Error, Hooks};

/// A unique scratch directory for a test.
pub fn scratch_dir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "walhook-it-{}-{}-{}",
        tag,
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Builds a config text.
pub struct ConfigText {
    pub db_url: String,
    pub slot: String,
    pub store: PathBuf,
    pub tables: String,
    pub subscriptions: String,
    pub extra_source: String,
    pub delivery: String,
    /// Extra lines of `[admin]` (it always listens on 127.0.0.1:0, so tests
    /// never collide on the default port).
    pub extra_admin: String,
    /// Extra top-level sections (`[log]`, ...), written before the tables.
    pub extra_sections: String,
    /// Extra lines of `[store]`.
    pub extra_store: String,
}

impl ConfigText {
    /// A config for `db_url` with slot/publication named `slot`.
    pub fn new(db_url: &str, slot: &str, store: &Path) -> Self {
        ConfigText {
            db_url: db_url.to_string(),
            slot: slot.to_string(),
            store: store.to_path_buf(),
            tables: String::new(),
            subscriptions: String::new(),
            extra_source: String::new(),
            delivery: String::new(),
            extra_admin: String::new(),
            extra_sections: String::new(),
            extra_store: String::new(),
        }
    }

    pub fn store(mut self, line: &str) -> Self {
        self.extra_store.push_str(line);
        self.extra_store.push('\n');
        self
    }

    pub fn admin(mut self, line: &str) -> Self {
        self.extra_admin.push_str(line);
        self.extra_admin.push('\n');
        self
    }

    /// Adds top-level sections such as `[log]` (with their keys).
    pub fn section(mut self, toml: &str) -> Self {
        self.extra_sections.push_str(toml);
        self.extra_sections.push('\n');
        self
    }

    pub fn table(mut self, toml: &str) -> Self {
        self.tables.push_str("[[tables]]\n");
        self.tables.push_str(toml);
        self.tables.push('\n');
        self
    }

    pub fn subscription(mut self, name: &str, url: &str, extra: &str) -> Self {
        self.subscriptions.push_str(&format!(
            "[[subscriptions]]\nname = \"{name}\"\nurl = \"{url}\"\n{extra}\n"
        ));
        self
    }

    pub fn source(mut self, line: &str) -> Self {
        self.extra_source.push_str(line);
        self.extra_source.push('\n');
        self
    }

    /// Adds a line to the `[delivery]` section.
    pub fn delivery(mut self, line: &str) -> Self {
        self.delivery.push_str(line);
        self.delivery.push('\n');
        self
    }

    pub fn render(&self) -> String {
        format!(
            "[source]\nurl = \"{}\"\nslot = \"{}\"\npublication = \"{}\"\nheartbeat = \"1s\"\nstatus_interval = \"200ms\"\n{}\n[store]\npath = \"{}\"\n{}\n[admin]\nlisten = \"127.0.0.1:0\"\n{}\n[delivery]\n{}\n{}\n{}\n{}",
            self.db_url,
            self.slot,
            self.slot,
            self.extra_source,
            self.store.display(),
            self.extra_store,
            self.extra_admin,
            self.delivery,
            self.extra_sections,
            self.tables,
            self.subscriptions
        )
    }

    pub fn parse(&self) -> walhook::config::Config {
        walhook::config::from_str_with_env(&self.render(), "test.toml", &|_| None)
            .unwrap_or_else(|e| panic!("test config does not parse: {e}\n{}", self.render()))
    }

    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("walhook.toml");
        std::fs::write(&path, self.render()).unwrap();
        path
    }
}

/// walhook running in-process.
pub struct InProcess {
    pub token: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), Error>>,
    /// Where its admin server listens (when `admin.enabled`).
    pub admin: std::net::SocketAddr,
}

impl InProcess {
    /// Starts walhook and waits until replication is streaming.
    pub async fn start(cfg: walhook::config::Config) -> InProcess {
        InProcess::start_with(cfg, Hooks::default()).await
    }

    /// Like [`InProcess::start`] with the test's own hooks; its `on_streaming`, if any,
    /// is called too.
    pub async fn start_with(cfg: walhook::config::Config, mut hooks: Hooks) -> InProcess {
        let token = CancellationToken::new();
        let streaming = Arc::new(Notify::new());
        let s = streaming.clone();
        let theirs = hooks.on_streaming.take();
        hooks.on_streaming = Some(Arc::new(move || {
            s.notify_one();
            if let Some(f) = &theirs {
                f();
            }
        }));
        let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind an admin listener on 127.0.0.1:0");
        let admin = admin_listener.local_addr().unwrap();
        hooks.admin_listener = Some(admin_listener);
        let t = token.clone();
        let mut handle = tokio::spawn(async move { app::run(cfg, t, hooks).await });
        tokio::select! {
            _ = streaming.notified() => {}
            r = &mut handle => panic!("walhook stopped before streaming: {:?}", r.unwrap()),
            _ = tokio::time::sleep(Duration::from_secs(30)) => panic!("walhook did not start streaming within 30 s"),
        }
        InProcess {
            token,
            handle,
            admin,
        }
    }

    /// `http://127.0.0.1:<admin port>` + `path`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Whether walhook has stopped by itself (an error ended its run).
    pub fn has_stopped(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits, without cancelling, until walhook stops by itself (a failure)
    /// and returns its result.
    pub async fn finished(self, timeout: Duration) -> Result<(), Error> {
        tokio::time::timeout(timeout, self.handle)
            .await
            .unwrap_or_else(|_| panic!("walhook did not stop by itself within {timeout:?}"))
            .expect("walhook task panicked")
    }

    /// Stops walhook cleanly and returns its result.
    pub async fn stop(self) -> Result<(), Error> {
        self.token.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("walhook did not stop within 30 s")
            .expect("walhook task panicked")
    }
}

/// Path of the walhook binary built for these tests.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_walhook")
}

/// Runs `walhook ARGS` to completion.
pub fn run_cli(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("cannot run the walhook binary")
}

/// Spawns `walhook run -c CONFIG` as a child process, its output in `log`.
pub fn spawn_run(config: &Path, log: &Path) -> Child {
    spawn_run_env(config, log, &[])
}

/// Like [`spawn_run`], with extra environment variables (e.g. `WALHOOK_FAILPOINTS`).
pub fn spawn_run_env(config: &Path, log: &Path, env: &[(&str, &str)]) -> Child {
    let out = std::fs::File::create(log).unwrap();
    let err = out.try_clone().unwrap();
    Command::new(binary())
        .args(["run", "-c"])
        .arg(config)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("cannot spawn walhook")
}

/// Spawns `walhook ARGS` (any command, e.g. `run --resync -c FILE`) as a child process,
/// stdout and stderr in `log`.
pub fn spawn_walhook(args: &[&str], log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    let err = out.try_clone().unwrap();
    Command::new(binary())
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("cannot spawn walhook")
}

/// Sends SIGTERM (a clean stop) to a child.
pub fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits for a child to exit, with a timeout.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("walhook did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `f` until it returns Some or the timeout passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
