//! Evaluates the shared sample case file (ten cases translated from the upstream Kubernetes
//! e2e suite; `tests/netpol/sample-cases.yaml` is a verbatim copy of the project's
//! `shared/netpol/sample-cases.yaml`, so a clone needs nothing beside it) through the
//! classifier.

use std::path::PathBuf;

#[test]
fn shared_sample_cases_all_pass() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/netpol/sample-cases.yaml");
    let report = policy::evaluate_file(&path)
        .unwrap_or_else(|e| panic!("evaluating {}: {e}", path.display()));
    println!("{report}");
    assert_eq!(report.cases.len(), 10, "{report}");
    assert_eq!((report.passed(), report.failed()), (10, 0), "{report}");
    assert!(report.to_string().ends_with("cases: 10 passed, 0 failed"));
}
