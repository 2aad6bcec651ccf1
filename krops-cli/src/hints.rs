//! What to do about the failures krops users meet most, said beside the error: the program's
//! own words name the symptom, the hint names the likely cause in krops's terms.

use crate::config::Deployment;
use crate::events::{DeployError, Stage};

/// `error` with a hint when one of the common causes shows; unchanged otherwise.
pub fn added(mut error: DeployError, deployment: &Deployment) -> DeployError {
    error.hint = hint(&error, deployment);
    error
}

fn hint(error: &DeployError, deployment: &Deployment) -> Option<String> {
    let said = format!("{}\n{}", error.message, error.output.as_deref().unwrap_or_default());
    let said = said.as_str();
    let host = error.host.as_deref().unwrap_or("the target");
    let not_found = |program: &str| {
        said.contains(&format!("{program}: not found"))
            || said.contains(&format!("{program}: command not found"))
    };
    // nix: "file 'nixpkgs/nixos' was not found in the Nix search path".
    let missing_from_search_path = |name: &str| {
        said.contains("was not found in the Nix search path")
            && (said.contains(&format!("file '{name}'")) || said.contains(&format!("file '{name}/")))
    };
    match error.stage {
        Stage::Connect => connect_hint(said, host, deployment).or_else(|| {
            // With LogLevel=ERROR (or QUIET) ssh reports a connection closed before the
            // banner (a failing ProxyCommand, a peer that hangs up) at no level it shows.
            error.output.as_deref().unwrap_or_default().trim().is_empty().then(|| {
                format!(
                    "ssh ended without saying why, as it does when its LogLevel hides it: the connection to {host} closed at once (a ProxyCommand or ProxyJump that failed, or a peer that hung up); see with `-o LogLevel=INFO` in extraOptions"
                )
            })
        }),
        Stage::Activate | Stage::Build if not_found("nixos-rebuild") || not_found("nix-build") => Some(format!(
            "{host} has no {}: is it NixOS? For another system, deploy with `krops populate`, or `krops run` a command (kind = \"run\")",
            if not_found("nixos-rebuild") { "nixos-rebuild" } else { "nix-build" }
        )),
        Stage::Activate | Stage::Build => ["nixpkgs", "nixos-config"]
            .into_iter()
            .find(|name| missing_from_search_path(name) && !deployment.source.contains_key(*name))
            .map(|name| {
                format!(
                    "no source named {name} is shipped: the target evaluates <{name}> from {}/{name} (NIX_PATH is the target's path); add a source {name}",
                    deployment.target.path.trim_end_matches('/')
                )
            }),
        _ => None,
    }
}

/// Why ssh could not reach the host, as far as its words tell.
fn connect_hint(said: &str, host: &str, deployment: &Deployment) -> Option<String> {
    let port = deployment.target.port.map_or("22".to_owned(), |p| p.to_string());
    if said.contains("Connection refused") {
        Some(format!("nothing answers ssh on {host} port {port}: is sshd running there, and the port right?"))
    } else if said.contains("Could not resolve hostname") {
        Some(format!("this machine cannot resolve the name {host}: a typo, or a name only your ssh config knows (add it there)"))
    } else if said.contains("timed out") {
        Some(format!("{host} does not answer within ssh's ConnectTimeout: is it up and reachable from here?"))
    } else if said.contains("Permission denied") {
        Some(format!(
            "{host} refused the login: check the target's user ({}) and that your key or agent is authorized there",
            if deployment.target.user.is_empty() { "ssh's default" } else { &deployment.target.user }
        ))
    } else if said.contains("UNKNOWN port 65535") || said.contains("kex_exchange_identification") {
        Some(format!(
            "the connection ended before ssh could talk to {host}: a ProxyCommand or ProxyJump in extraOptions or your ssh config failed (its own error is above)"
        ))
    } else if said.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") {
        Some(format!("{host}'s host key is not the one known here: check it, then update known_hosts"))
    } else if said.contains("host key is known for") || said.contains("Host key verification failed") {
        Some(format!(
            "{host}'s host key is not known here and ssh may not ask (StrictHostKeyChecking, or no terminal): check it, then add it to known_hosts (e.g. connect once with ssh)"
        ))
    } else {
        None
    }
}
