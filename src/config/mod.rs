//! The TOML configuration: types, defaults, `${VAR}` interpolation, validation.
//!
//! Loading is a pipeline of pure steps, so every step is testable without files or
//! environment: read file → [`interpolate`] `${VAR}`s → deserialize (serde,
//! `deny_unknown_fields` everywhere) → [`Config::validate`]. Every failure is a
//! [`ConfigError`] whose `Display` is the complete message for the user: the file,
//! the line and key path when known, what is wrong and how to fix it.
//!
//! Secrets: values of interpolated variables never appear in an error message (toml's
//! own `Display`, which quotes the source line, is never used, and toml's messages are
//! scrubbed of every interpolated value), and `Debug` of a [`Config`] prints `***` for
//! [`Secret`]s, header values and subscription URLs beyond their origin.
//!
//! The shipped `config.example.toml` documents every key with its default and is
//! parsed by a unit test, so it cannot drift from these types.

mod auth;
mod duration;
mod interpolate;
mod limits;
mod network;
mod position;
mod secret;
mod syntax;
mod tls;
mod validate;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

pub use auth::{
    load_rsa_key, AuthConfig, ClientAuth, JwtAlgorithm, JwtConfig, KeyFileError, OAuth2Config,
    DEFAULT_JWT_TTL,
};
pub use duration::Duration;
pub use interpolate::interpolate;
pub use limits::{
    BatchConfig, ByteSize, RateLimit, DEFAULT_BATCH_MAX_BYTES, DEFAULT_BATCH_MAX_EVENTS,
    DEFAULT_BATCH_MAX_WAIT,
};
pub use network::Network;
pub use secret::{Secret, SecretList};
pub use tls::{load_ca_file, CaFileError, TlsConfig, DEFAULT_TLS_VERIFY};

/// Why the configuration cannot be used; every variant means exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read the config file: {source}; check the path given with -c or WALHOOK_CONFIG", path.display())]
    Read {
        /// The path as given.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A `${VAR}` names a variable that is not set.
    #[error("{}environment variable {name} is not set; export it before starting walhook, or write $${{{name}}} for a literal ${{{name}}}", at_line(origin, *line))]
    UnsetVar {
        /// The config file name (empty when unknown).
        origin: String,
        /// The variable name.
        name: String,
        /// 1-based line of the placeholder.
        line: usize,
    },
    /// The text is not valid TOML or does not match the expected keys and types.
    #[error("{message}")]
    Parse {
        /// The complete message: file, line, column, key path, problem and fix.
        message: String,
    },
    /// A value is well-formed but not acceptable.
    #[error("{}{field}: {message}", file_prefix(origin))]
    Invalid {
        /// The config file name (empty when unknown).
        origin: String,
        /// The offending field, like `subscriptions[2].timeout`.
        field: String,
        /// What is wrong and how to fix it (never contains a secret).
        message: String,
    },
}

fn file_prefix(origin: &str) -> String {
    if origin.is_empty() {
        String::new()
    } else {
        format!("{origin}: ")
    }
}

fn at_line(origin: &str, line: usize) -> String {
    if origin.is_empty() {
        format!("line {line}: ")
    } else {
        format!("{origin}:{line}: ")
    }
}

impl ConfigError {
    /// Shorthand for [`ConfigError::Invalid`] without an origin (added by the caller).
    fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            origin: String::new(),
            field: field.into(),
            message: message.into(),
        }
    }

    /// Sets the origin on variants that carry one and have none yet.
    fn with_origin(mut self, name: &str) -> Self {
        if let Self::UnsetVar { origin, .. } | Self::Invalid { origin, .. } = &mut self {
            if origin.is_empty() {
                name.clone_into(origin);
            }
        }
        self
    }
}

/// Reads, interpolates (from the process environment), parses and validates the config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let env = |name: &str| std::env::var_os(name).and_then(|v| v.into_string().ok());
    from_str_with_env(&text, &path.display().to_string(), &env)
}

