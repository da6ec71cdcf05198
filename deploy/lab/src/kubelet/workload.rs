//! What runs as each container, since no container runtime runs here: a CoreDNS image runs the
//! pinned `coredns` binary (its args, with paths under a ConfigMap mount pointed at the files
//! the role projected); any other image with ports runs the lab's stand-in server (`fabric-lab
//! serve --http`: each TCP containerPort answers an HTTP GET with `200` and the pod's name, each
//! UDP one echoes); a container without ports runs nothing. The plan is pure; starting runs it
//! in the pod's namespace as a tracked [`Daemon`]; readiness probes run from the node.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use super::pod::{Container, Probe};
use crate::kube::dns;
use crate::process::{Cmd, Daemon};

/// What a container runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The stand-in server on these ports.
    Porter {
        /// TCP ports (HTTP).
        tcp: Vec<u16>,
        /// UDP ports (echo).
        udp: Vec<u16>,
    },
    /// The pinned CoreDNS with the container's args.
    CoreDns,
    /// Nothing (no ports to serve).
    Idle,
}

/// The plan for `container`.
pub fn plan(container: &Container) -> Plan {
    if dns::is_coredns_image(&container.image) {
        return Plan::CoreDns;
    }
    let ports = |proto: &str| -> Vec<u16> {
        let mut p: Vec<u16> = container
            .ports
            .iter()
            .filter(|p| p.protocol.eq_ignore_ascii_case(proto))
            .map(|p| p.port)
            .collect();
        p.sort_unstable();
        p.dedup();
        p
    };
    let (tcp, udp) = (ports("TCP"), ports("UDP"));
    if tcp.is_empty() && udp.is_empty() {
        Plan::Idle
    } else {
        Plan::Porter { tcp, udp }
    }
}

/// `fabric-lab` arguments of the stand-in server for pod `pod_name`.
pub fn porter_args(tcp: &[u16], udp: &[u16], pod_name: &str) -> Vec<String> {
    let mut args = vec![
        "serve".to_string(),
        "--http".to_string(),
        "--body".to_string(),
        pod_name.to_string(),
    ];
    for p in tcp {
        args.extend(["--tcp".to_string(), p.to_string()]);
    }
    for p in udp {
        args.extend(["--udp".to_string(), p.to_string()]);
    }
    args
}

/// `args` with every path under one of `mounts` (volume, mount path) moved to where that
/// volume was projected (`volume_dir(volume)`), as the process sees a mounted volume.
pub fn rewrite_mount_paths(
    args: &[String],
    mounts: &[(String, String)],
    volume_dir: impl Fn(&str) -> PathBuf,
) -> Vec<String> {
    args.iter()
        .map(|arg| {
            for (volume, mount) in mounts {
                let mount = mount.trim_end_matches('/');
                if arg == mount {
                    return volume_dir(volume).display().to_string();
                }
                if let Some(rest) = arg.strip_prefix(mount).and_then(|r| r.strip_prefix('/')) {
                    return volume_dir(volume).join(rest).display().to_string();
                }
            }
            arg.clone()
        })
        .collect()
}

/// The files a ConfigMap volume holds: `items` (key → path), or every key under its own name;
/// keys missing from `data` are skipped.
pub fn config_map_files(config_map: &Value, items: &[(String, String)]) -> Vec<(String, String)> {
    let data = &config_map["data"];
    let pairs: Vec<(String, String)> = if items.is_empty() {
        data.as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| (k.clone(), k.clone()))
            .collect()
    } else {
        items.to_vec()
    };
    pairs
        .into_iter()
        .filter(|(_, path)| !path.split('/').any(|c| c == ".."))
        .filter_map(|(key, path)| Some((path, data[&key].as_str()?.to_string())))
        .collect()
}

/// The `-conf FILE` argument of a CoreDNS command line.
pub fn corefile_arg(args: &[String]) -> Option<&str> {
    let at = args.iter().position(|a| a == "-conf" || a == "--conf")?;
    args.get(at + 1).map(String::as_str)
}

/// Starts `argv` inside `netns`, in its own session, logging to `log`.
pub fn start(netns: &str, argv: &[String], log: &Path) -> Result<Daemon> {
    let (program, args) = argv.split_first().context("empty command")?;
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Cmd::in_netns(netns, program)
        .args(args)
        .spawn_daemon(log)
        .with_context(|| format!("starting {program} in {netns}"))
}

