//! What makes this endpoint one onboarding plane across restarts: its UID (the audience of
//! every credential) and the key that signs session tokens. Both are created once in the
//! state directory when the configuration does not name them, and read back afterwards, so
//! a restart neither changes the audience agents present nor invalidates live sessions.

use std::path::{Path, PathBuf};

use crate::token::{self, TokenError};

/// File names in the state directory.
pub const PLANE_UID_FILE: &str = "plane-uid";
pub const SIGNING_KEY_FILE: &str = "session-signing-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum PlaneError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] crate::atomic::WriteError),
    #[error(
        "{} is empty: delete it to have a new plane UID made (agents must then be given the new audience), or set planeUid in the configuration",
        path.display()
    )]
    EmptyUid { path: PathBuf },
    #[error("cannot generate a session signing key: {0}")]
    Generate(#[from] TokenError),
}

/// A session signing key in PEM. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKeyPem(String);

impl SigningKeyPem {
    pub fn pem(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SigningKeyPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKeyPem(<redacted>)")
    }
}

/// The plane UID: `configured` (`planeUid`) when set, else the one in `state_dir`, made
/// (a random UUID, mode 0644: it is no secret) the first time.
pub fn plane_uid(configured: Option<&str>, state_dir: &Path) -> Result<String, PlaneError> {
    if let Some(uid) = configured {
        return Ok(uid.to_string());
    }
    let path = state_dir.join(PLANE_UID_FILE);
    let uid = read_or_create(&path, 0o644, || Ok(uuid::Uuid::new_v4().to_string()))?
        .trim()
        .to_string();
    if uid.is_empty() {
        // An empty audience would match no credential; better said at start than at the
        // first refused host.
        return Err(PlaneError::EmptyUid { path });
    }
    Ok(uid)
}

/// Where the session signing key lives: `tokenIssuer.signingKeyFile`, or the state directory.
pub fn signing_key_path(configured: Option<&Path>, state_dir: &Path) -> PathBuf {
    configured
        .map(Path::to_path_buf)
        .unwrap_or_else(|| state_dir.join(SIGNING_KEY_FILE))
}

/// The session signing key at `path`, generated (a P-256 key, mode 0600) when missing.
pub fn signing_key(path: &Path) -> Result<SigningKeyPem, PlaneError> {
    read_or_create(path, 0o600, || Ok(token::generate_signing_key_pem()?)).map(SigningKeyPem)
}

/// Reads a small state file, or creates it with `make()` (mode `mode`) when missing. Any
/// other read failure is an error: a file that exists but cannot be read is never replaced.
fn read_or_create(
    path: &Path,
    mode: u32,
    make: impl FnOnce() -> Result<String, PlaneError>,
) -> Result<String, PlaneError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let value = make()?;
            crate::atomic::write_file(path, value.as_bytes(), mode)?;
            Ok(value)
        }
        Err(source) => Err(PlaneError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn the_plane_uid_is_made_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let first = plane_uid(None, dir.path()).unwrap();
        assert!(uuid::Uuid::parse_str(&first).is_ok(), "{first}");
        assert_eq!(mode(&dir.path().join(PLANE_UID_FILE)), 0o644);
        assert_eq!(plane_uid(None, dir.path()).unwrap(), first);
        // A hand-edited file with a trailing newline.
        std::fs::write(dir.path().join(PLANE_UID_FILE), "my-plane\n").unwrap();
        assert_eq!(plane_uid(None, dir.path()).unwrap(), "my-plane");
    }

    #[test]
    fn a_configured_plane_uid_wins_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(plane_uid(Some("p-1"), dir.path()).unwrap(), "p-1");
        assert!(!dir.path().join(PLANE_UID_FILE).exists());
    }

    #[test]
    fn an_empty_plane_uid_file_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(PLANE_UID_FILE), " \n").unwrap();
        let e = plane_uid(None, dir.path()).unwrap_err();
        assert!(matches!(e, PlaneError::EmptyUid { .. }), "{e}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join(PLANE_UID_FILE)).unwrap(),
            " \n"
        );
    }

    #[test]
    fn the_signing_key_is_made_private_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = signing_key_path(None, dir.path());
        assert_eq!(path, dir.path().join(SIGNING_KEY_FILE));
        let key = signing_key(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert!(key.pem().contains("PRIVATE KEY"));
        assert_eq!(signing_key(&path).unwrap(), key);
        // It signs session tokens.
        assert!(
            token::SessionTokens::from_pem(key.pem(), "plane", std::time::Duration::from_secs(60))
                .is_ok()
        );
    }

    #[test]
    fn a_configured_signing_key_path_wins() {
        let dir = tempfile::tempdir().unwrap();
        let own = dir.path().join("keys/k.pem");
        assert_eq!(signing_key_path(Some(&own), dir.path()), own);
    }

    #[test]
    fn an_unreadable_state_file_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the key should be: reading fails with something else than
        // "not found", and nothing is generated over it.
        let path = dir.path().join(SIGNING_KEY_FILE);
        std::fs::create_dir(&path).unwrap();
        let e = signing_key(&path).unwrap_err();
        assert!(matches!(e, PlaneError::Read { .. }), "{e}");
        assert!(path.is_dir());
    }

    #[test]
    fn the_signing_key_never_shows_in_debug() {
        let dir = tempfile::tempdir().unwrap();
        let key = signing_key(&dir.path().join("k.pem")).unwrap();
        let shown = format!("{key:?}");
        assert_eq!(shown, "SigningKeyPem(<redacted>)");
        assert!(!shown.contains("PRIVATE"));
    }
}
