//! Load on one node's CNI path: 100 pods attached by 100 parallel CNI ADDs against node1 (the
//! real `fabric-cni` run as a runtime runs it, each call bounded), then detached by 100
//! parallel DELs; three rounds, and a fourth where the DELs of one half overlap the ADDs of
//! the other. After every ADD wave, as an operator would check: each ADD succeeded (or said
//! "try again later" and succeeded on retry) with its own address inside the node's subnet,
//! the pool file, `fabricctl pod list`, the host routes and veths and the `inet fabric` sets
//! all agree on exactly those pods, each pod holds exactly its address on eth0 and reaches a
//! pod on node2. After every DEL wave nothing is left: no host veth, no /32 route, no pool
//! allocation, no pod record, no set element, no policy queue rule for a pod address.
//!
//! Prints the ADD (and DEL) latencies under this load, p50/p99 per wave; nothing is asserted
//! on them.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use fabric_lab::audit::NodeAudit;
use fabric_lab::cni_runtime::{self, Runtime};
use fabric_lab::{Backend, Conflist, Invocation, Lab, PodSpec};
use fabric_tests::{eventually, ping, spec, up};
use ipnet::Ipv4Net;

/// Pods attached at once.
const PODS: usize = 100;
/// The node under load.
const NODE: &str = "node1";
/// How long one plugin run may take (the lab's default is a minute).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How often an ADD answered with "try again later" (CNI code 11) is retried.
const RETRIES: usize = 5;
/// The CNI error code for a transient failure.
const TRY_AGAIN_LATER: u32 = 11;

/// One attached pod, as the runtime keeps it.
struct Attached {
    inv: Invocation,
    ip: Ipv4Addr,
}

/// The calls of one wave, for the report.
#[derive(Default)]
struct Latencies(Vec<Duration>);

impl Latencies {
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.0.clone();
        sorted.sort();
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }

    fn report(&self, what: &str) {
        eprintln!(
            "{what}: {} calls, p50 {:?}, p99 {:?}, max {:?}",
            self.0.len(),
            self.percentile(50.0),
            self.percentile(99.0),
            self.percentile(100.0)
        );
    }
}

/// The node's CNI call path, with the load test's bounds.
struct UnderLoad<'a> {
    lab: &'a Lab,
    runtime: Runtime,
    conflist: Conflist,
    subnet: Ipv4Net,
    /// Every ADD of the test.
    adds: Mutex<Latencies>,
}

impl<'a> UnderLoad<'a> {
    fn new(lab: &'a Lab) -> Self {
        let mut runtime = lab.cni_runtime(NODE).unwrap();
        runtime.timeout = CALL_TIMEOUT;
        Self {
            lab,
            runtime,
            conflist: lab.default_conflist(NODE).unwrap(),
            subnet: lab.subnets().unwrap()[NODE].parse().unwrap(),
            adds: Mutex::default(),
        }
    }

    /// ADD, retried while the plugin says "try again later"; the time until it succeeded.
    fn add(&self, inv: &Invocation) -> Result<(Attached, Duration)> {
        let start = Instant::now();
        for attempt in 1.. {
            match self.runtime.add(&self.conflist, inv) {
                Ok(result) => {
                    let ip = cni_runtime::first_ipv4(&result)
                        .with_context(|| format!("ADD result without IPv4: {result}"))?;
                    let mut inv = inv.clone();
                    inv.cached_result = Some(result);
                    return Ok((Attached { inv, ip }, start.elapsed()));
                }
                Err(e) if e.code() == Some(TRY_AGAIN_LATER) && attempt <= RETRIES => {
                    eprintln!("{}: retrying ADD: {e}", inv.container_id);
                    thread::sleep(Duration::from_millis(200 * attempt as u64));
                }
                Err(e) => bail!("ADD {} (attempt {attempt}): {e}", inv.container_id),
            }
        }
        unreachable!()
    }

    /// DEL with the cached ADD result; the time it took.
    fn del(&self, pod: &Attached) -> Result<Duration> {
        let start = Instant::now();
        self.runtime
            .del(&self.conflist, &pod.inv)
            .with_context(|| format!("DEL {}", pod.inv.container_id))?;
        Ok(start.elapsed())
    }

    /// ADDs every sandbox at once.
    fn add_all(&self, sandboxes: &[Invocation], wave: &str) -> Vec<Attached> {
        let (pods, latencies) = parallel(sandboxes, |inv| self.add(inv));
        latencies.report(&format!("{wave} ADD"));
        self.adds.lock().unwrap().0.extend(latencies.0);
        pods
    }

    /// DELs every pod at once.
    fn del_all(&self, pods: &[Attached], wave: &str) {
        let (_, latencies) = parallel(pods, |pod| self.del(pod).map(|t| ((), t)));
        latencies.report(&format!("{wave} DEL"));
    }

