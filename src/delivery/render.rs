//! The single "format" step: the events of one request → the exact request
//! body bytes (and the values of templated headers).
//!
//! Every caller (the worker, `send_test`) goes through [`Renderer::render`],
//! which picks the subscription's `format`:
//!
//! - `walhook`: one event's body is the stored event JSON, byte for byte (so
//!   numbers keep the digits Postgres printed and the signature covers exactly
//!   what the store holds).
//! - `jiandaoyun`: the body 简道云's data push sends, `{"op": ..., "data":
//!   {...}}` with no other top-level key. `data` starts with `_id` (the row
//!   key the store keeps beside the event, composite keys joined by `:`),
//!   `appId`, `entryId` and `formName` (the form), `createTime`/`updateTime`
//!   (commit time, ISO 8601 UTC in milliseconds with `Z`, as 简道云 writes
//!   them), `deleteTime` (commit time on `data_remove` and `data_truncate`,
//!   else null), `creator`/`updater`/`deleter` (null), then the row's fields
//!   with their exact digits. `form_update` becomes `{"appId", "entryId",
//!   "name", "widgets": [{"label", "name", "type"}]}`. A row field named like
//!   one of those keys is an error (rename the column), never silently lost.
//! - `template`: the subscription's Jinja template rendered with the event as
//!   context (`template`). Unless a `content-type` header says otherwise, the
//!   result must parse as JSON.
//!
//! Several events (the later `batch` option) become `{"events": [ ... ]}` of
//! the per-event bodies; a template sees the first event's fields plus
//! `events`, the list of all of them. Templated headers are rendered against
//! the first event.
//!
//! Every failure is a [`RenderError`]: sending again cannot help, so the
//! retry policy dead-letters the event with the reason at once.

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};

use super::template::{self, CompileError, Templates};
use crate::config::{Format, SubscriptionConfig};
use crate::event::{Event, Op};
use crate::store::StoredEvent;

/// Why a body could not be rendered; sending it again cannot help.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// Nothing to send: a caller bug, reported rather than sending `{}`.
    #[error("no events to render")]
    Empty,
    /// The stored event is not the event JSON (a corrupt store row).
    #[error("event {id} in the store is not valid event JSON")]
    Event {
        /// The event id.
        id: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// The body template failed on this event.
    #[error("the template failed on event {id}")]
    Template {
        /// The event id (the first of the request).
        id: String,
        /// minijinja's error.
        #[source]
        source: minijinja::Error,
    },
    /// The rendered template is not JSON although the body is sent as JSON.
    #[error(
        "the template's output for event {id} is not valid JSON; embed values with |tojson, \
         or set a non-JSON content-type header if the body is not JSON"
    )]
    NotJson {
        /// The event id (the first of the request).
        id: String,
        /// The parser's error (position and problem, no content).
        #[source]
        source: serde_json::Error,
    },
    /// `format = "template"` without a template (config validation prevents it).
    #[error("format = \"template\" needs a template")]
    NoTemplate,
    /// A row event has no stored key, so it has no jiandaoyun `_id`.
    #[error(
        "event {id} has no row key (it was stored by an older walhook), so it has no jiandaoyun _id"
    )]
    MissingKey {
        /// The event id.
        id: String,
    },
    /// A row field has the name of a jiandaoyun system field.
    #[error(
        "event {id}: field {field:?} collides with the jiandaoyun system field of that name; \
         rename the column in [[tables]] rename"
    )]
    FieldCollision {
        /// The event id.
        id: String,
        /// The field name.
        field: String,
    },
    /// The event's commit time is not RFC 3339 (a corrupt store row).
    #[error("event {id} has an unreadable commit_time")]
    CommitTime {
        /// The event id.
        id: String,
    },
    /// A templated header failed to render.
    #[error("the template of header {name:?} failed on event {id}")]
    HeaderTemplate {
        /// The header name as configured.
        name: String,
        /// The event id (the first of the request).
        id: String,
        /// minijinja's error.
        #[source]
        source: minijinja::Error,
    },
    /// A templated header rendered to something that is not a header value.
    #[error(
        "header {name:?} rendered for event {id} is not a valid HTTP header value \
         (line breaks and control characters are not allowed)"
    )]
    HeaderValue {
        /// The header name as configured.
        name: String,
        /// The event id (the first of the request).
        id: String,
    },
}

