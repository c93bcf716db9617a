use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};

use aws_credential_types::provider::{error::CredentialsError, future};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

const AKID: &str = "AKIDEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
// Characters that need percent-encoding, to pin the query encoding too.
const SESSION_TOKEN: &str = "FQoGZXIvYXdzEXAMPLE//token+with/special=chars";
const CLUSTER: &str = "hybrid-prod";
const REGION: &str = "us-west-2";
/// 2026-01-02T03:04:05Z
const T0: u64 = 1_767_323_045;

// Independent vectors: botocore 1.44.5 `generate_presigned_url('get_caller_identity',
// ExpiresIn=60, HttpMethod='GET')` on an `sts` client for us-west-2 with endpoint
// https://sts.us-west-2.amazonaws.com, the `x-k8s-aws-id` header injected on `before-sign`
// exactly as awscli's `aws eks get-token` does, `get_current_datetime` patched to T0 and
// the same credentials; then "k8s-aws-v1." + urlsafe_b64encode(url) without padding.
const BOTOCORE_URL: &str = "https://sts.us-west-2.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20260102%2Fus-west-2%2Fsts%2Faws4_request&X-Amz-Date=20260102T030405Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host%3Bx-k8s-aws-id&X-Amz-Signature=24f1e42319320a248bb2bf12278ff59f8d2ac24e2e1901e9b2b1b39e80616f88";
const BOTOCORE_TOKEN: &str = "k8s-aws-v1.aHR0cHM6Ly9zdHMudXMtd2VzdC0yLmFtYXpvbmF3cy5jb20vP0FjdGlvbj1HZXRDYWxsZXJJZGVudGl0eSZWZXJzaW9uPTIwMTEtMDYtMTUmWC1BbXotQWxnb3JpdGhtPUFXUzQtSE1BQy1TSEEyNTYmWC1BbXotQ3JlZGVudGlhbD1BS0lERVhBTVBMRSUyRjIwMjYwMTAyJTJGdXMtd2VzdC0yJTJGc3RzJTJGYXdzNF9yZXF1ZXN0JlgtQW16LURhdGU9MjAyNjAxMDJUMDMwNDA1WiZYLUFtei1FeHBpcmVzPTYwJlgtQW16LVNpZ25lZEhlYWRlcnM9aG9zdCUzQngtazhzLWF3cy1pZCZYLUFtei1TaWduYXR1cmU9MjRmMWU0MjMxOTMyMGEyNDhiYjJiZjEyMjc4ZmY1OWY4ZDJhYzI0ZTJlMTkwMWU5YjJiMWIzOWU4MDYxNmY4OA";
const BOTOCORE_SESSION_URL: &str = "https://sts.us-west-2.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20260102%2Fus-west-2%2Fsts%2Faws4_request&X-Amz-Date=20260102T030405Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host%3Bx-k8s-aws-id&X-Amz-Security-Token=FQoGZXIvYXdzEXAMPLE%2F%2Ftoken%2Bwith%2Fspecial%3Dchars&X-Amz-Signature=63bb20b0ba641d9fe6c0cff411e7d05bb5cf87ef062715b957ae6edac4181d13";
const BOTOCORE_OTHER_CLUSTER_SIGNATURE: &str =
    "8365338ca660d08a42af80fcf210eb40975b9fac967e51d8453c99358af455ea";

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(T0)
}

fn creds(session_token: Option<&str>) -> Credentials {
    Credentials::new(
        AKID,
        SECRET,
        session_token.map(str::to_string),
        None,
        "test",
    )
}

fn decode_url(token: &EksToken) -> String {
    let b64 = token
        .value
        .strip_prefix(TOKEN_PREFIX)
        .expect("token has the k8s-aws-v1. prefix");
    String::from_utf8(
        URL_SAFE_NO_PAD
            .decode(b64)
            .expect("base64url without padding"),
    )
    .expect("URL is UTF-8")
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("hex");
            out.push(u8::from_str_radix(hex, 16).expect("hex digit"));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("UTF-8")
}

/// (scheme://host/path, decoded query); panics on a repeated parameter.
fn split_url(url: &str) -> (&str, BTreeMap<String, String>) {
    let (base, query) = url.split_once('?').expect("URL has a query");
    let mut params = BTreeMap::new();
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').expect("key=value");
        let previous = params.insert(percent_decode(k), percent_decode(v));
        assert!(previous.is_none(), "parameter {k} repeated");
    }
    (base, params)
}

fn signature(token: &EksToken) -> String {
    split_url(&decode_url(token)).1["X-Amz-Signature"].clone()
}

