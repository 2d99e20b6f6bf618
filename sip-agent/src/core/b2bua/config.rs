//! The B2BUA's static configuration: routes (Cisco dial-peer style patterns), per-leg local
//! addresses and limits.
//!
//! Role: plain data the shell builds from `sip-agent.toml` (config.rs) and hands to
//! [`B2bua::new`](super::B2bua::new); no behaviour besides [`RoutePattern::score`].

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::authz;
use crate::core::transaction::{Peer, Transport};

/// How a route matches the Request-URI user part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutePattern {
    /// The user starts with this string.
    Prefix(String),
    /// Same length as the user; `X` and `.` match any one character, anything else itself (the
    /// single-digit wildcards of Cisco dial-peer destination patterns).
    Pattern(String),
}

impl RoutePattern {
    /// Number of literal characters matched, or `None` for no match. More literal characters is
    /// a more specific route (dial-peer "longest explicit match").
    pub fn score(&self, user: &str) -> Option<usize> {
        match self {
            Self::Prefix(p) => user.starts_with(p.as_str()).then_some(p.len()),
            Self::Pattern(p) => {
                if p.chars().count() != user.chars().count() {
                    return None;
                }
                let mut literal = 0;
                for (pc, uc) in p.chars().zip(user.chars()) {
                    match pc {
                        'X' | 'x' | '.' => {}
                        c if c == uc => literal += 1,
                        _ => return None,
                    }
                }
                Some(literal)
            }
        }
    }
}

/// The item whose pattern matches `user` with the most literal characters; the earlier on a tie.
pub(super) fn most_specific<'a, T>(
    items: &'a [T],
    user: &str,
    pattern: impl Fn(&T) -> &RoutePattern,
) -> Option<&'a T> {
    let mut best: Option<(usize, &T)> = None;
    for item in items {
        if let Some(s) = pattern(item).score(user) {
            if best.is_none_or(|(b, _)| s > b) {
                best = Some((s, item));
            }
        }
    }
    best.map(|(_, item)| item)
}

/// A routing rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// What it matches.
    pub pattern: RoutePattern,
    /// Where matching calls go.
    pub next_hop: Peer,
    /// Whether fork requests are allowed on calls using this route (the reference's media-class
    /// binding on the dial-peer); without it a START gets "Unsupported flow".
    pub forking: bool,
    /// Local addresses the outbound leg uses; `None` means [`Config::sip_addr`] and
    /// [`Config::media_ip`]. The dial-peer's `voice-class sip bind control|media
    /// source-interface` in CUBE terms: a B2BUA between two networks speaks to each from its own
    /// interface.
    pub bind: Option<Bind>,
}

/// A number answered by a voice bot (endpoint mode, docs/sip-agent.md "Voice bots"): the call
/// ends here and a speech server that talks back is the other party.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotRoute {
    /// What it matches (the Request-URI user), as a route's pattern; bots are looked up before
    /// routes.
    pub pattern: RoutePattern,
    /// fork-agent `[[speech_server]]` the bot is (its URL, token and profile).
    pub speech_server: String,
}

/// Local addresses one leg of a call uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    /// IP written in Via, Contact and Call-ID host (the port comes from the transport, see
    /// [`Config::transport_ports`]).
    pub sip_ip: IpAddr,
    /// Address written into SDP `c=` and `o=` for this leg's anchored media.
    pub media_ip: IpAddr,
}

/// Static configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Our SIP address as written in Via and Contact.
    pub sip_addr: SocketAddr,
    /// Address written into SDP `c=` for anchored media.
    pub media_ip: IpAddr,
    /// Routing rules; the most specific match wins, ties go to the earlier rule.
    pub routes: Vec<Route>,
    /// Numbers answered by voice bots (looked up before `routes`, the same way).
    pub bots: Vec<BotRoute>,
    /// Listening port per transport, written into Via sent-by and Contact for messages on that
    /// transport; a transport not listed uses `sip_addr`'s port.
    pub transport_ports: Vec<(Transport, u16)>,
    /// Who may send in-dialog and fork requests (`[security]`).
    pub security: authz::Policy,
    /// Shortest RFC 4028 session interval accepted: a request asking for less gets 422 with this
    /// `Min-SE` (§8.1). At least [`crate::core::session_timer::MIN_SE_FLOOR`] (90 s).
    pub min_se: Duration,
    /// A call connected this long is released (BYE on both legs); `None` means no limit.
    pub max_call_duration: Option<Duration>,
    /// Forks (distinct GUIDs) a call may have at once, 1 to
    /// [`MAX_FORKS_PER_CALL`](crate::core::fork_request::MAX_FORKS_PER_CALL); 1 is CUBE's rule.
    pub max_forks_per_call: usize,
}
