//! End-to-end tests of the cluster: pods on several nodes reach each other over VXLAN and
//! host-gw; the data path survives a daemon restart, heals hand-made damage, forgets a lost
//! node; concurrent daemons never share a subnet.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::ensure;
use fabric_lab::{Backend, Lab, PodSpec, Signal};
use fabric_tests::{
    eventually, full_mesh, kernel_state, ping, spec, subnets, tcp_connect, up, Listeners,
};

const PORT: u16 = 8080;

fn pod_ips(lab: &Lab) -> BTreeSet<Ipv4Addr> {
    lab.pods().iter().map(|p| p.ip).collect()
}

#[test]
fn vxlan_three_nodes_full_mesh() {
    let lab = up(spec("mesh", 3, 2, Backend::Vxlan));
    assert_eq!(pod_ips(&lab).len(), 6, "pod addresses must be distinct");
    full_mesh(&lab).unwrap();
    // Per node: one route, one neighbour, one FDB entry per remote node, nothing else.
    for node in lab.nodes() {
        let state = kernel_state(&lab, &node.name).unwrap();
        let peer_routes = state
            .routes
            .iter()
            .filter(|r| r.contains("dev fabric.1"))
            .count();
        assert_eq!(peer_routes, 2, "{}: {:?}", node.name, state.routes);
        assert_eq!(
            state.neighbours.len(),
            2,
            "{}: {:?}",
            node.name,
            state.neighbours
        );
        assert_eq!(state.fdb.len(), 2, "{}: {:?}", node.name, state.fdb);
        let mtu = lab
            .exec_ok(&node.name, &["cat", "/sys/class/net/fabric.1/mtu"])
            .unwrap();
        assert_eq!(mtu.trim(), "1450", "VXLAN MTU = underlay 1500 - 50");
    }
    // Converged means idempotent: later resync passes (every 5 s) change nothing.
    let converged = |lab: &Lab| {
        let log = std::fs::read_to_string(&lab.node("node1").unwrap().log).unwrap();
        log.matches("data path converged").count()
    };
    let passes = converged(&lab);
    std::thread::sleep(Duration::from_secs(11));
    assert_eq!(
        converged(&lab),
        passes,
        "a resync pass changed the kernel state"
    );
    // Pods leaving the cluster network are masqueraded: the switch has no route back to
    // the pod network, so a reply only arrives if the source was rewritten.
    ping(&lab, &lab.pods()[0].name, Ipv4Addr::new(172, 30, 0, 1)).unwrap();
}

#[test]
fn host_gw_three_nodes_full_mesh() {
    let lab = up(spec("hostgw", 3, 1, Backend::HostGw));
    full_mesh(&lab).unwrap();
    let state = kernel_state(&lab, "node1").unwrap();
    let via_nodes = state
        .routes
        .iter()
        .filter(|r| r.contains("via 172.30.0."))
        .count();
    assert_eq!(via_nodes, 2, "{:?}", state.routes);
}

#[test]
fn restart_keeps_subnet_and_pod_addresses_without_duplicates() {
    let mut lab = up(spec("restart", 3, 2, Backend::Vxlan));
    full_mesh(&lab).unwrap();
    let before_subnets = subnets(&lab).unwrap();
    let before_state = kernel_state(&lab, "node2").unwrap();

    lab.stop_fabricd("node2", Signal::SIGKILL).unwrap();
    lab.start_fabricd("node2").unwrap();

    assert_eq!(
        subnets(&lab).unwrap(),
        before_subnets,
        "same subnets after restart"
    );
    full_mesh(&lab).unwrap();
    let after_state = eventually(Duration::from_secs(10), || {
        let s = kernel_state(&lab, "node2")?;
        ensure!(
            s == before_state,
            "node2 state differs: {s:?} vs {before_state:?}"
        );
        Ok(s)
    })
    .unwrap();
    assert_eq!(after_state, before_state, "no duplicate or missing entries");
    // The pool survived: a new pod gets an address no existing pod holds.
    let existing = pod_ips(&lab);
    let pod = lab.add_pod("node2", PodSpec::new("after-restart")).unwrap();
    assert!(!existing.contains(&pod.ip), "{} handed out twice", pod.ip);
}

#[test]
fn reconcile_heals_a_deleted_device_and_stale_entries() {
    let lab = up(spec("heal", 2, 1, Backend::Vxlan));
    full_mesh(&lab).unwrap();
    let before = kernel_state(&lab, "node1").unwrap();
    lab.exec_ok("node1", &["ip", "link", "del", "fabric.1"])
        .unwrap();
    // A stray entry for a node that does not exist must go as well.
    eventually(Duration::from_secs(15), || {
        let s = kernel_state(&lab, "node1")?;
        ensure!(s == before, "not healed yet: {s:?}");
        Ok(())
    })
    .unwrap();
    full_mesh(&lab).unwrap();
    lab.exec_ok(
        "node1",
        &[
            "ip",
            "route",
            "add",
            "10.244.250.0/24",
            "via",
            "10.244.250.0",
            "dev",
            "fabric.1",
            "onlink",
            "proto",
            "0x66",
        ],
    )
    .unwrap();
    eventually(Duration::from_secs(15), || {
        let s = kernel_state(&lab, "node1")?;
        ensure!(s == before, "stale route still there: {:?}", s.routes);
        Ok(())
    })
    .unwrap();
}

