//! Unit tests of the cluster state and the classifier it compiles.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;
use crate::classifier::Decision;
use crate::explain::explain;
use crate::model::ContainerPort;

const NS: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pod(ns_i: usize, pod_i: usize) -> Pod {
    let mut ports = Vec::new();
    for port in [80u16, 81] {
        for proto in Protocol::ALL {
            ports.push(ContainerPort {
                name: Some(format!("serve-{port}-{}", proto.as_str().to_lowercase())),
                port,
                protocol: proto,
            });
        }
    }
    Pod {
        key: PodKey::new(NS[ns_i], PODS[pod_i]),
        labels: labels(&[("pod", PODS[pod_i])]),
        ip: Ipv4Addr::new(10, 244, ns_i as u8 + 1, (pod_i as u8 + 1) * 10),
        ipv6: Some(Ipv6Addr::new(
            0xfd00,
            0x10,
            0x244,
            ns_i as u16 + 1,
            0,
            0,
            0,
            (pod_i as u16 + 1) * 0x10,
        )),
        ports,
    }
}

/// The e2e model: namespaces x, y, z (labelled `ns: <name>`), pods a, b, c in each.
fn model() -> Cluster {
    let mut c = Cluster::new();
    for (i, ns) in NS.iter().enumerate() {
        c.upsert_namespace(ns, labels(&[("ns", ns)]));
        for j in 0..PODS.len() {
            c.upsert_pod(pod(i, j));
        }
    }
    c
}

fn np(yaml: &str) -> NetworkPolicy {
    serde_yaml::from_str(yaml).expect("test policy parses")
}

fn ep(c: &Cluster, name: &str) -> Endpoint {
    match name.parse::<IpAddr>() {
        Ok(ip) => c.endpoint(ip),
        Err(_) => Endpoint::Pod(
            c.pod_id(&PodKey::parse(name).expect("ns/pod"))
                .expect("known pod"),
        ),
    }
}

fn allowed(c: &Cluster, from: &str, to: &str, proto: Protocol, port: u16) -> bool {
    c.decide(ep(c, from), ep(c, to), proto, port).allowed
}

fn all_pods() -> Vec<String> {
    NS.iter()
        .flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}")))
        .collect()
}

/// The set of allowed (from, to) pairs for one port/protocol.
fn allowed_pairs(c: &Cluster, proto: Protocol, port: u16) -> Vec<(String, String)> {
    let pods = all_pods();
    let mut out = Vec::new();
    for f in &pods {
        for t in &pods {
            if allowed(c, f, t, proto, port) {
                out.push((f.clone(), t.clone()));
            }
        }
    }
    out
}

/// Every (from, to) pair for which `pred` is false.
fn all_but(pred: impl Fn(&str, &str) -> bool) -> Vec<(String, String)> {
    let pods = all_pods();
    let mut out = Vec::new();
    for f in &pods {
        for t in &pods {
            if !pred(f, t) {
                out.push((f.clone(), t.clone()));
            }
        }
    }
    out
}

#[test]
fn no_policy_allows_everything() {
    let c = model();
    assert_eq!(allowed_pairs(&c, Protocol::Tcp, 80).len(), 81);
    let v = c.decide(ep(&c, "x/a"), ep(&c, "y/b"), Protocol::Udp, 81);
    assert_eq!(v.egress, Decision::NotIsolated);
    assert_eq!(v.ingress, Decision::NotIsolated);
}

#[test]
fn default_deny_ingress_isolates_the_namespace() {
    let mut c = model();
    c.upsert_policy(&np(
        "metadata: {name: deny, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress]}",
    ))
    .unwrap();
    assert_eq!(
        allowed_pairs(&c, Protocol::Tcp, 80),
        all_but(|_, t| t.starts_with("x/"))
    );
    let v = c.decide(ep(&c, "y/a"), ep(&c, "x/a"), Protocol::Tcp, 80);
    assert_eq!(v.ingress, Decision::Denied);
    assert_eq!(v.egress, Decision::NotIsolated);
}

