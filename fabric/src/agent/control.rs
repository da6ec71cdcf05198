//! The agent's loop over its seams only: the datastore (`dyn Store`), the data path
//! (`dyn Backend`) and the node's host side (`dyn Host`). It holds the node's lease (acquire,
//! renew, acquire again when lost), hands the backend the latest set of leases on every pass
//! (a lease change, a resync, a lease acquired again) and reports the data path ready.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use ipam::{Lease, LeaseRequest, Leases, Renewal, Store};
use ipnet::Ipv4Net;
use tokio::sync::watch;
use tunnel::Backend;

use super::admission::{Admission, Refusal};
use super::holding::Holding;
use super::host::Host;
use super::retry;
use crate::health::Beat;
use crate::state::StateDir;

/// The agent's loop and what it needs.
pub struct Control {
    /// The datastore.
    pub store: Arc<dyn Store>,
    /// The data path.
    pub backend: Arc<dyn Backend>,
    /// The node's host side.
    pub host: Arc<dyn Host>,
    /// The state dir: the subnet held is recorded in it.
    pub state: StateDir,
    /// This node's name.
    pub node: String,
    /// The node's underlay address, published in the lease.
    pub public_ip: Ipv4Addr,
    /// Lease TTL.
    pub lease_ttl: Duration,
    /// How often the lease is renewed ([`super::holding::renew_period`] of the TTL).
    pub renew_every: Duration,
    /// Periodic re-check of the kernel state.
    pub resync: Duration,
    /// Set after the first converged pass (the health endpoint's readiness).
    pub ready: Arc<AtomicBool>,
    /// Which peers' leases the data path may act on.
    pub admission: Admission,
    /// The leases refused on the last pass (each is warned about once, when first refused).
    pub refused: Arc<Mutex<Vec<Refusal>>>,
    /// Ticked each time the loop comes round (`/healthz` reports a loop that stopped).
    pub beat: Option<Beat>,
}

impl Control {
    fn request(&self, previous: Option<Ipv4Net>) -> LeaseRequest {
        LeaseRequest {
            node: self.node.clone(),
            public_ip: self.public_ip,
            backend_type: self.backend.kind().as_str().into(),
            backend_data: self.backend.lease_data(),
            previous,
            ttl_secs: self.lease_ttl.as_secs() as i64,
        }
    }

    fn tick(&self) {
        if let Some(beat) = &self.beat {
            beat.tick();
        }
    }

    /// Leases a subnet (preferring `previous`), records it in the state dir and opens its pod
    /// network.
    async fn acquire(&self, previous: Option<Ipv4Net>) -> Result<Holding> {
        let request = self.request(previous);
        let lease = retry("leasing a subnet", || {
            // Retrying is not being stuck.
            self.tick();
            self.store.acquire_lease(&request)
        })
        .await;
        tracing::info!(subnet = %lease.subnet, node = %self.node, public_ip = %lease.public_ip, "subnet leased");
        self.state
            .record_subnet(lease.subnet)
            .context("recording the subnet in the state dir")?;
        self.host.open_pods(&lease).await?;
        Ok(Holding::new(lease))
    }

    /// Renews the lease, acquiring it again when it is lost; true when a new lease is held
    /// (its data path wants a pass at once).
    async fn renew(&self, held: &mut Holding) -> Result<bool> {
        // A datastore that stops answering (blackholed, not refused) must not hold the loop:
        // the data path keeps being reconciled, and the renewal is tried again next period.
        let renewal = tokio::time::timeout(self.renew_every, self.store.renew_lease(held.lease()))
            .await
            .unwrap_or_else(|_| {
                Err(ipam::StoreError::Unavailable(format!(
                    "no answer within {:?}",
                    self.renew_every
                )))
            });
        match renewal {
            Ok(Renewal::Renewed) => {
                tracing::debug!(subnet = %held.lease().subnet, "lease renewed");
                Ok(false)
            }
            Ok(Renewal::Lost) => {
                tracing::warn!(subnet = %held.lease().subnet, "lease lost; not ready until leased again");
                // `/readyz` tells the truth until the next converged pass.
                self.ready.store(false, Ordering::Relaxed);
                *held = self.acquire(held.previous()).await?;
                Ok(true)
            }
            Err(e) => {
                tracing::error!(error = %e, "lease renewal failed; retrying");
                Ok(false)
            }
        }
    }

    /// The leases of `leases` the data path may act on; newly refused ones are warned about.
    fn admit(&self, local: &Lease, leases: &Leases) -> Leases {
        let (admitted, refused) = self.admission.admit(local, leases);
        let mut last = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        for r in refused.iter().filter(|r| !last.contains(r)) {
            tracing::warn!(key = %r.key, node = %r.node, reason = %r.reason, "ignoring a lease record");
        }
        *last = refused;
        admitted
    }

    /// Converges the data path to the admissible leases of `leases`, then the firewall; true
    /// when the data path is programmed.
    async fn pass(&self, local: &Lease, leases: &Leases) -> bool {
        let leases = &self.admit(local, leases);
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
        self.host
            .sync_firewall(self.backend.tunnel_ends(local, leases))
            .await;
        converged
    }

    /// Tells the datastore the data path for the held lease is programmed (retried after the
    /// next converged pass when it fails).
    async fn report(&self, held: &mut Holding) {
        match self.store.data_path_ready(held.lease()).await {
            Ok(()) => held.reported(),
            Err(e) => tracing::warn!(error = %e, "cannot report the data path ready; retrying"),
        }
    }

    async fn watch(&self) -> watch::Receiver<Leases> {
        retry("watching leases", || {
            self.tick();
            self.store.watch_leases()
        })
        .await
    }

    /// Runs until the process ends, or until the state dir or the pod network cannot be set
    /// up for a lease.
    pub async fn run(self) -> Result<()> {
        self.host.enable_forwarding()?;
        let mut held = self.acquire(self.state.previous_subnet()).await?;
        let mut leases = self.watch().await;
        let mut renew = tokio::time::interval(self.renew_every);
        let mut resync = tokio::time::interval(self.resync);
        // The first renewal is due one period after the lease; the first resync at once.
        renew.tick().await;
        loop {
            let pass = tokio::select! {
                changed = leases.changed() => {
                    if changed.is_err() {
                        tracing::warn!("lease watch ended; restarting it");
                        leases = self.watch().await;
                    }
                    true
                }
                _ = resync.tick() => true,
                _ = renew.tick() => self.renew(&mut held).await?,
            };
            self.tick();
            if !pass {
                continue;
            }
            // Every pass hands the backend the latest set, which is then seen.
            let snapshot = leases.borrow_and_update().clone();
            let converged = self.pass(held.lease(), &snapshot).await;
            if held.report_due(converged) {
                self.report(&mut held).await;
            }
        }
    }
}
