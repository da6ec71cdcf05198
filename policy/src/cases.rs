//! The reachability case format (see `shared/netpol/sample-cases.yaml`): a model of
//! namespaces and pods, and cases each holding policies, optional model overrides and probes
//! with expected verdicts. [`evaluate`] runs every probe of every case through a freshly built
//! [`Cluster`] and reports per-case pass/fail; loopback probes (from == to) are informational.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::{Deserialize, Serialize};

use crate::classifier::Endpoint;
use crate::error::Error;
use crate::explain::explain_verdict;
use crate::index::Cluster;
use crate::model::{ContainerPort, Labels, Pod, PodKey, Protocol};

/// The only case-format version this crate reads.
pub const FORMAT_VERSION: u32 = 1;

/// A whole case file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    /// Format version; must be [`FORMAT_VERSION`].
    pub version: u32,
    /// The cluster every case starts from.
    pub model: Model,
    /// The cases.
    pub cases: Vec<Case>,
}

/// Namespaces and pods.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// Namespaces by name.
    #[serde(default)]
    pub namespaces: BTreeMap<String, ModelNamespace>,
    /// Pods.
    #[serde(default)]
    pub pods: Vec<ModelPod>,
}

/// A namespace of the model (or its override: a full replacement label map).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelNamespace {
    /// The namespace's labels.
    #[serde(default)]
    pub labels: Labels,
}

/// A pod of the model.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels.
    #[serde(default)]
    pub labels: Labels,
    /// Pod IP.
    pub ip: Ipv4Addr,
    /// Container ports (named ports resolve against these).
    #[serde(default)]
    pub ports: Vec<ModelPort>,
}

/// A container port of a model pod.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPort {
    /// Port name.
    #[serde(default)]
    pub name: Option<String>,
    /// Port number.
    pub port: u16,
    /// Protocol (TCP when omitted).
    #[serde(default)]
    pub protocol: Protocol,
}

/// One case.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Unique name.
    pub name: String,
    /// Where the case comes from.
    #[serde(default)]
    pub source: Option<String>,
    /// Where its expectations come from (`upstream`, `derived`, ...).
    #[serde(default)]
    pub expectation_origin: Option<String>,
    /// Which step of a multi-step upstream test this is.
    #[serde(default)]
    pub step: Option<String>,
    /// Free-form note.
    #[serde(default)]
    pub note: Option<String>,
    /// Label changes applied to the model for this case.
    #[serde(default)]
    pub model_overrides: Option<ModelOverrides>,
    /// The policies in force.
    #[serde(default)]
    pub policies: Vec<NetworkPolicy>,
    /// The probes and their expected verdicts.
    pub probes: Vec<Probe>,
}

/// Full replacement label maps for some namespaces and pods.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelOverrides {
    /// By namespace name.
    #[serde(default)]
    pub namespaces: BTreeMap<String, ModelNamespace>,
    /// By `namespace/pod`.
    #[serde(default)]
    pub pods: BTreeMap<String, PodOverride>,
}

/// A pod's replacement labels.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodOverride {
    /// The full replacement label map.
    #[serde(default)]
    pub labels: Labels,
}

/// One probe: a new connection from pod `from` to pod `to`'s IP.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    /// Source pod, `namespace/name`.
    pub from: String,
    /// Destination pod, `namespace/name`.
    pub to: String,
    /// Destination port.
    pub port: u16,
    /// Protocol (TCP when omitted).
    #[serde(default)]
    pub protocol: Protocol,
    /// Expected verdict.
    pub expect: Expect,
    /// Set when `from == to`; such probes never fail a case.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub loopback: bool,
}

/// An expected (or observed) verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// The connection is allowed.
    Allow,
    /// The connection is denied.
    Deny,
}

impl Expect {
    fn from_allowed(allowed: bool) -> Self {
        if allowed {
            Expect::Allow
        } else {
            Expect::Deny
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Expect::Allow => "allow",
            Expect::Deny => "deny",
        })
    }
}

impl CaseFile {
    /// Parses a case file from YAML and checks its version.
    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        let file: CaseFile = serde_yaml::from_str(text).map_err(|source| Error::Parse {
            path: "<string>".into(),
            source,
        })?;
        file.check_version()?;
        Ok(file)
    }

    /// Reads and parses a case file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        let file: CaseFile = serde_yaml::from_str(&text).map_err(|source| Error::Parse {
            path: path.to_owned(),
            source,
        })?;
        file.check_version()?;
        Ok(file)
    }

    fn check_version(&self) -> Result<(), Error> {
        if self.version == FORMAT_VERSION {
            Ok(())
        } else {
            Err(Error::CaseFile(format!(
                "unsupported version {} (expected {FORMAT_VERSION})",
                self.version
            )))
        }
    }
}

/// A probe whose verdict differed from the expectation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// The probe's source.
    pub from: PodKey,
    /// The probe's destination.
    pub to: PodKey,
    /// Destination port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// What the case expected.
    pub expected: Expect,
    /// What the classifier decided.
    pub got: Expect,
    /// The classifier's explanation of its verdict.
    pub explanation: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {} {}/{}: expected {}, got {}",
            self.from, self.to, self.protocol, self.port, self.expected, self.got
        )
    }
}

