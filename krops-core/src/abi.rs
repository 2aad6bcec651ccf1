//! The stable ABI between the `krops` host and populator plugins.
//!
//! Kept deliberately small and frozen: abi_stable's prefix types only evolve one way (an old
//! host can load a new plugin, a new host rejects every old one), so every vtable here has a
//! few methods whose arguments and results are JSON documents. New attributes, reports and
//! options go into the JSON; an incompatible change bumps [`ABI_VERSION`], which the loader
//! checks through a plain C symbol before abi_stable's own layout check.

// `#[sabi_trait]` and `StableAbi` expand to unsafe impls; that is abi_stable's business.
#![allow(unsafe_code)]

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, RResult, RSlice, RStr, RString, RVec},
    StableAbi,
};

/// The plugin ABI this host speaks. Bump on any incompatible change of the vtables below or of
/// the meaning of the JSON documents exchanged through them.
pub const ABI_VERSION: u32 = 1;

/// Every plugin exports `extern "C" fn krops_populator_abi_version() -> u32` under this name.
pub const ABI_VERSION_SYMBOL: &str = "krops_populator_abi_version";

/// Log levels understood by [`TargetHandle::log`].
pub mod log_level {
    pub const ERROR: u8 = 1;
    pub const WARN: u8 = 2;
    pub const INFO: u8 = 3;
    pub const DEBUG: u8 = 4;
    pub const TRACE: u8 = 5;
}

/// The root module a plugin library exports.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PopulatorModuleRef)))]
#[sabi(missing_field(panic))]
pub struct PopulatorModule {
    /// Creates the plugin's populator.
    #[sabi(last_prefix_field)]
    pub new: extern "C" fn() -> PopulatorBox,
}

impl RootModule for PopulatorModuleRef {
    declare_root_module_statics! {PopulatorModuleRef}
    const BASE_NAME: &'static str = "krops_populator";
    const NAME: &'static str = "krops_populator";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// A source type, as a plugin implements it.
///
/// JSON documents (see `krops_core::plugin` for their Rust shape):
/// - `describe` returns `{"type": "file", "version": "1.2.3"}`.
/// - `validate` takes `{"name", "attrs", "configDir"}` and returns the normalised attributes
///   (defaults filled in, paths absolute) or an error message for the user.
/// - `prepare` takes `{"name", "attrs"}` (validated attributes) and returns the attributes to
///   populate with, e.g. a git branch resolved to a commit. It runs once per deployment before
///   any target is touched, so that its failures leave every target as it was.
/// - `populate` takes `{"name", "attrs", "targetPath"}` and returns a report object.
#[sabi_trait]
pub trait Populator: Send + Sync {
    fn describe(&self) -> RString;

    fn validate(&self, request: RStr<'_>) -> RResult<RString, RString>;

    fn prepare(&self, request: RStr<'_>) -> RResult<RString, RString>;

    #[sabi(last_prefix_field)]
    fn populate(&self, target: TargetHandleRef<'_>, request: RStr<'_>) -> RResult<RString, RString>;
}

/// An owned populator, as returned by a plugin.
pub type PopulatorBox = Populator_TO<'static, RBox<()>>;

/// The host's capabilities, lent to a plugin for one `populate` call. Plugins never spawn
/// processes themselves: everything on the target (and the pipe type's local command) goes
/// through this handle, so quoting, ssh multiplexing, sudo and logging live in one place.
#[sabi_trait]
pub trait TargetHandle: Sync {
    /// `{"host", "path", "local", "sudo"}` of the target being populated.
    fn describe(&self) -> RString;

    /// Runs `/bin/sh -c SCRIPT sh ARGS...` on the target (under sudo for sudo targets), feeding
    /// `stdin`; returns its standard output. The error carries the script's stderr.
    fn run_script(
        &self,
        script: RStr<'_>,
        args: RSlice<'_, RString>,
        stdin: RSlice<'_, u8>,
    ) -> RResult<RVec<u8>, RString>;

    /// Runs a shell command on the deploying machine; returns its standard output.
    fn run_local(&self, command: RStr<'_>) -> RResult<RVec<u8>, RString>;

    /// Copies a local path to the target with rsync. Request:
    /// `{"source": "/abs/local", "destination": "/abs/on/target", "options": ["-vFrlptD", ...]}`;
    /// the host adds transport options (`-e`, `--rsync-path`). Returns `{"itemized": [...]}`.
    fn rsync(&self, request: RStr<'_>) -> RResult<RString, RString>;

    /// Writes `contents` to a file on the target. Request: `{"path": "/abs", "mode": 420}`.
    /// The file is created with that mode before any byte is written, then moved into place.
    fn write_file(&self, request: RStr<'_>, contents: RSlice<'_, u8>) -> RResult<(), RString>;

    /// Logs through the host (a plugin's own `tracing` would be a separate, silent copy).
    #[sabi(last_prefix_field)]
    fn log(&self, level: u8, message: RStr<'_>);
}

/// A borrowed target handle, as passed into [`Populator::populate`].
pub type TargetHandleRef<'a> = TargetHandle_TO<'a, abi_stable::sabi_types::RRef<'a, ()>>;
