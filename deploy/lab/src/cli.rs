//! The `fabric-lab` command line: argument parsing (clap) and the commands: `up`, `status`,
//! `exec`, `kubectl` (Kubernetes mode) and `down`, printed for a person (tables) or a program
//! (`-o json`); `netpol`, the end-to-end reachability suite; and the in-pod agent's hidden
//! `serve`, `probe` and `connect-rate`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;

use crate::demo::{self, IperfOptions};
use crate::kube::proxy::ProxyMode;
use crate::netpol;
use crate::porter::{self, Target};
use crate::process::Cmd;
use crate::spec::{Agent, Backend, Datastore, LabSpec, Reservation, BIN_DIR_ENV};
use crate::state::{Node, Pod};
use crate::{teardown, Lab};

/// The default lab name.
pub const DEFAULT_NAME: &str = "lab";

/// A fabric cluster in network namespaces on one machine.
#[derive(Debug, Parser)]
#[command(name = "fabric-lab", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a lab (switch, etcd, nodes running fabricd, pods), show it, ping and iperf3
    /// across it; the lab stays up.
    Up(UpArgs),
    /// Show a lab's nodes and pods.
    Status(StatusArgs),
    /// Run a command inside a pod, node, `etcd`, `cp` or `sw` namespace of a lab.
    Exec(ExecArgs),
    /// Run the pinned kubectl against a Kubernetes-mode lab's apiserver, as its admin (from
    /// inside the lab: the apiserver is not reachable from the host's namespace).
    Kubectl(KubectlArgs),
    /// Stop a lab's processes, delete its namespaces and its state dir.
    Down(DownArgs),
    /// Run NetworkPolicy reachability cases end to end on a lab of their own (built for the
    /// model, torn down after); ends with `cases: P passed, F failed`, exits 1 if F > 0.
    Netpol(NetpolArgs),
    /// (in-pod agent) Serve TCP, UDP and SCTP on the given ports until killed.
    #[command(hide = true)]
    Serve(ServeArgs),
    /// (Kubernetes mode) The kubelet's networking role on one node; `up` starts it.
    #[command(hide = true)]
    Kubelet(KubeletArgs),
    /// (in-pod agent) Probe IP:PORT/PROTO targets at once; a JSON line each.
    #[command(hide = true)]
    Probe(ProbeArgs),
    /// (in-pod agent) New TCP connections per second against a `serve` port.
    #[command(hide = true)]
    ConnectRate(ConnectRateArgs),
    /// Flood a WireGuard port with junk handshake initiations carrying a valid mac1 (bounded
    /// rate and duration; run it inside a lab namespace with `exec`).
    WgFlood(crate::flood::FloodArgs),
    /// (in-pod agent) What a hostile pod sends (for the security tests), or a sink that
    /// reports what got through.
    #[command(hide = true, subcommand)]
    Attack(crate::attack::Attack),
}

/// `fabric-lab netpol`.
#[derive(Debug, Args)]
pub struct NetpolArgs {
    /// The lab's name (prefix of its namespaces).
    #[arg(long, default_value = "netpol")]
    pub name: String,
    /// The case file (the shared reachability case format).
    #[arg(long)]
    pub cases: PathBuf,
    /// The backend the nodes run: vxlan, host-gw or wireguard.
    #[arg(long, default_value_t = Backend::Vxlan)]
    pub backend: Backend,
    /// Where namespaces, labels and policies live: etcd (written with fabricctl) or
    /// kubernetes (a control plane in the lab, written with kubectl).
    #[arg(long, default_value_t = Datastore::Etcd)]
    pub datastore: Datastore,
    /// Each probe's timeout (a denied connection takes this long to be called denied).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// How many more times a probe expected to connect is tried when it did not (with a
    /// longer timeout each time); unexpected connections are never retried.
    #[arg(long, default_value_t = 2)]
    pub retries: u32,
    /// Run only the cases whose name contains this text.
    #[arg(long = "case", value_name = "TEXT")]
    pub only: Option<String>,
    /// Where fabricd, fabricctl and fabric-cni are [default: this executable's directory].
    #[arg(long, env = BIN_DIR_ENV)]
    pub bin_dir: Option<PathBuf>,
}

