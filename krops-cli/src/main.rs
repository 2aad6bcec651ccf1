//! The `krops` command: parse the command line, load plugins and configuration, run the
//! pipeline, render its events. Everything that deploys lives in the krops library (lib.rs).

mod completions;
mod man;
mod render;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use krops::config::{self, Kind};
use krops::exec;
use krops::loader::{self, search_dirs, Registry, Strict};
use krops::pipeline::{self, Action};
use krops::select::{select, Purpose, Shard};
use krops::ssh::Multiplexer;
use tokio::signal::unix::{signal, Signal, SignalKind};

#[derive(Parser)]
#[command(name = "krops", version, about = "Deploy NixOS systems, remotely or locally")]
struct Cli {
    /// Configuration file (default: the first of ./krops.toml, ./krops.nix, ./krops.json)
    #[arg(short = 'f', long = "file", global = true, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Also look for populator plugins in DIR (searched first)
    #[arg(long = "plugin-dir", global = true, value_name = "DIR")]
    plugin_dirs: Vec<PathBuf>,
    /// More output: -v each stage, -vv each command krops runs
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only errors and the summary
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Machine-readable output: one JSON object per line on stdout (schema in the README)
    #[arg(long, global = true)]
    json: bool,
    /// Colours: auto (on a terminal, unless NO_COLOR is set), always, never
    #[arg(long, global = true, value_name = "WHEN", default_value = "auto", value_parser = ["auto", "always", "never"])]
    color: String,
    /// Deployments to run at once (the work is network-bound)
    #[arg(long, global = true, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    jobs: u16,
    /// For a .nix configuration that is a function: its argument NAME is the Nix expression EXPR
    #[arg(long = "arg", global = true, num_args = 2, value_names = ["NAME", "EXPR"], action = clap::ArgAction::Append)]
    arg: Vec<String>,
    /// For a .nix configuration that is a function: its argument NAME is the string VALUE
    #[arg(long = "argstr", global = true, num_args = 2, value_names = ["NAME", "VALUE"], action = clap::ArgAction::Append)]
    argstr: Vec<String>,
    /// Pass --show-trace to nix when evaluating a .nix configuration
    #[arg(long = "show-trace", global = true)]
    show_trace: bool,
    /// Wait up to SECONDS for another krops run's lock on a target instead of failing
    #[arg(long = "wait-lock", global = true, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(0..=604_800))]
    wait_lock: Option<u64>,
    /// Act on the K-th of N parts of the selected deployments (split by name hash: stable and
    /// balanced), e.g. one part per runner of a CI job matrix
    #[arg(long, global = true, value_name = "K/N")]
    shard: Option<Shard>,
    /// Also write each deployment's whole story (every stage, output line and the whole error)
    /// to DIR/NAME.log
    #[arg(long = "log-dir", global = true, value_name = "DIR")]
    log_dir: Option<PathBuf>,
    /// deploy, build, run, populate: show what populate would change on every target first, and
    /// go on only when you say so (on the terminal)
    #[arg(long, global = true, conflicts_with = "json")]
    interactive: bool,
    #[command(subcommand)]
    command: Command,
}

/// nixos-rebuild's actions, for `--operation`.
#[derive(Clone, Copy, ValueEnum)]
#[value(rename_all = "kebab-case")]
enum Operation {
    Switch,
    Boot,
    Test,
    Build,
    DryBuild,
    DryActivate,
    BuildVm,
    BuildVmWithBootloader,
}

