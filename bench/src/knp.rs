//! `fabric-bench kube-network-policies`: fabric's NetworkPolicy enforcement beside
//! kube-network-policies (Kubernetes SIG Network's agent, NFQUEUE like fabric, built by
//! `bench/anchors/build.sh` at its pin), on one 2-node Kubernetes-mode lab. A client pod on
//! node1 and a server pod on node2 (namespace `bench`); N NetworkPolicies in the API (default
//! 1,000, the same set as `fabric-bench policy`), one of which isolates the server and admits
//! the client. Three conditions, interleaved in rotating order per repetition:
//!
//! - **fabric**: fabricd enforces (its default);
//! - **kube-network-policies**: every fabricd runs with `--network-policy=false` and
//!   kube-network-policies runs in every node namespace, as its DaemonSet would (host network,
//!   `--hostname-override=NODE`, `--nfqueue-id=98`), with a token of its own ServiceAccount and
//!   the RBAC of its upstream `install.yaml`;
//! - **no enforcement**: fabricd with `--network-policy=false`, nothing else.
//!
//! Per condition: where something enforces, policy changes to enforced first: the server's
//! policy is rewritten with `kubectl apply` so that it no longer admits the client, and the
//! clock runs from just before the command until a new connection from the client is no longer
//! let through (probed from the client pod every millisecond or so, each probe a fresh
//! connection; a refusal counts once a second probe confirms it); the policy is then restored,
//! untimed. Both enforcers are judged by the same probe, since kube-network-policies has no API
//! to ask for its view. Then iperf3 (TCP, one stream, client → server) and new connections/s to
//! the isolated server (`fabric-lab connect-rate` against `fabric-lab serve`).
//!
//! kube-network-policies queues with nft's `queue` statement only. On a kernel without it
//! (`CONFIG_NFT_QUEUE`, checked with `nft --check` in a node namespace) it cannot enforce, so
//! the run measures fabric and no enforcement and says why the anchor is missing.

use std::fmt::Write as _;
use std::net::{SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use fabric_lab::kube::Kubectl;
use fabric_lab::process::{Cmd, Daemon};
use fabric_lab::{Backend, Datastore, Lab, LabSpec, Signal};

use crate::enforcement::{self, StopOnDrop};
use crate::report::{self, markdown_table, median, Section};
use crate::upstream;

/// fabric's new connections/s to the isolated server ≥ this × kube-network-policies'.
pub const RATE_TARGET: f64 = 1.2;

/// The namespace of the measured pods and of the policies.
const NAMESPACE: &str = "bench";

/// The port `fabric-lab serve` listens on in the server pod.
const SERVE_PORT: u16 = 80;

/// kube-network-policies' queue (its DaemonSet's `--nfqueue-id`).
const QUEUE_ID: u16 = 98;

/// Its nftables table (`inet`).
const TABLE: &str = "kube-network-policies";

/// Its ServiceAccount, as its install.yaml names it.
const SERVICE_ACCOUNT: (&str, &str) = ("kube-system", "kube-network-policies");

/// A probe's connect timeout: an admitted connection on the lab takes well under this.
const PROBE_TIMEOUT: Duration = Duration::from_millis(100);

/// The pause between two probes while a change is awaited.
const PROBE_GAP: Duration = Duration::from_millis(1);

/// Policy changes start only once the server node's conntrack holds fewer entries than this
/// (see [`wait_conntrack_drained`]).
const CONNTRACK_QUIET: u64 = 500;

/// The longest a change, a restore or a start may take before the run fails.
const PATIENCE: Duration = Duration::from_secs(30);

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Lab name.
    pub name: String,
    /// Interleaved repetitions.
    pub reps: usize,
    /// Seconds per iperf3 run and per connection-rate run.
    pub seconds: u32,
    /// NetworkPolicies in the API.
    pub policies: usize,
    /// Connections `connect-rate` keeps in flight at once.
    pub concurrency: usize,
    /// Timed policy changes per enforcer, spread over the repetitions.
    pub changes: usize,
}

