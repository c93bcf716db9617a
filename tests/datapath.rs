//! The datapath against the real kernel, in throw-away network namespaces (needs root).

mod support;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use hybrid_gateway::config::Config;
use hybrid_gateway::datapath::{vxlan, Datapath, DeviceAction, HybridNode, Mac, Netlink};
use support::{expected_vtep as expected, veth, vtep_state as kernel, wait_until, Netns};

const GW_IP: &str = "10.99.0.1";
const NODE_IP: &str = "10.99.0.2";

fn config(extra: &str) -> Config {
    let text = format!(
        "[gateway]\nnode_ip = \"{GW_IP}\"\nvpc_cidrs = [\"10.250.0.0/16\"]\nhybrid_pod_cidrs = [\"192.168.32.0/23\"]\n{extra}"
    );
    Config::parse(Path::new("test.toml"), &text).expect("test config")
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn node(name: &str, addr: &str, cidrs: &[&str]) -> HybridNode {
    HybridNode {
        name: name.into(),
        ip: ip(addr),
        pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
        probe_ip: None,
    }
}

/// A gateway namespace whose underlay (`u0`, 10.99.0.1/24, MTU 1500) leads to a peer namespace.
fn gateway() -> (Netns, Netns) {
    let gw = Netns::new("gw");
    let peer = Netns::new("peer");
    veth(&gw, "u0", "10.99.0.1/24", &peer, "u1", "10.99.0.2/24");
    (gw, peer)
}

fn link_json(ns: &Netns) -> String {
    ns.sh("ip -d -j link show hybrid_vxlan0")
}

#[test]
fn device_is_created_adopted_and_repaired() {
    let (gw, _peer) = gateway();
    let cfg = config("");
    let gw_mac = Mac::for_gateway(ip(GW_IP));
    let ensure = |c: &Config| {
        gw.run(|| async {
            vxlan::ensure(&Netlink::open().unwrap(), &c.vxlan, ip(GW_IP))
                .await
                .unwrap()
        })
    };

    let created = ensure(&cfg);
    assert_eq!(created.action, DeviceAction::Created);
    assert_eq!(
        (created.mac, created.mtu, created.underlay.as_str()),
        (gw_mac, 1450, "u0")
    );
    let j = link_json(&gw);
    for want in [
        "\"id\":2,",
        "\"port\":8472,",
        "\"local\":\"10.99.0.1\"",
        "\"learning\":false",
        &format!("\"address\":\"{gw_mac}\""),
        "\"mtu\":1450,",
        "\"operstate\":\"UNKNOWN\"",
    ] {
        assert!(j.contains(want), "{want} not in {j}");
    }
    assert!(
        j.contains("\"flags\":[\"BROADCAST\",\"MULTICAST\",\"UP\",\"LOWER_UP\"]"),
        "not up: {j}"
    );
    assert_eq!(
        gw.sh("ip -o addr show dev hybrid_vxlan0").trim(),
        "",
        "the device must carry no address"
    );
    assert_eq!(gw.sysctl("net.ipv4.conf.hybrid_vxlan0.rp_filter"), "0");

    // A restart finds it as it left it: nothing is rewritten.
    let adopted = ensure(&cfg);
    assert_eq!(adopted.action, DeviceAction::Adopted);
    assert_eq!((adopted.index, adopted.mac), (created.index, created.mac));

    // Wrong attributes the kernel can change in place are fixed in place.
    gw.sh("ip link set hybrid_vxlan0 down && ip link set hybrid_vxlan0 mtu 1300 address 02:11:22:33:44:55");
    gw.sh("ip link set hybrid_vxlan0 type vxlan learning");
    let repaired = ensure(&cfg);
    let DeviceAction::Repaired(what) = &repaired.action else {
        panic!("expected a repair, got {:?}", repaired.action)
    };
    assert_eq!(what.len(), 4, "{what:?}");
    assert_eq!(
        repaired.index, created.index,
        "a repair must not recreate the device"
    );
    let j = link_json(&gw);
    assert!(
        j.contains("\"learning\":false")
            && j.contains("\"mtu\":1450,")
            && j.contains(&gw_mac.to_string())
            && j.contains("\"UP\""),
        "{j}"
    );

    // An explicit MTU wins over the underlay's.
    let explicit = ensure(&config("[vxlan]\nmtu = 1400\n"));
    assert_eq!((explicit.mtu, explicit.index), (1400, created.index));
}

#[test]
fn device_is_recreated_only_when_the_kernel_cannot_change_it() {
    let (gw, _peer) = gateway();
    let cfg = config("");
    let ensure = || {
        gw.run(|| async {
            vxlan::ensure(&Netlink::open().unwrap(), &cfg.vxlan, ip(GW_IP))
                .await
                .unwrap()
        })
    };

    // Our device as a run with another VNI or port left it (marked with our alias).
    gw.sh("ip link add hybrid_vxlan0 type vxlan id 7 dstport 8472 local 10.99.0.1 nolearning && ip link set hybrid_vxlan0 alias hybrid-gateway");
    let d = ensure();
    assert!(
        matches!(&d.action, DeviceAction::Recreated(why) if why.contains("VNI is 7")),
        "{:?}",
        d.action
    );
    assert!(link_json(&gw).contains("\"id\":2,"));

    gw.sh("ip link del hybrid_vxlan0 && ip link add hybrid_vxlan0 type vxlan id 2 dstport 4789 local 10.99.0.1 nolearning && ip link set hybrid_vxlan0 alias hybrid-gateway");
    let d = ensure();
    assert!(
        matches!(&d.action, DeviceAction::Recreated(why) if why.contains("port is 4789")),
        "{:?}",
        d.action
    );
    let j = link_json(&gw);
    assert!(j.contains("\"port\":8472,"), "{j}");
    assert!(
        j.contains("\"ifalias\":\"hybrid-gateway\""),
        "the new device is not marked: {j}"
    );
}

#[test]
fn foreign_devices_holding_the_name_are_left_alone() {
    let (gw, _peer) = gateway();
    let cfg = config("");
    let ensure = || {
        gw.run(|| async { vxlan::ensure(&Netlink::open().unwrap(), &cfg.vxlan, ip(GW_IP)).await })
    };
    for (setup, what) in [
        (
            "ip link add hybrid_vxlan0 type vxlan id 7 dstport 8472 local 10.99.0.1 nolearning",
            "a VXLAN device (VNI 7, port 8472",
        ),
        (
            "ip link add hybrid_vxlan0 type veth peer name junk0",
            "a veth device",
        ),
        // Same VNI and port but not our MAC: someone else's tunnel, not ours to rewrite.
        (
            "ip link add hybrid_vxlan0 address 02:11:22:33:44:55 type vxlan id 2 dstport 8472 local 10.99.0.1 nolearning",
            "a VXLAN device (VNI 2, port 8472, MAC 02:11:22:33:44:55)",
        ),
    ] {
        gw.sh(setup);
        let before = gw.sh("ip -d -j link show hybrid_vxlan0");
        let err = ensure().expect_err("a foreign device must stop the set-up");
        let msg = err.to_string();
        assert!(err.needs_operator(), "{msg}");
        assert!(
            msg.contains("vxlan.interface = \"hybrid_vxlan0\"") && msg.contains(what) && msg.contains("left alone"),
            "{msg}"
        );
        assert_eq!(
            gw.sh("ip -d -j link show hybrid_vxlan0"),
            before,
            "the foreign device was touched"
        );
        gw.sh("ip link del hybrid_vxlan0");
    }

    // A device an older version created (our MAC, no alias) is adopted and marked.
    let mac = Mac::for_gateway(ip(GW_IP));
    gw.sh(&format!("ip link add hybrid_vxlan0 address {mac} mtu 1450 type vxlan id 2 dstport 8472 local 10.99.0.1 nolearning && ip link set hybrid_vxlan0 up"));
    let index = gw.sh("cat /sys/class/net/hybrid_vxlan0/ifindex");
    let d = ensure().unwrap();
    assert!(
        matches!(&d.action, DeviceAction::Repaired(what) if what.iter().any(|w| w.contains("marked as ours"))),
        "{:?}",
        d.action
    );
    assert_eq!(gw.sh("cat /sys/class/net/hybrid_vxlan0/ifindex"), index);
    assert!(link_json(&gw).contains("\"ifalias\":\"hybrid-gateway\""));
}

#[test]
fn a_device_already_using_our_vni_and_port_is_named() {
    let (gw, _peer) = gateway();
    gw.sh("ip link add othervx type vxlan id 2 dstport 8472 local 10.99.0.1 nolearning");
    let cfg = config("");
    let err = gw.run(|| async {
        vxlan::ensure(&Netlink::open().unwrap(), &cfg.vxlan, ip(GW_IP))
            .await
            .unwrap_err()
    });
    let msg = err.to_string();
    assert!(
        msg.contains("device othervx already uses VNI 2 on UDP port 8472"),
        "{msg}"
    );
    assert!(err.needs_operator());
    assert!(gw.try_sh("ip link show othervx").status.success());
}

#[test]
fn daemon_refuses_to_start_on_a_foreign_device_with_exit_78() {
    let (gw, _peer) = gateway();
    gw.sh("ip link add hybrid_vxlan0 type veth peer name junk0");
    let dir = tempdir();
    let cfg_path = dir.join("config.toml");
    std::fs::write(&cfg_path, format!("[gateway]\nnode_ip = \"{GW_IP}\"\nvpc_cidrs = [\"10.250.0.0/16\"]\nhybrid_pod_cidrs = [\"192.168.32.0/23\"]\n")).unwrap();
    let bin = env!("CARGO_BIN_EXE_hybrid-gateway");
    let out = gw.try_sh(&format!("{bin} run --config {}", cfg_path.display()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("vxlan.interface = \"hybrid_vxlan0\"") && err.contains("a veth device"),
        "{err}"
    );
    assert!(gw.sh("ip -d link show hybrid_vxlan0").contains("veth"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn node_ip_must_be_local() {
    let (gw, _peer) = gateway();
    let cfg = config("");
    let err = gw.run(|| async {
        vxlan::ensure(&Netlink::open().unwrap(), &cfg.vxlan, ip("10.99.0.77"))
            .await
            .unwrap_err()
    });
    assert!(
        err.to_string()
            .contains("10.99.0.77 is not assigned to any interface"),
        "{err}"
    );
}

#[test]
fn sysctls_are_set_and_reported() {
    let (gw, _peer) = gateway();
    gw.sh("sysctl -qw net.ipv4.ip_forward=0 net.ipv4.conf.all.rp_filter=1");
    let cfg = config("");
    let changes = gw.run(|| async { Datapath::setup(&cfg, ip(GW_IP)).await.unwrap().1 });
    let changed: Vec<String> = changes.iter().map(ToString::to_string).collect();
    assert!(
        changed.contains(&"net.ipv4.ip_forward: 0 -> 1".to_string()),
        "{changed:?}"
    );
    assert!(
        changed.contains(&"net.ipv4.conf.all.rp_filter: 1 -> 2".to_string()),
        "{changed:?}"
    );
    assert_eq!(gw.sysctl("net.ipv4.ip_forward"), "1");
    assert_eq!(gw.sysctl("net.ipv4.conf.all.rp_filter"), "2");
    assert_eq!(gw.sysctl("net.ipv4.conf.u0.forwarding"), "1");
    assert_eq!(gw.sysctl("net.ipv6.conf.hybrid_vxlan0.disable_ipv6"), "1");
    // Second start: nothing left to change.
    let again = gw.run(|| async { Datapath::setup(&cfg, ip(GW_IP)).await.unwrap().1 });
    assert!(again.is_empty(), "{again:?}");
}

#[test]
fn reconcile_follows_nodes_through_their_lifecycle() {
    let (gw, _peer) = gateway();
    let cfg = config("");
    gw.run(|| async {
        let (dp, _) = Datapath::setup(&cfg, ip(GW_IP)).await.unwrap();
        let step = |nodes: Vec<HybridNode>| {
            let dp = &dp;
            let pods = &cfg.gateway.hybrid_pod_cidrs;
            async move {
                let r = dp.reconcile(&nodes, pods).await.unwrap();
                assert!(r.report.errors.is_empty(), "{:?}", r.report.errors);
                assert!(r.rejected.is_empty(), "{:?}", r.rejected);
                // Level-based: a second pass over the same input changes nothing.
                let again = dp.reconcile(&nodes, pods).await.unwrap();
                assert_eq!(again.report.changes(), 0, "second pass rewrote something");
                r.report
            }
        };

        // add
        step(vec![node("n1", "10.99.0.2", &["192.168.32.0/25"])]).await;
        assert_eq!(
            kernel(&gw),
            expected(&[("10.99.0.2", &["192.168.32.0/25"])])
        );
        // multi-CIDR node and a second node
        step(vec![
            node("n1", "10.99.0.2", &["192.168.32.0/25", "192.168.33.0/26"]),
            node("n2", "10.99.0.3", &["192.168.32.128/25"]),
        ])
        .await;
        assert_eq!(
            kernel(&gw),
            expected(&[
                ("10.99.0.2", &["192.168.32.0/25", "192.168.33.0/26"]),
                ("10.99.0.3", &["192.168.32.128/25"])
            ])
        );
        // change IP of n1: the route moves, the old ARP/FDB entries go
        let r = step(vec![
            node("n1", "10.99.0.4", &["192.168.32.0/25", "192.168.33.0/26"]),
            node("n2", "10.99.0.3", &["192.168.32.128/25"]),
        ])
        .await;
        assert_eq!(
            (r.routes_set, r.neighbours_deleted, r.fdb_deleted),
            (2, 1, 1)
        );
        assert_eq!(
            kernel(&gw),
            expected(&[
                ("10.99.0.4", &["192.168.32.0/25", "192.168.33.0/26"]),
                ("10.99.0.3", &["192.168.32.128/25"])
            ])
        );
        // change CIDR of n2
        step(vec![
            node("n1", "10.99.0.4", &["192.168.32.0/25", "192.168.33.0/26"]),
            node("n2", "10.99.0.3", &["192.168.33.128/25"]),
        ])
        .await;
        assert_eq!(
            kernel(&gw),
            expected(&[
                ("10.99.0.4", &["192.168.32.0/25", "192.168.33.0/26"]),
                ("10.99.0.3", &["192.168.33.128/25"])
            ])
        );
        // delete n1
        step(vec![node("n2", "10.99.0.3", &["192.168.33.128/25"])]).await;
        assert_eq!(
            kernel(&gw),
            expected(&[("10.99.0.3", &["192.168.33.128/25"])])
        );
        // delete all
        step(vec![]).await;
        assert_eq!(kernel(&gw), expected(&[]));
    });
}

#[test]
fn reconcile_cleans_a_polluted_kernel_and_spares_what_it_does_not_own() {
    let (gw, _peer) = gateway();
    let cfg = config("");
    let taken_id = format!(
        "ip nexthop add id {} via 10.99.0.2 dev u0",
        u32::from(ip("10.99.0.2"))
    );
    let foreign = [
        "ip route add 10.77.0.0/24 via 10.99.0.2 dev u0 table 100",
        "ip route add 192.168.33.128/25 via 10.99.0.2 dev u0",
        "ip route add unreachable 10.66.0.0/16",
        "ip neigh add 10.99.0.20 lladdr 02:aa:bb:cc:dd:ee dev u0 nud permanent",
        // Someone else's nexthop objects, one on the id node 10.99.0.2's would have.
        "ip nexthop add id 5 via 10.99.0.2 dev u0",
        taken_id.as_str(),
        "ip route add 10.78.0.0/24 nhid 5",
    ];
    gw.run(|| async { Datapath::setup(&cfg, ip(GW_IP)).await.unwrap() });
    for cmd in &foreign {
        gw.sh(cmd);
    }
    let before_foreign = (
        gw.sh("ip route show table 100"),
        gw.sh("ip route show dev u0"),
        gw.sh("ip neigh show dev u0 nud permanent"),
        gw.sh("ip nexthop show"),
    );
    // Stale state as a crashed or older gateway could leave it.
    for cmd in [
        "ip route add 192.168.40.0/24 via 10.99.0.9 dev hybrid_vxlan0 onlink",
        "ip route add 192.168.32.0/25 via 10.99.0.9 dev hybrid_vxlan0 onlink",
        "ip route add 192.168.32.0/25 via 10.99.0.2 dev hybrid_vxlan0 onlink metric 50",
        "ip route add unreachable 192.168.50.0/24 proto 158 metric 4242",
        "ip neigh add 10.99.0.9 lladdr 02:00:0a:63:00:09 dev hybrid_vxlan0 nud permanent",
        "ip neigh add 10.99.0.2 lladdr 02:de:ad:be:ef:00 dev hybrid_vxlan0 nud permanent",
        "bridge fdb add 02:00:0a:63:00:09 dst 10.99.0.9 dev hybrid_vxlan0 self permanent",
        "bridge fdb append 02:00:0a:63:00:02 dst 10.99.0.8 dev hybrid_vxlan0 self permanent",
        "bridge fdb add 00:00:00:00:00:00 dst 10.99.0.50 dev hybrid_vxlan0 self permanent",
        "ip nexthop add id 77 via 10.99.0.9 dev hybrid_vxlan0 onlink",
        "ip route add 192.168.41.0/24 nhid 77",
    ] {
        gw.sh(cmd);
    }
    gw.run(|| async {
        let (dp, _) = Datapath::setup(&cfg, ip(GW_IP)).await.unwrap();
        let r = dp
            .reconcile(
                &[node("n1", "10.99.0.2", &["192.168.32.0/25"])],
                &cfg.gateway.hybrid_pod_cidrs,
            )
            .await
            .unwrap();
        assert!(r.report.errors.is_empty(), "{:?}", r.report.errors);
        assert_eq!(
            dp.reconcile(
                &[node("n1", "10.99.0.2", &["192.168.32.0/25"])],
                &cfg.gateway.hybrid_pod_cidrs
            )
            .await
            .unwrap()
            .report
            .changes(),
            0
        );
    });
    // The foreign unreachable route is listed too: it is not ours and must survive. Node
    // 10.99.0.2's nexthop id is someone else's, so its route names its gateway instead.
    let mut want: Vec<String> = expected(&[("10.99.0.2", &[])])
        .into_iter()
        .filter(|l| !l.starts_with("nexthop "))
        .collect();
    want.push("route 192.168.32.0/25 via 10.99.0.2 proto 158 onlink".into());
    want.push("route unreachable 10.66.0.0/16".into());
    want.sort();
    assert_eq!(kernel(&gw), want);
    let after_foreign = (
        gw.sh("ip route show table 100"),
        gw.sh("ip route show dev u0"),
        gw.sh("ip neigh show dev u0 nud permanent"),
        gw.sh("ip nexthop show"),
    );
    assert_eq!(
        before_foreign, after_foreign,
        "entries of other devices or tables were touched"
    );
}

#[test]
fn nodes_that_conflict_are_skipped_without_disturbing_others() {
    let (gw, _peer) = gateway();
    let cfg = config("");
    let rejected = gw.run(|| async {
        let (dp, _) = Datapath::setup(&cfg, ip(GW_IP)).await.unwrap();
        let nodes = [
            node("good", "10.99.0.2", &["192.168.32.0/25"]),
            node("thief", "10.99.0.3", &["192.168.32.0/26"]),
            node("outside", "10.99.0.4", &["10.250.9.0/24"]),
        ];
        dp.reconcile(&nodes, &cfg.gateway.hybrid_pod_cidrs)
            .await
            .unwrap()
            .rejected
    });
    assert_eq!(
        rejected.iter().map(|r| r.node()).collect::<Vec<_>>(),
        vec!["thief", "outside"]
    );
    assert_eq!(
        kernel(&gw),
        expected(&[("10.99.0.2", &["192.168.32.0/25"])])
    );
}

/// vpc-host (10.250.0.10) ─ gateway (10.250.0.1 | 10.99.0.1) ─ hybrid node (10.99.0.2),
/// the node running its own VXLAN VTEP (VNI 2, port 8472) with pod address 192.168.32.10.
struct Topology {
    vpc: Netns,
    gw: Netns,
    node: Netns,
}

fn topology() -> Topology {
    let vpc = Netns::new("vpc");
    let gw = Netns::new("gw");
    let node = Netns::new("node");
    veth(&vpc, "e0", "10.250.0.10/24", &gw, "e1", "10.250.0.1/24");
    veth(&gw, "u0", "10.99.0.1/24", &node, "u1", "10.99.0.2/24");
    vpc.sh("ip route add 192.168.32.0/23 via 10.250.0.1");
    // The node side does what Cilium does with a CiliumVTEPConfig: VPC CIDR → gateway VTEP.
    let gw_mac = Mac::for_gateway(ip(GW_IP));
    let node_mac = Mac::for_node(ip(NODE_IP));
    node.sh(&format!(
        "ip link add vx type vxlan id 2 dstport 8472 local {NODE_IP} nolearning && \
         ip link set vx address {node_mac} up && \
         ip addr add 192.168.32.10/32 dev lo && \
         ip route add 10.250.0.0/16 via {GW_IP} dev vx onlink src 192.168.32.10 && \
         ip neigh add {GW_IP} lladdr {gw_mac} dev vx nud permanent && \
         bridge fdb add {gw_mac} dst {GW_IP} dev vx self permanent"
    ));
    Topology { vpc, gw, node }
}

fn rx_packets(ns: &Netns, dev: &str) -> u64 {
    ns.sh(&format!("cat /sys/class/net/{dev}/statistics/rx_packets"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn packets_cross_the_tunnel_both_ways_and_stop_when_the_node_goes() {
    let t = topology();
    let cfg = config("");
    t.gw.run(|| async {
        let (dp, _) = Datapath::setup(&cfg, ip(GW_IP)).await.unwrap();
        dp.reconcile(
            &[node("n1", NODE_IP, &["192.168.32.0/25"])],
            &cfg.gateway.hybrid_pod_cidrs,
        )
        .await
        .unwrap();
    });
    let gw_rx = rx_packets(&t.gw, "hybrid_vxlan0");
    let node_rx = rx_packets(&t.node, "vx");
    let ping = t.vpc.try_sh("ping -c 3 -i 0.2 -W 2 192.168.32.10");
    assert!(
        ping.status.success(),
        "ping failed: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    assert!(
        rx_packets(&t.node, "vx") >= node_rx + 3,
        "requests did not arrive through the node's VTEP"
    );
    assert!(
        rx_packets(&t.gw, "hybrid_vxlan0") >= gw_rx + 3,
        "replies did not come back through the tunnel"
    );

    t.gw.run(|| async {
        let (dp, _) = Datapath::setup(&cfg, ip(GW_IP)).await.unwrap();
        dp.reconcile(&[], &cfg.gateway.hybrid_pod_cidrs)
            .await
            .unwrap();
    });
    let ping = t.vpc.try_sh("ping -c 2 -i 0.2 -W 1 192.168.32.10");
    assert!(
        !ping.status.success(),
        "ping still works after the node was removed"
    );
    // The gateway answers for the whole range instead of bouncing packets back to the VPC.
    let out = String::from_utf8_lossy(&ping.stdout);
    assert!(
        out.contains("Unreachable"),
        "expected ICMP unreachable from the gateway: {out}"
    );
}

#[test]
fn daemon_restart_loses_no_packet() {
    let t = topology();
    let dir = tempdir();
    let cfg_path = dir.join("config.toml");
    let nodes_path = dir.join("nodes.toml");
    std::fs::write(
        &cfg_path,
        format!("[gateway]\nnode_ip = \"{GW_IP}\"\nvpc_cidrs = [\"10.250.0.0/16\"]\nhybrid_pod_cidrs = [\"192.168.32.0/23\"]\n"),
    )
    .unwrap();
    std::fs::write(
        &nodes_path,
        format!("[[node]]\nname = \"n1\"\nip = \"{NODE_IP}\"\npod_cidrs = [\"192.168.32.0/25\"]\n"),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_hybrid-gateway");
    let args = [
        "run",
        "--config",
        cfg_path.to_str().unwrap(),
        "--static-nodes",
        nodes_path.to_str().unwrap(),
    ];

    let start = || {
        let p = t.gw.spawn(bin, &args);
        assert!(
            wait_until(Duration::from_secs(10), || {
                let out = t.gw.try_sh("ip route show dev hybrid_vxlan0");
                String::from_utf8_lossy(&out.stdout).contains("192.168.32.0/25")
            }),
            "daemon did not program the route"
        );
        p
    };
    let daemon = start();
    let index_before = t.gw.sh("cat /sys/class/net/hybrid_vxlan0/ifindex");
    // 400 pings at 10 ms while the daemon is restarted three times.
    let ping = t.vpc.spawn(
        "ping",
        &["-c", "400", "-i", "0.01", "-W", "1", "192.168.32.10"],
    );
    std::thread::sleep(Duration::from_millis(300));
    let mut daemon = Some(daemon);
    for _ in 0..3 {
        let d = daemon.take().unwrap();
        d.signal(libc::SIGTERM);
        let out = d.wait(Duration::from_secs(5));
        assert!(
            out.status.success(),
            "daemon exit: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        daemon = Some(start());
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = ping.wait(Duration::from_secs(30));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("400 packets transmitted, 400 received"),
        "packets were lost across restarts: {text}"
    );
    assert_eq!(
        t.gw.sh("cat /sys/class/net/hybrid_vxlan0/ifindex"),
        index_before,
        "the device was recreated"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// What an older version (or the reference) left: routes that name their gateway. The
/// first pass replaces each in place by a route by nexthop object, and not one packet of
/// a 10 ms ping is lost. A node whose nexthop id someone else holds keeps a gateway route.
#[test]
fn gateway_routes_become_routes_by_nexthop_without_losing_a_packet() {
    let t = topology();
    let cfg = config("");
    let n1_id = u32::from(ip(NODE_IP));
    let n2_id = u32::from(ip("10.99.0.7"));
    let n1 = || node("n1", NODE_IP, &["192.168.32.0/25"]);
    t.gw.run(|| async {
        let (dp, _) = Datapath::setup(&cfg, ip(GW_IP)).await.unwrap();
        let r = dp.reconcile(&[n1()], &cfg.gateway.hybrid_pod_cidrs).await;
        assert!(r.unwrap().report.errors.is_empty());
    });
    // Back to how an older version left it: the route replaced in place, the object gone.
    t.gw.sh(&format!(
        "ip route replace 192.168.32.0/25 via {NODE_IP} dev hybrid_vxlan0 onlink proto 158 && \
         ip nexthop del id {n1_id} && \
         ip nexthop add id {n2_id} via {NODE_IP} dev u0"
    ));
    let foreign = t.gw.sh("ip nexthop show dev u0");
    assert!(t
        .gw
        .sh("ip route show dev hybrid_vxlan0")
        .contains(&format!("192.168.32.0/25 via {NODE_IP} proto 158 onlink")));
    let ping = t.vpc.spawn(
        "ping",
        &["-c", "300", "-i", "0.01", "-W", "1", "192.168.32.10"],
    );
    std::thread::sleep(Duration::from_millis(500));
    let nodes = [n1(), node("n2", "10.99.0.7", &["192.168.33.0/26"])];
    t.gw.run(|| async {
        // A new process: nothing known, everything read from the kernel.
        let (dp, _) = Datapath::setup(&cfg, ip(GW_IP)).await.unwrap();
        let r = dp
            .reconcile(&nodes, &cfg.gateway.hybrid_pod_cidrs)
            .await
            .unwrap();
        assert!(r.report.errors.is_empty(), "{:?}", r.report.errors);
        assert_eq!(r.report.nexthops_set, 1, "only n1 gets an object");
        let again = dp.reconcile(&nodes, &cfg.gateway.hybrid_pod_cidrs).await;
        assert_eq!(again.unwrap().report.changes(), 0);
    });
    let out = ping.wait(Duration::from_secs(30));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("300 packets transmitted, 300 received"),
        "packets were lost while the routes changed form: {text}"
    );
    let mut want: Vec<String> = expected(&[(NODE_IP, &["192.168.32.0/25"]), ("10.99.0.7", &[])])
        .into_iter()
        .filter(|l| !l.contains(&format!("nexthop id {n2_id} ")))
        .collect();
    want.push("route 192.168.33.0/26 via 10.99.0.7 proto 158 onlink".into());
    want.sort();
    assert_eq!(kernel(&t.gw), want);
    assert_eq!(
        t.gw.sh("ip nexthop show dev u0"),
        foreign,
        "someone else's object"
    );
}

/// A node's nexthop object pointed elsewhere, or deleted (which takes its routes with
/// it), is put back by the next full pass.
#[test]
fn a_tampered_or_deleted_nexthop_is_repaired_by_the_full_pass() {
    let (gw, _peer) = gateway();
    let cfg = config("");
    let id = u32::from(ip(NODE_IP));
    let nodes = [node("n1", NODE_IP, &["192.168.32.0/25", "192.168.33.0/25"])];
    let want = expected(&[(NODE_IP, &["192.168.32.0/25", "192.168.33.0/25"])]);
    gw.run(|| async {
        let (dp, _) = Datapath::setup(&cfg, ip(GW_IP)).await.unwrap();
        let pods = &cfg.gateway.hybrid_pod_cidrs;
        dp.reconcile(&nodes, pods).await.unwrap();
        assert_eq!(kernel(&gw), want);
        gw.sh(&format!(
            "ip nexthop replace id {id} via 10.99.0.9 dev hybrid_vxlan0 onlink"
        ));
        let r = dp.reconcile(&nodes, pods).await.unwrap();
        assert!(r.report.errors.is_empty(), "{:?}", r.report.errors);
        assert_eq!(
            (r.report.nexthops_set, r.report.changes()),
            (1, 1),
            "the object is replaced; its routes follow it"
        );
        assert_eq!(kernel(&gw), want);
        gw.sh(&format!("ip nexthop del id {id}"));
        let r = dp.reconcile(&nodes, pods).await.unwrap();
        assert!(r.report.errors.is_empty(), "{:?}", r.report.errors);
        assert_eq!((r.report.nexthops_set, r.report.routes_set), (1, 2));
        assert_eq!(kernel(&gw), want);
    });
}

/// With `net.ipv4.nexthop_compat_mode = 0` the kernel leaves a route's device and gateway
/// out of dumps when it goes by a nexthop object: the daemon must still know the route as
/// its own (by the object's id), find it correct, and delete it when its node goes.
#[test]
fn routes_by_nexthop_are_recognised_without_the_compat_dump() {
    let (gw, _peer) = gateway();
    let cfg = config("");
    gw.sh("sysctl -qw net.ipv4.nexthop_compat_mode=0");
    let pods = cfg.gateway.hybrid_pod_cidrs.clone();
    let nodes = [node("n1", NODE_IP, &["192.168.32.0/25"])];
    gw.run(|| async {
        let (dp, _) = Datapath::setup(&cfg, ip(GW_IP)).await.unwrap();
        let r = dp.reconcile(&nodes, &pods).await.unwrap();
        assert!(r.report.errors.is_empty(), "{:?}", r.report.errors);
        let route = gw.sh("ip route show 192.168.32.0/25");
        assert!(
            route.contains("nhid") && !route.contains("via"),
            "not the compat-less form: {route}"
        );
        let r = dp.reconcile(&nodes, &pods).await.unwrap();
        assert_eq!(r.report.changes(), 0, "the route was not known as ours");
        let r = dp.reconcile(&[], &pods).await.unwrap();
        assert!(r.report.errors.is_empty(), "{:?}", r.report.errors);
    });
    assert_eq!(
        gw.sh("ip route show 192.168.32.0/25"),
        "",
        "the route outlived its node"
    );
    assert_eq!(gw.sh("ip nexthop show"), "");
}

/// `apply_gated`'s promise, which the filter's ordering rests on: no route is added or
/// deleted before the gate (the filter write) completes; a new node's ARP, FDB and
/// nexthop entries may go in meanwhile. The gate here looks at the kernel after 300 ms.
#[test]
fn routes_wait_for_the_gate_and_a_new_nodes_other_entries_do_not() {
    use hybrid_gateway::datapath::{vtep, Desired, PassTimes};
    let (gw, _peer) = gateway();
    let cfg = config("[datapath]\nfilter = false\n");
    let pods = cfg.gateway.hybrid_pod_cidrs.clone();
    let cidr: ipnet::Ipv4Net = "192.168.32.0/25".parse().unwrap();
    gw.run(|| async {
        drop(Datapath::setup(&cfg, ip(GW_IP)).await.unwrap());
        let nl = Netlink::open().unwrap();
        let index = nl.link("hybrid_vxlan0").await.unwrap().unwrap().index;
        let look = || async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            nl.read_vtep(index).await.unwrap()
        };
        let (one, _) = Desired::build(&[node("n1", NODE_IP, &["192.168.32.0/25"])], &pods);
        let plan = vtep::diff(&one, &nl.read_vtep(index).await.unwrap());
        let (report, seen) = nl
            .apply_gated(index, &plan, &mut PassTimes::default(), look())
            .await;
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert!(
            seen.routes.is_empty(),
            "a route went in before the gate: {seen:?}"
        );
        assert_eq!(
            (seen.neighbours.len(), seen.fdb.len(), seen.nexthops.len()),
            (1, 1, 1),
            "the new node's other entries waited for the gate"
        );
        let (none, _) = Desired::build(&[], &pods);
        let plan = vtep::diff(&none, &nl.read_vtep(index).await.unwrap());
        let (report, seen) = nl
            .apply_gated(index, &plan, &mut PassTimes::default(), look())
            .await;
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert!(
            seen.routes.iter().any(|r| r.dst == cidr),
            "the route went before the gate: {seen:?}"
        );
        let after = nl.read_vtep(index).await.unwrap();
        assert!(after.routes.iter().all(|r| r.dst != cidr) && after.nexthops.is_empty());
    });
}

#[test]
fn unwritable_sysctls_stop_the_daemon_with_a_clear_message() {
    let (gw, _peer) = gateway();
    let dir = tempdir();
    let cfg_path = dir.join("config.toml");
    std::fs::write(&cfg_path, format!("[gateway]\nnode_ip = \"{GW_IP}\"\nvpc_cidrs = [\"10.250.0.0/16\"]\nhybrid_pod_cidrs = [\"192.168.32.0/23\"]\n")).unwrap();
    gw.sh("sysctl -qw net.ipv4.ip_forward=0");
    let bin = env!("CARGO_BIN_EXE_hybrid-gateway");
    let out = gw.try_sh(&format!(
        "unshare -m sh -c 'mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec {bin} run --config {}'",
        cfg_path.display()
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("setting net.ipv4.ip_forward=1") && err.contains("Read-only file system"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

fn tempdir() -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("hgwt-{}-{}", std::process::id(), fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `/metrics` of a daemon running in `ns` (default listen address 127.0.0.1:10080).
fn scrape(ns: &Netns) -> String {
    http_get(ns, 10080, "/metrics").1
}

/// `GET path` on 127.0.0.1:`port` inside `ns`: (status code, whole response).
fn http_get(ns: &Netns, port: u16, path: &str) -> (u16, String) {
    ns.run(|| async {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("daemon listener");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, text)
    })
}

/// `/readyz` of a daemon in `ns` (default health listener 127.0.0.1:8088) says ready.
fn ready(ns: &Netns) -> bool {
    http_get(ns, 8088, "/readyz").0 == 200
}

/// The value of an unlabelled gauge in a scrape.
fn gauge(metrics: &str, name: &str) -> Option<i64> {
    metric(metrics, name).map(|v| v as i64)
}

#[test]
fn bad_node_addresses_are_refused_while_good_nodes_forward() {
    let t = topology();
    // An address of the gateway that is neither node_ip nor in the VPC.
    t.gw.sh("ip addr add 10.99.0.50/32 dev lo");
    let dir = tempdir();
    let cfg_path = dir.join("config.toml");
    let nodes_path = dir.join("nodes.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "[gateway]\nnode_ip = \"{GW_IP}\"\nvpc_cidrs = [\"10.250.0.0/16\"]\nhybrid_pod_cidrs = [\"192.168.32.0/23\"]\nremote_node_cidrs = [\"10.99.0.0/24\"]\n[datapath]\nresync_interval = \"1s\"\n"
        ),
    )
    .unwrap();
    // Each bad node claims a pod CIDR of its own, so only the address check can refuse it.
    let bad = [
        ("0.0.0.0", "unspecified_address"),
        ("127.0.0.1", "loopback_address"),
        ("224.0.0.5", "multicast_address"),
        ("255.255.255.255", "broadcast_address"),
        ("169.254.169.254", "link_local_address"),
        (GW_IP, "gateway_address"),
        ("10.99.0.50", "gateway_address"),
        ("10.250.0.99", "address_inside_vpc_cidrs"),
        ("192.168.33.5", "address_inside_hybrid_pod_cidrs"),
        ("10.98.0.2", "address_outside_remote_node_cidrs"),
    ];
    let mut nodes = String::new();
    for (i, (addr, _)) in bad.iter().enumerate() {
        nodes += &format!(
            "[[node]]\nname = \"bad{i}\"\nip = \"{addr}\"\npod_cidrs = [\"192.168.33.{}/28\"]\n",
            i * 16
        );
    }
    nodes += &format!(
        "[[node]]\nname = \"n1\"\nip = \"{NODE_IP}\"\npod_cidrs = [\"192.168.32.0/25\"]\n"
    );
    std::fs::write(&nodes_path, nodes).unwrap();
    let daemon = t.gw.spawn(
        env!("CARGO_BIN_EXE_hybrid-gateway"),
        &[
            "run",
            "--config",
            cfg_path.to_str().unwrap(),
            "--static-nodes",
            nodes_path.to_str().unwrap(),
        ],
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            let out = t.gw.try_sh("ip route show dev hybrid_vxlan0");
            String::from_utf8_lossy(&out.stdout).contains("192.168.32.0/25")
        }),
        "daemon did not program the good node"
    );
    // Three resync passes: the refusals must neither reach the kernel nor repeat in the log.
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(
        kernel(&t.gw),
        expected(&[(NODE_IP, &["192.168.32.0/25"])]),
        "a bad node reached the kernel"
    );
    let ping = t.vpc.try_sh("ping -c 3 -i 0.2 -W 2 192.168.32.10");
    assert!(
        ping.status.success(),
        "the good node does not forward: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    let metrics = scrape(&t.gw);
    for reason in [
        "unspecified_address",
        "loopback_address",
        "multicast_address",
        "broadcast_address",
        "link_local_address",
        "address_inside_vpc_cidrs",
        "address_inside_hybrid_pod_cidrs",
        "address_outside_remote_node_cidrs",
    ] {
        let line = format!("hybrid_gateway_nodes_rejected{{reason=\"{reason}\"}} 1\n");
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    }
    assert!(metrics.contains("hybrid_gateway_nodes_rejected{reason=\"gateway_address\"} 2\n"));
    assert!(metrics.contains("hybrid_gateway_nodes_rejected{reason=\"duplicate_address\"} 0\n"));
    assert!(metrics.contains("hybrid_gateway_hybrid_nodes_configured 1\n"));

    daemon.signal(libc::SIGTERM);
    let out = daemon.wait(Duration::from_secs(5));
    let log = String::from_utf8_lossy(&out.stderr);
    for (i, (addr, _)) in bad.iter().enumerate() {
        let warnings = log
            .lines()
            .filter(|l| l.contains(&format!("node bad{i}: InternalIP {addr} ")))
            .count();
        assert_eq!(
            warnings, 1,
            "bad{i} ({addr}) warned {warnings} times:\n{log}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn jumbo_underlay_still_gets_a_tunnel_for_the_hybrid_path() {
    let (gw, _peer) = gateway();
    gw.sh("ip link set u0 mtu 9001");
    let ensure = |extra: &str| {
        let c = config(extra);
        gw.run(|| async {
            vxlan::ensure(&Netlink::open().unwrap(), &c.vxlan, ip(GW_IP))
                .await
                .unwrap()
        })
    };
    // Default path MTU 1500: 1450, not the NIC's 9001 - 50.
    let d = ensure("");
    assert_eq!(d.mtu, 1450);
    assert!(
        link_json(&gw).contains("\"mtu\":1450,"),
        "{}",
        link_json(&gw)
    );
    // Jumbo Direct Connect: the operator says so, the device follows in place.
    let jumbo = ensure("[vxlan]\nunderlay_mtu = 8500\n");
    assert_eq!((jumbo.mtu, jumbo.index), (8450, d.index));
    assert!(link_json(&gw).contains("\"mtu\":8450,"));
    // IPsec VPN.
    assert_eq!(ensure("[vxlan]\nunderlay_mtu = 1400\n").mtu, 1350);
    // An explicit MTU still wins.
    assert_eq!(
        ensure("[vxlan]\nunderlay_mtu = 8500\nmtu = 1300\n").mtu,
        1300
    );
}

/// The tunnel topology plus a rogue on-premises host (10.98.0.66, no node) running its own
/// VTEP towards the gateway, and a non-VPC host (10.251.0.10) the gateway can also reach.
struct Exposed {
    t: Topology,
    rogue: Netns,
    inet: Netns,
}

fn exposed() -> Exposed {
    let t = topology();
    let rogue = Netns::new("rogue");
    let inet = Netns::new("inet");
    veth(&t.gw, "u2", "10.98.0.1/24", &rogue, "r0", "10.98.0.66/24");
    veth(&t.gw, "e2", "10.251.0.1/24", &inet, "i0", "10.251.0.10/24");
    inet.sh("ip route add default via 10.251.0.1");
    // The rogue claims to be the pod 192.168.32.10 and speaks VXLAN to the gateway.
    let gw_mac = Mac::for_gateway(ip(GW_IP));
    rogue.sh(&format!(
        "ip route add default via 10.98.0.1 && \
         ip link add vx type vxlan id 2 dstport 8472 local 10.98.0.66 nolearning && \
         ip link set vx up && \
         ip addr add 192.168.32.10/32 dev lo && \
         ip route add 10.250.0.0/16 via {GW_IP} dev vx onlink src 192.168.32.10 && \
         ip neigh add {GW_IP} lladdr {gw_mac} dev vx nud permanent && \
         bridge fdb add {gw_mac} dst {GW_IP} dev vx self permanent"
    ));
    // The real node could also try a non-VPC destination, or a VPC source address.
    t.node.sh(&format!(
        "ip route add 10.251.0.0/16 via {GW_IP} dev vx onlink src 192.168.32.10 && \
         ip addr add 10.250.0.99/32 dev lo"
    ));
    Exposed { t, rogue, inet }
}

/// Packets matching `filter` seen on `dev` in `ns` while `traffic` runs.
fn captured(ns: &Netns, dev: &str, filter: &str, traffic: impl FnOnce()) -> Vec<String> {
    let mut args = vec!["-l", "-n", "-v", "-i", dev];
    args.extend(filter.split_whitespace());
    let cap = ns.spawn("tcpdump", &args);
    // tcpdump needs a moment to open the socket; nothing is sent before.
    std::thread::sleep(Duration::from_millis(800));
    traffic();
    std::thread::sleep(Duration::from_millis(300));
    cap.signal(libc::SIGINT);
    let out = cap.wait(Duration::from_secs(5));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" > "))
        .map(String::from)
        .collect()
}

fn set_up(gw: &Netns, cfg: &Config, nodes: &[HybridNode]) {
    gw.run(|| async {
        let (dp, _) = Datapath::setup(cfg, ip(GW_IP)).await.unwrap();
        let r = dp
            .reconcile(nodes, &cfg.gateway.hybrid_pod_cidrs)
            .await
            .unwrap();
        assert!(r.report.errors.is_empty(), "{:?}", r.report.errors);
    });
}

fn nft_counter(gw: &Netns, name: &str) -> u64 {
    let out = gw.sh(&format!("nft list counter ip hybrid_gateway {name}"));
    out.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no packets in {out}"))
}

#[test]
fn the_filter_stops_spoofed_and_misdirected_tunnel_traffic() {
    let x = exposed();
    let nodes = [node("n1", NODE_IP, &["192.168.32.0/25"])];
    let icmp_from = |src: &str| format!("icmp and src {src}");
    let rogue_ping = || {
        x.rogue.try_sh("ping -c 3 -i 0.2 -W 1 10.250.0.10");
    };
    let to_inet = || {
        x.t.node.try_sh("ping -c 3 -i 0.2 -W 1 10.251.0.10");
    };
    let vpc_sourced = || {
        x.t.node
            .try_sh("ping -c 3 -i 0.2 -W 1 -I 10.250.0.99 10.250.0.10");
    };

    // Without the filter the gateway is an open router: each attack arrives.
    set_up(&x.t.gw, &config("[datapath]\nfilter = false\n"), &nodes);
    assert!(
        x.t.gw
            .try_sh("nft list table ip hybrid_gateway")
            .status
            .code()
            != Some(0)
    );
    let open = [
        captured(&x.t.vpc, "e0", &icmp_from("192.168.32.10"), rogue_ping).len(),
        captured(&x.inet, "i0", &icmp_from("192.168.32.10"), to_inet).len(),
        captured(&x.t.vpc, "e0", &icmp_from("10.250.0.99"), vpc_sourced).len(),
    ];
    assert!(
        open.iter().all(|n| *n >= 3),
        "the topology does not expose the gateway: {open:?}"
    );

    // With it (the default), none does, each is counted, and the real pod still reaches the VPC.
    set_up(&x.t.gw, &config(""), &nodes);
    let spoofed = captured(&x.t.vpc, "e0", &icmp_from("192.168.32.10"), rogue_ping);
    assert_eq!(spoofed, Vec::<String>::new(), "spoofed VXLAN was forwarded");
    assert!(nft_counter(&x.t.gw, "vxlan_not_from_node") >= 3);
    let leaked = captured(&x.inet, "i0", &icmp_from("192.168.32.10"), to_inet);
    assert_eq!(
        leaked,
        Vec::<String>::new(),
        "tunnel traffic left for a non-VPC host"
    );
    assert!(nft_counter(&x.t.gw, "tunnel_destination_not_vpc") >= 3);
    let forged = captured(&x.t.vpc, "e0", &icmp_from("10.250.0.99"), vpc_sourced);
    assert_eq!(
        forged,
        Vec::<String>::new(),
        "a VPC source address came out of the tunnel"
    );
    assert!(nft_counter(&x.t.gw, "tunnel_source_not_allowed") >= 3);

    let ping = x.t.node.try_sh("ping -c 3 -i 0.2 -W 2 10.250.0.10");
    assert!(
        ping.status.success(),
        "the pod cannot reach the VPC host: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    let ping = x.t.vpc.try_sh("ping -c 3 -i 0.2 -W 2 192.168.32.10");
    assert!(ping.status.success(), "the VPC host cannot reach the pod");
}

#[test]
fn syns_through_the_tunnel_carry_the_clamped_mss() {
    let t = topology();
    // Both ends think 1500 fits: without clamping they would announce MSS 1460.
    t.node.sh("ip link set vx mtu 1500");
    set_up(
        &t.gw,
        &config(""),
        &[node("n1", NODE_IP, &["192.168.32.0/25"])],
    );
    let server = t.vpc.spawn(
        "python3",
        &["-c", "import socket,time\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('10.250.0.10',5201))\ns.listen()\nc,_=s.accept()\ntime.sleep(1)"],
    );
    std::thread::sleep(Duration::from_millis(300));
    let syn = "tcp[tcpflags] & tcp-syn != 0 and tcp[tcpflags] & tcp-ack == 0";
    let syn_ack = "tcp[tcpflags] & tcp-syn != 0 and tcp[tcpflags] & tcp-ack != 0";
    let mut synack = Vec::new();
    let at_vpc = captured(&t.vpc, "e0", syn, || {
        synack = captured(&t.node, "vx", syn_ack, || {
            t.node.sh("python3 -c \"import socket; socket.create_connection(('10.250.0.10', 5201), 3).close()\"");
        });
    });
    drop(server);
    let mss = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .filter_map(|l| l.split("mss ").nth(1))
            .map(|rest| {
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    };
    // The pod's SYN left the tunnel towards the VPC with MSS 1410 (1450 - 40) ...
    let vpc_side = mss(&at_vpc);
    assert!(
        !vpc_side.is_empty() && vpc_side.iter().all(|m| m == "1410"),
        "{at_vpc:?}"
    );
    // ... and the VPC host's SYN-ACK entered it with 1410 too.
    let node_side = mss(&synack);
    assert!(
        !node_side.is_empty() && node_side.iter().all(|m| m == "1410"),
        "{synack:?}"
    );
}

#[test]
fn the_filter_survives_a_restart_without_being_rebuilt_and_purge_removes_it() {
    let t = topology();
    let cfg = config("");
    let nodes = [node("n1", NODE_IP, &["192.168.32.0/25"])];
    set_up(&t.gw, &cfg, &nodes);
    // Count something, then start again: the same table, counters intact, nothing rewritten.
    let ping = t.vpc.try_sh("ping -c 2 -i 0.2 -W 2 192.168.32.10");
    assert!(ping.status.success());
    t.node.sh("ip link set vx mtu 1500");
    t.node
        .try_sh("python3 -c \"import socket; socket.create_connection(('10.250.0.10', 9), 1)\"");
    let before = nft_counter(&t.gw, "syn_mss_clamped");
    assert!(before >= 1, "no SYN was clamped");
    let handle = t.gw.sh("nft -a list table ip hybrid_gateway | head -1");
    let r = t.gw.run(|| async {
        let (dp, _) = Datapath::setup(&cfg, ip(GW_IP)).await.unwrap();
        dp.reconcile(&nodes, &cfg.gateway.hybrid_pod_cidrs)
            .await
            .unwrap()
    });
    let f = r.filter.expect("filter report");
    assert!(!f.written && f.repaired.is_empty(), "{f:?}");
    assert_eq!(f.counters["syn_mss_clamped"].0, before);
    assert_eq!(
        t.gw.sh("nft -a list table ip hybrid_gateway | head -1"),
        handle
    );

    // Turning the filter off removes exactly our table.
    t.gw.sh("nft add table inet someone_else");
    set_up(&t.gw, &config("[datapath]\nfilter = false\n"), &nodes);
    assert!(!t
        .gw
        .try_sh("nft list table ip hybrid_gateway")
        .status
        .success());
    assert!(t
        .gw
        .try_sh("nft list table inet someone_else")
        .status
        .success());
}

#[test]
fn a_tampered_filter_is_repaired_on_the_next_pass() {
    let t = topology();
    let cfg = config("");
    let nodes = [node("n1", NODE_IP, &["192.168.32.0/25"])];
    set_up(&t.gw, &cfg, &nodes);
    let want = t.gw.sh("nft list table ip hybrid_gateway");
    for tamper in [
        "nft flush chain ip hybrid_gateway tunnel_forward",
        "nft delete table ip hybrid_gateway",
        "nft flush set ip hybrid_gateway vpc_cidrs && nft add element ip hybrid_gateway vpc_cidrs { 0.0.0.0/1 }",
        "nft flush set ip hybrid_gateway nodes && nft add element ip hybrid_gateway nodes { 10.99.0.66 }",
    ] {
        t.gw.sh(tamper);
        let r = t.gw.run(|| async {
            let (dp, _) = Datapath::setup(&cfg, ip(GW_IP)).await.unwrap();
            dp.reconcile(&nodes, &cfg.gateway.hybrid_pod_cidrs).await.unwrap()
        });
        assert!(r.report.errors.is_empty(), "{:?}", r.report.errors);
        // Counters differ by packets; compare the table without them.
        let strip = |s: &str| s.lines().filter(|l| !l.contains("packets")).collect::<Vec<_>>().join("\n");
        assert_eq!(strip(&t.gw.sh("nft list table ip hybrid_gateway")), strip(&want), "after {tamper}");
    }
}

/// Forwarding throughput VPC host → pod through the gateway, without and with the filter,
/// in the same run: `cargo test --test datapath filter_throughput -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn filter_throughput() {
    let t = topology();
    let nodes = [node("n1", NODE_IP, &["192.168.32.0/25"])];
    let _server = t.node.spawn("iperf3", &["-s", "-B", "192.168.32.10"]);
    std::thread::sleep(Duration::from_millis(500));
    let run = |label: &str, extra: &str| {
        set_up(&t.gw, &config(extra), &nodes);
        let mut results = Vec::new();
        for _ in 0..3 {
            let out = t.vpc.sh("iperf3 -c 192.168.32.10 -t 5 -J");
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            results.push(
                v["end"]["sum_received"]["bits_per_second"]
                    .as_f64()
                    .unwrap()
                    / 1e9,
            );
        }
        println!("{label}: {results:.2?} Gbit/s");
        results
    };
    let off = run("filter off", "[datapath]\nfilter = false\n");
    let on = run("filter on ", "");
    let off2 = run("filter off", "[datapath]\nfilter = false\n");
    let on2 = run("filter on ", "");
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "mean off {:.2} Gbit/s, on {:.2} Gbit/s",
        mean(&[off, off2].concat()),
        mean(&[on, on2].concat())
    );
}

/// What was seen between breaking something and its repair.
struct Repaired {
    after: Duration,
    /// `/readyz` answered 503 at least once meanwhile.
    saw_unready: bool,
}

/// Runs `breaking`, then polls `/readyz` and `repaired` until the latter holds: how long
/// that took, and whether readiness said so meanwhile.
fn watch_repair(ns: &Netns, breaking: &str, repaired: impl Fn() -> bool) -> Repaired {
    // A pass already under way when the test breaks something (one woken by an earlier
    // repair's own table rewrite, say) can repair it before the first look: readiness then
    // says ready and the thing is fine again, which proves nothing either way. Break it
    // again then (bounded). Ready while still broken fails below, at any attempt.
    let mut attempt = 0;
    loop {
        attempt += 1;
        ns.sh(breaking);
        let t = std::time::Instant::now();
        let mut saw_unready = false;
        let mut first = None;
        let ok = wait_until(Duration::from_secs(20), || {
            let is_ready = ready(ns);
            saw_unready |= !is_ready;
            let fixed = repaired();
            first.get_or_insert(is_ready && fixed);
            fixed
        });
        assert!(ok, "not repaired after `{breaking}`");
        let after = t.elapsed();
        if first == Some(true) && attempt < 3 {
            println!("`{breaking}` was repaired before the first look ({after:?}); again");
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        assert!(
            wait_until(Duration::from_secs(2), || ready(ns)),
            "not ready again after repairing `{breaking}`"
        );
        return Repaired { after, saw_unready };
    }
}

/// The daemon on the gateway with one static node (`n1` at NODE_IP, 192.168.32.0/25) and
/// the given `datapath.resync_interval`; and its directory, for the caller to remove.
fn one_node_daemon(t: &Topology, resync: &str) -> (support::Proc, std::path::PathBuf) {
    let dir = tempdir();
    let cfg_path = dir.join("config.toml");
    let nodes_path = dir.join("nodes.toml");
    std::fs::write(
        &cfg_path,
        format!("[gateway]\nnode_ip = \"{GW_IP}\"\nvpc_cidrs = [\"10.250.0.0/16\"]\nhybrid_pod_cidrs = [\"192.168.32.0/23\"]\n[datapath]\nresync_interval = \"{resync}\"\n"),
    )
    .unwrap();
    std::fs::write(
        &nodes_path,
        format!("[[node]]\nname = \"n1\"\nip = \"{NODE_IP}\"\npod_cidrs = [\"192.168.32.0/25\"]\n"),
    )
    .unwrap();
    let daemon = t.gw.spawn(
        env!("CARGO_BIN_EXE_hybrid-gateway"),
        &[
            "run",
            "--config",
            cfg_path.to_str().unwrap(),
            "--static-nodes",
            nodes_path.to_str().unwrap(),
        ],
    );
    (daemon, dir)
}

/// The filter table flushed or deleted is put back at once (nftables notifications), not
/// at the resync: the resync here is a minute away, so without the notification both
/// repairs would miss the 20 s `watch_repair` allows.
#[test]
fn a_flushed_or_deleted_filter_table_is_repaired_at_once() {
    let t = topology();
    let (daemon, dir) = one_node_daemon(&t, "60s");
    let intact = || {
        let out = t.gw.try_sh("nft list table ip hybrid_gateway");
        let text = String::from_utf8_lossy(&out.stdout);
        text.contains("vxlan-from-nodes-only") && text.contains(NODE_IP)
    };
    assert!(
        wait_until(Duration::from_secs(10), || intact() && ready(&t.gw)),
        "filter never installed"
    );
    let flushed = watch_repair(&t.gw, "nft flush table ip hybrid_gateway", intact);
    assert!(
        flushed.after < Duration::from_secs(2),
        "flushed table repaired after {:?}",
        flushed.after
    );
    let deleted = watch_repair(&t.gw, "nft delete table ip hybrid_gateway", intact);
    assert!(
        deleted.after < Duration::from_secs(2),
        "deleted table repaired after {:?}",
        deleted.after
    );
    let ping = t.vpc.try_sh("ping -c 1 -W 1 192.168.32.10");
    assert!(ping.status.success(), "no forwarding after the repairs");
    println!(
        "filter repair times with a 60 s resync: table flushed {:?}, table deleted {:?}",
        flushed.after, deleted.after
    );
    drop(daemon);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn drift_is_repaired_at_once_on_link_events_and_at_the_resync_otherwise() {
    let t = topology();
    let (daemon, dir) = one_node_daemon(&t, "5s");
    let programmed = || {
        let out = t.gw.try_sh("ip route show dev hybrid_vxlan0");
        String::from_utf8_lossy(&out.stdout).contains("192.168.32.0/25")
    };
    assert!(
        wait_until(Duration::from_secs(10), programmed),
        "not programmed"
    );
    let up = || {
        let out = t.gw.try_sh("ip -j link show hybrid_vxlan0");
        String::from_utf8_lossy(&out.stdout).contains("\"UP\"") && programmed()
    };
    let forwards = || {
        t.vpc
            .try_sh("ping -c 1 -W 1 192.168.32.10")
            .status
            .success()
    };
    assert!(forwards());
    assert!(
        wait_until(Duration::from_secs(5), || ready(&t.gw)),
        "never ready"
    );

    // Link events: repaired well within the 5 s resync.
    let deleted = watch_repair(&t.gw, "ip link del hybrid_vxlan0", up);
    assert!(
        deleted.after < Duration::from_secs(2),
        "device deletion repaired after {:?}",
        deleted.after
    );
    assert!(forwards(), "no forwarding after the device came back");
    let down = watch_repair(&t.gw, "ip link set hybrid_vxlan0 down", up);
    assert!(
        down.after < Duration::from_secs(2),
        "device down repaired after {:?}",
        down.after
    );

    // A device the daemon cannot put back (a foreign one took the name): not ready and
    // the interface gauge down for as long as that lasts; back at once when it goes.
    // The daemon is stopped for the swap: a link event wakes it within milliseconds, and
    // it would recreate its device between the deletion and the rename (seen under load).
    std::thread::sleep(Duration::from_millis(300));
    daemon.signal(libc::SIGSTOP);
    let swapped = t.gw.try_sh(
        "ip link add fgn1 type veth peer name fgn0 && ip link del hybrid_vxlan0 && \
         ip link set fgn1 name hybrid_vxlan0",
    );
    daemon.signal(libc::SIGCONT);
    assert!(
        swapped.status.success(),
        "the foreign device swap failed: {}",
        String::from_utf8_lossy(&swapped.stderr)
    );
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..4 {
        let (code, body) = http_get(&t.gw, 8088, "/readyz");
        assert_eq!(
            code, 503,
            "ready while a foreign device holds the name: {body}"
        );
        let m = scrape(&t.gw);
        assert_eq!(
            gauge(&m, "hybrid_gateway_vxlan_interface_up"),
            Some(0),
            "{m}"
        );
        assert_eq!(gauge(&m, "hybrid_gateway_ready"), Some(0), "{m}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let foreign = watch_repair(&t.gw, "ip link del hybrid_vxlan0", up);
    assert!(
        foreign.after < Duration::from_secs(2),
        "device repaired {:?} after the foreign one went",
        foreign.after
    );
    assert!(forwards(), "no forwarding after the foreign device went");

    // No event for these: the resync puts them right. Readiness looks at the kernel when
    // asked, so it says so from the moment forwarding is off.
    let forwarding = watch_repair(&t.gw, "sysctl -qw net.ipv4.ip_forward=0", || {
        t.gw.sysctl("net.ipv4.ip_forward") == "1"
    });
    assert!(
        forwarding.after < Duration::from_secs(7),
        "ip_forward repaired after {:?}",
        forwarding.after
    );
    assert!(
        forwarding.saw_unready,
        "/readyz said ready while ip_forward was 0"
    );
    let filter = watch_repair(&t.gw, "nft flush table ip hybrid_gateway", || {
        t.gw.sh("nft list chain ip hybrid_gateway underlay_in")
            .contains("vxlan-from-nodes-only")
    });
    assert!(
        filter.after < Duration::from_secs(7),
        "filter repaired after {:?}",
        filter.after
    );
    assert!(forwards());
    println!(
        "repair times (readiness false seen meanwhile): device deleted {:?} ({}), set down {:?} ({}), \
         foreign device removed {:?} ({}), ip_forward=0 {:?} ({}), filter table flushed {:?} ({})",
        deleted.after,
        deleted.saw_unready,
        down.after,
        down.saw_unready,
        foreign.after,
        foreign.saw_unready,
        forwarding.after,
        forwarding.saw_unready,
        filter.after,
        filter.saw_unready,
    );

    let metrics = scrape(&t.gw);
    let count = |what: &str| -> u64 {
        let prefix = format!("hybrid_gateway_datapath_repairs_total{{what=\"{what}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(count("device") >= 2, "{metrics}");
    assert!(count("sysctl") >= 1, "{metrics}");
    assert!(count("filter") >= 1, "{metrics}");
    assert!(metrics.contains("hybrid_gateway_vxlan_interface_up 1\n"));
    assert!(
        metrics.contains("hybrid_gateway_filter_packets_total{counter=\"vxlan_not_from_node\"}"),
        "{metrics}"
    );
    drop(daemon);
    std::fs::remove_dir_all(&dir).ok();
}

fn hybrid_cilium_node(name: &str, ip: &str, cidrs: &[&str]) -> kube::api::DynamicObject {
    use hybrid_gateway::k8s::cilium_nodes;
    let mut o = kube::api::DynamicObject::new(name, &cilium_nodes::api_resource()).data(
        serde_json::json!({
            "spec": {"addresses": [{"type": "InternalIP", "ip": ip}], "ipam": {"podCIDRs": cidrs}}
        }),
    );
    o.metadata.labels = Some(
        [(
            "eks.amazonaws.com/compute-type".to_string(),
            "hybrid".to_string(),
        )]
        .into(),
    );
    o
}

/// A gateway rebooted while the Kubernetes API is unreachable forwards from the node set
/// snapshot it kept, says so, and lets the live set win once the API answers.
#[test]
fn cold_boot_without_the_api_forwards_from_the_snapshot_until_the_live_set_wins() {
    use hybrid_gateway::k8s::cilium_nodes;
    use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
    use support::k8s::{client, ApiServer};

    let t = topology();
    let server = ApiServer::start_in(Some(&t.gw));
    let state = server.dir.join("state");
    let cfg = server.dir.join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nnode_ip = \"{GW_IP}\"\nvpc_cidrs = [\"10.250.0.0/16\"]\nhybrid_pod_cidrs = [\"192.168.32.0/23\"]\n\
             [datapath]\nstate_dir = \"{}\"\ncold_start_wait = \"2s\"\n[kubernetes]\nkubeconfig = \"{}\"\n",
            state.display(),
            server.daemon_kubeconfig().display()
        ),
    )
    .unwrap();
    let admin_cfg = server.admin_kubeconfig();
    let api = |f: fn(Api<DynamicObject>) -> futures::future::BoxFuture<'static, ()>| {
        let admin_cfg = admin_cfg.clone();
        t.gw.run(|| async move {
            let admin = client(&admin_cfg).await;
            f(Api::all_with(admin, &cilium_nodes::api_resource())).await
        })
    };
    // n1 is the real node of the topology; n2 exists only in the API, and only until the
    // gateway is down.
    api(|api| {
        Box::pin(async move {
            for o in [
                hybrid_cilium_node("n1", NODE_IP, &["192.168.32.0/25"]),
                hybrid_cilium_node("n2", "10.99.0.7", &["192.168.33.0/26"]),
            ] {
                api.create(&PostParams::default(), &o).await.unwrap();
            }
        })
    });
    let routes = || {
        String::from_utf8_lossy(&t.gw.try_sh("ip route show dev hybrid_vxlan0").stdout).to_string()
    };
    let run = || {
        t.gw.spawn(
            env!("CARGO_BIN_EXE_hybrid-gateway"),
            &["run", "--config", cfg.to_str().unwrap()],
        )
    };
    let stop = |d: support::Proc| {
        d.signal(libc::SIGTERM);
        let out = d.wait(Duration::from_secs(10));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).to_string()
    };

    // First life: programs both nodes from the API and keeps them in the state directory.
    let daemon = run();
    assert!(
        wait_until(Duration::from_secs(20), || {
            let r = routes();
            r.contains("192.168.32.0/25") && r.contains("192.168.33.0/26")
        }),
        "first life never programmed: {}",
        routes()
    );
    let snapshot = state.join("nodes.json");
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(
            &snapshot
        )
        .is_ok_and(|s| s.contains("\"n1\"") && s.contains("\"n2\""))),
        "no snapshot with both nodes in {}",
        state.display()
    );
    stop(daemon);

    // While it is down n2 goes away; then the API becomes unreachable, and the host
    // reboots: no device, no routes, no filter.
    api(|api| {
        Box::pin(async move {
            api.delete("n2", &DeleteParams::default()).await.unwrap();
        })
    });
    server.pause();
    t.gw.sh("ip link del hybrid_vxlan0 && nft delete table ip hybrid_gateway");

    let started = std::time::Instant::now();
    let daemon = run();
    assert!(
        wait_until(Duration::from_secs(15), || routes()
            .contains("192.168.32.0/25")),
        "nothing programmed from the snapshot: {}",
        routes()
    );
    let programmed = started.elapsed();
    assert!(
        routes().contains("192.168.33.0/26"),
        "the snapshot's whole set is programmed: {}",
        routes()
    );
    assert!(
        t.vpc
            .try_sh("ping -c 3 -i 0.2 -W 2 192.168.32.10")
            .status
            .success(),
        "no forwarding from the snapshot"
    );
    assert!(ready(&t.gw), "not ready while forwarding from the snapshot");
    let m = scrape(&t.gw);
    assert_eq!(
        gauge(&m, "hybrid_gateway_nodes_from_snapshot"),
        Some(1),
        "{m}"
    );
    assert!(
        gauge(&m, "hybrid_gateway_nodes_snapshot_age_seconds").is_some_and(|a| a >= 1),
        "{m}"
    );
    let status = http_get(&t.gw, 8088, "/status").1;
    assert!(!status.contains("\"nodes_from_snapshot\":null"), "{status}");

    // The API answers again: the live set (n1 only) replaces the snapshot.
    server.resume();
    assert!(
        wait_until(Duration::from_secs(30), || !routes()
            .contains("192.168.33.0/26")),
        "n2, gone from the live set, is still programmed: {}",
        routes()
    );
    assert!(routes().contains("192.168.32.0/25"));
    assert!(
        wait_until(Duration::from_secs(5), || gauge(
            &scrape(&t.gw),
            "hybrid_gateway_nodes_from_snapshot"
        ) == Some(0)),
        "still says it runs from the snapshot"
    );
    assert!(t
        .vpc
        .try_sh("ping -c 2 -i 0.2 -W 2 192.168.32.10")
        .status
        .success());
    let log = stop(daemon);
    assert!(log.contains("programming the node set snapshot"), "{log}");
    assert!(
        log.contains("the live CiliumNode set replaces the snapshot"),
        "{log}"
    );
    println!("cold boot with the API down: snapshot programmed {programmed:?} after start (cold_start_wait 2s)");
}

/// A node event applies its delta only (nothing read back), so drift it did not cause
/// stays until a full pass, which still finds and repairs it exactly.
#[test]
fn node_events_apply_their_delta_and_full_passes_still_repair_drift() {
    use hybrid_gateway::datapath::Scope;
    let (gw, _peer) = gateway();
    let cfg = config("");
    let pods = cfg.gateway.hybrid_pod_cidrs.clone();
    let a = node("a", "10.99.0.2", &["192.168.32.0/26"]);
    let b = node("b", "10.99.0.3", &["192.168.32.64/26"]);
    let nodes_set = || gw.sh("nft list set ip hybrid_gateway nodes");
    gw.run(|| async {
        let (dp, _) = Datapath::setup(&cfg, ip(GW_IP)).await.unwrap();
        dp.reconcile(std::slice::from_ref(&a), &pods).await.unwrap();
        // Drift no event reports: a's route removed by hand.
        gw.sh("ip route del 192.168.32.0/26");
        let r = dp
            .reconcile_scoped(&[a.clone(), b.clone()], &pods, Scope::Changes)
            .await
            .unwrap();
        assert!(r.report.errors.is_empty(), "{:?}", r.report.errors);
        assert_eq!(
            (
                r.report.routes_set,
                r.report.neighbours_set,
                r.report.fdb_set
            ),
            (1, 1, 1),
            "b's entries only"
        );
        assert!(nodes_set().contains("10.99.0.3"), "{}", nodes_set());
        let r = dp
            .reconcile_scoped(&[a.clone(), b.clone()], &pods, Scope::Full)
            .await
            .unwrap();
        assert_eq!(r.report.changes(), 1, "the full pass puts a's route back");
        // a goes: its entries and its filter element, by delta.
        let r = dp
            .reconcile_scoped(std::slice::from_ref(&b), &pods, Scope::Changes)
            .await
            .unwrap();
        assert!(r.report.errors.is_empty(), "{:?}", r.report.errors);
        assert_eq!(
            r.report.changes(),
            4,
            "a's route, ARP, FDB entry and nexthop"
        );
        assert!(!nodes_set().contains("10.99.0.2"), "{}", nodes_set());
        // The filter's node set edited behind its back: removing b's element fails, so
        // the table is rewritten whole instead of the event failing.
        gw.sh("nft flush set ip hybrid_gateway nodes");
        let r = dp
            .reconcile_scoped(&[], &pods, Scope::Changes)
            .await
            .unwrap();
        assert!(r.report.errors.is_empty(), "{:?}", r.report.errors);
        let r = dp
            .reconcile_scoped(&[b.clone(), a.clone()], &pods, Scope::Changes)
            .await
            .unwrap();
        assert!(r.report.errors.is_empty(), "{:?}", r.report.errors);
    });
    assert_eq!(
        kernel(&gw),
        expected(&[
            ("10.99.0.3", &["192.168.32.64/26"]),
            ("10.99.0.2", &["192.168.32.0/26"])
        ])
    );
    let set = nodes_set();
    assert!(
        set.contains("10.99.0.2") && set.contains("10.99.0.3"),
        "{set}"
    );
}

/// The body of `GET path` on 127.0.0.1:`port` inside `ns` (headers cut off).
fn http_body(ns: &Netns, port: u16, path: &str) -> String {
    let text = http_get(ns, port, path).1;
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(text)
}

/// A metric's value in a scrape (the first line starting with `series `).
fn metric(text: &str, series: &str) -> Option<f64> {
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// Tunnel probes go through the node's VTEP: the daemon pings the node's pod-side address
/// (what a CiliumNode's CiliumInternalIP is) and sees it up; the node dropping VXLAN from
/// the gateway takes it down only after `fall` lost rounds, and it comes back after `rise`.
/// Probes use the unprivileged ping socket, as under systemd.
#[test]
fn tunnel_probes_see_the_vtep_go_down_and_come_back() {
    let t = topology();
    // systemd sets this on every host it boots; a fresh namespace has "1 0" (no one).
    t.gw.sh("sysctl -qw net.ipv4.ping_group_range='0 2147483647'");
    let dir = tempdir();
    let cfg_path = dir.join("config.toml");
    let nodes_path = dir.join("nodes.toml");
    std::fs::write(
        &cfg_path,
        format!("[gateway]\nnode_ip = \"{GW_IP}\"\nvpc_cidrs = [\"10.250.0.0/16\"]\nhybrid_pod_cidrs = [\"192.168.32.0/23\"]\n\n[probe]\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 3\n"),
    )
    .unwrap();
    std::fs::write(
        &nodes_path,
        format!("[[node]]\nname = \"n1\"\nip = \"{NODE_IP}\"\npod_cidrs = [\"192.168.32.0/25\"]\nprobe_ip = \"192.168.32.10\"\n"),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_hybrid-gateway");
    let daemon = t.gw.spawn(
        bin,
        &[
            "run",
            "--config",
            cfg_path.to_str().unwrap(),
            "--static-nodes",
            nodes_path.to_str().unwrap(),
        ],
    );
    let up = |want: f64| {
        let text =
            t.gw.try_sh("curl -s --max-time 2 http://127.0.0.1:10080/metrics");
        metric(
            &String::from_utf8_lossy(&text.stdout),
            "hybrid_gateway_node_tunnel_up{node=\"n1\"}",
        ) == Some(want)
    };
    let node_rx = rx_packets(&t.node, "vx");
    assert!(
        wait_until(Duration::from_secs(10), || up(1.0)),
        "the node never came up: {}",
        scrape(&t.gw)
    );
    let metrics = scrape(&t.gw);
    assert_eq!(
        metric(&metrics, "hybrid_gateway_tunnel_health_ratio"),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        rx_packets(&t.node, "vx") > node_rx,
        "the echoes did not arrive through the node's VTEP"
    );
    // The replies came back through the tunnel and the filter's probe rule accepted them.
    let probe_replies =
        t.gw.sh("nft list counter ip hybrid_gateway probe_replies")
            .split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse::<u64>().ok());
    assert!(
        probe_replies.is_some_and(|n| n >= 1),
        "probe_replies: {probe_replies:?}"
    );

    // The node drops every VXLAN packet from the gateway: the tunnel is cut one way, the
    // underlay still works (a ping to the node's IP would still answer).
    t.node.sh("nft add table ip cut && nft add chain ip cut in '{ type filter hook input priority -200; }' && nft add rule ip cut in udp dport 8472 drop");
    let cut = std::time::Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || up(0.0)),
        "the node never went down"
    );
    let down_after = cut.elapsed();
    // Hysteresis: three lost rounds of 200 ms, not one lost echo.
    assert!(
        down_after >= Duration::from_millis(400),
        "down after {down_after:?}: faster than fall = 3 rounds"
    );
    assert!(
        t.gw.try_sh("ping -c 1 -W 1 10.99.0.2").status.success(),
        "the underlay still answers"
    );
    let metrics = scrape(&t.gw);
    assert_eq!(
        metric(&metrics, "hybrid_gateway_tunnel_health_ratio"),
        Some(0.0),
        "{metrics}"
    );
    let status = http_body(&t.gw, 8088, "/status");
    let s: serde_json::Value = serde_json::from_str(&status).expect(&status);
    assert_eq!(s["tunnel"]["down"], 1, "{status}");
    assert_eq!(s["tunnel"]["worst"][0]["node"], "n1", "{status}");
    assert_eq!(s["tunnel"]["worst"][0]["state"], "down", "{status}");

    t.node.sh("nft delete table ip cut");
    let healed = std::time::Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || up(1.0)),
        "the node never came back"
    );
    println!(
        "tunnel probes: down {down_after:?} after the cut, up {:?} after the repair",
        healed.elapsed()
    );
    drop(daemon);
    std::fs::remove_dir_all(&dir).ok();
}

/// CPU seconds (user + system) the process `pid` has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse().unwrap())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f[0] + f[1]) as f64 / hz
}

/// What tunnel probes to 5,000 hybrid nodes cost the gateway: packets per second and CPU,
/// the daemon measured with probes on and off (same nodes, same datapath). The node side is
/// one namespace holding 5,000 node addresses, one promiscuous VXLAN device and each node's
/// CiliumInternalIP on its loopback, so every echo crosses the tunnel both ways.
/// `cargo test --test datapath probe_cost_at_5000_nodes -- --ignored --nocapture`
#[test]
#[ignore = "a measurement, not a check"]
fn probe_cost_at_5000_nodes() {
    const NODES: u32 = 5000;
    let gw = Netns::new("pgw");
    let node = Netns::new("pnode");
    // The VPC-side address first: the probes' source, as the ENI address on EC2.
    gw.sh("ip link add e1 type veth peer name e1p && ip addr add 10.250.0.1/24 dev e1 && ip link set e1 up && ip link set e1p up");
    veth(&gw, "u0", "10.99.0.1/24", &node, "u1", "10.99.0.2/24");
    // The nodes sit behind a router, as on-premises nodes do: one underlay neighbour, not
    // 5,000 (more than the kernel's dynamic neighbour limit of 1,024).
    gw.sh("ip route add 10.100.0.0/16 via 10.99.0.2 dev u0");
    let node_ip = |i: u32| Ipv4Addr::from(u32::from(ip("10.100.0.1")) + i);
    let cidr = |i: u32| Ipv4Addr::from(u32::from(ip("172.16.0.0")) + i * 64);
    let probe = |i: u32| Ipv4Addr::from(u32::from(cidr(i)) + 1);
    let gw_mac = Mac::for_gateway(ip(GW_IP));
    let mut batch = String::new();
    for i in 0..NODES {
        batch += &format!("addr add {}/32 dev lo\n", node_ip(i));
    }
    // VXLAN back to the gateway leaves from a node address (the filter accepts no other).
    batch += &format!("route add {GW_IP}/32 dev u1 src {}\n", node_ip(0));
    for i in 0..NODES {
        batch += &format!("addr add {}/32 dev lo\n", probe(i));
    }
    batch += &format!(
        "link add vx type vxlan id 2 dstport 8472 nolearning\nlink set vx up\n\
         route add 10.250.0.0/16 via {GW_IP} dev vx onlink\n\
         neigh add {GW_IP} lladdr {gw_mac} dev vx nud permanent\n"
    );
    let file = tempdir().join("node.batch");
    std::fs::write(&file, batch).unwrap();
    node.sh(&format!("ip -batch {}", file.display()));
    node.sh(&format!(
        "bridge fdb add {gw_mac} dst {GW_IP} dev vx self permanent"
    ));
    // Each node has its own VTEP MAC; this one device answers for all 5,000 of them.
    node.sh("nft add table netdev allmacs && nft add chain netdev allmacs in '{ type filter hook ingress device vx priority 0; }' && nft add rule netdev allmacs in meta pkttype set host");
    gw.sh("sysctl -qw net.ipv4.ping_group_range='0 2147483647'");

    let dir = tempdir();
    let nodes_path = dir.join("nodes.toml");
    let mut nodes = String::new();
    for i in 0..NODES {
        nodes += &format!(
            "[[node]]\nname = \"hybrid-{i}\"\nip = \"{}\"\npod_cidrs = [\"{}/26\"]\nprobe_ip = \"{}\"\n",
            node_ip(i),
            cidr(i),
            probe(i)
        );
    }
    std::fs::write(&nodes_path, nodes).unwrap();
    let bin = env!("CARGO_BIN_EXE_hybrid-gateway");
    let measure = |target: &str| -> (f64, f64, f64) {
        let cfg_path = dir.join(format!("{target}.toml"));
        std::fs::write(
            &cfg_path,
            format!("[gateway]\nnode_ip = \"{GW_IP}\"\nvpc_cidrs = [\"10.250.0.0/16\"]\nhybrid_pod_cidrs = [\"172.16.0.0/12\"]\n\n[probe]\ntarget = \"{target}\"\n"),
        )
        .unwrap();
        let daemon = gw.spawn(
            bin,
            &[
                "run",
                "--config",
                cfg_path.to_str().unwrap(),
                "--static-nodes",
                nodes_path.to_str().unwrap(),
            ],
        );
        let get = || {
            let out = gw.try_sh("curl -s --max-time 20 http://127.0.0.1:10080/metrics");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let mut last = String::new();
        let settled = wait_until(Duration::from_secs(120), || {
            last = get();
            metric(&last, "hybrid_gateway_hybrid_nodes_configured") == Some(f64::from(NODES))
                && (target == "none"
                    || metric(&last, "hybrid_gateway_tunnel_health_ratio") == Some(1.0))
        });
        let summary: Vec<&str> = last
            .lines()
            .filter(|l| l.starts_with("hybrid_gateway_") && !l.contains("node_tunnel_up{"))
            .collect();
        if !settled {
            daemon.signal(libc::SIGTERM);
            let out = daemon.wait(Duration::from_secs(10));
            panic!(
                "not settled: {summary:#?}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_secs(2));
        let sent = |t: &str| metric(t, "hybrid_gateway_tunnel_probes_sent_total").unwrap_or(0.0);
        let lost = |t: &str| metric(t, "hybrid_gateway_tunnel_probes_lost_total").unwrap_or(0.0);
        let (m0, c0, t0) = (get(), cpu_seconds(daemon.pid()), std::time::Instant::now());
        std::thread::sleep(Duration::from_secs(20));
        let (m1, c1, secs) = (get(), cpu_seconds(daemon.pid()), t0.elapsed().as_secs_f64());
        (
            (sent(&m1) - sent(&m0)) / secs,
            (lost(&m1) - lost(&m0)) / secs,
            (c1 - c0) / secs,
        )
    };
    let (_, _, idle_cpu) = measure("none");
    let (pps, lost_ps, cpu) = measure("cilium-internal-ip");
    println!(
        "probe cost at {NODES} nodes (debug build): {pps:.0} echoes/s sent (+ as many replies), {lost_ps:.1} lost/s; daemon CPU {:.1} % of one core with probes, {:.1} % without: probes cost {:.1} %",
        cpu * 100.0,
        idle_cpu * 100.0,
        (cpu - idle_cpu) * 100.0
    );
    // Every node answered; on a loaded machine a debug build stretches rounds past 1 s.
    assert!(lost_ps < 1.0, "{lost_ps} echoes lost per second");
    assert!(pps > f64::from(NODES) * 0.5, "{pps} echoes/s");
    std::fs::remove_dir_all(&dir).ok();
}

/// The daemon's path: CiliumNode events through the watch's tracker, each published set
/// applied as its node-level change. When the oldest of two conflicting nodes is deleted
/// the newer one takes its CIDR over (and pushes out a third that only the first had let
/// in), in the kernel and in the filter, without reading the kernel: drift elsewhere stays
/// until the full pass repairs it. A node recreated later ranks last and loses.
#[test]
fn watched_node_events_hand_conflicts_over_exactly_and_full_passes_repair_drift() {
    use hybrid_gateway::datapath::Scope;
    use hybrid_gateway::k8s::cilium_nodes::{api_resource, NodeTracker, NodeWatchStats};
    use kube::api::DynamicObject;
    use kube::runtime::watcher::Event;
    use std::sync::Arc;
    let obj = |name: &str, created: i64, ip: &str, cidrs: &[&str]| {
        let mut o = DynamicObject::new(name, &api_resource()).data(serde_json::json!({
            "spec": {
                "addresses": [{"type": "InternalIP", "ip": ip}],
                "ipam": {"podCIDRs": cidrs},
            }
        }));
        o.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::from_second(1_780_000_000 + created).unwrap(),
        ));
        o
    };
    let a = || obj("a", 1, "10.99.0.2", &["192.168.32.0/26"]);
    // b's /25 overlaps a's /26 (rejected while a is there) and c's /26.
    let b = || obj("b", 2, "10.99.0.3", &["192.168.32.0/25"]);
    let c = || obj("c", 3, "10.99.0.4", &["192.168.32.64/26"]);
    let d = || obj("d", 4, "10.99.0.5", &["192.168.33.0/26"]);
    let (gw, _peer) = gateway();
    let cfg = config("");
    let pods = cfg.gateway.hybrid_pod_cidrs.clone();
    let nodes_set = || gw.sh("nft list set ip hybrid_gateway nodes");
    let mut tracker = NodeTracker::new(Arc::new(NodeWatchStats::default()));
    tracker.apply(Event::Init);
    for o in [c(), a(), d(), b()] {
        tracker.apply(Event::InitApply(o));
    }
    let listed = tracker.apply(Event::InitDone).unwrap();
    gw.run(|| async {
        let (dp, _) = Datapath::setup(&cfg, ip(GW_IP)).await.unwrap();
        let r = dp.reconcile_set(&listed, &pods, Scope::Full).await.unwrap();
        assert_eq!(r.nodes, 3, "a, c and d; b loses to a: {:?}", r.rejected);
        // Drift no event reports: d's route removed by hand.
        gw.sh("ip route del 192.168.33.0/26");
        let gone = tracker.apply(Event::Delete(a())).unwrap();
        let r = dp
            .reconcile_set(&gone, &pods, Scope::Changes)
            .await
            .unwrap();
        assert!(r.report.errors.is_empty(), "{:?}", r.report.errors);
        let rep = &r.report;
        assert_eq!(
            (
                rep.routes_set,
                rep.routes_deleted,
                rep.neighbours_set,
                rep.neighbours_deleted,
                rep.fdb_set,
                rep.fdb_deleted
            ),
            (1, 2, 1, 2, 1, 2),
            "b in, a and c out; d's missing route untouched"
        );
        assert_eq!(
            r.rejected
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["node c: pod CIDR 192.168.32.64/26 overlaps 192.168.32.0/25 of node b"]
        );
        let set = nodes_set();
        assert!(
            set.contains("10.99.0.3") && !set.contains("10.99.0.2") && !set.contains("10.99.0.4"),
            "{set}"
        );
        let r = dp.reconcile_set(&gone, &pods, Scope::Full).await.unwrap();
        assert_eq!(r.report.changes(), 1, "the full pass puts d's route back");
        // a comes back as a new object: now the newest, it loses to b.
        let back = tracker
            .apply(Event::Apply(obj("a", 9, "10.99.0.2", &["192.168.32.0/26"])))
            .unwrap();
        let r = dp
            .reconcile_set(&back, &pods, Scope::Changes)
            .await
            .unwrap();
        assert_eq!(r.report.changes(), 0);
        assert_eq!(
            r.rejected
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            [
                "node c: pod CIDR 192.168.32.64/26 overlaps 192.168.32.0/25 of node b",
                "node a: pod CIDR 192.168.32.0/26 overlaps 192.168.32.0/25 of node b",
            ]
        );
    });
    assert_eq!(
        kernel(&gw),
        expected(&[
            ("10.99.0.3", &["192.168.32.0/25"]),
            ("10.99.0.5", &["192.168.33.0/26"])
        ])
    );
}

/// The filter's node elements change over nfnetlink in one transaction: both ways at
/// once, and a removal of an element that is not there fails without changing anything
/// (the caller then rewrites the table).
#[test]
fn node_elements_change_over_netlink_atomically() {
    use hybrid_gateway::datapath::nft_elements::ElementSocket;
    let (gw, _peer) = gateway();
    gw.sh(
        "nft add table ip hgw_elements && nft add set ip hgw_elements nodes '{ type ipv4_addr; }'",
    );
    let list = || gw.sh("nft list set ip hgw_elements nodes");
    // One socket for every batch, as the datapath keeps it: a refused batch must leave it
    // usable and its answer must not be taken for the next batch's.
    gw.run(|| async {
        let mut socket = ElementSocket::open().unwrap();
        socket
            .update(
                "hgw_elements",
                "nodes",
                &[ip("10.99.0.2"), ip("10.99.0.3")],
                &[],
            )
            .await
            .unwrap();
        let set = list();
        assert!(
            set.contains("10.99.0.2") && set.contains("10.99.0.3"),
            "{set}"
        );
        let err = socket
            .update(
                "hgw_elements",
                "nodes",
                &[ip("10.99.0.4")],
                &[ip("10.99.0.9")],
            )
            .await
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");
        assert!(
            !list().contains("10.99.0.4"),
            "the failed batch added nothing: {}",
            list()
        );
        socket
            .update(
                "hgw_elements",
                "nodes",
                &[ip("10.99.0.4")],
                &[ip("10.99.0.2")],
            )
            .await
            .unwrap();
        let set = list();
        assert!(
            !set.contains("10.99.0.2") && set.contains("10.99.0.3") && set.contains("10.99.0.4"),
            "{set}"
        );
    });
}
