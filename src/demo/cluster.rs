//! A throwaway PostgreSQL cluster started from the installed server binaries.
//!
//! Used by `walhook demo` and by the integration tests (CONVENTIONS.md #7): it runs
//! `initdb` into a fresh directory under [`std::env::temp_dir`], appends the settings
//! logical replication needs to `postgresql.conf`, and starts the server with
//! `pg_ctl` on a free loopback port. Nothing is installed or configured system-wide.
//!
//! # Binaries
//! Looked up in this order: `$WALHOOK_PG_BIN` or `$PG_BIN`; `pg_config --bindir`
//! when it holds `initdb`, `pg_ctl` and `postgres`; the highest
//! `/usr/lib/postgresql/<version>/bin` (Debian/Ubuntu) or `/usr/pgsql-<version>/bin`
//! (RHEL); finally `$PATH`.
//!
//! # Running as root
//! `initdb` and `postgres` refuse to run as root (CI containers usually are root). When
//! the effective uid is 0 the directory is handed to the `postgres` OS user and every
//! server command runs through `runuser -u postgres --`. Root can still read the log.
//!
//! # TLS
//! [`ClusterOptions::tls`] makes the server speak TLS with a given certificate (tests
//! make one with a CA of their own) and, with [`ServerTls::tls_only`], refuse plain TCP
//! logins the way a managed service with forced TLS does; the Unix socket stays open
//! for the harness ([`TempCluster::socket_conninfo`]).
//!
//! # Cleanup
//! Dropping a [`TempCluster`] stops the server (`pg_ctl stop -m immediate`) and deletes
//! the directory. Because a value in a `static` is never dropped, and because a test
//! process can also die by a signal, each cluster also has an *exit watchdog* (on by
//! default): a small `sh` child that blocks reading a pipe whose only writer is this
//! process. When this process exits for any reason, the kernel closes the pipe, the
//! watchdog wakes up and performs the same stop-and-delete. It ignores SIGINT/SIGTERM/
//! SIGHUP so that a Ctrl-C sent to the whole process group still gets cleaned up
//! (`pg_ctl` detaches the postmaster into its own session, so it survives the Ctrl-C).
//! Set `WALHOOK_KEEP_PG=1` to keep the directory (the server is still stopped); its
//! location is printed on stderr.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// Environment variable naming the directory that holds `initdb` and `pg_ctl`.
pub const ENV_PG_BIN: &str = "WALHOOK_PG_BIN";
/// Fallback for [`ENV_PG_BIN`], the name other tools use.
pub const ENV_PG_BIN_ALT: &str = "PG_BIN";
/// Set to `1` to keep the cluster directory after the cluster is dropped.
pub const ENV_KEEP: &str = "WALHOOK_KEEP_PG";

/// How to get the server binaries; part of every "not found" message.
pub const INSTALL_HINT: &str = "install the PostgreSQL server: apt-get install postgresql \
     (Debian/Ubuntu), or set WALHOOK_PG_BIN to the directory holding initdb and pg_ctl";

/// The superuser created by `initdb` and the OS user the server runs as under root.
const SUPERUSER: &str = "postgres";
/// The OS account used when we are root; Debian's `postgresql` package creates it.
const OS_USER_FOR_ROOT: &str = "postgres";
/// `pg_ctl -t`: generous, because a crash restart (after `StopMode::Immediate`) replays WAL.
const PG_CTL_TIMEOUT_SECS: &str = "60";
/// A port found free can be taken by someone else before the server binds it; retry.
const PORT_ATTEMPTS: usize = 3;
/// How much of a failing command's output or server log goes into a [`ClusterError`].
const TAIL_LINES: usize = 40;
/// Postgres variables from the caller's environment that could redirect our commands.
const SCRUBBED_ENV: [&str; 5] = ["PGDATA", "PGHOST", "PGHOSTADDR", "PGPORT", "PGOPTIONS"];

/// How [`TempCluster::start`] configures the cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// `wal_level`: `logical` by default; `replica` lets a test check the preflight.
    pub wal_level: String,
    /// Extra `postgresql.conf` lines appended after ours (later lines win).
    pub extra_conf: Vec<String>,
    /// Use this directory for the binaries instead of looking them up.
    pub bin_dir: Option<PathBuf>,
    /// Start the exit watchdog (see the module docs); on by default.
    pub exit_watchdog: bool,
    /// Serve TLS (`ssl = on`) with this certificate; `None`: no TLS.
    pub tls: Option<ServerTls>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            wal_level: "logical".to_owned(),
            extra_conf: Vec::new(),
            bin_dir: None,
            exit_watchdog: true,
            tls: None,
        }
    }
}

