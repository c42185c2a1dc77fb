//! The FQDN cache: which names each endpoint resolved to which addresses,
//! until when. It decides which addresses are new (and must be enforced
//! before an answer is released) and which have expired (TTL plus a grace
//! period) and are no longer referenced by any name of any endpoint.
//!
//! `list()` is what `palisade fqdn cache list` prints (Cilium's `fqdn
//! cache list`: Endpoint, Source, FQDN, TTL, ExpirationTime, IPs).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Cache limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheLimits {
    /// TTLs below this are raised to it (Cilium's `--tofqdns-min-ttl`).
    pub min_ttl: u32,
    /// Addresses kept per name per endpoint; the ones expiring first are
    /// evicted beyond it (`--tofqdns-endpoint-max-ip-per-hostname`).
    pub max_ips_per_name: usize,
    /// How long an address stays after its TTL ran out.
    pub grace: Duration,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits {
            min_ttl: 0,
            max_ips_per_name: 1000,
            grace: Duration::from_secs(5),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct IpEntry {
    ttl: u32,
    expires: Instant,
    expires_wall: SystemTime,
}

type Key = (String, String);

#[derive(Debug, Default)]
struct State {
    /// (endpoint, name) -> address -> expiry.
    names: BTreeMap<Key, HashMap<IpAddr, IpEntry>>,
    /// How many (endpoint, name) entries reference each address.
    refs: HashMap<IpAddr, usize>,
}

/// One row of `fqdn cache list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheRow {
    /// The endpoint (`namespace/pod`), or `-` for a source that is not a
    /// local endpoint.
    pub endpoint: String,
    /// Always `lookup` (learned from a DNS answer).
    pub source: String,
    pub fqdn: String,
    /// The TTL of the answer that refreshed the entry last (after the
    /// minimum TTL), seconds.
    pub ttl: u32,
    /// When the latest address expires (Unix seconds; grace excluded).
    pub expiration_time: u64,
    pub ips: Vec<IpAddr>,
}

/// What one answer changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Learned {
    /// Addresses this (endpoint, name) did not have before: they must be
    /// enforced before the answer is released.
    pub new_ips: Vec<IpAddr>,
    /// Addresses evicted by the per-name cap that no other entry
    /// references any more.
    pub evicted: Vec<IpAddr>,
}

/// The cache. Cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub struct FqdnCache {
    limits: CacheLimits,
    state: Mutex<State>,
}

impl FqdnCache {
    pub fn new(limits: CacheLimits) -> Self {
        FqdnCache {
            limits,
            state: Mutex::default(),
        }
    }

    pub fn limits(&self) -> CacheLimits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Records that `endpoint` resolved `name` to `ips` (address, TTL).
    pub fn learn(
        &self,
        endpoint: &str,
        name: &str,
        ips: &[(IpAddr, u32)],
        now: Instant,
    ) -> Learned {
        let wall = SystemTime::now();
        let mut out = Learned::default();
        if ips.is_empty() {
            return out;
        }
        let mut st = self.lock();
        let State { names, refs } = &mut *st;
        let entry = names
            .entry((endpoint.to_string(), name.to_string()))
            .or_default();
        for &(ip, ttl) in ips {
            let ttl = ttl.max(self.limits.min_ttl);
            let life = Duration::from_secs(u64::from(ttl));
            let e = IpEntry {
                ttl,
                expires: now + life,
                expires_wall: wall + life,
            };
            match entry.get_mut(&ip) {
                Some(old) => {
                    if e.expires > old.expires {
                        *old = e;
                    } else {
                        old.ttl = ttl;
                    }
                }
                None => {
                    entry.insert(ip, e);
                    *refs.entry(ip).or_insert(0) += 1;
                    out.new_ips.push(ip);
                }
            }
        }
        while entry.len() > self.limits.max_ips_per_name.max(1) {
            let Some(victim) = entry
                .iter()
                .min_by_key(|(ip, e)| (e.expires, **ip))
                .map(|(ip, _)| *ip)
            else {
                break;
            };
            entry.remove(&victim);
            out.new_ips.retain(|i| *i != victim);
            if release(refs, victim) {
                out.evicted.push(victim);
            }
        }
        out
    }

