//! Who a client is, from the certificate it presented on an mTLS listener: the URI SAN (a
//! SPIFFE id), else the first DNS SAN, else the subject CN; and the
//! `x-forwarded-client-cert` value the upstream gets (Envoy's format).

use http::HeaderValue;
use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

/// A client's identity, worked out once per connection.
#[derive(Debug)]
pub(crate) struct PeerIdentity {
    /// What routes' `allow` compare and logs show: `spiffe://cluster.local/ns/shop/sa/web`.
    pub(crate) id: std::sync::Arc<str>,
    /// `Hash=<sha256 of the DER, hex>;URI=<uri>` (or `DNS=`, `Subject="…"`).
    pub(crate) xfcc: HeaderValue,
}

/// Which kind of name the identity is, for the `x-forwarded-client-cert` key.
#[derive(Clone, Copy)]
enum Kind {
    Uri,
    Dns,
    Subject,
}

impl PeerIdentity {
    /// The identity of a verified client certificate; `None` when it names nobody or the
    /// name cannot travel in a header (non-ASCII).
    pub(crate) fn of(cert: &CertificateDer<'_>) -> Option<PeerIdentity> {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
        let (mut uri, mut dns) = (None, None);
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) if uri.is_none() => uri = Some(*u),
                    GeneralName::DNSName(d) if dns.is_none() => dns = Some(*d),
                    _ => {}
                }
            }
        }
        let (kind, id, subject) = match (uri, dns) {
            (Some(u), _) => (Kind::Uri, u.to_owned(), None),
            (None, Some(d)) => (Kind::Dns, d.to_owned(), None),
            (None, None) => {
                let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
                (Kind::Subject, cn, Some(parsed.subject().to_string()))
            }
        };
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
        let mut xfcc = String::with_capacity(100 + id.len());
        xfcc.push_str("Hash=");
        for b in digest.as_ref() {
            xfcc.push(char::from(HEX[usize::from(b >> 4)]));
            xfcc.push(char::from(HEX[usize::from(b & 15)]));
        }
        match kind {
            Kind::Uri => push_pair(&mut xfcc, "URI", &id),
            Kind::Dns => push_pair(&mut xfcc, "DNS", &id),
            Kind::Subject => push_pair(&mut xfcc, "Subject", subject.as_deref().unwrap_or(&id)),
        }
        let xfcc = HeaderValue::from_str(&xfcc).ok()?;
        Some(PeerIdentity { id: id.into(), xfcc })
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `;Key=value`, the value quoted when it holds a separator (`,` `;` `=` `"` or a space),
/// as Envoy does; inside quotes `"` and `\` are escaped.
fn push_pair(out: &mut String, key: &str, value: &str) {
    out.push(';');
    out.push_str(key);
    out.push('=');
    let quoted = key == "Subject" || value.bytes().any(|b| matches!(b, b',' | b';' | b'=' | b'"' | b' '));
    if !quoted {
        out.push_str(value);
        return;
    }
    out.push('"');
    for c in value.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(sans: Vec<rcgen::SanType>, cn: &str) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn the_uri_san_wins_then_the_dns_san_then_the_subject_cn() {
        let spiffe = "spiffe://cluster.local/ns/shop/sa/web";
        let c = cert(
            vec![
                rcgen::SanType::DnsName("web.shop.svc".try_into().unwrap()),
                rcgen::SanType::URI(spiffe.try_into().unwrap()),
            ],
            "web",
        );
        let id = PeerIdentity::of(&c).unwrap();
        assert_eq!(&*id.id, spiffe);
        let xfcc = id.xfcc.to_str().unwrap();
        let hash = xfcc.strip_prefix("Hash=").unwrap().split(';').next().unwrap();
        assert_eq!(hash.len(), 64);
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert!(xfcc.ends_with(&format!(";URI={spiffe}")), "{xfcc}");

        let c = cert(vec![rcgen::SanType::DnsName("web.shop.svc".try_into().unwrap())], "web");
        let id = PeerIdentity::of(&c).unwrap();
        assert_eq!(&*id.id, "web.shop.svc");
        assert!(id.xfcc.to_str().unwrap().ends_with(";DNS=web.shop.svc"));

        let id = PeerIdentity::of(&cert(vec![], "batch-job")).unwrap();
        assert_eq!(&*id.id, "batch-job");
        assert!(
            id.xfcc.to_str().unwrap().ends_with(r#";Subject="CN=batch-job""#),
            "{:?}",
            id.xfcc
        );
    }

    #[test]
    fn separators_are_quoted_and_quotes_escaped() {
        let mut s = String::new();
        push_pair(&mut s, "URI", r#"spiffe://x/a;b"c"#);
        assert_eq!(s, r#";URI="spiffe://x/a;b\"c""#);
    }
}