#[test]
fn policy_types_default_from_rules() {
    // No policyTypes: Ingress always; Egress because egress rules exist. The egress rule only
    // allows port 53, so all egress from x on port 80 is denied, and ingress to x is denied
    // because the policy has no ingress rules.
    let mut c = model();
    c.upsert_policy(&np(
        "metadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  egress:\n  - ports: [{port: 53, protocol: UDP}]\n",
    ))
    .unwrap();
    assert_eq!(
        allowed_pairs(&c, Protocol::Tcp, 80),
        all_but(|f, t| f.starts_with("x/") || t.starts_with("x/"))
    );
    assert!(allowed(&c, "x/a", "192.0.2.53", Protocol::Udp, 53));
    assert!(!allowed(&c, "x/a", "192.0.2.53", Protocol::Tcp, 53));

    // Without egress rules a policy lacking policyTypes is ingress-only.
    let mut c = model();
    c.upsert_policy(&np(
        "metadata: {name: p, namespace: x}\nspec: {podSelector: {}}",
    ))
    .unwrap();
    assert!(allowed(&c, "x/a", "y/a", Protocol::Tcp, 80));
    assert!(!allowed(&c, "y/a", "x/a", Protocol::Tcp, 80));
}

#[test]
fn empty_rule_allows_all_peers_and_ports() {
    let mut c = model();
    c.upsert_policy(&np(
        "metadata: {name: p, namespace: x}\nspec: {podSelector: {}, ingress: [{}], egress: [{}], policyTypes: [Ingress, Egress]}",
    ))
    .unwrap();
    assert_eq!(allowed_pairs(&c, Protocol::Sctp, 81).len(), 81);
    assert!(allowed(&c, "203.0.113.9", "x/a", Protocol::Udp, 9999));
    assert!(allowed(&c, "x/a", "203.0.113.9", Protocol::Udp, 9999));
    let v = c.decide(ep(&c, "x/a"), ep(&c, "x/b"), Protocol::Tcp, 1);
    assert!(
        matches!(v.egress, Decision::Allowed(r) if r.direction == Direction::Egress && r.index == 0)
    );
    assert!(
        matches!(v.ingress, Decision::Allowed(r) if r.direction == Direction::Ingress && r.index == 0)
    );
}

#[test]
fn namespace_and_pod_selector_in_one_peer_is_and_separate_peers_is_or() {
    let and = np("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: y}}\n      podSelector: {matchLabels: {pod: b}}\n  policyTypes: [Ingress]\n");
    let mut c = model();
    c.upsert_policy(&and).unwrap();
    assert_eq!(
        allowed_pairs(&c, Protocol::Tcp, 80),
        all_but(|f, t| t == "x/a" && f != "y/b")
    );

    let or = np("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: y}}\n    - podSelector: {matchLabels: {pod: b}}\n  policyTypes: [Ingress]\n");
    let mut c = model();
    c.upsert_policy(&or).unwrap();
    // From any pod of y, or from x/b (podSelector alone means the policy's namespace).
    assert_eq!(
        allowed_pairs(&c, Protocol::Tcp, 80),
        all_but(|f, t| t == "x/a" && !(f.starts_with("y/") || f == "x/b"))
    );
}

#[test]
fn match_expressions_in_peers_and_targets() {
    let mut c = model();
    c.upsert_policy(&np("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [a]}]}\n  ingress:\n  - from:\n    - namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [y, z]}]}\n      podSelector: {matchExpressions: [{key: pod, operator: Exists}, {key: app, operator: DoesNotExist}]}\n  policyTypes: [Ingress]\n"))
        .unwrap();
    // Targets x/b and x/c; sources: every pod of y and z (none has an `app` label).
    assert_eq!(
        allowed_pairs(&c, Protocol::Tcp, 80),
        all_but(|f, t| (t == "x/b" || t == "x/c") && f.starts_with("x/"))
    );
    // Giving y/c an app label removes it from the peer set (DoesNotExist).
    c.relabel_pod(
        &PodKey::new("y", "c"),
        labels(&[("pod", "c"), ("app", "web")]),
    )
    .unwrap();
    assert!(!allowed(&c, "y/c", "x/b", Protocol::Tcp, 80));
    assert!(allowed(&c, "y/b", "x/b", Protocol::Tcp, 80));
}