/// Interpolates `${VAR}`s in `text` from `env`, parses and validates it; `origin` (the
/// file name) starts every error message.
pub fn from_str_with_env(
    text: &str,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let expanded = interpolate::expand(text, env).map_err(|e| e.with_origin(origin))?;
    let mut config: Config =
        toml::from_str(&expanded.text).map_err(|err| parse_error(&err, text, &expanded, origin))?;
    config
        .validate()
        .map_err(|err| match err.with_origin(origin) {
            ConfigError::Invalid {
                origin,
                field,
                message,
            } => ConfigError::Invalid {
                origin,
                field,
                message: scrub(&message, &expanded, None),
            },
            other => other,
        })?;
    config.fill_defaults();
    Ok(config)
}

impl Config {
    /// The effective configuration (defaults filled in) for `walhook check
    /// --print-config`, with every secret as `***`: the `Debug` form, whose
    /// impls are the ones that already keep secrets out of logs (`Secret`,
    /// subscription URLs beyond their origin, header values, templates).
    pub fn redacted(&self) -> String {
        format!("{self:#?}")
    }

    /// Fills defaults that depend on other keys (after `validate`):
    /// `app_id` of jiandaoyun subscriptions is the database name.
    fn fill_defaults(&mut self) {
        let database = database_name(self.source.url.expose());
        for sub in &mut self.subscriptions {
            if sub.format == Format::Jiandaoyun && sub.app_id.is_none() {
                sub.app_id = Some(database.clone());
            }
        }
    }
}

/// The database a connection string names; like libpq, the user name when
/// no dbname is given, and `postgres` when neither is.
fn database_name(url: &str) -> String {
    let rest = crate::source::tls::split(url).rest;
    let parsed = <tokio_postgres::Config as std::str::FromStr>::from_str(&rest).ok();
    parsed
        .as_ref()
        .and_then(|c| c.get_dbname().or(c.get_user()))
        .unwrap_or("postgres")
        .to_owned()
}

/// Builds the user-facing message for a toml error without toml's `Display` (which
/// quotes the source line, secrets included).
fn parse_error(
    err: &toml::de::Error,
    raw: &str,
    expanded: &interpolate::Expanded,
    origin: &str,
) -> ConfigError {
    // toml separates a syntax error's parts with line breaks; keep the message on one line.
    let message = match err.message().trim() {
        "" => "invalid TOML (a value is missing or malformed)".to_owned(),
        text => text.replace('\n', ": "),
    };
    let message = message.as_str();
    let span = err.span();
    // The only required top-level key; its error spans the whole document, which would
    // otherwise be attributed to the first table.
    let at_root = message.starts_with("missing field `source`");
    let location = span
        .as_ref()
        .filter(|_| !at_root)
        .map(|span| position::locate(raw, expanded.raw_offset(span.start)));
    let hint = if message.starts_with("unknown field") {
        "; remove it or fix its spelling (config.example.toml lists every key)"
    } else if message.starts_with("missing field") {
        "; add it (see config.example.toml)"
    } else if message.starts_with("duplicate key") {
        "; keep only one of them"
    } else if message.starts_with("unknown variant") {
        "; use one of the listed values"
    } else if message.starts_with("invalid type") {
        "; see config.example.toml for the expected type"
    } else if !message.contains(';') {
        "; fix the TOML syntax at this position"
    } else {
        ""
    };
    let mut out = String::new();
    if !origin.is_empty() {
        out.push_str(origin);
    }
    if let Some(loc) = &location {
        out.push_str(&format!(":{}:{}", loc.line, loc.column));
    }
    if !out.is_empty() {
        out.push_str(": ");
    }
    if let Some(path) = location.as_ref().and_then(|l| l.path.as_ref()) {
        out.push_str(&format!("{path}: "));
    }
    out.push_str(&scrub(message, expanded, span.as_ref()));
    out.push_str(hint);
    ConfigError::Parse { message: out }
}

