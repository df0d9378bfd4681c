//! skiff's CNI plugin driven as a container runtime drives it: the `skiff` binary called
//! through a `skiff-cni` link with the `CNI_*` environment and a configuration on stdin,
//! on network namespaces, a bridge and an nftables table of the test's own (removed at
//! the end). Checks the spec's protocol (results, error objects, VERSION, CHECK,
//! idempotent DEL, STATUS, GC) and the allocator (unique addresses, kept across calls,
//! released by DEL and GC), and masquerade towards an "outside" namespace that has no
//! route back to pods. Pod traffic within a cluster over this plugin is tested in
//! networking.rs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

/// The plugin link, namespaces, bridge, table and records of one test.
struct Fixture {
    dir: tempfile::TempDir,
    bridge: String,
    /// Each test's own: two bridges with one subnet would confuse the node's routes.
    subnet: &'static str,
    namespaces: Vec<String>,
}

impl Fixture {
    fn new(tag: &str, subnet: &'static str) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(SKIFF, dir.path().join("skiff-cni")).expect("link");
        let pid = std::process::id() % 100_000;
        Fixture {
            dir,
            bridge: format!("skc{tag}{pid}"),
            subnet,
            namespaces: Vec::new(),
        }
    }

    fn netns(&mut self, name: &str) -> PathBuf {
        let name = format!("{}-{name}", self.bridge);
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("ip netns add");
        assert!(out.status.success(), "{out:?}");
        self.namespaces.push(name.clone());
        Path::new("/var/run/netns").join(name)
    }

    fn conf(&self, extra: Value) -> Value {
        let mut conf = json!({
            "cniVersion": "1.1.0", "name": self.bridge, "type": "skiff-cni",
            "bridge": self.bridge, "subnet": self.subnet,
            "dataDir": self.dir.path().join("ipam"),
            "nftTable": format!("cni-{}", self.bridge),
        });
        if let (Some(conf), Some(extra)) = (conf.as_object_mut(), extra.as_object()) {
            conf.extend(extra.clone());
        }
        conf
    }

    /// Runs the plugin: exit status and stdout as JSON (null when empty).
    fn call(&self, command: &str, container: Option<(&str, &Path)>, conf: &Value) -> (bool, Value) {
        match container {
            Some((id, netns)) => self.call_with(command, Some(id), Some(netns), conf),
            None => self.call_with(command, None, None, conf),
        }
    }

    /// As `call`, with the container's namespace optional (DEL may come without one).
    fn call_with(
        &self,
        command: &str,
        container: Option<&str>,
        netns: Option<&Path>,
        conf: &Value,
    ) -> (bool, Value) {
        let mut cmd = Command::new(self.dir.path().join("skiff-cni"));
        cmd.env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_PATH", self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(id) = container {
            cmd.env("CNI_CONTAINERID", id).env("CNI_IFNAME", "eth0");
        }
        if let Some(netns) = netns {
            cmd.env("CNI_NETNS", netns);
        }
        let mut child = cmd.spawn().expect("plugin");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(conf.to_string().as_bytes())
            .expect("stdin");
        let out = child.wait_with_output().expect("plugin");
        let stdout: Value = if out.stdout.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
                panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
            })
        };
        (out.status.success(), stdout)
    }

    fn records(&self) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(self.dir.path().join("ipam").join(&self.bridge))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
                .collect();
        names.sort();
        names
    }

    fn link_exists(&self, name: &str) -> bool {
        Command::new("ip")
            .args(["link", "show", name])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for name in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &format!("cni-{}", self.bridge)])
            .output();
    }
}

fn host_veth(result: &Value) -> String {
    result["interfaces"][1]["name"]
        .as_str()
        .expect("host interface")
        .to_string()
}