#[test]
fn token_matches_botocore_vector_without_session_token() {
    let token = presign(CLUSTER, REGION, &creds(None), t0()).unwrap();
    assert_eq!(decode_url(&token), BOTOCORE_URL);
    assert_eq!(token.value, BOTOCORE_TOKEN);
}

#[test]
fn token_matches_botocore_vector_with_session_token() {
    let token = presign(CLUSTER, REGION, &creds(Some(SESSION_TOKEN)), t0()).unwrap();
    assert_eq!(decode_url(&token), BOTOCORE_SESSION_URL);
}

#[test]
fn signature_matches_botocore_vector_for_another_cluster_and_differs() {
    let other = presign("other-cluster", REGION, &creds(None), t0()).unwrap();
    let ours = presign(CLUSTER, REGION, &creds(None), t0()).unwrap();
    assert_eq!(signature(&other), BOTOCORE_OTHER_CLUSTER_SIGNATURE);
    // Only the x-k8s-aws-id header differs between the two: it is signed.
    assert_ne!(signature(&other), signature(&ours));
    assert_eq!(
        split_url(&decode_url(&other)).1["X-Amz-SignedHeaders"],
        "host;x-k8s-aws-id"
    );
}

#[test]
fn presigned_url_has_exactly_the_authenticator_query_parameters() {
    let token = presign(CLUSTER, REGION, &creds(None), t0()).unwrap();
    let url = decode_url(&token);
    let (base, params) = split_url(&url);
    assert_eq!(base, "https://sts.us-west-2.amazonaws.com/");
    let expected = [
        ("Action", "GetCallerIdentity"),
        ("Version", "2011-06-15"),
        ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
        (
            "X-Amz-Credential",
            "AKIDEXAMPLE/20260102/us-west-2/sts/aws4_request",
        ),
        ("X-Amz-Date", "20260102T030405Z"),
        ("X-Amz-Expires", "60"),
        ("X-Amz-SignedHeaders", "host;x-k8s-aws-id"),
    ];
    for (k, v) in expected {
        assert_eq!(params.get(k).map(String::as_str), Some(v), "{k}");
    }
    let sig = &params["X-Amz-Signature"];
    assert_eq!(sig.len(), 64);
    assert!(sig
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    // aws-iam-authenticator rejects any parameter outside its allow-list, and the
    // cluster name must travel as a signed header, not in the query.
    let mut keys: Vec<_> = params.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "Action",
            "Version",
            "X-Amz-Algorithm",
            "X-Amz-Credential",
            "X-Amz-Date",
            "X-Amz-Expires",
            "X-Amz-Signature",
            "X-Amz-SignedHeaders",
        ]
    );
    assert!(!url.contains(CLUSTER));
}

#[test]
fn session_token_travels_in_the_query() {
    let token = presign(CLUSTER, REGION, &creds(Some(SESSION_TOKEN)), t0()).unwrap();
    let (_, params) = split_url(&decode_url(&token));
    assert_eq!(params["X-Amz-Security-Token"], SESSION_TOKEN);
    assert_eq!(params["X-Amz-SignedHeaders"], "host;x-k8s-aws-id");
    assert_eq!(params.len(), 9);
    // The session token is part of the signed query.
    let without = presign(CLUSTER, REGION, &creds(None), t0()).unwrap();
    assert_ne!(signature(&token), signature(&without));
}

#[test]
fn same_inputs_give_the_same_token() {
    let a = presign(CLUSTER, REGION, &creds(Some(SESSION_TOKEN)), t0()).unwrap();
    let b = presign(CLUSTER, REGION, &creds(Some(SESSION_TOKEN)), t0()).unwrap();
    assert_eq!(a.value, b.value);
    assert_eq!(a.expires_at, b.expires_at);
    let later = presign(
        CLUSTER,
        REGION,
        &creds(Some(SESSION_TOKEN)),
        t0() + Duration::from_secs(1),
    )
    .unwrap();
    assert_ne!(signature(&a), signature(&later));
}

#[test]
fn expires_fourteen_minutes_after_signing() {
    let token = presign(CLUSTER, REGION, &creds(None), t0()).unwrap();
    assert_eq!(token.expires_at, t0() + Duration::from_secs(14 * 60));
}

