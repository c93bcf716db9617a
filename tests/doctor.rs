//! `hybrid-gateway doctor` on a gateway of the local lab (`tests/lab/lab.sh`: the real
//! kube-apiserver with the shipped RBAC, moto + IMDSv2, DynamoDB Local, a hybrid node in
//! its own namespace): every check passes on the healthy lab, and three faults injected
//! at the peers (a secondary VPC CIDR the config lacks, a verb removed from the
//! ClusterRole, a hop on the path to the hybrid node that cannot take a full tunnel
//! packet) each turn exactly their check to FAIL, with a non-zero exit. In per-AZ mode (a
//! copy of the config) the layout checks follow what moto's tables and subnets say.
//!
//! Needs root and the peers of `tests/k8s/apiserver.sh` and `tests/aws/peers.sh`.

#[path = "lab/harness.rs"]
mod harness;

use std::process::Command;
use std::time::Duration;

use harness::{Lab, Observer};

/// `doctor` in the gateway's namespace with the daemon's own environment (IMDS, EC2 and
/// DynamoDB endpoints, credentials) and configuration.
fn doctor(lab: &Lab, gw: &str, json: bool) -> (i32, String) {
    doctor_with(lab, gw, &lab.gw(gw).config, json)
}

fn doctor_with(lab: &Lab, gw: &str, config: &std::path::Path, json: bool) -> (i32, String) {
    let g = lab.gw(gw);
    let env = lab.dir.join(gw).join("env");
    let script = format!(
        "exec env -i $(cat {env}) {bin} doctor --config {cfg}{json}",
        env = env.display(),
        bin = env!("CARGO_BIN_EXE_hybrid-gateway"),
        cfg = config.display(),
        json = if json { " --json" } else { "" },
    );
    let out = Command::new("ip")
        .args(["netns", "exec", &g.ns, "sh", "-c", &script])
        .output()
        .expect("running doctor");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn line<'a>(out: &'a str, check: &str) -> &'a str {
    out.lines()
        .find(|l| {
            l.get(6..)
                .is_some_and(|r| r.starts_with(&format!("{check}:")))
        })
        .unwrap_or_else(|| panic!("no {check} line:\n{out}"))
}

