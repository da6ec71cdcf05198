//! The lab's datastore: the real etcd, single member, in the `LAB-etcd` namespace, and its
//! health check (an HTTP GET of `/health` made from a thread inside that namespace).
//!
//! With `fabric-lab up --etcd-tls` etcd serves clients on https only, demands a client
//! certificate signed by the lab's CA (`--client-cert-auth`) and has authentication enabled:
//! users `root`, `fabricd` and `fabricctl`, each with the role of its name ([`grants`]). The
//! CA, certificates and password files are in the state dir's `etcd-pki/`; [`EtcdAccess`] says
//! how a client reaches etcd with them. The health check then uses etcd's plain metrics
//! listener on the etcd namespace's loopback ([`METRICS_PORT`]).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::kube::certs::{self, Pki};
use crate::netns;
use crate::process::{self, Cmd, Daemon};
use crate::state::Layout;
use crate::topology::{ETCD_CLIENT_PORT, ETCD_IP, ETCD_PREFIX};

/// etcd's metrics and health listener in a TLS lab: plain http on the etcd namespace's
/// loopback only.
pub const METRICS_PORT: u16 = 2381;

/// The etcd superuser.
pub const ROOT_USER: &str = "root";
/// The etcd user (and role) of every node's fabricd.
pub const FABRICD_USER: &str = "fabricd";
/// The etcd user (and role) of the operator's fabricctl.
pub const FABRICCTL_USER: &str = "fabricctl";

/// What a role may do to a key or key range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Permission {
    /// Get, range, watch.
    #[serde(rename = "read")]
    Read,
    /// Read plus put, delete, transactions.
    #[serde(rename = "readwrite")]
    ReadWrite,
}

impl Permission {
    /// etcdctl's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::ReadWrite => "readwrite",
        }
    }
}

/// Which keys a grant covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keys {
    /// One key.
    Key(String),
    /// Every key starting with this.
    Prefix(String),
    /// `[start, end)`.
    Range(String, String),
}

/// One `etcdctl role grant-permission`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The role.
    pub role: &'static str,
    /// What it may do.
    pub permission: Permission,
    /// To which keys.
    pub keys: Keys,
}

impl Grant {
    /// The etcdctl arguments after `role grant-permission`.
    pub fn etcdctl_args(&self) -> Vec<String> {
        let mut args = vec![self.role.to_string()];
        match &self.keys {
            Keys::Key(key) => args.extend([self.permission.as_str().into(), key.clone()]),
            Keys::Prefix(prefix) => args.extend([
                "--prefix=true".into(),
                self.permission.as_str().into(),
                prefix.clone(),
            ]),
            Keys::Range(start, end) => {
                args.extend([self.permission.as_str().into(), start.clone(), end.clone()])
            }
        }
        args
    }
}

/// The least privilege of each role, for keys under `prefix`, from what the code does:
///
/// - fabricd writes its lease (`subnets/`, a transaction on the key's version, bound to an
///   etcd lease it grants, renews and revokes) and its pods (`pods/`, on CNI ADD and DEL);
///   reads the network config (`config`, also its revision probe), the reservations
///   (`reservations/`) and follows the policy objects as ONE range
///   `[namespaces/, policies/\xff)`: etcd checks a range against the union of the granted
///   intervals, so that range must be granted whole (it spans `pods/`, which is writable
///   anyway, and nothing else fabric stores).
/// - fabricctl writes the config, the reservations and the policy objects (namespaces,
///   policies, and pods for `pod label`) and reads the leases.
pub fn grants(prefix: &str) -> Vec<Grant> {
    let p = prefix.trim_end_matches('/');
    let objects = || Keys::Range(format!("{p}/namespaces/"), format!("{p}/policies0"));
    let prefix_of = |segment: &str| Keys::Prefix(format!("{p}/{segment}"));
    use Permission::{Read, ReadWrite};
    vec![
        Grant {
            role: FABRICD_USER,
            permission: ReadWrite,
            keys: prefix_of("subnets/"),
        },
        Grant {
            role: FABRICD_USER,
            permission: ReadWrite,
            keys: prefix_of("pods/"),
        },
        Grant {
            role: FABRICD_USER,
            permission: Read,
            keys: Keys::Key(format!("{p}/config")),
        },
        Grant {
            role: FABRICD_USER,
            permission: Read,
            keys: prefix_of("reservations/"),
        },
        Grant {
            role: FABRICD_USER,
            permission: Read,
            keys: objects(),
        },
        Grant {
            role: FABRICCTL_USER,
            permission: ReadWrite,
            keys: Keys::Key(format!("{p}/config")),
        },
        Grant {
            role: FABRICCTL_USER,
            permission: ReadWrite,
            keys: prefix_of("reservations/"),
        },
        Grant {
            role: FABRICCTL_USER,
            permission: ReadWrite,
            keys: objects(),
        },
        Grant {
            role: FABRICCTL_USER,
            permission: Read,
            keys: prefix_of("subnets/"),
        },
    ]
}

