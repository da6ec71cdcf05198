//! The etcd implementation of [`Store`], and the admin operations `fabricctl` needs.
//!
//! Keys under the prefix (default `/fabric`): `config` (the network config),
//! `subnets/<a.b.c.d-len>` (one lease record per node, bound to an etcd lease so it expires
//! with the node), `reservations/<a.b.c.d-len>` (a subnet pinned to a node name).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, PutOptions, Txn,
    TxnOp, WatchOptions,
};
use ipnet::Ipv4Net;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::NetworkConfig;
use crate::lease::{parse_subnet_key, subnet_key, Lease, LeaseRecord, LeaseRequest, Leases};
use crate::objects::{Kind, PodRecord};
use crate::store::{Renewal, Store, StoreError};
use crate::subnet::{choose, Choice, Occupancy};

/// How many times one acquire call retries after losing a race for a subnet.
const ACQUIRE_ATTEMPTS: usize = 16;

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
}

fn unavailable(e: etcd_client::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl EtcdStore {
    /// Connects to etcd at `endpoints` (e.g. `http://127.0.0.1:2379`), using keys under `prefix`.
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self, StoreError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(10))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot connect to etcd at {endpoints:?}: {e}"))
            })?;
        Ok(Self {
            client,
            prefix: prefix.trim_end_matches('/').to_owned(),
        })
    }

    fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.prefix)
    }

    /// Everything under `prefix`, with the revision it was read at.
    async fn get_prefix(&self, prefix: &str) -> Result<etcd_client::GetResponse, StoreError> {
        self.client
            .clone()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(unavailable)
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

    /// Writes object `name` of `kind` (JSON).
    pub async fn put_object(
        &self,
        kind: Kind,
        name: &str,
        value: &serde_json::Value,
    ) -> Result<(), StoreError> {
        self.client
            .clone()
            .put(
                self.key(&format!("{}{name}", kind.segment())),
                value.to_string(),
                None,
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Deletes object `name` of `kind` (with `prefix`, every object under `name/`); returns
    /// how many went.
    pub async fn delete_object(
        &self,
        kind: Kind,
        name: &str,
        prefix: bool,
    ) -> Result<i64, StoreError> {
        let options = prefix.then(|| etcd_client::DeleteOptions::new().with_prefix());
        let resp = self
            .client
            .clone()
            .delete(self.key(&format!("{}{name}", kind.segment())), options)
            .await
            .map_err(unavailable)?;
        Ok(resp.deleted())
    }

    /// Every object of `kind`, by name (the key below the kind's segment); records that are
    /// not JSON are skipped with a warning.
    pub async fn list_objects(
        &self,
        kind: Kind,
    ) -> Result<BTreeMap<String, serde_json::Value>, StoreError> {
        let prefix = self.key(kind.segment());
        let resp = self.get_prefix(&prefix).await?;
        let mut out = BTreeMap::new();
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            let name = key.strip_prefix(&prefix).unwrap_or(&key).to_owned();
            match serde_json::from_slice(kv.value()) {
                Ok(v) => {
                    out.insert(name, v);
                }
                Err(e) => {
                    tracing::warn!(key = %key, error = %e, "skipping a record that is not JSON")
                }
            }
        }
        Ok(out)
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

    /// Every reservation.
    pub async fn reservations(&self) -> Result<BTreeMap<Ipv4Net, String>, StoreError> {
        let prefix = self.key("reservations/");
        let resp = self.get_prefix(&prefix).await?;
        resp.kvs()
            .iter()
            .map(|kv| {
                let (subnet, value) = self.decode(&prefix, kv)?;
                let r: Reservation =
                    serde_json::from_slice(value).map_err(|e| StoreError::BadRecord {
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        reason: e.to_string(),
                    })?;
                Ok((subnet, r.node))
            })
            .collect()
    }

    fn decode<'a>(
        &self,
        prefix: &str,
        kv: &'a KeyValue,
    ) -> Result<(Ipv4Net, &'a [u8]), StoreError> {
        let key = String::from_utf8_lossy(kv.key());
        key.strip_prefix(prefix)
            .and_then(parse_subnet_key)
            .map(|s| (s, kv.value()))
            .ok_or_else(|| StoreError::BadRecord {
                key: key.into_owned(),
                reason: "key is not a subnet (a.b.c.d-len)".into(),
            })
    }

    fn decode_lease(&self, kv: &KeyValue) -> Result<Lease, StoreError> {
        let (subnet, value) = self.decode(&self.subnets_prefix(), kv)?;
        let record: LeaseRecord =
            serde_json::from_slice(value).map_err(|e| StoreError::BadRecord {
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                reason: e.to_string(),
            })?;
        Ok(Lease::from_record(subnet, record, kv.lease()))
    }

    /// Every lease record and the revision they were read at; undecodable records are
    /// skipped with a warning (one bad record must not take the cluster down).
    async fn snapshot(&self) -> Result<(BTreeMap<Ipv4Net, (Lease, i64)>, i64), StoreError> {
        let resp = self.get_prefix(&self.subnets_prefix()).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut leases = BTreeMap::new();
        for kv in resp.kvs() {
            match self.decode_lease(kv) {
                Ok(lease) => {
                    leases.insert(lease.subnet, (lease, kv.mod_revision()));
                }
                Err(e) => tracing::warn!(error = %e, "skipping lease record"),
            }
        }
        Ok((leases, revision))
    }

    /// One attempt: choose a subnet and claim it in a transaction. `Ok(None)` = lost a race.
    async fn try_acquire(&self, request: &LeaseRequest) -> Result<Option<Lease>, StoreError> {
        let config = self.network_config().await?;
        let (leases, _) = self.snapshot().await?;
        let occupancy = Occupancy {
            leased: leases
                .iter()
                .map(|(s, (l, _))| (*s, l.node.clone()))
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
        let lease = request.granted(subnet, grant.id());
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
        let (mut keeper, mut stream) = client
            .lease_keep_alive(lease.handle)
            .await
            .map_err(unavailable)?;
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
        let (leases, _) = self.snapshot().await?;
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

    async fn register_pod(&self, pod: &PodRecord) -> Result<(), StoreError> {
        let value = serde_json::to_value(pod).expect("json");
        self.put_object(
            Kind::Pods,
            &format!("{}/{}", pod.node, pod.container_id),
            &value,
        )
        .await
    }

    async fn unregister_pod(&self, node: &str, container_id: &str) -> Result<(), StoreError> {
        self.delete_object(Kind::Pods, &format!("{node}/{container_id}"), false)
            .await
            .map(drop)
    }

    async fn watch_leases(&self) -> Result<watch::Receiver<Leases>, StoreError> {
        let (leases, revision) = self.snapshot().await?;
        let (tx, rx) = watch::channel(to_leases(&leases));
        let store = self.clone();
        tokio::spawn(async move { store.follow(tx, leases, revision).await });
        Ok(rx)
    }
}

fn to_leases(map: &BTreeMap<Ipv4Net, (Lease, i64)>) -> Leases {
    Arc::new(map.iter().map(|(s, (l, _))| (*s, l.clone())).collect())
}

impl EtcdStore {
    /// Keeps `tx` current until every receiver is gone: watch from `revision`, re-list after
    /// compaction, cancellation or a broken connection.
    async fn follow(
        self,
        tx: watch::Sender<Leases>,
        mut leases: BTreeMap<Ipv4Net, (Lease, i64)>,
        mut revision: i64,
    ) {
        while !tx.is_closed() {
            if let Err(e) = self.follow_from(&tx, &mut leases, revision).await {
                tracing::warn!(error = %e, "lease watch broke; re-listing");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            match self.snapshot().await {
                Ok((fresh, rev)) => {
                    leases = fresh;
                    revision = rev;
                    tx.send_replace(to_leases(&leases));
                }
                Err(e) => tracing::warn!(error = %e, "cannot list leases"),
            }
        }
    }

    async fn follow_from(
        &self,
        tx: &watch::Sender<Leases>,
        leases: &mut BTreeMap<Ipv4Net, (Lease, i64)>,
        revision: i64,
    ) -> Result<(), StoreError> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let (_watcher, mut stream) = self
            .client
            .clone()
            .watch(self.subnets_prefix(), Some(options))
            .await
            .map_err(unavailable)?;
        while let Some(resp) = stream.message().await.map_err(unavailable)? {
            if resp.canceled() || resp.compact_revision() > 0 {
                return Err(StoreError::Unavailable(format!(
                    "watch cancelled (compacted at revision {})",
                    resp.compact_revision()
                )));
            }
            let mut changed = false;
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let Some(subnet) = key
                    .strip_prefix(&self.subnets_prefix())
                    .and_then(parse_subnet_key)
                else {
                    continue;
                };
                changed = true;
                match event.event_type() {
                    EventType::Delete => {
                        leases.remove(&subnet);
                    }
                    EventType::Put => match self.decode_lease(kv) {
                        Ok(lease) => {
                            leases.insert(subnet, (lease, kv.mod_revision()));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "skipping lease record");
                            leases.remove(&subnet);
                        }
                    },
                }
            }
            if changed && tx.send(to_leases(leases)).is_err() {
                return Ok(());
            }
        }
        Err(StoreError::Unavailable("watch stream ended".into()))
    }
}
