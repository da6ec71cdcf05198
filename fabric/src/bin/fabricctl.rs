//! `fabricctl`: the operator's tool. See `fabricctl --help`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use fabric::datastore::{Connected, DatastoreFlags};
use fabric::labels;
use fabric::policies::{parse_manifests, policy_name};
use fabric_cni::api::{call, codes, Request, Response};
use ipam::etcd::EtcdStore;
use ipam::objects::Kind;
use ipam::{NamespaceRecord, NetworkConfig, PodRecord};
use ipnet::Ipv4Net;

/// How often `policy sync` asks fabricd.
const SYNC_POLL: Duration = Duration::from_millis(20);

/// How many times a label edit re-reads a record that changed under it.
const LABEL_ATTEMPTS: usize = 10;

/// Operate a fabric cluster: network config, subnet leases, reservations, NetworkPolicies,
/// namespace and pod labels, and this node's data path.
#[derive(Debug, Parser)]
#[command(name = "fabricctl", version, about)]
struct Cli {
    #[command(flatten)]
    datastore: DatastoreFlags,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read or write the network config (Flannel's net-conf.json keys).
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// List subnet leases: node, subnet, public IP, backend data, expiry.
    Leases {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Pin SUBNET to NODE: only NODE will lease it.
    Reserve {
        /// The subnet, e.g. 10.244.1.0/24.
        subnet: Ipv4Net,
        /// The node's name.
        node: String,
    },
    /// Remove the reservation on SUBNET.
    Unreserve {
        /// The subnet.
        subnet: Ipv4Net,
    },
    /// List reservations.
    Reservations,
    /// Apply, delete, list, explain and evaluate NetworkPolicies.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// Namespace labels (what namespaceSelectors match).
    Namespace {
        #[command(subcommand)]
        action: NamespaceAction,
    },
    /// Registered pods and their labels (what podSelectors match).
    Pod {
        #[command(subcommand)]
        action: PodAction,
    },
    /// Show this node's data path peers: endpoint, subnet, latest handshake, bytes, drops
    /// (asks the local fabricd).
    Peers {
        #[command(flatten)]
        socket: SocketArg,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

/// Where the local fabricd listens.
#[derive(Debug, Clone, Args)]
struct SocketArg {
    /// fabricd's local API socket.
    #[arg(
        long,
        env = "FABRIC_SOCKET",
        default_value = "/run/fabric/fabricd.sock"
    )]
    socket: PathBuf,
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Validate FILE and write it as the network config.
    Set {
        /// The config file ("-" for stdin).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Print the network config.
    Get,
}

#[derive(Debug, Subcommand)]
enum PolicyAction {
    /// Validate every NetworkPolicy in FILE (multi-document YAML) and store them.
    Apply {
        /// The manifest file ("-" for stdin).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Delete policies by NAMESPACE/NAME, or those in FILE.
    Delete {
        /// Policies as namespace/name.
        names: Vec<String>,
        /// A manifest file naming the policies.
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
    },
    /// List stored policies.
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Explain the verdict for a new connection: allowed or not, and which policies and
    /// rules decided.
    Explain {
        /// Source pod as namespace/name (or an IPv4 address).
        #[arg(long)]
        from: String,
        /// Destination pod as namespace/name (or an IPv4 address).
        #[arg(long)]
        to: String,
        /// Destination port and protocol, e.g. 80/TCP (protocol defaults to TCP).
        #[arg(long)]
        port: String,
    },
    /// Run every probe of every case in FILE through the compiled classifier, offline.
    /// Exits non-zero if any non-loopback probe disagrees.
    Eval {
        /// The case file (the netpol reachability case format).
        #[arg(long)]
        cases: PathBuf,
    },
    /// Wait until the local fabricd enforces what etcd holds now on new connections (its
    /// view and queue rules at etcd's current revision or later); exits non-zero after
    /// --timeout.
    Sync {
        #[command(flatten)]
        socket: SocketArg,
        /// How long to wait (e.g. 10s, 500ms).
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

#[derive(Debug, Subcommand)]
enum NamespaceAction {
    /// Set labels (k=v) or remove them (k-) on namespace NS.
    Label {
        /// The namespace.
        namespace: String,
        /// Labels to set (k=v) or remove (k-).
        #[arg(required_unless_present = "replace")]
        labels: Vec<String>,
        /// Make the given k=v labels the namespace's only ones.
        #[arg(long)]
        replace: bool,
    },
    /// List namespaces and their labels.
    List,
}

#[derive(Debug, Subcommand)]
enum PodAction {
    /// Set labels (k=v) or remove them (k-) on pod NAMESPACE/NAME, as fabricd registered it.
    Label {
        /// The pod, as namespace/name.
        pod: String,
        /// Labels to set (k=v) or remove (k-).
        #[arg(required_unless_present = "replace")]
        labels: Vec<String>,
        /// Make the given k=v labels the pod's only ones.
        #[arg(long)]
        replace: bool,
    },
    /// List registered pods: name, node, IP, labels, container ports.
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Cli::parse()).await {
        eprintln!("fabricctl: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    // Validate input before reaching for the datastore.
    let document = match &cli.command {
        Command::Config {
            action: ConfigAction::Set { file },
        } => Some(read_config(file)?),
        Command::Namespace {
            action: NamespaceAction::Label {
                labels, replace, ..
            },
        } => {
            labels::parse(labels, *replace)?;
            None
        }
        Command::Pod {
            action:
                PodAction::Label {
                    pod,
                    labels,
                    replace,
                },
        } => {
            pod_key(pod)?;
            labels::parse(labels, *replace)?;
            None
        }
        _ => None,
    };
    let mut out = std::io::stdout().lock();
    // What needs no datastore.
    match &cli.command {
        Command::Peers { socket, output } => return peers(&mut out, &socket.socket, *output),
        Command::Policy {
            action: PolicyAction::Eval { cases },
        } => {
            let report = policy::evaluate_file(cases)?;
            writeln!(out, "{}", report.to_string().trim_end())?;
            if report.failed() > 0 {
                std::process::exit(1);
            }
            return Ok(());
        }
        Command::Policy {
            action: PolicyAction::Sync { socket, timeout },
        } => return policy_sync(&mut out, &socket.socket, *timeout).await,
        _ => {}
    }
    let connected = cli.datastore.connect().await?;
    let store = connected.store();
    match cli.command {
        Command::Config {
            action: ConfigAction::Set { .. },
        } => {
            let etcd = etcd_only(
                &connected,
                "the network config is the file --net-config-path (the fabric-config ConfigMap): edit it with kubectl",
            )?;
            let config = etcd.put_config(&document.expect("read above")).await?;
            writeln!(out, "network config written: {}", config.to_json())?;
        }
        Command::Config {
            action: ConfigAction::Get,
        } => {
            let config = store.network_config().await?;
            writeln!(out, "{}", serde_json::to_string_pretty(&config.to_json())?)?;
        }
        Command::Leases { output } => {
            let leases = store.list_leases().await?;
            match output {
                Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(&leases)?)?,
                Output::Table => {
                    let dual_stack = leases.iter().any(|l| l.ipv6_subnet.is_some());
                    let rows = leases.iter().map(|l| {
                        let mut subnet = l.subnet.to_string();
                        if let Some(v6) = l.ipv6_subnet {
                            subnet.push_str(&format!(" {v6}"));
                        }
                        vec![
                            l.node.clone(),
                            subnet,
                            l.public_ip.to_string(),
                            l.backend_type.clone(),
                            l.backend_data.to_string(),
                            l.ttl_secs.map_or("-".into(), |s| {
                                humantime::format_duration(std::time::Duration::from_secs(
                                    s.max(0) as u64
                                ))
                                .to_string()
                            }),
                        ]
                    });
                    write_table(
                        &mut out,
                        &[
                            "NODE",
                            if dual_stack { "SUBNETS" } else { "SUBNET" },
                            "PUBLIC-IP",
                            "BACKEND",
                            "BACKEND-DATA",
                            "EXPIRES-IN",
                        ],
                        rows,
                    )?;
                }
            }
        }
        Command::Reserve { subnet, node } => {
            let etcd = etcd_only(&connected, NODE_IPAM)?;
            etcd.reserve(subnet, &node).await?;
            writeln!(out, "{subnet} reserved for {node}")?;
        }
        Command::Unreserve { subnet } => {
            let etcd = etcd_only(&connected, NODE_IPAM)?;
            if etcd.unreserve(subnet).await? {
                writeln!(out, "reservation on {subnet} removed")?;
            } else {
                writeln!(out, "{subnet} was not reserved")?;
            }
        }
        Command::Policy { action } => policy_command(&mut out, &connected, action).await?,
        Command::Namespace { action } => {
            let etcd = etcd_only(
                &connected,
                "namespaces are the API's: kubectl label namespace NS k=v",
            )?;
            namespace_command(&mut out, etcd, action).await?
        }
        Command::Pod { action } => pod_command(&mut out, &connected, action).await?,
        Command::Peers { .. } => unreachable!("answered above"),
        Command::Reservations => {
            let rows = etcd_only(&connected, NODE_IPAM)?
                .reservations()
                .await?
                .into_iter()
                .map(|(s, n)| vec![s.to_string(), n]);
            write_table(&mut out, &["SUBNET", "NODE"], rows)?;
        }
    }
    Ok(())
}

/// What a subnet reservation is in Kubernetes mode.
const NODE_IPAM: &str =
    "subnets are the nodes' spec.podCIDRs, assigned by kube-controller-manager: \
     set a node's podCIDR when you create it to pin one";

/// What NetworkPolicies are in Kubernetes mode.
const API_POLICIES: &str =
    "NetworkPolicies are the API's: kubectl apply -f / kubectl delete networkpolicy";

/// The etcd store, or an error saying what to do instead in Kubernetes mode.
fn etcd_only<'a>(connected: &'a Connected, instead: &str) -> Result<&'a EtcdStore> {
    match connected {
        Connected::Etcd(etcd) => Ok(etcd),
        Connected::Kubernetes(_) => {
            bail!("not in Kubernetes mode (--datastore kubernetes): {instead}")
        }
    }
}

async fn policy_command(
    out: &mut impl Write,
    connected: &Connected,
    action: PolicyAction,
) -> Result<()> {
    match action {
        PolicyAction::Apply { file } => {
            let store = etcd_only(connected, API_POLICIES)?;
            let policies = parse_manifests(&read_text(&file)?)?;
            let objects = policies
                .iter()
                .map(|np| Ok((policy_name(np)?, serde_json::to_value(np)?)))
                .collect::<Result<Vec<_>>>()?;
            // A few transactions, so that fabricd sees the file as one change.
            store.put_objects(Kind::Policies, &objects).await?;
            for (name, _) in &objects {
                writeln!(out, "networkpolicy {name} applied")?;
            }
        }
        PolicyAction::Delete { names, file } => {
            let store = etcd_only(connected, API_POLICIES)?;
            let mut names = names;
            if let Some(file) = file {
                for np in parse_manifests(&read_text(&file)?)? {
                    names.push(policy_name(&np)?);
                }
            }
            anyhow::ensure!(
                !names.is_empty(),
                "name policies as namespace/name, or pass -f FILE"
            );
            for name in &names {
                anyhow::ensure!(name.contains('/'), "{name}: write namespace/name");
            }
            let gone = store.delete_objects(Kind::Policies, &names).await?;
            for (name, gone) in names.iter().zip(gone) {
                writeln!(
                    out,
                    "networkpolicy {name} {}",
                    if gone { "deleted" } else { "not found" }
                )?;
            }
        }
        PolicyAction::List { output } => {
            let (_, objects) = connected.source().list_objects().await?;
            let all: std::collections::BTreeMap<String, serde_json::Value> = objects
                .into_iter()
                .filter(|o| o.kind == Kind::Policies)
                .filter_map(|o| Some((o.name, serde_json::from_slice(o.value.as_deref()?).ok()?)))
                .collect();
            match output {
                Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(&all)?)?,
                Output::Table => {
                    let rows = all.iter().map(|(name, np)| {
                        let (ns, name) = name.split_once('/').unwrap_or(("?", name));
                        vec![
                            ns.to_string(),
                            name.to_string(),
                            np["spec"]["podSelector"].to_string(),
                            np["spec"]["policyTypes"].to_string(),
                        ]
                    });
                    write_table(
                        out,
                        &["NAMESPACE", "NAME", "POD-SELECTOR", "POLICY-TYPES"],
                        rows,
                    )?;
                }
            }
        }
        PolicyAction::Explain { from, to, port } => {
            let store = connected.store();
            let etcd = matches!(connected, Connected::Etcd(_));
            let addressing = match store.network_config().await {
                Ok(config) => Some(fabric::policies::Addressing::of(&config, etcd)),
                // Kubernetes mode: the config is a file of the nodes', not fabricctl's.
                Err(_) if !etcd => None,
                Err(e) => return Err(e.into()),
            };
            let source = connected.source();
            let cluster =
                fabric::policies::load(source.as_ref(), store.as_ref(), addressing.as_ref())
                    .await?;
            let endpoint = |who: &str| -> Result<policy::Endpoint> {
                if let Ok(ip) = who.parse::<std::net::IpAddr>() {
                    return Ok(cluster.endpoint(ip));
                }
                let (ns, name) = who
                    .split_once('/')
                    .with_context(|| format!("{who}: write namespace/pod or an IP address"))?;
                let id = cluster
                    .pod_id(&policy::PodKey::new(ns, name))
                    .with_context(|| format!("no pod {who} is registered"))?;
                Ok(policy::Endpoint::Pod(id))
            };
            let (number, proto) = port.split_once('/').unwrap_or((&port, "TCP"));
            let number: u16 = number
                .parse()
                .with_context(|| format!("{port}: write PORT[/PROTOCOL], e.g. 80/TCP"))?;
            let proto: policy::Protocol = proto
                .to_uppercase()
                .parse()
                .map_err(|_| anyhow::anyhow!("{proto}: the protocol is TCP, UDP or SCTP"))?;
            let explanation = policy::explain(
                cluster.classifier(),
                endpoint(&from)?,
                endpoint(&to)?,
                proto,
                number,
            );
            write!(out, "{explanation}")?;
        }
        PolicyAction::Sync { .. } | PolicyAction::Eval { .. } => {
            unreachable!("answered before connecting")
        }
    }
    Ok(())
}

/// Waits until fabricd at `socket` reports a policy view at or past the checkpoint it names
/// for the datastore's current state (etcd's current revision; in Kubernetes mode the update
/// after which its watches match a fresh listing of the API).
async fn policy_sync(out: &mut impl Write, socket: &Path, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let target = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let answer = call(
            socket,
            &Request::PolicyCheckpoint,
            left.max(Duration::from_secs(1)),
        );
        match answer {
            Ok(Response::Checkpoint { revision }) => break revision,
            Ok(Response::Policy(status)) if !status.enforcing => bail!(
                "fabricd at {} does not enforce NetworkPolicy (it runs with \
                 --network-policy=false): there is no policy view to sync",
                socket.display()
            ),
            Ok(Response::Error(e)) if e.code == codes::DECODE_FAILURE => bail!(
                "fabricd at {} does not understand the checkpoint request: is it older than \
                 this fabricctl? ({e})",
                socket.display()
            ),
            // Not loaded yet, or the datastore is slow to answer: ask again until the deadline.
            Ok(Response::Error(_)) if Instant::now() < deadline => {
                tokio::time::sleep(SYNC_POLL).await
            }
            Ok(Response::Error(e)) => bail!("fabricd cannot name the datastore's revision: {e}"),
            Ok(other) => bail!("fabricd answered {other:?} to the checkpoint request"),
            Err(e) => bail!("asking fabricd at {} (--socket): {e}", socket.display()),
        }
    };
    // The view revisions fabricd reported (first and latest), and the latest failure.
    let mut seen: Option<(i64, i64)> = None;
    let mut failure: Option<String>;
    loop {
        match call(socket, &Request::Policy, Duration::from_secs(1)) {
            Ok(Response::Policy(status)) if !status.enforcing => bail!(
                "fabricd at {} does not enforce NetworkPolicy (it runs with \
                 --network-policy=false): there is no policy view to sync",
                socket.display()
            ),
            Ok(Response::Policy(status)) if status.revision >= target => {
                writeln!(
                    out,
                    "policy view in sync at revision {} ({} policies, {} pods, {} namespaces; queue rules: {})",
                    status.revision,
                    status.policies,
                    status.pods,
                    status.namespaces,
                    status.queue_rules.as_deref().unwrap_or("-")
                )?;
                return Ok(());
            }
            Ok(Response::Policy(status)) => {
                let first = seen.map_or(status.revision, |(first, _)| first);
                seen = Some((first, status.revision));
                failure = None;
            }
            Ok(Response::Error(e)) if e.code == codes::DECODE_FAILURE => bail!(
                "fabricd at {} does not understand the policy request: is it older than \
                 this fabricctl? ({e})",
                socket.display()
            ),
            Ok(Response::Error(e)) => failure = Some(format!("fabricd: {e}")),
            Ok(other) => bail!("fabricd answered {other:?} to the policy request"),
            Err(e) => {
                failure = Some(format!(
                    "asking fabricd at {} (--socket): {e}",
                    socket.display()
                ))
            }
        }
        if Instant::now() >= deadline {
            let view = match seen {
                Some((first, last)) if first == last => {
                    format!("fabricd's policy view stayed at revision {last}")
                }
                Some((first, last)) => {
                    format!("fabricd's policy view went from revision {first} to {last}")
                }
                None => "fabricd never reported its policy view".into(),
            };
            let failure = failure
                .map(|f| format!("; last error: {f}"))
                .unwrap_or_default();
            bail!(
                "policy view not in sync after {}: the datastore is at revision {target}, {view}{failure}",
                humantime::format_duration(timeout)
            );
        }
        tokio::time::sleep(SYNC_POLL).await;
    }
}

/// Applies label edits `args` to a label map (see [`labels`]).
fn relabel(
    current: &std::collections::BTreeMap<String, String>,
    args: &[String],
    replace: bool,
) -> Result<std::collections::BTreeMap<String, String>> {
    Ok(labels::apply(
        current,
        &labels::parse(args, replace)?,
        replace,
    ))
}

async fn pod_command(out: &mut impl Write, connected: &Connected, action: PodAction) -> Result<()> {
    match action {
        PodAction::Label {
            pod,
            labels,
            replace,
        } => {
            let store = etcd_only(
                connected,
                "pods are the API's: kubectl label pod NS/NAME k=v",
            )?;
            let key = pod_key(&pod)?;
            for _ in 0..LABEL_ATTEMPTS {
                let records = pod_records(store).await?;
                let matching: Vec<_> = records
                    .into_iter()
                    .filter(|(_, _, r)| r.namespace == key.namespace && r.name == key.name)
                    .collect();
                if matching.is_empty() {
                    bail!("no pod {key} is registered (`fabricctl pod list` shows the pods)");
                }
                let mut all_written = true;
                let mut now = Default::default();
                // Every record of the pod (a restarted pod's stale one too) gets the labels.
                for (name, mod_revision, mut record) in matching {
                    record.labels = relabel(&record.labels, &labels, replace)?;
                    let value = serde_json::to_value(&record)?;
                    all_written &= store
                        .put_object_if(Kind::Pods, &name, &value, mod_revision)
                        .await?;
                    now = record.labels;
                }
                if all_written {
                    writeln!(out, "pod {key} labeled {now:?}")?;
                    return Ok(());
                }
            }
            bail!("pod {key} kept changing while it was being labeled; try again")
        }
        PodAction::List { output } => {
            let mut records: Vec<PodRecord> = match connected {
                Connected::Etcd(store) => pod_records(store)
                    .await?
                    .into_iter()
                    .map(|(_, _, r)| r)
                    .collect(),
                Connected::Kubernetes(store) => store.pods().await?,
            };
            records.sort_by(|a, b| {
                (&a.namespace, &a.name, &a.node).cmp(&(&b.namespace, &b.name, &b.node))
            });
            match output {
                Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(&records)?)?,
                Output::Table => {
                    let rows = records.iter().map(|r| {
                        let labels: Vec<String> =
                            r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        let ports: Vec<String> = r.ports.iter().map(|p| p.to_string()).collect();
                        let or_dash = |v: Vec<String>| {
                            if v.is_empty() {
                                "-".into()
                            } else {
                                v.join(",")
                            }
                        };
                        vec![
                            format!("{}/{}", r.namespace, r.name),
                            r.node.clone(),
                            r.ip.to_string(),
                            or_dash(labels),
                            or_dash(ports),
                        ]
                    });
                    write_table(out, &["POD", "NODE", "IP", "LABELS", "PORTS"], rows)?;
                }
            }
        }
    }
    Ok(())
}

/// Reads `namespace/name`.
fn pod_key(pod: &str) -> Result<policy::PodKey> {
    policy::PodKey::parse(pod).with_context(|| format!("{pod}: write the pod as namespace/name"))
}

/// Every pod record: its key below `pods/`, the revision of its last write, the record.
/// Unreadable records are skipped with a warning.
async fn pod_records(store: &EtcdStore) -> Result<Vec<(String, i64, PodRecord)>> {
    let mut out = Vec::new();
    for (name, versioned) in store.list_objects(Kind::Pods).await? {
        match serde_json::from_value::<PodRecord>(versioned.value) {
            Ok(record) => out.push((name, versioned.mod_revision, record)),
            Err(e) => eprintln!("fabricctl: skipping unreadable pod record {name}: {e}"),
        }
    }
    Ok(out)
}

async fn namespace_command(
    out: &mut impl Write,
    store: &EtcdStore,
    action: NamespaceAction,
) -> Result<()> {
    match action {
        NamespaceAction::Label {
            namespace,
            labels,
            replace,
        } => {
            for _ in 0..LABEL_ATTEMPTS {
                let stored = store
                    .list_objects(Kind::Namespaces)
                    .await?
                    .remove(&namespace);
                let (mut record, mod_revision) = match stored {
                    Some(v) => (
                        serde_json::from_value::<NamespaceRecord>(v.value)
                            .with_context(|| format!("namespace {namespace}'s record"))?,
                        v.mod_revision,
                    ),
                    None => (NamespaceRecord::default(), 0),
                };
                record.labels = relabel(&record.labels, &labels, replace)?;
                let value = serde_json::to_value(&record)?;
                if store
                    .put_object_if(Kind::Namespaces, &namespace, &value, mod_revision)
                    .await?
                {
                    writeln!(out, "namespace {namespace} labeled {:?}", record.labels)?;
                    return Ok(());
                }
            }
            bail!("namespace {namespace} kept changing while it was being labeled; try again")
        }
        NamespaceAction::List => {
            let rows = store
                .list_objects(Kind::Namespaces)
                .await?
                .into_iter()
                .map(|(name, v)| vec![name, v.value["labels"].to_string()]);
            write_table(out, &["NAMESPACE", "LABELS"], rows)?;
        }
    }
    Ok(())
}

fn read_text(file: &PathBuf) -> Result<String> {
    if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading stdin")
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
    }
}

