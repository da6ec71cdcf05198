//! Errors: field-level validation errors with their API field paths, and the crate's error type.

use std::fmt;
use std::path::PathBuf;

use crate::model::{PodKey, PolicyKey};

/// A path to a field of an API object, rendered the way the Kubernetes API server renders
/// them: `spec.ingress[0].ports[1].endPort`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct FieldPath(String);

impl FieldPath {
    /// The path of a top-level field.
    pub fn root(name: &str) -> Self {
        FieldPath(name.to_owned())
    }

    /// The path of a named child field.
    #[must_use]
    pub fn child(&self, name: &str) -> Self {
        if self.0.is_empty() {
            FieldPath(name.to_owned())
        } else {
            FieldPath(format!("{}.{name}", self.0))
        }
    }

    /// The path of a list element.
    #[must_use]
    pub fn index(&self, i: usize) -> Self {
        FieldPath(format!("{}[{i}]", self.0))
    }

    /// The path as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One invalid field: where, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct FieldError {
    /// The field's path, e.g. `spec.ingress[0].ports[0].endPort`.
    pub path: FieldPath,
    /// Why it is invalid, e.g. `endPort requires port`.
    pub reason: String,
}

impl FieldError {
    pub(crate) fn new(path: FieldPath, reason: impl Into<String>) -> Self {
        FieldError {
            path,
            reason: reason.into(),
        }
    }
}

/// A NetworkPolicy that was rejected, with every invalid field found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationError {
    /// `namespace/name` of the rejected policy, as submitted (parts may be empty).
    pub policy: PolicyKey,
    /// The invalid fields; never empty.
    pub errors: Vec<FieldError>,
}

impl ValidationError {
    /// Whether one of the errors is at exactly `path`.
    pub fn has_path(&self, path: &str) -> bool {
        self.errors.iter().any(|e| e.path.as_str() == path)
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NetworkPolicy {} is invalid: ", self.policy)?;
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationError {}

/// Everything this crate can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A policy failed validation; nothing was changed.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// A policy set named the same policy twice; nothing was changed.
    #[error("policy {0} appears more than once in the set")]
    DuplicatePolicy(PolicyKey),
    /// An update named a pod the cluster state does not have.
    #[error("unknown pod {0}")]
    UnknownPod(PodKey),
    /// A file could not be read.
    #[error("reading {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A case file is not valid YAML of the case format.
    #[error("parsing {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_yaml::Error,
    },
    /// A case file is well-formed YAML but inconsistent (e.g. a probe names an unknown pod).
    #[error("case file: {0}")]
    CaseFile(String),
}
