//! `ws://` / `wss://` URLs of speech servers (RFC 6455 §3), parsed once and checked.
//!
//! Input: the URL text from the config or a fork request. Output: [`WsUrl`] with scheme, host
//! (a DNS name, an IPv4 literal, or a bracketed IPv6 literal), port (default 80 for ws, 443 for
//! wss) and the request target sent in the upgrade's GET line. Pure.

use std::net::IpAddr;

/// A parsed WebSocket URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WsUrl {
    /// `wss` (TLS) rather than `ws`.
    pub secure: bool,
    /// Host name or IP literal, without brackets.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Path and query, starting with `/`.
    pub target: String,
}

impl WsUrl {
    /// Parses and checks `text`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<WsUrl, String> {
        let (secure, rest) = if let Some(r) = text.strip_prefix("ws://") {
            (false, r)
        } else if let Some(r) = text.strip_prefix("wss://") {
            (true, r)
        } else {
            return Err("must start with ws:// or wss://".into());
        };
        if rest.contains('#') {
            return Err("must not have a fragment (RFC 6455 §3)".into());
        }
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(split);
        if authority.contains('@') {
            return Err("must not carry user information".into());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or("unclosed IPv6 bracket")?;
            (h.to_owned(), after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (authority.to_owned(), None),
            }
        };
        if host.is_empty() {
            return Err("has no host".into());
        }
        if authority.starts_with('[') && host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("`{host}` is not an IPv6 address"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("port `{p}` is not 1-65535"))?,
            None if secure => 443,
            None => 80,
        };
        let target = if target.is_empty() {
            "/".to_owned()
        } else if target.starts_with('?') {
            format!("/{target}")
        } else {
            target.to_owned()
        };
        Ok(WsUrl {
            secure,
            host,
            port,
            target,
        })
    }

    /// True when the host is an IP literal (no SNI is sent for it).
    pub fn host_is_ip(&self) -> bool {
        self.host.parse::<IpAddr>().is_ok()
    }

    /// `host:port` as shown by `show stream-service server` (IPv6 in brackets).
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The URL again, normalised.
    pub fn to_url(&self) -> String {
        format!(
            "{}://{}{}",
            if self.secure { "wss" } else { "ws" },
            self.host_port(),
            self.target
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_defaults_and_literals() {
        let u = WsUrl::parse("wss://speech.example.com/fork?x=1").expect("ok");
        assert_eq!(
            (u.secure, u.host.as_str(), u.port, u.target.as_str()),
            (true, "speech.example.com", 443, "/fork?x=1")
        );
        let u = WsUrl::parse("ws://10.0.0.1:9000").expect("ok");
        assert_eq!(
            (u.port, u.target.as_str(), u.host_is_ip()),
            (9000, "/", true)
        );
        let u = WsUrl::parse("ws://[fd00::1]:81/a").expect("ok");
        assert_eq!(
            (u.host.as_str(), u.host_port()),
            ("fd00::1", "[fd00::1]:81".into())
        );
        assert_eq!(u.to_url(), "ws://[fd00::1]:81/a");
    }

    #[test]
    fn rejects_bad_urls_with_a_reason() {
        for (bad, why) in [
            ("http://x", "ws://"),
            ("ws:///a", "no host"),
            ("ws://h:0/", "port"),
            ("ws://h:99999/", "port"),
            ("ws://u@h/", "user"),
            ("ws://h/#f", "fragment"),
            ("ws://[zz]/", "IPv6"),
        ] {
            let e = WsUrl::parse(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
