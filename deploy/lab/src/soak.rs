//! A churn soak on an etcd-mode lab: for a fixed time, round after round, pods are added and
//! deleted across the nodes (each new pod pings a pod on another node), a NetworkPolicy
//! isolating every pod is applied and deleted in turn, and halfway through one node's fabricd
//! is restarted. Each round samples every fabricd's resident memory and open descriptors from
//! `/proc`; at the end the churned pods are deleted and every node's bookkeeping is audited
//! ([`crate::audit::NodeAudit`]) against the pods the lab still has. `tests/soak.rs` runs it
//! briefly, `fabric-bench soak` for ten minutes.
//!
//! What counts as flat is pure ([`Growth::flat`]): within one fabricd process, the median of
//! the last quarter of its samples against the median of the first quarter (its first sample,
//! taken while it warms up, left out).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use crate::audit::NodeAudit;
use crate::lab::Lab;
use crate::spec::PodSpec;
use crate::Signal;

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakSpec {
    /// How long to churn.
    pub duration: Duration,
    /// Pods added (and as many deleted) per round.
    pub churn: usize,
    /// Churned pods kept alive at once, across the nodes.
    pub live: usize,
    /// The node whose fabricd is restarted halfway (`None`: none).
    pub restart: Option<String>,
}

impl Default for SoakSpec {
    fn default() -> Self {
        SoakSpec {
            duration: Duration::from_secs(600),
            churn: 4,
            live: 24,
            restart: Some("node2".into()),
        }
    }
}

/// One look at one fabricd.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Since the soak started.
    pub at: Duration,
    /// The process.
    pub pid: i32,
    /// `VmRSS`, KiB.
    pub rss_kib: u64,
    /// Entries of `/proc/PID/fd`.
    pub fds: usize,
}

/// How much one fabricd process grew over the soak.
#[derive(Debug, Clone, PartialEq)]
pub struct Growth {
    /// Its node.
    pub node: String,
    /// The process.
    pub pid: i32,
    /// Samples taken of it.
    pub samples: usize,
    /// Median RSS of the first quarter of its samples (after the first), KiB.
    pub rss_start_kib: u64,
    /// Median RSS of the last quarter, KiB.
    pub rss_end_kib: u64,
    /// Median descriptors, first quarter.
    pub fds_start: usize,
    /// Median descriptors, last quarter.
    pub fds_end: usize,
}

/// RSS may grow by this fraction of where it started ...
const RSS_SLACK_FRACTION: f64 = 0.15;
/// ... or by this much, whichever is more (allocator arenas settle in steps).
const RSS_SLACK_KIB: u64 = 4 * 1024;
/// Descriptors may grow by this many (a connection in flight at a sample).
const FD_SLACK: usize = 3;

impl Growth {
    /// The growth of one process's samples (in time order); `None` with fewer than 5.
    pub fn of(node: &str, samples: &[Sample]) -> Option<Growth> {
        let settled = samples.get(1..).filter(|s| s.len() >= 4)?;
        let quarter = settled.len() / 4;
        let median = |s: &[Sample], f: fn(&Sample) -> u64| {
            let mut v: Vec<u64> = s.iter().map(f).collect();
            v.sort_unstable();
            v[v.len() / 2]
        };
        let (first, last) = (&settled[..quarter], &settled[settled.len() - quarter..]);
        Some(Growth {
            node: node.to_string(),
            pid: samples[0].pid,
            samples: samples.len(),
            rss_start_kib: median(first, |s| s.rss_kib),
            rss_end_kib: median(last, |s| s.rss_kib),
            fds_start: median(first, |s| s.fds as u64) as usize,
            fds_end: median(last, |s| s.fds as u64) as usize,
        })
    }

    /// Whether memory and descriptors stayed flat.
    pub fn flat(&self) -> bool {
        let slack = ((self.rss_start_kib as f64 * RSS_SLACK_FRACTION) as u64).max(RSS_SLACK_KIB);
        self.rss_end_kib <= self.rss_start_kib + slack && self.fds_end <= self.fds_start + FD_SLACK
    }
}