#[test]
fn expiry_is_capped_by_the_credentials_expiry() {
    let soon = t0() + Duration::from_secs(5 * 60);
    let c = Credentials::new(AKID, SECRET, Some(SESSION_TOKEN.into()), Some(soon), "test");
    assert_eq!(presign(CLUSTER, REGION, &c, t0()).unwrap().expires_at, soon);
    let late = t0() + Duration::from_secs(6 * 3600);
    let c = Credentials::new(AKID, SECRET, Some(SESSION_TOKEN.into()), Some(late), "test");
    assert_eq!(
        presign(CLUSTER, REGION, &c, t0()).unwrap().expires_at,
        t0() + TOKEN_LIFETIME
    );
}

#[test]
fn china_regions_use_the_amazonaws_com_cn_domain() {
    let token = presign(CLUSTER, "cn-north-1", &creds(None), t0()).unwrap();
    let url = decode_url(&token);
    let (base, params) = split_url(&url);
    assert_eq!(base, "https://sts.cn-north-1.amazonaws.com.cn/");
    assert_eq!(
        params["X-Amz-Credential"],
        "AKIDEXAMPLE/20260102/cn-north-1/sts/aws4_request"
    );
}

#[test]
fn rejects_names_that_would_break_the_url_or_header() {
    for region in ["", "us-west-2.evil.com/", "US-WEST-2", "us west"] {
        let err = presign(CLUSTER, region, &creds(None), t0()).unwrap_err();
        assert!(
            matches!(err, EksTokenError::InvalidRegion { .. }),
            "{region:?}: {err}"
        );
    }
    for name in ["", "a b", "x\r\ny", "é"] {
        let err = presign(name, REGION, &creds(None), t0()).unwrap_err();
        assert!(
            matches!(err, EksTokenError::InvalidClusterName { .. }),
            "{name:?}: {err}"
        );
    }
    // kops-style DNS names are valid aws-iam-authenticator cluster IDs.
    presign("k8s.example.com", REGION, &creds(None), t0()).unwrap();
}

#[test]
fn debug_never_shows_the_token() {
    let token = presign(CLUSTER, REGION, &creds(Some(SESSION_TOKEN)), t0()).unwrap();
    let debug = format!("{token:?}");
    assert!(!debug.contains(TOKEN_PREFIX), "{debug}");
    assert!(debug.contains("redacted"));
    let header = token.authorization_header().unwrap();
    assert!(header.is_sensitive());
    assert_eq!(header.to_str().unwrap(), format!("Bearer {}", token.value));
    assert!(!format!("{header:?}").contains(TOKEN_PREFIX));
}

// ---- EksTokenSource ----

#[derive(Debug, Default)]
struct ProviderState {
    calls: AtomicUsize,
    fail: AtomicBool,
    hang: AtomicBool,
}

#[derive(Debug, Clone, Default)]
struct FakeProvider(Arc<ProviderState>);

impl ProvideCredentials for FakeProvider {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        self.0.calls.fetch_add(1, SeqCst);
        if self.0.hang.load(SeqCst) {
            return future::ProvideCredentials::new(std::future::pending());
        }
        if self.0.fail.load(SeqCst) {
            return future::ProvideCredentials::ready(Err(CredentialsError::provider_error(
                "IMDS said no",
            )));
        }
        future::ProvideCredentials::new(async {
            // Lets concurrent callers pile up behind the mint.
            tokio::task::yield_now().await;
            Ok(creds(Some(SESSION_TOKEN)))
        })
    }
}

/// A settable wall clock, in seconds after T0.
#[derive(Clone, Default)]
struct FakeClock(Arc<AtomicU64>);

impl FakeClock {
    fn set(&self, secs_after_t0: u64) {
        self.0.store(secs_after_t0, SeqCst);
    }
    fn clock(&self) -> Clock {
        let offset = Arc::clone(&self.0);
        Arc::new(move || t0() + Duration::from_secs(offset.load(SeqCst)))
    }
}

fn source(provider: &FakeProvider, clock: &FakeClock) -> EksTokenSource {
    EksTokenSource::new(
        CLUSTER,
        REGION,
        SharedCredentialsProvider::new(provider.clone()),
    )
    .unwrap()
    .with_clock(clock.clock())
}

#[tokio::test]
async fn source_caches_until_a_minute_before_expiry() {
    let provider = FakeProvider::default();
    let clock = FakeClock::default();
    let src = source(&provider, &clock);

    let first = src.token().await.unwrap();
    assert_eq!(first.expires_at, t0() + TOKEN_LIFETIME);
    assert_eq!(
        first.value,
        presign(CLUSTER, REGION, &creds(Some(SESSION_TOKEN)), t0())
            .unwrap()
            .value
    );
    clock.set(12 * 60 + 59);
    assert_eq!(src.token().await.unwrap().value, first.value);
    assert_eq!(provider.0.calls.load(SeqCst), 1);

    clock.set(13 * 60);
    let second = src.token().await.unwrap();
    assert_ne!(second.value, first.value);
    assert_eq!(
        second.expires_at,
        t0() + Duration::from_secs(13 * 60) + TOKEN_LIFETIME
    );
    assert_eq!(provider.0.calls.load(SeqCst), 2);
}

