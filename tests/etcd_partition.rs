//! etcd out of a node's reach for longer than the lease TTL, blackholed rather than refused
//! (`Lab::partition_from_etcd` drops etcd's packets at the node, both ways, so its connections
//! hang), as an operator would check it: mid-run, pods keep talking across nodes and policy
//! keeps being enforced (the other nodes keep an expired lease one more TTL), a pod added on
//! the cut-off node still gets its network and lands in the policy view of the other nodes
//! once etcd is back, fabricd backs off instead of spinning and `/healthz` stays healthy (an
//! outage is not a hang: kubelet must not restart every fabricd during one); at start,
//! fabricd waits for etcd without exiting and converges once it is back. Either way the node
//! gets its subnet back: nobody else took it.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use fabric_lab::{Backend, Lab, PodSpec, Signal};
use fabric_tests::{eventually, ping, spec, up, Listeners};

/// The lease TTL mid-run. The lease renewed last at most a third of it before the cut
/// expires in etcd 32-48 s into [`PARTITION`]; the other nodes keep it one more TTL, to
/// 80-96 s, past the partition's end.
const TTL: Duration = Duration::from_secs(48);

/// How long a node stays cut off mid-run: past its lease's expiry in etcd, and past the 60 s
/// a datastore follower may go without coming round before `/healthz` calls it stuck
/// (`fabric::health::FOLLOWER_STUCK`), so a follower that stopped beating while it retried
/// would show.
const PARTITION: Duration = Duration::from_secs(70);

/// The lease TTL at start: short, so the old lease runs out within [`START_PARTITION`].
const START_TTL: Duration = Duration::from_secs(10);

/// How long a node stays cut off at start.
const START_PARTITION: Duration = Duration::from_secs(30);

/// A 2-node VXLAN lab with no pods, leasing for `ttl`.
fn lab(tag: &str, ttl: Duration) -> Lab {
    let mut spec = spec(tag, 2, 0, Backend::Vxlan);
    spec.lease_ttl = ttl;
    up(spec)
}

/// `GET path` of fabricd's health endpoints on `node`: the HTTP status and the body.
fn health(lab: &Lab, node: &str, path: &str) -> Result<(u16, String)> {
    let url = format!("http://{}{path}", fabric_lab::node::HEALTHZ_ADDR);
    let out = lab.exec(
        node,
        &["curl", "-s", "-m", "2", "-w", "\n%{http_code}", &url],
    )?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').context("no status from curl")?;
    Ok((code.trim().parse()?, body.to_string()))
}

/// Fails unless `/healthz` on `node` answers 200.
fn healthy(lab: &Lab, node: &str) -> Result<()> {
    let (status, body) = health(lab, node, "/healthz")?;
    ensure!(status == 200, "{node} /healthz: {status} {body}");
    Ok(())
}

/// The pid of fabricd on `node`.
fn fabricd_pid(lab: &Lab, node: &str) -> i32 {
    lab.node(node)
        .unwrap()
        .fabricd
        .as_ref()
        .expect("running")
        .pid
}

/// CPU time (user + system) process `pid` has used, from `/proc/PID/stat`.
fn cpu_time(pid: i32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) in parentheses: state is field 3,
    // utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(") ").context("no command in stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()?;
    let per_sec: u64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    Ok(Duration::from_millis(ticks * 1000 / per_sec))
}

/// Whether `from` can open a TCP connection to `ip:port` (within 2 s).
fn connects(lab: &Lab, from: &str, ip: std::net::Ipv4Addr, port: u16) -> bool {
    fabric_tests::tcp_connect(lab, from, ip, port).is_ok()
}

/// Waits until every node's fabricd enforces what etcd holds.
fn sync(lab: &Lab) {
    for node in lab.nodes() {
        let socket = node.socket.display().to_string();
        lab.fabricctl_local(&["policy", "sync", "--socket", &socket])
            .unwrap_or_else(|e| panic!("policy sync on {}: {e:#}", node.name));
    }
}

/// Lines of `node`'s log written after its first `from` bytes.
fn log_since(lab: &Lab, node: &str, from: usize) -> String {
    let log = std::fs::read(&lab.node(node).unwrap().log).unwrap_or_default();
    String::from_utf8_lossy(log.get(from..).unwrap_or_default()).into_owned()
}

fn log_len(lab: &Lab, node: &str) -> usize {
    std::fs::metadata(&lab.node(node).unwrap().log).map_or(0, |m| m.len() as usize)
}

