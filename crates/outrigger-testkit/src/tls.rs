//! Certificates made in the test: a CA, certificates it issues (valid, expired, for other
//! names), written as PEM files a config can point at, and server/client configs for test
//! peers.
//!
//! ```no_run
//! use outrigger_testkit::tls::Pki;
//! let pki = Pki::new("mesh");
//! let server = pki.issue("proxy", &["localhost", "127.0.0.1"]);
//! let web = pki.issue("web", &["spiffe://cluster.local/ns/shop/sa/web"]);
//! // server.cert / server.key / pki.ca are paths; web.der is the certificate itself.
//! ```

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test set-up: material that cannot be made means the test cannot run"
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A certificate authority whose files live in a fresh temporary directory.
pub struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    /// The CA certificate (PEM).
    pub ca: PathBuf,
}

/// A certificate issued by a [`Pki`]: its PEM files and its DER.
#[derive(Clone)]
pub struct Issued {
    /// The certificate (PEM, leaf only).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8).
    pub key: PathBuf,
    /// The certificate, DER.
    pub der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Issued {
    /// The private key, DER.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

/// How long an issued certificate is valid, relative to now.
#[derive(Clone, Copy)]
pub enum Validity {
    /// From yesterday for a year.
    Current,
    /// Ended this many days ago.
    ExpiredDaysAgo(i64),
}

impl Pki {
    /// A new CA, `CN=outrigger test CA <name>`, P-256.
    pub fn new(name: &str) -> Pki {
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "outrigger-pki-{}-{}-{name}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("outrigger test CA {name}"));
        let cert = params.self_signed(&key).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, cert.pem()).unwrap();
        Pki {
            dir,
            ca_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
            ca,
        }
    }

    /// The directory the files are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca_der.clone()
    }

    /// A current certificate for `names`: `spiffe://…` and other URIs become URI SANs, IP
    /// addresses IP SANs, the rest DNS SANs; the first is also the CN.
    pub fn issue(&self, file: &str, names: &[&str]) -> Issued {
        self.issue_with(file, names, Validity::Current)
    }

    /// [`Pki::issue`] with a chosen validity.
    pub fn issue_with(&self, file: &str, names: &[&str], validity: Validity) -> Issued {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        for n in names {
            let san = if n.contains("://") {
                SanType::URI((*n).try_into().unwrap())
            } else if let Ok(ip) = n.parse::<std::net::IpAddr>() {
                SanType::IpAddress(ip)
            } else {
                SanType::DnsName((*n).try_into().unwrap())
            };
            params.subject_alt_names.push(san);
        }
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        let now = time::OffsetDateTime::now_utc();
        (params.not_before, params.not_after) = match validity {
            Validity::Current => (now - time::Duration::days(1), now + time::Duration::days(365)),
            Validity::ExpiredDaysAgo(d) => (now - time::Duration::days(d + 30), now - time::Duration::days(d)),
        };
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (
            self.dir.join(format!("{file}.crt")),
            self.dir.join(format!("{file}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Issued {
            cert: cert_path,
            key: key_path,
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }

    /// A client config that trusts this CA, offering `alpn`, presenting `identity` if given.
    pub fn client_config(&self, alpn: &[&[u8]], identity: Option<&Issued>) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match identity {
            Some(id) => builder
                .with_client_auth_cert(vec![id.der.clone()], id.key_der())
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// A server config presenting `cert`, offering `h2` and `http/1.1`; when `client_ca` is
    /// given, clients must present a certificate it issued.
    pub fn server_config(cert: &Issued, client_ca: Option<&Pki>) -> Arc<rustls::ServerConfig> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca.ca_der()).unwrap();
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                    .build()
                    .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(vec![cert.der.clone()], cert.key_der())
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

#[allow(deprecated, reason = "ring, as outrigger itself uses")]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
