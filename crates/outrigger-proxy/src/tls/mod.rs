//! TLS with rustls (ring provider): the listeners' server configs (ALPN `h2` and `http/1.1`,
//! client certificates when `client_ca` is set), the upstreams' client configs (verification
//! always on, against `ca` or the bundled Mozilla roots), loaded from PEM files and rebuilt
//! when those files change ([`rotate`]).
//!
//! Every file problem is a [`TlsError`] naming the setting, the path and the reason: at start
//! (`check`, `run`) it stops outrigger; on rotation it keeps the previous material serving.

mod explain;
mod identity;
pub(crate) mod rotate;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use outrigger_config::{ListenerTls, UpstreamTls};

pub(crate) use explain::{Explaining, inbound_failure, is_tls_error, refusal_in, upstream_failure};
pub(crate) use identity::PeerIdentity;

/// A TLS file that cannot be used, or material that does not fit together.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{scope}: `{setting}` ({path}): {reason}")]
pub struct TlsError {
    /// `listener 'inbound'` or `upstream 'payments'`.
    pub scope: String,
    /// The setting, e.g. `tls.cert`.
    pub setting: &'static str,
    /// The file.
    pub path: PathBuf,
    /// What is wrong and what to do.
    pub reason: String,
}

/// A problem with one file, before it is placed in a scope.
struct FileError {
    setting: &'static str,
    path: PathBuf,
    reason: String,
}

impl FileError {
    fn new(setting: &'static str, path: &Path, reason: impl Into<String>) -> Self {
        FileError {
            setting,
            path: path.to_owned(),
            reason: reason.into(),
        }
    }

    fn within(self, scope: &str) -> TlsError {
        TlsError {
            scope: scope.to_owned(),
            setting: self.setting,
            path: self.path,
            reason: self.reason,
        }
    }
}

/// The one crypto provider: ring (aws-lc-rs needs cmake and a C toolchain at build, and a
/// larger binary). rustls 0.23.48 marks it deprecated because it has no post-quantum key
/// exchange (X25519MLKEM768): a known limit, written down in docs/tls.md.
#[allow(deprecated, reason = "ring is chosen deliberately; see above")]
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, FileError> {
    std::fs::read(path).map_err(|e| FileError::new(setting, path, format!("cannot read it: {e}")))
}

