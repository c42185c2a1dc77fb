//! The Kafka proxy: Kafka L7 rules (`role`, `apiKey`, `apiVersion`,
//! `clientID`, `topic`) on every request of a connection.
//!
//! - [`request`]: a bounded, panic-free reader of request headers and the
//!   topics of Produce, Fetch, ListOffsets, Metadata, OffsetCommit and
//!   OffsetFetch (why not kafka-protocol's decoders: see there);
//! - [`response`]: responses built with kafka-protocol: the denial of a
//!   request (same API and version, TOPIC_AUTHORIZATION_FAILED per topic
//!   and partition, or the API's own authorization error), and the
//!   ApiVersions clamp to the versions the proxy reads;
//! - [`server`]: the transparent listener (TPROXY, see
//!   [`crate::dns::redirect`]), the per-connection relay that keeps
//!   responses in request order (correlation ids checked), records.
//!
//! Every request is decided with [`crate::dns::verdict::decide`]: the
//! datapath's map lookup, then `trace::l7_verdict` with a
//! `KafkaRequest { api_key, api_version, client_id, topics }`.

pub mod record;
pub mod request;
pub mod response;
pub mod server;

pub use record::KafkaRecord;
pub use request::{ParsedRequest, RequestError, TopicPartitions, parse_request};
pub use server::{KafkaConfig, KafkaProxy, KafkaProxyOptions, KafkaStats};
