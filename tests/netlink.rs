//! The netlink and netns modules against a real kernel, checked with `ip -j`.

use crate::harness::{ip_json, link_names, private_host, sh};
use netbox::sys::netlink::{BridgeSpec, Netlink, NetlinkError, VethSpec};
use netbox::sys::netns::{self, NetNs};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn veth(host: &str, peer: &str, controller: Option<u32>) -> VethSpec {
    VethSpec {
        host_name: host.into(),
        peer_name: peer.into(),
        controller,
        mtu: None,
        peer_mac: None,
        host_mac: None,
        alias: Some("netbox:test".into()),
    }
}

#[test]
fn bridge_is_created_once_and_reused() {
    if !private_host("netlink::bridge_is_created_once_and_reused") {
        return;
    }
    rt().block_on(async {
        let nl = Netlink::connect().expect("connect");
        let spec = BridgeSpec {
            name: "nbtest0".into(),
            mtu: Some(1400),
        };
        let first = nl.ensure_bridge(&spec).await.expect("create");
        let second = nl.ensure_bridge(&spec).await.expect("reuse");
        assert_eq!(first.index, second.index);
    });
    let link = &ip_json("-d link show nbtest0")[0];
    assert_eq!(link["linkinfo"]["info_kind"], "bridge");
    assert_eq!(link["mtu"], 1400);
    assert!(link["flags"]
        .as_array()
        .expect("flags")
        .iter()
        .any(|f| f == "UP"));
}

#[test]
fn a_non_bridge_under_the_bridge_name_is_refused() {
    if !private_host("netlink::a_non_bridge_under_the_bridge_name_is_refused") {
        return;
    }
    sh("ip link add nbtest0 type veth peer name nbtest0p");
    rt().block_on(async {
        let nl = Netlink::connect().expect("connect");
        let err = nl
            .ensure_bridge(&BridgeSpec {
                name: "nbtest0".into(),
                mtu: None,
            })
            .await
            .expect_err("veth is not a bridge");
        assert!(matches!(err, NetlinkError::NotABridge { .. }), "{err}");
    });
}

#[test]
fn veth_peer_is_born_inside_the_namespace_under_its_final_name() {
    if !private_host("netlink::veth_peer_is_born_inside_the_namespace_under_its_final_name") {
        return;
    }
    let ns = netns::create_named("peer-test").expect("named netns");
    rt().block_on(async {
        let nl = Netlink::connect().expect("connect");
        let bridge = nl
            .ensure_bridge(&BridgeSpec {
                name: "nbtest0".into(),
                mtu: None,
            })
            .await
            .expect("bridge");
        let host = nl
            .create_veth(&veth("nbxhost1", "eth0", Some(bridge.index)), &ns)
            .await
            .expect("veth");
        assert_eq!(host.controller, Some(bridge.index));
        // The same name on the host side again is refused with the name in the error.
        let err = nl
            .create_veth(&veth("nbxhost1", "eth1", None), &ns)
            .await
            .expect_err("duplicate");
        assert!(err.to_string().contains("nbxhost1"), "{err}");
    });
    let host = &ip_json("-d link show nbxhost1")[0];
    assert_eq!(host["master"], "nbtest0");
    assert_eq!(host["ifalias"], "netbox:test");
    // One queue each way on both ends, as asked (not one per CPU cut down to one).
    let peer = &ip_json("-n peer-test -d link show eth0")[0];
    for end in [host, peer] {
        assert_eq!(end["num_tx_queues"], 1, "{end}");
        assert_eq!(end["num_rx_queues"], 1, "{end}");
    }
    let inside = ip_json("-n peer-test link show");
    let names: Vec<&str> = inside
        .as_array()
        .expect("links")
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .collect();
    assert_eq!(names, ["lo", "eth0"]);
    assert!(!link_names().contains(&"eth0".to_string()));
    netns::delete_named("peer-test").expect("delete");
    netns::delete_named("peer-test").expect("delete twice");
}

