//! The only place that speaks rtnetlink. Everything above it deals in typed intent
//! (a [`VxlanSpec`], a [`Plan`]) and typed state ([`LinkState`], [`Actual`]).

use std::collections::BTreeSet;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt, TryStreamExt};
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};
use tokio::task::JoinHandle;

use super::error::{DatapathError, Result};
use super::mac::Mac;
use super::nexthop::{NexthopChange, NexthopSocket};
use super::vtep::{
    Actual, KernelFdb, KernelNeighbour, KernelNexthop, KernelRoute, KernelRouteKind, Op, Plan,
    RouteStyle, ROUTE_PROTOCOL, UNREACHABLE_METRIC,
};
use super::PassTimes;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const DUMP_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests in flight at once while applying a plan. The kernel handles each message
/// synchronously; keeping the socket busy saves a round trip per entry.
const IN_FLIGHT: usize = 128;
/// Large dumps and bursts of acks must not overflow the socket (ENOBUFS loses replies).
const RECV_BUFFER: usize = 8 << 20;

/// The attributes of the VXLAN device the daemon cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: Ipv4Addr,
    pub mac: Mac,
    pub mtu: u32,
}

/// A link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    pub name: String,
    pub mac: Option<Mac>,
    pub mtu: u32,
    pub up: bool,
    /// `ip link set … alias`: how the daemon marks the device it created.
    pub alias: Option<String>,
    /// The link kind (`vxlan`, `veth`, `bridge`…), when it has one.
    pub kind: Option<String>,
    /// `None` when the link is not a VXLAN device at all.
    pub vxlan: Option<VxlanAttrs>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VxlanAttrs {
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub local: Option<Ipv4Addr>,
    pub learning: Option<bool>,
}

/// How a plan went: what changed, and what failed (the rest was still applied).
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub routes_set: usize,
    pub routes_deleted: usize,
    pub neighbours_set: usize,
    pub neighbours_deleted: usize,
    pub fdb_set: usize,
    pub fdb_deleted: usize,
    pub nexthops_set: usize,
    pub nexthops_deleted: usize,
    pub add_errors: usize,
    pub remove_errors: usize,
    pub errors: Vec<DatapathError>,
    /// The same pass counted in nodes (by node IP), as operators count them: a node added
    /// or changed (every one of its adds succeeded), one whose adds failed, one removed
    /// (its ARP entry gone), one whose removal failed.
    pub nodes_set: usize,
    pub nodes_set_failed: usize,
    pub nodes_removed: usize,
    pub nodes_remove_failed: usize,
}

impl ApplyReport {
    pub fn changes(&self) -> usize {
        self.routes_set
            + self.routes_deleted
            + self.neighbours_set
            + self.neighbours_deleted
            + self.fdb_set
            + self.fdb_deleted
            + self.nexthops_set
            + self.nexthops_deleted
    }
}

/// Which nodes a pass's operations touched, and how they fared.
#[derive(Default)]
struct NodeOutcomes {
    set: BTreeSet<Ipv4Addr>,
    set_failed: BTreeSet<Ipv4Addr>,
    removed: BTreeSet<Ipv4Addr>,
    remove_failed: BTreeSet<Ipv4Addr>,
}

impl NodeOutcomes {
    fn record(&mut self, op: &Op, failed: bool) {
        let (ip, set) = match op {
            Op::SetRoute { via, .. } => (*via, true),
            Op::SetNeighbour { ip, .. } => (*ip, true),
            Op::SetFdb { dst, .. } => (*dst, true),
            Op::SetNexthop { via, .. } => (*via, true),
            // A node's ARP entry is what makes it a node: its removal removes the node. A
            // stale route or FDB entry alone is a change to a node, or debris.
            Op::DelNeighbour { ip } => (*ip, false),
            Op::SetUnreachable { .. }
            | Op::DelRoute(_)
            | Op::DelFdb { .. }
            | Op::DelNexthop { .. } => return,
        };
        match (set, failed) {
            (true, false) => self.set.insert(ip),
            (true, true) => self.set_failed.insert(ip),
            (false, false) => self.removed.insert(ip),
            (false, true) => self.remove_failed.insert(ip),
        };
    }

    fn count_into(self, report: &mut ApplyReport) {
        report.nodes_set = self.set.difference(&self.set_failed).count();
        report.nodes_set_failed = self.set_failed.len();
        report.nodes_removed = self.removed.len();
        report.nodes_remove_failed = self.remove_failed.len();
    }
}

