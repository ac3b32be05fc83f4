//! PostgreSQL text-format values → JSON, following what Postgres's own `to_json`
//! does so that nothing is rounded or reinterpreted.
//!
//! pgoutput sends values in the text output format of the walsender session.
//! walhook pins `TimeZone=UTC`, `DateStyle=ISO`, `extra_float_digits=3` and
//! `IntervalStyle=postgres` on that session, so the formats below are the only
//! ones we accept for the types we transform; anything else is a [`ValueError`]
//! rather than a silently wrong value.
//!
//! | type | Postgres text | JSON |
//! |------|---------------|------|
//! | int2, int4, oid, float4, float8 | `42`, `1e+308`, `-0` | number with exactly those characters |
//! | int8, numeric | `9223372036854775807`, `1.50` | number (or string with [`NumbersMode::String`]) |
//! | float4/8, numeric specials | `NaN`, `Infinity`, `-Infinity` | string |
//! | bool | `t`, `f` | `true`, `false` |
//! | json, jsonb | any JSON | embedded JSON |
//! | timestamptz | `2026-11-22 04:20:00.123456+00` | `"2026-11-22T04:20:00.123456Z"` |
//! | timestamp | `2026-11-22 04:20:00` | `"2026-11-22T04:20:00"` |
//! | timetz | `04:05:06+02` | `"04:05:06+02:00"` |
//! | date, time | `2026-11-22`, `04:20:00` | unchanged string |
//! | bytea | `\x0a0b` | `"Cgs="` (standard base64, padded) |
//! | builtin arrays | `{1,NULL,3}`, `[0:1]={a,b}` | nested JSON arrays, elements converted by element type |
//! | everything else (uuid, text, interval, money, inet, enums, unknown OIDs) | | unchanged string |
//!
//! Notes and invariants:
//! - Numbers are validated against the JSON number grammar before they are
//!   built, so an event is never invalid JSON; serde_json's
//!   `arbitrary_precision` then keeps the digits verbatim (`1.50` stays `1.50`).
//! - `infinity`, `-infinity` and BC dates/timestamps (`... BC`) are passed
//!   through as the Postgres text: RFC 3339 cannot express them. Years above
//!   9999 keep all their digits (RFC 3339 allows only four, Postgres goes to
//!   294276); only the `T`/`Z` transformation is applied.
//! - A timestamptz offset with seconds (historic local mean time, impossible
//!   with `TimeZone=UTC`) is converted to UTC because RFC 3339 offsets have no
//!   seconds. A timetz offset with seconds is kept as printed.
//! - json with duplicate keys: the last value wins, at the position of the first
//!   occurrence (serde_json with `preserve_order`); jsonb never has duplicates.
//!   JSON nested deeper than 128 levels is rejected (serde_json's recursion limit).
//! - bytea in the `escape` output format is decoded too, in case a role sets
//!   `bytea_output = escape`; the hex format is what walhook's session uses.
//! - Error messages name the type and the problem but never include the value:
//!   they end up in logs, and row values must not.

use base64::Engine as _;
use serde_json::{Number, Value};

use crate::config::NumbersMode;

/// OIDs of the builtin types walhook maps specially (from `pg_type.dat`; stable
/// across Postgres versions).
pub mod oid {
    /// `bool`
    pub const BOOL: u32 = 16;
    /// `bytea`
    pub const BYTEA: u32 = 17;
    /// `"char"`
    pub const CHAR: u32 = 18;
    /// `name`
    pub const NAME: u32 = 19;
    /// `int8`
    pub const INT8: u32 = 20;
    /// `int2`
    pub const INT2: u32 = 21;
    /// `int4`
    pub const INT4: u32 = 23;
    /// `text`
    pub const TEXT: u32 = 25;
    /// `oid`
    pub const OID: u32 = 26;
    /// `json`
    pub const JSON: u32 = 114;
    /// `xml`
    pub const XML: u32 = 142;
    /// `float4`
    pub const FLOAT4: u32 = 700;
    /// `float8`
    pub const FLOAT8: u32 = 701;
    /// `money`
    pub const MONEY: u32 = 790;
    /// `bpchar` (`char(n)`)
    pub const BPCHAR: u32 = 1042;
    /// `varchar`
    pub const VARCHAR: u32 = 1043;
    /// `date`
    pub const DATE: u32 = 1082;
    /// `time`
    pub const TIME: u32 = 1083;
    /// `timestamp`
    pub const TIMESTAMP: u32 = 1114;
    /// `timestamptz`
    pub const TIMESTAMPTZ: u32 = 1184;
    /// `interval`
    pub const INTERVAL: u32 = 1186;
    /// `timetz`
    pub const TIMETZ: u32 = 1266;
    /// `numeric`
    pub const NUMERIC: u32 = 1700;
    /// `uuid`
    pub const UUID: u32 = 2950;
    /// `jsonb`
    pub const JSONB: u32 = 3802;

    /// `bool[]`
    pub const BOOL_ARRAY: u32 = 1000;
    /// `bytea[]`
    pub const BYTEA_ARRAY: u32 = 1001;
    /// `"char"[]`
    pub const CHAR_ARRAY: u32 = 1002;
    /// `name[]`
    pub const NAME_ARRAY: u32 = 1003;
    /// `int2[]`
    pub const INT2_ARRAY: u32 = 1005;
    /// `int4[]`
    pub const INT4_ARRAY: u32 = 1007;
    /// `text[]`
    pub const TEXT_ARRAY: u32 = 1009;
    /// `bpchar[]`
    pub const BPCHAR_ARRAY: u32 = 1014;
    /// `varchar[]`
    pub const VARCHAR_ARRAY: u32 = 1015;
    /// `int8[]`
    pub const INT8_ARRAY: u32 = 1016;
    /// `float4[]`
    pub const FLOAT4_ARRAY: u32 = 1021;
    /// `float8[]`
    pub const FLOAT8_ARRAY: u32 = 1022;
    /// `oid[]`
    pub const OID_ARRAY: u32 = 1028;
    /// `timestamp[]`
    pub const TIMESTAMP_ARRAY: u32 = 1115;
    /// `date[]`
    pub const DATE_ARRAY: u32 = 1182;
    /// `time[]`
    pub const TIME_ARRAY: u32 = 1183;
    /// `timestamptz[]`
    pub const TIMESTAMPTZ_ARRAY: u32 = 1185;
    /// `interval[]`
    pub const INTERVAL_ARRAY: u32 = 1187;
    /// `numeric[]`
    pub const NUMERIC_ARRAY: u32 = 1231;
    /// `timetz[]`
    pub const TIMETZ_ARRAY: u32 = 1270;
    /// `uuid[]`
    pub const UUID_ARRAY: u32 = 2951;
    /// `json[]`
    pub const JSON_ARRAY: u32 = 199;
    /// `jsonb[]`
    pub const JSONB_ARRAY: u32 = 3807;
    /// `money[]`
    pub const MONEY_ARRAY: u32 = 791;
}

