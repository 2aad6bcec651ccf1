//! Health checks, rollback and the confirm watchdog, against real sshd hosts whose test
//! nixos-rebuild keeps system generations in the host's private profile and records every
//! call (tests/fixtures/nix). A configuration can make switching fail (`failsSwitch`) or stop
//! the host's sshd (`stopsSshd`).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{nixos_deployment as config, state, Kind, Sandbox, Site};

crate::on_remote_sites!(
    a_failing_check_rolls_back_to_the_previous_generation,
    a_passing_check_leaves_the_new_system,
    a_failed_switch_rolls_back,
    a_failed_build_has_nothing_to_roll_back,
    an_unreachable_new_system_rolls_itself_back,
    a_confirmed_system_stays_and_its_watchdog_is_gone,
    a_failed_test_activation_returns_to_the_current_generation,
    a_killed_run_s_watchdog_keeps_the_target_locked,
    a_rollback_carries_the_build_and_target_host_flags,
    a_watchdog_that_fires_first_tells_its_verdict,
    a_stale_watchdog_file_locks_nothing,
    an_interrupted_confirm_says_the_target_rolls_itself_back,
);

/// A sandbox and a site (root or sudo) whose system `marker` was deployed and is active: the
/// generation a rollback returns to.
fn deployed(kind: Kind, marker: &str) -> (Sandbox, Site) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    config(&sb, &site, marker, "", "");
    sb.krops(&["deploy"]).success();
    (sb, site)
}

/// The system the host switched to last (`OPERATION /nix/store/…-nixos-system-MARKER`).
fn last_activation(site: &Site) -> String {
    state(site, "activations").lines().last().unwrap_or_default().to_owned()
}

fn rollbacks(site: &Site) -> usize {
    state(site, "nixos-rebuild.log").lines().filter(|l| l.contains("--rollback")).count()
}

fn sudo_flag(kind: Kind) -> &'static str {
    if kind == Kind::Sudo {
        " --use-remote-sudo"
    } else {
        ""
    }
}

fn a_failing_check_rolls_back_to_the_previous_generation(kind: Kind) {
    let (sb, site) = deployed(kind, "first");
    let checks = "rollback = true\nhealthChecks = [{ command = \"test ! -e /var/lib/krops-test/unhealthy\", timeout = 5, retries = 1 }]";
    config(&sb, &site, "second", "", checks);
    std::fs::write(site.host().unwrap().state().join("unhealthy"), "").unwrap();
    sb.krops(&["deploy"])
        .code(1)
        .stderr_has("health check on 127.0.0.1 failed")
        .stderr_has("`test ! -e /var/lib/krops-test/unhealthy` failed (2 attempts): exited with status 1")
        .stderr_has("rolled back");
    let log = state(&site, "nixos-rebuild.log");
    assert!(
        log.lines().last().unwrap().starts_with(&format!("argv=switch --rollback{}", sudo_flag(kind))),
        "{log}"
    );
    assert!(last_activation(&site).ends_with("-nixos-system-first"), "{}", state(&site, "activations"));
    let record = site.read(".krops/record");
    assert!(record.contains("activation switch rolled-back "), "{record}");
}

fn a_passing_check_leaves_the_new_system(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    let server = HttpServer::start(200);
    config(&sb, &site, "first", "", "");
    sb.krops(&["deploy"]).success();
    let checks = format!(
        "rollback = true\nhealthChecks = [{{ command = \"grep -q second /nix/var/nix/profiles/system/marker\" }}, \
         {{ url = \"{}\", status = 200, timeout = 2 }}]",
        server.url()
    );
    config(&sb, &site, "second", "", &checks);
    sb.krops(&["deploy"]).success();
    assert_eq!(server.requests(), 1);
    assert_eq!(rollbacks(&site), 0);
    assert!(last_activation(&site).ends_with("-nixos-system-second"));

    // The same URL answering otherwise fails the deployment after its retries; without
    // `rollback` the new system stays.
    let failing = HttpServer::start(503);
    let checks = format!("healthChecks = [{{ url = \"{}\", retries = 2, timeout = 2 }}]", failing.url());
    config(&sb, &site, "third", "", &checks);
    sb.krops(&["deploy"]).code(1).stderr_has("status 503, expected 200");
    assert_eq!(failing.requests(), 3, "the first attempt and two retries");
    assert_eq!(rollbacks(&site), 0);
    assert!(last_activation(&site).ends_with("-nixos-system-third"));
}

