//! Traffic between namespaces: `ping` and a bounded `iperf3` run, with their output parsed.
//! Used by `fabric-lab up`'s demo and by benchmarks (which also run them between namespaces
//! that are not lab pods).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::process::{self, Cmd, Daemon};

/// The rtt summary of a `ping` run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PingSummary {
    /// Echo requests sent.
    pub transmitted: u32,
    /// Echo replies received.
    pub received: u32,
    /// Minimum round trip, ms.
    pub min_ms: f64,
    /// Average round trip, ms.
    pub avg_ms: f64,
    /// Maximum round trip, ms.
    pub max_ms: f64,
}

impl std::fmt::Display for PingSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} replies, rtt min/avg/max = {:.3}/{:.3}/{:.3} ms",
            self.received, self.transmitted, self.min_ms, self.avg_ms, self.max_ms
        )
    }
}

/// `ping -c COUNT -W 1 DST` from inside `netns`; fails unless every echo is answered.
pub fn ping(netns: &str, dst: Ipv4Addr, count: u32) -> Result<PingSummary> {
    let output = Cmd::in_netns(netns, "ping")
        .args(["-c", &count.to_string(), "-W", "1", &dst.to_string()])
        .timeout(Duration::from_secs(u64::from(count) * 2 + 5))
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary = parse_ping(&stdout)
        .with_context(|| format!("ping {dst} from {netns}: {}", stdout.trim()))?;
    if summary.received < summary.transmitted {
        bail!("ping {dst} from {netns}: {summary}");
    }
    Ok(summary)
}

/// Parses `ping`'s statistics lines.
pub fn parse_ping(out: &str) -> Result<PingSummary> {
    let stats = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .context("no statistics line")?;
    let number_before = |word: &str| -> Result<u32> {
        let idx = stats.find(word).with_context(|| format!("no {word:?}"))?;
        stats[..idx]
            .split_whitespace()
            .last()
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no count before {word:?}"))
    };
    let transmitted = number_before(" packets transmitted")?;
    let received = number_before(" received")?;
    let (min_ms, avg_ms, max_ms) = match out
        .lines()
        .find(|l| l.starts_with("rtt ") || l.starts_with("round-trip"))
    {
        Some(rtt) => {
            let values = rtt
                .split('=')
                .nth(1)
                .context("rtt line without values")?
                .trim()
                .trim_end_matches("ms")
                .trim();
            let v: Vec<f64> = values.split('/').filter_map(|x| x.parse().ok()).collect();
            match v.as_slice() {
                [min, avg, max, ..] => (*min, *avg, *max),
                _ => bail!("unparsable rtt line {rtt:?}"),
            }
        }
        None => (0.0, 0.0, 0.0),
    };
    Ok(PingSummary {
        transmitted,
        received,
        min_ms,
        avg_ms,
        max_ms,
    })
}

/// An iperf3 run's options.
#[derive(Debug, Clone)]
pub struct IperfOptions {
    /// Test length (`-t`).
    pub seconds: u32,
    /// Parallel streams (`-P`).
    pub parallel: u32,
    /// Server port (`-p`).
    pub port: u16,
    /// Extra client arguments (e.g. `-R`, `-u`, `-b 0`).
    pub extra: Vec<String>,
    /// Where the server's output goes.
    pub server_log: Option<PathBuf>,
}

impl Default for IperfOptions {
    fn default() -> Self {
        IperfOptions {
            seconds: 3,
            parallel: 1,
            port: 5201,
            extra: Vec::new(),
            server_log: None,
        }
    }
}

/// The outcome of an iperf3 run.
#[derive(Debug, Clone, Serialize)]
pub struct IperfSummary {
    /// Sender throughput, bit/s.
    pub sent_bps: f64,
    /// Receiver throughput, bit/s.
    pub received_bps: f64,
    /// TCP retransmits (0 for UDP).
    pub retransmits: u64,
    /// iperf3's full `-J` report.
    #[serde(skip)]
    pub report: serde_json::Value,
}

impl IperfSummary {
    /// Receiver throughput in Gbit/s.
    pub fn gbps(&self) -> f64 {
        self.received_bps / 1e9
    }
}

