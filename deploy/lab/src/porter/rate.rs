//! `fabric-lab connect-rate`: new TCP connections per second against a `serve` listener, for
//! a bounded time. Each connection is connect, read the server's line, close with RST (no
//! TIME_WAIT, so the client's ports never run out).

use std::io::Read;
use std::net::{SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use socket2::SockRef;

/// What a run counted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rate {
    /// Connections made (the server's line read).
    pub connections: u64,
    /// Attempts that failed.
    pub failures: u64,
    /// How long the run took.
    pub seconds: f64,
    /// `connections / seconds`.
    pub per_second: f64,
}

/// Connects to `to` from `concurrency` threads for `duration`.
pub fn run(to: SocketAddrV4, duration: Duration, concurrency: usize) -> Rate {
    let connections = AtomicU64::new(0);
    let failures = AtomicU64::new(0);
    let started = Instant::now();
    let deadline = started + duration;
    std::thread::scope(|s| {
        for _ in 0..concurrency.max(1) {
            s.spawn(|| {
                while Instant::now() < deadline {
                    let counter = if once(to) { &connections } else { &failures };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    let connections = connections.into_inner();
    Rate {
        connections,
        failures: failures.into_inner(),
        seconds,
        per_second: connections as f64 / seconds,
    }
}

fn once(to: SocketAddrV4) -> bool {
    let Ok(mut conn) = TcpStream::connect_timeout(&to.into(), Duration::from_secs(1)) else {
        return false;
    };
    let _ = SockRef::from(&conn).set_linger(Some(Duration::ZERO));
    let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 256];
    matches!(conn.read(&mut buf), Ok(n) if n > 0)
}
