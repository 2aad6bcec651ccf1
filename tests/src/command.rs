//! Running a helper command (ssh-keygen, git, gpg, age, apt-get, …) for tests and xtask:
//! stdin fed or closed, stdout returned, and on failure an error with the command line, its
//! status and its stderr.

use std::io::Write;
use std::process::{Command, Stdio};

/// Runs `command` to completion, feeding it `input` (else /dev/null); returns its stdout.
pub fn output(command: &mut Command, input: Option<&[u8]>) -> Result<String, String> {
    let mut child = command
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(bytes).map_err(|e| format!("{command:?}: cannot write its input: {e}"))?;
    }
    let output = child.wait_with_output().map_err(|e| format!("{command:?}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
