//! Policy-verdict and drop events from the `events` ring buffer.
//!
//! Raw layout (`bpf/events.h`, 56 bytes): `{ts_ns u64, ep_id u32, ifindex
//! u32, local_identity u32, remote_identity u32, saddr u32 (network order),
//! daddr u32 (network order), sport u16, dport u16, proto u8, direction u8,
//! verdict u8, match_type u8, drop_reason u16, tcp_flags u8, ct_state u8,
//! cookie u32, proxy_port u16, pad u16, pkt_len u32}`. Emitted for drops and
//! for allows of new connections only.
//!
//! Events that do not fit (the ring is full) are counted in the per-CPU
//! array `events_lost` (one `u64`): [`crate::Datapath::events_lost`],
//! [`EventReader::events_lost`] and [`events_lost_pinned`] sum it.
//!
//! The kernel ring holds 16,384 events (1 MiB of 64-byte records): 160 ms
//! at 100,000 events/s. A burst the reader's per-event work cannot keep up
//! with for longer than that, or a reader thread that a busy machine keeps
//! off the CPU that long, would overflow it. The [`EventReader`] therefore
//! moves records out of the kernel ring into a user-space backlog of up to
//! [`BACKLOG_CAPACITY`] decoded events (a copy per event) before handing
//! them out one at a time. The backlog only ever takes what has room: when
//! it is full the records stay in the kernel ring, so the one place events
//! can be lost is still the kernel's `events_lost` counter.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use aya::maps::{MapData, PerCpuArray, RingBuf};

use crate::conntrack::CtState;
use crate::error::{DatapathError, Result};
use crate::policy::Direction;

/// The datapath's verdict on a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Passed.
    Forwarded,
    /// Dropped (see the drop reason).
    Dropped,
    /// Allowed with an L7 proxy port (passed unchanged until the proxy lands).
    Redirected,
    /// Unknown value.
    Other(u8),
}

impl Verdict {
    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            0 => Verdict::Forwarded,
            1 => Verdict::Dropped,
            2 => Verdict::Redirected,
            o => Verdict::Other(o),
        }
    }
}

/// Cilium's policy match types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatchType {
    /// Nothing matched (default deny) or the direction is not enforced.
    None,
    /// Exact identity, any protocol.
    L3Only,
    /// Exact identity, protocol and port.
    L3L4,
    /// Any identity, protocol and port.
    L4Only,
    /// Any identity, any protocol.
    All,
    /// Exact identity, protocol only.
    L3Proto,
    /// Any identity, protocol only.
    ProtoOnly,
    /// Unknown value.
    Other(u8),
}

impl MatchType {
    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            0 => MatchType::None,
            1 => MatchType::L3Only,
            2 => MatchType::L3L4,
            3 => MatchType::L4Only,
            4 => MatchType::All,
            5 => MatchType::L3Proto,
            6 => MatchType::ProtoOnly,
            o => MatchType::Other(o),
        }
    }
}

/// One decoded event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatapathEvent {
    /// `CLOCK_MONOTONIC` ns.
    pub timestamp_ns: u64,
    /// Endpoint id (0 when the interface has no endpoint entry).
    pub ep_id: u32,
    /// Interface the packet was seen on.
    pub ifindex: u32,
    /// The endpoint's identity.
    pub local_identity: u32,
    /// The peer's identity (from the ipcache).
    pub remote_identity: u32,
    /// Source address.
    pub saddr: Ipv4Addr,
    /// Destination address.
    pub daddr: Ipv4Addr,
    /// Source port (0 for ICMP).
    pub sport: u16,
    /// Destination port (ICMP: type).
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// Direction from the endpoint's point of view.
    pub direction: Direction,
    /// Verdict.
    pub verdict: Verdict,
    /// Drop reason: 0, [`crate::DROP_POLICY`] or [`crate::DROP_POLICY_DENY`].
    pub drop_reason: u16,
    /// Cookie of the deciding policy entry (0 if none).
    pub cookie: u32,
    /// How the deciding entry matched.
    pub match_type: MatchType,
    /// TCP flags of the packet.
    pub tcp_flags: u8,
    /// Conntrack state of the packet.
    pub ct_state: CtState,
    /// L7 proxy port (redirects).
    pub proxy_port: u16,
    /// Packet length.
    pub pkt_len: u32,
}

