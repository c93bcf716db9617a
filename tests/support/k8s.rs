//! A real kube-apiserver (+ etcd) per test, from `tests/k8s/apiserver.sh`, torn down on drop.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use std::time::Duration;

use hybrid_gateway::election::{self, lease::LeaseLock, ElectionHandle, Elector, Timings};
use tokio_util::sync::CancellationToken;

use super::Netns;

/// The daemon's default election timings.
pub const TIMINGS: Timings = Timings {
    lease_duration: Duration::from_secs(3),
    renew_deadline: Duration::from_secs(2),
    retry_period: Duration::from_secs(1),
};

/// One Lease elector, `gw-a_1` on hybrid-gateway/hybrid-gateway-leader (1 s per store
/// call), running until `cancel`: the handle leader work follows, and its task.
pub fn spawn_elector(
    client: kube::Client,
    cancel: &CancellationToken,
) -> (ElectionHandle, tokio::task::JoinHandle<()>) {
    let lock = LeaseLock::new(
        client,
        "hybrid-gateway",
        "hybrid-gateway-leader",
        Duration::from_secs(1),
    );
    let mut elector = Elector::new(lock, "gw-a_1".into(), TIMINGS);
    let (publisher, handle) = election::channel();
    let c = cancel.clone();
    let task = tokio::spawn(async move { election::run(&mut elector, &publisher, None, c).await });
    (handle, task)
}

pub struct ApiServer {
    pub dir: PathBuf,
    pub env: BTreeMap<String, String>,
    netns: Option<String>,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/k8s/apiserver.sh")
}

/// The first test of a fresh machine builds the API server (once, ~6 min, cached under
/// ~/.cache/hybrid-gateway; apiserver.sh serializes concurrent builds with a lock), so
/// `cargo test` alone works without a separate install step. Later runs only check the
/// cache.
fn ensure_built() {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let build = || Command::new(script()).arg("build").output();
        let out = build().expect("running tests/k8s/apiserver.sh build");
        if out.status.success() {
            return;
        }
        // A fresh machine: the build tools are missing. Install them, then build.
        eprintln!(
            "kube-apiserver not built yet: tests/k8s/apiserver.sh install && build (once, ~6 min)"
        );
        let install = Command::new(script())
            .arg("install")
            .output()
            .expect("running tests/k8s/apiserver.sh install");
        assert!(
            install.status.success(),
            "tests/k8s/apiserver.sh install failed:\n{}",
            String::from_utf8_lossy(&install.stderr)
        );
        let out = build().expect("running tests/k8s/apiserver.sh build");
        assert!(
            out.status.success(),
            "tests/k8s/apiserver.sh build failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

impl ApiServer {
    /// Starts one on the root namespace's loopback.
    pub fn start() -> ApiServer {
        Self::start_in(None)
    }

    /// Starts one on the loopback of `ns`, where a daemon in that namespace can reach it.
    pub fn start_in(ns: Option<&Netns>) -> ApiServer {
        super::require_root();
        ensure_built();
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hgw-k8s-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.name]).arg(script());
                c
            }
            None => Command::new(script()),
        };
        let mut server = ApiServer {
            dir: dir.clone(),
            env: BTreeMap::new(),
            netns: ns.map(|n| n.name.clone()),
        };
        let out = cmd
            .arg("up")
            .arg(&dir)
            .arg("127.0.0.1")
            .output()
            .expect("running tests/k8s/apiserver.sh up");
        assert!(
            out.status.success(),
            "kube-apiserver did not start:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text =
            std::fs::read_to_string(dir.join("env")).expect("reading the apiserver env file");
        let env: BTreeMap<String, String> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| {
                (
                    k.to_string(),
                    v.trim_matches('\'').trim_matches('"').to_string(),
                )
            })
            .collect();
        server.env = env;
        server
    }

    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// `kubectl <args>` as the cluster admin; panics on failure.
    pub fn kubectl(&self, args: &[&str]) {
        let out = std::process::Command::new(&self.env["K8S_KUBECTL"])
            .arg("--kubeconfig")
            .arg(self.admin_kubeconfig())
            .arg("--request-timeout=30s")
            .args(args)
            .output()
            .expect("running kubectl");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The daemon's identity: bound only by the RBAC we ship.
    pub fn daemon_kubeconfig(&self) -> PathBuf {
        self.dir.join("daemon.kubeconfig")
    }

    pub fn pause(&self) {
        self.run("pause");
    }

    pub fn resume(&self) {
        self.run("resume");
    }

    fn run(&self, verb: &str) {
        let out = Command::new(script())
            .arg(verb)
            .arg(&self.dir)
            .output()
            .expect("running apiserver.sh");
        assert!(
            out.status.success(),
            "apiserver.sh {verb}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("down").arg(&self.dir).output();
    }
}

/// A kube client from a kubeconfig file (call inside a tokio runtime).
pub async fn client(kubeconfig: &Path) -> kube::Client {
    hybrid_gateway::k8s::client::install_crypto_provider();
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .expect("kube config");
    kube::Client::try_from(cfg).expect("kube client")
}
