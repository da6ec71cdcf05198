//! The cluster's policy view: NetworkPolicy manifests as operators write them (multi-document
//! YAML), and the [`policy::Cluster`] built from the pods, namespaces and policies of an
//! [`ObjectSource`] (etcd's prefix, or the Kubernetes API), kept in step by following it.
//!
//! The parts: [`Objects`] mirrors what the source holds and turns each stored object into
//! [`Changes`] to the cluster (pure); [`Publisher`] makes the next [`Snapshot`] by applying
//! changes to a spare cluster rather than rebuilding one (pure); [`Follower`] is the shell
//! that lists, watches, batches and publishes; [`Enforced`] says up to which revision of the
//! source the node enforces what it holds; [`Handle`] is what the local API asks.
//!
//! A pod record is believed only for addresses of its own node ([`Owners`], from the leases):
//! a record (forged, or stale) claiming an address another node's lease covers is held out
//! of the view, with a warning naming its key, so it cannot lend its labels to that node's
//! pod.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fabric_cni::api::{PolicyStatus, PortProtocol};
use ipam::objects::{Kind, StoredObject};
use ipam::{
    Leases, NamespaceRecord, ObjectFeed, ObjectSource, ObjectUpdate, PodRecord, ProgressHandle,
    Store, StoreError,
};
use ipnet::{Ipv4Net, Ipv6Net};
use policy::{
    Cluster, ContainerPort, Labels, NetworkPolicy, Pod, PodKey, Policy, PolicyKey, Protocol,
};
use serde::Deserialize;
use tokio::sync::{watch, Notify};

use crate::enforce::View;
use crate::health::Beat;

/// Parses a manifest file: one or more YAML documents, each a NetworkPolicy (empty documents
/// are skipped). Every policy is validated; any error refuses the whole file, naming the
/// document, the field path and the reason.
pub fn parse_manifests(text: &str) -> Result<Vec<NetworkPolicy>> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc)
            .with_context(|| format!("document {}: not YAML", i + 1))?;
        if value.is_null() {
            continue;
        }
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("NetworkPolicy");
        if kind != "NetworkPolicy" {
            bail!("document {}: kind {kind:?} is not a NetworkPolicy", i + 1);
        }
        let mut np: NetworkPolicy = serde_yaml::from_value(value)
            .with_context(|| format!("document {}: not a NetworkPolicy", i + 1))?;
        // Like kubectl: no namespace means the default one.
        np.metadata
            .namespace
            .get_or_insert_with(|| "default".into());
        Policy::from_k8s(&np).with_context(|| format!("document {}", i + 1))?;
        out.push(np);
    }
    if out.is_empty() {
        bail!("no NetworkPolicy in the file");
    }
    Ok(out)
}

/// `namespace/name` of a policy from [`parse_manifests`].
pub fn policy_name(np: &NetworkPolicy) -> Result<String> {
    let name = np
        .metadata
        .name
        .as_deref()
        .context("metadata.name is required")?;
    let ns = np.metadata.namespace.as_deref().unwrap_or("default");
    Ok(format!("{ns}/{name}"))
}

/// Builds the policy view from the datastore, once (for `fabricctl policy explain`), with
/// pod records checked against the leases as fabricd does (against every lease when the
/// addressing is not known: a Kubernetes-mode fabricctl has no net-conf.json).
pub async fn load(
    source: &dyn ObjectSource,
    store: &dyn Store,
    addressing: Option<&Addressing>,
) -> Result<Cluster> {
    let (revision, objects) = source.list_objects().await?;
    let leases: BTreeMap<Ipv4Net, ipam::Lease> = store
        .list_leases()
        .await?
        .into_iter()
        .map(|l| (l.subnet, l))
        .collect();
    let mut objects = Objects::listed(revision, objects);
    objects.set_owners(
        Owners::of(&Arc::new(leases), addressing),
        &mut Changes::default(),
    );
    Ok(objects.build())
}

/// How the cluster hands out pod addresses, which the leases that [`Owners`] believe must
/// fit: subnets of the cluster's networks and, where the datastore leases subnets of one size
/// (etcd's `SubnetLen`), of that size. (Leases that do not fit are refused for routing too.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addressing {
    /// The cluster's networks (`Network`, `IPv6Network`).
    pub networks: crate::pods::Subnets,
    /// `SubnetLen`, where every lease has it (etcd); `None` in Kubernetes mode (podCIDRs).
    pub subnet_len: Option<u8>,
}

impl Addressing {
    /// The addressing of `config`; `by_subnet_len` where the datastore leases `SubnetLen`
    /// subnets (etcd).
    pub fn of(config: &ipam::NetworkConfig, by_subnet_len: bool) -> Self {
        Self {
            networks: crate::pods::Subnets {
                v4: config.network,
                v6: config.ipv6.map(|v6| v6.network),
            },
            subnet_len: by_subnet_len.then_some(config.subnet_len),
        }
    }
}

/// Which node each leased subnet belongs to: a pod record is believed for its addresses only
/// if no other node's lease covers them (and, where its own node holds a lease, that lease
/// does). A node with no lease in sight yet (just started; its lease not seen yet) is given
/// the benefit of the doubt for addresses no lease covers: no other node's pod can hold those.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owners {
    v4: BTreeMap<Ipv4Net, String>,
    v6: BTreeMap<Ipv6Net, String>,
}

impl Owners {
    /// The owners the leases say, of the leases that fit `addressing` (every lease, without
    /// one).
    pub fn of(leases: &Leases, addressing: Option<&Addressing>) -> Self {
        let mut owners = Self::default();
        for lease in leases.values() {
            let fits = addressing.is_none_or(|a| {
                a.networks.v4.contains(&lease.subnet)
                    && a.subnet_len
                        .is_none_or(|len| lease.subnet.prefix_len() == len)
            });
            if !fits {
                continue;
            }
            owners.v4.insert(lease.subnet, lease.node.clone());
            let v6 = lease.ipv6_subnet.filter(|s| {
                addressing.is_none_or(|a| a.networks.v6.is_some_and(|n| n.contains(s)))
            });
            if let Some(v6) = v6 {
                owners.v6.insert(v6, lease.node.clone());
            }
        }
        owners
    }

    /// Why the record of `node` claiming `ip` (and `ipv6`) is not believed, if it is not.
    fn refusal(&self, node: &str, ip: Ipv4Addr, ipv6: Option<Ipv6Addr>) -> Option<String> {
        fn judge<N: Copy + std::fmt::Display, A: std::fmt::Display>(
            owners: &BTreeMap<N, String>,
            node: &str,
            ip: A,
            covers: impl Fn(&N) -> bool,
        ) -> Option<String> {
            if let Some((subnet, owner)) = owners.iter().find(|(s, _)| covers(s)) {
                return (owner != node).then(|| format!("{ip} is in {subnet}, leased by {owner}"));
            }
            let own: Vec<String> = owners
                .iter()
                .filter(|(_, owner)| *owner == node)
                .map(|(s, _)| s.to_string())
                .collect();
            (!own.is_empty()).then(|| format!("{ip} is outside {node}'s lease {}", own.join(", ")))
        }
        judge(&self.v4, node, ip, |s: &Ipv4Net| s.contains(&ip)).or_else(|| {
            let ipv6 = ipv6?;
            judge(&self.v6, node, ipv6, |s: &Ipv6Net| s.contains(&ipv6))
        })
    }
}

