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
/// and passes. With `fail_open`, the queue lets packets through while no daemon listens;
/// otherwise they are dropped: isolated pods fail closed.
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
    let len = family.host_len();
    for ip in queued.egress.iter().filter(|ip| family.holds(ip)) {
        out.push_str(&format!("-A {CHAIN} -s {ip}/{len} {queue}\n"));
    }
    for ip in queued.ingress.iter().filter(|ip| family.holds(ip)) {
        out.push_str(&format!("-A {CHAIN} -d {ip}/{len} {queue}\n"));
    }
    out.push_str(&format!(
        "-A {CHAIN} -m conntrack --ctstate NEW -j CONNMARK --set-mark {ALLOWED:#x}/{ALLOWED:#x}\n\
         -A {CHAIN} -m conntrack --ctstate NEW -j ACCEPT\n\
         COMMIT\n"
    ));
    out
}

/// The same rules as one nft ruleset for both families, replacing the table atomically:
/// the queued pods are four sets (egress and ingress, per family), the chain hooks forward at
/// the filter priority.
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
         \t\tct state new ip saddr @egress4 {queue}\n\
         \t\tct state new ip daddr @ingress4 {queue}\n\
         \t\tct state new ip6 saddr @egress6 {queue}\n\
         \t\tct state new ip6 daddr @ingress6 {queue}\n\
         \t\tct state new ct mark set ct mark | {ALLOWED:#x} accept\n\
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

/// Installs one family's chain and hooks it first into FORWARD.
fn install_xtables(family: Family, options: RuleOptions, queued: &Queued) -> Result<()> {
    let restore = format!("{}-restore", family.tool());
    command::feed(
        &restore,
        &["-w", "--noflush"],
        &xtables(family, options, queued),
    )
    .with_context(|| format!("installing the policy chain with {restore}"))?;
    if !xtables_cmd(family, &["-C", "FORWARD", "-j", CHAIN])?
        && !xtables_cmd(family, &["-I", "FORWARD", "1", "-j", CHAIN])?
    {
        bail!("cannot hook {CHAIN} into {}'s FORWARD", family.tool());
    }
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
    let mut removed = false;
    for family in [Family::V4, Family::V6] {
        while xtables_cmd(family, &["-D", "FORWARD", "-j", CHAIN])? {
            removed = true;
        }
        if xtables_cmd(family, &["-F", CHAIN])? {
            removed |= xtables_cmd(family, &["-X", CHAIN])?;
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
        }
    }

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
            .find("-d 10.244.1.2/32 -m conntrack --ctstate NEW -j NFQUEUE --queue-num 0\n")
            .unwrap();
        let queue_out = v4
            .find("-s 10.244.1.3/32 -m conntrack --ctstate NEW -j NFQUEUE")
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

        let v6 = xtables(Family::V6, options(RuleKind::Xtables, true, 4), &queued());
        assert!(
            v6.contains("-A FABRIC-POLICY -s fd00:10:244:1::3/128 -m conntrack --ctstate NEW -j NFQUEUE --queue-balance 0:3 --queue-cpu-fanout --queue-bypass\n"),
            "{v6}"
        );
        assert!(v6.contains("-d fd00:10:244:1::2/128"), "{v6}");
        assert!(!v6.contains("10.244."), "{v6}");

        let open = xtables(
            Family::V4,
            options(RuleKind::Xtables, false, 1),
            &Queued::default(),
        );
        assert!(
            !open.contains("NFQUEUE"),
            "nothing isolated: nothing queued\n{open}"
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
            "ct state new ip saddr @egress4 queue to 0\n",
            "ct state new ip6 daddr @ingress6 queue to 0\n",
            "ct state new ct mark set ct mark | 0x40000 accept",
        ];
        let at: Vec<usize> = order
            .iter()
            .map(|r| {
                text.find(r)
                    .unwrap_or_else(|| panic!("{r:?} missing\n{text}"))
            })
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");

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
