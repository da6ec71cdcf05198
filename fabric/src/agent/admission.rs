//! Which other nodes' leases the data path may act on. A lease is a record anyone with write
//! access to the datastore can forge, and every node routes what it says: a `/32` lease for
//! the etcd address would black-hole every node's datastore traffic. So before the backend
//! sees them, peers' leases are checked against the network config and the node's own
//! surroundings, and a lease that fails is ignored with a warning naming its key. Pure: the
//! agent's loop holds an [`Admission`] and asks it on every pass.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use ipam::{Lease, Leases, NetworkConfig};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// What a peer's lease must fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// `Network`: every subnet lies inside it.
    pub network: Ipv4Net,
    /// `SubnetLen`, where the datastore hands subnets out by it (etcd); the Kubernetes API's
    /// podCIDRs have the controller manager's mask instead.
    pub subnet_len: Option<u8>,
    /// `IPv6Network`, on a dual-stack network.
    pub network6: Option<Ipv6Net>,
    /// Addresses no subnet may cover: the node's underlay network, the datastore's addresses.
    pub protected: Vec<IpNet>,
}

/// Why a lease was refused.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Refusal {
    /// The lease's key in the datastore (`subnets/<a.b.c.d-len>`).
    pub key: String,
    /// The node it names.
    pub node: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Admission {
    /// The checks for a network config; `by_subnet_len` when the datastore leases
    /// `SubnetLen` subnets, `protected` as [`Admission::protected`].
    pub fn new(config: &NetworkConfig, by_subnet_len: bool, protected: Vec<IpNet>) -> Self {
        Self {
            network: config.network,
            subnet_len: by_subnet_len.then_some(config.subnet_len),
            network6: config.ipv6.map(|v6| v6.network),
            protected,
        }
    }

    /// The leases of `leases` the data path may act on, seen from `local` (kept as it is, if
    /// it is there), and the refusals. Two peers whose subnets overlap are both refused: nothing tells which
    /// one is genuine.
    pub fn admit(&self, local: &Lease, leases: &Leases) -> (Leases, Vec<Refusal>) {
        let mut refused = Vec::new();
        let mut admitted: BTreeMap<Ipv4Net, Lease> = BTreeMap::new();
        let mut own = None;
        for lease in leases.values() {
            if lease.subnet == local.subnet && lease.node == local.node {
                own = Some(lease.clone());
                continue;
            }
            match self.check(local, lease) {
                Ok(()) => {
                    admitted.insert(lease.subnet, lease.clone());
                }
                Err(reason) => refused.push(refusal(lease, reason)),
            }
        }
        let overlapping: Vec<(Ipv4Net, Ipv4Net)> = admitted
            .keys()
            .flat_map(|a| {
                admitted
                    .keys()
                    .filter(move |b| a < *b && overlaps(a, b))
                    .map(move |b| (*a, *b))
            })
            .collect();
        for (a, b) in overlapping {
            for (this, other) in [(a, b), (b, a)] {
                if let Some(lease) = admitted.remove(&this) {
                    refused.push(refusal(&lease, format!("overlaps the lease of {other}")));
                }
            }
        }
        if let Some(own) = own {
            admitted.insert(own.subnet, own);
        }
        refused.sort();
        (Arc::new(admitted), refused)
    }

    fn check(&self, local: &Lease, lease: &Lease) -> Result<(), String> {
        let subnet = lease.subnet;
        if subnet.trunc() != subnet {
            return Err(format!("{subnet} has host bits set"));
        }
        if !self.network.contains(&subnet) {
            return Err(format!("{subnet} is outside the network {}", self.network));
        }
        if let Some(len) = self.subnet_len.filter(|len| subnet.prefix_len() != *len) {
            return Err(format!(
                "{subnet} is not a /{len} (the network's SubnetLen)"
            ));
        }
        if overlaps(&subnet, &local.subnet) {
            return Err(format!("overlaps this node's subnet {}", local.subnet));
        }
        if let Some(v6) = lease.ipv6_subnet {
            match self.network6 {
                Some(net6) if net6.contains(&v6) && v6.trunc() == v6 => {}
                Some(net6) => return Err(format!("IPv6 subnet {v6} is outside {net6}")),
                None => return Err(format!("IPv6 subnet {v6} on an IPv4-only network")),
            }
            if local
                .ipv6_subnet
                .is_some_and(|own| own.contains(&v6) || v6.contains(&own))
            {
                return Err(format!("IPv6 subnet {v6} overlaps this node's"));
            }
        }
        if let Some(p) = self.protected.iter().find(|p| {
            overlaps_any(&IpNet::V4(subnet), p)
                || lease
                    .ipv6_subnet
                    .is_some_and(|v6| overlaps_any(&IpNet::V6(v6), p))
        }) {
            return Err(format!(
                "covers {p}, which must stay reachable (underlay or datastore)"
            ));
        }
        let ip = lease.public_ip;
        if !usable_underlay(ip) || self.network.contains(&ip) {
            return Err(format!(
                "public IP {ip} cannot be a node's underlay address"
            ));
        }
        Ok(())
    }
}

