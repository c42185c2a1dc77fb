//! The policy map: keys, values and port-range splitting.
//!
//! One global `LPM_TRIE` (`bpf/policy.h`). Its raw key is
//! `{prefixlen u32, ep_id u32, identity u32, egress u8, protocol u8, dport be16}`
//! (16 bytes) and its raw value
//! `{proxy_port be16, deny u8, port_prefix_len u8, precedence u32, cookie u32}`
//! (12 bytes). The LPM always matches `ep_id + identity + egress` fully
//! (72 bits) and then [`PolicyKey::prefix`] bits of `protocol ++ dport`.

use crate::error::{DatapathError, Result};

/// Bits of the key that always match fully: ep_id (32) + identity (32) + egress (8).
pub const FULL_MATCH_BITS: u32 = 72;

/// Traffic direction from the endpoint's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Traffic entering the endpoint (`to_container`).
    Ingress,
    /// Traffic leaving the endpoint (`from_container`).
    Egress,
}

impl Direction {
    /// The datapath's encoding: 0 ingress, 1 egress.
    pub fn as_u8(self) -> u8 {
        match self {
            Direction::Ingress => 0,
            Direction::Egress => 1,
        }
    }

    /// Decodes the datapath's encoding (anything non-zero is egress).
    pub fn from_u8(v: u8) -> Self {
        if v == 0 {
            Direction::Ingress
        } else {
            Direction::Egress
        }
    }
}

/// One policy map key, in host terms.
///
/// `prefix` follows Cilium's `lpm_prefix_length` scale: 0 = any protocol and
/// port, 8 = this protocol with any port, 9..=24 = this protocol and the top
/// `prefix - 8` bits of `port` (24 = exactly `port`). For ICMP (protocol 1)
/// the ICMP type goes in `port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    /// Endpoint id (the subject of the policy).
    pub ep_id: u32,
    /// Remote identity; [`crate::IDENTITY_WILDCARD`] (0) matches any.
    pub identity: u32,
    /// Direction.
    pub direction: Direction,
    /// IP protocol (6 TCP, 17 UDP, 1 ICMP, 132 SCTP); 0 when `prefix == 0`.
    pub protocol: u8,
    /// Destination port (host order), masked to the prefix.
    pub port: u16,
    /// Protocol+port prefix length: 0, 8 or 9..=24.
    pub prefix: u8,
}

impl PolicyKey {
    /// Key matching every protocol and port from `identity` (an L3-only rule).
    pub fn l3_only(ep_id: u32, identity: u32, direction: Direction) -> Self {
        PolicyKey {
            ep_id,
            identity,
            direction,
            protocol: 0,
            port: 0,
            prefix: 0,
        }
    }

    /// Key matching every port of one protocol.
    pub fn protocol(ep_id: u32, identity: u32, direction: Direction, protocol: u8) -> Self {
        PolicyKey {
            ep_id,
            identity,
            direction,
            protocol,
            port: 0,
            prefix: 8,
        }
    }

    /// Key matching exactly one protocol and port (ICMP: type).
    pub fn port(ep_id: u32, identity: u32, direction: Direction, protocol: u8, port: u16) -> Self {
        PolicyKey {
            ep_id,
            identity,
            direction,
            protocol,
            port,
            prefix: 24,
        }
    }

    /// Key matching one aligned port block (see [`port_range_blocks`]).
    pub fn port_block(
        ep_id: u32,
        identity: u32,
        direction: Direction,
        protocol: u8,
        block: PortBlock,
    ) -> Self {
        PolicyKey {
            ep_id,
            identity,
            direction,
            protocol,
            port: block.port,
            prefix: 8 + block.mask_bits,
        }
    }

