//! The stage pipeline and the file, symlink and pipe populators, each scenario run against a
//! local directory, a real sshd host as root, and the same host as a sudo user.

use std::time::{Duration, SystemTime};

use crate::support::{inode, mode, Kind, Sandbox, Site};

crate::on_every_site!(
    missing_sentinel_fails_and_writes_nothing,
    force_creates_the_sentinel,
    backup_keeps_old_content_with_hard_links,
    backup_needs_a_sentinel_directory,
    file_filters_apply_in_order,
    delete_excluded_true_removes_excluded_files_on_the_target,
    delete_excluded_false_keeps_target_files,
    use_checksum_catches_same_size_same_mtime_changes,
    symlink_and_pipe,
    failing_pipe_command_names_source_and_keeps_stderr,
    a_failing_pipe_runs_once_and_touches_no_target,
    a_pipe_runs_once_per_run,
    run_sees_krops_target_path,
    one_failing_deployment_does_not_stop_the_other,
    names_and_contents_are_never_interpreted_by_a_shell,
    sources_named_with_a_slash_nest_below_the_path,
    a_nested_source_never_goes_through_a_link_or_a_path_others_can_change,
);

/// A krops.toml with one deployment `site` into `site`.
fn config(sb: &Sandbox, site: &Site, deployment_extra: &str, sources: &str) {
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.site]\ntarget = {}\n{deployment_extra}\n[deployments.site.source]\n{sources}\n",
            site.target()
        ),
    );
}

fn missing_sentinel_fails_and_writes_nothing(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::new(&sb, kind);
    sb.write("conf/a.nix", "a");
    config(&sb, &site, "", "a.file = \"conf/a.nix\"");
    let expected = format!("missing sentinel file: {}{}/.populate", site.host_prefix(), site.target_path());
    sb.krops(&["populate"]).code(1).stderr_has(&expected);
    assert!(site.listing("").is_empty(), "target was touched: {:?}", site.listing(""));
}

fn force_creates_the_sentinel(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::new(&sb, kind);
    sb.write("conf/a.nix", "a");
    config(&sb, &site, "force = true", "a.file = \"conf/a.nix\"");
    sb.krops(&["populate"]).success();
    assert!(site.path(".populate").is_file());
    assert_eq!(site.read("a"), "a");
}

fn backup_keeps_old_content_with_hard_links(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::new(&sb, kind);
    sb.write("conf/dir/same.nix", "unchanged");
    sb.write("conf/dir/changed.nix", "old");
    config(&sb, &site, "force = true\nbackup = true", "dir.file = \"conf/dir\"");
    sb.krops(&["populate"]).success();
    assert!(site.path(".populate").is_dir(), "force with backup makes the sentinel a directory");

    sb.write("conf/dir/changed.nix", "new content");
    sb.krops(&["populate"]).success();
    assert_eq!(site.read("dir/changed.nix"), "new content");
    assert_eq!(site.read(".populate/backup/dir/changed.nix"), "old");
    assert_eq!(site.read(".populate/backup/dir/same.nix"), "unchanged");
    assert_eq!(
        inode(&site.path("dir/same.nix")),
        inode(&site.path(".populate/backup/dir/same.nix")),
        "an unchanged file is hard-linked into the backup"
    );
    assert!(!site.path(".populate/backup/.populate").exists(), "the backup excludes .populate");
}

fn backup_needs_a_sentinel_directory(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    sb.write("conf/a", "a");
    config(&sb, &site, "backup = true", "a.file = \"conf/a\"");
    sb.krops(&["populate"]).code(1).stderr_has("backup").stderr_has(".populate to be a directory");
    assert!(!site.path("a").exists(), "nothing is populated after a failed backup");
}

