//! The throughput anchor: fabric's vxlan data path built by hand with `ip`/`bridge` between
//! the same two lab node namespaces, so the comparison isolates what fabric itself adds.
//!
//! Per node `k` (1 or 2): kernel VXLAN `hb.42` (VNI 42, dstport 4789, `local` = the node's
//! underlay address, `dev eth0`, `nolearning`, MTU 1450) carrying `10.250.k.0/32`; a pod
//! namespace `<lab>-hbpodK` attached by a veth born inside the node namespace (host side
//! `hbpod`, /32 route to the pod, `proxy_arp` 1, `proxy_delay` 0), the pod holding
//! `10.250.k.10/32` on `eth0` with `169.254.1.1 dev eth0 scope link` and
//! `default via 169.254.1.1`. Per remote node `j`: `10.250.j.0/24 via 10.250.j.0 dev hb.42
//! onlink`, permanent neighbour `10.250.j.0 lladdr <j's VTEP MAC>`, FDB `<j's VTEP MAC> dst
//! <j's underlay IP> self permanent` — fabric's layout exactly.
//!
//! Nothing touches the root namespace. [`HandBuilt`] is its own guard: dropping it (also half
//! built, on error) deletes the pod namespaces and the `hb.42` devices it created.

use std::net::Ipv4Addr;

use anyhow::{ensure, Context, Result};
use fabric_lab::demo;
use fabric_lab::netns;
use fabric_lab::process::Cmd;
use fabric_lab::{Lab, Node};

/// The anchor's VXLAN device (in each node namespace).
pub const DEVICE: &str = "hb.42";
/// Its VNI.
pub const VNI: u32 = 42;
/// Its UDP port (fabric uses 8472, so the two never share a socket).
pub const PORT: u16 = 4789;
/// Device and veth MTU: the 1500-byte underlay minus VXLAN's 50 bytes, as fabric computes it.
pub const MTU: u32 = 1450;
/// The host-side veth in each node namespace.
const HOST_VETH: &str = "hbpod";
/// The pods' link-local gateway, answered by proxy ARP.
const GATEWAY: &str = "169.254.1.1";

/// Node `k`'s VTEP MAC (locally administered).
fn vtep_mac(k: u8) -> String {
    format!("02:42:0a:fa:{k:02x}:00")
}

/// Node `k`'s anchor pod address.
fn pod_ip(k: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 250, k, 10)
}

/// Node `k`'s anchor subnet's `.0`, on `hb.42`.
fn gateway(k: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 250, k, 0)
}

/// The hand-built path between a lab's `node1` and `node2`; torn down when dropped.
#[derive(Debug, Default)]
pub struct HandBuilt {
    /// Node namespaces `hb.42` was created in.
    devices: Vec<String>,
    /// Pod namespaces created.
    pods: Vec<String>,
}

fn ip(netns: &str, args: &[&str]) -> Result<()> {
    netns::ip_in(netns, args).with_context(|| format!("in {netns}: ip {}", args.join(" ")))
}

impl HandBuilt {
    /// Builds the anchor on the lab's first two nodes and checks it with a ping.
    pub fn build(lab: &Lab) -> Result<Self> {
        let nodes: Vec<&Node> = lab.nodes().iter().take(2).collect();
        ensure!(nodes.len() == 2, "the anchor needs two lab nodes");
        let mut built = HandBuilt::default();
        for (k, node) in (1u8..).zip(&nodes) {
            built
                .attach_node(lab.name(), k, node)
                .with_context(|| format!("hand-built path on {}", node.name))?;
        }
        for (k, node) in (1u8..).zip(&nodes) {
            for (j, remote) in (1u8..).zip(&nodes) {
                if j != k {
                    add_peer(&node.netns, j, remote).with_context(|| {
                        format!("hand-built peer {} on {}", remote.name, node.name)
                    })?;
                }
            }
        }
        demo::ping(built.client_netns(), built.server_ip(), 3)
            .context("the hand-built path does not carry traffic")?;
        Ok(built)
    }

