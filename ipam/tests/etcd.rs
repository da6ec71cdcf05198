//! The etcd store against the real etcd (Debian's `etcd-server`, `/usr/bin/etcd`), run on
//! loopback with a temporary data dir and free ports: listings, batched and guarded writes,
//! the range follower (events, progress reports, listing again after the watch broke) and
//! the lease watch built on it. No root needed.

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ipam::etcd::{EtcdStore, RangeFollower, RangeUpdate};
use ipam::objects::{Kind, StoredObject};
use ipam::{LeaseRequest, Renewal, Store};
use serde_json::json;

/// A single-member etcd on 127.0.0.1, killed (by its pid) when dropped.
struct Etcd {
    child: Child,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Etcd {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let (client_port, peer_port) = (free_port(), free_port());
        let child = Self::spawn(dir.path(), client_port, peer_port);
        Etcd {
            child,
            dir,
            client_port,
            peer_port,
        }
    }

    fn spawn(dir: &Path, client_port: u16, peer_port: u16) -> Child {
        let binary = Path::new("/usr/bin/etcd");
        assert!(
            binary.exists(),
            "these tests run the real etcd: apt-get install etcd-server"
        );
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        Command::new(binary)
            .args(["--name", "test", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting /usr/bin/etcd")
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Kills etcd and starts it again on the same data dir and ports.
    fn restart(&mut self) {
        self.stop();
        self.child = Self::spawn(self.dir.path(), self.client_port, self.peer_port);
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A store under `/t`, once etcd answers.
    async fn store(&self) -> EtcdStore {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(store) =
                EtcdStore::connect(&ipam::etcd::EtcdOptions::new([self.endpoint()], "/t")).await
            {
                if store.current_revision().await.is_ok() {
                    return store;
                }
            }
            assert!(Instant::now() < deadline, "etcd did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn next(follower: &mut RangeFollower) -> RangeUpdate {
    tokio::time::timeout(Duration::from_secs(10), follower.next())
        .await
        .expect("an update within 10s")
        .expect("the follower is alive")
}

fn objects(store: &EtcdStore, update: RangeUpdate) -> (i64, Vec<StoredObject>) {
    match update {
        RangeUpdate::Listed { revision, keys } | RangeUpdate::Changed { revision, keys } => (
            revision,
            keys.into_iter().filter_map(|k| store.object(k)).collect(),
        ),
        RangeUpdate::Progress { revision } => (revision, Vec::new()),
    }
}

#[tokio::test]
async fn follower_reports_listing_changes_and_progress() {
    let etcd = Etcd::start();
    let store = etcd.store().await;
    let written = store
        .put_object(Kind::Namespaces, "x", &json!({"labels": {"ns": "x"}}))
        .await
        .unwrap();
    let mut follower = store.follow_objects().await.unwrap();
    let RangeUpdate::Listed { revision, keys } = next(&mut follower).await else {
        panic!("the listing comes first");
    };
    assert_eq!(revision, store.current_revision().await.unwrap());
    assert_eq!(written, revision, "the write's revision is the store's");
    let listed: Vec<StoredObject> = keys.into_iter().filter_map(|k| store.object(k)).collect();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].kind, listed[0].name.as_str()),
        (Kind::Namespaces, "x")
    );

    // One transaction: one update, one revision.
    let policies: Vec<(String, serde_json::Value)> = (0..3)
        .map(|i| {
            (
                format!("x/p{i}"),
                json!({"metadata": {"name": format!("p{i}")}}),
            )
        })
        .collect();
    let mut policies = policies;
    // A name given twice is written once, with its last value.
    policies.push(("x/p0".into(), json!({"metadata": {"name": "p0", "v": 2}})));
    store.put_objects(Kind::Policies, &policies).await.unwrap();
    let (rev, changed) = objects(&store, next(&mut follower).await);
    assert_eq!(changed.len(), 3);
    let p0 = changed.iter().find(|o| o.name == "x/p0").unwrap();
    assert!(String::from_utf8_lossy(p0.value.as_ref().unwrap()).contains("\"v\":2"));
    assert!(changed
        .iter()
        .all(|o| o.kind == Kind::Policies && o.mod_revision == rev));
    assert_eq!(rev, store.current_revision().await.unwrap());

    let gone = store
        .delete_objects(
            Kind::Policies,
            &["x/p1".into(), "x/nope".into(), "x/p1".into()],
        )
        .await
        .unwrap();
    assert_eq!(gone, [true, false, true]);
    let (_, changed) = objects(&store, next(&mut follower).await);
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].name, "x/p1");
    assert_eq!(changed[0].value, None);

    // A write outside the range is not reported, but a progress report covers it.
    store
        .put_config(r#"{"Network": "10.244.0.0/16"}"#)
        .await
        .unwrap();
    let written = store.current_revision().await.unwrap();
    // etcd answers only once the watch has caught up: ask until it does.
    let revision = loop {
        follower.progress().request();
        match tokio::time::timeout(Duration::from_millis(200), follower.next()).await {
            Ok(Some(RangeUpdate::Progress { revision })) => break revision,
            Ok(other) => panic!("expected a progress report, got {other:?}"),
            Err(_) => continue,
        }
    };
    assert!(revision >= written, "{revision} < {written}");
}

#[tokio::test]
async fn follower_lists_again_after_the_watch_broke() {
    let mut etcd = Etcd::start();
    let store = etcd.store().await;
    let mut follower = store.follow_objects().await.unwrap();
    assert!(matches!(
        next(&mut follower).await,
        RangeUpdate::Listed { .. }
    ));
    etcd.restart();
    let store = etcd.store().await;
    store
        .put_object(Kind::Pods, "n1/c1", &json!({"name": "a"}))
        .await
        .unwrap();
    // The old connection broke: the follower lists again (and may see the pod there or as a
    // change after it).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut relisted = false;
    let mut seen = false;
    while !(relisted && seen) {
        assert!(Instant::now() < deadline, "no new listing with the pod");
        let update = next(&mut follower).await;
        relisted |= matches!(update, RangeUpdate::Listed { .. });
        let (_, objects) = objects(&store, update);
        seen |= relisted
            && objects
                .iter()
                .any(|o| o.name == "n1/c1" && o.value.is_some());
    }
}

#[tokio::test]
async fn listings_are_paginated_at_one_revision_and_guarded_writes_refuse_stale_reads() {
    let etcd = Etcd::start();
    let store = etcd.store().await;
    let pods: Vec<(String, serde_json::Value)> = (0..1100)
        .map(|i| (format!("n1/c{i:04}"), json!({"i": i})))
        .collect();
    store.put_objects(Kind::Pods, &pods).await.unwrap();
    let (revision, all) = store.list_all_objects().await.unwrap();
    assert_eq!(all.len(), 1100);
    assert_eq!(revision, store.current_revision().await.unwrap());
    let listed = store.list_objects(Kind::Pods).await.unwrap();
    assert_eq!(listed.len(), 1100);

    let read = &listed["n1/c0007"];
    let value = json!({"i": 7, "labels": {"a": "b"}});
    assert!(store
        .put_object_if(Kind::Pods, "n1/c0007", &value, read.mod_revision)
        .await
        .unwrap());
    // The read is stale now.
    assert!(!store
        .put_object_if(Kind::Pods, "n1/c0007", &value, read.mod_revision)
        .await
        .unwrap());
    // Gone keys are not brought back.
    store
        .delete_object(Kind::Pods, "n1/c0008", false)
        .await
        .unwrap();
    let stale = listed["n1/c0008"].mod_revision;
    assert!(!store
        .put_object_if(Kind::Pods, "n1/c0008", &value, stale)
        .await
        .unwrap());
    assert!(!store
        .list_objects(Kind::Pods)
        .await
        .unwrap()
        .contains_key("n1/c0008"));
    // 0: create only.
    assert!(store
        .put_object_if(Kind::Namespaces, "x", &value, 0)
        .await
        .unwrap());
    assert!(!store
        .put_object_if(Kind::Namespaces, "x", &value, 0)
        .await
        .unwrap());
}

#[tokio::test]
async fn lease_watch_follows_leases() {
    let etcd = Etcd::start();
    let store = etcd.store().await;
    store
        .put_config(
            r#"{"Network": "10.244.0.0/16", "SubnetLen": 24, "Backend": {"Type": "host-gw"}}"#,
        )
        .await
        .unwrap();
    let request = |node: &str, ip: Ipv4Addr| LeaseRequest {
        node: node.into(),
        public_ip: ip,
        backend_type: "host-gw".into(),
        backend_data: json!(null),
        previous: None,
        ttl_secs: 60,
    };
    let a = store
        .acquire_lease(&request("a", Ipv4Addr::new(192, 0, 2, 1)))
        .await
        .unwrap();
    let mut leases = store.watch_leases().await.unwrap();
    assert_eq!(leases.borrow().len(), 1);
    // Policy objects do not wake the lease watch.
    store
        .put_object(Kind::Namespaces, "x", &json!({}))
        .await
        .unwrap();
    let b = store
        .acquire_lease(&request("b", Ipv4Addr::new(192, 0, 2, 2)))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), leases.changed())
        .await
        .unwrap()
        .unwrap();
    let now = leases.borrow_and_update().clone();
    assert_eq!(now.len(), 2);
    assert_eq!(now[&a.subnet].node, "a");
    assert_eq!(now[&b.subnet].node, "b");
}

