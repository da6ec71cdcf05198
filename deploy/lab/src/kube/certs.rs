//! The lab's PKI, made with the `openssl` CLI. For the `--etcd-tls` lab ([`etcd_leaves`]):
//! a CA, etcd's serving certificate and the client certificates of fabricd and fabricctl.
//! For the Kubernetes lab: a CA, kube-apiserver's serving certificate
//! (its underlay address, the `kubernetes` Service's IP, loopback and the Service's DNS names),
//! client certificates (the admin in `system:masters`, kube-controller-manager, kube-scheduler,
//! kube-proxy, and each node's kubelet identity `system:node:NODE` in `system:nodes`, issued as
//! nodes join) and the service-account signing key pair. ECDSA P-256 throughout: fast to make, and every
//! Kubernetes component takes it.

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::process::Cmd;
use crate::topology::{CONTROL_PLANE_IP, KUBERNETES_SERVICE_IP};

/// How long the lab's certificates are valid.
pub const VALID_DAYS: u32 = 3650;

/// The DNS names on kube-apiserver's serving certificate.
pub const APISERVER_DNS_NAMES: [&str; 5] = [
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    "localhost",
];

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// TLS server (kube-apiserver).
    Server,
    /// TLS client (kubectl, kube-controller-manager).
    Client,
}

/// A certificate to issue: file stem, subject and usage, with SANs for servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    /// `<name>.crt` and `<name>.key` in the PKI dir.
    pub name: String,
    /// Common name (a user name for clients).
    pub common_name: String,
    /// Organization (a group for clients).
    pub organization: Option<String>,
    /// Server or client.
    pub usage: Usage,
    /// Subject alternative names: IP addresses.
    pub ips: Vec<Ipv4Addr>,
    /// Subject alternative names: DNS names.
    pub dns: Vec<&'static str>,
}

impl Leaf {
    /// A client certificate `<name>.crt` for user `common_name` in group `organization`.
    pub fn client(name: &str, common_name: &str, organization: Option<&str>) -> Self {
        Leaf {
            name: name.to_string(),
            common_name: common_name.to_string(),
            organization: organization.map(str::to_string),
            usage: Usage::Client,
            ips: Vec::new(),
            dns: Vec::new(),
        }
    }

    /// A kubelet's client certificate, `node-<node>.crt`: user `system:node:<node>` in group
    /// `system:nodes`, which the Node authorizer recognises.
    pub fn node(node: &str) -> Self {
        Leaf::client(
            &node_cert_name(node),
            &format!("system:node:{node}"),
            Some("system:nodes"),
        )
    }

    /// The `-subj` argument: `/O=.../CN=...`.
    pub fn subject(&self) -> String {
        let org = self
            .organization
            .as_ref()
            .map(|o| format!("/O={o}"))
            .unwrap_or_default();
        format!("{org}/CN={}", self.common_name)
    }

    /// The extensions file `openssl x509 -req -extfile` reads.
    pub fn extensions(&self) -> String {
        let (key_usage, ext_usage) = match self.usage {
            Usage::Server => ("digitalSignature,keyEncipherment", "serverAuth"),
            Usage::Client => ("digitalSignature,keyEncipherment", "clientAuth"),
        };
        let mut text = format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,{key_usage}\n\
             extendedKeyUsage={ext_usage}\n"
        );
        let sans: Vec<String> = self
            .ips
            .iter()
            .map(|ip| format!("IP:{ip}"))
            .chain(self.dns.iter().map(|d| format!("DNS:{d}")))
            .collect();
        if !sans.is_empty() {
            text.push_str(&format!("subjectAltName={}\n", sans.join(",")));
        }
        text
    }
}

