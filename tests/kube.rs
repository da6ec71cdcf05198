//! End-to-end tests of Kubernetes mode on a real control plane (kube-apiserver,
//! kube-controller-manager and etcd 3.6, built from their pinned Go modules): fabricd runs on
//! each lab node with the DaemonSet's ServiceAccount token and exactly the manifest's
//! ClusterRole, takes its subnet from the node's `spec.podCIDRs`, publishes its backend data
//! in annotations, and follows the other nodes through the API.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use fabric_lab::{Backend, Datastore, Lab, LabSpec};
use fabric_tests::{eventually, full_mesh, kernel_state, ping, spec, up};
use serde_json::Value;

fn kube_spec(tag: &str, nodes: usize, pods: usize, backend: Backend) -> LabSpec {
    let mut spec = spec(tag, nodes, pods, backend);
    spec.datastore = Datastore::Kubernetes;
    spec
}

fn kubectl_json(lab: &Lab, args: &[&str]) -> Result<Value> {
    lab.kubectl()?.json(args)
}

/// The Node object of `node`.
fn node_object(lab: &Lab, node: &str) -> Result<Value> {
    kubectl_json(lab, &["get", "node", node, "-o", "json"])
}

/// What an operator checks on every node: its podCIDR is the subnet fabricd serves, fabric's
/// annotations carry the backend, and `NetworkUnavailable` is False.
fn check_nodes(lab: &Lab, backend: Backend) -> Result<()> {
    for node in lab.nodes() {
        let object = node_object(lab, &node.name)?;
        let cidr = object["spec"]["podCIDR"]
            .as_str()
            .with_context(|| format!("{}: no podCIDR", node.name))?;
        let served = lab.subnets()?;
        ensure!(
            served.get(&node.name).map(String::as_str) == Some(cidr),
            "{}: fabricd serves {:?}, the node's podCIDR is {cidr}",
            node.name,
            served.get(&node.name)
        );
        for other in lab.nodes().iter().filter(|o| o.name != node.name) {
            let routes = lab.exec_ok(&other.name, &["ip", "-4", "route", "show", cidr])?;
            ensure!(
                !routes.trim().is_empty(),
                "{} has no route to {}'s podCIDR {cidr}",
                other.name,
                node.name
            );
        }
        let annotations = &object["metadata"]["annotations"];
        ensure!(
            annotations["fabric.dev/backend-type"] == backend.as_str(),
            "{}: backend annotation {:?}",
            node.name,
            annotations
        );
        ensure!(
            annotations["fabric.dev/public-ip"] == node.underlay_ip.to_string(),
            "{}: public-ip annotation {:?}",
            node.name,
            annotations["fabric.dev/public-ip"]
        );
        let unavailable = object["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "NetworkUnavailable")
            .with_context(|| format!("{}: no NetworkUnavailable condition", node.name))?;
        ensure!(
            unavailable["status"] == "False",
            "{}: NetworkUnavailable is {:?}",
            node.name,
            unavailable
        );
    }
    Ok(())
}

/// No fabricd log holds an authorization failure: the manifest's RBAC is enough.
fn no_forbidden(lab: &Lab) -> Result<()> {
    for node in lab.nodes() {
        let log = std::fs::read_to_string(&node.log)?;
        if let Some(line) = log
            .lines()
            .find(|l| l.contains(" 403") || l.contains("Forbidden") || l.contains("forbidden"))
        {
            bail!("{}: fabricd was refused by the API: {line}", node.name);
        }
    }
    Ok(())
}

fn mesh_on(backend: Backend, tag: &str) {
    let lab = up(kube_spec(tag, 3, 2, backend));
    full_mesh(&lab).unwrap();
    eventually(Duration::from_secs(10), || check_nodes(&lab, backend)).unwrap();
    no_forbidden(&lab).unwrap();
}

#[test]
fn kube_vxlan_three_nodes_full_mesh() {
    mesh_on(Backend::Vxlan, "kvx");
}

#[test]
fn kube_host_gw_three_nodes_full_mesh() {
    mesh_on(Backend::HostGw, "khg");
}

#[test]
fn kube_wireguard_three_nodes_full_mesh() {
    mesh_on(Backend::Wireguard, "kwg");
}

#[test]
fn kube_deleted_node_is_forgotten_and_restart_keeps_pod_ips() {
    let mut lab = up(kube_spec("kdel", 3, 1, Backend::Vxlan));
    full_mesh(&lab).unwrap();
    // A restarted fabricd keeps its subnet and its pods' addresses.
    let before: Vec<_> = lab.pods().iter().map(|p| (p.name.clone(), p.ip)).collect();
    lab.restart_fabricd_with("node1", &[]).unwrap();
    lab.wait_ready("node1").unwrap();
    let after: Vec<_> = lab.pods().iter().map(|p| (p.name.clone(), p.ip)).collect();
    assert_eq!(before, after);
    full_mesh(&lab).unwrap();

    // `kubectl delete node`: every other node drops its route, neighbour and FDB entry.
    let gone = node_object(&lab, "node3").unwrap();
    let cidr = gone["spec"]["podCIDR"].as_str().unwrap().to_owned();
    lab.kubectl()
        .unwrap()
        .run(&["delete", "node", "node3", "--wait=false"])
        .unwrap();
    for node in ["node1", "node2"] {
        eventually(Duration::from_secs(10), || {
            let state = kernel_state(&lab, node)?;
            ensure!(
                !state.routes.iter().any(|r| r.starts_with(&cidr)),
                "{node} still routes {cidr}: {:?}",
                state.routes
            );
            ensure!(
                state.neighbours.len() == 1 && state.fdb.len() == 1,
                "{node} still has node3's neighbour or FDB entry: {:?} {:?}",
                state.neighbours,
                state.fdb
            );
            Ok(())
        })
        .unwrap();
    }
    let node3_pod = lab.pods_on("node3").next().unwrap().ip;
    assert!(ping(&lab, "node1-pod1", node3_pod).is_err());
    ping(&lab, "node1-pod1", lab.pods_on("node2").next().unwrap().ip).unwrap();
}

#[test]
fn kube_manifests_pass_a_server_side_dry_run() {
    let lab = up(kube_spec("kman", 1, 0, Backend::Vxlan));
    let manifest = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/kubernetes/fabric.yaml"
    ))
    .canonicalize()
    .unwrap();
    let out = lab
        .kubectl()
        .unwrap()
        .run(&[
            "apply",
            "--dry-run=server",
            "-f",
            &manifest.display().to_string(),
        ])
        .unwrap();
    for object in [
        "namespace/fabric-system",
        "serviceaccount/fabric",
        "clusterrole.rbac.authorization.k8s.io/fabric",
        "clusterrolebinding.rbac.authorization.k8s.io/fabric",
        "configmap/fabric-config",
        "daemonset.apps/fabric",
    ] {
        assert!(out.contains(object), "{object} missing from: {out}");
    }
    // The kustomization renders the same objects and passes too.
    let dir = manifest.parent().unwrap().display().to_string();
    let out = lab
        .kubectl()
        .unwrap()
        .run(&["apply", "--dry-run=server", "-k", &dir])
        .unwrap();
    assert!(out.contains("daemonset.apps/fabric"), "{out}");
    // The example policies are what kubectl reads too (YAML 1.1: a bare `y` is a boolean).
    let kubectl = lab.kubectl().unwrap();
    kubectl.run(&["create", "namespace", "y"]).unwrap();
    let policies = manifest
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("policies");
    for entry in std::fs::read_dir(&policies).unwrap() {
        let path = entry.unwrap().path();
        let out = kubectl
            .run(&[
                "apply",
                "--dry-run=server",
                "-f",
                &path.display().to_string(),
            ])
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        assert!(out.contains("networkpolicy"), "{}: {out}", path.display());
    }
}

