//! The kubelet role's view of the Pods bound to its node, kept the way an informer keeps it:
//! one list (`GET /api/v1/pods?fieldSelector=spec.nodeName=NODE`), then one streaming watch
//! from the list's resourceVersion (`kubectl get --raw` copies the API's event stream as it
//! comes, so nothing polls). When the stream ends or the version is too old (410 Gone) it lists
//! again. Events go to the role's loop over a channel; parsing is pure.

use std::io::BufReader;
use std::sync::mpsc::Sender;
use std::time::Duration;

use serde_json::Value;

use crate::kube::Kubectl;

/// How long the API keeps one watch open before the role lists again.
pub const WATCH_SECONDS: u32 = 1800;

/// What the loop hears.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A full list: exactly these Pods are bound to the node now.
    Listed(Vec<Value>),
    /// A Pod was added or changed.
    Upsert(Value),
    /// A Pod is gone from the API.
    Deleted(Value),
}

/// One decoded watch event.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchItem {
    /// ADDED or MODIFIED, and the object's resourceVersion.
    Upsert(Value, Option<String>),
    /// DELETED.
    Deleted(Value, Option<String>),
    /// BOOKMARK: only a newer resourceVersion.
    Bookmark(Option<String>),
    /// ERROR: the watch must start over from a list (e.g. 410 Gone).
    Error(String),
}

/// The list and watch paths for `node`'s pods.
pub fn paths(node: &str, resource_version: Option<&str>) -> String {
    let base = format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{node}");
    match resource_version {
        None => base,
        Some(rv) => format!(
            "{base}&watch=1&allowWatchBookmarks=true&timeoutSeconds={WATCH_SECONDS}&resourceVersion={rv}"
        ),
    }
}

/// Decodes one watch event (`{"type": ..., "object": ...}`).
pub fn parse_event(event: &Value) -> WatchItem {
    let object = event["object"].clone();
    let rv = object["metadata"]["resourceVersion"]
        .as_str()
        .map(str::to_string);
    match event["type"].as_str() {
        Some("ADDED") | Some("MODIFIED") => WatchItem::Upsert(object, rv),
        Some("DELETED") => WatchItem::Deleted(object, rv),
        Some("BOOKMARK") => WatchItem::Bookmark(rv),
        _ => WatchItem::Error(
            object["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| event.to_string()),
        ),
    }
}

/// The items and resourceVersion of a PodList.
pub fn parse_list(list: &Value) -> (Vec<Value>, Option<String>) {
    let items = list["items"].as_array().cloned().unwrap_or_default();
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .map(str::to_string);
    (items, rv)
}

/// Lists and watches `node`'s Pods forever, sending [`Event`]s to `tx`; returns when the
/// receiver is gone.
pub fn run(kubectl: &Kubectl, node: &str, tx: &Sender<Event>) {
    loop {
        let listed = kubectl
            .run(&["get", "--raw", &paths(node, None)])
            .and_then(|out| Ok(serde_json::from_str::<Value>(&out)?));
        let (items, rv) = match listed {
            Ok(list) => parse_list(&list),
            Err(e) => {
                eprintln!("listing pods: {e:#}");
                std::thread::sleep(Duration::from_secs(2));
                continue;
            }
        };
        if tx.send(Event::Listed(items)).is_err() {
            return;
        }
        let Some(rv) = rv else {
            std::thread::sleep(Duration::from_secs(2));
            continue;
        };
        if !watch_from(kubectl, node, rv, tx) {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Follows one watch stream; `false` once the receiver is gone.
fn watch_from(kubectl: &Kubectl, node: &str, mut rv: String, tx: &Sender<Event>) -> bool {
    loop {
        let path = paths(node, Some(&rv));
        let mut child = match kubectl.cmd(["get", "--raw", &path]).spawn_stream() {
            Ok(child) => child,
            Err(e) => {
                eprintln!("watching pods: {e:#}");
                return true;
            }
        };
        let Some(stdout) = child.stdout.take() else {
            return true;
        };
        let mut fresh = true;
        let mut restart = false;
        for event in
            serde_json::Deserializer::from_reader(BufReader::new(stdout)).into_iter::<Value>()
        {
            let Ok(event) = event else {
                break;
            };
            let (sent, new_rv) = match parse_event(&event) {
                WatchItem::Upsert(obj, v) => (tx.send(Event::Upsert(obj)).is_ok(), v),
                WatchItem::Deleted(obj, v) => (tx.send(Event::Deleted(obj)).is_ok(), v),
                WatchItem::Bookmark(v) => (true, v),
                WatchItem::Error(msg) => {
                    eprintln!("watch ended: {msg}");
                    restart = true;
                    break;
                }
            };
            if !sent {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            if let Some(v) = new_rv {
                rv = v;
            }
            fresh = false;
        }
        let _ = child.kill();
        let _ = child.wait();
        // An error, or a stream that ended at once: list again.
        if restart || fresh {
            return true;
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn watch_paths() {
        assert_eq!(
            paths("node2", None),
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode2"
        );
        assert_eq!(
            paths("node2", Some("42")),
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode2&watch=1&allowWatchBookmarks=true\
             &timeoutSeconds=1800&resourceVersion=42"
        );
    }

    #[test]
    fn events_decode() {
        let pod = json!({"metadata": {"name": "a", "resourceVersion": "7"}});
        assert_eq!(
            parse_event(&json!({"type": "ADDED", "object": pod})),
            WatchItem::Upsert(pod.clone(), Some("7".into()))
        );
        assert_eq!(
            parse_event(&json!({"type": "DELETED", "object": pod})),
            WatchItem::Deleted(pod.clone(), Some("7".into()))
        );
        assert_eq!(
            parse_event(
                &json!({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}})
            ),
            WatchItem::Bookmark(Some("9".into()))
        );
        assert_eq!(
            parse_event(&json!({"type": "ERROR", "object": {"code": 410, "message": "too old"}})),
            WatchItem::Error("too old".into())
        );
        let (items, rv) =
            parse_list(&json!({"metadata": {"resourceVersion": "5"}, "items": [pod]}));
        assert_eq!((items.len(), rv.as_deref()), (1, Some("5")));
    }
}
