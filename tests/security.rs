//! Attacks on a lab cluster that fabric must refuse, each tried the way an attacker would:
//! a pod (or a host on the underlay that is not a node) hand-building VXLAN frames with a
//! spoofed inner source, a pod announcing itself as its node's IPv6 router, a forged lease
//! routing the datastore's address away, a forged pod record lending its labels to another
//! node's pod. Each test also shows the path it probes works for
//! legitimate traffic, so a refusal is fabric's and not a broken probe.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use fabric_lab::{Backend, CniCommand, Invocation, Lab};
use fabric_tests::{eventually, ping, spec, up};

const SINK_PORT: u16 = 9999;

/// The lab's own binary, as pods run it.
fn lab_bin(lab: &Lab) -> String {
    lab.state().bin_dir.join("fabric-lab").display().to_string()
}

/// Runs `fabric-lab attack sink` in `target` for `seconds` while `during` runs; returns what
/// it printed (one `<source> <payload>` line per datagram).
fn sink_while(
    lab: &Lab,
    target: &str,
    seconds: u64,
    during: impl FnOnce() -> Result<()>,
) -> Result<String> {
    let netns = lab.netns(target)?;
    let child = Command::new("ip")
        .args(["netns", "exec", &netns, &lab_bin(lab), "attack", "sink"])
        .args([
            "--port",
            &SINK_PORT.to_string(),
            "--seconds",
            &seconds.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the sink")?;
    std::thread::sleep(Duration::from_millis(300));
    let sent = during();
    let out = child.wait_with_output().context("waiting for the sink")?;
    sent?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The VTEP MAC of `node`'s VXLAN device, as its lease publishes it.
fn vtep_mac(lab: &Lab, node: &str) -> Result<String> {
    let out = lab.exec_ok(node, &["cat", "/sys/class/net/fabric.1/address"])?;
    Ok(out.trim().to_owned())
}

#[test]
fn pods_and_strangers_cannot_inject_vxlan_frames() {
    let lab = up(spec("inject", 2, 2, Backend::Vxlan));
    let victim = lab.pod("node2-pod1").unwrap().clone();
    let claimed = lab.pod("node2-pod2").unwrap().ip;
    let node1 = lab.node("node1").unwrap().clone();
    let node2 = lab.node("node2").unwrap().clone();
    let mac = vtep_mac(&lab, "node2").unwrap();
    let bin = lab_bin(&lab);
    let inject = |from: &str, to: String| -> Result<()> {
        let out = lab.exec(
            from,
            &[
                &bin,
                "attack",
                "vxlan",
                "--to",
                &to,
                "--dst-mac",
                &mac,
                "--inner-src",
                &claimed.to_string(),
                "--inner-dst",
                &format!("{}:{SINK_PORT}", victim.ip),
                "--count",
                "10",
            ],
        )?;
        ensure!(
            out.status.success(),
            "{from}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    let node2_end = format!("{}:8472", node2.underlay_ip);
    let node2_vtep = format!(
        "{}:8472",
        node2.subnet.as_deref().unwrap().split('/').next().unwrap()
    );
    let printed = sink_while(&lab, "node2-pod1", 6, || {
        // A pod on another node, at the victim node's tunnel end (its traffic leaves
        // masqueraded, from node1's address: a known node).
        inject("node1-pod1", node2_end.clone())?;
        // A pod on the victim's node, at its own node's tunnel end and VTEP address.
        inject("node2-pod2", node2_end.clone())?;
        inject("node2-pod2", node2_vtep.clone())?;
        // A host on the underlay that is not a node (the etcd host).
        inject("etcd", node2_end.clone())?;
        // The control: a real pod's datagram, sent the ordinary way, gets through.
        let out = lab.exec(
            "node1-pod2",
            &[
                "sh",
                "-c",
                &format!("echo control | nc -u -w 1 {} {SINK_PORT}", victim.ip),
            ],
        )?;
        ensure!(out.status.success(), "control datagram: {out:?}");
        Ok(())
    })
    .unwrap();
    assert!(
        printed.contains("control"),
        "the sink heard nothing, not even the control:\n{printed}"
    );
    assert!(
        !printed.contains("fabric-inject"),
        "injected VXLAN frames were decapsulated and delivered as {claimed}:\n{printed}"
    );
    // The guard is what an operator would look for, and the tunnel still carries traffic.
    let table = lab
        .exec_ok("node2", &["nft", "list", "set", "inet", "fabric", "nodes"])
        .unwrap();
    assert!(table.contains(&node1.underlay_ip.to_string()), "{table}");
    ping(&lab, "node1-pod1", victim.ip).unwrap();
}

#[test]
fn pods_cannot_announce_themselves_as_their_nodes_ipv6_router() {
    let lab = up(spec("ra", 1, 1, Backend::Vxlan));
    let pod = lab.pod("node1-pod1").unwrap().clone();
    let veth = lab
        .exec_ok(
            "node1",
            &[
                "sh",
                "-c",
                &format!("ip -o route show {} | awk '{{print $3}}'", pod.ip),
            ],
        )
        .unwrap();
    let veth = veth.trim().to_owned();
    assert!(veth.starts_with("fab"), "host veth of {}: {veth:?}", pod.ip);
    for (key, want) in [("accept_ra", "0"), ("accept_redirects", "0")] {
        let value = lab
            .exec_ok(
                "node1",
                &["cat", &format!("/proc/sys/net/ipv6/conf/{veth}/{key}")],
            )
            .unwrap();
        assert_eq!(value.trim(), want, "{veth} {key}");
    }
    // Sent once the pod's link-local address has passed duplicate address detection.
    let bin = lab_bin(&lab);
    let advertise = ["attack", "router-advert", "--iface", "eth0", "--count", "5"];
    eventually(Duration::from_secs(5), || {
        let out = lab.exec("node1-pod1", &[&[bin.as_str()][..], &advertise].concat())?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let routes = lab
        .exec_ok("node1", &["ip", "-6", "route", "show"])
        .unwrap();
    assert!(
        !routes.contains("default") && !routes.contains("2001:db8:bad"),
        "a pod's router advertisement changed the node's IPv6 routes:\n{routes}"
    );
    let addresses = lab.exec_ok("node1", &["ip", "-6", "addr", "show"]).unwrap();
    assert!(!addresses.contains("2001:db8:bad"), "{addresses}");
    // Neighbour discovery still works: the pod reaches its host veth's link-local address.
    let link_local = lab
        .exec_ok(
            "node1",
            &[
                "sh",
                "-c",
                &format!(
                    "ip -o -6 addr show dev {veth} scope link | awk '{{print $4}}' | cut -d/ -f1"
                ),
            ],
        )
        .unwrap();
    let target = format!("{}%eth0", link_local.trim());
    eventually(Duration::from_secs(5), || {
        let out = lab.exec("node1-pod1", &["ping", "-6", "-c", "1", "-W", "1", &target])?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        Ok(())
    })
    .unwrap();
}

#[test]
fn an_add_into_the_nodes_own_namespace_is_refused() {
    let lab = up(spec("hostns", 1, 0, Backend::Vxlan));
    let node = lab.node("node1").unwrap().clone();
    let routes_before = lab.exec_ok("node1", &["ip", "route", "show"]).unwrap();
    let links = || {
        let out = lab.exec_ok("node1", &["ip", "-o", "link", "show"]).unwrap();
        out.lines()
            .filter_map(|l| l.split(": ").nth(1).map(str::to_owned))
            .collect::<Vec<_>>()
    };
    let links_before = links();
    let inv = Invocation::new(
        "grab-the-host",
        Some(fabric_lab::topology::netns_path(&node.netns)),
    );
    let err = lab
        .cni("node1", CniCommand::Add, &inv, None)
        .expect_err("ADD into the node's namespace must fail");
    let text = err.to_string();
    assert!(text.contains("the node's own network namespace"), "{text}");
    assert_eq!(
        lab.exec_ok("node1", &["ip", "route", "show"]).unwrap(),
        routes_before,
        "the node's routes changed"
    );
    assert_eq!(links(), links_before, "the node's links changed");
}

/// Writes `value` at `key` in the lab's etcd the way someone with datastore access (or a
/// buggy tool) would, bypassing fabricctl's validation.
fn etcd_put(lab: &Lab, key: &str, value: &str) {
    let endpoint = format!("http://{}:2379", fabric_lab::topology::ETCD_IP);
    let out = lab
        .exec(
            "etcd",
            &["etcdctl", "--endpoints", &endpoint, "put", key, value],
        )
        .unwrap();
    assert!(out.status.success(), "etcdctl put {key}: {out:?}");
}

#[test]
fn a_forged_lease_cannot_route_the_datastore_away() {
    let lab = up(spec("forged", 2, 1, Backend::Vxlan));
    let (a, b) = (lab.pods()[0].clone(), lab.pods()[1].clone());
    let etcd = fabric_lab::topology::ETCD_IP;
    // A lease record that would route etcd's address into the overlay, toward node2.
    let node2 = lab.node("node2").unwrap().clone();
    let mac = vtep_mac(&lab, "node2").unwrap();
    let record = serde_json::json!({
        "node": "evil", "public_ip": node2.underlay_ip.to_string(), "backend_type": "vxlan",
        "backend_data": { "VtepMAC": mac, "VNI": 1 },
    });
    etcd_put(
        &lab,
        &format!("/fabric/subnets/{etcd}-32"),
        &record.to_string(),
    );
    // Every node noticed it (a warning naming the key) and routes nothing for it.
    let key = format!("subnets/{etcd}-32");
    for node in ["node1", "node2"] {
        eventually(Duration::from_secs(10), || {
            let log = std::fs::read_to_string(&lab.node(node)?.log)?;
            ensure!(
                log.contains("ignoring a lease record") && log.contains(&key),
                "{node}: no warning yet"
            );
            Ok(())
        })
        .unwrap();
        let route = lab
            .exec_ok(node, &["ip", "route", "get", &etcd.to_string()])
            .unwrap();
        assert!(
            !route.contains("fabric.1"),
            "{node} routes etcd into the overlay: {route}"
        );
    }
    // The datastore is still reachable from every node, and pods still talk.
    let leases = lab.fabricctl(&["leases", "-o", "json"]).unwrap();
    assert!(
        leases.contains("evil"),
        "the record is listed for the operator: {leases}"
    );
    ping(&lab, &a.name, b.ip).unwrap();
    let out = lab
        .exec("node1", &["nc", "-z", "-w", "2", &etcd.to_string(), "2379"])
        .unwrap();
    assert!(out.status.success(), "node1 cannot reach etcd: {out:?}");
}

#[test]
fn an_invalid_policy_keeps_isolating_what_it_selects() {
    let lab = up(spec("failclosed", 2, 1, Backend::Vxlan));
    let (a, b) = (lab.pods()[0].clone(), lab.pods()[1].clone());
    let _server = fabric_tests::Listeners::start(&lab, &[&b.name], 8080).unwrap();
    eventually(Duration::from_secs(5), || {
        fabric_tests::tcp_connect(&lab, &a.name, b.ip, 8080)
    })
    .unwrap();
    // A policy fabricctl would refuse (port 70000), written straight into the datastore: read
    // as written it allows ingress on that port only, so it must isolate b all the same.
    let policy = serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": { "name": "broken", "namespace": b.namespace },
        "spec": { "podSelector": {}, "ingress": [{ "ports": [{ "port": 70000 }] }] },
    });
    etcd_put(
        &lab,
        &format!("/fabric/policies/{}/broken", b.namespace),
        &policy.to_string(),
    );
    for node in lab.nodes() {
        let socket = node.socket.display().to_string();
        lab.fabricctl_local(&["policy", "sync", "--socket", &socket])
            .unwrap_or_else(|e| panic!("policy sync on {}: {e:#}", node.name));
    }
    eventually(Duration::from_secs(10), || {
        ensure!(
            fabric_tests::tcp_connect(&lab, &a.name, b.ip, 8080).is_err(),
            "{} still reaches {} past an invalid policy",
            a.name,
            b.name
        );
        Ok(())
    })
    .unwrap();
    let log = std::fs::read_to_string(&lab.node(&b.node).unwrap().log).unwrap();
    assert!(
        log.contains("invalid policy: isolating the pods it selects"),
        "no warning in {}'s log",
        b.node
    );
}

#[test]
fn a_truncated_pod_pool_is_rebuilt_from_the_kernel_not_reset() {
    let mut lab = up(spec("pool", 1, 2, Backend::Vxlan));
    let old: Vec<_> = lab.pods().to_vec();
    let node = lab.node("node1").unwrap().clone();
    lab.stop_fabricd("node1", fabric_lab::Signal::SIGTERM)
        .unwrap();
    // fabricd died mid-write: pods.json is cut short.
    let pool = node.state_dir.join("pods.json");
    let text = std::fs::read_to_string(&pool).unwrap();
    std::fs::write(&pool, &text[..text.len() / 3]).unwrap();
    lab.start_fabricd("node1").unwrap();
    lab.wait_ready("node1").unwrap();
    // New pods never get an address an old pod still has.
    let mut new = Vec::new();
    for i in 0..4 {
        new.push(
            lab.add_pod("node1", fabric_lab::PodSpec::new(format!("after{i}")))
                .unwrap(),
        );
    }
    for pod in &new {
        assert!(
            old.iter().all(|o| o.ip != pod.ip),
            "{} was handed {}, which {} still holds",
            pod.name,
            pod.ip,
            old.iter().find(|o| o.ip == pod.ip).unwrap().name
        );
    }
    assert!(
        node.state_dir.join("pods.json.corrupt").exists(),
        "the unreadable file is kept"
    );
    // The old pods are still guarded against spoofing, and a DEL of one frees its address.
    let addrs = lab
        .exec_ok(
            "node1",
            &["nft", "list", "set", "inet", "fabric", "pod_addrs"],
        )
        .unwrap();
    for pod in &old {
        assert!(
            addrs.contains(&pod.ip.to_string()),
            "{} lost anti-spoofing: {addrs}",
            pod.name
        );
    }
    lab.del_pod(&old[0].name).unwrap();
    let held = std::fs::read_to_string(&pool).unwrap();
    assert!(!held.contains(&format!("\"{}\"", old[0].ip)), "{held}");
    let routes = lab.exec_ok("node1", &["ip", "route", "show"]).unwrap();
    assert!(!routes.contains(&format!("{} dev", old[0].ip)), "{routes}");
    ping(&lab, &new[0].name, old[1].ip).unwrap();
}

#[test]
fn a_forged_pod_record_cannot_lend_its_labels_to_another_nodes_pod() {
    let mut lab = up(spec("forgedpod", 2, 0, Backend::Vxlan));
    let a = lab
        .add_pod("node1", fabric_lab::PodSpec::new("a").namespace("x"))
        .unwrap();
    let b = lab
        .add_pod("node2", fabric_lab::PodSpec::new("b").namespace("y"))
        .unwrap();
    let _server = fabric_tests::Listeners::start(&lab, &[&b.name], 8080).unwrap();
    // b admits only pods labelled role=trusted, from any namespace.
    let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: trusted-only, namespace: y}\nspec:\n  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {role: trusted}}}]\n    ports: [{port: 8080}]\n";
    let file = lab.state_dir().join("trusted-only.yaml");
    std::fs::write(&file, policy).unwrap();
    lab.fabricctl(&["policy", "apply", "-f", &file.display().to_string()])
        .unwrap();
    let sync = |lab: &Lab| {
        for node in lab.nodes() {
            let socket = node.socket.display().to_string();
            lab.fabricctl_local(&["policy", "sync", "--socket", &socket])
                .unwrap_or_else(|e| panic!("policy sync on {}: {e:#}", node.name));
        }
    };
    sync(&lab);
    let reaches = || fabric_tests::tcp_connect(&lab, &a.name, b.ip, 8080).is_ok();
    assert!(!reaches(), "a is not trusted");
    // A record written straight into etcd under node2 (whose credentials could write it),
    // claiming a's address (node1's lease) with the label the policy admits.
    let forged = serde_json::json!({
        "namespace": "x", "name": "impostor", "node": "node2", "container_id": "forged",
        "ip": a.ip, "labels": { "role": "trusted" },
    });
    etcd_put(&lab, "/fabric/pods/node2/forged", &forged.to_string());
    sync(&lab);
    for _ in 0..3 {
        assert!(!reaches(), "the forged record opened b to a");
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = std::fs::read_to_string(&lab.node("node2").unwrap().log).unwrap();
    assert!(
        log.contains("ignoring a pod record") && log.contains("node2/forged"),
        "no warning naming the record in node2's log"
    );
    // The policy does admit a once a itself carries the label: the probe is sound.
    lab.fabricctl(&["pod", "label", "x/a", "role=trusted"])
        .unwrap();
    sync(&lab);
    eventually(Duration::from_secs(10), || {
        ensure!(reaches(), "a, labelled trusted, cannot reach b");
        Ok(())
    })
    .unwrap();
}
