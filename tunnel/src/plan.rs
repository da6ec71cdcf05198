//! Reconcile plans: what to add and what to remove to turn the kernel's state into the
//! desired one. Pure set arithmetic, shared by every backend.

use std::collections::BTreeSet;

/// The changes that take `actual` to `desired`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff<T> {
    /// Entries to create (or replace).
    pub add: Vec<T>,
    /// Entries to delete.
    pub remove: Vec<T>,
}

impl<T> Diff<T> {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

/// Computes the plan; entries present in both are left alone, so re-running a converged
/// plan changes nothing.
pub fn diff<T: Ord + Clone>(
    desired: impl IntoIterator<Item = T>,
    actual: impl IntoIterator<Item = T>,
) -> Diff<T> {
    let desired: BTreeSet<T> = desired.into_iter().collect();
    let actual: BTreeSet<T> = actual.into_iter().collect();
    Diff {
        add: desired.difference(&actual).cloned().collect(),
        remove: actual.difference(&desired).cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_adds_missing_and_removes_stale() {
        let d = diff([1, 2, 3], [2, 3, 4, 4]);
        assert_eq!(d.add, vec![1]);
        assert_eq!(d.remove, vec![4]);
        assert!(diff([1, 2], [2, 1]).is_empty());
    }
}
