//! TLS of walhook's connections to PostgreSQL: `sslmode` and `sslrootcert`.
//!
//! Both connections walhook opens, the SQL ones (tokio-postgres: checks, slot
//! and publication management, heartbeats) and the replication one
//! (pgwire-replication), follow the same [`TlsSettings`], read from
//! `source.url` with libpq's meaning:
//!
//! | `sslmode`     | TLS                        | server certificate checked            |
//! |---------------|----------------------------|---------------------------------------|
//! | `disable`     | never                      | -                                     |
//! | `prefer`      | if the server offers it    | no (the default, as in libpq)         |
//! | `require`     | always                     | no; with `sslrootcert`, as `verify-ca`|
//! | `verify-ca`   | always                     | chain                                 |
//! | `verify-full` | always                     | chain and host name                   |
//!
//! The chain is checked against `sslrootcert` (a PEM file), or without it
//! against the web PKI roots bundled with walhook (`webpki-roots`);
//! `sslrootcert=system` names those roots explicitly and, as in libpq, needs
//! `verify-full`. Where walhook is stricter than libpq: `sslmode=allow` is
//! refused, and `sslrootcert` with `prefer` or `disable` (which never check a
//! certificate) is a configuration error instead of a setting that silently
//! does nothing. Over a Unix socket no TLS is used, as in libpq.
//!
//! tokio-postgres's parser knows only `disable`/`prefer`/`require` and no
//! `sslrootcert`, so [`split`] takes both out of the connection string (URL or
//! `key=value` form) and tokio-postgres gets the rest.
//!
//! The SQL connections use rustls through `tokio-postgres-rustls` (which also
//! provides SCRAM channel binding) with a [`rustls::ClientConfig`] built here
//! on the ring provider, the one pgwire-replication and reqwest use; see
//! `docs/decisions/0010-postgres-tls.md`. Certificates that are not checked
//! still have to sign the handshake with their key, so channel binding ties the
//! login to the certificate the server presented.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The `source.url` key of the TLS mode.
pub const SSLMODE: &str = "sslmode";
/// The `source.url` key of the trusted root certificates.
pub const SSLROOTCERT: &str = "sslrootcert";
/// `sslrootcert=system`: the bundled web PKI roots (libpq 16 spelling).
const SYSTEM_ROOTS: &str = "system";
/// libpq keys for TLS features walhook does not offer (client certificates,
/// revocation lists, ...): refused by name rather than as "unknown option".
const UNSUPPORTED_KEYS: [&str; 10] = [
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcertmode",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "sslcompression",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
];
/// ALPN protocol name PostgreSQL 17+ expects (and older servers ignore).
const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// libpq's `sslmode`, without `allow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// never TLS
    Disable,
    /// TLS when the server offers it, certificate not checked
    Prefer,
    /// TLS, certificate not checked
    Require,
    /// TLS, certificate chain checked
    VerifyCa,
    /// TLS, certificate chain and host name checked
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Option<SslMode> {
        Some(match text {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// The `sslmode` value.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether a connection without TLS is refused.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The certificates a server's chain is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// the web PKI roots bundled with walhook (`webpki-roots`)
    WebPki,
    /// a PEM file (`sslrootcert=<path>`)
    File(PathBuf),
}

impl std::fmt::Display for Roots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Roots::WebPki => f.write_str("the bundled web PKI roots"),
            Roots::File(path) => write!(f, "sslrootcert {}", path.display()),
        }
    }
}

/// What `sslmode` and `sslrootcert` of `source.url` amount to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The effective mode (`require` with `sslrootcert` is `verify-ca`).
    pub mode: SslMode,
    /// Trusted roots; used by `verify-ca` and `verify-full` only.
    pub roots: Roots,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            mode: SslMode::Prefer,
            roots: Roots::WebPki,
        }
    }
}

