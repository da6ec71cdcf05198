//! `fabric-bench wg-flood`: what a handshake flood costs fabric's wireguard tunnel. On one
//! 2-node wireguard lab, iperf3 TCP from the pod on node1 to the pod on node2, quiet and while
//! `fabric-lab wg-flood` sends junk handshake initiations with a valid mac1 (unknown static
//! keys, the victim's public key read from its lease) at node2's WireGuard port from node1's
//! underlay namespace. Each repetition runs, for P1 then P4, quiet then flooded; the figure is
//! the ratio of the medians. Besides iperf3's figures, each run records what the flood sent,
//! how many handshake messages node2 answered with a cookie reply (its `under_load` counter)
//! and how many it dropped unanswered, their sender past its share of cookie replies (its
//! `unanswered` counter). Every flood is bounded (rate and `-t` + 2 s) and ended on error.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use fabric_lab::flood::FloodReport;
use fabric_lab::process::Cmd;
use fabric_lab::{demo, Backend, Lab, LabSpec};

use crate::enforcement::StopOnDrop;
use crate::report::{markdown_table, median, Run, Section};

/// Flooded throughput ≥ this × quiet throughput (medians).
pub const TARGET: f64 = 0.8;

/// iperf3 attempts per measured run (an attempt whose report is unusable is retried).
const ATTEMPTS: usize = 3;

/// Stream counts, in the order each repetition runs them.
const STREAMS: [u32; 2] = [1, 4];

/// The flood starts this long before iperf3 and outlasts it by as much.
const LEAD: Duration = Duration::from_secs(1);

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Lab name.
    pub name: String,
    /// Interleaved repetitions.
    pub reps: usize,
    /// Seconds per iperf3 run.
    pub seconds: u32,
    /// Junk initiations per second.
    pub rate: u64,
}

/// With or without the flood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Condition {
    Quiet,
    Flood,
}

impl Condition {
    const ALL: [Condition; 2] = [Condition::Quiet, Condition::Flood];

    fn label(&self) -> &'static str {
        match self {
            Condition::Quiet => "quiet",
            Condition::Flood => "junk initiations",
        }
    }
}

/// One measured run.
#[derive(Debug, Clone)]
struct Sample {
    run: Run,
    /// What the flood reported (flooded runs).
    flood: Option<FloodReport>,
    /// Handshake messages node2 answered with a cookie reply during the run.
    cookies: u64,
    /// Handshake messages node2 dropped unanswered during the run.
    unanswered: u64,
}

/// Where things are in the lab.
struct Setup {
    client: String,
    server: String,
    server_ip: Ipv4Addr,
    /// node1's namespace, where the flood runs from.
    attacker: String,
    /// node2's namespace and its fabricd socket, whose counters are read.
    victim: (String, PathBuf),
    target: String,
    public_key: String,
    bin_dir: PathBuf,
    state_dir: PathBuf,
}