/// Replaces interpolated values in `message` by their `${NAME}`.
///
/// Values of the variables overlapping `span` are scrubbed whatever their length;
/// others when at least 4 bytes long (shorter ones would mangle ordinary words, and a
/// message only quotes the value at its own span).
fn scrub(
    message: &str,
    expanded: &interpolate::Expanded,
    span: Option<&std::ops::Range<usize>>,
) -> String {
    let overlapping: Vec<&str> = span
        .map(|s| {
            expanded
                .overlaps(s)
                .filter_map(|sub| sub.variable.as_ref().map(|(name, _)| name.as_str()))
                .collect()
        })
        .unwrap_or_default();
    let mut variables: Vec<&(String, String)> = expanded
        .substitutions
        .iter()
        .filter_map(|sub| sub.variable.as_ref())
        .filter(|(name, value)| {
            !value.is_empty() && (value.len() >= 4 || overlapping.contains(&name.as_str()))
        })
        .collect();
    // Longest first, so a value containing another is replaced whole.
    variables.sort_by_key(|(_, value)| std::cmp::Reverse(value.len()));
    let mut out = message.to_owned();
    for (name, value) in variables {
        let placeholder = format!("${{{name}}}");
        // serde quotes strings with `{:?}`, so also scrub the escaped spelling.
        let debug = format!("{value:?}");
        let escaped = &debug[1..debug.len() - 1];
        for form in [value.as_str(), escaped] {
            if !form.is_empty() {
                out = out.replace(form, &placeholder);
            }
        }
    }
    out
}

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The PostgreSQL database to replicate from.
    pub source: SourceConfig,
    /// The embedded durable event store.
    #[serde(default)]
    pub store: StoreConfig,
    /// The admin HTTP server (health, metrics, API).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Global delivery limits.
    #[serde(default)]
    pub delivery: DeliveryConfig,
    /// Log format and level.
    #[serde(default)]
    pub log: LogConfig,
    /// Tables to replicate; at least one (checked by `validate`, for a clearer message).
    #[serde(default)]
    pub tables: Vec<TableConfig>,
    /// Webhook endpoints.
    #[serde(default)]
    pub subscriptions: Vec<SubscriptionConfig>,
}

/// Replication slot name used when none is configured: one walhook per database is the norm.
pub const DEFAULT_SLOT: &str = "walhook";
/// Publication name used when none is configured (same reasoning as the slot).
pub const DEFAULT_PUBLICATION: &str = "walhook";
/// Create the slot when missing: the first run should just work.
pub const DEFAULT_CREATE_SLOT: bool = true;
/// Keep the publication in sync with `[[tables]]`, so the config is the single source of truth.
pub const DEFAULT_MANAGE_PUBLICATION: bool = true;
/// Heartbeat interval: often enough that an idle slot never holds WAL for long, rare enough to be free.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
/// How soon a newly durable LSN is reported; Postgres' own wal_receiver_status_interval is 10s.
/// 200ms keeps the slot's confirmed position (and the lag seen in pg_replication_slots) close
/// behind the store at a cost of at most five small status messages a second while busy.
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_millis(200);
/// Connect timeout: long enough for a TLS handshake over a slow link, short enough to fail fast.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Shortest silence of the replication stream that makes walhook check the
/// connection (see [`SourceConfig::receive_timeout`]): long enough that a
/// busy server is not mistaken for a dead network, like PostgreSQL's own
/// `wal_receiver_timeout` (60s) halved for its ping.
pub const MIN_DEFAULT_RECEIVE_TIMEOUT: Duration = Duration::from_secs(30);
/// Consecutive failed (re)connects before giving up (exit 3); with backoff about a minute of outage.
pub const DEFAULT_MAX_CONNECT_ATTEMPTS: u32 = 6;
/// Store directory, relative to the working directory like the config file itself.
pub const DEFAULT_STORE_PATH: &str = "./walhook-data";
/// How long delivered events stay replayable: a week covers a receiver's bad weekend.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long the delivery history (one row per attempt) is kept: a month
/// answers "what happened to that event last week" without growing forever.
pub const DEFAULT_HISTORY_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Log level when neither `log.level` nor `RUST_LOG` says otherwise.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// The admin server is on by default because health checks need it.
pub const DEFAULT_ADMIN_ENABLED: bool = true;
/// Loopback only by default: the API can replay events, so exposing it is an explicit choice.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9187";
/// Global cap on in-flight HTTP requests: plenty for one process, far below fd limits.
pub const DEFAULT_MAX_CONCURRENCY: usize = 256;
/// Time in-flight deliveries get to finish on SIGTERM (Kubernetes grants 30s in total).
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Largest request body sent: receivers commonly accept payloads up to 10 MB, and a
/// row with a 10 MB value is larger still once wrapped in JSON (bytea grows by a third
/// in base64), so 16 MiB sends those rows while a runaway value becomes a dead letter
/// ("payload too large") instead of a request no receiver takes.
pub const DEFAULT_MAX_BODY_BYTES: ByteSize = ByteSize(16 * 1024 * 1024);
/// Private and local addresses are reachable by default: the demo, the tests and
/// many sidecar setups post to 127.0.0.1 or a cluster-internal service. Turn the
/// guard on where subscription URLs come from people who must not reach the
/// internal network (multi-tenant setups, URLs entered through an API).
pub const DEFAULT_DENY_PRIVATE_NETWORKS: bool = false;
/// Per-request timeout: receivers should answer fast and do slow work asynchronously.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts before an event becomes a dead letter; with the default backoff about a day.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 12;
/// First retry delay (doubles each attempt, with jitter).
pub const DEFAULT_RETRY_INITIAL: Duration = Duration::from_secs(1);
/// Longest retry delay, so a recovered receiver is retried within the hour.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(3600);
/// Ops sent when `ops` is absent: row changes only; truncate, form_update and test are opt-in
/// because receivers written for row events would misread them.
pub const DEFAULT_OPS: [Op; 3] = [Op::DataCreate, Op::DataUpdate, Op::DataRemove];

