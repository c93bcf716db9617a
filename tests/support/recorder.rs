//! A recording, fault-injecting HTTP proxy: one per gateway and peer, so it knows the
//! sender. It records every request that reaches the peer through it (arrival time on the
//! test's one clock, sender, what it was, the peer's answer) into a shared [`Recorder`],
//! and can delay, stall, drop or fail requests selected by method, path and action.
//!
//! One request per client connection (`Connection: close` both ways): framing stays
//! trivial (a response is relayed until the peer closes), and watches stream through.
//! In front of the kube-apiserver it terminates TLS with the API server's own serving
//! certificate (signed by the harness CA the daemon's kubeconfig trusts, SAN 127.0.0.1),
//! as a TLS-terminating load balancer would, and speaks TLS to the API server.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::record::{Event, Kind};

/// The shared record of one test: every proxy appends to it, on one clock.
pub struct Recorder {
    start: Instant,
    events: Mutex<Vec<Event>>,
}

impl Recorder {
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder {
            start: Instant::now(),
            events: Mutex::new(Vec::new()),
        })
    }

    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    /// Writes the record, one request a line (time, sender, kind, status, holder, what),
    /// for a look after the run.
    pub fn dump(&self, path: &Path) {
        let text: String = self
            .events()
            .iter()
            .map(|e| {
                format!(
                    "{:>10.3} {} {:?} {}{} {} {}\n",
                    e.at.as_secs_f64(),
                    e.gw,
                    e.kind,
                    e.status,
                    if e.faulted { " (injected)" } else { "" },
                    e.holder.as_deref().unwrap_or("-"),
                    e.detail
                )
            })
            .collect();
        let _ = std::fs::write(path, text);
    }

    fn push(&self, e: Event) -> usize {
        let mut v = self.events.lock().unwrap();
        v.push(e);
        v.len() - 1
    }

    fn answered(&self, i: usize, status: u16) {
        self.events.lock().unwrap()[i].status = status;
    }
}

/// What is behind a proxy: how requests are classified and how a failure is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Kube,
    Ec2,
    Dynamo,
    /// Passed through unrecorded (IMDS).
    Plain,
}

pub type Hook = Arc<dyn Fn() + Send + Sync>;

/// What a matching rule does to a request.
#[derive(Clone)]
pub enum Effect {
    /// Nothing (the hooks only).
    Pass,
    /// Hold the request this long before it goes to the peer (a slow network in).
    DelayRequest(Duration),
    /// Pass the request at once, hold the answer this long (a slow peer / network out).
    DelayResponse(Duration),
    /// Answer with an error of the peer's kind instead of passing the request on.
    Fail(u16),
    /// Hold the request unanswered until the rule is cleared, then close.
    Stall,
    /// Close the connection without an answer.
    Drop,
}

/// Selects requests (every given field must match) and applies an effect to `count` of
/// them (None: all, until cleared).
#[derive(Clone)]
pub struct Rule {
    pub method: Option<&'static str>,
    /// A substring of the path.
    pub path: Option<&'static str>,
    /// EC2 Action or DynamoDB operation (the X-Amz-Target after the dot), any of these.
    pub actions: Vec<&'static str>,
    pub effect: Effect,
    pub count: Option<u32>,
    /// Runs when a request matches, before it is passed on.
    pub before: Option<Hook>,
    /// Runs once the answer has been relayed to the client.
    pub after: Option<Hook>,
}

