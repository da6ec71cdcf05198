//! NetworkPolicy on the packet path: the first packet of every new forwarded connection from
//! a local pod isolated for egress, or to a local pod isolated for ingress, goes to NFQUEUE;
//! the daemon judges it against the compiled policy and accepts (marking the packet, whose
//! mark the rules save into the connection's conntrack mark, so the rest of the connection
//! stays in the kernel) or drops it. New connections no local isolated pod takes part in are
//! accepted in the kernel and marked allowed at once: only isolated pods pay for policy, as
//! with Calico. Replies to accepted connections pass as ESTABLISHED.
//!
//! Which pods are queued follows the policy view: [`Queued::of`] computes it, and the chain
//! is replaced whenever it changes. Each node judges the whole decision (egress at the
//! source and ingress at the destination) for what it queues, so a connection between two
//! isolated pods on different nodes is judged on both.
//!
//! This kernel has nft's `queue` expression off, so the rules go through iptables (the
//! xtables NFQUEUE target, via iptables-nft), in a chain of fabric's own.
//!
//! [`Flow::parse`] and [`judge`] are pure; [`install_rules`] and [`serve`] are the shell.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::{Arc, RwLock};

use anyhow::{bail, Context, Result};
use policy::{Cluster, Direction, Pod, Protocol};

/// The first queue new connections wait in; with several queues, they are numbered from it.
pub const QUEUE: u16 = 0;

/// How the queue rules are built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleOptions {
    /// While no daemon listens, let queued packets through (`--queue-bypass`) instead of
    /// dropping them.
    pub fail_open: bool,
    /// How many queues (from [`QUEUE`]); with more than one, the CPU that handles a packet
    /// picks its queue (`--queue-cpu-fanout`), and each queue has a thread on that CPU.
    pub queues: u16,
}

/// The packet and connection mark bit meaning "policy allowed this connection".
pub const ALLOWED: u32 = 0x0004_0000;

/// fabric's iptables chain.
pub const CHAIN: &str = "FABRIC-POLICY";

/// The parts of a connection's first packet that policy looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Transport: a port-carrying protocol with its destination port, or something else
    /// (ICMP, ...).
    pub transport: Transport,
}

/// A flow's transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TCP, UDP or SCTP to this destination port.
    Port(Protocol, u16),
    /// Any other IP protocol (ICMP, ...): only rules without a port list admit it.
    Other(u8),
}

impl Flow {
    /// Reads an IPv4 packet's addresses, protocol and destination port. `None` for what is
    /// not IPv4 or too short to say.
    pub fn parse(packet: &[u8]) -> Option<Self> {
        if packet.len() < 20 || packet[0] >> 4 != 4 {
            return None;
        }
        let ihl = usize::from(packet[0] & 0x0f) * 4;
        let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
        let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
        let proto = packet[9];
        let protocol = match proto {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            132 => Some(Protocol::Sctp),
            _ => None,
        };
        let transport = match protocol {
            Some(p) => {
                let port = packet.get(ihl + 2..ihl + 4)?;
                Transport::Port(p, u16::from_be_bytes([port[0], port[1]]))
            }
            None => Transport::Other(proto),
        };
        Some(Self {
            src,
            dst,
            transport,
        })
    }
}

/// Whether policy lets `flow` start: egress allowed at the source and ingress at the
/// destination. A protocol without ports is admitted only by rules without a port list,
/// which is what deciding "TCP to port 0" asks (no port list ever names port 0).
pub fn judge(cluster: &Cluster, flow: &Flow) -> bool {
    let (protocol, port) = match flow.transport {
        Transport::Port(p, port) => (p, port),
        Transport::Other(_) => (Protocol::Tcp, 0),
    };
    cluster
        .decide(
            cluster.endpoint(flow.src),
            cluster.endpoint(flow.dst),
            protocol,
            port,
        )
        .allowed
}

/// The local pods whose new connections wait for a verdict: those isolated for egress (as
/// sources) and those isolated for ingress (as destinations).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Queued {
    /// Local pods isolated for egress.
    pub egress: BTreeSet<Ipv4Addr>,
    /// Local pods isolated for ingress.
    pub ingress: BTreeSet<Ipv4Addr>,
}

