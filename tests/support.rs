//! Helpers shared by the end-to-end tests: unique lab names, polling, probes, and reading a
//! node's kernel state the way an operator would (`ip route`, `ip neigh`, `bridge fdb`).
//!
//! The tests need root (they create network namespaces) and fail, not skip, without it.

use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use fabric_lab::{Backend, Lab, LabSpec};

/// A lab name unique to this process and call: parallel tests never collide.
pub fn lab_name(tag: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "t{}{}-{tag}",
        std::process::id() % 100_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Fails the test unless it runs as root.
pub fn require_root() {
    let uid = Command::new("id").arg("-u").output().expect("id -u");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "end-to-end tests create network namespaces: run them as root (scripts/test.sh)"
    );
}

/// A spec for a lab named after `tag`, quiet.
pub fn spec(tag: &str, nodes: usize, pods_per_node: usize, backend: Backend) -> LabSpec {
    require_root();
    let mut spec = LabSpec::new(lab_name(tag));
    spec.nodes = nodes;
    spec.pods_per_node = pods_per_node;
    spec.backend = backend;
    spec.demo = false;
    spec.progress = false;
    spec
}

/// Brings up a lab; panics with the reason if it cannot.
pub fn up(spec: LabSpec) -> Lab {
    match Lab::up(spec) {
        Ok(lab) => lab,
        Err(e) => panic!("lab up failed: {e:#}"),
    }
}

