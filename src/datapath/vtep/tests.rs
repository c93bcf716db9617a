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

/// The kernel state that exactly satisfies `desired`.
fn converged(desired: &Desired) -> Actual {
    Actual {
        routes: desired
            .routes
            .iter()
            .map(|(d, v)| ours(&d.to_string(), &v.to_string()))
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
                via: ip("10.99.0.2")
            },
            Op::SetRoute {
                dst: net("192.168.33.0/25"),
                via: ip("10.99.0.2")
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
            via: ip("10.99.0.3")
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
            via: ip("10.99.0.2")
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
            via: ip("10.99.0.2")
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
    for (i, old_nodes) in sets.iter().enumerate() {
        for new_nodes in &sets {
            for (j, new_pods) in pod_sets.iter().enumerate() {
                let (old, _) = Desired::build(old_nodes, &pod_sets[i % 2]);
                let (new, _) = Desired::build(new_nodes, new_pods);
                assert_eq!(
                    sorted(diff_known(&old, &new)),
                    sorted(diff(&new, &converged(&old))),
                    "from set {i} to {new_nodes:?} with pods {j}"
                );
            }
        }
    }
    let (d, _) = Desired::build(&sets[3], &pods());
    assert!(diff_known(&d, &d).is_empty());
}
