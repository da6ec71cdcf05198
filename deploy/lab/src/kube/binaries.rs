//! Where the Kubernetes-mode lab finds its upstream programs: the pinned etcd and Kubernetes
//! binaries `deploy/lab/k8s/build.sh` builds into a cache outside the source tree. The pins are
//! read from the same `versions.env` the script sources (embedded at compile time), and the
//! cache directory is computed the way the script computes it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};

use crate::spec::is_executable;

/// `deploy/lab/k8s/versions.env`, as built into this binary.
pub const VERSIONS_ENV: &str = include_str!("../../k8s/versions.env");

/// The programs the lab runs out of the cache directory.
pub const BINARIES: [&str; 7] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
    "kubectl",
    "coredns",
];

/// The pinned upstream versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versions {
    /// `KUBERNETES_VERSION`, e.g. `v1.36.3`.
    pub kubernetes: String,
    /// `ETCD_VERSION`, e.g. `v3.6.16`.
    pub etcd: String,
}

impl Versions {
    /// The pins this binary was built with.
    pub fn pinned() -> Result<Self> {
        parse_versions(VERSIONS_ENV).context("reading the embedded deploy/lab/k8s/versions.env")
    }

    /// The cache's subdirectory for these pins: `<kubernetes>-etcd-<etcd>`.
    pub fn dir_name(&self) -> String {
        format!("{}-etcd-{}", self.kubernetes, self.etcd)
    }
}

/// Parses the `KEY=value` lines of `versions.env` (comments and blank lines skipped, optional
/// quotes removed).
pub fn parse_versions(text: &str) -> Result<Versions> {
    let value = |key: &str| crate::pins::env_value(text, key);
    Ok(Versions {
        kubernetes: value("KUBERNETES_VERSION")?,
        etcd: value("ETCD_VERSION")?,
    })
}

/// The cache root as build.sh computes it:
/// `${FABRIC_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fabric/k8s}` (empty counts as unset).
pub fn cache_root(
    fabric_k8s_cache: Option<OsString>,
    xdg_cache_home: Option<OsString>,
    home: Option<OsString>,
) -> PathBuf {
    crate::pins::cache_root(fabric_k8s_cache, xdg_cache_home, home, "k8s")
}

/// The bin directory for `versions` under `root`.
pub fn bin_dir_in(root: &Path, versions: &Versions) -> PathBuf {
    root.join(versions.dir_name()).join("bin")
}

/// This process's bin directory (from its environment and the embedded pins).
pub fn bin_dir() -> Result<PathBuf> {
    let root = cache_root(
        std::env::var_os("FABRIC_K8S_CACHE"),
        std::env::var_os("XDG_CACHE_HOME"),
        std::env::var_os("HOME"),
    );
    Ok(bin_dir_in(&root, &Versions::pinned()?))
}

/// Fails with the build hint unless every program of [`BINARIES`] is in `dir`.
pub fn check(dir: &Path) -> Result<()> {
    let missing: Vec<&str> = BINARIES
        .into_iter()
        .filter(|b| !is_executable(&dir.join(b)))
        .collect();
    ensure!(
        missing.is_empty(),
        "{} not found in {}: run deploy/lab/k8s/build.sh (it builds the pinned etcd and \
         Kubernetes; FABRIC_K8S_CACHE, XDG_CACHE_HOME and HOME must be what they were for it)",
        missing.join(", "),
        dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_pins_parse() {
        let v = Versions::pinned().unwrap();
        assert!(v.kubernetes.starts_with("v1."), "{v:?}");
        assert!(v.etcd.starts_with("v3."), "{v:?}");
        assert_eq!(v.dir_name(), format!("{}-etcd-{}", v.kubernetes, v.etcd));
    }

    #[test]
    fn versions_file_syntax() {
        let v = parse_versions(
            "# pins\n\nKUBERNETES_VERSION=v1.36.3\nexport ETCD_VERSION=\"v3.6.16\"\n",
        )
        .unwrap();
        assert_eq!(
            v,
            Versions {
                kubernetes: "v1.36.3".into(),
                etcd: "v3.6.16".into()
            }
        );
        assert!(parse_versions("KUBERNETES_VERSION=v1.36.3\n").is_err());
        assert!(parse_versions("KUBERNETES_VERSION=\nETCD_VERSION=v3\n").is_err());
    }

    #[test]
    fn cache_root_follows_build_sh() {
        let s = |v: &str| Some(OsString::from(v));
        assert_eq!(cache_root(s("/c"), s("/x"), s("/h")), PathBuf::from("/c"));
        assert_eq!(
            cache_root(s(""), s("/x"), s("/h")),
            PathBuf::from("/x/fabric/k8s")
        );
        assert_eq!(
            cache_root(None, s(""), s("/root")),
            PathBuf::from("/root/.cache/fabric/k8s")
        );
        let v = Versions {
            kubernetes: "v1.36.3".into(),
            etcd: "v3.6.16".into(),
        };
        assert_eq!(
            bin_dir_in(Path::new("/root/.cache/fabric/k8s"), &v),
            PathBuf::from("/root/.cache/fabric/k8s/v1.36.3-etcd-v3.6.16/bin")
        );
        let err = check(Path::new("/nonexistent")).unwrap_err().to_string();
        assert!(err.contains("run deploy/lab/k8s/build.sh"), "{err}");
    }
}
