//! Property test: random rows over many types round-trip Postgres → event
//! JSON exactly as `docs/events.md` documents, checked against Postgres's own
//! rendering of every value (`col::text` and `to_json(col)`) in a session
//! with the settings walhook pins (UTC, ISO dates, shortest exact floats).
//!
//! walhook connects as a role whose own settings (`ALTER ROLE ... SET`) would
//! change every rendering if walhook did not pin its session's: TimeZone
//! America/St_Johns, DateStyle SQL/DMY, IntervalStyle iso_8601,
//! extra_float_digits -3, bytea_output escape.
//!
//! The seed is printed at the start (shown when the test fails) and named in
//! every failure; `WALHOOK_VALUES_SEED=<n>` replays one.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use base64::Engine as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio_postgres::SimpleQueryMessage;

use crate::pipeline::{verify_signature, SECRET};
use crate::runner::{eventually, scratch_dir, ConfigText, InProcess};
use crate::support::db::{chain, TestDb};
use crate::support::receiver::TestReceiver;

const WAIT: Duration = Duration::from_secs(60);
/// Random rows per run: enough for every generator's edge cases to come up
/// several times, few enough to deliver in seconds.
const ROWS: usize = 300;
/// Rows per INSERT statement (one transaction each).
const ROWS_PER_INSERT: usize = 50;
/// Labels of the test's enum type.
const MOOD_LABELS: &[&str] = &["sad", "happy", "ünï 🦀", "with space", "o''brien", "NULL"];

