//! fabric's own nftables table (`inet fabric`): anti-spoofing on every pod's host veth, the
//! guard on the node's tunnel end, and masquerade for pod traffic leaving the cluster network,
//! for IPv4 and (on a dual-stack network) IPv6.
//!
//! The table is written two ways. [`ruleset`] is the whole of it, replaced atomically through
//! `nft -f -` (the way knftables drives nftables): at startup, on every reconcile pass (which
//! heals hand-made damage) and whenever the tunnel ends change. A pod's ADD and DEL only add
//! or remove the pod's set elements ([`Element`]), in one nfnetlink batch over a socket fabricd
//! keeps open ([`Sets`]): microseconds instead of an `nft` process and a table rewrite.
//! [`apply`] and [`check`] are how fabricd hands `nft` any ruleset, the policy table's too.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use ipnet::{Ipv4Net, Ipv6Net};

use tunnel::TunnelEnds;

use crate::command::{self, CommandError};

/// The table's name; everything fabric puts in netfilter lives in it.
pub const TABLE: &str = "fabric";

/// How the name of every pod's host veth starts (see `pods::host_veth_name`). A veth of that
/// name that is not in `@pod_veths` is dropped ([`ruleset`]).
pub const POD_VETH_PREFIX: &str = "fab";

/// A local pod as the firewall sees it: its host veth and its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPort {
    /// The host-side veth.
    pub veth: String,
    /// The pod's IPv4 address.
    pub ip: Ipv4Addr,
    /// The pod's IPv6 address, on a dual-stack network.
    pub ipv6: Option<Ipv6Addr>,
}

/// The latest ends of the node's tunnels, shared by the agent (which learns them from the
/// leases on every pass) and every pod network it opens (which rewrite the table on ADD and
/// DEL): whoever writes the table next writes them.
#[derive(Debug, Clone, Default)]
pub struct TunnelGuard(Arc<Mutex<Option<TunnelEnds>>>);

impl TunnelGuard {
    /// Records the ends the next table carries.
    pub fn set(&self, ends: Option<TunnelEnds>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = ends;
    }

    /// The ends recorded last.
    pub fn get(&self) -> Option<TunnelEnds> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What a node's table is made of.
#[derive(Debug, Clone, Copy)]
pub struct NodeRules<'a> {
    /// The cluster's pod network (masquerade stops at it).
    pub cluster: Ipv4Net,
    /// The cluster's IPv6 pod network, on a dual-stack network.
    pub cluster6: Option<Ipv6Net>,
    /// The node's local pods.
    pub pods: &'a [PodPort],
    /// The ends of the node's tunnels, for a backend that encapsulates.
    pub tunnel: Option<&'a TunnelEnds>,
}

