//! The `git` source type: a work tree fetched *on the target* from `url` (so a nixpkgs
//! checkout never crosses the deployer's uplink), hard-reset to `ref`. Unlike krops, `ref` is
//! resolved before any target is touched: a branch, tag, `origin/BRANCH` or abbreviated commit
//! becomes a commit id (with gix, from here; for a URL only the target reaches, by an
//! ls-remote there), every target gets the same commit, and a ref that does not exist fails
//! the deployment first.

use krops_core::plugin::{PopulatorPlugin, Target, TypeTraits};
use krops_core::sdk::{resolve_path, Fingerprint};
use krops_core::wire::capability::RUN_SCRIPT;
use krops_core::wire::{Change, Diff, PopulateRequest, PrepareRequest, StateKind, ValidateRequest};
use serde::{Deserialize, Serialize};

#[derive(Default)]
pub struct Git;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Attrs {
    url: String,
    #[serde(rename = "ref")]
    git_ref: String,
    #[serde(default)]
    shallow: bool,
    #[serde(default)]
    fetch_always: bool,
    #[serde(default)]
    clean: Clean,
    /// The commit `ref` resolved to, filled in by `prepare`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    commit: Option<String>,
}

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Clean {
    #[serde(default)]
    exclude: Vec<String>,
}

/// `neutralise_filters DIR`: every filter driver that the work tree's own configuration names,
/// files it includes too (`filter.NAME.*`, which a checkout or a status would run), is overridden for the git commands
/// that follow by one that runs nothing of it: `cat` both ways, no long-running process, not
/// required; and every submodule's `update` is `checkout` (not a `!command`). Overrides travel in git's environment (`GIT_CONFIG_COUNT`), which outranks every
/// configuration file; the work tree's own file is left as it is.
const NEUTRAL_FILTERS_FUNCTION: &str = include_str!("sh/neutral_filters_function.sh");

/// Puts commit `$3` of `$2` at `$1`. `$4`: shallow, `$5`: fetch always (1 or 0); the rest are
/// `git clean` exclude patterns.
const POPULATE_SCRIPT: &str = include_str!("sh/populate_script.sh");

/// `$1` the work tree: `absent`, `replaced` (not a work tree of its own: populate would clone
/// afresh), or `head COMMIT`, then `modified` when tracked files differ from HEAD. Reads only:
/// no index refresh, no hooks, no fsmonitor.
const HEAD_SCRIPT: &str = include_str!("sh/head_script.sh");

