//! Table → form mapping: pgoutput row changes become [`Event`]s.
//!
//! Pure: no I/O, no clock. The caller (the replication session) owns the
//! transaction context ([`TxContext`]) and the per-transaction event index
//! (a `u32` starting at 0 for each transaction, incremented for every event
//! it emits, form updates and truncates included), and persists form schemas.
//!
//! # Relations
//! pgoutput sends a Relation message before the first change of a table in a
//! session and again after the table changed. [`FormMapper::on_relation`]
//! turns it into a plan (which cells become which fields) cached by relation
//! id, replacing any earlier plan of that id. A relation of a table that is not
//! in `[[tables]]` is remembered as unmapped, and a change of it is an error
//! ([`MapError::UnknownTable`]): nothing is dropped silently. The Relation
//! message alone is not an error, because with `publish_via_partition_root`
//! pgoutput sends the partition's Relation beside the root's before a change
//! it publishes under the root's id (a table renamed away from its configured
//! name also lands here, and its next change stops the stream). Each form's
//! last known fields (name + type) are remembered;
//! seed them from the store with [`FormMapper::seed_schema`] so a restart does
//! not report every form as changed. `on_relation` returns a
//! [`FormSchemaChange`] when the fields differ: `initial: true` on the first
//! sighting of a form with no known schema (persist it, emit nothing), else
//! `initial: false` (persist it and emit [`FormMapper::form_update`]).
//!
//! # Projection
//! Fields keep table column order. `include` (only those columns) or
//! `exclude` applies first, then `rename`. Columns named in include/exclude/
//! rename that the table does not have are ignored (a dropped column must not
//! stop the stream; the form_update event shows it is gone). Two columns
//! renamed onto the same field name are an error.
//!
//! # Keys
//! The form's key ([`FormMapper::key_fields`], renamed field names) is the
//! configured `key`, else the primary key seeded with
//! [`FormMapper::seed_primary_key`], else the relation's replica identity
//! columns (with REPLICA IDENTITY FULL Postgres flags *every* column, so seed
//! the primary key for such tables). A configured or seeded key column that the
//! table lacks, or that include/exclude removes, is an error.
//!
//! # Rows
//! - `Cell::Text` → [`value::to_json`] with the table's `numbers` mode;
//!   invalid UTF-8 is an error. `Cell::Null` → `null`. `Cell::Binary` is an
//!   error (walhook never asks for binary values).
//! - An old tuple `'K'` carries only the replica identity columns; its other
//!   cells are placeholders and are left out (never reported as `null`).
//! - `Cell::UnchangedToast` (a TOASTed value Postgres did not resend) is
//!   filled from the old row when Postgres sent that column's old value
//!   (REPLICA IDENTITY FULL, or a key column of a `'K'` tuple); otherwise the
//!   field is left out of `data` and listed in `unchanged_toast`. A wrong
//!   value is never sent.
//! - `changed` is known only with a full old row: the fields present in both
//!   `data` and `old` whose JSON values differ.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{event_id, lsn_text, Event, EventSource, Op};
use crate::config::{NumbersMode, TableConfig};
use crate::source::pgoutput::{Cell, OldTuple, Relation, Tuple};
use crate::source::value::{self, ValueError};

/// The transaction a change belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxContext {
    /// Commit LSN of the transaction (Begin's `final_lsn`).
    pub commit_lsn: u64,
    /// Transaction id.
    pub xid: u32,
    /// Commit time, RFC 3339 UTC (`value::commit_time_rfc3339`).
    pub commit_time: String,
}

/// One field of a form: its (renamed) name and Postgres type name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormField {
    /// Field name as it appears in `data`.
    pub name: String,
    /// Postgres type name (`int4`, `_text` for arrays, ...) or `oid:<n>`.
    #[serde(rename = "type")]
    pub type_name: String,
}

/// A form whose fields differ from the last known ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormSchemaChange {
    /// The form.
    pub form: String,
    /// Schema of the table.
    pub schema: String,
    /// The table.
    pub table: String,
    /// The new fields, in order.
    pub fields: Vec<FormField>,
    /// `fields` as JSON, to persist and later pass to [`FormMapper::seed_schema`].
    pub fields_json: String,
    /// First sighting of the form with no known schema: persist, emit no event.
    pub initial: bool,
}

/// A change that cannot be turned into an event. Every variant is fatal for
/// the stream: skipping the change would lose it.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// The publication sends a table that `[[tables]]` does not configure.
    #[error("table {schema}.{table} is published but not configured; add a [[tables]] entry for it or remove it from the publication")]
    UnknownTable {
        /// Schema of the table.
        schema: String,
        /// The table.
        table: String,
    },
    /// A change refers to a relation id no Relation message announced.
    #[error("change for relation id {relation_id} arrived before its Relation message (protocol violation)")]
    UnknownRelation {
        /// The relation id.
        relation_id: u32,
    },
    /// A key column does not exist in the table.
    #[error("key column '{column}' of form '{form}' does not exist in the table; fix tables.key")]
    MissingKeyColumn {
        /// The form.
        form: String,
        /// The missing column.
        column: String,
    },
    /// A key column is removed by include/exclude.
    #[error("key column '{column}' of form '{form}' is removed by tables.include/exclude; key columns must stay in the form")]
    KeyExcluded {
        /// The form.
        form: String,
        /// The excluded column.
        column: String,
    },
    /// Two columns end up with the same field name.
    #[error("two columns of form '{form}' map to the field '{field}'; fix tables.rename")]
    DuplicateField {
        /// The form.
        form: String,
        /// The duplicated field name.
        field: String,
    },
    /// A tuple's cell count does not match its relation.
    #[error("a row of form '{form}' has {got} values but its relation has {expected} columns (protocol violation)")]
    ColumnCount {
        /// The form.
        form: String,
        /// Columns of the relation.
        expected: usize,
        /// Cells in the tuple.
        got: usize,
    },
    /// A value arrived in binary format, which walhook never requests.
    #[error(
        "column '{column}' of form '{form}' arrived in binary format, which walhook never requests"
    )]
    BinaryValue {
        /// The form.
        form: String,
        /// The column.
        column: String,
    },
    /// A text value is not UTF-8 (the database encoding must be UTF8).
    #[error(
        "column '{column}' of form '{form}' is not valid UTF-8; the database encoding must be UTF8"
    )]
    InvalidUtf8 {
        /// The form.
        form: String,
        /// The column.
        column: String,
    },
    /// A value cannot be converted to JSON.
    #[error("column '{column}' of form '{form}': {source}")]
    Value {
        /// The form.
        form: String,
        /// The column.
        column: String,
        /// The conversion error.
        #[source]
        source: ValueError,
    },
}

