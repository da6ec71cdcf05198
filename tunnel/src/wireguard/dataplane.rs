//! The data plane: threads moving packets between the TUN device and the UDP socket through
//! each peer's WireGuard state, in batches. TX reads TCP super-packets from the TUN device
//! (TSO), segments them ([`super::offload`]), encrypts the segments back to back and sends
//! them in one `sendmsg` (UDP GSO). RX takes coalesced datagrams in one `recvmsg` (UDP GRO).
//! Decisions (which peer, may this source come out of this tunnel) are made by
//! [`super::table`]; this module only moves bytes and counts drops.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::PublicKey;

use super::keys::{Key, KeyPair};
use super::offload::{self, Coalescer, VnetHdr, VNET_HDR_LEN};
use super::table::{Peer, Table};
use super::udp::{self, MAX_GSO_BYTES, MAX_SEGMENTS};

/// The shared, swappable peer table.
pub type Shared = Arc<RwLock<Arc<Table<Tunn>>>>;

/// Largest super-packet or coalesced receive handled.
const BUF: usize = 65_535 + VNET_HDR_LEN;

/// WireGuard data message type.
const MESSAGE_DATA: u8 = 4;

/// Counters of what the data plane dropped, and why.
#[derive(Debug, Default)]
pub struct Drops {
    /// Datagrams that are not WireGuard messages (too short, bad type, bad length).
    pub malformed: AtomicU64,
    /// Datagrams for a peer we do not know (unknown key or receiver index).
    pub unknown_peer: AtomicU64,
    /// Datagrams the protocol refused (bad MAC or tag, replayed counter, no session).
    pub rejected: AtomicU64,
    /// Decrypted packets whose source address is not the peer's subnet.
    pub spoofed: AtomicU64,
    /// Packets from the TUN device with no peer for their destination, or unreadable.
    pub no_route: AtomicU64,
}

impl Drops {
    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters, as (name, value) pairs.
    pub fn snapshot(&self) -> [(&'static str, u64); 5] {
        [
            ("malformed", self.malformed.load(Ordering::Relaxed)),
            ("unknown_peer", self.unknown_peer.load(Ordering::Relaxed)),
            ("rejected", self.rejected.load(Ordering::Relaxed)),
            ("spoofed", self.spoofed.load(Ordering::Relaxed)),
            ("no_route", self.no_route.load(Ordering::Relaxed)),
        ]
    }
}

/// Everything the data plane threads share.
pub struct Plane {
    /// The TUN queue (virtio-net headers on).
    pub tun: File,
    /// The UDP socket.
    pub udp: UdpSocket,
    /// The peers.
    pub table: Shared,
    /// The node's keys.
    pub keys: KeyPair,
    /// Drop counters.
    pub drops: Drops,
}

/// The current peer table (a cheap `Arc` clone).
pub fn snapshot(table: &Shared) -> Arc<Table<Tunn>> {
    table.read().unwrap_or_else(|e| e.into_inner()).clone()
}

fn send(udp: &UdpSocket, to: SocketAddrV4, datagram: &[u8]) {
    if let Err(e) = udp.send_to(datagram, to) {
        tracing::debug!(%to, error = %e, "send failed");
    }
}

/// Encrypted datagrams for one peer, back to back, sent with one `sendmsg` (UDP GSO): all
/// of one size but the last, which may be shorter.
struct Batch {
    buf: Vec<u8>,
    len: usize,
    segment: usize,
    count: usize,
}

impl Batch {
    fn new() -> Self {
        Self {
            buf: vec![0u8; MAX_GSO_BYTES + 2048],
            len: 0,
            segment: 0,
            count: 0,
        }
    }

    fn flush(&mut self, udp: &UdpSocket, to: SocketAddrV4) {
        if self.len > 0 {
            if let Err(e) = udp::send_segments(udp, to, &self.buf[..self.len], self.segment) {
                tracing::debug!(%to, error = %e, "batched send failed");
            }
        }
        self.len = 0;
        self.count = 0;
        self.segment = 0;
    }

