//! `krops diff` per source type, locally and on real sshd hosts (root, sudo): what it reports
//! is what populate then does, and the target is left exactly as it was (every entry's name,
//! kind, size, mode, mtime and link target compared before and after).

use krops_tests::git::Repo;
use krops_tests::secrets::{PassStore, PassageStore};

use crate::support::{Kind, Outcome, Sandbox, Site};

crate::on_every_site!(
    files_added_changed_and_deleted,
    git_commit_old_to_new,
    secret_names_without_content,
    pipe_and_symlink_changes,
    a_target_in_the_way_and_a_fresh_target,
);

/// Every entry below the site's path (the sentinel included) with what `find -printf` says of
/// it, and every file's content: a diff must leave all of it as it was.
fn snapshot(site: &Site) -> String {
    let output = std::process::Command::new("find")
        .arg(site.path(""))
        .args(["-printf", "%P\t%y\t%s\t%m\t%T@\t%l\n"])
        .output()
        .unwrap();
    // And every regular file's bytes.
    let mut lines: Vec<String> = std::str::from_utf8(&output.stdout)
        .unwrap()
        .lines()
        .map(|line| match line.split('\t').collect::<Vec<_>>().as_slice() {
            [relative, "f", ..] => {
                let bytes = std::fs::read(site.path(relative)).unwrap_or_default();
                format!("{line} {}", String::from_utf8_lossy(&bytes).escape_debug())
            }
            _ => line.to_owned(),
        })
        .collect();
    lines.sort_unstable();
    lines.join("\n")
}

/// Runs `krops diff` and checks the target did not change; returns the outcome.
fn diff_changing_nothing(sb: &Sandbox, site: &Site, args: &[&str]) -> Outcome {
    let before = snapshot(site);
    let mut all = vec!["diff"];
    all.extend_from_slice(args);
    let outcome = sb.krops(&all);
    outcome.success();
    assert_eq!(snapshot(site), before, "krops diff changed the target\n{outcome}");
    outcome
}

/// The `diff` events of a `--json` run, by source.
fn json_diffs(outcome: &Outcome) -> serde_json::Map<String, serde_json::Value> {
    outcome
        .stdout
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|event| event["event"] == "diff")
        .map(|event| (event["source"].as_str().unwrap().to_owned(), event))
        .collect()
}

fn config(sb: &Sandbox, site: &Site, sources: &str) {
    sb.write(
        "krops.toml",
        &format!("[deployments.site]\ntarget = {}\n[deployments.site.source]\n{sources}\n", site.target()),
    );
}

fn files_added_changed_and_deleted(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    sb.write("conf/keep.nix", "same");
    sb.write("conf/edit.nix", "old");
    sb.write("conf/gone.nix", "bye");
    sb.write("conf/sub/deep.nix", "deep");
    config(&sb, &site, "conf.file = \"conf\"\nsingle.file = \"conf/keep.nix\"");
    sb.krops(&["populate"]).success();
    diff_changing_nothing(&sb, &site, &[])
        .stdout_has("conf (file): unchanged")
        .stdout_has("single (file): unchanged");

    sb.write("conf/edit.nix", "new content");
    std::fs::remove_file(sb.path("conf/gone.nix")).unwrap();
    sb.write("conf/sub/added.nix", "hello");
    sb.write("conf/keep.nix", "changed too");
    let outcome = diff_changing_nothing(&sb, &site, &[]);
    outcome
        .stdout_has("conf (file): 4 changes")
        .stdout_has("~ edit.nix")
        .stdout_has("- gone.nix")
        .stdout_has("+ sub/added.nix")
        .stdout_has("~ keep.nix")
        .stdout_has("single (file): changed");
    assert!(!outcome.stdout.contains("deep.nix"), "unchanged files are not listed\n{outcome}");

    let outcome = diff_changing_nothing(&sb, &site, &["--json"]);
    let diffs = json_diffs(&outcome);
    let mut changes: Vec<(String, String)> = diffs["conf"]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["change"].as_str().unwrap().to_owned(), c["path"].as_str().unwrap().to_owned()))
        .collect();
    changes.sort();
    assert_eq!(
        changes,
        [
            ("added".into(), "sub/added.nix".into()),
            ("changed".into(), "edit.nix".into()),
            ("changed".into(), "keep.nix".into()),
            ("deleted".into(), "gone.nix".into()),
        ]
    );
    assert_eq!(diffs["conf"]["type"], "file");
    assert_eq!(diffs["conf"]["unchanged"], false);

    // What diff said is what populate does; afterwards there is nothing left to tell.
    sb.krops(&["populate"]).success();
    assert!(!site.path("conf/gone.nix").exists() && site.path("conf/sub/added.nix").exists());
    diff_changing_nothing(&sb, &site, &[]).stdout_has("conf (file): unchanged");
}

