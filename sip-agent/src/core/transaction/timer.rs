//! Transaction timers, named and valued as in RFC 3261 §17 and table 4 (§A), plus RFC 6026's
//! Timer L and M for the "Accepted" states.

use std::time::Duration;

/// RTT estimate, RFC 3261 §17.1.1.1 (table 4: 500 ms default).
pub const T1: Duration = Duration::from_millis(500);
/// Maximum retransmit interval for non-INVITE requests and INVITE responses (table 4: 4 s).
pub const T2: Duration = Duration::from_secs(4);
/// Maximum time a message remains in the network (table 4: 5 s).
pub const T4: Duration = Duration::from_secs(5);

/// Every transaction timer. Each transaction holds an `[Option<Instant>; Timer::COUNT]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// INVITE client: request retransmit, starts at T1 and doubles (§17.1.1.2, unreliable only).
    A,
    /// INVITE client: transaction timeout, 64*T1 (§17.1.1.2).
    B,
    /// INVITE client: wait time for response retransmits in Completed, 32 s unreliable / 0
    /// reliable (§17.1.1.2, table 4 ">32s").
    D,
    /// Non-INVITE client: request retransmit, T1 doubling up to T2 (§17.1.2.2, unreliable only).
    E,
    /// Non-INVITE client: transaction timeout, 64*T1 (§17.1.2.2).
    F,
    /// INVITE server: final response retransmit, T1 doubling up to T2 (§17.2.1, unreliable
    /// only). Also paces 2xx retransmission in Accepted (§13.3.1.4 uses the same schedule).
    G,
    /// INVITE server: wait for ACK, 64*T1 (§17.2.1).
    H,
    /// INVITE server: wait for ACK retransmits in Confirmed, T4 unreliable / 0 reliable (§17.2.1).
    I,
    /// Non-INVITE server: wait for request retransmits in Completed, 64*T1 unreliable / 0
    /// reliable (§17.2.2).
    J,
    /// Non-INVITE client: wait for response retransmits in Completed, T4 unreliable / 0 reliable
    /// (§17.1.2.2).
    K,
    /// INVITE server in Accepted: absorb retransmits after a 2xx, 64*T1 (RFC 6026 §8.7).
    L,
    /// INVITE client in Accepted: accept 2xx retransmits from other forks, 64*T1 (RFC 6026 §8.4).
    M,
}

impl Timer {
    /// Size of a per-transaction timer table.
    pub const COUNT: usize = 12;

    /// Index into the timer table.
    pub fn index(self) -> usize {
        self as usize
    }

    /// All timers, in table order.
    pub const ALL: [Timer; Self::COUNT] = [
        Self::A,
        Self::B,
        Self::D,
        Self::E,
        Self::F,
        Self::G,
        Self::H,
        Self::I,
        Self::J,
        Self::K,
        Self::L,
        Self::M,
    ];
}

/// 64*T1 (timers B, F, H, J, L, M).
pub fn t1x64() -> Duration {
    T1 * 64
}

/// Timer D: "at least 32 seconds for unreliable transports" (§17.1.1.2).
pub const TIMER_D: Duration = Duration::from_secs(32);
