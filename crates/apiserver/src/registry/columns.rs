//! Cell functions for `kubectl get` columns, following upstream's printers
//! (pkg/printers/internalversion/printers.go) for what each kind shows.

use serde_json::{Value, json};

use crate::table::human_duration_since;

fn s<'a>(obj: &'a Value, pointer: &str) -> Option<&'a str> {
    obj.pointer(pointer).and_then(Value::as_str)
}

fn i(obj: &Value, pointer: &str) -> i64 {
    obj.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn arr<'a>(obj: &'a Value, pointer: &str) -> &'a [Value] {
    obj.pointer(pointer)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn or_none(v: Option<String>) -> Value {
    json!(
        v.filter(|s| !s.is_empty())
            .unwrap_or_else(|| "<none>".into())
    )
}

fn join(values: impl Iterator<Item = String>) -> Option<String> {
    let v: Vec<String> = values.collect();
    (!v.is_empty()).then(|| v.join(","))
}

pub fn data_count(obj: &Value) -> Value {
    let count = |field: &str| {
        obj.get(field)
            .and_then(Value::as_object)
            .map_or(0, |m| m.len())
    };
    json!(count("data") + count("binaryData"))
}

pub fn secret_type(obj: &Value) -> Value {
    json!(s(obj, "/type").unwrap_or(""))
}

pub fn namespace_phase(obj: &Value) -> Value {
    json!(s(obj, "/status/phase").unwrap_or(""))
}

pub fn phase(obj: &Value) -> Value {
    json!(s(obj, "/status/phase").unwrap_or(""))
}

pub fn sa_secrets(obj: &Value) -> Value {
    json!(arr(obj, "/secrets").len())
}

pub fn created_at(obj: &Value) -> Value {
    json!(s(obj, "/metadata/creationTimestamp").unwrap_or(""))
}

// Pods: READY x/y, STATUS as kubectl shows it, RESTARTS.
pub fn pod_ready(obj: &Value) -> Value {
    let total = arr(obj, "/spec/containers").len();
    let ready = arr(obj, "/status/containerStatuses")
        .iter()
        .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
        .count();
    json!(format!("{ready}/{total}"))
}

pub fn pod_status(obj: &Value) -> Value {
    if obj.pointer("/metadata/deletionTimestamp").is_some() {
        return json!("Terminating");
    }
    let mut reason = s(obj, "/status/reason")
        .or(s(obj, "/status/phase"))
        .unwrap_or("Pending")
        .to_string();
    for c in arr(obj, "/status/containerStatuses") {
        if let Some(r) = c.pointer("/state/waiting/reason").and_then(Value::as_str) {
            reason = r.to_string();
        } else if let Some(r) = c
            .pointer("/state/terminated/reason")
            .and_then(Value::as_str)
        {
            reason = r.to_string();
        }
    }
    json!(reason)
}

pub fn pod_restarts(obj: &Value) -> Value {
    json!(
        arr(obj, "/status/containerStatuses")
            .iter()
            .map(|c| c.get("restartCount").and_then(Value::as_i64).unwrap_or(0))
            .sum::<i64>()
    )
}

pub fn pod_ip(obj: &Value) -> Value {
    or_none(s(obj, "/status/podIP").map(str::to_string))
}

pub fn pod_node(obj: &Value) -> Value {
    or_none(s(obj, "/spec/nodeName").map(str::to_string))
}

pub fn pod_nominated(obj: &Value) -> Value {
    or_none(s(obj, "/status/nominatedNodeName").map(str::to_string))
}

pub fn pod_readiness_gates(obj: &Value) -> Value {
    let gates = arr(obj, "/spec/readinessGates");
    if gates.is_empty() {
        return json!("<none>");
    }
    let ready = gates
        .iter()
        .filter(|g| {
            let kind = g.get("conditionType");
            arr(obj, "/status/conditions")
                .iter()
                .any(|c| c.get("type") == kind && c.get("status") == Some(&json!("True")))
        })
        .count();
    json!(format!("{ready}/{}", gates.len()))
}

// Services.
pub fn service_type(obj: &Value) -> Value {
    json!(s(obj, "/spec/type").unwrap_or("ClusterIP"))
}

pub fn service_cluster_ip(obj: &Value) -> Value {
    or_none(s(obj, "/spec/clusterIP").map(str::to_string))
}

