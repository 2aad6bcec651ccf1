//! The deploy record on a target (`<path>/.krops/record`, in krops's own directory), and what it buys: a source whose
//! fingerprint (from its plugin, computed here) and whose state on the target are those of
//! its last populate is unchanged and is not transferred again. The target's state is asked
//! for in the round trip that takes the lock, so a redeploy that changes nothing costs that
//! one round trip; a hand edit on the target changes the state and is repaired.
//!
//! The record is lines of text, written by the target's shell: `krops-record 2`, `by
//! USER@HOST`, `when TIME`, `krops VERSION`, then `source FINGERPRINT STATE TYPE COMMIT NAME`
//! per source (`-` for a missing fingerprint or commit), and, once activation ended,
//! `activation OPERATION RESULT TIME`. It never holds secret content: fingerprints of secrets
//! come from their ciphertexts, states from names, sizes and mtimes (and, for secrets and pipe
//! outputs, one digest over their contents' SHA-256 among them: nothing a guess could be checked
//! against without every other detail of the tree). (Version 1 records, whose
//! source lines lack TYPE and COMMIT, are still read.)

use krops_core::wire::StateKind;

use crate::config::{Deployment, Source};
use crate::events::{DeployError, Event, Reporter, Stage};
use crate::stage::{stage_script, timed};
use crate::target::Origin;
use crate::transport::Transport;
use std::collections::{BTreeMap, BTreeSet};

/// A shell function, `state KIND NAME`, printing the state of `<path>/NAME` (`$p`): a SHA-256
/// of every entry's relative name, kind, size, mtime, mode and link target, or `absent`. For a
/// git work tree (KIND `g`) the `.git` directories below it are left out and the commit of its
/// HEAD put in instead; for content (KIND `c`: secrets, a pipe's output, small and easily
/// forged with the same size and mtime) every file's SHA-256 goes in too, bounded (files up to
/// 16 MiB, 10 s each: a FIFO swapped in, or a huge sparse file, must not hold the lock). When the tools fail (no `find -printf`, no `sha256sum`), it prints `unknown`, which
/// never matches a record: an unreadable state means "populate".
pub const STATE_FUNCTION: &str = include_str!("sh/state_function.sh");

/// How the lock script and `WRITE_SCRIPT` are told about a source: `KIND NAME`, KIND `g` for a
/// git work tree, `c` where content counts beyond sizes and mtimes (see `STATE_FUNCTION`), `-`
/// otherwise.
pub fn state_argument(source: &Source, name: &str) -> String {
    format!("{} {name}", state_kind(source))
}

fn state_kind(source: &Source) -> &'static str {
    match source.traits.state {
        StateKind::Git => "g",
        StateKind::Content => "c",
        StateKind::Tree => "-",
    }
}

/// What the lock's round trip reported: each asked source's state, and the last record.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub states: BTreeMap<String, String>,
    /// `(fingerprint, state)` by source, as recorded after the last populate.
    pub recorded: BTreeMap<String, (String, String)>,
    /// The state of every recorded source, fingerprinted or not: what `status` compares.
    pub states_recorded: BTreeMap<String, String>,
    /// `(type, commit)` by source, as recorded (version 2 records).
    pub kinds: BTreeMap<String, (String, Option<String>)>,
    /// The record's other lines (`by …`, `when …`, `krops …`, `activation …`).
    pub header: Vec<String>,
    /// Where the system profile pointed before activation (`None`: not asked, or no profile).
    pub profile: Option<String>,
}

impl Seen {
    /// Reads the lines the lock script printed before `locked`: `state HASH NAME` and the
    /// record's own lines, prefixed `record `.
    pub fn parse(lines: &[String]) -> Seen {
        let mut seen = Seen::default();
        let mut version = 1;
        for line in lines {
            if let Some(profile) = line.strip_prefix("profile ") {
                seen.profile = Some(profile.trim().to_owned()).filter(|p| !p.is_empty());
            } else if let Some(rest) = line.strip_prefix("state ") {
                if let Some((hash, name)) = rest.split_once(' ') {
                    seen.states.insert(name.to_owned(), hash.to_owned());
                }
            } else if let Some(rest) = line.strip_prefix("record source ") {
                let fields: Vec<&str> = rest.splitn(if version >= 2 { 5 } else { 3 }, ' ').collect();
                let (fingerprint, state, name) = match fields.as_slice() {
                    [fingerprint, state, name] => (fingerprint, state, name),
                    [fingerprint, state, kind, commit, name] => {
                        let commit = (*commit != "-").then(|| (*commit).to_owned());
                        seen.kinds.insert((*name).to_owned(), ((*kind).to_owned(), commit));
                        (fingerprint, state, name)
                    }
                    _ => continue,
                };
                if *fingerprint != "-" {
                    seen.recorded
                        .insert((*name).to_owned(), ((*fingerprint).to_owned(), (*state).to_owned()));
                }
                seen.states_recorded.insert((*name).to_owned(), (*state).to_owned());
            } else if let Some(rest) = line.strip_prefix("record ") {
                if let Some(number) = rest.strip_prefix("krops-record ") {
                    version = number.trim().parse().unwrap_or(1);
                } else {
                    seen.header.push(rest.to_owned());
                }
            }
        }
        seen
    }

