#!/usr/bin/env python3
"""Writes the reachability case files in this directory (the shared case format of
shared/netpol/sample-cases.yaml):

* e2e-cases.yaml: tests of kubernetes/kubernetes test/e2e/network/netpol/network_policy.go that
  the shared sample does not already carry, with their expectations built exactly the way the
  upstream test builds its truth table (all allowed, then the test's Expect* calls, replayed
  here by the Reachability class);
* generated-cases.yaml: cyclonus-style cases (endPort ranges, named ports and protocol
  mismatches, ipBlock excepts, namespace+pod selector AND vs OR, matchExpressions operators,
  egress deny/allow, unions of policies), with expectations derived by `reference_allowed`,
  a direct transcription of the semantics written independently of the Rust classifier.

Every upstream truth table is also checked against `reference_allowed` (loopback probes
excepted, as upstream ignores them), so each expectation is derived twice.

Run from anywhere: python3 tests/netpol/generate.py (needs PyYAML).
"""

import ipaddress
import os
import sys

import yaml

NAMESPACES = ["x", "y", "z"]
PODS = ["a", "b", "c"]
PORTS = [80, 81]
PROTOCOLS = ["TCP", "UDP", "SCTP"]
UPSTREAM = "kubernetes/kubernetes@9db638c0807a720aa050ebcef69c32e4d4cce280:test/e2e/network/netpol/network_policy.go"
NAME_LABEL = "kubernetes.io/metadata.name"


def all_pods():
    return [f"{ns}/{p}" for ns in NAMESPACES for p in PODS]


def model():
    pods = []
    for i, ns in enumerate(NAMESPACES):
        for j, p in enumerate(PODS):
            pods.append({
                "namespace": ns,
                "name": p,
                "labels": {"pod": p},
                "ip": f"10.244.{i + 1}.{(j + 1) * 10}",
                "ports": [
                    {"name": f"serve-{port}-{proto.lower()}", "port": port, "protocol": proto}
                    for port in PORTS for proto in PROTOCOLS
                ],
            })
    return {
        "namespaces": {ns: {"labels": {NAME_LABEL: ns, "ns": ns}} for ns in NAMESPACES},
        "pods": pods,
    }


# ---- the reference semantics ----------------------------------------------------------------

