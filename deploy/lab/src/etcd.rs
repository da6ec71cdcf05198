//! The lab's datastore: the real etcd, in the `LAB-etcd` namespace, and its health check (an
//! HTTP GET of `/health` made from a thread inside that namespace).
//!
//! With `fabric-lab up --etcd-members N` (odd, up to 5) it is a cluster: member `etcd` in
//! `LAB-etcd`, `etcd2` in `LAB-etcd2`, ... each at its own underlay address
//! ([`topology::etcd_member_ip`]) with a static initial cluster; the members talk to each other
//! over plain http on the underlay (port 2380), even in a TLS lab, and every client is given
//! every member's client URL. [`leader`] asks the cluster which member leads.
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
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::kube::certs::{self, Pki};
use crate::netns;
use crate::process::{self, Cmd, Daemon};
use crate::state::{EtcdMember, Layout};
use crate::topology::{self, ETCD_CLIENT_PORT, ETCD_PEER_PORT, ETCD_PREFIX};

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
    /// How etcd user `user` (`fabricd` or `fabricctl`) reaches the lab's etcd cluster of
    /// `members` (every member's client URL); in a plain lab everyone is anonymous over http.
    pub fn for_user(layout: &Layout, members: &[EtcdMember], user: &str) -> Self {
        let endpoints = client_urls(layout, members);
        if !is_tls(layout) {
            return EtcdAccess {
                endpoints,
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
            endpoints,
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

/// The URL scheme etcd serves clients with: `https` in a TLS lab.
fn client_scheme(layout: &Layout) -> &'static str {
    if is_tls(layout) {
        "https"
    } else {
        "http"
    }
}

/// A member's client URL on the underlay.
pub fn client_url(layout: &Layout, member: &EtcdMember) -> String {
    format!(
        "{}://{}:{ETCD_CLIENT_PORT}",
        client_scheme(layout),
        member.ip
    )
}

/// Every member's client URL on the underlay, in member order.
pub fn client_urls(layout: &Layout, members: &[EtcdMember]) -> Vec<String> {
    members.iter().map(|m| client_url(layout, m)).collect()
}

/// A member's peer URL: plain http on the underlay, in a TLS lab too.
pub fn peer_url(member: &EtcdMember) -> String {
    format!("http://{}:{ETCD_PEER_PORT}", member.ip)
}

/// The static `--initial-cluster`: `etcd=http://172.30.0.2:2380,etcd2=...`.
pub fn initial_cluster(members: &[EtcdMember]) -> String {
    members
        .iter()
        .map(|m| format!("{}={}", m.name, peer_url(m)))
        .collect::<Vec<_>>()
        .join(",")
}

/// The records of an etcd cluster of `count` members for lab `lab` (names, namespaces,
/// addresses, data dirs and logs from [`topology`] and `layout`), none running yet.
pub fn plan_members(lab: &str, layout: &Layout, count: usize) -> Result<Vec<EtcdMember>> {
    topology::validate_etcd_members(count)?;
    (1..=count)
        .map(|k| {
            let name = topology::etcd_member(k);
            Ok(EtcdMember {
                netns: topology::etcd_member_netns(lab, k),
                ip: topology::etcd_member_ip(k)?,
                data_dir: layout.etcd_member_data(&name),
                log: layout.log(&name),
                daemon: None,
                name,
            })
        })
        .collect()
}

/// Makes the etcd PKI of a TLS lab: the CA, etcd's serving certificate (every member's
/// underlay address and loopback), one client certificate per lab client, and the users'
/// passwords (random, 0600).
pub fn create_pki(layout: &Layout, members: &[EtcdMember]) -> Result<()> {
    let pki = pki(layout);
    let ips: Vec<Ipv4Addr> = members
        .iter()
        .map(|m| m.ip)
        .chain([Ipv4Addr::LOCALHOST])
        .collect();
    pki.create_etcd(&ips)?;
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

/// etcdctl inside `netns` against `members` of the lab's etcd; in a TLS lab with fabricctl's
/// certificate, as `user` (its password passed in the environment, never on the command
/// line) or as nobody.
pub fn etcdctl(
    netns: &str,
    layout: &Layout,
    members: &[EtcdMember],
    user: Option<&str>,
) -> Result<Cmd> {
    let cmd = Cmd::in_netns(netns, "etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!(
            "--endpoints={}",
            client_urls(layout, members).join(",")
        ));
    if !is_tls(layout) {
        return Ok(cmd);
    }
    let pki = pki(layout);
    let cert = client_cert_name(FABRICCTL_USER);
    let mut cmd = cmd
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
/// TLS etcd cluster of `members`, from `netns`; the data dirs keep them across restarts).
pub fn enable_auth(netns: &str, layout: &Layout, members: &[EtcdMember]) -> Result<()> {
    let run = |args: &[String], stdin: Option<String>| -> Result<()> {
        let mut cmd = etcdctl(netns, layout, members, None)?.args(args);
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

/// The command line of etcd member `member` of the cluster `members`: its data dir, its
/// client URL on the underlay and loopback (https only in a TLS lab, see [`is_tls`], with
/// client certificates required and health on a plain loopback metrics listener), its plain
/// http peer URL on the underlay, and the static initial cluster.
pub fn args(member: &EtcdMember, members: &[EtcdMember], layout: &Layout) -> Vec<String> {
    let scheme = client_scheme(layout);
    let client = client_url(layout, member);
    let peer = peer_url(member);
    let mut args = vec![
        "--name".into(),
        member.name.clone(),
        "--data-dir".into(),
        member.data_dir.display().to_string(),
        "--listen-client-urls".into(),
        format!("{client},{scheme}://127.0.0.1:{ETCD_CLIENT_PORT}"),
        "--advertise-client-urls".into(),
        client,
        "--listen-peer-urls".into(),
        peer.clone(),
        "--initial-advertise-peer-urls".into(),
        peer,
        "--initial-cluster".into(),
        initial_cluster(members),
        "--initial-cluster-state".into(),
        "new".into(),
    ];
    if is_tls(layout) {
        let pki = pki(layout);
        let path = |p: PathBuf| p.display().to_string();
        args.extend([
            "--cert-file".into(),
            path(pki.cert(certs::ETCD_SERVER)),
            "--key-file".into(),
            path(pki.key(certs::ETCD_SERVER)),
            "--client-cert-auth".into(),
            "--trusted-ca-file".into(),
            path(pki.ca_cert()),
            "--listen-metrics-urls".into(),
            format!("http://127.0.0.1:{METRICS_PORT}"),
        ]);
    }
    args
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

/// Starts etcd member `member` of `members` inside its namespace (in its own session,
/// appending to its log).
pub fn start(member: &EtcdMember, members: &[EtcdMember], layout: &Layout) -> Result<Daemon> {
    Cmd::in_netns(&member.netns, binary())
        .args(args(member, members, layout))
        .spawn_daemon(&member.log)
        .with_context(|| format!("starting etcd member {}", member.name))
}

/// Waits until etcd member `member` (running as `daemon`) reports itself healthy, which needs
/// a leader, so a quorum of its cluster; fails early if it exits.
pub fn wait_member_healthy(member: &EtcdMember, daemon: &Daemon, layout: &Layout) -> Result<()> {
    wait_healthy_on(&member.netns, daemon, &member.log, health_port(layout))
}

/// Waits until etcd in `netns` reports itself healthy; fails early if it exits.
pub fn wait_healthy(netns: &str, daemon: &Daemon, layout: &Layout) -> Result<()> {
    wait_healthy_on(netns, daemon, &layout.log("etcd"), ETCD_CLIENT_PORT)
}

/// [`wait_healthy`], asking on `port` of the namespace's loopback; `log` is what the error
/// shows the end of.
pub fn wait_healthy_on(netns: &str, daemon: &Daemon, log: &Path, port: u16) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if !daemon.is_running() {
            bail!(
                "etcd (pid {}) exited during startup; last lines of {}:\n{}",
                daemon.pid,
                log.display(),
                process::tail(log, 20)
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
                log.display(),
                process::tail(log, 20)
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

/// Which member of `members` leads the cluster: `etcdctl endpoint status` from `netns`
/// against the running members (as root in a TLS lab), see [`leader_of`].
pub fn leader(netns: &str, layout: &Layout, members: &[EtcdMember]) -> Result<String> {
    let running: Vec<EtcdMember> = members.iter().filter(|m| m.running()).cloned().collect();
    let user = is_tls(layout).then_some(ROOT_USER);
    // A member that does not answer is reported on stderr and fails the exit status; the
    // others' statuses are still printed.
    let out = etcdctl(netns, layout, &running, user)?
        .args(["endpoint", "status", "-w", "json"])
        .timeout(Duration::from_secs(10))
        .output()
        .context("running etcdctl endpoint status")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let status: Value = serde_json::from_str(&stdout).with_context(|| {
        format!(
            "parsing `etcdctl endpoint status`: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    leader_of(&status, &client_urls(layout, &running), &running)
}

/// The leader's name from `etcdctl endpoint status -w json` (a list of `{"Endpoint",
/// "Status": {"header": {"member_id"}, "leader"}}`): the member whose endpoint (`urls[i]` is
/// `members[i]`'s) answered with its own id as the leader. Fails while there is none, or the
/// members disagree (an election in progress).
pub fn leader_of(status: &Value, urls: &[String], members: &[EtcdMember]) -> Result<String> {
    let entries = status.as_array().context("endpoint status is not a list")?;
    let mut leaders = entries.iter().filter_map(|e| {
        let s = &e["Status"];
        s["leader"].as_u64().filter(|&l| l != 0)
    });
    let Some(leader) = leaders.next() else {
        bail!("no member knows a leader: {status}");
    };
    if leaders.any(|l| l != leader) {
        bail!("members disagree on the leader (an election?): {status}");
    }
    let endpoint = entries
        .iter()
        .find(|e| e["Status"]["header"]["member_id"].as_u64() == Some(leader))
        .and_then(|e| e["Endpoint"].as_str())
        .with_context(|| format!("the leader {leader:x} did not answer: {status}"))?;
    urls.iter()
        .zip(members)
        .find(|(url, _)| *url == endpoint)
        .map(|(_, m)| m.name.clone())
        .with_context(|| format!("endpoint {endpoint} is no member's"))
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
        let members = plan_members("t", &layout, 1).unwrap();
        assert!(!is_tls(&layout));
        assert_eq!(
            EtcdAccess::for_user(&layout, &members, FABRICD_USER)
                .args()
                .join(" "),
            "--etcd-endpoints http://172.30.0.2:2379 --etcd-prefix /fabric"
        );
        std::fs::create_dir_all(pki_dir(&layout)).unwrap();
        std::fs::write(pki(&layout).ca_cert(), "").unwrap();
        assert!(is_tls(&layout));
        let access = EtcdAccess::for_user(&layout, &members, FABRICD_USER);
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
        let joined = args(&members[0], &members, &layout).join(" ");
        assert!(
            joined.contains("--listen-client-urls https://172.30.0.2:2379,https://127.0.0.1:2379"),
            "{joined}"
        );
        assert!(
            joined.contains("--client-cert-auth --trusted-ca-file"),
            "{joined}"
        );
        assert!(!joined.contains("http://172.30.0.2:2379"), "{joined}");
        assert!(
            joined.contains("--listen-peer-urls http://172.30.0.2:2380"),
            "peers stay plain http: {joined}"
        );
        assert_eq!(health_port(&layout), METRICS_PORT);
    }

    #[test]
    fn command_line() {
        let layout = Layout::at("/run/fabric-lab/t");
        let members = plan_members("t", &layout, 1).unwrap();
        let joined = args(&members[0], &members, &layout).join(" ");
        assert!(joined.starts_with("--name etcd --data-dir /run/fabric-lab/t/etcd"));
        assert!(
            joined.contains("--listen-client-urls http://172.30.0.2:2379,http://127.0.0.1:2379")
        );
        assert!(joined.ends_with(
            "--initial-cluster etcd=http://172.30.0.2:2380 --initial-cluster-state new"
        ));
    }

    #[test]
    fn cluster_of_three() {
        let layout = Layout::at("/run/fabric-lab/t");
        assert!(plan_members("t", &layout, 2).is_err());
        let members = plan_members("t", &layout, 3).unwrap();
        let names: Vec<_> = members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["etcd", "etcd2", "etcd3"]);
        assert_eq!(members[2].netns, "t-etcd3");
        assert_eq!(members[2].data_dir, Path::new("/run/fabric-lab/t/etcd3"));
        assert_eq!(
            members[2].log,
            Path::new("/run/fabric-lab/t/logs/etcd3.log")
        );
        let joined = args(&members[1], &members, &layout).join(" ");
        assert!(
            joined.starts_with("--name etcd2 --data-dir /run/fabric-lab/t/etcd2"),
            "{joined}"
        );
        assert!(
            joined.contains("--advertise-client-urls http://172.30.0.4:2379 "),
            "{joined}"
        );
        assert!(
            joined.contains(
                "--initial-cluster etcd=http://172.30.0.2:2380,etcd2=http://172.30.0.4:2380,\
                 etcd3=http://172.30.0.5:2380"
            ),
            "{joined}"
        );
        assert_eq!(
            EtcdAccess::for_user(&layout, &members, FABRICCTL_USER).endpoints,
            [
                "http://172.30.0.2:2379",
                "http://172.30.0.4:2379",
                "http://172.30.0.5:2379"
            ]
        );
    }

    #[test]
    fn leader_from_endpoint_status() {
        let layout = Layout::at("/run/fabric-lab/t");
        let members = plan_members("t", &layout, 3).unwrap();
        let urls = client_urls(&layout, &members);
        let entry = |url: &str, id: u64, leader: u64| {
            serde_json::json!({
                "Endpoint": url,
                "Status": {"header": {"member_id": id, "raft_term": 3}, "leader": leader},
            })
        };
        // Ids above 2^63, as etcd's random ones often are.
        let (a, b, c) = (0xfa0f_1ce2_9b3e_01d7_u64, 0x1c2d, 0x9e3f_0000_0000_0001_u64);
        let status = serde_json::json!([
            entry(&urls[0], a, b),
            entry(&urls[1], b, b),
            entry(&urls[2], c, b)
        ]);
        assert_eq!(leader_of(&status, &urls, &members).unwrap(), "etcd2");
        // The leader itself did not answer: unknown which member it is.
        let status = serde_json::json!([entry(&urls[0], a, b), entry(&urls[2], c, b)]);
        assert!(leader_of(&status, &urls, &members).is_err());
        let split = serde_json::json!([entry(&urls[0], a, a), entry(&urls[1], b, b)]);
        assert!(leader_of(&split, &urls, &members).is_err());
        let none = serde_json::json!([entry(&urls[0], a, 0)]);
        assert!(leader_of(&none, &urls, &members).is_err());
    }
}
