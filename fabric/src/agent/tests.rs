//! The agent's loop against the in-memory datastore, a backend that records what it is asked
//! to converge to and a host side that records what it is asked to do: nothing here touches
//! the kernel, so the tests run unprivileged and never change the machine's namespace.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use ipam::memory::MemoryStore;
use ipam::{BackendKind, Lease, Leases, NetworkConfig};
use ipnet::Ipv4Net;
use serde_json::json;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tunnel::{Backend, Report, TunnelEnds, TunnelError};

use super::admission::{self, Admission};
use super::{Control, Host};
use crate::state::StateDir;

/// Long enough never to be reached when the agent does what it should.
const WAIT: Duration = Duration::from_secs(5);
const NODE: &str = "n1";
/// The datastore's address, as the agent is told.
const DATASTORE: &str = "198.51.100.2";

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn config() -> NetworkConfig {
    NetworkConfig::parse(r#"{"Network":"10.244.0.0/16"}"#).unwrap()
}

fn store() -> MemoryStore {
    MemoryStore::new(config())
}

fn peer(subnet: &str, node: &str, ip: &str, mac: &str) -> Lease {
    Lease {
        subnet: net(subnet),
        ipv6_subnet: None,
        node: node.into(),
        public_ip: ip.parse().unwrap(),
        backend_type: "vxlan".into(),
        backend_data: json!({ "VtepMAC": mac }),
        ttl_secs: None,
        handle: 0,
    }
}

/// One reconcile call: the lease the backend is told is local, and the set it is handed.
#[derive(Debug, Clone)]
struct Pass {
    local: Lease,
    leases: Leases,
    /// Whether the agent counted as ready when the pass began.
    ready: bool,
}

/// A backend that records every reconcile call and answers as scripted: calls wait for a
/// permit of `gate` (plenty, unless the test holds them back) and the first `failures` fail.
struct FakeBackend {
    passes: mpsc::UnboundedSender<Pass>,
    gate: Semaphore,
    failures: AtomicUsize,
    /// The agent's readiness, as each pass finds it.
    ready: Arc<AtomicBool>,
}

#[async_trait]
impl Backend for FakeBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Vxlan
    }

    fn mtu(&self) -> u32 {
        1450
    }

    fn lease_data(&self) -> serde_json::Value {
        json!({ "VtepMAC": "02:00:00:00:00:01" })
    }

    fn tunnel_ends(&self, local: &Lease, leases: &Leases) -> Option<TunnelEnds> {
        Some(TunnelEnds {
            local: SocketAddrV4::new(local.public_ip, 8472),
            peers: tunnel::peers(BackendKind::Vxlan, local, leases)
                .map(|l| SocketAddrV4::new(l.public_ip, 8472))
                .collect(),
        })
    }

    async fn reconcile(&self, local: &Lease, leases: &Leases) -> Result<Report, TunnelError> {
        let _ = self.passes.send(Pass {
            local: local.clone(),
            leases: leases.clone(),
            ready: self.ready.load(Ordering::Relaxed),
        });
        self.gate.acquire().await.expect("gate open").forget();
        let fail = self
            .failures
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            return Err(TunnelError::Underlay("scripted failure".into()));
        }
        Ok(Report {
            added: 1,
            ..Report::default()
        })
    }
}

/// What the agent asked of the node's host side.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostCall {
    Forwarding,
    Pods(Ipv4Net),
    Firewall(Option<TunnelEnds>),
}

#[derive(Default)]
struct FakeHost(Mutex<Vec<HostCall>>);

impl FakeHost {
    fn record(&self, call: HostCall) {
        self.0.lock().unwrap().push(call);
    }

    fn calls(&self) -> Vec<HostCall> {
        self.0.lock().unwrap().clone()
    }

