//! `fabric-bench services`: what a Kubernetes Service costs on fabric's data path, on one
//! 3-node Kubernetes-mode vxlan lab with the real kube-proxy (nftables) on every node and the
//! real CoreDNS behind 10.96.0.10. A server pod and a client pod (lab-attached, labelled, on two
//! different nodes, the client on a node without CoreDNS) and a selector ClusterIP Service in
//! front of the server. Measured in one run, interleaved per repetition (the order of pod IP
//! and ClusterIP alternates between repetitions):
//!
//! - **throughput**: iperf3 TCP client → server pod IP vs client → ClusterIP, 1 and 4 streams;
//! - **new TCP connections/s**: `fabric-lab connect-rate` against `fabric-lab serve` in the
//!   server pod, to the pod IP vs to the ClusterIP (kube-proxy's DNAT and conntrack on every
//!   new connection);
//! - **DNS lookup latency**: A queries for the Service's FQDN sent to 10.96.0.10 from the
//!   client pod's namespace by the bench itself (a hand-built query over a UDP socket opened in
//!   the pod's netns, one at a time, each timed from send to its answer; 1 s timeout, no
//!   retries), p50/p90/p99/max and the failures.
//!
//! Every server is bounded (`timeout`), every client has its duration; the lab is torn down at
//! the end, and on error by the lab's guard.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use fabric_lab::demo::{parse_iperf, IperfSummary};
use fabric_lab::process::{self, Cmd};
use fabric_lab::{Backend, Datastore, Lab, LabSpec, PodSpec};

use crate::enforcement::StopOnDrop;
use crate::report::{markdown_table, median, quantile, Run, Section};

/// The Kubernetes namespace of the measured pods and the Service.
const NAMESPACE: &str = "bench";

/// The Service's name (and the server pod's `app` label).
const SERVICE: &str = "bench-server";

/// iperf3's port, on the pod and on the Service.
const IPERF_PORT: u16 = 5201;

/// `fabric-lab serve`'s port, on the pod and on the Service.
const SERVE_PORT: u16 = 80;

/// The cluster DNS address (CoreDNS's Service).
const CLUSTER_DNS: Ipv4Addr = fabric_lab::kube::dns::CLUSTER_DNS_IP;

/// How long one DNS lookup may take before it counts as timed out.
const DNS_TIMEOUT: Duration = Duration::from_secs(1);

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Lab name.
    pub name: String,
    /// Interleaved repetitions.
    pub reps: usize,
    /// Seconds per iperf3 run and per connection-rate run.
    pub seconds: u32,
    /// Connections `connect-rate` keeps in flight at once.
    pub concurrency: usize,
    /// DNS lookups in all (spread evenly over the repetitions).
    pub lookups: usize,
}

/// Where the client sends: the server pod's own address or the Service's ClusterIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Pod,
    Service,
}

impl Target {
    const ALL: [Target; 2] = [Target::Pod, Target::Service];

    fn label(self) -> &'static str {
        match self {
            Target::Pod => "pod IP (direct)",
            Target::Service => "ClusterIP (kube-proxy)",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The measured pods and the Service.
struct Setup {
    client_netns: String,
    server_netns: String,
    pod_ip: Ipv4Addr,
    cluster_ip: Ipv4Addr,
    agent: std::path::PathBuf,
    iperf3: std::path::PathBuf,
    state_dir: std::path::PathBuf,
}

impl Setup {
    fn ip(&self, target: Target) -> Ipv4Addr {
        match target {
            Target::Pod => self.pod_ip,
            Target::Service => self.cluster_ip,
        }
    }
}

/// The ClusterIP Service in front of the server pod.
fn service_manifest() -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {SERVICE}\n  namespace: {NAMESPACE}\n\
         spec:\n  type: ClusterIP\n  selector:\n    app: {SERVICE}\n  ports:\n  \
         - name: iperf\n    port: {IPERF_PORT}\n    targetPort: {IPERF_PORT}\n    protocol: TCP\n  \
         - name: http\n    port: {SERVE_PORT}\n    targetPort: {SERVE_PORT}\n    protocol: TCP\n"
    )
}

/// The Service's FQDN.
fn service_fqdn() -> String {
    format!("{SERVICE}.{NAMESPACE}.svc.cluster.local")
}

