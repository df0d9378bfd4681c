//! Node certificates through CertificateSigningRequests, as upstream's csrapproving and
//! csrsigning controllers do it. The approver approves kubelet client requests
//! (`kubernetes.io/kube-apiserver-client-kubelet`) shaped as a node's (CN
//! `system:node:NAME`, O `system:nodes`, client auth) once a SubjectAccessReview says the
//! requester may create `certificatesigningrequests/nodeclient` (a bootstrap token) or
//! `selfnodeclient` (a node renewing its own); anything else waits for a person
//! (`kubectl certificate approve`). The signer issues approved requests of the
//! Kubernetes signers with the cluster CA, for at most the signing duration.

use futures::StreamExt;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;

use skiff_api::certificates::Requested;

use crate::Error;

pub const KUBELET_CLIENT: &str = "kubernetes.io/kube-apiserver-client-kubelet";
const API_CLIENT: &str = "kubernetes.io/kube-apiserver-client";
const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";

/// What the signer signs with (upstream's `--cluster-signing-cert-file`/`-key-file` and
/// `--cluster-signing-duration`).
#[derive(Clone, Debug)]
pub struct Signing {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub duration: std::time::Duration,
}

fn has_condition(csr: &CertificateSigningRequest, kind: &str) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == kind))
}

fn decided(csr: &CertificateSigningRequest) -> bool {
    has_condition(csr, "Approved") || has_condition(csr, "Denied")
}

fn issued(csr: &CertificateSigningRequest) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.certificate.as_ref())
        .is_some_and(|c| !c.0.is_empty())
}

fn requested(csr: &CertificateSigningRequest) -> Option<Requested> {
    skiff_api::certificates::parse_request(&csr.spec.request.0).ok()
}

/// The key usages a request asks for.
fn usages(csr: &CertificateSigningRequest) -> Vec<&str> {
    csr.spec
        .usages
        .iter()
        .flatten()
        .map(String::as_str)
        .collect()
}

/// Upstream's `isNodeClientCert`: a kubelet's client certificate and nothing more.
fn is_node_client(csr: &CertificateSigningRequest, req: &Requested) -> bool {
    let mut usages = usages(csr);
    usages.sort_unstable();
    let usages_ok = usages == ["client auth", "digital signature"]
        || usages == ["client auth", "digital signature", "key encipherment"];
    csr.spec.signer_name == KUBELET_CLIENT
        && req.organizations == ["system:nodes"]
        && req.common_name.starts_with("system:node:")
        && req.alt_names == 0
        && usages_ok
}

/// Every request, each time it changes.
fn requests(
    api: &Api<CertificateSigningRequest>,
) -> futures::stream::BoxStream<'static, Result<CertificateSigningRequest, watcher::Error>> {
    watcher::watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .boxed()
}

pub async fn run_approver(client: kube::Client) -> Result<(), Error> {
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let mut requests = requests(&api);
    while let Some(csr) = requests.next().await {
        let Ok(csr) = csr else { continue };
        if decided(&csr) || csr.spec.signer_name != KUBELET_CLIENT {
            continue;
        }
        if let Err(e) = approve(&client, &api, csr).await {
            tracing::warn!(error = %e, "auto-approving a node certificate request");
        }
    }
    Ok(())
}

async fn approve(
    client: &kube::Client,
    api: &Api<CertificateSigningRequest>,
    mut csr: CertificateSigningRequest,
) -> Result<(), kube::Error> {
    let Some(req) = requested(&csr) else {
        return Ok(());
    };
    if !is_node_client(&csr, &req) {
        return Ok(());
    }
    let name = csr.metadata.name.clone().unwrap_or_default();
    let own = csr.spec.username.as_deref() == Some(req.common_name.as_str());
    let subresources: &[&str] = if own {
        &["selfnodeclient", "nodeclient"]
    } else {
        &["nodeclient"]
    };
    let mut allowed = false;
    for subresource in subresources {
        if may_create(client, &csr, subresource).await? {
            allowed = true;
            break;
        }
    }
    if !allowed {
        tracing::debug!(csr = %name, "not auto-approved: the requester may not ask for a node certificate");
        return Ok(());
    }
    let status = csr.status.get_or_insert_with(Default::default);
    status
        .conditions
        .get_or_insert_with(Vec::new)
        .push(condition(
            "Approved",
            "AutoApproved",
            "Auto approving kubelet client certificate after SubjectAccessReview.".into(),
        ));
    api.replace_subresource("approval", &name, &PostParams::default(), &csr)
        .await?;
    tracing::info!(csr = %name, requester = ?csr.spec.username, "approved a node client certificate request");
    Ok(())
}