fn moto(lab: &Lab, body: &str) {
    let script = format!(
        "import sys, boto3\nurl, region = sys.argv[1:]\n\
         ec2 = boto3.client('ec2', endpoint_url=url, region_name=region, aws_access_key_id='testing', aws_secret_access_key='testing')\n{body}\n"
    );
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            lab.var("NS_CP"),
            lab.var("PEERS_PYTHON"),
            "-c",
        ])
        .arg(script)
        .args([lab.var("MOTO_URL"), lab.var("AWS_REGION")])
        .output()
        .expect("running python against moto");
    assert!(
        out.status.success(),
        "moto script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn doctor_passes_on_a_healthy_gateway_and_names_three_injected_faults() {
    let lab = Lab::up("dr", env!("CARGO_BIN_EXE_hybrid-gateway"));
    let obs = Observer::start(&lab, Duration::from_millis(200), Duration::from_millis(200));
    let leader = obs
        .wait_holder(&lab, Duration::from_secs(30))
        .expect("no leader");
    let vpc = lab.var("VPC_CIDR").to_string();

    // Healthy: every check ok (or not applicable), exit 0.
    let (code, healthy) = doctor(&lab, leader, false);
    println!("--- doctor on a healthy lab gateway ({leader}):\n{healthy}");
    assert_eq!(code, 0, "{healthy}");
    for check in [
        "config",
        "imds",
        "vpc_cidrs",
        "pod_cidr_overlap",
        "source_dest_check",
        "kubernetes",
        "rbac",
        "cilium_crds",
        "vtep_shape",
        &format!("dynamodb {} write", lab.var("LOCK_TABLE")),
        "sysctls",
        "device",
        "filter",
        "path_mtu",
    ] {
        assert!(
            line(&healthy, check).starts_with("ok "),
            "{check}:\n{healthy}"
        );
    }
    assert!(
        line(&healthy, "vtep_shape").contains("cilium.io/v2"),
        "{healthy}"
    );
    // The lab's instances carry the aws:autoscaling:groupName tag (tests/aws/seed.py),
    // in two zones: both gateways are found through this one's Auto Scaling group.
    let gateways = line(&healthy, "gateways");
    assert!(
        gateways.starts_with("ok ") && gateways.contains("2 in 2 zones"),
        "{healthy}"
    );
    assert!(!healthy.contains("FAIL"), "{healthy}");
    assert!(
        healthy.contains("reach all 1 nodes"),
        "the hybrid node was not probed:\n{healthy}"
    );
    // Misconfiguration the emulators can produce, in a copy of the config: a gateway id
    // that no longer exists (a warning naming it, not an EC2 failure with an IAM fix), a
    // route table that does not exist, a lock table that does not exist, and source/dest
    // check on while the daemon may not manage it.
    let g = lab.gw(leader);
    let bad_cfg = g.config.with_extension("misconfigured.toml");
    let text = std::fs::read_to_string(&g.config).unwrap();
    let tag_line = text
        .lines()
        .find(|l| l.starts_with("route_table_tag"))
        .expect("the lab config has a route_table_tag")
        .to_string();
    let text = text
        .replacen(
            &tag_line,
            "route_table_ids = [\"rtb-0000000000000dead\"]\ngateway_instance_ids = [\"i-0000000000000dead\"]\nmanage_source_dest_check = false",
            1,
        )
        .replacen(
            &format!("table = \"{}\"", lab.var("LOCK_TABLE")),
            "table = \"hybrid-gateway-no-such-table\"",
            1,
        );
    std::fs::write(&bad_cfg, text).unwrap();
    let sdc = |on: bool| {
        moto(
            &lab,
            &format!(
                "ec2.modify_network_interface_attribute(NetworkInterfaceId='{}', SourceDestCheck={{'Value': {}}})",
                g.eni,
                if on { "True" } else { "False" }
            ),
        )
    };
    sdc(true);
    let (code, bad) = doctor_with(&lab, leader, &bad_cfg, false);
    sdc(false);
    std::fs::remove_file(&bad_cfg).ok();
    println!("--- doctor with a misconfigured copy of the config ({leader}):\n{bad}");
    assert_eq!(code, 1, "{bad}");
    let l = line(&bad, "gateways");
    assert!(
        l.starts_with("WARN")
            && l.contains("2 in 2 zones")
            && l.contains("i-0000000000000dead, which does not exist")
            && l.contains("fix: remove it from aws.gateway_instance_ids"),
        "{l}"
    );
    let l = line(&bad, "route_table rtb-0000000000000dead");
    assert!(
        l.starts_with("FAIL") && l.contains("not found") && l.contains("aws.route_table_ids"),
        "{l}"
    );
    let l = line(&bad, "dynamodb hybrid-gateway-no-such-table");
    assert!(l.starts_with("FAIL"), "{l}");
    let l = line(&bad, "source_dest_check");
    assert!(
        l.starts_with("FAIL") && l.contains(&g.eni) && l.contains("--no-source-dest-check"),
        "{l}"
    );
    let (code, json) = doctor(&lab, leader, true);
    assert_eq!(code, 0, "{json}");
    let v: serde_json::Value = serde_json::from_str(json.trim()).expect("one JSON object");
    assert_eq!(v["ok"], true, "{json}");

    per_az_layout(&lab, leader);

    // Three faults, at the peers and on the path.
    // 1. The VPC gains a secondary CIDR the configuration does not list.
    moto(
        &lab,
        &format!(
            "vpc = ec2.describe_vpcs(Filters=[{{'Name': 'cidr', 'Values': ['{vpc}']}}])['Vpcs'][0]['VpcId']\n\
             ec2.associate_vpc_cidr_block(VpcId=vpc, CidrBlock='10.251.0.0/16')"
        ),
    );
    // 2. The daemon may no longer patch (server-side apply) its CiliumVTEPConfig.
    lab.run(&[
        "kubectl",
        "patch",
        "clusterrole",
        "hybrid-gateway",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/rules/1/verbs","value":["get","list","watch","create"]}]"#,
    ]);
    // 3. The hybrid node's link takes 1400-byte packets: a full tunnel packet (1500) is
    //    dropped, a small ping is not.
    Command::new("ip")
        .args([
            "-n",
            lab.var("NS_NODE"),
            "link",
            "set",
            "eth0",
            "mtu",
            "1400",
        ])
        .status()
        .expect("ip link set mtu");
    // IMDS re-reads moto at most every second.
    std::thread::sleep(Duration::from_millis(1500));

    let (code, faulty) = doctor(&lab, leader, false);
    println!("--- doctor with three injected faults ({leader}):\n{faulty}");
    assert_eq!(code, 1, "{faulty}");
    let l = line(&faulty, "vpc_cidrs");
    assert!(
        l.starts_with("FAIL")
            && l.contains("10.251.0.0/16")
            && l.contains("fix: set gateway.vpc_cidrs"),
        "{l}"
    );
    let l = line(&faulty, "rbac");
    assert!(
        l.starts_with("FAIL")
            && l.contains("not allowed: patch ciliumvtepconfigs")
            && l.contains("rbac.yaml"),
        "{l}"
    );
    let l = line(&faulty, "path_mtu");
    assert!(
        l.starts_with("FAIL") && l.contains(lab.var("NODE_IP")) && l.contains("1500-byte"),
        "{l}"
    );
    // The other checks are unaffected.
    for check in [
        "imds",
        "source_dest_check",
        "cilium_crds",
        "sysctls",
        "device",
        "filter",
    ] {
        assert!(
            line(&faulty, check).starts_with("ok "),
            "{check}:\n{faulty}"
        );
    }
}