/// Who enforces NetworkPolicy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Enforcer {
    Fabric,
    Knp,
    Off,
}

impl Enforcer {
    const ALL: [Enforcer; 3] = [Enforcer::Fabric, Enforcer::Knp, Enforcer::Off];

    fn label(self) -> &'static str {
        match self {
            Enforcer::Fabric => "fabric",
            Enforcer::Knp => "kube-network-policies",
            Enforcer::Off => "no enforcement",
        }
    }

    /// Does fabricd enforce?
    fn fabric(self) -> bool {
        self == Enforcer::Fabric
    }
}

/// The server's policy: admits the client (`allow`) or, rewritten, a pod that does not exist.
pub fn server_policy(allow: bool) -> String {
    let doc = enforcement::manifests(1, false);
    if allow {
        doc
    } else {
        doc.replace("{app: client}", "{app: nobody}")
    }
}

/// The documents of kube-network-policies' install.yaml other than its DaemonSet (its
/// ClusterRole, ClusterRoleBinding and ServiceAccount).
pub fn rbac_documents(install_yaml: &str) -> String {
    install_yaml
        .split("\n---")
        .map(|d| d.trim_start_matches("---").trim())
        .filter(|d| !d.is_empty() && !d.lines().any(|l| l.trim() == "kind: DaemonSet"))
        .map(|d| format!("---\n{d}\n"))
        .collect()
}

/// A throwaway table using nft's native `queue` statement, the way kube-network-policies' rules
/// queue packets (`nft --check` validates it in the kernel and installs nothing).
const NFT_QUEUE_PROBE: &str = "table inet fabric-bench-probe {\n\
    \tchain c {\n\
    \t\ttype filter hook postrouting priority filter; policy accept;\n\
    \t\tmeta l4proto tcp queue flags bypass to 98\n\
    \t}\n\
    }\n";

/// Has the kernel nft's `queue` expression (`CONFIG_NFT_QUEUE`)? kube-network-policies
/// installs its NFQUEUE rules with nftables only; without it every sync of its table fails
/// (`netlink receive: no such file or directory`) and it enforces nothing. Checked in `netns`.
fn nft_queue_supported(netns: &str) -> bool {
    Cmd::in_netns(netns, "nft")
        .args(["--check", "-f", "-"])
        .stdin(NFT_QUEUE_PROBE)
        .run()
        .is_ok()
}

/// `(host, port)` of an `https://HOST:PORT` URL.
pub fn host_port(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("https://")?.trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':')?;
    Some((host.trim_matches(['[', ']']).to_string(), port.to_string()))
}

/// Runs kube-network-policies' in-cluster configuration needs (`/var/run/secrets/
/// kubernetes.io/serviceaccount/{token,ca.crt}`) from a tmpfs on `/run` private to it: `ip
/// netns exec` gives it a mount namespace of its own (slave to the host's), so nothing of the
/// host's file system changes. `$1`, `$2`: the token and CA files; the rest: the command.
const LAUNCHER: &str = r#"set -eu
token="$(cat "$1")"; ca="$(cat "$2")"; shift 2
mount -t tmpfs -o mode=0755 fabric-bench-knp /run
d=/run/secrets/kubernetes.io/serviceaccount
mkdir -p "$d"
printf '%s' "$token" > "$d/token"
printf '%s\n' "$ca" > "$d/ca.crt"
exec "$@""#;

/// kube-network-policies running on every node; stopped (SIGINT: it removes its table) when
/// dropped.
struct Knp {
    /// (node namespace, daemon).
    daemons: Vec<(String, Daemon)>,
}

