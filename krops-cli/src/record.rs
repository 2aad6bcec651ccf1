//! The deploy record on a target (`<path>/.krops-record`), and what it buys: a source whose
//! fingerprint (from its plugin, computed here) and whose state on the target are those of
//! its last populate is unchanged and is not transferred again. The target's state is asked
//! for in the round trip that takes the lock, so a redeploy that changes nothing costs that
//! one round trip; a hand edit on the target changes the state and is repaired.
//!
//! The record is lines of text, written by the target's shell: `krops-record 1`, `by
//! USER@HOST`, `when TIME`, then `source FINGERPRINT STATE NAME` per source. It never holds
//! secret content: fingerprints of secrets come from their ciphertexts, states from names,
//! sizes and mtimes.

use std::collections::{BTreeMap, BTreeSet};

/// The record file, beside the sentinel.
pub const FILE: &str = ".krops-record";

/// A shell function, `state KIND NAME`, printing the state of `<path>/NAME` (`$p`): a SHA-256
/// of every entry's relative name, kind, size, mtime, mode and link target, or `absent`. For a
/// git work tree (KIND `g`) the `.git` directories below it are left out and the commit of its
/// HEAD put in instead. When the tools fail (no `find -printf`, no `sha256sum`), it prints `unknown`, which
/// never matches a record: an unreadable state means "populate".
pub const STATE_FUNCTION: &str = r#"state() {
  if [ -e "$p/$2" ] || [ -L "$p/$2" ]; then
    h=$(cd -- "$p" && {
      find "./$2" -maxdepth 0 -printf '%P\t%y\t%s\t%T@\t%m\t%l\n' &&
      if [ "$1" = g ]; then
        find "./$2" -mindepth 1 -name .git -prune -o -printf '%P\t%y\t%s\t%T@\t%m\t%l\n' &&
        git -C "./$2" rev-parse HEAD
      else
        find "./$2" -mindepth 1 -printf '%P\t%y\t%s\t%T@\t%m\t%l\n'
      fi
    } 2>/dev/null | LC_ALL=C sort | sha256sum | cut -d' ' -f1)
    case $h in
      ''|e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855) echo unknown ;;
      *) echo "$h" ;;
    esac
  else
    echo absent
  fi
}"#;

/// How the lock script and `WRITE_SCRIPT` are told about a source: `KIND NAME`, KIND `g` for a
/// git work tree, `-` otherwise.
pub fn state_argument(source_type: &str, name: &str) -> String {
    let kind = if source_type == "git" { "g" } else { "-" };
    format!("{kind} {name}")
}

/// What the lock's round trip reported: each asked source's state, and the last record.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub states: BTreeMap<String, String>,
    /// `(fingerprint, state)` by source, as recorded after the last populate.
    pub recorded: BTreeMap<String, (String, String)>,
    /// Where the system profile pointed before activation (`None`: not asked, or no profile).
    pub profile: Option<String>,
}

impl Seen {
    /// Reads the lines the lock script printed before `locked`: `state HASH NAME` and the
    /// record's own lines, prefixed `record `.
    pub fn parse(lines: &[String]) -> Seen {
        let mut seen = Seen::default();
        for line in lines {
            if let Some(profile) = line.strip_prefix("profile ") {
                seen.profile = Some(profile.trim().to_owned()).filter(|p| !p.is_empty());
            } else if let Some(rest) = line.strip_prefix("state ") {
                if let Some((hash, name)) = rest.split_once(' ') {
                    seen.states.insert(name.to_owned(), hash.to_owned());
                }
            } else if let Some(rest) = line.strip_prefix("record source ") {
                let mut fields = rest.splitn(3, ' ');
                if let (Some(fingerprint), Some(state), Some(name)) =
                    (fields.next(), fields.next(), fields.next())
                {
                    seen.recorded.insert(name.to_owned(), (fingerprint.to_owned(), state.to_owned()));
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

/// The script that writes a new record: `$1` path, `$2` who, then `FINGERPRINT KIND NAME`
/// triples as single arguments for every fingerprinted source. Each source's state is taken
/// now, after populate; the file is written beside and renamed into place (`printf`, not
/// `echo`, so that no name is read as escapes).
pub const WRITE_SCRIPT: &str = r#"set -e
p=$1 by=$2
shift 2
tmp=$(mktemp -- "$p/.krops-record.XXXXXX")
{
  printf '%s\n' "krops-record 1" "by $by" "when $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  for entry do
    fingerprint=${entry%% *} rest=${entry#* }
    kind=${rest%% *} name=${rest#* }
    printf 'source %s %s %s\n' "$fingerprint" "$(state "$kind" "$name")" "$name"
  done
} > "$tmp"
mv -fT -- "$tmp" "$p/.krops-record""#;

/// `WRITE_SCRIPT`'s arguments after path and holder: `FINGERPRINT KIND NAME` per source.
pub fn write_arguments(
    fingerprints: &BTreeMap<String, String>,
    types: &BTreeMap<String, String>,
) -> Vec<String> {
    fingerprints
        .iter()
        .map(|(name, fingerprint)| {
            let source_type = types.get(name).map_or("", String::as_str);
            format!("{fingerprint} {}", state_argument(source_type, name))
        })
        .collect()
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
