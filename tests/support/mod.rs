//! Throw-away network namespaces and processes for tests that need the real kernel.
//! Everything is removed on drop, so a failing assertion still cleans up.
#![allow(dead_code)]

pub mod k8s;
pub mod proxy;

use std::fs::File;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("this test needs root: it creates network namespaces (run the suite with sudo)");
    }
}

/// A network namespace that is deleted, with every process still in it, on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        require_root();
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "hgwt{}-{}-{tag}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.sh("ip link set lo up");
        ns
    }

    /// Runs a shell command inside the namespace and returns its stdout; panics on failure.
    pub fn sh(&self, cmd: &str) -> String {
        let out = self.try_sh(cmd);
        assert!(
            out.status.success(),
            "`{cmd}` in {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn try_sh(&self, cmd: &str) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", cmd])
            .output()
            .expect("spawning ip netns exec")
    }

    /// Starts a long-running command in the namespace; killed when the guard drops.
    pub fn spawn(&self, program: &str, args: &[&str]) -> Proc {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning a process in the namespace");
        Proc { child: Some(child) }
    }

    /// Runs `f` on a thread that has entered this namespace, with its own single-threaded
    /// runtime, so netlink sockets and /proc/sys/net belong to the namespace.
    pub fn run<T: Send, F: Future<Output = T>>(&self, f: impl FnOnce() -> F + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = File::open(&path).expect("opening the namespace");
                // SAFETY: setns on a valid namespace fd only changes this thread's namespace.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(f())
            })
            .join()
            .expect("namespace thread panicked")
        })
    }

    /// A sysctl as seen inside the namespace.
    pub fn sysctl(&self, key: &str) -> String {
        self.sh(&format!("sysctl -n {key}")).trim().to_string()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill what still runs inside before the namespace goes, or it would linger.
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            });
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A child process killed (and reaped) on drop.
pub struct Proc {
    child: Option<Child>,
}

impl Proc {
    pub fn from_child(child: Child) -> Self {
        Proc { child: Some(child) }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends `signal`; `ip netns exec` execs the program, so the pid is the program's.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.pid() as i32, signal) };
    }

    /// Waits for exit (up to `limit`) and returns the output.
    pub fn wait(mut self, limit: Duration) -> Output {
        let mut child = self.child.take().expect("child");
        let deadline = Instant::now() + limit;
        while child.try_wait().expect("try_wait").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().expect("wait");
                panic!(
                    "process did not exit within {limit:?}; stderr: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().expect("wait")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Joins two namespaces with a veth pair and addresses `a_addr` / `b_addr` (CIDR form).
pub fn veth(a: &Netns, a_dev: &str, a_addr: &str, b: &Netns, b_dev: &str, b_addr: &str) {
    a.sh(&format!(
        "ip link add {a_dev} type veth peer name {b_dev} netns {}",
        b.name
    ));
    a.sh(&format!(
        "ip addr add {a_addr} dev {a_dev} && ip link set {a_dev} up"
    ));
    b.sh(&format!(
        "ip addr add {b_addr} dev {b_dev} && ip link set {b_dev} up"
    ));
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `f` until it returns true or `limit` passes.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Lines of a command's output, trimmed, sorted, blank ones dropped.
pub fn lines(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    v.sort();
    v
}

/// Routes, ARP and FDB entries on the device plus every unreachable route, as `ip` prints them.
pub fn vtep_state(ns: &Netns) -> Vec<String> {
    let mut all = Vec::new();
    all.extend(
        lines(&ns.sh("ip route show table main dev hybrid_vxlan0"))
            .into_iter()
            .map(|l| format!("route {l}")),
    );
    all.extend(
        lines(&ns.sh("ip route show table main type unreachable"))
            .into_iter()
            .map(|l| format!("route {l}")),
    );
    all.extend(
        lines(&ns.sh("ip neigh show dev hybrid_vxlan0"))
            .into_iter()
            .map(|l| format!("arp {l}")),
    );
    all.extend(
        lines(&ns.sh("bridge fdb show dev hybrid_vxlan0"))
            .into_iter()
            .map(|l| format!("fdb {l}")),
    );
    all.extend(
        lines(&ns.sh("ip nexthop show dev hybrid_vxlan0"))
            .into_iter()
            .map(|l| format!("nexthop {l}")),
    );
    all.sort();
    all
}

/// What the kernel must show for `nodes` (name, ip, cidrs) with the default catch-all.
pub fn expected_vtep(nodes: &[(&str, &[&str])]) -> Vec<String> {
    let mut v = vec!["route unreachable 192.168.32.0/23 proto 158 metric 4242".to_string()];
    for (addr, cidrs) in nodes {
        let mac = hybrid_gateway::datapath::Mac::for_node(addr.parse().unwrap());
        v.push(format!("arp {addr} lladdr {mac} PERMANENT"));
        v.push(format!("fdb {mac} dst {addr} self permanent"));
        // One nexthop object per node (id: its address as a number); routes go by it.
        let id = u32::from(addr.parse::<std::net::Ipv4Addr>().unwrap());
        v.push(format!(
            "nexthop id {id} via {addr} dev hybrid_vxlan0 scope link proto 158 onlink"
        ));
        for c in *cidrs {
            v.push(format!("route {c} nhid {id} via {addr} proto 158 onlink"));
        }
    }
    v.sort();
    v
}
