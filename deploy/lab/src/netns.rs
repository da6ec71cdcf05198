//! Network namespaces and the underlay wiring between them. Every link is created from inside
//! a lab namespace (`ip -n NS ...`) and every address, route and sysctl is set inside one:
//! nothing here touches the root namespace.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use nix::sched::{setns, CloneFlags};

use crate::process::Cmd;
use crate::topology::{self, BRIDGE, UNDERLAY_IFACE, UNDERLAY_PREFIX_LEN};

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

/// Creates namespace `name` with `lo` up.
pub fn create(name: &str) -> Result<()> {
    Cmd::ip(["netns", "add", name]).run()?;
    ip_in(name, ["link", "set", "lo", "up"])
}

/// Deletes namespace `name`; a missing one is not an error.
pub fn delete(name: &str) -> Result<()> {
    if !exists(name) {
        return Ok(());
    }
    Cmd::ip(["netns", "delete", name]).run().map(drop)
}

/// Does namespace `name` exist?
pub fn exists(name: &str) -> bool {
    Path::new(NETNS_DIR).join(name).exists()
}

/// Every named namespace.
pub fn list() -> Result<Vec<String>> {
    let dir = match std::fs::read_dir(NETNS_DIR) {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {NETNS_DIR}")),
    };
    let mut names: Vec<String> = dir
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// The namespace's inode, as `/proc/PID/ns/net` shows it for its members.
pub fn inode(name: &str) -> Option<u64> {
    Path::new(NETNS_DIR)
        .join(name)
        .metadata()
        .ok()
        .map(|m| m.ino())
}

/// `ip -n NS ARGS...`.
pub fn ip_in<I, S>(netns: &str, args: I) -> Result<()>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Cmd::ip(["-n", netns]).args(args).run().map(drop)
}

/// Sets a sysctl inside `netns` (e.g. `net.ipv4.ip_forward`).
pub fn sysctl(netns: &str, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let value = value.to_string();
    in_netns(netns, move || {
        std::fs::write(&path, value).with_context(|| format!("writing {path}"))
    })?
}

/// Creates the underlay switch: bridge [`BRIDGE`] with `ip/24`, up, in `netns`.
pub fn create_bridge(netns: &str, ip: Ipv4Addr) -> Result<()> {
    ip_in(netns, ["link", "add", BRIDGE, "type", "bridge"])?;
    ip_in(
        netns,
        [
            "addr",
            "add",
            &format!("{ip}/{UNDERLAY_PREFIX_LEN}"),
            "dev",
            BRIDGE,
        ],
    )?;
    ip_in(netns, ["link", "set", BRIDGE, "up"])
}

/// Plugs `member_netns` into the switch: a veth created inside the switch namespace, its
/// peer born as [`UNDERLAY_IFACE`] directly inside the member, with `ip/24`, both ends up, and
/// optionally a default route.
pub fn plug_into_switch(
    switch_netns: &str,
    member: &str,
    member_netns: &str,
    ip: Ipv4Addr,
    gateway: Option<Ipv4Addr>,
) -> Result<()> {
    let port = topology::switch_port(member);
    ip_in(
        switch_netns,
        [
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            UNDERLAY_IFACE,
            "netns",
            member_netns,
        ],
    )?;
    ip_in(switch_netns, ["link", "set", &port, "master", BRIDGE, "up"])?;
    ip_in(
        member_netns,
        [
            "addr",
            "add",
            &format!("{ip}/{UNDERLAY_PREFIX_LEN}"),
            "dev",
            UNDERLAY_IFACE,
        ],
    )?;
    ip_in(member_netns, ["link", "set", UNDERLAY_IFACE, "up"])?;
    if let Some(gw) = gateway {
        ip_in(
            member_netns,
            ["route", "add", "default", "via", &gw.to_string()],
        )?;
    }
    Ok(())
}

/// Runs `f` on a fresh thread that has joined network namespace `netns`; sockets it opens
/// live in that namespace. The calling thread's namespace is untouched.
pub fn in_netns<T, F>(netns: &str, f: F) -> Result<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let path = Path::new(NETNS_DIR).join(netns);
    let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let name = netns.to_string();
    std::thread::Builder::new()
        .name(format!("netns-{netns}"))
        .spawn(move || -> Result<T> {
            setns(&file, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("joining network namespace {name}"))?;
            Ok(f())
        })
        .context("spawning a thread")?
        .join()
        .map_err(|_| anyhow!("thread in namespace {netns} panicked"))?
}
