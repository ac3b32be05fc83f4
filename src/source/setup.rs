//! Preflight checks, publication and slot management.
//!
//! `walhook check` and `walhook run` share [`preflight`]: every check prints
//! one line, failures carry the fix, and nothing is created until all checks
//! pass (no half-done state: a table without a key is never added to a
//! publication, which would break the application's UPDATEs and DELETEs).
//!
//! Order matters: the publication is created (or altered) before the slot,
//! because a slot only decodes publications that existed when it started.

use tokio_postgres::Client;

use super::{ConnParams, SlotProblem, SourceError};
use crate::config::Config;

/// Oldest server we support: pgoutput protocol v1 with TRUNCATE and the
/// catalog columns we read all exist from 14 on.
const MIN_SERVER_VERSION: i32 = 140000;

/// One line of the preflight report.
#[derive(Debug, Clone)]
pub struct CheckLine {
    /// whether the check passed
    pub ok: bool,
    /// what was checked and found (and the fix, when it failed)
    pub text: String,
}

impl std::fmt::Display for CheckLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mark = if self.ok { "ok  " } else { "FAIL" };
        write!(f, "{mark}  {}", self.text)
    }
}

/// What a table resolves to in the catalog.
#[derive(Debug, Clone)]
pub struct ResolvedTable {
    /// schema name
    pub schema: String,
    /// table name
    pub table: String,
    /// primary key columns, in key order (may be empty)
    pub primary_key: Vec<String>,
}

/// Double-quotes an identifier for SQL.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn sql_err(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> SourceError {
    let context = context.into();
    move |source| SourceError::Sql { context, source }
}

fn precondition(problem: impl Into<String>, fix: impl Into<String>) -> SourceError {
    SourceError::Precondition {
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// Runs every check, reporting each line through `report`; returns the first
/// failure (after running the remaining independent checks, so the user sees
/// all problems at once).
pub async fn preflight(
    cfg: &Config,
    client: &Client,
    slot: SlotExpectation,
    report: &mut (dyn FnMut(CheckLine) + Send),
) -> Result<Vec<ResolvedTable>, SourceError> {
    let mut first_error: Option<SourceError> = None;
    let note = |result: Result<String, SourceError>,
                report: &mut (dyn FnMut(CheckLine) + Send),
                first: &mut Option<SourceError>| match result {
        Ok(text) => report(CheckLine { ok: true, text }),
        Err(err) => {
            report(CheckLine {
                ok: false,
                text: err.to_string(),
            });
            if first.is_none() {
                *first = Some(err);
            }
        }
    };

    note(check_version(client).await, report, &mut first_error);
    note(check_wal_level(client).await, report, &mut first_error);
    note(
        check_replication_role(client).await,
        report,
        &mut first_error,
    );

    let mut resolved = Vec::new();
    for (i, table) in cfg.tables.iter().enumerate() {
        match check_table(client, i, table).await {
            Ok((text, t)) => {
                note(Ok(text), report, &mut first_error);
                resolved.push(t);
            }
            Err(e) => note(Err(e), report, &mut first_error),
        }
    }
    note(
        check_publication(cfg, client).await,
        report,
        &mut first_error,
    );
    note(
        check_slot(cfg, client, slot).await,
        report,
        &mut first_error,
    );
    for sub in &cfg.subscriptions {
        let state = if sub.enabled { "" } else { " (disabled)" };
        note(
            Ok(format!(
                "subscription '{}': {} {}{}",
                sub.name,
                sub.method.as_str(),
                sub.url_for_display(),
                state
            )),
            report,
            &mut first_error,
        );
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(resolved),
    }
}

/// Opens a replication session, authenticates and runs IDENTIFY_SYSTEM, then
/// ends it without START_REPLICATION (so no slot or publication is needed or
/// touched). A replication connection the server refuses, though it accepted
/// the SQL one (its TLS check, `replication` lines of pg_hba.conf), then
/// fails before walhook creates anything.
pub async fn check_replication_connection(
    cfg: &Config,
    params: &ConnParams,
) -> Result<String, SourceError> {
    let rcfg = params.replication_config(&cfg.source.slot, &cfg.source.publication);
    let mut client = pgwire_replication::ReplicationClient::connect_gated(rcfg)
        .await
        .map_err(|e| params.replication_error(e))?;
    let budget = params.connect_timeout();
    match tokio::time::timeout(budget, client.identify_system()).await {
        // Dropping the gated client ends the session (Terminate).
        Ok(Ok(_)) => Ok(format!(
            "replication connection accepted (sslmode={})",
            params.tls().mode
        )),
        Ok(Err(e)) => Err(params.replication_error(e)),
        Err(_) => {
            client.abort();
            Err(SourceError::ConnectTimeout {
                target: params.target(),
                what: "replication",
                after: budget,
            })
        }
    }
}

async fn check_version(client: &Client) -> Result<String, SourceError> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version')",
            &[],
        )
        .await
        .map_err(sql_err("cannot read the server version"))?;
    let num: i32 = row.get(0);
    let text: String = row.get(1);
    if num < MIN_SERVER_VERSION {
        return Err(precondition(
            format!("PostgreSQL {text} is too old"),
            "walhook needs PostgreSQL 14 or newer",
        ));
    }
    Ok(format!("PostgreSQL {text}"))
}

