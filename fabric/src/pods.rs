//! Pod networking: a routed veth per pod (no bridge). The host side carries a /32 route to the
//! pod and answers ARP for the pod's link-local gateway (proxy ARP); the pod gets its address
//! as a /32 and a default route via that gateway. Addresses come from the node's [`PodPool`].
//!
//! ADD either completes or leaves nothing behind (no veth, no held address); DEL and GC are
//! idempotent.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::Path;

use fabric_cni::api::{
    check_ports, codes, AddResult, Attachment, AttachmentKey, CniError, Interface, IpConfig,
    Route as CniRoute,
};
use std::sync::Arc;

use ipam::pool::Owner;
use ipam::{PodPool, PodRecord, PoolError, Store};
use ipnet::Ipv4Net;
use tokio::sync::Mutex;
use tunnel::netlink::{Link, Netlink, Route};
use tunnel::{sysctl, Mac};

use crate::nft;

/// The link-local gateway every pod routes through (answered by the host veth's proxy ARP).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The name of the host-side veth for an attachment: `fab` + 11 hex digits of a stable hash
/// of container id and interface name (fits IFNAMSIZ).
pub fn host_veth_name(key: &AttachmentKey) -> String {
    format!("fab{}", &hash_hex(key, b'h')[..11])
}

/// A temporary name for the pod-side veth while it is still in the node's namespace.
fn temp_peer_name(key: &AttachmentKey) -> String {
    format!("fbt{}", &hash_hex(key, b'p')[..11])
}