/// How long the follower waits for more events after one arrived before it publishes: events
/// that arrive together (one `fabricctl policy apply` of many policies) make one new view.
pub const DEBOUNCE: Duration = Duration::from_millis(20);

/// The longest a batch of events is held back while events keep arriving.
pub const MAX_BATCH: Duration = Duration::from_millis(500);

/// How long the follower waits for something to happen before it comes round anyway (to beat
/// its heartbeat: a quiet datastore, or one out of reach, is no stuck follower).
pub const FOLLOWER_WAKE: Duration = Duration::from_secs(5);

/// Records stored under their datastore names, each naming a logical object (a pod, a policy);
/// when several records name the same object (a stale record beside its successor), the
/// newest write counts.
#[derive(Debug)]
struct Aliased<K, V> {
    records: BTreeMap<String, (K, V, i64)>,
    by_key: BTreeMap<K, BTreeSet<(i64, String)>>,
}

impl<K, V> Default for Aliased<K, V> {
    fn default() -> Self {
        Self {
            records: BTreeMap::new(),
            by_key: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone, V: Clone + PartialEq> Aliased<K, V> {
    /// The value object `key` has: that of its newest record.
    fn effective(&self, key: &K) -> Option<&V> {
        let (_, name) = self.by_key.get(key)?.last()?;
        self.records.get(name).map(|(_, v, _)| v)
    }

    /// Every object with its value, in key order.
    fn objects(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        self.by_key
            .keys()
            .filter_map(|k| Some((k, self.effective(k)?)))
    }

    /// How many objects there are.
    fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Sets record `name` (written at `revision`) to `record`, or removes it; every object
    /// whose value changed goes into `out` with its new value (`None`: gone).
    fn set(
        &mut self,
        name: &str,
        record: Option<(K, V)>,
        revision: i64,
        out: &mut BTreeMap<K, Option<V>>,
    ) {
        let mut affected: Vec<K> = Vec::with_capacity(2);
        affected.extend(self.records.get(name).map(|(k, _, _)| k.clone()));
        if let Some((k, _)) = &record {
            if !affected.contains(k) {
                affected.push(k.clone());
            }
        }
        let before: Vec<Option<V>> = affected
            .iter()
            .map(|k| self.effective(k).cloned())
            .collect();
        if let Some((k, _, rev)) = self.records.remove(name) {
            if let Some(names) = self.by_key.get_mut(&k) {
                names.remove(&(rev, name.to_owned()));
                if names.is_empty() {
                    self.by_key.remove(&k);
                }
            }
        }
        if let Some((k, v)) = record {
            self.by_key
                .entry(k.clone())
                .or_default()
                .insert((revision, name.to_owned()));
            self.records.insert(name.to_owned(), (k, v, revision));
        }
        for (k, before) in affected.into_iter().zip(before) {
            let after = self.effective(&k).cloned();
            if after != before {
                out.insert(k, after);
            }
        }
    }
}

/// What changed in the view: per object its new state (`None`: removed), later changes
/// replacing earlier ones.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Changes {
    namespaces: BTreeMap<String, Option<Labels>>,
    pods: BTreeMap<PodKey, Option<Pod>>,
    policies: BTreeMap<PolicyKey, Option<Policy>>,
}

impl Changes {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many objects changed.
    pub fn len(&self) -> usize {
        self.namespaces.len() + self.pods.len() + self.policies.len()
    }

    /// Applies the changes to `cluster` through its incremental updates.
    pub fn apply(&self, cluster: &mut Cluster) {
        for (name, labels) in &self.namespaces {
            match labels {
                Some(labels) => cluster.upsert_namespace(name, labels.clone()),
                None => {
                    cluster.remove_namespace(name);
                }
            }
        }
        for (key, pod) in &self.pods {
            match pod {
                Some(pod) => {
                    cluster.upsert_pod(pod.clone());
                }
                None => {
                    cluster.remove_pod(key);
                }
            }
        }
        for (key, policy) in &self.policies {
            match policy {
                Some(policy) => {
                    cluster.upsert_validated_policy(policy.clone());
                }
                None => {
                    cluster.remove_policy(key);
                }
            }
        }
    }
}

/// The policy objects as the source holds them, decoded, and the source revision they reflect.
/// Unreadable records are skipped with a warning (an invalid policy is left out, it does not
/// take the view down).
#[derive(Debug, Default)]
pub struct Objects {
    revision: i64,
    namespaces: Aliased<String, Labels>,
    pods: Aliased<PodKey, Pod>,
    policies: Aliased<PolicyKey, Policy>,
    /// Who holds which subnet, once known ([`Self::set_owners`]); until then every pod
    /// record is believed.
    owners: Option<Owners>,
    /// Pod records not believed, by record name: the pod, the node the record names, the
    /// revision it was written at.
    held_out: BTreeMap<String, (Pod, String, i64)>,
}

/// The node a pod record is stored under (`<node>/...`).
fn record_node(name: &str) -> &str {
    name.split('/').next().unwrap_or_default()
}

/// The pod policy sees in a pod record.
fn pod_of(record: PodRecord) -> Pod {
    Pod {
        key: PodKey::new(record.namespace, record.name),
        labels: record.labels,
        ip: record.ip,
        ipv6: record.ipv6,
        ports: record
            .ports
            .into_iter()
            .map(|p| ContainerPort {
                name: p.name,
                port: p.container_port,
                protocol: match p.protocol {
                    PortProtocol::Tcp => Protocol::Tcp,
                    PortProtocol::Udp => Protocol::Udp,
                    PortProtocol::Sctp => Protocol::Sctp,
                },
            })
            .collect(),
    }
}

impl Objects {
    /// The objects of a listing read at `revision`.
    pub fn listed(revision: i64, objects: impl IntoIterator<Item = StoredObject>) -> Self {
        let mut out = Self::default();
        let mut ignored = Changes::default();
        for object in objects {
            out.apply(object, &mut ignored);
        }
        out.revision = revision;
        out
    }

    /// The source revision the objects reflect.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Notes that nothing changed up to `revision`.
    pub fn advance(&mut self, revision: i64) {
        self.revision = self.revision.max(revision);
    }

    /// Applies one stored object (as written or deleted), noting in `changes` what that
    /// changes in the view. Does not move the revision (see [`Self::advance`]).
    pub fn apply(&mut self, object: StoredObject, changes: &mut Changes) {
        let StoredObject {
            kind,
            name,
            value,
            mod_revision,
        } = object;
        match kind {
            Kind::Namespaces => {
                let labels = value.map(|v| match serde_json::from_slice::<NamespaceRecord>(&v) {
                    Ok(record) => record.labels,
                    Err(e) => {
                        tracing::warn!(namespace = %name, error = %e, "unreadable namespace record; taking it as unlabeled");
                        Labels::new()
                    }
                });
                let record = labels.map(|l| (name.clone(), l));
                self.namespaces
                    .set(&name, record, mod_revision, &mut changes.namespaces);
            }
            Kind::Pods => {
                let record = value.and_then(|v| match serde_json::from_slice::<PodRecord>(&v) {
                    Ok(record) => Some(record),
                    Err(e) => {
                        tracing::warn!(key = %name, error = %e, "skipping an unreadable pod record");
                        None
                    }
                });
                let Some(record) = record else {
                    self.held_out.remove(&name);
                    self.pods.set(&name, None, mod_revision, &mut changes.pods);
                    return;
                };
                let node = record_node(&name).to_owned();
                let recorded = record.node.clone();
                let misnamed = (recorded != node)
                    .then(|| format!("it names node {recorded} but is stored under {node}"));
                let pod = pod_of(record);
                match misnamed.or_else(|| self.refusal(&node, &pod)) {
                    None => {
                        self.held_out.remove(&name);
                        let record = Some((pod.key.clone(), pod));
                        self.pods
                            .set(&name, record, mod_revision, &mut changes.pods);
                    }
                    Some(reason) => {
                        self.hold_out(&name, reason, (pod, recorded, mod_revision));
                        self.pods.set(&name, None, mod_revision, &mut changes.pods);
                    }
                }
            }
            Kind::Policies => {
                // Fail closed: a policy that cannot be read or fails validation still
                // isolates what it would have, allowing nothing.
                let record = value.and_then(|v| {
                    let policy = match serde_json::from_slice::<NetworkPolicy>(&v) {
                        Ok(np) => Policy::from_k8s(&np).or_else(|e| {
                            tracing::warn!(key = %name, error = %e, "invalid policy: isolating the pods it selects, allowing nothing");
                            Policy::fail_closed(&np, &name).ok_or(())
                        }),
                        Err(e) => {
                            tracing::warn!(key = %name, error = %e, "unreadable policy: isolating its namespace's pods, allowing nothing");
                            Policy::unreadable(&name).ok_or(())
                        }
                    };
                    policy.ok().map(|p| (p.key.clone(), p))
                });
                self.policies
                    .set(&name, record, mod_revision, &mut changes.policies);
            }
        }
    }

    /// Why a record of `node` claiming `pod`'s addresses is not believed, if it is not.
    fn refusal(&self, node: &str, pod: &Pod) -> Option<String> {
        self.owners.as_ref()?.refusal(node, pod.ip, pod.ipv6)
    }

    /// Holds record `name` out of the view, warning the first time (a record already held
    /// out that is written again is not warned about again).
    fn hold_out(&mut self, name: &str, reason: String, held: (Pod, String, i64)) {
        if !self.held_out.contains_key(name) {
            tracing::warn!(key = %name, pod = %held.0.key, ip = %held.0.ip, %reason, "ignoring a pod record: its address is not its node's");
        }
        self.held_out.insert(name.to_owned(), held);
    }

    /// Takes who holds which subnet from the leases, and judges every pod record again:
    /// records no longer believed leave the view, records believed now join it (noted in
    /// `changes`).
    pub fn set_owners(&mut self, owners: Owners, changes: &mut Changes) {
        if self.owners.as_ref() == Some(&owners) {
            return;
        }
        self.owners = Some(owners);
        let believed: Vec<(String, Pod, i64)> = self
            .pods
            .records
            .iter()
            .map(|(name, (_, pod, rev))| (name.clone(), pod.clone(), *rev))
            .collect();
        for (name, pod, rev) in believed {
            let node = record_node(&name).to_owned();
            if let Some(reason) = self.refusal(&node, &pod) {
                self.hold_out(&name, reason, (pod, node, rev));
                self.pods.set(&name, None, rev, &mut changes.pods);
            }
        }
        let held: Vec<(String, (Pod, String, i64))> =
            std::mem::take(&mut self.held_out).into_iter().collect();
        for (name, (pod, recorded, rev)) in held {
            let node = record_node(&name);
            if recorded != node || self.refusal(node, &pod).is_some() {
                self.held_out.insert(name, (pod, recorded, rev));
                continue;
            }
            tracing::info!(key = %name, pod = %pod.key, ip = %pod.ip, "a pod record held out is believed now: its address is its node's");
            let record = Some((pod.key.clone(), pod));
            self.pods.set(&name, record, rev, &mut changes.pods);
        }
    }

    /// Replaces everything with a fresh listing read at `revision` (after the watch broke),
    /// noting in `changes` what differs from before.
    pub fn relist(&mut self, revision: i64, objects: Vec<StoredObject>, changes: &mut Changes) {
        let listed: BTreeSet<(Kind, &str)> =
            objects.iter().map(|o| (o.kind, o.name.as_str())).collect();
        let gone = |kind: Kind, names: Vec<String>| {
            names
                .into_iter()
                .filter(|n| !listed.contains(&(kind, n.as_str())))
                .map(move |name| StoredObject {
                    kind,
                    name,
                    value: None,
                    mod_revision: revision,
                })
                .collect::<Vec<_>>()
        };
        let mut removed = gone(
            Kind::Namespaces,
            self.namespaces.records.keys().cloned().collect(),
        );
        removed.extend(gone(
            Kind::Pods,
            self.pods
                .records
                .keys()
                .chain(self.held_out.keys())
                .cloned()
                .collect(),
        ));
        removed.extend(gone(
            Kind::Policies,
            self.policies.records.keys().cloned().collect(),
        ));
        for object in removed.into_iter().chain(objects) {
            self.apply(object, changes);
        }
        self.advance(revision);
    }

    /// The pods registered by `node` (their records are stored under `<node>/`), as the view
    /// has them.
    pub fn pods_on<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Pod> + 'a {
        let prefix = format!("{node}/");
        let keys: BTreeSet<&PodKey> = self
            .pods
            .records
            .iter()
            .filter(|(name, _)| name.starts_with(&prefix))
            .map(|(_, (key, _, _))| key)
            .collect();
        keys.into_iter().filter_map(|k| self.pods.effective(k))
    }

    /// The whole view, built from scratch.
    pub fn build(&self) -> Cluster {
        let mut cluster = Cluster::new();
        for (name, labels) in self.namespaces.objects() {
            cluster.upsert_namespace(name, labels.clone());
        }
        for (_, pod) in self.pods.objects() {
            cluster.upsert_pod(pod.clone());
        }
        for (_, policy) in self.policies.objects() {
            cluster.upsert_validated_policy(policy.clone());
        }
        cluster
    }

    /// What the view holds: (policies, pods, namespaces); namespaces are the labeled ones and
    /// those of pods.
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut namespaces: BTreeSet<&str> =
            self.namespaces.by_key.keys().map(String::as_str).collect();
        namespaces.extend(self.pods.by_key.keys().map(|k| k.namespace.as_str()));
        (self.policies.len(), self.pods.len(), namespaces.len())
    }
}

