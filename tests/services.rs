//! Services, DNS and NodePort across the fabric, with the real kube-proxy (nftables mode) on
//! every node, the real CoreDNS behind the cluster DNS address, the real kube-scheduler, and
//! the lab's kubelet role running ordinary manifests: the Kubernetes networking tutorial
//! ("Connecting Applications with Services") replayed step by step, each step a real
//! connection or lookup from a pod, or from a host outside the cluster.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use fabric_lab::{Backend, Datastore, Lab, LabSpec};
use fabric_tests::{eventually, spec, up};

/// The tutorial's manifests, as the lab's examples hold them.
fn example(file: &str) -> String {
    format!(
        "{}/../deploy/lab/examples/{file}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn services_spec(tag: &str, backend: Backend) -> LabSpec {
    let mut spec = spec(tag, 3, 0, backend);
    spec.datastore = Datastore::Kubernetes;
    spec.services = true;
    spec
}

fn kubectl(lab: &Lab, args: &[&str]) -> String {
    lab.kubectl()
        .unwrap()
        .run(args)
        .unwrap_or_else(|e| panic!("kubectl {args:?}: {e:#}"))
}

/// Applies the tutorial's Deployment and Service and the client pod in `namespace`; waits
/// until `replicas` endpoints are ready, the client runs and reaches the Service.
fn tutorial(lab: &Lab, namespace: &str, replicas: usize) {
    for file in ["nginx-deployment.yaml", "nginx-service.yaml", "client.yaml"] {
        kubectl(lab, &["apply", "-n", namespace, "-f", &example(file)]);
    }
    lab.wait_ready_endpoints(
        namespace,
        "kubernetes.io/service-name=nginx-service",
        replicas,
        Duration::from_secs(90),
    )
    .unwrap();
    lab.wait_kubelet_pod(namespace, "client", Duration::from_secs(60))
        .unwrap();
    // kube-proxy on the client's node programs the Service a moment after its endpoints are
    // ready (until then it rejects): the Service answers once before the test goes on.
    let client = format!("{namespace}/client");
    eventually(Duration::from_secs(15), || {
        curl(lab, &client, "http://nginx-service")
    })
    .unwrap();
}

/// The ClusterIP of Service `name` in `default`.
fn cluster_ip(lab: &Lab, name: &str) -> String {
    kubectl(
        lab,
        &["get", "svc", name, "-o", "jsonpath={.spec.clusterIP}"],
    )
}

/// One HTTP GET from lab namespace `from`; the body (the serving pod's name).
fn curl(lab: &Lab, from: &str, url: &str) -> Result<String> {
    let out = lab.exec(from, &["curl", "-sS", "--max-time", "2", url])?;
    if !out.status.success() {
        bail!(
            "{from}: curl {url}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The names of the pods behind `app=nginx` in `namespace`, and the node of each.
fn replicas(lab: &Lab, namespace: &str) -> Vec<(String, String)> {
    let pods = lab
        .kubectl()
        .unwrap()
        .json(&["get", "pods", "-n", namespace, "-l", "app=nginx"])
        .unwrap();
    pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap().to_string(),
                p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// GETs `url` from `from` until every pod of `want` has answered.
fn answers_from_all(lab: &Lab, from: &str, url: &str, want: &BTreeSet<String>) -> Result<()> {
    let mut seen = BTreeSet::new();
    for _ in 0..60 {
        let body = curl(lab, from, url)?;
        ensure!(
            want.contains(&body),
            "{url} answered {body:?}, not a replica"
        );
        seen.insert(body);
        if &seen == want {
            return Ok(());
        }
    }
    bail!("{url}: only {seen:?} of {want:?} answered in 60 requests")
}

/// The node the kubelet role runs `namespace/pod` on.
fn node_of<'a>(lab: &'a Lab, namespace: &str, pod: &str) -> &'a fabric_lab::Node {
    let node = lab
        .kubelet_pods()
        .into_iter()
        .find(|(_, p)| p.namespace == namespace && p.name == pod)
        .map(|(node, _)| node)
        .unwrap_or_else(|| panic!("no kubelet runs {namespace}/{pod}"));
    lab.node(&node).unwrap()
}

/// The tutorial: a Deployment of 3 and a ClusterIP Service, reached from a client pod by the
/// Service's short name (the search path), its FQDN and its ClusterIP, every replica
/// answering; then the NodePort from outside the cluster on every node, with a single replica
/// so that the nodes without one forward across the fabric.
fn tutorial_on(backend: Backend, tag: &str) {
    let lab = up(services_spec(tag, backend));
    tutorial(&lab, "default", 3);
    let placed = replicas(&lab, "default");
    let names: BTreeSet<String> = placed.iter().map(|(n, _)| n.clone()).collect();
    let spread: BTreeSet<&str> = placed.iter().map(|(_, node)| node.as_str()).collect();
    assert!(spread.len() >= 2, "replicas all on one node: {placed:?}");
    let client_node = node_of(&lab, "default", "client").name.clone();
    assert!(
        placed.iter().any(|(_, node)| *node != client_node),
        "no replica on another node than the client's"
    );
    let cluster_ip = cluster_ip(&lab, "nginx-service");
    for url in [
        "http://nginx-service".to_string(),
        "http://nginx-service.default.svc.cluster.local".to_string(),
        format!("http://{}", cluster_ip.trim()),
    ] {
        answers_from_all(&lab, "default/client", &url, &names).unwrap();
    }

    // NodePort 30080 from a host on the underlay, outside the cluster, on every node.
    kubectl(&lab, &["apply", "-f", &example("nginx-nodeport.yaml")]);
    kubectl(
        &lab,
        &["scale", "deployment/nginx-deployment", "--replicas=1"],
    );
    eventually(Duration::from_secs(60), || {
        let left = replicas(&lab, "default");
        ensure!(left.len() == 1, "still {} replicas", left.len());
        Ok(())
    })
    .unwrap();
    let (solo, solo_node) = replicas(&lab, "default").remove(0);
    for node in lab.nodes() {
        let url = format!("http://{}:30080", node.underlay_ip);
        let body = eventually(Duration::from_secs(15), || curl(&lab, "ext", &url)).unwrap();
        assert_eq!(
            body, solo,
            "{url} (node {}, replica on {solo_node}) answered {body:?}",
            node.name
        );
    }
}

#[test]
fn services_tutorial_on_vxlan() {
    tutorial_on(Backend::Vxlan, "svx");
}

#[test]
fn services_tutorial_on_host_gw() {
    tutorial_on(Backend::HostGw, "shg");
}

#[test]
fn services_tutorial_on_wireguard() {
    tutorial_on(Backend::Wireguard, "swg");
}

/// A host's addresses for `name` as the pod's resolver finds them (glibc, the pod's
/// resolv.conf with the cluster DNS and search path).
fn lookup(lab: &Lab, from: &str, name: &str) -> Result<BTreeSet<String>> {
    let out = lab.exec(from, &["getent", "ahostsv4", name])?;
    ensure!(out.status.success(), "{from}: {name} does not resolve");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect())
}

#[test]
fn services_headless_hairpin_and_local_traffic_policy() {
    let lab = up(services_spec("shh", Backend::Vxlan));
    tutorial(&lab, "default", 3);
    let headless = r#"{"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "nginx-headless"},
        "spec": {"clusterIP": "None", "selector": {"app": "nginx"}, "ports": [{"port": 80}]}}"#;
    lab.kubectl()
        .unwrap()
        .run_stdin(&["apply", "-f", "-"], headless)
        .unwrap();
    // Headless: DNS answers with the ready pods' own addresses.
    let endpoints: BTreeSet<String> = lab
        .wait_ready_endpoints(
            "default",
            "kubernetes.io/service-name=nginx-headless",
            3,
            Duration::from_secs(30),
        )
        .unwrap()
        .into_iter()
        .collect();
    let pod_ips: BTreeSet<String> = lab
        .kubectl()
        .unwrap()
        .json(&["get", "pods", "-l", "app=nginx"])
        .unwrap()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["status"]["podIP"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(endpoints, pod_ips);
    eventually(Duration::from_secs(15), || {
        let found = lookup(&lab, "default/client", "nginx-headless")?;
        ensure!(
            found == pod_ips,
            "nginx-headless resolves to {found:?}, pods are {pod_ips:?}"
        );
        Ok(())
    })
    .unwrap();
    // The ClusterIP Service resolves to its ClusterIP.
    let cluster_ip = cluster_ip(&lab, "nginx-service");
    let found = lookup(&lab, "default/client", "nginx-service").unwrap();
    assert_eq!(found, BTreeSet::from([cluster_ip.trim().to_string()]));

    // Hairpin: a pod reaches itself through its own Service.
    kubectl(
        &lab,
        &["scale", "deployment/nginx-deployment", "--replicas=1"],
    );
    eventually(Duration::from_secs(60), || {
        ensure!(replicas(&lab, "default").len() == 1, "scaling down");
        Ok(())
    })
    .unwrap();
    let (solo, _) = replicas(&lab, "default").remove(0);
    lab.wait_ready_endpoints(
        "default",
        "kubernetes.io/service-name=nginx-service",
        1,
        Duration::from_secs(30),
    )
    .unwrap();
    let me = format!("default/{solo}");
    let body = eventually(Duration::from_secs(15), || {
        curl(&lab, &me, "http://nginx-service")
    })
    .unwrap();
    assert_eq!(body, solo, "hairpin answered by {body:?}");

    // externalTrafficPolicy: Local keeps the client's address; Cluster masquerades it.
    let local = r#"{"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "nginx-local"},
        "spec": {"type": "NodePort", "externalTrafficPolicy": "Local", "selector": {"app": "nginx"},
                 "ports": [{"port": 80, "nodePort": 30081}]}}"#;
    lab.kubectl()
        .unwrap()
        .run_stdin(&["apply", "-f", "-"], local)
        .unwrap();
    kubectl(&lab, &["apply", "-f", &example("nginx-nodeport.yaml")]);
    let node = node_of(&lab, "default", &solo).clone();
    let pod_ip = lab.kubelet_pod(&me).unwrap().ip.unwrap().to_string();
    let outside = "172.30.0.250";
    let reply_to = |port: u16| -> Result<String> {
        let url = format!("http://{}:{port}", node.underlay_ip);
        eventually(Duration::from_secs(15), || curl(&lab, "ext", &url))?;
        // The node's connection tracking: the reply tuple says where the pod answered to.
        let table = lab.exec_ok(
            &node.name,
            &["conntrack", "-L", "-p", "tcp", "--dport", &port.to_string()],
        )?;
        let entry = table
            .lines()
            .find(|l| l.contains(&format!("src={outside}")) && l.contains(&format!("src={pod_ip}")))
            .with_context(|| {
                format!("no conntrack entry for {outside} -> :{port} -> {pod_ip}: {table}")
            })?;
        let reply = entry
            .split(&format!("src={pod_ip}"))
            .nth(1)
            .unwrap_or_default();
        let dst = reply
            .split_whitespace()
            .find_map(|f| f.strip_prefix("dst="))
            .context("no reply destination")?;
        Ok(dst.to_string())
    };
    assert_eq!(
        reply_to(30081).unwrap(),
        outside,
        "Local: the pod sees the client"
    );
    assert_ne!(
        reply_to(30080).unwrap(),
        outside,
        "Cluster: the client is masqueraded"
    );
}

/// One of the project's example policies (`deploy/policies/`).
fn project_policy(file: &str) -> String {
    format!("{}/../deploy/policies/{file}", env!("CARGO_MANIFEST_DIR"))
}

/// Applies a manifest file and waits until every node enforces it.
fn apply_and_sync(lab: &Lab, file: &str) {
    kubectl(lab, &["apply", "-f", file]);
    sync(lab);
}

/// Waits until every node enforces the policies the API holds.
fn sync(lab: &Lab) {
    for node in lab.nodes() {
        lab.fabricctl_local(&[
            "policy",
            "sync",
            "--socket",
            &node.socket.display().to_string(),
        ])
        .unwrap();
    }
}

#[test]
fn services_network_policy_applies_after_dnat_and_dns_egress_is_allowed() {
    let lab = up(services_spec("snp", Backend::Vxlan));
    kubectl(&lab, &["create", "namespace", "y"]);
    tutorial(&lab, "y", 3);
    let names: BTreeSet<String> = replicas(&lab, "y").into_iter().map(|(n, _)| n).collect();
    answers_from_all(&lab, "y/client", "http://nginx-service", &names).unwrap();

    // Ingress denied to every pod of y: the Service's traffic is judged at its real
    // destination, after kube-proxy's DNAT.
    apply_and_sync(&lab, &project_policy("default-deny.yaml"));
    assert!(
        curl(&lab, "y/client", "http://nginx-service").is_err(),
        "denied through the Service"
    );
    let allow = r#"{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "nginx-from-client", "namespace": "y"},
        "spec": {"podSelector": {"matchLabels": {"app": "nginx"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                              "ports": [{"port": 80}]}]}}"#;
    lab.kubectl()
        .unwrap()
        .run_stdin(&["apply", "-f", "-"], allow)
        .unwrap();
    sync(&lab);
    answers_from_all(&lab, "y/client", "http://nginx-service", &names).unwrap();

    // Egress denied from y but for DNS to kube-system: names resolve, nothing else goes out.
    apply_and_sync(&lab, &project_policy("allow-dns-egress.yaml"));
    let ip = lookup(&lab, "y/client", "nginx-service").unwrap();
    assert_eq!(ip.len(), 1, "{ip:?}");
    assert!(
        curl(&lab, "y/client", "http://nginx-service").is_err(),
        "egress denied"
    );
    let pod = lab
        .kubelet_pod(&format!("y/{}", names.iter().next().unwrap()))
        .unwrap();
    assert!(
        curl(&lab, "y/client", &format!("http://{}", pod.ip.unwrap())).is_err(),
        "egress to the pod itself denied too"
    );
}