/// Why `sslmode`/`sslrootcert` cannot be used. Messages name the key and
/// never echo other parts of the connection string.
#[derive(Debug, thiserror::Error)]
pub enum TlsParamError {
    /// `sslmode` has a value libpq does not know.
    #[error(
        "sslmode has an unknown value; use disable, prefer, require, verify-ca or verify-full"
    )]
    UnknownMode,
    /// `sslmode=allow` (plain first, TLS only if the server insists).
    #[error(
        "sslmode=allow is not supported; use prefer (TLS when the server offers it) or disable"
    )]
    Allow,
    /// `sslrootcert=system` with a mode weaker than `verify-full` (libpq refuses it too).
    #[error("sslrootcert=system needs sslmode=verify-full (found sslmode={0}); remove sslmode or set it to verify-full")]
    SystemNeedsVerifyFull(SslMode),
    /// `sslrootcert` with a mode that never checks a certificate.
    #[error("sslrootcert is set but sslmode={0} never checks the server certificate; set sslmode=verify-full (or verify-ca) to check it against sslrootcert")]
    RootCertUnused(SslMode),
    /// A libpq TLS key walhook does not implement.
    #[error("{0} is not supported (walhook does not offer client certificates or revocation lists); remove it from source.url")]
    Unsupported(&'static str),
    /// A key's value is not valid percent-encoded UTF-8.
    #[error("{0} is not valid percent-encoded UTF-8")]
    Encoding(&'static str),
    /// The `sslrootcert` file cannot be read.
    #[error("sslrootcert {}: cannot read the file: {source}", path.display())]
    Read {
        /// the file
        path: PathBuf,
        /// why
        #[source]
        source: std::io::Error,
    },
    /// The `sslrootcert` file holds no usable certificate.
    #[error("sslrootcert {}: holds no usable PEM certificate (-----BEGIN CERTIFICATE-----)", path.display())]
    NoCertificate {
        /// the file
        path: PathBuf,
    },
    /// The `sslrootcert` file is not valid PEM.
    #[error("sslrootcert {}: is not a valid PEM certificate bundle: {source}", path.display())]
    Pem {
        /// the file
        path: PathBuf,
        /// why
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the configuration (not expected with valid roots).
    #[error("cannot set up TLS: {0}")]
    Rustls(#[source] rustls::Error),
    /// The certificate verifier could not be built (not expected with valid roots).
    #[error("cannot set up TLS certificate checks: {0}")]
    Verifier(#[source] rustls::client::VerifierBuilderError),
}

/// A connection string with `sslmode` and `sslrootcert` taken out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// What tokio-postgres gets: the string without the TLS keys.
    pub rest: String,
    /// The last `sslmode` value, decoded.
    pub sslmode: Option<String>,
    /// The last `sslrootcert` value, decoded.
    pub sslrootcert: Option<String>,
    /// The first unsupported libpq TLS key found (see [`UNSUPPORTED_KEYS`]).
    unsupported: Option<&'static str>,
    /// The first of our keys whose value could not be decoded.
    undecodable: Option<&'static str>,
}

impl Split {
    /// The settings these values amount to (libpq's rules, see the module docs).
    pub fn settings(&self) -> Result<TlsSettings, TlsParamError> {
        if let Some(key) = self.unsupported {
            return Err(TlsParamError::Unsupported(key));
        }
        if let Some(key) = self.undecodable {
            return Err(TlsParamError::Encoding(key));
        }
        let mode = match self.sslmode.as_deref() {
            None | Some("") => None,
            Some("allow") => return Err(TlsParamError::Allow),
            Some(text) => Some(SslMode::parse(text).ok_or(TlsParamError::UnknownMode)?),
        };
        match self.sslrootcert.as_deref() {
            None | Some("") => Ok(TlsSettings {
                mode: mode.unwrap_or(SslMode::Prefer),
                roots: Roots::WebPki,
            }),
            Some(SYSTEM_ROOTS) => match mode {
                None | Some(SslMode::VerifyFull) => Ok(TlsSettings {
                    mode: SslMode::VerifyFull,
                    roots: Roots::WebPki,
                }),
                Some(weaker) => Err(TlsParamError::SystemNeedsVerifyFull(weaker)),
            },
            Some(path) => {
                let mode = match mode.unwrap_or(SslMode::Prefer) {
                    SslMode::Require => SslMode::VerifyCa,
                    unchecked @ (SslMode::Disable | SslMode::Prefer) => {
                        return Err(TlsParamError::RootCertUnused(unchecked))
                    }
                    checked => checked,
                };
                Ok(TlsSettings {
                    mode,
                    roots: Roots::File(PathBuf::from(path)),
                })
            }
        }
    }
}

/// Takes `sslmode` and `sslrootcert` out of a libpq connection string, in
/// either form tokio-postgres accepts (`postgres[ql]://…?k=v&…` or
/// `k=v k='v' …`). A string this cannot take apart is returned unchanged,
/// so that tokio-postgres reports what is wrong with it.
pub fn split(conn: &str) -> Split {
    let mut out = Split {
        rest: conn.to_owned(),
        sslmode: None,
        sslrootcert: None,
        unsupported: None,
        undecodable: None,
    };
    let is_url = ["postgres://", "postgresql://"]
        .iter()
        .any(|prefix| conn.starts_with(prefix));
    let params = if is_url {
        url_params(conn)
    } else {
        keyword_params(conn)
    };
    let Some(params) = params else {
        return out;
    };
    let mut removed = Vec::new();
    for (i, param) in params.iter().enumerate() {
        let key = param.key.as_deref().unwrap_or("");
        if let Some(unsupported) = UNSUPPORTED_KEYS.iter().find(|k| **k == key) {
            out.unsupported.get_or_insert(unsupported);
            continue;
        }
        let (slot, name) = match key {
            SSLMODE => (&mut out.sslmode, SSLMODE),
            SSLROOTCERT => (&mut out.sslrootcert, SSLROOTCERT),
            _ => continue,
        };
        // Later values win, as in tokio-postgres and libpq.
        match &param.value {
            Some(value) => *slot = Some(value.clone()),
            None => {
                out.undecodable.get_or_insert(name);
            }
        }
        removed.push(i);
    }
    out.rest = if is_url {
        // Rebuild the query from the pairs that stay, byte for byte.
        let query_start = params.first().map_or(conn.len(), |p| p.start);
        let kept: Vec<&str> = params
            .iter()
            .enumerate()
            .filter(|(i, _)| !removed.contains(i))
            .map(|(_, p)| &conn[p.start..p.end])
            .collect();
        let base = conn[..query_start].trim_end_matches('?');
        if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        }
    } else {
        let mut rest = String::with_capacity(conn.len());
        let mut from = 0;
        for i in removed {
            rest.push_str(&conn[from..params[i].start]);
            from = params[i].end;
        }
        rest.push_str(&conn[from..]);
        rest
    };
    out
}

/// One `key=value` of a connection string: its byte span and the decoded
/// parts (`None` when they cannot be decoded).
struct Param {
    start: usize,
    end: usize,
    key: Option<String>,
    value: Option<String>,
}

/// The query parameters of a `postgres://` URL, or `None` without a query.
/// tokio-postgres takes the credentials up to the first `@`, so the query
/// starts at the first `?` after it; values are percent-decoded.
fn url_params(conn: &str) -> Option<Vec<Param>> {
    let after_creds = conn.find('@').map_or(0, |at| at + 1);
    let query_start = after_creds + conn[after_creds..].find('?')? + 1;
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .ok()
            .map(std::borrow::Cow::into_owned)
    };
    let mut params = Vec::new();
    let mut at = query_start;
    for pair in conn[query_start..].split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        params.push(Param {
            start: at,
            end: at + pair.len(),
            key: decode(key),
            value: decode(value),
        });
        at += pair.len() + 1;
    }
    Some(params)
}

