//! The binary as Ansible's `validate:` and an operator call it.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hybrid-gateway"))
}

fn write(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("hgw-cli-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

/// The shipped config, with its required keys uncommented as an operator would.
fn configured_example() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/config.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = text.clone();
    for key in ["node_ip", "vpc_cidrs", "hybrid_pod_cidrs"] {
        let commented = format!("\n# {key} = ");
        assert!(
            text.contains(&commented),
            "config.toml: no `# {key} = ` line"
        );
        out = out.replacen(&commented, &format!("\n{key} = "), 1);
    }
    out
}

#[test]
fn example_config_passes_check_config_once_configured() {
    let path = write("configured.toml", &configured_example());
    let out = bin().arg("check-config").arg(&path).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.lines().count(),
        1,
        "one-line summary expected: {stdout}"
    );
    assert!(
        stdout.contains(": ok: node_ip=10.250.3.111") && stdout.contains("vni=2 port=8472"),
        "{stdout}"
    );
    std::fs::remove_file(path).ok();
}

/// A host that boots with the package installed but not configured: `run` (what the unit
/// starts) and `check-config` exit 78 - the unit's RestartPreventExitStatus, so no restart
/// loop - naming the keys to set, before touching IMDS or any API.
#[test]
fn shipped_config_is_not_configured() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/config.toml");
    let want =
        format!("not configured: set gateway.vpc_cidrs and gateway.hybrid_pod_cidrs in {path}");
    for args in [vec!["check-config", path], vec!["run", "--config", path]] {
        let out = bin()
            .args(&args)
            // Nothing may be reached even if it were attempted.
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(78), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim(), want, "{args:?}");
    }
    // One required key set: the other is named alone.
    let one = write(
        "one-key.toml",
        "[gateway]\nvpc_cidrs = [\"10.250.0.0/16\"]\n",
    );
    let out = bin().arg("check-config").arg(&one).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr)
        .starts_with("not configured: set gateway.hybrid_pod_cidrs in "));
    std::fs::remove_file(one).ok();
}

#[test]
fn bad_config_fails_with_line_and_key() {
    let path = write(
        "bad.toml",
        "[gateway]\nvpc_cidrs = [\"10.250.0.0/16\"]\nhybrid_pod_cidrs = [\"10.250.32.0/23\"]\n",
    );
    let out = bin().arg("check-config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            ":3: gateway.hybrid_pod_cidrs[0] = \"10.250.32.0/23\": overlaps gateway.vpc_cidrs[0]"
        ),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    std::fs::remove_file(path).ok();
}

#[test]
fn missing_config_fails() {
    let out = bin()
        .args(["check-config", "/nonexistent/hgw.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[test]
fn run_refuses_bad_config_without_touching_anything() {
    let path = write(
        "bad-run.toml",
        "[gateway]\nvpc_cidrs = []\nhybrid_pod_cidrs = [\"192.168.32.0/23\"]\n",
    );
    let out = bin().args(["run", "--config"]).arg(&path).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(78),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("gateway.vpc_cidrs"));
    std::fs::remove_file(path).ok();
}

#[test]
fn version_prints_the_package_version() {
    let out = bin().arg("version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("hybrid-gateway {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn vtep_mac_matches_the_reference_vector() {
    let out = bin().args(["vtep-mac", "10.0.0.1"]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "b2:6f:8e:ac:e6:ae"
    );
}

/// `--version`, `status --json` against no daemon, and the completions and man page
/// generated from the CLI definition (what the packages ship).
#[test]
fn version_flag_status_json_completions_and_man_page() {
    let out = bin().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("hybrid-gateway {}", env!("CARGO_PKG_VERSION"))
    );
    // Port 1 on loopback: nothing answers.
    let cfg = write(
        "status-json.toml",
        "[gateway]\nnode_ip = \"10.0.0.1\"\nvpc_cidrs = [\"10.250.0.0/16\"]\nhybrid_pod_cidrs = [\"192.168.32.0/23\"]\n[health]\nlisten = \"127.0.0.1:1\"\n",
    );
    let out = bin()
        .args(["status", "--json", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["reachable"], false, "{v}");
    assert_eq!(v["ready"], false, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("127.0.0.1:1"),
        "{v}"
    );
    std::fs::remove_file(cfg).ok();

    for shell in ["bash", "zsh", "fish"] {
        let out = bin()
            .args(["generate", "completions", shell])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("check-config") && text.contains("doctor"),
            "{shell}: {text}"
        );
    }
    let out = bin().args(["generate", "man"]).output().unwrap();
    let man = String::from_utf8_lossy(&out.stdout);
    assert!(
        man.contains(".TH hybrid-gateway 8") && man.contains("status"),
        "{man}"
    );
    // Hidden: not offered to operators.
    let help = String::from_utf8_lossy(&bin().arg("--help").output().unwrap().stdout).to_string();
    assert!(
        !help.contains("generate") && help.contains("doctor"),
        "{help}"
    );
}

/// `check-config` makes no AWS call: in per-AZ mode it says that the layout (shards,
/// per-subnet CiliumVTEPConfig) is judged by `doctor`, which reads the VPC.
#[test]
fn check_config_in_per_az_mode_points_at_doctor() {
    let path = write(
        "per-az.toml",
        "[gateway]\nvpc_cidrs = [\"10.250.0.0/16\"]\nhybrid_pod_cidrs = [\"192.168.32.0/23\"]\n\
         [election]\nmode = \"per-az\"\n\
         [aws]\nroute_table_tag = \"hybrid-gateway.io/managed=true\"\n",
    );
    let out = bin().arg("check-config").arg(&path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[1].starts_with("election.mode = per-az:")
            && lines[1].contains("run `hybrid-gateway doctor`"),
        "{stdout}"
    );
    std::fs::remove_file(path).ok();
}