impl Rule {
    pub fn new(effect: Effect) -> Rule {
        Rule {
            method: None,
            path: None,
            actions: Vec::new(),
            effect,
            count: None,
            before: None,
            after: None,
        }
    }
    pub fn method(mut self, m: &'static str) -> Rule {
        self.method = Some(m);
        self
    }
    pub fn path(mut self, p: &'static str) -> Rule {
        self.path = Some(p);
        self
    }
    pub fn actions(mut self, a: &[&'static str]) -> Rule {
        self.actions = a.to_vec();
        self
    }
    pub fn count(mut self, n: u32) -> Rule {
        self.count = Some(n);
        self
    }
    pub fn before(mut self, f: impl Fn() + Send + Sync + 'static) -> Rule {
        self.before = Some(Arc::new(f));
        self
    }
    pub fn after(mut self, f: impl Fn() + Send + Sync + 'static) -> Rule {
        self.after = Some(Arc::new(f));
        self
    }

    fn matches(&self, method: &str, path: &str, action: &str) -> bool {
        self.method.is_none_or(|m| m == method)
            && self.path.is_none_or(|p| path.contains(p))
            && (self.actions.is_empty() || self.actions.contains(&action))
    }
}

struct Shared {
    gw: String,
    peer: Peer,
    upstream: SocketAddr,
    tls: Option<Tls>,
    recorder: Arc<Recorder>,
    rules: Mutex<Vec<Rule>>,
    /// Bumped by `clear`: stalled requests give up and close.
    generation: watch::Sender<u64>,
    /// A partition: nothing flows while true.
    cut: watch::Sender<bool>,
}

struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
}

/// A handle on a proxy's rules that hooks can capture (a rule installing another).
#[derive(Clone)]
pub struct Rules(Arc<Shared>);

impl Rules {
    pub fn add(&self, rule: Rule) {
        self.0.rules.lock().unwrap().push(rule);
    }

    pub fn set_cut(&self, cut: bool) {
        self.0.cut.send_replace(cut);
    }
}

/// One proxy: gateway `gw`'s way to one peer.
pub struct RecordingProxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

/// TLS material of the kube-apiserver harness (`DIR/pki`).
pub fn kube_tls(pki: &Path) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    hybrid_gateway::k8s::client::install_crypto_provider();
    let certs = CertificateDer::pem_file_iter(pki.join("apiserver.crt"))
        .expect("apiserver.crt")
        .collect::<Result<Vec<_>, _>>()
        .expect("apiserver.crt");
    let key = PrivateKeyDer::from_pem_file(pki.join("apiserver.key")).expect("apiserver.key");
    (certs, key)
}

impl RecordingProxy {
    /// Starts a proxy listening on 127.0.0.1 of network namespace `netns` (None: this
    /// process's), forwarding to `upstream` on this process's loopback. `pki`: the API
    /// server's PKI directory (TLS both ways), for `Peer::Kube`.
    pub fn start(
        gw: &str,
        peer: Peer,
        upstream: SocketAddr,
        netns: Option<&str>,
        pki: Option<&Path>,
        recorder: Arc<Recorder>,
    ) -> RecordingProxy {
        let std_listener = match netns {
            Some(ns) => {
                let path = format!("/run/netns/{ns}");
                std::thread::scope(|s| {
                    s.spawn(|| {
                        use std::os::fd::AsRawFd;
                        let f = std::fs::File::open(&path).expect("opening the namespace");
                        // SAFETY: setns on a valid namespace fd changes only this thread.
                        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
                        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                        std::net::TcpListener::bind("127.0.0.1:0").expect("binding the proxy")
                    })
                    .join()
                    .expect("namespace thread")
                })
            }
            None => std::net::TcpListener::bind("127.0.0.1:0").expect("binding the proxy"),
        };
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("proxy address");
        let tls = pki.map(|pki| {
            let (certs, key) = kube_tls(pki);
            let mut server = rustls::ServerConfig::builder()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .expect("server TLS config");
            server.alpn_protocols = vec![b"http/1.1".to_vec()];
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(pki.join("ca.crt")).expect("ca.crt") {
                roots.add(c.expect("ca.crt")).expect("adding the CA");
            }
            let client = rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth();
            Tls {
                acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
                connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
            }
        });
        let shared = Arc::new(Shared {
            gw: gw.to_string(),
            peer,
            upstream,
            tls,
            recorder,
            rules: Mutex::new(Vec::new()),
            generation: watch::channel(0).0,
            cut: watch::channel(false).0,
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            let listener = TcpListener::from_std(std_listener).expect("tokio listener");
            while let Ok((client, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = client.set_nodelay(true);
                    if let Some(tls) = &s.tls {
                        let accept = tls.acceptor.accept(client);
                        if let Ok(Ok(stream)) =
                            tokio::time::timeout(Duration::from_secs(10), accept).await
                        {
                            serve(stream, &s).await;
                        }
                    } else {
                        serve(client, &s).await;
                    }
                });
            }
        });
        RecordingProxy { addr, shared, task }
    }

    pub fn add(&self, rule: Rule) {
        self.shared.rules.lock().unwrap().push(rule);
    }

    pub fn rules(&self) -> Rules {
        Rules(self.shared.clone())
    }

    /// Removes every rule; stalled requests are closed.
    pub fn clear(&self) {
        self.shared.rules.lock().unwrap().clear();
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// A partition: while cut, nothing flows either way and new connections hang.
    pub fn set_cut(&self, cut: bool) {
        self.shared.cut.send_replace(cut);
    }
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn wait_for(mut rx: watch::Receiver<bool>, want: bool) {
    while *rx.borrow_and_update() != want {
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// A request as read from the client.
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return Some((buf, rest));
        }
        if buf.len() > 256 * 1024 {
            return None;
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn parse_headers(head: &[u8]) -> Option<(String, Vec<(String, String)>)> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let first = lines.next()?.to_string();
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Some((first, headers))
}

/// Reads exactly `n` more bytes after `have`.
async fn read_exact_more<S: AsyncRead + Unpin>(
    s: &mut S,
    mut have: Vec<u8>,
    n: usize,
) -> Option<Vec<u8>> {
    let mut chunk = [0u8; 8192];
    while have.len() < n {
        let k = s.read(&mut chunk).await.ok()?;
        if k == 0 {
            return None;
        }
        have.extend_from_slice(&chunk[..k]);
    }
    have.truncate(n);
    Some(have)
}

/// Decodes a chunked request body (rare: the clients here send Content-Length).
async fn read_chunked<S: AsyncRead + Unpin>(s: &mut S, mut buf: Vec<u8>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        while !buf.windows(2).any(|w| w == b"\r\n") {
            let k = s.read(&mut chunk).await.ok()?;
            if k == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..k]);
        }
        let i = buf.windows(2).position(|w| w == b"\r\n")?;
        let size_line = std::str::from_utf8(&buf[..i]).ok()?;
        let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
        buf.drain(..i + 2);
        while buf.len() < size + 2 {
            let k = s.read(&mut chunk).await.ok()?;
            if k == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..k]);
        }
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