/// The parameters of a `key=value …` string, tokenised as tokio-postgres
/// does (values optionally single-quoted, `\` escapes the next character).
/// `None` if it does not tokenise.
fn keyword_params(conn: &str) -> Option<Vec<Param>> {
    let chars: Vec<(usize, char)> = conn.char_indices().collect();
    let offset = |i: usize| chars.get(i).map_or(conn.len(), |(at, _)| *at);
    let char_at = |i: usize| chars.get(i).map(|(_, c)| *c);
    let skip_ws = |mut i: usize| {
        while char_at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        i
    };
    let mut params = Vec::new();
    let mut i = skip_ws(0);
    while i < chars.len() {
        let start = i;
        while char_at(i).is_some_and(|c| !c.is_whitespace() && c != '=') {
            i += 1;
        }
        let key = conn[offset(start)..offset(i)].to_owned();
        i = skip_ws(i);
        if char_at(i) != Some('=') {
            return None;
        }
        i = skip_ws(i + 1);
        let mut value = String::new();
        if char_at(i) == Some('\'') {
            i += 1;
            loop {
                match char_at(i)? {
                    '\'' => break,
                    '\\' => {
                        value.push(char_at(i + 1)?);
                        i += 2;
                    }
                    c => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
            i += 1;
        } else {
            while let Some(c) = char_at(i).filter(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(char_at(i + 1));
                    i += 2;
                } else {
                    value.push(c);
                    i += 1;
                }
            }
            if value.is_empty() {
                return None;
            }
        }
        params.push(Param {
            start: offset(start),
            end: offset(i),
            key: Some(key),
            value: Some(value),
        });
        i = skip_ws(i);
    }
    Some(params)
}

/// Reads the trusted roots: the PEM file, or the bundled web PKI roots.
pub fn load_roots(roots: &Roots) -> Result<RootCertStore, TlsParamError> {
    let path = match roots {
        Roots::WebPki => {
            return Ok(RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            })
        }
        Roots::File(path) => path,
    };
    let pem = std::fs::read(path).map_err(|source| TlsParamError::Read {
        path: path.clone(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsParamError::Pem {
            path: path.clone(),
            source,
        })?;
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TlsParamError::NoCertificate { path: path.clone() });
    }
    Ok(store)
}