    /// Encrypts `packet` for `tunn` into the batch, flushing when it would not fit.
    fn push(&mut self, tunn: &mut Tunn, packet: &[u8], udp: &UdpSocket, to: SocketAddrV4) {
        if self.count == MAX_SEGMENTS || self.len + packet.len() + 64 > MAX_GSO_BYTES {
            self.flush(udp, to);
        }
        let start = self.len;
        let n = match tunn.encapsulate(packet, &mut self.buf[start..]) {
            TunnResult::WriteToNetwork(d) if d.first() == Some(&MESSAGE_DATA) => d.len(),
            // No session yet: boringtun queued the packet and wants a handshake out.
            TunnResult::WriteToNetwork(handshake) => {
                send(udp, to, handshake);
                return;
            }
            _ => return,
        };
        if self.count > 0 && n > self.segment {
            // Larger than its predecessors: they go first, this one starts a new batch.
            if let Err(e) = udp::send_segments(udp, to, &self.buf[..start], self.segment) {
                tracing::debug!(%to, error = %e, "batched send failed");
            }
            self.buf.copy_within(start..start + n, 0);
            self.len = 0;
            self.count = 0;
        }
        if self.count == 0 {
            self.segment = n;
        }
        self.len += n;
        self.count += 1;
        if n < self.segment {
            // A shorter datagram can only end a batch.
            self.flush(udp, to);
        }
    }
}

/// What decrypting one datagram asks for, with the borrow of the output buffer ended.
enum Outcome {
    Done,
    Refused,
    Reply(usize),
    Deliver(usize, IpAddr),
}

impl Plane {
    /// Starts the threads: TUN to UDP, UDP to TUN, timers.
    pub fn start(self: &Arc<Self>) -> std::io::Result<()> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("wg-tx".into())
            .spawn(move || me.tx_loop())?;
        let me = self.clone();
        std::thread::Builder::new()
            .name("wg-rx".into())
            .spawn(move || me.rx_loop())?;
        let me = self.clone();
        std::thread::Builder::new()
            .name("wg-timers".into())
            .spawn(move || me.timer_loop())?;
        Ok(())
    }