/// Why the filter could not be evaluated on an event (counts as no match).
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// The stored event is not JSON.
    #[error("the event in the store is not valid JSON")]
    Event(#[source] serde_json::Error),
    /// The expression failed on this event (a type mismatch, a missing value).
    #[error("the filter failed: {}", .0.detail().unwrap_or("evaluation error"))]
    Eval(#[source] minijinja::Error),
}

/// What one request carries besides the fixed parts of its endpoint.
#[derive(Debug, Clone, Default)]
pub(crate) struct Rendered {
    /// The exact body bytes (signed as they are).
    pub(crate) body: Bytes,
    /// Rendered templated headers; they replace the configured raw values.
    pub(crate) headers: HeaderMap,
}

/// A subscription's format, compiled: built once per worker.
#[derive(Debug)]
pub(crate) struct Renderer {
    format: Format,
    /// `batch` is set: every body is `{"events": [...]}`, even for one event,
    /// so a batch receiver always parses one shape.
    batched: bool,
    templates: Templates,
    app_id: String,
    /// Whether a template's output must be JSON (no non-JSON content-type header).
    json_body: bool,
}

impl Renderer {
    /// Compiles the subscription's filter and templates.
    pub(crate) fn new(sub: &SubscriptionConfig) -> Result<Self, CompileError> {
        let content_type = sub
            .headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
            .map(|(_, value)| value.as_str());
        Ok(Renderer {
            format: sub.format,
            batched: sub.batch.is_some(),
            templates: Templates::compile(sub)?,
            app_id: sub.app_id.clone().unwrap_or_default(),
            json_body: content_type.is_none_or(is_json_media_type),
        })
    }

    /// Whether a request of one event is that event's stored JSON, byte for
    /// byte, with no templated header (the walhook format without `batch`):
    /// then the body can be the stored payload itself instead of a copy.
    pub(crate) fn sends_payload_as_is(&self) -> bool {
        self.format == Format::Walhook && !self.batched && !self.templates.has_headers()
    }

    /// Whether `event` passes the subscription's filter (true without one).
    pub(crate) fn matches(&self, event: &StoredEvent) -> Result<bool, FilterError> {
        if !self.templates.has_filter() {
            return Ok(true);
        }
        let ctx = template::context(&event.payload).map_err(FilterError::Event)?;
        self.templates.matches(&ctx).map_err(FilterError::Eval)
    }

    /// Renders the request for `events` (in commit order).
    pub(crate) fn render(&self, events: &[StoredEvent]) -> Result<Rendered, RenderError> {
        let first = events.first().ok_or(RenderError::Empty)?;
        let needs_context = self.format == Format::Template || self.templates.has_headers();
        let ctx = if needs_context {
            Some(context(events)?)
        } else {
            None
        };
        let body = match self.format {
            Format::Walhook | Format::Jiandaoyun => wrap(
                events.iter().map(|e| self.render_event(e).map(Vec::from)),
                self.batched,
            )?,
            Format::Template => {
                let ctx = ctx.as_ref().ok_or(RenderError::NoTemplate)?;
                let text = self
                    .templates
                    .render_body(ctx)
                    .ok_or(RenderError::NoTemplate)?
                    .map_err(|source| RenderError::Template {
                        id: first.id.clone(),
                        source,
                    })?;
                if self.json_body {
                    serde_json::from_str::<serde::de::IgnoredAny>(&text).map_err(|source| {
                        RenderError::NotJson {
                            id: first.id.clone(),
                            source,
                        }
                    })?;
                }
                Bytes::from(text)
            }
        };
        let mut headers = HeaderMap::new();
        if let Some(ctx) = &ctx {
            let rendered = self
                .templates
                .render_headers(ctx)
                .map_err(|(name, source)| RenderError::HeaderTemplate {
                    name: name.to_owned(),
                    id: first.id.clone(),
                    source,
                })?;
            for (name, value) in rendered {
                let invalid = || RenderError::HeaderValue {
                    name: name.to_owned(),
                    id: first.id.clone(),
                };
                let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid())?;
                let mut value = HeaderValue::from_str(&value).map_err(|_| invalid())?;
                value.set_sensitive(true);
                headers.insert(header, value);
            }
        }
        Ok(Rendered { body, headers })
    }

    /// One event's body in the subscription's format (an item of a batch;
    /// the batch planner measures with it).
    pub(crate) fn render_event(&self, event: &StoredEvent) -> Result<Bytes, RenderError> {
        match self.format {
            Format::Walhook => Ok(Bytes::copy_from_slice(&event.payload)),
            Format::Jiandaoyun => serde_json::to_vec(&self.jiandaoyun(event)?)
                .map(Bytes::from)
                .map_err(|source| RenderError::Event {
                    id: event.id.clone(),
                    source,
                }),
            // A template renders the whole request; alone, one event is
            // rendered as if it were the request.
            Format::Template => self
                .render(std::slice::from_ref(event))
                .map(|rendered| rendered.body),
        }
    }

    /// One event as 简道云's data push sends it (see the module docs).
    fn jiandaoyun(&self, event: &StoredEvent) -> Result<Value, RenderError> {
        let parsed: Event =
            serde_json::from_slice(&event.payload).map_err(|source| RenderError::Event {
                id: event.id.clone(),
                source,
            })?;
        let app_id = Value::String(self.app_id.clone());
        let form = Value::String(parsed.form.clone());
        let mut data = Map::new();
        if parsed.op == Op::FormUpdate {
            let widgets = parsed
                .data
                .get("fields")
                .and_then(Value::as_array)
                .map(|fields| {
                    fields
                        .iter()
                        .map(|field| {
                            let name = field.get("name").cloned().unwrap_or(Value::Null);
                            let mut widget = Map::new();
                            widget.insert("label".into(), name.clone());
                            widget.insert("name".into(), name);
                            widget.insert(
                                "type".into(),
                                field.get("type").cloned().unwrap_or(Value::Null),
                            );
                            Value::Object(widget)
                        })
                        .collect()
                })
                .unwrap_or_default();
            data.insert("appId".into(), app_id);
            data.insert("entryId".into(), form.clone());
            data.insert("name".into(), form);
            data.insert("widgets".into(), Value::Array(widgets));
        } else {
            let id = match (&event.key, parsed.op) {
                (Some(key), _) => Value::String(key.clone()),
                (None, Op::DataCreate | Op::DataUpdate | Op::DataRemove) => {
                    return Err(RenderError::MissingKey {
                        id: event.id.clone(),
                    })
                }
                // A test event has no row: its id stands in.
                (None, Op::Test) => Value::String(event.id.clone()),
                (None, _) => Value::Null,
            };
            let time = jiandaoyun_time(&parsed.source.commit_time).ok_or_else(|| {
                RenderError::CommitTime {
                    id: event.id.clone(),
                }
            })?;
            let time = Value::String(time);
            let deleted = matches!(parsed.op, Op::DataRemove | Op::DataTruncate);
            data.insert("_id".into(), id);
            data.insert("appId".into(), app_id);
            data.insert("entryId".into(), form.clone());
            data.insert("formName".into(), form);
            data.insert("createTime".into(), time.clone());
            data.insert("updateTime".into(), time.clone());
            data.insert(
                "deleteTime".into(),
                if deleted { time } else { Value::Null },
            );
            data.insert("creator".into(), Value::Null);
            data.insert("updater".into(), Value::Null);
            data.insert("deleter".into(), Value::Null);
            for (field, value) in parsed.data {
                if data.contains_key(&field) {
                    return Err(RenderError::FieldCollision {
                        id: event.id.clone(),
                        field,
                    });
                }
                data.insert(field, value);
            }
        }
        let mut body = Map::new();
        body.insert("op".into(), Value::String(parsed.op.as_str().to_owned()));
        body.insert("data".into(), Value::Object(data));
        Ok(Value::Object(body))
    }
}