/// One rtnetlink socket in the network namespace of the thread that opened it.
pub struct Netlink {
    handle: Handle,
    connection: JoinHandle<()>,
    /// Nexthop requests (the `rtnetlink` crate has none); replaced after a socket error.
    nexthops: tokio::sync::Mutex<Option<NexthopSocket>>,
    /// How routes name their node, as the last [`Netlink::read_vtep`] found the kernel.
    style: std::sync::Mutex<RouteStyle>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Netlink {
    /// Opens the socket; must be called inside a tokio runtime.
    pub fn open() -> Result<Self> {
        let (mut connection, handle, _) =
            rtnetlink::new_connection().map_err(|source| DatapathError::Io {
                context: "opening an rtnetlink socket".into(),
                source,
            })?;
        use rtnetlink::sys::AsyncSocket;
        // Best effort: without it, only very large plans risk ENOBUFS, and those are retried.
        let _ = connection
            .socket_mut()
            .socket_mut()
            .set_rx_buf_sz(RECV_BUFFER);
        // Opened here, on the caller's thread, so it lives in the same namespace.
        let nexthops = NexthopSocket::open().map_err(nexthop_socket_error)?;
        Ok(Netlink {
            handle,
            connection: tokio::spawn(connection),
            nexthops: tokio::sync::Mutex::new(Some(nexthops)),
            style: std::sync::Mutex::new(RouteStyle::gateways()),
        })
    }

    /// How routes name their node, as the last kernel dump found it (gateway routes
    /// before the first).
    pub fn route_style(&self) -> RouteStyle {
        self.style.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Every nexthop object, split into ours (on device `index`, or carrying our protocol)
    /// and the ids of everyone else's; `None` when the kernel has no nexthop objects.
    async fn read_nexthops(&self, index: u32) -> Result<Option<(Vec<KernelNexthop>, Vec<u32>)>> {
        let mut guard = self.nexthops.lock().await;
        let socket = nexthop_socket(&mut guard).map_err(nexthop_socket_error)?;
        let entries = match socket.dump().await {
            Ok(entries) => entries,
            // Linux < 5.3 has no RTM_GETNEXTHOP: routes keep their gateway.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EINVAL)) => {
                return Ok(None)
            }
            Err(source) => {
                *guard = None;
                return Err(DatapathError::Io {
                    context: "dumping nexthop objects".into(),
                    source,
                });
            }
        };
        let (mut ours, mut foreign) = (Vec::new(), Vec::new());
        for e in entries {
            let mine = e.family == libc::AF_INET as u8
                && !e.special
                && (e.oif == Some(index) || e.protocol == ROUTE_PROTOCOL);
            if mine {
                ours.push(KernelNexthop {
                    id: e.id,
                    gateway: e.gateway,
                    on_device: e.oif == Some(index),
                    onlink: e.onlink,
                    protocol: e.protocol,
                });
            } else {
                foreign.push(e.id);
            }
        }
        Ok(Some((ours, foreign)))
    }

    /// Applies nexthop ops in as few datagrams as the kernel takes; one result per op.
    async fn apply_nexthops(&self, index: u32, ops: &[&Op]) -> Vec<Result<()>> {
        let changes: Vec<NexthopChange> = ops
            .iter()
            .filter_map(|op| match **op {
                Op::SetNexthop { id, via } => Some(NexthopChange::Set {
                    id,
                    via,
                    oif: index,
                    protocol: ROUTE_PROTOCOL,
                }),
                Op::DelNexthop { id } => Some(NexthopChange::Delete { id }),
                _ => None,
            })
            .collect();
        debug_assert_eq!(changes.len(), ops.len());
        let mut guard = self.nexthops.lock().await;
        let answered = match nexthop_socket(&mut guard) {
            Ok(socket) => socket.apply(&changes).await,
            Err(e) => Err(e),
        };
        match answered {
            Ok(codes) => ops
                .iter()
                .zip(codes)
                .map(|(op, code)| match code {
                    0 => Ok(()),
                    code => Err(DatapathError::Kernel {
                        context: describe(op),
                        source: std::io::Error::from_raw_os_error(code),
                    }),
                })
                .collect(),
            Err(e) => {
                *guard = None;
                ops.iter()
                    .map(|op| {
                        Err(DatapathError::Io {
                            context: describe(op),
                            source: std::io::Error::new(e.kind(), e.to_string()),
                        })
                    })
                    .collect()
            }
        }
    }

    /// The link called `name`, or `None` if there is none.
    pub async fn link(&self, name: &str) -> Result<Option<LinkState>> {
        self.one_link(self.handle.link().get().match_name(name), || {
            format!("looking up link {name}")
        })
        .await
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkState>> {
        self.one_link(self.handle.link().get().match_index(index), || {
            format!("looking up link #{index}")
        })
        .await
    }

    /// Every link of this network namespace.
    pub async fn links(&self) -> Result<Vec<LinkState>> {
        let dump = self.handle.link().get().execute().try_collect::<Vec<_>>();
        let msgs = timed(DUMP_TIMEOUT, || "dumping links".into(), dump).await?;
        Ok(msgs.into_iter().map(parse_link).collect())
    }

    /// A single-link lookup; "no such device" is an answer, not an error.
    async fn one_link(
        &self,
        req: rtnetlink::LinkGetRequest,
        ctx: impl FnOnce() -> String,
    ) -> Result<Option<LinkState>> {
        match timed(REQUEST_TIMEOUT, ctx, req.execute().try_collect::<Vec<_>>()).await {
            Ok(msgs) => Ok(msgs.into_iter().next().map(parse_link)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The link that carries `ip` as one of its addresses.
    pub async fn link_with_address(&self, ip: Ipv4Addr) -> Result<Option<LinkState>> {
        let dump = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect::<Vec<_>>();
        let addrs = timed(DUMP_TIMEOUT, || "dumping interface addresses".into(), dump).await?;
        let index = addrs.iter().find_map(|a| {
            a.attributes
                .iter()
                .any(|attr| matches!(attr, AddressAttribute::Local(IpAddr::V4(x)) | AddressAttribute::Address(IpAddr::V4(x)) if *x == ip))
                .then_some(a.header.index)
        });
        match index {
            Some(i) => self.link_by_index(i).await,
            None => Ok(None),
        }
    }

    /// Every IPv4 address assigned on this host (network namespace).
    pub async fn local_ipv4s(&self) -> Result<Vec<Ipv4Addr>> {
        let dump = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect::<Vec<_>>();
        let addrs = timed(DUMP_TIMEOUT, || "dumping interface addresses".into(), dump).await?;
        Ok(addrs
            .iter()
            .flat_map(|a| a.attributes.iter())
            .filter_map(|attr| match attr {
                AddressAttribute::Local(IpAddr::V4(x))
                | AddressAttribute::Address(IpAddr::V4(x)) => Some(*x),
                _ => None,
            })
            .collect())
    }

    pub async fn create_vxlan(&self, spec: &VxlanSpec) -> Result<()> {
        let msg = LinkVxlan::new(&spec.name, spec.vni)
            .port(spec.port)
            .local(spec.local)
            .learning(false)
            .mtu(spec.mtu)
            .address(spec.mac.0.to_vec())
            .build();
        let ctx = || {
            format!(
                "creating VXLAN device {} (vni {}, port {}, local {})",
                spec.name, spec.vni, spec.port, spec.local
            )
        };
        timed(REQUEST_TIMEOUT, ctx, self.handle.link().add(msg).execute()).await
    }

    /// Changes the VXLAN attributes the kernel allows to change on a live device.
    pub async fn change_vxlan(&self, index: u32, spec: &VxlanSpec) -> Result<()> {
        let msg = LinkVxlan::new(&spec.name, spec.vni)
            .local(spec.local)
            .learning(false)
            .index(index)
            .build();
        let ctx = || format!("changing local address / learning of {}", spec.name);
        timed(
            REQUEST_TIMEOUT,
            ctx,
            self.handle.link().change(msg).execute(),
        )
        .await
    }

    /// Sets the link's alias (IFLA_IFALIAS); the kernel takes it only on an existing link.
    pub async fn set_alias(&self, index: u32, alias: &str) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).alias(alias).build();
        let ctx = || format!("setting the alias of link #{index} to {alias:?}");
        timed(
            REQUEST_TIMEOUT,
            ctx,
            self.handle.link().change(msg).execute(),
        )
        .await
    }

    /// Sets any of MAC, MTU and the up flag in one request.
    pub async fn set_link(
        &self,
        index: u32,
        mac: Option<Mac>,
        mtu: Option<u32>,
        up: bool,
    ) -> Result<()> {
        let mut b = LinkUnspec::new_with_index(index);
        if let Some(mac) = mac {
            b = b.address(mac.0.to_vec());
        }
        if let Some(mtu) = mtu {
            b = b.mtu(mtu);
        }
        if up {
            b = b.up();
        }
        let ctx = || format!("setting link #{index} (mac {mac:?}, mtu {mtu:?}, up {up})");
        timed(
            REQUEST_TIMEOUT,
            ctx,
            self.handle.link().change(b.build()).execute(),
        )
        .await
    }

    pub async fn delete_link(&self, index: u32) -> Result<()> {
        timed(
            REQUEST_TIMEOUT,
            || format!("deleting link #{index}"),
            self.handle.link().del(index).execute(),
        )
        .await
    }

    /// Everything the daemon owns on device `index`: routes, ARP entries, FDB entries and
    /// nexthop objects. Also learns how routes should name their node ([`RouteStyle`]).
    pub async fn read_vtep(&self, index: u32) -> Result<Actual> {
        // Nexthops first: a route by one of ours is ours even when the kernel leaves the
        // nexthop's device out of route dumps (`net.ipv4.nexthop_compat_mode = 0`).
        let (nexthops, style) = match self.read_nexthops(index).await? {
            Some((ours, foreign)) => (
                ours,
                RouteStyle {
                    nexthops: true,
                    foreign: foreign.into_iter().collect(),
                },
            ),
            None => (Vec::new(), RouteStyle::gateways()),
        };
        let our_ids: BTreeSet<u32> = nexthops.iter().map(|n| n.id).collect();
        let routes = async {
            let req = self
                .handle
                .route()
                .get(RouteMessageBuilder::<Ipv4Addr>::new().build());
            let dump = req.execute().try_collect::<Vec<_>>();
            let msgs = timed(DUMP_TIMEOUT, || "dumping IPv4 routes".into(), dump).await?;
            Ok::<_, DatapathError>(
                msgs.iter()
                    .filter_map(|m| owned_route(m, index, &our_ids))
                    .collect(),
            )
        };
        let neighbours = async {
            let dump = self
                .handle
                .neighbours()
                .get()
                .set_address_family(AddressFamily::Inet)
                .execute()
                .try_collect::<Vec<_>>();
            let msgs = timed(DUMP_TIMEOUT, || "dumping ARP entries".into(), dump).await?;
            Ok(msgs
                .iter()
                .filter(|m| m.header.ifindex == index)
                .filter_map(parse_neighbour)
                .collect())
        };
        let fdb = async {
            let dump = self
                .handle
                .neighbours()
                .get()
                .set_address_family(AddressFamily::Bridge)
                .execute()
                .try_collect::<Vec<_>>();
            let msgs = timed(DUMP_TIMEOUT, || "dumping FDB entries".into(), dump).await?;
            Ok(msgs
                .iter()
                .filter(|m| m.header.ifindex == index)
                .filter_map(parse_fdb)
                .collect())
        };
        // One socket runs one dump at a time (a second one gets EBUSY), so they go in turn.
        let routes = routes.await?;
        let neighbours = neighbours.await?;
        let fdb = fdb.await?;
        *self.style.lock().unwrap_or_else(|p| p.into_inner()) = style.clone();
        Ok(Actual {
            routes,
            neighbours,
            fdb,
            nexthops,
            style,
        })
    }

    /// Applies `plan` on device `index`, phase by phase. A failed op is reported and does not
    /// stop the others; the next reconcile retries it.
    pub async fn apply(&self, index: u32, plan: &Plan) -> ApplyReport {
        self.apply_timed(index, plan, &mut PassTimes::default())
            .await
    }

    /// [`Netlink::apply`], recording each phase's time and each request's round trip.
    pub async fn apply_timed(&self, index: u32, plan: &Plan, times: &mut PassTimes) -> ApplyReport {
        self.apply_gated(index, plan, times, async {}).await.0
    }

    /// [`Netlink::apply_timed`] with `before_routes`, which completes before any route is
    /// deleted or added (the filter, which must know a node before the gateway forwards to
    /// it and forget it before it stops). When the plan deletes no route, the ARP, FDB and
    /// nexthop entries of new nodes are written meanwhile: nothing is forwarded by them
    /// until a route names them, and on a cold start that hides most of `before_routes`.
    pub async fn apply_gated<T>(
        &self,
        index: u32,
        plan: &Plan,
        times: &mut PassTimes,
        before_routes: impl Future<Output = T>,
    ) -> (ApplyReport, T) {
        let mut report = ApplyReport::default();
        let mut nodes = NodeOutcomes::default();
        let [del_routes, set_l2, set_routes, del_l2] = &plan.phases;
        let gated = if del_routes.is_empty() {
            let started = Instant::now();
            let (gated, results) = futures::join!(before_routes, self.run_phase(index, set_l2));
            times.add(
                "netlink phase (new entries, alongside the gate)",
                started.elapsed(),
            );
            record(set_l2, results, times, &mut report, &mut nodes);
            gated
        } else {
            let gated = before_routes.await;
            for phase in [del_routes, set_l2] {
                let started = Instant::now();
                let results = self.run_phase(index, phase).await;
                times.add("netlink phase", started.elapsed());
                record(phase, results, times, &mut report, &mut nodes);
            }
            gated
        };
        for phase in [set_routes, del_l2] {
            let started = Instant::now();
            let results = self.run_phase(index, phase).await;
            times.add("netlink phase", started.elapsed());
            record(phase, results, times, &mut report, &mut nodes);
        }
        nodes.count_into(&mut report);
        (report, gated)
    }

    /// One phase's ops, all in flight together: `(op index, result, round trip)` each.
    async fn run_phase(&self, index: u32, phase: &[Op]) -> Vec<(usize, Result<()>, Duration)> {
        if phase.is_empty() {
            return Vec::new();
        }
        let (nexthop_ops, other): (Vec<usize>, Vec<usize>) = (0..phase.len())
            .partition(|i| matches!(phase[*i], Op::SetNexthop { .. } | Op::DelNexthop { .. }));
        // Indices, not `&Op`, cross the closure: a closure generic over the borrow's
        // lifetime would not be `Send` for tokio::spawn.
        let requests = stream::iter(other)
            .map(|i| {
                let op = &phase[i];
                async move {
                    let sent = Instant::now();
                    let r = self.apply_op(index, op).await;
                    (i, r, sent.elapsed())
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect::<Vec<(usize, Result<()>, Duration)>>();
        // Nexthop objects go in batches on their own socket, alongside.
        let batched = async {
            if nexthop_ops.is_empty() {
                return Vec::new();
            }
            let sent = Instant::now();
            let ops: Vec<&Op> = nexthop_ops.iter().map(|i| &phase[*i]).collect();
            let results = self.apply_nexthops(index, &ops).await;
            let took = sent.elapsed();
            nexthop_ops
                .iter()
                .zip(results)
                .map(|(i, r)| (*i, r, took))
                .collect()
        };
        let (mut results, batched) = futures::join!(requests, batched);
        results.extend(batched);
        results
    }

    async fn apply_op(&self, index: u32, op: &Op) -> Result<()> {
        let ctx = || describe(op);
        match op {
            Op::SetRoute { dst, via, nhid } => {
                let b = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(dst.network(), dst.prefix_len())
                    .protocol(RouteProtocol::from(ROUTE_PROTOCOL));
                let msg = match nhid {
                    Some(id) => by_nexthop(b, *id),
                    None => b.gateway(*via).output_interface(index).onlink().build(),
                };
                timed(
                    REQUEST_TIMEOUT,
                    ctx,
                    self.handle.route().add(msg).replace().execute(),
                )
                .await
            }
            Op::SetUnreachable { dst } => {
                let msg = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(dst.network(), dst.prefix_len())
                    .kind(RouteType::Unreachable)
                    .priority(UNREACHABLE_METRIC)
                    .protocol(RouteProtocol::from(ROUTE_PROTOCOL))
                    .build();
                timed(
                    REQUEST_TIMEOUT,
                    ctx,
                    self.handle.route().add(msg).replace().execute(),
                )
                .await
            }
            Op::DelRoute(route) => {
                let b = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(route.dst.network(), route.dst.prefix_len())
                    .priority(route.metric)
                    .protocol(RouteProtocol::from(route.protocol))
                    // NOWHERE: match the route whatever scope it was written with.
                    .scope(RouteScope::NoWhere);
                let msg = match route.kind {
                    KernelRouteKind::Device { nhid: Some(id), .. } => by_nexthop(b, id),
                    KernelRouteKind::Device { gateway, .. } => {
                        let b = b.output_interface(index);
                        match gateway {
                            Some(g) => b.gateway(g),
                            None => b,
                        }
                        .build()
                    }
                    KernelRouteKind::Unreachable => b.kind(RouteType::Unreachable).build(),
                };
                timed(REQUEST_TIMEOUT, ctx, self.handle.route().del(msg).execute()).await
            }
            Op::SetNeighbour { ip, mac } => {
                let req = self
                    .handle
                    .neighbours()
                    .add(index, IpAddr::V4(*ip))
                    .link_layer_address(&mac.0)
                    .state(NeighbourState::Permanent)
                    .replace();
                timed(REQUEST_TIMEOUT, ctx, req.execute()).await
            }
            Op::DelNeighbour { ip } => {
                let mut msg = NeighbourMessage::default();
                msg.header.family = AddressFamily::Inet;
                msg.header.ifindex = index;
                msg.attributes
                    .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(*ip)));
                timed(
                    REQUEST_TIMEOUT,
                    ctx,
                    self.handle.neighbours().del(msg).execute(),
                )
                .await
            }
            Op::SetFdb { mac, dst } => {
                let req = self
                    .handle
                    .neighbours()
                    .add_bridge(index, &mac.0)
                    .flags(NeighbourFlags::Own)
                    .state(NeighbourState::Permanent)
                    .destination(IpAddr::V4(*dst))
                    .replace();
                timed(REQUEST_TIMEOUT, ctx, req.execute()).await
            }
            Op::DelFdb { mac, dst } => {
                let mut msg = NeighbourMessage::default();
                msg.header.family = AddressFamily::Bridge;
                msg.header.ifindex = index;
                msg.header.flags = NeighbourFlags::Own;
                msg.attributes
                    .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
                if let Some(dst) = dst {
                    msg.attributes
                        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                            *dst,
                        )));
                }
                timed(
                    REQUEST_TIMEOUT,
                    ctx,
                    self.handle.neighbours().del(msg).execute(),
                )
                .await
            }
            Op::SetNexthop { .. } | Op::DelNexthop { .. } => {
                let mut results = self.apply_nexthops(index, &[op]).await;
                results.pop().unwrap_or(Ok(()))
            }
        }
    }
}

/// The nexthop socket, opened again if an error dropped it.
fn nexthop_socket(slot: &mut Option<NexthopSocket>) -> std::io::Result<&mut NexthopSocket> {
    match slot {
        Some(s) => Ok(s),
        None => Ok(slot.insert(NexthopSocket::open()?)),
    }
}

fn nexthop_socket_error(source: std::io::Error) -> DatapathError {
    DatapathError::Io {
        context: "opening an rtnetlink socket for nexthop objects".into(),
        source,
    }
}

/// A route that goes by nexthop object `id`: the device, gateway and onlink flag are the
/// object's, and the kernel matches a route by nexthop on its id alone (naming a device or
/// gateway in a delete would match nothing).
fn by_nexthop(b: RouteMessageBuilder<Ipv4Addr>, id: u32) -> RouteMessage {
    let mut msg = b.build();
    msg.attributes.push(RouteAttribute::NhId(id));
    msg
}

/// Counts one phase's results into `report` and `nodes`; a delete of what is already gone
/// succeeded.
fn record(
    phase: &[Op],
    results: Vec<(usize, Result<()>, Duration)>,
    times: &mut PassTimes,
    report: &mut ApplyReport,
    nodes: &mut NodeOutcomes,
) {
    for (i, result, took) in results {
        times.requests.push((request_kind(&phase[i]), took));
        let op = &phase[i];
        let deleting = matches!(
            op,
            Op::DelRoute(_) | Op::DelNeighbour { .. } | Op::DelFdb { .. } | Op::DelNexthop { .. }
        );
        let failed = matches!(&result, Err(e) if !(deleting && e.is_not_found()));
        nodes.record(op, failed);
        match result {
            Err(e) if !(deleting && e.is_not_found()) => {
                if deleting {
                    report.remove_errors += 1;
                } else {
                    report.add_errors += 1;
                }
                report.errors.push(e);
            }
            _ => match op {
                Op::SetRoute { .. } | Op::SetUnreachable { .. } => report.routes_set += 1,
                Op::DelRoute(_) => report.routes_deleted += 1,
                Op::SetNeighbour { .. } => report.neighbours_set += 1,
                Op::DelNeighbour { .. } => report.neighbours_deleted += 1,
                Op::SetFdb { .. } => report.fdb_set += 1,
                Op::DelFdb { .. } => report.fdb_deleted += 1,
                Op::SetNexthop { .. } => report.nexthops_set += 1,
                Op::DelNexthop { .. } => report.nexthops_deleted += 1,
            },
        }
    }
}

/// What the bench and the debug log call an op's request.
fn request_kind(op: &Op) -> &'static str {
    match op {
        Op::SetRoute { .. } | Op::SetUnreachable { .. } => "route add",
        Op::DelRoute(_) => "route del",
        Op::SetNeighbour { .. } => "neigh add",
        Op::DelNeighbour { .. } => "neigh del",
        Op::SetFdb { .. } => "fdb add",
        Op::DelFdb { .. } => "fdb del",
        Op::SetNexthop { .. } => "nexthop add (batched)",
        Op::DelNexthop { .. } => "nexthop del (batched)",
    }
}