/// The result of one case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseOutcome {
    /// The case's name.
    pub name: String,
    /// Probes run.
    pub probes: usize,
    /// Non-loopback probes that mismatched (these fail the case).
    pub mismatches: Vec<Mismatch>,
    /// Loopback probes that mismatched (informational).
    pub loopback_mismatches: Vec<Mismatch>,
    /// Why the case could not be run (invalid policy, unknown pod, ...); fails the case.
    pub error: Option<String>,
}

impl CaseOutcome {
    /// Whether the case passed.
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.mismatches.is_empty()
    }
}

/// The result of a whole case file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// One outcome per case, in file order.
    pub cases: Vec<CaseOutcome>,
}

impl Report {
    /// Cases that passed.
    pub fn passed(&self) -> usize {
        self.cases.iter().filter(|c| c.passed()).count()
    }

    /// Cases that failed.
    pub fn failed(&self) -> usize {
        self.cases.len() - self.passed()
    }
}

impl fmt::Display for Report {
    /// One line per case (`PASS name (N probes)` / `FAIL name: ...`), each mismatch indented
    /// below its case with the classifier's explanation, then `cases: P passed, F failed`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.cases {
            if let Some(e) = &c.error {
                writeln!(f, "FAIL {}: {e}", c.name)?;
            } else if c.mismatches.is_empty() {
                writeln!(f, "PASS {} ({} probes)", c.name, c.probes)?;
            } else {
                writeln!(
                    f,
                    "FAIL {}: {} of {} probes mismatched",
                    c.name,
                    c.mismatches.len(),
                    c.probes
                )?;
            }
            for m in &c.mismatches {
                writeln!(f, "  {m}")?;
                for line in m.explanation.lines().skip(1) {
                    writeln!(f, "    {}", line.trim_start())?;
                }
            }
            for m in &c.loopback_mismatches {
                writeln!(f, "  note: loopback {m} (informational)")?;
            }
        }
        write!(
            f,
            "cases: {} passed, {} failed",
            self.passed(),
            self.failed()
        )
    }
}

/// Runs every probe of every case and reports.
pub fn evaluate(file: &CaseFile) -> Report {
    Report {
        cases: file
            .cases
            .iter()
            .map(|c| evaluate_case(&file.model, c))
            .collect(),
    }
}

/// Loads a case file and evaluates it.
pub fn evaluate_file(path: impl AsRef<Path>) -> Result<Report, Error> {
    Ok(evaluate(&CaseFile::load(path)?))
}

/// Builds the cluster a case runs against: the model with the case's overrides applied.
pub fn build_cluster(model: &Model, overrides: Option<&ModelOverrides>) -> Result<Cluster, Error> {
    let empty = ModelOverrides::default();
    let overrides = overrides.unwrap_or(&empty);
    if let Some(ns) = overrides
        .namespaces
        .keys()
        .find(|ns| !model.namespaces.contains_key(*ns))
    {
        return Err(Error::CaseFile(format!(
            "override of unknown namespace {ns}"
        )));
    }
    for key in overrides.pods.keys() {
        let known = PodKey::parse(key).is_some_and(|k| {
            model
                .pods
                .iter()
                .any(|p| p.namespace == k.namespace && p.name == k.name)
        });
        if !known {
            return Err(Error::CaseFile(format!("override of unknown pod {key}")));
        }
    }
    let mut cluster = Cluster::new();
    for (name, ns) in &model.namespaces {
        let labels = overrides.namespaces.get(name).unwrap_or(ns).labels.clone();
        cluster.upsert_namespace(name, labels);
    }
    for p in &model.pods {
        let key = PodKey::new(&p.namespace, &p.name);
        let labels = overrides
            .pods
            .get(&key.to_string())
            .map_or_else(|| p.labels.clone(), |o| o.labels.clone());
        cluster.upsert_pod(Pod {
            key,
            labels,
            ip: p.ip,
            ipv6: None,
            ports: p
                .ports
                .iter()
                .map(|port| ContainerPort {
                    name: port.name.clone(),
                    port: port.port,
                    protocol: port.protocol,
                })
                .collect(),
        });
    }
    Ok(cluster)
}

fn evaluate_case(model: &Model, case: &Case) -> CaseOutcome {
    let mut outcome = CaseOutcome {
        name: case.name.clone(),
        probes: case.probes.len(),
        mismatches: Vec::new(),
        loopback_mismatches: Vec::new(),
        error: None,
    };
    if let Err(e) = run_case(model, case, &mut outcome) {
        outcome.error = Some(e.to_string());
    }
    outcome
}

