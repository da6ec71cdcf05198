//! End-to-end tests of NetworkPolicy in etcd mode: pods registered by fabricd on CNI ADD
//! (namespace, name, labels), namespace labels and NetworkPolicies written with fabricctl,
//! verdicts explained from what the datastore holds; and enforcement on the packet path (new
//! connections judged, a running transfer cut when policy changes, isolated pods failing
//! closed while fabricd is down). The full reachability suite is in `netpol.rs`.

use fabric_lab::{Backend, Lab, Pod, PodSpec};
use fabric_tests::{spec, up};

fn write(lab: &Lab, name: &str, text: &str) -> String {
    let path = lab.state_dir().join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Pod `a` in namespace `x` (labelled `ns=x`) on node1, pod `b` in `y` on node2: the pods
/// [`POLICIES`] speak of.
fn pods_a_and_b(lab: &mut Lab) -> (Pod, Pod) {
    let a = lab
        .add_pod("node1", PodSpec::new("a").namespace("x").label("pod", "a"))
        .unwrap();
    let b = lab
        .add_pod("node2", PodSpec::new("b").namespace("y").label("pod", "b"))
        .unwrap();
    lab.fabricctl(&["namespace", "label", "x", "ns=x"]).unwrap();
    (a, b)
}

const POLICIES: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: y}
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-x-web, namespace: y}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: x}}
      podSelector: {matchLabels: {pod: a}}
    ports:
    - {port: 80, protocol: TCP}
"#;

#[test]
fn policies_apply_list_and_explain_against_registered_pods() {
    let mut lab = up(spec("polctl", 2, 0, Backend::Vxlan));
    pods_a_and_b(&mut lab);
    lab.fabricctl(&["namespace", "label", "y", "ns=y"]).unwrap();
    let file = write(&lab, "policies.yaml", POLICIES);
    let applied = lab.fabricctl(&["policy", "apply", "-f", &file]).unwrap();
    assert!(
        applied.contains("y/default-deny") && applied.contains("y/allow-x-web"),
        "{applied}"
    );
    let list = lab.fabricctl(&["policy", "list"]).unwrap();
    assert_eq!(list.lines().count(), 3, "{list}");

    let explain = |from: &str, to: &str, port: &str| {
        lab.fabricctl(&[
            "policy", "explain", "--from", from, "--to", to, "--port", port,
        ])
        .unwrap()
    };
    let ok = explain("x/a", "y/b", "80/TCP");
    assert!(ok.lines().next().unwrap().contains("allowed"), "{ok}");
    assert!(ok.contains("allow-x-web"), "{ok}");
    let wrong_port = explain("x/a", "y/b", "81/TCP");
    assert!(
        wrong_port.lines().next().unwrap().contains("denied"),
        "{wrong_port}"
    );
    let reverse = explain("y/b", "x/a", "80/TCP");
    assert!(
        reverse.lines().next().unwrap().contains("allowed"),
        "x is not isolated: {reverse}"
    );

    // Relabelling the source namespace takes the allowance away.
    lab.fabricctl(&["namespace", "label", "x", "ns-"]).unwrap();
    let relabelled = explain("x/a", "y/b", "80/TCP");
    assert!(
        relabelled.lines().next().unwrap().contains("denied"),
        "{relabelled}"
    );

    // An invalid policy is refused with its field path; the stored set stays as it was.
    let bad = write(
        &lab,
        "bad.yaml",
        "metadata: {name: bad, namespace: y}\nspec:\n  podSelector: {}\n  ingress:\n  - ports:\n    - endPort: 90\n",
    );
    let err = lab.fabricctl(&["policy", "apply", "-f", &bad]).unwrap_err();
    assert!(
        format!("{err:#}").contains("spec.ingress[0].ports[0]"),
        "{err:#}"
    );
    assert_eq!(lab.fabricctl(&["policy", "list"]).unwrap(), list);

    // Deleting the pod unregisters it.
    lab.del_pod("b").unwrap();
    let gone = lab.fabricctl(&[
        "policy", "explain", "--from", "x/a", "--to", "y/b", "--port", "80",
    ]);
    assert!(gone.is_err(), "y/b is gone");
    lab.fabricctl(&["policy", "delete", "y/default-deny", "y/allow-x-web"])
        .unwrap();
    assert_eq!(
        lab.fabricctl(&["policy", "list"]).unwrap().lines().count(),
        1
    );
}

