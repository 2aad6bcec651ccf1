//! The live display on a real terminal (tmux): every deployment of a fleet ends with its line,
//! however connections and prompts come and go, and `--interactive` asks before it changes
//! anything.

use krops_tests::hosts::{quoted, Login, TestHost};

use crate::support::{krops_bin, Kind, Sandbox, Site, Terminal};

/// `cd SANDBOX && krops ARGS` without an agent, as a shell command line for the terminal.
fn krops_in(sb: &Sandbox, args: &str) -> String {
    format!(
        "cd {} && env -u SSH_AUTH_SOCK -u DISPLAY {} {args}",
        sb.path("").display(),
        krops_bin().display()
    )
}

/// Ten deployments, local and over ssh (root and sudo), one behind a passphrase-protected key,
/// two failing (a pipe, a refused connection): the screen ends with a ✓ or ✗ line for each and
/// the tally.
#[test]
fn every_deployment_of_a_fleet_ends_visibly() {
    krops_tests::hosts::prepare_machine();
    let sb = Sandbox::new();
    let shared = Site::ready(&sb, Kind::Root);
    let guarded = Site::ready(&sb, Kind::Root);
    let key = guarded.protected_key(&sb);
    let host = shared.host().unwrap();
    sb.write("conf/a", "a");
    let mut toml = String::new();
    let mut add = |name: &str, target: String, source: &str| {
        toml.push_str(&format!("[deployments.{name}]\ntarget = {target}\nforce = true\nsource.{source}\n"));
    };
    for i in 1..=3 {
        add(
            &format!("local-{i}"),
            format!("{:?}", sb.path(&format!("local-{i}")).display().to_string()),
            "a.file = \"conf/a\"",
        );
    }
    for i in 1..=2 {
        add(
            &format!("root-{i}"),
            host.target_toml(Login::Root, host.port, &format!("/var/src/root-{i}")),
            "a.file = \"conf/a\"",
        );
        add(
            &format!("sudo-{i}"),
            host.target_toml(Login::Sudo, host.port, &format!("/var/src/sudo-{i}")),
            "a.file = \"conf/a\"",
        );
    }
    let guarded_port = guarded.host().unwrap().port;
    add(
        "guarded",
        format!(
            "{{ host = \"127.0.0.1\", port = {guarded_port}, user = \"root\", extraOptions = [\"-F\", \"/dev/null\", \"-i\", {:?}, \"-o\", \"IdentitiesOnly=yes\", \"-o\", \"UserKnownHostsFile=/dev/null\", \"-o\", \"StrictHostKeyChecking=no\", \"-o\", \"LogLevel=ERROR\"] }}",
            key.display().to_string()
        ),
        "a.file = \"conf/a\"",
    );
    add(
        "broken-pipe",
        format!("{:?}", sb.path("broken").display().to_string()),
        "p.pipe = \"echo no >&2; exit 3\"",
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused_port = closed.local_addr().unwrap().port();
    drop(closed);
    let options = quoted(&TestHost::extra_options()).join(", ");
    add(
        "refused",
        format!(
            "{{ host = \"127.0.0.1\", port = {refused_port}, user = \"root\", extraOptions = [{options}] }}"
        ),
        "a.file = \"conf/a\"",
    );
    sb.write("krops.toml", &toml);
    let terminal = Terminal::start(&krops_in(&sb, "populate"));
    terminal.wait_for("Enter passphrase for key", 30);
    terminal.type_line("sesame");
    let screen = terminal.wait_for("krops-exit-", 60);
    let names = ["local-1", "local-2", "local-3", "root-1", "root-2", "sudo-1", "sudo-2", "guarded"];
    for name in names {
        assert!(screen.contains(&format!("✓ {name}: done in")), "no ✓ line for {name}:\n{screen}");
    }
    for name in ["broken-pipe", "refused"] {
        assert!(screen.contains(&format!("✗ {name}: ")), "no ✗ line for {name}:\n{screen}");
    }
    assert!(
        screen.contains("→ guarded: connecting to 127.0.0.1"),
        "the prompt's deployment is not named:\n{screen}"
    );
    assert!(screen.contains("krops: 8 ok, 2 failed: broken-pipe, refused"), "no tally:\n{screen}");
    assert!(screen.contains("krops-exit-1"), "{screen}");
    assert_eq!(guarded.read("a"), "a");
}

/// `--interactive`: the diff first, then a question; "n" changes nothing, "y" populates.
#[test]
fn interactive_shows_the_diff_and_asks() {
    let sb = Sandbox::new();
    sb.one_local_file_deployment();
    let terminal = Terminal::start(&krops_in(&sb, "--interactive populate"));
    let screen = terminal.wait_for("populate site? [y/N]", 20);
    assert!(screen.contains("[site] a (file): added"), "no diff before the question:\n{screen}");
    terminal.type_line("n");
    let screen = terminal.wait_for("krops-exit-", 20);
    assert!(screen.contains("krops: nothing was changed") && screen.contains("krops-exit-0"), "{screen}");
    assert!(!sb.path("site/a").exists());
    drop(terminal);
    let terminal = Terminal::start(&krops_in(&sb, "--interactive populate"));
    terminal.wait_for("populate site? [y/N]", 20);
    terminal.type_line("y");
    let screen = terminal.wait_for("krops-exit-", 20);
    assert!(screen.contains("krops-exit-0") && screen.contains("✓ site: done in"), "{screen}");
    assert_eq!(sb.read("site/a"), "a");
    // Only y or yes goes on; Ctrl-C at the question changes nothing either.
    drop(terminal);
    std::fs::remove_file(sb.path("site/a")).unwrap();
    let terminal = Terminal::start(&krops_in(&sb, "--interactive populate"));
    terminal.wait_for("populate site? [y/N]", 20);
    terminal.type_line("yep");
    terminal.wait_for("krops-exit-0", 20);
    assert!(!sb.path("site/a").exists());
    drop(terminal);
    let terminal = Terminal::start(&krops_in(&sb, "--interactive populate"));
    terminal.wait_for("populate site? [y/N]", 20);
    terminal.interrupt();
    let screen = terminal.wait_for("krops-exit-", 20);
    assert!(
        screen.contains("interrupted by SIGINT; nothing was changed") && screen.contains("krops-exit-130"),
        "{screen}"
    );
    assert!(!sb.path("site/a").exists());
    sb.krops(&["--interactive", "eval"])
        .code(2)
        .stderr_has("--interactive goes with deploy, build, run and populate");
    // Without a terminal to ask on (a session of its own has none): a usage error.
    let mut command = std::process::Command::new("setsid");
    command.args(["-w"]).arg(krops_bin()).args(["--interactive", "populate"]).current_dir(sb.path(""));
    crate::support::Outcome::of(command).code(2).stderr_has("--interactive needs a terminal to ask on");
}
