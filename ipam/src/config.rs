//! The cluster's network config: Flannel's `net-conf.json`, accepted as it is.
//!
//! Keys: `Network` (required), `SubnetLen` (default 24, or the network's length + 2 when that
//! is longer), `SubnetMin`, `SubnetMax` (default: the second and the last subnet), and
//! `Backend` with `Type` (default `vxlan`), `VNI` (default 1) and `Port` (default 8472) for
//! vxlan, and `ListenPort` (default 51820), `PSK`, `PersistentKeepaliveInterval` and `MTU` for
//! wireguard.
//!
//! Dual stack: `EnableIPv6: true` with `IPv6Network` (e.g. `fd00:10:244::/56`) and
//! `IPv6SubnetLen` (default 64) gives every node an IPv6 subnet beside its IPv4 one and every
//! pod an IPv6 address beside its IPv4 one. The IPv6 subnet is not leased separately: it is
//! the one at the same index in `IPv6Network` as the node's IPv4 subnet in `Network` (see
//! [`NetworkConfig::ipv6_subnet`]), so it is exactly as exclusive as the IPv4 lease, and a
//! pod's IPv6 address carries its IPv4 address's host part ([`ipv6_host`]).
//! `IPv6SubnetMin`/`IPv6SubnetMax` are refused (they follow from `SubnetMin`/`SubnetMax`), and
//! IPv6-only clusters (`EnableIPv4: false`) are not supported.
//! Other keys Flannel knows that fabric does not use are ignored.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Why a network config was refused: the key at fault, what is wrong, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("network config: `{key}` {problem}; {fix}")]
pub struct ConfigError {
    /// The offending key, e.g. `Backend.VNI`.
    pub key: &'static str,
    /// What is wrong with it.
    pub problem: String,
    /// How to fix it.
    pub fix: String,
}

impl ConfigError {
    fn new(key: &'static str, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            key,
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

/// Which data path carries pod traffic between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BackendKind {
    /// Kernel VXLAN device, one FDB/neighbour/route per remote node.
    #[serde(rename = "vxlan")]
    Vxlan,
    /// Plain routes via the remote node's underlay address (same L2 segment only).
    #[serde(rename = "host-gw")]
    HostGw,
    /// Encrypted WireGuard tunnels served in userspace by the daemon.
    #[serde(rename = "wireguard")]
    Wireguard,
}

impl BackendKind {
    /// The name used in configs, flags and lease records.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Vxlan => "vxlan",
            BackendKind::HostGw => "host-gw",
            BackendKind::Wireguard => "wireguard",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for BackendKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "vxlan" => Ok(BackendKind::Vxlan),
            "host-gw" => Ok(BackendKind::HostGw),
            "wireguard" => Ok(BackendKind::Wireguard),
            other => Err(format!(
                "unknown backend {other:?}: supported backends are \"vxlan\", \"host-gw\" and \"wireguard\""
            )),
        }
    }
}

/// The backend section of the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// `Backend.Type`.
    pub kind: BackendKind,
    /// `Backend.VNI` (vxlan).
    pub vni: u32,
    /// `Backend.Port`: the vxlan UDP port.
    pub port: u16,
    /// `Backend.ListenPort`: the WireGuard UDP port.
    pub listen_port: u16,
    /// `Backend.PSK`: a WireGuard pre-shared key (base64), the same on every node.
    pub psk: Option<[u8; 32]>,
    /// `Backend.PersistentKeepaliveInterval`, in seconds (0 = off).
    pub keepalive: u16,
    /// `Backend.MTU`: overrides the tunnel MTU (default: underlay MTU minus overhead).
    pub mtu: Option<u32>,
}

/// A validated network config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// `Network`: the cluster's pod CIDR.
    pub network: Ipv4Net,
    /// `SubnetLen`: the prefix length of each node's subnet.
    pub subnet_len: u8,
    /// `SubnetMin`: the first subnet handed out.
    pub subnet_min: Ipv4Addr,
    /// `SubnetMax`: the last subnet handed out.
    pub subnet_max: Ipv4Addr,
    /// `Backend`.
    pub backend: BackendConfig,
    /// `EnableIPv6` with `IPv6Network` and `IPv6SubnetLen`: the dual-stack half, if enabled.
    pub ipv6: Option<Ipv6Config>,
}

