//! Clearing UDP flows that would keep going to the wrong place. UDP has no connection to
//! end, so conntrack keeps sending a client's packets where the first one went: to an
//! endpoint that is gone, or (for a Service that had no endpoints) nowhere. Upstream
//! kube-proxy deletes those entries; so do we, with the `conntrack` tool.

use std::net::Ipv4Addr;

use crate::model::{Protocol, ServicePort};

/// One `conntrack -D` filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Flows to `service`:`port` (a Service that had no endpoints got some).
    ToService { service: Ipv4Addr, port: u16 },
    /// Flows to a node port.
    ToNodePort { port: u16 },
    /// Flows to `service` answered by a removed `endpoint`.
    ToServiceFrom {
        service: Ipv4Addr,
        endpoint: Ipv4Addr,
    },
    /// Flows to a node port answered by a removed `endpoint`.
    ToNodePortFrom { port: u16, endpoint: Ipv4Addr },
}

impl Flow {
    fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = ["-D", "-p", "udp"].map(String::from).to_vec();
        let mut push = |k: &str, v: String| {
            args.push(k.into());
            args.push(v);
        };
        match self {
            Flow::ToService { service, port } => {
                push("--orig-dst", service.to_string());
                push("--orig-port-dst", port.to_string());
            }
            Flow::ToNodePort { port } => push("--orig-port-dst", port.to_string()),
            Flow::ToServiceFrom { service, endpoint } => {
                push("--orig-dst", service.to_string());
                push("--reply-src", endpoint.to_string());
            }
            Flow::ToNodePortFrom { port, endpoint } => {
                push("--orig-port-dst", port.to_string());
                push("--reply-src", endpoint.to_string());
            }
        }
        args
    }
}

/// The flows to clear when a UDP Service port goes from `old` to `new` (None: absent).
pub fn stale_flows(old: Option<&ServicePort>, new: Option<&ServicePort>) -> Vec<Flow> {
    let port = match (old, new) {
        (_, Some(p)) | (Some(p), None) => p,
        (None, None) => return Vec::new(),
    };
    if port.key.protocol != Protocol::Udp {
        return Vec::new();
    }
    let mut flows = Vec::new();
    let addresses = |p: &ServicePort| -> Vec<Ipv4Addr> {
        p.cluster_ips
            .iter()
            .chain(&p.external_ips)
            .chain(&p.load_balancer_ips)
            .copied()
            .collect()
    };
    let before: Vec<Ipv4Addr> = old
        .map(|p| p.all_used_endpoints().iter().map(|e| e.ip).collect())
        .unwrap_or_default();
    let after: Vec<Ipv4Addr> = new
        .map(|p| p.all_used_endpoints().iter().map(|e| e.ip).collect())
        .unwrap_or_default();
    if let Some(old) = old {
        for endpoint in before.iter().filter(|e| !after.contains(e)) {
            for service in addresses(old) {
                flows.push(Flow::ToServiceFrom {
                    service,
                    endpoint: *endpoint,
                });
            }
            if let Some(port) = old.node_port {
                flows.push(Flow::ToNodePortFrom {
                    port,
                    endpoint: *endpoint,
                });
            }
        }
    }
    if let Some(new) = new
        && before.is_empty()
        && !after.is_empty()
    {
        for service in addresses(new) {
            flows.push(Flow::ToService {
                service,
                port: new.key.port,
            });
        }
        if let Some(port) = new.node_port {
            flows.push(Flow::ToNodePort { port });
        }
    }
    flows
}

/// Deletes the flows (a missing tool or no matching entry is only logged).
pub async fn clear(flows: Vec<Flow>) {
    for flow in flows {
        let output = tokio::process::Command::new("conntrack")
            .args(flow.args())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output()
            .await;
        match output {
            // conntrack exits 1 when nothing matched.
            Ok(out) if out.status.success() || out.status.code() == Some(1) => {}
            Ok(out) => tracing::warn!(
                ?flow,
                stderr = %String::from_utf8_lossy(&out.stderr).trim(),
                "clearing UDP conntrack entries"
            ),
            Err(e) => tracing::warn!(?flow, error = %e, "running conntrack"),
        }
    }
}