impl PopulatorPlugin for Git {
    const TYPE: &'static str = "git";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const TRAITS: TypeTraits = TypeTraits {
        state: StateKind::Git,
        program: Some("git"),
        program_in_process: true,
        version_attribute: Some("commit"),
        ..TypeTraits::NONE
    };
    type Attrs = Attrs;

    fn validate(&self, request: ValidateRequest<Attrs>) -> Result<Attrs, String> {
        let mut attrs = request.attrs;
        // A relative path (`./repo`, `../repo`) is, like every path in a configuration,
        // relative to the configuration's file; URLs and `host:path` are left as written.
        if attrs.url.starts_with("./") || attrs.url.starts_with("../") {
            attrs.url = resolve_path(&request.config_dir, &attrs.url).to_string_lossy().into_owned();
        }
        check_word("url", &attrs.url)?;
        check_word("ref", &attrs.git_ref)?;
        gix::url::parse(gix::bstr::BStr::new(attrs.url.as_bytes()))
            .map_err(|e| format!("git url {:?} is not a URL git can use: {e}", attrs.url))?;
        if attrs.commit.is_some() {
            return Err(
                "unknown field `commit`, expected one of `url`, `ref`, `shallow`, `fetchAlways`, `clean`"
                    .into(),
            );
        }
        Ok(attrs)
    }

    /// Resolves `ref` from here; when the repository cannot be reached from here, on the
    /// target (read-only: an ls-remote), still before anything is written there.
    fn prepare(&self, target: &Target<'_>, request: PrepareRequest<Attrs>) -> Result<Attrs, String> {
        let mut attrs = request.attrs;
        let commit = match resolve(&attrs.url, &attrs.git_ref) {
            Ok(commit) => commit,
            Err(Unresolved::Missing(message)) => return Err(message),
            Err(Unresolved::Unreachable(message)) if target.offers(RUN_SCRIPT) => {
                target.log_debug(&format!("{message}; asking the target"));
                resolve_on_target(target, &attrs.url, &attrs.git_ref)
                    .map_err(|there| format!("{message}; and on the target: {there}"))?
            }
            Err(Unresolved::Unreachable(message)) => return Err(message),
        };
        attrs.commit = Some(commit);
        Ok(attrs)
    }

    /// The prepared attributes: url, the resolved commit, shallow, clean excludes.
    fn fingerprint(&self, _: &Target<'_>, request: PrepareRequest<Attrs>) -> Result<Option<String>, String> {
        let attrs = serde_json::to_string(&request.attrs).map_err(|e| e.to_string())?;
        Ok(request.attrs.commit.is_some().then(|| Fingerprint::default().add(attrs).finish()))
    }

    /// The work tree's commit against the resolved one, and local edits `reset` would undo.
    fn diff(&self, target: &Target<'_>, request: PopulateRequest<Attrs>) -> Result<Diff, String> {
        let commit = request.attrs.commit.clone().ok_or("git source was not prepared")?;
        let script = format!("{NEUTRAL_FILTERS_FUNCTION}\n{HEAD_SCRIPT}");
        let answer = target.run_script(&script, &[&request.destination()], b"")?;
        let answer = String::from_utf8_lossy(&answer);
        let mut changes = Vec::new();
        for line in answer.lines() {
            match line.split_once(' ') {
                Some(("head", head)) if head != commit => {
                    changes.push(Change::whole("commit", Some(head.to_owned()), Some(commit.clone())))
                }
                Some(_) => {}
                None if line == "absent" => changes.push(Change::whole("commit", None, Some(commit.clone()))),
                None if line == "replaced" => changes.push(Change::whole(
                    "replaced",
                    Some("not a work tree of its own".into()),
                    Some(commit.clone()),
                )),
                None if line == "modified" => changes.push(Change::whole(
                    "local changes",
                    Some("modified".into()),
                    Some("reset".into()),
                )),
                None => {}
            }
        }
        Ok(Diff { changes })
    }

    fn populate(
        &self,
        target: &Target<'_>,
        request: PopulateRequest<Attrs>,
    ) -> Result<serde_json::Value, String> {
        let attrs = &request.attrs;
        let commit = attrs.commit.as_deref().ok_or("git source was not prepared")?;
        let flag = |on: bool| if on { "1" } else { "0" };
        let destination = request.destination();
        let mut args =
            vec![destination.as_str(), &attrs.url, commit, flag(attrs.shallow), flag(attrs.fetch_always)];
        args.extend(attrs.clean.exclude.iter().map(String::as_str));
        // The URL may carry credentials; only the commit is logged.
        target.log_debug(&format!("{}: checking out {commit}", request.name));
        let script = format!("{NEUTRAL_FILTERS_FUNCTION}\n{POPULATE_SCRIPT}");
        let head = target.run_script(&script, &args, b"")?;
        let head = String::from_utf8_lossy(&head).trim().to_owned();
        if head != commit {
            return Err(format!("the work tree is at {head}, not at {commit}"));
        }
        Ok(serde_json::json!({ "commit": commit }))
    }
}

/// URLs and refs go to git as arguments; one that begins with '-' would be read as an option.
fn check_word(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        Err(format!("git {what} must not be empty"))
    } else if value.starts_with('-') {
        Err(format!("git {what} {value:?} begins with '-' and would be read as an option"))
    } else if value.chars().any(char::is_control) {
        Err(format!("git {what} {value:?} contains a control character"))
    } else {
        Ok(())
    }
}

