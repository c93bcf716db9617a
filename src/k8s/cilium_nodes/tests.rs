use serde_json::json;

use super::*;

fn obj(name: &str, created: &str, spec: Value) -> DynamicObject {
    let mut o = DynamicObject::new(name, &api_resource()).data(json!({ "spec": spec }));
    o.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        created.parse().unwrap(),
    ));
    o
}

fn spec(ip: &str, cidrs: &[&str]) -> Value {
    json!({
        "addresses": [{"type": "CiliumInternalIP", "ip": "192.168.32.1"}, {"type": "InternalIP", "ip": ip}],
        "ipam": {"podCIDRs": cidrs},
    })
}

#[test]
fn parses_internal_ip_and_every_ipv4_cidr() {
    let n = parse(&obj(
        "n1",
        "2026-01-01T00:00:00Z",
        spec(
            "10.80.0.2",
            &["192.168.32.0/25", "fd00::/96", "192.168.33.0/25"],
        ),
    ))
    .unwrap();
    assert_eq!(n.ip, "10.80.0.2".parse::<Ipv4Addr>().unwrap());
    assert_eq!(n.pod_cidrs.len(), 2);
    assert_eq!(n.probe_ip, Some("192.168.32.1".parse().unwrap()));
    let dual = json!({"addresses": [{"type": "InternalIP", "ip": "fd00::2"}, {"type": "InternalIP", "ip": "10.80.0.3"}]});
    assert_eq!(
        parse(&obj("n2", "2026-01-01T00:00:00Z", dual.clone()))
            .unwrap()
            .ip
            .to_string(),
        "10.80.0.3"
    );
    assert_eq!(
        parse(&obj("n2", "2026-01-01T00:00:00Z", dual))
            .unwrap()
            .probe_ip,
        None
    );
    // The prober pings IPv4 only; an IPv6 router address first does not hide the IPv4 one.
    let v6_first = json!({"addresses": [
        {"type": "CiliumInternalIP", "ip": "fd00::1"},
        {"type": "CiliumInternalIP", "ip": "192.168.32.7"},
        {"type": "InternalIP", "ip": "10.80.0.4"}]});
    assert_eq!(
        parse(&obj("n3", "2026-01-01T00:00:00Z", v6_first))
            .unwrap()
            .probe_ip,
        Some("192.168.32.7".parse().unwrap())
    );
}

#[test]
fn malformed_nodes_say_why() {
    let cases = [
        (
            json!({"ipam": {"podCIDRs": ["192.168.32.0/25"]}}),
            "no spec.addresses",
        ),
        (
            json!({"addresses": [{"type": "ExternalIP", "ip": "1.2.3.4"}]}),
            "no InternalIP",
        ),
        (
            json!({"addresses": [{"type": "InternalIP", "ip": "10.80.0"}]}),
            "not an IP address",
        ),
        (
            json!({"addresses": [{"type": "InternalIP", "ip": "fd00::1"}]}),
            "only IPv6 InternalIPs",
        ),
        (spec("10.80.0.2", &["192.168.32.0/33"]), "is not a CIDR"),
        (spec("10.80.0.2", &["192.168.32.1/25"]), "host bits"),
        (spec("10.80.0.2", &["fd00::/96"]), "only IPv6 pod CIDRs"),
    ];
    for (s, why) in cases {
        let err = parse(&obj("bad", "2026-01-01T00:00:00Z", s.clone())).unwrap_err();
        assert!(err.contains(why), "{s}: {err}");
    }
    let no_spec = DynamicObject::new("x", &api_resource());
    assert!(parse(&no_spec).unwrap_err().contains("no spec"));
}

fn tracker() -> (NodeTracker, Arc<NodeWatchStats>) {
    let stats = Arc::new(NodeWatchStats::default());
    (NodeTracker::new(stats.clone()), stats)
}

fn names(set: &NodeSet) -> Vec<&str> {
    set.iter().map(|n| n.name.as_str()).collect()
}

#[test]
fn nothing_is_published_before_the_first_list_completes() {
    let (mut t, _) = tracker();
    assert!(t.apply(Event::Init).is_none());
    assert!(t
        .apply(Event::InitApply(obj(
            "n1",
            "2026-01-01T00:00:00Z",
            spec("10.80.0.2", &[])
        )))
        .is_none());
    let set = t
        .apply(Event::InitDone)
        .expect("first sync publishes, even if empty");
    assert_eq!(names(&set), vec!["n1"]);
}