/// One published policy view: the compiled cluster and what it holds. It derefs to the
/// [`Cluster`] the packet path judges with.
#[derive(Debug)]
pub struct Snapshot {
    cluster: Cluster,
    policies: usize,
    pods: usize,
    namespaces: usize,
}

impl Snapshot {
    /// `cluster`, as built from `objects`.
    pub fn new(cluster: Cluster, objects: &Objects) -> Self {
        let (policies, pods, namespaces) = objects.counts();
        Self {
            cluster,
            policies,
            pods,
            namespaces,
        }
    }

    /// The view's state as the local API reports it, enforced up to `revision`.
    pub fn status(&self, revision: i64) -> PolicyStatus {
        PolicyStatus {
            enforcing: true,
            revision,
            policies: self.policies,
            pods: self.pods,
            namespaces: self.namespaces,
            queue_rules: None,
        }
    }
}

/// The source revision up to which the node enforces what the datastore holds on new
/// connections: every change to pods, namespaces and policies up to it is in the published
/// view, and the queue rules for the isolated local pods are installed. (Existing connections are judged again
/// right after, and cut if no longer allowed.) It only goes up. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct Enforced(Arc<Reached>);

#[derive(Debug)]
struct Reached {
    revision: watch::Sender<i64>,
    /// Told each time someone starts to wait.
    waiter: Notify,
}

