//! The `passage` source type: every `*.age` file below `dir`, decrypted in memory with the age
//! crate and installed on the target as 0600 files in 0700 directories (`.age` dropped from the
//! names, mtimes kept). No plaintext touches the deploying machine's disk.

use std::path::{Path, PathBuf};

use krops_core::plugin::{PopulatorPlugin, Target, TypeTraits};
use krops_core::sdk::{files_with_extension, mtime, resolve_path, secrets_diff, Fingerprint, SecretFile};
use krops_core::wire::{Diff, PopulateRequest, PrepareRequest, StateKind, ValidateRequest};
use serde::{Deserialize, Serialize};

#[derive(Default)]
pub struct Passage;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attrs {
    dir: PathBuf,
    #[serde(default)]
    identities_file: Option<PathBuf>,
    /// The age binary (default `age`, from PATH), used only for what native decryption cannot
    /// do: identities of age plugins, passphrase-protected ssh keys, and a passphrase-protected
    /// identities file (decrypted once, into memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    age: Option<PathBuf>,
}

impl PopulatorPlugin for Passage {
    const TYPE: &'static str = "passage";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const TRAITS: TypeTraits = TypeTraits {
        shorthand: Some("dir"),
        state: StateKind::Content,
        program: Some("age"),
        ..TypeTraits::NONE
    };
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
        IdentitiesFile::read(&identities_file)?;
        // A bare name (`age`) is looked up in PATH; a path is the configuration's.
        let age = attrs.age.map(|a| if a.components().count() > 1 { resolve(&a) } else { a });
        // The default, as passage's own: `age` from PATH (shown by `krops eval`).
        let age = Some(age.unwrap_or_else(|| PathBuf::from("age")));
        Ok(Attrs { dir, identities_file: Some(identities_file), age })
    }

    /// The attributes and the store's encrypted files (names, sizes, mtimes): no decryption.
    fn fingerprint(&self, _: &Target<'_>, request: PrepareRequest<Attrs>) -> Result<Option<String>, String> {
        let attrs = serde_json::to_string(&request.attrs).map_err(|e| e.to_string())?;
        let files = files_with_extension(&request.attrs.dir, "age")?;
        Ok(Some(Fingerprint::default().add(attrs).add_files(&files)?.finish()))
    }

    fn populate(
        &self,
        target: &Target<'_>,
        request: PopulateRequest<Attrs>,
    ) -> Result<serde_json::Value, String> {
        let secrets = decrypt(target, &request.attrs)?;
        target.log_debug(&format!("{}: {} secrets decrypted", request.name, secrets.len()));
        target.install_secrets(&request.destination(), &secrets)?;
        Ok(serde_json::json!({ "secrets": secrets.len() }))
    }

    fn diff(&self, target: &Target<'_>, request: PopulateRequest<Attrs>) -> Result<Diff, String> {
        let secrets = decrypt(target, &request.attrs)?;
        secrets_diff(target, &request.destination(), &secrets, &[])
    }
}

/// Every secret of the store, decrypted into memory.
fn decrypt(target: &Target<'_>, attrs: &Attrs) -> Result<Vec<SecretFile>, String> {
    let identities_file = attrs.identities_file.as_deref().ok_or("passage source was not validated")?;
    let age = attrs.age.clone().unwrap_or_else(|| PathBuf::from("age"));
    let identities = match IdentitiesFile::read(identities_file)? {
        IdentitiesFile::Plain(identities) => identities,
        IdentitiesFile::Encrypted => {
            // Decrypted once by the age binary (which asks for the passphrase), kept in memory.
            let file = identities_file.to_string_lossy();
            let plaintext = target.run_local(&[&age.to_string_lossy(), "-d", "--", &file], b"")?;
            Identities::parse(&String::from_utf8_lossy(&plaintext), identities_file)?
        }
    };
    let files = files_with_extension(&attrs.dir, "age")?;
    // Decryption is CPU-bound and independent per secret.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    krops_core::sdk::parallel_map(&files, cores, |(path, relative)| {
        let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
        let encrypted = std::fs::read(path).map_err(|e| fail(&e))?;
        let mtime = mtime(path)?;
        let contents = match identities.needs_binary {
            0 => identities.decrypt(&encrypted).map_err(|e| fail(&e))?,
            _ => target.run_local(
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
        };
        Ok(SecretFile { path: relative.clone(), contents, mtime })
    })
    .into_iter()
    .collect::<Result<Vec<_>, String>>()
}

/// An identities file as found on disk: identities in the clear, or itself age-encrypted (with
/// a passphrase, as `passage` allows).
enum IdentitiesFile {
    Plain(Identities),
    Encrypted,
}

impl IdentitiesFile {
    fn read(file: &Path) -> Result<IdentitiesFile, String> {
        let bytes = std::fs::read(file).map_err(|e| format!("identities file {}: {e}", file.display()))?;
        if bytes.starts_with(b"age-encryption.org/v1\n")
            || bytes.starts_with(b"-----BEGIN AGE ENCRYPTED FILE-----")
        {
            return Ok(IdentitiesFile::Encrypted);
        }
        Identities::parse(&String::from_utf8_lossy(&bytes), file).map(IdentitiesFile::Plain)
    }
}

/// The identities of an identities file: age X25519 lines, OpenSSH ed25519/RSA private keys
/// (PEM blocks), `#` comments. Identities of age plugins and passphrase-protected ssh keys
/// are counted: with any of them, the age binary decrypts instead.
struct Identities {
    file: PathBuf,
    keys: Vec<Box<dyn age::Identity + Send + Sync>>,
    needs_binary: usize,
}

impl Identities {
    fn parse(text: &str, file: &Path) -> Result<Identities, String> {
        let fail = |detail: String| format!("identities file {}: {detail}", file.display());
        let mut keys: Vec<Box<dyn age::Identity + Send + Sync>> = Vec::new();
        let mut needs_binary = 0;
        let mut pem: Option<String> = None;
        for (number, line) in text.lines().enumerate() {
            let trimmed = line.trim();
            if let Some(block) = pem.as_mut() {
                block.push_str(trimmed);
                block.push('\n');
                if trimmed.starts_with("-----END ") {
                    match ssh_identity(block, file).map_err(&fail)? {
                        Some(key) => keys.push(key),
                        None => needs_binary += 1,
                    }
                    pem = None;
                }
            } else if trimmed.starts_with("-----BEGIN ") {
                pem = Some(format!("{trimmed}\n"));
            } else if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            } else if trimmed.starts_with("AGE-PLUGIN-") {
                needs_binary += 1;
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
        if keys.is_empty() && needs_binary == 0 {
            return Err(fail("holds no identities".into()));
        }
        Ok(Identities { file: file.to_owned(), keys, needs_binary })
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

/// An ssh private key as an identity; `None` for a passphrase-protected one, which only the
/// age binary (asking for the passphrase) can use.
fn ssh_identity(block: &str, file: &Path) -> Result<Option<Box<dyn age::Identity + Send + Sync>>, String> {
    let identity = age::ssh::Identity::from_buffer(block.as_bytes(), Some(file.display().to_string()))
        .map_err(|e| format!("unreadable ssh private key: {e}"))?;
    match identity {
        age::ssh::Identity::Unencrypted(_) => Ok(Some(Box::new(identity))),
        age::ssh::Identity::Encrypted(_) => Ok(None),
        age::ssh::Identity::Unsupported(kind) => Err(format!("unsupported ssh key: {kind:?}")),
    }
}

krops_core::export_populator!(Passage);
