//! Flannel as the lab's node agent instead of fabricd (`fabric-lab up --agent flannel`): the
//! real flanneld in etcd mode in every node namespace, pods attached through the lab's CNI
//! runtime by Flannel's delegate chain, the anchor `fabric-bench flannel` measures fabric
//! against on the same topology. This module has the mechanics (like [`crate::node`] for
//! fabricd); the orchestration is in `lab/flannel.rs`.
//!
//! - Programs: flanneld and the reference `bridge` and `host-local` plugins, built at the pins
//!   of `bench/anchors/flannel/versions.env` (embedded here) by
//!   `bench/anchors/flannel/build.sh` into a cache outside the source tree, found the way the
//!   script computes it ([`bin_dir`]).
//! - Flannel's CNI plugin is not run: the Go module proxy does not serve it
//!   (github.com/flannel-io/cni-plugin), so the lab runs the chain it delegates to, `bridge`
//!   with `host-local`, with the config the plugin derives from flanneld's subnet file
//!   ([`delegate_conflist`], written here from the plugin's documented behaviour). What this
//!   leaves out is the plugin's own exec (one process start per call, and its reading of the
//!   subnet file), which favours Flannel in a CNI latency comparison.
//! - Datastore: the lab's etcd, through Flannel's etcd subnet manager (`--etcd-endpoints`,
//!   `--etcd-prefix`, prefix [`ETCD_PREFIX`], Flannel's default). The network config is the
//!   lab's net-conf.json, the same one fabricd reads, put at `<prefix>/config` with etcdctl;
//!   Flannel keeps its leases under `<prefix>/subnets/`.
//! - Per node: `flanneld --iface eth0 --subnet-file nodes/nodeK/subnet.env --ip-masq` (as the
//!   kube-flannel manifest runs it: flanneld masquerades, so the bridge plugin does not), its
//!   output in `logs/nodeK.log`; ready once it has written the subnet file.
//! - Pods: once flanneld has written the subnet file, the node's conflist is built from it
//!   ([`delegate_conflist`]: what Flannel's plugin hands `bridge` for kube-flannel's config)
//!   and written to `nodes/nodeK/10-flannel.conflist`; host-local's `dataDir` is in the node's
//!   directory too, so nothing is written to the machine's `/run/flannel` or `/var/lib/cni`.
//! - State: `flannel.json` in the state dir (the bin dir, the prefix and each node's flanneld
//!   as PID, binary and start time), read by teardown ([`recorded`]) to end them by PID.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::cni_runtime::{Conflist, CNI_VERSION};
use crate::process::{self, Cmd, Daemon};
use crate::spec::is_executable;
use crate::state::{Layout, Node};
use crate::topology::UNDERLAY_IFACE;

/// `bench/anchors/flannel/versions.env`, as built into this binary.
pub const VERSIONS_ENV: &str = include_str!("../../../bench/anchors/flannel/versions.env");

/// The script that builds the programs (relative to the workspace root).
pub const BUILD_SCRIPT: &str = "bench/anchors/flannel/build.sh";

/// The programs a Flannel lab runs out of its bin dir.
pub const BINARIES: [&str; 3] = ["flanneld", "bridge", "host-local"];

/// Flannel's etcd prefix (its default).
pub const ETCD_PREFIX: &str = "/coreos.com/network";

/// The CNI network's name (kube-flannel's).
pub const NETWORK_NAME: &str = "cbr0";

/// The bridge pods are attached to (the bridge plugin's default name, which kube-flannel keeps).
pub const BRIDGE: &str = "cni0";

/// A node's conflist, in its directory (kube-flannel's file name).
pub const CONFLIST_FILE: &str = "10-flannel.conflist";

/// How long flanneld gets to write its subnet file.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `etcdctl put` may take.
const ETCDCTL_TIMEOUT: Duration = Duration::from_secs(20);

/// The pinned upstream versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versions {
    /// `FLANNEL_VERSION`, e.g. `v0.28.10`.
    pub flannel: String,
    /// `CNI_PLUGINS_VERSION` (bridge, host-local), e.g. `v1.9.1`.
    pub plugins: String,
}

