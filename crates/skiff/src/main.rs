//! `skiff`: the one binary. Subcommands select what runs; this crate only parses flags and
//! wires the library crates together.

mod agent;
mod bench;
mod controller_manager;
mod dns;
mod join;
mod kubelet;
mod proxy;
mod runtime;
mod scheduler;
mod server;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc: the API server's request path allocates and
/// frees many small JSON values, where glibc's allocator was a fifth of all CPU time
/// (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "skiff", version, about = "Skiff: a Kubernetes in one binary")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the all-in-one cluster: the control plane and this node's agent.
    Server(server::ServerArgs),
    /// Run the API server alone (the only component that touches the datastore).
    Apiserver(server::ServerArgs),
    /// Run the scheduler against an API server.
    Scheduler(scheduler::SchedulerArgs),
    /// Run the controller manager against an API server.
    ControllerManager(controller_manager::ControllerManagerArgs),
    /// Run a node: skiff's container runtime and the kubelet, against a server.
    Agent(agent::AgentArgs),
    /// Run the kubelet alone: registers the Node and runs its pods through a CRI runtime.
    Kubelet(kubelet::KubeletArgs),
    /// Run the cluster DNS server.
    Dns(dns::DnsArgs),
    /// Run the service proxy: programs this node's packet filter for Services.
    Proxy(proxy::ProxyArgs),
    /// Run the container runtime: a CRI v1 server on a Unix socket.
    Runtime(runtime::RuntimeArgs),
    /// A container's monitor (started by the runtime, one per container).
    #[command(hide = true)]
    RuntimeMonitor { dir: std::path::PathBuf },
    /// PID 1 of a pod's shared PID namespace (started by the runtime).
    #[command(hide = true)]
    RuntimePause {
        /// The sandbox it belongs to (for people reading process lists).
        sandbox: Option<std::path::PathBuf>,
    },
    /// Waits for a detached exec's process (started by the runtime).
    #[command(hide = true)]
    RuntimeExecWait {
        #[arg(long)]
        pid_file: std::path::PathBuf,
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Create, list and delete join tokens for new nodes.
    #[command(subcommand)]
    Token(join::Token),
    /// Import, export, list and remove images of the runtime.
    #[command(subcommand)]
    Images(runtime::Images),
    /// Measure a component's performance.
    #[command(subcommand)]
    Bench(bench::Bench),
    /// Print the version.
    Version,
}

/// The name the binary answers to as a CNI plugin (the conflist's `type`).
pub const CNI_PLUGIN: &str = "skiff-cni";

fn main() -> Result<()> {
    // Run as a CNI plugin (through the link `skiff agent` makes): the spec's protocol on
    // stdin/stdout, no flags and no logging.
    let called = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&called).file_name() == Some(std::ffi::OsStr::new(CNI_PLUGIN)) {
        std::process::exit(skiff_cni::main());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // The monitor stays a small single-threaded process: no async runtime.
    if let Command::RuntimeMonitor { dir } = &cli.command {
        std::process::exit(skiff_runtime::monitor::main(dir));
    }
    if let Command::RuntimePause { .. } = &cli.command {
        skiff_runtime::monitor::pause();
    }
    if let Command::RuntimeExecWait { pid_file, command } = &cli.command {
        std::process::exit(skiff_runtime::monitor::exec_wait(pid_file, command));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Server(args) => runtime.block_on(server::run(args, "server")),
        Command::Apiserver(args) => runtime.block_on(server::run(args, "apiserver")),
        Command::Scheduler(args) => runtime.block_on(scheduler::run(args)),
        Command::ControllerManager(args) => runtime.block_on(controller_manager::run(args)),
        Command::Agent(args) => runtime.block_on(agent::run(args)),
        Command::Kubelet(args) => runtime.block_on(kubelet::run(args)),
        Command::Runtime(args) => runtime.block_on(runtime::run(args)),
        Command::Proxy(args) => runtime.block_on(proxy::run(args)),
        Command::Dns(args) => runtime.block_on(dns::run(args)),
        Command::Images(images) => runtime.block_on(images.run()),
        Command::Token(token) => runtime.block_on(token.run()),
        Command::RuntimeMonitor { .. }
        | Command::RuntimePause { .. }
        | Command::RuntimeExecWait { .. } => Ok(()),
        Command::Bench(bench) => runtime.block_on(bench.run()),
        Command::Version => {
            println!("skiff {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
}
