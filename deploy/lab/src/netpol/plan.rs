//! The pure half of the end-to-end reachability suite: where the model's pods go (one node per
//! pod subnet, pinned by reservations), which probes each source pod runs, and how observed
//! outcomes compare with a case's expectations.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use anyhow::{bail, ensure, Context, Result};
use ipnet::Ipv4Net;
use policy::cases::{Case, Expect, Model, ModelPod};
use policy::Protocol;

use crate::spec::Reservation;

/// The length of the pod subnets the model's addresses are written against (`10.244.1.0/24`).
pub const SUBNET_LEN: u8 = 24;

/// The length of the cluster network holding them (`10.244.0.0/16`).
pub const NETWORK_LEN: u8 = 16;

/// Where the model's pods run: node `nodeK` holds the K-th pod subnet (in address order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The cluster network, e.g. `10.244.0.0/16`.
    pub network: Ipv4Net,
    /// Subnet reservations, one per node, to be made before the nodes start.
    pub reservations: Vec<Reservation>,
    /// The node of each pod, by `namespace/name`.
    pub nodes: BTreeMap<String, String>,
}

impl Placement {
    /// Places the model: every pod subnet (/24) gets a node, all of them inside one /16.
    pub fn of(model: &Model) -> Result<Self> {
        let first = model.pods.first().context("the model has no pods")?;
        let network = Ipv4Net::new(first.ip, NETWORK_LEN)?.trunc();
        let mut subnets: Vec<Ipv4Net> = Vec::new();
        for pod in &model.pods {
            ensure!(
                network.contains(&pod.ip),
                "pod {} at {} is outside {network}, where the first pod put the cluster network",
                qualified(pod),
                pod.ip
            );
            let subnet = Ipv4Net::new(pod.ip, SUBNET_LEN)?.trunc();
            ensure!(
                pod.ip != subnet.network() && pod.ip != subnet.broadcast(),
                "pod {} at {}: the subnet's first and last addresses cannot be pod addresses",
                qualified(pod),
                pod.ip
            );
            if !subnets.contains(&subnet) {
                subnets.push(subnet);
            }
        }
        subnets.sort();
        if subnets.len() > crate::topology::MAX_NODES {
            bail!(
                "the model's pods span {} subnets; a lab has at most {} nodes",
                subnets.len(),
                crate::topology::MAX_NODES
            );
        }
        let node_of = |ip: Ipv4Addr| {
            let i = subnets
                .iter()
                .position(|s| s.contains(&ip))
                .expect("every pod's subnet is listed");
            format!("node{}", i + 1)
        };
        let mut nodes = BTreeMap::new();
        for pod in &model.pods {
            if nodes.insert(qualified(pod), node_of(pod.ip)).is_some() {
                bail!("pod {} appears twice in the model", qualified(pod));
            }
        }
        let reservations = subnets
            .iter()
            .enumerate()
            .map(|(i, s)| Reservation {
                subnet: s.to_string(),
                node: format!("node{}", i + 1),
            })
            .collect();
        Ok(Placement {
            network,
            reservations,
            nodes,
        })
    }

    /// The number of nodes the lab needs.
    pub fn node_count(&self) -> usize {
        self.reservations.len()
    }
}

/// `namespace/name` of a model pod.
pub fn qualified(pod: &ModelPod) -> String {
    format!("{}/{}", pod.namespace, pod.name)
}

/// One probe of a case, by name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProbeKey {
    /// Source pod, `namespace/name`.
    pub from: String,
    /// Destination pod, `namespace/name`.
    pub to: String,
    /// Destination port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

impl fmt::Display for ProbeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {} {}/{}",
            self.from,
            self.to,
            self.port,
            self.protocol.as_str()
        )
    }
}

/// What a probe expects and whether it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expectation {
    /// The expected verdict.
    pub expect: Expect,
    /// Loopback probes (from == to) are informational.
    pub loopback: bool,
}

/// A case's probes, grouped by source pod: each with its target `IP:PORT/PROTO` (the agent's
/// probe syntax).
pub type ProbePlan = BTreeMap<String, Vec<(ProbeKey, String)>>;

/// Groups `probes` by source pod and names each target by the destination's model address.
pub fn plan<'a>(
    model: &Model,
    probes: impl IntoIterator<Item = &'a ProbeKey>,
) -> Result<ProbePlan> {
    let ips: BTreeMap<String, Ipv4Addr> = model.pods.iter().map(|p| (qualified(p), p.ip)).collect();
    let mut out: ProbePlan = BTreeMap::new();
    for key in probes {
        ensure!(
            ips.contains_key(&key.from),
            "probe {key}: no pod {} in the model",
            key.from
        );
        let ip = ips
            .get(&key.to)
            .with_context(|| format!("probe {key}: no pod {} in the model", key.to))?;
        let target = format!("{ip}:{}/{}", key.port, key.protocol.as_str());
        out.entry(key.from.clone())
            .or_default()
            .push((key.clone(), target));
    }
    Ok(out)
}

