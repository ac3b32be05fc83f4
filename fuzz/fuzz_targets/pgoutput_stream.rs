//! A replication stream as walhook's capture sees it: frames (a 2-byte
//! big-endian length, then one pgoutput message) are decoded and handed to
//! the table → form mapper, and every event it produces is serialized, as
//! the store writer does. Relations, types and rows of any shape meet the
//! mapping and the type → JSON conversion here.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use walhook::config::TableConfig;
use walhook::event::mapping::{FormMapper, TxContext};
use walhook::source::pgoutput::{decode, Message};

fn tables() -> Vec<TableConfig> {
    let toml = r#"
        [[tables]]
        name = "public.orders"

        [[tables]]
        name = "app.kinds"
        form = "kind"
        key = ["id"]
        exclude = ["password"]
        rename = { t = "title" }
        numbers = "string"
    "#;
    #[derive(serde::Deserialize)]
    struct Tables {
        tables: Vec<TableConfig>,
    }
    toml::from_str::<Tables>(toml)
        .expect("the fuzz target's table config parses")
        .tables
}

fuzz_target!(|data: &[u8]| {
    let mut mapper = FormMapper::new(&tables());
    mapper.seed_primary_key("public", "orders", vec!["id".to_owned()]);
    let mut ctx = TxContext {
        commit_lsn: 0,
        xid: 0,
        commit_time: String::new(),
    };
    let mut index = 0u32;
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let frame = &rest[2..];
        let len = len.min(frame.len());
        let (message, tail) = frame.split_at(len);
        rest = tail;
        let Ok(message) = decode(&Bytes::copy_from_slice(message)) else {
            continue;
        };
        let events = match message {
            Message::Begin {
                final_lsn,
                commit_time,
                xid,
            } => {
                ctx = TxContext {
                    commit_lsn: final_lsn,
                    xid,
                    commit_time: walhook::source::value::commit_time_rfc3339(commit_time),
                };
                index = 0;
                Vec::new()
            }
            Message::Relation(rel) => match mapper.on_relation(rel) {
                Ok(Some(change)) if !change.initial => {
                    vec![Ok(mapper.form_update(&change, &ctx, index))]
                }
                _ => Vec::new(),
            },
            Message::Type { id, schema, name } => {
                mapper.on_type(id, &schema, &name);
                Vec::new()
            }
            Message::Insert { relation_id, new } => {
                vec![mapper.insert(relation_id, &new, &ctx, index)]
            }
            Message::Update {
                relation_id,
                old,
                new,
            } => vec![mapper.update(relation_id, old.as_ref(), &new, &ctx, index)],
            Message::Delete { relation_id, old } => {
                vec![mapper.delete(relation_id, &old, &ctx, index)]
            }
            Message::Truncate {
                options,
                relation_ids,
            } => match mapper.truncate(&relation_ids, options, &ctx, index) {
                Ok(events) => events.into_iter().map(Ok).collect(),
                Err(err) => vec![Err(err)],
            },
            Message::Commit { .. } | Message::Origin { .. } | Message::Message { .. } => Vec::new(),
        };
        for event in events.into_iter().flatten() {
            let payload = serde_json::to_vec(&event).expect("an event serializes");
            let _ = mapper.row_key(&event);
            let _: serde_json::Value = serde_json::from_slice(&payload).unwrap_or_else(|err| {
                // Embedded JSON may nest up to serde_json's limit below `data`.
                assert!(err.to_string().contains("recursion limit"), "{err}");
                serde_json::Value::Null
            });
            index = index.wrapping_add(1);
        }
    }
});
