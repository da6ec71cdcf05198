//! fabric's own nftables table (`inet fabric`), replaced atomically as a whole through
//! `nft -f -` (the way knftables drives nftables): anti-spoofing on every pod's host veth, the
//! guard on the node's tunnel end, and masquerade for pod traffic leaving the cluster network,
//! for IPv4 and (on a dual-stack network) IPv6. [`apply`] and [`check`] are how fabricd hands `nft` any ruleset, the policy
//! table's too.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use ipnet::{Ipv4Net, Ipv6Net};

use tunnel::TunnelEnds;

use crate::command::{self, CommandError};

/// The table's name; everything fabric puts in netfilter lives in it.
pub const TABLE: &str = "fabric";

/// A local pod as the firewall sees it: its host veth and its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPort {
    /// The host-side veth.
    pub veth: String,
    /// The pod's IPv4 address.
    pub ip: Ipv4Addr,
    /// The pod's IPv6 address, on a dual-stack network.
    pub ipv6: Option<Ipv6Addr>,
}

/// The latest ends of the node's tunnels, shared by the agent (which learns them from the
/// leases on every pass) and every pod network it opens (which rewrite the table on ADD and
/// DEL): whoever writes the table next writes them.
#[derive(Debug, Clone, Default)]
pub struct TunnelGuard(Arc<Mutex<Option<TunnelEnds>>>);

impl TunnelGuard {
    /// Records the ends the next table carries.
    pub fn set(&self, ends: Option<TunnelEnds>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = ends;
    }

    /// The ends recorded last.
    pub fn get(&self) -> Option<TunnelEnds> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What a node's table is made of.
#[derive(Debug, Clone, Copy)]
pub struct NodeRules<'a> {
    /// The cluster's pod network (masquerade stops at it).
    pub cluster: Ipv4Net,
    /// The cluster's IPv6 pod network, on a dual-stack network.
    pub cluster6: Option<Ipv6Net>,
    /// The node's local pods.
    pub pods: &'a [PodPort],
    /// The ends of the node's tunnels, for a backend that encapsulates.
    pub tunnel: Option<&'a TunnelEnds>,
}

