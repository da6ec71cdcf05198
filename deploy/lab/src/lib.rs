//! `fabric-lab`: a real multi-node fabric cluster built out of Linux network namespaces on one
//! machine, for the README demo, the integration tests and the benchmarks.
//!
//! A lab called `NAME` is an underlay switch namespace `NAME-sw` (bridge `br0`,
//! 172.30.0.1/24), the real etcd in `NAME-etcd` (172.30.0.2), one namespace per node
//! `NAME-nodeK` (172.30.0.(10+K)) running `fabricd`, and pod namespaces attached by running the
//! `fabric-cni` plugin exactly as a container runtime does ([`cni_runtime`]). Nothing is ever
//! added to the root namespace: every link is born inside a lab namespace, and every process
//! the lab starts is tracked by PID in the state file under `/run/fabric-lab/NAME/` and ended
//! by PID.
//!
//! With [`Datastore::Kubernetes`] (`fabric-lab up --datastore kubernetes`) `NAME-etcd` gives way
//! to a real Kubernetes control plane in `NAME-cp` (172.30.0.3): etcd 3.6 on loopback,
//! kube-apiserver on `https://172.30.0.3:6443` (lab CA, Node and RBAC authorization) and
//! kube-controller-manager assigning the nodes' pod CIDRs, all built by
//! `deploy/lab/k8s/build.sh` at pinned versions. The lab plays the kubelet: it registers each
//! node (Node object, addresses) before its fabricd starts, gives fabricd a kubeconfig with a
//! token of the manifest's `fabric` ServiceAccount (RBAC applied from
//! `deploy/kubernetes/fabric.yaml`), creates each pod's Pod object before CNI ADD and writes
//! its status after. Beside them run kube-scheduler, a kubelet role per node ([`kubelet`]:
//! node heartbeats, and the pods the scheduler binds there: netns, CNI, resolv.conf, a stand-in
//! workload, status), kube-proxy per node and CoreDNS at 10.96.0.10, so Deployments, Services,
//! cluster DNS and NodePorts work (`--no-services` leaves out scheduler, kube-proxy and
//! CoreDNS). `fabric-lab kubectl` runs the pinned kubectl as the lab's admin.
//!
//! With [`Agent::Flannel`] (`fabric-lab up --agent flannel`) every node runs the real flanneld
//! (etcd mode, vxlan or host-gw) instead of fabricd and pods are attached through Flannel's
//! delegate chain (bridge and host-local with the config Flannel's CNI plugin derives from
//! flanneld's subnet file), on the same topology: the anchor `fabric-bench flannel` measures
//! fabric against ([`flannel`]).
//!
//! ```no_run
//! use fabric_lab::{Lab, LabSpec, PodSpec};
//!
//! # fn main() -> anyhow::Result<()> {
//! let mut spec = LabSpec::new("e2e");
//! spec.nodes = 2;
//! spec.pods_per_node = 1;
//! let mut lab = Lab::up(spec)?; // torn down when `lab` is dropped
//! let web = lab.add_pod("node2", PodSpec::new("web").namespace("x").label("app", "web"))?;
//! lab.exec_ok("node1-pod1", &["ping", "-c", "1", "-W", "1", &web.ip.to_string()])?;
//! # Ok(())
//! # }
//! ```
//!
//! Modules: [`spec`] (what to build), [`topology`] (names and addresses), [`state`] (the state
//! dir), [`process`] (commands and daemons), [`netns`] (namespaces and links), [`etcd`],
//! [`kube`] (the Kubernetes control plane, PKI, kubeconfigs, kubectl, API objects, kube-proxy,
//! DNS), [`kubelet`] (the kubelet role),
//! [`node`] (fabricd), [`flannel`] (flanneld), [`cni_runtime`], [`demo`] (ping, iperf3),
//! [`teardown`], [`lab`] (the orchestration), [`netpol`] (the reachability suite), [`porter`]
//! (the in-pod agent), [`audit`] (a node's pod bookkeeping, read back for the tests),
//! [`soak`] (a churn soak), [`pins`] (pinned upstream builds' versions and caches) and
//! [`cli`].

pub mod attack;
pub mod audit;
pub mod cli;
pub mod cni_runtime;
pub mod demo;
pub mod etcd;
pub mod flannel;
pub mod flood;
pub mod kube;
pub mod kubelet;
pub mod lab;
pub mod netns;
pub mod netpol;
pub mod node;
pub mod pins;
pub mod porter;
pub mod process;
pub mod soak;
pub mod spec;
pub mod state;
pub mod teardown;
pub mod topology;

pub use cni_runtime::{CniCommand, Conflist, Invocation};
pub use lab::Lab;
pub use nix::sys::signal::Signal;
pub use spec::{Agent, Backend, Datastore, LabSpec, PodSpec, Reservation};
pub use state::{Node, Pod};
pub use teardown::DownReport;
