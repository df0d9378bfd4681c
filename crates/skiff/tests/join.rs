//! Joining a node with a token, as a user does: `skiff token create` prints a token that
//! pins the cluster CA; `skiff agent --server URL --token TOKEN` checks the server's CA
//! against it, gets a certificate of its own through a CertificateSigningRequest the
//! controller manager approves and signs, and its kubelet registers as
//! `system:node:NAME`, with no more rights than a node has. A token with another CA hash
//! is refused before anything is asked of the server, and a node certificate near its
//! end is renewed through a CSR made with the node's own identity.

mod common;
mod cri;
mod node;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use base64::Engine;
use common::{Component, wait_for};
use node::*;

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

/// `skiff agent` for `tn`'s runtime as node `name`, state in `dir`, with `extra` flags.
fn agent(tn: &TestNode, dir: &Path, name: &str, extra: &[&str]) -> Component {
    let log = dir.with_extension("log");
    let file = std::fs::File::create(&log).expect("agent log");
    let child = Command::new("setpriv")
        .args(["--pdeathsig", "KILL", "--", SKIFF, "agent"])
        .arg("--data-dir")
        .arg(dir)
        .args([
            "--node-name",
            name,
            "--node-ip",
            "127.0.0.1",
            "--kubelet-port",
            "0",
        ])
        .arg("--container-runtime-endpoint")
        .arg(tn.rt.socket())
        .arg("--cni-conf-dir")
        .arg(tn.cni_conf_dir())
        .arg("--pod-log-dir")
        .arg(&tn.logs)
        .args(["--eviction-hard", "memory.available<1Mi"])
        // The node's service proxy, in a table of the test's own.
        .args(["--proxy-nft-table", &proxy_table()])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("start skiff agent");
    Component { child, log }
}

fn proxy_table() -> String {
    format!("skiff-test-join-{}", std::process::id())
}

/// Removes the agents' proxy rules when dropped.
struct ProxyTable;

impl Drop for ProxyTable {
    fn drop(&mut self) {
        let _ = skiff(&[
            "proxy",
            "--cleanup",
            "--proxy-mode",
            "nftables",
            "--proxy-nft-table",
            &proxy_table(),
        ]);
    }
}

fn skiff(args: &[&str]) -> Output {
    Command::new(SKIFF).args(args).output().expect("skiff")
}

/// kubectl with another kubeconfig.
fn kubectl_with(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new("kubectl")
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(args)
        .output()
        .expect("kubectl")
}

/// Who a kubeconfig's credentials make you (`kubectl auth whoami`).
fn whoami(kubeconfig: &Path) -> Output {
    kubectl_with(
        kubeconfig,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
    )
}

/// The node client certificate requests: (requestor, condition column).
fn requests(tn: &TestNode) -> Vec<(String, String)> {
    let list = tn.c.json(&["get", "csr"]);
    list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|csr| {
            let conditions: Vec<&str> = csr["status"]["conditions"]
                .as_array()
                .map(|c| c.iter().filter_map(|c| c["type"].as_str()).collect())
                .unwrap_or_default();
            let issued = csr["status"]["certificate"].is_string();
            (
                csr["spec"]["username"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                format!(
                    "{}{}",
                    conditions.join(","),
                    if issued { ",Issued" } else { "" }
                ),
            )
        })
        .collect()
}