    /// VXLAN device, pod namespace and routed veth on node `k`.
    fn attach_node(&mut self, lab: &str, k: u8, node: &Node) -> Result<()> {
        let n = node.netns.as_str();
        let local = node.underlay_ip.to_string();
        let (vni, port, mtu) = (VNI.to_string(), PORT.to_string(), MTU.to_string());
        self.devices.push(n.to_string());
        #[rustfmt::skip]
        ip(n, &["link", "add", DEVICE, "type", "vxlan", "id", &vni, "dstport", &port,
                "local", &local, "dev", "eth0", "nolearning"])?;
        ip(
            n,
            &[
                "link",
                "set",
                DEVICE,
                "address",
                &vtep_mac(k),
                "mtu",
                &mtu,
                "up",
            ],
        )?;
        ip(
            n,
            &["addr", "add", &format!("{}/32", gateway(k)), "dev", DEVICE],
        )?;

        let pod = format!("{lab}-hbpod{k}");
        self.pods.push(pod.clone());
        netns::create(&pod).with_context(|| format!("creating namespace {pod}"))?;
        #[rustfmt::skip]
        ip(n, &["link", "add", HOST_VETH, "type", "veth", "peer", "name", "eth0", "netns", &pod])?;
        ip(n, &["link", "set", HOST_VETH, "mtu", &mtu, "up"])?;
        netns::sysctl(n, &format!("net.ipv4.conf.{HOST_VETH}.proxy_arp"), "1")?;
        netns::sysctl(n, &format!("net.ipv4.neigh.{HOST_VETH}.proxy_delay"), "0")?;
        let addr = format!("{}/32", pod_ip(k));
        ip(n, &["route", "add", &addr, "dev", HOST_VETH])?;

        ip(&pod, &["link", "set", "eth0", "mtu", &mtu, "up"])?;
        ip(&pod, &["addr", "add", &addr, "dev", "eth0"])?;
        #[rustfmt::skip]
        ip(&pod, &["route", "add", GATEWAY, "dev", "eth0", "scope", "link"])?;
        ip(
            &pod,
            &["route", "add", "default", "via", GATEWAY, "dev", "eth0"],
        )
    }

    /// The client pod's namespace (on node1).
    pub fn client_netns(&self) -> &str {
        &self.pods[0]
    }

    /// The server pod's namespace (on node2).
    pub fn server_netns(&self) -> &str {
        &self.pods[1]
    }

    /// The server pod's address.
    pub fn server_ip(&self) -> Ipv4Addr {
        pod_ip(2)
    }
}

/// Route, neighbour and FDB entry on `netns`'s `hb.42` for remote node `j`.
fn add_peer(netns: &str, j: u8, remote: &Node) -> Result<()> {
    let (gw, mac) = (gateway(j).to_string(), vtep_mac(j));
    #[rustfmt::skip]
    ip(netns, &["route", "add", &format!("10.250.{j}.0/24"), "via", &gw, "dev", DEVICE, "onlink"])?;
    #[rustfmt::skip]
    ip(netns, &["neigh", "replace", &gw, "lladdr", &mac, "dev", DEVICE, "nud", "permanent"])?;
    let dst = remote.underlay_ip.to_string();
    Cmd::new("bridge")
        .args(["-n", netns, "fdb", "replace", &mac, "dev", DEVICE])
        .args(["dst", &dst, "self", "permanent"])
        .run()
        .with_context(|| format!("in {netns}: bridge fdb replace {mac} dst {dst}"))?;
    Ok(())
}

impl Drop for HandBuilt {
    fn drop(&mut self) {
        // The pods' namespaces take their veths (and the node-side routes) with them.
        for pod in &self.pods {
            if let Err(e) = netns::delete(pod) {
                eprintln!("anchor cleanup: deleting {pod}: {e:#}");
            }
        }
        // hb.42 takes its routes, neighbours and FDB entries with it.
        for node in &self.devices {
            if netns::exists(node) {
                let _ = netns::ip_in(node, ["link", "del", DEVICE]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_per_node() {
        assert_eq!(vtep_mac(2), "02:42:0a:fa:02:00");
        assert_eq!(pod_ip(1), Ipv4Addr::new(10, 250, 1, 10));
        assert_eq!(gateway(2), Ipv4Addr::new(10, 250, 2, 0));
    }
}