/// `b` in `y` admits pods `a` and `c` of namespace `x` on port 80 only; nothing else.
const POLICIES: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: y}
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-x, namespace: y}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: x}}
      podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, c]}]}
    ports:
    - {port: 80, protocol: TCP}
"#;

#[test]
fn a_node_cut_off_from_etcd_past_its_lease_keeps_traffic_and_policy_and_catches_up() {
    let mut lab = lab("cutoff", TTL);
    let x = |name: &str| PodSpec::new(name).namespace("x").label("pod", name);
    let a = lab.add_pod("node1", x("a")).unwrap();
    let b = lab
        .add_pod("node2", PodSpec::new("b").namespace("y").label("pod", "b"))
        .unwrap();
    lab.fabricctl(&["namespace", "label", "x", "ns=x"]).unwrap();
    let file = lab.state_dir().join("policies.yaml");
    std::fs::write(&file, POLICIES).unwrap();
    lab.fabricctl(&["policy", "apply", "-f", &file.display().to_string()])
        .unwrap();
    sync(&lab);
    let _servers = Listeners::start(&lab, &[&b.name], 80).unwrap();
    let _denied = Listeners::start(&lab, &[&b.name], 81).unwrap();
    eventually(Duration::from_secs(10), || {
        ensure!(connects(&lab, &a.name, b.ip, 80), "a cannot reach b:80");
        Ok(())
    })
    .unwrap();
    assert!(!connects(&lab, &a.name, b.ip, 81), "b:81 is not allowed");
    let subnet1 = lab.subnets().unwrap()["node1"].clone();
    let pid = fabricd_pid(&lab, "node1");
    let log_from = log_len(&lab, "node1");

    let cpu_before = cpu_time(pid).unwrap();
    let cut = Instant::now();
    lab.partition_from_etcd("node1").unwrap();

    // A pod added on the cut-off node gets its network, without waiting on etcd for long.
    let added = Instant::now();
    let c = lab.add_pod("node1", x("c")).unwrap();
    let add_took = added.elapsed();
    eprintln!("CNI ADD on the cut-off node took {add_took:?}");
    assert!(add_took < Duration::from_secs(15), "ADD took {add_took:?}");
    ping(&lab, &c.name, a.ip).unwrap();

    // Until well past the lease's expiry in etcd (which the rest of the cluster sees), every
    // second: traffic across nodes flows, policy is enforced, both nodes are healthy.
    let mut expired = false;
    let mut checks = 0;
    while cut.elapsed() < PARTITION {
        let round = Instant::now();
        // (b admits no ICMP: its isolation allows TCP 80 only.)
        if let Err(e) = ping(&lab, &b.name, a.ip) {
            panic!(
                "{e:#} {:?} into the partition (lease expired: {expired});\nnode1:\n{}\nnode2:\n{}",
                cut.elapsed(),
                lab.log_tail("node1"),
                lab.log_tail("node2")
            );
        }
        assert!(
            connects(&lab, &a.name, b.ip, 80),
            "a cannot reach b:80 {:?} into the partition (lease expired: {expired})",
            cut.elapsed()
        );
        assert!(!connects(&lab, &a.name, b.ip, 81), "b:81 opened");
        for node in ["node1", "node2"] {
            healthy(&lab, node)
                .unwrap_or_else(|e| panic!("{e:#} {:?} into the partition", cut.elapsed()));
        }
        if !expired {
            expired = !lab.subnets().unwrap().contains_key("node1");
        }
        checks += 1;
        std::thread::sleep(Duration::from_secs(1).saturating_sub(round.elapsed()));
    }
    assert!(expired, "node1's lease did not expire in {PARTITION:?}");
    // Without its record in etcd, node2 does not know c: the policy's pod selector does not
    // match an address it does not know (fail closed).
    assert!(!connects(&lab, &c.name, b.ip, 80), "c reached b:80 unknown");

    // Relists and retries back off: fabricd slept through the partition.
    let cut_for = cut.elapsed();
    let cpu = cpu_time(pid).unwrap().saturating_sub(cpu_before);
    let log = log_since(&lab, "node1", log_from);
    let relists = log.matches("cannot list").count();
    eprintln!(
        "cut off for {cut_for:?} ({checks} checks): fabricd used {cpu:?} of CPU, logged {relists} failed relists"
    );
    for line in log.lines().filter(|l| l.contains("watch broke")) {
        eprintln!("  {line}");
    }
    assert!(
        cpu < cut_for / 10,
        "fabricd used {cpu:?} of CPU in {cut_for:?} cut off"
    );
    assert!(relists >= 2, "no relist was tried:\n{log}");
    assert!(relists <= 40, "{relists} relists in {cut_for:?}:\n{log}");
    assert!(
        log.contains("retry_in"),
        "retries say when they come:\n{log}"
    );

    lab.heal_etcd_partition("node1").unwrap();
    // The node takes its subnet back (nobody else took it; it notices the lease lost at its
    // next renewal, a third of the TTL) and is ready again.
    eventually(TTL / 3 + Duration::from_secs(20), || {
        let subnets = lab.subnets()?;
        match subnets.get("node1") {
            Some(s) if *s == subnet1 => Ok(()),
            Some(s) => bail!("node1 came back on {s}, not {subnet1}"),
            None => bail!("node1 holds no lease yet"),
        }
    })
    .unwrap();
    eventually(Duration::from_secs(20), || {
        let (status, body) = health(&lab, "node1", "/readyz")?;
        ensure!(status == 200, "/readyz {status} {body}");
        Ok(())
    })
    .unwrap();
    // c's record lands (its write is retried with a backoff capped at 30 s), and node2's
    // policy view has it: the policy admits it by its labels.
    eventually(Duration::from_secs(60), || {
        let pods = lab.fabricctl(&["pod", "list"])?;
        ensure!(
            pods.lines()
                .any(|l| l.starts_with("x/c ") && l.contains(&c.ip.to_string())),
            "x/c is not registered:\n{pods}"
        );
        Ok(())
    })
    .unwrap();
    sync(&lab);
    eventually(Duration::from_secs(10), || {
        ensure!(connects(&lab, &c.name, b.ip, 80), "c cannot reach b:80");
        Ok(())
    })
    .unwrap();
    assert!(!connects(&lab, &c.name, b.ip, 81), "b:81 opened for c");
    assert!(connects(&lab, &a.name, b.ip, 80));
    healthy(&lab, "node1").unwrap();
    assert_eq!(fabricd_pid(&lab, "node1"), pid, "fabricd was restarted");
}

