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
//! The kernel ring is the one event buffer: [`EVENTS_RING_BYTES`] (16 MiB)
//! of [`EVENT_RECORD_BYTES`]-byte records, 262,143 events when full, 2.4 s
//! at 110,000 events/s. The [`EventReader`] keeps nothing in user space: it
//! takes a record out of the ring (advancing the ring's consumer position)
//! only when it hands the event out. Events not read yet stay in the pinned
//! ring when the reader is dropped or its process dies, and the next reader
//! of the same pins (the next agent) gets them; the one place an event can
//! be lost is the kernel's `events_lost` counter.
//!
//! A ring pinned by an earlier build keeps the size it was created with
//! (pinned maps are adopted as they are, see [`crate::loader`]);
//! [`EventReader::ring_bytes`] reports the size in use.

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aya::maps::{Map, MapData, PerCpuArray, RingBuf};

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

/// Size in bytes of the `events` ring this build creates (`max_entries` in
/// `bpf/events.h`).
pub const EVENTS_RING_BYTES: u32 = 1 << 24;

/// Bytes one event takes in the ring: the kernel's 8-byte record header and
/// the 56-byte event, rounded up to 8.
pub const EVENT_RECORD_BYTES: u32 = 64;

/// Reads [`DatapathEvent`]s from the ring buffer. A ring buffer has one
/// consumer position: use one reader per ring.
///
/// The reader holds no events of its own: each call takes at most the one
/// record it returns out of the kernel ring, so dropping a reader (or
/// killing its process) leaves every unread event in the pinned ring.
pub struct EventReader {
    ring: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
    /// Size of the ring (the kernel's `max_entries`).
    ring_bytes: u32,
    positions: Positions,
}

/// The ring's consumer and producer positions: its first two pages, mapped
/// read-only (the kernel allows a read-only mapping of any of its pages;
/// aya's reader maps the same pages for itself).
struct Positions {
    base: NonNull<libc::c_void>,
    page: usize,
}

// SAFETY: a shared read-only mapping owned by this value, only read with
// atomic loads.
unsafe impl Send for Positions {}

impl Positions {
    fn map(fd: BorrowedFd<'_>) -> Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        // SAFETY: a new shared read-only mapping of two pages of a valid
        // ring buffer fd; the result is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        match NonNull::new(ptr) {
            Some(base) if ptr != libc::MAP_FAILED => Ok(Positions { base, page }),
            _ => Err(DatapathError::io(
                "mapping the event ring's positions",
                std::io::Error::last_os_error(),
            )),
        }
    }

    /// Bytes written to the ring and not consumed yet.
    fn unread_bytes(&self) -> u64 {
        let base = self.base.as_ptr().cast::<u8>();
        // SAFETY: the consumer position starts the first page and the
        // producer position the second, each an aligned `unsigned long`
        // inside the mapping that the kernel and the consumer update
        // atomically. The consumer is read first: it never passes the
        // producer.
        let (consumer, producer) = unsafe {
            let consumer = (*base.cast::<AtomicUsize>()).load(Ordering::Acquire);
            let producer = (*base.add(self.page).cast::<AtomicUsize>()).load(Ordering::Acquire);
            (consumer, producer)
        };
        producer.wrapping_sub(consumer) as u64
    }
}

impl Drop for Positions {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe {
            libc::munmap(self.base.as_ptr(), 2 * self.page);
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
    /// A reader of the ring `ring`, which must describe the kernel's map as
    /// it is (opened from its fd or pin, not from the object file: aya maps
    /// the ring with the `max_entries` it is given).
    pub(crate) fn new(ring: MapData, pin_root: &Path) -> Result<Self> {
        let ring_bytes = ring
            .info()
            .map_err(|e| DatapathError::map("info", "events", e))?
            .max_entries();
        let positions = Positions::map(ring.fd().as_fd())?;
        let ring = RingBuf::try_from(Map::RingBuf(ring))
            .map_err(|e| DatapathError::map("open", "events", e))?;
        Ok(EventReader {
            ring,
            lost: open_lost(pin_root)?,
            ring_bytes,
            positions,
        })
    }

    /// Events in the kernel ring that no reader has taken yet (all readers
    /// of a ring share its consumer position, so this is also what the next
    /// agent would get). Counts records still being written, too.
    pub fn unread(&self) -> u64 {
        self.positions.unread_bytes() / u64::from(EVENT_RECORD_BYTES)
    }

    /// Size of the kernel ring in bytes ([`EVENTS_RING_BYTES`] unless the
    /// ring was pinned by a build with another size).
    pub fn ring_bytes(&self) -> u32 {
        self.ring_bytes
    }

    /// Events the kernel ring holds when full: one fewer than fit in its
    /// bytes, as the kernel never lets the producer catch up with the
    /// consumer (262,143 for [`EVENTS_RING_BYTES`]).
    pub fn capacity(&self) -> u64 {
        u64::from(self.ring_bytes / EVENT_RECORD_BYTES) - 1
    }

    /// The next event without waiting, taken out of the kernel ring.
    fn next_now(&mut self) -> Option<DatapathEvent> {
        loop {
            // the record leaves the ring when `item` is dropped, after the copy
            let item = self.ring.next()?;
            match DatapathEvent::decode(&item) {
                Some(ev) => return Some(ev),
                None => {
                    tracing::warn!(len = item.len(), "skipping a short event record");
                }
            }
        }
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
        EventReader::new(data, pin_root)
    }

    /// Returns the next event, waiting up to `timeout` for one. `Ok(None)`
    /// on timeout.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<DatapathEvent>> {
        // the common case under load: an event is waiting (no clock read)
        if let Some(ev) = self.next_now() {
            return Ok(Some(ev));
        }
        let deadline = Instant::now() + timeout;
        loop {
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
            if let Some(ev) = self.next_now() {
                return Ok(Some(ev));
            }
        }
    }

    /// Drains every event currently in the ring without waiting.
    pub fn drain(&mut self) -> Vec<DatapathEvent> {
        let mut out = Vec::new();
        while let Some(ev) = self.next_now() {
            out.push(ev);
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