/// Why a Postgres text value could not be converted; never contains the value itself.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    /// A numeric type's text is not a plain decimal number.
    #[error("{} value is not a number as PostgreSQL prints one", type_label(*.type_oid))]
    Number {
        /// The column's type OID.
        type_oid: u32,
    },
    /// A bool's text is neither `t` nor `f`.
    #[error("bool value is neither 't' nor 'f'")]
    Bool,
    /// A json/jsonb value did not parse.
    #[error("{} value is not valid JSON: {source}", type_label(*.type_oid))]
    Json {
        /// The column's type OID.
        type_oid: u32,
        /// serde_json's error (line/column, no content).
        #[source]
        source: serde_json::Error,
    },
    /// A bytea's text is not in hex (`\x..`) or escape format.
    #[error("bytea value is malformed at byte {offset}: {reason}")]
    Bytea {
        /// Byte offset of the problem.
        offset: usize,
        /// What was wrong.
        reason: &'static str,
    },
    /// A date/time value is not in the ISO format walhook's session pins.
    #[error("{} value is not in ISO format (is the session DateStyle ISO?): {reason}", type_label(*.type_oid))]
    DateTime {
        /// The column's type OID.
        type_oid: u32,
        /// What was wrong.
        reason: &'static str,
    },
    /// An array's text is not valid Postgres array output.
    #[error("{} value is malformed at byte {offset}: {reason}", type_label(*.type_oid))]
    Array {
        /// The array type's OID.
        type_oid: u32,
        /// Byte offset of the problem.
        offset: usize,
        /// What was wrong.
        reason: &'static str,
    },
    /// An array element could not be converted with its element type.
    #[error("{} element {index}: {source}", type_label(*.type_oid))]
    ArrayElement {
        /// The array type's OID.
        type_oid: u32,
        /// Position of the element in text order (0-based, flattened).
        index: usize,
        /// The element's own error.
        #[source]
        source: Box<ValueError>,
    },
}

fn type_label(type_oid: u32) -> String {
    match type_name(type_oid) {
        Some(name) => name.to_owned(),
        None => format!("type {type_oid}"),
    }
}

/// The Postgres name of a builtin type walhook knows (`int4`, `text[]`), if any.
pub fn type_name(type_oid: u32) -> Option<&'static str> {
    Some(match type_oid {
        oid::BOOL => "bool",
        oid::BYTEA => "bytea",
        oid::CHAR => "char",
        oid::NAME => "name",
        oid::INT8 => "int8",
        oid::INT2 => "int2",
        oid::INT4 => "int4",
        oid::TEXT => "text",
        oid::OID => "oid",
        oid::JSON => "json",
        oid::XML => "xml",
        oid::FLOAT4 => "float4",
        oid::FLOAT8 => "float8",
        oid::MONEY => "money",
        oid::BPCHAR => "bpchar",
        oid::VARCHAR => "varchar",
        oid::DATE => "date",
        oid::TIME => "time",
        oid::TIMESTAMP => "timestamp",
        oid::TIMESTAMPTZ => "timestamptz",
        oid::INTERVAL => "interval",
        oid::TIMETZ => "timetz",
        oid::NUMERIC => "numeric",
        oid::UUID => "uuid",
        oid::JSONB => "jsonb",
        oid::BOOL_ARRAY => "bool[]",
        oid::BYTEA_ARRAY => "bytea[]",
        oid::CHAR_ARRAY => "char[]",
        oid::NAME_ARRAY => "name[]",
        oid::INT2_ARRAY => "int2[]",
        oid::INT4_ARRAY => "int4[]",
        oid::TEXT_ARRAY => "text[]",
        oid::BPCHAR_ARRAY => "bpchar[]",
        oid::VARCHAR_ARRAY => "varchar[]",
        oid::INT8_ARRAY => "int8[]",
        oid::FLOAT4_ARRAY => "float4[]",
        oid::FLOAT8_ARRAY => "float8[]",
        oid::OID_ARRAY => "oid[]",
        oid::TIMESTAMP_ARRAY => "timestamp[]",
        oid::DATE_ARRAY => "date[]",
        oid::TIME_ARRAY => "time[]",
        oid::TIMESTAMPTZ_ARRAY => "timestamptz[]",
        oid::INTERVAL_ARRAY => "interval[]",
        oid::NUMERIC_ARRAY => "numeric[]",
        oid::TIMETZ_ARRAY => "timetz[]",
        oid::UUID_ARRAY => "uuid[]",
        oid::JSON_ARRAY => "json[]",
        oid::JSONB_ARRAY => "jsonb[]",
        oid::MONEY_ARRAY => "money[]",
        _ => return None,
    })
}

/// The element type of a builtin array type walhook converts element-wise.
pub fn array_element(type_oid: u32) -> Option<u32> {
    Some(match type_oid {
        oid::BOOL_ARRAY => oid::BOOL,
        oid::BYTEA_ARRAY => oid::BYTEA,
        oid::CHAR_ARRAY => oid::CHAR,
        oid::NAME_ARRAY => oid::NAME,
        oid::INT2_ARRAY => oid::INT2,
        oid::INT4_ARRAY => oid::INT4,
        oid::TEXT_ARRAY => oid::TEXT,
        oid::BPCHAR_ARRAY => oid::BPCHAR,
        oid::VARCHAR_ARRAY => oid::VARCHAR,
        oid::INT8_ARRAY => oid::INT8,
        oid::FLOAT4_ARRAY => oid::FLOAT4,
        oid::FLOAT8_ARRAY => oid::FLOAT8,
        oid::OID_ARRAY => oid::OID,
        oid::TIMESTAMP_ARRAY => oid::TIMESTAMP,
        oid::DATE_ARRAY => oid::DATE,
        oid::TIME_ARRAY => oid::TIME,
        oid::TIMESTAMPTZ_ARRAY => oid::TIMESTAMPTZ,
        oid::INTERVAL_ARRAY => oid::INTERVAL,
        oid::NUMERIC_ARRAY => oid::NUMERIC,
        oid::TIMETZ_ARRAY => oid::TIMETZ,
        oid::UUID_ARRAY => oid::UUID,
        oid::JSON_ARRAY => oid::JSON,
        oid::JSONB_ARRAY => oid::JSONB,
        oid::MONEY_ARRAY => oid::MONEY,
        _ => return None,
    })
}

