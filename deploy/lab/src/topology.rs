//! Names and addresses of a lab: which namespace is called what, which underlay address each
//! member has, and which names are legal. Pure functions only.
//!
//! Every namespace of lab `NAME` starts with `NAME-`: `NAME-sw` (the underlay switch, bridge
//! `br0` with [`SWITCH_IP`]), `NAME-etcd` ([`ETCD_IP`], etcd mode; with `--etcd-members N`
//! also `NAME-etcd2`.. at `172.30.0.4`.., see [`etcd_member_ip`]) or `NAME-cp`
//! ([`CONTROL_PLANE_IP`], the Kubernetes control plane, Kubernetes mode), `NAME-nodeK`
//! (`172.30.0.(10+K)`) and one namespace per pod, `NAME-<pod>` (`NAME-<k8s-namespace>-<pod>`
//! outside `default`).
//!
//! Underlay addresses: `.1` switch, `.2` etcd (member 1), `.3` control plane, `.4`..`.7` etcd
//! members 2..5, `.11`..`.210` nodes, `.250` the outside host.

use std::net::Ipv4Addr;

use anyhow::{bail, ensure, Result};

/// The underlay network every lab uses inside its own switch namespace.
pub const UNDERLAY_PREFIX_LEN: u8 = 24;
/// The switch's address on `br0`; the nodes' default gateway ("the outside world").
pub const SWITCH_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
/// etcd's address on the underlay (the first member's, see [`etcd_member_ip`]).
pub const ETCD_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);
/// etcd's client port.
pub const ETCD_CLIENT_PORT: u16 = 2379;
/// etcd's peer port (plain http on the underlay, between the members).
pub const ETCD_PEER_PORT: u16 = 2380;
/// Most etcd members a lab runs (`--etcd-members`).
pub const MAX_ETCD_MEMBERS: usize = 5;
/// The Kubernetes control plane's address on the underlay (kube-apiserver listens here).
pub const CONTROL_PLANE_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 3);
/// A host on the underlay outside the cluster (`NAME-ext`, Kubernetes mode with services):
/// where NodePorts are tried from.
pub const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 250);
/// kube-apiserver's secure port.
pub const APISERVER_PORT: u16 = 6443;
/// The Kubernetes service network (the apiserver's `kubernetes` Service is its first address).
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// The Kubernetes service network's IPv6 half, on a dual-stack lab.
pub const SERVICE_CIDR6: &str = "fd00:10:96::/112";

/// `--service-cluster-ip-range`: IPv4, and IPv6 beside it on a dual-stack lab.
pub fn service_cidrs(dual_stack: bool) -> String {
    if dual_stack {
        format!("{SERVICE_CIDR},{SERVICE_CIDR6}")
    } else {
        SERVICE_CIDR.to_string()
    }
}
/// The `kubernetes` Service's cluster IP, the first address of [`SERVICE_CIDR`].
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
/// The etcd key prefix fabric uses.
pub const ETCD_PREFIX: &str = "/fabric";
/// The bridge in the switch namespace.
pub const BRIDGE: &str = "br0";
/// The underlay interface inside etcd and node namespaces.
pub const UNDERLAY_IFACE: &str = "eth0";
/// The interface the CNI plugin creates inside pods.
pub const POD_IFACE: &str = "eth0";
/// The Kubernetes namespace of pods that name none.
pub const DEFAULT_POD_NAMESPACE: &str = "default";
/// Most nodes a lab can have (the underlay is one /24, nodes start at `.11`).
pub const MAX_NODES: usize = 200;
/// Longest lab name: keeps the node sockets' paths far below the 108-byte `sun_path` limit.
pub const MAX_LAB_NAME_LEN: usize = 32;

/// The plain etcd client endpoints of a lab with `members` etcd members, as seen from the
/// underlay (member order).
pub fn etcd_endpoints(members: usize) -> Result<Vec<String>> {
    (1..=members)
        .map(|k| Ok(format!("http://{}:{ETCD_CLIENT_PORT}", etcd_member_ip(k)?)))
        .collect()
}

/// Checks an etcd cluster size: odd (a majority then survives the loss of N/2 members), 1 to
/// [`MAX_ETCD_MEMBERS`].
pub fn validate_etcd_members(members: usize) -> Result<()> {
    ensure!(
        (1..=MAX_ETCD_MEMBERS).contains(&members) && members % 2 == 1,
        "etcd members must be an odd number from 1 to {MAX_ETCD_MEMBERS}, not {members}"
    );
    Ok(())
}

/// The name of etcd member `k` (1-based): `etcd`, `etcd2`, `etcd3`, ... Also its `exec`
/// target, its log's name and its data dir's name in the state dir.
pub fn etcd_member(k: usize) -> String {
    if k == 1 {
        "etcd".to_string()
    } else {
        format!("etcd{k}")
    }
}