/// The ruleset for a node:
///
/// - **anti-spoofing**: a packet entering from a pod's veth with any source address but the
///   pod's own is dropped, whatever the policy (IPv6 link-local sources stay allowed:
///   neighbour discovery needs them); so are router advertisements and redirects from pods
///   (a pod must not steer the node's routing);
/// - **fail closed**: anything entering from a veth named like a pod's host veth
///   ([`POD_VETH_PREFIX`]) that is not in `@pod_veths` is dropped: a half-wired veth, or a pod
///   whose address this node no longer holds, is never forwarded without anti-spoofing;
/// - **tunnel guard**: no pod may send to any node's tunnel end (its encapsulation port on its
///   underlay address), and the local tunnel end takes datagrams only from known nodes, on
///   the node's underlay address: a hand-built VXLAN frame would otherwise be decapsulated
///   and judged as the inner source it claims;
/// - **masquerade**: traffic from pods to anywhere outside the cluster network (and not
///   multicast) leaves with the node's address.
///
/// Pods and nodes are set elements, so the rules stay a handful whatever their number. The
/// table is `inet`, so one table serves both families; an `ip fabric` table left by an older
/// fabricd is removed in the same transaction.
pub fn ruleset(rules: &NodeRules<'_>) -> String {
    let pods = rules.pods;
    let veths = elements(pods.iter().map(|p| format!("\"{}\"", p.veth)));
    let addrs = elements(pods.iter().map(|p| format!("\"{}\" . {}", p.veth, p.ip)));
    let addrs6 = elements(
        pods.iter()
            .filter_map(|p| Some(format!("\"{}\" . {}", p.veth, p.ipv6?))),
    );
    let (nodes, ends, guard) = match rules.tunnel {
        Some(t) => {
            let port = t.local.port();
            let local = t.local.ip();
            (
                elements(t.peers.iter().map(|p| p.ip().to_string())),
                elements(
                    std::iter::once(&t.local)
                        .chain(&t.peers)
                        .map(|e| format!("{} . {}", e.ip(), e.port())),
                ),
                format!(
                    "\tchain tunnel {{\n\
                     \t\ttype filter hook input priority filter - 10; policy accept;\n\
                     \t\tudp dport {port} ip saddr != @nodes drop\n\
                     \t\tudp dport {port} ip daddr != {local} drop\n\
                     \t\tudp dport {port} meta nfproto ipv6 drop\n\
                     \t}}\n"
                ),
            )
        }
        None => (String::new(), String::new(), String::new()),
    };
    let cluster = rules.cluster;
    let masquerade6 = rules.cluster6.map_or_else(String::new, |c6| {
        format!(
            "\t\tip6 saddr {c6} ip6 daddr {c6} return\n\
             \t\tip6 saddr {c6} ip6 daddr ff00::/8 return\n\
             \t\tip6 saddr {c6} masquerade fully-random\n"
        )
    });
    format!(
        "table ip {TABLE}\n\
         delete table ip {TABLE}\n\
         table inet {TABLE}\n\
         delete table inet {TABLE}\n\
         table inet {TABLE} {{\n\
         \tset pod_veths {{\n\t\ttype ifname\n{veths}\t}}\n\
         \tset pod_addrs {{\n\t\ttype ifname . ipv4_addr\n{addrs}\t}}\n\
         \tset pod_addrs6 {{\n\t\ttype ifname . ipv6_addr\n{addrs6}\t}}\n\
         \tset nodes {{\n\t\ttype ipv4_addr\n{nodes}\t}}\n\
         \tset tunnel_ends {{\n\t\ttype ipv4_addr . inet_service\n{ends}\t}}\n\
         \tchain antispoof {{\n\
         \t\ttype filter hook prerouting priority raw; policy accept;\n\
         \t\tiifname \"{POD_VETH_PREFIX}*\" meta iifkind \"veth\" iifname != @pod_veths drop\n\
         \t\tiifname @pod_veths iifname . ip saddr != @pod_addrs drop\n\
         \t\tiifname @pod_veths ip6 saddr != fe80::/10 iifname . ip6 saddr != @pod_addrs6 drop\n\
         \t\tiifname @pod_veths icmpv6 type {{ nd-router-advert, nd-redirect }} drop\n\
         \t\tiifname @pod_veths icmp type redirect drop\n\
         \t\tiifname @pod_veths ip daddr . udp dport @tunnel_ends drop\n\
         \t}}\n\
         {guard}\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {cluster} ip daddr {cluster} return\n\
         \t\tip saddr {cluster} ip daddr 224.0.0.0/4 return\n\
         \t\tip saddr {cluster} masquerade fully-random\n\
         {masquerade6}\
         \t}}\n\
         }}\n"
    )
}

/// A set's `elements = { ... }` line, or nothing for an empty set (nft refuses `{ }`).
fn elements(items: impl Iterator<Item = String>) -> String {
    // A set definition refuses the same element twice (two leases may name one node).
    let items: std::collections::BTreeSet<String> = items.collect();
    if items.is_empty() {
        return String::new();
    }
    let items: Vec<String> = items.into_iter().collect();
    format!("\t\telements = {{ {} }}\n", items.join(", "))
}

/// One element of the table's pod sets: what a pod's ADD adds and its DEL removes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Element {
    /// `pod_veths`: the pod's host veth.
    Veth(String),
    /// `pod_addrs`: the veth and the IPv4 source it may send from.
    Addr(String, Ipv4Addr),
    /// `pod_addrs6`: the veth and the IPv6 source it may send from.
    Addr6(String, Ipv6Addr),
}

