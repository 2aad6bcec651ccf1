//! SPEC's "Safety", each case reproduced first as a user or a second admin would bring it:
//! leftovers and symlinks on the target (a victim directory outside the target must survive),
//! reserved names, two runs at once, signals and kills at random points, credentials in URLs,
//! and values that could be read as options.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use krops_tests::secrets::PassageStore;

use crate::on_every_site;
use crate::support::{processes_mentioning, wait_until, Kind, Outcome, Sandbox, Site};

on_every_site!(
    file_source_replaces_a_symlink_instead_of_writing_through_it,
    pipe_source_replaces_a_symlink_to_a_directory,
    secrets_replace_a_symlink_to_a_directory,
    file_source_replaces_a_directory_by_a_file,
    symlink_source_refuses_an_existing_directory,
    a_second_run_reports_the_lock_and_wait_lock_waits,
    sigterm_sighup_and_sigint_end_every_child_and_activate_nothing,
);

fn config(sb: &Sandbox, site: &Site, sources: &str) {
    sb.write(
        "krops.toml",
        &format!("[deployments.site]\ntarget = {}\n[deployments.site.source]\n{sources}\n", site.target()),
    );
}

/// A directory outside every target, with one file that must survive every scenario.
fn victim(sb: &Sandbox) -> std::path::PathBuf {
    let dir = sb.mkdir("victim");
    std::fs::write(dir.join("keep"), "precious").unwrap();
    dir
}

fn assert_victim_intact(victim: &Path) {
    let names: Vec<String> = std::fs::read_dir(victim)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["keep"], "something was written into or deleted from {}", victim.display());
    assert_eq!(std::fs::read_to_string(victim.join("keep")).unwrap(), "precious");
}

fn file_source_replaces_a_symlink_instead_of_writing_through_it(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    let victim = victim(&sb);
    // What a switch from `x.symlink = …` to `x.file = …` leaves behind.
    std::os::unix::fs::symlink(&victim, site.path("x")).unwrap();
    sb.write("conf/a.nix", "a");
    config(&sb, &site, "x.file = \"conf\"");
    sb.krops(&["populate"]).success();
    assert_victim_intact(&victim);
    assert!(!site.path("x").is_symlink(), "the link is gone");
    assert_eq!(site.read("x/a.nix"), "a");
    // And a second run (deleteExcluded) changes nothing outside either.
    sb.krops(&["populate"]).success();
    assert_victim_intact(&victim);
}

fn pipe_source_replaces_a_symlink_to_a_directory(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    let victim = victim(&sb);
    std::os::unix::fs::symlink(&victim, site.path("info")).unwrap();
    config(&sb, &site, "info.pipe = \"echo hello\"");
    sb.krops(&["populate"]).success();
    assert_victim_intact(&victim);
    assert!(!site.path("info").is_symlink());
    assert_eq!(site.read("info"), "hello\n");
}

fn secrets_replace_a_symlink_to_a_directory(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    let victim = victim(&sb);
    std::os::unix::fs::symlink(&victim, site.path("secrets")).unwrap();
    let store = PassageStore::create(&sb.mkdir("passage"), false);
    store.insert("token", b"s3cret\n");
    crate::secrets::passage_config(&sb, &site, &store);
    sb.krops(&["populate"]).success();
    assert_victim_intact(&victim);
    assert!(!site.path("secrets").is_symlink());
    assert_eq!(site.read("secrets/token"), "s3cret\n");
}

fn file_source_replaces_a_directory_by_a_file(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    site.write("conf.nix/leftover", "from an earlier directory source");
    sb.write("conf.nix", "{ }");
    config(&sb, &site, "\"conf.nix\".file = \"conf.nix\"");
    sb.krops(&["populate"]).success();
    assert_eq!(site.read("conf.nix"), "{ }", "a file now, not a file inside the old directory");
}

