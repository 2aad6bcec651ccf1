//! What only remote targets have: one multiplexed connection per host, masters and their
//! control directory gone after every kind of ending, hostile hosts and users rejected.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use krops_tests::proxy::DelayProxy;

use crate::support::{krops_bin, processes_mentioning, Kind, Outcome, Sandbox, Site};

/// The control directory is gone and no master (`ssh -M`) runs once krops has exited. A
/// multiplexing client that was mid-command may take a moment to notice its master is gone.
fn assert_no_masters_left(sb: &Sandbox) {
    let tmp = sb.path("tmp").display().to_string();
    let leftovers: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().map(|e| e.path()).collect();
    assert!(leftovers.is_empty(), "control directory left behind: {leftovers:?}");
    let masters: Vec<String> =
        processes_mentioning(&tmp).into_iter().filter(|p| p.contains(" -M ")).collect();
    assert!(masters.is_empty(), "ssh masters left behind: {masters:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_mentioning(&tmp).is_empty() {
        assert!(Instant::now() < deadline, "ssh clients left behind: {:?}", processes_mentioning(&tmp));
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn five_sources(sb: &Sandbox, target: &str) {
    sb.write("conf/a.nix", "a");
    sb.write("conf/b.nix", "b");
    sb.write("conf/dir/c.nix", "c");
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.site]\ntarget = {target}\n[deployments.site.source]\n\
             a.file = \"conf/a.nix\"\nb.file = \"conf/b.nix\"\ndir.file = \"conf/dir\"\n\
             link.symlink = \"a\"\ninfo.pipe = \"echo hello\"\n"
        ),
    );
}

#[test]
fn a_deploy_opens_exactly_one_connection_per_host() {
    for kind in [Kind::Root, Kind::Sudo] {
        let sb = Sandbox::new();
        let site = Site::ready(&sb, kind);
        let host = site.host().unwrap();
        let proxy = DelayProxy::start(host.address(), Duration::ZERO).unwrap();
        five_sources(&sb, &site.target_via(proxy.port));
        // Deploy and run: sentinel, five sources and the command ride on one connection.
        sb.krops(&["run", "--", "true"]).success();
        assert_eq!(site.read("link"), "a");
        assert_eq!(site.read("info"), "hello\n");
        assert_eq!(proxy.connections(), 1, "{kind:?}: one TCP connection for the whole run");
    }
}

#[test]
fn masters_are_gone_after_success_and_failure() {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Root);
    five_sources(&sb, &site.target());
    Outcome::of(sb.krops_with_tmpdir(&["populate"])).success();
    assert_no_masters_left(&sb);

    sb.write(
        "krops.toml",
        &format!("[deployments.site]\ntarget = {}\nsource.p.pipe = \"exit 1\"\n", site.target()),
    );
    Outcome::of(sb.krops_with_tmpdir(&["populate"])).code(1);
    assert_no_masters_left(&sb);
}

#[test]
fn masters_are_gone_after_sigint() {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Root);
    sb.write(
        "krops.toml",
        &format!("[deployments.site]\ntarget = {}\nsource.slow.pipe = \"sleep 3\"\n", site.target()),
    );
    let mut child = sb.krops_with_tmpdir(&["populate"]).stderr(Stdio::piped()).spawn().unwrap();
    // Wait until the master is up (the slow source runs after the sentinel check).
    let deadline = Instant::now() + Duration::from_secs(10);
    let socket_up = || {
        let dirs = std::fs::read_dir(sb.path("tmp")).unwrap().flatten();
        dirs.into_iter().any(|d| d.path().join("0").exists())
    };
    while !socket_up() {
        assert!(Instant::now() < deadline, "no ssh master appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert_no_masters_left(&sb);
}

#[test]
fn unreachable_host_fails_with_ssh_error_and_host() {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Root);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    sb.write(
        "krops.toml",
        &format!("[deployments.site]\ntarget = {}\nsource.l.symlink = \"x\"\n", site.target_via(port)),
    );
    sb.krops(&["populate"]).code(1).stderr_has("on 127.0.0.1").stderr_has("Connection refused");
}

