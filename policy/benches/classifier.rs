//! Classifier benchmarks on a generated, realistic cluster: 100 namespaces, 10,000 pods and
//! 1,000 policies mixing pod/namespace selectors (matchLabels and matchExpressions), ipBlocks
//! with excepts, numeric ports, port ranges and named ports.
//!
//! * `decide`: decisions per second over a fixed mix of pod-to-pod, pod-to-external and
//!   external-to-pod connections (target: at least 10 M/s on one core).
//! * `policy_upsert`: one policy changed, validated, recompiled and installed.
//! * After the criterion runs, a plain measurement of the policy-change latency over 50
//!   distinct updates prints p50/p99 (target: p99 at most 100 ms), plus the cost of
//!   publishing a classifier snapshot (`Arc::new(classifier.clone())`).
//!
//! Run: `cargo bench -p policy --bench classifier`.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput};
use policy::{Cluster, ContainerPort, Endpoint, NetworkPolicy, Pod, PodKey, Protocol};

const NAMESPACES: usize = 100;
const PODS_PER_NAMESPACE: usize = 100;
const POLICIES_PER_NAMESPACE: usize = 10;
const QUERIES: usize = 8192;

/// Deterministic pseudo-random numbers (no dependency, same cluster every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) as usize) % n
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.next(items.len())]
    }
}

const TEAMS: [&str; 10] = [
    "payments", "search", "ads", "infra", "ml", "web", "mobile", "data", "identity", "media",
];
const ENVS: [&str; 3] = ["prod", "staging", "dev"];
const TIERS: [&str; 4] = ["web", "api", "db", "cache"];

fn ns_name(i: usize) -> String {
    format!("ns-{i:02}")
}

fn pod_ip(ns: usize, i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, ns as u8, i as u8 + 1)
}

/// Builds the cluster: namespaces, then pods, then policies.
fn build_cluster(rng: &mut Lcg) -> (Cluster, Vec<NetworkPolicy>) {
    let mut c = Cluster::new();
    for n in 0..NAMESPACES {
        let mut labels = policy::Labels::new();
        labels.insert("team".into(), TEAMS[n % TEAMS.len()].into());
        labels.insert("env".into(), ENVS[n % ENVS.len()].into());
        if n % 7 == 0 {
            labels.insert("monitoring".into(), "enabled".into());
        }
        c.upsert_namespace(&ns_name(n), labels);
    }
    for n in 0..NAMESPACES {
        for i in 0..PODS_PER_NAMESPACE {
            let tier = TIERS[i % TIERS.len()];
            let mut labels = policy::Labels::new();
            labels.insert("app".into(), format!("app-{}", i % 10));
            labels.insert("tier".into(), tier.into());
            labels.insert(
                "version".into(),
                if rng.next(4) == 0 { "v2" } else { "v1" }.into(),
            );
            if rng.next(5) == 0 {
                labels.insert("canary".into(), "true".into());
            }
            let mut ports = vec![
                ContainerPort {
                    name: Some("http".into()),
                    port: 8080,
                    protocol: Protocol::Tcp,
                },
                ContainerPort {
                    name: Some("metrics".into()),
                    port: 9090 + (i % 3) as u16,
                    protocol: Protocol::Tcp,
                },
            ];
            if tier == "db" {
                ports.push(ContainerPort {
                    name: Some("sql".into()),
                    port: 5432,
                    protocol: Protocol::Tcp,
                });
            }
            if tier == "cache" {
                ports.push(ContainerPort {
                    name: Some("dns".into()),
                    port: 53,
                    protocol: Protocol::Udp,
                });
            }
            c.upsert_pod(Pod {
                key: PodKey::new(ns_name(n), format!("pod-{i:03}")),
                labels,
                ip: pod_ip(n, i),
                ipv6: None,
                ports,
            });
        }
    }
    let mut policies = Vec::new();
    for n in 0..NAMESPACES {
        for k in 0..POLICIES_PER_NAMESPACE {
            let np = generate_policy(rng, n, k, 0);
            c.upsert_policy(&np).expect("generated policy is valid");
            policies.push(np);
        }
    }
    (c, policies)
}

