//! The cluster state (namespaces, pods, policies) and its incremental compilation into the
//! [`Classifier`]. Each update recomputes only what it affects:
//!
//! * a pod upsert or relabel re-evaluates that pod against every rule's peers (one bit per
//!   rule) and against the pod selectors of its namespace's policies, then rebuilds that pod's
//!   rule lists;
//! * a namespace relabel re-evaluates that namespace's pods against rules with namespace
//!   selectors;
//! * a policy upsert recompiles that policy only and rebuilds the rule lists of the pods it
//!   selected before or selects now.
//!
//! Policy updates validate first and change nothing when validation fails.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::NetworkPolicy;

use crate::bitset::BitSet;
use crate::classifier::{
    Block, Classifier, CompiledRule, Endpoint, Masked, NameId, NamedPort, PeerMatcher, PodId,
    PodInfo, PodMeta, PolicyId, PortEntry, PortMatcher, RuleId, RuleRef, Side, Verdict,
};
use crate::error::Error;
use crate::model::{
    Direction, IpBlock, Labels, NamespaceScope, Peer, Peers, Pod, PodKey, Policy, PolicyKey,
    PortMatch, Ports, Protocol, Rule, NAMESPACE_NAME_LABEL,
};

/// A namespace: its labels and its pods.
#[derive(Debug)]
struct NsEntry {
    /// Always includes `kubernetes.io/metadata.name`.
    labels: Labels,
    /// Whether the namespace was upserted (rather than only implied by its pods or policies).
    declared: bool,
    pods: BTreeSet<PodId>,
}

impl NsEntry {
    fn implied(name: &str) -> Self {
        NsEntry {
            labels: default_labels(name),
            declared: false,
            pods: BTreeSet::new(),
        }
    }
}

fn default_labels(name: &str) -> Labels {
    Labels::from([(NAMESPACE_NAME_LABEL.to_owned(), name.to_owned())])
}

/// A policy and what it compiled to.
#[derive(Debug)]
struct PolicyRecord {
    policy: Policy,
    /// Pods of the policy's namespace its pod selector matches.
    targets: BTreeSet<PodId>,
    /// Compiled rules, by direction (ingress, egress), in rule order.
    rules: [Vec<RuleId>; 2],
}

