//! The host-gw backend: one route per remote subnet via the remote node's underlay address.
//! Works only when all nodes share one L2 segment; peers elsewhere are refused.
//!
//! On a dual-stack network a remote node's IPv6 subnet is routed over the same segment though
//! the underlay is IPv4 only (the kernel takes no IPv4 next hop for an IPv6 route): via the
//! subnet's `::0` address on-link, with a permanent neighbour entry mapping that address to
//! the remote node's underlay MAC, which every host-gw node publishes in its lease. This is
//! vxlan's layout without the tunnel.

use async_trait::async_trait;
use ipam::{BackendKind, Lease, Leases};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::mac::Mac;
use crate::netlink::{Neighbour, Netlink, Route};
use crate::plan::diff;
use crate::underlay::Underlay;
use crate::{peers, Backend, Report, TunnelError};

/// What a host-gw node publishes in its lease.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostGwData {
    /// The node's underlay MAC: where its IPv6 pod subnet's frames go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay_mac: Option<Mac>,
}

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

/// The kernel objects host-gw wants for a set of leases, and the peers it refuses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// Routes to remote subnets.
    pub routes: Vec<Route>,
    /// Neighbours for the remote IPv6 subnets' `::0` gateways.
    pub neighbours: Vec<Neighbour>,
    /// Peers not reachable, with the reason.
    pub refused: Vec<(String, String)>,
}

/// Computes [`Desired`].
pub fn desired(underlay: &Underlay, local: &Lease, leases: &Leases) -> Desired {
    let segment = underlay.addr.trunc();
    let mut want = Desired::default();
    for peer in peers(BackendKind::HostGw, local, leases) {
        if !segment.contains(&peer.public_ip) {
            want.refused.push((
                peer.node.clone(),
                format!(
                    "host-gw needs peers on the same L2 segment: {} is not in {segment}; use the vxlan backend across subnets",
                    peer.public_ip
                ),
            ));
            continue;
        }
        want.routes.push(Route {
            dst: IpNet::V4(peer.subnet),
            via: Some(peer.public_ip.into()),
            oif: underlay.index,
            onlink: false,
        });
        let Some(subnet6) = peer.ipv6_subnet else {
            continue;
        };
        let data: HostGwData =
            serde_json::from_value(peer.backend_data.clone()).unwrap_or_default();
        let Some(mac) = data.underlay_mac else {
            want.refused.push((
                peer.node.clone(),
                format!("its lease publishes no underlay MAC, so its IPv6 subnet {subnet6} is unreachable over host-gw (upgrade its fabricd)"),
            ));
            continue;
        };
        let gateway = subnet6.network().into();
        want.routes.push(Route {
            dst: IpNet::V6(subnet6),
            via: Some(gateway),
            oif: underlay.index,
            onlink: true,
        });
        want.neighbours.push(Neighbour {
            ifindex: underlay.index,
            ip: gateway,
            mac,
        });
    }
    want
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
        serde_json::to_value(HostGwData {
            underlay_mac: self.underlay.mac,
        })
        .expect("json")
    }

    async fn reconcile(&self, local: &Lease, leases: &Leases) -> Result<Report, TunnelError> {
        let want = desired(&self.underlay, local, leases);
        for (node, reason) in &want.refused {
            tracing::error!(%node, %reason, "refusing peer");
        }
        let index = self.underlay.index;
        let actual = self.netlink.owned_routes().await?;
        let routes = diff(want.routes, actual.into_iter().filter(|r| r.oif == index));
        let neighbours = diff(want.neighbours, self.netlink.neighbours(index).await?);
        for r in &routes.remove {
            self.netlink.delete_route(r).await?;
        }
        for n in &neighbours.remove {
            self.netlink.delete_neighbour(n).await?;
        }
        // Neighbours before the routes that use them.
        for n in &neighbours.add {
            self.netlink.replace_neighbour(n).await?;
        }
        for r in &routes.add {
            self.netlink.replace_route(r).await?;
        }
        Ok(Report {
            added: routes.add.len() + neighbours.add.len(),
            removed: routes.remove.len() + neighbours.remove.len(),
            refused: want.refused,
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

    fn underlay() -> Underlay {
        Underlay {
            iface: "eth0".into(),
            index: 2,
            addr: "172.30.0.11/24".parse().unwrap(),
            mtu: 1500,
            mac: None,
        }
    }

    #[test]
    fn routes_via_peers_on_the_segment_and_refuses_others() {
        let underlay = underlay();
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
        let Desired {
            routes, refused, ..
        } = desired(&underlay, &me, &leases);
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
    fn ipv6_subnets_route_on_link_to_the_peers_underlay_mac() {
        let underlay = underlay();
        let me = lease("n1", "10.244.1.0/24", "172.30.0.11", "host-gw");
        let mut peer = lease("n2", "10.244.2.0/24", "172.30.0.12", "host-gw");
        peer.ipv6_subnet = Some("fd00:10:244:2::/64".parse().unwrap());
        peer.backend_data = serde_json::json!({"underlay_mac": "02:00:00:00:00:02"});
        let mut old = lease("n3", "10.244.3.0/24", "172.30.0.13", "host-gw");
        old.ipv6_subnet = Some("fd00:10:244:3::/64".parse().unwrap());
        let leases: Leases = Arc::new(BTreeMap::from_iter(
            [me.clone(), peer, old].into_iter().map(|l| (l.subnet, l)),
        ));
        let want = desired(&underlay, &me, &leases);
        // n2 on both families; n3 on IPv4 only (it publishes no MAC), and refused for IPv6.
        assert_eq!(want.routes.len(), 3);
        assert_eq!(
            want.routes[1],
            Route {
                dst: "fd00:10:244:2::/64".parse().unwrap(),
                via: Some("fd00:10:244:2::".parse().unwrap()),
                oif: 2,
                onlink: true,
            }
        );
        assert_eq!(want.routes[2].dst.to_string(), "10.244.3.0/24");
        assert_eq!(want.neighbours.len(), 1);
        assert_eq!(want.neighbours[0].mac.to_string(), "02:00:00:00:00:02");
        assert_eq!(want.refused.len(), 1);
        assert_eq!(want.refused[0].0, "n3");
    }
}
