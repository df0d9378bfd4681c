//! Services end to end on a `skiff server` cluster with its service proxy: pods on a
//! bridge network the test owns, a Deployment behind a ClusterIP and a NodePort Service,
//! traffic from a client pod with busybox `wget` and from the host. Requests spread over
//! every ready pod and never reach an unready one; session affinity sticks; a Service
//! without endpoints refuses at once; its rules go with it; they stay while the proxy
//! is down. Every rule is in an nftables table of the test's own, removed at the end.
//! Pods are connected by skiff's own CNI plugin (the network the node writes itself) or
//! by Debian's plugins: the same Service and hostPort checks run on both.

mod common;
mod cri;
mod node;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::time::Duration;

use common::{Backend, Cluster, wait_for};
use cri::*;
use node::*;

const APPS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: example.com/busybox:1
        command: [sh, -c, "mkdir -p /www && hostname > /www/index.html && echo ok > /www/ready && exec httpd -f -p 8080 -h /www"]
        ports: [{name: http, containerPort: 8080}]
        readinessProbe:
          httpGet: {path: /ready, port: http}
          periodSeconds: 1
          failureThreshold: 1
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web-np}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: example.com/busybox:1, command: [sleep, "3600"]}
"#;

/// A pod published on a host port (the CNI portmap plugin's DNAT).
fn host_port_pod(port: u16) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: hostport}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: example.com/busybox:1
    command: [sh, -c, "mkdir -p /www && echo from-the-host-port > /www/index.html && exec httpd -f -p 8080 -h /www"]
    ports: [{{containerPort: 8080, hostPort: {port}}}]
"#
    )
}

/// Removes the proxy's rules (`mode`: nftables, the test's own table; iptables, the
/// KUBE- chains) once the cluster is gone, with `skiff proxy --cleanup`.
struct Table {
    name: String,
    mode: &'static str,
}

impl Drop for Table {
    fn drop(&mut self) {
        let out = std::process::Command::new(SKIFF)
            .args(["proxy", "--cleanup", "--proxy-mode", self.mode])
            .args(["--proxy-nft-table", &self.name])
            .output()
            .expect("skiff proxy --cleanup");
        assert!(out.status.success() || std::thread::panicking(), "{out:?}");
        if self.mode == "iptables" && !std::thread::panicking() {
            assert!(
                !rules("iptables", &self.name).contains("KUBE-"),
                "cleanup left chains"
            );
        }
    }
}

/// The proxy's rules as the kernel has them.
fn rules(mode: &str, table: &str) -> String {
    let out = match mode {
        "iptables" => std::process::Command::new("sh")
            .args(["-c", "iptables-save -t nat; iptables-save -t filter"])
            .output(),
        _ => std::process::Command::new("nft")
            .args(["list", "table", "ip", table])
            .output(),
    };
    String::from_utf8_lossy(&out.expect("listing rules").stdout).into_owned()
}