fn symlink_source_refuses_an_existing_directory(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    site.write("current/old", "kept");
    config(&sb, &site, "current.symlink = \"nixos-config\"");
    sb.krops(&["populate"])
        .code(1)
        .stderr_has("populate of source \"current\"")
        .stderr_has(&format!("{}/current is a directory", site.target_path()));
    assert_eq!(site.read("current/old"), "kept");
}

/// Two runs against one target at once: the second reports the lock and touches nothing; with
/// `--wait-lock` it waits and then succeeds. Ten trials, each with its own content; the lock is
/// held through activation (here a `run` command that takes a while).
fn a_second_run_reports_the_lock_and_wait_lock_waits(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    for trial in 0..10 {
        let wait = trial % 5 == 4;
        for run in ["first", "second"] {
            sb.write(
                &format!("{run}.toml"),
                &format!(
                    "[deployments.site]\ntarget = {}\ncommand = \"sleep 0.6\"\n[deployments.site.source]\n\
                     a.pipe = \"echo {run} {trial}\"\nslow.pipe = \"echo {run} {trial}\"\nb.pipe = \"echo {run} {trial}\"\n",
                    site.target()
                ),
            );
        }
        // The first waits for what the previous trial may still hold (a lock holder lets go a
        // moment after its run has ended): what is tested is the second run's answer.
        let first = sb
            .krops_command(&["-f", "first.toml", "--wait-lock", "10", "run"])
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The first holds the lock once its sentinel stage is done; give it a head start.
        std::thread::sleep(Duration::from_millis(300));
        let mut args = vec!["-f", "second.toml", "run"];
        if wait {
            args.extend(["--wait-lock", "30"]);
        }
        let mut second = sb.krops_command(&args);
        second.stdin(Stdio::null());
        let second = Outcome::of(second);
        let first = first.wait_with_output().unwrap();
        assert!(
            first.status.success(),
            "trial {trial}: the first run failed: {}",
            String::from_utf8_lossy(&first.stderr)
        );
        let winner = if wait {
            second.success();
            "second"
        } else {
            second.code(1).stderr_has(&format!(
                "{}{} is locked by another krops run (",
                site.host_prefix(),
                site.target_path()
            ));
            "first"
        };
        for name in ["a", "slow", "b"] {
            assert_eq!(site.read(name), format!("{winner} {trial}\n"), "trial {trial}: {name} mixes runs");
        }
    }
}

