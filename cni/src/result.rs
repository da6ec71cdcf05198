//! The ADD result the runtime receives: fabricd's [`AddResult`] rendered in the
//! configuration's CNI version, chained after the previous plugin's result if any.
//!
//! A `prevResult` is kept as opaque JSON objects, so whatever an earlier plugin
//! reported (IPv6 addresses, DNS, fields of newer spec versions) passes through intact.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::api::{AddResult, Interface, IpConfig, Route};
use crate::version::Version;

/// A JSON object.
type Object = Map<String, Value>;

/// A CNI result as lists of JSON objects, in the order the runtime will see them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ResultDoc {
    /// `interfaces`.
    #[serde(default)]
    pub interfaces: Vec<Object>,
    /// `ips`; their `interface` fields index into `interfaces`.
    #[serde(default)]
    pub ips: Vec<Object>,
    /// `routes`.
    #[serde(default)]
    pub routes: Vec<Object>,
    /// `dns`.
    #[serde(default)]
    pub dns: Object,
}

impl ResultDoc {
    /// Appends fabricd's result in `version`'s shape, shifting its interface indices
    /// past the interfaces already listed.
    pub fn append(&mut self, ours: &AddResult, version: Version) {
        let offset = self.interfaces.len();
        self.interfaces
            .extend(ours.interfaces.iter().map(interface));
        self.ips
            .extend(ours.ips.iter().map(|ip| ip_config(ip, offset, version)));
        self.routes.extend(ours.routes.iter().map(route));
    }

    /// The whole document as printed on stdout.
    pub fn into_json(self, version: Version) -> Value {
        let mut doc = Object::new();
        doc.insert("cniVersion".into(), version.as_str().into());
        doc.insert("interfaces".into(), objects(self.interfaces));
        doc.insert("ips".into(), objects(self.ips));
        doc.insert("routes".into(), objects(self.routes));
        doc.insert("dns".into(), Value::Object(self.dns));
        Value::Object(doc)
    }
}

/// Renders fabricd's ADD result for `version`, after `prev` when the plugin is chained.
pub fn render(ours: &AddResult, version: Version, prev: Option<&ResultDoc>) -> Value {
    let mut doc = prev.cloned().unwrap_or_default();
    doc.append(ours, version);
    doc.into_json(version)
}

fn objects(list: Vec<Object>) -> Value {
    Value::Array(list.into_iter().map(Value::Object).collect())
}

fn interface(iface: &Interface) -> Object {
    let mut obj = Object::new();
    obj.insert("name".into(), iface.name.clone().into());
    obj.insert("mac".into(), iface.mac.clone().into());
    if let Some(sandbox) = &iface.sandbox {
        obj.insert("sandbox".into(), sandbox.clone().into());
    }
    obj
}

/// An `ips` entry; 0.4.0 results also name the address family.
fn ip_config(ip: &IpConfig, interface_offset: usize, version: Version) -> Object {
    let mut obj = Object::new();
    if version == Version::V0_4_0 {
        let family = if ip.address.contains(':') { "6" } else { "4" };
        obj.insert("version".into(), family.into());
    }
    obj.insert("address".into(), ip.address.clone().into());
    if let Some(gateway) = ip.gateway {
        obj.insert("gateway".into(), gateway.to_string().into());
    }
    if let Some(index) = ip.interface {
        obj.insert(
            "interface".into(),
            index.saturating_add(interface_offset).into(),
        );
    }
    obj
}

fn route(route: &Route) -> Object {
    let mut obj = Object::new();
    obj.insert("dst".into(), route.dst.clone().into());
    if let Some(gw) = route.gw {
        obj.insert("gw".into(), gw.to_string().into());
    }
    obj
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::net::Ipv4Addr;

    fn ours() -> AddResult {
        AddResult {
            interfaces: vec![
                Interface {
                    name: "veth1234".into(),
                    mac: "aa:bb:cc:dd:ee:01".into(),
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: "aa:bb:cc:dd:ee:02".into(),
                    sandbox: Some("/var/run/netns/p1".into()),
                },
            ],
            ips: vec![IpConfig {
                address: "10.244.1.5/24".into(),
                gateway: Some(Ipv4Addr::new(10, 244, 1, 1).into()),
                interface: Some(1),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".into(),
                gw: Some(Ipv4Addr::new(10, 244, 1, 1).into()),
            }],
        }
    }

    #[test]
    fn renders_the_1x_shape() {
        let doc = render(&ours(), Version::V1_1_0, None);
        assert_eq!(
            doc,
            json!({
                "cniVersion": "1.1.0",
                "interfaces": [
                    {"name": "veth1234", "mac": "aa:bb:cc:dd:ee:01"},
                    {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "sandbox": "/var/run/netns/p1"},
                ],
                "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
                "dns": {},
            })
        );
    }

    #[test]
    fn renders_0_4_0_with_address_family() {
        let doc = render(&ours(), Version::V0_4_0, None);
        assert_eq!(doc["cniVersion"], "0.4.0");
        assert_eq!(doc["ips"][0]["version"], "4");
        assert_eq!(doc["ips"][0]["address"], "10.244.1.5/24");
        assert!(render(&ours(), Version::V1_0_0, None)["ips"][0]
            .get("version")
            .is_none());
    }

    #[test]
    fn chains_after_the_previous_result() {
        let prev: ResultDoc = serde_json::from_value(json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "lo", "sandbox": "/var/run/netns/p1"}],
            "ips": [{"address": "fd00::5/64", "interface": 0}],
            "routes": [{"dst": "fd00::/8"}],
            "dns": {"nameservers": ["10.96.0.10"]},
        }))
        .unwrap();
        let doc = render(&ours(), Version::V1_0_0, Some(&prev));
        let names: Vec<_> = doc["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["lo", "veth1234", "eth0"]);
        assert_eq!(
            doc["ips"][0],
            json!({"address": "fd00::5/64", "interface": 0})
        );
        assert_eq!(
            doc["ips"][1]["interface"], 2,
            "shifted past prevResult's interface"
        );
        assert_eq!(doc["routes"][0]["dst"], "fd00::/8");
        assert_eq!(doc["routes"][1]["dst"], "0.0.0.0/0");
        assert_eq!(doc["dns"], json!({"nameservers": ["10.96.0.10"]}));
    }

    #[test]
    fn empty_prev_result_changes_nothing() {
        let prev = ResultDoc::default();
        assert_eq!(
            render(&ours(), Version::V1_1_0, Some(&prev)),
            render(&ours(), Version::V1_1_0, None)
        );
    }
}
