//! `fabric-lab serve`: on each port, a TCP listener that writes one line and closes, a UDP
//! socket that echoes every datagram, and an SCTP responder on a raw socket that answers each
//! INIT with an INIT-ACK (ABORT for ports it does not serve). Runs until killed.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};

use anyhow::{ensure, Context, Result};
use socket2::{Domain, Protocol as SockProtocol, Socket, Type};

use super::sctp::{self, Packet};

/// Accepting threads per TCP port (connections are short; a few threads keep up with
/// thousands per second).
const ACCEPTORS: usize = 4;

/// Binds every socket, says so on stdout, then serves forever.
pub fn serve(ports: &[u16]) -> Result<()> {
    ensure!(!ports.is_empty(), "give at least one --port");
    let mut threads = Vec::new();
    for &port in ports {
        let addr = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
        let listener =
            TcpListener::bind(addr).with_context(|| format!("binding TCP port {port}"))?;
        for _ in 0..ACCEPTORS {
            let listener = listener.try_clone()?;
            threads.push(std::thread::spawn(move || tcp(listener)));
        }
        let udp = UdpSocket::bind(addr).with_context(|| format!("binding UDP port {port}"))?;
        threads.push(std::thread::spawn(move || echo(udp)));
    }
    let raw = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(SockProtocol::from(sctp::PROTOCOL)),
    )
    .context("opening a raw SCTP socket (needs root)")?;
    let served = ports.to_vec();
    threads.push(std::thread::spawn(move || sctp_responder(raw, &served)));
    println!("serving ports {ports:?} on tcp, udp, sctp");
    std::io::stdout().flush()?;
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn tcp(listener: TcpListener) {
    let hostname = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "fabric-lab".into());
    let line = format!("{hostname}\n");
    loop {
        if let Ok((mut conn, _)) = listener.accept() {
            let _ = conn.write_all(line.as_bytes());
        }
    }
}

fn echo(socket: UdpSocket) {
    let mut buf = [0u8; 2048];
    loop {
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    }
}

fn sctp_responder(raw: Socket, ports: &[u16]) {
    let mut buf = [0u8; 2048];
    loop {
        let Ok(n) = (&raw).read(&mut buf) else {
            continue;
        };
        let bytes = &buf[..n];
        let Some((src, packet)) = Packet::from_ipv4(bytes) else {
            continue;
        };
        if packet.chunk != sctp::INIT || packet.vtag != 0 {
            continue;
        }
        let reply = if ports.contains(&packet.dst_port) {
            Packet::init_ack(&packet, super::random_u32())
        } else {
            Packet::abort(&packet)
        };
        let to = SocketAddr::V4(SocketAddrV4::new(src, 0));
        let _ = raw.send_to(&reply.encode(), &to.into());
    }
}
