//! What every stage shares: its start and end reported around its work (`timed`), failures
//! as [`DeployError`]s naming host, stage, source and program, and a stage's script run on a
//! host.

use std::time::Instant;

use crate::events::{DeployError, Level, Reporter, Stage};
use crate::exec::{self, Input, Output};
use crate::transport::{Transport, Tty};

/// Runs `work` as `stage` on `host` (`None`: before any host), reporting its start and, when
/// it succeeds, its end.
pub(crate) fn timed<T>(
    reporter: &Reporter,
    host: &Option<String>,
    stage: Stage,
    work: impl FnOnce() -> Result<T, DeployError>,
) -> Result<T, DeployError> {
    let started = Instant::now();
    reporter.stage_started(host, stage);
    let result = work()?;
    reporter.stage_finished(host, stage, started.elapsed());
    Ok(result)
}

/// How `stage` failed on `host`, for a source or the whole stage.
pub(crate) fn failure(
    host: &Option<String>,
    stage: Stage,
    source: Option<&str>,
    message: String,
) -> DeployError {
    DeployError::new(host.clone(), stage, source.map(str::to_owned), None, message)
}

/// A failed child as a [`DeployError`] naming `program`: what the command line ran (through
/// `/bin/sh`, ssh or sudo, which say nothing). ssh's own failures (exit status 255: the
/// connection) are ssh's.
pub(crate) fn exec_failure(
    host: &Option<String>,
    stage: Stage,
    program: &str,
    error: exec::ExecError,
) -> DeployError {
    let status = match &error {
        // A child killed by a signal ends as a shell reports it: 128 + the signal.
        exec::ExecError::Failed { status, .. } => {
            status.code().or_else(|| std::os::unix::process::ExitStatusExt::signal(status).map(|s| 128 + s))
        }
        _ => None,
    };
    let program = match (&error, status) {
        (exec::ExecError::Failed { program: ssh, .. }, Some(255)) if ssh == "ssh" => "ssh",
        _ => program,
    };
    let mut failed = DeployError::new(host.clone(), stage, None, Some(program.to_owned()), error.to_string());
    failed.exit_status = status;
    failed
}

/// How a user's command is named in errors: the command itself, shortened.
pub(crate) fn user_command(command: &str) -> String {
    let command = command.trim();
    match command.char_indices().nth(60) {
        Some((cut, _)) => format!("`{}…`", &command[..cut]),
        None => format!("`{command}`"),
    }
}

/// The program a plugin's error is about, from its first words (`rsync failed (…)`), where
/// the host ran it; a script run through ssh or a shell is named as the type's plugin says
/// (a user's command by its text), and so are errors naming no program of a plugin that does
/// its program's work in-process.
pub(crate) fn program_of_plugin_error(source: &crate::config::Source, message: &str) -> Option<String> {
    let ran = message.split_once(" failed (").map(|(program, _)| program).filter(|p| !p.contains(' '));
    let traits = &source.traits;
    let declared = || match &traits.program_attribute {
        Some(attribute) => source.attrs.get(attribute).and_then(|c| c.as_str()).map(user_command),
        None => traits.program.clone(),
    };
    match ran {
        Some("ssh" | "sudo" | "/bin/sh") => declared(),
        Some(program) => Some(program.to_owned()),
        None if traits.program_in_process => declared(),
        None => None,
    }
}

/// Runs one stage's script on `host`, turning failure into a [`DeployError`].
pub(crate) fn stage_script(
    host: &Transport,
    stage: Stage,
    script: &str,
    args: &[String],
    reporter: &Reporter,
) -> Result<Vec<u8>, DeployError> {
    let argv = host.shell(script, args, &[], Tty::No);
    reporter.log(&host.host_label(), Level::Trace, format!("running {}", argv.display()));
    exec::run(&argv, &[], Input::Null, Output::Capture)
        .map_err(|e| exec_failure(&host.host_label(), stage, "sh", e))
}
