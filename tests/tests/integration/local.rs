//! The stage pipeline and the file, symlink and pipe populators on local targets.

use std::time::{Duration, SystemTime};

use crate::support::{inode, mode, Sandbox};

/// A krops.toml with one deployment `site` into `<sandbox>/site`.
fn config(sb: &Sandbox, deployment_extra: &str, sources: &str) {
    let target = sb.path("site");
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.site]\ntarget = {target:?}\n{deployment_extra}\n[deployments.site.source]\n{sources}\n",
            target = target.display().to_string()
        ),
    );
}

#[test]
fn missing_sentinel_fails_and_writes_nothing() {
    let sb = Sandbox::new();
    sb.mkdir("site");
    sb.write("conf/a.nix", "a");
    config(&sb, "", "a.file = \"conf/a.nix\"");
    let expected = format!("missing sentinel file: {}/.populate", sb.path("site").display());
    sb.krops(&["populate"]).code(1).stderr_has(&expected);
    assert!(sb.listing("site").is_empty(), "target was touched: {:?}", sb.listing("site"));
}

#[test]
fn force_creates_the_sentinel() {
    let sb = Sandbox::new();
    sb.write("conf/a.nix", "a");
    config(&sb, "force = true", "a.file = \"conf/a.nix\"");
    sb.krops(&["populate"]).success();
    assert!(sb.path("site/.populate").is_file());
    assert_eq!(sb.read("site/a"), "a");
}

#[test]
fn backup_keeps_old_content_with_hard_links() {
    let sb = Sandbox::new();
    sb.write("conf/dir/same.nix", "unchanged");
    sb.write("conf/dir/changed.nix", "old");
    config(&sb, "force = true\nbackup = true", "dir.file = \"conf/dir\"");
    sb.krops(&["populate"]).success();
    assert!(sb.path("site/.populate").is_dir(), "force with backup makes the sentinel a directory");

    sb.write("conf/dir/changed.nix", "new content");
    sb.krops(&["populate"]).success();
    assert_eq!(sb.read("site/dir/changed.nix"), "new content");
    assert_eq!(sb.read("site/.populate/backup/dir/changed.nix"), "old");
    assert_eq!(sb.read("site/.populate/backup/dir/same.nix"), "unchanged");
    assert_eq!(
        inode(&sb.path("site/dir/same.nix")),
        inode(&sb.path("site/.populate/backup/dir/same.nix")),
        "an unchanged file is hard-linked into the backup"
    );
    assert!(!sb.path("site/.populate/backup/.populate").exists(), "the backup excludes .populate");
}

#[test]
fn backup_needs_a_sentinel_directory() {
    let sb = Sandbox::new();
    sb.target_dir("site");
    sb.write("conf/a", "a");
    config(&sb, "backup = true", "a.file = \"conf/a\"");
    sb.krops(&["populate"]).code(1).stderr_has("backup").stderr_has(".populate to be a directory");
    assert!(!sb.path("site/a").exists(), "nothing is populated after a failed backup");
}

#[test]
fn file_filters_apply_in_order() {
    let sb = Sandbox::new();
    sb.target_dir("site");
    sb.write("conf/keep.nix", "k");
    sb.write("conf/sub/deep.nix", "d");
    sb.write("conf/notes.txt", "n");
    sb.write("conf/secret.nix", "s");
    config(
        &sb,
        "",
        r#"conf.file = { path = "conf", filters = [
  { type = "exclude", pattern = "secret.nix" },
  { type = "include", pattern = "*.nix" },
  { type = "include", pattern = "*/" },
  { type = "exclude", pattern = "*" },
] }"#,
    );
    sb.krops(&["populate"]).success();
    assert_eq!(sb.listing("site/conf"), ["keep.nix", "sub", "sub/deep.nix"]);
}