    /// Checks the prefix is 0, 8 or 9..=24, that protocol/port bits outside
    /// the prefix are zero, and a non-zero prefix names a protocol.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: &str| Err(DatapathError::InvalidPolicy(format!("{self:?}: {why}")));
        match self.prefix {
            0 => {
                if self.protocol != 0 || self.port != 0 {
                    return bad("prefix 0 must have protocol 0 and port 0");
                }
            }
            8 => {
                if self.port != 0 {
                    return bad("prefix 8 (protocol only) must have port 0");
                }
            }
            9..=24 => {
                let bits = u32::from(self.prefix - 8);
                let mask: u16 = if bits >= 16 {
                    0xffff
                } else {
                    !(0xffffu16 >> bits)
                };
                if self.port & !mask != 0 {
                    return bad("port has bits set beyond the prefix");
                }
            }
            _ => return bad("prefix must be 0, 8 or 9..=24"),
        }
        if self.prefix > 0 && self.protocol == 0 {
            return bad("a port or protocol prefix needs a protocol");
        }
        Ok(())
    }

    pub(crate) fn to_raw(self) -> aya::maps::lpm_trie::Key<RawPolicyKeyData> {
        aya::maps::lpm_trie::Key::new(
            FULL_MATCH_BITS + u32::from(self.prefix),
            RawPolicyKeyData {
                ep_id: self.ep_id,
                identity: self.identity,
                egress: self.direction.as_u8(),
                protocol: self.protocol,
                dport_be: self.port.to_be(),
            },
        )
    }

    pub(crate) fn from_raw(prefixlen: u32, d: RawPolicyKeyData) -> Self {
        PolicyKey {
            ep_id: d.ep_id,
            identity: d.identity,
            direction: Direction::from_u8(d.egress),
            protocol: d.protocol,
            port: u16::from_be(d.dport_be),
            prefix: prefixlen.saturating_sub(FULL_MATCH_BITS).min(255) as u8,
        }
    }
}

/// One policy map value, in host terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PolicyValue {
    /// L7 proxy port (host order); 0 = no redirect.
    pub proxy_port: u16,
    /// Explicit deny.
    pub deny: bool,
    /// Cilium precedence: higher wins; `u32::MAX` (deny at priority 0)
    /// short-circuits the wildcard lookup.
    pub precedence: u32,
    /// Opaque rule cookie, reported in events.
    pub cookie: u32,
}

impl PolicyValue {
    /// A plain allow (precedence 1, as Cilium's allow at priority 0 minus the
    /// inverted-priority bits; pass whatever the policy engine computes).
    pub fn allow(cookie: u32) -> Self {
        PolicyValue {
            proxy_port: 0,
            deny: false,
            precedence: 1,
            cookie,
        }
    }

    /// A deny at maximal precedence.
    pub fn deny(cookie: u32) -> Self {
        PolicyValue {
            proxy_port: 0,
            deny: true,
            precedence: u32::MAX,
            cookie,
        }
    }

    pub(crate) fn to_raw(self, port_prefix_len: u8) -> RawPolicyEntry {
        RawPolicyEntry {
            proxy_port_be: self.proxy_port.to_be(),
            deny: u8::from(self.deny),
            port_prefix_len,
            precedence: self.precedence,
            cookie: self.cookie,
        }
    }

    pub(crate) fn from_raw(r: RawPolicyEntry) -> Self {
        PolicyValue {
            proxy_port: u16::from_be(r.proxy_port_be),
            deny: r.deny != 0,
            precedence: r.precedence,
            cookie: r.cookie,
        }
    }
}

/// The data part of the raw LPM key (after `prefixlen`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawPolicyKeyData {
    pub ep_id: u32,
    pub identity: u32,
    pub egress: u8,
    pub protocol: u8,
    pub dport_be: u16,
}
// SAFETY: repr(C), no padding, all bit patterns valid.
unsafe impl aya::Pod for RawPolicyKeyData {}

/// Raw `struct policy_entry`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawPolicyEntry {
    pub proxy_port_be: u16,
    pub deny: u8,
    pub port_prefix_len: u8,
    pub precedence: u32,
    pub cookie: u32,
}
// SAFETY: repr(C), no padding, all bit patterns valid.
unsafe impl aya::Pod for RawPolicyEntry {}

/// An aligned block of ports: `port` with its top `mask_bits` bits fixed
/// (16 = exactly `port`, 0 = every port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortBlock {
    /// First port of the block.
    pub port: u16,
    /// Number of fixed leading bits (0..=16).
    pub mask_bits: u8,
}

impl PortBlock {
    /// Last port of the block.
    pub fn last(&self) -> u16 {
        let size = 1u32 << (16 - u32::from(self.mask_bits));
        (u32::from(self.port) + size - 1) as u16
    }
}

