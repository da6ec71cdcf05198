//! The one netlink helper every caller uses: links, addresses, routes, neighbours and FDB
//! entries, as small typed values, with idempotent add/replace/delete.
//!
//! A [`Netlink`] is bound to the network namespace its socket was opened in:
//! [`Netlink::connect`] for the daemon's own namespace, [`Netlink::connect_in`] for a pod's.
//!
//! Addresses, routes and neighbours are dual-stack: a value's family follows from its
//! addresses, and an IPv6 route may take an IPv4 next hop (`via inet`, RFC 5549), which is how
//! host-gw reaches a node's IPv6 pods over an IPv4 underlay.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlag, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlag, RouteMessage, RouteProtocol, RouteScope, RouteType,
    RouteVia,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, IpVersion};

use crate::mac::Mac;

/// The routing protocol number fabric stamps on the routes it owns (`ip route ... proto 0x66`),
/// so reconciliation can tell its routes from everyone else's.
pub const ROUTE_PROTOCOL: u8 = 0x66;

/// A netlink failure, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("netlink: {what}: {source}")]
pub struct NetlinkError {
    what: String,
    #[source]
    source: Box<rtnetlink::Error>,
}

impl NetlinkError {
    /// The errno the kernel answered with, if it was a kernel error.
    pub fn errno(&self) -> Option<i32> {
        match self.source.as_ref() {
            rtnetlink::Error::NetlinkError(msg) => Some(-msg.raw_code()),
            _ => None,
        }
    }

    fn is(&self, errno: i32) -> bool {
        self.errno() == Some(errno)
    }
}

/// Why a [`Netlink`] handle could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The namespace file could not be opened or entered.
    #[error("network namespace {path}: {source}")]
    Netns {
        /// The namespace path.
        path: String,
        /// The failure.
        source: std::io::Error,
    },
    /// The netlink socket could not be opened.
    #[error("netlink socket: {0}")]
    Socket(std::io::Error),
}

type Result<T> = std::result::Result<T, NetlinkError>;

fn ctx(what: impl FnOnce() -> String) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    move |source| NetlinkError {
        what: what(),
        source: Box::new(source),
    }
}

/// A network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// MTU.
    pub mtu: u32,
    /// Hardware address, for Ethernet-like links.
    pub mac: Option<Mac>,
    /// `IFF_UP` is set.
    pub up: bool,
    /// The link kind (`vxlan`, `veth`, ...), when it has one.
    pub kind: Option<InfoKind>,
    /// VXLAN parameters, for vxlan links.
    pub vxlan: Option<VxlanParams>,
}

impl Link {
    /// Whether it is a veth.
    pub fn is_veth(&self) -> bool {
        self.kind == Some(InfoKind::Veth)
    }
}

/// The parameters that define a VXLAN device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanParams {
    /// VNI.
    pub vni: u32,
    /// UDP destination port.
    pub port: u16,
    /// Local tunnel endpoint address.
    pub local: Option<Ipv4Addr>,
    /// Underlay device index.
    pub underlay: Option<u32>,
}

/// A route in the main table, IPv4 or IPv6 (the destination's family).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    /// Destination prefix.
    pub dst: IpNet,
    /// Next hop, if any; an IPv4 next hop for an IPv6 destination is allowed (`via inet`).
    pub via: Option<IpAddr>,
    /// Output interface.
    pub oif: u32,
    /// The next hop is on-link even though no address covers it.
    pub onlink: bool,
}

/// A permanent neighbour entry (ARP or NDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Neighbour {
    /// Interface index.
    pub ifindex: u32,
    /// The neighbour's address.
    pub ip: IpAddr,
    /// Its hardware address.
    pub mac: Mac,
}

/// A permanent FDB entry on a VXLAN device: frames for `mac` go to `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbEntry {
    /// The VXLAN device's index.
    pub ifindex: u32,
    /// The remote VTEP's MAC.
    pub mac: Mac,
    /// The remote VTEP's underlay address.
    pub dst: Ipv4Addr,
}