fn run_case(model: &Model, case: &Case, outcome: &mut CaseOutcome) -> Result<(), Error> {
    let mut cluster = build_cluster(model, case.model_overrides.as_ref())?;
    cluster.replace_policies(&case.policies)?;
    let lookup = |name: &str| -> Result<(PodKey, Endpoint), Error> {
        let key = PodKey::parse(name).ok_or_else(|| {
            Error::CaseFile(format!("probe endpoint {name:?} is not namespace/pod"))
        })?;
        let id = cluster
            .pod_id(&key)
            .ok_or_else(|| Error::CaseFile(format!("probe names unknown pod {key}")))?;
        Ok((key, Endpoint::Pod(id)))
    };
    for probe in &case.probes {
        let (from, src) = lookup(&probe.from)?;
        let (to, dst) = lookup(&probe.to)?;
        let verdict = cluster.decide(src, dst, probe.protocol, probe.port);
        let got = Expect::from_allowed(verdict.allowed);
        if got == probe.expect {
            continue;
        }
        let explanation = explain_verdict(
            cluster.classifier(),
            src,
            dst,
            probe.protocol,
            probe.port,
            verdict,
        )
        .to_string();
        let m = Mismatch {
            from,
            to,
            port: probe.port,
            protocol: probe.protocol,
            expected: probe.expect,
            got,
            explanation,
        };
        if probe.loopback || m.from == m.to {
            outcome.loopback_mismatches.push(m);
        } else {
            outcome.mismatches.push(m);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = r#"
version: 1
model:
  namespaces:
    x: {labels: {ns: x}}
  pods:
  - {namespace: x, name: a, labels: {pod: a}, ip: 10.0.0.1, ports: [{name: http, port: 80}]}
  - {namespace: x, name: b, labels: {pod: b}, ip: 10.0.0.2}
"#;

    fn file(cases: &str) -> CaseFile {
        CaseFile::from_yaml(&format!("{MODEL}cases:\n{cases}")).expect("test case file parses")
    }

    #[test]
    fn passing_failing_and_loopback_probes() {
        let f = file(
            r#"
- name: deny-into-a
  policies:
  - metadata: {name: deny, namespace: x}
    spec: {podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress]}
  probes:
  - {from: x/b, to: x/a, port: 80, expect: deny}
  - {from: x/a, to: x/a, port: 80, expect: allow, loopback: true}
  - {from: x/a, to: x/b, port: 80, protocol: UDP, expect: allow}
- name: wrong
  policies: []
  probes:
  - {from: x/b, to: x/a, port: 80, expect: deny}
- name: invalid
  policies:
  - metadata: {name: bad, namespace: x}
    spec: {podSelector: {}, ingress: [{ports: [{endPort: 9}]}], policyTypes: [Ingress]}
  probes: []
- name: unknown-pod
  probes:
  - {from: x/b, to: x/zz, port: 80, expect: deny}
"#,
        );
        let report = evaluate(&f);
        assert_eq!((report.passed(), report.failed()), (1, 3));
        let first = &report.cases[0];
        assert!(first.passed());
        assert_eq!(first.loopback_mismatches.len(), 1);
        assert_eq!(report.cases[1].mismatches.len(), 1);
        assert!(
            report.cases[2].error.as_deref().is_some_and(
                |e| e.contains("spec.ingress[0].ports[0].endPort: endPort requires port")
            )
        );
        assert!(report.cases[3]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("unknown pod x/zz")));
        let text = report.to_string();
        assert!(text.starts_with("PASS deny-into-a (3 probes)\n  note: loopback x/a -> x/a TCP/80: expected allow, got deny (informational)\n"), "{text}");
        assert!(text.contains("FAIL wrong: 1 of 1 probes mismatched\n  x/b -> x/a TCP/80: expected deny, got allow\n    egress at x/b: not isolated"), "{text}");
        assert!(text.ends_with("\ncases: 1 passed, 3 failed"), "{text}");
    }

    #[test]
    fn overrides_replace_labels() {
        let f = file(
            r#"
- name: relabelled
  model_overrides:
    pods:
      x/b: {labels: {pod: b, role: client}}
  policies:
  - metadata: {name: p, namespace: x}
    spec:
      podSelector: {matchLabels: {pod: a}}
      ingress: [{from: [{podSelector: {matchLabels: {role: client}}}], ports: [{port: http}]}]
      policyTypes: [Ingress]
  probes:
  - {from: x/b, to: x/a, port: 80, expect: allow}
  - {from: x/b, to: x/a, port: 81, expect: deny}
- name: bad-override
  model_overrides:
    namespaces:
      nope: {labels: {}}
  probes: []
"#,
        );
        let report = evaluate(&f);
        assert!(report.cases[0].passed(), "{report}");
        assert!(report.cases[1]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("unknown namespace nope")));
    }

    #[test]
    fn load_errors() {
        assert!(matches!(
            evaluate_file("/nonexistent/cases.yaml"),
            Err(Error::Io { .. })
        ));
        assert!(matches!(
            CaseFile::from_yaml("version: 1\nmodel: {}\ncases: [{name: x, probes: [], bogus: 1}]"),
            Err(Error::Parse { .. })
        ));
        assert!(matches!(
            CaseFile::from_yaml("version: 2\nmodel: {}\ncases: []"),
            Err(Error::CaseFile(_))
        ));
    }
}
