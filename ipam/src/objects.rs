//! The objects bare-metal policy enforcement needs, as fabric stores them in etcd mode:
//! pods (registered by fabricd on CNI ADD, one record per attachment), namespaces (their
//! labels, set with `fabricctl namespace label`) and NetworkPolicies (as applied with
//! `fabricctl policy apply`). In Kubernetes mode the API server holds them instead.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use fabric_cni::api::ContainerPort;
use serde::{Deserialize, Serialize};

/// A pod as fabricd registers it on CNI ADD. fabricd writes a record only then (one per new
/// container id) and deletes it on DEL and GC; it never rewrites one, so labels changed
/// later (`fabricctl pod label`) stay until the pod goes.
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
    /// Its IPv6 address, on a dual-stack network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    /// Its labels (the `labels` capability, or `fabricctl pod label`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its containers' declared ports (the `containerPorts` capability), which NetworkPolicy
    /// named ports resolve against.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
}

/// A namespace's labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceRecord {
    /// The labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The kinds of object stored, each under its own key prefix (ordered as their keys are).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `namespaces/<name>`.
    Namespaces,
    /// `pods/<node>/<container id>`.
    Pods,
    /// `policies/<namespace>/<name>`.
    Policies,
}

impl Kind {
    /// Every kind, in key order.
    pub const ALL: [Kind; 3] = [Kind::Namespaces, Kind::Pods, Kind::Policies];

    /// The key segment under the prefix.
    pub fn segment(self) -> &'static str {
        match self {
            Kind::Pods => "pods/",
            Kind::Namespaces => "namespaces/",
            Kind::Policies => "policies/",
        }
    }

    /// Splits a key below the prefix (`pods/node1/c1`) into its kind and the object's name
    /// (`node1/c1`); `None` for keys of other data and for an empty name.
    pub fn parse(key: &str) -> Option<(Kind, &str)> {
        Kind::ALL.into_iter().find_map(|kind| {
            key.strip_prefix(kind.segment())
                .filter(|name| !name.is_empty())
                .map(|name| (kind, name))
        })
    }
}

/// An object's value as stored and the etcd revision it was last written at (the guard for a
/// read-modify-write, see [`crate::etcd::EtcdStore::put_object_if`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The value.
    pub value: serde_json::Value,
    /// The revision of its last write.
    pub mod_revision: i64,
}

/// One object as a listing or a watch event reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// Its kind.
    pub kind: Kind,
    /// Its name below the kind's segment.
    pub name: String,
    /// Its value (JSON, not yet decoded); `None` once deleted.
    pub value: Option<Vec<u8>>,
    /// The revision it was written (or deleted) at.
    pub mod_revision: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_into_kind_and_name() {
        assert_eq!(Kind::parse("pods/n1/c1"), Some((Kind::Pods, "n1/c1")));
        assert_eq!(Kind::parse("namespaces/x"), Some((Kind::Namespaces, "x")));
        assert_eq!(
            Kind::parse("policies/x/deny"),
            Some((Kind::Policies, "x/deny"))
        );
        assert_eq!(Kind::parse("pods/"), None);
        assert_eq!(Kind::parse("subnets/10.244.1.0-24"), None);
        assert_eq!(Kind::parse("podsx/a"), None);
    }

    #[test]
    fn pod_records_without_ports_still_decode() {
        let old =
            r#"{"namespace":"x","name":"a","node":"n1","container_id":"c1","ip":"10.244.1.5"}"#;
        let record: PodRecord = serde_json::from_str(old).unwrap();
        assert!(record.ports.is_empty() && record.labels.is_empty());
        assert!(!serde_json::to_string(&record).unwrap().contains("ports"));
    }
}