/// The columns: name, SQL type, and how its value is generated and mapped.
const COLUMNS: &[(&str, &str, Kind)] = &[
    ("i2", "int2", Kind::Int2),
    ("i4", "int4", Kind::Int4),
    ("i8", "int8", Kind::Int8),
    ("n", "numeric", Kind::Numeric),
    ("f4", "float4", Kind::Float4),
    ("f8", "float8", Kind::Float8),
    ("b", "bool", Kind::Bool),
    ("t", "text", Kind::Text),
    ("vc", "varchar(20)", Kind::Varchar),
    ("by", "bytea", Kind::Bytea),
    ("j", "json", Kind::Json),
    ("jb", "jsonb", Kind::Jsonb),
    ("u", "uuid", Kind::Uuid),
    ("d", "date", Kind::Date),
    ("ts", "timestamp", Kind::Timestamp),
    ("tstz", "timestamptz", Kind::Timestamptz),
    ("tm", "time", Kind::Time),
    ("ttz", "timetz", Kind::Timetz),
    ("iv", "interval", Kind::Interval),
    ("ip", "inet", Kind::Inet),
    ("m", "money", Kind::Money),
    ("e", "mood", Kind::Enum),
    ("ta", "text[]", Kind::TextArray),
    ("ia", "int4[]", Kind::IntArray),
    ("ia2", "int4[]", Kind::IntArray2),
    ("na", "numeric[]", Kind::NumericArray),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Int2,
    Int4,
    Int8,
    Numeric,
    Float4,
    Float8,
    Bool,
    Text,
    Varchar,
    Bytea,
    Json,
    Jsonb,
    Uuid,
    Date,
    Timestamp,
    Timestamptz,
    Time,
    Timetz,
    Interval,
    Inet,
    Money,
    Enum,
    TextArray,
    IntArray,
    IntArray2,
    NumericArray,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_rows_round_trip_exactly_under_hostile_role_settings() {
    let seed: u64 = std::env::var("WALHOOK_VALUES_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("values property test seed: {seed} (replay with WALHOOK_VALUES_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);

    let db = TestDb::new().await;
    let role = format!("{}_r", db.name());
    let columns: String = COLUMNS
        .iter()
        .map(|(name, ty, _)| format!(", {name} {ty}"))
        .collect();
    let labels: Vec<String> = MOOD_LABELS.iter().map(|l| format!("'{l}'")).collect();
    db.execute(&format!(
        "CREATE TYPE mood AS ENUM ({labels});
         CREATE TABLE vals (id int4 PRIMARY KEY{columns});
         ALTER TABLE vals REPLICA IDENTITY FULL;
         CREATE ROLE {role} LOGIN REPLICATION PASSWORD 'values-pw';
         GRANT CREATE ON DATABASE {db} TO {role};
         ALTER TABLE vals OWNER TO {role};
         ALTER ROLE {role} SET TimeZone = 'America/St_Johns';
         ALTER ROLE {role} SET DateStyle = 'SQL, DMY';
         ALTER ROLE {role} SET IntervalStyle = 'iso_8601';
         ALTER ROLE {role} SET extra_float_digits = -3;
         ALTER ROLE {role} SET bytea_output = 'escape';",
        labels = labels.join(", "),
        db = db.name(),
    ))
    .await;
    let role_url = with_login(&db.url(), &role, "values-pw");
    assert_role_settings_apply(&role_url).await;

    // Postgres, not walhook, rejects a NUL in jsonb (row 35).
    let err = db
        .client()
        .batch_execute(r#"INSERT INTO vals (id, jb) VALUES (-1, '{"k": "a\u0000b"}')"#)
        .await
        .expect_err("Postgres accepted \\u0000 in jsonb");
    assert_eq!(
        err.code().map(|c| c.code()),
        Some("22P05"),
        "jsonb with \\u0000 fails with untranslatable_character: {}",
        chain(&err)
    );

    let receiver = TestReceiver::start().await;
    let name = db.slot_name();
    let store = scratch_dir(&name);
    let cfg = ConfigText::new(&role_url, &name, &store)
        .table("name = \"public.vals\"")
        .subscription(
            "hook",
            &receiver.url(),
            &format!(
                "auth = {{ type = \"hmac\", secret = \"{SECRET}\" }}\n\
                 retry = {{ max_attempts = 50, initial = \"50ms\", max = \"200ms\" }}"
            ),
        )
        .parse();
    let wh = InProcess::start(cfg).await;

    let rows: Vec<Vec<Option<String>>> = (0..ROWS)
        .map(|_| COLUMNS.iter().map(|c| literal(&mut rng, c.2)).collect())
        .collect();
    for (chunk_index, chunk) in rows.chunks(ROWS_PER_INSERT).enumerate() {
        let mut sql = format!(
            "INSERT INTO vals (id{}) VALUES ",
            COLUMNS
                .iter()
                .map(|c| format!(", {}", c.0))
                .collect::<String>()
        );
        for (i, row) in chunk.iter().enumerate() {
            let id = chunk_index * ROWS_PER_INSERT + i;
            if i > 0 {
                sql.push_str(", ");
            }
            write!(sql, "({id}").unwrap();
            for (value, (_, ty, _)) in row.iter().zip(COLUMNS) {
                match value {
                    Some(v) => write!(sql, ", '{}'::{ty}", v.replace('\'', "''")).unwrap(),
                    None => sql.push_str(", NULL"),
                }
            }
            sql.push(')');
        }
        if let Err(err) = db.client().batch_execute(&sql).await {
            panic!(
                "seed {seed}: Postgres rejected a generated row ({}); the generator is wrong",
                chain(&err)
            );
        }
    }
    let oracle = oracle_rows(&db).await;
    assert_eq!(oracle.len(), ROWS, "seed {seed}: rows read back");
    let json_column = COLUMNS.iter().position(|c| c.2 == Kind::Json).unwrap();
    let checked_as_jsonb = oracle
        .values()
        .filter(|row| {
            row[json_column]
                .as_ref()
                .is_some_and(|pg| pg.as_jsonb.is_some())
        })
        .count();
    assert!(
        checked_as_jsonb >= ROWS / 4,
        "seed {seed}: only {checked_as_jsonb} json values could be checked against ::jsonb"
    );
    // REPLICA IDENTITY FULL: the deletes carry every column again, through
    // the old-tuple path.
    db.execute("DELETE FROM vals").await;

    // Fail with walhook's own error if it stops (say, on a value it cannot map).
    eventually(
        WAIT,
        "every event delivered, or walhook stopped",
        || async { (receiver.requests().len() >= 2 * ROWS || wh.has_stopped()).then_some(()) },
    )
    .await;
    if wh.has_stopped() {
        let result = wh.stop().await;
        panic!("seed {seed}: walhook stopped while delivering the rows: {result:?}");
    }
    let requests = receiver.wait_for(2 * ROWS, WAIT).await;
    assert_eq!(
        requests.len(),
        2 * ROWS,
        "seed {seed}: one request per created and removed row"
    );
    let mut failures = Vec::new();
    let mut seen: HashMap<(String, i64), usize> = HashMap::new();
    for request in &requests {
        verify_signature(request);
        let event = request.json();
        let op = event["op"].as_str().unwrap_or_default().to_owned();
        let data = &event["data"];
        let id = data["id"]
            .as_i64()
            .unwrap_or_else(|| panic!("seed {seed}: event without an integer id: {event}"));
        *seen.entry((op.clone(), id)).or_default() += 1;
        let expected = oracle
            .get(&id)
            .unwrap_or_else(|| panic!("seed {seed}: event for unknown row {id}"));
        for ((name, ty, kind), pg) in COLUMNS.iter().zip(expected) {
            let got = data.get(*name).map(|v| serde_json::to_string(v).unwrap());
            let want = match pg {
                None => Ok("null".to_owned()),
                Some(pg) => expected_json(*kind, pg),
            };
            match (got, want) {
                (Some(got), Ok(want)) if got == want => {}
                (got, want) => failures.push(format!(
                    "{op} row {id} column {name} ({ty}): Postgres text {:?}, to_json {:?}; \
                     expected {want:?}, event has {got:?}",
                    pg.as_ref().map(|p| &p.text),
                    pg.as_ref().map(|p| &p.json),
                )),
            }
        }
    }
    for id in 0..ROWS as i64 {
        for op in ["data_create", "data_remove"] {
            let n = seen.get(&(op.to_owned(), id)).copied().unwrap_or(0);
            if n != 1 {
                failures.push(format!("row {id}: {n} {op} events (expected 1)"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "seed {seed}: {} value(s) differ from what Postgres says (replay with \
         WALHOOK_VALUES_SEED={seed}):\n{}",
        failures.len(),
        failures
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    wh.stop().await.unwrap();
    db.execute(&format!("SELECT pg_drop_replication_slot('{name}')"))
        .await;
}

/// `url` with another user and password.
fn with_login(url: &str, user: &str, password: &str) -> String {
    let mut url = url::Url::parse(url).unwrap();
    url.set_username(user).unwrap();
    url.set_password(Some(password)).unwrap();
    url.to_string()
}

/// Proves the role's settings are in force for a session that does not pin
/// its own, so the test would catch walhook not pinning them.
async fn assert_role_settings_apply(url: &str) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|err| panic!("connect as the test role: {}", chain(&err)));
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT current_setting('TimeZone'), current_setting('DateStyle'), \
             '2026-11-22 04:20:00+00'::timestamptz::text",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "America/St_Johns");
    assert_eq!(row.get::<_, String>(1), "SQL, DMY");
    assert_eq!(row.get::<_, String>(2), "22/11/2026 00:50:00 NST");
}

/// What Postgres says one value is.
#[derive(Debug)]
struct Pg {
    /// `col::text`.
    text: String,
    /// `to_json(col)::text`.
    json: String,
    /// For json: `col::jsonb::text`, what Postgres makes of duplicate keys
    /// (None where jsonb cannot hold the value: `\u0000`).
    as_jsonb: Option<String>,
}

/// Every row of `vals` as Postgres renders it, in a session with the
/// settings walhook pins on its own.
async fn oracle_rows(db: &TestDb) -> HashMap<i64, Vec<Option<Pg>>> {
    let client = db.connect().await;
    client
        .batch_execute(
            "SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; SET IntervalStyle = 'postgres';
             SET extra_float_digits = 3; SET bytea_output = 'hex';",
        )
        .await
        .unwrap();
    let columns: String = COLUMNS
        .iter()
        .map(|(name, _, _)| format!(", {name}::text, to_json({name})::text"))
        .collect();
    // LIKE's escape character is the backslash: this matches a literal \u0000.
    let sql = format!(
        "SELECT CASE WHEN j::text NOT LIKE '%\\\\u0000%' THEN j::jsonb::text END, id{columns} \
         FROM vals"
    );
    let messages = client
        .simple_query(&sql)
        .await
        .unwrap_or_else(|err| panic!("{sql}: {}", chain(&err)));
    let mut rows = HashMap::new();
    for message in messages {
        let SimpleQueryMessage::Row(row) = message else {
            continue;
        };
        let as_jsonb = row.get(0).map(str::to_owned);
        let id: i64 = row.get(1).unwrap().parse().unwrap();
        let values = (0..COLUMNS.len())
            .map(|i| {
                let text = row.get(2 + 2 * i)?;
                let json = row.get(3 + 2 * i)?;
                Some(Pg {
                    text: text.to_owned(),
                    json: json.to_owned(),
                    as_jsonb: (COLUMNS[i].2 == Kind::Json)
                        .then(|| as_jsonb.clone())
                        .flatten(),
                })
            })
            .collect();
        rows.insert(id, values);
    }
    rows
}

/// The JSON text `docs/events.md` says a value of `kind` becomes, from what
/// Postgres says it is; `Err` explains a Postgres rendering the mapping does
/// not foresee.
fn expected_json(kind: Kind, pg: &Pg) -> Result<String, String> {
    let text = pg.text.as_str();
    let to_json = || -> Result<Value, String> {
        serde_json::from_str(&pg.json).map_err(|e| format!("to_json output unparsable: {e}"))
    };
    let string = |s: &str| serde_json::to_string(&Value::String(s.to_owned())).unwrap();
    match kind {
        // Numbers: exactly the digits of `::text`, which is also what
        // to_json prints; NaN and infinities as strings.
        Kind::Int2 | Kind::Int4 | Kind::Int8 | Kind::Numeric | Kind::Float4 | Kind::Float8 => {
            let want = if matches!(text, "NaN" | "Infinity" | "-Infinity") {
                string(text)
            } else {
                text.to_owned()
            };
            if want != pg.json {
                return Err(format!("::text {text} and to_json {} disagree", pg.json));
            }
            Ok(want)
        }
        Kind::Bool => to_json().map(|v| v.to_string()),
        // Text in, the same text out (to_json agrees).
        Kind::Text
        | Kind::Varchar
        | Kind::Uuid
        | Kind::Interval
        | Kind::Money
        | Kind::Enum
        | Kind::Date
        | Kind::Time => {
            let want = string(text);
            if to_json()? != Value::String(text.to_owned()) {
                return Err(format!("to_json {} is not the text", pg.json));
            }
            Ok(want)
        }
        // `inet::text` is a function of its own that always shows the mask;
        // pgoutput, like to_json, sends inet's output (`1.2.3.4` for a /32).
        Kind::Inet => {
            let v = to_json()?;
            if v.as_str().is_none() {
                return Err(format!("to_json {} is not a string", pg.json));
            }
            Ok(v.to_string())
        }
        // The JSON text embedded; for json, the values are those Postgres keeps
        // in `::jsonb` (the last of duplicate keys), compared as JSON values
        // (jsonb reorders keys).
        Kind::Json | Kind::Jsonb => {
            let v = serde_json::from_str::<Value>(text)
                .map_err(|e| format!("json text unparsable: {e}"))?;
            if let Some(jsonb) = &pg.as_jsonb {
                let pg_value = serde_json::from_str::<Value>(jsonb)
                    .map_err(|e| format!("::jsonb text unparsable: {e}"))?;
                if pg_value != v {
                    return Err(format!("Postgres's ::jsonb is {jsonb}"));
                }
            }
            Ok(serde_json::to_string(&v).unwrap())
        }
        Kind::Bytea => {
            let hex = text
                .strip_prefix("\\x")
                .ok_or("bytea text is not in hex format")?;
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|e| e.to_string())?;
            Ok(string(
                &base64::engine::general_purpose::STANDARD.encode(bytes),
            ))
        }
        // ISO 8601 as to_json writes it; ±infinity and BC as Postgres's text.
        Kind::Timestamp => {
            if is_sentinel(text) {
                return Ok(string(text));
            }
            let v = to_json()?;
            if v != Value::String(text.replacen(' ', "T", 1)) {
                return Err(format!("to_json {} is not the text with T", pg.json));
            }
            Ok(v.to_string())
        }
        // RFC 3339 in UTC with Z: to_json's `+00:00` (the session is UTC).
        Kind::Timestamptz => {
            if is_sentinel(text) {
                return Ok(string(text));
            }
            let v = to_json()?;
            let iso = v.as_str().ok_or("to_json of timestamptz is not a string")?;
            let utc = iso
                .strip_suffix("+00:00")
                .ok_or("to_json of timestamptz is not in UTC")?;
            Ok(string(&format!("{utc}Z")))
        }
        // `HH:MM:SS[.f]±HH:MM`; an offset with seconds stays as printed.
        Kind::Timetz => {
            let at = text.rfind(['+', '-']).ok_or("timetz text has no offset")?;
            let (time, offset) = text.split_at(at);
            Ok(match offset.len() {
                3 => string(&format!("{time}{offset}:00")),
                _ => string(text),
            })
        }
        // Nested JSON arrays, bounds dropped, elements as their type maps:
        // exactly what to_json does for these element types.
        Kind::TextArray | Kind::IntArray | Kind::IntArray2 | Kind::NumericArray => {
            to_json().map(|v| serde_json::to_string(&v).unwrap())
        }
    }
}

fn is_sentinel(text: &str) -> bool {
    text == "infinity" || text == "-infinity" || text.ends_with(" BC")
}

// ---------------------------------------------------------------------------
// generators: the text of a literal (before SQL quoting), or None for NULL

fn literal(rng: &mut StdRng, kind: Kind) -> Option<String> {
    if rng.random_ratio(1, 12) {
        return None;
    }
    Some(match kind {
        Kind::Int2 => int(rng, i64::from(i16::MIN), i64::from(i16::MAX)),
        Kind::Int4 => int(rng, i64::from(i32::MIN), i64::from(i32::MAX)),
        Kind::Int8 => int(rng, i64::MIN, i64::MAX),
        Kind::Numeric => numeric(rng),
        Kind::Float4 => float(rng, true),
        Kind::Float8 => float(rng, false),
        Kind::Bool => if rng.random() { "t" } else { "f" }.to_owned(),
        Kind::Text => text(rng, 40),
        Kind::Varchar => text(rng, 20),
        Kind::Bytea => {
            let len = rng.random_range(0..24);
            let mut hex = String::from("\\x");
            for _ in 0..len {
                // Mostly NUL and 0xFF bytes, the ones that break C strings.
                let byte: u8 = match rng.random_range(0..4) {
                    0 => 0,
                    1 => 0xFF,
                    _ => rng.random(),
                };
                write!(hex, "{byte:02x}").unwrap();
            }
            hex
        }
        Kind::Json => json(rng, 0, 4, true),
        Kind::Jsonb => {
            if rng.random_ratio(1, 10) {
                // Deep nesting, within what an event (two levels more) can
                // still be parsed with by receivers using serde_json's limit.
                let depth = rng.random_range(20..=100);
                let mut s = String::new();
                for i in 0..depth {
                    s.push_str(if i % 2 == 0 { "[" } else { "{\"k\": " });
                }
                s.push_str("\"leaf\"");
                for i in (0..depth).rev() {
                    s.push(if i % 2 == 0 { ']' } else { '}' });
                }
                s
            } else {
                json(rng, 0, 4, false)
            }
        }
        Kind::Uuid => {
            let b: [u8; 16] = rng.random();
            let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
            format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            )
        }
        Kind::Date => pick(
            rng,
            &[
                "infinity",
                "-infinity",
                "4713-01-01 BC",
                "0001-01-01 BC",
                "5874897-12-31",
                "294276-12-31",
                "2000-02-29",
            ],
        )
        .unwrap_or_else(|| {
            let bc = rng.random_ratio(1, 8);
            format!("{}{}", date(rng, bc), if bc { " BC" } else { "" })
        }),
        Kind::Timestamp => pick(
            rng,
            &[
                "infinity",
                "-infinity",
                "4713-01-01 00:00:00 BC",
                "294276-12-31 23:59:59.999999",
                "1999-12-31 23:59:59.999999",
            ],
        )
        .unwrap_or_else(|| {
            let bc = rng.random_ratio(1, 8);
            format!(
                "{} {}{}",
                date(rng, bc),
                time(rng),
                if bc { " BC" } else { "" }
            )
        }),
        Kind::Timestamptz => pick(
            rng,
            &[
                "infinity",
                "-infinity",
                "4713-01-01 00:00:00+00 BC",
                "294276-12-31 23:59:59.999999+00",
                // America/St_Johns DST edges (UTC-3:30 / -2:30) in 2026.
                "2026-03-08 01:59:59.999999 America/St_Johns",
                "2026-03-08 02:30:00 America/St_Johns",
                "2026-03-08 03:00:00 America/St_Johns",
                "2026-11-01 00:59:59.999999 America/St_Johns",
                "2026-11-01 01:30:00 America/St_Johns",
                "2026-11-01 02:00:00 America/St_Johns",
                // Local mean time: an offset with seconds.
                "1883-11-18 12:00:00 America/New_York",
                "1900-01-01 00:00:00 Europe/Amsterdam",
            ],
        )
        .unwrap_or_else(|| {
            let offset = offset(rng);
            format!("{} {}{offset}", date(rng, false), time(rng))
        }),
        Kind::Time => {
            pick(rng, &["24:00:00", "00:00:00", "23:59:59.999999"]).unwrap_or_else(|| time(rng))
        }
        Kind::Timetz => pick(rng, &["24:00:00+00", "00:00:00-15:59", "12:00:00+05:30:15"])
            .unwrap_or_else(|| format!("{}{}", time(rng), offset(rng))),
        Kind::Interval => pick(
            rng,
            &[
                "0",
                "-178000000 years",
                "178000000 years",
                "1 mon -1 days",
                "-00:00:00.000001",
            ],
        )
        .unwrap_or_else(|| {
            format!(
                "{} years {} mons {} days {}{}",
                rng.random_range(-100..100),
                rng.random_range(-20..20),
                rng.random_range(-400..400),
                if rng.random() { "-" } else { "" },
                time(rng)
            )
        }),
        Kind::Inet => {
            if rng.random() {
                let b: [u8; 4] = rng.random();
                format!(
                    "{}.{}.{}.{}/{}",
                    b[0],
                    b[1],
                    b[2],
                    b[3],
                    rng.random_range(0..=32)
                )
            } else {
                let w: [u16; 8] = rng.random();
                let parts: Vec<String> = w.iter().map(|x| format!("{x:x}")).collect();
                format!("{}/{}", parts.join(":"), rng.random_range(0..=128))
            }
        }
        Kind::Money => pick(rng, &["92233720368547758.07", "-92233720368547758.08", "0"])
            .unwrap_or_else(|| {
                let cents: i64 = rng.random_range(-10_000_000_000..10_000_000_000);
                format!("{}.{:02}", cents / 100, (cents % 100).abs())
            }),
        Kind::Enum => MOOD_LABELS[rng.random_range(0..MOOD_LABELS.len())].replace("''", "'"),
        Kind::TextArray => {
            let n = rng.random_range(0..6);
            let items: Vec<String> = (0..n)
                .map(|_| match rng.random_range(0..8) {
                    0 => "NULL".to_owned(),
                    1 => quote_element(""),
                    2 => quote_element("NULL"),
                    3 => quote_element(&pick_str(
                        rng,
                        &[",", "\"", "\\", "{}", " a b ", "\"q\",\\"],
                    )),
                    _ => quote_element(&text(rng, 12)),
                })
                .collect();
            format!("{{{}}}", items.join(","))
        }
        Kind::IntArray => {
            let n = rng.random_range(0..6);
            let items: Vec<String> = (0..n)
                .map(|_| {
                    if rng.random_ratio(1, 5) {
                        "NULL".to_owned()
                    } else {
                        int(rng, i64::from(i32::MIN), i64::from(i32::MAX))
                    }
                })
                .collect();
            let bounds = if n > 0 && rng.random_ratio(1, 3) {
                let lower: i32 = rng.random_range(-5..5);
                format!("[{lower}:{}]=", lower + n - 1)
            } else {
                String::new()
            };
            format!("{bounds}{{{}}}", items.join(","))
        }
        Kind::IntArray2 => {
            let (rows, cols) = (rng.random_range(1..4), rng.random_range(1..4));
            let body: Vec<String> = (0..rows)
                .map(|_| {
                    let row: Vec<String> = (0..cols)
                        .map(|_| {
                            if rng.random_ratio(1, 6) {
                                "NULL".to_owned()
                            } else {
                                rng.random_range(-1000..1000).to_string()
                            }
                        })
                        .collect();
                    format!("{{{}}}", row.join(","))
                })
                .collect();
            let bounds = if rng.random() {
                let (a, b): (i32, i32) = (rng.random_range(-3..3), rng.random_range(-3..3));
                format!("[{a}:{}][{b}:{}]=", a + rows - 1, b + cols - 1)
            } else {
                String::new()
            };
            format!("{bounds}{{{}}}", body.join(","))
        }
        Kind::NumericArray => {
            let n = rng.random_range(0..5);
            let items: Vec<String> = (0..n)
                .map(|_| {
                    if rng.random_ratio(1, 5) {
                        "NULL".to_owned()
                    } else {
                        numeric(rng)
                    }
                })
                .collect();
            format!("{{{}}}", items.join(","))
        }
    })
}

/// With probability 1/3 one of `edge`, else None (the caller draws a random value).
fn pick(rng: &mut StdRng, edge: &[&str]) -> Option<String> {
    rng.random_ratio(1, 3).then(|| pick_str(rng, edge))
}

fn pick_str(rng: &mut StdRng, items: &[&str]) -> String {
    items[rng.random_range(0..items.len())].to_owned()
}

fn int(rng: &mut StdRng, min: i64, max: i64) -> String {
    match rng.random_range(0..6) {
        0 => min.to_string(),
        1 => max.to_string(),
        2 => rng.random_range(-2..=2).to_string(),
        _ => rng.random_range(min..=max).to_string(),
    }
}

fn digits(rng: &mut StdRng, n: usize) -> String {
    (0..n)
        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
        .collect()
}

fn numeric(rng: &mut StdRng) -> String {
    let sign = if rng.random() { "-" } else { "" };
    match rng.random_range(0..10) {
        0 => pick_str(
            rng,
            &["NaN", "Infinity", "-Infinity", "0", "-0.000", "1.500"],
        ),
        // Scale 100.
        1 => format!("{sign}0.{}", digits(rng, 100)),
        // About a thousand digits.
        2 => format!("{sign}9{}.{}", digits(rng, 600), digits(rng, 400)),
        3 => format!("{sign}1.5e-{}", rng.random_range(1..60)),
        _ => {
            let int_len = rng.random_range(1..30);
            let scale = rng.random_range(0..12);
            let frac = if scale > 0 {
                format!(".{}", digits(rng, scale))
            } else {
                String::new()
            };
            format!(
                "{sign}{}{}{frac}",
                rng.random_range(1..10),
                digits(rng, int_len - 1)
            )
        }
    }
}

fn float(rng: &mut StdRng, single: bool) -> String {
    match rng.random_range(0..8) {
        0 => pick_str(rng, &["NaN", "Infinity", "-Infinity", "-0", "0"]),
        1 if single => pick_str(rng, &["3.4028235e38", "1.1754944e-38", "1e-45", "0.1"]),
        1 => pick_str(
            rng,
            &[
                "1e308",
                "1.7976931348623157e308",
                "5e-324",
                "2.2250738585072014e-308",
                "0.1",
            ],
        ),
        _ if single => loop {
            let f = f32::from_bits(rng.random());
            if f.is_finite() {
                break format!("{f:e}");
            }
        },
        _ => loop {
            let f = f64::from_bits(rng.random());
            if f.is_finite() {
                break format!("{f:e}");
            }
        },
    }
}

/// A date in years 1..=9999, or 1..=4713 BC (Postgres's earliest year).
fn date(rng: &mut StdRng, bc: bool) -> String {
    format!(
        "{:04}-{:02}-{:02}",
        rng.random_range(1..=if bc { 4713 } else { 9999 }),
        rng.random_range(1..=12),
        rng.random_range(1..=28)
    )
}

fn time(rng: &mut StdRng) -> String {
    let frac = match rng.random_range(0..3) {
        0 => String::new(),
        1 => format!(".{}", rng.random_range(0..1000)),
        _ => format!(".{:06}", rng.random_range(0..1_000_000)),
    };
    format!(
        "{:02}:{:02}:{:02}{frac}",
        rng.random_range(0..24),
        rng.random_range(0..60),
        rng.random_range(0..60)
    )
}

/// A UTC offset as Postgres accepts it: ±HH, ±HH:MM or (rarely) ±HH:MM:SS.
fn offset(rng: &mut StdRng) -> String {
    let sign = if rng.random() { '+' } else { '-' };
    let h = rng.random_range(0..=14);
    match rng.random_range(0..6) {
        0 => format!("{sign}{h:02}"),
        1 => format!(
            "{sign}{h:02}:{:02}:{:02}",
            rng.random_range(0..60),
            rng.random_range(1..60)
        ),
        _ => format!(
            "{sign}{h:02}:{:02}",
            [0, 15, 30, 45][rng.random_range(0..4)]
        ),
    }
}

/// Random Unicode text: ASCII with SQL/array/JSON metacharacters, 4-byte
/// emoji, combining marks, right-to-left text and marks, U+FFFD, CJK,
/// control characters (never NUL: text cannot hold it).
fn text(rng: &mut StdRng, max_chars: usize) -> String {
    const POOL: &[&str] = &[
        "a",
        "Z",
        "0",
        " ",
        "'",
        "\"",
        "\\",
        ",",
        "{",
        "}",
        "[",
        "]",
        "$",
        "%",
        "\n",
        "\t",
        "\r",
        "\u{1}",
        "\u{7f}",
        "é",
        "e\u{301}",
        "\u{308}",
        "🦀",
        "🎉",
        "👩‍👩‍👧",
        "\u{1F1FA}\u{1F1F8}",
        "\u{202e}",
        "\u{200f}",
        "שלום",
        "مرحبا",
        "\u{fffd}",
        "中文",
        "\u{feff}",
        "\u{10FFFF}",
        "NULL",
    ];
    let n = rng.random_range(0..=max_chars);
    let mut s = String::new();
    while s.chars().count() < n {
        let piece = POOL[rng.random_range(0..POOL.len())];
        if s.chars().count() + piece.chars().count() > max_chars {
            break;
        }
        s.push_str(piece);
    }
    s
}

/// A double-quoted array element, as `array_in` reads it.
fn quote_element(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Random JSON text (with spacing Postgres keeps for json); `nul` allows
/// `\u0000` escapes (json only: jsonb rejects them) and duplicate keys.
fn json(rng: &mut StdRng, depth: usize, max_depth: usize, json_only: bool) -> String {
    let scalar = depth >= max_depth || rng.random_ratio(1, 3);
    if scalar {
        return match rng.random_range(0..7) {
            0 => "null".to_owned(),
            1 => if rng.random() { "true" } else { "false" }.to_owned(),
            2 => int(rng, i64::MIN, i64::MAX),
            // Plain decimals: what both json and jsonb print unchanged.
            3 => format!("{}.{}", rng.random_range(-1000..1000), digits(rng, 3)),
            _ => json_string(rng, json_only),
        };
    }
    let n = rng.random_range(0..4);
    if rng.random() {
        let items: Vec<String> = (0..n)
            .map(|_| json(rng, depth + 1, max_depth, json_only))
            .collect();
        format!("[{}]", items.join(", "))
    } else {
        let mut keys: Vec<String> = (0..n).map(|_| json_string(rng, json_only)).collect();
        if json_only && n > 0 && rng.random_ratio(1, 3) {
            // A duplicate key: json keeps both, the last one is the value.
            keys.push(keys[0].clone());
        }
        let members: Vec<String> = keys
            .iter()
            .map(|k| format!("{k}: {}", json(rng, depth + 1, max_depth, json_only)))
            .collect();
        format!("{{{}}}", members.join(", "))
    }
}

fn json_string(rng: &mut StdRng, json_only: bool) -> String {
    let mut s = String::from("\"");
    for _ in 0..rng.random_range(0..6) {
        match rng.random_range(0..9) {
            0 => s.push_str("\\\""),
            1 => s.push_str("\\\\"),
            2 => s.push_str("\\n"),
            3 => s.push_str("\\u00e9"),
            4 => s.push_str("\\ud83e\\udd80"),
            5 if json_only => s.push_str("\\u0000"),
            _ => {
                let t = text(rng, 3);
                for c in t.chars() {
                    match c {
                        '"' => s.push_str("\\\""),
                        '\\' => s.push_str("\\\\"),
                        c if u32::from(c) < 0x20 => write!(s, "\\u{:04x}", u32::from(c)).unwrap(),
                        c => s.push(c),
                    }
                }
            }
        }
    }
    s.push('"');
    s
}