#[tokio::test]
async fn concurrent_callers_mint_once() {
    let provider = FakeProvider::default();
    let src = Arc::new(source(&provider, &FakeClock::default()));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let src = Arc::clone(&src);
            tokio::spawn(async move { src.token().await.unwrap().value })
        })
        .collect();
    let mut values = Vec::new();
    for t in tasks {
        values.push(t.await.unwrap());
    }
    values.dedup();
    assert_eq!(values.len(), 1);
    assert_eq!(provider.0.calls.load(SeqCst), 1);
}

#[tokio::test]
async fn clock_going_backwards_forces_a_new_token() {
    let provider = FakeProvider::default();
    let clock = FakeClock::default();
    clock.set(600);
    let src = source(&provider, &clock);
    src.token().await.unwrap();
    clock.set(0);
    src.token().await.unwrap();
    assert_eq!(provider.0.calls.load(SeqCst), 2);
}

#[tokio::test]
async fn refresh_failure_keeps_the_current_token_until_it_expires() {
    let provider = FakeProvider::default();
    let clock = FakeClock::default();
    let src = source(&provider, &clock);
    let first = src.token().await.unwrap();

    provider.0.fail.store(true, SeqCst);
    clock.set(13 * 60 + 30);
    assert_eq!(src.token().await.unwrap().value, first.value);

    clock.set(14 * 60);
    let err = src.token().await.unwrap_err();
    assert!(matches!(err, EksTokenError::Credentials { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(CLUSTER) && msg.contains("IMDS said no"),
        "{msg}"
    );

    provider.0.fail.store(false, SeqCst);
    assert_ne!(src.token().await.unwrap().value, first.value);
}

#[tokio::test(start_paused = true)]
async fn credentials_fetch_is_bounded() {
    let provider = FakeProvider::default();
    provider.0.hang.store(true, SeqCst);
    let src =
        source(&provider, &FakeClock::default()).with_credentials_timeout(Duration::from_secs(3));
    let err = src.token().await.unwrap_err();
    assert!(
        matches!(err, EksTokenError::CredentialsTimeout { timeout, .. } if timeout == Duration::from_secs(3)),
        "{err}"
    );
}

#[test]
fn source_rejects_bad_names_up_front() {
    let p = || SharedCredentialsProvider::new(FakeProvider::default());
    assert!(matches!(
        EksTokenSource::new("", REGION, p()),
        Err(EksTokenError::InvalidClusterName { .. })
    ));
    assert!(matches!(
        EksTokenSource::new(CLUSTER, "", p()),
        Err(EksTokenError::InvalidRegion { .. })
    ));
}

// ---- EksAuthLayer ----

/// Not `Clone`, like kube's boxed default stack; records what it was called with.
struct Recorder {
    seen: Arc<std::sync::Mutex<Vec<Option<HeaderValue>>>>,
}

impl Service<http::Request<()>> for Recorder {
    type Response = http::Response<()>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<http::Response<()>, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<()>) -> Self::Future {
        self.seen
            .lock()
            .unwrap()
            .push(req.headers().get(AUTHORIZATION).cloned());
        std::future::ready(Ok(http::Response::new(())))
    }
}

#[tokio::test]
async fn layer_sets_a_sensitive_bearer_header() {
    let provider = FakeProvider::default();
    let src = Arc::new(source(&provider, &FakeClock::default()));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut svc = EksAuthLayer::new(Arc::clone(&src)).layer(Recorder {
        seen: Arc::clone(&seen),
    });
    for _ in 0..2 {
        let req = http::Request::builder()
            .header(AUTHORIZATION, "Bearer stale")
            .body(())
            .unwrap();
        std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
        svc.call(req).await.unwrap();
    }
    let expected = format!("Bearer {}", src.token().await.unwrap().value);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    for h in seen.iter() {
        let h = h.as_ref().expect("Authorization set");
        assert_eq!(h.to_str().unwrap(), expected);
        assert!(h.is_sensitive());
    }
    assert_eq!(provider.0.calls.load(SeqCst), 1);
}

#[tokio::test]
async fn layer_fails_the_request_on_token_error() {
    let provider = FakeProvider::default();
    provider.0.fail.store(true, SeqCst);
    let src = Arc::new(source(&provider, &FakeClock::default()));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut svc = EksAuthLayer::new(src).layer(Recorder {
        seen: Arc::clone(&seen),
    });
    let err = svc.call(http::Request::new(())).await.unwrap_err();
    let err = err
        .downcast_ref::<EksTokenError>()
        .expect("an EksTokenError");
    assert!(matches!(err, EksTokenError::Credentials { .. }));
    assert!(seen.lock().unwrap().is_empty(), "inner service not called");
}

/// Serves one HTTP/1.1 request on 127.0.0.1 and hands back its head.
async fn one_shot_server() -> (http::Uri, tokio::task::JoinHandle<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("http://{}", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    let task = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "client closed early");
            head.extend_from_slice(&buf[..n]);
        }
        let body = "ok";
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(response.as_bytes()).await.unwrap();
        conn.shutdown().await.unwrap();
        String::from_utf8(head).unwrap()
    });
    (uri, task)
}

