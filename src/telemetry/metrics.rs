//! Prometheus metrics, named as the reference gateway names them where it has them
//! (`hybrid_gateway_*`), plus what operating two gateways needs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::datapath::{filter, ApplyReport, FilterReport, Rejection};
use crate::k8s::cilium_nodes::NodeWatchStats;

type Labels = Vec<(String, String)>;

/// Who this gateway is, for `hybrid_gateway_info`: the reference's labels (`node_ip`,
/// `node_name`, `vxlan_interface`, `vpc_cidr`, `pod_cidrs`) plus ours. Every value is
/// stable across restarts of one host, so a restart continues the same series.
#[derive(Debug, Clone)]
pub struct GatewayInfo {
    /// The stable identity: `election.identity`, else the instance id, else the hostname.
    pub instance: String,
    pub node_ip: std::net::Ipv4Addr,
    /// The host's name (the reference runs as a pod and reports its Kubernetes node).
    pub node_name: String,
    pub vxlan_interface: String,
    /// The underlay the tunnel leaves by (the primary ENI's device on EC2); its counters
    /// are the `primary_nic_*` series.
    pub primary_nic: String,
    pub vpc_cidrs: Vec<ipnet::Ipv4Net>,
    pub pod_cidrs: Vec<ipnet::Ipv4Net>,
}

impl GatewayInfo {
    /// For tests and tools that have no host behind them.
    pub fn named(instance: &str) -> Self {
        GatewayInfo {
            instance: instance.into(),
            node_ip: std::net::Ipv4Addr::UNSPECIFIED,
            node_name: instance.into(),
            vxlan_interface: "hybrid_vxlan0".into(),
            primary_nic: "eth0".into(),
            vpc_cidrs: Vec::new(),
            pod_cidrs: Vec::new(),
        }
    }

    fn labels(&self) -> Labels {
        let join = |v: &[ipnet::Ipv4Net]| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        vec![
            ("version".into(), env!("CARGO_PKG_VERSION").into()),
            ("instance_id".into(), self.instance.clone()),
            ("node_ip".into(), self.node_ip.to_string()),
            ("node_name".into(), self.node_name.clone()),
            ("vxlan_interface".into(), self.vxlan_interface.clone()),
            ("primary_nic".into(), self.primary_nic.clone()),
            ("vpc_cidr".into(), join(&self.vpc_cidrs)),
            ("pod_cidrs".into(), join(&self.pod_cidrs)),
        ]
    }
}

