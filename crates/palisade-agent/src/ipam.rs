//! IPAM: addresses of the node's pod CIDR, persisted in the state directory
//! (`ipam.json`) so a restarted agent hands out the same addresses.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::PodCidr;
use crate::error::{AgentError, Result};
use crate::store;

#[derive(Debug, Default, Serialize, Deserialize)]
struct IpamFile {
    cidr: String,
    allocations: BTreeMap<Ipv4Addr, String>,
}

/// The allocator.
#[derive(Debug)]
pub struct Ipam {
    cidr: PodCidr,
    reserved: Ipv4Addr,
    allocations: BTreeMap<Ipv4Addr, String>,
    path: PathBuf,
}

impl Ipam {
    /// Loads `<state_dir>/ipam.json` (or starts empty). `reserved` (the node
    /// address) is never handed out.
    pub fn load(path: PathBuf, cidr: PodCidr, reserved: Ipv4Addr) -> Result<Self> {
        let file: IpamFile = store::read_json(&path)?.unwrap_or_default();
        let allocations = if file.cidr.is_empty() || file.cidr == cidr.to_string() {
            file.allocations
        } else {
            tracing::warn!(old = %file.cidr, new = %cidr, "pod CIDR changed; keeping allocations outside it as explicit addresses");
            file.allocations
        };
        Ok(Ipam {
            cidr,
            reserved,
            allocations,
            path,
        })
    }

    fn save(&self) -> Result<()> {
        store::write_json(
            &self.path,
            &IpamFile {
                cidr: self.cidr.to_string(),
                allocations: self.allocations.clone(),
            },
        )
    }

    /// Allocates the first free address for `owner` (skipping the network,
    /// broadcast and reserved addresses).
    pub fn allocate(&mut self, owner: &str) -> Result<Ipv4Addr> {
        for i in 1..self.cidr.size().saturating_sub(1) {
            let Some(ip) = self.cidr.nth(i) else { break };
            if ip == self.reserved || self.allocations.contains_key(&ip) {
                continue;
            }
            self.allocations.insert(ip, owner.to_string());
            self.save()?;
            return Ok(ip);
        }
        Err(AgentError::Conflict(format!(
            "pod CIDR {} is exhausted",
            self.cidr
        )))
    }

    /// Reserves an explicit address (inside or outside the CIDR).
    pub fn reserve(&mut self, ip: Ipv4Addr, owner: &str) -> Result<()> {
        if ip == self.reserved {
            return Err(AgentError::Conflict(format!(
                "{ip} is the node's own address"
            )));
        }
        match self.allocations.get(&ip) {
            Some(o) if o != owner => Err(AgentError::Conflict(format!(
                "{ip} is already allocated to {o}"
            ))),
            Some(_) => Ok(()),
            None => {
                self.allocations.insert(ip, owner.to_string());
                self.save()
            }
        }
    }

    /// Releases an address.
    pub fn release(&mut self, ip: Ipv4Addr) -> Result<()> {
        if self.allocations.remove(&ip).is_some() {
            self.save()?;
        }
        Ok(())
    }

    /// The current allocations.
    pub fn allocations(&self) -> &BTreeMap<Ipv4Addr, String> {
        &self.allocations
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_skipping_reserved_and_persists() {
        let dir = std::env::temp_dir().join(format!("palisade-ipam-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join("ipam.json");
        let _ = std::fs::remove_file(&path);
        let cidr = PodCidr::parse("10.9.0.0/29").expect("cidr");
        let mut ipam = Ipam::load(path.clone(), cidr, cidr.gateway()).expect("load");
        let a = ipam.allocate("a").expect("a");
        assert_eq!(a, Ipv4Addr::new(10, 9, 0, 2));
        let again = Ipam::load(path.clone(), cidr, cidr.gateway()).expect("reload");
        assert_eq!(again.allocations().get(&a).map(String::as_str), Some("a"));
        for n in 0..4 {
            ipam.allocate(&format!("p{n}")).expect("fits");
        }
        assert!(ipam.allocate("full").is_err());
        ipam.release(a).expect("release");
        assert_eq!(ipam.allocate("b").expect("b"), a);
        assert!(ipam.reserve(cidr.gateway(), "x").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