/// The PKI of a TLS lab's etcd: `<state dir>/etcd-pki`.
pub fn pki(layout: &Layout) -> Pki {
    Pki::at(pki_dir(layout))
}

/// Whether the lab's etcd runs with TLS and authentication (its PKI exists).
pub fn is_tls(layout: &Layout) -> bool {
    pki(layout).ca_cert().is_file()
}

/// The password file of etcd user `user` in a TLS lab.
pub fn password_file(layout: &Layout, user: &str) -> PathBuf {
    pki_dir(layout).join(format!("{user}.password"))
}

/// The certificate (file stem) a lab client presents: fabricd's on every node, fabricctl's
/// (also used for the setup as root) for the operator.
pub fn client_cert_name(user: &str) -> String {
    format!("etcd-{user}")
}

/// How a lab client reaches etcd: endpoints, prefix, and in a TLS lab the files. Shown by
/// `fabric-lab status -o json`; never holds a password, only the file with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EtcdAccess {
    /// Client URLs.
    pub endpoints: Vec<String>,
    /// fabric's key prefix.
    pub prefix: String,
    /// The CA that signed etcd's certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cafile: Option<PathBuf>,
    /// The client certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certfile: Option<PathBuf>,
    /// Its key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyfile: Option<PathBuf>,
    /// The etcd user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The file holding its password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

impl EtcdAccess {
    /// How etcd user `user` (`fabricd` or `fabricctl`) reaches the lab's etcd; in a plain lab
    /// everyone is anonymous over http.
    pub fn for_user(layout: &Layout, user: &str) -> Self {
        if !is_tls(layout) {
            return EtcdAccess {
                endpoints: vec![crate::topology::etcd_endpoint()],
                prefix: ETCD_PREFIX.to_string(),
                cafile: None,
                certfile: None,
                keyfile: None,
                username: None,
                password_file: None,
            };
        }
        let pki = pki(layout);
        let cert = client_cert_name(user);
        EtcdAccess {
            endpoints: vec![tls_endpoint()],
            prefix: ETCD_PREFIX.to_string(),
            cafile: Some(pki.ca_cert()),
            certfile: Some(pki.cert(&cert)),
            keyfile: Some(pki.key(&cert)),
            username: Some(user.to_string()),
            password_file: Some(password_file(layout, user)),
        }
    }

    /// The `fabricd`/`fabricctl` flags saying the same.
    pub fn flags(&self) -> Vec<(&'static str, String)> {
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        [
            ("--etcd-endpoints", Some(self.endpoints.join(","))),
            ("--etcd-prefix", Some(self.prefix.clone())),
            ("--etcd-cafile", path(&self.cafile)),
            ("--etcd-certfile", path(&self.certfile)),
            ("--etcd-keyfile", path(&self.keyfile)),
            ("--etcd-username", self.username.clone()),
            ("--etcd-password-file", path(&self.password_file)),
        ]
        .into_iter()
        .filter_map(|(flag, value)| Some((flag, value?)))
        .collect()
    }

    /// [`Self::flags`] as one argument list.
    pub fn args(&self) -> Vec<String> {
        self.flags()
            .into_iter()
            .flat_map(|(flag, value)| [flag.to_string(), value])
            .collect()
    }
}

