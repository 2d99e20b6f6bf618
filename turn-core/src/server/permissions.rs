//! Permissions and channel bindings of an allocation (RFC 8656 §9, §11, §12).
//!
//! Role: CreatePermission installs or refreshes permissions (peer IP, 300 s); ChannelBind binds
//! a channel number to one peer transport address (600 s) and installs its permission. Peers
//! are checked by the peer policy (`peer_policy.rs`) before anything is installed.
//! Inputs: authenticated CreatePermission / ChannelBind requests on an existing allocation.
//! Outputs: responses, [`Event::PermissionInstalled`] / [`Event::ChannelBound`] for new entries
//! (a refresh emits nothing), and a permission or channel timer per install or refresh
//! (`timers.rs` fires them).

use std::cmp::Reverse;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::{canonical, AllocationHandle, Event, Output, Reply, Server, Timer};
use crate::stun::{self, Message};

#[derive(Debug)]
pub(super) struct Channel {
    pub(super) peer: SocketAddr,
    pub(super) expires: Instant,
}

impl Server {
    /// RFC 8656 §9.2: all peers are checked before any permission is installed.
    pub(super) fn handle_create_permission(
        &mut self,
        now: Instant,
        reply: &Reply,
        msg: &Message<'_>,
        handle: AllocationHandle,
    ) {
        let peers = match msg.xor_peer_addresses() {
            Ok(p) if !p.is_empty() => p,
            _ => return self.send_error(now, reply, 400, &[]),
        };
        let Some(relay) = self.allocations.get(&handle).map(|a| a.relay) else {
            return self.send_error(now, reply, 437, &[]);
        };
        if let Some(code) = peers.iter().find_map(|p| self.check_peer(relay, *p)) {
            return self.send_error(now, reply, code, &[]);
        }
        for p in peers {
            self.install_permission(now, handle, canonical(p.ip()));
        }
        self.send_success(now, reply, &[]);
    }

    fn install_permission(&mut self, now: Instant, handle: AllocationHandle, ip: IpAddr) {
        let expires = now + self.config.permission_lifetime;
        let Some(a) = self.allocations.get_mut(&handle) else {
            return;
        };
        if a.permissions.insert(ip, expires).is_none() {
            self.out
                .push_back(Output::Event(Event::PermissionInstalled {
                    allocation: handle,
                    client: a.tuple,
                    relay: a.relay,
                    peer: ip,
                }));
        }
        self.timers
            .push(Reverse((expires, Timer::Permission(handle, ip))));
    }

