//! The daemon's own nftables table, `ip hybrid_gateway`: the gateway is the one path between
//! the VPC and every hybrid pod, so it must not be an open router for whoever reaches the
//! VXLAN port.
//!
//! - VXLAN (UDP to the tunnel port) is accepted only from current hybrid node IPs;
//! - traffic leaving the tunnel is forwarded only from hybrid pod CIDRs or node IPs, and only
//!   to the VPC CIDRs;
//! - TCP SYNs in and out of the tunnel get their MSS clamped to the tunnel MTU, so large
//!   transfers never depend on PMTU discovery through security groups that drop ICMP;
//! - the tunnel probes ([`crate::probe`]) are allowed explicitly: echo replies from the pod
//!   CIDRs through the tunnel are accepted, and an echo request of this host to a pod CIDR
//!   that would leave by any other interface is dropped (a probe never tests, or loads, the
//!   VPC or the underlay instead of the tunnel).
//!
//! Stateless on purpose (no conntrack): during a failover, or with one gateway per AZ, the
//! two directions of a flow may cross different gateways. Base chains at priority -10 drop
//! before anyone else's filter runs; an accept elsewhere cannot undo a drop here, and nothing
//! outside this table is ever read or written.
//!
//! The table is built with the `nftables` crate's typed JSON schema and loaded by `nft -j -f`
//! in one transaction, so a change is atomic (no window without the filter). It is kept
//! across restarts like the device: a new process rewrites it in place, also atomically.
//! Reading uses `nft -j list table` parsed here: the crate's counter type is 32 bits wide.
//! A node event's change to the `nodes` set alone goes over nfnetlink
//! ([`super::nft_elements`]), one batch, without an `nft` process.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use nftables::expr::{
    Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, TcpOption,
};
use nftables::schema::{
    Chain, Counter, Element, FlushObject, NfCmd, NfListObject, NfObject, Nftables, Rule, Set,
    SetFlag, SetType, SetTypeValue, Table,
};
use nftables::stmt::{Mangle, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::error::{DatapathError, Result};
use super::nft_elements::ElementSocket;
use super::PassTimes;

pub const TABLE: &str = "hybrid_gateway";
/// Before the default filter priority (0), so our drops come first.
const PRIORITY: i32 = -10;
const UNDERLAY_CHAIN: &str = "underlay_in";
const TUNNEL_CHAIN: &str = "tunnel_forward";
const PROBE_CHAIN: &str = "probe_out";
/// Each chain with its hook, in the order they are created and checked.
const CHAINS: [(&str, NfHook, &str); 3] = [
    (UNDERLAY_CHAIN, NfHook::Input, "input"),
    (TUNNEL_CHAIN, NfHook::Forward, "forward"),
    (PROBE_CHAIN, NfHook::Output, "output"),
];
const NFT_TIMEOUT: Duration = Duration::from_secs(10);
/// IPv4 (20) + TCP (20) headers: the MSS that fills a tunnel packet.
const TCP_IP_HEADERS: u32 = 40;

/// The named counters, with what each one counts (exported as metrics).
pub const COUNTERS: [(&str, &str); 6] = [
    (
        "vxlan_not_from_node",
        "VXLAN packets dropped because their outer source is no current hybrid node",
    ),
    (
        "tunnel_source_not_allowed",
        "Packets from the tunnel dropped because their source is no hybrid pod CIDR or node IP",
    ),
    (
        "tunnel_destination_not_vpc",
        "Packets from the tunnel dropped because their destination is outside the VPC CIDRs",
    ),
    (
        "syn_mss_clamped",
        "TCP SYNs into or out of the tunnel whose MSS was clamped to the tunnel MTU",
    ),
    (
        "probe_replies",
        "Echo replies from hybrid pod CIDRs through the tunnel (tunnel probes), accepted",
    ),
    (
        "probe_not_via_tunnel",
        "Echo requests of this host to hybrid pod CIDRs dropped because they would not go through the tunnel",
    ),
];

/// What the table must say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterSpec {
    pub device: String,
    pub port: u16,
    pub tunnel_mtu: u32,
    pub nodes: BTreeSet<Ipv4Addr>,
    pub pod_cidrs: Vec<Ipv4Net>,
    pub vpc_cidrs: Vec<Ipv4Net>,
}