fn default_true() -> bool {
    true
}
fn default_slot() -> String {
    DEFAULT_SLOT.to_owned()
}
fn default_publication() -> String {
    DEFAULT_PUBLICATION.to_owned()
}
fn default_heartbeat() -> Duration {
    DEFAULT_HEARTBEAT
}
fn default_status_interval() -> Duration {
    DEFAULT_STATUS_INTERVAL
}
fn default_connect_timeout() -> Duration {
    DEFAULT_CONNECT_TIMEOUT
}
fn default_max_connect_attempts() -> u32 {
    DEFAULT_MAX_CONNECT_ATTEMPTS
}
fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

/// `[source]`: the database, slot and publication.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// libpq URL (`postgres://user:pass@host/db?sslmode=require`) or `key=value` string.
    pub url: Secret,
    /// Replication slot name (`[a-z0-9_]{1,63}`).
    #[serde(default = "default_slot")]
    pub slot: String,
    /// Publication name.
    #[serde(default = "default_publication")]
    pub publication: String,
    /// Create the slot when it does not exist.
    #[serde(default = "default_true")]
    pub create_slot: bool,
    /// Create/alter the publication to match `[[tables]]`.
    #[serde(default = "default_true")]
    pub manage_publication: bool,
    /// Interval of `pg_logical_emit_message` heartbeats so idle slots advance.
    #[serde(default = "default_heartbeat")]
    pub heartbeat: Duration,
    /// How often the durable LSN is reported to Postgres.
    #[serde(default = "default_status_interval")]
    pub status_interval: Duration,
    /// Timeout of each connection attempt.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Consecutive failed (re)connects before exiting with code 3.
    #[serde(default = "default_max_connect_attempts")]
    pub max_connect_attempts: u32,
    /// Silence of the replication stream (not even a keepalive) after which
    /// the connection is checked and, if dead, replaced; `None` = the default
    /// of [`SourceConfig::receive_timeout`].
    #[serde(default)]
    pub receive_timeout: Option<Duration>,
}