/// Runs a netlink request under a deadline, naming what it was doing if it fails.
async fn timed<T>(
    limit: Duration,
    context: impl FnOnce() -> String,
    fut: impl Future<Output = Result<T, rtnetlink::Error>>,
) -> Result<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(DatapathError::Netlink {
            context: context(),
            source,
        }),
        Err(_) => Err(DatapathError::Timeout {
            context: context(),
            seconds: limit.as_secs(),
        }),
    }
}

/// The operator-facing name of an op, e.g. for "adding route 192.168.32.0/25 via 10.0.0.7: File exists".
pub fn describe(op: &Op) -> String {
    match op {
        Op::SetRoute {
            dst,
            via,
            nhid: Some(id),
        } => format!("setting route {dst} nhid {id} (node {via})"),
        Op::SetRoute { dst, via, .. } => format!("setting route {dst} via {via} onlink"),
        Op::SetUnreachable { dst } => format!("setting unreachable route {dst}"),
        Op::DelRoute(r) => format!(
            "deleting route {} ({:?}, metric {})",
            r.dst, r.kind, r.metric
        ),
        Op::SetNeighbour { ip, mac } => format!("setting permanent ARP entry {ip} lladdr {mac}"),
        Op::DelNeighbour { ip } => format!("deleting ARP entry {ip}"),
        Op::SetFdb { mac, dst } => format!("setting FDB entry {mac} dst {dst}"),
        Op::DelFdb { mac, dst } => format!("deleting FDB entry {mac} dst {dst:?}"),
        Op::SetNexthop { id, via } => format!("setting nexthop id {id} via {via} onlink"),
        Op::DelNexthop { id } => format!("deleting nexthop id {id}"),
    }
}