fn git_commit_old_to_new(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    let repo = Repo::init(sb.path("origin"));
    let first = repo.commit("a.nix", "1");
    config(&sb, &site, &format!("repo.git = {{ url = {:?}, ref = \"main\" }}", repo.url()));
    diff_changing_nothing(&sb, &site, &[]).stdout_has(&format!("repo (git): commit (none) → {first}"));
    sb.krops(&["populate"]).success();
    diff_changing_nothing(&sb, &site, &[]).stdout_has("repo (git): unchanged");
    // The deploy record names the type and the commit; status reads them back.
    sb.krops(&["status"]).success().stdout_has(&format!("repo (git {first}): as recorded"));
    let second = repo.commit("a.nix", "2");
    let outcome = diff_changing_nothing(&sb, &site, &["--json"]);
    let change = &json_diffs(&outcome)["repo"]["changes"][0];
    assert_eq!(change["what"], "commit");
    assert_eq!(change["from"], first.as_str());
    assert_eq!(change["to"], second.as_str());
    diff_changing_nothing(&sb, &site, &[]).stdout_has(&format!("repo (git): commit {first} → {second}"));
    // A hand edit in the work tree is what populate's reset would undo.
    sb.krops(&["populate"]).success();
    site.write("repo/a.nix", "edited by hand");
    diff_changing_nothing(&sb, &site, &[]).stdout_has("repo (git): local changes modified → reset");
}

fn secret_names_without_content(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    let passage = PassageStore::create(&sb.mkdir("passage"), false);
    passage.insert("db", b"hunter2-db\n");
    passage.insert("api/token", b"hunter2-token\n");
    passage.insert("old", b"hunter2-old\n");
    let pass = PassStore::create(&sb.mkdir("pass"));
    pass.insert("hosts/web/root", "hunter2-root", 1_600_000_000);
    config(
        &sb,
        &site,
        &format!(
            "secrets.passage = {{ dir = {:?}, identities_file = {:?} }}\n\
             pass.pass = {{ dir = {:?}, name = \"hosts\" }}",
            passage.store.display().to_string(),
            passage.identities.display().to_string(),
            pass.dir.display().to_string(),
        ),
    );
    let krops = |args: &[&str]| {
        let mut command = sb.krops_command(args);
        command.envs(pass.env());
        command
    };
    Outcome::of(krops(&["populate"])).success();
    passage.insert("db", b"hunter2-db changed\n");
    passage.insert("new/key", b"hunter2-new\n");
    std::fs::remove_file(passage.store.join("old.age")).unwrap();
    pass.insert("hosts/web/added", "hunter2-added", 1_600_000_100);
    for json in [false, true] {
        let before = snapshot(&site);
        let mut args = vec!["diff"];
        if json {
            args.insert(0, "--json");
        }
        let outcome = Outcome::of(krops(&args));
        outcome.success();
        assert_eq!(snapshot(&site), before, "krops diff changed the target\n{outcome}");
        assert!(!format!("{outcome}").contains("hunter2"), "secret content shown\n{outcome}");
        if json {
            let diffs = json_diffs(&outcome);
            let names = |source: &str| -> Vec<(String, String)> {
                diffs[source]["changes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| {
                        (c["change"].as_str().unwrap().to_owned(), c["path"].as_str().unwrap().to_owned())
                    })
                    .collect()
            };
            assert_eq!(
                names("secrets"),
                [
                    ("changed".into(), "db".into()),
                    ("added".into(), "new/key".into()),
                    ("deleted".into(), "old".into()),
                ]
            );
            assert_eq!(names("pass"), [("added".into(), "web/added".into())]);
        } else {
            outcome
                .stdout_has("secrets (passage): 3 changes")
                .stdout_has("~ db")
                .stdout_has("+ new/key")
                .stdout_has("- old");
        }
    }
    // A secret edited on the target is found without showing either content.
    Outcome::of(krops(&["populate"])).success();
    site.write("secrets/api/token", "hunter2-edited-on-target\n");
    let outcome = Outcome::of(krops(&["diff"]));
    outcome.success().stdout_has("secrets (passage): 1 change").stdout_has("~ api/token");
    assert!(!format!("{outcome}").contains("hunter2"));
}

