//! The Kubernetes control plane's daemons as the lab runs them inside `NAME-cp`: their command
//! lines (pure, tested), starting one as a tracked [`Daemon`] logging to `logs/<name>.log`, and
//! waiting until kube-apiserver's `/readyz` answers `ok`.
//!
//! etcd listens on loopback only (the apiserver is its one client); kube-apiserver serves
//! `https://172.30.0.3:6443` with the lab CA; kube-controller-manager allocates the nodes'
//! pod CIDRs (node IPAM) and runs everything else but the node lifecycle controller (the lab's
//! kubelet role reports its nodes Ready itself); kube-scheduler binds pods to nodes (no leader
//! election: there is one). Command lines are `--flag=value` words: Go's flag parsers
//! take boolean flags in no other form.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::certs::Pki;
use super::kubectl::Kubectl;
use crate::process::{self, Cmd, Daemon};
use crate::state::Layout;
use crate::topology::{service_cidrs, APISERVER_PORT, CONTROL_PLANE_IP};

/// The control plane's etcd.
pub const ETCD: &str = "etcd";
/// kube-apiserver.
pub const APISERVER: &str = "kube-apiserver";
/// kube-controller-manager.
pub const CONTROLLER_MANAGER: &str = "kube-controller-manager";
/// kube-scheduler.
pub const SCHEDULER: &str = "kube-scheduler";

/// How long kube-apiserver gets to become ready (a loaded 2-core machine is slow).
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// How many log lines an error shows.
pub const LOG_TAIL_LINES: usize = 20;

/// The pod networks kube-controller-manager carves node CIDRs from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetworks {
    /// The IPv4 cluster network (net-conf.json `Network`).
    pub ipv4: String,
    /// The IPv4 node subnet length (net-conf.json `SubnetLen`).
    pub ipv4_len: u8,
    /// The IPv6 cluster network and its node subnet length, on a dual-stack lab.
    pub ipv6: Option<(String, u8)>,
}

/// etcd's command line: one member, client and peer URLs on loopback, data in the state dir.
pub fn etcd_args(layout: &Layout) -> Vec<String> {
    let client = "http://127.0.0.1:2379";
    let peer = "http://127.0.0.1:2380";
    [
        ("--name", "cp".to_string()),
        ("--data-dir", layout.etcd_data().display().to_string()),
        ("--listen-client-urls", client.into()),
        ("--advertise-client-urls", client.into()),
        ("--listen-peer-urls", peer.into()),
        ("--initial-advertise-peer-urls", peer.into()),
        ("--initial-cluster", format!("cp={peer}")),
        ("--listen-metrics-urls", "http://127.0.0.1:2381".into()),
    ]
    .into_iter()
    .map(|(flag, value)| format!("{flag}={value}"))
    .collect()
}

/// kube-apiserver's command line (with an IPv6 service network too when `dual_stack`).
pub fn apiserver_args(layout: &Layout, pki: &Pki, dual_stack: bool) -> Vec<String> {
    let p = |path: std::path::PathBuf| path.display().to_string();
    [
        ("--advertise-address", CONTROL_PLANE_IP.to_string()),
        ("--secure-port", APISERVER_PORT.to_string()),
        ("--etcd-servers", "http://127.0.0.1:2379".into()),
        ("--cert-dir", p(layout.kube_dir())),
        ("--tls-cert-file", p(pki.cert("apiserver"))),
        ("--tls-private-key-file", p(pki.key("apiserver"))),
        ("--client-ca-file", p(pki.ca_cert())),
        ("--authorization-mode", "Node,RBAC".into()),
        ("--service-cluster-ip-range", service_cidrs(dual_stack)),
        (
            "--service-account-issuer",
            "https://kubernetes.default.svc.cluster.local".into(),
        ),
        ("--service-account-key-file", p(pki.sa_pub())),
        ("--service-account-signing-key-file", p(pki.sa_key())),
        ("--allow-privileged", "true".into()),
        ("--profiling", "false".into()),
    ]
    .into_iter()
    .map(|(flag, value)| format!("{flag}={value}"))
    .collect()
}

/// kube-controller-manager's command line.
pub fn controller_manager_args(
    lab: &str,
    layout: &Layout,
    pki: &Pki,
    networks: &PodNetworks,
) -> Vec<String> {
    let p = |path: std::path::PathBuf| path.display().to_string();
    let kubeconfig = p(layout.kubeconfig(CONTROLLER_MANAGER));
    let mut cluster_cidr = networks.ipv4.clone();
    let mut masks = vec![("--node-cidr-mask-size-ipv4", networks.ipv4_len.to_string())];
    if let Some((v6, len)) = &networks.ipv6 {
        cluster_cidr = format!("{cluster_cidr},{v6}");
        masks.push(("--node-cidr-mask-size-ipv6", len.to_string()));
    }
    [
        ("--kubeconfig", kubeconfig.clone()),
        ("--authentication-kubeconfig", kubeconfig.clone()),
        ("--authorization-kubeconfig", kubeconfig),
        ("--bind-address", "127.0.0.1".into()),
        ("--cluster-name", lab.into()),
        ("--allocate-node-cidrs", "true".into()),
        ("--cluster-cidr", cluster_cidr),
    ]
    .into_iter()
    .chain(masks)
    .chain([
        (
            "--service-cluster-ip-range",
            service_cidrs(networks.ipv6.is_some()),
        ),
        ("--controllers", "*,-node-lifecycle-controller".into()),
        ("--use-service-account-credentials", "true".into()),
        ("--service-account-private-key-file", p(pki.sa_key())),
        ("--root-ca-file", p(pki.ca_cert())),
        ("--cluster-signing-cert-file", p(pki.ca_cert())),
        ("--cluster-signing-key-file", p(pki.ca_key())),
        ("--leader-elect", "false".into()),
    ])
    .map(|(flag, value)| format!("{flag}={value}"))
    .collect()
}

