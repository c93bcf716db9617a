//! EKS IAM authentication in-process, the equivalent of `aws eks get-token`.
//!
//! An EKS bearer token is a presigned STS `GetCallerIdentity` URL: the API server (through
//! aws-iam-authenticator) replays it against STS to learn who we are. The `x-k8s-aws-id`
//! header carrying the cluster name is part of the signature, so a token minted for one
//! cluster cannot be replayed against another.
//!
//! Wiring: [`EksTokenSource`] mints and caches tokens from a credentials provider, and
//! [`EksAuthLayer`] puts `Authorization: Bearer …` on every request of a kube client.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
};
use aws_sigv4::sign::v4;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use futures::future::BoxFuture;
use http::header::{HeaderValue, AUTHORIZATION};
use tokio::sync::{Mutex, RwLock};
use tower::{BoxError, Layer, Service};

/// What aws-iam-authenticator prefixes to the base64url presigned URL.
pub const TOKEN_PREFIX: &str = "k8s-aws-v1.";
/// The signed header that binds a token to one cluster.
pub const CLUSTER_ID_HEADER: &str = "x-k8s-aws-id";
/// STS ignores `X-Amz-Expires` (URLs are good for 15 min after `X-Amz-Date`), but
/// aws-iam-authenticator 0.3.0 and older reject anything outside 0..=60, so everyone sends 60.
pub const PRESIGN_EXPIRES_IN: Duration = Duration::from_secs(60);
/// EKS accepts a token for 15 minutes after signing; claiming one minute less leaves room
/// for clock skew and for a request that is already in flight.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(14 * 60);
/// [`EksTokenSource`] mints a new token this long before the cached one's `expires_at`.
pub const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(60);
/// Default bound on one credentials fetch (IMDS can hang when the hop limit is wrong).
pub const DEFAULT_CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(5);

const STS_SIGNING_NAME: &str = "sts";
const X_AMZ_SIGNATURE: &str = "X-Amz-Signature";

/// A bearer token for the EKS API server. `Debug` never shows the value: it grants the
/// identity of the AWS credentials that signed it to whoever holds it.
#[derive(Clone)]
pub struct EksToken {
    /// `k8s-aws-v1.<base64url presigned URL>`; send as `Authorization: Bearer <value>`.
    pub value: String,
    /// When to stop using it (the earlier of signing time + 14 min and the signing
    /// credentials' own expiry).
    pub expires_at: SystemTime,
}

