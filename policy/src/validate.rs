//! Validation of `networking.k8s.io/v1` NetworkPolicy objects into the [`crate::model`]: the
//! API server's checks (ports, protocols, endPort, ipBlock, selectors, peers, policyTypes),
//! each failure reported with its field path, plus policyTypes defaulting.

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::error::{FieldError, FieldPath, ValidationError};
use crate::model::{
    IpBlock, NamespaceScope, Peer, Peers, Policy, PolicyKey, PortMatch, PortName, PortRange,
    PortSpec, Ports, Protocol, Rule,
};
use crate::selector::{is_dns_subdomain, Selector};

impl Policy {
    /// Validates an API NetworkPolicy and converts it to the model. `policyTypes`, when absent
    /// or empty, defaults the way the API server defaults it: `Ingress` always, plus `Egress`
    /// when the policy has egress rules. Rules of a direction not in `policyTypes` are ignored.
    pub fn from_k8s(np: &NetworkPolicy) -> Result<Policy, ValidationError> {
        let key = PolicyKey {
            namespace: np.metadata.namespace.clone().unwrap_or_default(),
            name: np.metadata.name.clone().unwrap_or_default(),
        };
        let mut errors = Vec::new();
        let meta = FieldPath::root("metadata");
        if key.name.is_empty() {
            errors.push(FieldError::new(meta.child("name"), "name is required"));
        } else if !is_dns_subdomain(&key.name) {
            errors.push(FieldError::new(
                meta.child("name"),
                "must be a lowercase RFC 1123 subdomain",
            ));
        }
        if key.namespace.is_empty() {
            errors.push(FieldError::new(
                meta.child("namespace"),
                "namespace is required",
            ));
        } else if key.namespace.len() > 63
            || !is_dns_subdomain(&key.namespace)
            || key.namespace.contains('.')
        {
            errors.push(FieldError::new(
                meta.child("namespace"),
                "must be a lowercase RFC 1123 label",
            ));
        }
        let default_spec = NetworkPolicySpec::default();
        let spec = np.spec.as_ref().unwrap_or(&default_spec);
        let sp = FieldPath::root("spec");

        let pod_selector = match &spec.pod_selector {
            None => Some(Selector::everything()),
            Some(s) => collect(Selector::from_k8s(s, &sp.child("podSelector")), &mut errors),
        };

        let (mut wants_ingress, mut wants_egress) = (false, false);
        match spec.policy_types.as_deref() {
            None | Some([]) => {
                wants_ingress = true;
                wants_egress = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
            }
            Some(types) => {
                if types.len() > 2 {
                    errors.push(FieldError::new(
                        sp.child("policyTypes"),
                        "may not specify more than two policyTypes",
                    ));
                }
                for (i, t) in types.iter().enumerate() {
                    match t.as_str() {
                        "Ingress" => wants_ingress = true,
                        "Egress" => wants_egress = true,
                        other => errors.push(FieldError::new(
                            sp.child("policyTypes").index(i),
                            format!(
                                "unsupported value {other:?}: must be \"Ingress\" or \"Egress\""
                            ),
                        )),
                    }
                }
            }
        }

        // Rules are validated whether or not their direction is in force, as the API server does.
        let ingress: Vec<Rule> = spec
            .ingress
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, r)| {
                let p = sp.child("ingress").index(i);
                rule(
                    r.from.as_deref(),
                    r.ports.as_deref(),
                    &p,
                    "from",
                    &mut errors,
                )
            })
            .collect();
        let egress: Vec<Rule> = spec
            .egress
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, r)| {
                let p = sp.child("egress").index(i);
                rule(r.to.as_deref(), r.ports.as_deref(), &p, "to", &mut errors)
            })
            .collect();

        match pod_selector {
            Some(pod_selector) if errors.is_empty() => Ok(Policy {
                key,
                pod_selector,
                ingress: wants_ingress.then_some(ingress),
                egress: wants_egress.then_some(egress),
            }),
            _ => Err(ValidationError {
                policy: key,
                errors,
            }),
        }
    }
}

