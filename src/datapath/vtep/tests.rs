use super::*;

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}
fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}
fn node(name: &str, addr: &str, cidrs: &[&str]) -> HybridNode {
    HybridNode {
        name: name.into(),
        ip: ip(addr),
        pod_cidrs: cidrs.iter().map(|c| net(c)).collect(),
        probe_ip: None,
    }
}
fn pods() -> Vec<Ipv4Net> {
    vec![net("192.168.32.0/23")]
}
fn ours(dst: &str, via: &str) -> KernelRoute {
    KernelRoute {
        dst: net(dst),
        metric: 0,
        protocol: ROUTE_PROTOCOL,
        kind: KernelRouteKind::Device {
            gateway: Some(ip(via)),
            onlink: true,
            universe: true,
            nhid: None,
        },
    }
}
fn unreachable(dst: &str) -> KernelRoute {
    KernelRoute {
        dst: net(dst),
        metric: UNREACHABLE_METRIC,
        protocol: ROUTE_PROTOCOL,
        kind: KernelRouteKind::Unreachable,
    }
}
fn neigh(addr: &str) -> KernelNeighbour {
    KernelNeighbour {
        ip: ip(addr),
        mac: Some(Mac::for_node(ip(addr))),
        permanent: true,
    }
}
fn fdb(addr: &str) -> KernelFdb {
    KernelFdb {
        mac: Mac::for_node(ip(addr)),
        dst: Some(ip(addr)),
        permanent: true,
    }
}

/// The kernel state that exactly satisfies `desired`, with gateway routes.
fn converged(desired: &Desired) -> Actual {
    converged_with(desired, &RouteStyle::gateways())
}

/// The kernel state that exactly satisfies `desired` when routes are written as `style`
/// says.
fn converged_with(desired: &Desired, style: &RouteStyle) -> Actual {
    Actual {
        routes: desired
            .routes
            .iter()
            .map(|(d, v)| node_route(*d, *v, style))
            .chain(
                desired
                    .unreachable
                    .iter()
                    .map(|d| unreachable(&d.to_string())),
            )
            .collect(),
        neighbours: desired
            .neighbours
            .keys()
            .map(|i| neigh(&i.to_string()))
            .collect(),
        fdb: desired.fdb.values().map(|i| fdb(&i.to_string())).collect(),
        nexthops: desired
            .neighbours
            .keys()
            .filter_map(|ip| style.nhid(*ip).map(|id| our_nexthop(id, *ip)))
            .collect(),
        style: style.clone(),
    }
}

fn our_nexthop(id: u32, via: Ipv4Addr) -> KernelNexthop {
    KernelNexthop {
        id,
        gateway: Some(via),
        on_device: true,
        onlink: true,
        protocol: ROUTE_PROTOCOL,
    }
}

/// Nexthop objects, with node 10.80.0.3's id held by someone else's.
fn nexthops_with_a_foreign_id() -> RouteStyle {
    RouteStyle {
        nexthops: true,
        foreign: [nexthop_id(ip("10.80.0.3"))].into(),
    }
}

#[test]
fn empty_kernel_gets_everything_in_phase_order() {
    let (d, rej) = Desired::build(
        &[node(
            "n1",
            "10.99.0.2",
            &["192.168.32.0/25", "192.168.33.0/25"],
        )],
        &pods(),
    );
    assert!(rej.is_empty());
    let plan = diff(&d, &Actual::default());
    assert!(plan.phases[DEL_ROUTES].is_empty());
    assert_eq!(
        plan.phases[SET_L2],
        vec![
            Op::SetNeighbour {
                ip: ip("10.99.0.2"),
                mac: Mac::for_node(ip("10.99.0.2"))
            },
            Op::SetFdb {
                mac: Mac::for_node(ip("10.99.0.2")),
                dst: ip("10.99.0.2")
            },
        ]
    );
    assert_eq!(
        plan.phases[SET_ROUTES],
        vec![
            Op::SetRoute {
                dst: net("192.168.32.0/25"),
                via: ip("10.99.0.2"),
                nhid: None
            },
            Op::SetRoute {
                dst: net("192.168.33.0/25"),
                via: ip("10.99.0.2"),
                nhid: None
            },
            Op::SetUnreachable {
                dst: net("192.168.32.0/23")
            },
        ]
    );
    assert!(plan.phases[DEL_L2].is_empty());
}