/// The server side of TLS for [`ClusterOptions::tls`]: the certificate and
/// key go into the data directory (`server.crt`, `server.key`, mode 0600,
/// owned by the server's OS user).
#[derive(Clone)]
pub struct ServerTls {
    /// The server's certificate chain (PEM), its own certificate first.
    pub cert_pem: String,
    /// The certificate's private key (PEM).
    pub key_pem: String,
    /// Accept TCP connections over TLS only: `pg_hba.conf` gets `hostssl`
    /// lines and no `host` lines, so a plain TCP login is refused ("no
    /// pg_hba.conf entry ... no encryption"). Unix-socket logins stay
    /// allowed ([`TempCluster::socket_conninfo`]), so a harness can still
    /// set up databases without TLS of its own.
    pub tls_only: bool,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("tls_only", &self.tls_only)
            .finish_non_exhaustive()
    }
}

/// `pg_hba.conf` of a [`ServerTls::tls_only`] cluster: SCRAM everywhere, TCP
/// over TLS only.
const TLS_ONLY_HBA: &str = "# written by walhook's TempCluster: TCP logins over TLS only
local   all          all                    scram-sha-256
local   replication  all                    scram-sha-256
hostssl all          all       127.0.0.1/32 scram-sha-256
hostssl replication  all       127.0.0.1/32 scram-sha-256
";

/// How [`TempCluster::stop`] shuts the server down (`pg_ctl stop -m <mode>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Disconnect clients, write a shutdown checkpoint.
    Fast,
    /// Kill the server: the next start runs crash recovery.
    Immediate,
}

