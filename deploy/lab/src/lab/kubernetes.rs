//! The [`Lab`]'s Kubernetes-mode steps: bringing up the control plane in `NAME-cp` (PKI,
//! kubeconfigs, etcd, kube-apiserver, kube-controller-manager, fabric's RBAC from the
//! manifest), registering nodes as a kubelet would before their fabricd starts, giving each
//! fabricd its ServiceAccount kubeconfig and each node's kubelet role its `system:node:NODE`
//! certificate, and the kubelet's part in the life of the pods the lab attaches itself
//! (Namespace, Pod object bound to the node and annotated so the kubelet role leaves it alone,
//! status after CNI ADD, deletion after CNI DEL).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::Value;

use super::Lab;
use crate::kube::certs::Leaf;
use crate::kube::certs::Pki;
use crate::kube::control_plane::{
    self, PodNetworks, APISERVER, CONTROLLER_MANAGER, ETCD, SCHEDULER,
};
use crate::kube::kubeconfig::{self, Credential};
use crate::kube::proxy::KUBE_PROXY;
use crate::kube::{self, objects, Kubectl};
use crate::process::{self, Daemon};
use crate::spec::{Datastore, PodSpec};
use crate::state::{Component, Pod};
use crate::topology::{self, CONTROL_PLANE_IP, SWITCH_IP};
use crate::{etcd, netns};

/// How long kube-controller-manager gets to give every new node its pod CIDRs.
const POD_CIDR_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a new Namespace may take to get its `default` ServiceAccount.
const SERVICE_ACCOUNT_TIMEOUT: Duration = Duration::from_secs(30);

/// The IPv6 node subnet length (net-conf.json's `IPv6SubnetLen` default).
const IPV6_SUBNET_LEN: u8 = 64;

/// The user of the admin kubeconfig.
const ADMIN: &str = "admin";

impl Lab {
    /// Is this a Kubernetes-mode lab?
    pub fn is_kubernetes(&self) -> bool {
        self.state.datastore == Datastore::Kubernetes
    }

    /// The control plane's namespace (Kubernetes mode).
    pub fn control_plane_netns(&self) -> String {
        topology::control_plane_netns(&self.state.name)
    }

    /// The admin kubeconfig (`system:masters`), in Kubernetes mode.
    pub fn kubeconfig(&self) -> Option<std::path::PathBuf> {
        self.is_kubernetes().then(|| self.layout.admin_kubeconfig())
    }

    /// The pinned kubectl with the admin kubeconfig, run inside the control plane's namespace.
    pub fn kubectl(&self) -> Result<Kubectl> {
        let bin = self
            .state
            .kube_bin_dir
            .clone()
            .filter(|_| self.is_kubernetes())
            .with_context(|| {
                format!(
                    "lab {} keeps its state in etcd, not Kubernetes (bring one up with \
                     `fabric-lab up --datastore kubernetes`)",
                    self.state.name
                )
            })?;
        Ok(Kubectl {
            binary: bin.join("kubectl"),
            netns: self.control_plane_netns(),
            kubeconfig: self.layout.admin_kubeconfig(),
            cache_dir: self.layout.kubectl_cache(),
        })
    }

    /// Is kube-apiserver running?
    pub fn apiserver_running(&self) -> bool {
        self.state
            .component(APISERVER)
            .is_some_and(Daemon::is_running)
    }

