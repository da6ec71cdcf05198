//! The kubelet's networking role, one per node of a Kubernetes-mode lab (hidden subcommand
//! `fabric-lab kubelet --name LAB --node NODE`, started by `up` inside the node's namespace,
//! logging to `logs/kubelet-NODE.log`). It authenticates as the node itself (client certificate
//! `system:node:NODE` in `system:nodes`, so the Node authorizer applies) and:
//!
//! - reports the node: a `Ready` heartbeat on `nodes/status` every [`HEARTBEAT`] (Ready once
//!   fabricd, the node's network plugin, is), with capacity and node info, and removes the
//!   `node.kubernetes.io/not-ready` taint once Ready (no node lifecycle controller runs);
//! - follows the Pods bound to the node ([`watch`]: one list, then a streaming watch) and for
//!   each new one does what kubelet and containerd do: network namespace, CNI ADD of the lab's
//!   conflist with containerd's `CNI_ARGS` and `portMappings`, the pod's resolv.conf in
//!   `/etc/netns/<netns>/` ([`resolv`]), a process per container ([`workload`]), readiness
//!   probes, then `status` (IPs, Running, Ready, containerStatuses);
//! - when a Pod is being deleted (or is gone): stops its processes, CNI DEL, removes the
//!   namespace and the resolv.conf directory, then deletes the Pod with grace period 0.
//!
//! What it runs is recorded in its state file ([`store`]) before it is created, so a restarted
//! role picks its pods up and `fabric-lab down` ends their processes by PID. Pods the lab
//! attaches itself ([`crate::Lab::add_pod`], annotated) are left alone.

pub mod pod;
pub mod resolv;
pub mod store;
pub mod watch;
pub mod workload;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use self::pod::PodInfo;
use self::resolv::{ClusterDns, DnsConfig};
use self::store::{KubeletState, RunningContainer, RunningPod};
use self::watch::Event;
use self::workload::Plan;
use crate::cni_runtime::{self, Conflist, Invocation, Runtime};
use crate::kube::certs::Pki;
use crate::kube::kubeconfig::{self, Credential};
use crate::kube::objects::{self, ContainerState, NodeHeartbeat, NOT_READY_TAINT};
use crate::kube::{binaries, dns, Kubectl};
use crate::process::Daemon;
use crate::state::{LabState, Layout, Node};
use crate::topology::{self, KUBERNETES_SERVICE_IP, POD_IFACE};
use crate::{netns, node};

/// How often the node's status is reported (and dead containers restarted).
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// How long a new pod's readiness probes get before it is reported not ready (they are tried
/// again on every heartbeat).
pub const READINESS_WAIT: Duration = Duration::from_secs(30);

/// Where `ip netns exec` finds a namespace's own `/etc` files.
pub const NETNS_ETC: &str = "/etc/netns";

/// The node's resolv.conf (`Default` DNS policy; its search domains follow the cluster's).
pub const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";

/// Most pods a node takes (kubelet's default `maxPods`).
pub const MAX_PODS: u32 = 110;

/// The first wait after a failed pod start; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Validity of the ServiceAccount tokens the role hands workloads.
const WORKLOAD_TOKEN_DURATION: &str = "48h";

/// What one kubelet role needs from the lab.
#[derive(Debug, Clone)]
pub struct Config {
    /// The lab's name.
    pub lab: String,
    /// The node.
    pub node: Node,
    /// The lab's state dir.
    pub layout: Layout,
    /// Where fabric-lab and the CNI plugin are.
    pub bin_dir: PathBuf,
    /// Where the pinned Kubernetes binaries (kubectl, coredns) are.
    pub kube_bin_dir: PathBuf,
    /// kubectl as the node.
    pub kubectl: Kubectl,
    /// The version reported in the node's info.
    pub version: String,
}

