//! What each pass of the daemon's loops tells operators: one call per pass updates the
//! metrics and the status together, so the loops carry no bookkeeping of their own.

use std::sync::Arc;
use std::time::Duration;

use crate::aws::SyncReport;
use crate::datapath::Reconciled;
use crate::election::Leadership;
use crate::probe::health::{Score, TunnelState};
use crate::probe::{Tracker, WORST_SHOWN};

use super::status::{NodeTunnel, PeerHealth, Role, TunnelStatus};
use super::{DaemonStatus, Metrics};

/// Where the daemon's parts report to. Cheap to clone.
#[derive(Clone)]
pub struct Telemetry {
    pub status: Arc<DaemonStatus>,
    pub metrics: Arc<Metrics>,
}

impl Telemetry {
    /// A datapath reconcile pass ran (its per-entry errors included).
    pub fn datapath_reconciled(&self, r: &Reconciled) {
        let m = &self.metrics;
        m.record_apply(&r.report);
        m.reconcile_duration_seconds
            .observe(r.elapsed.as_secs_f64());
        m.hybrid_nodes_configured.set(r.nodes as i64);
        m.record_rejections(&r.rejected);
        if let Some(f) = &r.filter {
            m.record_filter(f);
        }
        for repair in &r.repairs {
            m.record_repair(repair.what);
        }
        // The pass checked the device (and recreated or brought it up if needed).
        m.vxlan_interface_up.set(1);
        m.vxlan_route_count.set(r.routes as i64);
        m.vxlan_fdb_entries.set(r.fdb as i64);
        for e in &r.report.errors {
            self.status.error(e.to_string());
        }
        let clean = r.report.errors.is_empty();
        self.status.update(|s| {
            s.nodes_programmed = r.nodes;
            s.nodes_synced |= clean;
            s.device_up = true;
        });
        m.ready.set(i64::from(self.status.snapshot().ready()));
    }

    /// One node's probe result in a round, after hysteresis.
    pub fn tunnel_probed(&self, node: &str, state: TunnelState, result: Option<Duration>) {
        let m = &self.metrics;
        m.tunnel_probes_sent.inc();
        match result {
            Some(rtt) => m.node_tunnel_rtt_seconds.observe(rtt.as_secs_f64()),
            None => {
                m.tunnel_probes_lost.inc();
            }
        }
        let labels = vec![("node".to_string(), node.to_string())];
        match state {
            TunnelState::Up => {
                m.node_tunnel_up.get_or_create(&labels).set(1);
            }
            TunnelState::Down => {
                m.node_tunnel_up.get_or_create(&labels).set(0);
            }
            // Not settled yet: no series rather than a false 0 or 1.
            TunnelState::Unknown => {
                m.node_tunnel_up.remove(&labels);
            }
        }
    }

    /// A node left the probe set: its series goes with it.
    pub fn tunnel_node_gone(&self, node: &str) {
        self.metrics
            .node_tunnel_up
            .remove(&vec![("node".to_string(), node.to_string())]);
    }

    /// A probe round ended: the score and the worst nodes for `status`.
    pub fn tunnel_round(&self, tracker: &Tracker, score: &Score) {
        *self
            .metrics
            .tunnel_health_ratio
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = score.ratio();
        let worst = tracker
            .worst(WORST_SHOWN)
            .into_iter()
            .map(|(name, h)| NodeTunnel {
                node: name.clone(),
                target: h.target.to_string(),
                state: match h.state {
                    TunnelState::Up => "up",
                    TunnelState::Down => "down",
                    TunnelState::Unknown => "unknown",
                }
                .to_string(),
                rtt_ms: h.last_rtt.map(|d| d.as_secs_f64() * 1000.0),
                lost: h.lost(),
            })
            .collect();
        let total = score.up + score.down + score.unknown;
        self.status.update(|s| {
            s.tunnel = (total > 0).then(|| TunnelStatus {
                ratio: score.ratio(),
                up: score.up,
                down: score.down,
                unknown: score.unknown,
                worst,
            });
        });
    }

    /// The peers' fresh health scores and this gateway's last handover for health.
    pub fn peer_health(
        &self,
        peers: &[crate::election::health::PeerScore],
        last: Option<&crate::election::advisor::Handover>,
    ) {
        let m = &self.metrics;
        m.peer_tunnel_health_ratio.clear();
        for p in peers {
            m.peer_tunnel_health_ratio
                .get_or_create(&vec![("peer".to_string(), p.identity.clone())])
                .set(p.ratio);
        }
        if let Some(h) = last {
            m.last_health_handover_timestamp_seconds
                .set(h.at.as_millisecond() as f64 / 1000.0);
        }
        let now = tokio::time::Instant::now();
        self.status.update(|s| {
            s.peer_health = peers
                .iter()
                .map(|p| PeerHealth {
                    identity: p.identity.clone(),
                    ratio: p.ratio,
                    age_ms: now.saturating_duration_since(p.seen_changed_at).as_millis() as u64,
                })
                .collect();
            s.last_health_handover = last.map(ToString::to_string);
        });
    }

