//! The node's host side: what the agent changes on the node besides the tunnels. [`NodeHost`]
//! is the real one (sysctls, the pod network handed to the local API, the node's nftables
//! table), all in the daemon's own network namespace; the agent's unit tests put a recording
//! fake in its place, so they never touch the machine they run on.

use std::sync::Arc;

use anyhow::{Context, Result};
use async_trait::async_trait;
use ipam::{Lease, PodPool, Store};
use tokio::sync::watch;
use tunnel::{Netlink, TunnelEnds};

use crate::nft::TunnelGuard;
use crate::pods::{PodNetwork, Registry, Subnets};
use crate::state::StateDir;

/// The node's host side, as the agent's loop sees it.
#[async_trait]
pub trait Host: Send + Sync {
    /// Lets the node forward pods' packets (IPv4, and IPv6 on a dual-stack network). Called
    /// once, before the first lease.
    fn enable_forwarding(&self) -> Result<()>;

    /// Opens the pod network of `lease` (replacing the one of an earlier lease) and hands it
    /// to the local API. Called for every lease acquired.
    fn open_pods(&self, lease: &Lease) -> Result<()>;

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

#[async_trait]
impl Host for NodeHost {
    fn enable_forwarding(&self) -> Result<()> {
        tunnel::sysctl::enable_forwarding().context("enabling IPv4 forwarding")?;
        if self.cluster.v6.is_some() {
            tunnel::sysctl::enable_ipv6_forwarding().context("enabling IPv6 forwarding")?;
        }
        Ok(())
    }

    fn open_pods(&self, lease: &Lease) -> Result<()> {
        let subnets = Subnets {
            v4: lease.subnet,
            v6: lease.ipv6_subnet,
        };
        let open = self.pods.borrow().clone();
        if open.is_some_and(|p| p.subnets() == subnets) {
            // The same subnet leased again: the pod network open now stays the one owner of
            // the pool (a second would be a second writer of pods.json, handing out
            // addresses the first already gave).
            return Ok(());
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
