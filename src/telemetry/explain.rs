//! One line that says what went wrong: an error and every cause under it, with TLS
//! failures named as such. kube and hyper put the useful part (which certificate check
//! failed, which connect was refused) several `source()`s down, under a top line such as
//! "client error (Connect)" that says nothing.

use std::error::Error;

/// `e`, then each cause not already part of the text before it, joined by ": ". A TLS
/// certificate rejection anywhere in the chain leads the line with
/// "TLS: the server's certificate was rejected (<the verifier's reason>)".
pub fn explain(e: &(dyn Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut tls = None;
    let mut next: Option<&(dyn Error + 'static)> = Some(e);
    while let Some(err) = next {
        tls = tls.or_else(|| certificate_problem(err));
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    let chain = parts.join(": ");
    match tls {
        Some(reason) => format!("TLS: the server's certificate was rejected ({reason}): {chain}"),
        None => chain,
    }
}

/// The verifier's reason when `err` is (or wraps, as an io::Error does) a rustls
/// certificate error. io::Error's `source()` skips the error it carries, so look inside.
/// tokio-rustls and the HTTPS connector each wrap it in an io::Error of their own, so
/// look through every level of those.
fn certificate_problem(err: &(dyn Error + 'static)) -> Option<String> {
    let mut at: &(dyn Error + 'static) = err;
    let tls = loop {
        if let Some(tls) = at.downcast_ref::<rustls::Error>() {
            break tls;
        }
        at = at.downcast_ref::<std::io::Error>()?.get_ref()?;
    };
    match tls {
        rustls::Error::InvalidCertificate(reason) => Some(match reason {
            rustls::CertificateError::UnknownIssuer => {
                "certificate signed by an unknown authority: check the CA the kubeconfig or \
                 [kubernetes.eks] ca_file gives"
                    .to_string()
            }
            rustls::CertificateError::NotValidForName
            | rustls::CertificateError::NotValidForNameContext { .. } => {
                format!("certificate not valid for the server's name: {reason:?}")
            }
            rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. } => {
                format!("certificate expired: {reason:?}")
            }
            other => format!("certificate invalid: {other:?}"),
        }),
        rustls::Error::NoCertificatesPresented => Some("no certificate presented".into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("client error (Connect)")]
    struct Top(#[source] std::io::Error);

    #[test]
    fn a_certificate_rejection_under_an_io_error_is_named_with_its_reason() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let e = Top(std::io::Error::other(tls));
        let line = explain(&e);
        assert!(
            line.starts_with("TLS: the server's certificate was rejected (certificate signed by an unknown authority"),
            "{line}"
        );
        assert!(
            line.contains("client error (Connect): invalid peer certificate"),
            "{line}"
        );
    }

    #[test]
    fn a_rejection_nested_in_several_io_errors_is_found() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let inner = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        let e = Top(std::io::Error::other(inner));
        assert!(
            explain(&e).starts_with("TLS: the server's certificate was rejected"),
            "{}",
            explain(&e)
        );
    }

    #[test]
    fn causes_are_joined_without_repeating_themselves() {
        let e = Top(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused",
        ));
        assert_eq!(explain(&e), "client error (Connect): Connection refused");
    }
}