/// A kubeconfig for `user` whose certificate from the cluster CA is 90% through its
/// ten-day life.
fn old_kubeconfig(tn: &TestNode, path: &Path, user: &str) {
    let pki = tn.c.data_dir().join("pki");
    let ca = std::fs::read_to_string(pki.join("ca.crt")).expect("ca.crt");
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki.join("ca.key")).expect("ca.key"))
            .expect("CA key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca, ca_key).expect("issuer");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, user);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(9);
    params.not_after = now + time::Duration::days(1);
    let cert = params.signed_by(&key, &issuer).expect("sign");
    let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"{}\", certificate-authority-data: {}}}\nusers:\n- name: u\n  user: {{client-certificate-data: {}, client-key-data: {}}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n",
        tn.c.server,
        b64(ca),
        b64(cert.pem()),
        b64(key.serialize_pem()),
    );
    std::fs::write(path, yaml).expect("kubeconfig");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_with_a_token_and_renews_its_certificate() {
    let _rules = ProxyTable;
    let tn = TestNode::start(7).await;
    let c = &tn.c;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = c.kubeconfig.display().to_string();
    let created = skiff(&[
        "token",
        "create",
        "--kubeconfig",
        &kubeconfig,
        "--ttl",
        "1h",
    ]);
    assert!(created.status.success(), "{created:?}");
    let token = String::from_utf8_lossy(&created.stdout).trim().to_string();
    let (hash, bootstrap) = token.split_once("::").expect("K10<hash>::<id>.<secret>");
    let id = bootstrap.split('.').next().expect("id");
    // The hash is kubeadm's: sha256 of the CA's public key, as openssl computes it.
    let openssl = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -pubkey -noout -in {} | openssl pkey -pubin -outform der | sha256sum",
            c.data_dir().join("pki/ca.crt").display()
        ))
        .output()
        .expect("openssl");
    let digest = String::from_utf8_lossy(&openssl.stdout);
    assert_eq!(
        Some(&hash[3..]),
        digest.split_whitespace().next(),
        "{token}"
    );
    let listed = skiff(&["token", "list", "--kubeconfig", &kubeconfig]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains(id),
        "{listed:?}"
    );

    // Another CA hash: refused, and nothing asked of the server.
    let wrong = format!("K10{}::{bootstrap}", "0".repeat(64));
    let mut refused = agent(
        &tn,
        &dir.path().join("wrong"),
        "wrong",
        &["--server", &c.server, "--token", &wrong],
    );
    let status = refused.child.wait().expect("wait");
    assert!(!status.success());
    assert!(
        refused
            .log()
            .contains("does not match the CA hash the token pins"),
        "{}",
        refused.log()
    );
    assert!(requests(&tn).is_empty());

    // The token: the node joins with a certificate of its own.
    let node = format!("joined-{}", std::process::id());
    let state = dir.path().join("node");
    let mut joined = agent(
        &tn,
        &state,
        &node,
        &["--server", &c.server, "--token", &token],
    );
    wait_node_ready(c, &node);
    assert_eq!(
        requests(&tn),
        [(
            format!("system:bootstrap:{id}"),
            "Approved,Issued".to_string()
        )]
    );
    let own = state.join("kubelet.kubeconfig");
    let me = whoami(&own);
    assert_eq!(
        String::from_utf8_lossy(&me.stdout),
        format!("system:node:{node}"),
        "{me:?}"
    );
    // A node's rights, not the admin's.
    let secrets = kubectl_with(&own, &["get", "secrets", "-n", "kube-system"]);
    assert!(!secrets.status.success());
    assert!(
        String::from_utf8_lossy(&secrets.stderr).contains("forbidden"),
        "{secrets:?}"
    );
    // Its kubelet API trusts the cluster CA the join wrote: the API server gets in.
    assert_eq!(
        c.ok(&[
            "get",
            "--raw",
            &format!("/api/v1/nodes/{node}/proxy/healthz")
        ]),
        "ok"
    );
    // Its service proxy reads Services with the node's credentials: the `kubernetes`
    // Service is programmed.
    wait_for(
        "the joined node's proxy to program the kubernetes Service",
        || {
            let rules = Command::new("nft")
                .args(["list", "table", "ip", &proxy_table()])
                .output()
                .expect("nft");
            String::from_utf8_lossy(&rules.stdout).contains("10.96.0.1 . tcp . 443")
        },
    );
    joined.kill();

    // A certificate 90% through its life: renewed at start with the node's identity.
    old_kubeconfig(&tn, &own, &format!("system:node:{node}"));
    let old = std::fs::read_to_string(&own).expect("kubeconfig");
    let renewing = agent(&tn, &state, &node, &[]);
    wait_for("the node certificate to be renewed", || {
        requests(&tn).iter().any(|(user, condition)| {
            *user == format!("system:node:{node}") && condition == "Approved,Issued"
        }) && std::fs::read_to_string(&own).is_ok_and(|now| now != old)
    });
    let me = whoami(&own);
    assert_eq!(
        String::from_utf8_lossy(&me.stdout),
        format!("system:node:{node}"),
        "{}",
        renewing.log()
    );
    wait_for("the kubelet to come back with its new certificate", || {
        renewing.log().matches("node registered").count() >= 2
    });
    c.ok(&["delete", "node", &node]);
}

/// A PEM certificate request for `cn` in `orgs`, with its key.
fn request(cn: &str, orgs: &[&str]) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    for o in orgs {
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, *o);
    }
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let csr = params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    (csr, key.serialize_pem())
}

fn csr_manifest(name: &str, pem: &str, signer: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(pem);
    format!(
        "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {{name: {name}}}\nspec:\n  request: {b64}\n  signerName: {signer}\n  expirationSeconds: 3600\n  usages: [digital signature, client auth]\n"
    )
}