impl StopMode {
    fn as_arg(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// Why a throwaway cluster could not be set up, started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No directory holding `initdb`, `pg_ctl` and `postgres` was found.
    #[error("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; looked in: {searched}; {INSTALL_HINT}")]
    BinariesNotFound {
        /// The places that were tried, in order.
        searched: String,
    },
    /// An explicitly configured binary directory lacks a binary.
    #[error("{origin} points at {}, which does not hold initdb, pg_ctl and postgres; {INSTALL_HINT}", dir.display())]
    BadBinDir {
        /// Where the directory came from (`WALHOOK_PG_BIN`, `PG_BIN`, `options`).
        origin: String,
        /// The directory.
        dir: PathBuf,
    },
    /// Running as root but there is no OS user to run the server as.
    #[error("running as root, and initdb/postgres refuse to run as root, but there is no `{OS_USER_FOR_ROOT}` OS user to run them as; create it (`useradd --system --no-create-home {OS_USER_FOR_ROOT}`, which apt-get install postgresql also does) or run as an unprivileged user")]
    NoPostgresUser,
    /// A filesystem operation on the cluster directory failed.
    #[error("could not {action} {}", path.display())]
    Io {
        /// What we tried to do.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A command could not be started at all.
    #[error("could not run `{command}`")]
    Spawn {
        /// The command line.
        command: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A command ran and failed.
    #[error("`{command}` failed ({status}); last output:\n{output}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// The tail of its stdout/stderr, then of the server log when there is one.
        output: String,
    },
    /// No free TCP port could be bound on 127.0.0.1.
    #[error("could not find a free TCP port on 127.0.0.1")]
    Port {
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A PostgreSQL server in a temporary directory, stopped and deleted on drop.
#[derive(Debug)]
pub struct TempCluster {
    root: PathBuf,
    bin_dir: PathBuf,
    port: u16,
    password: String,
    /// `Some` when we are root and run server commands as this OS user.
    run_as: Option<&'static str>,
    keep: bool,
    tls_only: bool,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    running: bool,
    watchdog: Option<Child>,
}

impl TempCluster {
    /// Runs `initdb` and starts the server; blocks until it accepts connections.
    pub fn start(opts: ClusterOptions) -> Result<TempCluster, ClusterError> {
        let bin_dir = find_bin_dir(opts.bin_dir.as_deref())?;
        let run_as = if effective_uid_is_root() {
            Some(OS_USER_FOR_ROOT)
        } else {
            None
        };
        let owner = match run_as {
            Some(user) => Some(os_user_ids(user)?),
            None => None,
        };
        let root = create_unique_dir()?;
        // From here on, Drop removes the directory if anything fails.
        let mut cluster = TempCluster {
            root,
            bin_dir,
            port: 0,
            password: random_password(),
            run_as,
            keep: std::env::var(ENV_KEEP).is_ok_and(|v| v == "1"),
            tls_only: opts.tls.as_ref().is_some_and(|tls| tls.tls_only),
            state: Mutex::new(State::default()),
        };
        if let Some((uid, gid)) = owner {
            let root = cluster.root.clone();
            std::os::unix::fs::chown(&root, Some(uid), Some(gid))
                .map_err(|source| io_err("hand to the postgres user", &root, source))?;
        }
        cluster.init_db(owner)?;
        if let Some(tls) = &opts.tls {
            cluster.set_up_tls(tls, owner)?;
        }
        if opts.exit_watchdog {
            cluster.spawn_watchdog()?;
        }
        cluster.port = free_port()?;
        cluster.append_conf(&base_conf(&cluster, &opts))?;
        let mut attempt = 1;
        loop {
            match cluster.pg_ctl_start() {
                Ok(()) => break,
                Err(ClusterError::Command { output, .. })
                    if attempt < PORT_ATTEMPTS && output.contains("could not bind") =>
                {
                    attempt += 1;
                    cluster.port = free_port()?;
                    cluster.append_conf(&[format!("port = {}", cluster.port)])?;
                }
                Err(err) => return Err(err),
            }
        }
        Ok(cluster)
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's name (`postgres`).
    pub fn user(&self) -> &str {
        SUPERUSER
    }

    /// The superuser's password (random, alphanumeric).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// `postgres://postgres:<password>@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{db}",
            self.password, self.port
        )
    }

    /// A `key=value` connection string over the Unix socket in [`TempCluster::root`]:
    /// works without TLS even when [`ServerTls::tls_only`] refuses plain TCP.
    pub fn socket_conninfo(&self, db: &str) -> String {
        let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
        format!(
            "host={} port={} user={SUPERUSER} password={} dbname={}",
            quote(&self.root.display().to_string()),
            self.port,
            quote(&self.password),
            quote(db)
        )
    }

    /// Whether TCP logins must use TLS ([`ServerTls::tls_only`]).
    pub fn tls_only(&self) -> bool {
        self.tls_only
    }

    /// The data directory (`PGDATA`).
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The server log written by `pg_ctl -l`.
    pub fn log_path(&self) -> PathBuf {
        self.root.join("log")
    }

    /// The temporary directory holding the data directory, the log and the Unix socket.
    ///
    /// Other files may be put here: they are deleted with the cluster.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory the server binaries were taken from.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// Whether the server is running (as far as this handle knows).
    pub fn is_running(&self) -> bool {
        self.lock().running
    }

    /// Stops the server; a no-op when it is already stopped.
    pub fn stop(&self, mode: StopMode) -> Result<(), ClusterError> {
        let mut state = self.lock();
        if !state.running {
            return Ok(());
        }
        let data = self.data_dir();
        let mut cmd = self.server_command("pg_ctl");
        cmd.arg("-D").arg(&data).args([
            "-m",
            mode.as_arg(),
            "-w",
            "-t",
            PG_CTL_TIMEOUT_SECS,
            "stop",
        ]);
        let result = self.run(cmd, true);
        // Even a failed stop may have stopped it; a later start reports the truth.
        state.running = result.is_err() && pid_file_exists(&data);
        result
    }

    /// Starts the server again after [`TempCluster::stop`]; a no-op when it is running.
    pub fn start_again(&self) -> Result<(), ClusterError> {
        if self.is_running() {
            return Ok(());
        }
        self.pg_ctl_start()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves `State` consistent enough to clean up.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn init_db(&self, owner: Option<(u32, u32)>) -> Result<(), ClusterError> {
        let pwfile = self.root.join("pwfile");
        write_private_file(&pwfile, self.password.as_bytes(), owner)?;
        let mut result = self.run_initdb(&pwfile, "C.UTF-8");
        if let Err(ClusterError::Command { output, .. }) = &result {
            if output.contains("locale") {
                // Minimal images lack C.UTF-8; plain C works everywhere.
                let data = self.data_dir();
                if data.exists() {
                    fs::remove_dir_all(&data).map_err(|source| io_err("remove", &data, source))?;
                }
                result = self.run_initdb(&pwfile, "C");
            }
        }
        let _ = fs::remove_file(&pwfile);
        result
    }

    /// Writes the certificate and key, turns `ssl` on and, for
    /// [`ServerTls::tls_only`], replaces `pg_hba.conf`.
    fn set_up_tls(&self, tls: &ServerTls, owner: Option<(u32, u32)>) -> Result<(), ClusterError> {
        let data = self.data_dir();
        // The server refuses a key file others can read; 0600 for both.
        write_private_file(&data.join("server.crt"), tls.cert_pem.as_bytes(), owner)?;
        write_private_file(&data.join("server.key"), tls.key_pem.as_bytes(), owner)?;
        self.append_conf(&[
            "ssl = on".to_owned(),
            "ssl_cert_file = 'server.crt'".to_owned(),
            "ssl_key_file = 'server.key'".to_owned(),
        ])?;
        if tls.tls_only {
            let hba = data.join("pg_hba.conf");
            // Truncating the existing file keeps its owner (the server's user).
            fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&hba)
                .and_then(|mut file| file.write_all(TLS_ONLY_HBA.as_bytes()))
                .map_err(|source| io_err("write", &hba, source))?;
        }
        Ok(())
    }

    fn run_initdb(&self, pwfile: &Path, locale: &str) -> Result<(), ClusterError> {
        let mut cmd = self.server_command("initdb");
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-U", SUPERUSER, "--auth=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args([
                "-E",
                "UTF8",
                &format!("--locale={locale}"),
                "--no-instructions",
            ]);
        self.run(cmd, false)
    }

    fn append_conf(&self, lines: &[String]) -> Result<(), ClusterError> {
        let path = self.data_dir().join("postgresql.conf");
        let mut text = String::from("\n# added by walhook's TempCluster\n");
        for line in lines {
            text.push_str(line);
            text.push('\n');
        }
        // Appending as root keeps the file's owner; the server only needs to read it.
        fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(text.as_bytes()))
            .map_err(|source| io_err("append to", &path, source))
    }

    fn pg_ctl_start(&self) -> Result<(), ClusterError> {
        let mut state = self.lock();
        let mut cmd = self.server_command("pg_ctl");
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-w", "-t", PG_CTL_TIMEOUT_SECS, "-l"])
            .arg(self.log_path())
            .arg("start");
        let result = self.run(cmd, true);
        state.running = result.is_ok();
        result
    }

    /// A command for a server binary, wrapped in `runuser` when we are root.
    fn server_command(&self, binary: &str) -> Command {
        let program = self.bin_dir.join(binary);
        let mut cmd = match self.run_as {
            Some(user) => {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", user, "--"]).arg(program);
                cmd
            }
            None => Command::new(program),
        };
        // The cwd must be readable by the server user (it may not be after runuser).
        cmd.current_dir(&self.root);
        for var in SCRUBBED_ENV {
            cmd.env_remove(var);
        }
        cmd
    }

    /// Runs `cmd` to completion; on failure the error carries its output (and the log).
    fn run(&self, mut cmd: Command, with_log: bool) -> Result<(), ClusterError> {
        let command = describe(&cmd);
        let output = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(|source| ClusterError::Spawn {
                command: command.clone(),
                source,
            })?;
        if output.status.success() {
            return Ok(());
        }
        let mut text = tail(&String::from_utf8_lossy(&output.stdout), TAIL_LINES);
        text.push_str(&tail(&String::from_utf8_lossy(&output.stderr), TAIL_LINES));
        if with_log {
            let log = self.log_path();
            if let Ok(log_text) = fs::read_to_string(&log) {
                let _ = writeln!(text, "--- tail of {} ---", log.display());
                text.push_str(&tail(&log_text, TAIL_LINES));
            }
        }
        Err(ClusterError::Command {
            command,
            status: output.status,
            output: text,
        })
    }

    /// Starts the exit watchdog described in the module docs.
    fn spawn_watchdog(&self) -> Result<(), ClusterError> {
        const SCRIPT: &str = r#"trap '' INT TERM HUP
cat >/dev/null
"$@" >/dev/null 2>&1
if [ -n "$WALHOOK_WATCHDOG_RM" ]; then rm -rf -- "$WALHOOK_WATCHDOG_RM"; fi"#;
        let stop = self.immediate_stop_command();
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(SCRIPT)
            .arg("walhook-pg-watchdog")
            .arg(stop.get_program())
            .args(stop.get_args())
            .current_dir("/")
            .env(
                "WALHOOK_WATCHDOG_RM",
                if self.keep { Path::new("") } else { &self.root },
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().map_err(|source| ClusterError::Spawn {
            command: describe(&cmd),
            source,
        })?;
        self.lock().watchdog = Some(child);
        Ok(())
    }

    fn immediate_stop_command(&self) -> Command {
        let mut cmd = self.server_command("pg_ctl");
        cmd.arg("-D").arg(self.data_dir()).args([
            "-m",
            "immediate",
            "-w",
            "-t",
            PG_CTL_TIMEOUT_SECS,
            "stop",
        ]);
        cmd
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        let state = std::mem::take(self.state.get_mut().unwrap_or_else(|p| p.into_inner()));
        if let Some(mut watchdog) = state.watchdog {
            // Kill the shell first so it does nothing; closing the pipe ends its `cat`.
            let _ = watchdog.kill();
            drop(watchdog.stdin.take());
            let _ = watchdog.wait();
        }
        if state.running || pid_file_exists(&self.data_dir()) {
            let _ = self
                .immediate_stop_command()
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if self.keep {
            eprintln!(
                "walhook: kept the PostgreSQL cluster in {} ({ENV_KEEP}=1); log: {}; \
                 start it with: {}{} -D {} start",
                self.root.display(),
                self.log_path().display(),
                self.run_as
                    .map(|user| format!("runuser -u {user} -- "))
                    .unwrap_or_default(),
                self.bin_dir.join("pg_ctl").display(),
                self.data_dir().display(),
            );
        } else {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}

/// The `postgresql.conf` lines every throwaway cluster gets.
fn base_conf(cluster: &TempCluster, opts: &ClusterOptions) -> Vec<String> {
    let socket_dir = cluster.root.display().to_string().replace('\'', "''");
    let mut lines = vec![
        "listen_addresses = '127.0.0.1'".to_owned(),
        format!("port = {}", cluster.port),
        format!("unix_socket_directories = '{socket_dir}'"),
        format!("wal_level = {}", opts.wal_level),
        "max_wal_senders = 10".to_owned(),
        "max_replication_slots = 10".to_owned(),
        // Short, so a test that stops answering keepalives sees the timeout quickly.
        "wal_sender_timeout = '10s'".to_owned(),
        // The tests check durability; a cluster that lies about fsync proves nothing.
        "fsync = on".to_owned(),
        // The minimum: forces large transactions to spill to disk in tests.
        "logical_decoding_work_mem = '64kB'".to_owned(),
        "max_connections = 100".to_owned(),
        // Lets the two-phase-commit tests PREPARE TRANSACTION.
        "max_prepared_transactions = 10".to_owned(),
    ];
    lines.extend(opts.extra_conf.iter().cloned());
    lines
}

fn has_server_binaries(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"]
        .iter()
        .all(|binary| dir.join(binary).is_file())
}

/// Finds the directory holding the server binaries (see the module docs for the order).
fn find_bin_dir(explicit: Option<&Path>) -> Result<PathBuf, ClusterError> {
    let explicit = explicit
        .map(|dir| ("options.bin_dir".to_owned(), dir.to_path_buf()))
        .or_else(|| {
            [ENV_PG_BIN, ENV_PG_BIN_ALT].iter().find_map(|var| {
                std::env::var_os(var)
                    .filter(|value| !value.is_empty())
                    .map(|value| ((*var).to_owned(), PathBuf::from(value)))
            })
        });
    if let Some((origin, dir)) = explicit {
        return if has_server_binaries(&dir) {
            Ok(dir)
        } else {
            Err(ClusterError::BadBinDir { origin, dir })
        };
    }
    let mut searched = vec![format!("${ENV_PG_BIN}, ${ENV_PG_BIN_ALT} (unset)")];
    if let Some(dir) = pg_config_bindir() {
        if has_server_binaries(&dir) {
            return Ok(dir);
        }
        searched.push(format!("pg_config --bindir ({})", dir.display()));
    } else {
        searched.push("pg_config --bindir (no pg_config)".to_owned());
    }
    for (parent, prefix) in [("/usr/lib/postgresql", ""), ("/usr", "pgsql-")] {
        if let Some(dir) = highest_versioned_bin(Path::new(parent), prefix) {
            return Ok(dir);
        }
        searched.push(format!("{parent}/{prefix}*/bin"));
    }
    if let Some(dir) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|dir| has_server_binaries(dir))
    {
        return Ok(dir);
    }
    searched.push("$PATH".to_owned());
    Err(ClusterError::BinariesNotFound {
        searched: searched.join(", "),
    })
}

fn pg_config_bindir() -> Option<PathBuf> {
    let output = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let dir = text.trim();
    (output.status.success() && !dir.is_empty()).then(|| PathBuf::from(dir))
}

/// `<parent>/<prefix><version>/bin` with the highest version that has the binaries.
fn highest_versioned_bin(parent: &Path, prefix: &str) -> Option<PathBuf> {
    let mut candidates: Vec<(Vec<u64>, PathBuf)> = fs::read_dir(parent)
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name().into_string().ok()?;
            let version = parse_version(name.strip_prefix(prefix)?)?;
            let bin = entry.path().join("bin");
            has_server_binaries(&bin).then_some((version, bin))
        })
        .collect();
    candidates.sort();
    candidates.pop().map(|(_, bin)| bin)
}

/// "15" → [15], "9.6" → [9, 6]; anything else is not a version directory.
fn parse_version(text: &str) -> Option<Vec<u64>> {
    text.split('.').map(|part| part.parse().ok()).collect()
}

/// Whether this process runs as root, without `unsafe` (`geteuid`).
fn effective_uid_is_root() -> bool {
    // /proc/self belongs to the process's effective uid.
    if let Ok(meta) = fs::metadata("/proc/self") {
        return meta.uid() == 0;
    }
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// The uid and gid of an OS user, via `id` (which also consults NSS, not just /etc/passwd).
fn os_user_ids(user: &str) -> Result<(u32, u32), ClusterError> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id")
            .args([flag, user])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    match (id("-u"), id("-g")) {
        (Some(uid), Some(gid)) => Ok((uid, gid)),
        _ => Err(ClusterError::NoPostgresUser),
    }
}

/// Creates `$TMPDIR/walhook-pg-<pid>-<nanos>-<n>`; `create_dir` fails on collisions.
fn create_unique_dir() -> Result<PathBuf, ClusterError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let base = std::env::temp_dir();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("walhook-pg-{}-{nanos}-{n}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(source) => return Err(io_err("create", &dir, source)),
        }
    }
}

/// 24 random alphanumeric characters (URL-safe, so [`TempCluster::url`] needs no escaping).
fn random_password() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 24];
    let from_os = fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if from_os.is_err() {
        // Without /dev/urandom, std's per-process random hasher keys are good enough
        // for a password that guards a loopback-only throwaway server.
        use std::hash::{BuildHasher as _, Hasher as _};
        let state = std::collections::hash_map::RandomState::new();
        for (i, chunk) in bytes.chunks_mut(8).enumerate() {
            let mut hasher = state.build_hasher();
            hasher.write_usize(i);
            chunk.copy_from_slice(&hasher.finish().to_le_bytes()[..chunk.len()]);
        }
    }
    bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}