#[test]
fn numeric_ports_protocols_and_end_port() {
    let mut c = model();
    c.upsert_policy(&np("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress:\n  - ports:\n    - {port: 80, endPort: 85}\n    - {port: 81, protocol: UDP}\n    - {protocol: SCTP}\n  policyTypes: [Ingress]\n"))
        .unwrap();
    for (proto, port, ok) in [
        (Protocol::Tcp, 79, false),
        (Protocol::Tcp, 80, true),
        (Protocol::Tcp, 85, true),
        (Protocol::Tcp, 86, false),
        (Protocol::Udp, 80, false),
        (Protocol::Udp, 81, true),
        (Protocol::Sctp, 1, true),
        (Protocol::Sctp, 65535, true),
    ] {
        assert_eq!(allowed(&c, "y/a", "x/a", proto, port), ok, "{proto}/{port}");
    }
}

#[test]
fn named_ports_resolve_per_destination_pod_and_protocol() {
    let mut c = model();
    // x/b serves "web" on 8080/TCP, x/c serves "web" on 9090/UDP; x/a has no "web" port.
    for (name, port, proto) in [("b", 8080, Protocol::Tcp), ("c", 9090, Protocol::Udp)] {
        let mut p = c.pod(&PodKey::new("x", name)).unwrap().clone();
        p.ports.push(ContainerPort {
            name: Some("web".into()),
            port,
            protocol: proto,
        });
        c.upsert_pod(p);
    }
    c.upsert_policy(&np("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress:\n  - ports: [{port: web}]\n  policyTypes: [Ingress]\n"))
        .unwrap();
    assert!(allowed(&c, "y/a", "x/b", Protocol::Tcp, 8080));
    assert!(!allowed(&c, "y/a", "x/b", Protocol::Tcp, 9090));
    assert!(
        !allowed(&c, "y/a", "x/b", Protocol::Udp, 8080),
        "protocol must match"
    );
    // x/c's "web" is UDP but the policy port is TCP (default): matches nothing.
    assert!(!allowed(&c, "y/a", "x/c", Protocol::Udp, 9090));
    assert!(!allowed(&c, "y/a", "x/c", Protocol::Tcp, 9090));
    // x/a has no port named "web": nothing matches.
    assert!(!allowed(&c, "y/a", "x/a", Protocol::Tcp, 8080));

    // Egress named ports resolve against the destination pod; external destinations never match.
    let mut c = model();
    c.upsert_policy(&np("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  egress:\n  - ports: [{port: serve-81-udp, protocol: UDP}]\n  policyTypes: [Egress]\n"))
        .unwrap();
    assert!(allowed(&c, "x/a", "y/a", Protocol::Udp, 81));
    assert!(!allowed(&c, "x/a", "y/a", Protocol::Udp, 80));
    assert!(!allowed(&c, "x/a", "y/a", Protocol::Tcp, 81));
    assert!(!allowed(&c, "x/a", "198.51.100.1", Protocol::Udp, 81));
}

