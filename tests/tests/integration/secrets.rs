//! pass and passage: names, contents, modes and mtimes on the target; .pass_info; removed
//! secrets; and no plaintext on the deploying machine's disk or in krops's output.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use krops_tests::secrets::{PassStore, PassageStore};

use crate::support::{mode, Kind, Outcome, Sandbox, Site};

crate::on_every_site!(
    passage_names_contents_modes_and_mtimes,
    passage_secret_no_identity_opens_fails_and_keeps_the_old_secrets,
    pass_names_contents_modes_and_git_mtimes,
    pass_info_skips_an_unchanged_store_and_removed_secrets_disappear,
    no_plaintext_on_the_deploying_machine_or_in_the_output,
);

fn mtime(path: &Path) -> i64 {
    std::fs::symlink_metadata(path).unwrap().mtime()
}

/// A deployment of `store` as the passage source `secrets`.
pub fn passage_config(sb: &Sandbox, site: &Site, store: &PassageStore) {
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.site]\ntarget = {}\n[deployments.site.source.secrets.passage]\ndir = {:?}\nidentities_file = {:?}\n",
            site.target(),
            store.store.display().to_string(),
            store.identities.display().to_string()
        ),
    );
}

fn passage_names_contents_modes_and_mtimes(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    let store = PassageStore::create(&sb.mkdir("passage"), true);
    let root_pw = store.insert("root-password", b"hunter2\n");
    store.insert("ssh/host_ed25519_key", b"-----BEGIN KEY-----\nbinary\x00\xff\n");
    store.insert_for("wifi", b"by ssh key", 1);
    store.insert_for("vpn", b"by rsa key", 2);
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    std::fs::File::options().write(true).open(&root_pw).unwrap().set_modified(old).unwrap();
    passage_config(&sb, &site, &store);
    sb.krops(&["populate"]).success().stderr_has("secrets: 4");

    assert_eq!(site.listing("secrets"), ["root-password", "ssh", "ssh/host_ed25519_key", "vpn", "wifi"]);
    assert_eq!(site.read("secrets/vpn"), "by rsa key");
    assert_eq!(site.read("secrets/root-password"), "hunter2\n");
    assert_eq!(
        std::fs::read(site.path("secrets/ssh/host_ed25519_key")).unwrap(),
        b"-----BEGIN KEY-----\nbinary\x00\xff\n"
    );
    assert_eq!(site.read("secrets/wifi"), "by ssh key");
    for dir in ["secrets", "secrets/ssh"] {
        assert_eq!(mode(&site.path(dir)), 0o700, "{dir}");
    }
    for file in ["secrets/root-password", "secrets/ssh/host_ed25519_key", "secrets/wifi"] {
        assert_eq!(mode(&site.path(file)), 0o600, "{file}");
    }
    assert_eq!(mtime(&site.path("secrets/root-password")), 1_500_000_000);
    assert_eq!(std::fs::metadata(site.path("secrets/wifi")).unwrap().uid(), 0);
}

fn passage_secret_no_identity_opens_fails_and_keeps_the_old_secrets(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    let store = PassageStore::create(&sb.mkdir("passage"), false);
    store.insert("a", b"first");
    passage_config(&sb, &site, &store);
    sb.krops(&["populate"]).success();

    let stranger = PassageStore::create(&sb.mkdir("stranger"), false);
    let foreign = stranger.insert("b", b"not for us");
    std::fs::rename(&foreign, store.store.join("b.age")).unwrap();
    store.insert("a", b"second");
    sb.krops(&["populate"])
        .code(1)
        .stderr_has(&store.store.join("b.age").display().to_string())
        .stderr_has("cannot decrypt");
    assert_eq!(site.read("secrets/a"), "first", "a failed deploy leaves the old secrets");
    assert_eq!(site.listing("secrets"), ["a"]);
}

