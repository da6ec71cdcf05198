//! The etcd implementation of [`Store`], and the admin operations `fabricctl` needs.
//!
//! Keys under the prefix (default `/fabric`): `config` (the network config),
//! `subnets/<a.b.c.d-len>` (one lease record per node, bound to an etcd lease so it expires
//! with the node), `reservations/<a.b.c.d-len>` (a subnet pinned to a node name), and the
//! policy objects of [`crate::objects`] (`namespaces/`, `pods/`, `policies/`).
//!
//! One read path serves every listing ([`EtcdStore::list_range`]: paginated, one revision)
//! and one watch path every follower ([`EtcdStore::follow_range`]: a listing, then events from
//! the revision after it, and a fresh listing whenever the watch breaks or falls behind a
//! compaction). The lease watch and fabricd's policy view are both built on it. A watch never
//! waits on a silent connection for long: it asks etcd for progress after each
//! [`WATCH_SILENCE`] wake and restarts when no answer comes; each follower's loop beats a
//! [`Pulse`] the store hands out ([`EtcdStore::followers`]) for a health check to watch.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions,
    Identity, KeyValue, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use ipnet::Ipv4Net;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::backoff::{Backoff, Heard, Pulse, Quiet, Silence};
use crate::config::NetworkConfig;
use crate::lease::{parse_subnet_key, subnet_key, Lease, LeaseRecord, LeaseRequest, Leases};
use crate::objects::{Kind, PodRecord, StoredObject, Versioned};
use crate::store::{
    ObjectFeed, ObjectSource, ObjectUpdate, ProgressHandle, Renewal, Store, StoreError,
};
use crate::subnet::{choose, Choice, Occupancy, UNREADABLE};

/// How many times one acquire call retries after losing a race for a subnet.
const ACQUIRE_ATTEMPTS: usize = 16;

/// Keys per page of a listing (pages keep each answer well under gRPC's 4 MiB message limit).
const LIST_PAGE: i64 = 512;

/// Operations per transaction (etcd's default `--max-txn-ops` is 128).
const TXN_OPS: usize = 128;

/// Bytes of values per transaction (etcd's default `--max-request-bytes` is 1.5 MiB).
const TXN_BYTES: usize = 1 << 20;

/// A watch that ran this long before it broke was healthy: the next relist waits the
/// shortest delay again.
const HEALTHY_WATCH: Duration = Duration::from_secs(10);

/// Updates a follower may queue before its watch waits for the consumer.
const FOLLOW_QUEUE: usize = 256;

/// How a watch waits on a quiet etcd: after each 10 s of silence it asks for a progress
/// report (etcd answers once the watch has caught up, and nothing else needs to happen), and
/// a watch silent for 30 s, three asks unanswered, is dead (its connection hangs: etcd
/// blackholed, a half-open connection) and is restarted.
pub const WATCH_SILENCE: Silence = Silence {
    wake: Duration::from_secs(10),
    dead: Duration::from_secs(30),
};

/// How long creating a watch may take (etcd confirms it at once).
const WATCH_SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long asking a watch for progress may take (the request is only queued on its stream).
const PROGRESS_ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// How long asking etcd whether a deleted record's etcd lease ran out may take.
const LEASE_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// A range of keys: `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    /// The first key.
    pub start: String,
    /// The first key past the range.
    pub end: String,
}

impl KeyRange {
    /// Every key that starts with `prefix` (non-empty).
    pub fn prefix(prefix: &str) -> Self {
        let mut end = prefix.as_bytes().to_vec();
        // Keys here are ASCII: the last byte is below 0xff and can be raised.
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        Self {
            start: prefix.to_owned(),
            end: String::from_utf8_lossy(&end).into_owned(),
        }
    }
}

/// One key of a range as it stands after a listing or a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyState {
    /// The full key.
    pub key: String,
    /// Its value; `None` once deleted.
    pub value: Option<Vec<u8>>,
    /// The etcd lease it is bound to (0 for none).
    pub lease: i64,
    /// The revision of its last write (or of its deletion).
    pub mod_revision: i64,
}

impl KeyState {
    fn stored(kv: &KeyValue) -> Self {
        Self {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: Some(kv.value().to_vec()),
            lease: kv.lease(),
            mod_revision: kv.mod_revision(),
        }
    }
}

/// What the follower of a key range reports, in etcd's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeUpdate {
    /// Every key in the range, read at `revision`. The first update, and again whenever the
    /// watch broke (lost connection, cancellation, compaction): it replaces what came before.
    Listed {
        /// The revision of the read.
        revision: i64,
        /// The keys.
        keys: Vec<KeyState>,
    },
    /// Keys that changed, in order, up to `revision` (the last change's).
    Changed {
        /// The revision of the last change.
        revision: i64,
        /// The changed keys, deletions with no value.
        keys: Vec<KeyState>,
    },
    /// Nothing in the range changed up to `revision` (etcd's answer to
    /// [`ProgressHandle::request`], sent once the watch has caught up).
    Progress {
        /// The store's revision when etcd answered.
        revision: i64,
    },
}

/// A key range followed by a task of its own (see [`EtcdStore::follow_range`]); dropping it
/// stops the task.
#[derive(Debug)]
pub struct RangeFollower {
    updates: mpsc::Receiver<RangeUpdate>,
    progress: ProgressHandle,
}

impl RangeFollower {
    /// The next update; the first is always a [`RangeUpdate::Listed`]. `None` only if the
    /// following task died.
    pub async fn next(&mut self) -> Option<RangeUpdate> {
        self.updates.recv().await
    }

    /// Asks for a progress report (see [`ProgressHandle`]).
    pub fn progress(&self) -> ProgressHandle {
        self.progress.clone()
    }
}

#[async_trait]
impl ObjectSource for EtcdStore {
    async fn follow(&self) -> Result<ObjectFeed, StoreError> {
        let mut range = self.follow_objects().await?;
        let progress = range.progress();
        let (tx, updates) = mpsc::channel(FOLLOW_QUEUE);
        let store = self.clone();
        tokio::spawn(async move {
            while let Some(update) = range.next().await {
                let update = match update {
                    RangeUpdate::Listed { revision, keys } => ObjectUpdate::Listed {
                        revision,
                        objects: store.objects_of(keys),
                    },
                    RangeUpdate::Changed { revision, keys } => ObjectUpdate::Changed {
                        revision,
                        objects: store.objects_of(keys),
                    },
                    RangeUpdate::Progress { revision } => ObjectUpdate::Progress { revision },
                };
                if tx.send(update).await.is_err() {
                    return;
                }
            }
        });
        Ok(ObjectFeed { updates, progress })
    }

    async fn list_objects(&self) -> Result<(i64, Vec<StoredObject>), StoreError> {
        self.list_all_objects().await
    }

    async fn checkpoint(&self) -> Result<i64, StoreError> {
        self.current_revision().await
    }
}

/// A reservation record: the node a subnet is pinned to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// The node's name.
    pub node: String,
}

/// fabric's datastore in etcd.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    prefix: String,
    /// Keeps the auth token fresh while any clone of the store lives (see [`TokenKeeper`]).
    _token_keeper: Option<Arc<TokenKeeper>>,
    /// Keeps requests off endpoints that refuse connections (see [`EndpointKeeper`]).
    _endpoint_keeper: Option<Arc<EndpointKeeper>>,
    /// The pulses of the store's followers, shared by its clones.
    followers: Arc<Followers>,
    /// How long a lease watch keeps a lease whose etcd lease ran out (see [`WatchedLeases`]);
    /// zero: not at all.
    expired_grace: Duration,
}

/// The pulses of a store's long-running followers (see [`EtcdStore::followers`]).
#[derive(Debug, Default)]
struct Followers {
    /// Every lease watch's loop.
    leases: Pulse,
    /// Every policy object watch's loop.
    objects: Pulse,
}

