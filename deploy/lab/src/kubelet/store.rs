//! The kubelet role's own state file, `nodes/NODE/kubelet/state.json`: the pods it runs on that
//! node (sandbox id, network namespace, the CNI ADD result libcni would cache, the resolv.conf
//! directory it wrote under `/etc/netns`, each container's process). A pod is recorded before
//! anything of it is created, so a restarted role picks it up and `fabric-lab down` ends its
//! processes by PID and removes its files. Only the role writes it; teardown reads it.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::process::Daemon;

/// A container the role runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningContainer {
    /// Its name in the pod spec.
    pub name: String,
    /// Its image.
    pub image: String,
    /// The container id reported in its status.
    pub id: String,
    /// The command it runs (empty: nothing runs).
    #[serde(default)]
    pub argv: Vec<String>,
    /// Its stdout+stderr.
    pub log: PathBuf,
    /// Its process, once started.
    #[serde(default)]
    pub daemon: Option<Daemon>,
    /// Whether it passed its readiness probe (or has none).
    #[serde(default)]
    pub ready: bool,
}

/// A pod the role runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningPod {
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// The sandbox id (`CNI_CONTAINERID`, `K8S_POD_INFRA_CONTAINER_ID`).
    pub sandbox_id: String,
    /// The pod's network namespace.
    pub netns: String,
    /// The conflist it was attached with.
    pub conflist: Value,
    /// The capability arguments ADD was given.
    #[serde(default)]
    pub capability_args: Map<String, Value>,
    /// The ADD result (`Null` until attached).
    #[serde(default)]
    pub result: Value,
    /// Its IPv4 address.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// Its IPv6 address (dual stack).
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
    /// `/etc/netns/<netns>`, once written.
    #[serde(default)]
    pub resolv_dir: Option<PathBuf>,
    /// The pod's directory in the role's state dir (projected volumes, kubeconfigs).
    pub dir: PathBuf,
    /// When it started (RFC 3339).
    pub started: String,
    /// Its containers.
    pub containers: Vec<RunningContainer>,
}

impl RunningPod {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// What the state file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeletState {
    /// The pods, in start order.
    pub pods: Vec<RunningPod>,
}

impl KubeletState {
    /// Reads `path`; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KubeletState::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let tmp = path.with_extension("json.tmp");
        let mut text = serde_json::to_vec_pretty(self)?;
        text.push(b'\n');
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
    }

    /// The pod with `uid`.
    pub fn pod(&self, uid: &str) -> Option<&RunningPod> {
        self.pods.iter().find(|p| p.uid == uid)
    }

    /// The pod with `uid`, mutably.
    pub fn pod_mut(&mut self, uid: &str) -> Option<&mut RunningPod> {
        self.pods.iter_mut().find(|p| p.uid == uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_missing_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubelet/state.json");
        assert_eq!(KubeletState::load(&path).unwrap(), KubeletState::default());
        let state = KubeletState {
            pods: vec![RunningPod {
                uid: "u1".into(),
                namespace: "default".into(),
                name: "web".into(),
                sandbox_id: "ab".repeat(32),
                netns: "t-web".into(),
                conflist: serde_json::json!({"name": "fabric"}),
                capability_args: Map::new(),
                result: Value::Null,
                ip: Some(Ipv4Addr::new(10, 244, 1, 5)),
                ipv6: None,
                resolv_dir: Some("/etc/netns/t-web".into()),
                dir: dir.path().join("pods/u1"),
                started: "2026-01-01T00:00:00Z".into(),
                containers: vec![RunningContainer {
                    name: "nginx".into(),
                    image: "nginx".into(),
                    id: "cd".repeat(32),
                    argv: vec!["/bin/fabric-lab".into(), "serve".into()],
                    log: "/l".into(),
                    daemon: None,
                    ready: true,
                }],
            }],
        };
        state.save(&path).unwrap();
        let back = KubeletState::load(&path).unwrap();
        assert_eq!(back, state);
        assert_eq!(back.pod("u1").unwrap().key(), "default/web");
        assert!(back.pod("u2").is_none());
    }
}