fn dir_index(d: Direction) -> usize {
    match d {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

/// The cluster as policy sees it, kept compiled.
#[derive(Debug, Default)]
pub struct Cluster {
    namespaces: BTreeMap<String, NsEntry>,
    pods: Vec<Option<Pod>>,
    /// Per pod: its named container ports, interned.
    pod_ports: Vec<Box<[NamedPort]>>,
    free_pods: Vec<PodId>,
    pod_ids: HashMap<PodKey, PodId>,
    pod_by_ip: HashMap<IpAddr, PodId>,
    policies: Vec<Option<PolicyRecord>>,
    free_policies: Vec<PolicyId>,
    policy_ids: BTreeMap<PolicyKey, PolicyId>,
    free_rules: Vec<RuleId>,
    port_names: HashMap<String, NameId>,
    classifier: Classifier,
}

impl Cluster {
    /// An empty cluster: no namespaces, pods or policies.
    pub fn new() -> Self {
        Self::default()
    }

    /// The compiled classifier, always in step with the state.
    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    /// Shorthand for [`Classifier::decide`].
    pub fn decide(&self, src: Endpoint, dst: Endpoint, protocol: Protocol, port: u16) -> Verdict {
        self.classifier.decide(src, dst, protocol, port)
    }

    /// The id of a pod.
    pub fn pod_id(&self, key: &PodKey) -> Option<PodId> {
        self.pod_ids.get(key).copied()
    }

    /// A pod by key.
    pub fn pod(&self, key: &PodKey) -> Option<&Pod> {
        self.pod_ids
            .get(key)
            .and_then(|id| self.pods.get(id.index()))
            .and_then(Option::as_ref)
    }

    /// The pod that has this IP (IPv4 or IPv6), if any.
    pub fn pod_by_ip(&self, ip: impl Into<IpAddr>) -> Option<PodId> {
        self.pod_by_ip.get(&ip.into()).copied()
    }

    /// The endpoint for an address: the pod that has it, or an external address.
    pub fn endpoint(&self, ip: impl Into<IpAddr>) -> Endpoint {
        let ip = ip.into();
        self.pod_by_ip(ip)
            .map_or(Endpoint::External(ip), Endpoint::Pod)
    }

    /// A policy by key.
    pub fn policy(&self, key: &PolicyKey) -> Option<&Policy> {
        let id = self.policy_ids.get(key)?;
        self.policies.get(id.index())?.as_ref().map(|r| &r.policy)
    }

    /// The id of a policy.
    pub fn policy_id(&self, key: &PolicyKey) -> Option<PolicyId> {
        self.policy_ids.get(key).copied()
    }

    /// The keys of all policies, in name order.
    pub fn policy_keys(&self) -> impl Iterator<Item = &PolicyKey> {
        self.policy_ids.keys()
    }

    /// The labels of a namespace (with `kubernetes.io/metadata.name` always present), if the
    /// namespace is known.
    pub fn namespace_labels(&self, name: &str) -> Option<&Labels> {
        self.namespaces.get(name).map(|n| &n.labels)
    }

    // ---- namespaces -----------------------------------------------------------------------

    /// Creates or relabels a namespace. `kubernetes.io/metadata.name` is set to the name, as
    /// the API server does. Pods of the namespace are re-evaluated against namespace selectors
    /// when the labels change.
    pub fn upsert_namespace(&mut self, name: &str, labels: Labels) {
        let mut labels = labels;
        labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.to_owned());
        let entry = self
            .namespaces
            .entry(name.to_owned())
            .or_insert_with(|| NsEntry::implied(name));
        entry.declared = true;
        if entry.labels != labels {
            entry.labels = labels;
            let pods: Vec<PodId> = entry.pods.iter().copied().collect();
            for id in pods {
                self.refresh_membership(id, true);
            }
        }
    }

    /// Forgets a namespace's labels. Its pods and policies stay until they are removed
    /// themselves (the API deletes them with their own events); meanwhile the namespace counts
    /// as existing with only its name label. Returns whether it was declared.
    pub fn remove_namespace(&mut self, name: &str) -> bool {
        let Some(entry) = self.namespaces.get_mut(name) else {
            return false;
        };
        let was_declared = entry.declared;
        if entry.pods.is_empty() {
            self.namespaces.remove(name);
        } else {
            entry.declared = false;
            let defaults = default_labels(name);
            if entry.labels != defaults {
                entry.labels = defaults;
                let pods: Vec<PodId> = entry.pods.iter().copied().collect();
                for id in pods {
                    self.refresh_membership(id, true);
                }
            }
        }
        was_declared
    }

    // ---- pods -----------------------------------------------------------------------------

    /// Adds a pod, or replaces the pod with the same key (labels, IP and ports may all change).
    pub fn upsert_pod(&mut self, pod: Pod) -> PodId {
        let id = match self.pod_ids.get(&pod.key) {
            Some(&id) => {
                if let Some(old) = self.pods.get(id.index()).and_then(Option::as_ref) {
                    for ip in old.addresses() {
                        if self.pod_by_ip.get(&ip) == Some(&id) {
                            self.pod_by_ip.remove(&ip);
                        }
                    }
                }
                id
            }
            None => {
                let id = self.free_pods.pop().unwrap_or_else(|| {
                    self.pods.push(None);
                    self.pod_ports.push(Box::new([]));
                    let c = &mut self.classifier;
                    c.ingress.push(Side::default());
                    c.egress.push(Side::default());
                    c.pod_info.push(PodInfo::default());
                    c.peer_pods.ensure(c.rules.len(), self.pods.len());
                    PodId::new(self.pods.len() - 1)
                });
                self.pod_ids.insert(pod.key.clone(), id);
                self.namespaces
                    .entry(pod.key.namespace.clone())
                    .or_insert_with(|| NsEntry::implied(&pod.key.namespace))
                    .pods
                    .insert(id);
                id
            }
        };
        for ip in pod.addresses() {
            self.pod_by_ip.insert(ip, id);
        }
        let named_ports: Box<[NamedPort]> = pod
            .ports
            .iter()
            .filter_map(|p| {
                let name = p.name.as_deref()?;
                Some(NamedPort {
                    name: intern(&mut self.port_names, name),
                    protocol: p.protocol,
                    port: p.port,
                })
            })
            .collect();
        let i = id.index();
        self.classifier.named_ports.set_pod(i, &named_ports);
        self.pod_ports[i] = named_ports;
        self.classifier.pod_info[i].meta = Some(PodMeta {
            key: pod.key.clone(),
            ip: pod.ip,
        });
        self.pods[i] = Some(pod);
        self.refresh_membership(id, false);
        self.refresh_targeting(id);
        id
    }

    /// Replaces a pod's labels.
    pub fn relabel_pod(&mut self, key: &PodKey, labels: Labels) -> Result<PodId, Error> {
        let mut pod = self
            .pod(key)
            .cloned()
            .ok_or_else(|| Error::UnknownPod(key.clone()))?;
        pod.labels = labels;
        Ok(self.upsert_pod(pod))
    }

    /// Removes a pod; its id may be reused by a later pod.
    pub fn remove_pod(&mut self, key: &PodKey) -> Option<PodId> {
        let id = self.pod_ids.remove(key)?;
        let i = id.index();
        let pod = self.pods.get_mut(i)?.take()?;
        for ip in pod.addresses() {
            if self.pod_by_ip.get(&ip) == Some(&id) {
                self.pod_by_ip.remove(&ip);
            }
        }
        let ns = &pod.key.namespace;
        if let Some(entry) = self.namespaces.get_mut(ns) {
            entry.pods.remove(&id);
            if entry.pods.is_empty() && !entry.declared {
                self.namespaces.remove(ns);
            }
        }
        self.classifier.peer_pods.clear_pod(i);
        let ids: Vec<PolicyId> = self.namespace_policies(ns).collect();
        for pid in ids {
            if let Some(Some(rec)) = self.policies.get_mut(pid.index()) {
                rec.targets.remove(&id);
            }
        }
        self.classifier.ingress[i] = Side::default();
        self.classifier.egress[i] = Side::default();
        self.classifier.named_ports.set_pod(i, &[]);
        self.pod_ports[i] = Box::new([]);
        self.classifier.pod_info[i] = PodInfo::default();
        self.free_pods.push(id);
        Some(id)
    }

    // ---- policies -------------------------------------------------------------------------

    /// Validates and installs one policy (new, or replacing the one with the same key). On
    /// error nothing changes.
    pub fn upsert_policy(&mut self, np: &NetworkPolicy) -> Result<PolicyId, Error> {
        let policy = Policy::from_k8s(np)?;
        Ok(self.upsert_validated_policy(policy))
    }

    /// Validates a whole policy set and makes it the installed set (removing policies not in
    /// it). On any error (invalid policy, duplicate key) nothing changes.
    pub fn replace_policies(&mut self, set: &[NetworkPolicy]) -> Result<(), Error> {
        let mut policies = Vec::with_capacity(set.len());
        let mut keys = BTreeSet::new();
        for np in set {
            let p = Policy::from_k8s(np)?;
            if !keys.insert(p.key.clone()) {
                return Err(Error::DuplicatePolicy(p.key));
            }
            policies.push(p);
        }
        let stale: Vec<PolicyKey> = self
            .policy_ids
            .keys()
            .filter(|k| !keys.contains(*k))
            .cloned()
            .collect();
        for k in &stale {
            self.remove_policy(k);
        }
        for p in policies {
            self.upsert_validated_policy(p);
        }
        Ok(())
    }

    /// Installs an already validated policy.
    pub fn upsert_validated_policy(&mut self, policy: Policy) -> PolicyId {
        let (pid, old_targets) = match self.policy_ids.get(&policy.key) {
            Some(&pid) => {
                let old = self.policies.get_mut(pid.index()).and_then(Option::take);
                let targets = old
                    .map(|rec| self.free_policy_rules(rec))
                    .unwrap_or_default();
                (pid, targets)
            }
            None => {
                let pid = self.free_policies.pop().unwrap_or_else(|| {
                    self.policies.push(None);
                    self.classifier.policies.push(None);
                    PolicyId::new(self.policies.len() - 1)
                });
                self.policy_ids.insert(policy.key.clone(), pid);
                (pid, BTreeSet::new())
            }
        };
        let ns = policy.key.namespace.clone();
        let mut rules: [Vec<RuleId>; 2] = Default::default();
        for d in Direction::ALL {
            for (i, rule) in policy.rules(d).into_iter().flatten().enumerate() {
                let origin = RuleRef {
                    policy: pid,
                    direction: d,
                    index: u32::try_from(i).unwrap_or(u32::MAX),
                };
                let (compiled, peers) = self.compile_rule(&ns, rule, origin);
                rules[dir_index(d)].push(self.alloc_rule(compiled, &peers));
            }
        }
        let targets: BTreeSet<PodId> = self
            .namespaces
            .get(&ns)
            .into_iter()
            .flat_map(|e| e.pods.iter().copied())
            .filter(|id| {
                self.pods
                    .get(id.index())
                    .and_then(Option::as_ref)
                    .is_some_and(|p| policy.pod_selector.matches(&p.labels))
            })
            .collect();
        self.classifier.policies[pid.index()] = Some(policy.key.clone());
        let affected: BTreeSet<PodId> = old_targets.union(&targets).copied().collect();
        self.policies[pid.index()] = Some(PolicyRecord {
            policy,
            targets,
            rules,
        });
        for id in affected {
            self.rebuild_sides(id);
        }
        pid
    }

    /// Removes a policy; returns whether it existed.
    pub fn remove_policy(&mut self, key: &PolicyKey) -> bool {
        let Some(pid) = self.policy_ids.remove(key) else {
            return false;
        };
        let Some(rec) = self.policies.get_mut(pid.index()).and_then(Option::take) else {
            return false;
        };
        let targets = self.free_policy_rules(rec);
        self.classifier.policies[pid.index()] = None;
        self.free_policies.push(pid);
        for id in targets {
            self.rebuild_sides(id);
        }
        true
    }

    // ---- internals ------------------------------------------------------------------------

    fn free_policy_rules(&mut self, rec: PolicyRecord) -> BTreeSet<PodId> {
        for rid in rec.rules.iter().flatten() {
            if let Some(rule) = self.classifier.rules.get_mut(rid.index()) {
                *rule = CompiledRule::inert(rule.origin);
            }
            self.classifier
                .peer_pods
                .load(rid.index(), &BitSet::default());
            self.free_rules.push(*rid);
        }
        rec.targets
    }

    fn alloc_rule(&mut self, rule: CompiledRule, peers: &BitSet) -> RuleId {
        let c = &mut self.classifier;
        let rid = match self.free_rules.pop() {
            Some(rid) => {
                c.rules[rid.index()] = rule;
                rid
            }
            None => {
                c.rules.push(rule);
                c.peer_pods.ensure(c.rules.len(), self.pods.len());
                RuleId::new(c.rules.len() - 1)
            }
        };
        c.peer_pods.load(rid.index(), peers);
        rid
    }

    /// Ids of the policies in a namespace, in name order.
    fn namespace_policies<'a>(&'a self, ns: &'a str) -> impl Iterator<Item = PolicyId> + 'a {
        self.policy_ids
            .range(PolicyKey::new(ns, "")..)
            .take_while(move |(k, _)| k.namespace == ns)
            .map(|(_, &id)| id)
    }

    /// Compiles a rule; its pod peers come back as a bitset for the arena.
    fn compile_rule(
        &mut self,
        policy_ns: &str,
        rule: &Rule,
        origin: RuleRef,
    ) -> (CompiledRule, BitSet) {
        let mut pods = BitSet::default();
        let peers = match &rule.peers {
            Peers::All => PeerMatcher::Any,
            Peers::Only(list) => {
                let mut blocks = Vec::new();
                for peer in list {
                    match peer {
                        Peer::Pods {
                            namespaces: NamespaceScope::PolicyNamespace,
                            pods: sel,
                        } => {
                            if let Some(ns) = self.namespaces.get(policy_ns) {
                                self.add_matching(&mut pods, &ns.pods, |p| sel.matches(&p.labels));
                            }
                        }
                        Peer::Pods {
                            namespaces: NamespaceScope::Matching(ns_sel),
                            pods: sel,
                        } => {
                            for ns in self
                                .namespaces
                                .values()
                                .filter(|n| ns_sel.matches(&n.labels))
                            {
                                self.add_matching(&mut pods, &ns.pods, |p| sel.matches(&p.labels));
                            }
                        }
                        Peer::IpBlock(b) => {
                            for (i, p) in self.pods.iter().enumerate() {
                                if p.as_ref()
                                    .is_some_and(|p| p.addresses().any(|ip| b.contains(ip)))
                                {
                                    pods.insert(i);
                                }
                            }
                            blocks.push(compile_block(b));
                        }
                    }
                }
                PeerMatcher::Some {
                    blocks: blocks.into(),
                }
            }
        };
        let ports = match &rule.ports {
            Ports::All => PortMatcher::Any,
            Ports::Only(list) => PortMatcher::Some(
                list.iter()
                    .map(|spec| match &spec.port {
                        PortMatch::Any => PortEntry::Protocol(spec.protocol),
                        PortMatch::Range(r) => PortEntry::Range {
                            protocol: spec.protocol,
                            start: r.start(),
                            end: r.end(),
                        },
                        PortMatch::Named(n) => {
                            let name = intern(&mut self.port_names, n.as_str());
                            self.classifier.named_ports.track(name, &self.pod_ports);
                            PortEntry::Named {
                                protocol: spec.protocol,
                                name,
                            }
                        }
                    })
                    .collect(),
            ),
        };
        (
            CompiledRule {
                origin,
                peers,
                ports,
            },
            pods,
        )
    }

    fn add_matching(&self, set: &mut BitSet, ids: &BTreeSet<PodId>, pred: impl Fn(&Pod) -> bool) {
        for id in ids {
            if self
                .pods
                .get(id.index())
                .and_then(Option::as_ref)
                .is_some_and(&pred)
            {
                set.insert(id.index());
            }
        }
    }

    /// Re-evaluates one pod against every rule's peers (or only those with namespace
    /// selectors) and updates its bit in each rule.
    fn refresh_membership(&mut self, id: PodId, only_namespace_selectors: bool) {
        let Some(pod) = self.pods.get(id.index()).and_then(Option::as_ref) else {
            return;
        };
        let ns_labels = self.namespaces.get(&pod.key.namespace).map(|n| &n.labels);
        let empty = Labels::new();
        let ns_labels = ns_labels.unwrap_or(&empty);
        for rec in self.policies.iter().flatten() {
            let policy_ns = rec.policy.key.namespace.as_str();
            for d in Direction::ALL {
                let Some(rules) = rec.policy.rules(d) else {
                    continue;
                };
                for (rule, rid) in rules.iter().zip(&rec.rules[dir_index(d)]) {
                    let Peers::Only(peers) = &rule.peers else {
                        continue;
                    };
                    if only_namespace_selectors
                        && !peers.iter().any(|p| {
                            matches!(
                                p,
                                Peer::Pods {
                                    namespaces: NamespaceScope::Matching(_),
                                    ..
                                }
                            )
                        })
                    {
                        continue;
                    }
                    let member = peers
                        .iter()
                        .any(|p| peer_matches_pod(p, policy_ns, pod, ns_labels));
                    self.classifier
                        .peer_pods
                        .set(rid.index(), id.index(), member);
                }
            }
        }
    }

    /// Re-evaluates which policies of its namespace select a pod, then rebuilds its sides.
    fn refresh_targeting(&mut self, id: PodId) {
        let Some(pod) = self.pods.get(id.index()).and_then(Option::as_ref) else {
            return;
        };
        let ns = pod.key.namespace.as_str();
        for (_, pid) in self
            .policy_ids
            .range(PolicyKey::new(ns, "")..)
            .take_while(|(k, _)| k.namespace == ns)
        {
            if let Some(Some(rec)) = self.policies.get_mut(pid.index()) {
                if rec.policy.pod_selector.matches(&pod.labels) {
                    rec.targets.insert(id);
                } else {
                    rec.targets.remove(&id);
                }
            }
        }
        self.rebuild_sides(id);
    }

    /// Rebuilds a pod's per-direction rule lists from the policies that target it.
    fn rebuild_sides(&mut self, id: PodId) {
        let i = id.index();
        let Some(pod) = self.pods.get(i).and_then(Option::as_ref) else {
            return;
        };
        let ns = pod.key.namespace.as_str();
        let c = &mut self.classifier;
        let (Some(info), Some(own_ports)) = (c.pod_info.get_mut(i), self.pod_ports.get(i)) else {
            return;
        };
        let mut entries: [Vec<_>; 2] = Default::default();
        for by in &mut info.isolated_by {
            by.clear();
        }
        for (_, pid) in self
            .policy_ids
            .range(PolicyKey::new(ns, "")..)
            .take_while(|(k, _)| k.namespace == ns)
        {
            let Some(Some(rec)) = self.policies.get(pid.index()) else {
                continue;
            };
            if !rec.targets.contains(&id) {
                continue;
            }
            for d in Direction::ALL {
                if rec.policy.rules(d).is_none() {
                    continue;
                }
                let di = dir_index(d);
                info.isolated_by[di].push(*pid);
                let own = (d == Direction::Ingress).then_some(&**own_ports);
                for rid in &rec.rules[di] {
                    if let Some(rule) = c.rules.get(rid.index()) {
                        rule.expand(*rid, own, &mut entries[di]);
                    }
                }
            }
        }
        let ingress = Side::new(!info.isolated_by[0].is_empty(), &entries[0]);
        let egress = Side::new(!info.isolated_by[1].is_empty(), &entries[1]);
        c.ingress[i] = ingress;
        c.egress[i] = egress;
    }

    /// Pods a policy's rule peers currently hold (diagnostics for tests).
    #[cfg(test)]
    fn rule_peer_count(&self, key: &PolicyKey, d: Direction, i: usize) -> Option<usize> {
        let pid = self.policy_ids.get(key)?;
        let rec = self.policies.get(pid.index())?.as_ref()?;
        self.classifier
            .rule_peer_pods(*rec.rules[dir_index(d)].get(i)?)
    }
}

fn intern(names: &mut HashMap<String, NameId>, name: &str) -> NameId {
    if let Some(&id) = names.get(name) {
        return id;
    }
    let id = NameId(u32::try_from(names.len()).unwrap_or(u32::MAX));
    names.insert(name.to_owned(), id);
    id
}

fn peer_matches_pod(peer: &Peer, policy_ns: &str, pod: &Pod, pod_ns_labels: &Labels) -> bool {
    match peer {
        Peer::Pods { namespaces, pods } => {
            let ns_ok = match namespaces {
                NamespaceScope::PolicyNamespace => pod.key.namespace == policy_ns,
                NamespaceScope::Matching(sel) => sel.matches(pod_ns_labels),
            };
            ns_ok && pods.matches(&pod.labels)
        }
        Peer::IpBlock(b) => pod.addresses().any(|ip| b.contains(ip)),
    }
}

/// A block as masks of its family: an IPv4 address never matches an IPv6 block, nor the
/// other way round (excepts always share their CIDR's family, validation sees to it).
fn compile_block(b: &IpBlock) -> Block {
    match b.cidr() {
        IpNet::V4(n) => Block::V4(Masked {
            net: u32::from(n.network()),
            mask: u32::from(n.netmask()),
            except: b
                .except()
                .iter()
                .filter_map(|e| match e {
                    IpNet::V4(e) => Some((u32::from(e.network()), u32::from(e.netmask()))),
                    IpNet::V6(_) => None,
                })
                .collect(),
        }),
        IpNet::V6(n) => Block::V6(Masked {
            net: u128::from(n.network()),
            mask: u128::from(n.netmask()),
            except: b
                .except()
                .iter()
                .filter_map(|e| match e {
                    IpNet::V6(e) => Some((u128::from(e.network()), u128::from(e.netmask()))),
                    IpNet::V4(_) => None,
                })
                .collect(),
        }),
    }
}

#[cfg(test)]
mod tests;
