//! The lab's state dir and the JSON state file in it, rewritten (atomically) after every change
//! so that `status`, `exec`, `down` and [`crate::Lab::attach`] in another process see the lab.
//!
//! Layout of `/run/fabric-lab/NAME/`:
//!
//! ```text
//! state.json                 LabState: spec, namespaces, processes, nodes, pods
//! net-conf.json              the network config given to `fabricctl config set`
//! cni/10-fabric.conflist     the default conflist (each node's `socket` is filled in per call)
//! etcd/                      etcd's data dir (either mode; the first member's)
//! etcd2/, etcd3/, ...        the other members' data dirs (`--etcd-members N`)
//! logs/etcd.log              etcd's stdout+stderr (logs/etcd2.log, ... for the others)
//! logs/kube-*.log            kube-apiserver's and kube-controller-manager's (Kubernetes mode)
//! logs/nodeK.log             fabricd's stdout+stderr on nodeK (appended across restarts)
//! nodes/nodeK/               fabricd's --state-dir on nodeK
//! nodes/nodeK/fabricd.sock   fabricd's local API socket on nodeK
//! nodes/nodeK/kubeconfig     fabricd's kubeconfig: the `fabric` ServiceAccount's token
//! nodes/nodeK/kubelet.kubeconfig  the kubelet role's: client cert system:node:nodeK
//! nodes/nodeK/kubelet/       the kubelet role's state.json and per-pod dirs (pods/<uid>/)
//! logs/kubelet-nodeK.log     the kubelet role on nodeK (Kubernetes mode)
//! logs/kube-proxy-nodeK.log  kube-proxy on nodeK (Kubernetes mode with services)
//! logs/pods/NS_NAME_UID/C.log  container C's output (the kubelet role's workloads)
//! kube/pki/                  the lab CA, serving and client certificates, service-account key
//! kube/admin.kubeconfig      system:masters, for the lab's own kubectl calls
//! kube/<component>.kubeconfig  kube-controller-manager's
//! kube/cache/                kubectl's discovery cache
//! ```

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};

use crate::process::Daemon;
use crate::spec::{Backend, Datastore, Reservation};

/// Where every lab's state dir lives.
pub const STATE_ROOT: &str = "/run/fabric-lab";

/// The version of [`LabState`]'s JSON shape.
pub const STATE_VERSION: u32 = 1;

