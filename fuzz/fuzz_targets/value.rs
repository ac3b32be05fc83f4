//! Postgres text values → JSON for every type family. The first byte picks
//! the type and the numbers mode, the rest is the text.
//!
//! Beyond "never panics": whatever converts must be valid JSON that parses
//! back to the same value, and a number must keep exactly the digits
//! Postgres printed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use walhook::config::NumbersMode;
use walhook::source::value::{oid, to_json};

/// Every type walhook converts specially, an enum-like unknown OID and an
/// unknown array type (both pass through as text).
const TYPES: &[u32] = &[
    oid::BOOL,
    oid::BYTEA,
    oid::INT8,
    oid::INT2,
    oid::INT4,
    oid::OID,
    oid::JSON,
    oid::FLOAT4,
    oid::FLOAT8,
    oid::MONEY,
    oid::DATE,
    oid::TIME,
    oid::TIMESTAMP,
    oid::TIMESTAMPTZ,
    oid::INTERVAL,
    oid::TIMETZ,
    oid::NUMERIC,
    oid::UUID,
    oid::JSONB,
    oid::TEXT,
    oid::BOOL_ARRAY,
    oid::BYTEA_ARRAY,
    oid::INT2_ARRAY,
    oid::INT4_ARRAY,
    oid::INT8_ARRAY,
    oid::TEXT_ARRAY,
    oid::FLOAT8_ARRAY,
    oid::NUMERIC_ARRAY,
    oid::TIMESTAMP_ARRAY,
    oid::TIMESTAMPTZ_ARRAY,
    oid::TIMETZ_ARRAY,
    oid::DATE_ARRAY,
    oid::JSON_ARRAY,
    oid::JSONB_ARRAY,
    oid::UUID_ARRAY,
    oid::MONEY_ARRAY,
    16_385,
    3905,
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let type_oid = TYPES[usize::from(selector & 0x7F) % TYPES.len()];
    let numbers = if selector & 0x80 == 0 {
        NumbersMode::Number
    } else {
        NumbersMode::String
    };
    let Ok(value) = to_json(type_oid, text, numbers) else {
        return;
    };
    let out = serde_json::to_string(&value).expect("a converted value serializes");
    match serde_json::from_str::<Value>(&out) {
        Ok(back) => assert_eq!(back, value, "{out} does not parse back to itself"),
        // Embedded JSON up to serde_json's limit inside an array can nest deeper
        // than the limit; that is for the reader to cope with, not invalid JSON.
        Err(err) => assert!(
            err.to_string().contains("recursion limit"),
            "{out} is not valid JSON: {err}"
        ),
    }
    // (Embedded json/jsonb is JSON, not Postgres's digits: serde_json may
    // respell its numbers' exponents, `1e308` as `1e+308`, the same number.)
    if value.is_number() && type_oid != oid::JSON && type_oid != oid::JSONB {
        assert_eq!(out, text, "a number keeps Postgres's digits");
    }
});