impl Default for Reached {
    /// Nothing enforced yet.
    fn default() -> Self {
        Self {
            revision: watch::channel(0).0,
            waiter: Notify::new(),
        }
    }
}

impl Enforced {
    /// The revision reached.
    pub fn revision(&self) -> i64 {
        *self.0.revision.borrow()
    }

    /// Notes that `revision` is reached (a lower one changes nothing).
    pub fn raise(&self, revision: i64) {
        self.0.revision.send_if_modified(|reached| {
            let higher = revision > *reached;
            if higher {
                *reached = revision;
            }
            higher
        });
    }

    /// Whether someone waits in [`Self::reached`].
    pub fn awaited(&self) -> bool {
        self.0.revision.receiver_count() > 0
    }

    /// Completes once someone starts to wait in [`Self::reached`] (at once if someone did
    /// since the last time this completed).
    pub async fn waiter(&self) {
        self.0.waiter.notified().await
    }

    /// Waits until `revision` is reached; false if `timeout` passes first.
    pub async fn reached(&self, revision: i64, timeout: Duration) -> bool {
        let mut rx = self.0.revision.subscribe();
        self.0.waiter.notify_one();
        let reached =
            tokio::time::timeout(timeout, rx.wait_for(|reached| *reached >= revision)).await;
        matches!(reached, Ok(Ok(_)))
    }
}

impl std::ops::Deref for Snapshot {
    type Target = Cluster;

    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

/// Makes each next [`Snapshot`] without rebuilding the cluster: the snapshot the last publish
/// replaced comes back as a spare, lagging one batch of changes behind; the next publish
/// brings it up to date with that batch and the new one. A [`Cluster`] cannot be cloned,
/// and the published one is shared with the packet path, so two take turns. Only when the
/// spare is still in use (or there is none yet) is the cluster built whole.
#[derive(Debug, Default)]
pub struct Publisher {
    spare: Option<Arc<Snapshot>>,
    lag: Changes,
    /// How many snapshots were built whole rather than updated.
    pub rebuilds: u64,
}

impl Publisher {
    /// The next snapshot: `objects` after `changes`.
    pub fn next(&mut self, objects: &Objects, changes: Changes) -> Snapshot {
        let cluster = match self.spare.take().map(Arc::try_unwrap) {
            Some(Ok(spare)) => {
                let mut cluster = spare.cluster;
                self.lag.apply(&mut cluster);
                changes.apply(&mut cluster);
                cluster
            }
            Some(Err(_)) | None => {
                self.rebuilds += 1;
                objects.build()
            }
        };
        self.lag = changes;
        Snapshot::new(cluster, objects)
    }

    /// Takes back the snapshot the one from [`Self::next`] replaced.
    pub fn retire(&mut self, old: Arc<Snapshot>) {
        self.spare = Some(old);
    }
}

/// What the local API needs of the policy view.
#[derive(Clone)]
pub struct Handle {
    view: View,
    enforced: Enforced,
    progress: ProgressHandle,
    source: Arc<dyn ObjectSource>,
    rules: crate::enforce::RuleKind,
}

impl Handle {
    /// The view the packet path judges with.
    pub fn view(&self) -> View {
        self.view.clone()
    }

    /// Up to which revision of the source the node enforces what it holds.
    pub fn enforced(&self) -> &Enforced {
        &self.enforced
    }

    /// A revision such that once the view has reached it, the node enforces everything the
    /// datastore held when this was called (see [`ObjectSource::checkpoint`]).
    pub async fn checkpoint(&self) -> Result<i64, StoreError> {
        let revision = self.source.checkpoint().await?;
        self.progress.request();
        Ok(revision)
    }

