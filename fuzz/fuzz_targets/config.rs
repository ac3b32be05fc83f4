//! Config loading from TOML text: `${VAR}` interpolation with a fixed
//! environment, parsing, validation (which compiles filters and templates).
//! No file or process environment is read.
//!
//! Beyond "never panics": an error message never contains the value of an
//! interpolated variable (unless the text itself already holds it), since
//! errors end up in logs and the values are usually secrets.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walhook::config::{from_str_with_env, interpolate};

/// A value no seed contains, with the characters that need escaping in TOML strings.
const SECRET: &str = "s3cr\"et'\\Zq9";

fn env(name: &str) -> Option<String> {
    match name {
        "PGPASSWORD" | "SECRET" | "CRM_SECRET" | "WALHOOK_ADMIN_TOKEN" => Some(SECRET.to_owned()),
        "WORKERS" => Some("8".to_owned()),
        "EMPTY" => Some(String::new()),
        "NEWLINE" => Some("a\nb".to_owned()),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = interpolate(text, &env);
    if let Err(err) = from_str_with_env(text, "fuzz.toml", &env) {
        let message = err.to_string();
        // Only the part that a value could not have come from the text.
        let secret_core = "Zq9";
        if !text.contains(secret_core) {
            assert!(
                !message.contains(secret_core),
                "an error message shows an interpolated value: {message}"
            );
        }
    }
});
