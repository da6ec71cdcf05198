//! The peer table: which peers exist (from the leases), which peer a packet goes to (by
//! destination address), and which peer an incoming datagram belongs to (by receiver index or
//! static key). Pure: no sockets, no threads; the data plane reads a snapshot.
//!
//! A peer's allowed IPs are its node's pod subnet and, on a dual-stack network, its IPv6 pod
//! subnet ([`Allowed`]).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ipam::{BackendKind, Lease, Leases};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use super::keys::Key;
use crate::peers;

/// What a wireguard node publishes in its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireguardData {
    /// The node's public key, base64.
    pub public_key: String,
    /// The node's WireGuard UDP port.
    pub port: u16,
}

/// What may come out of a peer's tunnel and what goes into it: its node's pod subnets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed {
    /// The IPv4 pod subnet.
    pub v4: Ipv4Net,
    /// The IPv6 pod subnet, on a dual-stack network.
    pub v6: Option<Ipv6Net>,
}

impl Allowed {
    /// Both subnets, IPv4 first.
    pub fn nets(&self) -> impl Iterator<Item = IpNet> {
        std::iter::once(IpNet::V4(self.v4)).chain(self.v6.map(IpNet::V6))
    }

    /// Whether `ip` lies in one of them.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(ip) => self.v4.contains(&ip),
            IpAddr::V6(ip) => self.v6.is_some_and(|n| n.contains(&ip)),
        }
    }
}

impl fmt::Display for Allowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.v6 {
            Some(v6) => write!(f, "{}, {v6}", self.v4),
            None => write!(f, "{}", self.v4),
        }
    }
}

/// A peer as the leases describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    /// The peer node's name.
    pub node: String,
    /// Its public key.
    pub key: Key,
    /// Where its datagrams go.
    pub endpoint: SocketAddrV4,
    /// Its pod subnets: what may come out of its tunnel and what goes into it.
    pub allowed: Allowed,
}

/// The peers wanted for `leases`, seen from `local`. Leases with unreadable data are skipped.
pub fn desired(local: &Lease, leases: &Leases) -> Vec<PeerSpec> {
    peers(BackendKind::Wireguard, local, leases)
        .filter_map(|l| {
            let data: WireguardData = serde_json::from_value(l.backend_data.clone())
                .map_err(|e| tracing::warn!(node = %l.node, error = %e, "unreadable wireguard lease data"))
                .ok()?;
            let Some(key) = Key::from_base64(&data.public_key) else {
                tracing::warn!(node = %l.node, "lease carries an invalid public key");
                return None;
            };
            Some(PeerSpec {
                node: l.node.clone(),
                key,
                endpoint: SocketAddrV4::new(l.public_ip, data.port),
                allowed: Allowed {
                    v4: l.subnet,
                    v6: l.ipv6_subnet,
                },
            })
        })
        .collect()
}

/// One live peer: its protocol state and where it is.
pub struct Peer<T> {
    /// Index (upper 24 bits of its sessions' receiver indices).
    pub index: u32,
    /// The peer node.
    pub node: String,
    /// Its key.
    pub key: Key,
    /// Its subnets.
    pub allowed: Allowed,
    endpoint: AtomicU64,
    /// The protocol state (boringtun's `Tunn` in the daemon).
    pub state: Mutex<T>,
}

fn pack(a: SocketAddrV4) -> u64 {
    (u64::from(u32::from(*a.ip())) << 16) | u64::from(a.port())
}

fn unpack(v: u64) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from((v >> 16) as u32), v as u16)
}

impl<T> Peer<T> {
    /// Where datagrams for this peer go.
    pub fn endpoint(&self) -> SocketAddrV4 {
        unpack(self.endpoint.load(Ordering::Relaxed))
    }

    /// Moves the endpoint (a lease said so, or an authenticated datagram came from there).
    pub fn set_endpoint(&self, endpoint: SocketAddrV4) {
        self.endpoint.store(pack(endpoint), Ordering::Relaxed);
    }
}

