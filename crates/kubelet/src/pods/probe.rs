//! Probes, as upstream's prober runs them: startup first (until it succeeds the
//! container is not started and the others wait), then liveness and readiness, each
//! every `periodSeconds` after `initialDelaySeconds`, with `timeoutSeconds`, counting
//! consecutive results against `successThreshold` and `failureThreshold`. A failed
//! startup or liveness probe kills the container (the restart policy decides what
//! follows); readiness decides whether the container, and so the pod, is ready.
//! Handlers: exec (CRI ExecSync), and httpGet, tcpSocket and grpc against the pod IP
//! (`handlers.rs`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::handlers;
use crate::cri::Runtime;

/// One probe's counters.
#[derive(Default)]
struct Counter {
    next: Option<Instant>,
    successes: i32,
    failures: i32,
}

/// What the probes say of one container instance.
pub struct State {
    container_id: String,
    pub started: bool,
    pub ready: bool,
    startup: Counter,
    liveness: Counter,
    readiness: Counter,
}

/// What a round of probing decided.
pub enum Verdict {
    Fine,
    /// Kill the container: the message says which probe failed and how.
    Kill(String),
}

/// The probes' state of each container, by name.
#[derive(Default)]
pub struct Prober {
    states: HashMap<String, State>,
}

fn seconds(value: Option<i32>, default: i32) -> Duration {
    Duration::from_secs(u64::try_from(value.unwrap_or(default).max(0)).unwrap_or(0))
}

impl Prober {
    /// (started, ready) of a container; without probes, running is both.
    pub fn get(&self, name: &str, id: &str) -> Option<(bool, bool)> {
        self.states
            .get(name)
            .filter(|s| s.container_id == id)
            .map(|s| (s.started, s.ready))
    }

    pub fn forget(&mut self, name: &str) {
        self.states.remove(name);
    }

    /// Runs the probes that are due for a running container.
    pub async fn probe(
        &mut self,
        runtime: &Runtime,
        container: &Container,
        status: &cri::ContainerStatus,
        pod_ip: &str,
    ) -> Verdict {
        let fresh = |status: &cri::ContainerStatus| State {
            container_id: status.id.clone(),
            started: container.startup_probe.is_none(),
            ready: container.readiness_probe.is_none(),
            startup: Counter::default(),
            liveness: Counter::default(),
            readiness: Counter::default(),
        };
        let state = self
            .states
            .entry(container.name.clone())
            .or_insert_with(|| fresh(status));
        if state.container_id != status.id {
            *state = fresh(status);
        }
        // When the container started, on this process's clock.
        let since_start = Duration::from_nanos(
            u64::try_from(crate::status_now_nanos().saturating_sub(status.started_at)).unwrap_or(0),
        );
        let started_at = Instant::now()
            .checked_sub(since_start)
            .unwrap_or_else(Instant::now);
        let target = Target {
            runtime,
            container,
            id: &status.id,
            pod_ip,
        };
        if !state.started {
            if let Some(probe) = &container.startup_probe {
                match run_counted(&mut state.startup, probe, started_at, &target).await {
                    Some((true, _)) => state.started = true,
                    Some((false, message))
                        if state.startup.failures >= threshold(probe.failure_threshold, 3) =>
                    {
                        return Verdict::Kill(format!("Startup probe failed: {message}"));
                    }
                    _ => {}
                }
            }
            if !state.started {
                return Verdict::Fine;
            }
        }
        if let Some(probe) = &container.liveness_probe
            && let Some((false, message)) =
                run_counted(&mut state.liveness, probe, started_at, &target).await
            && state.liveness.failures >= threshold(probe.failure_threshold, 3)
        {
            return Verdict::Kill(format!("Liveness probe failed: {message}"));
        }
        if let Some(probe) = &container.readiness_probe {
            match run_counted(&mut state.readiness, probe, started_at, &target).await {
                Some((true, _))
                    if state.readiness.successes >= threshold(probe.success_threshold, 1) =>
                {
                    state.ready = true;
                }
                Some((false, _))
                    if state.readiness.failures >= threshold(probe.failure_threshold, 3) =>
                {
                    state.ready = false;
                }
                _ => {}
            }
        }
        Verdict::Fine
    }
}