#[test]
fn hostile_hosts_and_users_execute_nothing() {
    let sb = Sandbox::new();
    let marker = sb.path("pwned");
    let m = marker.display();
    for target in [
        format!("-oProxyCommand=touch {m}"),
        format!("root@-oProxyCommand=touch {m}"),
        format!("-oProxyCommand=touch {m}@host"),
        format!("root@$(touch {m})"),
        format!("root@`touch {m}`"),
        format!("root@host;touch {m}"),
        "ro'ot@host".to_owned(),
        "root@host name".to_owned(),
        "root@host\nname".to_owned(),
    ] {
        sb.write("krops.toml", &format!("[deployments.x]\ntarget = {target:?}\nsource.l.symlink = \"a\"\n"));
        sb.krops(&["populate"]).code(2).stderr_has("invalid target");
        sb.write(
            "krops.toml",
            &format!("[deployments.x]\ntarget = {{ host = {target:?}, user = {target:?} }}\nsource.l.symlink = \"a\"\n"),
        );
        sb.krops(&["populate"]).code(2).stderr_has("invalid target");
    }
    assert!(!marker.exists(), "a hostile target executed something");
}

/// krops does not force BatchMode: a key passphrase is asked for (here through SSH_ASKPASS,
/// as a desktop would) once per host, not once per step.
#[test]
fn a_passphrase_is_asked_once_per_host() {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Root);
    let key = site.protected_key(&sb);
    let log = sb.path("askpass.log");
    let askpass =
        sb.write("askpass", &format!("#!/bin/sh\necho asked >> '{}'\necho sesame\n", log.display()));
    std::fs::set_permissions(&askpass, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let port = site.host().unwrap().port;
    let target = format!(
        "{{ host = \"127.0.0.1\", port = {port}, user = \"root\", extraOptions = [\"-F\", \"/dev/null\", \"-i\", {:?}, \
         \"-o\", \"IdentitiesOnly=yes\", \"-o\", \"UserKnownHostsFile=/dev/null\", \"-o\", \"StrictHostKeyChecking=no\", \
         \"-o\", \"LogLevel=ERROR\"] }}",
        key.display().to_string()
    );
    five_sources(&sb, &target);
    let mut command = Command::new(krops_bin());
    command
        .args(["populate"])
        .current_dir(sb.path(""))
        .env("SSH_ASKPASS", &askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0")
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null());
    Outcome::of(command).success();
    assert_eq!(site.read("info"), "hello\n");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "asked\n", "the passphrase was asked more than once");
}

/// An IPv6 literal: ssh takes it bare, rsync's remote path needs brackets.
#[test]
fn ipv6_targets() {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Sudo);
    let host = site.host().unwrap();
    let options = krops_tests::hosts::quoted(&krops_tests::hosts::TestHost::extra_options());
    let target = format!(
        "{{ host = \"::1\", port = {}, user = \"{}\", sudo = true, extraOptions = [{}] }}",
        host.port,
        krops_tests::hosts::SUDO_USER,
        options.join(", ")
    );
    five_sources(&sb, &target);
    sb.krops(&["populate"]).success().stderr_has("[site@[::1]]");
    assert_eq!(site.read("dir/c.nix"), "c");
    assert_eq!(site.read("info"), "hello\n");

    std::fs::remove_file(site.path(".populate")).unwrap();
    sb.krops(&["populate"]).code(1).stderr_has("missing sentinel file: [::1]:/var/src/.populate");
}

/// Many deployments to one host share its one connection, however many sessions they would
/// open at once: sshd's stock `MaxSessions` (10) refuses an eleventh session, which would make
/// ssh open a connection of its own beside the master (and a stock `MaxStartups` drops some of
/// those). Each deployment holds its lock's session throughout, and four sources go at once.
#[test]
fn many_deployments_to_one_host_share_one_connection_within_max_sessions() {
    let sb = Sandbox::new();
    let host = krops_tests::hosts::TestHost::start_stock("krops-test-stock");
    let proxy = DelayProxy::start(host.address(), Duration::ZERO).unwrap();
    for source in ["a", "b", "c", "d"] {
        sb.write(&format!("conf/{source}"), source);
    }
    let mut config = String::new();
    for n in 0..30 {
        let target = host.target_toml(krops_tests::hosts::Login::Root, proxy.port, &format!("/var/src/d{n}"));
        config.push_str(&format!(
            "[deployments.d{n}]\ntarget = {target}\nforce = true\n[deployments.d{n}.source]\n\
             a.file = \"conf/a\"\nb.file = \"conf/b\"\nc.file = \"conf/c\"\nd.file = \"conf/d\"\n"
        ));
    }
    sb.write("krops.toml", &config);
    sb.krops(&["populate"]).success();
    for n in 0..30 {
        let dir = host.var_src().join(format!("d{n}"));
        assert_eq!(std::fs::read_to_string(dir.join("d")).unwrap(), "d", "d{n} populated");
    }
    assert_eq!(proxy.connections(), 1, "one TCP connection for 30 deployments");

    // Nothing changed: every deployment only takes its lock and finds its sources recorded.
    sb.krops(&["populate"]).success();
    assert_eq!(proxy.connections(), 2, "one TCP connection for the no-op run");
}

