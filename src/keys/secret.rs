//! Key secrets: format, generation, checksum and keyed hashing.
//!
//! A generated key is `akd_` + 43 base62 characters (256 random bits) + a 6-character
//! base62 CRC32 of everything before it, the way GitHub's tokens carry a CRC32: a typo
//! or a scanner's false positive is caught without touching the index. Only the
//! HMAC-SHA256 of a key under the server secret is ever stored.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;

/// The fixed prefix of every generated key.
pub const PREFIX: &str = "akd_";
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const BODY_LEN: usize = 43; // 43 * log2(62) = 256.0 bits
const CHECK_LEN: usize = 6; // 62^6 > 2^32
/// Length of a generated key.
pub const KEY_LEN: usize = PREFIX.len() + BODY_LEN + CHECK_LEN;
/// Longest secret we will hash at all (imported tokens included).
pub const MAX_SECRET_LEN: usize = 256;

/// A key secret in clear. `Debug` never shows it; use [`Secret::expose`] deliberately.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret string.
    pub fn new(s: String) -> Self {
        Self(s)
    }

    /// The clear text, for showing once to the user or hashing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// How a presented string looks, decided without any lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A well-formed generated key with a correct checksum.
    Generated,
    /// Not our format, but acceptable as a user-defined ("generic") token.
    Generic,
    /// Neither: reject as MALFORMED.
    Malformed,
}

fn checksum(text: &str) -> [u8; CHECK_LEN] {
    let mut n = crc32fast::hash(text.as_bytes());
    let mut out = [b'0'; CHECK_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// Generate a fresh key from the OS random source. Characters are drawn by rejection
/// sampling from one buffer of random bytes (bytes >= 248 are skipped so every one of
/// the 62 characters is equally likely), not one system call per character.
pub fn generate() -> Secret {
    let mut rng = rand::rngs::OsRng;
    let mut s = String::with_capacity(KEY_LEN);
    s.push_str(PREFIX);
    let mut buf = [0u8; 64];
    while s.len() < PREFIX.len() + BODY_LEN {
        rng.fill(&mut buf);
        for &b in &buf {
            if b < 248 && s.len() < PREFIX.len() + BODY_LEN {
                s.push(char::from(ALPHABET[usize::from(b % 62)]));
            }
        }
    }
    let check = checksum(&s);
    s.extend(check.iter().map(|&b| char::from(b)));
    Secret(s)
}

/// Classify a presented key. `min_generic` is the shortest accepted imported token.
pub fn shape(presented: &str, min_generic: usize) -> Shape {
    if let Some(rest) = presented.strip_prefix(PREFIX) {
        // `fold` without early exit: random characters make `all`'s branch mispredict
        // on nearly every byte, which cost ~10x more than the check itself.
        let alnum = rest
            .bytes()
            .fold(true, |ok, b| ok & b.is_ascii_alphanumeric());
        if presented.len() != KEY_LEN || !alnum {
            return Shape::Malformed;
        }
        let (body, check) = presented.split_at(PREFIX.len() + BODY_LEN);
        if checksum(body).as_slice() == check.as_bytes() {
            Shape::Generated
        } else {
            Shape::Malformed
        }
    } else if is_generic_token(presented, min_generic) {
        Shape::Generic
    } else {
        Shape::Malformed
    }
}

/// A user-defined token: printable ASCII without spaces, within the length limits.
pub fn is_generic_token(s: &str, min_len: usize) -> bool {
    (min_len..=MAX_SECRET_LEN).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Whether free text (a name, a description) contains something that looks like one
/// of our keys, so a pasted secret is never kept in clear.
pub fn looks_like_key(text: &str) -> bool {
    let mut rest = text;
    while let Some(pos) = rest.find(PREFIX) {
        let after = &rest[pos + PREFIX.len()..];
        let run = after
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric())
            .count();
        if run >= 20 {
            return true;
        }
        rest = after;
    }
    false
}

/// The server's HMAC key. `Debug` never shows it.
#[derive(Clone)]
pub struct ServerSecret(Vec<u8>);

impl fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerSecret(<redacted>)")
    }
}

impl ServerSecret {
    /// Use these bytes (at least 32) as the secret.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, SecretFileError> {
        if bytes.len() < 32 {
            return Err(SecretFileError::TooShort(bytes.len()));
        }
        Ok(Self(bytes))
    }
}

/// Problems with the server secret file.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// Reading or creating failed.
    #[error("server secret {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Too little key material.
    #[error("the server secret holds {0} bytes; at least 32 are required")]
    TooShort(usize),
}

/// Where the secret came from, for the start-up log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A systemd credential.
    Credential(PathBuf),
    /// An existing file.
    File(PathBuf),
    /// A file created just now.
    Created(PathBuf),
}

impl std::fmt::Display for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Credential(p) => write!(
                f,
                "the systemd credential server-secret (read from {})",
                p.display()
            ),
            SecretSource::File(p) | SecretSource::Created(p) => write!(f, "{}", p.display()),
        }
    }
}

/// What the server secret's fingerprint ([`KeyHasher::fingerprint`]) is the keyed
/// hash of.
const SECRET_FINGERPRINT: &str = "apikeyd server secret fingerprint";

