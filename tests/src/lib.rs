//! Reusable test infrastructure for krops: real sshd test hosts on loopback ([`hosts`]) and a
//! latency-adding TCP proxy ([`proxy`]). Used by the integration tests and `cargo xtask bench`.

// Test and build tooling starts its helper programs directly; the exec-only rule is krops's.
#![allow(clippy::disallowed_methods)]

pub mod command;
pub mod git;
pub mod hosts;
pub mod packages;
pub mod proxy;
pub mod secrets;