fn is_commit_id(git_ref: &str) -> bool {
    git_ref.len() == 40 && git_ref.bytes().all(|b| b.is_ascii_hexdigit())
}

/// An abbreviated commit: 4 to 39 hex digits.
fn is_short_commit(git_ref: &str) -> bool {
    (4..40).contains(&git_ref.len()) && git_ref.bytes().all(|b| b.is_ascii_hexdigit())
}

/// git's own order for a short name (`git rev-parse`'s DWIM): exact, refs/, tags, heads; and
/// `origin/BRANCH`, the remote-tracking name users write with `fetchAlways`, as that branch.
fn candidates(git_ref: &str) -> Vec<String> {
    let mut names = vec![
        git_ref.to_owned(),
        format!("refs/{git_ref}"),
        format!("refs/tags/{git_ref}"),
        format!("refs/heads/{git_ref}"),
    ];
    if let Some(branch) =
        git_ref.strip_prefix("origin/").or_else(|| git_ref.strip_prefix("refs/remotes/origin/"))
    {
        names.push(format!("refs/heads/{branch}"));
    }
    names
}

/// Why a ref could not be resolved here.
enum Unresolved {
    /// The repository could not be reached from the deploying machine.
    Unreachable(String),
    /// It was reached, and the ref is not there.
    Missing(String),
}

/// `(name, commit)` of every ref a remote advertises (annotated tags peeled to their commit).
type Refs = Vec<(String, String)>;

/// The commit `git_ref` names in `refs`: a branch, a tag, `origin/BRANCH`, or a tip whose
/// commit starts with an abbreviated `git_ref`.
fn find(refs: &Refs, git_ref: &str) -> Option<String> {
    let named = candidates(git_ref).into_iter().find_map(|c| refs.iter().find(|(name, _)| *name == c));
    if let Some((_, commit)) = named {
        return Some(commit.clone());
    }
    let wanted = git_ref.to_ascii_lowercase();
    let mut tips: Vec<&String> = refs
        .iter()
        .map(|(_, commit)| commit)
        .filter(|c| is_short_commit(git_ref) && c.starts_with(&wanted))
        .collect();
    tips.dedup();
    (tips.len() == 1).then(|| tips[0].clone())
}

/// The refs of `url`, asked of the remote (an ls-remote) with gix.
fn list_refs(url: &str) -> Result<Refs, String> {
    // gix needs a repository to talk to a remote; an empty scratch one does.
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    let repo = gix::init_bare(scratch.path()).map_err(|e| e.to_string())?;
    let remote = repo
        .remote_at(url)
        .map_err(|e| e.to_string())?
        .with_fetch_tags(gix::remote::fetch::Tags::None)
        .with_refspecs(
            ["HEAD", "+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"],
            gix::remote::Direction::Fetch,
        )
        .map_err(|e| e.to_string())?;
    let connection = remote.connect(gix::remote::Direction::Fetch).map_err(|e| e.to_string())?;
    let (ref_map, _handshake) =
        connection.ref_map(gix::progress::Discard, Default::default()).map_err(|e| e.to_string())?;
    Ok(ref_map
        .remote_refs
        .iter()
        .filter_map(|r| {
            let (name, target, peeled) = r.unpack();
            Some((name.to_string(), peeled.or(target)?.to_string()))
        })
        .collect())
}

/// The local repository `url` names, when it is one (a path or `file://`), for what an
/// ls-remote cannot answer: whether a commit exists, and what an abbreviation stands for.
fn local_repository(url: &str) -> Option<gix::Repository> {
    let path = url.strip_prefix("file://").unwrap_or(url);
    path.starts_with('/').then(|| gix::open(path).ok()).flatten()
}