#[test]
fn the_plugin_speaks_the_cni_protocol() {
    let mut f = Fixture::new("p", "10.238.7.0/29");
    let (a, b, c) = (f.netns("a"), f.netns("b"), f.netns("c"));
    let conf = f.conf(json!({
        "runtimeConfig": {"portMappings": [{"hostPort": 18099, "containerPort": 80, "protocol": "tcp"}]}
    }));

    let (ok, version) = f.call("VERSION", None, &json!({"cniVersion": "1.0.0"}));
    assert!(ok);
    assert!(
        version["supportedVersions"]
            .as_array()
            .is_some_and(|v| v.contains(&json!("1.1.0")) && v.contains(&json!("0.4.0"))),
        "{version}"
    );

    // ADD: the spec's result, the pod's interface in its namespace.
    let (ok, first) = f.call("ADD", Some(("ctr-a", a.as_path())), &conf);
    assert!(ok, "{first}");
    assert_eq!(first["cniVersion"], "1.1.0");
    assert_eq!(first["ips"][0]["address"], "10.238.7.2/29");
    assert_eq!(first["ips"][0]["gateway"], "10.238.7.1");
    assert_eq!(first["ips"][0]["interface"], 2);
    assert_eq!(first["interfaces"][0]["name"], json!(f.bridge));
    assert_eq!(first["interfaces"][2]["name"], "eth0");
    assert_eq!(first["interfaces"][2]["sandbox"], json!(a));
    assert_eq!(first["routes"][0]["dst"], "0.0.0.0/0");
    let inside = Command::new("ip")
        .args(["-n", f.namespaces[0].as_str(), "-4", "addr", "show", "eth0"])
        .output()
        .expect("ip");
    assert!(
        String::from_utf8_lossy(&inside.stdout).contains("10.238.7.2/29"),
        "{inside:?}"
    );
    assert!(f.link_exists(&host_veth(&first)));

    // Another pod may not take the same host port; it keeps nothing of the failed ADD.
    let (ok, taken) = f.call("ADD", Some(("ctr-b", b.as_path())), &conf);
    assert!(!ok);
    assert_eq!(taken["code"], 5, "{taken}");
    assert!(
        taken["msg"]
            .as_str()
            .is_some_and(|m| m.contains("host port")),
        "{taken}"
    );
    assert_eq!(f.records(), vec!["10.238.7.2"]);

    // Addresses are unique; an older spec version gets its result format.
    let plain = f.conf(json!({"cniVersion": "0.4.0"}));
    let (ok, second) = f.call("ADD", Some(("ctr-b", b.as_path())), &plain);
    assert!(ok, "{second}");
    assert_eq!(second["cniVersion"], "0.4.0");
    assert_eq!(second["ips"][0]["version"], "4");
    let (ok, third) = f.call("ADD", Some(("ctr-c", c.as_path())), &plain);
    assert!(ok, "{third}");
    let mut held = vec![
        first["ips"][0]["address"].clone(),
        second["ips"][0]["address"].clone(),
        third["ips"][0]["address"].clone(),
    ];
    held.dedup();
    assert_eq!(held.len(), 3, "{held:?}");

    // CHECK: fine as ADD left it, an error once the pod's link is gone.
    let mut check = conf.clone();
    check["prevResult"] = first.clone();
    let (ok, out) = f.call("CHECK", Some(("ctr-a", a.as_path())), &check);
    assert!(ok, "{out}");
    let mut check_c = plain.clone();
    check_c["prevResult"] = third.clone();
    Command::new("ip")
        .args(["link", "del", &host_veth(&third)])
        .output()
        .expect("ip");
    let (ok, out) = f.call("CHECK", Some(("ctr-c", c.as_path())), &check_c);
    assert!(!ok && out["msg"].is_string(), "{out}");

    // STATUS: ready while addresses are left; not with a full range (code 50).
    let (ok, out) = f.call("STATUS", None, &conf);
    assert!(ok, "{out}");
    let full = f.conf(json!({"rangeStart": "10.238.7.2", "rangeEnd": "10.238.7.2"}));
    let (ok, out) = f.call("STATUS", None, &full);
    assert!(!ok);
    assert_eq!(out["code"], 50, "{out}");

    // GC: whatever a container the runtime no longer has holds is released.
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([
        {"containerID": "ctr-a", "ifname": "eth0"},
        {"containerID": "ctr-c", "ifname": "eth0"},
    ]);
    let (ok, out) = f.call("GC", None, &gc);
    assert!(ok, "{out}");
    assert_eq!(f.records().len(), 2, "{:?}", f.records());
    assert!(!f.link_exists(&host_veth(&second)));

    // DEL: everything goes, twice is fine, also without the namespace.
    let (ok, out) = f.call("DEL", Some(("ctr-a", a.as_path())), &conf);
    assert!(ok && out.is_null(), "{out}");
    let (ok, out) = f.call("DEL", Some(("ctr-a", a.as_path())), &conf);
    assert!(ok, "{out}");
    assert!(!f.link_exists(&host_veth(&first)));
    let (ok, out) = f.call_with("DEL", Some("ctr-c"), None, &plain);
    assert!(ok, "DEL without CNI_NETNS: {out}");
    assert_eq!(f.records(), Vec::<String>::new());
    let nat = Command::new("nft")
        .args(["list", "table", "ip", &format!("cni-{}", f.bridge)])
        .output()
        .expect("nft");
    let nat = String::from_utf8_lossy(&nat.stdout);
    assert!(!nat.contains("elements"), "{nat}");
}