/// Parses an etcd member name ([`etcd_member`]) back into its index.
pub fn etcd_member_index(name: &str) -> Option<usize> {
    (1..=MAX_ETCD_MEMBERS).find(|&k| etcd_member(k) == name)
}

/// The underlay address of etcd member `k` (1-based): [`ETCD_IP`] for the first, then
/// `172.30.0.(2+k)` (`.4`..`.7`), past the control plane's `.3` and below the nodes.
pub fn etcd_member_ip(k: usize) -> Result<Ipv4Addr> {
    let last = match k {
        1 => 2,
        2..=MAX_ETCD_MEMBERS => 2 + k as u8,
        _ => bail!("etcd member index {k} out of range 1..={MAX_ETCD_MEMBERS}"),
    };
    let [a, b, c, _] = SWITCH_IP.octets();
    Ok(Ipv4Addr::new(a, b, c, last))
}

/// The namespace of etcd member `k`: `LAB-etcd`, `LAB-etcd2`, ...
pub fn etcd_member_netns(lab: &str, k: usize) -> String {
    format!("{lab}-{}", etcd_member(k))
}

/// Checks a lab name: 1 to 32 of `[a-z0-9-]`, starting and ending with a letter or digit.
pub fn validate_lab_name(name: &str) -> Result<()> {
    ensure!(
        !name.is_empty() && name.len() <= MAX_LAB_NAME_LEN,
        "lab name {name:?} must be 1 to {MAX_LAB_NAME_LEN} characters"
    );
    ensure!(
        name.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
        "lab name {name:?} may only contain a-z, 0-9 and '-'"
    );
    ensure!(
        !name.starts_with('-') && !name.ends_with('-'),
        "lab name {name:?} must start and end with a letter or digit"
    );
    Ok(())
}

/// Checks a pod or Kubernetes namespace name: 1 to 63 of `[A-Za-z0-9._-]` (it ends up in a
/// namespace name and in `CNI_ARGS`, so no `;`, `=` or `/`).
pub fn validate_pod_name(what: &str, name: &str) -> Result<()> {
    ensure!(
        !name.is_empty() && name.len() <= 63,
        "{what} {name:?} must be 1 to 63 characters"
    );
    ensure!(
        name.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')),
        "{what} {name:?} may only contain letters, digits, '-', '_' and '.'"
    );
    Ok(())
}

/// The prefix every namespace of the lab carries.
pub fn netns_prefix(lab: &str) -> String {
    format!("{lab}-")
}

/// The underlay switch's namespace.
pub fn switch_netns(lab: &str) -> String {
    format!("{lab}-sw")
}

/// etcd's namespace (the first member's).
pub fn etcd_netns(lab: &str) -> String {
    etcd_member_netns(lab, 1)
}

/// The Kubernetes control plane's namespace.
pub fn control_plane_netns(lab: &str) -> String {
    format!("{lab}-cp")
}

/// kube-apiserver's URL as seen from the underlay.
pub fn apiserver_url() -> String {
    format!("https://{CONTROL_PLANE_IP}:{APISERVER_PORT}")
}

/// The outside host's namespace.
pub fn external_netns(lab: &str) -> String {
    format!("{lab}-ext")
}

/// The name of node `k` (1-based).
pub fn node_name(k: usize) -> String {
    format!("node{k}")
}

/// Parses `nodeK` back into `K`.
pub fn node_index(node: &str) -> Option<usize> {
    node.strip_prefix("node")?
        .parse()
        .ok()
        .filter(|k| (1..=MAX_NODES).contains(k))
}

/// A node's namespace.
pub fn node_netns(lab: &str, node: &str) -> String {
    format!("{lab}-{node}")
}

/// The underlay address of node `k` (1-based): `172.30.0.(10+k)`.
pub fn node_underlay_ip(k: usize) -> Result<Ipv4Addr> {
    if !(1..=MAX_NODES).contains(&k) {
        bail!("node index {k} out of range 1..={MAX_NODES}");
    }
    let [a, b, c, _] = SWITCH_IP.octets();
    Ok(Ipv4Addr::new(a, b, c, 10 + k as u8))
}

/// The default name of pod `j` (1-based) on `node`: `nodeK-podJ`.
pub fn default_pod_name(node: &str, j: usize) -> String {
    format!("{node}-pod{j}")
}

/// A pod's namespace: `LAB-<pod>` in the default namespace, `LAB-<ns>-<pod>` elsewhere.
pub fn pod_netns(lab: &str, namespace: &str, pod: &str) -> String {
    if namespace == DEFAULT_POD_NAMESPACE {
        format!("{lab}-{pod}")
    } else {
        format!("{lab}-{namespace}-{pod}")
    }
}

/// The switch-side veth of a member (`v-etcd`, `v-node1`): names are local to the switch
/// namespace, so parallel labs never collide.
pub fn switch_port(member: &str) -> String {
    format!("v-{member}")
}

