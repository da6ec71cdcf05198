//! `fabric-lab netpol`: NetworkPolicy reachability cases (the shared case format, see
//! `tests/netpol/`) run end to end on a lab.
//!
//! The lab gets one node per pod subnet of the model, each subnet pinned to its node by a
//! reservation, and every model pod sits at its model address (CNI `ips` capability) with its
//! labels (`labels`) and named container ports (`containerPorts`). Each pod runs the lab agent's
//! servers on the model's ports over TCP, UDP and SCTP. Then, case by case: the case's label
//! overrides and policies are written to etcd with `fabricctl`; every node's fabricd is waited
//! for until its policy view has caught up (`fabricctl policy sync`); every probe runs as a
//! real connection from the source pod (all sources at once, each source's probes in
//! parallel, each bounded by a timeout); outcomes are compared with the expectations; the
//! policies are deleted and the labels restored.
//!
//! With `--datastore kubernetes` the lab runs a Kubernetes control plane and everything goes
//! through the API instead, with the pinned kubectl: Namespaces (`kubectl create ns`, labels
//! with `kubectl label ns --overwrite`), the pods' labels and container ports on their Pod
//! objects (overrides with `kubectl label pod --overwrite`, `key-` for removals), policies
//! with `kubectl apply -f` / `kubectl delete -f`. The sync is the same `fabricctl policy sync`
//! over each node's socket.
//!
//! A probe expected to connect that timed out is tried again (a loaded machine can be slow);
//! a connection that policy should have stopped is never retried: one leak fails the case.
//! Loopback probes (a pod to itself) are reported but, as upstream, never fail a case.

pub mod plan;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use policy::cases::{Case, CaseFile, Expect};
use serde_json::json;

use crate::porter::{self, Outcome};
use crate::process::{Cmd, Daemon};
use crate::spec::{Backend, Datastore, LabSpec, PodSpec};
use crate::Lab;

use plan::{Expectation, Mismatch, Observed, Placement, ProbeKey};

/// How the suite runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The lab's name.
    pub name: String,
    /// The backend the nodes run.
    pub backend: Backend,
    /// Where namespaces, labels and policies are written: etcd (`fabricctl`) or the lab's
    /// Kubernetes API (`kubectl`).
    pub datastore: Datastore,
    /// Where `fabricd`, `fabricctl`, `fabric-cni` and `fabric-lab` are.
    pub bin_dir: Option<PathBuf>,
    /// Each probe's timeout.
    pub timeout: Duration,
    /// How many more times a probe expected to connect is tried when it did not.
    pub retries: u32,
    /// Run only the cases whose name contains this.
    pub only: Option<String>,
    /// Report each lab step on stderr.
    pub progress: bool,
}

impl Options {
    /// Defaults: vxlan, 1 s probes, 2 retries, every case.
    pub fn new(name: impl Into<String>) -> Self {
        Options {
            name: name.into(),
            backend: Backend::Vxlan,
            datastore: Datastore::Etcd,
            bin_dir: None,
            timeout: Duration::from_secs(1),
            retries: 2,
            only: None,
            progress: true,
        }
    }
}

/// One case's result.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// Probes run.
    pub probes: usize,
    /// Probes that differ from the expectation (these fail the case).
    pub mismatches: Vec<Mismatch>,
    /// Loopback probes that differ (informational).
    pub loopback: Vec<Mismatch>,
    /// Probes that needed a retry to connect.
    pub retried: usize,
    /// Why the case could not be run, if it could not.
    pub error: Option<String>,
    /// How long the case took.
    pub elapsed: Duration,
}

impl CaseResult {
    /// No counted mismatch and no error.
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty() && self.error.is_none()
    }
}

/// All cases' results.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// In file order.
    pub cases: Vec<CaseResult>,
}

impl Summary {
    /// Cases that passed.
    pub fn passed(&self) -> usize {
        self.cases.iter().filter(|c| c.passed()).count()
    }

    /// Cases that failed.
    pub fn failed(&self) -> usize {
        self.cases.len() - self.passed()
    }

    /// The closing line: `cases: P passed, F failed`.
    pub fn line(&self) -> String {
        format!("cases: {} passed, {} failed", self.passed(), self.failed())
    }
}