#[test]
fn converged_kernel_needs_nothing() {
    let nodes: Vec<_> = (0..50)
        .map(|i| {
            node(
                &format!("n{i}"),
                &format!("10.99.1.{i}"),
                &[&format!("192.168.32.{}/30", i * 4)],
            )
        })
        .collect();
    let (d, rej) = Desired::build(&nodes, &pods());
    assert!(rej.is_empty());
    assert!(diff(&d, &converged(&d)).is_empty());
}

#[test]
fn node_ip_change_replaces_route_and_moves_l2() {
    let (old, _) = Desired::build(&[node("n1", "10.99.0.2", &["192.168.32.0/25"])], &pods());
    let (new, _) = Desired::build(&[node("n1", "10.99.0.3", &["192.168.32.0/25"])], &pods());
    let plan = diff(&new, &converged(&old));
    assert!(plan.phases[DEL_ROUTES].is_empty());
    assert_eq!(
        plan.phases[SET_ROUTES],
        vec![Op::SetRoute {
            dst: net("192.168.32.0/25"),
            via: ip("10.99.0.3"),
            nhid: None
        }]
    );
    assert_eq!(
        plan.phases[SET_L2],
        vec![
            Op::SetNeighbour {
                ip: ip("10.99.0.3"),
                mac: Mac::for_node(ip("10.99.0.3"))
            },
            Op::SetFdb {
                mac: Mac::for_node(ip("10.99.0.3")),
                dst: ip("10.99.0.3")
            },
        ]
    );
    assert_eq!(
        plan.phases[DEL_L2],
        vec![
            Op::DelNeighbour {
                ip: ip("10.99.0.2")
            },
            Op::DelFdb {
                mac: Mac::for_node(ip("10.99.0.2")),
                dst: Some(ip("10.99.0.2"))
            },
        ]
    );
}

#[test]
fn cidr_change_removes_old_route() {
    let (old, _) = Desired::build(&[node("n1", "10.99.0.2", &["192.168.32.0/25"])], &pods());
    let (new, _) = Desired::build(&[node("n1", "10.99.0.2", &["192.168.32.128/25"])], &pods());
    let plan = diff(&new, &converged(&old));
    assert_eq!(
        plan.phases[DEL_ROUTES],
        vec![Op::DelRoute(ours("192.168.32.0/25", "10.99.0.2"))]
    );
    assert_eq!(
        plan.phases[SET_ROUTES],
        vec![Op::SetRoute {
            dst: net("192.168.32.128/25"),
            via: ip("10.99.0.2"),
            nhid: None
        }]
    );
    assert_eq!(plan.len(), 2);
}

#[test]
fn deleted_node_leaves_nothing() {
    let (old, _) = Desired::build(
        &[
            node("n1", "10.99.0.2", &["192.168.32.0/25"]),
            node("n2", "10.99.0.3", &["192.168.33.0/25"]),
        ],
        &pods(),
    );
    let (new, _) = Desired::build(&[node("n2", "10.99.0.3", &["192.168.33.0/25"])], &pods());
    let plan = diff(&new, &converged(&old));
    assert_eq!(
        plan.phases[DEL_ROUTES],
        vec![Op::DelRoute(ours("192.168.32.0/25", "10.99.0.2"))]
    );
    assert_eq!(plan.phases[DEL_L2].len(), 2);
    assert!(plan.phases[SET_L2].is_empty() && plan.phases[SET_ROUTES].is_empty());
}

#[test]
fn wrong_attributes_are_replaced_not_duplicated() {
    let (d, _) = Desired::build(&[node("n1", "10.99.0.2", &["192.168.32.0/25"])], &pods());
    let mut actual = converged(&d);
    // Written by someone else (e.g. the reference gateway, protocol static) and not onlink.
    actual.routes[0] = KernelRoute {
        protocol: 4,
        kind: KernelRouteKind::Device {
            gateway: Some(ip("10.99.0.2")),
            onlink: false,
            universe: true,
            nhid: None,
        },
        ..actual.routes[0].clone()
    };
    actual.neighbours[0].permanent = false;
    actual.fdb[0].permanent = false;
    let plan = diff(&d, &actual);
    assert_eq!(
        plan.phases[SET_ROUTES],
        vec![Op::SetRoute {
            dst: net("192.168.32.0/25"),
            via: ip("10.99.0.2"),
            nhid: None
        }]
    );
    assert_eq!(plan.phases[SET_L2].len(), 2);
    assert!(plan.phases[DEL_ROUTES].is_empty() && plan.phases[DEL_L2].is_empty());
}