/// The path a runtime passes as `CNI_NETNS` for a named namespace.
pub fn netns_path(netns: &str) -> String {
    format!("/var/run/netns/{netns}")
}

/// Does namespace `netns` belong to lab `lab`, given the names of every other known lab?
///
/// Membership is by prefix `lab-`, except that a longer lab name sharing that prefix (lab
/// `a-b` beside lab `a`) claims its own namespaces.
pub fn netns_belongs_to(netns: &str, lab: &str, other_labs: &[String]) -> bool {
    let prefix = netns_prefix(lab);
    netns.starts_with(&prefix)
        && !other_labs.iter().any(|other| {
            other != lab && other.starts_with(&prefix) && netns.starts_with(&netns_prefix(other))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_names() {
        for ok in ["lab", "a", "e2e-vxlan-1", &"x".repeat(32)] {
            validate_lab_name(ok).unwrap();
        }
        for bad in ["", "Lab", "-a", "a-", "a_b", "a/b", "a b", &"x".repeat(33)] {
            assert!(validate_lab_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn pod_names() {
        validate_pod_name("pod", "node1-pod2").unwrap();
        validate_pod_name("pod", "web.v2_a").unwrap();
        for bad in ["", "a;b", "a=b", "a/b", "a b"] {
            assert!(validate_pod_name("pod", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn namespace_names() {
        assert_eq!(switch_netns("lab"), "lab-sw");
        assert_eq!(etcd_netns("lab"), "lab-etcd");
        assert_eq!(control_plane_netns("lab"), "lab-cp");
        assert_eq!(node_netns("lab", &node_name(3)), "lab-node3");
        assert_eq!(
            pod_netns("lab", DEFAULT_POD_NAMESPACE, &default_pod_name("node1", 2)),
            "lab-node1-pod2"
        );
        assert_eq!(pod_netns("t", "x", "a"), "t-x-a");
        assert_eq!(netns_path("t-x-a"), "/var/run/netns/t-x-a");
        assert_eq!(switch_port("node2"), "v-node2");
    }

    #[test]
    fn node_addresses() {
        assert_eq!(node_underlay_ip(1).unwrap(), Ipv4Addr::new(172, 30, 0, 11));
        assert_eq!(
            node_underlay_ip(200).unwrap(),
            Ipv4Addr::new(172, 30, 0, 210)
        );
        assert!(node_underlay_ip(0).is_err());
        assert!(node_underlay_ip(201).is_err());
        assert_eq!(node_index("node12"), Some(12));
        assert_eq!(node_index("node0"), None);
        assert_eq!(node_index("etcd"), None);
        assert_eq!(
            etcd_endpoints(3).unwrap(),
            [
                "http://172.30.0.2:2379",
                "http://172.30.0.4:2379",
                "http://172.30.0.5:2379"
            ]
        );
        assert_eq!(apiserver_url(), "https://172.30.0.3:6443");
    }

    #[test]
    fn etcd_members() {
        for ok in [1, 3, 5] {
            validate_etcd_members(ok).unwrap();
        }
        for bad in [0, 2, 4, 6, 7] {
            assert!(validate_etcd_members(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(etcd_member(1), "etcd");
        assert_eq!(etcd_member(3), "etcd3");
        assert_eq!(etcd_member_netns("lab", 1), etcd_netns("lab"));
        assert_eq!(etcd_member_netns("lab", 2), "lab-etcd2");
        for k in 1..=MAX_ETCD_MEMBERS {
            assert_eq!(etcd_member_index(&etcd_member(k)), Some(k));
        }
        for bad in ["etcd1", "etcd0", "etcd6", "etcd02", "etcdx", "node1"] {
            assert_eq!(etcd_member_index(bad), None, "{bad}");
        }
        let mut taken = vec![SWITCH_IP, CONTROL_PLANE_IP, EXTERNAL_IP];
        taken.extend((1..=MAX_NODES).map(|k| node_underlay_ip(k).unwrap()));
        for k in 1..=MAX_ETCD_MEMBERS {
            let ip = etcd_member_ip(k).unwrap();
            assert!(!taken.contains(&ip), "etcd member {k} at taken {ip}");
            taken.push(ip);
        }
        assert_eq!(etcd_member_ip(1).unwrap(), ETCD_IP);
        assert!(etcd_member_ip(0).is_err() && etcd_member_ip(6).is_err());
    }

    #[test]
    fn namespace_ownership_respects_longer_lab_names() {
        let labs = vec!["a".to_string(), "a-b".to_string()];
        assert!(netns_belongs_to("a-node1", "a", &labs));
        assert!(netns_belongs_to("a-node1-pod1", "a", &labs));
        assert!(!netns_belongs_to("a-b-node1", "a", &labs));
        assert!(netns_belongs_to("a-b-node1", "a-b", &labs));
        assert!(!netns_belongs_to("ab-node1", "a", &labs));
        assert!(!netns_belongs_to("a", "a", &labs));
    }
}
