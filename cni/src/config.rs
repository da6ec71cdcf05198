//! The runtime's other half of a CNI request: the network configuration on stdin.
//!
//! Decoding is strict about shape and lenient about content the plugin does not use:
//! stdin that is not a JSON object, or a known key of the wrong type, is a CNI error 6;
//! unknown keys are ignored; known keys with invalid values are a CNI error 7, except an
//! unsupported `cniVersion`, which is error 1.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{DeserializeOwned, Deserializer, Error as _};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::api::{check_ports, codes, AttachmentKey, CniError, ContainerPort, PortProtocol};
use crate::result::ResultDoc;
use crate::version::Version;

/// Where fabricd listens unless the configuration says otherwise (`socket`).
pub const DEFAULT_SOCKET: &str = "/run/fabric/fabricd.sock";

/// How long to wait for fabricd unless the configuration says otherwise (`timeoutSeconds`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A validated network configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConf {
    /// `cniVersion`: the version requests and results are phrased in.
    pub cni_version: Version,
    /// `name`: the network's name.
    pub name: String,
    /// `type`: the plugin's binary name, as the runtime found it.
    pub plugin_type: Option<String>,
    /// `socket`: path of fabricd's unix socket.
    pub socket: PathBuf,
    /// `timeoutSeconds`: how long one call to fabricd may take.
    pub timeout: Duration,
    /// `runtimeConfig`: the capability arguments.
    pub runtime: RuntimeConfig,
    /// `prevResult`: the result of the previous plugin in a chain.
    pub prev_result: Option<ResultDoc>,
    /// `cni.dev/valid-attachments`: for GC, the attachments to keep.
    pub valid_attachments: Option<Vec<AttachmentKey>>,
}

/// The capability arguments fabric understands (`runtimeConfig`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// `ips`: addresses the pod asks for, CIDR prefixes dropped.
    pub ips: Vec<IpAddr>,
    /// `labels`: the pod's labels.
    pub labels: BTreeMap<String, String>,
    /// `containerPorts`: the ports the pod's containers declare (what NetworkPolicy named
    /// ports resolve against), validated as the API server validates them.
    pub container_ports: Vec<ContainerPort>,
}

impl NetConf {
    /// Decodes and validates the configuration the runtime wrote on stdin.
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        decode::<RawNetConf>(stdin)?.validate()
    }
}

/// The `cniVersion` on stdin for VERSION, which may come with an empty stdin (`Ok(None)`).
pub fn requested_version(stdin: &[u8]) -> Result<Option<String>, CniError> {
    if stdin.trim_ascii().is_empty() {
        return Ok(None);
    }
    Ok(decode::<VersionProbe>(stdin)?.cni_version)
}

/// Parses one `runtimeConfig.ips` entry: `10.244.1.5`, `10.244.1.5/24`, `fd00::5` or
/// `fd00::5/64`.
pub fn parse_ip(entry: &str) -> Result<IpAddr, CniError> {
    let (addr, prefix) = match entry.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (entry, None),
    };
    let addr: Option<IpAddr> = addr.parse().ok();
    let prefix_ok = |max: u8| {
        prefix.is_none_or(|p| {
            p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u8>().is_ok_and(|len| len <= max)
        })
    };
    addr.filter(|a| prefix_ok(if a.is_ipv4() { 32 } else { 128 }))
        .ok_or_else(|| {
            CniError::new(
                codes::INVALID_CONFIG,
                format!("runtimeConfig.ips entry {entry:?} is not an IP address"),
                "use \"10.244.1.5\" or \"10.244.1.5/24\" (and on a dual-stack network \"fd00:10:244:1::5\")",
            )
        })
}

