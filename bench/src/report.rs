//! Pure helpers behind every figure `fabric-bench` prints: order statistics (median,
//! nearest-rank percentiles), markdown tables, the throughput and latency tables, and the
//! dated RESULTS.md section. Nothing here touches the system, so all of it is unit-tested.

use std::fmt::Write as _;

/// The header a new RESULTS.md starts with.
pub const RESULTS_HEADER: &str = "# fabric benchmark results\n\n\
Sections are appended by `fabric-bench` (newest last); each names the command that produced it \
and the machine it ran on. Run as root from the workspace root after \
`cargo build --release --workspace --bins`.\n";

/// The value at quantile `q` (0..=1) of `samples` by the nearest-rank method (`q = 0` is the
/// minimum, `q = 1` the maximum); `NaN` for no samples.
pub fn quantile(samples: &[f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let sorted = sorted(samples);
    let rank = ((q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The median: the middle sample, or the mean of the two middle ones; `NaN` for no samples.
pub fn median(samples: &[f64]) -> f64 {
    let sorted = sorted(samples);
    let n = sorted.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn sorted(samples: &[f64]) -> Vec<f64> {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// A markdown table; numeric-looking columns are right-aligned.
pub fn markdown_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let numeric = |col: usize| {
        !rows.is_empty()
            && rows.iter().all(|r| {
                r.get(col).is_some_and(|c| {
                    c.trim_start_matches(['-', '+'])
                        .trim_end_matches(['×', '%'])
                        .parse::<f64>()
                        .is_ok()
                        || c == "n/a"
                })
            })
    };
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .chain([header[i].chars().count(), 3])
                .max()
                .unwrap_or(3)
        })
        .collect();
    let line = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
    let pad = |i: usize, s: &str| {
        let fill = " ".repeat(widths[i].saturating_sub(s.chars().count()));
        if numeric(i) {
            format!("{fill}{s}")
        } else {
            format!("{s}{fill}")
        }
    };
    let mut out = line(header.iter().enumerate().map(|(i, h)| pad(i, h)).collect());
    out.push_str(&line(
        widths
            .iter()
            .enumerate()
            .map(|(i, w)| {
                if numeric(i) {
                    format!("{}:", "-".repeat(w - 1))
                } else {
                    "-".repeat(*w)
                }
            })
            .collect(),
    ));
    for row in rows {
        out.push_str(&line(
            (0..header.len())
                .map(|i| pad(i, row.get(i).map_or("", String::as_str)))
                .collect(),
        ));
    }
    out
}

/// One iperf3 run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Run {
    /// Receiver throughput, Gbit/s.
    pub gbps: f64,
    /// TCP retransmits.
    pub retransmits: u64,
    /// iperf3 client (sender) CPU, % of one core (`cpu_utilization_percent.host_total`).
    pub sender_cpu: f64,
    /// iperf3 server (receiver) CPU, % of one core (`remote_total`).
    pub receiver_cpu: f64,
}

/// All runs of one path at one stream count.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The path's label.
    pub path: String,
    /// Is this the hand-built reference the other paths are divided by?
    pub anchor: bool,
    /// iperf3 `-P`.
    pub streams: u32,
    /// The runs, in order.
    pub runs: Vec<Run>,
}

impl Series {
    fn field(&self, f: impl Fn(&Run) -> f64) -> Vec<f64> {
        self.runs.iter().map(f).collect()
    }

    /// Median throughput, Gbit/s.
    pub fn median_gbps(&self) -> f64 {
        median(&self.field(|r| r.gbps))
    }
}

/// The median throughput of the anchor series with `streams` streams, if any.
fn anchor_median(series: &[Series], streams: u32) -> Option<f64> {
    series
        .iter()
        .find(|s| s.anchor && s.streams == streams)
        .map(Series::median_gbps)
}

/// The throughput table: per (path, streams) median/min/max Gbit/s, the ratio of the median to
/// the anchor's median at the same stream count, median retransmits and median CPU.
pub fn throughput_table(series: &[Series]) -> String {
    let rows: Vec<Vec<String>> = series
        .iter()
        .map(|s| {
            let gbps = s.field(|r| r.gbps);
            let ratio = anchor_median(series, s.streams).map(|a| s.median_gbps() / a);
            vec![
                s.path.clone(),
                format!("P{}", s.streams),
                s.runs.len().to_string(),
                format!("{:.2}", median(&gbps)),
                format!("{:.2}", quantile(&gbps, 0.0)),
                format!("{:.2}", quantile(&gbps, 1.0)),
                ratio.map_or("n/a".into(), |r| format!("{r:.3}")),
                format!("{:.0}", median(&s.field(|r| r.retransmits as f64))),
                format!("{:.0}", median(&s.field(|r| r.sender_cpu))),
                format!("{:.0}", median(&s.field(|r| r.receiver_cpu))),
            ]
        })
        .collect();
    markdown_table(
        &[
            "path",
            "streams",
            "runs",
            "median Gbit/s",
            "min",
            "max",
            "÷ hand-built",
            "retransmits",
            "sender CPU %",
            "receiver CPU %",
        ],
        &rows,
    )
}

/// One line per stream count comparing every non-anchor path's median with `target` × the
/// anchor's median, e.g. `- P1: fabric vxlan 9.50 / 9.70 Gbit/s = 0.979× — meets ≥ 0.97×`.
pub fn verdicts(series: &[Series], target: f64) -> String {
    let mut out = String::new();
    for s in series.iter().filter(|s| !s.anchor) {
        let Some(anchor) = anchor_median(series, s.streams) else {
            continue;
        };
        let ratio = s.median_gbps() / anchor;
        let verdict = if ratio >= target { "meets" } else { "MISSES" };
        let _ = writeln!(
            out,
            "- P{}: {} {:.2} / {:.2} Gbit/s = {ratio:.3}× — {verdict} the target ≥ {target}×",
            s.streams,
            s.path,
            s.median_gbps(),
            anchor
        );
    }
    out
}

/// One run of the WireGuard comparison: iperf3's figures plus what the machine and the
/// server node's UDP stack did meanwhile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// iperf3's figures.
    pub run: Run,
    /// Gbit the receiver got (iperf3's `sum_received.bytes`).
    pub gbit: f64,
    /// Busy CPU over the run's window, CPU-seconds, machine-wide (`/proc/stat`).
    pub cpu_seconds: f64,
    /// The same as a fraction of all CPUs (0..=1).
    pub cpu_busy: f64,
    /// UDP datagrams delivered in the server node's namespace during the run.
    pub udp_in: u64,
    /// UDP datagrams dropped there for a full socket receive buffer (`RcvbufErrors`).
    pub udp_rcvbuf_errors: u64,
}