/// The IPv6 half of a dual-stack network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Config {
    /// `IPv6Network`: the cluster's IPv6 pod CIDR.
    pub network: Ipv6Net,
    /// `IPv6SubnetLen`: the prefix length of each node's IPv6 subnet.
    pub subnet_len: u8,
}

/// A node's IPv6 subnet for its IPv4 subnet `subnet` of `network`: the subnet of length
/// `v6.subnet_len` at the same index in `v6.network`. `None` when `subnet` lies outside
/// `network` or has another length.
fn ipv6_subnet_of(
    network: Ipv4Net,
    subnet_len: u8,
    v6: &Ipv6Config,
    subnet: Ipv4Net,
) -> Option<Ipv6Net> {
    if subnet.prefix_len() != subnet_len || !network.contains(&subnet.network()) {
        return None;
    }
    let index = u128::from(
        (u32::from(subnet.network()) - u32::from(network.network())) >> (32 - subnet_len),
    );
    let base = u128::from(v6.network.network()) + (index << (128 - v6.subnet_len));
    Ipv6Net::new(Ipv6Addr::from(base), v6.subnet_len).ok()
}

/// The IPv6 address with `addr`'s host part (within `subnet`) in `v6_subnet`: how a pod's IPv6
/// address follows from its IPv4 one. `None` when `addr` is outside `subnet` or the host part
/// does not fit in `v6_subnet`.
pub fn ipv6_host(subnet: Ipv4Net, v6_subnet: Ipv6Net, addr: Ipv4Addr) -> Option<Ipv6Addr> {
    if !subnet.contains(&addr) {
        return None;
    }
    let host = u128::from(u32::from(addr) - u32::from(subnet.network()));
    let host_bits = 128 - u32::from(v6_subnet.prefix_len());
    if host_bits < 128 && host >> host_bits != 0 {
        return None;
    }
    Some(Ipv6Addr::from(u128::from(v6_subnet.network()) + host))
}

/// The config as written, before validation.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawConfig {
    network: Option<Value>,
    subnet_len: Option<Value>,
    subnet_min: Option<Value>,
    subnet_max: Option<Value>,
    backend: Option<Map<String, Value>>,
    #[serde(flatten)]
    ipv6: RawIpv6,
}

/// The dual-stack keys as written.
#[derive(Debug, Default, Deserialize)]
struct RawIpv6 {
    #[serde(rename = "EnableIPv4")]
    enable_ipv4: Option<Value>,
    #[serde(rename = "EnableIPv6")]
    enable_ipv6: Option<Value>,
    #[serde(rename = "IPv6Network")]
    ipv6_network: Option<Value>,
    #[serde(rename = "IPv6SubnetLen")]
    ipv6_subnet_len: Option<Value>,
    #[serde(rename = "IPv6SubnetMin")]
    ipv6_subnet_min: Option<Value>,
    #[serde(rename = "IPv6SubnetMax")]
    ipv6_subnet_max: Option<Value>,
}

const EXAMPLE: &str =
    r#"e.g. {"Network": "10.244.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan"}}"#;

impl NetworkConfig {
    /// Parses and validates a config document (Flannel's `net-conf.json` format).
    pub fn parse(json: &str) -> Result<Self, ConfigError> {
        let value: Value = serde_json::from_str(json).map_err(|e| {
            ConfigError::new(
                "(document)",
                format!("is not valid JSON ({e})"),
                format!("write a JSON object, {EXAMPLE}"),
            )
        })?;
        if !value.is_object() {
            return Err(ConfigError::new(
                "(document)",
                "is not a JSON object",
                format!("write a JSON object, {EXAMPLE}"),
            ));
        }
        let raw: RawConfig = serde_json::from_value(value).map_err(|e| {
            ConfigError::new("(document)", format!("cannot be read ({e})"), EXAMPLE)
        })?;
        Self::validate(raw)
    }