/// `/readyz` of fabricd on `node` (its health endpoint, inside the node's namespace).
fn readyz(lab: &Lab, node: &str) -> Result<String> {
    let out = lab.exec(
        node,
        &[
            "sh",
            "-c",
            "printf 'GET /readyz HTTP/1.0\\r\\n\\r\\n' | nc -q 1 -w 2 127.0.0.1 9109",
        ],
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn kube_node_waits_for_its_pod_cidr_then_joins() {
    let mut lab = up(kube_spec("klate", 2, 1, Backend::Vxlan));
    lab.stop_controller_manager().unwrap();
    // Registered while nobody allocates: fabricd waits, says why, and is not ready.
    let late = lab.add_node_unready().unwrap();
    eventually(Duration::from_secs(15), || {
        let log = std::fs::read_to_string(&late.log)?;
        ensure!(
            log.contains("--allocate-node-cidrs"),
            "fabricd's log does not name the fix yet"
        );
        let ready = readyz(&lab, &late.name)?;
        ensure!(ready.contains("503"), "/readyz answered {ready:?}");
        Ok(())
    })
    .unwrap();
    assert!(fabric_lab::node::wait_ready(&late, Duration::from_secs(2)).is_err());
    // The podCIDR arrives: the node comes up on its own and joins the mesh.
    lab.start_controller_manager().unwrap();
    lab.wait_ready(&late.name).unwrap();
    eventually(Duration::from_secs(15), || {
        let ready = readyz(&lab, &late.name)?;
        ensure!(ready.contains("200"), "/readyz answered {ready:?}");
        Ok(())
    })
    .unwrap();
    lab.refresh_subnets().unwrap();
    lab.add_pod(&late.name, fabric_lab::PodSpec::new("late-pod"))
        .unwrap();
    full_mesh(&lab).unwrap();
    eventually(Duration::from_secs(10), || {
        check_nodes(&lab, Backend::Vxlan)
    })
    .unwrap();
}

/// Tries one TCP connection from pod `from` to `to:port` within 100 ms.
fn connects(lab: &Lab, from: &str, to: std::net::Ipv4Addr, port: u16) -> Result<bool> {
    let lab_bin = lab.state().bin_dir.join("fabric-lab");
    let target = format!("{to}:{port}/tcp");
    let lab_bin = lab_bin.display().to_string();
    let out = lab.exec_ok(from, &[&lab_bin, "probe", "--timeout", "100ms", &target])?;
    Ok(out.contains("\"connected\""))
}

/// Waits until `from` connects to `to:port`; returns how long that took.
fn time_to_connect(lab: &Lab, from: &str, to: std::net::Ipv4Addr, port: u16) -> Duration {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if connects(lab, from, to, port).unwrap() {
            return start.elapsed();
        }
    }
    panic!("{from} never reached {to}:{port}");
}

#[test]
fn kube_relabelled_pod_and_namespace_are_enforced_within_a_second() {
    let mut lab = up(kube_spec("krel", 2, 0, Backend::Vxlan));
    let web = lab
        .add_pod(
            "node2",
            fabric_lab::PodSpec::new("web")
                .namespace("x")
                .label("app", "web"),
        )
        .unwrap();
    lab.add_pod(
        "node1",
        fabric_lab::PodSpec::new("cli")
            .namespace("y")
            .label("app", "other"),
    )
    .unwrap();
    let _server = fabric_tests::Listeners::porter(&lab, &["x/web"], 80).unwrap();
    assert!(
        connects(&lab, "y/cli", web.ip, 80).unwrap(),
        "open before any policy"
    );
    let policy = r#"{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "web", "namespace": "x"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                 "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}},
                                        "podSelector": {"matchLabels": {"app": "client"}}}]}]}}"#;
    let kubectl = lab.kubectl().unwrap();
    kubectl.run_stdin(&["apply", "-f", "-"], policy).unwrap();
    for node in lab.nodes() {
        lab.fabricctl_local(&[
            "policy",
            "sync",
            "--socket",
            &node.socket.display().to_string(),
        ])
        .unwrap();
    }
    assert!(
        !connects(&lab, "y/cli", web.ip, 80).unwrap(),
        "the policy denies"
    );
    // Either label alone is not enough.
    kubectl
        .run(&["label", "namespace", "y", "team=blue", "--overwrite"])
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !connects(&lab, "y/cli", web.ip, 80).unwrap(),
        "pod label still missing"
    );
    // The pod's label completes it: enforced on the server's node within a second.
    kubectl
        .run(&[
            "label",
            "pod",
            "cli",
            "-n",
            "y",
            "app=client",
            "--overwrite",
        ])
        .unwrap();
    let took = time_to_connect(&lab, "y/cli", web.ip, 80);
    assert!(
        took <= Duration::from_secs(1),
        "pod relabel enforced after {took:?}"
    );
    // Taking the namespace label away denies again, as fast.
    kubectl.run(&["label", "namespace", "y", "team-"]).unwrap();
    let start = std::time::Instant::now();
    while connects(&lab, "y/cli", web.ip, 80).unwrap() {
        assert!(
            start.elapsed() <= Duration::from_secs(1),
            "namespace relabel not enforced after {:?}",
            start.elapsed()
        );
    }
}

#[test]
fn kube_fabricctl_reads_the_api() {
    let lab = up(kube_spec("kctl", 2, 1, Backend::Vxlan));
    let leases: Value =
        serde_json::from_str(&lab.fabricctl(&["leases", "-o", "json"]).unwrap()).unwrap();
    let nodes: Vec<&str> = leases
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["node1", "node2"]);
    let pods = lab.fabricctl(&["pod", "list"]).unwrap();
    for pod in lab.pods() {
        assert!(
            pods.contains(&pod.ip.to_string()),
            "{} missing: {pods}",
            pod.ip
        );
    }
    let explain = lab
        .fabricctl(&[
            "policy",
            "explain",
            "--from",
            "default/node1-pod1",
            "--to",
            "default/node2-pod1",
            "--port",
            "80/TCP",
        ])
        .unwrap();
    assert!(explain.to_lowercase().contains("allow"), "{explain}");
    // What belongs to the API is refused with the kubectl way to do it.
    let refused = lab
        .fabricctl(&["policy", "apply", "-f", "/dev/null"])
        .unwrap_err();
    assert!(
        format!("{refused:#}").contains("kubectl apply"),
        "{refused:#}"
    );
}