impl Queued {
    /// Which of `local` (this node's pods) `cluster` isolates, per direction.
    pub fn of<'a>(cluster: &Cluster, local: impl IntoIterator<Item = &'a Pod>) -> Self {
        let mut out = Queued::default();
        for pod in local {
            let Some(id) = cluster.pod_id(&pod.key) else {
                continue;
            };
            let isolated = |d| !cluster.classifier().isolating_policies(id, d).is_empty();
            if isolated(Direction::Egress) {
                out.egress.insert(pod.ip);
            }
            if isolated(Direction::Ingress) {
                out.ingress.insert(pod.ip);
            }
        }
        out
    }
}

/// The rules, for `iptables-restore --noflush`: established and already-allowed connections
/// pass; a packet the daemon marked allowed gets its mark saved on the connection; packets
/// conntrack cannot place are dropped: INVALID ones, and TCP segments without SYN that
/// conntrack would pick up as new (the middle of a cut connection, in either direction); a new
/// connection from or to a `queued` pod waits in the queue; any other new connection is
/// marked allowed (so a later policy change re-judges it) and passes. With `fail_open`, the
/// queue lets packets through while no daemon listens; otherwise they are dropped: isolated
/// pods fail closed.
pub fn rules(options: RuleOptions, queued: &Queued) -> String {
    let bypass = if options.fail_open {
        " --queue-bypass"
    } else {
        ""
    };
    let target = match options.queues {
        0 | 1 => format!("--queue-num {QUEUE}"),
        n => format!(
            "--queue-balance {QUEUE}:{} --queue-cpu-fanout",
            QUEUE + n - 1
        ),
    };
    let queue = format!("-m conntrack --ctstate NEW -j NFQUEUE {target}{bypass}");
    let mut out = format!(
        "*filter\n\
         :{CHAIN} - [0:0]\n\
         -A {CHAIN} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n\
         -A {CHAIN} -m connmark --mark {ALLOWED:#x}/{ALLOWED:#x} -j ACCEPT\n\
         -A {CHAIN} -m mark --mark {ALLOWED:#x}/{ALLOWED:#x} -j CONNMARK --save-mark --mask {ALLOWED:#x}\n\
         -A {CHAIN} -m mark --mark {ALLOWED:#x}/{ALLOWED:#x} -j ACCEPT\n\
         -A {CHAIN} -m conntrack --ctstate INVALID -j DROP\n\
         -A {CHAIN} -p tcp -m tcp ! --syn -m conntrack --ctstate NEW -j DROP\n"
    );
    for ip in &queued.egress {
        out.push_str(&format!("-A {CHAIN} -s {ip}/32 {queue}\n"));
    }
    for ip in &queued.ingress {
        out.push_str(&format!("-A {CHAIN} -d {ip}/32 {queue}\n"));
    }
    out.push_str(&format!(
        "-A {CHAIN} -m conntrack --ctstate NEW -j CONNMARK --set-mark {ALLOWED:#x}/{ALLOWED:#x}\n\
         -A {CHAIN} -m conntrack --ctstate NEW -j ACCEPT\n\
         COMMIT\n"
    ));
    out
}