#[test]
fn stale_entries_are_removed() {
    let (d, _) = Desired::build(&[node("n1", "10.99.0.2", &["192.168.32.0/25"])], &pods());
    let mut actual = converged(&d);
    let stale_metric = KernelRoute {
        metric: 100,
        ..ours("192.168.32.0/25", "10.99.0.9")
    };
    actual.routes.push(stale_metric.clone());
    actual.routes.push(ours("10.0.0.0/8", "10.99.0.9"));
    actual.routes.push(unreachable("192.168.40.0/24"));
    actual.neighbours.push(KernelNeighbour {
        ip: ip("10.99.0.9"),
        mac: None,
        permanent: false,
    });
    // A MAC with two destinations, one of them wrong; and a flood entry we never asked for.
    actual.fdb.push(KernelFdb {
        mac: Mac::for_node(ip("10.99.0.2")),
        dst: Some(ip("10.99.0.77")),
        permanent: true,
    });
    actual.fdb.push(KernelFdb {
        mac: Mac([0; 6]),
        dst: Some(ip("10.99.0.88")),
        permanent: true,
    });
    let plan = diff(&d, &actual);
    assert_eq!(
        plan.phases[DEL_ROUTES],
        vec![
            Op::DelRoute(stale_metric),
            Op::DelRoute(ours("10.0.0.0/8", "10.99.0.9")),
            Op::DelRoute(unreachable("192.168.40.0/24"))
        ]
    );
    assert_eq!(
        plan.phases[SET_L2],
        vec![Op::SetFdb {
            mac: Mac::for_node(ip("10.99.0.2")),
            dst: ip("10.99.0.2")
        }]
    );
    assert_eq!(
        plan.phases[DEL_L2],
        vec![
            Op::DelNeighbour {
                ip: ip("10.99.0.9")
            },
            Op::DelFdb {
                mac: Mac([0; 6]),
                dst: Some(ip("10.99.0.88"))
            },
            Op::DelFdb {
                mac: Mac::for_node(ip("10.99.0.2")),
                dst: Some(ip("10.99.0.77"))
            },
        ]
    );
    assert!(plan.phases[SET_ROUTES].is_empty());
}

#[test]
fn catch_all_change_swaps_unreachable_routes() {
    let (old, _) = Desired::build(&[], &pods());
    let (new, _) = Desired::build(&[], &[net("192.168.32.0/23"), net("192.168.40.0/22")]);
    let plan = diff(&new, &converged(&old));
    assert_eq!(
        plan.ops().collect::<Vec<_>>(),
        vec![&Op::SetUnreachable {
            dst: net("192.168.40.0/22")
        }]
    );
    let plan = diff(&old, &converged(&new));
    assert_eq!(
        plan.ops().collect::<Vec<_>>(),
        vec![&Op::DelRoute(unreachable("192.168.40.0/22"))]
    );
}

#[test]
fn conflicting_nodes_are_rejected_whole_and_first_wins() {
    let nodes = [
        node("a", "10.99.0.2", &["192.168.32.0/24"]),
        node("b", "10.99.0.2", &["192.168.33.0/25"]), // same IP as a
        node("c", "10.99.0.4", &["192.168.33.0/25", "192.168.32.128/25"]), // subnet of a's
        node("d", "10.99.0.5", &["192.168.33.0/24"]), // ok
        node("e", "10.99.0.6", &["10.250.0.0/24"]),   // outside
        node("f", "10.99.0.7", &["192.168.32.0/23"]), // supernet of a's and d's
        node("g", "10.99.0.8", &["192.168.33.0/24", "192.168.33.0/24"]), // duplicate of d
        node("h", "10.99.0.9", &[]),                  // no CIDR: L2 only
    ];
    let (d, rej) = Desired::build(&nodes, &pods());
    let rejected: Vec<&str> = rej.iter().map(Rejection::node).collect();
    assert_eq!(rejected, vec!["b", "c", "e", "f", "g"]);
    assert_eq!(d.routes.len(), 2);
    assert_eq!(d.routes[&net("192.168.32.0/24")], ip("10.99.0.2"));
    assert_eq!(d.routes[&net("192.168.33.0/24")], ip("10.99.0.5"));
    assert_eq!(d.neighbours.len(), 3);
    assert!(
        rej[1]
            .to_string()
            .contains("overlaps 192.168.32.0/24 of node a"),
        "{}",
        rej[1]
    );
}