#[test]
fn status_only_updates_publish_nothing() {
    let (mut t, _) = tracker();
    t.apply(Event::Init);
    t.apply(Event::InitApply(obj(
        "n1",
        "2026-01-01T00:00:00Z",
        spec("10.80.0.2", &["192.168.32.0/25"]),
    )));
    t.apply(Event::InitDone);
    let mut same = obj(
        "n1",
        "2026-01-01T00:00:00Z",
        spec("10.80.0.2", &["192.168.32.0/25"]),
    );
    same.data["status"] = json!({"ipam": {"used": {"192.168.32.7": {}}}});
    assert!(t.apply(Event::Apply(same)).is_none());
    let moved = obj(
        "n1",
        "2026-01-01T00:00:00Z",
        spec("10.80.0.9", &["192.168.32.0/25"]),
    );
    assert_eq!(
        t.apply(Event::Apply(moved)).unwrap()[0].ip.to_string(),
        "10.80.0.9"
    );
}

#[test]
fn relist_drops_nodes_deleted_while_disconnected_and_orders_oldest_first() {
    let (mut t, _) = tracker();
    t.apply(Event::Init);
    t.apply(Event::InitApply(obj(
        "young",
        "2026-03-01T00:00:00Z",
        spec("10.80.0.3", &[]),
    )));
    t.apply(Event::InitApply(obj(
        "old",
        "2026-01-01T00:00:00Z",
        spec("10.80.0.2", &[]),
    )));
    t.apply(Event::InitApply(obj(
        "gone",
        "2026-02-01T00:00:00Z",
        spec("10.80.0.4", &[]),
    )));
    assert_eq!(
        names(&t.apply(Event::InitDone).unwrap()),
        vec!["old", "gone", "young"]
    );
    // 410 Gone → the watcher re-lists; "gone" was deleted meanwhile.
    t.apply(Event::Init);
    t.apply(Event::InitApply(obj(
        "young",
        "2026-03-01T00:00:00Z",
        spec("10.80.0.3", &[]),
    )));
    t.apply(Event::InitApply(obj(
        "old",
        "2026-01-01T00:00:00Z",
        spec("10.80.0.2", &[]),
    )));
    assert_eq!(
        names(&t.apply(Event::InitDone).unwrap()),
        vec!["old", "young"]
    );
    // The same list again changes nothing.
    t.apply(Event::Init);
    t.apply(Event::InitApply(obj(
        "young",
        "2026-03-01T00:00:00Z",
        spec("10.80.0.3", &[]),
    )));
    t.apply(Event::InitApply(obj(
        "old",
        "2026-01-01T00:00:00Z",
        spec("10.80.0.2", &[]),
    )));
    assert!(t.apply(Event::InitDone).is_none());
}

#[test]
fn malformed_nodes_are_counted_once_and_left_out() {
    let (mut t, stats) = tracker();
    t.apply(Event::Init);
    t.apply(Event::InitDone);
    let bad = || obj("bad", "2026-01-01T00:00:00Z", json!({"addresses": []}));
    assert!(
        t.apply(Event::Apply(bad())).is_none(),
        "a bad node changes nothing programmable"
    );
    assert!(t.apply(Event::Apply(bad())).is_none());
    assert_eq!(stats.malformed_skipped.load(Ordering::Relaxed), 1);
    let set = t
        .apply(Event::Apply(obj(
            "good",
            "2026-01-01T00:00:00Z",
            spec("10.80.0.2", &[]),
        )))
        .unwrap();
    assert_eq!(names(&set), vec!["good"]);
    // Fixed, then broken differently: counted again.
    t.apply(Event::Apply(obj(
        "bad",
        "2026-01-01T00:00:00Z",
        spec("10.80.0.5", &[]),
    )));
    t.apply(Event::Apply(obj(
        "bad",
        "2026-01-01T00:00:00Z",
        spec("10.80.0.5", &["nope"]),
    )));
    assert_eq!(stats.malformed_skipped.load(Ordering::Relaxed), 2);
    assert!(t
        .apply(Event::Delete(obj("bad", "2026-01-01T00:00:00Z", json!({}))))
        .is_none());
    assert!(t
        .apply(Event::Delete(obj(
            "good",
            "2026-01-01T00:00:00Z",
            json!({})
        )))
        .is_some());
}