fn a_failed_switch_rolls_back(kind: Kind) {
    let (sb, site) = deployed(kind, "good");
    config(&sb, &site, "broken", "failsSwitch = true;", "rollback = true");
    let outcome = sb.krops(&["--json", "deploy"]);
    outcome.code(1);
    let summary = outcome.stdout.lines().last().unwrap();
    let summary: serde_json::Value = serde_json::from_str(summary).unwrap();
    let entry = &summary["deployments"]["site"];
    assert_eq!(entry["status"], "failed", "{summary}");
    assert_eq!(entry["rolled_back"], true, "{summary}");
    assert_eq!(entry["error"]["rollback"], "rolled back", "{summary}");
    assert_eq!(rollbacks(&site), 1);
    let status = sb.krops(&["status"]);
    status.success().stdout_has("last activation: switch rolled-back at ");
    let activations = state(&site, "activations");
    let last_two: Vec<&str> = activations.lines().rev().take(2).collect();
    assert!(last_two[1].ends_with("-nixos-system-broken"), "{activations}");
    assert!(last_two[0].ends_with("-nixos-system-good"), "{activations}");
}

fn a_failed_build_has_nothing_to_roll_back(kind: Kind) {
    let (sb, site) = deployed(kind, "good");
    config(&sb, &site, "good", "failsSwitch = throw \"broken configuration\";", "rollback = true");
    sb.krops(&["deploy"])
        .code(1)
        .stderr_has("broken configuration")
        .stderr_has("not rolled back: the system profile did not change");
    assert_eq!(rollbacks(&site), 0, "--rollback would go one generation too far");
    assert!(last_activation(&site).ends_with("-nixos-system-good"));
}

