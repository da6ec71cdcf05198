//! fabricd killed at each step of CNI ADD and DEL, through its fault-injection hook
//! (`--fault POINT`, `fabric::fault`: SIGKILL at that point), on one lab node: for each point
//! the lab's runtime runs the CNI call, fabricd dies in it, is started again without the
//! fault, and the node is checked as an operator would check it:
//!
//! - ADD: the runtime gave up on the pod (its DEL failed, fabricd being down, and it deleted
//!   the pod's namespace); once fabricd is back, nothing of the pod is left (pool entry, pod
//!   record, veth, route, set elements) and the runtime's retry of the ADD succeeds;
//! - DEL: the runtime's retry of the DEL succeeds and leaves nothing of the pod;
//!
//! every time with [`NodeAudit`] agreeing with exactly the pods the runtime believes attached,
//! and a pod attached before the faults still reaching the new ones. Then a burst of parallel
//! ADDs gets one address each, none taken twice. Last, the fail-closed rule: a veth named like
//! a pod's host veth that fabric did not wire (as a pod left behind would be) forwards
//! nothing, while the same veth under another name does.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use fabric_lab::audit::NodeAudit;
use fabric_lab::cni_runtime;
use fabric_lab::{Backend, Invocation, Lab, PodSpec};
use fabric_tests::{eventually, ping, spec, up};

/// The node every pod goes on.
const NODE: &str = "node1";

/// The fault points of ADD, in the order ADD reaches them (the last two race each other).
const ADD_POINTS: [&str; 3] = ["add:after-allocate", "add:after-wire", "add:after-register"];

/// The fault points of DEL, in order.
const DEL_POINTS: [&str; 3] = ["del:after-unwire", "del:after-release", "del:after-detach"];

/// Parallel ADDs after the faults.
const BURST: usize = 12;

/// How long the node may take to settle (the first reconcile pass rewrites its table).
const SETTLE: Duration = Duration::from_secs(15);

/// The pods the runtime believes attached on the node: address -> container id.
fn believed(lab: &Lab, extra: &[(Ipv4Addr, String)]) -> BTreeMap<Ipv4Addr, String> {
    lab.pods_on(NODE)
        .map(|p| (p.ip, p.container_id.clone()))
        .chain(extra.iter().cloned())
        .collect()
}