/// Builds the lab for `file`, runs its cases (printing a line per case to `out`), tears the
/// lab down, and returns the results.
pub fn run(options: &Options, file: &CaseFile, out: &mut impl Write) -> Result<Summary> {
    let cases: Vec<&Case> = file
        .cases
        .iter()
        .filter(|c| options.only.as_deref().is_none_or(|o| c.name.contains(o)))
        .collect();
    ensure!(!cases.is_empty(), "no case to run");
    let suite = Suite::up(options, file)?;
    // Which queue rules each node enforces with (nft's native queue, or xtables NFQUEUE).
    for (node, said) in suite.sync()? {
        writeln!(out, "{node}: {said}")?;
    }
    let mut summary = Summary::default();
    for case in cases {
        let result = suite.case(case);
        report(out, &result)?;
        summary.cases.push(result);
    }
    writeln!(out, "{}", summary.line())?;
    suite.down()?;
    Ok(summary)
}

fn report(out: &mut impl Write, r: &CaseResult) -> Result<()> {
    let secs = r.elapsed.as_secs_f64();
    if let Some(e) = &r.error {
        writeln!(out, "FAIL {} ({secs:.1}s): {e}", r.name)?;
        return Ok(());
    }
    let retried = if r.retried > 0 {
        format!(", {} retried", r.retried)
    } else {
        String::new()
    };
    if r.passed() {
        writeln!(
            out,
            "PASS {} ({} probes{retried}, {secs:.1}s)",
            r.name, r.probes
        )?;
    } else {
        writeln!(
            out,
            "FAIL {} ({} of {} probes differ{retried}, {secs:.1}s)",
            r.name,
            r.mismatches.len(),
            r.probes
        )?;
        for m in &r.mismatches {
            writeln!(out, "    {m}")?;
        }
    }
    for m in &r.loopback {
        writeln!(out, "    loopback, informational: {m}")?;
    }
    Ok(())
}

/// A lab holding the model, with the agents serving in every pod.
struct Suite<'a> {
    lab: Lab,
    file: &'a CaseFile,
    options: &'a Options,
    agent: PathBuf,
    servers: Vec<Daemon>,
    policy_file: PathBuf,
}

impl<'a> Suite<'a> {
    fn up(options: &'a Options, file: &'a CaseFile) -> Result<Self> {
        let placement = Placement::of(&file.model)?;
        let mut spec = LabSpec::new(&options.name);
        spec.nodes = placement.node_count();
        spec.pods_per_node = 0;
        spec.backend = options.backend;
        spec.datastore = options.datastore;
        spec.network = placement.network.to_string();
        spec.subnet_len = plan::SUBNET_LEN;
        spec.reservations = placement.reservations.clone();
        spec.demo = false;
        spec.progress = options.progress;
        if let Some(dir) = &options.bin_dir {
            spec.bin_dir = dir.clone();
        }
        let agent = spec.binary("fabric-lab");
        ensure!(
            crate::spec::is_executable(&agent),
            "{} is missing: the pods' servers and probes run it (cargo build --release -p fabric-lab)",
            agent.display()
        );
        let lab = Lab::up(spec)?;
        let policy_file = lab.state_dir().join("netpol-policies.yaml");
        let mut suite = Suite {
            lab,
            file,
            options,
            agent,
            servers: Vec::new(),
            policy_file,
        };
        for (ns, n) in &file.model.namespaces {
            suite.label_namespace(ns, &n.labels)?;
        }
        for pod in &file.model.pods {
            let node = &placement.nodes[&plan::qualified(pod)];
            let ports: Vec<_> = pod
                .ports
                .iter()
                .map(|p| {
                    let mut port =
                        json!({"containerPort": p.port, "protocol": p.protocol.as_str()});
                    if let Some(name) = &p.name {
                        port["name"] = json!(name);
                    }
                    port
                })
                .collect();
            let mut spec = PodSpec::new(&pod.name)
                .namespace(&pod.namespace)
                .ip(pod.ip)
                .capability("containerPorts", json!(ports));
            for (k, v) in &pod.labels {
                spec = spec.label(k, v);
            }
            suite.lab.add_pod(node, spec)?;
        }
        suite.start_servers()?;
        suite.sync()?;
        Ok(suite)
    }

