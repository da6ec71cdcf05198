//! The measuring loop the iperf3 benchmarks share: every repetition measures every path at
//! every stream count, always in the same order, so the slow drifts of a shared machine touch
//! all paths alike. Failed attempts that were retried are kept for the report.

use anyhow::{Context, Result};

/// What a loop measured: per (stream count, path), in `streams`-major order, the samples of
/// every repetition; and the retried attempts, described.
#[derive(Debug)]
pub struct Measured<S> {
    /// `samples[i * paths + j]`: stream count `i`, path `j`.
    pub samples: Vec<Vec<S>>,
    /// `rep R PN label: why`, one per retried attempt.
    pub retried: Vec<String>,
}

/// Runs `reps` repetitions over `streams` × `paths`. `measure(path, streams)` returns a sample
/// and the attempts it retried; `report(rep, streams, label, sample)` prints progress.
pub fn run<P, S>(
    reps: usize,
    streams: &[u32],
    paths: &[P],
    label: impl Fn(&P) -> &str,
    seconds: u32,
    mut measure: impl FnMut(&P, u32) -> Result<(S, Vec<String>)>,
    mut report: impl FnMut(usize, u32, &str, &S),
) -> Result<Measured<S>> {
    let mut out = Measured {
        samples: (0..streams.len() * paths.len())
            .map(|_| Vec::with_capacity(reps))
            .collect(),
        retried: Vec::new(),
    };
    for rep in 1..=reps {
        for (i, &p) in streams.iter().enumerate() {
            for (j, path) in paths.iter().enumerate() {
                let name = label(path);
                let (sample, failures) = measure(path, p)
                    .with_context(|| format!("rep {rep}, P{p}, {name} (iperf3 -t {seconds})"))?;
                out.retried.extend(
                    failures
                        .into_iter()
                        .map(|f| format!("rep {rep} P{p} {name}: {f}")),
                );
                report(rep, p, name, &sample);
                out.samples[i * paths.len() + j].push(sample);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rep_visits_every_stream_count_and_path_in_order() {
        let mut order = Vec::new();
        let measured = run(
            2,
            &[1, 4],
            &["a", "b"],
            |p| p,
            5,
            |p, s| {
                order.push(format!("{p}{s}"));
                let retried = if *p == "b" && s == 4 {
                    vec!["refused".to_string()]
                } else {
                    vec![]
                };
                Ok((order.len(), retried))
            },
            |_, _, _, _| {},
        )
        .unwrap();
        assert_eq!(order, ["a1", "b1", "a4", "b4", "a1", "b1", "a4", "b4"]);
        assert_eq!(
            measured.samples,
            vec![vec![1, 5], vec![2, 6], vec![3, 7], vec![4, 8]]
        );
        assert_eq!(
            measured.retried,
            ["rep 1 P4 b: refused", "rep 2 P4 b: refused"]
        );
        let err = run(
            1,
            &[1],
            &["a"],
            |p| p,
            5,
            |_, _| -> Result<((), Vec<String>)> { anyhow::bail!("no server") },
            |_, _, _, _| {},
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("rep 1, P1, a (iperf3 -t 5): no server"));
    }
}
