//! The [`Lab`]'s steps when its nodes run Flannel (`fabric-lab up --agent flannel`, see
//! [`crate::flannel`]): the network config put where flanneld reads it, flanneld started in a
//! node's namespace and recorded by PID in `flannel.json`, readiness from its subnet file (and
//! then the node's conflist built from it: Flannel's delegate chain, bridge and host-local),
//! the nodes' subnets from their subnet files, and the conflist and CNI path a runtime on a
//! node uses.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::Signal;
use serde_json::Value;

use super::Lab;
use crate::cni_runtime::Conflist;
use crate::etcd;
use crate::flannel::{self, FlannelState};
use crate::process::Daemon;
use crate::spec::{Agent, LabSpec};

/// The Flannel state a new lab of `spec` starts with (`None` for fabricd), after checking that
/// the programs are there.
pub(super) fn state_for(spec: &LabSpec) -> Result<Option<FlannelState>> {
    if spec.agent != Agent::Flannel {
        return Ok(None);
    }
    let dir = match &spec.flannel_bin_dir {
        Some(dir) => dir.clone(),
        None => flannel::bin_dir()?,
    };
    flannel::check(&dir)?;
    Ok(Some(FlannelState::new(dir)))
}

impl Lab {
    /// The node agent every node runs.
    pub fn agent(&self) -> Agent {
        if self.flannel.is_some() {
            Agent::Flannel
        } else {
            Agent::Fabric
        }
    }

    /// Do the nodes run flanneld?
    pub fn is_flannel(&self) -> bool {
        self.flannel.is_some()
    }

    /// Where flanneld, bridge and host-local are (a Flannel lab).
    pub fn flannel_bin_dir(&self) -> Option<&Path> {
        self.flannel.as_ref().map(|f| f.bin_dir.as_path())
    }

    /// flanneld on `node`, while the lab runs it.
    pub fn flanneld(&self, node: &str) -> Option<&Daemon> {
        self.flannel.as_ref()?.daemons.get(node)
    }

    /// The PID of the node agent on `node`: flanneld's or fabricd's.
    pub fn agent_pid(&self, node: &str) -> Option<i32> {
        match &self.flannel {
            Some(f) => f.daemons.get(node).map(|d| d.pid),
            None => self.state.node(node)?.pid(),
        }
    }

    /// Puts `net_conf` at flanneld's `<prefix>/config` in the lab's etcd.
    pub(super) fn put_flannel_config(&self, net_conf: &Value) -> Result<()> {
        let prefix = &self.flannel_state()?.prefix;
        self.step(&format!("flanneld's network config at {prefix}/config"));
        let etcdctl = etcd::etcdctl(
            &self.switch_netns(),
            &self.layout,
            &self.state.etcd_members,
            None,
        )?;
        flannel::put_config(etcdctl, prefix, net_conf)
    }

    /// Starts flanneld on `node` (not waiting) and records it.
    pub(super) fn spawn_flanneld(&mut self, node: &str) -> Result<()> {
        let state = self.flannel_state()?;
        if let Some(d) = state.daemons.get(node).filter(|d| d.is_running()) {
            bail!("flanneld on {node} is already running (pid {})", d.pid);
        }
        let endpoints = etcd::client_urls(&self.layout, &self.state.etcd_members);
        let daemon = flannel::start(&state.bin_dir, self.node(node)?, &endpoints, &state.prefix)?;
        self.flannel_state_mut()?
            .daemons
            .insert(node.to_string(), daemon);
        self.save()
    }

    /// Waits until flanneld on `node` has written its subnet file, then writes the node's
    /// conflist from it.
    pub(super) fn wait_flanneld(&self, node: &str) -> Result<()> {
        let daemon = self
            .flanneld(node)
            .with_context(|| format!("flanneld on {node} is not running"))?;
        let node = self.node(node)?;
        let env = flannel::wait_ready(node, daemon, flannel::READY_TIMEOUT)?;
        flannel::write_conflist(node, &env)?;
        self.step(&format!(
            "flanneld on {} ready: subnet {}, MTU {}, conflist {}",
            node.name,
            env.node_subnet(),
            env.mtu,
            flannel::conflist_file(node).display()
        ));
        Ok(())
    }

    /// Sends `signal` to flanneld on `node` and waits for it to exit.
    pub fn stop_flanneld(&mut self, node: &str, signal: Signal) -> Result<()> {
        let daemon = self
            .flanneld(node)
            .cloned()
            .with_context(|| format!("flanneld on {node} is not running"))?;
        super::stop_daemon(&format!("flanneld on {node}"), &daemon, signal)?;
        self.flannel_state_mut()?.daemons.remove(node);
        self.save()
    }

    /// Each node's subnet as its subnet file has it.
    pub(super) fn flannel_subnets(&self) -> BTreeMap<String, String> {
        self.state
            .nodes
            .iter()
            .filter_map(|n| Some((n.name.clone(), flannel::node_subnet(n)?.to_string())))
            .collect()
    }

    /// The conflist a runtime on `node` of a Flannel lab uses: the one written when its
    /// flanneld became ready.
    pub(super) fn flannel_conflist(&self, node: &str) -> Result<Conflist> {
        flannel::load_conflist(self.node(node)?)
    }

    pub(super) fn save_flannel(&self) -> Result<()> {
        match &self.flannel {
            Some(f) => f.save(&self.layout),
            None => Ok(()),
        }
    }

    fn flannel_state(&self) -> Result<&FlannelState> {
        self.flannel
            .as_ref()
            .with_context(|| format!("lab {} runs fabricd, not flanneld", self.state.name))
    }

    fn flannel_state_mut(&mut self) -> Result<&mut FlannelState> {
        let name = self.state.name.clone();
        self.flannel
            .as_mut()
            .with_context(|| format!("lab {name} runs fabricd, not flanneld"))
    }

    /// Fails on a Flannel lab: for the operations that only make sense with fabricd.
    pub(super) fn ensure_fabricd(&self, what: &str) -> Result<()> {
        ensure!(
            self.flannel.is_none(),
            "lab {} runs flanneld, not fabricd: cannot {what}",
            self.state.name
        );
        Ok(())
    }
}