fn certs(setting: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, FileError> {
    let pem = read(setting, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| FileError::new(setting, path, format!("it is not valid PEM ({e})")))?;
    if certs.is_empty() {
        return Err(FileError::new(
            setting,
            path,
            "it holds no `-----BEGIN CERTIFICATE-----` block; point it at the PEM certificate file",
        ));
    }
    Ok(certs)
}

fn key(setting: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, FileError> {
    let pem = read(setting, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| {
        FileError::new(
            setting,
            path,
            "it holds no PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY); point it at the key file",
        )
    })
}

fn roots(setting: &'static str, path: &Path) -> Result<RootCertStore, FileError> {
    let mut store = RootCertStore::empty();
    for cert in certs(setting, path)? {
        store
            .add(cert)
            .map_err(|e| FileError::new(setting, path, format!("a CA certificate in it cannot be used: {e}")))?;
    }
    Ok(store)
}

/// The certificate chain and key, checked to belong together.
fn chain_and_key(
    cert_path: &Path,
    key_path: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), FileError> {
    let chain = certs("tls.cert", cert_path)?;
    let key = key("tls.key", key_path)?;
    match rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider()) {
        Ok(_) => Ok((chain, key)),
        Err(rustls::Error::InconsistentKeys(_)) => Err(FileError::new(
            "tls.key",
            key_path,
            format!(
                "this key does not belong to the certificate in {}; install the key issued with it",
                cert_path.display()
            ),
        )),
        Err(e) => Err(FileError::new(
            "tls.key",
            key_path,
            format!("the key cannot be used: {e}"),
        )),
    }
}

/// A listener's TLS, built: the server config and its certificate's `not_after`.
pub(crate) struct ServerTls {
    pub(crate) config: Arc<ServerConfig>,
    pub(crate) not_after: i64,
}

/// Builds a listener's server config; `now` (Unix seconds) refuses an expired certificate.
pub(crate) fn server(tls: &ListenerTls, scope: &str, now: i64) -> Result<ServerTls, TlsError> {
    server_inner(tls, now).map_err(|e| e.within(scope))
}

fn server_inner(tls: &ListenerTls, now: i64) -> Result<ServerTls, FileError> {
    let (chain, key) = chain_and_key(&tls.cert, &tls.key)?;
    let leaf = explain::Leaf::parse(&chain[0]).ok_or_else(|| {
        FileError::new(
            "tls.cert",
            &tls.cert,
            "its first certificate cannot be parsed (X.509 DER)",
        )
    })?;
    if leaf.not_after < now {
        return Err(FileError::new(
            "tls.cert",
            &tls.cert,
            format!(
                "the certificate expired on {} ({} ago); install a renewed one",
                explain::date(leaf.not_after),
                explain::ago(now - leaf.not_after)
            ),
        ));
    }
    let provider = provider();
    let verifier = match &tls.client_ca {
        Some(ca) => {
            let roots = roots("tls.client_ca", ca)?;
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| FileError::new("tls.client_ca", ca, format!("the CA cannot be used: {e}")))?
        }
        None => WebPkiClientVerifier::no_client_auth(),
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| FileError::new("tls.cert", &tls.cert, format!("{e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| FileError::new("tls.key", &tls.key, format!("the key cannot be used: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(ServerTls {
        config: Arc::new(config),
        not_after: leaf.not_after,
    })
}

/// An upstream's TLS, built: a client config per ALPN offer, and the `not_after` of the
/// client certificate outrigger presents (if any).
pub(crate) struct ClientTls {
    /// Offers `http/1.1`.
    pub(crate) http1: Arc<ClientConfig>,
    /// Offers `h2`.
    pub(crate) http2: Arc<ClientConfig>,
    pub(crate) not_after: Option<i64>,
}

/// Builds an upstream's client configs. `seen` is told the `not_after` of each certificate
/// an upstream presents and that verifies.
pub(crate) fn client(tls: &UpstreamTls, scope: &str, seen: explain::Seen) -> Result<ClientTls, TlsError> {
    client_inner(tls, seen).map_err(|e| e.within(scope))
}

fn client_inner(tls: &UpstreamTls, seen: explain::Seen) -> Result<ClientTls, FileError> {
    if let Some(name) = &tls.server_name
        && rustls_pki_types::ServerName::try_from(name.as_str()).is_err()
    {
        return Err(FileError::new(
            "tls.server_name",
            Path::new(name),
            "it is neither a DNS name nor an IP address; write the name the upstream's certificate holds",
        ));
    }
    let provider = provider();
    let roots = match &tls.ca {
        Some(ca) => roots("tls.ca", ca)?,
        None => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| {
            let path = tls.ca.clone().unwrap_or_default();
            FileError::new("tls.ca", &path, format!("the CA cannot be used: {e}"))
        })?;
    let verifier = Arc::new(Explaining::new(inner, seen));
    let client_cert = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let (chain, key) = chain_and_key(cert, key)?;
            let not_after = explain::Leaf::parse(&chain[0]).map(|l| l.not_after);
            Some((chain, key, not_after))
        }
        _ => None,
    };
    let build = |alpn: &[u8]| -> Result<Arc<ClientConfig>, FileError> {
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| FileError::new("tls", Path::new(""), format!("{e}")))?
            .dangerous()
            // The verifier is webpki's, wrapped only to explain its refusals (explain.rs).
            .with_custom_certificate_verifier(verifier.clone());
        let mut config = match &client_cert {
            Some((chain, key, _)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|e| {
                    let path = tls.key.clone().unwrap_or_default();
                    FileError::new("tls.key", &path, format!("the key cannot be used: {e}"))
                })?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(config))
    };
    Ok(ClientTls {
        http1: build(b"http/1.1")?,
        http2: build(b"h2")?,
        not_after: client_cert.and_then(|c| c.2),
    })
}

/// Seconds since the Unix epoch, now.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Loads every TLS file of `config` as `run` would, for `check`: the first problem found.
pub fn check(config: &outrigger_config::Config) -> Result<(), TlsError> {
    let now = unix_now();
    for l in &config.listeners {
        if let Some(tls) = &l.tls {
            server(tls, &format!("listener '{}'", l.name), now)?;
        }
    }
    for u in &config.upstreams {
        if let Some(tls) = &u.tls {
            client(tls, &format!("upstream '{}'", u.name), explain::Seen::default())?;
        }
    }
    Ok(())
}
