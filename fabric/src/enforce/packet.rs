//! Reading a queued packet: its addresses, its transport (protocol and destination port) and,
//! for TCP, its flags. IPv4 and IPv6 (through the extension-header chain). Pure.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use policy::Protocol;

/// How many bytes of each queued packet the kernel copies to the daemon: the IPv6 header,
/// a few extension headers and the transport header's first bytes fit.
pub const COPY_RANGE: u16 = 128;

/// The longest extension-header chain walked; a longer one is not read.
const MAX_EXTENSION_HEADERS: usize = 8;

/// The parts of a connection's first packet that policy looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Transport: a port-carrying protocol with its destination port, or something else
    /// (ICMP, ICMPv6, ...).
    pub transport: Transport,
}

/// A flow's transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TCP, UDP or SCTP to this destination port.
    Port(Protocol, u16),
    /// Any other IP protocol (ICMP, ICMPv6, ...): only rules without a port list admit it.
    Other(u8),
}

/// A packet as read: its flow and, for TCP, the flags byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    /// The flow.
    pub flow: Flow,
    /// TCP flags, for a TCP packet.
    pub tcp_flags: Option<u8>,
}

/// TCP's SYN flag.
pub const TCP_SYN: u8 = 0x02;

impl Flow {
    /// Reads an IPv4 or IPv6 packet's addresses, protocol and destination port. `None` for
    /// what is neither, or too short to say.
    pub fn parse(packet: &[u8]) -> Option<Self> {
        Packet::parse(packet).map(|p| p.flow)
    }
}

impl Packet {
    /// Reads a packet; `None` when it is not IPv4 or IPv6, is truncated before what policy
    /// needs, or is a non-first IPv6 fragment (conntrack reassembles before the queue, so
    /// that never reaches it in practice).
    pub fn parse(packet: &[u8]) -> Option<Self> {
        let (src, dst, proto, l4) = match packet.first()? >> 4 {
            4 => ipv4(packet)?,
            6 => ipv6(packet)?,
            _ => return None,
        };
        let protocol = match proto {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            132 => Some(Protocol::Sctp),
            _ => None,
        };
        let (transport, tcp_flags) = match protocol {
            Some(p) => {
                let header = packet.get(l4..)?;
                let port = header.get(2..4)?;
                let flags = match p {
                    Protocol::Tcp => Some(*header.get(13)?),
                    _ => None,
                };
                (
                    Transport::Port(p, u16::from_be_bytes([port[0], port[1]])),
                    flags,
                )
            }
            None => (Transport::Other(proto), None),
        };
        Some(Self {
            flow: Flow {
                src,
                dst,
                transport,
            },
            tcp_flags,
        })
    }
}

/// Addresses, protocol and transport header offset of an IPv4 packet.
fn ipv4(packet: &[u8]) -> Option<(IpAddr, IpAddr, u8, usize)> {
    if packet.len() < 20 {
        return None;
    }
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    if ihl < 20 {
        return None;
    }
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    Some((src.into(), dst.into(), packet[9], ihl))
}

