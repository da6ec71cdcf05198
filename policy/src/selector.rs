//! Compiled label selectors: `matchLabels` and `matchExpressions` (`In`, `NotIn`, `Exists`,
//! `DoesNotExist`) turned into a list of requirements that must all hold, validated the way
//! the API server validates them.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::error::{FieldError, FieldPath};
use crate::model::Labels;

/// A compiled label selector. The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

/// One requirement on one label key.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Operator,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Operator {
    /// The label is present with one of these values (sorted, deduplicated, non-empty).
    In(Vec<String>),
    /// The label is absent, or present with none of these values.
    NotIn(Vec<String>),
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

impl Selector {
    /// The selector that matches every label set (`{}`).
    pub fn everything() -> Self {
        Selector::default()
    }

    /// Whether this selector matches every label set.
    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Compiles and validates an API label selector; errors carry paths under `path`.
    pub fn from_k8s(selector: &LabelSelector, path: &FieldPath) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut requirements = Vec::new();
        let labels_path = path.child("matchLabels");
        for (key, value) in selector.match_labels.iter().flatten() {
            check_key(key, &labels_path, &mut errors);
            if let Err(why) = check_value(value) {
                errors.push(FieldError::new(
                    labels_path.clone(),
                    format!("invalid label value {value:?}: {why}"),
                ));
            }
            requirements.push(Requirement {
                key: key.clone(),
                op: Operator::In(vec![value.clone()]),
            });
        }
        let exprs_path = path.child("matchExpressions");
        for (i, expr) in selector.match_expressions.iter().flatten().enumerate() {
            let p = exprs_path.index(i);
            check_key(&expr.key, &p.child("key"), &mut errors);
            let values = expr.values.clone().unwrap_or_default();
            for (j, v) in values.iter().enumerate() {
                if let Err(why) = check_value(v) {
                    errors.push(FieldError::new(
                        p.child("values").index(j),
                        format!("invalid label value {v:?}: {why}"),
                    ));
                }
            }
            let op = match expr.operator.as_str() {
                "In" | "NotIn" => {
                    if values.is_empty() {
                        errors.push(FieldError::new(
                            p.child("values"),
                            format!("must be specified when `operator` is '{}'", expr.operator),
                        ));
                    }
                    let mut values = values;
                    values.sort();
                    values.dedup();
                    if expr.operator == "In" {
                        Operator::In(values)
                    } else {
                        Operator::NotIn(values)
                    }
                }
                "Exists" | "DoesNotExist" => {
                    if !values.is_empty() {
                        errors.push(FieldError::new(
                            p.child("values"),
                            format!(
                                "may not be specified when `operator` is '{}'",
                                expr.operator
                            ),
                        ));
                    }
                    if expr.operator == "Exists" {
                        Operator::Exists
                    } else {
                        Operator::DoesNotExist
                    }
                }
                other => {
                    errors.push(FieldError::new(
                        p.child("operator"),
                        format!(
                            "not a valid selector operator {other:?}: must be one of In, NotIn, Exists, DoesNotExist"
                        ),
                    ));
                    continue;
                }
            };
            requirements.push(Requirement {
                key: expr.key.clone(),
                op,
            });
        }
        if errors.is_empty() {
            Ok(Selector { requirements })
        } else {
            Err(errors)
        }
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

impl Requirement {
    fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match &self.op {
            Operator::In(values) => value.is_some_and(|v| values.binary_search(v).is_ok()),
            Operator::NotIn(values) => value.is_none_or(|v| values.binary_search(v).is_err()),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

impl fmt::Display for Selector {
    /// The `kubectl`-style string form, e.g. `pod=a,ns notin (x,y),!tier`; `{}` when empty.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("{}");
        }
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match &r.op {
                Operator::In(v) if v.len() == 1 => write!(f, "{}={}", r.key, v[0])?,
                Operator::In(v) => write!(f, "{} in ({})", r.key, v.join(","))?,
                Operator::NotIn(v) => write!(f, "{} notin ({})", r.key, v.join(","))?,
                Operator::Exists => write!(f, "{}", r.key)?,
                Operator::DoesNotExist => write!(f, "!{}", r.key)?,
            }
        }
        Ok(())
    }
}

/// Validates a label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// characters of alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric.
fn check_key(key: &str, path: &FieldPath, errors: &mut Vec<FieldError>) {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let mut why = None;
    if let Some(p) = prefix {
        if p.is_empty() || p.len() > 253 || !is_dns_subdomain(p) {
            why = Some("prefix part must be a lowercase RFC 1123 subdomain");
        }
    }
    if name.is_empty() {
        why = Some("name part must be non-empty");
    } else if let Err(w) = check_value(name) {
        why = Some(w);
    }
    if let Some(why) = why {
        errors.push(FieldError::new(
            path.clone(),
            format!("invalid label key {key:?}: {why}"),
        ));
    }
}

