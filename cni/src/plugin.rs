//! One plugin invocation, start to finish: the runtime's environment and stdin in, one
//! request to fabricd, the runtime's stdout and exit code out.
//!
//! Everything but the transport is pure, so [`run`] can be driven by a fake fabricd.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::api::{codes, AddResult, Attachment, CallError, CniError, Request, Response};
use crate::config::{self, NetConf};
use crate::env::{Command, Container, Env};
use crate::result;
use crate::version::{self, Version};

/// What the runtime gets back: stdout and the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// A JSON document and a newline, or nothing (DEL, CHECK, STATUS and GC on success).
    pub stdout: String,
    /// 0 on success, 1 with a CNI error on stdout.
    pub exit_code: i32,
}

impl Outcome {
    /// Success, printing `doc` if there is one.
    pub fn success(doc: Option<&Value>) -> Self {
        Self {
            stdout: doc.map(|doc| format!("{doc:#}\n")).unwrap_or_default(),
            exit_code: 0,
        }
    }

    /// Failure, printing `error` the way the spec shows CNI errors.
    pub fn failure(version: Version, error: &CniError) -> Self {
        let doc = json!({
            "cniVersion": version.as_str(),
            "code": error.code,
            "msg": error.msg,
            "details": error.details,
        });
        Self {
            stdout: format!("{doc:#}\n"),
            exit_code: 1,
        }
    }
}

/// Carries one request to fabricd: [`crate::api::call`], or a fake in tests.
trait Transport: FnOnce(&Path, &Request, Duration) -> Result<Response, CallError> {}

impl<F> Transport for F where F: FnOnce(&Path, &Request, Duration) -> Result<Response, CallError> {}

/// Serves one invocation described by the `CNI_*` variables in `env` and the network
/// configuration in `stdin`, sending at most one request through `call`.
pub fn run(
    env: &HashMap<String, String>,
    stdin: &[u8],
    call: impl FnOnce(&Path, &Request, Duration) -> Result<Response, CallError>,
) -> Outcome {
    match execute(env, stdin, call) {
        Ok(doc) => Outcome::success(doc.as_ref()),
        Err(error) => Outcome::failure(reply_version(stdin), &error),
    }
}

/// The failure to report when stdin itself cannot be read.
pub fn unreadable_stdin(error: &io::Error) -> Outcome {
    let error = CniError::new(
        codes::IO_FAILURE,
        "cannot read the network configuration from stdin",
        error.to_string(),
    );
    Outcome::failure(Version::LATEST, &error)
}

fn execute(
    env: &HashMap<String, String>,
    stdin: &[u8],
    call: impl Transport,
) -> Result<Option<Value>, CniError> {
    let conf = || NetConf::parse(stdin);
    match Env::from_map(env)?.command {
        Command::Version => version(stdin),
        Command::Add(container) => add(&conf()?, container, call),
        Command::Del(container) => forward(&conf()?, container, Request::Del, call),
        Command::Check(container) => forward(&conf()?, container, Request::Check, call),
        Command::Status => status(&conf()?, call),
        Command::Gc => gc(&conf()?, call),
    }
}

/// The version errors are phrased in: the configuration's if supported, else the latest.
fn reply_version(stdin: &[u8]) -> Version {
    config::requested_version(stdin)
        .ok()
        .flatten()
        .and_then(|v| Version::parse(&v).ok())
        .unwrap_or(Version::LATEST)
}

fn version(stdin: &[u8]) -> Result<Option<Value>, CniError> {
    let requested = config::requested_version(stdin)?;
    let requested = requested.as_deref().unwrap_or(Version::LATEST.as_str());
    Ok(Some(version::version_info(requested)))
}

fn add(
    conf: &NetConf,
    container: Container,
    call: impl Transport,
) -> Result<Option<Value>, CniError> {
    let request = Request::Add(attachment(conf, container));
    let ours = ask(conf, &request, codes::TRY_AGAIN_LATER, call)?.ok_or_else(|| {
        CniError::new(
            codes::PLUGIN_SPECIFIC,
            "fabricd answered ADD without a result",
            "this is a bug in fabricd; its logs may say more",
        )
    })?;
    let prev = conf.prev_result.as_ref();
    Ok(Some(result::render(&ours, conf.cni_version, prev)))
}