impl FilterSpec {
    fn mss(&self) -> u32 {
        self.tunnel_mtu.saturating_sub(TCP_IP_HEADERS)
    }

    /// Each rule as (chain, comment, statements). The comment carries every parameter of the
    /// rule, so comparing comments finds a rule that is missing, extra or out of date.
    fn rules(&self) -> Vec<(&'static str, String, Vec<Statement<'static>>)> {
        let dev = self.device.clone();
        let mss = self.mss();
        let clamp = |dir: MetaKey, name: &str| {
            (
                TUNNEL_CHAIN,
                format!("{name} dev={dev} mss={mss}"),
                vec![
                    eq(meta(dir), string(&dev)),
                    syn(),
                    Statement::Counter(nftables::stmt::Counter::Named("syn_mss_clamped".into())),
                    Statement::Mangle(Mangle {
                        key: Expression::Named(NamedExpression::TcpOption(TcpOption {
                            name: "maxseg".into(),
                            field: Some("size".into()),
                        })),
                        value: Expression::Number(mss),
                    }),
                ],
            )
        };
        vec![
            (
                UNDERLAY_CHAIN,
                format!("vxlan-from-nodes-only port={}", self.port),
                vec![
                    eq(
                        payload("udp", "dport"),
                        Expression::Number(self.port.into()),
                    ),
                    ne(payload("ip", "saddr"), string("@nodes")),
                    counter("vxlan_not_from_node"),
                    Statement::Drop(None),
                ],
            ),
            (
                UNDERLAY_CHAIN,
                format!("probe-replies-through-tunnel dev={dev}"),
                vec![
                    eq(meta(MetaKey::Iifname), string(&dev)),
                    eq(payload("icmp", "type"), string("echo-reply")),
                    eq(payload("ip", "saddr"), string("@pod_cidrs")),
                    counter("probe_replies"),
                    Statement::Accept(None),
                ],
            ),
            (
                PROBE_CHAIN,
                format!("probes-only-through-tunnel dev={dev}"),
                vec![
                    eq(payload("icmp", "type"), string("echo-request")),
                    eq(payload("ip", "daddr"), string("@pod_cidrs")),
                    ne(meta(MetaKey::Oifname), string(&dev)),
                    counter("probe_not_via_tunnel"),
                    Statement::Drop(None),
                ],
            ),
            clamp(MetaKey::Iifname, "mss-clamp-from-tunnel"),
            clamp(MetaKey::Oifname, "mss-clamp-into-tunnel"),
            (
                TUNNEL_CHAIN,
                format!("tunnel-source-pods-or-nodes dev={dev}"),
                vec![
                    eq(meta(MetaKey::Iifname), string(&dev)),
                    ne(payload("ip", "saddr"), string("@pod_cidrs")),
                    ne(payload("ip", "saddr"), string("@nodes")),
                    counter("tunnel_source_not_allowed"),
                    Statement::Drop(None),
                ],
            ),
            (
                TUNNEL_CHAIN,
                format!("tunnel-destination-vpc-only dev={dev}"),
                vec![
                    eq(meta(MetaKey::Iifname), string(&dev)),
                    ne(payload("ip", "daddr"), string("@vpc_cidrs")),
                    counter("tunnel_destination_not_vpc"),
                    Statement::Drop(None),
                ],
            ),
        ]
    }

    fn set_contents(&self) -> BTreeMap<&'static str, BTreeSet<Ipv4Net>> {
        BTreeMap::from([
            (
                "nodes",
                self.nodes.iter().map(|ip| Ipv4Net::from(*ip)).collect(),
            ),
            ("pod_cidrs", self.pod_cidrs.iter().copied().collect()),
            ("vpc_cidrs", self.vpc_cidrs.iter().copied().collect()),
        ])
    }
}

fn string(s: &str) -> Expression<'static> {
    Expression::String(s.to_string().into())
}
fn payload(protocol: &str, field: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.to_string().into(),
            field: field.to_string().into(),
        },
    )))
}
fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}
fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}
fn ne(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::NEQ,
    })
}
fn counter(name: &str) -> Statement<'static> {
    Statement::Counter(nftables::stmt::Counter::Named(name.to_string().into()))
}
/// `tcp flags & syn == syn`: SYN and SYN-ACK, both carry the MSS option.
fn syn() -> Statement<'static> {
    Statement::Match(Match {
        left: Expression::BinaryOperation(Box::new(nftables::expr::BinaryOperation::AND(
            payload("tcp", "flags"),
            string("syn"),
        ))),
        right: string("syn"),
        op: Operator::EQ,
    })
}