#[test]
fn node_listing_one_cidr_twice_is_fine() {
    let (d, rej) = Desired::build(
        &[node(
            "a",
            "10.99.0.2",
            &["192.168.32.0/24", "192.168.32.0/24"],
        )],
        &pods(),
    );
    assert!(rej.is_empty(), "{rej:?}");
    assert_eq!(d.routes.len(), 1);
}

#[test]
fn own_cidrs_overlapping_each_other_reject_the_node() {
    let (_, rej) = Desired::build(
        &[node(
            "a",
            "10.99.0.2",
            &["192.168.32.0/24", "192.168.32.0/25"],
        )],
        &pods(),
    );
    assert_eq!(rej.len(), 1);
}

/// The gateway of the examples: node_ip 10.250.3.7 in VPC 10.250.0.0/16, hybrid nodes in
/// 10.80.0.0/16 on premises, pods in 192.168.32.0/23.
fn policy() -> NodePolicy {
    NodePolicy {
        pod_cidrs: pods(),
        vpc_cidrs: vec![net("10.250.0.0/16")],
        remote_node_cidrs: vec![net("10.80.0.0/16")],
        own_addresses: [ip("10.250.3.7"), ip("127.0.0.1"), ip("172.17.0.1")].into(),
        max_pod_cidrs: MAX_POD_CIDRS_PER_NODE,
    }
}

#[test]
fn bad_node_addresses_are_rejected_with_their_reason() {
    let cases = [
        ("0.0.0.0", "unspecified_address"),
        ("0.1.2.3", "unspecified_address"),
        ("127.0.0.1", "loopback_address"),
        ("127.5.5.5", "loopback_address"),
        ("224.0.0.5", "multicast_address"),
        ("239.1.1.1", "multicast_address"),
        ("255.255.255.255", "broadcast_address"),
        ("240.0.0.1", "reserved_address"),
        ("169.254.169.254", "link_local_address"),
        ("10.250.3.7", "gateway_address"),
        // an address of this host outside the VPC (a container bridge) is also refused
        ("172.17.0.1", "gateway_address"),
        ("10.250.9.9", "address_inside_vpc_cidrs"),
        ("192.168.32.77", "address_inside_hybrid_pod_cidrs"),
        ("10.81.0.2", "address_outside_remote_node_cidrs"),
    ];
    let p = policy();
    let mut nodes: Vec<HybridNode> = cases
        .iter()
        .enumerate()
        .map(|(i, (addr, _))| node(&format!("bad{i}"), addr, &[]))
        .collect();
    nodes.push(node("good", "10.80.0.2", &["192.168.32.0/25"]));
    let (d, rej) = Desired::build_with(&nodes, &p);
    let reasons: Vec<&str> = rej.iter().map(Rejection::reason).collect();
    let want: Vec<&str> = cases.iter().map(|(_, r)| *r).collect();
    assert_eq!(reasons, want);
    for r in &rej {
        assert!(Rejection::REASONS.contains(&r.reason()), "{}", r.reason());
    }
    // Only the good node reached the desired state.
    assert_eq!(
        d.neighbours.keys().collect::<Vec<_>>(),
        vec![&ip("10.80.0.2")]
    );
    assert_eq!(d.fdb.len(), 1);
    assert_eq!(d.routes.len(), 1);
    assert_eq!(
        rej[8].to_string(),
        "node bad8: InternalIP 169.254.169.254 is a link-local address (169.254.0.0/16, instance metadata)"
    );
    assert_eq!(
        rej[11].to_string(),
        "node bad11: InternalIP 10.250.9.9 is inside gateway.vpc_cidrs (10.250.0.0/16)"
    );
}

#[test]
fn without_remote_node_cidrs_any_other_unicast_address_is_a_node() {
    let mut p = policy();
    p.remote_node_cidrs.clear();
    for addr in ["10.81.0.2", "203.0.113.9", "100.64.1.1", "10.80.0.2"] {
        assert_eq!(p.check_address(ip(addr)), Ok(()), "{addr}");
    }
    // The edges of the remote range are inside it.
    let p = policy();
    assert_eq!(p.check_address(ip("10.80.0.0")), Ok(()));
    assert_eq!(p.check_address(ip("10.80.255.255")), Ok(()));
    assert_eq!(
        p.check_address(ip("10.79.255.255")),
        Err(AddressProblem::OutsideRemoteNodeCidrs)
    );
}