fn iptables(args: &[&str]) -> Result<bool> {
    let status = Command::new("iptables")
        .args(["-w"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("cannot run iptables (install the iptables package)")?;
    Ok(status.success())
}

/// Installs the chain (replacing its rules, atomically) and hooks it first into FORWARD.
pub fn install_rules(options: RuleOptions, queued: &Queued) -> Result<()> {
    let mut child = Command::new("iptables-restore")
        .args(["-w", "--noflush"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run iptables-restore (install the iptables package)")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(rules(options, queued).as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "iptables-restore refused the policy chain: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if !iptables(&["-C", "FORWARD", "-j", CHAIN])?
        && !iptables(&["-I", "FORWARD", "1", "-j", CHAIN])?
    {
        bail!("cannot hook {CHAIN} into FORWARD");
    }
    Ok(())
}

/// Removes what [`install_rules`] installed, if anything: the FORWARD hook, then the chain.
/// fabricd calls it when it starts with enforcement off, so that a queue rule left by an
/// earlier run does not hold new connections for a daemon that no longer answers.
pub fn remove_rules() -> Result<bool> {
    let mut removed = false;
    while iptables(&["-D", "FORWARD", "-j", CHAIN])? {
        removed = true;
    }
    if iptables(&["-F", CHAIN])? {
        removed |= iptables(&["-X", CHAIN])?;
    }
    Ok(removed)
}

/// An allowed connection as conntrack lists it: its original direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracked {
    /// The flow as first seen.
    pub flow: Flow,
    /// Its source port (to name the conntrack entry), if it has ports.
    pub sport: Option<u16>,
}

/// Reads one line of `conntrack -L` (original direction first).
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

/// Re-judges every allowed connection inside `cluster` against `view` and cuts those policy no
/// longer allows: their conntrack entries go, and their next packets arrive mid-stream, which
/// the queue drops (see [`judge_packet`]). Allowed connections are left alone.
pub fn rejudge(cluster: &Cluster, cluster_net: ipnet::Ipv4Net) -> Result<usize> {
    let mark = format!("{ALLOWED:#x}/{ALLOWED:#x}");
    let listed = conntrack(&["-L".into(), "-m".into(), mark.clone()])?;
    let mut cut = 0;
    for tracked in listed.lines().filter_map(parse_tracked) {
        let f = &tracked.flow;
        if !cluster_net.contains(&f.dst) || judge(cluster, f) {
            continue;
        }
        let mut args: Vec<String> = vec!["-D".into(), "-m".into(), mark.clone()];
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
            _ => continue,
        }
        conntrack(&args)?;
        cut += 1;
    }
    Ok(cut)
}

/// Judges a queued packet. A TCP packet without SYN is the middle of a connection conntrack
/// does not know (its entry was cut, or it never was allowed): it is dropped rather than
/// judged, because its direction need not be the connection's.
pub fn judge_packet(cluster: &Cluster, packet: &[u8]) -> bool {
    let Some(flow) = Flow::parse(packet) else {
        return true;
    };
    if let Transport::Port(Protocol::Tcp, _) = flow.transport {
        let ihl = usize::from(packet[0] & 0x0f) * 4;
        let syn = packet.get(ihl + 13).is_some_and(|flags| flags & 0x02 != 0);
        if !syn {
            return false;
        }
    }
    judge(cluster, &flow)
}

/// The policy view the queue judges against, replaced whole when the datastore changes; each
/// [`crate::policies::Snapshot`] derefs to its [`Cluster`] and carries the etcd revision it
/// reflects.
pub type View = Arc<RwLock<Arc<crate::policies::Snapshot>>>;

/// Serves queues `QUEUE..QUEUE + queues`, each on a thread of its own (pinned to the CPU
/// whose packets it gets when there are several, and under SCHED_FIFO), until the process
/// ends.
pub fn serve(view: View, queues: u16) -> Result<()> {
    for i in 0..queues.max(1) {
        let num = QUEUE + i;
        let mut queue = nfq::Queue::open().context("opening NFQUEUE")?;
        queue
            .bind(num)
            .with_context(|| format!("binding NFQUEUE {num}"))?;
        // Only the headers are needed.
        queue
            .set_copy_range(num, 64)
            .context("setting the NFQUEUE copy range")?;
        let view = view.clone();
        let pin = (queues > 1).then_some(usize::from(i));
        std::thread::Builder::new()
            .name(format!("policy-queue-{num}"))
            .spawn(move || {
                prioritize(pin);
                loop {
                    answer(&mut queue, &view);
                }
            })?;
    }
    Ok(())
}

/// Receives one queued packet, judges it, and gives the verdict.
fn answer(queue: &mut nfq::Queue, view: &View) {
    let mut msg = match queue.recv() {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "NFQUEUE receive failed");
            std::thread::sleep(std::time::Duration::from_millis(100));
            return;
        }
    };
    let cluster = view.read().unwrap_or_else(|e| e.into_inner()).clone();
    if judge_packet(&cluster, msg.get_payload()) {
        msg.set_nfmark(msg.get_nfmark() | ALLOWED);
        msg.set_verdict(nfq::Verdict::Repeat);
    } else {
        msg.set_verdict(nfq::Verdict::Drop);
    }
    if let Err(e) = queue.verdict(msg) {
        tracing::error!(error = %e, "NFQUEUE verdict failed");
    }
}

