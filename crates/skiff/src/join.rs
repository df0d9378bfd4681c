//! Joining a node with a token, and keeping its certificate fresh.
//!
//! `skiff token create` makes a bootstrap token (the Secret
//! `kube-system/bootstrap-token-<id>`) and prints it as `K10<ca-hash>::<id>.<secret>`:
//! the hash pins the cluster CA (sha256 of its public key, kubeadm's
//! `--discovery-token-ca-cert-hash`). `skiff agent --server URL --token TOKEN` reads the
//! anonymous `kube-public/cluster-info` without trusting the server yet, refuses a CA
//! whose hash differs, then, trusting that CA, asks for a node client certificate
//! through a CertificateSigningRequest made with the token (approved by the controller
//! manager) and writes `DATA_DIR/kubelet.kubeconfig`. Later starts use that file; a
//! certificate past 80% of its life is renewed the same way with the node's own
//! identity.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use sha2::Digest;

const TOKEN_PREFIX: &str = "K10";
const SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";

#[derive(clap::Subcommand)]
pub enum Token {
    /// Create a join token and print it (`K10<ca-hash>::<id>.<secret>`).
    Create(TokenArgs),
    /// List the bootstrap tokens.
    List(TokenArgs),
    /// Delete bootstrap tokens by id (or whole token).
    Delete {
        #[command(flatten)]
        args: TokenArgs,
        ids: Vec<String>,
    },
}

#[derive(clap::Args)]
pub struct TokenArgs {
    /// An admin's kubeconfig.
    #[arg(long, default_value = "/var/lib/skiff/admin.kubeconfig")]
    kubeconfig: PathBuf,
    /// How long a created token is valid (`24h`, `30m`, `0`: forever).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    ttl: Duration,
    /// What the token is for (a created token's `description`).
    #[arg(long)]
    description: Option<String>,
}

/// `1h30m`, `45s`, `2h`, `0` (Go's duration syntax, whole units).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0u64;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number
            .parse()
            .map_err(|_| format!("invalid duration {text:?}"))?;
        number.clear();
        total += n * match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => {
                return Err(format!(
                    "invalid duration {text:?}: unit {c:?} (use h, m or s)"
                ));
            }
        };
    }
    if !number.is_empty() {
        return Err(format!(
            "invalid duration {text:?}: missing unit (h, m or s)"
        ));
    }
    Ok(Duration::from_secs(total))
}

