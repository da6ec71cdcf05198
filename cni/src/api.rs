//! The local API between fabricd and its clients (the CNI plugin, `fabricctl`).
//!
//! One request per connection on a unix stream socket: the client writes one JSON
//! [`Request`] followed by a newline, the daemon answers with one JSON [`Response`]
//! and closes. Blocking std I/O only, so the plugin stays small.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A request from a client to fabricd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// Attach a container: veth, address, routes.
    Add(Attachment),
    /// Detach a container; succeeds for unknown containers.
    Del(Attachment),
    /// Verify that a container's attachment is still as ADD left it.
    Check(Attachment),
    /// Is the daemon ready to serve ADD?
    Status,
    /// Remove every attachment not in `valid`.
    Gc {
        /// The attachments the runtime still knows about.
        valid: Vec<AttachmentKey>,
    },
    /// The data path's state: peers, handshakes, bytes, drops (for `fabricctl peers`).
    Dataplane,
    /// The policy view's state: whether NetworkPolicy is enforced, the datastore revision the
    /// view reflects, what it holds (for `fabricctl policy sync`).
    Policy,
    /// A revision of the datastore such that a view that has reached it enforces everything
    /// the datastore holds now (`fabricctl policy sync` then waits for the view to reach it).
    #[serde(rename = "policy-checkpoint")]
    PolicyCheckpoint,
}

/// What identifies one attachment: the runtime's container id and interface name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AttachmentKey {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
}

/// One container attachment as the runtime described it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// `CNI_CONTAINERID` and `CNI_IFNAME`.
    #[serde(flatten)]
    pub key: AttachmentKey,
    /// `CNI_NETNS`: path of the container's network namespace (optional for DEL).
    pub netns: Option<String>,
    /// Addresses requested through the `ips` capability (runtimeConfig).
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    /// Pod labels passed through the `labels` capability (runtimeConfig).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The pod's declared container ports, passed through the `containerPorts` capability
    /// (runtimeConfig); absent from older clients.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    /// `K8S_POD_NAMESPACE` from `CNI_ARGS`.
    #[serde(default)]
    pub pod_namespace: Option<String>,
    /// `K8S_POD_NAME` from `CNI_ARGS`.
    #[serde(default)]
    pub pod_name: Option<String>,
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Response {
    /// Success; ADD carries the attachment's result.
    Ok {
        /// The result of ADD (CNI 1.x shape); `None` for the other verbs.
        result: Option<AddResult>,
    },
    /// Failure, already phrased as a CNI error.
    Error(CniError),
    /// The answer to [`Request::Dataplane`], as the backend reports it.
    Dataplane {
        /// Backend-specific JSON (for WireGuard: peers and drop counters).
        report: serde_json::Value,
    },
    /// The answer to [`Request::Policy`].
    Policy(PolicyStatus),
    /// The answer to [`Request::PolicyCheckpoint`].
    Checkpoint {
        /// The revision to wait for.
        revision: i64,
    },
}

/// The state of fabricd's policy view (the answer to [`Request::Policy`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatus {
    /// Whether fabricd enforces NetworkPolicy (`--network-policy`); everything else is zero
    /// when it does not.
    pub enforcing: bool,
    /// The datastore revision the view reflects (etcd's, or the Kubernetes source's own
    /// sequence): every change to pods, namespaces and policies up to it is in the view.
    pub revision: i64,
    /// NetworkPolicies in the view.
    pub policies: usize,
    /// Pods in the view.
    pub pods: usize,
    /// Namespaces in the view (labeled ones and those of its pods).
    pub namespaces: usize,
    /// Which netfilter front end carries the queue rules (`nft` or `xtables`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_rules: Option<String>,
}

/// A port a pod's container declares, in the shape of Kubernetes' `ContainerPort` (the
/// `containerPorts` capability): what NetworkPolicy named ports resolve against.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    /// The port's name, an IANA service name such as `serve-80-tcp` (see [`check_port_name`]);
    /// policy can name only named ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The port number (1..=65535).
    pub container_port: u16,
    /// The port's protocol.
    #[serde(default)]
    pub protocol: PortProtocol,
}