/// A netlink handle bound to one network namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a handle in the calling thread's network namespace. Needs a tokio runtime.
    pub fn connect() -> std::result::Result<Self, OpenError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(OpenError::Socket)?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// Opens a handle in the network namespace at `netns` (e.g. `/var/run/netns/pod1` or
    /// `/proc/PID/ns/net`). The socket is created by a long-lived thread of this module that
    /// enters the namespace, opens it and comes back (microseconds; a thread started per
    /// socket costs milliseconds on a busy node); the socket stays bound to the namespace
    /// while the caller's threads stay where they are.
    pub fn connect_in(netns: &Path) -> std::result::Result<Self, OpenError> {
        let netns_err = |source| OpenError::Netns {
            path: netns.display().to_string(),
            source,
        };
        let file = File::open(netns).map_err(netns_err)?;
        let runtime = tokio::runtime::Handle::current();
        let opened = opener::run_in(file, move || {
            // The socket registers with the caller's runtime, not a new one.
            let _entered = runtime.enter();
            rtnetlink::new_connection()
        });
        let (conn, handle, _) = match opened {
            Ok(opened) => opened.map_err(OpenError::Socket)?,
            Err(opener::Failure::Enter(e)) => return Err(netns_err(e)),
            Err(opener::Failure::Thread(e)) => return Err(OpenError::Socket(e)),
        };
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    // ---- links -------------------------------------------------------------------------

    /// Every link.
    pub async fn links(&self) -> Result<Vec<Link>> {
        let msgs: Vec<_> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(ctx(|| "list links".into()))?;
        Ok(msgs.into_iter().map(parse_link).collect())
    }

    /// The link named `name`, if it exists.
    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        let res = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute()
            .try_next()
            .await;
        match res {
            Ok(msg) => Ok(msg.map(parse_link)),
            Err(e) => {
                let e = ctx(|| format!("get link {name}"))(e);
                if e.is(libc::ENODEV) {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// The link named `name`; an error if it does not exist.
    pub async fn require_link(&self, name: &str) -> Result<Link> {
        let res = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute()
            .try_next()
            .await
            .map_err(ctx(|| format!("get link {name}")))?;
        res.map(parse_link).ok_or_else(|| NetlinkError {
            what: format!("get link {name}"),
            source: Box::new(rtnetlink::Error::RequestFailed),
        })
    }

    /// Creates a VXLAN device (no learning, the given MAC and MTU, up).
    pub async fn add_vxlan(
        &self,
        name: &str,
        params: VxlanParams,
        mac: Mac,
        mtu: u32,
    ) -> Result<Link> {
        let mut req = self
            .handle
            .link()
            .add()
            .vxlan(name.to_owned(), params.vni)
            .port(params.port)
            .learning(false);
        if let Some(local) = params.local {
            req = req.local(local);
        }
        if let Some(dev) = params.underlay {
            req = req.link(dev);
        }
        req.execute()
            .await
            .map_err(ctx(|| format!("create vxlan {name}")))?;
        let link = self.require_link(name).await?;
        self.set_link(&link, Some(mtu), Some(mac), true).await?;
        self.require_link(name).await
    }

    /// Creates a veth pair `host` / `peer` in this namespace.
    pub async fn add_veth(&self, host: &str, peer: &str) -> Result<()> {
        self.handle
            .link()
            .add()
            .veth(host.to_owned(), peer.to_owned())
            .execute()
            .await
            .map_err(ctx(|| format!("create veth {host}/{peer}")))
    }

    /// Creates a veth pair in one request: `host` here, down, and `peer` straight in the
    /// network namespace open at `netns`, up; both with MTU `mtu`. The peer never appears in
    /// this namespace, so nothing has to move it there afterwards (a move between namespaces
    /// costs the kernel an RCU grace period, ~15 ms), nor rename it. An `EEXIST` error
    /// ([`NetlinkError::errno`]) means `host` exists here or `peer` there.
    ///
    /// The peer is the request's main link and `host` its veth peer: only the main link may
    /// come up within the request (a veth cannot open before its peer exists); `peer_up`
    /// says whether it does.
    pub async fn add_veth_into(
        &self,
        host: &str,
        peer: &str,
        netns: &File,
        mtu: u32,
        peer_up: bool,
    ) -> Result<()> {
        use netlink_packet_route::link::{InfoVeth, LinkFlag, LinkMessage};
        use std::os::fd::AsRawFd;
        let mut host_msg = LinkMessage::default();
        host_msg.attributes = vec![
            LinkAttribute::IfName(host.to_owned()),
            LinkAttribute::Mtu(mtu),
        ];
        let mut req = self.handle.link().add();
        let msg = req.message_mut();
        if peer_up {
            msg.header.flags = vec![LinkFlag::Up];
            msg.header.change_mask = vec![LinkFlag::Up];
        }
        msg.attributes = vec![
            LinkAttribute::IfName(peer.to_owned()),
            LinkAttribute::Mtu(mtu),
            LinkAttribute::NetNsFd(netns.as_raw_fd()),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(host_msg))),
            ]),
        ];
        req.execute().await.map_err(ctx(|| {
            format!("create veth {host} with peer {peer} in another namespace")
        }))
    }

    /// Sets MTU, MAC and/or admin state where they differ.
    pub async fn set_link(
        &self,
        link: &Link,
        mtu: Option<u32>,
        mac: Option<Mac>,
        up: bool,
    ) -> Result<()> {
        let mut req = self.handle.link().set(link.index);
        let mut changed = false;
        if let Some(mtu) = mtu.filter(|m| *m != link.mtu) {
            req = req.mtu(mtu);
            changed = true;
        }
        if let Some(mac) = mac.filter(|m| Some(*m) != link.mac) {
            req = req.address(mac.octets().to_vec());
            changed = true;
        }
        if up && !link.up {
            req = req.up();
            changed = true;
        }
        if !changed {
            return Ok(());
        }
        req.execute()
            .await
            .map_err(ctx(|| format!("configure link {}", link.name)))
    }

    /// Renames a (down) link.
    pub async fn rename_link(&self, index: u32, name: &str) -> Result<()> {
        self.handle
            .link()
            .set(index)
            .name(name.to_owned())
            .execute()
            .await
            .map_err(ctx(|| format!("rename link {index} to {name}")))
    }

    /// Moves a link into the network namespace open at `netns`.
    pub async fn move_link(&self, index: u32, netns: &File) -> Result<()> {
        use std::os::fd::AsRawFd;
        self.handle
            .link()
            .set(index)
            .setns_by_fd(netns.as_raw_fd())
            .execute()
            .await
            .map_err(ctx(|| format!("move link {index} to another namespace")))
    }

    /// Deletes a link; a missing link is not an error.
    pub async fn delete_link(&self, index: u32) -> Result<()> {
        let res = self.handle.link().del(index).execute().await;
        match res.map_err(ctx(|| format!("delete link {index}"))) {
            Err(e) if e.is(libc::ENODEV) => Ok(()),
            other => other,
        }
    }

    // ---- addresses ---------------------------------------------------------------------

    /// Addresses on a link, both families (IPv6 link-local ones included).
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpNet>> {
        use netlink_packet_route::address::AddressAttribute;
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(ctx(|| format!("list addresses of link {index}")))?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| {
                let len = m.header.prefix_len;
                m.attributes.into_iter().find_map(|a| match a {
                    // IPv4 carries IFA_LOCAL; IPv6 only IFA_ADDRESS.
                    AddressAttribute::Local(ip @ IpAddr::V4(_)) => IpNet::new(ip, len).ok(),
                    AddressAttribute::Address(ip @ IpAddr::V6(_)) => IpNet::new(ip, len).ok(),
                    _ => None,
                })
            })
            .collect())
    }

    /// Adds an address to a link unless it is already there. IPv6 addresses skip duplicate
    /// address detection (`nodad`): fabric hands them out, so nothing else holds them, and a
    /// tentative address would hold a new pod's traffic back for a second. One request: the
    /// kernel's `EEXIST` for an address already there is success.
    pub async fn ensure_address(&self, index: u32, addr: IpNet) -> Result<()> {
        use netlink_packet_route::address::{AddressAttribute, AddressFlag};
        let mut req = self
            .handle
            .address()
            .add(index, addr.addr(), addr.prefix_len());
        if addr.addr().is_ipv6() {
            let msg = req.message_mut();
            msg.attributes
                .push(AddressAttribute::Flags(vec![AddressFlag::Nodad]));
        }
        let res = req
            .execute()
            .await
            .map_err(ctx(|| format!("add address {addr} to link {index}")));
        match res {
            Err(e) if e.is(libc::EEXIST) => Ok(()),
            other => other,
        }
    }

    // ---- routes ------------------------------------------------------------------------

    /// Routes of the main table, both families, carrying fabric's protocol number.
    pub async fn owned_routes(&self) -> Result<Vec<Route>> {
        let mut routes = Vec::new();
        for version in [IpVersion::V4, IpVersion::V6] {
            let msgs: Vec<RouteMessage> = redump(|| async {
                self.handle
                    .route()
                    .get(version.clone())
                    .execute()
                    .try_collect()
                    .await
                    .map_err(ctx(|| "list routes".into()))
            })
            .await?;
            routes.extend(
                msgs.into_iter()
                    .filter(|m| {
                        m.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL)
                            && m.header.table == 254
                    })
                    .filter_map(parse_route),
            );
        }
        Ok(routes)
    }

    /// Adds or replaces a route, stamped with fabric's protocol number.
    pub async fn replace_route(&self, route: &Route) -> Result<()> {
        let mut req = self.handle.route().add().replace();
        *req.message_mut() = route_message(route);
        if route.via.is_none() {
            req.message_mut().header.scope = RouteScope::Link;
        }
        req.execute()
            .await
            .map_err(ctx(|| format!("replace route {route:?}")))
    }

    /// Deletes a route; a missing route is not an error.
    pub async fn delete_route(&self, route: &Route) -> Result<()> {
        let mut msg = route_message(route);
        msg.header.scope = RouteScope::NoWhere;
        let res = self
            .handle
            .route()
            .del(msg)
            .execute()
            .await
            .map_err(ctx(|| format!("delete route {route:?}")));
        match res {
            Err(e) if e.is(libc::ESRCH) || e.is(libc::ENOENT) => Ok(()),
            other => other,
        }
    }

    // ---- neighbours and FDB ------------------------------------------------------------

    async fn dump_neighbours(&self, family: AddressFamily) -> Result<Vec<NeighbourMessage>> {
        redump(|| async {
            let mut req = self.handle.neighbours().get();
            req.message_mut().header.family = family;
            req.execute()
                .try_collect()
                .await
                .map_err(ctx(|| "list neighbours".into()))
        })
        .await
    }

    /// Permanent neighbours on a link, both families, that carry fabric's protocol number (as
    /// [`Netlink::replace_neighbour`] stamps them), so an operator's own entries on a shared
    /// link (host-gw's underlay) are never taken for stale ones.
    pub async fn neighbours(&self, ifindex: u32) -> Result<Vec<Neighbour>> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            out.extend(
                self.dump_neighbours(family)
                    .await?
                    .into_iter()
                    .filter(|m| {
                        m.header.ifindex == ifindex
                            && m.header.state == NeighbourState::Permanent
                            && m.attributes.iter().any(|a| {
                                *a == NeighbourAttribute::Protocol(RouteProtocol::Other(
                                    ROUTE_PROTOCOL,
                                ))
                            })
                    })
                    .filter_map(|m| {
                        Some(Neighbour {
                            ifindex,
                            ip: neighbour_ip(&m)?,
                            mac: lladdr(&m)?,
                        })
                    }),
            );
        }
        Ok(out)
    }

    /// Adds or replaces a permanent neighbour, stamped with fabric's protocol number.
    pub async fn replace_neighbour(&self, n: &Neighbour) -> Result<()> {
        let mut req = self
            .handle
            .neighbours()
            .add(n.ifindex, n.ip)
            .link_local_address(&n.mac.octets())
            .state(NeighbourState::Permanent)
            .replace();
        req.message_mut()
            .attributes
            .push(NeighbourAttribute::Protocol(RouteProtocol::Other(
                ROUTE_PROTOCOL,
            )));
        req.execute()
            .await
            .map_err(ctx(|| format!("replace neighbour {n:?}")))
    }

    /// Deletes a neighbour; a missing one is not an error.
    pub async fn delete_neighbour(&self, n: &Neighbour) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.ifindex = n.ifindex;
        let (family, dst) = match n.ip {
            IpAddr::V4(ip) => (AddressFamily::Inet, NeighbourAddress::Inet(ip)),
            IpAddr::V6(ip) => (AddressFamily::Inet6, NeighbourAddress::Inet6(ip)),
        };
        msg.header.family = family;
        msg.attributes.push(NeighbourAttribute::Destination(dst));
        let res = self.handle.neighbours().del(msg).execute().await;
        ignore_missing(res.map_err(ctx(|| format!("delete neighbour {n:?}"))))
    }

    /// FDB entries with a remote destination on a (VXLAN) link.
    pub async fn fdb(&self, ifindex: u32) -> Result<Vec<FdbEntry>> {
        Ok(self
            .dump_neighbours(AddressFamily::Bridge)
            .await?
            .into_iter()
            .filter(|m| m.header.ifindex == ifindex)
            .filter_map(|m| {
                Some(FdbEntry {
                    ifindex,
                    mac: lladdr(&m)?,
                    dst: destination(&m)?,
                })
            })
            .collect())
    }

    /// Adds or replaces a permanent FDB entry (`bridge fdb replace MAC dev DEV dst IP self permanent`).
    pub async fn replace_fdb(&self, e: &FdbEntry) -> Result<()> {
        self.handle
            .neighbours()
            .add_bridge(e.ifindex, &e.mac.octets())
            .destination(IpAddr::V4(e.dst))
            .flags(vec![NeighbourFlag::Own])
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(ctx(|| format!("replace fdb entry {e:?}")))
    }

    /// Deletes an FDB entry; a missing one is not an error.
    pub async fn delete_fdb(&self, e: &FdbEntry) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = e.ifindex;
        msg.header.flags = vec![NeighbourFlag::Own];
        msg.attributes.push(NeighbourAttribute::LinkLocalAddress(
            e.mac.octets().to_vec(),
        ));
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                e.dst,
            )));
        let res = self.handle.neighbours().del(msg).execute().await;
        ignore_missing(res.map_err(ctx(|| format!("delete fdb entry {e:?}"))))
    }
}

