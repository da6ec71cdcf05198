//! `fabricd`: fabric's node agent. See `fabricd --help`.

use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use fabric::agent::{admission, retry, Admission, Agent};
use fabric::datastore::{Datastore, DatastoreFlags};
use fabric::flags::DaemonFlags;
use fabric::state::StateDir;
use fabric::{api, enforce, health, policies};
use tokio::sync::watch;
use tunnel::{Netlink, Underlay};

#[tokio::main]
async fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        // The netlink parser warns about every attribute newer than itself.
        .add_directive("netlink_packet_route=error".parse().expect("directive"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    if let Err(e) = run(DaemonFlags::parse()).await {
        tracing::error!("{e:#}");
        std::process::exit(1);
    }
}

async fn run(flags: DaemonFlags) -> Result<()> {
    if let Some(point) = flags.fault {
        fabric::fault::arm(point);
    }
    let node = flags.node_name();
    let state = StateDir::open(&flags.state_dir)
        .with_context(|| format!("opening state dir {}", flags.state_dir.display()))?;
    let ready = Arc::new(AtomicBool::new(false));
    let (pods_tx, pods_rx) = watch::channel(None);
    let backend_slot = Arc::new(OnceLock::new());
    let policy_slot = Arc::new(OnceLock::new());
    let serving = api::Serving {
        pods: pods_rx,
        backend: backend_slot.clone(),
        policy: flags.network_policy.then(|| policy_slot.clone()),
        policy_setup: flags.policy_setup_timeout,
    };
    api::serve(&flags.socket, serving)
        .await
        .with_context(|| format!("binding the local API socket {}", flags.socket.display()))?;
    let liveness = Arc::new(health::Liveness::default());
    if let Some(addr) = flags.healthz_addr.0 {
        health::serve(addr, ready.clone(), liveness.clone())
            .await
            .with_context(|| format!("binding the health endpoints on {addr} (--healthz-addr)"))?;
    }

    let netlink = Netlink::connect().context("opening netlink")?;
    let underlay = Underlay::detect(&netlink, flags.iface.as_deref(), flags.public_ip).await?;
    tracing::info!(%node, iface = %underlay.iface, ip = %underlay.ip(), mtu = underlay.mtu, "underlay");

    let datastore = flags.datastore.kind();
    // A peer whose lease ran out is kept one more TTL: cut off from etcd, it keeps its data
    // path that long; gone, it is forgotten then.
    let connected = retry("connecting to the datastore", || flags.datastore.connect())
        .await
        .keeping_expired_leases(flags.lease_ttl);
    let store = connected.store();
    tracing::info!(?datastore, "datastore");
    for (name, pulse) in connected.followers() {
        liveness.pulse(name, pulse, health::FOLLOWER_STUCK);
    }
    let config = retry("reading the network config", || store.network_config()).await;
    if flags.network_policy {
        let rules = enforce::RuleOptions {
            kind: flags
                .policy_queue_rules
                .unwrap_or_else(enforce::rules::detect),
            fail_open: flags.policy_fail_open,
            queues: flags.policy_queues(),
            limit: enforce::FlowLimit {
                rate: flags.policy_new_flow_limit,
                burst: flags.policy_new_flow_burst,
            },
        };
        let addressing = policies::Addressing::of(&config, datastore == Datastore::Etcd);
        // The first view before the queue opens: no connection is judged against nothing.
        let (mut follower, handle) = retry("reading the policy objects", || {
            policies::Follower::start(
                connected.source(),
                connected.store(),
                addressing,
                &node,
                rules,
            )
        })
        .await;
        let view = handle.view();
        let _ = policy_slot.set(handle);
        enforce::serve(view, &rules, &liveness).context("serving the policy queues")?;
        // Rules of the other kind, left by an earlier run, go first.
        let other = match rules.kind {
            enforce::RuleKind::Nft => enforce::RuleKind::Xtables,
            enforce::RuleKind::Xtables => enforce::RuleKind::Nft,
        };
        enforce::rules::remove_kind(other).context("removing earlier policy rules")?;
        follower
            .install_rules()
            .await
            .context("installing the policy rules")?;
        let alive = liveness.task("the policy follower");
        let beat = liveness.beat("the policy follower", health::FOLLOWER_STUCK);
        tokio::spawn(async move {
            let _alive = alive;
            follower.run(beat).await
        });
        tracing::info!(
            rules = %rules.kind,
            fail_open = rules.fail_open,
            queues = rules.queues,
            "NetworkPolicy enforced on new connections"
        );
    } else if enforce::rules::remove().context("removing the policy rules")? {
        tracing::info!(
            "NetworkPolicy enforcement is off; removed the queue rules of an earlier run"
        );
    }
    let mut backend_config = config.backend.clone();
    if let Some(kind) = flags.backend.filter(|k| *k != config.backend.kind) {
        tracing::info!(flag = %kind, config = %config.backend.kind, "--backend overrides the network config's Backend.Type");
        backend_config.kind = kind;
    }
    let node_options = tunnel::NodeOptions {
        state_dir: state.path(),
        wg_iface: &flags.wg_iface,
    };
    let backend: Arc<dyn tunnel::Backend> = Arc::from(tunnel::create(
        &backend_config,
        underlay.clone(),
        netlink.clone(),
        &node_options,
    )?);
    let _ = backend_slot.set(backend.clone());
    liveness.data_path(backend.clone());
    tracing::info!(backend = %backend.kind(), network = %config.network, pod_mtu = backend.mtu(), "network config");

    let admission = Admission::new(
        &config,
        datastore == Datastore::Etcd,
        admission::protected(underlay.addr, &datastore_addresses(&flags.datastore).await),
    );
    let agent = Agent {
        store,
        backend: backend.clone(),
        underlay,
        netlink,
        state,
        node,
        lease_ttl: flags.lease_ttl,
        resync: flags.resync_interval,
        cluster: config.network,
        cluster6: config.ipv6.map(|v6| v6.network),
        ready,
        pods: pods_tx,
        admission,
        // Its loop comes round at least every resync (and renewal); a pass stuck on a
        // hung kernel or datastore call for much longer than that is a stuck agent.
        beat: liveness.beat(
            "the agent loop",
            flags.resync_interval * 3 + Duration::from_secs(60),
        ),
    };
    tokio::select! {
        r = agent.run() => r,
        _ = shutdown() => {
            // The lease stays: a restarted daemon picks its subnet up again.
            tracing::info!("shutting down; the subnet lease stays until its TTL runs out");
            backend.shutdown();
            Ok(())
        }
    }
}

/// The addresses fabricd reaches its datastore at, which no lease may route elsewhere: the
/// etcd endpoints', or the Kubernetes API server's (from the kubeconfig, or the in-cluster
/// service address), resolved once at start. Unresolvable names are left out with a warning.
async fn datastore_addresses(flags: &DatastoreFlags) -> Vec<IpAddr> {
    let urls = match flags.kind() {
        Datastore::Etcd => flags.etcd_endpoints.clone(),
        Datastore::Kubernetes => match &flags.kubeconfig {
            Some(path) => kubeconfig_servers(path),
            None => std::env::var("KUBERNETES_SERVICE_HOST")
                .into_iter()
                .collect(),
        },
    };
    let mut addresses = Vec::new();
    for url in &urls {
        let Some((host, port)) = admission::url_host(url, 443) else {
            continue;
        };
        let target = match host.parse::<IpAddr>() {
            Ok(ip) => std::net::SocketAddr::new(ip, port).to_string(),
            Err(_) => format!("{host}:{port}"),
        };
        match tokio::net::lookup_host(target).await {
            Ok(found) => addresses.extend(found.map(|a| a.ip())),
            Err(e) => {
                tracing::warn!(%url, error = %e, "cannot resolve a datastore address; leases covering it are not refused")
            }
        }
    }
    addresses.sort();
    addresses.dedup();
    addresses
}

/// The API server URLs a kubeconfig names (empty when it cannot be read: connecting with it
/// reports that).
fn kubeconfig_servers(path: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap_or_default();
    doc["clusters"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|c| c["cluster"]["server"].as_str().map(str::to_owned))
        .collect()
}

async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