fn refusal(lease: &Lease, reason: String) -> Refusal {
    Refusal {
        // As the record is keyed, host bits and all.
        key: format!(
            "subnets/{}-{}",
            lease.subnet.addr(),
            lease.subnet.prefix_len()
        ),
        node: lease.node.clone(),
        reason,
    }
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn overlaps_any(a: &IpNet, b: &IpNet) -> bool {
    match (a, b) {
        (IpNet::V4(a), IpNet::V4(b)) => overlaps(a, b),
        (IpNet::V6(a), IpNet::V6(b)) => a.contains(&b.network()) || b.contains(&a.network()),
        _ => false,
    }
}

fn usable_underlay(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_link_local())
}

/// The addresses a node must always reach: its underlay network and each datastore address
/// (as host routes).
pub fn protected(underlay: Ipv4Net, datastore: &[IpAddr]) -> Vec<IpNet> {
    let mut nets = vec![IpNet::V4(underlay.trunc())];
    nets.extend(datastore.iter().map(|ip| IpNet::from(*ip)));
    nets
}

/// The host and port of a datastore URL (`http://10.0.0.2:2379`, `https://[fd00::2]:6443`,
/// `etcd.example:2379`, `10.0.0.2`), `default_port` where it names none.
pub fn url_host(url: &str, default_port: u16) -> Option<(String, u16)> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next()?;
    let authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']')?;
            (host, after.strip_prefix(':'))
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => default_port,
    };
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(subnet: &str, node: &str, ip: &str) -> Lease {
        Lease {
            subnet: subnet.parse().unwrap(),
            ipv6_subnet: None,
            node: node.into(),
            public_ip: ip.parse().unwrap(),
            backend_type: "vxlan".into(),
            backend_data: serde_json::json!({}),
            ttl_secs: None,
            handle: 0,
        }
    }

    fn admission() -> Admission {
        let config = NetworkConfig::parse(r#"{"Network":"10.244.0.0/16"}"#).unwrap();
        Admission::new(
            &config,
            true,
            protected(
                "172.30.0.11/24".parse().unwrap(),
                &[
                    "172.30.0.2".parse().unwrap(),
                    "10.244.99.7".parse().unwrap(),
                ],
            ),
        )
    }

    fn run(leases: &[Lease]) -> (Vec<String>, Vec<Refusal>) {
        let local = lease("10.244.1.0/24", "me", "172.30.0.11");
        let mut all: BTreeMap<Ipv4Net, Lease> =
            leases.iter().map(|l| (l.subnet, l.clone())).collect();
        all.insert(local.subnet, local.clone());
        let (admitted, refused) = admission().admit(&local, &Arc::new(all));
        (admitted.keys().map(|s| s.to_string()).collect(), refused)
    }

    fn refused_for(leases: &[Lease]) -> Vec<String> {
        run(leases)
            .1
            .into_iter()
            .map(|r| format!("{}: {}", r.key, r.reason))
            .collect()
    }

    #[test]
    fn datastore_urls_name_their_host() {
        let host = |u| url_host(u, 2379);
        assert_eq!(
            host("http://10.0.0.2:2379"),
            Some(("10.0.0.2".into(), 2379))
        );
        assert_eq!(
            host("https://[fd00::2]:6443/"),
            Some(("fd00::2".into(), 6443))
        );
        assert_eq!(host("etcd.example"), Some(("etcd.example".into(), 2379)));
        assert_eq!(
            host("https://u:p@10.0.0.3/x"),
            Some(("10.0.0.3".into(), 2379))
        );
        assert_eq!(host("http://:2379"), None);
        assert_eq!(host("http://h:notaport"), None);
    }

    #[test]
    fn well_formed_peers_are_admitted() {
        let (admitted, refused) = run(&[
            lease("10.244.2.0/24", "n2", "172.30.0.12"),
            lease("10.244.3.0/24", "n3", "172.30.0.13"),
        ]);
        assert_eq!(
            admitted,
            ["10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"]
        );
        assert!(refused.is_empty());
    }

    #[test]
    fn a_host_route_lease_for_the_etcd_address_is_refused_naming_its_key() {
        let refused = refused_for(&[lease("172.30.0.2/32", "evil", "172.30.0.12")]);
        assert_eq!(
            refused,
            ["subnets/172.30.0.2-32: 172.30.0.2/32 is outside the network 10.244.0.0/16"]
        );
    }

    #[test]
    fn subnets_must_be_subnet_len_subnets_of_the_network() {
        let refused = refused_for(&[
            lease("10.244.2.0/25", "short", "172.30.0.12"),
            lease("10.244.0.0/16", "all", "172.30.0.12"),
            lease("10.244.4.9/24", "bits", "172.30.0.12"),
        ]);
        assert_eq!(
            refused,
            [
                "subnets/10.244.0.0-16: 10.244.0.0/16 is not a /24 (the network's SubnetLen)",
                "subnets/10.244.2.0-25: 10.244.2.0/25 is not a /24 (the network's SubnetLen)",
                "subnets/10.244.4.9-24: 10.244.4.9/24 has host bits set",
            ]
        );
    }

    #[test]
    fn without_subnet_len_overlapping_peers_are_both_refused_and_the_local_subnet_is_kept() {
        let local = lease("10.244.1.0/24", "me", "172.30.0.11");
        let mut check = admission();
        check.subnet_len = None;
        let all: BTreeMap<Ipv4Net, Lease> = [
            local.clone(),
            lease("10.244.1.128/25", "inside-mine", "172.30.0.12"),
            lease("10.244.8.0/22", "wide", "172.30.0.13"),
            lease("10.244.9.0/24", "narrow", "172.30.0.14"),
            lease("10.244.20.0/24", "fine", "172.30.0.15"),
        ]
        .into_iter()
        .map(|l| (l.subnet, l))
        .collect();
        let (admitted, refused) = check.admit(&local, &Arc::new(all));
        assert_eq!(
            admitted.keys().map(|s| s.to_string()).collect::<Vec<_>>(),
            ["10.244.1.0/24", "10.244.20.0/24"]
        );
        let nodes: Vec<&str> = refused.iter().map(|r| r.node.as_str()).collect();
        assert_eq!(nodes, ["inside-mine", "wide", "narrow"]);
    }

    #[test]
    fn subnets_covering_protected_addresses_and_bad_underlay_addresses_are_refused() {
        let refused = refused_for(&[
            lease("10.244.99.0/24", "covers-etcd", "172.30.0.12"),
            lease("10.244.5.0/24", "loop", "127.0.0.1"),
            lease("10.244.6.0/24", "inside", "10.244.7.1"),
        ]);
        assert_eq!(refused.len(), 3, "{refused:?}");
        assert!(refused[0].contains("public IP 127.0.0.1"), "{refused:?}");
        assert!(refused[1].contains("public IP 10.244.7.1"), "{refused:?}");
        assert!(refused[2].contains("covers 10.244.99.7/32"), "{refused:?}");
    }

    #[test]
    fn ipv6_subnets_must_lie_in_the_ipv6_network() {
        let mut foreign = lease("10.244.2.0/24", "v6", "172.30.0.12");
        foreign.ipv6_subnet = Some("fd00:99::/64".parse().unwrap());
        let refused = refused_for(&[foreign]);
        assert_eq!(
            refused,
            ["subnets/10.244.2.0-24: IPv6 subnet fd00:99::/64 on an IPv4-only network"]
        );
    }
}