fn pass_config(sb: &Sandbox, site: &Site, store: &PassStore, name: &str) {
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.site]\ntarget = {}\n[deployments.site.source.secrets.pass]\ndir = {:?}\nname = {name:?}\n",
            site.target(),
            store.dir.display().to_string()
        ),
    );
}

fn krops_with(sb: &Sandbox, store: &PassStore, args: &[&str]) -> Outcome {
    let mut command = sb.krops_command(args);
    command.envs(store.env());
    Outcome::of(command)
}

fn pass_names_contents_modes_and_git_mtimes(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    let store = PassStore::create(&sb.path("pass"));
    store.insert("hosts/web/root", "correct horse", 1_600_000_000);
    store.insert("hosts/web/nested/api-token", "t0k3n\nsecond line", 1_600_000_100);
    store.insert("hosts/other/not-deployed", "nope", 1_600_000_200);
    pass_config(&sb, &site, &store, "hosts/web");
    krops_with(&sb, &store, &["populate"]).success();

    assert_eq!(site.listing("secrets"), [".pass_info", "nested", "nested/api-token", "root"]);
    assert_eq!(site.read("secrets/root"), "correct horse");
    assert_eq!(site.read("secrets/nested/api-token"), "t0k3n\nsecond line");
    assert_eq!(mtime(&site.path("secrets/root")), 1_600_000_000);
    assert_eq!(mtime(&site.path("secrets/nested/api-token")), 1_600_000_100);
    assert_eq!(mode(&site.path("secrets")), 0o700);
    assert_eq!(mode(&site.path("secrets/nested")), 0o700);
    assert_eq!(mode(&site.path("secrets/root")), 0o600);
    assert_eq!(mode(&site.path("secrets/nested/api-token")), 0o600);
}

fn pass_info_skips_an_unchanged_store_and_removed_secrets_disappear(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    let store = PassStore::create(&sb.path("pass"));
    store.insert("web/a", "a", 1_600_000_000);
    store.insert("web/b", "b", 1_600_000_000);
    pass_config(&sb, &site, &store, "web");
    krops_with(&sb, &store, &["populate"]).success();
    site.write("secrets/a", "changed on the target");

    krops_with(&sb, &store, &["populate"]).success().stderr_has("skipped");
    assert_eq!(site.read("secrets/a"), "changed on the target", "an unchanged store is not transferred");

    store.remove("web/b");
    krops_with(&sb, &store, &["populate"]).success().stderr_has("secrets: 1");
    assert_eq!(site.read("secrets/a"), "a");
    assert_eq!(site.listing("secrets"), [".pass_info", "a"], "the removed secret is gone");

    let passage = PassageStore::create(&sb.mkdir("passage"), false);
    passage.insert("x", b"x");
    let gone = passage.insert("y", b"y");
    passage_config(&sb, &site, &passage);
    sb.krops(&["populate"]).success();
    std::fs::remove_file(gone).unwrap();
    sb.krops(&["populate"]).success();
    assert_eq!(site.listing("secrets"), ["x"]);
}

/// Every file below `dir` whose contents include `needle`, except below `except`. Build trees
/// (`target`), git object stores and files over 1 MiB are passed over: krops writes none of
/// them, and they would make the scan slow.
fn files_containing(dir: &Path, needle: &[u8], except: &[&Path]) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if except.iter().any(|e| path.starts_with(e)) {
                continue;
            }
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() && entry.file_name() != "target" && entry.file_name() != ".git" {
                pending.push(path);
            } else if kind.is_file() && entry.metadata().is_ok_and(|m| m.len() <= 1 << 20) {
                if let Some(bytes) = read_regular(&path) {
                    if bytes.windows(needle.len()).any(|w| w == needle) {
                        found.push(path.display().to_string());
                    }
                }
            }
        }
    }
    found
}

