//! What a node holds for its pods, read the way an operator reads it (etcd mode): the pool
//! file, `fabricctl pod list`, the host veths and /32 routes (`ip`), the `inet fabric` sets
//! (`nft -j`) and the policy queue rules (`iptables-save`, or the native nft table). The tests
//! that add and remove pods under load, faults and churn compare a [`NodeAudit`] with the pods
//! they believe attached, and [`NodeAudit::disagreements`] names everything that leaked or went
//! missing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use serde_json::Value;

use crate::lab::Lab;

/// One node's pod bookkeeping, as read at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAudit {
    /// The node's pod subnet.
    pub subnet: Ipv4Net,
    /// `pods.json`: address -> container id.
    pub pool: BTreeMap<Ipv4Addr, String>,
    /// `fabricctl pod list` for the node: address -> container id.
    pub records: BTreeMap<Ipv4Addr, String>,
    /// Host veths (`fab…`, and `fbt…` peers not yet moved into a pod).
    pub veths: BTreeSet<String>,
    /// Host routes into the pod subnet: address -> device.
    pub routes: BTreeMap<Ipv4Addr, String>,
    /// The elements of the `pod_veths` set.
    pub pod_veths: BTreeSet<String>,
    /// The addresses the `pod_addrs` set names.
    pub pod_addrs: BTreeSet<Ipv4Addr>,
    /// The elements of the `pod_addrs6` set.
    pub pod_addrs6: BTreeSet<String>,
    /// Pod addresses the policy queue rules name (pods isolated by policy).
    pub queued: BTreeSet<Ipv4Addr>,
}

