//! Proxy settings: the listening port and the limits that keep one client
//! from starving the others. Every field has a sane default.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The fwmark TPROXY sets on redirected packets and on return traffic of
/// the proxy's transparent sockets (Cilium's proxy mark, `0x200/0xf00`).
pub const PROXY_MARK: u32 = 0x200;
/// The mask of [`PROXY_MARK`].
pub const PROXY_MARK_MASK: u32 = 0xf00;
/// The routing table that delivers marked packets locally.
pub const PROXY_ROUTE_TABLE: u32 = 2004;
/// The mark on the proxy's own upstream connections (`SO_MARK`), so the
/// datapath and netfilter can recognise proxy-originated traffic.
pub const UPSTREAM_MARK: u32 = 0xb00;
/// The default listening port.
pub const DEFAULT_PORT: u16 = 15001;

/// Settings of one proxy instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ProxyConfig {
    /// The TPROXY listening port (on 0.0.0.0 in the node namespace).
    pub port: u16,
    /// Install and maintain the nftables TPROXY rules and policy routing.
    /// Off when another component owns redirection (or for explicit use).
    pub manage_redirect: bool,
    /// Name of the nftables table the proxy owns.
    pub nft_table: String,
    /// Open downstream connections at most; new ones are reset beyond it.
    pub max_connections: usize,
    /// Open downstream connections per source address at most.
    pub max_connections_per_source: usize,
    /// Requests in flight (all connections) at most; beyond it a request
    /// gets 503.
    pub max_inflight_requests: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Requests per connection; the connection is closed after it (0: no
    /// limit).
    pub max_requests_per_connection: u64,
    /// Largest request head (HTTP/1 buffer, HTTP/2 header list), bytes.
    pub max_header_bytes: usize,
    /// A request head must arrive within this time.
    #[serde(with = "duration_ms")]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and no byte moving for this
    /// long is closed.
    #[serde(with = "duration_ms")]
    pub idle_timeout: Duration,
    /// Connecting to the original destination must succeed within this.
    #[serde(with = "duration_ms")]
    pub connect_timeout: Duration,
    /// Bind upstream connections to the client's address (IP_TRANSPARENT)
    /// so the destination sees the real source identity.
    pub preserve_source: bool,
    /// Log every L7 record at info level (target `palisade::l7`).
    pub log_records: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            port: DEFAULT_PORT,
            manage_redirect: true,
            nft_table: "palisade_proxy".into(),
            max_connections: 16_384,
            max_connections_per_source: 4_096,
            max_inflight_requests: 16_384,
            max_concurrent_streams: 128,
            max_requests_per_connection: 0,
            max_header_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(5),
            preserve_source: true,
            log_records: true,
        }
    }
}

mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}