    /// A datapath reconcile pass could not run at all.
    pub fn datapath_failed(&self, error: &dyn std::fmt::Display) {
        self.status.error(format!("reconcile: {error}"));
        // The device could not be checked or put right: not ready until a pass succeeds.
        self.status.update(|s| s.device_up = false);
        self.metrics.vxlan_interface_up.set(0);
        self.metrics
            .ready
            .set(i64::from(self.status.snapshot().ready()));
    }

    /// A VPC route sync pass ran. `setup`: the time from taking office, on the first pass
    /// of a term that converged.
    pub fn routes_synced(&self, report: &SyncReport, elapsed: Duration, setup: Option<Duration>) {
        let m = &self.metrics;
        m.aws_route_table_update_duration_seconds
            .observe(elapsed.as_secs_f64());
        m.aws_route_table_update.inc_by(u64::from(
            report.created() + report.replaced() + report.deleted(),
        ));
        m.route_tables_degraded.set(report.degraded().len() as i64);
        m.routes_left_alone.set(report.left_alone().count() as i64);
        let degraded: Vec<String> = report.degraded().iter().map(|s| s.to_string()).collect();
        let total = report.tables.len();
        let in_sync = report.tables.iter().filter(|t| !t.degraded()).count();
        self.status.update(|s| {
            s.route_tables_total = total;
            s.route_tables_in_sync = in_sync;
            s.route_tables_degraded = degraded;
        });
        if report.converged() {
            m.route_sync_last_success_timestamp_seconds
                .set(jiff::Timestamp::now().as_millisecond() as f64 / 1000.0);
            if let Some(setup) = setup {
                m.leader_setup_duration_seconds.observe(setup.as_secs_f64());
            }
        } else {
            m.aws_route_table_update_errors.inc();
        }
    }

    /// No route tables are managed any more (a reload removed them).
    pub fn routes_unmanaged(&self) {
        self.metrics.route_tables_degraded.set(0);
        self.metrics.routes_left_alone.set(0);
        self.status.update(|s| {
            s.route_tables_total = 0;
            s.route_tables_in_sync = 0;
            s.route_tables_degraded.clear();
        });
    }

    /// A VPC route sync pass failed. Only a leader's failure is news: a deposed leader's
    /// last pass failing for want of leadership is expected.
    pub fn routes_failed(&self, error: &dyn std::fmt::Display, leading: bool) {
        self.metrics.aws_route_table_update_errors.inc();
        if leading {
            tracing::warn!("VPC route sync: {error}");
            self.status.error(format!("route sync: {error}"));
        }
    }

    /// Leadership changed. `lock_in_use`: with the DynamoDB lock, leading means holding it.
    pub fn leadership(&self, leadership: &Leadership, lock_in_use: bool) {
        let m = &self.metrics;
        match leadership {
            Leadership::Leader { since, term } => {
                m.leader_is_active.set(1);
                m.dynamodb_lock_held.set(i64::from(lock_in_use));
                m.election_term.set(i64::from(*term));
                m.election_transitions.inc();
                let since = since.strftime("%H:%M:%S").to_string();
                self.status.update(|s| {
                    s.role = Role::Leader;
                    s.leader = Some(s.identity.clone());
                    s.leader_since = Some(since);
                    s.term = Some(*term);
                });
            }
            Leadership::Standby { leader } => {
                m.leader_is_active.set(0);
                m.dynamodb_lock_held.set(0);
                self.status.update(|s| {
                    s.role = Role::Standby;
                    s.leader = leader.clone();
                    s.leader_since = None;
                });
            }
        }
    }

    /// Per-AZ mode: a shard's leadership changed (or its holder did).
    pub fn shard_leadership(&self, shard: &str, home: bool, leadership: &Leadership) {
        let labels = vec![("shard".to_string(), shard.to_string())];
        let m = &self.metrics;
        let (role, leader, term) = match leadership {
            Leadership::Leader { term, .. } => {
                m.shard_term.get_or_create(&labels).set(i64::from(*term));
                (Role::Leader, None, Some(*term))
            }
            Leadership::Standby { leader } => (Role::Standby, leader.clone(), None),
        };
        m.shard_leader
            .get_or_create(&labels)
            .set(i64::from(role == Role::Leader));
        self.status.update(|s| {
            let me = s.identity.clone();
            let sh = shard_entry(s, shard);
            sh.home = home;
            sh.role = role;
            sh.leader = if role == Role::Leader {
                Some(me)
            } else {
                leader
            };
            if term.is_some() {
                sh.term = term;
            }
            // The default shard's holder (its Lease is `election.lease_name`) is the
            // gateway-wide `leader`/`term`, as in active/standby.
            if shard == "default" {
                s.leader = sh_leader_of(s, shard);
                if term.is_some() {
                    s.term = term;
                }
            }
            role_from_shards(s);
        });
        let any = self.status.snapshot().role == Role::Leader;
        m.leader_is_active.set(i64::from(any));
    }

