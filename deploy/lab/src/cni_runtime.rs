//! A small libcni-style container runtime: it takes a network configuration list and runs its
//! plugins the way containerd and CRI-O do through libcni.
//!
//! - ADD runs the plugins in order; each gets the list's `name` and `cniVersion`, the previous
//!   plugin's result as `prevResult`, and in `runtimeConfig` only the capability arguments its
//!   `capabilities` map declares. The last plugin's result is the list's result.
//! - DEL runs them in reverse, CHECK in order; both pass the cached ADD result as `prevResult`.
//! - STATUS and GC (CNI 1.1) run them in order; GC passes `cni.dev/valid-attachments`.
//!
//! Plugin binaries (`type`) are found in `CNI_PATH`, run with a clean environment holding only
//! the `CNI_*` variables, optionally inside a network namespace (the node's, as a runtime on
//! that node would). A failing plugin's CNI error (`code`, `msg`, `details`) comes back typed.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use fabric_cni::api::CniError;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::process::{describe_status, Cmd};
use crate::spec::is_executable;

/// The CNI version the lab's own configurations use.
pub const CNI_VERSION: &str = "1.1.0";

/// How long one plugin invocation may take.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The key GC passes the still-valid attachments under.
pub const VALID_ATTACHMENTS_KEY: &str = "cni.dev/valid-attachments";

/// A CNI verb (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CniCommand {
    /// Attach.
    Add,
    /// Detach.
    Del,
    /// Verify an attachment.
    Check,
    /// Is the plugin ready? (CNI 1.1)
    Status,
    /// Remove attachments not in the valid list. (CNI 1.1)
    Gc,
    /// Which versions does the plugin speak?
    Version,
}

impl CniCommand {
    /// The value of `CNI_COMMAND`.
    pub fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
            CniCommand::Check => "CHECK",
            CniCommand::Status => "STATUS",
            CniCommand::Gc => "GC",
            CniCommand::Version => "VERSION",
        }
    }

    /// Does this verb concern one attachment (and so carry the container's variables)?
    fn per_attachment(self) -> bool {
        matches!(self, CniCommand::Add | CniCommand::Del | CniCommand::Check)
    }
}

impl fmt::Display for CniCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a CNI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration list is malformed, or the call cannot be made as asked.
    #[error("invalid CNI configuration: {0}")]
    Config(String),
    /// No executable named after the plugin's `type` in `CNI_PATH`.
    #[error("CNI plugin {plugin:?} not found in CNI_PATH {cni_path}")]
    PluginNotFound {
        /// The plugin's `type`.
        plugin: String,
        /// The searched path.
        cni_path: String,
    },
    /// The plugin could not be run (or did not finish in time).
    #[error("{command} {plugin}: {message}")]
    Exec {
        /// The plugin's `type`.
        plugin: String,
        /// The verb.
        command: CniCommand,
        /// What went wrong.
        message: String,
    },
    /// The plugin failed with a CNI error.
    #[error("{command} {plugin} failed: {error}")]
    Plugin {
        /// The plugin's `type`.
        plugin: String,
        /// The verb.
        command: CniCommand,
        /// The error the plugin printed.
        error: CniError,
        /// The plugin's stderr.
        stderr: String,
    },
    /// The plugin's output was not what the spec requires.
    #[error(
        "{command} {plugin}: unexpected output ({status}): stdout {stdout:?}, stderr {stderr:?}"
    )]
    BadOutput {
        /// The plugin's `type`.
        plugin: String,
        /// The verb.
        command: CniCommand,
        /// `exit code N` or `killed by SIG`.
        status: String,
        /// The plugin's stdout.
        stdout: String,
        /// The plugin's stderr.
        stderr: String,
    },
}

impl Error {
    /// The plugin's CNI error, if it printed one.
    pub fn cni_error(&self) -> Option<&CniError> {
        match self {
            Error::Plugin { error, .. } => Some(error),
            _ => None,
        }
    }

