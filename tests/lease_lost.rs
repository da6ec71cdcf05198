//! A node that loses its subnet: partitioned from etcd past its lease TTL while another node
//! is given the subnet, then healed. It must take another subnet, stop serving the one it
//! lost and detach the pods it had wired in it (their addresses are the other node's now),
//! and serve new pods from the new subnet.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use fabric_lab::audit::NodeAudit;
use fabric_lab::{Backend, Lab, PodSpec};
use fabric_tests::{eventually, ping, spec, subnets, up};
use ipnet::Ipv4Net;

/// The lab's lease TTL: short, so the partition outlives it quickly.
const TTL: Duration = Duration::from_secs(6);

/// The subnet `node` holds in etcd, if any.
fn held(lab: &Lab, node: &str) -> Result<Option<Ipv4Net>> {
    subnets(lab)?
        .get(node)
        .map(|s| s.parse().context("a subnet"))
        .transpose()
}

#[test]
fn a_node_that_loses_its_subnet_detaches_its_pods_and_serves_its_new_one() {
    let mut spec = spec("lost", 2, 2, Backend::Vxlan);
    spec.lease_ttl = TTL;
    let mut lab = up(spec);
    let old = held(&lab, "node1").unwrap().expect("node1 holds a subnet");
    let old_pods: Vec<_> = lab.pods_on("node1").cloned().collect();
    let peer = lab.pod("node2-pod1").unwrap().ip;
    ping(&lab, "node1-pod1", peer).unwrap();

    lab.partition_from_etcd("node1").unwrap();
    eventually(TTL * 5, || {
        ensure!(
            held(&lab, "node1")?.is_none(),
            "node1's lease has not expired yet"
        );
        Ok(())
    })
    .unwrap();
    // Another node is given the subnet while node1 cannot see the datastore.
    lab.fabricctl(&["reserve", &old.to_string(), "node3"])
        .unwrap();
    lab.add_node().unwrap();
    assert_eq!(
        held(&lab, "node3").unwrap(),
        Some(old),
        "node3 took the reserved subnet"
    );

    lab.heal_etcd_partition("node1").unwrap();
    let new = eventually(TTL * 5, || {
        let now = held(&lab, "node1")?.context("node1 holds no subnet yet")?;
        ensure!(now != old, "node1 still holds {old}");
        Ok(now)
    })
    .unwrap_or_else(|e| panic!("{e:#}\nnode1's log:\n{}", lab.log_tail("node1")));

    // The pods wired in the lost subnet are detached: no host route to them on node1, no
    // record giving another node's addresses their identity.
    eventually(Duration::from_secs(20), || {
        let routes = lab.exec_ok("node1", &["ip", "-4", "route", "show"])?;
        let recs = NodeAudit::of(&lab, "node1")?.records;
        for pod in &old_pods {
            let ip = pod.ip.to_string();
            ensure!(
                !routes
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some(ip.as_str())),
                "node1 still routes {ip} ({}):\n{routes}",
                pod.name
            );
            ensure!(
                !recs.contains_key(&pod.ip),
                "node1 still registers {ip}: {recs:?}"
            );
        }
        Ok(())
    })
    .unwrap();
    assert!(
        ping(&lab, &old_pods[0].name, peer).is_err(),
        "a pod of the lost subnet still reaches other nodes"
    );

    // New pods come from the new subnet and reach the other nodes; the lost subnet is
    // served by the node that holds it now.
    let fresh = lab.add_pod("node1", PodSpec::new("fresh")).unwrap();
    assert!(new.contains(&fresh.ip), "{} is not in {new}", fresh.ip);
    eventually(Duration::from_secs(20), || ping(&lab, "fresh", peer)).unwrap();
    let theirs = lab.add_pod("node3", PodSpec::new("theirs")).unwrap();
    assert!(old.contains(&theirs.ip), "{} is not in {old}", theirs.ip);
    eventually(Duration::from_secs(20), || {
        ping(&lab, "node2-pod1", theirs.ip)
    })
    .unwrap();
    eventually(Duration::from_secs(20), || ping(&lab, "fresh", theirs.ip)).unwrap();
    // What node1 holds for its pods (pool, records, veths, routes, firewall sets) is exactly
    // its new pod.
    let found = NodeAudit::of(&lab, "node1")
        .unwrap()
        .disagreements(&[(fresh.ip, fresh.container_id.clone())].into(), false);
    assert!(found.is_empty(), "{}", found.join("\n"));
}
