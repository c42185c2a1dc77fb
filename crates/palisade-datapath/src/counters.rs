//! Per-endpoint packet and byte counters (`PERCPU_ARRAY` fast path for
//! `ep_id < 4096` and the usual verdicts, `PERCPU_HASH` for the rest).
//!
//! Raw layout (`bpf/counters.h`): key `{ep_id u32, direction u8, verdict u8,
//! reason u16}`, value per CPU `{packets u64, bytes u64}`. Reads sum the CPUs.

use crate::events::Verdict;
use crate::policy::Direction;

/// One counter row of an endpoint, summed over CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterEntry {
    /// Direction.
    pub direction: Direction,
    /// Verdict.
    pub verdict: Verdict,
    /// Drop reason (0 when not dropped).
    pub reason: u16,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// All counters of one endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointCounters {
    /// The rows, one per (direction, verdict, reason) seen.
    pub entries: Vec<CounterEntry>,
}

impl EndpointCounters {
    /// Packets with `verdict` in `direction`, any reason.
    pub fn packets(&self, direction: Direction, verdict: Verdict) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.direction == direction && e.verdict == verdict)
            .map(|e| e.packets)
            .sum()
    }

    /// Packets dropped in `direction` for `reason`.
    pub fn dropped(&self, direction: Direction, reason: u16) -> u64 {
        self.entries
            .iter()
            .filter(|e| {
                e.direction == direction && e.verdict == Verdict::Dropped && e.reason == reason
            })
            .map(|e| e.packets)
            .sum()
    }
}

/// Raw `struct counter_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawCounterKey {
    pub ep_id: u32,
    pub direction: u8,
    pub verdict: u8,
    pub reason: u16,
}
// SAFETY: repr(C), no padding, all bit patterns valid.
unsafe impl aya::Pod for RawCounterKey {}

/// Raw `struct counter_value`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RawCounterValue {
    pub packets: u64,
    pub bytes: u64,
}
// SAFETY: repr(C), no padding, all bit patterns valid.
unsafe impl aya::Pod for RawCounterValue {}
