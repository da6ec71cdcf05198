//! The vxlan backend: kernel device `fabric.<VNI>` carrying the subnet's `.0/32`; per remote
//! node one route `<subnet> via <subnet .0> onlink`, one permanent neighbour
//! `<subnet .0> -> VTEP MAC` and one FDB entry `VTEP MAC -> node IP` (Flannel's layout).
//!
//! On a dual-stack network the same device carries IPv6 too (VXLAN carries Ethernet frames,
//! whatever their payload): per remote node also `<IPv6 subnet> via <IPv6 subnet ::0> onlink`
//! and the neighbour `<IPv6 subnet ::0> -> VTEP MAC`; the FDB entry serves both.

use std::net::SocketAddrV4;
use std::path::Path;

use async_trait::async_trait;
use ipam::{BackendConfig, BackendKind, Lease, Leases};
use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use crate::mac::Mac;
use crate::netlink::{FdbEntry, Link, Neighbour, Netlink, Route, VxlanParams};
use crate::plan::diff;
use crate::underlay::Underlay;
use crate::{peers, Backend, Report, TunnelEnds, TunnelError};

/// VXLAN encapsulation overhead: outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8.
pub const OVERHEAD: u32 = 50;

/// What a vxlan node publishes in its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxlanData {
    /// The VTEP's MAC address.
    pub vtep_mac: Mac,
    /// The VNI.
    pub vni: u32,
}

/// The kernel objects the vxlan backend wants for a set of leases.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// Routes to remote subnets.
    pub routes: Vec<Route>,
    /// Neighbours for the remote VTEPs' `.0` addresses.
    pub neighbours: Vec<Neighbour>,
    /// FDB entries sending the remote VTEP MACs to the remote node IPs.
    pub fdb: Vec<FdbEntry>,
}

/// Computes [`Desired`] for the device with index `dev`.
pub fn desired(dev: u32, local: &Lease, leases: &Leases) -> Desired {
    let mut want = Desired::default();
    for peer in peers(BackendKind::Vxlan, local, leases) {
        let data: VxlanData = match serde_json::from_value(peer.backend_data.clone()) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(node = %peer.node, error = %e, "peer's vxlan lease data is unreadable; skipping");
                continue;
            }
        };
        let subnets =
            std::iter::once(IpNet::V4(peer.subnet)).chain(peer.ipv6_subnet.map(IpNet::V6));
        for subnet in subnets {
            let gateway = subnet.network();
            want.routes.push(Route {
                dst: subnet,
                via: Some(gateway),
                oif: dev,
                onlink: true,
            });
            want.neighbours.push(Neighbour {
                ifindex: dev,
                ip: gateway,
                mac: data.vtep_mac,
            });
        }
        want.fdb.push(FdbEntry {
            ifindex: dev,
            mac: data.vtep_mac,
            dst: peer.public_ip,
        });
    }
    want
}

/// The vxlan backend.
pub struct Vxlan {
    name: String,
    params: VxlanParams,
    mac: Mac,
    mtu: u32,
    netlink: Netlink,
}

impl Vxlan {
    /// A vxlan backend; the VTEP MAC is kept in `state_dir/vtep-mac` so it survives restarts
    /// and device re-creation.
    pub fn new(
        config: &BackendConfig,
        underlay: Underlay,
        netlink: Netlink,
        state_dir: &Path,
    ) -> Result<Self, TunnelError> {
        let mac = load_or_create_mac(&state_dir.join("vtep-mac"))?;
        Ok(Self {
            name: format!("fabric.{}", config.vni),
            params: VxlanParams {
                vni: config.vni,
                port: config.port,
                local: Some(underlay.ip()),
                underlay: Some(underlay.index),
            },
            mac,
            mtu: underlay.mtu - OVERHEAD,
            netlink,
        })
    }