impl Element {
    /// The set it belongs to.
    pub fn set(&self) -> &'static str {
        match self {
            Element::Veth(_) => "pod_veths",
            Element::Addr(..) => "pod_addrs",
            Element::Addr6(..) => "pod_addrs6",
        }
    }

    /// The key as the kernel stores it: an `ifname` is 16 bytes, NUL-padded; a concatenation
    /// lays its fields one after the other, each a multiple of 4 bytes long (16, 4, 16 here).
    pub fn key(&self) -> Vec<u8> {
        let ifname = |name: &str| {
            let mut b = [0u8; 16];
            let n = name.len().min(15);
            b[..n].copy_from_slice(&name.as_bytes()[..n]);
            b
        };
        match self {
            Element::Veth(v) => ifname(v).to_vec(),
            Element::Addr(v, ip) => [&ifname(v)[..], &ip.octets()].concat(),
            Element::Addr6(v, ip) => [&ifname(v)[..], &ip.octets()].concat(),
        }
    }
}

/// The set elements the pods in `pods` need.
pub fn pod_elements(pods: &[PodPort]) -> BTreeSet<Element> {
    pods.iter()
        .flat_map(|p| {
            [
                Some(Element::Veth(p.veth.clone())),
                Some(Element::Addr(p.veth.clone(), p.ip)),
                p.ipv6.map(|ip| Element::Addr6(p.veth.clone(), ip)),
            ]
        })
        .flatten()
        .collect()
}

/// What turns the table's pod sets from one state into another.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    /// Elements to remove.
    pub remove: Vec<Element>,
    /// Elements to add.
    pub add: Vec<Element>,
}

impl Delta {
    /// From the elements the table holds to those it should.
    pub fn between(installed: &BTreeSet<Element>, wanted: &BTreeSet<Element>) -> Self {
        Self {
            remove: installed.difference(wanted).cloned().collect(),
            add: wanted.difference(installed).cloned().collect(),
        }
    }

    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty()
    }
}

/// nfnetlink and nf_tables constants (`linux/netfilter/nfnetlink.h`, `nf_tables.h`); the
/// netlink ones are shared with ctnetlink ([`crate::enforce::conntrack`]).
pub(crate) mod nl {
    pub const NETLINK_NETFILTER: isize = 12;
    pub const NLMSG_ERROR: u16 = 2;
    pub const NLM_F_REQUEST: u16 = 0x1;
    pub const NLM_F_ACK: u16 = 0x4;
    pub const NLM_F_CREATE: u16 = 0x400;
    pub const NLA_F_NESTED: u16 = 0x8000;
    pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
    pub const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
    pub const NFNL_MSG_BATCH_END: u16 = 0x11;
    pub const NFT_MSG_NEWSETELEM: u16 = 12;
    pub const NFT_MSG_DELSETELEM: u16 = 14;
    pub const NFPROTO_UNSPEC: u8 = 0;
    pub const NFPROTO_INET: u8 = 1;
    pub const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
    pub const NFTA_SET_ELEM_LIST_SET: u16 = 2;
    pub const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
    pub const NFTA_LIST_ELEM: u16 = 1;
    pub const NFTA_SET_ELEM_KEY: u16 = 1;
    pub const NFTA_DATA_VALUE: u16 = 1;
}

