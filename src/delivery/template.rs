//! The one Jinja (minijinja) environment behind a subscription's `filter`,
//! its `format = "template"` body and its templated header values.
//!
//! Everything a subscription writes in Jinja is compiled here, once at config
//! load (`Config::validate`, so a syntax error is a config error naming the
//! key) and again when its worker starts. The context is the event as
//! DESIGN.md shows it (`id`, `op`, `form`, `data`, `old`, `changed`,
//! `unchanged_toast`, `source`), converted by [`context`].
//!
//! Numbers: the event JSON keeps Postgres' exact digits (serde_json's
//! `arbitrary_precision`), which `minijinja::Value::from_serialize` would turn
//! into maps. [`to_value`] converts instead: integers to i64/u64 when they
//! fit, everything else to f64, so `data.total > 100` compares numerically
//! (`120.50` included). Exact digits are not needed for comparisons or chat
//! messages; bodies that must keep them use `format = "walhook"` or
//! `"jiandaoyun"`.
//!
//! Safety: no auto-escaping (templates produce JSON, not HTML; use `|tojson`
//! to embed a value as a JSON literal with quotes, backslashes and newlines
//! escaped), and a fuel limit so a runaway loop in a template fails that one
//! event instead of stalling the worker.

use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};

use crate::config::{Format, SubscriptionConfig};

/// Name of the body template in the environment (no file extension, so
/// minijinja never picks an auto-escape mode from it).
const BODY: &str = "body";

/// Prefix of header template names (`header:<name>`).
const HEADER_PREFIX: &str = "header:";

/// Instructions one evaluation may run: a chat message over a wide row uses a
/// few thousand; a million stops a runaway `range()` loop within milliseconds.
const FUEL: u64 = 1_000_000;

/// Whether a header value is a template (holds `{{` or `{%`); other values are
/// sent as written.
pub fn is_template(value: &str) -> bool {
    value.contains("{{") || value.contains("{%")
}

/// A subscription's Jinja parts failed to compile.
#[derive(Debug, thiserror::Error)]
#[error("{field} does not compile: {source}")]
pub struct CompileError {
    /// The key below the subscription: `filter`, `template` or `headers.<name>`.
    pub field: String,
    /// minijinja's error (line and problem).
    #[source]
    pub source: minijinja::Error,
}

/// A subscription's compiled filter, body template and header templates.
pub(crate) struct Templates {
    env: Environment<'static>,
    filter: Option<String>,
    body: bool,
    headers: Vec<String>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("filter", &self.filter.is_some())
            .field("body", &self.body)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

/// The environment every subscription uses.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_fuel(Some(FUEL));
    env
}

impl Templates {
    /// Compiles the subscription's filter, template (only with
    /// `format = "template"`) and templated header values.
    pub(crate) fn compile(sub: &SubscriptionConfig) -> Result<Self, CompileError> {
        let mut env = environment();
        if let Some(filter) = &sub.filter {
            check_expression(filter)
                .and_then(|()| env.compile_expression(filter).map(drop))
                .map_err(|source| CompileError {
                    field: "filter".to_owned(),
                    source,
                })?;
        }
        let body = match (&sub.format, &sub.template) {
            (Format::Template, Some(template)) => {
                env.add_template_owned(BODY, template.clone())
                    .map_err(|source| CompileError {
                        field: "template".to_owned(),
                        source,
                    })?;
                true
            }
            _ => false,
        };
        let mut headers = Vec::new();
        for (name, value) in &sub.headers {
            if is_template(value) {
                env.add_template_owned(format!("{HEADER_PREFIX}{name}"), value.clone())
                    .map_err(|source| CompileError {
                        field: format!("headers.{name}"),
                        source,
                    })?;
                headers.push(name.clone());
            }
        }
        Ok(Templates {
            env,
            filter: sub.filter.clone(),
            body,
            headers,
        })
    }

    /// Whether there is a filter at all (so the worker can skip parsing).
    pub(crate) fn has_filter(&self) -> bool {
        self.filter.is_some()
    }

    /// Whether the event (`ctx`) passes the filter (true without one). The
    /// expression is compiled per call: it borrows the environment, and
    /// parsing a one-line expression costs microseconds next to a request.
    pub(crate) fn matches(&self, ctx: &Value) -> Result<bool, minijinja::Error> {
        let Some(filter) = &self.filter else {
            return Ok(true);
        };
        let value = self.env.compile_expression(filter)?.eval(ctx)?;
        Ok(value.is_true())
    }