    fn tx_loop(&self) {
        let mut packet = vec![0u8; BUF];
        let mut scratch = vec![0u8; BUF];
        let mut batch = Batch::new();
        let mut tun = &self.tun;
        loop {
            let n = match tun.read(&mut packet) {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "reading the TUN device failed; TX stops");
                    return;
                }
            };
            let Some(hdr) = VnetHdr::parse(&packet[..n]) else {
                continue;
            };
            let ip = &mut packet[VNET_HDR_LEN..n];
            let table = snapshot(&self.table);
            let Some(peer) = ip_dst(ip).and_then(|dst| table.route(dst)) else {
                Drops::count(&self.drops.no_route);
                continue;
            };
            let to = peer.endpoint();
            let mut tunn = peer.state.lock().unwrap_or_else(|e| e.into_inner());
            let segmented = offload::segment(&hdr, ip, &mut scratch, |seg| {
                batch.push(&mut tunn, seg, &self.udp, to);
            });
            batch.flush(&self.udp, to);
            if segmented.is_err() {
                Drops::count(&self.drops.no_route);
            }
        }
    }

    fn rx_loop(&self) {
        let mut datagrams = vec![0u8; BUF];
        let mut out = vec![0u8; BUF];
        let mut gro = Coalescer::default();
        let mut tun = &self.tun;
        loop {
            let r = match udp::recv_segments(&self.udp, &mut datagrams) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "receiving on the WireGuard socket failed");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let table = snapshot(&self.table);
            for datagram in datagrams[..r.len].chunks(r.segment.max(1)) {
                self.receive(&table, datagram, r.from, &mut out, &mut gro);
            }
            gro.flush(|packet| {
                if let Err(e) = tun.write_all(packet) {
                    tracing::debug!(error = %e, "TUN write failed");
                }
            });
        }
    }

    /// Handles one datagram: decrypt and hand to `gro` for the TUN device, answer handshakes,
    /// count what is refused.
    fn receive(
        &self,
        table: &Table<Tunn>,
        datagram: &[u8],
        from: SocketAddrV4,
        out: &mut [u8],
        gro: &mut Coalescer,
    ) {
        let Some(peer) = self.peer_for(table, datagram) else {
            return;
        };
        let mut tunn = peer.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut input = datagram;
        loop {
            let dst = &mut out[VNET_HDR_LEN..];
            let outcome = match tunn.decapsulate(Some(IpAddr::V4(*from.ip())), input, dst) {
                TunnResult::Done => Outcome::Done,
                TunnResult::Err(e) => {
                    tracing::trace!(peer = %peer.node, error = ?e, "datagram refused");
                    Outcome::Refused
                }
                TunnResult::WriteToNetwork(reply) => Outcome::Reply(reply.len()),
                TunnResult::WriteToTunnelV4(packet, src) => {
                    Outcome::Deliver(packet.len(), src.into())
                }
                TunnResult::WriteToTunnelV6(packet, src) => {
                    Outcome::Deliver(packet.len(), src.into())
                }
            };
            match outcome {
                Outcome::Done => return,
                Outcome::Refused => return Drops::count(&self.drops.rejected),
                Outcome::Reply(n) => {
                    send(&self.udp, from, &out[VNET_HDR_LEN..VNET_HDR_LEN + n]);
                    // Flush packets queued while the handshake was pending.
                    input = &[];
                }
                Outcome::Deliver(n, src) => {
                    if !peer.allowed.contains(src) {
                        return Drops::count(&self.drops.spoofed);
                    }
                    peer.set_endpoint(from);
                    gro.push(&out[VNET_HDR_LEN..VNET_HDR_LEN + n]);
                    return;
                }
            }
        }
    }

    /// The peer an incoming datagram belongs to, counting the ones that belong to nobody.
    fn peer_for<'t>(&self, table: &'t Table<Tunn>, datagram: &[u8]) -> Option<&'t Arc<Peer<Tunn>>> {
        classify(table, &self.keys, datagram)
            .map_err(|reason| {
                Drops::count(match reason {
                    Refusal::Malformed => &self.drops.malformed,
                    Refusal::UnknownPeer => &self.drops.unknown_peer,
                    Refusal::BadHandshake => &self.drops.rejected,
                })
            })
            .ok()
    }

    /// Starts a handshake with `peer` now, instead of waiting for traffic: after a restart the
    /// peer still holds sessions we lost, and only a new handshake makes it drop them.
    pub fn initiate(&self, peer: &Peer<Tunn>) {
        let mut out = [0u8; 256];
        let mut tunn = peer.state.lock().unwrap_or_else(|e| e.into_inner());
        if let TunnResult::WriteToNetwork(init) = tunn.format_handshake_initiation(&mut out, false)
        {
            send(&self.udp, peer.endpoint(), init);
        }
    }

    fn timer_loop(&self) {
        let mut out = vec![0u8; BUF];
        loop {
            std::thread::sleep(Duration::from_millis(250));
            let table = snapshot(&self.table);
            for peer in table.peers() {
                let mut tunn = peer.state.lock().unwrap_or_else(|e| e.into_inner());
                if let TunnResult::WriteToNetwork(datagram) = tunn.update_timers(&mut out) {
                    send(&self.udp, peer.endpoint(), datagram);
                }
            }
        }
    }
}

/// Why an incoming datagram belongs to no peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Not a WireGuard message.
    Malformed,
    /// No peer with that key or receiver index.
    UnknownPeer,
    /// A handshake initiation that does not decrypt for our key.
    BadHandshake,
}

