//! Privileged end-to-end tests: one binary (one link, one copy of the harness) holding a module
//! per scenario. `cargo xtask test` runs it as root with `--test-threads=1`; filter by module
//! name as before, e.g. `cargo xtask test sip_hold_resume`.

mod install_support;
mod sip_support;
mod turn_support;

mod agent_restart;
mod check_kernel;
mod fallback_fork;
mod fork_isolation;
mod fork_pool_failures;
mod fork_proxy;
mod fork_session_order;
mod fork_tls;
mod install_files;
mod install_restart_caps;
mod install_syscalls;
mod install_units;
mod kernel_packets_capture;
mod kernel_packets_parse;
mod kernel_packets_relay;
mod kernel_packets_rtp;
mod kernel_relay_fork;
mod next_hop_mac_change;
mod passthrough_and_errors;
mod sip_call_counts;
mod sip_callee_bye;
mod sip_cancel;
mod sip_codec_change;
mod sip_codec_g729;
mod sip_fork_info;
mod sip_fork_reinvite;
mod sip_fork_stop;
mod sip_hold_resume;
mod sip_hold_zero_address;
mod sip_info_no_dialog;
mod sip_info_retransmit;
mod sip_json_parse_failure;
mod sip_json_port_string;
mod sip_mixed_carriers_update;
mod sip_session_timeout;
mod sip_tcp_call;
mod sip_tls_call;
mod sip_tls_full_call;
mod sip_ws_call;
mod turn_denied_peer;
mod turn_kernel_relay;
mod turn_offload;
mod turn_offload_restart;
mod turn_quota;
mod turn_stale_nonce;
mod turn_tampered_integrity;
mod turn_tcp_long_term;
mod turn_tls_long_term;
mod turn_udp_long_term;
mod turn_wrong_password;