    /// The subnets pod networks were opened for, in order.
    fn pods(&self) -> Vec<Ipv4Net> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                HostCall::Pods(subnet) => Some(subnet),
                _ => None,
            })
            .collect()
    }

    fn firewall_syncs(&self) -> usize {
        self.calls()
            .iter()
            .filter(|c| matches!(c, HostCall::Firewall(_)))
            .count()
    }

    /// The tunnel ends of the last firewall sync.
    fn guarded(&self) -> Option<TunnelEnds> {
        self.calls().into_iter().rev().find_map(|c| match c {
            HostCall::Firewall(ends) => ends,
            _ => None,
        })
    }
}

#[async_trait]
impl Host for FakeHost {
    fn enable_forwarding(&self) -> Result<()> {
        self.record(HostCall::Forwarding);
        Ok(())
    }

    async fn open_pods(&self, lease: &Lease) -> Result<()> {
        self.record(HostCall::Pods(lease.subnet));
        Ok(())
    }

    async fn sync_firewall(&self, tunnel: Option<TunnelEnds>) {
        self.record(HostCall::Firewall(tunnel));
    }
}

/// An agent loop running against `store`.
struct Running {
    store: MemoryStore,
    backend: Arc<FakeBackend>,
    host: Arc<FakeHost>,
    passes: mpsc::UnboundedReceiver<Pass>,
    ready: Arc<AtomicBool>,
    dir: tempfile::TempDir,
    control_refused: Arc<Mutex<Vec<admission::Refusal>>>,
    task: JoinHandle<Result<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How the agent is started.
#[derive(Default)]
struct Start {
    /// Reconcile calls wait until the test releases them ([`Running::release`]).
    gated: bool,
    /// How many reconcile calls fail first.
    failures: usize,
    /// The subnet the state dir records from an earlier run.
    previous: Option<Ipv4Net>,
}

impl Running {
    /// The leases the agent refused on its last pass.
    fn refused(&self) -> Vec<admission::Refusal> {
        self.control_refused.lock().unwrap().clone()
    }

    fn start(store: &MemoryStore, start: Start) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        if let Some(previous) = start.previous {
            state.record_subnet(previous).unwrap();
        }
        let (tx, passes) = mpsc::unbounded_channel();
        let ready = Arc::new(AtomicBool::new(false));
        let backend = Arc::new(FakeBackend {
            passes: tx,
            gate: Semaphore::new(if start.gated {
                0
            } else {
                Semaphore::MAX_PERMITS
            }),
            failures: AtomicUsize::new(start.failures),
            ready: ready.clone(),
        });
        let host = Arc::new(FakeHost::default());
        let control = Control {
            store: Arc::new(store.clone()),
            backend: backend.clone(),
            host: host.clone(),
            state,
            node: NODE.into(),
            public_ip: "192.0.2.1".parse().unwrap(),
            lease_ttl: Duration::from_secs(30),
            // Renewals often, so a lost lease is noticed at once; resyncs never, so every
            // pass after the first comes from a lease change (or a lease acquired again).
            renew_every: Duration::from_millis(10),
            resync: Duration::from_secs(3600),
            ready: ready.clone(),
            admission: Admission::new(
                &config(),
                true,
                admission::protected(net("192.0.2.1/24"), &[DATASTORE.parse().unwrap()]),
            ),
            refused: Default::default(),
            beat: None,
        };
        Self {
            control_refused: control.refused.clone(),
            store: store.clone(),
            backend,
            host,
            passes,
            ready,
            dir,
            task: tokio::spawn(control.run()),
        }
    }

    /// The next reconcile call.
    async fn next_pass(&mut self) -> Pass {
        tokio::time::timeout(WAIT, self.passes.recv())
            .await
            .expect("no reconcile pass in time")
            .expect("the backend is gone")
    }

