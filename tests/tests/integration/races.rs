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
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Root);
    let stores = two_stores(&sb);
    passage_config(&sb, &site, &stores[0]);
    sb.krops(&["populate"]).success();
    assert_eq!(whole_version(&site.path("secrets")), Ok("a"));
    let tmp = sb.mkdir("tmp").display().to_string();
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let mut interrupted_mid_stream = 0;
    for (trial, mode) in
        ["INT", "TERM", "master"].into_iter().flat_map(|m| std::iter::repeat_n(m, 10)).enumerate()
    {
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