fn sigterm_sighup_and_sigint_end_every_child_and_activate_nothing(kind: Kind) {
    for (signal, status) in [("TERM", 143), ("HUP", 129), ("INT", 130)] {
        let sb = Sandbox::new();
        let site = Site::ready(&sb, kind);
        let activated = sb.path("activated");
        sb.write(
            "krops.toml",
            &format!(
                "[deployments.site]\ntarget = {}\ncommand = \"touch {}\"\n[deployments.site.source]\n\
                 slow.pipe = \"exec sleep 7.{}\"\n",
                site.target(),
                activated.display(),
                std::process::id()
            ),
        );
        let sleeper = format!("sleep 7.{}", std::process::id());
        let mut krops =
            sb.krops_with_tmpdir(&["run"]).stdin(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        wait_until("the slow pipe command runs", || !processes_mentioning(&sleeper).is_empty());
        let sent =
            Command::new("kill").args([&format!("-{signal}"), &krops.id().to_string()]).status().unwrap();
        assert!(sent.success());
        let started = Instant::now();
        let exit = krops.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(krops.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert_eq!(exit.code(), Some(status), "SIG{signal}: {stderr}");
        assert!(started.elapsed() < Duration::from_secs(5), "SIG{signal} took {:?}", started.elapsed());
        assert!(
            stderr.trim_end().ends_with("ssh connections closed"),
            "nothing after the final message:\n{stderr}"
        );
        assert!(
            processes_mentioning(&sleeper).is_empty(),
            "SIG{signal}: {:?}",
            processes_mentioning(&sleeper)
        );
        let tmp = sb.path("tmp").display().to_string();
        wait_until("every ssh process of the run is gone", || processes_mentioning(&tmp).is_empty());
        let leftovers: Vec<_> =
            std::fs::read_dir(sb.path("tmp")).unwrap().flatten().map(|e| e.path()).collect();
        assert!(leftovers.is_empty(), "control directory left behind: {leftovers:?}");
        assert!(!activated.exists(), "SIG{signal}: the command ran after the signal");
        // The lock went with the run: the next one gets it at once.
        sb.write(
            "krops.toml",
            &format!(
                "[deployments.site]\ntarget = {}\n[deployments.site.source]\nslow.pipe = \"echo done\"\n",
                site.target()
            ),
        );
        sb.krops(&["populate"]).success();
        assert_eq!(site.read("slow"), "done\n");
    }
}

/// An interrupted run may leave the temporary files of the record and the lock holder behind;
/// the next run that holds the lock removes them, and nothing else of that shape it does not own.
#[test]
fn half_written_record_files_of_an_interrupted_run_go() {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Local);
    sb.write("conf/a.nix", "a");
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.site]\ntarget = {}\n[deployments.site.source]\nconf.file = \"conf\"\n",
            site.target()
        ),
    );
    site.write(".krops/record.Ab3dE9", "source half");
    site.write(".krops/holder.x1Y2z3", "someone since");
    site.write(".krops/own", "");
    std::fs::set_permissions(site.path(".krops"), std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .unwrap();
    site.write("conf.krops-record.keep", "not krops's");
    sb.krops(&["populate"]).success();
    assert!(!site.path(".krops/record.Ab3dE9").exists() && !site.path(".krops/holder.x1Y2z3").exists());
    assert!(site.path(".krops/record").exists());
    assert_eq!(site.read("conf.krops-record.keep"), "not krops's");
}

#[test]
fn reserved_names_are_configuration_errors_and_touch_nothing() {
    for name in
        [".populate", "x.krops-old", "x.krops-staging", ".krops-lock", ".krops", "nixos-config.krops-new"]
    {
        let sb = Sandbox::new();
        let site = Site::ready(&sb, Kind::Local);
        config(&sb, &site, &format!("{name:?}.pipe = \"echo hi\""));
        sb.krops(&["populate"]).code(2).stderr_has("krops.toml:").stderr_has("is reserved");
        assert_eq!(site.listing(""), [".populate"], "{name}");
    }
}

#[test]
fn credentials_in_urls_are_never_printed() {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Local);
    config(&sb, &site, "repo.git = { url = \"http://USR:S3CRET-TOKEN@127.0.0.1:9/repo\", ref = \"main\" }");
    for verbosity in ["-q", "-v", "-vvv"] {
        let out = sb.krops(&[verbosity, "populate"]);
        out.code(1).stderr_has("http://***@127.0.0.1:9/repo");
        assert!(!out.stderr.contains("S3CRET") && !out.stdout.contains("S3CRET"), "{out}");
    }
    let out = sb.krops(&["eval"]);
    out.success().stdout_has("http://***@127.0.0.1:9/repo");
    assert!(!out.stdout.contains("S3CRET"), "{out}");
}

