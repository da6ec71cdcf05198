//! The compiled classifier: answers "may this new connection be made?" for a source and
//! destination endpoint, a protocol and a destination port, without allocating or hashing.
//!
//! Per pod and direction it holds one cache line: whether the pod is isolated and the port
//! matchers of the rules that apply to it, flattened in policy-name then rule order (the first
//! few inline, the rest spilled). A matcher that accepts the connection's protocol and port
//! then tests the rule's peers: one bit in the rule's stripe of a bitset arena over pod
//! indices for a pod peer, or the rule's IPv4 blocks for an address outside the cluster. Named
//! ports are resolved against the selected pod when an ingress side is built, and against the
//! destination's container ports at decide time for egress. It is built and kept up to date
//! by [`crate::index::Cluster`].

use std::net::{IpAddr, Ipv4Addr};

use crate::bitset::PeerArena;
use crate::model::{Direction, PodKey, PolicyKey, Protocol};

/// A pod's index in the classifier. Stable while the pod exists; reused after it is removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodId(u32);

impl PodId {
    pub(crate) fn new(i: usize) -> Self {
        PodId(u32::try_from(i).unwrap_or(u32::MAX))
    }

    /// The dense index.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A policy's index in the classifier. Stable while the policy exists; reused after removal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyId(u32);

impl PolicyId {
    pub(crate) fn new(i: usize) -> Self {
        PolicyId(u32::try_from(i).unwrap_or(u32::MAX))
    }

    /// The dense index.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A compiled rule's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct RuleId(u32);

impl RuleId {
    pub(crate) fn new(i: usize) -> Self {
        RuleId(u32::try_from(i).unwrap_or(u32::MAX))
    }

    pub(crate) fn index(self) -> usize {
        self.0 as usize
    }
}

/// An interned container port name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct NameId(pub(crate) u32);

/// One end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A pod of the cluster.
    Pod(PodId),
    /// An address outside the cluster, IPv4 or IPv6: matched only by `ipBlock` peers of its
    /// family (and by rules with no peers), never isolated itself.
    External(IpAddr),
}

/// Names one rule of one policy: `namespace/name`'s `direction` rule number `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RuleRef {
    /// The policy (see [`Classifier::policy_key`]).
    pub policy: PolicyId,
    /// Ingress or egress.
    pub direction: Direction,
    /// Position in the policy's `ingress` or `egress` list.
    pub index: u32,
}

/// The outcome of one side (egress at the source, ingress at the destination).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// No policy selects the pod for this direction (or the endpoint is external): allowed.
    NotIsolated,
    /// Isolated, and this rule allows the connection (the first in policy-name order).
    Allowed(RuleRef),
    /// Isolated, and no rule allows the connection.
    Denied,
}

impl Decision {
    /// Whether this side lets the connection through.
    pub fn allows(self) -> bool {
        !matches!(self, Decision::Denied)
    }

    /// Whether the pod was isolated for this direction.
    pub fn isolated(self) -> bool {
        !matches!(self, Decision::NotIsolated)
    }
}

/// The verdict on a new connection: allowed iff both sides allow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Verdict {
    /// Egress allowed at the source AND ingress allowed at the destination.
    pub allowed: bool,
    /// The source's egress side.
    pub egress: Decision,
    /// The destination's ingress side.
    pub ingress: Decision,
}

/// A named container port of a pod, for named-port rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NamedPort {
    pub(crate) name: NameId,
    pub(crate) protocol: Protocol,
    pub(crate) port: u16,
}

/// For every port name some policy references, each pod's container port of that name
/// (names are unique within a pod), packed as `protocol_bit << 16 | port`; 0 when the pod has
/// no port of that name. Egress named-port matchers resolve the destination with one load.
#[derive(Clone, Debug, Default)]
pub(crate) struct NamedPortTables {
    tables: Vec<Option<Vec<u32>>>,
}

impl NamedPortTables {
    fn pack(protocol: Protocol, port: u16) -> u32 {
        (u32::from(protocol_bit(protocol)) << 16) | u32::from(port)
    }