/// The thread [`Netlink::connect_in`] opens sockets in other namespaces on.
mod opener {
    use std::fs::File;
    use std::sync::mpsc::{channel, Sender};
    use std::sync::Mutex;

    use nix::sched::{setns, CloneFlags};

    /// Why the work could not run there.
    pub enum Failure {
        /// The namespace could not be entered.
        Enter(std::io::Error),
        /// The thread could not be started, or stopped.
        Thread(std::io::Error),
    }

    struct Job {
        netns: File,
        work: Box<dyn FnOnce() + Send>,
        entered: Sender<std::io::Result<()>>,
    }

    static THREAD: Mutex<Option<Sender<Job>>> = Mutex::new(None);

    /// Runs `work` on the thread, in the network namespace `netns`.
    pub fn run_in<T: Send + 'static>(
        netns: File,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Failure> {
        let (done, result) = channel();
        let (entered, entering) = channel();
        let mut job = Job {
            netns,
            work: Box::new(move || drop(done.send(work()))),
            entered,
        };
        let stopped = || Failure::Thread(std::io::Error::other("the namespace thread stopped"));
        // A thread that is gone (it could not come back to its namespace) is replaced.
        for _ in 0..2 {
            let mut thread = THREAD.lock().unwrap_or_else(|e| e.into_inner());
            let tx = match thread.as_ref() {
                Some(tx) => tx.clone(),
                None => thread.insert(spawn().map_err(Failure::Thread)?).clone(),
            };
            drop(thread);
            match tx.send(job) {
                Ok(()) => {
                    entering
                        .recv()
                        .map_err(|_| stopped())?
                        .map_err(Failure::Enter)?;
                    return result.recv().map_err(|_| stopped());
                }
                Err(std::sync::mpsc::SendError(back)) => {
                    job = back;
                    *THREAD.lock().unwrap_or_else(|e| e.into_inner()) = None;
                }
            }
        }
        Err(stopped())
    }

