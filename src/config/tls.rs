//! `tls = { ca_file = "...", verify = true }`: a subscription's TLS settings.
//!
//! Without `tls`, a subscription uses the shared client, which trusts the
//! bundled web PKI roots. `ca_file` adds the certificates of a PEM file as
//! extra roots (an internal CA or a self-signed receiver); the file is read and
//! parsed during validation, so a bad file is a config error (exit 2).
//! `verify = false` turns certificate checks off for that subscription only;
//! delivery warns about it loudly at startup.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;

/// Certificates are checked unless a subscription opts out explicitly.
pub const DEFAULT_TLS_VERIFY: bool = true;

fn default_verify() -> bool {
    DEFAULT_TLS_VERIFY
}

/// `tls = { ... }` of one subscription.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Extra trusted root certificates (PEM, one or more).
    pub ca_file: Option<PathBuf>,
    /// Whether the endpoint's certificate and host name are checked.
    #[serde(default = "default_verify")]
    pub verify: bool,
}

/// Why a `ca_file` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    /// The file cannot be read.
    #[error("cannot read the file")]
    Read(#[source] std::io::Error),
    /// The file holds no usable PEM certificate.
    #[error("holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    Empty,
    /// A certificate in it cannot be parsed.
    #[error("is not a valid PEM certificate bundle")]
    Parse(#[source] reqwest::Error),
}

/// Reads the PEM bundle at `path` as root certificates.
pub fn load_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, CaFileError> {
    let pem = std::fs::read(path).map_err(CaFileError::Read)?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(CaFileError::Parse)?;
    if certs.is_empty() {
        return Err(CaFileError::Empty);
    }
    Ok(certs)
}

/// Checks `tls` of the subscription at `field` (`subscriptions[2]`).
pub(super) fn validate_tls(tls: Option<&TlsConfig>, field: &str) -> Result<(), ConfigError> {
    let Some(path) = tls.and_then(|tls| tls.ca_file.as_ref()) else {
        return Ok(());
    };
    load_ca_file(path).map(drop).map_err(|err| {
        let cause = std::error::Error::source(&err)
            .map(|c| format!(" ({c})"))
            .unwrap_or_default();
        ConfigError::invalid(
            format!("{field}.tls.ca_file"),
            format!("{}: {err}{cause}", path.display()),
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::{from_str_with_env, Config};
    use super::*;

    fn parse(tls: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "[source]\nurl = \"postgres://u@h/db\"\n[[tables]]\nname = \"orders\"\n\
             [[subscriptions]]\nname = \"s\"\nurl = \"https://example.com/h\"\n{tls}\n"
        );
        from_str_with_env(&text, "walhook.toml", &|_| None)
    }

    fn ca_file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("walhook-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn absent_means_the_shared_client_and_verify_defaults_to_true() {
        assert!(parse("").unwrap().subscriptions[0].tls.is_none());
        let tls = parse("tls = {}").unwrap().subscriptions[0]
            .tls
            .clone()
            .unwrap();
        assert!(tls.verify && tls.ca_file.is_none());
        let tls = parse("tls = { verify = false }").unwrap().subscriptions[0]
            .tls
            .clone()
            .unwrap();
        assert!(!tls.verify);
    }

    #[test]
    fn a_ca_file_is_read_and_parsed_at_load() {
        // A real certificate, then files that hold none.
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let good = ca_file("good.pem", &cert.cert.pem());
        let config = parse(&format!("tls = {{ ca_file = \"{}\" }}", good.display())).unwrap();
        assert_eq!(
            config.subscriptions[0]
                .tls
                .as_ref()
                .unwrap()
                .ca_file
                .as_ref(),
            Some(&good)
        );
        let empty = ca_file("empty.pem", "no pem here\n");
        let missing = empty.with_file_name("missing.pem");
        for (path, why) in [
            (&empty, "holds no PEM certificate"),
            (&missing, "cannot read"),
        ] {
            match parse(&format!("tls = {{ ca_file = \"{}\" }}", path.display())).unwrap_err() {
                ConfigError::Invalid { field, message, .. } => {
                    assert_eq!(field, "subscriptions[0].tls.ca_file");
                    assert!(message.contains(why), "{message}");
                }
                other => panic!("{other}"),
            }
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = parse("tls = { verfy = false }").unwrap_err().to_string();
        assert!(
            err.contains("subscriptions[0].tls") && err.contains("verfy"),
            "{err}"
        );
    }
}
