//! turn-server config unit tests: every field's validation names the field.

use super::*;
use crate::config::tempdir;

fn with_users(extra: &str) -> (tempdir::Dir, String) {
    let dir = tempdir::Dir::new();
    let users = dir.path.join("users");
    std::fs::write(&users, "turnuser:cisco\n").expect("write users file");
    let text = format!(
        r#"realm = "example.org"
[listen]
udp = ["10.77.1.1:3478"]
tcp = ["10.77.1.1:3478"]
[auth]
users_file = "{}"
[relay]
ipv4 = "10.77.2.1"
{extra}"#,
        users.display()
    );
    (dir, text)
}

fn field_of(r: Result<Config, ConfigError>) -> String {
    match r {
        Err(ConfigError::Invalid { field, .. }) => field,
        Err(e) => panic!("expected a field error, got {e}"),
        Ok(_) => panic!("expected an error"),
    }
}

#[test]
fn minimal_config_gets_defaults() {
    let (_d, text) = with_users("");
    let c = Config::parse(&text).expect("valid");
    assert_eq!((c.relay.min_port, c.relay.max_port), (24000, 29999));
    assert_eq!(c.server.user_quota, None);
    assert_eq!(c.server.nonce_lifetime, Duration::from_secs(600));
    assert!(c.server.unauthenticated_rate.is_some());
    assert!(c
        .server
        .server_addresses
        .contains(&"10.77.1.1".parse().expect("ip")));
    assert!(c
        .server
        .server_addresses
        .contains(&"10.77.2.1".parse().expect("ip")));
    assert_eq!(c.control_socket, PathBuf::from(DEFAULT_CONTROL_SOCKET));
    assert!(!c.server.rfc5766_channels);
    let (_d, text) = with_users("[compat]\nrfc5766_channels = true\n");
    assert!(Config::parse(&text).expect("valid").server.rfc5766_channels);
}

#[test]
fn limits_default_and_errors_name_the_field() {
    let (_d, text) = with_users("");
    let l = Config::parse(&text).expect("valid").limits;
    assert_eq!((l.streams.max_per_key, l.streams.max_total), (64, 4096));
    assert_eq!(l.streams.pending_timeout, Some(Duration::from_secs(10)));
    assert_eq!(l.max_frame, 8192);
    for (lines, field) in [
        (
            "max_connections_per_address = 0",
            "limits.max_connections_per_address",
        ),
        (
            "max_connections_per_address = 10\nmax_connections = 5",
            "limits.max_connections_per_address",
        ),
        ("max_connections = 0", "limits.max_connections"),
        (
            "unauthenticated_timeout_secs = 0",
            "limits.unauthenticated_timeout_secs",
        ),
        ("max_frame_bytes = 100", "limits.max_frame_bytes"),
        ("max_frame_bytes = 100000", "limits.max_frame_bytes"),
    ] {
        let (_d, text) = with_users(&format!("[limits]\n{lines}\n"));
        assert_eq!(field_of(Config::parse(&text)), field, "{lines}");
    }
}

#[test]
fn errors_name_the_field() {
    let (_d, text) = with_users("[peers]\nallowed = [\"10.77.0.0/16\", \"10.0.0.0/99\"]\n");
    assert_eq!(field_of(Config::parse(&text)), "peers.allowed[1]");
    let (_d, text) = with_users("min_port = 30000\nmax_port = 29999\n");
    assert_eq!(field_of(Config::parse(&text)), "relay.min_port");
    let (_d, text) = with_users("[quotas]\nuser = 0\n");
    assert_eq!(field_of(Config::parse(&text)), "quotas.user");
    let (_d, text) = with_users("[lifetimes]\ndefault_secs = 4000\n");
    assert_eq!(field_of(Config::parse(&text)), "lifetimes.default_secs");
    let (_d, text) = with_users("");
    let text = text.replace("[listen]", "[listen]\ntls = [\"10.77.1.1:5349\"]");
    assert_eq!(field_of(Config::parse(&text)), "tls");
}

