//! Activation against a real nix on real sshd hosts: the derivation populator, deploy, build
//! and run. The hosts carry a test nixos-rebuild and `<nixpkgs/nixos>` built from builtins
//! (tests/fixtures/nix); both record what they did in the host's state directory.

use std::path::Path;
use std::process::Command;

use crate::support::{krops_bin, nixos_deployment, state, Kind, Outcome, Sandbox, Site};

crate::on_remote_sites!(
    deploy_builds_the_populated_sources_and_switches,
    deploy_operation_flag_overrides_the_configuration,
    build_activates_nothing_and_passes_trace,
    failing_build_activates_nothing,
    failing_derivation_shows_nix_error_and_activates_nothing,
    derivation_source_is_built_on_the_target,
    build_target_gets_the_sources_and_builds_for_the_target,
    run_with_and_without_a_tty,
    nix_output_monitor_wraps_the_rebuild_and_keeps_its_status,
);

/// A deployment of the test nixpkgs and a nixos-config carrying `marker`.
fn config(sb: &Sandbox, site: &Site, extra: &str, marker: &str) {
    nixos_deployment(sb, site, marker, "", extra);
}

fn deploy_builds_the_populated_sources_and_switches(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    config(&sb, &site, "", "first");
    sb.krops(&["deploy"]).success();
    let activations = state(&site, "activations");
    assert!(activations.starts_with("switch /nix/store/"), "{activations}");
    assert!(
        activations.trim_end().ends_with("-nixos-system-first"),
        "built from the populated config: {activations}"
    );
    let rebuild = state(&site, "nixos-rebuild.log");
    let sudo = if kind == Kind::Sudo { " --use-remote-sudo" } else { "" };
    assert_eq!(rebuild, format!("argv=switch{sudo} NIX_PATH=/var/src\n"));

    config(&sb, &site, "", "second");
    sb.krops(&["deploy"]).success();
    assert!(state(&site, "activations").trim_end().ends_with("-nixos-system-second"));
}

fn deploy_operation_flag_overrides_the_configuration(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    config(&sb, &site, "operation = \"test\"", "op");
    sb.krops(&["deploy"]).success();
    sb.krops(&["deploy", "--operation", "boot"]).success();
    let activations = state(&site, "activations");
    let operations: Vec<&str> = activations.lines().filter_map(|l| l.split(' ').next()).collect();
    assert_eq!(operations, ["test", "boot"]);
}

fn build_activates_nothing_and_passes_trace(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    config(&sb, &site, "", "built");
    sb.krops(&["build", "--trace"]).success().stderr_has("-nixos-system-built");
    sb.krops(&["test"]).success();
    assert_eq!(state(&site, "activations"), "", "build activates nothing");
    let builds = state(&site, "nix-build.log");
    let lines: Vec<&str> = builds.lines().collect();
    assert_eq!(
        lines,
        [
            "argv=-A system --keep-going --no-out-link --show-trace <nixpkgs/nixos> NIX_PATH=/var/src",
            "argv=-A system --keep-going --no-out-link <nixpkgs/nixos> NIX_PATH=/var/src",
        ]
    );
}

fn failing_build_activates_nothing(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    config(&sb, &site, "", "ok");
    sb.write(
        "configuration.nix",
        "{ ... }: { krops-test.marker = throw \"this configuration is broken\"; }\n",
    );
    sb.krops(&["deploy"]).code(1).stderr_has("activate").stderr_has("this configuration is broken");
    assert_eq!(state(&site, "activations"), "");
}

fn failing_derivation_shows_nix_error_and_activates_nothing(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    config(&sb, &site, "", "ok");
    let toml = sb.read("krops.toml");
    sb.write(
        "krops.toml",
        &format!("{toml}broken.derivation = 'derivation {{ name = \"broken\"; system = builtins.currentSystem; builder = \"/bin/sh\"; args = [\"-c\" \"echo builder says no >&2; exit 3\"]; }}'\n"),
    );
    sb.krops(&["deploy"]).code(1).stderr_has("populate of source \"broken\"").stderr_has("builder says no");
    assert_eq!(state(&site, "activations"), "");
    assert_eq!(state(&site, "nixos-rebuild.log"), "", "no activation after a failed source");
}

fn derivation_source_is_built_on_the_target(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.site]\ntarget = {}\n[deployments.site.source]\n\
             hello.derivation = 'derivation {{ name = \"hello\"; system = builtins.currentSystem; builder = \"/bin/sh\"; args = [\"-c\" \"echo hello from nix > $out\"]; }}'\n",
            site.target()
        ),
    );
    sb.krops(&["populate"]).success().stderr_has("-hello");
    let link = std::fs::read_link(site.path("hello")).unwrap();
    assert!(link.starts_with("/nix/store"), "{}", link.display());
    assert_eq!(std::fs::read_to_string(&link).unwrap(), "hello from nix\n");
}

fn build_target_gets_the_sources_and_builds_for_the_target(kind: Kind) {
    let sb = Sandbox::new();
    let target = Site::named(&sb, kind, "target").with_sentinel();
    let builder = Site::named(&sb, kind, "builder").with_sentinel();
    config(&sb, &target, &format!("buildTarget = {}", builder.target()), "remote-build");
    sb.krops(&["deploy"]).success();
    for site in [&target, &builder] {
        assert!(site.path("nixos-config").is_file(), "sources are populated on both hosts");
    }
    let rebuild = state(&builder, "nixos-rebuild.log");
    let user = if kind == Kind::Sudo { krops_tests::hosts::SUDO_USER } else { "root" };
    let sudo = if kind == Kind::Sudo { " --use-remote-sudo" } else { "" };
    assert_eq!(
        rebuild,
        format!("argv=switch --build-host {user}@127.0.0.1 --target-host {user}@127.0.0.1{sudo} NIX_PATH=/var/src\n")
    );
    assert_eq!(state(&target, "nixos-rebuild.log"), "", "nixos-rebuild runs on the build host");
}

