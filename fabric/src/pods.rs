//! Pod networking: a routed veth per pod (no bridge). The host side carries a /32 route to the
//! pod and answers ARP for the pod's link-local gateway (proxy ARP); the pod gets its address
//! as a /32 and a default route via that gateway. Addresses come from the node's [`PodPool`].
//!
//! On a dual-stack network the pod also gets an IPv6 address (/128) with its IPv4 address's
//! host part in the node's IPv6 subnet (so the pool's bookkeeping serves both), and a default
//! route via `fe80::1`, which the host veth holds itself (IPv6 has no proxy ARP to lean on).
//!
//! ADD either completes or leaves nothing behind (no veth, no held address, no record, no set
//! element); DEL and GC are idempotent, so a DEL cut short is finished by the next. An ADD cut
//! short by fabricd's death leaves an address whose veth is gone (or never came): the
//! restarted fabricd releases it before it serves ([`PodNetwork::recover`]). When ADD returns,
//! the pod's anti-spoofing elements are in the node's table; a veth named like a pod's that
//! is not in them is dropped ([`nft::ruleset`]).
//!
//! Attachments proceed in parallel: the pool is locked only to take or give back an address,
//! never across netlink, nft or the datastore. Within an ADD the veth, the pod's set elements
//! and its record go in at once. The node's nft table is changed by one caller at a time,
//! each change covering every pool change made before it started ([`Firewall`]): a pool
//! change adds and removes set elements over a netlink socket kept open, in microseconds; the
//! whole table is rewritten only on a reconcile pass or when what it holds is unknown.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fabric_cni::api::{
    check_ports, codes, AddResult, Attachment, AttachmentKey, CniError, Interface, IpConfig,
    Route as CniRoute,
};

use ipam::backoff::Backoff;
use ipam::pool::Owner;
use ipam::{PodPool, PodRecord, PoolError, Store};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tokio::sync::Mutex;
use tunnel::netlink::{Netlink, Route};
use tunnel::{sysctl, Mac, TunnelEnds};

use crate::fault::{self, Point};
use crate::nft;

/// The link-local gateway every pod routes through (answered by the host veth's proxy ARP).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The IPv6 gateway every pod routes through: a link-local address every host veth holds.
pub const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// A node's pod subnets, or the cluster's pod networks: IPv4, and IPv6 on a dual-stack
/// network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnets {
    /// The IPv4 one.
    pub v4: Ipv4Net,
    /// The IPv6 one, on a dual-stack network.
    pub v6: Option<Ipv6Net>,
}

impl Subnets {
    /// A pod's IPv6 address, given its IPv4 one: the same host part in the IPv6 subnet.
    pub fn ipv6_of(&self, v4: Ipv4Addr) -> Option<Ipv6Addr> {
        ipam::ipv6_host(self.v4, self.v6?, v4)
    }

    /// The IPv4 address whose IPv6 twin is `v6`.
    fn ipv4_of(&self, v6: Ipv6Addr) -> Option<Ipv4Addr> {
        let net = self.v6?;
        if !net.contains(&v6) {
            return None;
        }
        let host = u128::from(v6) - u128::from(net.network());
        let host = u32::try_from(host).ok()?;
        let host_bits = 32 - u32::from(self.v4.prefix_len());
        if host_bits < 32 && host >> host_bits != 0 {
            return None;
        }
        Some(Ipv4Addr::from(u32::from(self.v4.network()) + host))
    }

    /// The IPv4 address to ask the pool for, from the runtime's `ips` capability: at most one
    /// address per family; an IPv6 address names the IPv4 address with its host part, and
    /// when both are given they must agree.
    pub fn requested(&self, ips: &[IpAddr]) -> Result<Option<Ipv4Addr>, CniError> {
        let invalid =
            |msg: String, details: String| CniError::new(codes::INVALID_CONFIG, msg, details);
        let v4: Vec<Ipv4Addr> = ips
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(ip) => Some(*ip),
                IpAddr::V6(_) => None,
            })
            .collect();
        let v6: Vec<Ipv6Addr> = ips
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V6(ip) => Some(*ip),
                IpAddr::V4(_) => None,
            })
            .collect();
        if v4.len() > 1 || v6.len() > 1 {
            return Err(invalid(
                "at most one address per family can be requested".into(),
                format!("{ips:?}"),
            ));
        }
        let Some(&v6) = v6.first() else {
            return Ok(v4.first().copied());
        };
        let Some(net6) = self.v6 else {
            return Err(invalid(
                format!("requested IPv6 address {v6}, but this node's pod network is IPv4 only"),
                "enable IPv6 in the network config (EnableIPv6, IPv6Network), or request an IPv4 address".into(),
            ));
        };
        let twin = self.ipv4_of(v6).ok_or_else(|| {
            invalid(
                "requested address unavailable".into(),
                format!("{v6} is not usable in this node's IPv6 subnet {net6} (its host part must fit {})", self.v4),
            )
        })?;
        match v4.first() {
            Some(&ip) if ip != twin => Err(invalid(
                "requested addresses disagree".into(),
                format!("a pod's IPv6 address carries its IPv4 address's host part: {v6} goes with {twin}, not {ip}"),
            )),
            _ => Ok(Some(twin)),
        }
    }
}
/// Refuses an ADD into the node's own network namespace (fabricd's, or init's): wiring it
/// as a pod would move the node's default route and addresses under a pod's veth.
fn refuse_host_netns(netns: &File, path: &str) -> Result<(), CniError> {
    use std::os::unix::fs::MetadataExt;
    let id = |m: std::fs::Metadata| (m.dev(), m.ino());
    let target = netns.metadata().map(id).map_err(|e| {
        CniError::new(
            codes::INVALID_ENV,
            format!("cannot read network namespace {path}"),
            e,
        )
    })?;
    for own in ["/proc/self/ns/net", "/proc/1/ns/net"] {
        if std::fs::metadata(own)
            .map(id)
            .is_ok_and(|host| host == target)
        {
            return Err(CniError::new(
                codes::INVALID_ENV,
                format!("CNI_NETNS {path} is the node's own network namespace"),
                "a pod needs a network namespace of its own; fabric does not wire host-network pods",
            ));
        }
    }
    Ok(())
}

