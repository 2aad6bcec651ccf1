//! What a populator plugin is written against: the [`PopulatorPlugin`] trait, [`Target`] (the
//! typed side of the host's handle), and [`export_populator!`](crate::export_populator), which
//! turns an implementation into the stable-ABI root module the host loads. Every entry point,
//! the constructor included, is panic-guarded here, so a plugin bug fails one source instead of
//! aborting krops at the FFI boundary.

use std::panic::{catch_unwind, AssertUnwindSafe};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RSlice, RStr, RString};
use serde::{de::DeserializeOwned, Serialize};

use crate::abi::{log_level, Populator, PopulatorBox, Populator_TO, TargetHandleRef};
use crate::tree::{
    check_tree_path, tree_archive, Entry, SecretFile, TreeFile, DETACHED_INSTALL_SCRIPT, INSTALL_TREE_SCRIPT,
    PRIVATE_DIR_FUNCTIONS,
};
use crate::wire::{
    capability, method, Description, Diff, PopulateRequest, PrepareRequest, RsyncReport, RsyncRequest,
    RunLocalRequest, RunScriptRequest, StateKind, TargetInfo, Traits, ValidateRequest, WriteFileRequest,
    UNSUPPORTED,
};

/// A source type implemented in Rust. `export_populator!(MyType)` makes it a plugin.
pub trait PopulatorPlugin: Default + Send + Sync + 'static {
    /// The type key users write in the configuration (`file`, `git`, …). The plugin file must
    /// be named `libkrops_populator_<TYPE>.so`.
    const TYPE: &'static str;
    /// Shown by `krops plugins`.
    const VERSION: &'static str;
    /// What the host needs to know about the type's sources (its short form, state, program
    /// names); by default none of it.
    const TRAITS: TypeTraits = TypeTraits::NONE;
    /// The source's attributes; unknown keys should be rejected (`deny_unknown_fields`).
    type Attrs: DeserializeOwned + Serialize;

    /// Checks the attributes and returns them normalised: defaults filled in, paths absolute.
    /// Runs on the deploying machine while the configuration loads; errors are the user's.
    fn validate(&self, request: ValidateRequest<Self::Attrs>) -> Result<Self::Attrs, String>;

    /// Runs before anything is written on any target; returns the attributes to populate with
    /// (by default, unchanged). Resolve anything that may fail or drift here, such as a
    /// branch. `target` is the deployment's target: it may be asked (`run_script`), but only
    /// read from.
    fn prepare(
        &self,
        target: &Target<'_>,
        request: PrepareRequest<Self::Attrs>,
    ) -> Result<Self::Attrs, String> {
        let _ = target;
        Ok(request.attrs)
    }

    /// A fingerprint of what `populate` would put on the target (see [`crate::sdk::Fingerprint`]),
    /// computed on the deploying machine without touching the target; `None` (the default)
    /// means "always populate". When the fingerprint and the target's state under the name are
    /// those krops recorded after the last populate, the host skips the source: it must change
    /// whenever the result would. Never derive it from secret plaintext.
    fn fingerprint(
        &self,
        target: &Target<'_>,
        request: PrepareRequest<Self::Attrs>,
    ) -> Result<Option<String>, String> {
        let _ = (target, request);
        Ok(None)
    }

    /// What `populate` would change at `request.destination()`, found without changing
    /// anything on the target (`krops diff`). Secrets are compared by name and salted hash,
    /// never shown (see [`crate::sdk::secrets_diff`]). The default: the plugin cannot tell.
    fn diff(&self, target: &Target<'_>, request: PopulateRequest<Self::Attrs>) -> Result<Diff, String> {
        let _ = (target, request);
        Err(format!("{UNSUPPORTED} the {} populator cannot tell what would change", Self::TYPE))
    }

    /// Puts the source at `request.destination()` through `target`; returns a report.
    fn populate(
        &self,
        target: &Target<'_>,
        request: PopulateRequest<Self::Attrs>,
    ) -> Result<serde_json::Value, String>;
}

