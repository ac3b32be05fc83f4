//! Micro-benchmarks of the per-row hot paths: pgoutput decoding, text value
//! → JSON, mapping a row to its event and serializing it, and signing.
//!
//! `cargo bench --bench hot` (criterion; results in target/criterion).
//! End-to-end figures come from `bench/run`, not from here.
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use walhook::config::{NumbersMode, TableConfig};
use walhook::delivery::{jiandaoyun_signature, SigningKey};
use walhook::event::mapping::{FormMapper, TxContext};
use walhook::source::pgoutput::{decode, Message};
use walhook::source::value::{oid, to_json};

const RELATION_ID: u32 = 16_384;

/// The columns of a typical order row: (name, type, key?).
const COLUMNS: &[(&str, u32, bool)] = &[
    ("id", oid::INT8, true),
    ("customer", oid::TEXT, false),
    ("total", oid::NUMERIC, false),
    ("status", oid::TEXT, false),
    ("created_at", oid::TIMESTAMPTZ, false),
    ("paid", oid::BOOL, false),
    ("tags", oid::TEXT_ARRAY, false),
    ("meta", oid::JSONB, false),
];

/// The row's values in Postgres' text format, in column order.
const VALUES: &[&str] = &[
    "1234567",
    "ACME Trading Co., Ltd.",
    "1999.95",
    "paid",
    "2026-11-22 04:20:00.123456+00",
    "t",
    "{priority,\"gift wrap\"}",
    "{\"channel\": \"web\", \"items\": 3, \"coupon\": null}",
];

