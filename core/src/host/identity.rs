//! The daemon's identity on disk: its ed25519 key and DID in the data directory, and the private
//! network's key file.
//!
//! On first start the key and the DID are created; on every later start they are read back and
//! never replaced — a corrupt or unreadable file is an error, not a reason to mint a new identity
//! (the seed clobbered the stored DID, B10). The key file is written with mode 0600 and refused
//! if other users can read it. Files are written to a temporary name and renamed, so a crash
//! never leaves a half-written key.

use crate::proto::{Did, Keypair};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// File name of the secret key inside the data directory (64 hex characters).
pub const KEY_FILE: &str = "peer.key";
/// File name of the DID inside the data directory.
pub const DID_FILE: &str = "did";
/// A DID replaced by `keygen --new-did`, kept beside the new one.
pub const PREVIOUS_DID_FILE: &str = "did.previous";

/// Errors reading or creating identity files. Each says which file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum IdentityFileError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The key file does not hold 64 hex characters.
    #[error("{path}: not an ocd key file (expected 64 hex characters); refusing to replace it")]
    CorruptKey {
        /// The file.
        path: PathBuf,
    },
    /// The DID file does not hold a valid DID.
    #[error("{path}: not a valid DID; refusing to replace it")]
    CorruptDid {
        /// The file.
        path: PathBuf,
    },
    /// The key file can be read by other users.
    #[error("{path}: key file mode {mode:o} lets other users read it; run `chmod 600 {path}`")]
    InsecureKeyFile {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key exists but its DID file is gone: creating a new DID silently would get the node
    /// refused by every indexer that bound the old DID to this key.
    #[error(
        "{path}: missing next to the existing key {key}; restore it (indexers remember the DID bound to this key), \
         or adopt a new DID explicitly with `keygen --new-did`"
    )]
    MissingDid {
        /// The DID file that should be there.
        path: PathBuf,
        /// The key file that is.
        key: PathBuf,
    },
    /// The data directory exists and is not a directory.
    #[error("{path}: the data directory is a file, not a directory")]
    DataDirNotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// The network key file can be read by other users.
    #[error(
        "{path}: network key file mode {mode:o} lets other users read the private network's key; run `chmod 600 {path}`"
    )]
    InsecureNetworkKey {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The network key file is not a 32-byte key in a known format.
    #[error("{path}: not a network key (64 hex characters, or a libp2p PSK file with /base16/)")]
    BadNetworkKey {
        /// The file.
        path: PathBuf,
    },
    /// The operating system's random source failed.
    #[error("no randomness from the operating system: {0}")]
    Random(String),
}

/// The daemon's identity.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Its key; the public half is its peer id.
    pub keypair: Keypair,
    /// Its DID.
    pub did: Did,
    /// Whether this start created the key (first start).
    pub created_key: bool,
    /// Whether this start created the DID.
    pub created_did: bool,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityFileError + '_ {
    move |source| IdentityFileError::Io { path: path.to_path_buf(), source }
}

fn random<const N: usize>() -> Result<[u8; N], IdentityFileError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| IdentityFileError::Random(e.to_string()))?;
    Ok(b)
}

/// Writes `contents` to `path` atomically (temporary file, sync, rename), with `mode` on Unix.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), IdentityFileError> {
    let tmp = path.with_extension("tmp");
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(&tmp).map_err(io(&tmp))?;
    f.write_all(contents).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

fn read_text(path: &Path) -> Result<Option<String>, IdentityFileError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(IdentityFileError::Io { path: path.to_path_buf(), source: e }),
    }
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let bytes = data_encoding::HEXLOWER_PERMISSIVE.decode(s.trim().as_bytes()).ok()?;
    bytes.try_into().ok()
}

/// A random `u64` from the operating system (seeds the core's deterministic RNG at start).
pub fn os_random_u64() -> Result<u64, IdentityFileError> {
    Ok(u64::from_le_bytes(random()?))
}

