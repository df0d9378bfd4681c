//! `skiff runtime` (the CRI server) and `skiff images` (images on a node). `images
//! import` writes into the runtime's store directly (the CRI has no import call, as
//! containerd's `ctr images import` uses containerd's own API); `ls` and `rm` go through
//! the CRI socket like any client's.

use std::path::PathBuf;

use anyhow::{Context, Result};
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::{ImageSpec, ListImagesRequest, RemoveImageRequest};

const DATA_DIR: &str = "/var/lib/skiff/runtime";
const SOCKET: &str = "/run/skiff/cri.sock";

#[derive(clap::Args)]
pub struct RuntimeArgs {
    /// Where images (and later sandboxes and containers) are kept.
    #[arg(long, default_value = DATA_DIR)]
    data_dir: PathBuf,
    /// The Unix socket to serve CRI on.
    #[arg(long, default_value = SOCKET)]
    listen: PathBuf,
    /// The OCI runtime that runs containers (runc's command line).
    #[arg(long, default_value = "runc")]
    oci_runtime: PathBuf,
    /// Where the CNI network configuration is.
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// Where CNI plugins are (repeatable; searched in order).
    #[arg(long, default_values = ["/opt/cni/bin", "/usr/lib/cni"])]
    cni_bin_dir: Vec<PathBuf>,
    /// The cgroup pods go under when the kubelet names none.
    #[arg(long, default_value = "/skiff")]
    cgroup_parent: String,
    /// Where the streaming server (Exec URLs) listens; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    streaming_address: std::net::SocketAddr,
}

pub async fn run(args: RuntimeArgs) -> Result<()> {
    let exe = std::env::current_exe().context("finding the skiff binary for monitors")?;
    let config = skiff_runtime::Config {
        data_dir: args.data_dir,
        listen: args.listen,
        oci_runtime: args.oci_runtime,
        cni_conf_dir: args.cni_conf_dir,
        cni_bin_dirs: args.cni_bin_dir,
        cgroup_parent: args.cgroup_parent,
        monitor: vec![exe.clone().into_os_string(), "runtime-monitor".into()],
        pause: vec![exe.clone().into_os_string(), "runtime-pause".into()],
        exec_wait: vec![exe.into_os_string(), "runtime-exec-wait".into()],
        streaming_address: args.streaming_address,
    };
    skiff_runtime::run(config, crate::server::shutdown_signal_quiet())
        .await
        .context("runtime")
}

#[derive(clap::Subcommand)]
pub enum Images {
    /// Import the images of an OCI image layout or `docker save` tarball (gzipped or not).
    Import {
        file: PathBuf,
        /// Also name the imported image(s) so (repeatable).
        #[arg(long)]
        tag: Vec<String>,
        /// The runtime's data directory.
        #[arg(long, default_value = DATA_DIR)]
        data_dir: PathBuf,
    },
    /// Write an image as an OCI image layout tarball (`-` for standard output).
    Export {
        image: String,
        #[arg(short, long)]
        output: PathBuf,
        /// The runtime's data directory.
        #[arg(long, default_value = DATA_DIR)]
        data_dir: PathBuf,
    },
    /// List images, through the CRI.
    Ls {
        #[arg(long, default_value = SOCKET)]
        endpoint: PathBuf,
    },
    /// Remove an image (by name or id), through the CRI.
    Rm {
        image: String,
        #[arg(long, default_value = SOCKET)]
        endpoint: PathBuf,
    },
}

impl Images {
    pub async fn run(self) -> Result<()> {
        match self {
            Images::Import {
                file,
                tag,
                data_dir,
            } => {
                let store = skiff_runtime::ImageStore::open(&data_dir.join("images"))?;
                for image in store
                    .import(&file, &tag)
                    .with_context(|| format!("importing {}", file.display()))?
                {
                    let names = if image.names.is_empty() {
                        "(no name)".to_string()
                    } else {
                        image.names.join(", ")
                    };
                    println!("imported {names} {}", image.id);
                }
                Ok(())
            }
            Images::Export {
                image,
                output,
                data_dir,
            } => {
                let store = skiff_runtime::ImageStore::open(&data_dir.join("images"))?;
                if output.as_os_str() == "-" {
                    let stdout = std::io::stdout().lock();
                    skiff_runtime::export::export(&store, &image, std::io::BufWriter::new(stdout))
                        .with_context(|| format!("exporting {image}"))?;
                    return Ok(());
                }
                // Written aside and renamed: a failed export leaves no partial file.
                let tmp = output.with_extension("partial");
                let file = std::fs::File::create(&tmp)
                    .with_context(|| format!("creating {}", tmp.display()))?;
                let written =
                    skiff_runtime::export::export(&store, &image, std::io::BufWriter::new(file));
                if let Err(e) = written {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e).with_context(|| format!("exporting {image}"));
                }
                std::fs::rename(&tmp, &output)
                    .with_context(|| format!("writing {}", output.display()))?;
                println!("exported {image} to {}", output.display());
                Ok(())
            }
            Images::Ls { endpoint } => {
                let mut client = ImageServiceClient::new(connect(&endpoint).await?);
                let images = client
                    .list_images(ListImagesRequest { filter: None })
                    .await
                    .context("ListImages")?
                    .into_inner()
                    .images;
                println!("{:<50} {:<13} {:>10}", "IMAGE", "IMAGE ID", "SIZE");
                for image in images {
                    let id: String = image
                        .id
                        .trim_start_matches("sha256:")
                        .chars()
                        .take(13)
                        .collect();
                    let size = format!("{:.1}MB", image.size as f64 / 1e6);
                    if image.repo_tags.is_empty() {
                        println!("{:<50} {id:<13} {size:>10}", "<none>");
                    }
                    for tag in &image.repo_tags {
                        println!("{tag:<50} {id:<13} {size:>10}");
                    }
                }
                Ok(())
            }
            Images::Rm { image, endpoint } => {
                let mut client = ImageServiceClient::new(connect(&endpoint).await?);
                client
                    .remove_image(RemoveImageRequest {
                        image: Some(ImageSpec {
                            image: image.clone(),
                            ..Default::default()
                        }),
                    })
                    .await
                    .with_context(|| format!("RemoveImage {image}"))?;
                println!("removed {image}");
                Ok(())
            }
        }
    }
}

/// A gRPC channel over a CRI Unix socket.
pub async fn connect(socket: &std::path::Path) -> Result<tonic::transport::Channel> {
    let path = socket.to_path_buf();
    tonic::transport::Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .with_context(|| format!("connecting to {}", socket.display()))
}
