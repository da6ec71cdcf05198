//! The NetworkPolicy reachability suite end to end (`fabric-lab netpol`): every case of the
//! shared sample file and of the project's own files (`tests/netpol/`: upstream e2e and
//! generated) on a 3-node lab with real servers and real probes, on vxlan and on wireguard,
//! with etcd and with the Kubernetes API (policies, labels and namespaces written by kubectl).
//! A deliberately wrong expectation must fail its case, so the suite is seen to be able to
//! fail.

use std::path::{Path, PathBuf};

use fabric_lab::netpol::{self, Options};
use fabric_lab::{Backend, Datastore};
use fabric_tests::{lab_name, require_root};
use policy::cases::{CaseFile, Expect};

fn cases(path: &Path) -> CaseFile {
    CaseFile::load(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The shared sample file (a verbatim copy of the project's `shared/netpol/sample-cases.yaml`).
fn sample() -> PathBuf {
    project("sample-cases.yaml")
}

fn project(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("netpol")
        .join(file)
}

/// Runs `file` on a fresh lab and returns the printed report and the summary.
fn run(tag: &str, backend: Backend, file: &CaseFile) -> (String, netpol::Summary) {
    run_on(tag, backend, Datastore::Etcd, file)
}

fn run_on(
    tag: &str,
    backend: Backend,
    datastore: Datastore,
    file: &CaseFile,
) -> (String, netpol::Summary) {
    require_root();
    let mut options = Options::new(lab_name(tag));
    options.backend = backend;
    options.datastore = datastore;
    options.progress = false;
    let mut out = Vec::new();
    let summary = netpol::run(&options, file, &mut out)
        .unwrap_or_else(|e| panic!("the suite could not run: {e:#}"));
    let text = String::from_utf8(out).unwrap();
    eprintln!("{text}");
    (text, summary)
}

fn assert_all_pass(text: &str, summary: &netpol::Summary, cases: usize) {
    assert_eq!(summary.cases.len(), cases);
    assert_eq!(summary.failed(), 0, "{text}");
    assert!(
        text.ends_with(&format!("cases: {cases} passed, 0 failed\n")),
        "{text}"
    );
}

#[test]
fn sample_cases_pass_on_vxlan_and_a_wrong_expectation_fails() {
    let mut file = cases(&sample());
    let n = file.cases.len();
    // A copy of a case with one remote probe's expectation flipped: it must fail, naming it.
    let mut wrong = file
        .cases
        .iter()
        .find(|c| !c.policies.is_empty())
        .expect("a case with policies")
        .clone();
    wrong.name = format!("{} (one expectation flipped)", wrong.name);
    let probe = wrong
        .probes
        .iter_mut()
        .find(|p| p.from != p.to && p.expect == Expect::Deny)
        .expect("a denied remote probe");
    probe.expect = Expect::Allow;
    let flipped = format!(
        "{} -> {} {}/{}",
        probe.from,
        probe.to,
        probe.port,
        probe.protocol.as_str()
    );
    file.cases.push(wrong);

    let (text, summary) = run("npsample", Backend::Vxlan, &file);
    assert_eq!(summary.cases.len(), n + 1);
    assert_eq!(summary.passed(), n, "{text}");
    let last = summary.cases.last().unwrap();
    assert!(!last.passed());
    assert_eq!(last.mismatches.len(), 1, "{text}");
    assert_eq!(last.mismatches[0].key.to_string(), flipped);
    assert!(
        text.contains(&format!("{flipped}: expected allow, got deny")),
        "{text}"
    );
    assert!(
        text.ends_with(&format!("cases: {n} passed, 1 failed\n")),
        "{text}"
    );
}

#[test]
fn sample_cases_pass_on_wireguard() {
    let file = cases(&sample());
    let (text, summary) = run("npwg", Backend::Wireguard, &file);
    assert_all_pass(&text, &summary, file.cases.len());
}

#[test]
fn upstream_e2e_cases_pass_on_vxlan() {
    let file = cases(&project("e2e-cases.yaml"));
    let (text, summary) = run("npe2e", Backend::Vxlan, &file);
    assert_all_pass(&text, &summary, file.cases.len());
}

#[test]
fn generated_cases_pass_on_vxlan() {
    let file = cases(&project("generated-cases.yaml"));
    let (text, summary) = run("npgen", Backend::Vxlan, &file);
    assert_all_pass(&text, &summary, file.cases.len());
}

#[test]
fn kube_sample_cases_pass() {
    let file = cases(&sample());
    let (text, summary) = run_on("kns", Backend::Vxlan, Datastore::Kubernetes, &file);
    assert_all_pass(&text, &summary, file.cases.len());
}

#[test]
fn kube_upstream_e2e_cases_pass() {
    let file = cases(&project("e2e-cases.yaml"));
    let (text, summary) = run_on("kne2e", Backend::Vxlan, Datastore::Kubernetes, &file);
    assert_all_pass(&text, &summary, file.cases.len());
}

#[test]
fn kube_generated_cases_pass_on_wireguard() {
    let file = cases(&project("generated-cases.yaml"));
    let (text, summary) = run_on("kngen", Backend::Wireguard, Datastore::Kubernetes, &file);
    assert_all_pass(&text, &summary, file.cases.len());
}
