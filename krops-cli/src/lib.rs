//! krops's orchestration, as a library under the `krops` binary: configuration model and
//! loaders, the plugin loader and its typed façade, the stage pipeline, target transports,
//! the ssh multiplexer, process execution, activation builders and events. It knows nothing of
//! clap or terminals; `main.rs` parses, runs and renders.

pub mod activate;
pub mod activation;
pub mod config;
pub mod diff;
pub mod events;
pub mod exec;
pub mod handle;
pub mod hints;
pub mod loader;
pub mod lock;
pub mod nested;
pub mod nix;
pub mod own_dir;
pub mod pipeline;
pub mod populate;
pub mod reboot;
pub mod record;
pub mod recovery;
pub mod redact;
pub mod select;
pub mod shell_words;
pub mod ssh;
pub mod stage;
pub mod target;
pub mod transport;
