//! End-to-end test of a 3-member etcd cluster (`fabric-lab up --etcd-members 3`): the etcd
//! leader is killed (SIGKILL, by PID) during pod churn, one fabricd restarts (and leases
//! again) while the cluster runs on two members, the old leader comes back; nothing is lost
//! and nothing is duplicated, as a user checks it with `fabricctl`, ping and the logs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use fabric_lab::{Backend, Lab, PodSpec, Signal};
use fabric_tests::{eventually, ping, spec, up};
use serde_json::Value;

/// Pods added in the churn.
const CHURN_PODS: usize = 30;
/// Every this many ADDs, the oldest churn pod is deleted.
const DELETE_EVERY: usize = 3;
/// The ADD after which the leader is killed.
const KILL_AT: usize = 6;
/// The ADD after which fabricd on [`RESTARTED`] restarts (the old leader still down).
const RESTART_AT: usize = 12;
/// The ADD after which the old leader starts again.
const REVIVE_AT: usize = 20;
/// The node whose fabricd restarts mid-churn.
const RESTARTED: &str = "node2";
/// Longest a CNI ADD or DEL may take, election or not: the runtime's patience.
const CALL_BOUND: Duration = Duration::from_secs(20);

/// What happened to one CNI call of the churn.
#[derive(Debug)]
struct Call {
    what: String,
    took: Duration,
    error: Option<String>,
}

/// A pod as `fabricctl pod list -o json` shows it: `namespace/name` -> (node, IP).
fn registered(lab: &Lab) -> Result<BTreeMap<String, (String, Ipv4Addr)>> {
    let out = lab.fabricctl(&["pod", "list", "-o", "json"])?;
    let doc: Value =
        serde_json::from_str(&out).with_context(|| format!("parsing `pod list`: {out}"))?;
    let list = match &doc {
        Value::Array(list) => list.clone(),
        Value::Object(o) => match o.get("pods") {
            Some(Value::Array(list)) => list.clone(),
            _ => o.values().cloned().collect(),
        },
        _ => Vec::new(),
    };
    let mut pods = BTreeMap::new();
    for p in list {
        let field = |k: &str| p[k].as_str().map(str::to_string);
        let (ns, name, node, ip) = (
            field("namespace").unwrap_or_else(|| "default".into()),
            field("name").with_context(|| format!("pod without a name: {p}"))?,
            field("node").with_context(|| format!("pod without a node: {p}"))?,
            field("ip").with_context(|| format!("pod without an ip: {p}"))?,
        );
        let ip: Ipv4Addr = ip.parse().with_context(|| format!("pod ip of {p}"))?;
        ensure!(
            pods.insert(format!("{ns}/{name}"), (node, ip)).is_none(),
            "pod {ns}/{name} is registered twice: {out}"
        );
    }
    Ok(pods)
}

/// Runs one CNI call (a closure over the lab), timing it.
fn timed(what: String, call: impl FnOnce() -> Result<()>) -> Call {
    let start = Instant::now();
    let error = call().err().map(|e| format!("{e:#}"));
    Call {
        what,
        took: start.elapsed(),
        error,
    }
}

/// Is a failed CNI call's error one a runtime retries: the plugin's "try again later" (CNI
/// code 11), or the datastore named as unavailable, rather than a hang or a crash?
fn is_retryable(error: &str) -> bool {
    ["code 11", "try again", "unavailable", "etcd"]
        .iter()
        .any(|hint| error.to_lowercase().contains(hint))
}

