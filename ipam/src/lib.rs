//! Address management for fabric: the network config, per-node subnet leases, pod address
//! allocation, and the [`Store`] seam through which a node agent reaches its datastore.
//!
//! The allocation logic ([`subnet`], [`pool`]) is pure and tested without a datastore; the
//! [`etcd`] module is the thin shell that speaks to a real etcd. A Kubernetes implementation
//! of [`Store`] (node `spec.podCIDR` plus annotations) slots in beside it.

pub mod config;
pub mod etcd;
pub mod kube;
pub mod lease;
pub mod memory;
pub mod objects;
pub mod pool;
pub mod store;
pub mod subnet;

pub use config::{ipv6_host, BackendConfig, BackendKind, ConfigError, Ipv6Config, NetworkConfig};
pub use lease::{Lease, LeaseRequest, Leases};
pub use objects::{NamespaceRecord, PodRecord};
pub use pool::{PodPool, PoolError};
pub use store::{
    ObjectFeed, ObjectSource, ObjectUpdate, ProgressHandle, Renewal, Store, StoreError,
};