/// Runs the benchmark and returns its RESULTS.md section.
pub fn run(opts: &Options) -> Result<Section> {
    ensure!(opts.reps >= 1, "--reps must be at least 1");
    ensure!(opts.seconds >= 1, "--seconds must be at least 1");
    ensure!(
        (1..=fabric_lab::flood::MAX_RATE).contains(&opts.rate),
        "--rate must be in 1..={}",
        fabric_lab::flood::MAX_RATE
    );
    let before = crate::Snapshot::take(&opts.name);

    let mut spec = LabSpec::new(&opts.name);
    spec.nodes = 2;
    spec.pods_per_node = 1;
    spec.backend = Backend::Wireguard;
    spec.demo = false;
    let lab = Lab::up(spec).context("bringing up the 2-node wireguard lab")?;
    let setup = setup(&lab)?;
    // The first handshake may still be under way.
    (0..5)
        .find_map(|_| demo::ping(&setup.client, setup.server_ip, 3).ok())
        .context("fabric's pod-to-pod path does not work")?;

    let server_log = lab.state_dir().join("iperf3-server.log");
    let measured = crate::interleave::run(
        opts.reps,
        &STREAMS,
        &Condition::ALL,
        |c| c.label(),
        opts.seconds,
        |&condition, streams| measure(&setup, condition, streams, opts, &server_log),
        |rep, streams, label, s: &Sample| {
            let flood = s.flood.map_or_else(String::new, |f| {
                format!(
                    ", flood {:.0}/s, {} cookie replies, {} unanswered",
                    f.rate, s.cookies, s.unanswered
                )
            });
            eprintln!(
                "[{}] rep {rep}/{} P{streams} {label:<16} {:6.2} Gbit/s, {:5} retr{flood}",
                opts.name, opts.reps, s.run.gbps, s.run.retransmits,
            );
        },
    )?;
    let after = crate::Snapshot::take(&opts.name);
    lab.down().context("tearing the lab down")?;

    // samples[i * 2 + j]: stream count i, condition j.
    let series = |i: usize, c: Condition| &measured.samples[i * Condition::ALL.len() + c as usize];
    let gbps = |samples: &[Sample]| samples.iter().map(|s| s.run.gbps).collect::<Vec<_>>();
    let mut rows = Vec::new();
    let mut ratios = Vec::new();
    for (i, streams) in STREAMS.iter().enumerate() {
        let quiet = median(&gbps(series(i, Condition::Quiet)));
        for c in Condition::ALL {
            let samples = series(i, c);
            let m = median(&gbps(samples));
            let floods: Vec<f64> = samples
                .iter()
                .filter_map(|s| s.flood.map(|f| f.rate))
                .collect();
            let window = f64::from(opts.seconds) + 2.0 * LEAD.as_secs_f64();
            let per_second = |s: &Sample| s.cookies as f64 / window;
            let unanswered = |s: &Sample| s.unanswered as f64 / window;
            rows.push(vec![
                format!("P{streams}"),
                c.label().to_string(),
                format!("{m:.2}"),
                samples
                    .iter()
                    .map(|s| format!("{:.2}", s.run.gbps))
                    .collect::<Vec<_>>()
                    .join(", "),
                format!(
                    "{:.0}",
                    median(
                        &samples
                            .iter()
                            .map(|s| s.run.retransmits as f64)
                            .collect::<Vec<_>>()
                    )
                ),
                format!("{:.3}", m / quiet),
                if floods.is_empty() {
                    "-".into()
                } else {
                    format!("{:.0}", median(&floods))
                },
                if floods.is_empty() {
                    "-".into()
                } else {
                    format!(
                        "{:.0}",
                        median(&samples.iter().map(per_second).collect::<Vec<_>>())
                    )
                },
                if floods.is_empty() {
                    "-".into()
                } else {
                    format!(
                        "{:.0}",
                        median(&samples.iter().map(unanswered).collect::<Vec<_>>())
                    )
                },
            ]);
        }
        let flooded = median(&gbps(series(i, Condition::Flood)));
        let per_rep: Vec<String> = series(i, Condition::Quiet)
            .iter()
            .zip(series(i, Condition::Flood))
            .map(|(q, f)| format!("{:.3}", f.run.gbps / q.run.gbps))
            .collect();
        ratios.push((*streams, flooded / quiet, per_rep));
    }

    let mut body = String::new();
    writeln!(
        body,
        "One lab, 2 nodes (wireguard backend, underlay veths through the lab's switch bridge), \
         one pod each; iperf3 TCP from the pod on node1 to the pod on node2, {} interleaved \
         repetition(s) of {} s per row (each: P1 quiet, P1 flooded, P4 quiet, P4 flooded). \
         Flooded: `fabric-lab wg-flood --rate {}` in node1's namespace at node2's WireGuard \
         port ({}), from {} s before iperf3 to {} s after: 256 distinct handshake initiations \
         built by boringtun toward node2's published public key from random private keys \
         (valid mac1, unknown initiators), replayed round-robin from one UDP socket. \"flood /s\" \
         is what the flood reported sending; \"cookie replies /s\" is node2's `under_load` \
         counter over the flood's window (handshake messages answered with a cookie instead \
         of a key exchange); \"unanswered /s\" is its `unanswered` counter (refused the same \
         way, but their sender had drawn its share of cookie replies: dropped without a \
         reply, those without a mac2 before any MAC). Gbit/s is the receiver's. The flood, both fabricd, both iperf3 \
         ends and the veths share the machine's CPUs. {}\n",
        opts.reps,
        opts.seconds,
        opts.rate,
        setup.target,
        LEAD.as_secs(),
        LEAD.as_secs(),
        before.describe(&after),
    )?;
    body.push_str(&markdown_table(
        &[
            "streams",
            "condition",
            "Gbit/s (median)",
            "runs",
            "retr (median)",
            "÷ quiet",
            "flood /s",
            "cookie replies /s",
            "unanswered /s",
        ],
        &rows,
    ));
    writeln!(body, "\nTarget: flooded ≥ {TARGET}× quiet (medians).\n")?;
    for (streams, ratio, per_rep) in &ratios {
        let verdict = if *ratio >= TARGET { "met" } else { "NOT met" };
        writeln!(
            body,
            "- P{streams}: flooded ÷ quiet = {ratio:.3}× (per repetition: {}); target {verdict}",
            per_rep.join(", ")
        )?;
    }
    if !measured.retried.is_empty() {
        writeln!(
            body,
            "- Retried iperf3 attempts (unusable report, not counted; a retry may outlast the \
             flood): {}",
            measured.retried.join("; ")
        )?;
    }
    Ok(Section {
        title:
            "WireGuard under a handshake flood: pod-to-pod throughput with 30k/s junk initiations"
                .into(),
        date: crate::today(),
        command: format!(
            "fabric-bench wg-flood --reps {} --seconds {} --rate {} --name {}",
            opts.reps, opts.seconds, opts.rate, opts.name
        ),
        machine: crate::machine(),
        body,
    })
}