/// Decodes a JSON object from stdin into `T`.
fn decode<T: DeserializeOwned>(stdin: &[u8]) -> Result<T, CniError> {
    // serde would also accept a JSON array as a struct, by position.
    if stdin.trim_ascii_start().first() != Some(&b'{') {
        return Err(CniError::new(
            codes::DECODE_FAILURE,
            "the network configuration on stdin is not a JSON object",
            "",
        ));
    }
    serde_json::from_slice(stdin).map_err(|e| {
        let msg = if e.is_data() {
            "the network configuration on stdin has a missing or mistyped field"
        } else {
            "the network configuration on stdin is not valid JSON"
        };
        CniError::new(codes::DECODE_FAILURE, msg, e.to_string())
    })
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(codes::INVALID_CONFIG, msg, "")
}

/// Just enough of a configuration to answer VERSION.
#[derive(Deserialize)]
struct VersionProbe {
    #[serde(rename = "cniVersion")]
    cni_version: Option<String>,
}

/// The configuration as decoded, before validation.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawNetConf {
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    socket: Option<String>,
    timeout_seconds: Option<u64>,
    runtime_config: Option<Strict<RawRuntimeConfig>>,
    prev_result: Option<Strict<ResultDoc>>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Strict<RawAttachmentKey>>>,
}

/// A `T` decoded from a JSON object only: derived structs also accept arrays, by position.
struct Strict<T>(T);

impl<'de, T: DeserializeOwned> Deserialize<'de> for Strict<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let object = Map::<String, Value>::deserialize(deserializer)?;
        T::deserialize(Value::Object(object))
            .map(Strict)
            .map_err(D::Error::custom)
    }
}

#[derive(Deserialize)]
struct RawRuntimeConfig {
    ips: Option<Vec<String>>,
    labels: Option<BTreeMap<String, String>>,
    #[serde(rename = "containerPorts")]
    container_ports: Option<Vec<Strict<RawContainerPort>>>,
}

/// One `containerPorts` entry as Kubernetes writes a `ContainerPort`; keys fabric does not
/// use (`hostPort`, `hostIP`) are ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawContainerPort {
    name: Option<String>,
    container_port: i64,
    protocol: Option<String>,
}

impl RawContainerPort {
    fn validate(self, i: usize) -> Result<ContainerPort, CniError> {
        let at = format!("runtimeConfig.containerPorts[{i}]");
        let container_port = u16::try_from(self.container_port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                CniError::new(
                    codes::INVALID_CONFIG,
                    format!("{at}.containerPort {} is out of range", self.container_port),
                    "a container port is 1 to 65535",
                )
            })?;
        let protocol = match self.protocol.as_deref() {
            None | Some("") => PortProtocol::default(),
            Some(p) => PortProtocol::parse(p).ok_or_else(|| {
                CniError::new(
                    codes::INVALID_CONFIG,
                    format!("{at}.protocol {p:?} is not supported"),
                    "the protocol is TCP (the default), UDP or SCTP, in capitals",
                )
            })?,
        };
        Ok(ContainerPort {
            // As in the API, an empty name is no name.
            name: self.name.filter(|n| !n.is_empty()),
            container_port,
            protocol,
        })
    }
}

