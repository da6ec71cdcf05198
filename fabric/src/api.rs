//! The local API server: one JSON request per connection on a unix socket (root only, created
//! 0600),
//! answered from the node's [`PodNetwork`], its backend and its policy view. The protocol is
//! `fabric_cni::api`.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fabric_cni::api::{codes, CniError, PolicyStatus, Request, Response};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::watch;

use tunnel::Backend;

use crate::listen;
use crate::pods::PodNetwork;
use crate::policies;

/// The largest request accepted, in bytes.
const MAX_REQUEST: u64 = 1 << 20;

/// Connections served at once (a CNI call each, mostly; a node runs at most a few hundred
/// pods) and how long a client has to send its request line.
const LIMITS: listen::Limits = listen::Limits {
    connections: 256,
    read_timeout: Duration::from_secs(10),
};

/// What the API serves from: the pod network once the node holds a subnet, the data path
/// once it is built.
#[derive(Clone)]
pub struct Serving {
    /// The pod network, once a subnet is leased.
    pub pods: watch::Receiver<Option<Arc<PodNetwork>>>,
    /// The backend, once created.
    pub backend: Arc<OnceLock<Arc<dyn Backend>>>,
    /// The policy view, once read; `None` when fabricd does not enforce NetworkPolicy
    /// (`--network-policy=false`).
    pub policy: Option<Arc<OnceLock<policies::Handle>>>,
    /// How long ADD waits for the node to enforce policy on the new pod
    /// (`--policy-setup-timeout`).
    pub policy_setup: Duration,
}

/// Binds the socket at `path` (replacing a stale one) and serves until the process ends.
pub async fn serve(path: &Path, serving: Serving) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = listen::bind_private(path)?;
    tracing::info!(socket = %path.display(), "local API listening");
    listen::spawn(listener, LIMITS, "api", move |conn| {
        let serving = serving.clone();
        async move {
            if let Err(e) = handle(conn, serving).await {
                tracing::debug!(error = %e, "API connection failed");
            }
        }
    });
    Ok(())
}

async fn handle(conn: UnixStream, serving: Serving) -> std::io::Result<()> {
    let (read, mut write) = conn.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST));
    listen::within(LIMITS.read_timeout, reader.read_line(&mut line)).await?;
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(request) => dispatch(request, &serving).await,
        Err(e) => Response::Error(CniError::new(
            codes::DECODE_FAILURE,
            "cannot decode request",
            e,
        )),
    };
    let mut out = serde_json::to_vec(&response).expect("json");
    out.push(b'\n');
    write.write_all(&out).await
}

/// Answers one request.
pub async fn dispatch(request: Request, serving: &Serving) -> Response {
    if let Request::Dataplane = request {
        return match serving.backend.get() {
            Some(backend) => Response::Dataplane {
                report: backend.dataplane(),
            },
            None => Response::Error(CniError::new(
                codes::TRY_AGAIN_LATER,
                "fabricd has not built its data path yet",
                "check the fabricd log",
            )),
        };
    }
    match request {
        Request::Policy => return policy_status(serving),
        Request::PolicyCheckpoint => return policy_checkpoint(serving).await,
        _ => {}
    }
    let pods = serving.pods.borrow().clone();
    let Some(pods) = pods else {
        let not_ready = |code| {
            Response::Error(CniError::new(
                code,
                "fabricd is not ready: this node holds no subnet lease yet",
                "check the fabricd log: is the datastore reachable, the network config set and (Kubernetes) the node's podCIDR assigned?",
            ))
        };
        return match request {
            Request::Status => not_ready(codes::PLUGIN_NOT_AVAILABLE),
            _ => not_ready(codes::TRY_AGAIN_LATER),
        };
    };
    let done = |r: Result<(), CniError>| match r {
        Ok(()) => Response::Ok { result: None },
        Err(e) => Response::Error(e),
    };
    match request {
        Request::Add(att) => match pods.add(&att).await {
            Ok(added) => {
                if let Some(revision) = added.registered {
                    await_policy(serving, &att.key.container_id, revision).await;
                }
                Response::Ok {
                    result: Some(added.result),
                }
            }
            Err(e) => Response::Error(e),
        },
        Request::Del(att) => done(pods.del(&att.key).await),
        Request::Check(att) => done(pods.check(&att).await),
        Request::Status | Request::Dataplane | Request::Policy | Request::PolicyCheckpoint => {
            Response::Ok { result: None }
        }
        Request::Gc { valid } => done(pods.gc(&valid).await),
    }
}

/// Waits until the node enforces policy on a pod registered at `revision`, so the runtime
/// starts it only then: its first packet is judged with its own identity rather than as an
/// unknown address. Past `--policy-setup-timeout` it goes on with a warning; the pod's
/// connections that policy denies are cut once the view has it.
async fn await_policy(serving: &Serving, container: &str, revision: i64) {
    let Some(handle) = serving.policy.as_ref().and_then(|slot| slot.get()) else {
        return;
    };
    if serving.policy_setup.is_zero() {
        return;
    }
    let started = std::time::Instant::now();
    if handle
        .enforced()
        .reached(revision, serving.policy_setup)
        .await
    {
        tracing::debug!(
            container,
            revision,
            waited_ms = started.elapsed().as_millis() as u64,
            "policy enforced on the new pod"
        );
    } else {
        tracing::warn!(
            container,
            revision,
            enforced = handle.enforced().revision(),
            timeout = ?serving.policy_setup,
            "the new pod starts before its policy is enforced (--policy-setup-timeout passed)"
        );
    }
}

/// The answer to [`Request::Policy`]: the view's revision and size, or that enforcement is off.
fn policy_status(serving: &Serving) -> Response {
    let Some(slot) = &serving.policy else {
        return Response::Policy(PolicyStatus {
            enforcing: false,
            ..PolicyStatus::default()
        });
    };
    match slot.get() {
        Some(handle) => Response::Policy(handle.status()),
        None => Response::Error(CniError::new(
            codes::TRY_AGAIN_LATER,
            "fabricd has not read its policy view yet",
            "is the datastore reachable? check the fabricd log",
        )),
    }
}

/// The answer to [`Request::PolicyCheckpoint`]: the revision `fabricctl policy sync` waits for.
async fn policy_checkpoint(serving: &Serving) -> Response {
    let Some(handle) = serving.policy.as_ref().and_then(|slot| slot.get()) else {
        // Off, or not read yet: the status says which.
        return policy_status(serving);
    };
    match handle.checkpoint().await {
        Ok(revision) => Response::Checkpoint { revision },
        Err(e) => Response::Error(CniError::new(
            codes::TRY_AGAIN_LATER,
            "cannot read the datastore's current revision",
            e.to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serving(policy: Option<Arc<OnceLock<policies::Handle>>>) -> Serving {
        Serving {
            pods: watch::channel(None).1,
            backend: Arc::new(OnceLock::new()),
            policy,
            policy_setup: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn policy_status_says_whether_enforcement_is_on() {
        let off = dispatch(Request::Policy, &serving(None)).await;
        assert_eq!(
            off,
            Response::Policy(PolicyStatus {
                enforcing: false,
                ..PolicyStatus::default()
            })
        );
        // On, but the view not read yet (no pod network either): try again later.
        let loading = dispatch(Request::Policy, &serving(Some(Arc::default()))).await;
        let Response::Error(e) = loading else {
            panic!("expected an error, got {loading:?}");
        };
        assert_eq!(e.code, codes::TRY_AGAIN_LATER);
    }
}
