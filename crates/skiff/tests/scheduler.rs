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
