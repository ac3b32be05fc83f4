//! [`Config::validate`]: the checks serde cannot express, each error naming its field.
//!
//! Messages never contain secrets: `source.url` errors describe the problem without
//! echoing the URL, header and secret errors name the key, not the value.

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;

use super::{
    Config, ConfigError, Format, Ordering, SourceConfig, SubscriptionConfig, TableConfig, MAX_LANES,
};
use crate::delivery::template::Templates;

type Result = std::result::Result<(), ConfigError>;

impl Config {
    /// Checks cross-field rules and value syntax; the first problem is returned.
    pub fn validate(&self) -> Result {
        validate_source(&self.source)?;
        if self.store.path.as_os_str().is_empty() {
            return Err(ConfigError::invalid(
                "store.path",
                "must not be empty; set a directory like \"./walhook-data\"",
            ));
        }
        if self.admin.listen.trim().is_empty() {
            return Err(ConfigError::invalid(
                "admin.listen",
                "must not be empty; set host:port like \"127.0.0.1:9187\"",
            ));
        }
        if self
            .admin
            .token
            .as_ref()
            .is_some_and(|t| t.expose().is_empty())
        {
            return Err(ConfigError::invalid(
                "admin.token",
                "is empty; set a token or remove the key",
            ));
        }
        if let Err((i, entry)) = self.admin.allowed_networks() {
            return Err(ConfigError::invalid(
                format!("admin.allow[{i}]"),
                format!(
                    "{entry:?} is not a network; write a CIDR like \"10.0.0.0/8\" or an address like \"127.0.0.1\""
                ),
            ));
        }
        if self.store.history_retention.is_zero() {
            return Err(ConfigError::invalid(
                "store.history_retention",
                "must be greater than 0; write a duration like \"30d\"",
            ));
        }
        if !is_log_filter(&self.log.level) {
            return Err(ConfigError::invalid(
                "log.level",
                "is not a log level or filter; write \"error\", \"warn\", \"info\", \"debug\" or \"trace\" (or a filter like \"warn,walhook=debug\")",
            ));
        }
        if self.delivery.max_concurrency == 0 {
            return Err(ConfigError::invalid(
                "delivery.max_concurrency",
                "must be at least 1",
            ));
        }
        if self.delivery.max_body_bytes.get() == 0 {
            return Err(ConfigError::invalid(
                "delivery.max_body_bytes",
                "must be greater than 0; write a size like \"16MiB\"",
            ));
        }
        if self.tables.is_empty() {
            return Err(ConfigError::invalid(
                "tables",
                "no table is configured; add a [[tables]] section with name = \"schema.table\"",
            ));
        }
        let mut tables = HashSet::new();
        let mut forms = HashSet::new();
        for (i, table) in self.tables.iter().enumerate() {
            validate_table(table, &format!("tables[{i}]"))?;
            if !tables.insert((table.schema(), table.table())) {
                return Err(ConfigError::invalid(
                    format!("tables[{i}].name"),
                    format!(
                        "table {}.{} is configured twice; merge the two [[tables]] entries",
                        table.schema(),
                        table.table()
                    ),
                ));
            }
            if !forms.insert(table.form_name()) {
                return Err(ConfigError::invalid(
                    format!("tables[{i}].form"),
                    format!(
                        "form \"{}\" is used by two tables; give each table its own form = \"...\"",
                        table.form_name()
                    ),
                ));
            }
        }
        let mut names = HashSet::new();
        for (i, sub) in self.subscriptions.iter().enumerate() {
            let field = format!("subscriptions[{i}]");
            validate_subscription(sub, &field, &forms)?;
            if !names.insert(sub.name.as_str()) {
                return Err(ConfigError::invalid(
                    format!("{field}.name"),
                    format!(
                        "subscription name \"{}\" is used twice; names must be unique",
                        sub.name
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A level name, or a filter with `target=level` parts (a bare word would
/// otherwise be read as a target name and silently log everything of it).
fn is_log_filter(text: &str) -> bool {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let text = text.trim();
    if text.is_empty() {
        return false;
    }
    if !text.contains(['=', ',']) {
        return LEVELS.iter().any(|l| l.eq_ignore_ascii_case(text));
    }
    tracing_subscriber::EnvFilter::try_new(text).is_ok()
}

fn validate_source(source: &SourceConfig) -> Result {
    // sslmode and sslrootcert are ours to read (tokio-postgres knows neither
    // verify-ca/verify-full nor sslrootcert); the rest is tokio-postgres's.
    let split = crate::source::tls::split(source.url.expose());
    let tls = split
        .settings()
        .map_err(|err| ConfigError::invalid("source.url", err.to_string()))?;
    // The root certificates are read now, so a missing or broken file is a
    // configuration error (exit 2) rather than a failed connection.
    if tls.mode.requires_tls() {
        crate::source::tls::load_roots(&tls.roots)
            .map_err(|err| ConfigError::invalid("source.url", err.to_string()))?;
    }
    if let Err(err) = tokio_postgres::Config::from_str(&split.rest) {
        // The parser's messages can echo parts of the string (`unknown option `...``),
        // so only the option-value ones, which name a fixed option, are passed on.
        let detail = std::error::Error::source(&err)
            .map(ToString::to_string)
            .filter(|d| d.starts_with("invalid value for option") || d == "unexpected EOF")
            .unwrap_or_else(|| "unknown option or malformed part".to_owned());
        return Err(ConfigError::invalid(
            "source.url",
            format!(
                "is not a valid PostgreSQL connection string ({detail}); write it like \
                 \"postgres://user:${{PGPASSWORD}}@host:5432/dbname\""
            ),
        ));
    }
    if !is_name(&source.slot, |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
    }) {
        return Err(ConfigError::invalid(
            "source.slot",
            "must be 1 to 63 characters of a-z, 0-9 and _ (a replication slot name)",
        ));
    }
    if !is_name(&source.publication, |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
    }) || source.publication.starts_with(|c: char| c.is_ascii_digit())
    {
        return Err(ConfigError::invalid(
            "source.publication",
            "must be 1 to 63 characters of a-z, 0-9 and _, not starting with a digit",
        ));
    }
    for (field, value) in [
        ("source.heartbeat", source.heartbeat),
        ("source.status_interval", source.status_interval),
        ("source.connect_timeout", source.connect_timeout),
    ] {
        if value.is_zero() {
            return Err(ConfigError::invalid(
                field,
                "must be greater than 0; write a duration like \"10s\"",
            ));
        }
    }
    if let Some(timeout) = source.receive_timeout {
        if timeout <= source.status_interval {
            return Err(ConfigError::invalid(
                "source.receive_timeout",
                format!(
                    "({timeout}) must be longer than source.status_interval ({}); \
                     a few times longer, like \"30s\"",
                    source.status_interval
                ),
            ));
        }
    }
    if source.max_connect_attempts == 0 {
        return Err(ConfigError::invalid(
            "source.max_connect_attempts",
            "must be at least 1",
        ));
    }
    Ok(())
}

fn is_name(s: &str, allowed: impl Fn(char) -> bool) -> bool {
    (1..=63).contains(&s.len()) && s.chars().all(allowed)
}

fn validate_table(table: &TableConfig, field: &str) -> Result {
    let parts: Vec<&str> = table.name.split('.').collect();
    if parts.len() > 2 || parts.iter().any(|p| p.trim().is_empty()) {
        return Err(ConfigError::invalid(
            format!("{field}.name"),
            format!(
                "\"{}\" is not a table name; write \"schema.table\" or \"table\" (schema public)",
                table.name
            ),
        ));
    }
    if table.form_name().trim().is_empty() {
        return Err(ConfigError::invalid(
            format!("{field}.form"),
            "must not be empty",
        ));
    }
    if table.include.is_some() && !table.exclude.is_empty() {
        return Err(ConfigError::invalid(
            format!("{field}.include"),
            "include and exclude cannot be used together; keep one of them",
        ));
    }
    if table.key.as_ref().is_some_and(Vec::is_empty) {
        return Err(ConfigError::invalid(
            format!("{field}.key"),
            "is empty; list the key columns or remove it to use the primary key",
        ));
    }
    if table.include.as_ref().is_some_and(Vec::is_empty) {
        return Err(ConfigError::invalid(
            format!("{field}.include"),
            "is empty, so no column would be sent; list columns or remove it",
        ));
    }
    let lists = [
        ("key", table.key.as_deref().unwrap_or_default()),
        ("include", table.include.as_deref().unwrap_or_default()),
        ("exclude", table.exclude.as_slice()),
    ];
    for (name, columns) in lists {
        if let Some(j) = columns.iter().position(|c| c.is_empty()) {
            return Err(ConfigError::invalid(
                format!("{field}.{name}[{j}]"),
                "column names must not be empty",
            ));
        }
    }
    let mut targets: BTreeMap<&str, &str> = BTreeMap::new();
    for (column, renamed) in &table.rename {
        if renamed.is_empty() {
            return Err(ConfigError::invalid(
                format!("{field}.rename.{column}"),
                "the new field name must not be empty",
            ));
        }
        if let Some(other) = targets.insert(renamed, column) {
            return Err(ConfigError::invalid(
                format!("{field}.rename.{column}"),
                format!("columns {other} and {column} are both renamed to {renamed}; pick distinct names"),
            ));
        }
    }
    Ok(())
}

fn validate_subscription(sub: &SubscriptionConfig, field: &str, forms: &HashSet<&str>) -> Result {
    if !(1..=128).contains(&sub.name.len())
        || !sub
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(ConfigError::invalid(
            format!("{field}.name"),
            "must be 1 to 128 characters of A-Z, a-z, 0-9, _ and -",
        ));
    }
    if !matches!(sub.url.scheme(), "http" | "https") {
        return Err(ConfigError::invalid(
            format!("{field}.url"),
            format!(
                "scheme \"{}\" is not supported; use an http:// or https:// URL",
                sub.url.scheme()
            ),
        ));
    }
    if !sub.url.has_host() {
        return Err(ConfigError::invalid(
            format!("{field}.url"),
            "has no host; write it like \"https://example.com/hooks/walhook\"",
        ));
    }
    if let Some(list) = &sub.forms {
        if list.is_empty() {
            return Err(ConfigError::invalid(
                format!("{field}.forms"),
                "is empty, so nothing would be sent; list forms, remove the key for all forms, or set enabled = false",
            ));
        }
        for (j, form) in list.iter().enumerate() {
            if !forms.contains(form.as_str()) {
                let mut known: Vec<&str> = forms.iter().copied().collect();
                known.sort_unstable();
                return Err(ConfigError::invalid(
                    format!("{field}.forms[{j}]"),
                    format!(
                        "form \"{form}\" is not configured; known forms: {} (a form is a [[tables]] entry's form, by default its table name)",
                        known.join(", ")
                    ),
                ));
            }
        }
    }
    if sub.ops.as_ref().is_some_and(Vec::is_empty) {
        return Err(ConfigError::invalid(
            format!("{field}.ops"),
            "is empty, so nothing would be sent; list ops, remove the key for the default, or set enabled = false",
        ));
    }
    for name in sub.headers.keys() {
        let value = &sub.headers[name];
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(ConfigError::invalid(
                format!("{field}.headers"),
                format!("\"{name}\" is not a valid HTTP header name; use letters, digits and -"),
            ));
        }
        if reqwest::header::HeaderValue::from_str(value).is_err() {
            return Err(ConfigError::invalid(
                format!("{field}.headers.{name}"),
                "the value is not a valid HTTP header value (line breaks and control characters are not allowed)",
            ));
        }
    }
    validate_format(sub, field)?;
    if sub.timeout.is_zero() {
        return Err(ConfigError::invalid(
            format!("{field}.timeout"),
            "must be greater than 0; write a duration like \"10s\"",
        ));
    }
    if sub.retry.max_attempts == 0 {
        return Err(ConfigError::invalid(
            format!("{field}.retry.max_attempts"),
            "must be at least 1 (1 = no retries)",
        ));
    }
    if sub.retry.initial > sub.retry.max {
        return Err(ConfigError::invalid(
            format!("{field}.retry.initial"),
            format!(
                "({}) is longer than retry.max ({}); make initial <= max",
                sub.retry.initial, sub.retry.max
            ),
        ));
    }
    super::auth::validate_auth(&sub.auth, field)?;
    super::tls::validate_tls(sub.tls.as_ref(), field)?;
    validate_limits(sub, field)
}

/// `format`, `template`, `app_id`, and that every Jinja part compiles.
fn validate_format(sub: &SubscriptionConfig, field: &str) -> Result {
    match (sub.format, &sub.template) {
        (Format::Template, None) => {
            return Err(ConfigError::invalid(
                format!("{field}.template"),
                "is missing; format = \"template\" needs template = '''...''' (a Jinja template of the body)",
            ))
        }
        (Format::Template, Some(t)) if t.trim().is_empty() => {
            return Err(ConfigError::invalid(
                format!("{field}.template"),
                "is empty; write the body as a Jinja template",
            ))
        }
        (Format::Walhook | Format::Jiandaoyun, Some(_)) => {
            return Err(ConfigError::invalid(
                format!("{field}.template"),
                "is only used with format = \"template\"; set that format or remove the template",
            ))
        }
        _ => {}
    }
    match (&sub.app_id, sub.format) {
        (Some(_), Format::Walhook | Format::Template) => {
            return Err(ConfigError::invalid(
                format!("{field}.app_id"),
                "is only used with format = \"jiandaoyun\"; set that format or remove app_id",
            ))
        }
        (Some(app_id), Format::Jiandaoyun) if app_id.trim().is_empty() => {
            return Err(ConfigError::invalid(
                format!("{field}.app_id"),
                "is empty; set it or remove it to use the database name",
            ))
        }
        _ => {}
    }
    if sub.filter.as_ref().is_some_and(|f| f.trim().is_empty()) {
        return Err(ConfigError::invalid(
            format!("{field}.filter"),
            "is empty; write an expression like \"data.total > 100\" or remove the key",
        ));
    }
    Templates::compile(sub).map_err(|err| {
        ConfigError::invalid(
            format!("{field}.{}", err.field),
            format!("does not compile: {}; fix the Jinja syntax", err.source),
        )
    })?;
    Ok(())
}

/// `batch`, `ordering`/`lanes`, `disable_after` (`rate_limit` is fully checked when parsed).
fn validate_limits(sub: &SubscriptionConfig, field: &str) -> Result {
    if let Some(batch) = &sub.batch {
        if batch.max_events == 0 {
            return Err(ConfigError::invalid(
                format!("{field}.batch.max_events"),
                "must be at least 1; remove batch to send one event per request",
            ));
        }
        if batch.max_bytes.get() == 0 {
            return Err(ConfigError::invalid(
                format!("{field}.batch.max_bytes"),
                "must be greater than 0; write a size like \"1MB\"",
            ));
        }
    }
    if sub.ordering == Ordering::Key && sub.batch.is_some() {
        return Err(ConfigError::invalid(
            format!("{field}.ordering"),
            "\"key\" cannot be combined with batch yet; remove batch or use ordering = \"commit\"",
        ));
    }
    if !(1..=MAX_LANES).contains(&sub.lanes) {
        return Err(ConfigError::invalid(
            format!("{field}.lanes"),
            format!("must be between 1 and {MAX_LANES}"),
        ));
    }
    if sub.max_body_bytes.is_some_and(|b| b.get() == 0) {
        return Err(ConfigError::invalid(
            format!("{field}.max_body_bytes"),
            "must be greater than 0; write a size like \"16MiB\", or remove the key to use delivery.max_body_bytes",
        ));
    }
    if sub.disable_after == Some(0) {
        return Err(ConfigError::invalid(
            format!("{field}.disable_after"),
            "must be at least 1; remove the key to never disable the subscription",
        ));
    }
    Ok(())
}
