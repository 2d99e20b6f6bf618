//! Unit tests of config.rs: TOML parsing, validation errors naming the field, defaults.

use super::*;

const GOOD: &str = r#"
[sip]
udp = ["10.77.1.1:5060", "10.77.2.1:5060"]
tcp = ["10.77.1.1:5060"]

[media]
ip = "10.77.1.1"
ports = "30000-39999"

[fork_agent]
socket = "/tmp/fa.sock"
speech_server = "asr"

[security]
controllers = ["10.77.1.2"]

[[route]]
pattern = "2XXX"
next_hop = "10.77.2.2:5060:udp"
bind_sip = "10.77.2.1"
bind_media = "10.77.2.1"

[[route]]
prefix = "9"
next_hop = "10.77.2.2:5060:tcp"
forking = false
"#;

fn errors(text: &str) -> Vec<String> {
    match Settings::from_toml(text) {
        Err(ConfigError::Invalid(e)) => e,
        other => panic!("expected field errors, got {other:?}"),
    }
}

#[test]
fn good_config_builds_the_core_config() {
    let s = Settings::from_toml(GOOD).expect("valid");
    assert_eq!(s.listen.len(), 3);
    assert_eq!(s.core.sip_addr, "10.77.1.1:5060".parse().expect("addr"));
    assert_eq!(s.media_ports, (30000, 39999));
    assert_eq!(s.core.routes.len(), 2);
    let r0 = &s.core.routes[0];
    assert_eq!(r0.pattern, RoutePattern::Pattern("2XXX".into()));
    assert_eq!(
        r0.bind,
        Some(Bind {
            sip_ip: "10.77.2.1".parse().expect("ip"),
            media_ip: "10.77.2.1".parse().expect("ip"),
        })
    );
    assert_eq!(s.core.routes[1].next_hop.transport, Transport::Tcp);
    assert!(!s.core.routes[1].forking);
    assert_eq!(s.media.speech_server, "asr");
    assert_eq!(s.control_socket, PathBuf::from("/tmp/fa.sock"));
}

#[test]
fn each_error_names_its_field() {
    let bad = GOOD
        .replace("10.77.2.2:5060:udp", "10.77.2.2:5060:sctp")
        .replace("30000-39999", "39999-30000")
        .replace("ip = \"10.77.1.1\"", "ip = \"0.0.0.0\"")
        .replace("\"10.77.2.1:5060\"]", "\"nonsense\"]");
    let e = errors(&bad);
    for field in ["route[0].next_hop", "media.ports", "media.ip", "sip.udp[1]"] {
        assert!(
            e.iter().any(|l| l.starts_with(field)),
            "{field} not in {e:?}"
        );
    }
}

#[test]
fn unknown_keys_and_wrong_types_are_syntax_errors_naming_the_key() {
    let e = Settings::from_toml(&GOOD.replace("forking = false", "forking = \"no\""))
        .expect_err("bad type");
    assert!(e.to_string().contains("forking"), "{e}");
    let e = Settings::from_toml(&GOOD.replace("[media]", "[media]\nport = 1"))
        .expect_err("unknown key");
    assert!(e.to_string().contains("port"), "{e}");
}

#[test]
fn tls_listener_needs_tls_section_and_routes_need_listeners() {
    let e = errors(&GOOD.replace("tcp = [\"10.77.1.1:5060\"]", "tls = [\"10.77.1.1:5061\"]"));
    assert!(e.iter().any(|l| l.starts_with("tls:")), "{e:?}");
    assert!(
        e.iter().any(|l| l.starts_with("route[1].next_hop")),
        "{e:?}"
    );
}

