//! Test support for the sans-IO cores: a fake clock origin and (below) a two-sided harness.
//!
//! Only compiled for tests. Time in tests is a base `Instant` plus offsets that the test steps
//! explicitly; nothing sleeps.

use std::time::Instant;

/// Origin of a test's fake clock. Reading the real clock once is the only way std offers to get
/// an `Instant`; everything after is `origin + offset`, so tests stay deterministic. This is the
/// single allowed use of `Instant::now` under `core/` (clippy.toml bans it elsewhere).
#[allow(clippy::disallowed_methods)]
pub fn epoch() -> Instant {
    Instant::now()
}
