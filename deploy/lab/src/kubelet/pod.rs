//! What the kubelet role reads from a Pod object: identity, whether it is being deleted or
//! belongs to the lab's own attach path, its containers (image, ports, args, mounts, readiness
//! probe), its ConfigMap volumes, and the `portMappings` capability containerd derives from
//! `hostPort`s. Pure functions over the object's JSON.

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::kube::objects::{ATTACHED_BY_ANNOTATION, ATTACHED_BY_LAB};

/// A declared container port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// `name`, if any.
    pub name: Option<String>,
    /// `containerPort`.
    pub port: u16,
    /// `TCP` (default), `UDP` or `SCTP`.
    pub protocol: String,
    /// `hostPort`, if any.
    pub host_port: Option<u16>,
    /// `hostIP`, if any.
    pub host_ip: Option<String>,
}

/// A readiness probe the kubelet role can run from the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// `httpGet`: a 2xx/3xx answer to `GET path` on the pod's port.
    Http {
        /// Port number.
        port: u16,
        /// Request path.
        path: String,
    },
    /// `tcpSocket`: a connection to the pod's port.
    Tcp {
        /// Port number.
        port: u16,
    },
}

/// One container of the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// `name`.
    pub name: String,
    /// `image`.
    pub image: String,
    /// `ports`.
    pub ports: Vec<Port>,
    /// `command` then `args`, as given (the image's entrypoint is unknown here).
    pub args: Vec<String>,
    /// `volumeMounts`: (volume name, mount path).
    pub mounts: Vec<(String, String)>,
    /// `readinessProbe`, when it is one the role can run (httpGet, tcpSocket).
    pub readiness: Option<Probe>,
}

/// A ConfigMap volume: the map's name and the (key, path) items to project (all keys when
/// empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigMapVolume {
    /// The volume's name.
    pub volume: String,
    /// The ConfigMap.
    pub config_map: String,
    /// `items`.
    pub items: Vec<(String, String)>,
}

/// A Pod object as the kubelet role sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `spec.serviceAccountName` (`default` if unset).
    pub service_account: String,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// Attached by [`crate::Lab::add_pod`]: not the role's to run.
    pub lab_attached: bool,
    /// `spec.hostNetwork`.
    pub host_network: bool,
    /// `status.phase` is `Succeeded` or `Failed`.
    pub terminal: bool,
    /// `spec.containers`.
    pub containers: Vec<Container>,
    /// `spec.volumes` backed by ConfigMaps.
    pub config_maps: Vec<ConfigMapVolume>,
}

impl PodInfo {
    /// Reads a Pod object.
    pub fn from_object(pod: &Value) -> Result<PodInfo> {
        let meta = &pod["metadata"];
        let text = |v: &Value| v.as_str().map(str::to_string);
        let uid = text(&meta["uid"]).context("Pod without metadata.uid")?;
        let name = text(&meta["name"]).context("Pod without metadata.name")?;
        let spec = &pod["spec"];
        let containers = spec["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(container)
            .collect();
        let config_maps = spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| {
                let cm = v.get("configMap")?;
                Some(ConfigMapVolume {
                    volume: text(&v["name"])?,
                    config_map: text(&cm["name"])?,
                    items: cm["items"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|i| Some((text(&i["key"])?, text(&i["path"])?)))
                        .collect(),
                })
            })
            .collect();
        Ok(PodInfo {
            uid,
            namespace: text(&meta["namespace"]).unwrap_or_else(|| "default".into()),
            name,
            service_account: text(&spec["serviceAccountName"]).unwrap_or_else(|| "default".into()),
            deleting: !meta["deletionTimestamp"].is_null(),
            lab_attached: meta["annotations"][ATTACHED_BY_ANNOTATION] == ATTACHED_BY_LAB,
            host_network: spec["hostNetwork"].as_bool().unwrap_or(false),
            terminal: matches!(
                pod["status"]["phase"].as_str(),
                Some("Succeeded" | "Failed")
            ),
            containers,
            config_maps,
        })
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Should the kubelet role run this pod (now)?
    pub fn wanted(&self) -> bool {
        !self.deleting && !self.lab_attached && !self.terminal
    }

    /// The `portMappings` capability argument containerd passes for the pod's `hostPort`s
    /// (`None` without any).
    pub fn port_mappings(&self) -> Option<Value> {
        let mappings: Vec<Value> = self
            .containers
            .iter()
            .flat_map(|c| &c.ports)
            .filter_map(|p| {
                let host_port = p.host_port.filter(|&h| h > 0)?;
                Some(json!({
                    "hostPort": host_port,
                    "containerPort": p.port,
                    "protocol": p.protocol.to_ascii_lowercase(),
                    "hostIP": p.host_ip.clone().unwrap_or_default(),
                }))
            })
            .collect();
        (!mappings.is_empty()).then_some(Value::Array(mappings))
    }
}

fn container(c: &Value) -> Container {
    let text = |v: &Value| v.as_str().map(str::to_string);
    let ports: Vec<Port> = c["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some(Port {
                name: text(&p["name"]),
                port: u16::try_from(p["containerPort"].as_u64()?).ok()?,
                protocol: text(&p["protocol"]).unwrap_or_else(|| "TCP".into()),
                host_port: p["hostPort"].as_u64().and_then(|h| u16::try_from(h).ok()),
                host_ip: text(&p["hostIP"]),
            })
        })
        .collect();
    let mut args = strings(&c["command"]);
    args.extend(strings(&c["args"]));
    let probe = &c["readinessProbe"];
    let resolve = |port: &Value| -> Option<u16> {
        match port {
            Value::Number(n) => u16::try_from(n.as_u64()?).ok(),
            Value::String(s) => s.parse().ok().or_else(|| {
                ports
                    .iter()
                    .find(|p| p.name.as_deref() == Some(s.as_str()))
                    .map(|p| p.port)
            }),
            _ => None,
        }
    };
    let readiness = if let Some(http) = probe.get("httpGet") {
        resolve(&http["port"]).map(|port| Probe::Http {
            port,
            path: text(&http["path"]).unwrap_or_else(|| "/".into()),
        })
    } else if let Some(tcp) = probe.get("tcpSocket") {
        resolve(&tcp["port"]).map(|port| Probe::Tcp { port })
    } else {
        None
    };
    Container {
        name: text(&c["name"]).unwrap_or_default(),
        image: text(&c["image"]).unwrap_or_default(),
        mounts: c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| Some((text(&m["name"])?, text(&m["mountPath"])?)))
            .collect(),
        ports,
        args,
        readiness,
    }
}

