//! End-to-end tests of etcd with TLS and authentication (`fabric-lab up --etcd-tls`): the
//! cluster works with fabricd and fabricctl as least-privilege etcd users, and what an
//! attacker on the underlay tries is refused, each with our tools' own explanation.

use std::path::PathBuf;
use std::process::Output;

use fabric_lab::{Backend, Lab, LabSpec, PodSpec};
use fabric_tests::{ping, spec, up};

/// A deny-all-ingress policy for namespace `default`.
const POLICY: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny
  namespace: default
spec:
  podSelector: {}
  policyTypes: [Ingress]
"#;

fn tls_spec(tag: &str, pods_per_node: usize) -> LabSpec {
    let mut spec = spec(tag, 2, pods_per_node, Backend::Vxlan);
    spec.etcd_tls = true;
    spec
}

/// The lab's etcd PKI dir and a file in it.
fn pki(lab: &Lab, file: &str) -> String {
    lab.state_dir()
        .join("etcd-pki")
        .join(file)
        .display()
        .to_string()
}

/// The command line of fabricd on `node`, from /proc.
fn fabricd_cmdline(lab: &Lab, node: &str) -> String {
    let pid = lab
        .node(node)
        .unwrap()
        .fabricd
        .as_ref()
        .expect("fabricd runs")
        .pid;
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn fabricctl_bin(lab: &Lab) -> String {
    lab.state().bin_dir.join("fabricctl").display().to_string()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs fabricctl from node1 with exactly `flags` (no lab defaults), then `args`.
fn fabricctl_as(lab: &Lab, flags: &[String], args: &[&str]) -> Output {
    let bin = fabricctl_bin(lab);
    let mut argv: Vec<&str> = vec![&bin];
    argv.extend(flags.iter().map(String::as_str));
    argv.extend(args);
    lab.exec("node1", &argv).expect("running fabricctl")
}

/// The https endpoint and CA flags every client needs.
fn base_flags(lab: &Lab) -> Vec<String> {
    let access = lab.etcd_access("fabricctl");
    vec![
        "--etcd-endpoints".into(),
        access.endpoints.join(","),
        "--etcd-cafile".into(),
        pki(lab, "ca.crt"),
    ]
}

fn cert_flags(lab: &Lab, user: &str) -> Vec<String> {
    vec![
        "--etcd-certfile".into(),
        pki(lab, &format!("etcd-{user}.crt")),
        "--etcd-keyfile".into(),
        pki(lab, &format!("etcd-{user}.key")),
    ]
}

fn user_flags(lab: &Lab, user: &str) -> Vec<String> {
    vec![
        "--etcd-username".into(),
        user.into(),
        "--etcd-password-file".into(),
        pki(lab, &format!("{user}.password")),
    ]
}

/// All of a user's flags: endpoint, CA, certificate, user and password file.
fn full_flags(lab: &Lab, user: &str) -> Vec<String> {
    [
        base_flags(lab),
        cert_flags(lab, user),
        user_flags(lab, user),
    ]
    .concat()
}

/// Asserts `out` failed and says `expected`.
fn assert_refused(what: &str, out: &Output, expected: &str) {
    let said = text(out);
    assert!(!out.status.success(), "{what} must fail, it said: {said}");
    assert!(
        said.contains(expected),
        "{what}: expected {expected:?} in: {said}"
    );
}

/// etcdctl from node1 with `flags`, then `args`; the password only in the environment.
fn etcdctl(lab: &Lab, flags: &[String], password_of: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = lab
        .exec_cmd("node1", &["etcdctl"])
        .unwrap()
        .env("ETCDCTL_API", "3")
        .args(flags)
        .args(args)
        .timeout(std::time::Duration::from_secs(20));
    if let Some(user) = password_of {
        let password = std::fs::read_to_string(pki(lab, &format!("{user}.password"))).unwrap();
        cmd = cmd
            .env("ETCDCTL_USER", user)
            .env("ETCDCTL_PASSWORD", password.trim_end());
    }
    cmd.output().expect("running etcdctl")
}

fn etcdctl_tls_flags(lab: &Lab, user: &str) -> Vec<String> {
    vec![
        format!("--endpoints={}", lab.etcd_access(user).endpoints.join(",")),
        format!("--cacert={}", pki(lab, "ca.crt")),
        format!("--cert={}", pki(lab, &format!("etcd-{user}.crt"))),
        format!("--key={}", pki(lab, &format!("etcd-{user}.key"))),
    ]
}

#[test]
fn tls_and_auth_cluster_works_with_least_privilege_users() {
    let mut lab = up(tls_spec("etls", 1));
    assert!(lab.etcd_tls(), "the lab must run etcd with TLS");
    let access = lab.etcd_access("fabricd");
    assert!(
        access.endpoints.iter().all(|e| e.starts_with("https://")),
        "{access:?}"
    );
    assert_eq!(access.username.as_deref(), Some("fabricd"));
    let args = fabricd_cmdline(&lab, "node1");
    assert!(
        args.contains("--etcd-certfile") && args.contains("--etcd-username fabricd"),
        "fabricd must run with the client certificate and its own user: {args}"
    );

    // Pods ping across nodes: fabricd (as user fabricd) leased subnets and sees the peers.
    let pods: Vec<_> = lab.pods().to_vec();
    assert_eq!(pods.len(), 2);
    ping(&lab, &pods[0].name, pods[1].ip).unwrap();
    ping(&lab, &pods[1].name, pods[0].ip).unwrap();

    // fabricctl's user: leases, labels, policies; fabricd's user registers a new pod.
    let leases = lab.leases().unwrap();
    assert_eq!(
        leases.as_array().map(Vec::len),
        Some(2),
        "fabricctl leases: {leases}"
    );
    lab.fabricctl(&["namespace", "label", "default", "team=blue"])
        .unwrap();
    let file = lab.state_dir().join("deny.yaml");
    std::fs::write(&file, POLICY).unwrap();
    let applied = lab
        .fabricctl(&["policy", "apply", "-f", &file.display().to_string()])
        .unwrap();
    assert!(applied.contains("default/default-deny"), "{applied}");
    for node in lab.nodes() {
        let socket = node.socket.display().to_string();
        lab.fabricctl_local(&["policy", "sync", "--socket", &socket])
            .unwrap_or_else(|e| panic!("policy sync on {}: {e:#}", node.name));
    }
    let pod = lab.add_pod("node2", PodSpec::new("late")).unwrap();
    let pods = lab.fabricctl(&["pod", "list"]).unwrap();
    assert!(pods.contains("late"), "fabricd registered the pod: {pods}");
    lab.fabricctl(&["policy", "delete", "default/default-deny"])
        .unwrap();
    for node in lab.nodes() {
        let socket = node.socket.display().to_string();
        lab.fabricctl_local(&["policy", "sync", "--socket", &socket])
            .unwrap();
    }
    ping(&lab, &lab.pods()[0].name.clone(), pod.ip).unwrap();

    // No permission error anywhere in fabricd's logs: the role holds what fabricd does.
    for node in lab.nodes() {
        let log = std::fs::read_to_string(&node.log).unwrap();
        assert!(
            !log.contains("permission") && !log.contains("refused authentication"),
            "{}'s log: {}",
            node.name,
            lab.log_tail(&node.name)
        );
    }
}

#[test]
fn tls_and_auth_refuse_what_an_attacker_tries() {
    let lab = up(tls_spec("eatk", 1));
    let endpoint = lab.etcd_access("fabricctl").endpoints[0].clone();
    let plain = endpoint.replace("https://", "http://");

    // 1. Plain http to etcd's port gets nothing: no HTTP answer, no gRPC.
    let out = lab
        .exec(
            "node1",
            &["curl", "-s", "-m", "5", &format!("{plain}/version")],
        )
        .unwrap();
    assert!(
        !out.status.success() && out.stdout.is_empty(),
        "plain http must get no answer: {}",
        text(&out)
    );
    let out = fabricctl_as(
        &lab,
        &["--etcd-endpoints".into(), plain.clone()],
        &["leases"],
    );
    assert_refused(
        "fabricctl over plain http",
        &out,
        "did not answer plain http",
    );

    // 2. TLS without a client certificate is refused, even with a right password.
    let flags = [base_flags(&lab), user_flags(&lab, "fabricctl")].concat();
    let out = fabricctl_as(&lab, &flags, &["leases"]);
    assert_refused(
        "fabricctl without a certificate",
        &out,
        "client certificate",
    );
    let out = etcdctl(
        &lab,
        &[
            format!("--endpoints={endpoint}"),
            format!("--cacert={}", pki(&lab, "ca.crt")),
        ],
        Some("fabricctl"),
        &["get", "/fabric/config"],
    );
    assert!(
        !out.status.success(),
        "etcdctl without a certificate: {}",
        text(&out)
    );

    // 3. A certificate but no password, or a wrong one, is refused.
    let flags = [base_flags(&lab), cert_flags(&lab, "fabricctl")].concat();
    let out = fabricctl_as(&lab, &flags, &["leases"]);
    assert_refused(
        "fabricctl with a certificate and no user",
        &out,
        "refuses anonymous clients",
    );
    let out = etcdctl(
        &lab,
        &etcdctl_tls_flags(&lab, "fabricctl"),
        None,
        &["get", "--prefix", "/fabric/"],
    );
    assert_refused(
        "etcdctl with a certificate and no user",
        &out,
        "permission denied",
    );
    let mut flags = [base_flags(&lab), cert_flags(&lab, "fabricctl")].concat();
    flags.extend(["--etcd-username".into(), "fabricctl".into()]);
    flags.extend(["--etcd-password".into(), "not-the-password".into()]);
    let out = fabricctl_as(&lab, &flags, &["leases"]);
    assert_refused(
        "fabricctl with a wrong password",
        &out,
        "refused authentication for user fabricctl: wrong user name or password",
    );
    assert!(!text(&out).contains("not-the-password"), "{}", text(&out));

    // 4. fabricd's user cannot change the config, policies, namespaces or reservations.
    let before = lab.fabricctl(&["config", "get"]).unwrap();
    let net_conf = lab.layout().net_conf().display().to_string();
    let fabricd = full_flags(&lab, "fabricd");
    let out = fabricctl_as(&lab, &fabricd, &["config", "set", "-f", &net_conf]);
    assert_refused(
        "fabricd's user writing the config",
        &out,
        "etcd denied permission",
    );
    let file = lab.state_dir().join("deny.yaml");
    std::fs::write(&file, POLICY).unwrap();
    let out = fabricctl_as(
        &lab,
        &fabricd,
        &["policy", "apply", "-f", &file.display().to_string()],
    );
    assert_refused(
        "fabricd's user writing a policy",
        &out,
        "etcd denied permission",
    );
    let out = fabricctl_as(&lab, &fabricd, &["namespace", "label", "default", "a=b"]);
    assert_refused(
        "fabricd's user labelling a namespace",
        &out,
        "etcd denied permission",
    );
    let subnet = lab.subnets().unwrap()["node1"].clone();
    let out = fabricctl_as(&lab, &fabricd, &["reserve", &subnet, "node2"]);
    assert_refused(
        "fabricd's user reserving a subnet",
        &out,
        "etcd denied permission",
    );
    let flags = etcdctl_tls_flags(&lab, "fabricd");
    for key in [
        "/fabric/config",
        "/fabric/policies/default/evil",
        "/fabric/x",
    ] {
        let out = etcdctl(&lab, &flags, Some("fabricd"), &["put", key, "{}"]);
        assert_refused(
            &format!("etcdctl put {key} as fabricd"),
            &out,
            "permission denied",
        );
    }
    // fabricd's user reads what it must, and fabricctl's cannot touch the leases.
    let out = etcdctl(&lab, &flags, Some("fabricd"), &["get", "/fabric/config"]);
    assert!(
        out.status.success(),
        "fabricd reads the config: {}",
        text(&out)
    );
    let flags = etcdctl_tls_flags(&lab, "fabricctl");
    let out = etcdctl(
        &lab,
        &flags,
        Some("fabricctl"),
        &["del", "--prefix", "/fabric/subnets/"],
    );
    assert_refused("fabricctl deleting the leases", &out, "permission denied");
    assert_eq!(lab.fabricctl(&["config", "get"]).unwrap(), before);
    assert_eq!(lab.subnets().unwrap().len(), 2);

    // 5. Passwords show up nowhere: not in status, not in the logs, not on command lines.
    let status = std::process::Command::new(lab.state().bin_dir.join("fabric-lab"))
        .args(["status", "--name", lab.name(), "-o", "json"])
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", text(&status));
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status.contains("password_file"), "{status}");
    let mut haystacks = vec![status];
    for node in lab.nodes() {
        haystacks.push(std::fs::read_to_string(&node.log).unwrap());
        haystacks.push(fabricd_cmdline(&lab, &node.name));
    }
    haystacks.push(std::fs::read_to_string(lab.layout().log("etcd")).unwrap());
    for user in ["root", "fabricd", "fabricctl"] {
        let password =
            std::fs::read_to_string(PathBuf::from(pki(&lab, &format!("{user}.password")))).unwrap();
        let password = password.trim_end();
        assert!(password.len() >= 16, "{user}'s password is too short");
        for hay in &haystacks {
            assert!(!hay.contains(password), "{user}'s password leaked");
        }
    }
}
