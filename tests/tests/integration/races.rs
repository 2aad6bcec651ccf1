//! Safety, round 3: what an interruption, a racing writer or a full disk brings, reproduced as
//! a flaky network or an account that shares the target path would bring it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use krops_tests::secrets::PassageStore;

use crate::secrets::passage_config;
use crate::support::{processes_mentioning, wait_until, Kind, Sandbox, Site};

/// How many secrets the interrupted transfers carry: enough for the stream to take a while.
const SECRETS: usize = 2000;

/// Two passage stores of [`SECRETS`] secrets each, every secret differing between them (one
/// encryption per store, copied: what tells a mix is which store each file came from).
fn two_stores(sb: &Sandbox) -> [PassageStore; 2] {
    ["a", "b"].map(|version| {
        let store = PassageStore::create(&sb.mkdir(&format!("passage-{version}")), false);
        let first = store.insert(&secret_name(0), secret(version).as_bytes());
        for i in 1..SECRETS {
            let path = store.store.join(format!("{}.age", secret_name(i)));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::copy(&first, path).unwrap();
        }
        store
    })
}

fn secret_name(i: usize) -> String {
    format!("d{}/s{i:04}", i % 10)
}

fn secret(version: &str) -> String {
    format!("{version} {}\n", "x".repeat(1000))
}

/// Which store's secrets `dir` holds, whole: `Err` for anything else (a mix, files missing).
fn whole_version(dir: &Path) -> Result<&'static str, String> {
    let count = walk_files(dir);
    let first =
        std::fs::read_to_string(dir.join(secret_name(0))).map_err(|e| format!("first secret: {e}"))?;
    let version = if first.starts_with("a ") { "a" } else { "b" };
    for i in 0..SECRETS {
        let path = dir.join(secret_name(i));
        let contents =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e} ({count} files)", path.display()))?;
        if contents != secret(version) {
            return Err(format!("{} is not version {version}'s ({count} files)", path.display()));
        }
    }
    if count != SECRETS {
        return Err(format!("{count} files instead of {SECRETS}"));
    }
    Ok(version)
}

fn walk_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| if e.path().is_dir() && !e.path().is_symlink() { walk_files(&e.path()) } else { 1 })
            .sum()
    })
}

/// Entries of `dir` whose name has `needle` in it.
fn entries_named(dir: &Path, needle: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(needle))
        .collect()
}

/// SIGINT or SIGTERM of krops, or its ssh master killed, while 2000 secrets stream to a
/// remote target, ten trials each at random moments of the transfer: the target holds the
/// complete old or the complete new secrets, never a part, and no staging directory remains.
#[test]
fn an_interrupted_secrets_transfer_leaves_the_old_or_the_new_secrets_whole() {
    interrupted_transfers(Kind::Root, ["INT", "TERM", "master"]);
}

/// The same for a local target, where a killed krops (SIGKILL) takes its children along.
#[test]
fn an_interrupted_local_secrets_transfer_leaves_the_old_or_the_new_secrets_whole() {
    interrupted_transfers(Kind::Local, ["INT", "TERM", "KILL"]);
}

