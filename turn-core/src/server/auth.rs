//! Authentication of TURN requests: long-term credentials (RFC 8489 §9.2) and stateless
//! nonces.
//!
//! Role: check USERNAME / REALM / NONCE / MESSAGE-INTEGRITY in the order of RFC 8489 §9.2.4
//! against the [`Credentials`](crate::Credentials) (users file or TURN REST shared secret, see `credentials.rs`),
//! and answer failures with a 401 or 438 challenge carrying a fresh nonce.
//! A nonce is hex(expiry ms since start || 4 random bytes || first 8 bytes of HMAC-SHA1(nonce
//! key, those 12 bytes || client address)): it carries its own expiry and is bound to the
//! client address, so no table grows with unauthenticated traffic.
//! Inputs: a parsed request, `now`, wall time (REST credentials expire by Unix time).
//! Outputs: the key and integrity kind to sign the response with, or `None` after the error
//! response was queued; the auth counters of [`ServerCounters`](super::ServerCounters).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use rand::RngCore;
use tracing::debug;

use super::{Reply, Server};
use crate::credentials::AuthFailure;
use crate::crypto::ct_eq;
use crate::stun::{Attribute, IntegrityCheck, IntegrityKind, Message};

/// Result of authenticating a request.
pub(super) struct Auth {
    pub(super) key: [u8; 16],
    pub(super) kind: IntegrityKind,
    pub(super) username: String,
    pub(super) quota_user: String,
}

impl Server {
    /// Long-term credential check in the order of RFC 8489 §9.2.4. Sends the error response
    /// itself and returns `None` on failure.
    pub(super) fn authenticate(
        &mut self,
        now: Instant,
        wall: SystemTime,
        reply: &Reply,
        msg: &Message<'_>,
    ) -> Option<Auth> {
        if !msg.has_integrity() {
            self.counters.challenges += 1;
            self.send_challenge(now, reply, 401);
            return None;
        }
        let (Ok(Some(username)), Ok(Some(realm)), Ok(Some(nonce))) =
            (msg.username(), msg.realm(), msg.nonce())
        else {
            self.send_error(now, reply, 400, &[]);
            return None;
        };
        if !self.nonce_valid(now, nonce, reply.tuple.client) {
            self.counters.stale_nonce += 1;
            self.send_challenge(now, reply, 438);
            return None;
        }
        let user = match self
            .credentials
            .lookup(username, realm, wall, self.crypto.as_ref())
        {
            Ok(u) => u,
            Err(failure) => {
                match failure {
                    AuthFailure::UnknownUser => self.counters.unknown_user += 1,
                    AuthFailure::WrongRealm => self.counters.wrong_realm += 1,
                    AuthFailure::Expired => self.counters.expired_credentials += 1,
                }
                debug!(?failure, "authentication failed");
                self.send_challenge(now, reply, 401);
                return None;
            }
        };
        match msg.check_integrity(&user.key, self.crypto.as_ref()) {
            IntegrityCheck::Valid(kind) => Some(Auth {
                key: user.key,
                kind,
                username: username.to_owned(),
                quota_user: user.quota_user,
            }),
            IntegrityCheck::Invalid(_) | IntegrityCheck::Missing => {
                self.counters.bad_integrity += 1;
                debug!("MESSAGE-INTEGRITY check failed (wrong password?)");
                self.send_challenge(now, reply, 401);
                None
            }
        }
    }

