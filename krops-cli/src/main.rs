//! The `krops` command: parse the command line, load plugins and configuration, run the
//! pipeline, render its events. Everything that deploys lives in krops-core.

mod render;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use krops_core::config::{self, check_operation, Config, Deployment};
use krops_core::loader::{search_dirs, Registry};
use krops_core::pipeline::{self, Action};
use krops_core::ssh::Multiplexer;

#[derive(Parser)]
#[command(name = "krops", version, about = "Deploy NixOS systems, remotely or locally")]
struct Cli {
    /// Configuration file (default: the first of ./krops.toml, ./krops.nix, ./krops.json)
    #[arg(short = 'f', long = "file", global = true, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Also look for populator plugins in DIR (searched first)
    #[arg(long = "plugin-dir", global = true, value_name = "DIR")]
    plugin_dirs: Vec<PathBuf>,
    /// More output (-v, -vv, -vvv)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only errors and the summary of failures
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Deployments to run at once
    #[arg(long, global = true, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    jobs: u16,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Populate, then nixos-rebuild OPERATION on the build host
    Deploy {
        names: Vec<String>,
        /// nixos-rebuild action (default: the configuration's, else switch)
        #[arg(long, value_name = "OP")]
        operation: Option<String>,
    },
    /// Populate, then nix-build the system without activating it
    #[command(alias = "test")]
    Build {
        names: Vec<String>,
        /// Pass --show-trace to nix-build
        #[arg(long)]
        trace: bool,
    },
    /// Populate, then run the deployment's command (or CMD) on the target
    Run {
        name: Option<String>,
        #[arg(last = true, value_name = "CMD")]
        argv: Vec<String>,
    },
    /// Populate only
    Populate { names: Vec<String> },
    /// Print the normalised configuration as JSON
    Eval { names: Vec<String> },
    /// List the populator plugins found
    Plugins,
}

/// A failure before anything was touched: usage or configuration (exit 2).
struct UsageError(anyhow::Error);

fn main() -> ExitCode {
    let cli = Cli::parse();
    render::init_tracing(cli.verbose, cli.quiet);
    match run(cli) {
        Ok(code) => code,
        Err(UsageError(error)) => {
            eprintln!("krops: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, UsageError> {
    let registry = Arc::new(load_plugins(&cli.plugin_dirs).map_err(UsageError)?);
    let load = || load_config(cli.file.as_deref(), registry.clone()).map_err(UsageError);
    let (action, names, config) = match cli.command {
        Command::Plugins => {
            for plugin in registry.plugins() {
                println!("{}\t{}\t{}", plugin.source_type, plugin.version, plugin.file.display());
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Eval { names } => {
            let config = load()?;
            let selected = select(&config, &names, false).map_err(UsageError)?;
            let deployments: serde_json::Map<String, serde_json::Value> = selected
                .into_iter()
                .map(|(name, d)| Ok((name, serde_json::to_value(d)?)))
                .collect::<Result<_, serde_json::Error>>()
                .map_err(|e| UsageError(e.into()))?;
            let json = serde_json::json!({ "deployments": deployments });
            println!("{}", serde_json::to_string_pretty(&json).map_err(|e| UsageError(e.into()))?);
            return Ok(ExitCode::SUCCESS);
        }
        Command::Deploy { names, operation } => {
            if let Some(op) = &operation {
                check_operation(op).map_err(|e| UsageError(anyhow!("--operation: {e}")))?;
            }
            (Action::Deploy { operation }, names, load()?)
        }
        Command::Build { names, trace } => (Action::Build { trace }, names, load()?),
        Command::Run { name, argv } => {
            let argv = (!argv.is_empty()).then_some(argv);
            (Action::Run { argv }, name.into_iter().collect(), load()?)
        }
        Command::Populate { names } => (Action::Populate, names, load()?),
    };
    let single = matches!(action, Action::Run { .. });
    let deployments = select(&config, &names, single).map_err(UsageError)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| UsageError(anyhow!("cannot start the runtime: {e}")))?;
    let ssh = Arc::new(
        Multiplexer::new()
            .map_err(|e| UsageError(anyhow!("cannot create the ssh control directory: {e}")))?,
    );
    let run = pipeline::Run { action, deployments, jobs: usize::from(cli.jobs) };
    let outcomes = runtime.block_on(async {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        let verbosity = render::Verbosity::new(cli.verbose, cli.quiet);
        let renderer = tokio::spawn(render::render(receiver, verbosity, !single));
        let outcomes = tokio::select! {
            outcomes = pipeline::run(run, registry, ssh.clone(), sender) => Some(outcomes),
            _ = tokio::signal::ctrl_c() => None,
        };
        if outcomes.is_some() {
            // The pipeline dropped its senders; the renderer drains what is left and ends.
            let _ = renderer.await;
        }
        outcomes
    });
    ssh.shutdown();
    match outcomes {
        Some(outcomes) => Ok(render::summary(&outcomes)),
        None => {
            eprintln!("krops: interrupted; ssh connections closed");
            // Deployments still running in blocking threads are abandoned, not awaited.
            std::process::exit(130)
        }
    }
}

fn load_plugins(cli_dirs: &[PathBuf]) -> anyhow::Result<Registry> {
    let exe = std::env::current_exe().ok().and_then(|p| p.canonicalize().ok());
    let dirs = search_dirs(cli_dirs, std::env::var("KROPS_PLUGIN_PATH").ok().as_deref(), exe.as_deref());
    tracing::debug!(?dirs, "searching populator plugins");
    Ok(Registry::load(&dirs)?)
}

fn load_config(file: Option<&std::path::Path>, registry: Arc<Registry>) -> anyhow::Result<Config> {
    let file = match file {
        Some(file) => file.to_owned(),
        None => {
            let cwd = std::env::current_dir().context("cannot read the current directory")?;
            config::discover(&cwd).ok_or_else(|| {
                anyhow!("no {} in {}; name a file with -f", config::DEFAULT_FILES.join(", "), cwd.display())
            })?
        }
    };
    Ok(config::load(&file, registry)?)
}

/// The deployments named (all when none are), in the file's order. `single` is `run`'s rule:
/// one deployment, which may go unnamed only when the file holds just one.
fn select(config: &Config, names: &[String], single: bool) -> anyhow::Result<Vec<(String, Deployment)>> {
    let available = || config.deployments.keys().cloned().collect::<Vec<_>>().join(", ");
    if config.deployments.is_empty() {
        bail!("{}: defines no deployments", config.file.display());
    }
    if names.is_empty() {
        if single && config.deployments.len() > 1 {
            bail!("{} holds several deployments ({}); name one", config.file.display(), available());
        }
        return Ok(config.deployments.iter().map(|(n, d)| (n.clone(), d.clone())).collect());
    }
    let mut selected = Vec::new();
    for name in names {
        let deployment = config.deployments.get(name).ok_or_else(|| {
            anyhow!("{}: no deployment named {name:?}; available: {}", config.file.display(), available())
        })?;
        if !selected.iter().any(|(n, _)| n == name) {
            selected.push((name.clone(), deployment.clone()));
        }
    }
    Ok(selected)
}
