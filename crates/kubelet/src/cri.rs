//! The CRI client: RuntimeService and ImageService over the runtime's Unix socket. The
//! channel reconnects by itself, so a restarted runtime is picked up again.

use std::path::Path;

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::Channel;

use crate::Error;

pub type Result<T> = std::result::Result<T, tonic::Status>;

#[derive(Clone)]
pub struct Runtime {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

/// The runtime's name and version, as the Node reports them (`name://version`).
#[derive(Clone, Debug)]
pub struct Info {
    pub name: String,
    pub version: String,
}

impl std::fmt::Display for Info {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.name, self.version)
    }
}

impl Runtime {
    pub async fn connect(socket: &Path) -> std::result::Result<Runtime, Error> {
        let path = socket.to_path_buf();
        let endpoint = tonic::transport::Endpoint::try_from("http://[::]:50051").map_err(|e| {
            Error::Runtime {
                path: socket.display().to_string(),
                message: e.to_string(),
            }
        })?;
        // Lazy: the runtime may come up after the kubelet.
        let channel = endpoint.connect_with_connector_lazy(tower::service_fn(
            move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            },
        ));
        Ok(Runtime {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    /// Version, waiting up to a minute for the runtime to answer.
    pub async fn version(&self) -> Result<Info> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            match self
                .runtime
                .clone()
                .version(VersionRequest::default())
                .await
            {
                Ok(reply) => {
                    let reply = reply.into_inner();
                    return Ok(Info {
                        name: reply.runtime_name,
                        version: reply.runtime_version,
                    });
                }
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
            }
        }
    }

    /// The runtime's conditions (RuntimeReady, NetworkReady).
    pub async fn status(&self) -> Result<Vec<RuntimeCondition>> {
        let reply = self
            .runtime
            .clone()
            .status(StatusRequest { verbose: false })
            .await?
            .into_inner();
        Ok(reply.status.map(|s| s.conditions).unwrap_or_default())
    }

    /// The sandboxes of the pod with `uid`.
    pub async fn sandboxes_of(&self, uid: &str) -> Result<Vec<PodSandbox>> {
        let filter = PodSandboxFilter {
            label_selector: [(crate::spec::POD_UID.to_string(), uid.to_string())].into(),
            ..Default::default()
        };
        Ok(self
            .runtime
            .clone()
            .list_pod_sandbox(ListPodSandboxRequest {
                filter: Some(filter),
            })
            .await?
            .into_inner()
            .items)
    }

    /// Every sandbox the runtime has.
    pub async fn all_sandboxes(&self) -> Result<Vec<PodSandbox>> {
        Ok(self
            .runtime
            .clone()
            .list_pod_sandbox(ListPodSandboxRequest { filter: None })
            .await?
            .into_inner()
            .items)
    }

    /// A sandbox's pod IP, if the runtime reports one.
    pub async fn sandbox_ip(&self, id: &str) -> Option<String> {
        let status = self.sandbox_status(id).await.ok().flatten()?;
        status.network.map(|n| n.ip)
    }

    pub async fn sandbox_status(&self, id: &str) -> Result<Option<PodSandboxStatus>> {
        Ok(self
            .runtime
            .clone()
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status)
    }

    pub async fn run_sandbox(&self, config: PodSandboxConfig) -> Result<String> {
        Ok(self
            .runtime
            .clone()
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id)
    }

    pub async fn stop_sandbox(&self, id: &str) -> Result<()> {
        self.runtime
            .clone()
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await?;
        Ok(())
    }

    pub async fn remove_sandbox(&self, id: &str) -> Result<()> {
        self.runtime
            .clone()
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await?;
        Ok(())
    }

    /// Every container the runtime has (no statuses).
    pub async fn all_containers(&self) -> Result<Vec<Container>> {
        Ok(self
            .runtime
            .clone()
            .list_containers(ListContainersRequest { filter: None })
            .await?
            .into_inner()
            .containers)
    }

    /// The resource use of every sandbox and its running containers.
    pub async fn sandbox_stats(&self) -> Result<Vec<PodSandboxStats>> {
        Ok(self
            .runtime
            .clone()
            .list_pod_sandbox_stats(ListPodSandboxStatsRequest { filter: None })
            .await?
            .into_inner()
            .stats)
    }

    /// The image filesystem's use (the first the runtime reports).
    pub async fn image_fs(&self) -> Result<Option<FilesystemUsage>> {
        Ok(self
            .images
            .clone()
            .image_fs_info(ImageFsInfoRequest {})
            .await?
            .into_inner()
            .image_filesystems
            .into_iter()
            .next())
    }