/// The provider of every TLS connection to PostgreSQL (see the module docs).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls configuration of the SQL connections for `settings`.
pub fn client_config(settings: &TlsSettings) -> Result<rustls::ClientConfig, TlsParamError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsParamError::Rustls)?;
    let mut config = match settings.mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(UncheckedCertificate(provider)))
            .with_no_client_auth(),
        SslMode::VerifyCa => {
            let roots = Arc::new(load_roots(&settings.roots)?);
            let chain = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(TlsParamError::Verifier)?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(chain)))
                .with_no_client_auth()
        }
        SslMode::VerifyFull => builder
            .with_root_certificates(load_roots(&settings.roots)?)
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(config)
}

/// `prefer`/`require`: any certificate, but the handshake must still be
/// signed with its key (so channel binding means something).
#[derive(Debug)]
struct UncheckedCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for UncheckedCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the web PKI check with the host name part forgiven. rustls
/// checks the chain before the name, so a name error means the chain passed.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// pgwire-replication's TLS settings for the same `settings` and `host`.
pub fn replication_tls(settings: &TlsSettings, host: &str) -> pgwire_replication::TlsConfig {
    use pgwire_replication::TlsConfig;
    let ca = match &settings.roots {
        Roots::File(path) => Some(path.clone()),
        Roots::WebPki => None,
    };
    let tls = match settings.mode {
        SslMode::Disable => return TlsConfig::disabled(),
        SslMode::Prefer => TlsConfig {
            mode: pgwire_replication::SslMode::Prefer,
            ..TlsConfig::disabled()
        },
        SslMode::Require => TlsConfig::require(),
        SslMode::VerifyCa => TlsConfig::verify_ca(ca),
        SslMode::VerifyFull => TlsConfig::verify_full(ca),
    };
    // Its verify-full refuses an IP-address host unless the name to check is
    // given explicitly; rustls checks an IP against the certificate's IP
    // addresses, as libpq does, so the host itself is that name.
    tls.with_sni_hostname(host)
}

/// What happened during one SQL connection attempt, observed through
/// [`Observed`], so that a refused TLS request can be told from other
/// failures without reading error texts.
#[derive(Debug, Default)]
pub(crate) struct Phases {
    /// The TCP connection was made (tokio-postgres asks for the TLS
    /// connector only then).
    connected: AtomicBool,
    /// The server agreed to TLS and the handshake began.
    handshake: AtomicBool,
}

impl Phases {
    /// Whether the TCP connection was made but the server never agreed to
    /// TLS (it answered the SSL request with "no").
    pub(crate) fn tls_refused(&self) -> bool {
        self.connected.load(Ordering::SeqCst) && !self.handshake.load(Ordering::SeqCst)
    }
}

/// A TLS connector that records [`Phases`] and delegates the work.
#[derive(Clone)]
pub(crate) struct Observed<T> {
    inner: T,
    phases: Arc<Phases>,
}

impl<T> Observed<T> {
    pub(crate) fn new(inner: T, phases: Arc<Phases>) -> Self {
        Observed { inner, phases }
    }
}