/// [`crate::wire::Traits`] as a plugin declares them, in a constant:
/// `const TRAITS: TypeTraits = TypeTraits { shorthand: Some("path"), ..TypeTraits::NONE };`.
#[derive(Debug, Clone, Copy)]
pub struct TypeTraits {
    /// See [`Traits::shorthand`].
    pub shorthand: Option<&'static str>,
    /// See [`Traits::state`].
    pub state: StateKind,
    /// See [`Traits::program`].
    pub program: Option<&'static str>,
    /// See [`Traits::program_in_process`].
    pub program_in_process: bool,
    /// See [`Traits::program_attribute`].
    pub program_attribute: Option<&'static str>,
    /// See [`Traits::version_attribute`].
    pub version_attribute: Option<&'static str>,
}

impl TypeTraits {
    /// No short form, a plain tree as state, no program named.
    pub const NONE: TypeTraits = TypeTraits {
        shorthand: None,
        state: StateKind::Tree,
        program: None,
        program_in_process: false,
        program_attribute: None,
        version_attribute: None,
    };

    fn to_wire(self) -> Traits {
        let owned = |s: Option<&str>| s.map(str::to_owned);
        Traits {
            shorthand: owned(self.shorthand),
            state: self.state,
            program: owned(self.program),
            program_in_process: self.program_in_process,
            program_attribute: owned(self.program_attribute),
            version_attribute: owned(self.version_attribute),
        }
    }
}

/// The typed side of the host's target handle: every capability as a method.
pub struct Target<'a> {
    handle: TargetHandleRef<'a>,
}

impl<'a> Target<'a> {
    /// Wraps the handle the host lent for one call.
    pub fn new(handle: TargetHandleRef<'a>) -> Self {
        Target { handle }
    }

    /// The target and the host's capabilities for this call.
    pub fn info(&self) -> TargetInfo {
        serde_json::from_str(self.handle.describe().as_str()).unwrap_or_default()
    }

    /// Whether the host offers `capability` (a name from [`crate::wire::capability`] or a newer
    /// one); a plugin using a capability newer hosts added checks this first.
    pub fn offers(&self, capability: &str) -> bool {
        self.info().capabilities.iter().any(|c| c == capability)
    }

    /// Calls a capability by name: the escape hatch for capabilities this crate has no typed
    /// method for yet.
    pub fn call(&self, capability: &str, request: &impl Serialize, input: &[u8]) -> Result<Vec<u8>, String> {
        let request = serde_json::to_string(request).map_err(|e| e.to_string())?;
        self.handle
            .call(RStr::from(capability), RStr::from(request.as_str()), RSlice::from(input))
            .into_result()
            .map(|out| out.into_vec())
            .map_err(RString::into_string)
    }

    /// Runs `/bin/sh -c script sh args...` on the target and returns its stdout.
    pub fn run_script(&self, script: &str, args: &[&str], stdin: &[u8]) -> Result<Vec<u8>, String> {
        let request = RunScriptRequest {
            script: script.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        };
        self.call(capability::RUN_SCRIPT, &request, stdin)
    }

    /// Runs a program on the deploying machine (argv, no shell) and returns its stdout.
    pub fn run_local(&self, argv: &[&str], stdin: &[u8]) -> Result<Vec<u8>, String> {
        let request = RunLocalRequest { argv: argv.iter().map(|a| (*a).to_owned()).collect() };
        self.call(capability::RUN_LOCAL, &request, stdin)
    }

    /// Copies a local path to the target ([`RsyncRequest`]); returns rsync's itemized changes.
    pub fn rsync(&self, request: &RsyncRequest) -> Result<RsyncReport, String> {
        let answer = self.call(capability::RSYNC, request, &[])?;
        serde_json::from_slice(&answer).map_err(|e| format!("host sent a bad rsync report: {e}"))
    }

    /// Writes `contents` to `path` on the target, made with `mode` before any byte is written and
    /// moved into place (never half-written, never wider than `mode`).
    pub fn write_file(&self, path: &str, mode: u32, contents: &[u8]) -> Result<(), String> {
        self.call(capability::WRITE_FILE, &WriteFileRequest { path: path.to_owned(), mode }, contents)
            .map(drop)
    }