#[test]
fn bad_input_gets_the_specs_error_objects() {
    let mut f = Fixture::new("e", "10.238.8.0/29");
    let a = f.netns("a");
    let (ok, out) = f.call(
        "ADD",
        Some(("x", a.as_path())),
        &f.conf(json!({"subnet": "10.1.0.0/33"})),
    );
    assert!(!ok);
    assert_eq!(out["code"], 7, "{out}");
    assert!(
        out["msg"].as_str().is_some_and(|m| m.contains("subnet")),
        "{out}"
    );
    let (ok, out) = f.call(
        "ADD",
        Some(("x", a.as_path())),
        &f.conf(json!({"cniVersion": "2.0.0"})),
    );
    assert!(!ok);
    assert_eq!(out["code"], 1, "{out}");
    let gone = Path::new("/var/run/netns/skiff-test-no-such-namespace");
    let (ok, out) = f.call("ADD", Some(("x", gone)), &f.conf(json!({})));
    assert!(!ok);
    assert_eq!(out["code"], 3, "{out}");
    assert_eq!(
        f.records(),
        Vec::<String>::new(),
        "nothing held after failures"
    );
    let (ok, out) = f.call("NOPE", None, &f.conf(json!({})));
    assert!(!ok);
    assert_eq!(out["code"], 4, "{out}");
}

/// Runs `args` in the network namespace `ns` (a name under /var/run/netns).
fn in_netns(ns: &str, args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("ip netns exec")
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

/// A pod reaches an address outside the cluster with the node's address (the outside
/// has no route back to pods), and not once that address is declared the cluster's.
#[test]
fn traffic_leaving_the_cluster_is_masqueraded() {
    let mut f = Fixture::new("m", "10.238.9.0/29");
    let (a, b) = (f.netns("a"), f.netns("b"));
    f.netns("out");
    let outside = f.namespaces[2].clone();
    // The outside: a namespace at 10.238.99.1, reached from the node over a veth.
    let link = format!("{}o", f.bridge);
    ip(&[
        "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &outside,
    ]);
    ip(&["addr", "add", "10.238.99.2/30", "dev", &link]);
    ip(&["link", "set", &link, "up"]);
    ip(&[
        "-n",
        &outside,
        "addr",
        "add",
        "10.238.99.1/30",
        "dev",
        "eth0",
    ]);
    ip(&["-n", &outside, "link", "set", "eth0", "up"]);

    let (ok, out) = f.call("ADD", Some(("ctr-a", a.as_path())), &f.conf(json!({})));
    assert!(ok, "{out}");
    let pod_a = f.namespaces[0].clone();
    let ping = in_netns(
        &pod_a,
        &["busybox", "ping", "-c", "1", "-W", "3", "10.238.99.1"],
    );
    assert!(ping.status.success(), "masqueraded ping: {ping:?}");

    // Declared part of the cluster: not masqueraded, so the answer has no way back.
    let kept = f.conf(json!({"nonMasqueradeCIDRs": ["10.238.99.0/30"]}));
    let (ok, out) = f.call("ADD", Some(("ctr-b", b.as_path())), &kept);
    assert!(ok, "{out}");
    let pod_b = f.namespaces[1].clone();
    let ping = in_netns(
        &pod_b,
        &["busybox", "ping", "-c", "1", "-W", "2", "10.238.99.1"],
    );
    assert!(
        !ping.status.success(),
        "not masqueraded, yet answered: {ping:?}"
    );
    for (id, ns) in [("ctr-a", &a), ("ctr-b", &b)] {
        let (ok, out) = f.call("DEL", Some((id, ns.as_path())), &kept);
        assert!(ok, "{out}");
    }
}