    fn spawn() -> std::io::Result<Sender<Job>> {
        let home = File::open("/proc/thread-self/ns/net")?;
        let (tx, jobs) = channel::<Job>();
        std::thread::Builder::new()
            .name("netns-open".into())
            .spawn(move || {
                for job in jobs {
                    if let Err(e) = setns(&job.netns, CloneFlags::CLONE_NEWNET) {
                        let _ = job.entered.send(Err(e.into()));
                        continue;
                    }
                    let _ = job.entered.send(Ok(()));
                    (job.work)();
                    // Back home before the next job: this thread serves every namespace.
                    // Should that fail, it stops (and is replaced).
                    if setns(&home, CloneFlags::CLONE_NEWNET).is_err() {
                        return;
                    }
                }
            })?;
        Ok(tx)
    }
}

/// Runs a dump, again when the kernel reports it was interrupted by a concurrent change
/// (`EBUSY`, from `NLM_F_DUMP_INTR`).
async fn redump<T, F, Fut>(dump: F) -> Result<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut attempt = 0;
    loop {
        match dump().await {
            Err(e) if e.is(libc::EBUSY) && attempt < 8 => attempt += 1,
            other => return other,
        }
    }
}

fn ignore_missing(res: Result<()>) -> Result<()> {
    match res {
        Err(e) if e.is(libc::ENOENT) || e.is(libc::ESRCH) => Ok(()),
        other => other,
    }
}

