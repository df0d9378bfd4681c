//! The CRI RuntimeService over the engine: requests are checked here, the work (mounts,
//! CNI, the OCI runtime) runs on the blocking pool under the object's operation lock,
//! and answers are built from the records and the monitors' files.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use k8s_cri::v1::runtime_service_server::RuntimeService;
use k8s_cri::v1::*;
use tonic::{Request, Response, Status};

use crate::container::{self, Phase};
use crate::cri::Cri;
use crate::engine::{Container, Engine, Failure, Sandbox, lock};
use crate::{sandbox, stats};

type Reply<T> = Result<Response<T>, Status>;

impl From<Failure> for Status {
    fn from(failure: Failure) -> Status {
        match failure {
            Failure::NotFound(m) => Status::not_found(m),
            Failure::AlreadyExists(m) => Status::already_exists(m),
            Failure::Invalid(m) => Status::invalid_argument(m),
            Failure::Precondition(m) => Status::failed_precondition(m),
            Failure::Timeout(m) => Status::deadline_exceeded(m),
            // ENOSPC, as std and the OCI runtime (Go) spell it: a full disk.
            Failure::Internal(m) if m.to_lowercase().contains("no space left on device") => {
                Status::resource_exhausted(m)
            }
            Failure::Internal(m) => Status::unknown(m),
        }
    }
}

fn not_yet(rpc: &str) -> Status {
    Status::unimplemented(format!("{rpc} is not implemented by the skiff runtime yet"))
}

/// Exec and Attach need a running container.
async fn must_run(engine: &Arc<Engine>, container: Arc<Container>) -> Result<(), Status> {
    let id = container.id.clone();
    let running = blocking(engine, move |_| {
        Ok(container::phase(&container) == Phase::Running)
    })
    .await?;
    if running {
        Ok(())
    } else {
        Err(Status::failed_precondition(format!(
            "container {id} is not running"
        )))
    }
}

/// The streams an Exec or Attach asks for must make sense.
fn check_streams(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> Result<(), Status> {
    if tty && stderr {
        return Err(Status::invalid_argument(
            "tty and stderr cannot both be requested: a terminal has one output",
        ));
    }
    if !(stdin || stdout || stderr) {
        return Err(Status::invalid_argument(
            "one of stdin, stdout and stderr must be requested",
        ));
    }
    Ok(())
}

/// Runs blocking engine work off the async workers.
async fn blocking<T: Send + 'static>(
    engine: &Arc<Engine>,
    work: impl FnOnce(&Engine) -> Result<T, Failure> + Send + 'static,
) -> Result<T, Status> {
    let engine = engine.clone();
    tokio::task::spawn_blocking(move || work(&engine))
        .await
        .map_err(|e| Status::internal(format!("runtime task: {e}")))?
        .map_err(Status::from)
}

/// Blocking engine work that keeps an object's operation lock until it is done, even
/// when the request is cancelled meanwhile.
async fn locked<T: Send + 'static>(
    engine: &Arc<Engine>,
    op: tokio::sync::OwnedMutexGuard<()>,
    work: impl FnOnce(&Engine) -> Result<T, Failure> + Send + 'static,
) -> Result<T, Status> {
    blocking(engine, move |e| {
        let _op = op;
        work(e)
    })
    .await
}

fn sandbox_state(sandbox: &Sandbox) -> PodSandboxState {
    if sandbox::is_ready(&lock(&sandbox.record)) {
        PodSandboxState::SandboxReady
    } else {
        PodSandboxState::SandboxNotready
    }
}

fn sandbox_status(sandbox: &Sandbox) -> PodSandboxStatus {
    let record = lock(&sandbox.record).clone();
    let mut ips = record.ips.iter();
    let network = PodSandboxNetworkStatus {
        ip: ips.next().cloned().unwrap_or_default(),
        additional_ips: ips.map(|ip| PodIp { ip: ip.clone() }).collect(),
    };
    let options = sandbox
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone());
    PodSandboxStatus {
        id: sandbox.id.clone(),
        metadata: sandbox.config.metadata.clone(),
        state: sandbox_state(sandbox) as i32,
        created_at: record.created_at,
        network: Some(network),
        linux: Some(LinuxPodSandboxStatus {
            namespaces: Some(Namespace { options }),
        }),
        labels: sandbox.config.labels.clone(),
        annotations: sandbox.config.annotations.clone(),
        ..Default::default()
    }
}

