//! End-to-end tests of the wireguard backend: pods on three nodes reach each other over
//! ICMP, TCP and UDP; what crosses the underlay is WireGuard only, never the payload; a wrong
//! published key stops traffic and fixing it heals; a restarted daemon keeps its key and its
//! tunnels come back; a deleted WireGuard device is re-created and traffic resumes; `wg show`
//! works against the daemon.

use std::io::Read;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use fabric_lab::{Backend, Lab, Signal};
use fabric_tests::{eventually, ping, spec, tcp_connect, up, Listeners, Transfer};
use serde_json::Value;

/// The WireGuard device the lab gave `node`.
fn wg_iface(lab: &Lab, node: &str) -> String {
    fabric_lab::node::wg_iface(&lab.node(node).unwrap().netns)
}

/// Sends one UDP datagram carrying `payload` from `from` to `to_ip:port` (a listener in
/// `to`) and returns what the listener received.
fn udp_roundtrip(
    lab: &Lab,
    from: &str,
    to: &str,
    to_ip: Ipv4Addr,
    payload: &str,
) -> Result<String> {
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.netns(to)?,
            "timeout",
            "5",
            "nc",
            "-u",
            "-l",
            "-W",
            "1",
            "-p",
            "9000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    let send = format!("echo {payload} | nc -u -w 1 {to_ip} 9000");
    lab.exec(from, &["sh", "-c", &send])?;
    let status = server.wait()?;
    let mut got = String::new();
    server
        .stdout
        .take()
        .context("stdout")?
        .read_to_string(&mut got)?;
    ensure!(status.success() || !got.is_empty(), "no datagram arrived");
    Ok(got)
}

#[test]
fn wireguard_three_nodes_icmp_tcp_udp() {
    let lab = up(spec("wgmesh", 3, 1, Backend::Wireguard));
    let pods = lab.pods().to_vec();
    let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
    let _tcp = Listeners::start(&lab, &names, 8080).unwrap();
    for from in &pods {
        for to in pods.iter().filter(|p| p.name != from.name) {
            eventually(Duration::from_secs(5), || ping(&lab, &from.name, to.ip)).unwrap();
            eventually(Duration::from_secs(5), || {
                tcp_connect(&lab, &from.name, to.ip, 8080)
            })
            .unwrap();
            let got = udp_roundtrip(&lab, &from.name, &to.name, to.ip, "datagram").unwrap();
            assert!(
                got.contains("datagram"),
                "{} -> {}: {got:?}",
                from.name,
                to.name
            );
        }
    }
    // MTU = underlay 1500 - 80, on the device and in the pods.
    let mtu = lab
        .exec_ok("node1-pod1", &["cat", "/sys/class/net/eth0/mtu"])
        .unwrap();
    assert_eq!(mtu.trim(), "1420");
}

