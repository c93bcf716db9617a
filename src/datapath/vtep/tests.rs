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