/// The certificates the control plane needs.
pub fn leaves() -> Vec<Leaf> {
    vec![
        Leaf {
            name: "apiserver".into(),
            common_name: "kube-apiserver".into(),
            organization: None,
            usage: Usage::Server,
            ips: vec![CONTROL_PLANE_IP, KUBERNETES_SERVICE_IP, Ipv4Addr::LOCALHOST],
            dns: APISERVER_DNS_NAMES.to_vec(),
        },
        Leaf::client("admin", "fabric-lab-admin", Some("system:masters")),
        Leaf::client(
            "kube-controller-manager",
            "system:kube-controller-manager",
            None,
        ),
        Leaf::client("kube-scheduler", "system:kube-scheduler", None),
        Leaf::client("kube-proxy", "system:kube-proxy", None),
    ]
}

/// The file stem of etcd's serving certificate in the `--etcd-tls` lab.
pub const ETCD_SERVER: &str = "etcd-server";

/// The certificates of the `--etcd-tls` lab: etcd's serving certificate for `ips` (and
/// `localhost`), and one client certificate per lab client (`etcd-fabricd` on the nodes,
/// `etcd-fabricctl` for the operator). The clients' common names are no etcd user's, so with
/// `--client-cert-auth` a certificate alone authenticates nobody: the password does.
pub fn etcd_leaves(ips: &[Ipv4Addr]) -> Vec<Leaf> {
    vec![
        Leaf {
            name: ETCD_SERVER.into(),
            common_name: "etcd".into(),
            organization: None,
            usage: Usage::Server,
            ips: ips.to_vec(),
            dns: vec!["localhost"],
        },
        Leaf::client("etcd-fabricd", "fabric-lab-node", None),
        Leaf::client("etcd-fabricctl", "fabric-lab-operator", None),
    ]
}

/// The file stem of `node`'s kubelet certificate.
pub fn node_cert_name(node: &str) -> String {
    format!("node-{node}")
}