/// Set once this kernel refused a veth peer named like an interface of the node's own
/// namespace (see [`PodNetwork::create_veth`]).
static PEER_NAMES_COLLIDE_HERE: AtomicBool = AtomicBool::new(false);

/// The name of the host-side veth for an attachment: [`nft::POD_VETH_PREFIX`] (`fab`) + 11
/// hex digits of a stable hash of container id and interface name (fits IFNAMSIZ).
pub fn host_veth_name(key: &AttachmentKey) -> String {
    format!("{}{}", nft::POD_VETH_PREFIX, &hash_hex(key, b'h')[..11])
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

/// The host veth of an address's holder.
fn veth_of(owner: &Owner) -> String {
    owner.recovered_veth().map_or_else(
        || {
            host_veth_name(&AttachmentKey {
                container_id: owner.container_id.clone(),
                ifname: owner.ifname.clone(),
            })
        },
        str::to_owned,
    )
}

fn internal(msg: impl Into<String>, details: impl std::fmt::Display) -> CniError {
    CniError::new(codes::PLUGIN_SPECIFIC, msg, details.to_string())
}

/// Where attached pods are recorded for policy enforcement: the datastore, under this node.
#[derive(Clone)]
pub struct Registry {
    /// The datastore.
    pub store: Arc<dyn Store>,
    /// This node's name.
    pub node: String,
    /// Writes that failed and are being retried, by container id.
    pub pending: Arc<std::sync::Mutex<HashMap<String, tokio::task::AbortHandle>>>,
}

/// A write of a pod's record to retry.
enum RecordWrite {
    Register(PodRecord),
    Unregister,
}

impl Registry {
    /// A registry of `node`'s pods in `store`.
    pub fn new(store: Arc<dyn Store>, node: String) -> Self {
        Self {
            store,
            node,
            pending: Default::default(),
        }
    }

    /// Writes `record`; when that fails, retries it in the background until it lands (or the
    /// pod goes): a pod missing from the policy view would not be isolated. The revision of
    /// a first write that landed, where the store has one.
    async fn register(&self, record: PodRecord) -> Option<i64> {
        let container = record.container_id.clone();
        self.cancel(&container);
        match self.store.register_pod(&record).await {
            Ok(revision) => revision,
            Err(e) => {
                tracing::error!(error = %e, pod = %record.name, "cannot register the pod for policy; retrying until it lands");
                self.retry(container, RecordWrite::Register(record));
                None
            }
        }
    }

    /// Removes a pod's record; when that fails, retries in the background until it is gone
    /// (a stale record would give the pod's address, handed out again, its old identity).
    async fn unregister(&self, container: &str) {
        self.cancel(container);
        if let Err(e) = self.store.unregister_pod(&self.node, container).await {
            tracing::error!(error = %e, %container, "cannot unregister the pod; retrying until it is gone");
            self.retry(container.to_owned(), RecordWrite::Unregister);
        }
    }

    fn cancel(&self, container: &str) {
        if let Some(task) = self.lock_pending().remove(container) {
            task.abort();
        }
    }

    fn retry(&self, container: String, write: RecordWrite) {
        let me = self.clone();
        let key = container.clone();
        let task = tokio::spawn(async move {
            let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
            loop {
                tokio::time::sleep(backoff.next_delay()).await;
                let done = match &write {
                    RecordWrite::Register(record) => me.store.register_pod(record).await.map(drop),
                    RecordWrite::Unregister => me.store.unregister_pod(&me.node, &container).await,
                };
                match done {
                    Ok(()) => {
                        tracing::info!(%container, "pod record written after retrying");
                        me.lock_pending().remove(&container);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, %container, "pod record write failed again");
                    }
                }
            }
        });
        self.lock_pending().insert(key, task.abort_handle());
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, tokio::task::AbortHandle>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A pod attached by [`PodNetwork::add`].
#[derive(Debug)]
pub struct Added {
    /// The CNI result.
    pub result: AddResult,
    /// The datastore revision the pod's record was written at, where the store has one; the
    /// policy view that reached it knows the pod. `None` also when registering failed.
    pub registered: Option<i64>,
}

/// The pod network of a node that holds a subnet.
pub struct PodNetwork {
    subnet: Subnets,
    cluster: Subnets,
    mtu: u32,
    netlink: Netlink,
    pool: Mutex<PodPool>,
    registry: Registry,
    tunnel: nft::TunnelGuard,
    firewall: Firewall,
}

/// An address [`PodNetwork::add`] took from the pool.
struct Taken {
    addr: Ipv4Addr,
    /// The pool's last address handed out before (to undo the allocation without a trace).
    last: Option<Ipv4Addr>,
    /// The pool's generation with it.
    change: u64,
}

/// Which pool changes the node's nft table reflects, and what it holds. Each change to the
/// pool takes a new generation (under the pool's lock); an apply, one at a time, brings the
/// table to the pool as it is then and records the generation it saw, so a caller whose
/// change an apply that started after it already covered has nothing left to do. Where it
/// knows what the table holds, an apply only adds and removes set elements ([`nft::Sets`]);
/// otherwise (the first apply, after a failed one, changed tunnel ends, a reconcile pass) it
/// rewrites the table.
#[derive(Default)]
struct Firewall {
    /// The last generation given to a pool change.
    changed: AtomicU64,
    /// Held across an apply: the generation the table last reflected (0: none).
    applied: Mutex<u64>,
    /// What the table holds, as the last apply left it; `None`: unknown.
    installed: std::sync::Mutex<Option<Installed>>,
    /// The socket set elements are changed through.
    sets: nft::Sets,
}

/// What the node's table holds.
struct Installed {
    /// The pod sets' elements.
    elements: BTreeSet<nft::Element>,
    /// The tunnel ends it guards.
    tunnel: Option<TunnelEnds>,
}

impl Firewall {
    /// A new generation for a change made while the pool's lock is held.
    fn change(&self) -> u64 {
        self.changed.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The generation of the pool's state, read while the pool's lock is held.
    fn current(&self) -> u64 {
        self.changed.load(Ordering::SeqCst)
    }

    /// Makes sure an apply that covers generation `change` has finished (`None`: apply in
    /// any case); returns whether one did. `apply` reads the pool, returns the generation it
    /// read and whether it brought the table there; it runs only with the apply lock held.
    async fn converge<F, Fut>(&self, change: Option<u64>, apply: F) -> bool
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = (u64, bool)>,
    {
        let mut applied = self.applied.lock().await;
        if change.is_some_and(|c| *applied >= c) {
            return true;
        }
        let (seen, ok) = apply().await;
        if ok {
            *applied = (*applied).max(seen);
        }
        ok
    }

    /// Takes what the table holds out (an apply puts it back once it succeeded).
    fn take_installed(&self) -> Option<Installed> {
        self.installed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    fn set_installed(&self, installed: Installed) {
        *self.installed.lock().unwrap_or_else(|e| e.into_inner()) = Some(installed);
    }
}

impl PodNetwork {
    /// Pods in `subnet` (of the cluster network `cluster`) with interfaces of `mtu`, addresses
    /// recorded in `pool`, identities in `registry`; the node's table also carries the tunnel
    /// ends last recorded in `tunnel`.
    pub fn new(
        subnet: Subnets,
        cluster: Subnets,
        mtu: u32,
        netlink: Netlink,
        pool: PodPool,
        registry: Registry,
        tunnel: nft::TunnelGuard,
    ) -> Self {
        Self {
            subnet,
            cluster,
            mtu,
            netlink,
            pool: Mutex::new(pool),
            registry,
            tunnel,
            firewall: Firewall::default(),
        }
    }

    /// The node's pod subnet.
    pub fn subnet(&self) -> Ipv4Net {
        self.subnet.v4
    }

    /// The node's IPv6 pod subnet, on a dual-stack network.
    pub fn subnet6(&self) -> Option<Ipv6Net> {
        self.subnet.v6
    }

    /// The node's pod subnets.
    pub fn subnets(&self) -> Subnets {
        self.subnet
    }

    /// How many pods are attached.
    pub async fn attached(&self) -> usize {
        self.pool.lock().await.allocations().iter().count()
    }

    /// Attaches a pod and registers it for policy.
    pub async fn add(&self, att: &Attachment) -> Result<Added, CniError> {
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
        refuse_host_netns(&netns, netns_path)?;
        // The plugin checked them already; other clients of the socket may not have.
        check_ports(&att.ports)?;
        let requested = self.subnet.requested(&att.ips)?;
        let taken = self.allocate(att, requested).await?;
        fault::point(Point::AddAfterAllocate);
        let addr = taken.addr;
        let addr6 = self.subnet.ipv6_of(addr);
        // Three things at once, none needs another: the veth, the pod's set elements (until
        // they are in, a veth named like a pod's is dropped by the table, so the order does
        // not matter) and the pod's record for policy (a datastore round trip).
        let wire = async {
            let wired = self.wire(att, &netns, netns_path, addr, addr6).await;
            fault::point(Point::AddAfterWire);
            wired
        };
        let register = async {
            let registered = self.register(att, addr, addr6).await;
            fault::point(Point::AddAfterRegister);
            registered
        };
        let (wired, enforced, registered) =
            tokio::join!(wire, self.apply_firewall(Some(taken.change)), register);
        let failed = match (wired, enforced) {
            (Ok(result), true) => {
                return Ok(Added { result, registered });
            }
            (Err(e), _) => e,
            (Ok(_), false) => internal(
                "cannot install the pod's anti-spoofing rules",
                "the node's nftables table could not be updated; see fabricd's log",
            ),
        };
        self.registry.unregister(&att.key.container_id).await;
        // Leave nothing behind: the veth pair goes with its host side.
        if let Err(cleanup) = self.unwire(&att.key).await {
            tracing::error!(error = %cleanup, container = %att.key.container_id, "cleanup after failed ADD");
        }
        let undone = {
            let mut pool = self.pool.lock().await;
            pool.update(|a| Ok(a.undo(&owner(&att.key), taken.last)))
                .map(|_| self.firewall.change())
        };
        match undone {
            // An apply since the allocation may have let the address in.
            Ok(change) => {
                self.apply_firewall(Some(change)).await;
            }
            Err(release) => {
                tracing::error!(error = %release, "cannot release address after failed ADD")
            }
        }
        Err(failed)
    }

    /// The pool, locked; rebuilt from the kernel first if its file was unreadable.
    async fn pool(&self) -> tokio::sync::MutexGuard<'_, PodPool> {
        let mut pool = self.pool.lock().await;
        if pool.lost() {
            let found = self.attached_in_kernel().await;
            match pool.rebuild(found) {
                Ok(n) => tracing::warn!(adopted = n, "pod address pool rebuilt from the kernel"),
                Err(e) => tracing::error!(error = %e, "cannot record the rebuilt pod address pool"),
            }
        }
        pool
    }

    /// The pods the kernel shows attached: each /32 route of the subnet out of a host veth,
    /// held by that veth (DEL finds it by the veth's name, a hash of the attachment).
    async fn attached_in_kernel(&self) -> Vec<(Ipv4Addr, Owner)> {
        let (links, routes) = match (
            self.netlink.links().await,
            self.netlink.owned_routes().await,
        ) {
            (Ok(links), Ok(routes)) => (links, routes),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot read the kernel's pod routes to rebuild the pool");
                return Vec::new();
            }
        };
        let veths: HashMap<u32, String> = links
            .into_iter()
            .filter(|l| l.name.starts_with(nft::POD_VETH_PREFIX) && l.is_veth())
            .map(|l| (l.index, l.name))
            .collect();
        routes
            .into_iter()
            .filter_map(|r| match r.dst {
                IpNet::V4(dst)
                    if dst.prefix_len() == 32 && self.subnet.v4.contains(&dst.addr()) =>
                {
                    Some((dst.addr(), Owner::recovered(veths.get(&r.oif)?)))
                }
                _ => None,
            })
            .collect()
    }

    /// Takes an address for the attachment (and records it).
    async fn allocate(
        &self,
        att: &Attachment,
        requested: Option<Ipv4Addr>,
    ) -> Result<Taken, CniError> {
        let mut pool = self.pool().await;
        let last = pool.allocations().last();
        let addr = pool
            .update(|a| a.allocate(owner(&att.key), requested))
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
        Ok(Taken {
            addr,
            last,
            change: self.firewall.change(),
        })
    }

    /// Gives back the attachment's address, if it holds one; returns it with the pool's new
    /// generation.
    async fn release(&self, key: &AttachmentKey) -> Result<Option<(Ipv4Addr, u64)>, PoolError> {
        let mut pool = self.pool().await;
        // An address rebuilt from the kernel is held by the attachment's host veth.
        let recovered = Owner::recovered(&host_veth_name(key));
        let released =
            pool.update(|a| Ok(a.release(&owner(key)).or_else(|| a.release(&recovered))))?;
        Ok(released.map(|addr| (addr, self.firewall.change())))
    }

    /// Wires the pod in: a veth pair made in one request with its pod side already in the
    /// pod's namespace under its final name, then the host side (proxy ARP, deaf to router
    /// messages, up, routes to the pod) and the pod side (addresses, routes) at once, each
    /// over its own netlink socket.
    async fn wire(
        &self,
        att: &Attachment,
        netns: &File,
        netns_path: &str,
        addr: Ipv4Addr,
        addr6: Option<Ipv6Addr>,
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
        let host_name = host_veth_name(&att.key);
        let ifname = &att.key.ifname;
        self.create_veth(&host_name, ifname, netns, &pod_nl).await?;
        let host_side = async {
            let host = self
                .netlink
                .require_link(&host_name)
                .await
                .map_err(nl_err("find host veth"))?;
            // Before the veth comes up: a pod must never steer the node's routing.
            sysctl::enable_proxy_arp(&host_name).map_err(|e| internal("enable proxy ARP", e))?;
            sysctl::ignore_router_messages(&host_name)
                .map_err(|e| internal("turn off router advertisements and redirects", e))?;
            self.netlink
                .set_link(&host, None, None, true)
                .await
                .map_err(nl_err("bring host veth up"))?;
            if addr6.is_some() {
                self.netlink
                    .ensure_address(host.index, gateway6())
                    .await
                    .map_err(nl_err("IPv6 gateway on host veth"))?;
            }
            for dst in host_routes(addr, addr6) {
                self.netlink
                    .replace_route(&Route {
                        dst,
                        via: None,
                        oif: host.index,
                        onlink: false,
                    })
                    .await
                    .map_err(nl_err("route to pod"))?;
            }
            Ok::<_, CniError>(host)
        };
        let pod_side = async {
            let pod_link = pod_nl
                .require_link(ifname)
                .await
                .map_err(nl_err("find pod veth"))?;
            for address in host_routes(addr, addr6) {
                pod_nl
                    .ensure_address(pod_link.index, address)
                    .await
                    .map_err(nl_err("address pod"))?;
            }
            for route in pod_routes(pod_link.index, addr6.is_some()) {
                pod_nl
                    .replace_route(&route)
                    .await
                    .map_err(nl_err("pod routes"))?;
            }
            Ok::<_, CniError>(pod_link)
        };
        let (host, pod_link) = tokio::try_join!(host_side, pod_side)?;
        tracing::info!(container = %att.key.container_id, %addr, ?addr6, veth = %host_name, "pod attached");
        Ok(AddResult {
            interfaces: vec![
                Interface {
                    name: host_name,
                    mac: host.mac.map(|m| m.to_string()).unwrap_or_default(),
                    sandbox: None,
                },
                Interface {
                    name: ifname.clone(),
                    mac: pod_link.mac.map(|m| m.to_string()).unwrap_or_default(),
                    sandbox: Some(netns_path.to_owned()),
                },
            ],
            ips: host_routes(addr, addr6)
                .into_iter()
                .map(|net| IpConfig {
                    address: net.to_string(),
                    gateway: Some(gateway_for(&net)),
                    interface: Some(1),
                })
                .collect(),
            routes: host_routes(addr, addr6)
                .into_iter()
                .map(|net| CniRoute {
                    dst: match net {
                        IpNet::V4(_) => "0.0.0.0/0".into(),
                        IpNet::V6(_) => "::/0".into(),
                    },
                    gw: Some(gateway_for(&net)),
                })
                .collect(),
        })
    }

    /// Creates the attachment's veth pair: `host_name` here, `ifname` in the pod. A host veth
    /// of that name is what an ADD killed midway left (an ADD of an attached container fails
    /// before it gets here): it goes, its pod side with it, and the pair is made again.
    async fn create_veth(
        &self,
        host_name: &str,
        ifname: &str,
        netns: &File,
        pod_nl: &Netlink,
    ) -> Result<(), CniError> {
        let nl_err = |what: &'static str| move |e: tunnel::NetlinkError| internal(what, e);
        if PEER_NAMES_COLLIDE_HERE.load(Ordering::Relaxed) {
            return self
                .create_veth_renamed(host_name, ifname, netns, pod_nl)
                .await;
        }
        let mut stale_removed = false;
        loop {
            let err = match self
                .netlink
                .add_veth_into(host_name, ifname, netns, self.mtu, true)
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) if e.errno() == Some(libc::EEXIST) => e,
                Err(e) => return Err(internal("create veth pair", e)),
            };
            let stale = self
                .netlink
                .link(host_name)
                .await
                .map_err(nl_err("inspect host"))?;
            match stale {
                Some(link) if !stale_removed => {
                    tracing::warn!(veth = %host_name, "removing a veth left by an unfinished ADD");
                    self.netlink
                        .delete_link(link.index)
                        .await
                        .map_err(nl_err("remove stale veth"))?;
                    stale_removed = true;
                }
                _ if pod_nl
                    .link(ifname)
                    .await
                    .map_err(nl_err("inspect pod"))?
                    .is_some() =>
                {
                    return Err(CniError::new(
                        codes::PLUGIN_SPECIFIC,
                        format!("interface {ifname} already exists in the pod"),
                        "pick another CNI_IFNAME or DEL the attachment first",
                    ));
                }
                // Neither side exists, yet the name is taken: kernels before 6.2 (Debian
                // bookworm's 6.1) look a peer's name up in the creating namespace too, where
                // the node's own `eth0` collides with the pod's.
                _ if self
                    .netlink
                    .link(ifname)
                    .await
                    .map_err(nl_err("inspect host"))?
                    .is_some() =>
                {
                    tracing::info!(%ifname, error = %err, "this kernel checks a veth peer's name in the node's namespace; naming pod interfaces in the pod from now on");
                    PEER_NAMES_COLLIDE_HERE.store(true, Ordering::Relaxed);
                    return self
                        .create_veth_renamed(host_name, ifname, netns, pod_nl)
                        .await;
                }
                _ => return Err(internal("create veth pair", err)),
            }
        }
    }

    /// [`Self::create_veth`] where the kernel checks the peer's name in this namespace: the
    /// peer is made under a temporary name (unique to the attachment), then renamed to
    /// `ifname` and opened inside the pod.
    async fn create_veth_renamed(
        &self,
        host_name: &str,
        ifname: &str,
        netns: &File,
        pod_nl: &Netlink,
    ) -> Result<(), CniError> {
        let nl_err = |what: &'static str| move |e: tunnel::NetlinkError| internal(what, e);
        let temp = format!("fbt{}", &host_name[nft::POD_VETH_PREFIX.len()..]);
        if let Some(stale) = self
            .netlink
            .link(host_name)
            .await
            .map_err(nl_err("inspect host"))?
        {
            tracing::warn!(veth = %host_name, "removing a veth left by an unfinished ADD");
            self.netlink
                .delete_link(stale.index)
                .await
                .map_err(nl_err("remove stale veth"))?;
        }
        if pod_nl
            .link(ifname)
            .await
            .map_err(nl_err("inspect pod"))?
            .is_some()
        {
            return Err(CniError::new(
                codes::PLUGIN_SPECIFIC,
                format!("interface {ifname} already exists in the pod"),
                "pick another CNI_IFNAME or DEL the attachment first",
            ));
        }
        self.netlink
            .add_veth_into(host_name, &temp, netns, self.mtu, false)
            .await
            .map_err(nl_err("create veth pair"))?;
        let peer = pod_nl
            .require_link(&temp)
            .await
            .map_err(nl_err("inspect pod"))?;
        pod_nl
            .rename_link(peer.index, ifname)
            .await
            .map_err(nl_err("name the pod's interface"))?;
        let peer = pod_nl
            .require_link(ifname)
            .await
            .map_err(nl_err("inspect pod"))?;
        pod_nl
            .set_link(&peer, None, None, true)
            .await
            .map_err(nl_err("open the pod's interface"))
    }

    /// Brings the node's nftables table to the pods in the pool (anti-spoofing per host veth,
    /// masquerade) and the tunnel ends last recorded, unless an apply that started after
    /// pool change `change` already did. A pool change only adds and removes the set elements
    /// that changed; `None` (a reconcile pass) rewrites the whole table, which heals
    /// hand-made damage. Returns whether the table reflects `change` now; failures are
    /// logged, and the next reconcile pass tries again.
    async fn apply_firewall(&self, change: Option<u64>) -> bool {
        self.firewall
            .converge(change, || async {
                let (pods, seen) = {
                    let pool = self.pool().await;
                    (self.pod_ports(&pool), self.firewall.current())
                };
                let tunnel = self.tunnel.get();
                let wanted = nft::pod_elements(&pods);
                let known = self
                    .firewall
                    .take_installed()
                    .filter(|i| change.is_some() && i.tunnel == tunnel);
                if let Some(installed) = known {
                    let delta = nft::Delta::between(&installed.elements, &wanted);
                    match self.firewall.sets.apply(&delta) {
                        Ok(()) => {
                            self.firewall.set_installed(Installed {
                                elements: wanted,
                                tunnel,
                            });
                            return (seen, true);
                        }
                        Err(e) => tracing::warn!(
                            error = %e,
                            "cannot update the pod sets of the node's nftables table; rewriting the table"
                        ),
                    }
                }
                let ruleset = nft::ruleset(&nft::NodeRules {
                    cluster: self.cluster.v4,
                    cluster6: self.cluster.v6,
                    pods: &pods,
                    tunnel: tunnel.as_ref(),
                });
                match crate::command::off_runtime(move || nft::apply(&ruleset)).await {
                    Ok(()) => {
                        self.firewall.set_installed(Installed {
                            elements: wanted,
                            tunnel,
                        });
                        (seen, true)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot install the node's nftables rules");
                        (seen, false)
                    }
                }
            })
            .await
    }

    /// The pods in `pool` as the node's table sees them.
    fn pod_ports(&self, pool: &PodPool) -> Vec<nft::PodPort> {
        pool.allocations()
            .iter()
            .map(|(ip, o)| nft::PodPort {
                veth: veth_of(o),
                ip,
                ipv6: self.subnet.ipv6_of(ip),
            })
            .collect()
    }

    /// Re-installs the node's nftables table (a reconcile pass: heals hand-made damage).
    pub async fn sync_firewall(&self) {
        self.apply_firewall(None).await;
    }

    /// Records the pod's identity for policy; a failure is not fatal (the pod works) but is
    /// retried until the record lands ([`Registry::register`]). Returns the revision of the
    /// write (see [`Added::registered`]).
    ///
    /// This is the only write of a pod record: once per ADD of a new container (an ADD of an
    /// attached container fails before it gets here), never on restart or resync. So labels
    /// changed later with `fabricctl pod label` stay until DEL or GC removes the record.
    async fn register(
        &self,
        att: &Attachment,
        ip: Ipv4Addr,
        ipv6: Option<Ipv6Addr>,
    ) -> Option<i64> {
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
            ipv6,
            labels: att.labels.clone(),
            ports: att.ports.clone(),
        };
        self.registry.register(record).await
    }

    /// Removes the attachment's veth pair, if any (its pod side goes with its host side).
    async fn unwire(&self, key: &AttachmentKey) -> Result<(), tunnel::NetlinkError> {
        if let Some(link) = self.netlink.link(&host_veth_name(key)).await? {
            self.netlink.delete_link(link.index).await?;
        }
        Ok(())
    }

    /// Detaches a pod; unknown attachments succeed. Every step is idempotent, so a DEL that
    /// was cut short (fabricd killed) is finished by the runtime's next one.
    pub async fn del(&self, key: &AttachmentKey) -> Result<(), CniError> {
        // The record goes while the veth does: a pod on its way out needs no identity, and
        // the datastore's round trip hides behind the kernel's (removing a veth waits for an
        // RCU grace period). It goes in any case, also when the address was released by a
        // DEL cut short before it got this far.
        let (unwired, ()) = tokio::join!(
            self.unwire(key),
            self.registry.unregister(&key.container_id)
        );
        unwired.map_err(|e| internal("cannot remove the pod's veth", e))?;
        fault::point(Point::DelAfterUnwire);
        let released = self
            .release(key)
            .await
            .map_err(|e| internal("cannot record the released address", e))?;
        fault::point(Point::DelAfterRelease);
        if let Some((addr, change)) = released {
            tracing::info!(container = %key.container_id, %addr, "pod detached");
            // The veth is gone: elements left behind (the next pass removes them) name
            // nothing.
            self.apply_firewall(Some(change)).await;
        }
        fault::point(Point::DelAfterDetach);
        Ok(())
    }

    /// Releases what an ADD that never finished left in the pool: an address whose holder's
    /// host veth does not exist. Called when the pod network opens, before it serves any CNI
    /// call, so every address in the pool was taken by an earlier fabricd: one killed
    /// between taking an address and wiring its veth, or whose pod's namespace was deleted
    /// while it was down, leaves exactly that (the veth pair goes with the namespace). The
    /// holder's pod record goes too; its set elements go with the next apply. A pod whose
    /// veth is missing has no network either way; its runtime sees CHECK fail.
    pub async fn recover(&self) {
        let links: HashSet<String> = match self.netlink.links().await {
            Ok(links) => links.into_iter().map(|l| l.name).collect(),
            Err(e) => {
                tracing::error!(error = %e, "cannot list links to find unfinished attachments");
                return;
            }
        };
        let orphans = {
            let mut pool = self.pool().await;
            let orphans: Vec<(Ipv4Addr, Owner)> = pool
                .allocations()
                .iter()
                .filter(|(_, o)| !links.contains(&veth_of(o)))
                .map(|(ip, o)| (ip, o.clone()))
                .collect();
            let released = pool.update(|a| {
                for (_, o) in &orphans {
                    a.release(o);
                }
                Ok(())
            });
            if let Err(e) = released {
                tracing::error!(error = %e, "cannot release the addresses of unfinished attachments");
                return;
            }
            self.firewall.change();
            orphans
        };
        for (addr, o) in &orphans {
            tracing::warn!(container = %o.container_id, %addr, "released the address of an attachment without a veth (an ADD that never finished, or a pod deleted while fabricd was down)");
            if o.recovered_veth().is_none() {
                self.registry.unregister(&o.container_id).await;
            }
        }
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
        let addr6 = self.subnet.ipv6_of(addr);
        let host_routes_now = self.netlink.owned_routes().await.map_err(nl_err)?;
        for dst in host_routes(addr, addr6) {
            let want = Route {
                dst,
                via: None,
                oif: host.index,
                onlink: false,
            };
            if !host_routes_now.contains(&want) {
                return Err(broken(format!("route to {dst} via {host_name} is missing")));
            }
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
        for want in host_routes(addr, addr6) {
            if !addrs.contains(&want) {
                return Err(broken(format!("address {want} is missing in the pod")));
            }
        }
        let routes = pod_nl.owned_routes().await.map_err(nl_err)?;
        for want in pod_routes(pod.index, addr6.is_some()) {
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

/// A pod's addresses as host prefixes (/32, /128): what the pod holds and what the node
/// routes to its veth.
fn host_routes(addr: Ipv4Addr, addr6: Option<Ipv6Addr>) -> Vec<IpNet> {
    std::iter::once(IpNet::from(IpAddr::from(addr)))
        .chain(addr6.map(|a| IpNet::from(IpAddr::from(a))))
        .collect()
}

/// The gateway of an address's family.
fn gateway_for(net: &IpNet) -> IpAddr {
    match net {
        IpNet::V4(_) => GATEWAY.into(),
        IpNet::V6(_) => GATEWAY6.into(),
    }
}

/// The IPv6 gateway as the host veth holds it.
fn gateway6() -> IpNet {
    IpNet::V6(Ipv6Net::new(GATEWAY6, 64).expect("/64"))
}

/// The routes inside a pod: the gateway on-link, the default route via it; on a dual-stack
/// network also the IPv6 default route via [`GATEWAY6`] (link-local, so on-link already).
fn pod_routes(ifindex: u32, dual_stack: bool) -> Vec<Route> {
    let mut routes = vec![
        Route {
            dst: IpNet::from(IpAddr::from(GATEWAY)),
            via: None,
            oif: ifindex,
            onlink: false,
        },
        Route {
            dst: IpNet::V4(Ipv4Net::default()),
            via: Some(GATEWAY.into()),
            oif: ifindex,
            onlink: false,
        },
    ];
    if dual_stack {
        routes.push(Route {
            dst: IpNet::V6(Ipv6Net::default()),
            via: Some(GATEWAY6.into()),
            oif: ifindex,
            onlink: false,
        });
    }
    routes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(container: &str) -> PodRecord {
        PodRecord {
            namespace: "x".into(),
            name: "a".into(),
            node: "n1".into(),
            container_id: container.into(),
            ip: "10.244.2.7".parse().unwrap(),
            ipv6: None,
            labels: Default::default(),
            ports: vec![],
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_registration_that_fails_is_retried_until_it_lands() {
        let store = ipam::memory::MemoryStore::new(
            ipam::NetworkConfig::parse(r#"{"Network":"10.244.0.0/16"}"#).unwrap(),
        );
        let registry = Registry::new(Arc::new(store.clone()), "n1".into());
        store.set_unreachable(true);
        assert_eq!(registry.register(record("c1")).await, None);
        // Out of reach for a minute: still retrying, nothing written.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(store.object(ipam::objects::Kind::Pods, "n1/c1").is_none());
        store.set_unreachable(false);
        tokio::time::sleep(Duration::from_secs(40)).await;
        assert!(
            store.object(ipam::objects::Kind::Pods, "n1/c1").is_some(),
            "registered once back"
        );
        assert!(registry.lock_pending().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_deleted_while_its_registration_is_retried_is_not_registered() {
        let store = ipam::memory::MemoryStore::new(
            ipam::NetworkConfig::parse(r#"{"Network":"10.244.0.0/16"}"#).unwrap(),
        );
        let registry = Registry::new(Arc::new(store.clone()), "n1".into());
        store.set_unreachable(true);
        registry.register(record("c1")).await;
        store.set_unreachable(false);
        // DEL comes before the retry: the record never appears, and nothing is pending.
        registry.unregister("c1").await;
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert!(store.object(ipam::objects::Kind::Pods, "n1/c1").is_none());
        assert!(registry.lock_pending().is_empty());
        // An unregistration that fails is retried too.
        registry.register(record("c2")).await;
        store.set_unreachable(true);
        registry.unregister("c2").await;
        store.set_unreachable(false);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(
            store.object(ipam::objects::Kind::Pods, "n1/c2").is_none(),
            "unregistered once back"
        );
    }

    fn key(id: &str, ifname: &str) -> AttachmentKey {
        AttachmentKey {
            container_id: id.into(),
            ifname: ifname.into(),
        }
    }

    fn dual() -> Subnets {
        Subnets {
            v4: "10.244.2.0/24".parse().unwrap(),
            v6: Some("fd00:10:244:2::/64".parse().unwrap()),
        }
    }

    #[test]
    fn a_pods_ipv6_address_carries_its_ipv4_host_part() {
        let s = dual();
        let v4: Ipv4Addr = "10.244.2.17".parse().unwrap();
        let v6: Ipv6Addr = "fd00:10:244:2::11".parse().unwrap();
        assert_eq!(s.ipv6_of(v4), Some(v6));
        assert_eq!(s.ipv4_of(v6), Some(v4));
        assert_eq!(s.ipv4_of("fd00:10:244:2::1:0".parse().unwrap()), None);
        assert_eq!(s.ipv4_of("fd00:10:244:3::11".parse().unwrap()), None);
        let v4_only = Subnets { v6: None, ..s };
        assert_eq!(v4_only.ipv6_of(v4), None);
    }

    #[test]
    fn requested_addresses_name_one_pool_address() {
        let s = dual();
        let ip = |t: &str| -> IpAddr { t.parse().unwrap() };
        let want = Some("10.244.2.17".parse().unwrap());
        assert_eq!(s.requested(&[]).unwrap(), None);
        assert_eq!(s.requested(&[ip("10.244.2.17")]).unwrap(), want);
        assert_eq!(s.requested(&[ip("fd00:10:244:2::11")]).unwrap(), want);
        assert_eq!(
            s.requested(&[ip("10.244.2.17"), ip("fd00:10:244:2::11")])
                .unwrap(),
            want
        );
        for bad in [
            vec![ip("10.244.2.17"), ip("fd00:10:244:2::12")],
            vec![ip("10.244.2.17"), ip("10.244.2.18")],
            vec![ip("fd00:10:244:2::11"), ip("fd00:10:244:2::12")],
            vec![ip("fd00:10:244:9::11")],
            vec![ip("fd00:10:244:2::1:0")],
        ] {
            let err = s.requested(&bad).unwrap_err();
            assert_eq!(err.code, codes::INVALID_CONFIG, "{bad:?}");
        }
        let v4_only = Subnets { v6: None, ..s };
        let err = v4_only.requested(&[ip("fd00:10:244:2::11")]).unwrap_err();
        assert!(err.msg.contains("IPv4 only"), "{}", err.msg);
    }

    #[test]
    fn dual_stack_pods_get_an_ipv6_default_route() {
        assert_eq!(pod_routes(3, false).len(), 2);
        let routes = pod_routes(3, true);
        assert_eq!(routes[2].dst.to_string(), "::/0");
        assert_eq!(routes[2].via, Some(GATEWAY6.into()));
        assert_eq!(
            host_routes(
                "10.244.2.17".parse().unwrap(),
                Some("fd00:10:244:2::11".parse().unwrap())
            )
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
            ["10.244.2.17/32", "fd00:10:244:2::11/128"]
        );
    }

    #[tokio::test]
    async fn one_firewall_apply_covers_every_pool_change_made_before_it() {
        let fw = Firewall::default();
        let runs = AtomicU64::new(0);
        let apply = |ok: bool| {
            let (fw, runs) = (&fw, &runs);
            move || async move {
                runs.fetch_add(1, Ordering::SeqCst);
                (fw.current(), ok)
            }
        };
        let (first, second) = (fw.change(), fw.change());
        fw.converge(Some(second), apply(true)).await;
        // The apply for the second change saw the first: nothing left to do for it.
        fw.converge(Some(first), apply(true)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // A failed apply covers nothing; a reconcile pass applies in any case.
        let third = fw.change();
        fw.converge(Some(third), apply(false)).await;
        fw.converge(Some(third), apply(true)).await;
        fw.converge(Some(third), apply(true)).await;
        fw.converge(None, apply(true)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn veth_names_fit_ifnamsiz_and_are_stable() {
        let a = host_veth_name(&key("abc", "eth0"));
        assert_eq!(a.len(), 14);
        assert_eq!(a, host_veth_name(&key("abc", "eth0")));
        assert_ne!(a, host_veth_name(&key("abc", "eth1")));
        assert_ne!(a, host_veth_name(&key("abd", "eth0")));
    }
}