/// The ruleset for a node:
///
/// - **anti-spoofing**: a packet entering from a pod's veth with any source address but the
///   pod's own is dropped, whatever the policy (IPv6 link-local sources stay allowed:
///   neighbour discovery needs them); so are router advertisements and redirects from pods
///   (a pod must not steer the node's routing);
/// - **tunnel guard**: no pod may send to any node's tunnel end (its encapsulation port on its
///   underlay address), and the local tunnel end takes datagrams only from known nodes, on
///   the node's underlay address: a hand-built VXLAN frame would otherwise be decapsulated
///   and judged as the inner source it claims;
/// - **masquerade**: traffic from pods to anywhere outside the cluster network (and not
///   multicast) leaves with the node's address.
///
/// Pods and nodes are set elements, so the rules stay a handful whatever their number. The
/// table is `inet`, so one table serves both families; an `ip fabric` table left by an older
/// fabricd is removed in the same transaction.
pub fn ruleset(rules: &NodeRules<'_>) -> String {
    let pods = rules.pods;
    let veths = elements(pods.iter().map(|p| format!("\"{}\"", p.veth)));
    let addrs = elements(pods.iter().map(|p| format!("\"{}\" . {}", p.veth, p.ip)));
    let addrs6 = elements(
        pods.iter()
            .filter_map(|p| Some(format!("\"{}\" . {}", p.veth, p.ipv6?))),
    );
    let (nodes, ends, guard) = match rules.tunnel {
        Some(t) => {
            let port = t.local.port();
            let local = t.local.ip();
            (
                elements(t.peers.iter().map(|p| p.ip().to_string())),
                elements(
                    std::iter::once(&t.local)
                        .chain(&t.peers)
                        .map(|e| format!("{} . {}", e.ip(), e.port())),
                ),
                format!(
                    "\tchain tunnel {{\n\
                     \t\ttype filter hook input priority filter - 10; policy accept;\n\
                     \t\tudp dport {port} ip saddr != @nodes drop\n\
                     \t\tudp dport {port} ip daddr != {local} drop\n\
                     \t\tudp dport {port} meta nfproto ipv6 drop\n\
                     \t}}\n"
                ),
            )
        }
        None => (String::new(), String::new(), String::new()),
    };
    let cluster = rules.cluster;
    let masquerade6 = rules.cluster6.map_or_else(String::new, |c6| {
        format!(
            "\t\tip6 saddr {c6} ip6 daddr {c6} return\n\
             \t\tip6 saddr {c6} ip6 daddr ff00::/8 return\n\
             \t\tip6 saddr {c6} masquerade fully-random\n"
        )
    });
    format!(
        "table ip {TABLE}\n\
         delete table ip {TABLE}\n\
         table inet {TABLE}\n\
         delete table inet {TABLE}\n\
         table inet {TABLE} {{\n\
         \tset pod_veths {{\n\t\ttype ifname\n{veths}\t}}\n\
         \tset pod_addrs {{\n\t\ttype ifname . ipv4_addr\n{addrs}\t}}\n\
         \tset pod_addrs6 {{\n\t\ttype ifname . ipv6_addr\n{addrs6}\t}}\n\
         \tset nodes {{\n\t\ttype ipv4_addr\n{nodes}\t}}\n\
         \tset tunnel_ends {{\n\t\ttype ipv4_addr . inet_service\n{ends}\t}}\n\
         \tchain antispoof {{\n\
         \t\ttype filter hook prerouting priority raw; policy accept;\n\
         \t\tiifname @pod_veths iifname . ip saddr != @pod_addrs drop\n\
         \t\tiifname @pod_veths ip6 saddr != fe80::/10 iifname . ip6 saddr != @pod_addrs6 drop\n\
         \t\tiifname @pod_veths icmpv6 type {{ nd-router-advert, nd-redirect }} drop\n\
         \t\tiifname @pod_veths icmp type redirect drop\n\
         \t\tiifname @pod_veths ip daddr . udp dport @tunnel_ends drop\n\
         \t}}\n\
         {guard}\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {cluster} ip daddr {cluster} return\n\
         \t\tip saddr {cluster} ip daddr 224.0.0.0/4 return\n\
         \t\tip saddr {cluster} masquerade fully-random\n\
         {masquerade6}\
         \t}}\n\
         }}\n"
    )
}

/// A set's `elements = { ... }` line, or nothing for an empty set (nft refuses `{ }`).
fn elements(items: impl Iterator<Item = String>) -> String {
    // A set definition refuses the same element twice (two leases may name one node).
    let items: std::collections::BTreeSet<String> = items.collect();
    if items.is_empty() {
        return String::new();
    }
    let items: Vec<String> = items.into_iter().collect();
    format!("\t\telements = {{ {} }}\n", items.join(", "))
}

/// Installs `ruleset` (nft's own syntax; a table is replaced by flushing or deleting it in
/// the same ruleset) atomically: all of it or nothing.
pub fn apply(ruleset: &str) -> Result<(), CommandError> {
    command::feed("nft", &["-f", "-"], ruleset)
}

