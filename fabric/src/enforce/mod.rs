//! NetworkPolicy on the packet path: the first packet of every new forwarded connection from
//! a local pod isolated for egress, or to a local pod isolated for ingress, goes to NFQUEUE;
//! the daemon judges it against the compiled policy and accepts (marking the packet, whose
//! mark the rules save into the connection's conntrack mark, so the rest of the connection
//! stays in the kernel) or drops it. New connections no local isolated pod takes part in are
//! accepted in the kernel and marked allowed at once: only isolated pods pay for policy, as
//! with Calico. Replies to accepted connections pass as ESTABLISHED. IPv4 and IPv6 alike.
//!
//! Which pods are queued follows the policy view: [`Queued::of`] computes it, and the rules
//! are replaced whenever it changes. Each node judges the whole decision (egress at the
//! source and ingress at the destination) for what it queues, so a connection between two
//! isolated pods on different nodes is judged on both.
//!
//! - [`packet`]: reading a queued packet (pure).
//! - [`rules`]: the queue rules, as nft's native `queue` where the kernel has it, else as
//!   xtables NFQUEUE rules (this project's kernel lacks `CONFIG_NFT_QUEUE`).
//! - [`conntrack`]: cutting connections a policy change no longer allows (one ctnetlink dump,
//!   judged in Rust, deletes in batches), in the background ([`Cutter`]).
//!
//! [`judge`] and [`judge_packet`] are pure; [`serve`] is the shell around the queues.

pub mod conntrack;
pub mod packet;
pub mod rules;

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use policy::{Cluster, Direction, Pod, Protocol};

use crate::health::Liveness;

pub use conntrack::{rejudge, Cut, Cutter, Entry};
pub use packet::{Flow, Packet, Transport};
pub use rules::{FlowLimit, Queued, RuleKind, RuleOptions};

/// The first queue new connections wait in; with several queues, they are numbered from it.
pub const QUEUE: u16 = 0;

/// The packet and connection mark bit meaning "policy allowed this connection".
pub const ALLOWED: u32 = 0x0004_0000;

/// How many packets one queue holds while they wait for a verdict (the kernel's default is
/// 1,024). Past it, the kernel drops new ones (or, with fail-open, accepts them).
pub const QUEUE_MAXLEN: u32 = 8192;

/// The receive buffer of each queue's netlink socket, in bytes: room for [`QUEUE_MAXLEN`]
/// messages (a header-only message takes well under 1 KiB of buffer, skb overhead included),
/// so that the queue, not the socket, is what fills first.
pub const QUEUE_RCVBUF: usize = 8 << 20;

/// Messages the kernel could not deliver to a queue socket because its receive buffer was
/// full (`ENOBUFS`), over all queues since the process started. Each is a new connection that
/// was dropped (or passed, with fail-open) unjudged.
static OVERFLOWS: AtomicU64 = AtomicU64::new(0);

/// [`OVERFLOWS`]: how many queued packets the kernel dropped because a queue socket's
/// receive buffer was full.
pub fn overflows() -> u64 {
    OVERFLOWS.load(Ordering::Relaxed)
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
                out.egress.extend(pod.addresses());
            }
            if isolated(Direction::Ingress) {
                out.ingress.extend(pod.addresses());
            }
        }
        out
    }
}

/// Judges a queued packet. A TCP packet without SYN is the middle of a connection conntrack
/// does not know (its entry was cut, or it never was allowed): it is dropped rather than
/// judged, because its direction need not be the connection's. A packet that cannot be read
/// (truncated, a later IPv6 fragment) is dropped too: it belongs to an isolated pod, and
/// isolated pods fail closed.
pub fn judge_packet(cluster: &Cluster, packet: &[u8]) -> bool {
    let Some(packet) = Packet::parse(packet) else {
        return false;
    };
    if packet
        .tcp_flags
        .is_some_and(|flags| flags & packet::TCP_SYN == 0)
    {
        return false;
    }
    judge(cluster, &packet.flow)
}

/// The policy view the queue judges against, replaced whole when the datastore changes; each
/// [`crate::policies::Snapshot`] derefs to its [`Cluster`] and carries the etcd revision it
/// reflects.
pub type View = Arc<RwLock<Arc<crate::policies::Snapshot>>>;

