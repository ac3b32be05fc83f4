//! The single "format" step: stored events → the exact request body bytes.
//!
//! Today only `format = "walhook"` exists: one event's body is the stored
//! event JSON, byte for byte (so numbers keep the digits Postgres printed and
//! the signature covers exactly what the store holds). Several events (the
//! later `batch` option) become `{"events": [ ... ]}` of the same bytes.
//! Formats `jiandaoyun` and `template` will plug in here, keyed on the
//! subscription, so every caller keeps going through this one function.

use bytes::Bytes;

use crate::config::SubscriptionConfig;
use crate::store::StoredEvent;

/// Why a body could not be rendered; sending it again cannot help.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// Nothing to send: a caller bug, reported rather than sending `{}`.
    #[error("no events to render")]
    Empty,
}

/// Renders the request body for `events` (in commit order) for `sub`.
pub fn render(_sub: &SubscriptionConfig, events: &[StoredEvent]) -> Result<Bytes, RenderError> {
    match events {
        [] => Err(RenderError::Empty),
        [event] => Ok(Bytes::copy_from_slice(&event.payload)),
        many => {
            const OPEN: &[u8] = br#"{"events":["#;
            const CLOSE: &[u8] = b"]}";
            let len =
                OPEN.len() + CLOSE.len() + many.iter().map(|e| e.payload.len() + 1).sum::<usize>();
            let mut body = Vec::with_capacity(len);
            body.extend_from_slice(OPEN);
            for (i, event) in many.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(&event.payload);
            }
            body.extend_from_slice(CLOSE);
            Ok(Bytes::from(body))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sub() -> SubscriptionConfig {
        serde_json::from_value(serde_json::json!({"name": "s", "url": "http://127.0.0.1:1/"}))
            .unwrap()
    }

    fn event(seq: i64, payload: &str) -> StoredEvent {
        StoredEvent {
            seq,
            id: format!("{seq:016X}-0000"),
            op: "data_create".into(),
            form: "orders".into(),
            commit_lsn: 1,
            payload: payload.as_bytes().to_vec(),
            stored_at_ms: 0,
        }
    }

    #[test]
    fn single_event_body_is_the_stored_bytes_unchanged() {
        let payload = r#"{"id":"X","data":{"total":12345678901234.123456,"price":1.50}}"#;
        let body = render(&sub(), &[event(1, payload)]).unwrap();
        assert_eq!(&body[..], payload.as_bytes());
    }

    #[test]
    fn several_events_are_wrapped() {
        let body = render(&sub(), &[event(1, r#"{"a":1}"#), event(2, r#"{"b":2.50}"#)]).unwrap();
        assert_eq!(&body[..], br#"{"events":[{"a":1},{"b":2.50}]}"#);
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed["events"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn no_events_is_an_error() {
        assert!(matches!(render(&sub(), &[]), Err(RenderError::Empty)));
    }
}
