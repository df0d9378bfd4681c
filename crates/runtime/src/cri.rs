//! The CRI v1 gRPC services. The ImageService answers from the image store; the
//! RuntimeService reports its version and status, lists nothing yet, and answers
//! `Unimplemented` (with the RPC named) for what needs sandboxes and containers, which
//! the next parts of issue 5 add.

use std::pin::Pin;
use std::sync::Arc;

use k8s_cri::v1::image_service_server::{ImageService, ImageServiceServer};
use k8s_cri::v1::runtime_service_server::{RuntimeService, RuntimeServiceServer};
use k8s_cri::v1::*;
use tonic::{Request, Response, Status};

use crate::images::{ImageError, ImageRecord, ImageStore, config_of};

type Reply<T> = Result<Response<T>, Status>;

/// The name and version `Version` reports.
pub const RUNTIME_NAME: &str = "skiff";

/// Both services over one store, ready to serve.
pub(crate) fn router(store: ImageStore) -> tonic::transport::server::Router {
    let cri = Cri {
        images: Arc::new(store),
    };
    tonic::transport::Server::builder()
        .add_service(RuntimeServiceServer::new(cri.clone()))
        .add_service(ImageServiceServer::new(cri))
}

#[derive(Clone)]
struct Cri {
    images: Arc<ImageStore>,
}

fn not_yet(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "{rpc}: the skiff runtime does not run pod sandboxes or containers yet"
    ))
}

/// Runs a store operation off the async workers: the store does file I/O and may wait
/// for an import's lock.
async fn blocking<T: Send + 'static>(
    store: &Arc<ImageStore>,
    op: impl FnOnce(&ImageStore) -> Result<T, ImageError> + Send + 'static,
) -> Result<T, Status> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || op(&store))
        .await
        .map_err(|e| Status::internal(format!("image store task: {e}")))?
        .map_err(internal)
}

fn internal(e: ImageError) -> Status {
    match e {
        ImageError::NotFound(name) => Status::not_found(format!("image {name:?} not found")),
        ImageError::Reference(e) => Status::invalid_argument(e.to_string()),
        other => Status::internal(other.to_string()),
    }
}

