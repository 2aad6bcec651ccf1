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

/// A shell function, `state NAME`, printing the state of `<path>/NAME` (`$p`): a SHA-256 of
/// every entry's relative name, kind, size, mtime, mode and link target (`.git` directories
/// left out), or `absent`.
pub const STATE_FUNCTION: &str = r#"state() {
  if [ -e "$p/$1" ] || [ -L "$p/$1" ]; then
    (cd -- "$p" && find "./$1" -name .git -prune -o -printf '%P\t%y\t%s\t%T@\t%m\t%l\n' 2>/dev/null | LC_ALL=C sort | sha256sum | cut -d' ' -f1)
  else
    echo absent
  fi
}"#;

/// What the lock's round trip reported: each asked source's state, and the last record.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub states: BTreeMap<String, String>,
    /// `(fingerprint, state)` by source, as recorded after the last populate.
    pub recorded: BTreeMap<String, (String, String)>,
}

impl Seen {
    /// Reads the lines the lock script printed before `locked`: `state HASH NAME` and the
    /// record's own lines, prefixed `record `.
    pub fn parse(lines: &[String]) -> Seen {
        let mut seen = Seen::default();
        for line in lines {
            if let Some(rest) = line.strip_prefix("state ") {
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
                    recorded == *fingerprint && recorded_state == state && state != "absent"
                }
                _ => false,
            })
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// The script that writes a new record: `$1` path, `$2` who, then `FINGERPRINT NAME` pairs as
/// single arguments for every fingerprinted source. Each source's state is taken now, after
/// populate; the file is written beside and renamed into place.
pub const WRITE_SCRIPT: &str = r#"set -e
p=$1 by=$2
shift 2
tmp=$(mktemp -- "$p/.krops-record.XXXXXX")
{
  echo "krops-record 1"
  echo "by $by"
  echo "when $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  for entry do
    fingerprint=${entry%% *} name=${entry#* }
    echo "source $fingerprint $(state "$name") $name"
  done
} > "$tmp"
mv -fT -- "$tmp" "$p/.krops-record""#;

/// `WRITE_SCRIPT`'s arguments after path and holder: `FINGERPRINT NAME` per source.
pub fn write_arguments(fingerprints: &BTreeMap<String, String>) -> Vec<String> {
    fingerprints.iter().map(|(name, fingerprint)| format!("{fingerprint} {name}")).collect()
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
