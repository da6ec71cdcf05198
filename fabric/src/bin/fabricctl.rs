//! `fabricctl`: the operator's tool. See `fabricctl --help`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use ipam::etcd::EtcdStore;
use ipam::{NetworkConfig, Store};
use ipnet::Ipv4Net;

/// Operate a fabric cluster: network config, subnet leases, reservations.
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
    if let Command::Peers { socket, output } = &cli.command {
        return peers(&mut out, socket, *output);
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
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the config from stdin")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
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