    /// Makes the PKI and kubeconfigs, starts etcd, kube-apiserver and kube-controller-manager
    /// in `NAME-cp`, waits until the apiserver is ready, and applies fabric's RBAC.
    pub(super) fn build_control_plane(&mut self) -> Result<()> {
        let cp = self.control_plane_netns();
        self.step(&format!(
            "Kubernetes control plane in {cp} at {CONTROL_PLANE_IP}: etcd, kube-apiserver, \
             kube-controller-manager"
        ));
        self.create_netns(&cp)?;
        netns::plug_into_switch(
            &self.switch_netns(),
            "cp",
            &cp,
            CONTROL_PLANE_IP,
            Some(SWITCH_IP),
        )?;

        let pki = Pki::at(self.layout.pki());
        pki.create().context("making the lab PKI")?;
        std::fs::create_dir_all(self.layout.kubectl_cache())
            .with_context(|| format!("creating {}", self.layout.kubectl_cache().display()))?;
        for (user, leaf) in [
            (ADMIN, "admin"),
            (CONTROLLER_MANAGER, CONTROLLER_MANAGER),
            (SCHEDULER, SCHEDULER),
            (KUBE_PROXY, KUBE_PROXY),
        ] {
            let config = kubeconfig::kubeconfig(
                &topology::apiserver_url(),
                &pki.ca_cert(),
                user,
                &Credential::ClientCert {
                    cert: pki.cert(leaf),
                    key: pki.key(leaf),
                },
            );
            kubeconfig::write(&self.layout.kubeconfig(user), &config)?;
        }

        let etcd = self.start_component(ETCD, &control_plane::etcd_args(&self.layout))?;
        etcd::wait_healthy(&cp, &etcd, &self.layout)?;
        let apiserver = self.start_component(
            APISERVER,
            &control_plane::apiserver_args(&self.layout, &pki, self.state.ipv6_network.is_some()),
        )?;
        self.step("waiting for kube-apiserver to be ready");
        control_plane::wait_apiserver_ready(&self.kubectl()?, &apiserver, &self.layout)?;
        self.start_controller_manager()?;
        if self.state.services {
            self.step("kube-scheduler");
            self.start_component(SCHEDULER, &control_plane::scheduler_args(&self.layout))?;
        }

        let manifest =
            kube::manifest_path(std::env::var_os(kube::MANIFEST_ENV), &self.state.bin_dir);
        self.step(&format!(
            "fabric's RBAC: the {} objects of {}",
            kube::RBAC_SELECTOR,
            manifest.display()
        ));
        self.kubectl()?
            .run(&[
                "apply",
                "-f",
                &manifest.display().to_string(),
                "-l",
                kube::RBAC_SELECTOR,
            ])
            .context("applying fabric's RBAC")?;
        Ok(())
    }

    /// Starts kube-controller-manager (node IPAM on the lab's networks).
    pub fn start_controller_manager(&mut self) -> Result<()> {
        let networks = PodNetworks {
            ipv4: self.state.network.clone(),
            ipv4_len: self.state.subnet_len,
            ipv6: self
                .state
                .ipv6_network
                .clone()
                .map(|n| (n, IPV6_SUBNET_LEN)),
        };
        let pki = Pki::at(self.layout.pki());
        let args =
            control_plane::controller_manager_args(&self.state.name, &self.layout, &pki, &networks);
        self.state
            .control_plane
            .retain(|c| c.name != CONTROLLER_MANAGER);
        self.start_component(CONTROLLER_MANAGER, &args)?;
        Ok(())
    }

    /// Stops kube-controller-manager (nodes registered meanwhile get no pod CIDR until it
    /// runs again).
    pub fn stop_controller_manager(&mut self) -> Result<()> {
        let daemon = self
            .state
            .component(CONTROLLER_MANAGER)
            .cloned()
            .context("kube-controller-manager is not part of this lab")?;
        super::stop_daemon(
            CONTROLLER_MANAGER,
            &daemon,
            nix::sys::signal::Signal::SIGTERM,
        )
    }

    /// Whether kube-controller-manager runs.
    fn controller_manager_running(&self) -> bool {
        self.state
            .component(CONTROLLER_MANAGER)
            .is_some_and(Daemon::is_running)
    }

    /// Starts one control-plane daemon in `NAME-cp` and records it.
    pub(super) fn start_component(&mut self, name: &str, args: &[String]) -> Result<Daemon> {
        let binary = self
            .state
            .kube_bin_dir
            .clone()
            .context("no Kubernetes bin dir recorded")?
            .join(name);
        let daemon = control_plane::start(
            name,
            &binary,
            &self.control_plane_netns(),
            args,
            &self.layout,
        )?;
        self.state.control_plane.push(Component {
            name: name.to_string(),
            daemon: daemon.clone(),
        });
        self.save()?;
        Ok(daemon)
    }

    /// Registers `nodes` as their kubelets would (Node object, then its addresses on
    /// `nodes/status`), waits until each has its pod CIDRs (unless kube-controller-manager is
    /// stopped: then they get them once it runs again), and writes each node's fabricd
    /// kubeconfig with a fresh token of fabric's ServiceAccount.
    pub(super) fn prepare_kube_nodes(&mut self, nodes: &[String]) -> Result<()> {
        let kubectl = self.kubectl()?;
        for name in nodes {
            let node = self.node(name)?.clone();
            let cidrs = self.reserved_pod_cidrs(name)?;
            kubectl
                .create(&objects::node(name, &cidrs))
                .with_context(|| format!("registering Node {name}"))?;
            let status = objects::node_status_patch(name, node.underlay_ip);
            kubectl
                .run(&[
                    "patch",
                    "node",
                    name,
                    "--subresource=status",
                    "--type=merge",
                    "-p",
                    &status.to_string(),
                ])
                .with_context(|| format!("reporting Node {name}'s addresses"))?;
        }
        if self.controller_manager_running() {
            self.step("waiting for kube-controller-manager to assign the nodes' pod CIDRs");
            self.wait_pod_cidrs(nodes)?;
        }
        for name in nodes {
            self.write_node_kubeconfig(name)?;
            self.write_kubelet_kubeconfig(name)?;
        }
        Ok(())
    }