    fn validate(raw: RawConfig) -> Result<Self, ConfigError> {
        let network = match raw.network {
            None => {
                return Err(ConfigError::new(
                    "Network",
                    "is missing",
                    format!("set it to the cluster's pod CIDR, {EXAMPLE}"),
                ))
            }
            Some(v) => v
                .as_str()
                .and_then(|s| s.parse::<Ipv4Net>().ok())
                .ok_or_else(|| {
                    ConfigError::new(
                        "Network",
                        format!("is {v}, not an IPv4 CIDR"),
                        "write it as a string like \"10.244.0.0/16\"",
                    )
                })?,
        };
        if network.addr() != network.network() {
            return Err(ConfigError::new(
                "Network",
                format!("has host bits set ({network})"),
                format!("use {}", network.trunc()),
            ));
        }
        let default_len = (network.prefix_len() + 2).max(24);
        let subnet_len = match raw.subnet_len {
            None => default_len,
            Some(v) => v
                .as_u64()
                .and_then(|n| u8::try_from(n).ok())
                .ok_or_else(|| {
                    ConfigError::new(
                        "SubnetLen",
                        format!("is {v}, not a prefix length"),
                        "write a number like 24",
                    )
                })?,
        };
        if subnet_len <= network.prefix_len() || subnet_len > 30 {
            return Err(ConfigError::new(
                "SubnetLen",
                format!(
                    "is {subnet_len}, outside {}..=30 for Network {network}",
                    network.prefix_len() + 1
                ),
                "pick a length longer than the Network's and at most 30 (24 gives 254 pods a node)",
            ));
        }
        let ipv6 = parse_ipv6(raw.ipv6, network, subnet_len)?;
        let first = Ipv4Net::new(network.network(), subnet_len).expect("validated length");
        let all = network.subnets(subnet_len).expect("validated length");
        let default_min = all.clone().nth(1).unwrap_or(first).network();
        // The last subnet, found without walking them all (2^30 for 0.0.0.0/0 in /30s).
        let default_max = Ipv4Net::new(network.broadcast(), subnet_len)
            .expect("validated length")
            .network();
        let subnet_min =
            parse_bound("SubnetMin", raw.subnet_min, &network, subnet_len)?.unwrap_or(default_min);
        let subnet_max =
            parse_bound("SubnetMax", raw.subnet_max, &network, subnet_len)?.unwrap_or(default_max);
        if u32::from(subnet_min) > u32::from(subnet_max) {
            return Err(ConfigError::new(
                "SubnetMin",
                format!("({subnet_min}) is above SubnetMax ({subnet_max})"),
                "swap them or widen the range",
            ));
        }
        let backend = parse_backend(raw.backend)?;
        Ok(Self {
            network,
            subnet_len,
            subnet_min,
            subnet_max,
            backend,
            ipv6,
        })
    }

    /// The IPv6 subnet that goes with the IPv4 subnet `subnet`, when the network is dual-stack.
    pub fn ipv6_subnet(&self, subnet: Ipv4Net) -> Option<Ipv6Net> {
        let v6 = self.ipv6.as_ref()?;
        ipv6_subnet_of(self.network, self.subnet_len, v6, subnet)
    }

    /// The subnets this config hands out, in address order.
    pub fn subnets(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        // From SubnetMin on, not filtered from the Network's first: a high SubnetMin in a
        // large Network would make the walk to it take seconds. Both bounds are aligned.
        let last = Ipv4Net::new(self.subnet_max, self.subnet_len).expect("validated length");
        ipnet::Ipv4Subnets::new(self.subnet_min, last.broadcast(), self.subnet_len)
    }

    /// The config as a Flannel-style JSON document, for display: a PSK shows as `(set)`.
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::json!({
            "Network": self.network.to_string(),
            "SubnetLen": self.subnet_len,
            "SubnetMin": self.subnet_min.to_string(),
            "SubnetMax": self.subnet_max.to_string(),
            "Backend": backend_json(&self.backend),
        });
        if let (Some(v6), Some(doc)) = (&self.ipv6, v.as_object_mut()) {
            doc.insert("EnableIPv6".into(), true.into());
            doc.insert("IPv6Network".into(), v6.network.to_string().into());
            doc.insert("IPv6SubnetLen".into(), v6.subnet_len.into());
        }
        v
    }
}

