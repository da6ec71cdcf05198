//! Which datastore a fabric binary talks to and how it reaches it: the flags `fabricd` and
//! `fabricctl` share (`--datastore`; etcd's endpoints, prefix, TLS files and user, Flannel's
//! `--etcd-*` spellings; the Kubernetes API's kubeconfig, net-conf.json path and annotation
//! prefix), and the connection they make.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use clap::error::ErrorKind;
use clap::{ArgMatches, Args, Command, FromArgMatches, ValueEnum};
use ipam::etcd::{EtcdAuth, EtcdIdentity, EtcdOptions, EtcdStore, EtcdTls};
use ipam::kube::{Credentials, KubeStore};
use ipam::{ObjectSource, Store, StoreError};

/// Where the cluster's state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Datastore {
    /// etcd (bare metal): leases, network config, pods, namespaces and policies under a prefix.
    Etcd,
    /// The Kubernetes API: subnets from the nodes' podCIDRs, pods, namespaces and
    /// NetworkPolicies from the API, the network config from a file.
    Kubernetes,
}

/// A password given on the command line or in the environment; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl FromStr for Password {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Password(s.to_owned()))
    }
}

/// Reads a password file: its contents without the trailing newline (`\n` or `\r\n`).
pub fn read_password_file(path: &Path) -> Result<Password, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read etcd password file {}: {e}", path.display()))?;
    let password = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if password.is_empty() {
        return Err(format!("etcd password file {} is empty", path.display()));
    }
    Ok(Password(password.to_owned()))
}

/// `--etcd-cafile`: a readable PEM file holding a certificate.
fn ca_file(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    ipam::etcd::load_pem_certificates("CA file", &path).map_err(|e| e.to_string())?;
    Ok(path)
}

/// `--etcd-certfile`: a readable PEM file holding a certificate.
fn certificate_file(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    ipam::etcd::load_pem_certificates("certificate file", &path).map_err(|e| e.to_string())?;
    Ok(path)
}

/// `--etcd-keyfile`: a readable PEM file holding a private key.
fn key_file(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    ipam::etcd::load_pem_private_key(&path).map_err(|e| e.to_string())?;
    Ok(path)
}

/// `--etcd-password-file`: a readable file, read at once.
fn password_file(s: &str) -> Result<PasswordFile, String> {
    let path = PathBuf::from(s);
    let password = read_password_file(&path)?;
    Ok(PasswordFile { path, password })
}

/// A password file and what it held when the flags were parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordFile {
    /// The file.
    pub path: PathBuf,
    /// Its contents without the trailing newline.
    pub password: Password,
}

/// etcd's TLS and authentication flags (Flannel's names). Parsing checks how they combine:
/// clap's own `requires` and groups do not see global flags given on both sides of a
/// subcommand, so the combinations are checked once every flag is known.
#[derive(Debug, Clone, Default, Args)]
pub struct EtcdSecurityFlags {
    /// PEM CA bundle to verify etcd's serving certificate with (Flannel's --etcd-cafile).
    /// Without it, https:// endpoints are verified against the system's trusted roots.
    #[arg(
        long,
        env = "FABRIC_ETCD_CAFILE",
        value_name = "FILE",
        value_parser = ca_file,
        global = true
    )]
    pub etcd_cafile: Option<PathBuf>,

    /// PEM client certificate presented to etcd, for etcd's --client-cert-auth (Flannel's
    /// --etcd-certfile). Needs --etcd-keyfile.
    #[arg(
        long,
        env = "FABRIC_ETCD_CERTFILE",
        value_name = "FILE",
        value_parser = certificate_file,
        global = true
    )]
    pub etcd_certfile: Option<PathBuf>,

    /// PEM private key of --etcd-certfile (Flannel's --etcd-keyfile).
    #[arg(
        long,
        env = "FABRIC_ETCD_KEYFILE",
        value_name = "FILE",
        value_parser = key_file,
        global = true
    )]
    pub etcd_keyfile: Option<PathBuf>,

    /// etcd user to authenticate as, when etcd has `auth enable`d (Flannel's
    /// --etcd-username). Needs --etcd-password or --etcd-password-file.
    #[arg(long, env = "FABRIC_ETCD_USERNAME", value_name = "USER", global = true)]
    pub etcd_username: Option<String>,

    /// Password of --etcd-username (Flannel's --etcd-password). Prefer --etcd-password-file:
    /// a command line is visible to every user of the machine.
    #[arg(
        long,
        env = "FABRIC_ETCD_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true,
        global = true
    )]
    pub etcd_password: Option<Password>,

    /// File holding the password of --etcd-username (a trailing newline is ignored); a
    /// mounted Secret, say. Conflicts with --etcd-password.
    #[arg(
        long,
        env = "FABRIC_ETCD_PASSWORD_FILE",
        value_name = "FILE",
        value_parser = password_file,
        global = true
    )]
    pub etcd_password_file: Option<PasswordFile>,
}