fn parse_link(msg: LinkMessage) -> LinkState {
    let mut state = LinkState {
        index: msg.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
        alias: None,
        kind: None,
        vxlan: None,
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => state.name = n,
            LinkAttribute::Address(a) => state.mac = Mac::from_slice(&a),
            LinkAttribute::Mtu(m) => state.mtu = m,
            LinkAttribute::IfAlias(a) => state.alias = Some(a),
            LinkAttribute::LinkInfo(infos) => {
                state.kind = infos.iter().find_map(|i| match i {
                    LinkInfo::Kind(k) => Some(k.to_string()),
                    _ => None,
                });
                let is_vxlan = infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Vxlan)));
                if is_vxlan {
                    let mut attrs = VxlanAttrs::default();
                    for info in infos {
                        if let LinkInfo::Data(InfoData::Vxlan(data)) = info {
                            for d in data {
                                match d {
                                    InfoVxlan::Id(v) => attrs.vni = Some(v),
                                    InfoVxlan::Port(p) => attrs.port = Some(p),
                                    InfoVxlan::Local(l) => attrs.local = Some(l),
                                    InfoVxlan::Learning(l) => attrs.learning = Some(l),
                                    _ => {}
                                }
                            }
                        }
                    }
                    state.vxlan = Some(attrs);
                }
            }
            _ => {}
        }
    }
    state
}

