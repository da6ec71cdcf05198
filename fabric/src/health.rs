//! `/healthz` (the daemon runs) and `/readyz` (subnet leased and routes programmed) over a
//! minimal HTTP/1.1 responder.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::listen;

/// Probes served at once, and how long a prober has to send its request.
const LIMITS: listen::Limits = listen::Limits {
    connections: 64,
    read_timeout: std::time::Duration::from_secs(5),
};

/// Serves the health endpoints on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, ready: Arc<AtomicBool>) -> std::io::Result<()> {
    // A predecessor that was just killed may still hold the port for a moment.
    let mut attempts = 0;
    let listener = loop {
        match TcpListener::bind(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempts < 50 => {
                attempts += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => break other?,
        }
    };
    tracing::info!(%addr, "health endpoints listening");
    listen::spawn(listener, LIMITS, "health", move |mut conn: TcpStream| {
        let ready = ready.clone();
        async move {
            let mut buf = [0u8; 1024];
            let n = listen::within(LIMITS.read_timeout, conn.read(&mut buf))
                .await
                .unwrap_or(0);
            let (status, body) = respond(&buf[..n], ready.load(Ordering::Relaxed));
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(reply.as_bytes()).await;
        }
    });
    Ok(())
}

fn respond(request: &[u8], ready: bool) -> (&'static str, &'static str) {
    let line = request.split(|b| *b == b'\r').next().unwrap_or_default();
    let path = line.split(|b| *b == b' ').nth(1).unwrap_or_default();
    match path {
        b"/healthz" => ("200 OK", "ok\n"),
        b"/readyz" if ready => ("200 OK", "ready\n"),
        b"/readyz" => (
            "503 Service Unavailable",
            "not ready: no subnet lease or routes yet\n",
        ),
        _ => ("404 Not Found", "try /healthz or /readyz\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_follows_readiness() {
        assert_eq!(
            respond(b"GET /readyz HTTP/1.1\r\n", false).0,
            "503 Service Unavailable"
        );
        assert_eq!(respond(b"GET /readyz HTTP/1.1\r\n", true).0, "200 OK");
        assert_eq!(respond(b"GET /healthz HTTP/1.1\r\n", false).0, "200 OK");
        assert_eq!(respond(b"garbage", true).0, "404 Not Found");
    }
}
