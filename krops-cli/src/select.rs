//! Which deployments a command acts on: NAMEs that are exact names, globs (`web-*`) or tags
//! (`@eu`), filtered by the deployments' `kind`. A NAME that selects nothing is an error with
//! the closest names suggested.

use crate::config::{Config, Deployment, Kind};

/// The commands, as far as selection cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A command with activation: only deployments of this kind (or of none) fit.
    Activate(Kind),
    /// populate, eval, diff, status: every deployment fits.
    Any,
}

impl Purpose {
    fn fits(self, deployment: &Deployment) -> bool {
        match (self, deployment.kind) {
            (Purpose::Any, _) | (_, None) => true,
            (Purpose::Activate(wanted), Some(kind)) => wanted == kind,
        }
    }
}

/// The deployments `names` select for `purpose`, in the order named (a glob's or tag's matches
/// in the file's order), each once. `single` is `run`'s rule: exactly one deployment, which may
/// go unnamed when it is the only one that fits (or the only one of kind run).
pub fn select(
    config: &Config,
    names: &[String],
    purpose: Purpose,
    single: bool,
) -> Result<Vec<(String, Deployment)>, String> {
    let file = config.file.display();
    if config.deployments.is_empty() {
        return Err(format!("{file}: defines no deployments"));
    }
    let mut selected: Vec<(String, Deployment)> = Vec::new();
    if names.is_empty() {
        selected = config
            .deployments
            .iter()
            .filter(|(_, d)| purpose.fits(d))
            .map(|(n, d)| (n.clone(), d.clone()))
            .collect();
        if single && selected.len() > 1 {
            let of_kind: Vec<_> =
                selected.iter().filter(|(_, d)| d.kind == Some(Kind::Run)).cloned().collect();
            if of_kind.len() != 1 {
                let names: Vec<&str> = selected.iter().map(|(n, _)| n.as_str()).collect();
                return Err(format!(
                    "{file} holds several deployments for run ({}); name one",
                    names.join(", ")
                ));
            }
            selected = of_kind;
        }
        if selected.is_empty() {
            return Err(format!("{file}: no deployment fits this command (their kinds: {})", kinds(config)));
        }
        return Ok(selected);
    }
    for name in names {
        let matches = expression(config, name)?;
        if matches.is_empty() {
            return Err(format!(
                "{file}: {name:?} selects no deployment (its parts match, but not together)"
            ));
        }
        let fitting: Vec<&String> =
            matches.iter().copied().filter(|n| purpose.fits(&config.deployments[*n])).collect();
        if fitting.is_empty() {
            let kind = config.deployments[matches[0]].kind.map_or("another", Kind::name);
            return Err(format!(
                "{file}: {name:?} selects only deployments of kind {kind}; use `krops {kind} {name}` (or `krops populate`)"
            ));
        }
        for found in fitting {
            if !selected.iter().any(|(n, _)| n == found) {
                selected.push((found.clone(), config.deployments[found].clone()));
            }
        }
    }
    if single && selected.len() != 1 {
        return Err(format!("run acts on one deployment; {} are selected", selected.len()));
    }
    Ok(selected)
}

/// Deployment names that a NAME argument selects, in the file's order. Its grammar:
///
/// ```text
/// NAME   = TERM { "," TERM }        union
/// TERM   = FACTOR { "&" FACTOR }    intersection
/// FACTOR = [ "!" ] PATTERN          "!": every deployment but those
/// ```
///
/// where a PATTERN is a deployment's or group's name, `@TAG` or a glob. A NAME that is a
/// deployment's or group's name as written is that, whatever characters it holds. Every
/// PATTERN must match something (a typo is an error, not an empty part).
fn expression<'c>(config: &'c Config, name: &str) -> Result<Vec<&'c String>, String> {
    if config.deployments.contains_key(name) || config.groups.contains_key(name) {
        return matching(config, name);
    }
    let file = config.file.display();
    let mut union: Vec<&String> = Vec::new();
    for term in name.split(',') {
        let mut intersection: Option<Vec<&String>> = None;
        for factor in term.split('&') {
            let (negated, pattern) = match factor.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, factor),
            };
            if pattern.is_empty() {
                return Err(format!("{file}: {name:?}: an empty part (the grammar: NAME,NAME union, NAME&NAME intersection, !NAME all but)"));
            }
            let matches = matching(config, pattern)?;
            if matches.is_empty() {
                return Err(format!(
                    "{file}: no deployment matches {pattern:?}{}",
                    suggestion(config, pattern)
                ));
            }
            let selected: Vec<&String> = if negated {
                config.deployments.keys().filter(|n| !matches.contains(n)).collect()
            } else {
                matches
            };
            intersection = Some(match intersection {
                None => selected,
                Some(so_far) => so_far.into_iter().filter(|n| selected.contains(n)).collect(),
            });
        }
        for found in intersection.unwrap_or_default() {
            if !union.contains(&found) {
                union.push(found);
            }
        }
    }
    Ok(union)
}

