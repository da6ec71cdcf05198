//! The cluster's policy view in etcd mode: NetworkPolicy manifests as operators write them
//! (multi-document YAML), and the [`policy::Cluster`] built from the pods, namespaces and
//! policies stored under the prefix.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use ipam::etcd::EtcdStore;
use ipam::objects::Kind;
use ipam::{NamespaceRecord, PodRecord};
use policy::{Cluster, NetworkPolicy, Pod, PodKey, Policy};
use serde::Deserialize;

/// Parses a manifest file: one or more YAML documents, each a NetworkPolicy (empty documents
/// are skipped). Every policy is validated; any error refuses the whole file, naming the
/// document, the field path and the reason.
pub fn parse_manifests(text: &str) -> Result<Vec<NetworkPolicy>> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc)
            .with_context(|| format!("document {}: not YAML", i + 1))?;
        if value.is_null() {
            continue;
        }
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("NetworkPolicy");
        if kind != "NetworkPolicy" {
            bail!("document {}: kind {kind:?} is not a NetworkPolicy", i + 1);
        }
        let mut np: NetworkPolicy = serde_yaml::from_value(value)
            .with_context(|| format!("document {}: not a NetworkPolicy", i + 1))?;
        // Like kubectl: no namespace means the default one.
        np.metadata
            .namespace
            .get_or_insert_with(|| "default".into());
        Policy::from_k8s(&np).with_context(|| format!("document {}", i + 1))?;
        out.push(np);
    }
    if out.is_empty() {
        bail!("no NetworkPolicy in the file");
    }
    Ok(out)
}

/// `namespace/name` of a policy from [`parse_manifests`].
pub fn policy_name(np: &NetworkPolicy) -> Result<String> {
    let name = np
        .metadata
        .name
        .as_deref()
        .context("metadata.name is required")?;
    let ns = np.metadata.namespace.as_deref().unwrap_or("default");
    Ok(format!("{ns}/{name}"))
}

/// Builds the policy view from the datastore.
pub async fn load(store: &EtcdStore) -> Result<Cluster> {
    let listed = list(store).await?;
    Ok(build(&listed))
}

/// The raw objects the view is built from: namespaces, pods, policies.
type Listed = [BTreeMap<String, serde_json::Value>; 3];

async fn list(store: &EtcdStore) -> Result<Listed> {
    Ok([
        store.list_objects(Kind::Namespaces).await?,
        store.list_objects(Kind::Pods).await?,
        store.list_objects(Kind::Policies).await?,
    ])
}

/// Keeps `view` current: re-reads the datastore every `every` and rebuilds the view when
/// anything changed; after a change, the allowed connections inside `cluster_net` are judged
/// again and those no longer allowed are cut. Runs until the process ends.
pub async fn follow(
    store: EtcdStore,
    view: crate::enforce::View,
    cluster_net: ipnet::Ipv4Net,
    every: std::time::Duration,
) {
    let mut last: Option<Listed> = None;
    loop {
        match list(&store).await {
            Ok(listed) if last.as_ref() != Some(&listed) => {
                let cluster = build(&listed);
                tracing::info!(
                    namespaces = listed[0].len(),
                    pods = listed[1].len(),
                    policies = listed[2].len(),
                    "policy view updated"
                );
                let cluster = std::sync::Arc::new(cluster);
                *view.write().unwrap_or_else(|e| e.into_inner()) = cluster.clone();
                if last.replace(listed).is_some() {
                    match crate::enforce::rejudge(&cluster, cluster_net) {
                        Ok(0) => {}
                        Ok(cut) => tracing::info!(cut, "connections no longer allowed were cut"),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot re-judge existing connections")
                        }
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the policy objects; keeping the previous view")
            }
        }
        tokio::time::sleep(every).await;
    }
}

fn build([namespaces, pods, policies]: &Listed) -> Cluster {
    let mut cluster = Cluster::new();
    for (name, value) in namespaces.clone() {
        let record: NamespaceRecord = serde_json::from_value(value).unwrap_or_default();
        cluster.upsert_namespace(&name, record.labels);
    }
    for (key, value) in pods.clone() {
        let Ok(pod) = serde_json::from_value::<PodRecord>(value) else {
            tracing::warn!(%key, "skipping an unreadable pod record");
            continue;
        };
        if cluster.namespace_labels(&pod.namespace).is_none() {
            cluster.upsert_namespace(&pod.namespace, Default::default());
        }
        cluster.upsert_pod(Pod {
            key: PodKey::new(pod.namespace, pod.name),
            labels: pod.labels,
            ip: pod.ip,
            ports: Vec::new(),
        });
    }
    for (key, value) in policies.clone() {
        let np: NetworkPolicy = match serde_json::from_value(value) {
            Ok(np) => np,
            Err(e) => {
                tracing::warn!(%key, error = %e, "skipping an unreadable policy");
                continue;
            }
        };
        if let Err(e) = cluster.upsert_policy(&np) {
            tracing::warn!(%key, error = %e, "skipping an invalid policy");
        }
    }
    cluster
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_manifests_are_validated_whole() {
        let ok = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: x}\nspec: {podSelector: {}}\n---\n---\nmetadata: {name: b}\nspec: {podSelector: {}, policyTypes: [Egress]}\n";
        let got = parse_manifests(ok).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(policy_name(&got[0]).unwrap(), "x/a");
        assert_eq!(policy_name(&got[1]).unwrap(), "default/b");

        let bad = "metadata: {name: a}\nspec:\n  podSelector: {}\n  ingress:\n  - ports:\n    - endPort: 90\n";
        let err = format!("{:#}", parse_manifests(bad).unwrap_err());
        assert!(err.contains("spec.ingress[0].ports[0]"), "{err}");
        assert!(parse_manifests("kind: Pod\nmetadata: {name: a}\n").is_err());
        assert!(parse_manifests("").is_err());
    }

    #[test]
    fn shipped_example_policies_are_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/policies");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let policies =
                parse_manifests(&text).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            seen += policies.len();
        }
        assert!(seen >= 4, "{seen} example policies");
    }
}
