//! Human-readable explanations of verdicts: which policies isolated each side and which rule
//! allowed it, or that the side was not isolated.

use std::fmt;

use crate::classifier::{Classifier, Decision, Endpoint, PolicyId, Verdict};
use crate::model::{Direction, Protocol};

/// A verdict together with its explanation; `Display` renders it, one line per side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// The verdict explained.
    pub verdict: Verdict,
    /// `src -> dst PROTO/port: allowed|denied`.
    pub summary: String,
    /// Why the source's egress side decided as it did.
    pub egress: String,
    /// Why the destination's ingress side decided as it did.
    pub ingress: String,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.summary)?;
        writeln!(f, "  {}", self.egress)?;
        write!(f, "  {}", self.ingress)
    }
}

/// Decides a connection and explains the verdict.
pub fn explain(
    classifier: &Classifier,
    src: Endpoint,
    dst: Endpoint,
    protocol: Protocol,
    port: u16,
) -> Explanation {
    let verdict = classifier.decide(src, dst, protocol, port);
    explain_verdict(classifier, src, dst, protocol, port, verdict)
}

/// Explains a verdict already computed for this connection.
pub fn explain_verdict(
    classifier: &Classifier,
    src: Endpoint,
    dst: Endpoint,
    protocol: Protocol,
    port: u16,
    verdict: Verdict,
) -> Explanation {
    let (s, d) = (
        endpoint_name(classifier, src),
        endpoint_name(classifier, dst),
    );
    let summary = format!(
        "{s} -> {d} {protocol}/{port}: {}",
        if verdict.allowed { "allowed" } else { "denied" }
    );
    let side = |at: Endpoint,
                at_name: &str,
                peer_name: &str,
                dir: Direction,
                decision: Decision| {
        let head = format!("{} at {at_name}", dir.lower());
        let isolating = |id| match at {
            Endpoint::Pod(p) => policy_list(classifier, classifier.isolating_policies(p, id)),
            Endpoint::External(_) => String::new(),
        };
        match decision {
            Decision::NotIsolated => match at {
                Endpoint::External(_) => format!("{head}: not isolated (outside the cluster)"),
                Endpoint::Pod(_) => format!(
                    "{head}: not isolated (no policy selects it for {})",
                    dir.lower()
                ),
            },
            Decision::Allowed(r) => format!(
                "{head}: allowed by {} {} rule {} (isolated by {})",
                policy_name(classifier, r.policy),
                r.direction.lower(),
                r.index,
                isolating(dir)
            ),
            Decision::Denied => format!(
                "{head}: denied: isolated by {}, and none of their {} rules allows {peer_name} on {protocol}/{port}",
                isolating(dir),
                dir.lower()
            ),
        }
    };
    Explanation {
        verdict,
        egress: side(src, &s, &d, Direction::Egress, verdict.egress),
        ingress: side(dst, &d, &s, Direction::Ingress, verdict.ingress),
        summary,
    }
}

fn endpoint_name(c: &Classifier, e: Endpoint) -> String {
    match e {
        Endpoint::Pod(id) => c.pod_key(id).map_or_else(
            || format!("unknown pod #{}", id.index()),
            ToString::to_string,
        ),
        Endpoint::External(ip) => format!("{ip} (external)"),
    }
}

fn policy_name(c: &Classifier, id: PolicyId) -> String {
    c.policy_key(id)
        .map_or_else(|| format!("policy #{}", id.index()), ToString::to_string)
}

fn policy_list(c: &Classifier, ids: &[PolicyId]) -> String {
    ids.iter()
        .map(|&id| policy_name(c, id))
        .collect::<Vec<_>>()
        .join(", ")
}