/// The files of a PKI directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// The PKI in `dir`.
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Pki { dir: dir.into() }
    }

    /// The CA certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.cert("ca")
    }

    /// The CA key.
    pub fn ca_key(&self) -> PathBuf {
        self.key("ca")
    }

    /// `<name>.crt`.
    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.crt"))
    }

    /// `<name>.key`.
    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }

    /// The service-account signing key (private).
    pub fn sa_key(&self) -> PathBuf {
        self.dir.join("sa.key")
    }

    /// The service-account verification key (public).
    pub fn sa_pub(&self) -> PathBuf {
        self.dir.join("sa.pub")
    }

    /// Makes the CA, every leaf of [`leaves`] and the service-account key pair.
    pub fn create(&self) -> Result<()> {
        self.create_ca()?;
        for leaf in leaves() {
            self.issue(&leaf)?;
        }
        openssl([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &path(&self.sa_key()),
        ])
        .and_then(|()| {
            openssl([
                "pkey",
                "-in",
                &path(&self.sa_key()),
                "-pubout",
                "-out",
                &path(&self.sa_pub()),
            ])
        })
        .context("making the service-account key pair")?;
        std::fs::set_permissions(self.sa_key(), std::fs::Permissions::from_mode(0o600))?;
        Ok(())
    }

    /// Makes the CA and every leaf of [`etcd_leaves`] for etcd at `ips`.
    pub fn create_etcd(&self, ips: &[Ipv4Addr]) -> Result<()> {
        self.create_ca()?;
        for leaf in etcd_leaves(ips) {
            self.issue(&leaf)?;
        }
        Ok(())
    }

    /// Makes the directory (0700) and the CA (its key 0600).
    fn create_ca(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", self.dir.display()))?;
        openssl([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=fabric-lab-ca",
            "-days",
            &VALID_DAYS.to_string(),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
            "-keyout",
            &path(&self.ca_key()),
            "-out",
            &path(&self.ca_cert()),
        ])
        .context("making the lab CA")?;
        std::fs::set_permissions(self.ca_key(), std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", self.ca_key().display()))
    }

    /// Issues `leaf` with the CA (key, CSR, the CA's signature with the leaf's extensions);
    /// the key is left readable by root only.
    pub fn issue(&self, leaf: &Leaf) -> Result<()> {
        self.issue_files(leaf)
            .with_context(|| format!("issuing the {} certificate", leaf.name))?;
        std::fs::set_permissions(self.key(&leaf.name), std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", self.key(&leaf.name).display()))
    }

    fn issue_files(&self, leaf: &Leaf) -> Result<()> {
        let csr = self.dir.join(format!("{}.csr", leaf.name));
        let ext = self.dir.join(format!("{}.ext", leaf.name));
        openssl([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &leaf.subject(),
            "-keyout",
            &path(&self.key(&leaf.name)),
            "-out",
            &path(&csr),
        ])?;
        std::fs::write(&ext, leaf.extensions())
            .with_context(|| format!("writing {}", ext.display()))?;
        let serial = format!("0x{:016x}", rand::random::<u64>());
        openssl([
            "x509",
            "-req",
            "-in",
            &path(&csr),
            "-CA",
            &path(&self.ca_cert()),
            "-CAkey",
            &path(&self.ca_key()),
            "-set_serial",
            &serial,
            "-days",
            &VALID_DAYS.to_string(),
            "-extfile",
            &path(&ext),
            "-out",
            &path(&self.cert(&leaf.name)),
        ])?;
        let _ = std::fs::remove_file(&csr);
        let _ = std::fs::remove_file(&ext);
        Ok(())
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

fn openssl<const N: usize>(args: [&str; N]) -> Result<()> {
    Cmd::new("openssl")
        .args(args)
        .run()
        .map(drop)
        .context("running openssl (install it: apt-get install openssl)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_and_extensions() {
        let all = leaves();
        let server = &all[0];
        assert_eq!(server.subject(), "/CN=kube-apiserver");
        let ext = server.extensions();
        assert!(ext.contains("extendedKeyUsage=serverAuth\n"), "{ext}");
        assert!(
            ext.contains(
                "subjectAltName=IP:172.30.0.3,IP:10.96.0.1,IP:127.0.0.1,DNS:kubernetes,\
                 DNS:kubernetes.default,DNS:kubernetes.default.svc,\
                 DNS:kubernetes.default.svc.cluster.local,DNS:localhost\n"
            ),
            "{ext}"
        );
        let admin = &all[1];
        assert_eq!(admin.subject(), "/O=system:masters/CN=fabric-lab-admin");
        assert!(admin.extensions().contains("extendedKeyUsage=clientAuth"));
        assert!(!admin.extensions().contains("subjectAltName"));
        assert_eq!(all[2].subject(), "/CN=system:kube-controller-manager");
        assert_eq!(all[3].subject(), "/CN=system:kube-scheduler");
        assert_eq!(all[4].subject(), "/CN=system:kube-proxy");
        let node = Leaf::node("node2");
        assert_eq!(node.name, "node-node2");
        assert_eq!(node.subject(), "/O=system:nodes/CN=system:node:node2");
        assert!(node.extensions().contains("extendedKeyUsage=clientAuth"));
    }

    #[test]
    fn openssl_makes_a_pki_the_ca_verifies() {
        if crate::process::which("openssl").is_none() {
            eprintln!("openssl not installed; skipping");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::at(dir.path().join("pki"));
        pki.create().unwrap();
        pki.issue(&Leaf::node("node1")).unwrap();
        for leaf in leaves().into_iter().chain([Leaf::node("node1")]) {
            let out = Cmd::new("openssl")
                .args(["verify", "-CAfile", &path(&pki.ca_cert())])
                .arg(pki.cert(&leaf.name))
                .run()
                .unwrap();
            assert!(out.contains(": OK"), "{out}");
        }
        let text = Cmd::new("openssl")
            .args([
                "x509",
                "-noout",
                "-text",
                "-in",
                &path(&pki.cert("apiserver")),
            ])
            .run()
            .unwrap();
        assert!(text.contains("IP Address:10.96.0.1"), "{text}");
        assert!(pki.sa_pub().exists());
        let mode = std::fs::metadata(pki.sa_key())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
