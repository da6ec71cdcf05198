//! Fuzzes datastore record decoding, through the functions the daemons read records with:
//!
//! - `l`: a lease record under `/fabric/subnets/` (`ipam::etcd::decode_lease`, as the lease
//!   follower and listings decode it), then the WireGuard peers the tunnel derives from it
//!   (`tunnel::wireguard::table::desired`);
//! - `r`: a reservation record under `/fabric/reservations/` (`ipam::etcd::decode_reservation`);
//! - `c`: the network config, `<prefix>/config` or `net-conf.json` (`NetworkConfig::parse`);
//! - `o`: pod, namespace and policy records under `/fabric/{pods,namespaces,policies}/`, as
//!   the etcd object source hands them to the policy view (`fabric::policies::Objects`), and
//!   the view compiled from them;
//! - `n`: a Kubernetes Node as the API serves it (k8s-openapi's decoding, as kube-rs does it),
//!   then its podCIDRs and annotations (`ipam::kube::node::{pod_cidrs, own_subnets, lease_of}`);
//! - `p`, `s`, `k`: a Kubernetes Pod, Namespace or NetworkPolicy, turned into the records
//!   the policy view reads (`ipam::kube::objects::{pod_record, namespace_record,
//!   policy_record}`) and applied to it.
//!
//! The first byte picks the decoder (those letters, else its value modulo 8); for `l` and
//! `r` the first line after it is the key's last segment (`10.244.1.0-24`), the rest the
//! value; for `o` each line is `KIND/NAME VALUE` (`pods/node1/c1 {...}`).
//!
//! Beyond "no panic": a decoded config re-encodes (`to_json`) and decodes to the same value;
//! a decoded lease re-encodes and decodes to the same lease; what a record decodes to lies in
//! what the key says (a lease's subnet is its key's); a view updated incrementally holds what
//! one built from scratch holds.
//!
//! Run: `scripts/fuzz.sh --smoke` / `--long` (all targets), or one:
//! `scripts/fuzz.sh datastore -- -max_total_time=60`.
#![no_main]

use fabric_fuzz as _;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};

use fabric::policies::{Changes, Objects};
use ipam::config::NetworkConfig;
use ipam::etcd::{decode_lease, decode_reservation, KeyState};
use ipam::kube::node::{lease_of, own_subnets, pod_cidrs, Annotations};
use ipam::kube::objects::{container_ports, namespace_record, pod_record, policy_record};
use ipam::lease::{parse_subnet_key, subnet_key, Lease};
use ipam::objects::{Kind, StoredObject};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tunnel::wireguard::keys::Key;

const SUBNETS: &str = "/fabric/subnets/";
const RESERVATIONS: &str = "/fabric/reservations/";

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let which = match selector {
        b'l' => 0,
        b'r' => 1,
        b'c' => 2,
        b'o' => 3,
        b'n' => 4,
        b'p' => 5,
        b's' => 6,
        b'k' => 7,
        other => other % 8,
    };
    match which {
        0 => lease(rest),
        1 => reservation(rest),
        2 => config(rest),
        3 => objects(rest),
        4 => node(rest),
        _ => kube_object(which, rest),
    }
});

/// Splits `<key segment>\n<value>` into a key under `prefix` and its value.
fn key_state(prefix: &str, rest: &[u8]) -> KeyState {
    let (segment, value) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&b"10.244.1.0-24"[..], rest),
    };
    KeyState {
        key: format!("{prefix}{}", String::from_utf8_lossy(segment)),
        value: Some(value.to_vec()),
        lease: 7,
        mod_revision: 1,
    }
}

fn lease(rest: &[u8]) {
    let state = key_state(SUBNETS, rest);
    let Ok(lease) = decode_lease(SUBNETS, &state) else {
        return;
    };
    let segment = &state.key[SUBNETS.len()..];
    assert_eq!(parse_subnet_key(segment), Some(lease.subnet));
    assert_eq!(
        parse_subnet_key(&subnet_key(lease.subnet)),
        Some(lease.subnet)
    );
    assert_eq!(lease.handle, 7);

    // The lease's own encoding (`fabricctl leases -o json`, the agent's state) round-trips.
    let text = serde_json::to_string(&lease).expect("a lease encodes");
    let back: Lease = serde_json::from_str(&text).expect("an encoded lease decodes");
    let normalize = |l: &Lease| Lease {
        handle: 0,
        backend_data: if has_float(&l.backend_data) {
            Value::Null
        } else {
            l.backend_data.clone()
        },
        ..l.clone()
    };
    assert_eq!(normalize(&back), normalize(&lease));

    // What the WireGuard backend makes of it beside a local lease.
    let mut local = lease.clone();
    local.subnet = "10.0.0.0/24".parse().unwrap();
    local.node = "local-node".into();
    let leases = Arc::new(BTreeMap::from([
        (lease.subnet, lease.clone()),
        (local.subnet, local.clone()),
    ]));
    for peer in tunnel::wireguard::table::desired(&local, &leases) {
        assert!(peer.allowed.v4 == lease.subnet || peer.allowed.v4 == local.subnet);
    }
}

/// Whether `v` holds a float (serde_json parses floats to the nearest value only within
/// an ulp without its `float_roundtrip` feature, so they need not survive a round trip).
fn has_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64(),
        Value::Array(a) => a.iter().any(has_float),
        Value::Object(o) => o.values().any(has_float),
        _ => false,
    }
}