    fn lookup(ports: &[NamedPort], name: NameId) -> u32 {
        ports
            .iter()
            .find(|p| p.name == name)
            .map_or(0, |p| Self::pack(p.protocol, p.port))
    }

    /// Whether pod `pod`'s port named `name` is `protocol`/`port`.
    #[inline]
    fn resolves(&self, name: u32, pod: usize, protocol: Protocol, port: u16) -> bool {
        match self.tables.get(name as usize) {
            Some(Some(t)) => t.get(pod).is_some_and(|&v| v == Self::pack(protocol, port)),
            _ => false,
        }
    }

    /// Starts tracking `name`, filling its table from every pod's named ports.
    pub(crate) fn track(&mut self, name: NameId, pods: &[Box<[NamedPort]>]) {
        let i = name.0 as usize;
        if self.tables.len() <= i {
            self.tables.resize(i + 1, None);
        }
        if self.tables[i].is_none() {
            self.tables[i] = Some(pods.iter().map(|ports| Self::lookup(ports, name)).collect());
        }
    }

    /// Records pod `pod`'s named ports in every tracked table.
    pub(crate) fn set_pod(&mut self, pod: usize, ports: &[NamedPort]) {
        for (name, table) in self.tables.iter_mut().enumerate() {
            if let Some(t) = table {
                if t.len() <= pod {
                    t.resize(pod + 1, 0);
                }
                t[pod] = Self::lookup(ports, NameId(name as u32));
            }
        }
    }
}

const ALL_PROTOCOLS: u8 = 0b111;
/// [`SideEntry::flags`]: `arg` is a [`NameId`] to resolve on the destination.
const NAMED: u8 = 1;
/// [`SideEntry::flags`]: the rule has no `from`/`to`, every peer matches.
const ANY_PEER: u8 = 2;

#[inline]
fn protocol_bit(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 1,
        Protocol::Udp => 2,
        Protocol::Sctp => 4,
    }
}

/// One port matcher of one rule, flattened into a pod's side (12 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SideEntry {
    rule: u32,
    /// Numeric: `lo | hi << 16`. Named: the [`NameId`].
    arg: u32,
    /// Bit `protocol_bit(p)` for each protocol `p` accepted.
    protocols: u8,
    flags: u8,
}

impl SideEntry {
    fn numeric(rule: RuleId, any_peer: bool, protocols: u8, lo: u16, hi: u16) -> Self {
        SideEntry {
            rule: rule.0,
            arg: u32::from(lo) | (u32::from(hi) << 16),
            protocols,
            flags: if any_peer { ANY_PEER } else { 0 },
        }
    }

    fn named(rule: RuleId, any_peer: bool, protocols: u8, name: NameId) -> Self {
        SideEntry {
            rule: rule.0,
            arg: name.0,
            protocols,
            flags: NAMED | if any_peer { ANY_PEER } else { 0 },
        }
    }

    fn rule(&self) -> RuleId {
        RuleId(self.rule)
    }
}

/// How many entries a side keeps inline, in its own cache line.
const INLINE: usize = 3;

/// The decide-path state of one pod in one direction: one cache line.
#[derive(Clone, Debug, Default)]
#[repr(align(64))]
pub(crate) struct Side {
    inline: [SideEntry; INLINE],
    inline_len: u8,
    isolated: bool,
    spill: Box<[SideEntry]>,
}

impl Side {
    /// A side with these entries (in evaluation order).
    pub(crate) fn new(isolated: bool, entries: &[SideEntry]) -> Self {
        let n = entries.len().min(INLINE);
        let mut inline = [SideEntry::default(); INLINE];
        inline[..n].copy_from_slice(&entries[..n]);
        Side {
            inline,
            inline_len: n as u8,
            isolated,
            spill: entries[n..].into(),
        }
    }

    #[inline]
    fn entries(&self) -> impl Iterator<Item = &SideEntry> {
        self.inline[..usize::from(self.inline_len).min(INLINE)]
            .iter()
            .chain(self.spill.iter())
    }
}

