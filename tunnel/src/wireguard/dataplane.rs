//! The data plane: threads moving packets between the TUN device and the UDP socket through
//! each peer's WireGuard state, in batches. TX reads TCP super-packets from the TUN device
//! (TSO), segments them ([`super::offload`]), encrypts the segments back to back and sends
//! them in one `sendmsg` (UDP GSO). RX takes coalesced datagrams in one `recvmsg` (UDP GRO).
//! Decisions (which peer, may this source come out of this tunnel) are made by
//! [`super::table`]; this module only moves bytes and counts drops.
//!
//! Every datagram first goes through the device's one [`RateLimiter`] ([`admit`]), shared by
//! every peer's `Tunn`: handshake messages need a valid mac1 (a cheap keyed BLAKE2s with the
//! device's public key, no X25519), and once more than [`HANDSHAKE_RATE_LIMIT`] arrive in a
//! second, a valid mac2 too (a cookie bound to the sender's address); those without one get a
//! cookie reply and no handshake work. Only what passes reaches [`classify_packet`], whose
//! X25519 finds the initiator's static key. The timer thread resets the count every second.
//! Cookie replies are rationed per sender ([`super::replies`]): a flood's messages past its
//! share go unanswered, and those without a mac2 cost no MAC at all.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::PublicKey;

use super::keys::{Key, KeyPair};
use super::offload::{self, Coalescer, VnetHdr, VNET_HDR_LEN};
use super::replies::{cookieless_handshake, Replies};
use super::table::{Peer, Table};
use super::udp::{self, MAX_GSO_BYTES, MAX_SEGMENTS};

/// The shared, swappable peer table.
pub type Shared = Arc<RwLock<Arc<Table<Tunn>>>>;

/// Largest super-packet or coalesced receive handled.
const BUF: usize = 65_535 + VNET_HDR_LEN;

/// WireGuard data message type.
const MESSAGE_DATA: u8 = 4;

/// Handshake messages per second the device takes before it demands cookies (mac2), as
/// boringtun's own device does. Each one a peer's `Tunn` processes counts twice: once in
/// [`admit`], once when `Tunn::decapsulate` verifies it again.
pub const HANDSHAKE_RATE_LIMIT: u64 = 100;

/// Size of a cookie reply message.
pub const COOKIE_REPLY_LEN: usize = 64;

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
    /// Handshake messages that arrived while the device was under load without a valid
    /// cookie (mac2): answered with a cookie reply, not processed.
    pub under_load: AtomicU64,
    /// Handshake messages refused like `under_load` whose sender had already drawn its share
    /// of cookie replies ([`super::replies`]): dropped unanswered, those without any mac2
    /// before a MAC is computed.
    pub unanswered: AtomicU64,
}

impl Drops {
    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters, as (name, value) pairs.
    pub fn snapshot(&self) -> [(&'static str, u64); 7] {
        [
            ("malformed", self.malformed.load(Ordering::Relaxed)),
            ("unknown_peer", self.unknown_peer.load(Ordering::Relaxed)),
            ("rejected", self.rejected.load(Ordering::Relaxed)),
            ("spoofed", self.spoofed.load(Ordering::Relaxed)),
            ("no_route", self.no_route.load(Ordering::Relaxed)),
            ("under_load", self.under_load.load(Ordering::Relaxed)),
            ("unanswered", self.unanswered.load(Ordering::Relaxed)),
        ]
    }

    /// The counter a refusal is counted under.
    fn of(&self, reason: Refusal) -> &AtomicU64 {
        match reason {
            Refusal::Malformed => &self.malformed,
            Refusal::UnknownPeer => &self.unknown_peer,
            Refusal::BadMac | Refusal::BadHandshake => &self.rejected,
        }
    }
}

/// The TUN device's queue (virtio-net headers on), replaced whole when the device was
/// deleted and the backend opened a new one ([`TunSlot::replace`]). The threads keep their
/// own `Arc` and pick up a newer one by its generation: TX when its read fails (it waits for
/// the replacement), RX before each write.
pub struct TunSlot {
    current: Mutex<(u64, Arc<File>)>,
    generation: AtomicU64,
    replaced: Condvar,
}

impl TunSlot {
    /// A slot holding `file`, generation 0.
    pub fn new(file: File) -> Self {
        Self {
            current: Mutex::new((0, Arc::new(file))),
            generation: AtomicU64::new(0),
            replaced: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, Arc<File>)> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current queue and its generation.
    pub fn current(&self) -> (u64, Arc<File>) {
        self.lock().clone()
    }

    /// The current generation (one atomic load: the RX thread checks it per batch).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether the current queue still serves a device ([`super::tun::attached`]).
    pub fn attached(&self) -> bool {
        super::tun::attached(&self.lock().1)
    }

    /// Installs a new queue and wakes the threads waiting for one.
    pub fn replace(&self, file: File) {
        let mut current = self.lock();
        *current = (current.0 + 1, Arc::new(file));
        self.generation.store(current.0, Ordering::Release);
        self.replaced.notify_all();
    }

    /// The current queue once it is newer than `generation`, or after `timeout` whatever
    /// it is.
    pub fn newer_than(&self, generation: u64, timeout: Duration) -> (u64, Arc<File>) {
        let current = self.lock();
        let (current, _) = self
            .replaced
            .wait_timeout_while(current, timeout, |c| c.0 == generation)
            .unwrap_or_else(|e| e.into_inner());
        current.clone()
    }
}

/// The data plane's threads, by name: [`Workers::stopped`] names those that ended (none
/// should while the daemon runs: their loops only end by a panic).
#[derive(Default)]
pub struct Workers(Mutex<Vec<std::thread::JoinHandle<()>>>);

impl Workers {
    /// Starts `body` on a thread named `name`.
    pub fn spawn(&self, name: &str, body: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
        let handle = std::thread::Builder::new().name(name.into()).spawn(body)?;
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(handle);
        Ok(())
    }

