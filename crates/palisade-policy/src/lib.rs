//! Palisade's policy crate: the policy language (parsing and validation with
//! positions), labels, selectors, identities, the ipcache, resolution of
//! policies into per-endpoint policy maps, the L7 matchers and explanations.
//!
//! It does no I/O and has no async: text goes in, typed values come out.

pub mod api;
pub mod audit;
pub mod cluster;
pub mod decode;
pub mod engine;
pub mod fqdn;
pub mod identity;
pub mod ipcache;
pub mod l7;
pub mod labels;
pub mod manifest;
pub mod mapstate;
pub mod node;
pub mod repository;
pub mod selector;
pub mod selectorcache;
pub mod testspec;
pub mod trace;