/// Splits the inclusive port range `[lo, hi]` into the minimal list of
/// aligned blocks, as Cilium's `PortRangeToMaskedPorts` does (80-444 gives
/// 9 blocks, 1-65534 gives 30). `lo > hi` gives an empty list.
pub fn port_range_blocks(lo: u16, hi: u16) -> Vec<PortBlock> {
    let mut out = Vec::new();
    let (mut cur, hi) = (u32::from(lo), u32::from(hi));
    while cur <= hi {
        // largest aligned block starting at `cur` that fits in [cur, hi]
        let mut size_bits = if cur == 0 {
            16
        } else {
            cur.trailing_zeros().min(16)
        };
        while cur + (1 << size_bits) - 1 > hi {
            size_bits -= 1;
        }
        out.push(PortBlock {
            port: cur as u16,
            mask_bits: (16 - size_bits) as u8,
        });
        cur += 1 << size_bits;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(blocks: &[PortBlock]) -> Vec<u16> {
        blocks.iter().flat_map(|b| b.port..=b.last()).collect()
    }

    #[test]
    fn range_80_444_gives_9_blocks() {
        let b = port_range_blocks(80, 444);
        assert_eq!(b.len(), 9);
        assert_eq!(covered(&b), (80..=444).collect::<Vec<_>>());
    }

    #[test]
    fn range_1_65534_gives_30_blocks() {
        let b = port_range_blocks(1, 65534);
        assert_eq!(b.len(), 30);
        assert_eq!(covered(&b), (1..=65534).collect::<Vec<_>>());
    }

    #[test]
    fn full_and_single_ranges() {
        assert_eq!(
            port_range_blocks(0, 65535),
            vec![PortBlock {
                port: 0,
                mask_bits: 0
            }]
        );
        assert_eq!(
            port_range_blocks(8080, 8080),
            vec![PortBlock {
                port: 8080,
                mask_bits: 16
            }]
        );
        assert_eq!(port_range_blocks(65535, 65535).len(), 1);
        assert!(port_range_blocks(10, 9).is_empty());
    }

    #[test]
    fn blocks_are_aligned_and_exact_for_many_ranges() {
        for (lo, hi) in [
            (0, 1),
            (1, 2),
            (3, 17),
            (1023, 1025),
            (32768, 65535),
            (100, 60000),
        ] {
            let b = port_range_blocks(lo, hi);
            assert_eq!(covered(&b), (lo..=hi).collect::<Vec<_>>(), "{lo}-{hi}");
            for blk in &b {
                let key = PolicyKey::port_block(1, 0, Direction::Egress, 6, *blk);
                key.validate().expect("aligned block yields a valid key");
            }
        }
    }

    #[test]
    fn key_validation() {
        assert!(
            PolicyKey::l3_only(1, 5, Direction::Ingress)
                .validate()
                .is_ok()
        );
        assert!(
            PolicyKey::protocol(1, 5, Direction::Ingress, 6)
                .validate()
                .is_ok()
        );
        assert!(
            PolicyKey::port(1, 5, Direction::Ingress, 6, 80)
                .validate()
                .is_ok()
        );
        let mut k = PolicyKey::port(1, 5, Direction::Ingress, 6, 81);
        k.prefix = 20; // 81 has low bits set
        assert!(k.validate().is_err());
        k.prefix = 5;
        assert!(k.validate().is_err());
        assert!(
            PolicyKey::port(1, 5, Direction::Ingress, 0, 80)
                .validate()
                .is_err()
        );
    }

    #[test]
    fn raw_round_trip() {
        let k = PolicyKey::port(7, 300, Direction::Egress, 17, 53);
        let raw = k.to_raw();
        assert_eq!(raw.prefix_len(), 96);
        assert_eq!(PolicyKey::from_raw(raw.prefix_len(), raw.data()), k);
        let v = PolicyValue {
            proxy_port: 15001,
            deny: false,
            precedence: 9,
            cookie: 42,
        };
        assert_eq!(PolicyValue::from_raw(v.to_raw(24)), v);
        assert_eq!(std::mem::size_of::<RawPolicyKeyData>(), 12);
        assert_eq!(std::mem::size_of::<RawPolicyEntry>(), 12);
    }
}
