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

/// The annotation on Pods the lab attaches itself ([`crate::Lab::add_pod`]): the kubelet role
/// leaves them alone.
pub const ATTACHED_BY_ANNOTATION: &str = "lab.fabric.dev/attached-by";

/// Its value.
pub const ATTACHED_BY_LAB: &str = "fabric-lab";

/// The taint the apiserver puts on a new Node (TaintNodesByCondition) until it is Ready.
pub const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";

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
    let mut metadata = json!({
        "name": name,
        "namespace": namespace,
        "annotations": {ATTACHED_BY_ANNOTATION: ATTACHED_BY_LAB},
    });
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

/// A running container as its status reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    /// `spec.containers[].name`.
    pub name: String,
    /// Its image.
    pub image: String,
    /// The runtime's container id (`containerd://` is prefixed).
    pub id: String,
    /// Whether it passes its readiness probe (or has none).
    pub ready: bool,
}

/// The status a kubelet writes once the pod's sandbox is networked and its container runs
/// (merge patch on `pods/status`). `now` is an RFC 3339 timestamp.
pub fn pod_status_patch(
    host_ip: Ipv4Addr,
    pod_ips: &[IpAddr],
    container_id: &str,
    now: &str,
) -> Value {
    let lab_container = ContainerState {
        name: CONTAINER.into(),
        image: IMAGE.into(),
        id: container_id.into(),
        ready: true,
    };
    running_pod_status(host_ip, pod_ips, &[lab_container], now, now)
}

/// The status of a pod whose sandbox is networked and whose `containers` run since `started`
/// (RFC 3339); Ready when every container is (merge patch on `pods/status`).
pub fn running_pod_status(
    host_ip: Ipv4Addr,
    pod_ips: &[IpAddr],
    containers: &[ContainerState],
    started: &str,
    now: &str,
) -> Value {
    let ready = containers.iter().all(|c| c.ready);
    let conditions: Vec<Value> = [
        ("PodReadyToStartContainers", true),
        ("PodScheduled", true),
        ("Initialized", true),
        ("ContainersReady", ready),
        ("Ready", ready),
    ]
    .iter()
    .map(|(t, ok)| {
        let status = if *ok { "True" } else { "False" };
        let mut c = json!({"type": t, "status": status, "lastTransitionTime": now});
        if !ok {
            c["reason"] = json!("ContainersNotReady");
        }
        c
    })
    .collect();
    let statuses: Vec<Value> = containers
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "image": c.image,
                "imageID": c.image,
                "containerID": format!("containerd://{}", c.id),
                "ready": c.ready,
                "started": true,
                "restartCount": 0,
                "state": {"running": {"startedAt": started}},
            })
        })
        .collect();
    let pod_ips: Vec<Value> = pod_ips
        .iter()
        .map(|ip| json!({"ip": ip.to_string()}))
        .collect();
    let mut status = json!({
        "phase": "Running",
        "hostIP": host_ip.to_string(),
        "hostIPs": [{"ip": host_ip.to_string()}],
        "startTime": started,
        "conditions": conditions,
        "containerStatuses": statuses,
    });
    if let Some(first) = pod_ips.first() {
        status["podIP"] = first["ip"].clone();
        status["podIPs"] = json!(pod_ips);
    }
    json!({ "status": status })
}

/// What a kubelet reports about its node on every heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeHeartbeat {
    /// Whether the node is ready (its network plugin, fabricd, is).
    pub ready: bool,
    /// Why not, when not.
    pub message: String,
    /// CPUs.
    pub cpus: usize,
    /// Memory in KiB.
    pub memory_kib: u64,
    /// How many pods it takes.
    pub max_pods: u32,
    /// The kubelet version it claims (the control plane's).
    pub version: String,
}

/// The strategic-merge patch on `nodes/status` a kubelet's heartbeat sends: the Ready and
/// pressure conditions (merged by type, so fabricd's NetworkUnavailable stays), capacity,
/// allocatable and node info. `now` is an RFC 3339 timestamp; `since` when Ready last changed.
pub fn node_heartbeat_patch(hb: &NodeHeartbeat, now: &str, since: &str) -> Value {
    let condition = |t: &str, status: bool, reason: &str, message: &str, changed: &str| {
        json!({
            "type": t,
            "status": if status { "True" } else { "False" },
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": now,
            "lastTransitionTime": changed,
        })
    };
    let (reason, message) = if hb.ready {
        (
            "KubeletReady",
            "kubelet is posting ready status".to_string(),
        )
    } else {
        ("KubeletNotReady", hb.message.clone())
    };
    let resources = json!({
        "cpu": hb.cpus.to_string(),
        "memory": format!("{}Ki", hb.memory_kib),
        "pods": hb.max_pods.to_string(),
        "ephemeral-storage": "10Gi",
    });
    json!({"status": {
        "conditions": [
            condition("MemoryPressure", false, "KubeletHasSufficientMemory", "kubelet has sufficient memory available", since),
            condition("DiskPressure", false, "KubeletHasNoDiskPressure", "kubelet has no disk pressure", since),
            condition("PIDPressure", false, "KubeletHasSufficientPID", "kubelet has sufficient PID available", since),
            condition("Ready", hb.ready, reason, &message, since),
        ],
        "capacity": resources,
        "allocatable": resources,
        "nodeInfo": {
            "kubeletVersion": hb.version,
            "kubeProxyVersion": hb.version,
            "containerRuntimeVersion": "fabric-lab://kubelet-role",
            "operatingSystem": "linux",
            "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
            "osImage": "fabric-lab",
            "kernelVersion": "",
            "machineID": "",
            "systemUUID": "",
            "bootID": "",
        },
    }})
}