    /// The first reconcile call from now on that `matches`.
    async fn pass_where(&mut self, what: &str, matches: impl Fn(&Pass) -> bool) -> Pass {
        let passes = &mut self.passes;
        tokio::time::timeout(WAIT, async {
            loop {
                let pass = passes.recv().await.expect("the backend is gone");
                if matches(&pass) {
                    return pass;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no reconcile pass where {what}"))
    }

    /// Lets `n` held-back reconcile calls finish.
    fn release(&self, n: usize) {
        self.backend.gate.add_permits(n);
    }

    /// The node's lease in the store.
    fn own(&self) -> Lease {
        self.store.lease_of(NODE).expect("the node holds a lease")
    }

    fn recorded_subnet(&self) -> Option<Ipv4Net> {
        StateDir::open(&self.dir.path().join("state"))
            .unwrap()
            .previous_subnet()
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// Waits until `cond` holds.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    tokio::time::timeout(WAIT, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never: {what}"));
}

fn nodes(leases: &Leases) -> BTreeMap<Ipv4Net, String> {
    leases.iter().map(|(s, l)| (*s, l.node.clone())).collect()
}

#[tokio::test]
async fn first_pass_converges_to_the_node_own_lease() {
    let store = store();
    let mut agent = Running::start(&store, Start::default());
    let first = agent.next_pass().await;
    let own = agent.own();
    assert_eq!(own.subnet, net("10.244.1.0/24"));
    assert_eq!(own.public_ip.to_string(), "192.0.2.1");
    assert_eq!(own.backend_type, "vxlan");
    assert_eq!(own.backend_data, json!({ "VtepMAC": "02:00:00:00:00:01" }));
    assert_eq!(first.local, own);
    assert_eq!(*first.leases, BTreeMap::from([(own.subnet, own.clone())]));
    assert_eq!(agent.recorded_subnet(), Some(own.subnet));
    eventually("the firewall is synced after the pass", || {
        agent.host.firewall_syncs() == 1
    })
    .await;
    assert_eq!(
        agent.host.calls(),
        [
            HostCall::Forwarding,
            HostCall::Pods(own.subnet),
            HostCall::Firewall(Some(TunnelEnds {
                local: SocketAddrV4::new(own.public_ip, 8472),
                peers: vec![],
            }))
        ]
    );
}

#[tokio::test]
async fn starts_on_the_subnet_recorded_in_the_state_dir() {
    let store = store();
    let mut agent = Running::start(
        &store,
        Start {
            previous: Some(net("10.244.7.0/24")),
            ..Start::default()
        },
    );
    let first = agent.next_pass().await;
    assert_eq!(first.local.subnet, net("10.244.7.0/24"));
    assert_eq!(agent.own().subnet, net("10.244.7.0/24"));
    assert_eq!(agent.host.pods(), [net("10.244.7.0/24")]);
}

#[tokio::test]
async fn peer_added_reaches_the_backend() {
    let store = store();
    let mut agent = Running::start(&store, Start::default());
    agent.next_pass().await;
    let n2 = peer("10.244.9.0/24", "n2", "192.0.2.2", "02:00:00:00:00:02");
    store.put_lease(n2.clone());
    let pass = agent.next_pass().await;
    assert_eq!(pass.local, agent.own());
    assert_eq!(pass.leases.get(&n2.subnet), Some(&n2));
    assert_eq!(
        nodes(&pass.leases),
        BTreeMap::from([
            (net("10.244.1.0/24"), "n1".into()),
            (n2.subnet, "n2".into())
        ])
    );
}

#[tokio::test]
async fn forged_leases_never_reach_the_backend_or_open_the_tunnel_end() {
    let store = store();
    let mut agent = Running::start(&store, Start::default());
    agent.next_pass().await;
    // A host route for the datastore's address, and a subnet covering the underlay.
    let forged = peer(
        &format!("{DATASTORE}/32"),
        "evil",
        "192.0.2.66",
        "02:00:00:00:00:66",
    );
    store.put_lease(forged.clone());
    store.put_lease(peer(
        "10.244.0.0/16",
        "evil2",
        "192.0.2.67",
        "02:00:00:00:00:67",
    ));
    let n2 = peer("10.244.9.0/24", "n2", "192.0.2.2", "02:00:00:00:00:02");
    store.put_lease(n2.clone());
    let pass = agent
        .pass_where("n2's lease arrives", |p| p.leases.contains_key(&n2.subnet))
        .await;
    assert_eq!(
        nodes(&pass.leases),
        BTreeMap::from([
            (net("10.244.1.0/24"), "n1".into()),
            (n2.subnet, "n2".into())
        ])
    );
    eventually("the firewall guards the tunnel end for n2 only", || {
        agent
            .host
            .guarded()
            .is_some_and(|ends| ends.peers == [SocketAddrV4::new(n2.public_ip, 8472)])
    })
    .await;
    let refused: Vec<String> = agent.refused().into_iter().map(|r| r.key).collect();
    assert_eq!(
        refused,
        ["subnets/10.244.0.0-16", "subnets/198.51.100.2-32"]
    );
}

#[tokio::test]
async fn peer_changed_reaches_the_backend() {
    let store = store();
    let n2 = peer("10.244.9.0/24", "n2", "192.0.2.2", "02:00:00:00:00:02");
    store.put_lease(n2.clone());
    let mut agent = Running::start(&store, Start::default());
    let first = agent.next_pass().await;
    assert_eq!(first.leases.get(&n2.subnet), Some(&n2));

    // The peer moved to another underlay address.
    let moved = peer("10.244.9.0/24", "n2", "192.0.2.20", "02:00:00:00:00:02");
    store.put_lease(moved.clone());
    let pass = agent.next_pass().await;
    assert_eq!(pass.local, agent.own());
    assert_eq!(pass.leases.get(&n2.subnet), Some(&moved));

    // The peer came back with another VTEP MAC.
    let remade = peer("10.244.9.0/24", "n2", "192.0.2.20", "02:00:00:00:00:22");
    store.put_lease(remade.clone());
    let pass = agent.next_pass().await;
    assert_eq!(pass.leases.get(&n2.subnet), Some(&remade));
    assert_eq!(pass.leases.len(), 2);
}

#[tokio::test]
async fn peer_removed_reaches_the_backend() {
    let store = store();
    let n2 = peer("10.244.9.0/24", "n2", "192.0.2.2", "02:00:00:00:00:02");
    let n3 = peer("10.244.10.0/24", "n3", "192.0.2.3", "02:00:00:00:00:03");
    store.put_lease(n2.clone());
    store.put_lease(n3.clone());
    let mut agent = Running::start(&store, Start::default());
    let first = agent.next_pass().await;
    assert_eq!(first.leases.len(), 3);

    store.remove_lease(n2.subnet);
    let pass = agent.next_pass().await;
    assert_eq!(pass.local, agent.own());
    assert_eq!(
        nodes(&pass.leases),
        BTreeMap::from([(pass.local.subnet, "n1".into()), (n3.subnet, "n3".into())])
    );
}

#[tokio::test]
async fn ready_only_after_the_first_converged_pass() {
    let store = store();
    let mut agent = Running::start(
        &store,
        Start {
            gated: true,
            failures: 1,
            ..Start::default()
        },
    );
    // Leased, pods open, first pass under way: not ready yet.
    let first = agent.next_pass().await;
    let subnet = first.local.subnet;
    assert_eq!(agent.host.pods(), [subnet]);
    assert!(!agent.is_ready());
    assert!(store.ready_reports().is_empty());

    // That pass fails; while the next one is under way, the failed one is over.
    agent.release(1);
    store.put_lease(peer(
        "10.244.9.0/24",
        "n2",
        "192.0.2.2",
        "02:00:00:00:00:02",
    ));
    agent.next_pass().await;
    assert!(!agent.is_ready(), "ready after a failed pass");
    assert!(
        store.ready_reports().is_empty(),
        "reported after a failed pass"
    );
    assert_eq!(
        agent.host.firewall_syncs(),
        1,
        "the firewall is synced after a failed pass too"
    );

    // It converges: ready, reported once.
    agent.release(1);
    eventually("the data path is reported ready", || {
        store.ready_reports() == [subnet]
    })
    .await;
    assert!(agent.is_ready());

    // Later passes report nothing more.
    store.put_lease(peer(
        "10.244.10.0/24",
        "n3",
        "192.0.2.3",
        "02:00:00:00:00:03",
    ));
    agent.next_pass().await;
    agent.release(1);
    store.remove_lease(net("10.244.10.0/24"));
    agent.next_pass().await;
    assert_eq!(store.ready_reports(), [subnet], "reported more than once");
    assert!(agent.is_ready());
    agent.release(1);
}

#[tokio::test]
async fn lost_lease_is_leased_again_preferring_its_subnet_and_reported_again() {
    let store = store();
    // n1 gets the second subnet, since n2 holds the first.
    let n2 = peer("10.244.1.0/24", "n2", "192.0.2.2", "02:00:00:00:00:02");
    store.put_lease(n2.clone());
    let mut agent = Running::start(&store, Start::default());
    let first = agent.next_pass().await;
    let subnet = net("10.244.2.0/24");
    assert_eq!(first.local.subnet, subnet);
    eventually("the first lease is reported ready", || {
        store.ready_reports() == [subnet]
    })
    .await;

    // n2 goes, and n1's lease expires: the first subnet is free, but n1 wants its own back.
    store.remove_lease(n2.subnet);
    store.remove_lease(subnet).expect("n1's lease");
    let again = agent
        .pass_where("n1 holds a lease again", |p| {
            p.leases.values().any(|l| l.node == NODE)
        })
        .await;
    assert_eq!(again.local.subnet, subnet);
    assert_eq!(agent.own().subnet, subnet);
    assert_eq!(
        nodes(&again.leases),
        BTreeMap::from([(subnet, "n1".into())])
    );
    eventually("the lease acquired again is reported ready again", || {
        store.ready_reports() == [subnet, subnet]
    })
    .await;
    assert_eq!(agent.recorded_subnet(), Some(subnet));
    assert_eq!(agent.host.pods(), [subnet, subnet]);
    assert!(agent.is_ready());
}

#[tokio::test]
async fn not_ready_from_a_lost_lease_until_the_new_one_is_converged() {
    let store = store();
    let mut agent = Running::start(&store, Start::default());
    let first = agent.next_pass().await;
    eventually("ready after the first pass", || agent.is_ready()).await;
    // The lease expires (a partition longer than its TTL, say).
    store.remove_lease(first.local.subnet).expect("n1's lease");
    let again = agent
        .pass_where("n1 holds a lease again", |p| {
            p.leases.values().any(|l| l.node == NODE)
        })
        .await;
    assert!(
        !again.ready,
        "ready while the new lease's data path was not programmed"
    );
    eventually("ready again once converged", || agent.is_ready()).await;
    assert_eq!(again.local.subnet, first.local.subnet);
}

#[tokio::test]
async fn lost_lease_taken_by_another_node_moves_to_a_free_subnet() {
    let store = store();
    let mut agent = Running::start(&store, Start::default());
    let first = agent.next_pass().await;
    let old = first.local.subnet;
    assert_eq!(old, net("10.244.1.0/24"));
    eventually("the first lease is reported ready", || {
        store.ready_reports() == [old]
    })
    .await;

    // n1's lease expires and n2 takes the subnet before n1 renews.
    let n2 = peer("10.244.1.0/24", "n2", "192.0.2.2", "02:00:00:00:00:02");
    store.remove_lease(old).expect("n1's lease");
    store.put_lease(n2.clone());
    let new = net("10.244.2.0/24");
    let moved = agent
        .pass_where("n1 is local on a new subnet", |p| p.local.subnet == new)
        .await;
    assert_eq!(moved.local, agent.own());
    assert_eq!(moved.leases.get(&old), Some(&n2));
    eventually("the new lease is reported ready", || {
        store.ready_reports() == [old, new]
    })
    .await;
    assert_eq!(agent.recorded_subnet(), Some(new));
    assert_eq!(agent.host.pods(), [old, new]);
    // Every later pass is from the new lease.
    store.put_lease(peer(
        "10.244.9.0/24",
        "n3",
        "192.0.2.3",
        "02:00:00:00:00:03",
    ));
    let later = agent
        .pass_where("n3 is in the set", |p| {
            p.leases.values().any(|l| l.node == "n3")
        })
        .await;
    assert_eq!(later.local.subnet, new);
}