pub struct Metrics {
    /// Unprefixed root (the standard `process_*` series); ours live in a
    /// `hybrid_gateway` sub-registry of it.
    registry: Registry,
    info: Family<Labels, Gauge>,
    gateway: std::sync::Mutex<GatewayInfo>,
    pub hybrid_nodes_configured: Gauge,
    /// Hybrid nodes the datapath refused in its last pass, by reason.
    pub nodes_rejected: Family<Labels, Gauge>,
    pub leader_is_active: Gauge,
    pub election_term: Gauge,
    /// Per-AZ mode: 1 while this gateway leads the shard, by shard.
    pub shard_leader: Family<Labels, Gauge>,
    /// Per-AZ mode: the shard's term (its Lease's transitions) last seen, by shard.
    pub shard_term: Family<Labels, Gauge>,
    /// Per-AZ mode: managed route tables in the shard, by shard.
    pub shard_route_tables: Family<Labels, Gauge>,
    /// Per-AZ mode: 1 while this gateway leads the shard and its fence blocks it, by shard.
    pub shard_vtepconfig_fenced: Family<Labels, Gauge>,
    /// Per-AZ mode: 1 while this gateway leads the shard and cannot write its
    /// CiliumVTEPConfig entries at all, by shard.
    pub shard_vtepconfig_unserved: Family<Labels, Gauge>,
    /// Per-AZ mode: 1 while the shard's CiliumVTEPConfig entries name this gateway (leader
    /// of the shard or not), by shard; every gateway reads them.
    pub shard_vtepconfig_names_me: Family<Labels, Gauge>,
    /// Per-AZ mode: the distinct gateways the shard's CiliumVTEPConfig entries name, by shard.
    pub shard_vtepconfig_named: Family<Labels, Gauge>,
    pub election_transitions: Counter,
    pub vtep_add: Counter,
    pub vtep_add_errors: Counter,
    pub vtep_remove: Counter,
    pub vtep_remove_errors: Counter,
    pub reconcile_duration_seconds: Histogram,
    pub aws_route_table_update: Counter,
    pub aws_route_table_update_errors: Counter,
    pub aws_route_table_update_duration_seconds: Histogram,
    pub route_sync_last_success_timestamp_seconds: Gauge<f64, AtomicU64>,
    pub route_tables_degraded: Gauge,
    pub routes_left_alone: Gauge,
    pub leader_setup_duration_seconds: Histogram,
    pub dynamodb_lock_held: Gauge,
    pub vtepconfig_fenced: Gauge,
    pub vtepconfig_read: Gauge,
    pub vtepconfig_names_me: Gauge,
    pub vxlan_interface_up: Gauge,
    pub vxlan_fdb_entries: Gauge,
    pub vxlan_route_count: Gauge,
    pub ready: Gauge,
    /// 1 while the programmed node set is the snapshot (no live list yet).
    pub nodes_from_snapshot: Gauge,
    /// Age of that snapshot (0 when the live set is programmed); set at scrape time.
    pub nodes_snapshot_age_seconds: Gauge,
    /// Things found broken and put right by the datapath, by what (`filter`, …).
    pub datapath_repairs: Family<Labels, Counter>,
    /// 1 while the tunnel to a hybrid node answers probes, 0 while it is down, by node.
    pub node_tunnel_up: Family<Labels, Gauge>,
    pub node_tunnel_rtt_seconds: Histogram,
    pub tunnel_probes_sent: Counter,
    pub tunnel_probes_lost: Counter,
    /// The share of probed nodes reachable (`None`: no opinion yet, not exported).
    pub tunnel_health_ratio: Arc<std::sync::Mutex<Option<f64>>>,
    /// The other gateways' fresh health scores, by their election identity.
    pub peer_tunnel_health_ratio: Family<Labels, Gauge<f64, AtomicU64>>,
    /// When this gateway last handed leadership over for health (Unix seconds; 0: never).
    pub last_health_handover_timestamp_seconds: Gauge<f64, AtomicU64>,
    /// The nftables filter's counters as last read (name → packets, bytes).
    filter_counters: Arc<std::sync::Mutex<std::collections::BTreeMap<String, (u64, u64)>>>,
    /// The rejection list `nodes_rejected` was last set from: a pass handing on the same
    /// list (no rejection changed) costs nothing.
    last_rejections: std::sync::Mutex<Option<Arc<Vec<Rejection>>>>,
}

