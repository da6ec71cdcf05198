//! A TUN device owned by the daemon: opened on `/dev/net/tun` in the daemon's network
//! namespace, gone when the daemon's file descriptor closes. Deleting the device
//! (`ip link del`) detaches the descriptor for good: [`attached`] tells, and the backend opens
//! a new one ([`open`]) on its next reconcile.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

/// `TUNSETIFF` from `<linux/if_tun.h>`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// `TUNGETIFF` (`_IOR('T', 210, unsigned int)`).
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
/// `TUNSETOFFLOAD`.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUN_F_CSUM: libc::c_ulong = 0x01;
const TUN_F_TSO4: libc::c_ulong = 0x02;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates (or attaches to) the TUN device `name` and returns its queue. Every read and
/// write carries a virtio-net header ([`super::offload`]); the kernel may hand over TCP
/// super-packets (TSO) and packets with partial checksums.
pub fn open(name: &str) -> std::io::Result<File> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ']) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("invalid interface name {name:?} (1 to 15 characters)"),
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TUN | IFF_NO_PI | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `IfReq` lays out exactly;
    // the descriptor is open for the whole call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: TUNSETOFFLOAD takes the offload flags by value.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

/// Whether `file` (a queue [`open`] returned) still serves a device: once the device is
/// deleted, the kernel detaches the queue and `TUNGETIFF` fails with `EBADFD`, as do its
/// reads and writes.
pub fn attached(file: &File) -> bool {
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    // SAFETY: TUNGETIFF writes one `struct ifreq`, which `IfReq` lays out exactly; the
    // descriptor is open for the whole call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNGETIFF, &mut req as *mut IfReq) };
    rc >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EBADFD)
}