#[test]
fn ip_blocks_match_pods_by_ip_and_external_addresses() {
    let mut c = model();
    c.upsert_policy(&np("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  egress:\n  - to:\n    - ipBlock: {cidr: 10.244.0.0/16, except: [10.244.2.0/24, 10.244.3.20/32]}\n    - ipBlock: {cidr: 192.0.2.0/24}\n  policyTypes: [Egress]\n"))
        .unwrap();
    assert!(allowed(&c, "x/a", "x/b", Protocol::Tcp, 80));
    assert!(
        !allowed(&c, "x/a", "y/a", Protocol::Tcp, 80),
        "y is excepted"
    );
    assert!(allowed(&c, "x/a", "z/a", Protocol::Tcp, 80));
    assert!(
        !allowed(&c, "x/a", "z/b", Protocol::Tcp, 80),
        "z/b is excepted"
    );
    assert!(allowed(&c, "x/a", "10.244.9.9", Protocol::Tcp, 80));
    assert!(allowed(&c, "x/a", "192.0.2.77", Protocol::Tcp, 80));
    assert!(!allowed(&c, "x/a", "10.244.2.99", Protocol::Tcp, 80));
    assert!(!allowed(&c, "x/a", "8.8.8.8", Protocol::Tcp, 80));
    assert!(
        allowed(&c, "x/b", "8.8.8.8", Protocol::Tcp, 80),
        "x/b is not selected"
    );

    // A pod that moves into an excepted range drops out of the block.
    let mut p = c.pod(&PodKey::new("z", "a")).unwrap().clone();
    p.ip = Ipv4Addr::new(10, 244, 2, 200);
    c.upsert_pod(p);
    assert!(!allowed(&c, "x/a", "z/a", Protocol::Tcp, 80));
    assert_eq!(c.pod_by_ip(Ipv4Addr::new(10, 244, 3, 10)), None);

    // Ingress from external sources is matched by ipBlock only.
    let mut c = model();
    c.upsert_policy(&np("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 203.0.113.0/24}\n    - namespaceSelector: {}\n  policyTypes: [Ingress]\n"))
        .unwrap();
    assert!(allowed(&c, "203.0.113.5", "x/a", Protocol::Tcp, 80));
    assert!(!allowed(&c, "198.51.100.5", "x/a", Protocol::Tcp, 80));
    assert!(allowed(&c, "z/c", "x/a", Protocol::Tcp, 80));
}

#[test]
fn policies_are_a_union_and_egress_and_ingress_both_apply() {
    let mut c = model();
    c.upsert_policy(&np("metadata: {name: allow-81, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{port: 81}]}]\n  policyTypes: [Ingress]\n"))
        .unwrap();
    assert!(!allowed(&c, "y/a", "x/a", Protocol::Tcp, 80));
    assert!(allowed(&c, "y/a", "x/a", Protocol::Tcp, 81));
    c.upsert_policy(&np("metadata: {name: allow-80, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{port: 80}]}]\n  policyTypes: [Ingress]\n"))
        .unwrap();
    assert!(allowed(&c, "y/a", "x/a", Protocol::Tcp, 80));
    assert!(allowed(&c, "y/a", "x/a", Protocol::Tcp, 81));
    let v = c.decide(ep(&c, "y/a"), ep(&c, "x/a"), Protocol::Tcp, 80);
    let Decision::Allowed(r) = v.ingress else {
        panic!("allowed expected")
    };
    assert_eq!(
        c.classifier().policy_key(r.policy),
        Some(&PolicyKey::new("x", "allow-80"))
    );
    assert_eq!(
        c.classifier()
            .isolating_policies(
                c.pod_id(&PodKey::new("x", "a")).unwrap(),
                Direction::Ingress
            )
            .len(),
        2
    );

    // Egress denied at y/a wins even though x/a's ingress allows it.
    c.upsert_policy(&np("metadata: {name: deny-egress, namespace: y}\nspec: {podSelector: {}, policyTypes: [Egress]}"))
        .unwrap();
    let v = c.decide(ep(&c, "y/a"), ep(&c, "x/a"), Protocol::Tcp, 80);
    assert!(!v.allowed);
    assert_eq!(v.egress, Decision::Denied);
    assert!(v.ingress.allows());
}

