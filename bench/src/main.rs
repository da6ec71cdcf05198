//! `fabric-bench`: fabric's benchmarks on a `fabric-lab` cluster (network namespaces on this
//! machine; run as root after `cargo build --release --workspace --bins`). Each prints its
//! table and appends a dated section to `bench/RESULTS.md`.
//!
//! - `throughput`: iperf3 pod-to-pod across two nodes, fabric's vxlan backend vs the same data
//!   path built by hand with `ip` in the same node namespaces ([`anchor`]), interleaved
//!   repetitions, 1 and 4 streams ([`throughput`]).
//! - `cni`: CNI ADD / CHECK / DEL latency percentiles over N pods ([`cni`]).
//! - `control`: the control plane in etcd mode beside Kubernetes mode: policy change to
//!   enforced, node join to converged, fabricd RSS ([`control`]).
//! - `policy`: NetworkPolicy enforcement's cost, iperf3 and new connections/s with enforcement
//!   off, on with no policies and on with 1,000 policies ([`enforcement`]).
//! - `wireguard`: fabric's wireguard backend beside the raw underlay, kernel VXLAN (hand-built
//!   and fabric's) and userspace WireGuard (boringtun-cli, Debian's old wireguard-go and the
//!   current release built by `bench/anchors/build.sh`) in one interleaved run on two labs,
//!   with a PNG bar chart ([`wireguard`], [`wg_anchor`], [`upstream`], [`chart`]).
//! - `kube-network-policies`: fabric's NetworkPolicy enforcement beside kube-network-policies
//!   (built by `bench/anchors/build.sh`) on a Kubernetes-mode lab: new connections/s to an
//!   isolated server, iperf3, policy change to enforced ([`knp`]).
//! - `services`: on one 3-node Kubernetes-mode lab with kube-proxy and CoreDNS, iperf3 and new
//!   connections/s to a pod's IP vs to its Service's ClusterIP, interleaved, and DNS lookup
//!   latency from a pod to the cluster DNS ([`services`]).
//! - `soak`: a churn soak (pods, policies, a fabricd restart) on a 3-node lab: fabricd RSS
//!   and descriptors per process, and a leak audit at the end ([`soak`], `fabric_lab::soak`).
//! - `wg-flood`: fabric wireguard pod-to-pod iperf3, quiet vs while `fabric-lab wg-flood`
//!   sends 30k/s junk handshake initiations at the receiving node ([`wg_flood`]).
//! - `flannel`: fabric beside the real Flannel (flanneld, its delegate chain bridge +
//!   host-local) on the same topology, interleaved: throughput on vxlan and host-gw, CNI ADD/DEL
//!   latency, node join, daemon RSS, with two PNG bar charts ([`flannel`]).
//!
//! `-o json` prints the section's figures as one JSON document instead of the markdown
//! ([`report::section_json`]: every table's rows keyed by its headers, numbers as numbers, the
//! verdicts), for scripts; the markdown is still appended to the results file.
//!
//! Every lab namespace starts with the lab's name; if the process is killed before its guards
//! run, `fabric-lab down --name NAME` removes everything (the anchor's namespaces included;
//! `wireguard`'s labs are `NAMEx` and `NAMEw`, and their teardown also ends the userspace
//! WireGuard daemons running in their namespaces).

mod anchor;
mod chart;
mod cni;
mod control;
mod enforcement;
mod flannel;
mod interleave;
mod iperf;
mod knp;
mod report;
mod services;
mod soak;
mod throughput;
mod upstream;
mod wg_anchor;
mod wg_flood;
mod wireguard;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "fabric-bench",
    about = "fabric's benchmarks on a netns lab (run as root)"
)]
struct Cli {
    /// The results file sections are appended to.
    #[arg(long, global = true, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/RESULTS.md"))]
    results: PathBuf,
    /// Print the section without appending it.
    #[arg(long, global = true)]
    no_save: bool,
    /// What goes to stdout: the markdown section, or its figures as one JSON document (the
    /// markdown is still appended to the results file unless --no-save).
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Markdown)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

