//! Palisade's agent: the daemon that makes policy real on one machine.
//!
//! - [`sources`]: the watched manifests directory and the API store; every
//!   change is validated whole before it is applied;
//! - [`pods`] and [`ipam`]: the local pod runtime (a network namespace and a
//!   veth into the node namespace per pod, an address from the pod CIDR);
//! - [`reconcile`]: desired state from the engine to the datapath, by deltas;
//! - [`agent`]: the [`Agent`] that ties them together, with its threads
//!   (manifest watcher, conntrack GC, event reader, API server);
//! - [`api`]: the JSON-lines protocol over the unix socket and its [`api::Client`];
//! - [`flows`]: datapath events as Hubble flows (ring, metrics, audit),
//!   and the web endpoints (service map, `/api/flows`, `/metrics`);
//! - [`traffic`]: real connections (TCP, UDP, ICMP) and servers inside
//!   namespaces, for the lab and the tests.
//!
//! The agent's "host" is a dedicated network namespace (default
//! `palisade-node`) holding the pods' host-side veths, their routes and IPv4
//! forwarding, so nothing ever changes in the machine's root namespace.

pub mod agent;
pub mod api;
pub mod config;
pub mod error;
pub mod flows;
pub mod ipam;
pub mod l7proc;
pub mod pods;
pub mod reconcile;
mod server;
pub mod sources;
pub mod store;
pub mod traffic;

pub use agent::{Agent, purge};
pub use api::{Client, PodRunSpec, Request, Response};
pub use config::AgentConfig;
pub use error::{AgentError, Result};
pub use sources::SourceFile;
