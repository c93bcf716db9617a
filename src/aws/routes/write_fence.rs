//! The route writer's HTTP client: the bytes of a route write never leave this process
//! after the leadership they were sent under has ended.
//!
//! [`LeadershipGate`](super::ec2) checks leadership before each attempt, and the write
//! future is polled only while leadership lasts; but with the SDK's default client the
//! request is written by hyper's connection task, a task of its own. A process stopped (or
//! starved) after the request was handed over and before that task wrote it sends it when
//! it resumes, possibly after another gateway took over, although the call itself was
//! dropped and logged as withheld (tests/faults.rs reproduced it in about 1 of 3 runs
//! with a SIGSTOP at the moment a first write arrived). So the check sits where the bytes
//! are written: every connection of this client writes through [`FencedIo`], under TLS,
//! which refuses a write (an I/O error: the connection is dropped) once the request it
//! carries has no leadership left. The TLS handshake writes through it too, so time spent
//! in DNS, connect and handshake is covered as well.
//!
//! A request learns its leadership from a [`WriteFence`] in its extensions (the gate adds
//! one to every attempt of a route write); a request without one (the reads) is written
//! unfenced. Connections are kept alive and reused: each has a slot holding the fence of
//! the request it carries, set when the connection is taken for a request. HTTP/1 carries
//! one request at a time and a connection is taken only once its previous response has
//! been read in full, so whatever a connection writes while its slot holds a fence belongs
//! to that request.
//!
//! What remains: a stop between the check in `poll_write` and the `write(2)` right after
//! it. Only a fencing token checked by EC2 could close that, and EC2 route writes take
//! none.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    http_client_fn, HttpConnector, HttpConnectorFuture, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::retry::ErrorKind;
use hyper::client::conn::http1::SendRequest;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector as TcpConnector};
use hyper_util::rt::TokioIo;
use tower::Service;

use super::Deadline;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Carried in a request's extensions: the leadership the request is sent under. Set on
/// `refused` when the connection refused to write it.
#[derive(Clone)]
pub(super) struct WriteFence {
    pub deadline: Arc<dyn Deadline + Send>,
    pub refused: Arc<AtomicBool>,
}

impl WriteFence {
    fn closed(&self) -> bool {
        self.deadline.remaining().is_zero()
    }
}

impl std::fmt::Debug for WriteFence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteFence")
            .field("remaining", &self.deadline.remaining())
            .finish_non_exhaustive()
    }
}

/// The error a fenced connection gives instead of writing.
#[derive(Debug, thiserror::Error)]
#[error("route write not sent: leadership ended before its bytes were written")]
pub(super) struct Fenced;

/// The HTTP client for the route writer's EC2 client (see the module docs).
pub(super) fn http_client() -> SharedHttpClient {
    let tls: Arc<OnceLock<Result<rustls::ClientConfig, String>>> = Arc::default();
    let pool: Arc<Pool> = Arc::default();
    http_client_fn(move |settings, _components| {
        SharedHttpConnector::new(FencedConnector {
            connect_timeout: settings.connect_timeout(),
            read_timeout: settings.read_timeout(),
            tls: tls.clone(),
            pool: pool.clone(),
        })
    })
}

/// Idle connections kept at most (the writer sends 8 at once), and for how long.
const MAX_IDLE: usize = 16;
const IDLE_FOR: Duration = Duration::from_secs(20);
/// How long a connection may take to finish its response before it is not reused.
const RETURN_WITHIN: Duration = Duration::from_secs(30);

/// The fence of the request a connection carries: set when the connection is taken for a
/// request, before the request is handed over. HTTP/1 carries one request at a time and a
/// connection is taken only once its previous response has been read in full, so every
/// byte written while the slot holds a fence is that request's.
#[derive(Default)]
struct FenceSlot(Mutex<Option<WriteFence>>);

impl FenceSlot {
    fn set(&self, fence: Option<WriteFence>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = fence;
    }

    /// `Some(fence)` when the request being written has no leadership left.
    fn closed(&self) -> Option<WriteFence> {
        let f = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f.as_ref().filter(|f| f.closed()).cloned()
    }
}