/// The protocol of a [`ContainerPort`].
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum PortProtocol {
    /// TCP, the default.
    #[default]
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl PortProtocol {
    /// The API spelling: `TCP`, `UDP`, `SCTP`.
    pub fn as_str(self) -> &'static str {
        match self {
            PortProtocol::Tcp => "TCP",
            PortProtocol::Udp => "UDP",
            PortProtocol::Sctp => "SCTP",
        }
    }

    /// Parses the API spelling; like the API server, case-sensitive.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "TCP" => Some(PortProtocol::Tcp),
            "UDP" => Some(PortProtocol::Udp),
            "SCTP" => Some(PortProtocol::Sctp),
            _ => None,
        }
    }
}

impl std::fmt::Display for PortProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for ContainerPort {
    /// `serve-80-tcp:80/TCP`, or `80/TCP` for an unnamed port.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(name) = &self.name {
            write!(f, "{name}:")?;
        }
        write!(f, "{}/{}", self.container_port, self.protocol)
    }
}

/// Checks a container port name the way the API server does (an `IANA_SVC_NAME`): at most 15
/// characters of `a-z`, `0-9` and `-`, at least one letter, no leading, trailing or doubled
/// `-`. The error says what is wrong.
pub fn check_port_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 15 {
        return Err("must be 1 to 15 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("must contain only lowercase letters (a-z), digits (0-9) and hyphens (-)");
    }
    if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err("must contain at least one letter (a-z)");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("must not begin or end with a hyphen");
    }
    if name.contains("--") {
        return Err("must not contain consecutive hyphens");
    }
    Ok(())
}

/// Checks a pod's declared ports as the API server checks a pod's container ports: port
/// numbers 1..=65535, names valid ([`check_port_name`]) and unique. The error (code 7, invalid
/// network config) names the offending `runtimeConfig.containerPorts` entry.
pub fn check_ports(ports: &[ContainerPort]) -> Result<(), CniError> {
    let mut names = std::collections::BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        let at = format!("runtimeConfig.containerPorts[{i}]");
        if port.container_port == 0 {
            return Err(CniError::new(
                codes::INVALID_CONFIG,
                format!("{at}.containerPort 0 is out of range"),
                "a container port is 1 to 65535",
            ));
        }
        let Some(name) = &port.name else { continue };
        if let Err(why) = check_port_name(name) {
            return Err(CniError::new(
                codes::INVALID_CONFIG,
                format!("{at}.name {name:?} is not a valid port name"),
                format!("a port name is an IANA service name (e.g. serve-80-tcp): it {why}"),
            ));
        }
        if !names.insert(name.as_str()) {
            return Err(CniError::new(
                codes::INVALID_CONFIG,
                format!("{at}.name {name:?} is declared twice"),
                "port names must be unique within a pod",
            ));
        }
    }
    Ok(())
}

/// The result of ADD, in the CNI 1.x result shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddResult {
    /// Host and container interfaces.
    pub interfaces: Vec<Interface>,
    /// Assigned addresses.
    pub ips: Vec<IpConfig>,
    /// Routes inside the container.
    pub routes: Vec<Route>,
}

/// An interface in a CNI result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// MAC address, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// Network namespace path for container-side interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// An address in a CNI result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// CIDR notation, e.g. `10.244.1.5/32`.
    pub address: String,
    /// Default gateway for this address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route in a CNI result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination in CIDR notation.
    pub dst: String,
    /// Next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// A CNI error as the spec defines it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniError {
    /// The spec's error code (see [`codes`]).
    pub code: u32,
    /// Short message.
    pub msg: String,
    /// Longer explanation, may be empty.
    #[serde(default)]
    pub details: String,
}

impl CniError {
    /// A new error with the given code, message and details.
    pub fn new(code: u32, msg: impl Into<String>, details: impl std::fmt::Display) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: details.to_string(),
        }
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// The CNI spec's well-known error codes.
pub mod codes {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODE_FAILURE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin is not available.
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// STATUS: limited connectivity.
    pub const LIMITED_CONNECTIVITY: u32 = 51;
    /// First code of the plugin-specific range (used for internal daemon failures).
    pub const PLUGIN_SPECIFIC: u32 = 100;
}

/// Why a call to the daemon failed before it answered.
#[derive(Debug)]
pub enum CallError {
    /// The socket could not be reached (daemon down, wrong path, permissions).
    Connect(std::io::Error),
    /// The connection broke or timed out mid-call.
    Io(std::io::Error),
    /// The daemon's answer was not a valid [`Response`].
    Decode(serde_json::Error),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Connect(e) => write!(f, "cannot connect to fabricd: {e}"),
            CallError::Io(e) => write!(f, "talking to fabricd: {e}"),
            CallError::Decode(e) => write!(f, "undecodable answer from fabricd: {e}"),
        }
    }
}