#[derive(Subcommand)]
enum Command {
    /// Populate, then nixos-rebuild OPERATION on the build host
    Deploy {
        /// Deployments: names, groups, globs (web-*) or @TAG, combined with `,` (or), `&` (and), `!` (all but); none: every deployment of kind deploy
        #[arg(value_name = "NAME")]
        names: Vec<String>,
        /// nixos-rebuild action (default: the configuration's, else switch)
        #[arg(long, value_name = "OP")]
        operation: Option<Operation>,
        /// After a switch or boot: reboot the target, wait for it to come back with a new boot
        /// id, then run the health checks
        #[arg(long)]
        reboot: bool,
        /// How long --reboot waits for the target to come back
        #[arg(long, value_name = "SECONDS", default_value_t = 300, requires = "reboot", value_parser = clap::value_parser!(u64).range(1..=86_400))]
        reboot_timeout: u64,
    },
    /// Populate, then nix-build the system without activating anything
    ///
    /// `krops test` is this command, as in the original krops (its writeTest). It is not
    /// `nixos-rebuild test`, which activates: use `krops deploy --operation test` for that.
    #[command(alias = "test")]
    Build {
        /// Deployments: names, groups, globs (web-*) or @TAG, combined with `,` (or), `&` (and), `!` (all but); none: every deployment of kind build
        #[arg(value_name = "NAME")]
        names: Vec<String>,
        /// Pass --show-trace to nix-build
        #[arg(long)]
        trace: bool,
    },
    /// Populate, then run the deployment's command (or CMD) on the target; exits with its status
    Run {
        /// The deployment; may be left out when only one fits run
        name: Option<String>,
        #[arg(last = true, value_name = "CMD")]
        argv: Vec<String>,
    },
    /// Run CMD on each selected deployment's target, in parallel, populating nothing
    Exec {
        /// Deployments: names, groups, globs (web-*) or @TAG, combined with `,` (or), `&` (and), `!` (all but); none: every deployment
        #[arg(value_name = "NAME")]
        names: Vec<String>,
        /// The command and its arguments (one argument: a shell command line)
        #[arg(last = true, required = true, value_name = "CMD")]
        argv: Vec<String>,
    },
    /// Populate only
    Populate {
        /// Deployments: names, groups, globs (web-*) or @TAG, combined with `,` (or), `&` (and), `!` (all but); none: every deployment
        #[arg(value_name = "NAME")]
        names: Vec<String>,
    },
    /// What populate would change on each target; changes nothing
    Diff {
        /// Deployments: names, groups, globs (web-*) or @TAG, combined with `,` (or), `&` (and), `!` (all but); none: every deployment
        #[arg(value_name = "NAME")]
        names: Vec<String>,
        /// Exit 1 when populate would change something (0: nothing, 2: an error)
        #[arg(long)]
        exit_code: bool,
    },
    /// What was last deployed to each target, and what drifted since; changes nothing
    Status {
        /// Deployments: names, groups, globs (web-*) or @TAG, combined with `,` (or), `&` (and), `!` (all but); none: every deployment
        #[arg(value_name = "NAME")]
        names: Vec<String>,
        /// Exit 1 when a target drifted or was never deployed (0: as recorded, 2: an error)
        #[arg(long)]
        exit_code: bool,
    },
    /// Print the normalised configuration as JSON; touches no target
    Eval {
        /// Deployments: names, groups, globs (web-*) or @TAG, combined with `,` (or), `&` (and), `!` (all but); none: every deployment
        #[arg(value_name = "NAME")]
        names: Vec<String>,
        /// Only the selected deployments' names, one a line (with --json: one `names` event)
        #[arg(long = "names")]
        names_only: bool,
    },
    /// List the populator plugins found: type, version, file (broken ones on stderr, exit 2)
    Plugins,
    /// Print a shell completion script on stdout
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout; `cargo xtask install` installs it
    #[command(hide = true)]
    Man,
    /// The configuration's deployment names, group names and @TAGs, one a line, for the
    /// completion scripts (nothing when there is no configuration)
    #[command(hide = true, name = "complete-names")]
    CompleteNames,
}

