//! The source: PostgreSQL logical replication.
//!
//! - [`setup`]: preflight checks (`walhook check`), publication and slot
//!   management. The publication is always created before the slot: a slot
//!   created first cannot decode changes of a publication that did not exist
//!   when it started.
//! - [`capture`]: the replication session (pgwire-replication), reconnecting
//!   with backoff, decoding pgoutput and handing row changes to the store
//!   writer; see its design note for the acknowledgement rule.
//! - [`pgoutput`]: a pure `&[u8] → Message` decoder that never panics.
//! - [`value`]: Postgres text values → JSON with the digits Postgres printed.
//! - [`tls`]: `sslmode`/`sslrootcert` of `source.url`, applied alike to the
//!   SQL and the replication connections.
//!
//! Errors from Postgres are classified by SQLSTATE ([`SourceError::sqlstate`]),
//! never by message text.

pub mod capture;
pub mod pgoutput;
pub mod setup;
pub mod tls;
pub mod value;

use std::str::FromStr;

use crate::config::SourceConfig;

/// Session settings pinned on every connection, replication included:
/// pgoutput renders values with the walsender session's settings, so a role's
/// or database's own `TimeZone`/`DateStyle` must not change our output.
pub const SESSION_OPTIONS: &str =
    "-c TimeZone=UTC -c DateStyle=ISO -c extra_float_digits=3 -c IntervalStyle=postgres -c bytea_output=hex";

