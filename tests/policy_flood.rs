//! End to end: a new-connection flood from one isolated pod does not starve the other isolated
//! pods of verdicts. Every new connection of an isolated pod waits in the node's NFQUEUE; the
//! per-source limit in front of it (`--policy-new-flow-limit`, default 1000/s, burst 2000)
//! drops the flooder's excess before it gets there, so a neighbour's connections are still
//! judged at once.
//!
//! The flood is both kinds a pod can send: full connections as fast as they complete
//! (`fabric-lab connect-rate`, closed loop), and SYNs as fast as the pod can write them (a
//! raw socket, open loop: what a broken or hostile pod sends). The second is the one that
//! fills the queue.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use fabric_lab::{Backend, Lab, PodSpec};
use fabric_tests::{spec, up, Listeners};

/// The port both servers listen on.
const PORT: u16 = 80;

/// How long the flood lasts.
const FLOOD_SECONDS: u64 = 8;

/// Connections the flooder keeps in flight at once.
const FLOOD_CONCURRENCY: usize = 1000;

/// The most SYNs the raw flood sends (it stops after [`FLOOD_SECONDS`] anyway).
const SYN_FLOOD_MAX: u64 = 5_000_000;

/// A SYN flood (Python, raw socket: `SRC DST PORT SECONDS COUNT`): SYNs from `SRC` to
/// `DST:PORT`, each from another source port (so each is a new connection to conntrack), for
/// at most `SECONDS` and `COUNT` packets; prints how many it sent.
const SYN_FLOOD: &str = r#"
import socket, struct, sys, time
src, dst, port, seconds, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
tcp = struct.Struct("!HHIIBBHHH")
pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, 20)
words = pseudo + tcp.pack(0, port, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
base = sum(struct.unpack("!%dH" % (len(words) // 2), words))
def checksum(sport):
    x = base + sport
    while x >> 16:
        x = (x & 0xffff) + (x >> 16)
    return ~x & 0xffff
end, sent = time.monotonic() + seconds, 0
while sent < count and (sent % 1024 or time.monotonic() < end):
    sport = 1024 + sent % 64000
    s.sendto(tcp.pack(sport, port, 1, 0, 5 << 4, 0x02, 65535, checksum(sport), 0), (dst, 0))
    sent += 1
print(sent)
"#;

/// The neighbour's connection attempts during the flood, and how many must succeed.
const ATTEMPTS: usize = 20;
const MUST_SUCCEED: usize = 19;

/// How long one of the neighbour's connections may take: less than TCP's first SYN
/// retransmission, so a SYN dropped anywhere on the way counts as a failure.
const PROMPTLY: Duration = Duration::from_secs(1);

/// Pod `a` may connect only to `s`, pod `b` only to `t` (both on port [`PORT`]).
const POLICIES: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-to-s, namespace: flood}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - podSelector: {matchLabels: {app: s}}
    ports: [{port: 80}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-to-t, namespace: flood}
spec:
  podSelector: {matchLabels: {app: b}}
  policyTypes: [Egress]
  egress:
  - to:
    - podSelector: {matchLabels: {app: t}}
    ports: [{port: 80}]
"#;

/// One connection from `from` to `ip:PORT` with a [`PROMPTLY`] budget: whether it was made,
/// and how long it took.
fn connect_once(lab: &Lab, from: &str, ip: Ipv4Addr) -> Result<(bool, Duration)> {
    let started = Instant::now();
    let out = lab.exec(
        from,
        &["nc", "-z", "-w", "1", &ip.to_string(), &PORT.to_string()],
    )?;
    Ok((out.status.success(), started.elapsed()))
}

/// The packets the per-source limit dropped on `node`: the DROP rule's counter in the queue
/// chain (`iptables -L FABRIC-POLICY-QUEUE -v`), as an operator reads it.
fn limit_drops(lab: &Lab, node: &str) -> Result<u64> {
    let listing = lab.exec_ok(
        node,
        &[
            "iptables",
            "-w",
            "-L",
            "FABRIC-POLICY-QUEUE",
            "-v",
            "-n",
            "-x",
        ],
    )?;
    let rule = listing
        .lines()
        .find(|l| l.contains("DROP") && l.contains("limit: above"))
        .with_context(|| format!("no limit rule in FABRIC-POLICY-QUEUE:\n{listing}"))?;
    rule.split_whitespace()
        .next()
        .and_then(|pkts| pkts.parse().ok())
        .with_context(|| format!("no packet count in {rule:?}"))
}

#[test]
fn a_new_connection_flood_does_not_starve_other_pods() {
    let mut lab = up(spec("polflood", 1, 0, Backend::Vxlan));
    let pod = |lab: &mut Lab, name: &str| {
        lab.add_pod(
            "node1",
            PodSpec::new(name).namespace("flood").label("app", name),
        )
        .unwrap()
    };
    let a = pod(&mut lab, "a");
    pod(&mut lab, "b");
    let s = pod(&mut lab, "s");
    let t = pod(&mut lab, "t");
    let _servers = Listeners::porter(&lab, &["s", "t"], PORT).unwrap();
    let file = lab.state_dir().join("flood-policies.yaml");
    std::fs::write(&file, POLICIES).unwrap();
    lab.fabricctl(&["policy", "apply", "-f", &file.display().to_string()])
        .unwrap();
    let socket = lab.node("node1").unwrap().socket.display().to_string();
    lab.fabricctl(&["policy", "sync", "--socket", &socket])
        .unwrap();
    // Isolated, and allowed where they go.
    assert!(connect_once(&lab, "b", t.ip).unwrap().0, "b cannot reach t");
    assert!(
        !connect_once(&lab, "b", s.ip).unwrap().0,
        "b is not isolated"
    );
    assert!(connect_once(&lab, "a", s.ip).unwrap().0, "a cannot reach s");
    let drops_before = limit_drops(&lab, "node1").unwrap();

    let agent = lab.state().bin_dir.join("fabric-lab").display().to_string();
    let to = format!("{}:{PORT}", s.ip);
    let (flood, syns, probes) = std::thread::scope(|scope| {
        let syns = scope.spawn(|| {
            lab.exec_cmd(
                "a",
                &[
                    "python3",
                    "-c",
                    SYN_FLOOD,
                    &a.ip.to_string(),
                    &s.ip.to_string(),
                    &PORT.to_string(),
                    &FLOOD_SECONDS.to_string(),
                    &SYN_FLOOD_MAX.to_string(),
                ],
            )?
            .timeout(Duration::from_secs(FLOOD_SECONDS + 30))
            .run()
        });
        let flood = scope.spawn(|| {
            lab.exec_cmd(
                "a",
                &[
                    &agent,
                    "connect-rate",
                    "--to",
                    &to,
                    "--seconds",
                    &FLOOD_SECONDS.to_string(),
                    "--concurrency",
                    &FLOOD_CONCURRENCY.to_string(),
                ],
            )?
            .timeout(Duration::from_secs(FLOOD_SECONDS + 30))
            .run()
        });
        // Let the flood build up, then probe through the rest of it.
        std::thread::sleep(Duration::from_secs(2));
        let gap = Duration::from_secs(FLOOD_SECONDS - 4) / ATTEMPTS as u32;
        let probes: Vec<(bool, Duration)> = (0..ATTEMPTS)
            .map(|_| {
                let probe = connect_once(&lab, "b", t.ip).unwrap();
                std::thread::sleep(gap.saturating_sub(probe.1));
                probe
            })
            .collect();
        (flood.join().unwrap(), syns.join().unwrap(), probes)
    });
    let flood = flood.expect("the connection flood ran");
    let syns = syns.expect("the SYN flood ran (python3 with raw sockets)");
    let prompt = probes
        .iter()
        .filter(|(ok, took)| *ok && *took < PROMPTLY)
        .count();
    let drops = limit_drops(&lab, "node1").unwrap() - drops_before;
    eprintln!(
        "flood from a: {} and {} SYNs; b's connections: {prompt}/{ATTEMPTS} made within {PROMPTLY:?} \
         ({probes:?}); dropped by the per-source limit: {drops}",
        flood.trim(),
        syns.trim()
    );
    assert!(
        prompt >= MUST_SUCCEED,
        "b's connections starved during a's flood: {prompt}/{ATTEMPTS} made within \
         {PROMPTLY:?}: {probes:?}"
    );
    assert!(
        drops > 0,
        "the per-source limit dropped nothing of a's flood"
    );
    // The flood's own connections went on at the limit's pace, not stopped.
    let made: serde_json::Value = serde_json::from_str(flood.trim()).unwrap();
    assert!(made["connections"].as_u64().unwrap() > 0, "{flood}");
    lab.down().unwrap();
}