    /// The view's state. Also asks etcd to report the watch's progress, so that a view with
    /// nothing new to apply still catches up with writes elsewhere in etcd (the answer raises
    /// the revision shortly after; `fabricctl policy sync` asks again).
    pub fn status(&self) -> PolicyStatus {
        self.progress.request();
        PolicyStatus {
            queue_rules: Some(self.rules.to_string()),
            ..current(&self.view).status(self.enforced.revision())
        }
    }
}

fn current(view: &View) -> Arc<Snapshot> {
    view.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Keeps the policy view in step with the source: an initial listing, then the changes after
/// it. Events that arrive together (within [`DEBOUNCE`] of each other, for at most
/// [`MAX_BATCH`], unless a CNI ADD waits for the view or the source reports it has caught up)
/// are applied as one batch: the view is updated incrementally, published whole, and the
/// allowed connections inside the cluster network are judged again, those no longer allowed
/// cut. When the watch breaks or falls behind a
/// compaction, the objects are listed again and the difference applied the same way. The
/// leases are followed too: when who holds which subnet changes, every pod record is judged
/// again ([`Owners`]).
pub struct Follower {
    source: Arc<dyn ObjectSource>,
    feed: ObjectFeed,
    store: Arc<dyn Store>,
    /// The lease watch; `None` after it ended, until it is started again.
    leases: Option<watch::Receiver<Leases>>,
    addressing: Addressing,
    objects: Objects,
    publisher: Publisher,
    view: View,
    enforced: Enforced,
    node: String,
    rules: crate::enforce::RuleOptions,
    installed: Option<crate::enforce::Queued>,
    /// Cuts, in the background, the connections each new view no longer allows.
    cutter: crate::enforce::Cutter,
}

/// The next change of `leases`: true when they changed, false when their watch ended.
async fn lease_change(leases: &mut Option<watch::Receiver<Leases>>) -> bool {
    match leases {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

impl Follower {
    /// Lists the policy objects and the leases (of `store`, whose subnets must fit
    /// `addressing`) and builds the first view; fails if the source cannot be read. `node` is
    /// this node's name (its pods are the ones it queues), `rules` how the queue rules are
    /// built.
    pub async fn start(
        source: Arc<dyn ObjectSource>,
        store: Arc<dyn Store>,
        addressing: Addressing,
        node: &str,
        rules: crate::enforce::RuleOptions,
    ) -> Result<(Self, Handle), StoreError> {
        let mut feed = source.follow().await?;
        let Some(ObjectUpdate::Listed { revision, objects }) = feed.next().await else {
            return Err(StoreError::Unavailable(
                "the policy object follower did not list".into(),
            ));
        };
        let mut leases = store.watch_leases().await?;
        let mut objects = Objects::listed(revision, objects);
        let owners = Owners::of(&leases.borrow_and_update(), Some(&addressing));
        objects.set_owners(owners, &mut Changes::default());
        let (policies, pods, namespaces) = objects.counts();
        tracing::info!(revision, policies, pods, namespaces, "policy view loaded");
        let first = Snapshot::new(objects.build(), &objects);
        let view: View = Arc::new(RwLock::new(Arc::new(first)));
        let enforced = Enforced::default();
        let cutter = crate::enforce::Cutter::start(view.clone(), addressing.networks);
        let handle = Handle {
            view: view.clone(),
            enforced: enforced.clone(),
            progress: feed.progress(),
            source: source.clone(),
            rules: rules.kind,
        };
        let follower = Self {
            source,
            feed,
            store,
            leases: Some(leases),
            addressing,
            objects,
            publisher: Publisher::default(),
            view,
            enforced,
            node: node.to_owned(),
            rules,
            installed: None,
            cutter,
        };
        Ok((follower, handle))
    }

    /// Installs the queue rules for the first view: from then on, the node enforces it.
    pub async fn install_rules(&mut self) -> anyhow::Result<()> {
        self.install_queue_rules().await?;
        self.enforced.raise(self.objects.revision());
        Ok(())
    }

    /// Installs the queue rules for the current view if which local pods are isolated
    /// changed since the last install (always, the first time, and after a failed one).
    async fn install_queue_rules(&mut self) -> anyhow::Result<()> {
        let view = current(&self.view);
        let queued = crate::enforce::Queued::of(&view, self.objects.pods_on(&self.node));
        if self.installed.as_ref() == Some(&queued) {
            return Ok(());
        }
        let (rules, to_install) = (self.rules, queued.clone());
        let installed =
            crate::command::off_runtime(move || crate::enforce::rules::install(rules, &to_install))
                .await;
        if let Err(e) = installed {
            self.installed = None;
            return Err(e);
        }
        tracing::info!(
            egress = queued.egress.len(),
            ingress = queued.ingress.len(),
            "queue rules installed for the isolated local pods"
        );
        self.installed = Some(queued);
        Ok(())
    }

    /// Runs until the process ends, ticking `beat` each time round: at least every
    /// [`FOLLOWER_WAKE`] while nothing happens, the datastore reachable or not (its watches
    /// retry by themselves); only a pass that does not end stops it.
    pub async fn run(mut self, beat: Beat) {
        loop {
            beat.tick();
            let next = tokio::select! {
                next = self.feed.next() => next,
                changed = lease_change(&mut self.leases) => {
                    if changed {
                        self.owners_changed().await;
                    } else {
                        tracing::warn!("the lease watch ended; watching again");
                        self.leases = None;
                    }
                    continue;
                }
                () = tokio::time::sleep(FOLLOWER_WAKE) => {
                    if self.leases.is_none() {
                        match self.store.watch_leases().await {
                            Ok(leases) => {
                                self.leases = Some(leases);
                                self.owners_changed().await;
                            }
                            Err(e) => tracing::warn!(error = %e, "cannot watch the leases"),
                        }
                    }
                    continue;
                }
            };
            let Some(first) = next else {
                tracing::warn!("the policy object watch ended; following again");
                tokio::time::sleep(Duration::from_millis(500)).await;
                match self.source.follow().await {
                    Ok(feed) => self.feed = feed,
                    Err(e) => tracing::warn!(error = %e, "cannot follow the policy objects"),
                }
                continue;
            };
            let batch = self.gather(first).await;
            self.apply(batch).await;
        }
    }

    /// `first` and whatever follows it closely.
    async fn gather(&mut self, first: ObjectUpdate) -> Vec<ObjectUpdate> {
        let mut batch = vec![first];
        if matches!(batch[0], ObjectUpdate::Progress { .. }) {
            // Nothing to debounce: a revision to note.
            return batch;
        }
        let deadline = Instant::now() + MAX_BATCH;
        loop {
            if self.enforced.awaited() {
                // A CNI ADD waits for this view: no batching at its expense.
                return batch;
            }
            let quiet = DEBOUNCE.min(deadline.saturating_duration_since(Instant::now()));
            tokio::select! {
                next = tokio::time::timeout(quiet, self.feed.next()) => match next {
                    // The source has caught up (nothing is pending behind a progress report):
                    // the batch is complete.
                    Ok(Some(update @ ObjectUpdate::Progress { .. })) => {
                        batch.push(update);
                        return batch;
                    }
                    Ok(Some(update)) => batch.push(update),
                    Ok(None) | Err(_) => return batch,
                },
                // An ADD began to wait while the batch gathered: it goes as it is.
                () = self.enforced.waiter() => return batch,
            }
        }
    }

    /// Judges every pod record again against the leases as they are now.
    async fn owners_changed(&mut self) {
        let Some(leases) = &mut self.leases else {
            return;
        };
        let owners = Owners::of(&leases.borrow_and_update(), Some(&self.addressing));
        let mut changes = Changes::default();
        self.objects.set_owners(owners, &mut changes);
        if !changes.is_empty() {
            self.publish(changes, 0).await;
        }
    }

    async fn apply(&mut self, batch: Vec<ObjectUpdate>) {
        let mut changes = Changes::default();
        let updates = batch.len();
        for update in batch {
            match update {
                ObjectUpdate::Listed { revision, objects } => {
                    self.objects.relist(revision, objects, &mut changes);
                }
                ObjectUpdate::Changed { revision, objects } => {
                    for object in objects {
                        self.objects.apply(object, &mut changes);
                    }
                    self.objects.advance(revision);
                }
                ObjectUpdate::Progress { revision } => self.objects.advance(revision),
            }
        }
        let revision = self.objects.revision();
        if changes.is_empty() {
            // What the node enforces did not change up to `revision` (unless the last
            // install failed).
            if self.installed.is_some() {
                self.enforced.raise(revision);
            }
            return;
        }
        self.publish(changes, updates).await;
    }

    /// Publishes the view after `changes` (from `updates` updates of the source), installs
    /// the queue rules it needs and has the existing connections judged again (in the
    /// background: the next change need not wait for a cut).
    async fn publish(&mut self, changes: Changes, updates: usize) {
        let revision = self.objects.revision();
        let started = Instant::now();
        let changed = changes.len();
        let rebuilds = self.publisher.rebuilds;
        let next = Arc::new(self.publisher.next(&self.objects, changes));
        let old = std::mem::replace(
            &mut *self.view.write().unwrap_or_else(|e| e.into_inner()),
            next,
        );
        self.publisher.retire(old);
        let (policies, pods, namespaces) = self.objects.counts();
        tracing::info!(
            revision,
            changed,
            updates,
            policies,
            pods,
            namespaces,
            rebuilt = self.publisher.rebuilds > rebuilds,
            took_ms = started.elapsed().as_millis() as u64,
            "policy view updated"
        );
        // Newly isolated pods are queued before existing connections are judged again, so
        // none slips through between the two.
        match self.install_queue_rules().await {
            // New connections are judged by the view from here on: a waiting ADD can go.
            Ok(()) => self.enforced.raise(revision),
            // Not enforced: `fabricctl policy sync` and a waiting ADD say so by timing out.
            Err(e) => tracing::warn!(error = %e, "cannot install the queue rules"),
        }
        self.cutter.view_changed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fabric_cni::api::ContainerPort as CniPort;
    use serde_json::json;
    use std::net::Ipv4Addr;

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, 1, last)
    }

    fn stored(kind: Kind, name: &str, value: Option<serde_json::Value>, rev: i64) -> StoredObject {
        StoredObject {
            kind,
            name: name.into(),
            value: value.map(|v| v.to_string().into_bytes()),
            mod_revision: rev,
        }
    }

    /// A pod record as fabricd registers it, stored at `rev`.
    fn pod(
        container: &str,
        ns_name: &str,
        last: u8,
        labels: &[(&str, &str)],
        ports: &[(Option<&str>, u16, PortProtocol)],
        rev: i64,
    ) -> StoredObject {
        let (namespace, name) = ns_name.split_once('/').unwrap();
        let record = PodRecord {
            namespace: namespace.into(),
            name: name.into(),
            node: "n1".into(),
            container_id: container.into(),
            ip: ip(last),
            ipv6: None,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ports: ports
                .iter()
                .map(|(name, port, protocol)| CniPort {
                    name: name.map(str::to_owned),
                    container_port: *port,
                    protocol: *protocol,
                })
                .collect(),
        };
        let value = serde_json::to_value(record).unwrap();
        stored(Kind::Pods, &format!("n1/{container}"), Some(value), rev)
    }

    fn namespace(name: &str, labels: serde_json::Value, rev: i64) -> StoredObject {
        stored(
            Kind::Namespaces,
            name,
            Some(json!({ "labels": labels })),
            rev,
        )
    }

    fn policy_object(yaml: &str, rev: i64) -> StoredObject {
        let np = &parse_manifests(yaml).unwrap()[0];
        let name = policy_name(np).unwrap();
        stored(
            Kind::Policies,
            &name,
            Some(serde_json::to_value(np).unwrap()),
            rev,
        )
    }

    fn deleted(kind: Kind, name: &str, rev: i64) -> StoredObject {
        stored(kind, name, None, rev)
    }

    fn allowed(cluster: &Cluster, from: u8, to: u8, protocol: Protocol, port: u16) -> bool {
        let endpoint = |last| cluster.endpoint(ip(last));
        cluster
            .decide(endpoint(from), endpoint(to), protocol, port)
            .allowed
    }

    /// Every decision between the pods at .10 to .13 on a few ports, for comparing views.
    fn decisions(cluster: &Cluster) -> Vec<bool> {
        let mut out = Vec::new();
        for from in 10..14 {
            for to in 10..14 {
                for protocol in Protocol::ALL {
                    for port in [80, 81, 443] {
                        out.push(allowed(cluster, from, to, protocol, port));
                    }
                }
            }
        }
        out
    }

    const NAMED_PORT: &str = "metadata: {name: web, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: client}}}]\n    ports: [{port: serve-80-tcp}]\n";

    /// A record of `node` (stored under `key`) for pod `ns_name` at `ip` (and `ipv6`).
    fn record_at(
        key: &str,
        node: &str,
        ns_name: &str,
        ip: &str,
        ipv6: Option<&str>,
        labels: &[(&str, &str)],
        rev: i64,
    ) -> StoredObject {
        let (namespace, name) = ns_name.split_once('/').unwrap();
        let record = PodRecord {
            namespace: namespace.into(),
            name: name.into(),
            node: node.into(),
            container_id: key.rsplit('/').next().unwrap().into(),
            ip: ip.parse().unwrap(),
            ipv6: ipv6.map(|a| a.parse().unwrap()),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ports: vec![],
        };
        stored(
            Kind::Pods,
            key,
            Some(serde_json::to_value(record).unwrap()),
            rev,
        )
    }

    fn lease(subnet: &str, ipv6: Option<&str>, node: &str) -> ipam::Lease {
        ipam::Lease {
            subnet: subnet.parse().unwrap(),
            ipv6_subnet: ipv6.map(|s| s.parse().unwrap()),
            node: node.into(),
            public_ip: Ipv4Addr::new(172, 30, 0, 11),
            backend_type: "vxlan".into(),
            backend_data: serde_json::Value::Null,
            ttl_secs: None,
            handle: 1,
        }
    }

    const ADDRESSING: Addressing = Addressing {
        networks: crate::pods::Subnets {
            v4: Ipv4Net::new_assert(Ipv4Addr::new(10, 244, 0, 0), 16),
            v6: Some(Ipv6Net::new_assert(
                Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 0),
                48,
            )),
        },
        subnet_len: Some(24),
    };

    fn owners(leases: &[ipam::Lease]) -> Owners {
        let leases: BTreeMap<_, _> = leases.iter().map(|l| (l.subnet, l.clone())).collect();
        Owners::of(&Arc::new(leases), Some(&ADDRESSING))
    }

    #[test]
    fn a_pod_record_is_believed_only_for_its_own_nodes_addresses() {
        let n1 = lease("10.244.1.0/24", Some("fd00:10:244:1::/64"), "n1");
        let n2 = lease("10.244.2.0/24", Some("fd00:10:244:2::/64"), "n2");
        // A lease that does not fit (not a SubnetLen subnet) cannot vouch for anything.
        let wide = lease("10.244.0.0/16", None, "evil");
        let client = [("app", "client")];
        let b = "10.244.2.20";
        let mut objects = Objects::listed(
            9,
            [
                record_at("n1/c1", "n1", "x/a", "10.244.1.10", None, &[], 1),
                record_at("n2/c2", "n2", "y/b", b, Some("fd00:10:244:2::14"), &[], 2),
                // Forged: b's address under another node, with labels a policy admits.
                record_at("n1/forged", "n1", "x/forged", b, None, &client, 3),
                record_at("evil/c9", "evil", "x/evil", b, None, &client, 4),
                // Stored under n2 but naming n1.
                record_at(
                    "n2/misnamed",
                    "n1",
                    "x/misnamed",
                    "10.244.2.30",
                    None,
                    &[],
                    5,
                ),
                // Its IPv4 address is n1's, its IPv6 address n2's.
                record_at(
                    "n1/six",
                    "n1",
                    "x/six",
                    "10.244.1.11",
                    Some("fd00:10:244:2::15"),
                    &[],
                    6,
                ),
            ],
        );
        let key = |k: &str| PodKey::parse(k).unwrap();
        let mut changes = Changes::default();
        objects.set_owners(owners(&[n1.clone(), n2.clone(), wide]), &mut changes);
        let cluster = objects.build();
        for held in ["x/forged", "x/evil", "x/misnamed", "x/six"] {
            assert!(cluster.pod(&key(held)).is_none(), "{held} is believed");
        }
        // Believed until the leases were known (the misnamed one never was).
        for held in ["x/forged", "x/evil", "x/six"] {
            assert_eq!(changes.pods.get(&key(held)), Some(&None), "{held}");
        }
        assert_eq!(objects.counts().1, 2);
        assert_eq!(
            cluster.pod_by_ip(b.parse::<Ipv4Addr>().unwrap()),
            cluster.pod_id(&key("y/b")),
            "b's address is b's"
        );
        assert!(cluster.pod(&key("x/a")).is_some());

        // n2's lease gone from sight: n1's record still claims an address outside n1's
        // lease; evil holds no lease and nobody else's covers b's address now.
        let mut changes = Changes::default();
        objects.set_owners(owners(std::slice::from_ref(&n1)), &mut changes);
        assert!(
            !changes.pods.contains_key(&key("x/forged")),
            "still held out"
        );
        assert!(objects.build().pod(&key("x/evil")).is_some());
        // n2 leases its subnet again: evil's record is held out again, and a record written
        // anew is judged as it comes.
        let mut changes = Changes::default();
        objects.set_owners(owners(&[n1, n2]), &mut changes);
        assert_eq!(changes.pods.get(&key("x/evil")), Some(&None));
        let mut changes = Changes::default();
        objects.apply(
            record_at("n1/forged2", "n1", "x/forged2", b, None, &client, 10),
            &mut changes,
        );
        assert!(changes.is_empty(), "{changes:?}");
        assert!(objects.build().pod(&key("x/forged2")).is_none());
        // A held-out record deleted while the watch was down goes with the next listing.
        let listed = vec![
            record_at("n1/c1", "n1", "x/a", "10.244.1.10", None, &[], 1),
            record_at("n2/c2", "n2", "y/b", b, None, &[], 2),
        ];
        objects.relist(11, listed, &mut Changes::default());
        assert!(objects.held_out.is_empty(), "{:?}", objects.held_out.keys());
    }

    #[test]
    fn a_node_without_a_lease_in_sight_is_believed_where_nobody_else_is() {
        // Just started: this node's lease is not seen yet, its pods' records are.
        let mut objects = Objects::listed(
            2,
            [record_at("n1/c1", "n1", "x/a", "10.244.1.10", None, &[], 1)],
        );
        objects.set_owners(
            owners(&[lease("10.244.2.0/24", None, "n2")]),
            &mut Changes::default(),
        );
        assert_eq!(objects.counts().1, 1);
        assert_eq!(objects.pods_on("n1").count(), 1);
    }

    #[test]
    fn a_node_s_pods_are_those_it_registered() {
        let n2 = record_at("n2/c9", "n2", "x/far", "10.244.2.9", None, &[], 4);
        let objects = Objects::listed(
            5,
            vec![
                pod("c1", "x/a", 1, &[], &[], 2),
                pod("c2", "x/b", 2, &[], &[], 3),
                n2,
            ],
        );
        let names = |node: &str| -> Vec<String> {
            objects.pods_on(node).map(|p| p.key.name.clone()).collect()
        };
        assert_eq!(names("n1"), ["a", "b"]);
        assert_eq!(names("n2"), ["far"]);
        assert!(
            names("n").is_empty(),
            "a node name is not a prefix of another's"
        );
    }

    #[test]
    fn named_port_policy_allows_the_named_port_only() {
        let objects = Objects::listed(
            7,
            [
                namespace("x", json!({"ns": "x"}), 1),
                pod(
                    "c-web",
                    "x/web",
                    10,
                    &[("app", "web")],
                    &[
                        (Some("serve-80-tcp"), 80, PortProtocol::Tcp),
                        (Some("serve-81-udp"), 81, PortProtocol::Udp),
                        (None, 443, PortProtocol::Tcp),
                    ],
                    2,
                ),
                pod("c-client", "x/client", 11, &[("app", "client")], &[], 3),
                policy_object(NAMED_PORT, 4),
            ],
        );
        assert_eq!(objects.revision(), 7);
        assert_eq!(objects.counts(), (1, 2, 1));
        let cluster = objects.build();
        assert!(allowed(&cluster, 11, 10, Protocol::Tcp, 80));
        assert!(!allowed(&cluster, 11, 10, Protocol::Tcp, 81));
        assert!(!allowed(&cluster, 11, 10, Protocol::Tcp, 443));
        assert!(!allowed(&cluster, 11, 10, Protocol::Udp, 80));
        // The other pod is not isolated.
        assert!(allowed(&cluster, 10, 11, Protocol::Tcp, 81));
        let web = cluster.pod(&PodKey::new("x", "web")).unwrap();
        assert_eq!(web.ports.len(), 3);
        assert_eq!(web.ports[1].protocol, Protocol::Udp);
    }

    #[test]
    fn port_name_rules_agree_with_the_policy_model() {
        for name in [
            "serve-80-tcp",
            "a",
            "80",
            "Web",
            "-a",
            "a-",
            "a--b",
            "a_b",
            "x234567890123456",
            "",
            "x23456789012345",
            "1a",
        ] {
            assert_eq!(
                fabric_cni::api::check_port_name(name).is_ok(),
                policy::PortName::new(name).is_ok(),
                "{name:?}"
            );
        }
    }

    /// Publishes `changes` the way the follower does; returns the new view.
    fn publish(
        publisher: &mut Publisher,
        view: &mut Arc<Snapshot>,
        objects: &Objects,
        changes: Changes,
    ) -> Arc<Snapshot> {
        let next = Arc::new(publisher.next(objects, changes));
        publisher.retire(std::mem::replace(view, next.clone()));
        next
    }

    #[test]
    fn incremental_views_match_full_builds() {
        let mut objects = Objects::listed(
            4,
            [
                namespace("x", json!({"ns": "x"}), 1),
                pod(
                    "c10",
                    "x/web",
                    10,
                    &[("app", "web")],
                    &[(Some("serve-80-tcp"), 80, PortProtocol::Tcp)],
                    2,
                ),
                pod("c11", "x/client", 11, &[("app", "client")], &[], 3),
                pod("c12", "y/other", 12, &[("app", "client")], &[], 4),
            ],
        );
        let mut publisher = Publisher::default();
        let mut view = Arc::new(Snapshot::new(objects.build(), &objects));
        let steps: Vec<Vec<StoredObject>> = vec![
            vec![policy_object(NAMED_PORT, 5)],
            // A relabel: the client is no longer one.
            vec![pod("c11", "x/client", 11, &[("app", "nobody")], &[], 6)],
            // A namespace-scoped rule and a new pod at once.
            vec![
                policy_object("metadata: {name: from-ns, namespace: x}\nspec:\n  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {team: a}}}]\n", 7),
                pod("c13", "x/new", 13, &[("app", "web")], &[], 7),
            ],
            vec![namespace("y", json!({"team": "a"}), 8)],
            vec![deleted(Kind::Namespaces, "y", 9), deleted(Kind::Pods, "n1/c10", 9)],
            vec![deleted(Kind::Policies, "x/web", 10)],
            vec![],
            vec![pod("c10", "x/web", 10, &[("app", "web")], &[], 11)],
        ];
        let mut rev = 4;
        for (i, step) in steps.into_iter().enumerate() {
            let mut changes = Changes::default();
            for object in step {
                rev = object.mod_revision;
                objects.apply(object, &mut changes);
            }
            objects.advance(rev);
            let next = publish(&mut publisher, &mut view, &objects, changes);
            assert_eq!(decisions(&next), decisions(&objects.build()), "step {i}");
            let client_to_web = allowed(&next, 11, 10, Protocol::Tcp, 80);
            match i {
                0 => assert!(client_to_web && !allowed(&next, 11, 10, Protocol::Tcp, 81)),
                1 => assert!(!client_to_web, "relabeled: no longer a client"),
                3 => assert!(allowed(&next, 12, 13, Protocol::Tcp, 443), "y is team a"),
                4 => assert!(!allowed(&next, 12, 13, Protocol::Tcp, 443), "y unlabeled"),
                _ => {}
            }
        }
        // Only the first publish had no spare to update.
        assert_eq!(publisher.rebuilds, 1);

        // A spare still in use (the packet path holding it) is not touched: built whole.
        let held = view.clone();
        let mut changes = Changes::default();
        objects.apply(deleted(Kind::Policies, "x/from-ns", 12), &mut changes);
        objects.advance(12);
        publish(&mut publisher, &mut view, &objects, changes);
        let mut changes = Changes::default();
        objects.apply(namespace("x", json!({"team": "b"}), 13), &mut changes);
        objects.advance(13);
        let next = publish(&mut publisher, &mut view, &objects, changes);
        assert_eq!(publisher.rebuilds, 2);
        assert_eq!(decisions(&next), decisions(&objects.build()));
        drop(held);
    }

    #[test]
    fn changes_say_only_what_changed() {
        let mut objects = Objects::listed(1, [namespace("x", json!({"a": "1"}), 1)]);
        let mut changes = Changes::default();
        objects.apply(namespace("x", json!({"a": "1"}), 2), &mut changes);
        assert!(changes.is_empty(), "same labels: {changes:?}");
        objects.apply(namespace("x", json!({"a": "2"}), 3), &mut changes);
        objects.apply(pod("c1", "x/a", 10, &[], &[], 3), &mut changes);
        assert_eq!(changes.len(), 2);

        // An invalid policy replacing a valid one fails closed: it still isolates the pods
        // it selects, both ways (its policyTypes cannot be read), allowing nothing.
        let mut changes = Changes::default();
        objects.apply(policy_object(NAMED_PORT, 4), &mut changes);
        let bad = json!({"metadata": {"name": "web", "namespace": "x"}, "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Sideways"]}});
        let mut changes = Changes::default();
        objects.apply(stored(Kind::Policies, "x/web", Some(bad), 5), &mut changes);
        let denied = changes
            .policies
            .get(&PolicyKey::new("x", "web"))
            .cloned()
            .flatten()
            .expect("the invalid policy stays, failing closed");
        assert_eq!(denied.ingress, Some(vec![]));
        assert_eq!(denied.egress, Some(vec![]));
        assert!(!denied.pod_selector.is_everything());
        assert_eq!(objects.counts().0, 1);
        // A record that is not even a policy isolates its whole namespace.
        objects.apply(
            stored(Kind::Policies, "x/junk", Some(json!([1, 2])), 6),
            &mut changes,
        );
        assert_eq!(objects.counts().0, 2);
        let cluster = objects.build();
        let junk = cluster.policy(&PolicyKey::new("x", "junk")).expect("kept");
        assert!(junk.pod_selector.is_everything());
        assert_eq!(
            (junk.ingress.as_deref(), junk.egress.as_deref()),
            (Some(&[][..]), Some(&[][..]))
        );
    }