/// Raw `struct policy_event`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawPolicyEvent {
    pub ts_ns: u64,
    pub ep_id: u32,
    pub ifindex: u32,
    pub local_identity: u32,
    pub remote_identity: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub direction: u8,
    pub verdict: u8,
    pub match_type: u8,
    pub drop_reason: u16,
    pub tcp_flags: u8,
    pub ct_state: u8,
    pub cookie: u32,
    pub proxy_port: u16,
    pub pad: u16,
    pub pkt_len: u32,
}

impl DatapathEvent {
    /// Decodes one ring-buffer record; `None` if it is too short.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < std::mem::size_of::<RawPolicyEvent>() {
            return None;
        }
        // SAFETY: length checked; RawPolicyEvent is plain data; unaligned read.
        let r: RawPolicyEvent =
            unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<RawPolicyEvent>()) };
        Some(DatapathEvent {
            timestamp_ns: r.ts_ns,
            ep_id: r.ep_id,
            ifindex: r.ifindex,
            local_identity: r.local_identity,
            remote_identity: r.remote_identity,
            saddr: Ipv4Addr::from(u32::from_be(r.saddr)),
            daddr: Ipv4Addr::from(u32::from_be(r.daddr)),
            sport: r.sport,
            dport: r.dport,
            proto: r.proto,
            direction: Direction::from_u8(r.direction),
            verdict: Verdict::from_u8(r.verdict),
            drop_reason: r.drop_reason,
            cookie: r.cookie,
            match_type: MatchType::from_u8(r.match_type),
            tcp_flags: r.tcp_flags,
            ct_state: CtState::from_u8(r.ct_state),
            proxy_port: r.proxy_port,
            pkt_len: r.pkt_len,
        })
    }
}

/// Events an [`EventReader`] holds in user space at most: 2.6 s at 100,000
/// events/s on top of the kernel ring's 16,384 (14 MiB when full; the
/// backlog grows only as far as one forms and gives the memory back once
/// it has been handed out).
pub const BACKLOG_CAPACITY: usize = 1 << 18;

/// Backlog capacity kept when it runs dry (the kernel ring's size).
const BACKLOG_KEEP: usize = 1 << 14;

/// While the backlog has events, the kernel ring is emptied into it every
/// this many events handed out (and whenever the backlog runs dry), so the
/// kernel ring never holds more than a few thousand events while the reader
/// runs; between refills, the kernel ring's "consumer caught up" wakeups
/// stay rare.
const REFILL_EVERY: u32 = 256;

/// Reads [`DatapathEvent`]s from the ring buffer. A ring buffer has one
/// consumer position: use one reader per ring.
///
/// Events already moved into the reader's backlog are handed out before
/// anything else; dropping a reader with a backlog discards it (logged, see
/// [`EventReader::pending`]).
pub struct EventReader {
    ring: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
    /// Decoded events taken from the kernel ring, oldest first.
    backlog: VecDeque<DatapathEvent>,
    /// Events handed out since the last refill.
    since_refill: u32,
}

impl Drop for EventReader {
    fn drop(&mut self) {
        if !self.backlog.is_empty() {
            tracing::warn!(
                pending = self.backlog.len(),
                "event reader dropped with events read from the ring but not handed out"
            );
        }
    }
}

/// Opens the `events_lost` counter pinned at `<pin_root>/events_lost`.
fn open_lost(pin_root: &Path) -> Result<PerCpuArray<MapData, u64>> {
    let path = pin_root.join("events_lost");
    let data = MapData::from_pin(&path)
        .map_err(|e| DatapathError::map("open pinned", "events_lost", e))?;
    PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))
        .map_err(|e| DatapathError::map("open", "events_lost", e))
}