/// etcd's https client URL on the underlay.
pub fn tls_endpoint() -> String {
    format!("https://{ETCD_IP}:{ETCD_CLIENT_PORT}")
}

/// Makes the etcd PKI of a TLS lab: the CA, etcd's serving certificate (the underlay
/// address and loopback), one client certificate per lab client, and the users' passwords
/// (random, 0600).
pub fn create_pki(layout: &Layout) -> Result<()> {
    let pki = pki(layout);
    pki.create_etcd(&[ETCD_IP, Ipv4Addr::LOCALHOST])?;
    for user in [ROOT_USER, FABRICD_USER, FABRICCTL_USER] {
        let path = password_file(layout, user);
        let password = format!("{:032x}", rand::random::<u128>());
        std::fs::write(&path, format!("{password}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
    }
    Ok(())
}

fn read_password(layout: &Layout, user: &str) -> Result<String> {
    let path = password_file(layout, user);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.trim_end().to_string())
}

/// etcdctl inside `netns` against the lab's etcd over TLS with fabricctl's certificate, as
/// `user` (its password passed in the environment, never on the command line) or as nobody.
pub fn etcdctl(netns: &str, layout: &Layout, user: Option<&str>) -> Result<Cmd> {
    let pki = pki(layout);
    let cert = client_cert_name(FABRICCTL_USER);
    let mut cmd = Cmd::in_netns(netns, "etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", tls_endpoint()))
        .arg(format!("--cacert={}", pki.ca_cert().display()))
        .arg(format!("--cert={}", pki.cert(&cert).display()))
        .arg(format!("--key={}", pki.key(&cert).display()));
    if let Some(user) = user {
        cmd = cmd
            .env("ETCDCTL_USER", user)
            .env("ETCDCTL_PASSWORD", read_password(layout, user)?);
    }
    Ok(cmd)
}

/// Creates the users and roles of [`grants`] and enables authentication (once, on a fresh
/// TLS etcd in `netns`; the data dir keeps them across restarts).
pub fn enable_auth(netns: &str, layout: &Layout) -> Result<()> {
    let run = |args: &[String], stdin: Option<String>| -> Result<()> {
        let mut cmd = etcdctl(netns, layout, None)?.args(args);
        if let Some(stdin) = stdin {
            cmd = cmd.stdin(stdin);
        }
        cmd.timeout(Duration::from_secs(20)).run().map(drop)
    };
    let strs = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    for user in [ROOT_USER, FABRICD_USER, FABRICCTL_USER] {
        let password = read_password(layout, user)?;
        run(
            &strs(&["user", "add", user, "--interactive=false"]),
            Some(format!("{password}\n")),
        )
        .with_context(|| format!("adding etcd user {user}"))?;
        // `root` is etcd's built-in role; the others are made here.
        if user != ROOT_USER {
            run(&strs(&["role", "add", user]), None)
                .with_context(|| format!("adding etcd role {user}"))?;
        }
        run(&strs(&["user", "grant-role", user, user]), None)
            .with_context(|| format!("granting etcd role {user} to {user}"))?;
    }
    for grant in grants(ETCD_PREFIX) {
        let mut args = strs(&["role", "grant-permission"]);
        args.extend(grant.etcdctl_args());
        run(&args, None).with_context(|| format!("granting {grant:?}"))?;
    }
    run(&strs(&["auth", "enable"]), None).context("enabling etcd authentication")
}

/// Where a TLS lab's etcd CA, certificates and password files are.
pub fn pki_dir(layout: &Layout) -> PathBuf {
    layout.root().join("etcd-pki")
}

/// How long etcd gets to become healthy.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The etcd binary (Debian's `etcd-server`).
pub fn binary() -> PathBuf {
    process::which("etcd").unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
}

