//! `[aws]`: the region, the VPC route tables the leader keeps pointed at this gateway, and
//! the primary ENI's source/destination check.

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Validator};

/// Tables are re-read at least this often: a shorter interval only burns EC2 API quota
/// (DescribeRouteTables is throttled per account and region, shared with everyone else).
const MIN_RESYNC: Duration = Duration::from_secs(5);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAws {
    pub region: Option<Spanned<String>>,
    pub route_table_ids: Option<Spanned<Vec<Spanned<String>>>>,
    pub route_table_tag: Option<Spanned<String>>,
    pub takeover: Option<Spanned<String>>,
    pub cleanup_on_shutdown: Option<bool>,
    pub manage_source_dest_check: Option<bool>,
    pub resync_interval: Option<Spanned<String>>,
    pub gateway_instance_ids: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AwsConfig {
    /// `None`: the instance's `placement/region` from IMDS.
    pub region: Option<String>,
    pub route_table_ids: Vec<String>,
    /// Every route table carrying this tag is managed too.
    pub route_table_tag: Option<RouteTableTag>,
    pub takeover: Takeover,
    /// Delete this gateway's routes on a clean, final stop (package removal).
    pub cleanup_on_shutdown: bool,
    /// Disable the primary ENI's source/destination check when it is on.
    pub manage_source_dest_check: bool,
    /// How often the leader re-reads the tables and repairs drift.
    pub resync_interval: Duration,
    /// Instances whose routes the ownership guard may replace, besides our own ASG's.
    pub gateway_instance_ids: Vec<String>,
}

impl Default for AwsConfig {
    fn default() -> Self {
        AwsConfig {
            region: None,
            route_table_ids: Vec::new(),
            route_table_tag: None,
            takeover: Takeover::Owned,
            cleanup_on_shutdown: false,
            manage_source_dest_check: true,
            resync_interval: Duration::from_secs(30),
            gateway_instance_ids: Vec::new(),
        }
    }
}

impl AwsConfig {
    /// Without tables to manage, the daemon leaves VPC routing to someone else.
    pub fn manages_routes(&self) -> bool {
        !self.route_table_ids.is_empty() || self.route_table_tag.is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTableTag {
    pub key: String,
    pub value: String,
}

/// Which existing routes for a hybrid pod CIDR the leader may overwrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takeover {
    /// Only routes to another gateway's ENI (same ASG, or listed in `gateway_instance_ids`)
    /// or blackholes: a route someone pointed at a transit gateway, VPN gateway, peering
    /// connection or NAT gateway is left alone and reported.
    Owned,
    /// Every route for a hybrid pod CIDR in a managed table (the VPC's local route excepted).
    Any,
}

impl std::fmt::Display for Takeover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Takeover::Owned => "owned",
            Takeover::Any => "any",
        })
    }
}

impl Validator<'_> {
    pub(super) fn aws(&self, raw: RawAws) -> Result<AwsConfig, ConfigError> {
        let mut c = AwsConfig::default();
        if let Some(r) = raw.region {
            // The example file writes `region = ""` for "ask IMDS".
            c.region = self.check("aws.region", r, |r| match r.as_str() {
                "" => Ok(None),
                _ => check_region(&r).map(|()| Some(r)),
            })?;
        }
        if let Some(ids) = raw.route_table_ids {
            c.route_table_ids = self.id_list("aws.route_table_ids", ids, "rtb", "route table")?;
        }
        if let Some(tag) = raw.route_table_tag {
            c.route_table_tag =
                Some(self.check("aws.route_table_tag", tag, |text| parse_tag(&text))?);
        }
        if let Some(t) = raw.takeover {
            c.takeover = self.check("aws.takeover", t, |t| match t.as_str() {
                "owned" => Ok(Takeover::Owned),
                "any" => Ok(Takeover::Any),
                _ => Err("use \"owned\" (replace only routes to other gateways or blackholes) or \"any\" (replace every route for a hybrid pod CIDR)".into()),
            })?;
        }
        if let Some(b) = raw.cleanup_on_shutdown {
            c.cleanup_on_shutdown = b;
        }
        if let Some(b) = raw.manage_source_dest_check {
            c.manage_source_dest_check = b;
        }
        if let Some(d) = raw.resync_interval {
            c.resync_interval = self.duration("aws.resync_interval", d, MIN_RESYNC)?;
        }
        if let Some(ids) = raw.gateway_instance_ids {
            c.gateway_instance_ids =
                self.id_list("aws.gateway_instance_ids", ids, "i", "instance")?;
        }
        Ok(c)
    }

    /// A list of EC2 resource ids (`<prefix>-` + 8 or 17 hex digits), without duplicates.
    fn id_list(
        &self,
        key: &str,
        list: Spanned<Vec<Spanned<String>>>,
        prefix: &str,
        what: &str,
    ) -> Result<Vec<String>, ConfigError> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (i, item) in list.into_inner().into_iter().enumerate() {
            out.push(self.check(&format!("{key}[{i}]"), item, |id| {
                if !is_resource_id(&id, prefix) {
                    Err(format!(
                        "not a {what} id; write it like \"{prefix}-0123456789abcdef0\""
                    ))
                } else if !seen.insert(id.clone()) {
                    Err("listed twice; list each id once".into())
                } else {
                    Ok(id)
                }
            })?);
        }
        Ok(out)
    }
}

