//! Evaluates the project's own reachability cases (`tests/netpol/*.yaml` at the workspace root: upstream e2e
//! translations and cyclonus-style generated cases) through the classifier, and checks that
//! every case probes the full source x destination matrix for each port/protocol it probes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use policy::cases::CaseFile;

fn case_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/netpol");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn project_cases_all_pass() {
    let files = case_files();
    assert!(
        files.len() >= 2,
        "expected the e2e and generated case files, found {files:?}"
    );
    let mut total = 0;
    for path in &files {
        let report =
            policy::evaluate_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        println!("{}:\n{report}", path.display());
        assert_eq!(report.failed(), 0, "{}:\n{report}", path.display());
        total += report.cases.len();
    }
    assert!(total >= 15, "only {total} cases");
}

#[test]
fn every_case_probes_full_matrices() {
    for path in case_files() {
        let file = CaseFile::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let pods: BTreeSet<String> = file
            .model
            .pods
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        let mut names = BTreeSet::new();
        for case in &file.cases {
            assert!(
                names.insert(case.name.clone()),
                "duplicate case {}",
                case.name
            );
            assert!(
                case.source.is_some() && case.expectation_origin.is_some(),
                "{}",
                case.name
            );
            let mut matrices: BTreeMap<_, BTreeSet<(String, String)>> = BTreeMap::new();
            for p in &case.probes {
                assert_eq!(
                    p.loopback,
                    p.from == p.to,
                    "{}: loopback flag of {p:?}",
                    case.name
                );
                let fresh = matrices
                    .entry((p.port, p.protocol))
                    .or_default()
                    .insert((p.from.clone(), p.to.clone()));
                assert!(fresh, "{}: duplicate probe {p:?}", case.name);
            }
            assert!(!matrices.is_empty(), "{} has no probes", case.name);
            for ((port, proto), pairs) in matrices {
                let expected: BTreeSet<_> = pods
                    .iter()
                    .flat_map(|f| pods.iter().map(move |t| (f.clone(), t.clone())))
                    .collect();
                assert_eq!(
                    pairs, expected,
                    "{}: {proto}/{port} is not a full matrix",
                    case.name
                );
            }
        }
    }
}
