//! Cutting connections policy no longer allows: the allowed connections conntrack holds
//! (those carrying the [`ALLOWED`] mark), both families, listed and deleted with the
//! `conntrack` tool.

use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use policy::{Cluster, Protocol};

use super::packet::{Flow, Transport};
use super::{judge, ALLOWED};
use crate::pods::Subnets;

/// An allowed connection as conntrack lists it: its original direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracked {
    /// The flow as first seen.
    pub flow: Flow,
    /// Its source port (to name the conntrack entry), if it has ports.
    pub sport: Option<u16>,
}

/// Reads one line of `conntrack -L` (original direction first), IPv4 or IPv6.
pub fn parse_tracked(line: &str) -> Option<Tracked> {
    let mut words = line.split_whitespace();
    let proto: u8 = words.nth(1)?.parse().ok()?;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
    };
    let src = field("src")?.parse().ok()?;
    let dst = field("dst")?.parse().ok()?;
    let port = |name| field(name).and_then(|p: &str| p.parse::<u16>().ok());
    let transport = match proto {
        6 => Transport::Port(Protocol::Tcp, port("dport")?),
        17 => Transport::Port(Protocol::Udp, port("dport")?),
        132 => Transport::Port(Protocol::Sctp, port("dport")?),
        other => Transport::Other(other),
    };
    Some(Tracked {
        flow: Flow {
            src,
            dst,
            transport,
        },
        sport: port("sport"),
    })
}

fn conntrack(args: &[String]) -> Result<String> {
    let out = Command::new("conntrack")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .context("cannot run conntrack (install the conntrack package)")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `conntrack -D` arguments that delete `tracked` and nothing else.
fn delete_args(tracked: &Tracked, mark: &str) -> Option<Vec<String>> {
    let f = &tracked.flow;
    let family = if f.src.is_ipv6() { "ipv6" } else { "ipv4" };
    let mut args: Vec<String> = ["-D", "-f", family, "-m", mark].map(String::from).to_vec();
    args.extend([
        "-s".into(),
        f.src.to_string(),
        "-d".into(),
        f.dst.to_string(),
    ]);
    match (f.transport, tracked.sport) {
        (Transport::Port(p, dport), Some(sport)) => args.extend([
            "-p".into(),
            p.as_str().to_lowercase(),
            "--sport".into(),
            sport.to_string(),
            "--dport".into(),
            dport.to_string(),
        ]),
        (Transport::Other(proto), _) => args.extend(["-p".into(), proto.to_string()]),
        _ => return None,
    }
    Some(args)
}

/// Re-judges every allowed connection to the pod networks `networks` against `cluster` and
/// cuts those policy no longer allows: their conntrack entries go, and their next packets
/// arrive mid-stream, which the rules drop. Allowed connections are left alone.
pub fn rejudge(cluster: &Cluster, networks: Subnets) -> Result<usize> {
    let mark = format!("{ALLOWED:#x}/{ALLOWED:#x}");
    let mut cut = 0;
    for family in ["ipv4", "ipv6"] {
        let listed = conntrack(&[
            "-L".into(),
            "-f".into(),
            family.into(),
            "-m".into(),
            mark.clone(),
        ])?;
        for tracked in listed.lines().filter_map(parse_tracked) {
            let inside = match tracked.flow.dst {
                std::net::IpAddr::V4(ip) => networks.v4.contains(&ip),
                std::net::IpAddr::V6(ip) => networks.v6.is_some_and(|n| n.contains(&ip)),
            };
            if !inside || judge(cluster, &tracked.flow) {
                continue;
            }
            if let Some(args) = delete_args(&tracked, &mark) {
                conntrack(&args)?;
                cut += 1;
            }
        }
    }
    Ok(cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_conntrack_listings_of_both_families() {
        let t = parse_tracked("tcp      6 431998 ESTABLISHED src=10.244.44.1 dst=10.244.29.1 sport=59140 dport=5201 src=10.244.29.1 dst=10.244.44.1 sport=5201 dport=59140 [ASSURED] mark=262144 use=1").unwrap();
        assert_eq!(t.flow.src, std::net::IpAddr::from([10, 244, 44, 1]));
        assert_eq!(t.flow.transport, Transport::Port(Protocol::Tcp, 5201));
        assert_eq!(t.sport, Some(59140));
        let icmp = parse_tracked("icmp     1 18 src=10.244.44.1 dst=10.244.29.1 type=8 code=0 id=12114 src=10.244.29.1 dst=10.244.44.1 type=0 code=0 id=12114 mark=262144 use=1").unwrap();
        assert_eq!(icmp.flow.transport, Transport::Other(1));
        assert_eq!(
            parse_tracked("conntrack v1.4.7 (conntrack-tools): 2 flow entries have been shown."),
            None
        );
        // As `conntrack -L -f ipv6` prints an IPv6 connection.
        let t6 = parse_tracked("tcp      6 431999 ESTABLISHED src=fd00:10:244:38::1 dst=fd00:10:244:4a::2 sport=41822 dport=80 src=fd00:10:244:4a::2 dst=fd00:10:244:38::1 sport=80 dport=41822 [ASSURED] mark=262144 use=1").unwrap();
        assert_eq!(
            t6.flow.dst,
            "fd00:10:244:4a::2".parse::<std::net::IpAddr>().unwrap()
        );
        assert_eq!(t6.flow.transport, Transport::Port(Protocol::Tcp, 80));
        let args = delete_args(&t6, "0x40000/0x40000").unwrap();
        assert_eq!(
            args.join(" "),
            "-D -f ipv6 -m 0x40000/0x40000 -s fd00:10:244:38::1 -d fd00:10:244:4a::2 -p tcp --sport 41822 --dport 80"
        );
        let icmp6 = parse_tracked("ipv6-icmp 58 29 src=fd00::1 dst=fd00::2 type=128 code=0 id=7 src=fd00::2 dst=fd00::1 type=129 code=0 id=7 mark=262144 use=1").unwrap();
        assert_eq!(icmp6.flow.transport, Transport::Other(58));
        assert!(delete_args(&icmp6, "m")
            .unwrap()
            .join(" ")
            .contains("-f ipv6"));
    }
}