impl Config {
    /// The role for `node` of lab `lab`, from the lab's state file.
    pub fn load(lab: &str, node: &str) -> Result<Config> {
        let layout = Layout::for_lab(lab);
        let state = LabState::load(&layout)?;
        let node = state
            .node(node)
            .cloned()
            .with_context(|| format!("lab {lab} has no node {node:?}"))?;
        let kube_bin_dir = state
            .kube_bin_dir
            .clone()
            .with_context(|| format!("lab {lab} is not a Kubernetes-mode lab"))?;
        let kubectl = Kubectl {
            binary: kube_bin_dir.join("kubectl"),
            netns: node.netns.clone(),
            kubeconfig: layout.kubelet_kubeconfig(&node.name),
            cache_dir: layout.kubelet_dir(&node.name).join("kubectl-cache"),
        };
        Ok(Config {
            lab: lab.to_string(),
            version: binaries::Versions::pinned()?.kubernetes,
            bin_dir: state.bin_dir.clone(),
            kube_bin_dir,
            kubectl,
            layout,
            node,
        })
    }
}

/// Runs the role until killed.
pub fn run(lab: &str, node: &str) -> Result<()> {
    let cfg = Config::load(lab, node)?;
    let mut kubelet = Kubelet::new(cfg)?;
    log(&format!(
        "kubelet role for {} ({} pods recorded)",
        kubelet.cfg.node.name,
        kubelet.state.pods.len()
    ));
    let (tx, rx) = mpsc::channel();
    let (kubectl, name) = (kubelet.cfg.kubectl.clone(), kubelet.cfg.node.name.clone());
    std::thread::Builder::new()
        .name("pod-watch".into())
        .spawn(move || watch::run(&kubectl, &name, &tx))
        .context("starting the pod watch")?;
    kubelet.tick();
    let mut next_tick = Instant::now() + HEARTBEAT;
    loop {
        match rx.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
            Ok(event) => {
                kubelet.apply(event);
                while let Ok(event) = rx.try_recv() {
                    kubelet.apply(event);
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                kubelet.tick();
                next_tick = Instant::now() + HEARTBEAT;
            }
            Err(RecvTimeoutError::Disconnected) => bail!("the pod watch ended"),
        }
        kubelet.reconcile();
    }
}

/// The role's state: what the API says (the watch cache) and what runs (the store).
struct Kubelet {
    cfg: Config,
    state: KubeletState,
    /// Pods bound to the node, by uid, as last seen.
    cache: BTreeMap<String, Value>,
    /// Whether a full list has been seen (before that nothing is stopped).
    synced: bool,
    /// Failed starts: when to try again, and the next wait.
    backoff: HashMap<String, (Instant, Duration)>,
    /// Pods asked to be deleted (deletion sent once per uid).
    finalized: Vec<String>,
    host_dns: DnsConfig,
    network_ready: bool,
    ready_since: String,
    untainted: bool,
    last_heartbeat_error: Option<String>,
}

impl Kubelet {
    fn new(cfg: Config) -> Result<Kubelet> {
        let state = KubeletState::load(&cfg.layout.kubelet_state(&cfg.node.name))?;
        let host_dns =
            resolv::parse(&std::fs::read_to_string(HOST_RESOLV_CONF).unwrap_or_default());
        Ok(Kubelet {
            cfg,
            state,
            cache: BTreeMap::new(),
            synced: false,
            backoff: HashMap::new(),
            finalized: Vec::new(),
            host_dns,
            network_ready: false,
            ready_since: now(),
            untainted: false,
            last_heartbeat_error: None,
        })
    }

    fn save(&self) -> Result<()> {
        self.state
            .save(&self.cfg.layout.kubelet_state(&self.cfg.node.name))
    }

    fn apply(&mut self, event: Event) {
        let uid = |o: &Value| o["metadata"]["uid"].as_str().map(str::to_string);
        match event {
            Event::Listed(items) => {
                self.cache = items
                    .into_iter()
                    .filter_map(|o| Some((uid(&o)?, o)))
                    .collect();
                self.synced = true;
            }
            Event::Upsert(o) => {
                if let Some(u) = uid(&o) {
                    self.cache.insert(u, o);
                }
            }
            Event::Deleted(o) => {
                if let Some(u) = uid(&o) {
                    self.cache.remove(&u);
                }
            }
        }
    }

