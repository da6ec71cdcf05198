//! Fuzzes the WireGuard receive path's decisions and the offload parsers: whatever arrives on
//! the WireGuard port goes through `dataplane::classify` as the receive thread calls it (it
//! picks the peer a datagram belongs to before boringtun decrypts anything: by receiver index,
//! or for an initiation by the static key its key exchange reveals); whatever comes from the
//! TUN device goes through the virtio-net header, GSO segmentation and `ip_dst` routing;
//! decrypted packets go through GRO coalescing. Classified or refused, never a panic.
//!
//! Beyond "no panic": a datagram classified to a peer is one of the table's; a segment or a
//! coalesced super-packet never outgrows its buffer.
//!
//! Run: `scripts/fuzz.sh --smoke` / `--long` (all targets), or one:
//! `scripts/fuzz.sh receive -- -max_total_time=60`.
#![no_main]

use std::net::SocketAddrV4;
use std::sync::{Arc, OnceLock};

use fabric_fuzz as _;
use libfuzzer_sys::fuzz_target;
use tunnel::wireguard::dataplane::{classify, ip_dst};
use tunnel::wireguard::keys::{Key, KeyPair};
use tunnel::wireguard::offload::{segment, Coalescer, VnetHdr, VNET_HDR_LEN};
use tunnel::wireguard::table::{Allowed, PeerSpec, Table};

/// Our keys and two peers: the indices the table hands out are what data messages name.
fn fixture() -> &'static (Table<()>, KeyPair) {
    static FIXTURE: OnceLock<(Table<()>, KeyPair)> = OnceLock::new();
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
        (table, KeyPair::from_private([7; 32]))
    })
}

fuzz_target!(|data: &[u8]| {
    let (table, keys) = fixture();
    if let Ok(peer) = classify(table, keys, data) {
        assert!(
            table.peers().any(|p| Arc::ptr_eq(p, peer)),
            "classified to a peer of the table"
        );
    }

    // What the TUN device hands over: a virtio-net header, then the packet.
    if let Some(hdr) = VnetHdr::parse(data) {
        let mut packet = data[VNET_HDR_LEN..].to_vec();
        let _ = ip_dst(&packet).map(|dst| table.route(dst));
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