impl fmt::Debug for EksToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EksToken")
            .field("value", &"** redacted **")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl EksToken {
    /// The `Authorization` header value, marked sensitive so that `http`'s `Debug` of the
    /// request hides it too.
    pub fn authorization_header(&self) -> Result<HeaderValue, EksTokenError> {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", self.value))
            .map_err(|_| EksTokenError::HeaderValue)?;
        value.set_sensitive(true);
        Ok(value)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EksTokenError {
    #[error("invalid EKS cluster name {name:?}: {why}")]
    InvalidClusterName { name: String, why: &'static str },
    #[error("invalid AWS region {region:?} for the STS endpoint: {why}")]
    InvalidRegion { region: String, why: &'static str },
    #[error("presigning STS GetCallerIdentity for EKS cluster {cluster} in {region}: {cause}")]
    Sign {
        cluster: String,
        region: String,
        cause: String,
    },
    #[error("fetching AWS credentials for the EKS token of cluster {cluster}: no answer within {timeout:?}")]
    CredentialsTimeout { cluster: String, timeout: Duration },
    #[error("fetching AWS credentials for the EKS token of cluster {cluster}: {cause}")]
    Credentials { cluster: String, cause: String },
    // Cannot happen for a base64url token; kept as an error rather than a panic because
    // the value passes through code we do not control.
    #[error("the EKS token is not a valid HTTP header value")]
    HeaderValue,
}

/// Presigns `GET https://sts.{region}.{domain}/?Action=GetCallerIdentity&Version=2011-06-15`
/// with `x-k8s-aws-id: {cluster_name}` signed, and wraps it as an EKS bearer token.
///
/// Pure: the same inputs always give the same token.
pub fn presign(
    cluster_name: &str,
    region: &str,
    credentials: &Credentials,
    now: SystemTime,
) -> Result<EksToken, EksTokenError> {
    validate_cluster_name(cluster_name)?;
    let host = sts_host(region)?;
    let sign_err = |cause: String| EksTokenError::Sign {
        cluster: cluster_name.to_string(),
        region: region.to_string(),
        cause,
    };

    // The regional endpoint, not the global `sts.amazonaws.com`: aws-iam-authenticator
    // accepts the hosts its partition's regional STS endpoints resolve to, and the
    // regional one keeps working when the global endpoint is disabled or unreachable.
    let base_url = format!("https://{host}/?Action=GetCallerIdentity&Version=2011-06-15");

    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(PRESIGN_EXPIRES_IN);
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(STS_SIGNING_NAME)
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| sign_err(error_chain(&e)))?
        .into();
    let request = SignableRequest::new(
        "GET",
        base_url.as_str(),
        std::iter::once((CLUSTER_ID_HEADER, cluster_name)),
        SignableBody::empty(),
    )
    .map_err(|e| sign_err(error_chain(&e)))?;
    let (instructions, _signature) = sign(request, &params)
        .map_err(|e| sign_err(error_chain(&e)))?
        .into_parts();
    // With QueryParams everything lands in the query: the header stays a signed header
    // that the API server re-adds when it replays the URL, never a query parameter (the
    // authenticator rejects unknown parameters).
    let (_headers, query) = instructions.into_parts();

    let url = presigned_url(base_url, query);
    let lifetime_end = now + TOKEN_LIFETIME;
    let expires_at = match credentials.expiry() {
        // STS rejects a URL signed with session credentials that have since expired.
        Some(credentials_end) if credentials_end < lifetime_end => credentials_end,
        _ => lifetime_end,
    };
    Ok(EksToken {
        value: format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(url)),
        expires_at,
    })
}

/// Appends the signing parameters, signature last, so the URL is byte-for-byte what
/// botocore (`aws eks get-token`) produces.
fn presigned_url(mut url: String, query: Vec<(&'static str, Cow<'static, str>)>) -> String {
    let (signature, rest): (Vec<_>, Vec<_>) =
        query.into_iter().partition(|(k, _)| *k == X_AMZ_SIGNATURE);
    for (name, value) in rest.into_iter().chain(signature) {
        url.push('&');
        url.push_str(name);
        url.push('=');
        uri_encode(&value, &mut url);
    }
    url
}

/// SigV4's URI encoding: everything but RFC 3986 unreserved characters, upper-case hex.
fn uri_encode(value: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
}

fn sts_host(region: &str) -> Result<String, EksTokenError> {
    let invalid = |why| EksTokenError::InvalidRegion {
        region: region.to_string(),
        why,
    };
    if region.is_empty() {
        return Err(invalid("it is empty"));
    }
    // The region becomes part of a host name: anything else would change the URL.
    if region.len() > 64
        || !region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(invalid(
            "expected lower-case letters, digits and dashes, like us-west-2",
        ));
    }
    let domain = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    Ok(format!("sts.{region}.{domain}"))
}

fn validate_cluster_name(name: &str) -> Result<(), EksTokenError> {
    let invalid = |why| EksTokenError::InvalidClusterName {
        name: name.to_string(),
        why,
    };
    if name.is_empty() {
        return Err(invalid("it is empty"));
    }
    // EKS names are [0-9A-Za-z][A-Za-z0-9_-]*, but aws-iam-authenticator cluster IDs on
    // other installers (kops) are DNS names: accept any header-safe visible ASCII.
    if !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "it must be visible ASCII without spaces (it is sent as an HTTP header)",
        ));
    }
    Ok(())
}

/// AWS SDK errors say little at the top level; the useful part is in the sources.
fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        next = e.source();
    }
    out
}

type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

#[derive(Clone)]
struct Cached {
    token: EksToken,
    minted_at: SystemTime,
}

/// Mints EKS tokens from a credentials provider and caches them: a new one at most every
/// ~13 minutes, one at a time however many requests are waiting.
pub struct EksTokenSource {
    cluster_name: String,
    region: String,
    credentials: SharedCredentialsProvider,
    credentials_timeout: Duration,
    clock: Clock,
    cache: RwLock<Option<Cached>>,
    // Separate from `cache` so readers of a fresh token never wait behind a mint.
    mint: Mutex<()>,
}

impl fmt::Debug for EksTokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EksTokenSource")
            .field("cluster_name", &self.cluster_name)
            .field("region", &self.region)
            .field("credentials", &self.credentials)
            .field("credentials_timeout", &self.credentials_timeout)
            .finish_non_exhaustive()
    }
}

impl EksTokenSource {
    /// `credentials` is typically `sdk_config.credentials_provider()` from
    /// `aws_config::defaults(..).load()`. The names are checked here so that a bad config
    /// fails at startup, not on the first API request.
    pub fn new(
        cluster_name: impl Into<String>,
        region: impl Into<String>,
        credentials: SharedCredentialsProvider,
    ) -> Result<Self, EksTokenError> {
        let cluster_name = cluster_name.into();
        let region = region.into();
        validate_cluster_name(&cluster_name)?;
        sts_host(&region)?;
        Ok(EksTokenSource {
            cluster_name,
            region,
            credentials,
            credentials_timeout: DEFAULT_CREDENTIALS_TIMEOUT,
            clock: Arc::new(SystemTime::now),
            cache: RwLock::new(None),
            mint: Mutex::new(()),
        })
    }

    /// Bound on one credentials fetch (default [`DEFAULT_CREDENTIALS_TIMEOUT`]).
    pub fn with_credentials_timeout(mut self, timeout: Duration) -> Self {
        self.credentials_timeout = timeout;
        self
    }