    /// RFC 8656 §11.2.
    pub(super) fn handle_channel_bind(
        &mut self,
        now: Instant,
        reply: &Reply,
        msg: &Message<'_>,
        handle: AllocationHandle,
    ) {
        let (Ok(Some(channel)), Ok(Some(peer))) = (msg.channel_number(), msg.xor_peer_address())
        else {
            return self.send_error(now, reply, 400, &[]);
        };
        let max = if self.config.rfc5766_channels {
            stun::CHANNEL_MAX_RFC5766
        } else {
            stun::CHANNEL_MAX
        };
        if !(stun::CHANNEL_MIN..=max).contains(&channel) {
            return self.send_error(now, reply, 400, &[]);
        }
        let peer = SocketAddr::new(canonical(peer.ip()), peer.port());
        let Some(a) = self.allocations.get(&handle) else {
            return self.send_error(now, reply, 437, &[]);
        };
        // A channel is bound to one peer and a peer to one channel for the binding's life.
        let channel_taken = a.channels.get(&channel).is_some_and(|c| c.peer != peer);
        let peer_taken = a.channel_by_peer.get(&peer).is_some_and(|c| *c != channel);
        if channel_taken || peer_taken {
            return self.send_error(now, reply, 400, &[]);
        }
        if let Some(code) = self.check_peer(a.relay, peer) {
            return self.send_error(now, reply, code, &[]);
        }
        let expires = now + self.config.channel_lifetime;
        let Some(a) = self.allocations.get_mut(&handle) else {
            return;
        };
        let new = a
            .channels
            .insert(channel, Channel { peer, expires })
            .is_none();
        a.channel_by_peer.insert(peer, channel);
        if new {
            self.out.push_back(Output::Event(Event::ChannelBound {
                allocation: handle,
                client: a.tuple,
                relay: a.relay,
                peer,
                channel,
            }));
        }
        self.timers
            .push(Reverse((expires, Timer::Channel(handle, channel))));
        // ChannelBind also installs or refreshes the permission (RFC 8656 §11.2).
        self.install_permission(now, handle, peer.ip());
        self.send_success(now, reply, &[]);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;

    #[test]
    fn channel_bind_errors() {
        let mut f = fx();
        f.allocate("turnuser", "cisco");
        let p1 = addr("192.0.2.7:5000");
        let p2 = addr("192.0.2.8:5000");
        let bind = |ch, p| [Attribute::ChannelNumber(ch), Attribute::XorPeerAddress(p)];
        assert_eq!(
            f.authed(Method::CHANNEL_BIND, &bind(0x3FFF, p1)).code,
            Some(400)
        );
        assert_eq!(
            f.authed(Method::CHANNEL_BIND, &bind(0x5000, p1)).code,
            Some(400)
        );
        assert_eq!(
            f.authed(Method::CHANNEL_BIND, &[Attribute::ChannelNumber(0x4000)])
                .code,
            Some(400)
        );
        assert_eq!(
            f.authed(Method::CHANNEL_BIND, &bind(0x4000, addr("127.0.0.1:1")))
                .code,
            Some(403)
        );
        assert_eq!(
            f.authed(Method::CHANNEL_BIND, &bind(0x4000, p1)).class,
            Class::Success
        );
        // Refreshing the same binding is fine; rebinding either side is not.
        assert_eq!(
            f.authed(Method::CHANNEL_BIND, &bind(0x4000, p1)).class,
            Class::Success
        );
        assert_eq!(
            f.authed(Method::CHANNEL_BIND, &bind(0x4000, p2)).code,
            Some(400)
        );
        assert_eq!(
            f.authed(Method::CHANNEL_BIND, &bind(0x4001, p1)).code,
            Some(400)
        );
    }

    #[test]
    fn rfc5766_channel_numbers_bind_only_when_enabled() {
        let peer = addr("192.0.2.7:5000");
        let bind = [
            Attribute::ChannelNumber(0x7ABC),
            Attribute::XorPeerAddress(peer),
        ];
        let mut strict = fx();
        strict.allocate("turnuser", "cisco");
        assert_eq!(strict.authed(Method::CHANNEL_BIND, &bind).code, Some(400));

        let mut f = fx_with(
            ServerConfig {
                rfc5766_channels: true,
                ..config()
            },
            PortRangeAllocator::DEFAULT_PORTS,
        );
        let relay = f.allocate("turnuser", "cisco");
        let r = f.authed(Method::CHANNEL_BIND, &bind);
        assert_eq!(r.class, Class::Success, "{r:?}");
        let mut cd = Vec::new();
        stun::encode_channel_data(0x7ABC, b"media", false, &mut cd).expect("valid");
        f.server
            .handle_channel_data(f.now, client(), listen(), Transport::Udp, &cd);
        let t = transmits(&f.drain());
        assert_eq!(
            (t[0].from, t[0].to, &t[0].bytes[..]),
            (relay, peer, &b"media"[..])
        );
        f.server.handle_peer_data(f.now, relay, peer, b"back");
        let t = transmits(&f.drain());
        assert_eq!(t[0].bytes, [0x7A, 0xBC, 0, 4, b'b', b'a', b'c', b'k']);
        // 0x8000 and above is not ChannelData at all.
        assert_eq!(
            f.authed(
                Method::CHANNEL_BIND,
                &[
                    Attribute::ChannelNumber(0x8000),
                    Attribute::XorPeerAddress(peer)
                ]
            )
            .code,
            Some(400)
        );
    }
}
