//! `krops man`: one whole page, krops(1). clap_mangen writes the synopsis and the options from
//! the command line's own definition; the commands, the selection grammar, the configuration
//! reference, exit status, environment and files are written here, so that the page never
//! points at per-command pages that do not exist.

use clap::Command;

/// The page in roff.
pub fn page(cli: Command) -> std::io::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(cli.clone());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    out.extend_from_slice(DESCRIPTION.as_bytes());
    man.render_options_section(&mut out)?;
    out.extend_from_slice(commands(&cli).as_bytes());
    for section in [SELECTING, CONFIGURATION, EXIT_STATUS, ENVIRONMENT, FILES, SEE_ALSO] {
        out.extend_from_slice(section.as_bytes());
    }
    man.render_version_section(&mut out)?;
    Ok(out)
}

/// Text for roff: backslashes doubled, and a line never starting with a control character.
fn escaped(text: &str) -> String {
    let text = text.replace('\\', "\\e").replace('-', "\\-");
    match text.chars().next() {
        Some('.' | '\'') => format!("\\&{text}"),
        _ => text,
    }
}

/// Every subcommand with its arguments and options, from clap's definition.
fn commands(cli: &Command) -> String {
    let mut roff = String::from(".SH COMMANDS\n");
    for command in cli.get_subcommands().filter(|c| !c.is_hide_set()) {
        let mut usage = format!("\\fBkrops {}\\fR", command.get_name());
        for arg in command.get_arguments().filter(|a| !a.is_hide_set() && a.get_id() != "help") {
            let value =
                arg.get_value_names().map(|v| v.join(" ")).unwrap_or_else(|| arg.get_id().to_string());
            let many = matches!(arg.get_action(), clap::ArgAction::Append);
            let shown = match arg.get_long() {
                Some(long) if arg.get_action().takes_values() => format!("\\-\\-{long} {value}"),
                Some(long) => format!("\\-\\-{long}"),
                None if arg.is_last_set() => format!("\\-\\- {value}..."),
                None if many => format!("{value}..."),
                None => value,
            };
            usage.push_str(&format!(" [{}]", shown));
        }
        roff.push_str(&format!(".TP\n{usage}\n"));
        if let Some(about) = command.get_long_about().or(command.get_about()) {
            roff.push_str(&format!("{}\n", escaped(&about.to_string())));
        }
        for arg in command.get_arguments().filter(|a| !a.is_hide_set() && a.get_long().is_some()) {
            if let (Some(long), Some(help)) = (arg.get_long(), arg.get_help()) {
                roff.push_str(&format!(".br\n\\fB\\-\\-{long}\\fR: {}\n", escaped(&help.to_string())));
            }
        }
    }
    roff
}

const DESCRIPTION: &str = r#".SH DESCRIPTION
krops deploys NixOS systems: it makes a set of sources (git checkouts, files, pass and passage
secrets, Nix derivations, command output, symbolic links) appear below a path on each target
(\fI/var/src\fR by default), over one multiplexed ssh connection per host (or locally), and
then runs \fBnixos-rebuild\fR there, so that the target evaluates exactly what was shipped.
Each source type is a populator plugin loaded at run time.
.PP
A deployment goes through the stages prepare (local work: plugins validate, git refs are
resolved, pipes run), connect, sentinel (\fI<path>/.populate\fR must exist, unless force),
backup, populate, and activate; a failure names the host, stage and source, keeps the failing
program's stderr, and never leads to activation.
"#;

const SELECTING: &str = r#".SH SELECTING DEPLOYMENTS
A NAME is a deployment's name, a group's name (lists, sets and scripts of deployments in a
configuration in Nix), a glob (\fBweb\-*\fR) or \fB@TAG\fR. NAMEs combine:
\fBA,B\fR either (union), \fBA&B\fR both (intersection), \fB!A\fR all but A's; \fB&\fR binds
tighter than \fB,\fR. A name as written wins over the grammar. Without NAME, every
deployment whose kind fits the command. \fB\-\-shard K/N\fR takes the K\-th of N stable parts
of the selection (by a hash of the names), for a CI job matrix.
"#;