/// Per-AZ mode's layout, judged from moto by doctor with a per-AZ copy of the gateway's
/// config (the lab's daemons stay active/standby; associations do not change what they do):
/// no table serving one AZ's subnets → WARN; a table per AZ → the shards and per-subnet
/// endpoints shown; a /20 subnet beside the /24s → WARN naming the fallback and the fix.
fn per_az_layout(lab: &Lab, gw: &str) {
    let g = lab.gw(gw);
    let cfg = g.config.with_extension("per-az.toml");
    let text = std::fs::read_to_string(&g.config).unwrap();
    let dynamodb = format!(
        "[election.dynamodb]\ntable = \"{}\"\n",
        lab.var("LOCK_TABLE")
    );
    assert!(text.contains(&dynamodb), "the lab config changed:\n{text}");
    let text = text.replacen(&dynamodb, "", 1).replacen(
        "[election]\n",
        "[election]\nmode = \"per-az\"\n",
        1,
    );
    std::fs::write(&cfg, text).unwrap();
    let region = lab.var("AWS_REGION");
    let run = |what: &str| {
        let (_, out) = doctor_with(lab, gw, &cfg, false);
        println!("--- doctor in per-AZ mode, {what} ({gw}):\n{out}");
        (
            line(&out, "per_az_shards").to_string(),
            line(&out, "per_az_vtep_config").to_string(),
        )
    };

    let (shards, vtep) = run("no table associated with a subnet");
    assert!(
        shards.starts_with("WARN")
            && shards.contains("every table is in the default shard")
            && shards.contains("fix: associate each managed route table"),
        "{shards}"
    );
    assert!(vtep.starts_with("ok "), "{vtep}");

    // As `lab.sh up --per-az` does: table i serves the subnet of AZ i.
    moto(
        lab,
        &format!(
            "import json\nseed = json.load(open('{}'))\n\
             for table, subnet in zip(seed['route_tables'], seed['subnets']):\n    \
             ec2.associate_route_table(RouteTableId=table, SubnetId=subnet['subnet_id'])",
            lab.dir.join("seed.json").display()
        ),
    );
    let tables: Vec<&str> = lab.var("ROUTE_TABLES").split_whitespace().collect();
    let (shards, vtep) = run("a table per AZ");
    assert!(
        shards.starts_with("ok ")
            && shards.contains("default: no table")
            && shards.contains(&format!("{region}a"))
            && shards.contains(&format!("{region}b"))
            && tables.iter().all(|t| shards.contains(t))
            && shards.contains("(this gateway's)"),
        "{shards}"
    );
    assert!(
        vtep.starts_with("ok ")
            && vtep.contains(&format!(
                "10.250.1.0/24 → {region}a, 10.250.2.0/24 → {region}b"
            )),
        "{vtep}"
    );

    // A subnet of another prefix length: Cilium's one cidrMask cannot express the subnets.
    moto(
        lab,
        &format!(
            "vpc = ec2.describe_vpcs(Filters=[{{'Name': 'cidr', 'Values': ['{}']}}])['Vpcs'][0]['VpcId']\n\
             ec2.create_subnet(VpcId=vpc, CidrBlock='10.250.128.0/20', AvailabilityZone='{region}a')",
            lab.var("VPC_CIDR")
        ),
    );
    let (_, vtep) = run("a /20 subnet beside the /24s");
    assert!(
        vtep.starts_with("WARN")
            && vtep.contains("prefix lengths /20, /24")
            && vtep.contains("default shard's leader writes the CiliumVTEPConfig alone")
            && vtep.contains("fix: keep the subnets inside gateway.vpc_cidrs"),
        "{vtep}"
    );
    std::fs::remove_file(&cfg).ok();
}