/// A case's probes and what they expect.
pub fn expectations(case: &Case) -> Result<BTreeMap<ProbeKey, Expectation>> {
    let mut out = BTreeMap::new();
    for p in &case.probes {
        let key = ProbeKey {
            from: p.from.clone(),
            to: p.to.clone(),
            port: p.port,
            protocol: p.protocol,
        };
        let e = Expectation {
            expect: p.expect,
            loopback: p.loopback || p.from == p.to,
        };
        if out.insert(key.clone(), e).is_some() {
            bail!("case {}: probe {key} is listed twice", case.name);
        }
    }
    Ok(out)
}

/// What one probe observed, as the suite scores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Whether a connection was made.
    pub verdict: Expect,
    /// The agent's outcome word and detail, for the report (`timeout`, `refused: ...`).
    pub detail: String,
}

/// A probe whose observation differs from its expectation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The probe.
    pub key: ProbeKey,
    /// What the case expects.
    pub expected: Expect,
    /// What was observed.
    pub observed: Observed,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: expected {}, got {} ({})",
            self.key, self.expected, self.observed.verdict, self.observed.detail
        )
    }
}

/// Compares observations with expectations. A probe without an observation is an error of
/// the run, not a verdict. Returns the counted mismatches and the loopback ones.
pub fn compare(
    expected: &BTreeMap<ProbeKey, Expectation>,
    observed: &BTreeMap<ProbeKey, Observed>,
) -> Result<(Vec<Mismatch>, Vec<Mismatch>)> {
    let mut counted = Vec::new();
    let mut loopback = Vec::new();
    for (key, e) in expected {
        let o = observed
            .get(key)
            .with_context(|| format!("probe {key} was not run"))?;
        if o.verdict != e.expect {
            let m = Mismatch {
                key: key.clone(),
                expected: e.expect,
                observed: o.clone(),
            };
            if e.loopback {
                loopback.push(m);
            } else {
                counted.push(m);
            }
        }
    }
    Ok((counted, loopback))
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy::cases::CaseFile;

    fn sample() -> CaseFile {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/netpol/generated-cases.yaml");
        CaseFile::load(path).unwrap()
    }

    #[test]
    fn one_node_per_subnet_in_address_order() {
        let file = sample();
        let p = Placement::of(&file.model).unwrap();
        assert_eq!(p.network.to_string(), "10.244.0.0/16");
        assert_eq!(p.node_count(), 3);
        assert_eq!(p.reservations[0].subnet, "10.244.1.0/24");
        assert_eq!(p.reservations[0].node, "node1");
        assert_eq!(p.nodes["x/a"], "node1");
        assert_eq!(p.nodes["y/c"], "node2");
        assert_eq!(p.nodes["z/b"], "node3");
    }

    #[test]
    fn models_a_lab_cannot_hold_are_refused() {
        let mut model = sample().model;
        model.pods[1].ip = "10.245.1.20".parse().unwrap();
        let err = Placement::of(&model).unwrap_err().to_string();
        assert!(err.contains("outside 10.244.0.0/16"), "{err}");
        let mut model = sample().model;
        model.pods[1].ip = "10.244.1.0".parse().unwrap();
        assert!(Placement::of(&model).is_err());
        let mut model = sample().model;
        let dup = model.pods[0].clone();
        model.pods.push(dup);
        assert!(Placement::of(&model).is_err());
    }

    #[test]
    fn probes_are_grouped_by_source_and_aimed_at_model_addresses() {
        let file = sample();
        let case = &file.cases[0];
        let expected = expectations(case).unwrap();
        let plan = plan(&file.model, expected.keys()).unwrap();
        assert_eq!(plan.len(), 9, "every pod is a source");
        let total: usize = plan.values().map(Vec::len).sum();
        assert_eq!(total, case.probes.len());
        let (key, target) = &plan["x/a"][0];
        assert_eq!(key.from, "x/a");
        let to = file
            .model
            .pods
            .iter()
            .find(|p| qualified(p) == key.to)
            .unwrap();
        assert_eq!(
            *target,
            format!("{}:{}/{}", to.ip, key.port, key.protocol.as_str())
        );
    }

    #[test]
    fn mismatches_count_except_on_loopback() {
        let file = sample();
        let case = &file.cases[0];
        let expected = expectations(case).unwrap();
        let flip = |e: Expect| match e {
            Expect::Allow => Expect::Deny,
            Expect::Deny => Expect::Allow,
        };
        let mut observed: BTreeMap<ProbeKey, Observed> = expected
            .iter()
            .map(|(k, e)| {
                let o = Observed {
                    verdict: e.expect,
                    detail: "as expected".into(),
                };
                (k.clone(), o)
            })
            .collect();
        assert_eq!(compare(&expected, &observed).unwrap().0, vec![]);

        let (remote, _) = expected.iter().find(|(_, e)| !e.loopback).unwrap();
        let (own, _) = expected.iter().find(|(_, e)| e.loopback).unwrap();
        for key in [remote, own] {
            let o = observed.get_mut(key).unwrap();
            o.verdict = flip(o.verdict);
        }
        let (counted, loopback) = compare(&expected, &observed).unwrap();
        assert_eq!(counted.len(), 1);
        assert_eq!(&counted[0].key, remote);
        assert_eq!(loopback.len(), 1);

        observed.remove(remote);
        assert!(
            compare(&expected, &observed).is_err(),
            "a missing probe is an error"
        );
    }
}
