//! Finds and loads populator plugins, and is the only code that calls them: [`Plugin`]'s
//! typed methods (`validate`, `prepare`, `populate`) are the façade every stage uses, so no
//! stage touches abi_stable.
//!
//! Loading never crashes or hangs krops: a file is checked to be a regular file and a
//! complete ELF object (a truncated library would SIGBUS inside `dlopen`) before it is mapped,
//! then its ABI version symbol is read (libloading), then abi_stable's layout check runs. A file
//! that fails any step is kept as a *broken* plugin for the type its file name names: only the
//! deployments that use that type fail, and `krops plugins` lists it with its error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use abi_stable::library::{lib_header_from_path, LibraryError};
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::RStr;
use krops_core::abi::{PopulatorBox, PopulatorModuleRef, TargetHandle_TO, ABI_VERSION, ABI_VERSION_SYMBOL};
use krops_core::wire::{method, Description, PopulateRequest, PrepareRequest, ValidateRequest};
use serde::Serialize;
use serde_json::Value;

use crate::config::SourceValidator;
use crate::handle::HostHandle;

/// File names that are populator plugins: `libkrops_populator_<type>.so`.
pub const FILE_PREFIX: &str = "libkrops_populator_";
pub const FILE_SUFFIX: &str = std::env::consts::DLL_SUFFIX;

/// A plugin file that could not be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("plugin {}: {message}", file.display())]
pub struct PluginError {
    pub file: PathBuf,
    pub message: String,
}

/// A loaded plugin.
pub struct Plugin {
    pub source_type: String,
    pub version: String,
    pub file: PathBuf,
    populator: PopulatorBox,
    // Kept so the library stays mapped; plugins are never unloaded.
    _library: libloading::Library,
}

impl Plugin {
    /// The normalised attributes of source `name`, or the user's error.
    pub fn validate(&self, name: &str, attrs: Value, config_dir: &Path) -> Result<Value, String> {
        let request = ValidateRequest { name: name.to_owned(), attrs, config_dir: config_dir.to_owned() };
        self.call_for_attrs(method::VALIDATE, &request, &HostHandle::without_target(None))
    }

    /// The attributes to populate with; runs before any target is touched.
    pub fn prepare(&self, name: &str, attrs: Value, handle: &HostHandle<'_>) -> Result<Value, String> {
        self.call_for_attrs(method::PREPARE, &PrepareRequest { name: name.to_owned(), attrs }, handle)
    }

    /// Puts source `name` at `<target_path>/<name>` through `handle`; returns the plugin's report.
    pub fn populate(
        &self,
        handle: &HostHandle<'_>,
        name: &str,
        attrs: Value,
        target_path: &str,
    ) -> Result<Value, String> {
        let request = PopulateRequest { name: name.to_owned(), attrs, target_path: target_path.to_owned() };
        let report = self.call(method::POPULATE, &request, handle)?;
        Ok(serde_json::from_str(&report).unwrap_or(Value::Null))
    }

    fn call_for_attrs(
        &self,
        method: &str,
        request: &impl Serialize,
        handle: &HostHandle<'_>,
    ) -> Result<Value, String> {
        let attrs = self.call(method, request, handle)?;
        serde_json::from_str(&attrs)
            .map_err(|e| format!("the {} plugin returned malformed attributes: {e}", self.source_type))
    }

    fn call(
        &self,
        method: &str,
        request: &impl Serialize,
        handle: &HostHandle<'_>,
    ) -> Result<String, String> {
        let request = serde_json::to_string(request).map_err(|e| e.to_string())?;
        self.populator
            .call(
                RStr::from(method),
                RStr::from(request.as_str()),
                TargetHandle_TO::from_ptr(handle, TD_Opaque),
            )
            .into_result()
            .map(|answer| answer.into_string())
            .map_err(|error| error.into_string())
    }
}

/// Every plugin file found: the usable ones and the broken ones, by type.
#[derive(Default)]
pub struct Registry {
    plugins: BTreeMap<String, Plugin>,
    broken: BTreeMap<String, PluginError>,
    searched: Vec<PathBuf>,
}