/// What a soak did and found.
#[derive(Debug, Clone, Default)]
pub struct SoakReport {
    /// How long it churned.
    pub elapsed: Duration,
    /// Rounds run.
    pub rounds: usize,
    /// Pods added and deleted.
    pub adds: usize,
    /// Pods deleted.
    pub dels: usize,
    /// Policy applies and deletes.
    pub policy_changes: usize,
    /// fabricd restarts.
    pub restarts: usize,
    /// Each node's samples, per fabricd process, in time order.
    pub samples: BTreeMap<String, Vec<Sample>>,
    /// Per process: how much it grew.
    pub growth: Vec<Growth>,
    /// What the final audit found leaked or missing, per node (empty: nothing).
    pub leaks: Vec<String>,
}

impl SoakReport {
    /// Whether nothing leaked and every process stayed flat.
    pub fn clean(&self) -> bool {
        self.leaks.is_empty() && self.growth.iter().all(Growth::flat)
    }
}

/// The policy the soak applies and deletes in turn: every pod in `default` isolated for
/// ingress, everything from inside the namespace allowed (so the pings still pass).
const ISOLATE: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: soak-isolate, namespace: default}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress: [{from: [{podSelector: {}}]}]
";

/// `VmRSS` (KiB) and open descriptors of `pid`.
fn look(pid: i32) -> Result<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("reading /proc/{pid}/fd"))?
        .count();
    Ok((rss, fds))
}

/// Runs the soak on `lab` (etcd mode, at least two nodes).
pub fn run(lab: &mut Lab, spec: &SoakSpec) -> Result<SoakReport> {
    let nodes: Vec<String> = lab.nodes().iter().map(|n| n.name.clone()).collect();
    ensure!(nodes.len() >= 2, "the soak wants at least two nodes");
    // One steady pod per node, the ping target of the others' new pods.
    let mut steady = BTreeMap::new();
    for node in &nodes {
        let pod = lab.add_pod(
            node,
            PodSpec::new(format!("{node}-steady")).label("soak", "steady"),
        )?;
        steady.insert(node.clone(), pod.ip);
    }
    let policy = lab.state_dir().join("soak-isolate.yaml");
    std::fs::write(&policy, ISOLATE).context("writing the soak's policy")?;
    let policy = policy.display().to_string();

    let mut report = SoakReport::default();
    let mut live: std::collections::VecDeque<String> = Default::default();
    let mut isolated = false;
    let start = Instant::now();
    let mut restart_due = spec.restart.clone();
    while start.elapsed() < spec.duration {
        let round = report.rounds;
        for i in 0..spec.churn {
            let node = &nodes[(round * spec.churn + i) % nodes.len()];
            let name = format!("soak{round}x{i}");
            let pod = lab
                .add_pod(node, PodSpec::new(&name).label("soak", "churn"))
                .with_context(|| format!("round {round}: adding {name} on {node}"))?;
            report.adds += 1;
            if i == 0 {
                let other =
                    &nodes[(nodes.iter().position(|n| n == node).unwrap_or(0) + 1) % nodes.len()];
                ping_soon(lab, &name, steady[other]).with_context(|| {
                    format!("round {round}: {name} on {node} cannot reach {other}")
                })?;
            }
            live.push_back(pod.name);
        }
        while live.len() > spec.live {
            let name = live.pop_front().expect("non-empty");
            lab.del_pod(&name)
                .with_context(|| format!("round {round}: deleting {name}"))?;
            report.dels += 1;
        }
        let verb: &[&str] = if isolated {
            &["policy", "delete", "default/soak-isolate"]
        } else {
            &["policy", "apply", "-f", &policy]
        };
        lab.fabricctl(verb)
            .with_context(|| format!("round {round}: fabricctl {verb:?}"))?;
        isolated = !isolated;
        report.policy_changes += 1;
        if start.elapsed() >= spec.duration / 2 {
            if let Some(node) = restart_due.take() {
                lab.stop_fabricd(&node, Signal::SIGTERM)?;
                lab.start_fabricd(&node)?;
                report.restarts += 1;
            }
        }
        for node in &nodes {
            let pid = lab
                .node(node)?
                .fabricd
                .as_ref()
                .map(|d| d.pid)
                .context("fabricd stopped")?;
            let (rss_kib, fds) = look(pid)?;
            report
                .samples
                .entry(node.clone())
                .or_default()
                .push(Sample {
                    at: start.elapsed(),
                    pid,
                    rss_kib,
                    fds,
                });
        }
        report.rounds += 1;
    }
    report.elapsed = start.elapsed();
    for name in live.drain(..) {
        lab.del_pod(&name)
            .with_context(|| format!("deleting {name}"))?;
        report.dels += 1;
    }
    if isolated {
        lab.fabricctl(&["policy", "delete", "default/soak-isolate"])?;
        report.policy_changes += 1;
    }
    for (node, samples) in &report.samples {
        let mut by_pid: Vec<(i32, Vec<Sample>)> = Vec::new();
        for s in samples {
            match by_pid.last_mut() {
                Some((pid, run)) if *pid == s.pid => run.push(*s),
                _ => by_pid.push((s.pid, vec![*s])),
            }
        }
        report
            .growth
            .extend(by_pid.iter().filter_map(|(_, run)| Growth::of(node, run)));
    }
    report.leaks = audit(lab, &nodes)?;
    Ok(report)
}

