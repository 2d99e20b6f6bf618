//! Setup unit tests: the probe, the package lists and the cached steps.

use super::*;

const NIGHTLY_VV: &str = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\n\
    commit-hash: e50aa6fba4e63ab34c72bf9acfd2c307c1155d1a\ncommit-date: 2026-05-19\n\
    host: x86_64-unknown-linux-gnu\nrelease: 1.97.0-nightly\nLLVM version: 22.1.4\n";

#[test]
fn rustc_vv_gives_release_and_llvm_major() {
    let info = parse_rustc_vv(NIGHTLY_VV).expect("parses");
    assert_eq!(info.release, "1.97.0-nightly");
    assert_eq!(info.llvm_version, "22.1.4");
    assert_eq!(info.llvm_major, 22);
}

#[test]
fn rustc_vv_without_llvm_line_is_rejected() {
    assert_eq!(parse_rustc_vv("rustc 1.0.0\nrelease: 1.0.0\n"), None);
    assert_eq!(parse_rustc_vv("release: 1.0.0\nLLVM version: x.1\n"), None);
}

#[test]
fn dpkg_status_installed_held_and_removed() {
    let out = "iproute2\tinstall ok installed\n\
               sox\thold ok installed\n\
               coturn\tdeinstall ok config-files\n\
               kmod\tunknown ok not-installed\n\
               tcpdump\tinstall ok half-configured\n";
    let wanted = ["iproute2", "sox", "coturn", "kmod", "tcpdump", "tinyproxy"];
    assert_eq!(
        parse_dpkg_missing(out, &wanted),
        vec!["coturn", "kmod", "tcpdump", "tinyproxy"]
    );
}

#[test]
fn dpkg_name_must_match_exactly() {
    let out = "iproute2-doc\tinstall ok installed\nlibsox3:amd64\tinstall ok installed\n";
    assert_eq!(
        parse_dpkg_missing(out, &["iproute2", "libsox3"]),
        vec!["iproute2"]
    );
}

#[test]
fn python_packages_need_the_pinned_version() {
    let wanted = [
        ("websockets", "17.4", ""),
        ("numpy", "2.4.6", ""),
        ("x", "1", ""),
    ];
    let out = "websockets 17.4\nnumpy 2.4.5\nx -\n";
    assert_eq!(
        parse_python_missing(out, &wanted),
        vec!["numpy==2.4.6", "x==1"]
    );
    assert_eq!(
        parse_python_missing("", &wanted[..1]),
        vec!["websockets==17.4"]
    );
    assert!(parse_python_missing("websockets 17.4\n", &wanted[..1]).is_empty());
}

#[test]
fn bpffs_detected_only_on_sys_fs_bpf_with_bpf_type() {
    let mounted = "sysfs /sys sysfs rw,nosuid 0 0\nbpf /sys/fs/bpf bpf rw,relatime 0 0\n";
    assert!(bpffs_mounted(mounted));
    let tmpfs = "none /sys/fs/bpf tmpfs rw 0 0\nbpf /mnt/bpf bpf rw 0 0\n";
    assert!(!bpffs_mounted(tmpfs));
    assert!(!bpffs_mounted(""));
}

#[test]
fn effective_uid_is_second_column() {
    let status = "Name:\tcargo\nUid:\t1000\t0\t0\t0\nGid:\t0\t0\t0\t0\n";
    assert_eq!(effective_uid(status), Some(0));
    assert_eq!(effective_uid("Name:\tx\n"), None);
}

#[test]
fn cache_root_follows_xdg_then_home() {
    assert_eq!(
        cache_root(Some("/x".into()), Some("/root".into())),
        Some(PathBuf::from("/x/xdpfork"))
    );
    assert_eq!(
        cache_root(Some("".into()), Some("/root".into())),
        Some(PathBuf::from("/root/.cache/xdpfork"))
    );
    assert_eq!(cache_root(None, None), None);
}

#[test]
fn libllvm_glob_matches_versioned_names_only() {
    assert!(is_libllvm_name(
        "libLLVM.so.22.1-rust-1.97.0-nightly".as_ref()
    ));
    assert!(!is_libllvm_name("libLLVM.so".as_ref()));
    assert!(!is_libllvm_name("libLLVM.so.".as_ref()));
    assert!(!is_libllvm_name(
        "libLLVM-22-rust-1.97.0-nightly.so".as_ref()
    ));
}

#[test]
fn missing_items_say_how_to_get_them() {
    let text = Missing::Packages(vec!["kmod", "coturn"]).to_string();
    assert!(text.contains("apt-get install kmod coturn"), "{text}");
    assert!(Missing::RustSrc
        .to_string()
        .contains("rustup component add rust-src"));
    let text = Missing::PythonPackages(vec!["websockets==17.4".into()]).to_string();
    assert!(
        text.contains("python3 -m pip install websockets==17.4"),
        "{text}"
    );
}