/// Runs the calling (queue) thread under SCHED_FIFO, on CPU `pin` if given: every new
/// connection of an isolated pod waits for it, so on a busy node it must not wait behind
/// ordinary threads for a CPU. It blocks in `recv` between packets, and the kernel's
/// real-time throttling bounds it anyway. Where the scheduler refuses (no CAP_SYS_NICE), it
/// runs as it is.
fn prioritize(pin: Option<usize>) {
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: sets the scheduling policy of the calling thread; `param` outlives the call.
    let rc = unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
    if rc != 0 {
        let error = std::io::Error::from_raw_os_error(rc);
        tracing::warn!(%error, "cannot run the policy queue under SCHED_FIFO");
    }
    if let Some(cpu) = pin {
        let mut set = nix::sched::CpuSet::new();
        let pinned = set
            .set(cpu)
            .and_then(|()| nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set));
        if let Err(error) = pinned {
            tracing::warn!(%error, cpu, "cannot pin the policy queue thread");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy::{NetworkPolicy, Pod, PodKey};

    fn packet(proto: u8, dport: u16) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[9] = proto;
        p[12..16].copy_from_slice(&[10, 244, 1, 10]);
        p[16..20].copy_from_slice(&[10, 244, 2, 10]);
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p
    }

    fn one(fail_open: bool) -> RuleOptions {
        RuleOptions {
            fail_open,
            queues: 1,
        }
    }

    #[test]
    fn several_queues_fan_out_by_cpu() {
        let q = Queued {
            egress: BTreeSet::from([Ipv4Addr::new(10, 244, 1, 2)]),
            ingress: BTreeSet::new(),
        };
        let text = rules(
            RuleOptions {
                fail_open: true,
                queues: 4,
            },
            &q,
        );
        assert!(
            text.contains("-s 10.244.1.2/32 -m conntrack --ctstate NEW -j NFQUEUE --queue-balance 0:3 --queue-cpu-fanout --queue-bypass"),
            "{text}"
        );
        assert!(rules(one(false), &q).contains("-j NFQUEUE --queue-num 0\n"));
    }

    #[test]
    fn only_isolated_local_pods_are_queued() {
        let mut c = Cluster::new();
        c.upsert_namespace("x", Default::default());
        let pod = |name: &str, last: u8| Pod {
            key: PodKey::new("x", name),
            labels: [("app".to_string(), name.to_string())].into(),
            ip: Ipv4Addr::new(10, 244, 1, last),
            ports: vec![],
        };
        let (web, db, other) = (pod("web", 2), pod("db", 3), pod("other", 4));
        for p in [&web, &db, &other] {
            c.upsert_pod(p.clone());
        }
        assert_eq!(
            Queued::of(&c, [&web, &db]),
            Queued::default(),
            "nothing isolated"
        );
        let np: NetworkPolicy = serde_yaml::from_str(
            "metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Ingress]\n",
        )
        .unwrap();
        c.upsert_policy(&np).unwrap();
        let np: NetworkPolicy = serde_yaml::from_str(
            "metadata: {name: q, namespace: x}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n",
        )
        .unwrap();
        c.upsert_policy(&np).unwrap();
        let q = Queued::of(&c, [&web, &db]);
        assert_eq!(q.ingress, BTreeSet::from([web.ip]));
        assert_eq!(q.egress, BTreeSet::from([web.ip, db.ip]), "only local pods");

        let text = rules(one(false), &q);
        let queue_web_in = text
            .find("-d 10.244.1.2/32 -m conntrack --ctstate NEW -j NFQUEUE")
            .unwrap();
        let queue_db_out = text
            .find("-s 10.244.1.3/32 -m conntrack --ctstate NEW -j NFQUEUE")
            .unwrap();
        let pass = text.find("--ctstate NEW -j CONNMARK --set-mark").unwrap();
        let invalid = text.find("--ctstate INVALID -j DROP").unwrap();
        assert!(invalid < queue_web_in && queue_db_out < pass, "{text}");
        let midstream = text
            .find("-p tcp -m tcp ! --syn -m conntrack --ctstate NEW -j DROP")
            .unwrap();
        assert!(
            midstream < queue_web_in,
            "mid-stream TCP never takes the fast path\n{text}"
        );
        assert!(!text.contains("10.244.1.4"), "{text}");
        assert!(!text.contains("--queue-bypass"));
        assert!(rules(one(true), &q).contains("--queue-bypass"));
        let open = rules(one(false), &Queued::default());
        assert!(
            !open.contains("NFQUEUE"),
            "nothing isolated: nothing queued\n{open}"
        );
    }

    #[test]
    fn reads_conntrack_listings() {
        let t = parse_tracked("tcp      6 431998 ESTABLISHED src=10.244.44.1 dst=10.244.29.1 sport=59140 dport=5201 src=10.244.29.1 dst=10.244.44.1 sport=5201 dport=59140 [ASSURED] mark=262144 use=1").unwrap();
        assert_eq!(t.flow.src, Ipv4Addr::new(10, 244, 44, 1));
        assert_eq!(t.flow.transport, Transport::Port(Protocol::Tcp, 5201));
        assert_eq!(t.sport, Some(59140));
        let icmp = parse_tracked("icmp     1 18 src=10.244.44.1 dst=10.244.29.1 type=8 code=0 id=12114 src=10.244.29.1 dst=10.244.44.1 type=0 code=0 id=12114 mark=262144 use=1").unwrap();
        assert_eq!(icmp.flow.transport, Transport::Other(1));
        assert_eq!(
            parse_tracked("conntrack v1.4.7 (conntrack-tools): 2 flow entries have been shown."),
            None
        );
    }

    #[test]
    fn mid_stream_tcp_is_dropped_syn_is_judged() {
        let c = Cluster::new();
        let mut syn = packet(6, 80);
        syn.resize(40, 0);
        syn[33] = 0x02;
        assert!(judge_packet(&c, &syn));
        syn[33] = 0x10;
        assert!(!judge_packet(&c, &syn));
        assert!(judge_packet(&c, &packet(17, 53)));
    }

    #[test]
    fn parses_ports_and_other_protocols() {
        let f = Flow::parse(&packet(6, 80)).unwrap();
        assert_eq!(f.transport, Transport::Port(Protocol::Tcp, 80));
        assert_eq!(f.dst, Ipv4Addr::new(10, 244, 2, 10));
        assert_eq!(
            Flow::parse(&packet(132, 81)).unwrap().transport,
            Transport::Port(Protocol::Sctp, 81)
        );
        assert_eq!(
            Flow::parse(&packet(1, 0)).unwrap().transport,
            Transport::Other(1)
        );
        assert_eq!(Flow::parse(&packet(6, 80)[..21]), None);
        assert_eq!(Flow::parse(&[0x60; 40]), None);
    }

    #[test]
    fn judges_ports_and_icmp_like_the_rules_say() {
        let mut c = Cluster::new();
        c.upsert_namespace("x", Default::default());
        c.upsert_namespace("y", Default::default());
        for (ns, ip) in [("x", [10, 244, 1, 10]), ("y", [10, 244, 2, 10])] {
            c.upsert_pod(Pod {
                key: PodKey::new(ns, "p"),
                labels: Default::default(),
                ip: ip.into(),
                ports: vec![],
            });
        }
        let tcp80 = |icmp| if icmp { packet(1, 0) } else { packet(6, 80) };
        assert!(
            judge(&c, &Flow::parse(&tcp80(false)).unwrap()),
            "not isolated"
        );
        let np: NetworkPolicy = serde_yaml::from_str(
            "metadata: {name: web, namespace: y}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n  ingress:\n  - ports: [{port: 80}]\n",
        )
        .unwrap();
        c.upsert_policy(&np).unwrap();
        assert!(judge(&c, &Flow::parse(&packet(6, 80)).unwrap()));
        assert!(!judge(&c, &Flow::parse(&packet(6, 81)).unwrap()));
        assert!(
            !judge(&c, &Flow::parse(&packet(1, 0)).unwrap()),
            "a port rule does not admit ICMP"
        );
        let all: NetworkPolicy = serde_yaml::from_str(
            "metadata: {name: all, namespace: y}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n  ingress:\n  - {}\n",
        )
        .unwrap();
        c.upsert_policy(&all).unwrap();
        assert!(
            judge(&c, &Flow::parse(&packet(1, 0)).unwrap()),
            "a rule without ports admits ICMP"
        );
    }
}