pub fn service_external_ip(obj: &Value) -> Value {
    let ingress = arr(obj, "/status/loadBalancer/ingress")
        .iter()
        .filter_map(|i| {
            i.get("ip")
                .or(i.get("hostname"))
                .and_then(Value::as_str)
                .map(str::to_string)
        });
    let external = arr(obj, "/spec/externalIPs")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string));
    match s(obj, "/spec/type") {
        Some("LoadBalancer") => {
            json!(join(ingress.chain(external)).unwrap_or_else(|| "<pending>".into()))
        }
        Some("ExternalName") => json!(s(obj, "/spec/externalName").unwrap_or("<none>")),
        _ => or_none(join(external)),
    }
}

pub fn service_ports(obj: &Value) -> Value {
    let ports = arr(obj, "/spec/ports").iter().map(|p| {
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
        match p.get("nodePort").and_then(Value::as_i64) {
            Some(node) => format!("{port}:{node}/{proto}"),
            None => format!("{port}/{proto}"),
        }
    });
    or_none(join(ports))
}

/// A string map at `pointer` as `k=v,k=v` (`<none>` when absent or empty).
fn string_map(obj: &Value, pointer: &str) -> Value {
    let pairs = obj.pointer(pointer).and_then(Value::as_object).map(|m| {
        m.iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect::<Vec<_>>()
            .join(",")
    });
    or_none(pairs)
}

pub fn selector_map(obj: &Value) -> Value {
    string_map(obj, "/spec/selector")
}

/// A workload's label selector, matchExpressions included.
pub fn label_selector(obj: &Value) -> Value {
    or_none(Some(super::subresources::selector_string(
        obj.pointer("/spec/selector"),
    )))
}

pub fn endpoints(obj: &Value) -> Value {
    let mut all = Vec::new();
    for subset in arr(obj, "/subsets") {
        for address in subset
            .get("addresses")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice)
        {
            let ip = address.get("ip").and_then(Value::as_str).unwrap_or("");
            for port in subset
                .get("ports")
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice)
            {
                all.push(format!(
                    "{ip}:{}",
                    port.get("port").and_then(Value::as_i64).unwrap_or(0)
                ));
            }
        }
    }
    let shown = all.iter().take(3).cloned().collect::<Vec<_>>().join(",");
    if all.is_empty() {
        json!("<none>")
    } else if all.len() > 3 {
        json!(format!("{shown} + {} more...", all.len() - 3))
    } else {
        json!(shown)
    }
}

// Nodes.
pub fn node_status(obj: &Value) -> Value {
    let ready = arr(obj, "/status/conditions")
        .iter()
        .find(|c| c.get("type") == Some(&json!("Ready")));
    let mut status = match ready.and_then(|c| c.get("status")).and_then(Value::as_str) {
        Some("True") => "Ready".to_string(),
        Some("False") => "NotReady".to_string(),
        _ => "Unknown".to_string(),
    };
    if obj.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    json!(status)
}

pub fn node_roles(obj: &Value) -> Value {
    let roles = obj
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .filter(|r| !r.is_empty())
                .collect::<Vec<_>>()
                .join(",")
        });
    or_none(roles)
}

pub fn node_version(obj: &Value) -> Value {
    json!(s(obj, "/status/nodeInfo/kubeletVersion").unwrap_or(""))
}

fn node_address(obj: &Value, kind: &str) -> Value {
    let found = arr(obj, "/status/addresses")
        .iter()
        .find(|a| a.get("type") == Some(&json!(kind)));
    or_none(
        found
            .and_then(|a| a.get("address"))
            .and_then(Value::as_str)
            .map(str::to_string),
    )
}

pub fn node_internal_ip(obj: &Value) -> Value {
    node_address(obj, "InternalIP")
}

pub fn node_external_ip(obj: &Value) -> Value {
    node_address(obj, "ExternalIP")
}

pub fn node_os_image(obj: &Value) -> Value {
    or_none(s(obj, "/status/nodeInfo/osImage").map(str::to_string))
}

pub fn node_kernel(obj: &Value) -> Value {
    or_none(s(obj, "/status/nodeInfo/kernelVersion").map(str::to_string))
}

