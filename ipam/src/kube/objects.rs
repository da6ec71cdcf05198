//! The policy objects from the API: every Pod, Namespace and NetworkPolicy, followed with
//! `follow`, translated into the records the policy view is built from (pure,
//! [`pod_record`], [`namespace_record`], [`policy_record`]), and numbered.
//!
//! The API's resource versions order events within one resource type but are opaque across
//! types, so the source numbers the updates it emits itself: revision `n` is the `n`th
//! update. A checkpoint (`Objects::checkpoint`) lists all three types afresh and, once what
//! the watches delivered matches the listing object for object, names the last update emitted:
//! a follower that has applied it reflects the API as it was when the checkpoint began.
//!
//! Beside the API's pods, the source holds the pods this node just attached (CNI ADD), known
//! before their `status.podIPs` are written: a record under `<node>/<container id>` with the
//! labels and ports read from the API and the address fabricd gave the pod. The API's own
//! record (`<node>/<namespace>/<name>`, newer) takes over once the kubelet writes the status.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fabric_cni::api::{ContainerPort, PortProtocol};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::ListParams;
use kube::{Api, Client};
use tokio::sync::mpsc;

use super::follow::{follow, resource_version, Seen};
use crate::backoff::Pulse;
use crate::objects::{Kind, NamespaceRecord, PodRecord, StoredObject};
use crate::store::{ObjectFeed, ObjectUpdate, ProgressHandle, StoreError};

/// How long a checkpoint waits for the watches to catch up with its listing.
const CHECKPOINT_PATIENCE: Duration = Duration::from_secs(10);

/// How often a checkpoint compares again while it waits.
const CHECKPOINT_POLL: Duration = Duration::from_millis(50);

/// Updates queued for the follower before the source waits for it.
const FEED_QUEUE: usize = 256;

/// The record name of the API's pod `namespace/name` on `node`.
fn api_pod_name(node: &str, namespace: &str, name: &str) -> String {
    format!("{node}/{namespace}/{name}")
}

/// The record name of a pod this node attached as `container_id`.
pub(crate) fn local_pod_name(node: &str, container_id: &str) -> String {
    format!("{node}/{container_id}")
}

/// The pod record of an API pod: `None` for pods policy does not see (host network, no IPv4
/// address yet, finished, not on a node).
pub fn pod_record(pod: &Pod) -> Option<PodRecord> {
    let spec = pod.spec.as_ref()?;
    if spec.host_network == Some(true) {
        return None;
    }
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let node = spec.node_name.clone()?;
    let ips: Vec<IpAddr> = match status.pod_ips.as_ref() {
        Some(ips) if !ips.is_empty() => ips.iter().filter_map(|i| i.ip.parse().ok()).collect(),
        _ => status
            .pod_ip
            .iter()
            .filter_map(|i| i.parse().ok())
            .collect(),
    };
    let ip = ips.iter().find_map(|ip| match ip {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    })?;
    let ipv6 = ips.iter().find_map(|ip| match ip {
        IpAddr::V6(v6) => Some(*v6),
        IpAddr::V4(_) => None,
    });
    Some(PodRecord {
        namespace: pod.metadata.namespace.clone()?,
        name: pod.metadata.name.clone()?,
        node,
        container_id: pod.metadata.uid.clone().unwrap_or_default(),
        ip,
        ipv6,
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        ports: container_ports(pod),
    })
}

/// The ports a pod's containers declare (what NetworkPolicy named ports resolve against).
pub fn container_ports(pod: &Pod) -> Vec<ContainerPort> {
    let containers = pod.spec.iter().flat_map(|s| s.containers.iter());
    containers
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            Some(ContainerPort {
                name: p.name.clone(),
                container_port: u16::try_from(p.container_port).ok()?,
                protocol: match p.protocol.as_deref() {
                    Some("UDP") => PortProtocol::Udp,
                    Some("SCTP") => PortProtocol::Sctp,
                    _ => PortProtocol::Tcp,
                },
            })
        })
        .collect()
}

/// A namespace's record: its labels.
pub fn namespace_record(ns: &Namespace) -> NamespaceRecord {
    NamespaceRecord {
        labels: ns.metadata.labels.clone().unwrap_or_default(),
    }
}