/// SPEC's search order: each `--plugin-dir`, each entry of `KROPS_PLUGIN_PATH`, the
/// executable's directory, `<exe dir>/../lib/krops/plugins`. Never the current directory:
/// loading a library runs its code.
pub fn search_dirs(plugin_dirs: &[PathBuf], plugin_path: Option<&str>, exe: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = plugin_dirs.to_vec();
    // Empty and relative entries would mean the current directory; they are skipped.
    dirs.extend(plugin_path.unwrap_or("").split(':').map(PathBuf::from).filter(|p| p.is_absolute()));
    if let Some(exe_dir) = exe.and_then(Path::parent) {
        dirs.push(exe_dir.to_owned());
        dirs.push(krops_core::sdk::normalise(&exe_dir.join("../lib/krops/plugins")));
    }
    dirs
}

impl Registry {
    /// Loads every plugin file in `dirs`. A type is served by the first directory that has a
    /// file for it, as with `PATH`; a file that cannot be used is recorded as broken.
    pub fn load(dirs: &[PathBuf]) -> Registry {
        let mut registry = Registry { searched: dirs.to_vec(), ..Registry::default() };
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(dir) else { continue };
            let mut files: Vec<(String, PathBuf)> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter_map(|path| Some((type_of_file(&path)?, path)))
                .collect();
            files.sort();
            for (source_type, file) in files {
                if registry.plugins.contains_key(&source_type) || registry.broken.contains_key(&source_type) {
                    tracing::debug!(file = %file.display(), "shadowed by an earlier plugin directory");
                    continue;
                }
                match load_plugin(&file, &source_type) {
                    Ok(plugin) => registry.plugins.insert(source_type, plugin).map(drop),
                    Err(error) => registry.broken.insert(source_type, error).map(drop),
                };
            }
        }
        registry
    }

    /// The plugin serving `source_type`, or why there is none.
    pub fn plugin(&self, source_type: &str) -> Result<&Plugin, String> {
        if let Some(plugin) = self.plugins.get(source_type) {
            return Ok(plugin);
        }
        if let Some(error) = self.broken.get(source_type) {
            return Err(error.to_string());
        }
        let available: Vec<&str> = self.plugins.keys().map(String::as_str).collect();
        if available.is_empty() {
            let searched: Vec<String> = self.searched.iter().map(|d| d.display().to_string()).collect();
            Err(format!(
                "unknown source type {source_type:?}: no populator plugins were found (searched {})",
                searched.join(", ")
            ))
        } else {
            Err(format!("unknown source type {source_type:?}; available types: {}", available.join(", ")))
        }
    }

    pub fn plugins(&self) -> impl Iterator<Item = &Plugin> {
        self.plugins.values()
    }

    pub fn broken(&self) -> impl Iterator<Item = &PluginError> {
        self.broken.values()
    }
}

impl SourceValidator for Registry {
    fn knows(&self, source_type: &str) -> bool {
        self.plugins.contains_key(source_type) || self.broken.contains_key(source_type)
    }

    /// A source of a broken plugin's type passes unvalidated: its deployment fails at
    /// `prepare` with the plugin's error, before any target is touched, and the others go on.
    fn validate(
        &self,
        name: &str,
        source_type: &str,
        attrs: Value,
        config_dir: &Path,
    ) -> Result<Value, String> {
        if self.broken.contains_key(source_type) {
            return Ok(attrs);
        }
        self.plugin(source_type)?.validate(name, attrs, config_dir)
    }
}

/// `<type>` of `libkrops_populator_<type>.so`, for files named like plugins.
fn type_of_file(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let source_type = name.strip_prefix(FILE_PREFIX)?.strip_suffix(FILE_SUFFIX)?;
    (!source_type.is_empty()).then(|| source_type.to_owned())
}

fn load_plugin(file: &Path, source_type: &str) -> Result<Plugin, PluginError> {
    let fail = |message: String| PluginError { file: file.to_owned(), message };
    check_complete_elf(file).map_err(fail)?;
    let library = open_and_check_abi(file).map_err(fail)?;
    let header = lib_header_from_path(file).map_err(|e| fail(short_library_error(e)))?;
    let module = header.init_root_module::<PopulatorModuleRef>().map_err(|e| fail(short_library_error(e)))?;
    let populator = (module.new())().into_result().map_err(|e| fail(format!("cannot start: {e}")))?;
    let description: Description = serde_json::from_str(populator.describe().as_str())
        .map_err(|e| fail(format!("describes itself badly: {e}")))?;
    if description.source_type != source_type {
        return Err(fail(format!(
            "declares source type {:?} but its file is named for {source_type:?}; name it {FILE_PREFIX}{}{FILE_SUFFIX}",
            description.source_type, description.source_type
        )));
    }
    Ok(Plugin {
        source_type: description.source_type,
        version: description.version,
        file: file.to_owned(),
        populator,
        _library: library,
    })
}

