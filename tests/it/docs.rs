//! Documentation that must not drift from the code: `docs/configuration.md` is generated
//! from `config.example.toml` (whose keys a unit test parses), and this test fails when
//! the two differ. Regenerate with
//! `WALHOOK_BLESS=1 cargo test --test it docs::configuration_reference`.

use std::fmt::Write as _;
use std::path::Path;

const HEADER: &str = "<!-- Generated from config.example.toml by tests/it/docs.rs; do not edit by hand.\n     Regenerate: WALHOOK_BLESS=1 cargo test --test it docs::configuration_reference -->\n";

/// One documented key (or several alternatives of one key, such as `auth`).
struct Entry {
    keys: Vec<String>,
    description: Vec<String>,
    lines: Vec<String>,
    commented: bool,
}

/// A `key = value` line (commented out or not) that is valid TOML on its own.
fn key_line(line: &str) -> Option<(String, bool)> {
    let (body, commented) = match line.strip_prefix("# ") {
        Some(rest) => (rest, true),
        None => (line, false),
    };
    let (key, _) = body.split_once(" = ")?;
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
        return None;
    }
    // "exp = now + ttl (...)" in prose is not a setting: it must parse.
    body.parse::<toml::Table>().ok()?;
    Some((body.to_string(), commented))
}

fn render(example: &str) -> String {
    let mut out = String::from(HEADER);
    out.push_str("\n# Configuration reference\n\n");
    let mut intro = Vec::new();
    let mut lines = example.lines().peekable();
    while let Some(line) = lines.peek() {
        if line.starts_with('[') {
            break;
        }
        intro.push(line.trim_start_matches('#').trim_start().to_string());
        lines.next();
    }
    out.push_str(intro.join("\n").trim());
    out.push_str("\n\nEach key below shows the line as `config.example.toml` has it: a commented line\n(`# key = value`) is the default or an alternative, an active line is an example value.\n");

    let mut section = String::new();
    let mut pending: Vec<String> = Vec::new();
    let mut entries: Vec<Entry> = Vec::new();
    let mut last_was_key = false;
    let flush = |out: &mut String, section: &str, entries: &mut Vec<Entry>| {
        for e in entries.drain(..) {
            let mut keys = e.keys.clone();
            keys.dedup();
            let names: Vec<String> = keys.iter().map(|k| format!("`{section}.{k}`")).collect();
            let _ = writeln!(out, "\n### {}\n", names.join(", "));
            if !e.description.is_empty() {
                let _ = writeln!(out, "{}\n", e.description.join("\n"));
            }
            let label = if e.commented { "Default" } else { "Example" };
            let label = if e.lines.len() > 1 {
                format!("{label}s")
            } else {
                label.to_string()
            };
            let _ = writeln!(out, "{label}:\n\n```toml\n{}\n```", e.lines.join("\n"));
        }
    };
    for line in lines {
        if let Some(name) = line
            .strip_prefix("[[")
            .and_then(|l| l.strip_suffix("]]"))
            .or_else(|| line.strip_prefix('[').and_then(|l| l.strip_suffix(']')))
        {
            flush(&mut out, &section, &mut entries);
            section = name.to_string();
            let _ = writeln!(out, "\n## `{line}`");
            if !pending.is_empty() {
                let _ = writeln!(out, "\n{}", pending.join("\n"));
                pending.clear();
            }
            last_was_key = false;
            continue;
        }
        if line.trim().is_empty() {
            last_was_key = false;
            continue;
        }
        match key_line(line) {
            Some((body, commented)) => {
                let key = body
                    .split_once(" = ")
                    .map(|(k, _)| k.to_string())
                    .unwrap_or_default();
                let same_key = entries.last().is_some_and(|e| e.keys.contains(&key));
                if last_was_key || same_key {
                    let e = entries.last_mut().expect("an entry");
                    if !pending.is_empty() {
                        e.description.push(String::new());
                        e.description.append(&mut pending);
                    }
                    e.keys.push(key);
                    e.lines.push(body);
                    e.commented &= commented;
                } else {
                    entries.push(Entry {
                        keys: vec![key],
                        description: std::mem::take(&mut pending),
                        lines: vec![body],
                        commented,
                    });
                }
                last_was_key = true;
            }
            None => {
                let text = line.trim_start_matches('#');
                let text = text.strip_prefix(' ').unwrap_or(text);
                if last_was_key && !entries.is_empty() && text.is_empty() {
                    continue;
                }
                pending.push(text.to_string());
                last_was_key = false;
            }
        }
    }
    flush(&mut out, &section, &mut entries);
    out
}

#[test]
fn configuration_reference_is_generated_from_the_example() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("config.example.toml")).unwrap();
    let generated = render(&example);
    let path = root.join("docs/configuration.md");
    if std::env::var_os("WALHOOK_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == generated,
        "docs/configuration.md is out of date with config.example.toml; regenerate it with\n  WALHOOK_BLESS=1 cargo test --test it docs::configuration_reference"
    );
    // Every key of the example appears in the reference.
    for line in example.lines() {
        if let Some((body, _)) = key_line(line) {
            let key = body.split_once(" = ").unwrap().0;
            assert!(
                generated.contains(&format!(".{key}`")),
                "{key} is not in the reference"
            );
        }
    }
}

/// Every metric name defined in `src/metrics.rs` is documented in the README.
#[test]
fn every_metric_is_documented_in_the_readme() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let source = std::fs::read_to_string(root.join("src/metrics.rs")).unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let names: Vec<&str> = source
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.starts_with("walhook_") && s.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
        .collect();
    assert!(names.len() >= 10, "found only {names:?} in src/metrics.rs");
    for name in names {
        assert!(
            readme.contains(&format!("`{name}`")),
            "metric {name} is not in the README's metrics table"
        );
    }
}
