//! The ipcache: IPv4 prefix -> security identity (`LPM_TRIE`).
//!
//! Raw layout (`bpf/ipcache.h`): key `{prefixlen u32, addr u32 (network
//! order)}`, value `{identity u32}`. Addresses with no matching prefix
//! resolve to [`crate::IDENTITY_WORLD`].

use std::net::Ipv4Addr;

use crate::error::{DatapathError, Result};

/// An IPv4 prefix, normalised (host bits cleared).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Prefix {
    addr: Ipv4Addr,
    len: u8,
}

impl Ipv4Prefix {
    /// Builds a prefix, clearing host bits; `len` must be 0..=32.
    pub fn new(addr: Ipv4Addr, len: u8) -> Result<Self> {
        if len > 32 {
            return Err(DatapathError::InvalidArgument(format!(
                "IPv4 prefix length {len} is over 32"
            )));
        }
        let mask = if len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(len))
        };
        Ok(Ipv4Prefix {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            len,
        })
    }

    /// A single address (/32).
    pub fn host(addr: Ipv4Addr) -> Self {
        Ipv4Prefix { addr, len: 32 }
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// True for the /0 prefix.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn to_raw(self) -> aya::maps::lpm_trie::Key<u32> {
        aya::maps::lpm_trie::Key::new(u32::from(self.len), u32::from(self.addr).to_be())
    }

    pub(crate) fn from_raw(k: aya::maps::lpm_trie::Key<u32>) -> Self {
        Ipv4Prefix {
            addr: Ipv4Addr::from(u32::from_be(k.data())),
            len: k.prefix_len().min(32) as u8,
        }
    }
}

impl std::fmt::Display for Ipv4Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}
