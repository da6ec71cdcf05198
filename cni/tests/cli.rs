//! The `fabric-cni` binary, run the way a container runtime runs it: `CNI_*`
//! variables in a clean environment, the network configuration on stdin.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;

use fabric_cni::api::{AddResult, Interface, IpConfig, Request, Response, Route};
use serde_json::{json, Value};

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("fabric-cni-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn socket(&self) -> PathBuf {
        self.0.join("fabricd.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What one run of the plugin produced.
struct Run {
    stdout: String,
    exit_code: Option<i32>,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }

    /// Asserts a CNI error and returns its code.
    fn error_code(&self) -> u64 {
        assert_eq!(self.exit_code, Some(1), "stdout: {}", self.stdout);
        let doc = self.json();
        assert!(doc["msg"].is_string(), "{doc}");
        doc["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no numeric code: {doc}"))
    }
}

fn plugin(vars: &[(&str, &str)], stdin: &[u8]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fabric-cni"))
        .env_clear()
        .envs(vars.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let output = child.wait_with_output().unwrap();
    Run {
        stdout: String::from_utf8(output.stdout).unwrap(),
        exit_code: output.status.code(),
    }
}

fn container_env(command: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "3f9a0c1d"),
        ("CNI_NETNS", "/var/run/netns/cni-1234"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
        ),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
}

fn config(version: &str, socket: &Path) -> Value {
    json!({
        "cniVersion": version,
        "name": "fabric",
        "type": "fabric-cni",
        "socket": socket,
        "timeoutSeconds": 5,
        "runtimeConfig": {"ips": ["10.244.1.7/24"], "labels": {"app": "web"}},
        "cni.dev/valid-attachments": [{"containerID": "3f9a0c1d", "ifname": "eth0"}],
    })
}

#[test]
fn add_without_fabricd_is_try_again_later() {
    let dir = TempDir::new("add-down");
    let stdin = config("1.1.0", &dir.socket()).to_string();
    let run = plugin(&container_env("ADD"), stdin.as_bytes());
    assert_eq!(run.error_code(), 11);
    let doc = run.json();
    assert_eq!(doc["cniVersion"], "1.1.0");
    let msg = doc["msg"].as_str().unwrap();
    assert!(msg.contains(dir.socket().to_str().unwrap()), "{msg}");
}

#[test]
fn status_without_fabricd_is_plugin_not_available() {
    let dir = TempDir::new("status-down");
    let stdin = config("1.1.0", &dir.socket()).to_string();
    let run = plugin(&[("CNI_COMMAND", "STATUS")], stdin.as_bytes());
    assert_eq!(run.error_code(), 50);
}