/// Asserts that `transfer` flowed before the policies came (its first second) and was cut
/// by them (nothing in its last three seconds).
fn assert_cut(transfer: fabric_tests::Transfer) {
    let report = transfer.finish().unwrap();
    assert!(
        report.intervals.first().is_some_and(|bps| *bps > 1e6),
        "the transfer never flowed before the policies: {:?} {:?}",
        report.error,
        report.intervals
    );
    let tail: f64 = report.intervals.iter().rev().take(3).sum();
    assert!(
        tail < 1e6,
        "the denied transfer kept flowing: {:?}",
        report.intervals
    );
}

#[test]
fn policies_are_enforced_on_new_connections_and_cut_old_ones() {
    use std::time::Duration;

    use fabric_lab::Signal;
    use fabric_tests::{eventually, ping, tcp_connect, Listeners, Transfer};

    let mut lab = up(spec("polenf", 2, 0, Backend::Vxlan));
    let (a, b) = pods_a_and_b(&mut lab);
    let _l80 = Listeners::start(&lab, &["b"], 80).unwrap();
    let _l81 = Listeners::start(&lab, &["b"], 81).unwrap();
    // Not isolated: everything goes.
    tcp_connect(&lab, "a", b.ip, 80).unwrap();
    tcp_connect(&lab, "a", b.ip, 81).unwrap();
    ping(&lab, "a", b.ip).unwrap();

    // A long transfer that the policies below will cut.
    let transfer = Transfer::start(&b.netns, b.ip, &a.netns, 12).unwrap();
    std::thread::sleep(Duration::from_secs(2));

    let file = write(&lab, "policies.yaml", POLICIES);
    lab.fabricctl(&["policy", "apply", "-f", &file]).unwrap();
    eventually(Duration::from_secs(5), || {
        anyhow::ensure!(
            tcp_connect(&lab, "a", b.ip, 81).is_err(),
            "port 81 still open"
        );
        Ok(())
    })
    .unwrap();
    tcp_connect(&lab, "a", b.ip, 80).unwrap();
    assert!(
        ping(&lab, "a", b.ip).is_err(),
        "ICMP is not in the allowed ports"
    );
    assert!(
        tcp_connect(&lab, "node1", b.ip, 80).is_err(),
        "node1 is not x/a"
    );

    // The running transfer (to 5201, now denied) was cut.
    assert_cut(transfer);

    // With the daemon of the destination down, new connections fail closed.
    lab.stop_fabricd("node2", Signal::SIGKILL).unwrap();
    assert!(
        tcp_connect(&lab, "a", b.ip, 80).is_err(),
        "fail closed while fabricd is down"
    );
    lab.start_fabricd("node2").unwrap();
    eventually(Duration::from_secs(5), || tcp_connect(&lab, "a", b.ip, 80)).unwrap();
}

