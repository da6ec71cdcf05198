//! What a caller asks for: the shape of a lab ([`LabSpec`]), of a pod ([`PodSpec`]), the
//! backend choice, and where the fabric binaries are found.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::topology;

/// The environment variable naming the directory of `fabricd`, `fabricctl` and `fabric-cni`.
pub const BIN_DIR_ENV: &str = "FABRIC_BIN_DIR";

/// The binaries a lab runs out of its bin dir.
pub const FABRIC_BINARIES: [&str; 3] = ["fabricd", "fabricctl", "fabric-cni"];

/// The fabric backend the nodes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Backend {
    /// Kernel VXLAN overlay.
    #[default]
    #[serde(rename = "vxlan")]
    Vxlan,
    /// Plain routes via the other nodes' underlay addresses.
    #[serde(rename = "host-gw")]
    HostGw,
    /// Userspace WireGuard.
    #[serde(rename = "wireguard")]
    Wireguard,
}

impl Backend {
    /// Every backend, in a stable order.
    pub const ALL: [Backend; 3] = [Backend::Vxlan, Backend::HostGw, Backend::Wireguard];

    /// The name used on the command line and in net-conf.json's `Backend.Type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Vxlan => "vxlan",
            Backend::HostGw => "host-gw",
            Backend::Wireguard => "wireguard",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Backend {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        Backend::ALL
            .into_iter()
            .find(|b| b.as_str() == s)
            .with_context(|| {
                format!("unknown backend {s:?} (expected vxlan, host-gw or wireguard)")
            })
    }
}

/// Where the nodes keep their state: the lab's etcd, or a Kubernetes control plane the lab
/// runs (`fabricd --datastore kubernetes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Datastore {
    /// Debian's etcd in `NAME-etcd`; fabricd leases subnets there.
    #[default]
    #[serde(rename = "etcd")]
    Etcd,
    /// etcd, kube-apiserver and kube-controller-manager in `NAME-cp`; subnets are the nodes'
    /// `spec.podCIDRs`.
    #[serde(rename = "kubernetes")]
    Kubernetes,
}

impl Datastore {
    /// Both datastores.
    pub const ALL: [Datastore; 2] = [Datastore::Etcd, Datastore::Kubernetes];

    /// The name used on the command line and by `fabricd --datastore`.
    pub fn as_str(self) -> &'static str {
        match self {
            Datastore::Etcd => "etcd",
            Datastore::Kubernetes => "kubernetes",
        }
    }
}

impl fmt::Display for Datastore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Datastore {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        Datastore::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .with_context(|| format!("unknown datastore {s:?} (expected etcd or kubernetes)"))
    }
}

/// The node agent every node runs: fabricd, or the real Flannel as an anchor to measure fabric
/// against ([`crate::flannel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Agent {
    /// fabricd and fabric-cni.
    #[default]
    #[serde(rename = "fabric")]
    Fabric,
    /// flanneld (etcd mode), pods through Flannel's delegate chain (bridge and host-local).
    #[serde(rename = "flannel")]
    Flannel,
}

impl Agent {
    /// Both agents.
    pub const ALL: [Agent; 2] = [Agent::Fabric, Agent::Flannel];

    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Agent::Fabric => "fabric",
            Agent::Flannel => "flannel",
        }
    }

    /// The node daemon's program name.
    pub fn daemon(self) -> &'static str {
        match self {
            Agent::Fabric => "fabricd",
            Agent::Flannel => "flanneld",
        }
    }
}

impl fmt::Display for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Agent {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        Agent::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .with_context(|| format!("unknown agent {s:?} (expected fabric or flannel)"))
    }
}

/// A subnet pinned to a node before the nodes start (`fabricctl reserve SUBNET NODE`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// The subnet, e.g. `10.244.1.0/24`.
    pub subnet: String,
    /// The node name, e.g. `node1`.
    pub node: String,
}

impl FromStr for Reservation {
    type Err = anyhow::Error;

    /// Parses `SUBNET=NODE`.
    fn from_str(s: &str) -> Result<Self> {
        let (subnet, node) = s
            .split_once('=')
            .with_context(|| format!("reservation {s:?} is not SUBNET=NODE"))?;
        subnet
            .parse::<Ipv4Net>()
            .with_context(|| format!("reservation {s:?}: bad subnet"))?;
        ensure!(!node.is_empty(), "reservation {s:?}: empty node name");
        Ok(Reservation {
            subnet: subnet.to_string(),
            node: node.to_string(),
        })
    }
}

