//! fabric's own nftables table (`inet fabric`), replaced atomically as a whole through
//! `nft -f -` (the way knftables drives nftables): anti-spoofing on every pod's host veth, and
//! masquerade for pod traffic leaving the cluster network, for IPv4 and (on a dual-stack
//! network) IPv6. [`apply`] and [`check`] are how fabricd hands `nft` any ruleset, the policy
//! table's too.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

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

/// The ruleset for a node whose pods live in `cluster` (and `cluster6`), with `pods` its local
/// pods: a packet entering from a pod's veth with any source address but the pod's own is
/// dropped, whatever the policy (IPv6 link-local sources stay allowed: neighbour discovery
/// needs them); traffic from pods to anywhere outside the cluster network (and not multicast)
/// leaves with the node's address.
///
/// The table is `inet`, so one table serves both families; an `ip fabric` table left by an
/// older fabricd is removed in the same transaction.
pub fn ruleset(cluster: Ipv4Net, cluster6: Option<Ipv6Net>, pods: &[PodPort]) -> String {
    let mut antispoof = String::new();
    for pod in pods {
        let veth = &pod.veth;
        antispoof.push_str(&format!(
            "\t\tiifname \"{veth}\" ip saddr != {} drop\n",
            pod.ip
        ));
        let allowed6 = match pod.ipv6 {
            Some(ip) => format!("{{ {ip}, fe80::/10 }}"),
            None => "fe80::/10".to_owned(),
        };
        antispoof.push_str(&format!(
            "\t\tiifname \"{veth}\" ip6 saddr != {allowed6} drop\n"
        ));
    }
    let masquerade6 = cluster6.map_or_else(String::new, |c6| {
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
         \tchain antispoof {{\n\
         \t\ttype filter hook prerouting priority raw; policy accept;\n\
         {antispoof}\
         \t}}\n\
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

    #[test]
    fn masquerades_only_traffic_leaving_the_cluster() {
        let rules = ruleset("10.244.0.0/16".parse().unwrap(), None, &[pod(None)]);
        assert!(rules.contains("iifname \"fab0123456789a\" ip saddr != 10.244.1.5 drop"));
        assert!(rules.contains("iifname \"fab0123456789a\" ip6 saddr != fe80::/10 drop"));
        assert!(rules.starts_with("table ip fabric\ndelete table ip fabric\n"));
        assert!(rules.contains("delete table inet fabric\ntable inet fabric {"));
        let ret = rules.find("ip daddr 10.244.0.0/16 return").unwrap();
        let masq = rules.find("masquerade").unwrap();
        assert!(ret < masq, "cluster traffic must return before masquerade");
        assert!(!rules.contains("ip6 saddr fd00"));
    }

    #[test]
    fn dual_stack_pods_may_send_from_their_ipv6_and_link_local_addresses_only() {
        let rules = ruleset(
            "10.244.0.0/16".parse().unwrap(),
            Some("fd00:10:244::/48".parse().unwrap()),
            &[pod(Some("fd00:10:244:1::5"))],
        );
        assert!(rules.contains(
            "iifname \"fab0123456789a\" ip6 saddr != { fd00:10:244:1::5, fe80::/10 } drop"
        ));
        let ret = rules
            .find("ip6 saddr fd00:10:244::/48 ip6 daddr fd00:10:244::/48 return")
            .unwrap();
        let masq = rules.find("ip6 saddr fd00:10:244::/48 masquerade").unwrap();
        assert!(ret < masq);
    }
}
