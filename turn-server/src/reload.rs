//! What a SIGHUP applies: the decision, kept apart from the signal and the files.
//!
//! Role: compare the running configuration with the file read again, and say what to swap in
//! and what only a restart applies. Only authentication reloads here: the users file and the REST
//! shared secret (`[auth]`). The core swaps its [`Credentials`] in one step (one task owns
//! it), so live allocations keep relaying and every request after the swap is judged by the
//! new set. Everything else is bound to sockets, the port allocator or the core's timers at
//! start; a change there is reported by field name and otherwise ignored until a restart.
//! The realm is also restart-only: clients derive their keys from it. `[log] level` also
//! reloads, applied by the shell through daemon-ops' `LogControl` (as in every daemon).
//! Inputs: the running [`Config`] and the one just loaded (validated like at start).
//! Outputs: a [`Reload`].

use turn_core::Credentials;

use crate::config::Config;

/// What a reload does.
#[derive(Debug, PartialEq, Eq)]
pub struct Reload {
    /// New credentials to swap in; `None` when they did not change (or cannot: the realm
    /// changed).
    pub credentials: Option<Credentials>,
    /// Config fields that changed but apply only at a restart, in file order.
    pub needs_restart: Vec<&'static str>,
}

/// Decides what `new` changes in a server running `running`.
pub fn plan(running: &Config, new: Config) -> Reload {
    let mut needs_restart = Vec::new();
    let mut changed = |field: &'static str, differs: bool| {
        if differs {
            needs_restart.push(field);
        }
    };
    let realm_changed = running.credentials.realm() != new.credentials.realm();
    changed("realm", realm_changed);
    changed("listen", running.listen != new.listen);
    changed("relay", running.relay != new.relay);
    // Quotas, peers, lifetimes, rate limit, software: the core validated them once.
    changed("server settings", running.server != new.server);
    changed(
        "control.socket",
        running.control_socket != new.control_socket,
    );
    changed("offload", running.offload != new.offload);
    changed("limits", running.limits != new.limits);
    changed(
        "metrics.listen",
        running.metrics_listen != new.metrics_listen,
    );
    let credentials =
        (!realm_changed && running.credentials != new.credentials).then_some(new.credentials);
    Reload {
        credentials,
        needs_restart,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::tempdir::Dir;

    /// A config with `users` as its users file, `auth` lines and `extra` sections.
    fn config(dir: &Dir, users: &str, auth: &str, extra: &str) -> Config {
        let path = dir.path.join("users");
        std::fs::write(&path, users).expect("write users file");
        Config::parse(&format!(
            "realm = \"example.org\"\n[listen]\nudp = [\"127.0.0.1:3478\"]\n[relay]\nipv4 = \"127.0.0.1\"\n\
             [auth]\nusers_file = \"{}\"\n{auth}\n{extra}",
            path.display()
        ))
        .expect("valid config")
    }

    #[test]
    fn new_users_and_secret_are_swapped_in() {
        let d = Dir::new();
        let running = config(&d, "turnuser:cisco\n", "rest_secret = \"a\"", "");
        let r = plan(
            &running,
            config(&d, "carol:pw\n", "rest_secret = \"b\"", ""),
        );
        assert!(r.needs_restart.is_empty(), "{r:?}");
        let creds = r.credentials.expect("changed credentials are swapped");
        assert_eq!(
            creds,
            config(&d, "carol:pw\n", "rest_secret = \"b\"", "").credentials
        );
        assert_ne!(creds, running.credentials);
    }

    #[test]
    fn unchanged_file_swaps_nothing() {
        let d = Dir::new();
        let running = config(&d, "turnuser:cisco\n", "", "");
        let r = plan(&running, config(&d, "turnuser:cisco\n", "", ""));
        assert_eq!(
            r,
            Reload {
                credentials: None,
                needs_restart: vec![]
            }
        );
    }

    #[test]
    fn restart_only_changes_are_named_and_credentials_still_swap() {
        let d = Dir::new();
        let running = config(&d, "turnuser:cisco\n", "", "");
        let mut new = config(
            &d,
            "turnuser:other\n",
            "",
            "[quotas]\nuser = 3\n[limits]\nmax_connections = 10000\n",
        );
        new.listen.udp = vec!["127.0.0.1:3479".parse().expect("address")];
        let r = plan(&running, new);
        assert_eq!(r.needs_restart, ["listen", "server settings", "limits"]);
        assert!(r.credentials.is_some());
    }

    #[test]
    fn a_new_realm_needs_a_restart_and_keeps_the_running_credentials() {
        let d = Dir::new();
        let running = config(&d, "turnuser:cisco\n", "", "");
        let mut new = config(&d, "carol:pw\n", "", "");
        new.credentials = Credentials::new("other.example");
        let r = plan(&running, new);
        assert_eq!(r.needs_restart, ["realm"]);
        assert_eq!(r.credentials, None);
    }
}