fn write_private_file(
    path: &Path,
    contents: &[u8],
    owner: Option<(u32, u32)>,
) -> Result<(), ClusterError> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(contents))
        .map_err(|source| io_err("write", path, source))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(|source| io_err("hand to the postgres user", path, source))?;
    }
    Ok(())
}

fn free_port() -> Result<u16, ClusterError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|source| ClusterError::Port { source })
}

fn pid_file_exists(data_dir: &Path) -> bool {
    data_dir.join("postmaster.pid").exists()
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let mut out = all[all.len().saturating_sub(lines)..].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

fn io_err(action: &'static str, path: &Path, source: io::Error) -> ClusterError {
    ClusterError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_numerically() {
        let mut versions = [
            parse_version("9.6"),
            parse_version("15"),
            parse_version("10"),
        ];
        versions.sort();
        assert_eq!(versions[2], Some(vec![15]));
        assert_eq!(parse_version("15beta1"), None);
    }

    #[test]
    fn passwords_are_alphanumeric_and_differ() {
        let (a, b) = (random_password(), random_password());
        assert_eq!(a.len(), 24);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail("", 2), "");
    }

    #[test]
    fn missing_binaries_message_says_how_to_install() {
        let err = find_bin_dir(Some(Path::new("/nonexistent"))).expect_err("no binaries there");
        let text = err.to_string();
        assert!(text.contains("apt-get install postgresql"), "{text}");
        assert!(text.contains("WALHOOK_PG_BIN"), "{text}");
    }
}
