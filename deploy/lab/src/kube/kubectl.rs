//! The pinned `kubectl`, run inside a lab namespace that reaches kube-apiserver (the apiserver
//! is not reachable from the root namespace), with a lab kubeconfig and its discovery cache in
//! the lab's state dir.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::process::Cmd;

/// How long one kubectl call may take.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// A kubectl bound to one namespace and kubeconfig.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kubectl {
    /// The kubectl binary.
    pub binary: PathBuf,
    /// The network namespace it runs in.
    pub netns: String,
    /// `--kubeconfig`.
    pub kubeconfig: PathBuf,
    /// `--cache-dir`.
    pub cache_dir: PathBuf,
}

impl Kubectl {
    /// The command `kubectl ARGS...` (not yet run; no timeout set).
    pub fn cmd<I, S>(&self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Cmd::in_netns(&self.netns, &self.binary)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache_dir)
            .args(args)
    }

    /// Runs `kubectl ARGS...`; returns its stdout, fails (with its stderr) unless it exits 0.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        self.cmd(args).timeout(TIMEOUT).run()
    }

    /// Runs `kubectl ARGS...` with `stdin`.
    pub fn run_stdin(&self, args: &[&str], stdin: impl Into<Vec<u8>>) -> Result<String> {
        self.cmd(args).stdin(stdin).timeout(TIMEOUT).run()
    }

    /// `kubectl ARGS... -o json`, parsed.
    pub fn json(&self, args: &[&str]) -> Result<Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.run(&all)?;
        serde_json::from_str(&out).with_context(|| format!("parsing `kubectl {}`", all.join(" ")))
    }

    /// Deletes Pod `namespace/name` at once (grace period 0, not waiting): what kubelet does
    /// once a pod's containers are gone, and what the lab does where no kubelet would.
    pub fn delete_pod_now(&self, namespace: &str, name: &str) -> Result<String> {
        self.run(&[
            "delete",
            "pod",
            name,
            "-n",
            namespace,
            "--grace-period=0",
            "--force",
            "--ignore-not-found",
            "--wait=false",
        ])
    }

    /// `kubectl apply -f -` of one object or a `List`.
    pub fn apply(&self, object: &Value) -> Result<String> {
        self.run_stdin(&["apply", "-f", "-"], object.to_string())
    }

    /// `kubectl create -f -` of one object; returns the created object.
    pub fn create(&self, object: &Value) -> Result<Value> {
        let out = self.run_stdin(&["create", "-f", "-", "-o", "json"], object.to_string())?;
        serde_json::from_str(&out).context("parsing the created object")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line() {
        let k = Kubectl {
            binary: "/k/bin/kubectl".into(),
            netns: "t-cp".into(),
            kubeconfig: "/run/fabric-lab/t/kube/admin.kubeconfig".into(),
            cache_dir: "/run/fabric-lab/t/kube/cache".into(),
        };
        let display = k.cmd(["get", "nodes"]).display();
        assert!(
            display.ends_with(
                "netns exec t-cp /k/bin/kubectl --kubeconfig \
                 /run/fabric-lab/t/kube/admin.kubeconfig --cache-dir \
                 /run/fabric-lab/t/kube/cache get nodes"
            ),
            "{display}"
        );
    }
}
