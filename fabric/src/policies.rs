//! The cluster's policy view: NetworkPolicy manifests as operators write them (multi-document
//! YAML), and the [`policy::Cluster`] built from the pods, namespaces and policies of an
//! [`ObjectSource`] (etcd's prefix, or the Kubernetes API), kept in step by following it.
//!
//! The parts: [`Objects`] mirrors what the source holds and turns each stored object into
//! [`Changes`] to the cluster (pure); [`Publisher`] makes the next [`Snapshot`] by applying
//! changes to a spare cluster rather than rebuilding one (pure); [`Follower`] is the shell
//! that lists, watches, batches and publishes; [`Enforced`] says up to which revision of the
//! source the node enforces what it holds; [`Handle`] is what the local API asks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fabric_cni::api::{PolicyStatus, PortProtocol};
use ipam::objects::{Kind, StoredObject};
use ipam::{
    NamespaceRecord, ObjectFeed, ObjectSource, ObjectUpdate, PodRecord, ProgressHandle, StoreError,
};
use policy::{
    Cluster, ContainerPort, Labels, NetworkPolicy, Pod, PodKey, Policy, PolicyKey, Protocol,
};
use serde::Deserialize;
use tokio::sync::{watch, Notify};

use crate::enforce::View;

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

/// Builds the policy view from the datastore, once (for `fabricctl policy explain`).
pub async fn load(source: &dyn ObjectSource) -> Result<Cluster> {
    let (revision, objects) = source.list_objects().await?;
    Ok(Objects::listed(revision, objects).build())
}

/// How long the follower waits for more events after one arrived before it publishes: events
/// that arrive together (one `fabricctl policy apply` of many policies) make one new view.
pub const DEBOUNCE: Duration = Duration::from_millis(20);

/// The longest a batch of events is held back while events keep arriving.
pub const MAX_BATCH: Duration = Duration::from_millis(500);

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
                    Ok(record) => {
                        let pod = pod_of(record);
                        Some((pod.key.clone(), pod))
                    }
                    Err(e) => {
                        tracing::warn!(key = %name, error = %e, "skipping an unreadable pod record");
                        None
                    }
                });
                self.pods
                    .set(&name, record, mod_revision, &mut changes.pods);
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
            self.pods.records.keys().cloned().collect(),
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
/// compaction, the objects are listed again and the difference applied the same way.
pub struct Follower {
    source: Arc<dyn ObjectSource>,
    feed: ObjectFeed,
    objects: Objects,
    publisher: Publisher,
    view: View,
    enforced: Enforced,
    networks: crate::pods::Subnets,
    node: String,
    rules: crate::enforce::RuleOptions,
    installed: Option<crate::enforce::Queued>,
}

impl Follower {
    /// Lists the policy objects and builds the first view; fails if the source cannot be read.
    /// `node` is this node's name (its pods are the ones it queues), `rules` how the queue
    /// rules are built.
    pub async fn start(
        source: Arc<dyn ObjectSource>,
        networks: crate::pods::Subnets,
        node: &str,
        rules: crate::enforce::RuleOptions,
    ) -> Result<(Self, Handle), StoreError> {
        let mut feed = source.follow().await?;
        let Some(ObjectUpdate::Listed { revision, objects }) = feed.next().await else {
            return Err(StoreError::Unavailable(
                "the policy object follower did not list".into(),
            ));
        };
        let objects = Objects::listed(revision, objects);
        let (policies, pods, namespaces) = objects.counts();
        tracing::info!(revision, policies, pods, namespaces, "policy view loaded");
        let first = Snapshot::new(objects.build(), &objects);
        let view: View = Arc::new(RwLock::new(Arc::new(first)));
        let enforced = Enforced::default();
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
            objects,
            publisher: Publisher::default(),
            view,
            enforced,
            networks,
            node: node.to_owned(),
            rules,
            installed: None,
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

    /// Runs until the process ends.
    pub async fn run(mut self) {
        loop {
            let Some(first) = self.feed.next().await else {
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
        let started = Instant::now();
        let changed = changes.len();
        let rebuilds = self.publisher.rebuilds;
        let next = Arc::new(self.publisher.next(&self.objects, changes));
        let old = std::mem::replace(
            &mut *self.view.write().unwrap_or_else(|e| e.into_inner()),
            next.clone(),
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
        let networks = self.networks;
        match crate::command::off_runtime(move || crate::enforce::rejudge(&next, networks)).await {
            Ok(0) => {}
            Ok(cut) => tracing::info!(cut, "connections no longer allowed were cut"),
            Err(e) => tracing::warn!(error = %e, "cannot re-judge existing connections"),
        }
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

    #[test]
    fn a_node_s_pods_are_those_it_registered() {
        let mut n2 = pod("c9", "x/far", 9, &[], &[], 4);
        n2.name = "n2/c9".into();
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