impl Policy {
    /// What a NetworkPolicy that fails validation still enforces: fail closed. It keeps
    /// isolating the pods it selects, allowing nothing, in the directions it names (`Ingress`
    /// always; `Egress` too when `policyTypes` says so, an egress rule is present, or
    /// `policyTypes` holds something unknown). A selector that cannot be read selects every
    /// pod of the namespace. `None` when not even the namespace can be told, from the object
    /// or from `stored_as` (the record's `<namespace>/<name>`).
    pub fn fail_closed(np: &NetworkPolicy, stored_as: &str) -> Option<Policy> {
        let (ns_hint, name_hint) = stored_as.split_once('/').unwrap_or(("", stored_as));
        let namespace = np
            .metadata
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| ns_hint.to_owned());
        if namespace.is_empty() {
            return None;
        }
        let name = np
            .metadata
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| name_hint.to_owned());
        let spec = np.spec.as_ref();
        let pod_selector = spec
            .and_then(|s| s.pod_selector.as_ref())
            .and_then(|s| Selector::from_k8s(s, &FieldPath::root("spec")).ok())
            .unwrap_or_else(Selector::everything);
        let types = spec
            .and_then(|s| s.policy_types.as_deref())
            .unwrap_or_default();
        let egress =
            spec.is_some_and(|s| s.egress.is_some()) || types.iter().any(|t| t != "Ingress");
        Some(Policy {
            key: PolicyKey { namespace, name },
            pod_selector,
            ingress: Some(Vec::new()),
            egress: egress.then(Vec::new),
        })
    }

    /// What a policy record that cannot even be decoded still enforces, stored as
    /// `<namespace>/<name>`: every pod of the namespace isolated both ways, allowing nothing.
    pub fn unreadable(stored_as: &str) -> Option<Policy> {
        let (namespace, name) = stored_as.split_once('/')?;
        (!namespace.is_empty()).then(|| Policy {
            key: PolicyKey {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            },
            pod_selector: Selector::everything(),
            ingress: Some(Vec::new()),
            egress: Some(Vec::new()),
        })
    }
}

fn collect<T>(r: Result<T, Vec<FieldError>>, errors: &mut Vec<FieldError>) -> Option<T> {
    r.map_err(|e| errors.extend(e)).ok()
}