const CONFIGURATION: &str = r#".SH CONFIGURATION
One data model in TOML, JSON or Nix. Relative paths are relative to the configuration file.
Unknown keys are errors naming the file and line.
.PP
\fB[deployments.NAME]\fR keys:
.TP
\fBtarget\fR
\fB[[USER]@]HOST[:PORT][/PATH]\fR, or a table of \fBhost\fR, \fBuser\fR, \fBport\fR,
\fBpath\fR, \fBsudo\fR, \fBextraOptions\fR (ssh options). Local (no ssh) when the host is
localhost or this machine, the user unset or the invoking user, and no port.
.TP
\fBbuildTarget\fR
where to build (same forms as target); \fBnixos\-rebuild \-\-build\-host\fR.
.TP
\fBoperation\fR
deploy: a nixos\-rebuild action (switch, boot, test, build, dry\-build, dry\-activate,
build\-vm, build\-vm\-with\-bootloader).
.TP
\fBbackup\fR, \fBforce\fR, \fBcrossDeploy\fR, \fBtrace\fR, \fBallocateTTY\fR
booleans: keep a hard\-linked copy in \fI.populate/backup\fR; create the sentinel;
\fB\-\-no\-build\-nix\fR; \fB\-\-show\-trace\fR; \fBssh \-t\fR for run.
.TP
\fBuseNixOutputMonitor\fR
"opportunistic", "optimistic", "pessimistic", true or false.
.TP
\fBcommand\fR
run: the command on the target (\fB$KROPS_TARGET_PATH\fR is the path).
.TP
\fBtags\fR, \fBkind\fR
tags for \fB@TAG\fR; "deploy", "build", "run" or "populate": the one command it serves.
.TP
\fBflake\fR
\fBSOURCE#ATTR\fR: deploy the populated flake.
.TP
\fBhealthChecks\fR, \fBrollback\fR, \fBconfirmTimeout\fR
checks after activation (\fB{command, timeout, retries}\fR or \fB{url, status}\fR); switch
back on failure; seconds within which krops must confirm, else the target rolls itself back.
.PP
\fB[deployments.NAME.source]\fR: one table per source, named by where it lands
(\fI<path>/<name>\fR; a \fB/\fR nests it), with exactly one type key:
\fBfile\fR {path, useChecksum, filters, deleteExcluded, exclude},
\fBgit\fR {url, ref, shallow, fetchAlways, clean.exclude},
\fBpass\fR {dir, name}, \fBpassage\fR {dir, identities_file, age},
\fBderivation\fR {text}, \fBpipe\fR {command}, \fBsymlink\fR {target}, or another plugin's type.
Shorthands: \fBfile = "PATH"\fR, \fBderivation = "EXPR"\fR, \fBpipe = "CMD"\fR,
\fBsymlink = "TARGET"\fR, \fBpassage = "DIR"\fR. Secrets land as 0600 files in 0700
directories and never touch the deploying machine's disk.
.PP
A \fIkrops.nix\fR is read as \fBnix\-build \-A NAME\fR reads it, with the original krops's
\fBlib\fR and \fBpkgs\fR at \fB<krops>\fR (writeDeploy, writeTest, writeCommand, populate,
evalSource, mkTarget).
"#;

const EXIT_STATUS: &str = r#".SH EXIT STATUS
.TP
\fB0\fR
success (diff/status \-\-exit\-code: nothing would change).
.TP
\fB1\fR
a deployment failed (the others still finish; the summary says which and why);
diff/status \-\-exit\-code: something would change or drifted.
.TP
\fB2\fR
usage or configuration error: nothing was touched (diff/status \-\-exit\-code: any error).
.TP
\fB129\fR, \fB130\fR, \fB143\fR
interrupted by SIGHUP, SIGINT, SIGTERM: children ended, ssh connections closed.
.PP
\fBkrops run\fR of one deployment exits with its command's status, as ssh does.
"#;

const ENVIRONMENT: &str = r#".SH ENVIRONMENT
.TP
\fBKROPS_PLUGIN_PATH\fR
colon\-separated directories searched for populator plugins before krops's own.
.TP
\fBLOGNAME\fR, \fBHOSTNAME\fR
the invoking user and this machine's name, which fill in and classify targets.
.TP
\fBNIX_PATH\fR
for a krops.nix: where \fB<nixpkgs>\fR is found.
.TP
\fBNO_COLOR\fR
no colours (unless \fB\-\-color always\fR).
.TP
\fBTMPDIR\fR
where the private ssh control directory is made.
"#;

const FILES: &str = r#".SH FILES
.TP
\fIkrops.toml\fR, \fIkrops.nix\fR, \fIkrops.json\fR
the configuration, in the current directory or the nearest one above it.
.TP
\fI<path>/.populate\fR
the sentinel on each target: populate stops where it is missing.
.TP
\fI<path>/.krops/\fR
krops's own directory on each target: the lock, the deploy record (\fBkrops status\fR) and
the confirm watchdog.
.TP
\fIlibkrops_populator_<type>.so\fR
plugins, in each \fB\-\-plugin\-dir\fR, \fBKROPS_PLUGIN_PATH\fR, the directory of the krops
executable and \fI<exe dir>/../lib/krops/plugins\fR.
"#;

const SEE_ALSO: &str = r#".SH SEE ALSO
\fBssh\fR(1), \fBrsync\fR(1), \fBnix\-build\fR(1), \fBnixos\-rebuild\fR(8)
"#;
