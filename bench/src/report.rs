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
    /// Debian's (old) wireguard-go.
    pub wireguard_go_debian: String,
    /// The current wireguard-go release, built from source.
    pub wireguard_go: String,
}

/// The median of `path` at `streams`, if measured.
pub fn path_median(series: &[PathSeries], path: &str, streams: u32) -> Option<f64> {
    series
        .iter()
        .find(|s| s.path == path && s.streams == streams)
        .map(PathSeries::median_gbps)
}

/// The median CPU-seconds per Gbit of `path` at `streams`, if measured.
pub fn path_cpu_per_gbit(series: &[PathSeries], path: &str, streams: u32) -> Option<f64> {
    series
        .iter()
        .find(|s| s.path == path && s.streams == streams)
        .map(PathSeries::cpu_seconds_per_gbit)
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
/// ratio to the raw underlay, kernel VXLAN, the best boringtun-cli, Debian's and the current
/// wireguard-go at the same stream count, median retransmits, median machine CPU busy %, median
/// CPU-seconds per Gbit and its ratio to the current wireguard-go's, and the server node's UDP
/// receive-buffer drops (median per run, % of datagrams).
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
                ratio_cell(m, path_median(series, &base.wireguard_go_debian, p)),
                ratio_cell(m, path_median(series, &base.wireguard_go, p)),
                format!("{:.0}", median(&s.field(|x| x.run.retransmits as f64))),
                format!("{:.0}", median(&s.field(|x| x.cpu_busy * 100.0))),
                format!("{:.3}", s.cpu_seconds_per_gbit()),
                ratio_cell(
                    s.cpu_seconds_per_gbit(),
                    path_cpu_per_gbit(series, &base.wireguard_go, p),
                ),
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
            "÷ wireguard-go (Debian)",
            "÷ wireguard-go (current)",
            "retransmits",
            "CPU busy %",
            "CPU-s/Gbit",
            "CPU-s/Gbit ÷ wireguard-go (current)",
            "UDP rcvbuf drops",
            "drops % of datagrams",
        ],
        &rows,
    )
}

/// What a [`Target`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Median Gbit/s; higher is better, the best baseline is the fastest, the target is `≥`.
    Gbps,
    /// Median CPU-seconds per Gbit; lower is better, the best baseline is the cheapest, the
    /// target is `≤`.
    CpuPerGbit,
}

impl Metric {
    fn of(self, series: &[PathSeries], path: &str, streams: u32) -> Option<f64> {
        match self {
            Metric::Gbps => path_median(series, path, streams),
            Metric::CpuPerGbit => path_cpu_per_gbit(series, path, streams),
        }
        .filter(|v| v.is_finite())
    }

    /// The best of `paths` at `streams`, with its path.
    fn best<'a>(
        self,
        series: &[PathSeries],
        paths: &'a [String],
        streams: u32,
    ) -> Option<(&'a str, f64)> {
        let values = paths
            .iter()
            .filter_map(|p| Some((p.as_str(), self.of(series, p, streams)?)));
        match self {
            Metric::Gbps => values.max_by(|a, b| a.1.total_cmp(&b.1)),
            Metric::CpuPerGbit => values.min_by(|a, b| a.1.total_cmp(&b.1)),
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Metric::Gbps => "Gbit/s",
            Metric::CpuPerGbit => "CPU-s/Gbit",
        }
    }
}

