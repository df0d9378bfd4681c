//! End-to-end: authentication and RBAC as users meet them, with the real `skiff server`
//! and the real kubectl: static token users, roles and bindings, `kubectl auth can-i`,
//! impersonation (`--as`), escalation prevention, aggregated roles, service account
//! tokens and anonymous requests.

mod common;

use std::process::{Command, Output};

use common::{Backend, Cluster, wait_for};
use serde_json::Value;

/// kubectl without a kubeconfig, authenticating with `credentials` (`--token=...`, or
/// a client certificate and key), with `input` on stdin.
fn kubectl_as(c: &Cluster, credentials: &[String], args: &[&str], input: Option<&str>) -> Output {
    use std::process::Stdio;
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig=/dev/null")
        .arg(format!("--server={}", c.server))
        .arg(format!(
            "--certificate-authority={}",
            c.data_dir().join("pki/ca.crt").display()
        ))
        .args(credentials)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    if let Some(input) = input {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input.as_bytes()).expect("write");
    }
    child.wait_with_output().expect("kubectl")
}

/// kubectl as the holder of a bearer token.
fn as_token(c: &Cluster, token: &str, args: &[&str]) -> Output {
    kubectl_as(c, &[format!("--token={token}")], args, None)
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(out: Output, what: &str) -> String {
    assert!(!out.status.success(), "{what} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An HTTPS request without credentials: (status code, body).
fn anonymous(c: &Cluster, path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "--cacert"])
        .arg(c.data_dir().join("pki/ca.crt"))
        .arg(format!("{}{path}", c.server))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

const ROLES: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: team
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: pod-reader
  namespace: team
rules:
- apiGroups: [\"\"]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [\"\"]
  resources: [configmaps]
  verbs: [create, get]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [create, get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: bob-reads
  namespace: team
subjects:
- kind: User
  name: bob
  apiGroup: rbac.authorization.k8s.io
roleRef:
  kind: Role
  name: pod-reader
  apiGroup: rbac.authorization.k8s.io
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_governs_what_each_user_may_do() {
    let files = tempfile::tempdir().expect("tempdir");
    let tokens = files.path().join("tokens.csv");
    std::fs::write(
        &tokens,
        "bob-token,bob,1001\nops-token,olga,1002,\"ops,oncall\"\n",
    )
    .expect("token file");
    let c = Cluster::start_with(
        Backend::Embedded,
        &["--token-auth-file", tokens.to_str().expect("path")],
    )
    .await;
    let bob = |args: &[&str]| as_token(&c, "bob-token", args);

    // Who is who: the static token's user and groups; a wrong token is 401.
    let me: Value =
        serde_json::from_str(&ok(bob(&["auth", "whoami", "-o", "json"]), "whoami")).expect("JSON");
    assert_eq!(me["status"]["userInfo"]["username"], "bob");
    assert_eq!(me["status"]["userInfo"]["uid"], "1001");
    let olga: Value = serde_json::from_str(&ok(
        as_token(&c, "ops-token", &["auth", "whoami", "-o", "json"]),
        "whoami",
    ))
    .expect("JSON");
    assert_eq!(
        olga["status"]["userInfo"]["groups"],
        serde_json::json!(["ops", "oncall", "system:authenticated"])
    );
    // (kubectl words a 401 as "Unauthorized" or "the server has asked for the client to
    // provide credentials", depending on whether its discovery cache was warm.)
    let err = refused(as_token(&c, "nope", &["get", "pods"]), "a bad token");
    assert!(err.contains("You must be logged in to the server"), "{err}");

    // Anonymous requests reach health and version only.
    assert_eq!(anonymous(&c, "/healthz"), (200, "ok".to_string()));
    assert_eq!(anonymous(&c, "/version").0, 200);
    let (code, body) = anonymous(&c, "/api/v1/namespaces/default/pods");
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains(r#"pods is forbidden: User \"system:anonymous\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""#),
        "{body}"
    );
    let (code, body) = anonymous(&c, "/apis");
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains(r#"forbidden: User \"system:anonymous\" cannot get path \"/apis\""#),
        "{body}"
    );

    // Nothing granted yet: 403 with upstream's message; discovery works.
    let err = refused(bob(&["get", "pods", "-n", "team"]), "list pods");
    assert!(
        err.contains(r#"pods is forbidden: User "bob" cannot list resource "pods" in API group "" in the namespace "team""#),
        "{err}"
    );
    ok(
        bob(&["api-resources", "--cached=false", "-o", "name"]),
        "discovery",
    );

    // A namespaced Role grants exactly what it says, in its namespace only.
    c.ok_stdin(&["apply", "-f", "-"], ROLES);
    ok(bob(&["get", "pods", "-n", "team"]), "list pods in team");
    let err = refused(bob(&["get", "pods", "-n", "default"]), "pods elsewhere");
    assert!(err.contains(r#"in the namespace "default""#), "{err}");
    let err = refused(bob(&["get", "secrets", "-n", "team"]), "secrets");
    assert!(
        err.contains(r#"secrets is forbidden: User "bob" cannot list resource "secrets" in API group "" in the namespace "team""#),
        "{err}"
    );
    ok(
        bob(&[
            "create",
            "configmap",
            "notes",
            "-n",
            "team",
            "--from-literal=a=b",
        ]),
        "create a configmap",
    );
    let err = refused(
        bob(&["delete", "configmap", "notes", "-n", "team"]),
        "delete",
    );
    assert!(
        err.contains(r#"configmaps "notes" is forbidden: User "bob" cannot delete resource "configmaps" in API group "" in the namespace "team""#),
        "{err}"
    );
    let err = refused(bob(&["get", "nodes"]), "nodes");
    assert!(err.contains("at the cluster scope"), "{err}");

    // kubectl auth can-i, for oneself and (as the admin) for others.
    assert_eq!(
        ok(
            bob(&["auth", "can-i", "list", "pods", "-n", "team"]),
            "can-i"
        )
        .trim(),
        "yes"
    );
    let out = bob(&["auth", "can-i", "delete", "pods", "-n", "team"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no");
    assert_eq!(out.status.code(), Some(1));
    let list = ok(
        bob(&["auth", "can-i", "--list", "-n", "team"]),
        "can-i --list",
    );
    let pods = list
        .lines()
        .find(|l| l.starts_with("pods "))
        .unwrap_or_else(|| panic!("no pods line in:\n{list}"));
    assert!(pods.ends_with("[get list watch]"), "{list}");
    assert!(
        list.contains("selfsubjectaccessreviews.authorization.k8s.io"),
        "{list}"
    );
    assert_eq!(
        c.ok(&["auth", "can-i", "get", "pods", "-n", "team", "--as", "bob"])
            .trim(),
        "yes"
    );
    let out = c.kubectl(&[
        "auth", "can-i", "get", "pods", "-n", "default", "--as", "bob",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no");

    // Impersonation: the admin may act as bob; bob may not act as anyone.
    let err = c.fails(&["get", "secrets", "-n", "team", "--as", "bob"]);
    assert!(
        err.contains(r#"User "bob" cannot list resource "secrets""#),
        "{err}"
    );
    let err = refused(
        bob(&["get", "pods", "-n", "team", "--as", "olga"]),
        "impersonate",
    );
    assert!(
        err.contains(r#"users "olga" is forbidden: User "bob" cannot impersonate resource "users" in API group "" at the cluster scope"#),
        "{err}"
    );

    // Escalation: bob may create roles and bindings, but only grant what he holds.
    let role = |name: &str, resource: &str| {
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: {name}\n  namespace: team\nrules:\n- apiGroups: [\"\"]\n  resources: [{resource}]\n  verbs: [get, list]\n"
        )
    };
    let as_bob_stdin = |args: &[&str], input: &str| {
        kubectl_as(&c, &["--token=bob-token".to_string()], args, Some(input))
    };
    let err = refused(
        as_bob_stdin(&["create", "-f", "-"], &role("secret-reader", "secrets")),
        "an escalating role",
    );
    assert!(
        err.contains(r#"roles.rbac.authorization.k8s.io "secret-reader" is forbidden: user "bob" (groups=["system:authenticated"]) is attempting to grant RBAC permissions not currently held:"#),
        "{err}"
    );
    assert!(
        err.contains(r#"{APIGroups:[""], Resources:["secrets"], Verbs:["get" "list"]}"#),
        "{err}"
    );
    ok(
        as_bob_stdin(&["create", "-f", "-"], &role("pod-peeker", "pods")),
        "a role within bob's rights",
    );
    let err = refused(
        bob(&[
            "create",
            "rolebinding",
            "bob-edits",
            "-n",
            "team",
            "--clusterrole=edit",
            "--user=bob",
        ]),
        "binding edit",
    );
    assert!(
        err.contains("is attempting to grant RBAC permissions not currently held"),
        "{err}"
    );
    ok(
        bob(&[
            "create",
            "rolebinding",
            "carol-peeks",
            "-n",
            "team",
            "--role=pod-peeker",
            "--user=carol",
        ]),
        "binding a role bob holds",
    );
    assert_eq!(
        c.ok(&[
            "auth", "can-i", "list", "pods", "-n", "team", "--as", "carol"
        ])
        .trim(),
        "yes"
    );
    // A binding's role never changes.
    let err = c.fails(&[
        "patch",
        "rolebinding",
        "carol-peeks",
        "-n",
        "team",
        "--type=merge",
        "-p",
        r#"{"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"Role","name":"pod-reader"}}"#,
    ]);
    assert!(err.contains("cannot change roleRef"), "{err}");

    // ClusterRole aggregation: a role labelled aggregate-to-view joins view (and so edit
    // and admin), and binding view gives its rules.
    c.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: widget-viewer
  labels:
    rbac.authorization.k8s.io/aggregate-to-view: \"true\"
rules:
- apiGroups: [example.com]
  resources: [widgets]
  verbs: [get, list]
",
    );
    for aggregated in ["view", "edit", "admin"] {
        wait_for(&format!("{aggregated} to aggregate widgets"), || {
            c.ok(&["get", "clusterrole", aggregated, "-o", "json"])
                .contains("widgets")
        });
    }
    c.ok(&[
        "create",
        "rolebinding",
        "olga-views",
        "-n",
        "team",
        "--clusterrole=view",
        "--group=ops",
    ]);
    let olga = |args: &[&str]| as_token(&c, "ops-token", args);
    ok(
        olga(&["get", "configmaps", "-n", "team"]),
        "view configmaps",
    );
    let err = refused(
        olga(&["get", "secrets", "-n", "team"]),
        "view has no secrets",
    );
    assert!(
        err.contains("Forbidden") || err.contains("forbidden"),
        "{err}"
    );

    // A SubjectAccessReview, as a webhook or another component would ask.
    let review = files.path().join("sar.json");
    std::fs::write(
        &review,
        serde_json::json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": "bob", "resourceAttributes": {"namespace": "team", "verb": "watch", "resource": "pods"}},
        })
        .to_string(),
    )
    .expect("write");
    let answer: Value = serde_json::from_str(&c.ok(&[
        "create",
        "--raw",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        "-f",
        review.to_str().expect("path"),
    ]))
    .expect("JSON");
    assert_eq!(answer["status"]["allowed"], true, "{answer}");

    // A service account's token is the account: nothing until a binding grants it.
    c.ok(&["create", "serviceaccount", "robot", "-n", "team"]);
    let token = c
        .ok(&["create", "token", "robot", "-n", "team"])
        .trim()
        .to_string();
    let err = refused(
        as_token(&c, &token, &["get", "pods", "-n", "team"]),
        "robot",
    );
    assert!(
        err.contains(r#"User "system:serviceaccount:team:robot" cannot list resource "pods""#),
        "{err}"
    );
    c.ok(&[
        "create",
        "rolebinding",
        "robot-reads",
        "-n",
        "team",
        "--role=pod-reader",
        "--serviceaccount=team:robot",
    ]);
    ok(
        as_token(&c, &token, &["get", "pods", "-n", "team"]),
        "robot lists pods",
    );

    // Taking the binding away takes the permission away.
    c.ok(&["delete", "rolebinding", "bob-reads", "-n", "team"]);
    wait_for("bob to lose pods", || {
        !bob(&["get", "pods", "-n", "team"]).status.success()
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_requests_can_be_refused() {
    let c = Cluster::start_with(Backend::Embedded, &["--anonymous-auth=false"]).await;
    let (code, body) = anonymous(&c, "/healthz");
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("Unauthorized"), "{body}");
    // Credentials still work.
    c.ok(&["get", "namespaces"]);
}

/// A client certificate from the cluster's CA, made with openssl as an administrator
/// would: (certificate, key) paths.
fn certificate(c: &Cluster, dir: &std::path::Path, cn: &str, org: &str) -> (String, String) {
    let pki = c.data_dir().join("pki");
    let key = dir.join(format!("{cn}.key").replace(':', "_"));
    let csr = dir.join("req.csr");
    let crt = dir.join(format!("{cn}.crt").replace(':', "_"));
    let ext = dir.join("ext.cnf");
    std::fs::write(&ext, "extendedKeyUsage=clientAuth\n").expect("ext");
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let p = |path: &std::path::Path| path.to_str().expect("path").to_string();
    run(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        &p(&key),
    ]);
    run(&[
        "req",
        "-new",
        "-key",
        &p(&key),
        "-subj",
        &format!("/O={org}/CN={cn}"),
        "-out",
        &p(&csr),
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        &p(&csr),
        "-CA",
        &p(&pki.join("ca.crt")),
        "-CAkey",
        &p(&pki.join("ca.key")),
        "-CAcreateserial",
        "-CAserial",
        &p(&dir.join("ca.srl")),
        "-days",
        "1",
        "-extfile",
        &p(&ext),
        "-out",
        &p(&crt),
    ]);
    (p(&crt), p(&key))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_reaches_only_what_its_pods_use() {
    let c = Cluster::start(Backend::Embedded).await;
    let files = tempfile::tempdir().expect("tempdir");
    let node_credentials = |node: &str| {
        let (crt, key) = certificate(
            &c,
            files.path(),
            &format!("system:node:{node}"),
            "system:nodes",
        );
        vec![
            format!("--client-certificate={crt}"),
            format!("--client-key={key}"),
        ]
    };
    let as_node = |node: &str, args: &[&str]| kubectl_as(&c, &node_credentials(node), args, None);
    c.fake_nodes(2);
    let nodes = c.ok(&["get", "nodes", "-o", "jsonpath={.items[*].metadata.name}"]);
    let nodes: Vec<&str> = nodes.split_whitespace().collect();
    let (n1, n2) = (nodes[0], nodes[1]);
    c.ok(&["create", "secret", "generic", "mine", "--from-literal=k=v"]);
    c.ok(&[
        "create",
        "secret",
        "generic",
        "theirs",
        "--from-literal=k=v",
    ]);
    c.ok(&["create", "configmap", "settings", "--from-literal=k=v"]);
    let pod = |name: &str, node: &str, secret: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  nodeName: {node}\n  containers:\n  - name: c\n    image: busybox\n    envFrom:\n    - configMapRef:\n        name: settings\n  volumes:\n  - name: s\n    secret:\n      secretName: {secret}\n"
        )
    };
    c.ok_stdin(&["create", "-f", "-"], &pod("p1", n1, "mine"));
    c.ok_stdin(&["create", "-f", "-"], &pod("p2", n2, "theirs"));

    // Secrets and configmaps of its own pods only, one by one.
    wait_for("n1 to read its pod's secret", || {
        as_node(n1, &["get", "secret", "mine"]).status.success()
    });
    ok(
        as_node(n1, &["get", "configmap", "settings"]),
        "configmap of its pod",
    );
    let err = refused(
        as_node(n1, &["get", "secret", "theirs"]),
        "another node's secret",
    );
    assert!(
        err.contains(&format!(
            r#"secrets "theirs" is forbidden: User "system:node:{n1}" cannot get resource "secrets" in API group "" in the namespace "default": no relationship found between node '{n1}' and this object"#
        )),
        "{err}"
    );
    let err = refused(as_node(n1, &["get", "secrets"]), "listing secrets");
    assert!(err.contains("cannot list resource \"secrets\""), "{err}");
    ok(as_node(n1, &["get", "pods"]), "pods are readable");

    // Its own Node and Lease; nobody else's.
    ok(
        as_node(n1, &["label", "node", n1, "owned=yes"]),
        "label itself",
    );
    let err = refused(
        as_node(n1, &["label", "node", n2, "owned=yes"]),
        "label another",
    );
    assert!(
        err.contains(&format!(
            r#"node "{n1}" is not allowed to modify node "{n2}""#
        )),
        "{err}"
    );
    let err = refused(
        as_node(n1, &["get", "lease", n2, "-n", "kube-node-lease"]),
        "another node's lease",
    );
    assert!(
        err.contains("can only access node lease with the same name"),
        "{err}"
    );

    // Pods: status and deletion only of its own, and only mirror pods created.
    let err = refused(
        as_node(n1, &["delete", "pod", "p2", "--grace-period=0"]),
        "delete",
    );
    assert!(
        err.contains(&format!(
            r#"node "{n1}" can only delete pods with spec.nodeName set to itself"#
        )),
        "{err}"
    );
    let err = refused(
        as_node(n1, &["annotate", "pod", "p1", "touched=yes"]),
        "change a pod's spec",
    );
    assert!(err.contains(r#"cannot patch resource "pods""#), "{err}");
    let created = kubectl_as(
        &c,
        &node_credentials(n1),
        &["create", "-f", "-"],
        Some(&pod("p3", n1, "mine")),
    );
    let err = refused(created, "a non-mirror pod");
    assert!(err.contains("can only create mirror pods"), "{err}");
    ok(
        as_node(n1, &["delete", "pod", "p1", "--grace-period=0", "--force"]),
        "delete its own pod",
    );
    // With the pod gone, so is the way to its secret.
    wait_for("n1 to lose the secret", || {
        !as_node(n1, &["get", "secret", "mine"]).status.success()
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_security_levels_follow_namespace_labels() {
    let c = Cluster::start(Backend::Embedded).await;
    c.ok(&["create", "namespace", "locked"]);
    c.ok(&[
        "label",
        "namespace",
        "locked",
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
    ]);
    let privileged = "apiVersion: v1
kind: Pod
metadata:
  name: root
  namespace: locked
spec:
  containers:
  - name: c
    image: busybox
    securityContext:
      privileged: true
";
    let out = c.kubectl_with(&["create", "-f", "-"], &[], Some(privileged));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"pods "root" is forbidden: violates PodSecurity "restricted:latest": privileged (container "c" must not set securityContext.privileged=true), allowPrivilegeEscalation != false (container "c" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "c" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or container "c" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container "c" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#),
        "{err}"
    );
    // A pod that says everything restricted asks for is admitted.
    c.ok_stdin(
        &["create", "-f", "-"],
        "apiVersion: v1
kind: Pod
metadata:
  name: careful
  namespace: locked
spec:
  securityContext:
    runAsNonRoot: true
    runAsUser: 1000
    seccompProfile: {type: RuntimeDefault}
  containers:
  - name: c
    image: busybox
    securityContext:
      allowPrivilegeEscalation: false
      capabilities: {drop: [ALL]}
",
    );
    // Workloads are never refused, only warned about.
    let out = c.kubectl_with(
        &[
            "create",
            "deployment",
            "web",
            "-n",
            "locked",
            "--image=busybox",
        ],
        &[],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let warning = String::from_utf8_lossy(&out.stderr);
    assert!(
        warning.contains(r#"Warning: would violate PodSecurity "restricted:latest": allowPrivilegeEscalation != false"#),
        "{warning}"
    );
    // Baseline allows an unprivileged pod but not the host's network.
    c.ok(&["create", "namespace", "base"]);
    c.ok(&[
        "label",
        "namespace",
        "base",
        "pod-security.kubernetes.io/enforce=baseline",
    ]);
    c.ok(&["run", "plain", "-n", "base", "--image=busybox"]);
    let err = c.fails(&[
        "run",
        "hosty",
        "-n",
        "base",
        "--image=busybox",
        "--overrides",
        r#"{"spec":{"hostNetwork":true}}"#,
    ]);
    assert!(
        err.contains(
            r#"violates PodSecurity "baseline:latest": host namespaces (hostNetwork=true)"#
        ),
        "{err}"
    );
    // Bad label values are refused with upstream's message.
    let err = c.fails(&[
        "label",
        "namespace",
        "base",
        "--overwrite",
        "pod-security.kubernetes.io/enforce=strict",
    ]);
    assert!(
        err.contains("Invalid value: \"strict\": must be one of privileged, baseline, restricted"),
        "{err}"
    );
}

/// Whether any file under `dir` contains `needle`.
fn files_contain(dir: &std::path::Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|entry| {
            let path = entry.path();
            if path.is_dir() {
                return files_contain(&path, needle);
            }
            std::fs::read(&path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_encrypted_at_rest() {
    let files = tempfile::tempdir().expect("tempdir");
    let config = files.path().join("encryption.yaml");
    std::fs::write(
        &config,
        "apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
- resources: [secrets]
  providers:
  - aesgcm:
      keys:
      - name: key1
        secret: c2tpZmYtdGVzdC1rZXktMzItYnl0ZXMtbG9uZy0xMjM=
  - identity: {}
",
    )
    .expect("config");
    let c = Cluster::start_with(
        Backend::Embedded,
        &[
            "--encryption-provider-config",
            config.to_str().expect("path"),
        ],
    )
    .await;
    c.ok(&[
        "create",
        "secret",
        "generic",
        "vault",
        "--from-literal=password=correct-horse-battery",
    ]);
    c.ok(&[
        "create",
        "configmap",
        "open",
        "--from-literal=note=plain-as-day-marker",
    ]);
    // Clients see the secret as it was written.
    let password = c.ok(&["get", "secret", "vault", "-o", "jsonpath={.data.password}"]);
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode("correct-horse-battery");
    assert_eq!(password, encoded);
    // On disk: the configmap in the clear, the secret only sealed.
    let db = c.data_dir().join("db");
    assert!(
        files_contain(&db, b"plain-as-day-marker"),
        "the control value is on disk"
    );
    assert!(
        files_contain(&db, b"k8s:enc:aesgcm:v1:key1:"),
        "no sealed value on disk"
    );
    assert!(
        !files_contain(&db, encoded.as_bytes()),
        "the secret is on disk in the clear"
    );
    assert!(!files_contain(&db, b"correct-horse-battery"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_records_who_did_what() {
    let files = tempfile::tempdir().expect("tempdir");
    let log = files.path().join("audit.log");
    let policy = files.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: audit.k8s.io/v1
kind: Policy
rules:
- level: None
  nonResourceURLs: [\"*\"]
- level: Request
  resources:
  - group: \"\"
    resources: [configmaps]
- level: Metadata
",
    )
    .expect("policy");
    let c = Cluster::start_with(
        Backend::Embedded,
        &[
            "--audit-log-path",
            log.to_str().expect("path"),
            "--audit-policy-file",
            policy.to_str().expect("path"),
        ],
    )
    .await;
    c.ok(&["create", "configmap", "audited", "--from-literal=k=v"]);
    // PodSecurity's audit level: the violation goes to the audit event, not the user.
    c.ok(&["create", "namespace", "watched"]);
    c.ok(&[
        "label",
        "namespace",
        "watched",
        "pod-security.kubernetes.io/audit=restricted",
    ]);
    c.ok_stdin(
        &["apply", "-n", "watched", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata: {name: loose}\nspec:\n  containers: [{name: c, image: busybox}]\n",
    );
    let (code, _) = anonymous(&c, "/api/v1/namespaces/default/secrets");
    assert_eq!(code, 403);
    let events = || -> Vec<Value> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    wait_for("the create and the refusal in the audit log", || {
        let all = events();
        all.iter()
            .any(|e| e["verb"] == "create" && e["objectRef"]["name"] == "audited")
            && all.iter().any(|e| e["responseStatus"]["code"] == 403)
    });
    let all = events();
    let create = all
        .iter()
        .find(|e| e["verb"] == "create" && e["objectRef"]["name"] == "audited")
        .expect("create event");
    assert_eq!(create["kind"], "Event");
    assert_eq!(create["apiVersion"], "audit.k8s.io/v1");
    assert_eq!(create["level"], "Request");
    assert_eq!(create["stage"], "ResponseComplete");
    assert_eq!(create["user"]["username"], "admin");
    assert_eq!(create["objectRef"]["resource"], "configmaps");
    assert_eq!(create["objectRef"]["namespace"], "default");
    assert_eq!(create["responseStatus"]["code"], 201);
    assert_eq!(create["requestObject"]["data"]["k"], "v", "{create}");
    assert!(create["sourceIPs"][0].as_str().is_some(), "{create}");
    let refused = all
        .iter()
        .find(|e| e["responseStatus"]["code"] == 403)
        .expect("refusal");
    assert_eq!(refused["user"]["username"], "system:anonymous");
    assert_eq!(refused["level"], "Metadata");
    assert!(refused.get("requestObject").is_none());
    let loose = all
        .iter()
        .find(|e| {
            e["verb"] == "create"
                && e["objectRef"]["resource"] == "pods"
                && e["objectRef"]["namespace"] == "watched"
        })
        .expect("the pod's create");
    let violations = loose["annotations"]["pod-security.kubernetes.io/audit-violations"]
        .as_str()
        .unwrap_or_default();
    assert!(
        violations.starts_with(
            "would violate PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false"
        ),
        "{loose}"
    );
    assert_eq!(
        loose["annotations"]["pod-security.kubernetes.io/enforce-policy"],
        "privileged:latest"
    );
    // Non-resource requests were set to None.
    assert!(!all.iter().any(|e| {
        e["requestURI"]
            .as_str()
            .is_some_and(|u| u.starts_with("/api?") || u == "/api")
    }));
}
