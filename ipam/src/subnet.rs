//! Choosing a node's subnet: pure logic over what the datastore holds.

use std::collections::BTreeMap;

use ipnet::Ipv4Net;

use crate::config::NetworkConfig;

/// The holder recorded for a subnet whose lease or reservation record cannot be decoded: a
/// name no node can have (node names are DNS subdomains), so the subnet is occupied for all.
pub const UNREADABLE: &str = "<unreadable record>";

/// What the datastore holds when a node asks for a subnet.
#[derive(Debug, Clone, Default)]
pub struct Occupancy {
    /// Leased subnets and the node holding each.
    pub leased: BTreeMap<Ipv4Net, String>,
    /// Reserved subnets and the node each is pinned to.
    pub reserved: BTreeMap<Ipv4Net, String>,
}

/// The outcome of [`choose`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// The node already holds this subnet: refresh the lease in place.
    Held(Ipv4Net),
    /// Create a lease on this subnet (it is free now; a racing node may still win it).
    Claim(Ipv4Net),
    /// The node's reservation is leased by another node; wait for that lease to go.
    ReservedButTaken(Ipv4Net, String),
    /// No subnet is free.
    Exhausted,
}

/// Picks the subnet for `node`, in this order: its reservation; a subnet it already holds;
/// the subnet it held before (`previous`) if free; a free subnet, chosen as
/// `spread(count_of_free)` among the free ones (callers pass a random pick so that nodes
/// starting together do not all race for the same subnet).
pub fn choose(
    config: &NetworkConfig,
    occupancy: &Occupancy,
    node: &str,
    previous: Option<Ipv4Net>,
    spread: impl FnOnce(usize) -> usize,
) -> Choice {
    let held_by = |subnet: &Ipv4Net| occupancy.leased.get(subnet).map(String::as_str);
    if let Some((&subnet, _)) = occupancy.reserved.iter().find(|(_, n)| *n == node) {
        return match held_by(&subnet) {
            None => Choice::Claim(subnet),
            Some(holder) if holder == node => Choice::Held(subnet),
            Some(holder) => Choice::ReservedButTaken(subnet, holder.to_owned()),
        };
    }
    let reserved_for_other = |subnet: &Ipv4Net| occupancy.reserved.contains_key(subnet);
    if let Some((&subnet, _)) = occupancy
        .leased
        .iter()
        .find(|(s, n)| *n == node && !reserved_for_other(s))
    {
        return Choice::Held(subnet);
    }
    let usable = |subnet: &Ipv4Net| {
        config.network.contains(subnet)
            && subnet.prefix_len() == config.subnet_len
            && !reserved_for_other(subnet)
    };
    if let Some(prev) = previous.filter(|p| usable(p) && held_by(p).is_none()) {
        return Choice::Claim(prev);
    }
    let free: Vec<Ipv4Net> = config
        .subnets()
        .filter(|s| !reserved_for_other(s) && held_by(s).is_none())
        .take(FREE_WINDOW)
        .collect();
    if free.is_empty() {
        return Choice::Exhausted;
    }
    Choice::Claim(free[spread(free.len()) % free.len()])
}

/// How many free subnets a random pick spreads over (Flannel uses 100 as well).
const FREE_WINDOW: usize = 100;

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(doc: &str) -> NetworkConfig {
        NetworkConfig::parse(doc).unwrap()
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn first_free_subnet_skips_the_network_subnet() {
        let c = cfg(r#"{"Network":"10.244.0.0/16"}"#);
        let got = choose(&c, &Occupancy::default(), "n1", None, |_| 0);
        assert_eq!(got, Choice::Claim(net("10.244.1.0/24")));
    }

    #[test]
    fn reservation_wins_and_is_never_given_to_others() {
        let c = cfg(r#"{"Network":"10.244.0.0/16","SubnetMax":"10.244.2.0"}"#);
        let mut occ = Occupancy::default();
        occ.reserved.insert(net("10.244.1.0/24"), "pinned".into());
        assert_eq!(
            choose(&c, &occ, "pinned", None, |_| 0),
            Choice::Claim(net("10.244.1.0/24"))
        );
        assert_eq!(
            choose(&c, &occ, "other", Some(net("10.244.1.0/24")), |_| 0),
            Choice::Claim(net("10.244.2.0/24"))
        );
        occ.leased.insert(net("10.244.2.0/24"), "x".into());
        assert_eq!(choose(&c, &occ, "other", None, |_| 0), Choice::Exhausted);
        occ.leased.insert(net("10.244.1.0/24"), "intruder".into());
        assert_eq!(
            choose(&c, &occ, "pinned", None, |_| 0),
            Choice::ReservedButTaken(net("10.244.1.0/24"), "intruder".into())
        );
    }

    #[test]
    fn held_lease_and_previous_subnet_are_reused() {
        let c = cfg(r#"{"Network":"10.244.0.0/16"}"#);
        let mut occ = Occupancy::default();
        occ.leased.insert(net("10.244.7.0/24"), "n1".into());
        assert_eq!(
            choose(&c, &occ, "n1", Some(net("10.244.9.0/24")), |_| 0),
            Choice::Held(net("10.244.7.0/24"))
        );
        assert_eq!(
            choose(&c, &occ, "n2", Some(net("10.244.9.0/24")), |_| 0),
            Choice::Claim(net("10.244.9.0/24"))
        );
        // A previous subnet now held by someone else is not reclaimed.
        assert_eq!(
            choose(&c, &occ, "n2", Some(net("10.244.7.0/24")), |_| 0),
            Choice::Claim(net("10.244.1.0/24"))
        );
        // A previous subnet from another network config is ignored.
        assert_eq!(
            choose(&c, &occ, "n2", Some(net("10.9.0.0/24")), |_| 0),
            Choice::Claim(net("10.244.1.0/24"))
        );
    }

    #[test]
    fn spread_picks_among_free_subnets() {
        let c = cfg(r#"{"Network":"10.244.0.0/16"}"#);
        let mut occ = Occupancy::default();
        occ.leased.insert(net("10.244.1.0/24"), "a".into());
        assert_eq!(
            choose(&c, &occ, "n", None, |n| n - 1),
            Choice::Claim(net("10.244.101.0/24"))
        );
        assert_eq!(
            choose(&c, &occ, "n", None, |_| 2),
            Choice::Claim(net("10.244.4.0/24"))
        );
    }
}