fn file_filters_apply_in_order(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    sb.write("conf/keep.nix", "k");
    sb.write("conf/sub/deep.nix", "d");
    sb.write("conf/notes.txt", "n");
    sb.write("conf/secret.nix", "s");
    config(
        &sb,
        &site,
        "",
        r#"conf.file = { path = "conf", filters = [
  { type = "exclude", pattern = "secret.nix" },
  { type = "include", pattern = "*.nix" },
  { type = "include", pattern = "*/" },
  { type = "exclude", pattern = "*" },
] }"#,
    );
    sb.krops(&["populate"]).success();
    assert_eq!(site.listing("conf"), ["keep.nix", "sub", "sub/deep.nix"]);
}

/// A source with one file, and a target that still holds a file since removed from the
/// source and one the source's filters exclude.
fn site_with_leftovers(kind: Kind) -> (Sandbox, Site) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    sb.write("conf/a.nix", "a");
    site.write("conf/stale.bak", "left over");
    site.write("conf/gone.nix", "removed from the source");
    (sb, site)
}

fn delete_excluded_true_removes_excluded_files_on_the_target(kind: Kind) {
    let (sb, site) = site_with_leftovers(kind);
    config(
        &sb,
        &site,
        "",
        r#"conf.file = { path = "conf", filters = [{ type = "exclude", pattern = "*.bak" }] }"#,
    );
    sb.krops(&["populate"]).success();
    assert_eq!(site.listing("conf"), ["a.nix"]);
}

fn delete_excluded_false_keeps_target_files(kind: Kind) {
    let (sb, site) = site_with_leftovers(kind);
    config(&sb, &site, "", r#"conf.file = { path = "conf", deleteExcluded = false, exclude = ["*.bak"] }"#);
    sb.krops(&["populate"]).success();
    assert_eq!(site.listing("conf"), ["a.nix", "gone.nix", "stale.bak"]);
}

fn use_checksum_catches_same_size_same_mtime_changes(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    let file = sb.write("conf/a.nix", "aaaa");
    let fixed = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let set_mtime = || std::fs::File::options().write(true).open(&file).unwrap().set_modified(fixed).unwrap();
    set_mtime();

    config(&sb, &site, "", "a.file = { path = \"conf/a.nix\", useChecksum = false }");
    sb.krops(&["populate"]).success();
    std::fs::write(&file, "bbbb").unwrap();
    set_mtime();
    sb.krops(&["populate"]).success();
    assert_eq!(site.read("a"), "aaaa", "size and mtime match: rsync skips without --checksum");

    config(&sb, &site, "", "a.file = { path = \"conf/a.nix\", useChecksum = true }");
    sb.krops(&["populate"]).success();
    assert_eq!(site.read("a"), "bbbb", "--checksum compares contents");
}

fn symlink_and_pipe(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    site.write("current", "a file that the link replaces");
    config(
        &sb,
        &site,
        "",
        "current.symlink = \"nixos-config\"\ninfo.pipe = \"printf 'line 1\\\\nline 2\\\\n'; echo $((6 * 7))\"",
    );
    sb.krops(&["populate"]).success();
    let link = std::fs::read_link(site.path("current")).expect("a symlink");
    assert_eq!(link.to_str(), Some("nixos-config"));
    assert_eq!(site.read("info"), "line 1\nline 2\n42\n");
    assert_eq!(mode(&site.path("info")), 0o644);
}

/// `"sources/nixpkgs"` lands in `<path>/sources/nixpkgs`, as in the original; the directories
/// on the way are made, and a redeploy, diff and status see the nested names.
fn sources_named_with_a_slash_nest_below_the_path(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    sb.write("conf/tree/a.nix", "a");
    config(
        &sb,
        &site,
        "",
        "\"sources/tree\".file = \"conf/tree\"\n\"sources/deep/info\".pipe = \"echo piped\"\n\"links/current\".symlink = \"../sources/tree\"",
    );
    sb.krops(&["populate"]).success();
    assert_eq!(site.read("sources/tree/a.nix"), "a");
    assert_eq!(site.read("sources/deep/info"), "piped\n");
    assert_eq!(std::fs::read_link(site.path("links/current")).unwrap().to_str(), Some("../sources/tree"));
    assert_eq!(mode(&site.path("sources/deep")), 0o755);
    let again = sb.krops(&["populate"]);
    again.success();
    assert!(again.stdout.contains("unchanged") || again.stderr.contains("unchanged"), "{again}");
    sb.krops(&["status"]).success().stdout_has("sources/deep/info (pipe): as recorded");
    sb.write("conf/tree/a.nix", "changed");
    sb.krops(&["diff"]).success().stdout_has("sources/tree");
}

/// A link where a nested source's directory belongs, or a target path others can write, stops
/// the deployment before anything is written there.
fn a_nested_source_never_goes_through_a_link_or_a_path_others_can_change(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    let outside = sb.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, site.path("sources")).unwrap();
    config(&sb, &site, "", "\"sources/info\".pipe = \"echo piped\"");
    sb.krops(&["populate"]).code(1).stderr_has("is in the way: not a directory");
    assert!(sb.listing("outside").is_empty());
    std::fs::remove_file(site.path("sources")).unwrap();
    let root = site.path("");
    let before = mode(&root);
    std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    sb.krops(&["populate"]).code(1).stderr_has("is writable by others");
    assert!(!site.path("sources").exists());
    std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(before)).unwrap();
    sb.krops(&["populate"]).success();
    assert_eq!(site.read("sources/info"), "piped\n");
}

