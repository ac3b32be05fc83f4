//! One throwaway PostgreSQL cluster per test binary, a fresh database per test.
//!
//! The shared cluster is started by the first [`TestDb::new`] (about 1–2 s) and lives in a
//! `static`, so it is never dropped: the cluster's exit watchdog (see
//! `demo::cluster`) stops it and deletes its directory when the test process exits, even
//! after a panic or a Ctrl-C. Set `WALHOOK_KEEP_PG=1` to keep the directory for
//! post-mortems (its path is printed when a cluster is dropped; the shared one is printed
//! when it starts).
//!
//! Tests that stop, restart or reconfigure PostgreSQL must not touch the shared cluster:
//! they take their own with [`start_cluster`] and use [`TestDb::on`].
//!
//! Slots and publications are cluster-wide: derive their names from [`TestDb::name`]
//! (e.g. [`TestDb::slot_name`]) so parallel tests never collide, and drop slots at the end
//! of a test so they do not pin WAL for the rest of the run.
//!
//! If the PostgreSQL server binaries are missing the test fails with the install
//! instructions; it never skips.

use walhook::demo::cluster::{ClusterOptions, TempCluster};

use std::error::Error;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::OnceCell;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// The cluster shared by every test of this binary that does not need its own.
static SHARED: OnceCell<Arc<TempCluster>> = OnceCell::const_new();

/// The shared cluster (`wal_level = logical`), started on first use.
pub async fn shared_cluster() -> Arc<TempCluster> {
    SHARED
        .get_or_init(|| async {
            // Every test has its own slot (slots are cluster-wide), and each
            // walhook holds a walsender: room for the whole suite.
            let cluster = start_cluster(ClusterOptions {
                extra_conf: vec![
                    "max_replication_slots = 100".into(),
                    "max_wal_senders = 100".into(),
                    "max_connections = 300".into(),
                ],
                ..ClusterOptions::default()
            })
            .await;
            if std::env::var("WALHOOK_KEEP_PG").is_ok_and(|v| v == "1") {
                eprintln!(
                    "shared test cluster: {} (port {}, log {})",
                    cluster.root().display(),
                    cluster.port(),
                    cluster.log_path().display()
                );
            }
            cluster
        })
        .await
        .clone()
}

/// Starts a dedicated cluster (stopped and deleted when the last `Arc` is dropped).
///
/// Panics with the error chain (which says how to install PostgreSQL) on failure.
pub async fn start_cluster(opts: ClusterOptions) -> Arc<TempCluster> {
    let started = tokio::task::spawn_blocking(move || TempCluster::start(opts))
        .await
        .expect("the cluster start task panicked");
    match started {
        Ok(cluster) => Arc::new(cluster),
        Err(err) => panic!("could not start a throwaway PostgreSQL: {}", chain(&err)),
    }
}

/// A fresh database (`t_<n>_<test name>`) on a throwaway cluster, with a connected client.
pub struct TestDb {
    cluster: Arc<TempCluster>,
    name: String,
    client: Client,
}

impl TestDb {
    /// A fresh database on the shared cluster.
    pub async fn new() -> TestDb {
        TestDb::on(shared_cluster().await).await
    }

