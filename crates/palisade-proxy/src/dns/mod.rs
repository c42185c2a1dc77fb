//! The DNS proxy: DNS rules (`rules.dns` with `matchName`/`matchPattern`)
//! and the name → address learning that `toFQDNs` needs.
//!
//! - [`wire`]: a small, panic-free parser (header, questions, A/AAAA/CNAME
//!   answers, EDNS presence) and the answers the proxy builds itself;
//! - [`verdict`]: the per-message decision, the datapath's own map lookup
//!   plus `trace::l7_verdict` (shared with the Kafka proxy);
//! - [`cache`]: the FQDN cache (TTL, minimum TTL, cap per name, expiry
//!   with grace, `list()` for `palisade fqdn cache list`);
//! - [`hook`]: what the proxy calls with learned addresses **before** it
//!   releases an answer (bounded by `max_delay`) and with expired ones; the
//!   agent wires it to `Engine::learn_fqdn` and the datapath;
//! - [`server`]: the UDP and TCP (length-prefixed) proxy, transparent
//!   (TPROXY in the node namespace, see [`redirect`]) or explicit (a fixed
//!   upstream), with the TCP retry of truncated UDP answers;
//! - [`record`]: DNS flow records;
//! - [`socket`]: the transparent UDP sockets.

pub mod cache;
pub mod hook;
pub mod record;
pub mod redirect;
pub mod server;
pub mod socket;
pub mod verdict;
pub mod wire;

pub use cache::{CacheLimits, CacheRow, FqdnCache};
pub use hook::{EngineHook, FqdnHook, FqdnUpdate, HookFuture, NoHook};
pub use record::{DnsRecord, Sink};
pub use server::{DnsConfig, DnsProxy, DnsProxyOptions, DnsStats, RejectCode};
