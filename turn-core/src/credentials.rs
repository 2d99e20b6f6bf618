//! Long-term credentials for the TURN server: a static users file and TURN REST API
//! (shared secret, time-limited) credentials.
//!
//! Role: map a request's USERNAME (and REALM) to the long-term key
//! MD5(username:realm:password) (RFC 8489 §9.2.2), or say why not.
//! Inputs: the users file text ([`UserDb::parse`]), an optional shared secret
//! ([`RestSecret`]), and per lookup the wall-clock time for REST expiry.
//! Outputs: [`AuthUser`] (key plus the name quotas count against) or [`AuthFailure`].
//! Call order: build [`Credentials`] once at start (or on reload), then the server calls
//! [`Credentials::lookup`] for each authenticated request.
//!
//! Secrets never appear in `Debug` output: [`Password`], keys and the shared secret print as
//! `<redacted>`.

use std::collections::HashMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;

use crate::crypto::Crypto;
use crate::stun::long_term_key;
use crate::TurnError;

/// A password held in memory; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Wraps a password.
    pub fn new(p: impl Into<String>) -> Self {
        Password(p.into())
    }

    /// The password text, for computing the key.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// What the users file stores for one user.
#[derive(Clone, PartialEq, Eq)]
enum UserSecret {
    /// Plain password; the key is derived with the realm at lookup.
    Password(Password),
    /// Precomputed MD5(username:realm:password), as coturn's turnadmin prints it.
    Key([u8; 16]),
}

impl fmt::Debug for UserSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserSecret::Password(_) => f.write_str("Password(<redacted>)"),
            UserSecret::Key(_) => f.write_str("Key(<redacted>)"),
        }
    }
}

/// Static users, loaded from a users file.
///
/// Format (one entry per line, see docs/turn.md):
/// ```text
/// # comment
/// realm=example.org
/// alice:s3cret
/// bob:key=0x0123456789abcdef0123456789abcdef
/// ```
/// The first `:` splits user from secret, so passwords may contain `:`; usernames may not.
/// Leading and trailing whitespace of a line is ignored. `realm=` (a line without `:`) is
/// optional and, when present, must equal the server realm because `key=` entries were
/// computed with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserDb {
    realm: Option<String>,
    users: HashMap<String, UserSecret>,
}

impl UserDb {
    /// An empty database.
    pub fn new() -> Self {
        UserDb::default()
    }

