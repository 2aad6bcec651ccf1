//! Secret stores made by the tests themselves: a passage store (age-keygen + age) and a pass
//! store (a throwaway gpg key in a private GNUPGHOME + pass, as a git repository).

use std::path::{Path, PathBuf};
use std::process::Command;

fn run(command: &mut Command, input: Option<&[u8]>) -> String {
    crate::command::output(command, input).unwrap_or_else(|e| panic!("{e}"))
}

/// A passage store below `dir/store` with an identities file `dir/identities`.
pub struct PassageStore {
    pub store: PathBuf,
    pub identities: PathBuf,
    recipients: Vec<String>,
}

impl PassageStore {
    /// An X25519 identity; with `ssh`, an ssh-ed25519 and an ssh-rsa key as well, all in one
    /// identities file with comments. Recipients: 0 age, 1 ssh-ed25519, 2 ssh-rsa.
    pub fn create(dir: &Path, ssh: bool) -> PassageStore {
        let store = dir.join("store");
        std::fs::create_dir_all(&store).expect("mkdir store");
        let age_key = dir.join("age.key");
        run(Command::new("age-keygen").arg("-o").arg(&age_key), None);
        let mut identities =
            format!("# krops test identities\n\n{}", std::fs::read_to_string(&age_key).expect("key"));
        let mut recipients =
            vec![run(Command::new("age-keygen").arg("-y").arg(&age_key), None).trim().to_owned()];
        if ssh {
            for (kind, bits) in [("ed25519", "256"), ("rsa", "2048")] {
                let ssh_key = dir.join(format!("id_{kind}"));
                let keygen = ["-q", "-t", kind, "-b", bits, "-N", "", "-C", "passage", "-f"];
                run(Command::new("ssh-keygen").args(keygen).arg(&ssh_key), None);
                identities.push_str(&format!("# an ssh-{kind} key works as an identity too\n"));
                identities.push_str(&std::fs::read_to_string(&ssh_key).expect("ssh key"));
                let public = std::fs::read_to_string(ssh_key.with_extension("pub")).expect("pub");
                recipients.push(public.trim().to_owned());
            }
        }
        let identities_path = dir.join("identities");
        std::fs::write(&identities_path, identities).expect("identities");
        PassageStore { store, identities: identities_path, recipients }
    }

    /// Encrypts `contents` to `store/<name>.age`, to the recipient `which` (see `create`).
    pub fn insert_for(&self, name: &str, contents: &[u8], which: usize) -> PathBuf {
        let path = self.store.join(format!("{name}.age"));
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        run(Command::new("age").arg("-r").arg(&self.recipients[which]).arg("-o").arg(&path), Some(contents));
        path
    }

    pub fn insert(&self, name: &str, contents: &[u8]) -> PathBuf {
        self.insert_for(name, contents, 0)
    }
}

/// A pass store (a git repository) with its own GNUPGHOME; the gpg agent is killed on drop.
pub struct PassStore {
    pub dir: PathBuf,
    pub gnupghome: tempfile::TempDir,
}

impl PassStore {
    pub fn create(dir: &Path) -> PassStore {
        // Agent sockets live in GNUPGHOME; its path must stay short.
        let gnupghome = tempfile::Builder::new()
            .prefix("g")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir_in("/tmp")
            .expect("GNUPGHOME");
        std::fs::write(gnupghome.path().join("gpg.conf"), "auto-key-locate local\nno-auto-key-retrieve\n")
            .expect("gpg.conf");
        let store = PassStore { dir: dir.to_owned(), gnupghome };
        run(
            store.gpg().args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""]).args([
                "--quick-gen-key",
                "krops test <test@example.invalid>",
                "future-default",
                "default",
                "never",
            ]),
            None,
        );
        let listing = run(store.gpg().args(["--batch", "--with-colons", "--list-secret-keys"]), None);
        let fingerprint = listing
            .lines()
            .find_map(|l| l.strip_prefix("fpr:").map(|rest| rest.trim_matches(':').to_owned()))
            .expect("a fingerprint");
        run(store.pass().args(["init", &fingerprint]), None);
        run(store.pass().args(["git", "init"]), None);
        store
    }

    /// Environment for running krops (gpg must find the key).
    pub fn env(&self) -> [(&'static str, PathBuf); 2] {
        [("GNUPGHOME", self.gnupghome.path().to_owned()), ("PASSWORD_STORE_DIR", self.dir.clone())]
    }

    pub fn gpg(&self) -> Command {
        let mut command = Command::new("gpg");
        command.env("GNUPGHOME", self.gnupghome.path());
        command
    }

    pub fn pass(&self) -> Command {
        let mut command = Command::new("pass");
        command
            .env("GNUPGHOME", self.gnupghome.path())
            .env("PASSWORD_STORE_DIR", &self.dir)
            .env("GIT_AUTHOR_NAME", "krops test")
            .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
            .env("GIT_COMMITTER_NAME", "krops test")
            .env("GIT_COMMITTER_EMAIL", "test@example.invalid");
        command
    }

    /// `pass insert -m name`, committed by pass with the given author date (seconds).
    pub fn insert(&self, name: &str, contents: &str, author_date: u64) {
        run(
            self.pass()
                .env("GIT_AUTHOR_DATE", format!("@{author_date} +0000"))
                .args(["insert", "-m", "-f", name]),
            Some(contents.as_bytes()),
        );
    }

    pub fn remove(&self, name: &str) {
        run(self.pass().args(["rm", "-f", name]), None);
    }
}

impl Drop for PassStore {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .args(["--kill", "gpg-agent"])
            .env("GNUPGHOME", self.gnupghome.path())
            .status();
    }
}
