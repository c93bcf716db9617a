//! `systemctl reload` (SIGHUP): which configuration changes take effect at once and which
//! need a restart. Applied changes never touch the VXLAN device, so traffic keeps flowing.

use crate::config::Config;

/// The keys that differ between `old` and `new`, split into those the running daemon
/// applies and those that need `systemctl restart`.
pub fn classify(old: &Config, new: &Config) -> (Vec<&'static str>, Vec<&'static str>) {
    let mut live = Vec::new();
    let mut restart = Vec::new();
    let mut check = |changed: bool, key: &'static str, applies: bool| {
        if changed {
            if applies {
                live.push(key);
            } else {
                restart.push(key);
            }
        }
    };
    check(
        old.gateway.hybrid_pod_cidrs != new.gateway.hybrid_pod_cidrs,
        "gateway.hybrid_pod_cidrs",
        true,
    );
    check(
        old.datapath.resync_interval != new.datapath.resync_interval,
        "datapath.resync_interval",
        true,
    );
    check(
        old.datapath.filter != new.datapath.filter,
        "datapath.filter",
        false,
    );
    check(
        old.aws.route_table_ids != new.aws.route_table_ids,
        "aws.route_table_ids",
        true,
    );
    check(
        old.aws.route_table_tag != new.aws.route_table_tag,
        "aws.route_table_tag",
        true,
    );
    check(old.aws.takeover != new.aws.takeover, "aws.takeover", true);
    check(
        old.aws.gateway_instance_ids != new.aws.gateway_instance_ids,
        "aws.gateway_instance_ids",
        true,
    );
    check(
        old.aws.resync_interval != new.aws.resync_interval,
        "aws.resync_interval",
        true,
    );
    check(
        old.aws.cleanup_on_shutdown != new.aws.cleanup_on_shutdown,
        "aws.cleanup_on_shutdown",
        true,
    );
    check(
        old.gateway.node_ip != new.gateway.node_ip,
        "gateway.node_ip",
        false,
    );
    check(
        old.gateway.vpc_cidrs != new.gateway.vpc_cidrs,
        "gateway.vpc_cidrs",
        false,
    );
    check(
        old.gateway.remote_node_cidrs != new.gateway.remote_node_cidrs,
        "gateway.remote_node_cidrs",
        false,
    );
    check(
        old.vxlan.interface != new.vxlan.interface,
        "vxlan.interface",
        false,
    );
    check(old.vxlan.vni != new.vxlan.vni, "vxlan.vni", false);
    check(old.vxlan.port != new.vxlan.port, "vxlan.port", false);
    check(old.vxlan.mtu != new.vxlan.mtu, "vxlan.mtu", false);
    check(
        old.vxlan.underlay_mtu != new.vxlan.underlay_mtu,
        "vxlan.underlay_mtu",
        false,
    );
    check(old.kubernetes != new.kubernetes, "kubernetes", false);
    check(old.election != new.election, "election", false);
    check(old.aws.region != new.aws.region, "aws.region", false);
    check(
        old.aws.manage_source_dest_check != new.aws.manage_source_dest_check,
        "aws.manage_source_dest_check",
        false,
    );
    check(
        old.telemetry != new.telemetry,
        "metrics / health / log",
        false,
    );
    (live, restart)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn cfg(extra: &str) -> Config {
        let text = format!("[gateway]\nnode_ip = \"10.0.0.1\"\nvpc_cidrs = [\"10.250.0.0/16\"]\nhybrid_pod_cidrs = [\"192.168.32.0/23\"]\n{extra}");
        Config::parse(Path::new("t.toml"), &text).unwrap()
    }

    #[test]
    fn pod_cidrs_and_route_tables_apply_live_device_changes_need_a_restart() {
        let old = cfg("");
        let new = Config::parse(
            Path::new("t.toml"),
            "[gateway]\nnode_ip = \"10.0.0.1\"\nvpc_cidrs = [\"10.250.0.0/16\"]\nhybrid_pod_cidrs = [\"192.168.32.0/23\", \"192.168.40.0/24\"]\n[vxlan]\nvni = 3\n[aws]\nroute_table_ids = [\"rtb-0123456789abcdef0\"]\n",
        )
        .unwrap();
        let (live, restart) = classify(&old, &new);
        assert_eq!(
            live,
            vec!["gateway.hybrid_pod_cidrs", "aws.route_table_ids"]
        );
        assert_eq!(restart, vec!["vxlan.vni"]);
        assert_eq!(classify(&old, &cfg("")), (vec![], vec![]));
    }
}
