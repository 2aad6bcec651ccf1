//! Finds and loads populator plugins, and is the only code that calls them: [`Plugin`]'s
//! typed methods (`validate`, `prepare`, `populate`) are the façade every stage uses, so no
//! stage touches abi_stable.
//!
//! Loading never crashes or hangs krops. Loading a library runs its code, and a damaged one
//! (a flipped byte in its dynamic section) kills the process that loads it; so every file is
//! first loaded by a *probe*: krops itself, started as a child in probe mode
//! ([`PROBE_ARGUMENT`]), which reports file by file. Only files the probe loaded completely
//! are loaded into krops. Before `dlopen`, each file is checked to be a regular file and a
//! complete ELF shared object for this machine (a truncated library would SIGBUS), then its
//! ABI version symbol is read (libloading), then abi_stable's layout check runs. A file that
//! fails any step is kept as a *broken* plugin for the type its file name names: only the
//! deployments that use that type fail, and `krops plugins` lists it with its error.
//!
//! Before all that, and before the probe, a file must be one no other user can have put there
//! or changed ([`check_trusted`]): krops often runs as root, and whoever can write a plugin
//! runs code as krops's user.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use abi_stable::library::{lib_header_from_path, LibraryError};
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::RStr;
use krops_core::abi::{PopulatorBox, PopulatorModuleRef, TargetHandle_TO, ABI_VERSION, ABI_VERSION_SYMBOL};
use krops_core::wire::{
    method, Description, Diff, PopulateRequest, PrepareRequest, Traits, ValidateRequest, UNSUPPORTED,
};
use serde::Serialize;
use serde_json::Value;

use crate::config::SourceValidator;
use crate::exec::{self, Argv, Input, Output};
use crate::handle::HostHandle;

/// `krops PROBE_ARGUMENT FILE...` loads each file as a plugin and reports on stdout, one line
/// each: `loading\tN` before file N is touched, then `ok\tN` or `error\tN\tMESSAGE`.
pub const PROBE_ARGUMENT: &str = "__krops-probe-plugins";

/// File names that are populator plugins: `libkrops_populator_<type>.so`.
pub const FILE_PREFIX: &str = "libkrops_populator_";
pub const FILE_SUFFIX: &str = std::env::consts::DLL_SUFFIX;

/// A plugin file that could not be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("plugin {}: {}", printable(&file.display().to_string()), printable(message))]
pub struct PluginError {
    pub file: PathBuf,
    pub message: String,
}

/// A loaded plugin.
pub struct Plugin {
    pub source_type: String,
    pub version: String,
    pub file: PathBuf,
    /// The methods the plugin answers (plugins built before a method existed lack it).
    methods: Vec<String>,
    /// What the plugin says about its type's sources.
    pub traits: Traits,
    populator: PopulatorBox,
    // Kept so the library stays mapped; plugins are never unloaded.
    _library: libloading::Library,
}

impl Plugin {
    /// The normalised attributes of source `name`, or the user's error.
    pub fn validate(&self, name: &str, attrs: Value, config_dir: &Path) -> Result<Value, String> {
        let request = ValidateRequest { name: name.to_owned(), attrs, config_dir: config_dir.to_owned() };
        self.call_for_attrs(method::VALIDATE, &request, &HostHandle::for_validation())
    }

    /// The attributes to populate with; runs before any target is touched.
    pub fn prepare(&self, name: &str, attrs: Value, handle: &HostHandle<'_>) -> Result<Value, String> {
        self.call_for_attrs(method::PREPARE, &PrepareRequest { name: name.to_owned(), attrs }, handle)
    }