/// The contents of `path` if it is still a regular file when opened: another process may put
/// a FIFO in its place meanwhile, whose open would block (hence O_NONBLOCK).
fn read_regular(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    const O_NONBLOCK: i32 = 0o4000;
    let mut file = std::fs::OpenOptions::new().read(true).custom_flags(O_NONBLOCK).open(path).ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

fn no_plaintext_on_the_deploying_machine_or_in_the_output(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    let nonce = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let age_secret = format!("age-plaintext-{nonce}");
    let gpg_secret = format!("gpg-plaintext-{nonce}");
    let passage = PassageStore::create(&sb.mkdir("passage"), false);
    passage.insert("one", age_secret.as_bytes());
    let pass = PassStore::create(&sb.path("pass"));
    pass.insert("host/one", &gpg_secret, 1_600_000_000);
    let tmp = sb.mkdir("tmp");
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.site]\ntarget = {}\n[deployments.site.source]\n\
             slow.pipe = \"sleep 1; echo slow\"\n\
             a.passage = {{ dir = {:?}, identities_file = {:?} }}\n\
             p.pass = {{ dir = {:?}, name = \"host\" }}\n",
            site.target(),
            passage.store.display().to_string(),
            passage.identities.display().to_string(),
            pass.dir.display().to_string()
        ),
    );
    let mut command = sb.krops_command(&["-vvv", "populate"]);
    command.envs(pass.env()).env("TMPDIR", &tmp).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = command.spawn().unwrap();
    // The deployed tree itself holds plaintext by design; so does a test host's /var/src.
    let site_root = site.host().map_or_else(|| site.path(""), |h| h.root_dir().to_owned());
    let except = [site_root.as_path()];
    let scan = |when: &str| {
        for secret in [&age_secret, &gpg_secret] {
            for dir in [Path::new("/tmp"), tmp.as_path(), Path::new("/var/tmp"), Path::new("/dev/shm")] {
                let found = files_containing(dir, secret.as_bytes(), &except);
                assert!(found.is_empty(), "plaintext {when} the deploy in {found:?}");
            }
        }
    };
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(800) {
        scan("during");
    }
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    scan("after");
    assert_eq!(site.read("a/one"), age_secret);
    assert_eq!(site.read("p/one"), gpg_secret);
    let printed =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(printed.contains("running"), "-vvv shows the trace: {printed}");
    assert!(
        !printed.contains(&age_secret) && !printed.contains(&gpg_secret),
        "a secret was printed:\n{printed}"
    );
}

/// Identities of age plugins are handed to the age binary named by `age`; here a stand-in
/// that checks it was called as krops says and decrypts with a real identity.
#[test]
fn passage_age_binary_fallback_for_plugin_identities() {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Local);
    let store = PassageStore::create(&sb.mkdir("passage"), false);
    store.insert("token", b"via the age binary");
    let real_identities = store.identities.clone();
    let plugin_identities = sb.write("plugin-identities", "# a YubiKey, say\nAGE-PLUGIN-YUBIKEY-1EXAMPLE\n");
    let age = sb.write(
        "fake-age",
        &format!(
            "#!/bin/sh\n[ \"$1 $2 $3 $4\" = '-d -i {} --' ] || {{ echo \"unexpected: $*\" >&2; exit 9; }}\nexec age -d -i '{}' \"$5\"\n",
            plugin_identities.display(),
            real_identities.display()
        ),
    );
    std::fs::set_permissions(&age, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let write = |age_line: &str| {
        sb.write(
            "krops.toml",
            &format!(
                "[deployments.site]\ntarget = {}\n[deployments.site.source.secrets.passage]\ndir = {:?}\nidentities_file = {:?}\n{age_line}\n",
                site.target(),
                store.store.display().to_string(),
                plugin_identities.display().to_string()
            ),
        )
    };
    // Without `age`, the age binary on PATH is asked, which has no such plugin.
    write("");
    sb.krops(&["populate"]).code(1).stderr_has("populate of source \"secrets\" failed: age");
    write(&format!("age = {:?}", age.display().to_string()));
    sb.krops(&["populate"]).success();
    assert_eq!(site.read("secrets/token"), "via the age binary");
    assert_eq!(mode(&site.path("secrets/token")), 0o600);
}

