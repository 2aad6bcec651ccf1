//! The activation stage's command lines, as pure functions of the configuration. Each returns
//! a POSIX shell script for `/bin/sh -c` on the host that activates, with every user-supplied
//! word quoted once.

use crate::config::{Deployment, NomMode};
use crate::shell_words::{join, quote};
use crate::target::Target;

/// `deploy`: nixos-rebuild on the build host (the target unless `buildTarget` differs).
pub fn deploy_script(deployment: &Deployment, operation: &str) -> String {
    let target = &deployment.target;
    let build_host = activation_host(deployment);
    let mut args = vec![operation.to_owned()];
    // A populated flake replaces NIX_PATH's sources.
    if let Some(flake) = &deployment.flake {
        args.extend(["--flake".into(), format!("{}/{flake}", build_host.path.trim_end_matches('/'))]);
    }
    if deployment.cross_deploy {
        args.push("--no-build-nix".into());
    }
    if let Some(build) = &deployment.build_target {
        args.extend(["--build-host".into(), build.user_at_host()]);
        args.extend(["--target-host".into(), target.user_at_host()]);
    }
    if target.sudo {
        args.push("--use-remote-sudo".into());
    }
    let mut rebuild = format!("NIX_PATH={} nixos-rebuild {}", quote(&build_host.path), join(&args));
    if deployment.flake.is_none() {
        // On a host whose /etc/nixos/flake.nix exists, nixos-rebuild would build that flake
        // and ignore NIX_PATH (krops issue #37): there, and only there, it is told not to.
        rebuild =
            format!("set --; if [ -e /etc/nixos/flake.nix ]; then set -- --no-flake; fi; {rebuild} \"$@\"");
    }
    with_nix_output_monitor(deployment.use_nix_output_monitor, &build_host.path, &rebuild)
}

/// `build`: evaluate and build the system from the populated sources, activating nothing.
pub fn build_script(target: &Target, trace: bool) -> String {
    let mut args = vec!["-A", "system", "--keep-going", "--no-out-link"];
    if trace {
        args.push("--show-trace");
    }
    args.push("<nixpkgs/nixos>");
    format!("NIX_PATH={} nix-build {}", quote(&target.path), join(&args))
}

/// `run`: the user's command, or krops's default (print the target path). After `--`, one
/// argument is a command line for the target's shell (as ssh takes it, and as `command` is);
/// several are argv, each word quoted.
pub fn run_script(deployment: &Deployment, override_argv: Option<&[String]>) -> String {
    match (override_argv, &deployment.command) {
        (Some([command]), _) => command.clone(),
        (Some(argv), _) if !argv.is_empty() => join(argv),
        (_, Some(command)) => command.clone(),
        _ => "echo \"$KROPS_TARGET_PATH\"".to_owned(),
    }
}

/// Where activation runs: the build target if there is one, else the target.
pub fn activation_host(deployment: &Deployment) -> &Target {
    deployment.build_target.as_ref().unwrap_or(&deployment.target)
}

