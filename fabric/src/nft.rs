//! fabric's own nftables table (`ip fabric`), replaced atomically as a whole through `nft -f -`
//! (the way knftables drives nftables): anti-spoofing on every pod's host veth, and masquerade
//! for pod traffic leaving the cluster network.

use std::io::Write;
use std::process::{Command, Stdio};

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The table's name; everything fabric puts in netfilter lives in it.
pub const TABLE: &str = "fabric";

/// The ruleset for a node whose pods live in `cluster`, with `pods` its local pods' host veths
/// and addresses: a packet entering from a pod's veth with any other source address is
/// dropped, whatever the policy; traffic from pods to anywhere outside the cluster network
/// (and not multicast) leaves with the node's address.
pub fn ruleset(cluster: Ipv4Net, pods: &[(String, Ipv4Addr)]) -> String {
    let mut antispoof = String::new();
    for (veth, ip) in pods {
        antispoof.push_str(&format!("\t\tiifname \"{veth}\" ip saddr != {ip} drop\n"));
    }
    format!(
        "table ip {TABLE}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n\
         \tchain antispoof {{\n\
         \t\ttype filter hook prerouting priority raw; policy accept;\n\
         {antispoof}\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {cluster} ip daddr {cluster} return\n\
         \t\tip saddr {cluster} ip daddr 224.0.0.0/4 return\n\
         \t\tip saddr {cluster} masquerade fully-random\n\
         \t}}\n\
         }}\n"
    )
}

/// Why the table could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// `nft` could not be run.
    #[error("cannot run nft (install the nftables package): {0}")]
    Spawn(std::io::Error),
    /// `nft` refused the ruleset.
    #[error("nft refused the ruleset: {0}")]
    Refused(String),
}

/// Installs `ruleset` atomically.
pub fn apply(ruleset: &str) -> Result<(), NftError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(ruleset.as_bytes())
        .map_err(NftError::Spawn)?;
    let out = child.wait_with_output().map_err(NftError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NftError::Refused(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masquerades_only_traffic_leaving_the_cluster() {
        let rules = ruleset(
            "10.244.0.0/16".parse().unwrap(),
            &[("fab0123456789a".into(), "10.244.1.5".parse().unwrap())],
        );
        assert!(rules.contains("iifname \"fab0123456789a\" ip saddr != 10.244.1.5 drop"));
        assert!(rules.starts_with("table ip fabric\ndelete table ip fabric\n"));
        let ret = rules.find("ip daddr 10.244.0.0/16 return").unwrap();
        let masq = rules.find("masquerade").unwrap();
        assert!(ret < masq, "cluster traffic must return before masquerade");
    }
}