/// A target: `subject`'s median ≥ `ratio` × the best median among `baseline` (Gbit/s), or its
/// CPU-seconds per Gbit ≤ `ratio` × the lowest among `baseline`'s.
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
    /// What is compared.
    pub metric: Metric,
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
        for t in targets {
            let Some(m) = t.metric.of(series, subject, p) else {
                continue;
            };
            let Some((best, b)) = t.metric.best(series, &t.baseline, p) else {
                continue;
            };
            let which = if t.baseline.len() > 1 {
                format!(" ({best})")
            } else {
                String::new()
            };
            let ratio = m / b;
            let (met, op) = match t.metric {
                Metric::Gbps => (ratio >= t.ratio, '≥'),
                Metric::CpuPerGbit => (ratio <= t.ratio, '≤'),
            };
            let verdict = if met { "meets" } else { "MISSES" };
            let unit = t.metric.unit();
            let digits = if t.metric == Metric::Gbps { 2 } else { 3 };
            let kind = if t.stretch {
                "stretch target"
            } else {
                "target"
            };
            let _ = writeln!(
                out,
                "- P{p}: {subject} {m:.digits$} {unit} ÷ {}{which} {b:.digits$} {unit} = \
                 {ratio:.2}× — {verdict} the {kind} {op} {}×",
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

/// The section's figures as one JSON document, read back from the rendered markdown so that
/// no benchmark needs JSON code of its own: `benchmark` (the subcommand, from the command
/// line), `title`, `date`, `command`, `machine`; `tables`, each with its `columns` (the headers
/// as printed), their `keys` (see [`json_key`]), the `rows` as objects keyed by those (cells
/// through [`json_cell`]) and the `caption` (the paragraph just before it, if that ends with a
/// colon); `verdicts` (bullets naming a target, through [`json_verdict`]) and `targets_met`
/// (all verdicts met; `null` without any); the other bullets as `notes`, the other paragraphs
/// as `text`, and the `charts` the section links.
pub fn section_json(section: &Section) -> serde_json::Value {
    use serde_json::{json, Value};
    let mut tables = Vec::new();
    let (mut verdicts, mut notes, mut text, mut charts) = (vec![], vec![], vec![], vec![]);
    let mut previous: Option<String> = None;
    for block in blocks(&section.body) {
        if block.iter().all(|l| l.starts_with('|')) {
            let rows: Vec<Vec<String>> = block.iter().map(|l| table_cells(l)).collect();
            let header = &rows[0];
            let keys = unique_keys(header);
            let body =
                rows.iter()
                    .skip(1)
                    .filter(|r| !is_separator(r))
                    .map(|r| {
                        let cells = keys.iter().enumerate().map(|(i, k)| {
                            (k.clone(), json_cell(r.get(i).map_or("", String::as_str)))
                        });
                        Value::Object(cells.collect())
                    })
                    .collect::<Vec<_>>();
            let caption = previous
                .take()
                .filter(|p| p.ends_with(':'))
                .map_or(Value::Null, |p| {
                    Value::String(p.trim_end_matches(':').into())
                });
            tables
                .push(json!({ "columns": header, "keys": keys, "rows": body, "caption": caption }));
            continue;
        }
        // Paragraphs and bullets (a bullet's lines up to the next bullet), and chart links.
        let mut items: Vec<(bool, String)> = Vec::new();
        for line in &block {
            if let Some(file) = chart_link(line) {
                charts.push(Value::String(file.into()));
            } else if let Some(item) = line.strip_prefix("- ") {
                items.push((true, item.trim().to_string()));
            } else if let Some((_, last)) = items.last_mut() {
                last.push(' ');
                last.push_str(line.trim());
            } else {
                items.push((false, line.trim().to_string()));
            }
        }
        previous = None;
        for (bullet, item) in items {
            if bullet {
                previous = None;
                match json_verdict(&item) {
                    Some(v) => verdicts.push(v),
                    None => notes.push(Value::String(item)),
                }
            } else {
                text.push(Value::String(item.clone()));
                previous = Some(item);
            }
        }
    }
    let met: Vec<bool> = verdicts.iter().filter_map(|v| v["met"].as_bool()).collect();
    let benchmark = section
        .command
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    json!({
        "benchmark": benchmark,
        "title": section.title,
        "date": section.date,
        "command": section.command,
        "machine": section.machine,
        "tables": tables,
        "verdicts": verdicts,
        "targets_met": (!met.is_empty()).then(|| met.iter().all(|m| *m)),
        "notes": notes,
        "text": text,
        "charts": charts,
    })
}

/// The body's blocks: runs of non-blank lines, a table's rows always a block of their own.
fn blocks(body: &str) -> Vec<Vec<&str>> {
    let is_row = |l: &str| l.starts_with('|');
    let mut out: Vec<Vec<&str>> = vec![];
    let mut current: Vec<&str> = vec![];
    for line in body.lines().map(str::trim_end) {
        let switches = current.last().is_some_and(|l| is_row(l) != is_row(line));
        if (line.trim().is_empty() || switches) && !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
        if !line.trim().is_empty() {
            current.push(line);
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The cells of a markdown table row, trimmed.
fn table_cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|');
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    inner.split('|').map(|c| c.trim().to_string()).collect()
}

/// Is this the `| --- | ---: |` row?
fn is_separator(cells: &[String]) -> bool {
    cells
        .iter()
        .all(|c| !c.is_empty() && c.chars().all(|ch| matches!(ch, '-' | ':')))
}

/// The file of a `![alt](file)` line.
fn chart_link(line: &str) -> Option<&str> {
    line.trim()
        .strip_prefix("![")?
        .split_once("](")?
        .1
        .strip_suffix(')')
}

/// A column header as a JSON key: lower case, `÷` as `div`, `%` as `pct`, `/` as `per`, every
/// other run of non-alphanumerics as one `_` (`median Gbit/s` → `median_gbit_per_s`,
/// `÷ kernel VXLAN` → `div_kernel_vxlan`, `CPU-s/Gbit` → `cpu_s_per_gbit`).
pub fn json_key(header: &str) -> String {
    let spelled = header
        .replace('÷', " div ")
        .replace('%', " pct ")
        .replace('/', " per ")
        .replace('≥', " min ")
        .replace('≤', " max ");
    let mut key = String::new();
    for ch in spelled.chars() {
        if ch.is_ascii_alphanumeric() {
            key.push(ch.to_ascii_lowercase());
        } else if !key.is_empty() && !key.ends_with('_') {
            key.push('_');
        }
    }
    let key = key.trim_end_matches('_').to_string();
    if key.is_empty() {
        "column".into()
    } else {
        key
    }
}

/// The headers' keys, a repeated one suffixed `_2`, `_3`, ….
fn unique_keys(header: &[String]) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for h in header {
        let base = json_key(h);
        let mut key = base.clone();
        let mut n = 1;
        while keys.contains(&key) {
            n += 1;
            key = format!("{base}_{n}");
        }
        keys.push(key);
    }
    keys
}

/// A number as a table prints it (`9.50`, `-3`, `0.970×`, `12.5%`), if it is one.
fn cell_number(cell: &str) -> Option<serde_json::Value> {
    let t = cell
        .trim()
        .trim_end_matches(['×', '%'])
        .trim_start_matches('+');
    if t.is_empty() || !t.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
        return None;
    }
    if let Ok(i) = t.parse::<i64>() {
        return Some(i.into());
    }
    let f: f64 = t.parse().ok()?;
    serde_json::Number::from_f64(f).map(serde_json::Value::Number)
}

/// A table cell as JSON: a number for a numeric cell, an array of numbers for a list of them
/// (`14815, 13201`), `null` for `n/a`, `N/A`, `-` or an empty cell, else the text (code
/// spans' backticks removed).
pub fn json_cell(cell: &str) -> serde_json::Value {
    let cell = cell.trim();
    if matches!(cell, "" | "-" | "n/a" | "N/A") {
        return serde_json::Value::Null;
    }
    if let Some(n) = cell_number(cell) {
        return n;
    }
    if cell.contains(", ") {
        let parts: Option<Vec<_>> = cell.split(", ").map(cell_number).collect();
        if let Some(parts) = parts {
            return serde_json::Value::Array(parts);
        }
    }
    serde_json::Value::String(cell.replace('`', ""))
}

/// A bullet naming a target's outcome, as JSON: `text`, `met` (the first of `meets` / `met`
/// → true, `MISSES` / `NOT met` → false), `stretch` (a stretch target), `streams` (a leading
/// `P<n>:`), `ratio` (the `= <x>×` before the outcome), `target` and `op` (`>=` or `<=`, from
/// the `≥ <x>×` / `≤ <x>×` after it). `None` for any other bullet.
pub fn json_verdict(item: &str) -> Option<serde_json::Value> {
    let item = item.trim();
    let outcomes = [
        ("MISSES", false),
        ("NOT met", false),
        ("meets", true),
        ("target met", true),
    ];
    let (at, word, met) = outcomes
        .iter()
        .filter_map(|(w, m)| item.find(w).map(|at| (at, *w, *m)))
        .min_by_key(|(at, ..)| *at)?;
    let before = &item[..at];
    let after = &item[at + word.len()..];
    let number_after = |text: &str| -> Option<f64> {
        let digits: String = text
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        digits.parse().ok()
    };
    let ratio = before
        .rfind("= ")
        .and_then(|i| number_after(&before[i + 2..]));
    let target = ['≥', '≤']
        .iter()
        .filter_map(|op| after.find(*op).map(|i| (i, *op)))
        .min_by_key(|(i, _)| *i)
        .and_then(|(i, op)| {
            let n = number_after(&after[i + op.len_utf8()..])?;
            Some((if op == '≥' { ">=" } else { "<=" }, n))
        });
    let streams = item.split_once(':').map(|(p, _)| p).filter(|p| {
        p.len() > 1 && p.starts_with('P') && p[1..].chars().all(|c| c.is_ascii_digit())
    });
    Some(serde_json::json!({
        "text": item,
        "met": met,
        "stretch": after.trim_start().starts_with("the stretch target"),
        "streams": streams,
        "ratio": ratio,
        "target": target.map(|t| t.1),
        "op": target.map(|t| t.0),
    }))
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
            s("wgnew", 1, &[1.0, 1.5, 2.0], 0),
            s("fabric wg", 4, &[4.0], 0),
            s("bt", 4, &[2.5], 0),
            s("wggo", 4, &[1.0], 0),
            s("wgnew", 4, &[2.5], 0),
        ];
        let base = Baselines {
            raw: "raw".into(),
            kernel_vxlan: "kernel".into(),
            boringtun: vec!["bt".into(), "bt1".into()],
            wireguard_go_debian: "wggo".into(),
            wireguard_go: "wgnew".into(),
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
        // Every run: 8 CPU-seconds, 8 × Gbit/s received, so CPU-s/Gbit = 1 / Gbit/s.
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
                "2.000",
                "2",
                "50",
                "0.333",
                "0.500",
                "0",
                "0.0"
            ]
        );
        // bt1: 20 of 100 datagrams dropped per run.
        assert_eq!(cells(lines[6])[15..], ["20", "20.0"]);
        // The current wireguard-go divided by itself.
        assert_eq!(cells(lines[8])[10], "1.000");
        assert_eq!(cells(lines[8])[14], "1.000");
        // P4 has no raw or kernel run: n/a, and the column stays right-aligned.
        assert_eq!(
            cells(lines[9])[6..11],
            ["n/a", "n/a", "1.600", "4.000", "1.600"]
        );
        assert_eq!(cells(lines[9])[13..15], ["0.250", "0.625"]);
        assert!(cells(lines[1])[6].ends_with(':'));
    }

    #[test]
    fn target_verdicts_name_the_best_baseline() {
        let (series, base) = wg_series();
        let target = |name: &str, baseline: Vec<String>, ratio, stretch, metric| Target {
            name: name.into(),
            baseline,
            ratio,
            stretch,
            metric,
        };
        let targets = [
            target(
                "best boringtun-cli",
                base.boringtun.clone(),
                2.0,
                false,
                Metric::Gbps,
            ),
            target(
                "wireguard-go",
                vec![base.wireguard_go_debian.clone()],
                4.0,
                false,
                Metric::Gbps,
            ),
            target(
                "kernel VXLAN",
                vec![base.kernel_vxlan.clone()],
                0.25,
                true,
                Metric::Gbps,
            ),
            target(
                "current wireguard-go",
                vec![base.wireguard_go.clone()],
                0.6,
                false,
                Metric::CpuPerGbit,
            ),
            // The cheapest of several baselines counts.
            target(
                "best wireguard-go",
                vec![base.wireguard_go_debian.clone(), base.wireguard_go.clone()],
                0.4,
                false,
                Metric::CpuPerGbit,
            ),
        ];
        let v = target_verdicts(&series, "fabric wg", &[1, 4], &targets);
        let lines: Vec<&str> = v.lines().collect();
        assert_eq!(
            lines,
            [
                "- P1: fabric wg 3.00 Gbit/s ÷ best boringtun-cli (bt1) 1.50 Gbit/s = 2.00× — meets the target ≥ 2×",
                "- P1: fabric wg 3.00 Gbit/s ÷ wireguard-go 0.50 Gbit/s = 6.00× — meets the target ≥ 4×",
                "- P1: fabric wg 3.00 Gbit/s ÷ kernel VXLAN 10.00 Gbit/s = 0.30× — meets the stretch target ≥ 0.25×",
                "- P1: fabric wg 0.333 CPU-s/Gbit ÷ current wireguard-go 0.667 CPU-s/Gbit = 0.50× — meets the target ≤ 0.6×",
                "- P1: fabric wg 0.333 CPU-s/Gbit ÷ best wireguard-go (wgnew) 0.667 CPU-s/Gbit = 0.50× — MISSES the target ≤ 0.4×",
                "- P4: fabric wg 4.00 Gbit/s ÷ best boringtun-cli (bt) 2.50 Gbit/s = 1.60× — MISSES the target ≥ 2×",
                "- P4: fabric wg 4.00 Gbit/s ÷ wireguard-go 1.00 Gbit/s = 4.00× — meets the target ≥ 4×",
                "- P4: fabric wg 0.250 CPU-s/Gbit ÷ current wireguard-go 0.400 CPU-s/Gbit = 0.62× — MISSES the target ≤ 0.6×",
                "- P4: fabric wg 0.250 CPU-s/Gbit ÷ best wireguard-go (wgnew) 0.400 CPU-s/Gbit = 0.62× — MISSES the target ≤ 0.4×",
            ]
        );
        assert!(target_verdicts(&series, "nothing", &[1], &targets).is_empty());
    }

    #[test]
    fn json_keys_and_cells() {
        assert_eq!(json_key("median Gbit/s"), "median_gbit_per_s");
        assert_eq!(json_key("÷ kernel VXLAN"), "div_kernel_vxlan");
        assert_eq!(
            json_key("÷ wireguard-go (current)"),
            "div_wireguard_go_current"
        );
        assert_eq!(json_key("CPU-s/Gbit"), "cpu_s_per_gbit");
        assert_eq!(json_key("drops % of datagrams"), "drops_pct_of_datagrams");
        assert_eq!(json_key("p99 ms"), "p99_ms");
        assert_eq!(json_key("÷"), "div");
        assert_eq!(json_key("—"), "column");
        assert_eq!(
            unique_keys(&["a".into(), "A".into(), "a!".into()]),
            ["a", "a_2", "a_3"]
        );
        use serde_json::json;
        assert_eq!(json_cell("9.50"), json!(9.5));
        assert_eq!(json_cell("  100 "), json!(100));
        assert!(json_cell("100").is_u64());
        assert_eq!(json_cell("-3"), json!(-3));
        assert_eq!(json_cell("0.970×"), json!(0.97));
        assert_eq!(json_cell("20.0%"), json!(20.0));
        assert_eq!(
            json_cell("14815, 13201, 13242"),
            json!([14815, 13201, 13242])
        );
        assert_eq!(json_cell("n/a"), json!(null));
        assert_eq!(json_cell("-"), json!(null));
        assert_eq!(json_cell("P1"), json!("P1"));
        assert_eq!(json_cell("10.96.0.10"), json!("10.96.0.10"));
        assert_eq!(json_cell("2026-12-03"), json!("2026-12-03"));
        assert_eq!(json_cell("a, 1"), json!("a, 1"));
        assert_eq!(json_cell("`wg0` up"), json!("wg0 up"));
    }

    #[test]
    fn json_verdicts() {
        use serde_json::json;
        let v = |s: &str| json_verdict(s).unwrap();
        let p1 = v("P1: fabric vxlan 8.57 / 8.77 Gbit/s = 0.977× — meets the target ≥ 0.97×");
        assert_eq!(
            p1,
            json!({
                "text": "P1: fabric vxlan 8.57 / 8.77 Gbit/s = 0.977× — meets the target ≥ 0.97×",
                "met": true, "stretch": false, "streams": "P1", "ratio": 0.977,
                "target": 0.97, "op": ">=",
            })
        );
        let cpu = v("P4: fabric wg 0.250 CPU-s/Gbit ÷ wgnew 0.400 CPU-s/Gbit = 0.62× — MISSES the target ≤ 0.6×");
        assert_eq!(
            (&cpu["met"], &cpu["ratio"], &cpu["target"], &cpu["op"]),
            (&json!(false), &json!(0.62), &json!(0.6), &json!("<="))
        );
        let stretch = v("P1: a 1 Gbit/s ÷ b 10 Gbit/s = 0.10× — MISSES the stretch target ≥ 0.25×");
        assert_eq!(stretch["stretch"], json!(true));
        // The first outcome counts; the parenthesis is about another condition.
        let first = v(
            "Throughput with 1000 policies ÷ with none (enforcement on): 1.051× — meets \
                       the target ≥ 0.98× (server isolated; both isolated: 0.916×, MISSES)",
        );
        assert_eq!(
            (
                &first["met"],
                &first["streams"],
                &first["ratio"],
                &first["target"]
            ),
            (&json!(true), &json!(null), &json!(null), &json!(0.98))
        );
        let flood =
            v("P1: flooded ÷ quiet = 0.749× (per repetition: 0.723, 0.747); target NOT met");
        assert_eq!(
            (&flood["met"], &flood["ratio"], &flood["target"]),
            (&json!(false), &json!(0.749), &json!(null))
        );
        assert_eq!(v("P4: x = 0.9×; target met")["met"], json!(true));
        assert!(json_verdict("Retried iperf3 attempts: none").is_none());
    }

    #[test]
    fn sections_as_json() {
        let (series, base) = wg_series();
        let targets = [Target {
            name: "current wireguard-go".into(),
            baseline: vec![base.wireguard_go.clone()],
            ratio: 2.0,
            stretch: false,
            metric: Metric::Gbps,
        }];
        let body = format!(
            "Two labs, described.\n\nResident memory:\n\n{}\nTargets:\n\n{}\n             ![chart](wireguard.png)\n\n- Retried iperf3 attempts: rep 1 P1 bt: no\n  \
             report\n",
            wireguard_table(&series, &base),
            target_verdicts(&series, "fabric wg", &[1, 4], &targets)
        );
        let section = Section {
            title: "WireGuard".into(),
            date: "2026-12-04".into(),
            command: "fabric-bench wireguard --reps 2 --seconds 5 --name benchwg".into(),
            machine: "2 CPUs".into(),
            body,
        };
        let j = section_json(&section);
        use serde_json::json;
        assert_eq!(j["benchmark"], json!("wireguard"));
        assert_eq!(j["date"], json!("2026-12-04"));
        assert_eq!(j["command"], json!(section.command));
        assert_eq!(j["machine"], json!("2 CPUs"));
        assert_eq!(j["tables"].as_array().unwrap().len(), 1);
        let table = &j["tables"][0];
        assert_eq!(table["caption"], json!("Resident memory"));
        assert_eq!(table["columns"][3], json!("median Gbit/s"));
        assert_eq!(table["keys"][3], json!("median_gbit_per_s"));
        let rows = table["rows"].as_array().unwrap();
        assert_eq!(rows.len(), series.len());
        let fabric = &rows[2];
        assert_eq!(fabric["path"], json!("fabric wg"));
        assert_eq!(fabric["streams"], json!("P1"));
        assert_eq!(fabric["runs"], json!(3));
        assert_eq!(fabric["median_gbit_per_s"], json!(3.0));
        assert_eq!(fabric["div_wireguard_go_current"], json!(2.0));
        assert_eq!(fabric["cpu_s_per_gbit"], json!(0.333));
        assert_eq!(rows[7]["div_raw"], json!(null));
        let verdicts = j["verdicts"].as_array().unwrap();
        assert_eq!(verdicts.len(), 2);
        assert_eq!(verdicts[0]["met"], json!(true));
        assert_eq!(verdicts[1]["met"], json!(false));
        assert_eq!(verdicts[1]["ratio"], json!(1.6));
        assert_eq!(j["targets_met"], json!(false));
        assert_eq!(j["charts"], json!(["wireguard.png"]));
        assert_eq!(
            j["notes"],
            json!(["Retried iperf3 attempts: rep 1 P1 bt: no report"])
        );
        assert_eq!(
            j["text"],
            json!(["Two labs, described.", "Resident memory:", "Targets:"])
        );
        // No verdicts: targets_met is null; a table right after text still gets its own block.
        let plain = Section {
            body: format!("Memory:\n{}", markdown_table(&["a b"], &[vec!["1".into()]])),
            ..section
        };
        let j = section_json(&plain);
        assert_eq!(j["targets_met"], json!(null));
        assert_eq!(j["tables"][0]["rows"], json!([{"a_b": 1}]));
        assert_eq!(j["tables"][0]["caption"], json!("Memory"));
    }

    /// Every section fabric-bench has written reads back: each table row has a value per
    /// column, and each bullet with an outcome is a verdict.
    #[test]
    fn results_md_reads_back_as_json() {
        let results = include_str!("../RESULTS.md");
        let mut sections = 0;
        for chunk in results.split("\n## ").skip(1) {
            let Some((head, rest)) = chunk.split_once("\n- Machine: ") else {
                continue;
            };
            let (machine, body) = rest.split_once('\n').unwrap_or((rest, ""));
            let command = head
                .split_once("- Command: `")
                .and_then(|(_, c)| c.split_once('`'))
                .map_or("", |(c, _)| c);
            let section = Section {
                title: head.lines().next().unwrap_or("").into(),
                date: String::new(),
                command: command.into(),
                machine: machine.into(),
                body: body.into(),
            };
            let j = section_json(&section);
            for table in j["tables"].as_array().unwrap() {
                let keys = table["keys"].as_array().unwrap();
                for row in table["rows"].as_array().unwrap() {
                    assert_eq!(row.as_object().unwrap().len(), keys.len(), "{row}");
                }
            }
            let outcomes = body
                .lines()
                .filter(|l| l.starts_with("- "))
                .filter(|l| {
                    l.contains(" meets ")
                        || l.contains(" MISSES ")
                        || l.contains("NOT met")
                        || l.contains("target met")
                })
                .count();
            assert_eq!(
                j["verdicts"].as_array().unwrap().len(),
                outcomes,
                "{}",
                section.title
            );
            sections += 1;
        }
        assert!(sections >= 5, "{sections}");
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