/// `fabric-lab serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A port to serve on TCP, UDP and SCTP (repeatable).
    #[arg(long = "port", required_unless_present_any = ["tcp", "udp"])]
    pub ports: Vec<u16>,
    /// A port to serve on TCP only, IPv4 and IPv6 (repeatable).
    #[arg(long)]
    pub tcp: Vec<u16>,
    /// A port to serve on UDP only (echo), IPv4 and IPv6 (repeatable).
    #[arg(long)]
    pub udp: Vec<u16>,
    /// Answer TCP connections as an HTTP server: 200 OK with the body line.
    #[arg(long)]
    pub http: bool,
    /// The line to answer with [default: the hostname].
    #[arg(long)]
    pub body: Option<String>,
}

/// `fabric-lab kubelet`.
#[derive(Debug, Args)]
pub struct KubeletArgs {
    #[command(flatten)]
    pub lab: NameArg,
    /// The node whose kubelet this is (`node1`).
    #[arg(long)]
    pub node: String,
}

/// `fabric-lab probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Each probe's timeout.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Targets, `IP:PORT/PROTO` (TCP, UDP or SCTP).
    #[arg(required = true)]
    pub targets: Vec<Target>,
}

/// `fabric-lab connect-rate`.
#[derive(Debug, Args)]
pub struct ConnectRateArgs {
    /// The `serve` listener, `IP:PORT`.
    #[arg(long)]
    pub to: std::net::SocketAddrV4,
    /// How long to run.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Connections in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
}

/// `--name`, shared by every subcommand.
#[derive(Debug, Args)]
pub struct NameArg {
    /// The lab's name (prefix of its namespaces).
    #[arg(long, default_value = DEFAULT_NAME)]
    pub name: String,
}

/// `fabric-lab up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub lab: NameArg,
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Pods per node.
    #[arg(long, default_value_t = 2)]
    pub pods_per_node: usize,
    /// The backend: vxlan, host-gw or wireguard.
    #[arg(long, default_value_t = Backend::Vxlan)]
    pub backend: Backend,
    /// The datastore: etcd, or kubernetes (etcd, kube-apiserver and kube-controller-manager
    /// in the lab; built by deploy/lab/k8s/build.sh).
    #[arg(long, default_value_t = Datastore::Etcd)]
    pub datastore: Datastore,
    /// Subnet lease TTL (e.g. 24h, 90s).
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,
    /// The pod network.
    #[arg(long, default_value = "10.244.0.0/16")]
    pub network: String,
    /// Each node's subnet length.
    #[arg(long, default_value_t = 24)]
    pub subnet_len: u8,
    /// Make the pod network dual-stack with this IPv6 CIDR (e.g. fd00:10:244::/48): every
    /// node gets an IPv6 subnet (/64) and every pod an IPv6 address beside its IPv4 one.
    #[arg(long, value_name = "CIDR")]
    pub ipv6_network: Option<String>,
    /// Pin a subnet to a node before it starts: SUBNET=NODE (repeatable).
    #[arg(long = "reserve", value_name = "SUBNET=NODE")]
    pub reservations: Vec<Reservation>,
    /// Where fabricd, fabricctl and fabric-cni are [default: this executable's directory].
    #[arg(long, env = BIN_DIR_ENV)]
    pub bin_dir: Option<PathBuf>,
    /// Skip the ping and iperf3 demo.
    #[arg(long)]
    pub no_demo: bool,
    /// (Kubernetes mode) Run no kube-scheduler, kube-proxy or CoreDNS: only the control plane,
    /// fabricd, the kubelet role and the lab's own pods.
    #[arg(long)]
    pub no_services: bool,
    /// (Kubernetes mode) kube-proxy's mode: nftables or iptables.
    #[arg(long, default_value_t = ProxyMode::Nftables)]
    pub proxy_mode: ProxyMode,
    /// (etcd mode) etcd on https only, client certificates required, authentication on:
    /// fabricd and fabricctl run as etcd users with least-privilege roles; `status -o json`
    /// shows the files to reach it with.
    #[arg(long)]
    pub etcd_tls: bool,
    /// (etcd mode) Run etcd as a cluster of this many members (odd, at most 5), each in its
    /// own namespace (`etcd`, `etcd2`, ...); fabricd and fabricctl get every member's
    /// endpoint. Peers talk plain http on the underlay, also with --etcd-tls.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub etcd_members: usize,
    /// The node agent: fabric (fabricd and fabric-cni), or flannel (the real flanneld in etcd
    /// mode, pods through Flannel's delegate chain bridge + host-local, built at their pins by
    /// bench/anchors/flannel/build.sh; vxlan or host-gw), an anchor to measure fabric against.
    #[arg(long, default_value_t = Agent::Fabric)]
    pub agent: Agent,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned tables.
    Table,
    /// One JSON document.
    Json,
}