fn table() -> Table<'static> {
    Table {
        family: NfFamily::IP,
        name: TABLE.into(),
        ..Table::default()
    }
}

/// One transaction that makes the table exactly `spec`, whatever was there: objects are
/// added if missing (counters keep their values), rules and set elements replaced whole.
pub fn transaction(spec: &FilterSpec) -> Nftables<'static> {
    let mut cmds: Vec<NfObject<'static>> = Vec::new();
    let add = |o: NfListObject<'static>| NfObject::CmdObject(NfCmd::Add(o));
    cmds.push(add(NfListObject::Table(table())));
    for (name, _) in COUNTERS {
        cmds.push(add(NfListObject::Counter(Counter {
            family: NfFamily::IP,
            table: TABLE.into(),
            name: name.into(),
            ..Counter::default()
        })));
    }
    for (name, interval) in [("nodes", false), ("pod_cidrs", true), ("vpc_cidrs", true)] {
        cmds.push(add(NfListObject::Set(Box::new(Set {
            family: NfFamily::IP,
            table: TABLE.into(),
            name: name.into(),
            set_type: SetTypeValue::Single(SetType::Ipv4Addr),
            flags: interval.then(|| [SetFlag::Interval].into_iter().collect()),
            ..Set::default()
        }))));
    }
    for (name, hook, _) in CHAINS {
        cmds.push(add(NfListObject::Chain(Chain {
            family: NfFamily::IP,
            table: TABLE.into(),
            name: name.into(),
            _type: Some(NfChainType::Filter),
            hook: Some(hook),
            prio: Some(PRIORITY),
            policy: Some(NfChainPolicy::Accept),
            ..Chain::default()
        })));
    }
    // Rules and elements are replaced whole; `flush table` leaves set elements in place.
    cmds.push(NfObject::CmdObject(NfCmd::Flush(FlushObject::Table(
        table(),
    ))));
    for (name, elems) in spec.set_contents() {
        cmds.push(NfObject::CmdObject(NfCmd::Flush(FlushObject::Set(
            Box::new(Set {
                family: NfFamily::IP,
                table: TABLE.into(),
                name: name.into(),
                set_type: SetTypeValue::Single(SetType::Ipv4Addr),
                ..Set::default()
            }),
        ))));
        if elems.is_empty() {
            continue;
        }
        let elem: Vec<Expression<'static>> = elems
            .iter()
            .map(|net| {
                if net.prefix_len() == 32 {
                    string(&net.addr().to_string())
                } else {
                    Expression::Named(NamedExpression::Prefix(Prefix {
                        addr: Box::new(string(&net.network().to_string())),
                        len: net.prefix_len().into(),
                    }))
                }
            })
            .collect();
        cmds.push(add(NfListObject::Element(Element {
            family: NfFamily::IP,
            table: TABLE.into(),
            name: name.into(),
            elem: elem.into(),
        })));
    }
    for (chain, comment, expr) in spec.rules() {
        cmds.push(add(NfListObject::Rule(Rule {
            family: NfFamily::IP,
            table: TABLE.into(),
            chain: chain.into(),
            expr: expr.into(),
            comment: Some(comment.into()),
            ..Rule::default()
        })));
    }
    Nftables {
        objects: cmds.into(),
    }
}

/// The table as the kernel holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterState {
    /// Chain → (hook, priority, policy, rule comments in order).
    pub chains: BTreeMap<String, ChainState>,
    pub sets: BTreeMap<String, BTreeSet<Ipv4Net>>,
    /// Counter → (packets, bytes).
    pub counters: BTreeMap<String, (u64, u64)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainState {
    pub hook: Option<String>,
    pub prio: Option<i64>,
    pub policy: Option<String>,
    pub rules: Vec<String>,
}

