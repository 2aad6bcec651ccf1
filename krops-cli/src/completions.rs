//! `krops completions SHELL`: clap's script, completing deployment names, groups and `@TAG`s
//! too. Those come from the configuration when completing (`krops complete-names`, hidden), so
//! the script never goes stale.

use clap::Command;
use clap_complete::Shell;

/// The commands whose NAMEs are deployments.
const SELECTING: &str = "deploy build test run exec populate diff status eval";

/// The completion script for `shell`.
pub fn script(shell: Shell, mut cli: Command) -> String {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cli, "krops", &mut script);
    let script = String::from_utf8_lossy(&script).trim_end().to_owned();
    match shell {
        Shell::Bash => format!("{script}\n{BASH}"),
        Shell::Fish => format!(
            "{script}\ncomplete -c krops -n \"__fish_seen_subcommand_from {SELECTING}\" -f -a \"(timeout 5 krops complete-names 2>/dev/null)\""
        ),
        Shell::Zsh => {
            // The positional NAME(s) of the selecting commands complete with `_krops_names`.
            let named: String = script
                .lines()
                .map(|line| {
                    if (line.starts_with("'*::names -- ") || line.starts_with("'::name -- "))
                        && line.ends_with(":_default' \\")
                    {
                        format!("{}:_krops_names' \\", line.trim_end_matches(":_default' \\"))
                    } else {
                        line.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            named.replacen("\n_krops() {", &format!("\n{ZSH}\n_krops() {{"), 1)
        }
        _ => script,
    }
}

/// bash: the names of the configuration `-f` names (else the one found from here), asked for
/// at most 5 s (a krops.nix may take long to evaluate); after `--`, nothing of ours.
const BASH: &str = r#"# Deployment names, groups and @TAGs for the commands that take them.
_krops_with_names() {
    _krops "$@"
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} word i file=()
    case $cur in -*) return ;; esac
    case $prev in
        -f|--file|--plugin-dir|--operation|--color|--jobs|--arg|--argstr|--wait-lock|--shard|--log-dir|--reboot-timeout) return ;;
    esac
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${COMP_WORDS[i]}
        case $word in
            --) return ;;
            -f|--file) file=(-f "${COMP_WORDS[i+1]}") ;;
        esac
    done
    for word in "${COMP_WORDS[@]:1:COMP_CWORD-1}"; do
        case " deploy build test run exec populate diff status eval " in
            *" $word "*)
                COMPREPLY=($(compgen -W "$(timeout 5 krops "${file[@]}" complete-names 2>/dev/null)" -- "$cur"))
                return ;;
        esac
    done
}
complete -F _krops_with_names -o bashdefault -o default krops"#;

const ZSH: &str = r#"_krops_names() {
    local -a names
    names=(${(f)"$(timeout 5 krops complete-names 2>/dev/null)"})
    compadd -a names
}"#;
