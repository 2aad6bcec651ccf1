//! `krops diff`: every source's plugin asked what populating it would change on a host;
//! nothing is written, no lock taken.

use krops_core::sdk::parallel_map;

use crate::config::Deployment;
use crate::events::{DeployError, Event, Level, Reporter, Stage};
use crate::handle::HostHandle;
use crate::loader::Registry;
use crate::populate::SOURCES_AT_ONCE;
use crate::stage::{program_of_plugin_error, stage_script, timed};
use crate::transport::Transport;

/// Asks every source's plugin what populating it would change on `host` (the target: a build
/// host gets the same sources), and reports each answer; nothing is written, no lock taken.
pub(crate) fn diff(
    host: &Transport,
    deployment: &Deployment,
    registry: &Registry,
    reporter: &Reporter,
) -> Result<(), DeployError> {
    let label = host.host_label();
    timed(reporter, &label, Stage::Diff, || {
        if !deployment.force {
            let sentinel = format!("{}/.populate", host.target.path.trim_end_matches('/'));
            let there = stage_script(
                host,
                Stage::Diff,
                "[ -e \"$1\" ] || echo missing",
                std::slice::from_ref(&sentinel),
                reporter,
            )?;
            if !there.is_empty() {
                reporter.log(
                    &label,
                    Level::Warn,
                    format!("populate would fail here: missing sentinel file: {}", host.location(&sentinel)),
                );
            }
        }
        let sources: Vec<(&String, &crate::config::Source)> = deployment.source.iter().collect();
        let results = parallel_map(&sources, SOURCES_AT_ONCE, |(name, source)| {
            let fail = |message: String| {
                let program = program_of_plugin_error(source, &message);
                DeployError::new(label.clone(), Stage::Diff, Some(name.to_string()), program, message)
            };
            let plugin = registry.plugin(&source.source_type).map_err(fail)?;
            let handle = HostHandle::for_target(host, reporter);
            let (directory, leaf) = crate::config::placement(&host.target.path, name);
            plugin.diff(&handle, &leaf, source.attrs.clone(), &directory).map_err(fail)
        });
        // Reported in configuration order, whichever finished first; a failed source (populate
        // would fail too) fails the deployment after the others are told.
        let mut failed = None;
        for ((name, source), result) in sources.iter().zip(results) {
            match result {
                Ok(diff) => reporter.emit(Event::Diff {
                    deployment: reporter.deployment.clone(),
                    host: label.clone(),
                    source: (*name).clone(),
                    source_type: source.source_type.clone(),
                    changes: diff.map(|d| d.changes),
                }),
                Err(error) => {
                    failed.get_or_insert(error);
                }
            }
        }
        failed.map_or(Ok(()), Err)
    })
}