    pub fn cluster_name(&self) -> &str {
        &self.cluster_name
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    #[cfg(test)]
    fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// A token valid for at least another minute: the cached one, or a freshly minted one.
    ///
    /// If minting fails while the cached token has not yet reached `expires_at`, the cached
    /// token is returned (and the failure logged): a credentials hiccup in the last minute
    /// should not fail requests that would still be accepted.
    pub async fn token(&self) -> Result<EksToken, EksTokenError> {
        if let Some(token) = self.fresh(&*self.cache.read().await) {
            return Ok(token);
        }
        let _minting = self.mint.lock().await;
        // Another caller may have minted while we waited for the lock.
        let previous = self.cache.read().await.clone();
        if let Some(token) = self.fresh(&previous) {
            return Ok(token);
        }
        match self.mint().await {
            Ok(cached) => {
                let token = cached.token.clone();
                *self.cache.write().await = Some(cached);
                Ok(token)
            }
            Err(err) => match previous {
                Some(prev) if self.usable(&prev) => {
                    tracing::warn!(
                        cluster = %self.cluster_name,
                        error = %err,
                        "could not refresh the EKS token; using the current one until it expires"
                    );
                    Ok(prev.token)
                }
                _ => Err(err),
            },
        }
    }

    fn fresh(&self, cached: &Option<Cached>) -> Option<EksToken> {
        let cached = cached.as_ref()?;
        let now = (self.clock)();
        // A clock that went backwards makes the token older than it looks: re-mint.
        let fresh =
            now >= cached.minted_at && now + REFRESH_BEFORE_EXPIRY < cached.token.expires_at;
        fresh.then(|| cached.token.clone())
    }

    fn usable(&self, cached: &Cached) -> bool {
        let now = (self.clock)();
        now >= cached.minted_at && now < cached.token.expires_at
    }

    async fn mint(&self) -> Result<Cached, EksTokenError> {
        let credentials = tokio::time::timeout(
            self.credentials_timeout,
            self.credentials.provide_credentials(),
        )
        .await
        .map_err(|_| EksTokenError::CredentialsTimeout {
            cluster: self.cluster_name.clone(),
            timeout: self.credentials_timeout,
        })?
        .map_err(|e| EksTokenError::Credentials {
            cluster: self.cluster_name.clone(),
            cause: error_chain(&e),
        })?;
        let now = (self.clock)();
        let token = presign(&self.cluster_name, &self.region, &credentials, now)?;
        tracing::debug!(
            cluster = %self.cluster_name,
            region = %self.region,
            expires_at = ?token.expires_at,
            "minted a new EKS token"
        );
        Ok(Cached {
            token,
            minted_at: now,
        })
    }
}

/// A tower layer for `kube::client::ClientBuilder::with_layer` that authenticates every
/// request with a token from an [`EksTokenSource`].
#[derive(Clone, Debug)]
pub struct EksAuthLayer {
    source: Arc<EksTokenSource>,
}

impl EksAuthLayer {
    pub fn new(source: Arc<EksTokenSource>) -> Self {
        EksAuthLayer { source }
    }
}

impl<S> Layer<S> for EksAuthLayer {
    type Service = EksAuth<S>;

    fn layer(&self, inner: S) -> EksAuth<S> {
        EksAuth {
            inner: Arc::new(Mutex::new(inner)),
            source: Arc::clone(&self.source),
        }
    }
}

/// The service [`EksAuthLayer`] builds.
///
/// kube's default stack is a `BoxService`, which is not `Clone`, yet the token has to be
/// awaited before the inner service is called. So the inner service sits behind a mutex
/// held only for its `poll_ready` + `call` (not for the response), which keeps tower's
/// "ready, then call" contract; kube's `Buffer` in front of us serializes calls anyway.
pub struct EksAuth<S> {
    inner: Arc<Mutex<S>>,
    source: Arc<EksTokenSource>,
}

impl<S> Clone for EksAuth<S> {
    fn clone(&self) -> Self {
        EksAuth {
            inner: Arc::clone(&self.inner),
            source: Arc::clone(&self.source),
        }
    }
}

impl<S> fmt::Debug for EksAuth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EksAuth")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl<S, B> Service<http::Request<B>> for EksAuth<S>
where
    S: Service<http::Request<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // The inner service's readiness is awaited inside the call's future, under the lock.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        let source = Arc::clone(&self.source);
        Box::pin(async move {
            // Fails this request only; kube surfaces it as `kube::Error::Service`, from
            // which the `EksTokenError` can be downcast.
            let token = source.token().await?;
            req.headers_mut()
                .insert(AUTHORIZATION, token.authorization_header()?);
            let response = {
                let mut svc = inner.lock().await;
                std::future::poll_fn(|cx| svc.poll_ready(cx))
                    .await
                    .map_err(Into::into)?;
                svc.call(req)
            };
            response.await.map_err(Into::into)
        })
    }
}

#[cfg(test)]
mod tests;
