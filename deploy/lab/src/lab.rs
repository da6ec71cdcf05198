//! [`Lab`]: a running cluster, what `up` builds and every other operation acts on. It owns
//! the orchestration (the order of steps, recording each in the state file before acting) and
//! delegates the mechanics to the other modules; the Kubernetes-mode steps are in the
//! `kubernetes` submodule (`lab/kubernetes.rs`), the Services-and-DNS ones (kube-scheduler,
//! kubelet role, kube-proxy, CoreDNS) in `services` (`lab/services.rs`).

mod flannel;
mod kubernetes;
mod services;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

use crate::cni_runtime::{self, CniCommand, Conflist, Invocation, Runtime};
use crate::node::NodeDatastore;
use crate::process::{self, Cmd};
use crate::spec::{Backend, Datastore, LabSpec, PodSpec};
use crate::state::{EtcdMember, LabState, Layout, Node, Pod, STATE_VERSION};
use crate::teardown::{self, DownReport};
use crate::topology::{self, ETCD_CLIENT_PORT, POD_IFACE, SWITCH_IP};
use crate::{etcd, kube, netns, node};

/// Capabilities a Kubernetes-mode fabricd reads from the Pod object instead of CNI
/// `runtimeConfig`; the lab does not pass them there.
const API_CAPABILITIES: [&str; 2] = ["labels", "containerPorts"];

/// Where standard CNI plugins (portmap, bandwidth, ...) are installed.
pub const SYSTEM_CNI_DIR: &str = "/usr/lib/cni";

/// How long a `fabricctl` call may take.
const FABRICCTL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`Lab::stop_fabricd`] waits for fabricd to exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The nftables table [`Lab::partition_from_etcd`] adds in a node's namespace.
const PARTITION_TABLE: &str = "fabric_lab_partition";

/// A lab cluster. Dropping a lab made by [`Lab::up`] tears it down unless [`Lab::keep`] was
/// called; a lab from [`Lab::attach`] is left running when dropped.
#[derive(Debug)]
pub struct Lab {
    state: LabState,
    layout: Layout,
    progress: bool,
    owned: bool,
    /// What a lab whose nodes run flanneld records beside its state (`flannel.json`).
    flannel: Option<crate::flannel::FlannelState>,
}

impl Lab {
    /// Builds a lab: switch, etcd (or the Kubernetes control plane), network config, nodes
    /// (fabricd ready on each), pods. On failure everything created so far is removed again.
    pub fn up(spec: LabSpec) -> Result<Lab> {
        spec.validate()?;
        spec.check_binaries()?;
        let flannel = flannel::state_for(&spec)?;
        let kube_bin_dir = match spec.datastore {
            Datastore::Etcd => {
                ensure!(
                    crate::spec::is_executable(&etcd::binary()),
                    "etcd not found (install Debian's etcd-server)"
                );
                None
            }
            Datastore::Kubernetes => {
                let dir = kube::binaries::bin_dir()?;
                kube::binaries::check(&dir)?;
                ensure!(
                    crate::spec::is_executable(&spec.binary("fabric-lab")),
                    "fabric-lab not found in {} (the kubelet role runs it: `cargo build \
                     --release -p fabric-lab`)",
                    spec.bin_dir.display()
                );
                ensure!(
                    process::which("openssl").is_some(),
                    "openssl not found (the lab makes its Kubernetes PKI with it: apt-get install \
                     openssl)"
                );
                let manifest =
                    kube::manifest_path(std::env::var_os(kube::MANIFEST_ENV), &spec.bin_dir);
                ensure!(
                    manifest.is_file(),
                    "{} not found: fabric's RBAC comes from the deployment manifest (set {} to \
                     use another file)",
                    manifest.display(),
                    kube::MANIFEST_ENV
                );
                Some(dir)
            }
        };
        if teardown::exists(&spec.name)? {
            bail!(
                "lab {name:?} already exists (remove it with `fabric-lab down --name {name}`)",
                name = spec.name
            );
        }
        let layout = Layout::for_lab(&spec.name);
        layout.create().with_context(|| {
            format!(
                "claiming {} (is another `up` running?)",
                layout.root().display()
            )
        })?;
        let mut lab = Lab {
            state: LabState {
                version: STATE_VERSION,
                name: spec.name.clone(),
                backend: spec.backend,
                datastore: spec.datastore,
                network: spec.network.clone(),
                subnet_len: spec.subnet_len,
                ipv6_network: spec.ipv6_network.clone(),
                lease_ttl: spec.lease_ttl,
                bin_dir: spec.bin_dir.clone(),
                kube_bin_dir,
                services: spec.services && spec.datastore == Datastore::Kubernetes,
                proxy_mode: spec.proxy_mode,
                reservations: spec.reservations.clone(),
                namespaces: Vec::new(),
                etcd_members: Vec::new(),
                control_plane: Vec::new(),
                nodes: Vec::new(),
                pods: Vec::new(),
            },
            layout,
            progress: spec.progress,
            owned: true,
            flannel,
        };
        match lab.save().and_then(|()| lab.build(&spec)) {
            Ok(()) => Ok(lab),
            Err(e) => {
                lab.step("failed; removing what was built");
                let cleanup = lab.teardown();
                let e = e.context(format!("bringing up lab {}", spec.name));
                Err(match cleanup {
                    Ok(_) => e,
                    Err(c) => e.context(format!(
                        "cleanup failed too ({c:#}): run `fabric-lab down --name {}`",
                        spec.name
                    )),
                })
            }
        }
    }