/// A passphrase-protected identities file (as `passage` allows) is decrypted once by the age
/// binary, here a stand-in that supplies the "passphrase" (another identity) and logs each
/// call; the secrets are then decrypted natively.
#[test]
fn passage_passphrase_protected_identities_through_the_age_binary() {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Root);
    let store = PassageStore::create(&sb.mkdir("passage"), true);
    store.insert("one", b"first");
    store.insert("dir/two", b"second");
    let unlock = PassageStore::create(&sb.mkdir("unlock"), false);
    let recipient = std::process::Command::new("age-keygen")
        .arg("-y")
        .arg(unlock.identities.with_file_name("age.key"))
        .output()
        .unwrap();
    let recipient = String::from_utf8_lossy(&recipient.stdout).trim().to_owned();
    let protected = sb.path("identities.age");
    let status = std::process::Command::new("age")
        .args(["-r", &recipient, "-o"])
        .arg(&protected)
        .arg(&store.identities)
        .status()
        .unwrap();
    assert!(status.success());
    let log = sb.path("age-calls");
    let age = sb.write(
        "age-with-passphrase",
        &format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\n[ \"$1 $2\" = '-d --' ] || {{ echo \"unexpected: $*\" >&2; exit 9; }}\nexec age -d -i '{}' \"$3\"\n",
            log.display(),
            unlock.identities.display()
        ),
    );
    std::fs::set_permissions(&age, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.site]\ntarget = {}\n[deployments.site.source.secrets.passage]\ndir = {:?}\nidentities_file = {:?}\nage = {:?}\n",
            site.target(),
            store.store.display().to_string(),
            protected.display().to_string(),
            age.display().to_string()
        ),
    );
    sb.krops(&["populate"]).success();
    assert_eq!(site.read("secrets/one"), "first");
    assert_eq!(site.read("secrets/dir/two"), "second");
    let calls = std::fs::read_to_string(&log).unwrap();
    assert_eq!(calls.lines().count(), 1, "the identities were decrypted once: {calls}");
}

/// Symlinked secrets and directories in a store are followed, as pass and passage read them.
#[test]
fn symlinked_secrets_are_followed_in_pass_and_passage_stores() {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Local);
    let store = PassageStore::create(&sb.mkdir("passage"), false);
    store.insert("real/token", b"linked file");
    store.insert("shared/key", b"linked directory");
    let web = store.store.join("web");
    std::fs::create_dir_all(&web).unwrap();
    std::os::unix::fs::symlink("../real/token.age", web.join("token.age")).unwrap();
    std::os::unix::fs::symlink("../shared", web.join("shared")).unwrap();
    // A loop must not hang the walk.
    std::os::unix::fs::symlink("..", web.join("loop")).unwrap();
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.site]\ntarget = {}\n[deployments.site.source.secrets.passage]\ndir = {:?}\nidentities_file = {:?}\n",
            site.target(),
            web.display().to_string(),
            store.identities.display().to_string()
        ),
    );
    sb.krops(&["populate"]).success();
    assert_eq!(site.read("secrets/token"), "linked file");
    assert_eq!(site.read("secrets/shared/key"), "linked directory");

    let pass = PassStore::create(&sb.path("pass"));
    pass.insert("real/root", "pass file", 1_600_000_000);
    pass.insert("shared/api", "pass directory", 1_600_000_000);
    std::fs::create_dir_all(pass.dir.join("hosts/web")).unwrap();
    std::os::unix::fs::symlink("../../real/root.gpg", pass.dir.join("hosts/web/root.gpg")).unwrap();
    std::os::unix::fs::symlink("../../shared", pass.dir.join("hosts/web/shared")).unwrap();
    pass_config(&sb, &site, &pass, "hosts/web");
    krops_with(&sb, &pass, &["populate"]).success();
    assert_eq!(site.read("secrets/root"), "pass file");
    assert_eq!(site.read("secrets/shared/api"), "pass directory");
}
