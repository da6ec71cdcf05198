//! `/healthz` (every part of the daemon is alive) and `/readyz` (subnet leased and routes
//! programmed) over a minimal HTTP/1.1 responder, and the [`Liveness`] registry `/healthz`
//! answers from: long-running tasks hold an [`Alive`] guard (dropped when they end or panic),
//! loops that must come round hold a [`Beat`], the datastore's followers beat the
//! [`ipam::backoff::Pulse`] their store hands out, and the data path reports its threads. A
//! loop that retries against an unreachable datastore still comes round (an outage is not a
//! hang: every fabricd failing `/healthz` in one would have kubelet restart them all); one that
//! stops coming round is named.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::listen;

/// Probes served at once, and how long a prober has to send its request.
const LIMITS: listen::Limits = listen::Limits {
    connections: 64,
    read_timeout: std::time::Duration::from_secs(5),
};

/// How long a datastore follower's loop may go without coming round before `/healthz` calls
/// it stuck: its waits and retries are bounded well below this (10 s waits, backoff capped at
/// 10 s, requests timing out after 10 s).
pub const FOLLOWER_STUCK: Duration = Duration::from_secs(60);

/// What `/healthz` checks: the daemon's long-running parts.
#[derive(Default)]
pub struct Liveness {
    parts: Mutex<Vec<Part>>,
    data_path: OnceLock<Arc<dyn tunnel::Backend>>,
}

