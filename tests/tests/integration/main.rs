//! Integration tests: the real `krops` binary and real plugins, with real rsync, against local
//! targets in temporary directories. Build first with `cargo xtask test`.

// Test and build tooling starts its helper programs directly; the exec-only rule is krops's.
#![allow(clippy::disallowed_methods)]
// Tests say what they expect; a failed unwrap is a failed expectation.
#![allow(clippy::unwrap_used)]

mod config_errors;
mod daily;
mod diff;
mod fleet;
mod git;
mod nix;
mod nix_config;
mod nix_corpus;
mod output;
mod plugins;
mod races;
mod recovery;
mod remote;
mod safety;
mod scenarios;
mod secrets;
mod shard;
mod support;
mod terminal;
