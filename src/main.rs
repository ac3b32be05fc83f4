//! The `walhook` binary: parse the CLI, load the config, init logging, run,
//! and map errors to exit codes. Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use walhook::app::{self, Error};
use walhook::config::{Config, LogFormat};
use walhook::exit;

/// `--version`; a build with test-only failpoints says so (they are never in
/// `cargo build --release`, see `walhook::failpoint`).
const VERSION: &str = if walhook::failpoint::COMPILED {
    concat!(env!("CARGO_PKG_VERSION"), " (failpoints)")
} else {
    env!("CARGO_PKG_VERSION")
};

/// PostgreSQL logical replication → signed, retried webhooks.
#[derive(Parser)]
#[command(name = "walhook", version = VERSION, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the connector: capture changes, store them durably, deliver them.
    ///
    /// Example: walhook run -c /etc/walhook/walhook.toml
    Run {
        /// Config file (TOML).
        #[arg(short, long, env = "WALHOOK_CONFIG", default_value = "walhook.toml")]
        config: PathBuf,
        /// Replace a lost, missing or foreign-advanced replication slot with a new one and
        /// continue. Changes committed between the store's last durable LSN and the new
        /// slot's start are skipped (the gap is logged and shown by `walhook status`);
        /// events already stored are still delivered. Without it walhook exits with code 4.
        #[arg(long)]
        resync: bool,
    },
    /// Validate the config, connect, and verify every prerequisite; one line per check.
    ///
    /// Example: walhook check -c walhook.toml
    Check {
        /// Config file (TOML).
        #[arg(short, long, env = "WALHOOK_CONFIG", default_value = "walhook.toml")]
        config: PathBuf,
        /// Print the effective configuration (defaults filled in, every secret
        /// shown as ***) and exit without connecting.
        #[arg(long)]
        print_config: bool,
    },
    /// Deliver a sample event (op "test") to subscription NAME and print the answer.
    ///
    /// Uses the subscription's real method, headers and signing. Exits 0 on a 2xx.
    /// Example: walhook send-test crm -c walhook.toml
    SendTest {
        /// The subscription's name.
        name: String,
        /// Config file (TOML).
        #[arg(short, long, env = "WALHOOK_CONFIG", default_value = "walhook.toml")]
        config: PathBuf,
    },
    /// Show each subscription's backlog, dead letters, last error and state, and the slot's lag.
    ///
    /// Safe while `walhook run` is running (reads the store without locking it).
    /// Example: walhook status -c walhook.toml --json
    Status {
        /// Config file (TOML).
        #[arg(short, long, env = "WALHOOK_CONFIG", default_value = "walhook.toml")]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Re-deliver retained events or dead letters to subscription NAME (same ids).
    ///
    /// --since rewinds NAME to the first event stored within the given time;
    /// --dead re-queues its dead letters at the end of its log. Safe while
    /// `walhook run` is running (it applies the request within a second).
    /// Example: walhook replay crm --since 2h --wait -c walhook.toml
    #[command(group(clap::ArgGroup::new("what").required(true).args(["since", "dead"])))]
    Replay {
        /// The subscription's name.
        name: String,
        /// How far back, e.g. "30m", "2h", "7d" (at most store.retention).
        #[arg(long)]
        since: Option<String>,
        /// Re-queue the subscription's dead letters.
        #[arg(long)]
        dead: bool,
        /// Beside a running walhook: then show the backlog shrinking until
        /// everything is delivered (Ctrl-C stops only the watching).
        #[arg(long)]
        wait: bool,
        /// Config file (TOML).
        #[arg(short, long, env = "WALHOOK_CONFIG", default_value = "walhook.toml")]
        config: PathBuf,
    },
    /// Start a throwaway PostgreSQL and a local receiver, and show events flowing.
    ///
    /// Needs the PostgreSQL server binaries (initdb, pg_ctl). Ctrl-C cleans up.
    Demo {
        /// Stop by itself after this many events were received (0 = run until Ctrl-C).
        #[arg(long, default_value_t = 0)]
        events: usize,
    },
}

/// Logs to stderr in `format`; `default_level` applies unless `RUST_LOG` is set.
/// Colours only on a terminal: log files and journald get plain `key=value` lines.
fn init_tracing(default_level: &str, format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        // One object per line; the event's fields at the top level.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

/// Cancels `token` on SIGINT or SIGTERM.
fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
        tracing::info!("shutting down");
        token.cancel();
    });
}

/// Reloads pending at once; more SIGHUPs than this while one is applied are
/// redundant (each reload reads the file anew).
const RELOAD_QUEUE: usize = 2;

/// On SIGHUP, reads and validates the config file again and hands it to the
/// running walhook; a bad file is reported and the running config kept.
fn reload_on_sighup(path: PathBuf, tx: tokio::sync::mpsc::Sender<walhook::config::Config>) {
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            match walhook::config::load(&path) {
                Ok(cfg) => {
                    tracing::info!(path = %path.display(), "SIGHUP: reloading the config");
                    if tx.try_send(cfg).is_err() {
                        tracing::warn!("a reload is already pending; this one is skipped");
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err, "SIGHUP: the config does not load; keeping the running one")
                }
            }
        }
    });
}