/// A failure before anything was touched: usage or configuration (exit 2).
struct UsageError(anyhow::Error);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(loader::PROBE_ARGUMENT) {
        return loader::probe_main(&args[2..]);
    }
    // Usage errors found by clap end the process there; with --json they still answer in JSON.
    let json = args.iter().skip(1).take_while(|a| *a != "--").any(|a| a == "--json");
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(error) if json && error.use_stderr() => {
            let _ = error.print();
            let message = error.kind().to_string();
            let error = serde_json::json!({ "message": message, "detail": error.to_string(), "program": null, "exit_status": null, "stderr_tail": null, "hint": null, "host": null, "stage": null, "source": null, "rollback": null });
            render::print_json(serde_json::json!({ "event": "error", "error": error, "exit_status": 2 }));
            render::print_summary_of_no_deployments(2);
            return ExitCode::from(2);
        }
        Err(error) => error.exit(),
    };
    render::init_tracing(cli.verbose, cli.quiet, render::colors(&cli.color));
    exec::allow_prompts({
        use std::io::IsTerminal;
        std::io::stdin().is_terminal()
    });
    match run(cli) {
        Ok(code) => code,
        Err(UsageError(error)) => {
            let message = format!("{error:#}");
            eprintln!("krops: {}", render::shown(&message));
            if json {
                let error = serde_json::json!({ "message": message, "detail": null, "program": null, "exit_status": null, "stderr_tail": null, "hint": null, "host": null, "stage": null, "source": null, "rollback": null });
                render::print_json(serde_json::json!({ "event": "error", "error": error, "exit_status": 2 }));
                render::print_summary_of_no_deployments(2);
            }
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, UsageError> {
    if let Some(dir) = cli.plugin_dirs.iter().find(|d| !d.is_dir()) {
        return Err(UsageError(anyhow!("--plugin-dir {}: not a directory", dir.display())));
    }
    let style = render::Style {
        verbosity: render::Verbosity::new(cli.verbose, cli.quiet),
        json: cli.json,
        color: render::colors(&cli.color),
    };
    match &cli.command {
        Command::Completions { shell } => {
            say(&completions::script(*shell, Cli::command()));
            return Ok(ExitCode::SUCCESS);
        }
        Command::Man => {
            let page = man::page(Cli::command())
                .map_err(|e| UsageError(anyhow!("cannot write the man page: {e}")))?;
            use std::io::Write;
            // A reader that went away (`krops man | head`) is not an error.
            let _ = std::io::stdout().lock().write_all(&page);
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let asks_first = matches!(
        cli.command,
        Command::Deploy { .. } | Command::Build { .. } | Command::Run { .. } | Command::Populate { .. }
    );
    if cli.interactive && !asks_first {
        return Err(interactive_misused());
    }
    let registry = Arc::new(load_plugins(&cli.plugin_dirs));
    let nix = krops::nix::Options {
        args: pairs(&cli.arg),
        argstrs: pairs(&cli.argstr),
        show_trace: cli.show_trace,
    };
    let read = |names: &[String]| read_config(cli.file.as_deref(), &nix, names).map_err(UsageError);
    let exit_code = matches!(
        cli.command,
        Command::Diff { exit_code: true, .. } | Command::Status { exit_code: true, .. }
    );
    let (action, names, purpose, text) = match cli.command {
        Command::Completions { .. } | Command::Man => return Ok(ExitCode::SUCCESS),
        Command::CompleteNames => {
            let shape = read(&[]).ok().and_then(|text| text.parse(Arc::new(config::ShapeOnly), None).ok());
            if let Some(shape) = shape {
                let tags: std::collections::BTreeSet<&String> =
                    shape.deployments.values().flat_map(|d| d.tags.iter()).collect();
                for name in shape.deployments.keys().chain(shape.groups.keys()) {
                    say(name);
                }
                for tag in tags {
                    say(&format!("@{tag}"));
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Plugins if cli.json => {
            let plugins: Vec<serde_json::Value> = registry
                .plugins()
                .map(|p| serde_json::json!({ "type": p.source_type, "version": p.version, "file": p.file }))
                .collect();
            let broken: Vec<serde_json::Value> = registry
                .broken()
                .map(|e| serde_json::json!({ "file": e.file, "error": e.message }))
                .collect();
            let failed = !broken.is_empty() || plugins.is_empty();
            render::print_json(
                serde_json::json!({ "event": "plugins", "plugins": plugins, "broken": broken }),
            );
            render::print_summary_of_no_deployments(if failed { 2 } else { 0 });
            return Ok(if failed { ExitCode::from(2) } else { ExitCode::SUCCESS });
        }
        Command::Plugins => {
            for plugin in registry.plugins() {
                let line = format!("{}\t{}\t{}", plugin.source_type, plugin.version, plugin.file.display());
                say(&render::shown(&line));
            }
            let mut broken = registry.broken().peekable();
            if broken.peek().is_none() {
                if registry.plugins().next().is_none() {
                    return Err(UsageError(anyhow!(
                        "no populator plugins found (searched {})",
                        registry.searched()
                    )));
                }
                return Ok(ExitCode::SUCCESS);
            }
            for error in broken {
                eprintln!("krops: {}", render::shown(&error.to_string()));
            }
            return Ok(ExitCode::from(2));
        }
        Command::Eval { names, names_only: true } => {
            let text = read(&names)?;
            let shape = text.parse(Arc::new(config::ShapeOnly), None).map_err(|e| UsageError(e.into()))?;
            let selected = select(&shape, &names, Purpose::Any, false)
                .map_err(|e| UsageError(anyhow!(unevaluated(&text, &names, &nix).unwrap_or(e))))?;
            let selected: Vec<String> =
                sharded(selected, cli.shard).into_iter().map(|(name, _)| name).collect();
            if cli.json {
                render::print_json(serde_json::json!({ "event": "names", "names": selected }));
                render::print_summary_of_no_deployments(0);
            } else {
                for name in selected {
                    say(&render::shown(&name));
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Eval { names, names_only: false } => {
            let text = read(&names)?;
            let selected = validated_selection(
                &text,
                &names,
                Purpose::Any,
                false,
                cli.shard,
                Arc::new(Strict(registry)),
                &nix,
            )?;
            let deployments: serde_json::Map<String, serde_json::Value> = selected
                .into_iter()
                .map(|(name, d)| Ok((name, serde_json::to_value(d)?)))
                .collect::<Result<_, serde_json::Error>>()
                .map_err(|e| UsageError(e.into()))?;
            if cli.json {
                render::print_json(serde_json::json!({ "event": "eval", "deployments": deployments }));
                render::print_summary_of_no_deployments(0);
                return Ok(ExitCode::SUCCESS);
            }
            let json = krops::redact::json(serde_json::json!({ "deployments": deployments }));
            let json = serde_json::to_string_pretty(&json).map_err(|e| UsageError(e.into()))?;
            say(&json);
            return Ok(ExitCode::SUCCESS);
        }
        Command::Deploy { names, operation, reboot, reboot_timeout } => {
            // clap has already held it to nixos-rebuild's actions (the `Operation` enum).
            let operation = operation.and_then(|op| op.to_possible_value()).map(|v| v.get_name().to_owned());
            let text = read(&names)?;
            let reboot = reboot.then(|| std::time::Duration::from_secs(reboot_timeout));
            (Action::Deploy { operation, reboot }, names, Purpose::Activate(Kind::Deploy), text)
        }
        Command::Build { names, trace } => {
            let text = read(&names)?;
            (Action::Build { trace }, names, Purpose::Activate(Kind::Build), text)
        }
        Command::Run { name, argv } => {
            let argv = (!argv.is_empty()).then_some(argv);
            let run = Action::Run { argv, interactive: !cli.json };
            let names: Vec<String> = name.into_iter().collect();
            let text = read(&names)?;
            (run, names, Purpose::Activate(Kind::Run), text)
        }
        Command::Exec { names, argv } => {
            let text = read(&names)?;
            (Action::Exec { argv }, names, Purpose::Any, text)
        }
        Command::Populate { names } => {
            let text = read(&names)?;
            (Action::Populate, names, Purpose::Any, text)
        }
        Command::Status { names, .. } => {
            let text = read(&names)?;
            (Action::Status, names, Purpose::Any, text)
        }
        Command::Diff { names, .. } => {
            let text = read(&names)?;
            (Action::Diff, names, Purpose::Any, text)
        }
    };
    let single = matches!(action, Action::Run { .. });
    let deployments = validated_selection(&text, &names, purpose, single, cli.shard, registry.clone(), &nix)?;
    if let Action::Deploy { operation, reboot: Some(_) } = &action {
        let origin = krops::target::Origin::current();
        for (name, deployment) in &deployments {
            if deployment.target.is_local(&origin) {
                return Err(UsageError(anyhow!(
                    "--reboot would reboot this machine ({name} deploys here); nothing was touched"
                )));
            }
            let operation = operation.as_deref().unwrap_or(&deployment.operation);
            if !krops::reboot::fits(operation) {
                return Err(UsageError(anyhow!(
                    "--reboot goes with switch and boot, and {name} would {operation}; nothing was touched"
                )));
            }
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| UsageError(anyhow!("cannot start the runtime: {e}")))?;
    let mut signals = runtime
        .block_on(async { Signals::install() })
        .map_err(|e| UsageError(anyhow!("cannot handle signals: {e}")))?;
    let ssh = Arc::new(
        Multiplexer::new()
            .map_err(|e| UsageError(anyhow!("cannot create the ssh control directory: {e}")))?,
    );
    let names: Vec<String> = deployments.iter().map(|(n, _)| n.clone()).collect();
    let (jobs, wait_lock, log_dir) = (usize::from(cli.jobs), cli.wait_lock, cli.log_dir.clone());
    let execute = |signals: &mut Signals, action: Action, deployments, progress: &render::Progress| {
        let run = pipeline::Run { action, deployments, jobs, wait_lock };
        let (registry, ssh) = (registry.clone(), ssh.clone());
        runtime.block_on(async {
            let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
            let receiver = match &log_dir {
                Some(dir) => render::logged(receiver, dir.clone()),
                None => receiver,
            };
            let renderer = tokio::spawn(render::render(receiver, style, !single, progress.clone()));
            tokio::select! {
                outcomes = pipeline::run(run, registry, ssh, sender) => {
                    // The pipeline dropped its senders; the renderer drains what is left and ends.
                    let _ = renderer.await;
                    Ok(outcomes)
                }
                signal = signals.next() => {
                    // Whatever the interrupted deployments report now is noise after the signal.
                    renderer.abort();
                    Err(signal)
                }
            }
        })
    };
    if cli.interactive {
        let what = match &action {
            Action::Deploy { .. } => "deploy",
            Action::Build { .. } => "build",
            Action::Run { .. } => "run",
            Action::Populate => "populate",
            _ => return Err(interactive_misused()),
        };
        let mut terminal =
            std::fs::OpenOptions::new().read(true).write(true).open("/dev/tty").map_err(|e| {
                UsageError(anyhow!("--interactive needs a terminal to ask on (/dev/tty: {e})"))
            })?;
        let progress = render::Progress::new(&names);
        let outcomes = match execute(&mut signals, Action::Diff, deployments.clone(), &progress) {
            Ok(outcomes) => outcomes,
            Err(signal) => interrupted(signal, &progress, &ssh, style),
        };
        if outcomes.iter().any(|(_, result)| result.is_err()) {
            ssh.shutdown();
            eprintln!("krops: nothing was changed: populate would fail, as the diff says");
            return Ok(render::summary(&outcomes, style, &progress));
        }
        let question = format!("{what} {}? [y/N] ", names.join(", "));
        let answer = runtime.block_on(async {
            tokio::select! {
                answer = tokio::task::spawn_blocking(move || ask(&mut terminal, &question)) => Ok(answer.unwrap_or(false)),
                signal = signals.next() => Err(signal),
            }
        });
        match answer {
            Ok(true) => {}
            Ok(false) => {
                ssh.shutdown();
                eprintln!("krops: nothing was changed");
                return Ok(ExitCode::SUCCESS);
            }
            Err(signal) => {
                ssh.shutdown();
                eprintln!("krops: interrupted by {}; nothing was changed", signal.name);
                std::process::exit(signal.exit_status);
            }
        }
    }
    let progress = render::Progress::new(&names);
    match execute(&mut signals, action, deployments, &progress) {
        Ok(outcomes) => {
            ssh.shutdown();
            let code = render::summary(&outcomes, style, &progress);
            // `--exit-code` keeps 1 for differences: a failed deployment is 2 there.
            if exit_code {
                let all_ok = outcomes.iter().all(|(_, result)| result.is_ok());
                return Ok(ExitCode::from(match (all_ok, progress.found_differences()) {
                    (false, _) => 2,
                    (true, true) => 1,
                    (true, false) => 0,
                }));
            }
            // `run` of one deployment exits as ssh does: with its command's status.
            match outcomes.as_slice() {
                [(_, Err(error))] if single && error.stage == krops::events::Stage::Run => {
                    Ok(error.exit_status.and_then(|s| u8::try_from(s).ok()).map_or(code, ExitCode::from))
                }
                _ => Ok(code),
            }
        }
        Err(signal) => interrupted(signal, &progress, &ssh, style),
    }
}

/// One way out for SIGINT, SIGTERM and SIGHUP: no child starts any more (so no activation),
/// every running one ends, every ssh master closes. Deployments in blocking threads are
/// abandoned, not awaited.
fn interrupted(
    signal: Interruption,
    progress: &render::Progress,
    ssh: &Multiplexer,
    style: render::Style,
) -> ! {
    exec::end_all();
    ssh.shutdown();
    render::interrupted(progress, signal.name, style);
    eprintln!("krops: interrupted by {}; child processes ended, ssh connections closed", signal.name);
    std::process::exit(signal.exit_status)
}

/// Asks `question` on the terminal; yes only for `y` or `yes` (any case).
fn ask(terminal: &mut std::fs::File, question: &str) -> bool {
    use std::io::{BufRead, Write};
    if terminal.write_all(question.as_bytes()).and_then(|()| terminal.flush()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let read = std::io::BufReader::new(terminal).read_line(&mut answer);
    read.is_ok() && ["y", "yes"].contains(&answer.trim().to_lowercase().as_str())
}

fn interactive_misused() -> UsageError {
    UsageError(anyhow!("--interactive goes with deploy, build, run and populate"))
}

fn load_plugins(cli_dirs: &[PathBuf]) -> Registry {
    let exe = std::env::current_exe().ok().and_then(|p| p.canonicalize().ok());
    let dirs = search_dirs(cli_dirs, std::env::var("KROPS_PLUGIN_PATH").ok().as_deref(), exe.as_deref());
    tracing::debug!(?dirs, "searching populator plugins");
    Registry::load(&dirs, exe.as_deref())
}

/// `-f FILE`, else the first default file here, read (or evaluated as far as `names` need).
fn read_config(
    file: Option<&std::path::Path>,
    nix: &krops::nix::Options,
    names: &[String],
) -> anyhow::Result<config::Text> {
    let file = match file {
        Some(file) => file.to_owned(),
        None => {
            let cwd = std::env::current_dir().context("cannot read the current directory")?;
            let (file, beside) = config::discover(&cwd).ok_or_else(|| {
                anyhow!(
                    "no {} in {} or a directory above it; name a file with -f",
                    config::DEFAULT_FILES.join(", "),
                    cwd.display()
                )
            })?;
            // Two configurations in one directory: the first is taken (as SPEC orders them),
            // never silently.
            for other in beside {
                eprintln!(
                    "krops: warning: using {} and not {} beside it; name one with -f",
                    file.display(),
                    other.display()
                );
            }
            file
        }
    };
    Ok(config::read(&file, nix, names)?)
}

/// When a selection found nothing, the reason may be an attribute that failed to evaluate: the
/// one named (or holding what is named), or, with no names, every one (the first three).
fn unevaluated(text: &config::Text, names: &[String], nix: &krops::nix::Options) -> Option<String> {
    let concerned: Vec<&String> = if names.is_empty() {
        text.failed.keys().take(3).collect()
    } else {
        text.failed
            .keys()
            .filter(|f| names.iter().any(|n| n == *f || n.starts_with(&format!("{f}."))))
            .collect()
    };
    if concerned.is_empty() {
        return None;
    }
    let file = text.file.display();
    let reasons: Vec<String> = concerned
        .into_iter()
        .map(|name| {
            let message =
                text.failed[name].clone().unwrap_or_else(|| krops::nix::explain(&text.file, nix, name));
            format!("{file}: attribute {name:?} does not evaluate: {message}")
        })
        .collect();
    Some(reasons.join("\n"))
}

/// The deployments `names` select, with their sources validated by the plugins; the sources
/// of the others are not looked at (a file missing for one host never blocks another).
fn validated_selection(
    text: &config::Text,
    names: &[String],
    purpose: Purpose,
    single: bool,
    shard: Option<Shard>,
    validator: Arc<dyn config::SourceValidator>,
    nix: &krops::nix::Options,
) -> Result<Vec<(String, config::Deployment)>, UsageError> {
    let shape = text.parse(Arc::new(config::ShapeOnly), None).map_err(|e| UsageError(e.into()))?;
    let selected = select(&shape, names, purpose, single)
        .map_err(|e| UsageError(anyhow!(unevaluated(text, names, nix).unwrap_or(e))))?;
    let selected = sharded(selected, shard);
    if let (Some(shard), true) = (shard, selected.is_empty()) {
        eprintln!("krops: shard {}/{} of this selection holds no deployment", shard.index, shard.count);
    }
    let only = selected.iter().map(|(name, _)| name.clone()).collect();
    let config = text.parse(validator, Some(&only)).map_err(|e| UsageError(e.into()))?;
    Ok(selected
        .into_iter()
        .filter_map(|(name, _)| config.deployments.get(&name).cloned().map(|d| (name, d)))
        .collect())
}

/// `selected`, or only `shard`'s part of it.
fn sharded<T>(selected: Vec<(String, T)>, shard: Option<Shard>) -> Vec<(String, T)> {
    match shard {
        Some(shard) => shard.of(selected),
        None => selected,
    }
}

/// A line on stdout; a reader that went away (`krops eval | head -1`) is not an error.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// `[NAME, VALUE, NAME, VALUE]` (clap's `num_args = 2`) as pairs.
fn pairs(flat: &[String]) -> Vec<(String, String)> {
    flat.chunks_exact(2).map(|pair| (pair[0].clone(), pair[1].clone())).collect()
}

/// A signal that ends the run, and the exit status that says so (128 + its number).
struct Interruption {
    name: &'static str,
    exit_status: i32,
}

/// SIGINT, SIGTERM and SIGHUP, taken over before any child starts so that none of them kills
/// krops before it has ended its children and ssh masters.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// The first of them to arrive.
    async fn next(&mut self) -> Interruption {
        tokio::select! {
            _ = self.interrupt.recv() => Interruption { name: "SIGINT", exit_status: 130 },
            _ = self.terminate.recv() => Interruption { name: "SIGTERM", exit_status: 143 },
            _ = self.hangup.recv() => Interruption { name: "SIGHUP", exit_status: 129 },
        }
    }
}