    /// The source's fingerprint (see `wire::method::FINGERPRINT`); `None` when the plugin
    /// offers none, or declines for this source.
    pub fn fingerprint(
        &self,
        name: &str,
        attrs: Value,
        handle: &HostHandle<'_>,
    ) -> Result<Option<String>, String> {
        if !self.methods.iter().any(|m| m == method::FINGERPRINT) {
            return Ok(None);
        }
        let answer =
            self.call(method::FINGERPRINT, &PrepareRequest { name: name.to_owned(), attrs }, handle)?;
        serde_json::from_str(&answer)
            .map_err(|e| format!("the {} plugin returned a malformed fingerprint: {e}", self.source_type))
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

    /// What populating source `name` would change (see `wire::method::DIFF`); `None` when the
    /// plugin cannot tell (it predates the method, or declines for this source).
    pub fn diff(
        &self,
        handle: &HostHandle<'_>,
        name: &str,
        attrs: Value,
        target_path: &str,
    ) -> Result<Option<Diff>, String> {
        if !self.methods.iter().any(|m| m == method::DIFF) {
            return Ok(None);
        }
        let request = PopulateRequest { name: name.to_owned(), attrs, target_path: target_path.to_owned() };
        match self.call(method::DIFF, &request, handle) {
            Ok(answer) => serde_json::from_str(&answer)
                .map(Some)
                .map_err(|e| format!("the {} plugin returned a malformed diff: {e}", self.source_type)),
            Err(error) if error.starts_with(UNSUPPORTED) => Ok(None),
            Err(error) => Err(error),
        }
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
    /// file for it, as with `PATH`; a file that cannot be used is recorded as broken. `probe`
    /// is the krops executable to check the files with first (see the module documentation).
    pub fn load(dirs: &[PathBuf], probe: Option<&Path>) -> Registry {
        let mut registry = Registry { searched: dirs.to_vec(), ..Registry::default() };
        let mut candidates: BTreeMap<String, PathBuf> = BTreeMap::new();
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(dir) else { continue };
            let mut files: Vec<(String, PathBuf)> = Vec::new();
            for path in entries.filter_map(Result::ok).map(|e| e.path()) {
                match type_of_file(&path) {
                    FileName::Plugin(source_type) => files.push((source_type, path)),
                    FileName::NotUtf8 => {
                        let error = PluginError {
                            file: path.clone(),
                            message: "has a name that is not UTF-8".into(),
                        };
                        registry.broken.insert(format!("{}", path.display()), error);
                    }
                    FileName::Other => {}
                }
            }
            files.sort();
            for (source_type, file) in files {
                if candidates.contains_key(&source_type) {
                    tracing::debug!(file = %file.display(), "shadowed by an earlier plugin directory");
                    continue;
                }
                candidates.insert(source_type, file);
            }
        }
        // An untrusted file is never probed or loaded; it still serves its type, which fails.
        let mut untrusted = BTreeMap::new();
        for file in candidates.values() {
            if let Err(message) = check_trusted(file) {
                untrusted.insert(file.clone(), message);
            }
        }
        let files: Vec<PathBuf> =
            candidates.values().filter(|f| !untrusted.contains_key(*f)).cloned().collect();
        let probed = match probe {
            Some(krops) => probe_in_child(krops, &files),
            None => BTreeMap::new(),
        };
        for (source_type, file) in candidates {
            let loaded = match untrusted.get(&file).or(probed.get(&file).and_then(|p| p.as_ref().err())) {
                Some(message) => Err(PluginError { file: file.clone(), message: message.clone() }),
                // Loaded completely by the probe (or no probe could run): safe to load here.
                _ => load_plugin(&file, &source_type),
            };
            match loaded {
                Ok(plugin) => registry.plugins.insert(source_type, plugin).map(drop),
                Err(error) => registry.broken.insert(source_type, error).map(drop),
            };
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
            Err(format!(
                "unknown source type {source_type:?}: no populator plugins were found (searched {})",
                self.searched()
            ))
        } else {
            Err(format!(
                "unknown source type {source_type:?}; available types: {} (searched {}); hint: a plugin for it is a file named libkrops_populator_{source_type}.so in one of those directories, or in a --plugin-dir",
                available.join(", "),
                self.searched()
            ))
        }
    }

    pub fn plugins(&self) -> impl Iterator<Item = &Plugin> {
        self.plugins.values()
    }

    pub fn broken(&self) -> impl Iterator<Item = &PluginError> {
        self.broken.values()
    }

    /// The directories searched, for messages.
    pub fn searched(&self) -> String {
        self.searched.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
    }
}

impl SourceValidator for Registry {
    fn traits(&self, source_type: &str) -> Option<Traits> {
        self.plugins.get(source_type).map(|plugin| plugin.traits.clone())
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

/// The registry for `krops eval`, which shows sources as their plugins normalise them: a source
/// of a broken plugin's type is an error with the plugin's reason, not passed through raw.
pub struct Strict(pub Arc<Registry>);

impl SourceValidator for Strict {
    fn traits(&self, source_type: &str) -> Option<Traits> {
        self.0.traits(source_type)
    }

    fn validate(
        &self,
        name: &str,
        source_type: &str,
        attrs: Value,
        config_dir: &Path,
    ) -> Result<Value, String> {
        match self.0.broken.get(source_type) {
            Some(error) => Err(format!(
                "the {source_type} plugin {} cannot be used: {}",
                error.file.display(),
                error.message
            )),
            None => self.0.validate(name, source_type, attrs, config_dir),
        }
    }
}

/// What a directory entry's name says about it.
enum FileName {
    /// `libkrops_populator_<type>.so`.
    Plugin(String),
    /// Not UTF-8: it cannot name a type, but it may be meant as a plugin; reported.
    NotUtf8,
    Other,
}

fn type_of_file(path: &Path) -> FileName {
    let Some(name) = path.file_name() else { return FileName::Other };
    let Some(name) = name.to_str() else {
        let lossy = name.to_string_lossy();
        return if lossy.starts_with(FILE_PREFIX) { FileName::NotUtf8 } else { FileName::Other };
    };
    match name.strip_prefix(FILE_PREFIX).and_then(|n| n.strip_suffix(FILE_SUFFIX)) {
        Some(source_type) if !source_type.is_empty() => FileName::Plugin(source_type.to_owned()),
        _ => FileName::Other,
    }
}

/// Whether `file` is one only root and krops's own user can have put there or changed: the
/// file, every directory on its path and every symbolic link followed on the way (each link
/// itself, then its target's path) belong to root or to krops's effective user, and none is
/// writable by group or others, except a directory with the sticky bit (as /tmp): there no
/// one can replace what is not theirs, and what is below it is checked in turn. The error
/// names the path and why.
fn check_trusted(file: &Path) -> Result<(), String> {
    // Symbolic links followed before giving up, as the kernel does (MAXSYMLINKS).
    const MAX_LINKS: usize = 40;
    let euid = rustix::process::geteuid().as_raw();
    let refuse = |path: &Path, why: String| Err(format!("not loaded: {} {why}", path.display()));
    let check = |path: &Path, metadata: &std::fs::Metadata| {
        use std::os::unix::fs::MetadataExt;
        let (uid, mode) = (metadata.uid(), metadata.mode() & 0o7777);
        if uid != 0 && uid != euid {
            let whose =
                if euid == 0 { "root".to_owned() } else { format!("root or uid {euid} (who runs krops)") };
            return refuse(path, format!("belongs to uid {uid}, not to {whose}"));
        }
        let sticky_directory = metadata.is_dir() && mode & 0o1000 != 0;
        // A link's own mode means nothing: who may replace it is its directory's business.
        if !metadata.is_symlink() && mode & 0o022 != 0 && !sticky_directory {
            return refuse(path, format!("can be written by users other than its owner (mode {mode:o})"));
        }
        Ok(())
    };
    let absolute =
        std::path::absolute(file).map_err(|e| format!("not loaded: cannot resolve its path: {e}"))?;
    let mut at = PathBuf::from("/");
    let metadata =
        std::fs::symlink_metadata(&at).map_err(|e| format!("not loaded: cannot inspect /: {e}"))?;
    check(&at, &metadata)?;
    // The components still to walk, the next one last.
    let mut rest: Vec<std::ffi::OsString> =
        absolute.components().rev().map(|c| c.as_os_str().to_owned()).collect();
    let mut links = 0;
    while let Some(name) = rest.pop() {
        match Path::new(&name).components().next() {
            Some(std::path::Component::Normal(_)) => {}
            // `..` of a directory already walked (links are resolved, so this is its real parent).
            Some(std::path::Component::ParentDir) => {
                at.pop();
                continue;
            }
            _ => continue,
        }
        let next = at.join(&name);
        let metadata = std::fs::symlink_metadata(&next)
            .map_err(|e| format!("not loaded: cannot inspect {}: {e}", next.display()))?;
        check(&next, &metadata)?;
        if metadata.is_symlink() {
            links += 1;
            let target = std::fs::read_link(&next)
                .ok()
                .filter(|_| links <= MAX_LINKS)
                .ok_or_else(|| format!("not loaded: cannot follow the symbolic link {}", next.display()))?;
            if target.is_absolute() {
                at = PathBuf::from("/");
            }
            rest.extend(target.components().rev().map(|c| c.as_os_str().to_owned()));
        } else {
            at = next;
        }
    }
    Ok(())
}

/// Runs the probe on `files` until every file has an answer: when the probe dies on a file
/// (a signal, an abort in the dynamic loader), that file is broken, and the probe starts again
/// after it. Answers are by file; a file missing from the answer could not be probed.
fn probe_in_child(krops: &Path, files: &[PathBuf]) -> BTreeMap<PathBuf, Result<(), String>> {
    let mut answers = BTreeMap::new();
    let mut next = 0;
    while next < files.len() {
        let mut argv = vec![krops.display().to_string(), PROBE_ARGUMENT.to_owned()];
        argv.extend(files[next..].iter().map(|f| f.display().to_string()));
        let (stdout, death) = match exec::run(&Argv::new(argv), &[], Input::Null, Output::Capture) {
            Ok(stdout) => (stdout, None),
            Err(exec::ExecError::Failed { status, stderr, stdout, .. }) => {
                (stdout, Some(describe_death(status, &stderr)))
            }
            Err(other) => {
                tracing::warn!("cannot probe plugins ({other}); loading them unprobed");
                return answers;
            }
        };
        let mut loading = None;
        for line in String::from_utf8_lossy(&stdout).lines() {
            let mut fields = line.splitn(3, '\t');
            let (kind, index) = (fields.next(), fields.next().and_then(|i| i.parse::<usize>().ok()));
            let Some(file) = index.and_then(|i| files.get(next + i)) else { continue };
            match kind {
                Some("loading") => loading = index,
                Some("ok") => drop(answers.insert(file.clone(), Ok(()))),
                Some("error") => {
                    drop(answers.insert(file.clone(), Err(fields.next().unwrap_or_default().to_owned())))
                }
                _ => {}
            }
        }
        match (death, loading) {
            (Some(death), Some(index)) if !answers.contains_key(&files[next + index]) => {
                answers.insert(
                    files[next + index].clone(),
                    Err(format!("crashed the process loading it ({death})")),
                );
                next += index + 1;
            }
            // Every file answered (or the probe died before touching any: load unprobed).
            _ => break,
        }
    }
    answers
}

/// How a probe ended: its signal or status, and the last line it printed.
fn describe_death(status: std::process::ExitStatus, stderr: &str) -> String {
    use std::os::unix::process::ExitStatusExt;
    let how = match (status.signal(), status.code()) {
        (Some(signal), _) => format!("signal {signal}"),
        (None, Some(code)) => format!("exit status {code}"),
        _ => status.to_string(),
    };
    match stderr.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(last) => format!("{how}: {}", printable(last.trim())),
        None => how,
    }
}

/// The probe itself (`krops __krops-probe-plugins FILE...`): loads each file in turn.
pub fn probe_main(files: &[String]) -> std::process::ExitCode {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    for (index, file) in files.iter().enumerate() {
        let path = Path::new(file);
        // Said before the attempt, so that if loading kills this process the parent knows which file did it.
        let _ = writeln!(stdout, "loading\t{index}").and_then(|()| stdout.flush());
        let source_type = match type_of_file(path) {
            FileName::Plugin(source_type) => source_type,
            _ => String::new(),
        };
        let line = match load_plugin(path, &source_type) {
            Ok(plugin) => {
                // Keep it mapped until the process ends: unloading runs more of its code.
                std::mem::forget(plugin);
                format!("ok\t{index}")
            }
            Err(error) => format!("error\t{index}\t{}", error.message.replace(['\n', '\t'], " ")),
        };
        let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
    }
    std::process::ExitCode::SUCCESS
}

/// Control characters (a newline in a file name, a NUL in abi_stable's report) shown escaped,
/// so that a message can never forge or garble the lines around it.
fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| if c.is_control() { c.escape_default().collect::<Vec<_>>() } else { vec![c] })
        .collect()
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
        methods: description.methods,
        traits: description.traits,
        populator,
        _library: library,
    })
}

