//! The one place where krops starts processes. Every child's stdout and stderr are drained
//! concurrently (a full pipe would otherwise deadlock), and a failure keeps the child's stderr
//! so the user sees why it failed.
//!
//! Every child is also *supervised*, so that a run ends cleanly however it ends:
//! - it is registered while it runs, and [`end_all`] (the signal path) refuses new children and
//!   ends the registered ones, with their process groups (a pipe command's own children too);
//! - it is started by one long-lived spawner thread with `PR_SET_PDEATHSIG`, so the kernel ends
//!   it when krops itself dies, even of SIGKILL (the death signal follows the spawning
//!   *thread*, hence one thread that lives as long as the process).
//!
//! A child that rides on a shared connection (an ssh ControlMaster) takes one of its
//! [`Sessions`] before it starts and gives it back once reaped.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::Duration;

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

/// A command as an argv vector; the program is `argv[0]`. It may ride on a shared
/// connection, whose sessions it takes one of while it runs.
#[derive(Debug, Clone)]
pub struct Argv(pub Vec<String>, Option<Sessions>);

impl Argv {
    pub fn new(words: Vec<String>) -> Argv {
        Argv(words, None)
    }

    /// This command, taking one of `sessions` while it runs.
    pub fn riding(self, sessions: Option<Sessions>) -> Argv {
        Argv(self.0, sessions)
    }

    /// Waits for a session of the connection this command rides on, if it rides on one.
    fn take_session(&self) -> Option<Session> {
        self.1.as_ref().map(Sessions::take)
    }

    /// The command line as a shell would read it (for `-vv`; secrets never travel in argv).
    pub fn display(&self) -> String {
        crate::shell_words::join(&self.0)
    }

    pub fn program(&self) -> &str {
        self.0.first().map_or("", String::as_str)
    }

    #[allow(clippy::disallowed_methods)] // the one place that may
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
    Failed {
        program: String,
        status: ExitStatus,
        stderr: String,
        /// What it printed before failing, when its output was captured.
        stdout: Vec<u8>,
    },
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

/// The lines of a child's output, whatever its bytes: text that is not UTF-8 is shown with
/// replacement characters instead of failing the child that printed it.
fn lossy_lines(pipe: impl Read) -> impl Iterator<Item = std::io::Result<String>> {
    let mut reader = BufReader::new(pipe);
    std::iter::from_fn(move || {
        let mut line = Vec::new();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => None,
            Ok(_) => {
                if line.ends_with(b"\n") {
                    line.pop();
                }
                Some(Ok(String::from_utf8_lossy(&line).into_owned()))
            }
            Err(e) => Some(Err(e)),
        }
    })
}

/// How much of a failed child's stderr is kept for the error message.
const STDERR_KEPT: usize = 16 * 1024;

/// Children that may talk to the user on the terminal (ssh authenticating, sudo asking for a
/// password, a `run` on a terminal) stay in krops's process group: in a group of their own they
/// would be stopped (SIGTTIN) when they read the terminal. Every other child gets its own group,
/// so that ending it ends whatever it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    Own,
    Krops,
}

/// Whether the user can answer a child's prompt: the binary says so once (whether its stdin
/// is a terminal); the library itself knows nothing of terminals.
static PROMPTS: AtomicBool = AtomicBool::new(false);

/// Tells the library whether children that inherit stdin may prompt the user (ssh's passphrase
/// and host-key questions): they then stay in krops's process group, the terminal's.
pub fn allow_prompts(allowed: bool) {
    PROMPTS.store(allowed, Ordering::Relaxed);
}

/// See [`allow_prompts`].
pub fn prompts_allowed() -> bool {
    PROMPTS.load(Ordering::Relaxed)
}

fn group_for(argv: &Argv, input: &Input<'_>) -> Group {
    let interactive = matches!(input, Input::Inherit) && prompts_allowed();
    if interactive || argv.program() == "sudo" {
        Group::Krops
    } else {
        Group::Own
    }
}

/// The sessions of one shared connection (an ssh ControlMaster): at most `limit` children ride
/// on it at once, the others wait their turn, first come first served. A child holds its
/// session until it is reaped and never waits for another, so the queue moves as long as the
/// children that hold theirs while their deployment's other commands wait (the target locks)
/// leave some free (see `ssh::DEPLOYMENTS_PER_CONNECTION`).
#[derive(Clone)]
pub struct Sessions(Arc<(Mutex<Queue>, Condvar)>);