pub fn node_runtime(obj: &Value) -> Value {
    or_none(s(obj, "/status/nodeInfo/containerRuntimeVersion").map(str::to_string))
}

// Events.
pub fn event_last_seen(obj: &Value) -> Value {
    let at = s(obj, "/lastTimestamp")
        .or(s(obj, "/eventTime"))
        .or(s(obj, "/metadata/creationTimestamp"));
    json!(human_duration_since(at))
}

pub fn event_type(obj: &Value) -> Value {
    json!(s(obj, "/type").unwrap_or(""))
}

pub fn event_reason(obj: &Value) -> Value {
    json!(s(obj, "/reason").unwrap_or(""))
}

pub fn event_object(obj: &Value) -> Value {
    let kind = s(obj, "/involvedObject/kind")
        .unwrap_or("")
        .to_ascii_lowercase();
    json!(format!(
        "{kind}/{}",
        s(obj, "/involvedObject/name").unwrap_or("")
    ))
}

pub fn event_message(obj: &Value) -> Value {
    json!(s(obj, "/message").unwrap_or(""))
}

// Volumes.
pub fn pv_capacity(obj: &Value) -> Value {
    json!(s(obj, "/spec/capacity/storage").unwrap_or(""))
}

pub fn pvc_capacity(obj: &Value) -> Value {
    json!(s(obj, "/status/capacity/storage").unwrap_or(""))
}

pub fn access_modes(obj: &Value) -> Value {
    let short = |m: &str| {
        match m {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        }
        .to_string()
    };
    json!(
        arr(obj, "/spec/accessModes")
            .iter()
            .filter_map(Value::as_str)
            .map(short)
            .collect::<Vec<_>>()
            .join(",")
    )
}

pub fn pv_reclaim(obj: &Value) -> Value {
    json!(s(obj, "/spec/persistentVolumeReclaimPolicy").unwrap_or(""))
}

pub fn pv_claim(obj: &Value) -> Value {
    match (
        s(obj, "/spec/claimRef/namespace"),
        s(obj, "/spec/claimRef/name"),
    ) {
        (Some(ns), Some(name)) => json!(format!("{ns}/{name}")),
        _ => json!(""),
    }
}

pub fn pvc_volume(obj: &Value) -> Value {
    json!(s(obj, "/spec/volumeName").unwrap_or(""))
}

pub fn storage_class(obj: &Value) -> Value {
    json!(s(obj, "/spec/storageClassName").unwrap_or("<unset>"))
}

// Workloads.
pub fn ready_of_replicas(obj: &Value) -> Value {
    json!(format!(
        "{}/{}",
        i(obj, "/status/readyReplicas"),
        i(obj, "/spec/replicas")
    ))
}

pub fn updated_replicas(obj: &Value) -> Value {
    json!(i(obj, "/status/updatedReplicas"))
}

pub fn available_replicas(obj: &Value) -> Value {
    json!(i(obj, "/status/availableReplicas"))
}

pub fn spec_replicas(obj: &Value) -> Value {
    json!(i(obj, "/spec/replicas"))
}

pub fn status_replicas(obj: &Value) -> Value {
    json!(i(obj, "/status/replicas"))
}

pub fn ready_replicas(obj: &Value) -> Value {
    json!(i(obj, "/status/readyReplicas"))
}

