//! Per-namespace sysctls under `/proc/sys/net`, written only when they differ. They apply to
//! the network namespace of the process that opens them, i.e. the node's own.

use std::path::PathBuf;

/// Sets `key` (e.g. `net/ipv4/ip_forward`) to `value`.
pub fn set(key: &str, value: &str) -> std::io::Result<()> {
    let path = PathBuf::from("/proc/sys").join(key);
    let current = std::fs::read_to_string(&path)?;
    if current.trim() == value {
        return Ok(());
    }
    std::fs::write(&path, value)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// Enables IPv4 forwarding in this namespace.
pub fn enable_forwarding() -> std::io::Result<()> {
    set("net/ipv4/ip_forward", "1")
}

/// Enables IPv6 forwarding in this namespace (dual-stack pod networks).
pub fn enable_ipv6_forwarding() -> std::io::Result<()> {
    set("net/ipv6/conf/all/forwarding", "1")
}

/// Enables proxy ARP on `iface`, so it answers ARP for addresses routed elsewhere (the pods'
/// link-local gateway).
pub fn enable_proxy_arp(iface: &str) -> std::io::Result<()> {
    set(&format!("net/ipv4/conf/{iface}/proxy_arp"), "1")?;
    // Answer at once instead of after a random delay of up to 0.8 s.
    set(&format!("net/ipv4/neigh/{iface}/proxy_delay"), "0")
}

/// Makes `iface` (a pod's host veth) deaf to what a pod could use to steer the node's
/// routing: IPv6 router advertisements and redirects, IPv4 redirects. Neighbour discovery and
/// ARP are untouched. A namespace without IPv6 has nothing to turn off there.
pub fn ignore_router_messages(iface: &str) -> std::io::Result<()> {
    for key in ["accept_ra", "accept_redirects"] {
        match set(&format!("net/ipv6/conf/{iface}/{key}"), "0") {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            r => r?,
        }
    }
    set(&format!("net/ipv4/conf/{iface}/accept_redirects"), "0")
}
