//! The runtime's half of a CNI request: the `CNI_*` environment variables.
//!
//! Parsing works on a plain map so it can be tested without touching the process
//! environment. Every failure is a CNI error 4 (invalid environment variables).

use std::collections::HashMap;
use std::path::PathBuf;

use crate::api::{codes, AttachmentKey, CniError};

/// Longest interface name Linux accepts (`IFNAMSIZ` minus the trailing NUL).
pub const MAX_IFNAME_LEN: usize = 15;

/// The parsed environment of one plugin invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// `CNI_COMMAND`, with the container it is about for ADD, DEL and CHECK.
    pub command: Command,
    /// `CNI_PATH`: where the runtime keeps plugin binaries (unused: fabric delegates nothing).
    pub path: Vec<PathBuf>,
}

/// The verb the runtime asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Attach a container to the network.
    Add(Container),
    /// Detach a container; must succeed when there is nothing to detach.
    Del(Container),
    /// Verify a container's attachment.
    Check(Container),
    /// Report the supported specification versions.
    Version,
    /// Report whether the plugin can serve ADD (CNI 1.1.0).
    Status,
    /// Remove stale attachments (CNI 1.1.0).
    Gc,
}

/// The container an ADD, DEL or CHECK is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// `CNI_CONTAINERID` and `CNI_IFNAME`, validated.
    pub key: AttachmentKey,
    /// `CNI_NETNS`; always present for ADD and CHECK, optional for DEL.
    pub netns: Option<String>,
    /// The Kubernetes arguments in `CNI_ARGS`.
    pub args: K8sArgs,
}

/// The arguments Kubernetes runtimes pass in `CNI_ARGS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct K8sArgs {
    /// `K8S_POD_NAMESPACE`.
    pub pod_namespace: Option<String>,
    /// `K8S_POD_NAME`.
    pub pod_name: Option<String>,
}

impl Env {
    /// Parses and validates the `CNI_*` variables in `vars`.
    pub fn from_map(vars: &HashMap<String, String>) -> Result<Self, CniError> {
        let verb = var(vars, "CNI_COMMAND").ok_or_else(|| invalid("CNI_COMMAND is not set"))?;
        let command = match verb {
            "ADD" => Command::Add(Container::from_map(vars, verb, true)?),
            "DEL" => Command::Del(Container::from_map(vars, verb, false)?),
            "CHECK" => Command::Check(Container::from_map(vars, verb, true)?),
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            other => return Err(invalid(format!("unknown CNI_COMMAND {other:?}"))),
        };
        let path = var(vars, "CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|d| !d.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self { command, path })
    }
}

impl Command {
    /// The verb as the runtime spells it in `CNI_COMMAND`.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Add(_) => "ADD",
            Command::Del(_) => "DEL",
            Command::Check(_) => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }
}

impl Container {
    /// Reads the container's variables for `verb`; `needs_netns` makes `CNI_NETNS` mandatory.
    fn from_map(
        vars: &HashMap<String, String>,
        verb: &str,
        needs_netns: bool,
    ) -> Result<Self, CniError> {
        let required = |name: &str| {
            var(vars, name).ok_or_else(|| invalid(format!("{name} is required for {verb}")))
        };
        let container_id = validate_container_id(required("CNI_CONTAINERID")?)?;
        let ifname = validate_ifname(required("CNI_IFNAME")?)?;
        let netns = if needs_netns {
            Some(required("CNI_NETNS")?)
        } else {
            var(vars, "CNI_NETNS")
        };
        Ok(Self {
            key: AttachmentKey {
                container_id: container_id.to_owned(),
                ifname: ifname.to_owned(),
            },
            netns: netns.map(str::to_owned),
            args: K8sArgs::parse(var(vars, "CNI_ARGS").unwrap_or_default())?,
        })
    }
}

impl K8sArgs {
    /// Parses `CNI_ARGS` (`KEY=VALUE` pairs separated by `;`), keeping the Kubernetes
    /// pod identity and ignoring every other key. A pair without `=` is an error 4.
    pub fn parse(cni_args: &str) -> Result<Self, CniError> {
        let mut args = Self::default();
        for pair in cni_args.split(';').filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .filter(|(key, _)| !key.is_empty())
                .ok_or_else(|| invalid(format!("malformed CNI_ARGS pair {pair:?}")))?;
            let value = Some(value.to_owned()).filter(|v| !v.is_empty());
            match key {
                "K8S_POD_NAMESPACE" => args.pod_namespace = value,
                "K8S_POD_NAME" => args.pod_name = value,
                _ => {}
            }
        }
        Ok(args)
    }
}

/// Checks `CNI_CONTAINERID` against the spec's `[A-Za-z0-9][A-Za-z0-9_.-]*`.
pub fn validate_container_id(id: &str) -> Result<&str, CniError> {
    let mut chars = id.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if valid {
        Ok(id)
    } else {
        Err(invalid(format!(
            "CNI_CONTAINERID {id:?} must match [A-Za-z0-9][A-Za-z0-9_.-]*"
        )))
    }
}