pub fn template_containers(obj: &Value) -> Value {
    let containers = arr(obj, "/spec/template/spec/containers");
    json!(
        containers
            .iter()
            .filter_map(|c| c.get("name").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(",")
    )
}

pub fn template_images(obj: &Value) -> Value {
    let containers = arr(obj, "/spec/template/spec/containers");
    json!(
        containers
            .iter()
            .filter_map(|c| c.get("image").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(",")
    )
}

pub fn ds_desired(obj: &Value) -> Value {
    json!(i(obj, "/status/desiredNumberScheduled"))
}

pub fn ds_current(obj: &Value) -> Value {
    json!(i(obj, "/status/currentNumberScheduled"))
}

pub fn ds_ready(obj: &Value) -> Value {
    json!(i(obj, "/status/numberReady"))
}

pub fn ds_updated(obj: &Value) -> Value {
    json!(i(obj, "/status/updatedNumberScheduled"))
}

pub fn ds_available(obj: &Value) -> Value {
    json!(i(obj, "/status/numberAvailable"))
}

pub fn ds_node_selector(obj: &Value) -> Value {
    string_map(obj, "/spec/template/spec/nodeSelector")
}

pub fn revision_controller(obj: &Value) -> Value {
    let owner = arr(obj, "/metadata/ownerReferences")
        .iter()
        .find(|o| o.get("controller") == Some(&json!(true)));
    match owner {
        Some(o) => json!(format!(
            "{}/{}",
            o.get("kind")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_ascii_lowercase(),
            o.get("name").and_then(Value::as_str).unwrap_or("")
        )),
        None => json!("<none>"),
    }
}

pub fn revision_number(obj: &Value) -> Value {
    json!(i(obj, "/revision"))
}

pub fn job_completions(obj: &Value) -> Value {
    let completions = obj.pointer("/spec/completions").and_then(Value::as_i64);
    let succeeded = i(obj, "/status/succeeded");
    json!(match completions {
        Some(c) => format!("{succeeded}/{c}"),
        None => format!("{succeeded}/1 of {}", i(obj, "/spec/parallelism").max(1)),
    })
}

pub fn cron_schedule(obj: &Value) -> Value {
    json!(s(obj, "/spec/schedule").unwrap_or(""))
}

pub fn cron_suspend(obj: &Value) -> Value {
    json!(
        if obj.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true) {
            "True"
        } else {
            "False"
        }
    )
}

pub fn cron_active(obj: &Value) -> Value {
    json!(arr(obj, "/status/active").len())
}

pub fn cron_last_schedule(obj: &Value) -> Value {
    match s(obj, "/status/lastScheduleTime") {
        Some(at) => json!(human_duration_since(Some(at))),
        None => json!("<none>"),
    }
}

pub fn lease_holder(obj: &Value) -> Value {
    json!(s(obj, "/spec/holderIdentity").unwrap_or(""))
}

pub fn slice_address_type(obj: &Value) -> Value {
    json!(s(obj, "/addressType").unwrap_or(""))
}

pub fn slice_ports(obj: &Value) -> Value {
    let ports = arr(obj, "/ports").iter().map(|p| {
        p.get("port")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            .to_string()
    });
    or_none(join(ports))
}

pub fn slice_endpoints(obj: &Value) -> Value {
    let addresses = arr(obj, "/endpoints")
        .iter()
        .flat_map(|e| {
            e.get("addresses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|a| a.as_str().map(str::to_string));
    or_none(join(addresses))
}

pub fn pdb_min_available(obj: &Value) -> Value {
    obj.pointer("/spec/minAvailable")
        .cloned()
        .unwrap_or(json!("N/A"))
}

pub fn pdb_max_unavailable(obj: &Value) -> Value {
    obj.pointer("/spec/maxUnavailable")
        .cloned()
        .unwrap_or(json!("N/A"))
}

pub fn pdb_allowed(obj: &Value) -> Value {
    json!(i(obj, "/status/disruptionsAllowed"))
}

pub fn binding_role(obj: &Value) -> Value {
    json!(format!(
        "{}/{}",
        s(obj, "/roleRef/kind").unwrap_or(""),
        s(obj, "/roleRef/name").unwrap_or("")
    ))
}

pub fn sc_provisioner(obj: &Value) -> Value {
    json!(s(obj, "/provisioner").unwrap_or(""))
}

pub fn sc_reclaim(obj: &Value) -> Value {
    json!(s(obj, "/reclaimPolicy").unwrap_or("Delete"))
}

pub fn sc_binding_mode(obj: &Value) -> Value {
    json!(s(obj, "/volumeBindingMode").unwrap_or("Immediate"))
}

pub fn sc_expansion(obj: &Value) -> Value {
    json!(
        obj.get("allowVolumeExpansion")
            .and_then(Value::as_bool)
            .unwrap_or(false)
            .to_string()
    )
}

pub fn pc_value(obj: &Value) -> Value {
    json!(obj.get("value").and_then(Value::as_i64).unwrap_or(0))
}

pub fn pc_global_default(obj: &Value) -> Value {
    json!(
        obj.get("globalDefault")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    )
}

pub fn pc_preemption_policy(obj: &Value) -> Value {
    json!(s(obj, "/preemptionPolicy").unwrap_or("PreemptLowerPriority"))
}
