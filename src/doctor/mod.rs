//! `hybrid-gateway doctor`: read-only checks of everything a gateway depends on, one line
//! each (ok / warn / fail, and for anything not ok, the fix). Nothing is changed: EC2
//! writes are `DryRun`, Kubernetes permissions are asked with SelfSubjectAccessReview,
//! the host is only read.

mod aws;
mod host;
mod kube;
mod per_az;

use std::io::Write;
use std::time::Duration;

use serde::Serialize;

use crate::config::Config;

/// Every external call of a check is bounded by this.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
    /// Not applicable to this configuration, or not possible because an earlier check
    /// failed (which then says why).
    Skip,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(name: &str, detail: impl Into<String>) -> Self {
        Self::new(name, Status::Ok, detail, None)
    }
    pub fn skip(name: &str, detail: impl Into<String>) -> Self {
        Self::new(name, Status::Skip, detail, None)
    }
    pub fn warn(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(name, Status::Warn, detail, Some(fix.into()))
    }
    pub fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(name, Status::Fail, detail, Some(fix.into()))
    }
    fn new(name: &str, status: Status, detail: impl Into<String>, fix: Option<String>) -> Self {
        Check {
            name: name.into(),
            status,
            detail: detail.into(),
            fix,
        }
    }

    /// `ok    name: detail` / `FAIL  name: detail; fix: ...`.
    pub fn line(&self) -> String {
        let tag = match self.status {
            Status::Ok => "ok  ",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        };
        match &self.fix {
            Some(fix) => format!("{tag}  {}: {}; fix: {fix}", self.name, self.detail),
            None => format!("{tag}  {}: {}", self.name, self.detail),
        }
    }
}

/// Runs every check for the config at `path`; prints them (text or one JSON object) and
/// returns the exit code: 0 when nothing failed (warnings allowed), 1 otherwise.
pub async fn run(path: &std::path::Path, json: bool) -> u8 {
    let checks = checks(path).await;
    let failed = checks.iter().any(|c| c.status == Status::Fail);
    let mut out = std::io::stdout().lock();
    if json {
        let v = serde_json::json!({ "ok": !failed, "checks": checks });
        let _ = writeln!(out, "{v}");
    } else {
        for c in &checks {
            let _ = writeln!(out, "{}", c.line());
        }
    }
    u8::from(failed)
}

pub async fn checks(path: &std::path::Path) -> Vec<Check> {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            return vec![Check::fail(
                "config",
                format!("{}: {e}", path.display()),
                "correct the file (`hybrid-gateway check-config` shows the same error)",
            )]
        }
    };
    let mut checks = vec![Check::ok("config", format!("{} is valid", path.display()))];
    let aws = aws::checks(&config, &mut checks).await;
    let (kube, holder) = kube::checks(&config, aws.as_ref().map(|a| &a.sdk)).await;
    checks.extend(kube);
    if let Some(aws) = &aws {
        checks.push(aws::gateways(&config, aws, holder.as_deref()).await);
    }
    checks.extend(host::checks(&config).await);
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_names_the_check_and_the_fix() {
        assert_eq!(
            Check::fail("imds", "no answer", "raise the hop limit").line(),
            "FAIL  imds: no answer; fix: raise the hop limit"
        );
        assert_eq!(Check::ok("config", "valid").line(), "ok    config: valid");
    }

    #[test]
    fn gateways_in_one_zone_or_alone_are_warnings() {
        let z = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(i, a)| (i.to_string(), a.to_string()))
                .collect()
        };
        let alone = aws::gateways_verdict("i-1", &z(&[("i-1", "us-west-2a")]));
        assert_eq!(alone.status, Status::Warn, "{}", alone.line());
        let one_zone =
            aws::gateways_verdict("i-1", &z(&[("i-1", "us-west-2a"), ("i-2", "us-west-2a")]));
        assert_eq!(one_zone.status, Status::Warn);
        assert!(
            one_zone.detail.contains("all in us-west-2a"),
            "{}",
            one_zone.line()
        );
        let spread =
            aws::gateways_verdict("i-1", &z(&[("i-1", "us-west-2a"), ("i-2", "us-west-2b")]));
        assert_eq!(spread.status, Status::Ok, "{}", spread.line());
        assert!(spread.detail.contains("i-1 (us-west-2a, this one)"));
    }

    #[test]
    fn configured_gateways_that_are_gone_or_stopped_are_named() {
        let found = vec![
            ("i-1".to_string(), "us-west-2a".to_string(), true),
            ("i-2".to_string(), "us-west-2b".to_string(), false),
        ];
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(aws::stale_ids(&ids(&["i-1"]), &found).is_empty());
        assert_eq!(
            aws::stale_ids(&ids(&["i-1", "i-2", "i-3"]), &found),
            vec!["i-2, which is not running", "i-3, which does not exist"]
        );
    }

    #[test]
    fn the_instance_is_read_from_an_election_identity() {
        assert_eq!(aws::instance_of("i-0abc_d7e284c9"), Some("i-0abc"));
        assert_eq!(aws::instance_of("i-0abc"), Some("i-0abc"));
        assert_eq!(aws::instance_of("gw-a_1"), None);
    }
}
