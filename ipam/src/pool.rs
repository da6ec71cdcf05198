//! Pod addresses within the node's subnet, persisted in the state dir so that a daemon
//! restart never hands out an address twice.
//!
//! [`Allocations`] is the pure bookkeeping; [`PodPool`] adds the file it lives in, written
//! atomically (temp file + rename) after every change.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Who holds an address: the runtime's container id and interface name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Owner {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
}

/// Why an address could not be handed out.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The requested address is not a usable host address of the subnet.
    #[error("requested address {addr} is not usable in this node's subnet {subnet}")]
    OutOfRange {
        /// What was asked for.
        addr: Ipv4Addr,
        /// The node's subnet.
        subnet: Ipv4Net,
    },
    /// The requested address is held by another attachment.
    #[error("requested address {addr} is already held by container {}", holder.container_id)]
    InUse {
        /// What was asked for.
        addr: Ipv4Addr,
        /// Who holds it.
        holder: Owner,
    },
    /// The attachment already holds an address.
    #[error("container {} interface {} already holds {addr}", owner.container_id, owner.ifname)]
    AlreadyAllocated {
        /// The attachment.
        owner: Owner,
        /// Its address.
        addr: Ipv4Addr,
    },
    /// Every address is taken.
    #[error("no free address left in {0}")]
    Exhausted(Ipv4Net),
    /// The state file could not be read or written.
    #[error("pod address state {path}: {source}")]
    Io {
        /// The state file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
}

/// The addresses handed out in one subnet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Allocations {
    subnet: Ipv4Net,
    /// The last address handed out: allocation goes round-robin from here, so a freed address
    /// is not reused at once.
    last: Option<Ipv4Addr>,
    held: BTreeMap<Ipv4Addr, Owner>,
}

impl Allocations {
    /// No address handed out yet in `subnet`.
    pub fn new(subnet: Ipv4Net) -> Self {
        Self {
            subnet,
            last: None,
            held: BTreeMap::new(),
        }
    }

    /// The subnet.
    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    /// Usable pod addresses: every host address except the subnet's first (`.0`, the tunnel
    /// device's) and last (broadcast).
    fn usable(&self, addr: Ipv4Addr) -> bool {
        self.subnet.contains(&addr)
            && addr != self.subnet.network()
            && addr != self.subnet.broadcast()
    }

    /// Hands out `requested`, or the next free address after the last one handed out.
    pub fn allocate(
        &mut self,
        owner: Owner,
        requested: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, PoolError> {
        if let Some(addr) = self.get(&owner) {
            return Err(PoolError::AlreadyAllocated { owner, addr });
        }
        let addr = match requested {
            Some(addr) if !self.usable(addr) => {
                return Err(PoolError::OutOfRange {
                    addr,
                    subnet: self.subnet,
                })
            }
            Some(addr) => {
                if let Some(holder) = self.held.get(&addr) {
                    return Err(PoolError::InUse {
                        addr,
                        holder: holder.clone(),
                    });
                }
                addr
            }
            None => self.next_free().ok_or(PoolError::Exhausted(self.subnet))?,
        };
        self.held.insert(addr, owner);
        self.last = Some(addr);
        Ok(addr)
    }

    fn next_free(&self) -> Option<Ipv4Addr> {
        let first = u32::from(self.subnet.network()) + 1;
        let last = u32::from(self.subnet.broadcast()) - 1;
        let start = self
            .last
            .map(u32::from)
            .filter(|l| (first..=last).contains(l))
            .map_or(first, |l| if l == last { first } else { l + 1 });
        (start..=last)
            .chain(first..start)
            .map(Ipv4Addr::from)
            .find(|a| !self.held.contains_key(a))
    }

    /// Frees the address held by `owner`, if any.
    pub fn release(&mut self, owner: &Owner) -> Option<Ipv4Addr> {
        let addr = self.get(owner)?;
        self.held.remove(&addr);
        Some(addr)
    }

    /// Takes back an allocation that never came into use (its attachment failed): frees
    /// `owner`'s address and, unless another allocation came since, moves the round-robin
    /// position back to `last` (what [`Allocations::last`] said before), so the allocation
    /// leaves no trace.
    pub fn undo(&mut self, owner: &Owner, last: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        let addr = self.release(owner)?;
        if self.last == Some(addr) {
            self.last = last;
        }
        Some(addr)
    }

    /// The last address handed out.
    pub fn last(&self) -> Option<Ipv4Addr> {
        self.last
    }

    /// The address held by `owner`.
    pub fn get(&self, owner: &Owner) -> Option<Ipv4Addr> {
        self.held
            .iter()
            .find_map(|(addr, o)| (o == owner).then_some(*addr))
    }

    /// Every address handed out, with its holder.
    pub fn iter(&self) -> impl Iterator<Item = (Ipv4Addr, &Owner)> {
        self.held.iter().map(|(a, o)| (*a, o))
    }

    /// Records `addr` as held by `owner` (an attachment found in the kernel when the record
    /// was lost); false when it is not usable here or is held already.
    pub fn adopt(&mut self, addr: Ipv4Addr, owner: Owner) -> bool {
        if !self.usable(addr) || self.held.contains_key(&addr) {
            return false;
        }
        self.held.insert(addr, owner);
        true
    }
}

impl Owner {
    /// The holder recorded for an address rebuilt from the kernel, where only the host veth
    /// `veth` is known (its name is a hash of the attachment, so DEL still finds it).
    pub fn recovered(veth: &str) -> Self {
        Owner {
            container_id: format!("{RECOVERED}{veth}"),
            ifname: String::new(),
        }
    }