    /// Parses a users file.
    pub fn parse(text: &str) -> Result<Self, TurnError> {
        let mut db = UserDb::new();
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let err = |reason| TurnError::UsersFile {
                line: line_no,
                reason,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, secret)) = line.split_once(':') else {
                if let Some(realm) = line.strip_prefix("realm=") {
                    if realm.trim().is_empty() {
                        return Err(err("empty realm"));
                    }
                    if db.realm.is_some() {
                        return Err(err("realm given twice"));
                    }
                    db.realm = Some(realm.trim().to_owned());
                    continue;
                }
                return Err(err(
                    "expected username:password, username:key=0x<md5> or realm=<realm>",
                ));
            };
            if user.is_empty() {
                return Err(err("empty username"));
            }
            let secret = match secret.strip_prefix("key=") {
                Some(hex) => UserSecret::Key(
                    parse_key(hex).ok_or(err("key must be 0x followed by 32 hex digits"))?,
                ),
                None if secret.is_empty() => return Err(err("empty password")),
                None => UserSecret::Password(Password::new(secret)),
            };
            if db.users.insert(user.to_owned(), secret).is_some() {
                return Err(err("duplicate username"));
            }
        }
        Ok(db)
    }

    /// Adds or replaces a user with a password.
    pub fn insert_password(&mut self, user: impl Into<String>, password: Password) {
        self.users
            .insert(user.into(), UserSecret::Password(password));
    }

    /// Adds or replaces a user with a precomputed key MD5(user:realm:password).
    pub fn insert_key(&mut self, user: impl Into<String>, key: [u8; 16]) {
        self.users.insert(user.into(), UserSecret::Key(key));
    }

    /// The `realm=` line, if the file had one.
    pub fn realm(&self) -> Option<&str> {
        self.realm.as_deref()
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there are no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

fn parse_key(s: &str) -> Option<[u8; 16]> {
    let hex = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?;
    if hex.len() != 32 || !hex.is_ascii() {
        return None;
    }
    let mut key = [0u8; 16];
    for (i, b) in key.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

/// What a users file entry stores, for listings (never the secret itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// `user:password`.
    Password,
    /// `user:key=0x<md5>`.
    Key,
}

impl UserDb {
    /// The users, sorted by name, with what each entry stores.
    pub fn entries(&self) -> Vec<(&str, EntryKind)> {
        let mut out: Vec<(&str, EntryKind)> = self
            .users
            .iter()
            .map(|(name, secret)| {
                let kind = match secret {
                    UserSecret::Password(_) => EntryKind::Password,
                    UserSecret::Key(_) => EntryKind::Key,
                };
                (name.as_str(), kind)
            })
            .collect();
        out.sort_unstable_by_key(|(name, _)| *name);
        out
    }
}

/// Longest USERNAME: fewer than 513 bytes (RFC 8489 §14.3).
pub const MAX_USERNAME_BYTES: usize = 512;

/// Whether `user` can be a users file entry that a client can send: not empty, at most
/// [`MAX_USERNAME_BYTES`], no `:` (it ends the name in the file), no control character, no
/// leading `#` (a comment) and no leading or trailing whitespace (the parser trims lines).
pub fn check_username(user: &str) -> Result<(), TurnError> {
    let reason = if user.is_empty() {
        Some("empty")
    } else if user.len() > MAX_USERNAME_BYTES {
        Some("longer than 512 bytes (RFC 8489 §14.3)")
    } else if user.contains(':') {
        Some("contains ':' (it separates the name from the secret in the users file)")
    } else if user.chars().any(char::is_control) {
        Some("contains a control character")
    } else if user.starts_with('#') {
        Some("starts with '#' (a comment in the users file)")
    } else if user.trim() != user {
        Some("starts or ends with whitespace")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(TurnError::BadUsername {
            user: user.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// A users file being edited by `turn-server user add|del`: every line not about the edited
/// user (comments, blank lines, order, other users' entries) stays exactly as it was.
///
/// Call order: [`UsersFileText::parse`] (the whole file must be valid), then any number of
/// [`UsersFileText::set_key`] / [`UsersFileText::remove`], then [`UsersFileText::text`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsersFileText {
    lines: Vec<String>,
    db: UserDb,
}

impl UsersFileText {
    /// Parses and keeps `text`.
    pub fn parse(text: &str) -> Result<Self, TurnError> {
        Ok(UsersFileText {
            db: UserDb::parse(text)?,
            lines: text.lines().map(str::to_owned).collect(),
        })
    }

    /// The users as the server would load them.
    pub fn users(&self) -> &UserDb {
        &self.db
    }

    /// Index of `user`'s entry line.
    fn line_of(&self, user: &str) -> Option<usize> {
        self.lines.iter().position(|l| {
            let l = l.trim();
            !l.starts_with('#') && l.split_once(':').is_some_and(|(name, _)| name == user)
        })
    }

    /// Stores `user` with the key MD5(user:realm:password) (RFC 8489 §9.2.2), replacing an
    /// existing entry in place or appending one; returns whether it replaced one. A key is tied
    /// to its realm, so a file without a `realm=` line gets one, and a file naming another
    /// realm is refused.
    pub fn set_key(&mut self, user: &str, realm: &str, key: [u8; 16]) -> Result<bool, TurnError> {
        check_username(user)?;
        match self.db.realm() {
            Some(r) if r != realm => {
                return Err(TurnError::Config {
                    reason: "users file realm= differs from the server realm",
                })
            }
            Some(_) => {}
            None => {
                self.lines.push(format!("realm={realm}"));
                self.db.realm = Some(realm.to_owned());
            }
        }
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        let entry = format!("{user}:key=0x{hex}");
        let replaced = match self.line_of(user) {
            Some(i) => {
                self.lines[i] = entry;
                true
            }
            None => {
                self.lines.push(entry);
                false
            }
        };
        self.db.insert_key(user, key);
        Ok(replaced)
    }

    /// Removes `user`'s entry.
    pub fn remove(&mut self, user: &str) -> Result<(), TurnError> {
        let i = self.line_of(user).ok_or_else(|| TurnError::UnknownUser {
            user: user.to_owned(),
        })?;
        self.lines.remove(i);
        self.db.users.remove(user);
        Ok(())
    }

    /// The file's new text (newline-terminated).
    pub fn text(&self) -> String {
        let mut out = self.lines.join("\n");
        out.push('\n');
        out
    }
}

/// The shared secret of the TURN REST API scheme (draft-uberti-behave-turn-rest, as coturn's
/// `use-auth-secret`): username = "<expiry unix seconds>:<user>",
/// password = base64(HMAC-SHA1(secret, username)).
#[derive(Clone, PartialEq, Eq)]
pub struct RestSecret(Vec<u8>);

impl fmt::Debug for RestSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RestSecret(<redacted>)")
    }
}

impl RestSecret {
    /// Wraps the shared secret.
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        RestSecret(secret.into())
    }

    /// The password for a REST username: base64(HMAC-SHA1(secret, username)).
    pub fn password_for(&self, username: &str, crypto: &dyn Crypto) -> Password {
        let mac = crypto.hmac_sha1(&self.0, username.as_bytes());
        Password(base64::engine::general_purpose::STANDARD.encode(mac))
    }

    /// Issues a (username, password) pair for `user` valid until `expiry_unix` seconds.
    pub fn issue(&self, user: &str, expiry_unix: u64, crypto: &dyn Crypto) -> (String, Password) {
        let username = format!("{expiry_unix}:{user}");
        let password = self.password_for(&username, crypto);
        (username, password)
    }
}

/// A successful lookup.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthUser {
    /// MD5(username:realm:password), the MESSAGE-INTEGRITY key.
    pub key: [u8; 16],
    /// The name per-user quotas count against: the username, or for REST credentials the
    /// part after the timestamp (so each fresh credential does not get a fresh quota).
    pub quota_user: String,
}