/// Serves queues `QUEUE..QUEUE + options.queues`, each on a thread of its own (pinned to the
/// CPU whose packets it gets when there are several), until the process ends. Each queue
/// holds up to [`QUEUE_MAXLEN`] packets with a [`QUEUE_RCVBUF`] socket buffer; when it is full
/// the kernel drops new connections, or lets them through with `options.fail_open`, as it
/// does while no daemon listens. Each thread is registered in `liveness` (as
/// `policy-queue-N (NFQUEUE thread)`): if it ends (a panic), `/healthz` fails naming it.
pub fn serve(view: View, options: &RuleOptions, liveness: &Liveness) -> Result<()> {
    let queues = options.queues.max(1);
    for i in 0..queues {
        let num = QUEUE + i;
        let mut queue = open(num, options.fail_open)?;
        let view = view.clone();
        let pin = (queues > 1).then_some(usize::from(i));
        spawn_watched(liveness, format!("policy-queue-{num}"), move || {
            if let Some(cpu) = pin {
                pin_to(cpu);
            }
            let mut overflow = Overflow::default();
            loop {
                answer(&mut queue, &view, num, &mut overflow);
            }
        })?;
    }
    Ok(())
}

/// Starts `body` on a thread named `name`, registered in `liveness` for as long as it runs:
/// once it returns or panics, `/healthz` reports "`name` has stopped".
fn spawn_watched(
    liveness: &Liveness,
    name: String,
    body: impl FnOnce() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    // `Liveness` names parts with `&'static str`; a queue thread lives as long as the
    // process, and there are at most `--policy-queues` of them, each named once.
    let label: &'static str = Box::leak(format!("{name} (NFQUEUE thread)").into_boxed_str());
    let alive = liveness.task(label);
    std::thread::Builder::new().name(name).spawn(move || {
        let _alive = alive;
        body();
    })
}

/// Opens and binds queue `num`: headers only, [`QUEUE_MAXLEN`] long, fail-open or not, a
/// [`QUEUE_RCVBUF`] receive buffer, and `ENOBUFS` reported (so overflows are counted).
fn open(num: u16, fail_open: bool) -> Result<nfq::Queue> {
    let mut queue = nfq::Queue::open().context("opening NFQUEUE")?;
    queue
        .bind(num)
        .with_context(|| format!("binding NFQUEUE {num}"))?;
    // Only the headers are needed.
    queue
        .set_copy_range(num, packet::COPY_RANGE)
        .context("setting the NFQUEUE copy range")?;
    queue
        .set_queue_max_len(num, QUEUE_MAXLEN)
        .context("setting the NFQUEUE length")?;
    queue
        .set_fail_open(num, fail_open)
        .context("setting the NFQUEUE fail-open flag")?;
    queue
        .set_recv_enobufs(true)
        .context("asking for ENOBUFS on the NFQUEUE socket")?;
    if let Err(error) = socket_of(num).and_then(enlarge) {
        tracing::warn!(
            error = %format!("{error:#}"),
            queue = num,
            "cannot enlarge the NFQUEUE socket buffer"
        );
    }
    Ok(queue)
}

/// Gives the socket `fd` a [`QUEUE_RCVBUF`] receive buffer, past `net.core.rmem_max`
/// (`SO_RCVBUFFORCE`, which fabricd may use as it runs with CAP_NET_ADMIN).
fn enlarge(fd: RawFd) -> Result<()> {
    let size = libc::c_int::try_from(QUEUE_RCVBUF).expect("the buffer size fits an int");
    // SAFETY: `size` is a valid int for the call's duration; `fd` is a socket of this process.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            std::ptr::addr_of!(size).cast(),
            std::mem::size_of_val(&size) as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setting SO_RCVBUFFORCE");
    }
    Ok(())
}

/// The file descriptor of the netlink socket bound to queue `num` (nfq does not expose it):
/// the `NETLINK_NETFILTER` socket of this process whose port is the queue's peer in
/// `/proc/net/netfilter/nfnetlink_queue` (ports are per netlink protocol: fabricd's
/// rtnetlink socket may have the same one).
fn socket_of(num: u16) -> Result<RawFd> {
    let path = "/proc/net/netfilter/nfnetlink_queue";
    let table = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let port = peer_port(&table, num).with_context(|| format!("queue {num} is not in {path}"))?;
    for entry in std::fs::read_dir("/proc/self/fd").context("listing /proc/self/fd")? {
        let Some(fd) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if netlink_port(fd, libc::NETLINK_NETFILTER) == Some(port) {
            return Ok(fd);
        }
    }
    anyhow::bail!("no netfilter netlink socket of this process has port {port}")
}