impl std::error::Error for CallError {}

/// Sends one request to the daemon at `socket` and waits up to `timeout` for its answer.
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Response, CallError> {
    let mut stream = UnixStream::connect(socket).map_err(CallError::Connect)?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(CallError::Io)?;
    let mut line = serde_json::to_vec(request).map_err(CallError::Decode)?;
    line.push(b'\n');
    stream.write_all(&line).map_err(CallError::Io)?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(CallError::Io)?;
    serde_json::from_str(&answer).map_err(CallError::Decode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn request_round_trips_with_flattened_key() {
        let req = Request::Add(Attachment {
            key: AttachmentKey {
                container_id: "c1".into(),
                ifname: "eth0".into(),
            },
            netns: Some("/var/run/netns/p".into()),
            ips: vec![Ipv4Addr::new(10, 244, 1, 10).into()],
            labels: BTreeMap::from([("pod".into(), "a".into())]),
            ports: vec![ContainerPort {
                name: Some("serve-80-tcp".into()),
                container_port: 80,
                protocol: PortProtocol::Udp,
            }],
            pod_namespace: Some("x".into()),
            pod_name: Some("a".into()),
        });
        let json = serde_json::to_value(&req).unwrap();
        assert_eq!(json["op"], "add");
        assert_eq!(json["container_id"], "c1");
        assert_eq!(
            json["ports"],
            serde_json::json!([{"name": "serve-80-tcp", "containerPort": 80, "protocol": "UDP"}])
        );
        let back: Request = serde_json::from_value(json).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn attachments_from_older_clients_have_no_ports() {
        let old = r#"{"op":"add","container_id":"c1","ifname":"eth0","netns":null}"#;
        let Request::Add(att) = serde_json::from_str(old).unwrap() else {
            panic!("not an ADD");
        };
        assert!(att.ports.is_empty() && att.labels.is_empty());
        let port: ContainerPort = serde_json::from_str(r#"{"containerPort": 53}"#).unwrap();
        assert_eq!((port.name, port.protocol), (None, PortProtocol::Tcp));
    }

    #[test]
    fn port_names_are_iana_service_names() {
        for ok in ["http", "serve-80-tcp", "a", "a1-b2-c3", "x23456789012345"] {
            assert_eq!(check_port_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "x234567890123456",
            "80",
            "Web",
            "we_b",
            "-a",
            "a-",
            "a--b",
            "a b",
        ] {
            assert!(check_port_name(bad).is_err(), "{bad:?}");
        }
        let port = |container_port, name: &str| ContainerPort {
            name: Some(name.into()),
            container_port,
            protocol: PortProtocol::Tcp,
        };
        assert_eq!(check_ports(&[port(80, "a"), port(81, "b")]), Ok(()));
        let dup = check_ports(&[port(80, "a"), port(81, "a")]).unwrap_err();
        assert_eq!(dup.code, codes::INVALID_CONFIG);
        assert!(dup.msg.contains("containerPorts[1]"), "{dup}");
        assert_eq!(
            check_ports(&[port(0, "a")]).unwrap_err().code,
            codes::INVALID_CONFIG
        );
    }

    #[test]
    fn policy_status_is_tagged() {
        let resp = Response::Policy(PolicyStatus {
            enforcing: true,
            revision: 42,
            policies: 1,
            pods: 2,
            namespaces: 3,
            queue_rules: Some("nft".into()),
        });
        let json = serde_json::to_value(&resp).unwrap();
        assert_eq!(json["status"], "policy");
        assert_eq!(json["revision"], 42);
        assert_eq!(serde_json::from_value::<Response>(json).unwrap(), resp);
        let req = serde_json::to_value(Request::Policy).unwrap();
        assert_eq!(req["op"], "policy");
    }

    #[test]
    fn error_response_is_tagged() {
        let resp = Response::Error(CniError::new(codes::TRY_AGAIN_LATER, "not ready", ""));
        let json = serde_json::to_value(&resp).unwrap();
        assert_eq!(json["status"], "error");
        assert_eq!(json["code"], 11);
    }
}