/// Addresses, upper-layer protocol and its header offset of an IPv6 packet, after walking
/// the extension headers (hop-by-hop, routing, destination options, fragment, AH). ESP and
/// "no next header" end the walk: their protocol is the transport, without ports.
fn ipv6(packet: &[u8]) -> Option<(IpAddr, IpAddr, u8, usize)> {
    if packet.len() < 40 {
        return None;
    }
    let src: [u8; 16] = packet[8..24].try_into().ok()?;
    let dst: [u8; 16] = packet[24..40].try_into().ok()?;
    let (src, dst) = (Ipv6Addr::from(src).into(), Ipv6Addr::from(dst).into());
    let mut next = packet[6];
    let mut offset = 40;
    for _ in 0..MAX_EXTENSION_HEADERS {
        match next {
            // Hop-by-hop, routing, destination options: length in 8-byte units, less one.
            0 | 43 | 60 => {
                let h = packet.get(offset..offset + 2)?;
                next = h[0];
                offset += (usize::from(h[1]) + 1) * 8;
            }
            // Fragment: 8 bytes; only the first fragment carries the transport header.
            44 => {
                let h = packet.get(offset..offset + 8)?;
                if u16::from_be_bytes([h[2], h[3]]) >> 3 != 0 {
                    return None;
                }
                next = h[0];
                offset += 8;
            }
            // Authentication header: length in 4-byte units, less two.
            51 => {
                let h = packet.get(offset..offset + 2)?;
                next = h[0];
                offset += (usize::from(h[1]) + 2) * 4;
            }
            upper => return Some((src, dst, upper, offset)),
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An IPv4 packet from 10.244.1.10 to 10.244.2.10.
    pub(crate) fn v4(proto: u8, dport: u16) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[9] = proto;
        p[12..16].copy_from_slice(&[10, 244, 1, 10]);
        p[16..20].copy_from_slice(&[10, 244, 2, 10]);
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p
    }

    /// An IPv6 packet from fd00::1 to fd00::2 with `extensions` (next-header, bytes) before
    /// the transport header of protocol `proto`.
    pub(crate) fn v6(extensions: &[(u8, Vec<u8>)], proto: u8, dport: u16, flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        p[8..24].copy_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        p[6] = extensions.first().map_or(proto, |(kind, _)| *kind);
        for (i, (_, body)) in extensions.iter().enumerate() {
            let mut h = body.clone();
            h[0] = extensions.get(i + 1).map_or(proto, |(kind, _)| *kind);
            p.extend(h);
        }
        let mut l4 = vec![0u8; 20];
        l4[2..4].copy_from_slice(&dport.to_be_bytes());
        l4[13] = flags;
        p.extend(l4);
        p
    }

    #[test]
    fn reads_ipv4_ports_and_other_protocols() {
        let f = Flow::parse(&v4(6, 80)).unwrap();
        assert_eq!(f.transport, Transport::Port(Protocol::Tcp, 80));
        assert_eq!(f.dst, IpAddr::from([10, 244, 2, 10]));
        assert_eq!(
            Flow::parse(&v4(132, 81)).unwrap().transport,
            Transport::Port(Protocol::Sctp, 81)
        );
        assert_eq!(
            Flow::parse(&v4(1, 0)).unwrap().transport,
            Transport::Other(1)
        );
        assert_eq!(Flow::parse(&v4(6, 80)[..21]), None);
        assert_eq!(Flow::parse(&[0x45; 19]), None);
        assert_eq!(Flow::parse(&[0x50; 60]), None, "neither IPv4 nor IPv6");
    }

    #[test]
    fn reads_ipv6_through_extension_headers() {
        let src: IpAddr = "fd00::1".parse().unwrap();
        let p = Packet::parse(&v6(&[], 6, 443, TCP_SYN)).unwrap();
        assert_eq!(p.flow.src, src);
        assert_eq!(p.flow.dst, "fd00::2".parse::<IpAddr>().unwrap());
        assert_eq!(p.flow.transport, Transport::Port(Protocol::Tcp, 443));
        assert_eq!(p.tcp_flags, Some(TCP_SYN));

        let hop_by_hop = (0u8, vec![0u8; 8]);
        let mut dest_opts = (60u8, vec![0u8; 16]);
        dest_opts.1[1] = 1; // 16 bytes
        let first_fragment = (44u8, vec![0u8; 8]);
        let mut ah = (51u8, vec![0u8; 16]);
        ah.1[1] = 2; // (2 + 2) * 4 = 16 bytes
        let chain = [hop_by_hop.clone(), dest_opts, first_fragment, ah];
        let p = Packet::parse(&v6(&chain, 17, 53, 0)).unwrap();
        assert_eq!(p.flow.transport, Transport::Port(Protocol::Udp, 53));
        assert_eq!(p.tcp_flags, None);
        let p = Packet::parse(&v6(std::slice::from_ref(&hop_by_hop), 132, 81, 0)).unwrap();
        assert_eq!(p.flow.transport, Transport::Port(Protocol::Sctp, 81));

        // ICMPv6 and ESP have no ports.
        assert_eq!(
            Flow::parse(&v6(&[], 58, 0, 0)).unwrap().transport,
            Transport::Other(58)
        );
        assert_eq!(
            Flow::parse(&v6(&[], 50, 0, 0)).unwrap().transport,
            Transport::Other(50)
        );

        // A later fragment has no transport header to read.
        let mut later = (44u8, vec![0u8; 8]);
        later.1[2..4].copy_from_slice(&(185u16 << 3).to_be_bytes());
        assert_eq!(Flow::parse(&v6(&[later], 6, 80, TCP_SYN)), None);
    }

    #[test]
    fn truncated_or_endless_ipv6_is_not_read() {
        let full = v6(&[(0, vec![0u8; 8])], 6, 80, TCP_SYN);
        for len in [0, 39, 41, 48, 51, 60] {
            assert_eq!(Packet::parse(&full[..len]), None, "length {len}");
        }
        assert!(Packet::parse(&full).is_some());
        // Nine hop-by-hop headers: longer than the walk goes.
        let endless: Vec<_> = (0..9).map(|_| (0u8, vec![0u8; 8])).collect();
        assert_eq!(Packet::parse(&v6(&endless, 6, 80, TCP_SYN)), None);
        // What fits the copy range: a TCP header behind two extension headers.
        let two = v6(&[(0, vec![0u8; 8]), (44, vec![0u8; 8])], 6, 80, TCP_SYN);
        assert!(two.len() <= usize::from(COPY_RANGE));
    }
}