/// Errors of the source boundary.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The database cannot be reached (network, DNS, refused).
    #[error("cannot connect to PostgreSQL at {target}: {source}; check source.url and that the server is running and reachable")]
    Connect {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// Connecting (TCP, TLS, authentication, START_REPLICATION) did not finish in time.
    #[error("connecting to PostgreSQL at {target} ({what}) did not finish within {after:?} (source.connect_timeout); check that the server is up and the network path to it works")]
    ConnectTimeout {
        target: String,
        /// which connection: "sql" or "replication"
        what: &'static str,
        after: std::time::Duration,
    },
    /// The replication stream went silent and the connection was found dead.
    #[error("the replication connection went silent: nothing received for {after:?} (source.receive_timeout) and {detail}; reconnecting")]
    Silent {
        after: std::time::Duration,
        /// what the check of the connection found
        detail: String,
    },
    /// Authentication failed (SQLSTATE 28P01 / 28000).
    #[error("PostgreSQL rejected the login of role '{user}' ({detail}); {fix}")]
    Auth {
        user: String,
        detail: String,
        /// what to check; depends on whether TLS was used
        fix: String,
    },
    /// TLS could not be set up as `sslmode` asks (refused by the server, an
    /// untrusted or mismatched certificate, a failed handshake).
    #[error(
        "TLS with PostgreSQL at {target} failed ({what} connection, {mode}): {problem}; {fix}"
    )]
    Tls {
        target: String,
        /// which connection: "sql" or "replication"
        what: &'static str,
        /// `sslmode=...` in effect
        mode: String,
        problem: String,
        fix: String,
    },
    /// `sslmode`/`sslrootcert` cannot be used (normally caught by config validation).
    #[error("source.url: {0}")]
    TlsSettings(#[from] tls::TlsParamError),
    /// A SQL statement failed.
    #[error("{context}: {source}")]
    Sql {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// A precondition of the database is not met; `fix` says what to do.
    #[error("{problem}; {fix}")]
    Precondition { problem: String, fix: String },
    /// Every connection attempt failed; `last` is the last attempt's error.
    #[error("gave up after {attempts} connection attempts: {last}")]
    GaveUp {
        attempts: u32,
        #[source]
        last: Box<SourceError>,
    },
    /// The replication slot is lost, missing or was replaced, so the changes
    /// after the store's durable LSN cannot be read any more.
    #[error("slot {kind}: resync required: replication slot '{slot}' {state}; the store's last durable LSN is {durable} and the server no longer has the changes after it. Run `walhook run --resync` to replace the slot and continue (events already stored are still delivered; the gap is recorded and shown by `walhook status`), or restore the slot. walhook never recreates a slot by itself")]
    SlotLost {
        /// `lost` (invalidated or replaced) or `missing`
        kind: SlotProblem,
        slot: String,
        /// what the catalog shows, e.g. "is invalidated (wal_status = lost)"
        state: String,
        /// the store's durable LSN as text (`none` for an empty store)
        durable: String,
    },
    /// Another connection kept the slot for longer than a dead connection of
    /// ours could (the server's `wal_sender_timeout` and a margin).
    #[error("replication slot '{slot}' is in use by another connection ({holder}) and stayed so for {waited_s} s, longer than the server keeps a dead connection: another walhook or consumer is reading this slot; stop it, or give this walhook its own source.slot (and store.path)")]
    SlotBusy {
        slot: String,
        holder: String,
        waited_s: u64,
    },
    /// The replication stream failed.
    #[error("replication stream: {0}")]
    Replication(#[source] pgwire_replication::PgWireError),
    /// A pgoutput message could not be decoded.
    #[error("cannot decode a replication message: {0}")]
    Decode(#[from] pgoutput::DecodeError),
    /// A change could not be mapped to an event (never dropped silently).
    #[error("cannot map a change to an event: {0}")]
    Map(#[from] crate::event::mapping::MapError),
    /// The store writer stopped (its own error is reported separately).
    #[error("the store writer stopped")]
    StoreGone,
    /// Something that cannot happen did (a bug).
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why a slot cannot be resumed (the first words of [`SourceError::SlotLost`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotProblem {
    /// Invalidated (`wal_status = lost`), or recreated/advanced by someone else.
    Lost,
    /// It does not exist.
    Missing,
}

impl std::fmt::Display for SlotProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SlotProblem::Lost => "lost",
            SlotProblem::Missing => "missing",
        })
    }
}

impl SourceError {
    /// The SQLSTATE of a server error, when there is one.
    pub fn sqlstate(&self) -> Option<String> {
        match self {
            SourceError::Connect { source, .. } | SourceError::Sql { source, .. } => {
                source.code().map(|c| c.code().to_string())
            }
            SourceError::GaveUp { last, .. } => last.sqlstate(),
            SourceError::Replication(e) => replication_sqlstate(e),
            _ => None,
        }
    }

    /// Whether retrying later can help (network trouble, server restarting,
    /// slot busy) as opposed to a configuration or database problem that
    /// needs a person.
    pub fn is_transient(&self) -> bool {
        match self {
            SourceError::Connect { .. }
            | SourceError::ConnectTimeout { .. }
            | SourceError::Silent { .. } => true,
            SourceError::Replication(e) => {
                if let Some(code) = replication_sqlstate(e) {
                    sqlstate_is_transient(&code)
                } else {
                    !matches!(
                        e,
                        pgwire_replication::PgWireError::Auth(_)
                            | pgwire_replication::PgWireError::Tls(_)
                            | pgwire_replication::PgWireError::MessageTooLarge { .. }
                    )
                }
            }
            SourceError::Sql { source, .. } => match source.code() {
                Some(code) => sqlstate_is_transient(code.code()),
                None => true,
            },
            _ => false,
        }
    }
}

/// SQLSTATE classes worth retrying: connection exceptions (08), insufficient
/// resources (53), operator intervention (57: admin shutdown, cannot connect
/// now), and 55006 (object in use: the slot is still held by a previous
/// walsender that has not noticed our old connection is gone).
fn sqlstate_is_transient(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("53") || code.starts_with("57") || code == "55006"
}

/// pgwire-replication reports server errors as "message (SQLSTATE xxxxx)";
/// the code is the machine-readable part, so that is what we match on.
fn replication_sqlstate(e: &pgwire_replication::PgWireError) -> Option<String> {
    let text = match e {
        pgwire_replication::PgWireError::Server(s) | pgwire_replication::PgWireError::Auth(s) => s,
        _ => return None,
    };
    let start = text.rfind("(SQLSTATE ")? + "(SQLSTATE ".len();
    let code: String = text[start..].chars().take(5).collect();
    (code.len() == 5).then_some(code)
}

/// The TLS connector of the SQL connections.
type SqlTls = tokio_postgres_rustls::MakeRustlsConnect;

/// Connection parameters parsed from `source.url`.
#[derive(Clone)]
pub struct ConnParams {
    pg: tokio_postgres::Config,
    /// host for display and for the replication connection
    pub host: String,
    /// TCP port
    pub port: u16,
    /// role name
    pub user: String,
    /// database name
    pub dbname: String,
    password: String,
    tls: tls::TlsSettings,
    sql_tls: SqlTls,
    connect_timeout: std::time::Duration,
}

impl std::fmt::Debug for ConnParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.target())
    }
}