fn run_with_and_without_a_tty(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    let write = |tty: bool| {
        sb.write(
            "krops.toml",
            &format!(
                "[deployments.site]\ntarget = {}\nallocateTTY = {tty}\ncommand = \"tty || true; echo user=$(id -un) path=$KROPS_TARGET_PATH\"\n",
                site.target()
            ),
        )
    };
    write(false);
    sb.krops(&["run"]).success().stdout_has("not a tty").stdout_has("user=root path=/var/src");
    write(true);
    // krops itself needs a terminal for ssh -t to allocate one: script(1) gives it a pty.
    let mut command = Command::new("script");
    command.args(["-qec", &format!("{} run", krops_bin().display()), "/dev/null"]).current_dir(sb.path(""));
    let out = Outcome::of(command);
    out.success().stdout_has("/dev/pts/").stdout_has("user=root");
    assert!(Path::new("/dev/ptmx").exists());
}

fn nix_output_monitor_wraps_the_rebuild_and_keeps_its_status(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    // A stand-in `nom` that marks every line it passes on, and exits 0 whatever it read.
    let nom = site.host().unwrap().root_dir().join("bin/nom");
    std::fs::write(&nom, "#!/bin/sh\nsed 's/^/nom: /'\n").unwrap();
    std::fs::set_permissions(&nom, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for mode in ["\"optimistic\"", "\"opportunistic\"", "true"] {
        config(&sb, &site, &format!("useNixOutputMonitor = {mode}"), "monitored");
        sb.krops(&["deploy"]).success().stderr_has("| nom: ");
    }
    config(&sb, &site, "useNixOutputMonitor = false", "plain");
    let out = sb.krops(&["deploy"]);
    assert!(!out.success().stderr.contains("nom: "), "{out}");
    assert_eq!(state(&site, "activations").lines().count(), 4);

    config(&sb, &site, "useNixOutputMonitor = \"optimistic\"", "unused");
    sb.write("configuration.nix", "{ ... }: { krops-test.marker = throw \"broken under nom\"; }\n");
    sb.krops(&["deploy"]).code(1).stderr_has("nom: ").stderr_has("broken under nom");
    assert_eq!(
        state(&site, "activations").lines().count(),
        4,
        "a failed rebuild behind nom activates nothing"
    );
}

/// Counts the lines of `text` that hold `needle`.
fn occurrences(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

/// A failing `build` and `deploy`: the summary names nix-build / nixos-rebuild and shows
/// nix's `error:` line (not its last line), and nix's output appears once, not repeated.
#[test]
fn summaries_of_failing_nix_build_and_nixos_rebuild() {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Root);
    config(&sb, &site, "", "ok");
    sb.write("configuration.nix", "{ ... }: { krops-test.marker = undefinedVariableHere; }\n");
    for (command, program, stage) in
        [("build", "nix-build", "build"), ("deploy", "nixos-rebuild", "activate")]
    {
        let out = sb.krops(&[command]);
        out.code(1);
        let summary =
            out.stderr.lines().skip_while(|l| !l.contains("deployments failed")).nth(1).unwrap_or_default();
        assert!(
            summary.contains(&format!(
                "site: {stage} on 127.0.0.1 failed: {program}: error: undefined variable"
            )),
            "{command}: {summary}\n{out}"
        );
        assert_eq!(
            occurrences(&out.stderr, "error: undefined variable 'undefinedVariableHere'"),
            2,
            "{command}: once in the output, once in the summary\n{out}"
        );
    }
}

/// A host with /etc/nixos/flake.nix is still deployed from the populated sources; `flake =
/// "SOURCE#ATTR"` deploys the populated flake instead.
#[test]
fn flakes_on_the_host_and_in_the_sources() {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Root);
    std::fs::write(site.host().unwrap().etc_nixos().join("flake.nix"), "{ outputs = _: { }; }\n").unwrap();
    config(&sb, &site, "", "not-the-flake");
    sb.krops(&["deploy"]).success();
    let activations = state(&site, "activations");
    assert!(
        activations.starts_with("switch /nix/store/"),
        "the populated sources were deployed: {activations}"
    );
    assert!(activations.trim_end().ends_with("-nixos-system-not-the-flake"), "{activations}");

    sb.write("flake/flake.nix", "{ outputs = _: { }; }\n");
    config(&sb, &site, "flake = \"config#web\"", "unused");
    let toml = sb.read("krops.toml");
    sb.write("krops.toml", &format!("{toml}config.file = \"flake\"\n"));
    sb.krops(&["deploy", "--operation", "boot"]).success();
    let last = state(&site, "activations").lines().last().unwrap_or_default().to_owned();
    assert_eq!(last, "boot flake /var/src/config#web");
    assert_eq!(site.read("config/flake.nix"), "{ outputs = _: { }; }\n");

    config(&sb, &site, "flake = \"nope#web\"", "unused");
    sb.krops(&["deploy"]).code(2).stderr_has("\"nope\" is not a source of this deployment");
}
