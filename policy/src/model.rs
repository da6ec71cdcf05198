//! The validated model: pods, namespaces and NetworkPolicies in a form whose types admit only
//! valid states (protocols are an enum, port ranges are ordered and non-zero, port names are
//! IANA service names, ipBlock excepts lie strictly inside their CIDR). Conversion from the
//! Kubernetes API types, with field-path errors, lives in [`crate::validate`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::selector::Selector;

/// Labels of a pod or namespace.
pub type Labels = BTreeMap<String, String>;

/// The label the API server puts on every namespace, holding the namespace's name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A transport protocol NetworkPolicy can name.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// TCP, the default when a port omits `protocol`.
    #[default]
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// All protocols, in a fixed order.
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// The API spelling: `TCP`, `UDP`, `SCTP`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// The IP protocol number (6, 17, 132).
    pub fn ip_number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// The protocol with this IP protocol number, if NetworkPolicy can name it.
    pub fn from_ip_number(n: u8) -> Option<Protocol> {
        match n {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            132 => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing an unknown protocol name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unsupported protocol {0:?}: must be one of TCP, UDP, SCTP")]
pub struct UnknownProtocol(pub String);

impl FromStr for Protocol {
    type Err = UnknownProtocol;

    /// Parses the API spelling; like the API server, case-sensitive.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            other => Err(UnknownProtocol(other.to_owned())),
        }
    }
}

/// The direction a policy or rule governs, from the selected pod's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Direction {
    /// Connections to the selected pod.
    Ingress,
    /// Connections from the selected pod.
    Egress,
}

