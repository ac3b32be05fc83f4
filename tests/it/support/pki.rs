//! Certificates for tests: a certificate authority made for one test run, and
//! server certificates it signs (rcgen), as PEM text.

use std::sync::atomic::{AtomicU32, Ordering};

/// A CA with a name unique in this process (two CAs of the same name would
/// make a wrong one fail as "bad signature" instead of "unknown issuer").
pub struct TestCa {
    key: rcgen::KeyPair,
    cert: rcgen::Certificate,
}

/// A certificate signed by a [`TestCa`] and its private key.
pub struct Issued {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PKCS#8 PEM).
    pub key_pem: String,
}

impl TestCa {
    /// A fresh CA whose common name starts with `name`.
    pub fn new(name: &str) -> TestCa {
        static N: AtomicU32 = AtomicU32::new(0);
        let key = rcgen::KeyPair::generate().expect("generate the CA key");
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA certificate parameters");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!(
                "{name} {}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ),
        );
        let cert = params.self_signed(&key).expect("self-sign the CA");
        TestCa { key, cert }
    }

    /// The CA's certificate (PEM), what a client trusts.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `names` (host names and IP addresses).
    pub fn issue(&self, names: &[&str]) -> Issued {
        let key = rcgen::KeyPair::generate().expect("generate the server key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .expect("server certificate parameters")
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign the server certificate");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}
