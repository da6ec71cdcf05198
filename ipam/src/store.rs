//! The datastore seams. The agent holds a `dyn Store` (network config, leases, peers) and
//! the policy follower a `dyn ObjectSource` (pods, namespaces, NetworkPolicies), and neither
//! asks which one it has: etcd (bare metal, [`crate::etcd::EtcdStore`]), the Kubernetes API
//! ([`crate::kube::KubeStore`]: node `spec.podCIDRs`, backend data in node annotations, the
//! API's own pods and policies) or memory ([`crate::memory::MemoryStore`], for tests).

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{mpsc, watch, Notify};

use crate::config::{ConfigError, NetworkConfig};
use crate::lease::{Lease, LeaseRequest, Leases};
use crate::objects::{PodRecord, StoredObject};

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
    /// The node has no pod subnet assigned yet (Kubernetes: `spec.podCIDRs` is empty).
    #[error("node {node} has no spec.podCIDRs yet: start kube-controller-manager with --allocate-node-cidrs --cluster-cidr={network} (kubeadm: --pod-network-cidr={network}), or set the node's podCIDR")]
    NoPodCidr {
        /// The node.
        node: String,
        /// The network config's `Network`, the CIDR the controller-manager must allocate from.
        network: ipnet::Ipv4Net,
    },
    /// The node's assigned pod subnet does not fit the network config.
    #[error("node {node}'s podCIDR {cidr} {reason}: make net-conf.json's Network match kube-controller-manager's --cluster-cidr (and SubnetLen its --node-cidr-mask-size)")]
    ForeignPodCidr {
        /// The node.
        node: String,
        /// Its podCIDR.
        cidr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// This node is not known to the datastore (Kubernetes: no Node object of that name).
    #[error("node {0} does not exist in the datastore (is --node-name / NODE_NAME right?)")]
    NoSuchNode(String),
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

    /// Tells the datastore that the node's data path to its peers is programmed (Kubernetes:
    /// the node condition `NetworkUnavailable=False`). Called after the first converged pass
    /// for each lease; a no-op where nobody reads it.
    async fn data_path_ready(&self, _lease: &Lease) -> Result<(), StoreError> {
        Ok(())
    }
}

/// What a follower of the policy objects reports, in the datastore's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectUpdate {
    /// Every object, as of `revision`. The first update, and again whenever the source had
    /// to list again: it replaces what came before.
    Listed {
        /// The revision the listing reflects.
        revision: i64,
        /// The objects.
        objects: Vec<StoredObject>,
    },
    /// Objects that changed, in order, up to `revision`.
    Changed {
        /// The revision of the last change.
        revision: i64,
        /// The changed objects, deletions with no value.
        objects: Vec<StoredObject>,
    },
    /// Nothing changed up to `revision` (an answer to [`ProgressHandle::request`]).
    Progress {
        /// The revision reached.
        revision: i64,
    },
}

/// Asks a follower to report how far it has got, where the source needs asking (etcd
/// answers with an [`ObjectUpdate::Progress`] once its watch has delivered everything up to
/// its current revision). Requests made while one is pending are merged.
#[derive(Debug, Clone, Default)]
pub struct ProgressHandle(pub(crate) Arc<Notify>);

impl ProgressHandle {
    /// Requests a progress report.
    pub fn request(&self) {
        self.0.notify_one();
    }
}

/// The policy objects followed by a task of the source's; dropping it stops the task.
#[derive(Debug)]
pub struct ObjectFeed {
    pub(crate) updates: mpsc::Receiver<ObjectUpdate>,
    pub(crate) progress: ProgressHandle,
}

impl ObjectFeed {
    /// The next update; the first is always an [`ObjectUpdate::Listed`]. `None` only if the
    /// following task died.
    pub async fn next(&mut self) -> Option<ObjectUpdate> {
        self.updates.recv().await
    }

    /// Asks for a progress report (see [`ProgressHandle`]).
    pub fn progress(&self) -> ProgressHandle {
        self.progress.clone()
    }
}

/// Where the policy view comes from: every pod, namespace and NetworkPolicy of the cluster.
///
/// Revisions are the source's: etcd's store revision, or for the Kubernetes API a sequence
/// the source numbers its own updates with (the API's resource versions are opaque and do not
/// order events across resource types). Either way a follower that has applied the update at
/// revision `r` knows everything the source reported up to `r`.
#[async_trait]
pub trait ObjectSource: Send + Sync {
    /// Starts following every object: a listing, then changes.
    async fn follow(&self) -> Result<ObjectFeed, StoreError>;

    /// Every object, read once, and the revision of the read.
    async fn list_objects(&self) -> Result<(i64, Vec<StoredObject>), StoreError>;

    /// A revision such that a follower that has reached it reflects everything the datastore
    /// held when this was called (`fabricctl policy sync` waits for it).
    async fn checkpoint(&self) -> Result<i64, StoreError>;
}
