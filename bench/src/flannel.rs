//! `fabric-bench flannel`: fabric beside the real Flannel, the program it is modelled on, on the
//! same lab topology in one interleaved run. The anchor is flanneld (etcd mode, the same
//! net-conf.json) with pods attached through Flannel's delegate chain: the reference `bridge`
//! plugin with `host-local`, called with the config Flannel's CNI plugin derives from
//! flanneld's subnet file. The Go module proxy does not serve Flannel's CNI plugin, so the lab
//! runs that chain itself; this leaves out the plugin's own exec (one process start per call),
//! which favours Flannel in the CNI comparison. flanneld, bridge and host-local are built at
//! the pins `bench/anchors/flannel/build.sh` builds (run first; skipped when up to date). See
//! [`fabric_lab::flannel`].
//!
//! Per backend (vxlan, then host-gw) two 2-node labs, one pod per node, are up side by side:
//! `<name>fab<b>` runs fabricd and `<name>fln<b>` flanneld (`b` = `v` or `h`). On each pair:
//!
//! - **throughput**: iperf3 pod to pod across the nodes, P1 and P4, every repetition running
//!   both at every stream count ([`crate::interleave`]), with the machine's busy CPU per Gbit;
//! - **RSS** of every node's daemon (fabricd, flanneld), after the CNI churn below on vxlan.
//!
//! On the vxlan pair only:
//!
//! - **CNI ADD and DEL latency** on node1: N pods, each ADD timed around the lab's runtime
//!   running the plugin chain exactly as `Lab::add_pod` does (`fabric-cni` asking fabricd;
//!   `bridge` running `host-local`), the two labs alternating pod by pod (which
//!   goes first alternates too); the pod namespace is made before the clock starts; then every
//!   DEL the same way;
//! - **node join**: a node is added to each lab in turn, and the clock runs from its daemon's
//!   start until every other node has a route to a subnet it had none to before (polling
//!   `ip -4 route` in their namespaces every 2 ms).
//!
//! Every target is a verdict line with its ratio; the CNI latencies and the throughput are
//! drawn as bar charts beside the results file.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use fabric_lab::cni_runtime::first_ipv4;
use fabric_lab::process::Cmd;
use fabric_lab::{demo, netns, Agent, Backend, CniCommand, Invocation, Lab, LabSpec};

use crate::chart::{self, BarSeries, Chart};
use crate::report::{self, median, quantile, Run, Section};

/// fabric's median pod-to-pod Gbit/s ≥ this × Flannel's, per backend and stream count.
pub const THROUGHPUT_TARGET: f64 = 0.98;
/// fabric's CNI ADD p99 ≤ this, ms.
pub const ADD_P99_MS: f64 = 25.0;
/// fabric's CNI ADD p99 ≤ this × Flannel's ADD p50.
pub const ADD_VS_FLANNEL_P50: f64 = 0.5;
/// fabric's node join (p50 and p99) ≤ this × Flannel's.
pub const JOIN_TARGET: f64 = 0.5;
/// fabricd's median RSS ≤ this × flanneld's.
pub const RSS_TARGET: f64 = 0.7;

/// The CNI latency chart, beside the results file.
pub const CHART_FILE: &str = "flannel.png";
/// The throughput chart, beside the results file.
pub const THROUGHPUT_CHART_FILE: &str = "flannel-throughput.png";

/// The node the CNI pods go on.
const NODE: &str = "node1";
/// iperf3 attempts per measured run.
const ATTEMPTS: usize = 3;
/// Stream counts, in the order each repetition runs them.
const STREAMS: [u32; 2] = [1, 4];
/// The longest a join may take before the run fails.
const PATIENCE: Duration = Duration::from_secs(30);
/// How long a cold build of the anchor may take.
const BUILD_TIMEOUT: Duration = Duration::from_secs(1800);

const FABRIC: &str = "fabric";
const FLANNEL: &str = "Flannel";

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Lab name prefix.
    pub name: String,
    /// Interleaved iperf3 repetitions per backend.
    pub reps: usize,
    /// Seconds per iperf3 run.
    pub seconds: u32,
    /// Pods added (then deleted) per plugin.
    pub pods: usize,
    /// Node joins per lab.
    pub joins: usize,
    /// The directory the charts are written to and how RESULTS.md refers to it (`None`: not
    /// written).
    pub charts: Option<PathBuf>,
}

/// `build.sh`, in this source tree.
fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("anchors/flannel/build.sh")
}