fn failing_pipe_command_names_source_and_keeps_stderr(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    config(&sb, &site, "", "info.pipe = \"echo oh no >&2; exit 3\"");
    sb.krops(&["populate"]).code(1).stderr_has("\"info\"").stderr_has("oh no");
    assert!(!site.path("info").exists());
}

/// A pipe is local work: it runs in prepare, once, and its failure stops the deployment before
/// anything is written on the target, even the sentinel `force` would create, even the sources
/// before it.
fn a_failing_pipe_runs_once_and_touches_no_target(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::new(&sb, kind);
    site.write("old", "left alone");
    sb.write("conf/a.nix", "a");
    let runs = sb.path("runs");
    config(
        &sb,
        &site,
        "force = true",
        &format!(
            "a.file = \"conf/a.nix\"\nb.pipe = \"echo run >> '{}'; echo oh no >&2; exit 1\"",
            runs.display()
        ),
    );
    let before = site.listing("");
    sb.krops(&["populate"]).code(1).stderr_has("prepare of source \"b\" failed").stderr_has("oh no");
    assert_eq!(sb.read("runs"), "run\n", "the pipe ran once");
    assert_eq!(site.listing(""), before, "the target was touched");
}

/// A pipe that succeeds also runs once per run: its output is fingerprinted and shipped.
fn a_pipe_runs_once_per_run(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    let runs = sb.path("runs");
    config(&sb, &site, "", &format!("info.pipe = \"echo run >> '{}'; echo out\"", runs.display()));
    sb.krops(&["populate"]).success();
    assert_eq!(site.read("info"), "out\n");
    assert_eq!(sb.read("runs"), "run\n", "the pipe ran once");
    sb.krops(&["populate"]).success();
    assert_eq!(sb.read("runs"), "run\nrun\n", "the pipe ran once more in the second run");
}

fn run_sees_krops_target_path(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    sb.write("conf/a", "a");
    config(
        &sb,
        &site,
        "command = \"ls \\\"$KROPS_TARGET_PATH\\\"; echo \\\"at=$KROPS_TARGET_PATH\\\"\"",
        "a.file = \"conf/a\"",
    );
    let out = sb.krops(&["run"]);
    out.success().stdout_has(&format!("at={}", site.target_path()));
    assert!(out.stdout.lines().any(|l| l == "a"), "{out}");

    let out = sb.krops(&["run", "site", "--", "sh", "-c", "echo override \"$KROPS_TARGET_PATH\""]);
    out.success().stdout_has(&format!("override {}", site.target_path()));
}