    /// The node's pod bookkeeping agrees with exactly `want` attached (every pod isolated by
    /// the test's policy); the policy queue follows the pod records, so it is waited for.
    fn assert_holds(&self, want: &BTreeMap<Ipv4Addr, String>) {
        eventually(Duration::from_secs(10), || {
            let found = NodeAudit::of(self.lab, NODE)?.disagreements(want, true);
            ensure!(found.is_empty(), "{}", found.join("\n"));
            Ok(())
        })
        .unwrap();
    }

    /// What must hold with exactly `pods` attached (in any order of attachment).
    fn assert_attached(&self, pods: &[Attached], peer: Ipv4Addr) {
        let want: BTreeMap<Ipv4Addr, String> = pods
            .iter()
            .map(|p| (p.ip, p.inv.container_id.clone()))
            .collect();
        assert_eq!(want.len(), pods.len(), "an address was handed out twice");
        for ip in want.keys() {
            assert!(
                self.subnet.contains(ip)
                    && *ip != self.subnet.network()
                    && *ip != self.subnet.broadcast(),
                "{ip} is not a pod address of {}",
                self.subnet
            );
        }
        self.assert_holds(&want);
        parallel(pods, |pod| {
            let netns = &pod.inv.container_id;
            let eth0 = self
                .lab
                .exec_ok(netns, &["ip", "-o", "-4", "addr", "show", "dev", "eth0"])?;
            let held: Vec<&str> = eth0
                .lines()
                .filter_map(|l| l.split_whitespace().nth(3))
                .collect();
            ensure!(
                held == [format!("{}/32", pod.ip)],
                "{netns} eth0 holds {held:?}, not {}/32",
                pod.ip
            );
            eventually(Duration::from_secs(5), || ping(self.lab, netns, peer))?;
            Ok(((), Duration::ZERO))
        });
    }

    /// What must hold once every pod was deleted.
    fn assert_clean(&self) {
        self.assert_holds(&BTreeMap::new());
    }
}

/// Runs `call` on every item on a thread of its own; panics with every failure. Returns the
/// values and the latencies.
fn parallel<I: Sync, T: Send>(
    items: &[I],
    call: impl Fn(&I) -> Result<(T, Duration)> + Sync,
) -> (Vec<T>, Latencies) {
    let results: Vec<Result<(T, Duration)>> = thread::scope(|s| {
        let handles: Vec<_> = items.iter().map(|i| s.spawn(|| call(i))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker panicked"))
            .collect()
    });
    let mut values = Vec::new();
    let mut latencies = Latencies::default();
    let mut failures = Vec::new();
    for result in results {
        match result {
            Ok((v, t)) => {
                values.push(v);
                latencies.0.push(t);
            }
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} calls failed:\n{}",
        failures.len(),
        items.len(),
        failures.join("\n")
    );
    (values, latencies)
}

const ISOLATE_ALL: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: isolate-all, namespace: default}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress: [{}]
";

#[test]
fn a_hundred_parallel_adds_and_dels_leave_distinct_addresses_and_no_leaks() {
    let test_start = Instant::now();
    let mut lab = up(spec("cniload", 2, 0, Backend::Vxlan));
    let peer = lab.add_pod("node2", PodSpec::new("peer")).unwrap().ip;
    // Every pod isolated for ingress (and every connection allowed), so the policy queue
    // holds per-pod rules that DEL must take away again.
    let policy = lab.state_dir().join("isolate-all.yaml");
    std::fs::write(&policy, ISOLATE_ALL).unwrap();
    lab.fabricctl(&["policy", "apply", "-f", &policy.display().to_string()])
        .unwrap();
    let sandboxes: Vec<Invocation> = (0..PODS)
        .map(|i| lab.pod_sandbox(&format!("load{i}")).unwrap())
        .collect();
    let node = UnderLoad::new(&lab);

    for round in 1..=3 {
        let wave = format!("round {round}");
        let pods = node.add_all(&sandboxes, &wave);
        node.assert_attached(&pods, peer);
        node.del_all(&pods, &wave);
        node.assert_clean();
    }

    // DELs of one half race the ADDs of the other.
    let (first, second) = sandboxes.split_at(PODS / 2);
    let wave = "overlap";
    let old = node.add_all(first, wave);
    node.assert_attached(&old, peer);
    let new = thread::scope(|s| {
        let dels = s.spawn(|| node.del_all(&old, wave));
        let new = node.add_all(second, wave);
        dels.join().expect("DEL wave panicked");
        new
    });
    node.assert_attached(&new, peer);
    node.del_all(&new, wave);
    node.assert_clean();

    node.adds.lock().unwrap().report("all ADDs");
    eprintln!("cni_load took {:?}", test_start.elapsed());
}
