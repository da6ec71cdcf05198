//! The underlay: the node's interface and address that tunnels and routes to other nodes ride on.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::netlink::Netlink;
use crate::TunnelError;

/// The node's underlay interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    /// Interface name.
    pub iface: String,
    /// Interface index.
    pub index: u32,
    /// The node's address on it, with the on-link prefix.
    pub addr: Ipv4Net,
    /// Interface MTU.
    pub mtu: u32,
    /// The interface's MAC address (host-gw publishes it, see [`crate::hostgw`]).
    pub mac: Option<crate::Mac>,
}

impl Underlay {
    /// The node's public (underlay) address.
    pub fn ip(&self) -> Ipv4Addr {
        self.addr.addr()
    }

    /// Finds the underlay: by interface name, by address, or (neither given) the first up,
    /// non-loopback interface with an IPv4 address.
    pub async fn detect(
        netlink: &Netlink,
        iface: Option<&str>,
        public_ip: Option<Ipv4Addr>,
    ) -> Result<Self, TunnelError> {
        let links = netlink.links().await?;
        let mut candidates = Vec::new();
        for link in links.iter().filter(|l| l.name != "lo") {
            if iface.is_some_and(|want| want != link.name) {
                continue;
            }
            for addr in netlink.addresses(link.index).await? {
                let ipnet::IpNet::V4(addr) = addr else {
                    continue;
                };
                if public_ip.is_some_and(|want| want != addr.addr()) {
                    continue;
                }
                candidates.push(Underlay {
                    iface: link.name.clone(),
                    index: link.index,
                    addr,
                    mtu: link.mtu,
                    mac: link.mac,
                });
            }
        }
        let pick = match (iface, public_ip) {
            (None, None) => candidates.into_iter().find(|c| {
                links.iter().any(|l| l.index == c.index && l.up) && !c.iface.starts_with("fabric")
            }),
            _ => candidates.into_iter().next(),
        };
        pick.ok_or_else(|| {
            TunnelError::Underlay(match (iface, public_ip) {
                (Some(i), Some(ip)) => format!("interface {i} has no address {ip}"),
                (Some(i), None) => {
                    format!("interface {i} does not exist or has no IPv4 address (--iface)")
                }
                (None, Some(ip)) => format!("no interface holds {ip} (--public-ip)"),
                (None, None) => {
                    "no up interface with an IPv4 address; pass --iface or --public-ip".into()
                }
            })
        })
    }
}