/// Applies a status patch to `object` the way the API merges it: each key of `patch.status`
/// replaces the object's, except `conditions`, which are merged by `type` (a strategic merge,
/// so conditions other writers own, e.g. fabricd's NetworkUnavailable, stay).
pub fn merge_status(object: &mut Value, patch: &Value) {
    let Some(fields) = patch["status"].as_object() else {
        return;
    };
    if !object["status"].is_object() {
        object["status"] = json!({});
    }
    for (key, value) in fields {
        if key == "conditions" {
            let mut merged: Vec<Value> = object["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for c in value.as_array().into_iter().flatten() {
                match merged.iter_mut().find(|m| m["type"] == c["type"]) {
                    Some(m) => *m = c.clone(),
                    None => merged.push(c.clone()),
                }
            }
            object["status"]["conditions"] = Value::Array(merged);
        } else {
            object["status"][key] = value.clone();
        }
    }
}

/// Does Node `node` (an object) carry taint `key`?
pub fn has_taint(node: &Value, key: &str) -> bool {
    node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|t| t["key"] == key)
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
            json!({"name": "a", "namespace": "x", "labels": {"pod": "a"},
                   "annotations": {ATTACHED_BY_ANNOTATION: ATTACHED_BY_LAB}})
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
    fn unready_containers_make_an_unready_pod() {
        let c = |name: &str, ready| ContainerState {
            name: name.into(),
            image: "nginx".into(),
            id: format!("id-{name}"),
            ready,
        };
        let ips: Vec<IpAddr> = vec!["10.244.2.7".parse().unwrap()];
        let host = Ipv4Addr::new(172, 30, 0, 12);
        let s = running_pod_status(host, &ips, &[c("a", true), c("b", false)], "t0", "t1");
        let st = &s["status"];
        assert_eq!(st["startTime"], "t0");
        let ready = st["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["status"], "False");
        assert_eq!(st["containerStatuses"][1]["ready"], false);
        assert_eq!(
            st["containerStatuses"][0]["containerID"],
            "containerd://id-a"
        );
        let s = running_pod_status(host, &ips, &[c("a", true)], "t0", "t1");
        assert_eq!(s["status"]["conditions"][4]["status"], "True");
    }

    #[test]
    fn heartbeats_report_ready_capacity_and_info() {
        let hb = NodeHeartbeat {
            ready: true,
            message: String::new(),
            cpus: 2,
            memory_kib: 1024,
            max_pods: 110,
            version: "v1.36.3".into(),
        };
        let p = node_heartbeat_patch(&hb, "now", "since");
        let st = &p["status"];
        let ready = &st["conditions"][3];
        assert_eq!(ready["type"], "Ready");
        assert_eq!(ready["status"], "True");
        assert_eq!(ready["lastHeartbeatTime"], "now");
        assert_eq!(ready["lastTransitionTime"], "since");
        assert_eq!(st["allocatable"]["pods"], "110");
        assert_eq!(st["capacity"]["memory"], "1024Ki");
        assert_eq!(st["nodeInfo"]["kubeletVersion"], "v1.36.3");
        let down = NodeHeartbeat {
            ready: false,
            message: "fabricd is not ready".into(),
            ..hb
        };
        let ready = node_heartbeat_patch(&down, "now", "since")["status"]["conditions"][3].clone();
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["message"], "fabricd is not ready");
        let node = json!({"spec": {"taints": [{"key": NOT_READY_TAINT, "effect": "NoSchedule"}]}});
        assert!(has_taint(&node, NOT_READY_TAINT));
        assert!(!has_taint(&json!({"spec": {}}), NOT_READY_TAINT));
    }

    #[test]
    fn status_merges_keep_other_conditions() {
        let mut node = json!({"metadata": {"name": "n"}, "status": {
            "conditions": [{"type": "NetworkUnavailable", "status": "False"},
                           {"type": "Ready", "status": "False"}],
            "addresses": [{"type": "InternalIP", "address": "172.30.0.11"}]}});
        merge_status(
            &mut node,
            &json!({"status": {"conditions": [{"type": "Ready", "status": "True"},
                                              {"type": "PIDPressure", "status": "False"}],
                               "capacity": {"pods": "110"}}}),
        );
        let st = &node["status"];
        assert_eq!(st["conditions"].as_array().unwrap().len(), 3);
        assert_eq!(st["conditions"][0]["type"], "NetworkUnavailable");
        assert_eq!(st["conditions"][1]["status"], "True");
        assert_eq!(st["capacity"]["pods"], "110");
        assert_eq!(st["addresses"][0]["address"], "172.30.0.11");
        let mut bare = json!({"metadata": {}});
        merge_status(&mut bare, &json!({"status": {"phase": "Running"}}));
        assert_eq!(bare["status"]["phase"], "Running");
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
