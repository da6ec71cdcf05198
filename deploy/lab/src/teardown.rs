//! Tearing a lab down, from its state file or from nothing at all (after a crash): stop the
//! processes it started, delete its namespaces, remove its state dir. Idempotent.
//!
//! Processes: those recorded in the state file (the kubelet roles and kube-proxies first, then
//! fabricd, or flanneld as a Flannel lab records it in `flannel.json`, the containers the kubelet
//! roles recorded in their own state files, the control plane, every etcd member) are ended by PID
//! after checking that the PID still runs the recorded binary; then any process left inside one of
//! the lab's namespaces (matched by the namespace inode in `/proc/PID/ns/net`) was started there by
//! the lab, and is ended too. Files outside the state dir: the pods' `/etc/netns/<netns>/`
//! directories (recorded, and any left for a namespace of the lab). Namespaces: the recorded ones,
//! plus every `NAME-*` one not claimed by another lab with a longer name.

use std::path::Path;

use anyhow::{Context, Result};

use crate::netns;
use crate::process::{self, Daemon};
use crate::state::{self, LabState, Layout};
use crate::topology;

/// What a teardown did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DownReport {
    /// Processes ended (PID and what they were).
    pub stopped: Vec<(i32, String)>,
    /// Namespaces deleted.
    pub namespaces: Vec<String>,
    /// Whether a state dir was removed.
    pub removed_state_dir: bool,
    /// Problems that did not stop the teardown.
    pub warnings: Vec<String>,
}

impl DownReport {
    /// Was there anything to tear down?
    pub fn is_empty(&self) -> bool {
        self.stopped.is_empty() && self.namespaces.is_empty() && !self.removed_state_dir
    }
}

/// Tears lab `name` down using `state` if known, else whatever the state dir holds, else by
/// namespace prefix alone.
pub fn down(name: &str, state: Option<&LabState>) -> Result<DownReport> {
    topology::validate_lab_name(name)?;
    let layout = Layout::for_lab(name);
    let mut report = DownReport::default();
    let loaded;
    let state = match state {
        Some(s) => Some(s),
        None if layout.state_file().exists() => match LabState::load(&layout) {
            Ok(s) => {
                loaded = s;
                Some(&loaded)
            }
            Err(e) => {
                report
                    .warnings
                    .push(format!("ignoring unreadable state: {e:#}"));
                None
            }
        },
        None => None,
    };

    let namespaces = lab_namespaces(name, state)?;

    // 1. The processes we recorded: the kubelet roles (so nothing starts pods again) and
    // kube-proxies, fabricd (it may clean up after itself), the kubelet roles' containers,
    // then the Kubernetes control plane in reverse start order, then the etcd members.
    let mut etc_dirs = Vec::new();
    if let Some(state) = state {
        let mut containers = Vec::new();
        let flanneld = crate::flannel::recorded(&layout);
        for n in &state.nodes {
            let (daemons, dirs) = crate::kubelet::recorded(&layout, &n.name);
            containers.extend(daemons);
            etc_dirs.extend(dirs);
        }
        let agents = state.nodes.iter().flat_map(|n| {
            [
                n.kubelet
                    .as_ref()
                    .map(|d| (format!("kubelet on {}", n.name), d)),
                n.kube_proxy
                    .as_ref()
                    .map(|d| (format!("kube-proxy on {}", n.name), d)),
            ]
            .into_iter()
            .flatten()
        });
        let recorded =
            agents
                .chain(
                    state.nodes.iter().filter_map(|n| {
                        Some((format!("fabricd on {}", n.name), n.fabricd.as_ref()?))
                    }),
                )
                .chain(flanneld.iter().map(|(what, d)| (what.clone(), d)))
                .chain(containers.iter().map(|(what, d)| (what.clone(), d)))
                .chain(
                    state
                        .control_plane
                        .iter()
                        .rev()
                        .map(|c| (c.name.clone(), &c.daemon)),
                )
                .chain(
                    state.etcd_members.iter().filter_map(|m| {
                        Some((format!("etcd member {}", m.name), m.daemon.as_ref()?))
                    }),
                );
        for (what, daemon) in recorded {
            stop_recorded(&what, daemon, &mut report);
        }
    }

    // 2. Anything else still living in one of the lab's namespaces.
    let inodes: Vec<u64> = namespaces.iter().filter_map(|n| netns::inode(n)).collect();
    for pid in process::pids_in_netns(&inodes) {
        let what = process::proc_cmdline(pid)
            .map(|argv| argv.join(" "))
            .unwrap_or_else(|| "?".into());
        match process::terminate_pid(pid, || {
            process::proc_state(pid).is_some_and(|s| s != 'Z' && s != 'X')
        }) {
            Ok(true) => report.stopped.push((pid, what)),
            Ok(false) => {}
            Err(e) => report.warnings.push(format!("pid {pid} ({what}): {e:#}")),
        }
    }

    // The WireGuard control sockets the nodes' devices had (shared by every namespace, so
    // a killed fabricd leaves them behind).
    let node_prefix = format!("{name}-node");
    let is_node = |ns: &&String| {
        ns.strip_prefix(&node_prefix)
            .is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()))
    };
    for ns in namespaces.iter().filter(is_node) {
        let socket = format!("/var/run/wireguard/{}.sock", crate::node::wg_iface(ns));
        let _ = std::fs::remove_file(socket);
    }

    // The pods' resolv.conf directories (`ip netns exec` bind-mounts `/etc/netns/NS/*`).
    let others = state::known_labs(Path::new(state::STATE_ROOT));
    let leftover = std::fs::read_dir(crate::kubelet::NETNS_ETC)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|ns| topology::netns_belongs_to(ns, name, &others))
        })
        .map(|e| e.path());
    etc_dirs.extend(leftover);
    for dir in etc_dirs {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => report
                .warnings
                .push(format!("removing {}: {e}", dir.display())),
        }
    }
    // `/etc/netns` itself, once empty (the kubelet roles create it).
    let _ = std::fs::remove_dir(crate::kubelet::NETNS_ETC);

    // 3. The namespaces, pods first and the switch last.
    for ns in namespaces.iter().rev() {
        if !netns::exists(ns) {
            continue;
        }
        match netns::delete(ns) {
            Ok(()) => report.namespaces.push(ns.clone()),
            Err(e) => report.warnings.push(format!("{e:#}")),
        }
    }

    // 4. The state dir.
    if layout.root().exists() {
        remove_state_dir(layout.root())?;
        report.removed_state_dir = true;
    }
    Ok(report)
}