/// Validates the dual-stack keys: `IPv6Network` must hold a subnet for every IPv4 subnet, and
/// each IPv6 subnet must have room for every IPv4 host part.
fn parse_ipv6(
    raw: RawIpv6,
    network: Ipv4Net,
    subnet_len: u8,
) -> Result<Option<Ipv6Config>, ConfigError> {
    const V6_EXAMPLE: &str = r#"e.g. "EnableIPv6": true, "IPv6Network": "fd00:10:244::/56""#;
    if let Some(v) = &raw.enable_ipv4 {
        if v.as_bool() != Some(true) {
            return Err(ConfigError::new(
                "EnableIPv4",
                format!("is {v}; IPv6-only pod networks are not supported"),
                "remove the key (IPv4 is always on) and add IPv6 with EnableIPv6",
            ));
        }
    }
    let enabled = match &raw.enable_ipv6 {
        None => false,
        Some(v) => v.as_bool().ok_or_else(|| {
            ConfigError::new(
                "EnableIPv6",
                format!("is {v}, not true or false"),
                V6_EXAMPLE,
            )
        })?,
    };
    for (key, v) in [
        ("IPv6SubnetMin", &raw.ipv6_subnet_min),
        ("IPv6SubnetMax", &raw.ipv6_subnet_max),
    ] {
        if v.is_some() {
            return Err(ConfigError::new(
                key,
                "is not supported: a node's IPv6 subnet follows its IPv4 subnet",
                "remove it and bound the subnets with SubnetMin/SubnetMax",
            ));
        }
    }
    if !enabled {
        if raw.ipv6_network.is_some() || raw.ipv6_subnet_len.is_some() {
            return Err(ConfigError::new(
                "EnableIPv6",
                "is not true, but IPv6Network or IPv6SubnetLen is set",
                "add \"EnableIPv6\": true, or remove the IPv6 keys",
            ));
        }
        return Ok(None);
    }
    let v6_network = match &raw.ipv6_network {
        None => {
            return Err(ConfigError::new(
                "IPv6Network",
                "is missing while EnableIPv6 is true",
                V6_EXAMPLE,
            ))
        }
        Some(v) => v
            .as_str()
            .and_then(|s| s.parse::<Ipv6Net>().ok())
            .ok_or_else(|| {
                ConfigError::new(
                    "IPv6Network",
                    format!("is {v}, not an IPv6 CIDR"),
                    V6_EXAMPLE,
                )
            })?,
    };
    if v6_network.addr() != v6_network.network() {
        return Err(ConfigError::new(
            "IPv6Network",
            format!("has host bits set ({v6_network})"),
            format!("use {}", v6_network.trunc()),
        ));
    }
    let v6_len = match &raw.ipv6_subnet_len {
        None => 64,
        Some(v) => v
            .as_u64()
            .and_then(|n| u8::try_from(n).ok())
            .ok_or_else(|| {
                ConfigError::new(
                    "IPv6SubnetLen",
                    format!("is {v}, not a prefix length"),
                    "write a number like 64",
                )
            })?,
    };
    let subnet_bits = subnet_len - network.prefix_len();
    let host_bits = 32 - subnet_len;
    let needed = v6_network.prefix_len() + subnet_bits;
    if v6_len < needed || u32::from(v6_len) > 128 - u32::from(host_bits) {
        return Err(ConfigError::new(
            "IPv6SubnetLen",
            format!(
                "is {v6_len}; with IPv6Network {v6_network} it must lie in {needed}..={} so that \
                 every IPv4 subnet of {network} has an IPv6 subnet and every pod's host part fits",
                128 - host_bits
            ),
            "use 64 with an IPv6Network of /56 or shorter (for a /16 Network with /24 subnets, /48)",
        ));
    }
    Ok(Some(Ipv6Config {
        network: v6_network,
        subnet_len: v6_len,
    }))
}

fn backend_json(b: &BackendConfig) -> Value {
    let mut v = serde_json::json!({
        "Type": b.kind.as_str(),
        "VNI": b.vni,
        "Port": b.port,
        "ListenPort": b.listen_port,
        "PersistentKeepaliveInterval": b.keepalive,
    });
    if let Some(mtu) = b.mtu {
        v["MTU"] = mtu.into();
    }
    if b.psk.is_some() {
        // The key itself stays in the datastore's copy; never echoed back.
        v["PSK"] = "(set)".into();
    }
    v
}

