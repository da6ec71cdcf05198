//! End-to-end tests of the CNI plugin against a real fabricd, called exactly as a runtime
//! calls it (environment + stdin): every verb, chaining with the reference `portmap` plugin,
//! and malformed input that must never panic nor change the node's pod address pool.

use std::time::Duration;

use fabric_lab::{Backend, CniCommand, Invocation, Lab, PodSpec, Signal};
use fabric_tests::{eventually, ping, spec, tcp_connect, up, Listeners};
use serde_json::{json, Value};

/// The node's recorded pod addresses, its host veths and its pod set elements: what a failed
/// call must not change.
fn node_footprint(lab: &Lab) -> (String, Vec<String>, String) {
    let node = lab.node("node1").unwrap();
    let pool = std::fs::read_to_string(node.state_dir.join("pods.json")).unwrap_or_default();
    let links = lab.exec_ok("node1", &["ip", "-o", "link", "show"]).unwrap();
    let mut veths: Vec<String> = links
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| (n.starts_with("fab") && !n.starts_with("fabric")) || n.starts_with("fbt"))
        .collect();
    veths.sort();
    (pool, veths, pod_sets(lab))
}

/// The elements of the node's pod sets (`pod_veths`, `pod_addrs`), as `nft` lists them.
fn pod_sets(lab: &Lab) -> String {
    ["pod_veths", "pod_addrs"]
        .map(|set| {
            lab.exec_ok("node1", &["nft", "list", "set", "inet", "fabric", set])
                .unwrap()
        })
        .join("")
}

/// The addresses the node's pool holds.
fn held(lab: &Lab) -> Vec<String> {
    let pool: Value = serde_json::from_str(&node_footprint(lab).0).unwrap();
    pool["held"].as_object().unwrap().keys().cloned().collect()
}

fn code(err: &fabric_lab::cni_runtime::Error) -> u32 {
    err.code()
        .unwrap_or_else(|| panic!("not a CNI error: {err}"))
}