#[test]
fn state_defaults_and_validation() {
    let s = Settings::from_toml(GOOD).expect("good");
    assert_eq!(
        s.state.dir.as_deref(),
        Some(std::path::Path::new(DEFAULT_STATE_DIR))
    );
    assert!(s.state.reconcile);
    assert_eq!(s.state.reconcile_grace, Duration::from_secs(30));
    assert_eq!(
        s.state.owner,
        Owner {
            ips: vec!["10.77.1.1".parse().unwrap(), "10.77.2.1".parse().unwrap()],
            first: 30000,
            last: 39999,
        }
    );
    let s = Settings::from_toml(&format!(
        "{GOOD}\n[state]\ndir = \"\"\nreconcile = false\nreconcile_grace_secs = 0\n"
    ))
    .expect("no journal");
    assert_eq!((s.state.dir, s.state.reconcile), (None, false));
    let e = errors(&format!(
        "{GOOD}\n[state]\ndir = \"state\"\nreconcile_grace_secs = -1\n"
    ));
    assert!(
        e.iter().any(|l| l.starts_with("state.dir: \"state\"")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|l| l.starts_with("state.reconcile_grace_secs: -1")),
        "{e:?}"
    );
}

#[test]
fn calls_limits_default_off_and_are_validated() {
    let s = Settings::from_toml(GOOD).expect("valid");
    assert_eq!(s.core.max_call_duration, None);
    assert_eq!(s.core.min_se, Duration::from_secs(90));
    let s = Settings::from_toml(&format!(
        "{GOOD}\n[calls]\nmax_duration_secs = 7200\nmin_se_secs = 1800\n"
    ))
    .expect("valid");
    assert_eq!(s.core.max_call_duration, Some(Duration::from_secs(7200)));
    assert_eq!(s.core.min_se, Duration::from_secs(1800));
    let e = errors(&format!(
        "{GOOD}\n[calls]\nmax_duration_secs = -5\nmin_se_secs = 30\n"
    ));
    assert!(
        e.iter()
            .any(|l| l.starts_with("calls.max_duration_secs: -5")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|l| l.starts_with("calls.min_se_secs: 30")),
        "{e:?}"
    );
    let e = errors(&format!("{GOOD}\n[calls]\nmax_duration_secs = 99999999\n"));
    assert!(
        e.iter().any(|l| l.starts_with("calls.max_duration_secs")),
        "{e:?}"
    );
}

#[test]
fn forks_per_call_default_to_one_and_are_bounded() {
    let s = Settings::from_toml(GOOD).expect("valid");
    assert_eq!(s.core.max_forks_per_call, 1);
    let s = Settings::from_toml(&format!("{GOOD}\n[forking]\nmax_per_call = 3\n")).expect("valid");
    assert_eq!(s.core.max_forks_per_call, 3);
    for bad in ["0", "9", "-1"] {
        let e = errors(&format!("{GOOD}\n[forking]\nmax_per_call = {bad}\n"));
        assert!(
            e.iter()
                .any(|l| l.starts_with(&format!("forking.max_per_call: {bad} is outside 1-8"))),
            "{e:?}"
        );
    }
}

#[test]
fn security_section_is_parsed_and_checked() {
    let s = Settings::from_toml(GOOD).expect("valid");
    assert_eq!(
        s.core.security.controllers,
        vec!["10.77.1.2".parse::<Cidr>().expect("cidr")]
    );
    assert!(s.core.security.trusted_proxies.is_empty());
    let with = |sec: &str| GOOD.replace("controllers = [\"10.77.1.2\"]", sec);
    let s = Settings::from_toml(&with(
        "controllers = [\"10.77.1.0/24\"]\ntrusted_proxies = [\"10.0.0.0/8\", \"fd00::/8\"]",
    ))
    .expect("valid");
    assert_eq!(s.core.security.trusted_proxies.len(), 2);
    let e = errors(&with(
        "controllers = [\"10.77.1.2\", \"nope\"]\ntrusted_proxies = [\"10.1.0.0/8\"]",
    ));
    assert!(
        e.iter()
            .any(|l| l.starts_with("security.controllers[1]: \"nope\"")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|l| l.starts_with("security.trusted_proxies[0]") && l.contains("10.0.0.0/8")),
        "{e:?}"
    );
    // Certificate names need a way to see a certificate.
    let e = errors(&with("controller_tls_names = [\"cvp.example.com\"]"));
    assert!(
        e.iter()
            .any(|l| l.starts_with("security.controller_tls_names: no certificate")),
        "{e:?}"
    );
}