    /// The plugin's CNI error code, if it printed one.
    pub fn code(&self) -> Option<u32> {
        self.cni_error().map(|e| e.code)
    }
}

/// A network configuration list (`*.conflist`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conflist {
    /// The version every plugin is called with.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// The network's name.
    pub name: String,
    /// Skip CHECK for this network.
    #[serde(rename = "disableCheck", default, skip_serializing_if = "is_false")]
    pub disable_check: bool,
    /// The plugins, each a JSON object with at least `type`.
    pub plugins: Vec<Map<String, Value>>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Conflist {
    /// The lab's default: one `fabric-cni` plugin with the `ips`, `labels` and `containerPorts`
    /// capabilities, talking to fabricd at `socket` (or, with `None`, wherever the list is
    /// later pointed).
    pub fn fabric_default(socket: Option<&Path>) -> Self {
        let mut plugin = json!({
            "type": "fabric-cni",
            "capabilities": { "ips": true, "labels": true, "containerPorts": true },
        });
        if let Some(socket) = socket {
            plugin["socket"] = json!(socket);
        }
        Conflist {
            cni_version: CNI_VERSION.to_string(),
            name: "fabric".to_string(),
            disable_check: false,
            plugins: vec![as_object(plugin)],
        }
    }

    /// Parses a conflist; a single-plugin `.conf` (with `type` at the top) is wrapped into one.
    pub fn from_value(value: Value) -> Result<Self, Error> {
        let Value::Object(mut top) = value else {
            return Err(Error::Config(
                "a network configuration must be a JSON object".into(),
            ));
        };
        if top.contains_key("type") && !top.contains_key("plugins") {
            let cni_version = top.get("cniVersion").cloned().unwrap_or(json!(CNI_VERSION));
            let name = top.get("name").cloned().unwrap_or(json!(""));
            top.remove("cniVersion");
            top.remove("name");
            return Conflist::from_value(json!({
                "cniVersion": cni_version, "name": name, "plugins": [top],
            }));
        }
        let list: Conflist =
            serde_json::from_value(Value::Object(top)).map_err(|e| Error::Config(e.to_string()))?;
        if list.plugins.is_empty() {
            return Err(Error::Config("`plugins` is empty".into()));
        }
        for (i, plugin) in list.plugins.iter().enumerate() {
            let ty = plugin
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if ty.is_empty() {
                return Err(Error::Config(format!("plugins[{i}] has no `type`")));
            }
        }
        Ok(list)
    }

    /// The list as JSON.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// Points every `fabric-cni` plugin that names no `socket` at `socket`.
    pub fn with_default_socket(mut self, socket: &Path) -> Self {
        for plugin in &mut self.plugins {
            if plugin.get("type") == Some(&json!("fabric-cni")) && !plugin.contains_key("socket") {
                plugin.insert("socket".into(), json!(socket));
            }
        }
        self
    }
}