/// A policy's record: the object without its managed fields and status.
pub fn policy_record(np: &NetworkPolicy) -> serde_json::Value {
    let mut np = np.clone();
    np.metadata.managed_fields = None;
    serde_json::to_value(np).unwrap_or_default()
}

/// One API object as the source keeps it: its resource version (for checkpoints) and its
/// record (`None` when policy does not see it).
#[derive(Debug, Clone)]
struct Entry {
    version: String,
    object: Option<StoredObject>,
}

/// What one resource type's watch has delivered.
#[derive(Debug, Default)]
struct Followed {
    listed: bool,
    entries: BTreeMap<String, Entry>,
}

#[derive(Debug, Default)]
struct Shared {
    /// The revision of the last update emitted.
    revision: i64,
    /// Where updates go, once someone follows.
    feed: Option<mpsc::UnboundedSender<ObjectUpdate>>,
    kinds: BTreeMap<Kind, Followed>,
    /// Pods attached by this node, by record name.
    local: BTreeMap<String, StoredObject>,
    started: bool,
}

impl Shared {
    fn all_listed(&self) -> bool {
        Kind::ALL
            .iter()
            .all(|k| self.kinds.get(k).is_some_and(|f| f.listed))
    }

    /// Every record, each at the revision of the update that last changed it.
    fn everything(&self) -> Vec<StoredObject> {
        let api = self.kinds.values().flat_map(|f| f.entries.values());
        api.filter_map(|e| e.object.clone())
            .chain(self.local.values().cloned())
            .collect()
    }

    /// The revision the next update will have.
    fn next_revision(&self) -> i64 {
        self.revision + 1
    }

    /// Emits the whole state (every type listed) as a listing.
    fn emit_listing(&mut self) {
        if !self.all_listed() {
            return;
        }
        self.revision += 1;
        let revision = self.revision;
        let objects = self.everything();
        self.send(ObjectUpdate::Listed { revision, objects });
    }

    /// Emits one changed object (once every type is listed; before, the listing carries it).
    fn emit_change(&mut self, object: StoredObject) {
        if !self.all_listed() {
            return;
        }
        self.revision += 1;
        let revision = self.revision;
        self.send(ObjectUpdate::Changed {
            revision,
            objects: vec![object],
        });
    }

    fn send(&mut self, update: ObjectUpdate) {
        if let Some(feed) = &self.feed {
            if feed.send(update).is_err() {
                self.feed = None;
            }
        }
    }

    /// A type's listing: replaces what its watch delivered before.
    fn listed(&mut self, kind: Kind, mut entries: BTreeMap<String, Entry>) {
        let revision = self.next_revision();
        for object in entries.values_mut().filter_map(|e| e.object.as_mut()) {
            object.mod_revision = revision;
        }
        let followed = self.kinds.entry(kind).or_default();
        followed.entries = entries;
        followed.listed = true;
        self.emit_listing();
    }

    /// One API object (by its identity, `namespace/name`) created, changed (`Some`) or
    /// deleted (`None`). A record whose name changed with it (a pod scheduled to a node) is
    /// removed under its old name.
    fn changed(&mut self, kind: Kind, identity: String, mut entry: Option<Entry>) {
        let revision = self.next_revision();
        if let Some(object) = entry.as_mut().and_then(|e| e.object.as_mut()) {
            object.mod_revision = revision;
        }
        let followed = self.kinds.entry(kind).or_default();
        let before = match &entry {
            Some(entry) => followed.entries.insert(identity, entry.clone()),
            None => followed.entries.remove(&identity),
        };
        let before = before.and_then(|e| e.object);
        let after = entry.and_then(|e| e.object);
        if let Some(old) = before.filter(|b| after.as_ref().is_none_or(|a| a.name != b.name)) {
            self.emit_change(StoredObject {
                kind,
                name: old.name,
                value: None,
                mod_revision: revision,
            });
        }
        if let Some(object) = after {
            self.emit_change(object);
        }
    }