fn is_resource_id(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|hex| {
            (hex.len() == 8 || hex.len() == 17)
                && hex
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        })
}

/// Region names are lower-case words and digits joined by '-', ending in a digit
/// (`us-west-2`, `us-gov-east-1`). An availability zone ends in a letter: we say so, since
/// cutting the letter off is wrong for Local Zones (`us-west-2-lax-1a` is in `us-west-2`).
fn check_region(r: &str) -> Result<(), String> {
    let parts: Vec<&str> = r.split('-').collect();
    let charset = r
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let shape = parts.len() >= 3 && parts.iter().all(|p| !p.is_empty());
    if charset && shape && r.ends_with(|c: char| c.is_ascii_digit()) {
        return Ok(());
    }
    if charset && shape && r.ends_with(|c: char| c.is_ascii_lowercase()) {
        return Err("this looks like an availability zone; write the region (e.g. \"us-west-2\"), or leave it empty to read placement/region from IMDS".into());
    }
    Err("not an AWS region name; write it like \"us-west-2\", or leave it empty to read placement/region from IMDS".into())
}

/// `key=value`, split at the first '=' (tag keys cannot contain '=', values can).
fn parse_tag(text: &str) -> Result<RouteTableTag, String> {
    let fix = "write it as \"key=value\", e.g. \"hybrid-gateway.io/managed=true\"";
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("no '='; {fix}"))?;
    if key.trim().is_empty() || value.is_empty() {
        return Err(format!("both the tag key and its value are needed; {fix}"));
    }
    if key != key.trim() {
        return Err(format!("the tag key has leading or trailing spaces; {fix}"));
    }
    if key.chars().count() > 128 || value.chars().count() > 256 {
        return Err("EC2 tag keys are at most 128 characters and values at most 256".into());
    }
    Ok(RouteTableTag {
        key: key.to_string(),
        value: value.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    const GOOD: &str = r#"
[gateway]
node_ip = "10.250.3.111"
vpc_cidrs = ["10.250.0.0/16"]
hybrid_pod_cidrs = ["192.168.32.0/23"]
"#;

    fn parse(aws: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.toml"), &format!("{GOOD}[aws]\n{aws}\n"))
    }

    /// Expects a rejection on `line` whose message mentions every one of `words`.
    fn rejects(aws: &str, line: usize, words: &[&str]) {
        let err = parse(aws).expect_err("config should be rejected");
        let msg = err.to_string();
        assert_eq!(err.line(), Some(line), "wrong line in: {msg}");
        assert!(
            msg.starts_with(&format!("test.toml:{line}: ")),
            "no file:line prefix in: {msg}"
        );
        for w in words {
            assert!(msg.contains(w), "{msg:?} does not mention {w:?}");
        }
    }

    #[test]
    fn defaults_without_the_section() {
        let c = Config::parse(Path::new("test.toml"), GOOD).unwrap();
        assert_eq!(c.aws, AwsConfig::default());
        assert_eq!(c.aws.takeover, Takeover::Owned);
        assert!(c.aws.manage_source_dest_check);
        assert!(!c.aws.cleanup_on_shutdown);
        assert_eq!(c.aws.resync_interval, Duration::from_secs(30));
        assert!(!c.aws.manages_routes());
    }

    #[test]
    fn every_key() {
        let c = parse(
            r#"region = "us-west-2"
route_table_ids = ["rtb-0123456789abcdef0", "rtb-01234567"]
route_table_tag = "hybrid-gateway.io/managed=true"
takeover = "any"
cleanup_on_shutdown = true
manage_source_dest_check = false
resync_interval = "1m"
gateway_instance_ids = ["i-0123456789abcdef0"]"#,
        )
        .unwrap()
        .aws;
        assert_eq!(c.region.as_deref(), Some("us-west-2"));
        assert_eq!(c.route_table_ids, ["rtb-0123456789abcdef0", "rtb-01234567"]);
        assert_eq!(
            c.route_table_tag,
            Some(RouteTableTag {
                key: "hybrid-gateway.io/managed".into(),
                value: "true".into()
            })
        );
        assert_eq!(c.takeover, Takeover::Any);
        assert!(c.cleanup_on_shutdown);
        assert!(!c.manage_source_dest_check);
        assert_eq!(c.resync_interval, Duration::from_secs(60));
        assert_eq!(c.gateway_instance_ids, ["i-0123456789abcdef0"]);
        assert!(c.manages_routes());
    }

    #[test]
    fn empty_region_means_imds() {
        assert_eq!(parse("region = \"\"").unwrap().aws.region, None);
        assert_eq!(
            parse("region = \"us-gov-east-1\"")
                .unwrap()
                .aws
                .region
                .as_deref(),
            Some("us-gov-east-1")
        );
    }

    #[test]
    fn bad_region() {
        rejects(
            "region = \"us-west-2-lax-1a\"",
            7,
            &["aws.region", "\"us-west-2-lax-1a\"", "availability zone"],
        );
        rejects(
            "region = \"US-WEST-2\"",
            7,
            &["aws.region", "not an AWS region", "us-west-2"],
        );
        rejects("region = \"uswest\"", 7, &["aws.region", "IMDS"]);
    }

    #[test]
    fn bad_route_table_ids() {
        rejects(
            "route_table_ids = [\"rtb-0123\"]",
            7,
            &[
                "aws.route_table_ids[0]",
                "\"rtb-0123\"",
                "rtb-0123456789abcdef0",
            ],
        );
        rejects(
            "route_table_ids = [\"subnet-01234567\"]",
            7,
            &["aws.route_table_ids[0]", "route table id"],
        );
        rejects(
            "route_table_ids = [\"rtb-01234567\",\n  \"rtb-01234567\"]",
            8,
            &["aws.route_table_ids[1]", "listed twice"],
        );
    }

    #[test]
    fn bad_route_table_tag() {
        rejects(
            "route_table_tag = \"managed\"",
            7,
            &["aws.route_table_tag", "\"managed\"", "key=value"],
        );
        rejects(
            "route_table_tag = \"=true\"",
            7,
            &["aws.route_table_tag", "key and its value"],
        );
        rejects(
            "route_table_tag = \"managed=\"",
            7,
            &["aws.route_table_tag", "key and its value"],
        );
        // Values may contain '=': only the first one splits.
        let c = parse("route_table_tag = \"k=a=b\"").unwrap().aws;
        assert_eq!(c.route_table_tag.unwrap().value, "a=b");
    }

    #[test]
    fn bad_takeover() {
        rejects(
            "takeover = \"all\"",
            7,
            &["aws.takeover", "\"all\"", "\"owned\"", "\"any\""],
        );
    }

    #[test]
    fn bad_resync_interval() {
        rejects(
            "resync_interval = \"1s\"",
            7,
            &["aws.resync_interval", "at least 5s"],
        );
        rejects(
            "resync_interval = \"often\"",
            7,
            &["aws.resync_interval", "not a duration"],
        );
    }

    #[test]
    fn bad_gateway_instance_ids() {
        rejects(
            "gateway_instance_ids = [\"i-xyz\"]",
            7,
            &["aws.gateway_instance_ids[0]", "instance id"],
        );
    }

    #[test]
    fn unknown_key_is_rejected() {
        let err = parse("route_tables = []").unwrap_err();
        assert_eq!(err.line(), Some(7));
        assert!(
            err.to_string().contains("unknown field `route_tables`"),
            "{err}"
        );
    }

    #[test]
    fn wrong_type_is_rejected() {
        let err = parse("cleanup_on_shutdown = \"yes\"").unwrap_err();
        assert_eq!(err.line(), Some(7));
    }
}
