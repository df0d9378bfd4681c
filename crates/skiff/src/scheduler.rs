//! `skiff scheduler`: the scheduler as its own process against any API server, with
//! leader election so several copies can run and one schedules. `skiff server` runs it
//! in process, against its own API server over loopback HTTPS.

use std::future::Future;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

#[derive(clap::Args, Clone)]
pub struct SchedulerArgs {
    /// The kubeconfig to reach the API server with.
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// Pods choose this scheduler by `spec.schedulerName`.
    #[arg(long, default_value = "default-scheduler")]
    pub scheduler_name: String,
    /// Elect one active copy through the `kube-system/kube-scheduler` Lease.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// This copy's name in the Lease (default: host name and process id).
    #[arg(long)]
    pub identity: Option<String>,
    /// How NodeResourcesFit scores nodes: LeastAllocated (spread) or MostAllocated (pack).
    #[arg(long, default_value = "LeastAllocated")]
    pub scoring_strategy: skiff_scheduler::ScoringStrategy,
}

/// A client from a kubeconfig, introducing itself as `product` (the User-Agent, which
/// the API server records as the field manager of its writes, as upstream's
/// `kube-controller-manager/v1.x (linux/amd64)`).
pub async fn client(kubeconfig: &Path, product: &str) -> Result<kube::Client> {
    let config = client_config(kubeconfig, product).await?;
    kube::Client::try_from(config).context("creating the API client")
}

/// The client configuration [`client`] uses.
pub async fn client_config(kubeconfig: &Path, product: &str) -> Result<kube::Config> {
    let config = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let mut config = kube::Config::from_custom_kubeconfig(config, &Default::default())
        .await
        .context("loading the kubeconfig")?;
    let agent = format!(
        "{product}/v{} ({}/{}) skiff",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        std::env::consts::ARCH
    );
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_str(&agent).context("the user agent")?,
    ));
    Ok(config)
}

pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}_{}", host.trim(), std::process::id())
}

pub async fn run(args: SchedulerArgs) -> Result<()> {
    run_until(args, crate::server::shutdown_signal_quiet()).await
}

/// Runs until `shutdown` completes (releasing the lease) or the scheduler fails.
pub async fn run_until(args: SchedulerArgs, shutdown: impl Future<Output = ()>) -> Result<()> {
    let client = client(&args.kubeconfig, "kube-scheduler").await?;
    let config = skiff_scheduler::Config {
        scheduler_name: args.scheduler_name.clone(),
        scoring_strategy: args.scoring_strategy,
        ..Default::default()
    };
    let lease = args.leader_elect.then_some("kube-scheduler");
    let work = || skiff_scheduler::run(client.clone(), config.clone());
    run_elected(&client, lease, args.identity.clone(), work, shutdown)
        .await
        .context("scheduler")
}

/// Runs a component's `work` until `shutdown`: while this copy holds the
/// `kube-system/LEASE` Lease when `lease` is given, else straight away.
pub async fn run_elected<W, F, E>(
    client: &kube::Client,
    lease: Option<&str>,
    identity: Option<String>,
    mut work: W,
    shutdown: impl Future<Output = ()>,
) -> Result<()>
where
    W: FnMut() -> F,
    F: Future<Output = Result<(), E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let Some(lease) = lease else {
        tokio::select! {
            r = work() => r?,
            () = shutdown => {}
        }
        return Ok(());
    };
    let identity = identity.unwrap_or_else(default_identity);
    let election = skiff_election::Config::new("kube-system", lease, &identity);
    skiff_election::run(client.clone(), election, work, shutdown)
        .await
        .context("leader election")??;
    Ok(())
}

/// Runs a component in this process until `stopped` turns true (all in one).
pub fn spawn_in_process<R>(
    name: &'static str,
    mut stopped: tokio::sync::watch::Receiver<bool>,
    run: impl FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> R + Send + 'static,
) -> tokio::task::JoinHandle<()>
where
    R: Future<Output = Result<()>> + Send + 'static,
{
    let stop: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
        let _ = stopped.wait_for(|s| *s).await;
    });
    let task = run(stop);
    tokio::spawn(async move {
        if let Err(e) = task.await {
            tracing::error!(error = %format!("{e:#}"), "{name} stopped");
        }
    })
}