impl Versions {
    /// The pins this binary was built with.
    pub fn pinned() -> Result<Self> {
        parse_versions(VERSIONS_ENV)
            .context("reading the embedded bench/anchors/flannel/versions.env")
    }

    /// The cache's subdirectory for these pins, as build.sh names it.
    pub fn dir_name(&self) -> String {
        format!("{}-plugins-{}", self.flannel, self.plugins)
    }
}

/// Parses the pins out of `versions.env`.
pub fn parse_versions(text: &str) -> Result<Versions> {
    Ok(Versions {
        flannel: crate::pins::env_value(text, "FLANNEL_VERSION")?,
        plugins: crate::pins::env_value(text, "CNI_PLUGINS_VERSION")?,
    })
}

/// The cache root as build.sh computes it:
/// `${FABRIC_ANCHORS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fabric/anchors}/flannel` (empty
/// counts as unset).
pub fn cache_root(
    anchors_cache: Option<OsString>,
    xdg_cache_home: Option<OsString>,
    home: Option<OsString>,
) -> PathBuf {
    crate::pins::cache_root(anchors_cache, xdg_cache_home, home, "anchors").join("flannel")
}

/// This process's bin directory (from its environment and the embedded pins).
pub fn bin_dir() -> Result<PathBuf> {
    let root = cache_root(
        std::env::var_os("FABRIC_ANCHORS_CACHE"),
        std::env::var_os("XDG_CACHE_HOME"),
        std::env::var_os("HOME"),
    );
    Ok(root.join(Versions::pinned()?.dir_name()).join("bin"))
}

/// Fails with the build hint unless every program of [`BINARIES`] is in `dir`.
pub fn check(dir: &Path) -> Result<()> {
    let missing: Vec<&str> = BINARIES
        .into_iter()
        .filter(|b| !is_executable(&dir.join(b)))
        .collect();
    ensure!(
        missing.is_empty(),
        "{} not found in {}: run {BUILD_SCRIPT} (it builds the pinned flanneld, bridge and \
         host-local; FABRIC_ANCHORS_CACHE, XDG_CACHE_HOME and HOME must be what they were for \
         it)",
        missing.join(", "),
        dir.display()
    );
    Ok(())
}

/// What a Flannel lab records beside the lab's state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlannelState {
    /// Where flanneld and the CNI plugins are.
    pub bin_dir: PathBuf,
    /// flanneld's `--etcd-prefix`.
    pub prefix: String,
    /// flanneld on each node (by node name), while the lab has it running.
    #[serde(default)]
    pub daemons: BTreeMap<String, Daemon>,
}

impl FlannelState {
    /// A fresh state: nothing running yet.
    pub fn new(bin_dir: PathBuf) -> Self {
        FlannelState {
            bin_dir,
            prefix: ETCD_PREFIX.to_string(),
            daemons: BTreeMap::new(),
        }
    }

    /// `flannel.json` in the state dir.
    pub fn path(layout: &Layout) -> PathBuf {
        layout.root().join("flannel.json")
    }