/// The node holds exactly `pods`, and nothing else (waiting for it to settle).
fn assert_holds(lab: &Lab, pods: &BTreeMap<Ipv4Addr, String>, when: &str) {
    eventually(SETTLE, || {
        let found = NodeAudit::of(lab, NODE)?.disagreements(pods, false);
        ensure!(found.is_empty(), "{}", found.join("\n"));
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{when}: {e:#}\nfabricd's log:\n{}", lab.log_tail(NODE)));
}

fn fabricd_running(lab: &Lab) -> bool {
    lab.node(NODE)
        .ok()
        .and_then(|n| n.fabricd.as_ref())
        .is_some_and(|d| d.is_running())
}

/// Waits until fabricd has died at `point`.
fn assert_killed_at(lab: &Lab, point: &str) {
    eventually(Duration::from_secs(10), || {
        ensure!(!fabricd_running(lab), "fabricd still runs");
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{point}: {e}"));
    let log = lab.log_tail(NODE);
    assert!(
        log.contains("fault injection: killing fabricd"),
        "{point}: fabricd died of something else:\n{log}"
    );
}

/// Host veths in the node's namespace (a deleted pod namespace takes its veth pair with it,
/// a moment after `ip netns del` returns).
fn veths(lab: &Lab) -> Result<BTreeSet<String>> {
    Ok(NodeAudit::of(lab, NODE)?.veths)
}

#[test]
fn fabricd_killed_at_each_step_of_add_and_del_leaves_nothing_behind() {
    let mut lab = up(spec("faults", 1, 0, Backend::Vxlan));
    let steady = lab.add_pod(NODE, PodSpec::new("steady")).unwrap();

    for (i, point) in ADD_POINTS.into_iter().enumerate() {
        let name = format!("add{i}");
        lab.restart_fabricd_with(NODE, &["--fault", point]).unwrap();
        // The runtime's ADD fails with fabricd; it tries DEL (fabricd is down) and deletes
        // the pod's namespace.
        let err = lab
            .add_pod(NODE, PodSpec::new(&name))
            .expect_err("fabricd dies during ADD");
        assert_killed_at(&lab, point);
        eprintln!("{point}: ADD failed as fabricd died: {err:#}");
        let attached = believed(&lab, &[]);
        eventually(SETTLE, || {
            let v = veths(&lab)?;
            ensure!(v.len() == attached.len(), "veths {v:?} still there");
            Ok(())
        })
        .unwrap();
        lab.restart_fabricd_with(NODE, &[]).unwrap();
        assert_holds(&lab, &attached, &format!("{point}: fabricd restarted"));
        // The runtime's retry of the ADD.
        let pod = lab
            .add_pod(NODE, PodSpec::new(&name))
            .unwrap_or_else(|e| panic!("{point}: the retried ADD: {e:#}"));
        assert_holds(&lab, &believed(&lab, &[]), &format!("{point}: ADD retried"));
        ping(&lab, &steady.name, pod.ip).unwrap();
        ping(&lab, &pod.name, steady.ip).unwrap();
    }

    for (i, point) in DEL_POINTS.into_iter().enumerate() {
        let name = format!("del{i}");
        lab.add_pod(NODE, PodSpec::new(&name)).unwrap();
        lab.restart_fabricd_with(NODE, &["--fault", point]).unwrap();
        let err = lab.del_pod(&name).expect_err("fabricd dies during DEL");
        assert_killed_at(&lab, point);
        eprintln!("{point}: DEL failed as fabricd died: {err:#}");
        lab.restart_fabricd_with(NODE, &[]).unwrap();
        // The runtime's retry of the DEL (it kept the pod: its DEL failed).
        lab.del_pod(&name)
            .unwrap_or_else(|e| panic!("{point}: the retried DEL: {e:#}"));
        assert_holds(&lab, &believed(&lab, &[]), &format!("{point}: DEL retried"));
    }
    ping(&lab, &steady.name, lab.pods_on(NODE).last().unwrap().ip).unwrap();

    // A burst of ADDs at once: an address each, none held twice.
    let runtime = lab.cni_runtime(NODE).unwrap();
    let conflist = lab.default_conflist(NODE).unwrap();
    let sandboxes: Vec<Invocation> = (0..BURST)
        .map(|i| lab.pod_sandbox(&format!("burst{i}")).unwrap())
        .collect();
    let results: Vec<Result<(Ipv4Addr, Invocation)>> = std::thread::scope(|s| {
        let calls: Vec<_> = sandboxes
            .iter()
            .map(|inv| {
                let (runtime, conflist) = (&runtime, &conflist);
                s.spawn(move || {
                    let result = runtime
                        .add(conflist, inv)
                        .with_context(|| format!("ADD {}", inv.container_id))?;
                    let ip = cni_runtime::first_ipv4(&result).context("an IPv4 address")?;
                    let mut inv = inv.clone();
                    inv.cached_result = Some(result);
                    Ok((ip, inv))
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let burst: Vec<(Ipv4Addr, Invocation)> = results.into_iter().map(Result::unwrap).collect();
    let mut all: Vec<Ipv4Addr> = lab.pods_on(NODE).map(|p| p.ip).collect();
    all.extend(burst.iter().map(|(ip, _)| *ip));
    let distinct: BTreeSet<Ipv4Addr> = all.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        all.len(),
        "an address handed out twice: {all:?}"
    );
    let extra: Vec<(Ipv4Addr, String)> = burst
        .iter()
        .map(|(ip, inv)| (*ip, inv.container_id.clone()))
        .collect();
    assert_holds(&lab, &believed(&lab, &extra), "after the burst");
    for (_, inv) in &burst {
        runtime.del(&conflist, inv).unwrap();
    }
    assert_holds(&lab, &believed(&lab, &[]), "after the burst's DELs");

    fail_closed(&mut lab, steady.ip);
    lab.down().unwrap();
}

/// A veth wired by hand the way fabric wires a pod (proxy ARP, a /32 route to the pod, the
/// pod's default route via the link-local gateway), but not by fabric: under a pod veth's
/// name it forwards nothing; under another name the same wiring works (so the setup is
/// sound, and the drop is the rule's).
fn fail_closed(lab: &mut Lab, target: Ipv4Addr) {
    let sandbox = lab.pod_sandbox("rogue").unwrap();
    let rogue = sandbox.container_id.clone();
    let subnet: ipnet::Ipv4Net = lab.subnets().unwrap()[NODE].parse().unwrap();
    let addr = Ipv4Addr::from(u32::from(subnet.broadcast()) - 3);
    let wire = |lab: &Lab, veth: &str| -> Result<()> {
        let node = |argv: &[&str]| lab.exec_ok(NODE, argv).map(drop);
        let pod = |argv: &[&str]| lab.exec_ok(&rogue, argv).map(drop);
        let netns = lab.netns(&rogue)?;
        node(&[
            "ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", &netns,
        ])?;
        node(&[
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.{veth}.proxy_arp=1"),
        ])?;
        node(&["ip", "link", "set", veth, "up"])?;
        node(&["ip", "route", "replace", &format!("{addr}/32"), "dev", veth])?;
        pod(&["ip", "addr", "add", &format!("{addr}/32"), "dev", "eth0"])?;
        pod(&["ip", "link", "set", "eth0", "up"])?;
        pod(&["ip", "route", "add", "169.254.1.1", "dev", "eth0"])?;
        pod(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            "169.254.1.1",
            "dev",
            "eth0",
        ])?;
        Ok(())
    };
    let unwire = |lab: &Lab, veth: &str| lab.exec_ok(NODE, &["ip", "link", "del", veth]).map(drop);

    let named_like_a_pod = "fab0badc0ffee0";
    wire(lab, named_like_a_pod).unwrap();
    for _ in 0..3 {
        assert!(
            ping(lab, &rogue, target).is_err(),
            "a veth named like a pod's that fabric did not wire forwarded a packet"
        );
    }
    unwire(lab, named_like_a_pod).unwrap();

    let other_name = "rogue0";
    wire(lab, other_name).unwrap();
    eventually(Duration::from_secs(5), || ping(lab, &rogue, target))
        .expect("the same wiring under another name forwards (the test's setup works)");
    unwire(lab, other_name).unwrap();
}
