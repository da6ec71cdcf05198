//! CNI specification versions: which ones the plugin speaks, and the VERSION verb's answer.

use std::fmt;

use serde_json::{json, Value};

use crate::api::{codes, CniError};

/// A CNI specification version this plugin supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// 0.4.0: the first version with CHECK; result addresses carry `"version": "4"`.
    V0_4_0,
    /// 1.0.0: the 1.x result shape.
    V1_0_0,
    /// 1.1.0: adds STATUS and GC.
    V1_1_0,
}

impl Version {
    /// Every supported version, oldest first.
    pub const ALL: [Version; 3] = [Version::V0_4_0, Version::V1_0_0, Version::V1_1_0];

    /// The newest supported version, used when the runtime did not ask for one.
    pub const LATEST: Version = Version::V1_1_0;

    /// Parses a `cniVersion` string; anything unsupported is a CNI error 1.
    pub fn parse(s: &str) -> Result<Self, CniError> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                CniError::new(
                    codes::INCOMPATIBLE_VERSION,
                    format!("unsupported cniVersion {s:?}"),
                    format!("supported versions: {}", supported().join(", ")),
                )
            })
    }

    /// The version as it appears in `cniVersion`.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The supported versions as `cniVersion` strings, oldest first.
pub fn supported() -> Vec<&'static str> {
    Version::ALL.into_iter().map(Version::as_str).collect()
}

/// The VERSION verb's answer; `requested` is echoed as the spec asks, whether or not supported.
pub fn version_info(requested: &str) -> Value {
    json!({ "cniVersion": requested, "supportedVersions": supported() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_supported_version() {
        for v in Version::ALL {
            assert_eq!(Version::parse(v.as_str()), Ok(v));
        }
        assert!(Version::V0_4_0 < Version::V1_1_0);
    }

    #[test]
    fn rejects_unsupported_versions_with_code_1() {
        for bad in ["0.1.0", "0.3.1", "9.9.9", "", "1.1", " 1.1.0", "garbage"] {
            let err = Version::parse(bad).unwrap_err();
            assert_eq!(err.code, codes::INCOMPATIBLE_VERSION, "{bad:?}");
            assert!(err.details.contains("1.1.0"));
        }
    }

    #[test]
    fn version_info_echoes_the_request() {
        let info = version_info("1.0.0");
        assert_eq!(info["cniVersion"], "1.0.0");
        assert_eq!(
            info["supportedVersions"],
            json!(["0.4.0", "1.0.0", "1.1.0"])
        );
    }
}
