//! Certificate signing requests as the API carries them (a PEM `CERTIFICATE REQUEST` in
//! `spec.request`): what one asks for, read the same way by the API server's validation
//! and by the controllers that approve and sign.

use x509_parser::prelude::FromDer;

/// The subject and names a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct Requested {
    /// The last CN (as Go reads a subject).
    pub common_name: String,
    pub organizations: Vec<String>,
    /// How many subject alternative names (DNS, IP, email, URI, ...) it asks for.
    pub alt_names: usize,
}

/// Reads a PEM certificate request; why not, in upstream's words where it has them.
pub fn parse_request(pem: &[u8]) -> Result<Requested, String> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|_| "PEM block type must be CERTIFICATE REQUEST".to_string())?;
    if block.label != "CERTIFICATE REQUEST" {
        return Err("PEM block type must be CERTIFICATE REQUEST".into());
    }
    let (_, request) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&block.contents)
            .map_err(|e| format!("asn1: {e}"))?;
    // Proof that the requester holds the key (upstream's CheckSignature).
    request
        .verify_signature()
        .map_err(|_| "the request's signature does not verify".to_string())?;
    let subject = &request.certification_request_info.subject;
    let common_name = subject
        .iter_common_name()
        .last()
        .and_then(|c| c.as_str().ok())
        .unwrap_or_default()
        .to_string();
    let organizations = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    let alt_names = request
        .requested_extensions()
        .into_iter()
        .flatten()
        .map(|e| match e {
            x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) => {
                san.general_names.len()
            }
            _ => 0,
        })
        .sum();
    Ok(Requested {
        common_name,
        organizations,
        alt_names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_certificate_requests_parse() {
        assert_eq!(
            parse_request(b"nonsense"),
            Err("PEM block type must be CERTIFICATE REQUEST".to_string())
        );
        let certificate = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert_eq!(
            parse_request(certificate),
            Err("PEM block type must be CERTIFICATE REQUEST".to_string())
        );
    }
}
