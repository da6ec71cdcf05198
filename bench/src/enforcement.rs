//! `fabric-bench policy`: what NetworkPolicy enforcement costs on the wire. Two lab nodes
//! (vxlan), a client pod on node1 and a server pod on node2 (namespace `bench`), measured under
//! four conditions, interleaved, in rotating order per repetition:
//!
//! - **off**: every fabricd runs with `--network-policy=false` (no queue rule at all);
//! - **on, no policies**: enforcement on, nothing isolated (nothing waits in the queue);
//! - **on, N policies, server isolated**: N NetworkPolicies in etcd (default 1,000), one of
//!   which isolates the server for ingress and admits the client; the rest are realistic
//!   policies for other workloads of the same namespace, so the classifier holds all of them;
//! - **on, N policies, both isolated**: the same with one of them isolating the client for
//!   egress too, so each new connection is judged on both nodes.
//!
//! Each condition gets one iperf3 run (TCP, one stream, client → server) and one
//! new-connections-per-second run (`fabric-lab connect-rate`: connect, read the server's
//! line, close, as fast as possible, `--concurrency` at a time, against `fabric-lab serve`).

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use fabric_lab::process::{Cmd, Daemon};
use fabric_lab::{demo, Backend, Lab, LabSpec, PodSpec};

use crate::report::{markdown_table, median, Section};

/// Throughput with N policies must be at least this fraction of throughput with none.
pub const THROUGHPUT_TARGET: f64 = 0.98;

/// New connections/s with enforcement must be at least this fraction of those without.
pub const RATE_TARGET: f64 = 0.8;

/// The namespace of the measured pods and of the policies.
const NAMESPACE: &str = "bench";

/// The port `fabric-lab serve` listens on in the server pod.
const SERVE_PORT: u16 = 80;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Lab name.
    pub name: String,
    /// Interleaved repetitions.
    pub reps: usize,
    /// Seconds per iperf3 run and per connection-rate run.
    pub seconds: u32,
    /// Policies in the "on, N policies" condition.
    pub policies: usize,
    /// Connections `connect-rate` keeps in flight at once.
    pub concurrency: usize,
}

/// A measured condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Condition {
    Off,
    Empty,
    Server,
    Both,
}

impl Condition {
    const ALL: [Condition; 4] = [
        Condition::Off,
        Condition::Empty,
        Condition::Server,
        Condition::Both,
    ];

    fn label(self, policies: usize) -> String {
        match self {
            Condition::Off => "enforcement off".into(),
            Condition::Empty => "enforcement on, no policies".into(),
            Condition::Server => format!("on, {policies} policies, server isolated"),
            Condition::Both => format!("on, {policies} policies, both isolated"),
        }
    }

    /// The manifests this condition applies, if any.
    fn manifests(self, n: usize) -> Option<String> {
        match self {
            Condition::Off | Condition::Empty => None,
            Condition::Server => Some(manifests(n, false)),
            Condition::Both => Some(manifests(n, true)),
        }
    }
}

/// `n` policy manifests (multi-document YAML): one isolates the server for ingress and admits
/// the client; with `isolate_client`, one isolates the client for egress (to the server and
/// DNS); the rest are policies for other workloads of the namespace.
pub fn manifests(n: usize, isolate_client: bool) -> String {
    let mut out = String::new();
    let mut doc = |body: String| {
        out.push_str("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n");
        out.push_str(&body);
    };
    doc(format!(
        "metadata: {{name: server-from-client, namespace: {NAMESPACE}}}\n\
         spec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  policyTypes: [Ingress]\n  \
         ingress:\n  - from:\n    - podSelector: {{matchLabels: {{app: client}}}}\n    \
         ports:\n    - {{port: 5201}}\n    - {{port: {SERVE_PORT}}}\n"
    ));
    let first_filler = if isolate_client { 2 } else { 1 };
    if isolate_client {
        doc(format!(
            "metadata: {{name: client-egress, namespace: {NAMESPACE}}}\n\
         spec:\n  podSelector: {{matchLabels: {{app: client}}}}\n  policyTypes: [Egress]\n  \
         egress:\n  - to:\n    - podSelector: {{matchLabels: {{app: server}}}}\n  \
         - ports:\n    - {{port: 53, protocol: UDP}}\n"
        ));
    }
    for i in first_filler..n {
        doc(format!(
            "metadata: {{name: svc-{i}, namespace: {NAMESPACE}}}\n\
             spec:\n  podSelector:\n    matchLabels: {{app: svc-{i}}}\n    \
             matchExpressions:\n    - {{key: tier, operator: In, values: [web, api]}}\n  \
             policyTypes: [Ingress, Egress]\n  ingress:\n  - from:\n    \
             - namespaceSelector: {{matchLabels: {{team: t{t}}}}}\n      \
             podSelector: {{matchLabels: {{app: caller-{i}}}}}\n    \
             - ipBlock: {{cidr: 10.{a}.0.0/16, except: [10.{a}.1.0/24]}}\n    ports:\n    \
             - {{port: {p}, endPort: {e}}}\n    - {{port: http, protocol: TCP}}\n  egress:\n  \
             - to:\n    - podSelector: {{matchExpressions: [{{key: app, operator: NotIn, values: [svc-{i}]}}]}}\n    \
             ports:\n    - {{port: 5432}}\n",
            t = i % 10,
            a = 100 + i % 100,
            p = 8000 + i % 1000,
            e = 8000 + i % 1000 + 10,
        ));
    }
    out
}