/// Builds the anchor if needed; returns its bin dir (the script's last line).
fn ensure_built() -> Result<PathBuf> {
    let script = build_script();
    eprintln!(
        "[flannel] {} (a cold build takes minutes)",
        script.display()
    );
    let out = Cmd::new("bash")
        .arg(&script)
        .timeout(BUILD_TIMEOUT)
        .run()
        .with_context(|| format!("building the Flannel anchor with {}", script.display()))?;
    let dir = PathBuf::from(out.lines().last().unwrap_or_default().trim());
    fabric_lab::flannel::check(&dir)?;
    Ok(dir)
}

/// A 2-node, 1-pod-per-node lab running `agent`.
fn lab(name: String, backend: Backend, agent: Agent, flannel_bin: &Path) -> Result<Lab> {
    let mut spec = LabSpec::new(&name);
    spec.nodes = 2;
    spec.pods_per_node = 1;
    spec.backend = backend;
    spec.agent = agent;
    spec.flannel_bin_dir = Some(flannel_bin.to_path_buf());
    spec.demo = false;
    Lab::up(spec).with_context(|| format!("bringing up the 2-node {agent} {backend} lab {name}"))
}

/// The first pod on `node`.
fn pod(lab: &Lab, node: &str) -> Result<fabric_lab::Pod> {
    lab.pods_on(node)
        .next()
        .cloned()
        .with_context(|| format!("lab {} has no pod on {node}", lab.name()))
}

/// One throughput path: pod to pod in one lab.
struct PodPath {
    label: String,
    backend: Backend,
    agent: &'static str,
    client: String,
    server: String,
    server_ip: Ipv4Addr,
}

/// One iperf3 run with the machine's busy CPU around it.
#[derive(Debug, Clone, Copy)]
struct Sample {
    run: Run,
    /// Busy CPU-seconds (machine-wide) per Gbit received.
    cpu_per_gbit: f64,
}

/// The samples of one path at one stream count.
struct Series {
    backend: Backend,
    agent: &'static str,
    streams: u32,
    samples: Vec<Sample>,
}

impl Series {
    fn gbps(&self) -> Vec<f64> {
        self.samples.iter().map(|s| s.run.gbps).collect()
    }
}

fn cpu_jiffies() -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    report::cpu_jiffies(&stat).context("no cpu line in /proc/stat")
}

fn measure(
    path: &PodPath,
    streams: u32,
    seconds: u32,
    log: &Path,
) -> Result<(Sample, Vec<String>)> {
    let cpu0 = cpu_jiffies()?;
    let started = Instant::now();
    let (summary, failures) = crate::iperf::run_with_retries(
        ATTEMPTS,
        &path.server,
        path.server_ip,
        &path.client,
        streams,
        seconds,
        log,
    )?;
    let wall = started.elapsed().as_secs_f64();
    let cpu1 = cpu_jiffies()?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let busy = cpu1.0.saturating_sub(cpu0.0) as f64 / cpu1.1.saturating_sub(cpu0.1).max(1) as f64;
    let gbit = crate::iperf::received_gbit(&summary);
    Ok((
        Sample {
            run: crate::iperf::to_run(&summary),
            cpu_per_gbit: busy * cpus * wall / gbit,
        },
        failures,
    ))
}

/// The resident set of `pid`, MiB.
fn rss_mib(pid: i32) -> Option<f64> {
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

/// Every node's daemon RSS in `lab`, MiB.
fn lab_rss(lab: &Lab) -> Vec<f64> {
    lab.nodes()
        .iter()
        .filter_map(|n| rss_mib(lab.agent_pid(&n.name)?))
        .collect()
}

/// The node subnets `ip -4 -o route show` has routes to: destinations inside `network`
/// (`addr`, prefix length) with exactly `subnet_len` bits.
pub fn subnet_routes(
    routes: &str,
    network: (Ipv4Addr, u8),
    subnet_len: u8,
) -> BTreeSet<(Ipv4Addr, u8)> {
    let mask = |len: u8| u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    let (net, net_len) = network;
    routes
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.split_once('/'))
        .filter_map(|(a, l)| Some((a.parse::<Ipv4Addr>().ok()?, l.parse::<u8>().ok()?)))
        .filter(|&(a, l)| {
            l == subnet_len
                && l >= net_len
                && u32::from(a) & mask(net_len) == u32::from(net) & mask(net_len)
        })
        .collect()
}

/// `a.b.c.d/len`.
fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8)> {
    let (a, l) = s
        .split_once('/')
        .with_context(|| format!("{s:?} is no CIDR"))?;
    Ok((a.parse()?, l.parse()?))
}

/// The node subnets `netns` routes to now.
fn routes_in(netns: &str, network: (Ipv4Addr, u8), len: u8) -> Result<BTreeSet<(Ipv4Addr, u8)>> {
    let out = Cmd::ip(["-n", netns, "-4", "-o", "route", "show"]).run()?;
    Ok(subnet_routes(&out, network, len))
}