    /// The state of the Flannel lab at `layout`; `None` for a lab of fabricd.
    pub fn load(layout: &Layout) -> Result<Option<Self>> {
        let path = Self::path(layout);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .with_context(|| format!("parsing {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes `flannel.json` atomically (temporary file, then rename).
    pub fn save(&self, layout: &Layout) -> Result<()> {
        let path = Self::path(layout);
        let tmp = path.with_extension("json.tmp");
        let mut text = serde_json::to_vec_pretty(self).context("serializing flannel state")?;
        text.push(b'\n');
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))
    }
}

/// The flanneld processes the lab at `layout` recorded, described, for teardown.
pub fn recorded(layout: &Layout) -> Vec<(String, Daemon)> {
    FlannelState::load(layout)
        .ok()
        .flatten()
        .map(|s| {
            s.daemons
                .into_iter()
                .map(|(node, d)| (format!("flanneld on {node}"), d))
                .collect()
        })
        .unwrap_or_default()
}

/// The subnet file flanneld writes on `node` (and the node's conflist is built from).
pub fn subnet_file(node: &Node) -> PathBuf {
    node.state_dir.join("subnet.env")
}

/// The conflist a runtime on `node` attaches pods with, once flanneld is ready.
pub fn conflist_file(node: &Node) -> PathBuf {
    node.state_dir.join(CONFLIST_FILE)
}

/// flanneld's arguments on `node`: the lab's etcd `endpoints`, `prefix`, the underlay
/// interface, the node's subnet file, masquerading on.
pub fn flanneld_args(node: &Node, endpoints: &[String], prefix: &str) -> Vec<String> {
    vec![
        format!("--etcd-endpoints={}", endpoints.join(",")),
        format!("--etcd-prefix={prefix}"),
        format!("--iface={UNDERLAY_IFACE}"),
        format!("--subnet-file={}", subnet_file(node).display()),
        "--ip-masq".to_string(),
    ]
}

/// Starts flanneld on `node` inside its namespace (own session, output appended to the node's
/// log). A subnet file and conflist of an earlier run are removed first, so readiness and the
/// conflist are this run's.
pub fn start(bin_dir: &Path, node: &Node, endpoints: &[String], prefix: &str) -> Result<Daemon> {
    std::fs::create_dir_all(&node.state_dir)
        .with_context(|| format!("creating {}", node.state_dir.display()))?;
    for file in [subnet_file(node), conflist_file(node)] {
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", file.display())),
        }
    }
    Cmd::in_netns(&node.netns, bin_dir.join("flanneld"))
        .args(flanneld_args(node, endpoints, prefix))
        .spawn_daemon(&node.log)
        .with_context(|| format!("starting flanneld on {}", node.name))
}

/// What flanneld's subnet file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// `FLANNEL_NETWORK`.
    pub network: Ipv4Net,
    /// `FLANNEL_SUBNET` as written: the node's gateway address with the subnet's length.
    pub subnet: Ipv4Net,
    /// `FLANNEL_MTU`.
    pub mtu: u32,
    /// `FLANNEL_IPMASQ`.
    pub ipmasq: bool,
}

impl SubnetEnv {
    /// The node's subnet as a network (`10.244.7.1/24` → `10.244.7.0/24`).
    pub fn node_subnet(&self) -> Ipv4Net {
        self.subnet.trunc()
    }
}

/// Parses a subnet file; `None` unless it has the four keys the delegate config needs.
pub fn parse_subnet_env(text: &str) -> Option<SubnetEnv> {
    let value = |key: &str| {
        text.lines()
            .filter_map(|l| l.trim().split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.trim())
    };
    Some(SubnetEnv {
        network: value("FLANNEL_NETWORK")?.split(',').next()?.parse().ok()?,
        subnet: value("FLANNEL_SUBNET")?.parse().ok()?,
        mtu: value("FLANNEL_MTU")?.parse().ok()?,
        ipmasq: value("FLANNEL_IPMASQ")? == "true",
    })
}

/// `node`'s subnet file, if written.
pub fn read_subnet_env(node: &Node) -> Option<SubnetEnv> {
    parse_subnet_env(&std::fs::read_to_string(subnet_file(node)).ok()?)
}

/// `node`'s subnet as its subnet file has it, if written.
pub fn node_subnet(node: &Node) -> Option<Ipv4Net> {
    Some(read_subnet_env(node)?.node_subnet())
}