/// DEL and CHECK: fabricd does the work, the runtime only needs to hear it went well.
fn forward(
    conf: &NetConf,
    container: Container,
    verb: fn(Attachment) -> Request,
    call: impl Transport,
) -> Result<Option<Value>, CniError> {
    let request = verb(attachment(conf, container));
    ask(conf, &request, codes::TRY_AGAIN_LATER, call).map(|_| None)
}

fn status(conf: &NetConf, call: impl Transport) -> Result<Option<Value>, CniError> {
    require_1_1(conf, "STATUS")?;
    ask(conf, &Request::Status, codes::PLUGIN_NOT_AVAILABLE, call).map(|_| None)
}

fn gc(conf: &NetConf, call: impl Transport) -> Result<Option<Value>, CniError> {
    require_1_1(conf, "GC")?;
    // Without the list, GC would remove every attachment on the node.
    let valid = conf.valid_attachments.clone().ok_or_else(|| {
        CniError::new(
            codes::INVALID_CONFIG,
            "GC needs cni.dev/valid-attachments in the network configuration",
            "refusing to garbage-collect without knowing which attachments are in use",
        )
    })?;
    ask(conf, &Request::Gc { valid }, codes::TRY_AGAIN_LATER, call).map(|_| None)
}

/// STATUS and GC exist from CNI 1.1.0 on.
fn require_1_1(conf: &NetConf, verb: &str) -> Result<(), CniError> {
    if conf.cni_version >= Version::V1_1_0 {
        return Ok(());
    }
    Err(CniError::new(
        codes::INCOMPATIBLE_VERSION,
        format!(
            "{verb} needs cniVersion 1.1.0, the configuration has {}",
            conf.cni_version
        ),
        "",
    ))
}

fn attachment(conf: &NetConf, container: Container) -> Attachment {
    Attachment {
        key: container.key,
        netns: container.netns,
        ips: conf.runtime.ips.clone(),
        labels: conf.runtime.labels.clone(),
        ports: conf.runtime.container_ports.clone(),
        pod_namespace: container.args.pod_namespace,
        pod_name: container.args.pod_name,
    }
}

/// Sends `request` to fabricd; `down_code` is the CNI error code for an unreachable daemon.
fn ask(
    conf: &NetConf,
    request: &Request,
    down_code: u32,
    call: impl Transport,
) -> Result<Option<AddResult>, CniError> {
    match call(&conf.socket, request, conf.timeout) {
        Ok(Response::Ok { result }) => Ok(result),
        Ok(Response::Error(error)) => Err(error),
        Ok(Response::Dataplane { .. } | Response::Policy(_) | Response::Checkpoint { .. }) => {
            Err(CniError::new(
                codes::PLUGIN_SPECIFIC,
                "fabricd answered with something other than a CNI result",
                "",
            ))
        }
        Err(error) => Err(call_failure(conf, error, down_code)),
    }
}