/// The strings of a JSON array (`command`, `args`, `dnsConfig.searches`, ...); nothing for
/// anything else.
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nginx() -> Value {
        json!({
            "metadata": {"name": "web-1", "namespace": "default", "uid": "u1"},
            "spec": {
                "nodeName": "node1",
                "containers": [{
                    "name": "nginx", "image": "nginx:1.27",
                    "ports": [{"containerPort": 80}, {"containerPort": 53, "protocol": "UDP",
                               "hostPort": 5353, "name": "dns"}],
                    "readinessProbe": {"httpGet": {"port": 80, "path": "/healthz"}}
                }]
            },
            "status": {"phase": "Pending"}
        })
    }

    #[test]
    fn reads_what_the_role_needs() {
        let p = PodInfo::from_object(&nginx()).unwrap();
        assert_eq!(p.key(), "default/web-1");
        assert_eq!(p.service_account, "default");
        assert!(p.wanted());
        let c = &p.containers[0];
        assert_eq!(c.ports[0].protocol, "TCP");
        assert_eq!(c.ports[1].host_port, Some(5353));
        assert_eq!(
            c.readiness,
            Some(Probe::Http {
                port: 80,
                path: "/healthz".into()
            })
        );
        assert_eq!(
            p.port_mappings().unwrap(),
            json!([{"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": ""}])
        );
        assert!(PodInfo::from_object(&json!({"metadata": {"name": "x"}})).is_err());
    }

    #[test]
    fn deleting_terminal_and_lab_pods_are_not_wanted() {
        let mut o = nginx();
        o["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        assert!(!PodInfo::from_object(&o).unwrap().wanted());
        let mut o = nginx();
        o["status"]["phase"] = json!("Succeeded");
        assert!(!PodInfo::from_object(&o).unwrap().wanted());
        let mut o = nginx();
        o["metadata"]["annotations"] = json!({ATTACHED_BY_ANNOTATION: ATTACHED_BY_LAB});
        let p = PodInfo::from_object(&o).unwrap();
        assert!(p.lab_attached && !p.wanted());
    }

    #[test]
    fn coredns_mounts_probes_and_config_maps() {
        let o = json!({
            "metadata": {"name": "coredns-x", "namespace": "kube-system", "uid": "u2"},
            "spec": {
                "serviceAccountName": "coredns",
                "containers": [{
                    "name": "coredns", "image": "registry.k8s.io/coredns/coredns:v1.14.7",
                    "args": ["-conf", "/etc/coredns/Corefile"],
                    "volumeMounts": [{"name": "config-volume", "mountPath": "/etc/coredns"}],
                    "ports": [{"containerPort": 8181, "name": "ready"}],
                    "readinessProbe": {"httpGet": {"port": "ready", "path": "/ready"}}
                }],
                "volumes": [
                    {"name": "config-volume", "configMap": {"name": "coredns",
                        "items": [{"key": "Corefile", "path": "Corefile"}]}},
                    {"name": "token", "projected": {}}
                ]
            }
        });
        let p = PodInfo::from_object(&o).unwrap();
        assert_eq!(p.service_account, "coredns");
        let c = &p.containers[0];
        assert_eq!(c.args, ["-conf", "/etc/coredns/Corefile"]);
        assert_eq!(
            c.mounts,
            [("config-volume".to_string(), "/etc/coredns".to_string())]
        );
        assert_eq!(
            c.readiness,
            Some(Probe::Http {
                port: 8181,
                path: "/ready".into()
            })
        );
        assert_eq!(
            p.config_maps,
            [ConfigMapVolume {
                volume: "config-volume".into(),
                config_map: "coredns".into(),
                items: vec![("Corefile".into(), "Corefile".into())],
            }]
        );
        assert_eq!(p.port_mappings(), None);
    }
}
