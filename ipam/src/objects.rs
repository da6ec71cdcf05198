//! The objects bare-metal policy enforcement needs, as fabric stores them in etcd mode:
//! pods (registered by fabricd on CNI ADD, one record per attachment), namespaces (their
//! labels, set with `fabricctl namespace label`) and NetworkPolicies (as applied with
//! `fabricctl policy apply`). In Kubernetes mode the API server holds them instead.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// A pod as fabricd registers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    /// Kubernetes namespace (`K8S_POD_NAMESPACE`, or `default`).
    pub namespace: String,
    /// Pod name (`K8S_POD_NAME`, or the container id).
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// The runtime's container id.
    pub container_id: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its labels (the `labels` capability).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A namespace's labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceRecord {
    /// The labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The kinds of object stored, each under its own key prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `pods/<node>/<container id>`.
    Pods,
    /// `namespaces/<name>`.
    Namespaces,
    /// `policies/<namespace>/<name>`.
    Policies,
}

impl Kind {
    /// The key segment under the prefix.
    pub fn segment(self) -> &'static str {
        match self {
            Kind::Pods => "pods/",
            Kind::Namespaces => "namespaces/",
            Kind::Policies => "policies/",
        }
    }
}