#[test]
fn underlay_carries_only_wireguard_never_the_payload() {
    let lab = up(spec("wgcap", 2, 1, Backend::Wireguard));
    let (a, b) = (&lab.pods()[0], &lab.pods()[1]);
    eventually(Duration::from_secs(5), || ping(&lab, &a.name, b.ip)).unwrap();
    let dir = tempfile_dir();
    let pcap = dir.join("underlay.pcap");
    let (n1, n2) = (lab.nodes()[0].underlay_ip, lab.nodes()[1].underlay_ip);
    let filter = format!("host {n1} and host {n2}");
    let mut capture = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.netns("sw").unwrap(),
            "timeout",
            "20",
            "tcpdump",
            "-i",
            "br0",
            "-U",
            "-w",
        ])
        .arg(&pcap)
        .arg(&filter)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let marker = "FABRIC-MARKER-7f3a9c";
    let _l = Listeners::start(&lab, &[b.name.as_str()], 8080).unwrap();
    let send = format!(
        "for i in 1 2 3; do echo {marker}; done | nc -w 1 {} 8080",
        b.ip
    );
    lab.exec_ok(&a.name, &["sh", "-c", &send]).unwrap();
    udp_roundtrip(&lab, &a.name, &b.name, b.ip, marker).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let _ = Command::new("kill")
        .arg("-INT")
        .arg(capture.id().to_string())
        .status();
    let _ = capture.wait();
    let bytes = std::fs::read(&pcap).unwrap();
    assert!(
        bytes.len() > 500,
        "the capture saw the traffic ({} bytes)",
        bytes.len()
    );
    assert!(
        !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "the marker crossed the underlay in clear text"
    );
    let other = Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(&pcap)
        .arg("not (udp port 51820)")
        .output()
        .unwrap();
    let other = String::from_utf8_lossy(&other.stdout);
    assert!(
        other.trim().is_empty(),
        "non-WireGuard traffic between the nodes: {other}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "fabric-wg-{}-{:?}",
        std::process::id(),
        Instant::now()
    ));
    let dir = std::path::PathBuf::from(dir.to_string_lossy().replace([' ', '{', '}', ':'], ""));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn wg_show_lists_peers_with_handshakes_and_transfer() {
    let lab = up(spec("wgshow", 3, 1, Backend::Wireguard));
    let (a, b) = (&lab.pods()[0], &lab.pods()[1]);
    eventually(Duration::from_secs(5), || ping(&lab, &a.name, b.ip)).unwrap();
    let iface = wg_iface(&lab, "node1");
    let out = lab.exec_ok("node1", &["wg", "show", &iface]).unwrap();
    assert_eq!(out.matches("peer: ").count(), 2, "{out}");
    assert!(out.contains("endpoint: 172.30.0.12:51820"), "{out}");
    assert!(out.contains("allowed ips: 10.244."), "{out}");
    assert!(out.contains("latest handshake:"), "{out}");
    assert!(out.contains("transfer:"), "{out}");
    assert!(out.contains("private key: (hidden)"), "{out}");
    let dump = lab
        .exec_ok("node1", &["wg", "show", &iface, "public-key"])
        .unwrap();
    let leases = lab.leases().unwrap();
    let published = leases
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["node"] == "node1")
        .map(|l| {
            l["backend_data"]["public_key"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .unwrap();
    assert_eq!(dump.trim(), published);
}

fn lease_of<'a>(leases: &'a Value, node: &str) -> &'a Value {
    leases
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["node"] == node)
        .unwrap()
}

/// Rewrites `node`'s lease record in etcd (keeping its etcd lease), as a broken or malicious
/// writer would.
fn put_lease(lab: &Lab, subnet: &str, record: &Value) -> Result<()> {
    let key = format!("/fabric/subnets/{}", subnet.replace('/', "-"));
    let got = lab.exec_ok(
        "etcd",
        &[
            "etcdctl",
            "--endpoints",
            "http://127.0.0.1:2379",
            "get",
            &key,
            "-w",
            "json",
        ],
    )?;
    let got: Value = serde_json::from_str(&got)?;
    let lease = got["kvs"][0]["lease"].as_i64().context("lease id")?;
    lab.exec_ok(
        "etcd",
        &[
            "etcdctl",
            "--endpoints",
            "http://127.0.0.1:2379",
            "put",
            &key,
            &record.to_string(),
            &format!("--lease={lease:x}"),
        ],
    )?;
    Ok(())
}