/// Everything that shapes a lab. Build with [`LabSpec::new`] and adjust the fields.
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// The lab's name: prefix of its namespaces, name of its state dir.
    pub name: String,
    /// Number of nodes (`node1`..`nodeN`).
    pub nodes: usize,
    /// Pods created on every node at `up` (`nodeK-pod1`..).
    pub pods_per_node: usize,
    /// The backend every node runs.
    pub backend: Backend,
    /// Where the nodes keep their state.
    pub datastore: Datastore,
    /// The subnet lease TTL passed to fabricd.
    pub lease_ttl: Duration,
    /// The cluster's pod network (net-conf.json `Network`).
    pub network: String,
    /// The length of each node's subnet (net-conf.json `SubnetLen`).
    pub subnet_len: u8,
    /// The cluster's IPv6 pod network, for a dual-stack lab (net-conf.json `EnableIPv6` and
    /// `IPv6Network`).
    pub ipv6_network: Option<String>,
    /// Where `fabricd`, `fabricctl` and `fabric-cni` are.
    pub bin_dir: PathBuf,
    /// Subnets pinned to nodes before they start.
    pub reservations: Vec<Reservation>,
    /// Whether the CLI's `up` runs the ping/iperf3 demo (the library ignores it).
    pub demo: bool,
    /// Whether `up` reports each step on stderr.
    pub progress: bool,
    /// Kubernetes mode: run kube-scheduler, kube-proxy on every node and CoreDNS (Services,
    /// DNS, Deployments). The control plane, fabricd and the kubelet role run regardless.
    /// Off in [`LabSpec::new`] (tests that need no Services skip their cost); on for
    /// `fabric-lab up` unless `--no-services`.
    pub services: bool,
    /// Kubernetes mode: kube-proxy's mode.
    pub proxy_mode: crate::kube::proxy::ProxyMode,
    /// etcd mode: etcd serves https only, requires client certificates signed by the lab's
    /// CA and has authentication on; fabricd and fabricctl run as etcd users of their own
    /// with least-privilege roles (`fabric-lab up --etcd-tls`).
    pub etcd_tls: bool,
    /// etcd mode: the etcd cluster's size (odd, 1 to [`topology::MAX_ETCD_MEMBERS`]), each
    /// member in its own namespace; every client gets every member's endpoint
    /// (`fabric-lab up --etcd-members N`).
    pub etcd_members: usize,
    /// The node agent (`fabric-lab up --agent flannel`: flanneld instead of fabricd).
    pub agent: Agent,
    /// Where flanneld, bridge and host-local of a Flannel lab are; `None`: the cache
    /// `bench/anchors/flannel/build.sh` builds into ([`crate::flannel::bin_dir`]).
    pub flannel_bin_dir: Option<PathBuf>,
}

impl LabSpec {
    /// The defaults: 3 nodes, 2 pods each, vxlan, etcd, 24 h leases, 10.244.0.0/16 in /24s, the
    /// discovered bin dir (see [`default_bin_dir`]), no Services (see [`LabSpec::services`]).
    pub fn new(name: impl Into<String>) -> Self {
        LabSpec {
            name: name.into(),
            nodes: 3,
            pods_per_node: 2,
            backend: Backend::Vxlan,
            datastore: Datastore::Etcd,
            lease_ttl: Duration::from_secs(24 * 3600),
            network: "10.244.0.0/16".to_string(),
            subnet_len: 24,
            ipv6_network: None,
            bin_dir: default_bin_dir(),
            reservations: Vec::new(),
            demo: true,
            progress: true,
            services: false,
            proxy_mode: Default::default(),
            etcd_tls: false,
            etcd_members: 1,
            agent: Agent::Fabric,
            flannel_bin_dir: None,
        }
    }

