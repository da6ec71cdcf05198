//! Fuzzes the WireGuard receive path's decisions and the offload parsers: whatever arrives
//! on the WireGuard port or the TUN device must be classified or refused, never panic.
//!
//! Run: `cargo fuzz run receive` from `tunnel/` (needs cargo-fuzz).
#![no_main]

use std::net::SocketAddrV4;

use libfuzzer_sys::fuzz_target;
use tunnel::wireguard::dataplane::classify;
use tunnel::wireguard::keys::{Key, KeyPair};
use tunnel::wireguard::offload::{segment, Coalescer, VnetHdr};
use tunnel::wireguard::table::{PeerSpec, Table};

fuzz_target!(|data: &[u8]| {
    let keys = KeyPair::from_private([7; 32]);
    let spec = PeerSpec {
        node: "peer".into(),
        key: Key([9; 32]),
        endpoint: SocketAddrV4::new([172, 30, 0, 12].into(), 51820),
        allowed: "10.244.2.0/24".parse().unwrap(),
    };
    let mut next = 1;
    let (table, _) = Table::default().update(&[spec], &mut next, |_, _| ());
    let _ = classify(&table, &keys, data);

    if let Some(hdr) = VnetHdr::parse(data) {
        let mut packet = data[10..].to_vec();
        let mut scratch = vec![0u8; 65_535];
        let _ = segment(&hdr, &mut packet, &mut scratch, |_| {});
    }
    let mut gro = Coalescer::default();
    for chunk in data.chunks(64.max(data.len() / 4 + 1)) {
        gro.push(chunk);
    }
    gro.flush(|_| {});
});