impl<S, T> tokio_postgres::tls::MakeTlsConnect<S> for Observed<T>
where
    T: tokio_postgres::tls::MakeTlsConnect<S>,
{
    type Stream = T::Stream;
    type TlsConnect = Observed<T::TlsConnect>;
    type Error = T::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Self::TlsConnect, Self::Error> {
        self.phases.connected.store(true, Ordering::SeqCst);
        Ok(Observed {
            inner: self.inner.make_tls_connect(domain)?,
            phases: self.phases.clone(),
        })
    }
}

impl<S, T> tokio_postgres::tls::TlsConnect<S> for Observed<T>
where
    T: tokio_postgres::tls::TlsConnect<S>,
{
    type Stream = T::Stream;
    type Error = T::Error;
    type Future = T::Future;

    fn connect(self, stream: S) -> Self::Future {
        self.phases.handshake.store(true, Ordering::SeqCst);
        self.inner.connect(stream)
    }
}

/// The rustls error in `err`'s cause chain, if the TLS handshake failed.
pub(crate) fn handshake_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // io::Error's `source` skips the error it wraps; look at it directly.
        if let Some(tls) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        cause = e.source();
    }
    None
}

/// A handshake failure as (what went wrong, how to fix it).
pub(crate) fn explain_handshake(
    err: &rustls::Error,
    settings: &TlsSettings,
    host: &str,
) -> (String, String) {
    let roots = &settings.roots;
    match err {
        rustls::Error::InvalidCertificate(cert) => match cert {
            // BadSignature: a CA of the issuer's name is trusted, but it is
            // another one.
            CertificateError::UnknownIssuer | CertificateError::BadSignature => (
                format!("the server's certificate is not signed by a CA in {roots} (unknown issuer)"),
                match roots {
                    Roots::File(_) => "put the certificate of the CA that signed the server's certificate into the sslrootcert file".to_owned(),
                    Roots::WebPki => "set sslrootcert=/path/to/ca.pem in source.url to the CA that signed the server's certificate (e.g. your cloud provider's RDS/Cloud SQL CA bundle)".to_owned(),
                },
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                let names = match cert {
                    CertificateError::NotValidForNameContext { presented, .. } if !presented.is_empty() => {
                        format!(" (it names {})", presented.join(", "))
                    }
                    _ => String::new(),
                };
                (
                    format!("the server's certificate is not valid for the host name '{host}'{names}"),
                    "connect with a host name the certificate holds, or use sslmode=verify-ca to check the CA but not the host name".to_owned(),
                )
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => (
                "the server's certificate has expired".to_owned(),
                "renew the server's certificate (or check this machine's clock)".to_owned(),
            ),
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => (
                "the server's certificate is not valid yet".to_owned(),
                "check this machine's clock, or the certificate's start date".to_owned(),
            ),
            other => (
                format!("the server's certificate was rejected ({other:?})"),
                format!("check the server's certificate and {roots}"),
            ),
        },
        rustls::Error::AlertReceived(alert) => (
            format!("the server ended the TLS handshake ({alert:?})"),
            "check the server's TLS settings (ssl_min_protocol_version, ssl_ciphers) and its log".to_owned(),
        ),
        other => (
            format!("the TLS handshake failed ({other})"),
            "check the server's TLS settings and its log".to_owned(),
        ),
    }
}

/// How much a connection made with `settings` proves about the server, for
/// `walhook check` and the start-up log.
pub fn assurance(settings: &TlsSettings) -> String {
    match settings.mode {
        SslMode::Disable => "sslmode=disable".to_owned(),
        SslMode::Prefer | SslMode::Require => format!(
            "sslmode={}: encrypted, the server's certificate is not checked",
            settings.mode
        ),
        SslMode::VerifyCa => format!(
            "sslmode=verify-ca: certificate chain checked against {}",
            settings.roots
        ),
        SslMode::VerifyFull => format!(
            "sslmode=verify-full: certificate chain and host name checked against {}",
            settings.roots
        ),
    }
}

/// Whether `host` is a Unix-socket directory (no TLS there, as in libpq).
pub(crate) fn is_socket_dir(host: &str) -> bool {
    Path::new(host).is_absolute()
}

#[cfg(test)]
mod tests;
