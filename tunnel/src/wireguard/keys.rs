//! The node's Curve25519 key pair: generated on first start, kept 0600 in the state dir,
//! reused across restarts. The private key is never formatted by `Debug` or `Display`.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use boringtun::x25519::{PublicKey, StaticSecret};

/// A WireGuard public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub [u8; 32]);

impl Key {
    /// Parses the base64 form.
    pub fn from_base64(text: &str) -> Option<Self> {
        ipam::config::decode_key(text).map(Self)
    }

    /// The base64 form (as `wg` prints it).
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// The hex form (as the cross-platform UAPI writes it).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({self})")
    }
}

/// The node's key pair.
#[derive(Clone)]
pub struct KeyPair {
    private: StaticSecret,
    /// The public key, published in the lease.
    pub public: Key,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("private", &"(hidden)")
            .field("public", &self.public)
            .finish()
    }
}

impl KeyPair {
    /// Loads the key from `path`, or generates one and stores it there (mode 0600).
    pub fn load_or_generate(path: &Path) -> std::io::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes = ipam::config::decode_key(&text).ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "{} does not hold a base64 WireGuard private key",
                            path.display()
                        ),
                    )
                })?;
                Ok(Self::from_private(bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let bytes: [u8; 32] = rand::random();
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)?;
                writeln!(file, "{}", STANDARD.encode(bytes))?;
                file.sync_all()?;
                Ok(Self::from_private(bytes))
            }
            Err(e) => Err(e),
        }
    }

    /// A key pair from raw private key bytes (tests and fuzzing).
    pub fn from_private(bytes: [u8; 32]) -> Self {
        let private = StaticSecret::from(bytes);
        let public = Key(PublicKey::from(&private).to_bytes());
        Self { private, public }
    }

    /// The private key, for the protocol core.
    pub fn secret(&self) -> &StaticSecret {
        &self.private
    }

    /// The private key in hex, for the UAPI `get` answer (root-only socket).
    pub(crate) fn private_hex(&self) -> String {
        Key(self.private.to_bytes()).to_hex()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_is_generated_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wg.key");
        let a = KeyPair::load_or_generate(&path).unwrap();
        let b = KeyPair::load_or_generate(&path).unwrap();
        assert_eq!(a.public, b.public);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let shown = format!("{a:?}");
        assert!(!shown.contains(&STANDARD.encode(a.private.to_bytes())));
        assert!(shown.contains("(hidden)"));
    }

    #[test]
    fn keys_round_trip_base64() {
        let k = Key([7; 32]);
        assert_eq!(Key::from_base64(&k.to_base64()), Some(k));
        assert_eq!(Key::from_base64("short"), None);
        assert_eq!(k.to_hex().len(), 64);
    }
}
