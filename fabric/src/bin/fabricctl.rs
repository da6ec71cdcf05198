//! `fabricctl`: the operator's tool. See `fabricctl --help`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use fabric::policies::{parse_manifests, policy_name};
use ipam::etcd::EtcdStore;
use ipam::objects::Kind;
use ipam::{NamespaceRecord, NetworkConfig, Store};
use ipnet::Ipv4Net;

/// Operate a fabric cluster: network config, subnet leases, reservations, NetworkPolicies,
/// namespace labels, and this node's data path.
#[derive(Debug, Parser)]
#[command(name = "fabricctl", version, about)]
struct Cli {
    /// etcd endpoints, comma-separated.
    #[arg(
        long,
        env = "FABRIC_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379",
        global = true
    )]
    etcd_endpoints: Vec<String>,

    /// Key prefix of fabric's data in etcd.
    #[arg(
        long,
        env = "FABRIC_ETCD_PREFIX",
        default_value = "/fabric",
        global = true
    )]
    etcd_prefix: String,

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
    /// Show this node's data path peers: endpoint, subnet, latest handshake, bytes, drops
    /// (asks the local fabricd).
    Peers {
        /// fabricd's local API socket.
        #[arg(
            long,
            env = "FABRIC_SOCKET",
            default_value = "/run/fabric/fabricd.sock"
        )]
        socket: PathBuf,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
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
}

#[derive(Debug, Subcommand)]
enum NamespaceAction {
    /// Set labels (k=v) or remove them (k-) on namespace NS.
    Label {
        /// The namespace.
        namespace: String,
        /// Labels to set (k=v) or remove (k-).
        #[arg(required = true)]
        labels: Vec<String>,
    },
    /// List namespaces and their labels.
    List,
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
        _ => None,
    };
    let mut out = std::io::stdout().lock();
    // What needs no datastore.
    match &cli.command {
        Command::Peers { socket, output } => return peers(&mut out, socket, *output),
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
        _ => {}
    }
    let store = EtcdStore::connect(&cli.etcd_endpoints, &cli.etcd_prefix).await?;
    match cli.command {
        Command::Config {
            action: ConfigAction::Set { .. },
        } => {
            let config = store.put_config(&document.expect("read above")).await?;
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
                    let rows = leases.iter().map(|l| {
                        vec![
                            l.node.clone(),
                            l.subnet.to_string(),
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
                            "SUBNET",
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
            store.reserve(subnet, &node).await?;
            writeln!(out, "{subnet} reserved for {node}")?;
        }
        Command::Unreserve { subnet } => {
            if store.unreserve(subnet).await? {
                writeln!(out, "reservation on {subnet} removed")?;
            } else {
                writeln!(out, "{subnet} was not reserved")?;
            }
        }
        Command::Policy { action } => policy_command(&mut out, &store, action).await?,
        Command::Namespace { action } => namespace_command(&mut out, &store, action).await?,
        Command::Peers { .. } => unreachable!("answered above"),
        Command::Reservations => {
            let rows = store
                .reservations()
                .await?
                .into_iter()
                .map(|(s, n)| vec![s.to_string(), n]);
            write_table(&mut out, &["SUBNET", "NODE"], rows)?;
        }
    }
    Ok(())
}

async fn policy_command(
    out: &mut impl Write,
    store: &EtcdStore,
    action: PolicyAction,
) -> Result<()> {
    match action {
        PolicyAction::Apply { file } => {
            let policies = parse_manifests(&read_text(&file)?)?;
            for np in &policies {
                let name = policy_name(np)?;
                store
                    .put_object(Kind::Policies, &name, &serde_json::to_value(np)?)
                    .await?;
                writeln!(out, "networkpolicy {name} applied")?;
            }
        }
        PolicyAction::Delete { names, file } => {
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
            for name in names {
                anyhow::ensure!(name.contains('/'), "{name}: write namespace/name");
                let gone = store.delete_object(Kind::Policies, &name, false).await?;
                writeln!(
                    out,
                    "networkpolicy {name} {}",
                    if gone > 0 { "deleted" } else { "not found" }
                )?;
            }
        }
        PolicyAction::List { output } => {
            let all = store.list_objects(Kind::Policies).await?;
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
            let cluster = fabric::policies::load(store).await?;
            let endpoint = |who: &str| -> Result<policy::Endpoint> {
                if let Ok(ip) = who.parse() {
                    return Ok(cluster.endpoint(ip));
                }
                let (ns, name) = who
                    .split_once('/')
                    .with_context(|| format!("{who}: write namespace/pod or an IPv4 address"))?;
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
        PolicyAction::Eval { .. } => unreachable!("answered before connecting"),
    }
    Ok(())
}

async fn namespace_command(
    out: &mut impl Write,
    store: &EtcdStore,
    action: NamespaceAction,
) -> Result<()> {
    match action {
        NamespaceAction::Label { namespace, labels } => {
            let all = store.list_objects(Kind::Namespaces).await?;
            let mut record: NamespaceRecord = all
                .get(&namespace)
                .cloned()
                .map(serde_json::from_value)
                .transpose()?
                .unwrap_or_default();
            for label in labels {
                if let Some(key) = label.strip_suffix('-') {
                    record.labels.remove(key);
                } else {
                    let (k, v) = label.split_once('=').with_context(|| {
                        format!("{label}: write key=value to set, key- to remove")
                    })?;
                    record.labels.insert(k.to_string(), v.to_string());
                }
            }
            store
                .put_object(
                    Kind::Namespaces,
                    &namespace,
                    &serde_json::to_value(&record)?,
                )
                .await?;
            writeln!(out, "namespace {namespace} labeled {:?}", record.labels)?;
        }
        NamespaceAction::List => {
            let rows = store
                .list_objects(Kind::Namespaces)
                .await?
                .into_iter()
                .map(|(name, v)| vec![name, v["labels"].to_string()]);
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
fn peers(out: &mut impl Write, socket: &std::path::Path, output: Output) -> Result<()> {
    use fabric_cni::api::{call, Request, Response};
    let answer = call(
        socket,
        &Request::Dataplane,
        std::time::Duration::from_secs(5),
    )
    .with_context(|| format!("asking fabricd at {} (--socket)", socket.display()))?;
    let report = match answer {
        Response::Dataplane { report } => report,
        Response::Error(e) => anyhow::bail!("fabricd: {e}"),
        Response::Ok { .. } => anyhow::bail!("fabricd gave no data path report"),
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