impl EtcdSecurityFlags {
    /// The combinations that make no sense: a certificate without its key (or the other way
    /// round), a password without a user, a user without a password, two passwords.
    pub fn check(&self) -> Result<(), String> {
        match (&self.etcd_certfile, &self.etcd_keyfile) {
            (Some(_), None) => return Err("--etcd-certfile needs --etcd-keyfile".into()),
            (None, Some(_)) => return Err("--etcd-keyfile needs --etcd-certfile".into()),
            _ => {}
        }
        let password = self.etcd_password.is_some() || self.etcd_password_file.is_some();
        if self.etcd_password.is_some() && self.etcd_password_file.is_some() {
            return Err("--etcd-password and --etcd-password-file conflict: give one".into());
        }
        match (&self.etcd_username, password) {
            (Some(user), false) => Err(format!(
                "--etcd-username {user} needs --etcd-password or --etcd-password-file"
            )),
            (None, true) => Err("an etcd password needs --etcd-username".into()),
            _ => Ok(()),
        }
    }
}

/// [`EtcdSecurityFlags`], checked when parsed (a bad combination is a usage error).
#[derive(Debug, Clone, Default)]
pub struct EtcdSecurity(pub EtcdSecurityFlags);

impl std::ops::Deref for EtcdSecurity {
    type Target = EtcdSecurityFlags;

    fn deref(&self) -> &EtcdSecurityFlags {
        &self.0
    }
}

impl FromArgMatches for EtcdSecurity {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let flags = EtcdSecurityFlags::from_arg_matches(matches)?;
        flags
            .check()
            .map_err(|e| clap::Error::raw(ErrorKind::ArgumentConflict, e))?;
        Ok(EtcdSecurity(flags))
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches(matches)?;
        self.0
            .check()
            .map_err(|e| clap::Error::raw(ErrorKind::ArgumentConflict, e))
    }
}

impl Args for EtcdSecurity {
    fn augment_args(cmd: Command) -> Command {
        EtcdSecurityFlags::augment_args(cmd)
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        EtcdSecurityFlags::augment_args_for_update(cmd)
    }
}

/// The datastore flags. Each is also an environment variable.
#[derive(Debug, Clone, Args)]
pub struct DatastoreFlags {
    /// Where the cluster's state lives: etcd, or kubernetes (subnets from each node's
    /// spec.podCIDRs, policies and pods from the API).
    #[arg(long, env = "FABRIC_DATASTORE", value_enum, default_value_t = Datastore::Etcd, global = true)]
    pub datastore: Datastore,

    /// Flannel's spelling of `--datastore kubernetes`.
    #[arg(long, env = "FABRIC_KUBE_SUBNET_MGR", global = true)]
    pub kube_subnet_mgr: bool,