/// Runs the benchmark and returns its RESULTS.md section.
pub fn run(opts: &Options) -> Result<Section> {
    ensure!(opts.reps >= 1, "--reps must be at least 1");
    ensure!(opts.seconds >= 1, "--seconds must be at least 1");
    ensure!(opts.policies >= 2, "--policies must be at least 2");
    let before = crate::Snapshot::take(&opts.name);

    let mut spec = LabSpec::new(&opts.name);
    spec.nodes = 2;
    spec.pods_per_node = 0;
    spec.backend = Backend::Vxlan;
    spec.demo = false;
    let mut lab = Lab::up(spec).context("bringing up the 2-node vxlan lab")?;
    let (client, server) = client_and_server(&mut lab)?;
    let agent = lab.state().bin_dir.join("fabric-lab");
    let serve_log = lab.state_dir().join("serve.log");
    let serving = Cmd::in_netns(&server.netns, &agent)
        .args(["serve", "--port", &SERVE_PORT.to_string()])
        .spawn_daemon(&serve_log)
        .context("starting fabric-lab serve in the server pod")?;
    let _stop = StopOnDrop(serving);
    let policy_file = lab.state_dir().join("policies.yaml");

    let mut current = None;
    let n = Condition::ALL.len();
    let mut gbps = vec![Vec::new(); n];
    let mut rate = vec![Vec::new(); n];
    let iperf_log = lab.state_dir().join("iperf3-server.log");
    for rep in 0..opts.reps {
        for k in 0..n {
            let i = (rep + k) % n;
            let condition = Condition::ALL[i];
            switch(
                &mut lab,
                &mut current,
                condition,
                &policy_file,
                opts.policies,
            )
            .with_context(|| format!("switching to {}", condition.label(opts.policies)))?;
            let (r, _) = crate::iperf::run_with_retries(
                3,
                &server.netns,
                server.ip,
                &client.netns,
                1,
                opts.seconds,
                &iperf_log,
            )
            .with_context(|| format!("iperf3 with {}", condition.label(opts.policies)))?;
            let r = crate::iperf::to_run(&r);
            let to = std::net::SocketAddrV4::new(server.ip, SERVE_PORT);
            let per_second =
                connect_rate(&agent, &client.netns, to, opts.seconds, opts.concurrency)
                    .with_context(|| {
                        format!("connect-rate with {}", condition.label(opts.policies))
                    })?;
            eprintln!(
                "[{}] rep {}/{} {:<32} {:6.2} Gbit/s {:8.0} connections/s",
                opts.name,
                rep + 1,
                opts.reps,
                condition.label(opts.policies),
                r.gbps,
                per_second
            );
            gbps[i].push(r.gbps);
            rate[i].push(per_second);
        }
    }
    let after = crate::Snapshot::take(&opts.name);
    switch(
        &mut lab,
        &mut current,
        Condition::Empty,
        &policy_file,
        opts.policies,
    )?;
    lab.down().context("tearing the lab down")?;

    let rows: Vec<Vec<String>> = Condition::ALL
        .iter()
        .enumerate()
        .map(|(i, c)| {
            vec![
                c.label(opts.policies),
                format!("{:.2}", median(&gbps[i])),
                join(&gbps[i], 2),
                format!("{:.0}", median(&rate[i])),
                join(&rate[i], 0),
            ]
        })
        .collect();
    let tp = median(&gbps[2]) / median(&gbps[1]);
    let tp_both = median(&gbps[3]) / median(&gbps[1]);
    let cr = median(&rate[2]) / median(&rate[0]);
    let cr_both = median(&rate[3]) / median(&rate[0]);
    let cr_empty = median(&rate[1]) / median(&rate[0]);
    let verdict = |ok: bool| if ok { "meets" } else { "MISSES" };

    let mut body = String::new();
    writeln!(
        body,
        "Two lab nodes (vxlan), a client pod on node1 and a server pod on node2 (namespace \
         `{NAMESPACE}`). Four conditions, interleaved in rotating order over {} repetition(s): \
         fabricd with `--network-policy=false`; enforcement on with no policies; enforcement on \
         with {} NetworkPolicies in etcd of which one isolates the server for ingress and admits \
         the client (\"server isolated\"); the same plus one isolating the client for egress \
         (\"both isolated\"). The other policies are for other workloads of the same namespace, \
         with selectors, namespaceSelectors, ipBlocks with except, port ranges and named ports. \
         Only connections of isolated local pods wait in NFQUEUE; with both isolated, each new \
         connection is judged on both nodes. Per condition: iperf3 TCP, 1 stream, {} s, client → server; then {} s of \
         `fabric-lab connect-rate` ({} concurrent connectors; each connection is \
         connect, read the server's line, close with RST) against `fabric-lab serve`. {}\n",
        opts.reps,
        opts.policies,
        opts.seconds,
        opts.seconds,
        opts.concurrency,
        before.describe(&after),
    )?;
    body.push_str(&markdown_table(
        &[
            "condition",
            "iperf3 Gbit/s (median)",
            "runs",
            "connections/s (median)",
            "runs",
        ],
        &rows,
    ));
    writeln!(body)?;
    writeln!(
        body,
        "- Throughput with {} policies ÷ with none (enforcement on): {tp:.3}× — {} the target ≥ \
         {THROUGHPUT_TARGET}× (server isolated; both isolated: {tp_both:.3}×, {})",
        opts.policies,
        verdict(tp >= THROUGHPUT_TARGET),
        verdict(tp_both >= THROUGHPUT_TARGET),
    )?;
    writeln!(
        body,
        "- New connections/s with enforcement ({} policies, server isolated) ÷ without: {cr:.3}× \
         — {} the target ≥ {RATE_TARGET}× (both isolated: {cr_both:.3}×, {}; enforcement on with \
         no policies: {cr_empty:.3}×)",
        opts.policies,
        verdict(cr >= RATE_TARGET),
        verdict(cr_both >= RATE_TARGET),
    )?;
    Ok(Section {
        title: "NetworkPolicy enforcement: throughput and new connections/s".into(),
        date: crate::today(),
        command: format!(
            "fabric-bench policy --reps {} --seconds {} --policies {} --concurrency {} --name {}",
            opts.reps, opts.seconds, opts.policies, opts.concurrency, opts.name
        ),
        machine: crate::machine(),
        body,
    })
}