def selector_matches(sel, labels):
    for k, v in (sel.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in sel.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        if op == "In" and not (key in labels and labels[key] in values):
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def policy_types(spec):
    types = spec.get("policyTypes")
    if types:
        return types
    return ["Ingress"] + (["Egress"] if spec.get("egress") else [])


def peer_matches(peer, policy_ns, pod, ns_labels):
    if "ipBlock" in peer:
        ip = ipaddress.ip_address(pod["ip"])
        block = peer["ipBlock"]
        return ip in ipaddress.ip_network(block["cidr"], strict=False) and not any(
            ip in ipaddress.ip_network(e, strict=False) for e in block.get("except") or [])
    ns_sel, pod_sel = peer.get("namespaceSelector"), peer.get("podSelector")
    if ns_sel is None:
        ns_ok = pod["namespace"] == policy_ns
    else:
        ns_ok = selector_matches(ns_sel, ns_labels[pod["namespace"]])
    return ns_ok and (pod_sel is None or selector_matches(pod_sel, pod["labels"]))


def ports_match(ports, protocol, port, dst):
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        if "port" not in p:
            return True
        value = p["port"]
        if isinstance(value, int):
            if value <= port <= p.get("endPort", value):
                return True
        elif any(c["name"] == value and c["protocol"] == protocol and c["port"] == port
                 for c in dst["ports"]):
            return True
    return False


def side_allows(direction, pod, peer, protocol, port, dst, policies, ns_labels):
    field, peers_field = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    selecting = [
        pol for pol in policies
        if pol["metadata"]["namespace"] == pod["namespace"]
        and direction in policy_types(pol["spec"])
        and selector_matches(pol["spec"].get("podSelector") or {}, pod["labels"])
    ]
    if not selecting:
        return True
    for pol in selecting:
        for rule in pol["spec"].get(field) or []:
            peers = rule.get(peers_field)
            peer_ok = not peers or any(
                peer_matches(p, pol["metadata"]["namespace"], peer, ns_labels) for p in peers)
            if peer_ok and ports_match(rule.get("ports"), protocol, port, dst):
                return True
    return False


def reference_allowed(case, src, dst, protocol, port):
    m = model()
    overrides = case.get("model_overrides") or {}
    ns_labels = {ns: v["labels"] for ns, v in m["namespaces"].items()}
    for ns, v in (overrides.get("namespaces") or {}).items():
        ns_labels[ns] = v["labels"]
    pods = {}
    for p in m["pods"]:
        key = f"{p['namespace']}/{p['name']}"
        if key in (overrides.get("pods") or {}):
            p = dict(p, labels=overrides["pods"][key]["labels"])
        pods[key] = p
    s, d = pods[src], pods[dst]
    policies = case["policies"]
    return (side_allows("Egress", s, d, protocol, port, d, policies, ns_labels)
            and side_allows("Ingress", d, s, protocol, port, d, policies, ns_labels))


# ---- upstream truth tables --------------------------------------------------------------------

class Reachability:
    """The upstream truth table: every pair allowed, then the test's Expect* calls."""

    def __init__(self):
        self.m = {(f, t): True for f in all_pods() for t in all_pods()}

    @staticmethod
    def _peer(pod, ns=None, name=None):
        pns, pname = pod.split("/")
        return (ns is None or ns == pns) and (name is None or name == pname)

    def expect(self, f, t, v):
        self.m[(f, t)] = v
        return self

    def expect_peer(self, frm, to, v):
        for f in all_pods():
            for t in all_pods():
                if self._peer(f, **frm) and self._peer(t, **to):
                    self.m[(f, t)] = v
        return self

    def expect_all_ingress(self, pod, v):
        for f in all_pods():
            self.m[(f, pod)] = v
        return self

    def expect_all_egress(self, pod, v):
        for t in all_pods():
            self.m[(pod, t)] = v
        return self


def allow_all():
    return Reachability()


# ---- policy helpers ---------------------------------------------------------------------------

def policy(name, ns, pod_selector, ingress=None, egress=None, types=None):
    spec = {"podSelector": pod_selector}
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    spec["policyTypes"] = types or (["Ingress"] if egress is None else
                                    ["Egress"] if ingress is None else ["Ingress", "Egress"])
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def pod_label(p):
    return {"matchLabels": {"pod": p}}


def ns_name(ns):
    return {"matchLabels": {NAME_LABEL: ns}}


def expr(key, op, values=None):
    e = {"key": key, "operator": op}
    if values is not None:
        e["values"] = values
    return e


def probes(case, tables):
    """Full 9x9 matrices, one per (port, protocol) in `tables`."""
    out = []
    for (port, protocol), table in tables:
        for f in all_pods():
            for t in all_pods():
                expect = table.m[(f, t)] if table is not None else reference_allowed(case, f, t, protocol, port)
                probe = {"from": f, "to": t, "port": port, "protocol": protocol,
                         "expect": "allow" if expect else "deny"}
                if f == t:
                    probe["loopback"] = True
                out.append(probe)
    return out


def upstream_case(name, test, policies, tables, step=None, note=None, overrides=None,
                  context="Netpol NetworkPolicy between server and client"):
    case = {"name": name,
            "source": f"{UPSTREAM} :: [sig-network] {context} {test} [Feature:NetworkPolicy]",
            "expectation_origin": "upstream"}
    if step:
        case["step"] = step
    if note:
        case["note"] = note
    if overrides:
        case["model_overrides"] = overrides
    case["policies"] = policies
    case["probes"] = probes(case, tables)
    # Derive every expectation a second way; upstream ignores loopback, so do we.
    for p in case["probes"]:
        ref = reference_allowed(case, p["from"], p["to"], p["protocol"], p["port"])
        if not p.get("loopback") and ref != (p["expect"] == "allow"):
            sys.exit(f"{name}: upstream table and reference disagree on {p}")
    return case


def derived_case(name, source, note, policies, ports, overrides=None):
    case = {"name": name, "source": source, "expectation_origin": "derived", "note": note}
    if overrides:
        case["model_overrides"] = overrides
    case["policies"] = policies
    case["probes"] = probes(case, [(pp, None) for pp in ports])
    return case


# ---- upstream cases ---------------------------------------------------------------------------

def upstream_cases():
    X, Y, Z = {"ns": "x"}, {"ns": "y"}, {"ns": "z"}
    ANY = {}
    tcp80, tcp81 = (80, "TCP"), (81, "TCP")
    deny_ingress_x = policy("deny-ingress", "x", {}, ingress=[])
    cases = [
        upstream_case("e2e-default-deny-all", "should support a 'default-deny-all' policy",
                      [policy("deny-all", "x", {}, ingress=[], egress=[])],
                      [(tcp80, allow_all().expect_peer(ANY, X, False).expect_peer(X, ANY, False))]),
        upstream_case("e2e-allow-ingress-for-target", "should enforce policy to allow ingress traffic for a target",
                      [policy("deny-all", "x", {}, ingress=[]),
                       policy("allow-all-to-a", "x", pod_label("a"),
                              ingress=[{"from": [{"podSelector": {}, "namespaceSelector": {}}]}])],
                      [(tcp80, allow_all().expect_all_ingress("x/a", True).expect_all_ingress("x/b", False)
                        .expect_all_ingress("x/c", False))]),
        upstream_case("e2e-allow-ingress-from-all-namespaces",
                      "should enforce policy to allow ingress traffic from pods in all namespaces",
                      [policy("allow-from-another-ns", "x", pod_label("a"),
                              ingress=[{"from": [{"namespaceSelector": {"matchLabels": {}}}]}])],
                      [(tcp80, allow_all())]),
        upstream_case("e2e-allow-only-from-other-namespace-nsselector",
                      "should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector",
                      [policy("allow-client-a-via-ns-selector", "x", pod_label("a"),
                              ingress=[{"from": [{"namespaceSelector": ns_name("y")}]}])],
                      [(tcp80, allow_all().expect_peer(X, {"ns": "x", "name": "a"}, False)
                        .expect_peer(Z, {"ns": "x", "name": "a"}, False))]),
        upstream_case("e2e-podselector-matchexpressions", "should enforce policy based on PodSelector with MatchExpressions",
                      [policy("x-a-allows-x-b", "x", pod_label("a"),
                              ingress=[{"from": [{"podSelector": {"matchExpressions": [expr("pod", "In", ["b"])]}}]}])],
                      [(tcp80, allow_all().expect_all_ingress("x/a", False).expect("x/b", "x/a", True))]),
        upstream_case("e2e-nsselector-matchexpressions", "should enforce policy based on NamespaceSelector with MatchExpressions",
                      [policy("allow-ns-y-match-selector", "x", pod_label("a"),
                              ingress=[{"from": [{"namespaceSelector": {"matchExpressions": [expr(NAME_LABEL, "In", ["y"])]}}]}])],
                      [(tcp80, allow_all().expect_peer(X, {"ns": "x", "name": "a"}, False)
                        .expect_peer(Z, {"ns": "x", "name": "a"}, False))]),
        upstream_case("e2e-podselector-or-nsselector", "should enforce policy based on PodSelector or NamespaceSelector",
                      [policy("allow-ns-y-match-selector", "x", pod_label("a"),
                              ingress=[{"from": [{"namespaceSelector": {"matchExpressions": [expr(NAME_LABEL, "NotIn", ["x"])]}},
                                                 {"podSelector": pod_label("b")}]}])],
                      [(tcp80, allow_all().expect("x/a", "x/a", False).expect("x/c", "x/a", False))]),
        upstream_case("e2e-multiple-podselectors-and-nsselectors",
                      "should enforce policy based on Multiple PodSelectors and NamespaceSelectors",
                      [policy("allow-ns-y-z-pod-b-c", "x", pod_label("a"),
                              ingress=[{"from": [{"namespaceSelector": {"matchExpressions": [expr(NAME_LABEL, "NotIn", ["x"])]},
                                                  "podSelector": {"matchExpressions": [expr("pod", "In", ["b", "c"])]}}]}])],
                      [(tcp80, allow_all().expect_peer(X, {"ns": "x", "name": "a"}, False)
                        .expect("y/a", "x/a", False).expect("z/a", "x/a", False))]),
        upstream_case("e2e-any-podselectors", "should enforce policy based on any PodSelectors",
                      [policy("allow-ns-x-pod-b-c", "x", pod_label("a"),
                              ingress=[{"from": [{"podSelector": pod_label("b")}, {"podSelector": pod_label("c")}]}])],
                      [(tcp80, allow_all().expect_all_ingress("x/a", False).expect("x/b", "x/a", True)
                        .expect("x/c", "x/a", True))]),
        upstream_case("e2e-allow-all-policy", "should support allow-all policy",
                      [policy("allow-all", "x", {"matchLabels": {}}, ingress=[{}])],
                      [(tcp80, allow_all()), (tcp81, allow_all())]),
        upstream_case("e2e-ingress-one-named-port", "should allow ingress access on one named port",
                      [policy("allow-all", "x", {"matchLabels": {}}, ingress=[{"ports": [{"port": "serve-81-tcp"}]}])],
                      [(tcp81, allow_all()), (tcp80, allow_all().expect_peer(ANY, X, False))]),
        upstream_case("e2e-ingress-from-namespace-one-named-port",
                      "should allow ingress access from namespace on one named port",
                      [policy("allow-client-a-via-ns-selector-80", "x", pod_label("a"),
                              ingress=[{"from": [{"namespaceSelector": ns_name("y")}],
                                        "ports": [{"port": "serve-80-tcp", "protocol": "TCP"}]}])],
                      [(tcp80, allow_all().expect_peer(X, {"ns": "x", "name": "a"}, False)
                        .expect_peer(Z, {"ns": "x", "name": "a"}, False)),
                       (tcp81, allow_all().expect_all_ingress("x/a", False))]),
        upstream_case("e2e-updated-policy-step2", "should enforce updated policy",
                      [policy("allow-all-mutate-to-deny-all", "x", {"matchLabels": {}}, ingress=[])],
                      [(tcp81, allow_all().expect_peer(ANY, X, False))],
                      step="2/2: the allow-all policy updated to an empty ingress list"),
        upstream_case("e2e-ingress-from-updated-namespace", "should allow ingress access from updated namespace",
                      [policy("allow-client-a-via-ns-selector", "x", pod_label("a"),
                              ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"ns2": "updated"}}}]}])],
                      [(tcp80, allow_all().expect_all_ingress("x/a", False).expect_peer(Y, ANY, True))],
                      step="2/2: namespace y labelled ns2=updated",
                      overrides={"namespaces": {"y": {"labels": {NAME_LABEL: "y", "ns": "y", "ns2": "updated"}}}}),
        upstream_case("e2e-ingress-from-updated-pod", "should allow ingress access from updated pod",
                      [policy("allow-client-a-via-pod-selector", "x", pod_label("a"),
                              ingress=[{"from": [{"podSelector": {"matchLabels": {"pod": "b", "pod2": "updated"}}}]}])],
                      [(tcp80, allow_all().expect_all_ingress("x/a", False).expect("x/b", "x/a", True))],
                      step="2/2: pod x/b labelled pod2=updated",
                      overrides={"pods": {"x/b": {"labels": {"pod": "b", "pod2": "updated"}}}}),
        upstream_case("e2e-deny-ingress-from-other-namespaces", "should deny ingress from pods on other namespaces",
                      [policy("deny-empty-policy", "x", {}, ingress=[{"from": [{"podSelector": {"matchLabels": {}}}]}])],
                      [(tcp80, allow_all().expect_peer(Y, X, False).expect_peer(Z, X, False))]),
        upstream_case("e2e-deny-ingress-to-updated-pod", "should deny ingress access to updated pod",
                      [policy("deny-ingress-via-label-selector", "x", {"matchLabels": {"target": "isolated"}}, ingress=[])],
                      [(tcp80, allow_all().expect_all_ingress("x/a", False))],
                      step="2/2: pod x/a labelled target=isolated",
                      overrides={"pods": {"x/a": {"labels": {"pod": "a", "target": "isolated"}}}}),
        upstream_case("e2e-deny-egress-podselector", "should deny egress from pods based on PodSelector",
                      [policy("deny-egress-pod-a", "x", pod_label("a"), egress=[])],
                      [(tcp80, allow_all().expect_all_egress("x/a", False))]),
        upstream_case("e2e-deny-egress-namespace", "should deny egress from all pods in a namespace",
                      [policy("deny-egress-ns-x", "x", {}, egress=[])],
                      [(tcp80, allow_all().expect_peer(X, ANY, False))]),
        upstream_case("e2e-ingress-and-egress-together", "should work with Ingress, Egress specified together",
                      [policy("allow-client-a-via-pod-selector", "x", pod_label("a"),
                              ingress=[{"from": [{"podSelector": pod_label("b")}]}],
                              egress=[{"ports": [{"port": 80}]}], types=["Egress", "Ingress"])],
                      [(tcp80, allow_all().expect_all_ingress("x/a", False).expect("x/b", "x/a", True)),
                       (tcp81, allow_all().expect_all_ingress("x/a", False).expect_all_egress("x/a", False)
                        .expect("x/b", "x/a", True))]),
        upstream_case("e2e-egress-podselector-and-nsselector",
                      "should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector",
                      [policy("allow-to-ns-y-pod-a", "x", pod_label("a"),
                              egress=[{"to": [{"namespaceSelector": ns_name("y"), "podSelector": pod_label("a")}]}])],
                      [(tcp80, allow_all().expect_all_egress("x/a", False).expect("x/a", "y/a", True))]),
        upstream_case("e2e-ingress-any-port-on-protocol",
                      "should enforce ingress policy allowing any port traffic to a server on a specific protocol",
                      [policy("allow-ingress-by-proto", "x", pod_label("a"), ingress=[{"ports": [{"protocol": "TCP"}]}])],
                      [(tcp80, allow_all()), ((80, "UDP"), allow_all().expect_peer(ANY, {"ns": "x", "name": "a"}, False))]),
        upstream_case("e2e-multiple-ingress-allow-all-step1",
                      "should enforce multiple ingress policies with ingress allow-all policy taking precedence",
                      [policy("allow-ingress-port-80", "x", {"matchLabels": {}}, ingress=[{"ports": [{"port": 80}]}])],
                      [(tcp81, allow_all().expect_peer(ANY, X, False))], step="1/2: only the port-80 policy"),
        upstream_case("e2e-multiple-ingress-allow-all-step2",
                      "should enforce multiple ingress policies with ingress allow-all policy taking precedence",
                      [policy("allow-ingress-port-80", "x", {"matchLabels": {}}, ingress=[{"ports": [{"port": 80}]}]),
                       policy("allow-ingress", "x", {"matchLabels": {}}, ingress=[{}])],
                      [(tcp81, allow_all())], step="2/2: allow-all ingress policy added"),
        upstream_case("e2e-multiple-egress-allow-all-step1",
                      "should enforce multiple egress policies with egress allow-all policy taking precedence",
                      [policy("allow-egress-port-80", "x", {"matchLabels": {}}, egress=[{"ports": [{"port": 80}]}])],
                      [(tcp81, allow_all().expect_peer(X, ANY, False))], step="1/2: only the port-80 policy"),
        upstream_case("e2e-multiple-egress-allow-all-step2",
                      "should enforce multiple egress policies with egress allow-all policy taking precedence",
                      [policy("allow-egress-port-80", "x", {"matchLabels": {}}, egress=[{"ports": [{"port": 80}]}]),
                       policy("allow-egress", "x", {"matchLabels": {}}, egress=[{}])],
                      [(tcp81, allow_all())], step="2/2: allow-all egress policy added"),
        upstream_case("e2e-egress-cidr-except", "should enforce except clause while egress access to server in CIDR block",
                      [policy("allow-client-a-via-cidr-egress-rule", "x", pod_label("a"),
                              egress=[{"to": [{"ipBlock": {"cidr": "0.0.0.0/4", "except": ["10.244.1.20/32"]}}]}])],
                      [(tcp80, allow_all().expect("x/a", "x/b", False))],
                      note="cidr is the /4 around the IP of x/b and except is <IP of x/b>/32, as upstream builds them from the live pod IP"),
        upstream_case("e2e-cidr-except-overlap-step2",
                      "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed",
                      [policy("allow-client-a-via-cidr-egress-rule", "x", pod_label("a"),
                              egress=[{"to": [{"ipBlock": {"cidr": "10.244.1.20/32"}}]}])],
                      [(tcp80, allow_all().expect_all_egress("x/a", False).expect("x/a", "x/b", True))],
                      step="2/2: the except policy updated to allow exactly <IP of x/b>/32"),
        upstream_case("e2e-ingress-egress-independent-step2",
                      "should enforce policies to check ingress and egress policies can be controlled independently based on PodSelector",
                      [policy("allow-egress-for-target", "x", pod_label("a"), egress=[{}]),
                       policy("deny-ingress-via-label-selector", "x", pod_label("a"), ingress=[])],
                      [(tcp80, allow_all().expect_all_ingress("x/a", False))], step="2/2: deny-ingress policy added"),
        upstream_case("e2e-sctp-not-treated-as-tcp",
                      "should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP",
                      [deny_ingress_x,
                       policy("allow-only-sctp-ingress-on-port-81", "x", pod_label("a"),
                              ingress=[{"ports": [{"port": 81, "protocol": "SCTP"}]}])],
                      [(tcp81, allow_all().expect_peer(ANY, X, False))]),
        upstream_case("e2e-sctp-policy-isolates",
                      "should properly isolate pods that are selected by a policy allowing SCTP, even if the plugin doesn't support SCTP",
                      [policy("allow-only-sctp-ingress-on-port-80", "x", pod_label("a"),
                              ingress=[{"ports": [{"port": 80, "protocol": "SCTP"}]}])],
                      [(tcp81, allow_all().expect_all_ingress("x/a", False))]),
        upstream_case("e2e-nsselector-default-label-egress",
                      "should enforce policy based on NamespaceSelector with MatchExpressions using default ns label",
                      [policy("allow-ns-y-match-selector-for-immutable-ns-label", "x", pod_label("a"),
                              egress=[{"to": [{"namespaceSelector": {"matchExpressions": [expr(NAME_LABEL, "NotIn", ["y"])]}}]}])],
                      [(tcp80, allow_all().expect_peer({"ns": "x", "name": "a"}, Y, False))]),
        upstream_case("e2e-udp-ports", "should enforce policy based on Ports",
                      [policy("allow-ingress-on-port-81-ns-x", "x", pod_label("a"),
                              ingress=[{"from": [{"namespaceSelector": ns_name("y")}],
                                        "ports": [{"port": 81, "protocol": "UDP"}]}])],
                      [((81, "UDP"), allow_all().expect_peer(X, {"ns": "x", "name": "a"}, False)
                        .expect_peer(Z, {"ns": "x", "name": "a"}, False))],
                      context="Netpol [LinuxOnly] NetworkPolicy between server and client using UDP"),
        upstream_case("e2e-sctp-pod-and-ns-selector",
                      "should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector",
                      [policy("allow-ns-y-pod-a-via-namespace-pod-selector", "x", pod_label("a"),
                              ingress=[{"from": [{"namespaceSelector": ns_name("y"), "podSelector": pod_label("a")}]}])],
                      [((80, "SCTP"), allow_all().expect_all_ingress("x/a", False).expect("y/a", "x/a", True))],
                      context="Netpol [Feature:SCTPConnectivity] [LinuxOnly] NetworkPolicy between server and client using SCTP"),
    ]
    return cases


