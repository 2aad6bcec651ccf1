//! The stable ABI between the `krops` host and populator plugins.
//!
//! Both vtables are frozen: abi_stable's prefix types only evolve one way (an old host can load
//! a new plugin, a new host rejects every old one), so neither will ever gain a method. Growth
//! happens by *name* instead: a plugin answers named methods (`validate`, `prepare`,
//! `populate`, and whatever later hosts ask, see `krops_core::wire::method`) and the host offers
//! named capabilities (`run_script`, `rsync`, …, see `krops_core::wire::capability`), each with a
//! JSON request. A host that gains a capability lists it in [`TargetHandle::describe`]; plugins
//! built before keep loading because no layout changed.
//!
//! Compatibility is [`ABI_VERSION`] alone, never krops's version: the loader reads it through a
//! plain C symbol before abi_stable's layout check, and abi_stable's own checks (the root
//! module's version strings, the package version recorded in every type layout) see this
//! crate's version, which is `ABI_VERSION.0.0` (see Cargo.toml).

// `#[sabi_trait]` and `StableAbi` expand to unsafe impls; that is abi_stable's business.
#![allow(unsafe_code)]
// Each `#[sabi_trait]` emits an impl that rustc's non_local_definitions lint flags.
#![allow(non_local_definitions)]

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::{RRef, VersionStrings},
    std_types::{RBox, RResult, RSlice, RStr, RString, RVec},
    StableAbi,
};

/// The plugin ABI this crate describes. Bump on any incompatible change of the vtables below or
/// of the meaning of the JSON documents exchanged through them; never for additions.
pub const ABI_VERSION: u32 = 2;

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
    /// Creates the plugin's populator; a constructor that fails or panics answers `RErr`.
    #[sabi(last_prefix_field)]
    pub new: extern "C" fn() -> RResult<PopulatorBox, RString>,
}

impl RootModule for PopulatorModuleRef {
    declare_root_module_statics! {PopulatorModuleRef}
    const BASE_NAME: &'static str = "krops_populator";
    const NAME: &'static str = "krops_populator";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// A source type, as a plugin implements it.
#[sabi_trait]
pub trait Populator: Send + Sync {
    /// `{"type": "file", "version": "1.2.3", "methods": ["validate", …]}`
    /// (`krops_core::wire::Description`).
    fn describe(&self) -> RString;

    /// Answers the named method's JSON request. `target` is the host's handle: for `populate`
    /// the target being populated, for the other methods one without a target whose `describe`
    /// says so. A method the plugin does not know answers an error starting with
    /// `krops_core::wire::UNSUPPORTED`.
    #[sabi(last_prefix_field)]
    fn call(
        &self,
        method: RStr<'_>,
        request: RStr<'_>,
        target: TargetHandleRef<'_>,
    ) -> RResult<RString, RString>;
}

/// An owned populator, as returned by a plugin.
pub type PopulatorBox = Populator_TO<'static, RBox<()>>;

/// The host's capabilities, lent to a plugin for one call. Plugins never spawn processes
/// themselves: everything on the target (and on the deploying machine) goes through this
/// handle, so quoting, ssh multiplexing, sudo and logging live in one place.
#[sabi_trait]
pub trait TargetHandle: Sync {
    /// The target and the capabilities the host offers (`krops_core::wire::TargetInfo`).
    fn describe(&self) -> RString;

    /// Runs the named capability with a JSON request and raw input bytes (a command's stdin,
    /// a file's contents); returns its raw output. An unknown capability answers an error
    /// starting with `krops_core::wire::UNSUPPORTED`.
    fn call(
        &self,
        capability: RStr<'_>,
        request: RStr<'_>,
        input: RSlice<'_, u8>,
    ) -> RResult<RVec<u8>, RString>;

    /// Logs through the host (a plugin's own `tracing` would be a separate, silent copy).
    #[sabi(last_prefix_field)]
    fn log(&self, level: u8, message: RStr<'_>);
}

/// A borrowed target handle, as passed into [`Populator::call`].
pub type TargetHandleRef<'a> = TargetHandle_TO<'a, RRef<'a, ()>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crate_version_is_the_abi_version() {
        let parsed = package_version_strings!().parsed().expect("valid version string");
        assert_eq!((parsed.major, parsed.minor, parsed.patch), (ABI_VERSION, 0, 0));
    }
}