impl SourceConfig {
    /// `receive_timeout`, or by default three heartbeats and at least
    /// [`MIN_DEFAULT_RECEIVE_TIMEOUT`]: an idle stream carries a heartbeat
    /// message every `heartbeat`, so three missed ones mean trouble.
    pub fn receive_timeout(&self) -> std::time::Duration {
        match self.receive_timeout {
            Some(timeout) => timeout.get(),
            None => (self.heartbeat.get() * 3).max(MIN_DEFAULT_RECEIVE_TIMEOUT.get()),
        }
    }
}

/// `[store]`: the embedded durable log.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Directory of the store; created if missing.
    pub path: PathBuf,
    /// How long delivered events stay replayable.
    pub retention: Duration,
    /// Backlog size (events) above which walhook warns; `None` = unbounded.
    pub max_backlog: Option<u64>,
    /// How long the delivery history (one row per attempt) is kept.
    pub history_retention: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from(DEFAULT_STORE_PATH),
            retention: DEFAULT_RETENTION,
            max_backlog: None,
            history_retention: DEFAULT_HISTORY_RETENTION,
        }
    }
}

/// `[admin]`: health, metrics and API server.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Whether the admin server runs.
    pub enabled: bool,
    /// `host:port` to listen on.
    pub listen: String,
    /// Bearer token required by every route but `/healthz` and `/readyz`.
    pub token: Option<Secret>,
    /// Networks (CIDRs, or single addresses) whose clients may connect; empty = any.
    pub allow: Vec<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: DEFAULT_ADMIN_ENABLED,
            listen: DEFAULT_ADMIN_LISTEN.to_owned(),
            token: None,
            allow: Vec::new(),
        }
    }
}

impl AdminConfig {
    /// `allow` parsed: `10.0.0.0/8`, `192.168.1.7` (one address) or IPv6
    /// forms; the error names the bad entry by its index.
    pub fn allowed_networks(&self) -> Result<Vec<ipnet::IpNet>, (usize, String)> {
        self.allow
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let text = text.trim();
                text.parse::<ipnet::IpNet>()
                    .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| (i, text.to_owned()))
            })
            .collect()
    }
}

/// `[log]`: how walhook writes its log (to stderr).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Human-readable lines or one JSON object per line.
    pub format: LogFormat,
    /// A level (`info`) or a filter (`warn,walhook=debug`); `RUST_LOG`, when set, wins.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            level: DEFAULT_LOG_LEVEL.to_owned(),
        }
    }
}

/// `log.format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line (for log collectors).
    Json,
}

/// `[delivery]`: limits shared by all subscriptions.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Global cap on in-flight HTTP requests.
    pub max_concurrency: usize,
    /// Time in-flight deliveries get to finish on shutdown.
    pub shutdown_grace: Duration,
    /// Largest request body; a larger one becomes a dead letter ("payload too large").
    pub max_body_bytes: ByteSize,
    /// Refuse to connect to loopback, private, link-local, CGNAT and other
    /// non-public addresses (checked after DNS resolution, for every address).
    pub deny_private_networks: bool,
    /// Networks reachable even with `deny_private_networks` (they take precedence).
    pub allow_networks: Vec<Network>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            deny_private_networks: DEFAULT_DENY_PRIVATE_NETWORKS,
            allow_networks: Vec::new(),
        }
    }
}

/// `[[tables]]`: one replicated table and how its rows become form events.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// `"schema.table"` or `"table"` (schema `public`), kept as written.
    pub name: String,
    /// Form name in events; default: the table name without schema.
    pub form: Option<String>,
    /// Key columns; default: the primary key.
    pub key: Option<Vec<String>>,
    /// Only these columns (exclusive with `exclude`).
    pub include: Option<Vec<String>>,
    /// All columns but these.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Column → field renames.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// How int8 and numeric are written in JSON.
    #[serde(default)]
    pub numbers: NumbersMode,
}

impl TableConfig {
    /// The schema: the part before the first `.`, or `public`.
    pub fn schema(&self) -> &str {
        self.name
            .split_once('.')
            .map_or("public", |(schema, _)| schema)
    }

    /// The table name without schema.
    pub fn table(&self) -> &str {
        self.name
            .split_once('.')
            .map_or(self.name.as_str(), |(_, table)| table)
    }

