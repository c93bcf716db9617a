//! Who this instance is, from IMDSv2 (aws-config's client: session token always, never the
//! IMDSv1 fallback). Values given in the configuration win over IMDS.

use std::net::Ipv4Addr;
use std::time::Duration;

use aws_config::imds::client::error::ImdsError as SdkImdsError;
use aws_config::imds::Client;

const BASE: &str = "/latest/meta-data/";

/// This instance as the rest of the daemon needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub instance_id: String,
    /// `aws.region`, else IMDS `placement/region` (never the AZ with its letter cut off:
    /// that is wrong in Local Zones, e.g. `us-west-2-lax-1a`).
    pub region: String,
    pub availability_zone: String,
    /// MAC of the primary network interface (device index 0).
    pub mac: String,
    /// `gateway.node_ip`, else IMDS `local-ipv4`.
    pub local_ipv4: Ipv4Addr,
    /// The primary ENI: the VPC routes' target and the one whose source/dest check matters.
    pub primary_eni: String,
    /// The primary ENI's VPC: route tables are managed only in it (a tag is account-wide).
    pub vpc_id: String,
}

/// Configuration values that replace what IMDS would say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub region: Option<String>,
    pub node_ip: Option<Ipv4Addr>,
}

/// How hard to try. IMDS is link-local and answers in milliseconds; at boot it can lag the
/// network a little, hence a few attempts, but a gateway without IMDS should fail fast
/// with a clear message rather than hang.
#[derive(Debug, Clone)]
pub struct ImdsSettings {
    /// Attempts per value, the first included.
    pub attempts: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Connect and read timeout of one HTTP request.
    pub request_timeout: Duration,
}

impl Default for ImdsSettings {
    fn default() -> Self {
        ImdsSettings {
            attempts: 4,
            backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(2),
            request_timeout: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error(
        "the instance metadata service (IMDSv2) did not answer {path} after {attempts} attempts: {cause}. \
         Is this an EC2 instance with the metadata endpoint enabled (and, in a container, \
         an http-put-response-hop-limit of 2)? Otherwise set gateway.node_ip and aws.region"
    )]
    Unreachable {
        path: String,
        attempts: u32,
        cause: String,
    },
    #[error("the instance metadata service refused {path}: {cause}")]
    Refused { path: String, cause: String },
    #[error("the instance metadata service returned an unusable {path}: {value:?} ({why})")]
    Invalid {
        path: String,
        value: String,
        why: &'static str,
    },
}

/// The IMDS client used everywhere. The endpoint follows the SDK's standard rules
/// (`AWS_EC2_METADATA_SERVICE_ENDPOINT`, the profile, else 169.254.169.254).
pub fn client(settings: &ImdsSettings) -> Client {
    Client::builder()
        // Our own loop below retries with jitter and also retries connection failures,
        // which the SDK's IMDS client deliberately does not.
        .max_attempts(1)
        .connect_timeout(settings.request_timeout)
        .read_timeout(settings.request_timeout)
        .operation_timeout(settings.request_timeout * 3)
        .build()
}

impl Identity {
    /// Reads every value IMDS has to give, skipping those the configuration supplies.
    pub async fn discover(
        client: &Client,
        overrides: &Overrides,
        settings: &ImdsSettings,
    ) -> Result<Identity, ImdsError> {
        let get = |leaf: String| async move { fetch(client, &leaf, settings).await };

        let instance_id = get("instance-id".into()).await?;
        check(
            "instance-id",
            &instance_id,
            |v| v.starts_with("i-"),
            "not an instance id",
        )?;
        let mac = get("mac".into()).await?.to_ascii_lowercase();
        check("mac", &mac, is_mac, "not a MAC address")?;
        let primary_eni = get(format!("network/interfaces/macs/{mac}/interface-id")).await?;
        check(
            "interface-id",
            &primary_eni,
            |v| v.starts_with("eni-"),
            "not an ENI id",
        )?;
        let vpc_id = get(format!("network/interfaces/macs/{mac}/vpc-id")).await?;
        check("vpc-id", &vpc_id, |v| v.starts_with("vpc-"), "not a VPC id")?;
        let availability_zone = get("placement/availability-zone".into()).await?;
        let region = match &overrides.region {
            Some(r) => r.clone(),
            None => {
                let r = get("placement/region".into()).await?;
                check("placement/region", &r, is_region, "not a region name")?;
                r
            }
        };
        let local_ipv4 = match overrides.node_ip {
            Some(ip) => ip,
            None => {
                let text = get("local-ipv4".into()).await?;
                text.parse().map_err(|_| ImdsError::Invalid {
                    path: "local-ipv4".into(),
                    value: text,
                    why: "not an IPv4 address",
                })?
            }
        };
        Ok(Identity {
            instance_id,
            region,
            availability_zone,
            mac,
            local_ipv4,
            primary_eni,
            vpc_id,
        })
    }
}

/// The IPv4 CIDR blocks of the VPC the interface with `mac` is in, primary first: what
/// `gateway.vpc_cidrs` must cover.
pub async fn vpc_cidr_blocks(
    client: &Client,
    mac: &str,
    settings: &ImdsSettings,
) -> Result<Vec<ipnet::Ipv4Net>, ImdsError> {
    let leaf = format!("network/interfaces/macs/{mac}/vpc-ipv4-cidr-blocks");
    let text = fetch(client, &leaf, settings).await?;
    text.split_whitespace()
        .map(|c| {
            c.parse().map_err(|_| ImdsError::Invalid {
                path: leaf.clone(),
                value: c.to_string(),
                why: "not an IPv4 CIDR",
            })
        })
        .collect()
}

/// GET one meta-data value with bounded, jittered retries on what can heal by itself
/// (no connection, timeouts, 5xx, an expired token); 4xx answers end at once.
async fn fetch(client: &Client, leaf: &str, settings: &ImdsSettings) -> Result<String, ImdsError> {
    let path = format!("{BASE}{leaf}");
    let attempts = settings.attempts.max(1);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let cause = match client.get(path.clone()).await {
            Ok(v) => return Ok(v.as_ref().trim().to_string()),
            Err(e) => match classify(&e) {
                Kind::Permanent => {
                    return Err(ImdsError::Refused {
                        path,
                        cause: describe(&e),
                    })
                }
                Kind::Transient => describe(&e),
            },
        };
        if attempt >= attempts {
            return Err(ImdsError::Unreachable {
                path,
                attempts,
                cause,
            });
        }
        let wait =
            crate::backoff::Backoff::new(settings.backoff, settings.max_backoff).delay(attempt - 1);
        tracing::debug!(%path, attempt, "IMDS: {cause}; retrying in {wait:?}");
        tokio::time::sleep(wait).await;
    }
}