fn rule(
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
    path: &FieldPath,
    peers_field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<Rule> {
    let before = errors.len();
    let peers = match peers {
        None | Some([]) => Peers::All,
        Some(list) => Peers::Only(
            list.iter()
                .enumerate()
                .filter_map(|(i, p)| peer(p, &path.child(peers_field).index(i), errors))
                .collect(),
        ),
    };
    let ports = match ports {
        None | Some([]) => Ports::All,
        Some(list) => Ports::Only(
            list.iter()
                .enumerate()
                .filter_map(|(i, p)| port(p, &path.child("ports").index(i), errors))
                .collect(),
        ),
    };
    (errors.len() == before).then_some(Rule { peers, ports })
}

fn peer(p: &NetworkPolicyPeer, path: &FieldPath, errors: &mut Vec<FieldError>) -> Option<Peer> {
    match (&p.ip_block, &p.namespace_selector, &p.pod_selector) {
        (None, None, None) => {
            errors.push(FieldError::new(
                path.clone(),
                "must specify a peer (podSelector, namespaceSelector or ipBlock)",
            ));
            None
        }
        (Some(b), None, None) => ip_block(
            &b.cidr,
            b.except.as_deref().unwrap_or(&[]),
            &path.child("ipBlock"),
            errors,
        )
        .map(Peer::IpBlock),
        (Some(_), _, _) => {
            errors.push(FieldError::new(
                path.clone(),
                "may not specify both ipBlock and another peer",
            ));
            None
        }
        (None, ns, pod) => {
            let namespaces = match ns {
                None => Some(NamespaceScope::PolicyNamespace),
                Some(s) => collect(
                    Selector::from_k8s(s, &path.child("namespaceSelector")),
                    errors,
                )
                .map(NamespaceScope::Matching),
            };
            let pods = match pod {
                None => Some(Selector::everything()),
                Some(s) => collect(Selector::from_k8s(s, &path.child("podSelector")), errors),
            };
            Some(Peer::Pods {
                namespaces: namespaces?,
                pods: pods?,
            })
        }
    }
}

fn parse_cidr(s: &str, path: FieldPath, errors: &mut Vec<FieldError>) -> Option<IpNet> {
    match s.parse::<IpNet>() {
        Ok(n) => Some(n),
        Err(_) => {
            errors.push(FieldError::new(
                path,
                format!("invalid CIDR {s:?}: must be an IPv4 or IPv6 address with a prefix length, e.g. 10.0.0.0/8"),
            ));
            None
        }
    }
}

fn ip_block(
    cidr: &str,
    except: &[String],
    path: &FieldPath,
    errors: &mut Vec<FieldError>,
) -> Option<IpBlock> {
    if cidr.is_empty() {
        errors.push(FieldError::new(path.child("cidr"), "cidr is required"));
        return None;
    }
    let net = parse_cidr(cidr, path.child("cidr"), errors);
    let excepts: Vec<Option<IpNet>> = except
        .iter()
        .enumerate()
        .map(|(i, e)| parse_cidr(e, path.child("except").index(i), errors))
        .collect();
    let net = net?;
    let excepts: Option<Vec<IpNet>> = excepts.into_iter().collect();
    match IpBlock::new(net, excepts?) {
        Ok(b) => Some(b),
        Err((i, why)) => {
            errors.push(FieldError::new(
                path.child("except").index(i),
                format!("{:?} {why}", except.get(i).map_or("", String::as_str)),
            ));
            None
        }
    }
}

fn port(p: &NetworkPolicyPort, path: &FieldPath, errors: &mut Vec<FieldError>) -> Option<PortSpec> {
    let before = errors.len();
    let protocol = match p.protocol.as_deref() {
        None => Protocol::Tcp,
        Some(s) => s.parse().unwrap_or_else(|e| {
            errors.push(FieldError::new(path.child("protocol"), format!("{e}")));
            Protocol::Tcp
        }),
    };
    let port_number = |n: i32, field: &str, errors: &mut Vec<FieldError>| -> Option<u16> {
        match u16::try_from(n) {
            Ok(v) if v != 0 => Some(v),
            _ => {
                errors.push(FieldError::new(
                    path.child(field),
                    format!(
                        "{n} is not a valid port number: must be between 1 and 65535, inclusive"
                    ),
                ));
                None
            }
        }
    };
    let port = match (&p.port, p.end_port) {
        (None, None) => Some(PortMatch::Any),
        (None, Some(_)) => {
            errors.push(FieldError::new(
                path.child("endPort"),
                "endPort requires port",
            ));
            None
        }
        (Some(IntOrString::Int(n)), end) => {
            let start = port_number(*n, "port", errors);
            let end = match end {
                None => start,
                Some(e) => port_number(e, "endPort", errors),
            };
            match (start, end) {
                (Some(s), Some(e)) => match PortRange::new(s, e) {
                    Some(r) => Some(PortMatch::Range(r)),
                    None => {
                        errors.push(FieldError::new(
                            path.child("endPort"),
                            format!("endPort {e} must be greater than or equal to port {s}"),
                        ));
                        None
                    }
                },
                _ => None,
            }
        }
        (Some(IntOrString::String(name)), end) => {
            if end.is_some() {
                errors.push(FieldError::new(
                    path.child("endPort"),
                    "endPort may not be specified when port is a named port",
                ));
            }
            match PortName::new(name) {
                Ok(n) => Some(PortMatch::Named(n)),
                Err(why) => {
                    errors.push(FieldError::new(
                        path.child("port"),
                        format!("invalid port name {name:?}: {why}"),
                    ));
                    None
                }
            }
        }
    };
    match port {
        Some(port) if errors.len() == before => Some(PortSpec { protocol, port }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Direction;

    fn policy(yaml: &str) -> Result<Policy, ValidationError> {
        let np: NetworkPolicy = serde_yaml::from_str(yaml).expect("test YAML parses");
        Policy::from_k8s(&np)
    }

    fn errors(yaml: &str) -> Vec<String> {
        policy(yaml)
            .expect_err("policy should be rejected")
            .errors
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    const HEAD: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n";

    #[test]
    fn policy_types_default_to_ingress_plus_egress_when_egress_rules_exist() {
        let p = policy(&format!("{HEAD}spec:\n  podSelector: {{}}\n")).unwrap();
        assert_eq!(p.ingress, Some(vec![]));
        assert_eq!(p.egress, None);

        let p = policy(&format!(
            "{HEAD}spec:\n  podSelector: {{}}\n  egress: [{{}}]\n"
        ))
        .unwrap();
        assert!(p.rules(Direction::Ingress).is_some_and(|r| r.is_empty()));
        assert_eq!(p.rules(Direction::Egress).map(<[_]>::len), Some(1));

        // An empty egress list does not make the policy an egress policy.
        let p = policy(&format!("{HEAD}spec:\n  podSelector: {{}}\n  egress: []\n")).unwrap();
        assert_eq!(p.egress, None);

        // Explicit types win; rules of other directions are ignored.
        let p = policy(&format!(
            "{HEAD}spec:\n  podSelector: {{}}\n  ingress: [{{}}]\n  policyTypes: [Egress]\n"
        ))
        .unwrap();
        assert_eq!(p.ingress, None);
        assert_eq!(p.egress, Some(vec![]));
    }

    #[test]
    fn empty_lists_mean_all() {
        let p = policy(&format!(
            "{HEAD}spec:\n  podSelector: {{}}\n  ingress:\n  - from: []\n    ports: []\n  policyTypes: [Ingress]\n"
        ))
        .unwrap();
        let r = &p.ingress.unwrap()[0];
        assert_eq!(r.peers, Peers::All);
        assert_eq!(r.ports, Ports::All);
    }

    #[test]
    fn end_port_errors() {
        let e = errors(&format!(
            "{HEAD}spec:\n  podSelector: {{}}\n  ingress:\n  - ports:\n    - endPort: 90\n"
        ));
        assert_eq!(
            e,
            ["spec.ingress[0].ports[0].endPort: endPort requires port"]
        );

        let e = errors(&format!(
            "{HEAD}spec:\n  podSelector: {{}}\n  egress:\n  - ports:\n    - {{port: 90, endPort: 80}}\n  policyTypes: [Egress]\n"
        ));
        assert_eq!(e, ["spec.egress[0].ports[0].endPort: endPort 80 must be greater than or equal to port 90"]);

        let e = errors(&format!(
            "{HEAD}spec:\n  podSelector: {{}}\n  ingress:\n  - ports:\n    - {{port: http, endPort: 80}}\n"
        ));
        assert_eq!(e, ["spec.ingress[0].ports[0].endPort: endPort may not be specified when port is a named port"]);

        let e = errors(&format!(
            "{HEAD}spec:\n  podSelector: {{}}\n  ingress:\n  - ports:\n    - {{port: 0}}\n    - {{port: 80, endPort: 70000}}\n"
        ));
        assert_eq!(e.len(), 2);
        assert!(e[0].starts_with("spec.ingress[0].ports[0].port: 0 is not a valid port number"));
        assert!(
            e[1].starts_with("spec.ingress[0].ports[1].endPort: 70000 is not a valid port number")
        );
    }

    #[test]
    fn port_forms() {
        let p = policy(&format!(
            "{HEAD}spec:\n  podSelector: {{}}\n  ingress:\n  - ports:\n    - {{port: 80, endPort: 90, protocol: UDP}}\n    - {{port: serve-80-tcp}}\n    - {{protocol: SCTP}}\n"
        ))
        .unwrap();
        let Ports::Only(ports) = &p.ingress.unwrap()[0].ports else {
            panic!("ports expected")
        };
        assert_eq!(
            ports.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["UDP/80-90", "TCP/serve-80-tcp", "SCTP/*"]
        );
    }

    #[test]
    fn protocol_and_port_name_errors() {
        let e = errors(&format!(
            "{HEAD}spec:\n  podSelector: {{}}\n  ingress:\n  - ports:\n    - {{port: 80, protocol: ICMP}}\n    - {{port: Not_A_Name}}\n"
        ));
        assert_eq!(e.len(), 2);
        assert!(
            e[0].starts_with("spec.ingress[0].ports[0].protocol: unsupported protocol \"ICMP\"")
        );
        assert!(e[1].starts_with("spec.ingress[0].ports[1].port: invalid port name"));
    }

    #[test]
    fn ip_block_errors() {
        let e = errors(&format!(
            "{HEAD}spec:\n  podSelector: {{}}\n  ingress:\n  - from:\n    - ipBlock: {{cidr: 10.0.0.0/16, except: [10.0.1.0/24, 10.1.0.0/24]}}\n    - ipBlock: {{cidr: 10.0.0.0/33}}\n    - ipBlock: {{cidr: 10.0.0.0/8, except: [bogus]}}\n"
        ));
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].starts_with(
            "spec.ingress[0].from[0].ipBlock.except[1]: \"10.1.0.0/24\" must be a strict subset"
        ));
        assert!(e[1].starts_with("spec.ingress[0].from[1].ipBlock.cidr: invalid CIDR"));
        assert!(e[2].starts_with("spec.ingress[0].from[2].ipBlock.except[0]: invalid CIDR"));
    }

    #[test]
    fn peer_shape_errors() {
        let e = errors(&format!(
            "{HEAD}spec:\n  podSelector: {{}}\n  egress:\n  - to:\n    - {{}}\n    - ipBlock: {{cidr: 10.0.0.0/8}}\n      podSelector: {{}}\n  policyTypes: [Egress]\n"
        ));
        assert_eq!(e.len(), 2);
        assert!(e[0].starts_with("spec.egress[0].to[0]: must specify a peer"));
        assert!(e[1].starts_with("spec.egress[0].to[1]: may not specify both ipBlock"));
    }

    #[test]
    fn selector_and_policy_type_errors() {
        let e = errors(&format!(
            "{HEAD}spec:\n  podSelector:\n    matchExpressions: [{{key: pod, operator: Has}}]\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchExpressions: [{{key: ns, operator: In, values: []}}]\n  policyTypes: [Ingress, Sideways]\n"
        ));
        assert_eq!(
            e.iter()
                .map(|s| s.split(':').next().unwrap_or_default())
                .collect::<Vec<_>>(),
            [
                "spec.podSelector.matchExpressions[0].operator",
                "spec.policyTypes[1]",
                "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values",
            ]
        );
    }

    #[test]
    fn metadata_is_required() {
        let np: NetworkPolicy =
            serde_yaml::from_str("metadata: {}\nspec: {podSelector: {}}").unwrap();
        let err = Policy::from_k8s(&np).unwrap_err();
        assert!(err.has_path("metadata.name"));
        assert!(err.has_path("metadata.namespace"));
    }

    #[test]
    fn peers_compile_and_or() {
        let p = policy(&format!(
            "{HEAD}spec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - from:\n    - podSelector: {{matchLabels: {{pod: b}}}}\n      namespaceSelector: {{matchLabels: {{ns: y}}}}\n    - podSelector: {{matchLabels: {{pod: c}}}}\n    - namespaceSelector: {{}}\n"
        ))
        .unwrap();
        let Peers::Only(peers) = &p.ingress.unwrap()[0].peers else {
            panic!("peers expected")
        };
        assert_eq!(peers.len(), 3);
        assert!(
            matches!(&peers[0], Peer::Pods { namespaces: NamespaceScope::Matching(_), pods } if !pods.is_everything())
        );
        assert!(matches!(
            &peers[1],
            Peer::Pods {
                namespaces: NamespaceScope::PolicyNamespace,
                ..
            }
        ));
        assert!(
            matches!(&peers[2], Peer::Pods { namespaces: NamespaceScope::Matching(ns), pods } if ns.is_everything() && pods.is_everything())
        );
    }
}