/// Loads the identity from `data_dir`, creating the directory, the key and the DID on first start.
pub fn load_or_create(data_dir: &Path) -> Result<Identity, IdentityFileError> {
    if data_dir.exists() && !data_dir.is_dir() {
        return Err(IdentityFileError::DataDirNotADirectory { path: data_dir.to_path_buf() });
    }
    fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    let key_path = data_dir.join(KEY_FILE);
    let (keypair, created_key) = match read_text(&key_path)? {
        Some(text) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = fs::metadata(&key_path).map_err(io(&key_path))?.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(IdentityFileError::InsecureKeyFile { path: key_path, mode });
                }
            }
            let secret = parse_hex32(&text).ok_or_else(|| IdentityFileError::CorruptKey { path: key_path.clone() })?;
            (Keypair::from_secret_bytes(secret), false)
        }
        None => {
            let secret: [u8; 32] = random()?;
            let text = format!("{}\n", data_encoding::HEXLOWER.encode(&secret));
            write_atomically(&key_path, text.as_bytes(), 0o600)?;
            (Keypair::from_secret_bytes(secret), true)
        }
    };
    let did_path = data_dir.join(DID_FILE);
    let (did, created_did) = match read_text(&did_path)? {
        Some(text) => (Did::new(text.trim()).map_err(|_| IdentityFileError::CorruptDid { path: did_path })?, false),
        None if !created_key => return Err(IdentityFileError::MissingDid { path: did_path, key: key_path }),
        None => {
            let did = Did::from_random(random()?);
            write_atomically(&did_path, format!("{did}\n").as_bytes(), 0o644)?;
            (did, true)
        }
    };
    Ok(Identity { keypair, did, created_key, created_did })
}

/// Reads a key file (64 hex characters), without creating anything.
pub fn load_key(path: &Path) -> Result<Keypair, IdentityFileError> {
    let text = read_text(path)?.ok_or_else(|| IdentityFileError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such key file"),
    })?;
    let secret = parse_hex32(&text).ok_or_else(|| IdentityFileError::CorruptKey { path: path.to_path_buf() })?;
    Ok(Keypair::from_secret_bytes(secret))
}

/// Adopts a new DID for the existing key in `data_dir` (`keygen --new-did`): the operator's explicit
/// choice after losing the DID file, or to change it. A DID file already there is kept as
/// `did.previous`. Indexers that bound the old DID to this key refuse the new one until that
/// binding expires.
pub fn adopt_new_did(data_dir: &Path) -> Result<Did, IdentityFileError> {
    let key_path = data_dir.join(KEY_FILE);
    if read_text(&key_path)?.is_none() {
        return Err(IdentityFileError::Io {
            path: key_path,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no key to adopt a DID for; run `keygen` first"),
        });
    }
    let did_path = data_dir.join(DID_FILE);
    if let Some(old) = read_text(&did_path)? {
        write_atomically(&data_dir.join(PREVIOUS_DID_FILE), old.as_bytes(), 0o644)?;
    }
    let did = Did::from_random(random()?);
    write_atomically(&did_path, format!("{did}\n").as_bytes(), 0o644)?;
    Ok(did)
}

/// Reads the private network's key (the seed's `PSK_PATH`): either 64 hex characters, or a
/// libp2p PSK file (`/key/swarm/psk/1.0.0/`, `/base16/`, then 64 hex characters), so existing
/// oc-discovery key files keep working.
pub fn load_network_key(path: &Path) -> Result<[u8; 32], IdentityFileError> {
    let text = read_text(path)?.ok_or_else(|| IdentityFileError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "network key file not found"),
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path).map_err(io(path))?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(IdentityFileError::InsecureNetworkKey { path: path.to_path_buf(), mode });
        }
    }
    let bad = || IdentityFileError::BadNetworkKey { path: path.to_path_buf() };
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    match lines.as_slice() {
        [hex] => parse_hex32(hex).ok_or_else(bad),
        ["/key/swarm/psk/1.0.0/", "/base16/", hex] => parse_hex32(hex).ok_or_else(bad),
        _ => Err(bad()),
    }
}