impl Direction {
    /// Both directions.
    pub const ALL: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    /// The API spelling: `Ingress`, `Egress`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "Ingress",
            Direction::Egress => "Egress",
        }
    }

    /// Lower-case form used in explanations.
    pub fn lower(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An inclusive, non-empty range of non-zero port numbers (`port`..=`endPort`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    start: u16,
    end: u16,
}

impl PortRange {
    /// The range `start..=end`; `None` if `start` is 0 or `end < start`.
    pub fn new(start: u16, end: u16) -> Option<Self> {
        (start != 0 && end >= start).then_some(PortRange { start, end })
    }

    /// The single port `port`; `None` for port 0.
    pub fn single(port: u16) -> Option<Self> {
        Self::new(port, port)
    }

    /// First port of the range.
    pub fn start(self) -> u16 {
        self.start
    }

    /// Last port of the range (inclusive).
    pub fn end(self) -> u16 {
        self.end
    }

    /// Whether `port` lies in the range.
    pub fn contains(self, port: u16) -> bool {
        self.start <= port && port <= self.end
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// A container port name (an IANA service name: at most 15 characters of `a-z`, `0-9` and
/// `-`, at least one letter, no leading, trailing or doubled `-`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortName(String);

impl PortName {
    /// Validates `name`; the error says why it is not a port name.
    pub fn new(name: &str) -> Result<Self, String> {
        if name.is_empty() || name.len() > 15 {
            return Err("must be no more than 15 characters".into());
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(
                "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into(),
            );
        }
        if !name.bytes().any(|b| b.is_ascii_lowercase()) {
            return Err("must contain at least one letter (a-z)".into());
        }
        if name.starts_with('-') || name.ends_with('-') {
            return Err("must not begin or end with a hyphen".into());
        }
        if name.contains("--") {
            return Err("must not contain consecutive hyphens".into());
        }
        Ok(PortName(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Names a pod: `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodKey {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
}

/// Names a NetworkPolicy: `namespace/name`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    /// The policy's namespace.
    pub namespace: String,
    /// The policy's name.
    pub name: String,
}

macro_rules! key_impls {
    ($t:ty) => {
        impl $t {
            /// The key `namespace/name`.
            pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
                Self {
                    namespace: namespace.into(),
                    name: name.into(),
                }
            }

            /// Parses `namespace/name`.
            pub fn parse(s: &str) -> Option<Self> {
                let (ns, name) = s.split_once('/')?;
                (!ns.is_empty() && !name.is_empty() && !name.contains('/'))
                    .then(|| Self::new(ns, name))
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}/{}", self.namespace, self.name)
            }
        }
    };
}
key_impls!(PodKey);
key_impls!(PolicyKey);

/// A port a pod's container declares (the source of named ports).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ContainerPort {
    /// The port's name, if it has one.
    pub name: Option<String>,
    /// The port number.
    pub port: u16,
    /// The port's protocol.
    pub protocol: Protocol,
}

/// A pod as policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    /// Namespace and name.
    pub key: PodKey,
    /// The pod's labels.
    pub labels: Labels,
    /// The pod's IPv4 address.
    pub ip: Ipv4Addr,
    /// The pod's IPv6 address, on a dual-stack network. (IPv6-only pods are not modelled: the
    /// pod network always has IPv4.)
    pub ipv6: Option<Ipv6Addr>,
    /// Its containers' declared ports.
    pub ports: Vec<ContainerPort>,
}

impl Pod {
    /// The pod's addresses: IPv4, then IPv6 if it has one.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> {
        std::iter::once(IpAddr::V4(self.ip)).chain(self.ipv6.map(IpAddr::V6))
    }

    /// Builds a pod from the API object; `None` until it has a name, a namespace and an IPv4
    /// pod IP. The first IPv6 pod IP, if any, is its IPv6 address.
    pub fn from_k8s(pod: &k8s_openapi::api::core::v1::Pod) -> Option<Pod> {
        let namespace = pod.metadata.namespace.clone()?;
        let name = pod.metadata.name.clone()?;
        let status = pod.status.as_ref()?;
        let ips = || {
            status
                .pod_ips
                .iter()
                .flatten()
                .map(|p| p.ip.as_str())
                .chain(status.pod_ip.as_deref())
        };
        let ip = ips().find_map(|s| s.parse::<Ipv4Addr>().ok())?;
        let ipv6 = ips().find_map(|s| s.parse::<Ipv6Addr>().ok());
        let ports = pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                Some(ContainerPort {
                    name: p.name.clone(),
                    port: u16::try_from(p.container_port).ok()?,
                    protocol: p.protocol.as_deref().unwrap_or("TCP").parse().ok()?,
                })
            })
            .collect();
        Some(Pod {
            key: PodKey { namespace, name },
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ip,
            ipv6,
            ports,
        })
    }
}

/// A validated NetworkPolicy.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Namespace and name.
    pub key: PolicyKey,
    /// Which pods of the policy's namespace it selects.
    pub pod_selector: Selector,
    /// Ingress rules if `Ingress` is among the (defaulted) policy types; `Some(empty)` denies
    /// all ingress to the selected pods.
    pub ingress: Option<Vec<Rule>>,
    /// Egress rules if `Egress` is among the (defaulted) policy types.
    pub egress: Option<Vec<Rule>>,
}

impl Policy {
    /// The rules of one direction, if the policy governs that direction.
    pub fn rules(&self, direction: Direction) -> Option<&[Rule]> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

/// One ingress or egress rule: traffic is allowed if it matches a peer AND a port.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Who may be on the other end.
    pub peers: Peers,
    /// Which destination ports.
    pub ports: Ports,
}

/// The peers of a rule.
#[derive(Clone, Debug, PartialEq)]
pub enum Peers {
    /// No `from`/`to` (or an empty list): every peer, in or out of the cluster.
    All,
    /// Any of these (OR).
    Only(Vec<Peer>),
}

/// The ports of a rule.
#[derive(Clone, Debug, PartialEq)]
pub enum Ports {
    /// No `ports` (or an empty list): every port of every protocol.
    All,
    /// Any of these (OR).
    Only(Vec<PortSpec>),
}

/// One entry of `from`/`to`.
#[derive(Clone, Debug, PartialEq)]
pub enum Peer {
    /// Pods chosen by labels: those matching `pods` in the namespaces of `namespaces` (AND).
    Pods {
        /// Which namespaces.
        namespaces: NamespaceScope,
        /// Which pods in them (everything when the peer has no `podSelector`).
        pods: Selector,
    },
    /// Addresses (pods included, by their IP).
    IpBlock(IpBlock),
}

/// The namespaces a pod peer draws from.
#[derive(Clone, Debug, PartialEq)]
pub enum NamespaceScope {
    /// No `namespaceSelector`: the policy's own namespace.
    PolicyNamespace,
    /// Namespaces whose labels match.
    Matching(Selector),
}

/// An `ipBlock`: a CIDR minus excepted CIDRs that lie strictly inside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpBlock {
    cidr: IpNet,
    except: Vec<IpNet>,
}

impl IpBlock {
    /// A block; each `except` must be the same family as `cidr` and strictly inside it (the
    /// error names the offending except's index). Host bits are masked off.
    pub fn new(cidr: IpNet, except: Vec<IpNet>) -> Result<Self, (usize, String)> {
        let cidr = cidr.trunc();
        let except = except
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                let e = e.trunc();
                if e.prefix_len() > cidr.prefix_len() && cidr.contains(&e.network()) {
                    Ok(e)
                } else {
                    Err((i, format!("must be a strict subset of `cidr` {cidr}")))
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(IpBlock { cidr, except })
    }

    /// The CIDR.
    pub fn cidr(&self) -> IpNet {
        self.cidr
    }

    /// The excepted CIDRs.
    pub fn except(&self) -> &[IpNet] {
        &self.except
    }

    /// Whether `ip` is in the CIDR and in none of the excepts.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }
}

impl fmt::Display for IpBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.cidr)?;
        for e in &self.except {
            write!(f, " except {e}")?;
        }
        Ok(())
    }
}

/// One entry of `ports`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    /// The protocol (`TCP` when omitted).
    pub protocol: Protocol,
    /// Which ports of that protocol.
    pub port: PortMatch,
}

/// The port part of a [`PortSpec`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortMatch {
    /// No `port`: every port of the protocol.
    Any,
    /// A number, or `port`..=`endPort`.
    Range(PortRange),
    /// A container port name, resolved per destination pod (matching protocol too).
    Named(PortName),
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.port {
            PortMatch::Any => write!(f, "{}/*", self.protocol),
            PortMatch::Range(r) => write!(f, "{}/{r}", self.protocol),
            PortMatch::Named(n) => write!(f, "{}/{n}", self.protocol),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_parses_api_spelling_only() {
        assert_eq!("SCTP".parse::<Protocol>(), Ok(Protocol::Sctp));
        assert!("tcp".parse::<Protocol>().is_err());
        assert!("ICMP".parse::<Protocol>().is_err());
        assert_eq!(Protocol::default(), Protocol::Tcp);
        assert_eq!(Protocol::from_ip_number(17), Some(Protocol::Udp));
    }

    #[test]
    fn port_range_invariants() {
        assert!(PortRange::new(0, 10).is_none());
        assert!(PortRange::new(10, 9).is_none());
        let r = PortRange::new(80, 90).unwrap();
        assert!(r.contains(80) && r.contains(90) && !r.contains(91) && !r.contains(79));
        assert_eq!(r.to_string(), "80-90");
        assert_eq!(PortRange::single(81).unwrap().to_string(), "81");
    }

    #[test]
    fn port_names() {
        assert!(PortName::new("serve-80-tcp").is_ok());
        assert!(PortName::new("http").is_ok());
        for bad in [
            "",
            "80",
            "-http",
            "http-",
            "ht--tp",
            "HTTP",
            "a-very-long-port-name",
            "h_t",
        ] {
            assert!(PortName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ip_block_except_must_be_strictly_inside() {
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let b = IpBlock::new(net("10.0.0.0/16"), vec![net("10.0.1.0/24")]).unwrap();
        assert!(b.contains("10.0.2.1".parse().unwrap()));
        assert!(!b.contains("10.0.1.1".parse().unwrap()));
        assert!(!b.contains("10.1.0.1".parse().unwrap()));
        assert_eq!(
            IpBlock::new(net("10.0.0.0/16"), vec![net("10.0.0.0/16")])
                .unwrap_err()
                .0,
            0
        );
        assert_eq!(
            IpBlock::new(
                net("10.0.0.0/16"),
                vec![net("10.0.1.0/24"), net("10.1.0.0/24")]
            )
            .unwrap_err()
            .0,
            1
        );
        assert!(IpBlock::new(net("10.0.0.0/16"), vec![net("::/64")]).is_err());
        // Host bits are masked like the API server's sloppy parser does.
        assert_eq!(
            IpBlock::new(net("10.0.0.7/24"), vec![]).unwrap().cidr(),
            net("10.0.0.0/24")
        );
    }

    #[test]
    fn keys_parse() {
        assert_eq!(PodKey::parse("x/a"), Some(PodKey::new("x", "a")));
        assert_eq!(PodKey::parse("x/"), None);
        assert_eq!(PodKey::parse("xa"), None);
        assert_eq!(PolicyKey::new("x", "p").to_string(), "x/p");
    }
}