/// The paths of one lab's state dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout of lab `name` under [`STATE_ROOT`].
    pub fn for_lab(name: &str) -> Self {
        Layout::at(Path::new(STATE_ROOT).join(name))
    }

    /// A layout rooted at `dir`.
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Layout { root: dir.into() }
    }

    /// The state dir itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `state.json`.
    pub fn state_file(&self) -> PathBuf {
        self.root.join("state.json")
    }

    /// `net-conf.json`.
    pub fn net_conf(&self) -> PathBuf {
        self.root.join("net-conf.json")
    }

    /// `cni/`.
    pub fn cni_dir(&self) -> PathBuf {
        self.root.join("cni")
    }

    /// `cni/10-fabric.conflist`.
    pub fn conflist(&self) -> PathBuf {
        self.cni_dir().join("10-fabric.conflist")
    }

    /// `etcd/`.
    pub fn etcd_data(&self) -> PathBuf {
        self.etcd_member_data(&crate::topology::etcd_member(1))
    }

    /// `<member>/`: etcd member `member`'s data dir (`etcd/`, `etcd2/`, ...).
    pub fn etcd_member_data(&self, member: &str) -> PathBuf {
        self.root.join(member)
    }

    /// `logs/`.
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// `logs/<member>.log`.
    pub fn log(&self, member: &str) -> PathBuf {
        self.logs().join(format!("{member}.log"))
    }

    /// `nodes/<node>/`.
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.root.join("nodes").join(node)
    }

    /// `nodes/<node>/fabricd.sock`.
    pub fn node_socket(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("fabricd.sock")
    }

    /// `nodes/<node>/kubeconfig`: fabricd's credentials in Kubernetes mode.
    pub fn node_kubeconfig(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("kubeconfig")
    }

    /// `nodes/<node>/kubelet.kubeconfig`: the kubelet role's credentials (`system:node:NODE`).
    pub fn kubelet_kubeconfig(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("kubelet.kubeconfig")
    }

    /// `nodes/<node>/kubelet/`: the kubelet role's own state.
    pub fn kubelet_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("kubelet")
    }

    /// `nodes/<node>/kubelet/state.json`: the pods the kubelet role runs on `node`.
    pub fn kubelet_state(&self, node: &str) -> PathBuf {
        self.kubelet_dir(node).join("state.json")
    }

    /// `logs/pods/<ns>_<name>_<uid>/<container>.log`, as kubelet lays out `/var/log/pods`.
    pub fn container_log(&self, namespace: &str, pod: &str, uid: &str, container: &str) -> PathBuf {
        self.logs()
            .join("pods")
            .join(format!("{namespace}_{pod}_{uid}"))
            .join(format!("{container}.log"))
    }

    /// `kube/`: the Kubernetes control plane's files.
    pub fn kube_dir(&self) -> PathBuf {
        self.root.join("kube")
    }

    /// `kube/pki/`: the lab CA and the certificates and keys it signed.
    pub fn pki(&self) -> PathBuf {
        self.kube_dir().join("pki")
    }

    /// `kube/<user>.kubeconfig`.
    pub fn kubeconfig(&self, user: &str) -> PathBuf {
        self.kube_dir().join(format!("{user}.kubeconfig"))
    }

    /// `kube/admin.kubeconfig` (system:masters).
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.kubeconfig("admin")
    }

    /// `kube/cache/`: kubectl's discovery cache (kept out of `$HOME`).
    pub fn kubectl_cache(&self) -> PathBuf {
        self.kube_dir().join("cache")
    }

    /// Creates the state dir and its fixed subdirectories. Fails if the state dir exists:
    /// creating it is what claims the lab's name.
    pub fn create(&self) -> Result<()> {
        if let Some(parent) = self.root.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::create_dir(&self.root)
            .with_context(|| format!("creating {}", self.root.display()))?;
        for dir in [self.cni_dir(), self.etcd_data(), self.logs()] {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(())
    }
}

/// Names of the labs that have a state dir under `root`.
pub fn known_labs(root: &Path) -> Vec<String> {
    let mut labs: Vec<String> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    labs.sort();
    labs
}

/// A node as the lab built it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// `nodeK`.
    pub name: String,
    /// `LAB-nodeK`.
    pub netns: String,
    /// `172.30.0.(10+K)`.
    pub underlay_ip: Ipv4Addr,
    /// fabricd's local API socket.
    pub socket: PathBuf,
    /// fabricd's `--state-dir`.
    pub state_dir: PathBuf,
    /// fabricd's stdout+stderr.
    pub log: PathBuf,
    /// The pod subnet fabricd leased, as last seen in `fabricctl leases`.
    #[serde(default)]
    pub subnet: Option<String>,
    /// fabricd, while the lab has it running.
    #[serde(default)]
    pub fabricd: Option<Daemon>,
    /// Flags fabricd gets after the lab's own (e.g. `--network-policy=false`).
    #[serde(default)]
    pub fabricd_flags: Vec<String>,
    /// The kubelet role (Kubernetes mode), while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubelet: Option<Daemon>,
    /// kube-proxy (Kubernetes mode with services), while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_proxy: Option<Daemon>,
}

impl Node {
    /// fabricd's PID, if the lab started it and has not stopped it.
    pub fn pid(&self) -> Option<i32> {
        self.fabricd.as_ref().map(|d| d.pid)
    }

    /// Is fabricd running?
    pub fn running(&self) -> bool {
        self.fabricd.as_ref().is_some_and(Daemon::is_running)
    }
}