/// Sessions in use, and tickets: the next to hand out, and the one whose turn it is.
struct Queue {
    limit: usize,
    in_use: usize,
    next: u64,
    turn: u64,
}

impl Sessions {
    pub fn new(limit: usize) -> Sessions {
        let queue = Queue { limit: limit.max(1), in_use: 0, next: 0, turn: 0 };
        Sessions(Arc::new((Mutex::new(queue), Condvar::new())))
    }

    /// Waits for a free session in turn; it is free again when the [`Session`] is dropped.
    fn take(&self) -> Session {
        let (queue, changed) = &*self.0;
        // A panic elsewhere cannot leave the counters half-updated: they are plain numbers.
        let mut queue = queue.lock().unwrap_or_else(PoisonError::into_inner);
        let ticket = queue.next;
        queue.next += 1;
        while queue.turn != ticket || queue.in_use >= queue.limit {
            queue = changed.wait(queue).unwrap_or_else(PoisonError::into_inner);
        }
        queue.turn += 1;
        queue.in_use += 1;
        // The next in line may fit too.
        changed.notify_all();
        Session(self.clone())
    }
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let queue = self.0 .0.lock().unwrap_or_else(PoisonError::into_inner);
        write!(f, "Sessions({} of {} in use)", queue.in_use, queue.limit)
    }
}

/// One session taken from [`Sessions`], given back when dropped.
struct Session(Sessions);

impl Drop for Session {
    fn drop(&mut self) {
        let (queue, changed) = &*self.0 .0;
        queue.lock().unwrap_or_else(PoisonError::into_inner).in_use -= 1;
        changed.notify_all();
    }
}

/// pid → whether it leads its own process group, for every running child.
static RUNNING: Mutex<BTreeMap<u32, Group>> = Mutex::new(BTreeMap::new());
/// Set by [`end_all`]: no child starts afterwards (so no activation starts after a signal).
static ENDING: AtomicBool = AtomicBool::new(false);

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Starts `command` from the spawner thread, with the death signal set, and registers it.
fn spawn(mut command: Command, group: Group) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    if group == Group::Own {
        command.process_group(0);
    }
    #[allow(unsafe_code)]
    // SAFETY: the closure runs between fork and exec and only makes one prctl system call,
    // which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
    let spawner = SPAWNER.get_or_init(|| {
        let (sender, requests) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("krops-spawner".into())
            .spawn(move || {
                for (mut command, reply) in requests {
                    let _ = reply.send(command.spawn());
                }
            })
            .map(drop)
            .unwrap_or_else(|e| {
                tracing::warn!("no spawner thread ({e}); children may outlive a killed krops")
            });
        Mutex::new(sender)
    });
    let (reply, answer) = mpsc::channel();
    let mut running = RUNNING.lock().map_err(|_| std::io::Error::other("process registry poisoned"))?;
    if ENDING.load(Ordering::SeqCst) {
        return Err(std::io::Error::other("krops is shutting down"));
    }
    let sent = spawner.lock().map_err(|_| std::io::Error::other("spawner poisoned"))?.send((command, reply));
    let child = match sent {
        Ok(()) => answer.recv().map_err(|_| std::io::Error::other("spawner thread gone"))??,
        // No spawner thread: start it here, without the guarantee for a killed krops.
        Err(mpsc::SendError((mut command, _))) => command.spawn()?,
    };
    running.insert(child.id(), group);
    Ok(child)
}

/// Waits for a supervised child and takes it off the register.
fn wait(child: &mut Child) -> std::io::Result<ExitStatus> {
    let status = child.wait();
    if let Ok(mut running) = RUNNING.lock() {
        running.remove(&child.id());
    }
    status
}