    /// Converges what runs to what the API wants.
    fn reconcile(&mut self) {
        if !self.synced {
            return;
        }
        let infos: Vec<(PodInfo, Value)> = self
            .cache
            .values()
            .filter_map(|o| Some((PodInfo::from_object(o).ok()?, o.clone())))
            .collect();
        // Stop what is gone or going.
        for running in self.state.pods.clone() {
            let wanted = infos
                .iter()
                .find(|(i, _)| i.uid == running.uid)
                .map(|(i, _)| i);
            match wanted {
                Some(info) if info.wanted() => {}
                gone => {
                    log(&format!("pod {}: stopping", running.key()));
                    if let Err(e) = self.stop_pod(&running) {
                        log(&format!("pod {}: stopping failed: {e:#}", running.key()));
                        continue;
                    }
                    if gone.is_some_and(|i| i.deleting) {
                        self.finalize(&running.uid, &running.namespace, &running.name);
                    }
                }
            }
        }
        // Finish the deletion of pods being deleted that never ran here.
        for (info, _) in &infos {
            if info.deleting && !info.lab_attached && self.state.pod(&info.uid).is_none() {
                self.finalize(&info.uid, &info.namespace, &info.name);
            }
        }
        // Start what is new.
        let new: Vec<&(PodInfo, Value)> = infos
            .iter()
            .filter(|(i, _)| i.wanted() && self.state.pod(&i.uid).is_none())
            .filter(|(i, _)| {
                self.backoff
                    .get(&i.uid)
                    .is_none_or(|(at, _)| Instant::now() >= *at)
            })
            .collect();
        if new.is_empty() {
            return;
        }
        if !self.network_ready {
            self.check_network();
            if !self.network_ready {
                return;
            }
        }
        for (info, object) in new {
            if info.host_network {
                continue;
            }
            log(&format!("pod {}: starting", info.key()));
            match self.start_pod(info, object) {
                Ok(()) => {
                    self.backoff.remove(&info.uid);
                    log(&format!("pod {}: running", info.key()));
                }
                Err(e) => {
                    let wait = self
                        .backoff
                        .get(&info.uid)
                        .map_or(FIRST_BACKOFF, |(_, w)| (*w * 2).min(MAX_BACKOFF));
                    self.backoff
                        .insert(info.uid.clone(), (Instant::now() + wait, wait));
                    log(&format!(
                        "pod {}: start failed (next try in {}s): {e:#}",
                        info.key(),
                        wait.as_secs()
                    ));
                    if let Some(running) = self.state.pod(&info.uid).cloned() {
                        if let Err(e) = self.stop_pod(&running) {
                            log(&format!("pod {}: cleanup failed: {e:#}", info.key()));
                        }
                    }
                }
            }
        }
    }

    /// Deletes the Pod object at once: its containers are gone.
    fn finalize(&mut self, uid: &str, namespace: &str, name: &str) {
        if self.finalized.iter().any(|u| u == uid) {
            return;
        }
        self.finalized.push(uid.to_string());
        let deleted = self.cfg.kubectl.delete_pod_now(namespace, name);
        match deleted {
            Ok(_) => log(&format!("pod {namespace}/{name}: deleted")),
            Err(e) => log(&format!("pod {namespace}/{name}: delete failed: {e:#}")),
        }
    }

    fn runtime(&self) -> Runtime {
        Runtime::new(vec![
            self.cfg.bin_dir.clone(),
            crate::lab::SYSTEM_CNI_DIR.into(),
        ])
        .in_netns(self.cfg.node.netns.clone())
    }

    fn invocation(&self, running: &RunningPod) -> Invocation {
        let mut inv = Invocation::new(
            running.sandbox_id.clone(),
            Some(topology::netns_path(&running.netns)),
        )
        .k8s_pod(&running.namespace, &running.name)
        .k8s_sandbox(&running.sandbox_id, &running.uid);
        inv.ifname = POD_IFACE.to_string();
        inv.capability_args = running.capability_args.clone();
        if !running.result.is_null() {
            inv.cached_result = Some(running.result.clone());
        }
        inv
    }