/// A pod attached through the CNI plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    /// The pod's name (`K8S_POD_NAME`).
    pub name: String,
    /// The pod's Kubernetes namespace (`K8S_POD_NAMESPACE`).
    pub namespace: String,
    /// Its network namespace; also its `CNI_CONTAINERID`.
    pub netns: String,
    /// The node it runs on.
    pub node: String,
    /// The first address of the CNI result.
    pub ip: Ipv4Addr,
    /// Its IPv6 address, on a dual-stack lab.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<std::net::Ipv6Addr>,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// The conflist it was attached with (`socket` filled in).
    pub conflist: serde_json::Value,
    /// The CNI ADD result, passed as `prevResult` on DEL and CHECK (libcni's cache).
    pub result: serde_json::Value,
    /// The capability arguments ADD was given (`ips`, `labels`, `portMappings`, ...), passed
    /// again on CHECK and DEL as a runtime does.
    #[serde(default)]
    pub capability_args: serde_json::Map<String, serde_json::Value>,
    /// The Pod object's `metadata.uid` (Kubernetes mode; `K8S_POD_UID` in `CNI_ARGS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

impl Pod {
    /// `name` in the default namespace, `namespace/name` elsewhere.
    pub fn qualified_name(&self) -> String {
        if self.namespace == crate::topology::DEFAULT_POD_NAMESPACE {
            self.name.clone()
        } else {
            format!("{}/{}", self.namespace, self.name)
        }
    }
}

/// One member of the lab's etcd cluster (etcd mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdMember {
    /// `etcd`, `etcd2`, ...: etcd's `--name`, the `exec` target, the log's name.
    pub name: String,
    /// `LAB-etcd`, `LAB-etcd2`, ...
    pub netns: String,
    /// Its underlay address (clients on 2379, peers on 2380).
    pub ip: Ipv4Addr,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// Its stdout+stderr (appended across restarts).
    pub log: PathBuf,
    /// etcd, while the lab has it running.
    #[serde(default)]
    pub daemon: Option<Daemon>,
}

impl EtcdMember {
    /// Is this member's etcd running?
    pub fn running(&self) -> bool {
        self.daemon.as_ref().is_some_and(Daemon::is_running)
    }
}

/// A control-plane daemon (Kubernetes mode): what it is and its process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    /// `etcd`, `kube-apiserver`, `kube-controller-manager`; also its log's name.
    pub name: String,
    /// Its process.
    pub daemon: Daemon,
}

/// What the state file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabState {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// The lab's name.
    pub name: String,
    /// The backend the nodes run.
    pub backend: Backend,
    /// Where the nodes keep their state.
    #[serde(default)]
    pub datastore: Datastore,
    /// The pod network.
    pub network: String,
    /// Node subnet length.
    pub subnet_len: u8,
    /// The IPv6 pod network of a dual-stack lab.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_network: Option<String>,
    /// Lease TTL given to fabricd.
    #[serde(with = "humantime_duration")]
    pub lease_ttl: Duration,
    /// Where the fabric binaries are.
    pub bin_dir: PathBuf,
    /// Where the pinned etcd and Kubernetes binaries are (Kubernetes mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_bin_dir: Option<PathBuf>,
    /// Whether the Kubernetes-mode lab runs Services and DNS: kube-scheduler, kube-proxy on
    /// every node, CoreDNS (`fabric-lab up --no-services` turns them off).
    #[serde(default)]
    pub services: bool,
    /// kube-proxy's mode, when services run.
    #[serde(default)]
    pub proxy_mode: crate::kube::proxy::ProxyMode,
    /// Reservations made before the nodes started.
    #[serde(default)]
    pub reservations: Vec<Reservation>,
    /// Every namespace the lab created (recorded just before creating it), in order.
    pub namespaces: Vec<String>,
    /// The etcd cluster's members (etcd mode), in order; the first is `etcd`. (Earlier
    /// state files had one `etcd` daemon instead; it is ignored, and teardown still ends it as
    /// a process inside the lab's namespaces.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub etcd_members: Vec<EtcdMember>,
    /// The Kubernetes control plane's daemons in start order (Kubernetes mode), each recorded
    /// as soon as it is started; stopped in reverse order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub control_plane: Vec<Component>,
    /// The nodes, in order.
    pub nodes: Vec<Node>,
    /// The pods, in creation order.
    pub pods: Vec<Pod>,
}

