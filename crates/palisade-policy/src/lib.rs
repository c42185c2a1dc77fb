//! Palisade policy crate.