    #[test]
    fn the_newest_record_of_a_pod_counts() {
        // A restarted pod: a new container's record beside the old one, not yet deleted.
        let mut objects = Objects::listed(
            2,
            [
                pod("old", "x/a", 10, &[("v", "1")], &[], 1),
                pod("new", "x/a", 11, &[("v", "2")], &[], 2),
            ],
        );
        let key = PodKey::new("x", "a");
        assert_eq!(objects.counts().1, 1);
        assert_eq!(objects.build().pod(&key).unwrap().ip, ip(11));
        let mut changes = Changes::default();
        objects.apply(deleted(Kind::Pods, "n1/new", 3), &mut changes);
        let back = changes.pods[&key].as_ref().unwrap();
        assert_eq!(back.ip, ip(10));
        let mut changes = Changes::default();
        objects.apply(deleted(Kind::Pods, "n1/old", 4), &mut changes);
        assert_eq!(changes.pods[&key], None);
        assert_eq!(objects.counts(), (0, 0, 0));
    }

    #[test]
    fn a_relisting_applies_the_difference() {
        let mut objects = Objects::listed(
            3,
            [
                namespace("x", json!({}), 1),
                pod("c1", "x/a", 10, &[], &[], 2),
                policy_object(NAMED_PORT, 3),
            ],
        );
        let mut changes = Changes::default();
        objects.relist(
            9,
            vec![
                namespace("x", json!({}), 1),
                pod("c2", "x/b", 11, &[], &[], 8),
                policy_object(NAMED_PORT, 3),
            ],
            &mut changes,
        );
        assert_eq!(objects.revision(), 9);
        assert!(changes.namespaces.is_empty() && changes.policies.is_empty());
        assert_eq!(changes.pods.len(), 2);
        assert_eq!(changes.pods[&PodKey::new("x", "a")], None);
        assert!(changes.pods[&PodKey::new("x", "b")].is_some());
        let status = Snapshot::new(objects.build(), &objects).status(9);
        assert_eq!(
            (
                status.revision,
                status.policies,
                status.pods,
                status.namespaces
            ),
            (9, 1, 1, 1)
        );
    }