impl Metrics {
    pub fn new(gateway: &GatewayInfo, nodes: Arc<NodeWatchStats>) -> Self {
        let mut root = Registry::default();
        root.register_collector(Box::new(super::process::ProcessCollector));
        let registry = root.sub_registry_with_prefix("hybrid_gateway");
        let info = Family::<Labels, Gauge>::default();
        info.get_or_create(&gateway.labels()).set(1);
        registry.register(
            "info",
            "Build and identity of this gateway (always 1)",
            info.clone(),
        );

        macro_rules! reg {
            ($name:literal, $help:literal, $metric:expr) => {{
                let m = $metric;
                registry.register($name, $help, m.clone());
                m
            }};
        }
        let latency = || Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let m = Metrics {
            hybrid_nodes_configured: reg!(
                "hybrid_nodes_configured",
                "Hybrid nodes programmed into the datapath",
                Gauge::default()
            ),
            nodes_rejected: reg!(
                "nodes_rejected",
                "Hybrid nodes left out of the datapath in the last pass, by reason",
                Family::<Labels, Gauge>::default()
            ),
            leader_is_active: reg!(
                "leader_is_active",
                "1 while this gateway acts as leader",
                Gauge::default()
            ),
            election_term: reg!(
                "election_term",
                "Leadership term (lock transitions) last seen",
                Gauge::default()
            ),
            shard_leader: reg!(
                "shard_leader",
                "Per-AZ mode: 1 while this gateway leads the shard",
                Family::<Labels, Gauge>::default()
            ),
            shard_term: reg!(
                "shard_term",
                "Per-AZ mode: the shard's leadership term last seen",
                Family::<Labels, Gauge>::default()
            ),
            shard_route_tables: reg!(
                "shard_route_tables",
                "Per-AZ mode: managed route tables in the shard",
                Family::<Labels, Gauge>::default()
            ),
            shard_vtepconfig_fenced: reg!(
                "shard_vtepconfig_fenced",
                "Per-AZ mode: 1 while this gateway leads the shard and may not write its CiliumVTEPConfig entries (the shard's term there is not below ours)",
                Family::<Labels, Gauge>::default()
            ),
            shard_vtepconfig_names_me: reg!(
                "shard_vtepconfig_names_me",
                "Per-AZ mode: 1 while the shard's CiliumVTEPConfig entries name this gateway as tunnelEndpoint (leader of the shard or not)",
                Family::<Labels, Gauge>::default()
            ),
            shard_vtepconfig_named: reg!(
                "shard_vtepconfig_named",
                "Per-AZ mode: distinct tunnelEndpoints the shard's CiliumVTEPConfig entries name (0: the shard has no entries)",
                Family::<Labels, Gauge>::default()
            ),
            shard_vtepconfig_unserved: reg!(
                "shard_vtepconfig_unserved",
                "Per-AZ mode: 1 while this gateway leads the shard and cannot write its CiliumVTEPConfig entries at all (no shape we write is served, or no room)",
                Family::<Labels, Gauge>::default()
            ),
            election_transitions: reg!(
                "election_transitions",
                "Times this process became leader",
                Counter::default()
            ),
            vtep_add: reg!(
                "vtep_add",
                "Routes, ARP and FDB entries added or replaced",
                Counter::default()
            ),
            vtep_add_errors: reg!(
                "vtep_add_errors",
                "Failed adds or replaces of datapath entries",
                Counter::default()
            ),
            vtep_remove: reg!(
                "vtep_remove",
                "Routes, ARP and FDB entries removed",
                Counter::default()
            ),
            vtep_remove_errors: reg!(
                "vtep_remove_errors",
                "Failed removals of datapath entries",
                Counter::default()
            ),
            reconcile_duration_seconds: reg!(
                "reconcile_duration_seconds",
                "Duration of datapath reconcile passes",
                latency()
            ),
            aws_route_table_update: reg!(
                "aws_route_table_update",
                "VPC route writes (create, replace, delete)",
                Counter::default()
            ),
            aws_route_table_update_errors: reg!(
                "aws_route_table_update_errors",
                "Failed VPC route syncs",
                Counter::default()
            ),
            aws_route_table_update_duration_seconds: reg!(
                "aws_route_table_update_duration_seconds",
                "Duration of VPC route table syncs",
                latency()
            ),
            route_sync_last_success_timestamp_seconds: reg!(
                "route_sync_last_success_timestamp_seconds",
                "Unix time of the last VPC route sync that converged",
                Gauge::<f64, AtomicU64>::default()
            ),
            route_tables_degraded: reg!(
                "route_tables_degraded",
                "Route tables with a route we may not take over",
                Gauge::default()
            ),
            routes_left_alone: reg!(
                "routes_left_alone",
                "Routes for hybrid pod CIDRs owned by a non-gateway target",
                Gauge::default()
            ),
            leader_setup_duration_seconds: reg!(
                "leader_setup_duration_seconds",
                "From becoming leader to routes and CiliumVTEPConfig in place",
                latency()
            ),
            dynamodb_lock_held: reg!(
                "dynamodb_lock_held",
                "1 while this gateway holds the DynamoDB lock",
                Gauge::default()
            ),
            vtepconfig_fenced: reg!(
                "vtepconfig_fenced",
                "1 while this leader may not write the CiliumVTEPConfig (its term is not above the one written there)",
                Gauge::default()
            ),
            vtepconfig_read: reg!(
                "vtepconfig_read",
                "1 once this gateway has read the CiliumVTEPConfig (or found it missing) in the served shape",
                Gauge::default()
            ),
            vtepconfig_names_me: reg!(
                "vtepconfig_names_me",
                "1 while the CiliumVTEPConfig names this gateway as a tunnelEndpoint (read on every gateway, leader or not)",
                Gauge::default()
            ),
            vxlan_interface_up: reg!(
                "vxlan_interface_up",
                "1 when the VXLAN device is up",
                Gauge::default()
            ),
            vxlan_fdb_entries: reg!(
                "vxlan_fdb_entries",
                "FDB entries on the VXLAN device",
                Gauge::default()
            ),
            vxlan_route_count: reg!(
                "vxlan_route_count",
                "Routes via the VXLAN device",
                Gauge::default()
            ),
            ready: reg!(
                "ready",
                "1 when the gateway is ready (device up, nodes synced, identity known)",
                Gauge::default()
            ),
            nodes_from_snapshot: reg!(
                "nodes_from_snapshot",
                "1 while the hybrid nodes programmed are the state directory's snapshot (the Kubernetes API did not list them in time at start)",
                Gauge::default()
            ),
            nodes_snapshot_age_seconds: reg!(
                "nodes_snapshot_age_seconds",
                "Age of the node set snapshot programmed (0 when the live set is)",
                Gauge::default()
            ),
            datapath_repairs: reg!(
                "datapath_repairs",
                "Datapath drift found and repaired (device, sysctls, filter), by what",
                Family::<Labels, Counter>::default()
            ),
            node_tunnel_up: reg!(
                "node_tunnel_up",
                "1 while the tunnel to the hybrid node answers this gateway's probes, 0 while down",
                Family::<Labels, Gauge>::default()
            ),
            node_tunnel_rtt_seconds: reg!(
                "node_tunnel_rtt_seconds",
                "Round trip of tunnel probes to hybrid nodes",
                Histogram::new(exponential_buckets(0.0001, 2.0, 16))
            ),
            tunnel_probes_sent: reg!(
                "tunnel_probes_sent",
                "ICMP echoes sent through the tunnel to hybrid nodes",
                Counter::default()
            ),
            tunnel_probes_lost: reg!(
                "tunnel_probes_lost",
                "Tunnel probes not answered in time",
                Counter::default()
            ),
            tunnel_health_ratio: Arc::default(),
            peer_tunnel_health_ratio: reg!(
                "peer_tunnel_health_ratio",
                "Other gateways' tunnel health scores as this gateway reads them (fresh ones only), by peer",
                Family::<Labels, Gauge<f64, AtomicU64>>::default()
            ),
            last_health_handover_timestamp_seconds: reg!(
                "last_health_handover_timestamp_seconds",
                "Unix time this gateway last handed leadership over to a gateway with healthier tunnels (0: never)",
                Gauge::<f64, AtomicU64>::default()
            ),
            filter_counters: Arc::default(),
            last_rejections: std::sync::Mutex::default(),
            info,
            gateway: std::sync::Mutex::new(gateway.clone()),
            registry: root,
        };
        // Every kind of repair has a series from the start, so the first repair is an
        // increase from 0 (an alert on `increase()` sees it) rather than a new series at 1.
        for what in crate::datapath::REPAIRS {
            let _ = m
                .datapath_repairs
                .get_or_create(&vec![("what".to_string(), what.to_string())]);
        }
        let mut m = m;
        let ours = m.registry.sub_registry_with_prefix("hybrid_gateway");
        ours.register_collector(Box::new(SysfsStats {
            device: gateway.vxlan_interface.clone(),
            prefix: "vxlan",
            what: "the VXLAN device",
        }));
        ours.register_collector(Box::new(SysfsStats {
            device: gateway.primary_nic.clone(),
            prefix: "primary_nic",
            what: "the primary network interface (the tunnel's underlay)",
        }));
        ours.register_collector(Box::new(NodeCounters(nodes)));
        ours.register_collector(Box::new(FilterCounters(m.filter_counters.clone())));
        ours.register_collector(Box::new(HealthRatio(m.tunnel_health_ratio.clone())));
        m
    }