/// `ip -4 monitor route` in each of some namespaces, read by a thread each: every line it
/// prints, with when it was read. The monitors are ended (by their handles) when dropped.
struct RouteMonitors {
    children: Vec<Child>,
    lines: mpsc::Receiver<(usize, Instant, String)>,
}

impl RouteMonitors {
    fn start(namespaces: &[String]) -> Result<Self> {
        let (tx, lines) = mpsc::channel();
        let mut monitors = RouteMonitors {
            children: Vec::new(),
            lines,
        };
        for (i, ns) in namespaces.iter().enumerate() {
            let mut child = Cmd::ip(["-n", ns, "-4", "monitor", "route"])
                .spawn_stream()
                .with_context(|| format!("watching the routes of {ns}"))?;
            let stdout = child.stdout.take().context("ip monitor has no stdout")?;
            monitors.children.push(child);
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if tx.send((i, Instant::now(), line)).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(monitors)
    }
}

impl Drop for RouteMonitors {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a join took.
struct Joined {
    /// From the daemon's start until the last other node had its route, ms.
    ms: f64,
    /// Other nodes whose route was found by the fallback poll, not reported by their monitor.
    polled: usize,
}

/// Adds a node to `lab`; returns the time from its daemon's start until every other node that
/// runs one routes to a subnet it did not route to before. Each other node's routes are watched
/// with `ip monitor` (so the time is when the kernel reported the route, whatever the number
/// of nodes), and polled every 250 ms as a fallback should a monitor have missed it.
fn join(lab: &mut Lab) -> Result<Joined> {
    let network = parse_cidr(&lab.state().network)?;
    let len = lab.state().subnet_len;
    let observers: Vec<String> = lab
        .nodes()
        .iter()
        .filter(|n| lab.agent_pid(&n.name).is_some())
        .map(|n| n.netns.clone())
        .collect();
    let before = observers
        .iter()
        .map(|ns| routes_in(ns, network, len))
        .collect::<Result<Vec<_>>>()?;
    let monitors = RouteMonitors::start(&observers)?;
    // Time for every monitor to subscribe before anything happens.
    std::thread::sleep(Duration::from_millis(100));
    let node = lab.add_node_unready()?;
    let start = Instant::now();
    // When each other node's monitor reported the route, and when a poll found it.
    let mut reported: Vec<Option<Instant>> = vec![None; observers.len()];
    let mut found: Vec<Option<Instant>> = vec![None; observers.len()];
    let take = |reported: &mut [Option<Instant>], (i, at, line): (usize, Instant, String)| {
        let new = subnet_routes(&line, network, len);
        if reported[i].is_none() && !new.is_subset(&before[i]) {
            reported[i] = Some(at);
        }
    };
    let mut last_poll = Instant::now();
    loop {
        match monitors.lines.recv_timeout(Duration::from_millis(20)) {
            Ok(msg) => take(&mut reported, msg),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("every route monitor ended"),
        }
        while let Ok(msg) = monitors.lines.try_recv() {
            take(&mut reported, msg);
        }
        let pending: Vec<usize> = (0..observers.len())
            .filter(|&i| reported[i].is_none() && found[i].is_none())
            .collect();
        if pending.is_empty() {
            break;
        }
        if last_poll.elapsed() >= Duration::from_millis(250) {
            for i in pending {
                if !routes_in(&observers[i], network, len)?.is_subset(&before[i]) {
                    found[i] = Some(Instant::now());
                }
            }
            last_poll = Instant::now();
        }
        if start.elapsed() > PATIENCE {
            bail!(
                "{}: {} not routed by every other node after {PATIENCE:?}",
                lab.name(),
                node.name
            );
        }
    }
    // A monitor's report may still be queued behind a poll that found the route.
    std::thread::sleep(Duration::from_millis(20));
    while let Ok(msg) = monitors.lines.try_recv() {
        take(&mut reported, msg);
    }
    drop(monitors);
    let polled = reported.iter().filter(|r| r.is_none()).count();
    let last = reported
        .iter()
        .zip(&found)
        .filter_map(|(r, f)| match (r, f) {
            (Some(r), Some(f)) => Some(*r.min(f)),
            (r, f) => r.or(*f),
        })
        .max()
        .unwrap_or(start);
    let ms = last.saturating_duration_since(start).as_secs_f64() * 1e3;
    lab.wait_ready(&node.name)?;
    Ok(Joined { ms, polled })
}

/// CNI latencies of one plugin chain, ms.
#[derive(Default)]
struct Cni {
    add: Vec<f64>,
    del: Vec<f64>,
}

/// Rounds `0..n` of two labs taking turns at going first: `(round, lab)` in order.
pub fn turns(n: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..n).flat_map(|i| {
        let order = if i.is_multiple_of(2) { [0, 1] } else { [1, 0] };
        order.map(|k| (i, k))
    })
}

/// N pods on node1 of each lab, ADDs alternating between the labs, then DELs likewise.
fn cni(labs: &mut [&mut Lab; 2], pods: usize) -> Result<[Cni; 2]> {
    let mut out = [Cni::default(), Cni::default()];
    let mut attached: [Vec<(String, Ipv4Addr, Invocation)>; 2] = [Vec::new(), Vec::new()];
    for (i, k) in turns(pods) {
        let lab = &mut *labs[k];
        let pod = format!("cni{:03}", i + 1);
        let mut inv = lab.pod_sandbox(&pod)?;
        let start = Instant::now();
        let result = lab.cni(NODE, CniCommand::Add, &inv, None);
        out[k].add.push(start.elapsed().as_secs_f64() * 1e3);
        let result = result
            .with_context(|| format!("{}: CNI ADD of {pod}", lab.name()))?
            .context("CNI ADD returned no result")?;
        let ip = first_ipv4(&result)
            .with_context(|| format!("{}: no IPv4 address in {result}", lab.name()))?;
        inv.cached_result = Some(result);
        attached[k].push((inv.container_id.clone(), ip, inv));
    }
    // The pods are real: the first reaches the last through the node.
    for (k, pods) in attached.iter().enumerate() {
        if let (Some(first), Some(last)) = (pods.first(), pods.last()) {
            demo::ping(&first.0, last.1, 1).with_context(|| {
                format!(
                    "{}: pods attached by the benchmark do not work",
                    labs[k].name()
                )
            })?;
        }
    }
    for (i, k) in turns(pods) {
        let (ns, _, inv) = &attached[k][i];
        let start = Instant::now();
        let result = labs[k].cni(NODE, CniCommand::Del, inv, None);
        out[k].del.push(start.elapsed().as_secs_f64() * 1e3);
        result.with_context(|| format!("{}: CNI DEL of {ns}", labs[k].name()))?;
        netns::delete(ns).with_context(|| format!("deleting {ns}"))?;
    }
    Ok(out)
}

/// `meets` if `value` is on the right side of `bound` (`at_least`: ≥, else ≤), else `MISSES`
/// (also for a value that is not a number).
pub fn judge(value: f64, bound: f64, at_least: bool) -> &'static str {
    let met = if at_least {
        value >= bound
    } else {
        value <= bound
    };
    if met && value.is_finite() {
        "meets"
    } else {
        "MISSES"
    }
}