/// The signal path: from now on no child starts, and every running one is asked to end
/// (SIGTERM to it and its group), then, after a short grace, killed.
pub fn end_all() {
    use rustix::process::{kill_process, kill_process_group, Pid, Signal};
    ENDING.store(true, Ordering::SeqCst);
    let signal_all = |signal: Signal| {
        let running = RUNNING.lock().map(|r| r.clone()).unwrap_or_default();
        for (pid, group) in &running {
            let Some(pid) = i32::try_from(*pid).ok().and_then(Pid::from_raw) else { continue };
            let _ = match group {
                Group::Own => kill_process_group(pid, signal),
                Group::Krops => kill_process(pid, signal),
            };
        }
        !running.is_empty()
    };
    if signal_all(Signal::TERM) {
        let deadline = std::time::Instant::now() + Duration::from_millis(500);
        while std::time::Instant::now() < deadline && RUNNING.lock().is_ok_and(|r| !r.is_empty()) {
            std::thread::sleep(Duration::from_millis(10));
        }
        signal_all(Signal::KILL);
    }
}

/// Runs `argv` to completion. Returns stdout (empty unless `output` is `Capture`).
pub fn run(
    argv: &Argv,
    env: &[(&str, &str)],
    input: Input<'_>,
    output: Output<'_>,
) -> Result<Vec<u8>, ExecError> {
    let program = argv.program().to_owned();
    let mut command = argv.command()?;
    // Until the child is reaped.
    let _session = argv.take_session();
    command.envs(env.iter().copied());
    command.stdin(match input {
        Input::Null => Stdio::null(),
        Input::Bytes(_) => Stdio::piped(),
        Input::Inherit => Stdio::inherit(),
    });
    let inherit = matches!(output, Output::Inherit);
    command.stdout(if inherit { Stdio::inherit() } else { Stdio::piped() });
    command.stderr(if inherit { Stdio::inherit() } else { Stdio::piped() });
    let group = group_for(argv, &input);
    let mut child =
        spawn(command, group).map_err(|source| ExecError::Spawn { program: program.clone(), source })?;

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
                for line in lossy_lines(pipe) {
                    let line = crate::shell_words::unmarked(&line?);
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
            (Some(pipe), Some(f)) => lossy_lines(pipe).try_for_each(|line| {
                f(Stream::Stdout, &line?);
                Ok(())
            }),
            (Some(mut pipe), None) => pipe.read_to_end(&mut collected).map(drop),
            (None, _) => Ok(()),
        };
        let stderr_result = stderr_reader.join().unwrap_or_else(|_| Ok(String::new()));
        (stdout_result.map(|()| collected), stderr_result)
    });
    let status = wait(&mut child).map_err(io_error)?;
    let stdout = stdout.map_err(io_error)?;
    let stderr = stderr.map_err(io_error)?;
    if status.success() {
        Ok(stdout)
    } else {
        Err(ExecError::Failed { program, status, stderr, stdout })
    }
}

