//! Our own side of every message: fresh tags and branches from the injected RNG, the local
//! addresses a leg uses (the config's, or the route's bind), Via and Contact values.
//!
//! Role: helpers for the other parts of the B2BUA; no state of their own.
//! Inputs: a call and leg, or a transport and bind. Outputs: header values and addresses.

use std::net::SocketAddr;

use super::{B2bua, Bind, CallHandle, Leg, PortAllocator};
use crate::core::message;
use crate::core::transaction::Transport;

impl<P: PortAllocator> B2bua<P> {
    /// A fresh random token: 128 bits from the injected RNG, as 32 hex digits. Used for tags,
    /// branches and Call-IDs; RFC 3261 §19.3 asks for at least 32 random bits in a tag, §8.1.1.4
    /// for Call-IDs that are hard to guess. 128 bits keep a full dialog id unguessable even when
    /// the peer's own tag and Call-ID are predictable.
    pub(super) fn token(&mut self) -> String {
        let mut b = [0u8; 16];
        self.rng.fill_bytes(&mut b);
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// The addresses `leg` of `call` uses (the config's defaults once the call is gone).
    pub(super) fn bind_of(&self, call: CallHandle, leg: Leg) -> Bind {
        self.calls
            .get(&call)
            .map(|c| c.binds[leg as usize])
            .unwrap_or(self.default_bind())
    }

    pub(super) fn default_bind(&self) -> Bind {
        Bind {
            sip_ip: self.cfg.sip_addr.ip(),
            media_ip: self.cfg.media_ip,
        }
    }

    /// Our SIP address on `transport` from `bind`.
    fn sip_addr(&self, transport: Transport, bind: Bind) -> SocketAddr {
        let port = self
            .cfg
            .transport_ports
            .iter()
            .find(|(t, _)| *t == transport)
            .map(|(_, p)| *p)
            .unwrap_or(self.cfg.sip_addr.port());
        SocketAddr::new(bind.sip_ip, port)
    }

    /// The transport towards `leg`'s peer (UDP once the call is gone).
    pub(super) fn leg_transport(&self, call: CallHandle, leg: Leg) -> Transport {
        self.calls
            .get(&call)
            .map_or(Transport::Udp, |c| c.dialog_peer(leg).transport)
    }

    /// A fresh Via for a request we send on `leg`.
    pub(super) fn leg_via(&mut self, call: CallHandle, leg: Leg) -> String {
        let transport = self.leg_transport(call, leg);
        self.via(transport, self.bind_of(call, leg))
    }

    pub(super) fn via(&mut self, transport: Transport, bind: Bind) -> String {
        let t = match transport {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
            Transport::Ws => "WS",
            Transport::Wss => "WSS",
        };
        let token = self.token();
        format!(
            "SIP/2.0/{t} {};branch={}{token}",
            self.sip_addr(transport, bind),
            message::BRANCH_COOKIE
        )
    }

    pub(super) fn contact(&self, transport: Transport, bind: Bind) -> String {
        let param = match transport {
            Transport::Udp => "",
            Transport::Tcp => ";transport=tcp",
            Transport::Tls => ";transport=tls",
            Transport::Ws | Transport::Wss => ";transport=ws",
        };
        format!("<sip:xdpfork@{}{param}>", self.sip_addr(transport, bind))
    }
}