/// The commit a full or abbreviated commit id names in a local repository.
fn local_commit(repo: &gix::Repository, git_ref: &str) -> Result<String, String> {
    let id = if is_commit_id(git_ref) {
        gix::ObjectId::from_hex(git_ref.as_bytes()).map_err(|e| e.to_string())?
    } else {
        let prefix = gix::hash::Prefix::from_hex(git_ref).map_err(|e| e.to_string())?;
        match repo.objects.lookup_prefix(prefix, None).map_err(|e| e.to_string())? {
            Some(Ok(id)) => id,
            Some(Err(())) => return Err("the abbreviation is ambiguous; give more digits".into()),
            None => return Err("no such object".into()),
        }
    };
    let object = repo.find_object(id).map_err(|e| e.to_string())?;
    if object.kind != gix::object::Kind::Commit {
        return Err(format!("{id} is a {}, not a commit", object.kind));
    }
    Ok(id.to_string())
}

/// The full commit `git_ref` names at `url`, from the deploying machine.
fn resolve(url: &str, git_ref: &str) -> Result<String, Unresolved> {
    let local = local_repository(url);
    if let Some(repo) = &local {
        if is_commit_id(git_ref) || is_short_commit(git_ref) {
            return local_commit(repo, git_ref).map_err(|e| {
                Unresolved::Missing(format!("commit {git_ref:?} does not exist at {url}: {e}"))
            });
        }
    } else if is_commit_id(git_ref) {
        // A remote cannot be asked for a commit that is no ref's tip without fetching it; the
        // target's fetch checks it, before its work tree is touched.
        return Ok(git_ref.to_ascii_lowercase());
    }
    let refs =
        list_refs(url).map_err(|e| Unresolved::Unreachable(format!("cannot list the refs of {url}: {e}")))?;
    find(&refs, git_ref).ok_or_else(|| {
        let hint = if is_short_commit(git_ref) {
            " (an abbreviated commit must be a branch or tag tip there; give the full commit)"
        } else {
            ""
        };
        Unresolved::Missing(format!("ref {git_ref:?} does not exist at {url}{hint}"))
    })
}

/// The same, asked on the target (`git ls-remote` there), for a URL only the target reaches.
/// Nothing is written on the target.
fn resolve_on_target(target: &Target<'_>, url: &str, git_ref: &str) -> Result<String, String> {
    if is_commit_id(git_ref) {
        return Ok(git_ref.to_ascii_lowercase());
    }
    let listing = target.run_script(r#"git ls-remote "$1""#, &[url], b"")?;
    let mut refs: Refs = Vec::new();
    for line in String::from_utf8_lossy(&listing).lines() {
        let Some((commit, name)) = line.split_once('\t') else { continue };
        // The peeled line of an annotated tag (`NAME^{}`) replaces the tag object's id.
        let name = match name.strip_suffix("^{}") {
            Some(tag) => {
                refs.retain(|(n, _)| n != tag);
                tag
            }
            None => name,
        };
        refs.push((name.to_owned(), commit.to_owned()));
    }
    find(&refs, git_ref)
        .ok_or_else(|| format!("ref {git_ref:?} does not exist at {url} (asked on the target)"))
}

krops_core::export_populator!(Git);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_like_words_are_rejected() {
        assert!(check_word("url", "--upload-pack=touch x").is_err());
        assert!(check_word("ref", "-b").is_err());
        assert!(check_word("ref", "").is_err());
        assert!(check_word("ref", "a\nb").is_err());
        assert!(check_word("url", "file:///srv/repo").is_ok());
    }

    #[test]
    fn commit_ids_need_no_lookup() {
        let id = "4b4bbce199d3b3a8001ee93495604289b01aaad3";
        assert_eq!(resolve("file:///nonexistent", id).ok().as_deref(), Some(id));
        assert!(!is_commit_id("4b4bbce"));
    }
}
