//! `fabric-lab serve`: on each `--port`, a TCP listener that writes one line and closes, a UDP
//! socket that echoes every datagram, and an SCTP responder on a raw socket that answers each
//! INIT with an INIT-ACK (ABORT for ports it does not serve); `--tcp` and `--udp` ports get only
//! that protocol (on IPv4 and IPv6). With `--http` every TCP port answers an HTTP request with
//! `200 OK` and the body line instead (the kubelet role's stand-in for a web container: the
//! body is the pod's name). Runs until killed.

use std::io::{Read, Write};
use std::net::{
    Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, UdpSocket,
};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use socket2::{Domain, Protocol as SockProtocol, Socket, Type};

use super::sctp::{self, Packet};

/// Accepting threads per TCP port (connections are short; a few threads keep up with
/// thousands per second).
const ACCEPTORS: usize = 4;

/// How long an HTTP client gets to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What to serve.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServeConfig {
    /// Ports served on TCP, UDP and SCTP (IPv4).
    pub ports: Vec<u16>,
    /// Ports served on TCP only (IPv4 and IPv6).
    pub tcp: Vec<u16>,
    /// Ports served on UDP only (IPv4 and IPv6).
    pub udp: Vec<u16>,
    /// Answer TCP connections as an HTTP server.
    pub http: bool,
    /// The line written (the HTTP body with `http`); the hostname by default.
    pub body: Option<String>,
}

/// Binds every socket, says so on stdout, then serves forever.
pub fn serve(config: &ServeConfig) -> Result<()> {
    ensure!(
        !(config.ports.is_empty() && config.tcp.is_empty() && config.udp.is_empty()),
        "give at least one --port, --tcp or --udp"
    );
    let body = config.body.clone().unwrap_or_else(|| {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "fabric-lab".into())
    });
    let reply = if config.http {
        http_response(&body)
    } else {
        format!("{body}\n")
    };
    let mut threads = Vec::new();
    let mut tcp_listeners = Vec::new();
    let mut udp_sockets = Vec::new();
    for &port in &config.ports {
        let addr = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
        tcp_listeners
            .push(TcpListener::bind(addr).with_context(|| format!("binding TCP port {port}"))?);
        udp_sockets
            .push(UdpSocket::bind(addr).with_context(|| format!("binding UDP port {port}"))?);
    }
    for &port in &config.tcp {
        tcp_listeners.push(dual_stack(Type::STREAM, port)?.into());
    }
    for &port in &config.udp {
        udp_sockets.push(dual_stack(Type::DGRAM, port)?.into());
    }
    for listener in tcp_listeners {
        for _ in 0..ACCEPTORS {
            let listener = listener.try_clone()?;
            let (reply, http) = (reply.clone(), config.http);
            threads.push(std::thread::spawn(move || tcp(listener, &reply, http)));
        }
    }
    for udp in udp_sockets {
        threads.push(std::thread::spawn(move || echo(udp)));
    }
    if !config.ports.is_empty() {
        let raw = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(SockProtocol::from(sctp::PROTOCOL)),
        )
        .context("opening a raw SCTP socket (needs root)")?;
        let served = config.ports.clone();
        threads.push(std::thread::spawn(move || sctp_responder(raw, &served)));
    }
    println!(
        "serving ports {:?} on tcp, udp, sctp; tcp {:?}; udp {:?}{}",
        config.ports,
        config.tcp,
        config.udp,
        if config.http { " (http)" } else { "" }
    );
    std::io::stdout().flush()?;
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// A socket on `[::]:port` that takes IPv4 too, or on `0.0.0.0:port` where IPv6 is off.
fn dual_stack(ty: Type, port: u16) -> Result<Socket> {
    let what = if ty == Type::STREAM { "TCP" } else { "UDP" };
    let v6 = Socket::new(Domain::IPV6, ty, None).and_then(|s| {
        s.set_only_v6(false)?;
        s.set_reuse_address(true)?;
        s.bind(&SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0)).into())?;
        Ok(s)
    });
    let socket = match v6 {
        Ok(s) => s,
        Err(_) => {
            let s = Socket::new(Domain::IPV4, ty, None)?;
            s.set_reuse_address(true)?;
            s.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).into())
                .with_context(|| format!("binding {what} port {port}"))?;
            s
        }
    };
    if ty == Type::STREAM {
        socket
            .listen(1024)
            .with_context(|| format!("listening on TCP port {port}"))?;
    }
    Ok(socket)
}

/// The whole HTTP/1.1 response carrying `body` and a newline.
pub fn http_response(body: &str) -> String {
    let body = format!("{body}\n");
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

fn tcp(listener: TcpListener, reply: &str, http: bool) {
    loop {
        if let Ok((mut conn, _)) = listener.accept() {
            if http {
                read_request_head(&mut conn);
            }
            let _ = conn.write_all(reply.as_bytes());
        }
    }
}

/// Reads until the end of the request head (an empty line), a closed connection or a timeout.
fn read_request_head(conn: &mut std::net::TcpStream) {
    let _ = conn.set_read_timeout(Some(REQUEST_TIMEOUT));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while head.len() < 16 * 1024 {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_answers_with_the_body_line() {
        let r = http_response("web-1");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Length: 6\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\nweb-1\n"), "{r}");
    }

    #[test]
    fn serves_http_on_loopback() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let config = ServeConfig {
            tcp: vec![port],
            udp: vec![port],
            http: true,
            body: Some("pod-a".into()),
            ..ServeConfig::default()
        };
        std::thread::spawn(move || serve(&config));
        let mut last = None;
        for _ in 0..50 {
            match std::net::TcpStream::connect(("127.0.0.1", port)) {
                Ok(mut c) => {
                    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
                    let mut out = String::new();
                    c.read_to_string(&mut out).unwrap();
                    assert!(out.ends_with("\r\n\r\npod-a\n"), "{out}");
                    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
                    udp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    udp.send_to(b"ping", ("127.0.0.1", port)).unwrap();
                    let mut buf = [0u8; 8];
                    let (n, _) = udp.recv_from(&mut buf).unwrap();
                    assert_eq!(&buf[..n], b"ping");
                    return;
                }
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server never came up: {last:?}");
    }
}
