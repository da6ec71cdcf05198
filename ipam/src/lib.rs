//! Address management for fabric: the network config, per-node subnet leases, pod address
//! allocation, and the seams through which a node agent reaches its datastore: [`Store`]
//! (config, leases, peers) and [`ObjectSource`] (pods, namespaces, NetworkPolicies).
//!
//! The allocation logic ([`subnet`], [`pool`]) is pure and tested without a datastore. Both
//! seams have three implementations: [`etcd`] (bare metal, a real etcd), [`kube`] (the
//! Kubernetes API: node `spec.podCIDRs` plus annotations, the API's own pods and policies) and
//! [`memory`] (for unit tests of what holds them).

pub mod backoff;
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