/// Truncate message flag: `TRUNCATE ... CASCADE`.
const TRUNCATE_CASCADE: u8 = 1;
/// Truncate message flag: `TRUNCATE ... RESTART IDENTITY`.
const TRUNCATE_RESTART_IDENTITY: u8 = 2;

/// How one relation column becomes a field.
#[derive(Debug, Clone)]
struct FieldPlan {
    /// Position of the cell in the tuple.
    column: usize,
    /// Column name in the table (for errors).
    column_name: String,
    /// Field name in events.
    name: String,
    type_oid: u32,
    /// Part of the replica identity: present in a `'K'` old tuple.
    in_identity: bool,
}

/// The cached plan of one relation.
#[derive(Debug, Clone)]
struct RelationPlan {
    form: String,
    schema: String,
    table: String,
    numbers: NumbersMode,
    column_count: usize,
    fields: Vec<FieldPlan>,
}

/// Which cells of a tuple carry values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Present {
    /// A whole row.
    All,
    /// A `'K'` tuple: only replica identity columns.
    IdentityOnly,
}

/// A projected row: the fields with values, and those that were unchanged TOAST.
struct Row {
    values: Map<String, Value>,
    toast: Vec<String>,
}

/// Maps row changes of configured tables to form events (see the module docs).
#[derive(Debug, Clone)]
pub struct FormMapper {
    tables: Vec<TableConfig>,
    primary_keys: HashMap<(String, String), Vec<String>>,
    type_names: HashMap<u32, String>,
    relations: HashMap<u32, RelationPlan>,
    /// relation ids announced for tables that are not configured
    unmapped: HashMap<u32, (String, String)>,
    known_fields: HashMap<String, Vec<FormField>>,
    key_fields: HashMap<String, Vec<String>>,
}

impl FormMapper {
    /// A mapper for the configured tables, with no known relations or schemas.
    pub fn new(tables: &[TableConfig]) -> Self {
        FormMapper {
            tables: tables.to_vec(),
            primary_keys: HashMap::new(),
            type_names: HashMap::new(),
            relations: HashMap::new(),
            unmapped: HashMap::new(),
            known_fields: HashMap::new(),
            key_fields: HashMap::new(),
        }
    }

    /// Records the last known fields of `form` (as persisted from
    /// [`FormSchemaChange::fields_json`]). A stored schema that cannot be
    /// read is forgotten: the form's next Relation is then treated as a first
    /// sighting (re-persisted, no form_update event) rather than stopping the
    /// stream over metadata.
    pub fn seed_schema(&mut self, form: &str, fields_json: &str) {
        match serde_json::from_str::<Vec<FormField>>(fields_json) {
            Ok(fields) => {
                self.known_fields.insert(form.to_string(), fields);
            }
            Err(_) => {
                self.known_fields.remove(form);
            }
        }
    }