impl NodeAudit {
    /// Reads `node`'s bookkeeping now.
    pub fn of(lab: &Lab, node: &str) -> Result<Self> {
        let subnet: Ipv4Net = lab
            .subnets()?
            .get(node)
            .with_context(|| format!("{node} holds no subnet"))?
            .parse()
            .context("a subnet")?;
        let exec = |argv: &[&str]| lab.exec_ok(node, argv);
        let in_subnet = |ip: &Ipv4Addr| subnet.contains(ip);
        let set = |name: &str| -> Result<Vec<String>> {
            set_elements(&exec(&[
                "nft", "-j", "list", "set", "inet", "fabric", name,
            ])?)
        };
        let pod_addrs = set("pod_addrs")?
            .iter()
            .flat_map(|e| addresses(e))
            .filter(in_subnet)
            .collect();
        let nft_queue = lab
            .exec(node, &["nft", "list", "table", "inet", "fabric-policy"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        Ok(NodeAudit {
            subnet,
            pool: pool(
                &std::fs::read_to_string(lab.node(node)?.state_dir.join("pods.json"))
                    .unwrap_or_default(),
            )?,
            records: records(&lab.fabricctl(&["pod", "list", "-o", "json"])?, node)?,
            veths: veths(&exec(&["ip", "-o", "link", "show"])?),
            routes: routes(&exec(&["ip", "-4", "-o", "route", "show"])?)
                .into_iter()
                .filter(|(ip, _)| in_subnet(ip))
                .collect(),
            pod_veths: set("pod_veths")?.into_iter().collect(),
            pod_addrs,
            pod_addrs6: set("pod_addrs6")?.into_iter().collect(),
            queued: queued(&exec(&["iptables-save", "-t", "filter"])?, &nft_queue)
                .into_iter()
                .filter(in_subnet)
                .collect(),
        })
    }

    /// Everything that disagrees with exactly `pods` (address -> container id) attached, one
    /// line each; empty when the node holds those pods and nothing else. `isolated` says
    /// whether a policy isolates every pod (then each is queued).
    pub fn disagreements(&self, pods: &BTreeMap<Ipv4Addr, String>, isolated: bool) -> Vec<String> {
        let mut out = Vec::new();
        let ips: BTreeSet<Ipv4Addr> = pods.keys().copied().collect();
        if self.pool != *pods {
            out.push(format!("pods.json holds {:?}, want {pods:?}", self.pool));
        }
        if self.records != *pods {
            out.push(format!("pod records {:?}, want {pods:?}", self.records));
        }
        if self.veths.len() != pods.len() {
            out.push(format!(
                "{} host veths {:?} for {} pods",
                self.veths.len(),
                self.veths,
                pods.len()
            ));
        }
        if self.routes.keys().copied().collect::<BTreeSet<_>>() != ips {
            out.push(format!(
                "/32 routes to {:?}, want {ips:?}",
                self.routes.keys().collect::<Vec<_>>()
            ));
        }
        if let Some((ip, dev)) = self
            .routes
            .iter()
            .find(|(_, dev)| !self.veths.contains(*dev))
        {
            out.push(format!("the route to {ip} leaves by {dev}, no pod veth"));
        }
        if self.pod_veths != self.veths {
            out.push(format!(
                "set pod_veths {:?}, host veths {:?}",
                self.pod_veths, self.veths
            ));
        }
        if self.pod_addrs != ips {
            out.push(format!(
                "set pod_addrs names {:?}, want {ips:?}",
                self.pod_addrs
            ));
        }
        if self.pod_addrs6.len() > pods.len() {
            out.push(format!(
                "set pod_addrs6 {:?} for {} pods",
                self.pod_addrs6,
                pods.len()
            ));
        }
        let want_queued = if isolated { ips } else { BTreeSet::new() };
        if self.queued != want_queued {
            out.push(format!(
                "queue rules name {:?}, want {want_queued:?}",
                self.queued
            ));
        }
        out
    }
}

/// `pods.json`'s `held`: address -> container id (empty for a missing file).
fn pool(text: &str) -> Result<BTreeMap<Ipv4Addr, String>> {
    if text.is_empty() {
        return Ok(BTreeMap::new());
    }
    let pool: Value = serde_json::from_str(text).context("pods.json")?;
    Ok(pool["held"]
        .as_object()
        .map(|held| {
            held.iter()
                .filter_map(|(ip, owner)| {
                    Some((
                        ip.parse().ok()?,
                        owner["container_id"].as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default())
}

/// `fabricctl pod list -o json`, the records of `node`: address -> container id.
fn records(json: &str, node: &str) -> Result<BTreeMap<Ipv4Addr, String>> {
    let list: Value = serde_json::from_str(json).context("fabricctl pod list -o json")?;
    Ok(list
        .as_array()
        .context("a list of pods")?
        .iter()
        .filter(|r| r["node"] == node)
        .filter_map(|r| {
            Some((
                r["ip"].as_str()?.parse().ok()?,
                r["container_id"].as_str()?.to_string(),
            ))
        })
        .collect())
}

/// The host veths of `ip -o link show`.
fn veths(links: &str) -> BTreeSet<String> {
    links
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| (n.starts_with("fab") && !n.starts_with("fabric")) || n.starts_with("fbt"))
        .collect()
}

/// The host routes of `ip -4 -o route show`: destination address -> device.
fn routes(table: &str) -> BTreeMap<Ipv4Addr, String> {
    table
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let dst: Ipv4Addr = words.next()?.parse().ok()?;
            let dev = words.skip_while(|w| *w != "dev").nth(1)?;
            Some((dst, dev.to_string()))
        })
        .collect()
}

/// A set's elements in `nft -j list set` output, each as compact text without quotes.
fn set_elements(json: &str) -> Result<Vec<String>> {
    let listing: Value = serde_json::from_str(json).context("nft -j list set")?;
    Ok(listing["nftables"]
        .as_array()
        .context("nft -j output")?
        .iter()
        .filter_map(|o| o["set"]["elem"].as_array())
        .flatten()
        .map(|e| e.to_string().replace('"', ""))
        .collect())
}

/// Every IPv4 address written in `text`.
fn addresses(text: &str) -> impl Iterator<Item = Ipv4Addr> + '_ {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|w| w.parse().ok())
}

/// The pod addresses the policy queue rules name: the xtables chain's rules that send on to
/// the queue's chain, or the native nft table's `queue` rules.
fn queued(xtables: &str, nft: &str) -> BTreeSet<Ipv4Addr> {
    xtables
        .lines()
        .filter(|l| l.starts_with("-A FABRIC-POLICY ") && l.contains("-j FABRIC-POLICY-QUEUE"))
        .chain(nft.lines().filter(|l| l.contains("queue")))
        .flat_map(addresses)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_tools_print() {
        let links = "1: lo: <LOOPBACK> mtu 65536\n5: fabric.1: <UP> mtu 1450\n7: fab0123@if2: <UP> mtu 1450\n8: fbt99: <> mtu 1450\n";
        assert_eq!(veths(links), ["fab0123", "fbt99"].map(String::from).into());
        let table =
            "10.244.1.0/24 via 10.244.1.0 dev fabric.1 onlink\n10.244.0.2 dev fab0123 scope link\n";
        let r = routes(table);
        assert_eq!(r[&"10.244.0.2".parse().unwrap()], "fab0123");
        let set = r#"{"nftables":[{"metainfo":{}},{"set":{"name":"pod_addrs","elem":[{"concat":["fab0123","10.244.0.2"]}]}}]}"#;
        let elems = set_elements(set).unwrap();
        assert_eq!(elems, vec!["{concat:[fab0123,10.244.0.2]}"]);
        assert_eq!(
            addresses(&elems[0]).collect::<Vec<_>>(),
            vec![Ipv4Addr::new(10, 244, 0, 2)]
        );
        let xt = "-A FABRIC-POLICY -d 10.244.0.2/32 -j FABRIC-POLICY-QUEUE\n-A FABRIC-POLICY -j RETURN\n";
        assert_eq!(queued(xt, ""), [Ipv4Addr::new(10, 244, 0, 2)].into());
        let pool_json = r#"{"subnet":"10.244.0.0/24","held":{"10.244.0.2":{"container_id":"c1","ifname":"eth0"}}}"#;
        assert_eq!(
            pool(pool_json).unwrap()[&Ipv4Addr::new(10, 244, 0, 2)],
            "c1"
        );
        assert!(pool("").unwrap().is_empty());
    }

    #[test]
    fn names_each_disagreement() {
        let ip = Ipv4Addr::new(10, 244, 0, 2);
        let pods: BTreeMap<_, _> = [(ip, "c1".to_string())].into();
        let clean = NodeAudit {
            subnet: "10.244.0.0/24".parse().unwrap(),
            pool: pods.clone(),
            records: pods.clone(),
            veths: ["fab1".to_string()].into(),
            routes: [(ip, "fab1".to_string())].into(),
            pod_veths: ["fab1".to_string()].into(),
            pod_addrs: [ip].into(),
            pod_addrs6: BTreeSet::new(),
            queued: [ip].into(),
        };
        assert!(clean.disagreements(&pods, true).is_empty());
        assert_eq!(clean.disagreements(&pods, false).len(), 1);
        let mut leaked = clean.clone();
        leaked.veths.insert("fab2".into());
        let found = leaked.disagreements(&pods, true);
        assert!(
            found.iter().any(|d| d.contains("2 host veths")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|d| d.contains("set pod_veths")),
            "{found:?}"
        );
        assert_eq!(clean.disagreements(&BTreeMap::new(), false).len(), 6);
    }
}