/// A neighbour entry's address.
fn neighbour_ip(m: &NeighbourMessage) -> Option<IpAddr> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
        _ => None,
    })
}

/// An FDB entry's IPv4 destination. In AF_BRIDGE messages the parser cannot tell the address
/// family of NDA_DST and leaves the raw bytes.
fn destination(m: &NeighbourMessage) -> Option<Ipv4Addr> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
            <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
        }
        _ => None,
    })
}

fn lladdr(m: &NeighbourMessage) -> Option<Mac> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLocalAddress(b) => Mac::from_slice(b),
        _ => None,
    })
}

fn parse_link(msg: netlink_packet_route::link::LinkMessage) -> Link {
    use netlink_packet_route::link::LinkFlag;
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        mtu: 0,
        mac: None,
        up: msg.header.flags.contains(&LinkFlag::Up),
        kind: None,
        vxlan: None,
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Mtu(m) => link.mtu = m,
            LinkAttribute::Address(a) => link.mac = Mac::from_slice(&a),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => link.kind = Some(k),
                        LinkInfo::Data(InfoData::Vxlan(data)) => {
                            link.vxlan = Some(parse_vxlan(&data));
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn parse_vxlan(data: &[InfoVxlan]) -> VxlanParams {
    let mut p = VxlanParams {
        vni: 0,
        port: 0,
        local: None,
        underlay: None,
    };
    for d in data {
        match d {
            InfoVxlan::Id(v) => p.vni = *v,
            InfoVxlan::Port(port) => p.port = *port,
            InfoVxlan::Local(b) if b.len() == 4 => {
                p.local = Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
            }
            InfoVxlan::Link(l) => p.underlay = Some(*l),
            _ => {}
        }
    }
    p
}

/// The message that names `route`: main table, fabric's protocol, unicast; the next hop as
/// RTA_GATEWAY when its family is the destination's, as RTA_VIA when it is not.
fn route_message(route: &Route) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = match route.dst {
        IpNet::V4(_) => AddressFamily::Inet,
        IpNet::V6(_) => AddressFamily::Inet6,
    };
    msg.header.destination_prefix_length = route.dst.prefix_len();
    msg.header.table = 254;
    msg.header.protocol = RouteProtocol::Other(ROUTE_PROTOCOL);
    msg.header.kind = RouteType::Unicast;
    msg.attributes
        .push(RouteAttribute::Destination(route_address(route.dst.addr())));
    msg.attributes.push(RouteAttribute::Oif(route.oif));
    match (route.dst, route.via) {
        (_, None) => {}
        (IpNet::V4(_), Some(via @ IpAddr::V4(_))) | (IpNet::V6(_), Some(via @ IpAddr::V6(_))) => {
            msg.attributes
                .push(RouteAttribute::Gateway(route_address(via)));
        }
        (_, Some(IpAddr::V4(via))) => msg
            .attributes
            .push(RouteAttribute::Via(RouteVia::Inet(via))),
        (_, Some(IpAddr::V6(via))) => msg
            .attributes
            .push(RouteAttribute::Via(RouteVia::Inet6(via))),
    }
    if route.onlink {
        msg.header.flags.push(RouteFlag::Onlink);
    }
    msg
}

fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(ip) => RouteAddress::Inet(ip),
        IpAddr::V6(ip) => RouteAddress::Inet6(ip),
    }
}

fn parse_route(m: RouteMessage) -> Option<Route> {
    let mut dst = None;
    let mut via = None;
    let mut oif = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some(IpAddr::V4(*ip)),
            RouteAttribute::Destination(RouteAddress::Inet6(ip)) => dst = Some(IpAddr::V6(*ip)),
            RouteAttribute::Gateway(RouteAddress::Inet(ip))
            | RouteAttribute::Via(RouteVia::Inet(ip)) => via = Some(IpAddr::V4(*ip)),
            RouteAttribute::Gateway(RouteAddress::Inet6(ip))
            | RouteAttribute::Via(RouteVia::Inet6(ip)) => via = Some(IpAddr::V6(*ip)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    let dst = dst.unwrap_or(match m.header.address_family {
        AddressFamily::Inet6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    });
    Some(Route {
        dst: IpNet::new(dst, m.header.destination_prefix_length).ok()?,
        via,
        oif: oif?,
        onlink: m.header.flags.contains(&RouteFlag::Onlink),
    })
}
