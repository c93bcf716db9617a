//! Forwarding sysctls. Written through /proc/sys with plain blocking I/O on purpose: the
//! files belong to the network namespace of the calling thread, and a thread pool could
//! run the write in another one.

use std::fmt;
use std::path::PathBuf;

use super::error::{DatapathError, Result};

/// One sysctl the daemon changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysctlChange {
    pub key: String,
    pub old: String,
    pub new: String,
}

impl fmt::Display for SysctlChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} -> {}", self.key, self.old, self.new)
    }
}

/// Host-wide settings: IPv4 forwarding on, and reverse-path filtering no stricter than
/// loose. The kernel applies max(conf.all, conf.<dev>), so a strict `all` would drop
/// packets a hybrid node sends through the tunnel from its own (on-premises) address,
/// whose reverse path is the underlay, not the tunnel.
pub fn ensure_host() -> Result<Vec<SysctlChange>> {
    let mut changes = Vec::new();
    set(&mut changes, "net.ipv4.ip_forward", |_| Some("1"))?;
    set(&mut changes, "net.ipv4.conf.all.rp_filter", |v| {
        (v == "1").then_some("2")
    })?;
    Ok(changes)
}

/// Per-device settings for an interface that forwards hybrid traffic (the underlay and the
/// VXLAN device): forwarding on. On the VXLAN device also no reverse-path filter and no
/// IPv6, so the device carries no address at all, as Cilium's VTEP peer expects.
pub fn ensure_interface(dev: &str, tunnel: bool) -> Result<Vec<SysctlChange>> {
    let mut changes = Vec::new();
    set(
        &mut changes,
        &format!("net.ipv4.conf.{dev}.forwarding"),
        |_| Some("1"),
    )?;
    if tunnel {
        set(
            &mut changes,
            &format!("net.ipv4.conf.{dev}.rp_filter"),
            |_| Some("0"),
        )?;
        let ipv6 = format!("net.ipv6.conf.{dev}.disable_ipv6");
        // A kernel booted without IPv6 has no such file, and nothing to disable.
        if path_of(&ipv6).exists() {
            set(&mut changes, &ipv6, |_| Some("1"))?;
        }
    }
    Ok(changes)
}

/// Reads a sysctl, e.g. `net.ipv4.ip_forward`.
pub fn read(key: &str) -> Result<String> {
    let path = path_of(key);
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|source| DatapathError::Io {
            context: format!("reading {key} ({})", path.display()),
            source,
        })
}

/// Sets `key` to what `want` says given its current value (`None`: leave it).
fn set(
    changes: &mut Vec<SysctlChange>,
    key: &str,
    want: impl Fn(&str) -> Option<&'static str>,
) -> Result<()> {
    let old = read(key)?;
    let Some(new) = want(&old).filter(|n| *n != old) else {
        return Ok(());
    };
    let path = path_of(key);
    std::fs::write(&path, new).map_err(|source| DatapathError::Io {
        context: format!(
            "setting {key}={new} ({}); the daemon needs CAP_NET_ADMIN and a writable /proc/sys (systemd: do not set ProtectKernelTunables=yes)",
            path.display()
        ),
        source,
    })?;
    changes.push(SysctlChange {
        key: key.to_string(),
        old,
        new: new.to_string(),
    });
    Ok(())
}

/// Interface names may contain dots, so only the fixed prefix is split into directories.
fn path_of(key: &str) -> PathBuf {
    let mut path = PathBuf::from("/proc/sys");
    let mut rest = key;
    for prefix in ["net.ipv4.conf.", "net.ipv6.conf."] {
        if let Some(tail) = key.strip_prefix(prefix) {
            path.extend(prefix.trim_end_matches('.').split('.'));
            if let Some((dev, leaf)) = tail.rsplit_once('.') {
                path.push(dev);
                path.push(leaf);
                return path;
            }
            rest = tail;
        }
    }
    path.extend(rest.split('.'));
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_keep_dots_in_interface_names() {
        assert_eq!(
            path_of("net.ipv4.ip_forward"),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            path_of("net.ipv4.conf.all.rp_filter"),
            PathBuf::from("/proc/sys/net/ipv4/conf/all/rp_filter")
        );
        assert_eq!(
            path_of("net.ipv4.conf.eth0.100.rp_filter"),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/rp_filter")
        );
        assert_eq!(
            path_of("net.ipv6.conf.hybrid_vxlan0.disable_ipv6"),
            PathBuf::from("/proc/sys/net/ipv6/conf/hybrid_vxlan0/disable_ipv6")
        );
    }
}
