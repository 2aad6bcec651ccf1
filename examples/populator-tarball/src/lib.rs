//! A populator plugin built out of krops's tree: type `tarball` installs the regular files of
//! a local tar archive as the directory `<path>/<source name>` on the target, in one verified
//! swap (`Target::install_dir`): readers see the old tree or the new one, never a mix.
//!
//! ```toml
//! source.www.tarball = "./site.tar"                                  # the short form
//! source.www.tarball = { archive = "./site.tar", modes = { directory = 0o750 } }
//! ```

use std::io::Read;
use std::path::Path;

use krops_core::plugin::{PopulatorPlugin, Target, TypeTraits};
use krops_core::sdk::{at, check_tree_path, resolve_path, Fingerprint, TreeFile};
use krops_core::wire::{capability, PopulateRequest, PrepareRequest, ValidateRequest};
use serde::{Deserialize, Serialize};

#[derive(Default)]
pub struct Tarball;

/// What users write.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attrs {
    /// The archive on the deploying machine; relative to the configuration's directory.
    pub archive: String,
    #[serde(default)]
    pub modes: Modes,
}

/// The installed tree's directory mode; files keep their archived permission bits.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Modes {
    #[serde(default = "default_directory_mode")]
    pub directory: u32,
}

impl Default for Modes {
    fn default() -> Modes {
        Modes { directory: default_directory_mode() }
    }
}

fn default_directory_mode() -> u32 {
    0o755
}

impl PopulatorPlugin for Tarball {
    const TYPE: &'static str = "tarball";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const TRAITS: TypeTraits = TypeTraits { shorthand: Some("archive"), program: Some("tar"), ..TypeTraits::NONE };
    type Attrs = Attrs;

    fn validate(&self, request: ValidateRequest<Attrs>) -> Result<Attrs, String> {
        let mut attrs = request.attrs;
        let directory = attrs.modes.directory;
        if directory & !0o777 != 0 || directory & 0o700 != 0o700 {
            return Err(at("modes.directory", format!("{directory:o} must be within 700..777")));
        }
        let archive = resolve_path(&request.config_dir, &attrs.archive);
        files_of(&archive).map_err(|e| at("archive", e))?;
        attrs.archive = archive.display().to_string();
        Ok(attrs)
    }

    fn fingerprint(&self, _: &Target<'_>, request: PrepareRequest<Attrs>) -> Result<Option<String>, String> {
        let mut fingerprint = Fingerprint::default();
        fingerprint.add(request.attrs.modes.directory.to_string()).add_tree(Path::new(&request.attrs.archive))?;
        Ok(Some(fingerprint.finish()))
    }

    fn populate(&self, target: &Target<'_>, request: PopulateRequest<Attrs>) -> Result<serde_json::Value, String> {
        // install_dir runs on run_script, which every host offers; an older or restricted
        // one may not, and is told so instead of failing somewhere inside.
        if !target.offers(capability::RUN_SCRIPT) {
            return Err("tarball needs a host that offers run_script".into());
        }
        let files = files_of(Path::new(&request.attrs.archive))?;
        target.install_dir(&request.destination(), request.attrs.modes.directory, &files)?;
        Ok(serde_json::json!({ "files": files.len() }))
    }
}

/// The archive's regular files (directories are implied by them), with their permission bits
/// (setuid, setgid and sticky bits are dropped); links, devices, names that are no plain
/// relative path, names that are not UTF-8 and names given twice are refused rather than
/// silently changed.
pub fn files_of(archive: &Path) -> Result<Vec<TreeFile>, String> {
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", archive.display());
    // A FIFO or a device would block or never end.
    let metadata = std::fs::metadata(archive).map_err(|e| fail(&e))?;
    if !metadata.is_file() {
        return Err(fail(&"not a regular file"));
    }
    let mut files = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut reader = tar::Archive::new(std::fs::File::open(archive).map_err(|e| fail(&e))?);
    for entry in reader.entries().map_err(|e| fail(&e))? {
        let mut entry = entry.map_err(|e| fail(&e))?;
        match entry.header().entry_type() {
            // pax headers (`git archive` writes one) describe other members.
            tar::EntryType::Directory | tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => continue,
            tar::EntryType::Regular => {}
            other => {
                let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
                return Err(fail(&format!("{name:?} is a {other:?}; only files are installed")));
            }
        }
        let name = String::from_utf8(entry.path_bytes().into_owned())
            .map_err(|e| fail(&format!("{:?} is not UTF-8", String::from_utf8_lossy(e.as_bytes()))))?;
        let path = name.strip_prefix("./").unwrap_or(&name).to_owned();
        check_tree_path(&path).map_err(|e| fail(&e))?;
        if !seen.insert(path.clone()) {
            return Err(fail(&format!("{path:?} is in the archive twice")));
        }
        let header = entry.header();
        let (mode, mtime) = (header.mode().map_err(|e| e.to_string())?, header.mtime().map_err(|e| e.to_string())?);
        let mut contents = Vec::new();
        entry.read_to_end(&mut contents).map_err(|e| fail(&format!("{path}: {e}")))?;
        files.push(TreeFile { path, contents, mtime, mode: mode & 0o777 });
    }
    // A file is no directory of another's: `a` and `a/b` cannot both be installed.
    for path in &seen {
        if let Some((parent, _)) = path.rsplit_once('/') {
            let mut prefix = String::new();
            for part in parent.split('/') {
                prefix = if prefix.is_empty() { part.to_owned() } else { format!("{prefix}/{part}") };
                if seen.contains(&prefix) {
                    return Err(fail(&format!("{prefix:?} is a file and a directory in the archive")));
                }
            }
        }
    }
    Ok(files)
}