/// Policy `k` of namespace `n`; `variant` perturbs it (for update benchmarks).
fn generate_policy(rng: &mut Lcg, n: usize, k: usize, variant: usize) -> NetworkPolicy {
    let ns = ns_name(n);
    let name = format!("policy-{k}");
    let app = format!("app-{}", (k + variant) % 10);
    let team = rng.pick(&TEAMS);
    let env = rng.pick(&ENVS);
    let tier = rng.pick(&TIERS);
    let port = 8000 + rng.next(100) as u16 + variant as u16;
    let spec = match k {
        0 if n % 2 == 0 => "podSelector: {}\n  policyTypes: [Ingress]\n".to_string(),
        0 => "podSelector: {}\n  policyTypes: [Ingress, Egress]\n  egress:\n  - to: [{namespaceSelector: {}}]\n  - to: [{ipBlock: {cidr: 10.96.0.10/32}}]\n    ports: [{port: 53, protocol: UDP}, {port: 53}]\n".to_string(),
        1 => format!(
            "podSelector: {{matchLabels: {{app: {app}}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: {app}}}}}}}]\n    ports: [{{port: http}}]\n  policyTypes: [Ingress]\n"
        ),
        2 => format!(
            "podSelector: {{matchLabels: {{tier: db}}}}\n  ingress:\n  - from:\n    - namespaceSelector: {{matchLabels: {{team: {team}}}}}\n      podSelector: {{matchExpressions: [{{key: tier, operator: In, values: [web, api]}}]}}\n    - podSelector: {{matchLabels: {{tier: api}}}}\n    ports: [{{port: sql}}, {{port: 5432}}]\n  policyTypes: [Ingress]\n"
        ),
        3 => "podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {monitoring: enabled}}}]\n    ports: [{port: metrics}]\n  policyTypes: [Ingress]\n".to_string(),
        4 => format!(
            "podSelector: {{matchLabels: {{tier: web}}}}\n  egress:\n  - to:\n    - namespaceSelector: {{matchLabels: {{env: {env}}}}}\n      podSelector: {{matchLabels: {{tier: api}}}}\n    ports: [{{port: {port}, endPort: {}}}, {{port: http}}]\n  - to: [{{ipBlock: {{cidr: 0.0.0.0/0, except: [10.0.0.0/8, 172.16.0.0/12]}}}}]\n    ports: [{{port: 443}}]\n  policyTypes: [Egress]\n",
            port + 50
        ),
        5 => format!(
            "podSelector: {{matchLabels: {{tier: {tier}}}}}\n  ingress:\n  - from:\n    - ipBlock: {{cidr: 172.16.0.0/12, except: [172.16.5.0/24, 172.20.0.0/16]}}\n    - ipBlock: {{cidr: 10.244.{n}.0/24}}\n    ports: [{{port: 443}}, {{port: 8000, endPort: 8999}}]\n  policyTypes: [Ingress]\n"
        ),
        6 => format!(
            "podSelector: {{matchExpressions: [{{key: canary, operator: DoesNotExist}}, {{key: version, operator: NotIn, values: [v0]}}]}}\n  ingress:\n  - from:\n    - namespaceSelector: {{matchExpressions: [{{key: env, operator: In, values: [{env}]}}, {{key: team, operator: NotIn, values: [{team}]}}]}}\n      podSelector: {{matchExpressions: [{{key: app, operator: Exists}}]}}\n    ports: [{{port: {port}, protocol: TCP}}, {{port: {port}, protocol: UDP}}]\n  policyTypes: [Ingress]\n"
        ),
        7 => format!(
            "podSelector: {{matchLabels: {{tier: cache}}}}\n  ingress:\n  - from: [{{namespaceSelector: {{matchLabels: {{team: {team}}}}}}}]\n    ports: [{{port: dns, protocol: UDP}}, {{port: 6379}}]\n  - from: [{{podSelector: {{}}}}]\n  policyTypes: [Ingress]\n"
        ),
        8 => format!(
            "podSelector: {{matchLabels: {{app: {app}, tier: api}}}}\n  ingress:\n  - from:\n    - namespaceSelector: {{}}\n      podSelector: {{matchLabels: {{tier: web}}}}\n    ports: [{{port: http}}, {{port: 80}}]\n  egress:\n  - to:\n    - podSelector: {{matchLabels: {{tier: db}}}}\n    ports: [{{port: sql}}]\n  - to: [{{ipBlock: {{cidr: 10.96.0.10/32}}}}]\n    ports: [{{port: 53, protocol: UDP}}]\n  policyTypes: [Ingress, Egress]\n"
        ),
        _ => format!(
            "podSelector: {{matchLabels: {{version: v2}}}}\n  ingress:\n  - from:\n    - namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {}}}}}\n    ports: [{{protocol: SCTP}}, {{port: 9000, endPort: 9100}}]\n",
            ns_name((n + 1 + variant) % NAMESPACES)
        ),
    };
    let yaml = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  {spec}"
    );
    serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("generated policy parses: {e}\n{yaml}"))
}

#[derive(Clone, Copy)]
struct Query {
    src: Endpoint,
    dst: Endpoint,
    protocol: Protocol,
    port: u16,
}