fn parse_bound(
    key: &'static str,
    value: Option<Value>,
    network: &Ipv4Net,
    subnet_len: u8,
) -> Result<Option<Ipv4Addr>, ConfigError> {
    let Some(v) = value else { return Ok(None) };
    let addr = v
        .as_str()
        .and_then(|s| {
            // Flannel writes plain addresses; accept a CIDR too.
            s.split('/').next().and_then(|a| a.parse::<Ipv4Addr>().ok())
        })
        .ok_or_else(|| {
            ConfigError::new(
                key,
                format!("is {v}, not an IPv4 address"),
                "write a subnet's first address as a string, e.g. \"10.244.1.0\"",
            )
        })?;
    if !network.contains(&addr) {
        return Err(ConfigError::new(
            key,
            format!("({addr}) is outside Network {network}"),
            "pick an address inside Network",
        ));
    }
    let aligned = Ipv4Net::new(addr, subnet_len)
        .expect("validated length")
        .network();
    if aligned != addr {
        return Err(ConfigError::new(
            key,
            format!("({addr}) is not the start of a /{subnet_len} subnet"),
            format!("use {aligned}"),
        ));
    }
    Ok(Some(addr))
}

fn parse_backend(section: Option<Map<String, Value>>) -> Result<BackendConfig, ConfigError> {
    let section = section.unwrap_or_default();
    let kind = match section.get("Type") {
        None => BackendKind::Vxlan,
        Some(Value::String(s)) => s
            .parse()
            .map_err(|e: String| ConfigError::new("Backend.Type", format!("is {s:?}"), e))?,
        Some(v) => {
            return Err(ConfigError::new(
                "Backend.Type",
                format!("is {v}, not a string"),
                "write \"vxlan\", \"host-gw\" or \"wireguard\"",
            ))
        }
    };
    let vni = match section.get("VNI") {
        None => 1,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..1 << 24).contains(n))
            .ok_or_else(|| {
                ConfigError::new(
                    "Backend.VNI",
                    format!("is {v}"),
                    "use a number from 1 to 16777215 (default 1)",
                )
            })? as u32,
    };
    let port = match section.get("Port") {
        None => 8472,
        Some(v) => match v.as_u64() {
            // Flannel treats 0 as "the kernel default".
            Some(0) => 8472,
            Some(n) => u16::try_from(n).map_err(|_| {
                ConfigError::new(
                    "Backend.Port",
                    format!("is {n}"),
                    "use a UDP port from 1 to 65535 (default 8472)",
                )
            })?,
            None => {
                return Err(ConfigError::new(
                    "Backend.Port",
                    format!("is {v}, not a number"),
                    "use a UDP port from 1 to 65535 (default 8472)",
                ))
            }
        },
    };
    let listen_port = match section.get("ListenPort") {
        None => 51820,
        Some(v) => v
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                ConfigError::new(
                    "Backend.ListenPort",
                    format!("is {v}"),
                    "use a UDP port from 1 to 65535 (default 51820)",
                )
            })?,
    };
    let psk = match section.get("PSK") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_str().and_then(decode_key).ok_or_else(|| {
            ConfigError::new(
                "Backend.PSK",
                "is not a base64-encoded 32-byte key",
                "generate one with `wg genpsk`",
            )
        })?),
    };
    let keepalive = match section.get("PersistentKeepaliveInterval") {
        None => 0,
        Some(v) => v
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .ok_or_else(|| {
                ConfigError::new(
                    "Backend.PersistentKeepaliveInterval",
                    format!("is {v}"),
                    "use seconds from 0 (off) to 65535",
                )
            })?,
    };
    let mtu = match section.get("MTU") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| (576..=65535).contains(n))
                .ok_or_else(|| {
                    ConfigError::new(
                        "Backend.MTU",
                        format!("is {v}"),
                        "use a number from 576 to 65535, or leave it out",
                    )
                })?,
        ),
    };
    Ok(BackendConfig {
        kind,
        vni,
        port,
        listen_port,
        psk,
        keepalive,
        mtu,
    })
}