    /// Issues `node`'s kubelet certificate (`system:node:NODE`, `system:nodes`) and writes
    /// `nodes/NODE/kubelet.kubeconfig` with it.
    fn write_kubelet_kubeconfig(&self, node: &str) -> Result<()> {
        let pki = Pki::at(self.layout.pki());
        let leaf = Leaf::node(node);
        pki.issue(&leaf)?;
        let dir = self.layout.node_dir(node);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let config = kubeconfig::kubeconfig(
            &topology::apiserver_url(),
            &pki.ca_cert(),
            &leaf.common_name,
            &Credential::ClientCert {
                cert: pki.cert(&leaf.name),
                key: pki.key(&leaf.name),
            },
        );
        kubeconfig::write(&self.layout.kubelet_kubeconfig(node), &config)
    }

    /// The pod CIDRs reserved for `node` (IPv4, and the IPv6 subnet of the same index on a
    /// dual-stack lab); empty without a reservation.
    fn reserved_pod_cidrs(&self, node: &str) -> Result<Vec<String>> {
        let Some(r) = self.state.reservations.iter().find(|r| r.node == node) else {
            return Ok(Vec::new());
        };
        let mut cidrs = vec![r.subnet.clone()];
        if let Some(v6) = &self.state.ipv6_network {
            let subnet: Ipv4Net = r.subnet.parse().context("reserved subnet")?;
            let network: Ipv4Net = self.state.network.parse().context("pod network")?;
            let v6: Ipv6Net = v6.parse().context("IPv6 pod network")?;
            cidrs.push(
                objects::matching_ipv6_subnet(subnet, network, v6, IPV6_SUBNET_LEN)?.to_string(),
            );
        }
        Ok(cidrs)
    }