/// All samples of one path at one stream count.
#[derive(Debug, Clone, PartialEq)]
pub struct PathSeries {
    /// The path's label.
    pub path: String,
    /// iperf3 `-P`.
    pub streams: u32,
    /// The samples, in order.
    pub samples: Vec<Sample>,
}

impl PathSeries {
    fn field(&self, f: impl Fn(&Sample) -> f64) -> Vec<f64> {
        self.samples.iter().map(f).collect()
    }

    /// Median throughput, Gbit/s.
    pub fn median_gbps(&self) -> f64 {
        median(&self.field(|s| s.run.gbps))
    }

    /// Median busy CPU-seconds per Gbit received.
    pub fn cpu_seconds_per_gbit(&self) -> f64 {
        median(&self.field(|s| s.cpu_seconds / s.gbit))
    }

    /// Dropped ÷ (delivered + dropped) UDP datagrams over all samples; `None` without any.
    pub fn udp_drop_fraction(&self) -> Option<f64> {
        let dropped: u64 = self.samples.iter().map(|s| s.udp_rcvbuf_errors).sum();
        let total = dropped + self.samples.iter().map(|s| s.udp_in).sum::<u64>();
        (total > 0).then(|| dropped as f64 / total as f64)
    }
}

/// The paths the WireGuard comparison divides by.
#[derive(Debug, Clone, PartialEq)]
pub struct Baselines {
    /// The raw underlay (the limit).
    pub raw: String,
    /// The hand-built kernel VXLAN path.
    pub kernel_vxlan: String,
    /// The boringtun-cli variants; the best median at each stream count counts.
    pub boringtun: Vec<String>,
    /// wireguard-go.
    pub wireguard_go: String,
}