    fn start_pod(&mut self, info: &PodInfo, object: &Value) -> Result<()> {
        let netns = topology::pod_netns(&self.cfg.lab, &info.namespace, &info.name);
        if netns::exists(&netns) {
            bail!("network namespace {netns} is already taken");
        }
        let conflist_path = self.cfg.layout.conflist();
        let conflist: Value = serde_json::from_str(
            &std::fs::read_to_string(&conflist_path)
                .with_context(|| format!("reading {}", conflist_path.display()))?,
        )
        .with_context(|| format!("parsing {}", conflist_path.display()))?;
        let conflist = Conflist::from_value(conflist)?.with_default_socket(&self.cfg.node.socket);
        let mut capability_args = serde_json::Map::new();
        if let Some(mappings) = info.port_mappings() {
            capability_args.insert("portMappings".into(), mappings);
        }
        let dir = self
            .cfg
            .layout
            .kubelet_dir(&self.cfg.node.name)
            .join("pods")
            .join(&info.uid);
        let mut running = RunningPod {
            uid: info.uid.clone(),
            namespace: info.namespace.clone(),
            name: info.name.clone(),
            sandbox_id: random_id(),
            netns: netns.clone(),
            conflist: conflist.to_value(),
            capability_args,
            result: Value::Null,
            ip: None,
            ipv6: None,
            resolv_dir: None,
            dir: dir.clone(),
            started: now(),
            containers: Vec::new(),
        };
        self.record(&running)?;

        // The sandbox: namespace and network.
        netns::create(&netns)?;
        let inv = self.invocation(&running);
        let result = self
            .runtime()
            .add(&conflist, &inv)
            .with_context(|| format!("CNI ADD for {}", info.key()))?;
        running.ip = cni_runtime::first_ipv4(&result);
        running.ipv6 = cni_runtime::first_ipv6(&result);
        running.result = result;
        let ip = running
            .ip
            .with_context(|| format!("CNI result without an IPv4 address: {}", running.result))?;
        running.resolv_dir = Some(PathBuf::from(NETNS_ETC).join(&netns));
        self.record(&running)?;
        self.write_resolv_conf(&running, object)?;

        // The containers.
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for container in &info.containers {
            let argv = self.container_argv(info, container, &dir)?;
            let log = self.cfg.layout.container_log(
                &info.namespace,
                &info.name,
                &info.uid,
                &container.name,
            );
            running.containers.push(RunningContainer {
                name: container.name.clone(),
                image: container.image.clone(),
                id: random_id(),
                argv: argv.clone(),
                log: log.clone(),
                daemon: None,
                ready: container.readiness.is_none(),
            });
            self.record(&running)?;
            if !argv.is_empty() {
                let daemon = workload::start(&netns, &argv, &log)?;
                if let Some(c) = running.containers.last_mut() {
                    c.daemon = Some(daemon);
                }
                self.record(&running)?;
            }
        }

        // Readiness, then the status.
        let deadline = Instant::now() + READINESS_WAIT;
        for (c, spec) in running.containers.iter_mut().zip(&info.containers) {
            if let Some(probe) = &spec.readiness {
                while !c.ready && Instant::now() < deadline {
                    c.ready = workload::probe_once(IpAddr::V4(ip), probe, Duration::from_secs(1));
                    if !c.ready {
                        std::thread::sleep(Duration::from_millis(250));
                    }
                }
            }
        }
        self.record(&running)?;
        self.report_status(&running)
    }

