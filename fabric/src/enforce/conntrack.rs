//! Cutting the connections a policy change no longer allows, over ctnetlink (conntrack's
//! `NETLINK_NETFILTER` subsystem), in a few kernel round trips whatever their number:
//!
//! 1. one dump of the connections conntrack holds with the [`ALLOWED`] mark, both families at
//!    once (the kernel filters by the mark) — [`dump_request`], [`parse_replies`];
//! 2. each judged in Rust against the new view as it is read: one to a pod network that
//!    policy no longer allows is to be cut ([`denied`]), and only those are kept;
//! 3. those deleted, [`DELETE_BATCH`] messages per `send` ([`delete_request`]), each naming
//!    its entry by the original tuple exactly as the kernel dumped it and by its id, so that
//!    an entry a new connection with the same addresses and ports took meanwhile stays.
//!
//! A cut connection's next packets arrive mid-stream, which the rules drop. (`conntrack -D`
//! lists the whole table for each connection it deletes: one process per connection made
//! cutting N of them quadratic, tens of seconds for a few thousand.)
//!
//! The messages are written with the nfnetlink [`Writer`] fabric's nftables sets use, and
//! sent on the same kind of socket ([`crate::nft::socket`]); building and reading them is
//! pure. [`Cutter`] runs the cuts in the background, off the policy follower's path.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipam::backoff::Backoff;
use policy::{Cluster, Protocol};
use tokio::sync::Notify;

use super::packet::{Flow, Transport};
use super::{judge, View, ALLOWED};
use crate::nft::{nl, Writer};
use crate::pods::Subnets;

/// How many delete messages go in one `send`. The kernel answers only those it refuses
/// (an entry already gone); a batch's answers must fit the socket's receive buffer.
pub const DELETE_BATCH: usize = 128;

/// How long a dump may go without the kernel saying anything before it is given up.
const DUMP_TIMEOUT: Duration = Duration::from_secs(10);

/// Room for the largest message batch a dump sends (the kernel's are at most 32 KiB).
const RECV_BUFFER: usize = 64 * 1024;

/// ctnetlink and netlink constants (`linux/netfilter/nfnetlink_conntrack.h`, `netlink.h`).
mod ct {
    pub const NFNL_SUBSYS_CTNETLINK: u16 = 1;
    pub const IPCTNL_MSG_CT_NEW: u16 = 0;
    pub const IPCTNL_MSG_CT_GET: u16 = 1;
    pub const IPCTNL_MSG_CT_DELETE: u16 = 2;
    pub const NLMSG_DONE: u16 = 3;
    pub const NLM_F_DUMP: u16 = 0x300;
    /// An attribute's type without the nested and byte-order flags.
    pub const NLA_TYPE_MASK: u16 = 0x3fff;
    pub const CTA_TUPLE_ORIG: u16 = 1;
    pub const CTA_MARK: u16 = 8;
    pub const CTA_ID: u16 = 12;
    pub const CTA_ZONE: u16 = 18;
    pub const CTA_MARK_MASK: u16 = 21;
    pub const CTA_TUPLE_IP: u16 = 1;
    pub const CTA_TUPLE_PROTO: u16 = 2;
    pub const CTA_IP_V4_SRC: u16 = 1;
    pub const CTA_IP_V4_DST: u16 = 2;
    pub const CTA_IP_V6_SRC: u16 = 3;
    pub const CTA_IP_V6_DST: u16 = 4;
    pub const CTA_PROTO_NUM: u16 = 1;
    pub const CTA_PROTO_SRC_PORT: u16 = 2;
    pub const CTA_PROTO_DST_PORT: u16 = 3;
    pub const AF_UNSPEC: u8 = 0;
    pub const AF_INET: u8 = 2;
    pub const AF_INET6: u8 = 10;
}

/// A connection conntrack holds, as a dump reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The flow in its original direction.
    pub flow: Flow,
    /// Its source port, where its protocol has ports.
    pub sport: Option<u16>,
    /// Its connection mark.
    pub mark: u32,
    /// The kernel's id of the entry.
    pub id: Option<u32>,
    /// Its conntrack zone, when not the default one.
    pub zone: Option<u16>,
    /// The value of its `CTA_TUPLE_ORIG` as the kernel sent it: what names it in a delete.
    tuple: Vec<u8>,
}