impl fmt::Debug for AuthUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthUser")
            .field("key", &"<redacted>")
            .field("quota_user", &self.quota_user)
            .finish()
    }
}

/// Why a lookup failed. The server answers all of these with 401 (RFC 8489 §9.2.4) but counts
/// them separately for operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// REALM differs from the server realm.
    WrongRealm,
    /// No static user of that name and not a REST username (or no shared secret configured).
    UnknownUser,
    /// A REST username whose timestamp is in the past.
    Expired,
}

/// The credential sources of one realm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    realm: String,
    users: UserDb,
    rest: Option<RestSecret>,
}

impl Credentials {
    /// No users yet; add them with [`Credentials::with_users`] / [`Credentials::with_rest_secret`].
    pub fn new(realm: impl Into<String>) -> Self {
        Credentials {
            realm: realm.into(),
            users: UserDb::new(),
            rest: None,
        }
    }

    /// Uses a users file; fails if the file names a different realm.
    pub fn with_users(mut self, users: UserDb) -> Result<Self, TurnError> {
        if users.realm().is_some_and(|r| r != self.realm) {
            return Err(TurnError::Config {
                reason: "users file realm= differs from the server realm",
            });
        }
        self.users = users;
        Ok(self)
    }

    /// Also accepts TURN REST API usernames signed with `secret`.
    pub fn with_rest_secret(mut self, secret: RestSecret) -> Self {
        self.rest = Some(secret);
        self
    }