struct Idle {
    key: String,
    send: SendRequest<SdkBody>,
    slot: Arc<FenceSlot>,
    since: std::time::Instant,
}

/// Keep-alive connections of one client, by scheme and authority.
#[derive(Default)]
struct Pool(Mutex<Vec<Idle>>);

impl Pool {
    fn take(&self, key: &str) -> Option<(SendRequest<SdkBody>, Arc<FenceSlot>)> {
        let mut idle = self.0.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|c| !c.send.is_closed() && c.since.elapsed() < IDLE_FOR);
        let i = idle
            .iter()
            .rposition(|c| c.key == key && c.send.is_ready())?;
        let c = idle.swap_remove(i);
        Some((c.send, c.slot))
    }

    fn put(&self, key: String, send: SendRequest<SdkBody>, slot: Arc<FenceSlot>) {
        let mut idle = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                key,
                send,
                slot,
                since: std::time::Instant::now(),
            });
        }
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pool")
    }
}

#[derive(Debug)]
struct FencedConnector {
    connect_timeout: Option<Duration>,
    read_timeout: Option<Duration>,
    /// Loaded on the first HTTPS call (the system's roots, aws-lc as the SDK's default
    /// client uses), then shared.
    tls: Arc<OnceLock<Result<rustls::ClientConfig, String>>>,
    pool: Arc<Pool>,
}

impl FencedConnector {
    fn tls_config(&self) -> Result<rustls::ClientConfig, ConnectorError> {
        self.tls
            .get_or_init(|| {
                use hyper_rustls::ConfigBuilderExt;
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::aws_lc_rs::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_native_roots()
                .map(|b| b.with_no_client_auth())
                .map_err(|e| format!("loading the system's CA certificates: {e}"))
            })
            .clone()
            .map_err(|e| ConnectorError::other(e.into(), None))
    }
}

/// A new connection for `uri` whose writes are fenced by `slot`, and its sender.
async fn connect(
    uri: http::Uri,
    tls: Option<rustls::ClientConfig>,
    connect_timeout: Option<Duration>,
    slot: Arc<FenceSlot>,
) -> Result<SendRequest<SdkBody>, ConnectorError> {
    let mut tcp = TcpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(connect_timeout);
    let tcp = FenceConnector { tcp, slot };
    let io = match tls {
        Some(tls) => hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(tcp)
            .call(uri)
            .await
            .map_err(connect_error)?,
        None => MaybeHttpsStream::Http(tcp.clone().call(uri).await.map_err(connect_error)?),
    };
    let (send, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| hyper_error(e.into()))?;
    // The connection's own task writes requests and reads responses, also after the
    // call that handed a request over returned or was dropped: its writes go through
    // the fence.
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("EC2 connection: {e}");
        }
    });
    Ok(send)
}

impl HttpConnector for FencedConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let fence = request.extension::<WriteFence>().cloned();
        let mut request = match request.try_into_http1x() {
            Ok(r) => r,
            Err(e) => return HttpConnectorFuture::ready(Err(ConnectorError::user(e.into()))),
        };
        let https = request.uri().scheme() == Some(&http::uri::Scheme::HTTPS);
        let tls = if https {
            match self.tls_config() {
                Ok(c) => Some(c),
                Err(e) => return HttpConnectorFuture::ready(Err(e)),
            }
        } else {
            None
        };
        let key = format!(
            "{}://{}",
            request.uri().scheme_str().unwrap_or("http"),
            request.uri().authority().map_or("", |a| a.as_str())
        );
        let (read_timeout, connect_timeout) = (self.read_timeout, self.connect_timeout);
        let pool = self.pool.clone();
        HttpConnectorFuture::new(async move {
            loop {
                let (mut send, slot, pooled) = match pool.take(&key) {
                    Some((send, slot)) => (send, slot, true),
                    None => {
                        let slot = Arc::new(FenceSlot::default());
                        slot.set(fence.clone());
                        let uri = request.uri().clone();
                        let send = connect(uri, tls.clone(), connect_timeout, slot.clone()).await?;
                        (send, slot, false)
                    }
                };
                slot.set(fence.clone());
                let sent = send.try_send_request(request);
                let sent = match read_timeout {
                    Some(limit) => tokio::time::timeout(limit, sent)
                        .await
                        .map_err(|e| ConnectorError::timeout(e.into()))?,
                    None => sent.await,
                };
                match sent {
                    Ok(response) => {
                        // Reused once the response has been read in full; dropped if it
                        // never is or the connection closes.
                        tokio::spawn(async move {
                            if let Ok(Ok(())) =
                                tokio::time::timeout(RETURN_WITHIN, send.ready()).await
                            {
                                pool.put(key, send, slot);
                            }
                        });
                        return HttpResponse::try_from(response.map(SdkBody::from_body_1_x))
                            .map_err(|e| ConnectorError::other(e.into(), None));
                    }
                    Err(mut e) => match e.take_message() {
                        // A kept-alive connection the server had closed, the request not
                        // written: on another connection.
                        Some(r) if pooled => request = r,
                        _ => return Err(hyper_error(e.into_error().into())),
                    },
                }
            }
        })
    }
}