/// A session the server refuses (here every one past the lock's: `MaxSessions 1`) fails its
/// command, saying why, instead of ssh quietly opening a connection of its own beside the
/// master, over ssh and over rsync alike.
#[test]
fn a_refused_session_fails_instead_of_opening_another_connection() {
    let sb = Sandbox::new();
    let host = krops_tests::hosts::TestHost::start_with_limits("krops-test-one-session", "MaxSessions 1\n");
    let proxy = DelayProxy::start(host.address(), Duration::ZERO).unwrap();
    sb.write("conf/a", "a");
    let target = host.target_toml(krops_tests::hosts::Login::Root, proxy.port, "/var/src");
    std::fs::write(host.var_src().join(".populate"), "").unwrap();
    for source in ["a.file = \"conf/a\"", "l.symlink = \"a\""] {
        sb.write("krops.toml", &format!("[deployments.site]\ntarget = {target}\nsource.{source}\n"));
        let before = proxy.connections();
        sb.krops(&["populate"])
            .code(1)
            .stderr_has("no session free on the ssh connection to 127.0.0.1")
            .stderr_has("krops opens no other");
        assert_eq!(proxy.connections(), before + 1, "{source}: a second connection was opened");
    }
    for name in ["a", "l"] {
        assert!(!host.var_src().join(name).exists(), "{name} was populated");
    }
}

/// A host that accepts the connection and never says a word (a hung sshd, a black hole behind
/// a load balancer) fails its deployment, naming the host and the connect stage, once
/// `ConnectTimeout` has passed: krops's default (10 s), or what the target's `extraOptions` or
/// the user's ssh configuration say, which win over krops's default. The three run at once.
#[test]
fn a_silent_host_fails_at_connect_within_its_connect_timeout() {
    let sb = Sandbox::new();
    let (port, _silent) = silent_listener();
    let ssh_config = sb.write("ssh_config", "Host *\n  ConnectTimeout 2\n");
    let options = |extra: &[&str]| {
        let mut options = krops_tests::hosts::TestHost::extra_options();
        options.extend(extra.iter().map(|o| o.to_string()));
        krops_tests::hosts::quoted(&options).join(", ")
    };
    let mut configured = krops_tests::hosts::TestHost::extra_options();
    assert_eq!(configured[..2], ["-F", "/dev/null"]);
    configured[1] = ssh_config.display().to_string();
    let configured = krops_tests::hosts::quoted(&configured).join(", ");
    let target = |options: &str| {
        format!("{{ host = \"127.0.0.1\", port = {port}, user = \"root\", extraOptions = [{options}] }}")
    };
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.default]\ntarget = {}\nsource.l.symlink = \"x\"\n\
             [deployments.given]\ntarget = {}\nsource.l.symlink = \"x\"\n\
             [deployments.configured]\ntarget = {}\nsource.l.symlink = \"x\"\n",
            target(&options(&[])),
            target(&options(&["-o", "ConnectTimeout=2"])),
            target(&configured),
        ),
    );
    let mut child = sb
        .krops_command(&["--json", "populate"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = Outcome::from_output(child.wait_with_output().unwrap());
            panic!("krops still waits for a silent host after 60 s\n{out}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = Outcome::from_output(child.wait_with_output().unwrap());
    out.code(1);
    let finished: std::collections::HashMap<String, serde_json::Value> = out
        .stdout
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|line| line["event"] == "deployment_finished")
        .map(|line| (line["deployment"].as_str().unwrap().to_owned(), line))
        .collect();
    for (name, at_least, below) in [("default", 9_000, 30_000), ("given", 0, 8_000), ("configured", 0, 8_000)]
    {
        let line = &finished[name];
        let error = &line["error"];
        assert_eq!(error["stage"], "connect", "{name}: {line}\n{out}");
        assert_eq!(error["host"], "127.0.0.1", "{name}: {line}\n{out}");
        assert!(error["detail"].as_str().unwrap().contains("timed out"), "{name}: {line}\n{out}");
        let millis = line["duration_ms"].as_u64().unwrap();
        assert!((at_least..below).contains(&millis), "{name}: failed after {millis} ms\n{out}");
    }
    sb.krops(&["populate", "given"]).code(1).stderr_has("given: connect on 127.0.0.1 failed: ssh: ");
}

/// A listener on loopback that accepts every connection and never answers, until the returned
/// guard is dropped; and its port.
fn silent_listener() -> (u16, impl Drop) {
    struct Stop(std::sync::Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = stop.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        while !stopping.load(std::sync::atomic::Ordering::SeqCst) {
            match listener.accept() {
                Ok((stream, _)) => held.push(stream),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    (port, Stop(stop))
}