/// An immutable snapshot of every peer, cheap to share with the data plane.
pub struct Table<T> {
    by_index: HashMap<u32, Arc<Peer<T>>>,
    by_key: HashMap<Key, Arc<Peer<T>>>,
    /// Routes, longest prefix first.
    routes: Vec<(IpNet, Arc<Peer<T>>)>,
    /// The peers' endpoints as their leases publish them.
    endpoints: HashSet<SocketAddrV4>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Self {
            by_index: HashMap::new(),
            by_key: HashMap::new(),
            routes: Vec::new(),
            endpoints: HashSet::new(),
        }
    }
}

/// What [`Table::update`] changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Peers created (new node or new key).
    pub added: Vec<String>,
    /// Peers whose endpoint moved.
    pub moved: Vec<String>,
    /// Peers dropped (gone, or re-keyed).
    pub removed: Vec<String>,
}

impl Changes {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.moved.is_empty() && self.removed.is_empty()
    }
}

impl<T> Table<T> {
    /// The peer whose subnet holds `dst`.
    pub fn route(&self, dst: IpAddr) -> Option<&Arc<Peer<T>>> {
        self.routes
            .iter()
            .find(|(net, _)| net.contains(&dst))
            .map(|(_, p)| p)
    }

    /// The peer owning sessions with this receiver index.
    pub fn by_receiver(&self, receiver_idx: u32) -> Option<&Arc<Peer<T>>> {
        self.by_index.get(&(receiver_idx >> 8))
    }

    /// The peer with this static key.
    pub fn by_key(&self, key: &Key) -> Option<&Arc<Peer<T>>> {
        self.by_key.get(key)
    }

    /// Whether `endpoint` is where a peer's lease says it sends from.
    pub fn is_peer_endpoint(&self, endpoint: SocketAddrV4) -> bool {
        self.endpoints.contains(&endpoint)
    }

    /// Every peer.
    pub fn peers(&self) -> impl Iterator<Item = &Arc<Peer<T>>> {
        self.by_index.values()
    }

