//! `fabric-lab probe`: one bounded connection attempt per target, all of them at once.
//!
//! - TCP: connect, then read the server's line.
//! - UDP: send a random token on a connected socket and wait for its echo (an ICMP port
//!   unreachable comes back as `ECONNREFUSED`).
//! - SCTP: send an INIT from a random port on a raw socket and wait for the INIT-ACK (or an
//!   ABORT) from that address, ports and tag. The association is left half-open; conntrack
//!   forgets it within seconds.

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use policy::Protocol;
use socket2::{Domain, Protocol as SockProtocol, SockRef, Socket, Type};

use super::sctp::{self, Packet};
use super::{Outcome, ProbeResult, Target};

/// Probes running at once.
const PARALLEL: usize = 128;

/// Probes every target (at most [`PARALLEL`] at once), each within `timeout`; results in the
/// targets' order.
pub fn probe_all(targets: &[Target], timeout: Duration) -> Vec<ProbeResult> {
    let mut out = Vec::with_capacity(targets.len());
    for chunk in targets.chunks(PARALLEL) {
        std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|t| s.spawn(move || probe(*t, timeout)))
                .collect();
            for (h, t) in handles.into_iter().zip(chunk) {
                out.push(h.join().unwrap_or_else(|_| ProbeResult {
                    target: *t,
                    outcome: Outcome::Error,
                    ms: 0,
                    detail: Some("the probe panicked".into()),
                }));
            }
        });
    }
    out
}

/// One probe.
pub fn probe(target: Target, timeout: Duration) -> ProbeResult {
    let started = Instant::now();
    let (outcome, detail) = match target.protocol {
        Protocol::Tcp => tcp(target.addr, timeout),
        Protocol::Udp => udp(target.addr, timeout),
        Protocol::Sctp => sctp_init(target.addr, timeout),
    };
    ProbeResult {
        target,
        outcome,
        ms: started.elapsed().as_millis() as u64,
        detail,
    }
}

type Ended = (Outcome, Option<String>);

fn classify(e: &std::io::Error) -> Ended {
    let outcome = match e.kind() {
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset => Outcome::Refused,
        ErrorKind::TimedOut | ErrorKind::WouldBlock => Outcome::Timeout,
        _ => Outcome::Error,
    };
    let detail = (outcome != Outcome::Timeout).then(|| e.to_string());
    (outcome, detail)
}

fn tcp(addr: SocketAddrV4, timeout: Duration) -> Ended {
    let deadline = Instant::now() + timeout;
    let mut conn = match TcpStream::connect_timeout(&addr.into(), timeout) {
        Ok(c) => c,
        Err(e) => return classify(&e),
    };
    // Close with RST: a probe leaves no TIME_WAIT behind.
    let _ = SockRef::from(&conn).set_linger(Some(Duration::ZERO));
    let left = deadline.saturating_duration_since(Instant::now());
    let _ = conn.set_read_timeout(Some(left.max(Duration::from_millis(1))));
    let mut buf = [0u8; 256];
    match conn.read(&mut buf) {
        Ok(n) if n > 0 => (Outcome::Connected, None),
        Ok(_) => (Outcome::Error, Some("closed without a line".into())),
        Err(e) => classify(&e),
    }
}

fn udp(addr: SocketAddrV4, timeout: Duration) -> Ended {
    let deadline = Instant::now() + timeout;
    let run = || -> std::io::Result<Ended> {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.connect(addr)?;
        let token = format!("fabric-probe {:08x}", super::random_u32());
        socket.send(token.as_bytes())?;
        let mut buf = [0u8; 256];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok((Outcome::Timeout, None));
            }
            socket.set_read_timeout(Some(left))?;
            match socket.recv(&mut buf) {
                Ok(n) if buf[..n] == *token.as_bytes() => return Ok((Outcome::Connected, None)),
                Ok(_) => continue,
                Err(e) => return Ok(classify(&e)),
            }
        }
    };
    run().unwrap_or_else(|e| classify(&e))
}

fn sctp_init(addr: SocketAddrV4, timeout: Duration) -> Ended {
    let deadline = Instant::now() + timeout;
    let run = || -> std::io::Result<Ended> {
        let raw = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(SockProtocol::from(sctp::PROTOCOL)),
        )?;
        let tag = super::random_u32();
        let port = 32_768 + (super::random_u32() % 28_000) as u16;
        let init = Packet::init(port, addr.port(), tag);
        let to = SocketAddr::V4(SocketAddrV4::new(*addr.ip(), 0));
        raw.send_to(&init.encode(), &to.into())?;
        let mut buf = [0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok((Outcome::Timeout, None));
            }
            raw.set_read_timeout(Some(left))?;
            let n = match (&raw).read(&mut buf) {
                Ok(n) => n,
                Err(e) => return Ok(classify(&e)),
            };
            let bytes = &buf[..n];
            let Some((src, reply)) = Packet::from_ipv4(bytes) else {
                continue;
            };
            let ours = src == *addr.ip()
                && reply.src_port == addr.port()
                && reply.dst_port == port
                && reply.vtag == tag;
            match reply.chunk {
                sctp::INIT_ACK if ours => return Ok((Outcome::Connected, None)),
                sctp::ABORT if ours => {
                    return Ok((Outcome::Refused, Some("SCTP ABORT".into())));
                }
                _ => continue,
            }
        }
    };
    run().unwrap_or_else(|e| classify(&e))
}
