//! Userspace WireGuard anchors between a lab's `node1` and `node2` namespaces: an
//! implementation's daemon started in the foreground inside each node namespace (tracked by
//! PID), configured with `wg` and `ip` exactly as an operator would.
//!
//! Per node `k` (peer `j`): device `wg_iface("<node netns>-<tag>")` (unique per lab: the UAPI
//! socket `/var/run/wireguard/<dev>.sock` is shared by every namespace), `wg set DEV
//! private-key FILE listen-port PORT peer PUB_j endpoint <j's underlay IP>:PORT allowed-ips
//! 10.<octet>.j.0/24`, address `10.<octet>.k.1/24`, MTU 1420 (fabric's pod MTU), route
//! `10.<octet>.j.0/24 dev DEV`. Tunnel traffic goes over the lab's underlay only.
//!
//! [`Userspace`] is its own guard: dropping it (also half built) ends its daemons by PID and
//! removes what they leave behind (the device, the UAPI socket).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use fabric_lab::process::{self, Cmd, Daemon};
use fabric_lab::{demo, netns, Lab, Node};

/// The tunnels' MTU: fabric's wireguard pod MTU.
pub const MTU: u32 = 1420;

/// Where WireGuard's userspace implementations put their control sockets.
const SOCKET_DIR: &str = "/var/run/wireguard";

/// How long a daemon gets to create its device and socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// One userspace WireGuard anchor to build.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The path's label.
    pub label: String,
    /// Short tag making its device names unique (`wggo`, `wgnew`, `bt`, `bt1`).
    pub tag: &'static str,
    /// The daemon's binary.
    pub program: PathBuf,
    /// Its arguments before the interface name.
    pub args: Vec<String>,
    /// The UDP port, in each node namespace.
    pub port: u16,
    /// Second octet of its address range: `10.<octet>.k.1/24` on node `k`.
    pub octet: u8,
}

impl Spec {
    /// Node `k`'s tunnel address.
    pub fn address(&self, k: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.octet, k, 1)
    }

    /// The device name in `node_netns`.
    pub fn device(&self, node_netns: &str) -> String {
        fabric_lab::node::wg_iface(&format!("{node_netns}-{}", self.tag))
    }

    /// `wg set` arguments for the node with device `dev` and peer `j`.
    pub fn wg_set_args(
        &self,
        dev: &str,
        key_file: &Path,
        peer_pub: &str,
        j: u8,
        peer_ip: Ipv4Addr,
    ) -> Vec<String> {
        [
            "set",
            dev,
            "private-key",
            &key_file.display().to_string(),
            "listen-port",
            &self.port.to_string(),
            "peer",
            peer_pub,
            "endpoint",
            &format!("{peer_ip}:{}", self.port),
            "allowed-ips",
            &format!("10.{}.{j}.0/24", self.octet),
        ]
        .map(String::from)
        .into()
    }
}

/// A running anchor; torn down when dropped.
#[derive(Debug)]
pub struct Userspace {
    label: String,
    server_ip: Ipv4Addr,
    /// (node namespace, device) per node, in order.
    nodes: Vec<(String, String)>,
    /// The daemons started, by PID.
    daemons: Vec<(String, Daemon)>,
}