async fn check_wal_level(client: &Client) -> Result<String, SourceError> {
    let row = client
        .query_one("SELECT current_setting('wal_level')", &[])
        .await
        .map_err(sql_err("cannot read wal_level"))?;
    let level: String = row.get(0);
    if level != "logical" {
        return Err(precondition(
            format!("wal_level must be logical (found: {level})"),
            "set wal_level = logical in postgresql.conf (or ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL",
        ));
    }
    Ok("wal_level is logical".into())
}

async fn check_replication_role(client: &Client) -> Result<String, SourceError> {
    let row = client
        .query_one(
            "SELECT current_user::text, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(sql_err("cannot read the role's attributes"))?;
    let role: String = row.get(0);
    let ok: bool = row.get(1);
    if !ok {
        return Err(precondition(
            format!("role '{role}' lacks the REPLICATION privilege"),
            format!(
                "run ALTER ROLE {} REPLICATION as a superuser",
                quote_ident(&role)
            ),
        ));
    }
    Ok(format!("role '{role}' may replicate"))
}

async fn check_table(
    client: &Client,
    index: usize,
    table: &crate::config::TableConfig,
) -> Result<(String, ResolvedTable), SourceError> {
    let (schema, name) = (table.schema(), table.table());
    let qualified = format!("{schema}.{name}");
    let row = client
        .query_opt(
            "SELECT c.oid, c.relreplident::text, c.relkind::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&schema, &name],
        )
        .await
        .map_err(sql_err(format!("cannot look up table {qualified}")))?;
    let Some(row) = row else {
        return Err(precondition(
            format!("table {qualified} does not exist (tables[{index}].name)"),
            "create the table or fix the name in the config (unqualified names mean schema public)",
        ));
    };
    let oid: u32 = row.get(0);
    let identity: String = row.get(1);
    let kind: String = row.get(2);
    if kind == "p" {
        // Changes of partitioned tables arrive under the partitions' names
        // unless the publication publishes via the root; rather than mapping
        // them half-right, refuse clearly.
        return Err(precondition(
            format!("{qualified} is a partitioned table, which walhook does not capture yet"),
            format!("list its partitions in [[tables]] instead (tables[{index}])"),
        ));
    }
    if kind != "r" {
        return Err(precondition(
            format!("{qualified} is not a table (relkind '{kind}')"),
            "only ordinary tables can be published",
        ));
    }
    let pk: Vec<String> = client
        .query(
            "SELECT a.attname::text FROM pg_index i \
             JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord",
            &[&oid],
        )
        .await
        .map_err(sql_err(format!(
            "cannot read the primary key of {qualified}"
        )))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let columns: Vec<String> = client
        .query(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped",
            &[&oid],
        )
        .await
        .map_err(sql_err(format!("cannot read the columns of {qualified}")))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if let Some(key) = &table.key {
        for col in key {
            if !columns.contains(col) {
                return Err(precondition(
                    format!("key column '{col}' of tables[{index}] ({qualified}) does not exist"),
                    "fix tables[].key to name existing columns",
                ));
            }
        }
    }
    // Postgres needs a replica identity to publish UPDATE/DELETE; adding a
    // table without one would make the application's UPDATEs fail.
    let has_identity = match identity.as_str() {
        "f" | "i" => true,
        "d" => !pk.is_empty(),
        _ => false,
    };
    if !has_identity {
        return Err(precondition(
            format!("table {qualified} has no primary key and no replica identity"),
            format!(
                "add a primary key, or run ALTER TABLE {}.{} REPLICA IDENTITY FULL (and set tables[{index}].key to the columns that identify a row)",
                quote_ident(schema),
                quote_ident(name)
            ),
        ));
    }
    if let (Some(key), "d") = (&table.key, identity.as_str()) {
        if let Some(col) = key.iter().find(|c| !pk.contains(c)) {
            return Err(precondition(
                format!("key column '{col}' of tables[{index}] ({qualified}) is not part of the replica identity, so deletes would not carry it"),
                format!(
                    "use the primary key, or run ALTER TABLE {}.{} REPLICA IDENTITY FULL",
                    quote_ident(schema),
                    quote_ident(name)
                ),
            ));
        }
    }
    if table.key.is_none() && pk.is_empty() {
        return Err(precondition(
            format!("table {qualified} has no primary key"),
            format!("set tables[{index}].key to the columns that identify a row"),
        ));
    }
    let key_text = table.key.clone().unwrap_or_else(|| pk.clone()).join(", ");
    let ident = match identity.as_str() {
        "f" => "FULL",
        "i" => "USING INDEX",
        _ => "DEFAULT",
    };
    Ok((
        format!(
            "table {qualified} → form '{}' (key: {key_text}; replica identity {ident})",
            table.form_name()
        ),
        ResolvedTable {
            schema: schema.to_string(),
            table: name.to_string(),
            primary_key: pk,
        },
    ))
}

/// The operations walhook needs a publication to publish.
const PUBLISHED_OPERATIONS: &str = "insert, update, delete, truncate";

/// Which of insert/update/delete/truncate the publication lacks (empty when
/// it publishes all four, or does not exist).
async fn missing_operations(
    client: &Client,
    publication: &str,
) -> Result<Vec<&'static str>, SourceError> {
    let row = client
        .query_opt(
            "SELECT pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(sql_err("cannot read pg_publication"))?;
    let Some(row) = row else {
        return Ok(Vec::new());
    };
    Ok(["insert", "update", "delete", "truncate"]
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !row.get::<_, bool>(*i))
        .map(|(_, op)| op)
        .collect())
}

