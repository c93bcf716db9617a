//! A fleet of two real `hybrid-gateway run` processes, gw-a and gw-b, each in its own
//! network namespace and reaching the kube-apiserver, moto (EC2), DynamoDB Local and its
//! IMDS only through recording proxies of its own that listen on its namespace's loopback,
//! so every request in the shared [`Recorder`] names its sender. The tests that drive it
//! (tests/faults.rs, tests/per_az.rs) write each daemon's configuration themselves.
//!
//! Include with `#[path = "support/fleet.rs"] mod fleet;` next to the `peers`, `record`,
//! `recorder` and `support` modules it uses.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::peers;
use crate::recorder::{Peer, Recorder, RecordingProxy};
use crate::support::k8s::{client, ApiServer};
use crate::support::Netns;

pub struct Gateway {
    pub name: &'static str,
    pub ns: Netns,
    pub ip: String,
    pub eni: String,
    pub dir: PathBuf,
    pub kube: RecordingProxy,
    pub ec2: RecordingProxy,
    pub ddb: RecordingProxy,
    pub imds: RecordingProxy,
    pub child: Option<Child>,
}

impl Gateway {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Signals the daemon; nothing when none runs (pid 0 would signal the test's own
    /// process group).
    pub fn signal(&self, sig: i32) {
        let pid = self.pid();
        if pid > 0 {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, sig) };
        }
    }

    /// Drops the proxies' fault rules and heals any cut.
    pub fn clear(&self) {
        for p in [&self.kube, &self.ec2, &self.ddb] {
            p.clear();
            p.set_cut(false);
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

pub struct Fleet {
    pub server: ApiServer,
    pub aws: peers::Peers,
    /// What `tests/aws/seed.py` made (instances, subnets, route tables, …).
    pub seed: serde_json::Value,
    pub admin: kube::Client,
    /// The test's own clients, straight to moto and DynamoDB Local.
    pub ec2: aws_sdk_ec2::Client,
    pub ddb: aws_sdk_dynamodb::Client,
    pub gws: Vec<Gateway>,
    pub recorder: Arc<Recorder>,
    env: BTreeMap<String, String>,
    kubeconfig: String,
}

pub fn socket(url: &str) -> std::net::SocketAddr {
    url.trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .parse()
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

impl Fleet {
    /// The peers seeded with `seed_args` (`tests/aws/seed.py`), gw-a's and gw-b's
    /// namespaces (named from `tag`) and proxies; no daemon started yet ([`Fleet::spawn`]).
    pub async fn start(tag: &str, seed_args: &[&str]) -> Fleet {
        hybrid_gateway::k8s::client::install_crypto_provider();
        let server = ApiServer::start();
        let aws = peers::Peers::start();
        let seed = aws.seed(seed_args);
        aws.imds("gw-b", "Name=gw-b", &[]);
        let recorder = Recorder::new();
        let api = socket(&format!("127.0.0.1:{}", server.env["K8S_API_PORT"]));
        let moto = socket(&aws.var("MOTO_URL"));
        let dynamo = socket(&aws.var("AWS_ENDPOINT_URL_DYNAMODB"));
        let pki = server.dir.join("pki");
        let kubeconfig = std::fs::read_to_string(server.daemon_kubeconfig()).unwrap();
        let mut gws = Vec::new();
        for name in ["gw-a", "gw-b"] {
            let inst = &seed["instances"][name];
            let ip = inst["private_ip"].as_str().unwrap().to_string();
            let ns = Netns::new(&format!("{tag}{}", &name[3..]));
            ns.sh(&format!(
                "ip link add eth0 type veth peer name eth0p && ip addr add {ip}/16 dev eth0 \
                 && ip link set eth0 up && ip link set eth0p up"
            ));
            let imds_url = aws.var(&format!(
                "IMDS_{}_URL",
                name.to_uppercase().replace('-', "_")
            ));
            let proxy = |peer, up, pki: Option<&std::path::Path>| {
                RecordingProxy::start(name, peer, up, Some(&ns.name), pki, recorder.clone())
            };
            let dir = std::env::temp_dir().join(format!("{}-{name}", ns.name));
            std::fs::create_dir_all(&dir).unwrap();
            gws.push(Gateway {
                name,
                ip,
                eni: inst["eni_id"].as_str().unwrap().to_string(),
                dir,
                kube: proxy(Peer::Kube, api, Some(&pki)),
                ec2: proxy(Peer::Ec2, moto, None),
                ddb: proxy(Peer::Dynamo, dynamo, None),
                imds: proxy(Peer::Plain, socket(&imds_url), None),
                ns,
                child: None,
            });
        }
        let admin = client(&server.admin_kubeconfig()).await;
        // The test's own clients (credentials, region) read moto and DynamoDB Local directly.
        aws.export_sdk_env();
        let sdk = hybrid_gateway::aws::sdk_config("us-west-2", &Default::default()).await;
        let ec2 = aws_sdk_ec2::Client::from_conf(
            aws_sdk_ec2::config::Builder::from(&sdk)
                .endpoint_url(aws.var("MOTO_URL"))
                .build(),
        );
        let ddb = aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(&sdk)
                .endpoint_url(aws.var("AWS_ENDPOINT_URL_DYNAMODB"))
                .build(),
        );
        let env = [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_REGION",
            "AWS_CONFIG_FILE",
            "AWS_SHARED_CREDENTIALS_FILE",
        ]
        .iter()
        .map(|k| (k.to_string(), aws.var(k)))
        .collect();
        Fleet {
            server,
            aws,
            seed,
            admin,
            ec2,
            ddb,
            gws,
            recorder,
            env,
            kubeconfig,
        }
    }

    /// Starts gateway `i` with `config` (TOML; its `[kubernetes] kubeconfig` is
    /// `<dir>/kubeconfig`, written here to point at the gateway's own proxy).
    pub fn spawn(&mut self, i: usize, config: &str) {
        let g = &self.gws[i];
        let kc = self
            .kubeconfig
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("server:") {
                    format!("    server: https://{}", g.kube.addr)
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(g.dir.join("kubeconfig"), kc).unwrap();
        let cfg = g.dir.join("config.toml");
        std::fs::write(&cfg, config).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(g.dir.join("daemon.log"))
            .unwrap();
        let child = Command::new("/usr/sbin/ip")
            .args(["netns", "exec", &g.ns.name])
            .arg(env!("CARGO_BIN_EXE_hybrid-gateway"))
            .arg("run")
            .arg("--config")
            .arg(&cfg)
            .env_clear()
            .envs(&self.env)
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("NO_COLOR", "1")
            .env("AWS_ENDPOINT_URL_EC2", format!("http://{}", g.ec2.addr))
            .env(
                "AWS_ENDPOINT_URL_DYNAMODB",
                format!("http://{}", g.ddb.addr),
            )
            .env(
                "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                format!("http://{}", g.imds.addr),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting hybrid-gateway run");
        self.gws[i].child = Some(child);
    }

    /// SIGTERM and wait (a graceful stop releases what it holds); SIGKILL after 10 s.
    pub fn stop(&mut self, i: usize) {
        let g = &mut self.gws[i];
        g.signal(libc::SIGCONT);
        g.signal(libc::SIGTERM);
        if let Some(mut c) = g.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// kill -9: nothing released.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.gws[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn index(&self, name: &str) -> usize {
        self.gws.iter().position(|g| g.name == name).unwrap()
    }

    pub fn logs(&self) -> String {
        self.gws
            .iter()
            .map(|g| format!("--- {} daemon.log (tail)\n{}", g.name, g.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `kubectl <args>` as the cluster admin, as an operator would; panics on failure.
    pub fn kubectl(&self, args: &[&str]) {
        self.server.kubectl(args);
    }

    /// `kubectl apply -f <repo>/<file>`.
    pub fn kubectl_apply(&self, file: &str) {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        self.kubectl(&["apply", "-f", file.to_str().unwrap()]);
    }

    /// GET `http://127.0.0.1:<port><path>` inside gateway `i`'s namespace (the daemon's
    /// listeners): the status code (0: no answer) and the body.
    pub fn http_get(&self, i: usize, port: u16, path: &str) -> (u16, String) {
        let out = self.gws[i].ns.try_sh(&format!(
            "curl -s -m 5 -w '\\n%{{http_code}}' http://127.0.0.1:{port}{path}"
        ));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        match text.rsplit_once('\n') {
            Some((body, code)) => (code.trim().parse().unwrap_or(0), body.to_string()),
            None => (0, text),
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for i in 0..self.gws.len() {
            self.stop(i);
        }
        for g in &self.gws {
            if std::thread::panicking() {
                eprintln!("daemon logs kept in {}", g.dir.display());
            } else {
                let _ = std::fs::remove_dir_all(&g.dir);
            }
        }
    }
}
