//! Tests of loading whole config texts (the parts have their own tests beside them).
#![allow(clippy::unwrap_used)]

use super::*;

const EXAMPLE: &str = include_str!("../../config.example.toml");

fn env(name: &str) -> Option<String> {
    match name {
        "PGPASSWORD" => Some("pg-Pa55word".to_owned()),
        "CRM_SECRET" => Some("crm-hmac-secret-value".to_owned()),
        "SECRET" => Some("TOPSECRET-xyz".to_owned()),
        _ => None,
    }
}

const MINIMAL: &str = "[source]\nurl = \"postgres://walhook:${PGPASSWORD}@127.0.0.1:5432/app\"\n\n\
    [[tables]]\nname = \"public.orders\"\n";

fn parse(text: &str) -> Result<Config, ConfigError> {
    from_str_with_env(text, "walhook.toml", &env)
}

fn error(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

fn with_sub(sub: &str) -> String {
    format!("{MINIMAL}\n[[subscriptions]]\nname = \"crm\"\nurl = \"https://crm.example.com/h\"\n{sub}\n")
}

#[test]
fn example_parses() {
    let config = parse(EXAMPLE).unwrap();
    assert_eq!(config.tables.len(), 1);
    assert_eq!(config.tables[0].schema(), "public");
    assert_eq!(config.tables[0].table(), "orders");
    assert_eq!(config.tables[0].form_name(), "orders");
    assert_eq!(
        config.source.url.expose(),
        "postgres://walhook:pg-Pa55word@127.0.0.1:5432/app"
    );
    assert_eq!(config.subscriptions.len(), 1);
    match &config.subscriptions[0].auth {
        AuthConfig::Hmac { secret } => {
            assert_eq!(secret.secrets()[0].expose(), "crm-hmac-secret-value")
        }
        other => panic!("expected hmac, got {other:?}"),
    }
}

#[test]
fn defaults() {
    let c = parse(&with_sub("")).unwrap();
    assert_eq!(c.source.slot, DEFAULT_SLOT);
    assert_eq!(c.source.publication, DEFAULT_PUBLICATION);
    assert!(c.source.create_slot && c.source.manage_publication);
    assert_eq!(c.source.heartbeat, DEFAULT_HEARTBEAT);
    assert_eq!(c.source.status_interval.get().as_millis(), 200);
    assert_eq!(c.source.max_connect_attempts, 6);
    assert_eq!(c.store.path, PathBuf::from("./walhook-data"));
    assert_eq!(c.store.retention.get().as_secs(), 7 * 86400);
    assert!(c.admin.enabled && c.admin.token.is_none());
    assert_eq!(c.admin.listen, "127.0.0.1:9187");
    assert!(c.admin.allow.is_empty());
    assert_eq!(c.store.history_retention.get().as_secs(), 30 * 86400);
    assert_eq!(c.log, LogConfig::default());
    assert_eq!(
        (c.log.format, c.log.level.as_str()),
        (LogFormat::Pretty, "info")
    );
    assert_eq!(c.delivery.max_concurrency, 256);
    let s = &c.subscriptions[0];
    assert_eq!(s.method, HttpMethod::Post);
    assert_eq!(s.timeout.get().as_secs(), 10);
    assert_eq!(s.retry.max_attempts, 12);
    assert_eq!(s.retry.max.get().as_secs(), 3600);
    assert!(matches!(s.auth, AuthConfig::None));
    assert!(s.enabled);
    assert_eq!(c.tables[0].numbers, NumbersMode::Number);
}

#[test]
fn unknown_top_level_key_names_key_and_line() {
    let err = error(&format!("# top\ncolour = \"blue\"\n{MINIMAL}"));
    assert!(err.starts_with("walhook.toml:2:1: colour: "), "{err}");
    assert!(err.contains("unknown field `colour`"), "{err}");
}

#[test]
fn unknown_key_in_subscription_names_path_and_line() {
    let err = error(&with_sub("timout = \"5s\""));
    assert!(err.starts_with("walhook.toml:10:1: "), "{err}");
    assert!(err.contains("subscriptions[0].timout"), "{err}");
    assert!(err.contains("unknown field `timout`"), "{err}");
    let err = error(&with_sub("retry = { max_attempt = 3 }"));
    assert!(err.contains("subscriptions[0].retry.max_attempt"), "{err}");
}

#[test]
fn bad_duration_names_key_and_value() {
    let err = error(&with_sub("timeout = \"10 parsecs\""));
    assert!(err.contains("subscriptions[0].timeout"), "{err}");
    assert!(err.contains("10 parsecs"), "{err}");
    assert!(err.contains(":10:"), "{err}");
}

#[test]
fn bad_url_names_field() {
    let text = format!("{MINIMAL}\n[[subscriptions]]\nname = \"crm\"\nurl = \"not a url\"\n");
    let err = error(&text);
    assert!(err.contains("subscriptions[0].url"), "{err}");
    assert!(err.contains("not a valid URL"), "{err}");
}

#[test]
fn non_http_scheme_rejected() {
    let text =
        format!("{MINIMAL}\n[[subscriptions]]\nname = \"crm\"\nurl = \"ftp://x.example/h\"\n");
    match parse(&text).unwrap_err() {
        ConfigError::Invalid { field, message, .. } => {
            assert_eq!(field, "subscriptions[0].url");
            assert!(message.contains("ftp"), "{message}");
        }
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn unset_var_names_var_and_line() {
    let text = format!("{MINIMAL}\n[admin]\ntoken = \"${{WALHOOK_ADMIN_TOKEN}}\"\n");
    let err = parse(&text).unwrap_err();
    assert!(
        matches!(&err, ConfigError::UnsetVar { name, line: 8, .. } if name == "WALHOOK_ADMIN_TOKEN")
    );
    let msg = err.to_string();
    assert!(msg.starts_with("walhook.toml:8: "), "{msg}");
    assert!(msg.contains("WALHOOK_ADMIN_TOKEN"), "{msg}");
}

#[test]
fn dollar_escape_stays_literal() {
    let text = format!("{MINIMAL}\n[admin]\ntoken = \"$${{NOT_A_VAR}}\"\n");
    let c = parse(&text).unwrap();
    assert_eq!(c.admin.token.unwrap().expose(), "${NOT_A_VAR}");
}

#[test]
fn secrets_never_in_type_errors() {
    // A secret in a place expecting another type: serde quotes the value.
    let text = "[source]\nurl = \"postgres://h/db\"\nmax_connect_attempts = \"${SECRET}\"\n\
                [[tables]]\nname = \"t\"\n";
    let err = error(text);
    assert!(!err.contains("TOPSECRET"), "{err}");
    assert!(err.contains("${SECRET}"), "{err}");
    assert!(err.contains("source.max_connect_attempts"), "{err}");
    assert!(err.contains(":3:"), "{err}");
    // Unquoted (raw) placement, and inside a duration error that echoes the value.
    let text = "[source]\nurl = \"postgres://h/db\"\nmax_connect_attempts = ${SECRET}\n";
    let err = error(text);
    assert!(!err.contains("TOPSECRET"), "{err}");
    let err = error(&with_sub("timeout = \"${SECRET}\""));
    assert!(!err.contains("TOPSECRET"), "{err}");
    assert!(err.contains("subscriptions[0].timeout"), "{err}");
    // A bad URL made of a secret.
    let text = format!("{MINIMAL}\n[[subscriptions]]\nname = \"crm\"\nurl = \"${{SECRET}}\"\n");
    let err = error(&text);
    assert!(!err.contains("TOPSECRET"), "{err}");
    // A short secret at the error position is scrubbed too.
    let short = |name: &str| (name == "S").then(|| "ab".to_owned());
    let text = "[source]\nurl = \"postgres://h/db\"\nmax_connect_attempts = \"${S}\"\n";
    let err = from_str_with_env(text, "w.toml", &short)
        .unwrap_err()
        .to_string();
    assert!(!err.contains("\"ab\""), "{err}");
}

#[test]
fn secrets_never_in_invalid_source_url() {
    let err = error("[source]\nurl = \"host=h port=${SECRET}\"\n[[tables]]\nname = \"t\"\n");
    assert!(err.contains("source.url"), "{err}");
    assert!(!err.contains("TOPSECRET"), "{err}");
    let err = error("[source]\nurl = \"host=h pass${SECRET}=1\"\n[[tables]]\nname = \"t\"\n");
    assert!(err.contains("source.url"), "{err}");
    assert!(!err.contains("TOPSECRET"), "{err}");
    let err =
        error("[source]\nurl = \"postgres://u:hunter2@h:badport/db\"\n[[tables]]\nname = \"t\"\n");
    assert!(err.contains("source.url"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn debug_never_shows_secrets() {
    let text = with_sub(
        "headers = { Authorization = \"Bearer ${SECRET}\" }\nauth = { type = \"hmac\", secret = \"${CRM_SECRET}\" }",
    );
    let text = text.replace(
        "https://crm.example.com/h",
        "https://u:${PGPASSWORD}@crm.example.com/${SECRET}",
    );
    let text = format!("{text}\n[admin]\ntoken = \"${{SECRET}}\"\n");
    let c = parse(&text).unwrap();
    let debug = format!("{c:?} {c:#?}");
    for secret in ["TOPSECRET", "pg-Pa55word", "crm-hmac-secret-value"] {
        assert!(!debug.contains(secret), "{secret} in {debug}");
    }
    assert!(debug.contains("Authorization"), "{debug}");
}

#[test]
fn include_and_exclude_together_rejected() {
    let text = format!("{MINIMAL}include = [\"a\"]\nexclude = [\"b\"]\n");
    match parse(&text).unwrap_err() {
        ConfigError::Invalid { field, .. } => assert_eq!(field, "tables[0].include"),
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn at_least_one_table() {
    let err = error("[source]\nurl = \"postgres://h/db\"\n");
    assert!(
        err.contains("tables") && err.contains("[[tables]]"),
        "{err}"
    );
}

#[test]
fn duplicate_tables_and_forms_rejected() {
    let err = error(&format!("{MINIMAL}[[tables]]\nname = \"orders\"\n"));
    assert!(err.contains("tables[1].name"), "{err}");
    let err = error(&format!("{MINIMAL}[[tables]]\nname = \"other.orders\"\n"));
    assert!(err.contains("tables[1].form"), "{err}");
    parse(&format!(
        "{MINIMAL}[[tables]]\nname = \"other.orders\"\nform = \"other_orders\"\n"
    ))
    .unwrap();
}

#[test]
fn duplicate_subscription_names_rejected() {
    let text = format!(
        "{}\n[[subscriptions]]\nname = \"crm\"\nurl = \"https://b.example/\"\n",
        with_sub("")
    );
    match parse(&text).unwrap_err() {
        ConfigError::Invalid { field, message, .. } => {
            assert_eq!(field, "subscriptions[1].name");
            assert!(message.contains("crm"), "{message}");
        }
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn forms_must_exist() {
    match parse(&with_sub("forms = [\"orders\", \"invoices\"]")).unwrap_err() {
        ConfigError::Invalid { field, message, .. } => {
            assert_eq!(field, "subscriptions[0].forms[1]");
            assert!(
                message.contains("invoices") && message.contains("orders"),
                "{message}"
            );
        }
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn hmac_with_a_list_of_secrets() {
    let c = parse(&with_sub(
        "auth = { type = \"hmac\", secret = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\", \"${CRM_SECRET}\"] }",
    ))
    .unwrap();
    match &c.subscriptions[0].auth {
        AuthConfig::Hmac { secret } => {
            let values: Vec<&str> = secret.secrets().iter().map(Secret::expose).collect();
            assert_eq!(
                values,
                [
                    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                    "crm-hmac-secret-value"
                ]
            );
        }
        other => panic!("expected hmac, got {other:?}"),
    }
}

#[test]
fn whsec_with_bad_base64_rejected() {
    let err = parse(&with_sub(
        "auth = { type = \"hmac\", secret = [\"ok\", \"whsec_not*base64!\"] }",
    ))
    .unwrap_err();
    match &err {
        ConfigError::Invalid { field, .. } => assert_eq!(field, "subscriptions[0].auth.secret[1]"),
        other => panic!("unexpected {other}"),
    }
    assert!(!err.to_string().contains("not*base64"), "{err}");
}

#[test]
fn unknown_auth_type_rejected() {
    let err = error(&with_sub("auth = { type = \"magic\" }"));
    assert!(err.contains("subscriptions[0].auth"), "{err}");
    assert!(err.contains("magic"), "{err}");
}

#[test]
fn retry_and_timeout_checked() {
    let err = error(&with_sub("retry = { max_attempts = 0 }"));
    assert!(err.contains("subscriptions[0].retry.max_attempts"), "{err}");
    let err = error(&with_sub("retry = { initial = \"2h\" }"));
    assert!(err.contains("subscriptions[0].retry.initial"), "{err}");
    let err = error(&with_sub("timeout = \"0s\""));
    assert!(err.contains("subscriptions[0].timeout"), "{err}");
}

#[test]
fn headers_checked_without_printing_values() {
    let err = error(&with_sub("headers = { \"bad header\" = \"x\" }"));
    assert!(err.contains("subscriptions[0].headers"), "{err}");
    let c = parse(&with_sub("headers = { X-Team = \"ops\" }")).unwrap();
    assert_eq!(c.subscriptions[0].headers["X-Team"], "ops");
}

#[test]
fn slot_name_checked() {
    let err = error(&MINIMAL.replace("[[tables]]", "slot = \"Bad-Slot\"\n[[tables]]"));
    assert!(err.contains("source.slot"), "{err}");
}

#[test]
fn wants_defaults_to_row_ops_and_all_forms() {
    let c = parse(&with_sub("")).unwrap();
    let s = &c.subscriptions[0];
    for op in [Op::DataCreate, Op::DataUpdate, Op::DataRemove] {
        assert!(s.wants(op, "orders"), "{op}");
    }
    for op in [Op::DataTruncate, Op::FormUpdate, Op::Test] {
        assert!(!s.wants(op, "orders"), "{op}");
    }
    let c = parse(&with_sub("ops = [\"data_truncate\"]\nforms = [\"orders\"]")).unwrap();
    let s = &c.subscriptions[0];
    assert!(s.wants(Op::DataTruncate, "orders"));
    assert!(!s.wants(Op::DataCreate, "orders"));
    assert!(!s.wants(Op::DataTruncate, "other"));
}

#[test]
fn syntax_error_has_line_and_no_source_quote() {
    let text = "[source]\nurl = \"postgres://u:${SECRET}@h/db\"\nslot = \"unterminated\n";
    let err = error(text);
    assert!(err.starts_with("walhook.toml:3:"), "{err}");
    assert!(!err.contains("TOPSECRET"), "{err}");
}

#[test]
fn op_names_round_trip() {
    for op in Op::ALL {
        let text = format!("x = \"{}\"", op.as_str());
        #[derive(Deserialize)]
        struct W {
            x: Op,
        }
        assert_eq!(toml::from_str::<W>(&text).unwrap().x, op);
    }
}

#[test]
fn load_reports_missing_file() {
    let err = load(Path::new("/nonexistent/walhook.toml")).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("/nonexistent/walhook.toml: cannot read"),
        "{msg}"
    );
}

#[test]
fn missing_fields_name_their_table() {
    let err = error("[source]\nslot = \"x\"\n[[tables]]\nname = \"t\"\n");
    assert!(err.contains("source: missing field `url`"), "{err}");
    let err = error("[[tables]]\nname = \"t\"\n");
    assert!(err.contains("missing field `source`"), "{err}");
    let err = error(&with_sub("auth = { type = \"hmac\" }"));
    assert!(
        err.contains("subscriptions[0].auth: missing field `secret`"),
        "{err}"
    );
}

#[test]
fn syntax_error_without_message_still_says_something() {
    let err = error("x = ");
    assert!(err.starts_with("walhook.toml:1:5: "), "{err}");
    assert!(err.contains("invalid TOML"), "{err}");
}

#[test]
fn auth_unknown_field_rejected() {
    let err = error(&with_sub(
        "auth = { type = \"hmac\", secret = \"${CRM_SECRET}\", algo = \"sha1\" }",
    ));
    assert!(err.contains("subscriptions[0].auth"), "{err}");
    assert!(err.contains("algo"), "{err}");
    assert!(!err.contains("crm-hmac-secret-value"), "{err}");
}

#[test]
fn auth_none_rejects_extra_keys() {
    let err = error(&with_sub("auth = { type = \"none\", secret = \"x\" }"));
    assert!(
        err.contains("subscriptions[0].auth") && err.contains("secret"),
        "{err}"
    );
    let c = parse(&with_sub("auth = { type = \"none\" }")).unwrap();
    assert!(matches!(c.subscriptions[0].auth, AuthConfig::None));
}

#[test]
fn format_filter_template_and_app_id_defaults() {
    let c = parse(&with_sub("")).unwrap();
    let sub = &c.subscriptions[0];
    assert_eq!(sub.format, Format::Walhook);
    assert_eq!(
        (&sub.filter, &sub.template, &sub.app_id),
        (&None, &None, &None)
    );
    // jiandaoyun's appId defaults to the database name of source.url.
    let c = parse(&with_sub("format = \"jiandaoyun\"")).unwrap();
    assert_eq!(c.subscriptions[0].app_id.as_deref(), Some("app"));
    let c = parse(&with_sub("format = \"jiandaoyun\"\napp_id = \"5f1\"")).unwrap();
    assert_eq!(c.subscriptions[0].app_id.as_deref(), Some("5f1"));
    let c = parse(&with_sub(
        "filter = \"data.total > 100 and data.status != 'draft'\"\nformat = \"template\"\ntemplate = '''{\"text\": {{ data.name | tojson }}}'''\nheaders = { \"Idempotency-Key\" = \"{{ id }}\" }",
    ))
    .unwrap();
    assert_eq!(c.subscriptions[0].format, Format::Template);
}

#[test]
fn filter_that_does_not_compile_is_a_config_error_naming_it() {
    let err = error(&with_sub("filter = \"data.total >\""));
    assert!(
        err.contains("subscriptions[0].filter: does not compile"),
        "{err}"
    );
    let err = error(&with_sub("filter = \"  \""));
    assert!(err.contains("subscriptions[0].filter: is empty"), "{err}");
}

#[test]
fn template_is_required_with_and_only_with_format_template() {
    let err = error(&with_sub("format = \"template\""));
    assert!(
        err.contains("subscriptions[0].template: is missing"),
        "{err}"
    );
    let err = error(&with_sub("template = '{\"a\": 1}'"));
    assert!(
        err.contains("subscriptions[0].template: is only used with format = \"template\""),
        "{err}"
    );
    let err = error(&with_sub(
        "format = \"template\"\ntemplate = '{\"a\": {{ data.x }'",
    ));
    assert!(
        err.contains("subscriptions[0].template: does not compile"),
        "{err}"
    );
    let err = error(&with_sub("format = \"xml\""));
    assert!(err.contains("unknown variant `xml`"), "{err}");
}

#[test]
fn header_templates_and_app_id_are_checked() {
    let err = error(&with_sub("headers = { \"Idempotency-Key\" = \"{{ id \" }"));
    assert!(
        err.contains("subscriptions[0].headers.Idempotency-Key: does not compile"),
        "{err}"
    );
    let err = error(&with_sub("app_id = \"x\""));
    assert!(
        err.contains("subscriptions[0].app_id: is only used with format = \"jiandaoyun\""),
        "{err}"
    );
    let err = error(&with_sub("format = \"jiandaoyun\"\napp_id = \"\""));
    assert!(err.contains("subscriptions[0].app_id: is empty"), "{err}");
}

#[test]
fn debug_shows_template_size_not_content() {
    let c = parse(&with_sub(
        "format = \"template\"\ntemplate = '{\"token\": \"tok-secret-1234\", \"t\": {{ id | tojson }}}'",
    ))
    .unwrap();
    let debug = format!("{:?}", c.subscriptions[0]);
    assert!(!debug.contains("tok-secret-1234"), "{debug}");
    assert!(debug.contains("template: Some(\"<"), "{debug}");
}

#[test]
fn batch_rate_limit_and_disable_after_default_to_off() {
    let c = parse(&with_sub("")).unwrap();
    let s = &c.subscriptions[0];
    assert!(s.batch.is_none() && s.rate_limit.is_none() && s.disable_after.is_none());
}

#[test]
fn batch_keys_parse_with_defaults() {
    let c = parse(&with_sub(
        "batch = { max_events = 50, max_bytes = \"64KiB\" }\nrate_limit = \"600/min\"\ndisable_after = 100",
    ))
    .unwrap();
    let s = &c.subscriptions[0];
    let batch = s.batch.unwrap();
    assert_eq!(batch.max_events, 50);
    assert_eq!(batch.max_bytes.get(), 65_536);
    assert_eq!(batch.max_wait, DEFAULT_BATCH_MAX_WAIT);
    assert_eq!(
        s.rate_limit.unwrap().interval(),
        std::time::Duration::from_millis(100)
    );
    assert_eq!(s.disable_after, Some(100));
    let c = parse(&with_sub("batch = {}\n")).unwrap();
    assert_eq!(c.subscriptions[0].batch, Some(BatchConfig::default()));
    let c = parse(&with_sub("batch = { max_bytes = 5000, max_wait = \"0s\" }")).unwrap();
    assert_eq!(c.subscriptions[0].batch.unwrap().max_bytes.get(), 5000);
}

#[test]
fn batch_and_limits_are_checked_naming_the_field() {
    let err = error(&with_sub("batch = { max_events = 0 }"));
    assert!(err.contains("subscriptions[0].batch.max_events"), "{err}");
    assert!(err.contains("at least 1"), "{err}");
    let err = error(&with_sub("batch = { max_bytes = 0 }"));
    assert!(err.contains("subscriptions[0].batch.max_bytes"), "{err}");
    let err = error(&with_sub("batch = { max_bytes = \"1 parsec\" }"));
    assert!(err.contains("subscriptions[0].batch.max_bytes"), "{err}");
    assert!(err.contains("\"1MB\""), "{err}");
    let err = error(&with_sub("batch = { max_event = 3 }"));
    assert!(err.contains("unknown field `max_event`"), "{err}");
    let err = error(&with_sub("rate_limit = \"100 per minute\""));
    assert!(err.contains("subscriptions[0].rate_limit"), "{err}");
    assert!(err.contains("\"100/min\""), "{err}");
    let err = error(&with_sub("rate_limit = \"0/s\""));
    assert!(err.contains("subscriptions[0].rate_limit"), "{err}");
    let err = error(&with_sub("disable_after = 0"));
    assert!(err.contains("subscriptions[0].disable_after"), "{err}");
}

#[test]
fn ordering_defaults_to_commit_and_key_takes_lanes() {
    let c = parse(&with_sub("")).unwrap();
    assert_eq!(c.subscriptions[0].ordering, Ordering::Commit);
    assert_eq!(c.subscriptions[0].lanes, DEFAULT_LANES);
    let c = parse(&with_sub("ordering = \"key\"\nlanes = 4")).unwrap();
    assert_eq!(c.subscriptions[0].ordering, Ordering::Key);
    assert_eq!(c.subscriptions[0].lanes, 4);
    let c = parse(&with_sub("ordering = \"key\"")).unwrap();
    assert_eq!(c.subscriptions[0].lanes, 8);
}

#[test]
fn ordering_and_lanes_are_checked_naming_the_field() {
    let err = error(&with_sub("ordering = \"key\"\nbatch = {}"));
    assert!(err.contains("subscriptions[0].ordering"), "{err}");
    assert!(err.contains("batch"), "{err}");
    for lanes in ["0", "1025"] {
        let err = error(&with_sub(&format!("ordering = \"key\"\nlanes = {lanes}")));
        assert!(err.contains("subscriptions[0].lanes"), "{err}");
    }
    let err = error(&with_sub("ordering = \"row\""));
    assert!(err.contains("ordering"), "{err}");
    assert!(parse(&with_sub("ordering = \"key\"\nlanes = 1024")).is_ok());
}

#[test]
fn max_body_bytes_has_a_global_default_and_a_per_subscription_override() {
    let c = parse(&with_sub("")).unwrap();
    assert_eq!(c.delivery.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
    assert_eq!(c.delivery.max_body_bytes.get(), 16 * 1024 * 1024);
    assert_eq!(c.subscriptions[0].max_body_bytes, None);
    let c = parse(&format!(
        "[delivery]\nmax_body_bytes = \"10MB\"\n{}",
        with_sub("max_body_bytes = \"64MiB\"")
    ))
    .unwrap();
    assert_eq!(c.delivery.max_body_bytes.get(), 10_000_000);
    assert_eq!(
        c.subscriptions[0].max_body_bytes.map(|b| b.get()),
        Some(64 * 1024 * 1024)
    );
    let err = error(&with_sub("max_body_bytes = 0"));
    assert!(err.contains("subscriptions[0].max_body_bytes"), "{err}");
    let err = error(&format!("[delivery]\nmax_body_bytes = 0\n{}", with_sub("")));
    assert!(err.contains("delivery.max_body_bytes"), "{err}");
}

#[test]
fn egress_guard_is_off_by_default_and_parses_its_networks() {
    let c = parse(&with_sub("")).unwrap();
    assert!(!c.delivery.deny_private_networks);
    assert!(c.delivery.allow_networks.is_empty());
    let c = parse(&format!(
        "{MINIMAL}\n[delivery]\ndeny_private_networks = true\nallow_networks = [\"127.0.0.1/32\", \"10.20.0.0/16\", \"fd00::1\"]\n"
    ))
    .unwrap();
    assert!(c.delivery.deny_private_networks);
    let shown: Vec<String> = c
        .delivery
        .allow_networks
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(shown, ["127.0.0.1/32", "10.20.0.0/16", "fd00::1/128"]);
}

#[test]
fn a_bad_allow_network_names_the_key_and_line() {
    let err = error(&format!(
        "{MINIMAL}\n[delivery]\nallow_networks = [\"10.0.0.0/8\", \"10.0.0.300/8\"]\n"
    ));
    assert!(
        err.starts_with("walhook.toml:8:18: delivery.allow_networks: "),
        "{err}"
    );
    assert!(err.contains("delivery.allow_networks"), "{err}");
    assert!(
        err.contains("\"10.0.0.300/8\" is not a CIDR network"),
        "{err}"
    );
    let err = error(&format!(
        "{MINIMAL}\n[delivery]\nallow_networks = [\"192.168.1.1/16\"]\n"
    ));
    assert!(err.contains("delivery.allow_networks"), "{err}");
    assert!(
        err.contains("write the network \"192.168.0.0/16\""),
        "{err}"
    );
}

#[test]
fn receive_timeout_defaults_to_three_heartbeats_but_at_least_30s() {
    let c = parse(&with_sub("")).unwrap();
    assert_eq!(c.source.receive_timeout, None);
    assert_eq!(c.source.receive_timeout().as_secs(), 30);
    let long_heartbeat = MINIMAL.replace("[source]\n", "[source]\nheartbeat = \"20s\"\n");
    let c = parse(&long_heartbeat).unwrap();
    assert_eq!(c.source.receive_timeout().as_secs(), 60);
    let set = MINIMAL.replace("[source]\n", "[source]\nreceive_timeout = \"5s\"\n");
    assert_eq!(parse(&set).unwrap().source.receive_timeout().as_secs(), 5);
}

#[test]
fn receive_timeout_must_exceed_the_status_interval() {
    let text = MINIMAL.replace(
        "[source]\n",
        "[source]\nstatus_interval = \"2s\"\nreceive_timeout = \"2s\"\n",
    );
    let err = error(&text);
    assert!(
        err.starts_with("walhook.toml: source.receive_timeout: (2s) must be longer than source.status_interval (2s)"),
        "{err}"
    );
}

#[test]
fn the_redacted_config_shows_defaults_and_hides_every_secret() {
    let text = "[source]\nurl = \"postgres://walhook:${PGPASSWORD}@db.internal:5432/app\"\n\
         [admin]\ntoken = \"admin-t0ken-123\"\n\
         [[tables]]\nname = \"public.orders\"\n\
         [[subscriptions]]\nname = \"a\"\nurl = \"https://hooks.example.com/services/T0/B0/url-s3cret?key=query-s3cret\"\n\
         headers = { \"X-Token\" = \"header-s3cret\" }\nauth = { type = \"hmac\", secret = [\"${SECRET}\", \"old-hmac-s3cret\"] }\n\
         [[subscriptions]]\nname = \"b\"\nurl = \"https://b.example.com/\"\n\
         auth = { type = \"basic\", user = \"u\", password = \"basic-s3cret\" }\n\
         [[subscriptions]]\nname = \"c\"\nurl = \"https://c.example.com/\"\n\
         auth = { type = \"oauth2\", token_url = \"https://auth.example.com/token\", client_id = \"walhook\", client_secret = \"client-s3cret\" }\n\
         [[subscriptions]]\nname = \"d\"\nurl = \"https://d.example.com/\"\nformat = \"template\"\n\
         template = '''{\"k\": \"template-s3cret\"}'''\n\
         auth = { type = \"jwt\", algorithm = \"HS256\", secret = \"jwt-s3cret\", issuer = \"w\", audience = \"x\" }\n\
         [[subscriptions]]\nname = \"e\"\nurl = \"https://e.example.com/\"\n\
         auth = { type = \"bearer\", token = \"bearer-s3cret\" }\n";
    let shown = parse(text).unwrap().redacted();
    for secret in [
        "pg-Pa55word",
        "admin-t0ken-123",
        "url-s3cret",
        "query-s3cret",
        "header-s3cret",
        "TOPSECRET-xyz",
        "old-hmac-s3cret",
        "basic-s3cret",
        "client-s3cret",
        "template-s3cret",
        "jwt-s3cret",
        "bearer-s3cret",
    ] {
        assert!(!shown.contains(secret), "{secret} shown:\n{shown}");
    }
    // Defaults and non-secret values are there to read.
    for expected in [
        "max_connect_attempts: 6",
        "deny_private_networks: false",
        "slot: \"walhook\"",
        "max_attempts: 12",
        "client_id: \"walhook\"",
        "https://hooks.example.com/***",
        "\"X-Token\": \"***\"",
        "password: ***",
    ] {
        assert!(shown.contains(expected), "{expected} missing:\n{shown}");
    }
}

fn with_url(url: &str) -> String {
    format!("[source]\nurl = \"{url}\"\n\n[[tables]]\nname = \"public.orders\"\n\n[[subscriptions]]\nname = \"crm\"\nurl = \"https://crm.example.com/h\"\nformat = \"jiandaoyun\"\n")
}

#[test]
fn libpq_tls_modes_tokio_postgres_does_not_know_are_accepted() {
    for url in [
        "postgres://u:p@db.example/app?sslmode=verify-full",
        "postgres://u:p@db.example/app?sslmode=verify-ca&connect_timeout=5",
        "postgres://u:p@db.example/app?sslrootcert=system",
        "host=db.example user=u dbname=app sslmode=verify-full",
    ] {
        let c = parse(&with_url(url)).unwrap_or_else(|e| panic!("{url}: {e}"));
        // The database name is still read from the rest of the string.
        assert_eq!(c.subscriptions[0].app_id.as_deref(), Some("app"), "{url}");
    }
}

#[test]
fn a_missing_or_broken_sslrootcert_is_a_config_error_naming_the_key() {
    let missing = std::env::temp_dir().join("walhook-no-such-dir/root.pem");
    let err = parse(&with_url(&format!(
        "postgres://u:hunter2@h/app?sslmode=verify-full&sslrootcert={}",
        missing.display()
    )))
    .unwrap_err();
    match &err {
        ConfigError::Invalid { field, message, .. } => {
            assert_eq!(field, "source.url");
            assert!(message.contains("sslrootcert"), "{message}");
            assert!(message.contains("root.pem"), "names the file: {message}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert!(!err.to_string().contains("hunter2"), "{err}");

    let dir = std::env::temp_dir().join(format!("walhook-cfg-rootcert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let err = error(&with_url(&format!(
        "postgres://u@h/app?sslmode=require&sslrootcert={}",
        junk.display()
    )));
    assert!(
        err.contains("source.url") && err.contains("sslrootcert"),
        "{err}"
    );
    assert!(err.contains("no usable PEM certificate"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unusable_tls_settings_are_config_errors() {
    for (url, expected) in [
        (
            "postgres://u@h/app?sslmode=allow",
            "sslmode=allow is not supported",
        ),
        (
            "postgres://u@h/app?sslmode=on",
            "sslmode has an unknown value",
        ),
        (
            "postgres://u@h/app?sslrootcert=/ca.pem",
            "never checks the server certificate",
        ),
        (
            "postgres://u@h/app?sslcert=/c.pem",
            "sslcert is not supported",
        ),
        (
            "postgres://u@h/app?sslrootcert=system&sslmode=require",
            "needs sslmode=verify-full",
        ),
    ] {
        let err = error(&with_url(url));
        assert!(err.contains("source.url"), "{url}: {err}");
        assert!(err.contains(expected), "{url}: {err}");
    }
}

#[test]
fn admin_allow_log_and_history_retention() {
    let c = parse(&format!(
        "{MINIMAL}\n[admin]\nallow = [\"10.0.0.0/8\", \"192.168.1.7\", \"::1\", \"fd00::/8\"]\n\
         [store]\nhistory_retention = \"3d\"\n[log]\nformat = \"json\"\nlevel = \"warn,walhook=debug\"\n"
    ))
    .unwrap();
    let nets = c.admin.allowed_networks().unwrap();
    assert_eq!(nets.len(), 4);
    assert!(nets[1].contains(&"192.168.1.7".parse::<std::net::IpAddr>().unwrap()));
    assert!(!nets[1].contains(&"192.168.1.8".parse::<std::net::IpAddr>().unwrap()));
    assert_eq!(c.store.history_retention.get().as_secs(), 3 * 86400);
    assert_eq!(c.log.format, LogFormat::Json);

    let err = error(&format!(
        "{MINIMAL}\n[admin]\nallow = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n"
    ));
    assert!(
        err.starts_with("walhook.toml: admin.allow[1]: \"10.0.0.0/33\" is not a network"),
        "{err}"
    );
    let err = error(&format!("{MINIMAL}\n[log]\nlevel = \"loud\"\n"));
    assert!(err.contains("log.level: is not a log level"), "{err}");
    let err = error(&format!("{MINIMAL}\n[log]\nformat = \"xml\"\n"));
    assert!(err.contains("unknown variant `xml`"), "{err}");
    let err = error(&format!("{MINIMAL}\n[store]\nhistory_retention = \"0s\"\n"));
    assert!(
        err.contains("store.history_retention: must be greater than 0"),
        "{err}"
    );
}