#[test]
fn missing_users_file_and_no_credentials_are_rejected() {
    let (_d, text) = with_users("");
    let gone = text.replace("users_file = \"", "users_file = \"/nonexistent");
    assert_eq!(field_of(Config::parse(&gone)), "auth.users_file");
    let none = text
        .lines()
        .filter(|l| !l.starts_with("users_file"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(field_of(Config::parse(&none)), "auth");
}

#[test]
fn rest_secret_is_redacted_and_exclusive() {
    let (d, text) = with_users("");
    let t = text.replace("[auth]", "[auth]\nrest_secret = \"hunter2\"");
    let c = Config::parse(&t).expect("valid");
    assert!(!format!("{c:?}").contains("hunter2"));
    let secret_file = d.path.join("secret");
    std::fs::write(&secret_file, "s3\n").expect("write");
    let both = t.replace(
        "[auth]",
        &format!("[auth]\nrest_secret_file = \"{}\"", secret_file.display()),
    );
    assert_eq!(field_of(Config::parse(&both)), "auth.rest_secret_file");
}

#[test]
fn unknown_fields_and_wildcard_relay_are_rejected() {
    let (_d, text) = with_users("");
    assert!(matches!(
        Config::parse(&text.replace("[relay]", "[relay]\nport = 1")),
        Err(ConfigError::Parse { .. })
    ));
    let t = text.replace("ipv4 = \"10.77.2.1\"", "ipv4 = \"0.0.0.0\"");
    assert_eq!(field_of(Config::parse(&t)), "relay");
}

#[test]
fn offload_section_is_optional_and_validated() {
    let (_d, text) = with_users("");
    assert_eq!(Config::parse(&text).expect("valid").offload, None);
    let (_d, text) =
        with_users("[offload]\nfork_agent_socket = \"/run/xdpfork/fork-agent.sock\"\n");
    let o = Config::parse(&text)
        .expect("valid")
        .offload
        .expect("offload");
    assert_eq!(
        o.fork_agent_socket,
        PathBuf::from("/run/xdpfork/fork-agent.sock")
    );
    assert_eq!(o.counters_interval, Duration::from_secs(2));
    let (_d, text) = with_users("[offload]\nfork_agent_socket = \"fork-agent.sock\"\n");
    assert_eq!(field_of(Config::parse(&text)), "offload.fork_agent_socket");
    let (_d, text) =
        with_users("[offload]\nfork_agent_socket = \"/run/f.sock\"\ncounters_interval_ms = 0\n");
    assert_eq!(
        field_of(Config::parse(&text)),
        "offload.counters_interval_ms"
    );
    let (_d, text) = with_users("[offload]\nfork_agent_socket = \"/run/f.sock\"\n");
    let wildcard = text.replace("udp = [\"10.77.1.1:3478\"]", "udp = [\"0.0.0.0:3478\"]");
    assert_eq!(field_of(Config::parse(&wildcard)), "listen.udp");
    let tcp_only = text.replace("udp = [\"10.77.1.1:3478\"]\n", "");
    assert_eq!(field_of(Config::parse(&tcp_only)), "offload");
    assert!(matches!(
        Config::parse(&text.replace("[offload]", "[offload]\nsocket = 1")),
        Err(ConfigError::Parse { .. })
    ));
}

#[test]
fn tls_files_are_loaded_and_checked() {
    let (d, text) = with_users("");
    let ck = rcgen::generate_simple_self_signed(vec!["turn.example.org".into()]).expect("rcgen");
    let (cert, key) = (d.path.join("cert.pem"), d.path.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).expect("write");
    std::fs::write(&key, ck.key_pair.serialize_pem()).expect("write");
    let t = text.replace("[listen]", "[listen]\ntls = [\"10.77.1.1:5349\"]")
        + &format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        );
    assert!(Config::parse(&t).expect("valid").tls.is_some());
    std::fs::write(&key, "not a key").expect("write");
    assert_eq!(field_of(Config::parse(&t)), "tls.key");
}