fn container_state(phase: &Phase) -> ContainerState {
    match phase {
        Phase::Created => ContainerState::ContainerCreated,
        Phase::Running => ContainerState::ContainerRunning,
        Phase::Exited(..) => ContainerState::ContainerExited,
        Phase::Unknown => ContainerState::ContainerUnknown,
    }
}

fn container_status(container: &Container, phase: &Phase) -> ContainerStatus {
    let record = lock(&container.record).clone();
    let (finished_at, exit_code, reason, message) = match phase {
        Phase::Exited(exit, message) => (
            exit.finished_at,
            exit.exit_code,
            exit.reason.clone(),
            message.clone(),
        ),
        _ => (0, 0, String::new(), String::new()),
    };
    ContainerStatus {
        id: container.id.clone(),
        metadata: container.config.metadata.clone(),
        state: container_state(phase) as i32,
        created_at: record.created_at,
        started_at: record.started_at,
        finished_at,
        exit_code,
        image: Some(ImageSpec {
            image: record.image_name.clone(),
            ..Default::default()
        }),
        image_ref: record.image_id.clone(),
        image_id: record.image_id.clone(),
        reason,
        message,
        labels: container.config.labels.clone(),
        annotations: container.config.annotations.clone(),
        mounts: container.config.mounts.clone(),
        log_path: record
            .log_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        user: Some(ContainerUser {
            linux: Some(LinuxContainerUser {
                uid: record.user.0,
                gid: record.user.1,
                supplemental_groups: record.user.2.clone(),
            }),
        }),
        ..Default::default()
    }
}