/// `ours`: the ids of our nexthop objects (a route by one of them is ours).
fn owned_route(msg: &RouteMessage, index: u32, ours: &BTreeSet<u32>) -> Option<KernelRoute> {
    if msg.header.address_family != AddressFamily::Inet {
        return None;
    }
    let mut table = u32::from(msg.header.table);
    let (mut dst, mut gateway, mut oif, mut metric, mut nhid) = (None, None, None, 0, None);
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(*a),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(*g),
            RouteAttribute::Oif(o) => oif = Some(*o),
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::NhId(id) => nhid = Some(*id),
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let protocol = u8::from(msg.header.protocol);
    let kind = match msg.header.kind {
        RouteType::Unicast if oif == Some(index) || nhid.is_some_and(|id| ours.contains(&id)) => {
            KernelRouteKind::Device {
                gateway,
                onlink: msg.header.flags.contains(RouteFlags::Onlink),
                universe: msg.header.scope == RouteScope::Universe,
                nhid,
            }
        }
        RouteType::Unreachable if protocol == ROUTE_PROTOCOL => KernelRouteKind::Unreachable,
        _ => return None,
    };
    let dst = Ipv4Net::new(
        dst.unwrap_or(Ipv4Addr::UNSPECIFIED),
        msg.header.destination_prefix_length,
    )
    .ok()?;
    Some(KernelRoute {
        dst,
        metric,
        protocol,
        kind,
    })
}