    /// Replaces `destination` on the target with a directory holding `files`, in one swap:
    /// the files travel as one tar stream on stdin, never as arguments, with a manifest; they
    /// are unpacked into a fresh private staging directory beside `destination` (0700, its
    /// own: nothing in it is reachable through a name someone else controls) with the modes
    /// the plugin chose (`directory_mode` for the tree's directories: at least `0o700`, at most
    /// `0o777`; each file's own), and the tree takes the old one's place only once it matches
    /// the manifest: an interruption, a dropped connection or a full disk never leaves a
    /// partial tree, and a reader sees the old tree or the new one, whole. Needs the host's
    /// `run_script` only, so every host offers it.
    pub fn install_dir(
        &self,
        destination: &str,
        directory_mode: u32,
        files: &[TreeFile],
    ) -> Result<(), String> {
        if directory_mode & !0o777 != 0 || directory_mode & 0o700 != 0o700 {
            return Err(format!("install_dir: directory mode {directory_mode:o} is not within 700..777"));
        }
        let mut entries = Vec::with_capacity(files.len());
        for file in files {
            check_tree_path(&file.path).map_err(|why| format!("install_dir: {why}"))?;
            if file.mode & !0o777 != 0 {
                return Err(format!(
                    "install_dir: {:?}: mode {:o} is more than permission bits",
                    file.path, file.mode
                ));
            }
            entries.push(Entry {
                path: &file.path,
                contents: &file.contents,
                mtime: file.mtime,
                mode: file.mode,
            });
        }
        self.install(destination, directory_mode, &entries)
    }

    /// Replaces `destination` on the target with a directory (0700) holding `files` (0600, with
    /// their mtimes), as [`Target::install_dir`] does, under umask 077 throughout: no byte is
    /// ever readable by others.
    pub fn install_secrets(&self, destination: &str, files: &[SecretFile]) -> Result<(), String> {
        let mut entries = Vec::with_capacity(files.len());
        for file in files {
            check_tree_path(&file.path).map_err(|why| format!("install_secrets: {why}"))?;
            entries.push(Entry {
                path: &file.path,
                contents: &file.contents,
                mtime: file.mtime,
                mode: 0o600,
            });
        }
        self.install(destination, 0o700, &entries)
    }

    fn install(&self, destination: &str, directory_mode: u32, entries: &[Entry<'_>]) -> Result<(), String> {
        let archive = tree_archive(directory_mode, entries)
            .map_err(|e| format!("cannot pack the files for {destination}: {e}"))?;
        let installer = format!("{PRIVATE_DIR_FUNCTIONS}\n{INSTALL_TREE_SCRIPT}");
        self.run_script(DETACHED_INSTALL_SCRIPT, &[&installer, destination], &archive).map(drop)
    }

    /// Logs `message` at info level through krops.
    pub fn log_info(&self, message: &str) {
        self.handle.log(log_level::INFO, RStr::from(message));
    }

    /// Logs `message` at debug level through krops (shown with `-v`).
    pub fn log_debug(&self, message: &str) {
        self.handle.log(log_level::DEBUG, RStr::from(message));
    }
}

/// An error about one attribute, named by its path as serde names it (`modes.directory`,
/// `files[2]`): `at modes.directory: MESSAGE`. Type errors in the attributes read this way
/// already; a plugin's own checks say so with this (also as `sdk::at`).
pub fn at(path: &str, message: impl std::fmt::Display) -> String {
    format!("at {path}: {message}")
}

/// Turns a panic payload into a message.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let detail = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".to_owned());
    format!("panicked: {detail}")
}

/// Runs `f`, turning a panic into an error, so that nothing unwinds into the caller's frames.
pub fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => Err(panic_message(&*payload)),
    }
}

/// The attributes in the plugin's own type; a mismatch is the user's error, named by type and
/// by the attribute's path (`at modes.directory: invalid type: …`).
fn typed_attrs<P: PopulatorPlugin>(attrs: serde_json::Value) -> Result<P::Attrs, String> {
    serde_path_to_error::deserialize(attrs).map_err(|e| match e.path().to_string().as_str() {
        "." => format!("{} source: {}", P::TYPE, e.inner()),
        path => format!("{} source: {}", P::TYPE, at(path, e.inner())),
    })
}

fn parse<T: DeserializeOwned>(request: &str) -> Result<T, String> {
    serde_json::from_str(request).map_err(|e| format!("malformed request from the host: {e}"))
}

fn answer(value: &impl Serialize) -> Result<String, String> {
    serde_json::to_string(value).map_err(|e| e.to_string())
}

/// Bridges a [`PopulatorPlugin`] to the stable-ABI [`Populator`] trait.
struct Adapter<P>(P);

