//! The shipped alert rules: valid for Prometheus, and each alert fires on the histories in
//! monitoring/alerts_test.yml that should fire it and stays quiet on the others
//! (`promtool test rules`). The dashboard's and the rules' metric names are checked against
//! a running daemon's /metrics in tests/daemon.rs.

use std::process::Command;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/monitoring");

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(DIR)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "promtool is needed to test monitoring/alerts.yml ({e}); on Debian: \
                 apt-get install --no-install-recommends prometheus (.ci/run does)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn alert_rules_are_valid_and_their_tests_pass() {
    let checked = promtool(&["check", "rules", "alerts.yml"]);
    assert!(checked.contains("SUCCESS: 14 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// Every alert has a runbook section, and the annotation points at it.
#[test]
fn every_alert_has_a_runbook_section() {
    let rules = std::fs::read_to_string(format!("{DIR}/alerts.yml")).unwrap();
    let runbook =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/runbook.md")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(alerts.len(), 14);
    for a in alerts {
        assert!(
            runbook.contains(&format!("\n## {a}\n")),
            "docs/runbook.md has no section for {a}"
        );
        assert!(
            rules.contains(&format!("runbook.md#{}", a.to_lowercase())),
            "{a} does not link its runbook section"
        );
    }
}
