//! The netfilter rules that send new connections of isolated local pods to the queue, in two
//! renderings of one rule list:
//!
//! - [`RuleKind::Nft`]: a table of fabric's own, `inet fabric-policy`, with nft's native
//!   `queue` statement, replaced atomically through `nft -f -`. Used where the kernel has the
//!   `queue` expression (`CONFIG_NFT_QUEUE`).
//! - [`RuleKind::Xtables`]: a chain `FABRIC-POLICY` hooked first into FORWARD, for
//!   `iptables-restore` and `ip6tables-restore`, with the xtables NFQUEUE target (iptables-nft
//!   drives it through nftables' xtables compatibility). Used where nft's `queue` is missing,
//!   as on this project's machines.
//!
//! Both send a new connection to the queue through a chain of its own (`FABRIC-POLICY-QUEUE`,
//! or `queued` in the nft table) whose first rule drops new connections of one source address
//! beyond a rate ([`FlowLimit`]): a pod flooding new connections, or one source flooding an
//! isolated pod, cannot fill the queue every isolated pod's connections wait in.
//!
//! [`detect`] picks one by asking the kernel (`nft --check` on a throwaway table with a
//! `queue` statement: nothing is installed). Both renderings are pure text, tested apart
//! from the shell that installs them.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::{ALLOWED, QUEUE};
use crate::command;

/// fabric's iptables chain.
pub const CHAIN: &str = "FABRIC-POLICY";

/// The iptables chain a new connection to judge jumps to: the per-source limit, then NFQUEUE.
pub const QUEUE_CHAIN: &str = "FABRIC-POLICY-QUEUE";

/// How long the per-source limit remembers a source address that sent nothing since, in ms
/// (xtables hashlimit's default; nft's set timeout is the same).
const LIMIT_EXPIRE_MS: u32 = 10_000;

/// The most source addresses the nft limit set tracks at once (xtables hashlimit's table
/// sizes itself, by default up to 65,536 entries too).
const LIMIT_SET_SIZE: u32 = 65_536;

/// fabric's nft table for the queue rules (family `inet`), apart from the `inet fabric` table
/// of anti-spoofing and masquerade, which the pod network replaces on its own schedule.
pub const TABLE: &str = "fabric-policy";

/// Which netfilter front end carries the queue rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuleKind {
    /// nft's native `queue` statement, in the table `inet fabric-policy`.
    Nft,
    /// The xtables NFQUEUE target, in the chain `FABRIC-POLICY` (iptables and ip6tables).
    Xtables,
}

impl fmt::Display for RuleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RuleKind::Nft => "nft",
            RuleKind::Xtables => "xtables",
        })
    }
}

/// How the queue rules are built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleOptions {
    /// The front end.
    pub kind: RuleKind,
    /// While no daemon listens, let queued packets through (queue bypass) instead of
    /// dropping them.
    pub fail_open: bool,
    /// How many queues (from [`QUEUE`]); with more than one, the CPU that handles a packet
    /// picks its queue (CPU fanout), and each queue has a thread on that CPU.
    pub queues: u16,
    /// The per-source limit on new connections that would wait in the queue.
    pub limit: FlowLimit,
}

/// A per-source-address limit on new connections that would wait in the queue: beyond `rate`
/// a second (after a burst of `burst`), a source address's new connections are dropped
/// before they reach the queue, so one pod (or one peer of an isolated pod) cannot starve the
/// others' connections of verdicts. A dropped SYN is sent again by TCP a second later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowLimit {
    /// New connections per second per source address; 0 turns the limit off.
    pub rate: u32,
    /// New connections a source address may open at once above the rate.
    pub burst: u32,
}

impl FlowLimit {
    /// No limit.
    pub const OFF: FlowLimit = FlowLimit { rate: 0, burst: 0 };

    /// The highest rate and burst: xtables hashlimit refuses faster rates.
    pub const MAX: u32 = 1_000_000;

    fn is_on(self) -> bool {
        self.rate > 0
    }