/// Phrases a failed call so the operator knows what to look at.
fn call_failure(conf: &NetConf, error: CallError, down_code: u32) -> CniError {
    let socket = conf.socket.display();
    match error {
        CallError::Connect(e) => CniError::new(
            down_code,
            format!(
                "fabricd is not reachable at {socket}: \
                 is the fabricd DaemonSet/service running on this node?"
            ),
            e.to_string(),
        ),
        CallError::Io(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            CniError::new(
                down_code,
                format!(
                    "fabricd at {socket} did not answer within {}s: \
                     is it overloaded or stuck? (see its logs, or raise timeoutSeconds)",
                    conf.timeout.as_secs()
                ),
                e.to_string(),
            )
        }
        CallError::Io(e) => CniError::new(
            down_code,
            format!("lost the connection to fabricd at {socket}: is it restarting?"),
            e.to_string(),
        ),
        CallError::Decode(e) => CniError::new(
            codes::PLUGIN_SPECIFIC,
            format!(
                "fabricd at {socket} sent an answer this plugin cannot decode: \
                 are the plugin binary and fabricd the same version?"
            ),
            e.to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Interface, IpConfig, Route};
    use std::cell::RefCell;
    use std::net::{IpAddr, Ipv4Addr};

    fn env(command: &str) -> HashMap<String, String> {
        [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/var/run/netns/p1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=pod"),
            ("CNI_PATH", "/opt/cni/bin"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn conf(version: &str) -> String {
        json!({
            "cniVersion": version,
            "name": "fabric",
            "type": "fabric-cni",
            "socket": "/run/test.sock",
            "timeoutSeconds": 3,
            "runtimeConfig": {
                "ips": ["10.244.1.9/24"],
                "labels": {"app": "web"},
                "containerPorts": [{"name": "serve-80-tcp", "containerPort": 80, "protocol": "TCP"}],
            },
            "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}],
        })
        .to_string()
    }

    fn add_result() -> AddResult {
        AddResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "aa:bb:cc:dd:ee:ff".into(),
                sandbox: Some("/var/run/netns/p1".into()),
            }],
            ips: vec![IpConfig {
                address: "10.244.1.9/24".into(),
                gateway: Some(Ipv4Addr::new(10, 244, 1, 1).into()),
                interface: Some(0),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".into(),
                gw: None,
            }],
        }
    }

    /// Runs the plugin against a fake fabricd that records the request and answers `answer`.
    fn run_with(
        env: &HashMap<String, String>,
        stdin: &str,
        answer: Result<Response, CallError>,
    ) -> (Outcome, Option<Request>) {
        let seen = RefCell::new(None);
        let outcome = run(env, stdin.as_bytes(), |socket, request, timeout| {
            assert_eq!(socket, Path::new("/run/test.sock"));
            assert_eq!(timeout, Duration::from_secs(3));
            *seen.borrow_mut() = Some(request.clone());
            answer
        });
        (outcome, seen.into_inner())
    }

    fn json_of(outcome: &Outcome) -> Value {
        serde_json::from_str(&outcome.stdout).unwrap()
    }

    fn ok(result: Option<AddResult>) -> Result<Response, CallError> {
        Ok(Response::Ok { result })
    }

    fn refused() -> Result<Response, CallError> {
        Err(CallError::Connect(io::ErrorKind::ConnectionRefused.into()))
    }

    #[test]
    fn add_forwards_everything_and_prints_the_result() {
        let (outcome, request) = run_with(&env("ADD"), &conf("1.1.0"), ok(Some(add_result())));
        assert_eq!(outcome.exit_code, 0);
        let doc = json_of(&outcome);
        assert_eq!(doc["cniVersion"], "1.1.0");
        assert_eq!(doc["ips"][0]["address"], "10.244.1.9/24");
        assert_eq!(doc["ips"][0]["gateway"], "10.244.1.1");
        assert_eq!(doc["dns"], json!({}));
        let Some(Request::Add(attachment)) = request else {
            panic!("expected ADD, got {request:?}");
        };
        assert_eq!(attachment.key.container_id, "c1");
        assert_eq!(attachment.key.ifname, "eth0");
        assert_eq!(attachment.netns.as_deref(), Some("/var/run/netns/p1"));
        assert_eq!(attachment.ips, [IpAddr::V4(Ipv4Addr::new(10, 244, 1, 9))]);
        assert_eq!(attachment.labels["app"], "web");
        assert_eq!(
            attachment.ports,
            [crate::api::ContainerPort {
                name: Some("serve-80-tcp".into()),
                container_port: 80,
                protocol: crate::api::PortProtocol::Tcp,
            }]
        );
        assert_eq!(attachment.pod_namespace.as_deref(), Some("ns"));
        assert_eq!(attachment.pod_name.as_deref(), Some("pod"));
    }

    #[test]
    fn add_result_follows_the_config_version() {
        let (outcome, _) = run_with(&env("ADD"), &conf("0.4.0"), ok(Some(add_result())));
        let doc = json_of(&outcome);
        assert_eq!(doc["cniVersion"], "0.4.0");
        assert_eq!(doc["ips"][0]["version"], "4");
    }

    #[test]
    fn add_chains_after_prev_result() {
        let mut stdin: Value = serde_json::from_str(&conf("1.0.0")).unwrap();
        stdin["prevResult"] = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "bond0"}, {"name": "net1"}],
            "ips": [{"address": "192.168.0.2/24", "interface": 1}],
            "dns": {"search": ["svc"]},
        });
        let (outcome, _) = run_with(&env("ADD"), &stdin.to_string(), ok(Some(add_result())));
        let doc = json_of(&outcome);
        assert_eq!(doc["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(doc["interfaces"][2]["name"], "eth0");
        assert_eq!(doc["ips"][0]["address"], "192.168.0.2/24");
        assert_eq!(doc["ips"][1]["interface"], 2);
        assert_eq!(doc["dns"]["search"][0], "svc");
    }

    #[test]
    fn add_without_result_is_a_daemon_bug() {
        let (outcome, _) = run_with(&env("ADD"), &conf("1.1.0"), ok(None));
        assert_eq!(json_of(&outcome)["code"], codes::PLUGIN_SPECIFIC);
    }

    #[test]
    fn del_check_status_gc_print_nothing() {
        for (verb, op) in [
            ("DEL", "del"),
            ("CHECK", "check"),
            ("STATUS", "status"),
            ("GC", "gc"),
        ] {
            let (outcome, request) = run_with(&env(verb), &conf("1.1.0"), ok(None));
            assert_eq!(outcome, Outcome::success(None), "{verb}");
            let sent = serde_json::to_value(request.unwrap()).unwrap();
            assert_eq!(sent["op"], op);
        }
    }

    #[test]
    fn gc_sends_the_valid_attachments() {
        let (_, request) = run_with(&env("GC"), &conf("1.1.0"), ok(None));
        let Some(Request::Gc { valid }) = request else {
            panic!("expected GC, got {request:?}");
        };
        assert_eq!(valid.len(), 1);
        assert_eq!(valid[0].container_id, "c1");
    }

    #[test]
    fn gc_without_valid_attachments_is_refused() {
        let stdin = json!({"cniVersion": "1.1.0", "name": "fabric"}).to_string();
        let outcome = run(&env("GC"), stdin.as_bytes(), |_, _, _| unreachable!());
        assert_eq!(json_of(&outcome)["code"], codes::INVALID_CONFIG);
    }

    #[test]
    fn status_and_gc_need_1_1_0() {
        for verb in ["STATUS", "GC"] {
            let outcome = run(
                &env(verb),
                conf("1.0.0").as_bytes(),
                |_, _, _| unreachable!(),
            );
            assert_eq!(
                json_of(&outcome)["code"],
                codes::INCOMPATIBLE_VERSION,
                "{verb}"
            );
        }
    }

    #[test]
    fn unreachable_daemon_is_try_again_later() {
        for verb in ["ADD", "DEL", "CHECK", "GC"] {
            let (outcome, _) = run_with(&env(verb), &conf("1.1.0"), refused());
            assert_eq!(outcome.exit_code, 1);
            let doc = json_of(&outcome);
            assert_eq!(doc["code"], codes::TRY_AGAIN_LATER, "{verb}");
            assert_eq!(doc["cniVersion"], "1.1.0");
            let msg = doc["msg"].as_str().unwrap();
            assert!(
                msg.contains("/run/test.sock") && msg.contains("DaemonSet"),
                "{msg}"
            );
        }
    }

    #[test]
    fn unreachable_daemon_is_plugin_not_available_for_status() {
        let (outcome, _) = run_with(&env("STATUS"), &conf("1.1.0"), refused());
        assert_eq!(json_of(&outcome)["code"], codes::PLUGIN_NOT_AVAILABLE);
    }

    #[test]
    fn broken_calls_are_mapped() {
        let timed_out = Err(CallError::Io(io::ErrorKind::WouldBlock.into()));
        let (outcome, _) = run_with(&env("ADD"), &conf("1.1.0"), timed_out);
        let doc = json_of(&outcome);
        assert_eq!(doc["code"], codes::TRY_AGAIN_LATER);
        assert!(doc["msg"].as_str().unwrap().contains("3s"));

        let reset = Err(CallError::Io(io::ErrorKind::ConnectionReset.into()));
        let (outcome, _) = run_with(&env("DEL"), &conf("1.1.0"), reset);
        assert_eq!(json_of(&outcome)["code"], codes::TRY_AGAIN_LATER);

        let garbage = serde_json::from_str::<Response>("nope").unwrap_err();
        let (outcome, _) = run_with(&env("ADD"), &conf("1.1.0"), Err(CallError::Decode(garbage)));
        assert_eq!(json_of(&outcome)["code"], codes::PLUGIN_SPECIFIC);
    }

    #[test]
    fn daemon_errors_are_printed_as_is() {
        let not_ready = CniError::new(codes::TRY_AGAIN_LATER, "fabricd is not ready", "no lease");
        let (outcome, _) = run_with(&env("ADD"), &conf("0.4.0"), Ok(Response::Error(not_ready)));
        assert_eq!(outcome.exit_code, 1);
        assert_eq!(
            json_of(&outcome),
            json!({"cniVersion": "0.4.0", "code": 11, "msg": "fabricd is not ready", "details": "no lease"})
        );
    }

    #[test]
    fn version_needs_no_config() {
        let version_env = HashMap::from([("CNI_COMMAND".to_owned(), "VERSION".to_owned())]);
        for (stdin, expected) in [
            ("", "1.1.0"),
            (r#"{"cniVersion": "0.4.0"}"#, "0.4.0"),
            (r#"{"cniVersion": "0.3.1"}"#, "0.3.1"),
        ] {
            let outcome = run(&version_env, stdin.as_bytes(), |_, _, _| unreachable!());
            assert_eq!(outcome.exit_code, 0);
            let doc = json_of(&outcome);
            assert_eq!(doc["cniVersion"], expected);
            assert_eq!(doc["supportedVersions"], json!(version::supported()));
        }
        let outcome = run(&version_env, b"{garbage", |_, _, _| unreachable!());
        assert_eq!(json_of(&outcome)["code"], codes::DECODE_FAILURE);
    }

    #[test]
    fn input_errors_never_reach_the_daemon() {
        let cases: [(HashMap<String, String>, String, u32); 5] = [
            (HashMap::new(), conf("1.1.0"), codes::INVALID_ENV),
            (env("ADD"), "{".into(), codes::DECODE_FAILURE),
            (env("ADD"), conf("9.9.9"), codes::INCOMPATIBLE_VERSION),
            (
                env("ADD"),
                r#"{"cniVersion": "1.1.0"}"#.into(),
                codes::INVALID_CONFIG,
            ),
            (env("NOPE"), conf("1.1.0"), codes::INVALID_ENV),
        ];
        for (env, stdin, code) in cases {
            let outcome = run(&env, stdin.as_bytes(), |_, _, _| unreachable!());
            assert_eq!(outcome.exit_code, 1);
            assert_eq!(json_of(&outcome)["code"], code, "{stdin}");
        }
    }

    #[test]
    fn invalid_container_ports_never_reach_the_daemon() {
        let mut stdin: Value = serde_json::from_str(&conf("1.1.0")).unwrap();
        stdin["runtimeConfig"]["containerPorts"] = json!([{"name": "Web", "containerPort": 80}]);
        let outcome = run(
            &env("ADD"),
            stdin.to_string().as_bytes(),
            |_, _, _| unreachable!(),
        );
        assert_eq!(outcome.exit_code, 1);
        let doc = json_of(&outcome);
        assert_eq!(doc["code"], codes::INVALID_CONFIG);
        assert_eq!(
            doc["msg"],
            "runtimeConfig.containerPorts[0].name \"Web\" is not a valid port name"
        );
        assert!(
            doc["details"].as_str().unwrap().contains("lowercase"),
            "{doc}"
        );
    }

    #[test]
    fn errors_use_the_config_version_when_supported() {
        let mut no_ifname = env("ADD");
        no_ifname.remove("CNI_IFNAME");
        let outcome = run(
            &no_ifname,
            conf("0.4.0").as_bytes(),
            |_, _, _| unreachable!(),
        );
        assert_eq!(json_of(&outcome)["cniVersion"], "0.4.0");
        let outcome = run(
            &env("ADD"),
            conf("0.1.0").as_bytes(),
            |_, _, _| unreachable!(),
        );
        assert_eq!(json_of(&outcome)["cniVersion"], "1.1.0");
    }
}