/// Runs the benchmark and returns its RESULTS.md section.
pub fn run(opts: &Options) -> Result<Section> {
    ensure!(opts.reps >= 1, "--reps must be at least 1");
    ensure!(opts.seconds >= 1, "--seconds must be at least 1");
    ensure!(opts.concurrency >= 1, "--concurrency must be at least 1");
    ensure!(
        opts.lookups >= opts.reps,
        "--lookups must be at least --reps"
    );
    let iperf3 = process::which("iperf3").context("iperf3 is not installed")?;
    let before = crate::Snapshot::take(&opts.name);

    let mut spec = LabSpec::new(&opts.name);
    spec.nodes = 3;
    spec.pods_per_node = 0;
    spec.backend = Backend::Vxlan;
    spec.datastore = Datastore::Kubernetes;
    spec.services = true;
    spec.demo = false;
    let proxy_mode = spec.proxy_mode;
    let mut lab = Lab::up(spec).context("bringing up the 3-node Kubernetes-mode vxlan lab")?;

    // CoreDNS's node(s); the client goes elsewhere, the server on a third node if possible.
    let dns_nodes: Vec<String> = lab
        .kubelet_pods()
        .into_iter()
        .filter(|(_, p)| p.namespace == "kube-system" && p.name.starts_with("coredns"))
        .map(|(node, _)| node)
        .collect();
    let nodes: Vec<String> = lab.nodes().iter().map(|n| n.name.clone()).collect();
    let client_node = nodes
        .iter()
        .find(|n| !dns_nodes.contains(n))
        .unwrap_or(&nodes[0])
        .clone();
    let server_node = nodes
        .iter()
        .find(|n| **n != client_node && !dns_nodes.contains(n))
        .or_else(|| nodes.iter().find(|n| **n != client_node))
        .context("no second node")?
        .clone();
    let server = lab.add_pod(
        &server_node,
        PodSpec::new("server")
            .namespace(NAMESPACE)
            .label("app", SERVICE),
    )?;
    let client = lab.add_pod(
        &client_node,
        PodSpec::new("client")
            .namespace(NAMESPACE)
            .label("app", "bench-client"),
    )?;
    lab.kubectl()?
        .run_stdin(&["apply", "-f", "-"], service_manifest().into_bytes())
        .context("creating the Service")?;
    let cluster_ip: Ipv4Addr = lab
        .kubectl()?
        .run(&[
            "get",
            "svc",
            SERVICE,
            "-n",
            NAMESPACE,
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])?
        .trim()
        .parse()
        .context("the Service's ClusterIP")?;
    let endpoints = lab
        .wait_ready_endpoints(
            NAMESPACE,
            &format!("kubernetes.io/service-name={SERVICE}"),
            1,
            Duration::from_secs(60),
        )
        .context("the lab-attached server pod did not become the Service's endpoint")?;
    ensure!(
        endpoints == [server.ip.to_string()],
        "the Service's endpoints are {endpoints:?}, the server pod is {}",
        server.ip
    );

    let setup = Setup {
        client_netns: client.netns.clone(),
        server_netns: server.netns.clone(),
        pod_ip: server.ip,
        cluster_ip,
        agent: lab.state().bin_dir.join("fabric-lab"),
        iperf3,
        state_dir: lab.state_dir().to_path_buf(),
    };

    // The serve listener, bounded by `timeout` to a generous estimate of the whole run.
    let per_rep = 4 * (u64::from(opts.seconds) + 25) + 2 * (u64::from(opts.seconds) + 30) + 30;
    let serve_bound = per_rep * opts.reps as u64 + 120;
    let serving = Cmd::in_netns(&setup.server_netns, "timeout")
        .arg(serve_bound.to_string())
        .arg(&setup.agent)
        .args(["serve", "--port", &SERVE_PORT.to_string()])
        .spawn_daemon(&setup.state_dir.join("serve.log"))
        .context("starting fabric-lab serve in the server pod")?;
    let _stop = StopOnDrop(serving);

    // Until kube-proxy has programmed the Service and the name resolves.
    for target in Target::ALL {
        wait_tcp(
            &setup.client_netns,
            SocketAddrV4::new(setup.ip(target), SERVE_PORT),
        )
        .with_context(|| format!("{} does not answer", target.label()))?;
    }
    let fqdn = service_fqdn();
    let warmup = dns_batch(&setup.client_netns, &fqdn, cluster_ip, 1, 0)?;
    if warmup.latencies_ms.is_empty() {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let b = dns_batch(&setup.client_netns, &fqdn, cluster_ip, 1, 1)?;
            if !b.latencies_ms.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                bail!("{fqdn} does not resolve at {CLUSTER_DNS}: {:?}", b.failures);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    let streams = [1u32, 4];
    // gbps[s][t], retransmits[s][t], rate[t]
    let mut runs: Vec<Vec<Vec<Run>>> = vec![vec![Vec::new(); 2]; streams.len()];
    let mut rate: Vec<Vec<f64>> = vec![Vec::new(); 2];
    let mut retried = Vec::new();
    let mut dns = DnsBatch::default();
    let per_batch = opts.lookups / opts.reps;
    for rep in 0..opts.reps {
        let order = if rep % 2 == 0 {
            [Target::Pod, Target::Service]
        } else {
            [Target::Service, Target::Pod]
        };
        for (s, &p) in streams.iter().enumerate() {
            for target in order {
                let (summary, failures) = iperf_with_retries(3, &setup, target, p, opts.seconds)
                    .with_context(|| {
                        format!("rep {}, P{p}, {} (iperf3)", rep + 1, target.label())
                    })?;
                retried.extend(
                    failures
                        .into_iter()
                        .map(|f| format!("rep {} P{p} {}: {f}", rep + 1, target.label())),
                );
                let r = crate::iperf::to_run(&summary);
                eprintln!(
                    "[{}] rep {}/{} iperf3 P{p} {:<24} {:6.2} Gbit/s",
                    opts.name,
                    rep + 1,
                    opts.reps,
                    target.label(),
                    r.gbps
                );
                runs[s][target.index()].push(r);
            }
        }
        for target in order {
            let per_second = connect_rate(&setup, target, opts)
                .with_context(|| format!("rep {}, connect-rate to {}", rep + 1, target.label()))?;
            eprintln!(
                "[{}] rep {}/{} connect-rate {:<24} {:8.0} connections/s",
                opts.name,
                rep + 1,
                opts.reps,
                target.label(),
                per_second
            );
            rate[target.index()].push(per_second);
        }
        let count = if rep + 1 == opts.reps {
            opts.lookups - per_batch * (opts.reps - 1)
        } else {
            per_batch
        };
        let batch = dns_batch(
            &setup.client_netns,
            &fqdn,
            cluster_ip,
            count,
            (rep as u16).wrapping_mul(10_007),
        )?;
        eprintln!(
            "[{}] rep {}/{} DNS {} lookups: p50 {:.3} ms, {} failed",
            opts.name,
            rep + 1,
            opts.reps,
            count,
            quantile(&batch.latencies_ms, 0.5),
            batch.failures.len()
        );
        dns.latencies_ms.extend(batch.latencies_ms);
        dns.failures.extend(batch.failures);
    }
    drop(_stop);
    lab.down().context("tearing the lab down")?;
    // After the lab is gone, so that it is not counted as another workload.
    let after = crate::Snapshot::take(&opts.name);

    let mut body = String::new();
    writeln!(
        body,
        "One 3-node Kubernetes-mode lab (vxlan; kube-apiserver, kube-controller-manager, \
         kube-scheduler, kube-proxy in {proxy_mode} mode on every node, CoreDNS behind \
         {CLUSTER_DNS} run by the lab's kubelet role on {dns}). A server pod on {server_node} \
         and a client pod on {client_node} (lab-attached, namespace `{NAMESPACE}`), and a \
         selector ClusterIP Service `{SERVICE}` ({cluster_ip}, ports {IPERF_PORT} and \
         {SERVE_PORT}) whose only endpoint is the server pod ({pod_ip}). {reps} repetition(s), \
         each: iperf3 TCP {secs} s client → pod IP and → ClusterIP at 1 then 4 streams; then \
         {secs} s of `fabric-lab connect-rate` ({conc} concurrent connectors; connect, read the \
         server's line, close) against `fabric-lab serve` to each; then a batch of DNS lookups. \
         The order of pod IP and ClusterIP alternates between repetitions. Gbit/s is the \
         receiver's. {conditions}\n",
        dns = if dns_nodes.is_empty() {
            "an unknown node".to_string()
        } else {
            dns_nodes.join(", ")
        },
        pod_ip = setup.pod_ip,
        reps = opts.reps,
        secs = opts.seconds,
        conc = opts.concurrency,
        conditions = before.describe(&after),
    )?;

    let mut rows = Vec::new();
    for (s, &p) in streams.iter().enumerate() {
        let pod_median = median(&gbps(&runs[s][0]));
        for target in Target::ALL {
            let v = gbps(&runs[s][target.index()]);
            let retrans: Vec<f64> = runs[s][target.index()]
                .iter()
                .map(|r| r.retransmits as f64)
                .collect();
            rows.push(vec![
                target.label().to_string(),
                format!("P{p}"),
                v.len().to_string(),
                format!("{:.2}", median(&v)),
                format!("{:.2}", v.iter().cloned().fold(f64::INFINITY, f64::min)),
                format!("{:.2}", v.iter().cloned().fold(f64::NEG_INFINITY, f64::max)),
                format!("{:.3}", median(&v) / pod_median),
                format!("{:.0}", median(&retrans)),
            ]);
        }
    }
    body.push_str(&markdown_table(
        &[
            "iperf3 to",
            "streams",
            "runs",
            "median Gbit/s",
            "min",
            "max",
            "÷ pod IP",
            "retransmits (median)",
        ],
        &rows,
    ));
    writeln!(body)?;

    let rate_rows: Vec<Vec<String>> = Target::ALL
        .iter()
        .map(|t| {
            let v = &rate[t.index()];
            vec![
                t.label().to_string(),
                format!("{:.0}", median(v)),
                v.iter()
                    .map(|x| format!("{x:.0}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                format!("{:.3}", median(v) / median(&rate[0])),
            ]
        })
        .collect();
    body.push_str(&markdown_table(
        &[
            "connect-rate to",
            "connections/s (median)",
            "runs",
            "÷ pod IP",
        ],
        &rate_rows,
    ));
    writeln!(body)?;

    let l = &dns.latencies_ms;
    let q = |x: f64| format!("{:.3}", quantile(l, x));
    let timeouts = dns
        .failures
        .iter()
        .filter(|f| f.starts_with("timeout"))
        .count();
    body.push_str(&markdown_table(
        &[
            "DNS A lookup",
            "lookups",
            "answered",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "failed",
            "timed out",
        ],
        &[vec![
            format!("`{fqdn}` @ {CLUSTER_DNS}"),
            opts.lookups.to_string(),
            l.len().to_string(),
            q(0.5),
            q(0.9),
            q(0.99),
            q(1.0),
            (dns.failures.len() - timeouts).to_string(),
            timeouts.to_string(),
        ]],
    ));
    writeln!(body)?;
    writeln!(
        body,
        "DNS: the bench sends each query itself from a UDP socket opened in the client pod's \
         network namespace (one at a time, recursion desired, {} s timeout, no retry) and times \
         it from send to the answer with the query's id; an answer counts if its rcode is \
         NOERROR and its A record is the Service's ClusterIP. The queries go to the ClusterIP \
         {CLUSTER_DNS}, so kube-proxy's DNAT takes them across the fabric to CoreDNS on {}; \
         CoreDNS answers all but the first lookup of each batch from its cache (`cache 30`).\n",
        DNS_TIMEOUT.as_secs(),
        if dns_nodes.is_empty() {
            "its node".to_string()
        } else {
            dns_nodes.join(", ")
        },
    )?;
    if !dns.failures.is_empty() {
        let mut shown: Vec<&str> = dns.failures.iter().map(String::as_str).collect();
        shown.dedup();
        shown.truncate(5);
        writeln!(body, "DNS failures (first kinds): {}.\n", shown.join("; "))?;
    }
    let ratio = |s: usize| median(&gbps(&runs[s][1])) / median(&gbps(&runs[s][0]));
    writeln!(
        body,
        "- Throughput through the Service ÷ to the pod IP, medians: P1 {:.3}×, P4 {:.3}×",
        ratio(0),
        ratio(1)
    )?;
    writeln!(
        body,
        "- New connections/s through the Service ÷ to the pod IP, medians: {:.3}×",
        median(&rate[1]) / median(&rate[0])
    )?;
    writeln!(
        body,
        "- DNS lookup from a pod on {client_node}: p50 {} ms, p99 {} ms, max {} ms; {} of {} \
         failed ({timeouts} timed out)",
        q(0.5),
        q(0.99),
        q(1.0),
        dns.failures.len(),
        opts.lookups
    )?;
    if !retried.is_empty() {
        writeln!(body, "- Retried iperf3 attempts: {}", retried.join("; "))?;
    }
    Ok(Section {
        title: "Services: pod-to-Service vs pod-to-pod throughput and connections/s, DNS latency"
            .into(),
        date: crate::today(),
        command: format!(
            "fabric-bench services --reps {} --seconds {} --concurrency {} --lookups {} --name {}",
            opts.reps, opts.seconds, opts.concurrency, opts.lookups, opts.name
        ),
        machine: crate::machine(),
        body,
    })
}

fn gbps(runs: &[Run]) -> Vec<f64> {
    runs.iter().map(|r| r.gbps).collect()
}

/// Waits up to 30 s until a TCP connection from `netns` to `to` succeeds.
fn wait_tcp(netns: &str, to: SocketAddrV4) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = fabric_lab::netns::in_netns(netns, move || {
            TcpStream::connect_timeout(&to.into(), Duration::from_secs(1)).is_ok()
        })?;
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no TCP connection from {netns} to {to} in 30 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One iperf3 run: a one-off server (`timeout … iperf3 -s -1`) in the server pod, the client
/// (`-J -t`) in the client pod to `target`. Errors carry the client's error and the server log.
fn iperf_once(setup: &Setup, target: Target, streams: u32, seconds: u32) -> Result<IperfSummary> {
    let log = setup.state_dir.join("iperf3-server.log");
    let _ = std::fs::remove_file(&log);
    let bound = u64::from(seconds) + 30;
    let server = Cmd::in_netns(&setup.server_netns, "timeout")
        .arg(bound.to_string())
        .arg(&setup.iperf3)
        .args(["-s", "-1", "-p", &IPERF_PORT.to_string()])
        .spawn_daemon(&log)
        .context("starting the iperf3 server")?;
    let _stop = StopOnDrop(server);
    let to = setup.ip(target).to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let output = Cmd::in_netns(&setup.client_netns, &setup.iperf3)
            .args(["-c", &to, "-J", "-p", &IPERF_PORT.to_string()])
            .args(["-t", &seconds.to_string(), "-P", &streams.to_string()])
            .timeout(Duration::from_secs(u64::from(seconds) + 20))
            .output()?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let report: serde_json::Value =
            serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
        let error = report["error"].as_str().unwrap_or_default().to_string();
        if error.contains("refused") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            bail!(
                "iperf3 client exited with {}: {}; server log: {}",
                process::describe_status(output.status),
                if error.is_empty() {
                    stderr.trim().to_string()
                } else {
                    error
                },
                process::tail(&log, 5)
            );
        }
        return parse_iperf(report);
    }
}

/// [`iperf_once`] up to `attempts` times; the summary and the failed attempts' errors.
fn iperf_with_retries(
    attempts: usize,
    setup: &Setup,
    target: Target,
    streams: u32,
    seconds: u32,
) -> Result<(IperfSummary, Vec<String>)> {
    let mut failures = Vec::new();
    for attempt in 1..=attempts {
        match iperf_once(setup, target, streams, seconds) {
            Ok(summary) => return Ok((summary, failures)),
            Err(e) => {
                eprintln!(
                    "iperf3 attempt {attempt}/{attempts} to {} failed: {e:#}",
                    target.label()
                );
                failures.push(format!("{e:#}"));
            }
        }
    }
    bail!(
        "iperf3 to {} failed {attempts} times: {}",
        target.label(),
        failures.join("; ")
    )
}

/// `fabric-lab connect-rate` from the client pod to `target`'s serve port; connections/s.
fn connect_rate(setup: &Setup, target: Target, opts: &Options) -> Result<f64> {
    let to = SocketAddrV4::new(setup.ip(target), SERVE_PORT);
    crate::enforcement::connect_rate(
        &setup.agent,
        &setup.client_netns,
        to,
        opts.seconds,
        opts.concurrency,
    )
}

/// What a batch of DNS lookups found.
#[derive(Debug, Default)]
struct DnsBatch {
    /// Answered lookups, ms from send to answer.
    latencies_ms: Vec<f64>,
    /// Why the others failed (`timeout`, `rcode N`, `no answer`, socket errors).
    failures: Vec<String>,
}

/// `count` sequential A lookups of `name` at the cluster DNS from inside `netns`; query ids
/// start at `first_id`.
fn dns_batch(
    netns: &str,
    name: &str,
    expect: Ipv4Addr,
    count: usize,
    first_id: u16,
) -> Result<DnsBatch> {
    let name = name.to_string();
    fabric_lab::netns::in_netns(netns, move || -> Result<DnsBatch> {
        let socket = UdpSocket::bind("0.0.0.0:0").context("binding a UDP socket")?;
        socket
            .connect(SocketAddrV4::new(CLUSTER_DNS, 53))
            .context("connecting the UDP socket")?;
        let mut batch = DnsBatch::default();
        let mut buf = [0u8; 1500];
        for i in 0..count {
            let id = first_id.wrapping_add(i as u16);
            let query = dns_query(id, &name);
            let start = Instant::now();
            if let Err(e) = socket.send(&query) {
                batch.failures.push(format!("send: {e}"));
                continue;
            }
            let deadline = start + DNS_TIMEOUT;
            let outcome = loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break Err("timeout".to_string());
                }
                socket.set_read_timeout(Some(left)).ok();
                match socket.recv(&mut buf) {
                    Ok(n) => match dns_answer(&buf[..n], id) {
                        // A late answer to an earlier query: keep waiting for ours.
                        None => continue,
                        Some(result) => break result,
                    },
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        break Err("timeout".to_string())
                    }
                    Err(e) => break Err(format!("recv: {e}")),
                }
            };
            match outcome {
                Ok(addr) if addr == expect => {
                    batch.latencies_ms.push(start.elapsed().as_secs_f64() * 1e3)
                }
                Ok(addr) => batch
                    .failures
                    .push(format!("answered {addr}, not {expect}")),
                Err(why) => batch.failures.push(why),
            }
        }
        Ok(batch)
    })?
}

