//! The accept loop the daemon's local endpoints share (the API socket, the health port): a
//! cap on the connections served at once, a deadline on reading each request, and a backoff
//! on accept errors (out of file descriptors, say, which would otherwise spin a core). A
//! client that connects and sends nothing holds a slot for the read deadline at most, so no
//! number of idle connections wedges an endpoint for longer than that.

use std::future::Future;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Semaphore;

/// How much an endpoint serves at once, and how long a client has to send its request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more wait in the kernel's backlog.
    pub connections: usize,
    /// How long a client has to send its request before it is cut off.
    pub read_timeout: Duration,
}

/// A listening socket.
pub trait Listener: Send + Sync + 'static {
    /// What it accepts.
    type Conn: Send + 'static;
    /// The next connection.
    fn accept(&self) -> impl Future<Output = io::Result<Self::Conn>> + Send;
}

impl Listener for UnixListener {
    type Conn = UnixStream;
    async fn accept(&self) -> io::Result<UnixStream> {
        UnixListener::accept(self).await.map(|(c, _)| c)
    }
}

impl Listener for TcpListener {
    type Conn = TcpStream;
    async fn accept(&self) -> io::Result<TcpStream> {
        TcpListener::accept(self).await.map(|(c, _)| c)
    }
}

/// The shortest and longest waits after a failed accept.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// Serves `listener` on a task of its own until the process ends: each connection goes to
/// `handle` on a task of its own, at most `limits.connections` at once.
pub fn spawn<L, F, Fut>(listener: L, limits: Limits, endpoint: &'static str, handle: F)
where
    L: Listener,
    F: Fn(L::Conn) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.connections));
    tokio::spawn(async move {
        let mut backoff = BACKOFF.0;
        loop {
            let slot = slots.clone().acquire_owned().await.expect("never closed");
            match listener.accept().await {
                Ok(conn) => {
                    backoff = BACKOFF.0;
                    let served = handle(conn);
                    tokio::spawn(async move {
                        served.await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    tracing::warn!(endpoint, error = %e, retry_in = ?backoff, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF.1);
                }
            }
        }
    });
}

/// `read`, or a `TimedOut` error once `limit` has passed.
pub async fn within<T>(
    limit: Duration,
    read: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::time::timeout(limit, read).await.unwrap_or_else(|_| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "request not sent in time",
        ))
    })
}

/// Binds a unix socket at `path` that only its owner (root) may use: created 0600 under a
/// umask, so there is no moment it is open to others, as a chmod after bind would leave.
pub fn bind_private(path: &Path) -> io::Result<UnixListener> {
    use nix::sys::stat::{umask, Mode};
    // The daemon binds its sockets at start, before anything else creates files.
    let previous = umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    umask(previous);
    bound
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// An echo-one-line server with `limits`, on a loopback port.
    async fn echo(limits: Limits) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        spawn(
            listener,
            limits,
            "test",
            move |mut conn: TcpStream| async move {
                let mut buf = [0u8; 64];
                if let Ok(n) = within(limits.read_timeout, conn.read(&mut buf)).await {
                    let _ = conn.write_all(&buf[..n]).await;
                }
            },
        );
        addr
    }

    #[tokio::test]
    async fn idle_clients_beyond_the_cap_do_not_wedge_the_endpoint() {
        let limits = Limits {
            connections: 4,
            read_timeout: Duration::from_millis(300),
        };
        let addr = echo(limits).await;
        // Twenty clients connect and say nothing.
        let mut idle = Vec::new();
        for _ in 0..20 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(b"hello").await.unwrap();
        let mut reply = [0u8; 5];
        // The idle ones are cut after the read deadline, five rounds of four at most.
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut reply))
            .await
            .expect("answered once the idle clients timed out")
            .unwrap();
        assert_eq!(&reply, b"hello");
        // An idle client was cut off, not served forever.
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(2), idle[0].read(&mut buf))
            .await
            .expect("cut off")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }

    #[tokio::test]
    async fn private_sockets_are_created_owner_only() {
        use nix::sys::stat::{umask, Mode};
        let current = || {
            let mask = umask(Mode::empty());
            umask(mask);
            mask
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let before = current();
        let _listener = bind_private(&path).unwrap();
        assert_eq!(current(), before, "the process umask is restored");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
    }
}