impl ConnParams {
    /// Parses `source.url` (already validated by the config module) and
    /// loads the TLS roots it names.
    pub fn from_config(source: &SourceConfig) -> Result<Self, SourceError> {
        let invalid = |problem: &str| SourceError::Precondition {
            problem: format!("source.url {problem}"),
            fix: "use postgres://user:password@host:port/dbname".into(),
        };
        let split = tls::split(source.url.expose());
        let mut tls = split.settings()?;
        let mut pg = tokio_postgres::Config::from_str(&split.rest)
            .map_err(|_| invalid("is not a valid PostgreSQL connection string"))?;
        let host = match pg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".to_string(),
        };
        if tls::is_socket_dir(&host) {
            // As libpq: no TLS over a Unix socket, whatever sslmode says.
            tls.mode = tls::SslMode::Disable;
        }
        let port = pg.get_ports().first().copied().unwrap_or(5432);
        let user = pg
            .get_user()
            .map(str::to_string)
            .ok_or_else(|| invalid("has no user"))?;
        let dbname = pg
            .get_dbname()
            .map(str::to_string)
            .unwrap_or_else(|| user.clone());
        let password = pg
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        pg.ssl_mode(match tls.mode {
            tls::SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            tls::SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let sql_tls = SqlTls::new(tls::client_config(&tls)?);
        pg.options(SESSION_OPTIONS);
        pg.application_name("walhook");
        pg.connect_timeout(source.connect_timeout.get());
        Ok(ConnParams {
            pg,
            host,
            port,
            user,
            dbname,
            password,
            tls,
            sql_tls,
            connect_timeout: source.connect_timeout.get(),
        })
    }

    /// `source.connect_timeout`: the budget of a whole connection attempt.
    pub fn connect_timeout(&self) -> std::time::Duration {
        self.connect_timeout
    }

    /// `user@host:port/db`, never the password.
    pub fn target(&self) -> String {
        format!("{}@{}:{}/{}", self.user, self.host, self.port, self.dbname)
    }

    /// The TLS mode and roots both connections use.
    pub fn tls(&self) -> &tls::TlsSettings {
        &self.tls
    }

    /// Opens an ordinary SQL connection (slots, publications, checks).
    pub async fn connect_sql(&self) -> Result<tokio_postgres::Client, SourceError> {
        let phases = std::sync::Arc::new(tls::Phases::default());
        let connector = tls::Observed::new(self.sql_tls.clone(), phases.clone());
        // tokio-postgres's own connect_timeout covers the TCP connect only; a
        // server (or network) that accepts and then says nothing must not
        // hang the caller.
        let connected = tokio::time::timeout(self.connect_timeout, self.pg.connect(connector))
            .await
            .map_err(|_| SourceError::ConnectTimeout {
                target: self.target(),
                what: "sql",
                after: self.connect_timeout,
            })?;
        match connected {
            Ok((client, connection)) => {
                tokio::spawn(async move {
                    if let Err(err) = connection.await {
                        tracing::debug!(error = %err, "sql connection ended");
                    }
                });
                Ok(client)
            }
            Err(err) => Err(self.classify_connect_error(err, &phases)),
        }
    }

    /// Whether the session on `client` runs over TLS, as the server sees it
    /// (`pg_stat_ssl`), and with which protocol version.
    pub async fn session_tls(client: &tokio_postgres::Client) -> Option<(bool, Option<String>)> {
        let row = client
            .query_opt(
                "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .ok()??;
        Some((row.get(0), row.get(1)))
    }

    /// "connected to X over TLS (...)" or "... without TLS": the first line
    /// of `walhook check` and of the start-up log.
    pub async fn describe_session(&self, client: &tokio_postgres::Client) -> String {
        let target = self.target();
        match Self::session_tls(client).await {
            Some((true, version)) => format!(
                "connected to {target} over TLS ({}; {})",
                version.as_deref().unwrap_or("TLS"),
                tls::assurance(&self.tls)
            ),
            Some((false, _)) => format!(
                "connected to {target} without TLS (sslmode={})",
                self.tls.mode
            ),
            None => format!("connected to {target}"),
        }
    }

    fn tls_error(&self, what: &'static str, problem: String, fix: String) -> SourceError {
        SourceError::Tls {
            target: self.target(),
            what,
            mode: format!("sslmode={}", self.tls.mode),
            problem,
            fix,
        }
    }

    fn classify_connect_error(
        &self,
        err: tokio_postgres::Error,
        phases: &tls::Phases,
    ) -> SourceError {
        if let Some(tls_err) = tls::handshake_error(&err) {
            let (problem, fix) = tls::explain_handshake(tls_err, &self.tls, &self.host);
            return self.tls_error("sql", problem, fix);
        }
        let io_failure = std::error::Error::source(&err)
            .is_some_and(|cause| cause.downcast_ref::<std::io::Error>().is_some());
        if self.tls.mode.requires_tls()
            && phases.tls_refused()
            && err.as_db_error().is_none()
            && !io_failure
        {
            return self.tls_error(
                "sql",
                "the server does not accept TLS connections (it declined the SSL request)".into(),
                "turn TLS on at the server (ssl = on), or, only on a network you trust, set sslmode=prefer or disable in source.url".into(),
            );
        }
        match err.code().map(|c| c.code().to_string()).as_deref() {
            Some("28P01") | Some("28000") => SourceError::Auth {
                user: self.user.clone(),
                detail: err
                    .as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| "authentication failed".into()),
                fix: if self.tls.mode == tls::SslMode::Disable {
                    // pg_hba.conf may admit this login over TLS only
                    // (hostssl), which a plain connection cannot meet.
                    "check the user and password in source.url; if the server accepts only TLS connections (hostssl in pg_hba.conf, or rds.force_ssl), set sslmode=require or verify-full in source.url instead of sslmode=disable".into()
                } else {
                    "check the user and password in source.url".into()
                },
            },
            Some("3D000") => SourceError::Precondition {
                problem: format!("database '{}' does not exist", self.dbname),
                fix: "fix the database name in source.url".into(),
            },
            Some(_) => SourceError::Sql {
                context: format!("cannot open a session on {}", self.target()),
                source: err,
            },
            None => SourceError::Connect {
                target: self.target(),
                source: err,
            },
        }
    }

    /// Parameters for the replication connection (pgwire-replication).
    pub fn replication_config(
        &self,
        slot: &str,
        publication: &str,
    ) -> pgwire_replication::ReplicationConfig {
        // pgwire-replication does not read sslmode itself: TLS is set here,
        // explicitly, from the same settings as the SQL connections.
        pgwire_replication::ReplicationConfig::new(
            self.host.clone(),
            self.user.clone(),
            self.password.clone(),
            self.dbname.clone(),
            slot.to_string(),
            publication.to_string(),
        )
        .with_port(self.port)
        .with_tls(tls::replication_tls(&self.tls, &self.host))
        .with_options(SESSION_OPTIONS)
        .with_application_name("walhook")
    }

    /// A replication error, with a TLS failure told as such (cause and fix).
    /// pgwire-replication reports TLS failures as text only, so the fix is
    /// the one for the mode rather than for the exact cause.
    pub fn replication_error(&self, err: pgwire_replication::PgWireError) -> SourceError {
        let pgwire_replication::PgWireError::Tls(detail) = &err else {
            return SourceError::Replication(err);
        };
        let fix = match self.tls.mode {
            tls::SslMode::Disable | tls::SslMode::Prefer | tls::SslMode::Require => {
                "check that the server accepts TLS connections (ssl = on) and its log for the reason".to_owned()
            }
            tls::SslMode::VerifyCa => format!(
                "check that {} holds the CA that signed the server's certificate; note that walhook's replication connection also needs the certificate to name the host '{}' (a limitation of its replication client under verify-ca): connect with a name the certificate holds",
                self.tls.roots, self.host
            ),
            tls::SslMode::VerifyFull => format!(
                "check that {} holds the CA that signed the server's certificate and that the certificate names the host '{}'",
                self.tls.roots, self.host
            ),
        };
        self.tls_error("replication", detail.clone(), fix)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sqlstate_from_replication_error_text() {
        let e = pgwire_replication::PgWireError::Server(
            "replication slot \"s\" is active for PID 12 (SQLSTATE 55006)".into(),
        );
        assert_eq!(replication_sqlstate(&e).as_deref(), Some("55006"));
        assert!(SourceError::Replication(e).is_transient());
        let e = pgwire_replication::PgWireError::Server(
            "logical decoding requires wal_level >= logical (SQLSTATE 55000)".into(),
        );
        assert!(!SourceError::Replication(e).is_transient());
    }

    #[test]
    fn transient_classes() {
        assert!(sqlstate_is_transient("08006"));
        assert!(sqlstate_is_transient("57P01"));
        assert!(!sqlstate_is_transient("42501"));
        assert!(!sqlstate_is_transient("28P01"));
    }
}