    /// A fresh database on `cluster` (from [`start_cluster`]).
    pub async fn on(cluster: Arc<TempCluster>) -> TestDb {
        let name = unique_db_name();
        let admin = connect_url(&harness_conninfo(&cluster, "postgres")).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|err| panic!("CREATE DATABASE {name}: {}", chain(&err)));
        drop(admin);
        let client = connect_url(&harness_conninfo(&cluster, &name)).await;
        TestDb {
            cluster,
            name,
            client,
        }
    }

    /// The database name; unique within the cluster, so a good base for other names.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A replication slot name unique to this test.
    pub fn slot_name(&self) -> String {
        format!("{}_slot", truncate(&self.name, 58))
    }

    /// A publication name unique to this test.
    pub fn publication_name(&self) -> String {
        format!("{}_pub", truncate(&self.name, 59))
    }

    /// `postgres://postgres:<pw>@127.0.0.1:<port>/<this database>`.
    pub fn url(&self) -> String {
        self.cluster.url(&self.name)
    }

    /// The cluster this database lives on.
    pub fn cluster(&self) -> &Arc<TempCluster> {
        &self.cluster
    }

    /// The client connected when the database was created (dead after a restart).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A new connection to this database (e.g. after the cluster was restarted).
    pub async fn connect(&self) -> Client {
        connect_url(&harness_conninfo(&self.cluster, &self.name)).await
    }

    /// Replaces the client with a new connection (after the cluster was restarted).
    pub async fn reconnect(&mut self) {
        self.client = self.connect().await;
    }

    /// Runs one or more statements (simple protocol); panics with the SQL on error.
    pub async fn execute(&self, sql: &str) {
        self.client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|err| panic!("{sql}: {}", chain(&err)));
    }

    /// The first column of the single row `sql` returns, as text; panics on NULL.
    pub async fn query_one_string(&self, sql: &str) -> String {
        let messages = self
            .client
            .simple_query(sql)
            .await
            .unwrap_or_else(|err| panic!("{sql}: {}", chain(&err)));
        let rows: Vec<_> = messages
            .iter()
            .filter_map(|message| match message {
                SimpleQueryMessage::Row(row) => Some(row),
                _ => None,
            })
            .collect();
        assert_eq!(rows.len(), 1, "{sql}: expected exactly one row");
        rows[0]
            .get(0)
            .unwrap_or_else(|| panic!("{sql}: the value is NULL"))
            .to_owned()
    }

    /// The first column of the single row `sql` returns, as an integer (any integer type).
    pub async fn query_one_i64(&self, sql: &str) -> i64 {
        let text = self.query_one_string(sql).await;
        text.parse()
            .unwrap_or_else(|err| panic!("{sql}: {text:?} is not an integer: {err}"))
    }

    /// `confirmed_flush_lsn` of `slot`; `None` if the slot does not exist or has none.
    pub async fn slot_confirmed_flush_lsn(&self, slot: &str) -> Option<u64> {
        let sql = "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1";
        let row = self
            .client
            .query_opt(sql, &[&slot])
            .await
            .unwrap_or_else(|err| panic!("{sql}: {}", chain(&err)))?;
        let lsn: Option<String> = row.get(0);
        lsn.map(|text| parse_lsn(&text))
    }

    /// Whether a walsender is streaming from `slot`.
    ///
    /// Not merely whether the slot is active: the backend running
    /// `pg_create_logical_replication_slot` holds it too, until it has reached
    /// a consistent point (it waits for running transactions to end), and a
    /// row committed before that point is never decoded. A test that writes
    /// once this is true writes after walhook started streaming.
    pub async fn slot_active(&self, slot: &str) -> bool {
        let sql = "SELECT count(*) FROM pg_replication_slots s \
                   JOIN pg_stat_activity a ON a.pid = s.active_pid \
                   WHERE s.slot_name = $1 AND a.backend_type = 'walsender'";
        let row = self
            .client
            .query_one(sql, &[&slot])
            .await
            .unwrap_or_else(|err| panic!("{sql}: {}", chain(&err)));
        row.get::<_, i64>(0) == 1
    }

    /// Whether any backend holds `slot` (a walsender, or one creating it).
    pub async fn slot_held(&self, slot: &str) -> bool {
        let sql = "SELECT active FROM pg_replication_slots WHERE slot_name = $1";
        let row = self
            .client
            .query_opt(sql, &[&slot])
            .await
            .unwrap_or_else(|err| panic!("{sql}: {}", chain(&err)));
        row.is_some_and(|row| row.get::<_, bool>(0))
    }

    /// `pg_current_wal_lsn()`.
    pub async fn wal_lsn(&self) -> u64 {
        parse_lsn(&self.query_one_string("SELECT pg_current_wal_lsn()").await)
    }
}

/// Parses PostgreSQL's `X/Y` LSN notation (two hex numbers: high and low 32 bits).
pub fn parse_lsn(text: &str) -> u64 {
    let parse = || -> Option<u64> {
        let (high, low) = text.trim().split_once('/')?;
        let high = u32::from_str_radix(high, 16).ok()?;
        let low = u32::from_str_radix(low, 16).ok()?;
        Some((u64::from(high) << 32) | u64::from(low))
    };
    parse().unwrap_or_else(|| panic!("{text:?} is not an LSN (expected X/Y in hex)"))
}

/// How the harness itself reaches `db`: over TCP like walhook, or over the Unix socket
/// when the cluster refuses plain TCP ([`TempCluster::tls_only`]), so the harness needs
/// no TLS of its own to set up and inspect databases.
fn harness_conninfo(cluster: &TempCluster, db: &str) -> String {
    if cluster.tls_only() {
        cluster.socket_conninfo(db)
    } else {
        cluster.url(db)
    }
}

/// Connects and drives the connection on the current runtime.
async fn connect_url(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|err| panic!("connect to {}: {}", redact(url), chain(&err)));
    tokio::spawn(async move {
        // Errors surface on the client's next call; a closed connection is normal here.
        let _ = connection.await;
    });
    client
}

/// `t_<n>_<test name>`: the counter makes it unique, the test name helps post-mortems.
fn unique_db_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let thread = std::thread::current();
    let hint: String = thread
        .name()
        .unwrap_or("")
        .rsplit("::")
        .next()
        .unwrap_or("")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    // Leave room for the `_slot`/`_pub` suffixes within PostgreSQL's 63-byte names.
    truncate(&format!("t_{n}_{hint}"), 50).to_owned()
}

fn truncate(text: &str, max: usize) -> &str {
    // Names here are ASCII, so byte truncation is safe.
    &text[..text.len().min(max)]
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if scheme < at => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        // key=value form: drop the password's value.
        _ => url
            .split(' ')
            .map(|part| {
                if part.starts_with("password=") {
                    "password=***"
                } else {
                    part
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// `err: cause: cause`, like anyhow's `{:#}`.
pub fn chain(err: &dyn Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