fn an_unreachable_new_system_rolls_itself_back(kind: Kind) {
    let (sb, site) = deployed(kind, "reachable");
    let timeout = 10;
    config(&sb, &site, "locked-out", "stopsSshd = true;", &format!("confirmTimeout = {timeout}"));
    let started = Instant::now();
    sb.krops(&["deploy"])
        .code(1)
        .stderr_has("cannot reach the target over a new connection to confirm")
        .stderr_has("rolls itself back");
    let deadline = started + Duration::from_secs(timeout + 5);
    while !last_activation(&site).ends_with("-nixos-system-reachable") {
        assert!(
            Instant::now() < deadline,
            "not rolled back within {timeout} s + 5 s: {}\n{}",
            state(&site, "activations"),
            std::fs::read_to_string(site.path(".krops/watchdog.fired")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let activations = state(&site, "activations");
    let systems: Vec<&str> = activations.lines().map(|l| l.rsplit('-').next().unwrap()).collect();
    assert_eq!(systems, ["reachable", "out", "reachable"], "{activations}");
    assert_eq!(rollbacks(&site), 1);
    assert!(state(&site, "nixos-rebuild.log").lines().last().unwrap().starts_with("argv=switch --rollback"));
    crate::support::wait_until("the watchdog records the rollback", || {
        site.read(".krops/record").contains("activation watchdog rolled-back ")
    });
}

fn a_confirmed_system_stays_and_its_watchdog_is_gone(kind: Kind) {
    let (sb, site) = deployed(kind, "first");
    let timeout = 8;
    config(&sb, &site, "second", "", &format!("confirmTimeout = {timeout}\nrollback = true"));
    sb.krops(&["deploy"]).success();
    let pid = site.read(".krops/watchdog.confirmed");
    // A zombie waiting for its reaper has ended too.
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap_or_default();
    assert!(
        status.is_empty() || status.contains("State:\tZ"),
        "the confirmed watchdog (pid {pid}) was ended:\n{status}"
    );
    std::thread::sleep(Duration::from_secs(timeout + 1));
    assert_eq!(rollbacks(&site), 0);
    assert!(last_activation(&site).ends_with("-nixos-system-second"));
    assert!(!site.path(".krops/watchdog").exists() && !site.path(".krops/watchdog.fired").exists());
}

fn a_failed_test_activation_returns_to_the_current_generation(kind: Kind) {
    let (sb, site) = deployed(kind, "current");
    let checks = "rollback = true\nhealthChecks = [{ command = \"false\" }]";
    config(&sb, &site, "tried", "", checks);
    sb.krops(&["deploy", "--operation", "test"]).code(1).stderr_has("rolled back");
    let activations = state(&site, "activations");
    let last: Vec<&str> = activations.lines().rev().take(2).collect();
    assert!(last[1].starts_with("test ") && last[1].ends_with("-nixos-system-tried"), "{activations}");
    assert!(last[0].starts_with("test ") && last[0].ends_with("-nixos-system-current"), "{activations}");
    assert_eq!(rollbacks(&site), 0, "`test` made no generation to go back from");
}

/// A run killed while its watchdog is armed leaves the watchdog in charge: no other run takes
/// the target (it would deploy a system the watchdog then rolls back) until it has fired.
///
/// The run is killed during its health check, which is the run's own work on the target (it
/// carries the run's marker) and outlives it there: a session without a terminal is sent no
/// signal when its connection drops, and `sleep` writes nothing that could fail. The killed
/// run's lock holder waits for it (see `LOCK_SCRIPT`), as root and through sudo alike. The
/// check is shorter than the watchdog's timeout, so that the watchdog then holds the target
/// alone, whether the kill came before the check started on the target or while it ran (a
/// race the test must not depend on: whether an ssh client or a session opened on the
/// master's socket starts it, and how loaded the machine is, decide it).
fn a_killed_run_s_watchdog_keeps_the_target_locked(kind: Kind) {
    let (sb, site) = deployed(kind, "first");
    let timeout = 12;
    let extra =
        format!("confirmTimeout = {timeout}\nhealthChecks = [{{ command = \"sleep 4\", timeout = 60 }}]");
    config(&sb, &site, "second", "", &extra);
    let started = Instant::now();
    let mut krops = sb.krops_command(&["deploy"]).stderr(std::process::Stdio::null()).spawn().unwrap();
    crate::support::wait_until("the second system is active", || {
        last_activation(&site).ends_with("-system-second")
    });
    krops.kill().unwrap();
    krops.wait().unwrap();
    config(&sb, &site, "third", "", "");
    // Locked by the watchdog, or still by the killed run's lock holder, which waits for the
    // run's health check to end first.
    sb.krops(&["populate"]).code(1).stderr_has("is locked by another krops run");
    // Once the check has ended, nothing of the killed run outlives it but the watchdog, which
    // then is all that holds the target.
    crate::support::wait_until("the watchdog alone holds the target", || {
        sb.krops(&["populate"]).code(1).stderr.contains("whose confirm watchdog is armed")
    });
    assert!(started.elapsed() < Duration::from_secs(timeout), "the watchdog fired already");
    // Waiting for the lock waits for the watchdog, which rolls back to the first system.
    sb.krops(&["--wait-lock", "40", "deploy"]).success();
    assert!(started.elapsed() >= Duration::from_secs(timeout), "deployed before the watchdog fired");
    let activations = state(&site, "activations");
    let systems: Vec<&str> = activations.lines().map(|l| l.rsplit('-').next().unwrap()).collect();
    assert_eq!(systems, ["first", "second", "first", "third"], "{activations}");
}

/// With a build host, the health check runs on the target and the rollback where the
/// activation ran, with the same host and sudo flags.
fn a_rollback_carries_the_build_and_target_host_flags(kind: Kind) {
    let sb = Sandbox::new();
    let target = Site::named(&sb, kind, "target").with_sentinel();
    let builder = Site::named(&sb, kind, "builder").with_sentinel();
    let extra = format!(
        "buildTarget = {}\nrollback = true\nhealthChecks = [{{ command = \"test -e /var/lib/krops-test/healthy\" }}]",
        builder.target()
    );
    config(&sb, &target, "remote", "", &extra);
    std::fs::write(builder.host().unwrap().state().join("healthy"), "").unwrap();
    sb.krops(&["deploy"]).code(1).stderr_has("health check on 127.0.0.1 failed").stderr_has("rolled back");
    let user = if kind == Kind::Sudo { krops_tests::hosts::SUDO_USER } else { "root" };
    let flags = format!("--build-host {user}@127.0.0.1 --target-host {user}@127.0.0.1{}", sudo_flag(kind));
    let log = state(&builder, "nixos-rebuild.log");
    let calls: Vec<&str> = log.lines().map(|l| l.split(" NIX_PATH=").next().unwrap()).collect();
    assert_eq!(calls, [format!("argv=switch {flags}"), format!("argv=switch --rollback {flags}")], "{log}");
    assert_eq!(state(&target, "nixos-rebuild.log"), "");
}

/// A slow health check outlasts the timeout: the watchdog fires and rolls back first; krops
/// says so (not "confirmed"), and the record keeps the watchdog's verdict.
fn a_watchdog_that_fires_first_tells_its_verdict(kind: Kind) {
    let (sb, site) = deployed(kind, "first");
    let extra = "confirmTimeout = 5\nhealthChecks = [{ command = \"sleep 8\", timeout = 20 }]";
    config(&sb, &site, "slow", "", extra);
    sb.krops(&["deploy"])
        .code(1)
        .stderr_has("the confirm watchdog fired at")
        .stderr_has("the target rolled itself back");
    assert!(last_activation(&site).ends_with("-nixos-system-first"), "{}", state(&site, "activations"));
    let record = site.read(".krops/record");
    assert!(record.contains("activation watchdog rolled-back "), "{record}");
    assert!(!record.contains("activation switch"), "krops left the watchdog's verdict alone: {record}");
    // Its work done, the watchdog holds nothing.
    config(&sb, &site, "third", "", "");
    sb.krops(&["deploy"]).success();
}

/// A `.krops/watchdog` naming a live process that is no watchdog (a reused PID), PID 0, or
/// garbage locks nothing.
fn a_stale_watchdog_file_locks_nothing(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    config(&sb, &site, "first", "", "");
    let mut stranger = std::process::Command::new("sleep").arg("60").spawn().unwrap();
    for content in [format!("{}\n", stranger.id()), "0\n".to_owned(), "x y\n".to_owned()] {
        site.write(".krops/watchdog", &content);
        site.write(".krops/watchdog.fired", &content);
        site.write(".krops/own", "");
        // As krops makes its directory: else it would be replaced, stale files and all.
        std::fs::set_permissions(site.path(".krops"), std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        sb.krops(&["populate"]).success();
    }
    assert!(stranger.try_wait().unwrap().is_none(), "the stranger was not signalled");
    stranger.kill().unwrap();
    stranger.wait().unwrap();
}

/// SIGTERM while krops waits to confirm: the summary says the armed watchdog will act.
fn an_interrupted_confirm_says_the_target_rolls_itself_back(kind: Kind) {
    let (sb, site) = deployed(kind, "reachable");
    config(&sb, &site, "locked-out", "stopsSshd = true;", "confirmTimeout = 10");
    let krops = sb
        .krops_command(&["deploy"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    crate::support::wait_until("the new system is active", || {
        last_activation(&site).ends_with("-locked-out")
    });
    std::thread::sleep(Duration::from_millis(500));
    std::process::Command::new("kill").args(["-TERM", &krops.id().to_string()]).status().unwrap();
    let outcome = crate::support::Outcome::from_output(krops.wait_with_output().unwrap());
    outcome.code(143).stderr_has("interrupted by SIGTERM; not confirmed: the target rolls itself back at");
}

/// A one-thread HTTP server on 127.0.0.1 answering every request with `status`, counting them.
struct HttpServer {
    port: u16,
    requests: Arc<AtomicUsize>,
}

impl HttpServer {
    fn start(status: u16) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    line.clear();
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} Status\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                );
            }
        });
        HttpServer { port, requests }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/health", self.port)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// A health check that leaves a child in the background (`sleep … &`) ends with its command:
/// the child is ended then (it would hold the connection open until it exits), and no longer
/// than the check's timeout in any case.
#[test]
fn a_health_check_s_background_child_ends_with_it() {
    let (sb, site) = deployed(Kind::Root, "first");
    let sleeper = format!("sleep 40.{}", std::process::id());
    let checks = format!(
        "healthChecks = [{{ command = \"{sleeper} > /dev/null 2>&1 & {sleeper} & echo started\", timeout = 3 }}]"
    );
    config(&sb, &site, "second", "", &checks);
    let started = Instant::now();
    sb.krops(&["deploy"]).success();
    assert!(started.elapsed() < Duration::from_secs(20), "the check took {:?}", started.elapsed());
    crate::support::wait_until("the check's children are gone", || {
        crate::support::processes_mentioning(&sleeper).iter().all(|p| !p.contains(": sleep "))
    });
}
