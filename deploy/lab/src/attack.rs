//! What a hostile pod (or a host on the underlay) would send, for the tests that prove fabric
//! refuses it: hand-built VXLAN frames with a spoofed inner source, IPv6 router
//! advertisements, and a UDP sink that reports every datagram that got through. Run inside a
//! lab namespace as `fabric-lab attack ...`. Every send is bounded by a count.
//!
//! The frame builders are pure and unit tested; the senders only open a socket and write.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use socket2::{Domain, Protocol, Socket, Type};

/// `fabric-lab attack ...`.
#[derive(Debug, clap::Subcommand)]
pub enum Attack {
    /// Send VXLAN frames whose inner packet claims another source.
    Vxlan {
        /// The tunnel end (node underlay address and VXLAN port).
        #[arg(long)]
        to: SocketAddrV4,
        /// The VNI.
        #[arg(long, default_value_t = 1)]
        vni: u32,
        /// The receiving VTEP's MAC (from its lease).
        #[arg(long)]
        dst_mac: String,
        /// The inner source address claimed.
        #[arg(long)]
        inner_src: Ipv4Addr,
        /// The inner destination.
        #[arg(long)]
        inner_dst: SocketAddrV4,
        /// How many frames (20 ms apart).
        #[arg(long, default_value_t = 20)]
        count: u32,
    },
    /// Send IPv6 router advertisements (default router + an autonomous /64) on an interface.
    RouterAdvert {
        /// The interface (`eth0` in a pod).
        #[arg(long, default_value = "eth0")]
        iface: String,
        /// The prefix announced.
        #[arg(long, default_value = "2001:db8:bad::")]
        prefix: Ipv6Addr,
        /// How many (100 ms apart).
        #[arg(long, default_value_t = 5)]
        count: u32,
    },
    /// Print every UDP datagram arriving on a port, for a while.
    Sink {
        /// The UDP port.
        #[arg(long)]
        port: u16,
        /// How long to listen.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
}

impl Attack {
    /// Runs it.
    pub fn run(self) -> Result<()> {
        match self {
            Attack::Vxlan {
                to,
                vni,
                dst_mac,
                inner_src,
                inner_dst,
                count,
            } => {
                let frame = VxlanFrame {
                    vni,
                    dst_mac: parse_mac(&dst_mac)?,
                    inner_src,
                    inner_dst,
                };
                send_vxlan(to, &frame, count)
            }
            Attack::RouterAdvert {
                iface,
                prefix,
                count,
            } => send_router_adverts(&iface, prefix, count),
            Attack::Sink { port, seconds } => sink(port, seconds).map(drop),
        }
    }
}

fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("{text:?} is not a MAC address"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("{text:?} is not a MAC address"))
}

/// The payload every injected datagram carries, so the sink can tell them apart.
pub const MARK: &[u8] = b"fabric-inject";

/// A UDP datagram wrapped the way a VXLAN tunnel end receives it.
#[derive(Debug, Clone)]
pub struct VxlanFrame {
    /// The VXLAN network identifier.
    pub vni: u32,
    /// The inner Ethernet destination: the receiving VTEP's MAC.
    pub dst_mac: [u8; 6],
    /// The inner source address the frame claims.
    pub inner_src: Ipv4Addr,
    /// The inner destination.
    pub inner_dst: SocketAddrV4,
}

impl VxlanFrame {
    /// The UDP payload to send to the tunnel end: VXLAN header, Ethernet, IPv4, UDP, [`MARK`].
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 14 + 20 + 8 + MARK.len());
        // VXLAN: flags (I bit), 24 reserved bits, VNI, 8 reserved bits.
        out.extend_from_slice(&[0x08, 0, 0, 0]);
        out.extend_from_slice(&(self.vni << 8).to_be_bytes());
        // Ethernet.
        out.extend_from_slice(&self.dst_mac);
        out.extend_from_slice(&[0x02, 0xba, 0xd0, 0, 0, 1]);
        out.extend_from_slice(&0x0800u16.to_be_bytes());
        // IPv4 + UDP (checksum 0: none, as IPv4 allows).
        let udp_len = (8 + MARK.len()) as u16;
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(20 + udp_len).to_be_bytes());
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&self.inner_src.octets());
        ip[16..20].copy_from_slice(&self.inner_dst.ip().octets());
        let sum = checksum(&ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        out.extend_from_slice(&ip);
        out.extend_from_slice(&40000u16.to_be_bytes());
        out.extend_from_slice(&self.inner_dst.port().to_be_bytes());
        out.extend_from_slice(&udp_len.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(MARK);
        out
    }
}

