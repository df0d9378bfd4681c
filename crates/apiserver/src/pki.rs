//! The cluster's certificates: a CA created on first start, a serving certificate for the
//! API server and an admin client certificate (CN `admin`, O `system:masters`), all kept
//! as PEM files in `DATA_DIR/pki` and reused on later starts.
//!
//! ECDSA P-256 keys (rcgen's default). The CA lives 10 years, leaf certificates 1 year;
//! a leaf within 30 days of expiry, or a serving certificate missing a host it must
//! name, is reissued at start (full rotation is the security issue's work).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::Error;

const CA_CN: &str = "skiff-ca";
const CA_LIFETIME: Duration = Duration::days(3650);
const LEAF_LIFETIME: Duration = Duration::days(365);

/// PEM material the server and the admin kubeconfig need.
pub struct Pki {
    pub dir: PathBuf,
    pub ca_cert_pem: String,
    pub serving_cert_pem: String,
    pub serving_key_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
    /// The API server's client certificate for kubelets (upstream's
    /// `apiserver-kubelet-client`).
    pub kubelet_client_cert_pem: String,
    pub kubelet_client_key_pem: String,
    /// The key service account tokens are signed with (ECDSA P-256, `sa.key`).
    pub service_account_key: KeyPair,
}

/// What a serving certificate must name.
pub struct ServingNames {
    pub dns: Vec<String>,
    pub ips: Vec<std::net::IpAddr>,
}

impl Pki {
    /// Loads the PKI from `data_dir/pki`, creating what is missing.
    pub fn ensure(data_dir: &Path, names: &ServingNames) -> Result<Pki, Error> {
        let dir = data_dir.join("pki");
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io("creating the pki directory", &dir, e))?;
        let ca_key = load_or_create_key(&dir.join("ca.key"))?;
        let ca_params = ca_params();
        let ca_cert_path = dir.join("ca.crt");
        let ca_cert_pem = match std::fs::read_to_string(&ca_cert_path) {
            Ok(pem) => pem,
            Err(_) => {
                let cert = ca_params.self_signed(&ca_key).map_err(Error::pki)?;
                write_file(&ca_cert_path, cert.pem().as_bytes(), 0o644)?;
                tracing::info!(path = %ca_cert_path.display(), "created the cluster CA");
                cert.pem()
            }
        };
        let issuer = Issuer::new(ca_params, ca_key);

        let (serving_cert_pem, serving_key_pem) =
            leaf(&dir, "apiserver", &issuer, serving_params(names))?;
        let (admin_cert_pem, admin_key_pem) = leaf(
            &dir,
            "admin",
            &issuer,
            client_params("admin", &["system:masters"]),
        )?;
        let (kubelet_client_cert_pem, kubelet_client_key_pem) = leaf(
            &dir,
            "apiserver-kubelet-client",
            &issuer,
            client_params("kube-apiserver-kubelet-client", &["system:masters"]),
        )?;
        let service_account_key = load_or_create_key(&dir.join("sa.key"))?;
        Ok(Pki {
            service_account_key,
            kubelet_client_cert_pem,
            kubelet_client_key_pem,
            dir,
            ca_cert_pem,
            serving_cert_pem,
            serving_key_pem,
            admin_cert_pem,
            admin_key_pem,
        })
    }
}

/// A client certificate from the cluster CA, with the CA to trust.
pub struct ClientCertificate {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// The client certificate of a component (CN `user`, O `groups`), kept as
/// `pki/FILE.crt` and `FILE.key` and reissued within 30 days of expiry. The CA must
/// exist already (the API server made it).
pub fn client_certificate(
    data_dir: &Path,
    file: &str,
    user: &str,
    groups: &[&str],
) -> Result<ClientCertificate, Error> {
    let dir = data_dir.join("pki");
    let key_path = dir.join("ca.key");
    let ca_key = std::fs::read_to_string(&key_path)
        .map_err(|e| Error::io("reading", &key_path, e))
        .and_then(|pem| KeyPair::from_pem(&pem).map_err(Error::pki))?;
    let ca_path = dir.join("ca.crt");
    let ca_pem =
        std::fs::read_to_string(&ca_path).map_err(|e| Error::io("reading", &ca_path, e))?;
    let issuer = Issuer::new(ca_params(), ca_key);
    let (cert_pem, key_pem) = leaf(&dir, file, &issuer, client_params(user, groups))?;
    Ok(ClientCertificate {
        ca_pem,
        cert_pem,
        key_pem,
    })
}

/// The CA's parameters. Rebuilt identically on every start, so certificates signed now
/// chain to the CA created on the first start (same name, same key, same key id).
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(CA_CN, &[]);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + CA_LIFETIME;
    params
}

