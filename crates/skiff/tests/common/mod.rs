//! Test harness: the real `skiff` binary started as `skiff server` (or `skiff apiserver`
//! on a real etcd) on a free port with a temporary data directory, driven by real clients.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use skiff_storage::etcd::local::LocalEtcd;

pub struct Cluster {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub server: String,
    etcd: Option<LocalEtcd>,
    log: PathBuf,
    extra: Vec<String>,
}

/// A component process started by a test.
pub struct Component {
    pub child: Child,
    pub log: PathBuf,
}

impl Component {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Embedded,
    Etcd,
}

impl Cluster {
    pub async fn start(backend: Backend) -> Cluster {
        Self::start_with(backend, &[]).await
    }

    /// Starts a control plane (`--disable-agent`) whose server gets `extra` flags.
    pub async fn start_with(backend: Backend, extra: &[&str]) -> Cluster {
        let mut flags = vec!["--disable-agent"];
        flags.extend_from_slice(extra);
        Self::start_all_in_one(backend, &flags).await
    }

    /// Starts `skiff server` with exactly `extra` (its node agent runs unless they say
    /// `--disable-agent`).
    pub async fn start_all_in_one(backend: Backend, extra: &[&str]) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("skiff-e2e-")
            .tempdir()
            .expect("tempdir");
        let etcd = match backend {
            Backend::Embedded => None,
            Backend::Etcd => Some(LocalEtcd::start().await.expect("start etcd")),
        };
        let mut cluster = Cluster {
            child: None,
            kubeconfig: dir.path().join("admin.kubeconfig"),
            log: dir.path().join("server.log"),
            dir,
            server: String::new(),
            etcd,
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        cluster.boot();
        cluster
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the server process and waits for its ready line.
    fn boot(&mut self) {
        let mut command = Command::new("setpriv");
        command
            .args([
                "--pdeathsig",
                "KILL",
                "--",
                env!("CARGO_BIN_EXE_skiff"),
                // With etcd the API server runs alone, as `skiff apiserver`.
                if self.etcd.is_some() {
                    "apiserver"
                } else {
                    "server"
                },
            ])
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(["--secure-port", "0"])
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(etcd) = &self.etcd {
            command.args([
                "--etcd-endpoints",
                etcd.endpoint(),
                "--etcd-prefix",
                "/registry",
            ]);
        }
        let mut child = command.spawn().expect("start skiff server");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        let log = self.log.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .expect("log");
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(file, "{line}");
                if let Some(rest) = line
                    .strip_prefix("skiff server ready: ")
                    .or_else(|| line.strip_prefix("skiff apiserver ready: "))
                {
                    let _ = tx.send(
                        rest.split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_string(),
                    );
                }
            }
        });
        self.server = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!(
                    "server not ready in 60 s; log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                )
            });
        self.child = Some(child);
    }

    /// Stops the server with SIGTERM (as a user would with Ctrl-C) and waits for it.
    pub fn stop(&mut self) {
        for line in std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
        {
            if line.contains("User \"system:serviceaccount:kube-system:")
                && line.contains("forbidden")
            {
                eprintln!("CONTROLLER-403 {}", &line[..line.len().min(400)]);
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            for _ in 0..100 {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts another `skiff` process (a component) against this cluster; it dies with
    /// the test process and is killed when the guard drops.
    pub fn spawn_component(&self, args: &[&str]) -> Component {
        static SPAWNED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = SPAWNED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name: String = args.join("-").replace('/', "_").chars().take(100).collect();
        let log = self.dir.path().join(format!("{name}-{n}.log"));
        let file = std::fs::File::create(&log).expect("component log");
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--", env!("CARGO_BIN_EXE_skiff")])
            .args(args)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start component");
        Component { child, log }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.boot();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with(args, &[], None)
    }

    pub fn kubectl_with(&self, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
        let mut command = Command::new("kubectl");
        command
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .envs(env.iter().copied());
        command.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("run kubectl");
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("write stdin");
        }
        child.wait_with_output().expect("kubectl output")
    }

    /// Runs kubectl, asserts it succeeded, and returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// kubectl with `input` on stdin; must succeed.
    pub fn ok_stdin(&self, args: &[&str], input: &str) -> String {
        let out = self.kubectl_with(args, &[], Some(input));
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// kubectl with `input` on stdin; must fail: its stderr.
    pub fn fails_stdin(&self, args: &[&str], input: &str) -> String {
        let out = self.kubectl_with(args, &[], Some(input));
        assert!(
            !out.status.success(),
            "kubectl {args:?} should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Runs kubectl, asserts it failed, and returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            !out.status.success(),
            "kubectl {args:?} should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all)).expect("kubectl printed JSON")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Generates one test per (backend, scenario).
#[macro_export]
macro_rules! scenarios {
    ($($test:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let mut cluster = $crate::common::Cluster::start($crate::common::Backend::Embedded).await;
                    super::$test(&mut cluster).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let mut cluster = $crate::common::Cluster::start($crate::common::Backend::Etcd).await;
                    super::$test(&mut cluster).await;
                }
            )*
        }
    };
}

/// Polls `check` until it holds (60 s at most).
pub fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Cluster {
    /// Creates `n` Ready nodes (`node-1`...) with 4 CPUs, 8 GiB and room for 110 pods:
    /// Node objects only, no kubelet.
    pub fn fake_nodes(&self, n: usize) {
        for i in 1..=n {
            let name = format!("node-{i}");
            let node = format!(
                "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}, labels: {{kubernetes.io/hostname: {name}}}}}\n"
            );
            let out = self.kubectl_with(&["create", "-f", "-"], &[], Some(&node));
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            self.ok(&[
                "patch",
                "node",
                &name,
                "--subresource=status",
                "--type=merge",
                "-p",
                r#"{"status":{"allocatable":{"cpu":"4","memory":"8Gi","pods":"110"},"capacity":{"cpu":"4","memory":"8Gi","pods":"110"},"conditions":[{"type":"Ready","status":"True"}]}}"#,
            ]);
        }
    }
}