/// Descriptive data about a pod, used only for explanations.
#[derive(Clone, Debug)]
pub(crate) struct PodMeta {
    pub(crate) key: PodKey,
    pub(crate) ip: Ipv4Addr,
}

/// What explanations need about one pod (kept apart from the decide path).
#[derive(Clone, Debug, Default)]
pub(crate) struct PodInfo {
    pub(crate) meta: Option<PodMeta>,
    /// Policies selecting the pod, per direction (ingress, egress), in name order.
    pub(crate) isolated_by: [Vec<PolicyId>; 2],
}

/// A CIDR minus excepts, as masks over one address family's integers (`u32`, `u128`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Masked<T> {
    pub(crate) net: T,
    pub(crate) mask: T,
    pub(crate) except: Box<[(T, T)]>,
}

impl<T: Copy + Eq + std::ops::BitAnd<Output = T>> Masked<T> {
    #[inline]
    fn contains(&self, ip: T) -> bool {
        ip & self.mask == self.net && !self.except.iter().any(|&(n, m)| ip & m == n)
    }
}

/// A compiled ipBlock, of one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Block {
    V4(Masked<u32>),
    V6(Masked<u128>),
}

impl Block {
    /// Whether `ip` is in the block; never across families.
    #[inline]
    fn contains(&self, ip: IpAddr) -> bool {
        match (self, ip) {
            (Block::V4(b), IpAddr::V4(ip)) => b.contains(u32::from(ip)),
            (Block::V6(b), IpAddr::V6(ip)) => b.contains(u128::from(ip)),
            _ => false,
        }
    }
}

/// A rule's peers. Pod peers live in the rule's stripe of the classifier's [`PeerArena`].
#[derive(Clone, Debug)]
pub(crate) enum PeerMatcher {
    /// No `from`/`to`: everyone.
    Any,
    /// Pods by index (in the arena), addresses outside the cluster by block.
    Some { blocks: Box<[Block]> },
}

/// One port matcher of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PortEntry {
    /// Every port of a protocol.
    Protocol(Protocol),
    /// `start..=end` of a protocol.
    Range {
        protocol: Protocol,
        start: u16,
        end: u16,
    },
    /// A named port of the destination pod, of a protocol.
    Named { protocol: Protocol, name: NameId },
}

/// A rule's ports.
#[derive(Clone, Debug)]
pub(crate) enum PortMatcher {
    /// No `ports`: everything.
    Any,
    /// Any of these.
    Some(Box<[PortEntry]>),
}

/// A compiled rule.
#[derive(Clone, Debug)]
pub(crate) struct CompiledRule {
    pub(crate) origin: RuleRef,
    pub(crate) peers: PeerMatcher,
    pub(crate) ports: PortMatcher,
}

impl CompiledRule {
    /// A rule that matches nothing (a freed slot).
    pub(crate) fn inert(origin: RuleRef) -> Self {
        CompiledRule {
            origin,
            peers: PeerMatcher::Some {
                blocks: Box::new([]),
            },
            ports: PortMatcher::Some(Box::new([])),
        }
    }

    /// Appends this rule's port matchers to a side. `own_ports` are the selected pod's named
    /// ports for an ingress side (named ports resolve against the destination, which is the
    /// pod itself); `None` for an egress side, whose destinations vary.
    pub(crate) fn expand(
        &self,
        rid: RuleId,
        own_ports: Option<&[NamedPort]>,
        out: &mut Vec<SideEntry>,
    ) {
        let any = matches!(self.peers, PeerMatcher::Any);
        let entries = match &self.ports {
            PortMatcher::Any => {
                out.push(SideEntry::numeric(rid, any, ALL_PROTOCOLS, 0, u16::MAX));
                return;
            }
            PortMatcher::Some(entries) => entries,
        };
        for e in entries.iter() {
            match *e {
                PortEntry::Protocol(p) => {
                    out.push(SideEntry::numeric(rid, any, protocol_bit(p), 0, u16::MAX));
                }
                PortEntry::Range {
                    protocol,
                    start,
                    end,
                } => {
                    out.push(SideEntry::numeric(
                        rid,
                        any,
                        protocol_bit(protocol),
                        start,
                        end,
                    ));
                }
                PortEntry::Named { protocol, name } => match own_ports {
                    Some(ports) => out.extend(
                        ports
                            .iter()
                            .filter(|n| n.name == name && n.protocol == protocol)
                            .map(|n| {
                                SideEntry::numeric(rid, any, protocol_bit(protocol), n.port, n.port)
                            }),
                    ),
                    None => out.push(SideEntry::named(rid, any, protocol_bit(protocol), name)),
                },
            }
        }
    }
}