    /// The names of the threads that have ended.
    pub fn stopped(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|t| t.is_finished())
            .map(|t| t.thread().name().unwrap_or("wg").to_owned())
            .collect()
    }
}

/// Everything the data plane threads share.
pub struct Plane {
    /// The TUN device's queue.
    pub tun: TunSlot,
    /// The UDP socket.
    pub udp: UdpSocket,
    /// The peers.
    pub table: Shared,
    /// The node's keys.
    pub keys: KeyPair,
    /// The device's handshake rate limiter (keyed on its public key), shared with every
    /// peer's `Tunn`.
    pub limiter: Arc<RateLimiter>,
    /// Drop counters.
    pub drops: Drops,
    /// The threads [`Plane::start`] started (and the UAPI server's).
    pub threads: Workers,
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
        type Loop = fn(&Plane);
        let loops: [(&str, Loop); 3] = [
            ("wg-tx", Plane::tx_loop),
            ("wg-rx", Plane::rx_loop),
            ("wg-timers", Plane::timer_loop),
        ];
        for (name, run) in loops {
            let me = self.clone();
            self.threads.spawn(name, move || run(&me))?;
        }
        Ok(())
    }

    /// The names of the threads that have stopped (none should, while the daemon runs).
    pub fn stopped(&self) -> Vec<String> {
        self.threads.stopped()
    }

