//! Connection tracking (`LRU_HASH`) and its garbage collection.
//!
//! Raw layout (`bpf/conntrack.h`): key `{ep_id u32, saddr u32 (network
//! order), daddr u32 (network order), sport u16, dport u16, proto u8,
//! direction u8, pad u16}` (20 bytes) = the tuple of the packet that opened
//! the connection and the direction it was opened in; value
//! `{last_seen_ns u64, lifetime_ns u64, created_ns u64, packets_fwd u64,
//! packets_rev u64, flags u8, tcp_flags_fwd u8, tcp_flags_rev u8, pad u8,
//! proxy_port u16, pad u16, policy_rev u32, cached_verdict u8, pad [u8; 3]}`
//! (56 bytes). `policy_rev`/`cached_verdict` cache the opening direction's
//! verdict while the global policy revision is unchanged.
//!
//! Only the opening direction is checked against policy (and re-checked on
//! every packet, so revoking a policy cuts the flow); replies and related ICMP
//! errors skip policy. The datapath never deletes entries: TCP FIN/RST move
//! an entry to a 10 s lifetime (SYN-only 60 s, established 6 h, UDP/ICMP
//! 60 s) and [`crate::Datapath::gc_conntrack`] deletes the expired ones.

use std::net::Ipv4Addr;

use crate::policy::Direction;

/// Flag: a reply was seen.
pub const CT_F_SEEN_REPLY: u8 = 0x01;
/// Flag: FIN seen in the opening direction.
pub const CT_F_FWD_FIN: u8 = 0x02;
/// Flag: FIN seen in the reply direction.
pub const CT_F_REV_FIN: u8 = 0x04;
/// Flag: RST seen.
pub const CT_F_RST: u8 = 0x08;

/// The conntrack lookup result reported in events (`ct_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CtState {
    /// No entry: a new connection.
    New,
    /// Opening direction of a tracked connection.
    Established,
    /// Reply direction of a tracked connection.
    Reply,
    /// ICMP error related to a tracked connection.
    Related,
    /// A SYN reopening a closing TCP entry.
    Reopened,
    /// Unknown value.
    Other(u8),
}

impl CtState {
    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            0 => CtState::New,
            1 => CtState::Established,
            2 => CtState::Reply,
            3 => CtState::Related,
            4 => CtState::Reopened,
            o => CtState::Other(o),
        }
    }
}

/// A conntrack key in host terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CtKey {
    /// Endpoint id.
    pub ep_id: u32,
    /// Source address of the opening packet.
    pub saddr: Ipv4Addr,
    /// Destination address of the opening packet.
    pub daddr: Ipv4Addr,
    /// Source port (ICMP echo: id).
    pub sport: u16,
    /// Destination port (ICMP echo: id).
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// Direction the connection was opened in.
    pub direction: Direction,
}

/// A conntrack entry in host terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CtEntry {
    /// `CLOCK_MONOTONIC` ns of the last packet.
    pub last_seen_ns: u64,
    /// Lifetime after `last_seen_ns`.
    pub lifetime_ns: u64,
    /// `CLOCK_MONOTONIC` ns of creation.
    pub created_ns: u64,
    /// Packets in the opening direction.
    pub packets_fwd: u64,
    /// Packets in the reply direction.
    pub packets_rev: u64,
    /// `CT_F_*` flags.
    pub flags: u8,
    /// TCP flags seen in the opening direction.
    pub tcp_flags_fwd: u8,
    /// TCP flags seen in the reply direction.
    pub tcp_flags_rev: u8,
    /// L7 proxy port of the connection (0 = none).
    pub proxy_port: u16,
}

impl CtEntry {
    /// True when the entry has expired at `now_ns` (`CLOCK_MONOTONIC`).
    pub fn expired(&self, now_ns: u64) -> bool {
        now_ns > self.last_seen_ns.saturating_add(self.lifetime_ns)
    }

    /// True once a FIN or RST was seen.
    pub fn closing(&self) -> bool {
        self.flags & (CT_F_FWD_FIN | CT_F_REV_FIN | CT_F_RST) != 0
    }
}

/// What a garbage collection pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Entries examined.
    pub scanned: usize,
    /// Expired entries deleted.
    pub deleted: usize,
}

/// `CLOCK_MONOTONIC` now, in ns: the clock of `bpf_ktime_get_ns()`, to pass
/// to [`crate::Datapath::gc_conntrack`].
pub fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Raw `struct ct_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawCtKey {
    pub ep_id: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub direction: u8,
    pub pad: u16,
}
// SAFETY: repr(C), no padding, all bit patterns valid.
unsafe impl aya::Pod for RawCtKey {}

impl RawCtKey {
    pub(crate) fn to_key(self) -> CtKey {
        CtKey {
            ep_id: self.ep_id,
            saddr: Ipv4Addr::from(u32::from_be(self.saddr)),
            daddr: Ipv4Addr::from(u32::from_be(self.daddr)),
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            direction: Direction::from_u8(self.direction),
        }
    }
}

/// Raw `struct ct_entry`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawCtEntry {
    pub last_seen_ns: u64,
    pub lifetime_ns: u64,
    pub created_ns: u64,
    pub packets_fwd: u64,
    pub packets_rev: u64,
    pub flags: u8,
    pub tcp_flags_fwd: u8,
    pub tcp_flags_rev: u8,
    pub pad1: u8,
    pub proxy_port: u16,
    pub pad2: u16,
    pub policy_rev: u32,
    pub cached_verdict: u8,
    pub pad3: [u8; 3],
}
// SAFETY: repr(C), no interior padding (56 bytes), all bit patterns valid.
unsafe impl aya::Pod for RawCtEntry {}

impl RawCtEntry {
    pub(crate) fn to_entry(self) -> CtEntry {
        CtEntry {
            last_seen_ns: self.last_seen_ns,
            lifetime_ns: self.lifetime_ns,
            created_ns: self.created_ns,
            packets_fwd: self.packets_fwd,
            packets_rev: self.packets_rev,
            flags: self.flags,
            tcp_flags_fwd: self.tcp_flags_fwd,
            tcp_flags_rev: self.tcp_flags_rev,
            proxy_port: self.proxy_port,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_c_structs() {
        assert_eq!(std::mem::size_of::<RawCtKey>(), 20);
        assert_eq!(std::mem::size_of::<RawCtEntry>(), 56);
    }

    #[test]
    fn expiry() {
        let e = RawCtEntry {
            last_seen_ns: 100,
            lifetime_ns: 50,
            created_ns: 90,
            packets_fwd: 1,
            packets_rev: 0,
            flags: 0,
            tcp_flags_fwd: 0,
            tcp_flags_rev: 0,
            pad1: 0,
            proxy_port: 0,
            pad2: 0,
            policy_rev: 0,
            cached_verdict: 0,
            pad3: [0; 3],
        }
        .to_entry();
        assert!(!e.expired(150));
        assert!(e.expired(151));
    }
}