/// `count` requests to `url` from the client pod, one `wget` each: the bodies, or the
/// first failure's message.
fn fetch(c: &Cluster, url: &str, count: usize) -> Result<Vec<String>, String> {
    let script =
        format!("for i in $(seq {count}); do timeout 5 wget -q -O - {url} || exit 1; done");
    let out = c.kubectl(&["exec", "client", "--", "sh", "-c", &script]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() {
        Ok(stdout.lines().map(str::to_string).collect())
    } else {
        Err(format!(
            "{}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A TCP port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The client pod's address.
fn client_ip(c: &Cluster) -> String {
    text(
        c,
        &["get", "pod", "client", "-o", "jsonpath={.status.podIP}"],
    )
}

/// The bridge's address: the first of the pod's /24.
fn gateway(pod_ip: &str) -> String {
    let mut octets: Vec<&str> = pod_ip.split('.').collect();
    octets.truncate(3);
    format!("{}.1", octets.join("."))
}

/// One HTTP/1.0 GET from the host: the body.
fn host_get(addr: &str) -> std::io::Result<String> {
    let mut tcp = std::net::TcpStream::connect_timeout(
        &addr.parse().map_err(std::io::Error::other)?,
        Duration::from_secs(3),
    )?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(tcp, "GET / HTTP/1.0\r\nHost: web\r\n\r\n")?;
    let mut response = String::new();
    tcp.read_to_string(&mut response)?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.trim().to_string())
        .unwrap_or_default())
}

fn web_pods(c: &Cluster) -> Vec<String> {
    text(
        c,
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
    )
    .split_whitespace()
    .map(str::to_string)
    .collect()
}

/// A `skiff server` cluster whose node runs pods on a bridge of the test's own, with
/// the service proxy writing to a table of the test's own. Fields drop in order: the
/// cluster, then what it may have left.
struct NetCluster {
    c: Cluster,
    table: String,
    mode: &'static str,
    _leftovers: Leftovers,
    dir: tempfile::TempDir,
    _table: Table,
    cni: Cni,
    _network: Option<Network>,
    skiff_net: Option<SkiffNet>,
    _cgroups: CgroupGuard,
}

/// The pod network's plugins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cni {
    /// skiff's own, in the network `skiff server` writes itself (`--default-cni skiff`).
    Skiff,
    /// Debian's bridge, host-local and portmap, in a conflist the test writes.
    Debian,
}

/// What skiff's plugin makes for a network, removed at the end: the bridge, the NAT
/// table and the address records.
struct SkiffNet {
    bridge: String,
}

impl SkiffNet {
    fn table(&self) -> String {
        format!("cni-{}", self.bridge)
    }

    fn records(&self) -> std::path::PathBuf {
        std::path::Path::new("/var/lib/cni/skiff").join(&self.bridge)
    }

    /// The addresses the allocator has handed out and not taken back.
    fn held(&self) -> Vec<String> {
        std::fs::read_dir(self.records())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.parse::<std::net::Ipv4Addr>().is_ok())
            .collect()
    }
}

impl Drop for SkiffNet {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "ip", &self.table()])
            .output();
        let _ = std::fs::remove_dir_all(self.records());
    }
}

