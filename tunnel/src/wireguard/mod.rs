//! The wireguard backend: a TUN device (`fabric.wg` by default) served by the daemon with
//! boringtun's protocol core per peer, one UDP port (51820 by default), a route per remote
//! subnet via the TUN device, MTU = underlay MTU - 80. Peers follow the leases: added,
//! re-keyed, re-addressed (the endpoint roams), removed. One handshake rate limiter per
//! device, shared by every peer's `Tunn` ([`dataplane::admit`]). A deleted device is
//! re-created by the next reconcile, the peers' sessions kept; until then
//! [`Backend::health`] names it.

pub mod dataplane;
pub mod keys;
pub mod offload;
pub mod replies;
pub mod table;
pub mod tun;
pub mod uapi;
pub mod udp;

use std::net::{SocketAddrV4, UdpSocket};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::Tunn;
use boringtun::x25519::PublicKey;
use ipam::{BackendConfig, BackendKind, Lease, Leases};
use ipnet::Ipv4Net;

use self::dataplane::{Drops, Plane, TunSlot, Workers, HANDSHAKE_RATE_LIMIT};
use self::keys::KeyPair;
use self::table::{desired, Table, WireguardData};
use crate::netlink::{Netlink, Route};
use crate::plan::diff;
use crate::underlay::Underlay;
use crate::{Backend, Report, TunnelEnds, TunnelError};

/// WireGuard's encapsulation overhead over IPv4: IP 20 + UDP 8 + WireGuard 32, rounded up
/// like `wg-quick` (and Flannel) do, so IPv6 underlays fit too.
pub const OVERHEAD: u32 = 80;

/// Socket buffer size for the WireGuard socket: enough to ride out bursts at 10 Gbit/s.
const SOCKET_BUFFER: libc::c_int = 16 << 20;

/// The wireguard backend.
pub struct WireGuard {
    iface: String,
    mtu: u32,
    listen_port: u16,
    psk: Option<[u8; 32]>,
    keepalive: u16,
    netlink: Netlink,
    plane: Arc<Plane>,
    next_index: Mutex<u32>,
}

fn state_err(path: &Path) -> impl FnOnce(std::io::Error) -> TunnelError + '_ {
    move |source| TunnelError::State {
        path: path.display().to_string(),
        source,
    }
}

