//! Preflight checks, publication and slot management.
//!
//! `walhook check` and `walhook run` share [`preflight`]: every check prints
//! one line, failures carry the fix, and nothing is created until all checks
//! pass (no half-done state: a table without a key is never added to a
//! publication, which would break the application's UPDATEs and DELETEs).
//!
//! Order matters: the publication is created (or altered) before the slot,
//! because a slot only decodes publications that existed when it started.
//!
//! # The publication walhook manages
//! Created as `FOR TABLE <configured tables>` with every operation
//! (`insert, update, delete, truncate`), `publish_via_partition_root = true`
//! (changes of a partitioned table arrive under the root's name, also for
//! partitions attached later) and, on PostgreSQL 18 and later,
//! `publish_generated_columns = stored` (events carry stored generated
//! columns; before 18 Postgres never publishes them). An existing publication
//! is altered to match when `source.manage_publication` is on; otherwise
//! preflight names what is missing and the statement that fixes it.
//!
//! # Version-dependent checks
//! - Partitioned tables (relkind `p`) are captured through their root: the
//!   key and replica identity checks apply to the root, and every current
//!   partition must carry a replica identity compatible with the root's
//!   (partitions do not inherit `REPLICA IDENTITY`; pgoutput labels the old
//!   row by the root's setting but fills it from the partition's).
//! - PostgreSQL 18 rejects UPDATE/DELETE on a published table whose replica
//!   identity includes generated columns the publication does not publish
//!   (virtual ones never are). Adding such a table would break the
//!   application's writes, so preflight refuses it.

use tokio_postgres::Client;

use super::{ConnParams, SlotProblem, SourceError};
use crate::config::Config;

/// Oldest server we support: pgoutput protocol v1 with TRUNCATE and the
/// catalog columns we read all exist from 14 on.
const MIN_SERVER_VERSION: i32 = 140000;

/// First server version that can publish (stored) generated columns
/// (`publish_generated_columns`) and rejects writes whose replica identity
/// holds unpublished ones.
pub const GENERATED_COLUMNS_VERSION: i32 = 180000;

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
    /// a partitioned table, captured through its root
    pub partitioned: bool,
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

    let version = match check_version(client).await {
        Ok((text, num)) => {
            note(Ok(text), report, &mut first_error);
            num
        }
        Err(e) => {
            note(Err(e), report, &mut first_error);
            MIN_SERVER_VERSION
        }
    };
    note(check_wal_level(client).await, report, &mut first_error);
    note(
        check_replication_role(client).await,
        report,
        &mut first_error,
    );

    let publication = publication_state(client, &cfg.source.publication).await;
    let target = Target {
        version,
        publishes_stored_generated: if cfg.source.manage_publication {
            version >= GENERATED_COLUMNS_VERSION
        } else {
            matches!(&publication, Ok(Some(p)) if p.stored_generated)
        },
        publication: cfg.source.publication.clone(),
    };
    let mut resolved = Vec::new();
    for (i, table) in cfg.tables.iter().enumerate() {
        match check_table(client, i, table, &target).await {
            Ok((text, t)) => {
                note(Ok(text), report, &mut first_error);
                resolved.push(t);
            }
            Err(e) => note(Err(e), report, &mut first_error),
        }
    }
    let partitioned: Vec<String> = resolved
        .iter()
        .filter(|t| t.partitioned)
        .map(|t| format!("{}.{}", t.schema, t.table))
        .collect();
    let publication =
        publication.and_then(|state| check_publication(cfg, state.as_ref(), &partitioned, version));
    note(publication, report, &mut first_error);
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

/// What the tables are checked against.
struct Target {
    /// `server_version_num`
    version: i32,
    /// whether the publication will publish stored generated columns
    publishes_stored_generated: bool,
    /// the publication's name (for messages)
    publication: String,
}

/// The server version: the line to report and `server_version_num`.
async fn check_version(client: &Client) -> Result<(String, i32), SourceError> {
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
    Ok((format!("PostgreSQL {text}"), num))
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

/// A column as the catalog shows it.
struct CatalogColumn {
    name: String,
    /// `attgenerated`: empty, `s` (stored) or `v` (virtual, PostgreSQL 18+)
    generated: String,
}

/// The replica identity setting of a table, as a word for messages.
fn identity_word(identity: &str) -> &'static str {
    match identity {
        "f" => "FULL",
        "i" => "USING INDEX",
        "n" => "NOTHING",
        _ => "DEFAULT",
    }
}

