//! One bounded iperf3 TCP run between two namespaces, like `fabric_lab::demo::iperf` (server
//! `iperf3 -s -1` tracked by PID and always ended, client `-J -t`) but keeping the raw client
//! output and the server log, so an unusable report can be shown and the run retried.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fabric_lab::demo::{parse_iperf, IperfSummary};
use fabric_lab::process::{self, Cmd};

use crate::report::Run;

/// The server's port (inside the server's own namespace).
const PORT: &str = "5201";

/// What one attempt left behind when its report was unusable.
#[derive(Debug)]
pub struct Failure {
    /// Why.
    pub error: anyhow::Error,
    /// The client's stdout, stderr and the server's log, shortened.
    pub evidence: String,
}

/// Runs `iperf3 -c server_ip -J -t seconds -P streams` in `client_netns` against a one-off
/// server in `server_netns` logging to `server_log`. `Err(Failure)` carries the raw outputs.
pub fn run(
    server_netns: &str,
    server_ip: Ipv4Addr,
    client_netns: &str,
    streams: u32,
    seconds: u32,
    server_log: &Path,
) -> Result<IperfSummary, Failure> {
    let fail = |error: anyhow::Error, evidence: String| Failure { error, evidence };
    let iperf3 = process::which("iperf3")
        .context("iperf3 is not installed")
        .map_err(|e| fail(e, String::new()))?;
    let _ = std::fs::remove_file(server_log);
    let server = Cmd::in_netns(server_netns, &iperf3)
        .args(["-s", "-1", "-p", PORT])
        .spawn_daemon(server_log)
        .context("starting the iperf3 server")
        .map_err(|e| fail(e, String::new()))?;
    let result = client(&iperf3, server_ip, client_netns, streams, seconds, || {
        server.is_running()
    });
    if let Err(e) = server.terminate() {
        eprintln!("stopping the iperf3 server (pid {}): {e:#}", server.pid);
    }
    result.map_err(|(error, stdout, stderr)| {
        let log = std::fs::read_to_string(server_log).unwrap_or_default();
        fail(
            error,
            format!(
                "client stdout: {}\nclient stderr: {}\nserver log: {}",
                shorten(&stdout),
                shorten(&stderr),
                shorten(&log)
            ),
        )
    })
}

type ClientError = (anyhow::Error, String, String);

fn client(
    iperf3: &Path,
    server_ip: Ipv4Addr,
    client_netns: &str,
    streams: u32,
    seconds: u32,
    server_up: impl Fn() -> bool,
) -> Result<IperfSummary, ClientError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let output = Cmd::in_netns(client_netns, iperf3)
            .args(["-c", &server_ip.to_string(), "-J", "-p", PORT])
            .args(["-t", &seconds.to_string(), "-P", &streams.to_string()])
            .timeout(Duration::from_secs(u64::from(seconds) + 20))
            .output()
            .map_err(|e| (e, String::new(), String::new()))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let report: serde_json::Value =
            serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
        let error = report["error"].as_str().unwrap_or_default().to_string();
        // The server may not be listening yet: retry refused connections briefly.
        if error.contains("refused") && server_up() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        let parsed = if output.status.success() {
            parse_iperf(report)
        } else {
            Err(anyhow::anyhow!(
                "iperf3 client exited with {}: {}",
                process::describe_status(output.status),
                if error.is_empty() {
                    stderr.trim()
                } else {
                    &error
                }
            ))
        };
        return match parsed {
            Ok(summary) => Ok(summary),
            Err(e) => Err((e, stdout, stderr)),
        };
    }
}

/// The first and last 600 characters of `s` (iperf3 reports are long).
fn shorten(s: &str) -> String {
    let s = s.trim();
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= 1200 {
        return s.to_string();
    }
    let head: String = chars[..600].iter().collect();
    let tail: String = chars[chars.len() - 600..].iter().collect();
    format!("{head} [...] {tail}")
}

/// The figures of a summary the tables show: receiver Gbit/s, retransmits, and iperf3's own
/// process CPU on both ends.
pub fn to_run(summary: &IperfSummary) -> Run {
    let cpu = &summary.report["end"]["cpu_utilization_percent"];
    Run {
        gbps: summary.gbps(),
        retransmits: summary.retransmits,
        sender_cpu: cpu["host_total"].as_f64().unwrap_or(f64::NAN),
        receiver_cpu: cpu["remote_total"].as_f64().unwrap_or(f64::NAN),
    }
}

/// Gbit the receiver got (`end.sum_received.bytes`), else Gbit/s × the sender's seconds.
pub fn received_gbit(summary: &IperfSummary) -> f64 {
    let end = &summary.report["end"];
    match end["sum_received"]["bytes"].as_f64() {
        Some(bytes) => bytes * 8.0 / 1e9,
        None => summary.gbps() * end["sum_sent"]["seconds"].as_f64().unwrap_or(f64::NAN),
    }
}

/// Runs [`run`] up to `attempts` times; returns the summary and the failed attempts' errors.
pub fn run_with_retries(
    attempts: usize,
    server_netns: &str,
    server_ip: Ipv4Addr,
    client_netns: &str,
    streams: u32,
    seconds: u32,
    server_log: &Path,
) -> Result<(IperfSummary, Vec<String>)> {
    let mut failures = Vec::new();
    for attempt in 1..=attempts {
        match run(
            server_netns,
            server_ip,
            client_netns,
            streams,
            seconds,
            server_log,
        ) {
            Ok(summary) => return Ok((summary, failures)),
            Err(f) => {
                eprintln!(
                    "iperf3 attempt {attempt}/{attempts} {client_netns} -> {server_ip} failed: {:#}\n{}",
                    f.error, f.evidence
                );
                failures.push(format!("{:#}", f.error));
            }
        }
    }
    bail!(
        "iperf3 {client_netns} -> {server_ip} failed {attempts} times: {}",
        failures.join("; ")
    )
}