/// Whether the requester may create `certificatesigningrequests/<subresource>`.
async fn may_create(
    client: &kube::Client,
    csr: &CertificateSigningRequest,
    subresource: &str,
) -> Result<bool, kube::Error> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: csr.spec.username.clone(),
            uid: csr.spec.uid.clone(),
            groups: csr.spec.groups.clone(),
            extra: csr.spec.extra.clone(),
            resource_attributes: Some(ResourceAttributes {
                group: Some("certificates.k8s.io".into()),
                resource: Some("certificatesigningrequests".into()),
                subresource: Some(subresource.into()),
                verb: Some("create".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// A condition set now, with upstream's reason and message.
fn condition(kind: &str, reason: &str, message: String) -> CertificateSigningRequestCondition {
    CertificateSigningRequestCondition {
        type_: kind.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(Time(k8s_openapi::jiff::Timestamp::now())),
        ..Default::default()
    }
}

pub async fn run_signer(client: kube::Client, signing: Signing) -> Result<(), Error> {
    let issuer = rcgen::KeyPair::from_pem(&signing.ca_key_pem)
        .and_then(|key| rcgen::Issuer::from_ca_cert_pem(&signing.ca_cert_pem, key));
    let issuer = match issuer {
        Ok(issuer) => issuer,
        Err(e) => {
            tracing::error!(error = %e, "the cluster signing CA is not usable: no certificates are issued");
            return std::future::pending().await;
        }
    };
    let api: Api<CertificateSigningRequest> = Api::all(client);
    let mut requests = requests(&api);
    while let Some(csr) = requests.next().await {
        let Ok(csr) = csr else { continue };
        if !has_condition(&csr, "Approved") || has_condition(&csr, "Failed") || issued(&csr) {
            continue;
        }
        if ![KUBELET_CLIENT, API_CLIENT, KUBELET_SERVING].contains(&csr.spec.signer_name.as_str()) {
            continue;
        }
        let name = csr.metadata.name.clone().unwrap_or_default();
        let (certificate, failure) = match sign(&csr, &issuer, &signing) {
            Ok(pem) => (Some(pem), None),
            Err(why) => (None, Some(why)),
        };
        let mut status = csr.status.clone().unwrap_or_default();
        if let Some(why) = &failure {
            status
                .conditions
                .get_or_insert_with(Vec::new)
                .push(condition("Failed", "SignerValidationFailure", why.clone()));
        }
        status.certificate = certificate.map(|pem| k8s_openapi::ByteString(pem.into_bytes()));
        let mut next = csr.clone();
        next.status = Some(status);
        let result = api
            .replace_status(&name, &PostParams::default(), &next)
            .await
            .map(|_| ());
        match (result, failure) {
            (Ok(()), None) => tracing::info!(csr = %name, "issued a certificate"),
            (Ok(()), Some(why)) => tracing::warn!(csr = %name, %why, "refused to sign"),
            (Err(e), _) => tracing::warn!(csr = %name, error = %e, "writing a signed certificate"),
        }
    }
    Ok(())
}

/// The certificate for an approved request: its subject and names, the usages it asked
/// for, valid from 5 minutes ago (clock skew) for the shorter of what it asked and the
/// signing duration.
fn sign(
    csr: &CertificateSigningRequest,
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    signing: &Signing,
) -> Result<String, String> {
    let pem = String::from_utf8(csr.spec.request.0.clone())
        .map_err(|_| "the request is not PEM text".to_string())?;
    let mut request = rcgen::CertificateSigningRequestParams::from_pem(&pem)
        .map_err(|e| format!("the request does not parse: {e}"))?;
    let req = requested(csr).ok_or("the request does not parse")?;
    let usages = usages(csr);
    // Upstream's per-signer checks: client signers issue client certificates only, the
    // kubelet-serving signer serving certificates for nodes' names only.
    let allowed = |optional: &[&str], required: &str| -> Result<(), String> {
        if let Some(bad) = usages
            .iter()
            .find(|u| **u != required && !optional.contains(u))
        {
            return Err(format!("invalid usage for this signer: {bad}"));
        }
        if !usages.contains(&required) {
            return Err(format!(
                "missing required usage for this signer: {required}"
            ));
        }
        Ok(())
    };
    match csr.spec.signer_name.as_str() {
        API_CLIENT => allowed(&["digital signature", "key encipherment"], "client auth")?,
        KUBELET_SERVING => {
            allowed(&["digital signature", "key encipherment"], "server auth")?;
            if req.alt_names == 0 {
                return Err("a kubelet serving certificate must name the node (DNS or IP subject alternative names)".into());
            }
        }
        _ => {}
    }
    match csr.spec.signer_name.as_str() {
        KUBELET_CLIENT if !is_node_client(csr, &req) => {
            return Err("invalid kubelet client certificate request: CN must be system:node:NAME, O only system:nodes, usages client auth and digital signature".into());
        }
        KUBELET_SERVING
            if req.organizations != ["system:nodes"]
                || !req.common_name.starts_with("system:node:") =>
        {
            return Err("invalid kubelet serving certificate request: CN must be system:node:NAME and O system:nodes".into());
        }
        _ => {}
    }
    let mut lifetime = signing.duration;
    if let Some(seconds) = csr.spec.expiration_seconds {
        lifetime = lifetime.min(std::time::Duration::from_secs(
            u64::try_from(seconds).unwrap_or(0),
        ));
    }
    let params = &mut request.params;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::try_from(lifetime).map_err(|e| e.to_string())?;
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&rand_serial()));
    params.key_usages.clear();
    params.extended_key_usages.clear();
    for usage in csr.spec.usages.iter().flatten() {
        use rcgen::{ExtendedKeyUsagePurpose as E, KeyUsagePurpose as K};
        match usage.as_str() {
            "signing" | "digital signature" => params.key_usages.push(K::DigitalSignature),
            "content commitment" => params.key_usages.push(K::ContentCommitment),
            "key encipherment" => params.key_usages.push(K::KeyEncipherment),
            "key agreement" => params.key_usages.push(K::KeyAgreement),
            "data encipherment" => params.key_usages.push(K::DataEncipherment),
            "client auth" => params.extended_key_usages.push(E::ClientAuth),
            "server auth" => params.extended_key_usages.push(E::ServerAuth),
            "code signing" => params.extended_key_usages.push(E::CodeSigning),
            "email protection" => params.extended_key_usages.push(E::EmailProtection),
            "timestamping" => params.extended_key_usages.push(E::TimeStamping),
            "ocsp signing" => params.extended_key_usages.push(E::OcspSigning),
            other => return Err(format!("usage {other:?} is not allowed for this signer")),
        }
    }
    let cert = request.signed_by(issuer).map_err(|e| e.to_string())?;
    Ok(cert.pem())
}

/// A positive random 16-byte serial number.
fn rand_serial() -> [u8; 16] {
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f;
    serial
}