    /// Forgets every known schema and seeds the committed ones (form →
    /// fields JSON). Capture calls this at the start of each replication
    /// session: a transaction cut off by a disconnect may have changed the
    /// in-memory schema, and when Postgres sends it again it must be mapped
    /// exactly as the first time (same `form_update`, same event indexes).
    pub fn reset_schemas<'a>(&mut self, committed: impl IntoIterator<Item = (&'a str, &'a str)>) {
        self.known_fields.clear();
        for (form, fields_json) in committed {
            self.seed_schema(form, fields_json);
        }
    }

    /// Records a table's primary key (from the catalog) as its default key.
    pub fn seed_primary_key(&mut self, schema: &str, table: &str, columns: Vec<String>) {
        self.primary_keys
            .insert((schema.to_string(), table.to_string()), columns);
    }

    /// Records the name of a non-builtin type from a pgoutput Type message
    /// (Postgres sends it before the Relation that uses the type).
    pub fn on_type(&mut self, type_oid: u32, schema: &str, name: &str) {
        let text = match schema {
            "pg_catalog" | "public" | "" => name.to_string(),
            _ => format!("{schema}.{name}"),
        };
        self.type_names.insert(type_oid, text);
    }

    /// Takes a Relation message: caches its plan (replacing any earlier one of
    /// the same id) and returns the form's new fields when they differ from the
    /// last known ones (`initial` when none were known).
    /// A table that is not configured is remembered as unmapped (`Ok(None)`);
    /// a change of it is then [`MapError::UnknownTable`].
    pub fn on_relation(&mut self, rel: Relation) -> Result<Option<FormSchemaChange>, MapError> {
        let Some(table) = self
            .tables
            .iter()
            .find(|t| t.schema() == rel.schema && t.table() == rel.name)
        else {
            self.relations.remove(&rel.id);
            self.unmapped.insert(rel.id, (rel.schema, rel.name));
            return Ok(None);
        };
        self.unmapped.remove(&rel.id);
        let form = table.form_name().to_string();

        let mut fields: Vec<FieldPlan> = Vec::new();
        for (i, col) in rel.columns.iter().enumerate() {
            if !projected(table, &col.name) {
                continue;
            }
            let name = table
                .rename
                .get(&col.name)
                .cloned()
                .unwrap_or_else(|| col.name.clone());
            if fields.iter().any(|f| f.name == name) {
                return Err(MapError::DuplicateField { form, field: name });
            }
            fields.push(FieldPlan {
                column: i,
                column_name: col.name.clone(),
                name,
                type_oid: col.type_oid,
                in_identity: col.is_key,
            });
        }

        let explicit_key = table.key.clone().or_else(|| {
            self.primary_keys
                .get(&(rel.schema.clone(), rel.name.clone()))
                .cloned()
        });
        let key = match explicit_key {
            Some(columns) => key_from_columns(&form, &rel, &fields, &columns)?,
            None if rel.replica_identity == b'f' => fields
                .iter()
                .filter(|f| f.in_identity)
                .map(|f| f.name.clone())
                .collect(),
            None => {
                let columns: Vec<String> = rel
                    .columns
                    .iter()
                    .filter(|c| c.is_key)
                    .map(|c| c.name.clone())
                    .collect();
                key_from_columns(&form, &rel, &fields, &columns)?
            }
        };

        let form_fields: Vec<FormField> = fields
            .iter()
            .map(|f| FormField {
                name: f.name.clone(),
                type_name: self.type_text(f.type_oid),
            })
            .collect();
        let change = match self.known_fields.get(&form) {
            Some(known) if *known == form_fields => None,
            known => Some(FormSchemaChange {
                form: form.clone(),
                schema: rel.schema.clone(),
                table: rel.name.clone(),
                fields_json: fields_to_json(&form_fields),
                fields: form_fields.clone(),
                initial: known.is_none(),
            }),
        };

        self.known_fields.insert(form.clone(), form_fields);
        self.key_fields.insert(form.clone(), key);
        self.relations.insert(
            rel.id,
            RelationPlan {
                form,
                schema: rel.schema,
                table: rel.name,
                numbers: table.numbers,
                column_count: rel.columns.len(),
                fields,
            },
        );
        Ok(change)
    }

    /// The last known fields of `form` as JSON (what [`Self::seed_schema`] takes).
    pub fn fields_json(&self, form: &str) -> Option<String> {
        self.known_fields.get(form).map(|f| fields_to_json(f))
    }

    /// The key of `form` as field names (renamed), once its relation is known.
    pub fn key_fields(&self, form: &str) -> Option<&[String]> {
        self.key_fields.get(form).map(Vec::as_slice)
    }

    /// The row key of a row event as text: the values of the form's
    /// [`Self::key_fields`] in `data`, joined by `:` (strings as they are,
    /// other values as JSON text, so numbers keep Postgres' digits). None for
    /// events without a row (truncate, form_update) or a key field missing
    /// from `data`. Stored beside the event for formats that address rows by
    /// key (jiandaoyun `_id`), because the event JSON does not say which
    /// fields are the key.
    pub fn row_key(&self, event: &Event) -> Option<String> {
        if !matches!(event.op, Op::DataCreate | Op::DataUpdate | Op::DataRemove) {
            return None;
        }
        let fields = self.key_fields(&event.form)?;
        if fields.is_empty() {
            return None;
        }
        let parts = fields
            .iter()
            .map(|field| match event.data.get(field)? {
                Value::String(text) => Some(text.clone()),
                other => Some(other.to_string()),
            })
            .collect::<Option<Vec<String>>>()?;
        Some(parts.join(":"))
    }

    /// A `data_create` event for an Insert of `new` into relation `relation_id`.
    pub fn insert(
        &self,
        relation_id: u32,
        new: &Tuple,
        ctx: &TxContext,
        index: u32,
    ) -> Result<Event, MapError> {
        let plan = self.plan(relation_id)?;
        let row = project(plan, new, Present::All)?;
        let mut event = base_event(plan, Op::DataCreate, ctx, index);
        event.data = row.values;
        event.unchanged_toast = non_empty(row.toast);
        Ok(event)
    }

    /// A `data_update` event for an Update of relation `relation_id`; `old` is
    /// what Postgres sent of the previous row (`None` with REPLICA IDENTITY
    /// DEFAULT/INDEX when the key did not change).
    pub fn update(
        &self,
        relation_id: u32,
        old: Option<&OldTuple>,
        new: &Tuple,
        ctx: &TxContext,
        index: u32,
    ) -> Result<Event, MapError> {
        let plan = self.plan(relation_id)?;
        // The old row's own unchanged-TOAST cells are just left out of `old`.
        let old_values = match old {
            None => None,
            Some(OldTuple::Key(t)) => Some(project(plan, t, Present::IdentityOnly)?.values),
            Some(OldTuple::Full(t)) => Some(project(plan, t, Present::All)?.values),
        };
        let new_row = project(plan, new, Present::All)?;

        let mut data = Map::new();
        let mut toast = Vec::new();
        let mut new_values = new_row.values;
        for field in &plan.fields {
            if let Some(v) = new_values.remove(&field.name) {
                data.insert(field.name.clone(), v);
            } else if let Some(v) = old_values.as_ref().and_then(|o| o.get(&field.name)) {
                data.insert(field.name.clone(), v.clone());
            } else {
                toast.push(field.name.clone());
            }
        }

        let changed = match (old, &old_values) {
            (Some(OldTuple::Full(_)), Some(old_map)) => Some(
                plan.fields
                    .iter()
                    .filter(|f| match (data.get(&f.name), old_map.get(&f.name)) {
                        (Some(new), Some(old)) => new != old,
                        _ => false,
                    })
                    .map(|f| f.name.clone())
                    .collect(),
            ),
            _ => None,
        };

        let mut event = base_event(plan, Op::DataUpdate, ctx, index);
        event.data = data;
        event.old = old_values;
        event.changed = changed;
        event.unchanged_toast = non_empty(toast);
        Ok(event)
    }

    /// A `data_remove` event for a Delete from relation `relation_id`: `data`
    /// is the old row as far as Postgres sent it (key columns, or all with
    /// REPLICA IDENTITY FULL).
    pub fn delete(
        &self,
        relation_id: u32,
        old: &OldTuple,
        ctx: &TxContext,
        index: u32,
    ) -> Result<Event, MapError> {
        let plan = self.plan(relation_id)?;
        let row = match old {
            OldTuple::Key(t) => project(plan, t, Present::IdentityOnly)?,
            OldTuple::Full(t) => project(plan, t, Present::All)?,
        };
        let mut event = base_event(plan, Op::DataRemove, ctx, index);
        event.data = row.values;
        event.unchanged_toast = non_empty(row.toast);
        Ok(event)
    }

    /// One `data_truncate` event per relation of a Truncate message, numbered
    /// `first_index`, `first_index + 1`, ...; `options` is the message's flag
    /// byte, shown as `data = {"cascade": bool, "restart_identity": bool}`.
    pub fn truncate(
        &self,
        relation_ids: &[u32],
        options: u8,
        ctx: &TxContext,
        first_index: u32,
    ) -> Result<Vec<Event>, MapError> {
        let mut data = Map::new();
        data.insert(
            "cascade".into(),
            Value::Bool(options & TRUNCATE_CASCADE != 0),
        );
        data.insert(
            "restart_identity".into(),
            Value::Bool(options & TRUNCATE_RESTART_IDENTITY != 0),
        );
        relation_ids
            .iter()
            .zip(first_index..)
            .map(|(&id, index)| {
                let plan = self.plan(id)?;
                let mut event = base_event(plan, Op::DataTruncate, ctx, index);
                event.data = data.clone();
                Ok(event)
            })
            .collect()
    }

    /// The `form_update` event of a (non-initial) schema change:
    /// `data = {"form": ..., "fields": [{"name": ..., "type": ...}]}`.
    pub fn form_update(&self, change: &FormSchemaChange, ctx: &TxContext, index: u32) -> Event {
        let fields = change
            .fields
            .iter()
            .map(|f| {
                let mut m = Map::new();
                m.insert("name".into(), Value::String(f.name.clone()));
                m.insert("type".into(), Value::String(f.type_name.clone()));
                Value::Object(m)
            })
            .collect();
        let mut data = Map::new();
        data.insert("form".into(), Value::String(change.form.clone()));
        data.insert("fields".into(), Value::Array(fields));
        Event {
            id: event_id(ctx.commit_lsn, index),
            op: Op::FormUpdate,
            form: change.form.clone(),
            data,
            old: None,
            changed: None,
            unchanged_toast: None,
            source: source(&change.schema, &change.table, ctx),
        }
    }

    fn plan(&self, relation_id: u32) -> Result<&RelationPlan, MapError> {
        self.relations
            .get(&relation_id)
            .ok_or_else(|| match self.unmapped.get(&relation_id) {
                Some((schema, table)) => MapError::UnknownTable {
                    schema: schema.clone(),
                    table: table.clone(),
                },
                None => MapError::UnknownRelation { relation_id },
            })
    }

    fn type_text(&self, type_oid: u32) -> String {
        match builtin_type_name(type_oid) {
            Some(name) => name.to_string(),
            None => self
                .type_names
                .get(&type_oid)
                .cloned()
                .unwrap_or_else(|| format!("oid:{type_oid}")),
        }
    }
}