/// A long-running child (an ssh ControlMaster). Its stdin is /dev/null, so it never eats the
/// user's piped input; ssh asks for passphrases on the terminal (or through SSH_ASKPASS)
/// regardless. Its stderr is collected in the background for when it fails.
pub struct Background {
    pub program: String,
    child: std::process::Child,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    /// Reads `stderr` until the pipe's end.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    pub fn start(argv: &Argv) -> Result<Background, ExecError> {
        let program = argv.program().to_owned();
        let mut command = argv.command()?;
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        // An ssh master may ask for a passphrase or a host key on the terminal.
        let mut child = spawn(command, Group::Krops)
            .map_err(|source| ExecError::Spawn { program: program.clone(), source })?;
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let reader = child.stderr.take().map(|pipe| {
            let sink = stderr.clone();
            std::thread::spawn(move || {
                for line in lossy_lines(pipe).map_while(Result::ok) {
                    if let Ok(mut kept) = sink.lock() {
                        kept.push_str(&line);
                        kept.push('\n');
                    }
                }
            })
        });
        Ok(Background { program, child, stderr, reader })
    }

    /// `Some(error)` once the child has exited, with what it printed.
    pub fn exited(&mut self) -> Option<ExecError> {
        match self.child.try_wait() {
            Ok(None) => None,
            Ok(Some(status)) => {
                // The reader has the last lines once the pipe ends, which may take longer than
                // the exit on a loaded machine; a child of the child (a ProxyCommand) may hold
                // the pipe open, so the wait is bounded.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
                while self.reader.as_ref().is_some_and(|r| !r.is_finished())
                    && std::time::Instant::now() < deadline
                {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                let stderr = self.stderr.lock().map(|s| s.clone()).unwrap_or_default();
                Some(ExecError::Failed { program: self.program.clone(), status, stderr, stdout: Vec::new() })
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
        let _ = wait(&mut self.child);
    }
}

/// A child that holds something for as long as krops keeps its standard input open: the
/// target-side lock. It reports its state as its first line of output; closing its input (by
/// [`Held::release`], or by krops dying in any way) ends it, and with it what it held.
pub struct Held {
    program: String,
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    /// The session it rides on, if any: given back once it is reaped.
    _session: Option<Session>,
}

impl Held {
    /// Starts `argv` and reads its output up to the first line that is its answer (`locked`,
    /// `missing`, `busy …`: any line not prefixed `state `, `record ` or `profile `); returns that line
    /// (trimmed) and the lines before it. A child that ends without answering is an error
    /// carrying its stderr.
    pub fn start(argv: &Argv) -> Result<(Held, String, Vec<String>), ExecError> {
        let program = argv.program().to_owned();
        let mut command = argv.command()?;
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let session = argv.take_session();
        let child = spawn(command, group_for(argv, &Input::Null))
            .map_err(|source| ExecError::Spawn { program: program.clone(), source })?;
        let mut held = Held { program: program.clone(), child, stdin: None, _session: session };
        held.stdin = held.child.stdin.take();
        let mut before = Vec::new();
        let mut answer = String::new();
        if let Some(stdout) = held.child.stdout.take() {
            for line in lossy_lines(stdout) {
                let Ok(line) = line else { break };
                if ["state ", "record ", "profile "].iter().any(|prefix| line.starts_with(prefix)) {
                    before.push(line);
                } else {
                    answer = line;
                    break;
                }
            }
        }
        if answer.is_empty() {
            let mut stderr = String::new();
            if let Some(mut pipe) = held.child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            let status =
                wait(&mut held.child).map_err(|source| ExecError::Io { program: program.clone(), source })?;
            return Err(ExecError::Failed { program, status, stderr, stdout: Vec::new() });
        }
        Ok((held, answer.trim().to_owned(), before))
    }

    /// Writes one line to the child's input (it answers nothing).
    pub fn tell(&mut self, line: &str) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = stdin.write_all(format!("{line}\n").as_bytes());
        }
    }

    /// Tells the child `done` and closes its input, without waiting for it to end (that is a
    /// round trip for a remote child): a thread reaps it. A child whose input closes without
    /// `done` knows krops did not end well.
    pub fn let_go(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"done\n");
        }
        std::thread::spawn(move || self.release());
    }

    /// Tells the child `done`, closes its input and waits for it to end (killing it after a
    /// grace period).
    pub fn release(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"done\n");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        let _ = self.child.kill();
        let _ = wait(&mut self.child);
        tracing::trace!(program = %self.program, "released");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// At most `limit` sessions at once; a waiter gets one when one is given back, in turn.
    #[test]
    fn sessions_queue_in_turn_up_to_their_limit() {
        let sessions = Sessions::new(2);
        let first = sessions.take();
        let second = sessions.take();
        let (got, order) = mpsc::channel();
        let waiters: Vec<_> = (0..2)
            .map(|n| {
                let (sessions, got) = (sessions.clone(), got.clone());
                let waiter = std::thread::spawn(move || {
                    let session = sessions.take();
                    got.send(n).unwrap();
                    session
                });
                // The second waiter queues behind the first.
                std::thread::sleep(Duration::from_millis(50));
                waiter
            })
            .collect();
        assert!(
            order.recv_timeout(Duration::from_millis(100)).is_err(),
            "a third session while two are taken"
        );
        drop(first);
        assert_eq!(order.recv_timeout(Duration::from_secs(5)), Ok(0));
        assert!(
            order.recv_timeout(Duration::from_millis(100)).is_err(),
            "a third session while two are taken"
        );
        drop(second);
        assert_eq!(order.recv_timeout(Duration::from_secs(5)), Ok(1));
        for waiter in waiters {
            drop(waiter.join().unwrap());
        }
        assert_eq!(format!("{sessions:?}"), "Sessions(0 of 2 in use)");
    }
}