    /// The containers of a sandbox, with their statuses.
    pub async fn containers_of(&self, sandbox: &str) -> Result<Vec<ContainerStatus>> {
        let filter = ContainerFilter {
            pod_sandbox_id: sandbox.into(),
            ..Default::default()
        };
        let listed = self
            .runtime
            .clone()
            .list_containers(ListContainersRequest {
                filter: Some(filter),
            })
            .await?
            .into_inner()
            .containers;
        let mut statuses = Vec::with_capacity(listed.len());
        for container in listed {
            match self
                .runtime
                .clone()
                .container_status(ContainerStatusRequest {
                    container_id: container.id.clone(),
                    verbose: false,
                })
                .await
            {
                Ok(reply) => statuses.extend(reply.into_inner().status),
                // Removed in between.
                Err(e) if e.code() == tonic::Code::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(statuses)
    }

    pub async fn container_status(&self, id: &str) -> Result<ContainerStatus> {
        self.runtime
            .clone()
            .container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .ok_or_else(|| tonic::Status::not_found(format!("container {id}")))
    }

    pub async fn create_container(
        &self,
        sandbox: &str,
        config: ContainerConfig,
        sandbox_config: PodSandboxConfig,
    ) -> Result<String> {
        Ok(self
            .runtime
            .clone()
            .create_container(CreateContainerRequest {
                pod_sandbox_id: sandbox.into(),
                config: Some(config),
                sandbox_config: Some(sandbox_config),
            })
            .await?
            .into_inner()
            .container_id)
    }

    pub async fn start_container(&self, id: &str) -> Result<()> {
        self.runtime
            .clone()
            .start_container(StartContainerRequest {
                container_id: id.into(),
            })
            .await?;
        Ok(())
    }

    pub async fn stop_container(&self, id: &str, grace_seconds: i64) -> Result<()> {
        self.runtime
            .clone()
            .stop_container(StopContainerRequest {
                container_id: id.into(),
                timeout: grace_seconds,
            })
            .await?;
        Ok(())
    }

    pub async fn remove_container(&self, id: &str) -> Result<()> {
        self.runtime
            .clone()
            .remove_container(RemoveContainerRequest {
                container_id: id.into(),
            })
            .await?;
        Ok(())
    }

    /// Runs a command in a container and waits for it (`timeout` seconds at most).
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: i64,
    ) -> Result<ExecSyncResponse> {
        Ok(self
            .runtime
            .clone()
            .exec_sync(ExecSyncRequest {
                container_id: id.into(),
                cmd,
                timeout,
            })
            .await?
            .into_inner())
    }

    /// A streaming URL for a command in a container.
    pub async fn exec(
        &self,
        id: &str,
        cmd: Vec<String>,
        streams: (bool, bool, bool, bool),
    ) -> Result<String> {
        let (stdin, stdout, stderr, tty) = streams;
        Ok(self
            .runtime
            .clone()
            .exec(ExecRequest {
                container_id: id.into(),
                cmd,
                tty,
                stdin,
                stdout,
                stderr,
            })
            .await?
            .into_inner()
            .url)
    }

    /// A streaming URL for a container's own streams.
    pub async fn attach(&self, id: &str, streams: (bool, bool, bool, bool)) -> Result<String> {
        let (stdin, stdout, stderr, tty) = streams;
        Ok(self
            .runtime
            .clone()
            .attach(AttachRequest {
                container_id: id.into(),
                stdin,
                tty,
                stdout,
                stderr,
            })
            .await?
            .into_inner()
            .url)
    }

    /// A streaming URL forwarding `ports` (none: the client names them) of a sandbox.
    pub async fn port_forward(&self, sandbox: &str, ports: Vec<i32>) -> Result<String> {
        Ok(self
            .runtime
            .clone()
            .port_forward(PortForwardRequest {
                pod_sandbox_id: sandbox.into(),
                port: ports,
            })
            .await?
            .into_inner()
            .url)
    }

    /// The image's id (`imageRef`) if the runtime has it.
    pub async fn image_present(&self, image: &str) -> Result<Option<String>> {
        Ok(self.image_status(image).await?.map(|i| i.id))
    }

    async fn image_status(&self, image: &str) -> Result<Option<Image>> {
        Ok(self
            .images
            .clone()
            .image_status(ImageStatusRequest {
                image: Some(ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await?
            .into_inner()
            .image)
    }

    /// The user an image runs as: its uid, else its user name (none: root).
    pub async fn image_user(&self, image: &str) -> Result<(Option<i64>, String)> {
        let image = self.image_status(image).await?.unwrap_or_default();
        Ok(match (image.uid, image.username) {
            (Some(uid), _) => (Some(uid.value), String::new()),
            (None, name) if !name.is_empty() => (None, name),
            _ => (Some(0), String::new()),
        })
    }

    pub async fn list_images(&self) -> Result<Vec<Image>> {
        Ok(self
            .images
            .clone()
            .list_images(ListImagesRequest { filter: None })
            .await?
            .into_inner()
            .images)
    }

    pub async fn remove_image(&self, id: &str) -> Result<()> {
        self.images
            .clone()
            .remove_image(RemoveImageRequest {
                image: Some(ImageSpec {
                    image: id.into(),
                    ..Default::default()
                }),
            })
            .await?;
        Ok(())
    }

    pub async fn pull_image(&self, image: &str, auth: Option<AuthConfig>) -> Result<String> {
        Ok(self
            .images
            .clone()
            .pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                auth,
                sandbox_config: None,
            })
            .await?
            .into_inner()
            .image_ref)
    }
}
