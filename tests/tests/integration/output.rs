//! SPEC's "Output" and the command line around it: `--json` lines against the README's schema,
//! selection by glob and tag, colours only on request, completions, summaries that name the
//! failing program, `run`'s exit status, and prompts that stay visible on a terminal.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{krops_bin, Kind, Outcome, Sandbox, Site};

/// The README's `--json` event table: each event and the fields it documents (the
/// backquoted names of its fields column outside parentheses).
fn readme_events() -> std::collections::BTreeMap<String, Vec<String>> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let table = &readme[readme.find("| `event` | fields |").expect("the README's event table")..];
    let mut events = std::collections::BTreeMap::new();
    for row in table.lines().skip(2).take_while(|l| l.starts_with('|')) {
        let row = row.trim_start_matches("| ").trim_end_matches(" |");
        let (event, fields) = row.split_once(" | ").unwrap_or_else(|| panic!("a row of two cells: {row}"));
        let mut names = Vec::new();
        let (mut depth, mut quoted, mut name) = (0, false, String::new());
        for c in fields.chars() {
            match c {
                '(' if !quoted => depth += 1,
                ')' if !quoted => depth -= 1,
                '`' if quoted => {
                    if depth == 0 {
                        names.push(std::mem::take(&mut name));
                    }
                    name.clear();
                    quoted = false;
                }
                '`' => quoted = true,
                c if quoted => name.push(c),
                _ => {}
            }
        }
        events.insert(event.trim_matches('`').to_owned(), names);
    }
    events
}

/// Every stdout line of a `--json` run is one object of the README's schema (an event of its
/// table, with exactly the fields it documents: all of them but for `summary`, whose fields
/// are alternatives); returns them.
fn json_lines(out: &Outcome) -> Vec<serde_json::Value> {
    let events = readme_events();
    let lines: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\n{out}")))
        .collect();
    assert!(!lines.is_empty(), "no JSON lines\n{out}");
    for line in &lines {
        assert_eq!(line["v"], 1, "{line}");
        let event = line["event"].as_str().unwrap_or_else(|| panic!("no event: {line}"));
        let documented =
            events.get(event).unwrap_or_else(|| panic!("event {event} is not in the README: {line}"));
        let mut fields: Vec<&String> = line
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| !["v", "event", "time"].contains(&k.as_str()))
            .collect();
        fields.sort();
        let mut wanted: Vec<&String> = documented.iter().collect();
        wanted.sort();
        if event == "summary" {
            assert!(
                fields.iter().all(|f| wanted.contains(f)),
                "{event}: {fields:?} beyond the README's {wanted:?}"
            );
        } else {
            assert_eq!(fields, wanted, "{event}: fields against the README's");
        }
        let time = line["time"].as_str().unwrap_or_else(|| panic!("no time: {line}"));
        assert!(humantime_like(time), "time is not RFC 3339: {time}");
        assert!(line.get("duration_ms").is_none_or(serde_json::Value::is_u64), "{line}");
    }
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "summary", "the last line is the summary\n{out}");
    for (_, entry) in last["deployments"].as_object().expect("deployments") {
        assert!(["ok", "failed", "skipped"].contains(&entry["status"].as_str().unwrap_or("")), "{entry}");
    }
    lines
}

/// `2026-11-25T21:40:00.123Z`.
fn humantime_like(time: &str) -> bool {
    let bytes = time.as_bytes();
    time.len() >= 20 && bytes[4] == b'-' && bytes[10] == b'T' && time.ends_with('Z')
}

fn two_deployments(sb: &Sandbox) {
    sb.target_dir("good");
    sb.target_dir("bad");
    sb.write("conf/a", "a");
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.good]\ntarget = {:?}\ntags = [\"eu\"]\nsource.a.file = \"conf/a\"\n\
             [deployments.bad]\ntarget = {:?}\ntags = [\"us\"]\nsource.p.pipe = \"echo the reason >&2; exit 4\"\n",
            sb.path("good").display().to_string(),
            sb.path("bad").display().to_string()
        ),
    );
}