#[test]
fn delete_excluded_true_removes_excluded_files_on_the_target() {
    let sb = Sandbox::new();
    sb.target_dir("site");
    sb.write("conf/a.nix", "a");
    sb.write("site/conf/stale.bak", "left over");
    sb.write("site/conf/gone.nix", "removed from the source");
    config(&sb, "", r#"conf.file = { path = "conf", filters = [{ type = "exclude", pattern = "*.bak" }] }"#);
    sb.krops(&["populate"]).success();
    assert_eq!(sb.listing("site/conf"), ["a.nix"]);
}

#[test]
fn delete_excluded_false_keeps_target_files() {
    let sb = Sandbox::new();
    sb.target_dir("site");
    sb.write("conf/a.nix", "a");
    sb.write("site/conf/stale.bak", "left over");
    sb.write("site/conf/gone.nix", "removed from the source");
    config(&sb, "", r#"conf.file = { path = "conf", deleteExcluded = false, exclude = ["*.bak"] }"#);
    sb.krops(&["populate"]).success();
    assert_eq!(sb.listing("site/conf"), ["a.nix", "gone.nix", "stale.bak"]);
}

#[test]
fn use_checksum_catches_same_size_same_mtime_changes() {
    let sb = Sandbox::new();
    sb.target_dir("site");
    let file = sb.write("conf/a.nix", "aaaa");
    let fixed = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let set_mtime = || std::fs::File::options().write(true).open(&file).unwrap().set_modified(fixed).unwrap();
    set_mtime();

    config(&sb, "", "a.file = { path = \"conf/a.nix\", useChecksum = false }");
    sb.krops(&["populate"]).success();
    std::fs::write(&file, "bbbb").unwrap();
    set_mtime();
    sb.krops(&["populate"]).success();
    assert_eq!(sb.read("site/a"), "aaaa", "size and mtime match: rsync skips without --checksum");

    config(&sb, "", "a.file = { path = \"conf/a.nix\", useChecksum = true }");
    sb.krops(&["populate"]).success();
    assert_eq!(sb.read("site/a"), "bbbb", "--checksum compares contents");
}

#[test]
fn symlink_and_pipe() {
    let sb = Sandbox::new();
    sb.target_dir("site");
    sb.mkdir("site/current");
    sb.write("site/current/old", "a directory that the link replaces");
    config(
        &sb,
        "",
        "current.symlink = \"nixos-config\"\ninfo.pipe = \"printf 'line 1\\\\nline 2\\\\n'; echo $((6 * 7))\"",
    );
    sb.krops(&["populate"]).success();
    let link = std::fs::read_link(sb.path("site/current")).expect("a symlink");
    assert_eq!(link.to_str(), Some("nixos-config"));
    assert_eq!(sb.read("site/info"), "line 1\nline 2\n42\n");
    assert_eq!(mode(&sb.path("site/info")), 0o644);
}

#[test]
fn failing_pipe_command_names_source_and_keeps_stderr() {
    let sb = Sandbox::new();
    sb.target_dir("site");
    config(&sb, "", "info.pipe = \"echo oh no >&2; exit 3\"");
    sb.krops(&["populate"]).code(1).stderr_has("\"info\"").stderr_has("oh no");
    assert!(!sb.path("site/info").exists());
}

#[test]
fn run_sees_krops_target_path() {
    let sb = Sandbox::new();
    sb.target_dir("site");
    sb.write("conf/a", "a");
    config(
        &sb,
        "command = \"ls \\\"$KROPS_TARGET_PATH\\\"; echo \\\"at=$KROPS_TARGET_PATH\\\"\"",
        "a.file = \"conf/a\"",
    );
    let out = sb.krops(&["run"]);
    out.success().stdout_has(&format!("at={}", sb.path("site").display()));
    assert!(out.stdout.lines().any(|l| l == "a"), "{out}");

    let out = sb.krops(&["run", "site", "--", "sh", "-c", "echo override \"$KROPS_TARGET_PATH\""]);
    out.success().stdout_has(&format!("override {}", sb.path("site").display()));
}

#[test]
fn one_failing_deployment_does_not_stop_the_other() {
    let sb = Sandbox::new();
    sb.target_dir("good");
    sb.mkdir("bad");
    sb.write("conf/a", "a");
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.good]\ntarget = {:?}\nsource.a.file = \"conf/a\"\n\
             [deployments.bad]\ntarget = {:?}\nsource.a.file = \"conf/a\"\n",
            sb.path("good").display().to_string(),
            sb.path("bad").display().to_string()
        ),
    );
    let out = sb.krops(&["populate"]);
    out.code(1).stderr_has("1 of 2 deployments failed").stderr_has("bad: sentinel");
    assert_eq!(sb.read("good/a"), "a");
    assert!(!sb.path("bad/a").exists());
}

#[test]
fn sudo_on_a_local_target() {
    let sb = Sandbox::new();
    sb.target_dir("site");
    sb.write("conf/a", "a");
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.site]\ntarget = {{ path = {:?}, sudo = true }}\nsource.a.file = \"conf/a\"\nsource.l.symlink = \"a\"\n",
            sb.path("site").display().to_string()
        ),
    );
    sb.krops(&["populate", "-v"]).success();
    assert_eq!(sb.read("site/l"), "a");
}

#[test]
fn eval_prints_the_normalised_configuration() {
    let sb = Sandbox::new();
    sb.write("conf/a.nix", "a");
    sb.write(
        "krops.json",
        r#"{"deployments": {"web": {"target": "root@web1:2222", "source": {
            "a": {"file": "conf/a.nix"},
            "b": {"file": {"path": "conf", "exclude": ["x"]}},
            "l": {"symlink": "a"}}}}}"#,
    );
    let out = sb.krops(&["eval"]);
    out.success();
    let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    let web = &json["deployments"]["web"];
    assert_eq!(web["target"]["host"], "web1");
    assert_eq!(web["target"]["port"], 2222);
    assert_eq!(web["target"]["path"], "/var/src");
    assert_eq!(web["operation"], "switch");
    assert_eq!(web["useNixOutputMonitor"], "opportunistic");
    assert_eq!(web["source"]["a"]["file"]["path"], sb.path("conf/a.nix").display().to_string());
    assert_eq!(web["source"]["a"]["file"]["useChecksum"], false);
    assert_eq!(web["source"]["a"]["file"]["deleteExcluded"], true);
    assert_eq!(web["source"]["b"]["file"]["filters"][0]["type"], "exclude");
    assert_eq!(web["source"]["l"]["symlink"]["target"], "a");
}