/// Checks `CNI_IFNAME` against the kernel's rules for interface names.
pub fn validate_ifname(ifname: &str) -> Result<&str, CniError> {
    let problem = if ifname.is_empty() {
        Some("is empty".to_owned())
    } else if ifname.len() > MAX_IFNAME_LEN {
        Some(format!("is longer than {MAX_IFNAME_LEN} bytes"))
    } else if ifname == "." || ifname == ".." {
        Some("is not a valid name".to_owned())
    } else if ifname.contains(|c: char| c == '/' || c == ':' || c.is_whitespace()) {
        Some("contains '/', ':' or whitespace".to_owned())
    } else {
        None
    };
    match problem {
        None => Ok(ifname),
        Some(problem) => Err(invalid(format!("CNI_IFNAME {ifname:?} {problem}"))),
    }
}

/// A variable's value; unset and empty are the same to the spec.
fn var<'a>(vars: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    vars.get(name).map(String::as_str).filter(|v| !v.is_empty())
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(codes::INVALID_ENV, msg, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn add_vars() -> HashMap<String, String> {
        vars(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/var/run/netns/p1"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=a",
            ),
            ("CNI_PATH", "/opt/cni/bin::/usr/lib/cni"),
        ])
    }

    fn code_of(vars: &HashMap<String, String>) -> u32 {
        Env::from_map(vars).unwrap_err().code
    }

    #[test]
    fn parses_a_full_add() {
        let env = Env::from_map(&add_vars()).unwrap();
        let Command::Add(container) = env.command else {
            panic!("not an ADD: {env:?}");
        };
        assert_eq!(container.key.container_id, "abc123");
        assert_eq!(container.key.ifname, "eth0");
        assert_eq!(container.netns.as_deref(), Some("/var/run/netns/p1"));
        assert_eq!(container.args.pod_namespace.as_deref(), Some("x"));
        assert_eq!(container.args.pod_name.as_deref(), Some("a"));
        assert_eq!(
            env.path,
            [PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
        );
    }

    #[test]
    fn verbs_without_a_container_need_only_the_command() {
        for (verb, name) in [("VERSION", "VERSION"), ("STATUS", "STATUS"), ("GC", "GC")] {
            let env = Env::from_map(&vars(&[("CNI_COMMAND", verb)])).unwrap();
            assert_eq!(env.command.name(), name);
        }
    }

    #[test]
    fn del_does_not_need_a_netns() {
        let mut v = add_vars();
        v.insert("CNI_COMMAND".into(), "DEL".into());
        v.insert("CNI_NETNS".into(), String::new());
        let env = Env::from_map(&v).unwrap();
        assert!(matches!(
            env.command,
            Command::Del(Container { netns: None, .. })
        ));
    }

    #[test]
    fn missing_or_unknown_command_is_code_4() {
        assert_eq!(code_of(&vars(&[])), codes::INVALID_ENV);
        assert_eq!(code_of(&vars(&[("CNI_COMMAND", "")])), codes::INVALID_ENV);
        assert_eq!(
            code_of(&vars(&[("CNI_COMMAND", "add")])),
            codes::INVALID_ENV
        );
        assert_eq!(
            code_of(&vars(&[("CNI_COMMAND", "FOO")])),
            codes::INVALID_ENV
        );
    }

    #[test]
    fn missing_container_variables_are_code_4() {
        for (verb, var) in [
            ("ADD", "CNI_CONTAINERID"),
            ("ADD", "CNI_IFNAME"),
            ("ADD", "CNI_NETNS"),
            ("CHECK", "CNI_NETNS"),
            ("DEL", "CNI_CONTAINERID"),
            ("DEL", "CNI_IFNAME"),
        ] {
            let mut v = add_vars();
            v.insert("CNI_COMMAND".into(), verb.into());
            v.remove(var);
            let err = Env::from_map(&v).unwrap_err();
            assert_eq!(err.code, codes::INVALID_ENV, "{verb} without {var}");
            assert!(err.msg.contains(var), "{}", err.msg);
        }
    }

    #[test]
    fn container_ids_follow_the_spec() {
        for good in ["a", "0", "abc-1.2_3", "A.b"] {
            assert!(validate_container_id(good).is_ok(), "{good:?}");
        }
        for bad in ["", "-a", ".a", "_a", "a/b", "a b", "a;b", "é"] {
            assert!(validate_container_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ifnames_follow_the_kernel() {
        for good in ["eth0", "a", "net1.100", "123456789012345"] {
            assert!(validate_ifname(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            "1234567890123456",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
            "a\n",
        ] {
            let err = validate_ifname(bad).unwrap_err();
            assert_eq!(err.code, codes::INVALID_ENV, "{bad:?}");
        }
    }

    #[test]
    fn cni_args_ignore_unknown_keys() {
        let args = K8sArgs::parse("FOO=bar;K8S_POD_NAME=a;;K8S_POD_UID=u=v;").unwrap();
        assert_eq!(args.pod_name.as_deref(), Some("a"));
        assert_eq!(args.pod_namespace, None);
        assert_eq!(K8sArgs::parse("").unwrap(), K8sArgs::default());
    }

    #[test]
    fn malformed_cni_args_are_code_4() {
        for bad in ["K8S_POD_NAME", "a=b;junk", "=x"] {
            let err = K8sArgs::parse(bad).unwrap_err();
            assert_eq!(err.code, codes::INVALID_ENV, "{bad:?}");
        }
        let mut v = add_vars();
        v.insert("CNI_ARGS".into(), "nonsense".into());
        assert_eq!(code_of(&v), codes::INVALID_ENV);
    }
}
