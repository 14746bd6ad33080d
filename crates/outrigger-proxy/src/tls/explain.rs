//! TLS failures in words a person can act on: why an upstream's certificate was refused
//! ("expired 3 days ago", "is for *.other.svc, not payments.internal", "signed by an unknown
//! authority"), why an upstream handshake failed, and the bounded reason of an inbound one.

use std::io;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{
    AlertDescription, CertificateError, DigitallySignedStruct, Error, OtherError, PeerIncompatible, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// What outrigger reads from a certificate to explain it.
pub(crate) struct Leaf {
    pub(crate) not_after: i64,
    pub(crate) issuer: String,
    /// DNS and IP subject alternative names, as presented.
    pub(crate) names: Vec<String>,
}

impl Leaf {
    pub(crate) fn parse(der: &CertificateDer<'_>) -> Option<Leaf> {
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::DNSName(d) => names.push((*d).to_owned()),
                    x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                        4 => names.push(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).ok()?).to_string()),
                        16 => names.push(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).ok()?).to_string()),
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
        Some(Leaf {
            not_after: cert.validity().not_after.timestamp(),
            issuer: cert.issuer().to_string(),
            names,
        })
    }
}

/// `2026-12-02`, for a Unix time.
pub(crate) fn date(unix: i64) -> String {
    x509_parser::time::ASN1Time::from_timestamp(unix)
        .map(|t| t.to_datetime().date().to_string())
        .unwrap_or_else(|_| format!("Unix time {unix}"))
}

/// "3 days", "2h", for a number of seconds.
pub(crate) fn ago(secs: i64) -> String {
    const DAY: i64 = 86_400;
    match secs.max(0) {
        s if s >= 2 * DAY => format!("{} days", s / DAY),
        s => outrigger_resilience::humanize(std::time::Duration::from_secs(s.unsigned_abs())),
    }
}

/// Told the `not_after` of each upstream certificate that verified (the expiry metric).
#[derive(Clone, Default)]
pub(crate) struct Seen(Option<Arc<dyn Fn(i64) + Send + Sync>>);

impl Seen {
    pub(crate) fn new(f: impl Fn(i64) + Send + Sync + 'static) -> Self {
        Seen(Some(Arc::new(f)))
    }
}

impl std::fmt::Debug for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seen")
    }
}

/// webpki's verifier, whose refusals are turned into sentences (the refusal itself is
/// webpki's: nothing is accepted that it refuses).
#[derive(Debug)]
pub(crate) struct Explaining {
    inner: Arc<WebPkiServerVerifier>,
    seen: Seen,
}

/// A refusal, explained; carried inside rustls' `CertificateError::Other`.
#[derive(Debug)]
struct Explained(String);

impl std::fmt::Display for Explained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Explained {}

impl Explaining {
    pub(crate) fn new(inner: Arc<WebPkiServerVerifier>, seen: Seen) -> Self {
        Explaining { inner, seen }
    }
}

impl ServerCertVerifier for Explaining {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Ok(verified) => {
                if let (Some(f), Some(leaf)) = (&self.seen.0, Leaf::parse(end_entity)) {
                    f(leaf.not_after);
                }
                Ok(verified)
            }
            Err(Error::InvalidCertificate(e)) => {
                let why = refused_certificate(&e, end_entity, server_name, now);
                Err(Error::InvalidCertificate(CertificateError::Other(OtherError(
                    Arc::new(Explained(why)),
                ))))
            }
            Err(other) => Err(other),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn name_of(server_name: &ServerName<'_>) -> String {
    server_name.to_str().into_owned()
}

/// Why webpki refused an upstream's certificate, in a sentence.
fn refused_certificate(
    e: &CertificateError,
    cert: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
    now: UnixTime,
) -> String {
    let name = name_of(server_name);
    let leaf = Leaf::parse(cert);
    let now = now.as_secs() as i64;
    match e {
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => match &leaf {
            Some(l) => format!(
                "the certificate of {name} expired {} ago (not after {})",
                ago(now - l.not_after),
                date(l.not_after)
            ),
            None => format!("the certificate of {name} has expired"),
        },
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => format!(
            "the certificate of {name} is not valid yet; check this machine's clock and the upstream's certificate"
        ),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            // Our own reading of the names: rustls' context renders them as debug values.
            let presented = leaf.as_ref().map(|l| l.names.clone()).unwrap_or_default();
            if presented.is_empty() {
                format!("the certificate names no host (no subject alternative name), so it is not valid for {name}")
            } else {
                format!(
                    "the certificate is for {}, not {name}; set `tls.server_name` to a name it holds, or reissue it",
                    presented.join(", ")
                )
            }
        }
        CertificateError::UnknownIssuer => match &leaf {
            Some(l) => format!(
                "the certificate of {name} is signed by an unknown authority ({}); trust that CA with `tls.ca`",
                l.issuer
            ),
            None => format!("the certificate of {name} is signed by an unknown authority; trust its CA with `tls.ca`"),
        },
        CertificateError::BadSignature => format!("the certificate of {name} has a signature that does not verify"),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            format!("the certificate of {name} is not for server authentication (extended key usage)")
        }
        other => format!("the certificate of {name} was refused ({other})"),
    }
}