async fn check_table(
    client: &Client,
    index: usize,
    table: &crate::config::TableConfig,
    target: &Target,
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
    let partitioned = kind == "p";
    if kind != "r" && !partitioned {
        return Err(precondition(
            format!("{qualified} is not a table (relkind '{kind}')"),
            "only ordinary and partitioned tables can be published",
        ));
    }
    let pk = primary_key(client, oid, &qualified).await?;
    let columns: Vec<CatalogColumn> = client
        .query(
            "SELECT attname::text, attgenerated::text FROM pg_attribute \
             WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&oid],
        )
        .await
        .map_err(sql_err(format!("cannot read the columns of {qualified}")))?
        .iter()
        .map(|r| CatalogColumn {
            name: r.get(0),
            generated: r.get(1),
        })
        .collect();
    if let Some(key) = &table.key {
        for col in key {
            if !columns.iter().any(|c| &c.name == col) {
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
    let generated_note =
        check_generated_columns(client, oid, &qualified, &identity, &pk, &columns, target).await?;
    let partitions_note = if partitioned {
        check_partitions(client, oid, &qualified, &identity).await?
    } else {
        String::new()
    };
    let key_text = table.key.clone().unwrap_or_else(|| pk.clone()).join(", ");
    Ok((
        format!(
            "table {qualified} → form '{}' (key: {key_text}; replica identity {}{partitions_note}){generated_note}",
            table.form_name(),
            identity_word(&identity),
        ),
        ResolvedTable {
            schema: schema.to_string(),
            table: name.to_string(),
            primary_key: pk,
            partitioned,
        },
    ))
}

async fn primary_key(
    client: &Client,
    oid: u32,
    qualified: &str,
) -> Result<Vec<String>, SourceError> {
    Ok(client
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
        .collect())
}

/// Generated columns: what events will carry, and PostgreSQL 18's rule that
/// the replica identity must not contain unpublished generated columns
/// (`Replica identity must not contain unpublished generated columns`, raised
/// on the application's UPDATE/DELETE once the table is published).
/// Returns a note for the report line.
async fn check_generated_columns(
    client: &Client,
    oid: u32,
    qualified: &str,
    identity: &str,
    pk: &[String],
    columns: &[CatalogColumn],
    target: &Target,
) -> Result<String, SourceError> {
    let generated: Vec<&CatalogColumn> =
        columns.iter().filter(|c| !c.generated.is_empty()).collect();
    if generated.is_empty() {
        return Ok(String::new());
    }
    let names = |cols: &[&CatalogColumn]| {
        cols.iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if target.version < GENERATED_COLUMNS_VERSION {
        return Ok(format!(
            "; generated column(s) {} are not in events: PostgreSQL before 18 never publishes generated columns",
            names(&generated)
        ));
    }
    let identity_columns: Vec<String> = match identity {
        "f" => columns.iter().map(|c| c.name.clone()).collect(),
        "i" => client
            .query(
                "SELECT a.attname::text FROM pg_index i \
                 JOIN LATERAL unnest(i.indkey) AS k(attnum) ON true \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                 WHERE i.indrelid = $1 AND i.indisreplident",
                &[&oid],
            )
            .await
            .map_err(sql_err(format!(
                "cannot read the replica identity index of {qualified}"
            )))?
            .iter()
            .map(|r| r.get(0))
            .collect(),
        _ => pk.to_vec(),
    };
    let published = |c: &CatalogColumn| c.generated == "s" && target.publishes_stored_generated;
    let unpublished: Vec<&CatalogColumn> = generated
        .iter()
        .copied()
        .filter(|c| !published(c))
        .collect();
    let blocking: Vec<&CatalogColumn> = unpublished
        .iter()
        .copied()
        .filter(|c| identity_columns.contains(&c.name))
        .collect();
    if !blocking.is_empty() {
        let stored_only = blocking.iter().all(|c| c.generated == "s");
        let fix = if stored_only {
            format!(
                "run ALTER PUBLICATION {} SET (publish_generated_columns = stored) (or set source.manage_publication = true), or give the table a replica identity without generated columns (a primary key and REPLICA IDENTITY DEFAULT)",
                quote_ident(&target.publication)
            )
        } else {
            "virtual generated columns are never published: give the table a replica identity without them (a primary key and REPLICA IDENTITY DEFAULT, or USING INDEX), or make the columns STORED".to_string()
        };
        return Err(precondition(
            format!(
                "the replica identity of {qualified} ({}) includes generated column(s) {} that publication '{}' does not publish, so PostgreSQL would reject the application's UPDATEs and DELETEs of it once published",
                identity_word(identity),
                names(&blocking),
                target.publication
            ),
            fix,
        ));
    }
    if unpublished.is_empty() {
        Ok(format!(
            "; generated column(s) {} are published",
            names(&generated)
        ))
    } else {
        Ok(format!(
            "; generated column(s) {} are not in events (not published)",
            names(&unpublished)
        ))
    }
}

/// A partitioned table's current partitions must each carry a replica
/// identity compatible with the root's: partitions do not inherit `REPLICA
/// IDENTITY`, and pgoutput labels the old row by the root's setting but fills
/// it from the partition's (a FULL root over a DEFAULT partition would send
/// NULLs for the columns the partition did not log). Returns a note.
async fn check_partitions(
    client: &Client,
    oid: u32,
    qualified: &str,
    root_identity: &str,
) -> Result<String, SourceError> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, c.relreplident::text, \
                    EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) \
             FROM pg_partition_tree($1::oid::regclass) t \
             JOIN pg_class c ON c.oid = t.relid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE t.isleaf ORDER BY 1, 2",
            &[&oid],
        )
        .await
        .map_err(sql_err(format!(
            "cannot read the partitions of {qualified}"
        )))?;
    for row in &rows {
        let (schema, name, identity, has_pk): (String, String, String, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let compatible = match root_identity {
            "f" => identity == "f",
            _ => match identity.as_str() {
                "f" | "i" => true,
                "d" => has_pk,
                _ => false,
            },
        };
        if !compatible {
            let alter = format!(
                "ALTER TABLE {}.{} REPLICA IDENTITY FULL",
                quote_ident(&schema),
                quote_ident(&name)
            );
            let fix = if root_identity == "f" {
                format!("run {alter}")
            } else {
                format!("give it a primary key, or run {alter}")
            };
            return Err(precondition(
                format!(
                    "partition {schema}.{name} of {qualified} has replica identity {}{} but its root has {}",
                    identity_word(&identity),
                    if identity == "d" && !has_pk { " without a primary key" } else { "" },
                    identity_word(root_identity)
                ),
                format!(
                    "{fix} (partitions do not inherit REPLICA IDENTITY; do the same for partitions attached later)"
                ),
            ));
        }
    }
    Ok(format!(
        "; partitioned, {} partition(s), captured through the root",
        rows.len()
    ))
}

/// The operations walhook needs a publication to publish.
const PUBLISHED_OPERATIONS: &str = "insert, update, delete, truncate";

/// An existing publication as the catalog shows it.
#[derive(Debug, Clone)]
pub struct PublicationState {
    /// tables it publishes (`pg_publication_tables`: with
    /// `publish_via_partition_root` a partitioned table appears as its root,
    /// without it as its partitions)
    pub tables: Vec<(String, String)>,
    /// which of insert/update/delete/truncate it lacks
    pub missing_operations: Vec<&'static str>,
    /// `publish_via_partition_root`
    pub via_root: bool,
    /// `publish_generated_columns = stored` (always false before 18)
    pub stored_generated: bool,
}

/// Reads the publication; `None` when it does not exist.
pub async fn publication_state(
    client: &Client,
    publication: &str,
) -> Result<Option<PublicationState>, SourceError> {
    // pubgencols exists from 18 on; to_jsonb(p) reads it without naming it.
    let row = client
        .query_opt(
            "SELECT pubinsert, pubupdate, pubdelete, pubtruncate, pubviaroot, \
                    coalesce(to_jsonb(p) ->> 'pubgencols', 'n') = 's' \
             FROM pg_publication p WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(sql_err("cannot read pg_publication"))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let missing_operations = ["insert", "update", "delete", "truncate"]
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !row.get::<_, bool>(*i))
        .map(|(_, op)| op)
        .collect();
    let tables = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(sql_err("cannot read pg_publication_tables"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Ok(Some(PublicationState {
        tables,
        missing_operations,
        via_root: row.get(4),
        stored_generated: row.get(5),
    }))
}

/// Whether a publication exists.
pub async fn publication_exists(client: &Client, publication: &str) -> Result<bool, SourceError> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(sql_err("cannot read pg_publication"))?
        .is_some())
}

fn check_publication(
    cfg: &Config,
    state: Option<&PublicationState>,
    partitioned: &[String],
    version: i32,
) -> Result<String, SourceError> {
    let name = &cfg.source.publication;
    let manage = cfg.source.manage_publication;
    let wanted: Vec<(String, String)> = cfg
        .tables
        .iter()
        .map(|t| (t.schema().to_string(), t.table().to_string()))
        .collect();
    let Some(state) = state else {
        if manage {
            return Ok(format!("publication '{name}' will be created"));
        }
        return Err(precondition(
            format!("publication '{name}' does not exist"),
            format!(
                "create it: CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true) (or set source.manage_publication = true)",
                quote_ident(name),
                table_list(&wanted)
            ),
        ));
    };
    if !state.missing_operations.is_empty() && !manage {
        return Err(precondition(
            format!(
                "publication '{name}' does not publish {}",
                state.missing_operations.join(", ")
            ),
            format!(
                "run ALTER PUBLICATION {} SET (publish = '{PUBLISHED_OPERATIONS}') (or set source.manage_publication = true)",
                quote_ident(name)
            ),
        ));
    }
    if !state.via_root && !partitioned.is_empty() && !manage {
        return Err(precondition(
            format!(
                "publication '{name}' does not publish via the partition root, so changes of the partitioned table(s) {} would arrive under their partitions' names",
                partitioned.join(", ")
            ),
            format!(
                "run ALTER PUBLICATION {} SET (publish_via_partition_root = true) (or set source.manage_publication = true)",
                quote_ident(name)
            ),
        ));
    }
    let mut changes: Vec<String> = Vec::new();
    if manage {
        if !state.missing_operations.is_empty() {
            changes.push(format!("publish {}", state.missing_operations.join(", ")));
        }
        if !state.via_root {
            changes.push("publish via the partition root".into());
        }
        if version >= GENERATED_COLUMNS_VERSION && !state.stored_generated {
            changes.push("publish stored generated columns".into());
        }
    }
    // Without publish_via_partition_root a partitioned table is listed as its
    // partitions; the alteration above fixes that before tables are added.
    let missing: Vec<_> = wanted
        .iter()
        .filter(|t| !state.tables.contains(t))
        .filter(|t| state.via_root || !partitioned.contains(&format!("{}.{}", t.0, t.1)))
        .cloned()
        .collect();
    if !missing.is_empty() {
        if !manage {
            return Err(precondition(
                format!("publication '{name}' lacks {}", table_list(&missing)),
                format!(
                    "run ALTER PUBLICATION {} ADD TABLE {} (or set source.manage_publication = true)",
                    quote_ident(name),
                    table_list(&missing)
                ),
            ));
        }
        changes.push(format!("add {}", table_list(&missing)));
    }
    if changes.is_empty() {
        Ok(format!(
            "publication '{name}' publishes every configured table"
        ))
    } else {
        Ok(format!(
            "publication '{name}' will be altered to {}",
            changes.join(", ")
        ))
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

/// The `WITH (...)` options of the publication walhook manages (see the
/// module docs).
fn publication_options(version: i32) -> String {
    let mut options =
        format!("publish = '{PUBLISHED_OPERATIONS}', publish_via_partition_root = true");
    if version >= GENERATED_COLUMNS_VERSION {
        options.push_str(", publish_generated_columns = stored");
    }
    options
}

/// Creates the publication, or sets its options and adds the configured
/// tables it lacks (see the module docs).
pub async fn ensure_publication(cfg: &Config, client: &Client) -> Result<(), SourceError> {
    if !cfg.source.manage_publication {
        return Ok(());
    }
    let name = &cfg.source.publication;
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(sql_err("cannot read the server version"))?
        .get(0);
    let wanted: Vec<(String, String)> = cfg
        .tables
        .iter()
        .map(|t| (t.schema().to_string(), t.table().to_string()))
        .collect();
    let options = publication_options(version);
    if publication_state(client, name).await?.is_none() {
        let sql = format!(
            "CREATE PUBLICATION {} FOR TABLE {} WITH ({options})",
            quote_ident(name),
            table_list(&wanted)
        );
        client
            .batch_execute(&sql)
            .await
            .map_err(sql_err(format!("cannot create publication '{name}' (needs CREATE on the database and ownership of the tables)")))?;
        tracing::info!(publication = %name, "created publication");
        return Ok(());
    }
    // Options first: with publish_via_partition_root a partitioned table is
    // listed as its root, which decides what is still missing.
    let sql = format!("ALTER PUBLICATION {} SET ({options})", quote_ident(name));
    client.batch_execute(&sql).await.map_err(sql_err(format!(
        "cannot set the options of publication '{name}'"
    )))?;
    let have = publication_state(client, name)
        .await?
        .map(|p| p.tables)
        .unwrap_or_default();
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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(manage: bool) -> Config {
        let text = format!(
            "[source]\nurl = \"postgres://u:p@127.0.0.1/db\"\npublication = \"pub\"\nmanage_publication = {manage}\n\
             [[tables]]\nname = \"orders\"\n[[tables]]\nname = \"m\"\n"
        );
        crate::config::from_str_with_env(&text, "test.toml", &|_| None).unwrap()
    }

    fn state(tables: &[&str], via_root: bool, stored_generated: bool) -> PublicationState {
        PublicationState {
            tables: tables
                .iter()
                .map(|t| ("public".to_string(), t.to_string()))
                .collect(),
            missing_operations: Vec::new(),
            via_root,
            stored_generated,
        }
    }

    #[test]
    fn publication_options_follow_the_server_version() {
        assert_eq!(
            publication_options(170000),
            "publish = 'insert, update, delete, truncate', publish_via_partition_root = true"
        );
        assert_eq!(
            publication_options(180000),
            "publish = 'insert, update, delete, truncate', publish_via_partition_root = true, publish_generated_columns = stored"
        );
    }

    #[test]
    fn a_user_publication_without_via_root_is_refused_for_partitioned_tables() {
        let partitioned = ["public.m".to_string()];
        // Without publish_via_partition_root the root shows as its partitions.
        let user = state(&["orders", "m_1"], false, false);
        let err = check_publication(&config(false), Some(&user), &partitioned, 170000)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not publish via the partition root"),
            "{err}"
        );
        assert!(
            err.contains("ALTER PUBLICATION \"pub\" SET (publish_via_partition_root = true)"),
            "{err}"
        );
        // No partitioned table configured: nothing to refuse.
        let plain = state(&["orders", "m"], false, false);
        assert!(check_publication(&config(false), Some(&plain), &[], 170000).is_ok());
        // Managed: altered, and the root is not reported missing.
        let text = check_publication(&config(true), Some(&user), &partitioned, 180000).unwrap();
        assert_eq!(
            text,
            "publication 'pub' will be altered to publish via the partition root, publish stored generated columns"
        );
    }

    #[test]
    fn missing_and_complete_publications() {
        let err = check_publication(&config(false), None, &[], 170000)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("publication 'pub' does not exist"), "{err}");
        assert_eq!(
            check_publication(&config(true), None, &[], 170000).unwrap(),
            "publication 'pub' will be created"
        );
        let full = state(&["orders", "m"], true, true);
        assert_eq!(
            check_publication(&config(false), Some(&full), &[], 180000).unwrap(),
            "publication 'pub' publishes every configured table"
        );
        let lacking = state(&["orders"], true, false);
        let err = check_publication(&config(false), Some(&lacking), &[], 180000)
            .unwrap_err()
            .to_string();
        assert!(err.contains("lacks \"public\".\"m\""), "{err}");
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(
            table_list(&[("public".into(), "orders".into())]),
            "\"public\".\"orders\""
        );
    }
}
