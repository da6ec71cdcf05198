//! `fabric-bench cni`: CNI ADD / CHECK / DEL latency on a 1-node lab. Every call is the lab's
//! runtime executing the `fabric-cni` binary inside the node namespace with the `CNI_*`
//! environment and the conflist on stdin, exactly as `Lab::add_pod` makes it. `add_pod` also
//! creates the pod's namespace, so the benchmark creates each namespace itself (timed apart)
//! and times only the runtime's ADD (`Lab::cni`), then CHECK and DEL with the cached result.
//! STATUS calls first give the floor every call stands on: the runtime starting the plugin in
//! the node's namespace and one round trip to fabricd, which does next to nothing for it.

use std::time::Instant;

use anyhow::{ensure, Context, Result};
use fabric_lab::cni_runtime::first_ipv4;
use fabric_lab::topology::{self, POD_IFACE};
use fabric_lab::{demo, netns, Backend, CniCommand, Invocation, Lab, LabSpec};

use crate::report::{self, Section};

/// The node every pod goes on.
const NODE: &str = "node1";

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Lab name.
    pub name: String,
    /// Pods to add (then check and delete).
    pub pods: usize,
}

/// The pod namespaces this benchmark created; deleted when dropped (the lab's teardown would
/// find them too, by the lab's prefix).
#[derive(Default)]
struct PodNamespaces(Vec<String>);

impl Drop for PodNamespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            if let Err(e) = netns::delete(ns) {
                eprintln!("cleanup: deleting {ns}: {e:#}");
            }
        }
    }
}

fn millis(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

/// Runs the benchmark and returns its RESULTS.md section.
pub fn run(opts: &Options) -> Result<Section> {
    ensure!(
        (1..=250).contains(&opts.pods),
        "--pods must be 1..=250 (one /24)"
    );
    let before = crate::Snapshot::take(&opts.name);
    let mut spec = LabSpec::new(&opts.name);
    spec.nodes = 1;
    spec.pods_per_node = 0;
    spec.backend = Backend::Vxlan;
    spec.demo = false;
    let lab = Lab::up(spec).context("bringing up the 1-node lab")?;

    // The floor: a call fabricd answers at once.
    let mut status_ms = Vec::with_capacity(opts.pods);
    for _ in 0..opts.pods {
        let start = Instant::now();
        let result = lab.cni(NODE, CniCommand::Status, &Invocation::default(), None);
        status_ms.push(millis(start));
        result.context("CNI STATUS")?;
    }

    let mut namespaces = PodNamespaces::default();
    let mut attached = Vec::with_capacity(opts.pods);
    let (mut netns_ms, mut add_ms) = (Vec::new(), Vec::new());
    eprintln!("[{}] {} × (netns + CNI ADD)", opts.name, opts.pods);
    for i in 1..=opts.pods {
        let pod = format!("cni{i:03}");
        let ns = topology::pod_netns(lab.name(), topology::DEFAULT_POD_NAMESPACE, &pod);
        namespaces.0.push(ns.clone());
        let start = Instant::now();
        netns::create(&ns).with_context(|| format!("creating namespace {ns}"))?;
        netns_ms.push(millis(start));

        // The invocation `Lab::add_pod` builds for a default PodSpec.
        let mut inv = Invocation::new(ns.clone(), Some(topology::netns_path(&ns)))
            .k8s_pod(topology::DEFAULT_POD_NAMESPACE, &pod);
        inv.ifname = POD_IFACE.to_string();
        let start = Instant::now();
        let result = lab.cni(NODE, CniCommand::Add, &inv, None);
        add_ms.push(millis(start));
        let result = result
            .with_context(|| format!("CNI ADD of {pod}"))?
            .context("CNI ADD returned no result")?;
        let ip = first_ipv4(&result)
            .with_context(|| format!("CNI ADD of {pod}: no IPv4 address in {result}"))?;
        inv.cached_result = Some(result);
        attached.push((pod, ns, ip, inv));
    }

    // The pods are real: the first reaches the last through the node.
    if let (Some(first), Some(last)) = (attached.first(), attached.last()) {
        demo::ping(&first.1, last.2, 1).context("pods attached by the benchmark do not work")?;
    }

    let mut check_ms = Vec::new();
    for (pod, _, _, inv) in &attached {
        let start = Instant::now();
        let result = lab.cni(NODE, CniCommand::Check, inv, None);
        check_ms.push(millis(start));
        result.with_context(|| format!("CNI CHECK of {pod}"))?;
    }

    let mut del_ms = Vec::new();
    for (pod, ns, _, inv) in &attached {
        let start = Instant::now();
        let result = lab.cni(NODE, CniCommand::Del, inv, None);
        del_ms.push(millis(start));
        result.with_context(|| format!("CNI DEL of {pod}"))?;
        netns::delete(ns).with_context(|| format!("deleting {ns}"))?;
    }
    let after = crate::Snapshot::take(&opts.name);
    drop(namespaces);
    lab.down().context("tearing the lab down")?;

    let body = format!(
        "One node (vxlan backend), {pods} pods added one after another, then CHECKed, then \
         DELeted. Each CNI call is the lab's runtime running `fabric-cni` inside the node \
         namespace (clean environment with `CNI_*`, conflist on stdin), which asks fabricd over \
         its unix socket to allocate/attach. ADD timings exclude creating the pod's network \
         namespace (`ip netns add` + `lo` up), shown apart; DEL excludes deleting it. STATUS \
         (one call per pod, before the ADDs) is the floor under every call: the runtime \
         starting `fabric-cni` in the node namespace and one round trip to fabricd. \
         {}\n\n{}",
        before.describe(&after),
        report::latency_table(&[
            ("netns create (not in ADD)", &netns_ms),
            ("CNI STATUS (the floor)", &status_ms),
            ("CNI ADD", &add_ms),
            ("CNI CHECK", &check_ms),
            ("CNI DEL", &del_ms),
        ]),
        pods = opts.pods,
    );
    Ok(Section {
        title: "CNI ADD/DEL latency".into(),
        date: crate::today(),
        command: format!("fabric-bench cni --pods {} --name {}", opts.pods, opts.name),
        machine: crate::machine(),
        body,
    })
}
