//! Which speech destinations a controller may name: the operator's allow-list (docs/fork-agent.md
//! "Destinations").
//!
//! Role: pure policy. A fork request may carry its own URL (CUBE START `url`); without a check
//! a controller could make the media host open TCP connections anywhere, including into its
//! own private networks. Every per-request URL must match one rule of `[destinations] allow`
//! before anything is resolved or connected; the configured servers' own URLs are always
//! allowed (the operator wrote them).
//!
//! A rule is `scheme://host[:port]`:
//! - `scheme` is `ws`, `wss` or `*`;
//! - `host` is a DNS name (exact, ASCII case-insensitive), `*.suffix` (any name below
//!   `suffix`, not `suffix` itself), an IP address, or a CIDR (`10.0.0.0/8`, `[fd00::]/8` or
//!   `fd00::/8` without brackets);
//! - `port` is optional (any port when absent).
//!
//! A URL whose host is a name matches name rules directly. It can also match an address rule,
//! but only through what the name resolves to: the verdict then says which networks the
//! resolved addresses must be in, and the connection shell drops every answer outside them
//! (DNS is not the operator's to trust for an address rule).
//!
//! Input: the rule strings (config) and a parsed [`WsUrl`]. Output: [`Verdict`].

use std::net::IpAddr;

use conn_limits::core::cidr::Cidr;

use crate::core::ws_url::WsUrl;

/// One allow rule.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    /// `Some(true)` wss only, `Some(false)` ws only, `None` both.
    secure: Option<bool>,
    host: Host,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    /// Exact name, lower case.
    Name(String),
    /// `*.suffix`: lower-case suffix with its leading dot.
    Below(String),
    /// Address or network.
    Net(Cidr),
}

/// `[destinations] allow`, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    rules: Vec<Rule>,
}

/// Whether a URL may be connected to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Yes, to whatever it resolves to.
    Allowed,
    /// Only to resolved addresses inside these networks (a name matched by address rules).
    ResolvedWithin(Vec<Cidr>),
    /// No; the text says why (it goes back to the controller's log, not the URL's secrets).
    Refused(String),
}

impl AllowList {
    /// Parses the rules; the error names the entry (`allow[2]: ...`).
    pub fn parse(entries: &[String]) -> Result<AllowList, String> {
        let mut rules = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            rules.push(parse_rule(e).map_err(|why| format!("allow[{i}] {e:?}: {why}"))?);
        }
        Ok(AllowList { rules })
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there is no rule (then only the configured servers' URLs are allowed).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The verdict for `url`.
    pub fn check(&self, url: &WsUrl) -> Verdict {
        let host_ip = url.host.parse::<IpAddr>().ok();
        let name = url.host.to_ascii_lowercase();
        let mut nets = Vec::new();
        for r in &self.rules {
            if r.secure.is_some_and(|s| s != url.secure) || r.port.is_some_and(|p| p != url.port) {
                continue;
            }
            match (&r.host, host_ip) {
                (Host::Net(c), Some(ip)) if c.contains(ip) => return Verdict::Allowed,
                (Host::Net(c), None) => nets.push(*c),
                (Host::Name(n), None) if *n == name => return Verdict::Allowed,
                (Host::Below(suffix), None) if name.ends_with(suffix.as_str()) => {
                    return Verdict::Allowed
                }
                _ => {}
            }
        }
        if !nets.is_empty() {
            return Verdict::ResolvedWithin(nets);
        }
        let scheme = if url.secure { "wss" } else { "ws" };
        Verdict::Refused(format!(
            "{scheme}://{} matches no [destinations] allow rule",
            url.host_port()
        ))
    }
}

fn parse_rule(text: &str) -> Result<Rule, String> {
    let (scheme, rest) = text.split_once("://").ok_or(
        "expected scheme://host[:port] (e.g. wss://*.example.com or ws://10.0.0.0/8:8000)",
    )?;
    let secure = match scheme {
        "ws" => Some(false),
        "wss" => Some(true),
        "*" => None,
        other => return Err(format!("scheme {other:?} is not ws, wss or *")),
    };
    if rest.contains(['/', '?', '#', '@']) && !looks_like_cidr(rest) {
        return Err("a rule has no path, query or user part".into());
    }
    // Bracketed IPv6 (`[fd00::]/8:443`), else the last `:` separates a port unless the host
    // is an unbracketed IPv6 address or network.
    let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
        let (addr, after) = inner.split_once(']').ok_or("unclosed [")?;
        let (prefix, port) = match after.split_once(':') {
            Some((p, port)) => (p, Some(port)),
            None => (after, None),
        };
        (format!("{addr}{prefix}"), port)
    } else if rest.matches(':').count() > 1 {
        (rest.to_owned(), None)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (rest.to_owned(), None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => Some(p),
            _ => return Err(format!("port {p:?} is not 1-65535")),
        },
    };
    let host = if let Ok(c) = host.parse::<Cidr>() {
        Host::Net(c)
    } else if let Some(suffix) = host.strip_prefix("*.") {
        check_name(suffix)?;
        Host::Below(format!(".{}", suffix.to_ascii_lowercase()))
    } else if host.contains('/') || host.parse::<IpAddr>().is_ok() {
        // Looked like a network but did not parse: say what Cidr says.
        return Err(host
            .parse::<Cidr>()
            .err()
            .map_or("bad network".into(), |e| e.to_string()));
    } else {
        check_name(&host)?;
        Host::Name(host.to_ascii_lowercase())
    };
    Ok(Rule { secure, host, port })
}