/// A library shorter than its headers claim makes the dynamic loader touch unmapped pages
/// (SIGBUS), and a FIFO or device would block or mislead it: only a regular file whose every
/// segment and section table lies within the file goes on to `dlopen`.
fn check_complete_elf(file: &Path) -> Result<(), String> {
    use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
    use object::Object;
    let metadata = std::fs::metadata(file).map_err(|e| format!("cannot be read: {e}"))?;
    if !metadata.is_file() {
        return Err("is not a regular file".to_owned());
    }
    let length = metadata.len();
    let not_library = |detail: &str| format!("is not a shared library for this machine: {detail}");
    // Smaller than an ELF header: empty, truncated, or a kernel file of no size (/proc/…),
    // which must not be read at all (reading /proc/kmsg blocks, /proc/self/pagemap never ends).
    if length < 64 {
        return Err(not_library(&format!("{length} bytes, too short for an ELF header")));
    }
    // Read lazily: only the headers, however big (or sparse) the file is.
    let opened = std::fs::File::open(file).map_err(|e| format!("cannot be read: {e}"))?;
    let cache = object::ReadCache::new(opened);
    let magic =
        object::ReadRef::read_bytes_at(&cache, 0, 5).map_err(|()| not_library("unreadable header"))?;
    match magic {
        [0x7f, b'E', b'L', b'F', 2] => {}
        [0x7f, b'E', b'L', b'F', _] => return Err(not_library("a 32-bit ELF file")),
        _ => return Err(not_library("not an ELF file")),
    }
    let elf = ElfFile64::<object::Endianness, _>::parse(&cache).map_err(|e| not_library(&e.to_string()))?;
    let host = match std::env::consts::ARCH {
        "x86_64" => Some(object::Architecture::X86_64),
        "aarch64" => Some(object::Architecture::Aarch64),
        _ => None,
    };
    if host.is_some_and(|host| elf.architecture() != host) {
        return Err(not_library(&format!(
            "built for {:?}, this machine is {}",
            elf.architecture(),
            std::env::consts::ARCH
        )));
    }
    let (header, endian) = (elf.elf_header(), elf.endian());
    for segment in elf.elf_program_headers() {
        let end = segment.p_offset(endian).checked_add(segment.p_filesz(endian));
        if end.is_none_or(|end| end > length) {
            return Err(not_library(&format!("truncated ({length} bytes, a segment ends beyond)")));
        }
    }
    let sections = u64::from(header.e_shnum(endian)) * u64::from(header.e_shentsize(endian));
    if header.e_shoff(endian).checked_add(sections).is_none_or(|end| end > length) {
        return Err(not_library(&format!("truncated ({length} bytes, the section table ends beyond)")));
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
    fn trust_follows_links_and_checks_every_step() {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let chmod = |path: &Path, mode| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("lib.so"), "").unwrap();
        chmod(&real, 0o755).unwrap();
        chmod(&real.join("lib.so"), 0o644).unwrap();
        symlink("./real/../real", dir.path().join("relative")).unwrap();
        symlink(&real, dir.path().join("absolute")).unwrap();
        symlink("loop", dir.path().join("loop")).unwrap();
        for link in ["relative", "absolute"] {
            assert_eq!(check_trusted(&dir.path().join(link).join("lib.so")), Ok(()));
        }
        chmod(&real, 0o777).unwrap();
        let refused = check_trusted(&dir.path().join("relative/lib.so")).unwrap_err();
        assert_eq!(
            refused,
            format!("not loaded: {} can be written by users other than its owner (mode 777)", real.display())
        );
        assert!(check_trusted(&dir.path().join("loop/lib.so")).unwrap_err().contains("cannot follow"));
    }

    #[test]
    fn plugin_file_names_name_their_type() {
        let type_of = |p: &str| match type_of_file(Path::new(p)) {
            FileName::Plugin(t) => Some(t),
            _ => None,
        };
        assert_eq!(type_of("/x/libkrops_populator_file.so").as_deref(), Some("file"));
        assert_eq!(type_of("/x/libkrops_core.so"), None);
        assert_eq!(type_of("/x/libkrops_populator_.so"), None);
        assert_eq!(type_of("/x/libkrops_populator_file.rlib"), None);
    }
}