/// Adds a pod, retrying a failed ADD (as a runtime does) until it succeeds or `deadline`.
fn add_with_retries(
    lab: &mut Lab,
    node: &str,
    name: &str,
    calls: &mut Vec<Call>,
    deadline: Duration,
) -> Result<()> {
    let start = Instant::now();
    loop {
        let call = timed(format!("ADD {name} on {node}"), || {
            lab.add_pod(node, PodSpec::new(name)).map(drop)
        });
        let failed = call.error.clone();
        calls.push(call);
        match failed {
            None => return Ok(()),
            Some(e) if start.elapsed() > deadline => anyhow::bail!("ADD {name} kept failing: {e}"),
            Some(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

fn del_with_retries(lab: &mut Lab, name: &str, calls: &mut Vec<Call>) -> Result<()> {
    let start = Instant::now();
    loop {
        let call = timed(format!("DEL {name}"), || lab.del_pod(name));
        let failed = call.error.clone();
        calls.push(call);
        match failed {
            None => return Ok(()),
            Some(e) if start.elapsed() > CALL_BOUND => {
                anyhow::bail!("DEL {name} kept failing: {e}")
            }
            Some(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

#[test]
fn leader_killed_during_pod_churn_loses_nothing() {
    let started = Instant::now();
    let mut spec = spec("etcd3", 3, 1, Backend::Vxlan);
    spec.etcd_members = 3;
    let mut lab = up(spec);

    // Three members, each its own process in its own namespace, agreeing on one leader.
    let members = lab.etcd_members().to_vec();
    assert_eq!(members.len(), 3, "{members:?}");
    let pids: BTreeSet<i32> = members
        .iter()
        .map(|m| m.daemon.as_ref().expect("member runs").pid)
        .collect();
    assert_eq!(pids.len(), 3, "{members:?}");
    for m in &members {
        let netns = lab.netns(&m.name).unwrap();
        assert_eq!(netns, m.netns);
    }
    let endpoints = lab.etcd_access("fabricd").endpoints;
    assert_eq!(
        endpoints.len(),
        3,
        "fabricd gets every member: {endpoints:?}"
    );
    let fabricd_pids: BTreeMap<String, i32> = lab
        .nodes()
        .iter()
        .map(|n| (n.name.clone(), n.pid().expect("fabricd runs")))
        .collect();
    let subnets_before = lab.subnets().unwrap();
    assert_eq!(subnets_before.len(), 3, "{subnets_before:?}");

    let mut calls = Vec::new();
    let mut churn: Vec<String> = Vec::new();
    let mut deleted: Vec<String> = Vec::new();
    let mut killed = None;
    for i in 1..=CHURN_PODS {
        let node = format!("node{}", i % 3 + 1);
        let name = format!("churn{i}");
        add_with_retries(&mut lab, &node, &name, &mut calls, Duration::from_secs(30)).unwrap();
        churn.push(name);
        if i % DELETE_EVERY == 0 {
            let oldest = churn.remove(0);
            del_with_retries(&mut lab, &oldest, &mut calls).unwrap();
            deleted.push(oldest);
        }
        if i == KILL_AT {
            let leader = eventually(Duration::from_secs(10), || lab.etcd_leader()).unwrap();
            eprintln!("killing etcd leader {leader} after ADD {i}");
            lab.stop_etcd_member(&leader, Signal::SIGKILL).unwrap();
            killed = Some(leader);
        }
        if i == RESTART_AT {
            eprintln!("restarting fabricd on {RESTARTED} after ADD {i}");
            lab.restart_fabricd_with(RESTARTED, &[]).unwrap();
        }
        if i == REVIVE_AT {
            let leader = killed.clone().expect("a member was killed");
            eprintln!("starting etcd member {leader} again after ADD {i}");
            lab.start_etcd_member(&leader).unwrap();
        }
    }
    let killed = killed.unwrap();
    let new_leader = eventually(Duration::from_secs(10), || lab.etcd_leader()).unwrap();
    eprintln!("leader now {new_leader} (killed {killed})");

    // Every CNI call answered within the bound; a failure was one a runtime retries.
    for call in &calls {
        eprintln!(
            "{}: {:?}{}",
            call.what,
            call.took,
            call.error
                .as_ref()
                .map(|e| format!(" FAILED: {e}"))
                .unwrap_or_default()
        );
    }
    for call in &calls {
        assert!(
            call.took < CALL_BOUND,
            "{} took {:?} (bound {CALL_BOUND:?})",
            call.what,
            call.took
        );
        if let Some(e) = &call.error {
            assert!(is_retryable(e), "{} failed unclearly: {e}", call.what);
        }
    }

    // Every pod that exists is registered with its node and address; no deleted pod is.
    let pods: BTreeMap<String, (String, Ipv4Addr)> = lab
        .pods()
        .iter()
        .map(|p| {
            (
                format!("{}/{}", p.namespace, p.name),
                (p.node.clone(), p.ip),
            )
        })
        .collect();
    let listed = eventually(Duration::from_secs(5), || {
        let listed = registered(&lab)?;
        ensure!(listed == pods, "pod list {listed:?}\n   lab pods {pods:?}");
        Ok(listed)
    });
    if let Err(e) = &listed {
        let now = registered(&lab).unwrap_or_default();
        let missing: Vec<_> = pods.keys().filter(|k| !now.contains_key(*k)).collect();
        let stale: Vec<_> = now.keys().filter(|k| !pods.contains_key(*k)).collect();
        panic!("registrations lost {missing:?}, left behind for deleted pods {stale:?}: {e:#}");
    }
    for name in &deleted {
        assert!(!pods.contains_key(&format!("default/{name}")));
    }

    // No two pods share an address.
    let ips: BTreeSet<Ipv4Addr> = pods.values().map(|(_, ip)| *ip).collect();
    assert_eq!(ips.len(), pods.len(), "duplicate pod IPs: {pods:?}");

    // One subnet per node, none shared, the restarted node's the same as before; every pod
    // inside its node's subnet.
    let leases = lab.leases().unwrap();
    let subnets = lab.subnets().unwrap();
    let distinct: BTreeSet<&String> = subnets.values().collect();
    assert_eq!(subnets.len(), 3, "{leases}");
    assert_eq!(distinct.len(), 3, "two nodes share a subnet: {leases}");
    assert_eq!(
        leases.as_array().map(Vec::len),
        Some(3),
        "one lease per node: {leases}"
    );
    assert_eq!(subnets, subnets_before, "a node's subnet changed");
    for (name, (node, ip)) in &pods {
        let subnet: ipnet::Ipv4Net = subnets[node].parse().unwrap();
        assert!(
            subnet.contains(ip),
            "{name} at {ip} outside {node}'s {subnet}"
        );
    }

    // Every pod reaches a pod on each other node.
    let all = lab.pods().to_vec();
    for from in &all {
        for node in lab.nodes().iter().map(|n| n.name.clone()) {
            if node == from.node {
                continue;
            }
            let to = all.iter().find(|p| p.node == node).unwrap();
            eventually(Duration::from_secs(5), || ping(&lab, &from.name, to.ip))
                .unwrap_or_else(|e| panic!("{} -> {} ({}): {e:#}", from.name, to.name, to.ip));
        }
    }

    // fabricd rode through: the same processes on the nodes not restarted, all running, and
    // no log saying it gave up.
    for node in lab.nodes() {
        assert!(
            node.running(),
            "fabricd on {} exited: {}",
            node.name,
            lab.log_tail(&node.name)
        );
        if node.name != RESTARTED {
            assert_eq!(node.pid(), Some(fabricd_pids[&node.name]), "{}", node.name);
        }
        let log = std::fs::read_to_string(&node.log).unwrap();
        // What it rode through, for the record.
        for line in log
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        {
            eprintln!("{}: {line}", node.name);
        }
        for bad in ["panicked", "exiting", "fatal"] {
            assert!(
                !log.to_lowercase().contains(bad),
                "fabricd on {} logged {bad:?}:\n{}",
                node.name,
                lab.log_tail(&node.name)
            );
        }
    }
    // The three members are one cluster again.
    assert!(lab.etcd_members().iter().all(|m| m.running()));
    eprintln!("done in {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(150));
}
