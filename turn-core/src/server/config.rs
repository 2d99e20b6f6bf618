//! Server settings and their validation.
//!
//! Role: hold what an operator configures (lifetimes, quotas, peer policy, rate limit) with the
//! RFC defaults, and reject inconsistent values before a [`Server`](super::Server) is built.
//! Inputs: a [`ServerConfig`] from the shell (turn-server maps its TOML onto it).
//! Outputs: `ServerConfig::validate` (run by `Server::new`) returns [`TurnError::Config`] naming
//! what is wrong.

use std::net::IpAddr;
use std::time::Duration;

use super::IpRange;
use crate::TurnError;

/// Token bucket for unauthenticated responses per source IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Responses allowed in a burst.
    pub burst: u32,
    /// Sustained responses per second.
    pub per_second: u32,
}

/// Server settings. `Default` gives the RFC 8656 timers and the defaults in docs/turn.md.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// SOFTWARE attribute on responses (at most 763 bytes), or none.
    pub software: Option<String>,
    /// Allocation lifetime when the client asks for less or nothing (RFC 8656 §3.2: 10 min).
    pub default_lifetime: Duration,
    /// Longest allocation lifetime granted (RFC 8656 §7.2 recommends 1 hour).
    pub max_lifetime: Duration,
    /// Permission lifetime, fixed by RFC 8656 §9: 300 s.
    pub permission_lifetime: Duration,
    /// Channel binding lifetime, fixed by RFC 8656 §12: 600 s.
    pub channel_lifetime: Duration,
    /// How long a nonce stays valid before requests get 438 Stale Nonce.
    pub nonce_lifetime: Duration,
    /// Allocations per user (REST credentials count against the user part), or unlimited.
    pub user_quota: Option<usize>,
    /// Allocations in total, or unlimited.
    pub total_quota: Option<usize>,
    /// The server's own addresses (listen and relay); never allowed as peers so the relay
    /// cannot be pointed at itself. Relay addresses in use are added automatically.
    pub server_addresses: Vec<IpAddr>,
    /// Allow RFC 1918 / CGNAT / ULA peers without listing them.
    pub allow_private_peers: bool,
    /// Extra denied peer ranges.
    pub denied_peers: Vec<IpRange>,
    /// Peer ranges allowed even if denied by default or by `denied_peers` (own addresses stay
    /// denied).
    pub allowed_peers: Vec<IpRange>,
    /// Limit on unauthenticated responses per source IP, or none.
    pub unauthenticated_rate: Option<RateLimit>,
    /// Most source IPs tracked by the rate limiter; new sources beyond it are dropped until
    /// idle ones are swept.
    pub max_rate_sources: usize,
    /// Let clients bind channels 0x5000-0x7FFF as RFC 5766 §11 allowed. RFC 8656 §12 reserves
    /// them, but deployed clients (coturn's turnutils_uclient, restund, libre) still pick from
    /// the old range and fail with 400 otherwise.
    pub rfc5766_channels: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            software: Some("xdpfork turn-core".to_owned()),
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
            nonce_lifetime: Duration::from_secs(600),
            user_quota: None,
            total_quota: None,
            server_addresses: Vec::new(),
            allow_private_peers: false,
            denied_peers: Vec::new(),
            allowed_peers: Vec::new(),
            unauthenticated_rate: Some(RateLimit {
                burst: 20,
                per_second: 10,
            }),
            max_rate_sources: 65_536,
            rfc5766_channels: false,
        }
    }
}

impl ServerConfig {
    pub(super) fn validate(&self) -> Result<(), TurnError> {
        let err = |reason| Err(TurnError::Config { reason });
        if self.default_lifetime.is_zero() || self.default_lifetime > self.max_lifetime {
            return err("default_lifetime must be non-zero and at most max_lifetime");
        }
        if self.max_lifetime.as_secs() > u64::from(u32::MAX) {
            return err("max_lifetime does not fit LIFETIME (u32 seconds)");
        }
        if self.permission_lifetime.is_zero()
            || self.channel_lifetime.is_zero()
            || self.nonce_lifetime.is_zero()
        {
            return err("permission, channel and nonce lifetimes must be non-zero");
        }
        if self.software.as_ref().is_some_and(|s| s.len() > 763) {
            return err("software longer than 763 bytes (RFC 8489 §14.14)");
        }
        if self
            .unauthenticated_rate
            .is_some_and(|r| r.burst == 0 || r.per_second == 0)
        {
            return err("rate limit burst and per_second must be non-zero");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;
    use std::net::Ipv4Addr;

    use crate::crypto::RustCrypto;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn config_validation() {
        let mut cfg = config();
        cfg.default_lifetime = Duration::from_secs(7200);
        let relays =
            PortRangeAllocator::new(Some(Ipv4Addr::LOCALHOST), None, 24000..=24000).expect("ok");
        assert!(matches!(
            Server::new(
                origin(),
                cfg,
                Credentials::new(REALM),
                Box::new(relays),
                Box::new(RustCrypto),
                Box::new(StdRng::seed_from_u64(1)),
            ),
            Err(TurnError::Config { .. })
        ));
        assert!(PortRangeAllocator::new(None, None, 1..=2).is_err());
        #[allow(clippy::reversed_empty_ranges)]
        let empty = 3..=2;
        assert!(PortRangeAllocator::new(Some(Ipv4Addr::LOCALHOST), None, empty).is_err());
    }
}
