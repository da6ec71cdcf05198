//! A short churn soak (`fabric_lab::soak`): pods added and deleted across three nodes, a
//! policy applied and deleted each round, one fabricd restarted halfway. Nothing may leak
//! (pool, records, veths, routes, firewall sets, queue rules) and every fabricd's memory and
//! descriptors stay flat. `fabric-bench soak` runs the same for ten minutes.

use std::time::Duration;

use fabric_lab::soak::{self, SoakSpec};
use fabric_lab::Backend;
use fabric_tests::{spec, up};

#[test]
fn churn_leaks_nothing_and_fabricd_stays_flat() {
    let mut lab = up(spec("soak", 3, 0, Backend::Vxlan));
    let report = soak::run(
        &mut lab,
        &SoakSpec {
            duration: Duration::from_secs(90),
            ..SoakSpec::default()
        },
    )
    .unwrap();
    eprintln!(
        "{} rounds, {} adds, {} dels, {} policy changes, {} restarts in {:?}",
        report.rounds,
        report.adds,
        report.dels,
        report.policy_changes,
        report.restarts,
        report.elapsed
    );
    for g in &report.growth {
        eprintln!("{g:?}");
    }
    assert_eq!(report.restarts, 1, "node2's fabricd was not restarted");
    assert!(report.rounds >= 8, "only {} rounds", report.rounds);
    assert!(
        report.leaks.is_empty(),
        "leaked:\n{}",
        report.leaks.join("\n")
    );
    let grown: Vec<_> = report.growth.iter().filter(|g| !g.flat()).collect();
    assert!(grown.is_empty(), "fabricd grew: {grown:#?}");
    // Each of the three fabricds (node2's twice: before and after its restart) was sampled.
    assert!(report.growth.len() >= 3, "{:#?}", report.growth);
}
