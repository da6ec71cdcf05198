//! `fabric-bench wireguard`: fabric's wireguard backend beside its limits and its userspace
//! peers, all measured in one interleaved run on two 2-node labs:
//!
//! - `<name>x` (vxlan backend): fabric vxlan pod to pod, and the hand-built kernel VXLAN path
//!   ([`crate::anchor`]) between its node namespaces;
//! - `<name>w` (wireguard backend): fabric wireguard pod to pod, the raw underlay (node1's
//!   `eth0` to node2's, the limit), and the userspace WireGuard anchors ([`crate::wg_anchor`]):
//!   boringtun-cli with its default threads and with `--threads 1`, Debian's old wireguard-go
//!   (no offloads) and the current wireguard-go release (TUN TSO/GRO, UDP GSO/GRO) built from
//!   its Go module at the pin in `bench/anchors/versions.env` ([`crate::upstream`]), node
//!   namespace to node namespace over their tunnel addresses.
//!
//! Each repetition runs, for P1 then P4 (iperf3 `-P`), every path once, each run bounded by
//! `-t`. Besides iperf3's figures, each run records the machine's busy CPU (`/proc/stat`)
//! and the server node namespace's UDP receive-buffer drops (`/proc/net/snmp`).

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use fabric_lab::demo;
use fabric_lab::process::Cmd;
use fabric_lab::{Backend, Lab, LabSpec};

use crate::anchor::HandBuilt;
use crate::chart::{self, BarSeries, Chart};
use crate::report::{self, Baselines, Metric, PathSeries, Sample, Section, Target};
use crate::upstream;
use crate::wg_anchor::{self, Userspace};

/// fabric wireguard ≥ this × the better boringtun-cli (default threads or `--threads 1`).
pub const BORINGTUN_TARGET: f64 = 2.0;
/// fabric wireguard ≥ this × Debian's old wireguard-go.
pub const DEBIAN_WIREGUARD_GO_TARGET: f64 = 4.0;
/// fabric wireguard ≥ this × the current wireguard-go (throughput).
pub const WIREGUARD_GO_TARGET: f64 = 2.0;
/// fabric wireguard's CPU-seconds per Gbit ≤ this × the current wireguard-go's.
pub const WIREGUARD_GO_CPU_TARGET: f64 = 0.5;
/// fabric wireguard ≥ this × the hand-built kernel VXLAN path.
pub const KERNEL_TARGET: f64 = 0.4;

/// The chart's file name, beside the results file.
pub const CHART_FILE: &str = "wireguard.png";

/// iperf3 attempts per measured run (an attempt whose report is unusable is retried).
const ATTEMPTS: usize = 3;

/// Stream counts, in the order each repetition runs them.
const STREAMS: [u32; 2] = [1, 4];

const RAW: &str = "raw underlay veth";
const KERNEL_VXLAN: &str = "hand-built kernel VXLAN";
const FABRIC_VXLAN: &str = "fabric vxlan";
const FABRIC_WG: &str = "fabric wireguard";
const BORINGTUN: &str = "boringtun-cli";
const BORINGTUN_1: &str = "boringtun-cli --threads 1";

/// The userspace anchors' tags (device names, key and log files).
const BT_TAG: &str = "bt";
const BT1_TAG: &str = "bt1";
const WGGO_DEBIAN_TAG: &str = "wggo";
const WGGO_TAG: &str = "wgnew";

/// The chart's colour per path: kernel and fabric paths by label, userspace anchors by tag.
fn color(key: &str) -> [u8; 3] {
    match key {
        RAW => [127, 127, 127],
        KERNEL_VXLAN => [31, 119, 180],
        FABRIC_VXLAN => [158, 190, 230],
        FABRIC_WG => [214, 39, 40],
        BT_TAG => [44, 160, 44],
        BT1_TAG => [152, 223, 138],
        WGGO_DEBIAN_TAG => [197, 176, 213],
        WGGO_TAG => [148, 103, 189],
        _ => [0, 0, 0],
    }
}

