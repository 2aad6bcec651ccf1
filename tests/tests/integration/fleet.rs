//! Performance promises as behaviour (the figures are `cargo xtask bench`'s): a redeploy that
//! changes nothing transfers nothing, yet a hand edit on the target is repaired; and many
//! hosts are deployed at once with the default settings.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use krops_tests::hosts::TestHost;

use crate::on_every_site;
use crate::support::{Kind, Sandbox, Site};

on_every_site!(a_noop_redeploy_runs_no_rsync_and_a_hand_edit_is_repaired);

fn a_noop_redeploy_runs_no_rsync_and_a_hand_edit_is_repaired(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    sb.write("conf/a.nix", "a");
    sb.write("conf/dir/b.nix", "b");
    sb.write("single.nix", "single");
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.site]\ntarget = {}\n[deployments.site.source]\n\
             conf.file = \"conf\"\nsingle.file = \"single.nix\"\nlink.symlink = \"conf\"\ninfo.pipe = \"echo stable\"\n",
            site.target()
        ),
    );
    let rsyncs =
        |out: &crate::support::Outcome| out.stderr.lines().filter(|l| l.contains("running rsync")).count();
    let first = sb.krops(&["-vv", "populate"]);
    first.success();
    assert_eq!(rsyncs(&first), 2, "{first}");
    let again = sb.krops(&["-vv", "populate"]);
    again.success();
    assert_eq!(rsyncs(&again), 0, "a no-op redeploy transferred something:\n{again}");
    for source in ["conf", "single", "link", "info"] {
        again.stderr_has(&format!(
            "{source} ({}) in 0 ms, unchanged: true",
            match source {
                "link" => "symlink",
                "info" => "pipe",
                _ => "file",
            }
        ));
    }
    // Someone edits a file on the target: the next run puts it right, as rsync would.
    site.write("conf/dir/b.nix", "edited by hand");
    let repaired = sb.krops(&["-vv", "populate"]);
    repaired.success();
    assert_eq!(rsyncs(&repaired), 1, "{repaired}");
    assert_eq!(site.read("conf/dir/b.nix"), "b");
    // And a change here is shipped.
    sb.write("single.nix", "changed");
    sb.krops(&["populate"]).success();
    assert_eq!(site.read("single"), "changed");
}

/// Twenty hosts in one run with the default settings: they are deployed at the same time (the
/// `--json` timings of their deployments overlap), not in waves.
#[test]
fn twenty_hosts_are_deployed_at_once() {
    let sb = Sandbox::new();
    sb.write("conf/a.nix", "a");
    let hosts: Vec<Site> =
        (0..20).map(|i| Site::named(&sb, Kind::Root, &format!("h{i}")).with_sentinel()).collect();
    let mut toml = String::new();
    for (i, site) in hosts.iter().enumerate() {
        toml.push_str(&format!(
            "[deployments.host{i:02}]\ntarget = {}\n[deployments.host{i:02}.source]\na.file = \"conf/a.nix\"\n",
            site.target()
        ));
    }
    sb.write("krops.toml", &toml);
    let out = sb.krops(&["--json", "populate"]);
    out.success();
    let mut spans: BTreeMap<String, (SystemTime, SystemTime)> = BTreeMap::new();
    for line in out.stdout.lines() {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        let Some(deployment) = event["deployment"].as_str() else { continue };
        let time = humantime::parse_rfc3339(event["time"].as_str().unwrap()).unwrap();
        let span = spans.entry(deployment.to_owned()).or_insert((time, time));
        span.0 = span.0.min(time);
        span.1 = span.1.max(time);
    }
    assert_eq!(spans.len(), 20, "{out}");
    let latest_start = spans.values().map(|s| s.0).max().unwrap();
    let earliest_end = spans.values().map(|s| s.1).min().unwrap();
    assert!(
        latest_start < earliest_end,
        "not all 20 deployments were under way at once: the last started {:?} after the first ended",
        latest_start.duration_since(earliest_end).unwrap_or(Duration::ZERO)
    );
    for site in &hosts {
        assert_eq!(site.read("a"), "a");
    }
}

/// What the review of the skipping found: a source directory reached through a symlink, a
/// work tree whose HEAD was moved on the target, and a source named `.git`, are never wrongly
/// taken as unchanged.
#[test]
fn skipping_sees_through_links_moved_heads_and_git_names() {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Local);
    sb.write("real/a.nix", "1");
    std::os::unix::fs::symlink(sb.path("real"), sb.path("conf")).unwrap();
    sb.write("gitdir/config", "x");
    let repo = krops_tests::git::Repo::init(sb.path("repo"));
    let head = repo.commit("a.nix", "a");
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.site]\ntarget = {}\n[deployments.site.source]\nconf.file = \"conf\"\n\".git\".file = \"gitdir\"\n\
             r.git = {{ url = {:?}, ref = \"main\" }}\n",
            site.target(),
            repo.url()
        ),
    );
    sb.krops(&["populate"]).success();
    sb.write("real/a.nix", "changed through the link");
    sb.write("real/new.nix", "new");
    sb.krops(&["populate"]).success();
    assert_eq!(site.read("conf/a.nix"), "changed through the link");
    assert_eq!(site.read("conf/new.nix"), "new");
    site.write(".git/config", "edited on the target");
    krops_tests::git::git(
        &site.path("r"),
        &["-c", "user.email=e@x", "-c", "user.name=e", "commit", "-q", "--allow-empty", "-m", "evil"],
    );
    sb.krops(&["populate"]).success();
    assert_eq!(site.read(".git/config"), "x");
    assert_eq!(krops_tests::git::git(&site.path("r"), &["rev-parse", "HEAD"]), head);
}

