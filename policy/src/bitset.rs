//! Bitsets over pod indices: [`BitSet`], a growable set used while compiling a rule's peers,
//! and [`PeerArena`], where every rule's peer pods live as fixed-width stripes of one
//! allocation so that the decide path tests a peer with one load.

/// A set of small integers (pod indices), one bit each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct BitSet {
    words: Vec<u64>,
}

impl BitSet {
    /// Whether `i` is in the set. Indices beyond the set's storage are absent.
    #[cfg(test)]
    pub(crate) fn contains(&self, i: usize) -> bool {
        self.words
            .get(i >> 6)
            .is_some_and(|w| (w >> (i & 63)) & 1 == 1)
    }

    /// Adds `i`, growing the storage as needed.
    pub(crate) fn insert(&mut self, i: usize) {
        let w = i >> 6;
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        self.words[w] |= 1 << (i & 63);
    }

    /// The backing words (bit `i` is bit `i % 64` of word `i / 64`).
    pub(crate) fn words(&self) -> &[u64] {
        &self.words
    }

    /// Number of members.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The members, ascending.
    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(wi, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                (w != 0).then(|| {
                    let b = w.trailing_zeros() as usize;
                    w &= w - 1;
                    wi * 64 + b
                })
            })
        })
    }
}

/// One stripe of `stride` words per rule, all in one allocation.
#[derive(Clone, Debug, Default)]
pub(crate) struct PeerArena {
    stride: usize,
    rules: usize,
    words: Vec<u64>,
}

impl PeerArena {
    /// Whether `rule`'s stripe holds `pod`.
    #[inline]
    pub(crate) fn contains(&self, rule: usize, pod: usize) -> bool {
        let w = pod >> 6;
        w < self.stride
            && self
                .words
                .get(rule * self.stride + w)
                .is_some_and(|x| (x >> (pod & 63)) & 1 == 1)
    }

    /// Makes room for `rules` rules and `pods` pods (stripes widen by doubling).
    pub(crate) fn ensure(&mut self, rules: usize, pods: usize) {
        let need = pods.div_ceil(64);
        if need > self.stride {
            let stride = need.max(self.stride * 2);
            let mut words = vec![0; self.rules * stride];
            if self.stride > 0 {
                for (new, old) in words
                    .chunks_exact_mut(stride)
                    .zip(self.words.chunks_exact(self.stride))
                {
                    new[..self.stride].copy_from_slice(old);
                }
            }
            self.stride = stride;
            self.words = words;
        }
        if rules > self.rules {
            self.rules = rules;
            self.words.resize(rules * self.stride, 0);
        }
    }

    fn stripe_mut(&mut self, rule: usize) -> &mut [u64] {
        let start = (rule * self.stride).min(self.words.len());
        let end = (start + self.stride).min(self.words.len());
        &mut self.words[start..end]
    }

    /// Sets `pod`'s membership in `rule` (both must have been made room for).
    pub(crate) fn set(&mut self, rule: usize, pod: usize, member: bool) {
        if let Some(w) = self.stripe_mut(rule).get_mut(pod >> 6) {
            if member {
                *w |= 1 << (pod & 63);
            } else {
                *w &= !(1 << (pod & 63));
            }
        }
    }

    /// Replaces `rule`'s stripe with `bits` (bits beyond the room made are dropped).
    pub(crate) fn load(&mut self, rule: usize, bits: &BitSet) {
        let stripe = self.stripe_mut(rule);
        stripe.fill(0);
        for (dst, src) in stripe.iter_mut().zip(bits.words()) {
            *dst = *src;
        }
    }

    /// Removes `pod` from every rule.
    pub(crate) fn clear_pod(&mut self, pod: usize) {
        let (w, mask) = (pod >> 6, !(1u64 << (pod & 63)));
        if w < self.stride {
            for stripe in self.words.chunks_exact_mut(self.stride) {
                stripe[w] &= mask;
            }
        }
    }

    /// Number of pods in `rule`'s stripe.
    #[cfg(test)]
    pub(crate) fn count(&self, rule: usize) -> usize {
        self.words
            .chunks_exact(self.stride.max(1))
            .nth(rule)
            .map_or(0, |s| s.iter().map(|w| w.count_ones() as usize).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_and_contains() {
        let mut s = BitSet::default();
        assert!(!s.contains(0) && !s.contains(1_000_000));
        s.insert(3);
        s.insert(64);
        s.insert(200);
        assert!(s.contains(3) && s.contains(64) && s.contains(200) && !s.contains(4));
        assert_eq!(s.len(), 3);
        assert_eq!(s.iter().collect::<Vec<_>>(), [3, 64, 200]);
        assert_eq!(s.words().len(), 4);
    }

    #[test]
    fn arena_stripes_survive_widening() {
        let mut a = PeerArena::default();
        assert!(!a.contains(0, 0));
        a.ensure(2, 10);
        a.set(0, 3, true);
        a.set(1, 9, true);
        a.ensure(3, 1000);
        assert!(a.contains(0, 3) && a.contains(1, 9) && !a.contains(2, 3));
        a.set(2, 999, true);
        assert!(a.contains(2, 999) && !a.contains(2, 1000) && !a.contains(7, 1));
        let mut b = BitSet::default();
        b.insert(5);
        a.load(1, &b);
        assert!(!a.contains(1, 9) && a.contains(1, 5));
        a.set(0, 5, true);
        a.clear_pod(5);
        assert!(!a.contains(0, 5) && !a.contains(1, 5));
        assert_eq!((a.count(0), a.count(1), a.count(2)), (1, 0, 1));
    }
}