async fn published_tables(
    client: &Client,
    publication: &str,
) -> Result<Option<Vec<(String, String)>>, SourceError> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(sql_err("cannot read pg_publication"))?;
    if exists.is_none() {
        return Ok(None);
    }
    let rows = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(sql_err("cannot read pg_publication_tables"))?;
    Ok(Some(rows.iter().map(|r| (r.get(0), r.get(1))).collect()))
}

async fn check_publication(cfg: &Config, client: &Client) -> Result<String, SourceError> {
    let name = &cfg.source.publication;
    let tables = published_tables(client, name).await?;
    let wanted: Vec<(String, String)> = cfg
        .tables
        .iter()
        .map(|t| (t.schema().to_string(), t.table().to_string()))
        .collect();
    match tables {
        None if cfg.source.manage_publication => {
            Ok(format!("publication '{name}' will be created"))
        }
        None => Err(precondition(
            format!("publication '{name}' does not exist"),
            format!(
                "create it: CREATE PUBLICATION {} FOR TABLE {} (or set source.manage_publication = true)",
                quote_ident(name),
                table_list(&wanted)
            ),
        )),
        Some(have) => {
            let ops = missing_operations(client, name).await?;
            if !ops.is_empty() && !cfg.source.manage_publication {
                return Err(precondition(
                    format!("publication '{name}' does not publish {}", ops.join(", ")),
                    format!(
                        "run ALTER PUBLICATION {} SET (publish = '{PUBLISHED_OPERATIONS}') (or set source.manage_publication = true)",
                        quote_ident(name)
                    ),
                ));
            }
            let missing: Vec<_> = wanted.iter().filter(|t| !have.contains(t)).cloned().collect();
            if missing.is_empty() && ops.is_empty() {
                Ok(format!("publication '{name}' publishes every configured table"))
            } else if missing.is_empty() {
                Ok(format!(
                    "publication '{name}' will be altered to publish {}",
                    ops.join(", ")
                ))
            } else if cfg.source.manage_publication {
                Ok(format!(
                    "publication '{name}' will be altered to add {}",
                    table_list(&missing)
                ))
            } else {
                Err(precondition(
                    format!("publication '{name}' lacks {}", table_list(&missing)),
                    format!(
                        "run ALTER PUBLICATION {} ADD TABLE {} (or set source.manage_publication = true)",
                        quote_ident(name),
                        table_list(&missing)
                    ),
                ))
            }
        }
    }
}

