//! Which datastore a fabric binary talks to and how it reaches it: the flags `fabricd` and
//! `fabricctl` share (`--datastore`, etcd's endpoints and prefix, the Kubernetes API's
//! kubeconfig, net-conf.json path and annotation prefix), and the connection they make.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use ipam::etcd::EtcdStore;
use ipam::kube::{Credentials, KubeStore};
use ipam::{ObjectSource, Store, StoreError};

/// Where the cluster's state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Datastore {
    /// etcd (bare metal): leases, network config, pods, namespaces and policies under a prefix.
    Etcd,
    /// The Kubernetes API: subnets from the nodes' podCIDRs, pods, namespaces and
    /// NetworkPolicies from the API, the network config from a file.
    Kubernetes,
}

/// The datastore flags. Each is also an environment variable.
#[derive(Debug, Clone, Args)]
pub struct DatastoreFlags {
    /// Where the cluster's state lives: etcd, or kubernetes (subnets from each node's
    /// spec.podCIDRs, policies and pods from the API).
    #[arg(long, env = "FABRIC_DATASTORE", value_enum, default_value_t = Datastore::Etcd, global = true)]
    pub datastore: Datastore,

    /// Flannel's spelling of `--datastore kubernetes`.
    #[arg(long, env = "FABRIC_KUBE_SUBNET_MGR", global = true)]
    pub kube_subnet_mgr: bool,

    /// etcd endpoints, comma-separated.
    #[arg(
        long,
        env = "FABRIC_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379",
        global = true
    )]
    pub etcd_endpoints: Vec<String>,

    /// Key prefix of fabric's data in etcd.
    #[arg(
        long,
        env = "FABRIC_ETCD_PREFIX",
        default_value = "/fabric",
        global = true
    )]
    pub etcd_prefix: String,

    /// kubeconfig for the Kubernetes API [default: the pod's service account (in-cluster)].
    #[arg(
        long,
        visible_alias = "kubeconfig-file",
        env = "FABRIC_KUBECONFIG",
        global = true
    )]
    pub kubeconfig: Option<PathBuf>,

    /// The network config in Kubernetes mode: Flannel's net-conf.json (the DaemonSet mounts
    /// it from the ConfigMap).
    #[arg(
        long,
        env = "FABRIC_NET_CONFIG_PATH",
        default_value = "/etc/fabric/net-conf.json",
        global = true
    )]
    pub net_config_path: PathBuf,

    /// Prefix of the node annotations fabric publishes its backend data under (Kubernetes).
    #[arg(
        long,
        env = "FABRIC_KUBE_ANNOTATION_PREFIX",
        default_value = "fabric.dev",
        global = true
    )]
    pub kube_annotation_prefix: String,
}

/// A connected datastore: the same object behind both seams.
#[derive(Clone)]
pub enum Connected {
    /// etcd.
    Etcd(Arc<EtcdStore>),
    /// The Kubernetes API.
    Kubernetes(Arc<KubeStore>),
}

impl Connected {
    /// The lease seam.
    pub fn store(&self) -> Arc<dyn Store> {
        match self {
            Connected::Etcd(s) => s.clone(),
            Connected::Kubernetes(s) => s.clone(),
        }
    }

    /// The policy object seam.
    pub fn source(&self) -> Arc<dyn ObjectSource> {
        match self {
            Connected::Etcd(s) => s.clone(),
            Connected::Kubernetes(s) => s.clone(),
        }
    }
}

impl DatastoreFlags {
    /// The datastore chosen (`--kube-subnet-mgr` counts as `--datastore kubernetes`).
    pub fn kind(&self) -> Datastore {
        if self.kube_subnet_mgr {
            Datastore::Kubernetes
        } else {
            self.datastore
        }
    }

    /// Connects to the chosen datastore.
    pub async fn connect(&self) -> Result<Connected, StoreError> {
        Ok(match self.kind() {
            Datastore::Etcd => {
                let etcd = EtcdStore::connect(&self.etcd_endpoints, &self.etcd_prefix).await?;
                Connected::Etcd(Arc::new(etcd))
            }
            Datastore::Kubernetes => {
                let credentials = match &self.kubeconfig {
                    Some(path) => Credentials::Kubeconfig(path.clone()),
                    None => Credentials::InCluster,
                };
                Connected::Kubernetes(Arc::new(
                    KubeStore::connect(
                        &credentials,
                        &self.kube_annotation_prefix,
                        &self.net_config_path,
                    )
                    .await?,
                ))
            }
        })
    }
}
