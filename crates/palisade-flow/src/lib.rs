//! Palisade's flows: the flow record in Hubble's `Flow` shape and JSON
//! encoding, building records from verdicts with full attribution, Hubble's
//! filters, the bounded ring of recent flows, printers, and Prometheus
//! metrics.

pub mod filter;
pub mod flow;
pub mod metrics;
pub mod printer;
pub mod record;
pub mod ring;
pub mod servicemap;
pub mod web;

pub use filter::{Criterion, FilterSet, FlowFilter, Side};
pub use flow::{Flow, FlowsResponse, LostEvent, Verdict};
pub use record::{Attribution, Peer, VerdictEvent, flow_from_verdict};
pub use ring::FlowRing;