/// The compiled policy state of a cluster. Cheap to clone for publishing a snapshot to other
/// threads; `decide` takes `&self`.
#[derive(Clone, Debug, Default)]
pub struct Classifier {
    /// Per pod: the ingress side.
    pub(crate) ingress: Vec<Side>,
    /// Per pod: the egress side.
    pub(crate) egress: Vec<Side>,
    /// Per referenced port name, per pod: the pod's port of that name (egress named ports).
    pub(crate) named_ports: NamedPortTables,
    /// Per pod: data for explanations.
    pub(crate) pod_info: Vec<PodInfo>,
    /// Per rule.
    pub(crate) rules: Vec<CompiledRule>,
    /// Per rule, a stripe of bits over pod indices: the rule's pod peers.
    pub(crate) peer_pods: PeerArena,
    /// Per policy: its name.
    pub(crate) policies: Vec<Option<PolicyKey>>,
}

impl Classifier {
    /// Decides a new connection from `src` to `dst` on `protocol`/`port` (the destination
    /// port). Allowed iff the source's egress and the destination's ingress both allow it.
    /// An unknown [`PodId`] behaves like a pod that no policy selects and no peer matches.
    #[inline]
    pub fn decide(&self, src: Endpoint, dst: Endpoint, protocol: Protocol, port: u16) -> Verdict {
        let dst_pod = match dst {
            Endpoint::Pod(id) => Some(id.index()),
            Endpoint::External(_) => None,
        };
        // Both sides' lines are touched before either is evaluated so the two (likely cache
        // missing) loads overlap.
        let egress_side = match src {
            Endpoint::Pod(id) => self.egress.get(id.index()).filter(|s| s.isolated),
            Endpoint::External(_) => None,
        };
        let ingress_side = dst_pod
            .and_then(|d| self.ingress.get(d))
            .filter(|s| s.isolated);
        let egress = egress_side.map_or(Decision::NotIsolated, |s| {
            self.isolated_side(s, dst, dst_pod, protocol, port)
        });
        let ingress = ingress_side.map_or(Decision::NotIsolated, |s| {
            self.isolated_side(s, src, None, protocol, port)
        });
        Verdict {
            allowed: egress.allows() && ingress.allows(),
            egress,
            ingress,
        }
    }

    /// One isolated side: the first entry whose protocol, port and peer all match allows it.
    /// `named_dst` is the destination pod whose named ports egress named matchers resolve
    /// against (ingress sides have theirs resolved already).
    #[inline(always)]
    fn isolated_side(
        &self,
        side: &Side,
        peer: Endpoint,
        named_dst: Option<usize>,
        protocol: Protocol,
        port: u16,
    ) -> Decision {
        let bit = protocol_bit(protocol);
        for e in side.entries() {
            if e.protocols & bit == 0 {
                continue;
            }
            let port_ok = if e.flags & NAMED == 0 {
                (e.arg & 0xffff) as u16 <= port && port <= (e.arg >> 16) as u16
            } else {
                named_dst.is_some_and(|d| self.named_ports.resolves(e.arg, d, protocol, port))
            };
            if !port_ok {
                continue;
            }
            let peer_ok = e.flags & ANY_PEER != 0
                || match peer {
                    Endpoint::Pod(id) => self.peer_pods.contains(e.rule().index(), id.index()),
                    Endpoint::External(ip) => match self.rules.get(e.rule().index()) {
                        Some(CompiledRule {
                            peers: PeerMatcher::Some { blocks },
                            ..
                        }) => blocks.iter().any(|b| b.contains(ip)),
                        _ => false,
                    },
                };
            if peer_ok {
                if let Some(rule) = self.rules.get(e.rule().index()) {
                    return Decision::Allowed(rule.origin);
                }
            }
        }
        Decision::Denied
    }

