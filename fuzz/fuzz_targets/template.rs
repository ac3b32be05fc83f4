//! Filter and template compilation and rendering on fixed sample events.
//!
//! Input: one flags byte, then up to three NUL-separated parts: the filter
//! expression, the body template and a header value. Flags: bits 0–1 the
//! format (walhook, jiandaoyun, template), bit 2 `batch`, bit 3 a non-JSON
//! `content-type`, bit 4 render the one-event request instead of all.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walhook::config::SubscriptionConfig;
use walhook::delivery::fuzzing::filter_and_render;
use walhook::store::StoredEvent;

const UPDATE: &str = r#"{"id":"00000000016B3748-0003","op":"data_update","form":"orders","data":{"id":42,"status":"paid","total":120.50,"big":18446744073709551616,"tiny":1e-400,"neg":-9223372036854775808,"f":"NaN","name":"O'Brien \"q\" 🦀 e\u0301 \u202ertl \u0000","tags":["a",null,""],"meta":{"k":[1,{"x":true}]},"note":null},"old":{"id":42,"status":"new"},"changed":["status"],"source":{"schema":"public","table":"orders","lsn":"0/16B3748","xid":731,"commit_time":"2026-11-22T04:20:00.123456Z"}}"#;
const REMOVE: &str = r#"{"id":"00000000016B3748-0004","op":"data_remove","form":"orders","data":{"id":43},"source":{"schema":"public","table":"orders","lsn":"0/16B3748","xid":731,"commit_time":"2026-11-22T04:20:00.123456Z"}}"#;
const FORM_UPDATE: &str = r#"{"id":"00000000016B3800-0000","op":"form_update","form":"orders","data":{"form":"orders","fields":[{"name":"id","type":"int4"},{"name":"status","type":"text"}]},"source":{"schema":"public","table":"orders","lsn":"0/16B3800","xid":732,"commit_time":"2026-11-22T04:21:00.000001Z"}}"#;

fn event(seq: i64, op: &str, payload: &str, key: Option<&str>) -> StoredEvent {
    StoredEvent {
        seq,
        id: format!("00000000016B3748-{seq:04}"),
        op: op.to_owned(),
        form: "orders".to_owned(),
        commit_lsn: 0x16B_3748,
        payload: payload.as_bytes().to_vec(),
        stored_at_ms: 1_795_000_000_000,
        key: key.map(str::to_owned),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let mut parts = text.splitn(3, '\0');
    let filter = parts.next().filter(|s| !s.is_empty());
    let template = parts.next().unwrap_or_default();
    let header = parts.next().unwrap_or_default();
    let format = ["walhook", "jiandaoyun", "template"][usize::from(flags & 3) % 3];
    let mut sub = serde_json::json!({
        "name": "fuzz",
        "url": "http://127.0.0.1:9/hook",
        "format": format,
        "headers": { "x-fuzz": header },
    });
    if let Some(filter) = filter {
        sub["filter"] = filter.into();
    }
    if format == "template" {
        sub["template"] = template.into();
        sub["app_id"] = serde_json::Value::Null;
    }
    if format == "jiandaoyun" {
        sub["app_id"] = "app".into();
    }
    if flags & 4 != 0 {
        sub["batch"] = serde_json::json!({ "max_events": 10 });
    }
    if flags & 8 != 0 {
        sub["headers"]["content-type"] = "text/plain".into();
    }
    let sub: SubscriptionConfig = match serde_json::from_value(sub) {
        Ok(sub) => sub,
        Err(_) => return,
    };
    let events = [
        event(3, "data_update", UPDATE, Some("42")),
        event(4, "data_remove", REMOVE, Some("43")),
        event(5, "form_update", FORM_UPDATE, None),
    ];
    let events = if flags & 16 != 0 {
        &events[..1]
    } else {
        &events[..]
    };
    let Ok(outcome) = filter_and_render(&sub, events) else {
        return;
    };
    assert_eq!(outcome.matches.len(), events.len());
    if let Ok((body, _headers)) = &outcome.request {
        // Unless a content-type says otherwise, every body is JSON.
        if flags & 8 == 0 {
            let parsed = serde_json::from_slice::<serde_json::Value>(body);
            assert!(
                parsed.is_ok(),
                "a rendered body is not JSON: {}",
                String::from_utf8_lossy(body)
            );
        }
    }
});
