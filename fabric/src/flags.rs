//! `fabricd`'s flags. Every flag can also be set as an environment variable `FABRIC_<FLAG>`
//! (e.g. `FABRIC_NODE_NAME`), which is how the DaemonSet passes the node name.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ipam::BackendKind;

/// fabric's node agent: leases this node's pod subnet (from etcd, or the Kubernetes API's
/// node podCIDRs), keeps tunnels to every other node converged, wires pods in for the fabric
/// CNI plugin and enforces NetworkPolicy on their connections.
#[derive(Debug, Clone, Parser)]
#[command(name = "fabricd", version, long_about = None)]
pub struct DaemonFlags {
    #[command(flatten)]
    pub datastore: crate::datastore::DatastoreFlags,

    /// Data path between nodes: vxlan, host-gw or wireguard. Defaults to the network config's Backend.Type.
    #[arg(long, env = "FABRIC_BACKEND")]
    pub backend: Option<BackendKind>,

    /// This node's name: in Kubernetes mode its Node object's [default: $NODE_NAME, else the
    /// hostname].
    #[arg(long, env = "FABRIC_NODE_NAME")]
    pub node_name: Option<String>,

    /// Underlay interface (default: the first up interface with an IPv4 address).
    #[arg(long, env = "FABRIC_IFACE")]
    pub iface: Option<String>,

    /// Underlay address other nodes reach this one at (default: the interface's address).
    #[arg(long, env = "FABRIC_PUBLIC_IP")]
    pub public_ip: Option<Ipv4Addr>,

    /// Where the daemon keeps its state (subnet, pod addresses, VTEP MAC).
    #[arg(long, env = "FABRIC_STATE_DIR", default_value = "/var/lib/fabric")]
    pub state_dir: PathBuf,

    /// The local API socket the CNI plugin and fabricctl talk to (root only, 0600).
    #[arg(
        long,
        env = "FABRIC_SOCKET",
        default_value = "/run/fabric/fabricd.sock"
    )]
    pub socket: PathBuf,

    /// Lifetime of the subnet lease; renewed while the daemon runs (e.g. 24h, 30s).
    #[arg(long, env = "FABRIC_LEASE_TTL", default_value = "24h", value_parser = parse_duration)]
    pub lease_ttl: Duration,

    /// Address of the /healthz and /readyz endpoints ("off" disables them).
    #[arg(long, env = "FABRIC_HEALTHZ_ADDR", default_value = "127.0.0.1:9109", value_parser = parse_healthz)]
    pub healthz_addr: HealthzAddr,

    /// Name of the WireGuard TUN device (wireguard backend). Its control socket is
    /// /var/run/wireguard/<name>.sock, shared by every namespace: give each node on one
    /// machine its own name.
    #[arg(long, env = "FABRIC_WG_IFACE", default_value = "fabric.wg")]
    pub wg_iface: String,

    /// Enforce NetworkPolicy: new forwarded connections are judged by the daemon (NFQUEUE).
    #[arg(long, env = "FABRIC_NETWORK_POLICY", default_value_t = true, action = clap::ArgAction::Set)]
    pub network_policy: bool,

    /// While fabricd is down, or its queue is full, let new connections of isolated pods
    /// through instead of dropping them (the per-source new-flow limit drops regardless).
    #[arg(long, env = "FABRIC_POLICY_FAIL_OPEN")]
    pub policy_fail_open: bool,

    /// Which netfilter front end carries the policy queue rules: `nft` (native `queue`, in the
    /// table `inet fabric-policy`), `xtables` (the NFQUEUE target, in the chain FABRIC-POLICY
    /// of iptables and ip6tables) [default: nft where the kernel has nft's queue expression,
    /// else xtables].
    #[arg(long, env = "FABRIC_POLICY_QUEUE_RULES", value_enum)]
    pub policy_queue_rules: Option<crate::enforce::RuleKind>,

    /// NFQUEUE queues for policy verdicts, each served by a thread pinned to one CPU (the CPU
    /// that handles a packet picks the queue) [default: the number of CPUs, at most 16].
    #[arg(long, env = "FABRIC_POLICY_QUEUES", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub policy_queues: Option<u16>,

    /// New connections per second one source address may start that wait for a policy
    /// verdict (those of isolated pods: from a pod isolated for egress, or from any source to
    /// a pod isolated for ingress). Beyond it, after a burst of --policy-new-flow-burst, that
    /// source's new connections are dropped before the queue (TCP sends a dropped SYN again a
    /// second later), so one flooding pod or peer cannot starve the other pods' connections
    /// of verdicts. Counted in `iptables -L FABRIC-POLICY-QUEUE -v` (or the `queued` chain of
    /// `nft list table inet fabric-policy`). The default leaves a client (an ingress proxy,
    /// say) room for 5,000 new connections a second to isolated pods, while a flood from one
    /// source takes a third of what one queue judges on a small node; raise it for busier
    /// single sources. 0 turns the limit off.
    #[arg(long, env = "FABRIC_POLICY_NEW_FLOW_LIMIT", default_value_t = 5000,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(crate::enforce::FlowLimit::MAX)))]
    pub policy_new_flow_limit: u32,

    /// New connections one source address may start at once above --policy-new-flow-limit.
    #[arg(long, env = "FABRIC_POLICY_NEW_FLOW_BURST", default_value_t = 10000,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::enforce::FlowLimit::MAX)))]
    pub policy_new_flow_burst: u32,

    /// How long CNI ADD waits, after registering a new pod, until this node enforces policy
    /// on it (the pod in the view, its queue rules installed), so that its first packet is
    /// judged with its own identity. Past it, ADD succeeds anyway and a connection the policy
    /// denies is cut once the view has the pod. 0s does not wait.
    #[arg(long, env = "FABRIC_POLICY_SETUP_TIMEOUT", default_value = "5s", value_parser = parse_wait)]
    pub policy_setup_timeout: Duration,

    /// How often the data path is re-checked against the kernel even without lease changes.
    #[arg(long, env = "FABRIC_RESYNC_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub resync_interval: Duration,

    /// Test hook: kill fabricd at this point of CNI ADD or DEL (see `fabric::fault`).
    #[arg(long, env = "FABRIC_FAULT", value_enum, hide = true)]
    pub fault: Option<crate::fault::Point>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (write e.g. 24h, 90s)"))?;
    if d < Duration::from_secs(2) {
        return Err("must be at least 2s".into());
    }
    Ok(d)
}

