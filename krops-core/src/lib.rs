//! krops-core: the contract between krops and its populator plugins, and nothing else — the
//! stable ABI ([`abi`]), the JSON documents that cross it ([`wire`]), what a populator author
//! writes against ([`plugin`]: the `PopulatorPlugin` trait, the typed target handle,
//! `export_populator!`), their helpers ([`sdk`]) and a fake target for unit tests
//! ([`testing`]). No async runtime, no ssh, no configuration, no process spawning (but the
//! test fake's, which stands for a host): those are the host's (krops-cli). Every public item
//! is documented (`deny(missing_docs)`): this crate is what third parties read.

#![deny(missing_docs)]

/// The frozen vtables (the `krops-abi` crate, whose version is the ABI version).
pub use krops_abi as abi;
pub mod plugin;
pub mod sdk;
pub mod testing;
mod tree;
pub mod wire;