/// Pings `ip` from `pod`, a few tries (a new pod's first packets may race its neighbours).
fn ping_soon(lab: &Lab, pod: &str, ip: Ipv4Addr) -> Result<()> {
    let mut last = None;
    for _ in 0..5 {
        match crate::demo::ping(&lab.netns(pod)?, ip, 1) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("tried"))
}

/// Every node's disagreements with the pods the lab still has on it, waited for a while (the
/// policy queue follows the records asynchronously).
fn audit(lab: &Lab, nodes: &[String]) -> Result<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut found = Vec::new();
        for node in nodes {
            let want: BTreeMap<Ipv4Addr, String> = lab
                .pods_on(node)
                .map(|p| (p.ip, p.container_id.clone()))
                .collect();
            let audit = NodeAudit::of(lab, node)?;
            found.extend(
                audit
                    .disagreements(&want, false)
                    .into_iter()
                    .map(|d| format!("{node}: {d}")),
            );
        }
        if found.is_empty() || Instant::now() >= deadline {
            return Ok(found);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(pid: i32, rss: &[u64], fds: &[usize]) -> Vec<Sample> {
        rss.iter()
            .zip(fds)
            .enumerate()
            .map(|(i, (&rss_kib, &fds))| Sample {
                at: Duration::from_secs(i as u64),
                pid,
                rss_kib,
                fds,
            })
            .collect()
    }

    #[test]
    fn growth_compares_the_first_and_last_quarters_after_warm_up() {
        // The first sample (warm-up) is left out; quarters of 8 settled samples are 2 each.
        let flat = samples(
            7,
            &[
                5_000, 20_000, 20_100, 20_050, 20_200, 20_100, 20_300, 20_150, 20_250,
            ],
            &[9, 12, 12, 13, 12, 12, 13, 12, 12],
        );
        let g = Growth::of("node1", &flat).unwrap();
        assert_eq!((g.pid, g.samples), (7, 9));
        assert_eq!((g.rss_start_kib, g.fds_start), (20_100, 12));
        assert!(g.flat(), "{g:?}");
        let leaking = samples(
            7,
            &[
                5_000, 20_000, 21_000, 24_000, 27_000, 30_000, 33_000, 36_000, 39_000,
            ],
            &[9; 9],
        );
        assert!(!Growth::of("node1", &leaking).unwrap().flat());
        let fd_leak = samples(7, &[20_000; 9], &[9, 10, 11, 12, 13, 14, 15, 16, 17]);
        assert!(!Growth::of("node1", &fd_leak).unwrap().flat());
        assert!(Growth::of("node1", &flat[..4]).is_none());
    }
}