    /// The command a container runs (empty: nothing runs), preparing what it needs.
    fn container_argv(
        &self,
        info: &PodInfo,
        container: &pod::Container,
        dir: &std::path::Path,
    ) -> Result<Vec<String>> {
        match workload::plan(container) {
            Plan::Idle => Ok(Vec::new()),
            Plan::Porter { tcp, udp } => {
                let mut argv = vec![self.cfg.bin_dir.join("fabric-lab").display().to_string()];
                argv.extend(workload::porter_args(&tcp, &udp, &info.name));
                Ok(argv)
            }
            Plan::CoreDns => {
                let volumes = dir.join("volumes");
                self.project_config_maps(info, container, &volumes)?;
                let args = workload::rewrite_mount_paths(&container.args, &container.mounts, |v| {
                    volumes.join(v)
                });
                let corefile = workload::corefile_arg(&args)
                    .map(PathBuf::from)
                    .context("the coredns container names no -conf Corefile")?;
                let kubeconfig = dir.join("serviceaccount.kubeconfig");
                self.write_workload_kubeconfig(info, &kubeconfig)?;
                let text = std::fs::read_to_string(&corefile)
                    .with_context(|| format!("reading {}", corefile.display()))?;
                let text = dns::with_kubeconfig(&text, &kubeconfig.display().to_string());
                std::fs::write(&corefile, text)
                    .with_context(|| format!("writing {}", corefile.display()))?;
                let mut argv = vec![self.cfg.kube_bin_dir.join("coredns").display().to_string()];
                argv.extend(args);
                Ok(argv)
            }
        }
    }

