//! CertificateSigningRequests (certificates.k8s.io/v1), as upstream's strategy and
//! validation treat them: the requester (`spec.username`, `groups`, ...) is whoever
//! created the request, never what the body says; the spec never changes after
//! creation; Approved/Denied conditions change only through `/approval`, the issued
//! certificate only through `/status`, and once issued it stays. Who may approve or
//! sign for a signer is [`admit`]'s (upstream's CertificateApproval and
//! CertificateSigning admission), and nobody gets a `system:masters` client
//! certificate through the `kube-apiserver-client` signer (CertificateSubjectRestriction).

use base64::Engine;
use serde_json::{Value, json};

use crate::authn::UserInfo;
use crate::status::{ApiError, FieldError};

pub(crate) const GROUP: &str = "certificates.k8s.io";

/// The key usages a request may ask for (upstream's `KeyUsage` constants).
const USAGES: &[&str] = &[
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
];

/// Which part of a request a write may change.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum CsrPart {
    Main,
    Status,
    Approval,
}

fn is_approval(condition: &Value) -> bool {
    matches!(condition["type"].as_str(), Some("Approved" | "Denied"))
}

/// The PEM text of a base64 `[]byte` field.
fn pem_of(field: &Value) -> Option<String> {
    let b64 = field.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    String::from_utf8(bytes).ok()
}

/// The subject of a PEM certificate request: (common name, organizations); why not.
pub(crate) fn request_subject(pem: &str) -> Result<(String, Vec<String>), String> {
    let requested = skiff_api::certificates::parse_request(pem.as_bytes())?;
    Ok((requested.common_name, requested.organizations))
}

/// The requester, set from who creates the request.
pub(crate) fn set_requester(obj: &mut Value, user: &UserInfo) {
    if !obj["spec"].is_object() {
        return;
    }
    let spec = &mut obj["spec"];
    spec["username"] = json!(user.username);
    spec["groups"] = json!(user.groups);
    for (field, value) in [("uid", json!(user.uid)), ("extra", json!(user.extra))] {
        let empty = value == json!("") || value == json!({});
        if empty {
            if let Some(s) = spec.as_object_mut() {
                s.remove(field);
            }
        } else {
            spec[field] = value;
        }
    }
}