fn parse_neighbour(msg: &NeighbourMessage) -> Option<KernelNeighbour> {
    // NOARP entries are the kernel's own bookkeeping (multicast, broadcast), not ours.
    if msg.header.state == NeighbourState::Noarp {
        return None;
    }
    let mut ip = None;
    let mut mac = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => ip = Some(*a),
            NeighbourAttribute::LinkLayerAddress(l) => mac = Mac::from_slice(l),
            _ => {}
        }
    }
    Some(KernelNeighbour {
        ip: ip?,
        mac,
        permanent: msg.header.state == NeighbourState::Permanent,
    })
}

fn parse_fdb(msg: &NeighbourMessage) -> Option<KernelFdb> {
    let mut mac = None;
    let mut dst = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::LinkLayerAddress(l) => mac = Mac::from_slice(l),
            // In an AF_BRIDGE dump the kernel's address comes back untyped.
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => dst = Some(*a),
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                dst = <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from);
            }
            _ => {}
        }
    }
    Some(KernelFdb {
        mac: mac?,
        dst,
        permanent: msg.header.state == NeighbourState::Permanent,
    })
}

/// Link notifications (`RTNLGRP_LINK`): the device deleted, set down or changed by someone
/// else shows up here at once, so it is repaired without waiting for the next resync.
pub struct LinkEvents {
    rx: futures::channel::mpsc::UnboundedReceiver<(
        rtnetlink::packet_core::NetlinkMessage<rtnetlink::packet_route::RouteNetlinkMessage>,
        rtnetlink::sys::SocketAddr,
    )>,
    connection: JoinHandle<()>,
}