/// `fabric-lab status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub lab: NameArg,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// `fabric-lab exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub lab: NameArg,
    /// A pod (`name` or `namespace/name`), a node (`node1`), `etcd` or `sw`.
    pub target: String,
    /// The command and its arguments (after `--`).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// `fabric-lab kubectl`.
#[derive(Debug, Args)]
pub struct KubectlArgs {
    #[command(flatten)]
    pub lab: NameArg,
    /// kubectl's arguments (after `--`).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// `fabric-lab down`.
#[derive(Debug, Args)]
pub struct DownArgs {
    #[command(flatten)]
    pub lab: NameArg,
}

/// Parses the command line, runs it, and turns errors into a message and exit code 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("fabric-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one command; returns the process exit code.
pub fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Up(args) => up(args),
        Command::Status(args) => status(args).map(|()| 0),
        Command::Exec(args) => exec(args),
        Command::Kubectl(args) => kubectl(args),
        Command::Down(args) => down(args).map(|()| 0),
        Command::Netpol(args) => netpol(args),
        Command::Serve(args) => porter::serve::serve(&porter::serve::ServeConfig {
            ports: args.ports,
            tcp: args.tcp,
            udp: args.udp,
            http: args.http,
            body: args.body,
        })
        .map(|()| 0),
        Command::Kubelet(args) => crate::kubelet::run(&args.lab.name, &args.node).map(|()| 0),
        Command::Probe(args) => {
            for r in porter::probe::probe_all(&args.targets, args.timeout) {
                println!("{}", serde_json::to_string(&r)?);
            }
            Ok(0)
        }
        Command::ConnectRate(args) => {
            let rate =
                porter::rate::run(args.to, Duration::from_secs(args.seconds), args.concurrency);
            println!("{}", serde_json::to_string(&rate)?);
            Ok(0)
        }
        Command::WgFlood(args) => crate::flood::main(&args).map(|()| 0),
        Command::Attack(attack) => attack.run().map(|()| 0),
    }
}