/// A library shorter than its headers claim makes the dynamic loader touch unmapped pages
/// (SIGBUS), and a FIFO or device would block or mislead it: only a regular file whose every
/// segment and section table lies within the file goes on to `dlopen`.
fn check_complete_elf(file: &Path) -> Result<(), String> {
    use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
    let metadata = std::fs::metadata(file).map_err(|e| format!("cannot be read: {e}"))?;
    if !metadata.is_file() {
        return Err("is not a regular file".to_owned());
    }
    let data = std::fs::read(file).map_err(|e| format!("cannot be read: {e}"))?;
    let not_library = |detail: String| format!("cannot be loaded as a shared library: {detail}");
    let elf = ElfFile64::<object::Endianness>::parse(&*data).map_err(|e| not_library(e.to_string()))?;
    let (header, endian) = (elf.elf_header(), elf.endian());
    let length = data.len() as u64;
    for segment in elf.elf_program_headers() {
        let end = Into::<u64>::into(segment.p_offset(endian)).checked_add(segment.p_filesz(endian).into());
        if end.is_none_or(|end| end > length) {
            return Err(not_library(format!("truncated ({length} bytes, a segment ends beyond)")));
        }
    }
    let sections = u64::from(header.e_shnum(endian)) * u64::from(header.e_shentsize(endian));
    if header.e_shoff(endian).checked_add(sections).is_none_or(|end| end > length) {
        return Err(not_library(format!("truncated ({length} bytes, the section table ends beyond)")));
    }
    Ok(())
}

/// Loads the library with libloading and reads its ABI version through a plain C symbol, so
/// that a plugin built against another ABI gets one clear sentence instead of abi_stable's
/// page-long layout report.
#[allow(unsafe_code)]
fn open_and_check_abi(file: &Path) -> Result<libloading::Library, String> {
    // SAFETY: loading a library runs its initialisers; plugins are only loaded from the
    // directories of SPEC's search path, which the user controls.
    let library = unsafe { libloading::Library::new(file) }
        .map_err(|e| format!("cannot be loaded as a shared library: {e}"))?;
    // SAFETY: the symbol's type is fixed by the plugin ABI (`export_populator!`).
    let abi_version = unsafe { library.get::<extern "C" fn() -> u32>(ABI_VERSION_SYMBOL.as_bytes()) }
        .map(|version| version())
        .map_err(|_| format!("is not a krops populator plugin (it exports no {ABI_VERSION_SYMBOL})"))?;
    if abi_version != ABI_VERSION {
        return Err(format!(
            "was built for plugin ABI {abi_version}, but this krops speaks ABI {ABI_VERSION}; rebuild it against a krops-core of ABI {ABI_VERSION}"
        ));
    }
    Ok(library)
}

/// abi_stable explains a layout mismatch in hundreds of lines; its last paragraph says what
/// matters.
fn short_library_error(error: LibraryError) -> String {
    let text = error.to_string();
    let last = text.split("\n\n").map(str::trim).filter(|p| !p.is_empty()).last().unwrap_or("unknown error");
    let lines: Vec<&str> = last.lines().take(6).collect();
    format!("is incompatible with this krops: {}", lines.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_order_and_no_current_directory() {
        let dirs = search_dirs(
            &[PathBuf::from("/a")],
            Some("/b::relative:/c"),
            Some(Path::new("/opt/krops/bin/krops")),
        );
        assert_eq!(
            dirs,
            [
                PathBuf::from("/a"),
                PathBuf::from("/b"),
                PathBuf::from("/c"),
                PathBuf::from("/opt/krops/bin"),
                PathBuf::from("/opt/krops/lib/krops/plugins"),
            ]
        );
    }

    #[test]
    fn plugin_file_names_name_their_type() {
        assert_eq!(type_of_file(Path::new("/x/libkrops_populator_file.so")).as_deref(), Some("file"));
        assert_eq!(type_of_file(Path::new("/x/libkrops_core.so")), None);
        assert_eq!(type_of_file(Path::new("/x/libkrops_populator_.so")), None);
        assert_eq!(type_of_file(Path::new("/x/libkrops_populator_file.rlib")), None);
    }
}