/// Wraps `command` in nix-output-monitor the way krops's modes say. Unlike krops's plain pipe,
/// the piped forms keep the command's own exit status, so a failed rebuild is never reported
/// as a success because `nom` exited 0.
pub fn with_nix_output_monitor(mode: NomMode, nix_path: &str, command: &str) -> String {
    let optimistic = format!(
        "exec 3>&1; status=$({{ {{ ({command}) 2>&1 3>&- 4>&-; echo $? >&4; }} | nom >&3 4>&-; }} 4>&1); exit \"$status\""
    );
    let pessimistic =
        format!("NIX_PATH={} nix-shell -p nix-output-monitor --run {}", quote(nix_path), quote(&optimistic));
    match mode {
        NomMode::Never => command.to_owned(),
        NomMode::Optimistic => optimistic,
        NomMode::Pessimistic => pessimistic,
        NomMode::Opportunistic => {
            format!("if command -v nom >/dev/null; then {optimistic}; else {command}; fi")
        }
        NomMode::Always => {
            format!("if command -v nom >/dev/null; then {optimistic}; else {pessimistic}; fi")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::Origin;
    use std::collections::BTreeMap;

    fn target(s: &str) -> Target {
        Target::parse(s, &Origin { user: "alice".into(), host: "deployer".into() }).unwrap()
    }

    fn deployment(t: &str) -> Deployment {
        Deployment {
            target: target(t),
            build_target: None,
            operation: "switch".into(),
            backup: false,
            force: false,
            cross_deploy: false,
            use_nix_output_monitor: NomMode::Never,
            trace: false,
            command: None,
            allocate_tty: false,
            tags: Vec::new(),
            kind: None,
            flake: None,
            health_checks: Vec::new(),
            rollback: false,
            confirm_timeout: 0,
            source: BTreeMap::new(),
        }
    }

    /// `rebuild`, told `--no-flake` only on a host with /etc/nixos/flake.nix.
    fn guarded(rebuild: &str) -> String {
        format!("set --; if [ -e /etc/nixos/flake.nix ]; then set -- --no-flake; fi; {rebuild} \"$@\"")
    }

    #[test]
    fn deploy_operation_and_flags() {
        let mut d = deployment("root@web1/var/src");
        assert_eq!(deploy_script(&d, "switch"), guarded("NIX_PATH=/var/src nixos-rebuild switch"));
        assert_eq!(deploy_script(&d, "boot"), guarded("NIX_PATH=/var/src nixos-rebuild boot"));
        d.cross_deploy = true;
        assert_eq!(
            deploy_script(&d, "switch"),
            guarded("NIX_PATH=/var/src nixos-rebuild switch --no-build-nix")
        );
        d.cross_deploy = false;
        d.target.sudo = true;
        assert_eq!(
            deploy_script(&d, "test"),
            guarded("NIX_PATH=/var/src nixos-rebuild test --use-remote-sudo")
        );
        d.flake = Some("config#web".into());
        assert_eq!(
            deploy_script(&d, "switch"),
            "NIX_PATH=/var/src nixos-rebuild switch --flake '/var/src/config#web' --use-remote-sudo"
        );
    }

    #[test]
    fn deploy_with_build_target() {
        let mut d = deployment("root@web1/var/src");
        d.build_target = Some(target("builder@build1/srv/my src"));
        assert_eq!(
            deploy_script(&d, "switch"),
            guarded("NIX_PATH='/srv/my src' nixos-rebuild switch --build-host builder@build1 --target-host root@web1")
        );
        assert_eq!(activation_host(&d).host, "build1");
        d.target.user = String::new();
        assert!(deploy_script(&d, "switch").ends_with("--target-host web1 \"$@\""));
    }

    #[test]
    fn deploy_nom_modes() {
        let mut d = deployment("root@web1");
        let plain = guarded("NIX_PATH=/var/src nixos-rebuild switch");
        let piped = format!(
            "exec 3>&1; status=$({{ {{ ({plain}) 2>&1 3>&- 4>&-; echo $? >&4; }} | nom >&3 4>&-; }} 4>&1); exit \"$status\""
        );
        let via_shell = format!("NIX_PATH=/var/src nix-shell -p nix-output-monitor --run {}", quote(&piped));
        d.use_nix_output_monitor = NomMode::Optimistic;
        assert_eq!(deploy_script(&d, "switch"), piped);
        d.use_nix_output_monitor = NomMode::Pessimistic;
        assert_eq!(deploy_script(&d, "switch"), via_shell);
        d.use_nix_output_monitor = NomMode::Opportunistic;
        assert_eq!(
            deploy_script(&d, "switch"),
            format!("if command -v nom >/dev/null; then {piped}; else {plain}; fi")
        );
        d.use_nix_output_monitor = NomMode::Always;
        assert_eq!(
            deploy_script(&d, "switch"),
            format!("if command -v nom >/dev/null; then {piped}; else {via_shell}; fi")
        );
    }

    #[test]
    fn nom_pipe_keeps_the_exit_status() {
        let script = with_nix_output_monitor(NomMode::Optimistic, "/x", "echo out; exit 7");
        let script = format!("nom() {{ cat; }}; {script}");
        let status = std::process::Command::new("/bin/sh").args(["-c", &script]).output().unwrap();
        assert_eq!(status.status.code(), Some(7));
        assert_eq!(String::from_utf8_lossy(&status.stdout), "out\n");
    }

    #[test]
    fn build_with_and_without_trace() {
        let t = target("root@web1/var/src");
        assert_eq!(
            build_script(&t, false),
            "NIX_PATH=/var/src nix-build -A system --keep-going --no-out-link '<nixpkgs/nixos>'"
        );
        assert_eq!(
            build_script(&t, true),
            "NIX_PATH=/var/src nix-build -A system --keep-going --no-out-link --show-trace '<nixpkgs/nixos>'"
        );
    }

    #[test]
    fn run_command_choice() {
        let mut d = deployment("/tmp/x");
        assert_eq!(run_script(&d, None), "echo \"$KROPS_TARGET_PATH\"");
        d.command = Some("ls $KROPS_TARGET_PATH".into());
        assert_eq!(run_script(&d, None), "ls $KROPS_TARGET_PATH");
        assert_eq!(run_script(&d, Some(&["echo".into(), "a b".into()])), "echo 'a b'");
        assert_eq!(run_script(&d, Some(&["exit 5".into()])), "exit 5");
    }
}