/// The median of `path` at `streams`, if measured.
pub fn path_median(series: &[PathSeries], path: &str, streams: u32) -> Option<f64> {
    series
        .iter()
        .find(|s| s.path == path && s.streams == streams)
        .map(PathSeries::median_gbps)
}

/// The best median among `paths` at `streams`, with its path.
pub fn best_median<'a>(
    series: &[PathSeries],
    paths: &'a [String],
    streams: u32,
) -> Option<(&'a str, f64)> {
    paths
        .iter()
        .filter_map(|p| Some((p.as_str(), path_median(series, p, streams)?)))
        .filter(|(_, m)| !m.is_nan())
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

/// `a / b` with 3 decimals, `n/a` if either is missing or `b` is not positive.
fn ratio_cell(a: f64, b: Option<f64>) -> String {
    match b {
        Some(b) if b > 0.0 && a.is_finite() => format!("{:.3}", a / b),
        _ => "n/a".into(),
    }
}

/// The WireGuard comparison's table: per (path, streams) median/min/max Gbit/s, the median's
/// ratio to the raw underlay, kernel VXLAN, the best boringtun-cli and wireguard-go at the same
/// stream count, median retransmits, median machine CPU busy %, median CPU-seconds per Gbit,
/// and the server node's UDP receive-buffer drops (median per run, % of datagrams).
pub fn wireguard_table(series: &[PathSeries], base: &Baselines) -> String {
    let rows: Vec<Vec<String>> = series
        .iter()
        .map(|s| {
            let gbps = s.field(|x| x.run.gbps);
            let m = s.median_gbps();
            let p = s.streams;
            vec![
                s.path.clone(),
                format!("P{p}"),
                s.samples.len().to_string(),
                format!("{m:.2}"),
                format!("{:.2}", quantile(&gbps, 0.0)),
                format!("{:.2}", quantile(&gbps, 1.0)),
                ratio_cell(m, path_median(series, &base.raw, p)),
                ratio_cell(m, path_median(series, &base.kernel_vxlan, p)),
                ratio_cell(m, best_median(series, &base.boringtun, p).map(|b| b.1)),
                ratio_cell(m, path_median(series, &base.wireguard_go, p)),
                format!("{:.0}", median(&s.field(|x| x.run.retransmits as f64))),
                format!("{:.0}", median(&s.field(|x| x.cpu_busy * 100.0))),
                format!("{:.3}", s.cpu_seconds_per_gbit()),
                format!("{:.0}", median(&s.field(|x| x.udp_rcvbuf_errors as f64))),
                s.udp_drop_fraction()
                    .map_or("n/a".into(), |f| format!("{:.1}", f * 100.0)),
            ]
        })
        .collect();
    markdown_table(
        &[
            "path",
            "streams",
            "runs",
            "median Gbit/s",
            "min",
            "max",
            "÷ raw",
            "÷ kernel VXLAN",
            "÷ best boringtun-cli",
            "÷ wireguard-go",
            "retransmits",
            "CPU busy %",
            "CPU-s/Gbit",
            "UDP rcvbuf drops",
            "drops % of datagrams",
        ],
        &rows,
    )
}

/// A throughput target: `subject`'s median ≥ `ratio` × the best median among `baseline`.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// How the baseline is named in the verdict, e.g. `best boringtun-cli`.
    pub name: String,
    /// The candidate paths (the best median counts).
    pub baseline: Vec<String>,
    /// The required ratio.
    pub ratio: f64,
    /// A stretch goal rather than a requirement.
    pub stretch: bool,
}

