//! The `git` source type: a work tree fetched *on the target* from `url` (so a nixpkgs
//! checkout never crosses the deployer's uplink), hard-reset to `ref`. Unlike krops, `ref` is
//! resolved here with gix before any target is touched: a branch or tag becomes a commit id,
//! every target gets the same commit, and a ref that does not exist fails the deployment first.

use krops_core::plugin::{PopulatorPlugin, Target};
use krops_core::wire::{PopulateRequest, PrepareRequest, ValidateRequest};
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

/// Puts commit `$3` of `$2` at `$1`. `$4`: shallow, `$5`: fetch always (1 or 0); the rest are
/// `git clean` exclude patterns.
const POPULATE_SCRIPT: &str = r#"set -efu
dest=$1 url=$2 commit=$3 shallow=$4 fetch_always=$5
shift 5
# Configuration found on the target never runs code or reaches elsewhere: no hooks, no
# fsmonitor, no ext:: transport, the standard upload-pack.
git() {
  command git -c core.hooksPath=/dev/null -c core.fsmonitor=false -c protocol.ext.allow=never \
    -c remote.origin.uploadpack=git-upload-pack -c core.sshCommand=ssh "$@"
}
# Anything at the path that is not the top of a work tree of its own makes way, as in krops:
# its .git must be a real directory inside it (not a symlink or a `gitdir:` file, which would
# lead git to a repository elsewhere).
if [ -e "$dest" ] || [ -L "$dest" ]; then
  top=$(git -C "$dest" rev-parse --show-toplevel 2>/dev/null || true)
  if [ -L "$dest" ] || [ -L "$dest/.git" ] || [ ! -d "$dest/.git" ] || [ "$top" != "$(cd -- "$dest" && pwd -P)" ]; then
    rm -rf -- "$dest"
  fi
fi
if [ ! -e "$dest" ]; then
  if [ "$shallow" = 1 ]; then
    git init -q -- "$dest"
  else
    git clone -q --no-checkout -- "$url" "$dest"
  fi
fi
cd -- "$dest"
if ! current=$(git config --get remote.origin.url); then
  git remote add origin "$url"
elif [ "$current" != "$url" ]; then
  git remote set-url origin "$url"
fi
if [ "$fetch_always" = 1 ] || ! git cat-file -e "$commit^{commit}" 2>/dev/null; then
  if [ "$shallow" = 1 ]; then
    git fetch -q --depth=1 origin "$commit"
  else
    git fetch -q origin "$commit"
  fi
fi
# A work tree already at the commit and unmodified is left alone, so that a redeploy changes
# nothing (not even git's index or reflog); status must not refresh the index either.
head=$(git rev-parse -q --verify HEAD || true)
if [ "$head" != "$commit" ] || [ -n "$(GIT_OPTIONAL_LOCKS=0 git status --porcelain --untracked-files=no)" ]; then
  git reset -q --hard "$commit"
  git submodule -q update --init --recursive
fi
count=$#
for pattern do set -- "$@" -e "$pattern"; done
shift "$count"
git clean -q -dfx "$@"
git rev-parse HEAD"#;

impl PopulatorPlugin for Git {
    const TYPE: &'static str = "git";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Attrs = Attrs;

    fn validate(&self, request: ValidateRequest<Attrs>) -> Result<Attrs, String> {
        let attrs = request.attrs;
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

    fn prepare(&self, _: &Target<'_>, request: PrepareRequest<Attrs>) -> Result<Attrs, String> {
        let mut attrs = request.attrs;
        attrs.commit = Some(resolve(&attrs.url, &attrs.git_ref)?);
        Ok(attrs)
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
        let head = target.run_script(POPULATE_SCRIPT, &args, b"")?;
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

/// git's own order for a short name (`git rev-parse`'s DWIM): exact, refs/, tags, heads.
fn candidates(git_ref: &str) -> [String; 4] {
    [
        git_ref.to_owned(),
        format!("refs/{git_ref}"),
        format!("refs/tags/{git_ref}"),
        format!("refs/heads/{git_ref}"),
    ]
}

/// The commit `git_ref` names at `url`, asked of the remote (an ls-remote) with gix.
fn resolve(url: &str, git_ref: &str) -> Result<String, String> {
    if is_commit_id(git_ref) {
        return Ok(git_ref.to_ascii_lowercase());
    }
    let fail = |e: &dyn std::fmt::Display| format!("cannot list the refs of {url}: {e}");
    // gix needs a repository to talk to a remote; an empty scratch one does.
    let scratch = tempfile::tempdir().map_err(|e| fail(&e))?;
    let repo = gix::init_bare(scratch.path()).map_err(|e| fail(&e))?;
    let remote = repo
        .remote_at(url)
        .map_err(|e| fail(&e))?
        .with_fetch_tags(gix::remote::fetch::Tags::None)
        .with_refspecs(
            ["HEAD", "+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"],
            gix::remote::Direction::Fetch,
        )
        .map_err(|e| fail(&e))?;
    let connection = remote.connect(gix::remote::Direction::Fetch).map_err(|e| fail(&e))?;
    let (ref_map, _handshake) =
        connection.ref_map(gix::progress::Discard, Default::default()).map_err(|e| fail(&e))?;
    for candidate in candidates(git_ref) {
        for remote_ref in &ref_map.remote_refs {
            // An annotated tag is peeled to the commit it tags.
            let (name, target, peeled) = remote_ref.unpack();
            if name == candidate.as_bytes() {
                if let Some(id) = peeled.or(target) {
                    return Ok(id.to_string());
                }
            }
        }
    }
    Err(format!("ref {git_ref:?} does not exist at {url}"))
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
        assert_eq!(resolve("file:///nonexistent", id).as_deref(), Ok(id));
        assert!(!is_commit_id("4b4bbce"));
    }
}