/// Binds the WireGuard port, waiting a moment if a predecessor that was just killed still
/// holds it.
fn bind_udp(port: u16) -> std::io::Result<UdpSocket> {
    let mut attempts = 0;
    loop {
        match UdpSocket::bind(("0.0.0.0", port)) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempts < 50 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

impl WireGuard {
    /// Creates the device, the socket and the data plane. The key pair lives in
    /// `state_dir/wireguard.key`.
    pub fn new(
        config: &BackendConfig,
        underlay: Underlay,
        netlink: Netlink,
        state_dir: &Path,
        iface: &str,
    ) -> Result<Self, TunnelError> {
        let key_path = state_dir.join("wireguard.key");
        let keys = KeyPair::load_or_generate(&key_path).map_err(state_err(&key_path))?;
        let tun = tun::open(iface)
            .map_err(|e| TunnelError::Underlay(format!("creating TUN device {iface}: {e}")))?;
        let udp = bind_udp(config.listen_port).map_err(|e| {
            TunnelError::Underlay(format!("binding UDP port {}: {e}", config.listen_port))
        })?;
        let gro = udp::tune(&udp, SOCKET_BUFFER);
        tracing::debug!(gro, "WireGuard socket tuned");
        let limiter = Arc::new(RateLimiter::new(
            &PublicKey::from(keys.public.0),
            HANDSHAKE_RATE_LIMIT,
        ));
        let plane = Arc::new(Plane {
            tun: TunSlot::new(tun),
            udp,
            table: Arc::new(RwLock::new(Arc::new(Table::default()))),
            keys,
            limiter,
            drops: Drops::default(),
            threads: Workers::default(),
        });
        plane
            .start()
            .map_err(|e| TunnelError::Underlay(format!("starting the data plane: {e}")))?;
        uapi::serve(iface, plane.clone(), config.listen_port)
            .map_err(state_err(&uapi::socket_path(iface)))?;
        tracing::info!(device = iface, port = config.listen_port, public_key = %plane.keys.public, "wireguard device up");
        Ok(Self {
            iface: iface.to_owned(),
            mtu: config.mtu.unwrap_or(underlay.mtu - OVERHEAD),
            listen_port: config.listen_port,
            psk: config.psk,
            keepalive: config.keepalive,
            netlink,
            plane,
            next_index: Mutex::new(1),
        })
    }

    /// Opens a new TUN device when someone deleted ours (`ip link del`): the kernel detached
    /// our queue for good, and took the device's address and routes with it. The threads
    /// move to the new queue ([`TunSlot::replace`]); the reconcile that called this puts the
    /// MTU, address and routes back. The peers' sessions live in their `Tunn`s and are kept.
    /// True when it re-created the device.
    fn recreate_if_deleted(&self) -> Result<bool, TunnelError> {
        if self.plane.tun.attached() {
            return Ok(false);
        }
        let tun = tun::open(&self.iface).map_err(|e| {
            TunnelError::Underlay(format!(
                "the TUN device {} was deleted and cannot be re-created: {e}",
                self.iface
            ))
        })?;
        self.plane.tun.replace(tun);
        tracing::warn!(
            device = %self.iface,
            "the WireGuard device was deleted; re-created it (peers' sessions kept)"
        );
        Ok(true)
    }

    /// What the data plane dropped so far.
    pub fn drops(&self) -> &Drops {
        &self.plane.drops
    }
}

#[async_trait]
impl Backend for WireGuard {
    fn kind(&self) -> BackendKind {
        BackendKind::Wireguard
    }

    fn mtu(&self) -> u32 {
        self.mtu
    }

    fn lease_data(&self) -> serde_json::Value {
        serde_json::to_value(WireguardData {
            public_key: self.plane.keys.public.to_base64(),
            port: self.listen_port,
        })
        .expect("json")
    }

    fn shutdown(&self) {
        let _ = std::fs::remove_file(uapi::socket_path(&self.iface));
    }

    fn health(&self) -> Result<(), String> {
        let mut failures = Vec::new();
        if !self.plane.tun.attached() {
            failures.push(format!(
                "the WireGuard device {} is gone (deleted); the next reconcile re-creates it",
                self.iface
            ));
        }
        let stopped = self.plane.stopped();
        if !stopped.is_empty() {
            failures.push(format!(
                "the WireGuard data path's threads stopped: {}",
                stopped.join(", ")
            ));
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        }
    }

    fn tunnel_ends(&self, local: &Lease, leases: &Leases) -> Option<TunnelEnds> {
        Some(TunnelEnds {
            local: SocketAddrV4::new(local.public_ip, self.listen_port),
            peers: desired(local, leases).iter().map(|p| p.endpoint).collect(),
        })
    }

    fn dataplane(&self) -> serde_json::Value {
        let table = dataplane::snapshot(&self.plane.table);
        let mut peers: Vec<serde_json::Value> = table
            .peers()
            .map(|p| {
                let (since, tx, rx, _, _) =
                    p.state.lock().unwrap_or_else(|e| e.into_inner()).stats();
                serde_json::json!({
                    "node": p.node,
                    "public_key": p.key.to_base64(),
                    "endpoint": p.endpoint().to_string(),
                    "allowed_ips": p.allowed.to_string(),
                    "latest_handshake_secs_ago": since.map(|d| d.as_secs()),
                    "rx_bytes": rx,
                    "tx_bytes": tx,
                })
            })
            .collect();
        peers.sort_by(|a, b| a["node"].as_str().cmp(&b["node"].as_str()));
        let drops: serde_json::Map<String, serde_json::Value> = self
            .plane
            .drops
            .snapshot()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into()))
            .collect();
        serde_json::json!({
            "backend": "wireguard",
            "device": self.iface,
            "public_key": self.plane.keys.public.to_base64(),
            "listen_port": self.listen_port,
            "peers": peers,
            "dropped": drops,
        })
    }

    async fn reconcile(&self, local: &Lease, leases: &Leases) -> Result<Report, TunnelError> {
        let recreated = self.recreate_if_deleted()?;
        let link = self.netlink.link(&self.iface).await?.ok_or_else(|| {
            TunnelError::Underlay(format!(
                "the TUN device {} has another name now (renamed?); fabricd serves it only \
                 under its own",
                self.iface
            ))
        })?;
        self.netlink
            .set_link(&link, Some(self.mtu), None, true)
            .await?;
        let address = Ipv4Net::new(local.subnet.network(), 32).expect("/32");
        self.netlink
            .ensure_address(link.index, address.into())
            .await?;

        let specs = desired(local, leases);
        let changes = {
            let mut next = self.next_index.lock().unwrap_or_else(|e| e.into_inner());
            let mut shared = self.plane.table.write().unwrap_or_else(|e| e.into_inner());
            let secret = self.plane.keys.secret().clone();
            let (table, changes) = shared.update(&specs, &mut next, |spec, index| {
                let keepalive = (self.keepalive > 0).then_some(self.keepalive);
                Tunn::new(
                    secret.clone(),
                    PublicKey::from(spec.key.0),
                    self.psk,
                    keepalive,
                    index,
                    Some(self.plane.limiter.clone()),
                )
            });
            *shared = Arc::new(table);
            changes
        };
        let table = dataplane::snapshot(&self.plane.table);
        for peer in table.peers().filter(|p| changes.added.contains(&p.node)) {
            self.plane.initiate(peer);
        }
        if !changes.is_empty() {
            tracing::info!(added = ?changes.added, moved = ?changes.moved, removed = ?changes.removed, "wireguard peers");
        }
        let routes = specs
            .iter()
            .flat_map(|p| p.allowed.nets())
            .map(|dst| Route {
                dst,
                via: None,
                oif: link.index,
                onlink: false,
            });
        let actual = self.netlink.owned_routes().await?;
        let plan = diff(routes, actual.into_iter().filter(|r| r.oif == link.index));
        for r in &plan.remove {
            self.netlink.delete_route(r).await?;
        }
        for r in &plan.add {
            self.netlink.replace_route(r).await?;
        }
        Ok(Report {
            added: usize::from(recreated)
                + plan.add.len()
                + changes.added.len()
                + changes.moved.len(),
            removed: plan.remove.len() + changes.removed.len(),
            refused: Vec::new(),
        })
    }
}
