//! The API objects the lab writes in the kubelet's place, and what it reads back: Node objects
//! and their status (addresses), Namespaces, Pods bound to a node and their status (phase,
//! IPs, conditions, the container's state), and the nodes' `podCIDRs`. Pure functions over
//! JSON.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{ensure, Context, Result};
use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::{json, Map, Value};

/// The one container of every lab pod (the in-pod agent, which runs in the pod's namespace
/// without a container runtime).
pub const CONTAINER: &str = "porter";

/// Its image (never pulled: there is no container runtime).
pub const IMAGE: &str = "fabric.dev/lab-porter:latest";

/// A Node as a kubelet registers it, optionally with its pod CIDRs already set (a subnet
/// reservation: kube-controller-manager's node IPAM keeps a preset `podCIDR`).
pub fn node(name: &str, pod_cidrs: &[String]) -> Value {
    let mut node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
            },
        },
        "spec": {},
    });
    if let Some(first) = pod_cidrs.first() {
        node["spec"]["podCIDR"] = json!(first);
        node["spec"]["podCIDRs"] = json!(pod_cidrs);
    }
    node
}

/// The status a kubelet reports for its addresses (merge patch on `nodes/status`).
pub fn node_status_patch(name: &str, internal_ip: Ipv4Addr) -> Value {
    json!({"status": {"addresses": [
        {"type": "InternalIP", "address": internal_ip.to_string()},
        {"type": "Hostname", "address": name},
    ]}})
}

/// A Namespace.
pub fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

/// A Pod bound to `node` (no scheduler involved), with the lab's one container declaring
/// `ports` (Kubernetes `ContainerPort`s, as the `containerPorts` capability carries them).
pub fn pod(
    namespace: &str,
    name: &str,
    node: &str,
    labels: &BTreeMap<String, String>,
    ports: Option<&Value>,
) -> Value {
    let mut container = json!({"name": CONTAINER, "image": IMAGE});
    if let Some(ports) = ports.filter(|p| p.as_array().is_some_and(|a| !a.is_empty())) {
        container["ports"] = ports.clone();
    }
    let mut metadata = json!({"name": name, "namespace": namespace});
    if !labels.is_empty() {
        metadata["labels"] = json!(labels);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "nodeName": node,
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "terminationGracePeriodSeconds": 0,
            "containers": [container],
        },
    })
}

/// The status a kubelet writes once the pod's sandbox is networked and its container runs
/// (merge patch on `pods/status`). `now` is an RFC 3339 timestamp.
pub fn pod_status_patch(
    host_ip: Ipv4Addr,
    pod_ips: &[IpAddr],
    container_id: &str,
    now: &str,
) -> Value {
    let conditions: Vec<Value> = [
        "PodReadyToStartContainers",
        "PodScheduled",
        "Initialized",
        "ContainersReady",
        "Ready",
    ]
    .iter()
    .map(|t| json!({"type": t, "status": "True", "lastTransitionTime": now}))
    .collect();
    let pod_ips: Vec<Value> = pod_ips
        .iter()
        .map(|ip| json!({"ip": ip.to_string()}))
        .collect();
    let mut status = json!({
        "phase": "Running",
        "hostIP": host_ip.to_string(),
        "hostIPs": [{"ip": host_ip.to_string()}],
        "startTime": now,
        "conditions": conditions,
        "containerStatuses": [{
            "name": CONTAINER,
            "image": IMAGE,
            "imageID": IMAGE,
            "containerID": format!("containerd://{container_id}"),
            "ready": true,
            "started": true,
            "restartCount": 0,
            "state": {"running": {"startedAt": now}},
        }],
    });
    if let Some(first) = pod_ips.first() {
        status["podIP"] = first["ip"].clone();
        status["podIPs"] = json!(pod_ips);
    }
    json!({ "status": status })
}

