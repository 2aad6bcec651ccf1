//! krops-core: the configuration model, the stable plugin ABI, target transports and the
//! stage pipeline. It knows nothing of command-line parsing or terminals.

pub mod abi;
pub mod activation;
pub mod concurrent;
pub mod config;
pub mod events;
pub mod exec;
pub mod handle;
pub mod loader;
pub mod nix;
pub mod pipeline;
pub mod plugin;
pub mod ssh;
pub mod target;
pub mod transport;