/// kube-scheduler's command line: its own kubeconfig (`system:kube-scheduler`), serving
/// health on loopback only, no leader election.
pub fn scheduler_args(layout: &Layout) -> Vec<String> {
    let kubeconfig = layout.kubeconfig(SCHEDULER).display().to_string();
    [
        ("--kubeconfig", kubeconfig.clone()),
        ("--authentication-kubeconfig", kubeconfig.clone()),
        ("--authorization-kubeconfig", kubeconfig),
        ("--bind-address", "127.0.0.1".into()),
        ("--leader-elect", "false".into()),
        ("--profiling", "false".into()),
    ]
    .into_iter()
    .map(|(flag, value)| format!("{flag}={value}"))
    .collect()
}

/// Starts `binary ARGS...` inside `netns`, in its own session, logging to `logs/<name>.log`.
pub fn start(
    name: &str,
    binary: &Path,
    netns: &str,
    args: &[String],
    layout: &Layout,
) -> Result<Daemon> {
    Cmd::in_netns(netns, binary)
        .args(args)
        .spawn_daemon(&layout.log(name))
        .with_context(|| format!("starting {name}"))
}

/// Waits until `kubectl get --raw /readyz` says `ok`; fails early, with the log's tail, if
/// kube-apiserver exits.
pub fn wait_apiserver_ready(kubectl: &Kubectl, apiserver: &Daemon, layout: &Layout) -> Result<()> {
    let log = layout.log(APISERVER);
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if !apiserver.is_running() {
            bail!(
                "kube-apiserver (pid {}) exited during startup; last lines of {}:\n{}",
                apiserver.pid,
                log.display(),
                process::tail(&log, LOG_TAIL_LINES)
            );
        }
        let last = match kubectl
            .cmd(["get", "--raw", "/readyz"])
            .timeout(Duration::from_secs(10))
            .run()
        {
            Ok(out) if out.trim() == "ok" => return Ok(()),
            Ok(out) => format!("answered {:?}", out.trim()),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!(
                "kube-apiserver not ready after {}s ({last}); last lines of {}:\n{}",
                READY_TIMEOUT.as_secs(),
                log.display(),
                process::tail(&log, LOG_TAIL_LINES)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flag<'a>(args: &'a [String], name: &str) -> &'a str {
        args.iter()
            .find_map(|a| a.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("{name} missing from {args:?}"))
    }

    #[test]
    fn command_lines() {
        let layout = Layout::at("/run/fabric-lab/t");
        let pki = Pki::at(layout.pki());
        let etcd = etcd_args(&layout);
        assert_eq!(flag(&etcd, "--data-dir"), "/run/fabric-lab/t/etcd");
        assert_eq!(flag(&etcd, "--listen-client-urls"), "http://127.0.0.1:2379");

        let dual = apiserver_args(&layout, &pki, true);
        assert_eq!(
            flag(&dual, "--service-cluster-ip-range"),
            "10.96.0.0/12,fd00:10:96::/112"
        );
        let api = apiserver_args(&layout, &pki, false);
        assert_eq!(flag(&api, "--advertise-address"), "172.30.0.3");
        assert_eq!(flag(&api, "--secure-port"), "6443");
        assert_eq!(flag(&api, "--authorization-mode"), "Node,RBAC");
        assert_eq!(flag(&api, "--service-cluster-ip-range"), "10.96.0.0/12");
        assert_eq!(flag(&api, "--etcd-servers"), "http://127.0.0.1:2379");
        assert_eq!(
            flag(&api, "--client-ca-file"),
            "/run/fabric-lab/t/kube/pki/ca.crt"
        );
        assert_eq!(
            flag(&api, "--service-account-signing-key-file"),
            "/run/fabric-lab/t/kube/pki/sa.key"
        );

        let single = PodNetworks {
            ipv4: "10.244.0.0/16".into(),
            ipv4_len: 24,
            ipv6: None,
        };
        let kcm = controller_manager_args("t", &layout, &pki, &single);
        assert_eq!(flag(&kcm, "--allocate-node-cidrs"), "true");
        assert_eq!(flag(&kcm, "--cluster-cidr"), "10.244.0.0/16");
        assert_eq!(flag(&kcm, "--node-cidr-mask-size-ipv4"), "24");
        assert!(!kcm
            .iter()
            .any(|a| a.starts_with("--node-cidr-mask-size-ipv6")));
        assert_eq!(flag(&kcm, "--controllers"), "*,-node-lifecycle-controller");
        assert_eq!(flag(&kcm, "--leader-elect"), "false");
        assert_eq!(flag(&kcm, "--use-service-account-credentials"), "true");
        assert_eq!(
            flag(&kcm, "--kubeconfig"),
            "/run/fabric-lab/t/kube/kube-controller-manager.kubeconfig"
        );

        let sched = scheduler_args(&layout);
        assert_eq!(flag(&sched, "--leader-elect"), "false");
        assert_eq!(flag(&sched, "--bind-address"), "127.0.0.1");
        assert_eq!(
            flag(&sched, "--kubeconfig"),
            "/run/fabric-lab/t/kube/kube-scheduler.kubeconfig"
        );

        let dual = PodNetworks {
            ipv6: Some(("fd00:10:244::/48".into(), 64)),
            ..single
        };
        let kcm = controller_manager_args("t", &layout, &pki, &dual);
        assert_eq!(
            flag(&kcm, "--cluster-cidr"),
            "10.244.0.0/16,fd00:10:244::/48"
        );
        assert_eq!(flag(&kcm, "--node-cidr-mask-size-ipv6"), "64");
    }
}
