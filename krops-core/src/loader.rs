//! Finds and loads populator plugins, and answers for them as the configuration's
//! [`SourceValidator`]. Each library is checked in three steps, each with its own short
//! message: it loads at all, it exports our ABI version symbol with the right value, and
//! abi_stable's layout check passes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use abi_stable::library::{lib_header_from_path, LibraryError};
use abi_stable::std_types::{RStr, RString};
use serde_json::Value;

use crate::abi::{PopulatorBox, PopulatorModuleRef, ABI_VERSION, ABI_VERSION_SYMBOL};
use crate::config::SourceValidator;
use crate::plugin::{Description, ValidateRequest};

/// File names that are populator plugins: `libkrops_populator_<type>.so`.
pub const FILE_PREFIX: &str = "libkrops_populator_";
pub const FILE_SUFFIX: &str = std::env::consts::DLL_SUFFIX;

/// A plugin that could not be used.
#[derive(Debug, thiserror::Error)]
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
    pub populator: PopulatorBox,
    // Kept so the library stays mapped; plugins are never unloaded.
    _library: libloading::Library,
}

/// Every plugin found, by type.
#[derive(Default)]
pub struct Registry {
    plugins: BTreeMap<String, Plugin>,
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
        dirs.push(crate::plugin::normalise(&exe_dir.join("../lib/krops/plugins")));
    }
    dirs
}

impl Registry {
    /// Loads every plugin in `dirs`. Two plugins claiming one type is an error, as is any file
    /// named like a plugin that is not a usable one.
    pub fn load(dirs: &[PathBuf]) -> Result<Registry, PluginError> {
        let mut registry = Registry { plugins: BTreeMap::new(), searched: dirs.to_vec() };
        let mut seen = Vec::new();
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(dir) else { continue };
            let mut files: Vec<PathBuf> =
                entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| is_plugin_file_name(p)).collect();
            files.sort();
            for file in files {
                let canonical = file.canonicalize().unwrap_or_else(|_| file.clone());
                if seen.contains(&canonical) {
                    continue;
                }
                seen.push(canonical);
                let plugin = load_plugin(&file)?;
                if let Some(other) = registry.plugins.get(&plugin.source_type) {
                    return Err(PluginError {
                        file,
                        message: format!(
                            "claims source type {:?}, which {} already provides; remove one of them",
                            plugin.source_type,
                            other.file.display()
                        ),
                    });
                }
                registry.plugins.insert(plugin.source_type.clone(), plugin);
            }
        }
        Ok(registry)
    }

    pub fn get(&self, source_type: &str) -> Option<&Plugin> {
        self.plugins.get(source_type)
    }

    pub fn plugins(&self) -> impl Iterator<Item = &Plugin> {
        self.plugins.values()
    }

    fn unknown_type(&self, source_type: &str) -> String {
        let available: Vec<&str> = self.plugins.keys().map(String::as_str).collect();
        if available.is_empty() {
            let searched: Vec<String> = self.searched.iter().map(|d| d.display().to_string()).collect();
            format!(
                "unknown source type {source_type:?}: no populator plugins were found (searched {})",
                searched.join(", ")
            )
        } else {
            format!("unknown source type {source_type:?}; available types: {}", available.join(", "))
        }
    }
}

impl SourceValidator for Registry {
    fn knows(&self, source_type: &str) -> bool {
        self.plugins.contains_key(source_type)
    }

    fn validate(
        &self,
        name: &str,
        source_type: &str,
        attrs: Value,
        config_dir: &Path,
    ) -> Result<Value, String> {
        let plugin = self.get(source_type).ok_or_else(|| self.unknown_type(source_type))?;
        let request = ValidateRequest { name: name.to_owned(), attrs, config_dir: config_dir.to_owned() };
        let request = serde_json::to_string(&request).map_err(|e| e.to_string())?;
        let normalised = plugin
            .populator
            .validate(RStr::from(request.as_str()))
            .into_result()
            .map_err(RString::into_string)?;
        serde_json::from_str(&normalised)
            .map_err(|e| format!("the {source_type} plugin returned malformed attributes: {e}"))
    }
}

fn is_plugin_file_name(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(FILE_PREFIX) && n.ends_with(FILE_SUFFIX))
}

fn load_plugin(file: &Path) -> Result<Plugin, PluginError> {
    let fail = |message: String| PluginError { file: file.to_owned(), message };
    let library = open_and_check_abi(file).map_err(fail)?;
    let header = lib_header_from_path(file).map_err(|e| fail(short_library_error(e)))?;
    let module = header.init_root_module::<PopulatorModuleRef>().map_err(|e| fail(short_library_error(e)))?;
    let populator = (module.new())();
    let description: Description = serde_json::from_str(populator.describe().as_str())
        .map_err(|e| fail(format!("describes itself badly: {e}")))?;
    Ok(Plugin {
        source_type: description.source_type,
        version: description.version,
        file: file.to_owned(),
        populator,
        _library: library,
    })
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
            "was built for plugin ABI {abi_version}, but this krops speaks ABI {ABI_VERSION}; rebuild it against krops-core {}",
            env!("CARGO_PKG_VERSION")
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
    fn plugin_file_names() {
        assert!(is_plugin_file_name(Path::new("/x/libkrops_populator_file.so")));
        assert!(!is_plugin_file_name(Path::new("/x/libkrops_core.so")));
        assert!(!is_plugin_file_name(Path::new("/x/libkrops_populator_file.rlib")));
    }
}
