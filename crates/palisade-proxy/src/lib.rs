//! Palisade's L7 proxy: enforces HTTP/1.1, HTTP/2 (h2c prior knowledge)
//! and gRPC rules on traffic the node redirects to it transparently.
//!
//! - [`redirect`]: TPROXY in the node namespace (nftables sets of
//!   (endpoint address, port) built from the redirect entries of every
//!   endpoint's policy map, policy routing, the transparent listener and
//!   transparent upstream sockets);
//! - [`snapshot`]: one policy snapshot and the decisions taken with it: per
//!   connection the datapath's own `PolicyMap::lookup`, per request
//!   `trace::l7_verdict`, the matcher `palisade policy trace` uses;
//! - [`http`]: the hyper server/client pair that enforces per request;
//! - [`record`]: [`L7Record`] flow records and their sink;
//! - [`feed`]: the policy feed the agent writes (a JSON snapshot, replaced
//!   atomically) and the standalone manifest-directory source;
//! - [`server`]: listener, per-connection tasks, limits, timeouts and the
//!   [`ProxyHandle`];
//! - [`config`]: settings with defaults.
//!
//! The proxy runs as its own process (`palisade proxy`), so restarting the
//! agent does not break L7 traffic.

pub mod config;
pub mod dns;
pub mod error;
pub mod feed;
pub mod http;
pub mod kafka;
pub mod netns;
pub mod record;
pub mod redirect;
pub mod relay;
pub mod server;
pub mod snapshot;

pub use config::ProxyConfig;
pub use error::ProxyError;
pub use feed::{FeedEndpoint, FeedSource, PolicyFeed};
pub use record::{L7Peer, L7Record, L7Verdict, RecordSink};
pub use server::{ProxyHandle, ProxyOptions, ProxyStatus, Stats};
pub use snapshot::{ConnPlan, ConnVerdict, PolicySnapshot, RequestVerdict};
