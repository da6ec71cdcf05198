//! Cluster DNS: the CoreDNS manifest the lab applies (`deploy/lab/k8s/coredns.yaml`, built into
//! the binary), the cluster's DNS settings every ClusterFirst pod's resolv.conf carries, and the
//! one change the kubelet role makes to the Corefile it hands the coredns workload: a
//! `kubeconfig` line in the `kubernetes` block, since a plain process gets no ServiceAccount
//! token mounted at `/var/run/secrets`. Pure functions over text.

use std::net::Ipv4Addr;

/// `deploy/lab/k8s/coredns.yaml`.
pub const MANIFEST: &str = include_str!("../../k8s/coredns.yaml");

/// The cluster DNS Service's address (`kube-dns` in `kube-system`).
pub const CLUSTER_DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// The cluster domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// CoreDNS's namespace, Deployment and ServiceAccount.
pub const NAMESPACE: &str = "kube-system";
/// The Deployment (and ServiceAccount, ConfigMap) name.
pub const COREDNS: &str = "coredns";
/// The Service.
pub const SERVICE: &str = "kube-dns";

/// Is `image` a CoreDNS image (`registry.k8s.io/coredns/coredns:v1.14.7`, `coredns/coredns`,
/// with a tag or a digest)?
pub fn is_coredns_image(image: &str) -> bool {
    let name = image.split('@').next().unwrap_or(image);
    let repo = match name.rsplit_once(':') {
        // A colon after the last slash is a tag; before it, a registry port.
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => name,
    };
    repo.rsplit('/').next() == Some("coredns")
}

/// `corefile` with `kubeconfig PATH` as the first line of every `kubernetes` plugin block (an
/// existing `kubeconfig` line there is replaced; a `kubernetes` line without a block gets one).
pub fn with_kubeconfig(corefile: &str, kubeconfig: &str) -> String {
    let mut out = Vec::new();
    let mut in_block = false;
    let mut depth = 0usize;
    for line in corefile.lines() {
        let trimmed = line.trim();
        let indent = &line[..line.len() - line.trim_start().len()];
        if in_block {
            if depth == 1 && trimmed.split_whitespace().next() == Some("kubeconfig") {
                continue;
            }
            depth += trimmed.matches('{').count();
            depth = depth.saturating_sub(trimmed.matches('}').count());
            in_block = depth > 0;
            out.push(line.to_string());
            continue;
        }
        if trimmed.split_whitespace().next() == Some("kubernetes") {
            let inner = format!("{indent}    kubeconfig {kubeconfig}");
            if trimmed.ends_with('{') {
                out.push(line.to_string());
                out.push(inner);
                in_block = true;
                depth = 1;
            } else {
                out.push(format!("{line} {{"));
                out.push(inner);
                out.push(format!("{indent}}}"));
            }
            continue;
        }
        out.push(line.to_string());
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coredns_images() {
        for yes in [
            "registry.k8s.io/coredns/coredns:v1.14.7",
            "coredns/coredns",
            "coredns/coredns:1.11.1",
            "localhost:5000/coredns/coredns@sha256:abc",
        ] {
            assert!(is_coredns_image(yes), "{yes}");
        }
        for no in [
            "nginx",
            "registry.k8s.io/coredns-x:v1",
            "localhost:5000/nginx",
            "busybox:coredns",
        ] {
            assert!(!is_coredns_image(no), "{no}");
        }
    }

    #[test]
    fn the_manifest_holds_the_objects() {
        for needle in [
            "kind: ServiceAccount",
            "name: system:coredns",
            "kind: ConfigMap",
            "kind: Deployment",
            "image: registry.k8s.io/coredns/coredns:v1.14.7",
            "clusterIP: 10.96.0.10",
            "kubernetes cluster.local in-addr.arpa ip6.arpa {",
        ] {
            assert!(MANIFEST.contains(needle), "{needle} missing");
        }
        assert!(
            !MANIFEST
                .lines()
                .any(|l| l.trim_start().starts_with("forward")),
            "the lab has no upstream DNS"
        );
    }

    #[test]
    fn kubeconfig_goes_into_the_kubernetes_block() {
        let corefile = ".:53 {\n    errors\n    kubernetes cluster.local in-addr.arpa ip6.arpa {\n        pods insecure\n        kubeconfig /old\n        fallthrough in-addr.arpa ip6.arpa\n    }\n    cache 30\n}\n";
        assert_eq!(
            with_kubeconfig(corefile, "/k/coredns.kubeconfig"),
            ".:53 {\n    errors\n    kubernetes cluster.local in-addr.arpa ip6.arpa {\n        kubeconfig /k/coredns.kubeconfig\n        pods insecure\n        fallthrough in-addr.arpa ip6.arpa\n    }\n    cache 30\n}\n"
        );
        assert_eq!(
            with_kubeconfig(".:53 {\n  kubernetes cluster.local\n  cache\n}", "/k"),
            ".:53 {\n  kubernetes cluster.local {\n      kubeconfig /k\n  }\n  cache\n}\n"
        );
        let from_manifest = MANIFEST
            .split("Corefile: |\n")
            .nth(1)
            .unwrap()
            .split("---")
            .next()
            .unwrap();
        let rewritten = with_kubeconfig(from_manifest, "/k");
        assert_eq!(rewritten.matches("kubeconfig /k").count(), 1, "{rewritten}");
        assert!(rewritten.contains("cache 30"), "{rewritten}");
    }
}