#[test]
fn version_lists_supported_versions() {
    for (stdin, expected) in [(&b""[..], "1.1.0"), (br#"{"cniVersion":"1.0.0"}"#, "1.0.0")] {
        let run = plugin(&[("CNI_COMMAND", "VERSION")], stdin);
        assert_eq!(run.exit_code, Some(0));
        assert_eq!(
            run.json(),
            json!({"cniVersion": expected, "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]})
        );
    }
}

/// xorshift64: deterministic, dependency-free randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Bytes that are invalid anywhere in a JSON text, so garbling never yields valid JSON.
const POISON: [u8; 5] = [0x00, 0x01, 0x1b, 0xc0, 0xff];

/// One malformed input. The socket never exists and VERSION is never asked for, so
/// every case must end in a CNI error, whichever check catches it.
fn malformed_input(rng: &mut Rng, socket: &Path) -> (Vec<(&'static str, &'static str)>, Vec<u8>) {
    let command = *rng.pick(&["ADD", "DEL", "CHECK", "STATUS", "GC", "", "add", "BOGUS"]);
    let mut vars = container_env(command);
    match rng.below(6) {
        0 => {
            let gone = *rng.pick(&["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"]);
            vars.retain(|(k, _)| *k != gone);
        }
        1 => vars.push((
            "CNI_IFNAME",
            *rng.pick(&["", ".", "..", "a/b", "x:y", "a b", "abcdefghijklmnop"]),
        )),
        2 => vars.push((
            "CNI_CONTAINERID",
            *rng.pick(&["", "-x", "a b", "../etc", "é"]),
        )),
        3 => vars.push((
            "CNI_ARGS",
            *rng.pick(&["junk", "K8S_POD_NAME", "=x", "a=b;;c"]),
        )),
        _ => {}
    }
    let mut conf = config("1.1.0", socket);
    match rng.below(4) {
        0 => {
            conf["cniVersion"] =
                json!(*rng.pick(&["0.1.0", "0.3.1", "9.9.9", "garbage", "", "1.1"]))
        }
        1 => {
            conf["runtimeConfig"]["ips"] =
                json!([*rng.pick(&["10.0.0.300", "fd00::1", "10.0.0.1/99", "x", ""])])
        }
        2 => {
            let key = *rng.pick(&[
                "cniVersion",
                "name",
                "socket",
                "timeoutSeconds",
                "runtimeConfig",
                "prevResult",
            ]);
            // Never null: a null socket would mean the default one, which may be live.
            conf[key] = rng
                .pick(&[json!(42), json!(["x"]), json!(-1), json!(true)])
                .clone();
        }
        _ => {}
    }
    let mut stdin = conf.to_string().into_bytes();
    match rng.below(5) {
        0 => stdin.truncate(rng.below(stdin.len())),
        1 => {
            for _ in 0..=rng.below(4) {
                let at = rng.below(stdin.len());
                stdin[at] = *rng.pick(&POISON);
            }
        }
        2 => stdin = (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
        _ => {}
    }
    (vars, stdin)
}

#[test]
fn malformed_inputs_always_get_a_cni_error() {
    let dir = TempDir::new("fuzz");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut seen = BTreeSet::new();
    for case in 0..200 {
        let (vars, stdin) = malformed_input(&mut rng, &dir.socket());
        let run = plugin(&vars, &stdin);
        assert_ne!(run.exit_code, Some(101), "case {case} panicked");
        seen.insert(run.error_code());
    }
    // Every check that can reject an invocation was reached.
    assert_eq!(seen, BTreeSet::from([1, 4, 6, 7, 11, 50]));
}

fn add_result() -> AddResult {
    AddResult {
        interfaces: vec![
            Interface {
                name: "fab1a2b3c4".into(),
                mac: "02:00:0a:f4:01:01".into(),
                sandbox: None,
            },
            Interface {
                name: "eth0".into(),
                mac: "02:00:0a:f4:01:07".into(),
                sandbox: Some("/var/run/netns/cni-1234".into()),
            },
        ],
        ips: vec![IpConfig {
            address: "10.244.1.7/24".into(),
            gateway: Some(Ipv4Addr::new(10, 244, 1, 1).into()),
            interface: Some(1),
        }],
        routes: vec![Route {
            dst: "0.0.0.0/0".into(),
            gw: Some(Ipv4Addr::new(10, 244, 1, 1).into()),
        }],
    }
}

/// A fabricd that answers `answers` connections, one each, and returns what it was asked.
fn fake_fabricd(socket: &Path, answers: Vec<Response>) -> thread::JoinHandle<Vec<Request>> {
    let listener = UnixListener::bind(socket).unwrap();
    thread::spawn(move || {
        answers
            .into_iter()
            .map(|answer| {
                let (stream, _) = listener.accept().unwrap();
                let mut line = String::new();
                BufReader::new(&stream).read_line(&mut line).unwrap();
                let mut reply = serde_json::to_vec(&answer).unwrap();
                reply.push(b'\n');
                (&stream).write_all(&reply).unwrap();
                serde_json::from_str(&line).unwrap()
            })
            .collect()
    })
}

#[test]
fn add_and_del_through_a_fake_fabricd() {
    let dir = TempDir::new("fake");
    let added = Response::Ok {
        result: Some(add_result()),
    };
    let daemon = fake_fabricd(
        &dir.socket(),
        vec![added.clone(), added, Response::Ok { result: None }],
    );

    let stdin = config("1.1.0", &dir.socket()).to_string();
    let run = plugin(&container_env("ADD"), stdin.as_bytes());
    assert_eq!(run.exit_code, Some(0), "{}", run.stdout);
    assert_eq!(
        run.json(),
        json!({
            "cniVersion": "1.1.0",
            "interfaces": [
                {"name": "fab1a2b3c4", "mac": "02:00:0a:f4:01:01"},
                {"name": "eth0", "mac": "02:00:0a:f4:01:07", "sandbox": "/var/run/netns/cni-1234"},
            ],
            "ips": [{"address": "10.244.1.7/24", "gateway": "10.244.1.1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
            "dns": {},
        })
    );

    let stdin = config("0.4.0", &dir.socket()).to_string();
    let run = plugin(&container_env("ADD"), stdin.as_bytes());
    assert_eq!(run.exit_code, Some(0), "{}", run.stdout);
    let doc = run.json();
    assert_eq!(doc["cniVersion"], "0.4.0");
    assert_eq!(
        doc["ips"],
        json!([{"version": "4", "address": "10.244.1.7/24", "gateway": "10.244.1.1", "interface": 1}])
    );

    let stdin = config("1.1.0", &dir.socket()).to_string();
    let run = plugin(&container_env("DEL"), stdin.as_bytes());
    assert_eq!((run.exit_code, run.stdout.as_str()), (Some(0), ""));

    let requests = daemon.join().unwrap();
    let Request::Add(attachment) = &requests[0] else {
        panic!("expected ADD, got {:?}", requests[0]);
    };
    assert_eq!(attachment.key.container_id, "3f9a0c1d");
    assert_eq!(attachment.netns.as_deref(), Some("/var/run/netns/cni-1234"));
    assert_eq!(attachment.ips, [Ipv4Addr::new(10, 244, 1, 7)]);
    assert_eq!(attachment.labels["app"], "web");
    assert_eq!(attachment.pod_namespace.as_deref(), Some("default"));
    assert_eq!(attachment.pod_name.as_deref(), Some("web-0"));
    assert!(matches!(&requests[2], Request::Del(a) if a.key.ifname == "eth0"));
}
