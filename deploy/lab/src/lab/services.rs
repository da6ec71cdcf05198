//! The [`Lab`]'s Services-and-DNS steps (Kubernetes mode): the kubelet role and kube-proxy on
//! each node (tracked by PID in the node's record), CoreDNS applied from the lab's manifest and
//! waited for, a host outside the cluster on the underlay (`NAME-ext`) to reach NodePorts
//! from, and what the kubelet roles run (for `exec` and the tests).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use serde_json::Value;

use super::Lab;
use crate::kube::dns;
use crate::kube::proxy::{self, ProxyNode, KUBE_PROXY};
use crate::kubelet::{self, store::RunningPod};
use crate::netns;
use crate::process::{self, Cmd, Daemon};
use crate::topology::{self, DEFAULT_POD_NAMESPACE, EXTERNAL_IP};

/// How long CoreDNS gets to be scheduled, started and ready.
pub const COREDNS_TIMEOUT: Duration = Duration::from_secs(120);

/// How many lines of a log an error shows.
const LOG_LINES: usize = 20;

impl Lab {
    /// The kubelet role's log on `node`: `logs/kubelet-NODE.log`.
    pub fn kubelet_log(&self, node: &str) -> std::path::PathBuf {
        self.layout.log(&format!("kubelet-{node}"))
    }

    /// kube-proxy's log on `node`: `logs/kube-proxy-NODE.log`.
    pub fn kube_proxy_log(&self, node: &str) -> std::path::PathBuf {
        self.layout.log(&format!("{KUBE_PROXY}-{node}"))
    }

    /// Starts the kubelet role on each of `nodes`, and kube-proxy when the lab runs services.
    pub(super) fn start_node_agents(&mut self, nodes: &[String]) -> Result<()> {
        for node in nodes {
            self.start_kubelet(node)?;
            if self.state.services {
                self.start_kube_proxy(node)?;
            }
        }
        Ok(())
    }

    /// Starts the kubelet role on `node` (`fabric-lab kubelet`, in the node's network
    /// namespace but the machine's mount namespace, so the pod namespaces it adds are seen by
    /// everyone).
    pub fn start_kubelet(&mut self, node: &str) -> Result<()> {
        let info = self.node(node)?.clone();
        if let Some(d) = info.kubelet.as_ref().filter(|d| d.is_running()) {
            bail!(
                "the kubelet role on {node} is already running (pid {})",
                d.pid
            );
        }
        self.step(&format!("{node}: kubelet role"));
        let daemon = Cmd::joining_netns(&info.netns, self.state.bin_dir.join("fabric-lab"))
            .args(["kubelet", "--name", &self.state.name, "--node", node])
            .spawn_daemon(&self.kubelet_log(node))
            .with_context(|| format!("starting the kubelet role on {node}"))?;
        self.node_mut(node)?.kubelet = Some(daemon);
        self.save()
    }

    /// Stops the kubelet role on `node` (SIGTERM); the pods it runs keep running, as
    /// containers outlive a kubelet restart.
    pub fn stop_kubelet(&mut self, node: &str) -> Result<()> {
        let daemon = self
            .node(node)?
            .kubelet
            .clone()
            .with_context(|| format!("the kubelet role on {node} is not running"))?;
        super::stop_daemon(&format!("kubelet on {node}"), &daemon, Signal::SIGTERM)?;
        self.node_mut(node)?.kubelet = None;
        self.save()
    }

    /// Starts kube-proxy on `node`, in the node's namespace.
    pub fn start_kube_proxy(&mut self, node: &str) -> Result<()> {
        let info = self.node(node)?.clone();
        if let Some(d) = info.kube_proxy.as_ref().filter(|d| d.is_running()) {
            bail!("kube-proxy on {node} is already running (pid {})", d.pid);
        }
        let binary = self
            .state
            .kube_bin_dir
            .clone()
            .context("no Kubernetes bin dir recorded")?
            .join(KUBE_PROXY);
        let mut cluster_cidrs = vec![self.state.network.clone()];
        cluster_cidrs.extend(self.state.ipv6_network.clone());
        let args = proxy::args(
            &ProxyNode {
                name: node,
                ip: info.underlay_ip,
                cluster_cidrs,
                mode: self.state.proxy_mode,
            },
            &self.layout.kubeconfig(KUBE_PROXY),
        );
        self.step(&format!("{node}: kube-proxy ({})", self.state.proxy_mode));
        let daemon = Cmd::in_netns(&info.netns, binary)
            .args(args)
            .spawn_daemon(&self.kube_proxy_log(node))
            .with_context(|| format!("starting kube-proxy on {node}"))?;
        self.node_mut(node)?.kube_proxy = Some(daemon);
        self.save()
    }

    /// Stops kube-proxy on `node` (SIGTERM; its rules stay, as on a real node).
    pub fn stop_kube_proxy(&mut self, node: &str) -> Result<()> {
        let daemon = self
            .node(node)?
            .kube_proxy
            .clone()
            .with_context(|| format!("kube-proxy on {node} is not running"))?;
        super::stop_daemon(&format!("kube-proxy on {node}"), &daemon, Signal::SIGTERM)?;
        self.node_mut(node)?.kube_proxy = None;
        self.save()
    }

