//! The `passage` source type: every `*.age` file below `dir`, decrypted in memory with the age
//! crate and installed on the target as 0600 files in 0700 directories (`.age` dropped from the
//! names, mtimes kept). No plaintext touches the deploying machine's disk.

use std::path::{Path, PathBuf};

use krops_core::plugin::{PopulatorPlugin, Target};
use krops_core::sdk::{files_with_extension, mtime, resolve_path, SecretFile};
use krops_core::wire::{PopulateRequest, ValidateRequest};
use serde::{Deserialize, Serialize};

#[derive(Default)]
pub struct Passage;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attrs {
    dir: PathBuf,
    #[serde(default)]
    identities_file: Option<PathBuf>,
    /// An age binary, used only for identities that need an age plugin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    age: Option<PathBuf>,
}

impl PopulatorPlugin for Passage {
    const TYPE: &'static str = "passage";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Attrs = Attrs;

    fn validate(&self, request: ValidateRequest<Attrs>) -> Result<Attrs, String> {
        let attrs = request.attrs;
        let resolve = |p: &Path| resolve_path(&request.config_dir, &p.to_string_lossy());
        let dir = resolve(&attrs.dir);
        if !dir.is_dir() {
            return Err(format!("passage dir {} is not a directory", dir.display()));
        }
        let identities_file =
            resolve(attrs.identities_file.as_deref().unwrap_or(Path::new("~/.passage/identities")));
        if !identities_file.is_file() {
            return Err(format!("identities file {} does not exist", identities_file.display()));
        }
        // Unreadable identities are the configuration's fault: found now, before any target.
        Identities::read(&identities_file)?;
        Ok(Attrs { dir, identities_file: Some(identities_file), age: attrs.age.map(|a| resolve(&a)) })
    }

    fn populate(
        &self,
        target: &Target<'_>,
        request: PopulateRequest<Attrs>,
    ) -> Result<serde_json::Value, String> {
        let attrs = &request.attrs;
        let identities_file = attrs.identities_file.as_deref().ok_or("passage source was not validated")?;
        let identities = Identities::read(identities_file)?;
        let files = files_with_extension(&attrs.dir, "age")?;
        // Decryption is CPU-bound and independent per secret.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let secrets = krops_core::sdk::parallel_map(&files, cores, |(path, relative)| {
            let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
            let encrypted = std::fs::read(path).map_err(|e| fail(&e))?;
            let mtime = mtime(path)?;
            let contents = match (identities.plugin_lines, &attrs.age) {
                (0, _) => identities.decrypt(&encrypted).map_err(|e| fail(&e))?,
                (_, Some(age)) => target.run_local(
                    &[
                        &age.to_string_lossy(),
                        "-d",
                        "-i",
                        &identities_file.to_string_lossy(),
                        "--",
                        &path.to_string_lossy(),
                    ],
                    b"",
                )?,
                (_, None) => {
                    return Err(format!(
                        "{} holds identities of age plugins; set the source's `age` attribute to an age binary that can use them",
                        identities_file.display()
                    ))
                }
            };
            Ok(SecretFile { path: relative.clone(), contents, mtime })
        })
        .into_iter()
        .collect::<Result<Vec<_>, String>>()?;
        target.log_debug(&format!("{}: {} secrets decrypted", request.name, secrets.len()));
        target.install_secrets(&request.destination(), &secrets)?;
        Ok(serde_json::json!({ "secrets": secrets.len() }))
    }
}

/// The identities of an identities file: age X25519 lines, OpenSSH ed25519/RSA private keys
/// (PEM blocks), `#` comments; lines of age plugins are counted for the binary fallback.
struct Identities {
    file: PathBuf,
    keys: Vec<Box<dyn age::Identity + Send + Sync>>,
    plugin_lines: usize,
}

impl Identities {
    fn read(file: &Path) -> Result<Identities, String> {
        let fail = |detail: String| format!("identities file {}: {detail}", file.display());
        let text = std::fs::read_to_string(file).map_err(|e| fail(e.to_string()))?;
        let mut keys: Vec<Box<dyn age::Identity + Send + Sync>> = Vec::new();
        let mut plugin_lines = 0;
        let mut pem: Option<String> = None;
        for (number, line) in text.lines().enumerate() {
            let trimmed = line.trim();
            if let Some(block) = pem.as_mut() {
                block.push_str(trimmed);
                block.push('\n');
                if trimmed.starts_with("-----END ") {
                    keys.push(ssh_identity(block, file).map_err(&fail)?);
                    pem = None;
                }
            } else if trimmed.starts_with("-----BEGIN ") {
                pem = Some(format!("{trimmed}\n"));
            } else if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            } else if trimmed.starts_with("AGE-PLUGIN-") {
                plugin_lines += 1;
            } else {
                let key = trimmed
                    .parse::<age::x25519::Identity>()
                    .map_err(|_| fail(format!("line {} is not an age identity", number + 1)))?;
                keys.push(Box::new(key));
            }
        }
        if pem.is_some() {
            return Err(fail("unterminated private key block".into()));
        }
        if keys.is_empty() && plugin_lines == 0 {
            return Err(fail("holds no identities".into()));
        }
        Ok(Identities { file: file.to_owned(), keys, plugin_lines })
    }

    fn decrypt(&self, encrypted: &[u8]) -> Result<Vec<u8>, String> {
        use std::io::Read;
        let armored = age::armor::ArmoredReader::new(encrypted);
        let decryptor = age::Decryptor::new(armored).map_err(|e| format!("not an age file: {e}"))?;
        let mut reader = decryptor
            .decrypt(self.keys.iter().map(|k| k.as_ref() as &dyn age::Identity))
            .map_err(|e| format!("cannot decrypt with the identities in {}: {e}", self.file.display()))?;
        let mut plaintext = Vec::new();
        reader.read_to_end(&mut plaintext).map_err(|e| format!("cannot decrypt: {e}"))?;
        Ok(plaintext)
    }
}

fn ssh_identity(block: &str, file: &Path) -> Result<Box<dyn age::Identity + Send + Sync>, String> {
    let identity = age::ssh::Identity::from_buffer(block.as_bytes(), Some(file.display().to_string()))
        .map_err(|e| format!("unreadable ssh private key: {e}"))?;
    match identity {
        age::ssh::Identity::Unencrypted(_) => Ok(Box::new(identity)),
        age::ssh::Identity::Encrypted(_) => {
            Err("a passphrase-protected ssh key cannot be used; decrypt it or use an age identity".into())
        }
        age::ssh::Identity::Unsupported(kind) => Err(format!("unsupported ssh key: {kind:?}")),
    }
}

krops_core::export_populator!(Passage);