#[tokio::test]
async fn undecodable_leases_and_reservations_stay_occupied_and_never_wedge_allocation() {
    let etcd = Etcd::start();
    let store = etcd.store().await;
    store
        .put_config(
            r#"{"Network": "10.244.0.0/22", "SubnetLen": 24, "Backend": {"Type": "host-gw"}}"#,
        )
        .await
        .unwrap();
    // Garbage where a lease and a reservation belong (a hand edit, a newer writer, an attack).
    let mut raw = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    raw.put("/t/subnets/10.244.0.0-24", "{not json", None)
        .await
        .unwrap();
    raw.put("/t/reservations/10.244.1.0-24", "[1,2,3]", None)
        .await
        .unwrap();
    let reservations = store
        .reservations()
        .await
        .expect("one bad record is no error");
    assert_eq!(
        reservations
            .get(&"10.244.1.0/24".parse().unwrap())
            .map(String::as_str),
        Some(ipam::subnet::UNREADABLE)
    );
    let request = |node: &str, previous: Option<&str>| LeaseRequest {
        node: node.into(),
        public_ip: Ipv4Addr::new(192, 0, 2, 1),
        backend_type: "host-gw".into(),
        backend_data: json!(null),
        previous: previous.map(|p| p.parse().unwrap()),
        ttl_secs: 60,
    };
    // A node that held the subnet now unreadable asks for it back: it gets a free one.
    let a = tokio::time::timeout(
        Duration::from_secs(10),
        store.acquire_lease(&request("a", Some("10.244.0.0/24"))),
    )
    .await
    .expect("no wedge")
    .unwrap();
    let b = store.acquire_lease(&request("b", None)).await.unwrap();
    let mut got = [a.subnet.to_string(), b.subnet.to_string()];
    got.sort();
    assert_eq!(got, ["10.244.2.0/24", "10.244.3.0/24"]);
    // Nothing is left: the answer says so, rather than taking an occupied subnet.
    let c = store.acquire_lease(&request("c", None)).await;
    assert!(matches!(c, Err(ipam::StoreError::Exhausted)), "{c:?}");
    // The records are still there, untouched.
    let kept = raw.get("/t/subnets/10.244.0.0-24", None).await.unwrap();
    assert_eq!(kept.kvs()[0].value(), b"{not json");
}

#[tokio::test]
async fn a_lease_that_expired_is_reported_lost_not_unreachable() {
    let etcd = Etcd::start();
    let store = etcd.store().await;
    store
        .put_config(
            r#"{"Network": "10.244.0.0/16", "SubnetLen": 24, "Backend": {"Type": "host-gw"}}"#,
        )
        .await
        .unwrap();
    let lease = store
        .acquire_lease(&LeaseRequest {
            node: "a".into(),
            public_ip: Ipv4Addr::new(192, 0, 2, 1),
            backend_type: "host-gw".into(),
            backend_data: json!(null),
            previous: None,
            ttl_secs: 2,
        })
        .await
        .unwrap();
    assert_eq!(store.renew_lease(&lease).await.unwrap(), Renewal::Renewed);
    // Not renewed for longer than its TTL (a partition): etcd drops it.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if store.list_leases().await.unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the lease never expired");
    }
    assert_eq!(store.renew_lease(&lease).await.unwrap(), Renewal::Lost);
}
