//! The CRI v1 gRPC services: the ImageService answers from the image store, here; the
//! RuntimeService (runtime_service.rs) drives the engine.

use std::sync::Arc;

use k8s_cri::v1::image_service_server::{ImageService, ImageServiceServer};
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use k8s_cri::v1::*;
use tonic::{Request, Response, Status};

use crate::engine::{Engine, lock};
use crate::images::{ImageError, ImageRecord, ImageStore, config_of};

type Reply<T> = Result<Response<T>, Status>;

/// The name and version `Version` reports.
pub const RUNTIME_NAME: &str = "skiff";

/// Both services over one engine, ready to serve.
pub(crate) fn router(
    engine: Arc<Engine>,
    streams: Arc<crate::streaming::Streams>,
) -> tonic::transport::server::Router {
    let cri = Cri {
        images: engine.images.clone(),
        engine,
        streams,
    };
    tonic::transport::Server::builder()
        .add_service(RuntimeServiceServer::new(cri.clone()))
        .add_service(ImageServiceServer::new(cri))
}

#[derive(Clone)]
pub(crate) struct Cri {
    pub(crate) images: Arc<ImageStore>,
    pub(crate) engine: Arc<Engine>,
    pub(crate) streams: Arc<crate::streaming::Streams>,
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
        pinned: !record.pulled,
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

    /// From the registry; an image already here (imported, or pulled before) is the
    /// answer when the registry cannot be reached, so clusters without one keep working
    /// with `imagePullPolicy: Always`.
    async fn pull_image(&self, request: Request<PullImageRequest>) -> Reply<PullImageResponse> {
        let request = request.into_inner();
        let name = named(request.image.as_ref())?.to_string();
        let credentials = request
            .auth
            .map(|a| crate::pull::Credentials {
                username: a.username,
                password: a.password,
                auth: a.auth,
                registry_token: a.registry_token,
                identity_token: a.identity_token,
            })
            .unwrap_or_default();
        let lookup = name.clone();
        let local = blocking(&self.images, move |s| s.find(&lookup)).await?;
        use crate::pull::PullError;
        match crate::pull::pull(self.images.clone(), &name, &credentials).await {
            Ok(id) => Ok(Response::new(PullImageResponse { image_ref: id })),
            // Only an unreachable registry falls back: a refusal or a missing image
            // must not be papered over with what is here.
            Err(PullError::Unreachable(e)) if local.is_some() => {
                tracing::warn!(image = %name, error = %e, "registry unreachable; using the image already here");
                Ok(Response::new(PullImageResponse {
                    image_ref: local.map(|r| r.id).unwrap_or_default(),
                }))
            }
            Err(PullError::Unreachable(e)) => Err(Status::unavailable(e)),
            Err(PullError::Denied(e)) => Err(Status::permission_denied(e)),
            Err(PullError::NotFound(e)) => Err(Status::not_found(e)),
            Err(PullError::Image(ImageError::Reference(e))) => {
                Err(Status::invalid_argument(e.to_string()))
            }
            Err(PullError::Image(e)) => Err(Status::unknown(format!("pulling image {name}: {e}"))),
        }
    }

    async fn remove_image(
        &self,
        request: Request<RemoveImageRequest>,
    ) -> Reply<RemoveImageResponse> {
        let name = named(request.get_ref().image.as_ref())?.to_string();
        let engine = self.engine.clone();
        blocking(&self.images, move |s| {
            // No container is being made from an image while images go.
            let _removing = engine.image_use.write().unwrap_or_else(|p| p.into_inner());
            let Some(image) = s.find(&name)? else {
                // Removing what is not there succeeds, as the CRI asks.
                return Ok(Err(()));
            };
            let user = lock(&engine.containers)
                .values()
                .find(|c| lock(&c.record).image_id == image.id)
                .map(|c| c.id.clone());
            if let Some(user) = user {
                return Ok(Ok(Some(user)));
            }
            match s.remove(&image.id) {
                Ok(_) | Err(ImageError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            // Its unpacked layers go too, unless another image shares them.
            engine.layers.remove_unused(&s.list()?)?;
            Ok(Ok(None))
        })
        .await?
        .ok()
        .flatten()
        .map_or(Ok(()), |user| {
            Err(Status::failed_precondition(format!(
                "image {} is in use by container {user}",
                request
                    .get_ref()
                    .image
                    .as_ref()
                    .map_or("", |i| i.image.as_str())
            )))
        })?;
        Ok(Response::new(RemoveImageResponse {}))
    }

    async fn image_fs_info(&self, _: Request<ImageFsInfoRequest>) -> Reply<ImageFsInfoResponse> {
        let engine = self.engine.clone();
        let (bytes, files) = blocking(&self.images, move |s| {
            let (blobs, blob_files) = s.usage()?;
            let (layers, layer_files) = engine.layers.usage();
            Ok((blobs + layers, blob_files + layer_files))
        })
        .await?;
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