/// The port of `fd` if it is a netlink socket of `protocol`.
fn netlink_port(fd: RawFd, protocol: libc::c_int) -> Option<u32> {
    let mut proto: libc::c_int = 0;
    let mut len = std::mem::size_of_val(&proto) as libc::socklen_t;
    // SAFETY: `proto` and `len` are valid for the call; a closed or non-socket `fd` only makes
    // it fail.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PROTOCOL,
            std::ptr::addr_of_mut!(proto).cast(),
            &mut len,
        )
    };
    if rc != 0 || proto != protocol {
        return None;
    }
    // SAFETY: an all-zero sockaddr_nl is a valid value of the plain C struct.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of_val(&addr) as libc::socklen_t;
    // SAFETY: `addr` and `len` are valid for the call and `len` is `addr`'s size.
    let rc = unsafe { libc::getsockname(fd, std::ptr::addr_of_mut!(addr).cast(), &mut len) };
    (rc == 0 && i32::from(addr.nl_family) == libc::AF_NETLINK).then_some(addr.nl_pid)
}

/// The peer (netlink port id) of queue `num` in `/proc/net/netfilter/nfnetlink_queue`, whose
/// lines start `queue_number peer_portid queue_total copy_mode copy_range queue_dropped
/// user_dropped ...`.
fn peer_port(table: &str, num: u16) -> Option<u32> {
    table.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let queue: u16 = fields.next()?.parse().ok()?;
        (queue == num).then(|| fields.next()?.parse().ok())?
    })
}

/// How often an overflowing queue says so.
const OVERFLOW_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// One queue's overflows since its last warning.
#[derive(Debug, Default)]
struct Overflow {
    /// Overflows not yet reported.
    unreported: u64,
    /// When the last warning went out.
    warned: Option<Instant>,
}

impl Overflow {
    /// Counts an overflow, and warns unless a warning went out less than
    /// [`OVERFLOW_WARNING_INTERVAL`] ago.
    fn count(&mut self, queue: u16) {
        let total = OVERFLOWS.fetch_add(1, Ordering::Relaxed) + 1;
        self.unreported += 1;
        if self
            .warned
            .is_some_and(|at| at.elapsed() < OVERFLOW_WARNING_INTERVAL)
        {
            return;
        }
        tracing::warn!(
            queue,
            overflows = self.unreported,
            total,
            "NFQUEUE socket buffer overflowed: the kernel dropped queued connections unjudged"
        );
        self.unreported = 0;
        self.warned = Some(Instant::now());
    }
}

/// Receives one queued packet, judges it, and gives the verdict. An overflow of the socket
/// buffer (`ENOBUFS`: the kernel dropped messages) is counted and the queue served again at
/// once, since waiting would only drop more; other errors back off briefly.
fn answer(queue: &mut nfq::Queue, view: &View, num: u16, overflow: &mut Overflow) {
    let mut msg = match queue.recv() {
        Ok(m) => m,
        Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
            overflow.count(num);
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, queue = num, "NFQUEUE receive failed");
            std::thread::sleep(Duration::from_millis(10));
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
        tracing::error!(error = %e, queue = num, "NFQUEUE verdict failed");
    }
}