/// Whether include/exclude keep `column`.
fn projected(table: &TableConfig, column: &str) -> bool {
    match &table.include {
        Some(include) => include.iter().any(|c| c == column),
        None => !table.exclude.iter().any(|c| c == column),
    }
}

/// Resolves key `columns` to field names; each must exist and be projected.
fn key_from_columns(
    form: &str,
    rel: &Relation,
    fields: &[FieldPlan],
    columns: &[String],
) -> Result<Vec<String>, MapError> {
    columns
        .iter()
        .map(|column| {
            if !rel.columns.iter().any(|c| &c.name == column) {
                return Err(MapError::MissingKeyColumn {
                    form: form.to_string(),
                    column: column.clone(),
                });
            }
            fields
                .iter()
                .find(|f| &f.column_name == column)
                .map(|f| f.name.clone())
                .ok_or_else(|| MapError::KeyExcluded {
                    form: form.to_string(),
                    column: column.clone(),
                })
        })
        .collect()
}

/// Converts the projected cells of `tuple` that carry values.
fn project(plan: &RelationPlan, tuple: &Tuple, present: Present) -> Result<Row, MapError> {
    if tuple.0.len() != plan.column_count {
        return Err(MapError::ColumnCount {
            form: plan.form.clone(),
            expected: plan.column_count,
            got: tuple.0.len(),
        });
    }
    let mut row = Row {
        values: Map::with_capacity(plan.fields.len()),
        toast: Vec::new(),
    };
    for field in &plan.fields {
        if present == Present::IdentityOnly && !field.in_identity {
            continue;
        }
        let Some(cell) = tuple.0.get(field.column) else {
            continue; // unreachable: the length was checked above
        };
        match cell {
            Cell::Null => {
                row.values.insert(field.name.clone(), Value::Null);
            }
            Cell::UnchangedToast => row.toast.push(field.name.clone()),
            Cell::Text(bytes) => {
                let text = std::str::from_utf8(bytes).map_err(|_| MapError::InvalidUtf8 {
                    form: plan.form.clone(),
                    column: field.column_name.clone(),
                })?;
                let value =
                    value::to_json(field.type_oid, text, plan.numbers).map_err(|source| {
                        MapError::Value {
                            form: plan.form.clone(),
                            column: field.column_name.clone(),
                            source,
                        }
                    })?;
                row.values.insert(field.name.clone(), value);
            }
            Cell::Binary(_) => {
                return Err(MapError::BinaryValue {
                    form: plan.form.clone(),
                    column: field.column_name.clone(),
                })
            }
        }
    }
    Ok(row)
}

fn base_event(plan: &RelationPlan, op: Op, ctx: &TxContext, index: u32) -> Event {
    Event {
        id: event_id(ctx.commit_lsn, index),
        op,
        form: plan.form.clone(),
        data: Map::new(),
        old: None,
        changed: None,
        unchanged_toast: None,
        source: source(&plan.schema, &plan.table, ctx),
    }
}

fn source(schema: &str, table: &str, ctx: &TxContext) -> EventSource {
    EventSource {
        schema: schema.to_string(),
        table: table.to_string(),
        lsn: lsn_text(ctx.commit_lsn),
        xid: ctx.xid,
        commit_time: ctx.commit_time.clone(),
    }
}

fn non_empty(list: Vec<String>) -> Option<Vec<String>> {
    (!list.is_empty()).then_some(list)
}

fn fields_to_json(fields: &[FormField]) -> String {
    // Serializing plain strings into a String cannot fail; fall back to an
    // empty list rather than panic.
    serde_json::to_string(fields).unwrap_or_else(|_| "[]".to_string())
}