fn image_of(record: &ImageRecord) -> Image {
    Image {
        id: record.id.clone(),
        repo_tags: record.repo_tags.clone(),
        repo_digests: record.repo_digests.clone(),
        size: record.size,
        // Imported images cannot be pulled again: the kubelet's image GC must keep them.
        pinned: true,
        spec: Some(ImageSpec {
            image: record.id.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The image a request's spec names; `InvalidArgument` without one.
fn named(spec: Option<&ImageSpec>) -> Result<&str, Status> {
    spec.map(|s| s.image.as_str())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Status::invalid_argument("an image must be named (ImageSpec.image)"))
}

/// The user and uid an image's config runs as (a numeric user is a uid).
fn user_of(image: &mut Image, config: &serde_json::Value) {
    let user = config["config"]["User"].as_str().unwrap_or_default();
    let user = user.split(':').next().unwrap_or_default();
    match user.parse::<i64>() {
        Ok(uid) => image.uid = Some(Int64Value { value: uid }),
        Err(_) if !user.is_empty() => image.username = user.to_string(),
        Err(_) => {}
    }
}

#[tonic::async_trait]
impl ImageService for Cri {
    async fn list_images(&self, request: Request<ListImagesRequest>) -> Reply<ListImagesResponse> {
        let filter = request
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|i| i.image)
            .filter(|i| !i.is_empty());
        let images = match filter {
            Some(name) => blocking(&self.images, move |s| s.find(&name))
                .await?
                .into_iter()
                .collect(),
            None => blocking(&self.images, |s| s.list()).await?,
        };
        Ok(Response::new(ListImagesResponse {
            images: images.iter().map(image_of).collect(),
        }))
    }

    /// An image that is not there is not an error: the response has no image.
    async fn image_status(
        &self,
        request: Request<ImageStatusRequest>,
    ) -> Reply<ImageStatusResponse> {
        let request = request.into_inner();
        let name = named(request.image.as_ref())?.to_string();
        let found = blocking(&self.images, move |s| {
            let Some(record) = s.find(&name)? else {
                return Ok(None);
            };
            // Removed between the two reads: as if it were not there.
            match config_of(s, &record) {
                Ok(config) => Ok(Some((record, config))),
                Err(ImageError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    Ok(None)
                }
                Err(e) => Err(e),
            }
        })
        .await?;
        let Some((record, config)) = found else {
            return Ok(Response::new(ImageStatusResponse::default()));
        };
        let mut image = image_of(&record);
        user_of(&mut image, &config);
        let mut info = std::collections::HashMap::new();
        if request.verbose {
            let detail = serde_json::json!({"imageSpec": config, "layers": record.layers});
            info.insert("info".to_string(), detail.to_string());
        }
        Ok(Response::new(ImageStatusResponse {
            image: Some(image),
            info,
        }))
    }

    async fn pull_image(&self, request: Request<PullImageRequest>) -> Reply<PullImageResponse> {
        let name = named(request.get_ref().image.as_ref())?.to_string();
        // Imported images are "pulled" already.
        let lookup = name.clone();
        if let Some(record) = blocking(&self.images, move |s| s.find(&lookup)).await? {
            return Ok(Response::new(PullImageResponse {
                image_ref: record.id,
            }));
        }
        Err(Status::unimplemented(format!(
            "pulling {name} from a registry is not implemented yet; import it with `skiff images import`"
        )))
    }

    async fn remove_image(
        &self,
        request: Request<RemoveImageRequest>,
    ) -> Reply<RemoveImageResponse> {
        let name = named(request.get_ref().image.as_ref())?.to_string();
        blocking(&self.images, move |s| match s.remove(&name) {
            // Removing what is not there succeeds, as the CRI asks.
            Ok(_) | Err(ImageError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        })
        .await?;
        Ok(Response::new(RemoveImageResponse {}))
    }

    async fn image_fs_info(&self, _: Request<ImageFsInfoRequest>) -> Reply<ImageFsInfoResponse> {
        let (bytes, files) = blocking(&self.images, |s| s.usage()).await?;
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let usage = FilesystemUsage {
            timestamp,
            fs_id: Some(FilesystemIdentifier {
                mountpoint: self.images.root().display().to_string(),
            }),
            used_bytes: Some(UInt64Value { value: bytes }),
            inodes_used: Some(UInt64Value { value: files }),
        };
        Ok(Response::new(ImageFsInfoResponse {
            image_filesystems: vec![usage],
            container_filesystems: Vec::new(),
        }))
    }
}

#[tonic::async_trait]
impl RuntimeService for Cri {
    type GetContainerEventsStream = Pin<
        Box<dyn futures::Stream<Item = Result<ContainerEventResponse, Status>> + Send + 'static>,
    >;

    async fn version(&self, _: Request<VersionRequest>) -> Reply<VersionResponse> {
        Ok(Response::new(VersionResponse {
            version: "0.1.0".into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: "v1".into(),
        }))
    }

    /// Ready as a runtime; the network is not, until sandboxes get one through CNI.
    async fn status(&self, _: Request<StatusRequest>) -> Reply<StatusResponse> {
        Ok(Response::new(StatusResponse {
            status: Some(RuntimeStatus {
                conditions: vec![
                    RuntimeCondition {
                        r#type: "RuntimeReady".into(),
                        status: true,
                        ..Default::default()
                    },
                    RuntimeCondition {
                        r#type: "NetworkReady".into(),
                        status: false,
                        reason: "NetworkPluginNotReady".into(),
                        message: "pod networking (CNI) is not set up by the skiff runtime yet"
                            .into(),
                    },
                ],
            }),
            ..Default::default()
        }))
    }

    async fn get_container_events(
        &self,
        _: Request<GetEventsRequest>,
    ) -> Reply<Self::GetContainerEventsStream> {
        Err(not_yet("get_container_events"))
    }

    async fn run_pod_sandbox(
        &self,
        _: Request<RunPodSandboxRequest>,
    ) -> Reply<RunPodSandboxResponse> {
        Err(not_yet("run_pod_sandbox"))
    }
    async fn stop_pod_sandbox(
        &self,
        _: Request<StopPodSandboxRequest>,
    ) -> Reply<StopPodSandboxResponse> {
        Err(not_yet("stop_pod_sandbox"))
    }
    async fn remove_pod_sandbox(
        &self,
        _: Request<RemovePodSandboxRequest>,
    ) -> Reply<RemovePodSandboxResponse> {
        Err(not_yet("remove_pod_sandbox"))
    }
    async fn pod_sandbox_status(
        &self,
        _: Request<PodSandboxStatusRequest>,
    ) -> Reply<PodSandboxStatusResponse> {
        Err(not_yet("pod_sandbox_status"))
    }
    async fn create_container(
        &self,
        _: Request<CreateContainerRequest>,
    ) -> Reply<CreateContainerResponse> {
        Err(not_yet("create_container"))
    }
    async fn start_container(
        &self,
        _: Request<StartContainerRequest>,
    ) -> Reply<StartContainerResponse> {
        Err(not_yet("start_container"))
    }
    async fn stop_container(
        &self,
        _: Request<StopContainerRequest>,
    ) -> Reply<StopContainerResponse> {
        Err(not_yet("stop_container"))
    }
    async fn remove_container(
        &self,
        _: Request<RemoveContainerRequest>,
    ) -> Reply<RemoveContainerResponse> {
        Err(not_yet("remove_container"))
    }
    async fn container_status(
        &self,
        _: Request<ContainerStatusRequest>,
    ) -> Reply<ContainerStatusResponse> {
        Err(not_yet("container_status"))
    }
    async fn update_container_resources(
        &self,
        _: Request<UpdateContainerResourcesRequest>,
    ) -> Reply<UpdateContainerResourcesResponse> {
        Err(not_yet("update_container_resources"))
    }
    async fn reopen_container_log(
        &self,
        _: Request<ReopenContainerLogRequest>,
    ) -> Reply<ReopenContainerLogResponse> {
        Err(not_yet("reopen_container_log"))
    }
    async fn exec_sync(&self, _: Request<ExecSyncRequest>) -> Reply<ExecSyncResponse> {
        Err(not_yet("exec_sync"))
    }
    async fn exec(&self, _: Request<ExecRequest>) -> Reply<ExecResponse> {
        Err(not_yet("exec"))
    }
    async fn attach(&self, _: Request<AttachRequest>) -> Reply<AttachResponse> {
        Err(not_yet("attach"))
    }
    async fn port_forward(&self, _: Request<PortForwardRequest>) -> Reply<PortForwardResponse> {
        Err(not_yet("port_forward"))
    }
    async fn container_stats(
        &self,
        _: Request<ContainerStatsRequest>,
    ) -> Reply<ContainerStatsResponse> {
        Err(not_yet("container_stats"))
    }
    async fn pod_sandbox_stats(
        &self,
        _: Request<PodSandboxStatsRequest>,
    ) -> Reply<PodSandboxStatsResponse> {
        Err(not_yet("pod_sandbox_stats"))
    }
    async fn checkpoint_container(
        &self,
        _: Request<CheckpointContainerRequest>,
    ) -> Reply<CheckpointContainerResponse> {
        Err(not_yet("checkpoint_container"))
    }
    async fn list_pod_sandbox(
        &self,
        _: Request<ListPodSandboxRequest>,
    ) -> Reply<ListPodSandboxResponse> {
        Ok(Response::new(ListPodSandboxResponse::default()))
    }
    async fn list_containers(
        &self,
        _: Request<ListContainersRequest>,
    ) -> Reply<ListContainersResponse> {
        Ok(Response::new(ListContainersResponse::default()))
    }
    async fn list_container_stats(
        &self,
        _: Request<ListContainerStatsRequest>,
    ) -> Reply<ListContainerStatsResponse> {
        Ok(Response::new(ListContainerStatsResponse::default()))
    }
    async fn list_pod_sandbox_stats(
        &self,
        _: Request<ListPodSandboxStatsRequest>,
    ) -> Reply<ListPodSandboxStatsResponse> {
        Ok(Response::new(ListPodSandboxStatsResponse::default()))
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