    /// The device, created or repaired to match the wanted parameters and address.
    async fn ensure_device(&self, address: Ipv4Net) -> Result<Link, TunnelError> {
        if let Some(link) = self.netlink.link(&self.name).await? {
            // The kernel gives the device an IPv6 link-local address of its own; only IPv4
            // addresses are fabric's.
            let addresses = self.netlink.addresses(link.index).await?;
            let stale = addresses
                .iter()
                .any(|a| matches!(a, IpNet::V4(a) if *a != address));
            if link.vxlan == Some(self.params) && !stale {
                self.netlink
                    .set_link(&link, Some(self.mtu), Some(self.mac), true)
                    .await?;
                self.netlink
                    .ensure_address(link.index, address.into())
                    .await?;
                return Ok(link);
            }
            tracing::info!(device = %self.name, "vxlan device does not match the config; re-creating");
            self.netlink.delete_link(link.index).await?;
        }
        tracing::info!(device = %self.name, vni = self.params.vni, mac = %self.mac, "creating vxlan device");
        let link = self
            .netlink
            .add_vxlan(&self.name, self.params, self.mac, self.mtu)
            .await?;
        self.netlink
            .ensure_address(link.index, address.into())
            .await?;
        Ok(link)
    }
}

fn load_or_create_mac(path: &Path) -> Result<Mac, TunnelError> {
    let state = |source| TunnelError::State {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(s) => s
            .trim()
            .parse()
            .map_err(|e| state(std::io::Error::new(std::io::ErrorKind::InvalidData, e))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mac = Mac::random();
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(state)?;
            }
            std::fs::write(path, format!("{mac}\n")).map_err(state)?;
            Ok(mac)
        }
        Err(e) => Err(state(e)),
    }
}

#[async_trait]
impl Backend for Vxlan {
    fn kind(&self) -> BackendKind {
        BackendKind::Vxlan
    }

    fn mtu(&self) -> u32 {
        self.mtu
    }

    fn lease_data(&self) -> serde_json::Value {
        serde_json::to_value(VxlanData {
            vtep_mac: self.mac,
            vni: self.params.vni,
        })
        .expect("json")
    }

    fn tunnel_ends(&self, local: &Lease, leases: &Leases) -> Option<TunnelEnds> {
        // Every node's device listens on the network's port.
        let port = self.params.port;
        Some(TunnelEnds {
            local: SocketAddrV4::new(local.public_ip, port),
            peers: peers(BackendKind::Vxlan, local, leases)
                .map(|l| SocketAddrV4::new(l.public_ip, port))
                .collect(),
        })
    }