/// `-o`'s formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Markdown,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Pod-to-pod iperf3 across two nodes: fabric vxlan vs a hand-built kernel VXLAN path.
    Throughput {
        /// Interleaved repetitions (each: fabric P1, anchor P1, fabric P4, anchor P4).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Seconds per iperf3 run (`-t`).
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// Lab name (prefix of every namespace).
        #[arg(long, default_value = "benchtp")]
        name: String,
    },
    /// fabric wireguard vs raw underlay, kernel VXLAN, fabric vxlan, boringtun-cli and
    /// wireguard-go (iperf3, two 2-node labs, one interleaved run); also writes a PNG chart
    /// beside the results file.
    Wireguard {
        /// Interleaved repetitions (each: every path at P1, then every path at P4).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Seconds per iperf3 run (`-t`).
        #[arg(long, default_value_t = 8)]
        seconds: u32,
        /// Lab name prefix: the labs are NAMEx (vxlan) and NAMEw (wireguard).
        #[arg(long, default_value = "benchwg")]
        name: String,
    },
    /// NetworkPolicy enforcement's cost: iperf3 and new connections/s with enforcement off,
    /// on with no policies, and on with N policies (two nodes, interleaved).
    Policy {
        /// Interleaved repetitions (each: the three conditions in rotating order).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Seconds per iperf3 run and per connection-rate run.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// NetworkPolicies in etcd for the "N policies" condition.
        #[arg(long, default_value_t = 1000)]
        policies: usize,
        /// Connections kept in flight at once by the connection-rate client.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Lab name (prefix of every namespace).
        #[arg(long, default_value = "benchnp")]
        name: String,
    },
    /// NetworkPolicy enforcement by fabric vs kube-network-policies (built from its Go module
    /// at a pin) on a 2-node Kubernetes-mode lab: iperf3, new connections/s to an isolated
    /// server, policy change to enforced (interleaved, with a no-enforcement reference).
    KubeNetworkPolicies {
        /// Interleaved repetitions (each: the three conditions in rotating order).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Seconds per iperf3 run and per connection-rate run.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// NetworkPolicies in the API (one isolates the server and admits the client).
        #[arg(long, default_value_t = 1000)]
        policies: usize,
        /// Connections kept in flight at once by the connection-rate client.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Timed policy changes per enforcer, spread over the repetitions.
        #[arg(long, default_value_t = 30)]
        changes: usize,
        /// Lab name (prefix of every namespace).
        #[arg(long, default_value = "benchknp")]
        name: String,
    },
    /// The control plane, etcd vs the Kubernetes API (two 3-node labs, interleaved): policy
    /// change to enforced on every node, node join to routed everywhere, fabricd RSS.
    Control {
        /// Policy changes per lab.
        #[arg(long, default_value_t = 50)]
        changes: usize,
        /// Node joins per lab.
        #[arg(long, default_value_t = 10)]
        joins: usize,
        /// Lab name prefix: the labs are NAMEe (etcd) and NAMEk (Kubernetes).
        #[arg(long, default_value = "benchcp")]
        name: String,
    },
    /// Services on a 3-node Kubernetes-mode lab (kube-proxy nftables, CoreDNS): iperf3 and
    /// new connections/s to a pod IP vs to its ClusterIP (interleaved), and DNS lookup latency
    /// from a pod.
    Services {
        /// Interleaved repetitions (each: iperf3 P1 and P4 and connect-rate to both, then a
        /// batch of DNS lookups).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Seconds per iperf3 run and per connection-rate run.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// Connections kept in flight at once by the connection-rate client.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// DNS lookups in all, spread over the repetitions.
        #[arg(long, default_value_t = 500)]
        lookups: usize,
        /// Lab name (prefix of every namespace).
        #[arg(long, default_value = "benchsvc")]
        name: String,
    },
    /// fabric wireguard pod-to-pod iperf3, quiet vs under a flood of junk handshake
    /// initiations (valid mac1) at the receiving node's WireGuard port (interleaved).
    WgFlood {
        /// Interleaved repetitions (each: P1 quiet, P1 flooded, P4 quiet, P4 flooded).
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Seconds per iperf3 run (`-t`).
        #[arg(long, default_value_t = 8)]
        seconds: u32,
        /// Junk initiations per second.
        #[arg(long, default_value_t = 30_000)]
        rate: u64,
        /// Lab name (prefix of every namespace).
        #[arg(long, default_value = "benchflood")]
        name: String,
    },
    /// A churn soak on a 3-node lab: pods added and deleted, a policy applied and deleted
    /// every round, one fabricd restarted halfway; fabricd RSS and descriptors per process and
    /// a leak audit at the end.
    Soak {
        /// Minutes to churn.
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        /// Lab name (prefix of every namespace).
        #[arg(long, default_value = "benchsoak")]
        name: String,
    },
    /// CNI ADD / CHECK / DEL latency over N pods on one node.
    Cni {
        /// Pods to add (then check and delete).
        #[arg(long, default_value_t = 100)]
        pods: usize,
        /// Lab name (prefix of every namespace).
        #[arg(long, default_value = "benchcni")]
        name: String,
    },
    /// fabric beside the real Flannel (flanneld etcd mode, its delegate chain bridge and
    /// host-local, built by bench/anchors/flannel/build.sh) on the same 2-node topology,
    /// interleaved: pod-to-pod iperf3 P1/P4 on vxlan and host-gw, CNI ADD/DEL latency, node
    /// join to routed everywhere, daemon RSS; writes two PNG charts beside the results file.
    Flannel {
        /// Interleaved iperf3 repetitions per backend (each: fabric and Flannel at P1, then P4).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Seconds per iperf3 run (`-t`).
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// Pods added, then deleted, per plugin chain (on node1 of the vxlan labs).
        #[arg(long, default_value_t = 60)]
        pods: usize,
        /// Node joins per lab (vxlan).
        #[arg(long, default_value_t = 20)]
        joins: usize,
        /// Lab name prefix: the labs are NAMEfabv, NAMEflnv (vxlan), NAMEfabh, NAMEflnh
        /// (host-gw).
        #[arg(long, default_value = "benchfl")]
        name: String,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let section = match cli.command {
        Command::Throughput {
            reps,
            seconds,
            name,
        } => throughput::run(&throughput::Options {
            name,
            reps,
            seconds,
        })?,
        Command::Wireguard {
            reps,
            seconds,
            name,
        } => wireguard::run(&wireguard::Options {
            name,
            reps,
            seconds,
            chart: (!cli.no_save).then(|| {
                (
                    cli.results.with_file_name(wireguard::CHART_FILE),
                    wireguard::CHART_FILE.to_string(),
                )
            }),
        })?,
        Command::Services {
            reps,
            seconds,
            concurrency,
            lookups,
            name,
        } => services::run(&services::Options {
            name,
            reps,
            seconds,
            concurrency,
            lookups,
        })?,
        Command::WgFlood {
            reps,
            seconds,
            rate,
            name,
        } => wg_flood::run(&wg_flood::Options {
            name,
            reps,
            seconds,
            rate,
        })?,
        Command::Cni { pods, name } => cni::run(&cni::Options { name, pods })?,
        Command::Soak { minutes, name } => soak::run(&soak::Options { name, minutes })?,
        Command::Flannel {
            reps,
            seconds,
            pods,
            joins,
            name,
        } => flannel::run(&flannel::Options {
            name,
            reps,
            seconds,
            pods,
            joins,
            charts: (!cli.no_save)
                .then(|| cli.results.parent().map(Path::to_path_buf))
                .flatten(),
        })?,
        Command::Control {
            changes,
            joins,
            name,
        } => control::run(&control::Options {
            name,
            changes,
            joins,
        })?,
        Command::Policy {
            reps,
            seconds,
            policies,
            concurrency,
            name,
        } => enforcement::run(&enforcement::Options {
            name,
            reps,
            seconds,
            policies,
            concurrency,
        })?,
        Command::KubeNetworkPolicies {
            reps,
            seconds,
            policies,
            concurrency,
            changes,
            name,
        } => knp::run(&knp::Options {
            name,
            reps,
            seconds,
            policies,
            concurrency,
            changes,
        })?,
    };
    let text = section.render();
    match cli.output {
        Output::Markdown => println!("{text}"),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report::section_json(&section))?
        ),
    }
    if !cli.no_save {
        append(&cli.results, &text)?;
        eprintln!("appended to {}", cli.results.display());
    }
    Ok(())
}

/// Appends `section` to the results file, creating it with its header if missing.
fn append(path: &Path, section: &str) -> Result<()> {
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let text = report::append_section(existing.as_deref(), section);
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// `N CPUs (nproc), kernel X, <CPU model>`.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            Some(
                l.strip_prefix("model name")?
                    .split_once(':')?
                    .1
                    .trim()
                    .to_string(),
            )
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpus} CPUs (nproc), kernel {}, {model}", kernel.trim())
}

/// The 1/5/15-minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// A snapshot of what else runs on the machine, taken at a benchmark's start and end.
struct Snapshot {
    load: String,
    others: Vec<String>,
}

impl Snapshot {
    fn take(lab: &str) -> Self {
        let namespaces = fabric_lab::netns::list().unwrap_or_default();
        Snapshot {
            load: loadavg(),
            others: report::other_netns_groups(&namespaces, lab),
        }
    }

    /// The sentence describing `self` (start) and `end`.
    fn describe(&self, end: &Snapshot) -> String {
        report::conditions((&self.load, &end.load), (&self.others, &end.others))
    }
}

/// Today (UTC), `YYYY-MM-DD`.
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    report::utc_date(secs)
}