/// Decodes a base64 WireGuard key (32 bytes, standard alphabet).
pub fn decode_key(text: &str) -> Option<[u8; 32]> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flannel_default_net_conf_is_accepted_as_is() {
        // The net-conf.json shipped in Flannel's kube-flannel.yml.
        let cfg = NetworkConfig::parse(
            r#"{
              "Network": "10.244.0.0/16",
              "EnableNFTables": false,
              "Backend": { "Type": "vxlan" }
            }"#,
        )
        .unwrap();
        assert_eq!(cfg.network, "10.244.0.0/16".parse::<Ipv4Net>().unwrap());
        assert_eq!(cfg.subnet_len, 24);
        assert_eq!(cfg.subnet_min, Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(cfg.subnet_max, Ipv4Addr::new(10, 244, 255, 0));
        assert_eq!(cfg.backend.kind, BackendKind::Vxlan);
        assert_eq!(cfg.backend.vni, 1);
        assert_eq!(cfg.backend.port, 8472);
        assert_eq!(cfg.subnets().count(), 255);
    }

    #[test]
    fn explicit_keys_are_honoured() {
        let cfg = NetworkConfig::parse(
            r#"{"Network":"10.10.0.0/16","SubnetLen":26,"SubnetMin":"10.10.1.0",
                "SubnetMax":"10.10.2.0","Backend":{"Type":"host-gw","VNI":42,"Port":4789}}"#,
        )
        .unwrap();
        assert_eq!(cfg.subnet_len, 26);
        assert_eq!(cfg.backend.kind, BackendKind::HostGw);
        assert_eq!(cfg.backend.vni, 42);
        assert_eq!(cfg.backend.port, 4789);
        let subnets: Vec<_> = cfg.subnets().collect();
        assert_eq!(subnets.first().unwrap().to_string(), "10.10.1.0/26");
        assert_eq!(subnets.last().unwrap().to_string(), "10.10.2.0/26");
        assert_eq!(subnets.len(), 5);
    }

    /// Found by the datastore fuzz target: the whole IPv4 space in /30s (2^30 subnets) took
    /// 40 s to validate and a high SubnetMin as long to reach; both are found directly now.
    #[test]
    fn huge_networks_are_bounded_without_walking_every_subnet() {
        let started = std::time::Instant::now();
        let cfg = NetworkConfig::parse(
            r#"{"Network":"0.0.0.0/0","SubnetLen":30,"SubnetMin":"255.255.255.0"}"#,
        )
        .unwrap();
        assert_eq!(cfg.subnet_max, Ipv4Addr::new(255, 255, 255, 252));
        let subnets: Vec<_> = cfg.subnets().collect();
        assert_eq!(subnets.len(), 64);
        assert_eq!(subnets[0].to_string(), "255.255.255.0/30");
        assert_eq!(subnets[63].to_string(), "255.255.255.252/30");
        let cfg = NetworkConfig::parse(r#"{"Network":"0.0.0.0/0","SubnetLen":30}"#).unwrap();
        assert_eq!(cfg.subnet_min, Ipv4Addr::new(0, 0, 0, 4));
        assert_eq!(cfg.subnet_max, Ipv4Addr::new(255, 255, 255, 252));
        assert_eq!(cfg.subnets().next().unwrap().to_string(), "0.0.0.4/30");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (r#"{}"#, "Network"),
            (r#"{"Network": 5}"#, "Network"),
            (r#"{"Network": "10.244.0.1/16"}"#, "Network"),
            (
                r#"{"Network": "10.244.0.0/16", "SubnetLen": 8}"#,
                "SubnetLen",
            ),
            (
                r#"{"Network": "10.244.0.0/16", "SubnetLen": 31}"#,
                "SubnetLen",
            ),
            (
                r#"{"Network": "10.244.0.0/16", "SubnetMin": "10.9.0.0"}"#,
                "SubnetMin",
            ),
            (
                r#"{"Network": "10.244.0.0/16", "SubnetMax": "10.244.1.7"}"#,
                "SubnetMax",
            ),
            (
                r#"{"Network": "10.244.0.0/16", "SubnetMin": "10.244.9.0", "SubnetMax": "10.244.2.0"}"#,
                "SubnetMin",
            ),
            (
                r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}}"#,
                "Backend.Type",
            ),
            (
                r#"{"Network": "10.244.0.0/16", "Backend": {"VNI": 0}}"#,
                "Backend.VNI",
            ),
            (
                r#"{"Network": "10.244.0.0/16", "Backend": {"Port": 70000}}"#,
                "Backend.Port",
            ),
            (r#"not json"#, "(document)"),
            (r#"[1]"#, "(document)"),
        ];
        for (doc, key) in cases {
            let err = NetworkConfig::parse(doc).unwrap_err();
            assert_eq!(err.key, key, "{doc}: {err}");
            assert!(!err.fix.is_empty());
        }
    }

    #[test]
    fn flannel_wireguard_keys_are_accepted() {
        let cfg = NetworkConfig::parse(
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","ListenPort":51821,
                "PSK":"zqHL9ot6jsNU6Ae2z4SixPbcOPHpaJjDKnXtImxcM3Y=","PersistentKeepaliveInterval":25,"MTU":1400}}"#,
        )
        .unwrap();
        assert_eq!(cfg.backend.kind, BackendKind::Wireguard);
        assert_eq!(cfg.backend.listen_port, 51821);
        assert_eq!(cfg.backend.keepalive, 25);
        assert_eq!(cfg.backend.mtu, Some(1400));
        let psk = cfg.backend.psk.unwrap();
        assert_eq!(&psk[..3], &[0xce, 0xa1, 0xcb]);
    }

    #[test]
    fn dual_stack_gives_each_subnet_its_ipv6_twin() {
        let cfg = NetworkConfig::parse(
            r#"{"Network":"10.244.0.0/16","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/48"}"#,
        )
        .unwrap();
        let v6 = cfg.ipv6.unwrap();
        assert_eq!(v6.subnet_len, 64);
        let sub = |s: &str| cfg.ipv6_subnet(s.parse().unwrap()).map(|n| n.to_string());
        assert_eq!(sub("10.244.0.0/24").as_deref(), Some("fd00:10:244::/64"));
        assert_eq!(sub("10.244.3.0/24").as_deref(), Some("fd00:10:244:3::/64"));
        assert_eq!(
            sub("10.244.255.0/24").as_deref(),
            Some("fd00:10:244:ff::/64")
        );
        assert_eq!(sub("10.245.0.0/24"), None, "outside Network");
        assert_eq!(sub("10.244.3.0/25"), None, "another length");
        let host = ipv6_host(
            "10.244.3.0/24".parse().unwrap(),
            "fd00:10:244:3::/64".parse().unwrap(),
            "10.244.3.17".parse().unwrap(),
        );
        assert_eq!(host, Some("fd00:10:244:3::11".parse().unwrap()));
        assert_eq!(
            ipv6_host(
                "10.244.3.0/24".parse().unwrap(),
                "fd00::/120".parse().unwrap(),
                "10.244.4.1".parse().unwrap()
            ),
            None
        );
        let again = NetworkConfig::parse(&cfg.to_json().to_string()).unwrap();
        assert_eq!(cfg, again);
    }

    #[test]
    fn bad_dual_stack_keys_are_refused_with_the_key() {
        let cases = [
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv6":true}"#,
                "IPv6Network",
            ),
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv6":"yes","IPv6Network":"fd00::/48"}"#,
                "EnableIPv6",
            ),
            (
                r#"{"Network":"10.244.0.0/16","IPv6Network":"fd00::/48"}"#,
                "EnableIPv6",
            ),
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"10.0.0.0/8"}"#,
                "IPv6Network",
            ),
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::1/48"}"#,
                "IPv6Network",
            ),
            // 256 subnets need 8 bits between /60 and the subnet length: /64 leaves 4.
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/60"}"#,
                "IPv6SubnetLen",
            ),
            // A /24's 8 host bits do not fit a /124.
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetLen":124}"#,
                "IPv6SubnetLen",
            ),
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetMin":"fd00::"}"#,
                "IPv6SubnetMin",
            ),
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48"}"#,
                "EnableIPv4",
            ),
        ];
        for (doc, key) in cases {
            let err = NetworkConfig::parse(doc).unwrap_err();
            assert_eq!(err.key, key, "{doc}: {err}");
        }
        assert!(
            NetworkConfig::parse(r#"{"Network":"10.244.0.0/16","EnableIPv6":false}"#)
                .unwrap()
                .ipv6
                .is_none()
        );
    }

    #[test]
    fn to_json_round_trips() {
        let cfg = NetworkConfig::parse(r#"{"Network":"10.244.0.0/16"}"#).unwrap();
        let again = NetworkConfig::parse(&cfg.to_json().to_string()).unwrap();
        assert_eq!(cfg, again);
    }
}