/// One body per event; several (or any number, for a batch subscription)
/// become `{"events":[...]}` of the same bytes.
fn wrap(
    bodies: impl ExactSizeIterator<Item = Result<Vec<u8>, RenderError>>,
    batched: bool,
) -> Result<Bytes, RenderError> {
    if bodies.len() == 1 && !batched {
        let mut bodies = bodies;
        return match bodies.next() {
            Some(body) => Ok(Bytes::from(body?)),
            None => Err(RenderError::Empty),
        };
    }
    if bodies.len() == 0 {
        return Err(RenderError::Empty);
    }
    let mut out = Vec::from(BATCH_OPEN);
    for (i, body) in bodies.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&body?);
    }
    out.extend_from_slice(BATCH_CLOSE);
    Ok(Bytes::from(out))
}

const BATCH_OPEN: &[u8] = br#"{"events":["#;
const BATCH_CLOSE: &[u8] = b"]}";

/// The template context: the first event, plus `events` (all of them) when
/// there are several.
fn context(events: &[StoredEvent]) -> Result<minijinja::Value, RenderError> {
    let parse = |e: &StoredEvent| {
        serde_json::from_slice::<Value>(&e.payload).map_err(|source| RenderError::Event {
            id: e.id.clone(),
            source,
        })
    };
    let first = events.first().ok_or(RenderError::Empty)?;
    let mut ctx = parse(first)?;
    if events.len() > 1 {
        let all = events.iter().map(parse).collect::<Result<Vec<_>, _>>()?;
        if let Value::Object(map) = &mut ctx {
            map.insert("events".into(), Value::Array(all));
        }
    }
    Ok(template::to_value(&ctx))
}