/// The TLS error inside an I/O error from tokio-rustls.
fn rustls_error(e: &io::Error) -> Option<&Error> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<Error>())
}

/// A TLS refusal somewhere in `e`'s cause chain, explained: with TLS 1.3 the client's side
/// of the handshake ends before the server has checked the client's certificate, so an
/// upstream's refusal (`certificate_required`, `unknown_ca`) arrives on the first read.
pub(crate) fn refusal_in(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<io::Error>()
            && rustls_error(io).is_some()
        {
            return Some(upstream_failure(io));
        }
        next = err.source();
    }
    None
}

/// Why a handshake with an upstream failed, for the error detail and the logs.
pub(crate) fn upstream_failure(e: &io::Error) -> String {
    match rustls_error(e) {
        Some(Error::InvalidCertificate(CertificateError::Other(o))) => o.to_string(),
        Some(Error::InvalidCertificate(c)) => format!("the upstream's certificate was refused ({c})"),
        Some(Error::AlertReceived(AlertDescription::CertificateRequired)) => {
            "the upstream asks for a client certificate; set `tls.cert` and `tls.key`".to_owned()
        }
        Some(Error::AlertReceived(
            a @ (AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::AccessDenied),
        )) => format!("the upstream refused outrigger's client certificate ({a:?})"),
        Some(Error::AlertReceived(a)) => format!("the upstream ended the handshake ({a:?} alert)"),
        Some(Error::InvalidMessage(_)) => {
            "the upstream does not speak TLS on this port (plain HTTP?); remove `tls:` or use its TLS port".to_owned()
        }
        Some(Error::PeerIncompatible(p)) => {
            format!("the upstream supports no TLS version or cipher outrigger does ({p:?})")
        }
        Some(other) => format!("{other}"),
        None if e.kind() == io::ErrorKind::UnexpectedEof => {
            "the upstream closed the connection during the TLS handshake".to_owned()
        }
        None => format!("{e}"),
    }
}

/// Whether a handshake failed on what the peer sent (a TLS error), rather than on the
/// connection closing or stalling.
pub(crate) fn is_tls_error(e: &io::Error) -> bool {
    rustls_error(e).is_some()
}

/// The bounded reason of a failed inbound handshake (the metric's `reason` label).
pub(crate) fn inbound_failure(e: &io::Error) -> &'static str {
    match rustls_error(e) {
        Some(Error::NoCertificatesPresented) => "no_client_cert",
        Some(Error::InvalidCertificate(CertificateError::UnknownIssuer)) => "unknown_ca",
        Some(Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. })) => {
            "expired"
        }
        Some(Error::InvalidCertificate(_)) => "bad_certificate",
        Some(Error::PeerIncompatible(
            PeerIncompatible::Tls12NotOffered
            | PeerIncompatible::Tls12NotOfferedOrEnabled
            | PeerIncompatible::SupportedVersionsExtensionRequired,
        )) => "protocol_version",
        _ => "other",
    }
}