#[test]
fn cni_verbs_against_a_live_node() {
    let mut lab = up(spec("cniverbs", 1, 0, Backend::Vxlan));
    let subnet: ipnet::Ipv4Net = lab.subnets().unwrap()["node1"].parse().unwrap();

    let pod = lab.add_pod("node1", PodSpec::new("p1")).unwrap();
    assert!(subnet.contains(&pod.ip), "{} outside {subnet}", pod.ip);
    let inv = lab.pod_invocation(&pod);
    // When ADD returns, the pod's anti-spoofing elements are in the node's table.
    let veth = pod.result["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let sets = pod_sets(&lab);
    assert!(
        sets.contains(&format!("\"{veth}\" . {}", pod.ip)) && sets.contains(&format!("\"{veth}\"")),
        "{sets}"
    );

    // CHECK after ADD succeeds.
    lab.cni("node1", CniCommand::Check, &inv, None).unwrap();
    // ADD twice for the same container/ifname is an error and changes nothing.
    let before = node_footprint(&lab);
    let err = lab.cni("node1", CniCommand::Add, &inv, None).unwrap_err();
    assert!(code(&err) > 0);
    assert_eq!(node_footprint(&lab), before);
    // CHECK after the pod's interface was deleted by hand fails.
    lab.exec_ok("p1", &["ip", "link", "del", "eth0"]).unwrap();
    let err = lab.cni("node1", CniCommand::Check, &inv, None).unwrap_err();
    assert!(code(&err) >= 100, "{err}");
    // DEL twice succeeds; the address is free again.
    lab.cni("node1", CniCommand::Del, &inv, None).unwrap();
    lab.cni("node1", CniCommand::Del, &inv, None).unwrap();
    assert!(!held(&lab).contains(&pod.ip.to_string()));
    assert!(node_footprint(&lab).1.is_empty(), "host veths left");
    // DEL took the pod's elements out of the table with it.
    let sets = pod_sets(&lab);
    assert!(
        !sets.contains(&veth) && !sets.contains(&pod.ip.to_string()),
        "{sets}"
    );

    // The `ips` capability places a pod at a chosen address.
    let want = std::net::Ipv4Addr::from(u32::from(subnet.network()) + 77);
    let fixed = lab
        .add_pod("node1", PodSpec::new("fixed").ip(want))
        .unwrap();
    assert_eq!(fixed.ip, want);
    // A failed ADD (address outside the subnet) leaves nothing behind.
    let before = node_footprint(&lab);
    let outside = "10.9.9.9".parse().unwrap();
    assert!(lab
        .add_pod("node1", PodSpec::new("outside").ip(outside))
        .is_err());
    assert_eq!(node_footprint(&lab), before);

    // GC removes attachments not in the valid list.
    let keep = lab.add_pod("node1", PodSpec::new("keep")).unwrap();
    let mut gc = Invocation::new("", None);
    gc.valid_attachments = vec![(keep.container_id.clone(), keep.ifname.clone())];
    lab.cni("node1", CniCommand::Gc, &gc, None).unwrap();
    lab.cni("node1", CniCommand::Check, &lab.pod_invocation(&keep), None)
        .unwrap();
    let err = lab
        .cni(
            "node1",
            CniCommand::Check,
            &lab.pod_invocation(&fixed),
            None,
        )
        .unwrap_err();
    assert_eq!(code(&err), 3, "GC'd attachment is unknown: {err}");
    let held = held(&lab);
    assert!(
        !held.contains(&fixed.ip.to_string()) && held.contains(&keep.ip.to_string()),
        "{held:?}"
    );

    // STATUS: ready while fabricd runs; 50 when it is down; ADD says "try again later".
    lab.cni("node1", CniCommand::Status, &Invocation::default(), None)
        .unwrap();
    lab.stop_fabricd("node1", Signal::SIGTERM).unwrap();
    let err = lab
        .cni("node1", CniCommand::Status, &Invocation::default(), None)
        .unwrap_err();
    assert_eq!(code(&err), 50, "{err}");
    let err = lab.add_pod("node1", PodSpec::new("down")).unwrap_err();
    let err = err
        .downcast_ref::<fabric_lab::cni_runtime::Error>()
        .expect("a CNI error");
    assert_eq!(code(err), 11, "{err}");
    lab.start_fabricd("node1").unwrap();
    lab.cni("node1", CniCommand::Status, &Invocation::default(), None)
        .unwrap();
    lab.cni("node1", CniCommand::Check, &lab.pod_invocation(&keep), None)
        .unwrap();
}

#[test]
fn chained_with_portmap() {
    let mut lab = up(spec("portmap", 2, 0, Backend::Vxlan));
    let conflist = json!({
        // Debian's portmap speaks CNI up to 1.0.0.
        "cniVersion": "1.0.0",
        "name": "fabric",
        "plugins": [
            {"type": "fabric-cni", "capabilities": {"ips": true}},
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
        ]
    });
    let pod = lab
        .add_pod(
            "node1",
            PodSpec::new("web").conflist(conflist).capability(
                "portMappings",
                json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]),
            ),
        )
        .unwrap();
    // portmap got our result as prevResult and passed it on.
    let ips = pod.result["ips"].as_array().unwrap();
    assert_eq!(ips[0]["address"], Value::from(format!("{}/32", pod.ip)));
    let _web = Listeners::start(&lab, &["web"], 80).unwrap();
    let node1 = lab.node("node1").unwrap().underlay_ip;
    // From another node, the node's port 8080 reaches the pod's port 80.
    eventually(Duration::from_secs(5), || {
        tcp_connect(&lab, "node2", node1, 8080)
    })
    .unwrap();
    ping(&lab, "node2", pod.ip).unwrap();
    lab.cni("node1", CniCommand::Check, &lab.pod_invocation(&pod), None)
        .unwrap();
    lab.del_pod("web").unwrap();
    let nat = lab
        .exec_ok("node1", &["iptables-save", "-t", "nat"])
        .unwrap();
    assert!(
        !nat.contains("dport 8080"),
        "portmap DEL left its rules: {nat}"
    );
}

