//! `fabric-bench throughput`: pod-to-pod TCP throughput across two lab nodes on fabric's vxlan
//! backend, measured beside the hand-built anchor ([`crate::anchor`]) in the same two node
//! namespaces. Each repetition runs fabric P1, anchor P1, fabric P4, anchor P4 (iperf3 `-P`),
//! every run bounded by `-t`, from the pod on node1 to the pod on node2.

use std::fmt::Write as _;

use anyhow::{ensure, Context, Result};
use fabric_lab::demo;
use fabric_lab::{Backend, Lab, LabSpec};

use crate::anchor::{self, HandBuilt};
use crate::report::{self, Run, Section, Series};

/// fabric must reach this fraction of the hand-built path's median.
pub const TARGET: f64 = 0.97;

/// iperf3 attempts per measured run (an attempt whose report is unusable is retried).
const ATTEMPTS: usize = 3;

/// Stream counts, in the order each repetition runs them.
const STREAMS: [u32; 2] = [1, 4];

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Lab name.
    pub name: String,
    /// Interleaved repetitions.
    pub reps: usize,
    /// Seconds per iperf3 run.
    pub seconds: u32,
}

/// One side of the comparison.
struct Path {
    label: &'static str,
    anchor: bool,
    client: String,
    server: String,
    server_ip: std::net::Ipv4Addr,
}

/// Runs the benchmark and returns its RESULTS.md section.
pub fn run(opts: &Options) -> Result<Section> {
    ensure!(opts.reps >= 1, "--reps must be at least 1");
    ensure!(opts.seconds >= 1, "--seconds must be at least 1");
    let before = crate::Snapshot::take(&opts.name);

    let mut spec = LabSpec::new(&opts.name);
    spec.nodes = 2;
    spec.pods_per_node = 1;
    spec.backend = Backend::Vxlan;
    spec.demo = false;
    let lab = Lab::up(spec).context("bringing up the 2-node vxlan lab")?;

    let src = lab
        .pods_on("node1")
        .next()
        .cloned()
        .context("no pod on node1")?;
    let dst = lab
        .pods_on("node2")
        .next()
        .cloned()
        .context("no pod on node2")?;
    demo::ping(&src.netns, dst.ip, 3).context("fabric's pod-to-pod path does not work")?;
    let notes = mtu_notes(&lab, &src.netns);

    eprintln!("[{}] building the hand-built anchor", opts.name);
    let hand = HandBuilt::build(&lab).context("building the hand-built anchor")?;

    let paths = [
        Path {
            label: "fabric vxlan",
            anchor: false,
            client: src.netns.clone(),
            server: dst.netns.clone(),
            server_ip: dst.ip,
        },
        Path {
            label: "hand-built kernel VXLAN",
            anchor: true,
            client: hand.client_netns().to_string(),
            server: hand.server_netns().to_string(),
            server_ip: hand.server_ip(),
        },
    ];
    let server_log = lab.state_dir().join("iperf3-server.log");
    let measured = crate::interleave::run(
        opts.reps,
        &STREAMS,
        &paths,
        |p| p.label,
        opts.seconds,
        |path, streams| iperf(path, streams, opts.seconds, &server_log),
        |rep, streams, label, run: &Run| {
            eprintln!(
                "[{}] rep {rep}/{} P{streams} {label:<24} {:6.2} Gbit/s, {} retransmits, CPU sender {:.0}% receiver {:.0}%",
                opts.name, opts.reps, run.gbps, run.retransmits, run.sender_cpu, run.receiver_cpu
            );
        },
    )?;
    let retried = measured.retried;
    let series: Vec<Series> = STREAMS
        .iter()
        .flat_map(|&streams| paths.iter().map(move |p| (streams, p)))
        .zip(measured.samples)
        .map(|((streams, p), runs)| Series {
            path: p.label.to_string(),
            anchor: p.anchor,
            streams,
            runs,
        })
        .collect();
    let after = crate::Snapshot::take(&opts.name);
    drop(hand);
    lab.down().context("tearing the lab down")?;

    let mut body = String::new();
    writeln!(
        body,
        "Two lab nodes (vxlan backend, underlay veths through the lab's switch bridge), one pod \
         each; iperf3 TCP from the pod on node1 to the pod on node2, {} interleaved \
         repetition(s) of {} s per row (fabric P1, hand-built P1, fabric P4, hand-built P4). The \
         hand-built path is kernel VXLAN `{}` (VNI {}, port {}, MTU {}) with routed-veth pods in \
         the same two node namespaces. Gbit/s is the receiver's; CPU is iperf3's own process \
         CPU (% of one core; excludes softirq work done outside it). {}\n",
        opts.reps,
        opts.seconds,
        anchor::DEVICE,
        anchor::VNI,
        anchor::PORT,
        anchor::MTU,
        before.describe(&after),
    )?;
    body.push_str(&report::throughput_table(&series));
    writeln!(body, "\nTarget: fabric ≥ {TARGET}× the hand-built path.\n")?;
    body.push_str(&report::verdicts(&series, TARGET));
    if !notes.is_empty() {
        writeln!(body, "\nNotes: {notes}")?;
    }
    if !retried.is_empty() {
        writeln!(
            body,
            "\nRetried iperf3 attempts (unusable report, not counted): {}",
            retried.join("; ")
        )?;
    }
    Ok(Section {
        title: "Pod-to-pod throughput, vxlan vs hand-built".into(),
        date: crate::today(),
        command: format!(
            "fabric-bench throughput --reps {} --seconds {} --name {}",
            opts.reps, opts.seconds, opts.name
        ),
        machine: crate::machine(),
        body,
    })
}

/// One measured run (retried if iperf3's report is unusable); also the failed attempts.
fn iperf(
    path: &Path,
    streams: u32,
    seconds: u32,
    log: &std::path::Path,
) -> Result<(Run, Vec<String>)> {
    let (r, failures) = crate::iperf::run_with_retries(
        ATTEMPTS,
        &path.server,
        path.server_ip,
        &path.client,
        streams,
        seconds,
        log,
    )?;
    Ok((crate::iperf::to_run(&r), failures))
}

/// Flags MTUs on fabric's side that differ from the anchor's (they would skew the comparison).
fn mtu_notes(lab: &Lab, pod_netns: &str) -> String {
    let mtu = |netns: &str, dev: &str| -> Option<u64> {
        let out = fabric_lab::process::Cmd::ip(["-n", netns, "-j", "link", "show", dev])
            .run()
            .ok()?;
        serde_json::from_str::<serde_json::Value>(&out).ok()?[0]["mtu"].as_u64()
    };
    let mut notes = Vec::new();
    let node = &lab.nodes()[0].netns;
    for (what, netns, dev) in [
        ("fabric.1", node.as_str(), "fabric.1"),
        ("pod eth0", pod_netns, "eth0"),
    ] {
        match mtu(netns, dev) {
            Some(m) if m == u64::from(anchor::MTU) => {}
            Some(m) => notes.push(format!(
                "fabric's {what} has MTU {m}, the anchor {}",
                anchor::MTU
            )),
            None => notes.push(format!("could not read the MTU of fabric's {what}")),
        }
    }
    notes.join("; ")
}