/// DNS, TCP and TLS failures are I/O (retried, as the SDK's default client does); a
/// fenced connection is final.
fn connect_error(e: BoxError) -> ConnectorError {
    if find::<Fenced>(&*e) {
        tracing::warn!("an EC2 route write was not sent: leadership ended before it connected");
        return ConnectorError::other(e, None);
    }
    ConnectorError::io(e)
}

/// As the SDK's default client classifies hyper's errors, except that a fenced write is
/// final (not retried: the attempt's leadership is over).
fn hyper_error(e: BoxError) -> ConnectorError {
    if find::<Fenced>(&*e) {
        // Worth a line of its own: the process was stopped or starved long enough for
        // its leadership to run out between handing a write over and writing it.
        tracing::warn!(
            "an EC2 route write was not sent: leadership ended before its bytes were written"
        );
        return ConnectorError::other(e, None);
    }
    if let Some(h) = e.downcast_ref::<hyper::Error>() {
        if h.is_timeout() {
            return ConnectorError::timeout(e);
        }
        if h.is_user() {
            return ConnectorError::user(e);
        }
        if h.is_incomplete_message() {
            return ConnectorError::other(e, Some(ErrorKind::TransientError));
        }
        if h.is_closed() || h.is_canceled() || find::<io::Error>(h) {
            return ConnectorError::io(e);
        }
    }
    ConnectorError::other(e, None)
}

/// Whether `E` is in the chain (io::Error's payload included).
fn find<E: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.is::<E>() {
            return true;
        }
        next = match e.downcast_ref::<io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|i| i as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    false
}

/// A TCP connector whose streams write only while the request in `slot` (if fenced) has
/// leadership left.
#[derive(Clone)]
struct FenceConnector {
    tcp: TcpConnector,
    slot: Arc<FenceSlot>,
}

impl Service<http::Uri> for FenceConnector {
    type Response = FencedIo<TokioIo<tokio::net::TcpStream>>;
    type Error = BoxError;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let slot = self.slot.clone();
        let connect = self.tcp.call(uri);
        Box::pin(async move {
            // Nothing to connect for: no write of this request could be sent anyway.
            if let Some(f) = slot.closed() {
                f.refused.store(true, Ordering::SeqCst);
                return Err(Fenced.into());
            }
            let inner = connect.await?;
            Ok(FencedIo { inner, slot })
        })
    }
}

/// A connection's byte stream, under TLS: every write first checks that the request it
/// carries still has leadership left, and fails the connection otherwise.
pub(super) struct FencedIo<S> {
    inner: S,
    slot: Arc<FenceSlot>,
}

impl<S> FencedIo<S> {
    fn refuse(&self) -> Option<io::Error> {
        let f = self.slot.closed()?;
        f.refused.store(true, Ordering::SeqCst);
        Some(io::Error::other(Fenced))
    }
}