/// A DNS query for `name` IN A, recursion desired.
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00]); // RD
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // QDCOUNT 1
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]); // root, QTYPE A, QCLASS IN
    q
}

/// Judges a reply: `None` if it is not the answer to query `id`; else, for NOERROR with an A
/// record among the answers, `Ok` with the first A record's address.
fn dns_answer(reply: &[u8], id: u16) -> Option<Result<Ipv4Addr, String>> {
    if reply.len() < 12 || u16::from_be_bytes([reply[0], reply[1]]) != id || reply[2] & 0x80 == 0 {
        return None;
    }
    let rcode = reply[3] & 0x0f;
    let questions = u16::from_be_bytes([reply[4], reply[5]]);
    let answers = u16::from_be_bytes([reply[6], reply[7]]);
    Some(match (rcode, answers) {
        (0, n) if n > 0 => first_a(reply, questions).ok_or_else(|| "malformed answer".into()),
        (0, _) => Err("no answer".into()),
        (r, _) => Err(format!("rcode {r}")),
    })
}

/// The address of the first A record after `questions` questions (CNAMEs skipped).
fn first_a(msg: &[u8], questions: u16) -> Option<Ipv4Addr> {
    // A name: labels up to the root, or up to a compression pointer (2 bytes).
    let skip_name = |mut at: usize| -> Option<usize> {
        loop {
            let len = *msg.get(at)?;
            match len {
                0 => return Some(at + 1),
                l if l & 0xc0 == 0xc0 => return Some(at + 2),
                l => at += 1 + l as usize,
            }
        }
    };
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(at)? + 4;
    }
    let answers = u16::from_be_bytes([msg[6], msg[7]]);
    for _ in 0..answers {
        at = skip_name(at)?;
        let header = msg.get(at..at + 10)?;
        let rtype = u16::from_be_bytes([header[0], header[1]]);
        let len = u16::from_be_bytes([header[8], header[9]]) as usize;
        let data = msg.get(at + 10..at + 10 + len)?;
        if rtype == 1 && len == 4 {
            return Some(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        at += 10 + len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_a_well_formed_a_question() {
        let q = dns_query(0x1234, "a.bc.");
        assert_eq!(
            q,
            [0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 2, b'b', b'c', 0, 0, 1, 0, 1]
        );
    }

    #[test]
    fn answers_are_judged_by_id_qr_rcode_and_count() {
        let mut reply = dns_query(7, "x");
        reply[2] |= 0x80;
        assert_eq!(dns_answer(&reply, 8), None, "another query's id");
        assert_eq!(dns_answer(&reply, 7), Some(Err("no answer".into())));
        reply[7] = 1;
        assert_eq!(
            dns_answer(&reply, 7),
            Some(Err("malformed answer".into())),
            "no record follows"
        );
        // A CNAME (pointer to the question's name), then the A record.
        reply.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 30, 0, 2, 0xc0, 12]);
        reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 10, 96, 0, 10]);
        reply[7] = 2;
        assert_eq!(
            dns_answer(&reply, 7),
            Some(Ok(Ipv4Addr::new(10, 96, 0, 10)))
        );
        reply[3] |= 3;
        assert_eq!(dns_answer(&reply, 7), Some(Err("rcode 3".into())));
        assert_eq!(
            dns_answer(&dns_query(7, "x"), 7),
            None,
            "a query, not a reply"
        );
        assert_eq!(dns_answer(&[0; 5], 0), None);
    }
}