fn stop_recorded(what: &str, daemon: &Daemon, report: &mut DownReport) {
    // `terminate` leaves alone a PID that is gone or now runs something else.
    match daemon.terminate() {
        Ok(true) => report.stopped.push((daemon.pid, what.to_string())),
        Ok(false) => {}
        Err(e) => report.warnings.push(format!("{what}: {e:#}")),
    }
}

/// The lab's namespaces in creation order: the recorded ones, then any other existing
/// `NAME-*` namespace that no other lab claims (pods before nodes when deleted in reverse).
pub fn lab_namespaces(name: &str, state: Option<&LabState>) -> Result<Vec<String>> {
    let others = state::known_labs(Path::new(state::STATE_ROOT));
    let mut namespaces: Vec<String> = state.map(|s| s.namespaces.clone()).unwrap_or_default();
    let mut found: Vec<String> = netns::list()?
        .into_iter()
        .filter(|ns| topology::netns_belongs_to(ns, name, &others))
        .filter(|ns| !namespaces.contains(ns))
        .collect();
    // Without records, delete infrastructure last: switch, etcd or control plane, nodes, then
    // the rest.
    let rank = |ns: &String| {
        if *ns == topology::switch_netns(name) {
            0
        } else if *ns == topology::control_plane_netns(name)
            || topology::etcd_member_index(&ns[name.len() + 1..]).is_some()
        {
            1
        } else if topology::node_index(&ns[name.len() + 1..]).is_some() {
            2
        } else {
            3
        }
    };
    found.sort_by_key(|ns| (rank(ns), ns.clone()));
    namespaces.extend(found);
    Ok(namespaces)
}

/// Does lab `name` exist in any form (state dir or namespaces)?
pub fn exists(name: &str) -> Result<bool> {
    Ok(Layout::for_lab(name).root().exists() || !lab_namespaces(name, None)?.is_empty())
}

fn remove_state_dir(dir: &Path) -> Result<()> {
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}