    fn tx_loop(&self) {
        let mut packet = vec![0u8; BUF];
        let mut scratch = vec![0u8; BUF];
        let mut batch = Batch::new();
        let (mut generation, mut tun) = self.tun.current();
        let mut waiting = false;
        loop {
            let n = match (&*tun).read(&mut packet) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // The device was deleted (the queue is detached for good) or broke:
                    // wait for the backend to open a new one, polling the old one now and
                    // then in case the error passes.
                    if !waiting {
                        tracing::warn!(error = %e, generation, "reading the TUN device failed; TX waits for the device to be re-created");
                        waiting = true;
                    }
                    (generation, tun) = self.tun.newer_than(generation, Duration::from_secs(1));
                    continue;
                }
            };
            if waiting {
                tracing::info!(generation, "TX reads the TUN device again");
                waiting = false;
            }
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
        let (mut generation, mut tun) = self.tun.current();
        let mut replies = Replies::new(Instant::now());
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
                self.receive(&table, datagram, r.from, &mut out, &mut gro, &mut replies);
            }
            if self.tun.generation() != generation {
                (generation, tun) = self.tun.current();
            }
            gro.flush(|packet| {
                if let Err(e) = (&*tun).write_all(packet) {
                    tracing::debug!(error = %e, "TUN write failed");
                }
            });
        }
    }

    /// Handles one datagram: decrypt and hand to `gro` for the TUN device, answer handshakes,
    /// count what is refused. A cookieless handshake message from a sender past its share of
    /// cookie replies ([`Replies`]) is dropped before anything else.
    fn receive(
        &self,
        table: &Table<Tunn>,
        datagram: &[u8],
        from: SocketAddrV4,
        out: &mut [u8],
        gro: &mut Coalescer,
        replies: &mut Replies,
    ) {
        if cookieless_handshake(datagram)
            && replies.exhausted(from, table.is_peer_endpoint(from), Instant::now())
        {
            return Drops::count(&self.drops.unanswered);
        }
        let mut cookie = [0u8; COOKIE_REPLY_LEN];
        let from_ip = IpAddr::V4(*from.ip());
        let peer = match admit(
            table,
            &self.keys,
            &self.limiter,
            from_ip,
            datagram,
            &mut cookie,
        ) {
            Verdict::Peer(peer) => peer,
            Verdict::Cookie(reply) => {
                if !replies.allow(from, table.is_peer_endpoint(from), Instant::now()) {
                    return Drops::count(&self.drops.unanswered);
                }
                Drops::count(&self.drops.under_load);
                return send(&self.udp, from, reply);
            }
            Verdict::Drop(reason) => return Drops::count(self.drops.of(reason)),
        };
        let mut tunn = peer.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut input = datagram;
        loop {
            let dst = &mut out[VNET_HDR_LEN..];
            let outcome = match tunn.decapsulate(Some(from_ip), input, dst) {
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
            // A no-op until a second has passed since the last reset: the count restarts
            // once a second.
            self.limiter.reset_count();
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
    /// A handshake message whose mac1 is not for our public key (checked before any X25519).
    BadMac,
    /// A handshake initiation that does not decrypt for our key.
    BadHandshake,
}

/// What to do with one incoming datagram.
pub enum Verdict<'t, 'c, T> {
    /// Hand it to this peer's `Tunn`.
    Peer(&'t Arc<Peer<T>>),
    /// The device is under load and this handshake message carries no valid cookie: send
    /// this cookie reply back to its sender and do nothing else.
    Cookie(&'c [u8]),
    /// Drop it, counted under this reason.
    Drop(Refusal),
}

/// Decides what becomes of a datagram from `from`: first the device's rate limiter (mac1,
/// and under load mac2, both keyed BLAKE2s; no key exchange), then [`classify_packet`] for
/// what passes. `cookie` receives a cookie reply ([`COOKIE_REPLY_LEN`] bytes). Pure but for
/// the limiter's counters; the unit tests drive it.
pub fn admit<'t, 'c, T>(
    table: &'t Table<T>,
    keys: &KeyPair,
    limiter: &RateLimiter,
    from: IpAddr,
    datagram: &[u8],
    cookie: &'c mut [u8],
) -> Verdict<'t, 'c, T> {
    let packet = match limiter.verify_packet(Some(from), datagram, cookie) {
        Ok(packet) => packet,
        Err(TunnResult::WriteToNetwork(reply)) => return Verdict::Cookie(reply),
        Err(TunnResult::Err(WireGuardError::InvalidMac)) => return Verdict::Drop(Refusal::BadMac),
        Err(_) => return Verdict::Drop(Refusal::Malformed),
    };
    match classify_packet(table, keys, packet) {
        Ok(peer) => Verdict::Peer(peer),
        Err(reason) => Verdict::Drop(reason),
    }
}

/// Finds the peer an incoming datagram belongs to: by the sender's static key for handshake
/// initiations, by receiver index for everything else. No rate limiting (the data plane goes
/// through [`admit`]). Pure; the fuzz target drives it.
pub fn classify<'t, T>(
    table: &'t Table<T>,
    keys: &KeyPair,
    datagram: &[u8],
) -> Result<&'t Arc<Peer<T>>, Refusal> {
    let packet = Tunn::parse_incoming_packet(datagram).map_err(|_| Refusal::Malformed)?;
    classify_packet(table, keys, packet)
}

/// [`classify`] for a parsed packet. An initiation costs an X25519 (with our private key and
/// its ephemeral) to decrypt the initiator's static key.
pub fn classify_packet<'t, T>(
    table: &'t Table<T>,
    keys: &KeyPair,
    packet: Packet<'_>,
) -> Result<&'t Arc<Peer<T>>, Refusal> {
    let peer = match packet {
        Packet::HandshakeInit(init) => {
            let public = PublicKey::from(keys.public.0);
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

    /// Our device's address as its peers see it, and the peer's.
    const OURS: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(172, 30, 0, 12));
    const THEIRS: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(172, 30, 0, 11));

    /// Our device (key `[7; 32]`) with one peer (key `[9; 32]`) whose `Tunn` shares a
    /// limiter of `limit` handshakes per second, and the peer's own `Tunn` toward us.
    struct Device {
        keys: KeyPair,
        limiter: Arc<RateLimiter>,
        table: Table<Tunn>,
        remote: Tunn,
    }

    fn device(limit: u64) -> Device {
        let keys = KeyPair::from_private([7; 32]);
        let theirs = KeyPair::from_private([9; 32]);
        let limiter = Arc::new(RateLimiter::new(&PublicKey::from(keys.public.0), limit));
        let spec = PeerSpec {
            node: "peer".into(),
            key: theirs.public,
            endpoint: "172.30.0.11:51820".parse().unwrap(),
            allowed: crate::wireguard::table::Allowed {
                v4: "10.244.2.0/24".parse().unwrap(),
                v6: None,
            },
        };
        let (table, _) = Table::default().update(&[spec], &mut 1, |spec, index| {
            Tunn::new(
                keys.secret().clone(),
                PublicKey::from(spec.key.0),
                None,
                None,
                index,
                Some(limiter.clone()),
            )
        });
        let remote = Tunn::new(
            theirs.secret().clone(),
            PublicKey::from(keys.public.0),
            None,
            None,
            77,
            None,
        );
        Device {
            keys,
            limiter,
            table,
            remote,
        }
    }

    impl Device {
        fn admit<'c>(&self, datagram: &[u8], cookie: &'c mut [u8]) -> Verdict<'_, 'c, Tunn> {
            admit(
                &self.table,
                &self.keys,
                &self.limiter,
                THEIRS,
                datagram,
                cookie,
            )
        }

        /// A fresh initiation from the peer (`resend`: even if one is in flight).
        fn initiation(&mut self, resend: bool) -> Vec<u8> {
            let mut buf = [0u8; 256];
            match self.remote.format_handshake_initiation(&mut buf, resend) {
                TunnResult::WriteToNetwork(init) => init.to_vec(),
                _ => panic!("no initiation"),
            }
        }

        fn has_session(&self) -> bool {
            let peer = self.table.peers().next().unwrap();
            let tunn = peer.state.lock().unwrap();
            tunn.stats().0.is_some()
        }
    }

    /// An initiation toward `keys` from a key nobody knows (`seed` is not 7 or 9): valid
    /// mac1, valid crypto.
    fn stranger(keys: &KeyPair, seed: u8) -> Vec<u8> {
        let secret = boringtun::x25519::StaticSecret::from([seed; 32]);
        let mut tunn = Tunn::new(secret, PublicKey::from(keys.public.0), None, None, 1, None);
        let mut buf = [0u8; 256];
        match tunn.format_handshake_initiation(&mut buf, false) {
            TunnResult::WriteToNetwork(init) => init.to_vec(),
            _ => panic!("no initiation"),
        }
    }

    #[test]
    fn bad_mac1_is_dropped_before_any_key_exchange() {
        let mut dev = device(HANDSHAKE_RATE_LIMIT);
        let mut init = dev.initiation(false);
        // mac1 is not part of the key exchange: without the limiter, the X25519 path would
        // decrypt this initiation and find the peer.
        init[116] ^= 1;
        assert!(classify(&dev.table, &dev.keys, &init).is_ok());
        let mut cookie = [0u8; COOKIE_REPLY_LEN];
        assert!(matches!(
            dev.admit(&init, &mut cookie),
            Verdict::Drop(Refusal::BadMac)
        ));
        // Random bytes shaped like an initiation: refused on mac1 alone.
        let mut junk = vec![0xa5u8; 148];
        junk[..4].copy_from_slice(&1u32.to_le_bytes());
        assert!(matches!(
            dev.admit(&junk, &mut cookie),
            Verdict::Drop(Refusal::BadMac)
        ));
        assert!(!dev.has_session());
    }

    #[test]
    fn under_load_an_initiation_without_mac2_gets_a_cookie_reply() {
        let mut dev = device(0);
        let mut cookie = [0u8; COOKIE_REPLY_LEN];
        for init in [dev.initiation(false), stranger(&dev.keys, 1)] {
            let Verdict::Cookie(reply) = dev.admit(&init, &mut cookie) else {
                panic!("no cookie reply");
            };
            assert_eq!(reply.len(), COOKIE_REPLY_LEN);
            assert_eq!(reply[0], 3, "a cookie reply, not a handshake response");
            assert_eq!(
                reply[4..8],
                init[4..8],
                "addressed to the initiator's index"
            );
        }
        assert!(!dev.has_session());
    }

    #[test]
    fn a_junk_flood_pays_at_most_the_limit_in_key_exchanges() {
        let dev = device(HANDSHAKE_RATE_LIMIT);
        let junk: Vec<Vec<u8>> = (100..120).map(|seed| stranger(&dev.keys, seed)).collect();
        let mut cookie = [0u8; COOKIE_REPLY_LEN];
        let (mut exchanged, mut cookies) = (0, 0);
        for init in junk.iter().cycle().take(1000) {
            match dev.admit(init, &mut cookie) {
                // Passed the limiter: X25519 found a key nobody knows.
                Verdict::Drop(Refusal::UnknownPeer) => exchanged += 1,
                Verdict::Cookie(_) => cookies += 1,
                _ => panic!("unexpected verdict"),
            }
        }
        assert_eq!(exchanged, HANDSHAKE_RATE_LIMIT);
        assert_eq!(cookies, 1000 - HANDSHAKE_RATE_LIMIT);
    }

    #[test]
    fn a_real_peer_completes_its_handshake_under_load() {
        let mut dev = device(0);
        let mut cookie = [0u8; COOKIE_REPLY_LEN];
        let mut out = vec![0u8; 2048];
        let first = dev.initiation(false);
        let Verdict::Cookie(reply) = dev.admit(&first, &mut cookie) else {
            panic!("no cookie reply");
        };
        // The peer takes the cookie and retries with mac2.
        let reply = reply.to_vec();
        assert!(matches!(
            dev.remote.decapsulate(Some(OURS), &reply, &mut out),
            TunnResult::Done
        ));
        let retry = dev.initiation(true);
        let Verdict::Peer(peer) = dev.admit(&retry, &mut cookie) else {
            panic!("the retry with a cookie did not pass");
        };
        let response = match peer
            .state
            .lock()
            .unwrap()
            .decapsulate(Some(THEIRS), &retry, &mut out)
        {
            TunnResult::WriteToNetwork(r) => r.to_vec(),
            _ => panic!("no handshake response"),
        };
        assert_eq!(response[0], 2);
        let keepalive = match dev.remote.decapsulate(Some(OURS), &response, &mut out) {
            TunnResult::WriteToNetwork(k) => k.to_vec(),
            _ => panic!("the peer did not take the response"),
        };
        // Data flows both ways through the new session.
        let Verdict::Peer(peer) = dev.admit(&keepalive, &mut cookie) else {
            panic!("keepalive refused");
        };
        assert!(matches!(
            peer.state
                .lock()
                .unwrap()
                .decapsulate(Some(THEIRS), &keepalive, &mut out),
            TunnResult::Done
        ));
        assert!(dev.has_session());
        let mut packet = [0u8; 20];
        packet[0] = 0x45;
        packet[3] = 20;
        packet[12..16].copy_from_slice(&[10, 244, 2, 5]);
        packet[16..20].copy_from_slice(&[10, 244, 1, 5]);
        let data = match dev.remote.encapsulate(&packet, &mut out) {
            TunnResult::WriteToNetwork(d) => d.to_vec(),
            _ => panic!("no data message"),
        };
        let Verdict::Peer(peer) = dev.admit(&data, &mut cookie) else {
            panic!("data refused");
        };
        let mut tunn = peer.state.lock().unwrap();
        match tunn.decapsulate(Some(THEIRS), &data, &mut out) {
            TunnResult::WriteToTunnelV4(p, src) => {
                assert_eq!(p, packet);
                assert_eq!(src, std::net::Ipv4Addr::new(10, 244, 2, 5));
            }
            _ => panic!("not delivered"),
        }
    }

    #[test]
    fn a_worker_that_panics_or_returns_is_named_stopped() {
        let workers = Workers::default();
        let (hold, wait) = std::sync::mpsc::channel::<()>();
        workers
            .spawn("wg-runs", move || {
                let _ = wait.recv();
            })
            .unwrap();
        workers.spawn("wg-panics", || panic!("boom")).unwrap();
        workers.spawn("wg-returns", || {}).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while workers.stopped().len() < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(workers.stopped(), ["wg-panics", "wg-returns"]);
        drop(hold);
    }

    #[test]
    fn a_replaced_tun_queue_wakes_its_waiters() {
        let slot = Arc::new(TunSlot::new(File::open("/dev/null").unwrap()));
        let (generation, _) = slot.current();
        // Nothing newer: the wait times out with the current queue.
        let (same, _) = slot.newer_than(generation, Duration::from_millis(20));
        assert_eq!(same, generation);
        let waiter = {
            let slot = slot.clone();
            std::thread::spawn(move || slot.newer_than(generation, Duration::from_secs(10)).0)
        };
        std::thread::sleep(Duration::from_millis(50));
        slot.replace(File::open("/dev/null").unwrap());
        assert_eq!(waiter.join().unwrap(), generation + 1);
        assert_eq!(slot.generation(), generation + 1);
        // Not a TUN queue: only a detached one (EBADFD) counts as gone.
        assert!(slot.attached());
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
