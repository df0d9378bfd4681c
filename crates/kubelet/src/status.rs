//! Pod status from what the runtime reports, as upstream's kubelet computes it
//! (`generateAPIPodStatus`, `getPhase`, status/generate.go): container statuses from the
//! newest two runtime containers of each name (state and lastState), the waiting reason
//! a worker decided (CrashLoopBackOff, ErrImagePull, ...), the phase, the conditions
//! with their upstream reasons and messages, and the QoS class.

use std::collections::HashMap;

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{Value, json};

/// What the pod worker knows of the pod right now.
pub struct Observed<'a> {
    /// Whether the pod's sandbox is ready, and its IP.
    pub sandbox_ready: bool,
    pub pod_ip: Option<String>,
    pub host_ip: &'a str,
    /// Runtime containers of each container name, newest first.
    pub containers: &'a HashMap<String, Vec<cri::ContainerStatus>>,
    /// (started, ready) from the probes, for containers that have probes.
    pub probed: &'a HashMap<String, (bool, bool)>,
    /// Why a container waits, when the worker knows better than "ContainerCreating".
    pub waiting: &'a HashMap<String, (String, String)>,
    /// The pod is being (or has been) terminated: nothing will run again.
    pub terminal: bool,
    pub runtime_name: &'a str,
    pub now: &'a str,
}

/// RFC 3339 (seconds) from CRI nanoseconds.
pub fn time(nanos: i64) -> Option<String> {
    (nanos > 0)
        .then(|| k8s_openapi::jiff::Timestamp::from_second(nanos / 1_000_000_000).ok())
        .flatten()
        .map(|t| t.to_string())
}

/// The largest termination message kept (upstream's per-container limit).
const MAX_MESSAGE: u64 = 4096;
/// What `FallbackToLogsOnError` takes from the log: its last lines and bytes.
const FALLBACK_LINES: usize = 80;
const FALLBACK_BYTES: usize = 2048;

/// A terminated container's message: its termination message file (the kubelet mounts
/// one at `terminationMessagePath`), else, with `FallbackToLogsOnError` and a failure,
/// the tail of its log; else what the runtime says.
fn termination_message(status: &cri::ContainerStatus, container: &Container) -> String {
    use std::io::Read;
    let path = container
        .termination_message_path
        .as_deref()
        .unwrap_or_default();
    let file = status
        .mounts
        .iter()
        .find(|m| !path.is_empty() && m.container_path == path)
        .map(|m| m.host_path.clone());
    let mut message = String::new();
    if let Some(file) = file
        && let Ok(f) = std::fs::File::open(file)
    {
        let mut bytes = Vec::new();
        let _ = f.take(MAX_MESSAGE).read_to_end(&mut bytes);
        message = String::from_utf8_lossy(&bytes).into_owned();
    }
    let fallback = container.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
    if message.is_empty() && fallback && status.exit_code != 0 {
        let log = std::fs::read(&status.log_path).unwrap_or_default();
        let lines: Vec<&[u8]> = log
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.splitn(4, |b| *b == b' ').nth(3))
            .collect();
        let tail = lines[lines.len().saturating_sub(FALLBACK_LINES)..].join(&b'\n');
        let start = tail.len().saturating_sub(FALLBACK_BYTES);
        message = String::from_utf8_lossy(&tail[start..]).into_owned();
        if !message.is_empty() {
            message.push('\n');
        }
    }
    if message.is_empty() {
        message = status.message.clone();
    }
    message
}

