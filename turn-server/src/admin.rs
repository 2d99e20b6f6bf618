//! `turn-server user add|del|list` and `turn-server credential`: the operator's tools for the
//! users file and the TURN REST API, in the style of coturn's `turnadmin`.
//!
//! Inputs: the [`AuthSettings`] of a config file, a username, a password (or an RNG to make
//! one), and for REST credentials the wall-clock time (the caller reads the clock).
//! Outputs: a users file rewritten atomically, or a (username, password) pair.
//!
//! The users file stores keys, MD5(user:realm:password) (RFC 8489 §9.2.2), never the password;
//! every other line of the file (comments, order, other entries) is kept as it was
//! ([`turn_core::credentials::UsersFileText`]). The rewrite goes through a temporary file in the
//! same directory and a rename, keeps the file's owner, group and mode (the service reads it as
//! its group) but never its bits for others, and holds an exclusive `flock` on the file so two
//! concurrent edits cannot lose one another's change. A new file is created owner-only (0600).

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use rand::Rng;
use turn_core::credentials::{EntryKind, UsersFileText, MAX_USERNAME_BYTES};
use turn_core::stun::long_term_key;
use turn_core::{RestSecret, RustCrypto, TurnError};

use crate::config::{AuthSettings, ConfigError};

/// Length of a generated password: 24 characters of [A-Za-z0-9] carry about 143 bits.
pub const GENERATED_PASSWORD_LEN: usize = 24;

/// Attempts to lock the users file when another edit keeps replacing it under us.
const LOCK_ATTEMPTS: usize = 20;

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The config file could not be read or its realm/auth settings are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The config has no `auth.users_file`.
    #[error("{config} sets no auth.users_file: add `users_file = \"/etc/xdpfork/turn-users\"` to its [auth] section")]
    NoUsersFile {
        /// The config file.
        config: PathBuf,
    },
    /// The config has no REST shared secret, so the server would refuse any REST credential.
    #[error("{config} sets no auth.rest_secret_file (or rest_secret): turn-server accepts no REST credentials with it")]
    NoRestSecret {
        /// The config file.
        config: PathBuf,
    },
    /// The users file's content or the requested edit is invalid.
    #[error("{path}: {source}")]
    Users {
        /// The users file.
        path: PathBuf,
        /// What the users file code said.
        source: TurnError,
    },
    /// A username or password given on the command line is unusable.
    #[error("{0}")]
    BadInput(&'static str),
    /// Reading, locking or writing a file failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The users file kept being replaced while we waited for its lock.
    #[error("{path} kept changing while waiting for its lock; try again")]
    Busy {
        /// The users file.
        path: PathBuf,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AdminError {
    let path = path.to_owned();
    move |source| AdminError::Io { what, path, source }
}

/// The users file named by the config at `config`, or why there is none.
fn users_file<'a>(config: &Path, settings: &'a AuthSettings) -> Result<&'a Path, AdminError> {
    settings
        .users_file
        .as_deref()
        .ok_or_else(|| AdminError::NoUsersFile {
            config: config.to_owned(),
        })
}

/// What `user add` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// A new entry.
    New,
    /// The user existed; its key was replaced.
    Replaced,
}

/// Stores `user` with the key for `password` in the config's users file.
pub fn user_add(
    config: &Path,
    settings: &AuthSettings,
    user: &str,
    password: &str,
) -> Result<Added, AdminError> {
    if password.is_empty() {
        return Err(AdminError::BadInput("the password is empty"));
    }
    let path = users_file(config, settings)?;
    let key = long_term_key(&RustCrypto, user, &settings.realm, password);
    let mut added = Added::New;
    edit(path, true, |f| {
        if f.set_key(user, &settings.realm, key)? {
            added = Added::Replaced;
        }
        Ok(())
    })?;
    Ok(added)
}

/// Removes `user` from the config's users file.
pub fn user_del(config: &Path, settings: &AuthSettings, user: &str) -> Result<(), AdminError> {
    let path = users_file(config, settings)?;
    edit(path, false, |f| f.remove(user))
}