enum Kind {
    Transient,
    Permanent,
}

fn classify(e: &SdkImdsError) -> Kind {
    match e {
        SdkImdsError::ErrorResponse(r) => {
            let status = r.response().status().as_u16();
            if status >= 500 || status == 401 {
                Kind::Transient
            } else {
                Kind::Permanent
            }
        }
        // A token PUT that got an answer (403: IMDS disabled or hop limit) will not heal;
        // one that never got through might.
        SdkImdsError::FailedToLoadToken(t) if !t.is_dispatch_failure() => Kind::Permanent,
        _ => Kind::Transient,
    }
}

fn describe(e: &SdkImdsError) -> String {
    match e {
        SdkImdsError::ErrorResponse(r) => format!("HTTP {}", r.response().status().as_u16()),
        other => aws_sdk_ec2::error::DisplayErrorContext(other).to_string(),
    }
}

fn check(
    path: &str,
    value: &str,
    ok: impl Fn(&str) -> bool,
    why: &'static str,
) -> Result<(), ImdsError> {
    if ok(value) {
        Ok(())
    } else {
        Err(ImdsError::Invalid {
            path: path.into(),
            value: value.into(),
            why,
        })
    }
}

fn is_mac(v: &str) -> bool {
    let parts: Vec<&str> = v.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

fn is_region(v: &str) -> bool {
    !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && v.ends_with(|c: char| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_checks() {
        assert!(is_mac("0a:1b:2c:3d:4e:5f"));
        assert!(!is_mac("0a:1b:2c:3d:4e"));
        assert!(!is_mac("0a-1b-2c-3d-4e-5f"));
        assert!(is_region("us-west-2"));
        assert!(!is_region("us-west-2a"));
        assert!(!is_region(""));
    }
}