#[tokio::test]
async fn kube_client_built_with_the_layer_sends_the_token() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let provider = FakeProvider::default();
    let src = Arc::new(source(&provider, &FakeClock::default()));
    let (uri, server) = one_shot_server().await;

    let config = kube::Config::new(uri);
    let client = kube::client::ClientBuilder::try_from(config)
        .unwrap()
        .with_layer(&EksAuthLayer::new(Arc::clone(&src)))
        .build();
    let text = client
        .request_text(http::Request::get("/version").body(Vec::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(text, "ok");

    let head = server.await.unwrap().to_ascii_lowercase();
    let expected = format!(
        "authorization: bearer {}\r\n",
        src.token().await.unwrap().value
    )
    .to_ascii_lowercase();
    assert!(head.starts_with("get /version "), "{head}");
    assert!(head.contains(&expected), "{head}");
}

/// A throw-away self-signed CA (no key kept): `from_custom_kubeconfig` parses the CA data.
const TEST_CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBjjCCATWgAwIBAgIUEyxUix9Bq0a8dO7Fqrt/tsL+QtQwCgYIKoZIzj0EAwIw
HDEaMBgGA1UEAwwRZWtzLXRva2VuLXRlc3QtY2EwIBcNMjYxMTIxMDY0MTA5WhgP
MjEyNjEwMjgwNjQxMDlaMBwxGjAYBgNVBAMMEWVrcy10b2tlbi10ZXN0LWNhMFkw
EwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEfnxkcFYDnMPzIgungllpHdgQ5jpUsZij
m8J81Ji7xhTeCQTTI4QQK7B3Bv5KFRPoaXvzCoQ+2TaE4VJNKfWA+6NTMFEwHQYD
VR0OBBYEFA8Ghl3azVMSLv35X1LfE+8TJ915MB8GA1UdIwQYMBaAFA8Ghl3azVMS
Lv35X1LfE+8TJ915MA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDRwAwRAIg
Mj4RjvyD2hzxMa6RKaHz6e6Gyq3nI++lQ+5u1aSEIYsCIAjVHWwKtE5bi/N3G+sN
lwMsr4dQE4o6+QOF0Ud1PM1a
-----END CERTIFICATE-----
";

/// The production wiring (`k8s::client`): its in-memory kubeconfig under the layer.
async fn eks_client(
    endpoint: &str,
    ca_pem: &[u8],
    source: Arc<EksTokenSource>,
) -> Result<kube::Client, BoxError> {
    let config = crate::k8s::client::eks_config(endpoint, ca_pem, source.cluster_name()).await?;
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&EksAuthLayer::new(source))
        .build())
}

#[tokio::test]
async fn in_memory_kubeconfig_wiring_sends_the_eks_token() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let provider = FakeProvider::default();
    let src = Arc::new(source(&provider, &FakeClock::default()));
    let (uri, server) = one_shot_server().await;

    let client = eks_client(&uri.to_string(), TEST_CA_PEM.as_bytes(), Arc::clone(&src))
        .await
        .unwrap();
    client
        .request_text(http::Request::get("/version").body(Vec::new()).unwrap())
        .await
        .unwrap();

    let head = server.await.unwrap().to_ascii_lowercase();
    let expected = format!(
        "authorization: bearer {}\r\n",
        src.token().await.unwrap().value
    )
    .to_ascii_lowercase();
    assert!(head.contains(&expected), "{head}");
    assert_eq!(head.matches("authorization:").count(), 1, "{head}");
}