/// The CA hash as kubeadm writes it: `sha256:` and the hex digest of the first
/// certificate's SubjectPublicKeyInfo.
pub fn ca_hash(ca_pem: &str) -> Result<String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("the CA is not PEM: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("the CA does not parse: {e}"))?;
    let digest = sha2::Sha256::digest(cert.tbs_certificate.subject_pki.raw);
    Ok(format!("sha256:{}", hex(&digest)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A join token's parts: the CA hash it pins (if any) and `<id>.<secret>`.
pub fn split_token(token: &str) -> Result<(Option<String>, String)> {
    let (hash, bootstrap) = match token.strip_prefix(TOKEN_PREFIX) {
        Some(rest) => {
            let (hash, bootstrap) = rest
                .split_once("::")
                .context("a K10 token is K10<ca-hash>::<id>.<secret>")?;
            (Some(format!("sha256:{hash}")), bootstrap.to_string())
        }
        None => (None, token.to_string()),
    };
    let valid = bootstrap.split_once('.').is_some_and(|(id, secret)| {
        let ok = |s: &str, n| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        ok(id, 6) && ok(secret, 16)
    });
    if !valid {
        bail!("the token must end in <id>.<secret> (6 and 16 characters of a-z and 0-9)");
    }
    Ok((hash, bootstrap))
}

fn random_chars(n: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(n);
    while out.len() < n {
        // A CSPRNG seeded by the kernel: the token is a credential.
        let byte: u8 = rand::random();
        // Rejection sampling keeps every character equally likely.
        if usize::from(byte) < 252 {
            out.push(char::from(ALPHABET[usize::from(byte) % ALPHABET.len()]));
        }
    }
    out
}

impl Token {
    pub async fn run(self) -> Result<()> {
        match self {
            Token::Create(args) => create(&args).await,
            Token::List(args) => list(&args).await,
            Token::Delete { args, ids } => delete(&args, &ids).await,
        }
    }
}

async fn create(args: &TokenArgs) -> Result<()> {
    let client = crate::scheduler::client(&args.kubeconfig, "skiff").await?;
    let ca = crate::controller_manager::root_ca(&args.kubeconfig)
        .context("the kubeconfig names no cluster CA")?;
    let (id, secret) = (random_chars(6), random_chars(16));
    let mut data = vec![
        ("token-id", id.clone()),
        ("token-secret", secret.clone()),
        ("usage-bootstrap-authentication", "true".to_string()),
        ("usage-bootstrap-signing", "true".to_string()),
    ];
    if !args.ttl.is_zero() {
        let at = time::OffsetDateTime::now_utc()
            + time::Duration::try_from(args.ttl).context("--ttl")?;
        let at = at.replace_nanosecond(0).unwrap_or(at);
        data.push((
            "expiration",
            at.format(&time::format_description::well_known::Rfc3339)?,
        ));
    }
    if let Some(description) = &args.description {
        data.push(("description", description.clone()));
    }
    let secret_object = Secret {
        metadata: ObjectMeta {
            name: Some(format!("bootstrap-token-{id}")),
            namespace: Some("kube-system".into()),
            ..Default::default()
        },
        type_: Some("bootstrap.kubernetes.io/token".into()),
        string_data: Some(data.into_iter().map(|(k, v)| (k.to_string(), v)).collect()),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client, "kube-system")
        .create(&PostParams::default(), &secret_object)
        .await
        .context("creating the bootstrap token")?;
    let hash = ca_hash(&ca)?;
    let hash = hash.trim_start_matches("sha256:");
    println!("{TOKEN_PREFIX}{hash}::{id}.{secret}");
    Ok(())
}

async fn list(args: &TokenArgs) -> Result<()> {
    let client = crate::scheduler::client(&args.kubeconfig, "skiff").await?;
    let secrets = Api::<Secret>::namespaced(client, "kube-system")
        .list(&ListParams::default().fields("type=bootstrap.kubernetes.io/token"))
        .await
        .context("listing bootstrap tokens")?;
    println!(
        "{:<8} {:<22} {:<26} DESCRIPTION",
        "TOKEN-ID", "EXPIRES", "USAGES"
    );
    for s in secrets {
        let field = |k: &str| {
            s.data
                .as_ref()
                .and_then(|d| d.get(k))
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                .unwrap_or_default()
        };
        let usages: Vec<&str> = ["authentication", "signing"]
            .into_iter()
            .filter(|u| field(&format!("usage-bootstrap-{u}")) == "true")
            .collect();
        let expires = field("expiration");
        println!(
            "{:<8} {:<22} {:<26} {}",
            field("token-id"),
            if expires.is_empty() {
                "<forever>".into()
            } else {
                expires
            },
            usages.join(","),
            field("description")
        );
    }
    Ok(())
}

async fn delete(args: &TokenArgs, ids: &[String]) -> Result<()> {
    let client = crate::scheduler::client(&args.kubeconfig, "skiff").await?;
    let api = Api::<Secret>::namespaced(client, "kube-system");
    for id in ids {
        let id = id.rsplit("::").next().unwrap_or(id);
        let id = id.split('.').next().unwrap_or(id);
        api.delete(&format!("bootstrap-token-{id}"), &Default::default())
            .await
            .with_context(|| format!("deleting bootstrap token {id}"))?;
        println!("bootstrap token {id:?} deleted");
    }
    Ok(())
}

/// Reads the cluster CA from the server without trusting it, and checks it against
/// the pinned hash.
async fn discover_ca(server: &str, pinned: &str) -> Result<String> {
    let mut config = kube::Config::new(server.parse().context("--server is not a URL")?);
    config.accept_invalid_certs = true;
    let client = kube::Client::try_from(config).context("creating the discovery client")?;
    let info = Api::<ConfigMap>::namespaced(client, "kube-public")
        .get("cluster-info")
        .await
        .context("reading kube-public/cluster-info from the server")?;
    let kubeconfig = info
        .data
        .as_ref()
        .and_then(|d| d.get("kubeconfig"))
        .context("cluster-info holds no kubeconfig")?;
    let kubeconfig =
        kube::config::Kubeconfig::from_yaml(kubeconfig).context("cluster-info's kubeconfig")?;
    let data = kubeconfig
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.certificate_authority_data.clone())
        .context("cluster-info names no CA")?;
    let ca = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .context("cluster-info's CA is not base64")?,
    )
    .context("cluster-info's CA is not PEM")?;
    // Every certificate the bundle holds is trusted from here on, so each must be the
    // pinned one (no JWS signature vouches for the rest, as kubeadm's would).
    let blocks: Vec<_> = x509_parser::pem::Pem::iter_from_buffer(ca.as_bytes()).collect();
    if blocks.is_empty() {
        bail!("cluster-info's CA holds no certificate");
    }
    for block in blocks {
        let block = block.map_err(|e| anyhow::anyhow!("cluster-info's CA: {e}"))?;
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::engine::general_purpose::STANDARD.encode(&block.contents)
        );
        let found = ca_hash(&pem)?;
        if !found.eq_ignore_ascii_case(pinned) {
            bail!(
                "the server's CA ({found}) does not match the CA hash the token pins ({pinned}): refusing to join"
            );
        }
    }
    Ok(ca)
}