#[test]
fn rejected_update_keeps_previous_policies() {
    let mut c = model();
    let good =
        np("metadata: {name: p, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress]}");
    c.upsert_policy(&good).unwrap();
    let before = allowed_pairs(&c, Protocol::Tcp, 80);

    let bad = np("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress:\n  - ports: [{endPort: 90}]\n");
    let err = c.upsert_policy(&bad).unwrap_err();
    match &err {
        Error::Invalid(v) => assert!(v.has_path("spec.ingress[0].ports[0].endPort"), "{v}"),
        other => panic!("unexpected error {other}"),
    }
    assert!(err
        .to_string()
        .contains("spec.ingress[0].ports[0].endPort: endPort requires port"));
    assert_eq!(allowed_pairs(&c, Protocol::Tcp, 80), before);

    // A set with one invalid policy changes nothing, not even the valid ones.
    let other =
        np("metadata: {name: q, namespace: y}\nspec: {podSelector: {}, policyTypes: [Ingress]}");
    assert!(c.replace_policies(&[other.clone(), bad]).is_err());
    assert_eq!(allowed_pairs(&c, Protocol::Tcp, 80), before);
    assert!(c.policy(&PolicyKey::new("y", "q")).is_none());
    assert!(matches!(
        c.replace_policies(&[other.clone(), other.clone()]),
        Err(Error::DuplicatePolicy(_))
    ));
    assert_eq!(allowed_pairs(&c, Protocol::Tcp, 80), before);

    // A valid set replaces the old one entirely.
    c.replace_policies(&[other]).unwrap();
    assert!(c.policy(&PolicyKey::new("x", "p")).is_none());
    assert_eq!(
        allowed_pairs(&c, Protocol::Tcp, 80),
        all_but(|_, t| t.starts_with("y/"))
    );
}

#[test]
fn pod_and_namespace_relabels_update_selection() {
    let mut c = model();
    c.upsert_policy(&np("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {target: isolated}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns2: updated}}\n  policyTypes: [Ingress]\n"))
        .unwrap();
    assert_eq!(allowed_pairs(&c, Protocol::Tcp, 80).len(), 81);

    // x/a becomes a target: isolated, nobody matches the namespace selector.
    c.relabel_pod(
        &PodKey::new("x", "a"),
        labels(&[("pod", "a"), ("target", "isolated")]),
    )
    .unwrap();
    assert_eq!(
        allowed_pairs(&c, Protocol::Tcp, 80),
        all_but(|_, t| t == "x/a")
    );

    // y gets the label: its pods may reach x/a.
    c.upsert_namespace("y", labels(&[("ns", "y"), ("ns2", "updated")]));
    assert_eq!(
        allowed_pairs(&c, Protocol::Tcp, 80),
        all_but(|f, t| t == "x/a" && !f.starts_with("y/"))
    );
    // The name label is always present.
    assert_eq!(
        c.namespace_labels("y")
            .and_then(|l| l.get(NAMESPACE_NAME_LABEL))
            .map(String::as_str),
        Some("y")
    );

    // Forgetting y's labels (namespace removal) drops it from the selector again.
    assert!(c.remove_namespace("y"));
    assert_eq!(
        allowed_pairs(&c, Protocol::Tcp, 80),
        all_but(|_, t| t == "x/a")
    );

    // x/a stops being a target.
    c.relabel_pod(&PodKey::new("x", "a"), labels(&[("pod", "a")]))
        .unwrap();
    assert_eq!(allowed_pairs(&c, Protocol::Tcp, 80).len(), 81);
    assert!(matches!(
        c.relabel_pod(&PodKey::new("x", "nope"), Labels::new()),
        Err(Error::UnknownPod(_))
    ));
}