#[test]
fn pod_cidrs_per_node_are_capped() {
    let many: Vec<String> = (0..=MAX_POD_CIDRS_PER_NODE)
        .map(|i| format!("192.168.{}.{}/32", 32 + i / 256, i % 256))
        .collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let (d, rej) = Desired::build_with(
        &[
            node("greedy", "10.80.0.3", &refs),
            node("fair", "10.80.0.4", &refs[..MAX_POD_CIDRS_PER_NODE]),
        ],
        &policy(),
    );
    assert_eq!(rej.len(), 1, "{rej:?}");
    assert_eq!(rej[0].reason(), "too_many_pod_cidrs");
    assert_eq!(
        rej[0].to_string(),
        format!(
            "node greedy: lists {} pod CIDRs, more than the {MAX_POD_CIDRS_PER_NODE} a node may claim",
            MAX_POD_CIDRS_PER_NODE + 1
        )
    );
    // The capped node claimed nothing, so the next one may take the same CIDRs.
    assert_eq!(d.routes.len(), MAX_POD_CIDRS_PER_NODE);
    assert!(d.routes.values().all(|via| *via == ip("10.80.0.4")));
}

/// `diff_known` from a converged kernel must be what the full diff against a dump of that
/// kernel would do (op order within a phase aside): the two paths must never disagree.
#[test]
fn delta_plan_matches_the_full_diff_of_a_converged_kernel() {
    let sets: Vec<Vec<HybridNode>> = vec![
        vec![],
        vec![node("a", "10.80.0.2", &["192.168.32.0/26"])],
        vec![
            node("a", "10.80.0.2", &["192.168.32.0/26"]),
            node("b", "10.80.0.3", &["192.168.32.64/26", "192.168.33.0/26"]),
        ],
        // a moves to a new IP, b loses a CIDR, c arrives with b's old one
        vec![
            node("a", "10.80.0.9", &["192.168.32.0/26"]),
            node("b", "10.80.0.3", &["192.168.32.64/26"]),
            node("c", "10.80.0.4", &["192.168.33.0/26"]),
        ],
        // a CIDR changes hands between nodes
        vec![
            node("b", "10.80.0.3", &["192.168.32.0/26"]),
            node("c", "10.80.0.4", &["192.168.33.0/26"]),
        ],
        vec![],
    ];
    let pod_sets = [pods(), vec![net("192.168.32.0/23"), net("192.168.40.0/24")]];
    let sorted = |p: Plan| -> Vec<Vec<String>> {
        p.phases
            .iter()
            .map(|ph| {
                let mut v: Vec<String> = ph.iter().map(|o| format!("{o:?}")).collect();
                v.sort();
                v
            })
            .collect()
    };
    let styles = [
        RouteStyle::gateways(),
        RouteStyle::nexthops(),
        nexthops_with_a_foreign_id(),
    ];
    for style in &styles {
        for (i, old_nodes) in sets.iter().enumerate() {
            for new_nodes in &sets {
                for (j, new_pods) in pod_sets.iter().enumerate() {
                    let (old, _) = Desired::build(old_nodes, &pod_sets[i % 2]);
                    let (new, _) = Desired::build(new_nodes, new_pods);
                    assert_eq!(
                        sorted(diff_known(&old, &new, style)),
                        sorted(diff(&new, &converged_with(&old, style))),
                        "from set {i} to {new_nodes:?} with pods {j}, {style:?}"
                    );
                }
            }
        }
        let (d, _) = Desired::build(&sets[3], &pods());
        assert!(diff_known(&d, &d, style).is_empty());
        assert!(diff(&d, &converged_with(&d, style)).is_empty());
    }
}

// --- The incremental desired state (`Index`) against the full rebuild ----------------------

fn ranked(created: Option<i64>, name: &str, node: HybridNode) -> std::sync::Arc<Ranked> {
    std::sync::Arc::new(Ranked {
        rank: Rank {
            created: created.map(|s| jiff::Timestamp::from_second(s).unwrap()),
            position: 0,
            name: name.into(),
        },
        node,
    })
}

/// What a full rebuild makes of `nodes` (rank order), as `(desired, rejections)`.
fn rebuilt(
    nodes: &std::collections::BTreeMap<Rank, std::sync::Arc<Ranked>>,
    policy: &NodePolicy,
) -> (Desired, Vec<Rejection>) {
    let list: Vec<HybridNode> = nodes.values().map(|r| r.node.clone()).collect();
    Desired::build_with(&list, policy)
}