    /// The form name: `form`, or the table name without schema.
    pub fn form_name(&self) -> &str {
        self.form.as_deref().unwrap_or_else(|| self.table())
    }
}

/// How int8 and numeric values are written in events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NumbersMode {
    /// JSON numbers with exactly Postgres' digits.
    #[default]
    Number,
    /// JSON strings, for receivers that parse numbers into doubles.
    String,
}

/// `[[subscriptions]]`: one webhook endpoint.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionConfig {
    /// Unique name (`[A-Za-z0-9_-]+`), used in the store, metrics and CLI.
    pub name: String,
    /// Endpoint URL (http or https).
    #[serde(deserialize_with = "deserialize_url")]
    pub url: url::Url,
    /// HTTP method.
    #[serde(default)]
    pub method: HttpMethod,
    /// Forms sent; `None` = all.
    pub forms: Option<Vec<String>>,
    /// Ops sent; `None` = [`DEFAULT_OPS`].
    pub ops: Option<Vec<Op>>,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Per-request timeout.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// Retry policy.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Request authentication/signing.
    #[serde(default)]
    pub auth: AuthConfig,
    /// TLS settings; `None` = the shared client (web PKI roots, verified).
    pub tls: Option<TlsConfig>,
    /// Disabled subscriptions keep their cursor but receive nothing.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Where a subscription the store has not seen yet starts.
    #[serde(default)]
    pub start: StartFrom,
    /// Jinja expression over the event; only events for which it is true are
    /// sent (`None` = all). Compiled at load.
    pub filter: Option<String>,
    /// Request body format.
    #[serde(default)]
    pub format: Format,
    /// Jinja template of the body; required with (and only with) `format = "template"`.
    pub template: Option<String>,
    /// `appId` of `format = "jiandaoyun"` bodies; filled at load with the
    /// database name of `source.url` when unset.
    pub app_id: Option<String>,
    /// Several events per request (`{"events": [...]}`); `None` = one event per request.
    pub batch: Option<BatchConfig>,
    /// Requests per period, spaced evenly; `None` = unlimited (only `delivery.max_concurrency`).
    pub rate_limit: Option<RateLimit>,
    /// Consecutive failed attempts after which the subscription is disabled; `None` = never.
    pub disable_after: Option<u32>,
    /// Delivery order: strict commit order (default) or per row key in parallel lanes.
    #[serde(default)]
    pub ordering: Ordering,
    /// Parallel lanes with `ordering = "key"` (1..=1024).
    #[serde(default = "default_lanes")]
    pub lanes: u32,
    /// Largest request body for this subscription; `None` = `delivery.max_body_bytes`.
    pub max_body_bytes: Option<ByteSize>,
}

/// Lanes of `ordering = "key"` when `lanes` is not set: enough parallelism to
/// hide one slow or failing key without opening many connections at once.
pub const DEFAULT_LANES: u32 = 8;
/// The most lanes a subscription may have (each lane holds a bounded queue in memory).
pub const MAX_LANES: u32 = 1024;

fn default_lanes() -> u32 {
    DEFAULT_LANES
}

/// `ordering = "..."`: which order deliveries of a subscription keep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// One request at a time, in commit order.
    #[default]
    Commit,
    /// Events of one row key (per form) in commit order; different keys in
    /// parallel lanes, so a failing key blocks only its lane.
    Key,
}

/// Where a new subscription starts reading the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    /// At the current end: only changes from now on (what a new webhook expects).
    #[default]
    End,
    /// At the oldest event still retained (see `store.retention`).
    Earliest,
}

/// `format = "..."`: how events become a request body.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The event JSON as DESIGN.md shows it, byte for byte.
    #[default]
    Walhook,
    /// The body 简道云's data push sends: `{"op": ..., "data": {...}}`.
    Jiandaoyun,
    /// `template` rendered with the event as context.
    Template,
}