/// The users of the config's users file, sorted, with what each entry stores.
pub fn user_list(
    config: &Path,
    settings: &AuthSettings,
) -> Result<Vec<(String, EntryKind)>, AdminError> {
    let path = users_file(config, settings)?;
    let text = std::fs::read_to_string(path).map_err(io_err("reading", path))?;
    let file = UsersFileText::parse(&text).map_err(|source| AdminError::Users {
        path: path.to_owned(),
        source,
    })?;
    Ok(file
        .users()
        .entries()
        .into_iter()
        .map(|(name, kind)| (name.to_owned(), kind))
        .collect())
}

/// A password of [`GENERATED_PASSWORD_LEN`] alphanumeric characters from `rng`.
pub fn generate_password(rng: &mut impl Rng) -> String {
    (0..GENERATED_PASSWORD_LEN)
        .map(|_| char::from(rng.sample(rand::distributions::Alphanumeric)))
        .collect()
}

/// A password read from `input` (`--password-stdin`): everything up to the first line end.
pub fn read_password(mut input: impl Read) -> Result<String, AdminError> {
    let mut text = String::new();
    input
        .read_to_string(&mut text)
        .map_err(|_| AdminError::BadInput("the password on stdin is not UTF-8"))?;
    let line = text.lines().next().unwrap_or_default();
    if line.is_empty() {
        return Err(AdminError::BadInput(
            "no password on stdin (one line expected)",
        ));
    }
    Ok(line.to_owned())
}

/// A TURN REST API credential (draft-uberti-behave-turn-rest-00 §2.2, coturn's
/// `use-auth-secret`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RestCredential {
    /// `<expiry unix seconds>:<user>`.
    pub username: String,
    /// base64(HMAC-SHA1(secret, username)).
    pub password: String,
    /// Seconds the credential stays valid.
    pub ttl: u64,
}

/// Issues a REST credential for `user`, valid for `ttl_secs` from `now_unix`.
pub fn credential(
    config: &Path,
    settings: &AuthSettings,
    user: &str,
    ttl_secs: u64,
    now_unix: u64,
) -> Result<RestCredential, AdminError> {
    let secret: &RestSecret =
        settings
            .rest_secret
            .as_ref()
            .ok_or_else(|| AdminError::NoRestSecret {
                config: config.to_owned(),
            })?;
    if user.is_empty() || user.chars().any(char::is_control) {
        return Err(AdminError::BadInput(
            "the user must be non-empty, without control characters",
        ));
    }
    if ttl_secs == 0 {
        return Err(AdminError::BadInput("--ttl must be at least 1 second"));
    }
    let expiry = now_unix
        .checked_add(ttl_secs)
        .ok_or(AdminError::BadInput("--ttl is too large"))?;
    let (username, password) = secret.issue(user, expiry, &RustCrypto);
    if username.len() > MAX_USERNAME_BYTES {
        return Err(AdminError::BadInput(
            "the REST username would be longer than 512 bytes (RFC 8489 §14.3)",
        ));
    }
    Ok(RestCredential {
        username,
        password: password.expose().to_owned(),
        ttl: ttl_secs,
    })
}

/// Applies `change` to the users file at `path` under its lock and rewrites it; `create`: a
/// missing file starts empty (owner-only), else a missing file is an error.
fn edit(
    path: &Path,
    create: bool,
    change: impl FnOnce(&mut UsersFileText) -> Result<(), TurnError>,
) -> Result<(), AdminError> {
    let (mut locked, meta) = lock(path, create)?;
    let mut text = String::new();
    locked
        .read_to_string(&mut text)
        .map_err(io_err("reading", path))?;
    let users_err = |source| AdminError::Users {
        path: path.to_owned(),
        source,
    };
    let mut file = UsersFileText::parse(&text).map_err(users_err)?;
    change(&mut file).map_err(users_err)?;
    replace(path, file.text().as_bytes(), &meta)
    // The lock is released when `locked` drops, after the rename.
}

