//! `systemctl reload` (SIGHUP): which configuration changes take effect at once and which
//! need a restart. One table says it, and drives both the classification the log shows and
//! the merge into the running configuration. Applied changes never touch the VXLAN device,
//! so traffic keeps flowing.

use crate::config::Config;

/// How a changed key reaches the running daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apply {
    /// Taken over at once; says by whom.
    Live(&'static str),
    /// Kept at its running value until `systemctl restart`; says why.
    Restart(&'static str),
}

/// One row of the table.
pub struct Key {
    pub name: &'static str,
    pub apply: Apply,
    differs: fn(&Config, &Config) -> bool,
    /// Copies the new value into the running configuration (live keys).
    take: fn(&mut Config, &Config),
}

/// A row whose key is its field's path in [`Config`] (`key!(apply, datapath.filter)`), or
/// with the name the log shows given first where the file's key differs from the field.
macro_rules! key {
    ($apply:expr, $first:ident $(. $rest:ident)*) => {
        key!(concat!(stringify!($first) $(, ".", stringify!($rest))*), $apply, $first $(. $rest)*)
    };
    ($name:expr, $apply:expr, $($field:ident).+) => {
        Key {
            name: $name,
            apply: $apply,
            differs: |old, new| old.$($field).+ != new.$($field).+,
            take: |running, new| running.$($field).+ = Clone::clone(&new.$($field).+),
        }
    };
}

const DATAPATH: Apply = Apply::Live("the datapath's next pass");
const ROUTES: Apply =
    Apply::Live("VPC route sync's next pass (adding or removing tables starts or stops it)");
const DEVICE: Apply = Apply::Restart("the VXLAN device is set up once at start");
const ELECTION: Apply =
    Apply::Restart("the election's identity, stores and timings are fixed at start");

/// Every key of the file, in the order the log lists them.
pub const KEYS: &[Key] = &[
    key!(DATAPATH, gateway.hybrid_pod_cidrs),
    key!(DATAPATH, datapath.resync_interval),
    key!(Apply::Restart("the nftables table is installed or removed at start"), datapath.filter),
    key!(Apply::Restart("the node set snapshot is set up at start"), datapath.state_dir),
    key!(Apply::Restart("only the start waits for the first node list"), datapath.cold_start_wait),
    key!(ROUTES, aws.route_table_ids),
    key!(ROUTES, aws.route_table_tag),
    key!(ROUTES, aws.takeover),
    key!(ROUTES, aws.gateway_instance_ids),
    key!(ROUTES, aws.resync_interval),
    key!(Apply::Live("read at shutdown"), aws.cleanup_on_shutdown),
    key!(Apply::Restart("the device and the CiliumVTEPConfig are built from it at start"), gateway.node_ip),
    key!(Apply::Restart("the CiliumVTEPConfig's endpoints are built from it at start"), gateway.vpc_cidrs),
    key!(Apply::Restart("the node address checks are fixed at start"), gateway.remote_node_cidrs),
    key!(DEVICE, vxlan.interface),
    key!(DEVICE, vxlan.vni),
    key!(DEVICE, vxlan.port),
    key!(DEVICE, vxlan.mtu),
    key!(DEVICE, vxlan.underlay_mtu),
    key!(Apply::Restart("the API client is built once at start"), kubernetes),
    key!(ELECTION, election.namespace),
    key!(ELECTION, election.lease_name),
    key!(ELECTION, election.identity),
    key!(ELECTION, election.lease_duration),
    key!(ELECTION, election.renew_deadline),
    key!(ELECTION, election.retry_period),
    key!(Apply::Restart("Lease-only or Lease + DynamoDB lock is chosen at start; restart every gateway to switch"), election.dynamodb),
    key!(ELECTION, election.health),
    key!(Apply::Live("the tunnel prober's next round"), probe),
    key!(Apply::Restart("the AWS clients are built once"), aws.region),
    key!(Apply::Restart("the ENI is checked at start"), aws.manage_source_dest_check),
    key!(
        "metrics / health / log",
        Apply::Restart("listeners and logging are set up at start"),
        telemetry
    ),
];

/// The keys that differ between `old` and `new`, split into those the running daemon
/// applies and those that need `systemctl restart`.
pub fn classify(old: &Config, new: &Config) -> (Vec<&'static str>, Vec<&'static str>) {
    let changed = || KEYS.iter().filter(|k| (k.differs)(old, new));
    let live = changed()
        .filter(|k| matches!(k.apply, Apply::Live(_)))
        .map(|k| k.name)
        .collect();
    let restart = changed()
        .filter(|k| matches!(k.apply, Apply::Restart(_)))
        .map(|k| k.name)
        .collect();
    (live, restart)
}

/// `running` with the live keys of `new` applied; the others keep their running values.
pub fn merge(running: &Config, new: &Config) -> Config {
    let mut merged = running.clone();
    for k in KEYS {
        if matches!(k.apply, Apply::Live(_)) && (k.differs)(running, new) {
            (k.take)(&mut merged, new);
        }
    }
    merged
}

/// Logs what a reload changes and returns the configuration to run with, if it differs
/// from `running`.
pub fn apply(running: &Config, new: &Config) -> Option<Config> {
    let (live, restart) = classify(running, new);
    if live.is_empty() && restart.is_empty() {
        tracing::info!("configuration unchanged");
    }
    if !restart.is_empty() {
        let why: Vec<String> = KEYS
            .iter()
            .filter(|k| restart.contains(&k.name))
            .filter_map(|k| match k.apply {
                Apply::Restart(why) => Some(format!("{} ({why})", k.name)),
                Apply::Live(_) => None,
            })
            .collect();
        tracing::warn!(keys = ?restart, "these changes need `systemctl restart hybrid-gateway` (the datapath is kept across restarts); running with the old values: {}", why.join("; "));
    }
    if live.is_empty() {
        return None;
    }
    tracing::info!(keys = ?live, "configuration reloaded");
    Some(merge(running, new))
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

    #[test]
    fn merge_takes_exactly_the_live_keys() {
        let old = cfg("");
        let new = cfg("[vxlan]\nvni = 3\n[datapath]\nresync_interval = \"5s\"\n[aws]\nroute_table_tag = \"k=v\"\ntakeover = \"any\"\n[election.dynamodb]\ntable = \"locks\"\n");
        let merged = merge(&old, &new);
        assert_eq!(merged.datapath, new.datapath);
        assert_eq!(merged.aws.route_table_tag, new.aws.route_table_tag);
        assert_eq!(merged.aws.takeover, new.aws.takeover);
        assert!(
            merged.aws.manages_routes(),
            "adding a tag starts route sync"
        );
        assert_eq!(merged.vxlan, old.vxlan, "restart-only");
        assert_eq!(merged.election.dynamodb, None, "restart-only");
        assert_eq!(classify(&merged, &new).0, Vec::<&str>::new());
        assert_eq!(
            classify(&merged, &new).1,
            vec!["vxlan.vni", "election.dynamodb"]
        );
        // And back: removing the tag stops it.
        assert!(!merge(&merged, &old).aws.manages_routes());
    }

    /// Every field of the configuration is in the table: a key added to the file without a
    /// row would be silently ignored by a reload.
    #[test]
    fn every_field_has_a_row() {
        let a = cfg("");
        let b = cfg("[vxlan]\ninterface = \"x0\"\nvni = 3\nport = 4789\nmtu = 1400\nunderlay_mtu = 9000\n[datapath]\nresync_interval = \"5s\"\nfilter = false\nstate_dir = \"/s\"\ncold_start_wait = \"1s\"\n[probe]\ninterval = \"2s\"\n[kubernetes]\nrequest_timeout = \"2s\"\n[election]\nnamespace = \"n\"\nlease_name = \"l\"\nidentity = \"i\"\nlease_duration = \"9s\"\nrenew_deadline = \"6s\"\nretry_period = \"2s\"\n[election.dynamodb]\ntable = \"locks\"\n[election.health]\nmargin = 0.3\n[metrics]\nlisten = \"127.0.0.1:1\"\n[aws]\nregion = \"us-west-2\"\nroute_table_ids = [\"rtb-01234567\"]\nroute_table_tag = \"k=v\"\ntakeover = \"any\"\ncleanup_on_shutdown = true\nmanage_source_dest_check = false\nresync_interval = \"1m\"\ngateway_instance_ids = [\"i-01234567\"]\n");
        let mut b = b;
        b.gateway.node_ip = Some("10.0.0.2".parse().unwrap());
        b.gateway.vpc_cidrs = vec!["10.251.0.0/16".parse().unwrap()];
        b.gateway.hybrid_pod_cidrs = vec!["192.168.40.0/24".parse().unwrap()];
        b.gateway.remote_node_cidrs = vec!["10.80.0.0/16".parse().unwrap()];
        // After taking every row, nothing but the path may differ.
        let mut taken = a.clone();
        for k in KEYS {
            (k.take)(&mut taken, &b);
        }
        assert_eq!(taken, b);
        let (live, restart) = classify(&a, &b);
        assert_eq!(live.len() + restart.len(), KEYS.len());
    }
}
