//! In-memory [`Store`] and [`ObjectSource`]: the datastore seams without a datastore, for unit
//! tests of the agent and the policy follower. Leases are chosen by the same pure allocator
//! the etcd store uses; tests add, change and remove peers, take a lease away, and write
//! policy objects, and see what the agent or follower does.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use ipnet::Ipv4Net;
use tokio::sync::{mpsc, watch};

use crate::config::NetworkConfig;
use crate::lease::{Lease, LeaseRequest, Leases};
use crate::objects::{Kind, PodRecord, StoredObject};
use crate::store::{
    ObjectFeed, ObjectSource, ObjectUpdate, ProgressHandle, Renewal, Store, StoreError,
};
use crate::subnet::{choose, Choice, Occupancy};

#[derive(Debug)]
struct Inner {
    config: NetworkConfig,
    leases: BTreeMap<Ipv4Net, Lease>,
    revision: i64,
    objects: BTreeMap<(Kind, String), StoredObject>,
    feeds: Vec<mpsc::UnboundedSender<ObjectUpdate>>,
    ready: Vec<Ipv4Net>,
    /// Pod record writes fail, as with a datastore that cannot be reached.
    unreachable: bool,
}

/// A datastore in memory. Clones share it.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    leases: Arc<watch::Sender<Leases>>,
}

impl MemoryStore {
    /// An empty store holding `config`.
    pub fn new(config: NetworkConfig) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                config,
                leases: BTreeMap::new(),
                revision: 0,
                objects: BTreeMap::new(),
                feeds: Vec::new(),
                ready: Vec::new(),
                unreachable: false,
            })),
            leases: Arc::new(watch::channel(Leases::default()).0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, inner: &Inner) {
        self.leases.send_replace(Arc::new(inner.leases.clone()));
    }

    /// Makes pod record writes fail (`true`) as a datastore out of reach does, or work again.
    pub fn set_unreachable(&self, unreachable: bool) {
        self.lock().unreachable = unreachable;
    }

    /// The stored value of an object, if any.
    pub fn object(&self, kind: Kind, name: &str) -> Option<Vec<u8>> {
        self.lock()
            .objects
            .get(&(kind, name.to_owned()))
            .and_then(|o| o.value.clone())
    }

    fn reachable(&self) -> Result<(), StoreError> {
        if self.lock().unreachable {
            return Err(StoreError::Unavailable(
                "the datastore is out of reach".into(),
            ));
        }
        Ok(())
    }

    /// Adds or replaces a lease (another node joining or changing).
    pub fn put_lease(&self, lease: Lease) {
        let mut inner = self.lock();
        inner.leases.insert(lease.subnet, lease);
        self.publish(&inner);
    }

    /// Removes the lease on `subnet` (a node gone, or a lease expired); returns it.
    pub fn remove_lease(&self, subnet: Ipv4Net) -> Option<Lease> {
        let mut inner = self.lock();
        let gone = inner.leases.remove(&subnet);
        self.publish(&inner);
        gone
    }

    /// The lease `node` holds.
    pub fn lease_of(&self, node: &str) -> Option<Lease> {
        self.lock()
            .leases
            .values()
            .find(|l| l.node == node)
            .cloned()
    }

    /// The subnets reported ready with [`Store::data_path_ready`], in order.
    pub fn ready_reports(&self) -> Vec<Ipv4Net> {
        self.lock().ready.clone()
    }

    /// Writes (`Some`) or deletes a policy object; returns the revision of the change.
    pub fn put_object(&self, kind: Kind, name: &str, value: Option<serde_json::Value>) -> i64 {
        let mut inner = self.lock();
        inner.revision += 1;
        let object = StoredObject {
            kind,
            name: name.to_owned(),
            value: value.map(|v| v.to_string().into_bytes()),
            mod_revision: inner.revision,
        };
        match object.value {
            Some(_) => inner
                .objects
                .insert((kind, name.to_owned()), object.clone()),
            None => inner.objects.remove(&(kind, name.to_owned())),
        };
        let revision = inner.revision;
        inner.feeds.retain(|feed| {
            feed.send(ObjectUpdate::Changed {
                revision,
                objects: vec![object.clone()],
            })
            .is_ok()
        });
        revision
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn network_config(&self) -> Result<NetworkConfig, StoreError> {
        Ok(self.lock().config.clone())
    }

    async fn acquire_lease(&self, request: &LeaseRequest) -> Result<Lease, StoreError> {
        let mut inner = self.lock();
        let occupancy = Occupancy {
            leased: inner
                .leases
                .iter()
                .map(|(s, l)| (*s, l.node.clone()))
                .collect(),
            reserved: BTreeMap::new(),
        };
        let subnet = match choose(
            &inner.config,
            &occupancy,
            &request.node,
            request.previous,
            |_| 0,
        ) {
            Choice::Held(subnet) | Choice::Claim(subnet) => subnet,
            Choice::Exhausted => return Err(StoreError::Exhausted),
            Choice::ReservedButTaken(subnet, holder) => {
                return Err(StoreError::ReservedButTaken { subnet, holder })
            }
        };
        let lease = request.granted(subnet, inner.config.ipv6_subnet(subnet), 1);
        inner.leases.insert(subnet, lease.clone());
        self.publish(&inner);
        Ok(lease)
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<Renewal, StoreError> {
        let held = self
            .lock()
            .leases
            .get(&lease.subnet)
            .is_some_and(|l| l.node == lease.node);
        Ok(if held {
            Renewal::Renewed
        } else {
            Renewal::Lost
        })
    }

    async fn list_leases(&self) -> Result<Vec<Lease>, StoreError> {
        Ok(self.lock().leases.values().cloned().collect())
    }

    async fn watch_leases(&self) -> Result<watch::Receiver<Leases>, StoreError> {
        Ok(self.leases.subscribe())
    }

    async fn register_pod(&self, pod: &PodRecord) -> Result<Option<i64>, StoreError> {
        self.reachable()?;
        let name = format!("{}/{}", pod.node, pod.container_id);
        let value = serde_json::to_value(pod).map_err(|e| StoreError::BadRecord {
            key: name.clone(),
            reason: e.to_string(),
        })?;
        Ok(Some(self.put_object(Kind::Pods, &name, Some(value))))
    }

    async fn unregister_pod(&self, node: &str, container_id: &str) -> Result<(), StoreError> {
        self.reachable()?;
        self.put_object(Kind::Pods, &format!("{node}/{container_id}"), None);
        Ok(())
    }

    async fn data_path_ready(&self, lease: &Lease) -> Result<(), StoreError> {
        self.lock().ready.push(lease.subnet);
        Ok(())
    }
}

#[async_trait]
impl ObjectSource for MemoryStore {
    async fn follow(&self) -> Result<ObjectFeed, StoreError> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (out, updates) = mpsc::channel(64);
        {
            let mut inner = self.lock();
            let listing = ObjectUpdate::Listed {
                revision: inner.revision,
                objects: inner.objects.values().cloned().collect(),
            };
            let _ = tx.send(listing);
            inner.feeds.push(tx);
        }
        tokio::spawn(async move {
            while let Some(update) = rx.recv().await {
                if out.send(update).await.is_err() {
                    return;
                }
            }
        });
        Ok(ObjectFeed {
            updates,
            progress: ProgressHandle::default(),
        })
    }

    async fn list_objects(&self) -> Result<(i64, Vec<StoredObject>), StoreError> {
        let inner = self.lock();
        Ok((inner.revision, inner.objects.values().cloned().collect()))
    }

    async fn checkpoint(&self) -> Result<i64, StoreError> {
        Ok(self.lock().revision)
    }
}