fn generate_queries(c: &Cluster, rng: &mut Lcg) -> Vec<Query> {
    let pod = |rng: &mut Lcg| {
        let key = PodKey::new(
            ns_name(rng.next(NAMESPACES)),
            format!("pod-{:03}", rng.next(PODS_PER_NAMESPACE)),
        );
        Endpoint::Pod(c.pod_id(&key).expect("generated pod exists"))
    };
    let external = |rng: &mut Lcg| {
        Endpoint::External(
            Ipv4Addr::new(
                [172, 8, 192, 10][rng.next(4)],
                rng.next(32) as u8 + 1,
                rng.next(256) as u8,
                rng.next(255) as u8 + 1,
            )
            .into(),
        )
    };
    let ports = [80u16, 443, 8080, 9090, 9091, 5432, 6379, 53, 8050, 9050];
    (0..QUERIES)
        .map(|_| {
            let (src, dst) = match rng.next(20) {
                0 => (pod(rng), external(rng)),
                1 => (external(rng), pod(rng)),
                _ => (pod(rng), pod(rng)),
            };
            let protocol = match rng.next(10) {
                0 => Protocol::Udp,
                1 => Protocol::Sctp,
                _ => Protocol::Tcp,
            };
            Query {
                src,
                dst,
                protocol,
                port: ports[rng.next(ports.len())],
            }
        })
        .collect()
}

fn run_queries(c: &policy::Classifier, queries: &[Query]) -> usize {
    queries
        .iter()
        .filter(|q| c.decide(q.src, q.dst, q.protocol, q.port).allowed)
        .count()
}

/// CPU time this thread has run (Linux `schedstat`), so that time spent descheduled on a busy
/// machine does not count against the classifier; `None` elsewhere.
fn thread_cpu_time() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let mut rng = Lcg(42);
    let t = Instant::now();
    let (mut cluster, _) = build_cluster(&mut rng);
    let build = t.elapsed();
    let queries = generate_queries(&cluster, &mut rng);
    let allowed = run_queries(cluster.classifier(), &queries);
    eprintln!(
        "cluster: {} namespaces, {} pods, {} policies; built in {build:?}; {allowed}/{} sample queries allowed",
        NAMESPACES,
        cluster.classifier().pod_count(),
        cluster.classifier().policy_count(),
        queries.len()
    );

    let mut criterion = Criterion::default()
        .sample_size(30)
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    {
        let mut g = criterion.benchmark_group("classifier");
        g.throughput(Throughput::Elements(queries.len() as u64));
        g.bench_function("decide", |b| {
            b.iter(|| run_queries(black_box(cluster.classifier()), black_box(&queries)))
        });
        g.finish();
    }
    {
        let mut g = criterion.benchmark_group("classifier");
        g.sample_size(20);
        let mut variant = 1;
        g.bench_function("policy_upsert", |b| {
            b.iter_batched(
                || {
                    variant += 1;
                    let n = variant % NAMESPACES;
                    generate_policy(
                        &mut Lcg(variant as u64),
                        n,
                        variant % POLICIES_PER_NAMESPACE,
                        variant,
                    )
                },
                |np| cluster.upsert_policy(&np).expect("valid"),
                BatchSize::SmallInput,
            )
        });
        g.finish();
    }
    criterion.final_summary();

    // Plain measurements, printed for the record: decisions per second of this thread's CPU
    // time (and of wall-clock time, which a busy machine inflates).
    let t = Instant::now();
    let cpu0 = thread_cpu_time();
    let mut rounds = 0u64;
    let mut sink = 0usize;
    while t.elapsed() < Duration::from_secs(3) {
        sink += run_queries(cluster.classifier(), black_box(&queries));
        rounds += 1;
    }
    let decisions = rounds as f64 * queries.len() as f64;
    let wall = t.elapsed();
    let cpu = cpu0.zip(thread_cpu_time()).map(|(a, b)| b - a);
    eprintln!(
        "decide: {:.1} M decisions/s per CPU-second on one core ({:.1} M/s wall-clock; {} decisions, sink {sink})",
        cpu.map_or(f64::NAN, |c| decisions / c.as_secs_f64() / 1e6),
        decisions / wall.as_secs_f64() / 1e6,
        decisions
    );

    let mut latencies = Vec::new();
    let mut publish = Vec::new();
    for u in 0..50 {
        let n = (u * 37) % NAMESPACES;
        let k = (u * 13) % POLICIES_PER_NAMESPACE;
        let np = generate_policy(&mut Lcg(1000 + u as u64), n, k, u + 1);
        let t = Instant::now();
        cluster.upsert_policy(&np).expect("valid");
        latencies.push(t.elapsed());
        let t = Instant::now();
        let snapshot = Arc::new(cluster.classifier().clone());
        publish.push(t.elapsed());
        black_box(snapshot);
    }
    latencies.sort();
    publish.sort();
    eprintln!(
        "policy change (validate + recompile + install) over {} updates: p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1]
    );
    eprintln!(
        "snapshot publish (Arc::new(classifier.clone())): p50 {:?}, p99 {:?}",
        percentile(&publish, 0.50),
        percentile(&publish, 0.99)
    );
}
