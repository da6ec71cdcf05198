//! Pinned upstream builds: the `KEY=value` pins of a `versions.env` and the cache directory a
//! build script of ours puts its binaries in (`deploy/lab/k8s/build.sh`,
//! `bench/anchors/build.sh`, `bench/anchors/flannel/build.sh`), computed exactly as the
//! scripts compute them, so the lab and the benchmarks find what the scripts built.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, Result};

/// The value of `key` in a `KEY=value` file (comments and blank lines skipped, optional
/// `export` and quotes removed).
pub fn env_value(text: &str, key: &str) -> Result<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("export ").unwrap_or(l).split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
        .filter(|v| !v.is_empty())
        .with_context(|| format!("{key} is not set"))
}

/// A script's cache root: `${OVERRIDE:-${XDG_CACHE_HOME:-$HOME/.cache}/fabric/<leaf>}`, where
/// an empty variable counts as unset.
pub fn cache_root(
    override_dir: Option<OsString>,
    xdg_cache_home: Option<OsString>,
    home: Option<OsString>,
    leaf: &str,
) -> PathBuf {
    let set = |v: Option<OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    set(override_dir).unwrap_or_else(|| {
        set(xdg_cache_home)
            .unwrap_or_else(|| set(home).unwrap_or_default().join(".cache"))
            .join("fabric")
            .join(leaf)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_and_cache_roots_read_as_the_scripts_do() {
        let text = "# pins\nA=v1\nexport B=\"v2\"\n C = 'v3' \nD=\n";
        assert_eq!(env_value(text, "A").unwrap(), "v1");
        assert_eq!(env_value(text, "B").unwrap(), "v2");
        assert_eq!(env_value(text, "C").unwrap(), "v3");
        assert!(env_value(text, "D").is_err());
        assert!(env_value("# A=v1\n", "A").is_err());
        let s = |v: &str| Some(OsString::from(v));
        assert_eq!(
            cache_root(s("/c"), s("/x"), s("/h"), "k8s"),
            PathBuf::from("/c")
        );
        assert_eq!(
            cache_root(s(""), s("/x"), s("/h"), "k8s"),
            PathBuf::from("/x/fabric/k8s")
        );
        assert_eq!(
            cache_root(None, s(""), s("/root"), "anchors"),
            PathBuf::from("/root/.cache/fabric/anchors")
        );
    }
}