#[test]
fn json_success_and_failure() {
    let sb = Sandbox::new();
    two_deployments(&sb);
    let out = sb.krops(&["--json", "populate", "good"]);
    out.success();
    let lines = json_lines(&out);
    assert_eq!(lines.last().unwrap()["deployments"]["good"]["status"], "ok");
    assert!(lines
        .iter()
        .any(|l| l["event"] == "source_populated" && l["source"] == "a" && l["stage"] == "populate"));
    assert!(lines.iter().any(|l| l["event"] == "stage_finished" && l["duration_ms"].is_u64()));

    let out = sb.krops(&["--json", "populate"]);
    out.code(1);
    let lines = json_lines(&out);
    let bad = &lines.last().unwrap()["deployments"]["bad"];
    assert_eq!(bad["status"], "failed");
    assert_eq!(bad["error"]["stage"], "prepare");
    assert_eq!(bad["error"]["source"], "p");
    assert_eq!(bad["error"]["program"], "`echo the reason >&2; exit 4`");
    assert_eq!(bad["error"]["message"], "the reason");
    assert!(!out.stderr.contains('{'), "JSON went to stderr\n{out}");
}

#[test]
fn json_when_interrupted() {
    let sb = Sandbox::new();
    sb.target_dir("slow");
    sb.target_dir("later");
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.slow]\ntarget = {:?}\nsource.s.pipe = \"sleep 5\"\n[deployments.later]\ntarget = {:?}\nsource.s.pipe = \"sleep 5\"\n",
            sb.path("slow").display().to_string(),
            sb.path("later").display().to_string()
        ),
    );
    let child = sb
        .krops_command(&["--json", "--jobs", "1", "populate", "slow", "later"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let out = Outcome::from_output(child.wait_with_output().unwrap());
    out.code(143);
    let lines = json_lines(&out);
    let summary = lines.last().unwrap();
    assert_eq!(summary["interrupted"], "SIGTERM");
    // With one job slot, whichever of the two got it first was cut short (failed) and the other
    // never started (skipped); which one is the scheduler's choice.
    let mut statuses: Vec<&str> = ["slow", "later"]
        .iter()
        .map(|name| summary["deployments"][*name]["status"].as_str().unwrap_or_default())
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses, ["failed", "skipped"], "{summary}");
}

#[test]
fn selection_by_glob_tag_and_suggestion() {
    let sb = Sandbox::new();
    two_deployments(&sb);
    sb.krops(&["populate", "go*"]).success();
    assert_eq!(sb.read("good/a"), "a");
    std::fs::remove_file(sb.path("good/a")).unwrap();
    sb.krops(&["populate", "@eu"]).success();
    assert_eq!(sb.read("good/a"), "a");
    sb.krops(&["populate", "god"]).code(2).stderr_has("no deployment matches \"god\"; did you mean \"good\"");
    sb.krops(&["populate", "@asia"]).code(2).stderr_has("no deployment matches \"@asia\"");
    assert_eq!(sb.listing("bad"), [".populate"], "nothing touched by the failed selections");
}

#[test]
fn kinds_decide_what_a_command_does_without_names() {
    let sb = Sandbox::new();
    sb.target_dir("t");
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.checks]\ntarget = {:?}\nkind = \"build\"\nsource.x.pipe = \"echo\"\n\
             [deployments.shell]\ntarget = {:?}\nkind = \"run\"\ncommand = \"exit 7\"\nsource.y.pipe = \"echo\"\n",
            sb.path("t").display().to_string(),
            sb.path("t").display().to_string()
        ),
    );
    // deploy finds nothing of its kind; naming a build deployment for deploy is a usage error.
    sb.krops(&["deploy"]).code(2).stderr_has("no deployment fits this command");
    sb.krops(&["deploy", "checks"]).code(2).stderr_has("use `krops build checks`");
    // run picks the only run deployment and exits with its command's status (128 + a signal
    // that killed it, as a shell says).
    sb.krops(&["run"]).code(7);
    sb.krops(&["run", "--", "sh", "-c", "kill -TERM $$"]).code(143);
    sb.krops(&["eval"]).success().stdout_has("\"kind\": \"build\"");
}

#[test]
fn run_exits_with_the_commands_status() {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Root);
    sb.write("krops.toml", &format!("[deployments.site]\ntarget = {}\n", site.target()));
    sb.krops(&["run", "--", "sh", "-c", "exit 3"]).code(3);
    // One word after `--` is a command line, as ssh takes it.
    sb.krops(&["run", "--", "exit 5"]).code(5);
    sb.krops(&["run", "--", "echo \"$KROPS_TARGET_PATH\" | grep -q /var/src"]).success();
    sb.krops(&["run", "--", "ls", "/nonexistent"])
        .code(2)
        .stderr_has("site: run on 127.0.0.1 failed: `ls /nonexistent` exited with status 2");
    sb.krops(&["run", "--", "true"]).success();
}

