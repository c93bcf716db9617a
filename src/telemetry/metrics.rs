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

pub struct Metrics {
    registry: Registry,
    pub hybrid_nodes_configured: Gauge,
    /// Hybrid nodes the datapath refused in its last pass, by reason.
    pub nodes_rejected: Family<Labels, Gauge>,
    pub leader_is_active: Gauge,
    pub election_term: Gauge,
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
    /// The nftables filter's counters as last read (name → packets, bytes).
    filter_counters: Arc<std::sync::Mutex<std::collections::BTreeMap<String, (u64, u64)>>>,
}

impl Metrics {
    pub fn new(identity: &str, device: &str, nodes: Arc<NodeWatchStats>) -> Self {
        let mut registry = Registry::with_prefix("hybrid_gateway");
        let info = Family::<Labels, Gauge>::default();
        info.get_or_create(&vec![
            ("version".into(), env!("CARGO_PKG_VERSION").into()),
            ("identity".into(), identity.into()),
        ])
        .set(1);
        registry.register(
            "info",
            "Build and identity of this gateway (always 1)",
            info,
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
            filter_counters: Arc::default(),
            registry,
        };
        let mut m = m;
        m.registry.register_collector(Box::new(SysfsStats {
            device: device.to_string(),
        }));
        m.registry.register_collector(Box::new(NodeCounters(nodes)));
        m.registry
            .register_collector(Box::new(FilterCounters(m.filter_counters.clone())));
        m.registry
            .register_collector(Box::new(HealthRatio(m.tunnel_health_ratio.clone())));
        m
    }

    /// Counts what a reconcile pass did.
    pub fn record_apply(&self, r: &ApplyReport) {
        self.vtep_add
            .inc_by((r.routes_set + r.neighbours_set + r.fdb_set) as u64);
        self.vtep_remove
            .inc_by((r.routes_deleted + r.neighbours_deleted + r.fdb_deleted) as u64);
        self.vtep_add_errors.inc_by(r.add_errors as u64);
        self.vtep_remove_errors.inc_by(r.remove_errors as u64);
    }

    /// Sets `nodes_rejected{reason}` from a pass's rejections; reasons with none read 0.
    pub fn record_rejections(&self, rejected: &[Rejection]) {
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

/// The VXLAN device's kernel counters, read at scrape time.
#[derive(Debug)]
struct SysfsStats {
    device: String,
}

impl Collector for SysfsStats {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (file, name, help) in [
            (
                "rx_bytes",
                "vxlan_rx_bytes",
                "Bytes received on the VXLAN device",
            ),
            (
                "tx_bytes",
                "vxlan_tx_bytes",
                "Bytes sent on the VXLAN device",
            ),
            (
                "rx_packets",
                "vxlan_rx_packets",
                "Packets received on the VXLAN device",
            ),
            (
                "tx_packets",
                "vxlan_tx_packets",
                "Packets sent on the VXLAN device",
            ),
            (
                "rx_dropped",
                "vxlan_rx_dropped",
                "Received packets dropped on the VXLAN device",
            ),
            (
                "tx_dropped",
                "vxlan_tx_dropped",
                "Sent packets dropped on the VXLAN device",
            ),
            (
                "rx_errors",
                "vxlan_rx_errors",
                "Receive errors on the VXLAN device",
            ),
            (
                "tx_errors",
                "vxlan_tx_errors",
                "Send errors on the VXLAN device",
            ),
        ] {
            let path = format!("/sys/class/net/{}/statistics/{file}", self.device);
            let Some(v) = std::fs::read_to_string(path)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
            else {
                continue;
            };
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
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