enum Part {
    /// A task or thread: alive while its guard lives.
    Task(&'static str, Arc<AtomicBool>),
    /// A loop that must come round at least every `.2`.
    Beat(&'static str, Arc<Mutex<Instant>>, Duration),
    /// A datastore follower's loop that must beat at least every `.2` while it runs.
    Pulse(&'static str, ipam::backoff::Pulse, Duration),
}

/// Held by a task or thread for as long as it runs; dropping it (the task ended, or
/// panicked) marks the part dead.
pub struct Alive(Arc<AtomicBool>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// A loop's heartbeat: [`Beat::tick`] each time round.
#[derive(Clone)]
pub struct Beat(Arc<Mutex<Instant>>);

impl Beat {
    /// The loop came round.
    pub fn tick(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }
}

impl Liveness {
    /// Registers a task or thread named `name`, alive while the guard lives.
    pub fn task(&self, name: &'static str) -> Alive {
        let alive = Arc::new(AtomicBool::new(true));
        self.parts().push(Part::Task(name, alive.clone()));
        Alive(alive)
    }

    /// Registers a loop named `name` that must tick at least every `max`.
    pub fn beat(&self, name: &'static str, max: Duration) -> Beat {
        let last = Arc::new(Mutex::new(Instant::now()));
        self.parts().push(Part::Beat(name, last.clone(), max));
        Beat(last)
    }

    /// Registers a datastore follower named `name` whose loop beats `pulse` (see
    /// [`ipam::backoff::Pulse`]); it is stuck when a running loop has not beaten for `max`.
    pub fn pulse(&self, name: &'static str, pulse: ipam::backoff::Pulse, max: Duration) {
        self.parts().push(Part::Pulse(name, pulse, max));
    }

    /// Adds the data path's own report (its threads) once it is built.
    pub fn data_path(&self, backend: Arc<dyn tunnel::Backend>) {
        let _ = self.data_path.set(backend);
    }

    /// What is dead or stuck, if anything.
    pub fn failures(&self) -> Vec<String> {
        let mut failed: Vec<String> = self
            .parts()
            .iter()
            .filter_map(|part| match part {
                Part::Task(name, alive) => {
                    (!alive.load(Ordering::Relaxed)).then(|| format!("{name} has stopped"))
                }
                Part::Beat(name, last, max) => {
                    let since = last.lock().unwrap_or_else(|e| e.into_inner()).elapsed();
                    (since > *max).then(|| stuck(name, since))
                }
                Part::Pulse(name, pulse, max) => pulse
                    .silent_for()
                    .filter(|since| since > max)
                    .map(|since| stuck(name, since)),
            })
            .collect();
        if let Some(Err(e)) = self.data_path.get().map(|b| b.health()) {
            failed.push(e);
        }
        failed
    }

    fn parts(&self) -> std::sync::MutexGuard<'_, Vec<Part>> {
        self.parts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn stuck(name: &str, since: Duration) -> String {
    format!("{name} is stuck ({}s since its last pass)", since.as_secs())
}

/// Serves the health endpoints on `addr` until the process ends.
pub async fn serve(
    addr: SocketAddr,
    ready: Arc<AtomicBool>,
    liveness: Arc<Liveness>,
) -> std::io::Result<()> {
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
        let (ready, liveness) = (ready.clone(), liveness.clone());
        async move {
            let mut buf = [0u8; 1024];
            let n = listen::within(LIMITS.read_timeout, conn.read(&mut buf))
                .await
                .unwrap_or(0);
            let (status, body) = respond(
                &buf[..n],
                ready.load(Ordering::Relaxed),
                &liveness.failures(),
            );
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(reply.as_bytes()).await;
        }
    });
    Ok(())
}

fn respond(request: &[u8], ready: bool, failures: &[String]) -> (&'static str, String) {
    let line = request.split(|b| *b == b'\r').next().unwrap_or_default();
    let path = line.split(|b| *b == b' ').nth(1).unwrap_or_default();
    match path {
        b"/healthz" if failures.is_empty() => ("200 OK", "ok\n".into()),
        b"/healthz" => (
            "500 Internal Server Error",
            format!("unhealthy: {}\n", failures.join("; ")),
        ),
        b"/readyz" if ready => ("200 OK", "ready\n".into()),
        b"/readyz" => (
            "503 Service Unavailable",
            "not ready: no subnet lease (or it was lost) or routes not programmed yet\n".into(),
        ),
        _ => ("404 Not Found", "try /healthz or /readyz\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_follows_readiness() {
        let ok: &[String] = &[];
        assert_eq!(
            respond(b"GET /readyz HTTP/1.1\r\n", false, ok).0,
            "503 Service Unavailable"
        );
        assert_eq!(respond(b"GET /readyz HTTP/1.1\r\n", true, ok).0, "200 OK");
        assert_eq!(respond(b"GET /healthz HTTP/1.1\r\n", false, ok).0, "200 OK");
        assert_eq!(respond(b"garbage", true, ok).0, "404 Not Found");
    }

    #[test]
    fn healthz_fails_when_a_part_stops_or_sticks() {
        let liveness = Liveness::default();
        let follower = liveness.task("policy follower");
        let beat = liveness.beat("agent loop", Duration::from_millis(50));
        assert!(liveness.failures().is_empty());
        drop(follower);
        std::thread::sleep(Duration::from_millis(80));
        let failures = liveness.failures();
        assert_eq!(failures.len(), 2, "{failures:?}");
        assert!(failures[0].contains("policy follower has stopped"));
        assert!(failures[1].contains("agent loop is stuck"));
        beat.tick();
        assert_eq!(liveness.failures().len(), 1);
        let (status, body) = respond(b"GET /healthz HTTP/1.1\r\n", true, &liveness.failures());
        assert_eq!(status, "500 Internal Server Error");
        assert!(body.contains("policy follower has stopped"), "{body}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_datastore_follower_is_named_but_not_one_that_retries() {
        let liveness = Liveness::default();
        let pulse = ipam::backoff::Pulse::default();
        liveness.pulse("the lease watch", pulse.clone(), Duration::from_secs(60));
        tokio::time::advance(Duration::from_secs(120)).await;
        assert!(liveness.failures().is_empty(), "no loop runs yet");
        let running = pulse.start();
        // Retrying every 10 s against an unreachable datastore: healthy.
        for _ in 0..12 {
            tokio::time::advance(Duration::from_secs(10)).await;
            pulse.beat();
            assert!(liveness.failures().is_empty());
        }
        // The loop stops coming round.
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(
            liveness.failures(),
            ["the lease watch is stuck (61s since its last pass)"]
        );
        drop(running);
        assert!(
            liveness.failures().is_empty(),
            "ended: its consumer follows again"
        );
    }

    #[tokio::test]
    async fn a_panicking_task_is_reported_dead() {
        let liveness = Arc::new(Liveness::default());
        let alive = liveness.task("worker");
        let task = tokio::spawn(async move {
            let _alive = alive;
            panic!("boom");
        });
        assert!(task.await.is_err());
        assert_eq!(liveness.failures(), ["worker has stopped"]);
    }
}
