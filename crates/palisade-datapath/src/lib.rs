//! Palisade's kernel datapath: eBPF programs that enforce per-endpoint L3/L4
//! policy on real packets, and the user-space side that loads them, pins and
//! adopts their maps, attaches them with TCX and writes policy deltas.
//!
//! The kernel programs live in `bpf/` (C, built by clang in `build.rs`):
//! `from_container` runs on TCX ingress of an endpoint's host-side veth (the
//! pod's egress) and `to_container` on TCX egress (the pod's ingress).
//!
//! Modules are named after what they hold:
//! - [`loader`]: [`Datapath`], loading/adopting pinned state, attaching;
//! - [`endpoint`], [`ipcache`], [`policy`], [`conntrack`], [`counters`],
//!   [`events`]: the maps' typed keys/values and their readers/writers;
//! - [`netns`]: network namespaces, veth pods and in-namespace threads;
//! - [`testrun`]: `BPF_PROG_TEST_RUN` for benchmarks;
//! - [`testenv`]: the shared, self-cleaning test environment.

pub mod conntrack;
pub mod counters;
pub mod endpoint;
pub mod error;
pub mod events;
pub mod ipcache;
pub mod loader;
pub mod netns;
pub mod policy;
pub mod testenv;
pub mod testrun;

pub use conntrack::{CtEntry, CtKey, CtState, GcStats};
pub use counters::{CounterEntry, EndpointCounters};
pub use endpoint::EndpointInfo;
pub use error::DatapathError;
pub use events::{DatapathEvent, EventReader, MatchType, Verdict, events_lost_pinned};
pub use loader::{Datapath, DatapathConfig, Program};
pub use policy::{Direction, PolicyKey, PolicyValue, PortBlock, port_range_blocks};

/// Drop reason: no policy entry matched (default deny), Cilium's `DROP_POLICY`.
pub const DROP_POLICY: u16 = 133;
/// Drop reason: an explicit deny entry matched, Cilium's `DROP_POLICY_DENY`.
pub const DROP_POLICY_DENY: u16 = 181;

/// Reserved identity: the wildcard in policy keys (any remote identity).
pub const IDENTITY_WILDCARD: u32 = 0;
/// Reserved identity: the host.
pub const IDENTITY_HOST: u32 = 1;
/// Reserved identity: addresses not in the ipcache.
pub const IDENTITY_WORLD: u32 = 2;

/// The compiled kernel object (both programs and all map definitions).
pub(crate) static BPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lxc.bpf.o"));
