//! Fuzzes the WireGuard receive path's decisions and the offload parsers: whatever arrives on
//! the WireGuard port goes through `dataplane::admit` as the data plane's receive thread
//! calls it (the device's shared handshake `RateLimiter`: mac1, and under load mac2 and a
//! cookie reply; then `classify_packet`, which picks the peer before boringtun decrypts
//! anything), and through `dataplane::classify` as it is (the key exchange on any
//! initiation, without the limiter's mac1 gate); whatever comes from the TUN device goes
//! through the virtio-net header, GSO segmentation and `ip_dst` routing; decrypted packets
//! go through GRO coalescing. Classified or refused, never a panic.
//!
//! The first byte steers `admit`: bit 0 gives a handshake message a valid mac1 (computed
//! here as a peer would, so that the fuzzer reaches what lies behind it), bit 1 puts the
//! limiter under load (every handshake then needs a mac2). The rest is the datagram.
//!
//! Beyond "no panic": a datagram classified to a peer is one of the table's; a cookie reply
//! is a 64-byte cookie message to the initiator's index; a segment or a coalesced
//! super-packet never outgrows its buffer.
//!
//! Run: `scripts/fuzz.sh --smoke` / `--long` (all targets), or one:
//! `scripts/fuzz.sh receive -- -max_total_time=60`.
#![no_main]

use std::net::{IpAddr, SocketAddrV4};
use std::sync::{Arc, OnceLock};

use blake2::digest::consts::U16;
use blake2::digest::{FixedOutput, KeyInit, Update};
use blake2::{Blake2s256, Blake2sMac, Digest};
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519::PublicKey;
use fabric_fuzz as _;
use libfuzzer_sys::fuzz_target;
use tunnel::wireguard::dataplane::{
    admit, classify, ip_dst, Verdict, COOKIE_REPLY_LEN, HANDSHAKE_RATE_LIMIT,
};
use tunnel::wireguard::keys::{Key, KeyPair};
use tunnel::wireguard::offload::{segment, Coalescer, VnetHdr, VNET_HDR_LEN};
use tunnel::wireguard::table::{Allowed, PeerSpec, Table};

/// Our device and two peers: the indices the table hands out are what data messages name.
struct Fixture {
    table: Table<()>,
    keys: KeyPair,
    /// The mac1 key of our public key, as senders compute it.
    mac1_key: [u8; 32],
    /// A limiter as the device runs it, and one under load.
    limiter: RateLimiter,
    loaded: RateLimiter,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let spec = |n: u8| PeerSpec {
            node: format!("peer{n}"),
            key: Key([n; 32]),
            endpoint: SocketAddrV4::new([172, 30, 0, 10 + n].into(), 51820),
            allowed: Allowed {
                v4: format!("10.244.{n}.0/24").parse().unwrap(),
                v6: Some(format!("fd00:10:244:{n}::/64").parse().unwrap()),
            },
        };
        let mut next = 1;
        let (table, _) = Table::default().update(&[spec(2), spec(3)], &mut next, |_, _| ());
        let keys = KeyPair::from_private([7; 32]);
        let public = PublicKey::from(keys.public.0);
        let mac1_key = Blake2s256::new()
            .chain_update(b"mac1----")
            .chain_update(public.as_bytes())
            .finalize()
            .into();
        Fixture {
            table,
            keys,
            mac1_key,
            limiter: RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT),
            loaded: RateLimiter::new(&public, 0),
        }
    })
}

/// Gives a handshake initiation (148 bytes) or response (92 bytes) a valid mac1.
fn fix_mac1(key: &[u8; 32], datagram: &mut [u8]) {
    let shaped = matches!(
        (datagram.first(), datagram.len()),
        (Some(1), 148) | (Some(2), 92)
    );
    if !shaped {
        return;
    }
    let at = datagram.len() - 32;
    let mut mac = <Blake2sMac<U16> as KeyInit>::new_from_slice(key).expect("a 32-byte key");
    mac.update(&datagram[..at]);
    let mac1: [u8; 16] = mac.finalize_fixed().into();
    datagram[at..at + 16].copy_from_slice(&mac1);
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let of_table = |peer: &Arc<_>| f.table.peers().any(|p| Arc::ptr_eq(p, peer));

    if let Some((&control, rest)) = data.split_first() {
        let mut datagram = rest.to_vec();
        if control & 1 != 0 {
            fix_mac1(&f.mac1_key, &mut datagram);
        }
        let limiter = if control & 2 != 0 {
            &f.loaded
        } else {
            &f.limiter
        };
        let from = IpAddr::from([172, 30, 0, 12]);
        let mut cookie = [0u8; COOKIE_REPLY_LEN];
        match admit(&f.table, &f.keys, limiter, from, &datagram, &mut cookie) {
            Verdict::Peer(peer) => assert!(of_table(peer), "admitted to a peer of the table"),
            Verdict::Cookie(reply) => {
                assert_eq!(reply.len(), COOKIE_REPLY_LEN);
                assert_eq!(reply[0], 3, "a cookie reply");
                assert_eq!(reply[4..8], datagram[4..8], "to the sender's index");
            }
            Verdict::Drop(_) => {}
        }
    }

    if let Ok(peer) = classify(&f.table, &f.keys, data) {
        assert!(of_table(peer), "classified to a peer of the table");
    }

    // What the TUN device hands over: a virtio-net header, then the packet.
    if let Some(hdr) = VnetHdr::parse(data) {
        let mut packet = data[VNET_HDR_LEN..].to_vec();
        let _ = ip_dst(&packet).map(|dst| f.table.route(dst));
        let mut scratch = vec![0u8; 1500];
        let limit = scratch.len().max(packet.len());
        let _ = segment(&hdr, &mut packet, &mut scratch, |seg| {
            assert!(seg.len() <= limit, "a segment fits its buffer");
            let _ = ip_dst(seg);
        });
    }

    // What boringtun hands back after decrypting: IP packets, coalesced for the TUN device.
    let mut gro = Coalescer::default();
    for chunk in data.chunks(64.max(data.len() / 4 + 1)) {
        gro.push(chunk);
    }
    gro.flush(|buf| {
        assert!(
            buf.len() >= VNET_HDR_LEN,
            "every buffer carries its virtio-net header"
        );
        assert!(VnetHdr::parse(buf).is_some());
        assert!(
            buf.len() <= VNET_HDR_LEN + 65_535,
            "a super-packet fits an IP packet"
        );
    });
});