    /// The rendered body template, when the subscription has one.
    pub(crate) fn render_body(&self, ctx: &Value) -> Option<Result<String, minijinja::Error>> {
        self.body
            .then(|| self.env.get_template(BODY).and_then(|t| t.render(ctx)))
    }

    /// The templated headers' names and rendered values; an error names its header.
    pub(crate) fn render_headers(
        &self,
        ctx: &Value,
    ) -> Result<Vec<(&str, String)>, (&str, minijinja::Error)> {
        self.headers
            .iter()
            .map(|name| {
                self.env
                    .get_template(&format!("{HEADER_PREFIX}{name}"))
                    .and_then(|template| template.render(ctx))
                    .map(|value| (name.as_str(), value))
                    .map_err(|err| (name.as_str(), err))
            })
            .collect()
    }

    /// Whether any header value is a template.
    pub(crate) fn has_headers(&self) -> bool {
        !self.headers.is_empty()
    }
}

/// Rejects an expression that ends minijinja's variable block (`}}` outside
/// brackets and string literals), as `{{ data.x }}` pasted into `filter`
/// would: minijinja 2 panics ("empty lexer stack") when such an expression
/// goes on after the `}}` (fixed in minijinja 3). The scan mirrors its lexer:
/// `}}` ends the block only at bracket depth 0.
fn check_expression(expr: &str) -> Result<(), minijinja::Error> {
    let b = expr.as_bytes();
    let mut depth: i64 = 0;
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'\'' | b'"' => {
                // Skip the string literal, escapes included.
                i += 1;
                while let Some(&d) = b.get(i) {
                    if d == c {
                        break;
                    }
                    i += if d == b'\\' { 2 } else { 1 };
                }
            }
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => {
                if c == b'}' && depth == 0 && b.get(i + 1) == Some(&b'}') {
                    return Err(minijinja::Error::new(
                        minijinja::ErrorKind::SyntaxError,
                        "`}}` ends a Jinja variable block; a filter is a bare expression: \
                         write data.total > 100, not {{ data.total > 100 }}",
                    ));
                }
                depth -= 1;
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// The template context of one event: its JSON as [`to_value`] converts it.
pub(crate) fn context(payload: &[u8]) -> Result<Value, serde_json::Error> {
    let json: serde_json::Value = serde_json::from_slice(payload)?;
    Ok(to_value(&json))
}

/// Converts event JSON to a template value; numbers become i64/u64 when
/// integral and in range, else f64 (see the module docs).
pub fn to_value(json: &serde_json::Value) -> Value {
    match json {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                // Exactly what Postgres printed, e.g. "120.50" or "1e400";
                // an out-of-range value becomes ±inf, which still compares.
                let text = n.to_string();
                match text.parse::<f64>() {
                    Ok(f) => Value::from(f),
                    Err(_) => Value::from(text),
                }
            }
        }
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(items) => items.iter().map(to_value).collect(),
        serde_json::Value::Object(map) => map
            .iter()
            .map(|(k, v)| (Value::from(k.as_str()), to_value(v)))
            .collect(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sub(extra: serde_json::Value) -> SubscriptionConfig {
        let mut base = serde_json::json!({"name": "s", "url": "http://127.0.0.1:1/"});
        if let (Some(base), Some(extra)) = (base.as_object_mut(), extra.as_object()) {
            base.extend(extra.clone());
        }
        serde_json::from_value(base).unwrap()
    }

    fn event() -> Value {
        context(
            br#"{"id":"00000000016B3748-0003","op":"data_update","form":"orders",
                "data":{"id":42,"status":"paid","total":120.50,"big":18446744073709551615,
                        "huge":123456789012345678901234567890,"name":"O'Brien","note":null},
                "old":{"id":42,"status":"new"},"changed":["status"],
                "source":{"schema":"public","table":"orders","lsn":"0/16B3748","xid":731,
                          "commit_time":"2026-11-22T04:20:00.123456Z"}}"#,
        )
        .unwrap()
    }

    fn filter(expr: &str) -> Result<bool, minijinja::Error> {
        Templates::compile(&sub(serde_json::json!({ "filter": expr })))
            .unwrap()
            .matches(&event())
    }

    #[test]
    fn filter_compares_numbers_numerically() {
        assert!(filter("data.total > 100").unwrap());
        assert!(filter("data.total > 120.4 and data.total < 120.6").unwrap());
        assert!(!filter("data.total > 200").unwrap());
        assert!(filter("data.total == 120.5").unwrap());
        assert!(filter("data.id == 42 and data.id is integer").unwrap());
        assert!(filter("data.big > 1000").unwrap());
        assert!(filter("data.huge > data.big").unwrap());
    }

    #[test]
    fn filter_compares_strings_ops_and_lists() {
        assert!(filter("data.status != 'draft' and op == 'data_update'").unwrap());
        assert!(filter("form in ['orders', 'users']").unwrap());
        assert!(filter("'status' in changed").unwrap());
        assert!(filter("old.status == 'new' and source.table == 'orders'").unwrap());
        assert!(filter("data.name == \"O'Brien\"").unwrap());
        assert!(!filter("data.status == 'draft'").unwrap());
        assert!(filter("data.note is none").unwrap());
    }

    #[test]
    fn filter_on_missing_fields_does_not_match_or_errors() {
        // An absent field is undefined: comparisons with it are false or an
        // error, both of which the worker treats as "does not match".
        assert!(!filter("data.missing == 'x'").unwrap());
        assert!(!filter("data.missing").unwrap());
        assert!(!filter("unchanged_toast and 'x' in unchanged_toast").unwrap());
        assert!(!filter("data.missing > 100").unwrap_or(false));
        assert!(!filter("nothing.at.all > 1").unwrap_or(false));
    }

    #[test]
    fn filter_runtime_errors_are_errors_not_panics() {
        assert!(filter("data.status + 1 > 100").is_err());
        assert!(filter("data.missing.deeper == 1").is_err());
        assert!(filter("data.id // 0 > 1").is_err());
        assert!(filter("range(100000000) | length > 0").is_err());
    }

    #[test]
    fn filter_that_does_not_compile_names_the_key() {
        let err =
            Templates::compile(&sub(serde_json::json!({"filter": "data.total >"}))).unwrap_err();
        assert_eq!(err.field, "filter");
        let err = Templates::compile(&sub(serde_json::json!({
            "format": "template", "template": "{{ data.x "
        })))
        .unwrap_err();
        assert_eq!(err.field, "template");
        let err = Templates::compile(&sub(serde_json::json!({
            "headers": {"Idempotency-Key": "{{ id "}
        })))
        .unwrap_err();
        assert_eq!(err.field, "headers.Idempotency-Key");
    }

    /// Fuzz crash (template target): minijinja 2 panicked with "empty lexer
    /// stack" on a filter that closes the variable block and goes on.
    #[test]
    fn filter_closing_the_variable_block_is_an_error_not_a_panic() {
        for bad in [
            "}}tA.total|float > fl3",
            "data.x }} y",
            "}}",
            "(1) }} x",
            "data.x -}} 1",
        ] {
            let err =
                Templates::compile(&sub(serde_json::json!({ "filter": bad }))).expect_err(bad);
            assert_eq!(err.field, "filter", "{bad}");
            assert!(err.to_string().contains("bare expression"), "{bad}: {err}");
        }
        // `}}` inside brackets or strings does not end the block.
        assert!(filter("{'a': {'b': 1}}.a.b == 1").unwrap());
        assert!(!filter("data.name == '}}' or data.name == \"x}}\\\"}}\"").unwrap());
        assert!(filter("[[1]][0][0] == 1").unwrap());
    }

    #[test]
    fn tojson_escapes_quotes_and_newlines() {
        let t = Templates::compile(&sub(serde_json::json!({
            "format": "template",
            "template": r#"{"text": {{ ("a \"q\"\nb " ~ data.name) | tojson }}, "total": {{ data.total | tojson }}, "data": {{ data | tojson }}}"#
        })))
        .unwrap();
        let out = t.render_body(&event()).unwrap().unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed["text"], "a \"q\"\nb O'Brien");
        assert_eq!(parsed["total"].to_string(), "120.5");
        assert_eq!(parsed["data"]["id"].to_string(), "42");
        assert_eq!(parsed["data"]["status"], "paid");
    }

    #[test]
    fn header_templates_render_and_static_values_are_not_templates() {
        let t = Templates::compile(&sub(serde_json::json!({
            "headers": {"Idempotency-Key": "{{ id }}", "X-Team": "ops"}
        })))
        .unwrap();
        assert!(t.has_headers());
        assert_eq!(
            t.render_headers(&event()).unwrap(),
            [("Idempotency-Key", "00000000016B3748-0003".to_owned())]
        );
        assert!(!is_template("ops"));
        assert!(is_template("{% if x %}a{% endif %}"));
    }
}