/// Load the server secret: the systemd credential `server-secret` if present, else
/// `path`, creating it (mode 0600, 32 random bytes as hex) if absent.
pub fn load_or_create_server_secret(
    path: &Path,
    credentials_dir: Option<&Path>,
) -> Result<(ServerSecret, SecretSource), SecretFileError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SecretFileError::Io { path, source }
    };
    if let Some(dir) = credentials_dir {
        let cred = dir.join("server-secret");
        if cred.exists() {
            let bytes = std::fs::read(&cred).map_err(io(&cred))?;
            return Ok((
                ServerSecret::from_bytes(trim(bytes))?,
                SecretSource::Credential(cred),
            ));
        }
    }
    match std::fs::read(path) {
        Ok(bytes) => {
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(path = %path.display(), "server secret is readable by group or others; chmod 600 it");
                }
            }
            Ok((
                ServerSecret::from_bytes(trim(bytes))?,
                SecretSource::File(path.to_path_buf()),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            let mut raw = [0u8; 32];
            rand::rngs::OsRng.fill(&mut raw);
            let text = hex::encode(raw);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io(path))?;
            f.write_all(text.as_bytes()).map_err(io(path))?;
            f.sync_all().map_err(io(path))?;
            Ok((
                ServerSecret(text.into_bytes()),
                SecretSource::Created(path.to_path_buf()),
            ))
        }
        Err(e) => Err(io(path)(e)),
    }
}

fn trim(mut bytes: Vec<u8>) -> Vec<u8> {
    while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
        bytes.pop();
    }
    bytes
}

/// Computes the stored form of a key: HMAC-SHA256 under the server secret.
#[derive(Clone)]
pub struct KeyHasher {
    keyed: Hmac<Sha256>,
    /// Hashes computed by this hasher and its clones: what tests of the cost of
    /// a check count.
    #[cfg(test)]
    pub(crate) count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHasher(<redacted>)")
    }
}

pub use crate::model::row::KeyHash;

impl KeyHasher {
    /// A hasher keyed with the server secret.
    pub fn new(secret: &ServerSecret) -> Self {
        // HMAC accepts keys of any length, so this cannot fail.
        let keyed = match <Hmac<Sha256> as Mac>::new_from_slice(&secret.0) {
            Ok(m) => m,
            Err(_) => unreachable_hmac(),
        };
        Self {
            keyed,
            #[cfg(test)]
            count: Default::default(),
        }
    }

    /// What tells databases written under this secret from others (the
    /// PostgreSQL store records it; a backup carries it): a keyed hash of a fixed
    /// text, which reveals nothing of the secret.
    pub fn fingerprint(&self) -> KeyHash {
        self.hash(SECRET_FINGERPRINT)
    }

    /// HMAC-SHA256 of `presented`. Cloning the keyed state skips re-deriving the
    /// inner and outer pads on every verification.
    pub fn hash(&self, presented: &str) -> KeyHash {
        #[cfg(test)]
        self.count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut mac = self.keyed.clone();
        mac.update(presented.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

#[cold]
fn unreachable_hmac() -> ! {
    // `Hmac::new_from_slice` only errors for fixed-size-key MACs; HMAC takes any size.
    std::process::abort()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generated_keys_have_the_format() {
        let k = generate();
        assert_eq!(k.expose().len(), KEY_LEN);
        assert!(k.expose().starts_with(PREFIX));
        assert_eq!(shape(k.expose(), 32), Shape::Generated);
        assert_ne!(generate(), k);
        assert_eq!(format!("{k:?}"), "Secret(<redacted>)");
    }

    #[test]
    fn hashing_is_keyed() {
        let a = KeyHasher::new(&ServerSecret::from_bytes(vec![1; 32]).unwrap());
        let b = KeyHasher::new(&ServerSecret::from_bytes(vec![2; 32]).unwrap());
        assert_eq!(a.hash("x"), a.hash("x"));
        assert_ne!(a.hash("x"), b.hash("x"));
        assert!(ServerSecret::from_bytes(vec![1; 31]).is_err());
    }

    #[test]
    fn secret_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/server.secret");
        let (s1, src) = load_or_create_server_secret(&path, None).unwrap();
        assert!(matches!(src, SecretSource::Created(_)));
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (s2, src) = load_or_create_server_secret(&path, None).unwrap();
        assert!(matches!(src, SecretSource::File(_)));
        assert_eq!(KeyHasher::new(&s1).hash("k"), KeyHasher::new(&s2).hash("k"));
        // A systemd credential wins over the file.
        let creds = dir.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        std::fs::write(creds.join("server-secret"), [7u8; 40]).unwrap();
        let (s3, src) = load_or_create_server_secret(&path, Some(&creds)).unwrap();
        assert!(matches!(src, SecretSource::Credential(_)));
        assert_ne!(KeyHasher::new(&s3).hash("k"), KeyHasher::new(&s1).hash("k"));
    }

    #[test]
    fn looks_like_key_spots_pasted_secrets() {
        let k = generate();
        assert!(looks_like_key(&format!("my key is {}", k.expose())));
        assert!(looks_like_key(k.expose()));
        assert!(!looks_like_key("akd_ short"));
        assert!(!looks_like_key("sync job for catalog"));
    }

    proptest! {
        #[test]
        fn any_single_character_typo_is_caught(pos in 4usize..KEY_LEN, c in "[0-9A-Za-z]") {
            let k = generate();
            let mut bytes = k.expose().as_bytes().to_vec();
            let c = c.as_bytes()[0];
            prop_assume!(bytes[pos] != c);
            bytes[pos] = c;
            let typo = String::from_utf8(bytes).unwrap();
            prop_assert_eq!(shape(&typo, 32), Shape::Malformed);
        }

        #[test]
        fn shape_never_panics(s in "\\PC{0,80}") {
            let _ = shape(&s, 32);
            let _ = looks_like_key(&s);
        }

        #[test]
        fn truncated_or_extended_keys_are_malformed(cut in 0usize..KEY_LEN, extra in "[0-9A-Za-z]{1,5}") {
            let k = generate();
            let s = k.expose();
            prop_assert_eq!(shape(&s[..cut], 300), Shape::Malformed);
            let longer = format!("{s}{extra}");
            prop_assert_eq!(shape(&longer, 32), Shape::Malformed);
        }
    }
}
