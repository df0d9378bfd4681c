//! The scheduler end to end: fake nodes (Node objects, no kubelet), pods created with
//! kubectl, placement checked through the API.

mod common;

use std::time::{Duration, Instant};

use common::{Backend, Cluster, wait_for};

fn pods(prefix: &str, n: usize, extra_spec: &str) -> String {
    (1..=n)
        .map(|i| {
            format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {prefix}-{i}, labels: {{app: {prefix}}}}}\nspec:\n  containers: [{{name: c, image: busybox, resources: {{requests: {{cpu: 100m, memory: 64Mi}}}}}}]\n{extra_spec}"
            )
        })
        .collect()
}

/// Waits until every pod with `app=LABEL` is bound; returns pods per node.
fn wait_bound(c: &Cluster, label: &str, n: usize) -> std::collections::BTreeMap<String, usize> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = c.ok(&[
            "get",
            "pods",
            "-l",
            &format!("app={label}"),
            "-o",
            "jsonpath={range .items[*]}{.spec.nodeName}{\"\\n\"}{end}",
        ]);
        let nodes: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
        if nodes.len() == n {
            let mut per_node = std::collections::BTreeMap::new();
            for node in nodes {
                *per_node.entry(node.to_string()).or_default() += 1;
            }
            return per_node;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} bound",
            nodes.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_spread_over_nodes_and_unschedulable_ones_say_why() {
    let c = Cluster::start(Backend::Embedded).await;
    c.fake_nodes(5);
    let out = c.kubectl_with(&["create", "-f", "-"], &[], Some(&pods("web", 50, "")));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let per_node = wait_bound(&c, "web", 50);
    assert_eq!(per_node.len(), 5, "{per_node:?}");
    assert!(per_node.values().all(|n| *n == 10), "{per_node:?}");
    // The binding shows as upstream's condition and event.
    let pod = c.json(&["get", "pod", "web-1"]);
    assert_eq!(pod["status"]["conditions"][0]["type"], "PodScheduled");
    assert_eq!(pod["status"]["conditions"][0]["status"], "True");
    wait_for("a Scheduled event", || {
        c.ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=web-1,reason=Scheduled",
        ])
        .contains("Successfully assigned default/web-1 to node-")
    });

    // Nothing fits: Pending, PodScheduled=False and a FailedScheduling event with reasons.
    let big = "apiVersion: v1\nkind: Pod\nmetadata: {name: big}\nspec:\n  containers: [{name: c, image: busybox, resources: {requests: {cpu: '100'}}}]\n";
    c.kubectl_with(&["create", "-f", "-"], &[], Some(big));
    wait_for("FailedScheduling", || {
        c.ok(&["describe", "pod", "big"])
            .contains("0/5 nodes are available: 5 Insufficient cpu.")
    });
    let big = c.json(&["get", "pod", "big"]);
    assert_eq!(big["status"]["phase"], "Pending");
    assert_eq!(big["status"]["conditions"][0]["reason"], "Unschedulable");

    // Cordoned and tainted nodes are avoided; a node selector is honoured.
    c.ok(&["cordon", "node-1"]);
    c.ok(&["taint", "node", "node-2", "dedicated=gpu:NoSchedule"]);
    let out = c.kubectl_with(&["create", "-f", "-"], &[], Some(&pods("avoid", 12, "")));
    assert!(out.status.success());
    let per_node = wait_bound(&c, "avoid", 12);
    assert!(
        !per_node.contains_key("node-1") && !per_node.contains_key("node-2"),
        "{per_node:?}"
    );
    let pinned = pods(
        "pinned",
        3,
        "  nodeSelector: {kubernetes.io/hostname: node-5}\n",
    );
    c.kubectl_with(&["create", "-f", "-"], &[], Some(&pinned));
    let per_node = wait_bound(&c, "pinned", 3);
    assert_eq!(per_node.get("node-5"), Some(&3), "{per_node:?}");
    // A pod that tolerates the taint may go there.
    let mixed = "  nodeSelector: {kubernetes.io/hostname: node-2}\n  tolerations: [{key: dedicated, operator: Equal, value: gpu, effect: NoSchedule}]\n";
    c.kubectl_with(
        &["create", "-f", "-"],
        &[],
        Some(&pods("tolerant", 1, mixed)),
    );
    assert_eq!(wait_bound(&c, "tolerant", 1).get("node-2"), Some(&1));

    // A node added later makes the unschedulable pod fit.
    let huge = "apiVersion: v1\nkind: Node\nmetadata: {name: huge, labels: {kubernetes.io/hostname: huge}}\n";
    c.kubectl_with(&["create", "-f", "-"], &[], Some(huge));
    c.ok(&[
        "patch",
        "node",
        "huge",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"allocatable":{"cpu":"128","memory":"512Gi","pods":"110"}}}"#,
    ]);
    wait_for("big to be bound to the new node", || {
        c.ok(&["get", "pod", "big", "-o", "jsonpath={.spec.nodeName}"]) == "huge"
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_scheduler_takes_over_when_the_leader_dies() {
    // `skiff apiserver` alone, then two schedulers against it.
    let c = Cluster::start(Backend::Etcd).await;
    c.fake_nodes(2);
    let mut first = c.spawn_component(&["scheduler", "--identity", "first"]);
    let holder = || {
        c.kubectl(&[
            "get",
            "lease",
            "kube-scheduler",
            "-n",
            "kube-system",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
    };
    wait_for("the first scheduler to lead", || {
        String::from_utf8_lossy(&holder().stdout) == "first"
    });
    let _second = c.spawn_component(&["scheduler", "--identity", "second"]);
    c.kubectl_with(&["create", "-f", "-"], &[], Some(&pods("before", 4, "")));
    wait_bound(&c, "before", 4);
    // SIGKILL: the lease is not released; the standby waits out the lease duration.
    first.kill();
    let killed = Instant::now();
    c.kubectl_with(&["create", "-f", "-"], &[], Some(&pods("after", 4, "")));
    wait_for("the second scheduler to lead", || {
        String::from_utf8_lossy(&holder().stdout) == "second"
    });
    wait_bound(&c, "after", 4);
    // Within the lease duration (15 s) plus a retry period and scheduling.
    assert!(
        killed.elapsed() < Duration::from_secs(25),
        "{:?}",
        killed.elapsed()
    );
}

fn json_of(c: &Cluster, args: &[&str]) -> serde_json::Value {
    c.json(args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_pods_preempt_lower_ones() {
    let c = Cluster::start(Backend::Embedded).await;
    c.fake_nodes(2);
    c.ok(&["create", "priorityclass", "low", "--value=10"]);
    c.ok(&["create", "priorityclass", "high", "--value=1000"]);
    c.ok(&[
        "create",
        "priorityclass",
        "polite",
        "--value=1000",
        "--preemption-policy=Never",
    ]);
    let table = c.ok(&["get", "priorityclasses"]);
    assert!(
        table.starts_with("NAME") && table.contains("PREEMPTIONPOLICY"),
        "{table}"
    );
    let row = |name: &str| -> Vec<String> {
        let line = table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default();
        line.split_whitespace().map(String::from).collect()
    };
    assert_eq!(row("polite")[1..3], ["1000", "false"], "{table}");
    assert_eq!(row("polite").last().map(String::as_str), Some("Never"));
    assert_eq!(row("system-node-critical")[1], "2000001000", "{table}");
    assert!(!table.is_empty(), "{table}");
    // User classes stay below the system range and out of its prefix.
    let err = c.fails(&["create", "priorityclass", "system-mine", "--value=5"]);
    assert!(err.contains("reserved for system use only"), "{err}");
    let err = c.fails(&["create", "priorityclass", "huge", "--value=2000000000"]);
    assert!(
        err.contains("maximum allowed value of a user defined priority is 1000000000"),
        "{err}"
    );
    // An unknown class is refused, as upstream's admission does.
    let err = c.fails(&[
        "run",
        "nope",
        "--image=busybox",
        "--overrides",
        r#"{"spec":{"priorityClassName":"missing"}}"#,
    ]);
    assert!(
        err.contains("no PriorityClass with name missing was found"),
        "{err}"
    );

    // Fill both nodes (4 CPUs each) with low-priority pods.
    let low = (1..=8)
        .map(|i| format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: low-{i}, labels: {{app: low}}}}\nspec:\n  priorityClassName: low\n  containers: [{{name: c, image: busybox, resources: {{requests: {{cpu: '1'}}}}}}]\n"))
        .collect::<String>();
    c.kubectl_with(&["create", "-f", "-"], &[], Some(&low));
    wait_bound(&c, "low", 8);
    assert_eq!(
        json_of(&c, &["get", "pod", "low-1"])["spec"]["priority"],
        10
    );

    // A polite high-priority pod waits and says why it does not preempt.
    let pod = |name: &str, class: &str, cpu: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  priorityClassName: {class}\n  containers: [{{name: c, image: busybox, resources: {{requests: {{cpu: '{cpu}'}}}}}}]\n"
        )
    };
    c.kubectl_with(
        &["create", "-f", "-"],
        &[],
        Some(&pod("polite", "polite", "2")),
    );
    wait_for("polite's FailedScheduling", || {
        c.ok(&["get", "events", "--field-selector", "involvedObject.name=polite"]).contains(
            "0/2 nodes are available: 2 Insufficient cpu. preemption: not eligible due to preemptionPolicy=Never..",
        )
    });

    // A high-priority pod evicts two low ones on one node and is nominated there.
    c.kubectl_with(&["create", "-f", "-"], &[], Some(&pod("vip", "high", "2")));
    let mut nominated = String::new();
    wait_for("vip to be nominated", || {
        nominated = c.ok(&[
            "get",
            "pod",
            "vip",
            "-o",
            "jsonpath={.status.nominatedNodeName}",
        ]);
        !nominated.is_empty()
    });
    let victims = || -> Vec<serde_json::Value> {
        let pods = json_of(&c, &["get", "pods", "-l", "app=low"]);
        pods["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter(|p| !p["metadata"]["deletionTimestamp"].is_null())
            .cloned()
            .collect()
    };
    wait_for("two victims", || victims().len() == 2);
    for v in victims() {
        assert_eq!(v["spec"]["nodeName"], nominated.as_str());
        let conditions = v["status"]["conditions"].as_array().expect("conditions");
        assert!(
            conditions
                .iter()
                .any(|c| c["type"] == "DisruptionTarget" && c["reason"] == "PreemptionByScheduler"),
            "{conditions:?}"
        );
    }
    wait_for("a Preempted event", || {
        c.ok(&["get", "events", "--field-selector", "reason=Preempted"])
            .contains("Preempted by pod")
    });
    // While they terminate, vip waits; once the "kubelet" removes them, it is bound.
    assert_eq!(
        c.ok(&["get", "pod", "vip", "-o", "jsonpath={.spec.nodeName}"]),
        ""
    );
    for v in victims() {
        let name = v["metadata"]["name"].as_str().expect("name").to_string();
        c.ok(&["delete", "pod", &name, "--grace-period=0", "--force"]);
    }
    wait_for("vip to be bound where it was nominated", || {
        c.ok(&["get", "pod", "vip", "-o", "jsonpath={.spec.nodeName}"]) == nominated
    });
    // Nothing is left of lower priority on that node to evict for polite, and it may not.
    assert_eq!(
        c.ok(&["get", "pod", "polite", "-o", "jsonpath={.spec.nodeName}"]),
        ""
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_spread_and_pod_anti_affinity() {
    let c = Cluster::start(Backend::Embedded).await;
    c.fake_nodes(3);
    for (node, zone) in [("node-1", "a"), ("node-2", "a"), ("node-3", "b")] {
        c.ok(&[
            "label",
            "node",
            node,
            &format!("topology.kubernetes.io/zone={zone}"),
        ]);
    }
    let spread = "  topologySpreadConstraints: [{maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: zoned}}}]\n";
    c.kubectl_with(&["create", "-f", "-"], &[], Some(&pods("zoned", 6, spread)));
    let per_node = wait_bound(&c, "zoned", 6);
    let zone_a = per_node.get("node-1").unwrap_or(&0) + per_node.get("node-2").unwrap_or(&0);
    assert_eq!(
        (zone_a, per_node.get("node-3").copied()),
        (3, Some(3)),
        "{per_node:?}"
    );

    // One per node by anti-affinity: the fourth stays Pending and says why.
    let anti = "  affinity: {podAntiAffinity: {requiredDuringSchedulingIgnoredDuringExecution: [{topologyKey: kubernetes.io/hostname, labelSelector: {matchLabels: {app: solo}}}]}}\n";
    c.kubectl_with(&["create", "-f", "-"], &[], Some(&pods("solo", 4, anti)));
    wait_for("three solos bound, one refused", || {
        let out = c.ok(&[
            "get",
            "pods",
            "-l",
            "app=solo",
            "-o",
            "jsonpath={range .items[*]}{.spec.nodeName}{\",\"}{end}",
        ]);
        let bound: std::collections::BTreeSet<&str> =
            out.split(',').filter(|n| !n.is_empty()).collect();
        bound.len() == 3 && out.matches(',').count() == 4
    });
    wait_for("the FailedScheduling message", || {
        c.ok(&["get", "events", "--field-selector", "reason=FailedScheduling"]).contains(
            "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod..",
        )
    });
}