impl Userspace {
    /// Starts and configures `spec` on the lab's first two nodes (keys and logs in `dir`) and
    /// checks it with a ping from node1 to node2's tunnel address.
    pub fn build(lab: &Lab, spec: &Spec, dir: &Path) -> Result<Self> {
        let nodes: Vec<&Node> = lab.nodes().iter().take(2).collect();
        ensure!(nodes.len() == 2, "the anchor needs two lab nodes");
        let wg = process::which("wg").context("`wg` (wireguard-tools) is not installed")?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut built = Userspace {
            label: spec.label.clone(),
            server_ip: spec.address(2),
            nodes: Vec::new(),
            daemons: Vec::new(),
        };
        let mut keys = Vec::new();
        for node in &nodes {
            let private = Cmd::new(&wg).arg("genkey").run()?.trim().to_string();
            let public = Cmd::new(&wg)
                .arg("pubkey")
                .stdin(format!("{private}\n"))
                .run()?
                .trim()
                .to_string();
            let file = dir.join(format!("{}-{}.key", spec.tag, node.name));
            write_private(&file, &private)?;
            keys.push((file, public));
        }
        for node in &nodes {
            built
                .start(spec, node, dir)
                .with_context(|| format!("{} on {}", spec.label, node.name))?;
        }
        for (k, node) in (1u8..).zip(&nodes) {
            let (j, peer) = if k == 1 { (2, nodes[1]) } else { (1, nodes[0]) };
            let dev = spec.device(&node.netns);
            let args = spec.wg_set_args(
                &dev,
                &keys[usize::from(k - 1)].0,
                &keys[usize::from(j - 1)].1,
                j,
                peer.underlay_ip,
            );
            let n = node.netns.as_str();
            Cmd::in_netns(n, &wg)
                .args(&args)
                .run()
                .with_context(|| format!("configuring {} on {}", spec.label, node.name))?;
            let addr = format!("{}/24", spec.address(k));
            ip(n, &["addr", "add", &addr, "dev", &dev])?;
            ip(n, &["link", "set", &dev, "mtu", &MTU.to_string(), "up"])?;
            let remote = format!("10.{}.{j}.0/24", spec.octet);
            ip(n, &["route", "add", &remote, "dev", &dev])?;
        }
        // The first packets wait for the handshake; allow a few tries.
        let mut last = None;
        for _ in 0..3 {
            match demo::ping(&nodes[0].netns, built.server_ip, 3) {
                Ok(_) => return Ok(built),
                Err(e) => last = Some(e),
            }
        }
        let logs: Vec<String> = nodes
            .iter()
            .map(|n| {
                let log = log_path(dir, spec, n);
                format!("{}:\n{}", log.display(), process::tail(&log, 10))
            })
            .collect();
        Err(last.expect("three attempts")).with_context(|| {
            format!(
                "{} does not carry traffic; logs:\n{}",
                spec.label,
                logs.join("\n")
            )
        })
    }