    /// Per-AZ mode: the shard's tables as last read, and how many this gateway's last pass
    /// left in sync.
    pub fn shard_tables(&self, shard: &str, tables: &[String], in_sync: Option<usize>) {
        let labels = vec![("shard".to_string(), shard.to_string())];
        self.metrics
            .shard_route_tables
            .get_or_create(&labels)
            .set(tables.len() as i64);
        self.status.update(|s| {
            let sh = shard_entry(s, shard);
            sh.tables = tables.to_vec();
            if let Some(n) = in_sync {
                sh.tables_in_sync = n;
            }
        });
    }

    /// Per-AZ mode: whom `shard`'s CiliumVTEPConfig entries name (`None`: not read yet),
    /// judged against who leads the shard here (`me`: this gateway's tunnel endpoint):
    /// the `shard_vtepconfig_names_me` / `_named` gauges always, and the shard's status
    /// line when `in_status` (a shard this gateway takes part in).
    pub fn shard_vtepconfig_observed(
        &self,
        shard: &str,
        names: Option<&[std::net::Ipv4Addr]>,
        me: std::net::Ipv4Addr,
        in_status: bool,
    ) {
        let labels = vec![("shard".to_string(), shard.to_string())];
        let names_me = names.is_some_and(|n| n.contains(&me));
        let m = &self.metrics;
        m.shard_vtepconfig_names_me
            .get_or_create(&labels)
            .set(i64::from(names_me));
        m.shard_vtepconfig_named
            .get_or_create(&labels)
            .set(names.map_or(0, |n| n.len() as i64));
        if !in_status {
            return;
        }
        self.status.update(|s| {
            let sh = shard_entry(s, shard);
            let leads = sh.role == Role::Leader;
            sh.vtepconfig_names = Some(match names {
                None => "not read yet".to_string(),
                Some([]) => "no entries".to_string(),
                Some(n) => {
                    let list: Vec<String> = n.iter().map(ToString::to_string).collect();
                    let judged = match (leads, names_me, n.len()) {
                        (true, true, 1) => "this gateway, the shard's leader",
                        (true, _, _) => "NOT only this gateway, which leads the shard",
                        (false, true, _) => "this gateway, which does NOT lead the shard",
                        (false, false, _) => "another gateway",
                    };
                    format!("tunnelEndpoint {} ({judged})", list.join(", "))
                }
            });
        });
    }

    /// Per-AZ mode: why this gateway, leading `shard`, cannot write the shard's
    /// CiliumVTEPConfig entries (`None`s once it can, or once it no longer leads): into the
    /// shard's status (and so readiness) and the `shard_vtepconfig_*` gauges.
    pub fn shard_vtepconfig_blocked(
        &self,
        shard: &str,
        fenced: Option<String>,
        unserved: Option<String>,
    ) {
        let labels = vec![("shard".to_string(), shard.to_string())];
        let m = &self.metrics;
        m.shard_vtepconfig_fenced
            .get_or_create(&labels)
            .set(i64::from(fenced.is_some()));
        m.shard_vtepconfig_unserved
            .get_or_create(&labels)
            .set(i64::from(unserved.is_some()));
        self.status.update(|s| {
            let sh = shard_entry(s, shard);
            sh.fenced = fenced;
            sh.unserved = unserved;
        });
    }

    /// Per-AZ mode: this gateway left a shard's election (the layout lost the shard): its
    /// status entry and metric series go, so neither reports a shard that is not there.
    pub fn shard_gone(&self, shard: &str) {
        let labels = vec![("shard".to_string(), shard.to_string())];
        let m = &self.metrics;
        m.shard_leader.remove(&labels);
        m.shard_term.remove(&labels);
        m.shard_route_tables.remove(&labels);
        m.shard_vtepconfig_fenced.remove(&labels);
        m.shard_vtepconfig_unserved.remove(&labels);
        // The observer sets these again within a second if the object still has entries of
        // the shard; otherwise they would keep the vanished shard's last values.
        m.shard_vtepconfig_names_me.remove(&labels);
        m.shard_vtepconfig_named.remove(&labels);
        self.status.update(|s| {
            s.shards.retain(|x| x.shard != shard);
            role_from_shards(s);
        });
        let any = self.status.snapshot().role == Role::Leader;
        m.leader_is_active.set(i64::from(any));
    }
}

/// The gateway as a whole leads while it leads any shard.
fn role_from_shards(s: &mut super::status::StatusSnapshot) {
    let any = s.shards.iter().any(|x| x.role == Role::Leader);
    s.role = if any { Role::Leader } else { Role::Standby };
}

fn sh_leader_of(s: &super::status::StatusSnapshot, shard: &str) -> Option<String> {
    s.shards
        .iter()
        .find(|x| x.shard == shard)
        .and_then(|x| x.leader.clone())
}

/// The status entry of `shard`, added in name order if new.
fn shard_entry<'a>(
    s: &'a mut super::status::StatusSnapshot,
    shard: &str,
) -> &'a mut super::status::ShardStatus {
    let i = match s.shards.binary_search_by(|x| x.shard.as_str().cmp(shard)) {
        Ok(i) => i,
        Err(i) => {
            s.shards.insert(
                i,
                super::status::ShardStatus {
                    shard: shard.to_string(),
                    ..Default::default()
                },
            );
            i
        }
    };
    &mut s.shards[i]
}
