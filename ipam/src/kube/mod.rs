//! The Kubernetes implementation of [`Store`] and [`ObjectSource`]: fabric on the API
//! server, as Flannel's kube subnet manager runs.
//!
//! - A node's subnet is its `spec.podCIDRs` (one per family), assigned by
//!   kube-controller-manager's node IPAM; fabric never allocates. The backend type, backend
//!   data and public IP are annotations under a prefix (default `fabric.dev`), patched on
//!   `nodes/status`, and the node condition `NetworkUnavailable=False` is set once its routes
//!   are programmed ([`node`]).
//! - Peers are every Node that carries those annotations and a podCIDR, followed by a watch
//!   (`follow`); a node deleted from the API is a peer gone.
//! - Pods, Namespaces and NetworkPolicies are the API's own ([`objects`]); `register_pod`
//!   reads the pod being attached from the API (labels, ports) so policy knows it before its
//!   `status.podIPs` are written.
//! - The network config is Flannel's net-conf.json, read from a file (the ConfigMap mounted
//!   into the DaemonSet's pod).

mod follow;
pub mod node;
pub mod objects;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use tokio::sync::watch;

use crate::backoff::Pulse;
use crate::config::NetworkConfig;
use crate::lease::{Lease, LeaseRequest, Leases};
use crate::objects::{PodRecord, StoredObject};
use crate::store::{ObjectFeed, ObjectSource, Renewal, Store, StoreError};
use follow::Seen;
use node::Annotations;

/// The field manager fabric's patches are recorded under.
const FIELD_MANAGER: &str = "fabricd";

pub(crate) fn unavailable(e: kube::Error) -> StoreError {
    StoreError::Unavailable(format!("kubernetes API: {e}"))
}

/// Where to find the API server and how to authenticate.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// A kubeconfig file (its current context).
    Kubeconfig(PathBuf),
    /// The pod's service account (`KUBERNETES_SERVICE_HOST`/`_PORT`, the mounted token and CA).
    InCluster,
}

/// A client of the API server.
pub async fn client(credentials: &Credentials) -> Result<Client, StoreError> {
    let config = match credentials {
        Credentials::Kubeconfig(path) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| {
                StoreError::Unavailable(format!("reading kubeconfig {}: {e}", path.display()))
            })?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| {
                    StoreError::Unavailable(format!("kubeconfig {}: {e}", path.display()))
                })?
        }
        Credentials::InCluster => Config::incluster().map_err(|e| {
            StoreError::Unavailable(format!(
                "no in-cluster config ({e}): run in a pod with a service account, or pass --kubeconfig"
            ))
        })?,
    };
    Client::try_from(config).map_err(|e| StoreError::Unavailable(format!("kubernetes client: {e}")))
}

/// fabric's datastore in the Kubernetes API.
#[derive(Clone)]
pub struct KubeStore {
    client: Client,
    nodes: Api<Node>,
    names: Annotations,
    net_config: PathBuf,
    objects: objects::Objects,
    /// The node watch's pulse (every lease watch's loop).
    node_pulse: Pulse,
}

impl KubeStore {
    /// A store on `client`, with annotations under `prefix` and the network config at
    /// `net_config`.
    pub fn new(client: Client, prefix: &str, net_config: &Path) -> Self {
        Self {
            nodes: Api::all(client.clone()),
            names: Annotations::new(prefix),
            net_config: net_config.to_owned(),
            objects: objects::Objects::new(client.clone()),
            client,
            node_pulse: Pulse::default(),
        }
    }

    /// The store's watches by name, each with the [`Pulse`] its loop beats at least every
    /// 10 s, the API reachable or not: the node watch ([`Store::watch_leases`]) and the pod,
    /// namespace and NetworkPolicy watches ([`ObjectSource::follow`]).
    pub fn followers(&self) -> Vec<(&'static str, Pulse)> {
        let mut out = vec![("the node watch", self.node_pulse.clone())];
        out.extend(self.objects.followers());
        out
    }

    /// Connects with `credentials` (the first request is made by the first call).
    pub async fn connect(
        credentials: &Credentials,
        prefix: &str,
        net_config: &Path,
    ) -> Result<Self, StoreError> {
        Ok(Self::new(client(credentials).await?, prefix, net_config))
    }

    async fn node(&self, name: &str) -> Result<Node, StoreError> {
        self.nodes
            .get_opt(name)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| StoreError::NoSuchNode(name.to_owned()))
    }

    async fn patch_status(
        &self,
        name: &str,
        patch: Patch<serde_json::Value>,
    ) -> Result<(), StoreError> {
        self.nodes
            .patch_status(name, &PatchParams::apply(FIELD_MANAGER), &patch)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Every pod policy sees, as its record (for `fabricctl pod list`).
    pub async fn pods(&self) -> Result<Vec<PodRecord>, StoreError> {
        let api: Api<Pod> = Api::all(self.client.clone());
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(unavailable)?;
        Ok(list.items.iter().filter_map(objects::pod_record).collect())
    }
}