impl<P: PopulatorPlugin> Adapter<P> {
    fn dispatch(&self, method: &str, request: &str, target: &Target<'_>) -> Result<String, String> {
        match method {
            method::VALIDATE => {
                let request: ValidateRequest = parse(request)?;
                let attrs = typed_attrs::<P>(request.attrs)?;
                answer(&self.0.validate(ValidateRequest {
                    name: request.name,
                    attrs,
                    config_dir: request.config_dir,
                })?)
            }
            method::PREPARE => {
                let request: PrepareRequest = parse(request)?;
                let attrs = typed_attrs::<P>(request.attrs)?;
                answer(&self.0.prepare(target, PrepareRequest { name: request.name, attrs })?)
            }
            method::FINGERPRINT => {
                let request: PrepareRequest = parse(request)?;
                let attrs = typed_attrs::<P>(request.attrs)?;
                answer(&self.0.fingerprint(target, PrepareRequest { name: request.name, attrs })?)
            }
            method::POPULATE => {
                let request: PopulateRequest = parse(request)?;
                let attrs = typed_attrs::<P>(request.attrs)?;
                let request = PopulateRequest { name: request.name, attrs, target_path: request.target_path };
                answer(&self.0.populate(target, request)?)
            }
            method::DIFF => {
                let request: PopulateRequest = parse(request)?;
                let attrs = typed_attrs::<P>(request.attrs)?;
                let request = PopulateRequest { name: request.name, attrs, target_path: request.target_path };
                answer(&self.0.diff(target, request)?)
            }
            other => Err(format!("{UNSUPPORTED} the {} populator has no method {other:?}", P::TYPE)),
        }
    }
}

impl<P: PopulatorPlugin> Populator for Adapter<P> {
    fn describe(&self) -> RString {
        let description = Description {
            source_type: P::TYPE.to_owned(),
            version: P::VERSION.to_owned(),
            methods: [method::VALIDATE, method::PREPARE, method::FINGERPRINT, method::POPULATE, method::DIFF]
                .map(str::to_owned)
                .to_vec(),
            traits: P::TRAITS.to_wire(),
        };
        serde_json::to_string(&description).unwrap_or_default().into()
    }

    fn call(
        &self,
        method: RStr<'_>,
        request: RStr<'_>,
        target: TargetHandleRef<'_>,
    ) -> RResult<RString, RString> {
        let target = Target::new(target);
        guarded(|| self.dispatch(method.as_str(), request.as_str(), &target))
            .map(RString::from)
            .map_err(RString::from)
            .into()
    }
}

/// The constructor behind [`export_populator!`](crate::export_populator): a panic in the
/// plugin's `Default` becomes an error the host reports.
pub fn new_populator<P: PopulatorPlugin>() -> RResult<PopulatorBox, RString> {
    // This library's own copy of std would print every caught panic to krops's stderr; the
    // message reaches the user once, in krops's error for the source.
    std::panic::set_hook(Box::new(|_| {}));
    guarded(|| Ok(Populator_TO::from_value(Adapter(P::default()), TD_Opaque)))
        .map_err(|message| RString::from(format!("constructor {message}")))
        .into()
}

/// Exports a [`PopulatorPlugin`] as a krops plugin library. The crate must be a `cdylib`
/// whose library file is `libkrops_populator_<TYPE>.so`, and depend on `abi_stable` directly.
#[macro_export]
macro_rules! export_populator {
    ($plugin:ty) => {
        #[allow(unsafe_code)]
        #[::abi_stable::export_root_module]
        pub fn krops_populator_root_module() -> $crate::abi::PopulatorModuleRef {
            use ::abi_stable::prefix_type::PrefixTypeTrait;
            $crate::abi::PopulatorModule { new: krops_populator_new }.leak_into_prefix()
        }

        extern "C" fn krops_populator_new(
        ) -> ::abi_stable::std_types::RResult<$crate::abi::PopulatorBox, ::abi_stable::std_types::RString> {
            $crate::plugin::new_populator::<$plugin>()
        }

        /// Checked by the host before abi_stable's layout check, for a clear message.
        #[allow(unsafe_code)]
        #[no_mangle]
        pub extern "C" fn krops_populator_abi_version() -> u32 {
            $crate::abi::ABI_VERSION
        }
    };
}
