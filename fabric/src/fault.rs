//! Fault injection, a test hook: named points in the CNI ADD and DEL paths where fabricd can
//! be made to kill itself (SIGKILL: no cleanup runs, as when the node's OOM killer or an
//! operator's `kill -9` strikes), so a test can check that a restarted fabricd and the
//! runtime's retry leave nothing behind (`tests/faults.rs`). Compiled in always and inert
//! unless armed with the hidden flag `--fault POINT` (`FABRIC_FAULT`), which nothing but a
//! test sets.

use std::sync::OnceLock;

/// A fault-injection point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Point {
    /// ADD, once the address is taken (and recorded in `pods.json`), before any veth exists.
    #[value(name = "add:after-allocate")]
    AddAfterAllocate,
    /// ADD, once the veth is wired (the pod's set elements and record go in meanwhile:
    /// there or not yet).
    #[value(name = "add:after-wire")]
    AddAfterWire,
    /// ADD, once the pod's record is written (the veth and set elements: there or not yet).
    #[value(name = "add:after-register")]
    AddAfterRegister,
    /// DEL, once the veth (and the pod's record) is gone, before the address is released.
    #[value(name = "del:after-unwire")]
    DelAfterUnwire,
    /// DEL, once the address is released, before its set elements go.
    #[value(name = "del:after-release")]
    DelAfterRelease,
    /// DEL, once everything is gone, before the answer.
    #[value(name = "del:after-detach")]
    DelAfterDetach,
}

static ARMED: OnceLock<Point> = OnceLock::new();

/// Arms `point`: fabricd kills itself when it gets there.
pub fn arm(point: Point) {
    if ARMED.set(point).is_ok() {
        tracing::warn!(
            ?point,
            "fault injection armed (a test hook): fabricd kills itself there"
        );
    }
}

/// Where fabricd is: kills the process if this is the armed point.
pub fn point(here: Point) {
    if ARMED.get() == Some(&here) {
        tracing::error!(point = ?here, "fault injection: killing fabricd");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        // SIGKILL cannot be caught; should raise have failed, go down all the same.
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::*;

    #[test]
    fn points_are_named_by_verb_and_step() {
        let names: Vec<String> = Point::value_variants()
            .iter()
            .map(|p| p.to_possible_value().expect("named").get_name().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "add:after-allocate",
                "add:after-wire",
                "add:after-register",
                "del:after-unwire",
                "del:after-release",
                "del:after-detach"
            ]
        );
        // Not armed: nothing happens.
        point(Point::AddAfterAllocate);
    }
}