#[test]
fn wrong_published_key_blocks_traffic_and_fixing_it_heals() {
    let lab = up(spec("wgkey", 2, 1, Backend::Wireguard));
    let (a, b) = (lab.pods()[0].clone(), lab.pods()[1].clone());
    eventually(Duration::from_secs(5), || ping(&lab, &a.name, b.ip)).unwrap();
    let leases = lab.leases().unwrap();
    let original = lease_of(&leases, "node2").clone();
    let subnet = original["subnet"].as_str().unwrap().to_string();
    let record = |key: &str| {
        serde_json::json!({
            "node": "node2",
            "public_ip": original["public_ip"],
            "backend_type": "wireguard",
            "backend_data": {"public_key": key, "port": original["backend_data"]["port"]},
        })
    };
    let bogus = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    put_lease(&lab, &subnet, &record(bogus)).unwrap();
    // node1 now talks to a key node2 does not hold: nothing gets through.
    eventually(Duration::from_secs(10), || {
        ensure!(ping(&lab, &a.name, b.ip).is_err(), "traffic still flows");
        Ok(())
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        ping(&lab, &a.name, b.ip).is_err(),
        "a wrong key must not carry traffic"
    );
    put_lease(
        &lab,
        &subnet,
        &record(original["backend_data"]["public_key"].as_str().unwrap()),
    )
    .unwrap();
    eventually(Duration::from_secs(15), || ping(&lab, &a.name, b.ip)).unwrap();
}

#[test]
fn restarted_daemon_keeps_its_key_and_tunnels_come_back() {
    let mut lab = up(spec("wgrestart", 2, 1, Backend::Wireguard));
    let (a, b) = (lab.pods()[0].clone(), lab.pods()[1].clone());
    eventually(Duration::from_secs(5), || ping(&lab, &a.name, b.ip)).unwrap();
    let before = lease_of(&lab.leases().unwrap(), "node2")["backend_data"].clone();
    lab.stop_fabricd("node2", Signal::SIGKILL).unwrap();
    lab.start_fabricd("node2").unwrap();
    let after = lease_of(&lab.leases().unwrap(), "node2")["backend_data"].clone();
    assert_eq!(before, after, "same key and port after restart");
    let start = Instant::now();
    eventually(Duration::from_secs(2), || ping(&lab, &a.name, b.ip)).unwrap();
    eventually(Duration::from_secs(2), || ping(&lab, &b.name, a.ip)).unwrap();
    assert!(start.elapsed() < Duration::from_secs(4));

    // A transfer running across a restart resumes.
    let transfer = Transfer::start(&b.netns, b.ip, &a.netns, 8).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    lab.stop_fabricd("node2", Signal::SIGKILL).unwrap();
    lab.start_fabricd("node2").unwrap();
    let report = transfer.finish().unwrap();
    assert!(report.error.is_none(), "iperf3 failed: {:?}", report.error);
    let last = report.intervals.last().copied().unwrap_or(0.0);
    assert!(last > 1e6, "traffic did not resume: {:?}", report.intervals);
}

/// Kills a child process when dropped (test cleanup on failure too).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `fabricctl peers -o json` on `node`.
fn peers_report(lab: &Lab, node: &str) -> Result<Value> {
    let fabricctl = lab.state().bin_dir.join("fabricctl");
    let socket = lab.node(node)?.socket.display().to_string();
    let out = lab.exec_ok(
        node,
        &[
            fabricctl.to_str().context("path")?,
            "peers",
            "--socket",
            &socket,
            "-o",
            "json",
        ],
    )?;
    Ok(serde_json::from_str(&out)?)
}

#[test]
fn junk_datagrams_are_dropped_counted_and_harmless() {
    let lab = up(spec("wgjunk", 2, 1, Backend::Wireguard));
    let (a, b) = (lab.pods()[0].clone(), lab.pods()[1].clone());
    eventually(Duration::from_secs(5), || ping(&lab, &a.name, b.ip)).unwrap();
    let target = format!("{} 51820", lab.node("node2").unwrap().underlay_ip);
    // Each payload is written to a file first, so that nc sends it as one datagram.
    let junk: [(&str, Vec<u8>); 4] = [
        // Not a WireGuard message at all.
        ("garbage", b"garbage".to_vec()),
        // Truncated handshake initiation.
        ("truncated", vec![1, 0, 0, 0, 1, 2]),
        // A data message for a receiver index nobody holds.
        (
            "unknown",
            [&[4u8, 0, 0, 0, 0, 0xff, 0xff, 0xff][..], &[0u8; 48]].concat(),
        ),
        // A well-formed 148-byte initiation from a key nobody knows.
        ("stranger", [&[1u8, 0, 0, 0][..], &[0xa5u8; 144]].concat()),
    ];
    for (name, bytes) in &junk {
        let path = lab.state_dir().join(format!("junk-{name}"));
        std::fs::write(&path, bytes).unwrap();
        for _ in 0..5 {
            let send = format!("nc -u -w 0 {target} < {}", path.display());
            lab.exec_ok("node1", &["sh", "-c", &send]).unwrap();
        }
    }
    let report = eventually(Duration::from_secs(5), || {
        let r = peers_report(&lab, "node2")?;
        let d = &r["dropped"];
        let count = |k: &str| d[k].as_u64().unwrap_or(0);
        ensure!(
            count("malformed") >= 10 && count("unknown_peer") >= 5 && count("rejected") >= 5,
            "not all junk counted yet: {d}"
        );
        Ok(r)
    })
    .unwrap();
    // The daemon is unharmed and the tunnel still carries traffic.
    assert!(lab.node("node2").unwrap().running());
    ping(&lab, &a.name, b.ip).unwrap();
    // And the report shows the peer with a handshake and traffic.
    let peer = &report["peers"][0];
    assert_eq!(peer["node"], "node1");
    assert!(
        peer["latest_handshake_secs_ago"].as_u64().is_some(),
        "{peer}"
    );
    assert!(peer["rx_bytes"].as_u64().unwrap() > 0, "{peer}");
}

/// UDP payloads of the packets in a pcap file (Ethernet, IPv4, UDP).
fn udp_payloads(pcap: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let len = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().unwrap()) as usize;
        let frame = &pcap[at + 16..(at + 16 + len).min(pcap.len())];
        at += 16 + len;
        if frame.len() < 14 + 20 + 8 {
            continue;
        }
        let ihl = usize::from(frame[14] & 0x0f) * 4;
        out.push(frame[14 + ihl + 8..].to_vec());
    }
    out
}