/// Creates a new random network key file at `path` (mode 0600), refusing to overwrite one.
pub fn create_network_key(path: &Path) -> Result<[u8; 32], IdentityFileError> {
    if path.exists() {
        return Err(IdentityFileError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "refusing to overwrite a network key"),
        });
    }
    let key: [u8; 32] = random()?;
    write_atomically(path, format!("{}\n", data_encoding::HEXLOWER.encode(&key)).as_bytes(), 0o600)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_creates_key_and_did_and_restart_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        assert!(first.created_key && first.created_did);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let again = load_or_create(dir.path()).unwrap();
        assert!(!again.created_key && !again.created_did);
        assert_eq!(again.keypair.peer_id(), first.keypair.peer_id());
        assert_eq!(again.did, first.did);
    }

    #[test]
    fn corrupt_files_are_errors_and_are_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        let key = dir.path().join(KEY_FILE);
        write_atomically(&key, b"not a key", 0o600).unwrap();
        assert!(matches!(load_or_create(dir.path()), Err(IdentityFileError::CorruptKey { .. })));
        assert_eq!(fs::read(&key).unwrap(), b"not a key", "the corrupt key file is left alone");

        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        let did = dir.path().join(DID_FILE);
        fs::write(&did, "\n\n").unwrap();
        assert!(matches!(load_or_create(dir.path()), Err(IdentityFileError::CorruptDid { .. })));
        assert_eq!(fs::read(&did).unwrap(), b"\n\n", "the stored DID is never clobbered (B10)");
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        let key = dir.path().join(KEY_FILE);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(load_or_create(dir.path()), Err(IdentityFileError::InsecureKeyFile { mode: 0o644, .. })));
    }

    #[test]
    fn a_lost_did_file_is_an_error_until_a_new_did_is_adopted_explicitly() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        fs::remove_file(dir.path().join(DID_FILE)).unwrap();
        let e = load_or_create(dir.path()).unwrap_err();
        assert!(matches!(e, IdentityFileError::MissingDid { .. }), "{e}");
        assert!(e.to_string().contains("keygen --new-did"), "{e}");
        assert!(!dir.path().join(DID_FILE).exists(), "nothing was created silently");

        let adopted = adopt_new_did(dir.path()).unwrap();
        assert_ne!(adopted, first.did);
        let again = load_or_create(dir.path()).unwrap();
        assert_eq!((again.did, again.keypair.peer_id()), (adopted.clone(), first.keypair.peer_id()));
        // Adopting once more keeps the replaced DID beside it.
        let newer = adopt_new_did(dir.path()).unwrap();
        assert_ne!(newer, adopted);
        assert_eq!(fs::read_to_string(dir.path().join(PREVIOUS_DID_FILE)).unwrap().trim(), adopted.as_str());
        assert!(adopt_new_did(tempfile::tempdir().unwrap().path()).is_err(), "no key, no DID");
    }

    #[test]
    fn a_data_directory_that_is_a_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data");
        fs::write(&file, "not a directory").unwrap();
        let e = load_or_create(&file).unwrap_err();
        assert!(matches!(e, IdentityFileError::DataDirNotADirectory { .. }), "{e}");
        assert!(e.to_string().contains("is a file"), "{e}");
    }

    #[test]
    fn network_key_reads_hex_and_libp2p_psk_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let created = create_network_key(&dir.path().join("net.key")).unwrap();
        assert_eq!(load_network_key(&dir.path().join("net.key")).unwrap(), created);
        assert!(create_network_key(&dir.path().join("net.key")).is_err(), "never overwritten");

        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let psk = dir.path().join("psk.key");
        fs::write(&psk, format!("/key/swarm/psk/1.0.0/\n/base16/\n{hex}\n")).unwrap();
        // Readable by others: refused, with the fix in the message.
        fs::set_permissions(&psk, fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_network_key(&psk).unwrap_err();
        assert!(matches!(e, IdentityFileError::InsecureNetworkKey { mode: 0o644, .. }), "{e}");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        fs::set_permissions(&psk, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(load_network_key(&psk).unwrap()[..4], [0x00, 0x11, 0x22, 0x33]);

        for bad in ["", "abcd", "/key/swarm/psk/1.0.0/\n/base64/\nAAAA"] {
            fs::write(&psk, bad).unwrap();
            assert!(matches!(load_network_key(&psk), Err(IdentityFileError::BadNetworkKey { .. })), "{bad:?}");
        }
        assert!(matches!(load_network_key(&dir.path().join("missing")), Err(IdentityFileError::Io { .. })));
    }
}