/// Whether the kernel and `nft` would take `ruleset`, without installing anything.
pub fn check(ruleset: &str) -> Result<(), CommandError> {
    command::feed("nft", &["--check", "-f", "-"], ruleset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ipv6: Option<&str>) -> PodPort {
        PodPort {
            veth: "fab0123456789a".into(),
            ip: "10.244.1.5".parse().unwrap(),
            ipv6: ipv6.map(|s| s.parse().unwrap()),
        }
    }

    fn rules<'a>(pods: &'a [PodPort], tunnel: Option<&'a TunnelEnds>) -> NodeRules<'a> {
        NodeRules {
            cluster: "10.244.0.0/16".parse().unwrap(),
            cluster6: None,
            pods,
            tunnel,
        }
    }

    #[test]
    fn masquerades_only_traffic_leaving_the_cluster() {
        let rules = ruleset(&rules(&[pod(None)], None));
        assert!(rules.contains("elements = { \"fab0123456789a\" . 10.244.1.5 }"));
        assert!(rules.contains("iifname @pod_veths iifname . ip saddr != @pod_addrs drop"));
        assert!(rules.starts_with("table ip fabric\ndelete table ip fabric\n"));
        assert!(rules.contains("delete table inet fabric\ntable inet fabric {"));
        let ret = rules.find("ip daddr 10.244.0.0/16 return").unwrap();
        let masq = rules.find("masquerade").unwrap();
        assert!(ret < masq, "cluster traffic must return before masquerade");
        assert!(!rules.contains("ip6 saddr fd00"));
        assert!(!rules.contains("chain tunnel"), "host-gw has no tunnel end");
    }

    #[test]
    fn dual_stack_pods_may_send_from_their_ipv6_and_link_local_addresses_only() {
        let pods = [pod(Some("fd00:10:244:1::5"))];
        let mut node = rules(&pods, None);
        node.cluster6 = Some("fd00:10:244::/48".parse().unwrap());
        let rules = ruleset(&node);
        assert!(rules.contains("elements = { \"fab0123456789a\" . fd00:10:244:1::5 }"));
        assert!(rules.contains(
            "iifname @pod_veths ip6 saddr != fe80::/10 iifname . ip6 saddr != @pod_addrs6 drop"
        ));
        let ret = rules
            .find("ip6 saddr fd00:10:244::/48 ip6 daddr fd00:10:244::/48 return")
            .unwrap();
        let masq = rules.find("ip6 saddr fd00:10:244::/48 masquerade").unwrap();
        assert!(ret < masq);
    }

    #[test]
    fn pods_may_not_steer_the_nodes_routing() {
        let rules = ruleset(&rules(&[pod(None)], None));
        assert!(
            rules.contains("iifname @pod_veths icmpv6 type { nd-router-advert, nd-redirect } drop")
        );
        assert!(rules.contains("iifname @pod_veths icmp type redirect drop"));
    }

    #[test]
    fn only_known_nodes_reach_the_tunnel_end_and_no_pod_reaches_any() {
        let ends = TunnelEnds {
            local: "172.30.0.11:8472".parse().unwrap(),
            peers: vec![
                "172.30.0.12:8472".parse().unwrap(),
                "172.30.0.13:8472".parse().unwrap(),
            ],
        };
        let rules = ruleset(&rules(&[pod(None)], Some(&ends)));
        assert!(rules.contains("elements = { 172.30.0.12, 172.30.0.13 }"));
        assert!(rules
            .contains("elements = { 172.30.0.11 . 8472, 172.30.0.12 . 8472, 172.30.0.13 . 8472 }"));
        assert!(rules.contains("udp dport 8472 ip saddr != @nodes drop"));
        assert!(rules.contains("udp dport 8472 ip daddr != 172.30.0.11 drop"));
        assert!(rules.contains("udp dport 8472 meta nfproto ipv6 drop"));
        assert!(rules.contains("iifname @pod_veths ip daddr . udp dport @tunnel_ends drop"));
    }

    #[test]
    fn a_node_alone_lets_nobody_reach_its_tunnel_end() {
        let ends = TunnelEnds {
            local: "172.30.0.11:51820".parse().unwrap(),
            peers: vec![],
        };
        let rules = ruleset(&rules(&[], Some(&ends)));
        // An empty set matches nothing, so `!= @nodes` drops every sender.
        assert!(rules.contains("\tset nodes {\n\t\ttype ipv4_addr\n\t}"));
        assert!(rules.contains("udp dport 51820 ip saddr != @nodes drop"));
    }
}
