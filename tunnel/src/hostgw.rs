//! The host-gw backend: one route per remote subnet via the remote node's underlay address.
//! Works only when all nodes share one L2 segment; peers elsewhere are refused.
//!
//! On a dual-stack network a remote node's IPv6 subnet is routed via its IPv4 underlay
//! address too (`via inet`, RFC 5549: the next hop's MAC comes from ARP), so the underlay
//! needs no IPv6 at all.

use async_trait::async_trait;
use ipam::{BackendKind, Lease, Leases};
use ipnet::IpNet;

use crate::netlink::{Netlink, Route};
use crate::plan::diff;
use crate::underlay::Underlay;
use crate::{peers, Backend, Report, TunnelError};

/// Routes straight over the underlay.
pub struct HostGw {
    underlay: Underlay,
    netlink: Netlink,
}

impl HostGw {
    /// A host-gw backend on `underlay`.
    pub fn new(underlay: Underlay, netlink: Netlink) -> Self {
        Self { underlay, netlink }
    }
}

/// The routes host-gw wants, and the peers it refuses (not on the underlay's segment).
pub fn desired(
    underlay: &Underlay,
    local: &Lease,
    leases: &Leases,
) -> (Vec<Route>, Vec<(String, String)>) {
    let segment = underlay.addr.trunc();
    let mut routes = Vec::new();
    let mut refused = Vec::new();
    for peer in peers(BackendKind::HostGw, local, leases) {
        if !segment.contains(&peer.public_ip) {
            refused.push((
                peer.node.clone(),
                format!(
                    "host-gw needs peers on the same L2 segment: {} is not in {segment}; use the vxlan backend across subnets",
                    peer.public_ip
                ),
            ));
            continue;
        }
        let subnets =
            std::iter::once(IpNet::V4(peer.subnet)).chain(peer.ipv6_subnet.map(IpNet::V6));
        routes.extend(subnets.map(|dst| Route {
            dst,
            via: Some(peer.public_ip.into()),
            oif: underlay.index,
            onlink: false,
        }));
    }
    (routes, refused)
}

#[async_trait]
impl Backend for HostGw {
    fn kind(&self) -> BackendKind {
        BackendKind::HostGw
    }

    fn mtu(&self) -> u32 {
        self.underlay.mtu
    }

    fn lease_data(&self) -> serde_json::Value {
        serde_json::json!({})
    }

    async fn reconcile(&self, local: &Lease, leases: &Leases) -> Result<Report, TunnelError> {
        let (routes, refused) = desired(&self.underlay, local, leases);
        for (node, reason) in &refused {
            tracing::error!(%node, %reason, "refusing peer");
        }
        let actual = self.netlink.owned_routes().await?;
        let actual = actual.into_iter().filter(|r| r.oif == self.underlay.index);
        let plan = diff(routes, actual);
        for r in &plan.remove {
            self.netlink.delete_route(r).await?;
        }
        for r in &plan.add {
            self.netlink.replace_route(r).await?;
        }
        Ok(Report {
            added: plan.add.len(),
            removed: plan.remove.len(),
            refused,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;

    fn lease(node: &str, subnet: &str, ip: &str, kind: &str) -> Lease {
        Lease {
            subnet: subnet.parse().unwrap(),
            ipv6_subnet: None,
            node: node.into(),
            public_ip: ip.parse().unwrap(),
            backend_type: kind.into(),
            backend_data: serde_json::json!({}),
            ttl_secs: None,
            handle: 0,
        }
    }

    #[test]
    fn routes_via_peers_on_the_segment_and_refuses_others() {
        let underlay = Underlay {
            iface: "eth0".into(),
            index: 2,
            addr: "172.30.0.11/24".parse().unwrap(),
            mtu: 1500,
        };
        let me = lease("n1", "10.244.1.0/24", "172.30.0.11", "host-gw");
        let leases: Leases = Arc::new(BTreeMap::from_iter(
            [
                me.clone(),
                lease("n2", "10.244.2.0/24", "172.30.0.12", "host-gw"),
                lease("n3", "10.244.3.0/24", "10.9.9.9", "host-gw"),
                lease("n4", "10.244.4.0/24", "172.30.0.14", "vxlan"),
            ]
            .into_iter()
            .map(|l| (l.subnet, l)),
        ));
        let (routes, refused) = desired(&underlay, &me, &leases);
        assert_eq!(
            routes,
            vec![Route {
                dst: "10.244.2.0/24".parse().unwrap(),
                via: Some("172.30.0.12".parse().unwrap()),
                oif: 2,
                onlink: false,
            }]
        );
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, "n3");
    }

    #[test]
    fn ipv6_subnets_route_via_the_ipv4_underlay() {
        let underlay = Underlay {
            iface: "eth0".into(),
            index: 2,
            addr: "172.30.0.11/24".parse().unwrap(),
            mtu: 1500,
        };
        let me = lease("n1", "10.244.1.0/24", "172.30.0.11", "host-gw");
        let mut peer = lease("n2", "10.244.2.0/24", "172.30.0.12", "host-gw");
        peer.ipv6_subnet = Some("fd00:10:244:2::/64".parse().unwrap());
        let leases: Leases = Arc::new(BTreeMap::from_iter(
            [me.clone(), peer].into_iter().map(|l| (l.subnet, l)),
        ));
        let (routes, _) = desired(&underlay, &me, &leases);
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[1].dst.to_string(), "fd00:10:244:2::/64");
        assert_eq!(routes[1].via, Some("172.30.0.12".parse().unwrap()));
    }
}