    /// A reload changed what `info` reports (pod CIDRs): the old series ends, one new
    /// series starts (none when nothing changed).
    pub fn update_info(&self, change: impl FnOnce(&mut GatewayInfo)) {
        let mut g = self.gateway.lock().unwrap_or_else(|p| p.into_inner());
        let before = g.labels();
        change(&mut g);
        if g.labels() != before {
            self.info.clear();
            self.info.get_or_create(&g.labels()).set(1);
        }
    }

    /// Counts what a reconcile pass did.
    /// Counts nodes, as the reference does (one per node added, changed or removed), not
    /// the kernel entries behind them.
    pub fn record_apply(&self, r: &ApplyReport) {
        self.vtep_add.inc_by(r.nodes_set as u64);
        self.vtep_remove.inc_by(r.nodes_removed as u64);
        self.vtep_add_errors.inc_by(r.nodes_set_failed as u64);
        self.vtep_remove_errors.inc_by(r.nodes_remove_failed as u64);
    }

    /// Sets `nodes_rejected{reason}` from a pass's rejections; reasons with none read 0.
    pub fn record_rejections(&self, rejected: &Arc<Vec<Rejection>>) {
        let mut last = self
            .last_rejections
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if last.as_ref().is_some_and(|l| Arc::ptr_eq(l, rejected)) {
            return;
        }
        *last = Some(rejected.clone());
        for reason in Rejection::REASONS {
            let n = rejected.iter().filter(|r| r.reason() == reason).count();
            self.nodes_rejected
                .get_or_create(&vec![("reason".to_string(), reason.to_string())])
                .set(n as i64);
        }
    }