/// Brings the lab to `to`: restarts fabricd when enforcement is turned on or off, applies or
/// deletes the policies, and waits until every node enforces what etcd holds.
fn switch(
    lab: &mut Lab,
    current: &mut Option<Condition>,
    to: Condition,
    policy_file: &std::path::Path,
    policies: usize,
) -> Result<()> {
    if *current == Some(to) {
        return Ok(());
    }
    let file = policy_file.display().to_string();
    let enforcing = |c: Option<Condition>| c != Some(Condition::Off);
    if current.and_then(|c| c.manifests(policies)).is_some() {
        lab.fabricctl(&["policy", "delete", "-f", &file])?;
    }
    if current.is_none() || enforcing(*current) != enforcing(Some(to)) {
        let flags: &[&str] = if to == Condition::Off {
            &["--network-policy=false"]
        } else {
            &[]
        };
        let nodes: Vec<String> = lab.nodes().iter().map(|n| n.name.clone()).collect();
        for node in &nodes {
            lab.restart_fabricd_with(node, flags)?;
        }
    }
    if let Some(text) = to.manifests(policies) {
        std::fs::write(policy_file, text)?;
        lab.fabricctl(&["policy", "apply", "-f", &file])?;
    }
    if to != Condition::Off {
        for node in lab.nodes() {
            let socket = node.socket.display().to_string();
            lab.fabricctl(&["policy", "sync", "--socket", &socket, "--timeout", "30s"])
                .with_context(|| format!("{}'s policy view did not catch up", node.name))?;
        }
    }
    *current = Some(to);
    Ok(())
}