#[test]
fn lost_node_is_forgotten_after_its_lease_expires() {
    let mut s = spec("loss", 3, 0, Backend::Vxlan);
    s.lease_ttl = Duration::from_secs(6);
    let mut lab = up(s);
    let subnets = subnets(&lab).unwrap();
    let gone = subnets["node3"].clone();
    let gone_ip = lab.node("node3").unwrap().underlay_ip.to_string();
    eventually(Duration::from_secs(10), || {
        let s = kernel_state(&lab, "node1")?;
        ensure!(
            s.routes.iter().any(|r| r.starts_with(&gone)),
            "no route to node3 yet"
        );
        Ok(())
    })
    .unwrap();

    lab.stop_fabricd("node3", Signal::SIGTERM).unwrap();
    let gone_net = gone.trim_end_matches("/24").to_string();
    for node in ["node1", "node2"] {
        eventually(Duration::from_secs(20), || {
            let s = kernel_state(&lab, node)?;
            let mentions = |v: &[String]| {
                v.iter()
                    .any(|l| l.contains(&gone_net) || l.contains(&gone_ip))
            };
            ensure!(
                !mentions(&s.routes) && !mentions(&s.neighbours) && !mentions(&s.fdb),
                "{node} still has entries for node3: {s:?}"
            );
            ensure!(s.fdb.len() == 1 && s.neighbours.len() == 1, "{node}: {s:?}");
            Ok(())
        })
        .unwrap();
    }
    let leases = fabric_tests::subnets(&lab).unwrap();
    assert!(
        !leases.contains_key("node3"),
        "node3's lease expired: {leases:?}"
    );
}

#[test]
fn twenty_daemons_started_together_get_distinct_subnets() {
    let lab = up(spec("race", 20, 0, Backend::HostGw));
    let subnets = subnets(&lab).unwrap();
    assert_eq!(subnets.len(), 20, "{subnets:?}");
    let distinct: BTreeSet<_> = subnets.values().collect();
    assert_eq!(distinct.len(), 20, "two nodes share a subnet: {subnets:?}");
    for node in lab.nodes() {
        let log = std::fs::read_to_string(&node.log).unwrap_or_default();
        assert!(!log.contains("panicked"), "{}: {log}", node.name);
    }
}

#[test]
fn reserved_subnets_go_to_their_nodes() {
    let mut s = spec("reserve", 3, 1, Backend::Vxlan);
    s.reservations = vec![
        fabric_lab::Reservation {
            subnet: "10.244.3.0/24".into(),
            node: "node1".into(),
        },
        fabric_lab::Reservation {
            subnet: "10.244.1.0/24".into(),
            node: "node3".into(),
        },
    ];
    let lab = up(s);
    let subnets = subnets(&lab).unwrap();
    assert_eq!(subnets["node1"], "10.244.3.0/24");
    assert_eq!(subnets["node3"], "10.244.1.0/24");
    assert!(!["10.244.1.0/24", "10.244.3.0/24"].contains(&subnets["node2"].as_str()));
    full_mesh(&lab).unwrap();
}

