//! The pure NetworkPolicy core of fabric: the `networking.k8s.io/v1` NetworkPolicy model and
//! its validation, label selectors, the cluster state with incremental compilation, the
//! compiled classifier that decides new connections on the packet path, explanations of its
//! verdicts, and the reachability case format used to test it.
//!
//! No I/O happens here except reading case files in [`cases`]. The daemon feeds a
//! [`Cluster`] with namespaces, pods and policies as they change, and asks its
//! [`Classifier`] for a [`Verdict`] on the first packet of each new connection:
//!
//! ```
//! use policy::{Cluster, Endpoint, Pod, PodKey, Protocol};
//!
//! let mut cluster = Cluster::new();
//! cluster.upsert_namespace("x", Default::default());
//! let a = cluster.upsert_pod(Pod {
//!     key: PodKey::new("x", "a"),
//!     labels: [("app".to_string(), "web".to_string())].into(),
//!     ip: "10.244.1.10".parse().unwrap(),
//!     ipv6: None,
//!     ports: vec![],
//! });
//! let deny: policy::NetworkPolicy = serde_yaml::from_str(
//!     "metadata: {name: deny, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress]}",
//! )
//! .unwrap();
//! cluster.upsert_policy(&deny).unwrap();
//! let v = cluster.decide(Endpoint::External("192.0.2.1".parse().unwrap()), Endpoint::Pod(a), Protocol::Tcp, 80);
//! assert!(!v.allowed);
//! ```

mod bitset;
pub mod cases;
pub mod classifier;
pub mod error;
pub mod explain;
pub mod index;
pub mod model;
pub mod selector;
pub mod validate;

pub use cases::{evaluate, evaluate_file, CaseFile, Report};
pub use classifier::{Classifier, Decision, Endpoint, PodId, PolicyId, RuleRef, Verdict};
pub use error::{Error, FieldError, FieldPath, ValidationError};
pub use explain::{explain, Explanation};
pub use index::Cluster;
pub use k8s_openapi::api::networking::v1::NetworkPolicy;
pub use model::{
    ContainerPort, Direction, IpBlock, Labels, Pod, PodKey, Policy, PolicyKey, PortName, PortRange,
    Protocol,
};
pub use selector::Selector;