/// A client of `server` that trusts `ca` and sends `token`.
async fn token_client(server: &str, ca: &str, token: &str) -> Result<kube::Client> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"{server}\", certificate-authority-data: {}}}\nusers:\n- name: u\n  user: {{token: \"{token}\"}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n",
        b64(ca)
    );
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&yaml)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// Asks for a node client certificate (CN `system:node:NAME`, O `system:nodes`) and
/// waits until it is issued: `(certificate, key)` in PEM.
async fn request_certificate(client: &kube::Client, node: &str) -> Result<(String, String)> {
    let key = rcgen::KeyPair::generate().context("generating the node key")?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    let request = params
        .serialize_request(&key)
        .context("making the certificate request")?
        .pem()
        .context("encoding the certificate request")?;
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            generate_name: Some("node-csr-".into()),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: k8s_openapi::ByteString(request.into_bytes()),
            signer_name: SIGNER.into(),
            usages: Some(vec!["digital signature".into(), "client auth".into()]),
            ..Default::default()
        },
        status: None,
    };
    let created = api
        .create(&PostParams::default(), &csr)
        .await
        .context("creating the certificate signing request")?;
    let name = created.metadata.name.unwrap_or_default();
    eprintln!("waiting for certificate signing request {name} to be approved and issued");
    let issued = tokio::time::timeout(
        Duration::from_secs(600),
        kube::runtime::wait::await_condition(
            api,
            &name,
            |csr: Option<&CertificateSigningRequest>| {
                csr.and_then(|c| c.status.as_ref()).is_some_and(|s| {
                    s.certificate.as_ref().is_some_and(|c| !c.0.is_empty())
                        || s.conditions
                            .iter()
                            .flatten()
                            .any(|c| c.type_ == "Denied" || c.type_ == "Failed")
                })
            },
        ),
    )
    .await
    .with_context(|| {
        format!("certificate signing request {name} was not issued within 10 minutes")
    })?
    .with_context(|| format!("watching certificate signing request {name}"))?;
    let status = issued.and_then(|c| c.status).unwrap_or_default();
    if let Some(refused) = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Denied" || c.type_ == "Failed")
    {
        bail!(
            "certificate signing request {name} was {}: {}",
            refused.type_.to_lowercase(),
            refused.message.clone().unwrap_or_default()
        );
    }
    let cert = String::from_utf8(status.certificate.unwrap_or_default().0)
        .context("the issued certificate is not PEM")?;
    Ok((cert, key.serialize_pem()))
}