#[test]
fn no_colour_escapes_unless_asked() {
    let sb = Sandbox::new();
    two_deployments(&sb);
    for args in [&["-vv", "populate"][..], &["populate"]] {
        let out = sb.krops(args);
        assert!(
            !out.stderr.contains('\x1b') && !out.stdout.contains('\x1b'),
            "escape codes in a pipe:\n{out}"
        );
    }
    let out = sb.krops(&["--color", "always", "-vv", "populate", "good"]);
    assert!(out.stderr.contains('\x1b'), "--color always gave no colour:\n{out}");
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    let sb = Sandbox::new();
    for (shell, needle) in [("bash", "complete -F"), ("zsh", "#compdef krops"), ("fish", "complete -c krops")]
    {
        sb.krops(&["completions", shell]).success().stdout_has(needle).stdout_has("populate");
    }
    sb.krops(&["completions", "tcsh"]).code(2);
}

/// Completion of NAMEs offers the configuration's deployments, groups and @TAGs (read when
/// completing, from the configuration of the directory completed in): bash's script run for
/// real; zsh's and fish's hooked to the same source.
#[test]
fn completions_offer_deployment_names_and_tags() {
    let sb = Sandbox::new();
    two_deployments(&sb);
    let bin = krops_bin();
    let bin_dir = bin.parent().unwrap().display().to_string();
    let complete = |words: &str| -> Vec<String> {
        let script = format!(
            "source <(krops completions bash)\nCOMP_WORDS=({words})\nCOMP_CWORD=$((${{#COMP_WORDS[@]}} - 1))\n\
             _krops_with_names krops \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\nprintf '%s\\n' \"${{COMPREPLY[@]}}\""
        );
        let mut command = Command::new("bash");
        command.current_dir(sb.path("")).env("PATH", format!("{bin_dir}:{}", std::env::var("PATH").unwrap()));
        command.args(["-c", &script]);
        let out = Outcome::of(command);
        out.success();
        let mut words: Vec<String> =
            out.stdout.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect();
        words.sort();
        words
    };
    assert_eq!(complete("krops deploy ''"), ["@eu", "@us", "bad", "good"]);
    assert_eq!(complete("krops -v populate @"), ["@eu", "@us"]);
    assert_eq!(complete("krops diff g"), ["good"]);
    assert!(complete("krops deploy --operation ''").contains(&"switch".to_owned()));
    assert!(complete("krops deploy --j").contains(&"--jobs".to_owned()));
    sb.krops(&["complete-names"]).success().stdout_has("bad\ngood\n@eu\n@us\n");
    sb.krops(&["completions", "zsh"])
        .success()
        .stdout_has("_krops_names() {")
        .stdout_has(":_krops_names' \\");
    sb.krops(&["completions", "fish"])
        .success()
        .stdout_has("-f -a \"(timeout 5 krops complete-names 2>/dev/null)\"");
    let elsewhere = tempfile::tempdir().unwrap();
    let mut command = Command::new(&bin);
    command.current_dir(elsewhere.path()).arg("complete-names");
    let out = Outcome::of(command);
    out.success();
    assert!(out.stdout.is_empty(), "{out}");
}

#[test]
fn summaries_name_rsync_git_and_user_commands() {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Local);
    // rsync: even root may not read another process's memory.
    sb.write(
        "krops.toml",
        &format!("[deployments.site]\ntarget = {}\nsource.m.file = \"/proc/1/mem\"\n", site.target()),
    );
    let out = sb.krops(&["populate"]);
    out.code(1).stderr_has("site: populate of source \"m\" failed: rsync");
    assert_eq!(
        out.stderr.matches("send_files failed to open").count(),
        1,
        "rsync's stderr shown once\n{out}"
    );
    // git: a submodule whose repository is gone.
    let sub = krops_tests::git::Repo::init(sb.path("sub"));
    sub.commit("s", "s");
    let repo = krops_tests::git::Repo::init(sb.path("repo"));
    repo.commit("a", "a");
    krops_tests::git::git(
        &sb.path("repo"),
        &["-c", "protocol.file.allow=always", "submodule", "-q", "add", &sub.url(), "sub"],
    );
    krops_tests::git::git(&sb.path("repo"), &["commit", "-qm", "submodule"]);
    std::fs::remove_dir_all(sb.path("sub")).unwrap();
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.site]\ntarget = {}\nsource.r.git = {{ url = {:?}, ref = \"main\" }}\n",
            site.target(),
            repo.url()
        ),
    );
    sb.krops(&["populate"]).code(1).stderr_has("site: populate of source \"r\" failed: git: fatal:");
}