/// `2026-11-22T04:20:00.123456Z` → `2026-11-22T04:20:00.123Z` (简道云 writes
/// milliseconds); None when not RFC 3339.
fn jiandaoyun_time(commit_time: &str) -> Option<String> {
    let time = humantime::parse_rfc3339_weak(commit_time).ok()?;
    Some(humantime::format_rfc3339_millis(time).to_string())
}

/// `application/json`, `application/problem+json`, ...: a JSON media type.
fn is_json_media_type(value: &str) -> bool {
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json") || template::is_template(value)
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
    use crate::delivery::http::{Attempt, UnsendableError};
    use crate::delivery::retry::{decide, Decision};

    fn sub(extra: serde_json::Value) -> SubscriptionConfig {
        let mut base = serde_json::json!({"name": "s", "url": "http://127.0.0.1:1/"});
        if let (Some(base), Some(extra)) = (base.as_object_mut(), extra.as_object()) {
            base.extend(extra.clone());
        }
        serde_json::from_value(base).unwrap()
    }

    fn renderer(extra: serde_json::Value) -> Renderer {
        Renderer::new(&sub(extra)).unwrap()
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
            key: None,
        }
    }

    const SRC: &str = r#""source":{"schema":"public","table":"order_lines","lsn":"0/16B3748","xid":731,"commit_time":"2026-11-22T04:20:00.123456Z"}"#;

    fn row_event(op: &str, data: &str, key: Option<&str>) -> StoredEvent {
        StoredEvent {
            op: op.into(),
            key: key.map(str::to_owned),
            ..event(
                1,
                &format!(
                    r#"{{"id":"00000000016B3748-0003","op":"{op}","form":"order_lines","data":{data},{SRC}}}"#
                ),
            )
        }
    }

    fn body(renderer: &Renderer, events: &[StoredEvent]) -> String {
        String::from_utf8(renderer.render(events).unwrap().body.to_vec()).unwrap()
    }

    #[test]
    fn single_event_body_is_the_stored_bytes_unchanged() {
        let payload = r#"{"id":"X","data":{"total":12345678901234.123456,"price":1.50}}"#;
        let rendered = renderer(serde_json::json!({}))
            .render(&[event(1, payload)])
            .unwrap();
        assert_eq!(&rendered.body[..], payload.as_bytes());
        assert!(rendered.headers.is_empty());
    }

    #[test]
    fn several_events_are_wrapped() {
        let body = renderer(serde_json::json!({}))
            .render(&[event(1, r#"{"a":1}"#), event(2, r#"{"b":2.50}"#)])
            .unwrap()
            .body;
        assert_eq!(&body[..], br#"{"events":[{"a":1},{"b":2.50}]}"#);
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed["events"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn a_batch_subscription_wraps_even_one_event() {
        let batched = renderer(serde_json::json!({"batch": {}}));
        let body = batched.render(&[event(1, r#"{"a":1}"#)]).unwrap().body;
        assert_eq!(&body[..], br#"{"events":[{"a":1}]}"#);
        let three = [event(1, "{}"), event(2, r#"{"b":2}"#), event(3, "[]")];
        let body = batched.render(&three).unwrap().body;
        assert_eq!(body.len(), batch_len(three.iter().map(|e| e.payload.len())));
        assert_eq!(batch_len([7]), br#"{"events":[]}"#.len() + 7);
    }

    #[test]
    fn no_events_is_an_error() {
        assert!(matches!(
            renderer(serde_json::json!({})).render(&[]),
            Err(RenderError::Empty)
        ));
    }

    fn jdy() -> Renderer {
        renderer(serde_json::json!({"format": "jiandaoyun", "app_id": "shop"}))
    }

    #[test]
    fn jiandaoyun_create_body_is_exact_with_composite_key() {
        let e = row_event(
            "data_create",
            r#"{"order_id":42,"line":"a:1","total":120.50,"big":12345678901234.123456}"#,
            Some("42:a:1"),
        );
        assert_eq!(
            body(&jdy(), &[e]),
            r#"{"op":"data_create","data":{"_id":"42:a:1","appId":"shop","entryId":"order_lines","formName":"order_lines","createTime":"2026-11-22T04:20:00.123Z","updateTime":"2026-11-22T04:20:00.123Z","deleteTime":null,"creator":null,"updater":null,"deleter":null,"order_id":42,"line":"a:1","total":120.50,"big":12345678901234.123456}}"#
        );
    }

    #[test]
    fn jiandaoyun_update_and_remove_bodies_are_exact() {
        let mut update = row_event(
            "data_update",
            r#"{"order_id":42,"line":"b","status":"paid"}"#,
            Some("42:b"),
        );
        // `old` and `changed` are walhook's; 简道云 bodies carry the row only.
        update.payload = format!(
            r#"{{"id":"00000000016B3748-0003","op":"data_update","form":"order_lines","data":{{"order_id":42,"line":"b","status":"paid"}},"old":{{"order_id":42,"line":"b","status":"new"}},"changed":["status"],{SRC}}}"#
        )
        .into_bytes();
        assert_eq!(
            body(&jdy(), &[update]),
            r#"{"op":"data_update","data":{"_id":"42:b","appId":"shop","entryId":"order_lines","formName":"order_lines","createTime":"2026-11-22T04:20:00.123Z","updateTime":"2026-11-22T04:20:00.123Z","deleteTime":null,"creator":null,"updater":null,"deleter":null,"order_id":42,"line":"b","status":"paid"}}"#
        );
        let remove = row_event("data_remove", r#"{"order_id":42,"line":"b"}"#, Some("42:b"));
        assert_eq!(
            body(&jdy(), &[remove]),
            r#"{"op":"data_remove","data":{"_id":"42:b","appId":"shop","entryId":"order_lines","formName":"order_lines","createTime":"2026-11-22T04:20:00.123Z","updateTime":"2026-11-22T04:20:00.123Z","deleteTime":"2026-11-22T04:20:00.123Z","creator":null,"updater":null,"deleter":null,"order_id":42,"line":"b"}}"#
        );
    }

    #[test]
    fn jiandaoyun_form_update_body_is_exact() {
        let e = row_event(
            "form_update",
            r#"{"form":"order_lines","fields":[{"name":"order_id","type":"int4"},{"name":"line","type":"text"}]}"#,
            None,
        );
        assert_eq!(
            body(&jdy(), &[e]),
            r#"{"op":"form_update","data":{"appId":"shop","entryId":"order_lines","name":"order_lines","widgets":[{"label":"order_id","name":"order_id","type":"int4"},{"label":"line","name":"line","type":"text"}]}}"#
        );
    }

    #[test]
    fn jiandaoyun_without_key_or_with_a_colliding_field_is_an_error() {
        let e = row_event("data_create", r#"{"order_id":1}"#, None);
        assert!(matches!(
            jdy().render(&[e]),
            Err(RenderError::MissingKey { .. })
        ));
        let e = row_event("data_create", r#"{"order_id":1,"appId":"x"}"#, Some("1"));
        assert!(matches!(
            jdy().render(&[e]),
            Err(RenderError::FieldCollision { field, .. }) if field == "appId"
        ));
        let e = row_event("data_truncate", "{}", None);
        let parsed: serde_json::Value = serde_json::from_str(&body(&jdy(), &[e])).unwrap();
        assert_eq!(parsed["data"]["_id"], serde_json::Value::Null);
        assert_eq!(parsed["data"]["deleteTime"], "2026-11-22T04:20:00.123Z");
    }

    fn wecom() -> Renderer {
        renderer(serde_json::json!({
            "format": "template",
            "template": r#"{"msgtype":"text","text":{"content":{{ (form ~ " " ~ data.name ~ " total " ~ data.total) | tojson }}}}"#,
            "headers": {"Idempotency-Key": "{{ id }}-{{ op }}", "X-Team": "ops"},
        }))
    }

    #[test]
    fn template_renders_json_body_and_header_templates() {
        let e = row_event(
            "data_create",
            r#"{"name":"A \"q\"\nB","total":120.50}"#,
            Some("1"),
        );
        let rendered = wecom().render(&[e]).unwrap();
        let parsed: serde_json::Value = serde_json::from_slice(&rendered.body).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({"msgtype": "text", "text": {"content": "order_lines A \"q\"\nB total 120.5"}})
        );
        assert_eq!(
            rendered.headers.get("idempotency-key").unwrap(),
            "00000000016B3748-0003-data_create"
        );
        assert!(
            rendered.headers.get("x-team").is_none(),
            "static headers stay on the endpoint"
        );
    }

    #[test]
    fn template_with_several_events_sees_the_first_and_the_list() {
        let r = renderer(serde_json::json!({
            "format": "template",
            "template": r#"{"first": {{ id | tojson }}, "n": {{ events | length }}}"#,
        }));
        let a = row_event("data_create", r#"{"x":1}"#, Some("1"));
        let b = row_event("data_create", r#"{"x":2}"#, Some("2"));
        assert_eq!(
            body(&r, &[a, b]),
            r#"{"first": "00000000016B3748-0003", "n": 2}"#
        );
    }

    #[test]
    fn template_output_that_is_not_json_is_dead_lettered_with_the_reason() {
        let r = renderer(serde_json::json!({
            "format": "template",
            "template": r#"{"text": "{{ data.name }}"}"#,
        }));
        let e = row_event("data_create", r#"{"name":"say \"hi\""}"#, Some("1"));
        let err = r.render(&[e]).unwrap_err();
        assert!(matches!(err, RenderError::NotJson { .. }), "{err:?}");
        let attempt = Attempt::Unsendable(UnsendableError::from(err));
        let retry = crate::config::RetryConfig::default();
        let decision = decide(
            attempt.outcome(),
            1,
            &retry,
            std::time::SystemTime::now(),
            &mut rand::rng(),
        );
        assert_eq!(decision, Decision::DeadLetter);
        let reason = attempt.describe(std::time::Duration::from_secs(1));
        assert!(reason.contains("is not valid JSON"), "{reason}");
        assert!(
            !reason.contains("say"),
            "no row values in the reason: {reason}"
        );
    }

    #[test]
    fn template_with_a_non_json_content_type_may_produce_text() {
        let r = renderer(serde_json::json!({
            "format": "template",
            "template": "order {{ data.name }} changed",
            "headers": {"Content-Type": "text/plain; charset=utf-8"},
        }));
        let e = row_event("data_create", r#"{"name":"x"}"#, Some("1"));
        assert_eq!(body(&r, &[e]), "order x changed");
    }

    #[test]
    fn header_template_rendering_a_line_break_is_an_error() {
        let r = renderer(serde_json::json!({"headers": {"X-Name": "{{ data.name }}"}}));
        let e = row_event("data_create", r#"{"name":"a\nb"}"#, Some("1"));
        assert!(matches!(
            r.render(&[e]),
            Err(RenderError::HeaderValue { name, .. }) if name == "X-Name"
        ));
    }

    #[test]
    fn filter_failure_is_an_error_and_absent_filter_matches() {
        let e = row_event(
            "data_create",
            r#"{"total":120.50,"status":"paid"}"#,
            Some("1"),
        );
        assert!(renderer(serde_json::json!({})).matches(&e).unwrap());
        let r =
            renderer(serde_json::json!({"filter": "data.total > 100 and data.status != 'draft'"}));
        assert!(r.matches(&e).unwrap());
        let r = renderer(serde_json::json!({"filter": "data.status + 1 > 100"}));
        assert!(matches!(r.matches(&e), Err(FilterError::Eval(_))));
        let r = renderer(serde_json::json!({"filter": "data.total > 100"}));
        assert!(matches!(
            r.matches(&event(1, "not json")),
            Err(FilterError::Event(_))
        ));
    }

    /// The shipped robot examples (`examples/robots/*.toml`): each parses and
    /// validates as a subscription, and renders a valid body of the robot's shape.
    const ROBOTS: [(&str, &str); 5] = [
        ("wecom", include_str!("../../examples/robots/wecom.toml")),
        ("feishu", include_str!("../../examples/robots/feishu.toml")),
        (
            "dingtalk",
            include_str!("../../examples/robots/dingtalk.toml"),
        ),
        ("slack", include_str!("../../examples/robots/slack.toml")),
        (
            "discord",
            include_str!("../../examples/robots/discord.toml"),
        ),
    ];

    fn robot_text(name: &str, body: &serde_json::Value) -> String {
        let text = match name {
            "wecom" | "dingtalk" => {
                assert_eq!(body["msgtype"], "text", "{body}");
                &body["text"]["content"]
            }
            "feishu" => {
                assert_eq!(body["msg_type"], "text", "{body}");
                &body["content"]["text"]
            }
            "slack" => &body["text"],
            "discord" => &body["content"],
            other => panic!("unknown robot {other}"),
        };
        let keys = body.as_object().unwrap().len();
        assert_eq!(
            keys,
            if name == "slack" || name == "discord" {
                1
            } else {
                2
            },
            "{body}"
        );
        text.as_str().unwrap().to_owned()
    }

    #[test]
    fn robot_examples_render_valid_bodies_with_the_row_values() {
        let env = |name: &str| Some(format!("{}-value", name.to_ascii_lowercase()));
        let customer = "Zoë \"Z\" \\ Ltd\nsecond line";
        for (name, toml) in ROBOTS {
            let text = format!(
                "[source]\nurl = \"postgres://u@127.0.0.1/app\"\n[[tables]]\nname = \"public.orders\"\n{toml}"
            );
            let config = crate::config::from_str_with_env(&text, &format!("{name}.toml"), &env)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let sub = &config.subscriptions[0];
            assert_eq!((sub.name.as_str(), sub.format), (name, Format::Template));
            let r = Renderer::new(sub).unwrap();
            let data = serde_json::json!({"id": 42, "status": "paid", "total": 120.5, "customer": customer});
            let e = row_event("data_create", &data.to_string(), Some("42"));
            let e = StoredEvent {
                payload: String::from_utf8(e.payload)
                    .unwrap()
                    .replace("order_lines", "orders")
                    .into_bytes(),
                ..e
            };
            assert!(r.matches(&e).unwrap(), "{name}");
            let rendered = r.render(&[e]).unwrap();
            let body: serde_json::Value = serde_json::from_slice(&rendered.body)
                .unwrap_or_else(|err| panic!("{name}: not JSON ({err})"));
            let text = robot_text(name, &body);
            assert!(text.contains("[orders] created #42"), "{name}: {text}");
            for needle in [
                "status: paid",
                "total: 120.5",
                &format!("customer: {customer}"),
            ] {
                assert!(text.contains(needle), "{name}: {text:?} lacks {needle:?}");
            }
        }
    }
}
