//! A Node object as fabric reads and writes it (pure): the lease it stands for (subnet from
//! `spec.podCIDRs`, backend type, backend data and public IP from annotations under the
//! prefix, as Flannel's kube subnet manager keeps them), and the patches that publish this
//! node's lease and its `NetworkUnavailable` condition on `nodes/status`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use k8s_openapi::api::core::v1::Node;
use serde_json::{json, Value};

use crate::config::NetworkConfig;
use crate::lease::{Lease, LeaseRequest};
use crate::store::StoreError;

/// The annotation names under a prefix (default `fabric.dev`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotations {
    /// `<prefix>/backend-type`: `vxlan`, `host-gw`, `wireguard`.
    pub backend_type: String,
    /// `<prefix>/backend-data`: the backend's data, JSON.
    pub backend_data: String,
    /// `<prefix>/public-ip`: the underlay address tunnels to the node end at.
    pub public_ip: String,
    /// `<prefix>/kube-subnet-manager`: `true`, the node's subnet comes from its podCIDRs.
    pub subnet_manager: String,
}

impl Annotations {
    /// The names under `prefix`.
    pub fn new(prefix: &str) -> Self {
        let name = |n: &str| format!("{}/{n}", prefix.trim_end_matches('/'));
        Self {
            backend_type: name("backend-type"),
            backend_data: name("backend-data"),
            public_ip: name("public-ip"),
            subnet_manager: name("kube-subnet-manager"),
        }
    }

    /// What a node running `request` publishes.
    pub fn values(&self, request: &LeaseRequest) -> BTreeMap<String, String> {
        BTreeMap::from([
            (self.backend_type.clone(), request.backend_type.clone()),
            (self.backend_data.clone(), request.backend_data.to_string()),
            (self.public_ip.clone(), request.public_ip.to_string()),
            (self.subnet_manager.clone(), "true".into()),
        ])
    }

    /// Whether `node` already carries `values`.
    pub fn published(node: &Node, values: &BTreeMap<String, String>) -> bool {
        let have = node.metadata.annotations.as_ref();
        values
            .iter()
            .all(|(k, v)| have.and_then(|a| a.get(k)) == Some(v))
    }

    /// The merge patch (on `nodes/status`) that publishes `values`.
    pub fn patch(values: &BTreeMap<String, String>) -> Value {
        json!({ "metadata": { "annotations": values } })
    }
}

/// The node's pod subnets, one per family, from `spec.podCIDRs` (or the older `podCIDR`).
pub fn pod_cidrs(node: &Node) -> Result<(Option<Ipv4Net>, Option<Ipv6Net>), String> {
    let spec = node.spec.as_ref();
    let mut cidrs: Vec<&String> = spec
        .and_then(|s| s.pod_cidrs.as_ref())
        .map(|c| c.iter().collect())
        .unwrap_or_default();
    if cidrs.is_empty() {
        cidrs.extend(spec.and_then(|s| s.pod_cidr.as_ref()));
    }
    let (mut v4, mut v6) = (None, None);
    for cidr in cidrs {
        match cidr.parse::<IpNet>() {
            Ok(IpNet::V4(net)) if v4.is_none() => v4 = Some(net.trunc()),
            Ok(IpNet::V6(net)) if v6.is_none() => v6 = Some(net.trunc()),
            Ok(_) => {}
            Err(e) => return Err(format!("podCIDR {cidr:?} is not a CIDR: {e}")),
        }
    }
    Ok((v4, v6))
}

/// This node's subnets, checked against the network config.
pub fn own_subnets(
    node: &Node,
    name: &str,
    config: &NetworkConfig,
) -> Result<(Ipv4Net, Option<Ipv6Net>), StoreError> {
    let foreign = |cidr: String, reason: String| StoreError::ForeignPodCidr {
        node: name.to_owned(),
        cidr,
        reason,
    };
    let (v4, v6) = pod_cidrs(node).map_err(|reason| foreign("?".into(), reason))?;
    let Some(v4) = v4 else {
        return Err(StoreError::NoPodCidr {
            node: name.to_owned(),
            network: config.network,
        });
    };
    if !config.network.contains(&v4) {
        return Err(foreign(
            v4.to_string(),
            format!("is outside the network config's Network {}", config.network),
        ));
    }
    if v4.prefix_len() >= 31 {
        return Err(foreign(v4.to_string(), "leaves no room for pods".into()));
    }
    let v6 = match (config.ipv6, v6) {
        (Some(c6), Some(v6)) if !c6.network.contains(&v6) => {
            return Err(foreign(
                v6.to_string(),
                format!("is outside the network config's IPv6Network {}", c6.network),
            ))
        }
        (Some(_), v6) => v6,
        (None, _) => None,
    };
    Ok((v4, v6))
}