fn up(args: UpArgs) -> Result<u8> {
    let mut spec = LabSpec::new(&args.lab.name);
    spec.nodes = args.nodes;
    spec.pods_per_node = args.pods_per_node;
    spec.backend = args.backend;
    spec.datastore = args.datastore;
    spec.lease_ttl = args.lease_ttl;
    spec.network = args.network;
    spec.subnet_len = args.subnet_len;
    spec.ipv6_network = args.ipv6_network;
    spec.reservations = args.reservations;
    spec.demo = !args.no_demo;
    spec.services = !args.no_services;
    spec.proxy_mode = args.proxy_mode;
    spec.etcd_tls = args.etcd_tls;
    spec.etcd_members = args.etcd_members;
    spec.agent = args.agent;
    if let Some(dir) = args.bin_dir {
        spec.bin_dir = dir;
    }
    let demo = spec.demo;
    let mut lab = Lab::up(spec)?;
    lab.keep();

    println!();
    print_tables(&lab, lab.nodes());
    print_kubelet_pods(&lab);
    let mut code = 0;
    if demo {
        if let Err(e) = run_demo(&lab) {
            println!("demo failed: {e:#}");
            code = 1;
        }
    }
    let name_flag = if lab.name() == DEFAULT_NAME {
        String::new()
    } else {
        format!(" --name {}", lab.name())
    };
    let example = lab
        .pods()
        .first()
        .map(Pod::qualified_name)
        .unwrap_or_else(|| "node1".to_string());
    println!();
    println!("Look around:");
    println!("  fabric-lab exec{name_flag} {example} -- ip addr");
    println!("  fabric-lab exec{name_flag} node1 -- ip route");
    println!("  fabric-lab status{name_flag}");
    if lab.is_kubernetes() {
        println!("  fabric-lab kubectl{name_flag} -- get nodes -o wide");
    }
    println!("Logs and state: {}", lab.state_dir().display());
    println!("Tear down:");
    println!("  fabric-lab down{name_flag}");
    Ok(code)
}

/// Ping and iperf3 from the first pod of node1 to the first pod of the last node (or the next
/// pod on node1 when there is one node).
fn run_demo(lab: &Lab) -> Result<()> {
    let first = lab.pods_on("node1").next();
    let last_node = lab
        .nodes()
        .last()
        .map(|n| n.name.as_str())
        .unwrap_or("node1");
    let target = if last_node == "node1" {
        lab.pods_on("node1").nth(1)
    } else {
        lab.pods_on(last_node).next()
    };
    let (Some(src), Some(dst)) = (first, target) else {
        println!("\n(no pair of pods to run the demo between)");
        return Ok(());
    };
    let pair = format!(
        "{} ({}) -> {} ({})",
        src.qualified_name(),
        src.ip,
        dst.qualified_name(),
        dst.ip
    );
    println!();
    let ping = demo::ping(&src.netns, dst.ip, 3)?;
    println!("ping {pair}: {ping}");
    let opts = IperfOptions {
        server_log: Some(lab.layout().log("iperf3-server")),
        ..IperfOptions::default()
    };
    let iperf = demo::iperf(&dst.netns, dst.ip, &src.netns, &opts)?;
    println!(
        "iperf3 {pair}, {} s over {}: {:.2} Gbit/s, {} retransmits",
        opts.seconds,
        lab.backend(),
        iperf.gbps(),
        iperf.retransmits
    );
    Ok(())
}