/// The state of one runtime container (`state`/`lastState`).
fn state(status: &cri::ContainerStatus, runtime: &str, container: &Container) -> Value {
    match cri::ContainerState::try_from(status.state) {
        Ok(cri::ContainerState::ContainerRunning) => {
            json!({"running": {"startedAt": time(status.started_at)}})
        }
        Ok(cri::ContainerState::ContainerExited) => {
            let mut terminated = json!({
                "exitCode": status.exit_code,
                "reason": status.reason,
                "containerID": format!("{runtime}://{}", status.id),
            });
            // A container that never started has no start (and the API drops nulls).
            for (key, nanos) in [
                ("startedAt", status.started_at),
                ("finishedAt", status.finished_at),
            ] {
                if let Some(time) = time(nanos) {
                    terminated[key] = json!(time);
                }
            }
            let message = termination_message(status, container);
            if !message.is_empty() {
                terminated["message"] = json!(message);
            }
            json!({"terminated": terminated})
        }
        _ => json!({"waiting": {"reason": "ContainerCreating"}}),
    }
}

fn is_running(status: &cri::ContainerStatus) -> bool {
    status.state == cri::ContainerState::ContainerRunning as i32
}

fn exited(status: &cri::ContainerStatus) -> bool {
    status.state == cri::ContainerState::ContainerExited as i32
}

/// One `containerStatuses` entry.
fn container_status(
    container: &Container,
    observed: &Observed,
    default_waiting: &str,
    init: bool,
) -> Value {
    let history = observed
        .containers
        .get(&container.name)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let image = container.image.clone().unwrap_or_default();
    let mut entry = json!({
        "name": container.name,
        "image": image,
        "imageID": "",
        "restartCount": 0,
        "ready": false,
        "started": false,
        "state": {"waiting": {"reason": default_waiting}},
    });
    let Some(newest) = history.first() else {
        if let Some((reason, message)) = observed.waiting.get(&container.name) {
            entry["state"] = json!({"waiting": {"reason": reason, "message": message}});
        }
        return entry;
    };
    entry["imageID"] = json!(newest.image_ref);
    entry["containerID"] = json!(format!("{}://{}", observed.runtime_name, newest.id));
    entry["restartCount"] = json!(newest.metadata.as_ref().map_or(0, |m| m.attempt));
    let running = is_running(newest);
    // Before its first probe round a container is as its probes start it: not started
    // with a startup probe, not ready with a readiness probe.
    let (started, ready) = observed.probed.get(&container.name).copied().unwrap_or((
        container.startup_probe.is_none(),
        container.readiness_probe.is_none(),
    ));
    entry["started"] = json!(running && started);
    let sidecar = container.restart_policy.as_deref() == Some("Always");
    entry["ready"] = json!(if init && !sidecar {
        exited(newest) && newest.exit_code == 0
    } else {
        running && started && ready
    });
    match observed.waiting.get(&container.name) {
        Some((reason, message)) if !running => {
            entry["state"] = json!({"waiting": {"reason": reason, "message": message}});
            if exited(newest) {
                entry["lastState"] = state(newest, observed.runtime_name, container);
            }
        }
        _ => {
            entry["state"] = state(newest, observed.runtime_name, container);
            if let Some(previous) = history.get(1).filter(|p| exited(p)) {
                entry["lastState"] = state(previous, observed.runtime_name, container);
            }
        }
    }
    entry
}