impl LabState {
    /// Reads the state file of `layout`.
    pub fn load(layout: &Layout) -> Result<Self> {
        let path = layout.state_file();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let state: LabState =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        ensure!(
            state.version == STATE_VERSION,
            "{} has state version {}, this fabric-lab reads version {STATE_VERSION}",
            path.display(),
            state.version
        );
        Ok(state)
    }

    /// Writes the state file of `layout` atomically (temporary file, then rename).
    pub fn save(&self, layout: &Layout) -> Result<()> {
        let path = layout.state_file();
        let tmp = path.with_extension("json.tmp");
        let mut text = serde_json::to_vec_pretty(self).context("serializing lab state")?;
        text.push(b'\n');
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))
    }

    /// The control-plane daemon called `name`, if started.
    pub fn component(&self, name: &str) -> Option<&Daemon> {
        self.control_plane
            .iter()
            .find(|c| c.name == name)
            .map(|c| &c.daemon)
    }

    /// The etcd member called `name` (`etcd`, `etcd2`, ...).
    pub fn etcd_member(&self, name: &str) -> Option<&EtcdMember> {
        self.etcd_members.iter().find(|m| m.name == name)
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The pod `target` names: its qualified name (`ns/name`, or `name` in `default`), its
    /// network namespace, or its bare name when that is unambiguous.
    pub fn find_pod(&self, target: &str) -> Option<&Pod> {
        self.pods
            .iter()
            .find(|p| p.qualified_name() == target || p.netns == target)
            .or_else(|| {
                let mut same_name = self.pods.iter().filter(|p| p.name == target);
                match (same_name.next(), same_name.next()) {
                    (Some(p), None) => Some(p),
                    _ => None,
                }
            })
    }

    /// Records a namespace about to be created (once).
    pub fn record_netns(&mut self, netns: &str) {
        if !self.namespaces.iter().any(|n| n == netns) {
            self.namespaces.push(netns.to_string());
        }
    }
}

