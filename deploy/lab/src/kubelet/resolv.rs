//! A pod's `/etc/resolv.conf`, rendered the way kubelet computes it (`pkg/kubelet/network/dns`)
//! and containerd writes it: `search`, then `nameserver` lines, then `options`.
//!
//! - `ClusterFirst` (the default; `ClusterFirstWithHostNet` is the same for a pod with its own
//!   network): the cluster DNS Service as the only nameserver, the search path
//!   `<ns>.svc.<domain> svc.<domain> <domain>` followed by the node's own search domains, and
//!   `options ndots:5`;
//! - `Default`: the node's resolv.conf (nameservers, search, options);
//! - `None`: nothing but the pod's `dnsConfig`.
//!
//! Then `dnsConfig` is merged in: its nameservers and searches appended (duplicates dropped),
//! its options added, a same-named option replacing the one before. The search path is cut to
//! kubelet's limits (32 domains, 2048 characters).

use std::net::Ipv4Addr;

use serde_json::Value;

use super::pod::strings;

/// Most search domains kubelet keeps.
pub const MAX_SEARCHES: usize = 32;
/// Longest search line kubelet keeps (characters, domains joined by spaces).
pub const MAX_SEARCH_CHARS: usize = 2048;

/// A resolver configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsConfig {
    /// `nameserver` entries.
    pub nameservers: Vec<String>,
    /// `search` domains.
    pub searches: Vec<String>,
    /// `options` entries (`ndots:5`, `edns0`).
    pub options: Vec<String>,
}

/// What the cluster's DNS looks like to a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDns {
    /// The cluster DNS Service's address.
    pub nameserver: Ipv4Addr,
    /// The cluster domain (`cluster.local`).
    pub domain: String,
}

/// Parses a resolv.conf (the node's): `nameserver`, `search` (and the older `domain`), and
/// `options` lines; comments skipped; the last `search`/`domain` line wins, as in glibc.
pub fn parse(text: &str) -> DnsConfig {
    let mut conf = DnsConfig::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => conf.nameservers.extend(words.next().map(str::to_string)),
            Some("search") | Some("domain") => {
                conf.searches = words.map(str::to_string).collect();
            }
            Some("options") => conf.options.extend(words.map(str::to_string)),
            _ => {}
        }
    }
    conf
}

/// The pod's resolver configuration: `pod` is the Pod object (its `spec.dnsPolicy`,
/// `spec.dnsConfig`, `spec.hostNetwork`, `metadata.namespace`), `host` the node's resolv.conf.
pub fn pod_dns(pod: &Value, cluster: &ClusterDns, host: &DnsConfig) -> DnsConfig {
    let spec = &pod["spec"];
    let host_network = spec["hostNetwork"].as_bool().unwrap_or(false);
    let policy = spec["dnsPolicy"].as_str().unwrap_or("ClusterFirst");
    let namespace = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let cluster_first = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network,
        _ => false,
    };
    let mut conf = match policy {
        "None" => DnsConfig::default(),
        _ if cluster_first => {
            let d = &cluster.domain;
            let mut searches = vec![
                format!("{namespace}.svc.{d}"),
                format!("svc.{d}"),
                d.clone(),
            ];
            searches.extend(host.searches.iter().cloned());
            DnsConfig {
                nameservers: vec![cluster.nameserver.to_string()],
                searches: dedup(searches),
                options: vec!["ndots:5".to_string()],
            }
        }
        _ => host.clone(),
    };
    let extra = &spec["dnsConfig"];
    conf.nameservers.extend(strings(&extra["nameservers"]));
    conf.nameservers = dedup(std::mem::take(&mut conf.nameservers));
    conf.searches.extend(strings(&extra["searches"]));
    conf.searches = dedup(std::mem::take(&mut conf.searches));
    for option in extra["options"].as_array().into_iter().flatten() {
        let Some(name) = option["name"].as_str() else {
            continue;
        };
        let entry = match option["value"].as_str() {
            Some(value) => format!("{name}:{value}"),
            None => name.to_string(),
        };
        let same = |o: &String| o.split(':').next() == Some(name);
        match conf.options.iter_mut().find(|o| same(o)) {
            Some(existing) => *existing = entry,
            None => conf.options.push(entry),
        }
    }
    conf.searches = fit_search_limits(conf.searches);
    conf
}

/// The resolv.conf text containerd writes for `conf`.
pub fn render(conf: &DnsConfig) -> String {
    let mut text = String::new();
    if !conf.searches.is_empty() {
        text.push_str(&format!("search {}\n", conf.searches.join(" ")));
    }
    for ns in &conf.nameservers {
        text.push_str(&format!("nameserver {ns}\n"));
    }
    if !conf.options.is_empty() {
        text.push_str(&format!("options {}\n", conf.options.join(" ")));
    }
    text
}

