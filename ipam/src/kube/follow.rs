//! One list-then-watch loop for every resource fabric follows in the API (nodes, pods,
//! namespaces, NetworkPolicies): a consistent listing, then a watch from the listing's
//! resource version, a fresh listing when the API says the version is gone (410) and a new
//! watch from the last version seen whenever a watch ends. Failures back off with jitter. A
//! watch that stays silent past the API server's own timeout for it (plus a margin) hangs on
//! a dead connection and is started again, as kube-runtime's watcher does with its idle
//! timeout; the loop beats a [`Pulse`] each time round, waits and retries included.
//!
//! kube-runtime's reflector does the same, but hides the listing's resource version and the
//! moment a listing completes, which the object source needs (see [`super::objects`]).

use std::fmt::Debug;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::Metadata;
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::core::ObjectMeta;
use kube::Api;
use serde::de::DeserializeOwned;

use crate::backoff::{Backoff, Heard, Pulse, Quiet, Silence};

/// Server-side timeout of one watch request (the API server ends it then; we watch again).
const WATCH_TIMEOUT_SECS: u32 = 290;

/// How the loop waits on a watch: it wakes every 10 s to beat, and a watch that said
/// nothing (no event, no bookmark, no end) for 30 s past the server's timeout is dead.
pub(crate) const WATCH_SILENCE: Silence = Silence {
    wake: std::time::Duration::from_secs(10),
    dead: std::time::Duration::from_secs(WATCH_TIMEOUT_SECS as u64 + 30),
};

/// What the loop reports.
#[derive(Debug)]
pub(crate) enum Seen<K> {
    /// Every object, replacing whatever was reported before.
    Listed(Vec<K>),
    /// An object created or changed.
    Applied(K),
    /// An object deleted (its last state).
    Deleted(K),
}

/// Follows every object of `api` until the process ends, calling `on` for each report and
/// beating `pulse` each time round.
pub(crate) async fn follow<K>(
    api: Api<K>,
    what: &'static str,
    pulse: Pulse,
    mut on: impl FnMut(Seen<K>),
) where
    K: Metadata<Ty = ObjectMeta> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let _running = pulse.start();
    let mut backoff = Backoff::default();
    'list: loop {
        pulse.beat();
        let list = match api.list(&ListParams::default()).await {
            Ok(list) => list,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(resource = what, error = %e, retry_in = ?delay, "cannot list");
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        let mut version = list.metadata.resource_version.clone().unwrap_or_default();
        tracing::debug!(resource = what, objects = list.items.len(), %version, "listed");
        on(Seen::Listed(list.items));
        loop {
            pulse.beat();
            // Bookmarks are asked for by default: they keep `version` fresh while quiet.
            let params = WatchParams::default().timeout(WATCH_TIMEOUT_SECS);
            let stream = match api.watch(&params, &version).await {
                Ok(stream) => stream,
                Err(kube::Error::Api(status)) if status.code == 410 => continue 'list,
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(resource = what, error = %e, retry_in = ?delay, "cannot watch");
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            let mut stream = stream.boxed();
            let mut quiet = Quiet::new(WATCH_SILENCE);
            loop {
                pulse.beat();
                let next = match quiet.next(stream.try_next()).await {
                    Heard::Message(next) => next,
                    Heard::Woke => continue,
                    Heard::Dead(silent) => {
                        tracing::warn!(
                            resource = what,
                            silent_secs = silent.as_secs(),
                            "the watch went silent past its timeout; watching again"
                        );
                        break;
                    }
                };
                match next {
                    Ok(Some(event)) => {
                        backoff.reset();
                        match event {
                            WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                                version = resource_version(&o).unwrap_or(version);
                                on(Seen::Applied(o));
                            }
                            WatchEvent::Deleted(o) => {
                                version = resource_version(&o).unwrap_or(version);
                                on(Seen::Deleted(o));
                            }
                            WatchEvent::Bookmark(b) => version = b.metadata.resource_version,
                            WatchEvent::Error(status) if status.code == 410 => {
                                tracing::debug!(resource = what, "watch expired; listing again");
                                continue 'list;
                            }
                            WatchEvent::Error(status) => {
                                tracing::warn!(resource = what, error = %status.message, "watch error; watching again");
                                tokio::time::sleep(backoff.next_delay()).await;
                                break;
                            }
                        }
                    }
                    // The server ended the watch (its timeout): watch again from here.
                    Ok(None) => break,
                    Err(e) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(resource = what, error = %e, retry_in = ?delay, "watch broke");
                        tokio::time::sleep(delay).await;
                        break;
                    }
                }
            }
        }
    }
}

/// An object's resource version.
pub(crate) fn resource_version<K: Metadata<Ty = ObjectMeta>>(object: &K) -> Option<String> {
    object.metadata().resource_version.clone()
}