/// `fabric-lab connect-rate` (the in-pod agent `agent`) from `netns` to `to` for `seconds`
/// with `concurrency` connectors; connections/s. Fails if over 1 % of connections failed.
pub(crate) fn connect_rate(
    agent: &std::path::Path,
    netns: &str,
    to: std::net::SocketAddrV4,
    seconds: u32,
    concurrency: usize,
) -> Result<f64> {
    let out = Cmd::in_netns(netns, agent)
        .args([
            "connect-rate",
            "--to",
            &to.to_string(),
            "--seconds",
            &seconds.to_string(),
            "--concurrency",
            &concurrency.to_string(),
        ])
        .timeout(Duration::from_secs(u64::from(seconds) + 30))
        .run()?;
    let v: serde_json::Value = serde_json::from_str(out.trim())
        .with_context(|| format!("connect-rate printed {out:?}"))?;
    let failures = v["failures"].as_u64().unwrap_or(0);
    let connections = v["connections"].as_u64().unwrap_or(0);
    ensure!(
        connections > 0 && failures * 100 <= connections,
        "connect-rate to {to}: {connections} connections, {failures} failures"
    );
    v["per_second"]
        .as_f64()
        .with_context(|| format!("connect-rate printed {out:?}"))
}

fn join(v: &[f64], decimals: usize) -> String {
    v.iter()
        .map(|x| format!("{x:.decimals$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Ends a server when the benchmark ends, however it ends.
pub(crate) struct StopOnDrop(pub(crate) Daemon);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.terminate();
    }
}

/// Pods `client` on node1 and `server` on node2 (namespace `bench`, labelled `app=`
/// their name), checked to reach each other.
pub(crate) fn client_and_server(lab: &mut Lab) -> Result<(fabric_lab::Pod, fabric_lab::Pod)> {
    let client = lab.add_pod(
        "node1",
        PodSpec::new("client")
            .namespace(NAMESPACE)
            .label("app", "client"),
    )?;
    let server = lab.add_pod(
        "node2",
        PodSpec::new("server")
            .namespace(NAMESPACE)
            .label("app", "server"),
    )?;
    demo::ping(&client.netns, server.ip, 3).context("the pod-to-pod path does not work")?;
    Ok((client, server))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_hold_n_valid_policies_that_isolate_the_measured_pods() {
        let docs: Vec<policy::NetworkPolicy> = manifests(50, true)
            .split("---\n")
            .filter(|d| !d.trim().is_empty())
            .map(|d| serde_yaml::from_str(d).expect("YAML"))
            .collect();
        assert_eq!(docs.len(), 50);
        assert_eq!(
            manifests(50, false).matches("kind: NetworkPolicy").count(),
            50
        );
        assert!(!manifests(50, false).contains("client-egress"));
        for np in &docs {
            policy::Policy::from_k8s(np).expect("a valid NetworkPolicy");
        }
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
        for np in &docs {
            cluster.upsert_policy(np).unwrap();
        }
        let decide = |from: [u8; 4], to: [u8; 4], port| {
            cluster
                .decide(
                    cluster.endpoint(std::net::Ipv4Addr::from(from)),
                    cluster.endpoint(std::net::Ipv4Addr::from(to)),
                    policy::Protocol::Tcp,
                    port,
                )
                .allowed
        };
        assert!(decide([10, 244, 1, 2], [10, 244, 2, 2], SERVE_PORT));
        assert!(decide([10, 244, 1, 2], [10, 244, 2, 2], 5201));
        assert!(
            !decide([10, 244, 1, 2], [10, 244, 2, 2], 22),
            "the server is isolated"
        );
        assert!(
            !decide([10, 244, 1, 2], [10, 244, 3, 3], SERVE_PORT),
            "the client's egress is isolated"
        );
    }
}