/// Writes netlink messages and attributes into one buffer (nf_tables here, ctnetlink in
/// [`crate::enforce::conntrack`]).
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    /// Starts a message (`nlmsghdr` + `nfgenmsg`); returns where it starts, for [`Writer::end`].
    pub(crate) fn begin(
        &mut self,
        kind: u16,
        flags: u16,
        seq: u32,
        family: u8,
        res_id: u16,
    ) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `end`
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        self.buf.extend_from_slice(&[family, 0]); // nfgenmsg: family, NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        at
    }

    /// Ends what [`Writer::begin`] or [`Writer::nest`] started at `at`: writes its length.
    pub(crate) fn end(&mut self, at: usize, len_bytes: usize) {
        let len = self.buf.len() - at;
        match len_bytes {
            4 => self.buf[at..at + 4].copy_from_slice(&(len as u32).to_ne_bytes()),
            _ => self.buf[at..at + 2].copy_from_slice(&(len as u16).to_ne_bytes()),
        }
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    pub(crate) fn attr(&mut self, kind: u16, value: &[u8]) {
        let at = self.nest(kind & !nl::NLA_F_NESTED);
        self.buf.extend_from_slice(value);
        self.end(at, 2);
    }

    /// Starts an attribute whose value is what is written until [`Writer::end`].
    pub(crate) fn nest(&mut self, kind: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        at
    }

    /// A `NEWSETELEM` or `DELSETELEM` message for `elements` of `set` in fabric's table.
    fn set_elements(&mut self, kind: u16, flags: u16, seq: u32, set: &str, elements: &[&Element]) {
        let msg = self.begin(
            (nl::NFNL_SUBSYS_NFTABLES << 8) | kind,
            flags,
            seq,
            nl::NFPROTO_INET,
            0,
        );
        self.attr(
            nl::NFTA_SET_ELEM_LIST_TABLE,
            format!("{TABLE}\0").as_bytes(),
        );
        self.attr(nl::NFTA_SET_ELEM_LIST_SET, format!("{set}\0").as_bytes());
        let list = self.nest(nl::NFTA_SET_ELEM_LIST_ELEMENTS | nl::NLA_F_NESTED);
        for element in elements {
            let item = self.nest(nl::NFTA_LIST_ELEM | nl::NLA_F_NESTED);
            let key = self.nest(nl::NFTA_SET_ELEM_KEY | nl::NLA_F_NESTED);
            self.attr(nl::NFTA_DATA_VALUE, &element.key());
            self.end(key, 2);
            self.end(item, 2);
        }
        self.end(list, 2);
        self.end(msg, 4);
    }
}

/// `elements` by set, in the order the sets first appear.
fn by_set(elements: &[Element]) -> Vec<(&'static str, Vec<&Element>)> {
    let mut sets: Vec<(&'static str, Vec<&Element>)> = Vec::new();
    for e in elements {
        match sets.iter_mut().find(|(s, _)| *s == e.set()) {
            Some((_, list)) => list.push(e),
            None => sets.push((e.set(), vec![e])),
        }
    }
    sets
}

/// An nfnetlink transaction, as [`batch`] writes it.
#[derive(Debug)]
pub struct Batch {
    /// The messages, begin to end.
    pub buf: Vec<u8>,
    /// The sequence numbers of the messages the kernel acknowledges (all but begin and end).
    pub acked: Vec<u32>,
    /// The sequence numbers of begin and end: every message's is between them.
    pub range: (u32, u32),
}

/// One nfnetlink transaction that applies `delta` to fabric's table: all of it or nothing.
/// Each set's elements go in one message, sequence numbers from `first_seq` on. A removal
/// adds the element first, in the same transaction, so that removing what is not there is
/// no error (nft's own idiom, for kernels without `DESTROYSETELEM`).
pub fn batch(delta: &Delta, first_seq: u32) -> Batch {
    let mut w = Writer { buf: Vec::new() };
    let mut seq = first_seq;
    let mut acked = Vec::new();
    let res_id = nl::NFNL_SUBSYS_NFTABLES;
    let at = w.begin(
        nl::NFNL_MSG_BATCH_BEGIN,
        nl::NLM_F_REQUEST,
        seq,
        nl::NFPROTO_UNSPEC,
        res_id,
    );
    w.end(at, 4);
    let create = nl::NLM_F_REQUEST | nl::NLM_F_ACK | nl::NLM_F_CREATE;
    let delete = nl::NLM_F_REQUEST | nl::NLM_F_ACK;
    let mut message = |w: &mut Writer, kind: u16, flags: u16, set: &str, list: &[&Element]| {
        seq = seq.wrapping_add(1);
        acked.push(seq);
        w.set_elements(kind, flags, seq, set, list);
    };
    for (set, list) in by_set(&delta.remove) {
        message(&mut w, nl::NFT_MSG_NEWSETELEM, create, set, &list);
        message(&mut w, nl::NFT_MSG_DELSETELEM, delete, set, &list);
    }
    for (set, list) in by_set(&delta.add) {
        message(&mut w, nl::NFT_MSG_NEWSETELEM, create, set, &list);
    }
    let last = first_seq.wrapping_add(acked.len() as u32 + 1);
    let at = w.begin(
        nl::NFNL_MSG_BATCH_END,
        nl::NLM_F_REQUEST,
        last,
        nl::NFPROTO_UNSPEC,
        res_id,
    );
    w.end(at, 4);
    Batch {
        buf: w.buf,
        acked,
        range: (first_seq, last),
    }
}

/// The kernel's answers in `buf`: each `NLMSG_ERROR` message's sequence number and errno
/// (0: acknowledged).
pub(crate) fn answers(buf: &[u8]) -> Vec<(u32, i32)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 16 <= buf.len() {
        let word = |o: usize| u32::from_ne_bytes(buf[o..o + 4].try_into().expect("4 bytes"));
        let len = word(at) as usize;
        if len < 16 || at + len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
        let seq = word(at + 8);
        if kind == nl::NLMSG_ERROR && len >= 20 {
            out.push((seq, -(word(at + 16) as i32)));
        }
        at += (len + 3) & !3;
    }
    out
}