    /// The name of xtables hashlimit's table (`/proc/net/ipt_hashlimit/NAME`, at most 15
    /// characters). A table lives as long as a rule names it and keeps the rate it was made
    /// with, so the name carries rate and burst (hexadecimal) and a changed limit gets a
    /// table of its own.
    fn hashlimit_name(self) -> String {
        format!("fp-{:x}-{:x}", self.rate, self.burst)
    }
}

/// The local pods whose new connections wait for a verdict: those isolated for egress (as
/// sources) and those isolated for ingress (as destinations), by address, both families.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Queued {
    /// Addresses of local pods isolated for egress.
    pub egress: BTreeSet<IpAddr>,
    /// Addresses of local pods isolated for ingress.
    pub ingress: BTreeSet<IpAddr>,
}

/// An address family, for the xtables rendering (one rule set per family).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4: `iptables`.
    V4,
    /// IPv6: `ip6tables`.
    V6,
}

impl Family {
    fn holds(self, ip: &IpAddr) -> bool {
        matches!(
            (self, ip),
            (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
        )
    }

    fn host_len(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    fn tool(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

/// The xtables rules of one family, for `iptables-restore --noflush` (or `ip6tables-`):
/// established and already-allowed connections pass; a packet the daemon marked allowed gets
/// its mark saved on the connection; packets conntrack cannot place are dropped: INVALID
/// ones, and TCP segments without SYN that conntrack would pick up as new (the middle of a cut
/// connection, in either direction); a new connection from or to a `queued` pod waits in the
/// queue; any other new connection is marked allowed (so a later policy change re-judges it)
/// and passes. A queued connection goes through [`QUEUE_CHAIN`], where the [`FlowLimit`] drops
/// a source's new connections beyond its rate (hashlimit, per source address) before NFQUEUE.
/// With `fail_open`, the queue lets packets through while no daemon listens; otherwise they
/// are dropped: isolated pods fail closed.
pub fn xtables(family: Family, options: RuleOptions, queued: &Queued) -> String {
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
    let queue = format!("-m conntrack --ctstate NEW -j {QUEUE_CHAIN}");
    let mut out = format!(
        "*filter\n\
         :{CHAIN} - [0:0]\n\
         :{QUEUE_CHAIN} - [0:0]\n\
         -A {CHAIN} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n\
         -A {CHAIN} -m connmark --mark {ALLOWED:#x}/{ALLOWED:#x} -j ACCEPT\n\
         -A {CHAIN} -m mark --mark {ALLOWED:#x}/{ALLOWED:#x} -j CONNMARK --save-mark --mask {ALLOWED:#x}\n\
         -A {CHAIN} -m mark --mark {ALLOWED:#x}/{ALLOWED:#x} -j ACCEPT\n\
         -A {CHAIN} -m conntrack --ctstate INVALID -j DROP\n\
         -A {CHAIN} -p tcp -m tcp ! --syn -m conntrack --ctstate NEW -j DROP\n"
    );
    let len = family.host_len();
    for ip in queued.egress.iter().filter(|ip| family.holds(ip)) {
        out.push_str(&format!("-A {CHAIN} -s {ip}/{len} {queue}\n"));
    }
    for ip in queued.ingress.iter().filter(|ip| family.holds(ip)) {
        out.push_str(&format!("-A {CHAIN} -d {ip}/{len} {queue}\n"));
    }
    out.push_str(&format!(
        "-A {CHAIN} -m conntrack --ctstate NEW -j CONNMARK --set-mark {ALLOWED:#x}/{ALLOWED:#x}\n\
         -A {CHAIN} -m conntrack --ctstate NEW -j ACCEPT\n"
    ));
    let limit = options.limit;
    if limit.is_on() {
        out.push_str(&format!(
            "-A {QUEUE_CHAIN} -m hashlimit --hashlimit-above {}/sec --hashlimit-burst {} \
             --hashlimit-mode srcip --hashlimit-name {} --hashlimit-htable-expire {LIMIT_EXPIRE_MS} -j DROP\n",
            limit.rate,
            limit.burst,
            limit.hashlimit_name(),
        ));
    }
    out.push_str(&format!(
        "-A {QUEUE_CHAIN} -j NFQUEUE {target}{bypass}\n\
         COMMIT\n"
    ));
    out
}

/// The same rules as one nft ruleset for both families, replacing the table atomically:
/// the queued pods are four sets (egress and ingress, per family), the chain hooks forward at
/// the filter priority, and queued connections go to the chain `queued`, where the
/// [`FlowLimit`] is a limit per source address kept in a dynamic set per family (`flood4`,
/// `flood6`).
pub fn nft(options: RuleOptions, queued: &Queued) -> String {
    let mut flags = Vec::new();
    if options.fail_open {
        flags.push("bypass");
    }
    let to = match options.queues {
        0 | 1 => QUEUE.to_string(),
        n => {
            flags.push("fanout");
            format!("{QUEUE}-{}", QUEUE + n - 1)
        }
    };
    let queue = if flags.is_empty() {
        format!("queue to {to}")
    } else {
        format!("queue flags {} to {to}", flags.join(","))
    };
    let set = |name: &str, kind: &str, ips: &mut dyn Iterator<Item = &IpAddr>| {
        let elements: Vec<String> = ips.map(ToString::to_string).collect();
        let elements = if elements.is_empty() {
            String::new()
        } else {
            format!(" elements = {{ {} }};", elements.join(", "))
        };
        format!("\tset {name} {{ type {kind};{elements} }}\n")
    };
    let of = |ips: &BTreeSet<IpAddr>, family: Family| -> Vec<IpAddr> {
        ips.iter().filter(|ip| family.holds(ip)).copied().collect()
    };
    let mut sets = String::new();
    for (name, kind, ips) in [
        ("egress4", "ipv4_addr", of(&queued.egress, Family::V4)),
        ("ingress4", "ipv4_addr", of(&queued.ingress, Family::V4)),
        ("egress6", "ipv6_addr", of(&queued.egress, Family::V6)),
        ("ingress6", "ipv6_addr", of(&queued.ingress, Family::V6)),
    ] {
        sets.push_str(&set(name, kind, &mut ips.iter()));
    }
    let limit = options.limit;
    let mut limits = String::new();
    if limit.is_on() {
        for (family, addr, kind) in [("4", "ip", "ipv4_addr"), ("6", "ip6", "ipv6_addr")] {
            sets.push_str(&format!(
                "\tset flood{family} {{ type {kind}; size {LIMIT_SET_SIZE}; \
                 flags dynamic,timeout; timeout {LIMIT_EXPIRE_MS}ms; }}\n"
            ));
            limits.push_str(&format!(
                "\t\tupdate @flood{family} {{ {addr} saddr limit rate over {}/second burst {} packets }} counter drop\n",
                limit.rate, limit.burst
            ));
        }
    }
    format!(
        "table inet {TABLE}\n\
         delete table inet {TABLE}\n\
         table inet {TABLE} {{\n\
         {sets}\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tct state established,related accept\n\
         \t\tct mark & {ALLOWED:#x} == {ALLOWED:#x} accept\n\
         \t\tmeta mark & {ALLOWED:#x} == {ALLOWED:#x} ct mark set ct mark | {ALLOWED:#x} accept\n\
         \t\tct state invalid drop\n\
         \t\ttcp flags & (fin | syn | rst | ack) != syn ct state new drop\n\
         \t\tct state new ip saddr @egress4 goto queued\n\
         \t\tct state new ip daddr @ingress4 goto queued\n\
         \t\tct state new ip6 saddr @egress6 goto queued\n\
         \t\tct state new ip6 daddr @ingress6 goto queued\n\
         \t\tct state new ct mark set ct mark | {ALLOWED:#x} accept\n\
         \t}}\n\
         \tchain queued {{\n\
         {limits}\
         \t\t{queue}\n\
         \t}}\n\
         }}\n"
    )
}

/// Whether the kernel has nft's native `queue` expression: `nft --check` on a throwaway
/// table that uses it (the kernel validates the batch, nothing is installed). Falls back to
/// [`RuleKind::Xtables`] when it does not, or when `nft` cannot run.
pub fn detect() -> RuleKind {
    let probe = "table inet fabric-probe {\n\
                 \tchain c {\n\
                 \t\ttype filter hook forward priority filter; policy accept;\n\
                 \t\tmeta l4proto tcp queue flags bypass to 0\n\
                 \t}\n\
                 }\n";
    match crate::nft::check(probe) {
        Ok(()) => RuleKind::Nft,
        Err(e) => {
            tracing::debug!(error = %format!("{e:#}"), "nft has no native queue here");
            RuleKind::Xtables
        }
    }
}

fn xtables_cmd(family: Family, args: &[&str]) -> Result<bool> {
    let tool = family.tool();
    let status = Command::new(tool)
        .arg("-w")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("cannot run {tool} (install the iptables package)"))?;
    Ok(status.success())
}

/// Installs the rules (replacing the previous ones atomically, per family for xtables).
pub fn install(options: RuleOptions, queued: &Queued) -> Result<()> {
    match options.kind {
        RuleKind::Nft => crate::nft::apply(&nft(options, queued))
            .context("installing the policy table (install the nftables package)"),
        RuleKind::Xtables => {
            for family in [Family::V4, Family::V6] {
                let needed = family == Family::V4
                    || queued
                        .egress
                        .iter()
                        .chain(&queued.ingress)
                        .any(|ip| family.holds(ip));
                match install_xtables(family, options, queued) {
                    // A node without IPv6 (ipv6.disable=1) has no pod to queue there.
                    Err(e) if !needed => tracing::warn!(
                        error = %format!("{e:#}"),
                        "no IPv6 policy chain; no IPv6 pod is isolated here"
                    ),
                    other => other?,
                }
            }
            Ok(())
        }
    }
}

/// The xtables rules this process last installed, per family (IPv4, IPv6): an install that
/// leaves a family's rules as they were (IPv6's, where no pod has an IPv6 address) runs no
/// command for it, two commands (~15 ms) fewer for each newly isolated pod.
static INSTALLED: std::sync::Mutex<[Option<String>; 2]> = std::sync::Mutex::new([None, None]);

fn installed() -> std::sync::MutexGuard<'static, [Option<String>; 2]> {
    INSTALLED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Installs one family's chain and hooks it first into FORWARD, unless this process last
/// installed exactly these rules.
fn install_xtables(family: Family, options: RuleOptions, queued: &Queued) -> Result<()> {
    let slot = family as usize;
    let rules = xtables(family, options, queued);
    if installed()[slot].as_ref() == Some(&rules) {
        return Ok(());
    }
    installed()[slot] = None;
    let restore = format!("{}-restore", family.tool());
    command::feed(&restore, &["-w", "--noflush"], &rules)
        .with_context(|| format!("installing the policy chain with {restore}"))?;
    if !xtables_cmd(family, &["-C", "FORWARD", "-j", CHAIN])?
        && !xtables_cmd(family, &["-I", "FORWARD", "1", "-j", CHAIN])?
    {
        bail!("cannot hook {CHAIN} into {}'s FORWARD", family.tool());
    }
    installed()[slot] = Some(rules);
    Ok(())
}

/// Removes the queue rules of both kinds, if any. fabricd calls it when it starts with
/// enforcement off, so that a queue rule left by an earlier run does not hold new connections
/// for a daemon that no longer answers.
pub fn remove() -> Result<bool> {
    Ok(remove_kind(RuleKind::Xtables)? | remove_kind(RuleKind::Nft)?)
}

/// Removes the queue rules of one kind, if any: for xtables the FORWARD hooks and chains of
/// both families, for nft the table. fabricd removes the kind it does not use before it
/// installs its own, so a switch of kind leaves nothing behind (and the kind it keeps is
/// replaced atomically, with no moment unenforced).
pub fn remove_kind(kind: RuleKind) -> Result<bool> {
    if kind == RuleKind::Nft {
        return remove_table();
    }
    *installed() = [None, None];
    let mut removed = false;
    for family in [Family::V4, Family::V6] {
        while xtables_cmd(family, &["-D", "FORWARD", "-j", CHAIN])? {
            removed = true;
        }
        // The main chain jumps to the queue chain: it goes first.
        for chain in [CHAIN, QUEUE_CHAIN] {
            if xtables_cmd(family, &["-F", chain])? {
                removed |= xtables_cmd(family, &["-X", chain])?;
            }
        }
    }
    Ok(removed)
}

fn remove_table() -> Result<bool> {
    let table = format!("table inet {TABLE}\ndelete table inet {TABLE}\n");
    let existed = Command::new("nft")
        .args(["list", "table", "inet", TABLE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if existed {
        crate::nft::apply(&table).context("removing the policy table")?;
    }
    Ok(existed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(kind: RuleKind, fail_open: bool, queues: u16) -> RuleOptions {
        RuleOptions {
            kind,
            fail_open,
            queues,
            limit: LIMIT,
        }
    }

    const LIMIT: FlowLimit = FlowLimit {
        rate: 1000,
        burst: 2000,
    };

    fn queued() -> Queued {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        Queued {
            egress: BTreeSet::from([ip("10.244.1.3"), ip("fd00:10:244:1::3")]),
            ingress: BTreeSet::from([ip("10.244.1.2"), ip("fd00:10:244:1::2")]),
        }
    }

    #[test]
    fn xtables_rules_queue_each_family_its_own_pods() {
        let v4 = xtables(Family::V4, options(RuleKind::Xtables, false, 1), &queued());
        let queue_in = v4
            .find("-d 10.244.1.2/32 -m conntrack --ctstate NEW -j FABRIC-POLICY-QUEUE\n")
            .unwrap();
        let queue_out = v4
            .find("-s 10.244.1.3/32 -m conntrack --ctstate NEW -j FABRIC-POLICY-QUEUE\n")
            .unwrap();
        let pass = v4.find("--ctstate NEW -j CONNMARK --set-mark").unwrap();
        let invalid = v4.find("--ctstate INVALID -j DROP").unwrap();
        let midstream = v4
            .find("-p tcp -m tcp ! --syn -m conntrack --ctstate NEW -j DROP")
            .unwrap();
        assert!(
            invalid < queue_out && midstream < queue_out && queue_in < pass,
            "{v4}"
        );
        assert!(!v4.contains("fd00"), "{v4}");
        assert!(!v4.contains("--queue-bypass"));
        // The queue chain: the per-source limit, then the queue.
        let limit = v4
            .find("-A FABRIC-POLICY-QUEUE -m hashlimit --hashlimit-above 1000/sec --hashlimit-burst 2000 --hashlimit-mode srcip --hashlimit-name fp-3e8-7d0 --hashlimit-htable-expire 10000 -j DROP\n")
            .unwrap_or_else(|| panic!("{v4}"));
        let queue = v4
            .find("-A FABRIC-POLICY-QUEUE -j NFQUEUE --queue-num 0\n")
            .unwrap();
        let declared = v4.find(":FABRIC-POLICY-QUEUE - [0:0]\n").unwrap();
        assert!(declared < queue_out && limit < queue, "{v4}");

        let v6 = xtables(Family::V6, options(RuleKind::Xtables, true, 4), &queued());
        assert!(
            v6.contains("-A FABRIC-POLICY -s fd00:10:244:1::3/128 -m conntrack --ctstate NEW -j FABRIC-POLICY-QUEUE\n"),
            "{v6}"
        );
        assert!(
            v6.contains("-A FABRIC-POLICY-QUEUE -j NFQUEUE --queue-balance 0:3 --queue-cpu-fanout --queue-bypass\n"),
            "{v6}"
        );
        assert!(v6.contains("--hashlimit-mode srcip"), "{v6}");
        assert!(v6.contains("-d fd00:10:244:1::2/128"), "{v6}");
        assert!(!v6.contains("10.244."), "{v6}");

        let open = xtables(
            Family::V4,
            options(RuleKind::Xtables, false, 1),
            &Queued::default(),
        );
        assert!(
            !open.contains("--ctstate NEW -j FABRIC-POLICY-QUEUE"),
            "nothing isolated: nothing queued\n{open}"
        );

        let unlimited = RuleOptions {
            limit: FlowLimit::OFF,
            ..options(RuleKind::Xtables, false, 1)
        };
        let unlimited = xtables(Family::V4, unlimited, &queued());
        assert!(!unlimited.contains("hashlimit"), "{unlimited}");
        assert!(
            unlimited.contains("-A FABRIC-POLICY-QUEUE -j NFQUEUE --queue-num 0\n"),
            "{unlimited}"
        );
    }

    #[test]
    fn a_changed_limit_names_a_hashlimit_table_of_its_own() {
        assert_eq!(LIMIT.hashlimit_name(), "fp-3e8-7d0");
        let max = FlowLimit {
            rate: FlowLimit::MAX,
            burst: FlowLimit::MAX,
        };
        assert!(max.hashlimit_name().len() <= 15, "{}", max.hashlimit_name());
        assert_ne!(
            max.hashlimit_name(),
            FlowLimit { rate: 1, ..max }.hashlimit_name()
        );
    }

    #[test]
    fn nft_rules_say_what_the_xtables_rules_say() {
        let text = nft(options(RuleKind::Nft, false, 1), &queued());
        assert!(text.starts_with("table inet fabric-policy\ndelete table inet fabric-policy\n"));
        assert!(
            text.contains("set egress4 { type ipv4_addr; elements = { 10.244.1.3 }; }"),
            "{text}"
        );
        assert!(
            text.contains("set ingress6 { type ipv6_addr; elements = { fd00:10:244:1::2 }; }"),
            "{text}"
        );
        let order = [
            "ct state established,related accept",
            "ct mark & 0x40000 == 0x40000 accept",
            "meta mark & 0x40000 == 0x40000 ct mark set ct mark | 0x40000 accept",
            "ct state invalid drop",
            "tcp flags & (fin | syn | rst | ack) != syn ct state new drop",
            "ct state new ip saddr @egress4 goto queued\n",
            "ct state new ip6 daddr @ingress6 goto queued\n",
            "ct state new ct mark set ct mark | 0x40000 accept",
            "chain queued {\n",
            "update @flood4 { ip saddr limit rate over 1000/second burst 2000 packets } counter drop\n",
            "update @flood6 { ip6 saddr limit rate over 1000/second burst 2000 packets } counter drop\n",
            "\t\tqueue to 0\n",
        ];
        let at: Vec<usize> = order
            .iter()
            .map(|r| {
                text.find(r)
                    .unwrap_or_else(|| panic!("{r:?} missing\n{text}"))
            })
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert!(
            text.contains("set flood6 { type ipv6_addr; size 65536; flags dynamic,timeout; timeout 10000ms; }"),
            "{text}"
        );
        let unlimited = RuleOptions {
            limit: FlowLimit::OFF,
            ..options(RuleKind::Nft, false, 1)
        };
        let unlimited = nft(unlimited, &queued());
        assert!(
            !unlimited.contains("flood")
                && unlimited.contains("chain queued {\n\t\tqueue to 0\n\t}"),
            "{unlimited}"
        );

        let many = nft(options(RuleKind::Nft, true, 4), &Queued::default());
        assert!(
            many.contains("queue flags bypass,fanout to 0-3\n"),
            "{many}"
        );
        assert!(
            many.contains("set egress6 { type ipv6_addr; }"),
            "empty sets: {many}"
        );
        assert!(
            nft(options(RuleKind::Nft, true, 1), &queued()).contains("queue flags bypass to 0\n")
        );
    }

    #[test]
    fn kinds_print_as_their_flag_values() {
        assert_eq!(RuleKind::Nft.to_string(), "nft");
        assert_eq!(RuleKind::Xtables.to_string(), "xtables");
    }
}