/// Waits until flanneld (`daemon`) on `node` has written its subnet file and returns it; fails
/// early, with its log, if it exits.
pub fn wait_ready(node: &Node, daemon: &Daemon, timeout: Duration) -> Result<SubnetEnv> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(env) = read_subnet_env(node) {
            return Ok(env);
        }
        if !daemon.is_running() {
            bail!(
                "flanneld on {} (pid {}) exited during startup; last lines of {}:\n{}",
                node.name,
                daemon.pid,
                node.log.display(),
                process::tail(&node.log, crate::node::LOG_TAIL_LINES)
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "flanneld on {} wrote no {} within {}s; last lines of {}:\n{}",
                node.name,
                subnet_file(node).display(),
                timeout.as_secs(),
                node.log.display(),
                process::tail(&node.log, crate::node::LOG_TAIL_LINES)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The conflist that attaches pods on a node whose subnet file says `env`, as Flannel's CNI
/// plugin would with kube-flannel's config (`{"type": "flannel", "delegate": {"hairpinMode":
/// true, "isDefaultGateway": true}}`): its delegate, the bridge plugin, called directly, with
/// host-local keeping its state in `host_local_dir`.
///
/// Written from the plugin's documented behaviour (its README), not from its code. The
/// delegate keeps the network's name and, `type` unset, is `bridge` (named [`BRIDGE`]); the
/// plugin sets `ipMasq` to the inverse of `FLANNEL_IPMASQ` and `mtu` to `FLANNEL_MTU` unless
/// the delegate has them, `isGateway` for bridge, and an `ipam` of type `host-local` for the
/// node's subnet (`FLANNEL_SUBNET` as a network) with a route to the flannel network
/// (`FLANNEL_NETWORK`).
pub fn delegate_conflist(env: &SubnetEnv, host_local_dir: &Path) -> Conflist {
    let bridge = json!({
        "type": "bridge",
        "bridge": BRIDGE,
        // kube-flannel's delegate.
        "hairpinMode": true,
        "isDefaultGateway": true,
        // What Flannel's plugin adds from the subnet file.
        "mtu": env.mtu,
        "ipMasq": !env.ipmasq,
        "isGateway": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{ "subnet": env.node_subnet().to_string() }]],
            "routes": [{ "dst": env.network.to_string() }],
            "dataDir": host_local_dir,
        },
    });
    Conflist::from_value(json!({
        "cniVersion": CNI_VERSION,
        "name": NETWORK_NAME,
        "plugins": [bridge],
    }))
    .expect("the Flannel delegate conflist is well-formed")
}

/// Builds `node`'s conflist from its subnet file `env` ([`delegate_conflist`], host-local's
/// state in the node's directory) and writes it to [`conflist_file`] atomically.
pub fn write_conflist(node: &Node, env: &SubnetEnv) -> Result<Conflist> {
    let list = delegate_conflist(env, &node.state_dir.join("host-local"));
    let path = conflist_file(node);
    let tmp = path.with_extension("conflist.tmp");
    let mut text = serde_json::to_vec_pretty(&list.to_value()).context("serializing conflist")?;
    text.push(b'\n');
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(list)
}

/// The conflist written for `node` when its flanneld became ready.
pub fn load_conflist(node: &Node) -> Result<Conflist> {
    let path = conflist_file(node);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (written once flanneld on {} has written its subnet file)",
            path.display(),
            node.name
        )
    })?;
    let value: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Conflist::from_value(value).with_context(|| format!("reading {}", path.display()))
}

/// Puts `net_conf` at `<prefix>/config` in the lab's etcd with `etcdctl` (an `etcdctl` command
/// from [`crate::etcd::etcdctl`]).
pub fn put_config(etcdctl: Cmd, prefix: &str, net_conf: &Value) -> Result<()> {
    etcdctl
        .args(["put", &format!("{prefix}/config"), &net_conf.to_string()])
        .timeout(ETCDCTL_TIMEOUT)
        .run()
        .with_context(|| format!("putting the network config at {prefix}/config"))?;
    Ok(())
}