/// Pins the calling (queue) thread to `cpu`, the one whose packets its queue gets (CPU
/// fanout), so a verdict is given where the packet waits. The thread keeps the normal
/// scheduling policy: it blocks in `recv` between packets and gets the CPU soon enough; a
/// real-time policy would let a new-connection flood take the CPU from everything else.
fn pin_to(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    let pinned = set
        .set(cpu)
        .and_then(|()| nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set));
    if let Err(error) = pinned {
        tracing::warn!(%error, cpu, "cannot pin the policy queue thread");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::{IpAddr, Ipv4Addr};

    use super::packet::tests::{v4, v6};
    use super::*;
    use policy::{NetworkPolicy, PodKey};

    fn pod(ns: &str, name: &str, ip: [u8; 4], ipv6: Option<&str>) -> Pod {
        Pod {
            key: PodKey::new(ns, name),
            labels: [("app".to_string(), name.to_string())].into(),
            ip: Ipv4Addr::from(ip),
            ipv6: ipv6.map(|s| s.parse().unwrap()),
            ports: vec![],
        }
    }

    fn policy(yaml: &str) -> NetworkPolicy {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn only_isolated_local_pods_are_queued_by_both_addresses() {
        let mut c = Cluster::new();
        c.upsert_namespace("x", Default::default());
        let web = pod("x", "web", [10, 244, 1, 2], Some("fd00:10:244:1::2"));
        let db = pod("x", "db", [10, 244, 1, 3], None);
        let other = pod("x", "other", [10, 244, 1, 4], None);
        for p in [&web, &db, &other] {
            c.upsert_pod(p.clone());
        }
        assert_eq!(
            Queued::of(&c, [&web, &db]),
            Queued::default(),
            "nothing isolated"
        );
        c.upsert_policy(&policy(
            "metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Ingress]\n",
        ))
        .unwrap();
        c.upsert_policy(&policy(
            "metadata: {name: q, namespace: x}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n",
        ))
        .unwrap();
        let q = Queued::of(&c, [&web, &db]);
        let web_ips: BTreeSet<IpAddr> = web.addresses().collect();
        assert_eq!(q.ingress, web_ips);
        assert_eq!(
            q.egress.len(),
            3,
            "web's two addresses and db's, not other's: {q:?}"
        );
        assert!(q.egress.contains(&IpAddr::from(db.ip)));
    }

    #[test]
    fn mid_stream_tcp_and_unreadable_packets_are_dropped_syn_is_judged() {
        let c = Cluster::new();
        let mut syn = v4(6, 80);
        syn[33] = packet::TCP_SYN;
        assert!(judge_packet(&c, &syn));
        syn[33] = 0x10;
        assert!(!judge_packet(&c, &syn));
        assert!(judge_packet(&c, &v4(17, 53)));
        assert!(judge_packet(&c, &v6(&[], 6, 80, packet::TCP_SYN)));
        assert!(!judge_packet(&c, &v6(&[], 6, 80, 0x10)));
        assert!(!judge_packet(&c, &v4(6, 80)[..30]), "truncated");
        assert!(!judge_packet(&c, &[0x50; 60]), "not IP");
    }

    #[test]
    fn judges_ports_and_icmp_like_the_rules_say() {
        let mut c = Cluster::new();
        c.upsert_namespace("x", Default::default());
        c.upsert_namespace("y", Default::default());
        c.upsert_pod(pod("x", "p", [10, 244, 1, 10], None));
        c.upsert_pod(pod("y", "p", [10, 244, 2, 10], None));
        assert!(judge(&c, &Flow::parse(&v4(6, 80)).unwrap()), "not isolated");
        c.upsert_policy(&policy(
            "metadata: {name: web, namespace: y}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n  ingress:\n  - ports: [{port: 80}]\n",
        ))
        .unwrap();
        assert!(judge(&c, &Flow::parse(&v4(6, 80)).unwrap()));
        assert!(!judge(&c, &Flow::parse(&v4(6, 81)).unwrap()));
        assert!(
            !judge(&c, &Flow::parse(&v4(1, 0)).unwrap()),
            "a port rule does not admit ICMP"
        );
        c.upsert_policy(&policy(
            "metadata: {name: all, namespace: y}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n  ingress:\n  - {}\n",
        ))
        .unwrap();
        assert!(
            judge(&c, &Flow::parse(&v4(1, 0)).unwrap()),
            "a rule without ports admits ICMP"
        );
    }

    #[test]
    fn a_queue_thread_that_panics_or_returns_fails_healthz_by_name() {
        let liveness = Liveness::default();
        let (hold, wait) = std::sync::mpsc::channel::<()>();
        let running = spawn_watched(&liveness, "policy-queue-0".into(), move || {
            let _ = wait.recv();
        })
        .unwrap();
        assert!(liveness.failures().is_empty());
        let panicked = spawn_watched(&liveness, "policy-queue-1".into(), || panic!("boom"));
        assert!(panicked.unwrap().join().is_err());
        spawn_watched(&liveness, "policy-queue-2".into(), || {})
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(
            liveness.failures(),
            [
                "policy-queue-1 (NFQUEUE thread) has stopped",
                "policy-queue-2 (NFQUEUE thread) has stopped"
            ]
        );
        drop(hold);
        running.join().unwrap();
        assert_eq!(liveness.failures().len(), 3);
    }

    #[test]
    fn finds_a_queues_peer_port_in_the_kernels_table() {
        let table = "    0  30001     0 2   128     0     0        7  1\n    \
                     1 4026531841     2 2   128     5     1       99  1\n";
        assert_eq!(peer_port(table, 0), Some(30001));
        assert_eq!(peer_port(table, 1), Some(4_026_531_841));
        assert_eq!(peer_port(table, 2), None);
        assert_eq!(peer_port("garbage\n", 0), None);
    }

    #[test]
    fn overflows_are_counted_each_time_and_reported_at_most_every_interval() {
        let before = overflows();
        let mut overflow = Overflow::default();
        overflow.count(7);
        assert!(overflow.warned.is_some());
        assert_eq!(overflow.unreported, 0, "the first one is reported at once");
        overflow.count(7);
        overflow.count(7);
        assert_eq!(
            overflow.unreported, 2,
            "the next ones wait for the interval"
        );
        assert!(overflows() >= before + 3);
    }

    /// A flow between two addresses over TCP to `port`.
    fn tcp(src: &str, dst: &str, port: u16) -> Flow {
        Flow {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            transport: Transport::Port(Protocol::Tcp, port),
        }
    }

    #[test]
    fn ipv6_connections_are_judged_like_ipv4_ones() {
        let mut c = Cluster::new();
        c.upsert_namespace("x", [("ns".to_string(), "x".to_string())].into());
        c.upsert_namespace("y", Default::default());
        c.upsert_pod(pod(
            "x",
            "client",
            [10, 244, 1, 10],
            Some("fd00:10:244:1::a"),
        ));
        c.upsert_pod(pod(
            "x",
            "other",
            [10, 244, 1, 11],
            Some("fd00:10:244:1::b"),
        ));
        c.upsert_pod(pod(
            "y",
            "server",
            [10, 244, 2, 10],
            Some("fd00:10:244:2::a"),
        ));
        // The server admits the client pod, and an IPv6 block minus a hole, on port 80.
        c.upsert_policy(&policy(
            "metadata: {name: web, namespace: y}\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: x}}\n      podSelector: {matchLabels: {app: client}}\n    - ipBlock: {cidr: \"2001:db8::/32\", except: [\"2001:db8:bad::/48\"]}\n    - ipBlock: {cidr: 192.0.2.0/24}\n    ports: [{port: 80}]\n",
        ))
        .unwrap();
        let server = "fd00:10:244:2::a";
        assert!(
            judge(&c, &tcp("fd00:10:244:1::a", server, 80)),
            "the client pod, by its IPv6 address"
        );
        assert!(
            judge(&c, &tcp("10.244.1.10", "10.244.2.10", 80)),
            "and by its IPv4 one"
        );
        assert!(
            !judge(&c, &tcp("fd00:10:244:1::a", server, 81)),
            "another port"
        );
        assert!(
            !judge(&c, &tcp("fd00:10:244:1::b", server, 80)),
            "another pod"
        );
        assert!(
            judge(&c, &tcp("2001:db8:1::7", server, 80)),
            "inside the IPv6 block"
        );
        assert!(
            !judge(&c, &tcp("2001:db8:bad::7", server, 80)),
            "in its except"
        );
        assert!(!judge(&c, &tcp("2001:db9::7", server, 80)), "outside it");
        assert!(
            judge(&c, &tcp("192.0.2.9", "10.244.2.10", 80)),
            "IPv4 block, IPv4 source"
        );
        assert!(
            !judge(&c, &tcp("::ffff:192.0.2.9", server, 80)),
            "an IPv4 block never admits an IPv6 address"
        );
        let icmp6 = Flow {
            src: "fd00:10:244:1::a".parse().unwrap(),
            dst: server.parse().unwrap(),
            transport: Transport::Other(58),
        };
        assert!(!judge(&c, &icmp6), "a port rule does not admit ICMPv6");
        // Unknown IPv6 addresses in the pod network are outside every selector.
        assert!(!judge(&c, &tcp("fd00:10:244:1::99", server, 80)));
    }
}