    /// The sources whose fingerprint and state are the recorded ones.
    pub fn unchanged(&self, fingerprints: &BTreeMap<String, String>) -> BTreeSet<String> {
        fingerprints
            .iter()
            .filter(|(name, fingerprint)| match (self.recorded.get(*name), self.states.get(*name)) {
                (Some((recorded, recorded_state)), Some(state)) => {
                    recorded == *fingerprint
                        && recorded_state == state
                        && !["absent", "unknown", ""].contains(&state.as_str())
                }
                _ => false,
            })
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// The script that writes a new record (with `own_dir::FUNCTIONS`): `$1` path, `$2` who, `$3` krops's version, then
/// `FINGERPRINT KIND TYPE COMMIT NAME` as single arguments for every source. Each source's
/// state is taken now, after populate; the file is written beside and renamed into place
/// (`printf`, not `echo`, so that no name is read as escapes). It has no activation line until
/// krops tells the lock holder how this run's activation ended.
pub const WRITE_SCRIPT: &str = include_str!("sh/write_script.sh");

/// `WRITE_SCRIPT`'s arguments after path, holder and version: `FINGERPRINT KIND TYPE COMMIT
/// NAME` per source, `-` standing for no fingerprint or commit. Types are the configuration's
/// keys; white space in one (no plugin file is named so) is written as `_`.
pub fn write_arguments(
    fingerprints: &BTreeMap<String, String>,
    sources: &BTreeMap<String, crate::config::Source>,
) -> Vec<String> {
    sources
        .iter()
        .map(|(name, source)| {
            let fingerprint = fingerprints.get(name).map_or("-", String::as_str);
            let source_type: String =
                source.source_type.chars().map(|c| if c.is_whitespace() { '_' } else { c }).collect();
            let version_attribute = source.traits.version_attribute.as_deref();
            let commit =
                version_attribute.and_then(|a| source.attrs.get(a)).and_then(|c| c.as_str()).unwrap_or("-");
            let commit = if commit.is_empty() || commit.contains(char::is_whitespace) { "-" } else { commit };
            format!("{fingerprint} {} {source_type} {commit} {name}", state_kind(source))
        })
        .collect()
}

/// Reads the deploy record and every configured source's state on `host`, without a lock and
/// without writing, and reports them (`Event::Status`).
pub(crate) fn status(
    host: &Transport,
    deployment: &Deployment,
    reporter: &Reporter,
) -> Result<(), DeployError> {
    let label = host.host_label();
    timed(reporter, &label, Stage::Status, || {
        let mut args = vec![host.target.path.clone()];
        args.extend(deployment.source.iter().map(|(name, s)| state_argument(s, name)));
        let script = crate::own_dir::with_functions(&format!("{}\n{STATUS_SCRIPT}", STATE_FUNCTION));
        let lines = stage_script(host, Stage::Status, &script, &args, reporter)?;
        let lines: Vec<String> = String::from_utf8_lossy(&lines).lines().map(str::to_owned).collect();
        let seen = Seen::parse(&lines);
        let sources = deployment
            .source
            .keys()
            .map(|name| {
                let state = seen.states.get(name).map_or("unknown", String::as_str);
                let verdict = match seen.states_recorded.get(name) {
                    None => "not recorded",
                    Some(_) if state == "absent" => "missing",
                    Some(recorded) if recorded == state => "as recorded",
                    Some(_) => "drifted",
                };
                let (source_type, commit) = seen.kinds.get(name).cloned().unzip();
                crate::events::SourceStatus {
                    name: name.clone(),
                    verdict: verdict.to_owned(),
                    source_type,
                    commit: commit.flatten(),
                }
            })
            .collect();
        reporter.emit(Event::Status {
            deployment: reporter.deployment.clone(),
            host: label.clone(),
            deployed: !seen.header.is_empty(),
            record: seen.header,
            sources,
        });
        Ok(())
    })
}

/// `$1` path, then `KIND NAME` per source: the record's lines and each source's state.
pub(crate) const STATUS_SCRIPT: &str = include_str!("sh/status_script.sh");

/// Records what was populated (fingerprints, and the states they left on `host`), so that the
/// next run can skip what is still the same.
pub(crate) fn write_record(
    host: &Transport,
    deployment: &Deployment,
    fingerprints: &BTreeMap<String, String>,
    origin: &Origin,
    reporter: &Reporter,
) -> Result<(), DeployError> {
    let mut args = vec![
        host.target.path.clone(),
        format!("{}@{}", origin.user, origin.host),
        env!("CARGO_PKG_VERSION").to_owned(),
    ];
    args.extend(write_arguments(fingerprints, &deployment.source));
    let script = crate::own_dir::with_functions(&format!("{}\n{}", STATE_FUNCTION, WRITE_SCRIPT));
    stage_script(host, Stage::Populate, &script, &args, reporter).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_unchanged_only_when_fingerprint_and_state_match_the_record() {
        let lines: Vec<String> = [
            "state aaa conf",
            "state bbb my secrets",
            "state absent gone",
            "state ccc edited",
            "record krops-record 1",
            "record source f1 aaa conf",
            "record source f2 bbb my secrets",
            "record source f3 absent gone",
            "record source f4 xxx edited",
        ]
        .map(str::to_owned)
        .to_vec();
        let seen = Seen::parse(&lines);
        let fingerprints: BTreeMap<String, String> =
            [("conf", "f1"), ("my secrets", "f2"), ("gone", "f3"), ("edited", "f4"), ("new", "f5")]
                .map(|(n, f)| (n.to_owned(), f.to_owned()))
                .into();
        assert_eq!(
            seen.unchanged(&fingerprints),
            BTreeSet::from(["conf".to_owned(), "my secrets".to_owned()])
        );
        let mut changed = fingerprints.clone();
        changed.insert("conf".into(), "other".into());
        assert!(!seen.unchanged(&changed).contains("conf"));
    }
}