fn reservation(rest: &[u8]) {
    let state = key_state(RESERVATIONS, rest);
    if let Ok((subnet, _node)) = decode_reservation(RESERVATIONS, &state) {
        assert_eq!(
            parse_subnet_key(&state.key[RESERVATIONS.len()..]),
            Some(subnet)
        );
    }
}

fn config(rest: &[u8]) {
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let Ok(config) = NetworkConfig::parse(text) else {
        return;
    };
    // `to_json` shows a PSK as `(set)`: put the key back to re-read it.
    let mut doc = config.to_json();
    if let Some(psk) = config.backend.psk {
        doc["Backend"]["PSK"] = Key(psk).to_base64().into();
    }
    let again = NetworkConfig::parse(&doc.to_string())
        .unwrap_or_else(|e| panic!("the re-encoded config {doc} is refused: {e}"));
    assert_eq!(again, config, "re-encoded as {doc}");

    // What the allocator and the dual-stack derivation read.
    for subnet in config.subnets().take(3) {
        assert!(config.network.contains(&subnet));
        if let Some(v6) = config.ipv6_subnet(subnet) {
            assert!(config.ipv6.is_some_and(|c| c.network.contains(&v6)));
        }
    }
}

/// Records as the etcd object source lists and follows them.
fn stored(text: &str) -> Vec<StoredObject> {
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            let (kind, name) = Kind::parse(key)?;
            Some(StoredObject {
                kind,
                name: name.to_owned(),
                // An empty value stands for a deletion.
                value: (!value.is_empty()).then(|| value.as_bytes().to_vec()),
                mod_revision: i as i64 + 1,
            })
        })
        .collect()
}

fn objects(rest: &[u8]) {
    let text = String::from_utf8_lossy(rest);
    let records = stored(&text);
    apply_all(records);
}

/// Applies `records` one by one (as a watch delivers them) to a view and to its compiled
/// cluster, as the follower does, and compares with the view built at once.
fn apply_all(records: Vec<StoredObject>) {
    let mut objects = Objects::default();
    let mut cluster = objects.build();
    for record in records {
        let mut changes = Changes::default();
        objects.apply(record, &mut changes);
        changes.apply(&mut cluster);
    }
    let built = objects.build();
    let policies = |c: &policy::Cluster| c.policy_keys().cloned().collect::<BTreeSet<_>>();
    assert_eq!(policies(&cluster), policies(&built));
    for node in ["node1", "node2"] {
        for pod in objects.pods_on(node) {
            assert_eq!(cluster.pod(&pod.key), built.pod(&pod.key));
            assert_eq!(built.pod(&pod.key), Some(pod));
        }
    }
    let _ = objects.counts();
}

/// The config the Kubernetes-mode checks run against.
fn kube_config() -> &'static NetworkConfig {
    static CONFIG: OnceLock<NetworkConfig> = OnceLock::new();
    CONFIG.get_or_init(|| {
        NetworkConfig::parse(
            r#"{"Network": "10.244.0.0/16", "EnableIPv6": true,
                "IPv6Network": "fd00:10:244::/48", "Backend": {"Type": "wireguard"}}"#,
        )
        .expect("the fixture config is valid")
    })
}

fn node(rest: &[u8]) {
    let Ok(node) = serde_json::from_slice::<Node>(rest) else {
        return;
    };
    let names = Annotations::new("fabric.dev");
    let cidrs = pod_cidrs(&node);
    if let Ok((subnets, _)) = own_subnets(&node, "node1", kube_config()) {
        assert_eq!(cidrs.as_ref().ok().and_then(|c| c.0), Some(subnets));
    }
    if let Some(lease) = lease_of(&node, &names) {
        assert_eq!(cidrs.ok().and_then(|c| c.0), Some(lease.subnet));
        let values = BTreeMap::from([(names.backend_type.clone(), lease.backend_type.clone())]);
        assert!(Annotations::published(&node, &values));
        let mut local = lease.clone();
        local.node = "local-node".into();
        local.subnet = "10.0.0.0/24".parse().unwrap();
        let leases = Arc::new(BTreeMap::from([
            (lease.subnet, lease),
            (local.subnet, local.clone()),
        ]));
        let _ = tunnel::wireguard::table::desired(&local, &leases);
    }
}

fn kube_object(which: u8, rest: &[u8]) {
    let (kind, name, value) = match which {
        5 => {
            let Ok(pod) = serde_json::from_slice::<Pod>(rest) else {
                return;
            };
            let _ = container_ports(&pod);
            let Some(record) = pod_record(&pod) else {
                return;
            };
            let name = format!("{}/{}/{}", record.node, record.namespace, record.name);
            (Kind::Pods, name, serde_json::to_vec(&record).unwrap())
        }
        6 => {
            let Ok(ns) = serde_json::from_slice::<Namespace>(rest) else {
                return;
            };
            let name = ns.metadata.name.clone().unwrap_or_default();
            let record = namespace_record(&ns);
            (Kind::Namespaces, name, serde_json::to_vec(&record).unwrap())
        }
        _ => {
            let Ok(np) = serde_json::from_slice::<NetworkPolicy>(rest) else {
                return;
            };
            let meta = &np.metadata;
            let name = format!(
                "{}/{}",
                meta.namespace.as_deref().unwrap_or_default(),
                meta.name.as_deref().unwrap_or_default()
            );
            let record = policy_record(&np);
            (Kind::Policies, name, serde_json::to_vec(&record).unwrap())
        }
    };
    let record = |value: Option<Vec<u8>>, mod_revision| StoredObject {
        kind,
        name: name.clone(),
        value,
        mod_revision,
    };
    // Written, then deleted.
    apply_all(vec![record(Some(value), 1), record(None, 2)]);
}