/// Runs `probe` against the pod at `ip` once: a TCP connection, or for HTTP a 2xx/3xx answer.
pub fn probe_once(ip: IpAddr, probe: &Probe, timeout: Duration) -> bool {
    let (port, path) = match probe {
        Probe::Http { port, path } => (*port, Some(path.as_str())),
        Probe::Tcp { port } => (*port, None),
    };
    let Ok(mut conn) = TcpStream::connect_timeout(&SocketAddr::new(ip, port), timeout) else {
        return false;
    };
    let Some(path) = path else {
        return true;
    };
    let _ = conn.set_read_timeout(Some(timeout));
    let _ = conn.set_write_timeout(Some(timeout));
    let host = SocketAddr::new(ip, port);
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: kube-probe/fabric-lab\r\nConnection: close\r\n\r\n");
    if conn.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 64];
    let n = conn.read(&mut head).unwrap_or(0);
    http_status(&head[..n]).is_some_and(|s| (200..400).contains(&s))
}

/// The status code of an HTTP response's first line.
pub fn http_status(head: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(head).ok()?;
    let mut words = text.lines().next()?.split_whitespace();
    words.next()?.starts_with("HTTP/").then_some(())?;
    words.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::kubelet::pod::Port;

    fn container(image: &str, ports: &[(u16, &str)]) -> Container {
        Container {
            name: "c".into(),
            image: image.into(),
            ports: ports
                .iter()
                .map(|(port, protocol)| Port {
                    name: None,
                    port: *port,
                    protocol: protocol.to_string(),
                    host_port: None,
                    host_ip: None,
                })
                .collect(),
            args: Vec::new(),
            mounts: Vec::new(),
            readiness: None,
        }
    }

    #[test]
    fn plans() {
        assert_eq!(
            plan(&container(
                "nginx",
                &[(80, "TCP"), (53, "UDP"), (80, "TCP"), (9, "SCTP")]
            )),
            Plan::Porter {
                tcp: vec![80],
                udp: vec![53]
            }
        );
        assert_eq!(plan(&container("curlimages/curl", &[])), Plan::Idle);
        assert_eq!(
            plan(&container(
                "registry.k8s.io/coredns/coredns:v1.14.7",
                &[(53, "UDP")]
            )),
            Plan::CoreDns
        );
        assert_eq!(
            porter_args(&[80, 8080], &[53], "web-1").join(" "),
            "serve --http --body web-1 --tcp 80 --tcp 8080 --udp 53"
        );
    }

    #[test]
    fn mounted_paths_move_to_the_projected_volume() {
        let args: Vec<String> = [
            "-conf",
            "/etc/coredns/Corefile",
            "/etc/coredns",
            "/etc/corednsx",
        ]
        .map(String::from)
        .to_vec();
        let mounts = vec![("config-volume".to_string(), "/etc/coredns/".to_string())];
        let out = rewrite_mount_paths(&args, &mounts, |v| PathBuf::from("/p/volumes").join(v));
        assert_eq!(
            out,
            [
                "-conf",
                "/p/volumes/config-volume/Corefile",
                "/p/volumes/config-volume",
                "/etc/corednsx"
            ]
        );
        assert_eq!(
            corefile_arg(&out),
            Some("/p/volumes/config-volume/Corefile")
        );
        assert_eq!(corefile_arg(&[]), None);
    }

    #[test]
    fn config_map_projection() {
        let cm = json!({"data": {"Corefile": ".:53 {}", "other": "x"}});
        assert_eq!(
            config_map_files(&cm, &[("Corefile".into(), "Corefile".into())]),
            [("Corefile".to_string(), ".:53 {}".to_string())]
        );
        assert_eq!(config_map_files(&cm, &[]).len(), 2);
        assert!(config_map_files(&cm, &[("other".into(), "../x".into())]).is_empty());
        assert!(config_map_files(&cm, &[("missing".into(), "m".into())]).is_empty());
    }

    #[test]
    fn http_status_lines() {
        assert_eq!(http_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            http_status(b"HTTP/1.0 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(http_status(b"SSH-2.0\r\n"), None);
        assert_eq!(http_status(b""), None);
    }
}