#[derive(Deserialize)]
struct RawAttachmentKey {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

impl RawNetConf {
    fn validate(self) -> Result<NetConf, CniError> {
        let version = self
            .cni_version
            .ok_or_else(|| invalid("cniVersion is missing from the network configuration"))?;
        let cni_version = Version::parse(&version)?;
        let name = self
            .name
            .filter(|n| !n.is_empty())
            .ok_or_else(|| invalid("name is missing from the network configuration"))?;
        let socket = match self.socket {
            Some(s) if s.is_empty() => return Err(invalid("socket must not be empty")),
            Some(s) => PathBuf::from(s),
            None => PathBuf::from(DEFAULT_SOCKET),
        };
        let timeout = match self.timeout_seconds {
            Some(0) => return Err(invalid("timeoutSeconds must be at least 1")),
            Some(secs) => Duration::from_secs(secs),
            None => DEFAULT_TIMEOUT,
        };
        let runtime = self
            .runtime_config
            .map(|Strict(raw)| raw.validate())
            .transpose()?
            .unwrap_or_default();
        Ok(NetConf {
            cni_version,
            name,
            plugin_type: self.plugin_type,
            socket,
            timeout,
            runtime,
            prev_result: self.prev_result.map(|Strict(prev)| prev),
            valid_attachments: self
                .valid_attachments
                .map(|keys| keys.into_iter().map(|Strict(key)| key.into()).collect()),
        })
    }
}

impl RawRuntimeConfig {
    fn validate(self) -> Result<RuntimeConfig, CniError> {
        let ips = self.ips.unwrap_or_default();
        Ok(RuntimeConfig {
            ips: ips
                .iter()
                .map(|ip| parse_ip(ip))
                .collect::<Result<_, _>>()?,
            labels: self.labels.unwrap_or_default(),
            container_ports: self.container_ports.map_or(Ok(Vec::new()), |ports| {
                let ports = ports
                    .into_iter()
                    .enumerate()
                    .map(|(i, Strict(raw))| raw.validate(i))
                    .collect::<Result<Vec<_>, _>>()?;
                check_ports(&ports).map(|()| ports)
            })?,
        })
    }
}

impl From<RawAttachmentKey> for AttachmentKey {
    fn from(raw: RawAttachmentKey) -> Self {
        Self {
            container_id: raw.container_id,
            ifname: raw.ifname,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::net::Ipv4Addr;

    fn parse(value: serde_json::Value) -> Result<NetConf, CniError> {
        NetConf::parse(value.to_string().as_bytes())
    }

    fn code(value: serde_json::Value) -> u32 {
        parse(value).unwrap_err().code
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let conf = parse(json!({"cniVersion": "1.0.0", "name": "fabric"})).unwrap();
        assert_eq!(conf.cni_version, Version::V1_0_0);
        assert_eq!(conf.name, "fabric");
        assert_eq!(conf.plugin_type, None);
        assert_eq!(conf.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(conf.timeout, DEFAULT_TIMEOUT);
        assert_eq!(conf.runtime, RuntimeConfig::default());
        assert_eq!(conf.prev_result, None);
        assert_eq!(conf.valid_attachments, None);
    }

    #[test]
    fn full_config() {
        let conf = parse(json!({
            "cniVersion": "1.1.0",
            "name": "fabric",
            "type": "fabric-cni",
            "socket": "/tmp/f.sock",
            "timeoutSeconds": 5,
            "capabilities": {"ips": true},
            "runtimeConfig": {
                "ips": ["10.244.1.5/24", "10.244.1.6"],
                "labels": {"app": "web"},
                "portMappings": [],
            },
            "prevResult": {"interfaces": [{"name": "lo"}]},
            "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}],
        }))
        .unwrap();
        assert_eq!(conf.plugin_type.as_deref(), Some("fabric-cni"));
        assert_eq!(conf.socket, PathBuf::from("/tmp/f.sock"));
        assert_eq!(conf.timeout, Duration::from_secs(5));
        assert_eq!(
            conf.runtime.ips,
            [
                IpAddr::V4(Ipv4Addr::new(10, 244, 1, 5)),
                IpAddr::V4(Ipv4Addr::new(10, 244, 1, 6))
            ]
        );
        assert_eq!(conf.runtime.labels["app"], "web");
        assert_eq!(conf.prev_result.unwrap().interfaces.len(), 1);
        assert_eq!(
            conf.valid_attachments.unwrap(),
            [AttachmentKey {
                container_id: "c1".into(),
                ifname: "eth0".into()
            }]
        );
    }

    #[test]
    fn undecodable_stdin_is_code_6() {
        for bad in [
            &b""[..],
            b"   ",
            b"not json",
            b"{\"cniVersion\": \"1.0.0\"",
            b"[\"1.0.0\", \"fabric\"]",
            b"42",
            b"null",
            b"{} trailing",
        ] {
            let err = NetConf::parse(bad).unwrap_err();
            assert_eq!(
                err.code,
                codes::DECODE_FAILURE,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn wrong_types_are_code_6() {
        for bad in [
            json!({"cniVersion": 1, "name": "n"}),
            json!({"cniVersion": "1.0.0", "name": ["n"]}),
            json!({"cniVersion": "1.0.0", "name": "n", "timeoutSeconds": "5"}),
            json!({"cniVersion": "1.0.0", "name": "n", "timeoutSeconds": -1}),
            json!({"cniVersion": "1.0.0", "name": "n", "runtimeConfig": {"ips": "10.0.0.1"}}),
            json!({"cniVersion": "1.0.0", "name": "n", "runtimeConfig": {"ips": [1]}}),
            json!({"cniVersion": "1.0.0", "name": "n", "runtimeConfig": {"labels": {"a": 1}}}),
            json!({"cniVersion": "1.0.0", "name": "n", "prevResult": []}),
            json!({"cniVersion": "1.0.0", "name": "n", "prevResult": {"ips": [1]}}),
            json!({"cniVersion": "1.0.0", "name": "n", "runtimeConfig": [["10.0.0.1"]]}),
            json!({"cniVersion": "1.0.0", "name": "n", "cni.dev/valid-attachments": [{}]}),
            json!({"cniVersion": "1.0.0", "name": "n", "cni.dev/valid-attachments": [["c", "e"]]}),
        ] {
            assert_eq!(code(bad.clone()), codes::DECODE_FAILURE, "{bad}");
        }
    }

    #[test]
    fn invalid_values_are_code_7() {
        for bad in [
            json!({"name": "n"}),
            json!({"cniVersion": "1.0.0"}),
            json!({"cniVersion": "1.0.0", "name": ""}),
            json!({"cniVersion": "1.0.0", "name": "n", "socket": ""}),
            json!({"cniVersion": "1.0.0", "name": "n", "timeoutSeconds": 0}),
        ] {
            assert_eq!(code(bad.clone()), codes::INVALID_CONFIG, "{bad}");
        }
    }

    #[test]
    fn unsupported_version_is_code_1() {
        for v in ["0.1.0", "0.3.1", "9.9.9", "garbage", ""] {
            assert_eq!(
                code(json!({"cniVersion": v, "name": "n"})),
                codes::INCOMPATIBLE_VERSION
            );
        }
    }

    #[test]
    fn ips_accept_addresses_and_cidrs_only() {
        let v4 = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(parse_ip("10.0.0.1"), Ok(v4));
        assert_eq!(parse_ip("10.0.0.1/32"), Ok(v4));
        assert_eq!(parse_ip("10.0.0.1/0"), Ok(v4));
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(parse_ip("fd00::1"), Ok(v6));
        assert_eq!(parse_ip("fd00::1/64"), Ok(v6));
        for bad in [
            "",
            "10.0.0",
            "10.0.0.256",
            "10.0.0.1/33",
            "10.0.0.1/",
            "10.0.0.1/+8",
            "10.0.0.1/8/8",
            "fd00::1/129",
            "fd00::zz",
            "host",
        ] {
            let err = parse_ip(bad).unwrap_err();
            assert_eq!(err.code, codes::INVALID_CONFIG, "{bad:?}");
        }
        let bad = json!({"cniVersion": "1.0.0", "name": "n", "runtimeConfig": {"ips": ["10.0.0.1", "x"]}});
        assert_eq!(code(bad), codes::INVALID_CONFIG);
    }

    fn with_ports(ports: serde_json::Value) -> Result<NetConf, CniError> {
        parse(
            json!({"cniVersion": "1.1.0", "name": "n", "runtimeConfig": {"containerPorts": ports}}),
        )
    }

    #[test]
    fn container_ports_mirror_kubernetes() {
        let conf = with_ports(json!([
            {"name": "serve-80-tcp", "containerPort": 80, "protocol": "TCP"},
            {"containerPort": 81},
            {"name": "dns", "containerPort": 53, "protocol": "UDP", "hostPort": 5353},
            {"name": "", "containerPort": 9, "protocol": "SCTP"},
            {"name": "x", "containerPort": 65535, "protocol": ""},
        ]))
        .unwrap();
        let port = |name: Option<&str>, container_port, protocol| ContainerPort {
            name: name.map(str::to_owned),
            container_port,
            protocol,
        };
        assert_eq!(
            conf.runtime.container_ports,
            [
                port(Some("serve-80-tcp"), 80, PortProtocol::Tcp),
                port(None, 81, PortProtocol::Tcp),
                port(Some("dns"), 53, PortProtocol::Udp),
                port(None, 9, PortProtocol::Sctp),
                port(Some("x"), 65535, PortProtocol::Tcp),
            ]
        );
        assert!(with_ports(json!([]))
            .unwrap()
            .runtime
            .container_ports
            .is_empty());
        assert!(with_ports(json!(null))
            .unwrap()
            .runtime
            .container_ports
            .is_empty());
    }

    #[test]
    fn invalid_container_ports_are_refused_with_the_entry_named() {
        for (ports, says) in [
            (
                json!([{"containerPort": 0}]),
                "containerPorts[0].containerPort 0 is out of range",
            ),
            (
                json!([{"containerPort": 80}, {"containerPort": 65536}]),
                "containerPorts[1].containerPort 65536",
            ),
            (
                json!([{"containerPort": -1}]),
                "containerPort -1 is out of range",
            ),
            (
                json!([{"containerPort": 80, "protocol": "ICMP"}]),
                "protocol \"ICMP\" is not supported",
            ),
            (
                json!([{"containerPort": 80, "protocol": "tcp"}]),
                "protocol \"tcp\"",
            ),
            (
                json!([{"name": "Serve", "containerPort": 80}]),
                "name \"Serve\" is not a valid port name",
            ),
            (
                json!([{"name": "serve-80-tcp-long", "containerPort": 80}]),
                "not a valid port name",
            ),
            (
                json!([{"name": "8080", "containerPort": 80}]),
                "not a valid port name",
            ),
            (
                json!([{"name": "-web", "containerPort": 80}]),
                "not a valid port name",
            ),
            (
                json!([{"name": "web-", "containerPort": 80}]),
                "not a valid port name",
            ),
            (
                json!([{"name": "we--b", "containerPort": 80}]),
                "not a valid port name",
            ),
            (
                json!([{"name": "we_b", "containerPort": 80}]),
                "not a valid port name",
            ),
            (
                json!([{"name": "web", "containerPort": 80}, {"name": "web", "containerPort": 81}]),
                "containerPorts[1].name \"web\" is declared twice",
            ),
        ] {
            let err = with_ports(ports.clone()).unwrap_err();
            assert_eq!(err.code, codes::INVALID_CONFIG, "{ports}");
            assert!(err.msg.contains(says), "{ports}: {err}");
        }
        for wrong_type in [
            json!({"containerPort": 80}),
            json!([80]),
            json!([{"name": "web"}]),
            json!([{"containerPort": "80"}]),
            json!([{"containerPort": 80, "name": 1}]),
            json!([{"containerPort": 80, "protocol": 6}]),
            json!([[80, "TCP"]]),
        ] {
            let err = with_ports(wrong_type.clone()).unwrap_err();
            assert_eq!(err.code, codes::DECODE_FAILURE, "{wrong_type}");
        }
    }

    #[test]
    fn version_probe_tolerates_empty_stdin() {
        assert_eq!(requested_version(b""), Ok(None));
        assert_eq!(requested_version(b"{}"), Ok(None));
        assert_eq!(
            requested_version(br#"{"cniVersion": "0.4.0"}"#),
            Ok(Some("0.4.0".into()))
        );
        assert_eq!(
            requested_version(b"{nope").unwrap_err().code,
            codes::DECODE_FAILURE
        );
    }
}