/// The loser takes over when the winner goes, and in turn pushes out a newer node it
/// clashes with (which the winner's presence had let in); the winner coming back undoes it.
#[test]
fn removing_a_conflict_winner_hands_its_claims_over_in_rank_order() {
    let policy = NodePolicy::for_pod_cidrs(&pods());
    let a = ranked(Some(1), "a", node("a", "10.99.0.2", &["192.168.32.0/25"]));
    // b overlaps a (its /24 contains a's /25) and holds 192.168.33.0/26 too.
    let b = ranked(
        Some(2),
        "b",
        node("b", "10.99.0.3", &["192.168.32.0/24", "192.168.33.0/26"]),
    );
    let c = ranked(Some(3), "c", node("c", "10.99.0.4", &["192.168.33.0/27"]));
    // d has c's IP: it loses to c, and wins once c is pushed out.
    let d = ranked(Some(4), "d", node("d", "10.99.0.4", &["192.168.33.128/26"]));
    let mut index = Index::build([a.clone(), b.clone(), c.clone(), d.clone()], policy.clone());
    let before = index.desired().clone();
    assert_eq!(
        before
            .routes
            .keys()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["192.168.32.0/25", "192.168.33.0/27"],
        "a and c hold their CIDRs; b and d lost"
    );
    assert_eq!(
        index.rejected(),
        vec![
            Rejection::OverlappingCidr {
                node: "b".into(),
                cidr: net("192.168.32.0/24"),
                owner: "a".into(),
                owner_cidr: net("192.168.32.0/25"),
            },
            Rejection::DuplicateIp {
                node: "d".into(),
                ip: ip("10.99.0.4"),
                owner: "c".into(),
            },
        ]
    );
    let plan = index.update(
        BTreeSet::new(),
        [NodeChange::Remove(a.rank.clone())],
        &RouteStyle::gateways(),
    );
    let mut rest = std::collections::BTreeMap::new();
    for n in [&b, &c, &d] {
        rest.insert(n.rank.clone(), n.clone());
    }
    let (want, rejected) = rebuilt(&rest, &policy);
    assert_eq!(index.desired(), &want);
    assert_eq!(index.rejected(), rejected);
    assert_eq!(plan, diff_known(&before, &want, &RouteStyle::gateways()));
    assert_eq!(
        want.routes
            .iter()
            .map(|(c, v)| format!("{c} via {v}"))
            .collect::<Vec<_>>(),
        [
            "192.168.32.0/24 via 10.99.0.3",
            "192.168.33.0/26 via 10.99.0.3",
            "192.168.33.128/26 via 10.99.0.4",
        ],
        "b took over, pushed c out, and d took c's IP"
    );
    // The old winner comes back: everything is as at first.
    let plan = index.update(
        BTreeSet::new(),
        [NodeChange::Upsert(a.clone())],
        &RouteStyle::gateways(),
    );
    assert_eq!(index.desired(), &before);
    assert_eq!(plan, diff_known(&want, &before, &RouteStyle::gateways()));
}

