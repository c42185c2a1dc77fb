//! The ipcache: IP prefixes to identities, looked up by longest prefix.

use crate::api::Cidr;
use crate::identity::{NumericIdentity, WORLD};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

/// Prefix → identity, with one hash table per prefix length.
#[derive(Clone, Debug, Default)]
pub struct IpCache {
    v4: BTreeMap<u8, HashMap<Cidr, NumericIdentity>>,
    v6: BTreeMap<u8, HashMap<Cidr, NumericIdentity>>,
}

impl IpCache {
    pub fn new() -> Self {
        Self::default()
    }

    fn table(&mut self, c: &Cidr) -> &mut HashMap<Cidr, NumericIdentity> {
        let t = if c.is_ipv4() {
            &mut self.v4
        } else {
            &mut self.v6
        };
        t.entry(c.len).or_default()
    }

    /// Sets the identity of a prefix; returns the previous one.
    pub fn upsert(&mut self, c: Cidr, id: NumericIdentity) -> Option<NumericIdentity> {
        self.table(&c).insert(c, id)
    }

    pub fn remove(&mut self, c: &Cidr) -> Option<NumericIdentity> {
        let t = if c.is_ipv4() {
            &mut self.v4
        } else {
            &mut self.v6
        };
        let table = t.get_mut(&c.len)?;
        let old = table.remove(c);
        if table.is_empty() {
            t.remove(&c.len);
        }
        old
    }

    /// Longest-prefix match; an address nothing covers is `world`.
    pub fn lookup(&self, ip: IpAddr) -> (NumericIdentity, Option<Cidr>) {
        let t = if ip.is_ipv4() { &self.v4 } else { &self.v6 };
        for (len, table) in t.iter().rev() {
            let c = Cidr::new(ip, *len);
            if let Some(id) = table.get(&c) {
                return (*id, Some(c));
            }
        }
        (WORLD, None)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Cidr, &NumericIdentity)> {
        self.v4
            .values()
            .chain(self.v6.values())
            .flat_map(|t| t.iter())
    }

    pub fn len(&self) -> usize {
        self.v4
            .values()
            .chain(self.v6.values())
            .map(|t| t.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins() {
        let mut c = IpCache::new();
        c.upsert(Cidr::parse("10.0.0.0/8").expect("cidr"), 100);
        c.upsert(Cidr::parse("10.96.0.0/12").expect("cidr"), 101);
        c.upsert(Cidr::parse("10.96.0.1").expect("cidr"), 102);
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(c.lookup(ip("10.1.1.1")).0, 100);
        assert_eq!(c.lookup(ip("10.97.0.9")).0, 101);
        assert_eq!(c.lookup(ip("10.96.0.1")).0, 102);
        assert_eq!(c.lookup(ip("8.8.8.8")).0, WORLD);
    }
}
