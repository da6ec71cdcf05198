//! `fabric-bench control`: the control plane in each datastore, on two 3-node labs brought up
//! side by side (one in etcd mode, one on the Kubernetes API), measured interleaved:
//!
//! - **policy change to enforced**: a new NetworkPolicy is written the way an operator writes
//!   it (`fabricctl policy apply` / `kubectl apply`), and the clock runs from just before that
//!   command starts until every node's fabricd reports the policy in the view it judges new
//!   connections with (its local API, polled every millisecond). The command's own time is
//!   shown apart.
//! - **node join to converged**: a node is added (in Kubernetes mode it is registered and
//!   given its podCIDR by kube-controller-manager first, as a kubelet and the controller would
//!   before any CNI runs), and the clock runs from fabricd's start until every other node has a
//!   route to it.
//! - **fabricd RSS** of every node at the end.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fabric_cni::api::{call, Request, Response};
use fabric_lab::{Backend, Datastore, Lab, LabSpec, PodSpec};

use crate::report::{self, Section};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Lab name prefix: the labs are NAMEe (etcd) and NAMEk (Kubernetes).
    pub name: String,
    /// Policy changes per lab.
    pub changes: usize,
    /// Node joins per lab.
    pub joins: usize,
}

/// The longest a change or a join may take before the run fails.
const PATIENCE: Duration = Duration::from_secs(30);

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A policy named `name` in `default` that selects nothing else running (its own label), so
/// the change costs what any change costs without cutting the lab's connections.
fn policy(name: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  podSelector:\n    matchLabels:\n      bench: {name}\n  ingress:\n  - from:\n    - podSelector: {{}}\n"
    )
}

/// How many policies each node's view holds.
pub(crate) fn policies_per_node(lab: &Lab) -> Result<Vec<usize>> {
    lab.nodes()
        .iter()
        .map(
            |n| match call(&n.socket, &Request::Policy, Duration::from_secs(1)) {
                Ok(Response::Policy(status)) => Ok(status.policies),
                other => bail!("{}: policy status {other:?}", n.name),
            },
        )
        .collect()
}