/// How often [`EndpointKeeper`] probes the endpoints of a store with more than one.
const ENDPOINT_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// How long one endpoint probe (a TCP connect) may take.
const ENDPOINT_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an idempotent write is tried again while etcd fails over ([`retry_transient`]):
/// an election takes a second or two, a request caught in one times out after about 7 s.
const FAILOVER_RETRY_FOR: Duration = Duration::from_secs(8);
/// The pause between those tries.
const FAILOVER_RETRY_PAUSE: Duration = Duration::from_millis(250);

/// Whether `e` is a failure a cluster fails over from: no connection to the member asked, no
/// leader, a leader change, or a request timed out in an election (its outcome unknown, so
/// only an idempotent request may be sent again).
fn is_transient(e: &etcd_client::Error) -> bool {
    let text = e.to_string();
    [
        "tcp connect error",
        "transport error",
        "leader changed",
        "no leader",
        "request timed out",
        "error reading a body from connection",
    ]
    .iter()
    .any(|hint| text.contains(hint))
}

/// Runs the idempotent request `op` until it succeeds, fails for good, or has failed
/// transiently ([`is_transient`]) for [`FAILOVER_RETRY_FOR`]: a pod's record written during
/// an election must not be lost, since nothing writes it again.
async fn retry_transient<T, F, Fut>(what: &str, mut op: F) -> Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let start = tokio::time::Instant::now();
    loop {
        match op().await {
            Err(e) if is_transient(&e) && start.elapsed() < FAILOVER_RETRY_FOR => {
                tracing::warn!(error = %e, "{what} failed while etcd fails over; retrying");
                tokio::time::sleep(FAILOVER_RETRY_PAUSE).await;
            }
            done => return done,
        }
    }
}

/// How long a token may go unchecked: etcd expires an unused simple token after
/// `--auth-token-ttl` (300 s by default), JWT tokens after their `ttl`, and every simple
/// token when the member restarts.
const TOKEN_CHECK_INTERVAL: Duration = Duration::from_secs(15);

/// How to reach etcd: endpoints, key prefix, and optionally TLS and a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    /// Client URLs, `http://` or `https://`.
    pub endpoints: Vec<String>,
    /// The key prefix of fabric's data (e.g. `/fabric`).
    pub prefix: String,
    /// TLS for `https://` endpoints; `None` with `https://` endpoints means the system's
    /// trusted roots and no client certificate.
    pub tls: Option<EtcdTls>,
    /// The etcd user to authenticate as (etcd's `auth enable`).
    pub auth: Option<EtcdAuth>,
}

impl EtcdOptions {
    /// Plain options: `endpoints` and `prefix`, no TLS, no user.
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>, prefix: &str) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            prefix: prefix.to_owned(),
            tls: None,
            auth: None,
        }
    }
}

/// TLS towards etcd (Flannel's `--etcd-cafile`, `--etcd-certfile`, `--etcd-keyfile`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdTls {
    /// PEM CA bundle that signed etcd's serving certificate; `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for etcd's `--client-cert-auth`.
    pub identity: Option<EtcdIdentity>,
}

/// A client certificate and its private key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdIdentity {
    /// The certificate (chain).
    pub cert_file: PathBuf,
    /// Its private key.
    pub key_file: PathBuf,
}

/// An etcd user and password. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdAuth {
    /// The user name.
    pub username: String,
    /// The password.
    pub password: String,
}