impl Drop for LinkEvents {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl LinkEvents {
    /// Subscribes; must be called inside a tokio runtime, in the datapath's namespace.
    pub fn open() -> Result<Self> {
        let (connection, _, rx) =
            rtnetlink::new_multicast_connection(&[rtnetlink::MulticastGroup::Link]).map_err(
                |source| DatapathError::Io {
                    context: "subscribing to link notifications".into(),
                    source,
                },
            )?;
        Ok(LinkEvents {
            rx,
            connection: tokio::spawn(connection),
        })
    }

    /// Waits until a notification concerns the link called `name` (or with index `index`),
    /// then swallows the rest of the burst (one `ip link` command sends several).
    /// `None` when the subscription ended.
    pub async fn next(&mut self, name: &str, index: u32) -> Option<()> {
        use rtnetlink::packet_core::NetlinkPayload;
        use rtnetlink::packet_route::RouteNetlinkMessage as M;
        loop {
            let (msg, _) = self.rx.next().await?;
            let link = match msg.payload {
                NetlinkPayload::InnerMessage(M::NewLink(l) | M::DelLink(l) | M::SetLink(l)) => l,
                _ => continue,
            };
            let named = link
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::IfName(n) if n == name));
            if link.header.index == index || named {
                break;
            }
        }
        let quiet = tokio::time::sleep(Duration::from_millis(20));
        tokio::pin!(quiet);
        loop {
            tokio::select! {
                _ = &mut quiet => return Some(()),
                m = self.rx.next() => if m.is_none() { return Some(()) },
            }
        }
    }
}
