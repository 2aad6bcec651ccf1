//! The stages that put sources on a target: prepare (plugins resolve and fingerprint, before
//! anything is written), backup, and populate (each source through its plugin, unchanged ones
//! skipped, nested names' directories made first).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use krops_core::sdk::parallel_map;

use crate::config::Deployment;
use crate::events::{DeployError, Event, Level, Reporter, Stage};
use crate::handle::HostHandle;
use crate::loader::Registry;
use crate::stage::{program_of_plugin_error, stage_script, timed};
use crate::transport::Transport;

pub(crate) fn backup(host: &Transport, reporter: &Reporter) -> Result<(), DeployError> {
    // The snapshot is written relative to the sentinel directory, entered once and checked:
    // inside the target, and writable by no one else (who could otherwise point `backup` or
    // anything below it elsewhere meanwhile).
    let script = include_str!("sh/backup_script.sh");
    timed(reporter, &host.host_label(), Stage::Backup, || {
        stage_script(host, Stage::Backup, script, std::slice::from_ref(&host.target.path), reporter).map(drop)
    })
}

/// Resolves every source (`Populator::prepare`) before any target is touched; returns the
/// deployment with the attributes to populate with.
/// Resolves every source (`prepare`) and fingerprints it, before anything is written on any
/// target; returns the deployment with the attributes to populate with, and the fingerprints.
pub(crate) fn prepare(
    deployment: &Deployment,
    target: &Transport,
    registry: &Registry,
    reporter: &Reporter,
) -> Result<(Deployment, BTreeMap<String, String>), DeployError> {
    timed(reporter, &None, Stage::Prepare, || {
        let sources: Vec<(&String, &crate::config::Source)> = deployment.source.iter().collect();
        let prepared = parallel_map(&sources, SOURCES_AT_ONCE, |(name, source)| {
            let fail = |message: String| {
                let program = program_of_plugin_error(source, &message);
                DeployError::new(None, Stage::Prepare, Some(name.to_string()), program, message)
            };
            let plugin = registry.plugin(&source.source_type).map_err(fail)?;
            let handle = HostHandle::for_target(target, reporter);
            let attrs = plugin.prepare(name, source.attrs.clone(), &handle).map_err(fail)?;
            // A source that cannot say what it would ship is simply always populated.
            let fingerprint = plugin.fingerprint(name, attrs.clone(), &handle).unwrap_or_else(|e| {
                reporter.log(&None, Level::Debug, format!("{name}: no fingerprint ({e})"));
                None
            });
            let source = crate::config::Source { attrs, ..(*source).clone() };
            Ok(((*name).clone(), source, fingerprint))
        });
        let mut sources = BTreeMap::new();
        let mut fingerprints = BTreeMap::new();
        for result in prepared {
            let (name, source, fingerprint) = result?;
            if let Some(fingerprint) = fingerprint {
                fingerprints.insert(name.clone(), fingerprint);
            }
            sources.insert(name, source);
        }
        Ok((Deployment { source: sources, ..deployment.clone() }, fingerprints))
    })
}

/// How many sources of one host are populated at once. They are independent (each owns
/// `<path>/<name>`), and over a multiplexed connection their round trips overlap (as many as
/// the connection has sessions free; see `ssh::SESSIONS_PER_CONNECTION`).
pub(crate) const SOURCES_AT_ONCE: usize = 8;

/// Populates every source but the `unchanged` ones (reported as such).
pub(crate) fn populate(
    host: &Transport,
    deployment: &Deployment,
    registry: &Registry,
    unchanged: &BTreeSet<String>,
    reporter: &Reporter,
) -> Result<(), DeployError> {
    timed(reporter, &host.host_label(), Stage::Populate, || {
        for (name, source) in deployment.source.iter().filter(|(name, _)| unchanged.contains(*name)) {
            reporter.emit(Event::SourcePopulated {
                deployment: reporter.deployment.clone(),
                host: host.host_label(),
                source: name.clone(),
                source_type: source.source_type.clone(),
                millis: 0,
                report: serde_json::json!({ "unchanged": true }),
            });
        }
        let sources: Vec<(&String, &crate::config::Source)> =
            deployment.source.iter().filter(|(name, _)| !unchanged.contains(*name)).collect();
        let parents = crate::nested::parents(deployment);
        if !sources.is_empty() && !parents.is_empty() {
            let mut args = vec![host.target.path.clone()];
            args.extend(parents);
            stage_script(host, Stage::Populate, crate::nested::MAKE_PARENTS_SCRIPT, &args, reporter)?;
        }
        let results = parallel_map(&sources, SOURCES_AT_ONCE, |(name, source)| {
            populate_source(host, name, source, registry, reporter)
        });
        // The first failing source in configuration order, whatever finished first.
        results.into_iter().collect::<Result<Vec<()>, DeployError>>().map(drop)
    })
}

pub(crate) fn populate_source(
    host: &Transport,
    name: &str,
    source: &crate::config::Source,
    registry: &Registry,
    reporter: &Reporter,
) -> Result<(), DeployError> {
    let label = host.host_label();
    let fail = |message: String| {
        let program = program_of_plugin_error(source, &message);
        DeployError::new(label.clone(), Stage::Populate, Some(name.to_owned()), program, message)
    };
    let plugin = registry.plugin(&source.source_type).map_err(fail)?;
    let handle = HostHandle::for_target(host, reporter);
    let started = Instant::now();
    let (directory, leaf) = crate::config::placement(&host.target.path, name);
    let report = plugin.populate(&handle, &leaf, source.attrs.clone(), &directory).map_err(fail)?;
    reporter.emit(Event::SourcePopulated {
        deployment: reporter.deployment.clone(),
        host: label.clone(),
        source: name.to_owned(),
        source_type: source.source_type.clone(),
        millis: started.elapsed().as_millis(),
        report,
    });
    Ok(())
}
