//! Subnet leases: what one node holds, and how a lease is keyed in the datastore.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One node's hold on one subnet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// The node's pod subnet.
    pub subnet: Ipv4Net,
    /// The node's IPv6 pod subnet, on a dual-stack network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_subnet: Option<Ipv6Net>,
    /// The node's name.
    pub node: String,
    /// The node's underlay address: where tunnels to it end.
    pub public_ip: Ipv4Addr,
    /// The backend the node runs (`vxlan`, `host-gw`).
    pub backend_type: String,
    /// Backend-specific data (VTEP MAC, ...), owned by the `tunnel` crate.
    #[serde(default)]
    pub backend_data: Value,
    /// Seconds left before the lease expires, when the store knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<i64>,
    /// The datastore's handle on the lease (etcd lease id); not part of the record.
    #[serde(skip)]
    pub handle: i64,
}

/// The record stored as a lease's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct LeaseRecord {
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_subnet: Option<Ipv6Net>,
    pub public_ip: Ipv4Addr,
    pub backend_type: String,
    #[serde(default)]
    pub backend_data: Value,
}

impl Lease {
    pub(crate) fn record(&self) -> LeaseRecord {
        LeaseRecord {
            node: self.node.clone(),
            ipv6_subnet: self.ipv6_subnet,
            public_ip: self.public_ip,
            backend_type: self.backend_type.clone(),
            backend_data: self.backend_data.clone(),
        }
    }

    pub(crate) fn from_record(subnet: Ipv4Net, record: LeaseRecord, handle: i64) -> Self {
        Self {
            subnet,
            ipv6_subnet: record.ipv6_subnet,
            node: record.node,
            public_ip: record.public_ip,
            backend_type: record.backend_type,
            backend_data: record.backend_data,
            ttl_secs: None,
            handle,
        }
    }
}

/// What a node asks for when it leases (or re-leases) its subnet.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseRequest {
    /// The node's name.
    pub node: String,
    /// The node's underlay address.
    pub public_ip: Ipv4Addr,
    /// The backend the node runs.
    pub backend_type: String,
    /// Backend-specific data to publish.
    pub backend_data: Value,
    /// The subnet this node held before (from its state dir), preferred when free.
    pub previous: Option<Ipv4Net>,
    /// Lease lifetime in seconds.
    pub ttl_secs: i64,
}

impl LeaseRequest {
    /// The lease this request describes once `subnet` (and on a dual-stack network,
    /// `ipv6_subnet`) is granted.
    pub fn granted(&self, subnet: Ipv4Net, ipv6_subnet: Option<Ipv6Net>, handle: i64) -> Lease {
        Lease {
            subnet,
            ipv6_subnet,
            node: self.node.clone(),
            public_ip: self.public_ip,
            backend_type: self.backend_type.clone(),
            backend_data: self.backend_data.clone(),
            ttl_secs: Some(self.ttl_secs),
            handle,
        }
    }
}

/// Every current lease, by subnet: the snapshot the agent reconciles against.
pub type Leases = Arc<BTreeMap<Ipv4Net, Lease>>;

/// The key segment for a subnet: `10.244.1.0-24` (Flannel's form).
pub fn subnet_key(subnet: Ipv4Net) -> String {
    format!("{}-{}", subnet.network(), subnet.prefix_len())
}

/// Parses a key segment written by [`subnet_key`], and only that form: a segment with host
/// bits (`10.244.3.1-24`) or another spelling of the length (`10.244.3.0-024`) would be a
/// second key for one subnet, read under one key and written under the other.
pub fn parse_subnet_key(segment: &str) -> Option<Ipv4Net> {
    let (addr, len) = segment.rsplit_once('-')?;
    let net = Ipv4Net::new(addr.parse().ok()?, len.parse().ok()?).ok()?;
    (subnet_key(net) == segment).then_some(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_keys_round_trip() {
        let net: Ipv4Net = "10.244.3.0/24".parse().unwrap();
        assert_eq!(subnet_key(net), "10.244.3.0-24");
        assert_eq!(parse_subnet_key("10.244.3.0-24"), Some(net));
        assert_eq!(parse_subnet_key("10.244.3.0/24"), None);
        assert_eq!(parse_subnet_key("10.244.3.0-33"), None);
        assert_eq!(parse_subnet_key("garbage"), None);
        // Found by the datastore fuzz target: keys that are not subnet_key's own form.
        for other in ["10.244.3.1-24", "10.244.3.0-024", "10.244.3.0-+24"] {
            assert_eq!(parse_subnet_key(other), None, "{other}");
        }
    }
}
