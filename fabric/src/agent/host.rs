//! The node's host side: what the agent changes on the node besides the tunnels. [`NodeHost`]
//! is the real one (sysctls, the pod network handed to the local API, the node's nftables
//! table), all in the daemon's own network namespace; the agent's unit tests put a recording
//! fake in its place, so they never touch the machine they run on.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use ipam::{Lease, PodPool, Store};
use ipnet::Ipv4Net;
use tokio::sync::watch;
use tunnel::{Netlink, TunnelEnds};

use crate::nft::TunnelGuard;
use crate::pods::{PodNetwork, Registry, Subnets};
use crate::state::StateDir;

/// How often a retiring pod network is checked for CNI calls still in it.
const DRAIN_POLL: Duration = Duration::from_millis(10);
/// How often waiting for them is warned about.
const DRAIN_WARN: Duration = Duration::from_secs(10);

/// The node's host side, as the agent's loop sees it.
#[async_trait]
pub trait Host: Send + Sync {
    /// Lets the node forward pods' packets (IPv4, and IPv6 on a dual-stack network). Called
    /// once, before the first lease.
    fn enable_forwarding(&self) -> Result<()>;

    /// Opens the pod network of `lease` and hands it to the local API. Called for every lease
    /// acquired: the same subnet again keeps the pod network open now; another subnet first
    /// retires it (its pods hold addresses of a subnet this node no longer holds).
    async fn open_pods(&self, lease: &Lease) -> Result<()>;

    /// Re-installs the node's firewall rules for the pod network open now, if any, guarding
    /// the tunnel ends `tunnel`; failures are logged. Called after every reconcile pass,
    /// converged or not.
    async fn sync_firewall(&self, tunnel: Option<TunnelEnds>);
}

/// The real host side, in the daemon's network namespace.
pub struct NodeHost {
    /// The datastore, where attached pods are registered.
    pub store: Arc<dyn Store>,
    /// Netlink in the node's namespace.
    pub netlink: Netlink,
    /// The state dir (the pod address pool lives in it).
    pub state: StateDir,
    /// This node's name.
    pub node: String,
    /// The cluster networks (for masquerade).
    pub cluster: Subnets,
    /// The MTU pods get.
    pub mtu: u32,
    /// Publishes the pod network to the local API.
    pub pods: watch::Sender<Option<Arc<PodNetwork>>>,
    /// The tunnel ends every pod network's table guards.
    pub tunnel: TunnelGuard,
}

impl NodeHost {
    /// Retires `old`, the pod network of a subnet this node lost (it is `new` now): the local
    /// API stops handing it out, the calls already in it finish (so it is the pool's only
    /// writer until it is gone), then every pod attached in it is detached: veth, address,
    /// firewall elements, pod record. Those pods hold addresses another node may hand out
    /// now; left attached, they would be served from a subnet the node does not hold, and
    /// their records would lend their identity to that node's pods. Their runtime sees them
    /// broken (CNI CHECK) and re-creates them.
    async fn retire(&self, old: Arc<PodNetwork>, new: Ipv4Net) {
        self.pods.send_replace(None);
        let mut waited = Duration::ZERO;
        // Each call in flight holds a clone; the local API takes none once `None` is out.
        while Arc::strong_count(&old) > 1 {
            tokio::time::sleep(DRAIN_POLL).await;
            waited += DRAIN_POLL;
            if waited.as_millis().is_multiple_of(DRAIN_WARN.as_millis()) {
                tracing::warn!(waited = ?waited, "waiting for CNI calls on the lost subnet's pod network to finish");
            }
        }
        let pods = old.attached().await;
        tracing::error!(
            lost = %old.subnet(),
            subnet = %new,
            pods = pods,
            "this node's subnet changed: detaching the pods of the subnet it lost; their runtime must re-create them"
        );
        if let Err(e) = old.gc(&[]).await {
            tracing::error!(error = %e, lost = %old.subnet(), "cannot detach every pod of the lost subnet; what is left is cut off by the firewall");
        }
    }
}

#[async_trait]
impl Host for NodeHost {
    fn enable_forwarding(&self) -> Result<()> {
        tunnel::sysctl::enable_forwarding().context("enabling IPv4 forwarding")?;
        if self.cluster.v6.is_some() {
            tunnel::sysctl::enable_ipv6_forwarding().context("enabling IPv6 forwarding")?;
        }
        Ok(())
    }

    async fn open_pods(&self, lease: &Lease) -> Result<()> {
        let subnets = Subnets {
            v4: lease.subnet,
            v6: lease.ipv6_subnet,
        };
        let open = self.pods.borrow().clone();
        match open {
            // The same subnet leased again: the pod network open now stays the one owner of
            // the pool (a second would be a second writer of pods.json, handing out
            // addresses the first already gave).
            Some(open) if open.subnets() == subnets => return Ok(()),
            Some(open) => self.retire(open, lease.subnet).await,
            None => {}
        }
        let pool = PodPool::open(self.state.path(), lease.subnet)
            .context("opening the pod address pool")?;
        let registry = Registry::new(self.store.clone(), self.node.clone());
        if let (Some(_), None) = (self.cluster.v6, lease.ipv6_subnet) {
            tracing::warn!(subnet = %lease.subnet, "the network is dual-stack but the lease has no IPv6 subnet; pods get IPv4 only");
        }
        let pods = PodNetwork::new(
            subnets,
            self.cluster,
            self.mtu,
            self.netlink.clone(),
            pool,
            registry,
            self.tunnel.clone(),
        );
        // Before it serves: what an ADD cut short by a crash left goes first.
        pods.recover().await;
        self.pods.send_replace(Some(Arc::new(pods)));
        Ok(())
    }

    async fn sync_firewall(&self, tunnel: Option<TunnelEnds>) {
        self.tunnel.set(tunnel);
        let pods = self.pods.borrow().clone();
        if let Some(pods) = pods {
            pods.sync_firewall().await;
        }
    }
}