    /// The host veth of a holder made by [`Owner::recovered`].
    pub fn recovered_veth(&self) -> Option<&str> {
        self.container_id
            .strip_prefix(RECOVERED)
            .filter(|_| self.ifname.is_empty())
    }
}

/// How [`Owner::recovered`] marks its container ids (no runtime's id has a colon).
const RECOVERED: &str = "recovered:";

/// [`Allocations`] kept in a file.
#[derive(Debug)]
pub struct PodPool {
    path: PathBuf,
    allocations: Allocations,
    /// The file could not be read: the allocations must be rebuilt from what the kernel
    /// holds before any address is handed out.
    lost: bool,
}

impl PodPool {
    /// Opens the pool for `subnet` stored in `dir` (`pods.json`). Allocations recorded for a
    /// different subnet are dropped: the node's subnet changed and those pods are gone. A
    /// file that cannot be decoded (truncated, corrupt) is kept aside as `pods.json.corrupt`
    /// and the pool opens empty but [`PodPool::lost`]: its caller rebuilds it from the
    /// kernel, so no address still in use is handed out again.
    pub fn open(dir: &Path, subnet: Ipv4Net) -> Result<Self, PoolError> {
        let path = dir.join("pods.json");
        let io = |source| PoolError::Io {
            path: path.clone(),
            source,
        };
        let mut lost = false;
        let allocations = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Allocations>(&bytes) {
                Ok(a) if a.subnet == subnet => a,
                Ok(_) => Allocations::new(subnet),
                Err(e) => {
                    let aside = dir.join("pods.json.corrupt");
                    tracing::error!(path = %path.display(), error = %e, kept = %aside.display(), "the pod address pool is unreadable; rebuilding it from the kernel");
                    std::fs::rename(&path, &aside).map_err(io)?;
                    lost = true;
                    Allocations::new(subnet)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Allocations::new(subnet),
            Err(e) => return Err(io(e)),
        };
        Ok(Self {
            path,
            allocations,
            lost,
        })
    }

    /// Whether the file was unreadable and the allocations are still to be rebuilt.
    pub fn lost(&self) -> bool {
        self.lost
    }

    /// Adopts `found` (addresses the kernel shows in use, with their holders) and records
    /// the rebuilt pool; returns how many were adopted.
    pub fn rebuild(&mut self, found: Vec<(Ipv4Addr, Owner)>) -> Result<usize, PoolError> {
        let adopted = self.update(|a| {
            Ok(found
                .into_iter()
                .filter(|(addr, owner)| a.adopt(*addr, owner.clone()))
                .count())
        })?;
        self.persist()?;
        self.lost = false;
        Ok(adopted)
    }

    /// The current allocations.
    pub fn allocations(&self) -> &Allocations {
        &self.allocations
    }

    /// Applies `change` and persists the result; on a write failure the change is undone.
    pub fn update<T>(
        &mut self,
        change: impl FnOnce(&mut Allocations) -> Result<T, PoolError>,
    ) -> Result<T, PoolError> {
        let before = self.allocations.clone();
        let out = change(&mut self.allocations)?;
        if self.allocations != before {
            if let Err(e) = self.persist() {
                self.allocations = before;
                return Err(e);
            }
        }
        Ok(out)
    }

    fn persist(&self) -> Result<(), PoolError> {
        let io = |source| PoolError::Io {
            path: self.path.clone(),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let tmp = self.path.with_extension("json.tmp");
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        let bytes = serde_json::to_vec_pretty(&self.allocations).expect("serializable");
        file.write_all(&bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(id: &str) -> Owner {
        Owner {
            container_id: id.into(),
            ifname: "eth0".into(),
        }
    }

    fn subnet() -> Ipv4Net {
        "10.244.1.0/29".parse().unwrap()
    }

    #[test]
    fn an_unreadable_pool_is_kept_aside_and_rebuilt_from_what_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let mut pool = PodPool::open(dir.path(), subnet()).unwrap();
        let a = pool.update(|a| a.allocate(owner("a"), None)).unwrap();
        // A crash mid-write, a full disk: the file is cut short.
        let path = dir.path().join("pods.json");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, &text[..text.len() / 2]).unwrap();
        let mut pool = PodPool::open(dir.path(), subnet()).unwrap();
        assert!(pool.lost());
        assert!(
            dir.path().join("pods.json.corrupt").exists(),
            "kept for the operator"
        );
        let veth = "fab0123456789a";
        assert_eq!(pool.rebuild(vec![(a, Owner::recovered(veth))]).unwrap(), 1);
        assert!(!pool.lost());
        // The address still in use is not handed out again, and its holder is found by veth.
        for id in ["b", "c", "d", "e", "f"] {
            assert_ne!(pool.update(|x| x.allocate(owner(id), None)).unwrap(), a);
        }
        let held = pool.allocations().get(&Owner::recovered(veth));
        assert_eq!(held, Some(a));
        assert_eq!(Owner::recovered(veth).recovered_veth(), Some(veth));
        assert_eq!(owner("a").recovered_veth(), None);
        // Rebuilt means recorded: opening again finds it.
        let again = PodPool::open(dir.path(), subnet()).unwrap();
        assert!(!again.lost());
        assert_eq!(again.allocations().get(&Owner::recovered(veth)), Some(a));
    }

    #[test]
    fn hands_out_host_addresses_round_robin() {
        let mut a = Allocations::new(subnet());
        let got: Vec<_> = (0..6)
            .map(|i| a.allocate(owner(&i.to_string()), None).unwrap())
            .collect();
        assert_eq!(got.first().unwrap(), &Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(got.last().unwrap(), &Ipv4Addr::new(10, 244, 1, 6));
        assert!(matches!(
            a.allocate(owner("x"), None),
            Err(PoolError::Exhausted(_))
        ));
        assert_eq!(a.release(&owner("2")), Some(Ipv4Addr::new(10, 244, 1, 3)));
        assert_eq!(
            a.allocate(owner("y"), None).unwrap(),
            Ipv4Addr::new(10, 244, 1, 3)
        );
    }

    #[test]
    fn freed_address_is_not_reused_at_once() {
        let mut a = Allocations::new(subnet());
        let first = a.allocate(owner("a"), None).unwrap();
        a.release(&owner("a"));
        assert_ne!(a.allocate(owner("b"), None).unwrap(), first);
    }

    #[test]
    fn requested_addresses_are_checked() {
        let mut a = Allocations::new(subnet());
        let want = Ipv4Addr::new(10, 244, 1, 5);
        assert_eq!(a.allocate(owner("a"), Some(want)).unwrap(), want);
        assert!(matches!(
            a.allocate(owner("b"), Some(want)),
            Err(PoolError::InUse { .. })
        ));
        for bad in [[10, 244, 1, 0], [10, 244, 1, 7], [10, 9, 9, 9]] {
            assert!(matches!(
                a.allocate(owner("b"), Some(Ipv4Addr::from(bad))),
                Err(PoolError::OutOfRange { .. })
            ));
        }
        assert!(matches!(
            a.allocate(owner("a"), None),
            Err(PoolError::AlreadyAllocated { .. })
        ));
    }

    #[test]
    fn an_undone_allocation_leaves_no_trace() {
        let mut a = Allocations::new(subnet());
        a.allocate(owner("a"), None).unwrap();
        let before = a.clone();
        let addr = a.allocate(owner("b"), None).unwrap();
        assert_eq!(a.undo(&owner("b"), before.last()), Some(addr));
        assert_eq!(a, before);
        assert_eq!(a.undo(&owner("b"), None), None);
        // After an allocation since, the round-robin position stays where that one left it.
        let b = a.allocate(owner("b"), None).unwrap();
        let c = a.allocate(owner("c"), None).unwrap();
        a.undo(&owner("b"), before.last());
        assert_eq!(a.last(), Some(c));
        assert_eq!(a.get(&owner("b")), None);
        assert_ne!(b, c);
    }

    #[test]
    fn pool_survives_reopen_and_drops_other_subnets() {
        let dir = tempfile::tempdir().unwrap();
        let mut pool = PodPool::open(dir.path(), subnet()).unwrap();
        let addr = pool.update(|a| a.allocate(owner("a"), None)).unwrap();
        let again = PodPool::open(dir.path(), subnet()).unwrap();
        assert_eq!(again.allocations().get(&owner("a")), Some(addr));
        let other = PodPool::open(dir.path(), "10.244.2.0/29".parse().unwrap()).unwrap();
        assert_eq!(other.allocations().iter().count(), 0);
    }

    #[test]
    fn failed_change_leaves_pool_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let mut pool = PodPool::open(dir.path(), subnet()).unwrap();
        pool.update(|a| a.allocate(owner("a"), None)).unwrap();
        let before = pool.allocations().clone();
        assert!(pool.update(|a| a.allocate(owner("a"), None)).is_err());
        assert_eq!(pool.allocations(), &before);
    }
}