#[test]
fn removing_pods_and_policies_cleans_up_and_ids_are_reused() {
    let mut c = model();
    let pol = np("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}}}]\n  policyTypes: [Ingress]\n");
    c.upsert_policy(&pol).unwrap();
    let key = PolicyKey::new("x", "p");
    assert_eq!(c.rule_peer_count(&key, Direction::Ingress, 0), Some(1));
    let old_b = c.pod_id(&PodKey::new("x", "b")).unwrap();
    assert_eq!(c.remove_pod(&PodKey::new("x", "b")), Some(old_b));
    assert_eq!(c.rule_peer_count(&key, Direction::Ingress, 0), Some(0));
    assert_eq!(c.classifier().pod_key(old_b), None);

    // A new pod reuses the slot but is not a peer unless its labels match.
    let mut newcomer = pod(2, 0);
    newcomer.key = PodKey::new("z", "new");
    newcomer.ip = Ipv4Addr::new(10, 244, 3, 99);
    let id = c.upsert_pod(newcomer);
    assert_eq!(id, old_b);
    assert_eq!(c.rule_peer_count(&key, Direction::Ingress, 0), Some(0));
    assert!(!allowed(&c, "z/new", "x/a", Protocol::Tcp, 80));

    // Re-adding x/b restores the rule's peer.
    c.upsert_pod(pod(0, 1));
    assert!(allowed(&c, "x/b", "x/a", Protocol::Tcp, 80));

    assert!(c.remove_policy(&key));
    assert!(!c.remove_policy(&key));
    assert_eq!(allowed_pairs(&c, Protocol::Tcp, 80).len(), 81);
    assert_eq!(c.classifier().policy_count(), 0);
}

#[test]
fn explanations_name_policies_and_rules() {
    let mut c = model();
    c.upsert_policy(&np("metadata: {name: allow-b, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: c}}}]\n  - from: [{podSelector: {matchLabels: {pod: b}}}]\n  policyTypes: [Ingress]\n"))
        .unwrap();
    let e = explain(
        c.classifier(),
        ep(&c, "x/b"),
        ep(&c, "x/a"),
        Protocol::Tcp,
        80,
    );
    assert!(e.verdict.allowed);
    assert_eq!(e.summary, "x/b -> x/a TCP/80: allowed");
    assert_eq!(
        e.egress,
        "egress at x/b: not isolated (no policy selects it for egress)"
    );
    assert_eq!(
        e.ingress,
        "ingress at x/a: allowed by x/allow-b ingress rule 1 (isolated by x/allow-b)"
    );
    let e = explain(
        c.classifier(),
        ep(&c, "y/b"),
        ep(&c, "x/a"),
        Protocol::Tcp,
        80,
    );
    assert!(!e.verdict.allowed);
    assert_eq!(
        e.ingress,
        "ingress at x/a: denied: isolated by x/allow-b, and none of their ingress rules allows y/b on TCP/80"
    );
    let e = explain(
        c.classifier(),
        Endpoint::External(Ipv4Addr::new(192, 0, 2, 1).into()),
        ep(&c, "y/a"),
        Protocol::Udp,
        53,
    );
    assert_eq!(
        e.egress,
        "egress at 192.0.2.1 (external): not isolated (outside the cluster)"
    );
    assert!(e.to_string().lines().count() == 3);
}

/// A tiny deterministic generator, so the test needs no dependency.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n
    }
}