#[test]
fn ipv6_connections_are_judged_and_cut_like_ipv4_ones() {
    use std::time::Duration;

    use fabric_tests::{eventually, ping, tcp_connect, Listeners, Transfer};

    let mut spec = spec("pol6", 2, 0, Backend::Vxlan);
    spec.ipv6_network = Some("fd00:10:244::/48".into());
    let mut lab = up(spec);
    let (a, b) = pods_a_and_b(&mut lab);
    let b6 = b.ipv6.expect("a dual-stack pod has an IPv6 address");
    let _l80 = Listeners::start_v6(&lab, &["b"], 80).unwrap();
    let _l81 = Listeners::start_v6(&lab, &["b"], 81).unwrap();
    tcp_connect(&lab, "a", b6, 80).unwrap();
    tcp_connect(&lab, "a", b6, 81).unwrap();
    ping(&lab, "a", b6).unwrap();

    // A long IPv6 transfer that the policies below will cut.
    let transfer = Transfer::start(&b.netns, b6, &a.netns, 12).unwrap();
    std::thread::sleep(Duration::from_secs(2));

    let file = write(&lab, "policies.yaml", POLICIES);
    lab.fabricctl(&["policy", "apply", "-f", &file]).unwrap();
    eventually(Duration::from_secs(5), || {
        anyhow::ensure!(
            tcp_connect(&lab, "a", b6, 81).is_err(),
            "port 81 still open over IPv6"
        );
        Ok(())
    })
    .unwrap();
    tcp_connect(&lab, "a", b6, 80).unwrap();
    assert!(
        ping(&lab, "a", b6).is_err(),
        "ICMPv6 is not in the allowed ports"
    );
    assert_cut(transfer);
    // The destination's node queues b by both addresses.
    let chain = lab
        .exec_ok("node2", &["ip6tables", "-S", "FABRIC-POLICY"])
        .unwrap();
    assert!(chain.contains(&format!("-d {b6}/128")), "{chain}");

    // An IPv6 ipBlock admits the client by its IPv6 address alone.
    let a6 = a.ipv6.unwrap();
    let block = write(
        &lab,
        "block.yaml",
        &format!(
            "metadata: {{name: from-a6, namespace: y}}\nspec:\n  podSelector: {{}}\n  ingress:\n  - from:\n    - ipBlock: {{cidr: \"{a6}/128\"}}\n    ports: [{{port: 81}}]\n"
        ),
    );
    lab.fabricctl(&["policy", "apply", "-f", &block]).unwrap();
    eventually(Duration::from_secs(5), || tcp_connect(&lab, "a", b6, 81)).unwrap();
}

/// A new pod's first connection is judged with its own identity: CNI ADD returns only once
/// the pod's node enforces the policies that select it (`--policy-setup-timeout`). Before,
/// the pod was an unknown address for tens of milliseconds, and a connection it opened at
/// once went through until the view caught up and cut it.
#[test]
fn a_new_pod_is_isolated_from_its_first_connection() {
    use fabric_tests::{tcp_connect, Listeners};

    let mut lab = up(spec("polnew", 2, 0, Backend::Vxlan));
    let b = lab
        .add_pod("node2", PodSpec::new("b").namespace("y"))
        .unwrap();
    let _l80 = Listeners::start(&lab, &["b"], 80).unwrap();
    let file = write(
        &lab,
        "locked.yaml",
        "metadata: {name: locked, namespace: x}\nspec:\n  podSelector: {matchLabels: {role: locked}}\n  policyTypes: [Egress]\n",
    );
    lab.fabricctl(&["policy", "apply", "-f", &file]).unwrap();
    let socket = lab.node("node1").unwrap().socket.display().to_string();
    lab.fabricctl(&["policy", "sync", "--socket", &socket])
        .unwrap();
    for i in 0..3 {
        // A pod no policy selects connects at once: the network is there for new pods.
        let open = format!("open{i}");
        lab.add_pod("node1", PodSpec::new(&open).namespace("x"))
            .unwrap();
        tcp_connect(&lab, &open, b.ip, 80).unwrap();
        let locked = format!("locked{i}");
        lab.add_pod(
            "node1",
            PodSpec::new(&locked).namespace("x").label("role", "locked"),
        )
        .unwrap();
        assert!(
            tcp_connect(&lab, &locked, b.ip, 80).is_err(),
            "{locked}'s first connection went out before its egress policy was enforced"
        );
    }
}