/// One verdict line per stream count and target, e.g. `- P1: fabric wireguard 2.00 Gbit/s ÷
/// best boringtun-cli (boringtun-cli --threads 1) 0.80 Gbit/s = 2.50× — meets the target ≥ 2×`.
pub fn target_verdicts(
    series: &[PathSeries],
    subject: &str,
    streams: &[u32],
    targets: &[Target],
) -> String {
    let mut out = String::new();
    for &p in streams {
        let Some(m) = path_median(series, subject, p) else {
            continue;
        };
        for t in targets {
            let Some((best, b)) = best_median(series, &t.baseline, p) else {
                continue;
            };
            let which = if t.baseline.len() > 1 {
                format!(" ({best})")
            } else {
                String::new()
            };
            let ratio = m / b;
            let verdict = if ratio >= t.ratio { "meets" } else { "MISSES" };
            let kind = if t.stretch {
                "stretch target"
            } else {
                "target"
            };
            let _ = writeln!(
                out,
                "- P{p}: {subject} {m:.2} Gbit/s ÷ {}{which} {b:.2} Gbit/s = {ratio:.2}× — \
                 {verdict} the {kind} ≥ {}×",
                t.name, t.ratio
            );
        }
    }
    out
}

/// Busy and total jiffies of the `cpu` line of `/proc/stat`. Busy is user + nice + system +
/// irq + softirq (guest time is inside user); total adds idle, iowait and steal.
pub fn cpu_jiffies(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let [user, nice, system, idle, iowait, irq, softirq, steal] = v[..] else {
        return None;
    };
    let busy = user + nice + system + irq + softirq;
    Some((busy, busy + idle + iowait + steal))
}

/// `Udp: InDatagrams` and `Udp: RcvbufErrors` from `/proc/net/snmp` (a header line of names,
/// then a line of values).
pub fn udp_counters(snmp: &str) -> Option<(u64, u64)> {
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let names: Vec<&str> = udp.next()?.split_whitespace().collect();
    let values: Vec<&str> = udp.next()?.split_whitespace().collect();
    let get = |name: &str| -> Option<u64> {
        let i = names.iter().position(|n| *n == name)?;
        values.get(i)?.parse().ok()
    };
    Some((get("InDatagrams")?, get("RcvbufErrors")?))
}

/// The latency table: per operation p50, p90, p99 and max in ms over `samples` (ms).
pub fn latency_table(ops: &[(&str, &[f64])]) -> String {
    let rows: Vec<Vec<String>> = ops
        .iter()
        .map(|(op, v)| {
            let mut row = vec![op.to_string(), v.len().to_string()];
            row.extend(
                [0.5, 0.9, 0.99, 1.0]
                    .iter()
                    .map(|q| format!("{:.1}", quantile(v, *q))),
            );
            row
        })
        .collect();
    markdown_table(
        &["operation", "calls", "p50 ms", "p90 ms", "p99 ms", "max ms"],
        &rows,
    )
}

/// A dated RESULTS.md section.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    /// The heading, without the date.
    pub title: String,
    /// `YYYY-MM-DD`.
    pub date: String,
    /// The command line that reproduces it.
    pub command: String,
    /// nproc, kernel, CPU model.
    pub machine: String,
    /// Free text and tables.
    pub body: String,
}

impl Section {
    /// Renders the section as markdown (ends with one blank line).
    pub fn render(&self) -> String {
        format!(
            "## {} ({})\n\n- Command: `{}`\n- Machine: {}\n\n{}\n",
            self.title,
            self.date,
            self.command,
            self.machine,
            self.body.trim_end()
        ) + "\n"
    }
}