#[test]
fn incremental_updates_match_a_fresh_build() {
    let policies = [
        "metadata: {name: p0, namespace: x}\nspec:\n  podSelector: {matchLabels: {role: db}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {team: blue}}\n      podSelector: {matchExpressions: [{key: role, operator: In, values: [api, web]}]}\n    ports: [{port: 80}, {port: serve-81-udp, protocol: UDP}]\n  policyTypes: [Ingress]\n",
        "metadata: {name: p1, namespace: y}\nspec:\n  podSelector: {matchExpressions: [{key: role, operator: Exists}]}\n  egress:\n  - to:\n    - podSelector: {matchLabels: {role: db}}\n      namespaceSelector: {}\n  - to:\n    - ipBlock: {cidr: 10.244.0.0/16, except: [10.244.1.0/24]}\n    ports: [{port: 80, endPort: 81, protocol: SCTP}]\n  policyTypes: [Egress]\n",
        "metadata: {name: p2, namespace: z}\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: {matchExpressions: [{key: team, operator: NotIn, values: [red]}]}\n  egress:\n  - ports: [{protocol: UDP}]\n  policyTypes: [Ingress, Egress]\n",
        "metadata: {name: p3, namespace: x}\nspec:\n  podSelector: {matchExpressions: [{key: role, operator: DoesNotExist}]}\n  policyTypes: [Ingress, Egress]\n",
    ];
    let policies: Vec<NetworkPolicy> = policies.iter().map(|y| np(y)).collect();
    let roles = ["db", "api", "web", ""];
    let teams = ["blue", "red", ""];
    let mut rng = Lcg(7);
    let mut c = model();
    for step in 0..300 {
        match rng.next(6) {
            0 | 1 => {
                let (i, j) = (rng.next(3), rng.next(3));
                let role = roles[rng.next(4)];
                let mut l = labels(&[("pod", PODS[j])]);
                if !role.is_empty() {
                    l.insert("role".into(), role.into());
                }
                let key = PodKey::new(NS[i], PODS[j]);
                if c.pod(&key).is_some() {
                    c.relabel_pod(&key, l).unwrap();
                } else {
                    let mut p = pod(i, j);
                    p.labels = l;
                    c.upsert_pod(p);
                }
            }
            2 => {
                let (i, j) = (rng.next(3), rng.next(3));
                c.remove_pod(&PodKey::new(NS[i], PODS[j]));
            }
            3 => {
                let i = rng.next(3);
                let team = teams[rng.next(3)];
                let mut l = labels(&[("ns", NS[i])]);
                if !team.is_empty() {
                    l.insert("team".into(), team.into());
                }
                c.upsert_namespace(NS[i], l);
            }
            4 => {
                c.upsert_policy(&policies[rng.next(policies.len())])
                    .unwrap();
            }
            _ => {
                let p = &policies[rng.next(policies.len())];
                c.remove_policy(&Policy::from_k8s(p).unwrap().key);
            }
        }
        // Rebuild from scratch from the same objects and compare every decision.
        let mut fresh = Cluster::new();
        for ns in NS {
            if let Some(l) = c.namespace_labels(ns) {
                fresh.upsert_namespace(ns, l.clone());
            }
        }
        let live: Vec<Pod> = all_pods()
            .iter()
            .filter_map(|k| c.pod(&PodKey::parse(k).unwrap()).cloned())
            .collect();
        for p in &live {
            fresh.upsert_pod(p.clone());
        }
        for key in c.policy_keys() {
            fresh.upsert_validated_policy(c.policy(key).unwrap().clone());
        }
        let externals = [Ipv4Addr::new(10, 244, 2, 99), Ipv4Addr::new(10, 244, 1, 99)];
        for f in &live {
            for t in &live {
                for (proto, port) in [
                    (Protocol::Tcp, 80),
                    (Protocol::Udp, 81),
                    (Protocol::Sctp, 81),
                ] {
                    let a = c.decide(
                        ep(&c, &f.key.to_string()),
                        ep(&c, &t.key.to_string()),
                        proto,
                        port,
                    );
                    let b = fresh.decide(
                        ep(&fresh, &f.key.to_string()),
                        ep(&fresh, &t.key.to_string()),
                        proto,
                        port,
                    );
                    assert_eq!(
                        a.allowed, b.allowed,
                        "step {step}: {} -> {} {proto}/{port}",
                        f.key, t.key
                    );
                }
            }
            for x in externals {
                let a = c.decide(
                    ep(&c, &f.key.to_string()),
                    Endpoint::External(x.into()),
                    Protocol::Sctp,
                    80,
                );
                let b = fresh.decide(
                    ep(&fresh, &f.key.to_string()),
                    Endpoint::External(x.into()),
                    Protocol::Sctp,
                    80,
                );
                assert_eq!(a.allowed, b.allowed, "step {step}: {} -> {x}", f.key);
            }
        }
    }
}

#[test]
fn pods_in_unknown_namespaces_have_the_name_label() {
    let mut c = Cluster::new();
    let mut p = pod(1, 0);
    p.key = PodKey::new("ghost", "a");
    c.upsert_pod(p);
    c.upsert_pod(pod(0, 0));
    c.upsert_policy(&np("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ghost}}}]\n  policyTypes: [Ingress]\n"))
        .unwrap();
    assert!(allowed(&c, "ghost/a", "x/a", Protocol::Tcp, 80));
}