/// Gives pod `a` the address `spoofed` as well, pings `to` (pod `b`'s) from it, and asserts
/// that nothing from `spoofed` reaches `b`. Replies could be lost on the way back anyway, so
/// only the destination's view shows whether the packet was dropped at the source. The
/// address is taken away again (IPv6 source selection could otherwise pick it later).
fn assert_spoof_dropped(
    lab: &Lab,
    a: &fabric_lab::Pod,
    b: &fabric_lab::Pod,
    spoofed: IpAddr,
    to: IpAddr,
) {
    let (len, filter) = match spoofed {
        IpAddr::V4(_) => (32, "icmp"),
        IpAddr::V6(_) => (128, "icmp6"),
    };
    let address = format!("{spoofed}/{len}");
    let mut add = vec!["ip", "addr", "add", &address, "dev", "eth0"];
    if spoofed.is_ipv6() {
        add.push("nodad");
    }
    lab.exec_ok(&a.name, &add).unwrap();
    let watch = std::process::Command::new("ip")
        .args([
            "netns", "exec", &b.netns, "timeout", "4", "tcpdump", "-n", "-c", "1", "-i", "eth0",
        ])
        .arg(format!("{filter} and src host {spoofed}"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let (source, target) = (spoofed.to_string(), to.to_string());
    let _ = lab.exec(
        &a.name,
        &["ping", "-c", "2", "-W", "1", "-I", &source, &target],
    );
    let seen = watch.wait_with_output().unwrap();
    let seen = String::from_utf8_lossy(&seen.stdout);
    assert!(
        !seen.contains(&source),
        "a packet from {spoofed} got through: {seen}"
    );
    lab.exec_ok(&a.name, &["ip", "addr", "del", &address, "dev", "eth0"])
        .unwrap();
}

#[test]
fn spoofed_source_addresses_are_dropped() {
    let lab = up(spec("spoof", 2, 1, Backend::Vxlan));
    let (a, b) = (lab.pods()[0].clone(), lab.pods()[1].clone());
    eventually(Duration::from_secs(5), || ping(&lab, &a.name, b.ip)).unwrap();
    // The pod claims a neighbour's address (and one outside the cluster) as its own.
    let fake = Ipv4Addr::from(u32::from(a.ip) + 50);
    for spoofed in [fake, Ipv4Addr::new(192, 0, 2, 7)] {
        assert_spoof_dropped(&lab, &a, &b, spoofed.into(), b.ip.into());
    }
    // Its own address still works.
    ping(&lab, &a.name, b.ip).unwrap();
    let rules = lab
        .exec_ok("node1", &["nft", "list", "table", "inet", "fabric"])
        .unwrap();
    // What an operator finds: the pod's veth and address in the anti-spoofing set.
    assert!(
        rules.contains("iifname . ip saddr != @pod_addrs drop")
            && rules.contains(&format!(" . {}", a.ip)),
        "{rules}"
    );
}

/// A dual-stack lab on `backend`: every pod holds an IPv6 address with its IPv4 address's
/// host part in its node's IPv6 subnet; every pod pings every other over IPv6; cross-node
/// pairs open TCP connections over IPv6; IPv4 still works beside it.
fn dual_stack_mesh(tag: &str, backend: Backend) {
    let mut spec = spec(tag, 2, 2, backend);
    spec.ipv6_network = Some("fd00:10:244::/48".into());
    let lab = up(spec);
    let pods = lab.pods().to_vec();
    for pod in &pods {
        let v6 = pod
            .ipv6
            .unwrap_or_else(|| panic!("{} has no IPv6 address", pod.name));
        let host = |octets: &[u8]| octets[octets.len() - 1];
        assert_eq!(
            host(&v6.octets()),
            host(&pod.ip.octets()),
            "{}: {v6}",
            pod.name
        );
        assert_eq!(
            v6.segments()[..3],
            [0xfd00, 0x10, 0x244],
            "{}: {v6} is outside IPv6Network",
            pod.name
        );
        assert_eq!(
            u32::from(v6.segments()[3]),
            (u32::from(pod.ip) >> 8) & 0xff,
            "{}: {v6} is not in the IPv6 twin of its IPv4 subnet",
            pod.name
        );
    }
    let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
    let _listeners = Listeners::start_v6(&lab, &names, PORT).unwrap();
    for from in &pods {
        for to in pods.iter().filter(|p| p.name != from.name) {
            let v6 = to.ipv6.unwrap();
            eventually(Duration::from_secs(5), || ping(&lab, &from.name, v6)).unwrap();
            if from.node != to.node {
                eventually(Duration::from_secs(5), || {
                    tcp_connect(&lab, &from.name, v6, PORT)
                })
                .unwrap();
                ping(&lab, &from.name, to.ip).unwrap();
            }
        }
    }
}

#[test]
fn dual_stack_vxlan_pods_reach_each_other_over_ipv6() {
    dual_stack_mesh("ds-vx", Backend::Vxlan);
}

#[test]
fn dual_stack_host_gw_pods_reach_each_other_over_ipv6() {
    dual_stack_mesh("ds-gw", Backend::HostGw);
}

#[test]
fn dual_stack_wireguard_pods_reach_each_other_over_ipv6() {
    dual_stack_mesh("ds-wg", Backend::Wireguard);
}

#[test]
fn spoofed_ipv6_source_addresses_are_dropped() {
    let mut spec = spec("spoof6", 2, 1, Backend::Vxlan);
    spec.ipv6_network = Some("fd00:10:244::/48".into());
    let lab = up(spec);
    let (a, b) = (lab.pods()[0].clone(), lab.pods()[1].clone());
    let (a6, b6) = (a.ipv6.unwrap(), b.ipv6.unwrap());
    eventually(Duration::from_secs(5), || ping(&lab, &a.name, b6)).unwrap();
    // A neighbour's address in the cluster, and one outside it.
    let fake = std::net::Ipv6Addr::from(u128::from(a6) + 50);
    for spoofed in [fake, "2001:db8::7".parse().unwrap()] {
        assert_spoof_dropped(&lab, &a, &b, IpAddr::V6(spoofed), b6.into());
    }
    // Its own address still works.
    ping(&lab, &a.name, b6).unwrap();
}