fn serving_params(names: &ServingNames) -> CertificateParams {
    let mut params = leaf_params("kube-apiserver", &[]);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.subject_alt_names = names
        .dns
        .iter()
        .filter_map(|d| d.clone().try_into().ok().map(SanType::DnsName))
        .chain(names.ips.iter().map(|ip| SanType::IpAddress(*ip)))
        .collect();
    params
}

fn client_params(user: &str, groups: &[&str]) -> CertificateParams {
    let mut params = leaf_params(user, groups);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

fn leaf_params(cn: &str, orgs: &[&str]) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(cn, orgs);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + LEAF_LIFETIME;
    params
}

fn name(cn: &str, orgs: &[&str]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    for org in orgs {
        dn.push(DnType::OrganizationName, *org);
    }
    dn
}

/// Loads `NAME.crt`/`NAME.key` if they exist, are valid for 30 more days and name the
/// same hosts; otherwise issues new ones.
fn leaf(
    dir: &Path,
    name: &str,
    issuer: &Issuer<'_, KeyPair>,
    params: CertificateParams,
) -> Result<(String, String), Error> {
    let (cert_path, key_path) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let same_names = std::fs::read_to_string(dir.join(format!("{name}.names")))
        .is_ok_and(|recorded| recorded == sans(&params));
    if let (Ok(cert), Ok(key)) = (
        std::fs::read_to_string(&cert_path),
        std::fs::read_to_string(&key_path),
    ) && same_names
        && fresh(dir, name)
    {
        return Ok((cert, key));
    }
    let key = KeyPair::generate().map_err(Error::pki)?;
    let cert = params.signed_by(&key, issuer).map_err(Error::pki)?;
    write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
    // The expiry beside the certificate, so a restart can tell when to reissue without
    // parsing X.509.
    let expiry = params.not_after.unix_timestamp().to_string();
    write_file(
        &dir.join(format!("{name}.expiry")),
        expiry.as_bytes(),
        0o644,
    )?;
    write_file(
        &dir.join(format!("{name}.names")),
        sans(&params).as_bytes(),
        0o644,
    )?;
    tracing::info!(path = %cert_path.display(), "issued a certificate");
    Ok((cert.pem(), key.serialize_pem()))
}

fn fresh(dir: &Path, name: &str) -> bool {
    let Ok(expiry) = std::fs::read_to_string(dir.join(format!("{name}.expiry"))) else {
        return false;
    };
    let Ok(expiry) = expiry.trim().parse::<i64>() else {
        return false;
    };
    expiry - OffsetDateTime::now_utc().unix_timestamp() > Duration::days(30).whole_seconds()
}

/// The subject alternative names as one line per name, for `NAME.names`.
fn sans(params: &CertificateParams) -> String {
    params
        .subject_alt_names
        .iter()
        .map(|san| match san {
            SanType::DnsName(d) => format!("DNS:{}\n", d.as_str()),
            SanType::IpAddress(ip) => format!("IP:{ip}\n"),
            other => format!("{other:?}\n"),
        })
        .collect()
}

fn load_or_create_key(path: &Path) -> Result<KeyPair, Error> {
    // Only a missing key is made anew: an unreadable one must not be replaced (every
    // certificate or token signed with it would stop verifying).
    match std::fs::read_to_string(path) {
        Ok(pem) => return KeyPair::from_pem(&pem).map_err(Error::pki),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(Error::io("reading", path, e));
        }
        Err(_) => {}
    }
    let key = KeyPair::generate().map_err(Error::pki)?;
    write_file(path, key.serialize_pem().as_bytes(), 0o600)?;
    Ok(key)
}

/// Writes a file atomically (temporary file, then rename) with the given mode.
pub(crate) fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| Error::io("writing", &tmp, e))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io("writing", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("renaming", path, e))
}