/// What RESULTS.md holds after appending `section` to `existing` (`None`: no file yet).
pub fn append_section(existing: Option<&str>, section: &str) -> String {
    let mut out = match existing {
        Some(text) if !text.trim().is_empty() => text.trim_end().to_string(),
        _ => RESULTS_HEADER.trim_end().to_string(),
    };
    out.push_str("\n\n");
    out.push_str(section.trim_end());
    out.push('\n');
    out
}

/// The other workloads sharing the machine, by the prefix of their network namespaces (the
/// part before the first `-`, i.e. a lab's name), excluding lab `lab`'s own; sorted, unique.
pub fn other_netns_groups(namespaces: &[String], lab: &str) -> Vec<String> {
    let own = format!("{lab}-");
    let mut groups: Vec<String> = namespaces
        .iter()
        .filter(|ns| !ns.starts_with(&own))
        .map(|ns| ns.split('-').next().unwrap_or(ns).to_string())
        .collect();
    groups.sort();
    groups.dedup();
    groups
}

/// What else ran while a benchmark did: load averages and other labs' namespaces at the
/// start and at the end, as one sentence.
pub fn conditions(load: (&str, &str), others: (&[String], &[String])) -> String {
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    format!(
        "Load average (1/5/15 min) before: {}, after: {}. Other network namespace groups \
         (other labs) before: {}, after: {}.",
        load.0,
        load.1,
        list(others.0),
        list(others.1)
    )
}