    /// The name of a policy, if it exists.
    pub fn policy_key(&self, id: PolicyId) -> Option<&PolicyKey> {
        self.policies.get(id.index()).and_then(Option::as_ref)
    }

    /// The name of a pod, if it exists.
    pub fn pod_key(&self, id: PodId) -> Option<&PodKey> {
        self.pod_info
            .get(id.index())
            .and_then(|i| i.meta.as_ref().map(|m| &m.key))
    }

    /// The IP of a pod, if it exists.
    pub fn pod_ip(&self, id: PodId) -> Option<Ipv4Addr> {
        self.pod_info
            .get(id.index())
            .and_then(|i| i.meta.as_ref().map(|m| m.ip))
    }

    /// The policies that isolate a pod for a direction, in name order (empty: not isolated).
    pub fn isolating_policies(&self, id: PodId, direction: Direction) -> &[PolicyId] {
        let d = match direction {
            Direction::Ingress => 0,
            Direction::Egress => 1,
        };
        self.pod_info
            .get(id.index())
            .map_or(&[], |i| &i.isolated_by[d])
    }

    /// Number of live pods.
    pub fn pod_count(&self) -> usize {
        self.pod_info.iter().filter(|i| i.meta.is_some()).count()
    }

    /// Number of live policies.
    pub fn policy_count(&self) -> usize {
        self.policies.iter().flatten().count()
    }