    /// Nonce = hex(expiry ms since start || 4 random bytes || first 8 bytes of
    /// HMAC-SHA1(nonce key, those 12 bytes || client address)).
    fn make_nonce(&mut self, now: Instant, client: SocketAddr) -> String {
        let expiry = (now + self.config.nonce_lifetime).saturating_duration_since(self.epoch);
        let mut body = [0u8; 12];
        body[..8].copy_from_slice(&(expiry.as_millis() as u64).to_be_bytes());
        self.rng.fill_bytes(&mut body[8..]);
        let mac = self.nonce_mac(&body, client);
        body.iter()
            .chain(&mac[..8])
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn nonce_mac(&self, body: &[u8; 12], client: SocketAddr) -> [u8; 20] {
        let mut data = body.to_vec();
        match client.ip() {
            IpAddr::V4(v4) => data.extend_from_slice(&v4.octets()),
            IpAddr::V6(v6) => data.extend_from_slice(&v6.octets()),
        }
        data.extend_from_slice(&client.port().to_be_bytes());
        self.crypto.hmac_sha1(&self.nonce_key, &data)
    }

    fn nonce_valid(&self, now: Instant, nonce: &str, client: SocketAddr) -> bool {
        if nonce.len() != 40 || !nonce.is_ascii() {
            return false;
        }
        let mut raw = [0u8; 20];
        for (i, b) in raw.iter_mut().enumerate() {
            match nonce
                .get(2 * i..2 * i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(v) => *b = v,
                None => return false,
            }
        }
        let mut body = [0u8; 12];
        body.copy_from_slice(&raw[..12]);
        if !ct_eq(&raw[12..], &self.nonce_mac(&body, client)[..8]) {
            return false;
        }
        let mut ms = [0u8; 8];
        ms.copy_from_slice(&body[..8]);
        let expiry = self.epoch + Duration::from_millis(u64::from_be_bytes(ms));
        expiry > now
    }

    pub(super) fn send_challenge(&mut self, now: Instant, reply: &Reply, code: u16) {
        let nonce = self.make_nonce(now, reply.tuple.client);
        let realm = self.credentials.realm().to_owned();
        self.send_error(
            now,
            reply,
            code,
            &[Attribute::Realm(&realm), Attribute::Nonce(&nonce)],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;
    use crate::credentials::{Credentials, RestSecret, UserDb};
    use crate::crypto::RustCrypto;
    use crate::stun::TransactionId;

    #[test]
    fn wrong_password_gets_401_and_is_counted_as_bad_integrity() {
        let mut f = fx();
        let nonce = f.nonce();
        let r = f.request(
            Method::ALLOCATE,
            Some(("turnuser", "wrong", &nonce)),
            &[Attribute::RequestedTransport(PROTO_UDP)],
        );
        assert_eq!(r.code, Some(401));
        assert!(r.nonce.is_some());
        assert!(
            !r.integrity_ok,
            "a 401 for bad credentials has no integrity"
        );
        let r = f.request(
            Method::ALLOCATE,
            Some(("nobody", "x", &nonce)),
            &[Attribute::RequestedTransport(PROTO_UDP)],
        );
        assert_eq!(r.code, Some(401));
        let c = f.server.status().counters;
        assert_eq!((c.bad_integrity, c.unknown_user), (1, 1));
        assert_eq!(c.errors_sent.get(&401), Some(&3));
    }

    #[test]
    fn stale_and_forged_nonces_get_438() {
        let mut f = fx();
        let nonce = f.nonce();
        f.now += Duration::from_secs(601);
        let r = f.request(
            Method::ALLOCATE,
            Some(("turnuser", "cisco", &nonce)),
            &[Attribute::RequestedTransport(PROTO_UDP)],
        );
        assert_eq!(r.code, Some(438));
        let fresh = r.nonce.expect("438 carries a new nonce");
        assert_ne!(fresh, nonce);
        let mut forged = fresh.clone().into_bytes();
        forged[39] = if forged[39] == b'0' { b'1' } else { b'0' };
        let forged = String::from_utf8(forged).expect("ascii");
        let r = f.request(
            Method::ALLOCATE,
            Some(("turnuser", "cisco", &forged)),
            &[Attribute::RequestedTransport(PROTO_UDP)],
        );
        assert_eq!(r.code, Some(438));
        let r = f.request(
            Method::ALLOCATE,
            Some(("turnuser", "cisco", &fresh)),
            &[Attribute::RequestedTransport(PROTO_UDP)],
        );
        assert_eq!(r.class, Class::Success);
        // A nonce is bound to the client address: another port cannot reuse it.
        let bytes = f.build(
            Method::ALLOCATE,
            Some(("turnuser", "cisco", &fresh)),
            &[Attribute::RequestedTransport(PROTO_UDP)],
        );
        let out = f.send_from(addr("203.0.113.5:40001"), Transport::Udp, &bytes);
        assert_eq!(resp(&transmits(&out)[0].bytes, None).code, Some(438));
    }

    #[test]
    fn rest_credentials_work_and_expire() {
        let mut f = fx();
        let secret = RestSecret::new("shared");
        let (user, pass) = secret.issue("alice", 1_700_000_100, &RustCrypto);
        let relay = f.allocate(&user, pass.expose());
        assert!(relay.port() >= 24000);
        let (old_user, old_pass) = secret.issue("bob", 1_699_999_999, &RustCrypto);
        let nonce = f.nonce();
        let c2 = addr("203.0.113.5:40002");
        let bytes = build(
            Class::Request,
            Method::ALLOCATE,
            TransactionId([3; 12]),
            Some((&old_user, old_pass.expose(), &nonce)),
            &[Attribute::RequestedTransport(PROTO_UDP)],
        );
        let _ = f.send_from(c2, Transport::Udp, &bytes);
        assert_eq!(
            f.server.status().counters.stale_nonce,
            1,
            "nonce is per client"
        );
        let r = f.request(
            Method::ALLOCATE,
            Some((&old_user, old_pass.expose(), &nonce)),
            &[Attribute::RequestedTransport(PROTO_UDP)],
        );
        assert_eq!(r.code, Some(401));
        assert_eq!(f.server.status().counters.expired_credentials, 1);
    }

    #[test]
    fn swapped_credentials_keep_allocations_relaying_and_judge_new_requests() {
        let mut f = fx();
        let relay = f.allocate("turnuser", "cisco");
        let peer = addr("192.0.2.7:5000");
        f.authed(
            Method::CREATE_PERMISSION,
            &[Attribute::XorPeerAddress(peer)],
        );
        // The reload: turnuser removed, carol added, the REST secret rotated.
        let users = UserDb::parse("carol:pw3\n").expect("users");
        f.server.set_credentials(
            Credentials::new(REALM)
                .with_users(users)
                .expect("realm")
                .with_rest_secret(RestSecret::new("rotated")),
        );

        // The live allocation still relays peer data to its client.
        f.server.handle_peer_data(f.now, relay, peer, b"media");
        let t = transmits(&f.drain());
        assert_eq!((t.len(), t[0].from, t[0].to), (1, listen(), client()));
        assert_eq!(f.server.status().allocations, 1);
        // Its next authenticated request is judged by the new set.
        let nonce = f.nonce();
        let r = f.request(Method::REFRESH, Some(("turnuser", "cisco", &nonce)), &[]);
        assert_eq!(r.code, Some(401));

        // New requests: carol allocates, the old REST secret is refused, the new one works.
        let alloc_from = |f: &mut Fx, port: u16, user: &str, pass: &str| {
            let from = addr(&format!("203.0.113.5:{port}"));
            let bytes = f.build(
                Method::ALLOCATE,
                None,
                &[Attribute::RequestedTransport(PROTO_UDP)],
            );
            let out = f.send_from(from, Transport::Udp, &bytes);
            let nonce = resp(&transmits(&out)[0].bytes, None).nonce.expect("nonce");
            let bytes = f.build(
                Method::ALLOCATE,
                Some((user, pass, &nonce)),
                &[Attribute::RequestedTransport(PROTO_UDP)],
            );
            let out = f.send_from(from, Transport::Udp, &bytes);
            resp(&transmits(&out)[0].bytes, None)
        };
        assert_eq!(
            alloc_from(&mut f, 41000, "carol", "pw3").class,
            Class::Success
        );
        let (old_user, old_pass) =
            RestSecret::new("shared").issue("alice", 1_700_000_100, &RustCrypto);
        assert_eq!(
            alloc_from(&mut f, 41001, &old_user, old_pass.expose()).code,
            Some(401)
        );
        let (new_user, new_pass) =
            RestSecret::new("rotated").issue("alice", 1_700_000_100, &RustCrypto);
        assert_eq!(
            alloc_from(&mut f, 41002, &new_user, new_pass.expose()).class,
            Class::Success
        );
        assert_eq!(f.server.status().allocations, 3);
    }
}