/// `YYYY-MM-DD` (UTC) of a Unix time (Howard Hinnant's civil-from-days).
pub fn utc_date(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let doe = days.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.9), 90.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&[7.0], 0.99), 7.0);
        assert!(quantile(&[], 0.5).is_nan());
        // Few samples: p99 of 10 is the maximum.
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(quantile(&ten, 0.99), 10.0);
        assert_eq!(quantile(&ten, 0.9), 9.0);
    }

    #[test]
    fn median_averages_the_middle_pair() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[5.0]), 5.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn tables_align_numbers_right() {
        let t = markdown_table(
            &["path", "Gbit/s"],
            &[
                vec!["a".into(), "9.50".into()],
                vec!["longer".into(), "10.25".into()],
            ],
        );
        assert_eq!(
            t,
            "| path   | Gbit/s |\n\
             | ------ | -----: |\n\
             | a      |   9.50 |\n\
             | longer |  10.25 |\n"
        );
        let empty = markdown_table(&["a", "b"], &[]);
        assert_eq!(empty, "| a   | b   |\n| --- | --- |\n");
    }

    fn run(gbps: f64) -> Run {
        Run {
            gbps,
            retransmits: 2,
            sender_cpu: 90.0,
            receiver_cpu: 40.0,
        }
    }

    fn series() -> Vec<Series> {
        let s = |path: &str, anchor, streams, g: &[f64]| Series {
            path: path.into(),
            anchor,
            streams,
            runs: g.iter().copied().map(run).collect(),
        };
        vec![
            s("fabric", false, 1, &[9.0, 9.8, 9.7]),
            s("hand", true, 1, &[10.0, 9.0, 11.0]),
            s("fabric", false, 4, &[8.0, 8.0, 8.0]),
            s("hand", true, 4, &[10.0, 10.0, 10.0]),
        ]
    }

    fn cells(line: &str) -> Vec<&str> {
        line.trim_matches('|').split('|').map(str::trim).collect()
    }

    #[test]
    fn throughput_table_divides_by_the_anchor_at_the_same_stream_count() {
        let t = throughput_table(&series());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 6);
        assert_eq!(
            cells(lines[2]),
            ["fabric", "P1", "3", "9.70", "9.00", "9.80", "0.970", "2", "90", "40"]
        );
        assert_eq!(cells(lines[3])[6], "1.000");
        assert_eq!(cells(lines[4])[..2], ["fabric", "P4"]);
        assert_eq!(cells(lines[4])[6], "0.800");
        assert!(lines[1].starts_with("| ------ | ------- | ---: |"));
    }

    #[test]
    fn verdicts_compare_with_the_target() {
        let v = verdicts(&series(), 0.97);
        let lines: Vec<&str> = v.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("- P1: fabric 9.70 / 10.00 Gbit/s = 0.970× — meets"));
        assert!(lines[1].contains("0.800× — MISSES the target ≥ 0.97×"));
        assert!(verdicts(&series()[..1], 0.97).is_empty());
    }

    fn sample(gbps: f64, drops: u64) -> Sample {
        Sample {
            run: run(gbps),
            gbit: gbps * 8.0,
            cpu_seconds: 8.0,
            cpu_busy: 0.5,
            udp_in: 80,
            udp_rcvbuf_errors: drops,
        }
    }

    fn wg_series() -> (Vec<PathSeries>, Baselines) {
        let s = |path: &str, streams, g: &[f64], drops: u64| PathSeries {
            path: path.into(),
            streams,
            samples: g.iter().map(|&x| sample(x, drops)).collect(),
        };
        let series = vec![
            s("raw", 1, &[40.0, 38.0, 42.0], 0),
            s("kernel", 1, &[10.0, 10.0, 10.0], 0),
            s("fabric wg", 1, &[3.0, 2.0, 4.0], 0),
            s("bt", 1, &[1.0, 1.0, 1.0], 20),
            s("bt1", 1, &[1.5, 1.4, 1.6], 20),
            s("wggo", 1, &[0.5, 0.5, 0.5], 20),
            s("fabric wg", 4, &[4.0], 0),
            s("bt", 4, &[2.5], 0),
            s("wggo", 4, &[1.0], 0),
        ];
        let base = Baselines {
            raw: "raw".into(),
            kernel_vxlan: "kernel".into(),
            boringtun: vec!["bt".into(), "bt1".into()],
            wireguard_go: "wggo".into(),
        };
        (series, base)
    }

    #[test]
    fn wireguard_table_divides_by_every_baseline() {
        let (series, base) = wg_series();
        assert_eq!(best_median(&series, &base.boringtun, 1), Some(("bt1", 1.5)));
        assert_eq!(best_median(&series, &base.boringtun, 4), Some(("bt", 2.5)));
        assert_eq!(best_median(&series, &base.boringtun, 2), None);
        let t = wireguard_table(&series, &base);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2 + series.len());
        assert_eq!(
            cells(lines[4]),
            [
                "fabric wg",
                "P1",
                "3",
                "3.00",
                "2.00",
                "4.00",
                "0.075",
                "0.300",
                "2.000",
                "6.000",
                "2",
                "50",
                "0.333",
                "0",
                "0.0"
            ]
        );
        // bt1: 20 of 100 datagrams dropped per run.
        assert_eq!(cells(lines[6])[13..], ["20", "20.0"]);
        // P4 has no raw or kernel run: n/a, and the column stays right-aligned.
        assert_eq!(cells(lines[8])[6..10], ["n/a", "n/a", "1.600", "4.000"]);
        assert!(cells(lines[1])[6].ends_with(':'));
    }

    #[test]
    fn target_verdicts_name_the_best_baseline() {
        let (series, base) = wg_series();
        let targets = [
            Target {
                name: "best boringtun-cli".into(),
                baseline: base.boringtun.clone(),
                ratio: 2.0,
                stretch: false,
            },
            Target {
                name: "wireguard-go".into(),
                baseline: vec![base.wireguard_go.clone()],
                ratio: 4.0,
                stretch: false,
            },
            Target {
                name: "kernel VXLAN".into(),
                baseline: vec![base.kernel_vxlan.clone()],
                ratio: 0.25,
                stretch: true,
            },
        ];
        let v = target_verdicts(&series, "fabric wg", &[1, 4], &targets);
        let lines: Vec<&str> = v.lines().collect();
        assert_eq!(
            lines,
            [
                "- P1: fabric wg 3.00 Gbit/s ÷ best boringtun-cli (bt1) 1.50 Gbit/s = 2.00× — meets the target ≥ 2×",
                "- P1: fabric wg 3.00 Gbit/s ÷ wireguard-go 0.50 Gbit/s = 6.00× — meets the target ≥ 4×",
                "- P1: fabric wg 3.00 Gbit/s ÷ kernel VXLAN 10.00 Gbit/s = 0.30× — meets the stretch target ≥ 0.25×",
                "- P4: fabric wg 4.00 Gbit/s ÷ best boringtun-cli (bt) 2.50 Gbit/s = 1.60× — MISSES the target ≥ 2×",
                "- P4: fabric wg 4.00 Gbit/s ÷ wireguard-go 1.00 Gbit/s = 4.00× — meets the target ≥ 4×",
            ]
        );
        assert!(target_verdicts(&series, "nothing", &[1], &targets).is_empty());
    }

    #[test]
    fn proc_parsers() {
        let stat = "cpu  100 5 50 1000 20 3 7 2 0 0\ncpu0 50 2 25 500 10 1 3 1 0 0\n";
        assert_eq!(cpu_jiffies(stat), Some((165, 1187)));
        assert_eq!(cpu_jiffies("cpu0 1 2 3 4 5 6 7 8\n"), None);
        assert_eq!(cpu_jiffies("cpu  1 2 3\n"), None);
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\n\
                    Udp: 1234 5 77 999 70 0 0 0 0\n\
                    UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\n\
                    UdpLite: 0 0 0 0 0 0 0 0 0\n";
        assert_eq!(udp_counters(snmp), Some((1234, 70)));
        assert_eq!(udp_counters("Udp: InDatagrams\n"), None);
    }

    #[test]
    fn latency_table_has_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let t = latency_table(&[("ADD", &v)]);
        assert!(t.contains("| ADD       |   100 |   50.0 |   90.0 |   99.0 |  100.0 |"));
    }

    #[test]
    fn sections_render_and_append() {
        let s = Section {
            title: "CNI latency".into(),
            date: "2025-01-02".into(),
            command: "fabric-bench cni --pods 100".into(),
            machine: "2 CPUs".into(),
            body: "| a |\n\n".into(),
        };
        let text = s.render();
        assert_eq!(
            text,
            "## CNI latency (2025-01-02)\n\n- Command: `fabric-bench cni --pods 100`\n\
             - Machine: 2 CPUs\n\n| a |\n\n"
        );
        let new = append_section(None, &text);
        assert!(new.starts_with("# fabric benchmark results\n"));
        assert!(new.ends_with("\n\n## CNI latency (2025-01-02)\n\n- Command: `fabric-bench cni --pods 100`\n- Machine: 2 CPUs\n\n| a |\n"));
        let again = append_section(Some(&new), &text);
        assert_eq!(again.matches("# fabric benchmark results").count(), 1);
        assert_eq!(again.matches("## CNI latency").count(), 2);
        assert!(append_section(Some("  \n"), "x").starts_with("# fabric"));
    }

    #[test]
    fn other_workloads() {
        let ns: Vec<String> = [
            "benchtp-node1",
            "wgt-sw",
            "wgt-node1-pod1",
            "dbg2-etcd",
            "x",
        ]
        .map(String::from)
        .into();
        assert_eq!(other_netns_groups(&ns, "benchtp"), ["dbg2", "wgt", "x"]);
        assert!(other_netns_groups(&ns[..1], "benchtp").is_empty());
        let c = conditions(("0.1 0.2 0.3", "1.0 0.5 0.4"), (&[], &["wgt".to_string()]));
        assert_eq!(
            c,
            "Load average (1/5/15 min) before: 0.1 0.2 0.3, after: 1.0 0.5 0.4. Other network \
             namespace groups (other labs) before: none, after: wgt."
        );
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(1_709_164_800 + 86_399), "2024-02-29");
        assert_eq!(utc_date(1_735_689_600), "2025-01-01");
    }
}
