//! Batched UDP for the WireGuard socket: many equal-sized datagrams in one `sendmsg` (UDP GSO,
//! `UDP_SEGMENT`), many received datagrams in one `recvmsg` (UDP GRO), and socket buffers
//! sized past the sysctl caps.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;

/// The most datagrams one GSO send may carry.
pub const MAX_SEGMENTS: usize = 64;
/// The most bytes one GSO send may carry.
pub const MAX_GSO_BYTES: usize = 65_000;

fn setsockopt(
    socket: &UdpSocket,
    level: libc::c_int,
    opt: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: an int option on a socket we own.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            opt,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sizes the buffers (forcing past `rmem_max`/`wmem_max` as root: sysctls cannot be written
/// from a node's namespace) and turns on GRO. Returns whether GRO is on.
pub fn tune(socket: &UdpSocket, buffer: libc::c_int) -> bool {
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if setsockopt(socket, libc::SOL_SOCKET, force, buffer).is_err() {
            let _ = setsockopt(socket, libc::SOL_SOCKET, plain, buffer);
        }
    }
    setsockopt(socket, SOL_UDP, UDP_GRO, 1).is_ok()
}

fn sockaddr(to: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*to.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Sends `data` to `to` as datagrams of `segment` bytes (the last may be shorter) in one
/// system call; a plain send when `segment` covers it all.
pub fn send_segments(
    socket: &UdpSocket,
    to: SocketAddrV4,
    data: &[u8],
    segment: usize,
) -> io::Result<()> {
    let mut addr = sockaddr(to);
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // Room for one cmsg carrying a u16, aligned.
    let mut control = [0u64; 4];
    // SAFETY: msghdr is plain data; zeroed is a valid starting state.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = &mut addr as *mut libc::sockaddr_in as *mut libc::c_void;
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if data.len() > segment {
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        // SAFETY: CMSG_SPACE is a pure size computation.
        msg.msg_controllen =
            unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as usize;
        // SAFETY: the control buffer holds one cmsg of CMSG_SPACE(2) bytes, set up just above.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = SOL_UDP;
            (*cmsg).cmsg_type = UDP_SEGMENT;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut u16, segment as u16);
        }
    }
    // SAFETY: every pointer in msg refers to live buffers for the duration of the call.
    let rc = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, 0) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// One receive: how many bytes, from where, and the size of each datagram when the kernel
/// coalesced several (GRO); `segment == len` otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Bytes in the buffer.
    pub len: usize,
    /// Sender.
    pub from: SocketAddrV4,
    /// Size of each coalesced datagram (the last may be shorter).
    pub segment: usize,
}

/// Receives into `buf`, possibly several coalesced datagrams from one sender.
pub fn recv_segments(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<Received> {
    // SAFETY: sockaddr_in and msghdr are plain data; zeroed is valid.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut control = [0u64; 8];
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = &mut addr as *mut libc::sockaddr_in as *mut libc::c_void;
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: every pointer in msg refers to live buffers for the duration of the call.
    let rc = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = rc as usize;
    let mut segment = len;
    // SAFETY: walking the control messages the kernel just wrote, within msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == SOL_UDP && (*cmsg).cmsg_type == UDP_GRO {
                let size = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::c_int);
                if size > 0 {
                    segment = size as usize;
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    let from = SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
        u16::from_be(addr.sin_port),
    );
    Ok(Received { len, from, segment })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gso_send_arrives_as_separate_datagrams_or_gro_batches() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let gro = tune(&rx, 1 << 20);
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let std::net::SocketAddr::V4(to) = rx.local_addr().unwrap() else {
            unreachable!()
        };
        let data: Vec<u8> = (0..(3 * 1000 + 500)).map(|i| i as u8).collect();
        send_segments(&tx, to, &data, 1000).unwrap();
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        let mut buf = vec![0u8; 65536];
        while got.len() < data.len() {
            let r = recv_segments(&rx, &mut buf).unwrap();
            for chunk in buf[..r.len].chunks(r.segment) {
                sizes.push(chunk.len());
                got.extend_from_slice(chunk);
            }
        }
        assert_eq!(got, data);
        assert_eq!(sizes, [1000, 1000, 1000, 500], "gro={gro}");
    }
}