    /// Polls the Node objects until every one of `nodes` has its pod CIDRs (both families on a
    /// dual-stack lab).
    fn wait_pod_cidrs(&self, nodes: &[String]) -> Result<()> {
        let want = if self.state.ipv6_network.is_some() {
            2
        } else {
            1
        };
        let kubectl = self.kubectl()?;
        let deadline = Instant::now() + POD_CIDR_TIMEOUT;
        let log = self.layout.log(CONTROLLER_MANAGER);
        loop {
            let cidrs = objects::pod_cidrs_by_node(&kubectl.json(&["get", "nodes"])?);
            let missing: Vec<&str> = nodes
                .iter()
                .filter(|n| cidrs.get(*n).is_none_or(|c| c.len() < want))
                .map(String::as_str)
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            let kcm = self.state.component(CONTROLLER_MANAGER);
            if !kcm.is_some_and(Daemon::is_running) {
                bail!(
                    "kube-controller-manager is not running; last lines of {}:\n{}",
                    log.display(),
                    process::tail(&log, control_plane::LOG_TAIL_LINES)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "kube-controller-manager gave {} no pod CIDR within {}s; last lines of {}:\n{}",
                    missing.join(", "),
                    POD_CIDR_TIMEOUT.as_secs(),
                    log.display(),
                    process::tail(&log, control_plane::LOG_TAIL_LINES)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Writes `nodes/NODE/kubeconfig`: the apiserver, the lab CA, and a token of fabric's
    /// ServiceAccount (`kubectl create token`).
    fn write_node_kubeconfig(&self, node: &str) -> Result<()> {
        let token = self
            .kubectl()?
            .run(&[
                "create",
                "token",
                kube::SERVICE_ACCOUNT,
                "-n",
                kube::SERVICE_ACCOUNT_NAMESPACE,
                &format!("--duration={}", kube::TOKEN_DURATION),
            ])
            .with_context(|| {
                format!(
                    "creating a token of ServiceAccount {}/{} for {node}",
                    kube::SERVICE_ACCOUNT_NAMESPACE,
                    kube::SERVICE_ACCOUNT
                )
            })?;
        let dir = self.layout.node_dir(node);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let config = kubeconfig::kubeconfig(
            &topology::apiserver_url(),
            &Pki::at(self.layout.pki()).ca_cert(),
            &format!(
                "system:serviceaccount:{}:{}",
                kube::SERVICE_ACCOUNT_NAMESPACE,
                kube::SERVICE_ACCOUNT
            ),
            &Credential::Token(token.trim().to_string()),
        );
        kubeconfig::write(&self.layout.node_kubeconfig(node), &config)
    }

    /// The nodes' pod CIDRs from the Node objects, as leases.
    pub(super) fn kube_leases(&self) -> Result<Value> {
        Ok(objects::leases(&self.kubectl()?.json(&["get", "nodes"])?))
    }

    /// Creates Namespace `name` unless it exists, and waits until its `default`
    /// ServiceAccount does (the apiserver refuses pods before that).
    pub fn ensure_namespace(&self, name: &str) -> Result<()> {
        let kubectl = self.kubectl()?;
        let has_sa = || -> Result<bool> {
            let out = kubectl.run(&[
                "get",
                "serviceaccount",
                "default",
                "-n",
                name,
                "--ignore-not-found",
                "-o",
                "name",
            ])?;
            Ok(!out.trim().is_empty())
        };
        if has_sa()? {
            return Ok(());
        }
        kubectl
            .apply(&objects::namespace(name))
            .with_context(|| format!("creating Namespace {name}"))?;
        let deadline = Instant::now() + SERVICE_ACCOUNT_TIMEOUT;
        while !has_sa()? {
            if Instant::now() >= deadline {
                bail!(
                    "Namespace {name} has no default ServiceAccount after {}s (is \
                     kube-controller-manager running? see {})",
                    SERVICE_ACCOUNT_TIMEOUT.as_secs(),
                    self.layout.log(CONTROLLER_MANAGER).display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    /// Creates the Pod object for `spec`, bound to `node`; returns its UID.
    pub(super) fn create_pod_object(&self, node: &str, spec: &PodSpec) -> Result<String> {
        let namespace = spec.k8s_namespace();
        let pod = objects::pod(
            namespace,
            &spec.name,
            node,
            &spec.labels,
            spec.capability_args.get("containerPorts"),
        );
        let created = self
            .kubectl()?
            .create(&pod)
            .with_context(|| format!("creating Pod {namespace}/{}", spec.name))?;
        objects::uid(&created)
    }

    /// Writes the pod's status as its kubelet would once it runs: phase, host and pod IPs,
    /// conditions, the container's state.
    pub(super) fn report_pod_status(&self, pod: &Pod) -> Result<()> {
        let host_ip = self.node(&pod.node)?.underlay_ip;
        let mut ips = vec![IpAddr::V4(pod.ip)];
        ips.extend(pod.ipv6.map(IpAddr::V6));
        let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let patch = objects::pod_status_patch(host_ip, &ips, &pod.container_id, &now);
        self.kubectl()?
            .run(&[
                "patch",
                "pod",
                &pod.name,
                "-n",
                &pod.namespace,
                "--subresource=status",
                "--type=merge",
                "-p",
                &patch.to_string(),
            ])
            .with_context(|| format!("reporting Pod {}'s status", pod.qualified_name()))
            .map(drop)
    }

    /// Deletes a Pod object at once (no kubelet is there to finalize a graceful deletion).
    pub(super) fn delete_pod_object(&self, namespace: &str, name: &str) -> Result<()> {
        self.kubectl()?
            .delete_pod_now(namespace, name)
            .with_context(|| format!("deleting Pod {namespace}/{name}"))
            .map(drop)
    }

    /// Gives a Namespace (`namespace` `None`) or a Pod exactly `labels`, with `kubectl label
    /// --overwrite` (`key=value` and `key-`); a Namespace keeps its
    /// `kubernetes.io/metadata.name`.
    pub fn replace_labels(
        &self,
        namespace: Option<&str>,
        kind: &str,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<()> {
        let kubectl = self.kubectl()?;
        let mut target = vec![kind, name];
        if let Some(ns) = namespace {
            target.extend(["-n", ns]);
        }
        let mut get = vec!["get"];
        get.extend(&target);
        let current = objects::string_map(&kubectl.json(&get)?["metadata"]["labels"]);
        let changes = objects::label_changes(&current, labels, &[objects::NAMESPACE_NAME_LABEL]);
        if changes.is_empty() {
            return Ok(());
        }
        let mut args = vec!["label", "--overwrite"];
        args.extend(&target);
        args.extend(changes.iter().map(String::as_str));
        kubectl
            .run(&args)
            .with_context(|| format!("labelling {kind} {name}"))
            .map(drop)
    }
}