/// Polls `check` until it succeeds or `timeout` passes; returns the last error then.
pub fn eventually<T>(timeout: Duration, mut check: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// One ping from `from` (a pod or node) to `ip`.
pub fn ping(lab: &Lab, from: &str, ip: impl Into<IpAddr>) -> Result<()> {
    let ip = ip.into();
    let out = lab.exec(from, &["ping", "-c", "1", "-W", "1", &ip.to_string()])?;
    if !out.status.success() {
        bail!(
            "{from} cannot ping {ip}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(())
}

/// Servers in lab namespaces (`nc -lk`, or the lab's in-pod server), ended when dropped.
pub struct Listeners(Vec<Child>);

impl Listeners {
    /// Starts an IPv4 listener on `port` in each target's namespace (bounded to 120 s).
    pub fn start(lab: &Lab, targets: &[&str], port: u16) -> Result<Self> {
        Self::start_family(lab, targets, port, "-4")
    }

    /// Starts an IPv6 listener on `port` in each target's namespace (bounded to 120 s).
    pub fn start_v6(lab: &Lab, targets: &[&str], port: u16) -> Result<Self> {
        Self::start_family(lab, targets, port, "-6")
    }

    /// Starts the lab's in-pod server (`fabric-lab serve`: TCP answers a line, UDP echoes,
    /// what `fabric-lab probe` expects) on `port` in each target's namespace (bounded to 120 s).
    pub fn porter(lab: &Lab, targets: &[&str], port: u16) -> Result<Self> {
        let lab_bin = lab.state().bin_dir.join("fabric-lab").display().to_string();
        let port = port.to_string();
        Self::spawn(lab, targets, &[&lab_bin, "serve", "--port", &port])
    }

    fn start_family(lab: &Lab, targets: &[&str], port: u16, family: &str) -> Result<Self> {
        Self::spawn(
            lab,
            targets,
            &["nc", family, "-lk", "-p", &port.to_string()],
        )
    }

    fn spawn(lab: &Lab, targets: &[&str], argv: &[&str]) -> Result<Self> {
        let mut children = Vec::new();
        for target in targets {
            let netns = lab.netns(target)?;
            children.push(
                Command::new("ip")
                    .args(["netns", "exec", &netns, "timeout", "120"])
                    .args(argv)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()?,
            );
        }
        std::thread::sleep(Duration::from_millis(300));
        Ok(Self(children))
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Opens (and closes) a TCP connection from `from` to `ip:port`.
pub fn tcp_connect(lab: &Lab, from: &str, ip: impl Into<IpAddr>, port: u16) -> Result<()> {
    let ip = ip.into();
    let out = lab.exec(
        from,
        &["nc", "-z", "-w", "2", &ip.to_string(), &port.to_string()],
    )?;
    if !out.status.success() {
        bail!("{from} cannot connect to {ip}:{port}");
    }
    Ok(())
}

/// What a node's kernel holds for the data path, as `ip`/`bridge` print it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelState {
    /// `ip route show proto 0x66` (fabric's routes), one per line, sorted.
    pub routes: Vec<String>,
    /// Permanent neighbours on the vxlan device.
    pub neighbours: Vec<String>,
    /// FDB entries on the vxlan device.
    pub fdb: Vec<String>,
}

fn lines(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    v.sort();
    v
}

/// Reads `node`'s routes, neighbours and FDB entries (the vxlan device may be absent).
pub fn kernel_state(lab: &Lab, node: &str) -> Result<KernelState> {
    let routes = lab.exec_ok(node, &["ip", "-4", "route", "show", "proto", "0x66"])?;
    let has_vxlan = lab
        .exec(node, &["ip", "link", "show", "fabric.1"])?
        .status
        .success();
    let (neighbours, fdb) = if has_vxlan {
        (
            lab.exec_ok(
                node,
                &["ip", "neigh", "show", "dev", "fabric.1", "nud", "permanent"],
            )?,
            lab.exec_ok(node, &["bridge", "fdb", "show", "dev", "fabric.1"])?,
        )
    } else {
        (String::new(), String::new())
    };
    Ok(KernelState {
        routes: lines(&routes),
        neighbours: lines(&neighbours),
        fdb: lines(&fdb),
    })
}

/// Node name -> subnet, from `fabricctl leases -o json`.
pub fn subnets(lab: &Lab) -> Result<std::collections::BTreeMap<String, String>> {
    lab.subnets()
}

/// A bounded iperf3 TCP transfer between two lab namespaces running in the background (for
/// tests that change something while traffic flows). Both processes end when dropped.
pub struct Transfer {
    server: Child,
    client: Option<Child>,
}

/// What a finished [`Transfer`] reported.
#[derive(Debug, Clone)]
pub struct TransferReport {
    /// iperf3's error, if it gave one.
    pub error: Option<String>,
    /// Receiver-side bits per second of each one-second interval.
    pub intervals: Vec<f64>,
}

impl Transfer {
    /// Starts `iperf3 -s -1` in `server_netns` and a `seconds`-long client to `server_ip`
    /// in `client_netns` (each bounded by `timeout`).
    pub fn start(
        server_netns: &str,
        server_ip: impl Into<IpAddr>,
        client_netns: &str,
        seconds: u32,
    ) -> Result<Self> {
        let bound = (seconds + 20).to_string();
        let server = Command::new("ip")
            .args([
                "netns",
                "exec",
                server_netns,
                "timeout",
                &bound,
                "iperf3",
                "-s",
                "-1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        std::thread::sleep(Duration::from_millis(500));
        let client = Command::new("ip")
            .args([
                "netns",
                "exec",
                client_netns,
                "timeout",
                &bound,
                "iperf3",
                "-J",
                "-c",
            ])
            .arg(server_ip.into().to_string())
            .args(["-t", &seconds.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Self {
            server,
            client: Some(client),
        })
    }

    /// Waits for the client and reads its report.
    pub fn finish(mut self) -> Result<TransferReport> {
        let client = self.client.take().expect("started");
        let out = client.wait_with_output()?;
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let intervals = report["intervals"]
            .as_array()
            .map(|v| {
                v.iter()
                    .map(|i| i["sum"]["bits_per_second"].as_f64().unwrap_or(0.0))
                    .collect()
            })
            .unwrap_or_default();
        Ok(TransferReport {
            error: report["error"].as_str().map(String::from),
            intervals,
        })
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        for child in self
            .client
            .iter_mut()
            .chain(std::iter::once(&mut self.server))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A kernel to boot in a VM: the newest `/boot/vmlinuz-VERSION` whose modules include
/// `module` (e.g. `nft_queue`), with its version.
pub fn vm_kernel(module: &str) -> Result<(std::path::PathBuf, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/boot")? {
        let path = entry?.path();
        let Some(version) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("vmlinuz-"))
            .map(str::to_owned)
        else {
            continue;
        };
        let modules = std::fs::read_to_string(format!("/lib/modules/{version}/modules.dep"))
            .unwrap_or_default();
        if modules
            .lines()
            .any(|l| l.contains(&format!("/{module}.ko")))
        {
            found.push((path, version));
        }
    }
    found.sort_by(|a, b| a.1.cmp(&b.1));
    match found.pop() {
        Some(k) => Ok(k),
        None => bail!(
            "no kernel in /boot has the {module} module (scripts/test.sh installs linux-image-amd64)"
        ),
    }
}

/// Runs `script` (sh) as root in a VM booted from `kernel` with virtme-ng: the host's
/// filesystem read-only with tmpfs overlays, the workspace as the working directory, no
/// network but the guest's own namespaces. Software emulation (no KVM: nested KVM cannot run
/// Debian's kernel decompressor here), bounded by `limit`.
pub fn in_vm(
    kernel: &std::path::Path,
    script: &str,
    limit: Duration,
) -> Result<std::process::Output> {
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let workspace = workspace.canonicalize()?;
    let out = Command::new("timeout")
        .arg(limit.as_secs().to_string())
        .arg("vng")
        .arg("--run")
        .arg(kernel)
        .args(["--disable-kvm", "--cpus", "2", "--memory", "4G", "--cwd"])
        .arg(&workspace)
        .arg("--")
        .arg(script)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run vng (pip install virtme-ng): {e}"))?;
    Ok(out)
}

/// The port [`full_mesh`] listens on in every pod.
pub const MESH_PORT: u16 = 8080;

/// Every pod pings every other pod; every cross-node pair opens a TCP connection.
pub fn full_mesh(lab: &Lab) -> Result<()> {
    let pods = lab.pods().to_vec();
    anyhow::ensure!(!pods.is_empty(), "the lab has no pods");
    let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
    let _listeners = Listeners::start(lab, &names, MESH_PORT)?;
    for from in &pods {
        for to in &pods {
            if from.name == to.name {
                continue;
            }
            eventually(Duration::from_secs(5), || ping(lab, &from.name, to.ip))?;
            if from.node != to.node {
                eventually(Duration::from_secs(5), || {
                    tcp_connect(lab, &from.name, to.ip, MESH_PORT)
                })?;
            }
        }
    }
    Ok(())
}
