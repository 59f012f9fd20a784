//! Virtual hosts by host name: which vhost an encoder's publish belongs to.
//!
//! A vhost lists the host names it answers to (`live.example.com`, or a wildcard
//! `*.studio.example.com` for any name below `studio.example.com`). The ingest takes the
//! host the encoder used (the RTMPS SNI, else the tcUrl's host) and picks the vhost that
//! names it exactly, else the one with the longest matching wildcard, else `default`.
//! A name (or wildcard) may belong to one vhost only, so the choice never depends on
//! order.

use serde::{Deserialize, Serialize};

/// The vhost of a publish whose host no vhost names.
pub const DEFAULT_VHOST: &str = "default";

/// Longest host pattern accepted (a DNS name is at most 253 characters).
const MAX_HOST: usize = 253;

/// Most host names one vhost may list.
pub const MAX_HOSTS: usize = 100;

/// A vhost's record in the store (`vhosts/{name}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VhostConfig {
    pub name: String,
    /// Host names and `*.suffix` wildcards, lower-cased.
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// Checks one host pattern and returns it lower-cased: a DNS name or an IP address, or
/// `*.` followed by a DNS name. No ports, schemes, paths or inner wildcards.
pub fn normalize_host(pattern: &str) -> Result<String, String> {
    let p = pattern.trim().to_ascii_lowercase();
    let name = p.strip_prefix("*.").unwrap_or(&p);
    let valid = !name.is_empty()
        && p.len() <= MAX_HOST
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    let ip = name.parse::<std::net::IpAddr>().is_ok() && !p.starts_with("*.");
    if valid || ip {
        Ok(p)
    } else {
        Err(format!(
            "invalid host name {pattern:?}: a DNS name, an IP address or *.DNS-NAME"
        ))
    }
}

/// Checks a vhost's host list (normalized, no repeats, at most [`MAX_HOSTS`]).
pub fn normalize_hosts(hosts: &[String]) -> Result<Vec<String>, String> {
    if hosts.len() > MAX_HOSTS {
        return Err(format!("at most {MAX_HOSTS} host names per vhost"));
    }
    let mut out: Vec<String> = Vec::with_capacity(hosts.len());
    for h in hosts {
        let h = normalize_host(h)?;
        if !out.contains(&h) {
            out.push(h);
        }
    }
    Ok(out)
}

/// The first host pattern `vhost` lists that another vhost of `all` lists too.
pub fn conflict<'a>(all: &'a [VhostConfig], vhost: &VhostConfig) -> Option<(&'a str, &'a str)> {
    all.iter()
        .filter(|o| o.name != vhost.name)
        .find_map(|other| {
            other
                .hosts
                .iter()
                .find(|h| vhost.hosts.contains(h))
                .map(|h| (other.name.as_str(), h.as_str()))
        })
}

/// The vhost for a publish through `host` (any case, with or without a trailing dot).
pub fn resolve<'a>(vhosts: &'a [VhostConfig], host: Option<&str>) -> &'a str {
    let Some(host) = host else {
        return DEFAULT_VHOST;
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let mut best: Option<(&str, usize)> = None;
    for v in vhosts {
        for pattern in &v.hosts {
            if *pattern == host {
                return &v.name;
            }
            if let Some(suffix) = pattern.strip_prefix("*.")
                && host.len() > suffix.len() + 1
                && host.ends_with(suffix)
                && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
                && best.is_none_or(|(_, len)| suffix.len() > len)
            {
                best = Some((&v.name, suffix.len()));
            }
        }
    }
    best.map_or(DEFAULT_VHOST, |(name, _)| name)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn v(name: &str, hosts: &[&str]) -> VhostConfig {
        VhostConfig {
            name: name.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
        }
    }

    #[test]
    fn exact_names_then_the_longest_wildcard_then_default() {
        let all = [
            v("default", &[]),
            v("studio", &["*.studio.example.com"]),
            v(
                "b",
                &["*.b.studio.example.com", "live.example.com", "127.0.0.1"],
            ),
            v("edge", &["a.b.studio.example.com"]),
        ];
        for (host, want) in [
            (Some("live.example.com"), "b"),
            (Some("LIVE.Example.com."), "b"),
            (Some("cam.studio.example.com"), "studio"),
            (Some("x.b.studio.example.com"), "b"),
            (Some("a.b.studio.example.com"), "edge"),
            (Some("studio.example.com"), "default"),
            (Some("evilstudio.example.com"), "default"),
            (Some("127.0.0.1"), "b"),
            (Some("localhost"), "default"),
            (None, "default"),
        ] {
            assert_eq!(resolve(&all, host), want, "{host:?}");
        }
    }

    #[test]
    fn host_patterns_are_checked_and_lower_cased() {
        assert_eq!(
            normalize_host(" Live.Example.COM ").unwrap(),
            "live.example.com"
        );
        assert_eq!(
            normalize_host("*.Studio.example.com").unwrap(),
            "*.studio.example.com"
        );
        assert_eq!(normalize_host("127.0.0.1").unwrap(), "127.0.0.1");
        assert_eq!(normalize_host("::1").unwrap(), "::1");
        for bad in [
            "",
            "*",
            "*.",
            "a..b",
            "live.example.com:1935",
            "rtmp://x",
            "a.*.b",
            "*.*.a",
            "a b",
        ] {
            assert!(normalize_host(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            normalize_hosts(&["a.com".into(), "A.com".into()]).unwrap(),
            ["a.com"]
        );
        let all = [v("x", &["a.com"]), v("y", &["b.com"])];
        assert_eq!(
            conflict(&all, &v("y", &["b.com", "a.com"])),
            Some(("x", "a.com"))
        );
        assert_eq!(conflict(&all, &v("x", &["a.com"])), None);
    }
}