async fn read_request<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> Option<Request> {
    let (head, rest) = read_head(s).await?;
    let (first, headers) = parse_headers(&head)?;
    let mut parts = first.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut req = Request {
        method,
        target,
        headers,
        body: Vec::new(),
    };
    if req
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.ok()?;
    }
    if req
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        req.body = read_chunked(s, rest).await?;
    } else {
        let n: usize = req
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        req.body = read_exact_more(s, rest, n).await?;
    }
    Some(req)
}

fn form_value(body: &str, key: &str) -> Option<String> {
    body.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.replace("%2F", "/").replace("%2f", "/"))
    })
}

/// (kind, action for rule matching, holder set by an election write, detail).
fn classify(peer: Peer, req: &Request) -> (Kind, String, Option<String>, String) {
    let write = req.method != "GET";
    match peer {
        Peer::Kube => {
            let path = req.path();
            let json: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
            let detail = format!("{} {}", req.method, path);
            // The gateways' health score Leases (issue 15) name their writer as holder too,
            // but elect nobody: only the election Lease counts.
            let score_lease = json["metadata"]["labels"]
                .get("hybrid-gateway.io/health-of")
                .is_some();
            if path.contains("/leases") && write && !score_lease {
                let holder = json["spec"]["holderIdentity"]
                    .as_str()
                    .filter(|h| !h.is_empty() && req.method != "DELETE")
                    .map(String::from);
                // A create names the Lease in its body: the detail ends with the name either
                // way (per-AZ mode has one Lease per shard).
                let detail = match json["metadata"]["name"].as_str() {
                    Some(name) if req.method == "POST" => format!("{detail}/{name}"),
                    _ => detail,
                };
                (Kind::LeaseWrite, String::new(), holder, detail)
            } else if path.contains("/ciliumvtepconfigs") && write {
                let ep = json["spec"]["endpoints"][0]["tunnelEndpoint"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                // The fence annotations it sets name the shard (per-AZ mode).
                let fences: Vec<&str> = json["metadata"]["annotations"]
                    .as_object()
                    .map(|a| {
                        a.keys()
                            .map(String::as_str)
                            .filter(|k| k.starts_with("hybrid-gateway.io/term"))
                            .collect()
                    })
                    .unwrap_or_default();
                (
                    Kind::Cr,
                    String::new(),
                    None,
                    format!("CiliumVTEPConfig {} {ep} {}", req.method, fences.join(",")),
                )
            } else if write {
                (Kind::OtherWrite, String::new(), None, detail)
            } else {
                (Kind::Read, String::new(), None, detail)
            }
        }
        Peer::Ec2 => {
            let body = String::from_utf8_lossy(&req.body);
            let action = form_value(&body, "Action").unwrap_or_default();
            let kind = match action.as_str() {
                "CreateRoute" | "ReplaceRoute" | "DeleteRoute" => Kind::Route,
                a if a.starts_with("Describe") => Kind::Read,
                _ => Kind::OtherWrite,
            };
            let detail = format!(
                "{action} {} -> {}",
                form_value(&body, "RouteTableId").unwrap_or_default(),
                form_value(&body, "NetworkInterfaceId").unwrap_or_default()
            );
            (kind, action, None, detail)
        }
        Peer::Dynamo => {
            let target = req.header("x-amz-target").unwrap_or("");
            let op = target.rsplit('.').next().unwrap_or("").to_string();
            let json: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
            match op.as_str() {
                "PutItem" | "UpdateItem" | "DeleteItem" => {
                    let released = json["Item"]["released"]["BOOL"].as_bool() == Some(true);
                    let holder = json["Item"]["owner"]["S"]
                        .as_str()
                        .filter(|h| !h.is_empty() && !released && op == "PutItem")
                        .map(String::from);
                    // The item's key: per-AZ mode writes one lock item per shard.
                    let key = json["Item"]["lock_key"]["S"]
                        .as_str()
                        .or(json["Key"]["lock_key"]["S"].as_str())
                        .unwrap_or("");
                    let detail = format!("{op} key={key} owner={holder:?} released={released}");
                    (Kind::LockWrite, op, holder, detail)
                }
                _ => (Kind::Read, op.clone(), None, op),
            }
        }
        Peer::Plain => (Kind::Read, String::new(), None, req.target.clone()),
    }
}

fn failure(peer: Peer, status: u16) -> (String, Vec<u8>) {
    match peer {
        Peer::Ec2 => (
            "text/xml;charset=UTF-8".into(),
            b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Injected by the test proxy</Message></Error></Errors><RequestID>00000000-0000-0000-0000-000000000000</RequestID></Response>".to_vec(),
        ),
        Peer::Dynamo => (
            "application/x-amz-json-1.0".into(),
            br#"{"__type":"com.amazonaws.dynamodb.v20120810#ThrottlingException","message":"Injected by the test proxy"}"#.to_vec(),
        ),
        _ => (
            "application/json".into(),
            format!(
                r#"{{"kind":"Status","apiVersion":"v1","status":"Failure","message":"injected by the test proxy","reason":"InternalError","code":{status}}}"#
            )
            .into_bytes(),
        ),
    }
}

/// Takes the first matching rule (counting it down).
fn take_rule(s: &Shared, method: &str, path: &str, action: &str) -> Option<Rule> {
    let mut rules = s.rules.lock().unwrap();
    let i = rules.iter().position(|r| r.matches(method, path, action))?;
    let rule = rules[i].clone();
    if let Some(n) = &mut rules[i].count {
        *n -= 1;
        if *n == 0 {
            rules.remove(i);
        }
    }
    Some(rule)
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn connect(s: &Shared) -> Option<Box<dyn Io>> {
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(s.upstream))
        .await
        .ok()?
        .ok()?;
    let _ = tcp.set_nodelay(true);
    match &s.tls {
        None => Some(Box::new(tcp)),
        Some(tls) => {
            let name = ServerName::IpAddress(s.upstream.ip().into());
            let stream =
                tokio::time::timeout(Duration::from_secs(10), tls.connector.connect(name, tcp))
                    .await
                    .ok()?
                    .ok()?;
            Some(Box::new(stream))
        }
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send>(mut client: S, s: &Shared) {
    if *s.cut.borrow() {
        wait_for(s.cut.subscribe(), false).await;
        return;
    }
    let req = tokio::select! {
        r = read_request(&mut client) => r,
        _ = wait_for(s.cut.subscribe(), true) => None,
    };
    let Some(req) = req else {
        return;
    };
    let (kind, action, holder, detail) = classify(s.peer, &req);
    let rule = take_rule(s, &req.method, req.path(), &action);
    if let Some(f) = rule.as_ref().and_then(|r| r.before.clone()) {
        f();
    }
    let effect = rule.as_ref().map_or(Effect::Pass, |r| r.effect.clone());
    let record = |status: u16, faulted: bool| {
        (s.peer != Peer::Plain).then(|| {
            s.recorder.push(Event {
                at: s.recorder.now(),
                gw: s.gw.clone(),
                kind: kind.clone(),
                holder: holder.clone(),
                status,
                faulted,
                detail: detail.clone(),
            })
        })
    };
    let mut response_delay = None;
    match effect {
        Effect::Pass => {}
        Effect::DelayRequest(d) => tokio::time::sleep(d).await,
        Effect::DelayResponse(d) => response_delay = Some(d),
        Effect::Fail(status) => {
            record(status, true);
            let (ctype, body) = failure(s.peer, status);
            let head = format!(
                "HTTP/1.1 {status} Injected\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = client.write_all(head.as_bytes()).await;
            let _ = client.write_all(&body).await;
            let _ = client.shutdown().await;
            if let Some(f) = rule.as_ref().and_then(|r| r.after.clone()) {
                f();
            }
            return;
        }
        Effect::Stall => {
            let mut gen = s.generation.subscribe();
            let _ = gen.changed().await;
            return;
        }
        Effect::Drop => return,
    }

    let Some(mut up) = connect(s).await else {
        record(0, false);
        return;
    };
    // The request as the client sent it, on a connection of its own.
    let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.target);
    for (k, v) in &req.headers {
        let lk = k.to_ascii_lowercase();
        if matches!(
            lk.as_str(),
            "connection"
                | "keep-alive"
                | "proxy-connection"
                | "transfer-encoding"
                | "expect"
                | "content-length"
        ) {
            continue;
        }
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        req.body.len()
    ));
    let index = record(0, false);
    if up.write_all(head.as_bytes()).await.is_err() || up.write_all(&req.body).await.is_err() {
        return;
    }
    let Some((rhead, rest)) = read_head(&mut up).await else {
        return;
    };
    let Some((status_line, rheaders)) = parse_headers(&rhead) else {
        return;
    };
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    if let Some(i) = index {
        s.recorder.answered(i, status);
    }
    if let Some(d) = response_delay {
        tokio::time::sleep(d).await;
    }
    let mut out = format!("{status_line}\r\n");
    for (k, v) in &rheaders {
        if matches!(k.to_ascii_lowercase().as_str(), "connection" | "keep-alive") {
            continue;
        }
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("Connection: close\r\n\r\n");
    if client.write_all(out.as_bytes()).await.is_err() || client.write_all(&rest).await.is_err() {
        return;
    }
    // A body with a length ends there (the peer may linger before closing); anything
    // else (chunked lists, watches) streams until the peer closes.
    let chunked = rheaders.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
    });
    let mut left: Option<usize> = rheaders
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .filter(|_| !chunked)
        .map(|n: usize| n.saturating_sub(rest.len()));
    let copy = async {
        let mut buf = [0u8; 16384];
        loop {
            if left == Some(0) {
                break;
            }
            match up.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if let Some(l) = &mut left {
                        *l = l.saturating_sub(n);
                    }
                    if client.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    let _ = client.flush().await;
                }
            }
        }
    };
    let cut = s.cut.subscribe();
    tokio::select! {
        _ = copy => {}
        _ = wait_for(cut.clone(), true) => {
            // Partitioned mid-stream: silent until healed, then closed.
            wait_for(cut, false).await;
        }
    }
    let _ = client.flush().await;
    let _ = client.shutdown().await;
    if let Some(f) = rule.as_ref().and_then(|r| r.after.clone()) {
        f();
    }
}