/// The two wireguard-go rows' labels, from their `--version` lines (`wireguard-go
/// v0.0.20220316`); Debian's is marked as such if both print the same.
fn wireguard_go_labels(debian: &str, current: &str) -> (String, String) {
    let label = |v: &str, fallback: &str| {
        if v.starts_with("wireguard-go ") {
            v.to_string()
        } else {
            fallback.to_string()
        }
    };
    let debian = label(debian, "wireguard-go (Debian)");
    let current = label(current, "wireguard-go (current)");
    if debian == current {
        (format!("{debian} (Debian)"), current)
    } else {
        (debian, current)
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Lab name prefix: the labs are `<name>x` and `<name>w`.
    pub name: String,
    /// Interleaved repetitions.
    pub reps: usize,
    /// Seconds per iperf3 run.
    pub seconds: u32,
    /// Where to write the PNG chart (`None`: not written), and how RESULTS.md refers to it.
    pub chart: Option<(PathBuf, String)>,
}

/// One path of the comparison.
struct Path {
    label: String,
    color: [u8; 3],
    client: String,
    server: String,
    server_ip: Ipv4Addr,
    /// The server node's namespace, whose UDP counters are read.
    server_node: String,
}

/// The first pod on `node`.
fn pod(lab: &Lab, node: &str) -> Result<fabric_lab::Pod> {
    lab.pods_on(node)
        .next()
        .cloned()
        .with_context(|| format!("lab {} has no pod on {node}", lab.name()))
}

/// A 2-node, 1-pod-per-node lab.
fn lab(name: String, backend: Backend) -> Result<Lab> {
    let mut spec = LabSpec::new(&name);
    spec.nodes = 2;
    spec.pods_per_node = 1;
    spec.backend = backend;
    spec.demo = false;
    Lab::up(spec).with_context(|| format!("bringing up the 2-node {backend} lab {name}"))
}

/// Runs the benchmark and returns its RESULTS.md section.
pub fn run(opts: &Options) -> Result<Section> {
    ensure!(opts.reps >= 1, "--reps must be at least 1");
    ensure!(opts.seconds >= 1, "--seconds must be at least 1");
    let (xname, wname) = (format!("{}x", opts.name), format!("{}w", opts.name));
    let snapshot = || {
        let mut s = crate::Snapshot::take(&xname);
        s.others.retain(|g| *g != wname);
        s
    };
    let before = snapshot();

    // The anchors' programs first: nothing to clean up if an install fails.
    wg_anchor::ensure_wg()?;
    let wggo_debian = wg_anchor::ensure_debian_wireguard_go()?;
    let wggo = upstream::ensure(&upstream::WIREGUARD_GO)?;
    let boringtun = wg_anchor::ensure_boringtun()?;
    let (wggo_debian_label, wggo_label) = wireguard_go_labels(
        &wg_anchor::version(&wggo_debian),
        &wg_anchor::version(&wggo),
    );
    let versions = format!(
        "`{}` (Debian's package, `{}`), `{}` (`{}`, built by `bench/anchors/build.sh \
         wireguard-go` from `{}@{}`), `{}` (`{}`)",
        wg_anchor::version(&wggo_debian),
        wggo_debian.display(),
        wg_anchor::version(&wggo),
        wggo.display(),
        "golang.zx2c4.com/wireguard",
        upstream::pin(upstream::WIREGUARD_GO.version_key)?,
        wg_anchor::version(&boringtun),
        boringtun.display()
    );

    // Declared before the anchors: dropped (torn down) after them, also on errors.
    let xlab = lab(xname.clone(), Backend::Vxlan)?;
    let wlab = lab(wname.clone(), Backend::Wireguard)?;
    let (xsrc, xdst) = (pod(&xlab, "node1")?, pod(&xlab, "node2")?);
    let (wsrc, wdst) = (pod(&wlab, "node1")?, pod(&wlab, "node2")?);
    demo::ping(&xsrc.netns, xdst.ip, 3).context("fabric vxlan's pod-to-pod path does not work")?;
    demo::ping(&wsrc.netns, wdst.ip, 3)
        .context("fabric wireguard's pod-to-pod path does not work")?;
    let (wnode1, wnode2) = (&wlab.nodes()[0], &wlab.nodes()[1]);
    let xnode2 = xlab.nodes()[1].netns.clone();
    demo::ping(&wnode1.netns, wnode2.underlay_ip, 3).context("the underlay does not work")?;

    eprintln!(
        "[{}] building the hand-built kernel VXLAN anchor",
        opts.name
    );
    let hand = HandBuilt::build(&xlab).context("building the hand-built anchor")?;
    let dir = wlab.state_dir().join("wg-anchors");
    let specs = [
        wg_anchor::Spec {
            label: BORINGTUN.into(),
            tag: BT_TAG,
            program: boringtun.clone(),
            args: vec!["--foreground".into(), "--disable-drop-privileges".into()],
            port: 51902,
            octet: 252,
        },
        wg_anchor::Spec {
            label: BORINGTUN_1.into(),
            tag: BT1_TAG,
            program: boringtun.clone(),
            args: vec![
                "--foreground".into(),
                "--disable-drop-privileges".into(),
                "--threads".into(),
                "1".into(),
            ],
            port: 51903,
            octet: 253,
        },
        wg_anchor::Spec {
            label: wggo_debian_label.clone(),
            tag: WGGO_DEBIAN_TAG,
            program: wggo_debian.clone(),
            args: vec!["-f".into()],
            port: 51901,
            octet: 251,
        },
        wg_anchor::Spec {
            label: wggo_label.clone(),
            tag: WGGO_TAG,
            program: wggo.clone(),
            args: vec!["-f".into()],
            port: 51904,
            octet: 250,
        },
    ];
    let mut userspace = Vec::new();
    for spec in &specs {
        eprintln!(
            "[{}] starting {} (udp {}, 10.{}.k.1/24)",
            opts.name, spec.label, spec.port, spec.octet
        );
        userspace.push(
            Userspace::build(&wlab, spec, &dir)
                .with_context(|| format!("building the {} anchor", spec.label))?,
        );
    }

    let fixed = |label: &str| (label.to_string(), color(label));
    let (raw, kernel, fvxlan, fwg) = (
        fixed(RAW),
        fixed(KERNEL_VXLAN),
        fixed(FABRIC_VXLAN),
        fixed(FABRIC_WG),
    );
    let mut paths = vec![
        Path {
            label: raw.0,
            color: raw.1,
            client: wnode1.netns.clone(),
            server: wnode2.netns.clone(),
            server_ip: wnode2.underlay_ip,
            server_node: wnode2.netns.clone(),
        },
        Path {
            label: kernel.0,
            color: kernel.1,
            client: hand.client_netns().to_string(),
            server: hand.server_netns().to_string(),
            server_ip: hand.server_ip(),
            server_node: xnode2.clone(),
        },
        Path {
            label: fvxlan.0,
            color: fvxlan.1,
            client: xsrc.netns.clone(),
            server: xdst.netns.clone(),
            server_ip: xdst.ip,
            server_node: xnode2.clone(),
        },
        Path {
            label: fwg.0,
            color: fwg.1,
            client: wsrc.netns.clone(),
            server: wdst.netns.clone(),
            server_ip: wdst.ip,
            server_node: wnode2.netns.clone(),
        },
    ];
    paths.extend(userspace.iter().zip(&specs).map(|(u, spec)| Path {
        label: u.label().to_string(),
        color: color(spec.tag),
        client: u.client_netns().to_string(),
        server: u.server_netns().to_string(),
        server_ip: u.server_ip(),
        server_node: u.server_netns().to_string(),
    }));

    let server_log = wlab.state_dir().join("iperf3-server.log");
    let measured = crate::interleave::run(
        opts.reps,
        &STREAMS,
        &paths,
        |p| &p.label,
        opts.seconds,
        |path, streams| measure(path, streams, opts.seconds, &server_log),
        |rep, streams, label, sample: &Sample| {
            eprintln!(
                "[{}] rep {rep}/{} P{streams} {label:<26} {:6.2} Gbit/s, {:5} retr, CPU busy {:3.0}%, {:.3} CPU-s/Gbit, {} UDP rcvbuf drops / {} delivered",
                opts.name,
                opts.reps,
                sample.run.gbps,
                sample.run.retransmits,
                sample.cpu_busy * 100.0,
                sample.cpu_seconds / sample.gbit,
                sample.udp_rcvbuf_errors,
                sample.udp_in,
            );
        },
    )?;
    let retried = measured.retried;
    let series: Vec<PathSeries> = STREAMS
        .iter()
        .flat_map(|&streams| paths.iter().map(move |p| (streams, p)))
        .zip(measured.samples)
        .map(|((streams, p), samples)| PathSeries {
            path: p.label.clone(),
            streams,
            samples,
        })
        .collect();
    let dead: Vec<String> = userspace
        .iter()
        .filter(|u| !u.running())
        .map(|u| u.label().to_string())
        .collect();
    let after = snapshot();
    let rmem = rmem_note(&wnode2.netns);
    let mtu = pod_mtu(&wdst.netns);
    let devices: Vec<String> = userspace
        .iter()
        .map(|u| {
            let devs: Vec<&str> = u.devices().iter().map(|(_, d)| d.as_str()).collect();
            format!("{} `{}`", u.label(), devs.join("`/`"))
        })
        .collect();
    drop(userspace);
    drop(hand);
    wlab.down().context("tearing the wireguard lab down")?;
    xlab.down().context("tearing the vxlan lab down")?;

    let base = Baselines {
        raw: RAW.into(),
        kernel_vxlan: KERNEL_VXLAN.into(),
        boringtun: vec![BORINGTUN.into(), BORINGTUN_1.into()],
        wireguard_go_debian: wggo_debian_label.clone(),
        wireguard_go: wggo_label.clone(),
    };
    let targets = targets(&base);

    let date = crate::today();
    let mut body = String::new();
    writeln!(
        body,
        "Two labs up at once, 2 nodes and 1 pod each, underlay veths (MTU 1500) through each \
         lab's switch bridge: `{xname}` (vxlan backend) and `{wname}` (wireguard backend). \
         iperf3 TCP, {} interleaved repetition(s) of {} s per row; each repetition runs every \
         path at P1, then every path at P4, in the table's order. Paths: **raw underlay veth** \
         = node1's `eth0` to node2's (172.30.0.11 → 172.30.0.12) in `{wname}`, the limit; \
         **hand-built kernel VXLAN** = the kernel VXLAN path built by hand in `{xname}`'s node \
         namespaces (pod to pod, MTU 1450, as in the throughput benchmark); **fabric vxlan** / \
         **fabric wireguard** = pod to pod on fabric (wireguard pod MTU {mtu}); \
         **boringtun-cli** (default threads, i.e. 4), **boringtun-cli --threads 1**, \
         **{wggo_debian_label}** (Debian's package: before wireguard-go's offload work) and \
         **{wggo_label}** (the current release, with TUN TSO/GRO and UDP GSO/GRO) = userspace \
         WireGuard started in the foreground inside `{wname}`'s two node namespaces and \
         configured with `wg` (UDP {}; 10.{}.K.1/24; MTU {}), iperf3 **node namespace to node \
         namespace** over the tunnel addresses (no pod veth hop, unlike fabric's rows). \
         Versions: {versions}. Devices: {}.\n",
        opts.reps,
        opts.seconds,
        specs
            .iter()
            .map(|s| s.port.to_string())
            .collect::<Vec<_>>()
            .join(" / "),
        specs
            .iter()
            .map(|s| s.octet.to_string())
            .collect::<Vec<_>>()
            .join("/"),
        wg_anchor::MTU,
        devices.join(", "),
    )?;
    writeln!(
        body,
        "Gbit/s is the receiver's. CPU is machine-wide, from `/proc/stat` over each run's \
         window (iperf3 server start to client exit): busy = user + nice + system + irq + \
         softirq jiffies, shown as % of all {} CPUs and as CPU-seconds per Gbit received \
         (= CPUs busy per Gbit/s); it includes both ends, the tunnel daemons, softirq work and \
         anything else running on the machine. UDP rcvbuf drops are `Udp: RcvbufErrors` from \
         `/proc/net/snmp` in the server node's namespace, before/after each run (median per \
         run, and ÷ delivered + dropped datagrams over all runs; with UDP GRO a coalesced \
         batch counts once). {rmem} {}\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        before.describe(&after),
    )?;
    body.push_str(&report::wireguard_table(&series, &base));
    writeln!(
        body,
        "\nTargets (fabric wireguard, same run): ≥ {BORINGTUN_TARGET}× the better \
         boringtun-cli, ≥ {DEBIAN_WIREGUARD_GO_TARGET}× {wggo_debian_label}, ≥ \
         {WIREGUARD_GO_TARGET}× {wggo_label} and CPU-seconds per Gbit ≤ \
         {WIREGUARD_GO_CPU_TARGET}× its, ≥ {KERNEL_TARGET}× hand-built kernel VXLAN.\n"
    )?;
    body.push_str(&report::target_verdicts(
        &series, FABRIC_WG, &STREAMS, &targets,
    ));
    if let Some((file, reference)) = &opts.chart {
        let png = chart::render_png(&chart_of(&series, &paths, &date, opts));
        std::fs::write(file, png).with_context(|| format!("writing {}", file.display()))?;
        eprintln!("chart written to {}", file.display());
        writeln!(
            body,
            "\n![Median Gbit/s per path, P1 and P4]({reference})\n\n`{reference}`: median \
             Gbit/s per path (bars left to right in the table's order), P1 and P4; rewritten \
             by every run, so it shows the newest section."
        )?;
    }
    if !dead.is_empty() {
        writeln!(
            body,
            "\nWarning: these anchors' daemons had exited by the end of the run: {}.",
            dead.join(", ")
        )?;
    }
    if !retried.is_empty() {
        writeln!(
            body,
            "\nRetried iperf3 attempts (unusable report, not counted; their time is inside \
             that run's CPU window): {}",
            retried.join("; ")
        )?;
    }
    Ok(Section {
        title: "WireGuard throughput: fabric vs userspace WireGuard and kernel paths".into(),
        date,
        command: format!(
            "fabric-bench wireguard --reps {} --seconds {} --name {}",
            opts.reps, opts.seconds, opts.name
        ),
        machine: crate::machine(),
        body,
    })
}

/// fabric wireguard's targets against `base`.
fn targets(base: &Baselines) -> Vec<Target> {
    let target = |name: &str, baseline: &[String], ratio, metric| Target {
        name: name.into(),
        baseline: baseline.to_vec(),
        ratio,
        stretch: false,
        metric,
    };
    let current = std::slice::from_ref(&base.wireguard_go);
    vec![
        target(
            "best boringtun-cli",
            &base.boringtun,
            BORINGTUN_TARGET,
            Metric::Gbps,
        ),
        target(
            &base.wireguard_go_debian,
            std::slice::from_ref(&base.wireguard_go_debian),
            DEBIAN_WIREGUARD_GO_TARGET,
            Metric::Gbps,
        ),
        target(
            &base.wireguard_go,
            current,
            WIREGUARD_GO_TARGET,
            Metric::Gbps,
        ),
        target(
            &base.wireguard_go,
            current,
            WIREGUARD_GO_CPU_TARGET,
            Metric::CpuPerGbit,
        ),
        target(
            "hand-built kernel VXLAN",
            std::slice::from_ref(&base.kernel_vxlan),
            KERNEL_TARGET,
            Metric::Gbps,
        ),
    ]
}

/// The chart: median Gbit/s per path, grouped by stream count.
fn chart_of(series: &[PathSeries], paths: &[Path], date: &str, opts: &Options) -> Chart {
    Chart {
        title: format!(
            "iperf3 TCP median, {} x {} s, 2 lab nodes, {date}",
            opts.reps, opts.seconds
        ),
        unit: "Gbit/s".into(),
        groups: STREAMS.iter().map(|p| format!("P{p}")).collect(),
        series: paths
            .iter()
            .map(|p| BarSeries {
                label: p.label.clone(),
                color: p.color,
                values: STREAMS
                    .iter()
                    .map(|&s| report::path_median(series, &p.label, s).unwrap_or(f64::NAN))
                    .collect(),
            })
            .collect(),
    }
}

/// One measured run with the machine's CPU and the server node's UDP counters around it;
/// also the failed attempts.
fn measure(
    path: &Path,
    streams: u32,
    seconds: u32,
    log: &std::path::Path,
) -> Result<(Sample, Vec<String>)> {
    let udp0 = udp_counters(&path.server_node)?;
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
    let udp1 = udp_counters(&path.server_node)?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let busy = cpu1.0.saturating_sub(cpu0.0) as f64;
    let total = cpu1.1.saturating_sub(cpu0.1).max(1) as f64;
    let cpu_busy = busy / total;
    Ok((
        Sample {
            run: crate::iperf::to_run(&summary),
            gbit: crate::iperf::received_gbit(&summary),
            cpu_seconds: cpu_busy * cpus * wall,
            cpu_busy,
            udp_in: udp1.0.saturating_sub(udp0.0),
            udp_rcvbuf_errors: udp1.1.saturating_sub(udp0.1),
        },
        failures,
    ))
}

/// The machine's busy and total jiffies.
fn cpu_jiffies() -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    report::cpu_jiffies(&stat).context("no cpu line in /proc/stat")
}