/// Runs `iperf3 -s -1` in `server_netns` (in the background, tracked by PID and always ended)
/// and `iperf3 -c server_ip -J` in `client_netns`.
pub fn iperf(
    server_netns: &str,
    server_ip: Ipv4Addr,
    client_netns: &str,
    opts: &IperfOptions,
) -> Result<IperfSummary> {
    let iperf3 = process::which("iperf3").context("iperf3 is not installed")?;
    let log = opts
        .server_log
        .clone()
        .unwrap_or_else(|| PathBuf::from("/dev/null"));
    let server = Cmd::in_netns(server_netns, &iperf3)
        .args(["-s", "-1", "-p", &opts.port.to_string()])
        .spawn_daemon(&log)
        .context("starting the iperf3 server")?;
    let result = run_client(&iperf3, &server, server_ip, client_netns, opts);
    server
        .terminate()
        .with_context(|| format!("stopping the iperf3 server (pid {})", server.pid))?;
    result
}

fn run_client(
    iperf3: &std::path::Path,
    server: &Daemon,
    server_ip: Ipv4Addr,
    client_netns: &str,
    opts: &IperfOptions,
) -> Result<IperfSummary> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let output = Cmd::in_netns(client_netns, iperf3)
            .args(["-c", &server_ip.to_string(), "-J"])
            .args(["-p", &opts.port.to_string()])
            .args(["-t", &opts.seconds.to_string()])
            .args(["-P", &opts.parallel.to_string()])
            .args(&opts.extra)
            .timeout(Duration::from_secs(u64::from(opts.seconds) + 20))
            .output()?;
        let report: serde_json::Value =
            serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
        // iperf3 -J may exit 0 and still report an error (e.g. connection refused).
        if output.status.success() && report["error"].is_null() {
            return parse_iperf(report);
        }
        let error = report["error"].as_str().unwrap_or("").to_string();
        // The server may not be listening yet: retry refused connections briefly.
        if error.contains("refused") && server.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        bail!(
            "iperf3 client in {client_netns} to {server_ip} failed: {}",
            if error.is_empty() {
                String::from_utf8_lossy(&output.stderr).trim().to_string()
            } else {
                error
            }
        );
    }
}

/// Extracts throughput and retransmits from an iperf3 `-J` report (TCP or UDP).
pub fn parse_iperf(report: serde_json::Value) -> Result<IperfSummary> {
    let end = &report["end"];
    let (sent, received) = if end["sum_sent"].is_object() {
        (&end["sum_sent"], &end["sum_received"])
    } else {
        (&end["sum"], &end["sum"])
    };
    let sent_bps = sent["bits_per_second"].as_f64().with_context(|| {
        format!(
            "iperf3 report without end.sum_sent.bits_per_second (error: {})",
            report["error"]
        )
    })?;
    let received_bps = received["bits_per_second"].as_f64().unwrap_or(sent_bps);
    Ok(IperfSummary {
        sent_bps,
        received_bps,
        retransmits: sent["retransmits"].as_u64().unwrap_or(0),
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ping() {
        let out = "PING 10.244.3.2 (10.244.3.2) 56(84) bytes of data.\n\
                   64 bytes from 10.244.3.2: icmp_seq=1 ttl=62 time=0.101 ms\n\n\
                   --- 10.244.3.2 ping statistics ---\n\
                   3 packets transmitted, 3 received, 0% packet loss, time 2040ms\n\
                   rtt min/avg/max/mdev = 0.071/0.089/0.101/0.012 ms\n";
        let s = parse_ping(out).unwrap();
        assert_eq!((s.transmitted, s.received), (3, 3));
        assert_eq!((s.min_ms, s.avg_ms, s.max_ms), (0.071, 0.089, 0.101));
        assert!(s.to_string().contains("0.071/0.089/0.101"));

        let lost = "3 packets transmitted, 0 received, +3 errors, 100% packet loss, time 2030ms\n";
        let s = parse_ping(lost).unwrap();
        assert_eq!((s.transmitted, s.received), (3, 0));
        assert!(parse_ping("ping: connect: Network is unreachable").is_err());
    }

    #[test]
    fn parses_iperf_tcp_and_udp() {
        let tcp = serde_json::json!({"end": {
            "sum_sent": {"bits_per_second": 9.5e9, "retransmits": 12},
            "sum_received": {"bits_per_second": 9.4e9}
        }});
        let s = parse_iperf(tcp).unwrap();
        assert_eq!(s.retransmits, 12);
        assert!((s.gbps() - 9.4).abs() < 1e-9);

        let udp = serde_json::json!({"end": {"sum": {"bits_per_second": 1e6}}});
        let s = parse_iperf(udp).unwrap();
        assert_eq!((s.sent_bps, s.retransmits), (1e6, 0));
        assert!(parse_iperf(serde_json::json!({"error": "x"})).is_err());
    }
}