/// `krops status`: never deployed, as recorded after a run (with how activation ended), a hand
/// edit named as drift, a failed activation recorded as such; it changes nothing.
#[test]
fn status_reports_the_record_and_drift() {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Root);
    sb.write("conf/a.nix", "a");
    let write = |command: &str| {
        sb.write(
            "krops.toml",
            &format!(
                "[deployments.site]\ntarget = {}\ncommand = {command:?}\n[deployments.site.source]\nconf.file = \"conf\"\ninfo.pipe = \"echo hi\"\n",
                site.target()
            ),
        )
    };
    write("true");
    let status = |sb: &Sandbox| -> serde_json::Value {
        let out = sb.krops(&["--json", "status"]);
        out.success();
        out.stdout
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|l| l["event"] == "status")
            .unwrap_or_else(|| panic!("no status event\n{out}"))
    };
    let never = status(&sb);
    assert_eq!(never["deployed"], false);
    assert_eq!(never["sources"]["conf"]["status"], "not recorded");
    sb.krops(&["run"]).success();
    let listing = site.listing("");
    let after = status(&sb);
    assert_eq!(after["deployed"], true);
    assert_eq!(after["sources"]["conf"]["status"], "as recorded");
    assert_eq!(after["sources"]["conf"]["type"], "file");
    assert_eq!(after["sources"]["info"]["type"], "pipe");
    assert_eq!(after["record"]["activation"]["operation"], "run", "{after}");
    assert_eq!(after["record"]["activation"]["result"], "ok", "{after}");
    let version = sb.krops(&["--version"]).stdout.clone();
    assert!(version.contains(after["record"]["krops"].as_str().unwrap()), "{after} {version}");
    assert!(after["record"]["by"].as_str().unwrap().contains('@'), "{after}");
    assert_eq!(site.listing(""), listing, "status changed the target");
    site.write("conf/a.nix", "edited by hand");
    let drifted = status(&sb);
    assert_eq!(drifted["sources"]["conf"]["status"], "drifted");
    assert_eq!(drifted["sources"]["info"]["status"], "as recorded", "drift is named per source");
    write("exit 3");
    sb.krops(&["run"]).code(3);
    let failed = status(&sb);
    assert_eq!(failed["record"]["activation"]["result"], "failed", "{failed}");
    assert_eq!(
        failed["sources"]["conf"]["status"], "as recorded",
        "the failed run repaired the hand edit first"
    );
    assert_eq!(site.read(".krops/record").matches("activation ").count(), 1, "the last activation only");
}

/// A deployment without sources still leaves a record, and so a status, behind.
#[test]
fn a_deployment_without_sources_is_recorded() {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Local);
    sb.write("krops.toml", &format!("[deployments.site]\ntarget = {}\ncommand = \"true\"\n", site.target()));
    sb.krops(&["run"]).success();
    sb.krops(&["status"]).success().stdout_has("last activation: run ok at ");
}

/// A hundred hosts in one run with the default settings (issue 23): every deployment succeeds,
/// each host gets its own files, and a second run, which changes nothing, succeeds too without
/// transferring anything. krops runs with its defaults (`--jobs` 32, ssh's own key exchange);
/// the hosts are started in parallel and offer only the light key exchange
/// ([`TestHost::start_light`]), which halves the test's time on two cores (~20 s, from ~31 s).
#[test]
fn a_hundred_hosts_are_deployed_in_one_run() {
    const HOSTS: usize = 100;
    let sb = Sandbox::new();
    sb.write("conf/a.nix", "a");
    sb.write("conf/dir/b.nix", "b");
    let hosts: Vec<Site> = std::thread::scope(|scope| {
        let starters: Vec<_> = (0..10)
            .map(|t| {
                scope.spawn(move || {
                    (t * HOSTS / 10..(t + 1) * HOSTS / 10)
                        .map(|_| {
                            Site::on_host(Kind::Root, TestHost::start_light("krops-test-host"))
                                .with_sentinel()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        starters.into_iter().flat_map(|s| s.join().expect("a host did not start")).collect()
    });
    assert_eq!(hosts.len(), HOSTS);
    let mut toml = String::new();
    for (i, site) in hosts.iter().enumerate() {
        toml.push_str(&format!(
            "[deployments.host{i:03}]\ntarget = {}\n[deployments.host{i:03}.source]\n\
             conf.file = \"conf\"\ninfo.pipe = \"echo host{i:03}\"\n",
            site.target()
        ));
    }
    sb.write("krops.toml", &toml);
    let first = sb.krops(&["populate"]);
    first.success();
    for (i, site) in hosts.iter().enumerate() {
        assert_eq!(site.read("conf/a.nix"), "a", "host{i:03}\n{first}");
        assert_eq!(site.read("conf/dir/b.nix"), "b", "host{i:03}\n{first}");
        assert_eq!(site.read("info"), format!("host{i:03}\n"), "host{i:03}\n{first}");
    }
    let again = sb.krops(&["-vv", "populate"]);
    again.success();
    assert_eq!(
        again.stderr.lines().filter(|l| l.contains("running rsync")).count(),
        0,
        "a no-op redeploy transferred something:\n{again}"
    );
    assert_eq!(again.stderr.matches("in 0 ms, unchanged: true").count(), 2 * HOSTS, "{again}");
}