impl Knp {
    /// Starts it in every node namespace and waits until the server's node has put the
    /// server into its set of isolated pods.
    fn start(lab: &Lab, setup: &Setup) -> Result<Self> {
        let mut knp = Knp {
            daemons: Vec::new(),
        };
        for node in lab.nodes() {
            let log = lab
                .state_dir()
                .join(format!("kube-network-policies-{}.log", node.name));
            let mut daemon = Cmd::in_netns(&node.netns, "sh")
                .args(["-c", LAUNCHER, "sh"])
                .arg(&setup.token)
                .arg(&setup.ca)
                .arg("env")
                .arg(format!("KUBERNETES_SERVICE_HOST={}", setup.api.0))
                .arg(format!("KUBERNETES_SERVICE_PORT={}", setup.api.1))
                .arg(&setup.binary)
                .arg(format!("--hostname-override={}", node.name))
                .arg(format!("--nfqueue-id={QUEUE_ID}"))
                .arg("--metrics-bind-address=127.0.0.1:9080")
                .arg("--v=1")
                .spawn_daemon(&log)
                .with_context(|| format!("starting kube-network-policies on {}", node.name))?;
            // The launcher execs it: from then on the PID runs the agent.
            daemon.binary = setup.binary.clone();
            knp.daemons.push((node.netns.clone(), daemon));
        }
        let deadline = Instant::now() + PATIENCE;
        let server_node = &lab.node(&setup.server_node)?.netns;
        loop {
            for ((ns, d), node) in knp.daemons.iter().zip(lab.nodes()) {
                if !d.is_running() && !d.is_ours() {
                    let log = lab
                        .state_dir()
                        .join(format!("kube-network-policies-{}.log", node.name));
                    bail!(
                        "kube-network-policies on {ns} exited; last lines of {}:\n{}",
                        log.display(),
                        fabric_lab::process::tail(&log, 20)
                    );
                }
            }
            let set = Cmd::in_netns(server_node, "nft")
                .args(["list", "set", "inet", TABLE, "podips-v4"])
                .run()
                .unwrap_or_default();
            if set.contains(&setup.server.ip().to_string()) {
                return Ok(knp);
            }
            if Instant::now() > deadline {
                bail!(
                    "kube-network-policies on {} has not isolated {} after {PATIENCE:?}; last \
                     lines of its log:\n{}",
                    setup.server_node,
                    setup.server.ip(),
                    fabric_lab::process::tail(
                        &lab.state_dir()
                            .join(format!("kube-network-policies-{}.log", setup.server_node)),
                        20
                    )
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its resident memory per node, MiB.
    fn rss_mib(&self) -> Vec<f64> {
        self.daemons
            .iter()
            .filter_map(|(_, d)| crate::control::rss_of(d.pid))
            .collect()
    }
}

impl Drop for Knp {
    fn drop(&mut self) {
        for (ns, daemon) in &self.daemons {
            // SIGINT is its clean stop: it deletes its table, then exits after 5 s.
            let stopped = daemon.signal(Signal::SIGINT).unwrap_or(false)
                && daemon.wait_exit(Duration::from_secs(10));
            if !stopped {
                let _ = daemon.terminate();
            }
            let left = Cmd::in_netns(ns, "nft")
                .args(["list", "table", "inet", TABLE])
                .run()
                .is_ok();
            if left {
                let _ = Cmd::in_netns(ns, "nft")
                    .args(["delete", "table", "inet", TABLE])
                    .run();
            }
        }
    }
}

/// What the runs share.
struct Setup {
    binary: PathBuf,
    token: PathBuf,
    ca: PathBuf,
    api: (String, String),
    client_netns: String,
    server_node: String,
    server: SocketAddrV4,
    kubectl: Kubectl,
}

/// One fresh connection from the current thread's namespace: let through?
fn probe(to: SocketAddrV4) -> bool {
    TcpStream::connect_timeout(&to.into(), PROBE_TIMEOUT).is_ok()
}

/// Waits until connections from the client are let through (`admitted`) or not.
fn wait_for(setup: &Setup, admitted: bool) -> Result<()> {
    let to = setup.server;
    let ok = fabric_lab::netns::in_netns(&setup.client_netns, move || {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if probe(to) == admitted && probe(to) == admitted {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    })?;
    ensure!(
        ok,
        "connections to {to} still {} after {PATIENCE:?}",
        if admitted { "refused" } else { "let through" }
    );
    Ok(())
}

/// One timed change: the server's policy stops admitting the client. Returns (the command's
/// time, the time until a new connection is refused), both from just before the command.
fn timed_change(setup: &Setup) -> Result<(f64, f64)> {
    wait_for(setup, true)?;
    let kubectl = setup.kubectl.clone();
    let to = setup.server;
    let start = Instant::now();
    let command = std::thread::spawn(move || {
        let r = kubectl.run_stdin(&["apply", "-f", "-"], server_policy(false));
        (r, start.elapsed())
    });
    let enforced = fabric_lab::netns::in_netns(&setup.client_netns, move || {
        while start.elapsed() < PATIENCE {
            let at = start.elapsed();
            if !probe(to) && !probe(to) {
                return Some(at);
            }
            std::thread::sleep(PROBE_GAP);
        }
        None
    })?;
    let (applied, took) = command
        .join()
        .map_err(|_| anyhow::anyhow!("the kubectl thread panicked"))?;
    applied.context("kubectl apply of the tightened policy")?;
    let enforced = enforced.with_context(|| {
        format!("new connections to {to} still let through {PATIENCE:?} after the change")
    })?;
    // Restore (untimed).
    setup
        .kubectl
        .run_stdin(&["apply", "-f", "-"], server_policy(true))
        .context("restoring the server's policy")?;
    wait_for(setup, true)?;
    Ok((millis(took), millis(enforced)))
}

/// Waits (up to a minute) until the server node's conntrack table holds fewer than
/// [`CONNTRACK_QUIET`] entries. After a connect-rate run it holds one per connection (closed,
/// expiring after 10 s), and when a change tightens a policy fabricd cuts every allowed
/// connection the new policy no longer admits, one `conntrack -D` each, before its view takes
/// the next change: timing a change then would time that.
fn wait_conntrack_drained(netns: &str) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let count: u64 = Cmd::in_netns(netns, "cat")
            .arg("/proc/sys/net/netfilter/nf_conntrack_count")
            .run()
            .ok()
            .and_then(|c| c.trim().parse().ok())
            .unwrap_or(0);
        if count < CONNTRACK_QUIET || Instant::now() > deadline {
            return Ok(count);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Brings the lab to `to`: restarts fabricd when its enforcement switches, starts or stops
/// kube-network-policies, and waits until the server is isolated by whoever enforces.
fn switch(
    lab: &mut Lab,
    setup: &Setup,
    knp: &mut Option<Knp>,
    current: &mut Option<Enforcer>,
    to: Enforcer,
    policies: usize,
) -> Result<()> {
    if *current == Some(to) {
        return Ok(());
    }
    if to != Enforcer::Knp {
        *knp = None;
    }
    if current.is_none_or(|c| c.fabric() != to.fabric()) {
        let flags: &[&str] = if to.fabric() {
            &[]
        } else {
            &["--network-policy=false"]
        };
        let nodes: Vec<String> = lab.nodes().iter().map(|n| n.name.clone()).collect();
        for node in &nodes {
            lab.restart_fabricd_with(node, flags)?;
        }
    }
    match to {
        Enforcer::Fabric => {
            let deadline = Instant::now() + PATIENCE;
            while crate::control::policies_per_node(lab)?
                .iter()
                .any(|&p| p < policies)
            {
                ensure!(
                    Instant::now() < deadline,
                    "fabricd's views do not hold the {policies} policies after {PATIENCE:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Enforcer::Knp => *knp = Some(Knp::start(lab, setup)?),
        Enforcer::Off => {}
    }
    wait_for(setup, true)?;
    *current = Some(to);
    Ok(())
}

/// The admin kubeconfig's apiserver `(host, port)` and CA file.
fn api_and_ca(lab: &Lab) -> Result<((String, String), PathBuf)> {
    let path = lab.kubeconfig().context("not a Kubernetes-mode lab")?;
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let config: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not the lab's JSON kubeconfig", path.display()))?;
    let cluster = &config["clusters"][0]["cluster"];
    let server = cluster["server"]
        .as_str()
        .context("kubeconfig: no server")?;
    let api = host_port(server).with_context(|| format!("kubeconfig server {server}"))?;
    let ca = cluster["certificate-authority"]
        .as_str()
        .context("kubeconfig: no certificate-authority file")?;
    Ok((api, PathBuf::from(ca)))
}

/// Applies kube-network-policies' RBAC and writes a token of its ServiceAccount to `dir`.
fn service_account(kubectl: &Kubectl, binary: &Path, dir: &Path) -> Result<PathBuf> {
    let install = binary.with_file_name("kube-network-policies-install.yaml");
    let yaml = std::fs::read_to_string(&install).with_context(|| {
        format!(
            "reading {} (bench/anchors/build.sh kube-network-policies copies it there)",
            install.display()
        )
    })?;
    kubectl
        .run_stdin(&["apply", "-f", "-"], rbac_documents(&yaml))
        .context("applying kube-network-policies' RBAC")?;
    let token = kubectl
        .run(&[
            "create",
            "token",
            SERVICE_ACCOUNT.1,
            "-n",
            SERVICE_ACCOUNT.0,
            "--duration=48h",
        ])
        .context("creating a token of kube-network-policies' ServiceAccount")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join("token");
    std::fs::write(&file, token.trim()).with_context(|| format!("writing {}", file.display()))?;
    Ok(file)
}

/// Runs the benchmark and returns its RESULTS.md section.
pub fn run(opts: &Options) -> Result<Section> {
    ensure!(opts.reps >= 1, "--reps must be at least 1");
    ensure!(opts.seconds >= 1, "--seconds must be at least 1");
    ensure!(opts.policies >= 1, "--policies must be at least 1");
    let binary = upstream::ensure(&upstream::KUBE_NETWORK_POLICIES)?;
    let before = crate::Snapshot::take(&opts.name);

    let mut spec = LabSpec::new(&opts.name);
    spec.nodes = 2;
    spec.pods_per_node = 0;
    spec.backend = Backend::Vxlan;
    spec.datastore = Datastore::Kubernetes;
    spec.demo = false;
    let mut lab = Lab::up(spec).context("bringing up the 2-node Kubernetes-mode lab")?;
    let (client, server) = enforcement::client_and_server(&mut lab)?;
    let agent = lab.state().bin_dir.join("fabric-lab");
    let serving = Cmd::in_netns(&server.netns, &agent)
        .args(["serve", "--port", &SERVE_PORT.to_string()])
        .spawn_daemon(&lab.state_dir().join("serve.log"))
        .context("starting fabric-lab serve in the server pod")?;
    let _stop = StopOnDrop(serving);

    let kubectl = lab.kubectl()?;
    eprintln!("[{}] applying {} NetworkPolicies", opts.name, opts.policies);
    kubectl
        .cmd(["create", "-f", "-"])
        .stdin(enforcement::manifests(opts.policies, false))
        .timeout(Duration::from_secs(600))
        .run()
        .context("creating the NetworkPolicies")?;
    let (api, ca) = api_and_ca(&lab)?;
    let token = service_account(
        &kubectl,
        &binary,
        &lab.state_dir().join("kube-network-policies"),
    )?;
    let setup = Setup {
        binary: binary.clone(),
        token,
        ca,
        api,
        client_netns: client.netns.clone(),
        server_node: server.node.clone(),
        server: SocketAddrV4::new(server.ip, SERVE_PORT),
        kubectl,
    };

    let server_node_netns = lab.node(&server.node)?.netns.clone();
    let knp_runs = nft_queue_supported(&server_node_netns);
    let enforcers: Vec<Enforcer> = Enforcer::ALL
        .into_iter()
        .filter(|e| knp_runs || *e != Enforcer::Knp)
        .collect();
    if !knp_runs {
        eprintln!(
            "[{}] this kernel has no nft queue expression: kube-network-policies cannot \
             enforce here; measuring fabric and no enforcement only",
            opts.name
        );
    }
    let at = |e: Enforcer| enforcers.iter().position(|x| *x == e);
    let n = enforcers.len();
    let (mut gbps, mut rate) = (vec![Vec::new(); n], vec![Vec::new(); n]);
    let (mut command_ms, mut enforced_ms) = (vec![Vec::new(); n], vec![Vec::new(); n]);
    let mut knp_rss = Vec::new();
    let mut fabric_rss = Vec::new();
    let per_rep = opts.changes.div_ceil(opts.reps);
    let iperf_log = lab.state_dir().join("iperf3-server.log");
    let (mut knp, mut current) = (None, None);
    for rep in 0..opts.reps {
        for k in 0..n {
            let i = (rep + k) % n;
            let e = enforcers[i];
            switch(&mut lab, &setup, &mut knp, &mut current, e, opts.policies)
                .with_context(|| format!("switching to {}", e.label()))?;
            let todo = opts.changes.saturating_sub(rep * per_rep).min(per_rep);
            if e != Enforcer::Off {
                wait_conntrack_drained(&server_node_netns)?;
                for _ in 0..todo {
                    let (c, t) = timed_change(&setup)
                        .with_context(|| format!("a policy change with {}", e.label()))?;
                    command_ms[i].push(c);
                    enforced_ms[i].push(t);
                }
            }
            let (r, _) = crate::iperf::run_with_retries(
                3,
                &server.netns,
                server.ip,
                &client.netns,
                1,
                opts.seconds,
                &iperf_log,
            )
            .with_context(|| format!("iperf3 with {}", e.label()))?;
            let r = crate::iperf::to_run(&r);
            let per_second = enforcement::connect_rate(
                &agent,
                &client.netns,
                setup.server,
                opts.seconds,
                opts.concurrency,
            )
            .with_context(|| format!("connect-rate with {}", e.label()))?;
            gbps[i].push(r.gbps);
            rate[i].push(per_second);
            match (e, &knp) {
                (Enforcer::Knp, Some(k)) => knp_rss = k.rss_mib(),
                (Enforcer::Fabric, _) => fabric_rss = crate::control::rss_mib(&lab),
                _ => {}
            }
            eprintln!(
                "[{}] rep {}/{} {:<22} {:6.2} Gbit/s {:8.0} connections/s, policy change to \
                 enforced p50 {:.1} ms",
                opts.name,
                rep + 1,
                opts.reps,
                e.label(),
                r.gbps,
                per_second,
                median(&enforced_ms[i]),
            );
        }
    }
    drop(knp);
    let after = crate::Snapshot::take(&opts.name);
    lab.down().context("tearing the lab down")?;

    let off = at(Enforcer::Off).map_or(f64::NAN, |i| median(&rate[i]));
    let rows: Vec<Vec<String>> = enforcers
        .iter()
        .enumerate()
        .map(|(i, e)| {
            vec![
                e.label().to_string(),
                format!("{:.2}", median(&gbps[i])),
                join(&gbps[i], 2),
                format!("{:.0}", median(&rate[i])),
                join(&rate[i], 0),
                format!("{:.3}", median(&rate[i]) / off),
            ]
        })
        .collect();
    let (fabric, knp_at) = (
        at(Enforcer::Fabric).expect("always measured"),
        at(Enforcer::Knp),
    );
    let mut body = String::new();
    writeln!(
        body,
        "One 2-node Kubernetes-mode lab (vxlan; kube-apiserver, kube-controller-manager and etcd \
         built from their pinned modules), a client pod on node1 and a server pod on node2 \
         (namespace `{NAMESPACE}`), {} NetworkPolicies in the API (the set of `fabric-bench \
         policy`: one isolates the server for ingress and admits the client, the rest select \
         other workloads of the namespace). The conditions, interleaved in rotating order over \
         {} repetition(s): **fabric** (fabricd enforcing); **kube-network-policies** ({}, \
         `{}`, built by `bench/anchors/build.sh kube-network-policies`) in both node \
         namespaces as its DaemonSet runs it (`--hostname-override=NODE \
         --nfqueue-id={QUEUE_ID}`, its install.yaml's RBAC and a token of its ServiceAccount), \
         every fabricd with `--network-policy=false`; **no enforcement** (fabricd with \
         `--network-policy=false` only). Per condition: iperf3 TCP, 1 stream, {} s, client → \
         server; {} s of `fabric-lab connect-rate` ({} concurrent connectors; connect, read the \
         server's line, close) to the isolated server; before those, where something enforces \
         and once the server node's conntrack holds under {CONNTRACK_QUIET} entries (the \
         previous connect-rate run's expire in 10 s), {} policy change(s): the server's policy \
         rewritten with `kubectl apply -f -` to admit only a pod that does not exist, timed \
         from just before the command until a new connection from the client pod is refused \
         (probes of fresh connections with a {} ms connect timeout, 1 ms apart; the first \
         refused one counts once the next is refused too), then restored untimed. {}\n",
        opts.policies,
        opts.reps,
        upstream::pin(upstream::KUBE_NETWORK_POLICIES.version_key)?,
        binary.display(),
        opts.seconds,
        opts.seconds,
        opts.concurrency,
        per_rep,
        PROBE_TIMEOUT.as_millis(),
        before.describe(&after),
    )?;
    body.push_str(&markdown_table(
        &[
            "enforcer",
            "iperf3 Gbit/s (median)",
            "runs",
            "connections/s (median)",
            "runs",
            "÷ no enforcement",
        ],
        &rows,
    ));
    writeln!(body)?;
    let ops: Vec<(String, Vec<f64>)> = [Some(fabric), knp_at]
        .into_iter()
        .flatten()
        .flat_map(|i| {
            let who = enforcers[i].label();
            [
                (format!("{who}: kubectl apply"), command_ms[i].clone()),
                (
                    format!("{who}: policy change to enforced"),
                    enforced_ms[i].clone(),
                ),
            ]
        })
        .collect();
    let latency: Vec<(&str, &[f64])> = ops
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    body.push_str(&report::latency_table(&latency));
    writeln!(body)?;
    let mib = |v: &[f64]| {
        if v.is_empty() {
            "n/a".to_string()
        } else {
            format!("{:.1} MiB", median(v))
        }
    };
    if let Some(k) = knp_at {
        let ratio = median(&rate[fabric]) / median(&rate[k]);
        let verdict = if ratio >= RATE_TARGET {
            "meets"
        } else {
            "MISSES"
        };
        writeln!(
            body,
            "- New connections/s to the isolated server, fabric ÷ kube-network-policies: \
             {:.0} / {:.0} = {ratio:.3}× — {verdict} the target ≥ {RATE_TARGET}×",
            median(&rate[fabric]),
            median(&rate[k]),
        )?;
        writeln!(
            body,
            "- Policy change to enforced, p50: fabric {:.1} ms, kube-network-policies {:.1} ms",
            report::quantile(&enforced_ms[fabric], 0.5),
            report::quantile(&enforced_ms[k], 0.5),
        )?;
    } else {
        writeln!(
            body,
            "- kube-network-policies not measured: this kernel has no nft `queue` expression \
             (`CONFIG_NFT_QUEUE` unset; `nft --check` of a table with a `queue` statement fails \
             in the node namespace), and kube-network-policies installs its NFQUEUE rules with \
             nftables only, so every sync of its table fails and it enforces nothing. fabric \
             falls back to the xtables NFQUEUE target on such kernels. The target (fabric ≥ \
             {RATE_TARGET}× its new connections/s) needs a kernel with nft_queue; fabric's own \
             figures are above. Policy change to enforced, p50: fabric {:.1} ms.",
            report::quantile(&enforced_ms[fabric], 0.5),
        )?;
    }
    writeln!(
        body,
        "- Resident memory (median per node): fabricd {} (the whole node agent), \
         kube-network-policies {}",
        mib(&fabric_rss),
        mib(&knp_rss),
    )?;
    Ok(Section {
        title: "NetworkPolicy: fabric vs kube-network-policies, new connections/s and policy \
                change to enforced"
            .into(),
        date: crate::today(),
        command: format!(
            "fabric-bench kube-network-policies --reps {} --seconds {} --policies {} \
             --concurrency {} --changes {} --name {}",
            opts.reps, opts.seconds, opts.policies, opts.concurrency, opts.changes, opts.name
        ),
        machine: crate::machine(),
        body,
    })
}

fn join(v: &[f64], decimals: usize) -> String {
    v.iter()
        .map(|x| format!("{x:.decimals$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tightened_policy_admits_nobody_the_restored_one_the_client() {
        let parse = |text: &str| -> policy::NetworkPolicy {
            let doc = text.trim_start_matches("---\n");
            serde_yaml::from_str(doc).expect("YAML")
        };
        let (allow, deny) = (parse(&server_policy(true)), parse(&server_policy(false)));
        assert_eq!(allow.metadata.name, deny.metadata.name);
        let mut cluster = policy::Cluster::new();
        cluster.upsert_namespace(NAMESPACE, Default::default());
        let pod = |name: &str, ip: [u8; 4]| policy::Pod {
            key: policy::PodKey::new(NAMESPACE, name),
            labels: [("app".to_string(), name.to_string())].into(),
            ip: ip.into(),
            ipv6: None,
            ports: vec![],
        };
        cluster.upsert_pod(pod("client", [10, 244, 1, 2]));
        cluster.upsert_pod(pod("server", [10, 244, 2, 2]));
        let admitted = |cluster: &policy::Cluster| {
            cluster
                .decide(
                    cluster.endpoint(std::net::Ipv4Addr::new(10, 244, 1, 2)),
                    cluster.endpoint(std::net::Ipv4Addr::new(10, 244, 2, 2)),
                    policy::Protocol::Tcp,
                    SERVE_PORT,
                )
                .allowed
        };
        cluster.upsert_policy(&allow).unwrap();
        assert!(admitted(&cluster));
        cluster.upsert_policy(&deny).unwrap();
        assert!(!admitted(&cluster), "the same policy, rewritten, refuses");
    }

    #[test]
    fn rbac_is_install_yaml_without_its_daemonset() {
        let install = "kind: ClusterRole\nmetadata:\n  name: a\n---\nkind: ClusterRoleBinding\n\
                       ---\n---\napiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: d\n\
                       ---\napiVersion: v1\nkind: ServiceAccount\n";
        let rbac = rbac_documents(install);
        assert_eq!(
            rbac,
            "---\nkind: ClusterRole\nmetadata:\n  name: a\n---\nkind: ClusterRoleBinding\n\
             ---\napiVersion: v1\nkind: ServiceAccount\n"
        );
    }

    #[test]
    fn apiserver_url() {
        assert_eq!(
            host_port("https://172.30.0.3:6443"),
            Some(("172.30.0.3".into(), "6443".into()))
        );
        assert_eq!(
            host_port("https://[fd00::1]:6443/"),
            Some(("fd00::1".into(), "6443".into()))
        );
        assert_eq!(host_port("http://x:1"), None);
    }
}