/// The lease `node` publishes, if it runs fabric and has a subnet.
pub fn lease_of(node: &Node, names: &Annotations) -> Option<Lease> {
    let name = node.metadata.name.clone()?;
    let annotations = node.metadata.annotations.as_ref()?;
    let (Some(subnet), ipv6_subnet) = pod_cidrs(node).ok()? else {
        return None;
    };
    let public_ip: Ipv4Addr = annotations.get(&names.public_ip)?.parse().ok()?;
    let backend_type = annotations.get(&names.backend_type)?.clone();
    let backend_data = annotations
        .get(&names.backend_data)
        .and_then(|d| serde_json::from_str(d).ok())
        .unwrap_or(Value::Null);
    Some(Lease {
        subnet,
        ipv6_subnet,
        node: name,
        public_ip,
        backend_type,
        backend_data,
        ttl_secs: None,
        handle: 0,
    })
}

/// The strategic merge patch (on `nodes/status`) that sets `NetworkUnavailable=False`, as
/// network plugins do once routes are programmed (the condition is merged by its type).
pub fn network_available_patch(now: &str) -> Value {
    json!({
        "status": {
            "conditions": [{
                "type": "NetworkUnavailable",
                "status": "False",
                "reason": "FabricIsUp",
                "message": "fabric programmed the routes to this node's peers",
                "lastTransitionTime": now,
                "lastHeartbeatTime": now,
            }]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(cidrs: &[&str], annotations: &[(&str, &str)]) -> Node {
        serde_json::from_value(json!({
            "metadata": {
                "name": "n1",
                "annotations": annotations.iter().cloned().collect::<BTreeMap<_, _>>(),
            },
            "spec": { "podCIDRs": cidrs },
        }))
        .unwrap()
    }

    fn config(json: &str) -> NetworkConfig {
        NetworkConfig::parse(json).unwrap()
    }

    #[test]
    fn a_published_node_is_a_lease() {
        let names = Annotations::new("fabric.dev");
        let n = node(
            &["10.244.1.0/24", "fd00:10:244:1::/64"],
            &[
                ("fabric.dev/backend-type", "vxlan"),
                (
                    "fabric.dev/backend-data",
                    r#"{"VtepMAC":"aa:bb:cc:dd:ee:ff"}"#,
                ),
                ("fabric.dev/public-ip", "172.30.0.11"),
            ],
        );
        let lease = lease_of(&n, &names).unwrap();
        assert_eq!(lease.subnet.to_string(), "10.244.1.0/24");
        assert_eq!(lease.ipv6_subnet.unwrap().to_string(), "fd00:10:244:1::/64");
        assert_eq!(lease.public_ip, Ipv4Addr::new(172, 30, 0, 11));
        assert_eq!(lease.backend_data["VtepMAC"], "aa:bb:cc:dd:ee:ff");
        // Not yet published, or no subnet: not a peer.
        assert!(lease_of(&node(&["10.244.1.0/24"], &[]), &names).is_none());
        let unassigned = node(
            &[],
            &[
                ("fabric.dev/public-ip", "172.30.0.11"),
                ("fabric.dev/backend-type", "vxlan"),
            ],
        );
        assert!(lease_of(&unassigned, &names).is_none());
    }

    #[test]
    fn own_subnets_name_what_is_wrong() {
        let c = config(r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"#);
        let (v4, v6) = own_subnets(&node(&["10.244.7.0/24"], &[]), "n1", &c).unwrap();
        assert_eq!(v4.to_string(), "10.244.7.0/24");
        assert_eq!(v6, None);
        let missing = own_subnets(&node(&[], &[]), "n1", &c)
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("--allocate-node-cidrs --cluster-cidr=10.244.0.0/16"),
            "{missing}"
        );
        let outside = own_subnets(&node(&["10.99.1.0/24"], &[]), "n1", &c)
            .unwrap_err()
            .to_string();
        assert!(
            outside.contains("10.99.1.0/24 is outside the network config's Network 10.244.0.0/16"),
            "{outside}"
        );
        let bad = own_subnets(&node(&["garbage"], &[]), "n1", &c)
            .unwrap_err()
            .to_string();
        assert!(bad.contains("not a CIDR"), "{bad}");
    }

    #[test]
    fn annotations_are_published_once() {
        let names = Annotations::new("fabric.dev/");
        let request = LeaseRequest {
            node: "n1".into(),
            public_ip: Ipv4Addr::new(172, 30, 0, 11),
            backend_type: "wireguard".into(),
            backend_data: json!({"PublicKey": "k", "ListenPort": 51820}),
            previous: None,
            ttl_secs: 0,
        };
        let values = names.values(&request);
        assert_eq!(values["fabric.dev/backend-type"], "wireguard");
        let mut n = node(&["10.244.1.0/24"], &[]);
        assert!(!Annotations::published(&n, &values));
        n.metadata.annotations = Some(values.clone());
        assert!(Annotations::published(&n, &values));
        let lease = lease_of(&n, &names).unwrap();
        assert_eq!(lease.backend_data["ListenPort"], 51820);
    }
}