    /// The realm sent in 401/438 responses.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// Finds the key for `username` in `realm` at `wall_time`. Static users win over the REST
    /// scheme when a name matches both.
    pub fn lookup(
        &self,
        username: &str,
        realm: &str,
        wall_time: SystemTime,
        crypto: &dyn Crypto,
    ) -> Result<AuthUser, AuthFailure> {
        if realm != self.realm {
            return Err(AuthFailure::WrongRealm);
        }
        if let Some(secret) = self.users.users.get(username) {
            let key = match secret {
                UserSecret::Password(p) => long_term_key(crypto, username, realm, p.expose()),
                UserSecret::Key(k) => *k,
            };
            return Ok(AuthUser {
                key,
                quota_user: username.to_owned(),
            });
        }
        let Some(rest) = &self.rest else {
            return Err(AuthFailure::UnknownUser);
        };
        // "<expiry>:<user>", or only "<expiry>" (coturn accepts both).
        let (ts, user) = match username.split_once(':') {
            Some((ts, user)) => (ts, user),
            None => (username, username),
        };
        let Ok(expiry) = ts.parse::<u64>() else {
            return Err(AuthFailure::UnknownUser);
        };
        let now = wall_time
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if expiry <= now {
            return Err(AuthFailure::Expired);
        }
        let password = rest.password_for(username, crypto);
        Ok(AuthUser {
            key: long_term_key(crypto, username, realm, password.expose()),
            quota_user: user.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::crypto::RustCrypto;

    const FILE: &str = "\
# TURN users for the Expressway-E style deployment
realm=example.org

turnuser:cisco
  bob:key=0x8493fbc53ba582fb4c044c456bdc40eb  
carol:pa:ss:word
";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn parses_passwords_keys_and_realm() {
        let db = UserDb::parse(FILE).expect("valid file");
        assert_eq!(db.len(), 3);
        assert_eq!(db.realm(), Some("example.org"));
        let creds = Credentials::new("example.org")
            .with_users(db)
            .expect("same realm");
        let u = creds
            .lookup("turnuser", "example.org", at(0), &RustCrypto)
            .expect("known");
        assert_eq!(
            u.key,
            long_term_key(&RustCrypto, "turnuser", "example.org", "cisco")
        );
        assert_eq!(u.quota_user, "turnuser");
        let b = creds
            .lookup("bob", "example.org", at(0), &RustCrypto)
            .expect("known");
        assert_eq!(b.key[0], 0x84);
        assert_eq!(b.key[15], 0xeb);
        let c = creds
            .lookup("carol", "example.org", at(0), &RustCrypto)
            .expect("known");
        assert_eq!(
            c.key,
            long_term_key(&RustCrypto, "carol", "example.org", "pa:ss:word")
        );
        assert_eq!(
            creds.lookup("dave", "example.org", at(0), &RustCrypto),
            Err(AuthFailure::UnknownUser)
        );
        assert_eq!(
            creds.lookup("turnuser", "other.org", at(0), &RustCrypto),
            Err(AuthFailure::WrongRealm)
        );
    }

    #[test]
    fn file_errors_name_the_line() {
        let cases = [
            ("alice", 1),
            ("# c\n:pw", 2),
            ("a:", 1),
            ("a:key=0x12", 1),
            ("a:key=0xzz3fbc53ba582fb4c044c456bdc40eb", 1),
            ("a:1\nb:2\na:3", 3),
            ("realm=\n", 1),
            ("realm=a\nrealm=b", 2),
        ];
        for (text, line) in cases {
            match UserDb::parse(text) {
                Err(TurnError::UsersFile { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn edits_keep_other_lines_and_store_keys() {
        let mut f = UsersFileText::parse(FILE).expect("valid");
        let key = long_term_key(&RustCrypto, "dave", "example.org", "pw");
        assert!(!f.set_key("dave", "example.org", key).expect("added"));
        let key2 = long_term_key(&RustCrypto, "turnuser", "example.org", "new");
        assert!(f
            .set_key("turnuser", "example.org", key2)
            .expect("replaced"));
        f.remove("carol").expect("known");
        let text = f.text();
        // Comments, blank lines, the realm and bob's line are untouched; turnuser's line is
        // replaced in place and dave's appended.
        let mut want = FILE
            .replace("turnuser:cisco", &format!("turnuser:key=0x{}", hex(&key2)))
            .replace("carol:pa:ss:word\n", "");
        want.push_str(&format!("dave:key=0x{}\n", hex(&key)));
        assert_eq!(text, want);
        // What the server loads from it agrees.
        let creds = Credentials::new("example.org")
            .with_users(UserDb::parse(&text).expect("valid"))
            .expect("same realm");
        for (user, pw) in [("dave", "pw"), ("turnuser", "new")] {
            let u = creds
                .lookup(user, "example.org", at(0), &RustCrypto)
                .expect("known");
            assert_eq!(u.key, long_term_key(&RustCrypto, user, "example.org", pw));
        }
        assert_eq!(
            creds.lookup("carol", "example.org", at(0), &RustCrypto),
            Err(AuthFailure::UnknownUser)
        );
        assert_eq!(
            f.users().entries(),
            [
                ("bob", EntryKind::Key),
                ("dave", EntryKind::Key),
                ("turnuser", EntryKind::Key)
            ]
        );
    }

    fn hex(key: &[u8; 16]) -> String {
        key.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn a_key_pins_the_realm_of_a_file_without_one() {
        let mut f = UsersFileText::parse("# empty\n").expect("valid");
        f.set_key("a", "example.org", [0x11; 16]).expect("added");
        assert_eq!(
            f.text(),
            "# empty\nrealm=example.org\na:key=0x11111111111111111111111111111111\n"
        );
        assert_eq!(
            UserDb::parse(&f.text()).expect("valid").realm(),
            Some("example.org")
        );
        assert!(matches!(
            f.set_key("b", "other.org", [0; 16]),
            Err(TurnError::Config { .. })
        ));
    }

    #[test]
    fn bad_usernames_and_unknown_users_are_refused() {
        let mut f = UsersFileText::parse("").expect("valid");
        let long = "x".repeat(MAX_USERNAME_BYTES + 1);
        for bad in ["", "a:b", "#a", " a", "a ", "a\tb", "a\nb", long.as_str()] {
            assert!(
                matches!(
                    f.set_key(bad, "r", [0; 16]),
                    Err(TurnError::BadUsername { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(f
            .set_key(&"x".repeat(MAX_USERNAME_BYTES), "r", [0; 16])
            .is_ok());
        assert_eq!(
            f.remove("nobody"),
            Err(TurnError::UnknownUser {
                user: "nobody".into()
            })
        );
        // A commented-out entry is not the user.
        let mut g = UsersFileText::parse("# a:old\n").expect("valid");
        assert!(g.remove("a").is_err());
        assert!(!g.set_key("a", "r", [0; 16]).expect("added"));
        assert!(g.text().starts_with("# a:old\n"));
    }

    #[test]
    fn realm_mismatch_is_a_config_error() {
        let db = UserDb::parse("realm=a.org\nx:y").expect("valid");
        assert!(matches!(
            Credentials::new("b.org").with_users(db),
            Err(TurnError::Config { .. })
        ));
    }

    #[test]
    fn rest_credentials_expire_against_wall_time() {
        let secret = RestSecret::new("north");
        let creds = Credentials::new("example.org").with_rest_secret(secret.clone());
        let (username, password) = secret.issue("alice", 1_000, &RustCrypto);
        assert_eq!(username, "1000:alice");
        // base64 of a 20-byte HMAC is 28 characters.
        assert_eq!(password.expose().len(), 28);
        let ok = creds
            .lookup(&username, "example.org", at(999), &RustCrypto)
            .expect("valid until 1000");
        assert_eq!(
            ok.key,
            long_term_key(&RustCrypto, &username, "example.org", password.expose())
        );
        assert_eq!(ok.quota_user, "alice");
        assert_eq!(
            creds.lookup(&username, "example.org", at(1_000), &RustCrypto),
            Err(AuthFailure::Expired)
        );
        assert_eq!(
            creds.lookup("soon:alice", "example.org", at(0), &RustCrypto),
            Err(AuthFailure::UnknownUser)
        );
        // Without a secret, REST-looking names are unknown.
        assert_eq!(
            Credentials::new("example.org").lookup(&username, "example.org", at(0), &RustCrypto),
            Err(AuthFailure::UnknownUser)
        );
    }

    #[test]
    fn rest_password_matches_reference_computation() {
        // printf %s '1000:alice' | openssl dgst -sha1 -hmac north -binary | base64
        let p = RestSecret::new("north").password_for("1000:alice", &RustCrypto);
        assert_eq!(p.expose(), REFERENCE_REST_PASSWORD);
    }

    const REFERENCE_REST_PASSWORD: &str = "6ANS2sM+SnH+pQyRUs6nGfTCfYk=";

    #[test]
    fn secrets_never_printed() {
        let db = UserDb::parse(FILE).expect("valid");
        let creds = Credentials::new("example.org")
            .with_users(db)
            .expect("same realm")
            .with_rest_secret(RestSecret::new("north-secret"));
        let dump = format!("{creds:?} {:?}", Password::new("cisco"));
        assert!(!dump.contains("cisco"), "{dump}");
        assert!(!dump.contains("north-secret"), "{dump}");
        assert!(!dump.contains("pa:ss"), "{dump}");
        assert!(!dump.contains("8493"), "{dump}");
        let user = creds
            .lookup("turnuser", "example.org", at(0), &RustCrypto)
            .expect("known");
        assert!(format!("{user:?}").contains("<redacted>"));
    }
}