/// xorshift64*: deterministic pseudo-random inputs without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
}

#[test]
fn two_hundred_malformed_inputs_give_cni_errors_and_leave_the_pool_alone() {
    let mut lab = up(spec("malformed", 1, 0, Backend::Vxlan));
    let victim = lab.add_pod("node1", PodSpec::new("victim")).unwrap();
    let socket = lab.node("node1").unwrap().socket.display().to_string();
    let netns = format!("/var/run/netns/{}", victim.netns);
    let good =
        json!({"cniVersion": "1.1.0", "name": "fabric", "type": "fabric-cni", "socket": socket});
    let before = node_footprint(&lab);

    let mut rng = Rng(0x5eed_f00d_dead_beef);
    for i in 0..200 {
        let mut env: Vec<(&str, String)> = vec![
            ("CNI_COMMAND", "ADD".into()),
            ("CNI_CONTAINERID", format!("junk{i}")),
            ("CNI_NETNS", netns.clone()),
            ("CNI_IFNAME", "eth0".into()),
            ("CNI_PATH", "/usr/lib/cni".into()),
        ];
        let mut conf = good.clone();
        let stdin: Vec<u8> = match i % 8 {
            0 => (0..rng.next() % 300).map(|_| rng.next() as u8).collect(),
            1 => {
                let text = good.to_string();
                text.as_bytes()[..(rng.next() as usize % text.len())].to_vec()
            }
            2 => {
                env.retain(|(k, _)| {
                    *k != *rng.pick(&["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"])
                });
                conf.to_string().into_bytes()
            }
            3 => {
                conf["cniVersion"] = rng
                    .pick(&[
                        json!("0.0.9"),
                        json!("9.9.9"),
                        json!("abc"),
                        json!(5),
                        json!(null),
                    ])
                    .clone();
                conf.to_string().into_bytes()
            }
            4 => {
                let bad = rng
                    .pick(&[
                        json!(["999.1.1.1"]),
                        json!(["x"]),
                        json!([42]),
                        json!("10.244.1.5"),
                        json!(["10.244.1.5/99"]),
                        json!(["10.9.9.9/24"]),
                    ])
                    .clone();
                conf["runtimeConfig"] = json!({"ips": bad});
                conf.to_string().into_bytes()
            }
            5 => {
                let (k, v) = rng.pick(&[
                    ("CNI_COMMAND", "ATTACH"),
                    ("CNI_CONTAINERID", "bad id!"),
                    ("CNI_IFNAME", "this-name-is-too-long"),
                    ("CNI_IFNAME", "a/b"),
                    ("CNI_ARGS", "K8S_POD_NAME"),
                ]);
                env.retain(|(key, _)| key != k);
                env.push((k, v.to_string()));
                conf.to_string().into_bytes()
            }
            6 => {
                let (k, v) = rng
                    .pick(&[
                        ("name", json!(5)),
                        ("runtimeConfig", json!("x")),
                        ("socket", json!("")),
                        ("prevResult", json!([1])),
                    ])
                    .clone();
                conf[k] = v;
                conf.to_string().into_bytes()
            }
            // Valid for the plugin, refused by fabricd: the pod already has eth0, so the ADD
            // fails after an address was allocated and must give it back.
            _ => conf.to_string().into_bytes(),
        };
        let env: Vec<(String, String)> = env.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let out = lab.cni_exec("node1", "fabric-cni", &env, &stdin).unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(1),
            "input {i}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let error: Value =
            serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("input {i}: {e}: {stdout}"));
        assert!(error["code"].as_u64().is_some(), "input {i}: {stdout}");
        assert!(
            error["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "input {i}: {stdout}"
        );
    }
    assert_eq!(
        node_footprint(&lab),
        before,
        "the pool or the links changed"
    );
    lab.cni(
        "node1",
        CniCommand::Check,
        &lab.pod_invocation(&victim),
        None,
    )
    .unwrap();
}