    fn build(&mut self, spec: &LabSpec) -> Result<()> {
        let name = self.state.name.clone();

        let sw = topology::switch_netns(&name);
        self.step(&format!(
            "underlay switch {sw}: bridge {} {SWITCH_IP}/{}",
            topology::BRIDGE,
            topology::UNDERLAY_PREFIX_LEN
        ));
        self.create_netns(&sw)?;
        netns::create_bridge(&sw, SWITCH_IP)?;

        match spec.datastore {
            Datastore::Etcd => {
                let members = etcd::plan_members(&name, &self.layout, spec.etcd_members)?;
                for member in &members {
                    self.step(&format!(
                        "etcd member {} in {} at {}",
                        member.name, member.netns, member.ip
                    ));
                    self.create_netns(&member.netns)?;
                    netns::plug_into_switch(
                        &sw,
                        &member.name,
                        &member.netns,
                        member.ip,
                        Some(SWITCH_IP),
                    )?;
                }
                self.state.etcd_members = members;
                self.save()?;
                if spec.etcd_tls {
                    self.step(&format!(
                        "etcd TLS: CA, certificates and passwords in {}",
                        etcd::pki_dir(&self.layout).display()
                    ));
                    etcd::create_pki(&self.layout, &self.state.etcd_members)?;
                }
                self.start_etcd()?;
                if spec.etcd_tls {
                    self.step(&format!(
                        "etcd authentication: users {}, {} and {} with least-privilege roles",
                        etcd::ROOT_USER,
                        etcd::FABRICD_USER,
                        etcd::FABRICCTL_USER
                    ));
                    etcd::enable_auth(&self.etcd_netns(), &self.layout, &self.state.etcd_members)?;
                }
            }
            Datastore::Kubernetes => self.build_control_plane()?,
        }

        self.step(&format!(
            "network config: {} in /{} subnets, backend {}",
            spec.network, spec.subnet_len, spec.backend
        ));
        let net_conf = self.layout.net_conf();
        write_json(&net_conf, &spec.net_conf())?;
        if self.is_flannel() {
            self.put_flannel_config(&spec.net_conf())?;
        } else if spec.datastore == Datastore::Etcd {
            self.fabricctl(&["config", "set", "-f", &net_conf.display().to_string()])?;
            for r in &spec.reservations {
                self.step(&format!("reserving {} for {}", r.subnet, r.node));
                self.fabricctl(&["reserve", &r.subnet, &r.node])?;
            }
        }
        if !self.is_flannel() {
            write_json(
                &self.layout.conflist(),
                &Conflist::fabric_default(None).to_value(),
            )?;
        }

        // Namespaces first, then every fabricd at once: nodes of a real cluster boot together
        // and race for subnets.
        let names = (0..spec.nodes)
            .map(|_| self.create_node())
            .collect::<Result<Vec<_>>>()?;
        if self.is_kubernetes() {
            self.prepare_kube_nodes(&names)?;
        }
        for name in &names {
            self.spawn_agent(name)?;
        }
        for k in 0..self.state.nodes.len() {
            let node = self.state.nodes[k].name.clone();
            self.step(&format!("waiting for {} on {node}", self.agent().daemon()));
            self.wait_ready(&node)?;
        }
        if let Err(e) = self.refresh_subnets() {
            self.step(&format!("warning: cannot read the leases: {e:#}"));
        }
        if self.is_kubernetes() {
            self.start_node_agents(&names)?;
            if self.state.services {
                self.apply_coredns()?;
            }
        }

        for k in 1..=self.state.nodes.len() {
            let node_name = topology::node_name(k);
            for j in 1..=spec.pods_per_node {
                let pod = PodSpec::new(topology::default_pod_name(&node_name, j));
                self.add_pod(&node_name, pod)?;
            }
        }
        if self.state.services {
            self.wait_coredns()?;
            self.create_external_host()?;
        }
        self.step("ready");
        Ok(())
    }

    /// Loads an existing lab from its state file. Dropping the result leaves the lab running.
    pub fn attach(name: &str) -> Result<Lab> {
        topology::validate_lab_name(name)?;
        let layout = Layout::for_lab(name);
        if !layout.state_file().exists() {
            if teardown::exists(name)? {
                bail!(
                    "lab {name:?} has no state file (a crashed `up`?): remove it with \
                     `fabric-lab down --name {name}`"
                );
            }
            bail!("no lab named {name:?} (start one with `fabric-lab up --name {name}`)");
        }
        Ok(Lab {
            state: LabState::load(&layout)?,
            flannel: crate::flannel::FlannelState::load(&layout)?,
            layout,
            progress: false,
            owned: false,
        })
    }

    /// Leaves the lab running when this value is dropped.
    pub fn keep(&mut self) {
        self.owned = false;
    }

    /// Tears down lab `name` from its state file, or by namespace prefix if that is gone.
    pub fn down_by_name(name: &str) -> Result<DownReport> {
        teardown::down(name, None)
    }

    /// Tears the lab down now.
    pub fn down(mut self) -> Result<DownReport> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<DownReport> {
        self.owned = false;
        teardown::down(&self.state.name, Some(&self.state))
    }

    /// The lab's name.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// The backend the nodes run.
    pub fn backend(&self) -> Backend {
        self.state.backend
    }