impl SubscriptionConfig {
    /// The URL for logs and output: its origin only (`https://host:port/***`),
    /// since paths and queries often carry tokens (Slack, Feishu, WeCom robots).
    pub fn url_for_display(&self) -> String {
        let rest = &self.url[url::Position::BeforePath..];
        if rest.is_empty() || rest == "/" {
            format!("{}/", self.url.origin().ascii_serialization())
        } else {
            format!("{}/***", self.url.origin().ascii_serialization())
        }
    }

    /// Whether events with `op` of `form` go to this subscription (by `ops` and `forms`
    /// only; `enabled` is checked by delivery).
    pub fn wants(&self, op: Op, form: &str) -> bool {
        let op_ok = match &self.ops {
            Some(ops) => ops.contains(&op),
            None => DEFAULT_OPS.contains(&op),
        };
        let form_ok = self
            .forms
            .as_ref()
            .is_none_or(|forms| forms.iter().any(|f| f == form));
        op_ok && form_ok
    }
}

/// Header values, templates and URL paths often carry tokens (Slack, Feishu
/// URLs), so `Debug` shows only header names, template sizes and the URL's origin.
impl fmt::Debug for SubscriptionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: BTreeMap<&str, &str> =
            self.headers.keys().map(|k| (k.as_str(), "***")).collect();
        f.debug_struct("SubscriptionConfig")
            .field("name", &self.name)
            .field("url", &format_args!("{}", self.url_for_display()))
            .field("method", &self.method)
            .field("forms", &self.forms)
            .field("ops", &self.ops)
            .field("headers", &headers)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .field("auth", &self.auth)
            .field("tls", &self.tls)
            .field("enabled", &self.enabled)
            .field("start", &self.start)
            .field("filter", &self.filter)
            .field("format", &self.format)
            // A template may embed interpolated tokens: show its size only.
            .field(
                "template",
                &self
                    .template
                    .as_ref()
                    .map(|t| format!("<{} bytes>", t.len())),
            )
            .field("app_id", &self.app_id)
            .field("batch", &self.batch)
            .field("rate_limit", &self.rate_limit)
            .field("disable_after", &self.disable_after)
            .field("ordering", &self.ordering)
            .field("lanes", &self.lanes)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish()
    }
}

/// Parses the URL without echoing it (it may contain a token) in the error.
fn deserialize_url<'de, D: Deserializer<'de>>(deserializer: D) -> Result<url::Url, D::Error> {
    let text = String::deserialize(deserializer)?;
    url::Url::parse(&text).map_err(|err| {
        serde::de::Error::custom(format!(
            "not a valid URL ({err}); write an absolute URL like \"https://example.com/hooks/walhook\""
        ))
    })
}

/// HTTP method of webhook requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    /// `POST` (the default).
    #[default]
    Post,
    /// `PUT`.
    Put,
    /// `PATCH`.
    Patch,
}

impl HttpMethod {
    /// The method name, e.g. `"POST"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
        }
    }
}

/// Event operation (shared with `event`, which re-exports it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// A row was inserted.
    DataCreate,
    /// A row was updated.
    DataUpdate,
    /// A row was deleted.
    DataRemove,
    /// A table was truncated.
    DataTruncate,
    /// A table's columns changed.
    FormUpdate,
    /// A test event from `send-test` or the API.
    Test,
}

impl Op {
    /// Every op, in declaration order.
    pub const ALL: [Op; 6] = [
        Op::DataCreate,
        Op::DataUpdate,
        Op::DataRemove,
        Op::DataTruncate,
        Op::FormUpdate,
        Op::Test,
    ];

    /// The wire name, e.g. `"data_create"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DataCreate => "data_create",
            Self::DataUpdate => "data_update",
            Self::DataRemove => "data_remove",
            Self::DataTruncate => "data_truncate",
            Self::FormUpdate => "form_update",
            Self::Test => "test",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `retry = { ... }`: exponential backoff with jitter.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts in total (>= 1) before the event becomes a dead letter.
    pub max_attempts: u32,
    /// Delay before the first retry.
    pub initial: Duration,
    /// Upper bound of the delay.
    pub max: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            initial: DEFAULT_RETRY_INITIAL,
            max: DEFAULT_RETRY_MAX,
        }
    }
}