krops_core::export_populator!(Tarball);

#[cfg(test)]
mod tests {
    use super::*;
    use krops_core::testing::FakeTarget;
    use std::os::unix::fs::PermissionsExt;

    /// A tar archive at `path` holding `files` (`name`, mode, contents).
    fn archive(path: &Path, files: &[(&str, u32, &str)]) {
        let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
        for (name, mode, contents) in files {
            let mut header = tar::Header::new_gnu();
            header.set_mode(*mode);
            header.set_size(contents.len() as u64);
            builder.append_data(&mut header, name, contents.as_bytes()).unwrap();
        }
        builder.finish().unwrap();
    }

    fn populate(target: &FakeTarget, archive: &Path, directory: u32) -> Result<serde_json::Value, String> {
        let request = PopulateRequest {
            name: "www".into(),
            attrs: Attrs { archive: archive.display().to_string(), modes: Modes { directory } },
            target_path: target.path(),
        };
        target.with(|t| Tarball.populate(t, request))
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// On an older remote host, logged in to through sudo, that offers run_script alone, the
    /// tree is installed whole with the modes chosen, and a second archive replaces it.
    #[test]
    fn installs_the_tree_on_an_older_remote_sudo_host() {
        let target = FakeTarget::in_temp_dir().remote("web").sudo().offering(&[capability::RUN_SCRIPT]);
        let root = target.root().unwrap().to_owned();
        let first = root.join("first.tar");
        archive(&first, &[("index.html", 0o644, "hello\n"), ("cgi/run", 0o755, "#!/bin/sh\n"), ("old", 0o600, "x")]);
        assert_eq!(populate(&target, &first, 0o750).unwrap(), serde_json::json!({ "files": 3 }));
        let www = Path::new(&target.path()).join("www");
        assert_eq!(std::fs::read_to_string(www.join("index.html")).unwrap(), "hello\n");
        assert_eq!((mode(&www), mode(&www.join("cgi")), mode(&www.join("cgi/run"))), (0o750, 0o750, 0o755));
        assert_eq!(mode(&www.join("old")), 0o600);

        let second = root.join("second.tar");
        archive(&second, &[("index.html", 0o644, "again\n")]);
        populate(&target, &second, 0o755).unwrap();
        assert_eq!(std::fs::read_to_string(www.join("index.html")).unwrap(), "again\n");
        assert!(!www.join("old").exists() && !www.join("cgi").exists(), "the old tree was not replaced whole");
        // Nothing of the staging is left beside it.
        let beside: Vec<_> = std::fs::read_dir(target.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(beside, ["www"]);
        assert!(target.calls().iter().all(|call| call.capability == capability::RUN_SCRIPT));
    }

    #[test]
    fn a_host_without_run_script_is_told() {
        let target = FakeTarget::in_temp_dir().remote("old").offering(&[]);
        let tar = target.root().unwrap().join("a.tar");
        archive(&tar, &[("a", 0o644, "a")]);
        let error = populate(&target, &tar, 0o755).unwrap_err();
        assert!(error.contains("offers run_script"), "{error}");
        assert!(target.calls().is_empty());
    }

    /// What the archive cannot mean as a tree is refused while the configuration loads, not
    /// halfway through a deploy.
    #[test]
    fn archives_that_are_no_tree_are_refused() {
        let dir = FakeTarget::in_temp_dir();
        let root = dir.root().unwrap();
        let twice = root.join("twice.tar");
        archive(&twice, &[("a", 0o644, "1"), ("a", 0o644, "2")]);
        assert!(files_of(&twice).err().unwrap().ends_with("\"a\" is in the archive twice"));
        let both = root.join("both.tar");
        archive(&both, &[("a", 0o644, "1"), ("a/b", 0o644, "2")]);
        assert!(files_of(&both).err().unwrap().ends_with("\"a\" is a file and a directory in the archive"));
        let fifo = root.join("fifo.tar");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        assert!(files_of(&fifo).err().unwrap().ends_with("not a regular file"));
    }

    /// The plugin's own checks name the attribute, as serde's type errors do.
    #[test]
    fn a_bad_directory_mode_names_its_attribute() {
        let request = ValidateRequest {
            name: "www".into(),
            attrs: Attrs { archive: "/nonexistent.tar".into(), modes: Modes { directory: 0o644 } },
            config_dir: "/".into(),
        };
        assert_eq!(Tarball.validate(request).unwrap_err(), "at modes.directory: 644 must be within 700..777");
    }
}
