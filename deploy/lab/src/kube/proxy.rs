//! kube-proxy as the lab runs it: one per node, inside the node's namespace, authenticated as
//! `system:kube-proxy` (the default `system:node-proxier` binding covers it), programming
//! Services in nftables (default) or iptables mode. Its command line is pure and tested.
//!
//! It must not touch anything outside the node's namespace: the conntrack flags below leave
//! the (partly machine-wide) conntrack sysctls as they are, NodePorts are accepted on the
//! node's underlay address only (so `route_localnet` is never needed), and its metrics and
//! health servers bind the node's own addresses.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;
use std::str::FromStr;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The binary's name, also its log's (`logs/kube-proxy-NODE.log`) stem.
pub const KUBE_PROXY: &str = "kube-proxy";

/// kube-proxy's health port (its default).
pub const HEALTHZ_PORT: u16 = 10256;

/// How kube-proxy programs Services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum ProxyMode {
    /// nftables (table `ip kube-proxy`).
    #[default]
    #[serde(rename = "nftables")]
    Nftables,
    /// iptables (iptables-nft here), the `KUBE-*` chains.
    #[serde(rename = "iptables")]
    Iptables,
}

impl ProxyMode {
    /// Both modes.
    pub const ALL: [ProxyMode; 2] = [ProxyMode::Nftables, ProxyMode::Iptables];

    /// `--proxy-mode`'s value.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyMode::Nftables => "nftables",
            ProxyMode::Iptables => "iptables",
        }
    }
}

impl fmt::Display for ProxyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProxyMode {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        ProxyMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .with_context(|| format!("unknown proxy mode {s:?} (expected nftables or iptables)"))
    }
}

/// What kube-proxy on one node needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyNode<'a> {
    /// The node's name (`--hostname-override`).
    pub name: &'a str,
    /// Its underlay address: the node IP, the only NodePort address.
    pub ip: Ipv4Addr,
    /// The pod networks (IPv4, and IPv6 on a dual-stack lab): traffic from them is local.
    pub cluster_cidrs: Vec<String>,
    /// nftables or iptables.
    pub mode: ProxyMode,
}

/// kube-proxy's command line for `node`, with `kubeconfig`.
pub fn args(node: &ProxyNode<'_>, kubeconfig: &Path) -> Vec<String> {
    [
        ("--kubeconfig", kubeconfig.display().to_string()),
        ("--hostname-override", node.name.to_string()),
        ("--bind-address", node.ip.to_string()),
        ("--proxy-mode", node.mode.to_string()),
        ("--cluster-cidr", node.cluster_cidrs.join(",")),
        ("--detect-local-mode", "ClusterCIDR".into()),
        ("--nodeport-addresses", format!("{}/32", node.ip)),
        ("--metrics-bind-address", "127.0.0.1:10249".into()),
        (
            "--healthz-bind-address",
            format!("{}:{HEALTHZ_PORT}", node.ip),
        ),
        // Leave conntrack's sysctls alone (nf_conntrack_max is machine-wide).
        ("--conntrack-max-per-core", "0".into()),
        ("--conntrack-tcp-timeout-established", "0s".into()),
        ("--conntrack-tcp-timeout-close-wait", "0s".into()),
        ("--conntrack-udp-timeout", "0s".into()),
        ("--conntrack-udp-timeout-stream", "0s".into()),
        ("--profiling", "false".into()),
    ]
    .into_iter()
    .map(|(flag, value)| format!("{flag}={value}"))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_stays_inside_the_node() {
        let node = ProxyNode {
            name: "node2",
            ip: Ipv4Addr::new(172, 30, 0, 12),
            cluster_cidrs: vec!["10.244.0.0/16".into(), "fd00:10:244::/48".into()],
            mode: ProxyMode::default(),
        };
        let a = args(&node, Path::new("/s/kube/kube-proxy.kubeconfig"));
        let flag = |name: &str| {
            a.iter()
                .find_map(|x| x.strip_prefix(name)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("{name} missing from {a:?}"))
                .to_string()
        };
        assert_eq!(flag("--proxy-mode"), "nftables");
        assert_eq!(flag("--hostname-override"), "node2");
        assert_eq!(flag("--cluster-cidr"), "10.244.0.0/16,fd00:10:244::/48");
        assert_eq!(flag("--nodeport-addresses"), "172.30.0.12/32");
        assert_eq!(flag("--healthz-bind-address"), "172.30.0.12:10256");
        assert_eq!(flag("--metrics-bind-address"), "127.0.0.1:10249");
        assert_eq!(flag("--conntrack-max-per-core"), "0");
        assert_eq!(flag("--conntrack-tcp-timeout-established"), "0s");
        assert_eq!(flag("--conntrack-tcp-timeout-close-wait"), "0s");
        assert!(!a.iter().any(|x| x.contains("0.0.0.0")), "{a:?}");
        let ipt = ProxyNode {
            mode: "iptables".parse().unwrap(),
            ..node
        };
        assert!(args(&ipt, Path::new("/k")).contains(&"--proxy-mode=iptables".to_string()));
        assert!("ipvs".parse::<ProxyMode>().is_err());
    }
}