#[test]
fn services_ipv6_on_a_dual_stack_lab() {
    let mut spec = services_spec("s6", Backend::Vxlan);
    spec.ipv6_network = Some("fd00:10:244::/48".into());
    let lab = up(spec);
    tutorial(&lab, "default", 3);
    let dual = r#"{"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "nginx-dual"},
        "spec": {"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv6", "IPv4"],
                 "selector": {"app": "nginx"}, "ports": [{"port": 80}]}}"#;
    lab.kubectl()
        .unwrap()
        .run_stdin(&["apply", "-f", "-"], dual)
        .unwrap();
    let ips = kubectl(
        &lab,
        &[
            "get",
            "svc",
            "nginx-dual",
            "-o",
            "jsonpath={.spec.clusterIPs[0]}",
        ],
    );
    let v6 = ips.trim().to_string();
    assert!(v6.contains(':'), "the first ClusterIP is IPv6: {v6:?}");
    let names: BTreeSet<String> = replicas(&lab, "default")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    eventually(Duration::from_secs(15), || {
        answers_from_all(&lab, "default/client", &format!("http://[{v6}]"), &names)
    })
    .unwrap();
    // The name resolves to the IPv6 ClusterIP (AAAA), and curl -6 by name goes there.
    let out = lab
        .exec_ok("default/client", &["getent", "ahostsv6", "nginx-dual"])
        .unwrap();
    assert!(out.contains(&v6), "{out}");
    let body = curl(&lab, "default/client", "http://nginx-dual").unwrap();
    assert!(names.contains(&body), "{body}");
    let out = lab
        .exec(
            "default/client",
            &["curl", "-6", "-sS", "--max-time", "2", "http://nginx-dual"],
        )
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