    /// Keeps the filter's counters for scrapes.
    pub fn record_filter(&self, f: &FilterReport) {
        if !f.counters.is_empty() {
            *self
                .filter_counters
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = f.counters.clone();
        }
    }

    pub fn record_repair(&self, what: &str) {
        self.datapath_repairs
            .get_or_create(&vec![("what".to_string(), what.to_string())])
            .inc();
    }

    /// OpenMetrics text for `/metrics`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// A network device's kernel counters, read at scrape time: `<prefix>_{rx,tx}_*_total`.
#[derive(Debug)]
struct SysfsStats {
    device: String,
    prefix: &'static str,
    what: &'static str,
}

impl Collector for SysfsStats {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (file, help) in [
            ("rx_bytes", "Bytes received on"),
            ("tx_bytes", "Bytes sent on"),
            ("rx_packets", "Packets received on"),
            ("tx_packets", "Packets sent on"),
            ("rx_dropped", "Received packets dropped on"),
            ("tx_dropped", "Sent packets dropped on"),
            ("rx_errors", "Receive errors on"),
            ("tx_errors", "Send errors on"),
        ] {
            let path = format!("/sys/class/net/{}/statistics/{file}", self.device);
            // A device that is gone (or not yet there) has no series rather than a zero.
            let Some(v) = std::fs::read_to_string(path)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
            else {
                continue;
            };
            let name = format!("{}_{file}", self.prefix);
            let help = format!("{help} {}", self.what);
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(&name, &help, None, c.metric_type())?)?;
        }
        Ok(())
    }
}

/// `filter_packets_total{counter}` / `filter_bytes_total{counter}` from the nftables table.
#[derive(Debug)]
struct FilterCounters(Arc<std::sync::Mutex<std::collections::BTreeMap<String, (u64, u64)>>>);

impl Collector for FilterCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counters = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if counters.is_empty() {
            return Ok(());
        }
        for (metric, help, pick) in [
            (
                "filter_packets",
                "Packets counted by the nftables filter's rules (drops by reason, MSS clamps)",
                0usize,
            ),
            (
                "filter_bytes",
                "Bytes counted by the nftables filter's rules",
                1,
            ),
        ] {
            let mut family = encoder.encode_descriptor(
                metric,
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (name, _) in filter::COUNTERS {
                let Some(&(packets, bytes)) = counters.get(name) else {
                    continue;
                };
                let v = if pick == 0 { packets } else { bytes };
                let labels = [("counter", name)];
                ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// `tunnel_health_ratio`, only once the prober has an opinion: a gauge reading 0 before the
/// first round would look like a site outage.
#[derive(Debug)]
struct HealthRatio(Arc<std::sync::Mutex<Option<f64>>>);

impl Collector for HealthRatio {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(ratio) = *self.0.lock().unwrap_or_else(|p| p.into_inner()) else {
            return Ok(());
        };
        let g = prometheus_client::metrics::gauge::ConstGauge::new(ratio);
        g.encode(encoder.encode_descriptor(
            "tunnel_health_ratio",
            "Share of probed hybrid nodes whose tunnel answers this gateway (its health score)",
            None,
            g.metric_type(),
        )?)
    }
}

#[derive(Debug)]
struct NodeCounters(Arc<NodeWatchStats>);

impl Collector for NodeCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let skipped = ConstCounter::new(self.0.malformed_skipped.load(Ordering::Relaxed));
        skipped.encode(encoder.encode_descriptor(
            "malformed_nodes_skipped",
            "CiliumNodes skipped as unusable (once per node and reason)",
            None,
            skipped.metric_type(),
        )?)?;
        let errors = ConstCounter::new(self.0.watch_errors.load(Ordering::Relaxed));
        errors.encode(encoder.encode_descriptor(
            "ciliumnode_watch_errors",
            "CiliumNode watch errors recovered from",
            None,
            errors.metric_type(),
        )?)?;
        Ok(())
    }
}