/// Every node's `spec.podCIDRs` (or `spec.podCIDR`) from `kubectl get nodes -o json`; nodes
/// without one are left out.
pub fn pod_cidrs_by_node(list: &Value) -> BTreeMap<String, Vec<String>> {
    let items = list["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    items
        .iter()
        .filter_map(|n| {
            let name = n["metadata"]["name"].as_str()?.to_string();
            let mut cidrs: Vec<String> = n["spec"]["podCIDRs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c.as_str().map(str::to_string))
                .collect();
            if cidrs.is_empty() {
                cidrs.extend(n["spec"]["podCIDR"].as_str().map(str::to_string));
            }
            (!cidrs.is_empty()).then_some((name, cidrs))
        })
        .collect()
}

/// The nodes' pod CIDRs as leases (`[{"node", "subnet", "pod_cidrs"}]`, the IPv4 CIDR as the
/// subnet), the shape [`crate::lab::subnets_by_node`] reads.
pub fn leases(list: &Value) -> Value {
    let leases: Vec<Value> = pod_cidrs_by_node(list)
        .into_iter()
        .map(|(node, cidrs)| {
            let subnet = cidrs
                .iter()
                .find(|c| c.parse::<Ipv4Net>().is_ok())
                .unwrap_or(&cidrs[0])
                .clone();
            json!({"node": node, "subnet": subnet, "pod_cidrs": cidrs})
        })
        .collect();
    Value::Array(leases)
}

/// The `metadata.uid` of an object.
pub fn uid(object: &Value) -> Result<String> {
    object["metadata"]["uid"]
        .as_str()
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .with_context(|| format!("object without metadata.uid: {object}"))
}

/// The IPv6 subnet at the same index of `v6_network` (in `/v6_len`s) as `v4_subnet` has in
/// `v4_network`: the pair a dual-stack reservation pins (10.244.3.0/24 in 10.244.0.0/16 →
/// fd00:10:244:3::/64 in fd00:10:244::/48).
pub fn matching_ipv6_subnet(
    v4_subnet: Ipv4Net,
    v4_network: Ipv4Net,
    v6_network: Ipv6Net,
    v6_len: u8,
) -> Result<Ipv6Net> {
    ensure!(
        v4_network.contains(&v4_subnet),
        "{v4_subnet} is outside {v4_network}"
    );
    ensure!(
        v6_len >= v6_network.prefix_len() && v6_len <= 128,
        "/{v6_len} subnets do not fit {v6_network}"
    );
    let index = (u32::from(v4_subnet.network()) - u32::from(v4_network.network()))
        >> (32 - v4_subnet.prefix_len());
    let bits = v6_len - v6_network.prefix_len();
    ensure!(
        bits >= 32 || u64::from(index) < (1u64 << bits),
        "{v6_network} has no subnet number {index} of /{v6_len}"
    );
    let base = u128::from(v6_network.network());
    let addr = base + (u128::from(index) << (128 - u32::from(v6_len)));
    Ok(Ipv6Net::new(addr.into(), v6_len)?)
}

/// The label namespace's own name is kept under: the apiserver sets it on every Namespace.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The `kubectl label --overwrite` arguments turning `current` into exactly `desired`:
/// `key=value` for what to set, `key-` for what to remove (except keys in `keep`).
pub fn label_changes(
    current: &BTreeMap<String, String>,
    desired: &BTreeMap<String, String>,
    keep: &[&str],
) -> Vec<String> {
    let set = desired
        .iter()
        .filter(|(k, v)| current.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k}={v}"));
    let remove = current
        .keys()
        .filter(|k| !desired.contains_key(*k) && !keep.contains(&k.as_str()))
        .map(|k| format!("{k}-"));
    set.chain(remove).collect()
}

/// A JSON object's string map (labels), ignoring non-string values.
pub fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(Map::iter)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_as_a_kubelet_registers_them() {
        let n = node("node2", &[]);
        assert_eq!(n["metadata"]["labels"]["kubernetes.io/hostname"], "node2");
        assert_eq!(n["metadata"]["labels"]["kubernetes.io/os"], "linux");
        assert!(n["spec"].get("podCIDR").is_none());
        let reserved = node(
            "node1",
            &[
                "10.244.1.0/24".to_string(),
                "fd00:10:244:1::/64".to_string(),
            ],
        );
        assert_eq!(reserved["spec"]["podCIDR"], "10.244.1.0/24");
        assert_eq!(reserved["spec"]["podCIDRs"][1], "fd00:10:244:1::/64");
        let patch = node_status_patch("node1", Ipv4Addr::new(172, 30, 0, 11));
        assert_eq!(
            patch,
            json!({"status": {"addresses": [
                {"type": "InternalIP", "address": "172.30.0.11"},
                {"type": "Hostname", "address": "node1"}
            ]}})
        );
    }

    #[test]
    fn pods_bound_to_their_node() {
        let labels: BTreeMap<String, String> = [("pod".to_string(), "a".to_string())].into();
        let ports = json!([{"name": "serve-80-tcp", "containerPort": 80, "protocol": "TCP"}]);
        let p = pod("x", "a", "node1", &labels, Some(&ports));
        assert_eq!(
            p["metadata"],
            json!({"name": "a", "namespace": "x", "labels": {"pod": "a"}})
        );
        assert_eq!(p["spec"]["nodeName"], "node1");
        assert_eq!(p["spec"]["automountServiceAccountToken"], false);
        assert_eq!(p["spec"]["containers"][0]["name"], CONTAINER);
        assert_eq!(p["spec"]["containers"][0]["image"], IMAGE);
        assert_eq!(p["spec"]["containers"][0]["ports"], ports);
        let bare = pod("default", "b", "node2", &BTreeMap::new(), None);
        assert!(bare["metadata"].get("labels").is_none());
        assert!(bare["spec"]["containers"][0].get("ports").is_none());
    }

    #[test]
    fn pod_status_as_a_kubelet_writes_it() {
        let ips: Vec<IpAddr> = vec!["10.244.1.5".parse().unwrap(), "fd00::5".parse().unwrap()];
        let s = pod_status_patch(
            Ipv4Addr::new(172, 30, 0, 11),
            &ips,
            "t-a",
            "2026-01-01T00:00:00Z",
        );
        let st = &s["status"];
        assert_eq!(st["phase"], "Running");
        assert_eq!(st["hostIP"], "172.30.0.11");
        assert_eq!(st["podIP"], "10.244.1.5");
        assert_eq!(
            st["podIPs"],
            json!([{"ip": "10.244.1.5"}, {"ip": "fd00::5"}])
        );
        let types: Vec<&str> = st["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                assert_eq!(c["status"], "True");
                c["type"].as_str().unwrap()
            })
            .collect();
        for t in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
            assert!(types.contains(&t), "{t} missing");
        }
        let cs = &st["containerStatuses"][0];
        assert_eq!(cs["ready"], true);
        assert_eq!(cs["started"], true);
        assert_eq!(cs["containerID"], "containerd://t-a");
        assert_eq!(cs["state"]["running"]["startedAt"], "2026-01-01T00:00:00Z");
    }

    #[test]
    fn pod_cidrs_from_a_node_list() {
        let list = json!({"items": [
            {"metadata": {"name": "node1"}, "spec": {"podCIDR": "10.244.0.0/24",
                "podCIDRs": ["10.244.0.0/24", "fd00:10:244::/64"]}},
            {"metadata": {"name": "node2"}, "spec": {"podCIDR": "10.244.1.0/24"}},
            {"metadata": {"name": "node3"}, "spec": {}},
        ]});
        let by_node = pod_cidrs_by_node(&list);
        assert_eq!(by_node.len(), 2);
        assert_eq!(by_node["node1"][1], "fd00:10:244::/64");
        assert_eq!(by_node["node2"], vec!["10.244.1.0/24".to_string()]);
        let subnets = crate::lab::subnets_by_node(&leases(&list));
        assert_eq!(subnets["node1"], "10.244.0.0/24");
        assert_eq!(subnets["node2"], "10.244.1.0/24");
        assert!(!subnets.contains_key("node3"));
        assert!(pod_cidrs_by_node(&json!({})).is_empty());
    }

    #[test]
    fn ipv6_subnet_at_the_same_index() {
        let v6 = |s: &str| s.parse::<Ipv6Net>().unwrap();
        let v4 = |s: &str| s.parse::<Ipv4Net>().unwrap();
        assert_eq!(
            matching_ipv6_subnet(
                v4("10.244.3.0/24"),
                v4("10.244.0.0/16"),
                v6("fd00:10:244::/48"),
                64
            )
            .unwrap(),
            v6("fd00:10:244:3::/64")
        );
        assert_eq!(
            matching_ipv6_subnet(
                v4("10.244.255.0/24"),
                v4("10.244.0.0/16"),
                v6("fd00::/56"),
                64
            )
            .unwrap(),
            v6("fd00:0:0:ff::/64")
        );
        assert!(matching_ipv6_subnet(
            v4("10.244.1.0/24"),
            v4("10.244.0.0/16"),
            v6("fd00::/64"),
            64
        )
        .is_err());
        assert!(matching_ipv6_subnet(
            v4("10.245.1.0/24"),
            v4("10.244.0.0/16"),
            v6("fd00::/48"),
            64
        )
        .is_err());
    }

    #[test]
    fn label_changes_replace_the_whole_map() {
        let m = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let current = m(&[(NAMESPACE_NAME_LABEL, "x"), ("ns", "x"), ("old", "1")]);
        let desired = m(&[("ns", "y"), ("new", "2")]);
        assert_eq!(
            label_changes(&current, &desired, &[NAMESPACE_NAME_LABEL]),
            ["new=2", "ns=y", "old-"]
        );
        assert!(label_changes(&desired, &desired, &[]).is_empty());
        assert_eq!(label_changes(&current, &m(&[]), &[]).len(), 3);
    }

    #[test]
    fn uids_and_labels() {
        assert_eq!(uid(&json!({"metadata": {"uid": "u-1"}})).unwrap(), "u-1");
        assert!(uid(&json!({})).is_err());
        let labels = string_map(&json!({"a": "1", "b": 2}));
        assert_eq!(labels.len(), 1);
    }
}