/// A password with `#`, `?` or a space (which URL parsers take for a fragment, a query or the
/// URL's end) is hidden too: in configuration errors that quote the URL, in `eval`, in a run's
/// errors, in JSON.
#[test]
fn credentials_with_odd_characters_are_never_printed() {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Local);
    let git = |url: &str| format!("repo.git = {{ url = {url:?}, ref = \"main\" }}");
    let health = |url: &str| format!("[[deployments.site.healthChecks]]\nurl = {url:?}\nstatus = 1");
    for (sources, secret) in [
        // Refused by the configuration's checks (exit 2), their messages quoting the URL.
        (git("https://USR:S3#CRET@127.0.0.1:9/repo"), "S3#CRET"),
        (git("https://USR:S3?CRET@127.0.0.1:9/repo"), "S3?CRET"),
        (git("https://U SR:S3 CRET@127.0.0.1:9/repo"), "S3 CRET"),
        (health("http://USR:S3#CRET@127.0.0.1:9/health"), "S3#CRET"),
        (health("http://U SR:S3?CRET@127.0.0.1:9/health"), "S3?CRET"),
        // Accepted: shown by eval, and by the run that fails to reach it.
        (git("ssh://USR:S3#CRET@127.0.0.1:9/repo"), "S3#CRET"),
    ] {
        config(&sb, &site, &sources);
        for args in [
            &["populate"][..],
            &["-vvv", "deploy"],
            &["--json", "-vvv", "populate"],
            &["eval"],
            &["--json", "eval"],
        ] {
            let out = sb.krops(args);
            assert!(out.code != Some(0) || args.contains(&"eval"), "{out}");
            assert!(!out.stdout.contains(secret) && !out.stderr.contains(secret), "{secret} shown\n{out}");
            assert!(!out.stdout.contains("SR:") && !out.stderr.contains("SR:"), "the user shown\n{out}");
            assert!(
                out.stdout.contains("://***@127.0.0.1:9/") || out.stderr.contains("://***@127.0.0.1:9/"),
                "{out}"
            );
        }
    }
}

#[test]
fn the_ssh_control_directory_is_private() {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Root);
    config(&sb, &site, "slow.pipe = \"sleep 1; echo x\"");
    let mut krops = sb.krops_with_tmpdir(&["populate"]).stderr(Stdio::null()).spawn().unwrap();
    let control_dir = || std::fs::read_dir(sb.path("tmp")).unwrap().flatten().map(|e| e.path()).next();
    wait_until("the control directory exists", || control_dir().is_some());
    let mode = crate::support::mode(&control_dir().unwrap());
    assert!(krops.wait().unwrap().success());
    assert_eq!(mode & 0o777, 0o700);
}

/// A lock is never stale: killing krops (SIGKILL, no cleanup of its own) or its ssh master (a
/// dropped connection) releases it, as soon as the run's work on the target has ended.
#[test]
fn the_lock_goes_with_a_killed_krops_or_a_dropped_connection() {
    for victim in ["krops", "master"] {
        let sb = Sandbox::new();
        let site = Site::ready(&sb, Kind::Root);
        let sleeper = format!("sleep 1.{}", std::process::id());
        sb.write(
            "krops.toml",
            &format!(
                "[deployments.site]\ntarget = {}\ncommand = \"{sleeper}\"\n[deployments.site.source]\ninfo.pipe = \"echo before\"\n",
                site.target()
            ),
        );
        let mut krops =
            sb.krops_with_tmpdir(&["run"]).stdin(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        // The test host shares this machine's process table: the remote command is visible.
        wait_until("the remote command runs", || !processes_mentioning(&sleeper).is_empty());
        let pid = match victim {
            "krops" => krops.id().to_string(),
            _ => {
                let tmp = sb.path("tmp").display().to_string();
                let master = processes_mentioning(&tmp)
                    .into_iter()
                    .find(|p| p.contains(" -M "))
                    .expect("an ssh master");
                master.split(':').next().unwrap().to_owned()
            }
        };
        Command::new("kill").args(["-KILL", &pid]).status().unwrap();
        let _ = krops.wait();
        config(&sb, &site, "info.pipe = \"echo after\"");
        let started = Instant::now();
        Outcome::of(sb.krops_with_tmpdir(&["--wait-lock", "20", "populate"])).success();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{victim}: lock held for {:?}",
            started.elapsed()
        );
        assert_eq!(site.read("info"), "after\n");
        let tmp = sb.path("tmp").display().to_string();
        wait_until("krops's own processes are gone", || {
            processes_mentioning(&tmp).is_empty() && processes_mentioning(&sleeper).is_empty()
        });
    }
}