    /// Applies the CoreDNS manifest (`deploy/lab/k8s/coredns.yaml`).
    pub(super) fn apply_coredns(&self) -> Result<()> {
        self.step(&format!(
            "CoreDNS: Deployment {}/{} behind Service {} at {}",
            dns::NAMESPACE,
            dns::COREDNS,
            dns::SERVICE,
            dns::CLUSTER_DNS_IP
        ));
        self.kubectl()?
            .run_stdin(&["apply", "-f", "-"], dns::MANIFEST)
            .context("applying the CoreDNS manifest")
            .map(drop)
    }

    /// Waits until the `kube-dns` Service has a ready endpoint.
    pub(super) fn wait_coredns(&self) -> Result<()> {
        self.step("waiting for CoreDNS to be ready");
        let selector = format!("kubernetes.io/service-name={}", dns::SERVICE);
        self.wait_ready_endpoints(dns::NAMESPACE, &selector, 1, COREDNS_TIMEOUT)
            .map(drop)
            .with_context(|| {
                let logs: Vec<String> = self
                    .nodes()
                    .iter()
                    .map(|n| {
                        let log = self.kubelet_log(&n.name);
                        format!("{}:\n{}", log.display(), process::tail(&log, LOG_LINES))
                    })
                    .collect();
                format!("CoreDNS did not become ready; {}", logs.join("\n"))
            })
    }

    /// Waits until the EndpointSlices matching `selector` in `namespace` hold at least `count`
    /// ready endpoints; returns their addresses.
    pub fn wait_ready_endpoints(
        &self,
        namespace: &str,
        selector: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<String>> {
        let kubectl = self.kubectl()?;
        let deadline = Instant::now() + timeout;
        loop {
            let slices =
                kubectl.json(&["get", "endpointslices", "-n", namespace, "-l", selector])?;
            let ready = ready_endpoint_addresses(&slices);
            if ready.len() >= count {
                return Ok(ready);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} of {count} endpoints of {selector} in {namespace} ready after {}s",
                    ready.len(),
                    timeout.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The namespace of the host outside the cluster (`NAME-ext`, at 172.30.0.250 on the
    /// underlay).
    pub fn external_netns(&self) -> String {
        topology::external_netns(&self.state.name)
    }

    /// Creates the outside host: a namespace on the underlay switch with no route into the
    /// pod network, where NodePorts are reached from.
    pub(super) fn create_external_host(&mut self) -> Result<()> {
        let ext = self.external_netns();
        if netns::exists(&ext) {
            return Ok(());
        }
        self.step(&format!(
            "outside host {ext} at {EXTERNAL_IP} on the underlay"
        ));
        self.create_netns(&ext)?;
        netns::plug_into_switch(&self.switch_netns(), "ext", &ext, EXTERNAL_IP, None)
    }

    /// Every pod the kubelet roles run, with its node.
    pub fn kubelet_pods(&self) -> Vec<(String, RunningPod)> {
        kubelet::pods(&self.layout, &self.state.nodes)
    }

    /// The kubelet-run pod `target` names: `namespace/name`, `name` in `default`, or a unique
    /// name.
    pub fn kubelet_pod(&self, target: &str) -> Option<RunningPod> {
        let pods: Vec<RunningPod> = self.kubelet_pods().into_iter().map(|(_, p)| p).collect();
        let exact = pods.iter().find(|p| {
            p.key() == target
                || p.netns == target
                || (p.namespace == DEFAULT_POD_NAMESPACE && p.name == target)
        });
        if let Some(p) = exact {
            return Some(p.clone());
        }
        let mut named = pods.iter().filter(|p| p.name == target);
        match (named.next(), named.next()) {
            (Some(p), None) => Some(p.clone()),
            _ => None,
        }
    }

    /// Waits until a kubelet role runs pod `namespace/name` and has reported it Running;
    /// returns its record (netns, IPs).
    pub fn wait_kubelet_pod(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<RunningPod> {
        let kubectl = self.kubectl()?;
        let deadline = Instant::now() + timeout;
        loop {
            let phase = kubectl
                .run(&[
                    "get",
                    "pod",
                    name,
                    "-n",
                    namespace,
                    "-o",
                    "jsonpath={.status.phase}",
                ])
                .unwrap_or_default();
            if phase.trim() == "Running" {
                if let Some(p) = self.kubelet_pod(&format!("{namespace}/{name}")) {
                    return Ok(p);
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "pod {namespace}/{name} not running after {}s (phase {:?})",
                    timeout.as_secs(),
                    phase.trim()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Whether `node`'s kubelet role and kube-proxy run: `(kubelet, kube-proxy)`.
    pub fn node_agents_running(&self, node: &str) -> Result<(bool, bool)> {
        let n = self.node(node)?;
        Ok((
            n.kubelet.as_ref().is_some_and(Daemon::is_running),
            n.kube_proxy.as_ref().is_some_and(Daemon::is_running),
        ))
    }
}

/// The addresses of ready endpoints in an EndpointSliceList.
pub fn ready_endpoint_addresses(slices: &Value) -> Vec<String> {
    slices["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["conditions"]["ready"] != false)
        .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn ready_endpoints_only() {
        let slices = json!({"items": [
            {"endpoints": [
                {"addresses": ["10.244.1.5"], "conditions": {"ready": true}},
                {"addresses": ["10.244.2.6"], "conditions": {"ready": false}},
            ]},
            {"endpoints": [{"addresses": ["10.244.3.7"], "conditions": {}}]},
            {"endpoints": null},
        ]});
        assert_eq!(
            ready_endpoint_addresses(&slices),
            ["10.244.1.5", "10.244.3.7"]
        );
        assert!(ready_endpoint_addresses(&json!({})).is_empty());
    }
}