#[test]
fn forking_needs_a_controller_list() {
    let no_section = GOOD.replace("[security]\ncontrollers = [\"10.77.1.2\"]\n", "");
    let e = errors(&no_section);
    assert!(
        e.iter().any(
            |l| l.starts_with("security.controllers: required when forking")
                && l.contains("route[0]")
        ),
        "{e:?}"
    );
    // Without forking on any route, no controller is needed.
    let no_fork = no_section.replace(
        "bind_media = \"10.77.2.1\"\n",
        "bind_media = \"10.77.2.1\"\nforking = false\n",
    );
    let s = Settings::from_toml(&no_fork).expect("no forking, no controllers");
    assert!(s.core.security.controllers.is_empty());
}

#[test]
fn shipped_default_config_is_valid() {
    // The file `cargo xtask install` puts in /etc/xdpfork must start as it is.
    let text = include_str!("../../../dist/config/sip-agent.toml");
    let s = Settings::from_toml(text).expect("dist/config/sip-agent.toml is valid");
    assert!(!s.core.security.controllers.is_empty());
}

#[test]
fn ranges_and_patterns() {
    assert!(parse_range("30000-30001").is_err());
    assert_eq!(parse_range("30000-30003"), Ok((30000, 30003)));
    let e = errors(&GOOD.replace("pattern = \"2XXX\"", "pattern = \"2XXX\"\nprefix = \"2\""));
    assert!(e.iter().any(|l| l.starts_with("route[0]:")), "{e:?}");
    assert!(parse_next_hop("[fd77:2::2]:5060:tcp").is_ok());
    assert!(parse_next_hop("10.0.0.1:5060").is_err());
}

#[test]
fn limits_default_and_each_error_names_its_field() {
    let s = Settings::from_toml(GOOD).expect("valid");
    assert_eq!(s.limits, Limits::default());
    assert_eq!(s.limits.sip.max_per_key, 32);
    assert_eq!(s.limits.sip.max_total, 1024);
    assert_eq!(s.limits.sip.pending_timeout, Some(Duration::from_secs(10)));
    assert_eq!(s.limits.sip.idle_timeout, None);
    assert_eq!(s.limits.max_message, 65536);
    let s = Settings::from_toml(&format!(
        "{GOOD}\n[limits]\nmax_connections_per_address = 8\nmax_connections = 32\nidle_timeout_secs = 600\n"
    ))
    .expect("valid");
    assert_eq!((s.limits.sip.max_per_key, s.limits.sip.max_total), (8, 32));
    assert_eq!(s.limits.sip.idle_timeout, Some(Duration::from_secs(600)));
    for (line, field) in [
        (
            "max_connections_per_address = 0",
            "limits.max_connections_per_address",
        ),
        (
            "max_connections_per_address = 2000",
            "limits.max_connections_per_address",
        ),
        ("max_connections = -1", "limits.max_connections"),
        (
            "first_message_timeout_secs = 0",
            "limits.first_message_timeout_secs",
        ),
        ("idle_timeout_secs = -5", "limits.idle_timeout_secs"),
        ("max_message_bytes = 100", "limits.max_message_bytes"),
        ("admin_max_connections = 0", "limits.admin_max_connections"),
    ] {
        let e = errors(&format!("{GOOD}\n[limits]\n{line}\n"));
        assert!(e.iter().any(|l| l.starts_with(field)), "{line}: {e:?}");
    }
}

#[test]
fn admin_socket_is_off_unless_configured_and_must_be_absolute() {
    assert_eq!(Settings::from_toml(GOOD).expect("good").admin_socket, None);
    let s = Settings::from_toml(&format!(
        "{GOOD}\n[admin]\nsocket = \"{DEFAULT_ADMIN_SOCKET}\"\n"
    ))
    .expect("admin socket");
    assert_eq!(
        s.admin_socket.as_deref(),
        Some(std::path::Path::new(DEFAULT_ADMIN_SOCKET))
    );
    let e = errors(&format!("{GOOD}\n[admin]\nsocket = \"admin.sock\"\n"));
    assert!(
        e.iter()
            .any(|l| l.starts_with("admin.socket: \"admin.sock\"")),
        "{e:?}"
    );
}