    async fn reconcile(&self, local: &Lease, leases: &Leases) -> Result<Report, TunnelError> {
        let address = Ipv4Net::new(local.subnet.network(), 32).expect("/32");
        let dev = self.ensure_device(address).await?;
        let want = desired(dev.index, local, leases);
        let nl = &self.netlink;
        let routes = diff(
            want.routes,
            nl.owned_routes()
                .await?
                .into_iter()
                .filter(|r| r.oif == dev.index),
        );
        let neighbours = diff(want.neighbours, nl.neighbours(dev.index).await?);
        let fdb = diff(want.fdb, nl.fdb(dev.index).await?);
        // Remove first: a changed peer's old entries share keys with its new ones.
        for r in &routes.remove {
            nl.delete_route(r).await?;
        }
        for n in &neighbours.remove {
            nl.delete_neighbour(n).await?;
        }
        for f in &fdb.remove {
            nl.delete_fdb(f).await?;
        }
        for f in &fdb.add {
            nl.replace_fdb(f).await?;
        }
        for n in &neighbours.add {
            nl.replace_neighbour(n).await?;
        }
        for r in &routes.add {
            nl.replace_route(r).await?;
        }
        Ok(Report {
            added: routes.add.len() + neighbours.add.len() + fdb.add.len(),
            removed: routes.remove.len() + neighbours.remove.len() + fdb.remove.len(),
            refused: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;

    fn lease(node: &str, subnet: &str, ip: &str, mac: &str) -> Lease {
        Lease {
            subnet: subnet.parse().unwrap(),
            ipv6_subnet: None,
            node: node.into(),
            public_ip: ip.parse().unwrap(),
            backend_type: "vxlan".into(),
            backend_data: serde_json::json!({"vtep_mac": mac, "vni": 1}),
            ttl_secs: None,
            handle: 0,
        }
    }

    fn set(leases: Vec<Lease>) -> Leases {
        Arc::new(BTreeMap::from_iter(
            leases.into_iter().map(|l| (l.subnet, l)),
        ))
    }

    #[test]
    fn one_route_neighbour_and_fdb_entry_per_peer() {
        let me = lease("n1", "10.244.1.0/24", "172.30.0.11", "02:00:00:00:00:01");
        let mut bad = lease("n4", "10.244.4.0/24", "172.30.0.14", "x");
        bad.backend_data = serde_json::json!({"garbage": true});
        let leases = set(vec![
            me.clone(),
            lease("n2", "10.244.2.0/24", "172.30.0.12", "02:00:00:00:00:02"),
            lease("n3", "10.244.3.0/24", "172.30.0.13", "02:00:00:00:00:03"),
            bad,
        ]);
        let want = desired(7, &me, &leases);
        assert_eq!(want.routes.len(), 2);
        assert_eq!(
            want.routes[0],
            Route {
                dst: "10.244.2.0/24".parse().unwrap(),
                via: Some("10.244.2.0".parse().unwrap()),
                oif: 7,
                onlink: true
            }
        );
        assert_eq!(want.neighbours[1].ip.to_string(), "10.244.3.0");
        assert_eq!(want.neighbours[1].mac.to_string(), "02:00:00:00:00:03");
        assert_eq!(want.fdb[0].dst.to_string(), "172.30.0.12");
    }

    #[test]
    fn dual_stack_peer_gets_an_ipv6_route_and_neighbour_on_the_same_vtep() {
        let me = lease("n1", "10.244.1.0/24", "172.30.0.11", "02:00:00:00:00:01");
        let mut peer = lease("n2", "10.244.2.0/24", "172.30.0.12", "02:00:00:00:00:02");
        peer.ipv6_subnet = Some("fd00:10:244:2::/64".parse().unwrap());
        let want = desired(7, &me, &set(vec![me.clone(), peer]));
        assert_eq!(want.routes.len(), 2);
        assert_eq!(want.fdb.len(), 1);
        assert_eq!(
            want.routes[1],
            Route {
                dst: "fd00:10:244:2::/64".parse().unwrap(),
                via: Some("fd00:10:244:2::".parse().unwrap()),
                oif: 7,
                onlink: true
            }
        );
        assert_eq!(want.neighbours[1].ip.to_string(), "fd00:10:244:2::");
        assert_eq!(want.neighbours[1].mac.to_string(), "02:00:00:00:00:02");
    }

    #[test]
    fn changed_peer_mac_replaces_its_entries_and_vanished_peer_is_removed() {
        let me = lease("n1", "10.244.1.0/24", "172.30.0.11", "02:00:00:00:00:01");
        let before = desired(
            7,
            &me,
            &set(vec![
                me.clone(),
                lease("n2", "10.244.2.0/24", "172.30.0.12", "02:00:00:00:00:02"),
                lease("n3", "10.244.3.0/24", "172.30.0.13", "02:00:00:00:00:03"),
            ]),
        );
        let after = desired(
            7,
            &me,
            &set(vec![
                me.clone(),
                lease("n2", "10.244.2.0/24", "172.30.0.22", "02:00:00:00:00:22"),
            ]),
        );
        let fdb = diff(after.fdb.clone(), before.fdb.clone());
        assert_eq!(fdb.add.len(), 1);
        assert_eq!(fdb.remove.len(), 2);
        let routes = diff(after.routes.clone(), before.routes.clone());
        assert!(routes.add.is_empty());
        assert_eq!(routes.remove.len(), 1);
        // Converged: nothing to do.
        assert!(diff(after.neighbours.clone(), after.neighbours).is_empty());
    }
}