/// etcd's command line for lab `lab` (member name = lab name); in a TLS lab (see
/// [`is_tls`]) clients are served on https only, with client certificates required.
pub fn args(lab: &str, layout: &Layout) -> Vec<String> {
    if is_tls(layout) {
        return tls_args(lab, layout);
    }
    let client = format!("http://{ETCD_IP}:{ETCD_CLIENT_PORT}");
    let peer = "http://127.0.0.1:2380";
    vec![
        "--name".into(),
        lab.into(),
        "--data-dir".into(),
        layout.etcd_data().display().to_string(),
        "--listen-client-urls".into(),
        format!("{client},http://127.0.0.1:{ETCD_CLIENT_PORT}"),
        "--advertise-client-urls".into(),
        client,
        "--listen-peer-urls".into(),
        peer.into(),
        "--initial-advertise-peer-urls".into(),
        peer.into(),
        "--initial-cluster".into(),
        format!("{lab}={peer}"),
    ]
}

fn tls_args(lab: &str, layout: &Layout) -> Vec<String> {
    let pki = pki(layout);
    let path = |p: PathBuf| p.display().to_string();
    let peer = "http://127.0.0.1:2380";
    vec![
        "--name".into(),
        lab.into(),
        "--data-dir".into(),
        layout.etcd_data().display().to_string(),
        "--listen-client-urls".into(),
        format!("{},https://127.0.0.1:{ETCD_CLIENT_PORT}", tls_endpoint()),
        "--advertise-client-urls".into(),
        tls_endpoint(),
        "--cert-file".into(),
        path(pki.cert(certs::ETCD_SERVER)),
        "--key-file".into(),
        path(pki.key(certs::ETCD_SERVER)),
        "--client-cert-auth".into(),
        "--trusted-ca-file".into(),
        path(pki.ca_cert()),
        "--listen-metrics-urls".into(),
        format!("http://127.0.0.1:{METRICS_PORT}"),
        "--listen-peer-urls".into(),
        peer.into(),
        "--initial-advertise-peer-urls".into(),
        peer.into(),
        "--initial-cluster".into(),
        format!("{lab}={peer}"),
    ]
}

/// Where etcd answers `GET /health` inside its namespace: the client port, or in a TLS lab
/// the metrics port.
pub fn health_port(layout: &Layout) -> u16 {
    if is_tls(layout) {
        METRICS_PORT
    } else {
        ETCD_CLIENT_PORT
    }
}

/// Starts etcd inside `netns` (in its own session, logging to `logs/etcd.log`).
pub fn start(lab: &str, netns: &str, layout: &Layout) -> Result<Daemon> {
    Cmd::in_netns(netns, binary())
        .args(args(lab, layout))
        .spawn_daemon(&layout.log("etcd"))
        .context("starting etcd")
}

/// Waits until etcd in `netns` reports itself healthy; fails early if it exits.
pub fn wait_healthy(netns: &str, daemon: &Daemon, layout: &Layout) -> Result<()> {
    wait_healthy_on(netns, daemon, layout, ETCD_CLIENT_PORT)
}

/// [`wait_healthy`], asking on `port` of the namespace's loopback.
pub fn wait_healthy_on(netns: &str, daemon: &Daemon, layout: &Layout, port: u16) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if !daemon.is_running() {
            bail!(
                "etcd (pid {}) exited during startup; last lines of {}:\n{}",
                daemon.pid,
                layout.log("etcd").display(),
                process::tail(&layout.log("etcd"), 20)
            );
        }
        let last = match netns::in_netns(netns, move || health_check_on(port))? {
            Ok(()) => return Ok(()),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!(
                "etcd not healthy after {}s ({last}); last lines of {}:\n{}",
                READY_TIMEOUT.as_secs(),
                layout.log("etcd").display(),
                process::tail(&layout.log("etcd"), 20)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One `GET /health` to `127.0.0.1:2379` in the calling thread's namespace.
pub fn health_check() -> Result<()> {
    health_check_on(ETCD_CLIENT_PORT)
}

/// One `GET /health` to `127.0.0.1:port` in the calling thread's namespace.
pub fn health_check_on(port: u16) -> Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let timeout = Duration::from_secs(1);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).context("connecting")?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).context("reading")?;
    check_health_answer(&answer)
}