/// Everything the kubelet owns in `status`.
pub fn pod_status(pod: &Pod, previous: &Value, observed: &Observed) -> Value {
    let spec = pod.spec.clone().unwrap_or_default();
    let inits = spec.init_containers.clone().unwrap_or_default();
    let default_waiting = if inits.is_empty() {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    let init_statuses: Vec<Value> = inits
        .iter()
        .map(|c| container_status(c, observed, "PodInitializing", true))
        .collect();
    let statuses: Vec<Value> = spec
        .containers
        .iter()
        .map(|c| container_status(c, observed, default_waiting, false))
        .collect();
    let restart_policy = spec.restart_policy.as_deref().unwrap_or("Always");
    let mut phase = phase(
        &inits,
        &init_statuses,
        &statuses,
        restart_policy,
        observed.terminal,
    );
    // A terminal phase is never left.
    let before = previous["phase"].as_str().unwrap_or("");
    if before == "Succeeded" || before == "Failed" {
        phase = before.to_string();
    }
    let initialized_names: Vec<String> = inits
        .iter()
        .zip(&init_statuses)
        .filter(|(c, s)| {
            let sidecar = c.restart_policy.as_deref() == Some("Always");
            !(if sidecar {
                s["started"] == true
            } else {
                s["ready"] == true
            })
        })
        .map(|(c, _)| c.name.clone())
        .collect();
    let any_started = statuses.iter().any(|s| {
        s["started"] == true
            || !s["state"]["running"].is_null()
            || !s["state"]["terminated"].is_null()
    });
    let not_ready: Vec<String> = spec
        .containers
        .iter()
        .zip(&statuses)
        .filter(|(_, s)| s["ready"] != true)
        .map(|(c, _)| c.name.clone())
        .collect();
    let list = |names: &[String]| format!("[{}]", names.join(" "));
    let mut conditions = vec![
        (
            "PodReadyToStartContainers",
            observed.sandbox_ready && !observed.terminal,
            None,
            None,
        ),
        if phase == "Succeeded" {
            ("Initialized", true, Some("PodCompleted"), None)
        } else if initialized_names.is_empty() || any_started {
            ("Initialized", true, None, None)
        } else {
            (
                "Initialized",
                false,
                Some("ContainersNotInitialized"),
                Some(format!(
                    "containers with incomplete status: {}",
                    list(&initialized_names)
                )),
            )
        },
    ];
    let ready = if phase == "Succeeded" {
        (false, Some("PodCompleted"), None)
    } else if phase == "Failed" {
        (false, Some("PodFailed"), None)
    } else if not_ready.is_empty() {
        (true, None, None)
    } else {
        (
            false,
            Some("ContainersNotReady"),
            Some(format!(
                "containers with unready status: {}",
                list(&not_ready)
            )),
        )
    };
    conditions.push(("ContainersReady", ready.0, ready.1, ready.2.clone()));
    match gates_not_ready(&spec, previous).filter(|_| ready.0) {
        Some(message) => conditions.push((
            "Ready",
            false,
            Some("ReadinessGatesNotReady"),
            Some(message),
        )),
        None => conditions.push(("Ready", ready.0, ready.1, ready.2)),
    }
    let previous_conditions = previous["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut out: Vec<Value> = conditions
        .into_iter()
        .map(|(kind, status, reason, message)| {
            let status = if status { "True" } else { "False" };
            let since = previous_conditions
                .iter()
                .find(|c| c["type"] == kind && c["status"] == status)
                .and_then(|c| c["lastTransitionTime"].as_str().map(String::from))
                .unwrap_or_else(|| observed.now.to_string());
            let mut condition = json!({"type": kind, "status": status,
                                       "lastProbeTime": null, "lastTransitionTime": since});
            if let Some(reason) = reason {
                condition["reason"] = json!(reason);
            }
            if let Some(message) = message {
                condition["message"] = json!(message);
            }
            condition
        })
        .collect();
    // Conditions others own (PodScheduled, DisruptionTarget, readiness gates) stay.
    for condition in previous_conditions {
        let kind = condition["type"].as_str().unwrap_or_default();
        if !out.iter().any(|c| c["type"] == kind) {
            out.push(condition);
        }
    }
    let mut status = json!({
        "phase": phase,
        "conditions": out,
        "hostIP": observed.host_ip,
        "hostIPs": [{"ip": observed.host_ip}],
        "containerStatuses": statuses,
        "qosClass": qos_class(&spec),
        "startTime": previous.get("startTime").cloned().filter(|t| !t.is_null())
            .unwrap_or_else(|| json!(observed.now)),
    });
    if !init_statuses.is_empty() {
        status["initContainerStatuses"] = json!(init_statuses);
    }
    // Why a pod ended (an eviction, a deadline) stays with it.
    if phase == "Succeeded" || phase == "Failed" {
        for key in ["reason", "message"] {
            if let Some(value) = previous.get(key).filter(|v| v.is_string()) {
                status[key] = value.clone();
            }
        }
    }
    match &observed.pod_ip {
        Some(ip) if !ip.is_empty() => {
            status["podIP"] = json!(ip);
            status["podIPs"] = json!([{"ip": ip}]);
        }
        // Keep the address the pod had (upstream reports it until the pod is gone).
        _ => {
            if let Some(ip) = previous.get("podIP").filter(|ip| ip.is_string()) {
                status["podIP"] = ip.clone();
                status["podIPs"] = previous["podIPs"].clone();
            }
        }
    }
    status
}

/// Why the pod's readiness gates hold it back (upstream's messages), if they do.
fn gates_not_ready(spec: &k8s_openapi::api::core::v1::PodSpec, previous: &Value) -> Option<String> {
    let conditions = previous["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let problems: Vec<String> = spec
        .readiness_gates
        .iter()
        .flatten()
        .filter_map(|gate| {
            let kind = &gate.condition_type;
            match conditions.iter().find(|c| c["type"] == kind.as_str()) {
                None => Some(format!(
                    "corresponding condition of pod readiness gate \"{kind}\" does not exist."
                )),
                Some(c) if c["status"] != "True" => Some(format!(
                    "the status of pod readiness gate \"{kind}\" is not \"True\", but {}",
                    c["status"].as_str().unwrap_or("Unknown")
                )),
                Some(_) => None,
            }
        })
        .collect();
    (!problems.is_empty()).then(|| problems.join(", "))
}

/// `getPhase`.
fn phase(
    inits: &[Container],
    init_statuses: &[Value],
    statuses: &[Value],
    restart_policy: &str,
    terminal: bool,
) -> String {
    let (mut pending_init, mut failed_init, mut pending_sidecar) = (0, 0, 0);
    for (container, status) in inits.iter().zip(init_statuses) {
        let state = &status["state"];
        let last_failed = status["lastState"]["terminated"]["exitCode"]
            .as_i64()
            .is_some_and(|c| c != 0);
        if container.restart_policy.as_deref() == Some("Always") {
            if (!state["running"].is_null() && status["started"] != true)
                || (!state["waiting"].is_null() && status["lastState"]["terminated"].is_null())
            {
                pending_sidecar += 1;
            }
            continue;
        }
        if let Some(code) = state["terminated"]["exitCode"].as_i64() {
            if code != 0 {
                failed_init += 1;
            }
        } else if !state["waiting"].is_null() && last_failed {
            failed_init += 1;
        } else {
            pending_init += 1;
        }
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for status in statuses {
        let state = &status["state"];
        if !state["running"].is_null() {
            running += 1;
        } else if let Some(code) = state["terminated"]["exitCode"].as_i64() {
            stopped += 1;
            if code == 0 {
                succeeded += 1;
            }
        } else if !status["lastState"]["terminated"].is_null() {
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    let initialized = statuses
        .iter()
        .any(|s| !s["state"]["running"].is_null() || !s["state"]["terminated"].is_null());
    if failed_init > 0 && restart_policy == "Never" {
        return "Failed".into();
    }
    if pending_init > 0 || (pending_sidecar > 0 && !initialized) || waiting > 0 {
        return if terminal && running == 0 {
            terminal_phase(stopped, succeeded)
        } else {
            "Pending".into()
        };
    }
    if running > 0 {
        return "Running".into();
    }
    if stopped > 0 {
        if terminal {
            return terminal_phase(stopped, succeeded);
        }
        return match restart_policy {
            "Always" => "Running",
            _ if stopped == succeeded => "Succeeded",
            "Never" => "Failed",
            _ => "Running",
        }
        .into();
    }
    "Pending".into()
}

fn terminal_phase(stopped: usize, succeeded: usize) -> String {
    if stopped > 0 && stopped == succeeded {
        "Succeeded".into()
    } else {
        "Failed".into()
    }
}

/// Guaranteed, Burstable or BestEffort, as upstream's `GetPodQOS`.
pub fn qos_class(spec: &k8s_openapi::api::core::v1::PodSpec) -> &'static str {
    let all = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    let (mut any, mut guaranteed) = (false, true);
    for container in all {
        let resources = container.resources.clone().unwrap_or_default();
        let requests = resources.requests.unwrap_or_default();
        let limits = resources.limits.unwrap_or_default();
        for key in ["cpu", "memory"] {
            let limit = limits.get(key).map(|q| q.0.clone());
            let request = requests.get(key).map(|q| q.0.clone()).or(limit.clone());
            if request.is_some() || limit.is_some() {
                any = true;
            }
            match (request, limit) {
                (Some(r), Some(l))
                    if skiff_api::quantity::milli_value(&r)
                        == skiff_api::quantity::milli_value(&l) => {}
                _ => guaranteed = false,
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(
        name: &str,
        state: cri::ContainerState,
        exit: i32,
        attempt: u32,
    ) -> cri::ContainerStatus {
        cri::ContainerStatus {
            id: format!("{name}-{attempt}"),
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt,
            }),
            state: state as i32,
            created_at: 1,
            started_at: 1_700_000_000_000_000_000,
            finished_at: if state == cri::ContainerState::ContainerExited {
                1_700_000_001_000_000_000
            } else {
                0
            },
            exit_code: exit,
            reason: if exit == 0 {
                "Completed".into()
            } else {
                "Error".into()
            },
            image_ref: "sha256:abc".into(),
            ..Default::default()
        }
    }

    fn pod(policy: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u"},
            "spec": {"restartPolicy": policy, "containers": [{"name": "a", "image": "busybox"}, {"name": "b", "image": "busybox"}]},
            "status": {"conditions": [{"type": "PodScheduled", "status": "True"}]},
        }))
        .expect("pod")
    }

    fn status_of(
        pod: &Pod,
        containers: &HashMap<String, Vec<cri::ContainerStatus>>,
        waiting: &HashMap<String, (String, String)>,
        terminal: bool,
    ) -> Value {
        let observed = Observed {
            probed: &HashMap::new(),
            sandbox_ready: true,
            pod_ip: Some("10.1.0.5".into()),
            host_ip: "192.168.1.2",
            containers,
            waiting,
            terminal,
            runtime_name: "skiff",
            now: "2026-01-01T00:00:00Z",
        };
        let previous = serde_json::to_value(&pod.status).expect("status");
        pod_status(pod, &previous, &observed)
    }

    #[test]
    fn running_and_not_ready_containers_name_the_unready_ones() {
        let pod = pod("Always");
        let containers: HashMap<_, _> = [(
            "a".to_string(),
            vec![container("a", cri::ContainerState::ContainerRunning, 0, 0)],
        )]
        .into();
        let status = status_of(&pod, &containers, &HashMap::new(), false);
        assert_eq!(status["phase"], "Pending", "b has not started");
        let ready = status["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .find(|c| c["type"] == "Ready")
            .expect("Ready")
            .clone();
        assert_eq!(ready["reason"], "ContainersNotReady");
        assert_eq!(ready["message"], "containers with unready status: [b]");
        assert_eq!(status["containerStatuses"][0]["containerID"], "skiff://a-0");
        assert_eq!(
            status["containerStatuses"][1]["state"]["waiting"]["reason"],
            "ContainerCreating"
        );
        assert_eq!(status["podIP"], "10.1.0.5");
        assert_eq!(status["qosClass"], "BestEffort");
        assert!(
            status["conditions"]
                .as_array()
                .expect("c")
                .iter()
                .any(|c| c["type"] == "PodScheduled")
        );
    }

    #[test]
    fn phases_follow_the_restart_policy() {
        let done: HashMap<_, _> = [
            (
                "a".to_string(),
                vec![container("a", cri::ContainerState::ContainerExited, 0, 0)],
            ),
            (
                "b".to_string(),
                vec![container("b", cri::ContainerState::ContainerExited, 1, 0)],
            ),
        ]
        .into();
        assert_eq!(
            status_of(&pod("Never"), &done, &HashMap::new(), false)["phase"],
            "Failed"
        );
        assert_eq!(
            status_of(&pod("OnFailure"), &done, &HashMap::new(), false)["phase"],
            "Running"
        );
        assert_eq!(
            status_of(&pod("Always"), &done, &HashMap::new(), false)["phase"],
            "Running"
        );
        assert_eq!(
            status_of(&pod("Always"), &done, &HashMap::new(), true)["phase"],
            "Failed"
        );
        let ok: HashMap<_, _> = [
            (
                "a".to_string(),
                vec![container("a", cri::ContainerState::ContainerExited, 0, 0)],
            ),
            (
                "b".to_string(),
                vec![container("b", cri::ContainerState::ContainerExited, 0, 0)],
            ),
        ]
        .into();
        let status = status_of(&pod("OnFailure"), &ok, &HashMap::new(), false);
        assert_eq!(status["phase"], "Succeeded");
        assert_eq!(
            status["containerStatuses"][0]["state"]["terminated"]["reason"],
            "Completed"
        );
    }

    #[test]
    fn a_crash_loop_waits_with_the_last_termination() {
        let pod = pod("Always");
        let containers: HashMap<_, _> = [
            (
                "a".to_string(),
                vec![
                    container("a", cri::ContainerState::ContainerExited, 2, 3),
                    container("a", cri::ContainerState::ContainerExited, 2, 2),
                ],
            ),
            (
                "b".to_string(),
                vec![container("b", cri::ContainerState::ContainerRunning, 0, 0)],
            ),
        ]
        .into();
        let waiting: HashMap<_, _> = [(
            "a".to_string(),
            (
                "CrashLoopBackOff".to_string(),
                "back-off 40s restarting failed container=a pod=p_default(u)".to_string(),
            ),
        )]
        .into();
        let status = status_of(&pod, &containers, &waiting, false);
        let a = &status["containerStatuses"][0];
        assert_eq!(a["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert_eq!(a["lastState"]["terminated"]["exitCode"], 2);
        assert_eq!(a["restartCount"], 3);
        assert_eq!(status["phase"], "Running");
    }

    #[test]
    fn readiness_gates_hold_ready_back_and_unstarted_containers_have_no_start() {
        let mut pod = pod("Always");
        if let Some(spec) = pod.spec.as_mut() {
            spec.containers.truncate(1);
            spec.readiness_gates = Some(vec![k8s_openapi::api::core::v1::PodReadinessGate {
                condition_type: "example.com/lb".into(),
            }]);
        }
        let containers: HashMap<_, _> = [(
            "a".to_string(),
            vec![container("a", cri::ContainerState::ContainerRunning, 0, 0)],
        )]
        .into();
        let status = status_of(&pod, &containers, &HashMap::new(), false);
        let ready = status["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .find(|c| c["type"] == "Ready")
            .expect("Ready")
            .clone();
        assert_eq!(ready["reason"], "ReadinessGatesNotReady");
        assert_eq!(
            ready["message"],
            "corresponding condition of pod readiness gate \"example.com/lb\" does not exist."
        );
        let mut never_started = container("a", cri::ContainerState::ContainerExited, 128, 0);
        never_started.started_at = 0;
        let state = state(&never_started, "skiff", &Container::default());
        assert!(state["terminated"].get("startedAt").is_none(), "{state}");
        assert!(state["terminated"]["finishedAt"].is_string(), "{state}");
    }
}