/// Deployment names that `pattern` selects: `@TAG`, a glob, an exact name, or a group's name
/// (a configuration in Nix's lists, sets and scripts of deployments).
fn matching<'c>(config: &'c Config, pattern: &str) -> Result<Vec<&'c String>, String> {
    // A name as written wins, even when it holds glob characters.
    if let Some((name, _)) = config.deployments.get_key_value(pattern) {
        return Ok(vec![name]);
    }
    if let Some(members) = config.groups.get(pattern) {
        return Ok(members
            .iter()
            .filter_map(|m| config.deployments.get_key_value(m).map(|(n, _)| n))
            .collect());
    }
    if let Some(tag) = pattern.strip_prefix('@') {
        return Ok(config
            .deployments
            .iter()
            .filter(|(_, d)| d.tags.iter().any(|t| t == tag))
            .map(|(n, _)| n)
            .collect());
    }
    if pattern.contains(['*', '?', '[']) {
        let glob =
            glob::Pattern::new(pattern).map_err(|e| format!("{pattern:?} is not a valid glob: {e}"))?;
        return Ok(config.deployments.keys().filter(|n| glob.matches(n)).collect());
    }
    Ok(config.deployments.get_key_value(pattern).map(|(n, _)| n).into_iter().collect())
}

/// `; did you mean "web1", "web2"?` for the names (and tags) closest to `wanted`.
fn suggestion(config: &Config, wanted: &str) -> String {
    let tags = config.deployments.values().flat_map(|d| d.tags.iter().map(|t| format!("@{t}")));
    let candidates: Vec<String> =
        config.deployments.keys().chain(config.groups.keys()).cloned().chain(tags).collect();
    let mut scored: Vec<(f64, &String)> = candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(wanted, c), c))
        .filter(|(score, _)| *score > 0.7)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.dedup_by(|a, b| a.1 == b.1);
    let close: Vec<String> = scored.iter().take(3).map(|(_, c)| format!("{c:?}")).collect();
    if close.is_empty() {
        let names: Vec<&str> = config.deployments.keys().map(String::as_str).collect();
        format!("; deployments: {}", names.join(", "))
    } else {
        format!("; did you mean {}?", close.join(", "))
    }
}

fn kinds(config: &Config) -> String {
    let kinds: Vec<String> = config
        .deployments
        .iter()
        .map(|(n, d)| format!("{n}: {}", d.kind.map_or("any", Kind::name)))
        .collect();
    kinds.join(", ")
}