/// Random event sequences applied one change at a time give, after every step, exactly
/// the desired state, rejections (owners named included) and plan of a full rebuild.
#[test]
fn random_event_sequences_match_a_full_rebuild() {
    let ips = [
        "10.99.0.2",
        "10.99.0.3",
        "10.99.0.4",
        "10.99.0.5",
        "10.99.0.6",
        "127.0.0.1",
        "10.250.0.9",
        "10.99.0.1",
    ];
    let names = ["n0", "n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8", "n9"];
    let mut base_policy = NodePolicy::for_pod_cidrs(&pods());
    base_policy.vpc_cidrs = vec![net("10.250.0.0/16")];
    base_policy.max_pod_cidrs = 3;
    let base_own: BTreeSet<Ipv4Addr> = [ip("10.99.0.1")].into();
    let mut steps = 0;
    for seed in 0..400u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        // Half the seeds route by nexthop object, one node's id held by someone else.
        let style = if seed % 2 == 0 {
            RouteStyle::gateways()
        } else {
            RouteStyle {
                nexthops: true,
                foreign: [nexthop_id(ip(ips[1]))].into(),
            }
        };
        // Nested and overlapping CIDRs inside 192.168.32.0/23 and a few outside it.
        let cidr = |rng: &mut fastrand::Rng| -> Ipv4Net {
            if rng.u8(..20) == 0 {
                return net("10.0.0.0/24");
            }
            let len = rng.u8(23..=27);
            let slots = 1u32 << (len - 23);
            let start = u32::from(ip("192.168.32.0")) + rng.u32(..slots) * (1 << (32 - len));
            Ipv4Net::new(Ipv4Addr::from(start), len).unwrap()
        };
        let mut nodes: std::collections::BTreeMap<Rank, std::sync::Arc<Ranked>> =
            Default::default();
        let mut own = base_own.clone();
        let mut policy = base_policy.clone();
        policy.own_addresses = own.clone();
        let mut index = Index::new(policy.clone());
        for _ in 0..40 {
            let mut changes = Vec::new();
            for _ in 0..rng.usize(1..=3) {
                let name = names[rng.usize(..names.len())];
                let current = nodes.keys().find(|r| r.name == name).cloned();
                match (rng.u8(..10), current) {
                    (0..=2, Some(rank)) => {
                        nodes.remove(&rank);
                        changes.push(NodeChange::Remove(rank));
                    }
                    (_, current) => {
                        let pod_cidrs = (0..rng.usize(0..=4)).map(|_| cidr(&mut rng)).collect();
                        let n = HybridNode {
                            name: name.into(),
                            ip: ip(ips[rng.usize(..ips.len())]),
                            pod_cidrs,
                            probe_ip: None,
                        };
                        // Mostly an update in place; sometimes recreated (a new rank).
                        let created = match &current {
                            Some(r) if rng.u8(..4) != 0 => r.created.map(|t| t.as_second()),
                            _ => Some(rng.i64(1..6)),
                        };
                        let r = ranked(created, name, n);
                        if let Some(old) = current.filter(|o| *o != r.rank) {
                            nodes.remove(&old);
                            changes.push(NodeChange::Remove(old));
                        }
                        nodes.insert(r.rank.clone(), r.clone());
                        changes.push(NodeChange::Upsert(r));
                    }
                }
            }
            // This host gains or loses an address a node claims.
            if rng.u8(..8) == 0 {
                let a = ip(ips[rng.usize(..5)]);
                if !own.remove(&a) {
                    own.insert(a);
                }
            }
            policy.own_addresses = own.clone();
            let before = index.desired().clone();
            let plan = index.update(own.clone(), changes, &style);
            let (want, rejected) = rebuilt(&nodes, &policy);
            assert_eq!(index.desired(), &want, "seed {seed}");
            assert_eq!(index.rejected(), rejected, "seed {seed}");
            assert_eq!(plan, diff_known(&before, &want, &style), "seed {seed}");
            steps += 1;
        }
        let fresh = Index::build(nodes.values().cloned(), policy.clone());
        assert_eq!(fresh.desired(), index.desired(), "seed {seed}");
        assert_eq!(fresh.rejected(), index.rejected(), "seed {seed}");
    }
    assert_eq!(steps, 400 * 40);
}

/// A list's published change, and the walk used when a consumer missed publications,
/// both turn the old list into the new one.
#[test]
fn node_list_changes_replay_to_the_new_list() {
    use crate::datapath::NodeList;
    let n = |name: &str, ip: &str, t: i64| ranked(Some(t), name, node(name, ip, &[]));
    let (a, b, c) = (
        n("a", "10.99.0.2", 1),
        n("b", "10.99.0.3", 2),
        n("c", "10.99.0.4", 3),
    );
    let b2 = n("b", "10.99.0.9", 2);
    let first = NodeList::new(vec![a.clone(), b.clone()], None);
    let second = NodeList::new(
        vec![a.clone(), b2.clone(), c.clone()],
        Some((
            first.id(),
            vec![
                NodeChange::Upsert(b2.clone()),
                NodeChange::Upsert(c.clone()),
            ],
        )),
    );
    let third = NodeList::new(
        vec![b2.clone(), c.clone()],
        Some((second.id(), vec![NodeChange::Remove(a.rank.clone())])),
    );
    // From the publication before: its delta; from further back: the walk.
    assert_eq!(
        third.changes_since(&second),
        vec![NodeChange::Remove(a.rank.clone())]
    );
    assert_eq!(
        third.changes_since(&first),
        vec![
            NodeChange::Remove(a.rank.clone()),
            NodeChange::Upsert(b2.clone()),
            NodeChange::Upsert(c.clone()),
        ]
    );
    assert!(third.changes_since(&third).is_empty());
    let policy = NodePolicy::for_pod_cidrs(&pods());
    let mut index = Index::build(first.ranked().cloned(), policy.clone());
    index.update(
        BTreeSet::new(),
        third.changes_since(&first),
        &RouteStyle::nexthops(),
    );
    let fresh = Index::build(third.ranked().cloned(), policy);
    assert_eq!(index.desired(), fresh.desired());
}

// --- Routes by nexthop object -----------------------------------------------------------