fn setup(lab: &Lab) -> Result<Setup> {
    let pod = |node: &str| {
        lab.pods_on(node)
            .next()
            .cloned()
            .with_context(|| format!("no pod on {node}"))
    };
    let (src, dst) = (pod("node1")?, pod("node2")?);
    let victim = lab.node("node2")?;
    let leases = lab.leases()?;
    let public_key = leases
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["node"] == "node2")
        .and_then(|l| l["backend_data"]["public_key"].as_str())
        .context("node2's lease carries no WireGuard public key")?
        .to_string();
    let port = leases
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["node"] == "node2")
        .and_then(|l| l["backend_data"]["port"].as_u64())
        .unwrap_or(51820);
    Ok(Setup {
        client: src.netns,
        server: dst.netns,
        server_ip: dst.ip,
        attacker: lab.node("node1")?.netns.clone(),
        victim: (victim.netns.clone(), victim.socket.clone()),
        target: format!("{}:{port}", victim.underlay_ip),
        public_key,
        bin_dir: lab.state().bin_dir.clone(),
        state_dir: lab.state_dir().to_path_buf(),
    })
}

/// One run under `condition`, with node2's cookie counter around it.
fn measure(
    setup: &Setup,
    condition: Condition,
    streams: u32,
    opts: &Options,
    server_log: &Path,
) -> Result<(Sample, Vec<String>)> {
    let (cookies0, unanswered0) = refused(setup)?;
    let log = setup.state_dir.join("wg-flood.log");
    let flood = match condition {
        Condition::Quiet => None,
        Condition::Flood => {
            let _ = std::fs::remove_file(&log);
            let seconds = u64::from(opts.seconds) + 2 * LEAD.as_secs();
            let daemon = Cmd::in_netns(&setup.attacker, setup.bin_dir.join("fabric-lab"))
                .args(["wg-flood", "--target", &setup.target])
                .args(["--public-key", &setup.public_key])
                .args(["--rate", &opts.rate.to_string()])
                .args(["--seconds", &seconds.to_string()])
                .spawn_daemon(&log)
                .context("starting fabric-lab wg-flood")?;
            std::thread::sleep(LEAD);
            Some(StopOnDrop(daemon))
        }
    };
    let (summary, failures) = crate::iperf::run_with_retries(
        ATTEMPTS,
        &setup.server,
        setup.server_ip,
        &setup.client,
        streams,
        opts.seconds,
        server_log,
    )?;
    let flood = match flood {
        None => None,
        Some(daemon) => {
            ensure!(
                daemon
                    .0
                    .wait_exit(Duration::from_secs(u64::from(opts.seconds) + 30)),
                "wg-flood (pid {}) did not stop by itself",
                daemon.0.pid
            );
            Some(flood_report(&log)?)
        }
    };
    let (cookies, unanswered) = refused(setup)?;
    Ok((
        Sample {
            run: crate::iperf::to_run(&summary),
            flood,
            cookies: cookies.saturating_sub(cookies0),
            unanswered: unanswered.saturating_sub(unanswered0),
        },
        failures,
    ))
}

/// The JSON line `wg-flood` printed last.
fn flood_report(log: &Path) -> Result<FloodReport> {
    let text =
        std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("wg-flood printed no report: {}", text.trim()))?;
    serde_json::from_str(line).with_context(|| format!("wg-flood's report: {line}"))
}

/// node2's `under_load` and `unanswered` counters (`fabricctl peers -o json`).
fn refused(setup: &Setup) -> Result<(u64, u64)> {
    let (netns, socket) = &setup.victim;
    let out = Cmd::in_netns(netns, setup.bin_dir.join("fabricctl"))
        .args(["peers", "--socket"])
        .arg(socket)
        .args(["-o", "json"])
        .timeout(Duration::from_secs(10))
        .run()
        .context("fabricctl peers on node2")?;
    let report: serde_json::Value =
        serde_json::from_str(&out).context("fabricctl peers -o json")?;
    let count = |k: &str| report["dropped"][k].as_u64().unwrap_or(0);
    Ok((count("under_load"), count("unanswered")))
}