fn looks_like_cidr(rest: &str) -> bool {
    // `10.0.0.0/8` or `10.0.0.0/8:8000`: one `/` followed by digits.
    rest.split_once('/').is_some_and(|(_, after)| {
        after
            .split(':')
            .next()
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    }) && !rest.contains(['?', '#', '@'])
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a DNS name, address or network"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(rules: &[&str]) -> AllowList {
        AllowList::parse(&rules.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("rules")
    }

    fn url(s: &str) -> WsUrl {
        WsUrl::parse(s).expect("url")
    }

    fn cidr(s: &str) -> Cidr {
        s.parse().expect("cidr")
    }

    #[test]
    fn names_suffixes_and_schemes() {
        let l = list(&["wss://asr.example.com", "*://*.speech.example.net:8443"]);
        assert_eq!(l.check(&url("wss://ASR.example.com/x")), Verdict::Allowed);
        assert!(matches!(
            l.check(&url("ws://asr.example.com")),
            Verdict::Refused(_)
        ));
        assert_eq!(
            l.check(&url("ws://eu.speech.example.net:8443/f?x=1")),
            Verdict::Allowed
        );
        assert!(
            matches!(
                l.check(&url("wss://speech.example.net:8443")),
                Verdict::Refused(_)
            ),
            "the suffix itself is not below it"
        );
        assert!(matches!(
            l.check(&url("wss://eu.speech.example.net:443")),
            Verdict::Refused(_)
        ));
        assert!(matches!(
            l.check(&url("wss://evilspeech.example.net:8443")),
            Verdict::Refused(_)
        ));
    }

    #[test]
    fn addresses_and_networks() {
        let l = list(&[
            "ws://10.64.0.0/16:8000",
            "*://[fd00:1::]/32",
            "ws://192.0.2.7",
        ]);
        assert_eq!(l.check(&url("ws://10.64.86.215:8000")), Verdict::Allowed);
        assert!(matches!(
            l.check(&url("ws://10.64.86.215:8001")),
            Verdict::Refused(_)
        ));
        assert!(matches!(
            l.check(&url("ws://10.65.0.1:8000")),
            Verdict::Refused(_)
        ));
        assert_eq!(l.check(&url("wss://[fd00:1::5]:9")), Verdict::Allowed);
        assert_eq!(l.check(&url("ws://192.0.2.7:1234")), Verdict::Allowed);
        // A name matched only by address rules: allowed to the resolved addresses inside them.
        assert_eq!(
            l.check(&url("ws://asr.internal:8000")),
            Verdict::ResolvedWithin(vec![
                cidr("10.64.0.0/16"),
                cidr("fd00:1::/32"),
                cidr("192.0.2.7")
            ])
        );
    }

    #[test]
    fn empty_list_refuses_everything_and_says_why() {
        let l = AllowList::default();
        assert_eq!(
            l.check(&url("wss://169.254.169.254/latest")),
            Verdict::Refused(
                "wss://169.254.169.254:443 matches no [destinations] allow rule".into()
            )
        );
    }

    #[test]
    fn bad_rules_name_the_entry() {
        for (rule, want) in [
            ("asr.example.com", "scheme://host"),
            ("http://asr", "not ws, wss or *"),
            ("ws://10.1.0.0/8", "host bits"),
            ("ws://asr:0", "not 1-65535"),
            ("ws://asr:x", "not 1-65535"),
            ("ws://asr/path", "no path"),
            ("ws://bad_name", "not a DNS name"),
            ("ws://*.", "not a DNS name"),
        ] {
            let e = AllowList::parse(&["ws://ok".into(), rule.into()]).expect_err(rule);
            assert!(e.starts_with("allow[1]"), "{rule}: {e}");
            assert!(e.contains(want), "{rule}: {e}");
        }
    }
}