#[test]
fn replayed_datagrams_are_refused_and_counted() {
    let lab = up(spec("wgreplay", 2, 1, Backend::Wireguard));
    let (a, b) = (lab.pods()[0].clone(), lab.pods()[1].clone());
    eventually(Duration::from_secs(5), || ping(&lab, &a.name, b.ip)).unwrap();
    let (n1, n2) = (lab.nodes()[0].underlay_ip, lab.nodes()[1].underlay_ip);
    let pcap = lab.state_dir().join("replay.pcap");
    let capture = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.netns("sw").unwrap(),
            "timeout",
            "10",
            "tcpdump",
            "-i",
            "br0",
            "-c",
            "5",
            "-U",
            "-w",
        ])
        .arg(&pcap)
        .arg(format!(
            "udp and src host {n1} and dst host {n2} and dst port 51820 and greater 300"
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let capture = KillOnDrop(capture);
    std::thread::sleep(Duration::from_secs(1));
    lab.exec_ok(
        &a.name,
        &[
            "ping",
            "-c",
            "5",
            "-i",
            "0.2",
            "-s",
            "400",
            &b.ip.to_string(),
        ],
    )
    .unwrap();
    drop(capture);
    let datagrams = udp_payloads(&std::fs::read(&pcap).unwrap());
    let data = datagrams
        .iter()
        .find(|d| d.first() == Some(&4))
        .expect("a captured WireGuard data message");
    let before = peers_report(&lab, "node2").unwrap()["dropped"]["rejected"]
        .as_u64()
        .unwrap();
    let replay = lab.state_dir().join("replay.bin");
    std::fs::write(&replay, data).unwrap();
    for _ in 0..3 {
        let send = format!("nc -u -w 0 {n2} 51820 < {}", replay.display());
        lab.exec_ok("node1", &["sh", "-c", &send]).unwrap();
    }
    eventually(Duration::from_secs(5), || {
        let now = peers_report(&lab, "node2")?["dropped"]["rejected"]
            .as_u64()
            .unwrap_or(0);
        ensure!(
            now >= before + 3,
            "replays not refused yet: {before} -> {now}"
        );
        Ok(())
    })
    .unwrap();
    ping(&lab, &a.name, b.ip).unwrap();
}

/// Replies to `ping -c count -i interval -W 1 ip` from `from`.
fn ping_replies(lab: &Lab, from: &str, ip: Ipv4Addr, count: u32) -> Result<u32> {
    let out = lab.exec(
        from,
        &[
            "ping",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "1",
            &ip.to_string(),
        ],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let received = text
        .split(',')
        .find_map(|part| part.trim().strip_suffix(" received")?.parse().ok())
        .with_context(|| format!("no ping summary in {text:?}"))?;
    Ok(received)
}

/// What a user checks while an attacker who read node2's lease floods its WireGuard port
/// with valid-mac1 handshake initiations from unknown keys (30k/s): the pods across the
/// tunnel keep talking, a peer that restarts completes a new handshake (with the cookie the
/// loaded node demands), and the flood buys neither key exchanges past the limiter nor a
/// cookie reply per message.
#[test]
fn handshake_flood_leaves_tunnels_and_new_handshakes_working() {
    const RATE: u32 = 30_000;
    let mut lab = up(spec("wgflood", 2, 1, Backend::Wireguard));
    let (a, b) = (lab.pods()[0].clone(), lab.pods()[1].clone());
    eventually(Duration::from_secs(5), || ping(&lab, &a.name, b.ip)).unwrap();
    let key = lease_of(&lab.leases().unwrap(), "node2")["backend_data"]["public_key"]
        .as_str()
        .unwrap()
        .to_string();
    let target = format!("{}:51820", lab.node("node2").unwrap().underlay_ip);
    let lab_bin = lab.state().bin_dir.join("fabric-lab");
    let flood_started = Instant::now();
    // From node1's underlay namespace, self-bounded to 60 s, killed at the end of the test.
    let _flood = KillOnDrop(
        Command::new("ip")
            .args(["netns", "exec", &lab.netns("node1").unwrap()])
            .arg(&lab_bin)
            .args(["wg-flood", "--target", &target, "--public-key", &key])
            .args(["--rate", &RATE.to_string(), "--seconds", "60"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_secs(2));

    // The established tunnel carries pings with little loss, and a TCP transfer.
    let got = ping_replies(&lab, &a.name, b.ip, 20).unwrap();
    assert!(got >= 18, "{got}/20 pings answered during the flood");
    let transfer = Transfer::start(&b.netns, b.ip, &a.netns, 4).unwrap();
    let report = transfer.finish().unwrap();
    assert!(report.error.is_none(), "iperf3 failed: {:?}", report.error);
    assert!(
        !report.intervals.is_empty() && report.intervals.iter().all(|&bps| bps > 1e6),
        "the transfer stalled during the flood: {:?}",
        report.intervals
    );

    // node1 restarts with no sessions: its new handshake must get through the loaded node2.
    lab.stop_fabricd("node1", Signal::SIGKILL).unwrap();
    lab.start_fabricd("node1").unwrap();
    eventually(Duration::from_secs(30), || ping(&lab, &a.name, b.ip)).unwrap();
    ping(&lab, &b.name, a.ip).unwrap();
    let fresh = &peers_report(&lab, "node1").unwrap()["peers"][0];
    assert!(fresh["latest_handshake_secs_ago"].is_u64(), "{fresh}");
    // The flood did arrive, and node2 refused it without key exchanges past its limiter's
    // 100/s, answering the flooder with a few cookie replies a second, not one per message.
    let report = peers_report(&lab, "node2").unwrap();
    let flooded = flood_started.elapsed().as_secs() + 1;
    let dropped = &report["dropped"];
    let count = |k: &str| dropped[k].as_u64().unwrap_or(0);
    assert!(
        count("under_load") + count("unanswered") > u64::from(RATE),
        "{dropped}"
    );
    // The limiter's 100 a second, with slack for when its count is reset (every 1 to 1.25 s).
    assert!(
        count("unknown_peer") <= 150 * flooded,
        "key exchanges past the limit: {dropped} in {flooded} s"
    );
    assert!(
        count("under_load") <= 10 + 5 * flooded + 20,
        "cookie replies not rationed: {dropped} in {flooded} s"
    );
}

/// `/healthz` of fabricd on `node`: the HTTP status and the body.
fn healthz(lab: &Lab, node: &str) -> Result<(u16, String)> {
    let url = format!("http://{}/healthz", fabric_lab::node::HEALTHZ_ADDR);
    let out = lab.exec(
        node,
        &["curl", "-s", "-m", "2", "-w", "\n%{http_code}", &url],
    )?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').context("no status from curl")?;
    Ok((code.trim().parse()?, body.to_string()))
}

/// The interface index and MTU of `iface` on `node` (`ip -o link show`).
fn link_of(lab: &Lab, node: &str, iface: &str) -> Result<(u32, u32)> {
    let out = lab.exec_ok(node, &["ip", "-o", "link", "show", "dev", iface])?;
    let index = out.split(':').next().context("no index")?.trim().parse()?;
    let mtu = out
        .split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .context("no mtu")?
        .parse()?;
    Ok((index, mtu))
}

/// What an operator sees after someone deletes the WireGuard device on a node (`ip link del`):
/// within a resync period or two fabricd has a new device with its MTU, address and routes,
/// pods talk across the tunnel again both ways, and `/healthz` is healthy.
#[test]
fn a_deleted_wireguard_device_is_recreated_and_traffic_resumes() {
    const RESYNC: Duration = Duration::from_secs(2);
    let mut lab = up(spec("wgdel", 2, 1, Backend::Wireguard));
    lab.restart_fabricd_with("node1", &["--resync-interval", "2s"])
        .unwrap();
    let (a, b) = (lab.pods()[0].clone(), lab.pods()[1].clone());
    eventually(Duration::from_secs(10), || ping(&lab, &a.name, b.ip)).unwrap();
    let _tcp = Listeners::start(&lab, &[b.name.as_str()], 8080).unwrap();
    tcp_connect(&lab, &a.name, b.ip, 8080).unwrap();
    let iface = wg_iface(&lab, "node1");
    let (index, mtu) = link_of(&lab, "node1", &iface).unwrap();
    let subnet2 = lease_of(&lab.leases().unwrap(), "node2")["subnet"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(healthz(&lab, "node1").unwrap().0, 200);

    // Deleted, and `/healthz` asked at once: it fails naming the device, unless a reconcile
    // came in between and the device is back already.
    let url = format!("http://{}/healthz", fabric_lab::node::HEALTHZ_ADDR);
    let script = format!(
        "ip link del {iface} && curl -s -m 2 -w '\\n%{{http_code}}' {url}; echo; \
         ip -o link show dev {iface} 2>/dev/null | cut -d: -f1"
    );
    let out = lab.exec_ok("node1", &["sh", "-c", &script]).unwrap();
    let deleted = Instant::now();
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    match lines.as_slice() {
        [body, "500", ..] => assert!(
            body.contains(&format!("the WireGuard device {iface} is gone")),
            "{out}"
        ),
        [_, "200", again] => assert_ne!(again.trim(), index.to_string(), "{out}"),
        _ => panic!("unexpected /healthz answer: {out:?}"),
    }
    // Traffic both ways resumes within two resync periods and the time a ping takes.
    eventually(RESYNC * 2 + Duration::from_secs(6), || {
        ping(&lab, &a.name, b.ip)?;
        ping(&lab, &b.name, a.ip)
    })
    .unwrap();
    let resumed = deleted.elapsed();
    tcp_connect(&lab, &a.name, b.ip, 8080).unwrap();
    // A new device, as the old one was: MTU, the node's address, a route to node2's subnet.
    let (new_index, new_mtu) = link_of(&lab, "node1", &iface).unwrap();
    assert_ne!(new_index, index, "the device is a new one");
    assert_eq!(new_mtu, mtu);
    let routes = lab
        .exec_ok("node1", &["ip", "route", "show", "dev", &iface])
        .unwrap();
    assert!(routes.contains(&subnet2), "{routes}");
    let node1_subnet = lease_of(&lab.leases().unwrap(), "node1")["subnet"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let addresses = lab
        .exec_ok("node1", &["ip", "-o", "addr", "show", "dev", &iface])
        .unwrap();
    assert!(
        addresses.contains(&format!("{node1_subnet}/32")),
        "{addresses}"
    );
    // Healthy again (no stopped data path thread, the device served), and it said why.
    let (status, body) = eventually(Duration::from_secs(5), || {
        let (status, body) = healthz(&lab, "node1")?;
        ensure!(status == 200, "{status} {body}");
        Ok((status, body))
    })
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let log = std::fs::read_to_string(&lab.node("node1").unwrap().log).unwrap();
    assert!(
        log.contains("the WireGuard device was deleted; re-created it"),
        "fabricd did not say it re-created the device"
    );
    eprintln!("traffic resumed {resumed:?} after the device was deleted");
}