/// Ten runs against a root ssh target, each interrupted at a random point by SIGINT, SIGTERM,
/// SIGKILL of krops or SIGKILL of its ssh master. Afterwards no process of the run remains,
/// the secrets directory is absent or whole, an activation ran only on a complete population
/// and only if krops had begun it before the interruption (a command already running on the
/// target cannot be called back), and an uninterrupted rerun converges.
#[test]
fn interrupted_at_random_points_nothing_half_done_remains() {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Root);
    let store = PassageStore::create(&sb.mkdir("passage"), false);
    for i in 0..100 {
        store.insert(&format!("dir{}/secret-{i:03}", i % 4), format!("value {i}\n").as_bytes());
    }
    for i in 0..30 {
        sb.write(&format!("conf/file-{i}.nix"), &format!("{{ n = {i}; }}"));
    }
    let sleeper = format!("sleep 0.3{}", std::process::id());
    // The activation itself checks that it runs on a whole population.
    let activation = "if [ \"$(find /var/src/secrets /var/src/conf -type f | wc -l)\" = 130 ] && \
                      [ \"$(cat /var/src/slow)\" = slow ]; then touch /var/src/.activated; \
                      else touch /var/src/.activated-on-a-partial-population; fi";
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.site]\ntarget = {}\ncommand = {activation:?}\n\
             [deployments.site.source]\nconf.file = \"conf\"\nlink.symlink = \"conf\"\n\
             slow.pipe = \"{sleeper}; echo slow\"\n\
             [deployments.site.source.secrets.passage]\ndir = {:?}\nidentities_file = {:?}\n",
            site.target(),
            store.store.display().to_string(),
            store.identities.display().to_string()
        ),
    );
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let tmp = sb.mkdir("tmp").display().to_string();
    let modes = ["INT", "TERM", "KILL", "master"];
    for trial in 0..10u32 {
        // A small linear congruential step per trial: random enough, and printed for a rerun.
        let delay_ms = u64::from(seed.wrapping_mul(2_654_435_761).wrapping_add(trial * 40_503) % 1200);
        let mode = modes[trial as usize % modes.len()];
        let context = format!("trial {trial} (seed {seed}): {mode} after {delay_ms} ms");
        let krops = sb
            .krops_with_tmpdir(&["--json", "run"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let pid = match mode {
            "master" => processes_mentioning(&tmp)
                .into_iter()
                .find(|p| p.contains(" -M "))
                .map(|p| p.split(':').next().unwrap().to_owned()),
            _ => Some(krops.id().to_string()),
        };
        if let Some(pid) = pid {
            let signal = if mode == "master" { "KILL" } else { mode };
            let _ = Command::new("kill").args([&format!("-{signal}"), &pid]).status();
        }
        let finished = krops.wait_with_output().unwrap();
        wait_until(&format!("{context}: no process of the run remains"), || {
            processes_mentioning(&tmp).is_empty() && processes_mentioning(&sleeper).is_empty()
        });
        let secrets = site.path("secrets");
        if secrets.exists() {
            let count = walk_files(&secrets);
            assert_eq!(count, 100, "{context}: a partially installed secrets directory");
        }
        assert!(!site.path(".activated-on-a-partial-population").exists(), "{context}");
        let activation_begun = String::from_utf8_lossy(&finished.stdout)
            .lines()
            .any(|line| line.contains("\"stage_started\"") && line.contains("\"activate\""));
        if !finished.status.success() && !activation_begun {
            assert!(!site.path(".activated").exists(), "{context}: activated after an interruption");
        }
        let _ = std::fs::remove_file(site.path(".activated"));
        Outcome::of(sb.krops_with_tmpdir(&["--wait-lock", "20", "run"])).success();
        assert!(site.path(".activated").exists(), "{context}: the rerun activates");
        assert_eq!(walk_files(&secrets), 100, "{context}");
        assert_eq!(walk_files(&site.path("conf")), 30, "{context}");
        assert_eq!(site.read("slow"), "slow\n", "{context}");
        std::fs::remove_file(site.path(".activated")).unwrap();
    }
}

fn walk_files(dir: &Path) -> usize {
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            count += walk_files(&entry.path());
        } else if kind.is_file() {
            count += 1;
        }
    }
    count
}