/// Opens and exclusively locks the file currently at `path`: if another edit renamed a new
/// file into place while we waited, the lock we got is on the old one, so try again.
fn lock(path: &Path, create: bool) -> Result<(Flock<File>, std::fs::Metadata), AdminError> {
    for _ in 0..LOCK_ATTEMPTS {
        let file = match OpenOptions::new().read(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound && create => {
                match OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                {
                    // Created (or lost the race to another creator): open it for reading.
                    Ok(_) => continue,
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(io_err("creating", path)(e)),
                }
            }
            Err(e) => return Err(io_err("opening", path)(e)),
        };
        let locked = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| io_err("locking", path)(errno.into()))?;
        let held = locked.metadata().map_err(io_err("reading", path))?;
        match std::fs::metadata(path) {
            Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => {
                return Ok((locked, held))
            }
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("reading", path)(e)),
        }
    }
    Err(AdminError::Busy {
        path: path.to_owned(),
    })
}

/// Writes `body` to a temporary file beside `path` with `old`'s owner, group and mode (less
/// any bits for others), syncs it, and renames it over `path`.
fn replace(path: &Path, body: &[u8], old: &std::fs::Metadata) -> Result<(), AdminError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".turn-users.")
        .tempfile_in(dir)
        .map_err(io_err("creating a temporary file in", dir))?;
    let tmp_path = tmp.path().to_owned();
    let f = tmp.as_file_mut();
    // Group and owner first: chown may clear mode bits, and a non-root caller that owns the
    // file keeps its own uid anyway.
    if let Err(e) = std::os::unix::fs::fchown(&*f, Some(old.uid()), Some(old.gid())) {
        if e.kind() != ErrorKind::PermissionDenied {
            return Err(io_err("setting the owner of", &tmp_path)(e));
        }
    }
    f.set_permissions(std::fs::Permissions::from_mode(old.mode() & 0o770))
        .map_err(io_err("setting the mode of", &tmp_path))?;
    f.write_all(body).map_err(io_err("writing", &tmp_path))?;
    f.sync_all().map_err(io_err("syncing", &tmp_path))?;
    tmp.persist(path)
        .map_err(|e| io_err("renaming a temporary file to", path)(e.error))?;
    // The rename is durable once the directory is synced.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use turn_core::{Credentials, UserDb};

    struct Dir(PathBuf);
    impl Dir {
        fn new(name: &str) -> Dir {
            let d = std::env::temp_dir().join(format!("turn-admin-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).expect("mkdir");
            Dir(d)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn settings(users: Option<PathBuf>, secret: Option<&str>) -> AuthSettings {
        AuthSettings {
            realm: "example.org".into(),
            users_file: users,
            rest_secret: secret.map(|s| RestSecret::new(s.as_bytes().to_vec())),
        }
    }

    fn key_of(path: &Path, user: &str) -> Option<[u8; 16]> {
        let db = UserDb::parse(&std::fs::read_to_string(path).ok()?).ok()?;
        Credentials::new("example.org")
            .with_users(db)
            .ok()?
            .lookup(user, "example.org", std::time::UNIX_EPOCH, &RustCrypto)
            .ok()
            .map(|u| u.key)
    }

    #[test]
    fn add_list_del_keep_mode_and_comments() {
        let d = Dir::new("edit");
        let users = d.0.join("turn-users");
        std::fs::write(&users, "# mine\nold:pw\n").expect("write");
        std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let s = settings(Some(users.clone()), None);
        let cfg = Path::new("turn-server.toml");

        assert_eq!(
            user_add(cfg, &s, "alice", "s3cret").expect("add"),
            Added::New
        );
        assert_eq!(
            key_of(&users, "alice"),
            Some(long_term_key(&RustCrypto, "alice", "example.org", "s3cret"))
        );
        let text = std::fs::read_to_string(&users).expect("read");
        assert!(text.starts_with("# mine\nold:pw\n"), "{text}");
        assert!(
            !text.contains("s3cret"),
            "the password must not be stored: {text}"
        );
        // Others lose read access; owner and group keep theirs.
        let mode = std::fs::metadata(&users).expect("stat").mode() & 0o777;
        assert_eq!(mode, 0o640);

        assert_eq!(
            user_add(cfg, &s, "alice", "other").expect("replace"),
            Added::Replaced
        );
        assert_eq!(
            key_of(&users, "alice"),
            Some(long_term_key(&RustCrypto, "alice", "example.org", "other"))
        );
        assert_eq!(
            user_list(cfg, &s).expect("list"),
            [
                ("alice".to_string(), EntryKind::Key),
                ("old".to_string(), EntryKind::Password)
            ]
        );
        user_del(cfg, &s, "old").expect("del");
        assert_eq!(key_of(&users, "old"), None);
        let err = user_del(cfg, &s, "old").expect_err("gone");
        assert!(err.to_string().contains("no user \"old\""), "{err}");
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(&d.0)
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["turn-users"]);
    }

    #[test]
    fn a_missing_file_is_created_owner_only_by_add_only() {
        let d = Dir::new("create");
        let users = d.0.join("turn-users");
        let s = settings(Some(users.clone()), None);
        let cfg = Path::new("c.toml");
        assert!(matches!(
            user_del(cfg, &s, "a"),
            Err(AdminError::Io {
                what: "opening",
                ..
            })
        ));
        assert!(!users.exists());
        user_add(cfg, &s, "a", "pw").expect("add");
        assert_eq!(
            std::fs::metadata(&users).expect("stat").mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::read_to_string(&users).expect("read"),
            format!(
                "realm=example.org\na:key=0x{}\n",
                long_term_key(&RustCrypto, "a", "example.org", "pw")
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            )
        );
    }

    #[test]
    fn invalid_files_and_inputs_are_refused_untouched() {
        let d = Dir::new("invalid");
        let users = d.0.join("turn-users");
        std::fs::write(&users, "broken line\n").expect("write");
        let s = settings(Some(users.clone()), None);
        let cfg = Path::new("c.toml");
        let err = user_add(cfg, &s, "a", "pw").expect_err("invalid file");
        assert!(err.to_string().contains("line 1"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&users).expect("read"),
            "broken line\n"
        );
        assert!(user_add(cfg, &s, "a", "").is_err());
        assert!(matches!(
            user_add(cfg, &settings(None, None), "a", "pw"),
            Err(AdminError::NoUsersFile { .. })
        ));
        assert!(matches!(
            credential(cfg, &settings(None, None), "a", 60, 0),
            Err(AdminError::NoRestSecret { .. })
        ));
    }

    #[test]
    fn rest_credential_is_what_the_server_accepts() {
        let s = settings(None, Some("north"));
        let c = credential(Path::new("c.toml"), &s, "alice", 600, 400).expect("issued");
        assert_eq!(c.username, "1000:alice");
        // printf %s '1000:alice' | openssl dgst -sha1 -hmac north -binary | base64
        assert_eq!(c.password, "6ANS2sM+SnH+pQyRUs6nGfTCfYk=");
        assert_eq!(c.ttl, 600);
        let creds = Credentials::new("example.org").with_rest_secret(RestSecret::new("north"));
        let at = |t| std::time::UNIX_EPOCH + std::time::Duration::from_secs(t);
        let user = creds
            .lookup(&c.username, "example.org", at(999), &RustCrypto)
            .expect("valid");
        assert_eq!(
            user.key,
            long_term_key(&RustCrypto, &c.username, "example.org", &c.password)
        );
        assert!(credential(Path::new("c"), &s, "a", 0, 0).is_err());
        assert!(credential(Path::new("c"), &s, "a", u64::MAX, 1).is_err());
        assert!(credential(Path::new("c"), &s, "", 60, 0).is_err());
    }

    #[test]
    fn passwords_from_stdin_and_generated() {
        assert_eq!(
            read_password(&b"pw with spaces\n"[..]).expect("line"),
            "pw with spaces"
        );
        assert_eq!(read_password(&b"pw\r\nrest"[..]).expect("line"), "pw");
        assert!(read_password(&b"\n"[..]).is_err());
        assert!(read_password(&b""[..]).is_err());
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let a = generate_password(&mut rng);
        let b = generate_password(&mut rng);
        assert_eq!(a.len(), GENERATED_PASSWORD_LEN);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()), "{a}");
        assert_ne!(a, b);
    }
}