#[test]
fn nexthops_come_before_their_routes_and_go_after_them() {
    let style = RouteStyle::nexthops();
    let (d, _) = Desired::build(&[node("a", "10.80.0.2", &["192.168.32.0/26"])], &pods());
    let empty = Actual {
        style: style.clone(),
        ..Actual::default()
    };
    let plan = diff(&d, &empty);
    let id = nexthop_id(ip("10.80.0.2"));
    assert!(plan.phases[SET_L2].contains(&Op::SetNexthop {
        id,
        via: ip("10.80.0.2")
    }));
    assert!(plan.phases[SET_ROUTES].contains(&Op::SetRoute {
        dst: net("192.168.32.0/26"),
        via: ip("10.80.0.2"),
        nhid: Some(id),
    }));
    let gone = diff(&Desired::build(&[], &pods()).0, &converged_with(&d, &style));
    assert_eq!(
        gone.phases[DEL_ROUTES],
        vec![Op::DelRoute(node_route(
            net("192.168.32.0/26"),
            ip("10.80.0.2"),
            &style
        ))]
    );
    assert!(gone.phases[DEL_L2].contains(&Op::DelNexthop { id }));
}

/// What an older version (or the reference) left: gateway routes. Each is replaced in
/// place by a route by nexthop, never deleted first.
#[test]
fn gateway_routes_are_replaced_in_place_by_routes_by_nexthop() {
    let (d, _) = Desired::build(
        &[
            node("a", "10.80.0.2", &["192.168.32.0/26"]),
            node("b", "10.80.0.3", &["192.168.32.64/26"]),
        ],
        &pods(),
    );
    let mut actual = converged(&d);
    actual.style = RouteStyle::nexthops();
    let plan = diff(&d, &actual);
    assert!(plan.phases[DEL_ROUTES].is_empty() && plan.phases[DEL_L2].is_empty());
    assert_eq!(
        plan.phases[SET_L2],
        vec![
            Op::SetNexthop {
                id: nexthop_id(ip("10.80.0.2")),
                via: ip("10.80.0.2")
            },
            Op::SetNexthop {
                id: nexthop_id(ip("10.80.0.3")),
                via: ip("10.80.0.3")
            },
        ]
    );
    assert_eq!(plan.phases[SET_ROUTES].len(), 2);
    // And back, should the kernel lose nexthop objects (a downgrade works the same way).
    let mut back = converged_with(&d, &RouteStyle::nexthops());
    back.style = RouteStyle::gateways();
    let plan = diff(&d, &back);
    assert!(plan.phases[DEL_ROUTES].is_empty());
    assert_eq!(plan.phases[SET_ROUTES].len(), 2);
    assert_eq!(plan.phases[DEL_L2].len(), 2, "our nexthop objects go");
}

#[test]
fn a_node_whose_id_someone_else_holds_is_routed_by_gateway() {
    let style = nexthops_with_a_foreign_id();
    let (d, _) = Desired::build(
        &[
            node("a", "10.80.0.2", &["192.168.32.0/26"]),
            node("b", "10.80.0.3", &["192.168.32.64/26"]),
        ],
        &pods(),
    );
    let plan = diff(
        &d,
        &Actual {
            style: style.clone(),
            ..Actual::default()
        },
    );
    let b_id = nexthop_id(ip("10.80.0.3"));
    assert!(plan
        .ops()
        .all(|op| !matches!(op, Op::SetNexthop { id, .. } if *id == b_id)));
    assert!(plan.phases[SET_ROUTES].contains(&Op::SetRoute {
        dst: net("192.168.32.64/26"),
        via: ip("10.80.0.3"),
        nhid: None,
    }));
}

#[test]
fn a_wrong_nexthop_is_replaced_and_a_stray_one_removed() {
    let style = RouteStyle::nexthops();
    let (d, _) = Desired::build(&[node("a", "10.80.0.2", &["192.168.32.0/26"])], &pods());
    let mut actual = converged_with(&d, &style);
    let id = nexthop_id(ip("10.80.0.2"));
    actual.nexthops[0].gateway = Some(ip("10.80.0.77"));
    actual.nexthops.push(our_nexthop(7, ip("10.80.0.7")));
    let plan = diff(&d, &actual);
    assert_eq!(
        plan.phases[SET_L2],
        vec![Op::SetNexthop {
            id,
            via: ip("10.80.0.2")
        }]
    );
    assert_eq!(plan.phases[DEL_L2], vec![Op::DelNexthop { id: 7 }]);
    assert!(
        plan.phases[SET_ROUTES].is_empty(),
        "the route follows its nexthop"
    );
}