/// Injection attempts, each aiming to create `marker` if any program or shell ever reads it as
/// code or as an option.
fn payloads(marker: &Path) -> Vec<String> {
    let m = marker.display();
    vec![
        format!("-oProxyCommand=touch {m}"),
        format!("$(touch {m})"),
        format!("`touch {m}`"),
        format!(";touch {m}"),
        format!("|touch {m}"),
        format!("--upload-pack=touch {m}"),
        format!("-e touch {m}"),
        format!("'\"; touch {m}; #"),
        format!("x\ntouch {m}"),
        format!("&& touch {m}"),
        "--version".to_owned(),
        "-".to_owned(),
    ]
}

/// A TOML (basic) string: JSON's escaping is valid TOML.
fn toml_str(value: &str) -> String {
    serde_json::to_string(value).unwrap()
}

/// Each field a user writes, with `{}` where the hostile value goes, and whether krops must
/// reject every such value as a configuration error (exit 2).
const FIELDS: [(&str, &str, bool); 11] = [
    ("host", "target = {root_at}", true),
    ("user", "target = {at_host}", true),
    ("port", "target = {host_port}", true),
    ("path", "target = {{ path = {} }}", true),
    ("name", "target = {site}\nsource.{}.symlink = \"x\"", false),
    ("url", "target = {site}\nsource.r.git = {{ url = {}, ref = \"main\" }}", false),
    ("ref", "target = {site}\nsource.r.git = {{ url = {repo}, ref = {} }}", false),
    ("derivation", "target = {site}\nsource.d.derivation = {}", false),
    ("filter", "target = {site}\nsource.c.file = {{ path = \"conf\", filters = [{{ type = \"exclude\", pattern = {} }}] }}", false),
    ("symlink target", "target = {site}\nsource.l.symlink = {}", false),
    ("pass name", "target = {site}\nsource.p.pass = {{ dir = \"store\", name = {} }}", false),
];

/// More than a hundred hostile values in every field a configuration has, against a local
/// target: no marker is ever created, nothing outside the target changes, and the values that
/// must be rejected exit 2 without touching the target.
#[test]
fn hostile_values_never_execute_and_never_touch_outside() {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Local);
    let victim = victim(&sb);
    let marker = sb.path("pwned");
    sb.write("conf/a.nix", "a");
    std::fs::create_dir_all(sb.path("store/web")).unwrap();
    let repo = krops_tests::git::Repo::init(sb.path("repo"));
    repo.commit("a.nix", "a");
    let site_toml = toml_str(&site.target_path());
    let mut tried = 0;
    for (field, template, rejected) in FIELDS {
        for payload in payloads(&marker) {
            let value = toml_str(&payload);
            let deployment = template
                .replace("{root_at}", &toml_str(&format!("root@{payload}:22/var/src")))
                .replace("{at_host}", &toml_str(&format!("{payload}@web1/var/src")))
                .replace("{host_port}", &toml_str(&format!("web1:{payload}/var/src")))
                .replace("{site}", &site_toml)
                .replace("{repo}", &toml_str(&repo.url()))
                .replace("{{", "{")
                .replace("}}", "}")
                .replace("{}", &value);
            sb.write("krops.toml", &format!("[deployments.hostile]\n{deployment}\n"));
            let before = site.listing("");
            let out = sb.krops(&["populate"]);
            tried += 1;
            let context = format!("{field} = {payload:?}\n{out}");
            assert!(!marker.exists(), "executed: {context}");
            assert_victim_intact(&victim);
            if rejected {
                assert_eq!(out.code, Some(2), "not rejected: {context}");
            }
            if out.code == Some(2) {
                assert_eq!(site.listing(""), before, "a configuration error touched the target: {context}");
                assert!(out.stderr.contains("krops.toml"), "the error names no file: {context}");
            }
            if field == "symlink target" && out.code == Some(0) {
                assert_eq!(
                    std::fs::read_link(site.path("l")).unwrap().to_str(),
                    Some(payload.as_str()),
                    "{context}"
                );
            }
        }
    }
    // Secret names in a passage store: file names are data, never arguments.
    let store = PassageStore::create(&sb.mkdir("passage"), false);
    for payload in payloads(&marker).into_iter().filter(|p| !p.contains('/') && !p.contains('\n')) {
        store.insert(&payload, b"value\n");
        tried += 1;
    }
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.hostile]\ntarget = {site_toml}\n[deployments.hostile.source.s.passage]\ndir = {}\nidentities_file = {}\n",
            toml_str(&store.store.display().to_string()),
            toml_str(&store.identities.display().to_string())
        ),
    );
    sb.krops(&["populate"]).success();
    assert!(!marker.exists());
    assert_victim_intact(&victim);
    assert!(tried >= 100, "only {tried} hostile values");
}