/// A verdict on a ratio: `- WHAT: A / B UNIT = R× — meets the target ≤ T×`.
pub fn ratio_verdict(
    what: &str,
    a: f64,
    b: f64,
    unit: &str,
    target: f64,
    at_least: bool,
) -> String {
    let ratio = a / b;
    let op = if at_least { '≥' } else { '≤' };
    format!(
        "- {what}: {a:.2} / {b:.2} {unit} = {ratio:.3}× — {} the target {op} {target}×",
        judge(ratio, target, at_least)
    )
}

/// Everything measured.
struct Figures {
    series: Vec<Series>,
    retried: Vec<String>,
    cni: [Cni; 2],
    join: [Vec<f64>; 2],
    /// Per lab, other nodes whose route the fallback poll found (their monitor missed it).
    join_polled: [usize; 2],
    /// (backend, agent index, MiB per node).
    rss: Vec<(Backend, usize, Vec<f64>)>,
}

/// Runs the benchmark and returns its RESULTS.md section.
pub fn run(opts: &Options) -> Result<Section> {
    ensure!(opts.reps >= 1, "--reps must be at least 1");
    ensure!(opts.seconds >= 1, "--seconds must be at least 1");
    ensure!(
        (1..=200).contains(&opts.pods),
        "--pods must be 1..=200 (one /24 per node)"
    );
    ensure!(
        opts.joins <= 100,
        "--joins must be at most 100 (the lab's underlay)"
    );
    let flannel_bin = ensure_built()?;
    let flanneld_version = fabric_lab::flannel::version(&flannel_bin);
    let pins = fabric_lab::flannel::Versions::pinned()?;
    let names = |b: Backend| {
        let tag = if b == Backend::Vxlan { 'v' } else { 'h' };
        [
            format!("{}fab{tag}", opts.name),
            format!("{}fln{tag}", opts.name),
        ]
    };
    let all: Vec<String> = [Backend::Vxlan, Backend::HostGw]
        .into_iter()
        .flat_map(names)
        .collect();
    let snapshot = || {
        let mut s = crate::Snapshot::take(&all[0]);
        s.others.retain(|g| !all.contains(g));
        s
    };
    let before = snapshot();

    let mut figures = Figures {
        series: Vec::new(),
        retried: Vec::new(),
        cni: [Cni::default(), Cni::default()],
        join: [Vec::new(), Vec::new()],
        join_polled: [0, 0],
        rss: Vec::new(),
    };
    let mut mtus = Vec::new();
    for backend in [Backend::Vxlan, Backend::HostGw] {
        let [fname, lname] = names(backend);
        // Declared in this order: the Flannel lab is dropped (torn down) first, also on errors.
        let mut fab = lab(fname, backend, Agent::Fabric, &flannel_bin)?;
        let mut fln = lab(lname, backend, Agent::Flannel, &flannel_bin)?;
        let mut paths = Vec::new();
        for (agent, lab) in [(FABRIC, &fab), (FLANNEL, &fln)] {
            let (src, dst) = (pod(lab, "node1")?, pod(lab, "node2")?);
            demo::ping(&src.netns, dst.ip, 3)
                .with_context(|| format!("{}: the pod-to-pod path does not work", lab.name()))?;
            mtus.push(format!(
                "{agent} {backend} {}",
                crate::wireguard::pod_mtu(&dst.netns)
            ));
            paths.push(PodPath {
                label: format!("{agent} {backend}"),
                backend,
                agent,
                client: src.netns,
                server: dst.netns,
                server_ip: dst.ip,
            });
        }
        let log = fab.state_dir().join("iperf3-server.log");
        let measured = crate::interleave::run(
            opts.reps,
            &STREAMS,
            &paths,
            |p| p.label.as_str(),
            opts.seconds,
            |path, streams| measure(path, streams, opts.seconds, &log),
            |rep, streams, label, s: &Sample| {
                eprintln!(
                    "[{}] rep {rep}/{} P{streams} {label:<16} {:6.2} Gbit/s, {:5} retr, {:.3} CPU-s/Gbit",
                    opts.name, opts.reps, s.run.gbps, s.run.retransmits, s.cpu_per_gbit
                );
            },
        )?;
        figures.retried.extend(measured.retried);
        let cells = STREAMS
            .iter()
            .flat_map(|&streams| paths.iter().map(move |p| (streams, p)));
        for ((streams, p), samples) in cells.zip(measured.samples) {
            figures.series.push(Series {
                backend: p.backend,
                agent: p.agent,
                streams,
                samples,
            });
        }
        if backend == Backend::Vxlan {
            eprintln!(
                "[{}] {} × CNI ADD, then DEL, on {NODE} of both labs, alternating",
                opts.name, opts.pods
            );
            figures.cni = cni(&mut [&mut fab, &mut fln], opts.pods)?;
        }
        for (k, lab) in [&fab, &fln].into_iter().enumerate() {
            figures.rss.push((backend, k, lab_rss(lab)));
        }
        if backend == Backend::Vxlan {
            eprintln!(
                "[{}] {} node joins per lab, alternating",
                opts.name, opts.joins
            );
            for (j, k) in turns(opts.joins) {
                let lab = if k == 0 { &mut fab } else { &mut fln };
                let joined = join(lab)?;
                eprintln!("[{}] join {}: {:7.1} ms", lab.name(), j + 1, joined.ms);
                figures.join[k].push(joined.ms);
                figures.join_polled[k] += joined.polled;
            }
        }
        fln.down().context("tearing the Flannel lab down")?;
        fab.down().context("tearing the fabric lab down")?;
    }
    // After the labs are gone, so that they are not counted as other workloads.
    let after = snapshot();
    let date = crate::today();
    let body = render(
        opts,
        &figures,
        &date,
        &before.describe(&after),
        &mtus,
        &pins,
        &flanneld_version,
    )?;
    Ok(Section {
        title: "Flannel side by side: throughput, CNI ADD/DEL, node join, daemon RSS".into(),
        date,
        command: format!(
            "fabric-bench flannel --reps {} --seconds {} --pods {} --joins {} --name {}",
            opts.reps, opts.seconds, opts.pods, opts.joins, opts.name
        ),
        machine: crate::machine(),
        body,
    })
}

