//! `fabric-bench soak`: the churn soak of `fabric_lab::soak` for minutes on a 3-node vxlan lab
//! (pods added and deleted across the nodes, each new pod pinging another node, a policy
//! applied and deleted every round, node2's fabricd restarted halfway), with each fabricd's
//! memory and descriptors at the start and the end of its life and the final leak audit.

use std::time::Duration;

use anyhow::{Context, Result};
use fabric_lab::soak::{self, SoakSpec};
use fabric_lab::{Backend, Lab, LabSpec};

use crate::report::{self, Section};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Lab name.
    pub name: String,
    /// Minutes to churn.
    pub minutes: u64,
}

/// Runs the soak and returns its RESULTS.md section.
pub fn run(opts: &Options) -> Result<Section> {
    let before = crate::Snapshot::take(&opts.name);
    let mut spec = LabSpec::new(&opts.name);
    spec.nodes = 3;
    spec.pods_per_node = 0;
    spec.backend = Backend::Vxlan;
    spec.demo = false;
    let mut lab = Lab::up(spec).context("bringing up the 3-node lab")?;
    let soak_spec = SoakSpec {
        duration: Duration::from_secs(opts.minutes * 60),
        ..SoakSpec::default()
    };
    eprintln!("[{}] churning for {} min", opts.name, opts.minutes);
    let found = soak::run(&mut lab, &soak_spec)?;
    let after = crate::Snapshot::take(&opts.name);
    lab.down().context("tearing the lab down")?;

    let rows: Vec<Vec<String>> = found
        .growth
        .iter()
        .map(|g| {
            vec![
                g.node.clone(),
                g.pid.to_string(),
                g.samples.to_string(),
                format!("{:.1}", g.rss_start_kib as f64 / 1024.0),
                format!("{:.1}", g.rss_end_kib as f64 / 1024.0),
                format!(
                    "{:.3}",
                    g.rss_end_kib as f64 / g.rss_start_kib.max(1) as f64
                ),
                g.fds_start.to_string(),
                g.fds_end.to_string(),
                if g.flat() { "yes" } else { "NO" }.to_string(),
            ]
        })
        .collect();
    let table = report::markdown_table(
        &[
            "node",
            "fabricd pid",
            "samples",
            "RSS start MiB",
            "RSS end MiB",
            "end ÷ start",
            "fds start",
            "fds end",
            "flat",
        ],
        &rows,
    );
    let leaks = if found.leaks.is_empty() {
        "- Leak audit after the churned pods were deleted: nothing left over on any node (pods.json, `fabricctl pod list`, host veths, /32 routes, the `pod_veths`/`pod_addrs`/`pod_addrs6` sets, policy queue rules) — target met".to_string()
    } else {
        format!(
            "- Leak audit after the churned pods were deleted: MISSES the target, found:\n{}",
            found
                .leaks
                .iter()
                .map(|l| format!("  - {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    };
    let flat = if found.growth.iter().all(|g| g.flat()) {
        "- fabricd RSS and descriptors flat in every process — target met"
    } else {
        "- fabricd RSS and descriptors flat in every process — MISSES the target"
    };
    let body = format!(
        "Three nodes (vxlan backend), one steady pod each. Every round adds {churn} pods \
         (round-robin over the nodes; the first pings the next node's steady pod), deletes the \
         oldest churned pods beyond {live} alive, and applies or deletes (in turn) a policy \
         isolating every pod in `default`; halfway through node2's fabricd is stopped (SIGTERM) \
         and started again. After every round each fabricd's `VmRSS` and `/proc/PID/fd` count \
         are sampled; per process, the start is the median of the first quarter of its samples \
         (its first left out), the end the median of the last quarter; flat = RSS grew by at \
         most max(15 %, 4 MiB) and descriptors by at most 3. {rounds} rounds in {secs:.0} s: \
         {adds} pods added, {dels} deleted, {changes} policy changes, {restarts} restart(s). {}\n\n{table}\n{flat}\n{leaks}\n",
        before.describe(&after),
        churn = soak_spec.churn,
        live = soak_spec.live,
        rounds = found.rounds,
        secs = found.elapsed.as_secs_f64(),
        adds = found.adds,
        dels = found.dels,
        changes = found.policy_changes,
        restarts = found.restarts,
    );
    Ok(Section {
        title: "Churn soak: fabricd memory and descriptors, leaks".into(),
        date: crate::today(),
        command: format!(
            "fabric-bench soak --minutes {} --name {}",
            opts.minutes, opts.name
        ),
        machine: crate::machine(),
        body,
    })
}
