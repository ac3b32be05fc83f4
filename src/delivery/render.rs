//! The single "format" step: stored events → the exact request body bytes.
//!
//! Today only `format = "walhook"` exists: one event's body is the stored
//! event JSON, byte for byte (so numbers keep the digits Postgres printed and
//! the signature covers exactly what the store holds). A subscription with
//! `batch` (or a call with several events) gets `{"events": [ ... ]}` whose
//! items are the per-event bodies, unchanged: a batch of one is still
//! wrapped, so a batch receiver always parses one shape. Formats `jiandaoyun`
//! and `template` plug into [`render_event`], keyed on the subscription, so
//! every caller keeps going through [`render`].

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

const BATCH_OPEN: &[u8] = br#"{"events":["#;
const BATCH_CLOSE: &[u8] = b"]}";

/// Renders the request body for `events` (in commit order) for `sub`.
pub fn render(sub: &SubscriptionConfig, events: &[StoredEvent]) -> Result<Bytes, RenderError> {
    match events {
        [] => Err(RenderError::Empty),
        [event] if sub.batch.is_none() => render_event(sub, event),
        many => {
            let parts = many
                .iter()
                .map(|event| render_event(sub, event))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(wrap_batch(&parts))
        }
    }
}

/// One event's body in the subscription's format (an item of a batch).
pub fn render_event(_sub: &SubscriptionConfig, event: &StoredEvent) -> Result<Bytes, RenderError> {
    Ok(Bytes::copy_from_slice(&event.payload))
}

/// `{"events":[part,part,...]}` of already rendered per-event bodies.
fn wrap_batch(parts: &[Bytes]) -> Bytes {
    let mut body = Vec::with_capacity(batch_len(parts.iter().map(Bytes::len)));
    body.extend_from_slice(BATCH_OPEN);
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(part);
    }
    body.extend_from_slice(BATCH_CLOSE);
    Bytes::from(body)
}

/// The exact length of the batch body whose per-event bodies have these lengths.
pub fn batch_len(part_lens: impl IntoIterator<Item = usize>) -> usize {
    let (count, sum) = part_lens
        .into_iter()
        .fold((0usize, 0usize), |(n, sum), len| {
            (n + 1, sum.saturating_add(len))
        });
    BATCH_OPEN.len() + BATCH_CLOSE.len() + sum + count.saturating_sub(1)
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
    fn a_batch_subscription_wraps_even_one_event() {
        let mut batched = sub();
        batched.batch = Some(crate::config::BatchConfig::default());
        let body = render(&batched, &[event(1, r#"{"a":1}"#)]).unwrap();
        assert_eq!(&body[..], br#"{"events":[{"a":1}]}"#);
        let three = [event(1, "{}"), event(2, r#"{"b":2}"#), event(3, "[]")];
        let body = render(&batched, &three).unwrap();
        assert_eq!(body.len(), batch_len(three.iter().map(|e| e.payload.len())));
        assert_eq!(batch_len([7]), br#"{"events":[]}"#.len() + 7);
    }

    #[test]
    fn no_events_is_an_error() {
        assert!(matches!(render(&sub(), &[]), Err(RenderError::Empty)));
    }
}