    /// Checks the spec before anything is created.
    pub fn validate(&self) -> Result<()> {
        topology::validate_lab_name(&self.name)?;
        ensure!(
            (1..=topology::MAX_NODES).contains(&self.nodes),
            "nodes must be 1..={}, not {}",
            topology::MAX_NODES,
            self.nodes
        );
        let network: Ipv4Net = self
            .network
            .parse()
            .with_context(|| format!("network {:?} is not an IPv4 CIDR", self.network))?;
        ensure!(
            self.subnet_len > network.prefix_len() && self.subnet_len <= 30,
            "subnet length /{} must be longer than the network's /{} and at most /30",
            self.subnet_len,
            network.prefix_len()
        );
        if self.datastore == Datastore::Kubernetes {
            let services: Ipv4Net = topology::SERVICE_CIDR.parse()?;
            ensure!(
                !network.contains(&services.network()) && !services.contains(&network.network()),
                "network {network} overlaps the lab's Kubernetes service network {services}"
            );
        }
        ensure!(
            !(self.etcd_tls && self.datastore == Datastore::Kubernetes),
            "--etcd-tls secures the etcd datastore; a Kubernetes-mode lab's etcd already \
             serves only kube-apiserver over TLS"
        );
        topology::validate_etcd_members(self.etcd_members)?;
        ensure!(
            self.etcd_members == 1 || self.datastore == Datastore::Etcd,
            "--etcd-members sizes the etcd datastore; a Kubernetes-mode lab runs one etcd for \
             kube-apiserver"
        );
        if self.agent == Agent::Flannel {
            ensure!(
                self.datastore == Datastore::Etcd && !self.etcd_tls,
                "a Flannel lab runs flanneld against the lab's plain etcd (no --datastore \
                 kubernetes, no --etcd-tls)"
            );
            ensure!(
                matches!(self.backend, Backend::Vxlan | Backend::HostGw),
                "a Flannel lab runs the vxlan or host-gw backend, not {}",
                self.backend
            );
            ensure!(
                self.ipv6_network.is_none() && self.reservations.is_empty(),
                "a Flannel lab takes no IPv6 network and no reservations"
            );
        }
        if let Some(v6) = &self.ipv6_network {
            v6.parse::<ipnet::Ipv6Net>()
                .with_context(|| format!("IPv6 network {v6:?} is not an IPv6 CIDR"))?;
        }
        ensure!(
            self.lease_ttl >= Duration::from_secs(1),
            "lease TTL must be at least 1s"
        );
        for r in &self.reservations {
            let subnet: Ipv4Net = r.subnet.parse().with_context(|| {
                format!("reservation {:?} for {} is not a CIDR", r.subnet, r.node)
            })?;
            ensure!(
                network.contains(&subnet) && subnet.prefix_len() == self.subnet_len,
                "reservation {} must be a /{} inside {}",
                r.subnet,
                self.subnet_len,
                self.network
            );
        }
        Ok(())
    }

    /// Flannel's net-conf.json for this spec.
    pub fn net_conf(&self) -> serde_json::Value {
        let mut conf = serde_json::json!({
            "Network": self.network,
            "SubnetLen": self.subnet_len,
            "Backend": { "Type": self.backend.as_str() },
        });
        if let Some(v6) = &self.ipv6_network {
            conf["EnableIPv6"] = true.into();
            conf["IPv6Network"] = v6.clone().into();
        }
        conf
    }

    /// The path of one of the fabric binaries.
    pub fn binary(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// Fails with a hint if a fabric binary is missing from the bin dir.
    pub fn check_binaries(&self) -> Result<()> {
        let missing: Vec<_> = FABRIC_BINARIES
            .iter()
            .filter(|b| !is_executable(&self.binary(b)))
            .collect();
        ensure!(
            missing.is_empty(),
            "{} not found in {} (build them with `cargo build --release`, or point --bin-dir / \
             {BIN_DIR_ENV} at their directory)",
            missing
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            self.bin_dir.display()
        );
        Ok(())
    }
}

/// One pod to create with [`crate::Lab::add_pod`].
#[derive(Debug, Clone, Default)]
pub struct PodSpec {
    /// The pod's name (`K8S_POD_NAME`).
    pub name: String,
    /// The pod's Kubernetes namespace (`K8S_POD_NAMESPACE`); `None` means `default`.
    pub namespace: Option<String>,
    /// The pod's labels: passed through the `labels` capability (etcd mode), or set on the Pod
    /// object (Kubernetes mode).
    pub labels: BTreeMap<String, String>,
    /// Addresses requested through the `ips` capability.
    pub ips: Vec<Ipv4Addr>,
    /// A conflist to use instead of the lab's default; `fabric-cni` plugins without a `socket`
    /// get the node's.
    pub conflist: Option<serde_json::Value>,
    /// Other capability arguments (e.g. `portMappings` for the portmap plugin). In Kubernetes
    /// mode `containerPorts` becomes the Pod's container ports instead.
    pub capability_args: serde_json::Map<String, serde_json::Value>,
}

impl PodSpec {
    /// A pod in the `default` namespace with the default conflist.
    pub fn new(name: impl Into<String>) -> Self {
        PodSpec {
            name: name.into(),
            ..PodSpec::default()
        }
    }