/// What an update keeps of the stored request (upstream's PrepareForUpdate of the main,
/// status and approval strategies), and the conditions' timestamps filled in.
pub(crate) fn prepare_update(part: CsrPart, old: &Value, obj: &mut Value) {
    obj["spec"] = old["spec"].clone();
    let old_conditions = old["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let new_conditions = obj["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let conditions: Vec<Value> = match part {
        CsrPart::Main => return,
        // The signer's write: keeps whatever approval there is.
        CsrPart::Status => old_conditions
            .iter()
            .filter(|c| is_approval(c))
            .chain(new_conditions.iter().filter(|c| !is_approval(c)))
            .cloned()
            .collect(),
        // The approver's write: the certificate and other conditions stay.
        CsrPart::Approval => {
            match old["status"].get("certificate") {
                Some(cert) if obj["status"].is_object() => {
                    obj["status"]["certificate"] = cert.clone()
                }
                Some(cert) => obj["status"] = json!({"certificate": cert}),
                None => {
                    if let Some(s) = obj["status"].as_object_mut() {
                        s.remove("certificate");
                    }
                }
            }
            new_conditions
                .iter()
                .filter(|c| is_approval(c))
                .chain(old_conditions.iter().filter(|c| !is_approval(c)))
                .cloned()
                .collect()
        }
    };
    let now = super::object::now();
    let conditions: Vec<Value> = conditions
        .into_iter()
        .map(|mut c| {
            for stamp in ["lastUpdateTime", "lastTransitionTime"] {
                if c[stamp].as_str().is_none_or(str::is_empty) {
                    c[stamp] = json!(now);
                }
            }
            c
        })
        .collect();
    if !obj["status"].is_object() {
        obj["status"] = json!({});
    }
    if conditions.is_empty() {
        if let Some(s) = obj["status"].as_object_mut() {
            s.remove("conditions");
        }
    } else {
        obj["status"]["conditions"] = json!(conditions);
    }
}

/// Upstream's validation of a request, created or (with `old`) updated.
pub(crate) fn check(obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let spec = &obj["spec"];
    match pem_of(&spec["request"]) {
        None if spec["request"].is_null() => errors.push(FieldError {
            field: "spec.request".into(),
            reason: "FieldValueRequired",
            message: "Required value".into(),
        }),
        None => errors.push(FieldError::invalid(
            "spec.request",
            "<bytes>",
            "PEM block type must be CERTIFICATE REQUEST",
        )),
        Some(pem) => {
            if let Err(e) = request_subject(&pem) {
                errors.push(FieldError::invalid("spec.request", "<bytes>", &e));
            }
        }
    }
    match spec["signerName"].as_str().unwrap_or_default() {
        "" => errors.push(FieldError {
            field: "spec.signerName".into(),
            reason: "FieldValueRequired",
            message: "Required value".into(),
        }),
        signer => {
            let valid = signer.split_once('/').is_some_and(|(domain, path)| {
                domain.contains('.')
                    && !path.is_empty()
                    && super::NameRule::DnsSubdomain.check("", domain).is_none()
            });
            if !valid {
                errors.push(FieldError::invalid(
                    "spec.signerName",
                    signer,
                    "must be a fully qualified domain and path of the form 'example.com/signer-name'",
                ));
            }
        }
    }
    match spec["usages"].as_array() {
        None => errors.push(FieldError {
            field: "spec.usages".into(),
            reason: "FieldValueRequired",
            message: "Required value".into(),
        }),
        Some(usages) => {
            for (i, usage) in usages.iter().enumerate() {
                let u = usage.as_str().unwrap_or_default();
                if !USAGES.contains(&u) {
                    errors.push(FieldError {
                        field: format!("spec.usages[{i}]"),
                        reason: "FieldValueNotSupported",
                        message: format!(
                            "Unsupported value: {u:?}: supported values: {}",
                            USAGES
                                .iter()
                                .map(|u| format!("{u:?}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    });
                }
            }
        }
    }
    if let Some(seconds) = spec["expirationSeconds"].as_i64()
        && seconds < 600
    {
        errors.push(FieldError::invalid_number(
            "spec.expirationSeconds",
            seconds,
            "may not specify a duration less than 600 seconds (10 minutes)",
        ));
    }
    let conditions = obj["status"]["conditions"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    let has = |t: &str| conditions.iter().any(|c| c["type"] == t);
    if has("Approved") && has("Denied") {
        errors.push(FieldError::invalid(
            "status.conditions",
            "Approved",
            "Approved and Denied conditions are mutually exclusive",
        ));
    }
    for (i, c) in conditions.iter().enumerate() {
        if c["type"].as_str().is_none_or(str::is_empty) {
            errors.push(FieldError {
                field: format!("status.conditions[{i}].type"),
                reason: "FieldValueRequired",
                message: "Required value".into(),
            });
        }
        if is_approval(c) && c["status"] != "True" {
            errors.push(FieldError {
                field: format!("status.conditions[{i}].status"),
                reason: "FieldValueNotSupported",
                message: format!(
                    "Unsupported value: {}: supported values: \"True\"",
                    c["status"]
                ),
            });
        }
    }
    if let Some(old) = old {
        let old_conditions = old["status"]["conditions"]
            .as_array()
            .map_or(&[][..], Vec::as_slice);
        for t in ["Approved", "Denied"] {
            if old_conditions.iter().any(|c| c["type"] == t) && !has(t) {
                errors.push(FieldError {
                    field: "status.conditions".into(),
                    reason: "FieldValueForbidden",
                    message: format!("Forbidden: updates may not remove a condition of type {t:?}"),
                });
            }
        }
        let (before, after) = (&old["status"]["certificate"], &obj["status"]["certificate"]);
        if !before.is_null() && before != after {
            errors.push(FieldError {
                field: "status.certificate".into(),
                reason: "FieldValueForbidden",
                message: "Forbidden: updates may not modify existing certificate content".into(),
            });
        }
    }
    let certificate = &obj["status"]["certificate"];
    if !certificate.is_null() && certificate != "" {
        if !has("Approved") {
            errors.push(FieldError {
                field: "status.certificate".into(),
                reason: "FieldValueForbidden",
                message:
                    "Forbidden: certificate may only be set if the Approved condition is present"
                        .into(),
            });
        }
        let parses = pem_of(certificate).is_some_and(|pem| {
            let blocks: Vec<_> = x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()).collect();
            !blocks.is_empty()
                && blocks
                    .into_iter()
                    .all(|b| b.is_ok_and(|b| b.label == "CERTIFICATE" && b.parse_x509().is_ok()))
        });
        if !parses {
            errors.push(FieldError::invalid(
                "status.certificate",
                "<certificate data>",
                "must contain at least one CERTIFICATE PEM block",
            ));
        }
    }
    errors
}

/// Upstream's certificate admission: approving needs `approve`, issuing needs `sign`,
/// on `signers` named by the signer name (or `DOMAIN/*`); and no `system:masters`
/// client certificates through `kubernetes.io/kube-apiserver-client`.
pub(crate) fn admit(
    authorizer: &crate::authz::Authorizer,
    user: &UserInfo,
    subresource: &str,
    obj: &Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let signer = obj["spec"]["signerName"].as_str().unwrap_or_default();
    let may = |verb: &str| {
        let domain = signer.split_once('/').map(|(d, _)| format!("{d}/*"));
        [Some(signer.to_string()), domain]
            .into_iter()
            .flatten()
            .any(|name| {
                let attrs = crate::authz::Attributes {
                    verb: verb.into(),
                    path: String::new(),
                    resource: Some(crate::authz::ResourceAttributes {
                        group: GROUP.into(),
                        version: "*".into(),
                        resource: "signers".into(),
                        name,
                        ..Default::default()
                    }),
                };
                authorizer.authorize(user, &attrs).is_ok()
            })
    };
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let refuse = |why: String| {
        crate::authz::forbidden_error(GROUP, "certificatesigningrequests", name, &why)
    };
    let forbidden = |verb: &str| {
        refuse(format!(
            "user not permitted to {verb} requests with signerName {signer:?}"
        ))
    };
    match (subresource, old) {
        ("approval", Some(_)) if !may("approve") => Err(forbidden("approve")),
        ("status", Some(old))
            if old["status"]["certificate"] != obj["status"]["certificate"] && !may("sign") =>
        {
            Err(forbidden("sign"))
        }
        ("", None) if signer == "kubernetes.io/kube-apiserver-client" => {
            let pem = pem_of(&obj["spec"]["request"]).unwrap_or_default();
            match request_subject(&pem) {
                Ok((_, orgs)) if orgs.iter().any(|o| o == crate::authz::PRIVILEGED_GROUP) => {
                    Err(refuse(format!(
                        "use of {signer} signer with {} group is not allowed",
                        crate::authz::PRIVILEGED_GROUP
                    )))
                }
                _ => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

/// `kubectl get csr`'s CONDITION column: `Approved,Issued`, `Pending`, ...
pub(crate) fn condition_column(obj: &Value) -> Value {
    let mut words: Vec<&str> = obj["status"]["conditions"]
        .as_array()
        .map(|c| c.iter().filter_map(|c| c["type"].as_str()).collect())
        .unwrap_or_default();
    if words.is_empty() {
        words.push("Pending");
    }
    let issued = obj["status"]["certificate"]
        .as_str()
        .is_some_and(|c| !c.is_empty());
    if issued {
        words.push("Issued");
    }
    json!(words.join(","))
}

pub(crate) fn requestor_column(obj: &Value) -> Value {
    json!(obj["spec"]["username"].as_str().unwrap_or_default())
}

pub(crate) fn signer_column(obj: &Value) -> Value {
    json!(obj["spec"]["signerName"].as_str().unwrap_or_default())
}

/// REQUESTEDDURATION: the duration the requester asked for, as kubectl prints it.
pub(crate) fn duration_column(obj: &Value) -> Value {
    match obj["spec"]["expirationSeconds"].as_i64() {
        Some(s) => json!(crate::table::human_duration(s)),
        None => json!("<none>"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(cn: &str, orgs: &[&str]) -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        for o in orgs {
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, *o);
        }
        let csr = params.serialize_request(&key).expect("csr");
        base64::engine::general_purpose::STANDARD.encode(csr.pem().expect("pem"))
    }

    fn csr(signer: &str, request: String) -> Value {
        json!({"metadata": {"name": "n"}, "spec": {"request": request, "signerName": signer, "usages": ["client auth"]}})
    }

    #[test]
    fn requests_are_validated_as_upstream() {
        let good = csr("example.com/x", request("system:node:a", &["system:nodes"]));
        assert!(
            check(&good, None).is_empty(),
            "{:?}",
            check(&good, None)
                .iter()
                .map(|e| e.describe())
                .collect::<Vec<_>>()
        );
        let pem = pem_of(&good["spec"]["request"]).expect("pem");
        assert_eq!(
            request_subject(&pem).expect("subject"),
            (
                "system:node:a".to_string(),
                vec!["system:nodes".to_string()]
            )
        );
        let mut bad = good.clone();
        bad["spec"]["request"] = json!(base64::engine::general_purpose::STANDARD.encode("nope"));
        bad["spec"]["signerName"] = json!("nodomain");
        bad["spec"]["usages"] = json!(["flying"]);
        bad["spec"]["expirationSeconds"] = json!(60);
        let fields: Vec<String> = check(&bad, None).into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "spec.request",
                "spec.signerName",
                "spec.usages[0]",
                "spec.expirationSeconds"
            ]
        );
    }

    #[test]
    fn each_part_changes_only_its_own_fields() {
        let old = json!({"spec": {"signerName": "a/b"}, "status": {"conditions": [{"type": "Approved", "status": "True"}], "certificate": "Q0VSVA=="}});
        // A status write cannot drop the approval; an approval write cannot touch the
        // certificate; no write changes the spec.
        let mut status = json!({"spec": {"signerName": "c/d"}, "status": {"conditions": [{"type": "Failed", "status": "True"}]}});
        prepare_update(CsrPart::Status, &old, &mut status);
        assert_eq!(status["spec"]["signerName"], "a/b");
        let types: Vec<&str> = status["status"]["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .filter_map(|c| c["type"].as_str())
            .collect();
        assert_eq!(types, ["Approved", "Failed"]);
        let mut approval = json!({"spec": {}, "status": {"conditions": [{"type": "Approved", "status": "True"}], "certificate": "b3RoZXI="}});
        prepare_update(CsrPart::Approval, &old, &mut approval);
        assert_eq!(approval["status"]["certificate"], "Q0VSVA==");
        assert!(approval["status"]["conditions"][0]["lastUpdateTime"].is_string());
        let mut removed = old.clone();
        removed["status"]["conditions"] = json!([]);
        let errors: Vec<String> = check(&removed, Some(&old))
            .into_iter()
            .map(|e| e.message)
            .collect();
        assert!(
            errors.iter().any(|e| e.contains("may not remove")),
            "{errors:?}"
        );
    }
}