/// Writes policy `name` and returns (command time, time until every node holds `expected`
/// policies), both from the command's start.
fn change(lab: &Lab, name: &str, expected: usize) -> Result<(f64, f64)> {
    let manifest = policy(name);
    let start = Instant::now();
    if lab.is_kubernetes() {
        lab.kubectl()?
            .run_stdin(&["apply", "-f", "-"], manifest.as_bytes().to_vec())?;
    } else {
        let file = lab.state_dir().join(format!("{name}.yaml"));
        std::fs::write(&file, &manifest)?;
        lab.fabricctl(&["policy", "apply", "-f", &file.display().to_string()])?;
    }
    let command = start.elapsed();
    loop {
        if policies_per_node(lab)?.iter().all(|&p| p >= expected) {
            return Ok((millis(command), millis(start.elapsed())));
        }
        if start.elapsed() > PATIENCE {
            bail!(
                "{}: policy {name} not in every view after {PATIENCE:?}",
                lab.name()
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// fabric's routes on `node` (one per remote node on vxlan).
fn peer_routes(lab: &Lab, node: &str) -> Result<usize> {
    let out = lab.exec_ok(node, &["ip", "-4", "route", "show", "proto", "0x66"])?;
    Ok(out.lines().filter(|l| l.contains("dev fabric.1")).count())
}

/// Adds a node; returns the time from its fabricd's start until every other node routes to it.
fn join(lab: &mut Lab) -> Result<f64> {
    let node = lab.add_node_unready()?;
    let start = Instant::now();
    let others: Vec<String> = lab
        .nodes()
        .iter()
        .filter(|n| n.name != node.name)
        .map(|n| n.name.clone())
        .collect();
    loop {
        let mut converged = true;
        for other in &others {
            if peer_routes(lab, other)? < others.len() {
                converged = false;
                break;
            }
        }
        if converged {
            let took = millis(start.elapsed());
            lab.wait_ready(&node.name)?;
            return Ok(took);
        }
        if start.elapsed() > PATIENCE {
            bail!(
                "{}: {} not routed everywhere after {PATIENCE:?}",
                lab.name(),
                node.name
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// fabricd's resident set on every node, MiB.
pub(crate) fn rss_mib(lab: &Lab) -> Vec<f64> {
    lab.nodes()
        .iter()
        .filter_map(|n| rss_of(n.pid()?))
        .collect()
}

/// The resident set of process `pid`, MiB (`VmRSS` of `/proc/PID/status`).
pub(crate) fn rss_of(pid: i32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

#[derive(Default)]
struct Figures {
    command_ms: Vec<f64>,
    enforced_ms: Vec<f64>,
    join_ms: Vec<f64>,
    rss: Vec<f64>,
}

/// Runs the benchmark and returns its RESULTS.md section.
pub fn run(opts: &Options) -> Result<Section> {
    let before = crate::Snapshot::take(&opts.name);
    let mut labs = Vec::new();
    for (suffix, datastore) in [("e", Datastore::Etcd), ("k", Datastore::Kubernetes)] {
        let mut spec = LabSpec::new(format!("{}{suffix}", opts.name));
        spec.nodes = 3;
        spec.pods_per_node = 0;
        spec.backend = Backend::Vxlan;
        spec.datastore = datastore;
        spec.demo = false;
        let mut lab = Lab::up(spec).with_context(|| format!("bringing up the {datastore} lab"))?;
        for node in ["node1", "node2", "node3"] {
            lab.add_pod(node, PodSpec::new(format!("{node}-pod")))?;
        }
        labs.push((datastore, lab, Figures::default()));
    }
    eprintln!(
        "[{}] {} policy changes per lab, interleaved",
        opts.name, opts.changes
    );
    for i in 1..=opts.changes {
        for (_, lab, figures) in &mut labs {
            let (command, enforced) = change(lab, &format!("bench-{i}"), i)?;
            figures.command_ms.push(command);
            figures.enforced_ms.push(enforced);
        }
    }
    eprintln!(
        "[{}] {} node joins per lab, interleaved",
        opts.name, opts.joins
    );
    for _ in 0..opts.joins {
        for (_, lab, figures) in &mut labs {
            figures.join_ms.push(join(lab)?);
        }
    }
    for (_, lab, figures) in &mut labs {
        figures.rss = rss_mib(lab);
    }
    let labs: Vec<(Datastore, Figures)> = labs
        .into_iter()
        .map(|(datastore, lab, figures)| {
            lab.down().context("tearing a lab down")?;
            Ok((datastore, figures))
        })
        .collect::<Result<_>>()?;
    // After the labs are gone, so that they are not counted as other workloads.
    let after = crate::Snapshot::take(&opts.name);
    let mut ops: Vec<(String, Vec<f64>)> = Vec::new();
    let mut rss_rows = Vec::new();
    for (datastore, figures) in &labs {
        ops.push((
            format!("{datastore}: policy write command"),
            figures.command_ms.clone(),
        ));
        ops.push((
            format!("{datastore}: policy change to enforced on every node"),
            figures.enforced_ms.clone(),
        ));
        ops.push((
            format!("{datastore}: node join to routed by every other node"),
            figures.join_ms.clone(),
        ));
        rss_rows.push(vec![
            datastore.to_string(),
            figures.rss.len().to_string(),
            format!("{:.1}", report::median(&figures.rss)),
            format!("{:.1}", figures.rss.iter().cloned().fold(0.0, f64::max)),
        ]);
    }
    let latency: Vec<(&str, &[f64])> = ops
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    let ratio =
        report::median(&labs[1].1.enforced_ms) / report::median(&labs[0].1.enforced_ms).max(1e-9);
    let body = format!(
        "Two 3-node vxlan labs side by side, one pod per node: `{name}e` in etcd mode and \
         `{name}k` on the Kubernetes API (kube-apiserver, kube-controller-manager and etcd 3.6 \
         built from their pinned modules; fabricd with the DaemonSet's ServiceAccount). Each \
         step alternates between the labs. A policy change is timed from just before the \
         command that writes it (`fabricctl policy apply -f` / `kubectl apply -f -`, each a \
         process of its own) until every node's fabricd holds it in the view new connections \
         are judged with (polled over its local API every millisecond). A join is timed from \
         the new node's fabricd start until every other node has its route (in Kubernetes mode \
         the Node is registered and has its podCIDR first, as kubelet and the controller-manager \
         would have done before any CNI runs). {conditions}\n\n{latency}\n\
         Kubernetes ÷ etcd, median policy change to enforced: {ratio:.2}×.\n\n\
         fabricd resident memory at the end (after {changes} policies and {joins} joins):\n\n{rss}",
        name = opts.name,
        conditions = before.describe(&after),
        latency = report::latency_table(&latency),
        ratio = ratio,
        changes = opts.changes,
        joins = opts.joins,
        rss = report::markdown_table(&["datastore", "nodes", "median MiB", "max MiB"], &rss_rows),
    );
    Ok(Section {
        title:
            "Control plane: policy change to enforced, node join, fabricd RSS, etcd vs Kubernetes"
                .into(),
        date: crate::today(),
        command: format!(
            "fabric-bench control --changes {} --joins {} --name {}",
            opts.changes, opts.joins, opts.name
        ),
        machine: crate::machine(),
        body,
    })
}
