//! Responses to STUN requests: encoding, signing and the rate limit on unsigned ones.
//!
//! Role: build a success or error response for the request a [`Reply`] describes, with
//! SOFTWARE, MESSAGE-INTEGRITY (when the request authenticated) and FINGERPRINT (when the
//! request had one), and count error codes.
//! Inputs: `send_success` / `send_error` from every request handler.
//! Outputs: [`Output::Transmit`](super::Output::Transmit) from the listen address to the client;
//! unsigned responses beyond the source's token bucket are dropped and counted.

use std::time::Instant;

use tracing::debug;

use super::{FiveTuple, Output, Server, Transmit};
use crate::stun::{Attribute, Class, IntegrityKind, MessageBuilder, Method, TransactionId};
use crate::TurnError;

/// Where and how to answer one request.
pub(super) struct Reply {
    pub(super) tuple: FiveTuple,
    pub(super) method: Method,
    pub(super) txid: TransactionId,
    pub(super) integrity: Option<(IntegrityKind, [u8; 16])>,
    pub(super) fingerprint: bool,
}

impl Server {
    pub(super) fn send_error(
        &mut self,
        now: Instant,
        reply: &Reply,
        code: u16,
        extra: &[Attribute<'_>],
    ) {
        *self.counters.errors_sent.entry(code).or_insert(0) += 1;
        let mut attrs = Vec::with_capacity(extra.len() + 1);
        attrs.push(Attribute::ErrorCode {
            code,
            reason: reason_phrase(code),
        });
        attrs.extend_from_slice(extra);
        self.respond(now, reply, Class::Error, &attrs);
    }

    pub(super) fn send_success(&mut self, now: Instant, reply: &Reply, attrs: &[Attribute<'_>]) {
        self.respond(now, reply, Class::Success, attrs);
    }

    fn respond(&mut self, now: Instant, reply: &Reply, class: Class, attrs: &[Attribute<'_>]) {
        // Only responses without integrity can be triggered by anyone: rate-limit those.
        if reply.integrity.is_none() && !self.take_token(now, reply.tuple.client.ip()) {
            self.counters.rate_limited += 1;
            return;
        }
        let bytes = match self.encode(reply, class, attrs) {
            Ok(b) => b,
            Err(e) => {
                debug!(error = %e, "could not encode response");
                return;
            }
        };
        self.out.push_back(Output::Transmit(Transmit {
            from: reply.tuple.server,
            to: reply.tuple.client,
            transport: reply.tuple.transport,
            bytes,
        }));
    }

    fn encode(
        &self,
        reply: &Reply,
        class: Class,
        attrs: &[Attribute<'_>],
    ) -> Result<Vec<u8>, TurnError> {
        let mut b = MessageBuilder::new(class, reply.method, reply.txid);
        for a in attrs {
            b.add(a)?;
        }
        if let Some(sw) = &self.config.software {
            b.add(&Attribute::Software(sw))?;
        }
        if let Some((kind, key)) = &reply.integrity {
            b.add_integrity_kind(*kind, key, self.crypto.as_ref())?;
        }
        if reply.fingerprint {
            b.add_fingerprint()?;
        }
        Ok(b.finish())
    }
}

/// Reason phrases (RFC 8489 §14.8, RFC 8656 §19).
fn reason_phrase(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        401 => "Unauthenticated",
        403 => "Forbidden",
        420 => "Unknown Attribute",
        437 => "Allocation Mismatch",
        438 => "Stale Nonce",
        440 => "Address Family not Supported",
        441 => "Wrong Credentials",
        442 => "Unsupported Transport Protocol",
        443 => "Peer Address Family Mismatch",
        486 => "Allocation Quota Reached",
        508 => "Insufficient Capacity",
        _ => "Server Error",
    }
}