fn status(args: StatusArgs) -> Result<()> {
    let mut lab = Lab::attach(&args.lab.name)?;
    // Fresh subnets if the datastore is up; the recorded ones otherwise. Nothing is written.
    let etcd_running = lab.etcd_members().iter().any(|m| m.running());
    let etcd_leader = etcd_running.then(|| lab.etcd_leader().ok()).flatten();
    let datastore_up = if lab.is_kubernetes() {
        lab.apiserver_running()
    } else {
        etcd_running
    };
    let live = datastore_up.then(|| lab.subnets().ok()).flatten();
    let control_plane: Vec<_> = lab
        .state()
        .control_plane
        .iter()
        .map(|c| (c.name.clone(), c.daemon.pid, c.daemon.is_running()))
        .collect();
    let nodes: Vec<Node> = lab
        .nodes()
        .iter()
        .cloned()
        .map(|mut n| {
            if let Some(subnets) = &live {
                n.subnet = subnets.get(&n.name).cloned().or(n.subnet);
            }
            n
        })
        .collect();
    match args.output {
        OutputFormat::Json => {
            let doc = json!({
                "name": lab.name(),
                "agent": lab.agent(),
                "backend": lab.backend(),
                "datastore": lab.datastore(),
                "kubeconfig": lab.kubeconfig(),
                "state_dir": lab.state_dir(),
                "etcd": (!lab.is_kubernetes()).then(|| json!({
                    "pid": lab.etcd_members().first().and_then(|m| m.daemon.as_ref()).map(|d| d.pid),
                    "running": etcd_running,
                    "leader": etcd_leader,
                    "members": lab.etcd_members().iter().map(|m| json!({
                        "name": m.name,
                        "netns": m.netns,
                        "ip": m.ip,
                        "endpoint": crate::etcd::client_url(lab.layout(), m),
                        "pid": m.daemon.as_ref().map(|d| d.pid),
                        "running": m.running(),
                    })).collect::<Vec<_>>(),
                    "tls": lab.etcd_tls(),
                    "fabricctl": lab.etcd_access(crate::etcd::FABRICCTL_USER),
                    "fabricd": lab.etcd_access(crate::etcd::FABRICD_USER),
                })),
                "control_plane": control_plane.iter().map(|(name, pid, running)| json!({
                    "name": name,
                    "pid": pid,
                    "running": running,
                })).collect::<Vec<_>>(),
                "services": lab.state().services,
                "proxy_mode": lab.state().services.then_some(lab.state().proxy_mode),
                "nodes": nodes.iter().map(|n| json!({
                    "name": n.name,
                    "netns": n.netns,
                    "underlay_ip": n.underlay_ip,
                    "subnet": n.subnet,
                    "pid": lab.agent_pid(&n.name),
                    "running": agent_daemon(&lab, n).is_some_and(|d| d.is_running()),
                    "kubelet": daemon_json(n.kubelet.as_ref()),
                    "kube_proxy": daemon_json(n.kube_proxy.as_ref()),
                })).collect::<Vec<_>>(),
                "kubelet_pods": lab.kubelet_pods().iter().map(|(node, p)| json!({
                    "name": p.name,
                    "namespace": p.namespace,
                    "uid": p.uid,
                    "netns": p.netns,
                    "node": node,
                    "ip": p.ip,
                    "ipv6": p.ipv6,
                })).collect::<Vec<_>>(),
                "pods": lab.pods().iter().map(|p| json!({
                    "name": p.name,
                    "namespace": p.namespace,
                    "netns": p.netns,
                    "node": p.node,
                    "ip": p.ip,
                    "ipv6": p.ipv6,
                })).collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        OutputFormat::Table => {
            let datastore = if lab.is_kubernetes() {
                let parts: Vec<String> = control_plane
                    .iter()
                    .map(|(name, pid, running)| {
                        format!("{name} pid {pid} ({})", running_word(*running))
                    })
                    .collect();
                format!("kubernetes [{}]", parts.join(", "))
            } else {
                let members: Vec<String> = lab
                    .etcd_members()
                    .iter()
                    .map(|m| {
                        let role = if etcd_leader.as_deref() == Some(m.name.as_str()) {
                            ", leader"
                        } else {
                            ""
                        };
                        match &m.daemon {
                            Some(d) => format!(
                                "{} {} pid {} ({}{role})",
                                m.name,
                                m.ip,
                                d.pid,
                                running_word(m.running())
                            ),
                            None => format!("{} {} stopped", m.name, m.ip),
                        }
                    })
                    .collect();
                format!(
                    "etcd{} [{}]",
                    if lab.etcd_tls() { " (TLS + auth)" } else { "" },
                    members.join(", ")
                )
            };
            println!(
                "lab {}: {}backend {}, network {}, {datastore}, state {}",
                lab.name(),
                match lab.flannel_bin_dir() {
                    Some(dir) => format!("flanneld {}, ", crate::flannel::version(dir)),
                    None => String::new(),
                },
                lab.backend(),
                lab.state().network,
                lab.state_dir().display()
            );
            if let Some(kubeconfig) = lab.kubeconfig() {
                println!("kubeconfig {}", kubeconfig.display());
            }
            println!();
            print_tables(&lab, &nodes);
            print_kubelet_pods(&lab);
        }
    }
    lab.keep();
    Ok(())
}

fn netpol(args: NetpolArgs) -> Result<u8> {
    let file = netpol::load(&args.cases)?;
    let mut options = netpol::Options::new(args.name);
    options.backend = args.backend;
    options.datastore = args.datastore;
    options.bin_dir = args.bin_dir;
    options.timeout = args.timeout;
    options.retries = args.retries;
    options.only = args.only;
    let summary = netpol::run(&options, &file, &mut std::io::stdout().lock())?;
    Ok(u8::from(summary.failed() > 0))
}

fn exec(args: ExecArgs) -> Result<u8> {
    let lab = Lab::attach(&args.lab.name)?;
    let netns = lab.netns(&args.target)?;
    let (program, rest) = args.command.split_first().context("no command given")?;
    let code = Cmd::in_netns(&netns, program).args(rest).interactive()?;
    Ok(u8::try_from(code).unwrap_or(1))
}

fn kubectl(args: KubectlArgs) -> Result<u8> {
    let lab = Lab::attach(&args.lab.name)?;
    let code = lab.kubectl()?.cmd(&args.args).interactive()?;
    Ok(u8::try_from(code).unwrap_or(1))
}

fn down(args: DownArgs) -> Result<()> {
    let name = &args.lab.name;
    let report = teardown::down(name, None)?;
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    if report.is_empty() {
        println!("no lab named {name}: nothing to do");
        return Ok(());
    }
    for (pid, what) in &report.stopped {
        println!("stopped pid {pid}: {what}");
    }
    if !report.namespaces.is_empty() {
        println!(
            "deleted {} namespaces: {}",
            report.namespaces.len(),
            report.namespaces.join(" ")
        );
    }
    if report.removed_state_dir {
        println!(
            "removed {}",
            crate::state::Layout::for_lab(name).root().display()
        );
    }
    println!("lab {name} is down");
    Ok(())
}

/// The node agent's process on `node`: fabricd, or flanneld on a Flannel lab.
fn agent_daemon(lab: &Lab, node: &Node) -> Option<crate::process::Daemon> {
    match lab.agent() {
        Agent::Fabric => node.fabricd.clone(),
        Agent::Flannel => lab.flanneld(&node.name).cloned(),
    }
}

fn print_tables(lab: &Lab, nodes: &[Node]) {
    let pods = lab.pods();
    println!("Nodes");
    let kube = nodes
        .iter()
        .any(|n| n.kubelet.is_some() || n.kube_proxy.is_some());
    let agent = lab.agent().daemon().to_uppercase();
    let mut headers = vec!["NAME", "NETNS", "UNDERLAY IP", "SUBNET", agent.as_str()];
    if kube {
        headers.extend(["KUBELET", "KUBE-PROXY"]);
    }
    print!(
        "{}",
        table(
            &headers,
            nodes
                .iter()
                .map(|n| {
                    let mut row = vec![
                        n.name.clone(),
                        n.netns.clone(),
                        n.underlay_ip.to_string(),
                        n.subnet.clone().unwrap_or_else(|| "-".into()),
                        match agent_daemon(lab, n) {
                            Some(d) => format!("pid {} ({})", d.pid, running_word(d.is_running())),
                            None => "stopped".into(),
                        },
                    ];
                    if kube {
                        row.push(daemon_cell(n.kubelet.as_ref()));
                        row.push(daemon_cell(n.kube_proxy.as_ref()));
                    }
                    row
                })
                .collect(),
        )
    );
    println!();
    println!("Pods");
    let dual_stack = pods.iter().any(|p| p.ipv6.is_some());
    let mut headers = vec!["NAME", "NETNS", "NODE", "IP"];
    if dual_stack {
        headers.push("IPV6");
    }
    print!(
        "{}",
        table(
            &headers,
            pods.iter()
                .map(|p| {
                    let mut row = vec![
                        p.qualified_name(),
                        p.netns.clone(),
                        p.node.clone(),
                        p.ip.to_string(),
                    ];
                    if dual_stack {
                        row.push(p.ipv6.map_or_else(|| "-".into(), |ip| ip.to_string()));
                    }
                    row
                })
                .collect(),
        )
    );
}

fn daemon_json(d: Option<&crate::process::Daemon>) -> serde_json::Value {
    match d {
        Some(d) => json!({"pid": d.pid, "running": d.is_running()}),
        None => serde_json::Value::Null,
    }
}

fn daemon_cell(d: Option<&crate::process::Daemon>) -> String {
    match d {
        Some(d) => format!("pid {} ({})", d.pid, running_word(d.is_running())),
        None => "-".into(),
    }
}

/// The pods the kubelet roles run (Kubernetes mode), if any.
fn print_kubelet_pods(lab: &Lab) {
    let pods = lab.kubelet_pods();
    if pods.is_empty() {
        return;
    }
    println!();
    println!("Pods run by the kubelet roles");
    print!(
        "{}",
        table(
            &["NAME", "NETNS", "NODE", "IP"],
            pods.iter()
                .map(|(node, p)| {
                    vec![
                        p.key(),
                        p.netns.clone(),
                        node.clone(),
                        p.ip.map_or_else(|| "-".into(), |ip| ip.to_string()),
                    ]
                })
                .collect(),
        )
    );
}

fn running_word(running: bool) -> &'static str {
    if running {
        "running"
    } else {
        "not running"
    }
}

/// Left-aligned columns separated by two spaces.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_up_with_defaults_and_flags() {
        let cli = Cli::try_parse_from(["fabric-lab", "up"]).unwrap();
        let Command::Up(up) = cli.command else {
            panic!("not up")
        };
        assert_eq!(up.lab.name, "lab");
        assert_eq!((up.nodes, up.pods_per_node), (3, 2));
        assert_eq!(up.backend, Backend::Vxlan);
        assert_eq!(up.lease_ttl, Duration::from_secs(86400));

        let cli = Cli::try_parse_from([
            "fabric-lab",
            "up",
            "--name",
            "t1",
            "--nodes",
            "2",
            "--backend",
            "host-gw",
            "--lease-ttl",
            "90s",
            "--reserve",
            "10.244.1.0/24=node1",
            "--no-demo",
        ])
        .unwrap();
        let Command::Up(up) = cli.command else {
            panic!("not up")
        };
        assert_eq!(up.lab.name, "t1");
        assert_eq!(up.backend, Backend::HostGw);
        assert_eq!(up.lease_ttl, Duration::from_secs(90));
        assert_eq!(up.reservations[0].node, "node1");
        assert!(up.no_demo);
        assert_eq!(up.agent, Agent::Fabric);
        assert!(Cli::try_parse_from(["fabric-lab", "up", "--backend", "flannel"]).is_err());
        let cli = Cli::try_parse_from(["fabric-lab", "up", "--agent", "flannel"]).unwrap();
        let Command::Up(up) = cli.command else {
            panic!("not up")
        };
        assert_eq!(up.agent, Agent::Flannel);
        assert!(Cli::try_parse_from(["fabric-lab", "up", "--agent", "calico"]).is_err());
    }

    #[test]
    fn parses_exec_with_and_without_double_dash() {
        for argv in [
            &["fabric-lab", "exec", "node1-pod1", "--", "ip", "-4", "addr"][..],
            &["fabric-lab", "exec", "node1-pod1", "ip", "-4", "addr"][..],
        ] {
            let cli = Cli::try_parse_from(argv).unwrap();
            let Command::Exec(exec) = cli.command else {
                panic!("not exec")
            };
            assert_eq!(exec.target, "node1-pod1");
            assert_eq!(exec.command, ["ip", "-4", "addr"]);
        }
        assert!(Cli::try_parse_from(["fabric-lab", "exec", "node1"]).is_err());
    }

    #[test]
    fn parses_datastore_and_kubectl() {
        let cli = Cli::try_parse_from(["fabric-lab", "up", "--datastore", "kubernetes"]).unwrap();
        let Command::Up(up) = cli.command else {
            panic!("not up")
        };
        assert_eq!(up.datastore, Datastore::Kubernetes);
        let cli = Cli::try_parse_from(["fabric-lab", "up"]).unwrap();
        let Command::Up(up) = cli.command else {
            panic!("not up")
        };
        assert_eq!(up.datastore, Datastore::Etcd);
        assert!(Cli::try_parse_from(["fabric-lab", "up", "--datastore", "consul"]).is_err());
        let cli = Cli::try_parse_from([
            "fabric-lab",
            "netpol",
            "--cases",
            "c.yaml",
            "--datastore",
            "kubernetes",
        ])
        .unwrap();
        let Command::Netpol(n) = cli.command else {
            panic!("not netpol")
        };
        assert_eq!(n.datastore, Datastore::Kubernetes);

        let cli = Cli::try_parse_from([
            "fabric-lab",
            "kubectl",
            "--name",
            "kx1",
            "--",
            "get",
            "nodes",
            "-o",
            "wide",
        ])
        .unwrap();
        let Command::Kubectl(k) = cli.command else {
            panic!("not kubectl")
        };
        assert_eq!(k.lab.name, "kx1");
        assert_eq!(k.args, ["get", "nodes", "-o", "wide"]);
        assert!(Cli::try_parse_from(["fabric-lab", "kubectl"]).is_err());
    }

    #[test]
    fn parses_services_flags_and_the_agents() {
        let cli = Cli::try_parse_from(["fabric-lab", "up", "--datastore", "kubernetes"]).unwrap();
        let Command::Up(up) = cli.command else {
            panic!("not up")
        };
        assert!(!up.no_services);
        assert_eq!(up.proxy_mode, ProxyMode::Nftables);
        let cli = Cli::try_parse_from([
            "fabric-lab",
            "up",
            "--no-services",
            "--proxy-mode",
            "iptables",
        ])
        .unwrap();
        let Command::Up(up) = cli.command else {
            panic!("not up")
        };
        assert!(up.no_services);
        assert_eq!(up.proxy_mode, ProxyMode::Iptables);
        assert!(Cli::try_parse_from(["fabric-lab", "up", "--proxy-mode", "ipvs"]).is_err());

        let cli = Cli::try_parse_from(["fabric-lab", "kubelet", "--name", "k", "--node", "node2"])
            .unwrap();
        let Command::Kubelet(k) = cli.command else {
            panic!("not kubelet")
        };
        assert_eq!((k.lab.name.as_str(), k.node.as_str()), ("k", "node2"));

        let cli = Cli::try_parse_from([
            "fabric-lab",
            "serve",
            "--http",
            "--body",
            "web-1",
            "--tcp",
            "80",
            "--udp",
            "53",
        ])
        .unwrap();
        let Command::Serve(s) = cli.command else {
            panic!("not serve")
        };
        assert!(s.http && s.ports.is_empty());
        assert_eq!(
            (s.tcp, s.udp, s.body.as_deref()),
            (vec![80], vec![53], Some("web-1"))
        );
        assert!(Cli::try_parse_from(["fabric-lab", "serve"]).is_err());
        assert!(Cli::try_parse_from(["fabric-lab", "serve", "--port", "80"]).is_ok());
    }

    #[test]
    fn parses_status_output() {
        let cli = Cli::try_parse_from(["fabric-lab", "status", "-o", "json"]).unwrap();
        let Command::Status(s) = cli.command else {
            panic!("not status")
        };
        assert_eq!(s.output, OutputFormat::Json);
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["NAME", "IP"],
            vec![vec!["node1-pod1".into(), "10.244.1.2".into()]],
        );
        assert_eq!(t, "NAME        IP\nnode1-pod1  10.244.1.2\n");
    }
}