    /// Removes addresses whose TTL plus grace ended before `now`; returns
    /// the ones no entry references any more (to forget).
    pub fn expire(&self, now: Instant) -> Vec<IpAddr> {
        let grace = self.limits.grace;
        let mut st = self.lock();
        let State { names, refs } = &mut *st;
        let mut gone = Vec::new();
        names.retain(|_, ips| {
            ips.retain(|ip, e| {
                let keep = e.expires + grace > now;
                if !keep && release(refs, *ip) {
                    gone.push(*ip);
                }
                keep
            });
            !ips.is_empty()
        });
        gone.sort();
        gone
    }

    /// When the next address expires (TTL plus grace), if any.
    pub fn next_expiry(&self) -> Option<Instant> {
        let grace = self.limits.grace;
        self.lock()
            .names
            .values()
            .flat_map(|m| m.values())
            .map(|e| e.expires + grace)
            .min()
    }

    /// Whether any endpoint currently has `ip` for some name.
    pub fn contains_ip(&self, ip: IpAddr) -> bool {
        self.lock().refs.contains_key(&ip)
    }

    /// Every entry, sorted by endpoint and name.
    pub fn list(&self) -> Vec<CacheRow> {
        let st = self.lock();
        st.names
            .iter()
            .map(|((ep, name), ips)| {
                let mut v: Vec<IpAddr> = ips.keys().copied().collect();
                v.sort();
                let latest = ips.values().max_by_key(|e| e.expires);
                CacheRow {
                    endpoint: ep.clone(),
                    source: "lookup".into(),
                    fqdn: name.clone(),
                    ttl: latest.map(|e| e.ttl).unwrap_or(0),
                    expiration_time: latest
                        .and_then(|e| e.expires_wall.duration_since(UNIX_EPOCH).ok())
                        .map(|d| d.as_secs())
                        .unwrap_or(0),
                    ips: v,
                }
            })
            .collect()
    }
}

/// Drops one reference; true when it was the last.
fn release(refs: &mut HashMap<IpAddr, usize>, ip: IpAddr) -> bool {
    match refs.get_mut(&ip) {
        Some(n) if *n > 1 => {
            *n -= 1;
            false
        }
        Some(_) => {
            refs.remove(&ip);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn learns_refreshes_and_expires_with_grace() {
        let c = FqdnCache::new(CacheLimits {
            min_ttl: 2,
            max_ips_per_name: 10,
            grace: Duration::from_secs(1),
        });
        let t0 = Instant::now();
        let l = c.learn("default/a", "x.example.com.", &[(ip("192.0.2.1"), 0)], t0);
        assert_eq!(l.new_ips, vec![ip("192.0.2.1")]);
        // the same address again is not new
        let l = c.learn("default/a", "x.example.com.", &[(ip("192.0.2.1"), 5)], t0);
        assert!(l.new_ips.is_empty());
        // another endpoint references it too
        c.learn("default/b", "x.example.com.", &[(ip("192.0.2.1"), 1)], t0);
        let rows = c.list();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].ttl, 5);
        assert_eq!(rows[1].ttl, 2, "min TTL applies");
        // b's entry (2 s + 1 s grace) ends first; a still references it
        assert!(c.expire(t0 + Duration::from_secs(4)).is_empty());
        assert_eq!(c.list().len(), 1);
        assert_eq!(c.expire(t0 + Duration::from_secs(6)), vec![ip("192.0.2.1")]);
        assert!(c.list().is_empty());
        assert!(!c.contains_ip(ip("192.0.2.1")));
    }

    #[test]
    fn caps_addresses_per_name() {
        let c = FqdnCache::new(CacheLimits {
            max_ips_per_name: 2,
            ..Default::default()
        });
        let t0 = Instant::now();
        c.learn(
            "e",
            "n.",
            &[(ip("192.0.2.1"), 10), (ip("192.0.2.2"), 20)],
            t0,
        );
        let l = c.learn("e", "n.", &[(ip("192.0.2.3"), 30)], t0);
        assert_eq!(l.new_ips, vec![ip("192.0.2.3")]);
        assert_eq!(l.evicted, vec![ip("192.0.2.1")]);
        assert_eq!(c.list()[0].ips, vec![ip("192.0.2.2"), ip("192.0.2.3")]);
    }
}