#[test]
fn addresses_and_routes_are_set_inside_through_a_socket_opened_there() {
    if !private_host("netlink::addresses_and_routes_are_set_inside_through_a_socket_opened_there") {
        return;
    }
    let ns = netns::create_named("addr-test").expect("named netns");
    let socket = ns
        .run_in(Netlink::open_socket)
        .expect("enter")
        .expect("socket");
    rt().block_on(async {
        let host = Netlink::connect().expect("connect");
        let inside = Netlink::from_socket(socket).expect("inside");
        host.create_veth(&veth("nbxhost2", "eth0", None), &ns)
            .await
            .expect("veth");
        let eth0 = inside
            .link_by_name("eth0")
            .await
            .expect("lookup")
            .expect("eth0 inside");
        inside.loopback_up().await.expect("lo up");
        inside
            .add_address(&eth0, "10.9.0.2/24".parse().expect("cidr"))
            .await
            .expect("v4");
        inside
            .add_address(&eth0, "fd00:9::2/64".parse().expect("cidr"))
            .await
            .expect("v6");
        // Repeating an address on the same link is accepted.
        inside
            .add_address(&eth0, "10.9.0.2/24".parse().expect("cidr"))
            .await
            .expect("same address again");
        inside.set_up(eth0.index, "eth0").await.expect("up");
        inside
            .add_route(
                &eth0,
                "0.0.0.0/0".parse().expect("cidr"),
                Some("10.9.0.1".parse().expect("ip")),
            )
            .await
            .expect("default route");
        let routes = inside.routes().await.expect("routes");
        assert!(routes
            .iter()
            .any(|r| r.dst.prefix() == 0 && r.gateway == Some("10.9.0.1".parse().expect("ip"))));
    });
    let addrs = ip_json("-n addr-test addr show dev eth0");
    let infos = addrs[0]["addr_info"].as_array().expect("addr_info").clone();
    let v6 = infos
        .iter()
        .find(|a| a["local"] == "fd00:9::2")
        .expect("v6 address");
    // nodad: never tentative.
    assert!(v6.get("tentative").is_none(), "{v6}");
    assert!(infos
        .iter()
        .any(|a| a["local"] == "10.9.0.2" && a["prefixlen"] == 24));
    let routes = ip_json("-n addr-test route show default");
    assert_eq!(routes[0]["gateway"], "10.9.0.1");
    drop(ns);
    netns::delete_named("addr-test").expect("delete");
}

#[test]
fn an_address_held_by_another_link_is_reported_with_its_holder() {
    if !private_host("netlink::an_address_held_by_another_link_is_reported_with_its_holder") {
        return;
    }
    sh("ip link add nbtesta type bridge && ip addr add 10.8.0.1/24 dev nbtesta");
    rt().block_on(async {
        let nl = Netlink::connect().expect("connect");
        let bridge = nl
            .ensure_bridge(&BridgeSpec {
                name: "nbtestb".into(),
                mtu: None,
            })
            .await
            .expect("bridge");
        let err = nl
            .ensure_address(&bridge, "10.8.0.1/24".parse().expect("cidr"))
            .await
            .expect_err("held by nbtesta");
        let msg = err.to_string();
        assert!(
            msg.contains("nbtestb") && msg.contains("nbtesta") && msg.contains("10.8.0.1"),
            "{msg}"
        );
    });
}

#[test]
fn anonymous_namespaces_differ_from_the_host_and_die_with_their_handle() {
    if !private_host("netlink::anonymous_namespaces_differ_from_the_host_and_die_with_their_handle")
    {
        return;
    }
    let here = NetNs::current().expect("current").inode().expect("inode");
    let ns = NetNs::create().expect("create");
    let there = ns.inode().expect("inode");
    assert_ne!(here, there);
    let seen_inside = ns
        .run_in(|| NetNs::current().and_then(|n| n.inode()))
        .expect("enter")
        .expect("inode");
    assert_eq!(seen_inside, there);
    // The switch happened on a helper thread: this thread is still in the host namespace.
    assert_eq!(
        NetNs::current().expect("current").inode().expect("inode"),
        here
    );
}

#[test]
fn named_namespaces_are_visible_to_ip_netns() {
    if !private_host("netlink::named_namespaces_are_visible_to_ip_netns") {
        return;
    }
    netns::create_named("visible").expect("create");
    assert!(sh("ip netns list").contains("visible"));
    assert!(matches!(
        netns::create_named("visible"),
        Err(netns::NetnsError::Exists { .. })
    ));
    sh("ip netns exec visible ip link set lo up");
    netns::delete_named("visible").expect("delete");
    assert!(!sh("ip netns list").contains("visible"));
    assert!(netns::create_named("../escape").is_err());
}