    /// etcd endpoints, comma-separated.
    #[arg(
        long,
        env = "FABRIC_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379",
        global = true
    )]
    pub etcd_endpoints: Vec<String>,

    /// Key prefix of fabric's data in etcd.
    #[arg(
        long,
        env = "FABRIC_ETCD_PREFIX",
        default_value = "/fabric",
        global = true
    )]
    pub etcd_prefix: String,

    /// TLS and authentication towards etcd.
    #[command(flatten)]
    pub etcd_security: EtcdSecurity,

    /// kubeconfig for the Kubernetes API [default: the pod's service account (in-cluster)].
    #[arg(
        long,
        visible_alias = "kubeconfig-file",
        env = "FABRIC_KUBECONFIG",
        global = true
    )]
    pub kubeconfig: Option<PathBuf>,

    /// The network config in Kubernetes mode: Flannel's net-conf.json (the DaemonSet mounts
    /// it from the ConfigMap).
    #[arg(
        long,
        env = "FABRIC_NET_CONFIG_PATH",
        default_value = "/etc/fabric/net-conf.json",
        global = true
    )]
    pub net_config_path: PathBuf,

    /// Prefix of the node annotations fabric publishes its backend data under (Kubernetes).
    #[arg(
        long,
        env = "FABRIC_KUBE_ANNOTATION_PREFIX",
        default_value = "fabric.dev",
        global = true
    )]
    pub kube_annotation_prefix: String,
}

/// A connected datastore: the same object behind both seams.
#[derive(Clone)]
pub enum Connected {
    /// etcd.
    Etcd(Arc<EtcdStore>),
    /// The Kubernetes API.
    Kubernetes(Arc<KubeStore>),
}

impl Connected {
    /// The lease seam.
    pub fn store(&self) -> Arc<dyn Store> {
        match self {
            Connected::Etcd(s) => s.clone(),
            Connected::Kubernetes(s) => s.clone(),
        }
    }

    /// The policy object seam.
    pub fn source(&self) -> Arc<dyn ObjectSource> {
        match self {
            Connected::Etcd(s) => s.clone(),
            Connected::Kubernetes(s) => s.clone(),
        }
    }

    /// This datastore with lease watches that keep a lease whose TTL ran out for `grace`
    /// more (etcd: see [`EtcdStore::keeping_expired_leases`]; the Kubernetes API's nodes do
    /// not expire).
    pub fn keeping_expired_leases(self, grace: std::time::Duration) -> Self {
        match self {
            Connected::Etcd(s) => {
                Connected::Etcd(Arc::new((*s).clone().keeping_expired_leases(grace)))
            }
            kube @ Connected::Kubernetes(_) => kube,
        }
    }

    /// The datastore's long-running followers (lease and object watches) by name, with the
    /// pulse each one's loop beats, for `/healthz` (see [`crate::health::Liveness::pulse`]).
    pub fn followers(&self) -> Vec<(&'static str, ipam::backoff::Pulse)> {
        match self {
            Connected::Etcd(s) => s.followers(),
            Connected::Kubernetes(s) => s.followers(),
        }
    }
}

impl DatastoreFlags {
    /// The datastore chosen (`--kube-subnet-mgr` counts as `--datastore kubernetes`).
    pub fn kind(&self) -> Datastore {
        if self.kube_subnet_mgr {
            Datastore::Kubernetes
        } else {
            self.datastore
        }
    }

