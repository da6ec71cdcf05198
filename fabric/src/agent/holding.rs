//! The node's hold on its own lease, as decisions over plain data: how often to renew it, what
//! to ask for when it is lost, and when its data path still has to be reported ready. The
//! loop in [`super::Control`] acts on them.

use std::time::Duration;

use ipam::Lease;
use ipnet::Ipv4Net;

/// How often a lease of `ttl` is renewed: three times per TTL, so one failed renewal (or two)
/// does not lose it; at least every hour, at most every second.
pub fn renew_period(ttl: Duration) -> Duration {
    (ttl / 3).clamp(Duration::from_secs(1), Duration::from_secs(3600))
}

/// The lease the node holds, and whether its data path has been reported ready.
///
/// Every lease acquired is a new `Holding`, unreported: after a lost lease is acquired again
/// (even on the same subnet) its data path is reported again, once the next pass converges.
#[derive(Debug, Clone)]
pub struct Holding {
    lease: Lease,
    reported: bool,
}

impl Holding {
    /// A lease just acquired.
    pub fn new(lease: Lease) -> Self {
        Self {
            lease,
            reported: false,
        }
    }

    /// The lease.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// The subnet to ask for again once the lease is lost: the same one, if still free.
    pub fn previous(&self) -> Option<Ipv4Net> {
        Some(self.lease.subnet)
    }

    /// Whether the datastore is still to hear that the data path is programmed, after a pass
    /// that `converged` (or failed).
    pub fn report_due(&self, converged: bool) -> bool {
        converged && !self.reported
    }

    /// Records that the datastore has heard it.
    pub fn reported(&mut self) {
        self.reported = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(subnet: &str) -> Lease {
        Lease {
            subnet: subnet.parse().unwrap(),
            ipv6_subnet: None,
            node: "n1".into(),
            public_ip: "192.0.2.1".parse().unwrap(),
            backend_type: "vxlan".into(),
            backend_data: serde_json::Value::Null,
            ttl_secs: Some(30),
            handle: 1,
        }
    }

    #[test]
    fn renewal_runs_three_times_per_ttl_within_bounds() {
        assert_eq!(
            renew_period(Duration::from_secs(30)),
            Duration::from_secs(10)
        );
        assert_eq!(renew_period(Duration::from_secs(1)), Duration::from_secs(1));
        assert_eq!(
            renew_period(Duration::from_secs(86_400)),
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn reported_once_per_lease_after_a_converged_pass() {
        let mut held = Holding::new(lease("10.244.1.0/24"));
        assert!(!held.report_due(false));
        assert!(held.report_due(true));
        held.reported();
        assert!(!held.report_due(true));
        assert_eq!(held.previous(), Some("10.244.1.0/24".parse().unwrap()));
        // The same subnet leased again is a new lease: reported again.
        let again = Holding::new(lease("10.244.1.0/24"));
        assert!(again.report_due(true));
    }
}