/// The internet checksum of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMPv6 router advertisement announcing a default router and an autonomous prefix
/// (`prefix`/64): what a hostile pod sends to steer its node's IPv6 routing. The checksum is
/// left to the kernel (raw ICMPv6 sockets fill it in).
pub fn router_advert(prefix: Ipv6Addr) -> Vec<u8> {
    let mut out = vec![
        134, 0, 0, 0, // type, code, checksum
        64, 0, // hop limit, flags
    ];
    out.extend_from_slice(&1800u16.to_be_bytes()); // router lifetime
                                                   // Reachable time, retrans timer.
    out.extend_from_slice(&[0; 8]);
    // Prefix information: type 3, length 4 (32 bytes), /64, on-link + autonomous.
    out.extend_from_slice(&[3, 4, 64, 0xc0]);
    out.extend_from_slice(&86400u32.to_be_bytes());
    out.extend_from_slice(&14400u32.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&prefix.octets());
    out
}

/// Sends `count` copies of `frame` to the tunnel end `to`.
pub fn send_vxlan(to: SocketAddrV4, frame: &VxlanFrame, count: u32) -> Result<()> {
    let socket = UdpSocket::bind("0.0.0.0:0").context("binding a UDP socket")?;
    let bytes = frame.encode();
    for _ in 0..count {
        socket
            .send_to(&bytes, to)
            .with_context(|| format!("sending to {to}"))?;
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Sends `count` router advertisements for `prefix` to all nodes on `iface`.
pub fn send_router_adverts(iface: &str, prefix: Ipv6Addr, count: u32) -> Result<()> {
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
        .context("opening a raw ICMPv6 socket")?;
    socket
        .bind_device(Some(iface.as_bytes()))
        .with_context(|| format!("binding to {iface}"))?;
    // Neighbour discovery messages are only taken with a hop limit of 255.
    socket.set_multicast_hops_v6(255)?;
    socket.set_unicast_hops_v6(255)?;
    let index =
        nix::net::if_::if_nametoindex(iface).with_context(|| format!("no interface {iface}"))?;
    socket.set_multicast_if_v6(index)?;
    let all_nodes = SocketAddrV6::new(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), 0, 0, index);
    let bytes = router_advert(prefix);
    for _ in 0..count {
        socket
            .send_to(&bytes, &SocketAddr::V6(all_nodes).into())
            .context("sending a router advertisement")?;
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Prints `<source> <payload>` for every datagram arriving on UDP `port` for `seconds`, then
/// returns how many arrived.
pub fn sink(port: u16, seconds: u64) -> Result<usize> {
    let socket =
        UdpSocket::bind(("0.0.0.0", port)).with_context(|| format!("binding UDP {port}"))?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut buf = [0u8; 2048];
    let mut seen = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(seen);
        }
        socket.set_read_timeout(Some(left))?;
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                seen += 1;
                println!("{from} {}", String::from_utf8_lossy(&buf[..n]));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e).context("receiving"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vxlan_frames_carry_a_valid_inner_ipv4_header() {
        let frame = VxlanFrame {
            vni: 1,
            dst_mac: [2, 0, 0, 0, 0, 9],
            inner_src: "10.244.1.3".parse().unwrap(),
            inner_dst: "10.244.2.2:9999".parse().unwrap(),
        }
        .encode();
        assert_eq!(&frame[..8], &[0x08, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(&frame[8..14], &[2, 0, 0, 0, 0, 9]);
        assert_eq!(&frame[20..22], &[0x08, 0x00]);
        let ip = &frame[22..42];
        assert_eq!(checksum(ip), 0, "a header with its checksum sums to zero");
        assert_eq!(&ip[12..16], &[10, 244, 1, 3]);
        assert_eq!(u16::from_be_bytes([frame[44], frame[45]]), 9999);
        assert!(frame.ends_with(MARK));
        assert_eq!(
            usize::from(u16::from_be_bytes([ip[2], ip[3]])),
            frame.len() - 22
        );
    }

    #[test]
    fn router_adverts_announce_a_default_router_and_the_prefix() {
        let ra = router_advert("2001:db8:bad::".parse().unwrap());
        assert_eq!(ra[0], 134);
        assert_eq!(u16::from_be_bytes([ra[6], ra[7]]), 1800);
        assert_eq!(ra.len(), 16 + 32);
        assert_eq!(&ra[16..20], &[3, 4, 64, 0xc0]);
        assert_eq!(&ra[32..36], &[0x20, 0x01, 0x0d, 0xb8]);
    }
}
