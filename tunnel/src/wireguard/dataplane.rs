//! The data plane: threads moving packets between the TUN device and the UDP socket through
//! each peer's WireGuard state. Decisions (which peer, may this source come out of this
//! tunnel) are made by [`super::table`]; this module only moves bytes and counts drops.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::PublicKey;

use super::keys::{Key, KeyPair};
use super::table::{Peer, Table};

/// The shared, swappable peer table.
pub type Shared = Arc<RwLock<Arc<Table<Tunn>>>>;

/// Largest datagram or packet handled.
const BUF: usize = 65_535 + 64;

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
    /// Packets from the TUN device with no peer for their destination.
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
    /// The TUN queue.
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

fn snapshot(table: &Shared) -> Arc<Table<Tunn>> {
    table.read().unwrap_or_else(|e| e.into_inner()).clone()
}

fn send(udp: &UdpSocket, to: SocketAddrV4, datagram: &[u8]) {
    if let Err(e) = udp.send_to(datagram, to) {
        tracing::debug!(%to, error = %e, "send failed");
    }
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
        let mut out = vec![0u8; BUF + 32];
        let mut tun = &self.tun;
        loop {
            let n = match tun.read(&mut packet) {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "reading the TUN device failed; TX stops");
                    return;
                }
            };
            let packet = &packet[..n];
            let Some(dst) = ipv4_dst(packet) else {
                continue;
            };
            let table = snapshot(&self.table);
            let Some(peer) = table.route(dst) else {
                Drops::count(&self.drops.no_route);
                continue;
            };
            let mut tunn = peer.state.lock().unwrap_or_else(|e| e.into_inner());
            if let TunnResult::WriteToNetwork(datagram) = tunn.encapsulate(packet, &mut out) {
                send(&self.udp, peer.endpoint(), datagram);
            }
        }
    }

    fn rx_loop(&self) {
        let mut datagram = vec![0u8; BUF];
        let mut out = vec![0u8; BUF];
        let mut tun = &self.tun;
        loop {
            let (n, from) = match self.udp.recv_from(&mut datagram) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "receiving on the WireGuard socket failed");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let SocketAddr::V4(from) = from else { continue };
            let table = snapshot(&self.table);
            let Some(peer) = self.peer_for(&table, &datagram[..n]) else {
                continue;
            };
            let mut tunn = peer.state.lock().unwrap_or_else(|e| e.into_inner());
            let mut input: &[u8] = &datagram[..n];
            loop {
                match tunn.decapsulate(Some(IpAddr::V4(*from.ip())), input, &mut out) {
                    TunnResult::Done => break,
                    TunnResult::Err(e) => {
                        tracing::trace!(peer = %peer.node, error = ?e, "datagram refused");
                        Drops::count(&self.drops.rejected);
                        break;
                    }
                    TunnResult::WriteToNetwork(reply) => {
                        send(&self.udp, from, reply);
                        // Flush packets queued while the handshake was pending.
                        input = &[];
                        continue;
                    }
                    TunnResult::WriteToTunnelV4(packet, src) => {
                        if !peer.allowed.contains(&src) {
                            Drops::count(&self.drops.spoofed);
                        } else {
                            peer.set_endpoint(from);
                            if let Err(e) = tun.write_all(packet) {
                                tracing::debug!(error = %e, "TUN write failed");
                            }
                        }
                        break;
                    }
                    TunnResult::WriteToTunnelV6(..) => {
                        Drops::count(&self.drops.spoofed);
                        break;
                    }
                }
            }
        }
    }

    /// The peer an incoming datagram belongs to, counting the ones that belong to nobody.
    fn peer_for<'t>(&self, table: &'t Table<Tunn>, datagram: &[u8]) -> Option<&'t Arc<Peer<Tunn>>> {
        let peer = match Tunn::parse_incoming_packet(datagram) {
            Err(_) => {
                Drops::count(&self.drops.malformed);
                return None;
            }
            Ok(Packet::HandshakeInit(init)) => {
                let public = PublicKey::from(self.keys.secret());
                match parse_handshake_anon(self.keys.secret(), &public, &init) {
                    Ok(half) => table.by_key(&Key(half.peer_static_public)),
                    Err(_) => {
                        Drops::count(&self.drops.rejected);
                        return None;
                    }
                }
            }
            Ok(Packet::HandshakeResponse(p)) => table.by_receiver(p.receiver_idx),
            Ok(Packet::PacketCookieReply(p)) => table.by_receiver(p.receiver_idx),
            Ok(Packet::PacketData(p)) => table.by_receiver(p.receiver_idx),
        };
        if peer.is_none() {
            Drops::count(&self.drops.unknown_peer);
        }
        peer
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

/// The destination of an IPv4 packet.
pub fn ipv4_dst(packet: &[u8]) -> Option<std::net::Ipv4Addr> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    Some(std::net::Ipv4Addr::new(
        packet[16], packet[17], packet[18], packet[19],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ipv4_destinations_only() {
        let mut p = [0u8; 20];
        p[0] = 0x45;
        p[16..20].copy_from_slice(&[10, 244, 2, 7]);
        assert_eq!(ipv4_dst(&p), Some("10.244.2.7".parse().unwrap()));
        p[0] = 0x60;
        assert_eq!(ipv4_dst(&p), None);
        assert_eq!(ipv4_dst(&p[..10]), None);
    }
}