    /// Starts the daemon in `node`'s namespace and waits for its device and control socket.
    fn start(&mut self, spec: &Spec, node: &Node, dir: &Path) -> Result<()> {
        let dev = spec.device(&node.netns);
        let socket = socket_path(&dev);
        ensure!(
            !socket_in_use(&socket),
            "{} is in use by another process (device name clash?)",
            socket.display()
        );
        let log = log_path(dir, spec, node);
        let daemon = Cmd::in_netns(&node.netns, &spec.program)
            .args(&spec.args)
            .arg(&dev)
            .spawn_daemon(&log)?;
        self.nodes.push((node.netns.clone(), dev.clone()));
        self.daemons.push((node.name.clone(), daemon));
        let daemon = &self.daemons.last().expect("just pushed").1;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let device_up = netns::ip_in(&node.netns, ["link", "show", &dev]).is_ok();
            if device_up && socket_in_use(&socket) {
                return Ok(());
            }
            if !daemon.is_running() {
                bail!(
                    "{} (pid {}) exited; last lines of {}:\n{}",
                    spec.program.display(),
                    daemon.pid,
                    log.display(),
                    process::tail(&log, 20)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "no device {dev} and socket {} after {}s; last lines of {}:\n{}",
                    socket.display(),
                    START_TIMEOUT.as_secs(),
                    log.display(),
                    process::tail(&log, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The path's label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The client's namespace (node1).
    pub fn client_netns(&self) -> &str {
        &self.nodes[0].0
    }

    /// The server's namespace (node2).
    pub fn server_netns(&self) -> &str {
        &self.nodes[1].0
    }

    /// node2's tunnel address.
    pub fn server_ip(&self) -> Ipv4Addr {
        self.server_ip
    }

    /// The devices, `(netns, name)`.
    pub fn devices(&self) -> &[(String, String)] {
        &self.nodes
    }

    /// Do all its daemons still run?
    pub fn running(&self) -> bool {
        self.daemons.iter().all(|(_, d)| d.is_running())
    }
}

impl Drop for Userspace {
    fn drop(&mut self) {
        for (node, daemon) in &self.daemons {
            if let Err(e) = daemon.terminate() {
                eprintln!(
                    "{} cleanup: stopping pid {} on {node}: {e:#}",
                    self.label, daemon.pid
                );
            }
        }
        // The devices go with their daemons; the sockets usually too. Remove leftovers.
        for (ns, dev) in &self.nodes {
            if netns::exists(ns) && netns::ip_in(ns, ["link", "show", dev]).is_ok() {
                let _ = netns::ip_in(ns, ["link", "del", dev]);
            }
            let socket = socket_path(dev);
            if socket.exists() && !socket_in_use(&socket) {
                let _ = std::fs::remove_file(&socket);
            }
        }
    }
}

fn ip(netns: &str, args: &[&str]) -> Result<()> {
    netns::ip_in(netns, args).with_context(|| format!("in {netns}: ip {}", args.join(" ")))
}

/// The UAPI socket of device `dev`.
fn socket_path(dev: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{dev}.sock"))
}

/// Does a process listen on `socket`?
fn socket_in_use(socket: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(socket).is_ok()
}

fn log_path(dir: &Path, spec: &Spec, node: &Node) -> PathBuf {
    dir.join(format!("{}-{}.log", spec.tag, node.name))
}

/// Writes a private key readable by root only.
fn write_private(path: &Path, key: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(f, "{key}").with_context(|| format!("writing {}", path.display()))
}

/// The workspace's root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Debian's `wireguard-go` on PATH, installed with apt-get if missing (the current release is
/// built from source instead: [`crate::upstream::WIREGUARD_GO`]).
pub fn ensure_debian_wireguard_go() -> Result<PathBuf> {
    ensure_apt("wireguard-go", "wireguard-go")
}

/// `wg` on PATH, installed with apt-get (`wireguard-tools`) if missing.
pub fn ensure_wg() -> Result<PathBuf> {
    ensure_apt("wg", "wireguard-tools")
}

fn ensure_apt(program: &str, package: &str) -> Result<PathBuf> {
    if let Some(p) = process::which(program) {
        return Ok(p);
    }
    eprintln!("{program} not found: apt-get install -y --no-install-recommends {package}");
    Cmd::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run()
        .with_context(|| format!("installing {package}"))?;
    process::which(program).with_context(|| format!("{program} still not on PATH"))
}

/// `<workspace>/target/anchors/bin/boringtun-cli`, installed with `cargo install` if missing.
pub fn ensure_boringtun() -> Result<PathBuf> {
    let root = workspace_root().join("target/anchors");
    let bin = root.join("bin/boringtun-cli");
    if fabric_lab::spec::is_executable(&bin) {
        return Ok(bin);
    }
    let cargo = process::which("cargo")
        .or_else(|| std::env::var_os("CARGO").map(PathBuf::from))
        .context("boringtun-cli is missing and cargo is not on PATH")?;
    eprintln!(
        "{} not found: cargo install boringtun-cli --root {}",
        bin.display(),
        root.display()
    );
    Cmd::new(cargo)
        .args(["install", "boringtun-cli", "--root"])
        .arg(&root)
        .timeout(Duration::from_secs(1800))
        .run()
        .context("installing boringtun-cli")?;
    ensure!(
        fabric_lab::spec::is_executable(&bin),
        "{} missing after cargo install",
        bin.display()
    );
    Ok(bin)
}

/// The first line of `program --version` (e.g. `wireguard-go v0.0.20220316`).
pub fn version(program: &Path) -> String {
    Cmd::new(program)
        .arg("--version")
        .timeout(Duration::from_secs(10))
        .output()
        .ok()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout);
            text.lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown version".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec {
            label: "boringtun-cli".into(),
            tag: "bt",
            program: "/x/boringtun-cli".into(),
            args: vec!["--foreground".into()],
            port: 51902,
            octet: 252,
        }
    }

    #[test]
    fn names_and_addresses() {
        let s = spec();
        assert_eq!(s.address(2), Ipv4Addr::new(10, 252, 2, 1));
        let dev = s.device("benchwgw-node1");
        assert!(dev.len() <= 15 && dev.starts_with("wg"), "{dev}");
        assert_ne!(dev, s.device("benchwgw-node2"));
        assert_ne!(dev, s.device("otherw-node1"));
        assert_ne!(dev, fabric_lab::node::wg_iface("benchwgw-node1"));
        let other = Spec {
            tag: "bt1",
            ..spec()
        };
        assert_ne!(dev, other.device("benchwgw-node1"));
    }

    #[test]
    fn wg_set_command() {
        let args = spec().wg_set_args(
            "wg0",
            Path::new("/k/bt-node1.key"),
            "PUB=",
            2,
            Ipv4Addr::new(172, 30, 0, 12),
        );
        assert_eq!(
            args.join(" "),
            "set wg0 private-key /k/bt-node1.key listen-port 51902 peer PUB= endpoint \
             172.30.0.12:51902 allowed-ips 10.252.2.0/24"
        );
    }
}
