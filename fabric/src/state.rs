//! What the daemon keeps in its state dir between runs: the subnet it last held (the pod
//! address pool and the VTEP MAC live beside it, owned by `ipam` and `tunnel`).

use std::io;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

/// The daemon's state dir.
#[derive(Debug, Clone)]
pub struct StateDir(PathBuf);

impl StateDir {
    /// Opens (creating, mode 0700) the state dir at `path`.
    pub fn open(path: &Path) -> io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)?;
        Ok(Self(path.to_owned()))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    fn subnet_file(&self) -> PathBuf {
        self.0.join("subnet")
    }

    /// The subnet held on the last run, if recorded and readable.
    pub fn previous_subnet(&self) -> Option<Ipv4Net> {
        std::fs::read_to_string(self.subnet_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Records the subnet now held.
    pub fn record_subnet(&self, subnet: Ipv4Net) -> io::Result<()> {
        let tmp = self.0.join("subnet.tmp");
        std::fs::write(&tmp, format!("{subnet}\n"))?;
        std::fs::rename(tmp, self.subnet_file())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("s")).unwrap();
        assert_eq!(state.previous_subnet(), None);
        let net: Ipv4Net = "10.244.3.0/24".parse().unwrap();
        state.record_subnet(net).unwrap();
        let again = StateDir::open(&dir.path().join("s")).unwrap();
        assert_eq!(again.previous_subnet(), Some(net));
    }
}