/// A user's certificate through the CSR API: pending until `kubectl certificate
/// approve`, then issued by the controller manager, and it authenticates; nobody gets
/// `system:masters` this way; a denied request stays unissued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_certificates_are_issued_once_approved() {
    let c = common::Cluster::start(common::Backend::Embedded).await;
    let (pem, key) = request("alice", &["devs"]);
    c.ok_stdin(
        &["apply", "-f", "-"],
        &csr_manifest("alice", &pem, "kubernetes.io/kube-apiserver-client"),
    );
    let shown = c.ok(&["get", "csr", "alice"]);
    assert!(
        shown.contains("REQUESTEDDURATION") && shown.contains("Pending"),
        "{shown}"
    );
    assert!(
        shown.contains("kubernetes.io/kube-apiserver-client") && shown.contains("admin"),
        "{shown}"
    );
    c.ok(&["certificate", "approve", "alice"]);
    wait_for("alice's certificate", || {
        c.json(&["get", "csr", "alice"])["status"]["certificate"].is_string()
    });
    assert!(c.ok(&["get", "csr", "alice"]).contains("Approved,Issued"));
    let cert = c.ok(&[
        "get",
        "csr",
        "alice",
        "-o",
        "jsonpath={.status.certificate}",
    ]);
    let cert = base64::engine::general_purpose::STANDARD
        .decode(cert.trim())
        .expect("base64");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("alice.crt"), &cert).expect("crt");
    std::fs::write(dir.path().join("alice.key"), &key).expect("key");
    let me = Command::new("kubectl")
        .arg("--kubeconfig=/dev/null")
        .arg(format!("--server={}", c.server))
        .arg(format!(
            "--certificate-authority={}",
            c.data_dir().join("pki/ca.crt").display()
        ))
        .arg(format!(
            "--client-certificate={}",
            dir.path().join("alice.crt").display()
        ))
        .arg(format!(
            "--client-key={}",
            dir.path().join("alice.key").display()
        ))
        .args([
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
        ])
        .output()
        .expect("kubectl");
    assert_eq!(
        String::from_utf8_lossy(&me.stdout),
        r#"alice ["devs","system:authenticated"]"#,
        "{me:?}"
    );
    // The issued certificate cannot be swapped, and the approval cannot be taken back.
    // (kubectl refuses to deny an approved request itself: straight to /approval.)
    let mut csr = c.json(&["get", "csr", "alice"]);
    let path = "/apis/certificates.k8s.io/v1/certificatesigningrequests/alice/approval";
    csr["status"]["conditions"] = serde_json::json!([{"type": "Denied", "status": "True"}]);
    let out = c.fails_stdin(&["replace", "--raw", path, "-f", "-"], &csr.to_string());
    assert!(
        out.contains("may not remove a condition of type \"Approved\""),
        "{out}"
    );
    csr["status"]["conditions"] = serde_json::json!([{"type": "Approved", "status": "True"}, {"type": "Denied", "status": "True"}]);
    let out = c.fails_stdin(&["replace", "--raw", path, "-f", "-"], &csr.to_string());
    assert!(
        out.contains("Approved and Denied conditions are mutually exclusive"),
        "{out}"
    );
    let path = "/apis/certificates.k8s.io/v1/certificatesigningrequests/alice/status";
    csr["status"] = serde_json::json!({"conditions": [{"type": "Approved", "status": "True"}], "certificate": "Zm9v"});
    let out = c.fails_stdin(&["replace", "--raw", path, "-f", "-"], &csr.to_string());
    assert!(
        out.contains("updates may not modify existing certificate content"),
        "{out}"
    );

    let (masters, _) = request("mallory", &["system:masters"]);
    let out = c.fails_stdin(
        &["apply", "-f", "-"],
        &csr_manifest("mallory", &masters, "kubernetes.io/kube-apiserver-client"),
    );
    assert!(
        out.contains("use of kubernetes.io/kube-apiserver-client signer with system:masters group is not allowed"),
        "{out}"
    );
    let (bob, _) = request("bob", &[]);
    c.ok_stdin(
        &["apply", "-f", "-"],
        &csr_manifest("bob", &bob, "kubernetes.io/kube-apiserver-client"),
    );
    c.ok(&["certificate", "deny", "bob"]);
    assert!(c.ok(&["get", "csr", "bob"]).contains("Denied"));
    // The requester is who creates the request, also through server-side apply.
    let (forged, _) = request("system:node:victim", &["system:nodes"]);
    let manifest = csr_manifest(
        "forged",
        &forged,
        "kubernetes.io/kube-apiserver-client-kubelet",
    )
    .replace(
        "spec:\n",
        "spec:\n  username: system:node:victim\n  groups: [system:nodes]\n",
    );
    c.ok_stdin(&["apply", "--server-side", "-f", "-"], &manifest);
    let requester = c.ok(&["get", "csr", "forged", "-o", "jsonpath={.spec.username}"]);
    assert_eq!(requester, "admin");
    // A client signer issues client certificates only: a server usage fails the request.
    let (server, _) = request("www", &[]);
    c.ok_stdin(
        &["apply", "-f", "-"],
        &csr_manifest("server", &server, "kubernetes.io/kube-apiserver-client")
            .replace("client auth", "server auth"),
    );
    c.ok(&["certificate", "approve", "server"]);
    wait_for("the server-usage request to fail", || {
        c.ok(&["get", "csr", "server"]).contains("Approved,Failed")
    });
    assert!(!c.json(&["get", "csr", "server"])["status"]["certificate"].is_string());
    let out = c.fails_stdin(
        &["apply", "-f", "-"],
        &csr_manifest("bad", "not a request", "nodomain"),
    );
    assert!(
        out.contains("spec.request") && out.contains("spec.signerName"),
        "{out}"
    );
}