    /// Number of pods a rule's peers hold; `None` for a rule that matches every peer.
    #[cfg(test)]
    pub(crate) fn rule_peer_pods(&self, rid: RuleId) -> Option<usize> {
        match &self.rules.get(rid.index())?.peers {
            PeerMatcher::Any => None,
            PeerMatcher::Some { .. } => Some(self.peer_pods.count(rid.index())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matching(
        side: &Side,
        c: &Classifier,
        named_dst: Option<usize>,
        p: Protocol,
        port: u16,
    ) -> bool {
        !side.isolated
            || c.isolated_side(
                side,
                Endpoint::External(Ipv4Addr::UNSPECIFIED.into()),
                named_dst,
                p,
                port,
            )
            .allows()
    }

    #[test]
    fn block_masks_stay_within_their_family() {
        let v4 = Block::V4(Masked {
            net: u32::from(Ipv4Addr::new(10, 244, 0, 0)),
            mask: 0xffff_0000,
            except: vec![(u32::from(Ipv4Addr::new(10, 244, 1, 0)), 0xffff_ff00)].into(),
        });
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(v4.contains(ip("10.244.2.3")));
        assert!(!v4.contains(ip("10.244.1.3")));
        assert!(!v4.contains(ip("10.245.2.3")));
        assert!(!v4.contains(ip("::ffff:10.244.2.3")), "IPv4-mapped is IPv6");
        let net: ipnet::Ipv6Net = "fd00:10:244::/48".parse().unwrap();
        let except: ipnet::Ipv6Net = "fd00:10:244:1::/64".parse().unwrap();
        let v6 = Block::V6(Masked {
            net: u128::from(net.network()),
            mask: u128::from(net.netmask()),
            except: vec![(u128::from(except.network()), u128::from(except.netmask()))].into(),
        });
        assert!(v6.contains(ip("fd00:10:244:2::3")));
        assert!(!v6.contains(ip("fd00:10:244:1::3")));
        assert!(!v6.contains(ip("fd00:10:245::3")));
        assert!(!v6.contains(ip("10.244.2.3")));
    }

    #[test]
    fn side_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<SideEntry>(), 12);
        assert_eq!(std::mem::size_of::<Side>(), 64);
        let entries: Vec<_> = (0..5)
            .map(|i| SideEntry::numeric(RuleId::new(i), true, ALL_PROTOCOLS, i as u16, i as u16))
            .collect();
        let side = Side::new(true, &entries);
        assert_eq!(side.entries().copied().collect::<Vec<_>>(), entries);
    }

    #[test]
    fn empty_classifier_allows_everything() {
        let c = Classifier::default();
        let v = c.decide(
            Endpoint::Pod(PodId::new(3)),
            Endpoint::External(Ipv4Addr::new(1, 1, 1, 1).into()),
            Protocol::Tcp,
            80,
        );
        assert!(v.allowed);
        assert_eq!(v.egress, Decision::NotIsolated);
        assert_eq!(v.ingress, Decision::NotIsolated);
    }

    #[test]
    fn named_port_requires_matching_protocol() {
        let origin = RuleRef {
            policy: PolicyId::new(0),
            direction: Direction::Ingress,
            index: 0,
        };
        let rule = CompiledRule {
            origin,
            peers: PeerMatcher::Any,
            ports: PortMatcher::Some(
                vec![PortEntry::Named {
                    protocol: Protocol::Tcp,
                    name: NameId(1),
                }]
                .into(),
            ),
        };
        let tcp: Box<[NamedPort]> = Box::new([NamedPort {
            name: NameId(1),
            protocol: Protocol::Tcp,
            port: 80,
        }]);
        let udp: Box<[NamedPort]> = Box::new([NamedPort {
            name: NameId(1),
            protocol: Protocol::Udp,
            port: 80,
        }]);
        let mut c = Classifier {
            rules: vec![rule.clone()],
            ..Classifier::default()
        };
        c.named_ports
            .track(NameId(1), &[tcp.clone(), udp.clone(), Box::new([])]);
        let side = |own: Option<&[NamedPort]>| {
            let mut out = Vec::new();
            rule.expand(RuleId::new(0), own, &mut out);
            Side::new(true, &out)
        };
        // Egress form: resolved against the destination (pods 0: tcp, 1: udp, 2: none).
        let egress = side(None);
        assert!(matching(&egress, &c, Some(0), Protocol::Tcp, 80));
        assert!(!matching(&egress, &c, Some(0), Protocol::Tcp, 81));
        assert!(!matching(&egress, &c, Some(1), Protocol::Tcp, 80));
        assert!(!matching(&egress, &c, Some(1), Protocol::Udp, 80));
        assert!(!matching(&egress, &c, Some(2), Protocol::Tcp, 80));
        assert!(!matching(&egress, &c, None, Protocol::Tcp, 80));
        // Ingress form: resolved against the pod itself when the side is built.
        assert!(matching(&side(Some(&tcp)), &c, None, Protocol::Tcp, 80));
        assert!(!matching(&side(Some(&udp)), &c, None, Protocol::Udp, 80));
        assert!(!matching(&side(Some(&udp)), &c, None, Protocol::Tcp, 80));
    }

    #[test]
    fn any_ports_entry_covers_every_protocol_and_port() {
        let rule = CompiledRule {
            origin: RuleRef {
                policy: PolicyId::new(0),
                direction: Direction::Egress,
                index: 0,
            },
            peers: PeerMatcher::Any,
            ports: PortMatcher::Any,
        };
        let c = Classifier {
            rules: vec![rule.clone()],
            ..Classifier::default()
        };
        let mut out = Vec::new();
        rule.expand(RuleId::new(0), None, &mut out);
        let side = Side::new(true, &out);
        for p in Protocol::ALL {
            assert!(matching(&side, &c, None, p, 0) && matching(&side, &c, None, p, 65535));
        }
        assert!(!matching(&Side::new(true, &[]), &c, None, Protocol::Tcp, 1));
        assert!(matching(&Side::new(false, &[]), &c, None, Protocol::Tcp, 1));
    }
}