fn labels_match(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[tonic::async_trait]
impl RuntimeService for Cri {
    type GetContainerEventsStream = Pin<
        Box<dyn futures::Stream<Item = Result<ContainerEventResponse, Status>> + Send + 'static>,
    >;

    async fn version(&self, _: Request<VersionRequest>) -> Reply<VersionResponse> {
        Ok(Response::new(VersionResponse {
            version: "0.1.0".into(),
            runtime_name: crate::cri::RUNTIME_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: "v1".into(),
        }))
    }

    /// RuntimeReady when the OCI runtime runs; NetworkReady when a CNI network is
    /// configured.
    async fn status(&self, request: Request<StatusRequest>) -> Reply<StatusResponse> {
        let verbose = request.get_ref().verbose;
        let (oci, network) = blocking(&self.engine, |e| {
            let cni = &e.settings.cni;
            let network = cni
                .network()
                .and_then(|n| cni.status(&n).map(|()| n.name).map_err(|e| e.to_string()));
            Ok((e.oci_version(), network))
        })
        .await?;
        let runtime = match &oci {
            Ok(_) => RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: true,
                ..Default::default()
            },
            Err(e) => RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: false,
                reason: "OCIRuntimeNotReady".into(),
                message: format!("the OCI runtime cannot run: {e}"),
            },
        };
        let net = match &network {
            Ok(_) => RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: true,
                ..Default::default()
            },
            Err(e) => RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: false,
                reason: "NetworkPluginNotReady".into(),
                message: format!("Network plugin returns error: cni plugin not initialized: {e}"),
            },
        };
        let mut info = HashMap::new();
        if verbose {
            let detail = serde_json::json!({
                "ociRuntime": oci.as_ref().ok(),
                "cniNetwork": network.as_ref().ok(),
                "cniConfDir": self.engine.settings.cni.conf_dir,
                "cniBinDirs": self.engine.settings.cni.bin_dirs,
            });
            info.insert("config".to_string(), detail.to_string());
        }
        Ok(Response::new(StatusResponse {
            status: Some(RuntimeStatus {
                conditions: vec![runtime, net],
            }),
            info,
            ..Default::default()
        }))
    }

    async fn get_container_events(
        &self,
        _: Request<GetEventsRequest>,
    ) -> Reply<Self::GetContainerEventsStream> {
        Err(not_yet("GetContainerEvents"))
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<RunPodSandboxRequest>,
    ) -> Reply<RunPodSandboxResponse> {
        let request = request.into_inner();
        if !request.runtime_handler.is_empty() {
            return Err(Status::invalid_argument(format!(
                "runtime handler {:?} is not configured (the skiff runtime has only the default)",
                request.runtime_handler
            )));
        }
        let config = request
            .config
            .ok_or_else(|| Status::invalid_argument("config is required"))?;
        let id = blocking(&self.engine, move |e| sandbox::run(e, config)).await?;
        Ok(Response::new(RunPodSandboxResponse { pod_sandbox_id: id }))
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<StopPodSandboxRequest>,
    ) -> Reply<StopPodSandboxResponse> {
        let sandbox = self.engine.sandbox(&request.get_ref().pod_sandbox_id)?;
        let op = sandbox.op.clone().lock_owned().await;
        locked(&self.engine, op, move |e| sandbox::stop(e, &sandbox)).await?;
        Ok(Response::new(StopPodSandboxResponse {}))
    }

    /// Removing a sandbox that is not there succeeds, as the CRI asks.
    async fn remove_pod_sandbox(
        &self,
        request: Request<RemovePodSandboxRequest>,
    ) -> Reply<RemovePodSandboxResponse> {
        let sandbox = match self.engine.sandbox(&request.get_ref().pod_sandbox_id) {
            Ok(sandbox) => sandbox,
            Err(Failure::NotFound(_)) => return Ok(Response::new(RemovePodSandboxResponse {})),
            Err(e) => return Err(e.into()),
        };
        let op = sandbox.op.clone().lock_owned().await;
        locked(&self.engine, op, move |e| sandbox::remove(e, &sandbox)).await?;
        Ok(Response::new(RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<PodSandboxStatusRequest>,
    ) -> Reply<PodSandboxStatusResponse> {
        let sandbox = self.engine.sandbox(&request.get_ref().pod_sandbox_id)?;
        let mut info = HashMap::new();
        if request.get_ref().verbose {
            let record = lock(&sandbox.record).clone();
            info.insert(
                "info".to_string(),
                serde_json::to_string(&record).unwrap_or_default(),
            );
        }
        Ok(Response::new(PodSandboxStatusResponse {
            status: Some(sandbox_status(&sandbox)),
            info,
            ..Default::default()
        }))
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<ListPodSandboxRequest>,
    ) -> Reply<ListPodSandboxResponse> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let sandboxes: Vec<Arc<Sandbox>> = lock(&self.engine.sandboxes).values().cloned().collect();
        let items = sandboxes
            .iter()
            .filter(|s| filter.id.is_empty() || s.id.starts_with(&filter.id))
            .filter(|s| {
                filter
                    .state
                    .as_ref()
                    .is_none_or(|f| f.state == sandbox_state(s) as i32)
            })
            .filter(|s| labels_match(&s.config.labels, &filter.label_selector))
            .map(|s| PodSandbox {
                id: s.id.clone(),
                metadata: s.config.metadata.clone(),
                state: sandbox_state(s) as i32,
                created_at: lock(&s.record).created_at,
                labels: s.config.labels.clone(),
                annotations: s.config.annotations.clone(),
                runtime_handler: String::new(),
            })
            .collect();
        Ok(Response::new(ListPodSandboxResponse { items }))
    }

    async fn create_container(
        &self,
        request: Request<CreateContainerRequest>,
    ) -> Reply<CreateContainerResponse> {
        let request = request.into_inner();
        let sandbox = self.engine.sandbox(&request.pod_sandbox_id)?;
        let config = request
            .config
            .ok_or_else(|| Status::invalid_argument("config is required"))?;
        let op = sandbox.op.clone().lock_owned().await;
        let id = locked(&self.engine, op, move |e| {
            container::create(e, &sandbox, config)
        })
        .await?;
        Ok(Response::new(CreateContainerResponse { container_id: id }))
    }

    async fn start_container(
        &self,
        request: Request<StartContainerRequest>,
    ) -> Reply<StartContainerResponse> {
        let container = self.engine.container(&request.get_ref().container_id)?;
        let op = container.op.clone().lock_owned().await;
        locked(&self.engine, op, move |e| container::start(e, &container)).await?;
        Ok(Response::new(StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        request: Request<StopContainerRequest>,
    ) -> Reply<StopContainerResponse> {
        let timeout = request.get_ref().timeout;
        let container = self.engine.container(&request.get_ref().container_id)?;
        let op = container.op.clone().lock_owned().await;
        locked(&self.engine, op, move |e| {
            container::stop(e, &container, timeout)
        })
        .await?;
        Ok(Response::new(StopContainerResponse {}))
    }

    /// Removing a container that is not there succeeds, as the CRI asks.
    async fn remove_container(
        &self,
        request: Request<RemoveContainerRequest>,
    ) -> Reply<RemoveContainerResponse> {
        let container = match self.engine.container(&request.get_ref().container_id) {
            Ok(container) => container,
            Err(Failure::NotFound(_)) => return Ok(Response::new(RemoveContainerResponse {})),
            Err(e) => return Err(e.into()),
        };
        let op = container.op.clone().lock_owned().await;
        locked(&self.engine, op, move |e| container::remove(e, &container)).await?;
        Ok(Response::new(RemoveContainerResponse {}))
    }

    async fn container_status(
        &self,
        request: Request<ContainerStatusRequest>,
    ) -> Reply<ContainerStatusResponse> {
        let container = self.engine.container(&request.get_ref().container_id)?;
        let verbose = request.get_ref().verbose;
        let (status, info) = blocking(&self.engine, move |_| {
            let phase = container::phase(&container);
            let mut info = HashMap::new();
            if verbose {
                let record = lock(&container.record).clone();
                let spec = std::fs::read_to_string(container.dir.join("config.json"))
                    .ok()
                    .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok());
                let detail = serde_json::json!({"pid": record.pid, "sandboxID": record.sandbox_id,
                                                "runtimeSpec": spec});
                info.insert("info".to_string(), detail.to_string());
            }
            Ok((container_status(&container, &phase), info))
        })
        .await?;
        Ok(Response::new(ContainerStatusResponse {
            status: Some(status),
            info,
        }))
    }

    async fn list_containers(
        &self,
        request: Request<ListContainersRequest>,
    ) -> Reply<ListContainersResponse> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let containers = blocking(&self.engine, move |e| {
            let all: Vec<Arc<Container>> = lock(&e.containers).values().cloned().collect();
            Ok(all
                .iter()
                .filter(|c| filter.id.is_empty() || c.id.starts_with(&filter.id))
                .filter(|c| {
                    filter.pod_sandbox_id.is_empty()
                        || lock(&c.record)
                            .sandbox_id
                            .starts_with(&filter.pod_sandbox_id)
                })
                .filter(|c| labels_match(&c.config.labels, &filter.label_selector))
                .filter_map(|c| {
                    let state = container_state(&container::phase(c)) as i32;
                    if filter.state.as_ref().is_some_and(|f| f.state != state) {
                        return None;
                    }
                    let record = lock(&c.record).clone();
                    Some(k8s_cri::v1::Container {
                        id: c.id.clone(),
                        pod_sandbox_id: record.sandbox_id,
                        metadata: c.config.metadata.clone(),
                        image: Some(ImageSpec {
                            image: record.image_name,
                            ..Default::default()
                        }),
                        image_ref: record.image_id.clone(),
                        image_id: record.image_id,
                        state,
                        created_at: record.created_at,
                        labels: c.config.labels.clone(),
                        annotations: c.config.annotations.clone(),
                    })
                })
                .collect())
        })
        .await?;
        Ok(Response::new(ListContainersResponse { containers }))
    }

    async fn update_container_resources(
        &self,
        request: Request<UpdateContainerResourcesRequest>,
    ) -> Reply<UpdateContainerResourcesResponse> {
        let request = request.into_inner();
        let container = self.engine.container(&request.container_id)?;
        let resources = request
            .linux
            .ok_or_else(|| Status::invalid_argument("linux resources are required"))?;
        let op = container.op.clone().lock_owned().await;
        locked(&self.engine, op, move |e| {
            container::update_resources(e, &container, &resources)
        })
        .await?;
        Ok(Response::new(UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        request: Request<ReopenContainerLogRequest>,
    ) -> Reply<ReopenContainerLogResponse> {
        let container = self.engine.container(&request.get_ref().container_id)?;
        blocking(&self.engine, move |_| container::reopen_log(&container)).await?;
        Ok(Response::new(ReopenContainerLogResponse {}))
    }

    async fn exec_sync(&self, request: Request<ExecSyncRequest>) -> Reply<ExecSyncResponse> {
        let request = request.into_inner();
        let container = self.engine.container(&request.container_id)?;
        let output =
            container::exec_sync(self.engine.clone(), container, request.cmd, request.timeout)
                .await?;
        Ok(Response::new(ExecSyncResponse {
            stdout: output.stdout,
            stderr: output.stderr,
            exit_code: output.exit_code,
        }))
    }

    /// A one-time URL on the streaming server (WebSocket channel protocol).
    async fn exec(&self, request: Request<ExecRequest>) -> Reply<ExecResponse> {
        let request = request.into_inner();
        if request.cmd.is_empty() {
            return Err(Status::invalid_argument("cmd must not be empty"));
        }
        check_streams(request.tty, request.stdin, request.stdout, request.stderr)?;
        let container = self.engine.container(&request.container_id)?;
        let id = container.id.clone();
        must_run(&self.engine, container).await?;
        let url = self.streams.exec_url(crate::streaming::PendingExec {
            container_id: id,
            cmd: request.cmd,
            stdin: request.stdin,
            stdout: request.stdout,
            stderr: request.stderr,
            tty: request.tty,
        });
        Ok(Response::new(ExecResponse { url }))
    }
    /// A one-time URL on the streaming server, to the container's own streams.
    async fn attach(&self, request: Request<AttachRequest>) -> Reply<AttachResponse> {
        let request = request.into_inner();
        check_streams(request.tty, request.stdin, request.stdout, request.stderr)?;
        let container = self.engine.container(&request.container_id)?;
        if request.stdin && !container.config.stdin {
            return Err(Status::invalid_argument(format!(
                "container {} was not created with stdin",
                container.id
            )));
        }
        let pending = crate::streaming::PendingAttach {
            dir: container.dir.clone(),
            stdin: request.stdin,
            stdout: request.stdout,
            stderr: request.stderr,
            // The container's terminal decides, whatever the client thought.
            tty: container.config.tty,
        };
        must_run(&self.engine, container).await?;
        let url = self.streams.attach_url(pending);
        Ok(Response::new(AttachResponse { url }))
    }
    /// A one-time URL on the streaming server; connections go to the pod's loopback.
    async fn port_forward(
        &self,
        request: Request<PortForwardRequest>,
    ) -> Reply<PortForwardResponse> {
        let request = request.into_inner();
        let sandbox = self.engine.sandbox(&request.pod_sandbox_id)?;
        let record = lock(&sandbox.record).clone();
        if !record.ready {
            return Err(Status::failed_precondition(format!(
                "pod sandbox {} is not ready",
                sandbox.id
            )));
        }
        let ports = request
            .port
            .iter()
            .map(|p| {
                u16::try_from(*p)
                    .map_err(|_| Status::invalid_argument(format!("port {p} is out of range")))
            })
            .collect::<Result<Vec<u16>, Status>>()?;
        let netns = (!record.host_network).then(|| sandbox.dir.join("ns/net"));
        let url = self
            .streams
            .forward_url(crate::streaming::PendingForward { netns, ports });
        Ok(Response::new(PortForwardResponse { url }))
    }
    async fn container_stats(
        &self,
        request: Request<ContainerStatsRequest>,
    ) -> Reply<ContainerStatsResponse> {
        let container = self.engine.container(&request.get_ref().container_id)?;
        let stats = blocking(&self.engine, move |e| Ok(stats::container(e, &container))).await?;
        Ok(Response::new(ContainerStatsResponse { stats: Some(stats) }))
    }
    async fn pod_sandbox_stats(
        &self,
        request: Request<PodSandboxStatsRequest>,
    ) -> Reply<PodSandboxStatsResponse> {
        let sandbox = self.engine.sandbox(&request.get_ref().pod_sandbox_id)?;
        let stats = blocking(&self.engine, move |e| Ok(stats::sandbox(e, &sandbox))).await?;
        Ok(Response::new(PodSandboxStatsResponse {
            stats: Some(stats),
        }))
    }
    async fn checkpoint_container(
        &self,
        _: Request<CheckpointContainerRequest>,
    ) -> Reply<CheckpointContainerResponse> {
        Err(not_yet("CheckpointContainer"))
    }
    /// Statistics of running containers matching the filter.
    async fn list_container_stats(
        &self,
        request: Request<ListContainerStatsRequest>,
    ) -> Reply<ListContainerStatsResponse> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let stats = blocking(&self.engine, move |e| {
            let all: Vec<Arc<Container>> = lock(&e.containers).values().cloned().collect();
            Ok(all
                .iter()
                .filter(|c| filter.id.is_empty() || c.id.starts_with(&filter.id))
                .filter(|c| {
                    filter.pod_sandbox_id.is_empty()
                        || lock(&c.record)
                            .sandbox_id
                            .starts_with(&filter.pod_sandbox_id)
                })
                .filter(|c| labels_match(&c.config.labels, &filter.label_selector))
                .filter(|c| container::phase(c) == Phase::Running)
                .map(|c| stats::container(e, c))
                .collect())
        })
        .await?;
        Ok(Response::new(ListContainerStatsResponse { stats }))
    }
    /// Statistics of ready sandboxes matching the filter.
    async fn list_pod_sandbox_stats(
        &self,
        request: Request<ListPodSandboxStatsRequest>,
    ) -> Reply<ListPodSandboxStatsResponse> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let stats = blocking(&self.engine, move |e| {
            let all: Vec<Arc<Sandbox>> = lock(&e.sandboxes).values().cloned().collect();
            Ok(all
                .iter()
                .filter(|s| filter.id.is_empty() || s.id.starts_with(&filter.id))
                .filter(|s| labels_match(&s.config.labels, &filter.label_selector))
                .filter(|s| lock(&s.record).ready)
                .map(|s| stats::sandbox(e, s))
                .collect())
        })
        .await?;
        Ok(Response::new(ListPodSandboxStatsResponse { stats }))
    }
    async fn list_metric_descriptors(
        &self,
        _: Request<ListMetricDescriptorsRequest>,
    ) -> Reply<ListMetricDescriptorsResponse> {
        Ok(Response::new(ListMetricDescriptorsResponse::default()))
    }
    async fn list_pod_sandbox_metrics(
        &self,
        _: Request<ListPodSandboxMetricsRequest>,
    ) -> Reply<ListPodSandboxMetricsResponse> {
        Ok(Response::new(ListPodSandboxMetricsResponse::default()))
    }
    async fn update_runtime_config(
        &self,
        _: Request<UpdateRuntimeConfigRequest>,
    ) -> Reply<UpdateRuntimeConfigResponse> {
        Ok(Response::new(UpdateRuntimeConfigResponse::default()))
    }
    /// The cgroup driver, which kubelets (1.31+) take from the runtime: cgroupfs (this
    /// machine kind has no systemd).
    async fn runtime_config(
        &self,
        _: Request<RuntimeConfigRequest>,
    ) -> Reply<RuntimeConfigResponse> {
        Ok(Response::new(RuntimeConfigResponse {
            linux: Some(LinuxRuntimeConfiguration {
                cgroup_driver: CgroupDriver::Cgroupfs as i32,
            }),
        }))
    }
}
