//! The mechanics of Kubernetes mode (`fabric-lab up --datastore kubernetes`): the pinned
//! upstream binaries ([`binaries`]), the lab PKI ([`certs`]), kubeconfigs ([`kubeconfig`]), the
//! control plane's daemons ([`control_plane`]), the pinned kubectl ([`kubectl`]), the API
//! objects the lab writes in the kubelet's place ([`objects`]), kube-proxy's command line
//! ([`proxy`]) and cluster DNS ([`dns`]: the CoreDNS manifest, the Corefile the workload gets).
//! [`crate::lab`] orders the steps; [`crate::kubelet`] is the per-node kubelet role.
//!
//! fabricd's RBAC is the deployment manifest's own: the objects of
//! `deploy/kubernetes/fabric.yaml` labelled [`RBAC_SELECTOR`] are applied as they are, and each
//! node's fabricd authenticates with a token of the ServiceAccount they bind, never as admin.

pub mod binaries;
pub mod certs;
pub mod control_plane;
pub mod dns;
pub mod kubeconfig;
pub mod kubectl;
pub mod objects;
pub mod proxy;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

pub use kubectl::Kubectl;

/// The label selecting the manifest's RBAC objects (Namespace, ServiceAccount, ClusterRole,
/// ClusterRoleBinding).
pub const RBAC_SELECTOR: &str = "app.kubernetes.io/component=rbac";

/// The environment variable naming the manifest instead of the repository's.
pub const MANIFEST_ENV: &str = "FABRIC_MANIFEST";

/// The manifest's path inside the repository.
pub const MANIFEST_IN_REPO: &str = "deploy/kubernetes/fabric.yaml";

/// The namespace of fabricd's ServiceAccount.
pub const SERVICE_ACCOUNT_NAMESPACE: &str = "fabric-system";

/// fabricd's ServiceAccount.
pub const SERVICE_ACCOUNT: &str = "fabric";

/// How long the tokens the nodes' fabricd get are valid.
pub const TOKEN_DURATION: &str = "48h";

/// The manifest: `$FABRIC_MANIFEST`, else [`MANIFEST_IN_REPO`] in the checkout the bin dir
/// belongs to (`<repo>/target/release` → `<repo>`).
pub fn manifest_path(env: Option<OsString>, bin_dir: &Path) -> PathBuf {
    if let Some(path) = env.filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let bin_dir = std::fs::canonicalize(bin_dir).unwrap_or_else(|_| bin_dir.to_path_buf());
    let repo = bin_dir
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."));
    repo.join(MANIFEST_IN_REPO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_is_found_in_the_checkout_or_named() {
        assert_eq!(
            manifest_path(None, Path::new("/nonexistent/w/target/release")),
            PathBuf::from("/nonexistent/w/deploy/kubernetes/fabric.yaml")
        );
        assert_eq!(
            manifest_path(Some("/m.yaml".into()), Path::new("/w/target/release")),
            PathBuf::from("/m.yaml")
        );
        assert_eq!(
            manifest_path(Some("".into()), Path::new("/nonexistent/w/target/debug")),
            PathBuf::from("/nonexistent/w/deploy/kubernetes/fabric.yaml")
        );
    }
}