/// Converts one value in Postgres text output format to JSON according to its type.
pub fn to_json(type_oid: u32, text: &str, numbers: NumbersMode) -> Result<Value, ValueError> {
    if let Some(element) = array_element(type_oid) {
        return array(type_oid, element, text, numbers);
    }
    match type_oid {
        oid::INT2 | oid::INT4 | oid::OID => number(type_oid, text, false),
        oid::FLOAT4 | oid::FLOAT8 => number(type_oid, text, true),
        oid::INT8 | oid::NUMERIC => {
            let special = type_oid == oid::NUMERIC;
            match numbers {
                NumbersMode::Number => number(type_oid, text, special),
                NumbersMode::String => {
                    if is_json_number(text) || (special && is_special_float(text)) {
                        Ok(Value::String(text.to_owned()))
                    } else {
                        Err(ValueError::Number { type_oid })
                    }
                }
            }
        }
        oid::BOOL => match text {
            "t" => Ok(Value::Bool(true)),
            "f" => Ok(Value::Bool(false)),
            _ => Err(ValueError::Bool),
        },
        oid::JSON | oid::JSONB => {
            serde_json::from_str(text).map_err(|source| ValueError::Json { type_oid, source })
        }
        oid::BYTEA => bytea(text).map(Value::String),
        oid::TIMESTAMPTZ => timestamptz(text).map(Value::String),
        oid::TIMESTAMP => timestamp(text).map(Value::String),
        oid::TIMETZ => timetz(text).map(Value::String),
        _ => Ok(Value::String(text.to_owned())),
    }
}

/// Formats a pgoutput commit time (µs since 2000-01-01 UTC) as RFC 3339 with six fraction digits.
pub fn commit_time_rfc3339(micros_since_2000: i64) -> String {
    /// Days from 1970-01-01 to 2000-01-01, the Postgres epoch.
    const PG_EPOCH_DAYS: i64 = 10_957;
    let secs = micros_since_2000.div_euclid(1_000_000);
    let micros = micros_since_2000.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400) + PG_EPOCH_DAYS;
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

// ---------------------------------------------------------------------------
// numbers

fn is_special_float(text: &str) -> bool {
    matches!(text, "NaN" | "Infinity" | "-Infinity")
}