fn interrupted_transfers(kind: Kind, modes: [&str; 3]) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    let stores = two_stores(&sb);
    passage_config(&sb, &site, &stores[0]);
    sb.krops(&["populate"]).success();
    assert_eq!(whole_version(&site.path("secrets")), Ok("a"));
    let tmp = sb.mkdir("tmp").display().to_string();
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let mut interrupted_mid_stream = 0;
    for (trial, mode) in modes.into_iter().flat_map(|m| std::iter::repeat_n(m, 10)).enumerate() {
        let before = whole_version(&site.path("secrets")).unwrap();
        let next = usize::from(before == "a");
        passage_config(&sb, &site, &stores[next]);
        let delay = u64::from(seed.wrapping_mul(2_654_435_761).wrapping_add(trial as u32 * 40_503) % 40);
        let context = format!("trial {trial} (seed {seed}): {mode} {delay} ms into the transfer");
        let mut krops =
            sb.krops_with_tmpdir(&["populate"]).stdin(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        // The remote tar reading the stream (the test host shares this machine's processes).
        let unpacking = || processes_mentioning("--no-same-owner").iter().any(|p| p.contains("tar -x"));
        wait_until(&format!("{context}: the transfer starts"), || {
            unpacking() || krops.try_wait().unwrap().is_some()
        });
        std::thread::sleep(Duration::from_millis(delay));
        if unpacking() {
            interrupted_mid_stream += 1;
        }
        let pid = match mode {
            "master" => processes_mentioning(&tmp)
                .into_iter()
                .find(|p| p.contains(" -M "))
                .map(|p| p.split(':').next().unwrap().to_owned()),
            _ => Some(krops.id().to_string()),
        };
        if let Some(pid) = pid {
            let signal = if mode == "master" { "KILL" } else { mode };
            Command::new("kill").args([&format!("-{signal}"), &pid]).status().unwrap();
        }
        let _ = krops.wait();
        wait_until(&format!("{context}: the remote installer ends"), || !unpacking());
        wait_until(&format!("{context}: the staging directory goes"), || {
            entries_named(&site.path(""), "krops-staging").is_empty()
        });
        let after = whole_version(&site.path("secrets")).unwrap_or_else(|e| panic!("{context}: {e}"));
        assert!(after == before || after == ["a", "b"][next], "{context}");
    }
    // Most trials must have hit the stream itself, or the test proves little.
    assert!(interrupted_mid_stream >= 15, "only {interrupted_mid_stream} of 30 trials hit the transfer");
}

crate::on_every_site!(a_writer_racing_names_in_the_target_path_reaches_nothing_outside);

/// The account that shares the target path in [`a_writer_racing_names_in_the_target_path_reaches_nothing_outside`].
const STRANGER: &str = "65534";

/// Lets [`STRANGER`] write `dir` (it owns it) and reach it (every directory above it gets
/// o+x).
fn share_with_stranger(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    Command::new("chown").args([&format!("{STRANGER}:{STRANGER}")]).arg(dir).status().unwrap();
    for ancestor in dir.ancestors().skip(1) {
        let mode = std::fs::metadata(ancestor).unwrap().permissions().mode();
        std::fs::set_permissions(ancestor, std::fs::Permissions::from_mode(mode | 0o001)).unwrap();
    }
}