/// Why [`Sets::apply`] failed; the table is as it was (the kernel applies a batch whole or
/// not at all).
#[derive(Debug, thiserror::Error)]
pub enum SetsError {
    /// The nfnetlink socket could not be opened, written or read.
    #[error("nfnetlink socket: {0}")]
    Socket(#[from] std::io::Error),
    /// The kernel refused the batch (`ENOENT`: the table or a set is missing).
    #[error("the kernel refused the set update: {}", std::io::Error::from_raw_os_error(*.0))]
    Refused(i32),
    /// The kernel acknowledged only part of the batch.
    #[error("no answer from the kernel for part of the set update")]
    Unanswered,
}

/// An nfnetlink socket in fabricd's namespace for changing the table's pod sets. It stays
/// open: closing a socket makes the kernel finish releasing what its transactions removed
/// (an RCU grace period, ~10 ms), which is most of what an `nft delete element` costs.
#[derive(Default)]
pub struct Sets {
    socket: Mutex<Option<(netlink_sys::Socket, u32)>>,
}

impl Sets {
    /// Applies `delta` in one transaction. A batch is processed while it is being sent, so
    /// the answers are already queued when `send` returns: nothing here waits.
    pub fn apply(&self, delta: &Delta) -> Result<(), SetsError> {
        if delta.is_empty() {
            return Ok(());
        }
        let mut slot = self.socket.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some((socket()?, 1));
        }
        let (socket, seq) = slot.as_mut().expect("opened");
        let batch = batch(delta, *seq);
        // Sequence numbers only tell this batch's answers from a stale one's.
        *seq = batch
            .range
            .1
            .checked_add(1)
            .filter(|s| *s < u32::MAX / 2)
            .unwrap_or(1);
        let result = exchange(socket, &batch);
        if matches!(result, Err(SetsError::Socket(_) | SetsError::Unanswered)) {
            // Start afresh: stale answers must not be taken for the next batch's.
            *slot = None;
        }
        result
    }
}