fn series<'a>(f: &'a Figures, backend: Backend, agent: &str, streams: u32) -> Option<&'a Series> {
    f.series
        .iter()
        .find(|s| s.backend == backend && s.agent == agent && s.streams == streams)
}

fn median_gbps(f: &Figures, backend: Backend, agent: &str, streams: u32) -> f64 {
    series(f, backend, agent, streams).map_or(f64::NAN, |s| median(&s.gbps()))
}

fn rss_of(f: &Figures, backend: Backend, k: usize) -> &[f64] {
    f.rss
        .iter()
        .find(|(b, a, _)| *b == backend && *a == k)
        .map_or(&[], |(_, _, v)| v.as_slice())
}

fn render(
    opts: &Options,
    f: &Figures,
    date: &str,
    conditions: &str,
    mtus: &[String],
    pins: &fabric_lab::flannel::Versions,
    flanneld_version: &str,
) -> Result<String> {
    let mut body = String::new();
    writeln!(
        body,
        "fabric beside Flannel {flanneld} (flanneld in etcd mode, `--ip-masq`, the same \
         net-conf.json: 10.244.0.0/16 in /24s; pods through Flannel's delegate chain, the \
         reference bridge and host-local plugins {plugins}, with the config Flannel's CNI \
         plugin derives from flanneld's subnet.env for kube-flannel's conflist), built from \
         their pinned modules by `bench/anchors/flannel/build.sh`. The Go module proxy does not \
         serve Flannel's CNI plugin, so the lab runs its delegate chain itself: this leaves out \
         the plugin's own exec (one process start per ADD and DEL), which favours Flannel in \
         the CNI comparison. \
         Per backend, two 2-node labs up side by side, one pod per node: `{name}fab<b>` \
         (fabricd) and `{name}fln<b>` (flanneld), `b` = v (vxlan) or h (host-gw); vxlan first, \
         then host-gw. Pod MTUs: {mtus}. {conditions}\n",
        flanneld = flanneld_version,
        plugins = pins.plugins,
        name = opts.name,
        mtus = mtus.join(", "),
    )?;

    // Throughput.
    writeln!(
        body,
        "Pod-to-pod iperf3 TCP, node1's pod to node2's, {} interleaved repetition(s) of {} s per \
         row: each repetition runs fabric then Flannel at P1, then both at P4. CPU-s/Gbit is \
         the machine's busy CPU (`/proc/stat`, both ends, every daemon) per Gbit received:\n",
        opts.reps, opts.seconds
    )?;
    let mut rows = Vec::new();
    for s in &f.series {
        let g = s.gbps();
        let flannel = median_gbps(f, s.backend, FLANNEL, s.streams);
        rows.push(vec![
            s.backend.to_string(),
            s.agent.to_string(),
            format!("P{}", s.streams),
            s.samples.len().to_string(),
            format!("{:.2}", median(&g)),
            format!("{:.2}", quantile(&g, 0.0)),
            format!("{:.2}", quantile(&g, 1.0)),
            format!("{:.3}", median(&g) / flannel),
            format!(
                "{:.0}",
                median(
                    &s.samples
                        .iter()
                        .map(|x| x.run.retransmits as f64)
                        .collect::<Vec<_>>()
                )
            ),
            format!(
                "{:.3}",
                median(&s.samples.iter().map(|x| x.cpu_per_gbit).collect::<Vec<_>>())
            ),
        ]);
    }
    body.push_str(&report::markdown_table(
        &[
            "backend",
            "agent",
            "streams",
            "runs",
            "median Gbit/s",
            "min",
            "max",
            "÷ Flannel",
            "retransmits",
            "CPU-s/Gbit",
        ],
        &rows,
    ));

    // CNI.
    let [fc, lc] = &f.cni;
    writeln!(
        body,
        "\nCNI on node1 of the vxlan labs, {} pods per plugin chain, the labs alternating pod by \
         pod; each call is the lab's runtime running the first plugin of the conflist inside the \
         node's namespace (clean environment with `CNI_*`, config on stdin), exactly as \
         `Lab::add_pod` does: `fabric-cni` asks fabricd over its socket (ADD returns once \
         policy is enforced on the pod); `bridge` (with the config Flannel's plugin derives \
         from the node's subnet.env, built once flanneld wrote it) runs `host-local`, without \
         the exec of Flannel's plugin before it. The pod namespace is made before the clock \
         starts and deleted after DEL:\n",
        opts.pods
    )?;
    body.push_str(&report::latency_table(&[
        ("fabric-cni ADD", &fc.add),
        ("Flannel delegate (bridge + host-local) ADD", &lc.add),
        ("fabric-cni DEL", &fc.del),
        ("Flannel delegate (bridge + host-local) DEL", &lc.del),
    ]));

    // Joins.
    writeln!(
        body,
        "\nNode join on the vxlan labs, {} per lab, alternating: a node (namespace, underlay \
         link) is added and its daemon started; the clock runs from the start until every other \
         node has a route to a subnet it had no route to before, as `ip -4 monitor route` in \
         each other node's namespace reports it (started before the node; a poll of `ip -4 \
         route` every 250 ms stands in for a monitor that missed it: {} time(s) for fabric, {} \
         for Flannel). The labs grow by one node per join:\n",
        opts.joins, f.join_polled[0], f.join_polled[1]
    )?;
    let [fj, lj] = &f.join;
    body.push_str(&report::latency_table(&[
        ("fabric: node start to routed everywhere", fj),
        ("Flannel: node start to routed everywhere", lj),
    ]));

    // RSS.
    writeln!(
        body,
        "\nDaemon resident memory (`VmRSS`) on every node of each lab, on vxlan after the CNI \
         churn (before the joins), on host-gw after the throughput runs:\n"
    )?;
    let mut rss_rows = Vec::new();
    for backend in [Backend::Vxlan, Backend::HostGw] {
        for (k, daemon) in [(0, "fabricd"), (1, "flanneld")] {
            let v = rss_of(f, backend, k);
            rss_rows.push(vec![
                backend.to_string(),
                daemon.to_string(),
                v.len().to_string(),
                format!("{:.1}", median(v)),
                format!("{:.1}", v.iter().cloned().fold(f64::NAN, f64::max)),
            ]);
        }
    }
    body.push_str(&report::markdown_table(
        &["backend", "daemon", "nodes", "median MiB", "max MiB"],
        &rss_rows,
    ));

    // Verdicts.
    writeln!(body, "\nTargets (same run):\n")?;
    for backend in [Backend::Vxlan, Backend::HostGw] {
        for p in STREAMS {
            writeln!(
                body,
                "{}",
                ratio_verdict(
                    &format!("{backend} P{p} throughput, fabric / Flannel"),
                    median_gbps(f, backend, FABRIC, p),
                    median_gbps(f, backend, FLANNEL, p),
                    "Gbit/s",
                    THROUGHPUT_TARGET,
                    true,
                )
            )?;
        }
    }
    let add_p99 = quantile(&fc.add, 0.99);
    writeln!(
        body,
        "- CNI ADD p99, fabric: {add_p99:.1} ms — {} the target ≤ {ADD_P99_MS} ms",
        judge(add_p99, ADD_P99_MS, false)
    )?;
    writeln!(
        body,
        "{}",
        ratio_verdict(
            "CNI ADD, fabric p99 / Flannel p50",
            add_p99,
            quantile(&lc.add, 0.5),
            "ms",
            ADD_VS_FLANNEL_P50,
            false,
        )
    )?;
    for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
        writeln!(
            body,
            "{}",
            ratio_verdict(
                &format!("node join {name}, fabric / Flannel"),
                quantile(fj, q),
                quantile(lj, q),
                "ms",
                JOIN_TARGET,
                false,
            )
        )?;
    }
    for backend in [Backend::Vxlan, Backend::HostGw] {
        writeln!(
            body,
            "{}",
            ratio_verdict(
                &format!("{backend} daemon RSS (median per node), fabricd / flanneld"),
                median(rss_of(f, backend, 0)),
                median(rss_of(f, backend, 1)),
                "MiB",
                RSS_TARGET,
                false,
            )
        )?;
    }

    if let Some(dir) = &opts.charts {
        for (file, chart) in [
            (CHART_FILE, cni_chart(f, date)),
            (THROUGHPUT_CHART_FILE, throughput_chart(f, opts, date)),
        ] {
            let path = dir.join(file);
            std::fs::write(&path, chart::render_png(&chart))
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("chart written to {}", path.display());
        }
        writeln!(
            body,
            "\n![CNI ADD and DEL latency, fabric vs Flannel]({CHART_FILE})\n\n\
             ![Pod-to-pod throughput, fabric vs Flannel]({THROUGHPUT_CHART_FILE})\n\n\
             `{CHART_FILE}`: CNI ADD and DEL p50 and p99, ms; `{THROUGHPUT_CHART_FILE}`: median \
             Gbit/s per backend and stream count. Rewritten by every run, so they show the \
             newest section."
        )?;
    }
    if !f.retried.is_empty() {
        writeln!(
            body,
            "\nRetried iperf3 attempts (unusable report, not counted): {}",
            f.retried.join("; ")
        )?;
    }
    Ok(body)
}