impl NetCluster {
    /// A cluster whose proxy programs `mode` (nftables, iptables) and whose pods are
    /// connected by `cni`'s plugins.
    async fn start(tag: u32, mode: &'static str, cni: Cni, extra: &[&str]) -> NetCluster {
        let pid = std::process::id() + tag;
        let cgroups = CgroupGuard(format!("/skiff-net-test-{pid}"));
        let subnet = format!("10.237.{}.0/24", 10 + pid % 200);
        let bridge = format!("skn{}", pid % 100_000);
        let dir = tempfile::tempdir().expect("tempdir");
        let (network, skiff_net, cni_flags) = match cni {
            // With portmap, as the default network has it, for hostPort.
            Cni::Debian => {
                let network = Network::with_plugins(
                    &bridge,
                    &subnet,
                    &[
                        json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}),
                    ],
                );
                let flags = vec![
                    "--cni-conf-dir".to_string(),
                    network.conf_dir().display().to_string(),
                ];
                (Some(network), None, flags)
            }
            // An empty configuration directory: the agent links the plugin and the
            // kubelet writes the network over the node's pod CIDR (the cluster CIDR).
            Cni::Skiff => {
                let flags = [
                    ("--cni-conf-dir", dir.path().join("net.d")),
                    ("--cni-bin-dir", dir.path().join("cni-bin")),
                    // Debian's loopback plugin, which the runtime uses for `lo`.
                    ("--cni-bin-dir", "/usr/lib/cni".into()),
                    ("--cni-bridge", bridge.clone().into()),
                    ("--default-cni", "skiff".into()),
                ]
                .into_iter()
                .flat_map(|(flag, value)| [flag.to_string(), value.display().to_string()])
                .collect();
                (None, Some(SkiffNet { bridge }), flags)
            }
        };
        import_busybox(dir.path(), &dir.path().join("runtime"));
        let node = format!("net-{pid}");
        let table = format!("skiff-test-{pid}");
        let mut flags: Vec<String> = [
            ("--node-name", node.clone()),
            ("--node-ip", "127.0.0.1".into()),
            (
                "--cri-socket",
                dir.path().join("cri.sock").display().to_string(),
            ),
            (
                "--runtime-data-dir",
                dir.path().join("runtime").display().to_string(),
            ),
            (
                "--pod-log-dir",
                dir.path().join("logs").display().to_string(),
            ),
            ("--cgroup-parent", format!("/skiff-net-test-{pid}")),
            ("--kubelet-port", "0".into()),
            ("--eviction-hard", "memory.available<1Mi".into()),
            // The proxy masquerades what comes from outside the pods' network.
            ("--cluster-cidr", subnet.clone()),
            // Not another test cluster's addresses.
            ("--service-cidr", format!("10.{}.0.0/16", 100 + pid % 50)),
            ("--proxy-nft-table", table.clone()),
            ("--proxy-mode", mode.into()),
            // Not the host's port 53.
            ("--dns-port", "0".into()),
        ]
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_string(), value])
        .collect();
        flags.extend(cni_flags);
        flags.extend(extra.iter().map(|f| f.to_string()));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let leftovers = Leftovers {
            dir: dir.path().to_path_buf(),
            data: dir.path().join("runtime"),
            also: Vec::new(),
        };
        let _table = Table {
            name: table.clone(),
            mode,
        };
        let c = Cluster::start_all_in_one(Backend::Embedded, &flags).await;
        let mut leftovers = leftovers;
        leftovers.also.push(c.data_dir().to_path_buf());
        wait_node_ready(&c, &node);
        if cni == Cni::Skiff {
            let link = dir.path().join("cni-bin/skiff-cni");
            assert!(
                std::fs::read_link(&link).is_ok(),
                "no plugin link {}",
                link.display()
            );
            let conflist = dir.path().join("net.d/10-skiff.conflist");
            wait_for("the kubelet to write the pod network", || {
                std::fs::read_to_string(&conflist).is_ok_and(|c| c.contains("\"skiff-cni\""))
            });
        }
        NetCluster {
            c,
            table,
            mode,
            _leftovers: leftovers,
            dir,
            _table,
            cni,
            _network: network,
            skiff_net,
            _cgroups: cgroups,
        }
    }

    /// Deletes every pod and waits for the runtime to have no sandbox left; skiff's
    /// plugin has then taken back every address and NAT element.
    async fn delete_pods(&self) {
        self.c.ok(&["delete", "pod", "--all", "--timeout=60s"]);
        no_sandboxes_left(&self.dir.path().join("cri.sock"), || self.c.log()).await;
        if let Some(net) = &self.skiff_net {
            assert_eq!(net.held(), Vec::<String>::new(), "addresses not released");
            let nat = rules("nftables", &net.table());
            assert!(
                !nat.contains("elements"),
                "NAT elements left after every pod went:\n{nat}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_reach_ready_pods_through_the_proxy() {
    services(NetCluster::start(0, "nftables", Cni::Skiff, &[]).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_reach_ready_pods_through_iptables() {
    services(NetCluster::start(2, "iptables", Cni::Debian, &[]).await).await;
}

async fn services(mut net: NetCluster) {
    let (mode, table, cni) = (net.mode, net.table.clone(), net.cni);
    let c = &mut net.c;
    c.ok_stdin(&["apply", "-f", "-"], APPS);
    c.ok(&["rollout", "status", "deployment/web", "--timeout=120s"]);
    wait_for("the client pod to run", || phase(c, "client") == "Running");
    let pods: BTreeSet<String> = web_pods(c).into_iter().collect();
    assert_eq!(pods.len(), 2, "{pods:?}");
    let cluster_ip = text(
        c,
        &["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"],
    );
    let url = format!("http://{cluster_ip}/");

    // Pod to pod by address, without the proxy.
    let pod_ip = text(
        c,
        &[
            "get",
            "pod",
            pods.first().expect("pod"),
            "-o",
            "jsonpath={.status.podIP}",
        ],
    );
    let direct = fetch(c, &format!("http://{pod_ip}:8080/"), 1).expect("pod to pod");
    assert_eq!(direct, vec![pods.first().cloned().unwrap_or_default()]);

    // Pod to Service: every ready pod answers, nothing else does.
    wait_for("the Service to answer", || fetch(c, &url, 1).is_ok());
    let answers: BTreeSet<String> = fetch(c, &url, 30)
        .expect("requests through the Service")
        .into_iter()
        .collect();
    assert_eq!(answers, pods, "30 requests should reach both pods");

    // From the host through the NodePort, on localhost.
    let node_port = text(
        c,
        &[
            "get",
            "svc",
            "web-np",
            "-o",
            "jsonpath={.spec.ports[0].nodePort}",
        ],
    );
    let local = format!("127.0.0.1:{node_port}");
    wait_for("the NodePort to answer on localhost", || {
        host_get(&local).is_ok()
    });
    let body = host_get(&local).expect("NodePort");
    assert!(pods.contains(&body), "{body:?} from {local}");

    // hostPort: the node's port reaches the pod (its own address; skiff's plugin also
    // takes localhost, Debian's portmap does not); from a pod of the same bridge too.
    let port = free_port();
    c.ok_stdin(&["apply", "-f", "-"], &host_port_pod(port));
    wait_for("the hostPort pod to run", || {
        phase(c, "hostport") == "Running"
    });
    let gateway = gateway(&client_ip(c));
    let mut addrs = vec![format!("{gateway}:{port}")];
    if cni == Cni::Skiff {
        addrs.push(format!("127.0.0.1:{port}"));
    }
    for addr in &addrs {
        wait_for("the hostPort to answer", || {
            host_get(addr).is_ok_and(|b| b == "from-the-host-port")
        });
    }
    let through = fetch(c, &format!("http://{gateway}:{port}/"), 1).expect("pod to hostPort");
    assert_eq!(through, vec!["from-the-host-port".to_string()]);

    // An unready pod gets nothing.
    let unready = pods.first().cloned().unwrap_or_default();
    let ready = pods.last().cloned().unwrap_or_default();
    c.ok(&["exec", &unready, "--", "sh", "-c", "rm /www/ready"]);
    wait_for("the pod to be unready", || {
        text(
            c,
            &[
                "get",
                "pod",
                &unready,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ],
        ) == "False"
    });
    wait_for("only the ready pod to answer", || {
        fetch(c, &url, 10).is_ok_and(|a| a.iter().all(|b| *b == ready))
    });
    let answers = fetch(c, &url, 20).expect("requests");
    assert!(answers.iter().all(|b| *b == ready), "{answers:?}");
    c.ok(&["exec", &unready, "--", "sh", "-c", "echo ok > /www/ready"]);

    // Session affinity: one client, one pod.
    c.ok(&[
        "patch",
        "svc",
        "web",
        "-p",
        r#"{"spec":{"sessionAffinity":"ClientIP"}}"#,
    ]);
    wait_for("the affinity rules and both endpoints", || {
        let now = rules(mode, &table);
        now.matches("update @affinity-").count() >= 2 || now.matches(" --set ").count() >= 2
    });
    let answers: BTreeSet<String> = fetch(c, &url, 20)
        .expect("requests with affinity")
        .into_iter()
        .collect();
    assert_eq!(
        answers.len(),
        1,
        "affinity should keep one pod: {answers:?}"
    );

    // No endpoints: refused at once, not a time-out.
    c.ok(&["scale", "deployment/web", "--replicas=0"]);
    wait_for("the Service to refuse", || {
        fetch(c, &url, 1).is_err_and(|e| e.contains("refused"))
    });
    c.ok(&["scale", "deployment/web", "--replicas=2"]);
    c.ok(&["rollout", "status", "deployment/web", "--timeout=120s"]);
    wait_for("the Service to answer again", || fetch(c, &url, 1).is_ok());

    // The proxy's rules outlive it: traffic flows while the server is down.
    c.stop();
    assert!(
        rules(mode, &table).contains(&cluster_ip),
        "rules gone with the proxy"
    );
    let body = host_get(&local).expect("NodePort with the proxy down");
    assert!(!body.is_empty());
    c.restart();
    wait_for("the Service after a restart", || fetch(c, &url, 1).is_ok());

    // A deleted Service takes its rules with it.
    let np_rules = match mode {
        "iptables" => format!("--dport {node_port} "),
        _ => format!("tcp . {node_port}"),
    };
    assert!(rules(mode, &table).contains(&np_rules));
    c.ok(&["delete", "svc", "web-np"]);
    wait_for("the NodePort's rules to go", || {
        !rules(mode, &table).contains(&np_rules)
    });
    assert!(host_get(&local).is_err(), "the NodePort still answers");
    c.ok(&["delete", "deployment", "web"]);
    net.delete_pods().await;
}

const NAMES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec:
  type: ExternalName
  externalName: outside.example
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, labels: {app: db}}
spec:
  hostname: db-0
  subdomain: db
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: example.com/busybox:1
    command: [sleep, "3600"]
    ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: example.com/busybox:1, command: [sleep, "3600"]}
"#;

/// A resolver standing in for the host's upstream: every A question gets 192.0.2.99,
/// anything else an empty answer. Returns its port; runs until the test ends.
fn fake_upstream() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = socket.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, peer)) = socket.recv_from(&mut buf) {
            if n < 12 {
                continue;
            }
            // The question: its name ends at the zero label, then type and class.
            let mut end = 12;
            while end < n && buf[end] != 0 {
                end += buf[end] as usize + 1;
            }
            let question_end = (end + 5).min(n);
            let qtype = u16::from_be_bytes([buf[end + 1], buf[end + 2]]);
            let mut reply = buf[..question_end].to_vec();
            reply[2] = 0x81; // response, recursion desired
            reply[3] = 0x80; // recursion available, NOERROR
            reply[6..12].copy_from_slice(&[0, (qtype == 1) as u8, 0, 0, 0, 0]);
            if qtype == 1 {
                // A pointer to the question's name, A IN, TTL 60, 192.0.2.99.
                reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 99]);
            }
            let _ = socket.send_to(&reply, peer);
        }
    });
    port
}

