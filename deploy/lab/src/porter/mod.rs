//! The lab's in-pod test agent (like Kubernetes' agnhost `porter` and `connect`), run as
//! hidden `fabric-lab` subcommands inside pod namespaces:
//!
//! - `fabric-lab serve --port 80 --port 81`: TCP, UDP and SCTP servers on each port
//!   ([`serve`]); `serve --http --body NAME --tcp 80 --udp 53` is the kubelet role's stand-in
//!   container (HTTP 200 with the pod's name on TCP ports, echo on UDP ones);
//! - `fabric-lab probe [--timeout 1s] IP:PORT/PROTO...`: one bounded connection attempt per
//!   target, all at once, a JSON line each ([`probe`]);
//! - `fabric-lab connect-rate --to IP:PORT --seconds N`: new TCP connections per second
//!   against a `serve` listener ([`rate`]).
//!
//! SCTP goes over raw sockets ([`sctp`]) because the kernels this runs on may lack the SCTP
//! module; only the association's first exchange (INIT, INIT-ACK or ABORT) is spoken, which
//! is all a reachability probe needs and what policy judges.

pub mod probe;
pub mod rate;
pub mod sctp;
pub mod serve;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use policy::Protocol;
use serde::{Deserialize, Serialize};

/// A probe's destination: `IP:PORT/PROTO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    /// Destination address and port.
    pub addr: SocketAddrV4,
    /// TCP, UDP or SCTP.
    pub protocol: Protocol,
}

impl Target {
    /// A target.
    pub fn new(ip: Ipv4Addr, port: u16, protocol: Protocol) -> Self {
        Target {
            addr: SocketAddrV4::new(ip, port),
            protocol,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.protocol.as_str())
    }
}

impl FromStr for Target {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let (addr, proto) = s
            .rsplit_once('/')
            .with_context(|| format!("{s:?}: write IP:PORT/PROTO, e.g. 10.244.1.10:80/TCP"))?;
        let addr: SocketAddrV4 = addr
            .parse()
            .with_context(|| format!("{s:?}: {addr:?} is not IPv4:PORT"))?;
        let protocol = match proto.to_ascii_uppercase().as_str() {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            "SCTP" => Protocol::Sctp,
            _ => bail!("{s:?}: protocol {proto:?} is not TCP, UDP or SCTP"),
        };
        Ok(Target { addr, protocol })
    }
}

impl Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How a probe ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The server answered: the connection was made.
    Connected,
    /// The destination answered that nothing listens there (TCP RST, ICMP port unreachable,
    /// SCTP ABORT).
    Refused,
    /// Nothing came back in time (what a policy drop looks like).
    Timeout,
    /// Anything else (no route, a local error).
    Error,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Connected => "connected",
            Outcome::Refused => "refused",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
        })
    }
}

/// One probe's result, one JSON line of `fabric-lab probe`'s output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// What was probed.
    pub target: Target,
    /// How it ended.
    #[serde(rename = "result")]
    pub outcome: Outcome,
    /// How long it took, in milliseconds.
    pub ms: u64,
    /// The error behind `refused`/`error`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Reads `fabric-lab probe`'s output: one JSON [`ProbeResult`] per non-empty line.
pub fn parse_probe_output(text: &str) -> Result<Vec<ProbeResult>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("probe output line {}: {l:?}", i + 1))
        })
        .collect()
}

/// A random 32-bit value, never 0 (SCTP tags must not be).
pub fn random_u32() -> u32 {
    loop {
        let v = rand::random::<u32>();
        if v != 0 {
            return v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_print() {
        let t: Target = "10.244.1.10:80/tcp".parse().unwrap();
        assert_eq!(t, Target::new([10, 244, 1, 10].into(), 80, Protocol::Tcp));
        assert_eq!(t.to_string(), "10.244.1.10:80/TCP");
        let s: Target = "10.244.3.30:81/SCTP".parse().unwrap();
        assert_eq!(s.protocol, Protocol::Sctp);
        for bad in [
            "10.244.1.10:80",
            "10.244.1.10/TCP",
            "x:80/TCP",
            "10.0.0.1:80/ICMP",
            "10.0.0.1:99999/UDP",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
    }

    #[test]
    fn probe_output_round_trips() {
        let results = vec![
            ProbeResult {
                target: "10.0.0.1:80/UDP".parse().unwrap(),
                outcome: Outcome::Connected,
                ms: 3,
                detail: None,
            },
            ProbeResult {
                target: "10.0.0.2:81/SCTP".parse().unwrap(),
                outcome: Outcome::Refused,
                ms: 1,
                detail: Some("ABORT".into()),
            },
        ];
        let text: String = results
            .iter()
            .map(|r| serde_json::to_string(r).unwrap() + "\n")
            .collect();
        assert!(text.starts_with(r#"{"target":"10.0.0.1:80/UDP","result":"connected","ms":3}"#));
        assert_eq!(parse_probe_output(&text).unwrap(), results);
        assert!(parse_probe_output("{\"target\": 1}\n").is_err());
    }
}