/// `Udp: InDatagrams` and `RcvbufErrors` inside `netns`.
fn udp_counters(netns: &str) -> Result<(u64, u64)> {
    let snmp = Cmd::in_netns(netns, "cat")
        .arg("/proc/net/snmp")
        .run()
        .with_context(|| format!("reading /proc/net/snmp in {netns}"))?;
    report::udp_counters(&snmp).with_context(|| format!("no Udp counters in {netns}"))
}

/// The receive buffer sysctls as the server node sees them.
fn rmem_note(netns: &str) -> String {
    let read = |key: &str| {
        Cmd::in_netns(netns, "cat")
            .arg(format!("/proc/sys/net/core/{key}"))
            .run()
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|_| "?".into())
    };
    format!(
        "Socket receive buffers (untouched by the benchmark): net.core.rmem_default = {}, \
         rmem_max = {}.",
        read("rmem_default"),
        read("rmem_max")
    )
}

/// The MTU of `eth0` in a pod namespace, as text.
pub(crate) fn pod_mtu(netns: &str) -> String {
    Cmd::ip(["-n", netns, "-j", "link", "show", "eth0"])
        .run()
        .ok()
        .and_then(|out| serde_json::from_str::<serde_json::Value>(&out).ok())
        .and_then(|v| v[0]["mtu"].as_u64())
        .map_or_else(|| "unknown".into(), |m| m.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_has_its_own_colour() {
        let labels = [
            RAW,
            KERNEL_VXLAN,
            FABRIC_VXLAN,
            FABRIC_WG,
            BT_TAG,
            BT1_TAG,
            WGGO_DEBIAN_TAG,
            WGGO_TAG,
        ];
        let mut colours: Vec<[u8; 3]> = labels.iter().map(|l| color(l)).collect();
        assert!(!colours.contains(&[0, 0, 0]));
        colours.sort();
        colours.dedup();
        assert_eq!(colours.len(), labels.len());
    }

    #[test]
    fn wireguard_go_rows_are_labelled_with_their_versions() {
        let (old, new) = ("wireguard-go v0.0.20220316", "wireguard-go v0.0.20250522");
        assert_eq!(
            wireguard_go_labels(old, new),
            (old.to_string(), new.to_string())
        );
        assert_eq!(
            wireguard_go_labels(new, new),
            (format!("{new} (Debian)"), new.to_string())
        );
        assert_eq!(
            wireguard_go_labels("unknown version", new).0,
            "wireguard-go (Debian)"
        );
        // Both fit the chart's legend (29 characters at its scale).
        assert!(old.len() <= 29 && new.len() <= 29);
    }

    #[test]
    fn targets_are_the_issues() {
        let base = Baselines {
            raw: RAW.into(),
            kernel_vxlan: KERNEL_VXLAN.into(),
            boringtun: vec![BORINGTUN.into(), BORINGTUN_1.into()],
            wireguard_go_debian: "wireguard-go v0.0.20220316".into(),
            wireguard_go: "wireguard-go v0.0.20250522".into(),
        };
        let t = targets(&base);
        let current: Vec<_> = t
            .iter()
            .filter(|t| t.baseline == [base.wireguard_go.clone()])
            .map(|t| (t.metric, t.ratio))
            .collect();
        assert_eq!(current, [(Metric::Gbps, 2.0), (Metric::CpuPerGbit, 0.5)]);
        assert!(t
            .iter()
            .any(|t| t.baseline == [KERNEL_VXLAN.to_string()] && t.ratio == 0.4 && !t.stretch));
    }
}