const FABRIC_COLOR: [u8; 3] = [214, 39, 40];
const FLANNEL_COLOR: [u8; 3] = [31, 119, 180];

fn cni_chart(f: &Figures, date: &str) -> Chart {
    let [fc, lc] = &f.cni;
    let values = |c: &Cni| {
        vec![
            quantile(&c.add, 0.5),
            quantile(&c.add, 0.99),
            quantile(&c.del, 0.5),
            quantile(&c.del, 0.99),
        ]
    };
    Chart {
        title: format!("CNI latency, {} pods per plugin, {date}", fc.add.len()),
        unit: "ms".into(),
        groups: ["ADD p50", "ADD p99", "DEL p50", "DEL p99"]
            .map(String::from)
            .to_vec(),
        series: vec![
            BarSeries {
                label: "fabric-cni".into(),
                color: FABRIC_COLOR,
                values: values(fc),
            },
            BarSeries {
                label: "Flannel bridge+host-local".into(),
                color: FLANNEL_COLOR,
                values: values(lc),
            },
        ],
    }
}

fn throughput_chart(f: &Figures, opts: &Options, date: &str) -> Chart {
    let cells: Vec<(Backend, u32)> = [Backend::Vxlan, Backend::HostGw]
        .into_iter()
        .flat_map(|b| STREAMS.map(|p| (b, p)))
        .collect();
    let values = |agent: &str| {
        cells
            .iter()
            .map(|&(b, p)| median_gbps(f, b, agent, p))
            .collect()
    };
    Chart {
        title: format!(
            "iperf3 pod to pod, median of {} x {} s, {date}",
            opts.reps, opts.seconds
        ),
        unit: "Gbit/s".into(),
        groups: cells.iter().map(|(b, p)| format!("{b} P{p}")).collect(),
        series: vec![
            BarSeries {
                label: "fabric".into(),
                color: FABRIC_COLOR,
                values: values(FABRIC),
            },
            BarSeries {
                label: "Flannel".into(),
                color: FLANNEL_COLOR,
                values: values(FLANNEL),
            },
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_node_subnet_routes_inside_the_network_count() {
        let routes = "default via 172.30.0.1 dev eth0\n\
                      10.244.14.0/24 via 10.244.14.0 dev flannel.1 onlink\n\
                      10.244.50.0/24 dev cni0 proto kernel scope link src 10.244.50.1\n\
                      10.244.50.7 dev veth1 scope link\n\
                      10.244.61.9/32 dev fab1 proto 102 scope link\n\
                      10.245.3.0/24 via 172.30.0.13 dev eth0\n\
                      172.30.0.0/24 dev eth0 proto kernel scope link src 172.30.0.11\n\
                      10.244.0.0/16 via 10.244.50.1 dev eth0\n";
        let got = subnet_routes(routes, (Ipv4Addr::new(10, 244, 0, 0), 16), 24);
        let want: BTreeSet<_> = [
            (Ipv4Addr::new(10, 244, 14, 0), 24),
            (Ipv4Addr::new(10, 244, 50, 0), 24),
        ]
        .into();
        assert_eq!(got, want);
        assert!(subnet_routes("", (Ipv4Addr::new(10, 244, 0, 0), 16), 24).is_empty());
        assert_eq!(
            parse_cidr("10.244.0.0/16").unwrap(),
            (Ipv4Addr::new(10, 244, 0, 0), 16)
        );
        assert!(parse_cidr("10.244.0.0").is_err());
    }

    #[test]
    fn the_labs_take_turns_going_first() {
        let order: Vec<(usize, usize)> = turns(3).collect();
        assert_eq!(order, [(0, 0), (0, 1), (1, 1), (1, 0), (2, 0), (2, 1)]);
        assert_eq!(turns(0).count(), 0);
    }

    #[test]
    fn verdicts_say_which_side_of_the_target() {
        assert_eq!(judge(0.99, 0.98, true), "meets");
        assert_eq!(judge(0.979, 0.98, true), "MISSES");
        assert_eq!(judge(20.0, 25.0, false), "meets");
        assert_eq!(judge(25.1, 25.0, false), "MISSES");
        assert_eq!(judge(f64::NAN, 25.0, false), "MISSES");
        assert_eq!(
            ratio_verdict(
                "vxlan P1 throughput, fabric / Flannel",
                9.5,
                9.7,
                "Gbit/s",
                0.98,
                true
            ),
            "- vxlan P1 throughput, fabric / Flannel: 9.50 / 9.70 Gbit/s = 0.979× — MISSES the \
             target ≥ 0.98×"
        );
        assert_eq!(
            ratio_verdict("node join p50", 100.0, 400.0, "ms", 0.5, false),
            "- node join p50: 100.00 / 400.00 ms = 0.250× — meets the target ≤ 0.5×"
        );
        // No samples: no verdict can be met.
        assert!(ratio_verdict("x", f64::NAN, 1.0, "ms", 0.5, false).contains("MISSES"));
    }
}