    /// Where the nodes keep their state.
    pub fn datastore(&self) -> Datastore {
        self.state.datastore
    }

    /// Everything the state file records.
    pub fn state(&self) -> &LabState {
        &self.state
    }

    /// The state dir's paths.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The state dir.
    pub fn state_dir(&self) -> &Path {
        self.layout.root()
    }

    /// The nodes, in order.
    pub fn nodes(&self) -> &[Node] {
        &self.state.nodes
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Result<&Node> {
        self.state
            .node(name)
            .ok_or_else(|| anyhow!("lab {} has no node {name:?}", self.state.name))
    }

    fn node_mut(&mut self, name: &str) -> Result<&mut Node> {
        let lab = &self.state.name;
        self.state
            .nodes
            .iter_mut()
            .find(|n| n.name == name)
            .ok_or_else(|| anyhow!("lab {lab} has no node {name:?}"))
    }

    /// The pods, in creation order.
    pub fn pods(&self) -> &[Pod] {
        &self.state.pods
    }

    /// The pod `target` names (`name`, `namespace/name` or its netns).
    pub fn pod(&self, target: &str) -> Result<&Pod> {
        self.state
            .find_pod(target)
            .ok_or_else(|| anyhow!("lab {} has no pod {target:?}", self.state.name))
    }

    /// The pods on `node`.
    pub fn pods_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
        self.state.pods.iter().filter(move |p| p.node == node)
    }

    /// The switch's namespace.
    pub fn switch_netns(&self) -> String {
        topology::switch_netns(&self.state.name)
    }

    /// etcd's namespace.
    pub fn etcd_netns(&self) -> String {
        topology::etcd_netns(&self.state.name)
    }

