//! Interface plumbing through iproute2: interface indexes, the fork veth pair, and managed
//! neighbour entries so the kernel relay can resolve next hops before the first packet.

use std::{net::IpAddr, process::Command};

use anyhow::{bail, Context, Result};

/// ifindex of `name` in this network namespace.
pub fn ifindex(name: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(name).with_context(|| {
        format!("interface `{name}` does not exist in this network namespace (check `ip link`)")
    })
}

fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Make sure the fork veth pair `name` / `peer` exists and both ends are up. True when this call
/// created it.
pub fn ensure_fork_veth(name: &str, peer: &str) -> Result<bool> {
    let mut created = false;
    if nix::net::if_::if_nametoindex(name).is_err() {
        ip(&["link", "add", name, "type", "veth", "peer", "name", peer])
            .with_context(|| format!("creating fork veth pair {name}/{peer}"))?;
        created = true;
    }
    ip(&["link", "set", name, "up"])?;
    ip(&["link", "set", peer, "up"])?;
    Ok(created)
}

/// Delete a link (for a veth, both ends go).
pub fn delete_link(name: &str) -> Result<()> {
    ip(&["link", "del", name]).map(|_| ())
}

/// The interface and next hop the routing table picks for `dst`.
pub fn route_to(dst: IpAddr) -> Result<(String, IpAddr)> {
    let route = ip(&["-o", "route", "get", &dst.to_string()])?;
    let words: Vec<&str> = route.split_whitespace().collect();
    let field = |k: &str| {
        words
            .iter()
            .position(|w| *w == k)
            .and_then(|i| words.get(i + 1))
            .copied()
    };
    let dev = field("dev").with_context(|| format!("no route to {dst}: `{}`", route.trim()))?;
    let hop: IpAddr = match field("via") {
        Some(gw) => gw
            .parse()
            .with_context(|| format!("unexpected gateway `{gw}` in `ip route get`"))?,
        None => dst,
    };
    Ok((dev.to_owned(), hop))
}

/// Ask the kernel to resolve and keep resolving `hop` on `dev` (a `managed` neighbour entry,
/// Linux >= 5.16), so `bpf_fib_lookup` finds its MAC from a flow's first packet.
pub fn keep_neighbour_resolved(dev: &str, hop: IpAddr) -> Result<()> {
    let hop_s = hop.to_string();
    // `add` fails with EEXIST when the stack already has an entry; then mark that one.
    if ip(&["neigh", "add", &hop_s, "dev", dev, "managed"]).is_err() {
        ip(&["neigh", "change", &hop_s, "dev", dev, "managed"])
            .with_context(|| format!("marking neighbour {hop_s} on {dev} as managed"))?;
    }
    Ok(())
}

/// The MAC address of interface `dev` (through netlink, so it works in any network namespace;
/// /sys/class/net shows the namespace sysfs was mounted in).
pub fn mac_of(dev: &str) -> Result<[u8; 6]> {
    let out = ip(&["-j", "link", "show", "dev", dev])?;
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).context("unexpected `ip -j link` output")?;
    v.as_array()
        .and_then(|a| a.first())
        .and_then(|e| e["address"].as_str())
        .and_then(parse_mac)
        .with_context(|| format!("{dev} has no Ethernet address"))
}

/// The resolved link-layer address of `hop` on `dev`, if the neighbour table has one.
pub fn neighbour_mac(dev: &str, hop: IpAddr) -> Result<Option<[u8; 6]>> {
    let out = ip(&["-j", "neigh", "show", "to", &hop.to_string(), "dev", dev])?;
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).context("unexpected `ip -j neigh` output")?;
    let entry = v.as_array().and_then(|a| a.first());
    let failed = entry
        .and_then(|e| e["state"].as_array())
        .is_some_and(|st| st.iter().any(|s| s == "FAILED" || s == "INCOMPLETE"));
    if failed {
        return Ok(None);
    }
    Ok(entry.and_then(|e| e["lladdr"].as_str()).and_then(parse_mac))
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::parse_mac;

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("1a:1a:2c:01:9e:ba"),
            Some([0x1a, 0x1a, 0x2c, 0x01, 0x9e, 0xba])
        );
        assert_eq!(parse_mac("1a:1a:2c:01:9e"), None);
        assert_eq!(parse_mac("1a:1a:2c:01:9e:ba:00"), None);
        assert_eq!(parse_mac("zz:1a:2c:01:9e:ba"), None);
    }
}