/// Finds the peer an incoming datagram belongs to: by the sender's static key for handshake
/// initiations, by receiver index for everything else. Pure; the fuzz target drives it.
pub fn classify<'t, T>(
    table: &'t Table<T>,
    keys: &KeyPair,
    datagram: &[u8],
) -> Result<&'t Arc<Peer<T>>, Refusal> {
    let peer = match Tunn::parse_incoming_packet(datagram).map_err(|_| Refusal::Malformed)? {
        Packet::HandshakeInit(init) => {
            let public = PublicKey::from(keys.secret());
            let half = parse_handshake_anon(keys.secret(), &public, &init)
                .map_err(|_| Refusal::BadHandshake)?;
            table.by_key(&Key(half.peer_static_public))
        }
        Packet::HandshakeResponse(p) => table.by_receiver(p.receiver_idx),
        Packet::PacketCookieReply(p) => table.by_receiver(p.receiver_idx),
        Packet::PacketData(p) => table.by_receiver(p.receiver_idx),
    };
    peer.ok_or(Refusal::UnknownPeer)
}

/// The destination of an IPv4 or IPv6 packet.
pub fn ip_dst(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            let dst: [u8; 4] = packet[16..20].try_into().expect("4 bytes");
            Some(IpAddr::from(dst))
        }
        6 if packet.len() >= 40 => {
            let dst: [u8; 16] = packet[24..40].try_into().expect("16 bytes");
            Some(IpAddr::from(dst))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wireguard::table::PeerSpec;

    /// The fuzz target's body, on deterministic pseudo-random input: junk is refused and
    /// counted by kind, never a panic.
    #[test]
    fn random_datagrams_are_classified_or_refused() {
        let keys = KeyPair::from_private([7; 32]);
        let spec = PeerSpec {
            node: "peer".into(),
            key: Key([9; 32]),
            endpoint: "172.30.0.12:51820".parse().unwrap(),
            allowed: crate::wireguard::table::Allowed {
                v4: "10.244.2.0/24".parse().unwrap(),
                v6: None,
            },
        };
        let (table, _) = Table::default().update(&[spec], &mut 1, |_, _| ());
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut refused = std::collections::HashMap::new();
        for i in 0..20_000usize {
            let len = i % 200;
            let mut d: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            if d.len() >= 4 && i % 4 != 0 {
                // Mostly plausible message types (a little-endian u32 of 0..=4).
                d[0] %= 5;
                d[1..4].fill(0);
            }
            if let Err(r) = classify(&table, &keys, &d) {
                *refused.entry(r).or_insert(0) += 1;
            }
            let mut gro = offload::Coalescer::default();
            gro.push(&d);
            gro.flush(|_| {});
            if let Some(hdr) = VnetHdr::parse(&d) {
                let _ = offload::segment(&hdr, &mut d[VNET_HDR_LEN..], &mut [0u8; 1600], |_| {});
            }
        }
        assert!(refused[&Refusal::Malformed] > 1000);
        assert!(refused[&Refusal::UnknownPeer] > 100, "{refused:?}");
        // A well-formed initiation that does not decrypt for our key.
        let mut init = vec![0xa5u8; 148];
        init[..4].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(
            classify(&table, &keys, &init).err(),
            Some(Refusal::BadHandshake)
        );
    }

    #[test]
    fn reads_ipv4_and_ipv6_destinations() {
        let mut p = [0u8; 40];
        p[0] = 0x45;
        p[16..20].copy_from_slice(&[10, 244, 2, 7]);
        assert_eq!(ip_dst(&p), Some("10.244.2.7".parse().unwrap()));
        assert_eq!(ip_dst(&p[..10]), None);
        p[0] = 0x60;
        let v6: std::net::Ipv6Addr = "fd00:10:244:2::7".parse().unwrap();
        p[24..40].copy_from_slice(&v6.octets());
        assert_eq!(ip_dst(&p), Some(v6.into()));
        assert_eq!(ip_dst(&p[..39]), None);
        p[0] = 0x50;
        assert_eq!(ip_dst(&p), None);
    }
}