impl FilterState {
    /// Parses `nft -j list table ip hybrid_gateway`.
    pub fn parse(json: &str) -> Result<Self> {
        let doc: Value = serde_json::from_str(json)
            .map_err(|e| DatapathError::Invalid(format!("nft printed JSON we cannot read: {e}")))?;
        let mut state = FilterState::default();
        let objects = doc
            .get("nftables")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        for o in objects {
            if let Some(c) = o.get("chain") {
                let Some(name) = text(c, "name") else {
                    continue;
                };
                let entry = state.chains.entry(name).or_default();
                entry.hook = text(c, "hook");
                entry.prio = c.get("prio").and_then(Value::as_i64);
                entry.policy = text(c, "policy");
            } else if let Some(r) = o.get("rule") {
                let Some(chain) = text(r, "chain") else {
                    continue;
                };
                let comment = text(r, "comment").unwrap_or_default();
                state.chains.entry(chain).or_default().rules.push(comment);
            } else if let Some(s) = o.get("set") {
                let Some(name) = text(s, "name") else {
                    continue;
                };
                let elems = s
                    .get("elem")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(parse_elem).collect())
                    .unwrap_or_default();
                state.sets.insert(name, elems);
            } else if let Some(c) = o.get("counter") {
                let Some(name) = text(c, "name") else {
                    continue;
                };
                let n = |k: &str| c.get(k).and_then(Value::as_u64).unwrap_or(0);
                state.counters.insert(name, (n("packets"), n("bytes")));
            }
        }
        Ok(state)
    }

    /// What differs from `spec`, one line each; empty when the table is exactly right.
    /// The `nodes` set is left out: it changes with the node set, which is no drift.
    pub fn drift(&self, spec: &FilterSpec) -> Vec<String> {
        let mut wrong = Vec::new();
        for (name, _, hook) in CHAINS {
            let want: Vec<String> = spec
                .rules()
                .into_iter()
                .filter(|(c, _, _)| *c == name)
                .map(|(_, comment, _)| comment)
                .collect();
            match self.chains.get(name) {
                None => wrong.push(format!("chain {name} is missing")),
                Some(c) => {
                    if c.hook.as_deref() != Some(hook)
                        || c.prio != Some(i64::from(PRIORITY))
                        || c.policy.as_deref() != Some("accept")
                    {
                        wrong.push(format!(
                            "chain {name} is hooked as {:?} priority {:?} policy {:?}",
                            c.hook, c.prio, c.policy
                        ));
                    }
                    if c.rules != want {
                        wrong.push(format!(
                            "chain {name} has rules {:?}, want {want:?}",
                            c.rules
                        ));
                    }
                }
            }
        }
        for extra in self
            .chains
            .keys()
            .filter(|k| !CHAINS.iter().any(|(c, _, _)| c == k))
        {
            wrong.push(format!("unexpected chain {extra}"));
        }
        for (name, want) in spec.set_contents() {
            match self.sets.get(name) {
                None => wrong.push(format!("set {name} is missing")),
                Some(have) if name != "nodes" && *have != want => {
                    wrong.push(format!("set {name} holds {have:?}, want {want:?}"))
                }
                Some(_) => {}
            }
        }
        for (name, _) in COUNTERS {
            if !self.counters.contains_key(name) {
                wrong.push(format!("counter {name} is missing"));
            }
        }
        wrong
    }

    /// Whether the `nodes` set holds exactly `spec`'s nodes.
    pub fn nodes_match(&self, spec: &FilterSpec) -> bool {
        self.sets.get("nodes") == spec.set_contents().get("nodes")
    }
}

/// A set element as nft prints it: an address, a prefix or a range.
fn parse_elem(v: &Value) -> Option<Ipv4Net> {
    if let Some(s) = v.as_str() {
        return s.parse::<Ipv4Addr>().ok().map(Ipv4Net::from);
    }
    if let Some(p) = v.get("prefix") {
        let addr: Ipv4Addr = p.get("addr")?.as_str()?.parse().ok()?;
        let len = u8::try_from(p.get("len")?.as_u64()?).ok()?;
        return Ipv4Net::new(addr, len).ok();
    }
    // A range nft could not print as a prefix: keep its start, so it never compares equal.
    let r = v.get("range")?.as_array()?;
    r.first()?
        .as_str()?
        .parse::<Ipv4Addr>()
        .ok()
        .map(Ipv4Net::from)
}