/// The `pg_type.typname` of builtin types (arrays as `_elem`), as used in
/// form_update fields; `None` for other OIDs.
pub fn builtin_type_name(type_oid: u32) -> Option<&'static str> {
    Some(match type_oid {
        16 => "bool",
        17 => "bytea",
        18 => "char",
        19 => "name",
        20 => "int8",
        21 => "int2",
        23 => "int4",
        25 => "text",
        26 => "oid",
        114 => "json",
        142 => "xml",
        199 => "_json",
        600 => "point",
        650 => "cidr",
        700 => "float4",
        701 => "float8",
        774 => "macaddr8",
        790 => "money",
        791 => "_money",
        829 => "macaddr",
        869 => "inet",
        1000 => "_bool",
        1001 => "_bytea",
        1002 => "_char",
        1003 => "_name",
        1005 => "_int2",
        1007 => "_int4",
        1009 => "_text",
        1014 => "_bpchar",
        1015 => "_varchar",
        1016 => "_int8",
        1021 => "_float4",
        1022 => "_float8",
        1028 => "_oid",
        1041 => "_inet",
        1042 => "bpchar",
        1043 => "varchar",
        1082 => "date",
        1083 => "time",
        1114 => "timestamp",
        1115 => "_timestamp",
        1182 => "_date",
        1183 => "_time",
        1184 => "timestamptz",
        1185 => "_timestamptz",
        1186 => "interval",
        1187 => "_interval",
        1231 => "_numeric",
        1266 => "timetz",
        1270 => "_timetz",
        1560 => "bit",
        1562 => "varbit",
        1700 => "numeric",
        2950 => "uuid",
        2951 => "_uuid",
        3220 => "pg_lsn",
        3614 => "tsvector",
        3802 => "jsonb",
        3807 => "_jsonb",
        3904 => "int4range",
        3906 => "numrange",
        3908 => "tsrange",
        3910 => "tstzrange",
        3912 => "daterange",
        3926 => "int8range",
        _ => return None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;

    use super::*;
    use crate::source::pgoutput::Column;

    const INT4: u32 = 23;
    const INT8: u32 = 20;
    const TEXT: u32 = 25;

    fn ctx() -> TxContext {
        TxContext {
            commit_lsn: 0x16B3748,
            xid: 731,
            commit_time: "2026-11-22T04:20:00.123456Z".into(),
        }
    }

    fn table(name: &str) -> TableConfig {
        TableConfig {
            name: name.into(),
            ..TableConfig::default()
        }
    }

    fn col(name: &str, type_oid: u32, is_key: bool) -> Column {
        Column {
            name: name.into(),
            type_oid,
            type_modifier: -1,
            is_key,
        }
    }

    /// public.orders: id int4 (key), status text, total int8, note text.
    fn orders_rel(identity: u8) -> Relation {
        let full = identity == b'f';
        Relation {
            id: 16384,
            schema: "public".into(),
            name: "orders".into(),
            replica_identity: identity,
            columns: vec![
                col("id", INT4, true),
                col("status", TEXT, full),
                col("total", INT8, full),
                col("note", TEXT, full),
            ],
        }
    }

    fn t(s: &str) -> Cell {
        Cell::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn tuple(cells: Vec<Cell>) -> Tuple {
        Tuple(cells)
    }

    fn mapper_with(tables: &[TableConfig], rel: Relation) -> FormMapper {
        let mut m = FormMapper::new(tables);
        m.on_relation(rel).unwrap();
        m
    }

    fn orders(identity: u8) -> FormMapper {
        mapper_with(&[table("orders")], orders_rel(identity))
    }

    /// Asserts the exact serialization (including key order) of `event`.
    fn assert_json(event: &Event, expected: &str) {
        let expected: Value = serde_json::from_str(expected).unwrap();
        assert_eq!(
            String::from_utf8(serde_json::to_vec(event).unwrap()).unwrap(),
            serde_json::to_string(&expected).unwrap()
        );
    }

    const SRC: &str = r#""source":{"schema":"public","table":"orders","lsn":"0/16B3748","xid":731,"commit_time":"2026-11-22T04:20:00.123456Z"}"#;

    #[test]
    fn insert_maps_all_columns() {
        let m = orders(b'd');
        let new = tuple(vec![t("42"), t("new"), t("12000"), Cell::Null]);
        let e = m.insert(16384, &new, &ctx(), 3).unwrap();
        assert_json(
            &e,
            &format!(
                r#"{{"id":"00000000016B3748-0003","op":"data_create","form":"orders","data":{{"id":42,"status":"new","total":12000,"note":null}},{SRC}}}"#
            ),
        );
    }

    #[test]
    fn update_default_identity_without_old() {
        let m = orders(b'd');
        let new = tuple(vec![t("42"), t("paid"), t("12000"), t("x")]);
        let e = m.update(16384, None, &new, &ctx(), 0).unwrap();
        assert_json(
            &e,
            &format!(
                r#"{{"id":"00000000016B3748-0000","op":"data_update","form":"orders","data":{{"id":42,"status":"paid","total":12000,"note":"x"}},{SRC}}}"#
            ),
        );
    }

    #[test]
    fn update_with_key_change_has_key_only_old() {
        let m = orders(b'd');
        // A 'K' tuple: non-key cells are null placeholders and must not appear.
        let old = OldTuple::Key(tuple(vec![t("41"), Cell::Null, Cell::Null, Cell::Null]));
        let new = tuple(vec![t("42"), t("paid"), t("12000"), Cell::Null]);
        let e = m.update(16384, Some(&old), &new, &ctx(), 1).unwrap();
        assert_json(
            &e,
            &format!(
                r#"{{"id":"00000000016B3748-0001","op":"data_update","form":"orders","data":{{"id":42,"status":"paid","total":12000,"note":null}},"old":{{"id":41}},{SRC}}}"#
            ),
        );
    }

    #[test]
    fn update_full_identity_lists_changed_fields() {
        let m = orders(b'f');
        let old = OldTuple::Full(tuple(vec![t("42"), t("new"), t("12000"), Cell::Null]));
        let new = tuple(vec![t("42"), t("paid"), t("12050"), Cell::Null]);
        let e = m.update(16384, Some(&old), &new, &ctx(), 2).unwrap();
        assert_json(
            &e,
            &format!(
                r#"{{"id":"00000000016B3748-0002","op":"data_update","form":"orders","data":{{"id":42,"status":"paid","total":12050,"note":null}},"old":{{"id":42,"status":"new","total":12000,"note":null}},"changed":["status","total"],{SRC}}}"#
            ),
        );
    }

    #[test]
    fn update_full_identity_with_nothing_changed_has_empty_changed() {
        let m = orders(b'f');
        let row = vec![t("42"), t("new"), t("1"), Cell::Null];
        let old = OldTuple::Full(tuple(row.clone()));
        let e = m.update(16384, Some(&old), &tuple(row), &ctx(), 0).unwrap();
        assert_eq!(e.changed, Some(vec![]));
    }

    #[test]
    fn unchanged_toast_is_filled_from_full_old() {
        let m = orders(b'f');
        let old = OldTuple::Full(tuple(vec![t("42"), t("new"), t("1"), t("long text")]));
        let new = tuple(vec![t("42"), t("paid"), t("1"), Cell::UnchangedToast]);
        let e = m.update(16384, Some(&old), &new, &ctx(), 0).unwrap();
        assert_json(
            &e,
            &format!(
                r#"{{"id":"00000000016B3748-0000","op":"data_update","form":"orders","data":{{"id":42,"status":"paid","total":1,"note":"long text"}},"old":{{"id":42,"status":"new","total":1,"note":"long text"}},"changed":["status"],{SRC}}}"#
            ),
        );
    }

    #[test]
    fn unchanged_toast_without_old_is_omitted_and_listed() {
        let m = orders(b'd');
        let new = tuple(vec![t("42"), t("paid"), t("1"), Cell::UnchangedToast]);
        let e = m.update(16384, None, &new, &ctx(), 0).unwrap();
        assert_json(
            &e,
            &format!(
                r#"{{"id":"00000000016B3748-0000","op":"data_update","form":"orders","data":{{"id":42,"status":"paid","total":1}},"unchanged_toast":["note"],{SRC}}}"#
            ),
        );
    }

    #[test]
    fn unchanged_toast_with_key_old_is_not_filled_from_placeholders() {
        let m = orders(b'd');
        let old = OldTuple::Key(tuple(vec![t("41"), Cell::Null, Cell::Null, Cell::Null]));
        let new = tuple(vec![t("42"), t("paid"), t("1"), Cell::UnchangedToast]);
        let e = m.update(16384, Some(&old), &new, &ctx(), 0).unwrap();
        assert!(!e.data.contains_key("note"));
        assert_eq!(e.unchanged_toast, Some(vec!["note".to_string()]));
        assert_eq!(e.changed, None);
    }

    #[test]
    fn unchanged_toast_key_column_is_filled_from_key_old() {
        // Composite key (id, status); id changed, status is TOASTed and unchanged.
        let mut rel = orders_rel(b'd');
        rel.columns[1].is_key = true;
        let m = mapper_with(&[table("orders")], rel);
        let old = OldTuple::Key(tuple(vec![t("41"), t("long"), Cell::Null, Cell::Null]));
        let new = tuple(vec![
            t("42"),
            Cell::UnchangedToast,
            t("1"),
            Cell::UnchangedToast,
        ]);
        let e = m.update(16384, Some(&old), &new, &ctx(), 0).unwrap();
        assert_json(
            &e,
            &format!(
                r#"{{"id":"00000000016B3748-0000","op":"data_update","form":"orders","data":{{"id":42,"status":"long","total":1}},"old":{{"id":41,"status":"long"}},"unchanged_toast":["note"],{SRC}}}"#
            ),
        );
    }

    #[test]
    fn unchanged_toast_in_full_old_too_is_not_changed() {
        let m = orders(b'f');
        let old = OldTuple::Full(tuple(vec![t("42"), t("new"), t("1"), Cell::UnchangedToast]));
        let new = tuple(vec![t("42"), t("paid"), t("1"), Cell::UnchangedToast]);
        let e = m.update(16384, Some(&old), &new, &ctx(), 0).unwrap();
        assert_json(
            &e,
            &format!(
                r#"{{"id":"00000000016B3748-0000","op":"data_update","form":"orders","data":{{"id":42,"status":"paid","total":1}},"old":{{"id":42,"status":"new","total":1}},"changed":["status"],"unchanged_toast":["note"],{SRC}}}"#
            ),
        );
    }

    #[test]
    fn delete_with_key_identity_has_key_only_data() {
        let m = orders(b'd');
        let old = OldTuple::Key(tuple(vec![t("42"), Cell::Null, Cell::Null, Cell::Null]));
        let e = m.delete(16384, &old, &ctx(), 4).unwrap();
        assert_json(
            &e,
            &format!(
                r#"{{"id":"00000000016B3748-0004","op":"data_remove","form":"orders","data":{{"id":42}},{SRC}}}"#
            ),
        );
    }

    #[test]
    fn delete_with_full_identity_has_whole_row() {
        let m = orders(b'f');
        let old = OldTuple::Full(tuple(vec![t("42"), t("paid"), t("7"), Cell::Null]));
        let e = m.delete(16384, &old, &ctx(), 0).unwrap();
        assert_json(
            &e,
            &format!(
                r#"{{"id":"00000000016B3748-0000","op":"data_remove","form":"orders","data":{{"id":42,"status":"paid","total":7,"note":null}},{SRC}}}"#
            ),
        );
    }

    #[test]
    fn include_rename_and_key() {
        let cfg = TableConfig {
            name: "public.orders".into(),
            form: Some("sales".into()),
            key: Some(vec!["total".into()]),
            include: Some(vec!["total".into(), "status".into()]),
            rename: BTreeMap::from([("total".to_string(), "amount".to_string())]),
            ..TableConfig::default()
        };
        let m = mapper_with(&[cfg], orders_rel(b'd'));
        assert_eq!(m.key_fields("sales"), Some(&["amount".to_string()][..]));
        let new = tuple(vec![t("42"), t("paid"), t("5"), t("x")]);
        let e = m.insert(16384, &new, &ctx(), 0).unwrap();
        assert_json(
            &e,
            &format!(
                r#"{{"id":"00000000016B3748-0000","op":"data_create","form":"sales","data":{{"status":"paid","amount":5}},{SRC}}}"#
            ),
        );
    }

    #[test]
    fn exclude_and_rename_apply_to_old_and_changed() {
        let cfg = TableConfig {
            exclude: vec!["note".into()],
            rename: BTreeMap::from([("status".to_string(), "state".to_string())]),
            ..table("orders")
        };
        let m = mapper_with(&[cfg], orders_rel(b'f'));
        // FULL identity, no seeded primary key: every projected column.
        assert_eq!(
            m.key_fields("orders").unwrap(),
            ["id", "state", "total"].map(String::from)
        );
        let old = OldTuple::Full(tuple(vec![t("1"), t("a"), t("2"), t("secret")]));
        let new = tuple(vec![t("1"), t("b"), t("2"), t("other")]);
        let e = m.update(16384, Some(&old), &new, &ctx(), 0).unwrap();
        assert_json(
            &e,
            &format!(
                r#"{{"id":"00000000016B3748-0000","op":"data_update","form":"orders","data":{{"id":1,"state":"b","total":2}},"old":{{"id":1,"state":"a","total":2}},"changed":["state"],{SRC}}}"#
            ),
        );
    }

    #[test]
    fn row_key_joins_key_values_with_colons() {
        let cfg = TableConfig {
            key: Some(vec!["status".into(), "id".into()]),
            ..table("orders")
        };
        let m = mapper_with(&[cfg], orders_rel(b'd'));
        let new = tuple(vec![t("42"), t("new"), t("7"), t("n")]);
        let e = m.insert(16384, &new, &ctx(), 0).unwrap();
        assert_eq!(m.row_key(&e).as_deref(), Some("new:42"));
        let e = m.truncate(&[16384], 0, &ctx(), 1).unwrap().remove(0);
        assert_eq!(m.row_key(&e), None);
        let m = orders(b'd');
        let e = m.insert(16384, &new, &ctx(), 0).unwrap();
        assert_eq!(m.row_key(&e).as_deref(), Some("42"));
    }

    #[test]
    fn key_defaults_to_identity_flags_or_seeded_primary_key() {
        let m = orders(b'd');
        assert_eq!(m.key_fields("orders"), Some(&["id".to_string()][..]));
        // REPLICA IDENTITY FULL flags every column; the seeded primary key wins.
        let m = orders(b'f');
        assert_eq!(m.key_fields("orders").unwrap().len(), 4);
        let mut m = FormMapper::new(&[table("orders")]);
        m.seed_primary_key("public", "orders", vec!["id".into()]);
        m.on_relation(orders_rel(b'f')).unwrap();
        assert_eq!(m.key_fields("orders"), Some(&["id".to_string()][..]));
    }

    #[test]
    fn configured_key_column_missing_is_an_error() {
        let cfg = TableConfig {
            key: Some(vec!["order_no".into()]),
            ..table("orders")
        };
        let err = FormMapper::new(&[cfg])
            .on_relation(orders_rel(b'd'))
            .unwrap_err();
        assert!(
            matches!(&err, MapError::MissingKeyColumn { form, column } if form == "orders" && column == "order_no")
        );
        let text = err.to_string();
        assert!(
            text.contains("order_no") && text.contains("orders"),
            "{text}"
        );
    }

    #[test]
    fn excluded_key_column_is_an_error() {
        let cfg = TableConfig {
            exclude: vec!["id".into()],
            ..table("orders")
        };
        let err = FormMapper::new(&[cfg])
            .on_relation(orders_rel(b'd'))
            .unwrap_err();
        assert!(matches!(err, MapError::KeyExcluded { column, .. } if column == "id"));
    }

    #[test]
    fn rename_collision_is_an_error() {
        let cfg = TableConfig {
            rename: BTreeMap::from([("note".to_string(), "status".to_string())]),
            ..table("orders")
        };
        let err = FormMapper::new(&[cfg])
            .on_relation(orders_rel(b'd'))
            .unwrap_err();
        assert!(matches!(err, MapError::DuplicateField { field, .. } if field == "status"));
    }

    #[test]
    fn numbers_string_quotes_int8_only() {
        let cfg = TableConfig {
            numbers: NumbersMode::String,
            ..table("orders")
        };
        let m = mapper_with(&[cfg], orders_rel(b'd'));
        let new = tuple(vec![t("42"), t("new"), t("12345678901234567"), Cell::Null]);
        let e = m.insert(16384, &new, &ctx(), 0).unwrap();
        assert_eq!(
            serde_json::to_string(&e.data).unwrap(),
            r#"{"id":42,"status":"new","total":"12345678901234567","note":null}"#
        );
    }

    #[test]
    fn truncate_of_two_tables_gives_one_event_each() {
        let mut m = FormMapper::new(&[table("orders"), table("shop.items")]);
        m.on_relation(orders_rel(b'd')).unwrap();
        m.on_relation(Relation {
            id: 16390,
            schema: "shop".into(),
            name: "items".into(),
            replica_identity: b'd',
            columns: vec![col("sku", TEXT, true)],
        })
        .unwrap();
        // TRUNCATE orders, shop.items CASCADE
        let events = m.truncate(&[16384, 16390], 1, &ctx(), 5).unwrap();
        assert_eq!(events.len(), 2);
        assert_json(
            &events[0],
            &format!(
                r#"{{"id":"00000000016B3748-0005","op":"data_truncate","form":"orders","data":{{"cascade":true,"restart_identity":false}},{SRC}}}"#
            ),
        );
        assert_json(
            &events[1],
            r#"{"id":"00000000016B3748-0006","op":"data_truncate","form":"items","data":{"cascade":true,"restart_identity":false},"source":{"schema":"shop","table":"items","lsn":"0/16B3748","xid":731,"commit_time":"2026-11-22T04:20:00.123456Z"}}"#,
        );
        // TRUNCATE orders RESTART IDENTITY; both flags
        let flags = |options: u8| {
            let e = m.truncate(&[16384], options, &ctx(), 0).unwrap().remove(0);
            (
                e.data["cascade"].clone(),
                e.data["restart_identity"].clone(),
            )
        };
        assert_eq!(flags(0), (Value::Bool(false), Value::Bool(false)));
        assert_eq!(flags(2), (Value::Bool(false), Value::Bool(true)));
        assert_eq!(flags(3), (Value::Bool(true), Value::Bool(true)));
        assert!(matches!(
            m.truncate(&[16384, 1], 0, &ctx(), 0),
            Err(MapError::UnknownRelation { relation_id: 1 })
        ));
    }

    #[test]
    fn first_sighting_is_initial_then_same_columns_give_none() {
        let mut m = FormMapper::new(&[table("orders")]);
        let change = m.on_relation(orders_rel(b'd')).unwrap().unwrap();
        assert!(change.initial);
        assert_eq!(change.form, "orders");
        assert_eq!(
            change.fields_json,
            r#"[{"name":"id","type":"int4"},{"name":"status","type":"text"},{"name":"total","type":"int8"},{"name":"note","type":"text"}]"#
        );
        assert_eq!(m.fields_json("orders"), Some(change.fields_json.clone()));
        assert_eq!(m.on_relation(orders_rel(b'd')).unwrap(), None);
        // Replica identity flags are not part of the form's fields.
        assert_eq!(m.on_relation(orders_rel(b'f')).unwrap(), None);
    }

    #[test]
    fn seeded_schema_suppresses_initial_change() {
        let mut first = FormMapper::new(&[table("orders")]);
        let json = first
            .on_relation(orders_rel(b'd'))
            .unwrap()
            .unwrap()
            .fields_json;
        let mut m = FormMapper::new(&[table("orders")]);
        m.seed_schema("orders", &json);
        assert_eq!(m.on_relation(orders_rel(b'd')).unwrap(), None);
        // An unreadable stored schema counts as unknown: initial again.
        let mut m = FormMapper::new(&[table("orders")]);
        m.seed_schema("orders", "{not json");
        assert!(m.on_relation(orders_rel(b'd')).unwrap().unwrap().initial);
    }

    #[test]
    fn column_change_gives_form_update_event() {
        let mut m = FormMapper::new(&[table("orders")]);
        m.seed_schema(
            "orders",
            r#"[{"name":"id","type":"int4"},{"name":"status","type":"text"}]"#,
        );
        m.on_type(70000, "public", "mood");
        let mut rel = orders_rel(b'd');
        rel.columns.push(col("mood", 70000, false));
        rel.columns.push(col("geo", 99999, false));
        let change = m.on_relation(rel).unwrap().unwrap();
        assert!(!change.initial);
        let e = m.form_update(&change, &ctx(), 0);
        assert_json(
            &e,
            &format!(
                r#"{{"id":"00000000016B3748-0000","op":"form_update","form":"orders","data":{{"form":"orders","fields":[{{"name":"id","type":"int4"}},{{"name":"status","type":"text"}},{{"name":"total","type":"int8"}},{{"name":"note","type":"text"}},{{"name":"mood","type":"mood"}},{{"name":"geo","type":"oid:99999"}}]}},{SRC}}}"#
            ),
        );
        assert_eq!(m.fields_json("orders"), Some(change.fields_json));
    }

    #[test]
    fn reset_to_committed_schemas_replays_a_cut_off_change_identically() {
        let committed = r#"[{"name":"id","type":"int4"},{"name":"status","type":"text"}]"#;
        let mut m = FormMapper::new(&[table("orders")]);
        m.reset_schemas([("orders", committed)]);
        let first = m.on_relation(orders_rel(b'd')).unwrap().unwrap();
        assert!(!first.initial);
        // The transaction is cut off before its commit was stored; the next
        // session starts from the committed schemas and sees the same change.
        m.reset_schemas([("orders", committed)]);
        let again = m.on_relation(orders_rel(b'd')).unwrap().unwrap();
        assert_eq!(again, first);
        // A form with no committed schema is forgotten, so it is initial again.
        m.reset_schemas(std::iter::empty());
        assert!(m.on_relation(orders_rel(b'd')).unwrap().unwrap().initial);
    }

    #[test]
    fn relation_message_replaces_the_cached_plan() {
        let mut m = orders(b'd');
        let mut rel = orders_rel(b'd');
        rel.columns.push(col("extra", TEXT, false));
        m.on_relation(rel).unwrap();
        let new = tuple(vec![t("1"), t("a"), t("2"), Cell::Null, t("e")]);
        let e = m.insert(16384, &new, &ctx(), 0).unwrap();
        assert_eq!(e.data.get("extra"), Some(&Value::String("e".into())));
        // The old shape no longer matches.
        let short = tuple(vec![t("1"), t("a"), t("2"), Cell::Null]);
        assert!(matches!(
            m.insert(16384, &short, &ctx(), 0),
            Err(MapError::ColumnCount {
                expected: 5,
                got: 4,
                ..
            })
        ));
    }

    #[test]
    fn a_change_of_an_unknown_table_is_an_error() {
        let mut m = FormMapper::new(&[table("orders")]);
        let mut rel = orders_rel(b'd');
        rel.name = "users".into();
        // The Relation alone is fine (partitions are announced beside their root)...
        assert_eq!(m.on_relation(rel).unwrap(), None);
        // ...a change of it is not.
        let new = tuple(vec![t("42"), t("new"), t("7"), t("n")]);
        let err = m.insert(16384, &new, &ctx(), 0).unwrap_err();
        assert!(
            matches!(&err, MapError::UnknownTable { schema, table } if schema == "public" && table == "users")
        );
        assert!(err.to_string().contains("public.users"));
        // Same table name in another schema is not the configured one.
        let mut rel = orders_rel(b'd');
        rel.schema = "archive".into();
        rel.id = 16399;
        assert_eq!(m.on_relation(rel).unwrap(), None);
        assert!(matches!(
            m.truncate(&[16399], 0, &ctx(), 0),
            Err(MapError::UnknownTable { .. })
        ));
        // A configured table renamed away: its id becomes unmapped.
        let mut m = orders(b'd');
        assert!(m.insert(16384, &new, &ctx(), 0).is_ok());
        let mut rel = orders_rel(b'd');
        rel.name = "orders_old".into();
        assert_eq!(m.on_relation(rel).unwrap(), None);
        assert!(matches!(
            m.insert(16384, &new, &ctx(), 1),
            Err(MapError::UnknownTable { table, .. }) if table == "orders_old"
        ));
    }

    #[test]
    fn change_before_relation_is_an_error() {
        let m = FormMapper::new(&[table("orders")]);
        assert!(matches!(
            m.insert(7, &tuple(vec![]), &ctx(), 0),
            Err(MapError::UnknownRelation { relation_id: 7 })
        ));
    }

    #[test]
    fn binary_invalid_utf8_and_bad_values_are_errors() {
        let m = orders(b'd');
        let bin = tuple(vec![
            t("1"),
            Cell::Binary(Bytes::from_static(b"\x00")),
            t("1"),
            Cell::Null,
        ]);
        assert!(matches!(
            m.insert(16384, &bin, &ctx(), 0),
            Err(MapError::BinaryValue { column, .. }) if column == "status"
        ));
        let bad = tuple(vec![
            t("1"),
            Cell::Text(Bytes::from_static(b"\xff\xfe")),
            t("1"),
            Cell::Null,
        ]);
        assert!(matches!(
            m.insert(16384, &bad, &ctx(), 0),
            Err(MapError::InvalidUtf8 { column, .. }) if column == "status"
        ));
        let not_int = tuple(vec![t("x1"), t("a"), t("1"), Cell::Null]);
        let err = m.insert(16384, &not_int, &ctx(), 0).unwrap_err();
        assert!(matches!(&err, MapError::Value { column, .. } if column == "id"));
        assert!(std::error::Error::source(&err).is_some());
    }
}