#[async_trait]
impl Store for KubeStore {
    async fn network_config(&self) -> Result<NetworkConfig, StoreError> {
        let text = std::fs::read_to_string(&self.net_config).map_err(|e| {
            StoreError::Unavailable(format!(
                "reading the network config {} (--net-config-path): {e}",
                self.net_config.display()
            ))
        })?;
        Ok(NetworkConfig::parse(&text)?)
    }

    async fn acquire_lease(&self, request: &LeaseRequest) -> Result<Lease, StoreError> {
        let config = self.network_config().await?;
        let node = self.node(&request.node).await?;
        let (subnet, ipv6_subnet) = node::own_subnets(&node, &request.node, &config)?;
        let values = self.names.values(request);
        if !Annotations::published(&node, &values) {
            self.patch_status(&request.node, Patch::Merge(Annotations::patch(&values)))
                .await?;
        }
        let mut lease = request.granted(subnet, ipv6_subnet, 0);
        lease.ttl_secs = None;
        Ok(lease)
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<Renewal, StoreError> {
        let node = match self.node(&lease.node).await {
            Ok(node) => node,
            Err(StoreError::NoSuchNode(_)) => return Ok(Renewal::Lost),
            Err(e) => return Err(e),
        };
        match node::pod_cidrs(&node) {
            Ok((Some(v4), v6)) if v4 == lease.subnet && v6 == lease.ipv6_subnet => {}
            _ => return Ok(Renewal::Lost),
        }
        // Annotations someone removed are put back.
        if node::lease_of(&node, &self.names).as_ref() != Some(lease) {
            let request = LeaseRequest {
                node: lease.node.clone(),
                public_ip: lease.public_ip,
                backend_type: lease.backend_type.clone(),
                backend_data: lease.backend_data.clone(),
                previous: None,
                ttl_secs: 0,
            };
            let values = self.names.values(&request);
            self.patch_status(&lease.node, Patch::Merge(Annotations::patch(&values)))
                .await?;
        }
        Ok(Renewal::Renewed)
    }

    async fn list_leases(&self) -> Result<Vec<Lease>, StoreError> {
        let list = self
            .nodes
            .list(&ListParams::default())
            .await
            .map_err(unavailable)?;
        Ok(list
            .items
            .iter()
            .filter_map(|n| node::lease_of(n, &self.names))
            .collect())
    }

    async fn watch_leases(&self) -> Result<watch::Receiver<Leases>, StoreError> {
        let (tx, rx) = watch::channel(Leases::default());
        let names = self.names.clone();
        let mut by_node: BTreeMap<String, Lease> = BTreeMap::new();
        let pulse = self.node_pulse.clone();
        tokio::spawn(follow::follow(
            self.nodes.clone(),
            "nodes",
            pulse,
            move |seen| {
                match seen {
                    Seen::Listed(nodes) => {
                        by_node = nodes
                            .iter()
                            .filter_map(|n| node::lease_of(n, &names))
                            .map(|l| (l.node.clone(), l))
                            .collect();
                    }
                    Seen::Applied(n) => {
                        let Some(name) = n.metadata.name.clone() else {
                            return;
                        };
                        match node::lease_of(&n, &names) {
                            Some(lease) => by_node.insert(name, lease),
                            None => by_node.remove(&name),
                        };
                    }
                    Seen::Deleted(n) => {
                        if let Some(name) = &n.metadata.name {
                            by_node.remove(name);
                        }
                    }
                }
                let leases: BTreeMap<_, _> =
                    by_node.values().map(|l| (l.subnet, l.clone())).collect();
                tx.send_if_modified(|current| {
                    let changed = **current != leases;
                    if changed {
                        *current = Arc::new(leases);
                    }
                    changed
                });
            },
        ));
        Ok(rx)
    }

    async fn register_pod(&self, pod: &PodRecord) -> Result<Option<i64>, StoreError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let mut record = pod.clone();
        match api.get_opt(&pod.name).await.map_err(unavailable)? {
            Some(found) => {
                record.labels = found.metadata.labels.clone().unwrap_or_default();
                record.ports = objects::container_ports(&found);
            }
            None => tracing::warn!(
                namespace = %pod.namespace,
                pod = %pod.name,
                "the pod being attached is not in the API; policy sees it without labels"
            ),
        }
        let name = objects::local_pod_name(&pod.node, &pod.container_id);
        Ok(Some(self.objects.local_pod(name, Some(&record))))
    }

    async fn unregister_pod(&self, node: &str, container_id: &str) -> Result<(), StoreError> {
        self.objects
            .local_pod(objects::local_pod_name(node, container_id), None);
        Ok(())
    }

    async fn data_path_ready(&self, lease: &Lease) -> Result<(), StoreError> {
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        self.patch_status(
            &lease.node,
            Patch::Strategic(node::network_available_patch(&now)),
        )
        .await
    }
}

#[async_trait]
impl ObjectSource for KubeStore {
    async fn follow(&self) -> Result<ObjectFeed, StoreError> {
        Ok(self.objects.feed())
    }

    async fn list_objects(&self) -> Result<(i64, Vec<StoredObject>), StoreError> {
        Ok((0, self.objects.list().await?))
    }

    async fn checkpoint(&self) -> Result<i64, StoreError> {
        self.objects.checkpoint().await
    }
}
