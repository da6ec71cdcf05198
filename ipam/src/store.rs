//! The datastore seam. The agent holds a `dyn Store` and never asks which one it is: etcd
//! (bare metal, [`crate::etcd::EtcdStore`]) or the Kubernetes API (node `spec.podCIDR`,
//! backend data in node annotations).

use async_trait::async_trait;
use tokio::sync::watch;

use crate::config::{ConfigError, NetworkConfig};
use crate::lease::{Lease, LeaseRequest, Leases};
use crate::objects::PodRecord;

/// Why a datastore operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The datastore could not be reached or answered with an error; retry later.
    #[error("datastore unavailable: {0}")]
    Unavailable(String),
    /// No network config has been written yet.
    #[error("no network config at {key}: write one with `fabricctl config set -f net-conf.json`")]
    NoConfig {
        /// Where it was looked for.
        key: String,
    },
    /// The network config is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Every subnet is leased.
    #[error("no free subnet left in the network (raise SubnetMax or shorten SubnetLen)")]
    Exhausted,
    /// This node's reserved subnet is leased by another node.
    #[error("subnet {subnet} is reserved for this node but leased by {holder}; waiting for that lease to expire")]
    ReservedButTaken {
        /// The reserved subnet.
        subnet: ipnet::Ipv4Net,
        /// The node holding it.
        holder: String,
    },
    /// A stored record could not be decoded.
    #[error("bad record at {key}: {reason}")]
    BadRecord {
        /// Its key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// The outcome of renewing a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Still held.
    Renewed,
    /// Gone (expired or deleted): acquire again.
    Lost,
}

/// A datastore of network config and subnet leases.
#[async_trait]
pub trait Store: Send + Sync {
    /// The cluster's network config.
    async fn network_config(&self) -> Result<NetworkConfig, StoreError>;

    /// Leases a subnet for the node, or refreshes the one it holds; never hands out a
    /// subnet another node holds, retrying on lost races.
    async fn acquire_lease(&self, request: &LeaseRequest) -> Result<Lease, StoreError>;

    /// Keeps `lease` alive for another TTL.
    async fn renew_lease(&self, lease: &Lease) -> Result<Renewal, StoreError>;

    /// Every current lease, with its remaining TTL where known.
    async fn list_leases(&self) -> Result<Vec<Lease>, StoreError>;

    /// Follows every lease: the receiver always holds the latest full set. The store keeps it
    /// current by itself (re-listing after compaction or reconnect).
    async fn watch_leases(&self) -> Result<watch::Receiver<Leases>, StoreError>;

    /// Records a pod this node attached, for policy enforcement (a no-op where the datastore
    /// already knows its pods, as the Kubernetes API does). Called once per CNI ADD of a new
    /// container, never again for it (not on restart, not on resync), so what operators
    /// change in the record later (`fabricctl pod label`) is not undone.
    ///
    /// Returns the datastore revision the record was written at where the store orders its
    /// writes so (etcd): a follower of the policy objects that has reached it knows the pod.
    async fn register_pod(&self, pod: &PodRecord) -> Result<Option<i64>, StoreError>;

    /// Forgets the pod attached as `container_id` on `node`.
    async fn unregister_pod(&self, node: &str, container_id: &str) -> Result<(), StoreError>;
}