/// The JSON number grammar: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
/// Postgres's outputs are a subset, but a leading `+`, `.5` or `1.` would be
/// invalid JSON, so we check rather than trust.
fn is_json_number(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

fn number(type_oid: u32, text: &str, allow_special: bool) -> Result<Value, ValueError> {
    if allow_special && is_special_float(text) {
        // JSON has no NaN/Infinity; Postgres's to_json also writes them as strings.
        return Ok(Value::String(text.to_owned()));
    }
    if !is_json_number(text) {
        return Err(ValueError::Number { type_oid });
    }
    // With arbitrary_precision the Number keeps `text` verbatim, except that
    // serde_json writes an exponent with its sign (`1e308` → `1e+308`). Postgres
    // always prints the sign; any other spelling is rejected rather than sent
    // with different characters.
    // Only an exponent can be respelled, so plain digits skip the check.
    match text.parse::<Number>() {
        Ok(n) if !text.contains(['e', 'E']) || n.to_string() == text => Ok(Value::Number(n)),
        _ => Err(ValueError::Number { type_oid }),
    }
}

// ---------------------------------------------------------------------------
// bytea

fn bytea(text: &str) -> Result<String, ValueError> {
    let bytes = match text.strip_prefix("\\x") {
        Some(hex) => decode_hex(hex)?,
        None => decode_escape(text)?,
    };
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn decode_hex(hex: &str) -> Result<Vec<u8>, ValueError> {
    let hex = hex.as_bytes();
    if !hex.len().is_multiple_of(2) {
        return Err(ValueError::Bytea {
            offset: 2 + hex.len(),
            reason: "odd number of hex digits",
        });
    }
    let mut out = Vec::with_capacity(hex.len() / 2);
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        let bad = || ValueError::Bytea {
            offset: 2 + 2 * i,
            reason: "invalid hex digit",
        };
        let hi = pair.first().copied().and_then(hex_digit).ok_or_else(bad)?;
        let lo = pair.get(1).copied().and_then(hex_digit).ok_or_else(bad)?;
        out.push(hi << 4 | lo);
    }
    Ok(out)
}

/// The `bytea_output = escape` format: `\\` is a backslash, `\ooo` an octal byte,
/// anything else a literal byte.
fn decode_escape(text: &str) -> Result<Vec<u8>, ValueError> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        if b.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
            continue;
        }
        let octal = |k: usize, max: u8| b.get(i + k).filter(|d| (b'0'..=max).contains(d));
        match (octal(1, b'3'), octal(2, b'7'), octal(3, b'7')) {
            (Some(a), Some(m), Some(l)) => {
                out.push(((a - b'0') << 6) | ((m - b'0') << 3) | (l - b'0'));
                i += 4;
            }
            _ => {
                return Err(ValueError::Bytea {
                    offset: i,
                    reason: "invalid escape (expected \\x hex format, \\\\ or \\ooo)",
                })
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// dates and times

/// Values RFC 3339 cannot express; passed through as Postgres printed them.
fn is_datetime_sentinel(text: &str) -> bool {
    text == "infinity" || text == "-infinity" || text.ends_with(" BC")
}

/// Parses `YYYY-MM-DD` (four or more year digits) into numbers.
fn parse_date(type_oid: u32, date: &str) -> Result<(i64, i64, i64), ValueError> {
    let err = |reason| ValueError::DateTime { type_oid, reason };
    let b = date.as_bytes();
    // Postgres years end at 294276 (timestamps) / 5874897 (dates): seven digits.
    if b.len() < 10 || b.len() > 13 {
        return Err(err("date must be YYYY-MM-DD"));
    }
    let (year, rest) = b.split_at(b.len() - 6);
    if !(rest.first() == Some(&b'-') && rest.get(3) == Some(&b'-')) {
        return Err(err("date must be YYYY-MM-DD"));
    }
    let field = |s: &[u8]| -> Option<i64> {
        if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(s).ok()?.parse().ok()
    };
    let y = field(year);
    let m = rest.get(1..3).and_then(field);
    let d = rest.get(4..6).and_then(field);
    match (y, m, d) {
        (Some(y), Some(m), Some(d)) => Ok((y, m, d)),
        _ => Err(err("date must be YYYY-MM-DD")),
    }
}

/// Splits `HH:MM:SS[.ffffff]` off the front of `text`; returns (h, m, s, time text, rest).
fn split_time(type_oid: u32, text: &str) -> Result<(i64, i64, i64, &str, &str), ValueError> {
    let err = || ValueError::DateTime {
        type_oid,
        reason: "time must be HH:MM:SS[.ffffff]",
    };
    let b = text.as_bytes();
    let two = |at: usize| -> Option<i64> {
        let hi = b.get(at).filter(|c| c.is_ascii_digit())?;
        let lo = b.get(at + 1).filter(|c| c.is_ascii_digit())?;
        Some(i64::from(hi - b'0') * 10 + i64::from(lo - b'0'))
    };
    let (Some(h), Some(m), Some(s)) = (two(0), two(3), two(6)) else {
        return Err(err());
    };
    if b.get(2) != Some(&b':') || b.get(5) != Some(&b':') {
        return Err(err());
    }
    let mut end = 8;
    if b.get(end) == Some(&b'.') {
        end += 1;
        let start = end;
        while b.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
        if end == start {
            return Err(err());
        }
    }
    // `end` follows ASCII digits, so it is a char boundary; checked anyway.
    let (time, rest) = text.split_at_checked(end).ok_or_else(err)?;
    Ok((h, m, s, time, rest))
}

/// A UTC offset as Postgres prints it: `±HH`, `±HH:MM` or `±HH:MM:SS`.
struct Offset {
    negative: bool,
    hours: i64,
    minutes: i64,
    seconds: i64,
}

impl Offset {
    fn parse(type_oid: u32, text: &str) -> Result<Offset, ValueError> {
        let err = || ValueError::DateTime {
            type_oid,
            reason: "UTC offset must be +HH, +HH:MM or +HH:MM:SS",
        };
        let negative = match text.as_bytes().first() {
            Some(b'+') => false,
            Some(b'-') => true,
            _ => return Err(err()),
        };
        let mut parts = text.get(1..).unwrap_or_default().split(':');
        let mut part = |required: bool| -> Result<i64, ValueError> {
            match parts.next() {
                None if !required => Ok(0),
                Some(p) if p.len() == 2 && p.bytes().all(|c| c.is_ascii_digit()) => {
                    p.parse().map_err(|_| err())
                }
                _ => Err(err()),
            }
        };
        let hours = part(true)?;
        let minutes = part(false)?;
        let seconds = part(false)?;
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Offset {
            negative,
            hours,
            minutes,
            seconds,
        })
    }

    fn is_utc(&self) -> bool {
        self.hours == 0 && self.minutes == 0 && self.seconds == 0
    }

    fn sign(&self) -> char {
        if self.negative {
            '-'
        } else {
            '+'
        }
    }

    fn total_seconds(&self) -> i64 {
        let s = self.hours * 3600 + self.minutes * 60 + self.seconds;
        if self.negative {
            -s
        } else {
            s
        }
    }
}

fn timestamp(text: &str) -> Result<String, ValueError> {
    const T: u32 = oid::TIMESTAMP;
    if is_datetime_sentinel(text) {
        return Ok(text.to_owned());
    }
    let Some((date, rest)) = text.split_once(' ') else {
        return Err(ValueError::DateTime {
            type_oid: T,
            reason: "expected 'YYYY-MM-DD HH:MM:SS'",
        });
    };
    parse_date(T, date)?;
    let (_, _, _, time, tail) = split_time(T, rest)?;
    if !tail.is_empty() {
        return Err(ValueError::DateTime {
            type_oid: T,
            reason: "unexpected text after the time",
        });
    }
    Ok(format!("{date}T{time}"))
}

fn timestamptz(text: &str) -> Result<String, ValueError> {
    const T: u32 = oid::TIMESTAMPTZ;
    if is_datetime_sentinel(text) {
        return Ok(text.to_owned());
    }
    let Some((date, rest)) = text.split_once(' ') else {
        return Err(ValueError::DateTime {
            type_oid: T,
            reason: "expected 'YYYY-MM-DD HH:MM:SS+TZ'",
        });
    };
    let (y, mo, d) = parse_date(T, date)?;
    let (h, mi, s, time, offset) = split_time(T, rest)?;
    let offset = Offset::parse(T, offset)?;
    if offset.is_utc() {
        return Ok(format!("{date}T{time}Z"));
    }
    if offset.seconds == 0 {
        return Ok(format!(
            "{date}T{time}{}{:02}:{:02}",
            offset.sign(),
            offset.hours,
            offset.minutes
        ));
    }
    // RFC 3339 offsets have no seconds: shift to UTC, keeping the fraction.
    let fraction = time.get(8..).unwrap_or_default();
    let local = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s;
    let utc = local - offset.total_seconds();
    let (uy, umo, ud) = civil_from_days(utc.div_euclid(86_400));
    if uy < 1 {
        // Shifted into BC: keep what Postgres printed, like other BC values.
        return Ok(text.to_owned());
    }
    let sod = utc.rem_euclid(86_400);
    Ok(format!(
        "{uy:04}-{umo:02}-{ud:02}T{:02}:{:02}:{:02}{fraction}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    ))
}

fn timetz(text: &str) -> Result<String, ValueError> {
    const T: u32 = oid::TIMETZ;
    let (_, _, _, time, offset_text) = split_time(T, text)?;
    let offset = Offset::parse(T, offset_text)?;
    if offset.seconds != 0 {
        // No standard form has offset seconds; keep Postgres's (documented).
        return Ok(text.to_owned());
    }
    Ok(format!(
        "{time}{}{:02}:{:02}",
        offset.sign(),
        offset.hours,
        offset.minutes
    ))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

// ---------------------------------------------------------------------------
// arrays

/// Postgres's MAXDIM: arrays never have more dimensions, so deeper nesting is
/// malformed input (and bounds our recursion).
const MAX_ARRAY_DIMS: usize = 6;

/// One parsed array element before type conversion.
enum Node {
    Null,
    Scalar(String),
    Array(Vec<Node>),
}

fn array(
    type_oid: u32,
    element: u32,
    text: &str,
    numbers: NumbersMode,
) -> Result<Value, ValueError> {
    let mut parser = ArrayParser {
        s: text.as_bytes(),
        pos: 0,
        type_oid,
    };
    let root = parser.parse()?;
    let mut index = 0;
    convert(&root, type_oid, element, numbers, &mut index)
}

fn convert(
    node: &Node,
    type_oid: u32,
    element: u32,
    numbers: NumbersMode,
    index: &mut usize,
) -> Result<Value, ValueError> {
    match node {
        Node::Array(items) => items
            .iter()
            .map(|n| convert(n, type_oid, element, numbers, index))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Node::Null => {
            *index += 1;
            Ok(Value::Null)
        }
        Node::Scalar(s) => {
            let at = *index;
            *index += 1;
            to_json(element, s, numbers).map_err(|e| ValueError::ArrayElement {
                type_oid,
                index: at,
                source: Box::new(e),
            })
        }
    }
}

/// Parser for `array_out`'s format: optional `[lo:hi]...=` bounds, then
/// `{elem,elem}` where an element is a nested `{...}`, a double-quoted string
/// with `\` escapes, or a bare word (`NULL` unquoted is SQL NULL).
struct ArrayParser<'a> {
    s: &'a [u8],
    pos: usize,
    type_oid: u32,
}

impl ArrayParser<'_> {
    fn err(&self, reason: &'static str) -> ValueError {
        ValueError::Array {
            type_oid: self.type_oid,
            offset: self.pos,
            reason,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    fn parse(&mut self) -> Result<Node, ValueError> {
        self.skip_ws();
        if self.peek() == Some(b'[') {
            self.bounds()?;
        }
        self.skip_ws();
        let root = self.array(1)?;
        self.skip_ws();
        if self.pos != self.s.len() {
            return Err(self.err("unexpected text after the closing brace"));
        }
        Ok(root)
    }

    /// Skips `[lo:hi]` per dimension and the `=`: JSON arrays start at 0 anyway.
    fn bounds(&mut self) -> Result<(), ValueError> {
        while self.peek() == Some(b'[') {
            self.pos += 1;
            self.bound_number()?;
            if self.peek() != Some(b':') {
                return Err(self.err("expected ':' in dimension bounds"));
            }
            self.pos += 1;
            self.bound_number()?;
            if self.peek() != Some(b']') {
                return Err(self.err("expected ']' in dimension bounds"));
            }
            self.pos += 1;
        }
        if self.peek() != Some(b'=') {
            return Err(self.err("expected '=' after dimension bounds"));
        }
        self.pos += 1;
        Ok(())
    }

    fn bound_number(&mut self) -> Result<(), ValueError> {
        if matches!(self.peek(), Some(b'-' | b'+')) {
            self.pos += 1;
        }
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        if self.pos == start {
            return Err(self.err("expected a number in dimension bounds"));
        }
        Ok(())
    }

    fn array(&mut self, depth: usize) -> Result<Node, ValueError> {
        if depth > MAX_ARRAY_DIMS {
            return Err(self.err("more than 6 dimensions"));
        }
        if self.peek() != Some(b'{') {
            return Err(self.err("expected '{'"));
        }
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Node::Array(items));
        }
        loop {
            self.skip_ws();
            let item = match self.peek() {
                Some(b'{') => self.array(depth + 1)?,
                Some(b'"') => Node::Scalar(self.quoted()?),
                _ => self.bare()?,
            };
            // Postgres arrays are rectangular: a level holds sub-arrays or
            // elements, never both.
            let nested = matches!(item, Node::Array(_));
            if items
                .first()
                .is_some_and(|first| matches!(first, Node::Array(_)) != nested)
            {
                return Err(self.err("mixes sub-arrays and elements"));
            }
            items.push(item);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Node::Array(items));
                }
                Some(_) => return Err(self.err("expected ',' or '}'")),
                None => return Err(self.err("missing closing '}'")),
            }
        }
    }

    fn quoted(&mut self) -> Result<String, ValueError> {
        self.pos += 1; // opening quote
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err(self.err("unterminated quoted element")),
                Some(b'"') => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let Some(c) = self.peek() else {
                        return Err(self.err("backslash at end of input"));
                    };
                    out.push(c);
                    self.pos += 1;
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
        self.utf8(out)
    }

    fn bare(&mut self) -> Result<Node, ValueError> {
        let start = self.pos;
        let mut out = Vec::new();
        let mut escaped = false;
        // Length of `out` up to its last escaped or non-space byte, so trailing
        // whitespace is trimmed the way array_in does.
        let mut keep = 0;
        loop {
            match self.peek() {
                None | Some(b',' | b'}') => break,
                Some(b'{' | b'"') => return Err(self.err("unexpected '{' or '\"' in element")),
                Some(b'\\') => {
                    self.pos += 1;
                    let Some(c) = self.peek() else {
                        return Err(self.err("backslash at end of input"));
                    };
                    out.push(c);
                    self.pos += 1;
                    escaped = true;
                    keep = out.len();
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                    if !c.is_ascii_whitespace() {
                        keep = out.len();
                    }
                }
            }
        }
        out.truncate(keep);
        if out.is_empty() {
            self.pos = start;
            return Err(self.err("empty unquoted element"));
        }
        if !escaped && out.eq_ignore_ascii_case(b"NULL") {
            return Ok(Node::Null);
        }
        self.utf8(out).map(Node::Scalar)
    }

    fn utf8(&self, bytes: Vec<u8>) -> Result<String, ValueError> {
        // We only ever drop ASCII backslashes from valid UTF-8, so this holds;
        // checked anyway rather than assumed.
        String::from_utf8(bytes).map_err(|_| self.err("invalid UTF-8"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    const NUM: NumbersMode = NumbersMode::Number;

    fn conv(type_oid: u32, text: &str) -> Value {
        to_json(type_oid, text, NUM).unwrap()
    }

    /// Serialized form, which is what receivers see.
    fn out(type_oid: u32, text: &str) -> String {
        serde_json::to_string(&conv(type_oid, text)).unwrap()
    }

    #[test]
    fn numbers_keep_exact_digits() {
        let thousand: String = "9".repeat(600) + "." + &"1".repeat(400);
        for (oid, text) in [
            (oid::NUMERIC, "12345678901234.123456"),
            (oid::NUMERIC, "1.50"),
            (oid::NUMERIC, "0.000000000000000000000000000001"),
            (oid::NUMERIC, "-12.3400"),
            (oid::NUMERIC, thousand.as_str()),
            (oid::FLOAT8, "-0"),
            (oid::FLOAT8, "1e+308"),
            (oid::FLOAT8, "1.7976931348623157e+308"),
            (oid::FLOAT8, "5e-324"),
            (oid::FLOAT4, "1.1754944e-38"),
            (oid::FLOAT8, "0.1"),
            (oid::INT8, "9223372036854775807"),
            (oid::INT8, "-9223372036854775808"),
            (oid::INT4, "-2147483648"),
            (oid::INT2, "0"),
            (oid::OID, "4294967295"),
        ] {
            let v = conv(oid, text);
            assert!(v.is_number(), "{text}");
            assert_eq!(serde_json::to_string(&v).unwrap(), text);
        }
        assert_eq!(thousand.len(), 1001);
    }

    #[test]
    fn parsed_json_number_text_also_keeps_digits() {
        // Guards the arbitrary_precision feature: without it these would round.
        let v: Value = serde_json::from_str("12345678901234.123456").unwrap();
        assert_eq!(v.to_string(), "12345678901234.123456");
        let v: Value = serde_json::from_str("1.50").unwrap();
        assert_eq!(v.to_string(), "1.50");
    }

    #[test]
    fn special_floats_are_strings() {
        for text in ["NaN", "Infinity", "-Infinity"] {
            assert_eq!(conv(oid::FLOAT8, text), json!(text));
            assert_eq!(conv(oid::FLOAT4, text), json!(text));
            assert_eq!(conv(oid::NUMERIC, text), json!(text));
            assert!(to_json(oid::INT4, text, NUM).is_err());
            assert!(to_json(oid::INT8, text, NUM).is_err());
        }
    }

    /// Fuzz crash (value target): `1e308` became `1e+308`. Postgres always
    /// signs the exponent, so the digits sent are always the digits printed.
    #[test]
    fn numbers_serde_json_would_respell_are_rejected() {
        for text in ["1e308", "1E+308", "1.5E-5", "5e0"] {
            assert!(
                matches!(
                    to_json(oid::FLOAT8, text, NUM),
                    Err(ValueError::Number { .. })
                ),
                "{text}"
            );
        }
        assert_eq!(out(oid::FLOAT8, "1e+308"), "1e+308");
        assert_eq!(out(oid::FLOAT4, "1e-45"), "1e-45");
    }

    #[test]
    fn non_json_numbers_are_rejected() {
        for text in [
            "", "+1", ".5", "1.", "01", "1e", "1e+", "--1", "1 ", " 1", "0x10", "1,5", "١",
            "1.5.5", "nan",
        ] {
            let err = to_json(oid::NUMERIC, text, NUM).unwrap_err();
            assert!(
                matches!(err, ValueError::Number { type_oid: 1700 }),
                "{text}"
            );
            assert!(to_json(oid::NUMERIC, text, NumbersMode::String).is_err());
        }
        let err = to_json(oid::INT4, "abc", NUM).unwrap_err();
        assert_eq!(
            err.to_string(),
            "int4 value is not a number as PostgreSQL prints one"
        );
        assert!(!err.to_string().contains("abc"));
    }

    #[test]
    fn string_mode_quotes_only_int8_and_numeric() {
        let s = NumbersMode::String;
        assert_eq!(
            to_json(oid::INT8, "9223372036854775807", s).unwrap(),
            json!("9223372036854775807")
        );
        assert_eq!(to_json(oid::NUMERIC, "1.50", s).unwrap(), json!("1.50"));
        assert_eq!(to_json(oid::NUMERIC, "NaN", s).unwrap(), json!("NaN"));
        assert!(to_json(oid::INT4, "7", s).unwrap().is_number());
        assert!(to_json(oid::FLOAT8, "1.5", s).unwrap().is_number());
        assert_eq!(
            to_json(oid::INT8_ARRAY, "{1,NULL}", s).unwrap(),
            json!(["1", null])
        );
    }

    #[test]
    fn bools() {
        assert_eq!(conv(oid::BOOL, "t"), json!(true));
        assert_eq!(conv(oid::BOOL, "f"), json!(false));
        assert!(matches!(
            to_json(oid::BOOL, "true", NUM),
            Err(ValueError::Bool)
        ));
    }

    #[test]
    fn json_and_jsonb_are_embedded() {
        assert_eq!(
            conv(oid::JSONB, r#"{"k": 1, "a": [true, null, "x"]}"#),
            json!({"k": 1, "a": [true, null, "x"]})
        );
        // Key order as written and big numbers verbatim.
        assert_eq!(
            out(oid::JSON, r#"{"z": 1, "a": 12345678901234567890.10}"#),
            r#"{"z":1,"a":12345678901234567890.10}"#
        );
        // Numbers keep their digits; exponents get a lowercase e and a sign
        // (documented in docs/events.md).
        assert_eq!(
            out(oid::JSON, "[1e5, 1E5, 2.50E-3, -0]"),
            "[1e+5,1e+5,2.50e-3,-0]"
        );
        // json keeps NUL escapes; they round-trip as \u0000.
        assert_eq!(out(oid::JSON, r#""a\u0000b""#), r#""a\u0000b""#);
        // Duplicate keys: last value wins, at the first key's position.
        assert_eq!(out(oid::JSON, r#"{"a":1,"b":2,"a":3}"#), r#"{"a":3,"b":2}"#);
        assert_eq!(conv(oid::JSON, "  42 "), json!(42));
        let err = to_json(oid::JSONB, "{bad", NUM).unwrap_err();
        assert!(matches!(err, ValueError::Json { type_oid: 3802, .. }));
        assert!(err.to_string().starts_with("jsonb value is not valid JSON"));
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(to_json(oid::JSONB, &deep, NUM).is_err());
        // The documented limit (docs/events.md): 127 levels embed, 128 do not.
        let nested = |n: usize| "[".repeat(n) + &"]".repeat(n);
        assert!(to_json(oid::JSONB, &nested(127), NUM).is_ok());
        assert!(to_json(oid::JSONB, &nested(128), NUM).is_err());
    }

    #[test]
    fn timestamptz_to_rfc3339() {
        let t = oid::TIMESTAMPTZ;
        assert_eq!(
            conv(t, "2026-11-22 04:20:00.123456+00"),
            json!("2026-11-22T04:20:00.123456Z")
        );
        assert_eq!(
            conv(t, "2026-11-22 04:20:00+00"),
            json!("2026-11-22T04:20:00Z")
        );
        assert_eq!(
            conv(t, "2026-11-22 04:20:00.12+00"),
            json!("2026-11-22T04:20:00.12Z")
        );
        assert_eq!(
            conv(t, "2026-11-22 04:20:00+05:30"),
            json!("2026-11-22T04:20:00+05:30")
        );
        assert_eq!(
            conv(t, "2026-11-22 04:20:00.5-03"),
            json!("2026-11-22T04:20:00.5-03:00")
        );
        assert_eq!(
            conv(t, "294276-12-31 23:59:59+00"),
            json!("294276-12-31T23:59:59Z")
        );
        // Offsets with seconds (LMT) shift to UTC.
        assert_eq!(
            conv(t, "1883-11-18 12:00:00.25-04:56:02"),
            json!("1883-11-18T16:56:02.25Z")
        );
        assert_eq!(
            conv(t, "1900-12-31 23:59:59+00:19:32"),
            json!("1900-12-31T23:40:27Z")
        );
        assert_eq!(
            conv(t, "2000-12-31 23:00:00-01:00:01"),
            json!("2001-01-01T00:00:01Z")
        );
        for sentinel in ["infinity", "-infinity", "4714-11-24 00:00:00+00 BC"] {
            assert_eq!(conv(t, sentinel), json!(sentinel));
        }
        for bad in [
            "2026-11-22T04:20:00Z",
            "22/11/2026 04:20:00 UTC",
            "2026-11-22 04:20:00",
            "2026-11-22 04:20:00 UTC",
            "2026-11-22 04:20+00",
            "2026-11-22 04:20:00.+00",
            "2026-11-22 04:20:00+0",
            "2026-11-22 04:20:00+00:00:00:00",
            "26-11-22 04:20:00+00",
            "Sun Nov 22 04:20:00 2026 UTC",
        ] {
            let err = to_json(t, bad, NUM).unwrap_err();
            assert!(
                matches!(err, ValueError::DateTime { type_oid: 1184, .. }),
                "{bad}"
            );
        }
    }

    #[test]
    fn timestamp_date_time_timetz() {
        assert_eq!(
            conv(oid::TIMESTAMP, "2026-11-22 04:20:00.123456"),
            json!("2026-11-22T04:20:00.123456")
        );
        assert_eq!(
            conv(oid::TIMESTAMP, "2026-11-22 04:20:00"),
            json!("2026-11-22T04:20:00")
        );
        assert_eq!(
            conv(oid::TIMESTAMP, "12026-01-01 00:00:00"),
            json!("12026-01-01T00:00:00")
        );
        assert_eq!(conv(oid::TIMESTAMP, "infinity"), json!("infinity"));
        assert_eq!(
            conv(oid::TIMESTAMP, "0001-01-01 00:00:00 BC"),
            json!("0001-01-01 00:00:00 BC")
        );
        assert!(to_json(oid::TIMESTAMP, "2026-11-22 04:20:00+00", NUM).is_err());
        assert!(to_json(oid::TIMESTAMP, "2026-11-22", NUM).is_err());

        assert_eq!(conv(oid::DATE, "2026-11-22"), json!("2026-11-22"));
        assert_eq!(conv(oid::DATE, "-infinity"), json!("-infinity"));
        assert_eq!(conv(oid::DATE, "4713-01-01 BC"), json!("4713-01-01 BC"));
        assert_eq!(conv(oid::TIME, "04:20:00.5"), json!("04:20:00.5"));

        assert_eq!(conv(oid::TIMETZ, "04:05:06+02"), json!("04:05:06+02:00"));
        assert_eq!(
            conv(oid::TIMETZ, "04:05:06.789-03:30"),
            json!("04:05:06.789-03:30")
        );
        assert_eq!(conv(oid::TIMETZ, "04:05:06+00"), json!("04:05:06+00:00"));
        assert_eq!(
            conv(oid::TIMETZ, "04:05:06+00:19:32"),
            json!("04:05:06+00:19:32")
        );
        assert!(to_json(oid::TIMETZ, "04:05:06", NUM).is_err());
        assert!(to_json(oid::TIMETZ, "4:05:06+02", NUM).is_err());
    }

    #[test]
    fn bytea_to_base64() {
        assert_eq!(conv(oid::BYTEA, "\\x0a0b"), json!("Cgs="));
        assert_eq!(conv(oid::BYTEA, "\\x"), json!(""));
        assert_eq!(conv(oid::BYTEA, "\\x00ff00"), json!("AP8A"));
        assert_eq!(conv(oid::BYTEA, "\\xDEADBEEF"), json!("3q2+7w=="));
        // bytea_output = escape
        assert_eq!(conv(oid::BYTEA, "a\\000\\\\b\\377"), json!("YQBcYv8="));
        assert_eq!(conv(oid::BYTEA, ""), json!(""));
        for (bad, offset) in [
            ("\\x0a0", 5),
            ("\\x0g", 2),
            ("\\xzz00", 2),
            ("\\x0a\u{e9}", 4),
        ] {
            let err = to_json(oid::BYTEA, bad, NUM).unwrap_err();
            assert!(
                matches!(err, ValueError::Bytea { offset: o, .. } if o == offset),
                "{bad}: {err}"
            );
        }
        assert!(to_json(oid::BYTEA, "a\\9", NUM).is_err());
        assert!(to_json(oid::BYTEA, "a\\", NUM).is_err());
        assert!(to_json(oid::BYTEA, "\\400", NUM).is_err());
    }

    #[test]
    fn everything_else_is_text() {
        for (oid, text) in [
            (oid::TEXT, "ünïcödé 🦀 e\u{301} \u{202e}rtl \u{fffd}"),
            (oid::TEXT, ""),
            (oid::TEXT, "NULL"),
            (oid::VARCHAR, "x"),
            (oid::UUID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            (oid::INTERVAL, "1 year 2 mons 3 days 04:05:06"),
            (oid::MONEY, "$1,234.50"),
            (oid::XML, "<a/>"),
            (869, "192.168.0.1/32"),
            (99_999, "custom enum label"),
            (3904, "[1,5)"),
        ] {
            assert_eq!(conv(oid, text), json!(text));
        }
    }

    #[test]
    fn arrays_of_each_family() {
        assert_eq!(conv(oid::INT4_ARRAY, "{1,2,3}"), json!([1, 2, 3]));
        assert_eq!(conv(oid::INT4_ARRAY, "{}"), json!([]));
        assert_eq!(
            conv(oid::INT4_ARRAY, "{{1,2},{3,4}}"),
            json!([[1, 2], [3, 4]])
        );
        assert_eq!(
            conv(oid::INT4_ARRAY, "{{{1}},{{2}}}"),
            json!([[[1]], [[2]]])
        );
        assert_eq!(
            out(oid::NUMERIC_ARRAY, "{1.50,NaN,NULL}"),
            r#"[1.50,"NaN",null]"#
        );
        assert_eq!(out(oid::FLOAT8_ARRAY, "{-0,1e+308}"), "[-0,1e+308]");
        assert_eq!(
            conv(oid::BOOL_ARRAY, "{t,f,NULL}"),
            json!([true, false, null])
        );
        assert_eq!(
            conv(
                oid::TEXT_ARRAY,
                r#"{"a,b","\"q\"",NULL,"","NULL",null,"back\\slash",plain}"#
            ),
            json!([
                "a,b",
                "\"q\"",
                null,
                "",
                "NULL",
                null,
                "back\\slash",
                "plain"
            ])
        );
        assert_eq!(conv(oid::TEXT_ARRAY, "{🦀,\"{x}\"}"), json!(["🦀", "{x}"]));
        assert_eq!(
            conv(oid::JSONB_ARRAY, r#"{"{\"a\": 1}","[1, 2]",NULL,"\"s\""}"#),
            json!([{"a": 1}, [1, 2], null, "s"])
        );
        assert_eq!(
            conv(oid::BYTEA_ARRAY, r#"{"\\x0a0b","\\x",NULL}"#),
            json!(["Cgs=", "", null])
        );
        assert_eq!(
            conv(
                oid::TIMESTAMPTZ_ARRAY,
                r#"{"2026-11-22 04:20:00+00",infinity}"#
            ),
            json!(["2026-11-22T04:20:00Z", "infinity"])
        );
        assert_eq!(
            conv(oid::UUID_ARRAY, "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}"),
            json!(["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"])
        );
        assert_eq!(conv(oid::INT4_ARRAY, "{ 1 , 2 }"), json!([1, 2]));
        assert_eq!(conv(oid::TEXT_ARRAY, "{a\\,b}"), json!(["a,b"]));
        assert_eq!(conv(oid::TEXT_ARRAY, "{\\NULL}"), json!(["NULL"]));
        // Unknown array types (here int4range[]) are text.
        assert_eq!(conv(3905, "{\"[1,2)\"}"), json!("{\"[1,2)\"}"));
    }

    #[test]
    fn array_bounds_are_dropped() {
        assert_eq!(conv(oid::INT4_ARRAY, "[0:1]={1,2}"), json!([1, 2]));
        assert_eq!(conv(oid::INT4_ARRAY, "[-3:-2]={1,2}"), json!([1, 2]));
        assert_eq!(
            conv(oid::TEXT_ARRAY, "[1:2][1:2]={{a,b},{c,d}}"),
            json!([["a", "b"], ["c", "d"]])
        );
    }

    #[test]
    fn malformed_arrays_are_errors() {
        for bad in [
            "",
            "{",
            "}",
            "{1,2",
            "{1,,2}",
            "{1,}",
            "{,1}",
            "1,2",
            "{1}x",
            "{\"a}",
            "{a\"b}",
            "{{1},2}",
            "{1,{2}}",
            "[0:1]{1,2}",
            "[0:1={1}",
            "[a:1]={1}",
            "{{{{{{{1}}}}}}}",
            "{\"a\\",
            "{a\\",
        ] {
            let err = to_json(oid::INT4_ARRAY, bad, NUM).unwrap_err();
            assert!(
                matches!(err, ValueError::Array { type_oid: 1007, .. }),
                "{bad}: {err}"
            );
        }
        // Six dimensions are allowed.
        assert_eq!(conv(oid::INT4_ARRAY, "{{{{{{1}}}}}}"), json!([[[[[[1]]]]]]));
        let err = to_json(oid::INT4_ARRAY, "{1,x}", NUM).unwrap_err();
        assert!(
            matches!(&err, ValueError::ArrayElement { index: 1, .. }),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "int4[] element 1: int4 value is not a number as PostgreSQL prints one"
        );
        assert!(to_json(oid::BYTEA_ARRAY, r#"{"\\x0"}"#, NUM).is_err());
    }

    #[test]
    fn commit_times() {
        assert_eq!(commit_time_rfc3339(0), "2000-01-01T00:00:00.000000Z");
        assert_eq!(commit_time_rfc3339(-1), "1999-12-31T23:59:59.999999Z");
        assert_eq!(
            commit_time_rfc3339(-86_400_000_001),
            "1999-12-30T23:59:59.999999Z"
        );
        assert_eq!(
            commit_time_rfc3339(848_636_400_123_456),
            "2026-11-22T04:20:00.123456Z"
        );
        assert_eq!(
            commit_time_rfc3339(5_097_600_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
        // Extremes must not panic.
        let _ = commit_time_rfc3339(i64::MIN);
        let _ = commit_time_rfc3339(i64::MAX);
    }

    #[test]
    fn civil_round_trip() {
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 1, 1), 10_957);
    }

    /// Deterministic xorshift64 (no rand dependency; failures reproduce).
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
    }

    #[test]
    fn fuzz_never_panics() {
        let alphabet = b"{}[]:=,\"\\ NULnul0123456789abcdefx.+-eETZ:BC";
        let oids = [
            oid::INT4_ARRAY,
            oid::TEXT_ARRAY,
            oid::BYTEA_ARRAY,
            oid::JSONB_ARRAY,
            oid::TIMESTAMPTZ_ARRAY,
            oid::TIMESTAMPTZ,
            oid::TIMESTAMP,
            oid::TIMETZ,
            oid::BYTEA,
            oid::NUMERIC,
            oid::FLOAT8,
            oid::BOOL,
            oid::JSON,
        ];
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
        for _ in 0..20_000 {
            let len = (rng.next() % 40) as usize;
            let mut s = String::new();
            for _ in 0..len {
                if rng.next().is_multiple_of(16) {
                    s.push('é');
                } else {
                    s.push(alphabet[(rng.next() % alphabet.len() as u64) as usize] as char);
                }
            }
            for oid in oids {
                let _ = to_json(oid, &s, NUM);
                let _ = to_json(oid, &s, NumbersMode::String);
            }
        }
    }
}