fn lookup(c: &Cluster, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["exec", "client", "--", "nslookup"];
    all.extend_from_slice(args);
    let out = c.kubectl(&all);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_find_services_by_name_through_cluster_dns() {
    let upstream = format!("127.0.0.1:{}", fake_upstream());
    let net = NetCluster::start(1, "nftables", Cni::Skiff, &["--dns-upstream", &upstream]).await;
    let c = &net.c;
    c.ok_stdin(&["apply", "-f", "-"], NAMES);
    wait_for("the pods to run", || {
        phase(c, "client") == "Running" && phase(c, "db-0") == "Running"
    });
    let web_ip = text(
        c,
        &["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"],
    );
    let dns_ip = text(
        c,
        &[
            "get",
            "svc",
            "-n",
            "kube-system",
            "kube-dns",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
    );
    let db_ip = text(c, &["get", "pod", "db-0", "-o", "jsonpath={.status.podIP}"]);
    // The kubelet points ClusterFirst pods at the cluster DNS.
    let resolv = c.ok(&["exec", "client", "--", "cat", "/etc/resolv.conf"]);
    assert!(resolv.contains(&format!("nameserver {dns_ip}")), "{resolv}");
    assert!(
        resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv}"
    );
    assert!(resolv.contains("ndots:5"), "{resolv}");

    // A Service by its full name, through the kube-dns Service's address, once the
    // proxy has programmed it (short time-outs: a loaded machine gets more tries).
    let dns_rule = format!("{dns_ip} . udp . 53");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !(rules(net.mode, &net.table).contains(&dns_rule)
        && lookup(c, &["-timeout=2", "web.default.svc.cluster.local"]).is_ok())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the cluster DNS never answered: {:?}\nkube-dns slices: {}\nrules:\n{}\nDNS log: {}",
            lookup(c, &["-timeout=2", "web.default.svc.cluster.local"]),
            text(
                c,
                &["get", "endpointslices", "-n", "kube-system", "-o", "wide"]
            ),
            rules(net.mode, &net.table),
            c.log()
                .lines()
                .filter(|l| l.contains("dns") || l.contains("proxy"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let web = lookup(c, &["web.default.svc.cluster.local"]).expect("web");
    assert!(web.contains(&web_ip), "{web}");
    // A headless Service: its ready pods, each also by hostname.
    wait_for("the headless Service's endpoint", || {
        lookup(c, &["db.default.svc.cluster.local"]).is_ok_and(|t| t.contains(&db_ip))
    });
    let host = lookup(c, &["db-0.db.default.svc.cluster.local"]).expect("hostname");
    assert!(host.contains(&db_ip), "{host}");
    // SRV: the named port, to the pod's own name.
    let srv = lookup(c, &["-type=SRV", "_http._tcp.db.default.svc.cluster.local"]).expect("SRV");
    assert!(
        srv.contains("8080") && srv.contains("db-0.db.default.svc.cluster.local"),
        "{srv}"
    );
    // PTR of the ClusterIP.
    let ptr = lookup(c, &[&web_ip]).expect("PTR");
    assert!(ptr.contains("web.default.svc.cluster.local"), "{ptr}");
    // A name that does not exist.
    let missing = lookup(c, &["nope.default.svc.cluster.local"]).unwrap_err();
    assert!(missing.contains("NXDOMAIN"), "{missing}");
    // Outside names go to the upstream resolver; an ExternalName Service is a CNAME
    // to one.
    let outside = lookup(c, &["outside.example"]).expect("forwarded");
    assert!(outside.contains("192.0.2.99"), "{outside}");
    let ext = lookup(c, &["ext.default.svc.cluster.local"]).expect("ExternalName");
    assert!(
        ext.contains("outside.example") && ext.contains("192.0.2.99"),
        "{ext}"
    );
    net.delete_pods().await;
}