    /// Writes the ConfigMap volumes `container` mounts under `volumes/<volume>/`.
    fn project_config_maps(
        &self,
        info: &PodInfo,
        container: &pod::Container,
        volumes: &std::path::Path,
    ) -> Result<()> {
        for (volume, _) in &container.mounts {
            let Some(cm) = info.config_maps.iter().find(|v| &v.volume == volume) else {
                continue;
            };
            let object = self
                .cfg
                .kubectl
                .json(&["get", "configmap", &cm.config_map, "-n", &info.namespace])
                .with_context(|| {
                    format!("reading ConfigMap {}/{}", info.namespace, cm.config_map)
                })?;
            let dir = volumes.join(volume);
            for (path, text) in workload::config_map_files(&object, &cm.items) {
                let file = dir.join(&path);
                if let Some(parent) = file.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("creating {}", parent.display()))?;
                }
                std::fs::write(&file, text)
                    .with_context(|| format!("writing {}", file.display()))?;
            }
        }
        Ok(())
    }

    /// A kubeconfig for the pod's ServiceAccount: a token bound to the pod, reaching the API
    /// through the `kubernetes` Service (so through kube-proxy and the fabric).
    fn write_workload_kubeconfig(&self, info: &PodInfo, path: &std::path::Path) -> Result<()> {
        let token = self
            .cfg
            .kubectl
            .run(&[
                "create",
                "token",
                &info.service_account,
                "-n",
                &info.namespace,
                "--bound-object-kind=Pod",
                &format!("--bound-object-name={}", info.name),
                &format!("--bound-object-uid={}", info.uid),
                &format!("--duration={WORKLOAD_TOKEN_DURATION}"),
            ])
            .with_context(|| {
                format!(
                    "creating a token of ServiceAccount {}/{}",
                    info.namespace, info.service_account
                )
            })?;
        let config = kubeconfig::kubeconfig(
            &format!("https://{KUBERNETES_SERVICE_IP}:443"),
            &Pki::at(self.cfg.layout.pki()).ca_cert(),
            &format!(
                "system:serviceaccount:{}:{}",
                info.namespace, info.service_account
            ),
            &Credential::Token(token.trim().to_string()),
        );
        kubeconfig::write(path, &config)
    }

    fn write_resolv_conf(&self, running: &RunningPod, object: &Value) -> Result<()> {
        let Some(dir) = &running.resolv_dir else {
            return Ok(());
        };
        let cluster = ClusterDns {
            nameserver: dns::CLUSTER_DNS_IP,
            domain: dns::CLUSTER_DOMAIN.to_string(),
        };
        let text = resolv::render(&resolv::pod_dns(object, &cluster, &self.host_dns));
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let file = dir.join("resolv.conf");
        std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))
    }

    fn report_status(&self, running: &RunningPod) -> Result<()> {
        let mut ips: Vec<IpAddr> = running.ip.into_iter().map(IpAddr::V4).collect();
        ips.extend(running.ipv6.map(IpAddr::V6));
        let containers: Vec<ContainerState> = running
            .containers
            .iter()
            .map(|c| ContainerState {
                name: c.name.clone(),
                image: c.image.clone(),
                id: c.id.clone(),
                ready: c.ready,
            })
            .collect();
        let patch = objects::running_pod_status(
            self.cfg.node.underlay_ip,
            &ips,
            &containers,
            &running.started,
            &now(),
        );
        let path = format!(
            "/api/v1/namespaces/{}/pods/{}",
            running.namespace, running.name
        );
        self.update_status(&path, &patch)
            .with_context(|| format!("reporting Pod {}'s status", running.key()))
    }

    /// Writes a status as a kubelet does: read the object, merge `patch` into its status, PUT
    /// it to the `status` subresource (a node may update, not read, `*/status`; kubectl's
    /// `patch --subresource` reads it first), again on a conflict.
    fn update_status(&self, path: &str, patch: &Value) -> Result<()> {
        let mut last = None;
        for _ in 0..5 {
            let mut object: Value =
                serde_json::from_str(&self.cfg.kubectl.run(&["get", "--raw", path])?)
                    .with_context(|| format!("parsing {path}"))?;
            objects::merge_status(&mut object, patch);
            let put = self.cfg.kubectl.run_stdin(
                &["replace", "--raw", &format!("{path}/status"), "-f", "-"],
                object.to_string(),
            );
            match put {
                Ok(_) => return Ok(()),
                Err(e) if format!("{e:#}").contains("onflict") => last = Some(e),
                Err(e) => return Err(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("updating {path}: conflicts")))
    }

    /// Records `running` in the store (replacing its earlier record).
    fn record(&mut self, running: &RunningPod) -> Result<()> {
        match self.state.pod_mut(&running.uid) {
            Some(p) => *p = running.clone(),
            None => self.state.pods.push(running.clone()),
        }
        self.save()
    }

    /// Stops a pod's processes, detaches it, removes its namespace and files and its record.
    fn stop_pod(&mut self, running: &RunningPod) -> Result<()> {
        for c in &running.containers {
            if let Some(d) = &c.daemon {
                d.terminate()
                    .with_context(|| format!("stopping container {}", c.name))?;
            }
        }
        if !running.result.is_null() {
            let conflist = Conflist::from_value(running.conflist.clone())?;
            self.runtime()
                .del(&conflist, &self.invocation(running))
                .with_context(|| format!("CNI DEL for {}", running.key()))?;
        }
        netns::delete(&running.netns)?;
        for dir in running.resolv_dir.iter().chain([&running.dir]) {
            match std::fs::remove_dir_all(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
            }
        }
        self.state.pods.retain(|p| p.uid != running.uid);
        self.save()
    }

    fn check_network(&mut self) {
        let status = node::ready_status(&self.cfg.node);
        let ready = status.is_ok();
        if ready != self.network_ready {
            self.ready_since = now();
            log(&format!(
                "network {}",
                match &status {
                    Ok(()) => "ready (fabricd answers)".to_string(),
                    Err(why) => format!("not ready: fabricd {why}"),
                }
            ));
        }
        self.network_ready = ready;
    }

    /// The heartbeat: the node's status, its taint, dead containers, pending readiness.
    fn tick(&mut self) {
        self.check_network();
        let heartbeat = NodeHeartbeat {
            ready: self.network_ready,
            message: "container runtime network not ready: NetworkReady=false \
                      reason:NetworkPluginNotReady message:fabricd is not ready"
                .into(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_kib: memory_kib(),
            max_pods: MAX_PODS,
            version: self.cfg.version.clone(),
        };
        let patch = objects::node_heartbeat_patch(&heartbeat, &now(), &self.ready_since);
        let sent = self.update_status(&format!("/api/v1/nodes/{}", self.cfg.node.name), &patch);
        let error = sent.err().map(|e| {
            let text = format!("{e:#}");
            // The command line holds the whole object: keep the server's answer.
            match text.rfind("): ") {
                Some(at) => text[at + 3..].to_string(),
                None => text,
            }
        });
        if error != self.last_heartbeat_error {
            match &error {
                Some(e) => log(&format!("node status not reported: {e}")),
                None => log("node status reported"),
            }
            self.last_heartbeat_error = error.clone();
        }
        if self.network_ready && !self.untainted && error.is_none() {
            self.untaint();
        }
        self.heal_containers();
    }

    /// Removes the not-ready taint the apiserver put on the new Node.
    fn untaint(&mut self) {
        let name = self.cfg.node.name.clone();
        let node = match self.cfg.kubectl.json(&["get", "node", &name]) {
            Ok(node) => node,
            Err(e) => return log(&format!("reading Node {name}: {e:#}")),
        };
        if objects::has_taint(&node, NOT_READY_TAINT) {
            let taint = format!("{NOT_READY_TAINT}:NoSchedule-");
            if let Err(e) = self.cfg.kubectl.run(&["taint", "node", &name, &taint]) {
                return log(&format!("removing taint {NOT_READY_TAINT}: {e:#}"));
            }
            log(&format!("removed taint {NOT_READY_TAINT}"));
        }
        self.untainted = true;
    }

    /// Restarts containers whose process died (restartPolicy Always) and probes the ones not
    /// ready yet, reporting a changed readiness.
    fn heal_containers(&mut self) {
        for mut running in self.state.pods.clone() {
            let Some(object) = self
                .cache
                .values()
                .find(|o| o["metadata"]["uid"] == running.uid.as_str())
            else {
                continue;
            };
            let Ok(info) = PodInfo::from_object(object) else {
                continue;
            };
            let mut changed = false;
            let key = running.key();
            for c in &mut running.containers {
                if c.argv.is_empty() || c.daemon.as_ref().is_some_and(Daemon::is_running) {
                    continue;
                }
                log(&format!(
                    "pod {key}: container {} exited; restarting",
                    c.name
                ));
                match workload::start(&running.netns, &c.argv, &c.log) {
                    Ok(d) => c.daemon = Some(d),
                    Err(e) => log(&format!("restarting {}: {e:#}", c.name)),
                }
                changed = true;
            }
            let mut readiness_changed = false;
            if let Some(ip) = running.ip {
                for (c, spec) in running.containers.iter_mut().zip(&info.containers) {
                    if let (false, Some(probe)) = (c.ready, &spec.readiness) {
                        if workload::probe_once(IpAddr::V4(ip), probe, Duration::from_secs(1)) {
                            c.ready = true;
                            readiness_changed = true;
                        }
                    }
                }
            }
            if changed || readiness_changed {
                if let Err(e) = self.record(&running) {
                    log(&format!("pod {}: {e:#}", running.key()));
                }
            }
            if readiness_changed {
                if let Err(e) = self.report_status(&running) {
                    log(&format!("pod {}: {e:#}", running.key()));
                }
            }
        }
    }
}

/// The PIDs of every container process recorded in `node`'s kubelet state, and the
/// `/etc/netns` directories it wrote (for teardown).
pub fn recorded(layout: &Layout, node: &str) -> (Vec<(String, Daemon)>, Vec<PathBuf>) {
    let state = KubeletState::load(&layout.kubelet_state(node)).unwrap_or_default();
    let daemons = state
        .pods
        .iter()
        .flat_map(|p| {
            p.containers.iter().filter_map(move |c| {
                Some((
                    format!("container {}/{} on {node}", p.key(), c.name),
                    c.daemon.clone()?,
                ))
            })
        })
        .collect();
    let dirs = state
        .pods
        .iter()
        .filter_map(|p| p.resolv_dir.clone())
        .collect();
    (daemons, dirs)
}

/// The pods every kubelet role of the lab runs (for `exec`, `status`).
pub fn pods(layout: &Layout, nodes: &[Node]) -> Vec<(String, RunningPod)> {
    nodes
        .iter()
        .flat_map(|n| {
            KubeletState::load(&layout.kubelet_state(&n.name))
                .unwrap_or_default()
                .pods
                .into_iter()
                .map(|p| (n.name.clone(), p))
        })
        .collect()
}

fn random_id() -> String {
    (0..4)
        .map(|_| format!("{:016x}", rand::random::<u64>()))
        .collect()
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn log(msg: &str) {
    eprintln!("{} {msg}", now());
}

fn memory_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(1 << 20)
}