/// Events lost because the ring was full (summed over CPUs), read from the
/// maps pinned under `pin_root` (no [`crate::Datapath`] needed).
pub fn events_lost_pinned(pin_root: &Path) -> Result<u64> {
    crate::loader::sum_events_lost(&open_lost(pin_root)?)
}

impl EventReader {
    pub(crate) fn new(ring: RingBuf<MapData>, pin_root: &Path) -> Result<Self> {
        Ok(EventReader {
            ring,
            lost: open_lost(pin_root)?,
            backlog: VecDeque::new(),
            since_refill: 0,
        })
    }

    /// Events taken from the kernel ring and not handed out yet.
    pub fn pending(&self) -> usize {
        self.backlog.len()
    }

    /// Moves records from the kernel ring into the backlog while it has
    /// room (what does not fit stays in the kernel ring).
    fn refill(&mut self) {
        self.since_refill = 0;
        while self.backlog.len() < BACKLOG_CAPACITY {
            let Some(item) = self.ring.next() else {
                break;
            };
            if let Some(ev) = DatapathEvent::decode(&item) {
                self.backlog.push_back(ev);
            }
        }
    }

    /// The next event without waiting: from the backlog, refilled from the
    /// kernel ring when it is empty or every [`REFILL_EVERY`] events.
    fn next_now(&mut self) -> Option<DatapathEvent> {
        if self.backlog.is_empty() || self.since_refill >= REFILL_EVERY {
            self.refill();
        }
        let ev = self.backlog.pop_front()?;
        self.since_refill += 1;
        if self.backlog.is_empty() && self.backlog.capacity() > BACKLOG_KEEP {
            self.backlog.shrink_to(BACKLOG_KEEP);
        }
        Some(ev)
    }

    /// Events the datapath could not emit because the ring was full, summed
    /// over CPUs, since the maps were created. Every event produced is either
    /// read from this ring or counted here.
    pub fn events_lost(&self) -> Result<u64> {
        crate::loader::sum_events_lost(&self.lost)
    }

    /// Opens the ring pinned at `<pin_root>/events` (e.g. from a CLI).
    pub fn open_pinned(pin_root: &Path) -> Result<Self> {
        let path = pin_root.join("events");
        let data =
            MapData::from_pin(&path).map_err(|e| DatapathError::map("open pinned", "events", e))?;
        let ring = RingBuf::try_from(aya::maps::Map::RingBuf(data))
            .map_err(|e| DatapathError::map("open", "events", e))?;
        EventReader::new(ring, pin_root)
    }

    /// Returns the next event, waiting up to `timeout` for one. `Ok(None)`
    /// on timeout.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<DatapathEvent>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(ev) = self.next_now() {
                return Ok(Some(ev));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut pfd = libc::pollfd {
                fd: self.ring.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    return Err(DatapathError::io("polling the event ring buffer", err));
                }
            }
        }
    }

    /// Drains every event currently in the backlog and the ring without
    /// waiting.
    pub fn drain(&mut self) -> Vec<DatapathEvent> {
        let mut out: Vec<DatapathEvent> = self.backlog.drain(..).collect();
        self.since_refill = 0;
        while let Some(item) = self.ring.next() {
            if let Some(ev) = DatapathEvent::decode(&item) {
                out.push(ev);
            }
        }
        out
    }

    /// Waits until an event satisfying `pred` arrives (others are discarded)
    /// or `timeout` passes.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&DatapathEvent) -> bool,
    ) -> Result<Option<DatapathEvent>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_timeout(left)? {
                Some(ev) if pred(&ev) => return Ok(Some(ev)),
                Some(_) => continue,
                None => return Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_layout_is_56_bytes() {
        assert_eq!(std::mem::size_of::<RawPolicyEvent>(), 56);
        assert!(DatapathEvent::decode(&[0u8; 10]).is_none());
        assert!(DatapathEvent::decode(&[0u8; 56]).is_some());
    }
}
