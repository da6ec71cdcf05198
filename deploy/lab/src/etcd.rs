//! The lab's datastore: the real etcd, single member, in the `LAB-etcd` namespace, and its
//! health check (an HTTP GET of `/health` made from a thread inside that namespace).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns;
use crate::process::{self, Cmd, Daemon};
use crate::state::Layout;
use crate::topology::{ETCD_CLIENT_PORT, ETCD_IP};

/// How long etcd gets to become healthy.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The etcd binary (Debian's `etcd-server`).
pub fn binary() -> PathBuf {
    process::which("etcd").unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
}

/// etcd's command line for lab `lab` (member name = lab name).
pub fn args(lab: &str, layout: &Layout) -> Vec<String> {
    let client = format!("http://{ETCD_IP}:{ETCD_CLIENT_PORT}");
    let peer = "http://127.0.0.1:2380";
    vec![
        "--name".into(),
        lab.into(),
        "--data-dir".into(),
        layout.etcd_data().display().to_string(),
        "--listen-client-urls".into(),
        format!("{client},http://127.0.0.1:{ETCD_CLIENT_PORT}"),
        "--advertise-client-urls".into(),
        client,
        "--listen-peer-urls".into(),
        peer.into(),
        "--initial-advertise-peer-urls".into(),
        peer.into(),
        "--initial-cluster".into(),
        format!("{lab}={peer}"),
    ]
}

/// Starts etcd inside `netns` (in its own session, logging to `logs/etcd.log`).
pub fn start(lab: &str, netns: &str, layout: &Layout) -> Result<Daemon> {
    Cmd::in_netns(netns, binary())
        .args(args(lab, layout))
        .spawn_daemon(&layout.log("etcd"))
        .context("starting etcd")
}

/// Waits until etcd in `netns` reports itself healthy; fails early if it exits.
pub fn wait_healthy(netns: &str, daemon: &Daemon, layout: &Layout) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if !daemon.is_running() {
            bail!(
                "etcd (pid {}) exited during startup; last lines of {}:\n{}",
                daemon.pid,
                layout.log("etcd").display(),
                process::tail(&layout.log("etcd"), 20)
            );
        }
        let last = match netns::in_netns(netns, health_check)? {
            Ok(()) => return Ok(()),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!(
                "etcd not healthy after {}s ({last}); last lines of {}:\n{}",
                READY_TIMEOUT.as_secs(),
                layout.log("etcd").display(),
                process::tail(&layout.log("etcd"), 20)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One `GET /health` to `127.0.0.1:2379` in the calling thread's namespace.
pub fn health_check() -> Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, ETCD_CLIENT_PORT));
    let timeout = Duration::from_secs(1);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).context("connecting")?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).context("reading")?;
    check_health_answer(&answer)
}

/// Judges an HTTP answer to `GET /health`: status 200 and `"health":"true"`.
pub fn check_health_answer(answer: &str) -> Result<()> {
    let status_line = answer.lines().next().unwrap_or_default();
    let ok_status = status_line.split_whitespace().nth(1) == Some("200");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let healthy = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .is_some_and(|v| v["health"] == "true");
    if ok_status && healthy {
        Ok(())
    } else {
        bail!("unhealthy: {} {}", status_line.trim(), body.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_answers() {
        check_health_answer(
            "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"health\":\"true\",\"reason\":\"\"}",
        )
        .unwrap();
        assert!(check_health_answer(
            "HTTP/1.0 503 Service Unavailable\r\n\r\n{\"health\":\"false\",\"reason\":\"RAFT NO LEADER\"}"
        )
        .is_err());
        assert!(check_health_answer("").is_err());
    }

    #[test]
    fn command_line() {
        let args = args("t", &Layout::at("/run/fabric-lab/t"));
        let joined = args.join(" ");
        assert!(joined.starts_with("--name t --data-dir /run/fabric-lab/t/etcd"));
        assert!(
            joined.contains("--listen-client-urls http://172.30.0.2:2379,http://127.0.0.1:2379")
        );
        assert!(joined.ends_with("--initial-cluster t=http://127.0.0.1:2380"));
    }
}