fn cstring(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

fn relation_message() -> Vec<u8> {
    let mut m = vec![b'R'];
    m.extend_from_slice(&RELATION_ID.to_be_bytes());
    cstring(&mut m, "public");
    cstring(&mut m, "orders");
    m.push(b'd');
    m.extend_from_slice(&(COLUMNS.len() as i16).to_be_bytes());
    for (name, type_oid, key) in COLUMNS {
        m.push(u8::from(*key));
        cstring(&mut m, name);
        m.extend_from_slice(&type_oid.to_be_bytes());
        m.extend_from_slice(&(-1i32).to_be_bytes());
    }
    m
}

fn tuple(out: &mut Vec<u8>, values: &[&str]) {
    out.extend_from_slice(&(values.len() as i16).to_be_bytes());
    for v in values {
        out.push(b't');
        out.extend_from_slice(&(v.len() as i32).to_be_bytes());
        out.extend_from_slice(v.as_bytes());
    }
}

fn insert_message() -> Vec<u8> {
    let mut m = vec![b'I'];
    m.extend_from_slice(&RELATION_ID.to_be_bytes());
    m.push(b'N');
    tuple(&mut m, VALUES);
    m
}

fn update_message() -> Vec<u8> {
    let mut m = vec![b'U'];
    m.extend_from_slice(&RELATION_ID.to_be_bytes());
    m.push(b'N');
    tuple(&mut m, VALUES);
    m
}

fn delete_message() -> Vec<u8> {
    let mut m = vec![b'D'];
    m.extend_from_slice(&RELATION_ID.to_be_bytes());
    m.push(b'K');
    // Key-only old tuple: the key, NULL elsewhere.
    m.extend_from_slice(&(COLUMNS.len() as i16).to_be_bytes());
    m.push(b't');
    m.extend_from_slice(&(VALUES[0].len() as i32).to_be_bytes());
    m.extend_from_slice(VALUES[0].as_bytes());
    m.extend(std::iter::repeat_n(b'n', COLUMNS.len() - 1));
    m
}

fn mapper() -> FormMapper {
    let table = TableConfig {
        name: "public.orders".into(),
        form: Some("orders".into()),
        ..TableConfig::default()
    };
    let mut mapper = FormMapper::new(&[table]);
    let Message::Relation(rel) = decode(&Bytes::from(relation_message())).unwrap() else {
        panic!("not a relation");
    };
    mapper.on_relation(rel).unwrap();
    mapper
}

fn ctx() -> TxContext {
    TxContext {
        commit_lsn: 0x0000_0001_6B37_4D48,
        xid: 7_331,
        commit_time: "2026-11-22T04:20:00.123456Z".into(),
    }
}

fn decoding(c: &mut Criterion) {
    let mut g = c.benchmark_group("pgoutput_decode");
    g.throughput(Throughput::Elements(1));
    for (name, bytes) in [
        ("relation", relation_message()),
        ("insert_8_columns", insert_message()),
        ("update_8_columns", update_message()),
        ("delete_key_only", delete_message()),
    ] {
        let buf = Bytes::from(bytes);
        g.bench_function(name, |b| b.iter(|| decode(black_box(&buf)).unwrap()));
    }
    g.finish();
}

fn values(c: &mut Criterion) {
    let mut g = c.benchmark_group("value_to_json");
    g.throughput(Throughput::Elements(1));
    let cases: &[(&str, u32, &str)] = &[
        ("int8", oid::INT8, "1234567"),
        ("numeric", oid::NUMERIC, "1999.95"),
        ("text", oid::TEXT, "ACME Trading Co., Ltd."),
        (
            "timestamptz",
            oid::TIMESTAMPTZ,
            "2026-11-22 04:20:00.123456+00",
        ),
        ("bool", oid::BOOL, "t"),
        (
            "jsonb",
            oid::JSONB,
            "{\"channel\": \"web\", \"items\": 3, \"coupon\": null}",
        ),
        ("int4_array", oid::INT4_ARRAY, "{1,2,3,42,1000}"),
        ("bytea_64", oid::BYTEA, BYTEA_64),
    ];
    for (name, type_oid, text) in cases {
        g.bench_function(*name, |b| {
            b.iter(|| to_json(*type_oid, black_box(text), NumbersMode::Number).unwrap())
        });
    }
    g.finish();
}

/// 64 bytes in Postgres' hex bytea output.
const BYTEA_64: &str = "\\x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f";

fn events(c: &mut Criterion) {
    let mapper = mapper();
    let ctx = ctx();
    let Message::Insert { relation_id, new } = decode(&Bytes::from(insert_message())).unwrap()
    else {
        panic!("not an insert");
    };
    let mut g = c.benchmark_group("event");
    g.throughput(Throughput::Elements(1));
    g.bench_function("map_insert", |b| {
        b.iter(|| {
            mapper
                .insert(relation_id, black_box(&new), &ctx, 1)
                .unwrap()
        })
    });
    let event = mapper.insert(relation_id, &new, &ctx, 1).unwrap();
    g.bench_function("serialize", |b| {
        b.iter(|| serde_json::to_vec(black_box(&event)).unwrap())
    });
    let raw = Bytes::from(insert_message());
    g.bench_function("decode_map_serialize_insert", |b| {
        b.iter(|| {
            let Message::Insert { relation_id, new } = decode(black_box(&raw)).unwrap() else {
                unreachable!()
            };
            let ev = mapper.insert(relation_id, &new, &ctx, 1).unwrap();
            serde_json::to_vec(&ev).unwrap()
        })
    });
    g.finish();
}

fn signing(c: &mut Criterion) {
    let mapper = mapper();
    let Message::Insert { relation_id, new } = decode(&Bytes::from(insert_message())).unwrap()
    else {
        panic!("not an insert");
    };
    let body = serde_json::to_vec(&mapper.insert(relation_id, &new, &ctx(), 1).unwrap()).unwrap();
    let key = SigningKey::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    let id = "000000016B374D48-0001";
    let mut g = c.benchmark_group("sign");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("standard_webhooks_hmac_sha256", |b| {
        b.iter(|| key.sign(id, 1_795_321_200, black_box(&body)))
    });
    g.bench_function("jiandaoyun_sha1", |b| {
        b.iter(|| {
            jiandaoyun_signature(
                "4f1c2a9e0b7d3c55",
                black_box(&body),
                "secret",
                1_795_321_200,
            )
        })
    });
    g.finish();
    let mut g = c.benchmark_group("sign_1mib");
    let big = vec![b'x'; 1 << 20];
    g.throughput(Throughput::Bytes(big.len() as u64));
    g.bench_function("standard_webhooks_hmac_sha256", |b| {
        b.iter_batched(
            || (),
            |()| key.sign(id, 1_795_321_200, black_box(&big)),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(hot, decoding, values, events, signing);
criterion_main!(hot);