impl<S: Read + Unpin> Read for FencedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: Write + Unpin> Write for FencedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.refuse() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.refuse() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: Connection> Connection for FencedIo<S> {
    fn connected(&self) -> Connected {
        self.inner.connected()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A fenced stream writes while leadership lasts and refuses (marking the fence)
    /// once it is over; the peer receives only the bytes written before.
    #[tokio::test]
    async fn writes_stop_when_leadership_ends() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut tcp = TcpConnector::new();
        tcp.enforce_http(false);
        let until = std::time::Instant::now() + Duration::from_millis(200);
        let fence = WriteFence {
            deadline: Arc::new(until),
            refused: Arc::default(),
        };
        let slot = Arc::new(FenceSlot::default());
        slot.set(Some(fence.clone()));
        let mut c = FenceConnector {
            tcp,
            slot: slot.clone(),
        };
        let io = c
            .call(format!("http://{addr}").parse().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let mut io = TokioIo::new(io);
        io.write_all(b"before").await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        let e = io.write_all(b"after").await.unwrap_err();
        assert!(find::<Fenced>(&e), "{e}");
        assert!(fence.refused.load(Ordering::SeqCst));
        drop(io);
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"before");
        // Nothing left: not even a connection is opened.
        let fence = WriteFence {
            deadline: Arc::new(std::time::Instant::now()),
            refused: Arc::default(),
        };
        slot.set(Some(fence.clone()));
        let e = c
            .call(format!("http://{addr}").parse().unwrap())
            .await
            .err()
            .unwrap();
        assert!(find::<Fenced>(&*e), "{e}");
        assert!(fence.refused.load(Ordering::SeqCst));
    }

    /// Through the SDK's connector interface: a request carrying leadership is sent and
    /// answered; one whose leadership is over, on the same kept-alive connection, never
    /// reaches the peer and fails for good (not an I/O error the SDK would retry); one
    /// without a fence is sent as is (on a new connection: the refused one is dropped).
    #[tokio::test]
    async fn requests_reach_the_peer_only_with_leadership_left() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let arrived = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (n, a) = (arrived.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let n = n.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0; 4096];
                    // One read per request: they are small and sent one at a time.
                    while s.read(&mut buf).await.unwrap_or(0) > 0 {
                        n.fetch_add(1, Ordering::SeqCst);
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(ok).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let c = FencedConnector {
            connect_timeout: Some(Duration::from_secs(1)),
            read_timeout: Some(Duration::from_secs(1)),
            tls: Arc::default(),
            pool: Arc::default(),
        };
        let request = |fence: Option<&WriteFence>| {
            let mut r = HttpRequest::new(SdkBody::from("Action=CreateRoute"));
            r.set_uri(format!("http://{addr}/")).unwrap();
            r.set_method("POST").unwrap();
            if let Some(f) = fence {
                r.add_extension(f.clone());
            }
            r
        };
        let fence = |left: Duration| WriteFence {
            deadline: Arc::new(std::time::Instant::now() + left),
            refused: Arc::default(),
        };
        let send = |r: HttpRequest| async {
            let r = c.call(r).await?;
            let body = aws_smithy_types::byte_stream::ByteStream::new(r.into_body())
                .collect()
                .await;
            // Back in the pool once read: give the connection's return a moment.
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<_, ConnectorError>(body.unwrap().into_bytes())
        };

        let live = fence(Duration::from_secs(10));
        assert_eq!(&send(request(Some(&live))).await.unwrap()[..], b"ok");
        assert!(!live.refused.load(Ordering::SeqCst));
        assert_eq!(&send(request(Some(&live))).await.unwrap()[..], b"ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "kept alive");

        let over = fence(Duration::ZERO);
        let e = send(request(Some(&over))).await.unwrap_err();
        assert!(!e.is_io() && !e.is_timeout(), "{e:?}");
        assert!(over.refused.load(Ordering::SeqCst));
        assert_eq!(
            arrived.load(Ordering::SeqCst),
            2,
            "the refused request arrived"
        );

        assert_eq!(&send(request(None)).await.unwrap()[..], b"ok");
        assert_eq!(arrived.load(Ordering::SeqCst), 3);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