/// Writes the node's kubeconfig and the CA its kubelet API trusts.
fn write_identity(
    data_dir: &Path,
    server: &str,
    node: &str,
    ca: &str,
    cert: &str,
    key: &str,
) -> Result<PathBuf> {
    let pki = data_dir.join("pki");
    std::fs::create_dir_all(&pki).with_context(|| format!("creating {}", pki.display()))?;
    std::fs::write(pki.join("ca.crt"), ca).context("writing the CA")?;
    let path = data_dir.join("kubelet.kubeconfig");
    skiff_apiserver::kubeconfig::write_client(
        &path,
        server,
        &format!("system:node:{node}"),
        &skiff_apiserver::pki::ClientCertificate {
            ca_pem: ca.to_string(),
            cert_pem: cert.to_string(),
            key_pem: key.to_string(),
        },
    )
    .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Joins with a token: discovery, CA check, TLS bootstrap. Returns the node's kubeconfig.
pub async fn bootstrap(
    data_dir: &Path,
    server: &str,
    token: &str,
    ca_cert_hash: Option<&str>,
    node: &str,
) -> Result<PathBuf> {
    let (pinned, bootstrap_token) = split_token(token)?;
    let pinned = match (pinned, ca_cert_hash) {
        (_, Some(hash)) => hash.to_string(),
        (Some(hash), None) => hash,
        (None, None) => bail!(
            "the token pins no CA: give a K10<ca-hash>::<id>.<secret> token or --ca-cert-hash sha256:<hex>"
        ),
    };
    let ca = discover_ca(server, &pinned).await?;
    eprintln!("the server's CA matches {pinned}");
    let client = token_client(server, &ca, &bootstrap_token).await?;
    let (cert, key) = request_certificate(&client, node).await?;
    let path = write_identity(data_dir, server, node, &ca, &cert, &key)?;
    eprintln!("joined as system:node:{node} ({})", path.display());
    Ok(path)
}

/// The client certificate (DER) of a kubeconfig's first user.
fn client_certificate(kubeconfig: &Path) -> Option<Vec<u8>> {
    let config = kube::config::Kubeconfig::read_from(kubeconfig).ok()?;
    let user = config.auth_infos.first()?.auth_info.as_ref()?;
    let data = user.client_certificate_data.as_ref()?;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .ok()?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
    Some(pem.contents)
}

/// The user (CN) of a kubeconfig's client certificate.
pub fn certificate_user(kubeconfig: &Path) -> Option<String> {
    let der = client_certificate(kubeconfig)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .last()?
        .as_str()
        .ok()?
        .to_string();
    Some(cn)
}

/// The validity of the client certificate in a kubeconfig: (not before, not after).
pub fn certificate_validity(
    kubeconfig: &Path,
) -> Option<(time::OffsetDateTime, time::OffsetDateTime)> {
    let der = client_certificate(kubeconfig)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let validity = cert.validity();
    let at = |t: x509_parser::time::ASN1Time| {
        time::OffsetDateTime::from_unix_timestamp(t.timestamp()).ok()
    };
    Some((at(validity.not_before)?, at(validity.not_after)?))
}

/// When the certificate should be renewed: 80% into its life (upstream's kubelet picks
/// a random point between 70% and 90%).
pub fn renewal_due(kubeconfig: &Path) -> Option<time::OffsetDateTime> {
    let (from, to) = certificate_validity(kubeconfig)?;
    Some(from + (to - from) * 0.8)
}

/// Renews the node's client certificate with its current identity; rewrites the
/// kubeconfig in place.
pub async fn renew(kubeconfig: &Path, node: &str) -> Result<()> {
    let client = crate::scheduler::client(kubeconfig, "kubelet").await?;
    let (cert, key) = request_certificate(&client, node).await?;
    let config = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let cluster = config
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .context("the kubeconfig names no cluster")?;
    let server = cluster.server.context("the kubeconfig names no server")?;
    let ca =
        crate::controller_manager::root_ca(kubeconfig).context("the kubeconfig names no CA")?;
    skiff_apiserver::kubeconfig::write_client(
        kubeconfig,
        &server,
        &format!("system:node:{node}"),
        &skiff_apiserver::pki::ClientCertificate {
            ca_pem: ca,
            cert_pem: cert,
            key_pem: key,
        },
    )
    .with_context(|| format!("writing {}", kubeconfig.display()))?;
    tracing::info!(kubeconfig = %kubeconfig.display(), "renewed the node's client certificate");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_durations_parse() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("1h30m5s"), Ok(Duration::from_secs(5405)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("3d").is_err());
        let (hash, token) = split_token("K10abcd::abcdef.0123456789abcdef").expect("token");
        assert_eq!(hash.as_deref(), Some("sha256:abcd"));
        assert_eq!(token, "abcdef.0123456789abcdef");
        let (hash, _) = split_token("abcdef.0123456789abcdef").expect("plain");
        assert_eq!(hash, None);
        assert!(split_token("K10abcd::short.x").is_err());
        let token = random_chars(16);
        assert_eq!(token.len(), 16);
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
    }
}
