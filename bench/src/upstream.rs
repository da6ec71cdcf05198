//! The upstream programs `bench/anchors/build.sh` builds from their official Go modules at the
//! pins in `bench/anchors/versions.env` (embedded here at compile time): where their binaries
//! are cached, computed the way the script computes it, and building them when missing.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use fabric_lab::process::Cmd;

/// `bench/anchors/versions.env`, as built into this binary.
pub const VERSIONS_ENV: &str = include_str!("../anchors/versions.env");

/// How long a cold build may take (module downloads and compiling on 2 shared cores).
const BUILD_TIMEOUT: Duration = Duration::from_secs(1800);

/// One tool `build.sh` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tool {
    /// `build.sh`'s name for it (also its wrapper module's directory).
    pub name: &'static str,
    /// The `versions.env` key of its pin.
    pub version_key: &'static str,
    /// The binary it builds.
    pub binary: &'static str,
}

/// wireguard-go, current release (golang.zx2c4.com/wireguard).
pub const WIREGUARD_GO: Tool = Tool {
    name: "wireguard-go",
    version_key: "WIREGUARD_GO_VERSION",
    binary: "wireguard-go",
};

/// kube-network-policies (sigs.k8s.io/kube-network-policies); its upstream `install.yaml` is
/// copied beside the binary as `kube-network-policies-install.yaml`.
pub const KUBE_NETWORK_POLICIES: Tool = Tool {
    name: "kube-network-policies",
    version_key: "KUBE_NETWORK_POLICIES_VERSION",
    binary: "kube-network-policies",
};

/// The value of `key` in a `KEY=value` file (comments and blank lines skipped, optional
/// `export` and quotes removed).
pub fn env_value(text: &str, key: &str) -> Result<String> {
    fabric_lab::pins::env_value(text, key).context("in bench/anchors/versions.env")
}

/// The pinned value of `key` in the embedded `versions.env`.
pub fn pin(key: &str) -> Result<String> {
    env_value(VERSIONS_ENV, key)
}

/// The cache root as build.sh computes it:
/// `${FABRIC_ANCHORS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fabric/anchors}` (empty counts as
/// unset).
pub fn cache_root(
    anchors_cache: Option<OsString>,
    xdg_cache_home: Option<OsString>,
    home: Option<OsString>,
) -> PathBuf {
    fabric_lab::pins::cache_root(anchors_cache, xdg_cache_home, home, "anchors")
}

/// `<root>/<tool>-<version>/bin/<binary>`.
pub fn binary_in(root: &Path, tool: &Tool, version: &str) -> PathBuf {
    root.join(format!("{}-{version}", tool.name))
        .join("bin")
        .join(tool.binary)
}

/// The script, in this source tree.
pub fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("anchors/build.sh")
}

/// `tool`'s binary at its pin, built with `build.sh` first if it is not in the cache.
pub fn ensure(tool: &Tool) -> Result<PathBuf> {
    let root = cache_root(
        std::env::var_os("FABRIC_ANCHORS_CACHE"),
        std::env::var_os("XDG_CACHE_HOME"),
        std::env::var_os("HOME"),
    );
    let bin = binary_in(&root, tool, &pin(tool.version_key)?);
    if fabric_lab::spec::is_executable(&bin) {
        return Ok(bin);
    }
    let script = build_script();
    eprintln!(
        "{} not found: {} {} (a cold build takes minutes)",
        bin.display(),
        script.display(),
        tool.name
    );
    Cmd::new("bash")
        .arg(&script)
        .arg(tool.name)
        .timeout(BUILD_TIMEOUT)
        .run()
        .with_context(|| format!("building {} with {}", tool.name, script.display()))?;
    ensure!(
        fabric_lab::spec::is_executable(&bin),
        "{} is missing after {} {} (FABRIC_ANCHORS_CACHE, XDG_CACHE_HOME and HOME must be what \
         they were for it)",
        bin.display(),
        script.display(),
        tool.name
    );
    Ok(bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_pins_parse() {
        let v = pin(WIREGUARD_GO.version_key).unwrap();
        assert!(v.starts_with("v0.0.0-"), "{v}");
        assert!(pin("WIREGUARD_GO_RELEASE").unwrap().starts_with("0.0."));
        assert!(pin(KUBE_NETWORK_POLICIES.version_key)
            .unwrap()
            .starts_with("v0."));
        assert!(pin("NO_SUCH_PIN").is_err());
    }

    #[test]
    fn env_file_syntax() {
        let text = "# pins\n\nA=v1\nexport B=\"v2\"\n C = 'v3' \nD=\n";
        assert_eq!(env_value(text, "A").unwrap(), "v1");
        assert_eq!(env_value(text, "B").unwrap(), "v2");
        assert_eq!(env_value(text, "C").unwrap(), "v3");
        assert!(env_value(text, "D").is_err());
        assert!(env_value("# A=v1\n", "A").is_err());
    }

    #[test]
    fn cache_paths_follow_build_sh() {
        let s = |v: &str| Some(OsString::from(v));
        assert_eq!(cache_root(s("/c"), s("/x"), s("/h")), PathBuf::from("/c"));
        assert_eq!(
            cache_root(s(""), s("/x"), s("/h")),
            PathBuf::from("/x/fabric/anchors")
        );
        assert_eq!(
            cache_root(None, None, s("/root")),
            PathBuf::from("/root/.cache/fabric/anchors")
        );
        assert_eq!(
            binary_in(Path::new("/r"), &WIREGUARD_GO, "v0.0.0-1-abc"),
            PathBuf::from("/r/wireguard-go-v0.0.0-1-abc/bin/wireguard-go")
        );
        assert!(build_script().ends_with("bench/anchors/build.sh"));
    }

    /// The script and this module agree on where a tool's binary goes.
    #[test]
    fn build_sh_reports_the_same_bin_dir() {
        for ((cache, xdg), tool) in [("/tmp/anchors-a", ""), ("", "/tmp/xdg-b")]
            .into_iter()
            .zip([WIREGUARD_GO, KUBE_NETWORK_POLICIES])
        {
            let out = std::process::Command::new("bash")
                .arg(build_script())
                .args(["--bin-dir", tool.name])
                .env("FABRIC_ANCHORS_CACHE", cache)
                .env("XDG_CACHE_HOME", xdg)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            let dir = String::from_utf8(out.stdout).unwrap();
            let root = cache_root(Some(cache.into()), Some(xdg.into()), None);
            let bin = binary_in(&root, &tool, &pin(tool.version_key).unwrap());
            assert_eq!(Path::new(dir.trim()), bin.parent().unwrap());
        }
    }
}