/// A work tree whose `.git` leads elsewhere (a symlink, or a `gitdir:` file) is not krops's:
/// it is replaced, and the repository it points to is left alone.
#[test]
fn a_git_source_never_follows_a_planted_git_dir() {
    for planted in ["symlink", "gitfile"] {
        let sb = Sandbox::new();
        let site = Site::ready(&sb, Kind::Local);
        let repo = krops_tests::git::Repo::init(sb.path("repo"));
        repo.commit("a.nix", "wanted");
        let outside = krops_tests::git::Repo::init(sb.path("outside"));
        let outside_head = outside.commit("b.nix", "someone else's work");
        std::fs::create_dir_all(site.path("r")).unwrap();
        let outside_git = sb.path("outside/.git");
        match planted {
            "symlink" => std::os::unix::fs::symlink(&outside_git, site.path("r/.git")).unwrap(),
            _ => std::fs::write(site.path("r/.git"), format!("gitdir: {}\n", outside_git.display())).unwrap(),
        }
        let config_before = std::fs::read_to_string(outside_git.join("config")).unwrap();
        sb.write(
            "krops.toml",
            &format!(
                "[deployments.site]\ntarget = {}\nsource.r.git = {{ url = {:?}, ref = \"main\" }}\n",
                site.target(),
                repo.url()
            ),
        );
        sb.krops(&["populate"]).success();
        assert_eq!(outside.head(), outside_head, "{planted}: the outside repository was reset");
        assert_eq!(std::fs::read_to_string(outside_git.join("config")).unwrap(), config_before, "{planted}");
        assert!(site.path("r/.git").is_dir() && !site.path("r/.git").is_symlink(), "{planted}");
        assert_eq!(site.read("r/a.nix"), "wanted");
    }
}

/// The lock file is only ever opened, never written: a hard link planted there keeps the
/// content of the file it shares.
#[test]
fn a_hard_link_at_the_lock_file_is_not_written_through() {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Local);
    let victim = victim(&sb);
    std::fs::hard_link(victim.join("keep"), site.path(".krops-lock")).unwrap();
    config(&sb, &site, "info.pipe = \"echo hi\"");
    sb.krops(&["populate"]).success();
    sb.krops(&["populate"]).success();
    assert_victim_intact(&victim);
    assert!(site.read(".krops/holder").contains(" since "), "who held the lock is kept in krops's directory");
}

/// A `.rsync-filter` among the sources must not pull the backup into the backup.
#[test]
fn a_source_named_rsync_filter_does_not_nest_backups() {
    let sb = Sandbox::new();
    let site = Site::new(&sb, Kind::Local);
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.site]\ntarget = {}\nforce = true\nbackup = true\n[deployments.site.source]\n\
             \".rsync-filter\".pipe = \"printf '+ /.populate\\\\n+ /.krops\\\\n'\"\n",
            site.target()
        ),
    );
    for _ in 0..3 {
        sb.krops(&["populate"]).success();
    }
    assert!(!site.path(".populate/backup/.populate").exists(), "{:?}", site.listing(".populate"));
    assert!(!site.path(".populate/backup/.krops").exists());
}

