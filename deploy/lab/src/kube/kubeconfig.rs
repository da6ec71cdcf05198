//! Kubeconfig files the lab writes: one cluster (the lab's apiserver and CA), one user with
//! either a client certificate (admin, kube-controller-manager) or a bearer token (fabricd's
//! ServiceAccount), one context. Written as JSON, which every kubeconfig reader takes, 0600.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{json, Value};

/// The cluster's and context's name in every kubeconfig the lab writes.
pub const CLUSTER: &str = "fabric-lab";

/// How a kubeconfig's user authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A client certificate and its key.
    ClientCert {
        /// The certificate.
        cert: PathBuf,
        /// Its key.
        key: PathBuf,
    },
    /// A bearer token (a ServiceAccount's).
    Token(String),
}

/// The kubeconfig for `user` at `server`, trusting `ca`.
pub fn kubeconfig(server: &str, ca: &Path, user: &str, credential: &Credential) -> Value {
    let user_entry = match credential {
        Credential::ClientCert { cert, key } => {
            json!({"client-certificate": cert, "client-key": key})
        }
        Credential::Token(token) => json!({ "token": token }),
    };
    json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CLUSTER, "cluster": {"server": server, "certificate-authority": ca}}],
        "users": [{"name": user, "user": user_entry}],
        "contexts": [{"name": CLUSTER, "context": {"cluster": CLUSTER, "user": user}}],
        "current-context": CLUSTER,
    })
}

/// Writes a kubeconfig readable by root only (it holds a credential).
pub fn write(path: &Path, config: &Value) -> Result<()> {
    let mut text = serde_json::to_vec_pretty(config)?;
    text.push(b'\n');
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(&text))
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn shapes() {
        let token = kubeconfig(
            "https://172.30.0.3:6443",
            Path::new("/s/ca.crt"),
            "fabric",
            &Credential::Token("abc".into()),
        );
        assert_eq!(
            token["clusters"][0]["cluster"]["server"],
            "https://172.30.0.3:6443"
        );
        assert_eq!(
            token["clusters"][0]["cluster"]["certificate-authority"],
            "/s/ca.crt"
        );
        assert_eq!(token["users"][0]["user"], json!({"token": "abc"}));
        assert_eq!(token["contexts"][0]["context"]["user"], "fabric");
        assert_eq!(token["current-context"], CLUSTER);
        let cert = kubeconfig(
            "https://127.0.0.1:6443",
            Path::new("/s/ca.crt"),
            "admin",
            &Credential::ClientCert {
                cert: "/s/admin.crt".into(),
                key: "/s/admin.key".into(),
            },
        );
        assert_eq!(cert["users"][0]["user"]["client-key"], "/s/admin.key");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write(&path, &token).unwrap();
        write(&path, &cert).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let back: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(back, cert);
    }
}