fn table_list(tables: &[(String, String)]) -> String {
    tables
        .iter()
        .map(|(s, t)| format!("{}.{}", quote_ident(s), quote_ident(t)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A replication slot as the catalog shows it.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    /// output plugin
    pub plugin: String,
    /// database the slot decodes
    pub database: String,
    /// whether a walsender holds it now
    pub active: bool,
    /// `reserved`, `extended`, `unreserved` or `lost`
    pub wal_status: Option<String>,
    /// the slot's confirmed_flush_lsn
    pub confirmed_flush: Option<String>,
}

/// Reads the slot from `pg_replication_slots`.
pub async fn slot_info(client: &Client, slot: &str) -> Result<Option<SlotInfo>, SourceError> {
    let row = client
        .query_opt(
            "SELECT plugin::text, database::text, active, wal_status, confirmed_flush_lsn::text \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(sql_err("cannot read pg_replication_slots"))?;
    Ok(row.map(|r| SlotInfo {
        plugin: r.get::<_, Option<String>>(0).unwrap_or_default(),
        database: r.get::<_, Option<String>>(1).unwrap_or_default(),
        active: r.get(2),
        wal_status: r.get(3),
        confirmed_flush: r.get(4),
    }))
}

async fn check_slot(
    cfg: &Config,
    client: &Client,
    expect: SlotExpectation,
) -> Result<String, SourceError> {
    let slot = &cfg.source.slot;
    let db: String = client
        .query_one("SELECT current_database()::text", &[])
        .await
        .map_err(sql_err("cannot read the database name"))?
        .get(0);
    let info = slot_info(client, slot).await?;
    if let Some(info) = &info {
        if info.plugin != "pgoutput" {
            return Err(precondition(
                format!("replication slot '{slot}' uses plugin '{}'", info.plugin),
                "walhook needs a pgoutput slot: choose another source.slot name",
            ));
        }
        if info.database != db {
            return Err(precondition(
                format!(
                    "replication slot '{slot}' belongs to database '{}'",
                    info.database
                ),
                "choose another source.slot name for this database",
            ));
        }
    }
    match slot_verdict(cfg, info.as_ref(), expect) {
        SlotVerdict::Resume => {
            let info = info.as_ref();
            let active = if info.is_some_and(|i| i.active) {
                ", in use by a walsender"
            } else {
                ""
            };
            Ok(format!(
                "replication slot '{slot}' exists (confirmed up to {}{active})",
                info.and_then(|i| i.confirmed_flush.clone())
                    .unwrap_or_else(|| "-".into())
            ))
        }
        SlotVerdict::Create if cfg.source.create_slot => {
            Ok(format!("replication slot '{slot}' will be created"))
        }
        SlotVerdict::Create => Err(precondition(
            format!("replication slot '{slot}' does not exist"),
            format!(
                "create it: SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput') (after the publication), or set source.create_slot = true"
            ),
        )),
        SlotVerdict::Replace { state, .. } => Ok(format!(
            "replication slot '{slot}' {state}; --resync replaces it (the changes after the store's last durable LSN are skipped)"
        )),
        SlotVerdict::Lost(err) => Err(err),
    }
}

/// What the slot is checked against: the store's progress, and whether the
/// operator allowed a resync (`walhook run --resync`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SlotExpectation {
    /// The store's durable LSN; `None` for an empty or new store.
    pub durable: Option<u64>,
    /// Replace a lost, missing or foreign-advanced slot instead of stopping.
    pub resync: bool,
}

/// What to do with the slot, given the catalog and the store.
#[derive(Debug)]
enum SlotVerdict {
    /// It exists and continues where the store stopped.
    Resume,
    /// It does not exist and the store has no progress: a first run.
    Create,
    /// It cannot be resumed, and `--resync` allows replacing it.
    Replace {
        kind: SlotProblem,
        state: String,
        exists: bool,
    },
    /// It cannot be resumed: [`SourceError::SlotLost`].
    Lost(SourceError),
}

/// The one place that decides whether a slot may be resumed, created or
/// replaced. A slot that is missing while the store has progress, invalidated
/// (`wal_status = lost`), or confirmed past the store (recreated or advanced
/// by someone else: we only ever confirm what the store holds) means changes
/// after the store's durable LSN are gone; only `--resync` may go on.
fn slot_verdict(cfg: &Config, info: Option<&SlotInfo>, expect: SlotExpectation) -> SlotVerdict {
    let confirmed = info
        .and_then(|i| i.confirmed_flush.as_deref())
        .and_then(|t| pgwire_replication::Lsn::parse(t).ok())
        .map(|l| l.0);
    let problem = match info {
        None => expect
            .durable
            .map(|_| (SlotProblem::Missing, "does not exist".to_string())),
        Some(i) if i.wal_status.as_deref() == Some("lost") => Some((
            SlotProblem::Lost,
            "is invalidated (wal_status = lost)".to_string(),
        )),
        Some(_) => match (confirmed, expect.durable) {
            (Some(c), Some(d)) if c > d => Some((
                SlotProblem::Lost,
                format!(
                    "is confirmed up to {}, past the store (recreated or advanced outside walhook)",
                    crate::event::lsn_text(c)
                ),
            )),
            _ => None,
        },
    };
    match problem {
        None if info.is_none() => SlotVerdict::Create,
        None => SlotVerdict::Resume,
        Some((kind, state)) if expect.resync => SlotVerdict::Replace {
            kind,
            state,
            exists: info.is_some(),
        },
        Some((kind, state)) => SlotVerdict::Lost(SourceError::SlotLost {
            kind,
            slot: cfg.source.slot.clone(),
            state,
            durable: durable_text(expect.durable),
        }),
    }
}

/// The store's durable LSN for messages: `X/Y`, or `none` for an empty store.
pub fn durable_text(lsn: Option<u64>) -> String {
    match lsn.filter(|l| *l != 0) {
        Some(l) => crate::event::lsn_text(l),
        None => "none (the store is empty)".to_string(),
    }
}

/// Creates the publication or makes it publish every configured table and
/// all four operations.
pub async fn ensure_publication(cfg: &Config, client: &Client) -> Result<(), SourceError> {
    if !cfg.source.manage_publication {
        return Ok(());
    }
    let name = &cfg.source.publication;
    let wanted: Vec<(String, String)> = cfg
        .tables
        .iter()
        .map(|t| (t.schema().to_string(), t.table().to_string()))
        .collect();
    match published_tables(client, name).await? {
        None => {
            let sql = format!(
                "CREATE PUBLICATION {} FOR TABLE {} WITH (publish = '{PUBLISHED_OPERATIONS}')",
                quote_ident(name),
                table_list(&wanted)
            );
            client
                .batch_execute(&sql)
                .await
                .map_err(sql_err(format!("cannot create publication '{name}' (needs CREATE on the database and ownership of the tables)")))?;
            tracing::info!(publication = %name, "created publication");
        }
        Some(have) => {
            let missing: Vec<_> = wanted
                .iter()
                .filter(|t| !have.contains(t))
                .cloned()
                .collect();
            if !missing.is_empty() {
                let sql = format!(
                    "ALTER PUBLICATION {} ADD TABLE {}",
                    quote_ident(name),
                    table_list(&missing)
                );
                client
                    .batch_execute(&sql)
                    .await
                    .map_err(sql_err(format!("cannot alter publication '{name}'")))?;
                tracing::info!(publication = %name, added = missing.len(), "altered publication");
            }
            let sql = format!(
                "ALTER PUBLICATION {} SET (publish = 'insert, update, delete, truncate')",
                quote_ident(name)
            );
            client.batch_execute(&sql).await.map_err(sql_err(format!(
                "cannot set the operations of publication '{name}'"
            )))?;
        }
    }
    Ok(())
}

/// A slot replaced by `walhook run --resync`.
#[derive(Debug, Clone)]
pub struct Resynced {
    /// Why the old slot could not be resumed.
    pub kind: SlotProblem,
    /// What the catalog showed of the old slot.
    pub state: String,
    /// The store's durable LSN before the resync (where the gap starts).
    pub old_durable: Option<u64>,
    /// Where the new slot starts (where the gap ends).
    pub new_lsn: u64,
}

/// Makes sure the slot exists (see [`slot_verdict`]): creates it on a first
/// run, stops with [`SourceError::SlotLost`] when it cannot be resumed, and
/// with `expect.resync` drops such a slot and creates a new one, returning
/// what was replaced so the caller can record the gap.
pub async fn ensure_slot(
    cfg: &Config,
    client: &Client,
    expect: SlotExpectation,
) -> Result<Option<Resynced>, SourceError> {
    let slot = &cfg.source.slot;
    let info = slot_info(client, slot).await?;
    match slot_verdict(cfg, info.as_ref(), expect) {
        SlotVerdict::Resume => {
            if expect.resync {
                tracing::info!(slot = %slot, "--resync given, but the slot continues where the store stopped; nothing to replace");
            }
            Ok(None)
        }
        SlotVerdict::Lost(err) => Err(err),
        SlotVerdict::Create => {
            if !cfg.source.create_slot {
                return Err(precondition(
                    format!("replication slot '{slot}' does not exist"),
                    "create it or set source.create_slot = true",
                ));
            }
            let lsn = create_slot(client, slot).await?;
            tracing::info!(slot = %slot, lsn = %crate::event::lsn_text(lsn), "created replication slot");
            Ok(None)
        }
        SlotVerdict::Replace {
            kind,
            state,
            exists,
        } => {
            if exists {
                client
                    .execute("SELECT pg_drop_replication_slot($1)", &[slot])
                    .await
                    .map_err(sql_err(format!(
                        "--resync: cannot drop replication slot '{slot}' (is another consumer using it?)"
                    )))?;
            }
            let new_lsn = create_slot(client, slot).await?;
            Ok(Some(Resynced {
                kind,
                state,
                old_durable: expect.durable,
                new_lsn,
            }))
        }
    }
}

/// Creates the pgoutput slot and returns its start (consistent point) LSN.
async fn create_slot(client: &Client, slot: &str) -> Result<u64, SourceError> {
    let row = client
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .map_err(sql_err(format!("cannot create replication slot '{slot}'")))?;
    let text: String = row.get(0);
    pgwire_replication::Lsn::parse(&text)
        .map(|l| l.0)
        .map_err(|_| {
            SourceError::Internal(format!(
                "pg_create_logical_replication_slot returned {text:?}, which is not an LSN"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(
            table_list(&[("public".into(), "orders".into())]),
            "\"public\".\"orders\""
        );
    }
}
