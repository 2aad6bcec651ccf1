//! `--shard K/N`: one fleet split across N runners (a CI job matrix), and `eval --names`, which
//! lists what a matrix is made of.

use std::collections::BTreeSet;

use crate::support::{Outcome, Sandbox};

/// A configuration of `count` local deployments, written in the given order, each with a pipe
/// source naming its deployment; half of them tagged `odd`.
fn fleet(sb: &Sandbox, order: &[usize]) {
    let mut toml = String::new();
    for i in order {
        let tags = if i % 2 == 1 { "tags = [\"odd\"]\n" } else { "" };
        toml.push_str(&format!(
            "[deployments.host-{i:02}]\ntarget = {:?}\nforce = true\n{tags}[deployments.host-{i:02}.source]\ninfo.pipe = \"echo host-{i:02}\"\n",
            sb.path(&format!("targets/host-{i:02}")).display().to_string()
        ));
    }
    sb.write("krops.toml", &toml);
}

fn names(sb: &Sandbox, args: &[&str]) -> Vec<String> {
    let out = sb.krops(args);
    out.success();
    out.stdout.lines().map(str::to_owned).collect()
}

/// Every selection (all, a tag, a glob) split into N parts for several N: the parts are
/// disjoint, together the selection, within one of each other in size, and the same in a
/// second run and with the file written in another order.
#[test]
fn shards_partition_any_selection_exactly_and_stably() {
    let sb = Sandbox::new();
    let forward: Vec<usize> = (0..17).collect();
    let backward: Vec<usize> = forward.iter().rev().copied().collect();
    for selection in [vec![], vec!["@odd"], vec!["host-1*"]] {
        fleet(&sb, &forward);
        let mut args = vec!["eval", "--names"];
        args.extend(selection.iter().copied());
        let all: BTreeSet<String> = names(&sb, &args).into_iter().collect();
        assert!(!all.is_empty());
        for count in [1, 2, 3, 4, 7, 20] {
            let shard_of = |k: usize| {
                let shard = format!("{k}/{count}");
                let mut sharded = vec!["--shard", &shard];
                sharded.extend(args.iter().copied());
                names(&sb, &sharded)
            };
            let parts: Vec<Vec<String>> = (1..=count).map(shard_of).collect();
            let mut union = BTreeSet::new();
            for (k, part) in parts.iter().enumerate() {
                for name in part {
                    assert!(union.insert(name.clone()), "{name} is in two parts of {count} ({selection:?})");
                    assert!(all.contains(name), "{name} was not selected ({selection:?})");
                }
                assert_eq!(part, &shard_of(k + 1), "a second run differs");
            }
            assert_eq!(union, all, "{count} parts are not the whole selection {selection:?}");
            let sizes: Vec<usize> = parts.iter().map(Vec::len).collect();
            assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1, "{sizes:?}");
            fleet(&sb, &backward);
            let reordered: Vec<Vec<String>> = (1..=count).map(shard_of).collect();
            let as_sets = |parts: &[Vec<String>]| -> Vec<BTreeSet<String>> {
                parts.iter().map(|p| p.iter().cloned().collect()).collect()
            };
            assert_eq!(as_sets(&parts), as_sets(&reordered), "the file's order changed the parts");
            fleet(&sb, &forward);
        }
    }
}

/// Three runners each populating their shard populate every deployment exactly once; a
/// shard with nothing in it succeeds and says so.
#[test]
fn sharded_runs_populate_every_deployment_once() {
    let sb = Sandbox::new();
    fleet(&sb, &(0..7).collect::<Vec<_>>());
    for k in 1..=3 {
        sb.krops(&["--shard", &format!("{k}/3"), "populate"]).success();
    }
    for i in 0..7 {
        assert_eq!(sb.read(&format!("targets/host-{i:02}/info")), format!("host-{i:02}\n"));
    }
    sb.krops(&["--shard", "9/9", "populate", "host-00"]).success().stderr_has("holds no deployment");
    let json = sb.krops(&["--json", "--shard", "1/1", "eval", "--names"]);
    json.success();
    let first: serde_json::Value = serde_json::from_str(json.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(first["event"], "names");
    assert_eq!(first["names"].as_array().unwrap().len(), 7);
    for wrong in ["0/3", "4/3", "x"] {
        Outcome::of(sb.krops_command(&["--shard", wrong, "populate"])).code(2);
    }
}
