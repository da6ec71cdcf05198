//! The node agent (`fabricd`) and the operator's tool (`fabricctl`).
//!
//! `fabricd` leases the node's pod subnet through a [`ipam::Store`] (etcd or the Kubernetes
//! API, chosen by the flags of [`datastore`]), keeps the data path to every other node
//! converged through a [`tunnel::Backend`], wires pods in for the CNI plugin over a local
//! unix socket ([`api`], [`pods`]), masquerades pod traffic leaving the
//! cluster and guards its tunnel end ([`nft`]) and reports health ([`health`]); its local
//! endpoints share one accept loop ([`listen`]). [`policies`] follows the policy view
//! (pods, namespaces, NetworkPolicies) in the datastore, [`enforce`] judges connections with
//! it, and [`labels`] checks the label edits `fabricctl` makes. [`command`] runs the
//! netfilter commands they drive. [`fault`] is a test hook that kills fabricd at named steps
//! of CNI ADD and DEL.

pub mod agent;
pub mod api;
pub mod command;
pub mod datastore;
pub mod enforce;
pub mod fault;
pub mod flags;
pub mod health;
pub mod labels;
pub mod listen;
pub mod nft;
pub mod pods;
pub mod policies;
pub mod state;