async fn main_inner(cli: Cli, loaded: Option<Config>) -> Result<(), Error> {
    let token = CancellationToken::new();
    cancel_on_signals(token.clone());
    match cli.command {
        Command::Run { config, resync } => {
            let cfg = match loaded {
                Some(cfg) => cfg,
                None => walhook::config::load(&config)?,
            };
            if let Some(active) = walhook::failpoint::init().map_err(Error::Usage)? {
                tracing::warn!(failpoints = %active, "test failpoints are active");
            }
            let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(RELOAD_QUEUE);
            reload_on_sighup(config, reload_tx);
            let hooks = app::Hooks {
                reload: Some(reload_rx),
                resync,
                ..app::Hooks::default()
            };
            app::run(cfg, token, hooks).await
        }
        Command::Check {
            config,
            print_config,
        } => {
            let cfg = walhook::config::load(&config)?;
            if print_config {
                println!("{}", cfg.redacted());
                return Ok(());
            }
            println!("ok    config {} is valid", config.display());
            let result = app::check(&cfg, &mut |line| println!("{line}")).await;
            match &result {
                Ok(()) => println!("all checks passed"),
                Err(_) => println!("checks failed"),
            }
            result
        }
        Command::Demo { events } => walhook::demo::run(token, events).await,
        Command::SendTest { name, config } => {
            let cfg = walhook::config::load(&config)?;
            let Some(sub) = cfg.subscriptions.iter().find(|s| s.name == name) else {
                return Err(Error::Usage(format!(
                    "no subscription named '{name}' in {}",
                    config.display()
                )));
            };
            let client = walhook::delivery::build_client(&cfg.delivery)?;
            let started = std::time::Instant::now();
            let status = walhook::delivery::send_test(sub, &client).await?;
            let ms = started.elapsed().as_millis();
            println!("subscription '{name}': HTTP {status} in {ms} ms");
            if (200..300).contains(&status) {
                Ok(())
            } else {
                Err(Error::Internal(format!(
                    "the endpoint answered HTTP {status} to the test event"
                )))
            }
        }
        Command::Replay {
            name,
            since,
            dead,
            wait,
            config,
        } => {
            let cfg = walhook::config::load(&config)?;
            if !cfg.subscriptions.iter().any(|s| s.name == name) {
                return Err(Error::Usage(format!(
                    "no subscription named '{name}' in {}",
                    config.display()
                )));
            }
            let what = match (since, dead) {
                (Some(since), false) => {
                    walhook::app::Replay::Since(humantime::parse_duration(&since).map_err(|e| {
                        Error::Usage(format!("--since {since:?}: {e}; write e.g. 30m, 2h or 7d"))
                    })?)
                }
                _ => walhook::app::Replay::Dead,
            };
            walhook::app::replay(&cfg, &name, what, wait).await
        }
        Command::Status { config, json } => {
            let cfg = walhook::config::load(&config)?;
            let report = walhook::status::collect(&cfg).await?;
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{report}");
            }
            Ok(())
        }
    }
}

/// glibc's malloc raises its mmap threshold to the size of the largest block
/// freed (up to 32 MiB); blocks below it then come from per-thread arenas and
/// stay resident after they are freed. A 10 MB row passes through several
/// such buffers (decoded values, the event JSON, the stored and the sent
/// copy), and with the default behaviour the process kept hundreds of MB after
/// a few of them. A fixed 1 MiB threshold gives every large block its own
/// mapping, returned to the system on free. See
/// docs/decisions/0008-allocator-tuning.md.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn tune_allocator() {
    const MMAP_THRESHOLD: libc::c_int = 1024 * 1024;
    // SAFETY: mallopt only sets a parameter of glibc's allocator; it is
    // called once, first thing in main, before any other thread exists.
    let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
    if ok != 1 {
        eprintln!("walhook: could not set malloc's mmap threshold; memory use after large rows may stay high");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

/// Raises the soft limit on open files to the hard limit. Each request in
/// flight holds a connection, and `delivery.max_concurrency` may be 1,000 or
/// more, while many systems start services with a soft limit of 1024 (and a
/// much higher hard one). Raising the soft limit up to the hard one needs no
/// privilege; Go's runtime, nginx and others do the same.
#[cfg(unix)]
#[allow(unsafe_code)]
fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[cfg(not(unix))]
fn raise_open_files_limit() {}

fn main() -> ExitCode {
    tune_allocator();
    raise_open_files_limit();
    let cli = Cli::parse();
    // `run` logs as its config says ([log]); so the config is read first,
    // and a config error is reported like any other (exit 2).
    let loaded = match &cli.command {
        Command::Run { config, .. } => match walhook::config::load(config) {
            Ok(cfg) => Some(cfg),
            Err(err) => {
                eprintln!("walhook: {err}");
                return ExitCode::from(Error::from(err).exit_code());
            }
        },
        _ => None,
    };
    match &loaded {
        Some(cfg) => init_tracing(&cfg.log.level, cfg.log.format),
        // The demo's own lines tell the story; walhook's logs would drown them.
        None => init_tracing(
            match cli.command {
                Command::Check { .. } => "info",
                _ => "warn",
            },
            LogFormat::Pretty,
        ),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("walhook: cannot start the async runtime: {err}");
            return ExitCode::from(exit::UNEXPECTED);
        }
    };
    match runtime.block_on(main_inner(cli, loaded)) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(err) => {
            eprintln!("walhook: {}", err.report());
            ExitCode::from(err.exit_code())
        }
    }
}