    /// Starts `fabric-lab serve` in every pod on the model's ports and waits until each has
    /// bound them.
    fn start_servers(&mut self) -> Result<()> {
        for pod in &self.file.model.pods {
            let mut ports: Vec<u16> = pod.ports.iter().map(|p| p.port).collect();
            ports.sort();
            ports.dedup();
            if ports.is_empty() {
                continue;
            }
            let target = plan::qualified(pod);
            let netns = self.lab.netns(&target)?;
            let log = self.lab.state_dir().join(format!("serve-{netns}.log"));
            let mut cmd = Cmd::in_netns(&netns, &self.agent).arg("serve");
            for p in &ports {
                cmd = cmd.args(["--port", &p.to_string()]);
            }
            self.servers.push(cmd.spawn_daemon(&log)?);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.contains("serving") {
                    break;
                }
                ensure!(
                    Instant::now() < deadline
                        && self.servers.last().is_some_and(Daemon::is_running),
                    "the server in {target} did not start: {}",
                    text.trim()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    fn fabricctl(&self, args: &[&str]) -> Result<String> {
        self.lab.fabricctl(args)
    }

    fn kube(&self) -> bool {
        self.options.datastore == Datastore::Kubernetes
    }

    /// Gives namespace `ns` exactly `labels` (creating it first in Kubernetes mode).
    fn label_namespace(&self, ns: &str, labels: &BTreeMap<String, String>) -> Result<()> {
        if self.kube() {
            self.lab.ensure_namespace(ns)?;
            return self.lab.replace_labels(None, "namespace", ns, labels);
        }
        let mut args = vec!["namespace", "label", ns, "--replace"];
        let pairs = pairs(labels);
        args.extend(pairs.iter().map(String::as_str));
        self.fabricctl(&args).map(drop)
    }

    /// Gives pod `namespace/name` exactly `labels`.
    fn label_pod(&self, pod: &str, labels: &BTreeMap<String, String>) -> Result<()> {
        if self.kube() {
            let (ns, name) = pod
                .split_once('/')
                .with_context(|| format!("pod {pod:?} is not namespace/name"))?;
            return self.lab.replace_labels(Some(ns), "pod", name, labels);
        }
        let mut args = vec!["pod", "label", pod, "--replace"];
        let pairs = pairs(labels);
        args.extend(pairs.iter().map(String::as_str));
        self.fabricctl(&args).map(drop)
    }

    /// Writes the case's policies to the datastore.
    fn apply_policies(&self) -> Result<()> {
        let file = self.policy_file.display().to_string();
        if self.kube() {
            self.lab.kubectl()?.run(&["apply", "-f", &file])?;
        } else {
            self.fabricctl(&["policy", "apply", "-f", &file])?;
        }
        Ok(())
    }

    /// Deletes the case's policies from the datastore.
    fn delete_policies(&self) -> Result<()> {
        let file = self.policy_file.display().to_string();
        if self.kube() {
            self.lab.kubectl()?.run(&[
                "delete",
                "-f",
                &file,
                "--ignore-not-found",
                "--wait=false",
            ])?;
        } else {
            self.fabricctl(&["policy", "delete", "-f", &file])?;
        }
        Ok(())
    }

    /// Waits until every node's fabricd enforces what the datastore holds now; returns what
    /// each said (`policy view in sync at revision ...; queue rules: ...`).
    fn sync(&self) -> Result<Vec<(String, String)>> {
        let mut said = Vec::new();
        for node in self.lab.nodes() {
            let socket = node.socket.display().to_string();
            let args = ["policy", "sync", "--socket", &socket, "--timeout", "15s"];
            let out = if self.kube() {
                self.lab.fabricctl_local(&args)
            } else {
                self.fabricctl(&args)
            }
            .with_context(|| format!("{}'s policy view did not catch up", node.name))?;
            said.push((node.name.clone(), out.trim().to_owned()));
        }
        Ok(said)
    }

    fn case(&self, case: &Case) -> CaseResult {
        let started = Instant::now();
        let mut result = CaseResult {
            name: case.name.clone(),
            probes: case.probes.len(),
            mismatches: Vec::new(),
            loopback: Vec::new(),
            retried: 0,
            error: None,
            elapsed: Duration::ZERO,
        };
        let ran = self.run_case(case, &mut result);
        let cleaned = self.clean(case);
        if let Err(e) = ran.and(cleaned) {
            result.error = Some(format!("{e:#}"));
        }
        result.elapsed = started.elapsed();
        result
    }

    fn run_case(&self, case: &Case, result: &mut CaseResult) -> Result<()> {
        let expected = plan::expectations(case)?;
        if let Some(o) = &case.model_overrides {
            for (ns, n) in &o.namespaces {
                self.label_namespace(ns, &n.labels)?;
            }
            for (pod, p) in &o.pods {
                self.label_pod(pod, &p.labels)?;
            }
        }
        if !case.policies.is_empty() {
            self.write_policies(case)?;
            self.apply_policies()
                .context("applying the case's policies")?;
        }
        self.sync()?;

        let mut observed = self.probe(&expected, self.options.timeout)?;
        for attempt in 1..=self.options.retries {
            // Only connections that should have been made are tried again.
            let again: BTreeMap<ProbeKey, Expectation> = expected
                .iter()
                .filter(|(k, e)| e.expect == Expect::Allow && observed[*k].verdict == Expect::Deny)
                .map(|(k, e)| (k.clone(), *e))
                .collect();
            if again.is_empty() {
                break;
            }
            result.retried += again.len();
            let timeout = self.options.timeout * (attempt + 1);
            observed.extend(self.probe(&again, timeout)?);
        }
        let (counted, loopback) = plan::compare(&expected, &observed)?;
        result.mismatches = counted;
        result.loopback = loopback;
        Ok(())
    }

    fn write_policies(&self, case: &Case) -> Result<()> {
        let mut text = String::new();
        for np in &case.policies {
            text.push_str("---\n");
            text.push_str(&serde_json::to_string(np)?);
            text.push('\n');
        }
        std::fs::write(&self.policy_file, text)
            .with_context(|| format!("writing {}", self.policy_file.display()))
    }

    /// Deletes the case's policies and puts the overridden labels back as the model has them.
    fn clean(&self, case: &Case) -> Result<()> {
        if !case.policies.is_empty() {
            self.delete_policies()
                .context("deleting the case's policies")?;
        }
        if let Some(o) = &case.model_overrides {
            for ns in o.namespaces.keys() {
                let labels = self
                    .file
                    .model
                    .namespaces
                    .get(ns)
                    .map(|n| n.labels.clone())
                    .unwrap_or_default();
                self.label_namespace(ns, &labels)?;
            }
            for pod in o.pods.keys() {
                let model = self
                    .file
                    .model
                    .pods
                    .iter()
                    .find(|p| plan::qualified(p) == *pod)
                    .with_context(|| format!("override of {pod}, which the model lacks"))?;
                self.label_pod(pod, &model.labels)?;
            }
        }
        self.sync().map(drop)
    }

    /// Runs `probes` from their source pods, all sources at once.
    fn probe(
        &self,
        probes: &BTreeMap<ProbeKey, Expectation>,
        timeout: Duration,
    ) -> Result<BTreeMap<ProbeKey, Observed>> {
        let plan = plan::plan(&self.file.model, probes.keys())?;
        let runs: Vec<Result<Vec<(ProbeKey, Observed)>>> = std::thread::scope(|s| {
            let handles: Vec<_> = plan
                .iter()
                .map(|(from, targets)| s.spawn(move || self.probe_from(from, targets, timeout)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| bail!("a probe thread panicked"))
                })
                .collect()
        });
        let mut out = BTreeMap::new();
        for run in runs {
            out.extend(run?);
        }
        Ok(out)
    }

    fn probe_from(
        &self,
        from: &str,
        targets: &[(ProbeKey, String)],
        timeout: Duration,
    ) -> Result<Vec<(ProbeKey, Observed)>> {
        let netns = self.lab.netns(from)?;
        let stdout = Cmd::in_netns(&netns, &self.agent)
            .args([
                "probe",
                "--timeout",
                &humantime::format_duration(timeout).to_string(),
            ])
            .args(targets.iter().map(|(_, t)| t))
            .timeout(timeout * 4 + Duration::from_secs(10))
            .run()
            .with_context(|| format!("probing from {from}"))?;
        let results = porter::parse_probe_output(&stdout)?;
        ensure!(
            results.len() == targets.len(),
            "the probe from {from} answered {} of {} targets",
            results.len(),
            targets.len()
        );
        Ok(targets
            .iter()
            .zip(results)
            .map(|((key, _), r)| {
                let verdict = if r.outcome == Outcome::Connected {
                    Expect::Allow
                } else {
                    Expect::Deny
                };
                let detail = match &r.detail {
                    Some(d) if !d.is_empty() => format!("{} in {} ms: {d}", r.outcome, r.ms),
                    _ => format!("{} in {} ms", r.outcome, r.ms),
                };
                (key.clone(), Observed { verdict, detail })
            })
            .collect())
    }

    fn down(self) -> Result<()> {
        for server in &self.servers {
            let _ = server.terminate();
        }
        self.lab.down().map(drop)
    }
}

fn pairs(labels: &BTreeMap<String, String>) -> Vec<String> {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Loads a case file, naming it in errors.
pub fn load(path: &Path) -> Result<CaseFile> {
    CaseFile::load(path).with_context(|| format!("reading cases from {}", path.display()))
}
