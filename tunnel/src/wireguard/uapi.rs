//! The cross-platform WireGuard userspace API (`/var/run/wireguard/<iface>.sock`), `get`
//! only, so `wg show` works against the daemon. `set` is refused: fabric owns the peers.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::dataplane::Plane;

/// Where `wg` looks for userspace interfaces.
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// The socket path for `iface`.
pub fn socket_path(iface: &str) -> PathBuf {
    PathBuf::from(SOCKET_DIR).join(format!("{iface}.sock"))
}

/// Serves the API for `iface` on a background thread.
pub fn serve(iface: &str, plane: Arc<Plane>, listen_port: u16) -> std::io::Result<()> {
    std::fs::create_dir_all(SOCKET_DIR)?;
    std::fs::set_permissions(SOCKET_DIR, std::fs::Permissions::from_mode(0o755))?;
    let path = socket_path(iface);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let me = plane.clone();
    plane.threads.spawn("wg-uapi", move || {
        for conn in listener.incoming().flatten() {
            if let Err(e) = answer(conn, &me, listen_port) {
                tracing::debug!(error = %e, "UAPI connection failed");
            }
        }
    })
}

fn answer(conn: UnixStream, plane: &Plane, listen_port: u16) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(&conn);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut out = &conn;
    match line.trim_end() {
        "get=1" => out.write_all(get(plane, listen_port).as_bytes()),
        _ => out.write_all(b"errno=1\n\n"),
    }
}

fn get(plane: &Plane, listen_port: u16) -> String {
    let mut s = format!(
        "private_key={}\nlisten_port={listen_port}\n",
        plane.keys.private_hex()
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let table = plane
        .table
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut peers: Vec<_> = table.peers().collect();
    peers.sort_by_key(|p| p.node.clone());
    for peer in peers {
        let (since, tx, rx, _, _) = peer.state.lock().unwrap_or_else(|e| e.into_inner()).stats();
        let handshake = since.map_or(Duration::ZERO, |d| now.saturating_sub(d));
        let allowed: String = peer
            .allowed
            .nets()
            .map(|net| format!("allowed_ip={net}\n"))
            .collect();
        s.push_str(&format!(
            "public_key={}\nendpoint={}\n{allowed}tx_bytes={tx}\nrx_bytes={rx}\n\
             last_handshake_time_sec={}\nlast_handshake_time_nsec={}\n\
             persistent_keepalive_interval=0\nprotocol_version=1\n",
            peer.key.to_hex(),
            peer.endpoint(),
            handshake.as_secs(),
            handshake.subsec_nanos(),
        ));
    }
    s.push_str("errno=0\n\n");
    s
}