    /// A new table for `specs`: unchanged peers (same key and subnet) keep their protocol state
    /// and only have their endpoint moved; new or re-keyed peers get fresh state from `make`
    /// and a fresh index from `next_index`.
    pub fn update(
        &self,
        specs: &[PeerSpec],
        next_index: &mut u32,
        mut make: impl FnMut(&PeerSpec, u32) -> T,
    ) -> (Self, Changes) {
        let mut table = Table::default();
        let mut changes = Changes::default();
        for spec in specs {
            let peer = match self
                .by_key
                .get(&spec.key)
                .filter(|p| p.allowed == spec.allowed)
            {
                Some(existing) => {
                    if existing.endpoint() != spec.endpoint {
                        existing.set_endpoint(spec.endpoint);
                        changes.moved.push(spec.node.clone());
                    }
                    existing.clone()
                }
                None => {
                    let index = *next_index & 0x00ff_ffff;
                    *next_index = next_index.wrapping_add(1);
                    changes.added.push(spec.node.clone());
                    Arc::new(Peer {
                        index,
                        node: spec.node.clone(),
                        key: spec.key,
                        allowed: spec.allowed,
                        endpoint: AtomicU64::new(pack(spec.endpoint)),
                        state: Mutex::new(make(spec, index)),
                    })
                }
            };
            table.endpoints.insert(spec.endpoint);
            table.by_index.insert(peer.index, peer.clone());
            table.by_key.insert(peer.key, peer.clone());
            table
                .routes
                .extend(peer.allowed.nets().map(|net| (net, peer.clone())));
        }
        for old in self.by_index.values() {
            if !table.by_index.contains_key(&old.index) {
                changes.removed.push(old.node.clone());
            }
        }
        table
            .routes
            .sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        (table, changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(node: &str, key: u8, ip: [u8; 4], subnet: &str) -> PeerSpec {
        PeerSpec {
            node: node.into(),
            key: Key([key; 32]),
            endpoint: SocketAddrV4::new(ip.into(), 51820),
            allowed: Allowed {
                v4: subnet.parse().unwrap(),
                v6: None,
            },
        }
    }

    #[test]
    fn peers_follow_the_leases() {
        let mut next = 1;
        let mut made = 0;
        let mut make = |_: &PeerSpec, i: u32| {
            made += 1;
            i
        };
        let a = spec("a", 1, [172, 30, 0, 11], "10.244.1.0/24");
        let b = spec("b", 2, [172, 30, 0, 12], "10.244.2.0/24");
        let (t1, c1) = Table::default().update(&[a.clone(), b.clone()], &mut next, &mut make);
        assert_eq!(c1.added, vec!["a", "b"]);
        assert_eq!(t1.route("10.244.2.7".parse().unwrap()).unwrap().node, "b");
        assert!(t1.route("10.9.0.1".parse().unwrap()).is_none());
        let b_index = t1.by_key(&Key([2; 32])).unwrap().index;
        assert_eq!(t1.by_receiver(b_index << 8 | 0x17).unwrap().node, "b");

        // Unchanged: nothing happens, state is kept.
        let (t2, c2) = t1.update(&[a.clone(), b.clone()], &mut next, &mut make);
        assert!(c2.is_empty());
        assert!(Arc::ptr_eq(
            t2.by_key(&a.key).unwrap(),
            t1.by_key(&a.key).unwrap()
        ));

        // b roams, a re-keys, and a third node appears.
        let b2 = spec("b", 2, [172, 30, 0, 99], "10.244.2.0/24");
        let a2 = spec("a", 9, [172, 30, 0, 11], "10.244.1.0/24");
        let c = spec("c", 3, [172, 30, 0, 13], "10.244.3.0/24");
        let (t3, c3) = t2.update(&[a2.clone(), b2.clone(), c], &mut next, &mut make);
        assert_eq!(c3.moved, vec!["b"]);
        assert_eq!(c3.added, vec!["a", "c"]);
        assert_eq!(c3.removed, vec!["a"]);
        assert_eq!(t3.by_key(&b2.key).unwrap().endpoint(), b2.endpoint);
        assert!(t3.is_peer_endpoint(b2.endpoint));
        assert!(!t3.is_peer_endpoint(b.endpoint), "b's old endpoint");
        assert!(t3.by_key(&Key([1; 32])).is_none());
        assert!(t3
            .by_receiver(t1.by_key(&a.key).unwrap().index << 8)
            .is_none());

        // b turns dual-stack: a new peer (its allowed IPs changed), reached on both families.
        let mut b3 = b2.clone();
        b3.allowed.v6 = Some("fd00:10:244:2::/64".parse().unwrap());
        let c = spec("c", 3, [172, 30, 0, 13], "10.244.3.0/24");
        let (t3, c) = t3.update(&[a2.clone(), b3, c], &mut next, &mut make);
        assert_eq!(c.added, vec!["b"]);
        assert_eq!(
            t3.route("fd00:10:244:2::7".parse().unwrap()).unwrap().node,
            "b"
        );
        assert_eq!(t3.route("10.244.2.7".parse().unwrap()).unwrap().node, "b");
        assert!(t3.route("fd00:10:244:3::7".parse().unwrap()).is_none());

        // Everyone leaves.
        let (t4, c4) = t3.update(&[], &mut next, &mut make);
        assert_eq!(c4.removed.len(), 3);
        assert!(t4.route("10.244.2.7".parse().unwrap()).is_none());
        assert_eq!(made, 5);
    }

    #[test]
    fn desired_reads_lease_data_and_skips_garbage() {
        let lease = |node: &str, subnet: &str, data: serde_json::Value| Lease {
            subnet: subnet.parse().unwrap(),
            ipv6_subnet: None,
            node: node.into(),
            public_ip: "172.30.0.12".parse().unwrap(),
            backend_type: "wireguard".into(),
            backend_data: data,
            ttl_secs: None,
            handle: 0,
        };
        let me = lease("me", "10.244.1.0/24", serde_json::json!({}));
        let good = lease(
            "b",
            "10.244.2.0/24",
            serde_json::json!({"public_key": Key([5; 32]).to_base64(), "port": 51821}),
        );
        let bad_key = lease(
            "c",
            "10.244.3.0/24",
            serde_json::json!({"public_key": "xx", "port": 1}),
        );
        let garbage = lease("d", "10.244.4.0/24", serde_json::json!([1, 2]));
        let leases: Leases = Arc::new(
            [me.clone(), good, bad_key, garbage]
                .into_iter()
                .map(|l| (l.subnet, l))
                .collect(),
        );
        let want = desired(&me, &leases);
        assert_eq!(want.len(), 1);
        assert_eq!(want[0].endpoint.to_string(), "172.30.0.12:51821");
    }
}
