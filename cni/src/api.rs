//! The local API between fabricd and its clients (the CNI plugin, `fabricctl`).
//!
//! One request per connection on a unix stream socket: the client writes one JSON
//! [`Request`] followed by a newline, the daemon answers with one JSON [`Response`]
//! and closes. Blocking std I/O only, so the plugin stays small.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
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
    pub ips: Vec<Ipv4Addr>,
    /// Pod labels passed through the `labels` capability (runtimeConfig).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
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
    pub gateway: Option<Ipv4Addr>,
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
    pub gw: Option<Ipv4Addr>,
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

    #[test]
    fn request_round_trips_with_flattened_key() {
        let req = Request::Add(Attachment {
            key: AttachmentKey {
                container_id: "c1".into(),
                ifname: "eth0".into(),
            },
            netns: Some("/var/run/netns/p".into()),
            ips: vec![Ipv4Addr::new(10, 244, 1, 10)],
            labels: BTreeMap::from([("pod".into(), "a".into())]),
            pod_namespace: Some("x".into()),
            pod_name: Some("a".into()),
        });
        let json = serde_json::to_value(&req).unwrap();
        assert_eq!(json["op"], "add");
        assert_eq!(json["container_id"], "c1");
        let back: Request = serde_json::from_value(json).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn error_response_is_tagged() {
        let resp = Response::Error(CniError::new(codes::TRY_AGAIN_LATER, "not ready", ""));
        let json = serde_json::to_value(&resp).unwrap();
        assert_eq!(json["status"], "error");
        assert_eq!(json["code"], 11);
    }
}