/// One reply the kernel sent to a request of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// An entry of a dump; `None` if it could not be read (it is left alone).
    Entry(Option<Entry>),
    /// The end of a dump.
    Done,
    /// An error (a positive errno), or 0: an acknowledgement.
    Error(i32),
}

/// Why a cut failed.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// The ctnetlink socket could not be opened, written or read.
    #[error("ctnetlink socket: {0}")]
    Socket(#[from] std::io::Error),
    /// The kernel refused the dump or a delete.
    #[error("the kernel refused the conntrack request: {}", std::io::Error::from_raw_os_error(*.0))]
    Refused(i32),
    /// A message did not fit the receive buffer.
    #[error("a conntrack dump message was larger than {RECV_BUFFER} bytes")]
    Truncated,
}

/// What a cut did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cut {
    /// Allowed connections the dump held.
    pub judged: usize,
    /// Those cut.
    pub cut: usize,
    /// Those to cut that were gone by the time they were deleted.
    pub gone: usize,
    /// Entries the dump held that could not be read (left alone).
    pub unreadable: usize,
}

/// The attributes in `buf`: each one's type (flags cleared) and value.
fn attributes(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let header = buf.get(at..at + 4)?;
        let len = usize::from(u16::from_ne_bytes([header[0], header[1]]));
        let kind = u16::from_ne_bytes([header[2], header[3]]) & ct::NLA_TYPE_MASK;
        let value = buf.get(at + 4..at.checked_add(len)?).filter(|_| len >= 4)?;
        at += (len + 3) & !3;
        Some((kind, value))
    })
}

/// The netlink messages in `buf`: each one's type, sequence number and payload (after the
/// 16-byte header). A message cut short ends the walk.
fn messages(buf: &[u8]) -> impl Iterator<Item = (u16, u32, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let header = buf.get(at..at + 16)?;
        let word = |o: usize| u32::from_ne_bytes(header[o..o + 4].try_into().expect("4 bytes"));
        let len = word(0) as usize;
        let kind = u16::from_ne_bytes([header[4], header[5]]);
        let payload = buf
            .get(at + 16..at.checked_add(len)?)
            .filter(|_| len >= 16)?;
        at += (len + 3) & !3;
        Some((kind, word(8), payload))
    })
}

fn be16(value: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(value.try_into().ok()?))
}

fn be32(value: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(value.try_into().ok()?))
}