# ---- cyclonus-style generated cases -----------------------------------------------------------

def generated_cases():
    src = "cyclonus-style generated case"
    def tcp(p):
        return (p, "TCP")

    def udp(p):
        return (p, "UDP")

    def sctp(p):
        return (p, "SCTP")

    return [
        derived_case("gen-endport-ingress-range",
                     src + ": port range via endPort",
                     "x/a admits TCP 80-81 from anyone; other protocols on those ports are denied into x/a; everything else unaffected",
                     [policy("allow-tcp-80-81", "x", pod_label("a"), ingress=[{"ports": [{"port": 80, "endPort": 81}]}])],
                     [tcp(80), tcp(81), udp(80)]),
        derived_case("gen-endport-excludes-lower-port",
                     src + ": endPort range starting above the probed port",
                     "pods of y admit only TCP 81-90 (and UDP 81-90): port 80 into y is denied, 81 allowed",
                     [policy("allow-81-90", "y", {}, ingress=[{"ports": [{"port": 81, "endPort": 90},
                                                                         {"port": 81, "endPort": 90, "protocol": "UDP"}]}])],
                     [tcp(80), tcp(81), udp(81)]),
        derived_case("gen-endport-egress-udp",
                     src + ": egress endPort range on UDP",
                     "pods of x may send only UDP 81-1000 anywhere: UDP 81 from x allowed, UDP 80 and TCP 81 from x denied",
                     [policy("egress-udp-81-1000", "x", {}, egress=[{"ports": [{"port": 81, "endPort": 1000, "protocol": "UDP"}]}])],
                     [udp(80), udp(81), tcp(81)]),
        derived_case("gen-named-port-protocol-mismatch",
                     src + ": named port whose container port has another protocol",
                     "serve-80-udp is a UDP port but the policy port defaults to TCP: it resolves to nothing, so x/a admits nothing on TCP or UDP 80",
                     [policy("named-udp-as-tcp", "x", pod_label("a"), ingress=[{"ports": [{"port": "serve-80-udp"}]}])],
                     [tcp(80), udp(80)]),
        derived_case("gen-named-port-udp",
                     src + ": named UDP port",
                     "x/b admits UDP on serve-81-udp (81) only: UDP 81 allowed, UDP 80 and TCP 81 into x/b denied",
                     [policy("named-udp-81", "x", pod_label("b"), ingress=[{"ports": [{"port": "serve-81-udp", "protocol": "UDP"}]}])],
                     [udp(81), udp(80), tcp(81)]),
        derived_case("gen-named-port-egress-sctp",
                     src + ": egress to a named SCTP port, from a namespace",
                     "pods of z may send only to serve-80-sctp of pods in x: SCTP 80 from z to x allowed, from z to y and z denied; SCTP 81 from z denied",
                     [policy("egress-named-sctp", "z", {}, egress=[{"to": [{"namespaceSelector": ns_name("x")}],
                                                                     "ports": [{"port": "serve-80-sctp", "protocol": "SCTP"}]}])],
                     [sctp(80), sctp(81)]),
        derived_case("gen-ipblock-except-ingress",
                     src + ": ingress ipBlock with except",
                     "x/a admits 10.244.0.0/16 except 10.244.2.0/24: pods of x and z may reach it, pods of y may not",
                     [policy("ipblock-except", "x", pod_label("a"),
                             ingress=[{"from": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.2.0/24"]}}]}])],
                     [tcp(80)]),
        derived_case("gen-ipblock-multiple-excepts-egress",
                     src + ": egress ipBlock with two excepts",
                     "pods of y may send to 10.244.0.0/16 except 10.244.1.0/24 and 10.244.3.30/32: from y, x and z/c are denied, y, z/a and z/b allowed",
                     [policy("egress-ipblock", "y", {}, egress=[{"to": [{"ipBlock": {"cidr": "10.244.0.0/16",
                                                                                       "except": ["10.244.1.0/24", "10.244.3.30/32"]}}]}])],
                     [tcp(81)]),
        derived_case("gen-ipblock-and-selector-peers",
                     src + ": ipBlock and podSelector peers in one rule (OR)",
                     "z/c admits TCP 80 from 10.244.1.10/32 (x/a) or from pods of z labelled pod=b: x/a and z/b allowed, every other pod denied",
                     [policy("ipblock-or-pod", "z", pod_label("c"),
                             ingress=[{"from": [{"ipBlock": {"cidr": "10.244.1.10/32"}}, {"podSelector": pod_label("b")}],
                                       "ports": [{"port": 80}]}])],
                     [tcp(80), tcp(81)]),
        derived_case("gen-and-vs-or-peers-union",
                     src + ": namespace+pod selector AND in one peer vs OR across peers, in two policies",
                     "x/a admits (pods b of y) from policy and-peer, and (any pod of z, or x/c) from policy or-peers; the union allows y/b, z/*, x/c",
                     [policy("and-peer", "x", pod_label("a"),
                             ingress=[{"from": [{"namespaceSelector": ns_name("y"), "podSelector": pod_label("b")}]}]),
                      policy("or-peers", "x", pod_label("a"),
                             ingress=[{"from": [{"namespaceSelector": ns_name("z")}, {"podSelector": pod_label("c")}]}])],
                     [tcp(80)]),
        derived_case("gen-matchexpressions-exists-doesnotexist",
                     src + ": Exists and DoesNotExist with relabelled pods",
                     "y/b gains tier=db and z/c tier=web; x/a admits pods with a tier label that is not web, from any namespace: only y/b; x/b admits pods without a tier label from its own namespace",
                     [policy("tier-exists-not-web", "x", pod_label("a"),
                             ingress=[{"from": [{"namespaceSelector": {},
                                                 "podSelector": {"matchExpressions": [expr("tier", "Exists"), expr("tier", "NotIn", ["web"])]}}]}]),
                      policy("no-tier", "x", pod_label("b"),
                             ingress=[{"from": [{"podSelector": {"matchExpressions": [expr("tier", "DoesNotExist")]}}]}])],
                     [tcp(80)],
                     overrides={"pods": {"y/b": {"labels": {"pod": "b", "tier": "db"}},
                                         "z/c": {"labels": {"pod": "c", "tier": "web"}}}}),
        derived_case("gen-namespace-in-multiple-values",
                     src + ": namespaceSelector In with several values and a relabelled namespace",
                     "z is relabelled env=prod; pods of y admit from namespaces whose env is in (prod, staging): only pods of z",
                     [policy("from-prod-or-staging", "y", {},
                             ingress=[{"from": [{"namespaceSelector": {"matchExpressions": [expr("env", "In", ["prod", "staging"])]}}]}])],
                     [tcp(80)],
                     overrides={"namespaces": {"z": {"labels": {NAME_LABEL: "z", "ns": "z", "env": "prod"}}}}),
        derived_case("gen-egress-deny-with-allow-union",
                     src + ": egress default deny plus an allow policy",
                     "pods of x are egress-isolated by deny-all-egress; allow-to-y lets pod=a and pod=b of x send to y on any port; x/c sends nothing",
                     [policy("deny-all-egress", "x", {}, egress=[]),
                      policy("allow-to-y", "x", {"matchExpressions": [expr("pod", "In", ["a", "b"])]},
                             egress=[{"to": [{"namespaceSelector": ns_name("y")}]}])],
                     [tcp(80), udp(81)]),
        derived_case("gen-egress-and-ingress-both-required",
                     src + ": egress allowed at the source but ingress denied at the destination (and the reverse)",
                     "x/a may send only to y; y/a admits only from z. x/a -> y/a: egress ok, ingress denied; z/* -> y/a allowed; x/a -> y/b, y/c allowed",
                     [policy("xa-egress-to-y", "x", pod_label("a"), egress=[{"to": [{"namespaceSelector": ns_name("y")}]}]),
                      policy("ya-from-z", "y", pod_label("a"), ingress=[{"from": [{"namespaceSelector": ns_name("z")}]}])],
                     [tcp(80)]),
        derived_case("gen-policytypes-egress-ignores-ingress-rules",
                     src + ": policyTypes [Egress] with ingress rules present",
                     "the policy lists only Egress: its ingress section is ignored (x/a is not ingress-isolated); egress from x/a is limited to TCP 81",
                     [policy("egress-only", "x", pod_label("a"), ingress=[{"from": [{"podSelector": pod_label("b")}]}],
                             egress=[{"ports": [{"port": 81}]}], types=["Egress"])],
                     [tcp(80), tcp(81)]),
        derived_case("gen-empty-from-with-ports",
                     src + ": rule with empty from and a port list",
                     "pods of z admit every peer on UDP 80 and SCTP 81 only",
                     [policy("any-peer-some-ports", "z", {}, ingress=[{"from": [], "ports": [{"port": 80, "protocol": "UDP"},
                                                                                             {"port": 81, "protocol": "SCTP"}]}])],
                     [udp(80), sctp(81), tcp(80)]),
        derived_case("gen-multiple-rules-union",
                     src + ": several rules in one policy are a union",
                     "y/c admits TCP 80 from x and TCP 81 from z (two rules of one policy)",
                     [policy("two-rules", "y", pod_label("c"),
                             ingress=[{"from": [{"namespaceSelector": ns_name("x")}], "ports": [{"port": 80}]},
                                      {"from": [{"namespaceSelector": ns_name("z")}], "ports": [{"port": 81}]}])],
                     [tcp(80), tcp(81)]),
    ]


HEADER = """# NetworkPolicy reachability cases in the shared case format (see shared/netpol/sample-cases.yaml
# for the format and semantics). Written by generate.py in this directory; do not edit by hand.
#
# {what}
"""


def write(path, what, cases):
    doc = {"version": 1, "model": model(), "cases": cases}
    with open(path, "w") as f:
        f.write(HEADER.format(what=what))
        yaml.safe_dump(doc, f, sort_keys=False, default_flow_style=False, width=120)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    up = upstream_cases()
    gen = generated_cases()
    names = [c["name"] for c in up + gen]
    assert len(names) == len(set(names)), "case names must be unique"
    write(os.path.join(here, "e2e-cases.yaml"),
          "Translated from " + UPSTREAM + "\n# (expectations: the upstream truth tables, cross-checked against generate.py's reference semantics).",
          up)
    write(os.path.join(here, "generated-cases.yaml"),
          "Cyclonus-style generated cases; expectations derived by generate.py's reference semantics.",
          gen)
    print(f"wrote {len(up)} upstream and {len(gen)} generated cases")


if __name__ == "__main__":
    main()
