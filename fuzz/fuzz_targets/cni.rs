//! Fuzzes the CNI plugin's input: the `CNI_*` environment and the network configuration on
//! stdin, through `fabric_cni::plugin::run`, the whole invocation `fabric-cni`'s `main` makes
//! (environment parsing, `NetConf::parse`, the request to fabricd, the result rendered in the
//! configuration's CNI version, with `prevResult`), against a fake fabricd that answers ADD
//! with a result and every other verb with success. The request the plugin sends goes through
//! fabricd's own decoding of its socket's lines (`cni::api::Request` from JSON).
//!
//! Input: `KEY=VALUE` lines (the environment), an empty line, then stdin. Without an empty
//! line, the whole input is stdin for an ADD with a valid environment.
//!
//! Beyond "no panic": the exit code is 0 or 1; stdout is a JSON document (empty only for a
//! successful DEL, CHECK, STATUS or GC) and a failure's names a CNI error code; the request
//! fabricd gets decodes to what the plugin sent.
//!
//! Run: `scripts/fuzz.sh --smoke` / `--long` (all targets), or one:
//! `scripts/fuzz.sh cni -- -max_total_time=60`.
#![no_main]

use fabric_fuzz as _;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::Ipv4Addr;

use fabric_cni::api::{AddResult, Interface, IpConfig, Request, Response, Route};
use fabric_cni::config::{requested_version, NetConf};
use fabric_cni::plugin::run;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// The environment a runtime sets for an ADD.
const ADD_ENV: &str = "CNI_COMMAND=ADD\nCNI_CONTAINERID=c1\nCNI_NETNS=/var/run/netns/p1\n\
                       CNI_IFNAME=eth0\nCNI_ARGS=K8S_POD_NAMESPACE=ns;K8S_POD_NAME=pod\n\
                       CNI_PATH=/opt/cni/bin";

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

fuzz_target!(|data: &[u8]| {
    let (env_text, stdin) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (String::from_utf8_lossy(&data[..i]), &data[i + 2..]),
        None => (ADD_ENV.into(), data),
    };
    // The runtime's environment: later variables override earlier ones, as in a process's.
    let env: HashMap<String, String> = env_text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();

    let _ = NetConf::parse(stdin);
    let _ = requested_version(stdin);

    let sent = RefCell::new(None);
    let outcome = run(&env, stdin, |_socket, request, _timeout| {
        *sent.borrow_mut() = Some(request.clone());
        Ok(Response::Ok {
            result: matches!(request, Request::Add(_)).then(add_result),
        })
    });

    assert!(outcome.exit_code == 0 || outcome.exit_code == 1);
    if outcome.stdout.is_empty() {
        assert_eq!(outcome.exit_code, 0, "a failure prints a CNI error");
        let verb = env.get("CNI_COMMAND").map(String::as_str);
        assert!(
            matches!(verb, Some("DEL" | "CHECK" | "STATUS" | "GC")),
            "{verb:?} prints a result"
        );
    } else {
        let doc: Value = serde_json::from_str(&outcome.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", outcome.stdout));
        if outcome.exit_code == 1 {
            assert!(doc["code"].is_u64(), "a CNI error has a code: {doc}");
        }
    }

    // What fabricd reads from its socket: one JSON line per request.
    if let Some(request) = sent.into_inner() {
        let line = serde_json::to_string(&request).expect("a request encodes");
        assert!(!line.contains('\n'), "a request is one line");
        let back: Request = serde_json::from_str(&line).expect("fabricd decodes the request");
        assert_eq!(back, request);
    }
});