impl fmt::Debug for EtcdAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Why TLS material could not be loaded; each names its file.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    /// The file could not be read.
    #[error("cannot read etcd {what} {}: {source}", path.display())]
    Read {
        /// Which file (`CA file`, `certificate file`, `key file`).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file holds no usable PEM item of the kind expected.
    #[error("etcd {what} {} {reason}", path.display())]
    Parse {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl From<TlsFileError> for StoreError {
    fn from(e: TlsFileError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

fn read_tls_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Reads a PEM file of certificates (a CA bundle or a client certificate chain) and checks
/// it holds at least one; returns its bytes.
pub fn load_pem_certificates(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    let pem = read_tls_file(what, path)?;
    let parse = |reason: String| TlsFileError::Parse {
        what,
        path: path.to_owned(),
        reason,
    };
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parse(format!("is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(parse(
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(pem)
}

/// Reads a PEM private key file (PKCS#8, PKCS#1 or SEC1) and checks it holds one.
pub fn load_pem_private_key(path: &Path) -> Result<Vec<u8>, TlsFileError> {
    const WHAT: &str = "key file";
    let pem = read_tls_file(WHAT, path)?;
    match rustls_pemfile::private_key(&mut pem.as_slice()) {
        Ok(Some(_)) => Ok(pem),
        Ok(None) => Err(TlsFileError::Parse {
            what: WHAT,
            path: path.to_owned(),
            reason: "holds no PEM private key (-----BEGIN PRIVATE KEY-----)".into(),
        }),
        Err(e) => Err(TlsFileError::Parse {
            what: WHAT,
            path: path.to_owned(),
            reason: format!("is not valid PEM: {e}"),
        }),
    }
}

impl EtcdTls {
    /// The TLS configuration tonic takes: the CA (or the system's roots) and the identity.
    fn client_config(&self) -> Result<TlsOptions, TlsFileError> {
        let mut config = match &self.ca_file {
            Some(ca) => TlsOptions::new()
                .ca_certificate(Certificate::from_pem(load_pem_certificates("CA file", ca)?)),
            None => TlsOptions::new().with_native_roots(),
        };
        if let Some(id) = &self.identity {
            let cert = load_pem_certificates("certificate file", &id.cert_file)?;
            let key = load_pem_private_key(&id.key_file)?;
            config = config.identity(Identity::from_pem(cert, key));
        }
        Ok(config)
    }
}

/// Re-authenticates a store's client when etcd stops honouring its token (expired, or the
/// member that issued it restarted), checking every [`TOKEN_CHECK_INTERVAL`]. The store's
/// clones share it; the task stops when the last of them is dropped.
struct TokenKeeper {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TokenKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether `e` is etcd's answer to a request (not a transport failure) about who is asking:
/// bad credentials, a missing or stale token, a denied permission.
fn is_auth_answer(e: &etcd_client::Error) -> bool {
    use etcd_client::Error::GRpcStatus;
    // gRPC codes: 3 InvalidArgument (authentication failed), 7 PermissionDenied,
    // 9 FailedPrecondition (auth not enabled), 16 Unauthenticated (bad token).
    matches!(e, GRpcStatus(s) if matches!(s.code() as i32, 3 | 7 | 9 | 16))
}

/// Whether etcd denied the request for the user's role.
fn is_permission_denied(e: &etcd_client::Error) -> bool {
    e.to_string().contains("permission denied")
}

/// Whether etcd refused a request for its auth token (not for the user's permissions).
fn is_token_error(e: &etcd_client::Error) -> bool {
    let text = e.to_string();
    text.contains("invalid auth token")
        || text.contains("auth store is old")
        || text.contains("user name is empty")
}

/// etcd's own words for a failed request: the gRPC status message (without the transport
/// metadata), and the causes below it.
fn etcd_message(e: &etcd_client::Error) -> String {
    let mut text = match e {
        etcd_client::Error::GRpcStatus(s) => s.message().to_owned(),
        other => other.to_string(),
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// What etcd's refusal of `username`'s credentials means, for a person.
fn auth_refused(username: &str, endpoints: &[String], e: &etcd_client::Error) -> StoreError {
    let text = etcd_message(e);
    let why = if text.contains("authentication failed") {
        "wrong user name or password"
    } else if text.contains("authentication is not enabled") {
        "authentication is not enabled on this etcd (drop --etcd-username)"
    } else {
        "see etcd's answer"
    };
    StoreError::Unavailable(format!(
        "etcd at {endpoints:?} refused authentication for user {username}: {why} ({text})"
    ))
}

/// Explains a failed connection, the causes a person can act on first.
fn connect_failed(options: &EtcdOptions, e: &etcd_client::Error) -> StoreError {
    let endpoints = &options.endpoints;
    let text = etcd_message(e);
    let chain = format!("{text} {e:?}");
    let https = endpoints.iter().any(|e| e.starts_with("https://"));
    let has_cert = options.tls.as_ref().is_some_and(|t| t.identity.is_some());
    let hint = if chain.contains("UnknownIssuer") {
        ": etcd's certificate is not signed by a CA this client trusts (--etcd-cafile)"
    } else if chain.contains("NotValidForName") {
        ": etcd's certificate does not name this endpoint's host"
    } else if chain.contains("ertificateRequired") || chain.contains("certificate required") {
        ": etcd requires a client certificate (--etcd-certfile and --etcd-keyfile)"
    } else if chain.contains("tcp connect error") || chain.contains("onnection refused") {
        ": nothing accepts connections there (is etcd running, is the endpoint right?)"
    } else if https && !has_cert {
        ": etcd closed the connection after the TLS handshake; if it runs with \
         --client-cert-auth, give a client certificate (--etcd-certfile and --etcd-keyfile)"
    } else if !https {
        ": etcd did not answer plain http; if it serves TLS, use an https:// endpoint \
         (and --etcd-cafile)"
    } else {
        ""
    };
    StoreError::Unavailable(format!(
        "cannot connect to etcd at {endpoints:?}: {text}{hint}"
    ))
}

/// Keeps a multi-endpoint client's balancer to the endpoints that accept connections.
///
/// etcd-client balances requests over every endpoint with tonic's balancer, which keeps
/// choosing an endpoint whose member is down (it fails fast, so it looks least loaded): each
/// request sent there fails with "tcp connect error" while the other members serve, and a
/// store with one member of three down fails most calls, lease acquisition included. So every
/// [`ENDPOINT_CHECK_INTERVAL`] each endpoint is probed with a TCP connect; one that refuses is
/// taken out of the balancer, and put back once it accepts again. The last endpoint in the
/// balancer always stays (with every member down, errors should say so). The store's clones
/// share the keeper; the task stops when the last of them is dropped.
struct EndpointKeeper {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EndpointKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `host:port` of an etcd client URL (`https://10.0.0.1:2379/` -> `10.0.0.1:2379`).
fn endpoint_authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest)
}

impl EndpointKeeper {
    fn start(client: &Client, endpoints: &[String]) -> Self {
        let client = client.clone();
        let endpoints = endpoints.to_vec();
        let task = tokio::spawn(async move {
            let mut in_balancer = vec![true; endpoints.len()];
            let mut tick = tokio::time::interval(ENDPOINT_CHECK_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                for (k, url) in endpoints.iter().enumerate() {
                    let probe = tokio::net::TcpStream::connect(endpoint_authority(url));
                    let up = matches!(
                        tokio::time::timeout(ENDPOINT_PROBE_TIMEOUT, probe).await,
                        Ok(Ok(_))
                    );
                    let others = in_balancer
                        .iter()
                        .enumerate()
                        .any(|(j, &kept)| j != k && kept);
                    let change = match (up, in_balancer[k]) {
                        (true, false) => client.add_endpoint(url).await.map(|()| true),
                        (false, true) if others => {
                            client.remove_endpoint(url).await.map(|()| false)
                        }
                        _ => continue,
                    };
                    match change {
                        Ok(kept) => {
                            in_balancer[k] = kept;
                            if kept {
                                tracing::info!(endpoint = %url, "etcd endpoint accepts connections again; using it");
                            } else {
                                tracing::warn!(endpoint = %url, "etcd endpoint refuses connections; using the others");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(endpoint = %url, error = %e, "cannot change the etcd endpoints in use")
                        }
                    }
                }
            }
        });
        Self { task }
    }
}

impl TokenKeeper {
    fn start(store: &EtcdStore, auth: EtcdAuth) -> Self {
        let mut client = store.client.clone();
        let probe_key = store.key("config");
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(TOKEN_CHECK_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                let probe = client
                    .get(
                        probe_key.as_str(),
                        Some(GetOptions::new().with_count_only()),
                    )
                    .await;
                let Err(e) = probe else { continue };
                if !is_token_error(&e) {
                    continue;
                }
                match client
                    .set_client_auth(auth.username.clone(), auth.password.clone())
                    .await
                {
                    Ok(()) => tracing::info!(user = %auth.username, "etcd auth token renewed"),
                    Err(e) => tracing::warn!(
                        user = %auth.username,
                        error = %e,
                        "renewing the etcd auth token failed; retrying"
                    ),
                }
            }
        });
        Self { task }
    }
}

fn unavailable(e: etcd_client::Error) -> StoreError {
    if is_permission_denied(&e) {
        return StoreError::Unavailable(
            "etcd denied permission: the etcd user's role does not grant this access to the key \
             (see the roles in README, \"etcd with TLS and authentication\")"
                .into(),
        );
    }
    StoreError::Unavailable(e.to_string())
}

impl EtcdStore {
    /// Connects to etcd as `options` say: over TLS if given (or for `https://` endpoints),
    /// as the given user if any. A bad TLS file, a refused certificate or refused credentials
    /// are reported as such; the password is never part of an error or a log line.
    pub async fn connect(options: &EtcdOptions) -> Result<Self, StoreError> {
        let endpoints = &options.endpoints;
        if let Some(plain) = endpoints.iter().find(|e| e.starts_with("http://")) {
            if options.tls.is_some() {
                return Err(StoreError::Unavailable(format!(
                    "etcd TLS options given but endpoint {plain} is plain http: use https://"
                )));
            }
        }
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(10))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let system_roots = EtcdTls::default();
        let tls = match &options.tls {
            Some(tls) => Some(tls),
            None if endpoints.iter().any(|e| e.starts_with("https://")) => Some(&system_roots),
            None => None,
        };
        if let Some(tls) = tls {
            connect = connect.with_tls(tls.client_config()?);
        }
        if let Some(auth) = &options.auth {
            connect = connect.with_user(auth.username.clone(), auth.password.clone());
        }
        let client = Client::connect(endpoints, Some(connect))
            .await
            .map_err(|e| match &options.auth {
                Some(auth) if is_auth_answer(&e) => auth_refused(&auth.username, endpoints, &e),
                _ => connect_failed(options, &e),
            })?;
        let mut store = Self {
            _endpoint_keeper: (endpoints.len() > 1)
                .then(|| Arc::new(EndpointKeeper::start(&client, endpoints))),
            client,
            prefix: options.prefix.trim_end_matches('/').to_owned(),
            _token_keeper: None,
            followers: Arc::default(),
            expired_grace: Duration::ZERO,
        };
        // The channel connects lazily: one read now, so an unreachable etcd or a refused TLS
        // handshake is reported here, as such. A permission error is the role's business and
        // shows where that key is used.
        if let Err(e) = store
            .client
            .clone()
            .get(
                store.key("config"),
                Some(GetOptions::new().with_count_only()),
            )
            .await
        {
            let denied = is_permission_denied(&e);
            match &options.auth {
                // The role may not read the config; the key it needs will tell.
                Some(_) if denied => {}
                Some(auth) if is_auth_answer(&e) => {
                    return Err(auth_refused(&auth.username, endpoints, &e))
                }
                None if denied => {
                    return Err(StoreError::Unavailable(format!(
                        "etcd at {endpoints:?} has authentication enabled and refuses anonymous \
                         clients: give --etcd-username and --etcd-password-file"
                    )))
                }
                _ => return Err(connect_failed(options, &e)),
            }
        }
        if let Some(auth) = &options.auth {
            store._token_keeper = Some(Arc::new(TokenKeeper::start(&store, auth.clone())));
            tracing::debug!(user = %auth.username, "authenticated to etcd");
        }
        Ok(store)
    }

    fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.prefix)
    }

    /// This store with lease watches that keep a lease whose etcd lease ran out for `grace`
    /// more, unless its subnet is leased again meanwhile (see [`WatchedLeases`]): fabricd
    /// gives its own lease TTL, so a peer cut off from etcd keeps its routes for up to twice
    /// the TTL since its last renewal, and a peer that is gone is forgotten then.
    pub fn keeping_expired_leases(mut self, grace: Duration) -> Self {
        self.expired_grace = grace;
        self
    }

    /// The store's long-running followers by name, each with the [`Pulse`] its loop beats at
    /// least every [`WATCH_SILENCE`] wake or retry, etcd reachable or not: the lease watch
    /// ([`Store::watch_leases`]) and the policy object watch ([`ObjectSource::follow`]).
    pub fn followers(&self) -> Vec<(&'static str, Pulse)> {
        vec![
            ("the lease watch", self.followers.leases.clone()),
            ("the policy object watch", self.followers.objects.clone()),
        ]
    }

    /// Every key in `range` and the revision they were read at: one consistent read, in
    /// pages of [`LIST_PAGE`] keys all taken at the first page's revision.
    pub async fn list_range(&self, range: &KeyRange) -> Result<(i64, Vec<KeyState>), StoreError> {
        let mut client = self.client.clone();
        let mut keys = Vec::new();
        let mut start = range.start.clone().into_bytes();
        let mut revision = 0;
        loop {
            let mut options = GetOptions::new()
                .with_range(range.end.as_str())
                .with_limit(LIST_PAGE);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let resp = client
                .get(start.clone(), Some(options))
                .await
                .map_err(unavailable)?;
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            keys.extend(resp.kvs().iter().map(KeyState::stored));
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => return Ok((revision, keys)),
            }
        }
    }

    /// The store's current revision.
    pub async fn current_revision(&self) -> Result<i64, StoreError> {
        let resp = self
            .client
            .clone()
            .get(
                self.key("config"),
                Some(GetOptions::new().with_count_only()),
            )
            .await
            .map_err(unavailable)?;
        resp.header()
            .map(|h| h.revision())
            .ok_or_else(|| StoreError::Unavailable("etcd answered without a header".into()))
    }

    fn subnets_prefix(&self) -> String {
        self.key("subnets/")
    }

    /// Validates `document` (Flannel's net-conf.json) and writes it as the network config,
    /// as written, so keys fabric does not use (and secrets such as a PSK) survive.
    pub async fn put_config(&self, document: &str) -> Result<NetworkConfig, StoreError> {
        let config = NetworkConfig::parse(document)?;
        self.client
            .clone()
            .put(self.key("config"), document, None)
            .await
            .map_err(unavailable)?;
        Ok(config)
    }

    /// Pins `subnet` to `node`.
    pub async fn reserve(&self, subnet: Ipv4Net, node: &str) -> Result<(), StoreError> {
        let config = self.network_config().await?;
        if !config.network.contains(&subnet) || subnet.prefix_len() != config.subnet_len {
            return Err(StoreError::BadRecord {
                key: self.key(&format!("reservations/{}", subnet_key(subnet))),
                reason: format!(
                    "{subnet} is not a /{} subnet of the network {}",
                    config.subnet_len, config.network
                ),
            });
        }
        let record = serde_json::to_string(&Reservation { node: node.into() }).expect("json");
        self.client
            .clone()
            .put(
                self.key(&format!("reservations/{}", subnet_key(subnet))),
                record,
                None,
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Writes object `name` of `kind` (JSON); returns the revision of the write.
    pub async fn put_object(
        &self,
        kind: Kind,
        name: &str,
        value: &serde_json::Value,
    ) -> Result<i64, StoreError> {
        let resp = self
            .client
            .clone()
            .put(
                self.key(&format!("{}{name}", kind.segment())),
                value.to_string(),
                None,
            )
            .await
            .map_err(unavailable)?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    /// Writes every object in `objects` (name, JSON value) of `kind`, in as few transactions
    /// as etcd takes ([`TXN_OPS`] operations, [`TXN_BYTES`] bytes each), so that a follower sees
    /// a large apply as a few revisions rather than one per object. A name given twice is
    /// written once, with its last value (etcd refuses a key twice in one transaction).
    pub async fn put_objects(
        &self,
        kind: Kind,
        objects: &[(String, serde_json::Value)],
    ) -> Result<(), StoreError> {
        let mut last: BTreeMap<&str, &serde_json::Value> = BTreeMap::new();
        for (name, value) in objects {
            last.insert(name, value);
        }
        let ops: Vec<(TxnOp, usize)> = objects
            .iter()
            .filter_map(|(name, _)| Some((name, last.remove(name.as_str())?)))
            .map(|(name, value)| {
                let value = value.to_string();
                let size = value.len();
                let key = self.key(&format!("{}{name}", kind.segment()));
                (TxnOp::put(key, value, None), size)
            })
            .collect();
        self.in_transactions(ops).await.map(drop)
    }

    /// Deletes objects `names` of `kind` in as few transactions as etcd takes; returns, per
    /// name, whether it existed.
    pub async fn delete_objects(
        &self,
        kind: Kind,
        names: &[String],
    ) -> Result<Vec<bool>, StoreError> {
        let mut unique: Vec<&str> = names.iter().map(String::as_str).collect();
        unique.sort_unstable();
        unique.dedup();
        let ops = unique
            .iter()
            .map(|name| {
                let key = self.key(&format!("{}{name}", kind.segment()));
                (TxnOp::delete(key, None), 0)
            })
            .collect();
        let responses = self.in_transactions(ops).await?;
        let existed: BTreeMap<&str, bool> = unique
            .into_iter()
            .zip(
                responses
                    .iter()
                    .map(|r| matches!(r, TxnOpResponse::Delete(d) if d.deleted() > 0)),
            )
            .collect();
        Ok(names.iter().map(|n| existed[n.as_str()]).collect())
    }

    /// Runs `ops` (each with the bytes it writes) in unconditional transactions, chunked to
    /// etcd's limits; returns the operations' responses in order.
    async fn in_transactions(
        &self,
        ops: Vec<(TxnOp, usize)>,
    ) -> Result<Vec<TxnOpResponse>, StoreError> {
        let mut client = self.client.clone();
        let mut responses = Vec::with_capacity(ops.len());
        let mut chunk = Vec::new();
        let mut bytes = 0;
        let mut ops = ops.into_iter().peekable();
        while let Some((op, size)) = ops.next() {
            chunk.push(op);
            bytes += size;
            let full = ops
                .peek()
                .is_none_or(|(_, next)| chunk.len() == TXN_OPS || bytes + next > TXN_BYTES);
            if full {
                let txn = Txn::new().and_then(std::mem::take(&mut chunk));
                let resp = client.txn(txn).await.map_err(unavailable)?;
                responses.extend(resp.op_responses());
                bytes = 0;
            }
        }
        Ok(responses)
    }

    /// Writes object `name` of `kind` only if it is unchanged since it was read at
    /// `mod_revision` (0: only if it does not exist); returns whether it was written. The
    /// guard of a read-modify-write, so that a relabel never resurrects a deleted pod.
    pub async fn put_object_if(
        &self,
        kind: Kind,
        name: &str,
        value: &serde_json::Value,
        mod_revision: i64,
    ) -> Result<bool, StoreError> {
        let key = self.key(&format!("{}{name}", kind.segment()));
        let compare = if mod_revision == 0 {
            Compare::version(key.as_str(), CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(key.as_str(), CompareOp::Equal, mod_revision)
        };
        let txn = Txn::new().when([compare]).and_then([TxnOp::put(
            key.as_str(),
            value.to_string(),
            None,
        )]);
        let resp = self.client.clone().txn(txn).await.map_err(unavailable)?;
        Ok(resp.succeeded())
    }

    /// Deletes object `name` of `kind` (with `prefix`, every object under `name/`); returns
    /// how many went.
    pub async fn delete_object(
        &self,
        kind: Kind,
        name: &str,
        prefix: bool,
    ) -> Result<i64, StoreError> {
        let options = prefix.then(|| DeleteOptions::new().with_prefix());
        let resp = self
            .client
            .clone()
            .delete(self.key(&format!("{}{name}", kind.segment())), options)
            .await
            .map_err(unavailable)?;
        Ok(resp.deleted())
    }

    /// Every object of `kind`, by name (the key below the kind's segment), with the revision
    /// of its last write; records that are not JSON are skipped with a warning.
    pub async fn list_objects(
        &self,
        kind: Kind,
    ) -> Result<BTreeMap<String, Versioned>, StoreError> {
        let prefix = self.key(kind.segment());
        let (_, keys) = self.list_range(&KeyRange::prefix(&prefix)).await?;
        let mut out = BTreeMap::new();
        for state in keys {
            let name = state.key.strip_prefix(&prefix).unwrap_or(&state.key);
            let value = state.value.as_deref().unwrap_or_default();
            match serde_json::from_slice(value) {
                Ok(value) => {
                    out.insert(
                        name.to_owned(),
                        Versioned {
                            value,
                            mod_revision: state.mod_revision,
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(key = %state.key, error = %e, "skipping a record that is not JSON")
                }
            }
        }
        Ok(out)
    }

    /// The keys holding the policy objects: from `namespaces/` to the end of `policies/`
    /// (`pods/` lies between; nothing else fabric writes does).
    fn objects_range(&self) -> KeyRange {
        KeyRange {
            start: self.key(Kind::Namespaces.segment()),
            end: KeyRange::prefix(&self.key(Kind::Policies.segment())).end,
        }
    }

    /// The policy object a key of [`Self::follow_objects`] or [`Self::list_all_objects`]
    /// holds; `None` for other keys in the range.
    pub fn object(&self, state: KeyState) -> Option<StoredObject> {
        let (kind, name) = state
            .key
            .strip_prefix(&self.prefix)
            .and_then(|k| k.strip_prefix('/'))
            .and_then(Kind::parse)?;
        Some(StoredObject {
            kind,
            name: name.to_owned(),
            value: state.value,
            mod_revision: state.mod_revision,
        })
    }

    /// Every namespace, pod and policy, read at one revision (returned with them).
    pub async fn list_all_objects(&self) -> Result<(i64, Vec<StoredObject>), StoreError> {
        let (revision, keys) = self.list_range(&self.objects_range()).await?;
        Ok((
            revision,
            keys.into_iter().filter_map(|k| self.object(k)).collect(),
        ))
    }

    /// Follows every namespace, pod and policy (see [`Self::follow_range`]); turn its keys into
    /// objects with [`Self::object`].
    pub async fn follow_objects(&self) -> Result<RangeFollower, StoreError> {
        self.follow_range_on(self.objects_range(), self.followers.objects.clone())
            .await
    }

    fn objects_of(&self, keys: Vec<KeyState>) -> Vec<StoredObject> {
        keys.into_iter().filter_map(|k| self.object(k)).collect()
    }

    /// Removes the reservation on `subnet`; returns whether there was one.
    pub async fn unreserve(&self, subnet: Ipv4Net) -> Result<bool, StoreError> {
        let resp = self
            .client
            .clone()
            .delete(
                self.key(&format!("reservations/{}", subnet_key(subnet))),
                None,
            )
            .await
            .map_err(unavailable)?;
        Ok(resp.deleted() > 0)
    }

    /// Every reservation. A record whose value cannot be decoded is kept as reserved to
    /// [`UNREADABLE`] (no node can claim its subnet), with a warning; a key that names no
    /// subnet is skipped.
    pub async fn reservations(&self) -> Result<BTreeMap<Ipv4Net, String>, StoreError> {
        let prefix = self.key("reservations/");
        let (_, keys) = self.list_range(&KeyRange::prefix(&prefix)).await?;
        let mut reservations = BTreeMap::new();
        for state in &keys {
            let (subnet, value) = match decode(&prefix, state) {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(error = %e, "skipping reservation record");
                    continue;
                }
            };
            let node = match serde_json::from_slice::<Reservation>(value) {
                Ok(r) => r.node,
                Err(e) => {
                    tracing::warn!(key = %state.key, error = %e, "unreadable reservation; its subnet stays reserved");
                    UNREADABLE.to_owned()
                }
            };
            reservations.insert(subnet, node);
        }
        Ok(reservations)
    }

    fn decode_lease(&self, state: &KeyState) -> Result<Lease, StoreError> {
        decode_lease(&self.subnets_prefix(), state)
    }

    /// Every lease record, with the revision each was last changed at; and the subnets whose
    /// records cannot be decoded, skipped with a warning (one bad record must not take the
    /// cluster down) but still occupied: their keys exist, so no one can claim them.
    async fn snapshot(&self) -> Result<LeaseSnapshot, StoreError> {
        let prefix = self.subnets_prefix();
        let (_, keys) = self.list_range(&KeyRange::prefix(&prefix)).await?;
        let mut snapshot = LeaseSnapshot::default();
        for state in &keys {
            match self.decode_lease(state) {
                Ok(lease) => {
                    snapshot
                        .leases
                        .insert(lease.subnet, (lease, state.mod_revision));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "skipping lease record; its subnet stays occupied");
                    if let Ok((subnet, _)) = decode(&prefix, state) {
                        snapshot.unreadable.push(subnet);
                    }
                }
            }
        }
        Ok(snapshot)
    }

    /// One attempt: choose a subnet and claim it in a transaction. `Ok(None)` = lost a race.
    async fn try_acquire(&self, request: &LeaseRequest) -> Result<Option<Lease>, StoreError> {
        let config = self.network_config().await?;
        let LeaseSnapshot { leases, unreadable } = self.snapshot().await?;
        let occupancy = Occupancy {
            leased: leases
                .iter()
                .map(|(s, (l, _))| (*s, l.node.clone()))
                .chain(unreadable.into_iter().map(|s| (s, UNREADABLE.to_owned())))
                .collect(),
            reserved: self.reservations().await?,
        };
        let choice = choose(&config, &occupancy, &request.node, request.previous, |n| {
            rand::thread_rng().gen_range(0..n)
        });
        let (subnet, guard) = match choice {
            Choice::Exhausted => return Err(StoreError::Exhausted),
            Choice::ReservedButTaken(subnet, holder) => {
                return Err(StoreError::ReservedButTaken { subnet, holder })
            }
            // Refresh in place, provided nobody touched the record since we read it.
            Choice::Held(subnet) => (subnet, leases[&subnet].1),
            // Create only if absent.
            Choice::Claim(subnet) => (subnet, 0),
        };
        let key = format!("{}{}", self.subnets_prefix(), subnet_key(subnet));
        let mut client = self.client.clone();
        let grant = client
            .lease_grant(request.ttl_secs, None)
            .await
            .map_err(unavailable)?;
        let lease = request.granted(subnet, config.ipv6_subnet(subnet), grant.id());
        let value = serde_json::to_string(&lease.record()).expect("json");
        let compare = if guard == 0 {
            Compare::version(key.as_str(), CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(key.as_str(), CompareOp::Equal, guard)
        };
        let txn = Txn::new().when([compare]).and_then([TxnOp::put(
            key.as_str(),
            value,
            Some(PutOptions::new().with_lease(grant.id())),
        )]);
        let won = client.txn(txn).await.map_err(unavailable)?.succeeded();
        if !won {
            let _ = client.lease_revoke(grant.id()).await;
            tracing::info!(%subnet, "lost the race for a subnet; retrying");
            return Ok(None);
        }
        if let Some((old, _)) = leases.get(&subnet).filter(|(o, _)| o.handle != 0) {
            // The record now lives on the new lease; the old one holds nothing of ours.
            let _ = client.lease_revoke(old.handle).await;
        }
        Ok(Some(lease))
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn network_config(&self) -> Result<NetworkConfig, StoreError> {
        let key = self.key("config");
        let resp = self
            .client
            .clone()
            .get(key.as_str(), None)
            .await
            .map_err(unavailable)?;
        let kv = resp.kvs().first().ok_or(StoreError::NoConfig { key })?;
        let text = String::from_utf8_lossy(kv.value());
        Ok(NetworkConfig::parse(&text)?)
    }

    async fn acquire_lease(&self, request: &LeaseRequest) -> Result<Lease, StoreError> {
        for attempt in 0..ACQUIRE_ATTEMPTS {
            if let Some(lease) = self.try_acquire(request).await? {
                return Ok(lease);
            }
            let jitter = rand::thread_rng().gen_range(0..50u64);
            tokio::time::sleep(Duration::from_millis(10 * attempt as u64 + jitter)).await;
        }
        Err(StoreError::Unavailable(format!(
            "lost the race for a subnet {ACQUIRE_ATTEMPTS} times in a row"
        )))
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<Renewal, StoreError> {
        let mut client = self.client.clone();
        let (mut keeper, mut stream) = match client.lease_keep_alive(lease.handle).await {
            Ok(keep_alive) => keep_alive,
            // etcd answered that the lease is gone (expired during a partition, or revoked):
            // the client reports it as this error, not as a zero TTL.
            Err(etcd_client::Error::LeaseKeepAliveError(_)) => return Ok(Renewal::Lost),
            Err(e) => return Err(unavailable(e)),
        };
        keeper.keep_alive().await.map_err(unavailable)?;
        let ttl = match stream.message().await.map_err(unavailable)? {
            Some(resp) => resp.ttl(),
            None => 0,
        };
        if ttl <= 0 {
            return Ok(Renewal::Lost);
        }
        let key = format!("{}{}", self.subnets_prefix(), subnet_key(lease.subnet));
        let resp = client.get(key, None).await.map_err(unavailable)?;
        let still_ours = resp
            .kvs()
            .first()
            .is_some_and(|kv| kv.lease() == lease.handle);
        Ok(if still_ours {
            Renewal::Renewed
        } else {
            Renewal::Lost
        })
    }

    async fn list_leases(&self) -> Result<Vec<Lease>, StoreError> {
        let leases = self.snapshot().await?.leases;
        let mut client = self.client.clone();
        let mut out = Vec::with_capacity(leases.len());
        for (_, (mut lease, _)) in leases {
            if lease.handle != 0 {
                if let Ok(ttl) = client.lease_time_to_live(lease.handle, None).await {
                    lease.ttl_secs = Some(ttl.ttl());
                }
            }
            out.push(lease);
        }
        Ok(out)
    }

    async fn register_pod(&self, pod: &PodRecord) -> Result<Option<i64>, StoreError> {
        let key = self.key(&format!(
            "{}{}/{}",
            Kind::Pods.segment(),
            pod.node,
            pod.container_id
        ));
        let value = serde_json::to_value(pod).expect("json").to_string();
        // Writing the same record again is harmless: retried through a failover.
        let resp = retry_transient("registering a pod", || {
            let (mut client, key, value) = (self.client.clone(), key.clone(), value.clone());
            async move { client.put(key, value, None).await }
        })
        .await
        .map_err(unavailable)?;
        Ok(Some(resp.header().map_or(0, |h| h.revision())))
    }

    async fn unregister_pod(&self, node: &str, container_id: &str) -> Result<(), StoreError> {
        let key = self.key(&format!("{}{node}/{container_id}", Kind::Pods.segment()));
        // Deleting twice is harmless: retried through a failover.
        retry_transient("unregistering a pod", || {
            let (mut client, key) = (self.client.clone(), key.clone());
            async move { client.delete(key, None).await }
        })
        .await
        .map(drop)
        .map_err(unavailable)
    }

    async fn watch_leases(&self) -> Result<watch::Receiver<Leases>, StoreError> {
        let mut follower = self
            .follow_range_on(
                KeyRange::prefix(&self.subnets_prefix()),
                self.followers.leases.clone(),
            )
            .await?;
        let mut watched = WatchedLeases::default();
        if let Some(listed) = follower.next().await {
            self.apply_lease_update(&mut watched, listed).await;
        }
        let (tx, rx) = watch::channel(Arc::new(watched.published()));
        let store = self.clone();
        let grace = self.expired_grace;
        tokio::spawn(async move {
            loop {
                let forget_at = watched.next_forget(grace);
                tokio::select! {
                    _ = tx.closed() => return,
                    () = sleep_until_some(forget_at) => {
                        for (lease, since) in watched.prune(Instant::now(), grace) {
                            tracing::warn!(node = %lease.node, subnet = %lease.subnet, expired_secs_ago = since.as_secs(), "forgetting an expired lease: its node did not lease it again");
                        }
                    }
                    update = follower.next() => {
                        let Some(update) = update else {
                            tracing::warn!("the lease follower ended");
                            return;
                        };
                        store.apply_lease_update(&mut watched, update).await;
                    }
                }
                let next = watched.published();
                tx.send_if_modified(|current| {
                    let changed = **current != next;
                    if changed {
                        *current = Arc::new(next);
                    }
                    changed
                });
            }
        });
        Ok(rx)
    }
}

/// Decodes a lease record under `prefix` (`<prefix>/subnets/`). Public for the fuzz targets.
#[doc(hidden)]
pub fn decode_lease(prefix: &str, state: &KeyState) -> Result<Lease, StoreError> {
    let (subnet, value) = decode(prefix, state)?;
    let record: LeaseRecord = serde_json::from_slice(value).map_err(|e| StoreError::BadRecord {
        key: state.key.clone(),
        reason: e.to_string(),
    })?;
    Ok(Lease::from_record(subnet, record, state.lease))
}

/// Decodes a reservation record under `prefix` (`<prefix>/reservations/`): the subnet and the
/// node it is pinned to. Public for the fuzz targets.
#[doc(hidden)]
pub fn decode_reservation(prefix: &str, state: &KeyState) -> Result<(Ipv4Net, String), StoreError> {
    let (subnet, value) = decode(prefix, state)?;
    let r: Reservation = serde_json::from_slice(value).map_err(|e| StoreError::BadRecord {
        key: state.key.clone(),
        reason: e.to_string(),
    })?;
    Ok((subnet, r.node))
}

/// Sleeps until `at`; forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Asks a watch for a progress report; an error when the request cannot even be queued.
async fn ask_progress(watcher: &mut etcd_client::Watcher) -> Result<(), StoreError> {
    tokio::time::timeout(PROGRESS_ASK_TIMEOUT, watcher.request_progress())
        .await
        .map_err(|_| StoreError::Unavailable("the watch takes no more requests".into()))?
        .map_err(unavailable)
}

/// The subnet a key under `prefix` (`<prefix>/subnets/`) names and the lease it now holds
/// (`None`: deleted, or undecodable, with a warning); `None` for a key that names no subnet.
fn lease_of(prefix: &str, state: &KeyState) -> Option<(Ipv4Net, Option<Lease>)> {
    let (subnet, _) = decode(prefix, state).ok()?;
    if state.value.is_none() {
        return Some((subnet, None));
    }
    match decode_lease(prefix, state) {
        Ok(lease) => Some((subnet, Some(lease))),
        Err(e) => {
            tracing::warn!(error = %e, "skipping lease record");
            Some((subnet, None))
        }
    }
}

/// The leases a lease watch publishes (pure; see [`EtcdStore::watch_leases`]): every live
/// record, and beside them the leases whose etcd lease ran out, each until its subnet is
/// leased again or the grace of [`EtcdStore::keeping_expired_leases`] passes. Its peers
/// cannot tell a node cut off from etcd from one that is gone: both stop renewing. So for a
/// while they keep routing to it (nobody else holds its subnet, or they would see that
/// lease), and a node whose partition outlives its TTL keeps its data path; it takes its
/// subnet back as soon as it reaches etcd again.
#[derive(Debug, Default)]
struct WatchedLeases {
    live: BTreeMap<Ipv4Net, Lease>,
    expired: BTreeMap<Ipv4Net, (Lease, Instant)>,
}

impl WatchedLeases {
    /// Sets the record of `subnet` (`None`: gone); returns the live lease it replaced by
    /// nothing, for the caller to tell whether its etcd lease ran out.
    fn set(&mut self, subnet: Ipv4Net, lease: Option<Lease>) -> Option<Lease> {
        match lease {
            Some(lease) => {
                self.expired.remove(&subnet);
                self.live.insert(subnet, lease);
                None
            }
            None => self.live.remove(&subnet),
        }
    }

    /// Replaces the live records with a listing's; returns the live leases it lacks.
    fn listed(&mut self, listed: BTreeMap<Ipv4Net, Lease>) -> Vec<Lease> {
        self.expired
            .retain(|subnet, _| !listed.contains_key(subnet));
        let before = std::mem::replace(&mut self.live, listed);
        before
            .into_iter()
            .filter(|(subnet, _)| !self.live.contains_key(subnet))
            .map(|(_, lease)| lease)
            .collect()
    }

    /// Keeps `lease`, whose etcd lease ran out at `now` (unless its subnet is leased again
    /// meanwhile).
    fn expired(&mut self, lease: Lease, now: Instant) {
        if !self.live.contains_key(&lease.subnet) {
            self.expired.insert(lease.subnet, (lease, now));
        }
    }

    /// When the first expired lease is due to be forgotten, kept for `linger`.
    fn next_forget(&self, linger: Duration) -> Option<Instant> {
        self.expired.values().map(|(_, at)| *at + linger).min()
    }

    /// Forgets the expired leases older than `linger`; returns them with their age.
    fn prune(&mut self, now: Instant, linger: Duration) -> Vec<(Lease, Duration)> {
        let old: Vec<Ipv4Net> = self
            .expired
            .iter()
            .filter(|(_, (_, at))| now.duration_since(*at) >= linger)
            .map(|(subnet, _)| *subnet)
            .collect();
        old.into_iter()
            .filter_map(|subnet| self.expired.remove(&subnet))
            .map(|(lease, at)| (lease, now.duration_since(at)))
            .collect()
    }

    /// The set to publish: live records over expired ones.
    fn published(&self) -> BTreeMap<Ipv4Net, Lease> {
        let mut out: BTreeMap<Ipv4Net, Lease> = self
            .expired
            .iter()
            .map(|(subnet, (lease, _))| (*subnet, lease.clone()))
            .collect();
        out.extend(self.live.iter().map(|(s, l)| (*s, l.clone())));
        out
    }
}

/// The lease records as [`EtcdStore::snapshot`] reads them.
#[derive(Debug, Default)]
struct LeaseSnapshot {
    /// Each decodable lease and the revision it was last changed at.
    leases: BTreeMap<Ipv4Net, (Lease, i64)>,
    /// Subnets whose records cannot be decoded.
    unreadable: Vec<Ipv4Net>,
}

/// Splits a key under `prefix` into its subnet and value.
fn decode<'a>(prefix: &str, state: &'a KeyState) -> Result<(Ipv4Net, &'a [u8]), StoreError> {
    state
        .key
        .strip_prefix(prefix)
        .and_then(parse_subnet_key)
        .map(|s| (s, state.value.as_deref().unwrap_or_default()))
        .ok_or_else(|| StoreError::BadRecord {
            key: state.key.clone(),
            reason: "key is not a subnet (a.b.c.d-len)".into(),
        })
}

impl EtcdStore {
    /// Applies a lease follower's update to `watched`. A lease record that went (deleted, or
    /// missing from a new listing) is kept as expired when the store keeps expired leases and
    /// its etcd lease ran out (its node stopped renewing: gone, or cut off from etcd), and
    /// forgotten at once otherwise (deleted by hand). Undecodable records are skipped with a
    /// warning.
    async fn apply_lease_update(&self, watched: &mut WatchedLeases, update: RangeUpdate) {
        let prefix = self.subnets_prefix();
        let gone = match update {
            RangeUpdate::Progress { .. } => return,
            RangeUpdate::Listed { keys, .. } => {
                let listed = keys
                    .iter()
                    .filter_map(|state| lease_of(&prefix, state))
                    .filter_map(|(subnet, lease)| Some((subnet, lease?)))
                    .collect();
                watched.listed(listed)
            }
            RangeUpdate::Changed { keys, .. } => keys
                .iter()
                .filter_map(|state| lease_of(&prefix, state))
                .filter_map(|(subnet, lease)| watched.set(subnet, lease))
                .collect(),
        };
        for lease in gone {
            let grace = self.expired_grace;
            if !grace.is_zero() && self.lease_ran_out(lease.handle).await {
                tracing::warn!(node = %lease.node, subnet = %lease.subnet, keep_secs = grace.as_secs(), "a lease expired in etcd (its node stopped renewing: cut off from etcd, or gone); keeping it a while unless its subnet is leased again");
                watched.expired(lease, Instant::now());
            } else {
                tracing::info!(node = %lease.node, subnet = %lease.subnet, "a lease record was deleted");
            }
        }
    }

    /// Whether etcd lease `handle` is gone (ran out, or revoked), so that a record bound to it
    /// went with it rather than by someone's hand. A store that does not answer counts as that
    /// (the record is kept a while: the safe side for the data path). A record bound to no
    /// etcd lease never runs out.
    async fn lease_ran_out(&self, handle: i64) -> bool {
        if handle == 0 {
            return false;
        }
        let mut client = self.client.clone();
        match tokio::time::timeout(LEASE_CHECK_TIMEOUT, client.lease_time_to_live(handle, None))
            .await
        {
            Ok(Ok(resp)) => resp.ttl() <= 0,
            _ => true,
        }
    }

    /// Follows every key in `range` on a task of its own: first a listing, then the watch's
    /// changes from the revision after it, in order. When the watch breaks (lost connection,
    /// cancellation, a compaction it fell behind), the task waits (backing off with jitter
    /// while etcd stays out of reach), lists again and watches on from there; it ends when the follower is dropped. Fails only if
    /// the first listing does.
    pub async fn follow_range(&self, range: KeyRange) -> Result<RangeFollower, StoreError> {
        self.follow_range_on(range, Pulse::default()).await
    }

    /// [`Self::follow_range`], its loop beating `pulse`.
    async fn follow_range_on(
        &self,
        range: KeyRange,
        pulse: Pulse,
    ) -> Result<RangeFollower, StoreError> {
        let (revision, keys) = self.list_range(&range).await?;
        let (tx, updates) = mpsc::channel(FOLLOW_QUEUE);
        tx.try_send(RangeUpdate::Listed { revision, keys })
            .map_err(|_| StoreError::Unavailable("follower queue refused the listing".into()))?;
        let progress = ProgressHandle::default();
        let store = self.clone();
        let asked = progress.clone();
        tokio::spawn(async move { store.follow(range, revision, tx, asked, pulse).await });
        Ok(RangeFollower { updates, progress })
    }

    async fn follow(
        self,
        range: KeyRange,
        mut revision: i64,
        tx: mpsc::Sender<RangeUpdate>,
        progress: ProgressHandle,
        pulse: Pulse,
    ) {
        let _running = pulse.start();
        let mut backoff = Backoff::default();
        loop {
            let started = Instant::now();
            let broke = match self
                .watch_from(&range, revision, &tx, &progress, &pulse)
                .await
            {
                Ok(()) => return,
                Err(e) => e,
            };
            if started.elapsed() >= HEALTHY_WATCH {
                backoff.reset();
            }
            let mut delay = backoff.next_delay();
            tracing::warn!(range = %range.start, error = %broke, retry_in = ?delay, "watch broke; listing again");
            loop {
                pulse.beat();
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                pulse.beat();
                match self.list_range(&range).await {
                    Ok((rev, keys)) => {
                        revision = rev;
                        let listed = RangeUpdate::Listed { revision, keys };
                        if tx.send(listed).await.is_err() {
                            return;
                        }
                        break;
                    }
                    Err(e) => {
                        delay = backoff.next_delay();
                        tracing::warn!(range = %range.start, error = %e, retry_in = ?delay, "cannot list");
                    }
                }
            }
        }
    }

    /// Watches `range` from `revision + 1`, sending what happens to `tx` and asking etcd for
    /// progress reports when `progress` is poked and after each [`WATCH_SILENCE`] wake,
    /// beating `pulse` each time round. `Ok` once nobody listens; an error when the watch
    /// broke, or stayed silent past [`WATCH_SILENCE`]'s bound.
    async fn watch_from(
        &self,
        range: &KeyRange,
        revision: i64,
        tx: &mpsc::Sender<RangeUpdate>,
        progress: &ProgressHandle,
        pulse: &Pulse,
    ) -> Result<(), StoreError> {
        let options = WatchOptions::new()
            .with_range(range.end.as_str())
            .with_start_revision(revision + 1)
            .with_progress_notify();
        let mut client = self.client.clone();
        let (mut watcher, mut stream) = tokio::time::timeout(
            WATCH_SETUP_TIMEOUT,
            client.watch(range.start.as_str(), Some(options)),
        )
        .await
        .map_err(|_| {
            StoreError::Unavailable(format!(
                "etcd did not confirm the watch within {WATCH_SETUP_TIMEOUT:?}"
            ))
        })?
        .map_err(unavailable)?;
        let mut quiet = Quiet::new(WATCH_SILENCE);
        loop {
            pulse.beat();
            let resp = tokio::select! {
                _ = tx.closed() => return Ok(()),
                _ = progress.0.notified() => {
                    ask_progress(&mut watcher).await?;
                    continue;
                }
                heard = quiet.next(stream.message()) => match heard {
                    Heard::Message(resp) => resp.map_err(unavailable)?,
                    Heard::Woke => {
                        ask_progress(&mut watcher).await?;
                        continue;
                    }
                    Heard::Dead(silent) => {
                        return Err(StoreError::Unavailable(format!(
                            "the watch stayed silent for {}s, progress asked every {}s: its connection hangs",
                            silent.as_secs(),
                            WATCH_SILENCE.wake.as_secs()
                        )))
                    }
                },
            };
            let Some(resp) = resp else {
                return Err(StoreError::Unavailable("watch stream ended".into()));
            };
            if resp.compact_revision() > 0 {
                return Err(StoreError::Unavailable(format!(
                    "the watch fell behind a compaction at revision {}",
                    resp.compact_revision()
                )));
            }
            if resp.canceled() {
                return Err(StoreError::Unavailable(format!(
                    "etcd cancelled the watch: {}",
                    resp.cancel_reason()
                )));
            }
            if resp.created() {
                // Its header says where the store is, not how far the watch has got.
                continue;
            }
            let keys: Vec<KeyState> = resp
                .events()
                .iter()
                .filter_map(|event| {
                    let kv = event.kv()?;
                    let mut state = KeyState::stored(kv);
                    if event.event_type() == EventType::Delete {
                        state.value = None;
                    }
                    Some(state)
                })
                .collect();
            let update = match keys.iter().map(|k| k.mod_revision).max() {
                Some(revision) => RangeUpdate::Changed { revision, keys },
                // No events: a progress report, sent only once the watch has caught up.
                None => RangeUpdate::Progress {
                    revision: resp.header().map_or(0, |h| h.revision()),
                },
            };
            if tx.send(update).await.is_err() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_authorities() {
        assert_eq!(
            endpoint_authority("http://172.30.0.2:2379"),
            "172.30.0.2:2379"
        );
        assert_eq!(
            endpoint_authority("https://etcd.example:2379/"),
            "etcd.example:2379"
        );
        assert_eq!(endpoint_authority("10.0.0.1:2379"), "10.0.0.1:2379");
    }

    #[test]
    fn transient_failures() {
        let error = |text: &str| etcd_client::Error::InvalidArgs(text.to_string());
        for transient in [
            "status: Unavailable, message: \"tcp connect error\"",
            "etcdserver: leader changed",
            "etcdserver: request timed out, possibly due to previous leader failure",
            "etcdserver: no leader",
        ] {
            assert!(is_transient(&error(transient)), "{transient}");
        }
        for permanent in [
            "etcdserver: permission denied",
            "etcdserver: user name or password is invalid",
        ] {
            assert!(!is_transient(&error(permanent)), "{permanent}");
        }
    }

    fn lease(subnet: &str, node: &str) -> Lease {
        Lease {
            subnet: subnet.parse().unwrap(),
            ipv6_subnet: None,
            node: node.into(),
            public_ip: "172.30.0.11".parse().unwrap(),
            backend_type: "vxlan".into(),
            backend_data: serde_json::Value::Null,
            ttl_secs: None,
            handle: 7,
        }
    }

    fn nodes(watched: &WatchedLeases) -> Vec<String> {
        watched
            .published()
            .values()
            .map(|l| l.node.clone())
            .collect()
    }

    #[test]
    fn an_expired_lease_stays_until_its_subnet_is_leased_again() {
        let start = Instant::now();
        let mut watched = WatchedLeases::default();
        let (a, b) = (lease("10.244.1.0/24", "a"), lease("10.244.2.0/24", "b"));
        let listed = [(a.subnet, a.clone()), (b.subnet, b.clone())];
        assert!(watched.listed(listed.into_iter().collect()).is_empty());
        // a's record goes with its etcd lease: kept.
        let gone = watched.set(a.subnet, None).expect("a was live");
        watched.expired(gone, start);
        assert_eq!(nodes(&watched), ["a", "b"]);
        // A new listing (after the watch broke) lacks b too; b ran out as well.
        let gone = watched.listed(BTreeMap::new());
        assert_eq!(gone, std::slice::from_ref(&b));
        watched.expired(b.clone(), start + Duration::from_secs(30));
        assert_eq!(nodes(&watched), ["a", "b"]);
        // c leases a's subnet: c's lease replaces a's, for good.
        let c = lease("10.244.1.0/24", "c");
        assert_eq!(watched.set(c.subnet, Some(c.clone())), None);
        assert_eq!(nodes(&watched), ["c", "b"]);
        let gone = watched.set(c.subnet, None).unwrap();
        assert_eq!(gone.node, "c", "a is not back");
        // Nobody leases b's subnet again: forgotten once it lingered long enough.
        let linger = Duration::from_secs(60);
        let due = start + Duration::from_secs(90);
        assert_eq!(watched.next_forget(linger), Some(due));
        assert_eq!(watched.prune(start + linger, linger).len(), 0, "not due");
        let forgotten = watched.prune(due, linger);
        assert_eq!(forgotten, [(b, linger)]);
        assert!(watched.published().is_empty());
    }

    #[test]
    fn a_lease_leased_again_at_once_is_not_kept_expired() {
        let mut watched = WatchedLeases::default();
        let a = lease("10.244.1.0/24", "a");
        watched.set(a.subnet, Some(a.clone()));
        // Deleted and leased again in one batch: the check of the old lease comes after.
        let gone = watched.set(a.subnet, None).unwrap();
        let again = lease("10.244.1.0/24", "a2");
        watched.set(again.subnet, Some(again));
        watched.expired(gone, Instant::now());
        assert!(watched.expired.is_empty());
        assert_eq!(nodes(&watched), ["a2"]);
    }
}