    /// Sets the Kubernetes namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Uses `conflist` instead of the lab's default.
    pub fn conflist(mut self, conflist: serde_json::Value) -> Self {
        self.conflist = Some(conflist);
        self
    }

    /// Passes a capability argument to the plugins that declare the capability.
    pub fn capability(mut self, name: impl Into<String>, value: serde_json::Value) -> Self {
        self.capability_args.insert(name.into(), value);
        self
    }

    /// Requests a fixed address.
    pub fn ip(mut self, ip: Ipv4Addr) -> Self {
        self.ips.push(ip);
        self
    }

    /// The Kubernetes namespace, `default` if none was given.
    pub fn k8s_namespace(&self) -> &str {
        self.namespace
            .as_deref()
            .unwrap_or(topology::DEFAULT_POD_NAMESPACE)
    }
}

/// The bin dir for this process: `$FABRIC_BIN_DIR`, else the directory of the running
/// executable (the parent of `deps/` for test and bench binaries), else `.`.
pub fn default_bin_dir() -> PathBuf {
    discover_bin_dir(
        std::env::var_os(BIN_DIR_ENV),
        std::env::current_exe().ok().as_deref(),
    )
}

/// [`default_bin_dir`] with its inputs made explicit.
pub fn discover_bin_dir(env: Option<OsString>, exe: Option<&Path>) -> PathBuf {
    if let Some(dir) = env.filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let Some(dir) = exe.and_then(Path::parent) else {
        return PathBuf::from(".");
    };
    match (dir.file_name(), dir.parent()) {
        (Some(leaf), Some(parent)) if leaf == "deps" => parent.to_path_buf(),
        _ => dir.to_path_buf(),
    }
}

/// Is `path` a regular file with an execute bit?
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Formats a TTL the way every duration parser accepts: `24h`, `90m`, `45s`.
pub fn format_ttl(ttl: Duration) -> String {
    let secs = ttl.as_secs().max(1);
    if secs % 3600 == 0 {
        format!("{}h", secs / 3600)
    } else if secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_round_trip() {
        for b in Backend::ALL {
            assert_eq!(b.to_string().parse::<Backend>().unwrap(), b);
            assert_eq!(
                serde_json::to_value(b).unwrap(),
                serde_json::json!(b.as_str())
            );
        }
        assert_eq!("host-gw".parse::<Backend>().unwrap(), Backend::HostGw);
        assert!("hostgw".parse::<Backend>().is_err());
    }

    #[test]
    fn datastore_names_round_trip() {
        for d in Datastore::ALL {
            assert_eq!(d.to_string().parse::<Datastore>().unwrap(), d);
            assert_eq!(
                serde_json::to_value(d).unwrap(),
                serde_json::json!(d.as_str())
            );
        }
        assert_eq!(Datastore::default(), Datastore::Etcd);
        assert!("k8s".parse::<Datastore>().is_err());
    }

    #[test]
    fn bin_dir_discovery() {
        let exe = Path::new("/w/target/release/fabric-lab");
        assert_eq!(
            discover_bin_dir(None, Some(exe)),
            PathBuf::from("/w/target/release")
        );
        let test_exe = Path::new("/w/target/debug/deps/e2e-0123abcd");
        assert_eq!(
            discover_bin_dir(None, Some(test_exe)),
            PathBuf::from("/w/target/debug")
        );
        assert_eq!(
            discover_bin_dir(Some("/opt/fabric/bin".into()), Some(exe)),
            PathBuf::from("/opt/fabric/bin")
        );
        assert_eq!(
            discover_bin_dir(Some("".into()), Some(exe)),
            PathBuf::from("/w/target/release")
        );
        assert_eq!(discover_bin_dir(None, None), PathBuf::from("."));
    }

    #[test]
    fn spec_defaults_and_validation() {
        let spec = LabSpec::new("lab");
        assert_eq!(spec.nodes, 3);
        assert_eq!(spec.pods_per_node, 2);
        assert_eq!(spec.backend, Backend::Vxlan);
        assert_eq!(spec.lease_ttl, Duration::from_secs(86400));
        spec.validate().unwrap();

        let mut bad = spec.clone();
        bad.nodes = 0;
        assert!(bad.validate().is_err());
        let mut bad = spec.clone();
        bad.network = "10.244.0.0".into();
        assert!(bad.validate().is_err());
        let mut bad = spec.clone();
        bad.reservations
            .push("10.245.1.0/24=node1".parse().unwrap());
        assert!(bad.validate().is_err());
        let mut bad = spec.clone();
        bad.datastore = Datastore::Kubernetes;
        bad.network = "10.96.0.0/16".into();
        assert!(bad.validate().is_err());
        bad.network = "10.0.0.0/8".into();
        assert!(bad.validate().is_err());
        for members in [0, 2, 7] {
            let mut bad = spec.clone();
            bad.etcd_members = members;
            assert!(bad.validate().is_err(), "{members} etcd members accepted");
        }
        let mut cluster = spec.clone();
        cluster.etcd_members = 3;
        cluster.etcd_tls = true;
        cluster.validate().unwrap();
        cluster.etcd_tls = false;
        cluster.datastore = Datastore::Kubernetes;
        assert!(cluster.validate().is_err());
        let mut ok = spec;
        ok.reservations.push("10.244.1.0/24=node1".parse().unwrap());
        ok.validate().unwrap();
        ok.datastore = Datastore::Kubernetes;
        ok.validate().unwrap();
    }

    #[test]
    fn agents_round_trip_and_flannel_labs_are_checked() {
        for a in Agent::ALL {
            assert_eq!(a.to_string().parse::<Agent>().unwrap(), a);
            assert_eq!(
                serde_json::to_value(a).unwrap(),
                serde_json::json!(a.as_str())
            );
        }
        assert_eq!(Agent::default(), Agent::Fabric);
        assert_eq!(Agent::Flannel.daemon(), "flanneld");
        assert!("flanneld".parse::<Agent>().is_err());

        let mut spec = LabSpec::new("lab");
        spec.agent = Agent::Flannel;
        spec.validate().unwrap();
        spec.backend = Backend::HostGw;
        spec.validate().unwrap();
        spec.etcd_members = 3;
        spec.validate().unwrap();
        let refused: [fn(&mut LabSpec); 5] = [
            |s| s.backend = Backend::Wireguard,
            |s| s.datastore = Datastore::Kubernetes,
            |s| s.etcd_tls = true,
            |s| s.ipv6_network = Some("fd00:10:244::/48".into()),
            |s| s.reservations.push("10.244.1.0/24=node1".parse().unwrap()),
        ];
        for change in refused {
            let mut bad = spec.clone();
            change(&mut bad);
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn net_conf_is_flannel_shaped() {
        let mut spec = LabSpec::new("lab");
        spec.backend = Backend::HostGw;
        assert_eq!(
            spec.net_conf(),
            serde_json::json!({"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"host-gw"}})
        );
    }

    #[test]
    fn reservations_parse() {
        let r: Reservation = "10.244.1.0/24=node1".parse().unwrap();
        assert_eq!(r.subnet, "10.244.1.0/24");
        assert_eq!(r.node, "node1");
        assert!("10.244.1.0/24".parse::<Reservation>().is_err());
        assert!("x=node1".parse::<Reservation>().is_err());
        assert!("10.244.1.0/24=".parse::<Reservation>().is_err());
    }

    #[test]
    fn ttl_formatting() {
        assert_eq!(format_ttl(Duration::from_secs(86400)), "24h");
        assert_eq!(format_ttl(Duration::from_secs(90 * 60)), "90m");
        assert_eq!(format_ttl(Duration::from_secs(45)), "45s");
        assert_eq!(format_ttl(Duration::from_millis(10)), "1s");
    }

    #[test]
    fn pod_spec_builder() {
        let p = PodSpec::new("a")
            .namespace("x")
            .label("pod", "a")
            .ip(Ipv4Addr::new(10, 244, 1, 10));
        assert_eq!(p.k8s_namespace(), "x");
        assert_eq!(p.labels["pod"], "a");
        assert_eq!(PodSpec::new("b").k8s_namespace(), "default");
    }
}