/// Validates a label value (also the name part of a key): empty, or at most 63 characters of
/// alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric.
fn check_value(v: &str) -> Result<(), &'static str> {
    if v.is_empty() {
        return Ok(());
    }
    if v.len() > 63 {
        return Err("must be no more than 63 characters");
    }
    let b = v.as_bytes();
    let inner_ok = b
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    if !inner_ok || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return Err("must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character");
    }
    Ok(())
}

/// Whether `s` is a lowercase RFC 1123 subdomain (labels of `a-z0-9-` joined by dots).
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn sel(exprs: Vec<LabelSelectorRequirement>) -> Selector {
        Selector::from_k8s(
            &LabelSelector {
                match_expressions: Some(exprs),
                match_labels: None,
            },
            &FieldPath::root("s"),
        )
        .unwrap()
    }

    #[test]
    fn empty_selector_matches_everything() {
        let s = Selector::from_k8s(&LabelSelector::default(), &FieldPath::root("s")).unwrap();
        assert!(s.is_everything());
        assert!(s.matches(&Labels::new()));
        assert!(s.matches(&labels(&[("a", "b")])));
        assert_eq!(s.to_string(), "{}");
    }

    #[test]
    fn match_labels_all_must_hold() {
        let s = Selector::from_k8s(
            &LabelSelector {
                match_labels: Some(labels(&[("app", "web"), ("tier", "fe")])),
                match_expressions: None,
            },
            &FieldPath::root("s"),
        )
        .unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "fe"), ("x", "y")])));
        assert!(!s.matches(&labels(&[("app", "web")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "be")])));
    }

    #[test]
    fn operators() {
        let in_ = sel(vec![expr("pod", "In", &["b", "c"])]);
        assert!(in_.matches(&labels(&[("pod", "b")])));
        assert!(!in_.matches(&labels(&[("pod", "a")])));
        assert!(!in_.matches(&Labels::new()));

        let not_in = sel(vec![expr("pod", "NotIn", &["b", "c"])]);
        assert!(not_in.matches(&labels(&[("pod", "a")])));
        assert!(!not_in.matches(&labels(&[("pod", "c")])));
        assert!(
            not_in.matches(&Labels::new()),
            "NotIn matches an absent key"
        );

        let exists = sel(vec![expr("pod", "Exists", &[])]);
        assert!(exists.matches(&labels(&[("pod", "")])));
        assert!(!exists.matches(&labels(&[("other", "x")])));

        let dne = sel(vec![expr("pod", "DoesNotExist", &[])]);
        assert!(!dne.matches(&labels(&[("pod", "a")])));
        assert!(dne.matches(&labels(&[("other", "x")])));

        let both = sel(vec![
            expr("pod", "Exists", &[]),
            expr("pod", "NotIn", &["a"]),
        ]);
        assert!(both.matches(&labels(&[("pod", "b")])));
        assert!(!both.matches(&labels(&[("pod", "a")])));
        assert!(!both.matches(&Labels::new()));
        assert_eq!(both.to_string(), "pod,pod notin (a)");
    }

    #[test]
    fn validation_errors_have_paths() {
        let bad = LabelSelector {
            match_expressions: Some(vec![
                expr("pod", "Equals", &["a"]),
                expr("pod", "In", &[]),
                expr("pod", "Exists", &["a"]),
                expr("bad key!", "Exists", &[]),
                expr("pod", "NotIn", &["-bad"]),
            ]),
            match_labels: Some(labels(&[("ok", "not ok")])),
        };
        let errs =
            Selector::from_k8s(&bad, &FieldPath::root("spec").child("podSelector")).unwrap_err();
        let paths: Vec<_> = errs.iter().map(|e| e.path.to_string()).collect();
        assert_eq!(
            paths,
            [
                "spec.podSelector.matchLabels",
                "spec.podSelector.matchExpressions[0].operator",
                "spec.podSelector.matchExpressions[1].values",
                "spec.podSelector.matchExpressions[2].values",
                "spec.podSelector.matchExpressions[3].key",
                "spec.podSelector.matchExpressions[4].values[0]",
            ]
        );
        assert!(errs[2].reason.contains("must be specified"));
        assert!(errs[3].reason.contains("may not be specified"));
    }

    #[test]
    fn label_keys() {
        let mut errs = Vec::new();
        let p = FieldPath::root("k");
        for ok in ["pod", "kubernetes.io/metadata.name", "a.b_c-d", "x/Y"] {
            check_key(ok, &p, &mut errs);
        }
        assert!(errs.is_empty(), "{errs:?}");
        for bad in ["", "/a", "A_B/x", "a/", "-a", &"a".repeat(64)] {
            check_key(bad, &p, &mut errs);
        }
        assert_eq!(errs.len(), 6);
    }
}
