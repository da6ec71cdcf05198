//! The node agent as the lab runs it: fabricd's command line (against the lab's etcd, or the
//! lab's kube-apiserver with the node's ServiceAccount kubeconfig), starting it inside the
//! node's namespace, and waiting until its local API answers `Status`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fabric_cni::api::{self, Request, Response};

use crate::process::{self, Cmd, Daemon};
use crate::spec::{format_ttl, Backend};
use crate::state::Node;
use crate::topology::UNDERLAY_IFACE;

/// How long fabricd gets to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where fabricd serves health inside its node's namespace.
pub const HEALTHZ_ADDR: &str = "127.0.0.1:9109";

/// How many log lines an error shows.
pub const LOG_TAIL_LINES: usize = 30;

/// The node's WireGuard device name: unique per lab and node, because the WireGuard control
/// socket (`/var/run/wireguard/<name>.sock`) is shared by every namespace on the machine.
pub fn wg_iface(netns: &str) -> String {
    // FNV-1a over the namespace name, 32 bits: "wg" + 8 hex digits fits IFNAMSIZ.
    let hash = netns.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("wg{hash:08x}")
}

/// Where fabricd keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeDatastore {
    /// The lab's etcd with these flags ([`crate::etcd::EtcdAccess::flags`]: every member's
    /// endpoint, the prefix, and with `fabric-lab up --etcd-tls` the TLS files and user).
    Etcd(Vec<(&'static str, String)>),
    /// The lab's kube-apiserver.
    Kubernetes {
        /// The node's kubeconfig (the `fabric` ServiceAccount's token).
        kubeconfig: PathBuf,
        /// The network config (`--net-config-path`), which etcd would otherwise hold.
        net_conf: PathBuf,
    },
}

impl NodeDatastore {
    /// fabricd's flags for this datastore.
    pub fn args(&self) -> Vec<(&'static str, String)> {
        match self {
            NodeDatastore::Etcd(flags) => flags.clone(),
            NodeDatastore::Kubernetes {
                kubeconfig,
                net_conf,
            } => vec![
                ("--datastore", "kubernetes".to_string()),
                ("--kubeconfig", kubeconfig.display().to_string()),
                ("--net-config-path", net_conf.display().to_string()),
            ],
        }
    }
}

/// fabricd's arguments for `node`.
pub fn fabricd_args(
    node: &Node,
    backend: Backend,
    lease_ttl: Duration,
    datastore: &NodeDatastore,
) -> Vec<String> {
    datastore
        .args()
        .into_iter()
        .chain([
            ("--backend", backend.to_string()),
            ("--node-name", node.name.clone()),
            ("--iface", UNDERLAY_IFACE.to_string()),
            ("--state-dir", node.state_dir.display().to_string()),
            ("--socket", node.socket.display().to_string()),
            ("--lease-ttl", format_ttl(lease_ttl)),
            ("--healthz-addr", HEALTHZ_ADDR.to_string()),
            ("--wg-iface", wg_iface(&node.netns)),
        ])
        .flat_map(|(flag, value)| [flag.to_string(), value])
        .chain(node.fabricd_flags.iter().cloned())
        .collect()
}

/// Starts fabricd for `node` (own session, `RUST_LOG=info`, output appended to its log).
pub fn start_fabricd(
    fabricd: &Path,
    node: &Node,
    backend: Backend,
    lease_ttl: Duration,
    datastore: &NodeDatastore,
) -> Result<Daemon> {
    std::fs::create_dir_all(&node.state_dir)
        .with_context(|| format!("creating {}", node.state_dir.display()))?;
    // A socket left by a killed fabricd would make readiness look true before it rebinds.
    match std::fs::remove_file(&node.socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", node.socket.display())),
    }
    Cmd::in_netns(&node.netns, fabricd)
        .args(fabricd_args(node, backend, lease_ttl, datastore))
        .env("RUST_LOG", "info")
        .spawn_daemon(&node.log)
        .with_context(|| format!("starting fabricd on {}", node.name))
}

/// Asks fabricd on `node` once whether it is ready; `Err` says why not.
pub fn ready_status(node: &Node) -> std::result::Result<(), String> {
    match api::call(&node.socket, &Request::Status, Duration::from_secs(1)) {
        Ok(Response::Ok { .. }) => Ok(()),
        Ok(Response::Error(e)) => Err(format!("not ready: {e}")),
        Ok(other) => Err(format!("unexpected answer {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Polls fabricd's `Status` until it answers `Ok`; fails early (with its log) if it exits.
pub fn wait_ready(node: &Node, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(d) = &node.fabricd {
            if !d.is_running() {
                bail!(
                    "fabricd on {} (pid {}) exited during startup; last lines of {}:\n{}",
                    node.name,
                    d.pid,
                    node.log.display(),
                    process::tail(&node.log, LOG_TAIL_LINES)
                );
            }
        }
        let last = match ready_status(node) {
            Ok(()) => return Ok(()),
            Err(why) => why,
        };
        if Instant::now() >= deadline {
            bail!(
                "fabricd on {} not ready after {}s ({last}); last lines of {}:\n{}",
                node.name,
                timeout.as_secs(),
                node.log.display(),
                process::tail(&node.log, LOG_TAIL_LINES)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::state::Layout;

    #[test]
    fn fabricd_command_line() {
        let layout = Layout::at("/run/fabric-lab/t");
        let node = Node {
            name: "node2".into(),
            netns: "t-node2".into(),
            underlay_ip: Ipv4Addr::new(172, 30, 0, 12),
            socket: layout.node_socket("node2"),
            state_dir: layout.node_dir("node2"),
            log: layout.log("node2"),
            subnet: None,
            fabricd: None,
            fabricd_flags: Vec::new(),
            kubelet: None,
            kube_proxy: None,
        };
        let members = crate::etcd::plan_members("t", &layout, 3).unwrap();
        let access = crate::etcd::EtcdAccess::for_user(&layout, &members, "fabricd");
        let args = fabricd_args(
            &node,
            Backend::HostGw,
            Duration::from_secs(30),
            &NodeDatastore::Etcd(access.flags()),
        );
        assert_eq!(
            args.join(" "),
            format!(
                "--etcd-endpoints http://172.30.0.2:2379,http://172.30.0.4:2379,\
                 http://172.30.0.5:2379 --etcd-prefix /fabric --backend host-gw \
             --node-name node2 --iface eth0 --state-dir /run/fabric-lab/t/nodes/node2 \
             --socket /run/fabric-lab/t/nodes/node2/fabricd.sock --lease-ttl 30s \
             --healthz-addr 127.0.0.1:9109 --wg-iface {}",
                wg_iface(&node.netns)
            )
        );
        let kube = NodeDatastore::Kubernetes {
            kubeconfig: layout.node_kubeconfig("node2"),
            net_conf: layout.net_conf(),
        };
        let args = fabricd_args(&node, Backend::Vxlan, Duration::from_secs(30), &kube);
        assert!(
            args.join(" ").starts_with(
                "--datastore kubernetes --kubeconfig /run/fabric-lab/t/nodes/node2/kubeconfig \
                 --net-config-path /run/fabric-lab/t/net-conf.json --backend vxlan \
                 --node-name node2 --iface eth0"
            ),
            "{args:?}"
        );
        assert!(!args.iter().any(|a| a.starts_with("--etcd")));
        assert_ne!(wg_iface("a-node1"), wg_iface("b-node1"));
        assert_eq!(wg_iface("a-node1").len(), 10);
    }
}