/// Durations as humantime text (`1day`, `90s`) in the state file.
mod humantime_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(layout: &Layout) -> LabState {
        LabState {
            version: STATE_VERSION,
            name: "t".into(),
            backend: Backend::HostGw,
            datastore: Datastore::Etcd,
            network: "10.244.0.0/16".into(),
            subnet_len: 24,
            ipv6_network: None,
            lease_ttl: Duration::from_secs(86400),
            bin_dir: "/w/target/release".into(),
            kube_bin_dir: None,
            services: false,
            proxy_mode: Default::default(),
            reservations: vec!["10.244.1.0/24=node1".parse().unwrap()],
            namespaces: vec!["t-sw".into(), "t-etcd".into(), "t-node1".into()],
            etcd_members: vec![EtcdMember {
                name: "etcd".into(),
                netns: "t-etcd".into(),
                ip: Ipv4Addr::new(172, 30, 0, 2),
                data_dir: layout.etcd_data(),
                log: layout.log("etcd"),
                daemon: Some(Daemon {
                    pid: 42,
                    binary: "/usr/bin/etcd".into(),
                    start_time: 7,
                }),
            }],
            control_plane: Vec::new(),
            nodes: vec![Node {
                name: "node1".into(),
                netns: "t-node1".into(),
                underlay_ip: Ipv4Addr::new(172, 30, 0, 11),
                socket: layout.node_socket("node1"),
                state_dir: layout.node_dir("node1"),
                log: layout.log("node1"),
                subnet: Some("10.244.1.0/24".into()),
                fabricd: None,
                fabricd_flags: Vec::new(),
                kubelet: None,
                kube_proxy: None,
            }],
            pods: vec![
                pod("a", "x", "t-x-a"),
                pod("a", "y", "t-y-a"),
                pod("node1-pod1", "default", "t-node1-pod1"),
            ],
        }
    }

    fn pod(name: &str, ns: &str, netns: &str) -> Pod {
        Pod {
            name: name.into(),
            namespace: ns.into(),
            netns: netns.into(),
            node: "node1".into(),
            ip: Ipv4Addr::new(10, 244, 1, 10),
            ipv6: None,
            container_id: netns.into(),
            ifname: "eth0".into(),
            conflist: serde_json::json!({"name": "fabric"}),
            result: serde_json::json!({"ips": [{"address": "10.244.1.10/24"}]}),
            capability_args: serde_json::Map::new(),
            uid: None,
        }
    }

    #[test]
    fn layout_paths() {
        let l = Layout::for_lab("lab");
        assert_eq!(l.root(), Path::new("/run/fabric-lab/lab"));
        assert_eq!(l.state_file(), Path::new("/run/fabric-lab/lab/state.json"));
        assert_eq!(
            l.conflist(),
            Path::new("/run/fabric-lab/lab/cni/10-fabric.conflist")
        );
        assert_eq!(
            l.node_socket("node2"),
            Path::new("/run/fabric-lab/lab/nodes/node2/fabricd.sock")
        );
        assert_eq!(
            l.log("etcd"),
            Path::new("/run/fabric-lab/lab/logs/etcd.log")
        );
    }

    #[test]
    fn state_round_trips_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::at(dir.path().join("t"));
        layout.create().unwrap();
        assert!(layout.create().is_err(), "a second create must fail");
        assert_eq!(known_labs(dir.path()), vec!["t".to_string()]);

        let state = sample(&layout);
        state.save(&layout).unwrap();
        let back = LabState::load(&layout).unwrap();
        assert_eq!(back, state);
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(layout.state_file()).unwrap()).unwrap();
        assert_eq!(json["backend"], "host-gw");
        assert_eq!(json["lease_ttl"], "1day");

        let mut newer = json.clone();
        newer["version"] = serde_json::json!(STATE_VERSION + 1);
        std::fs::write(layout.state_file(), newer.to_string()).unwrap();
        assert!(LabState::load(&layout).is_err());
    }

    #[test]
    fn kubernetes_state_round_trips_and_old_files_read_as_etcd() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::at(dir.path().join("k"));
        layout.create().unwrap();
        let mut state = sample(&layout);
        state.save(&layout).unwrap();
        let mut old: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(layout.state_file()).unwrap()).unwrap();
        assert!(old.get("control_plane").is_none());
        old.as_object_mut().unwrap().remove("datastore");
        std::fs::write(layout.state_file(), old.to_string()).unwrap();
        assert_eq!(LabState::load(&layout).unwrap().datastore, Datastore::Etcd);

        state.datastore = Datastore::Kubernetes;
        state.kube_bin_dir = Some("/c/bin".into());
        state.etcd_members.clear();
        state.control_plane.push(Component {
            name: "kube-apiserver".into(),
            daemon: Daemon {
                pid: 43,
                binary: "/c/bin/kube-apiserver".into(),
                start_time: 8,
            },
        });
        state.pods[0].uid = Some("0b1c".into());
        state.save(&layout).unwrap();
        let back = LabState::load(&layout).unwrap();
        assert_eq!(back, state);
        assert_eq!(back.component("kube-apiserver").unwrap().pid, 43);
        assert!(back.component("etcd").is_none());
        assert_eq!(
            layout.node_kubeconfig("node1"),
            dir.path().join("k/nodes/node1/kubeconfig")
        );
        assert_eq!(
            layout.admin_kubeconfig(),
            dir.path().join("k/kube/admin.kubeconfig")
        );
    }

    #[test]
    fn pods_are_found_by_qualified_name_netns_or_unique_name() {
        let layout = Layout::at("/x");
        let state = sample(&layout);
        assert_eq!(state.find_pod("x/a").unwrap().netns, "t-x-a");
        assert_eq!(state.find_pod("t-y-a").unwrap().namespace, "y");
        assert!(state.find_pod("a").is_none(), "ambiguous");
        assert_eq!(state.find_pod("node1-pod1").unwrap().netns, "t-node1-pod1");
        assert!(state.find_pod("nope").is_none());
        assert_eq!(state.pods[0].qualified_name(), "x/a");
        assert_eq!(state.pods[2].qualified_name(), "node1-pod1");
    }
}