/// A `NETLINK_NETFILTER` socket in the calling thread's namespace, bound, whose answers carry
/// only the header of the message they answer (nf_tables here, ctnetlink in
/// [`crate::enforce::conntrack`]).
pub(crate) fn socket() -> std::io::Result<netlink_sys::Socket> {
    let mut socket = netlink_sys::Socket::new(nl::NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.set_cap_ack(true)?;
    Ok(socket)
}

/// Sends `batch` and reads the kernel's answers to it.
fn exchange(socket: &netlink_sys::Socket, batch: &Batch) -> Result<(), SetsError> {
    socket.send(&batch.buf, 0)?;
    let mut pending: BTreeSet<u32> = batch.acked.iter().copied().collect();
    let (first, last) = batch.range;
    let mut refused = None;
    let mut rx = Vec::with_capacity(16 * 1024);
    while !pending.is_empty() {
        rx.clear();
        match socket.recv(&mut rx, libc::MSG_DONTWAIT) {
            Ok(_) => {}
            // Everything the kernel had to say was queued before `send` returned.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e.into()),
        }
        for (seq, errno) in answers(&rx) {
            pending.remove(&seq);
            // (An error on the batch's begin or end answers for all of it.)
            if errno != 0 && (first..=last).contains(&seq) {
                refused.get_or_insert(errno);
            }
        }
    }
    match refused {
        Some(errno) => Err(SetsError::Refused(errno)),
        None if pending.is_empty() => Ok(()),
        None => Err(SetsError::Unanswered),
    }
}

/// Installs `ruleset` (nft's own syntax; a table is replaced by flushing or deleting it in
/// the same ruleset) atomically: all of it or nothing.
pub fn apply(ruleset: &str) -> Result<(), CommandError> {
    command::feed("nft", &["-f", "-"], ruleset)
}

/// Whether the kernel and `nft` would take `ruleset`, without installing anything.
pub fn check(ruleset: &str) -> Result<(), CommandError> {
    command::feed("nft", &["--check", "-f", "-"], ruleset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ipv6: Option<&str>) -> PodPort {
        PodPort {
            veth: "fab0123456789a".into(),
            ip: "10.244.1.5".parse().unwrap(),
            ipv6: ipv6.map(|s| s.parse().unwrap()),
        }
    }

    fn rules<'a>(pods: &'a [PodPort], tunnel: Option<&'a TunnelEnds>) -> NodeRules<'a> {
        NodeRules {
            cluster: "10.244.0.0/16".parse().unwrap(),
            cluster6: None,
            pods,
            tunnel,
        }
    }

    #[test]
    fn masquerades_only_traffic_leaving_the_cluster() {
        let rules = ruleset(&rules(&[pod(None)], None));
        assert!(rules.contains("elements = { \"fab0123456789a\" . 10.244.1.5 }"));
        assert!(rules.contains("iifname @pod_veths iifname . ip saddr != @pod_addrs drop"));
        assert!(rules.starts_with("table ip fabric\ndelete table ip fabric\n"));
        assert!(rules.contains("delete table inet fabric\ntable inet fabric {"));
        let ret = rules.find("ip daddr 10.244.0.0/16 return").unwrap();
        let masq = rules.find("masquerade").unwrap();
        assert!(ret < masq, "cluster traffic must return before masquerade");
        assert!(!rules.contains("ip6 saddr fd00"));
        assert!(!rules.contains("chain tunnel"), "host-gw has no tunnel end");
    }

    #[test]
    fn dual_stack_pods_may_send_from_their_ipv6_and_link_local_addresses_only() {
        let pods = [pod(Some("fd00:10:244:1::5"))];
        let mut node = rules(&pods, None);
        node.cluster6 = Some("fd00:10:244::/48".parse().unwrap());
        let rules = ruleset(&node);
        assert!(rules.contains("elements = { \"fab0123456789a\" . fd00:10:244:1::5 }"));
        assert!(rules.contains(
            "iifname @pod_veths ip6 saddr != fe80::/10 iifname . ip6 saddr != @pod_addrs6 drop"
        ));
        let ret = rules
            .find("ip6 saddr fd00:10:244::/48 ip6 daddr fd00:10:244::/48 return")
            .unwrap();
        let masq = rules.find("ip6 saddr fd00:10:244::/48 masquerade").unwrap();
        assert!(ret < masq);
    }

    #[test]
    fn a_veth_named_like_a_pods_but_not_in_the_pod_sets_is_dropped() {
        let rules = ruleset(&rules(&[pod(None)], None));
        let fail_closed = rules
            .find("\t\tiifname \"fab*\" meta iifkind \"veth\" iifname != @pod_veths drop\n")
            .unwrap_or_else(|| panic!("{rules}"));
        let antispoof = rules.find("iifname @pod_veths iifname . ip saddr").unwrap();
        assert!(fail_closed < antispoof, "{rules}");
        // In the prerouting chain, so nothing from such a veth is forwarded nor delivered.
        let chain = rules.find("chain antispoof {\n").unwrap();
        assert!(chain < fail_closed && rules[chain..fail_closed].contains("hook prerouting"));
        // Same prefix as the pods' host veths.
        assert!(
            crate::pods::host_veth_name(&fabric_cni::api::AttachmentKey {
                container_id: "c".into(),
                ifname: "eth0".into(),
            })
            .starts_with(POD_VETH_PREFIX)
        );
    }

    #[test]
    fn pods_may_not_steer_the_nodes_routing() {
        let rules = ruleset(&rules(&[pod(None)], None));
        assert!(
            rules.contains("iifname @pod_veths icmpv6 type { nd-router-advert, nd-redirect } drop")
        );
        assert!(rules.contains("iifname @pod_veths icmp type redirect drop"));
    }

    #[test]
    fn only_known_nodes_reach_the_tunnel_end_and_no_pod_reaches_any() {
        let ends = TunnelEnds {
            local: "172.30.0.11:8472".parse().unwrap(),
            peers: vec![
                "172.30.0.12:8472".parse().unwrap(),
                "172.30.0.13:8472".parse().unwrap(),
            ],
        };
        let rules = ruleset(&rules(&[pod(None)], Some(&ends)));
        assert!(rules.contains("elements = { 172.30.0.12, 172.30.0.13 }"));
        assert!(rules
            .contains("elements = { 172.30.0.11 . 8472, 172.30.0.12 . 8472, 172.30.0.13 . 8472 }"));
        assert!(rules.contains("udp dport 8472 ip saddr != @nodes drop"));
        assert!(rules.contains("udp dport 8472 ip daddr != 172.30.0.11 drop"));
        assert!(rules.contains("udp dport 8472 meta nfproto ipv6 drop"));
        assert!(rules.contains("iifname @pod_veths ip daddr . udp dport @tunnel_ends drop"));
    }

    #[test]
    fn a_node_alone_lets_nobody_reach_its_tunnel_end() {
        let ends = TunnelEnds {
            local: "172.30.0.11:51820".parse().unwrap(),
            peers: vec![],
        };
        let rules = ruleset(&rules(&[], Some(&ends)));
        // An empty set matches nothing, so `!= @nodes` drops every sender.
        assert!(rules.contains("\tset nodes {\n\t\ttype ipv4_addr\n\t}"));
        assert!(rules.contains("udp dport 51820 ip saddr != @nodes drop"));
    }

    fn element(veth: &str, ip: &str) -> Element {
        Element::Addr(veth.into(), ip.parse().unwrap())
    }

    #[test]
    fn element_keys_are_laid_out_as_the_kernel_stores_them() {
        let mut want = b"fabq1".to_vec();
        want.resize(16, 0);
        assert_eq!(Element::Veth("fabq1".into()).key(), want);
        want.extend_from_slice(&[10, 244, 0, 9]);
        assert_eq!(element("fabq1", "10.244.0.9").key(), want);
        let six = Element::Addr6("fabq1".into(), "fd00::9".parse().unwrap()).key();
        assert_eq!(six.len(), 32);
        assert_eq!(&six[16..18], &[0xfd, 0]);
        assert_eq!(six[31], 9);
        assert_eq!(Element::Veth("fabq1".into()).set(), "pod_veths");
    }

    #[test]
    fn a_pods_elements_come_and_go_as_a_delta() {
        let one = [pod(Some("fd00:10:244:1::5"))];
        let elements = pod_elements(&one);
        assert_eq!(elements.len(), 3);
        let none = BTreeSet::new();
        let added = Delta::between(&none, &elements);
        assert_eq!((added.add.len(), added.remove.len()), (3, 0));
        assert!(Delta::between(&elements, &elements).is_empty());
        // The same pod again with another address: its veth stays, its address changes.
        let mut moved = pod(None);
        moved.ip = "10.244.1.6".parse().unwrap();
        let delta = Delta::between(&elements, &pod_elements(&[moved]));
        assert_eq!(delta.add, [element("fab0123456789a", "10.244.1.6")]);
        assert_eq!(delta.remove.len(), 2, "{delta:?}");
        assert!(!delta
            .remove
            .contains(&Element::Veth("fab0123456789a".into())));
    }

    /// The bytes `nft add element inet fabric pod_addrs { "fabq1" . 10.244.0.9 }` sends for
    /// the element (seen with strace), and the framing of its message.
    #[test]
    fn a_batch_frames_each_sets_elements_in_one_message() {
        let delta = Delta {
            remove: vec![],
            add: vec![element("fabq1", "10.244.0.9")],
        };
        let b = batch(&delta, 7);
        assert_eq!(b.range, (7, 9));
        assert_eq!(b.acked, [8]);
        let u16_at = |o: usize| u16::from_ne_bytes([b.buf[o], b.buf[o + 1]]);
        let u32_at = |o: usize| u32::from_ne_bytes(b.buf[o..o + 4].try_into().unwrap());
        // Batch begin: 20 bytes, type 0x10, res_id = nftables (10, big-endian).
        assert_eq!((u32_at(0), u16_at(4), u32_at(8)), (20, 0x10, 7));
        assert_eq!(&b.buf[16..20], &[0, 0, 0, 10]);
        // NEWSETELEM: request, ack, create; family inet.
        let m = 20;
        let len = u32_at(m) as usize;
        assert_eq!(u16_at(m + 4), (10 << 8) | 12);
        assert_eq!(u16_at(m + 6), 0x1 | 0x4 | 0x400);
        assert_eq!(u32_at(m + 8), 8);
        assert_eq!(&b.buf[m + 16..m + 20], &[1, 0, 0, 0]);
        // Table and set names, NUL-terminated, padded to 4 bytes.
        assert_eq!(u16_at(m + 20), 11);
        assert_eq!(&b.buf[m + 24..m + 31], b"fabric\0");
        assert_eq!((u16_at(m + 32), u16_at(m + 34)), (14, 2));
        assert_eq!(&b.buf[m + 36..m + 46], b"pod_addrs\0");
        // The elements, exactly as nft sends them.
        let mut elements = vec![
            0x24, 0, 0x03, 0x80, 0x20, 0, 0x01, 0x80, 0x1c, 0, 0x01, 0x80,
        ];
        elements.extend_from_slice(&[0x18, 0, 0x01, 0]);
        elements.extend_from_slice(&element("fabq1", "10.244.0.9").key());
        assert_eq!(&b.buf[m + 48..m + len], &elements[..]);
        // Batch end.
        let e = m + len;
        assert_eq!((u32_at(e), u16_at(e + 4), u32_at(e + 8)), (20, 0x11, 9));
        assert_eq!(b.buf.len(), e + 20);
    }

    #[test]
    fn a_removal_adds_then_deletes_in_the_same_transaction() {
        let delta = Delta {
            remove: vec![
                Element::Veth("fabold".into()),
                element("fabold", "10.244.1.9"),
            ],
            add: vec![Element::Veth("fabnew".into())],
        };
        let b = batch(&delta, 1);
        assert_eq!(b.acked, [2, 3, 4, 5, 6]);
        let mut kinds = Vec::new();
        let mut at = 0;
        while at < b.buf.len() {
            let len = u32::from_ne_bytes(b.buf[at..at + 4].try_into().unwrap()) as usize;
            kinds.push(u16::from_ne_bytes([b.buf[at + 4], b.buf[at + 5]]));
            at += len;
        }
        let (new, del) = ((10 << 8) | 12, (10 << 8) | 14);
        // pod_veths: add, delete; pod_addrs: add, delete; then the additions.
        assert_eq!(kinds, [0x10, new, del, new, del, new, 0x11]);
    }

    #[test]
    fn answers_carry_sequence_and_errno() {
        let mut buf = Vec::new();
        for (seq, err) in [(5u32, 0i32), (6, -2)] {
            buf.extend_from_slice(&36u32.to_ne_bytes());
            buf.extend_from_slice(&2u16.to_ne_bytes());
            buf.extend_from_slice(&0u16.to_ne_bytes());
            buf.extend_from_slice(&seq.to_ne_bytes());
            buf.extend_from_slice(&0u32.to_ne_bytes());
            buf.extend_from_slice(&err.to_ne_bytes());
            buf.extend_from_slice(&[0; 16]); // the request's header
        }
        assert_eq!(answers(&buf), [(5, 0), (6, 2)]);
        assert_eq!(answers(&buf[..40]), [(5, 0)], "a cut message is ignored");
    }
}