    /// The resource versions a type's watch delivered, by object identity.
    fn versions(&self, kind: Kind) -> BTreeMap<&str, &str> {
        self.kinds
            .get(&kind)
            .map(|f| {
                f.entries
                    .iter()
                    .map(|(n, e)| (n.as_str(), e.version.as_str()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// How a followed type identifies an object (`namespace/name`, or `name`), names its record
/// and says what the record holds (`None`: policy does not see it).
type Namer<K> = fn(&K) -> Option<Named>;

/// What a [`Namer`] returns.
struct Named {
    identity: String,
    record: String,
    value: Option<Vec<u8>>,
}

fn pod_entry(p: &Pod) -> Option<Named> {
    let ns = p.metadata.namespace.as_deref()?;
    let name = p.metadata.name.as_deref()?;
    let node = p
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("");
    Some(Named {
        identity: format!("{ns}/{name}"),
        record: api_pod_name(node, ns, name),
        value: pod_record(p).and_then(|r| serde_json::to_vec(&r).ok()),
    })
}

fn namespace_entry(n: &Namespace) -> Option<Named> {
    let name = n.metadata.name.clone()?;
    Some(Named {
        identity: name.clone(),
        record: name,
        value: serde_json::to_vec(&namespace_record(n)).ok(),
    })
}

fn policy_entry(np: &NetworkPolicy) -> Option<Named> {
    let ns = np.metadata.namespace.as_deref()?;
    let name = np.metadata.name.as_deref()?;
    let identity = format!("{ns}/{name}");
    Some(Named {
        record: identity.clone(),
        identity,
        value: serde_json::to_vec(&policy_record(np)).ok(),
    })
}

/// An object's identity and entry.
fn entry_of<K>(kind: Kind, namer: Namer<K>, object: &K) -> Option<(String, Entry)>
where
    K: k8s_openapi::Metadata<Ty = kube::core::ObjectMeta>,
{
    let Named {
        identity,
        record,
        value,
    } = namer(object)?;
    let version = resource_version(object).unwrap_or_default();
    let object = value.map(|value| StoredObject {
        kind,
        name: record,
        value: Some(value),
        mod_revision: 0,
    });
    Some((identity, Entry { version, object }))
}

/// The object source's side of the API: what the watches delivered, shared by the watch
/// tasks, `Objects::local_pod` and `Objects::checkpoint`.
#[derive(Clone)]
pub(crate) struct Objects {
    client: Client,
    shared: Arc<Mutex<Shared>>,
    /// The pulses of the pod, namespace and NetworkPolicy watches, in that order.
    pulses: [Pulse; 3],
}

impl Objects {
    pub(crate) fn new(client: Client) -> Self {
        Self {
            client,
            shared: Arc::default(),
            pulses: Default::default(),
        }
    }

    /// The watches' loops by name, each with its [`Pulse`] (silent only while the loop is
    /// stuck).
    pub(crate) fn followers(&self) -> Vec<(&'static str, Pulse)> {
        let [pods, namespaces, policies] = self.pulses.clone();
        vec![
            ("the pod watch", pods),
            ("the namespace watch", namespaces),
            ("the NetworkPolicy watch", policies),
        ]
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts following (the watches start with the first call); the feed begins with a
    /// listing of everything once every type is listed.
    pub(crate) fn feed(&self) -> ObjectFeed {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (out, updates) = mpsc::channel(FEED_QUEUE);
        // The watch tasks emit under the lock, without waiting; this task carries the
        // updates on, in order, at the follower's pace.
        tokio::spawn(async move {
            while let Some(update) = rx.recv().await {
                if out.send(update).await.is_err() {
                    return;
                }
            }
        });
        let start = {
            let mut shared = self.lock();
            shared.feed = Some(tx);
            shared.emit_listing();
            !std::mem::replace(&mut shared.started, true)
        };
        if start {
            let [pods, namespaces, policies] = self.pulses.clone();
            self.spawn::<Pod>(Kind::Pods, "pods", pods, pod_entry);
            self.spawn::<Namespace>(Kind::Namespaces, "namespaces", namespaces, namespace_entry);
            self.spawn::<NetworkPolicy>(Kind::Policies, "networkpolicies", policies, policy_entry);
        }
        ObjectFeed {
            updates,
            progress: ProgressHandle::default(),
        }
    }

    /// Follows every object of type `K` in a task of its own.
    fn spawn<K: ApiObject>(&self, kind: Kind, what: &'static str, pulse: Pulse, namer: Namer<K>) {
        let api: Api<K> = Api::all(self.client.clone());
        let shared = self.shared.clone();
        tokio::spawn(follow(api, what, pulse, move |seen| {
            let mut shared = shared.lock().unwrap_or_else(|e| e.into_inner());
            match seen {
                Seen::Listed(items) => {
                    let entries = items
                        .iter()
                        .filter_map(|o| entry_of(kind, namer, o))
                        .collect();
                    shared.listed(kind, entries);
                }
                Seen::Applied(o) => {
                    if let Some((name, entry)) = entry_of(kind, namer, &o) {
                        shared.changed(kind, name, Some(entry));
                    }
                }
                Seen::Deleted(o) => {
                    if let Some((name, _)) = entry_of(kind, namer, &o) {
                        shared.changed(kind, name, None);
                    }
                }
            }
        }));
    }

    /// Adds (`Some`) or removes a pod this node attached; returns the revision of the update
    /// that carries it (the next listing's, when the types are not all listed yet).
    pub(crate) fn local_pod(&self, name: String, record: Option<&PodRecord>) -> i64 {
        let mut shared = self.lock();
        let revision = shared.next_revision();
        let object = StoredObject {
            kind: Kind::Pods,
            name: name.clone(),
            value: record.and_then(|r| serde_json::to_vec(r).ok()),
            mod_revision: revision,
        };
        match record {
            Some(_) => shared.local.insert(name, object.clone()),
            None => shared.local.remove(&name),
        };
        shared.emit_change(object);
        revision
    }

    /// Lists every type afresh and waits until the watches have delivered exactly what the
    /// listing holds; returns the revision of the last update emitted by then.
    pub(crate) async fn checkpoint(&self) -> Result<i64, StoreError> {
        let deadline = tokio::time::Instant::now() + CHECKPOINT_PATIENCE;
        loop {
            let listed = [
                (
                    Kind::Pods,
                    self.versions::<Pod>(Kind::Pods, pod_entry).await?,
                ),
                (
                    Kind::Namespaces,
                    self.versions::<Namespace>(Kind::Namespaces, namespace_entry)
                        .await?,
                ),
                (
                    Kind::Policies,
                    self.versions::<NetworkPolicy>(Kind::Policies, policy_entry)
                        .await?,
                ),
            ];
            {
                let shared = self.lock();
                let caught_up = shared.all_listed()
                    && listed.iter().all(|(kind, versions)| {
                        let seen = shared.versions(*kind);
                        seen.len() == versions.len()
                            && versions
                                .iter()
                                .all(|(n, v)| seen.get(n.as_str()) == Some(&v.as_str()))
                    });
                if caught_up {
                    return Ok(shared.revision);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::Unavailable(format!(
                    "the API watches did not catch up with a listing within {CHECKPOINT_PATIENCE:?}"
                )));
            }
            tokio::time::sleep(CHECKPOINT_POLL).await;
        }
    }

    /// Every object of type `K` now in the API (a consistent read), by identity.
    async fn listed<K: ApiObject>(
        &self,
        kind: Kind,
        namer: Namer<K>,
    ) -> Result<BTreeMap<String, Entry>, StoreError> {
        let api: Api<K> = Api::all(self.client.clone());
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(super::unavailable)?;
        Ok(list
            .items
            .iter()
            .filter_map(|o| entry_of(kind, namer, o))
            .collect())
    }

    /// Every object of type `K` now in the API: identity and resource version.
    async fn versions<K: ApiObject>(
        &self,
        kind: Kind,
        namer: Namer<K>,
    ) -> Result<BTreeMap<String, String>, StoreError> {
        let listed = self.listed(kind, namer).await?;
        Ok(listed.into_iter().map(|(id, e)| (id, e.version)).collect())
    }

    /// Every record now in the API (and this node's attached pods), read once.
    pub(crate) async fn list(&self) -> Result<Vec<StoredObject>, StoreError> {
        let records = |listed: BTreeMap<String, Entry>| {
            listed
                .into_values()
                .filter_map(|e| e.object)
                .collect::<Vec<_>>()
        };
        let mut out = records(self.listed::<Pod>(Kind::Pods, pod_entry).await?);
        out.extend(records(
            self.listed::<Namespace>(Kind::Namespaces, namespace_entry)
                .await?,
        ));
        out.extend(records(
            self.listed::<NetworkPolicy>(Kind::Policies, policy_entry)
                .await?,
        ));
        out.extend(self.lock().local.values().cloned());
        Ok(out)
    }
}

/// What the source follows and lists: a typed API object (pods, namespaces, policies).
trait ApiObject:
    k8s_openapi::Metadata<Ty = kube::core::ObjectMeta>
    + kube::Resource<DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + 'static
{
}

impl<K> ApiObject for K where
    K: k8s_openapi::Metadata<Ty = kube::core::ObjectMeta>
        + kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static
{
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(node: &str, name: &str, ip: Option<&str>, labels: serde_json::Value) -> Pod {
        let mut status = json!({ "phase": "Running" });
        if let Some(ip) = ip {
            status["podIPs"] = json!([{ "ip": ip }, { "ip": "fd00::5" }]);
        }
        serde_json::from_value(json!({
            "metadata": { "namespace": "x", "name": name, "uid": "u1", "labels": labels, "resourceVersion": "7" },
            "spec": {
                "nodeName": node,
                "containers": [{ "name": "c", "ports": [
                    { "name": "http", "containerPort": 80 },
                    { "containerPort": 53, "protocol": "UDP" },
                ]}],
            },
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn pods_become_records_once_they_have_an_address() {
        let record =
            pod_record(&pod("n1", "a", Some("10.244.1.5"), json!({"app": "web"}))).unwrap();
        assert_eq!(record.ip.to_string(), "10.244.1.5");
        assert_eq!(record.ipv6.unwrap().to_string(), "fd00::5");
        assert_eq!(record.node, "n1");
        assert_eq!(record.labels["app"], "web");
        assert_eq!(record.ports.len(), 2);
        assert_eq!(record.ports[0].name.as_deref(), Some("http"));
        assert_eq!(record.ports[1].protocol, PortProtocol::Udp);
        assert!(
            pod_record(&pod("n1", "a", None, json!({}))).is_none(),
            "no address yet"
        );
        let mut host = pod("n1", "h", Some("172.30.0.11"), json!({}));
        host.spec.as_mut().unwrap().host_network = Some(true);
        assert!(
            pod_record(&host).is_none(),
            "host network pods are the node's"
        );
        let mut done = pod("n1", "d", Some("10.244.1.6"), json!({}));
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert!(pod_record(&done).is_none(), "finished pods hold no address");
    }

    /// An entry under its identity: the record name without a leading node segment.
    fn entry(kind: Kind, name: &str, version: &str, seen: bool) -> (String, Entry) {
        let object = seen.then(|| StoredObject {
            kind,
            name: name.into(),
            value: Some(b"{}".to_vec()),
            mod_revision: 0,
        });
        let identity = match kind {
            Kind::Pods => name.split_once('/').map_or(name, |(_, rest)| rest),
            _ => name,
        };
        (
            identity.into(),
            Entry {
                version: version.into(),
                object,
            },
        )
    }

    fn drain(rx: &mut mpsc::UnboundedReceiver<ObjectUpdate>) -> Vec<ObjectUpdate> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    #[test]
    fn nothing_is_emitted_until_every_type_is_listed_then_updates_are_numbered() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut shared = Shared {
            feed: Some(tx),
            ..Shared::default()
        };
        shared.listed(Kind::Pods, [entry(Kind::Pods, "n1/x/a", "5", true)].into());
        shared.changed(
            Kind::Pods,
            "x/b".into(),
            Some(entry(Kind::Pods, "n1/x/b", "6", true).1),
        );
        shared.listed(Kind::Namespaces, BTreeMap::new());
        assert!(drain(&mut rx).is_empty(), "policies are not listed yet");
        // A pod attached meanwhile is carried by the first listing.
        let local = PodRecord {
            namespace: "x".into(),
            name: "c".into(),
            node: "n1".into(),
            container_id: "cid".into(),
            ip: "10.244.1.9".parse().unwrap(),
            ipv6: None,
            labels: BTreeMap::new(),
            ports: Vec::new(),
        };
        let revision = shared.next_revision();
        shared.local.insert(
            local_pod_name("n1", "cid"),
            StoredObject {
                kind: Kind::Pods,
                name: local_pod_name("n1", "cid"),
                value: serde_json::to_vec(&local).ok(),
                mod_revision: revision,
            },
        );
        shared.listed(
            Kind::Policies,
            [entry(Kind::Policies, "x/deny", "8", true)].into(),
        );
        let updates = drain(&mut rx);
        let [ObjectUpdate::Listed {
            revision: 1,
            objects,
        }] = updates.as_slice()
        else {
            panic!("one listing first, got {updates:?}");
        };
        let names: Vec<&str> = objects.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["n1/x/a", "n1/x/b", "x/deny", "n1/cid"]);
        assert!(objects.iter().all(|o| o.mod_revision == 1));

        // A change: numbered 2, and the record carries its revision.
        shared.changed(
            Kind::Pods,
            "x/a".into(),
            Some(entry(Kind::Pods, "n1/x/a", "9", true).1),
        );
        // An object policy does not see, created and deleted: nothing to say.
        shared.changed(
            Kind::Pods,
            "x/h".into(),
            Some(entry(Kind::Pods, "n1/x/h", "10", false).1),
        );
        shared.changed(Kind::Pods, "x/h".into(), None);
        // A deletion of a seen one: a record with no value.
        shared.changed(Kind::Policies, "x/deny".into(), None);
        let updates = drain(&mut rx);
        assert_eq!(updates.len(), 2, "{updates:?}");
        let ObjectUpdate::Changed {
            revision: 2,
            objects,
        } = &updates[0]
        else {
            panic!("{updates:?}");
        };
        assert_eq!(
            (objects[0].name.as_str(), objects[0].mod_revision),
            ("n1/x/a", 2)
        );
        let ObjectUpdate::Changed {
            revision: 3,
            objects,
        } = &updates[1]
        else {
            panic!("{updates:?}");
        };
        assert_eq!(
            (objects[0].name.as_str(), objects[0].value.as_ref()),
            ("x/deny", None)
        );
        // What a checkpoint compares: every API object's version, seen by policy or not.
        assert_eq!(
            shared.versions(Kind::Pods),
            BTreeMap::from([("x/a", "9"), ("x/b", "6")])
        );
    }

    #[test]
    fn a_pod_scheduled_after_it_was_seen_is_one_object() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut shared = Shared {
            feed: Some(tx),
            ..Shared::default()
        };
        for kind in Kind::ALL {
            shared.listed(kind, BTreeMap::new());
        }
        drain(&mut rx);
        // Created unscheduled (no node, no address: no record), then bound, then running.
        let (id, unscheduled) = entry(Kind::Pods, "/x/p", "3", false);
        shared.changed(Kind::Pods, id.clone(), Some(unscheduled));
        shared.changed(
            Kind::Pods,
            id.clone(),
            Some(entry(Kind::Pods, "n1/x/p", "4", false).1),
        );
        shared.changed(
            Kind::Pods,
            id.clone(),
            Some(entry(Kind::Pods, "n1/x/p", "5", true).1),
        );
        // A checkpoint's listing holds the pod once, as the watch does.
        assert_eq!(shared.versions(Kind::Pods), BTreeMap::from([("x/p", "5")]));
        let updates = drain(&mut rx);
        assert_eq!(
            updates.len(),
            1,
            "only the running pod is a record: {updates:?}"
        );
        // Its record moving (a record name with another node) removes the old one.
        shared.changed(
            Kind::Pods,
            id.clone(),
            Some(entry(Kind::Pods, "n2/x/p", "6", true).1),
        );
        let names: Vec<(String, bool)> = drain(&mut rx)
            .into_iter()
            .flat_map(|u| match u {
                ObjectUpdate::Changed { objects, .. } => objects,
                other => panic!("{other:?}"),
            })
            .map(|o| (o.name, o.value.is_some()))
            .collect();
        assert_eq!(
            names,
            [("n1/x/p".to_string(), false), ("n2/x/p".to_string(), true)]
        );
        shared.changed(Kind::Pods, id, None);
        let gone = drain(&mut rx);
        let [ObjectUpdate::Changed { objects, .. }] = gone.as_slice() else {
            panic!("{gone:?}");
        };
        assert_eq!(
            (objects[0].name.as_str(), objects[0].value.is_none()),
            ("n2/x/p", true)
        );
        assert!(shared.versions(Kind::Pods).is_empty());
    }
}