/// The flow and source port a tuple (`CTA_TUPLE_ORIG`'s value) of family `family` names.
fn parse_tuple(family: u8, tuple: &[u8]) -> Option<(Flow, Option<u16>)> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, None, None);
    for (kind, value) in attributes(tuple) {
        match kind {
            ct::CTA_TUPLE_IP => {
                for (kind, value) in attributes(value) {
                    let v4 = || <[u8; 4]>::try_from(value).ok().map(Ipv4Addr::from);
                    let v6 = || <[u8; 16]>::try_from(value).ok().map(Ipv6Addr::from);
                    match (family, kind) {
                        (ct::AF_INET, ct::CTA_IP_V4_SRC) => src = v4().map(IpAddr::V4),
                        (ct::AF_INET, ct::CTA_IP_V4_DST) => dst = v4().map(IpAddr::V4),
                        (ct::AF_INET6, ct::CTA_IP_V6_SRC) => src = v6().map(IpAddr::V6),
                        (ct::AF_INET6, ct::CTA_IP_V6_DST) => dst = v6().map(IpAddr::V6),
                        _ => {}
                    }
                }
            }
            ct::CTA_TUPLE_PROTO => {
                for (kind, value) in attributes(value) {
                    match kind {
                        ct::CTA_PROTO_NUM => proto = value.first().copied(),
                        ct::CTA_PROTO_SRC_PORT => sport = be16(value),
                        ct::CTA_PROTO_DST_PORT => dport = be16(value),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let protocol = match proto? {
        6 => Some(Protocol::Tcp),
        17 => Some(Protocol::Udp),
        132 => Some(Protocol::Sctp),
        _ => None,
    };
    let (transport, sport) = match protocol {
        Some(p) => (Transport::Port(p, dport?), Some(sport?)),
        None => (Transport::Other(proto?), None),
    };
    let flow = Flow {
        src: src?,
        dst: dst?,
        transport,
    };
    Some((flow, sport))
}

/// The entry a dump message's payload (`nfgenmsg` and attributes) describes.
fn parse_entry(payload: &[u8]) -> Option<Entry> {
    let family = *payload.first()?;
    let (mut tuple, mut mark, mut id, mut zone) = (None, 0, None, None);
    for (kind, value) in attributes(payload.get(4..)?) {
        match kind {
            ct::CTA_TUPLE_ORIG => tuple = Some(value),
            ct::CTA_MARK => mark = be32(value)?,
            ct::CTA_ID => id = Some(be32(value)?),
            ct::CTA_ZONE => zone = Some(be16(value)?),
            _ => {}
        }
    }
    let tuple = tuple?;
    let (flow, sport) = parse_tuple(family, tuple)?;
    Some(Entry {
        flow,
        sport,
        mark,
        id,
        zone,
        tuple: tuple.to_vec(),
    })
}

/// The replies in `buf` (what one `recv` read), with their sequence numbers. Messages of
/// other kinds are skipped.
pub fn parse_replies(buf: &[u8]) -> Vec<(u32, Reply)> {
    let entry = (ct::NFNL_SUBSYS_CTNETLINK << 8) | ct::IPCTNL_MSG_CT_NEW;
    let errno = |payload: &[u8]| {
        let code = payload
            .get(..4)
            .map_or(0, |b| i32::from_ne_bytes(b.try_into().expect("4 bytes")));
        code.saturating_neg()
    };
    messages(buf)
        .filter_map(|(kind, seq, payload)| {
            let reply = match kind {
                k if k == entry => Reply::Entry(parse_entry(payload)),
                ct::NLMSG_DONE => match errno(payload) {
                    0 => Reply::Done,
                    e => Reply::Error(e),
                },
                nl::NLMSG_ERROR => Reply::Error(errno(payload)),
                _ => return None,
            };
            Some((seq, reply))
        })
        .collect()
}

/// The request for a dump of every connection whose mark has all of `mark`'s bits, IPv4 and
/// IPv6 (as `conntrack -L -m MARK/MARK` asks for it).
pub fn dump_request(seq: u32, mark: u32) -> Vec<u8> {
    let mut w = Writer { buf: Vec::new() };
    let at = w.begin(
        (ct::NFNL_SUBSYS_CTNETLINK << 8) | ct::IPCTNL_MSG_CT_GET,
        nl::NLM_F_REQUEST | ct::NLM_F_DUMP,
        seq,
        ct::AF_UNSPEC,
        0,
    );
    w.attr(ct::CTA_MARK, &mark.to_be_bytes());
    w.attr(ct::CTA_MARK_MASK, &mark.to_be_bytes());
    w.end(at, 4);
    w.buf
}

/// One delete message per entry, sequence numbers from `first_seq` on, without asking for
/// acknowledgements: the kernel answers only the deletes it refuses.
pub fn delete_request(entries: &[&Entry], first_seq: u32) -> Vec<u8> {
    let mut w = Writer { buf: Vec::new() };
    for (i, entry) in entries.iter().enumerate() {
        let family = if entry.flow.src.is_ipv6() {
            ct::AF_INET6
        } else {
            ct::AF_INET
        };
        let at = w.begin(
            (ct::NFNL_SUBSYS_CTNETLINK << 8) | ct::IPCTNL_MSG_CT_DELETE,
            nl::NLM_F_REQUEST,
            first_seq.wrapping_add(i as u32),
            family,
            0,
        );
        let tuple = w.nest(ct::CTA_TUPLE_ORIG | nl::NLA_F_NESTED);
        w.buf.extend_from_slice(&entry.tuple);
        w.end(tuple, 2);
        if let Some(zone) = entry.zone {
            w.attr(ct::CTA_ZONE, &zone.to_be_bytes());
        }
        if let Some(id) = entry.id {
            w.attr(ct::CTA_ID, &id.to_be_bytes());
        }
        w.end(at, 4);
    }
    w.buf
}

/// Whether `entry` is an allowed connection to the pod networks `networks` that `cluster` no
/// longer allows (egress at the source and ingress at the destination, as a new connection
/// is judged): one to cut. Other connections are left alone.
pub fn denied(cluster: &Cluster, networks: Subnets, entry: &Entry) -> bool {
    let inside = match entry.flow.dst {
        IpAddr::V4(ip) => networks.v4.contains(&ip),
        IpAddr::V6(ip) => networks.v6.is_some_and(|n| n.contains(&ip)),
    };
    entry.mark & ALLOWED != 0 && inside && !judge(cluster, &entry.flow)
}

/// A ctnetlink socket in the calling thread's namespace (fabricd's).
struct Conntrack {
    socket: netlink_sys::Socket,
    seq: u32,
}

impl Conntrack {
    fn open() -> Result<Self, ConntrackError> {
        let socket = crate::nft::socket()?;
        let timeout = libc::timeval {
            tv_sec: DUMP_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: `timeout` is a valid timeval for the call's duration; the socket is ours.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::addr_of!(timeout).cast(),
                std::mem::size_of_val(&timeout) as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(Self { socket, seq: 1 })
    }

    /// Dumps the connections carrying `mark` and keeps those `keep` chooses (only they are
    /// held in memory); also says how many the dump held that could not be read.
    fn dump(
        &mut self,
        mark: u32,
        mut keep: impl FnMut(&Entry) -> bool,
    ) -> Result<(Vec<Entry>, usize), ConntrackError> {
        let seq = self.seq;
        self.seq += 1;
        self.socket.send(&dump_request(seq, mark), 0)?;
        let (mut entries, mut unreadable) = (Vec::new(), 0);
        let mut rx = Vec::with_capacity(RECV_BUFFER);
        loop {
            rx.clear();
            let len = self.socket.recv(&mut rx, libc::MSG_TRUNC)?;
            if len > rx.len() {
                return Err(ConntrackError::Truncated);
            }
            for (s, reply) in parse_replies(&rx) {
                if s != seq {
                    continue;
                }
                match reply {
                    Reply::Entry(Some(entry)) if keep(&entry) => entries.push(entry),
                    Reply::Entry(Some(_)) => {}
                    Reply::Entry(None) => unreadable += 1,
                    Reply::Done => return Ok((entries, unreadable)),
                    Reply::Error(0) => {}
                    Reply::Error(errno) => return Err(ConntrackError::Refused(errno)),
                }
            }
        }
    }

    /// Deletes `entries`, [`DELETE_BATCH`] per `send`; returns how many were deleted and how
    /// many were gone already. The kernel handles a batch while it is sent, so its refusals
    /// are queued when `send` returns: nothing here waits.
    fn delete(&mut self, entries: &[&Entry]) -> Result<(usize, usize), ConntrackError> {
        let (mut deleted, mut gone) = (0, 0);
        let mut rx = Vec::with_capacity(RECV_BUFFER);
        for batch in entries.chunks(DELETE_BATCH) {
            let first = self.seq;
            self.seq += batch.len() as u32;
            let ours = first..self.seq;
            self.socket.send(&delete_request(batch, first), 0)?;
            let mut refused = 0;
            loop {
                rx.clear();
                match self.socket.recv(&mut rx, libc::MSG_DONTWAIT) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e.into()),
                }
                for (_, reply) in parse_replies(&rx)
                    .into_iter()
                    .filter(|(seq, _)| ours.contains(seq))
                {
                    match reply {
                        Reply::Error(0) => {}
                        Reply::Error(libc::ENOENT) => refused += 1,
                        Reply::Error(errno) => return Err(ConntrackError::Refused(errno)),
                        _ => {}
                    }
                }
            }
            gone += refused;
            deleted += batch.len().saturating_sub(refused);
        }
        Ok((deleted, gone))
    }
}

/// Judges every allowed connection to the pod networks `networks` again against `cluster`
/// and cuts those policy no longer allows, in one dump and a delete per
/// [`DELETE_BATCH`] of them. Allowed connections are left alone.
pub fn rejudge(cluster: &Cluster, networks: Subnets) -> Result<Cut, ConntrackError> {
    let mut conntrack = Conntrack::open()?;
    let mut judged = 0;
    let (to_cut, unreadable) = conntrack.dump(ALLOWED, |entry| {
        judged += 1;
        denied(cluster, networks, entry)
    })?;
    let to_cut: Vec<&Entry> = to_cut.iter().collect();
    let (cut, gone) = conntrack.delete(&to_cut)?;
    Ok(Cut {
        judged,
        cut,
        gone,
        unreadable,
    })
}

/// How long after a failed cut the next try starts (doubling, jittered, up to
/// [`RETRY_CAP`]).
const RETRY_FIRST: Duration = Duration::from_secs(1);

/// The longest wait between two tries of a cut that keeps failing.
const RETRY_CAP: Duration = Duration::from_secs(30);

/// Cuts the connections the policy view no longer allows, in the background: on tokio's
/// blocking pool, one cut at a time, never in the way of the view taking its next change.
/// A cut judges against the view as it is when the cut starts; the changes that come while
/// one runs are judged together by the next one. A cut that fails is tried again, with
/// backoff, until one succeeds.
#[derive(Debug, Clone)]
pub struct Cutter {
    wake: Arc<Notify>,
}

impl Cutter {
    /// Starts the task that cuts connections to the pod networks `networks` that `view` no
    /// longer allows, each time [`Cutter::view_changed`] says so. Needs a tokio runtime.
    pub fn start(view: View, networks: Subnets) -> Self {
        let cut = move || {
            let current = view.read().unwrap_or_else(|e| e.into_inner()).clone();
            rejudge(&current, networks)
        };
        Self::with(cut, Backoff::new(RETRY_FIRST, RETRY_CAP))
    }

    /// Starts the task that runs `cut` on the blocking pool after each
    /// [`Cutter::view_changed`], one at a time (calls while it runs make one more run), and
    /// again after `retry`'s next delay while it fails.
    fn with<F>(cut: F, mut retry: Backoff) -> Self
    where
        F: Fn() -> Result<Cut, ConntrackError> + Send + Sync + 'static,
    {
        let wake = Arc::new(Notify::new());
        let woken = wake.clone();
        let cut = Arc::new(cut);
        tokio::spawn(async move {
            loop {
                woken.notified().await;
                while !once(cut.clone()).await {
                    tokio::time::sleep(retry.next_delay()).await;
                }
                retry.reset();
            }
        });
        Self { wake }
    }

    /// The view changed: its connections are judged again soon. Returns at once; if a cut is
    /// running, the next one starts when it ends and covers every change made meanwhile.
    pub fn view_changed(&self) {
        self.wake.notify_one();
    }
}

/// Runs `cut` on the blocking pool and logs what it did; false if it failed.
async fn once<F>(cut: Arc<F>) -> bool
where
    F: Fn() -> Result<Cut, ConntrackError> + Send + Sync + 'static,
{
    let started = Instant::now();
    let done = tokio::task::spawn_blocking(move || cut()).await;
    let took_ms = started.elapsed().as_millis() as u64;
    match done {
        Ok(Ok(c)) if c.cut == 0 && c.gone == 0 => {
            tracing::debug!(
                judged = c.judged,
                took_ms,
                "existing connections judged again"
            );
            true
        }
        Ok(Ok(c)) => {
            tracing::info!(
                cut = c.cut,
                gone = c.gone,
                judged = c.judged,
                unreadable = c.unreadable,
                took_ms,
                "connections no longer allowed were cut"
            );
            true
        }
        Ok(Err(error)) => {
            tracing::warn!(error = %error, took_ms, "cannot re-judge existing connections; trying again");
            false
        }
        Err(error) => {
            tracing::error!(error = %error, "re-judging existing connections panicked; trying again");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use policy::{NetworkPolicy, Pod, PodKey};

    /// What the kernel (6.18) sent for `conntrack -L -m 0x40000/0x40000`'s request (sequence
    /// number 7) after four `conntrack -I` in a scratch namespace: TCP 10.244.1.5:40000 ->
    /// 10.244.2.7:80 (mark 0x40000, id 0x8f88e417), UDP [fd00:10:244:1::5]:5353 ->
    /// [fd00:10:244:2::7]:53 (mark 0x40000), ICMP echo 10.244.1.5 -> 10.244.2.9 (mark
    /// 0x40001), and TCP 10.244.1.6 -> 10.244.2.9 with mark 1, which the kernel's filter left
    /// out; then the end of the dump.
    const DUMP: &str = "f0000000000122000700000030260000020000003400018014000180080001000af40105080002000af402071c0002800500010006000000060002009c40000006000300005000003400028014000180080001000af40207080002000af401051c00028005000100060000000600020000500000060003009c400000080003000000000e080008000004000008000c008f88e41708000b00000000010800070000000125300004802c000180050001000300000005000200000000000500030000000000060004000a000000060005000a0000001c001880080001000000000008000200000000000800030000000000f00000000001220007000000302600000a0000004c0001802c00018014000300fd00001002440001000000000000000514000400fd0000100244000200000000000000071c00028005000100110000000600020014e9000006000300003500004c0002802c00018014000300fd00001002440002000000000000000714000400fd0000100244000100000000000000051c000280050001001100000006000200003500000600030014e900000800030000000008080008000004000008000c007dfe03f208000b000000000108000700000000171c001880080001000000000008000200000000000800030000000000d0000000000122000700000030260000020000003c00018014000180080001000af40105080002000af4020924000280050001000100000006000400004d0000050005000800000005000600000000003c00028014000180080001000af40209080002000af4010524000280050001000100000006000400004d0000050005000000000005000600000000000800030000000008080008000004000108000c000fd6974608000b000000000108000700000000171c0018800800010000000000080002000000000008000300000000001400000003000200070000003026000000000000";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn dumped() -> Vec<Entry> {
        let replies = parse_replies(&unhex(DUMP));
        assert_eq!(replies.len(), 4, "{replies:?}");
        assert!(replies.iter().all(|(seq, _)| *seq == 7));
        assert_eq!(replies[3].1, Reply::Done);
        replies[..3]
            .iter()
            .map(|(_, r)| match r {
                Reply::Entry(Some(e)) => e.clone(),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn reads_the_kernels_dump_of_both_families() {
        let entries = dumped();
        let tcp = &entries[0];
        assert_eq!(tcp.flow.src, IpAddr::from([10, 244, 1, 5]));
        assert_eq!(tcp.flow.dst, IpAddr::from([10, 244, 2, 7]));
        assert_eq!(tcp.flow.transport, Transport::Port(Protocol::Tcp, 80));
        assert_eq!(tcp.sport, Some(40000));
        assert_eq!(
            (tcp.mark, tcp.id, tcp.zone),
            (ALLOWED, Some(0x8f88_e417), None)
        );
        let udp6 = &entries[1];
        assert_eq!(udp6.flow.src, "fd00:10:244:1::5".parse::<IpAddr>().unwrap());
        assert_eq!(udp6.flow.dst, "fd00:10:244:2::7".parse::<IpAddr>().unwrap());
        assert_eq!(udp6.flow.transport, Transport::Port(Protocol::Udp, 53));
        assert_eq!(udp6.sport, Some(5353));
        let icmp = &entries[2];
        assert_eq!(icmp.flow.transport, Transport::Other(1));
        assert_eq!((icmp.sport, icmp.mark), (None, ALLOWED | 1));
    }

    #[test]
    fn a_dump_cut_short_or_garbled_yields_what_it_can_read() {
        let dump = unhex(DUMP);
        // Cut inside the second message: only the first is read.
        let replies = parse_replies(&dump[..300]);
        assert_eq!(replies.len(), 1);
        // An entry without its tuple is unreadable, not an error.
        let mut broken = dump[..240].to_vec();
        broken[22] = 0x09; // CTA_TUPLE_ORIG's type becomes CTA_COUNTERS_ORIG
        assert_eq!(parse_replies(&broken), [(7, Reply::Entry(None))]);
        assert!(parse_replies(&[0xff; 15]).is_empty());
        let mut zero_len = dump.clone();
        zero_len[..4].copy_from_slice(&0u32.to_ne_bytes());
        assert!(
            parse_replies(&zero_len).is_empty(),
            "a message of length 0 ends the walk"
        );
    }

    #[test]
    fn errors_and_acknowledgements_carry_their_errno() {
        let mut buf = Vec::new();
        for (seq, err) in [(5u32, 0i32), (6, -libc::ENOENT)] {
            buf.extend_from_slice(&36u32.to_ne_bytes());
            buf.extend_from_slice(&nl::NLMSG_ERROR.to_ne_bytes());
            buf.extend_from_slice(&0u16.to_ne_bytes());
            buf.extend_from_slice(&seq.to_ne_bytes());
            buf.extend_from_slice(&0u32.to_ne_bytes());
            buf.extend_from_slice(&err.to_ne_bytes());
            buf.extend_from_slice(&[0; 16]);
        }
        assert_eq!(
            parse_replies(&buf),
            [(5, Reply::Error(0)), (6, Reply::Error(libc::ENOENT))]
        );
    }

    /// Byte for byte what `conntrack -L -m 0x40000/0x40000` sends (seen with strace): both
    /// families, the mark and its mask big-endian.
    #[test]
    fn the_dump_request_is_conntrack_tools_own() {
        let req = dump_request(0x0102_0304, ALLOWED);
        let mut want = Vec::new();
        want.extend_from_slice(&36u32.to_ne_bytes());
        want.extend_from_slice(&0x0101u16.to_ne_bytes()); // CTNETLINK << 8 | GET
        want.extend_from_slice(&0x0301u16.to_ne_bytes()); // REQUEST | DUMP
        want.extend_from_slice(&0x0102_0304u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&[0, 0, 0, 0]); // AF_UNSPEC, v0, res_id 0
        want.extend_from_slice(&[8, 0, 8, 0, 0x00, 0x04, 0x00, 0x00]);
        want.extend_from_slice(&[8, 0, 21, 0, 0x00, 0x04, 0x00, 0x00]);
        assert_eq!(req, want);
    }

    #[test]
    fn a_delete_names_its_entry_by_the_dumped_tuple_and_id() {
        let entries = dumped();
        let chosen: Vec<&Entry> = vec![&entries[0], &entries[1]];
        let buf = delete_request(&chosen, 40);
        let msgs: Vec<(u16, u32, &[u8])> = messages(&buf).collect();
        assert_eq!(msgs.len(), 2);
        for (i, (kind, seq, payload)) in msgs.iter().enumerate() {
            assert_eq!(*kind, 0x0102, "CTNETLINK << 8 | DELETE");
            assert_eq!(*seq, 40 + i as u32);
            let family = [ct::AF_INET, ct::AF_INET6][i];
            assert_eq!(&payload[..4], &[family, 0, 0, 0]);
            let attrs: BTreeMap<u16, &[u8]> = attributes(&payload[4..]).collect();
            assert_eq!(attrs.len(), 2, "the tuple and the id, nothing else");
            assert_eq!(attrs[&ct::CTA_TUPLE_ORIG], &chosen[i].tuple[..]);
            assert_eq!(be32(attrs[&ct::CTA_ID]), chosen[i].id);
            // The tuple reads back as the same flow.
            let (flow, sport) = parse_tuple(family, attrs[&ct::CTA_TUPLE_ORIG]).unwrap();
            assert_eq!((flow, sport), (chosen[i].flow, chosen[i].sport));
        }
        // Flags: a request, no acknowledgement asked for; the tuple attribute is nested.
        assert_eq!(u16::from_ne_bytes([buf[6], buf[7]]), nl::NLM_F_REQUEST);
        assert_eq!(
            u16::from_ne_bytes([buf[22], buf[23]]),
            ct::CTA_TUPLE_ORIG | nl::NLA_F_NESTED
        );
        // The TCP tuple, as `conntrack -D` sends it for that connection (seen with strace).
        assert_eq!(
            chosen[0].tuple,
            unhex("14000180080001000af40105080002000af402071c0002800500010006000000060002009c4000000600030000500000")
        );
        // A zone other than the default one goes along.
        let mut zoned = entries[0].clone();
        zoned.zone = Some(7);
        let buf = delete_request(&[&zoned], 1);
        let (_, _, payload) = messages(&buf).next().unwrap();
        let attrs: BTreeMap<u16, &[u8]> = attributes(&payload[4..]).collect();
        assert_eq!(attrs[&ct::CTA_ZONE], &[0, 7]);
    }

    fn pod(ns: &str, name: &str, ip: [u8; 4], ipv6: &str) -> Pod {
        Pod {
            key: PodKey::new(ns, name),
            labels: [("app".to_string(), name.to_string())].into(),
            ip: Ipv4Addr::from(ip),
            ipv6: Some(ipv6.parse().unwrap()),
            ports: vec![],
        }
    }

    #[test]
    fn only_allowed_connections_into_the_pod_networks_that_policy_now_denies_are_chosen() {
        let mut c = Cluster::new();
        c.upsert_namespace("x", Default::default());
        c.upsert_pod(pod("x", "client", [10, 244, 1, 5], "fd00:10:244:1::5"));
        c.upsert_pod(pod("x", "web", [10, 244, 2, 7], "fd00:10:244:2::7"));
        c.upsert_pod(pod("x", "ping", [10, 244, 2, 9], "fd00:10:244:2::9"));
        let networks = Subnets {
            v4: "10.244.0.0/16".parse().unwrap(),
            v6: Some("fd00:10:244::/48".parse().unwrap()),
        };
        let entries = dumped();
        let chosen = |c: &Cluster, networks, entries: &[Entry]| -> Vec<usize> {
            (0..entries.len())
                .filter(|&i| denied(c, networks, &entries[i]))
                .collect()
        };
        assert!(
            chosen(&c, networks, &entries).is_empty(),
            "nothing isolated"
        );
        // web admits TCP 80 only, over both families; ping nothing.
        let np: NetworkPolicy = serde_yaml::from_str(
            "metadata: {name: web, namespace: x}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n  ingress:\n  - ports: [{port: 80}]\n",
        )
        .unwrap();
        c.upsert_policy(&np).unwrap();
        assert_eq!(
            chosen(&c, networks, &entries),
            [1, 2],
            "UDP 53 and ICMP, not TCP 80"
        );
        // Outside the pod networks, or without the allowed mark: left alone.
        let v4_only = Subnets {
            v4: networks.v4,
            v6: None,
        };
        assert_eq!(chosen(&c, v4_only, &entries), [2]);
        let mut unmarked = entries.clone();
        unmarked[2].mark = 1;
        assert!(chosen(&c, v4_only, &unmarked).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changes_during_a_cut_are_judged_together_by_the_next_one() {
        use std::sync::atomic::{AtomicU32, Ordering};
        use std::sync::Mutex;

        // The "view" is a version number; each cut notes the one it judged and takes 300 ms.
        let version = Arc::new(AtomicU32::new(1));
        let judged = Arc::new(Mutex::new(Vec::new()));
        let (v, j) = (version.clone(), judged.clone());
        let cutter = Cutter::with(
            move || {
                j.lock().unwrap().push(v.load(Ordering::SeqCst));
                std::thread::sleep(Duration::from_millis(300));
                Ok(Cut::default())
            },
            Backoff::default(),
        );
        cutter.view_changed();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let asked = Instant::now();
        for next in 2..=4 {
            version.store(next, Ordering::SeqCst);
            cutter.view_changed();
        }
        assert!(
            asked.elapsed() < Duration::from_millis(50),
            "a running cut holds up nobody"
        );
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert_eq!(
            *judged.lock().unwrap(),
            [1, 4],
            "the three changes during the first cut are judged by one more, with the newest view"
        );
    }

    #[tokio::test]
    async fn a_failed_cut_is_tried_again_until_it_succeeds() {
        use std::sync::atomic::{AtomicU32, Ordering};

        let tries = Arc::new(AtomicU32::new(0));
        let t = tries.clone();
        let cutter = Cutter::with(
            move || match t.fetch_add(1, Ordering::SeqCst) {
                0 => Err(ConntrackError::Refused(libc::EPERM)),
                1 => panic!("a cut that panics is tried again too"),
                _ => Ok(Cut::default()),
            },
            Backoff::new(Duration::from_millis(10), Duration::from_millis(20)),
        );
        cutter.view_changed();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            tries.load(Ordering::SeqCst),
            3,
            "two failures, then a success, no more"
        );
    }
}