/// A real terminal (tmux): an unknown host key's question and an encrypted key's passphrase
/// prompt stay visible while the live display runs, are answered, and the deploy completes.
#[test]
fn prompts_stay_visible_on_a_terminal() {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Root);
    let key = site.protected_key(&sb);
    let port = site.host().unwrap().port;
    sb.write("conf/a", "a");
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.site.target]\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"root\"\n\
             extraOptions = [\"-F\", \"/dev/null\", \"-i\", {:?}, \"-o\", \"IdentitiesOnly=yes\", \"-o\", \"UserKnownHostsFile={}\"]\n\
             [deployments.site.source]\na.file = \"conf/a\"\ninfo.pipe = \"echo hello\"\n",
            key.display().to_string(),
            sb.path("known_hosts").display()
        ),
    );
    let session = format!("krops-test-{}", std::process::id());
    let tmux = |args: &[&str]| Command::new("tmux").args(["-L", &session]).args(args).output().unwrap();
    let shell_command = format!(
        "cd {} && env -u SSH_AUTH_SOCK -u DISPLAY {} populate; echo krops-exit-$?; sleep 30",
        sb.path("").display(),
        krops_bin().display()
    );
    let started = tmux(&["new-session", "-d", "-x", "160", "-y", "50", "-s", &session, &shell_command]);
    assert!(started.status.success(), "tmux: {}", String::from_utf8_lossy(&started.stderr));
    let pane = || {
        String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-S", "-100", "-t", &session]).stdout)
            .into_owned()
    };
    let wait_for = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = pane();
            if text.contains(needle) {
                return text;
            }
            assert!(Instant::now() < deadline, "no {needle:?} on the terminal:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for("Are you sure you want to continue connecting");
    // The display must not erase the question while the user reads it.
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        pane().contains("Are you sure you want to continue connecting"),
        "the question was erased:\n{}",
        pane()
    );
    tmux(&["send-keys", "-t", &session, "yes", "Enter"]);
    wait_for("Enter passphrase for key");
    std::thread::sleep(Duration::from_millis(600));
    assert!(pane().contains("Enter passphrase for key"), "the prompt was erased:\n{}", pane());
    tmux(&["send-keys", "-t", &session, "sesame", "Enter"]);
    let done = wait_for("krops-exit-");
    tmux(&["kill-server"]);
    assert!(done.contains("krops-exit-0"), "{done}");
    assert!(
        done.contains("Are you sure you want to continue connecting"),
        "the question vanished afterwards:\n{done}"
    );
    assert!(done.contains("✓ site"), "{done}");
    assert_eq!(site.read("info"), "hello\n");
}