#[test]
fn fabricd_started_cut_off_from_etcd_waits_for_it_and_converges() {
    let mut lab = lab("startcut", START_TTL);
    let a = lab.add_pod("node1", PodSpec::new("a")).unwrap();
    let b = lab.add_pod("node2", PodSpec::new("b")).unwrap();
    ping(&lab, &a.name, b.ip).unwrap();
    let subnet1 = lab.subnets().unwrap()["node1"].clone();

    lab.stop_fabricd("node1", Signal::SIGTERM).unwrap();
    lab.partition_from_etcd("node1").unwrap();
    let log_from = log_len(&lab, "node1");
    lab.start_fabricd_unready("node1").unwrap();
    let cut = Instant::now();
    let mut expired = false;
    while cut.elapsed() < START_PARTITION {
        let round = Instant::now();
        let daemon = lab.node("node1").unwrap().fabricd.clone().unwrap();
        assert!(
            daemon.is_running(),
            "fabricd exited cut off from etcd:\n{}",
            lab.log_tail("node1")
        );
        healthy(&lab, "node1").unwrap();
        let (ready, _) = health(&lab, "node1", "/readyz").unwrap();
        assert_eq!(ready, 503, "ready without a lease");
        if !expired {
            expired = !lab.subnets().unwrap().contains_key("node1");
        }
        std::thread::sleep(Duration::from_secs(1).saturating_sub(round.elapsed()));
    }
    assert!(
        expired,
        "node1's old lease did not expire in {START_PARTITION:?}"
    );
    let log = log_since(&lab, "node1", log_from);
    let attempts = log.matches("connecting to the datastore failed").count();
    assert!(
        (2..=20).contains(&attempts),
        "{attempts} connection attempts in {START_PARTITION:?}:\n{log}"
    );

    lab.heal_etcd_partition("node1").unwrap();
    lab.wait_ready("node1").unwrap();
    eventually(Duration::from_secs(20), || {
        let subnets = lab.subnets()?;
        ensure!(
            subnets.get("node1") == Some(&subnet1),
            "node1 holds {:?}, not {subnet1}",
            subnets.get("node1")
        );
        Ok(())
    })
    .unwrap();
    eventually(Duration::from_secs(20), || {
        ping(&lab, &a.name, b.ip)?;
        ping(&lab, &b.name, a.ip)
    })
    .unwrap();
    healthy(&lab, "node1").unwrap();
}