    /// The namespace `target` names: a pod, a node, an etcd member (`etcd`, `etcd2`, ...),
    /// `sw`, `cp` (the Kubernetes control plane, also `etcd` in Kubernetes mode), or a lab
    /// namespace itself.
    pub fn netns(&self, target: &str) -> Result<String> {
        let name = &self.state.name;
        if let Some(pod) = self.state.find_pod(target) {
            return Ok(pod.netns.clone());
        }
        if let Some(node) = self.state.node(target) {
            return Ok(node.netns.clone());
        }
        if let Some(member) = self.state.etcd_member(target) {
            return Ok(member.netns.clone());
        }
        match target {
            "cp" | "etcd" if self.is_kubernetes() => return Ok(self.control_plane_netns()),
            "sw" | "switch" => return Ok(self.switch_netns()),
            "ext" | "external" if self.state.services => return Ok(self.external_netns()),
            _ => {}
        }
        if self.state.namespaces.iter().any(|n| n == target) {
            return Ok(target.to_string());
        }
        if let Some(pod) = self.kubelet_pod(target) {
            return Ok(pod.netns);
        }
        let pods: Vec<String> = self.state.pods.iter().map(Pod::qualified_name).collect();
        let nodes: Vec<&str> = self.state.nodes.iter().map(|n| n.name.as_str()).collect();
        bail!(
            "lab {name} has no {target:?}: try a pod ({}), a node ({}), {} or sw",
            pods.join(", "),
            nodes.join(", "),
            if self.is_kubernetes() {
                "cp".to_string()
            } else {
                self.state
                    .etcd_members
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )
    }

    /// Runs `argv` inside `target`'s namespace (see [`Lab::netns`]) and returns its output,
    /// whatever its exit status.
    pub fn exec(&self, target: &str, argv: &[&str]) -> Result<Output> {
        self.exec_cmd(target, argv)?.output()
    }

    /// Runs `argv` inside `target`'s namespace; fails (with its stderr) unless it exits 0.
    /// Returns its stdout.
    pub fn exec_ok(&self, target: &str, argv: &[&str]) -> Result<String> {
        self.exec_cmd(target, argv)?.run()
    }

    /// The command running `argv` inside `target`'s namespace, for callers that need a timeout,
    /// stdin or the terminal.
    pub fn exec_cmd(&self, target: &str, argv: &[&str]) -> Result<Cmd> {
        let (program, args) = argv.split_first().context("empty command")?;
        Ok(Cmd::in_netns(&self.netns(target)?, program).args(args))
    }

    // ---- etcd -----------------------------------------------------------------------------

    /// The etcd cluster's members (etcd mode), in order.
    pub fn etcd_members(&self) -> &[EtcdMember] {
        &self.state.etcd_members
    }

    /// The etcd member called `name` (`etcd`, `etcd2`, ...).
    pub fn etcd_member(&self, name: &str) -> Result<&EtcdMember> {
        self.state
            .etcd_member(name)
            .ok_or_else(|| anyhow!("lab {} has no etcd member {name:?}", self.state.name))
    }

    fn etcd_member_mut(&mut self, name: &str) -> Result<&mut EtcdMember> {
        let lab = &self.state.name;
        self.state
            .etcd_members
            .iter_mut()
            .find(|m| m.name == name)
            .ok_or_else(|| anyhow!("lab {lab} has no etcd member {name:?}"))
    }

    /// Starts every etcd member that is not running (etcd mode), then waits until each is
    /// healthy: all are started before any is waited for, since a member is healthy only
    /// once a quorum elected a leader.
    pub fn start_etcd(&mut self) -> Result<()> {
        self.ensure_etcd_mode()?;
        let stopped: Vec<String> = self
            .etcd_members()
            .iter()
            .filter(|m| !m.running())
            .map(|m| m.name.clone())
            .collect();
        ensure!(!stopped.is_empty(), "every etcd member is already running");
        for name in &stopped {
            self.spawn_etcd_member(name)?;
        }
        stopped
            .iter()
            .try_for_each(|name| self.wait_etcd_member_healthy(name))
    }

    /// Starts etcd member `name` (again, on its data dir) and waits until it is healthy, i.e.
    /// has rejoined a cluster with a leader.
    pub fn start_etcd_member(&mut self, name: &str) -> Result<()> {
        self.spawn_etcd_member(name)?;
        self.wait_etcd_member_healthy(name)
    }

    fn ensure_etcd_mode(&self) -> Result<()> {
        ensure!(
            !self.is_kubernetes(),
            "lab {} runs etcd inside its Kubernetes control plane",
            self.state.name
        );
        Ok(())
    }

    fn spawn_etcd_member(&mut self, name: &str) -> Result<()> {
        self.ensure_etcd_mode()?;
        let member = self.etcd_member(name)?;
        if let Some(d) = member.daemon.as_ref().filter(|d| d.is_running()) {
            bail!("etcd member {name} is already running (pid {})", d.pid);
        }
        let daemon = etcd::start(member, &self.state.etcd_members, &self.layout)?;
        self.etcd_member_mut(name)?.daemon = Some(daemon);
        self.save()
    }

    fn wait_etcd_member_healthy(&self, name: &str) -> Result<()> {
        let member = self.etcd_member(name)?;
        let daemon = member
            .daemon
            .as_ref()
            .with_context(|| format!("etcd member {name} is not running"))?;
        etcd::wait_member_healthy(member, daemon, &self.layout)
    }

    /// Whether etcd runs with TLS and authentication (`fabric-lab up --etcd-tls`).
    pub fn etcd_tls(&self) -> bool {
        !self.is_kubernetes() && etcd::is_tls(&self.layout)
    }

    /// How etcd user `user` reaches the lab's etcd (etcd mode; every member's endpoint): what
    /// `fabricctl` and `fabricd` are given, and what `status -o json` shows.
    pub fn etcd_access(&self, user: &str) -> etcd::EtcdAccess {
        etcd::EtcdAccess::for_user(&self.layout, &self.state.etcd_members, user)
    }

    /// The name of the etcd member that leads the cluster now, as the running members report
    /// it (`etcdctl endpoint status`); fails while none does (an election).
    pub fn etcd_leader(&self) -> Result<String> {
        etcd::leader(&self.switch_netns(), &self.layout, &self.state.etcd_members)
    }

    /// Sends `signal` to every running etcd member and waits for each to exit (a datastore
    /// outage).
    pub fn stop_etcd(&mut self, signal: Signal) -> Result<()> {
        let running: Vec<String> = self
            .etcd_members()
            .iter()
            .filter(|m| m.daemon.is_some())
            .map(|m| m.name.clone())
            .collect();
        ensure!(!running.is_empty(), "etcd is not running");
        running
            .iter()
            .try_for_each(|name| self.stop_etcd_member(name, signal))
    }

    /// Sends `signal` to etcd member `name` (by its PID) and waits for it to exit; SIGKILL is
    /// a member crash.
    pub fn stop_etcd_member(&mut self, name: &str, signal: Signal) -> Result<()> {
        let daemon = self
            .etcd_member(name)?
            .daemon
            .clone()
            .with_context(|| format!("etcd member {name} is not running"))?;
        stop_daemon(&format!("etcd member {name}"), &daemon, signal)?;
        self.etcd_member_mut(name)?.daemon = None;
        self.save()
    }

    /// Blackholes etcd for `node` (etcd mode): every packet from any member's client port is
    /// dropped as it reaches the node's namespace, and every packet to it as it leaves, so the
    /// node's connections hang (no reset, no refusal) and nothing it sends lands, as behind a
    /// partition. A table of the lab's own (`fabric_lab_partition`), in the node's namespace
    /// only; [`Lab::heal_etcd_partition`] removes it.
    pub fn partition_from_etcd(&self, node: &str) -> Result<()> {
        self.ensure_etcd_mode()?;
        let netns = self.node(node)?.netns.clone();
        let members: Vec<String> = self
            .etcd_members()
            .iter()
            .map(|m| m.ip.to_string())
            .collect();
        let members = members.join(", ");
        let ruleset = format!(
            "table ip {PARTITION_TABLE} {{\n  chain input {{\n    type filter hook input priority -300; policy accept;\n    ip saddr {{ {members} }} tcp sport {ETCD_CLIENT_PORT} drop\n  }}\n  chain output {{\n    type filter hook output priority -300; policy accept;\n    ip daddr {{ {members} }} tcp dport {ETCD_CLIENT_PORT} drop\n  }}\n}}\n",
        );
        Cmd::in_netns(&netns, "nft")
            .args(["-f", "-"])
            .stdin(ruleset)
            .run()
            .with_context(|| format!("blackholing etcd for {node}"))?;
        Ok(())
    }

    /// Ends [`Lab::partition_from_etcd`] for `node`: etcd's packets reach it again.
    pub fn heal_etcd_partition(&self, node: &str) -> Result<()> {
        let netns = self.node(node)?.netns.clone();
        Cmd::in_netns(&netns, "nft")
            .args(["delete", "table", "ip", PARTITION_TABLE])
            .run()
            .with_context(|| format!("healing {node}'s etcd partition"))?;
        Ok(())
    }

    // ---- nodes ----------------------------------------------------------------------------

    /// Adds node `node(N+1)`: namespace, underlay link (in Kubernetes mode its Node object,
    /// pod CIDRs and kubeconfig), fabricd; waits until it is ready.
    pub fn add_node(&mut self) -> Result<Node> {
        let name = self.add_node_unready()?.name;
        self.wait_ready(&name)?;
        if let Err(e) = self.refresh_subnets() {
            self.step(&format!("warning: cannot read the leases: {e:#}"));
        }
        Ok(self.node(&name)?.clone())
    }

    /// Like [`Self::add_node`], but returns once fabricd is started, ready or not (in
    /// Kubernetes mode with kube-controller-manager stopped, the node has no pod CIDR yet).
    pub fn add_node_unready(&mut self) -> Result<Node> {
        let name = self.create_node()?;
        if self.is_kubernetes() {
            self.prepare_kube_nodes(std::slice::from_ref(&name))?;
        }
        self.spawn_agent(&name)?;
        if self.is_kubernetes() {
            self.start_node_agents(std::slice::from_ref(&name))?;
        }
        Ok(self.node(&name)?.clone())
    }

    /// Creates the next node's namespace and underlay link (fabricd not started yet); returns
    /// its name.
    fn create_node(&mut self) -> Result<String> {
        let k = self.state.nodes.len() + 1;
        let name = topology::node_name(k);
        let netns = topology::node_netns(&self.state.name, &name);
        let ip = topology::node_underlay_ip(k)?;
        let agent = self.agent().daemon();
        self.step(&format!("{name}: namespace {netns}, eth0 {ip}, {agent}"));
        self.create_netns(&netns)?;
        netns::plug_into_switch(&self.switch_netns(), &name, &netns, ip, Some(SWITCH_IP))?;
        netns::sysctl(&netns, "net.ipv4.ip_forward", "1")?;
        self.state.nodes.push(Node {
            name: name.clone(),
            netns,
            underlay_ip: ip,
            socket: self.layout.node_socket(&name),
            state_dir: self.layout.node_dir(&name),
            log: self.layout.log(&name),
            subnet: None,
            fabricd: None,
            fabricd_flags: Vec::new(),
            kubelet: None,
            kube_proxy: None,
        });
        self.save()?;
        Ok(name)
    }

    /// Starts the lab's node agent on `node`: fabricd or flanneld.
    fn spawn_agent(&mut self, node: &str) -> Result<()> {
        if self.is_flannel() {
            self.spawn_flanneld(node)
        } else {
            self.spawn_fabricd(node)
        }
    }

    fn spawn_fabricd(&mut self, node_name: &str) -> Result<()> {
        self.ensure_fabricd("start fabricd")?;
        let fabricd = self.state.bin_dir.join("fabricd");
        let (backend, ttl) = (self.state.backend, self.state.lease_ttl);
        let datastore = match self.state.datastore {
            Datastore::Etcd => NodeDatastore::Etcd(self.etcd_access(etcd::FABRICD_USER).flags()),
            Datastore::Kubernetes => NodeDatastore::Kubernetes {
                kubeconfig: self.layout.node_kubeconfig(node_name),
                net_conf: self.layout.net_conf(),
            },
        };
        let node = self.node_mut(node_name)?;
        if let Some(d) = node.fabricd.as_ref().filter(|d| d.is_running()) {
            bail!("fabricd on {node_name} is already running (pid {})", d.pid);
        }
        node.fabricd = Some(node::start_fabricd(
            &fabricd, node, backend, ttl, &datastore,
        )?);
        self.save()
    }

    /// Starts fabricd on `node` with the same flags, appending to the same log, and waits until
    /// it is ready.
    pub fn start_fabricd(&mut self, node: &str) -> Result<()> {
        self.spawn_fabricd(node)?;
        self.wait_ready(node)
    }

    /// Starts fabricd on `node` with the same flags and returns at once, ready or not (e.g.
    /// while the node cannot reach its datastore; [`Self::wait_ready`] waits for it).
    pub fn start_fabricd_unready(&mut self, node: &str) -> Result<()> {
        self.spawn_fabricd(node)
    }

    /// Restarts fabricd on `node` (SIGTERM if it still runs, then start and wait until ready)
    /// with `flags` after the lab's own, e.g. `--network-policy=false`; an empty list restores
    /// the defaults.
    pub fn restart_fabricd_with(&mut self, node: &str, flags: &[&str]) -> Result<()> {
        if self
            .node(node)?
            .fabricd
            .as_ref()
            .is_some_and(|d| d.is_running())
        {
            self.stop_fabricd(node, Signal::SIGTERM)?;
        }
        self.node_mut(node)?.fabricd_flags = flags.iter().map(|f| f.to_string()).collect();
        self.save()?;
        self.start_fabricd(node)
    }

    /// Waits (up to 30 s) until fabricd on `node` answers `Status` with `Ok` (on a Flannel
    /// lab: until flanneld has written its subnet file).
    pub fn wait_ready(&self, node: &str) -> Result<()> {
        if self.is_flannel() {
            return self.wait_flanneld(node);
        }
        node::wait_ready(self.node(node)?, node::READY_TIMEOUT)
    }

    /// Sends `signal` to fabricd on `node` and waits (up to 10 s) for it to exit.
    pub fn stop_fabricd(&mut self, node: &str, signal: Signal) -> Result<()> {
        let daemon = self
            .node(node)?
            .fabricd
            .clone()
            .with_context(|| format!("fabricd on {node} is not running"))?;
        stop_daemon(&format!("fabricd on {node}"), &daemon, signal)?;
        self.node_mut(node)?.fabricd = None;
        self.save()
    }

    /// Sends `signal` to fabricd on `node` without waiting (e.g. SIGHUP).
    pub fn signal_fabricd(&self, node: &str, signal: Signal) -> Result<()> {
        let node = self.node(node)?;
        let daemon = node
            .fabricd
            .as_ref()
            .with_context(|| format!("fabricd on {} is not running", node.name))?;
        ensure!(
            daemon.signal(signal)?,
            "fabricd on {} (pid {}) is not running",
            node.name,
            daemon.pid
        );
        Ok(())
    }

    /// The last lines of fabricd's log on `node` (or of `etcd`'s).
    pub fn log_tail(&self, node: &str) -> String {
        process::tail(&self.layout.log(node), node::LOG_TAIL_LINES)
    }

    // ---- control plane --------------------------------------------------------------------

    /// Runs `fabricctl ARGS...` against the lab's datastore: etcd (from the switch namespace),
    /// or kube-apiserver with the admin kubeconfig (from the control plane's namespace).
    /// Returns its stdout.
    pub fn fabricctl(&self, args: &[&str]) -> Result<String> {
        let fabricctl = self.state.bin_dir.join("fabricctl");
        let cmd = match self.state.datastore {
            Datastore::Etcd => Cmd::in_netns(&self.switch_netns(), fabricctl)
                .args(self.etcd_access(etcd::FABRICCTL_USER).args()),
            Datastore::Kubernetes => Cmd::in_netns(&self.control_plane_netns(), fabricctl)
                .args(["--datastore", "kubernetes", "--kubeconfig"])
                .arg(self.layout.admin_kubeconfig()),
        };
        cmd.args(args).timeout(FABRICCTL_TIMEOUT).run()
    }

    /// Runs `fabricctl ARGS...` with no datastore flags, for the subcommands that only talk to
    /// a node's fabricd over its socket (`policy sync --socket`); returns its stdout.
    pub fn fabricctl_local(&self, args: &[&str]) -> Result<String> {
        Cmd::in_netns(&self.switch_netns(), self.state.bin_dir.join("fabricctl"))
            .args(args)
            .timeout(FABRICCTL_TIMEOUT)
            .run()
    }

    /// The nodes' subnets: `fabricctl leases -o json` in etcd mode; in Kubernetes mode the
    /// nodes' `spec.podCIDRs` (`kubectl get nodes`), as `[{"node", "subnet", "pod_cidrs"}]`.
    pub fn leases(&self) -> Result<Value> {
        if self.is_kubernetes() {
            return self.kube_leases();
        }
        let out = self.fabricctl(&["leases", "-o", "json"])?;
        serde_json::from_str(&out).with_context(|| format!("parsing `fabricctl leases`: {out}"))
    }

    /// The leased subnet of every node, by node name, as the datastore has them now.
    pub fn subnets(&self) -> Result<BTreeMap<String, String>> {
        if self.is_flannel() {
            return Ok(self.flannel_subnets());
        }
        Ok(subnets_by_node(&self.leases()?))
    }

    /// Reads the leases and records each node's subnet in the state.
    pub fn refresh_subnets(&mut self) -> Result<()> {
        let subnets = self.subnets()?;
        for node in &mut self.state.nodes {
            node.subnet = subnets.get(&node.name).cloned();
        }
        self.save()
    }

    // ---- pods and CNI ---------------------------------------------------------------------

    /// The conflist a pod on `node` gets by default: the lab's, pointed at that node's fabricd.
    pub fn default_conflist(&self, node: &str) -> Result<Conflist> {
        if self.is_flannel() {
            return self.flannel_conflist(node);
        }
        Ok(Conflist::fabric_default(Some(&self.node(node)?.socket)))
    }

    /// A CNI runtime on `node`: plugins run inside the node's namespace, found in the bin dir
    /// and then in `/usr/lib/cni`.
    pub fn cni_runtime(&self, node: &str) -> Result<Runtime> {
        let node = self.node(node)?;
        let mut cni_path = vec![self.state.bin_dir.clone(), SYSTEM_CNI_DIR.into()];
        if let Some(dir) = self.flannel_bin_dir() {
            cni_path.insert(0, dir.to_path_buf());
        }
        Ok(Runtime::new(cni_path).in_netns(node.netns.clone()))
    }

    /// Creates a pod on `node`: a namespace with `lo` up, attached by CNI ADD exactly as a
    /// container runtime does. In Kubernetes mode the lab plays the kubelet around it: the
    /// Namespace and the Pod object (bound to `node`) come first, the pod's status after ADD.
    /// A failed ADD is rolled back (DEL, namespace and Pod object deleted).
    pub fn add_pod(&mut self, node: &str, spec: PodSpec) -> Result<Pod> {
        let namespace = spec.k8s_namespace().to_string();
        topology::validate_pod_name("pod name", &spec.name)?;
        topology::validate_pod_name("pod namespace", &namespace)?;
        let node_info = self.node(node)?.clone();
        let netns = topology::pod_netns(&self.state.name, &namespace, &spec.name);
        ensure!(
            !self.state.namespaces.contains(&netns) && !netns::exists(&netns),
            "namespace {netns} for pod {namespace}/{} is already taken",
            spec.name
        );
        let conflist = match spec.conflist.clone() {
            Some(v) => Conflist::from_value(v)?,
            None => self.default_conflist(node)?,
        }
        .with_default_socket(&node_info.socket);
        let kube = self.is_kubernetes();
        let uid = if kube {
            self.ensure_namespace(&namespace)?;
            Some(self.create_pod_object(node, &spec)?)
        } else {
            None
        };
        let mut inv = Invocation::new(netns.clone(), Some(topology::netns_path(&netns)))
            .k8s_pod(&namespace, &spec.name);
        if let Some(uid) = &uid {
            inv = inv.k8s_sandbox(&netns, uid);
        }
        inv = inv.ips(&spec.ips, self.state.subnet_len);
        if !kube && !spec.labels.is_empty() {
            inv = inv.capability("labels", json!(spec.labels));
        }
        for (name, value) in &spec.capability_args {
            if !(kube && API_CAPABILITIES.contains(&name.as_str())) {
                inv = inv.capability(name.clone(), value.clone());
            }
        }
        inv.ifname = POD_IFACE.to_string();

        self.step(&format!("pod {namespace}/{} on {node}: CNI ADD", spec.name));
        let attached = self.create_netns(&netns).and_then(|()| {
            let result = self.cni_runtime(node)?.add(&conflist, &inv)?;
            let ip = cni_runtime::first_ipv4(&result)
                .with_context(|| format!("CNI result without an IPv4 address: {result}"))?;
            let pod = Pod {
                name: spec.name.clone(),
                namespace: namespace.clone(),
                netns: netns.clone(),
                node: node.to_string(),
                ip,
                ipv6: cni_runtime::first_ipv6(&result),
                container_id: netns.clone(),
                ifname: inv.ifname.clone(),
                conflist: conflist.to_value(),
                result,
                capability_args: inv.capability_args.clone(),
                uid: uid.clone(),
            };
            if kube {
                self.report_pod_status(&pod)?;
            }
            Ok(pod)
        });
        let pod = match attached {
            Ok(pod) => pod,
            Err(e) => {
                if let Ok(runtime) = self.cni_runtime(node) {
                    let _ = runtime.del(&conflist, &inv);
                }
                let _ = netns::delete(&netns);
                if kube {
                    let _ = self.delete_pod_object(&namespace, &spec.name);
                }
                self.state.namespaces.retain(|n| *n != netns);
                self.save()?;
                return Err(e.context(format!("attaching pod {namespace}/{} on {node}", spec.name)));
            }
        };
        self.state.pods.push(pod.clone());
        self.save()?;
        Ok(pod)
    }

    /// Deletes a pod: CNI DEL (with the cached ADD result), in Kubernetes mode the Pod object,
    /// then its namespace. If DEL fails the pod is kept, so the call can be retried.
    pub fn del_pod(&mut self, target: &str) -> Result<()> {
        let pod = self.pod(target)?.clone();
        let conflist = Conflist::from_value(pod.conflist.clone())?;
        let mut inv = self.pod_invocation(&pod);
        inv.cached_result = Some(pod.result.clone());
        self.cni_runtime(&pod.node)?
            .del(&conflist, &inv)
            .with_context(|| format!("detaching pod {}", pod.qualified_name()))?;
        if self.is_kubernetes() {
            self.delete_pod_object(&pod.namespace, &pod.name)?;
        }
        netns::delete(&pod.netns)?;
        self.state.pods.retain(|p| p.netns != pod.netns);
        self.state.namespaces.retain(|n| *n != pod.netns);
        self.save()
    }

    /// Creates an empty pod namespace for `pod` (default namespace, `lo` up), recorded so
    /// teardown removes it, and returns the invocation a runtime would use to attach it on
    /// `eth0`: for callers that drive CNI themselves, e.g. many ADDs at once through
    /// [`Lab::cni_runtime`] (which [`Lab::add_pod`], taking `&mut self`, cannot do). The
    /// namespace is a lab target for [`Lab::exec`] by its name (the invocation's container id).
    pub fn pod_sandbox(&mut self, pod: &str) -> Result<Invocation> {
        topology::validate_pod_name("pod name", pod)?;
        let netns = topology::pod_netns(&self.state.name, topology::DEFAULT_POD_NAMESPACE, pod);
        ensure!(!netns::exists(&netns), "namespace {netns} is already taken");
        self.create_netns(&netns)?;
        let mut inv = Invocation::new(netns.clone(), Some(topology::netns_path(&netns)))
            .k8s_pod(topology::DEFAULT_POD_NAMESPACE, pod);
        inv.ifname = POD_IFACE.to_string();
        Ok(inv)
    }

    /// The invocation a runtime would use for an existing pod (for CHECK, DEL, custom calls).
    pub fn pod_invocation(&self, pod: &Pod) -> Invocation {
        let mut inv = Invocation::new(
            pod.container_id.clone(),
            Some(topology::netns_path(&pod.netns)),
        )
        .k8s_pod(&pod.namespace, &pod.name);
        if let Some(uid) = &pod.uid {
            inv = inv.k8s_sandbox(&pod.container_id, uid);
        }
        inv.ifname = pod.ifname.clone();
        inv.cached_result = Some(pod.result.clone());
        inv.capability_args = pod.capability_args.clone();
        inv
    }

    /// Runs a CNI verb on `node` through the runtime, with `conflist` or the node's default.
    /// ADD returns its result, VERSION the plugin's answer, the others `None`.
    pub fn cni(
        &self,
        node: &str,
        command: CniCommand,
        inv: &Invocation,
        conflist: Option<&Conflist>,
    ) -> Result<Option<Value>, cni_runtime::Error> {
        let setup = |e: anyhow::Error| cni_runtime::Error::Config(format!("{e:#}"));
        let runtime = self.cni_runtime(node).map_err(setup)?;
        let default;
        let conflist = match conflist {
            Some(list) => list,
            None => {
                default = self.default_conflist(node).map_err(setup)?;
                &default
            }
        };
        runtime.run(command, conflist, inv)
    }

    /// Runs one plugin binary on `node` (found like the runtime finds plugins) with exactly
    /// `env` and `stdin`, and returns its raw output: for feeding plugins malformed input.
    pub fn cni_exec(
        &self,
        node: &str,
        plugin: &str,
        env: &[(String, String)],
        stdin: &[u8],
    ) -> Result<Output> {
        let runtime = self.cni_runtime(node)?;
        let binary = runtime.find_plugin(plugin)?;
        runtime.exec(&binary, env, stdin)
    }

    // ---- internals ------------------------------------------------------------------------

    /// Records `name` in the state (so a crash leaves it findable), then creates it.
    fn create_netns(&mut self, name: &str) -> Result<()> {
        self.state.record_netns(name);
        self.save()?;
        netns::create(name)
    }

    fn save(&self) -> Result<()> {
        self.save_flannel()?;
        self.state.save(&self.layout)
    }

    fn step(&self, msg: &str) {
        if self.progress {
            eprintln!("[{}] {msg}", self.state.name);
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        match self.teardown() {
            Ok(report) => {
                for w in report.warnings {
                    eprintln!("[{}] teardown: {w}", self.state.name);
                }
            }
            Err(e) => eprintln!(
                "[{}] teardown failed: {e:#} (run `fabric-lab down --name {}`)",
                self.state.name, self.state.name
            ),
        }
    }
}

/// Sends `signal` to a daemon and waits for it to exit.
pub(crate) fn stop_daemon(what: &str, daemon: &process::Daemon, signal: Signal) -> Result<()> {
    ensure!(
        daemon.signal(signal)?,
        "{what} (pid {}) is not running",
        daemon.pid
    );
    ensure!(
        daemon.wait_exit(STOP_TIMEOUT),
        "{what} (pid {}) still running {}s after {signal}",
        daemon.pid,
        STOP_TIMEOUT.as_secs()
    );
    Ok(())
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let mut text = serde_json::to_vec_pretty(value)?;
    text.push(b'\n');
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Each node's subnet from `fabricctl leases -o json`: a list of leases (or `{"leases": [...]}`
/// or an object keyed by subnet), each naming its node (`node`, `node_name`, `nodeName`,
/// `hostname`) and its subnet (`subnet`, `cidr`, `network`, or the key), possibly one level
/// down (e.g. under `lease` or `attrs`).
pub fn subnets_by_node(leases: &Value) -> BTreeMap<String, String> {
    const NODE_KEYS: [&str; 5] = ["node", "node_name", "nodeName", "hostname", "name"];
    const SUBNET_KEYS: [&str; 3] = ["subnet", "cidr", "network"];
    fn find(entry: &Value, keys: &[&str]) -> Option<String> {
        let obj = entry.as_object()?;
        keys.iter()
            .find_map(|k| obj.get(*k)?.as_str().map(str::to_string))
            .or_else(|| {
                obj.values()
                    .filter(|v| v.is_object())
                    .find_map(|v| find(v, keys))
            })
    }
    let entries: Vec<(Option<String>, &Value)> = match leases {
        Value::Array(list) => list.iter().map(|e| (None, e)).collect(),
        Value::Object(obj) => match obj.get("leases") {
            Some(Value::Array(list)) => list.iter().map(|e| (None, e)).collect(),
            _ => obj.iter().map(|(k, e)| (Some(k.clone()), e)).collect(),
        },
        _ => Vec::new(),
    };
    entries
        .into_iter()
        .filter_map(|(key, entry)| {
            let node = find(entry, &NODE_KEYS)?;
            let subnet = find(entry, &SUBNET_KEYS).or(key)?;
            Some((node, subnet.replace('-', "/")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_shapes() {
        let want: BTreeMap<String, String> = [
            ("node1".to_string(), "10.244.1.0/24".to_string()),
            ("node2".to_string(), "10.244.7.0/24".to_string()),
        ]
        .into();
        let flat = json!([
            {"subnet": "10.244.1.0/24", "node": "node1", "public_ip": "172.30.0.11"},
            {"subnet": "10.244.7.0/24", "node": "node2"}
        ]);
        assert_eq!(subnets_by_node(&flat), want);
        let wrapped = json!({"leases": [
            {"subnet": "10.244.1.0/24", "lease": {"node_name": "node1"}},
            {"cidr": "10.244.7.0/24", "attrs": {"nodeName": "node2"}}
        ]});
        assert_eq!(subnets_by_node(&wrapped), want);
        let keyed = json!({
            "10.244.1.0-24": {"node": "node1"},
            "10.244.7.0-24": {"node": "node2", "backend": {"type": "vxlan"}}
        });
        assert_eq!(subnets_by_node(&keyed), want);
        assert!(subnets_by_node(&json!(null)).is_empty());
    }
}