fn threshold(value: Option<i32>, default: i32) -> i32 {
    value.unwrap_or(default).max(1)
}

struct Target<'a> {
    runtime: &'a Runtime,
    container: &'a Container,
    id: &'a str,
    pod_ip: &'a str,
}

/// Runs a lifecycle hook (postStart, preStop) in or against a container, within
/// `timeout`: exec, httpGet or sleep, as upstream's handler runner.
pub async fn hook(
    runtime: &Runtime,
    container: &Container,
    id: &str,
    pod_ip: &str,
    handler: &k8s_openapi::api::core::v1::LifecycleHandler,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(sleep) = &handler.sleep {
        let wanted = Duration::from_secs(u64::try_from(sleep.seconds.max(0)).unwrap_or(0));
        tokio::time::sleep(wanted.min(timeout)).await;
        return Ok(());
    }
    let probe = Probe {
        exec: handler.exec.clone(),
        http_get: handler.http_get.clone(),
        tcp_socket: handler.tcp_socket.clone(),
        ..Default::default()
    };
    let target = Target {
        runtime,
        container,
        id,
        pod_ip,
    };
    let timeout = timeout.max(Duration::from_secs(1));
    match tokio::time::timeout(timeout, run(&probe, &target, timeout)).await {
        Ok(result) => result,
        Err(_) => Err(format!("did not finish within {}s", timeout.as_secs())),
    }
}

/// Runs `probe` if it is due; its result (and why it failed) then.
async fn run_counted(
    counter: &mut Counter,
    probe: &Probe,
    started_at: Instant,
    target: &Target<'_>,
) -> Option<(bool, String)> {
    let now = Instant::now();
    let next = *counter
        .next
        .get_or_insert(started_at + seconds(probe.initial_delay_seconds, 0));
    if now < next {
        return None;
    }
    counter.next = Some(now + seconds(probe.period_seconds, 10).max(Duration::from_secs(1)));
    let timeout = seconds(probe.timeout_seconds, 1).max(Duration::from_secs(1));
    let result = match tokio::time::timeout(timeout, run(probe, target, timeout)).await {
        Ok(result) => result,
        Err(_) => Err(format!("timeout: no answer within {}s", timeout.as_secs())),
    };
    match result {
        Ok(()) => {
            counter.successes += 1;
            counter.failures = 0;
            Some((true, String::new()))
        }
        Err(message) => {
            counter.failures += 1;
            counter.successes = 0;
            Some((false, message))
        }
    }
}

/// The port a probe names (a number, or a container port's name).
fn port(container: &Container, port: &IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("port {n} is out of range")),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("no container port named {name:?}")),
    }
}

async fn run(probe: &Probe, target: &Target<'_>, timeout: Duration) -> Result<(), String> {
    if let Some(exec) = &probe.exec {
        let cmd = exec.command.clone().unwrap_or_default();
        let seconds = i64::try_from(timeout.as_secs()).unwrap_or(1);
        let out = target
            .runtime
            .exec_sync(target.id, cmd, seconds)
            .await
            .map_err(|e| e.message().to_string())?;
        if out.exit_code == 0 {
            return Ok(());
        }
        let mut text = String::from_utf8_lossy(&out.stdout).to_string();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        return Err(format!(
            "command exited with {}: {}",
            out.exit_code,
            text.trim()
        ));
    }
    if let Some(tcp) = &probe.tcp_socket {
        let port = port(target.container, &tcp.port)?;
        return handlers::tcp(tcp, target.pod_ip, port).await;
    }
    if let Some(http) = &probe.http_get {
        let port = port(target.container, &http.port)?;
        return handlers::http(http, target.pod_ip, port).await;
    }
    if let Some(grpc) = &probe.grpc {
        return handlers::grpc(grpc, target.pod_ip, timeout).await;
    }
    Err("the probe has no handler".into())
}