fn parse_wait(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (write e.g. 5s, 500ms)"))?;
    if d > Duration::from_secs(25) {
        // The CNI plugin gives up on fabricd after 30 s by default.
        return Err("must be at most 25s".into());
    }
    Ok(d)
}

/// Where the health endpoints listen, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthzAddr(pub Option<SocketAddr>);

fn parse_healthz(s: &str) -> Result<HealthzAddr, String> {
    if s == "off" {
        return Ok(HealthzAddr(None));
    }
    s.parse()
        .map(|a| HealthzAddr(Some(a)))
        .map_err(|e| format!("{e} (write host:port, e.g. 127.0.0.1:9109, or off)"))
}

impl DaemonFlags {
    /// How many policy queues to serve: the flag, else the number of CPUs (at most 16).
    pub fn policy_queues(&self) -> u16 {
        self.policy_queues.unwrap_or_else(|| {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            cpus.min(16) as u16
        })
    }

    /// The node name: the flag, else `NODE_NAME` (what Flannel's DaemonSet sets), else the
    /// hostname.
    pub fn node_name(&self) -> String {
        let from_env = std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty());
        self.node_name.clone().or(from_env).unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".into())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_parsing() {
        let f = DaemonFlags::try_parse_from([
            "fabricd",
            "--backend",
            "host-gw",
            "--lease-ttl",
            "30s",
            "--etcd-endpoints",
            "http://a:2379,http://b:2379",
        ])
        .unwrap();
        assert_eq!(f.backend, Some(BackendKind::HostGw));
        assert_eq!(f.lease_ttl, Duration::from_secs(30));
        assert_eq!(f.datastore.etcd_endpoints.len(), 2);
        assert_eq!(f.datastore.etcd_prefix, "/fabric");
        assert_eq!(f.datastore.kind(), crate::datastore::Datastore::Etcd);
        let kube = DaemonFlags::try_parse_from([
            "fabricd",
            "--kube-subnet-mgr",
            "--kubeconfig-file",
            "/k",
        ])
        .unwrap();
        assert_eq!(
            kube.datastore.kind(),
            crate::datastore::Datastore::Kubernetes
        );
        assert_eq!(
            kube.datastore.kubeconfig.as_deref(),
            Some(std::path::Path::new("/k"))
        );
        assert_eq!(kube.datastore.kube_annotation_prefix, "fabric.dev");
        let kube = DaemonFlags::try_parse_from(["fabricd", "--datastore", "kubernetes"]).unwrap();
        assert_eq!(
            kube.datastore.kind(),
            crate::datastore::Datastore::Kubernetes
        );
        assert!(DaemonFlags::try_parse_from(["fabricd", "--backend", "udp"]).is_err());
        assert!(DaemonFlags::try_parse_from(["fabricd", "--lease-ttl", "1s"]).is_err());
        let off = DaemonFlags::try_parse_from(["fabricd", "--healthz-addr", "off"]).unwrap();
        assert_eq!(off.healthz_addr, HealthzAddr(None));
        assert_eq!(f.policy_setup_timeout, Duration::from_secs(5));
        let setup = |v: &str| {
            DaemonFlags::try_parse_from(["fabricd", "--policy-setup-timeout", v])
                .map(|f| f.policy_setup_timeout)
        };
        assert_eq!(setup("0s").unwrap(), Duration::ZERO);
        assert_eq!(setup("250ms").unwrap(), Duration::from_millis(250));
        assert!(setup("1m").is_err(), "longer than the plugin waits");
    }

    #[test]
    fn the_new_flow_limit_defaults_to_what_a_busy_pod_never_hits_and_0_turns_it_off() {
        let parse = |args: &[&str]| {
            DaemonFlags::try_parse_from(std::iter::once("fabricd").chain(args.iter().copied()))
                .map(|f| (f.policy_new_flow_limit, f.policy_new_flow_burst))
        };
        assert_eq!(parse(&[]).unwrap(), (5000, 10000));
        assert_eq!(
            parse(&["--policy-new-flow-limit", "0"]).unwrap(),
            (0, 10000)
        );
        assert!(
            parse(&["--policy-new-flow-limit", "2000000"]).is_err(),
            "hashlimit's most"
        );
        assert!(parse(&["--policy-new-flow-burst", "0"]).is_err());
    }
}