/// What `cargo xtask install` writes to `share/man/man1/krops.1`.
#[test]
fn the_man_page_describes_every_command() {
    let sb = Sandbox::new();
    let out = sb.krops(&["man"]);
    out.success().stdout_has(".TH krops 1");
    for command in ["deploy", "build", "run", "populate", "diff", "status", "eval", "plugins", "completions"]
    {
        out.stdout_has(&format!("\\fBkrops {command}\\fR"));
    }
    for section in [
        ".SH SYNOPSIS",
        ".SH OPTIONS",
        ".SH COMMANDS",
        ".SH CONFIGURATION",
        ".SH EXIT STATUS",
        ".SH ENVIRONMENT",
        ".SH FILES",
    ] {
        out.stdout_has(section);
    }
    // One page: no references to per-command pages that do not exist.
    assert!(!out.stdout.contains("krops\\-deploy(1)") && !out.stdout.contains("krops-deploy(1)"), "{out}");
    // A reader that stops early is no error.
    let mut child = sb.krops_command(&["man"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut first = [0u8; 16];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(child.stdout.take());
    let out = Outcome::from_output(child.wait_with_output().unwrap());
    out.success();
    assert!(out.stderr.is_empty(), "{out}");
}

/// Every command answers in JSON lines of the README's schema with `--json`, usage errors
/// included; a `run`'s output becomes `output` events instead of reaching stdout.
#[test]
fn json_for_every_command_and_error() {
    let sb = Sandbox::new();
    two_deployments(&sb);
    let only_json = json_lines;
    let names = only_json(sb.krops(&["--json", "eval", "--names", "@eu,bad"]).success());
    assert_eq!(names[0]["names"], serde_json::json!(["good", "bad"]));
    let populated = only_json(sb.krops(&["--json", "populate", "good"]).success());
    assert!(populated.iter().any(|l| l["event"] == "source_populated"));
    let diff = only_json(sb.krops(&["--json", "diff", "good"]).success());
    assert!(diff.iter().any(|l| l["event"] == "diff" && l["unchanged"] == true), "{diff:?}");
    let status = only_json(sb.krops(&["--json", "status", "good"]).success());
    assert!(status.iter().any(|l| l["event"] == "status" && l["deployed"] == true), "{status:?}");
    let eval = only_json(sb.krops(&["--json", "eval"]).success());
    assert_eq!(eval[0]["event"], "eval");
    assert!(eval[0]["deployments"]["good"].is_object());
    assert_eq!(eval.last().unwrap()["event"], "summary", "the last line is the summary");
    let plugins = only_json(sb.krops(&["--json", "plugins"]).success());
    assert!(plugins[0]["plugins"].as_array().unwrap().iter().any(|p| p["type"] == "file"));
    assert_eq!(plugins.last().unwrap()["event"], "summary");
    for args in [
        &["--json", "populate", "nope"][..],
        &["--json", "--frobnicate", "populate"],
        &["--json", "deploy", "--operation", "x"],
    ] {
        let out = sb.krops(args);
        out.code(2);
        let lines = only_json(&out);
        assert_eq!(lines.len(), 2, "{out}");
        assert_eq!(lines[0]["event"], "error");
        assert_eq!(lines[0]["exit_status"], 2);
        assert_eq!(lines[1]["event"], "summary", "the last line is the summary");
        assert_eq!(lines[1]["exit_status"], 2);
    }
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.r]\ntarget = {:?}\ncommand = \"echo from the command\"\n",
            sb.path("good").display().to_string()
        ),
    );
    let run = only_json(sb.krops(&["--json", "run"]).success());
    assert!(run.iter().any(|l| l["event"] == "output" && l["line"] == "from the command"), "{run:?}");
}

/// `log` events follow `-q`/`-v`/`-vv` as the text does (the commands krops runs are trace);
/// a failing program's error carries its exit status and the tail of its stderr, never the
/// text-only "its output is above".
#[test]
fn json_logs_follow_verbosity_and_errors_carry_the_program() {
    let sb = Sandbox::new();
    two_deployments(&sb);
    let logs = |args: &[&str]| -> Vec<String> {
        let out = sb.krops(args);
        json_lines(&out)
            .into_iter()
            .filter(|l| l["event"] == "log")
            .map(|l| l["level"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(logs(&["--json", "-vv", "populate", "good"]).iter().any(|l| l == "trace"));
    assert!(!logs(&["--json", "populate", "good"]).iter().any(|l| l == "trace" || l == "debug"));
    assert!(!logs(&["--json", "-v", "populate", "good"]).iter().any(|l| l == "trace"));
    assert!(logs(&["--json", "-q", "populate"]).is_empty());
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.r]\ntarget = {:?}\ncommand = \"echo first >&2; echo second words >&2; exit 3\"\n",
            sb.path("good").display().to_string()
        ),
    );
    let out = sb.krops(&["--json", "run"]);
    out.code(3);
    let lines = json_lines(&out);
    let error = &lines.last().unwrap()["deployments"]["r"]["error"];
    assert_eq!(error["exit_status"], 3, "{error}");
    assert!(error["stderr_tail"].as_str().unwrap().ends_with("second words"), "{error}");
    assert!(!out.stdout.contains("its output is above"), "{out}");
}