/// `flanneld --version`, e.g. `v0.28.10`, or `unknown`.
pub fn version(bin_dir: &Path) -> String {
    Cmd::new(bin_dir.join("flanneld"))
        .arg("--version")
        .timeout(Duration::from_secs(10))
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).trim().to_string()
                + String::from_utf8_lossy(&o.stderr).trim()
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn node(layout: &Layout, k: usize) -> Node {
        let name = format!("node{k}");
        Node {
            name: name.clone(),
            netns: format!("t-{name}"),
            underlay_ip: Ipv4Addr::new(172, 30, 0, 10 + k as u8),
            socket: layout.node_socket(&name),
            state_dir: layout.node_dir(&name),
            log: layout.log(&name),
            subnet: None,
            fabricd: None,
            fabricd_flags: Vec::new(),
            kubelet: None,
            kube_proxy: None,
        }
    }

    #[test]
    fn embedded_pins_parse_and_name_the_cache() {
        let v = Versions::pinned().unwrap();
        assert!(v.flannel.starts_with("v0."), "{v:?}");
        assert!(v.plugins.starts_with("v1."), "{v:?}");
        assert_eq!(
            parse_versions(
                "# x\nexport FLANNEL_VERSION=\"v0.1.0\"\nCNI_PLUGINS_VERSION='v1.2.3'\n"
            )
            .unwrap()
            .dir_name(),
            "v0.1.0-plugins-v1.2.3"
        );
        // No pin of Flannel's CNI plugin: it is not built.
        assert!(!VERSIONS_ENV
            .lines()
            .any(|l| !l.starts_with('#') && l.contains("FLANNEL_CNI")));
        assert!(parse_versions("FLANNEL_VERSION=v0.1.0\n").is_err());
        assert!(parse_versions("# FLANNEL_VERSION=v0.1.0\n").is_err());
    }

    #[test]
    fn cache_paths_follow_build_sh() {
        let s = |v: &str| Some(OsString::from(v));
        assert_eq!(
            cache_root(s("/c"), s("/x"), s("/h")),
            PathBuf::from("/c/flannel")
        );
        assert_eq!(
            cache_root(s(""), s("/x"), s("/h")),
            PathBuf::from("/x/fabric/anchors/flannel")
        );
        assert_eq!(
            cache_root(None, None, s("/root")),
            PathBuf::from("/root/.cache/fabric/anchors/flannel")
        );
    }

    /// The script and this module agree on where the binaries go.
    #[test]
    fn build_sh_reports_the_same_bin_dir() {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/anchors/flannel/build.sh");
        for (cache, xdg) in [("/tmp/anchors-a", ""), ("", "/tmp/xdg-b")] {
            let out = std::process::Command::new("bash")
                .arg(&script)
                .arg("--bin-dir")
                .env("FABRIC_ANCHORS_CACHE", cache)
                .env("XDG_CACHE_HOME", xdg)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            let dir = String::from_utf8(out.stdout).unwrap();
            let root = cache_root(Some(cache.into()), Some(xdg.into()), None);
            let want = root
                .join(Versions::pinned().unwrap().dir_name())
                .join("bin");
            assert_eq!(Path::new(dir.trim()), want);
        }
    }

    #[test]
    fn subnet_files_parse() {
        let text = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.71.1/24\n\
                    FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
        let env = parse_subnet_env(text).unwrap();
        assert_eq!(env.network, "10.244.0.0/16".parse::<Ipv4Net>().unwrap());
        assert_eq!(
            env.node_subnet(),
            "10.244.71.0/24".parse::<Ipv4Net>().unwrap()
        );
        assert_eq!((env.mtu, env.ipmasq), (1450, true));
        // Half written, or without the keys the CNI plugin needs: not ready.
        assert!(parse_subnet_env("FLANNEL_NETWORK=10.244.0.0/16\n").is_none());
        assert!(parse_subnet_env("").is_none());
        let dual = "FLANNEL_NETWORK=10.244.0.0/16,10.245.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\n\
                    FLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n";
        assert!(!parse_subnet_env(dual).unwrap().ipmasq);
    }

    #[test]
    fn flanneld_command_line() {
        let layout = Layout::at("/run/fabric-lab/t");
        let n = node(&layout, 2);
        let endpoints = [
            "http://172.30.0.2:2379".to_string(),
            "http://172.30.0.4:2379".into(),
        ];
        assert_eq!(
            flanneld_args(&n, &endpoints, ETCD_PREFIX).join(" "),
            "--etcd-endpoints=http://172.30.0.2:2379,http://172.30.0.4:2379 \
             --etcd-prefix=/coreos.com/network --iface=eth0 \
             --subnet-file=/run/fabric-lab/t/nodes/node2/subnet.env --ip-masq"
        );
    }

    /// The subnet file of a vxlan node of the lab (flanneld `--ip-masq`).
    fn vxlan_env() -> SubnetEnv {
        parse_subnet_env(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.71.1/24\n\
             FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap()
    }

    #[test]
    fn the_delegate_conflist_is_what_flannels_plugin_hands_bridge() {
        let list = delegate_conflist(&vxlan_env(), Path::new("/n/host-local"));
        assert_eq!(
            list.to_value(),
            json!({
                "cniVersion": CNI_VERSION,
                "name": "cbr0",
                "plugins": [{
                    "type": "bridge",
                    "bridge": "cni0",
                    "hairpinMode": true,
                    "isDefaultGateway": true,
                    "mtu": 1450,
                    // flanneld masquerades, so bridge does not.
                    "ipMasq": false,
                    "isGateway": true,
                    "ipam": {
                        "type": "host-local",
                        // The node's gateway address 10.244.71.1/24 as a network.
                        "ranges": [[{ "subnet": "10.244.71.0/24" }]],
                        "routes": [{ "dst": "10.244.0.0/16" }],
                        "dataDir": "/n/host-local",
                    },
                }],
            })
        );
    }

    #[test]
    fn the_delegate_follows_the_subnet_file() {
        // The plugin README's example: MTU and subnet from the file, masquerading inverted.
        let env = parse_subnet_env(
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\n\
             FLANNEL_IPMASQ=false\n",
        )
        .unwrap();
        let list = delegate_conflist(&env, Path::new("/d"));
        let p = &list.plugins[0];
        assert_eq!(
            (p["mtu"].clone(), p["ipMasq"].clone()),
            (json!(1472), json!(true))
        );
        assert_eq!(p["ipam"]["ranges"], json!([[{ "subnet": "10.1.17.0/24" }]]));
        assert_eq!(p["ipam"]["routes"], json!([{ "dst": "10.1.0.0/16" }]));
        // One plugin, the bridge: nothing delegates any more.
        assert_eq!(list.plugins.len(), 1);
        assert!(p.get("delegate").is_none() && p.get("subnetFile").is_none());
    }

    #[test]
    fn the_conflist_is_written_beside_the_subnet_file_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::at(dir.path().join("t"));
        let n = node(&layout, 1);
        std::fs::create_dir_all(&n.state_dir).unwrap();
        // Not ready yet: no conflist, and the error says what is missing.
        let err = format!("{:#}", load_conflist(&n).unwrap_err());
        assert!(
            err.contains("10-flannel.conflist") && err.contains("node1"),
            "{err}"
        );
        let written = write_conflist(&n, &vxlan_env()).unwrap();
        assert_eq!(conflist_file(&n), n.state_dir.join("10-flannel.conflist"));
        let read = load_conflist(&n).unwrap();
        assert_eq!(read, written);
        assert_eq!(
            read.plugins[0]["ipam"]["dataDir"],
            json!(n.state_dir.join("host-local"))
        );
        std::fs::write(conflist_file(&n), "{").unwrap();
        assert!(load_conflist(&n).is_err());
    }

    #[test]
    fn state_round_trips_and_teardown_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::at(dir.path().join("t"));
        layout.create().unwrap();
        assert!(FlannelState::load(&layout).unwrap().is_none());
        assert!(recorded(&layout).is_empty());
        let mut state = FlannelState::new("/c/bin".into());
        state.daemons.insert(
            "node1".into(),
            Daemon {
                pid: 42,
                binary: "/c/bin/flanneld".into(),
                start_time: 7,
            },
        );
        state.save(&layout).unwrap();
        assert_eq!(FlannelState::load(&layout).unwrap(), Some(state));
        let rec = recorded(&layout);
        assert_eq!(rec.len(), 1);
        assert_eq!(rec[0].0, "flanneld on node1");
        assert_eq!(rec[0].1.pid, 42);
        std::fs::write(FlannelState::path(&layout), "{").unwrap();
        assert!(FlannelState::load(&layout).is_err());
    }
}