/// A writer that shares the target path, racing krops for the whole run: every name krops
/// used to keep beside the sources becomes a symlink out of the target (to a file that does not
/// exist yet, or to a directory); what krops makes there (its own directory, staging
/// directories) is renamed away and a symlink put in its place; now and then the sentinel too.
const RACER: &str = r#"v=$1 private=$2 i=0
while :; do
  i=$((i + 1))
  for n in .krops-watchdog .krops-watchdog.fired .krops-watchdog.confirmed .krops-lock .krops-holder \
           .krops-record secrets.krops-staging secrets.krops-old info.krops-new; do
    ln -sfn "$v/$n" "$n" 2> /dev/null
  done
  for n in .krops .krops/* secrets.krops-staging.* .krops-sentinel.*; do
    [ -e "$n" ] && [ ! -L "$n" ] || continue
    mv -T -- "$n" "moved.$i" 2> /dev/null || continue
    case $n in
      # Another directory only root can use: outside the target, or a source's inside it.
      .krops) if [ $((i % 2)) = 0 ]; then ln -sfn "$private" .krops; else ln -sfn secrets .krops; fi ;;
      *) ln -sfn "$v" "$n" ;;
    esac 2> /dev/null
  done
  case $((i % 8)) in
    0) ln -sfn "$v" .populate 2> /dev/null ;;
    4) ln -sfn "$v/.populate" .populate 2> /dev/null ;;
  esac
done"#;

fn a_writer_racing_names_in_the_target_path_reaches_nothing_outside(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    let victim = sb.mkdir("victim");
    std::fs::write(victim.join("keep"), "precious").unwrap();
    // A directory only root can use, as krops's own is: only its place tells them apart.
    let private = sb.mkdir("private");
    std::fs::set_permissions(&private, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let store = PassageStore::create(&sb.mkdir("passage"), false);
    for i in 0..5 {
        store.insert(&format!("s{i}"), format!("secret {i}\n").as_bytes());
    }
    let more_sources = format!(
        "info.pipe = \"echo hi\"\nlink.symlink = \"nixpkgs\"\n\
         [deployments.site.source.secrets.passage]\ndir = {:?}\nidentities_file = {:?}\n",
        store.store.display().to_string(),
        store.identities.display().to_string()
    );
    let guarded = "force = true\nbackup = true\nconfirmTimeout = 20";
    // Locally, a stand-in nixos-rebuild on PATH records its calls; remote hosts have their own.
    let stand_in = sb.mkdir("bin");
    let local_log = sb.path("nixos-rebuild.log");
    std::fs::write(
        stand_in.join("nixos-rebuild"),
        format!("#!/bin/sh\necho \"$*\" >> {}\n", local_log.display()),
    )
    .unwrap();
    std::fs::set_permissions(
        stand_in.join("nixos-rebuild"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    crate::support::nixos_deployment(&sb, &site, "raced", "", guarded);
    let config = sb.read("krops.toml");
    sb.write("krops.toml", &format!("{config}{more_sources}"));
    share_with_stranger(&site.path(""));
    let mut racer = Command::new("setpriv")
        .args([&format!("--reuid={STRANGER}"), &format!("--regid={STRANGER}"), "--clear-groups", "--"])
        .args(["/bin/sh", "-c", RACER, "racer"])
        .arg(&victim)
        .arg(&private)
        .current_dir(site.path(""))
        .spawn()
        .unwrap();
    let path = format!("{}:{}", stand_in.display(), std::env::var("PATH").unwrap_or_default());
    let mut succeeded = 0;
    for _ in 0..6 {
        let outcome = crate::support::Outcome::of({
            let mut command = sb.krops_command(&["deploy"]);
            command.env("PATH", &path);
            command
        });
        succeeded += usize::from(outcome.code == Some(0));
    }
    Command::new("kill").arg(racer.id().to_string()).status().unwrap();
    racer.wait().unwrap();
    let names: Vec<String> = std::fs::read_dir(&victim)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["keep"], "written into {} ({succeeded} of 6 runs succeeded)", victim.display());
    assert_eq!(std::fs::read_to_string(victim.join("keep")).unwrap(), "precious");
    assert_eq!(std::fs::read_dir(&private).unwrap().count(), 0, "written into {}", private.display());
    let log = match site.host() {
        None => std::fs::read_to_string(&local_log).unwrap_or_default(),
        Some(_) => crate::support::state(&site, "nixos-rebuild.log"),
    };
    assert!(!log.contains("--rollback"), "a healthy system was rolled back: {log}");
    let deploy = || {
        let mut command = sb.krops_command(&["deploy"]);
        command.env("PATH", &path);
        crate::support::Outcome::of(command)
    };
    // A sentinel the racer replaced by a link to a directory out of the target (possible
    // until krops makes its own sentinel directory, which only root can change) is refused
    // for backups until someone puts a real one back. (A dangling one force replaces.)
    if site.path(".populate").is_symlink() {
        let refused = deploy();
        if refused.code != Some(0) {
            refused.code(1).stderr_has("backup needs /");
            assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 1, "written into {}", victim.display());
            std::fs::remove_file(site.path(".populate")).unwrap();
        }
    }
    // Without the racer, the target converges.
    deploy().success();
    assert_eq!(site.read("info"), "hi\n");
    let mut secrets: Vec<String> = std::fs::read_dir(site.path("secrets"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    secrets.sort();
    assert_eq!(secrets, ["s0", "s1", "s2", "s3", "s4"], "krops's state was kept among the secrets");
}

/// The installer of an interrupted run goes on detached (so that it never stops halfway): the
/// next run waits for it before it reads the sources' state, or it could call a source
/// unchanged that the old installer then replaces. A process working in a staging directory
/// below the target path stands for such an installer.
#[test]
fn the_next_run_waits_for_an_interrupted_runs_installer() {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Local);
    let store = PassageStore::create(&sb.mkdir("passage"), false);
    store.insert("s", b"one\n");
    passage_config(&sb, &site, &store);
    let staging = site.path("secrets.krops-staging.AbCdEf");
    std::fs::create_dir(&staging).unwrap();
    std::fs::set_permissions(&staging, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let mut installer = Command::new("sleep").arg("3").current_dir(&staging).spawn().unwrap();
    sb.krops(&["populate"]).success();
    let ended_first = installer.try_wait().unwrap().is_some();
    let _ = installer.kill();
    let _ = installer.wait();
    assert!(ended_first, "krops populated while an installer was still at work");
    assert_eq!(site.read("secrets/s"), "one\n");
    assert_eq!(entries_named(&site.path(""), "krops-staging"), Vec::<String>::new());
}

/// A target whose disk fills while secrets arrive: the error says so (not only tar's "Exiting
/// with failure status"), the old secrets stay, and no staging directory is left behind.
#[test]
fn a_full_disk_is_named_and_leaves_the_old_secrets_and_no_staging() {
    let sb = Sandbox::new();
    let site = Site::new(&sb, Kind::Local);
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "krops-full-disk"])
        .arg(site.path(""))
        .status()
        .unwrap();
    assert!(mounted.success(), "mount tmpfs");
    // Unmounted however the test ends.
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(site.path(""));
    std::fs::write(site.path(".populate"), "").unwrap();
    let store = PassageStore::create(&sb.mkdir("passage"), false);
    store.insert("small", b"old\n");
    passage_config(&sb, &site, &store);
    sb.krops(&["populate"]).success();
    store.insert("big", &vec![b'x'; 512 * 1024]);
    sb.krops(&["populate"]).code(1).stderr_has("No space left on device");
    assert_eq!(site.read("secrets/small"), "old\n");
    assert!(!site.path("secrets/big").exists());
    assert_eq!(entries_named(&site.path(""), "krops-staging"), Vec::<String>::new());
}

/// A filter driver left in a target work tree's own configuration (with an attribute naming
/// it in `.git/info/attributes`) runs nothing: not when `diff` looks at the work tree, not
/// when populate checks out a new commit or repairs an edited file.
#[test]
fn a_filter_driver_in_a_target_work_tree_runs_nothing() {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Local);
    let repo = krops_tests::git::Repo::init(sb.path("repo"));
    repo.commit("a.nix", "first");
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.site]\ntarget = {}\nsource.r.git = {{ url = {:?}, ref = \"main\" }}\n",
            site.target(),
            repo.url()
        ),
    );
    sb.krops(&["populate"]).success();
    let ran = sb.path("filter-ran");
    let mut config = std::fs::OpenOptions::new().append(true).open(site.path("r/.git/config")).unwrap();
    std::io::Write::write_all(
        &mut config,
        format!(
            "[filter \"evil\"]\n\tclean = touch {0}; cat\n\tsmudge = touch {0}; cat\n\trequired = true\n",
            ran.display()
        )
        .as_bytes(),
    )
    .unwrap();
    site.write("r/.git/info/attributes", "* filter=evil\n* filter=included\n");
    // A driver from a file the work tree's configuration includes, too.
    sb.write(
        "included.inc",
        &format!(
            "[filter \"included\"]\n\tclean = touch {0}; cat\n\tsmudge = touch {0}; cat\n",
            ran.display()
        ),
    );
    std::io::Write::write_all(
        &mut config,
        format!("[include]\n\tpath = {}\n", sb.path("included.inc").display()).as_bytes(),
    )
    .unwrap();
    // A tracked file edited by hand: status must look at its content.
    site.write("r/a.nix", "edited");
    sb.krops(&["diff"]).success();
    assert!(!ran.exists(), "diff ran the work tree's filter");
    repo.commit("a.nix", "second");
    sb.krops(&["populate"]).success();
    assert!(!ran.exists(), "populate ran the work tree's filter");
    assert_eq!(site.read("r/a.nix"), "second");
}

/// A secret and a pipe's output changed on the target to other content of the same size, with
/// their mtimes put back: `status` reports them drifted (as `diff` does), and populate repairs
/// them instead of skipping them as unchanged.
#[test]
fn same_size_tampering_with_restored_mtimes_is_drift() {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Local);
    let store = PassageStore::create(&sb.mkdir("passage"), false);
    store.insert("token", b"genuine\n");
    passage_config(&sb, &site, &store);
    let config = sb.read("krops.toml");
    sb.write("krops.toml", &config.replace("[deployments.site.source.secrets.passage]", "[deployments.site.source]\ninfo.pipe = \"echo genuine\"\n[deployments.site.source.secrets.passage]"));
    sb.krops(&["populate"]).success();
    for name in ["secrets/token", "info"] {
        let path = site.path(name);
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::fs::write(&path, "forged!\n").unwrap();
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(modified).unwrap();
    }
    let status = sb.krops(&["--json", "status"]);
    status.success();
    let event = status
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|l| l["event"] == "status")
        .unwrap();
    assert_eq!(event["sources"]["secrets"]["status"], "drifted", "{event}");
    assert_eq!(event["sources"]["info"]["status"], "drifted", "{event}");
    sb.krops(&["populate"]).success();
    assert_eq!(site.read("secrets/token"), "genuine\n");
    assert_eq!(site.read("info"), "genuine\n");
}

/// After a run was killed, the lock waits for that run's remote work; a process of another
/// account that carries the run's marker (anyone can read it in the process list and name a
/// process so) is not that work and holds nothing.
#[test]
fn a_stranger_carrying_a_killed_run_s_marker_holds_no_lock() {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Root);
    let sleeper = format!("sleep 2.{}", std::process::id());
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.site]\ntarget = {}\ncommand = \"{sleeper}\"\n[deployments.site.source]\ninfo.pipe = \"echo hi\"\n",
            site.target()
        ),
    );
    let mut krops =
        sb.krops_with_tmpdir(&["run"]).stdin(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let remote_sleep = || processes_mentioning(&sleeper).into_iter().find(|p| p.contains("krops-run-"));
    wait_until("the remote command runs", || remote_sleep().is_some());
    let marker = remote_sleep()
        .unwrap()
        .split_whitespace()
        .find(|word| word.starts_with("krops-run-"))
        .unwrap()
        .to_owned();
    Command::new("kill").args(["-KILL", &krops.id().to_string()]).status().unwrap();
    let _ = krops.wait();
    // Also through a setuid program (sudo waiting for a password): it runs as root, but
    // started by the stranger.
    let strangers = ["sleep 60; :", "sleep 60 | sudo -S -p '' true \"$0\""].map(|script| {
        Command::new("setpriv")
            .args([&format!("--reuid={STRANGER}"), &format!("--regid={STRANGER}"), "--clear-groups", "--"])
            .args(["/bin/sh", "-c", script, &marker])
            .spawn()
            .unwrap()
    });
    wait_until("the stranger's sudo waits", || {
        processes_mentioning(&marker).iter().any(|p| p.contains("sudo -S"))
    });
    let started = std::time::Instant::now();
    crate::support::Outcome::of(sb.krops_with_tmpdir(&["--wait-lock", "40", "populate"])).success();
    let waited = started.elapsed();
    for mut stranger in strangers {
        let _ = stranger.kill();
        let _ = stranger.wait();
    }
    // The sudo's own processes (root's) end with their input.
    assert!(waited < Duration::from_secs(20), "the stranger's process held the lock for {waited:?}");
}

/// A lock on krops's directory taken by something other than krops (only its owner can open
/// it: here root, by hand) is reported as that process, by uid and PID, not blamed on the
/// last krops run that held it.
#[test]
fn a_lock_held_by_no_krops_run_is_named_by_uid_and_pid() {
    let (sb, site) = populated_with_a_pipe();
    let mut holder = Command::new("flock").arg(site.path(".krops")).args(["sleep", "30"]).spawn().unwrap();
    wait_until("the lock is taken", || {
        std::fs::read_to_string("/proc/locks").unwrap().lines().count() > 0
            && !processes_mentioning("sleep 30").is_empty()
    });
    let refused = sb.krops(&["populate"]);
    let _ = holder.kill();
    let _ = holder.wait();
    refused
        .code(1)
        .stderr_has(&format!("is locked by a process that is no krops run (uid 0 PID {})", holder.id()));
}

/// A pipe's output replaced on the target by a huge (sparse) file: reading its state is
/// bounded, so `status` and the lock's round trip answer at once instead of hashing for hours.
#[test]
fn the_state_of_a_huge_file_is_read_in_bounded_time() {
    let (sb, site) = populated_with_a_pipe();
    std::fs::File::options().write(true).open(site.path("info")).unwrap().set_len(1 << 40).unwrap();
    let started = std::time::Instant::now();
    sb.krops(&["status"]).success();
    sb.krops(&["populate"]).success();
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    assert_eq!(site.read("info"), "hi\n");
}

/// A local site populated with one pipe source, `info`.
fn populated_with_a_pipe() -> (Sandbox, Site) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Local);
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.site]\ntarget = {}\n[deployments.site.source]\ninfo.pipe = \"echo hi\"\n",
            site.target()
        ),
    );
    sb.krops(&["populate"]).success();
    (sb, site)
}