/// A child's output that is not UTF-8, or carries escape sequences, is shown (escaped), and
/// never fails the deployment.
#[test]
fn odd_bytes_from_children_are_shown_and_harmless() {
    let sb = Sandbox::new();
    sb.target_dir("t");
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.t]\ntarget = {:?}\ncommand = \"printf 'x \\\\377\\\\n' >&2; printf '\\\\033[31mred\\\\033[0m\\\\n'\"\nsource.p.pipe = \"echo data; printf 'warn \\\\377\\\\n' >&2\"\n",
            sb.path("t").display().to_string()
        ),
    );
    sb.krops(&["populate"]).success();
    assert_eq!(sb.read("t/p"), "data\n");
    let out = sb.krops(&["--json", "run"]);
    out.success();
    assert!(out.stdout.contains("x \u{fffd}"), "{out}");
}

/// Credentials are hidden inside each JSON string, never across the line: a string that ends
/// in something like the start of a URL (`https://x`), with an `@` in a later string or key,
/// once made the redaction swallow the text between them (keys, quotes, whole fields).
#[test]
fn json_lines_stay_json_when_text_looks_like_a_url() {
    let sb = Sandbox::new();
    sb.target_dir("a");
    sb.target_dir("b");
    sb.target_dir("c");
    // The failing command's text ends in `https://x`, and the next deployment's name (a key
    // of the summary) holds an `@`; the command's stderr holds real credentials. A deployment
    // name like a URL's start, and a source name with an `@`, put `event` between them.
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.a]\ntarget = {:?}\nsource.p.pipe = \"echo https://u:S3CRET@h/r >&2;false;exit;https://x\"\n\
             [deployments.\"root@web\"]\ntarget = {:?}\nsource.q.pipe = \"echo ok\"\n\
             [deployments.\"https://c\"]\ntarget = {:?}\nsource.\"q@c\".pipe = \"echo ok\"\n",
            sb.path("a").display().to_string(),
            sb.path("b").display().to_string(),
            sb.path("c").display().to_string()
        ),
    );
    for verbosity in ["-q", "-vv"] {
        let out = sb.krops(&["--json", verbosity, "populate"]);
        out.code(1);
        let lines = json_lines(&out);
        let summary = lines.last().unwrap();
        assert_eq!(summary["deployments"]["root@web"]["status"], "ok", "{out}");
        assert_eq!(summary["deployments"]["https://c"]["status"], "ok", "{out}");
        assert!(lines.iter().any(|l| l["event"] == "source_populated" && l["source"] == "q@c"), "{out}");
        let error = &summary["deployments"]["a"]["error"];
        assert_eq!(error["program"], "`echo https://***@h/r >&2;false;exit;https://x`");
        assert_eq!(error["message"], "https://***@h/r", "{out}");
        assert!(!out.stdout.contains("S3CRET") && !out.stderr.contains("S3CRET"), "{out}");
    }
}

/// Text from a target or a child (here a pipe command's stderr, in its deployment's error)
/// carrying a terminal's escape sequences (retitle the window, clear the screen) reaches the
/// live display and plain lines escaped, never as the sequences themselves.
#[test]
fn escape_sequences_from_children_are_shown_escaped() {
    let sb = Sandbox::new();
    sb.target_dir("t");
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.t]\ntarget = {:?}\nsource.p.pipe = \"printf 'boom \\\\033]0;pwned\\\\007 \\\\033[2J \\\\302\\\\233 end\\\\n' >&2; exit 3\"\n",
            sb.path("t").display().to_string()
        ),
    );
    let shown = "boom \\u{1b}]0;pwned\\u{7} \\u{1b}[2J \\u{9b} end";
    let raw = ["\x1b]", "\x07", "\x1b[2J", "\u{9b}"];
    // The live display, on a terminal that `script` gives krops.
    let command = format!("{} --color never populate", krops_bin().display());
    let out = Outcome::of({
        let mut script = Command::new("script");
        script.args(["-qec", &command, "/dev/null"]).current_dir(sb.path("")).stdin(Stdio::null());
        script
    });
    out.code(1);
    assert!(out.stdout.contains("✗ t: prepare of source"), "not the live display:\n{out}");
    assert!(out.stdout.contains(shown), "{out}");
    assert!(raw.iter().all(|r| !out.stdout.contains(r)), "{out}");
    // Plain lines (no terminal).
    let out = sb.krops(&["populate"]);
    out.code(1).stderr_has(shown);
    assert!(raw.iter().all(|r| !out.stderr.contains(r) && !out.stdout.contains(r)), "{out}");
}
