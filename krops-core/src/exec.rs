//! The one place where krops starts processes. Every child's stdout and stderr are drained
//! concurrently (a full pipe would otherwise deadlock), and a failure keeps the child's stderr
//! so the user sees why it failed.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, ExitStatus, Stdio};

/// What the child reads.
pub enum Input<'a> {
    Null,
    Bytes(&'a [u8]),
    /// The user's terminal (interactive `run`).
    Inherit,
}

/// Which stream a forwarded line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Where the child's output goes.
pub enum Output<'a> {
    /// Collect stdout; stderr is kept for errors.
    Capture,
    /// Hand every line of both streams to a callback as it arrives (activation logs).
    Lines(&'a (dyn Fn(Stream, &str) + Sync)),
    /// The user's terminal.
    Inherit,
}

/// A command as an argv vector; the program is `argv[0]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Argv(pub Vec<String>);

impl Argv {
    pub fn program(&self) -> &str {
        self.0.first().map_or("", String::as_str)
    }

    fn command(&self) -> Result<Command, ExecError> {
        let (program, args) = self.0.split_first().ok_or_else(|| ExecError::Spawn {
            program: String::new(),
            source: std::io::Error::other("empty command line"),
        })?;
        let mut command = Command::new(program);
        command.args(args);
        Ok(command)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot start {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("{program} failed ({status}){}", stderr_suffix(stderr))]
    Failed { program: String, status: ExitStatus, stderr: String },
    #[error("{program}: {source}")]
    Io { program: String, source: std::io::Error },
}

fn stderr_suffix(stderr: &str) -> String {
    let stderr = stderr.trim_end();
    if stderr.is_empty() {
        String::new()
    } else {
        format!(":\n{stderr}")
    }
}

/// How much of a failed child's stderr is kept for the error message.
const STDERR_KEPT: usize = 16 * 1024;

/// Runs `argv` to completion. Returns stdout (empty unless `output` is `Capture`).
pub fn run(
    argv: &Argv,
    env: &[(&str, &str)],
    input: Input<'_>,
    output: Output<'_>,
) -> Result<Vec<u8>, ExecError> {
    let program = argv.program().to_owned();
    let mut command = argv.command()?;
    command.envs(env.iter().copied());
    command.stdin(match input {
        Input::Null => Stdio::null(),
        Input::Bytes(_) => Stdio::piped(),
        Input::Inherit => Stdio::inherit(),
    });
    let inherit = matches!(output, Output::Inherit);
    command.stdout(if inherit { Stdio::inherit() } else { Stdio::piped() });
    command.stderr(if inherit { Stdio::inherit() } else { Stdio::piped() });
    let mut child =
        command.spawn().map_err(|source| ExecError::Spawn { program: program.clone(), source })?;

    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let io_error = |source| ExecError::Io { program: program.clone(), source };
    let (stdout, stderr) = std::thread::scope(|scope| {
        if let (Some(mut pipe), Input::Bytes(bytes)) = (stdin, &input) {
            scope.spawn(move || {
                // A child that exits without reading all of its input is not our error; its
                // exit status tells.
                let _ = pipe.write_all(bytes);
            });
        }
        let forward = match &output {
            Output::Lines(f) => Some(*f),
            _ => None,
        };
        let stderr_reader = scope.spawn(move || -> std::io::Result<String> {
            let mut kept = String::new();
            if let Some(pipe) = stderr {
                for line in BufReader::new(pipe).lines() {
                    let line = line?;
                    if let Some(f) = forward {
                        f(Stream::Stderr, &line);
                    }
                    kept.push_str(&line);
                    kept.push('\n');
                    if kept.len() > 2 * STDERR_KEPT {
                        let cut = kept.len() - STDERR_KEPT;
                        let cut = (cut..kept.len()).find(|i| kept.is_char_boundary(*i)).unwrap_or(cut);
                        kept.drain(..cut);
                    }
                }
            }
            Ok(kept)
        });
        let mut collected = Vec::new();
        let stdout_result = match (stdout, forward) {
            (Some(pipe), Some(f)) => BufReader::new(pipe).lines().try_for_each(|line| {
                f(Stream::Stdout, &line?);
                Ok(())
            }),
            (Some(mut pipe), None) => pipe.read_to_end(&mut collected).map(drop),
            (None, _) => Ok(()),
        };
        let stderr_result = stderr_reader.join().unwrap_or_else(|_| Ok(String::new()));
        (stdout_result.map(|()| collected), stderr_result)
    });
    let status = child.wait().map_err(io_error)?;
    let stdout = stdout.map_err(io_error)?;
    let stderr = stderr.map_err(io_error)?;
    if status.success() {
        Ok(stdout)
    } else {
        Err(ExecError::Failed { program, status, stderr })
    }
}

/// A long-running child (an ssh ControlMaster). Its stdin is /dev/null, so it never eats the
/// user's piped input; ssh asks for passphrases on the terminal (or through SSH_ASKPASS)
/// regardless. Its stderr is collected in the background for when it fails.
pub struct Background {
    pub program: String,
    child: std::process::Child,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Background {
    pub fn start(argv: &Argv) -> Result<Background, ExecError> {
        let program = argv.program().to_owned();
        let mut child = argv
            .command()?
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ExecError::Spawn { program: program.clone(), source })?;
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        if let Some(pipe) = child.stderr.take() {
            let sink = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Ok(mut kept) = sink.lock() {
                        kept.push_str(&line);
                        kept.push('\n');
                    }
                }
            });
        }
        Ok(Background { program, child, stderr })
    }

    /// `Some(error)` once the child has exited, with what it printed.
    pub fn exited(&mut self) -> Option<ExecError> {
        match self.child.try_wait() {
            Ok(None) => None,
            Ok(Some(status)) => {
                // Let the reader thread catch the last lines.
                std::thread::sleep(std::time::Duration::from_millis(20));
                let stderr = self.stderr.lock().map(|s| s.clone()).unwrap_or_default();
                Some(ExecError::Failed { program: self.program.clone(), status, stderr })
            }
            Err(source) => Some(ExecError::Io { program: self.program.clone(), source }),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Ends the child and reaps it.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