/// Work a run left on the target (krops was killed during a remote command) keeps the lock
/// until it ends: the next run waits for it instead of running alongside.
#[test]
fn the_lock_is_held_while_a_killed_runs_remote_work_goes_on() {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Root);
    let sleeper = format!("sleep 2.{}", std::process::id());
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.site]\ntarget = {}\ncommand = \"{sleeper}; touch /var/src/.after\"\n\
             [deployments.site.source]\ninfo.pipe = \"echo hi\"\n",
            site.target()
        ),
    );
    let mut krops =
        sb.krops_with_tmpdir(&["run"]).stdin(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    // The test host shares this machine's process table: the remote `sleep` itself is visible
    // (not only the local ssh client whose command line mentions it).
    let remote_sleep = || {
        processes_mentioning(&sleeper)
            .iter()
            .any(|p| p.split_once(": ").is_some_and(|(_, c)| c.starts_with("sleep ")))
    };
    wait_until("the remote command runs", remote_sleep);
    Command::new("kill").args(["-KILL", &krops.id().to_string()]).status().unwrap();
    let _ = krops.wait();
    assert!(!site.path(".after").exists(), "the remote command had not finished yet");
    Outcome::of(sb.krops_with_tmpdir(&["--wait-lock", "30", "populate"])).success();
    assert!(site.path(".after").exists(), "the second run started before the first run's remote work ended");
}

/// A symlink pointing elsewhere at a derivation's name makes way for the out-link.
#[test]
fn a_derivation_replaces_a_foreign_symlink() {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Root);
    let victim = victim(&sb);
    std::os::unix::fs::symlink(&victim, site.path("d")).unwrap();
    config(
        &sb,
        &site,
        "d.derivation = 'derivation { name = \"d\"; system = builtins.currentSystem; builder = \"/bin/sh\"; args = [ \"-c\" \"echo built > $out\" ]; }'",
    );
    sb.krops(&["populate"]).success();
    assert_victim_intact(&victim);
    let link = std::fs::read_link(site.path("d")).unwrap();
    assert!(link.starts_with("/nix/store/"), "{}", link.display());
}

/// SIGINT while a local rsync is copying a large file: rsync (in its own process group) ends
/// with krops, and nothing is written into the target after krops has exited.
#[test]
fn sigint_ends_a_local_rsync_at_once() {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Local);
    let big = sb.mkdir("big");
    let chunk = vec![0x5a_u8; 1 << 20];
    let mut file = std::fs::File::create(big.join("blob")).unwrap();
    for _ in 0..400 {
        std::io::Write::write_all(&mut file, &chunk).unwrap();
    }
    drop(file);
    config(&sb, &site, "big.file = \"big\"");
    let mut krops = sb.krops_command(&["populate"]).stderr(Stdio::null()).spawn().unwrap();
    let marker = big.display().to_string();
    let rsyncs =
        || processes_mentioning(&marker).into_iter().filter(|p| p.contains("rsync")).collect::<Vec<_>>();
    wait_until("rsync runs", || !rsyncs().is_empty());
    Command::new("kill").args(["-INT", &krops.id().to_string()]).status().unwrap();
    assert_eq!(krops.wait().unwrap().code(), Some(130));
    wait_until("no rsync of this run remains", || rsyncs().is_empty());
    let size = |dir: &Path| -> u64 {
        std::fs::read_dir(dir)
            .map_or(0, |entries| entries.flatten().map(|e| e.metadata().map_or(0, |m| m.len())).sum())
    };
    let before = size(&site.path("big"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(size(&site.path("big")), before, "something kept writing into the target after krops exited");
}