/// `--shard K/N`: the K-th of N parts of a selection, for splitting one fleet across N
/// machines (a CI job matrix). The selection is ranked by a hash of each deployment's name, and
/// rank `i` falls to part `i mod N + 1`: every part holds a share that differs from any other
/// by at most one deployment, and the parts depend on the names alone, never on the file's
/// order, the machine or the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// 1 ≤ index ≤ count.
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(text: &str) -> Result<Shard, String> {
        let wrong = || format!("{text:?} is not K/N with 1 ≤ K ≤ N (e.g. 2/5)");
        let (index, count) = text.split_once('/').ok_or_else(wrong)?;
        let index: usize = index.parse().map_err(|_| wrong())?;
        let count: usize = count.parse().map_err(|_| wrong())?;
        if index == 0 || index > count {
            return Err(wrong());
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// The part of `selected` that is this shard's, in the selection's order.
    pub fn of<T>(self, selected: Vec<(String, T)>) -> Vec<(String, T)> {
        let mut ranked: Vec<(String, &str)> = selected
            .iter()
            .map(|(name, _)| (krops_core::sdk::sha256_hex(name.as_bytes()), name.as_str()))
            .collect();
        ranked.sort();
        let mine: std::collections::BTreeSet<String> = ranked
            .iter()
            .enumerate()
            .filter(|(rank, _)| rank % self.count + 1 == self.index)
            .map(|(_, (_, name))| (*name).to_owned())
            .collect();
        selected.into_iter().filter(|(name, _)| mine.contains(name)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, ShapeOnly, Syntax};
    use std::path::Path;
    use std::sync::Arc;

    fn config() -> Config {
        let text = r#"
            [deployments.web-1]
            target = "/tmp/w1"
            tags = ["eu", "web"]
            [deployments.web-2]
            target = "/tmp/w2"
            tags = ["us", "web"]
            [deployments.db]
            target = "/tmp/db"
            tags = ["eu"]
            [deployments.check]
            target = "/tmp/c"
            kind = "build"
            [deployments.shell]
            target = "/tmp/s"
            kind = "run"
        "#;
        parse(Path::new("/x/krops.toml"), Syntax::Toml, text, Arc::new(ShapeOnly), None).unwrap()
    }

    fn names(selected: Result<Vec<(String, Deployment)>, String>) -> Vec<String> {
        selected.unwrap().into_iter().map(|(n, _)| n).collect()
    }

    #[test]
    fn globs_tags_and_kinds() {
        let c = config();
        let deploy = Purpose::Activate(Kind::Deploy);
        let all = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(names(select(&c, &[], deploy, false)), ["db", "web-1", "web-2"]);
        assert_eq!(names(select(&c, &[], Purpose::Any, false)).len(), 5);
        assert_eq!(names(select(&c, &all(&["web-*"]), deploy, false)), ["web-1", "web-2"]);
        assert_eq!(names(select(&c, &all(&["@eu"]), deploy, false)), ["db", "web-1"]);
        assert_eq!(names(select(&c, &all(&["@web", "web-1"]), deploy, false)), ["web-1", "web-2"]);
        assert_eq!(names(select(&c, &[], Purpose::Activate(Kind::Run), true)), ["shell"]);
        let wrong_kind = select(&c, &all(&["check"]), deploy, false).unwrap_err();
        assert!(wrong_kind.contains("use `krops build check`"), "{wrong_kind}");
        let unknown = select(&c, &all(&["web1"]), deploy, false).unwrap_err();
        assert!(unknown.contains("did you mean \"web-1\""), "{unknown}");
        assert!(select(&c, &all(&["@asia"]), deploy, false).unwrap_err().contains("no deployment matches"));
    }

    #[test]
    fn union_intersection_and_negation() {
        let c = config();
        let any = |name: &str| names(select(&c, &[name.to_owned()], Purpose::Any, false));
        assert_eq!(any("@eu,@us"), ["db", "web-1", "web-2"]);
        assert_eq!(any("@web&@eu"), ["web-1"]);
        assert_eq!(any("!@web"), ["check", "db", "shell"]);
        assert_eq!(any("@web&!@eu"), ["web-2"]);
        assert_eq!(any("db,web-*&!web-2"), ["db", "web-1"]);
        assert_eq!(
            names(select(&c, &["!@eu".to_owned()], Purpose::Activate(Kind::Deploy), false)),
            ["web-2"]
        );
        let err = |name: &str| select(&c, &[name.to_owned()], Purpose::Any, false).unwrap_err();
        assert!(err("@eu&@us").contains("selects no deployment"), "{}", err("@eu&@us"));
        assert!(err("@eu,").contains("an empty part"));
        assert!(err("@eu&@asia").contains("no deployment matches \"@asia\""));
    }

    #[test]
    fn shards_partition_a_selection_evenly_whatever_its_order() {
        let names: Vec<(String, ())> = (0..23).map(|i| (format!("host-{i}"), ())).collect();
        let mut reversed = names.clone();
        reversed.reverse();
        for count in [1, 2, 3, 5, 7, 23, 30] {
            let parts: Vec<Vec<String>> = (1..=count)
                .map(|index| {
                    let shard = Shard { index, count };
                    let mut part: Vec<String> = shard.of(names.clone()).into_iter().map(|(n, _)| n).collect();
                    let mut again: Vec<String> =
                        shard.of(reversed.clone()).into_iter().map(|(n, _)| n).collect();
                    part.sort();
                    again.sort();
                    assert_eq!(part, again, "{index}/{count} depends on the order");
                    part
                })
                .collect();
            let mut all: Vec<String> = parts.concat();
            all.sort();
            let mut expected: Vec<String> = names.iter().map(|(n, _)| n.clone()).collect();
            expected.sort();
            assert_eq!(all, expected, "the {count} parts are not a partition");
            let sizes: Vec<usize> = parts.iter().map(Vec::len).collect();
            assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1, "{sizes:?}");
        }
    }

    #[test]
    fn a_shard_is_k_of_n() {
        assert_eq!("2/5".parse(), Ok(Shard { index: 2, count: 5 }));
        for wrong in ["0/3", "4/3", "3", "a/b", "1/0", "-1/2", ""] {
            assert!(wrong.parse::<Shard>().is_err(), "{wrong}");
        }
    }
}