    #[tokio::test]
    async fn the_enforced_revision_only_goes_up_and_wakes_waiters() {
        let enforced = Enforced::default();
        assert_eq!(enforced.revision(), 0);
        let follower = {
            let enforced = enforced.clone();
            tokio::spawn(async move { enforced.waiter().await })
        };
        tokio::task::yield_now().await;
        assert!(!follower.is_finished(), "nobody waits yet");
        let waiter = {
            let enforced = enforced.clone();
            tokio::spawn(async move { enforced.reached(12, Duration::from_secs(10)).await })
        };
        enforced.raise(11);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "11 is not 12");
        assert!(enforced.awaited());
        tokio::time::timeout(Duration::from_secs(10), follower)
            .await
            .expect("the follower learns that someone waits")
            .unwrap();
        enforced.raise(13);
        assert!(waiter.await.unwrap(), "13 reaches 12");
        assert!(!enforced.awaited());
        enforced.raise(10);
        assert_eq!(enforced.revision(), 13);
        assert!(enforced.reached(13, Duration::ZERO).await, "already there");
        assert!(!enforced.reached(14, Duration::from_millis(20)).await);
    }

    #[test]
    fn multi_document_manifests_are_validated_whole() {
        let ok = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: x}\nspec: {podSelector: {}}\n---\n---\nmetadata: {name: b}\nspec: {podSelector: {}, policyTypes: [Egress]}\n";
        let got = parse_manifests(ok).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(policy_name(&got[0]).unwrap(), "x/a");
        assert_eq!(policy_name(&got[1]).unwrap(), "default/b");

        let bad = "metadata: {name: a}\nspec:\n  podSelector: {}\n  ingress:\n  - ports:\n    - endPort: 90\n";
        let err = format!("{:#}", parse_manifests(bad).unwrap_err());
        assert!(err.contains("spec.ingress[0].ports[0]"), "{err}");
        assert!(parse_manifests("kind: Pod\nmetadata: {name: a}\n").is_err());
        assert!(parse_manifests("").is_err());
    }

    #[test]
    fn shipped_example_policies_are_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/policies");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let policies =
                parse_manifests(&text).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            seen += policies.len();
        }
        assert!(seen >= 4, "{seen} example policies");
    }
}