/// Judges an HTTP answer to `GET /health`: status 200 and `"health":"true"`.
pub fn check_health_answer(answer: &str) -> Result<()> {
    let status_line = answer.lines().next().unwrap_or_default();
    let ok_status = status_line.split_whitespace().nth(1) == Some("200");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let healthy = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .is_some_and(|v| v["health"] == "true");
    if ok_status && healthy {
        Ok(())
    } else {
        bail!("unhealthy: {} {}", status_line.trim(), body.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_answers() {
        check_health_answer(
            "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"health\":\"true\",\"reason\":\"\"}",
        )
        .unwrap();
        assert!(check_health_answer(
            "HTTP/1.0 503 Service Unavailable\r\n\r\n{\"health\":\"false\",\"reason\":\"RAFT NO LEADER\"}"
        )
        .is_err());
        assert!(check_health_answer("").is_err());
    }

    #[test]
    fn least_privilege_grants() {
        let args: Vec<String> = grants("/fabric/")
            .iter()
            .map(|g| g.etcdctl_args().join(" "))
            .collect();
        assert_eq!(
            args,
            [
                "fabricd --prefix=true readwrite /fabric/subnets/",
                "fabricd --prefix=true readwrite /fabric/pods/",
                "fabricd read /fabric/config",
                "fabricd --prefix=true read /fabric/reservations/",
                "fabricd read /fabric/namespaces/ /fabric/policies0",
                "fabricctl readwrite /fabric/config",
                "fabricctl --prefix=true readwrite /fabric/reservations/",
                "fabricctl readwrite /fabric/namespaces/ /fabric/policies0",
                "fabricctl --prefix=true read /fabric/subnets/",
            ]
        );
        // fabricd never gets write access to what operators own.
        assert!(!grants("/fabric").iter().any(|g| g.role == FABRICD_USER
            && g.permission == Permission::ReadWrite
            && !matches!(&g.keys, Keys::Prefix(p) if p.ends_with("/subnets/") || p.ends_with("/pods/"))));
    }

    #[test]
    fn tls_access_and_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::at(dir.path());
        assert!(!is_tls(&layout));
        assert_eq!(
            EtcdAccess::for_user(&layout, FABRICD_USER).args().join(" "),
            "--etcd-endpoints http://172.30.0.2:2379 --etcd-prefix /fabric"
        );
        std::fs::create_dir_all(pki_dir(&layout)).unwrap();
        std::fs::write(pki(&layout).ca_cert(), "").unwrap();
        assert!(is_tls(&layout));
        let access = EtcdAccess::for_user(&layout, FABRICD_USER);
        let root = dir.path().display().to_string();
        assert_eq!(
            access.args().join(" "),
            format!(
                "--etcd-endpoints https://172.30.0.2:2379 --etcd-prefix /fabric \
                 --etcd-cafile {root}/etcd-pki/ca.crt --etcd-certfile {root}/etcd-pki/etcd-fabricd.crt \
                 --etcd-keyfile {root}/etcd-pki/etcd-fabricd.key --etcd-username fabricd \
                 --etcd-password-file {root}/etcd-pki/fabricd.password"
            )
        );
        let joined = args("t", &layout).join(" ");
        assert!(
            joined.contains("--listen-client-urls https://172.30.0.2:2379,https://127.0.0.1:2379"),
            "{joined}"
        );
        assert!(
            joined.contains("--client-cert-auth --trusted-ca-file"),
            "{joined}"
        );
        assert!(!joined.contains("http://172.30.0.2"), "{joined}");
        assert_eq!(health_port(&layout), METRICS_PORT);
    }

    #[test]
    fn command_line() {
        let args = args("t", &Layout::at("/run/fabric-lab/t"));
        let joined = args.join(" ");
        assert!(joined.starts_with("--name t --data-dir /run/fabric-lab/t/etcd"));
        assert!(
            joined.contains("--listen-client-urls http://172.30.0.2:2379,http://127.0.0.1:2379")
        );
        assert!(joined.ends_with("--initial-cluster t=http://127.0.0.1:2380"));
    }
}
