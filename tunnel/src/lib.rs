//! The data path between nodes: the [`Backend`] seam and its implementations ([`vxlan`],
//! [`hostgw`]), the underlay they ride on, and the kernel plumbing every fabric component
//! shares ([`netlink`], [`sysctl`]).
//!
//! Each backend splits into a pure part (the desired routes, neighbours and FDB entries for a
//! set of leases, see [`plan`]) and a thin shell that reads the kernel's state and applies the
//! difference, so reconciling is idempotent and heals hand-made damage.

pub mod hostgw;
pub mod mac;
pub mod netlink;
pub mod plan;
pub mod sysctl;
pub mod underlay;
pub mod vxlan;
pub mod wireguard;

use std::net::SocketAddrV4;
use std::path::Path;

use async_trait::async_trait;
use ipam::{BackendConfig, BackendKind, Lease, Leases};

pub use mac::Mac;
pub use netlink::{Netlink, NetlinkError};
pub use underlay::Underlay;

/// Why the data path could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// A netlink operation failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The underlay could not be determined.
    #[error("underlay: {0}")]
    Underlay(String),
    /// The backend's state in the state dir could not be read or written.
    #[error("state {path}: {source}")]
    State {
        /// The file.
        path: String,
        /// The failure.
        source: std::io::Error,
    },
}

/// What one reconcile pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Kernel objects created or replaced.
    pub added: usize,
    /// Kernel objects deleted.
    pub removed: usize,
    /// Peers the backend refuses to reach, with the reason.
    pub refused: Vec<(String, String)>,
}

/// A data path to the other nodes' subnets. The agent holds a `dyn Backend` and never asks
/// which one it is.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;

    /// The MTU pods on this node get.
    fn mtu(&self) -> u32;

    /// Data other nodes need to reach this one, published in the lease.
    fn lease_data(&self) -> serde_json::Value;

    /// Converges the kernel to reach every lease in `leases` other than `local`. Idempotent.
    async fn reconcile(&self, local: &Lease, leases: &Leases) -> Result<Report, TunnelError>;

    /// Releases what the backend holds outside the kernel's namespaces (the WireGuard control
    /// socket) when the daemon stops.
    fn shutdown(&self) {}

    /// Where the tunnels end, for the node's firewall: the UDP address this node receives
    /// encapsulated traffic on and the ones of the peers in `leases`; `None` for a backend
    /// that does not encapsulate (host-gw). Only known nodes may reach the local end, and no
    /// pod may reach any end: a frame that gets in is decapsulated and judged as the inner
    /// source it claims.
    fn tunnel_ends(&self, _local: &Lease, _leases: &Leases) -> Option<TunnelEnds> {
        None
    }

    /// Whether the backend's own workers (the userspace data path's threads) still run; the
    /// failure names what stopped. Kernel backends have none.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }

    /// The data path's live state for operators (`fabricctl peers`); kernel backends have
    /// nothing beyond what `ip` shows.
    fn dataplane(&self) -> serde_json::Value {
        serde_json::json!({ "backend": self.kind().as_str() })
    }
}

/// The UDP ends of a node's tunnels (see [`Backend::tunnel_ends`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelEnds {
    /// Where this node receives: its underlay address and the backend's port.
    pub local: SocketAddrV4,
    /// Where each peer receives, in lease order.
    pub peers: Vec<SocketAddrV4>,
}

/// Node-local settings a backend needs besides the network config.
#[derive(Debug, Clone)]
pub struct NodeOptions<'a> {
    /// The daemon's state dir (VTEP MAC, WireGuard key).
    pub state_dir: &'a Path,
    /// The WireGuard device name.
    pub wg_iface: &'a str,
}

/// Builds the backend the config asks for.
pub fn create(
    config: &BackendConfig,
    underlay: Underlay,
    netlink: Netlink,
    node: &NodeOptions<'_>,
) -> Result<Box<dyn Backend>, TunnelError> {
    Ok(match config.kind {
        BackendKind::Vxlan => Box::new(vxlan::Vxlan::new(
            config,
            underlay,
            netlink,
            node.state_dir,
        )?),
        BackendKind::HostGw => Box::new(hostgw::HostGw::new(underlay, netlink)),
        BackendKind::Wireguard => Box::new(wireguard::WireGuard::new(
            config,
            underlay,
            netlink,
            node.state_dir,
            node.wg_iface,
        )?),
    })
}

/// The leases a backend of `kind` should reach from `local`: every other node's lease of the
/// same backend type.
pub fn peers<'a>(
    kind: BackendKind,
    local: &'a Lease,
    leases: &'a Leases,
) -> impl Iterator<Item = &'a Lease> {
    leases
        .values()
        .filter(move |l| l.subnet != local.subnet && l.node != local.node)
        .filter(move |l| {
            let same = l.backend_type == kind.as_str();
            if !same {
                tracing::warn!(node = %l.node, backend = %l.backend_type, "peer runs another backend; not reachable");
            }
            same
        })
}