fn one_failing_deployment_does_not_stop_the_other(kind: Kind) {
    let sb = Sandbox::new();
    let good = Site::named(&sb, kind, "good").with_sentinel();
    let bad = Site::named(&sb, kind, "bad");
    sb.write("conf/a", "a");
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.good]\ntarget = {}\nsource.a.file = \"conf/a\"\n\
             [deployments.bad]\ntarget = {}\nsource.a.file = \"conf/a\"\n",
            good.target(),
            bad.target()
        ),
    );
    let out = sb.krops(&["populate"]);
    out.code(1).stderr_has("1 of 2 deployments failed").stderr_has("bad: sentinel");
    assert_eq!(good.read("a"), "a");
    assert!(!bad.path("a").exists());
}

/// Source names, file names, symlink targets and contents with quotes, spaces, `$(…)`,
/// backticks and newlines arrive literally, and nothing they spell is executed (a shell would
/// create `pwned` in its working directory: the sandbox locally, a home directory remotely).
fn names_and_contents_are_never_interpreted_by_a_shell(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    let evil = "$(touch pwned) `touch pwned` ' \" ;touch pwned";
    let evil_toml = format!("{evil:?}");
    sb.write(&format!("conf/dir/{evil}"), "contents $(touch pwned)\n");
    sb.write("conf/dir/new\nline", "n");
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.site]\ntarget = {}\n[deployments.site.source]\n\
             {evil_toml} = {{ symlink = {evil_toml} }}\n\"dir name\".file = \"conf/dir\"\n\
             newline.symlink = \"x\\ny\"\n",
            site.target()
        ),
    );
    sb.krops(&["populate"]).success();
    assert_eq!(std::fs::read_link(site.path(evil)).unwrap().to_str(), Some(evil));
    assert_eq!(site.read(&format!("dir name/{evil}")), "contents $(touch pwned)\n");
    assert_eq!(site.read("dir name/new\nline"), "n");
    assert_eq!(std::fs::read_link(site.path("newline")).unwrap().to_str(), Some("x\ny"));
    let mut places = vec![sb.path("")];
    places.extend(site.host().map(|h| h.root_dir().to_owned()));
    for place in places {
        let found = std::process::Command::new("find").arg(&place).args(["-name", "pwned"]).output().unwrap();
        assert!(
            found.stdout.is_empty(),
            "a shell interpreted a name: {}",
            String::from_utf8_lossy(&found.stdout)
        );
    }
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

/// On a terminal, each deployment gets a spinner line that ends as a ✓ or ✗ line; the
/// child's stderr and the summary still appear.
#[test]
fn progress_on_a_terminal() {
    let sb = Sandbox::new();
    sb.target_dir("good");
    sb.mkdir("bad");
    sb.write("conf/a", "a");
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.good]\ntarget = {:?}\nsource.a.file = \"conf/a\"\n\
             [deployments.bad]\ntarget = {:?}\nsource.p.pipe = \"echo the reason >&2; exit 4\"\n",
            sb.path("good").display().to_string(),
            sb.target_dir("bad").display().to_string()
        ),
    );
    // script(1) runs krops on a pseudo-terminal.
    let mut command = std::process::Command::new("script");
    command
        .args(["-qec", &format!("{} populate", crate::support::krops_bin().display()), "/dev/null"])
        .env("NO_COLOR", "1")
        .current_dir(sb.path(""));
    let out = crate::support::Outcome::of(command);
    out.code(1)
        .stdout_has("✓ good: done in")
        .stdout_has("✗ bad: prepare of source \"p\" failed")
        .stdout_has("the reason")
        .stdout_has("bad: prepare of source \"p\" failed: `echo the reason >&2; exit 4`: the reason");
    assert_eq!(sb.read("good/a"), "a");
}
