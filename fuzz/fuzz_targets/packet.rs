//! Fuzzes the NFQUEUE packet path: whatever the kernel queues (the first `COPY_RANGE` bytes
//! of an IPv4 or IPv6 packet, or anything else) goes through `Packet::parse` and
//! `enforce::judge_packet` exactly as `fabricd`'s queue thread does, against a small compiled
//! policy view (an isolated pod with an ingress rule, and an open one). The same bytes, read
//! as ctnetlink replies, go through `conntrack::parse_replies` (the dump a policy change
//! re-judges).
//!
//! Beyond "no panic": `Flow::parse` agrees with `Packet::parse`; what a parsed packet reports
//! (addresses, the IPv4 transport header's port and TCP flags) lies within the buffer and is
//! what the buffer says there; an unreadable packet, or a TCP one without SYN, is dropped.
//!
//! Run: `scripts/fuzz.sh --smoke` / `--long` (all targets), or one:
//! `scripts/fuzz.sh packet -- -max_total_time=60`.
#![no_main]

use fabric_fuzz as _;

use std::net::IpAddr;
use std::sync::OnceLock;

use fabric::enforce::{conntrack, judge_packet, packet::TCP_SYN, Flow, Packet, Transport};
use fabric::policies::Objects;
use ipam::objects::{Kind, StoredObject};
use libfuzzer_sys::fuzz_target;
use policy::{Cluster, Protocol};

/// The view the packets are judged against, built the way fabricd builds it: from stored
/// records (two pods in namespace `x`; a policy isolating `x/a` for ingress, admitting TCP 80
/// from pods labelled `app=b`).
fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let object = |kind, name: &str, value: &str| StoredObject {
            kind,
            name: name.into(),
            value: Some(value.as_bytes().to_vec()),
            mod_revision: 1,
        };
        let objects = [
            object(Kind::Namespaces, "x", r#"{"labels":{"ns":"x"}}"#),
            object(
                Kind::Pods,
                "node1/c1",
                r#"{"namespace":"x","name":"a","node":"node1","container_id":"c1",
                    "ip":"10.244.1.10","ipv6":"fd00::1","labels":{"app":"a"}}"#,
            ),
            object(
                Kind::Pods,
                "node2/c2",
                r#"{"namespace":"x","name":"b","node":"node2","container_id":"c2",
                    "ip":"10.244.2.10","ipv6":"fd00::2","labels":{"app":"b"}}"#,
            ),
            object(
                Kind::Policies,
                "x/allow-b",
                r#"{"metadata":{"name":"allow-b","namespace":"x"},
                    "spec":{"podSelector":{"matchLabels":{"app":"a"}},"policyTypes":["Ingress"],
                    "ingress":[{"from":[{"podSelector":{"matchLabels":{"app":"b"}}}],
                                "ports":[{"protocol":"TCP","port":80}]}]}}"#,
            ),
        ];
        let cluster = Objects::listed(1, objects).build();
        // The fixture means something: b reaches a on TCP 80 only.
        let syn = |dport: u16| {
            let mut p = vec![0u8; 40];
            p[0] = 0x45;
            p[9] = 6;
            p[12..16].copy_from_slice(&[10, 244, 2, 10]);
            p[16..20].copy_from_slice(&[10, 244, 1, 10]);
            p[22..24].copy_from_slice(&dport.to_be_bytes());
            p[33] = TCP_SYN;
            p
        };
        assert!(
            judge_packet(&cluster, &syn(80)),
            "the fixture admits b to a:80"
        );
        assert!(!judge_packet(&cluster, &syn(81)), "the fixture isolates a");
        cluster
    })
}

fuzz_target!(|data: &[u8]| {
    let cluster = cluster();
    let parsed = Packet::parse(data);
    assert_eq!(Flow::parse(data), parsed.map(|p| p.flow));
    let allowed = judge_packet(cluster, data);

    match parsed {
        None => assert!(!allowed, "an unreadable packet is dropped"),
        Some(p) => {
            if p.tcp_flags.is_some_and(|f| f & TCP_SYN == 0) {
                assert!(!allowed, "a TCP packet without SYN is dropped");
            }
            assert_eq!(
                p.tcp_flags.is_some(),
                matches!(p.flow.transport, Transport::Port(Protocol::Tcp, _))
            );
            check_within(data, &p);
        }
    }

    for (_, reply) in conntrack::parse_replies(data) {
        if let conntrack::Reply::Entry(Some(entry)) = reply {
            // What a dump held can be named in a delete.
            let request = conntrack::delete_request(&[&entry], 1);
            assert!(request.len() >= 20);
        }
    }
});

/// What `p` reports is read from inside `data`, at the places the headers put it.
fn check_within(data: &[u8], p: &Packet) {
    match (data[0] >> 4, p.flow.src, p.flow.dst) {
        (4, IpAddr::V4(src), IpAddr::V4(dst)) => {
            assert!(data.len() >= 20);
            assert_eq!(src.octets(), data[12..16]);
            assert_eq!(dst.octets(), data[16..20]);
            let l4 = usize::from(data[0] & 0x0f) * 4;
            assert!(l4 >= 20);
            match p.flow.transport {
                Transport::Port(proto, port) => {
                    assert!(l4 + 4 <= data.len(), "the port lies within the buffer");
                    assert_eq!(port, u16::from_be_bytes([data[l4 + 2], data[l4 + 3]]));
                    if proto == Protocol::Tcp {
                        assert!(l4 + 14 <= data.len(), "the TCP flags lie within the buffer");
                        assert_eq!(p.tcp_flags, Some(data[l4 + 13]));
                    }
                }
                Transport::Other(proto) => assert_eq!(proto, data[9]),
            }
        }
        (6, IpAddr::V6(src), IpAddr::V6(dst)) => {
            assert!(data.len() >= 40);
            assert_eq!(src.octets(), data[8..24]);
            assert_eq!(dst.octets(), data[24..40]);
            if let Transport::Port(proto, _) = p.flow.transport {
                // The transport header follows at least the fixed header.
                let needed = if proto == Protocol::Tcp { 54 } else { 44 };
                assert!(
                    data.len() >= needed,
                    "the transport header lies within the buffer"
                );
            }
        }
        other => panic!("a packet of version {} read as {:?}", other.0, p),
    }
}
