//! `Pii<T>`: wraps client and peer addresses (and usernames) in logs.
//!
//! Role: addresses identify callers, so logs at debug level and above print them only when the
//! operator asked for it (`turn-server run --log-pii`), in the spirit of str0m's `Pii`.
//! Inputs: [`set_enabled`] once at start. Outputs: `Display` that prints the value or `<pii>`.

use std::{
    fmt,
    sync::atomic::{AtomicBool, Ordering},
};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether `Pii` values are printed; set once at start.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// A value that is personal data when logged.
pub struct Pii<T>(pub T);

impl<T: fmt::Display> fmt::Display for Pii<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if ENABLED.load(Ordering::Relaxed) {
            self.0.fmt(f)
        } else {
            f.write_str("<pii>")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_unless_enabled() {
        set_enabled(false);
        assert_eq!(Pii("10.0.0.1").to_string(), "<pii>");
        set_enabled(true);
        assert_eq!(Pii("10.0.0.1").to_string(), "10.0.0.1");
        set_enabled(false);
    }
}
