//! The node agent: lease the subnet, keep it alive, follow every other node's lease and
//! converge the data path to them. Errors are retried with backoff; the agent never exits
//! because the datastore or a peer misbehaves.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use ipam::{Lease, LeaseRequest, Leases, PodPool, Renewal, Store, StoreError};
use tokio::sync::watch;
use tunnel::{Backend, Netlink, Underlay};

use crate::pods::{PodNetwork, Registry, Subnets};
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
}

/// Retries `op` with capped exponential backoff until it succeeds, logging each failure.
pub async fn retry<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut delay = Duration::from_millis(200);
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?delay, "{what} failed");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

impl Agent {
    fn request(&self, previous: Option<ipnet::Ipv4Net>) -> LeaseRequest {
        LeaseRequest {
            node: self.node.clone(),
            public_ip: self.underlay.ip(),
            backend_type: self.backend.kind().as_str().into(),
            backend_data: self.backend.lease_data(),
            previous,
            ttl_secs: self.lease_ttl.as_secs() as i64,
        }
    }

    async fn acquire(&self, previous: Option<ipnet::Ipv4Net>) -> Result<Lease> {
        let request = self.request(previous);
        let lease = retry("leasing a subnet", || self.store.acquire_lease(&request)).await;
        tracing::info!(subnet = %lease.subnet, node = %self.node, public_ip = %lease.public_ip, "subnet leased");
        self.state
            .record_subnet(lease.subnet)
            .context("recording the subnet in the state dir")?;
        let pool = PodPool::open(self.state.path(), lease.subnet)
            .context("opening the pod address pool")?;
        let registry = Registry {
            store: self.store.clone(),
            node: self.node.clone(),
        };
        if let (Some(_), None) = (self.cluster6, lease.ipv6_subnet) {
            tracing::warn!(subnet = %lease.subnet, "the network is dual-stack but the lease has no IPv6 subnet; pods get IPv4 only");
        }
        let pods = PodNetwork::new(
            Subnets {
                v4: lease.subnet,
                v6: lease.ipv6_subnet,
            },
            Subnets {
                v4: self.cluster,
                v6: self.cluster6,
            },
            self.backend.mtu(),
            self.netlink.clone(),
            pool,
            registry,
        );
        self.pods.send_replace(Some(Arc::new(pods)));
        Ok(lease)
    }

    /// Converges the data path to `leases`; true when it is programmed.
    async fn reconcile(&self, local: &Lease, leases: &Leases) -> bool {
        let converged = match self.backend.reconcile(local, leases).await {
            Ok(report) => {
                if report.added + report.removed > 0 {
                    tracing::info!(
                        added = report.added,
                        removed = report.removed,
                        peers = leases.len().saturating_sub(1),
                        "data path converged"
                    );
                }
                if !self.ready.swap(true, Ordering::Relaxed) {
                    tracing::info!("ready");
                }
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "reconcile failed; retrying on the next pass");
                false
            }
        };
        let pods = self.pods.borrow().clone();
        if let Some(pods) = pods {
            pods.sync_firewall().await;
        }
        converged
    }

    /// Tells the datastore the data path for `lease` is programmed, once per lease (retried
    /// on the next pass when it fails).
    async fn announce(&self, lease: &Lease, announced: &mut Option<ipnet::Ipv4Net>) {
        if *announced == Some(lease.subnet) {
            return;
        }
        match self.store.data_path_ready(lease).await {
            Ok(()) => *announced = Some(lease.subnet),
            Err(e) => tracing::warn!(error = %e, "cannot report the data path ready; retrying"),
        }
    }

    /// Runs until the process ends.
    pub async fn run(self) -> Result<()> {
        tunnel::sysctl::enable_forwarding().context("enabling IPv4 forwarding")?;
        if self.cluster6.is_some() {
            tunnel::sysctl::enable_ipv6_forwarding().context("enabling IPv6 forwarding")?;
        }
        let mut lease = self.acquire(self.state.previous_subnet()).await?;
        let mut leases = retry("watching leases", || self.store.watch_leases()).await;
        let renew_every =
            (self.lease_ttl / 3).clamp(Duration::from_secs(1), Duration::from_secs(3600));
        let mut renew = tokio::time::interval(renew_every);
        let mut resync = tokio::time::interval(self.resync);
        renew.tick().await;
        let mut announced = None;
        loop {
            let converged = tokio::select! {
                changed = leases.changed() => {
                    if changed.is_err() {
                        tracing::warn!("lease watch ended; restarting it");
                        leases = retry("watching leases", || self.store.watch_leases()).await;
                    }
                    let snapshot = leases.borrow_and_update().clone();
                    self.reconcile(&lease, &snapshot).await
                }
                _ = resync.tick() => {
                    let snapshot = leases.borrow().clone();
                    self.reconcile(&lease, &snapshot).await
                }
                _ = renew.tick() => {
                    match self.store.renew_lease(&lease).await {
                        Ok(Renewal::Renewed) => tracing::debug!(subnet = %lease.subnet, "lease renewed"),
                        Ok(Renewal::Lost) => {
                            tracing::warn!(subnet = %lease.subnet, "lease lost; leasing again");
                            lease = self.acquire(Some(lease.subnet)).await?;
                        }
                        Err(e) => tracing::error!(error = %e, "lease renewal failed; retrying"),
                    }
                    false
                }
            };
            if converged {
                self.announce(&lease, &mut announced).await;
            }
        }
    }
}