/// Prints the local fabricd's data path report.
fn peers(out: &mut impl Write, socket: &Path, output: Output) -> Result<()> {
    let answer = call(
        socket,
        &Request::Dataplane,
        std::time::Duration::from_secs(5),
    )
    .with_context(|| format!("asking fabricd at {} (--socket)", socket.display()))?;
    let report = match answer {
        Response::Dataplane { report } => report,
        Response::Error(e) => anyhow::bail!("fabricd: {e}"),
        Response::Ok { .. } | Response::Policy(_) | Response::Checkpoint { .. } => {
            anyhow::bail!("fabricd gave no data path report")
        }
    };
    if let Output::Json = output {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(());
    }
    let Some(peers) = report["peers"].as_array() else {
        writeln!(
            out,
            "backend {}: the kernel holds the data path (see `ip route`, `ip neigh`, `bridge fdb`)",
            report["backend"].as_str().unwrap_or("?")
        )?;
        return Ok(());
    };
    writeln!(
        out,
        "device {} public key {} port {}",
        report["device"].as_str().unwrap_or("?"),
        report["public_key"].as_str().unwrap_or("?"),
        report["listen_port"]
    )?;
    let rows = peers.iter().map(|p| {
        let text = |k: &str| p[k].as_str().unwrap_or("-").to_string();
        vec![
            text("node"),
            text("endpoint"),
            text("allowed_ips"),
            p["latest_handshake_secs_ago"]
                .as_u64()
                .map_or("never".into(), |s| format!("{s}s ago")),
            p["rx_bytes"].to_string(),
            p["tx_bytes"].to_string(),
        ]
    });
    write_table(
        out,
        &[
            "NODE",
            "ENDPOINT",
            "ALLOWED-IPS",
            "HANDSHAKE",
            "RX-BYTES",
            "TX-BYTES",
        ],
        rows,
    )?;
    if let Some(dropped) = report["dropped"].as_object() {
        let parts: Vec<String> = dropped.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(out, "dropped: {}", parts.join(" "))?;
    }
    Ok(())
}

/// Reads and validates the config document, before anything reaches for the datastore.
fn read_config(file: &PathBuf) -> Result<String> {
    let text = read_text(file)?;
    NetworkConfig::parse(&text)?;
    Ok(text)
}

fn write_table(
    out: &mut impl Write,
    header: &[&str],
    rows: impl Iterator<Item = Vec<String>>,
) -> Result<()> {
    let rows: Vec<Vec<String>> = std::iter::once(header.iter().map(|h| h.to_string()).collect())
        .chain(rows)
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        writeln!(out, "{}", line.join("  ").trim_end())?;
    }
    Ok(())
}