/// Runs `nft` with `args` (and `stdin`), under a deadline.
async fn nft(args: &[&str], stdin: Option<String>, context: &str) -> Result<String> {
    let mut cmd = tokio::process::Command::new("nft");
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let io = |source: std::io::Error| DatapathError::Io {
        context: if source.kind() == std::io::ErrorKind::NotFound {
            format!("{context}: the nft program is missing (package nftables); install it or set [datapath] filter = false")
        } else {
            context.to_string()
        },
        source,
    };
    let mut child = cmd.spawn().map_err(io)?;
    let run = async {
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes()).await.map_err(io)?;
            // Closing stdin tells nft the transaction is complete.
            drop(pipe);
        }
        child.wait_with_output().await.map_err(io)
    };
    let out =
        tokio::time::timeout(NFT_TIMEOUT, run)
            .await
            .map_err(|_| DatapathError::Timeout {
                context: context.to_string(),
                seconds: NFT_TIMEOUT.as_secs(),
            })??;
    if !out.status.success() {
        return Err(DatapathError::Nft {
            context: context.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            missing: out.status.code() == Some(1)
                && String::from_utf8_lossy(&out.stderr).contains("No such file or directory"),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Loads `spec` in one transaction.
pub async fn apply(spec: &FilterSpec) -> Result<()> {
    let json = serde_json::to_string(&transaction(spec))
        .map_err(|e| DatapathError::Invalid(format!("serialising the nftables table: {e}")))?;
    nft(
        &["-j", "-f", "-"],
        Some(json),
        &format!("loading nftables table ip {TABLE}"),
    )
    .await
    .map(drop)
}

/// Adds `added` to and removes `removed` from the `nodes` set in one transaction, over
/// `socket` (opened when `None`; dropped after any error, so a late answer to a failed
/// batch never meets the next one). Fails, changing nothing, when the set is not as
/// last written.
pub async fn update_nodes(
    socket: &mut Option<ElementSocket>,
    added: &[Ipv4Addr],
    removed: &[Ipv4Addr],
    times: &mut PassTimes,
) -> Result<()> {
    if added.is_empty() && removed.is_empty() {
        return Ok(());
    }
    // Over nfnetlink, not through `nft`: a node event should not cost a process start.
    let context = || format!("updating the node set of nftables table ip {TABLE}");
    let started = Instant::now();
    let s = match socket {
        Some(s) => s,
        None => socket.insert(ElementSocket::open().map_err(|source| DatapathError::Io {
            context: context(),
            source,
        })?),
    };
    let r = s.update(TABLE, "nodes", added, removed).await;
    times.add("filter: element batch", started.elapsed());
    r.map_err(|source| {
        *socket = None;
        DatapathError::Io {
            context: context(),
            source,
        }
    })
}

/// The table as it stands, or `None` if there is none.
pub async fn read() -> Result<Option<FilterState>> {
    match nft(
        &["-j", "list", "table", "ip", TABLE],
        None,
        &format!("listing nftables table ip {TABLE}"),
    )
    .await
    {
        Ok(json) => FilterState::parse(&json).map(Some),
        Err(DatapathError::Nft { missing: true, .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes the table (purge, or `[datapath] filter = false`); absent is fine.
pub async fn delete() -> Result<()> {
    match nft(
        &["delete", "table", "ip", TABLE],
        None,
        &format!("deleting nftables table ip {TABLE}"),
    )
    .await
    {
        Err(DatapathError::Nft { missing: true, .. }) | Ok(_) => Ok(()),
        // Without nft there can be no table of ours either.
        Err(DatapathError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> FilterSpec {
        FilterSpec {
            device: "hybrid_vxlan0".into(),
            port: 8472,
            tunnel_mtu: 1450,
            nodes: ["10.80.0.2".parse().unwrap(), "10.80.0.3".parse().unwrap()].into(),
            pod_cidrs: vec!["192.168.32.0/23".parse().unwrap()],
            vpc_cidrs: vec!["10.250.0.0/16".parse().unwrap()],
        }
    }

    #[test]
    fn transaction_is_the_json_nft_expects() {
        let json = serde_json::to_value(transaction(&spec())).unwrap();
        let cmds = json["nftables"].as_array().unwrap();
        // Objects first, then the flushes, then rules and elements: one atomic replacement.
        let kinds: Vec<String> = cmds
            .iter()
            .map(|c| {
                let (verb, obj) = c.as_object().unwrap().iter().next().unwrap();
                format!("{verb} {}", obj.as_object().unwrap().keys().next().unwrap())
            })
            .collect();
        let first_flush = kinds.iter().position(|k| k == "flush table").unwrap();
        assert!(kinds[..first_flush]
            .iter()
            .all(|k| !k.ends_with("rule") && !k.ends_with("element")));
        assert_eq!(kinds.iter().filter(|k| *k == "flush set").count(), 3);
        assert_eq!(kinds.iter().filter(|k| *k == "add rule").count(), 7);
        let text = json.to_string();
        for want in [
            r#"{"mangle":{"key":{"tcp option":{"field":"size","name":"maxseg"}},"value":1410}}"#,
            r#""right":"@nodes""#,
            r#"{"prefix":{"addr":"192.168.32.0","len":23}}"#,
            r#""hook":"forward""#,
            r#""prio":-10"#,
            r#""hook":"output""#,
            r#"{"match":{"left":{"payload":{"field":"type","protocol":"icmp"}},"op":"==","right":"echo-reply"}}"#,
        ] {
            assert!(text.contains(want), "{want} not in {text}");
        }
    }

    #[test]
    fn drift_names_what_is_wrong_and_ignores_the_node_set() {
        let s = spec();
        let good = FilterState {
            chains: CHAINS
                .into_iter()
                .map(|(name, _, hook)| {
                    (
                        name.to_string(),
                        ChainState {
                            hook: Some(hook.into()),
                            prio: Some(-10),
                            policy: Some("accept".into()),
                            rules: s
                                .rules()
                                .into_iter()
                                .filter(|(c, _, _)| *c == name)
                                .map(|(_, c, _)| c)
                                .collect(),
                        },
                    )
                })
                .collect(),
            sets: s
                .set_contents()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            counters: COUNTERS
                .iter()
                .map(|(n, _)| (n.to_string(), (0, 0)))
                .collect(),
        };
        assert_eq!(good.drift(&s), Vec::<String>::new());
        assert!(good.nodes_match(&s));

        let mut other_nodes = s.clone();
        other_nodes.nodes.insert("10.80.0.9".parse().unwrap());
        assert!(good.drift(&other_nodes).is_empty());
        assert!(!good.nodes_match(&other_nodes));

        let mut new_mtu = s.clone();
        new_mtu.tunnel_mtu = 1350;
        assert!(
            good.drift(&new_mtu)[0].contains("mss=1310"),
            "{:?}",
            good.drift(&new_mtu)
        );

        let mut flushed = good.clone();
        flushed.chains.get_mut(TUNNEL_CHAIN).unwrap().rules.clear();
        flushed.counters.remove("syn_mss_clamped");
        flushed.sets.get_mut("vpc_cidrs").unwrap().clear();
        let d = flushed.drift(&s);
        assert_eq!(d.len(), 3, "{d:?}");
    }

    #[test]
    fn listed_elements_and_counters_parse() {
        let json = r#"{"nftables":[{"metainfo":{"version":"1.0.6"}},
            {"counter":{"family":"ip","name":"vxlan_not_from_node","table":"hybrid_gateway","packets":5000000000,"bytes":7}},
            {"set":{"family":"ip","name":"sources","table":"hybrid_gateway","type":"ipv4_addr","elem":["10.99.0.2",{"prefix":{"addr":"192.168.32.0","len":23}}]}},
            {"chain":{"family":"ip","table":"hybrid_gateway","name":"underlay_in","type":"filter","hook":"input","prio":-10,"policy":"accept"}},
            {"rule":{"family":"ip","table":"hybrid_gateway","chain":"underlay_in","comment":"x","expr":[]}}]}"#;
        let s = FilterState::parse(json).unwrap();
        assert_eq!(s.counters["vxlan_not_from_node"], (5_000_000_000, 7));
        assert_eq!(
            s.sets["sources"],
            [
                "10.99.0.2/32".parse().unwrap(),
                "192.168.32.0/23".parse().unwrap()
            ]
            .into()
        );
        assert_eq!(s.chains["underlay_in"].rules, vec!["x".to_string()]);
        assert_eq!(s.chains["underlay_in"].prio, Some(-10));
    }
}
