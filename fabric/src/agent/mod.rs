//! The node agent: lease the subnet, keep it alive, follow every other node's lease and
//! converge the data path to them. Errors are retried with backoff; the agent never exits
//! because the datastore or a peer misbehaves.
//!
//! Split as the rest of the daemon is: [`holding`] decides about the node's own lease (pure),
//! [`Control`] runs the loop over the seams only (`dyn Store`, `dyn Backend` and the node's
//! host side, [`Host`]), and [`Agent`] is the shell `fabricd` builds, which plugs the real
//! host side ([`NodeHost`]: sysctls, the pod network, nftables) in. The unit tests drive
//! [`Control`] against [`ipam::memory::MemoryStore`] with a fake backend and host.

pub mod admission;
mod control;
pub mod holding;
mod host;
#[cfg(test)]
mod tests;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use ipam::backoff::Backoff;
use ipam::{Store, StoreError};
use tokio::sync::watch;
use tunnel::{Backend, Netlink, Underlay};

pub use admission::Admission;
pub use control::Control;
pub use host::{Host, NodeHost};

use crate::health::Beat;
use crate::pods::{PodNetwork, Subnets};
use crate::state::StateDir;

/// Everything the agent needs, wired up by `fabricd`.
pub struct Agent {
    /// The datastore.
    pub store: Arc<dyn Store>,
    /// The data path.
    pub backend: Arc<dyn Backend>,
    /// The node's underlay.
    pub underlay: Underlay,
    /// Netlink in the node's namespace.
    pub netlink: Netlink,
    /// The state dir.
    pub state: StateDir,
    /// This node's name.
    pub node: String,
    /// Lease TTL.
    pub lease_ttl: Duration,
    /// Periodic re-check of the kernel state.
    pub resync: Duration,
    /// The cluster network (for masquerade).
    pub cluster: ipnet::Ipv4Net,
    /// The cluster's IPv6 network, on a dual-stack network.
    pub cluster6: Option<ipnet::Ipv6Net>,
    /// Set once the subnet is leased and the data path programmed.
    pub ready: Arc<AtomicBool>,
    /// Publishes the pod network to the local API once a subnet is held.
    pub pods: watch::Sender<Option<Arc<PodNetwork>>>,
    /// Which peers' leases the data path may act on.
    pub admission: Admission,
    /// Ticked each time the loop comes round.
    pub beat: Beat,
}

/// Retries `op` with capped, jittered exponential backoff until it succeeds, logging each
/// failure.
pub async fn retry<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut backoff = Backoff::default();
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::error!(error = %e, retry_in = ?delay, "{what} failed");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

impl Agent {
    /// Runs until the process ends.
    pub async fn run(self) -> Result<()> {
        let host = NodeHost {
            store: self.store.clone(),
            netlink: self.netlink,
            state: self.state.clone(),
            node: self.node.clone(),
            cluster: Subnets {
                v4: self.cluster,
                v6: self.cluster6,
            },
            mtu: self.backend.mtu(),
            pods: self.pods,
            tunnel: Default::default(),
        };
        let control = Control {
            store: self.store,
            backend: self.backend,
            host: Arc::new(host),
            state: self.state,
            node: self.node,
            public_ip: self.underlay.ip(),
            lease_ttl: self.lease_ttl,
            renew_every: holding::renew_period(self.lease_ttl),
            resync: self.resync,
            ready: self.ready,
            admission: self.admission,
            refused: Default::default(),
            beat: Some(self.beat),
        };
        control.run().await
    }
}