fn pipe_and_symlink_changes(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    config(&sb, &site, "out.pipe = \"echo one\"\nlink.symlink = \"out\"");
    sb.krops(&["populate"]).success();
    diff_changing_nothing(&sb, &site, &[])
        .stdout_has("out (pipe): unchanged")
        .stdout_has("link (symlink): unchanged");
    config(&sb, &site, "out.pipe = \"echo two\"\nlink.symlink = \"elsewhere\"");
    diff_changing_nothing(&sb, &site, &[])
        .stdout_has("out (pipe): output changed")
        .stdout_has("link (symlink): symlink target out → elsewhere");
    sb.krops(&["populate"]).success();
    assert_eq!(site.read("out"), "two\n");
    diff_changing_nothing(&sb, &site, &[])
        .stdout_has("out (pipe): unchanged")
        .stdout_has("link (symlink): unchanged");
}

fn a_target_in_the_way_and_a_fresh_target(kind: Kind) {
    let sb = Sandbox::new();
    // No sentinel, nothing deployed: diff tells what populate would add (and writes nothing,
    // not even a lock file).
    let site = Site::new(&sb, kind);
    sb.write("conf/a.nix", "a");
    config(&sb, &site, "conf.file = \"conf\"\nout.pipe = \"echo x\"\nlink.symlink = \"conf\"");
    diff_changing_nothing(&sb, &site, &[])
        .stdout_has("conf (file): 1 change")
        .stdout_has("+ a.nix")
        .stdout_has("out (pipe): added")
        .stdout_has("link (symlink): symlink target (none) → conf");
    // A symlink planted where a directory goes is reported as replaced, never looked through.
    let site = site.with_sentinel();
    std::os::unix::fs::symlink("/etc", site.path("conf")).unwrap();
    diff_changing_nothing(&sb, &site, &[]).stdout_has("conf (file): replaced a symlink → a directory");
    // A directory where a symlink goes: populate would refuse, and diff says so (exit 1).
    std::fs::create_dir(site.path("link")).unwrap();
    sb.krops(&["diff"]).code(1).stderr_has("link").stderr_has("is a directory");
}

/// `diff --exit-code` and `status --exit-code`, for CI: 0 nothing to change or drift, 1 changes
/// or drift (also a target never deployed), 2 an error.
#[test]
fn exit_code_tells_changes_and_drift() {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Local);
    sb.write("conf/a", "a");
    sb.write(
        "krops.toml",
        &format!("[deployments.site]\ntarget = {}\nsource.a.file = \"conf/a\"\n", site.target()),
    );
    sb.krops(&["diff", "--exit-code"]).code(1);
    sb.krops(&["status", "--exit-code"]).code(1);
    sb.krops(&["diff"]).success();
    sb.krops(&["populate"]).success();
    sb.krops(&["diff", "--exit-code"]).success();
    sb.krops(&["status", "--exit-code"]).success();
    sb.write("conf/a", "changed");
    sb.krops(&["diff", "--exit-code"]).code(1);
    std::fs::write(site.path("a"), "edited on the target").unwrap();
    sb.krops(&["status", "--exit-code"]).code(1);
    sb.krops(&["status"]).success();
    sb.write(
        "krops.toml",
        "[deployments.site]\ntarget = \"/nonexistent/krops-exit-code\"\nsource.a.file = \"conf/a\"\n",
    );
    sb.krops(&["diff", "--exit-code"]).code(2).stderr_has("failed");
    sb.krops(&["-f", "/nonexistent.toml", "status", "--exit-code"]).code(2);
}