fn dedup(list: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for item in list {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

fn fit_search_limits(mut searches: Vec<String>) -> Vec<String> {
    searches.truncate(MAX_SEARCHES);
    while searches.join(" ").len() > MAX_SEARCH_CHARS {
        searches.pop();
    }
    searches
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn cluster() -> ClusterDns {
        ClusterDns {
            nameserver: Ipv4Addr::new(10, 96, 0, 10),
            domain: "cluster.local".into(),
        }
    }

    #[test]
    fn host_resolv_conf_parses() {
        let host = parse(
            "# generated\nnameserver 10.255.255.53\nnameserver 1.1.1.1 ; second\n\
             domain old.example\nsearch corp.example lab.example\noptions edns0 ndots:2\n",
        );
        assert_eq!(host.nameservers, ["10.255.255.53", "1.1.1.1"]);
        assert_eq!(host.searches, ["corp.example", "lab.example"]);
        assert_eq!(host.options, ["edns0", "ndots:2"]);
    }

    #[test]
    fn cluster_first_is_the_default() {
        let pod = json!({"metadata": {"namespace": "web"}, "spec": {}});
        let conf = pod_dns(&pod, &cluster(), &DnsConfig::default());
        assert_eq!(
            render(&conf),
            "search web.svc.cluster.local svc.cluster.local cluster.local\n\
             nameserver 10.96.0.10\noptions ndots:5\n"
        );
        // The node's search domains follow the cluster's; its servers and options do not.
        let host = parse("nameserver 10.255.255.53\nsearch corp.example\noptions edns0\n");
        let conf = pod_dns(&pod, &cluster(), &host);
        assert_eq!(
            conf.searches,
            [
                "web.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "corp.example"
            ]
        );
        assert_eq!(conf.nameservers, ["10.96.0.10"]);
        assert_eq!(conf.options, ["ndots:5"]);
    }

    #[test]
    fn default_none_and_host_network() {
        let host = parse("nameserver 10.255.255.53\nsearch corp.example\noptions edns0\n");
        let default = json!({"metadata": {"namespace": "x"}, "spec": {"dnsPolicy": "Default"}});
        assert_eq!(pod_dns(&default, &cluster(), &host), host);
        let host_net = json!({"metadata": {"namespace": "x"},
            "spec": {"hostNetwork": true, "dnsPolicy": "ClusterFirst"}});
        assert_eq!(pod_dns(&host_net, &cluster(), &host), host);
        let with_host_net = json!({"metadata": {"namespace": "x"},
            "spec": {"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}});
        assert_eq!(
            pod_dns(&with_host_net, &cluster(), &host).nameservers,
            ["10.96.0.10"]
        );
        let none = json!({"metadata": {"namespace": "x"}, "spec": {"dnsPolicy": "None",
            "dnsConfig": {"nameservers": ["192.0.2.53"], "searches": ["a.example"],
                          "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}});
        assert_eq!(
            render(&pod_dns(&none, &cluster(), &host)),
            "search a.example\nnameserver 192.0.2.53\noptions ndots:2 edns0\n"
        );
    }

    #[test]
    fn dns_config_merges_into_cluster_first() {
        let pod = json!({"metadata": {"namespace": "default"}, "spec": {
            "dnsConfig": {"nameservers": ["10.96.0.10", "192.0.2.53"],
                          "searches": ["svc.cluster.local", "my.example"],
                          "options": [{"name": "ndots", "value": "1"}, {"name": "single-request"}]}}});
        let conf = pod_dns(&pod, &cluster(), &DnsConfig::default());
        assert_eq!(conf.nameservers, ["10.96.0.10", "192.0.2.53"]);
        assert_eq!(
            conf.searches,
            [
                "default.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "my.example"
            ]
        );
        assert_eq!(conf.options, ["ndots:1", "single-request"]);
    }

    #[test]
    fn search_path_is_cut_to_kubelets_limits() {
        let many: Vec<String> = (0..40).map(|i| format!("d{i}.example")).collect();
        let pod = json!({"metadata": {"namespace": "x"}, "spec": {"dnsPolicy": "None",
            "dnsConfig": {"searches": many}}});
        assert_eq!(
            pod_dns(&pod, &cluster(), &DnsConfig::default())
                .searches
                .len(),
            32
        );
        let long: Vec<String> = (0..10).map(|i| format!("{i}{}", "a".repeat(250))).collect();
        let pod = json!({"metadata": {"namespace": "x"}, "spec": {"dnsPolicy": "None",
            "dnsConfig": {"searches": long}}});
        let cut = pod_dns(&pod, &cluster(), &DnsConfig::default()).searches;
        assert!(
            cut.join(" ").len() <= MAX_SEARCH_CHARS && cut.len() == 8,
            "{}",
            cut.len()
        );
    }
}