fn as_object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// What the runtime knows about one attachment: the `CNI_*` variables, the capability
/// arguments, and (for DEL and CHECK) the cached ADD result.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Invocation {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS` (a path); `None` leaves it unset (allowed for DEL).
    pub netns: Option<String>,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`, as key/value pairs.
    pub args: Vec<(String, String)>,
    /// Capability arguments by capability name (`ips`, `labels`, `portMappings`, ...).
    pub capability_args: Map<String, Value>,
    /// The result of the ADD, given as `prevResult` to DEL and CHECK.
    pub cached_result: Option<Value>,
    /// GC's still-valid attachments: `(container id, ifname)`.
    pub valid_attachments: Vec<(String, String)>,
}

impl Invocation {
    /// An attachment of `eth0` in the container `container_id` with namespace path `netns`.
    pub fn new(container_id: impl Into<String>, netns: Option<String>) -> Self {
        Invocation {
            container_id: container_id.into(),
            netns,
            ifname: "eth0".to_string(),
            ..Invocation::default()
        }
    }

    /// Adds the Kubernetes `CNI_ARGS` a kubelet runtime passes:
    /// `IgnoreUnknown=1;K8S_POD_NAMESPACE=<ns>;K8S_POD_NAME=<pod>`.
    pub fn k8s_pod(mut self, namespace: &str, pod: &str) -> Self {
        self.args.extend([
            ("IgnoreUnknown".to_string(), "1".to_string()),
            ("K8S_POD_NAMESPACE".to_string(), namespace.to_string()),
            ("K8S_POD_NAME".to_string(), pod.to_string()),
        ]);
        self
    }

    /// Adds the `CNI_ARGS` containerd passes besides the pod's name for a Kubernetes pod:
    /// `K8S_POD_INFRA_CONTAINER_ID=<sandbox id>;K8S_POD_UID=<metadata.uid>`.
    pub fn k8s_sandbox(mut self, sandbox_id: &str, uid: &str) -> Self {
        self.args.extend([
            (
                "K8S_POD_INFRA_CONTAINER_ID".to_string(),
                sandbox_id.to_string(),
            ),
            ("K8S_POD_UID".to_string(), uid.to_string()),
        ]);
        self
    }

    /// Sets a capability argument (`runtimeConfig` entry for plugins declaring it).
    pub fn capability(mut self, name: impl Into<String>, value: Value) -> Self {
        self.capability_args.insert(name.into(), value);
        self
    }

    /// Sets the `ips` capability argument from addresses, each as `a.b.c.d/len`.
    pub fn ips(self, ips: &[Ipv4Addr], prefix_len: u8) -> Self {
        if ips.is_empty() {
            return self;
        }
        let ips: Vec<String> = ips.iter().map(|ip| format!("{ip}/{prefix_len}")).collect();
        self.capability("ips", json!(ips))
    }
}

/// Joins `CNI_ARGS` pairs: `K1=V1;K2=V2`.
pub fn cni_args(args: &[(String, String)]) -> String {
    args.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";")
}

/// The configuration plugin `index` of `list` receives on stdin for `command`.
pub fn plugin_config(
    list: &Conflist,
    index: usize,
    command: CniCommand,
    prev_result: Option<&Value>,
    inv: &Invocation,
) -> Value {
    let mut conf = list.plugins.get(index).cloned().unwrap_or_default();
    conf.insert("name".into(), json!(list.name));
    conf.insert("cniVersion".into(), json!(list.cni_version));
    if let Some(prev) = prev_result {
        conf.insert("prevResult".into(), prev.clone());
    }
    if command.per_attachment() {
        let declared: Map<String, Value> = conf
            .get("capabilities")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter(|(_, on)| on.as_bool() == Some(true))
            .filter_map(|(cap, _)| Some((cap.clone(), inv.capability_args.get(cap)?.clone())))
            .collect();
        if !declared.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(declared));
        }
    }
    if command == CniCommand::Gc {
        let valid: Vec<Value> = inv
            .valid_attachments
            .iter()
            .map(|(id, ifname)| json!({"containerID": id, "ifname": ifname}))
            .collect();
        conf.insert(VALID_ATTACHMENTS_KEY.into(), json!(valid));
    }
    Value::Object(conf)
}

/// `PATH` for plugins when the runtime itself has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The `CNI_*` environment a plugin runs with for `command` (besides `PATH`, nothing else is
/// inherited).
pub fn plugin_env(command: CniCommand, inv: &Invocation, cni_path: &str) -> Vec<(String, String)> {
    let mut env = vec![
        ("CNI_COMMAND".to_string(), command.as_str().to_string()),
        ("CNI_PATH".to_string(), cni_path.to_string()),
    ];
    if command.per_attachment() {
        env.push(("CNI_CONTAINERID".into(), inv.container_id.clone()));
        if let Some(netns) = &inv.netns {
            env.push(("CNI_NETNS".into(), netns.clone()));
        }
        env.push(("CNI_IFNAME".into(), inv.ifname.clone()));
        if !inv.args.is_empty() {
            env.push(("CNI_ARGS".into(), cni_args(&inv.args)));
        }
    }
    env
}

/// Judges a plugin's output: stdout on success (empty for verbs without a result), the
/// plugin's CNI error otherwise.
pub fn parse_output(
    plugin: &str,
    command: CniCommand,
    output: &Output,
) -> Result<Option<Value>, Error> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let bad = |stdout: &str| Error::BadOutput {
        plugin: plugin.to_string(),
        command,
        status: describe_status(output.status),
        stdout: stdout.to_string(),
        stderr: stderr.clone(),
    };
    if !output.status.success() {
        return match serde_json::from_str::<CniError>(&stdout) {
            Ok(error) => Err(Error::Plugin {
                plugin: plugin.to_string(),
                command,
                error,
                stderr,
            }),
            Err(_) => Err(bad(&stdout)),
        };
    }
    match command {
        CniCommand::Add | CniCommand::Version => serde_json::from_str::<Value>(&stdout)
            .ok()
            .filter(Value::is_object)
            .map(Some)
            .ok_or_else(|| bad(&stdout)),
        _ => Ok(None),
    }
}

/// The first IPv4 address of a CNI result (`ips[].address`, CIDR notation).
pub fn first_ipv4(result: &Value) -> Option<Ipv4Addr> {
    first_address(result)
}

/// The first IPv6 address of a CNI result (a dual-stack pod's second address).
pub fn first_ipv6(result: &Value) -> Option<std::net::Ipv6Addr> {
    first_address(result)
}

fn first_address<T: std::str::FromStr>(result: &Value) -> Option<T> {
    result["ips"]
        .as_array()?
        .iter()
        .filter_map(|ip| ip["address"].as_str())
        .find_map(|cidr| cidr.split('/').next()?.parse().ok())
}

/// Runs plugins: where to find them and in which network namespace to run them.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// `CNI_PATH`: the directories searched for plugin binaries, in order.
    pub cni_path: Vec<PathBuf>,
    /// The named network namespace plugins run in (`ip netns exec`); `None`: this one.
    pub netns: Option<String>,
    /// How long one plugin may run.
    pub timeout: Duration,
}

impl Runtime {
    /// A runtime searching `cni_path`, running plugins in the current namespace.
    pub fn new(cni_path: Vec<PathBuf>) -> Self {
        Runtime {
            cni_path,
            netns: None,
            timeout: PLUGIN_TIMEOUT,
        }
    }

    /// Runs plugins inside the named network namespace.
    pub fn in_netns(mut self, netns: impl Into<String>) -> Self {
        self.netns = Some(netns.into());
        self
    }

    /// `CNI_PATH` as the plugins see it.
    pub fn cni_path_env(&self) -> String {
        self.cni_path
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// The binary for plugin `type` (a path is taken as it is).
    pub fn find_plugin(&self, plugin: &str) -> Result<PathBuf, Error> {
        if plugin.contains('/') {
            return Ok(PathBuf::from(plugin));
        }
        self.cni_path
            .iter()
            .map(|dir| dir.join(plugin))
            .find(|p| is_executable(p))
            .ok_or_else(|| Error::PluginNotFound {
                plugin: plugin.to_string(),
                cni_path: self.cni_path_env(),
            })
    }

    /// Runs one binary with exactly `env` and `stdin`, as a runtime would, and returns its raw
    /// output (for tests that feed plugins malformed input).
    pub fn exec(
        &self,
        binary: &Path,
        env: &[(String, String)],
        stdin: &[u8],
    ) -> anyhow::Result<Output> {
        let cmd = match &self.netns {
            Some(netns) => Cmd::in_netns(netns, binary),
            None => Cmd::new(binary),
        };
        // Like libcni, plugins see the runtime's PATH (chained plugins run iptables & co.),
        // but none of its other variables.
        let path = std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.into());
        env.iter()
            .fold(cmd.env_clear().env("PATH", path), |cmd, (k, v)| {
                cmd.env(k, v)
            })
            .stdin(stdin)
            .timeout(self.timeout)
            .output()
    }

    /// Runs one plugin of `list` for `command`.
    fn invoke(
        &self,
        list: &Conflist,
        index: usize,
        command: CniCommand,
        prev_result: Option<&Value>,
        inv: &Invocation,
    ) -> Result<Option<Value>, Error> {
        let plugin = list.plugins[index]
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let binary = self.find_plugin(&plugin)?;
        let config = plugin_config(list, index, command, prev_result, inv);
        let env = plugin_env(command, inv, &self.cni_path_env());
        let output = self
            .exec(&binary, &env, config.to_string().as_bytes())
            .map_err(|e| Error::Exec {
                plugin: plugin.clone(),
                command,
                message: format!("{e:#}"),
            })?;
        parse_output(&plugin, command, &output)
    }

    /// ADD: every plugin in order, chaining results; returns the last result.
    pub fn add(&self, list: &Conflist, inv: &Invocation) -> Result<Value, Error> {
        let mut prev: Option<Value> = None;
        for index in 0..list.plugins.len() {
            prev = self.invoke(list, index, CniCommand::Add, prev.as_ref(), inv)?;
        }
        prev.ok_or_else(|| Error::Config("`plugins` is empty".into()))
    }

    /// DEL: every plugin in reverse order, each with the cached ADD result.
    pub fn del(&self, list: &Conflist, inv: &Invocation) -> Result<(), Error> {
        for index in (0..list.plugins.len()).rev() {
            self.invoke(
                list,
                index,
                CniCommand::Del,
                inv.cached_result.as_ref(),
                inv,
            )?;
        }
        Ok(())
    }

    /// CHECK: every plugin in order, each with the cached ADD result (required).
    pub fn check(&self, list: &Conflist, inv: &Invocation) -> Result<(), Error> {
        if list.disable_check {
            return Ok(());
        }
        let cached = inv
            .cached_result
            .as_ref()
            .ok_or_else(|| Error::Config("CHECK needs the cached ADD result".into()))?;
        for index in 0..list.plugins.len() {
            self.invoke(list, index, CniCommand::Check, Some(cached), inv)?;
        }
        Ok(())
    }

    /// STATUS: every plugin in order.
    pub fn status(&self, list: &Conflist) -> Result<(), Error> {
        let inv = Invocation::default();
        for index in 0..list.plugins.len() {
            self.invoke(list, index, CniCommand::Status, None, &inv)?;
        }
        Ok(())
    }

    /// GC: every plugin in order, with `inv.valid_attachments`.
    pub fn gc(&self, list: &Conflist, inv: &Invocation) -> Result<(), Error> {
        for index in 0..list.plugins.len() {
            self.invoke(list, index, CniCommand::Gc, None, inv)?;
        }
        Ok(())
    }

    /// VERSION of the plugin `type`: its `supportedVersions` answer.
    pub fn version(&self, plugin: &str, cni_version: &str) -> Result<Value, Error> {
        let binary = self.find_plugin(plugin)?;
        let env = plugin_env(
            CniCommand::Version,
            &Invocation::default(),
            &self.cni_path_env(),
        );
        let stdin = json!({ "cniVersion": cni_version }).to_string();
        let output = self
            .exec(&binary, &env, stdin.as_bytes())
            .map_err(|e| Error::Exec {
                plugin: plugin.to_string(),
                command: CniCommand::Version,
                message: format!("{e:#}"),
            })?;
        parse_output(plugin, CniCommand::Version, &output)?
            .ok_or_else(|| Error::Config("VERSION returned nothing".into()))
    }

    /// Any verb: ADD returns its result, VERSION the first plugin's answer, the rest `None`.
    pub fn run(
        &self,
        command: CniCommand,
        list: &Conflist,
        inv: &Invocation,
    ) -> Result<Option<Value>, Error> {
        match command {
            CniCommand::Add => self.add(list, inv).map(Some),
            CniCommand::Del => self.del(list, inv).map(|()| None),
            CniCommand::Check => self.check(list, inv).map(|()| None),
            CniCommand::Status => self.status(list).map(|()| None),
            CniCommand::Gc => self.gc(list, inv).map(|()| None),
            CniCommand::Version => {
                let plugin = list.plugins[0]
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                self.version(plugin, &list.cni_version).map(Some)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    use super::*;

    fn chain() -> Conflist {
        Conflist::from_value(json!({
            "cniVersion": "1.1.0",
            "name": "fabric",
            "plugins": [
                {"type": "fabric-cni", "socket": "/s.sock", "capabilities": {"ips": true, "labels": true}},
                {"type": "portmap", "capabilities": {"portMappings": true, "ips": false}, "snat": true},
                {"type": "tuning"}
            ]
        }))
        .unwrap()
    }

    fn pod_invocation() -> Invocation {
        Invocation::new(
            "lab-node1-pod1",
            Some("/var/run/netns/lab-node1-pod1".into()),
        )
        .k8s_pod("default", "node1-pod1")
        .ips(&[Ipv4Addr::new(10, 244, 1, 10)], 24)
        .capability("labels", json!({"app": "web"}))
        .capability(
            "portMappings",
            json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]),
        )
        .capability("bandwidth", json!({"ingressRate": 1}))
    }

    #[test]
    fn injects_name_version_and_only_declared_capabilities() {
        let list = chain();
        let inv = pod_invocation();
        let first = plugin_config(&list, 0, CniCommand::Add, None, &inv);
        assert_eq!(first["name"], "fabric");
        assert_eq!(first["cniVersion"], "1.1.0");
        assert_eq!(first["socket"], "/s.sock");
        assert!(first.get("prevResult").is_none());
        assert_eq!(
            first["runtimeConfig"],
            json!({"ips": ["10.244.1.10/24"], "labels": {"app": "web"}})
        );

        let prev = json!({"cniVersion": "1.1.0", "ips": [{"address": "10.244.1.10/24"}]});
        let second = plugin_config(&list, 1, CniCommand::Add, Some(&prev), &inv);
        assert_eq!(second["prevResult"], prev);
        assert_eq!(
            second["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}),
            "ips is declared false, bandwidth not at all"
        );
        assert_eq!(second["snat"], true);

        let third = plugin_config(&list, 2, CniCommand::Add, Some(&prev), &inv);
        assert!(
            third.get("runtimeConfig").is_none(),
            "no capabilities declared"
        );
    }

    #[test]
    fn status_and_gc_carry_no_runtime_config() {
        let list = chain();
        let mut inv = pod_invocation();
        inv.valid_attachments = vec![("c1".into(), "eth0".into())];
        let status = plugin_config(&list, 0, CniCommand::Status, None, &inv);
        assert!(status.get("runtimeConfig").is_none());
        assert!(status.get(VALID_ATTACHMENTS_KEY).is_none());
        let gc = plugin_config(&list, 0, CniCommand::Gc, None, &inv);
        assert!(gc.get("runtimeConfig").is_none());
        assert_eq!(
            gc[VALID_ATTACHMENTS_KEY],
            json!([{"containerID": "c1", "ifname": "eth0"}])
        );
    }

    #[test]
    fn builds_cni_args_and_env() {
        let inv = pod_invocation();
        assert_eq!(
            cni_args(&inv.args),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=node1-pod1"
        );
        let env = plugin_env(CniCommand::Add, &inv, "/bin:/usr/lib/cni");
        let get = |k: &str| {
            env.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("CNI_COMMAND"), Some("ADD"));
        assert_eq!(get("CNI_CONTAINERID"), Some("lab-node1-pod1"));
        assert_eq!(get("CNI_NETNS"), Some("/var/run/netns/lab-node1-pod1"));
        assert_eq!(get("CNI_IFNAME"), Some("eth0"));
        assert_eq!(get("CNI_PATH"), Some("/bin:/usr/lib/cni"));
        assert!(get("CNI_ARGS").unwrap().contains("K8S_POD_NAME=node1-pod1"));

        let sandbox = Invocation::new("lab-x-a", None)
            .k8s_pod("x", "a")
            .k8s_sandbox("lab-x-a", "6f1c-uid");
        assert_eq!(
            cni_args(&sandbox.args),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=a;\
             K8S_POD_INFRA_CONTAINER_ID=lab-x-a;K8S_POD_UID=6f1c-uid"
        );

        let status = plugin_env(CniCommand::Status, &inv, "/p");
        assert_eq!(
            status.len(),
            2,
            "STATUS carries only CNI_COMMAND and CNI_PATH"
        );

        let bare = Invocation::new("c", None);
        let del = plugin_env(CniCommand::Del, &bare, "/p");
        assert!(del.iter().all(|(k, _)| k != "CNI_NETNS" && k != "CNI_ARGS"));
    }

    #[test]
    fn default_conflist_and_socket_fill_in() {
        let list = Conflist::fabric_default(None).with_default_socket(Path::new("/n1.sock"));
        assert_eq!(
            list.to_value(),
            json!({"cniVersion":"1.1.0","name":"fabric","plugins":[{"type":"fabric-cni","socket":"/n1.sock","capabilities":{"ips":true,"labels":true,"containerPorts":true}}]})
        );
        let kept = chain().with_default_socket(Path::new("/other.sock"));
        assert_eq!(
            kept.plugins[0]["socket"], "/s.sock",
            "an explicit socket stays"
        );
    }

    #[test]
    fn parses_single_plugin_conf_and_rejects_bad_lists() {
        let list = Conflist::from_value(
            json!({"cniVersion": "1.0.0", "name": "n", "type": "fabric-cni", "socket": "/s"}),
        )
        .unwrap();
        assert_eq!(list.cni_version, "1.0.0");
        assert_eq!(list.plugins.len(), 1);
        assert_eq!(list.plugins[0]["socket"], "/s");
        assert!(list.plugins[0].get("name").is_none());
        for bad in [
            json!([]),
            json!({"cniVersion": "1.1.0", "name": "n", "plugins": []}),
            json!({"cniVersion": "1.1.0", "name": "n", "plugins": [{"socket": "/s"}]}),
            json!({"name": "n", "plugins": [{"type": "x"}]}),
        ] {
            assert!(Conflist::from_value(bad.clone()).is_err(), "{bad} accepted");
        }
    }

    fn output(code: i32, stdout: &str) -> Output {
        Output {
            status: ExitStatus::from_raw(code << 8),
            stdout: stdout.as_bytes().to_vec(),
            stderr: b"log line".to_vec(),
        }
    }

    #[test]
    fn parses_results_and_typed_errors() {
        let ok = parse_output(
            "p",
            CniCommand::Add,
            &output(0, r#"{"ips":[{"address":"10.244.1.5/24"}]}"#),
        )
        .unwrap()
        .unwrap();
        assert_eq!(first_ipv4(&ok), Some(Ipv4Addr::new(10, 244, 1, 5)));
        assert_eq!(
            parse_output("p", CniCommand::Del, &output(0, "")).unwrap(),
            None
        );

        let err = parse_output(
            "p",
            CniCommand::Add,
            &output(
                1,
                r#"{"cniVersion":"1.1.0","code":11,"msg":"not ready","details":"retry"}"#,
            ),
        )
        .unwrap_err();
        assert_eq!(err.code(), Some(11));
        assert_eq!(err.cni_error().unwrap().details, "retry");
        assert!(err.to_string().contains("not ready"), "{err}");

        let garbage = parse_output("p", CniCommand::Add, &output(2, "panic!")).unwrap_err();
        assert!(matches!(garbage, Error::BadOutput { .. }));
        assert_eq!(garbage.code(), None);
        let empty_add = parse_output("p", CniCommand::Add, &output(0, "")).unwrap_err();
        assert!(matches!(empty_add, Error::BadOutput { .. }));
    }

    #[test]
    fn first_address_of_each_family() {
        let r = json!({"ips": [{"address": "fd00::5/64"}, {"address": "10.0.0.7/32"}]});
        assert_eq!(first_ipv4(&r), Some(Ipv4Addr::new(10, 0, 0, 7)));
        assert_eq!(first_ipv6(&r), Some("fd00::5".parse().unwrap()));
        assert_eq!(first_ipv4(&json!({})), None);
    }

    /// A fake plugin that records its stdin and environment and echoes a result.
    fn fake_plugin(dir: &Path, name: &str, script: &str) {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn runs_a_chain_in_order_and_reverse() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("calls");
        for (name, ip) in [("first", "10.0.0.1/24"), ("second", "10.0.0.2/24")] {
            fake_plugin(
                dir.path(),
                name,
                &format!(
                    r#"conf=$(cat)
echo "{name} $CNI_COMMAND $CNI_CONTAINERID $conf" >> {log}
[ "$CNI_COMMAND" = ADD ] && echo '{{"cniVersion":"1.1.0","ips":[{{"address":"{ip}"}}]}}'
exit 0"#,
                    log = log.display()
                ),
            );
        }
        fake_plugin(
            dir.path(),
            "failing",
            r#"cat >/dev/null; echo '{"code":7,"msg":"bad config","details":"x"}'; exit 1"#,
        );
        let rt = Runtime::new(vec![dir.path().join("missing"), dir.path().to_path_buf()]);
        let list = Conflist::from_value(json!({
            "cniVersion": "1.1.0", "name": "net",
            "plugins": [{"type": "first"}, {"type": "second"}]
        }))
        .unwrap();
        let mut inv = Invocation::new("c1", Some("/var/run/netns/x".into()));
        let result = rt.add(&list, &inv).unwrap();
        assert_eq!(first_ipv4(&result), Some(Ipv4Addr::new(10, 0, 0, 2)));
        inv.cached_result = Some(result);
        rt.del(&list, &inv).unwrap();

        let calls = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = calls.lines().collect();
        assert_eq!(lines.len(), 4, "{calls}");
        assert!(lines[0].starts_with("first ADD c1 "), "{calls}");
        assert!(!lines[0].contains("prevResult"), "{calls}");
        assert!(lines[1].starts_with("second ADD c1 "), "{calls}");
        assert!(
            lines[1].contains(
                r#""prevResult":{"cniVersion":"1.1.0","ips":[{"address":"10.0.0.1/24"}]}"#
            ),
            "{calls}"
        );
        assert!(lines[2].starts_with("second DEL c1 "), "{calls}");
        assert!(lines[3].starts_with("first DEL c1 "), "{calls}");
        assert!(
            lines[3].contains("10.0.0.2/24"),
            "DEL gets the cached result: {calls}"
        );

        let failing = Conflist::from_value(json!({
            "cniVersion": "1.1.0", "name": "net", "plugins": [{"type": "failing"}]
        }))
        .unwrap();
        assert_eq!(rt.add(&failing, &inv).unwrap_err().code(), Some(7));
        let missing = Conflist::from_value(json!({
            "cniVersion": "1.1.0", "name": "net", "plugins": [{"type": "nope"}]
        }))
        .unwrap();
        assert!(matches!(
            rt.add(&missing, &inv),
            Err(Error::PluginNotFound { .. })
        ));
        assert!(matches!(
            rt.check(&list, &Invocation::new("c", None)),
            Err(Error::Config(_))
        ));
    }
}