    /// How to reach etcd, as the flags say. A password file is read again here, so a
    /// rotated Secret is picked up when fabricd reconnects.
    pub fn etcd_options(&self) -> Result<EtcdOptions, StoreError> {
        let sec = &self.etcd_security;
        sec.check().map_err(StoreError::Unavailable)?;
        let identity = match (&sec.etcd_certfile, &sec.etcd_keyfile) {
            (Some(cert_file), Some(key_file)) => Some(EtcdIdentity {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
            }),
            _ => None,
        };
        let tls = (sec.etcd_cafile.is_some() || identity.is_some()).then(|| EtcdTls {
            ca_file: sec.etcd_cafile.clone(),
            identity,
        });
        let auth = match &sec.etcd_username {
            Some(username) => {
                let password = match (&sec.etcd_password, &sec.etcd_password_file) {
                    (Some(password), _) => password.clone(),
                    (None, Some(file)) => {
                        read_password_file(&file.path).map_err(StoreError::Unavailable)?
                    }
                    (None, None) => {
                        return Err(StoreError::Unavailable(format!(
                            "--etcd-username {username} needs --etcd-password or \
                             --etcd-password-file"
                        )))
                    }
                };
                Some(EtcdAuth {
                    username: username.clone(),
                    password: password.0,
                })
            }
            None => None,
        };
        Ok(EtcdOptions {
            endpoints: self.etcd_endpoints.clone(),
            prefix: self.etcd_prefix.clone(),
            tls,
            auth,
        })
    }

    /// Connects to the chosen datastore.
    pub async fn connect(&self) -> Result<Connected, StoreError> {
        Ok(match self.kind() {
            Datastore::Etcd => {
                let etcd = EtcdStore::connect(&self.etcd_options()?).await?;
                Connected::Etcd(Arc::new(etcd))
            }
            Datastore::Kubernetes => {
                let credentials = match &self.kubeconfig {
                    Some(path) => Credentials::Kubeconfig(path.clone()),
                    None => Credentials::InCluster,
                };
                Connected::Kubernetes(Arc::new(
                    KubeStore::connect(
                        &credentials,
                        &self.kube_annotation_prefix,
                        &self.net_config_path,
                    )
                    .await?,
                ))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        datastore: DatastoreFlags,
        #[command(subcommand)]
        command: Option<Sub>,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Sub {
        Leases,
    }

    fn parse(args: &[&str]) -> Result<DatastoreFlags, clap::Error> {
        Cli::try_parse_from(std::iter::once("t").chain(args.iter().copied())).map(|c| c.datastore)
    }

    #[test]
    fn security_flags_combine_on_either_side_of_a_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let pw = pw.display().to_string();
        let flags = parse(&[
            "--etcd-username",
            "u",
            "leases",
            "--etcd-password-file",
            &pw,
        ])
        .unwrap();
        let options = flags.etcd_options().unwrap();
        let auth = options.auth.unwrap();
        assert_eq!(
            (auth.username.as_str(), auth.password.as_str()),
            ("u", "s3cret")
        );
        assert!(!format!("{flags:?}{auth:?}").contains("s3cret"));
        assert!(options.tls.is_none());

        let err = parse(&["--etcd-username", "u", "leases"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs --etcd-password"), "{err}");
        let err = parse(&[
            "--etcd-password",
            "x",
            "leases",
            "--etcd-username",
            "u",
            "--etcd-password-file",
            &pw,
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("conflict"), "{err}");
        let err = parse(&["--etcd-password", "x"]).unwrap_err().to_string();
        assert!(err.contains("needs --etcd-username"), "{err}");
    }

    #[test]
    fn tls_files_are_checked_when_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.crt").display().to_string();
        let err = parse(&["--etcd-cafile", &missing]).unwrap_err().to_string();
        assert!(
            err.contains("cannot read etcd CA file") && err.contains("nope.crt"),
            "{err}"
        );
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not pem\n").unwrap();
        let junk = junk.display().to_string();
        let err = parse(&["leases", "--etcd-keyfile", &junk])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("holds no PEM private key") && err.contains("junk.pem"),
            "{err}"
        );
    }

    #[test]
    fn password_file_trims_one_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "a b\r\n").unwrap();
        assert_eq!(read_password_file(&path).unwrap(), Password("a b".into()));
        std::fs::write(&path, "\n").unwrap();
        assert!(read_password_file(&path).unwrap_err().contains("is empty"));
    }
}