fn hash_hex(key: &AttachmentKey, salt: u8) -> String {
    let mut seed = Vec::with_capacity(key.container_id.len() + key.ifname.len() + 2);
    seed.extend_from_slice(key.container_id.as_bytes());
    seed.push(0);
    seed.extend_from_slice(key.ifname.as_bytes());
    seed.push(salt);
    Mac::derived(&seed)
        .octets()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn owner(key: &AttachmentKey) -> Owner {
    Owner {
        container_id: key.container_id.clone(),
        ifname: key.ifname.clone(),
    }
}

fn internal(msg: impl Into<String>, details: impl std::fmt::Display) -> CniError {
    CniError::new(codes::PLUGIN_SPECIFIC, msg, details.to_string())
}

/// Where attached pods are recorded for policy enforcement: the datastore, under this node.
pub struct Registry {
    /// The datastore.
    pub store: Arc<dyn Store>,
    /// This node's name.
    pub node: String,
}

/// The pod network of a node that holds a subnet.
pub struct PodNetwork {
    subnet: Ipv4Net,
    cluster: Ipv4Net,
    mtu: u32,
    netlink: Netlink,
    pool: Mutex<PodPool>,
    registry: Registry,
}

impl PodNetwork {
    /// Pods in `subnet` (of the cluster network `cluster`) with interfaces of `mtu`, addresses
    /// recorded in `pool`, identities in `registry`.
    pub fn new(
        subnet: Ipv4Net,
        cluster: Ipv4Net,
        mtu: u32,
        netlink: Netlink,
        pool: PodPool,
        registry: Registry,
    ) -> Self {
        Self {
            subnet,
            cluster,
            mtu,
            netlink,
            pool: Mutex::new(pool),
            registry,
        }
    }

    /// The node's pod subnet.
    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    /// Attaches a pod.
    pub async fn add(&self, att: &Attachment) -> Result<AddResult, CniError> {
        let netns_path = att.netns.as_deref().ok_or_else(|| {
            CniError::new(codes::INVALID_ENV, "CNI_NETNS is required for ADD", "")
        })?;
        let netns = File::open(netns_path).map_err(|e| {
            CniError::new(
                codes::INVALID_ENV,
                format!("cannot open network namespace {netns_path}"),
                e,
            )
        })?;
        // The plugin checked them already; other clients of the socket may not have.
        check_ports(&att.ports)?;
        if att.ips.len() > 1 {
            return Err(CniError::new(
                codes::INVALID_CONFIG,
                "at most one IPv4 address can be requested",
                format!("{:?}", att.ips),
            ));
        }
        let mut pool = self.pool.lock().await;
        let before = pool.allocations().clone();
        let addr = pool
            .update(|a| a.allocate(owner(&att.key), att.ips.first().copied()))
            .map_err(|e| match e {
                PoolError::AlreadyAllocated { .. } => CniError::new(
                    codes::PLUGIN_SPECIFIC,
                    "container is already attached",
                    format!("{e}; DEL it first"),
                ),
                PoolError::OutOfRange { .. } | PoolError::InUse { .. } => {
                    CniError::new(codes::INVALID_CONFIG, "requested address unavailable", e)
                }
                PoolError::Exhausted(_) => CniError::new(
                    codes::TRY_AGAIN_LATER,
                    "no free pod address on this node",
                    e,
                ),
                PoolError::Io { .. } => internal("cannot record the pod address", e),
            })?;
        match self.wire(att, &netns, netns_path, addr).await {
            Ok(result) => {
                self.apply_firewall(&pool);
                self.register(att, addr).await;
                Ok(result)
            }
            Err(e) => {
                // Leave nothing behind: the veth pair goes with its host side.
                if let Err(cleanup) = self.unwire(&att.key).await {
                    tracing::error!(error = %cleanup, container = %att.key.container_id, "cleanup after failed ADD");
                }
                if let Err(release) = pool.update(|a| {
                    *a = before;
                    Ok(())
                }) {
                    tracing::error!(error = %release, "cannot release address after failed ADD");
                }
                Err(e)
            }
        }
    }

    async fn wire(
        &self,
        att: &Attachment,
        netns: &File,
        netns_path: &str,
        addr: Ipv4Addr,
    ) -> Result<AddResult, CniError> {
        let nl_err = |what: &str| {
            let what = what.to_owned();
            move |e: tunnel::NetlinkError| internal(what, e)
        };
        let pod_nl = Netlink::connect_in(Path::new(netns_path)).map_err(|e| {
            CniError::new(
                codes::INVALID_ENV,
                format!("cannot enter network namespace {netns_path}"),
                e,
            )
        })?;
        if pod_nl
            .link(&att.key.ifname)
            .await
            .map_err(nl_err("inspect pod"))?
            .is_some()
        {
            return Err(CniError::new(
                codes::PLUGIN_SPECIFIC,
                format!("interface {} already exists in the pod", att.key.ifname),
                "pick another CNI_IFNAME or DEL the attachment first",
            ));
        }
        let host_name = host_veth_name(&att.key);
        let peer_name = temp_peer_name(&att.key);
        // A leftover from a crashed ADD would block the names.
        for stale in [&host_name, &peer_name] {
            if let Some(link) = self
                .netlink
                .link(stale)
                .await
                .map_err(nl_err("inspect host"))?
            {
                self.netlink
                    .delete_link(link.index)
                    .await
                    .map_err(nl_err("remove stale veth"))?;
            }
        }
        self.netlink
            .add_veth(&host_name, &peer_name)
            .await
            .map_err(nl_err("create veth pair"))?;
        let host = self
            .netlink
            .require_link(&host_name)
            .await
            .map_err(nl_err("create veth pair"))?;
        let peer = self
            .netlink
            .require_link(&peer_name)
            .await
            .map_err(nl_err("create veth pair"))?;
        self.netlink
            .move_link(peer.index, netns)
            .await
            .map_err(nl_err("move veth into pod"))?;
        self.netlink
            .set_link(&host, Some(self.mtu), None, true)
            .await
            .map_err(nl_err("configure host veth"))?;
        sysctl::enable_proxy_arp(&host_name).map_err(|e| internal("enable proxy ARP", e))?;
        self.netlink
            .replace_route(&Route {
                dst: Ipv4Net::new(addr, 32).expect("/32"),
                via: None,
                oif: host.index,
                onlink: false,
            })
            .await
            .map_err(nl_err("route to pod"))?;

        let pod_link = pod_nl
            .require_link(&peer_name)
            .await
            .map_err(nl_err("find pod veth"))?;
        pod_nl
            .rename_link(pod_link.index, &att.key.ifname)
            .await
            .map_err(nl_err("rename pod veth"))?;
        let pod_link = Link {
            name: att.key.ifname.clone(),
            ..pod_link
        };
        pod_nl
            .set_link(&pod_link, Some(self.mtu), None, true)
            .await
            .map_err(nl_err("configure pod veth"))?;
        pod_nl
            .ensure_address(pod_link.index, Ipv4Net::new(addr, 32).expect("/32"))
            .await
            .map_err(nl_err("address pod"))?;
        for route in pod_routes(pod_link.index) {
            pod_nl
                .replace_route(&route)
                .await
                .map_err(nl_err("pod routes"))?;
        }
        tracing::info!(container = %att.key.container_id, %addr, veth = %host_name, "pod attached");
        Ok(AddResult {
            interfaces: vec![
                Interface {
                    name: host_name,
                    mac: host.mac.map(|m| m.to_string()).unwrap_or_default(),
                    sandbox: None,
                },
                Interface {
                    name: att.key.ifname.clone(),
                    mac: pod_link.mac.map(|m| m.to_string()).unwrap_or_default(),
                    sandbox: Some(netns_path.to_owned()),
                },
            ],
            ips: vec![IpConfig {
                address: format!("{addr}/32"),
                gateway: Some(GATEWAY),
                interface: Some(1),
            }],
            routes: vec![CniRoute {
                dst: "0.0.0.0/0".into(),
                gw: Some(GATEWAY),
            }],
        })
    }

    /// Installs the node's nftables table for the pods in `pool`: anti-spoofing per host veth,
    /// masquerade. Failures are logged; the next reconcile pass tries again.
    fn apply_firewall(&self, pool: &PodPool) {
        let pods: Vec<(String, Ipv4Addr)> = pool
            .allocations()
            .iter()
            .map(|(ip, o)| {
                let key = AttachmentKey {
                    container_id: o.container_id.clone(),
                    ifname: o.ifname.clone(),
                };
                (host_veth_name(&key), ip)
            })
            .collect();
        if let Err(e) = nft::apply(&nft::ruleset(self.cluster, &pods)) {
            tracing::error!(error = %e, "cannot install the node's nftables rules");
        }
    }

    /// Re-installs the node's nftables table (a reconcile pass: heals hand-made damage).
    pub async fn sync_firewall(&self) {
        self.apply_firewall(&*self.pool.lock().await);
    }

    /// Records the pod's identity for policy; a failure is logged, not fatal: the pod works,
    /// and policy treats an unknown address like any address outside the cluster.
    ///
    /// This is the only write of a pod record: once per ADD of a new container (an ADD of an
    /// attached container fails before it gets here), never on restart or resync. So labels
    /// changed later with `fabricctl pod label` stay until DEL or GC removes the record.
    async fn register(&self, att: &Attachment, ip: Ipv4Addr) {
        let record = PodRecord {
            namespace: att
                .pod_namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            name: att
                .pod_name
                .clone()
                .unwrap_or_else(|| att.key.container_id.clone()),
            node: self.registry.node.clone(),
            container_id: att.key.container_id.clone(),
            ip,
            ipv6: None,
            labels: att.labels.clone(),
            ports: att.ports.clone(),
        };
        if let Err(e) = self.registry.store.register_pod(&record).await {
            tracing::error!(error = %e, pod = %record.name, "cannot register the pod for policy");
        }
    }

    async fn unwire(&self, key: &AttachmentKey) -> Result<(), tunnel::NetlinkError> {
        for name in [host_veth_name(key), temp_peer_name(key)] {
            if let Some(link) = self.netlink.link(&name).await? {
                self.netlink.delete_link(link.index).await?;
            }
        }
        Ok(())
    }

    /// Detaches a pod; unknown attachments succeed.
    pub async fn del(&self, key: &AttachmentKey) -> Result<(), CniError> {
        let mut pool = self.pool.lock().await;
        self.unwire(key)
            .await
            .map_err(|e| internal("cannot remove the pod's veth", e))?;
        let released = pool
            .update(|a| Ok(a.release(&owner(key))))
            .map_err(|e| internal("cannot record the released address", e))?;
        if let Some(addr) = released {
            tracing::info!(container = %key.container_id, %addr, "pod detached");
            self.apply_firewall(&pool);
            if let Err(e) = self
                .registry
                .store
                .unregister_pod(&self.registry.node, &key.container_id)
                .await
            {
                tracing::error!(error = %e, container = %key.container_id, "cannot unregister the pod");
            }
        }
        Ok(())
    }

    /// Verifies that an attachment is as ADD left it.
    pub async fn check(&self, att: &Attachment) -> Result<(), CniError> {
        let addr = self
            .pool
            .lock()
            .await
            .allocations()
            .get(&owner(&att.key))
            .ok_or_else(|| {
                CniError::new(
                    codes::UNKNOWN_CONTAINER,
                    "container is not attached",
                    &att.key.container_id,
                )
            })?;
        let broken =
            |what: String| CniError::new(codes::PLUGIN_SPECIFIC, "attachment is broken", what);
        let nl_err = |e: tunnel::NetlinkError| internal("cannot inspect the attachment", e);
        let host_name = host_veth_name(&att.key);
        let host = self
            .netlink
            .link(&host_name)
            .await
            .map_err(nl_err)?
            .ok_or_else(|| broken(format!("host veth {host_name} is missing")))?;
        if !host.up {
            return Err(broken(format!("host veth {host_name} is down")));
        }
        let want = Route {
            dst: Ipv4Net::new(addr, 32).expect("/32"),
            via: None,
            oif: host.index,
            onlink: false,
        };
        if !self
            .netlink
            .owned_routes()
            .await
            .map_err(nl_err)?
            .contains(&want)
        {
            return Err(broken(format!(
                "route to {addr} via {host_name} is missing"
            )));
        }
        let netns = att.netns.as_deref().ok_or_else(|| {
            CniError::new(codes::INVALID_ENV, "CNI_NETNS is required for CHECK", "")
        })?;
        let pod_nl = Netlink::connect_in(Path::new(netns))
            .map_err(|e| broken(format!("cannot enter {netns}: {e}")))?;
        let pod = pod_nl
            .link(&att.key.ifname)
            .await
            .map_err(nl_err)?
            .ok_or_else(|| {
                broken(format!(
                    "interface {} is missing in the pod",
                    att.key.ifname
                ))
            })?;
        let addrs = pod_nl.addresses(pod.index).await.map_err(nl_err)?;
        if !addrs.contains(&Ipv4Net::new(addr, 32).expect("/32")) {
            return Err(broken(format!("address {addr}/32 is missing in the pod")));
        }
        let routes = pod_nl.owned_routes().await.map_err(nl_err)?;
        for want in pod_routes(pod.index) {
            if !routes.contains(&want) {
                return Err(broken(format!("pod route to {} is missing", want.dst)));
            }
        }
        Ok(())
    }

    /// Detaches every attachment not in `valid`.
    pub async fn gc(&self, valid: &[AttachmentKey]) -> Result<(), CniError> {
        let stale: Vec<AttachmentKey> = self
            .pool
            .lock()
            .await
            .allocations()
            .iter()
            .map(|(_, o)| AttachmentKey {
                container_id: o.container_id.clone(),
                ifname: o.ifname.clone(),
            })
            .filter(|k| !valid.contains(k))
            .collect();
        for key in &stale {
            tracing::info!(container = %key.container_id, "garbage-collecting attachment");
            self.del(key).await?;
        }
        Ok(())
    }
}

/// The routes inside a pod: the gateway on-link, the default route via it.
fn pod_routes(ifindex: u32) -> [Route; 2] {
    [
        Route {
            dst: Ipv4Net::new(GATEWAY, 32).expect("/32"),
            via: None,
            oif: ifindex,
            onlink: false,
        },
        Route {
            dst: Ipv4Net::default(),
            via: Some(GATEWAY),
            oif: ifindex,
            onlink: false,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, ifname: &str) -> AttachmentKey {
        AttachmentKey {
            container_id: id.into(),
            ifname: ifname.into(),
        }
    }

    #[test]
    fn veth_names_fit_ifnamsiz_and_are_stable() {
        let a = host_veth_name(&key("abc", "eth0"));
        assert_eq!(a.len(), 14);
        assert_eq!(a, host_veth_name(&key("abc", "eth0")));
        assert_ne!(a, host_veth_name(&key("abc", "eth1")));
        assert_ne!(a, host_veth_name(&key("abd", "eth0")));
        assert_ne!(a[3..], temp_peer_name(&key("abc", "eth0"))[3..]);
    }
}
