//! Daily use: finding the configuration from a subdirectory, the selection grammar.

use std::process::Command;

use crate::support::{krops_bin, Outcome, Sandbox};

/// krops in `dir` (below the sandbox), with no `-f`.
fn krops_in(sb: &Sandbox, dir: &str, args: &[&str]) -> Outcome {
    let mut command = Command::new(krops_bin());
    command.current_dir(sb.mkdir(dir)).env_remove("KROPS_PLUGIN_PATH").args(args);
    Outcome::of(command)
}

/// From a subdirectory, krops takes the nearest krops.toml above it (relative paths in it still
/// count from its own directory); two configurations in one directory: the first in SPEC's
/// order, with a warning naming both.
#[test]
fn the_configuration_is_found_from_a_subdirectory() {
    let sb = Sandbox::new();
    sb.target_dir("site");
    sb.write("conf/a", "a");
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.site]\ntarget = {:?}\nsource.a.file = \"conf/a\"\n",
            sb.path("site").display().to_string()
        ),
    );
    krops_in(&sb, "deep/er/still", &["populate"]).success();
    assert_eq!(sb.read("site/a"), "a");
    sb.write("deep/krops.json", "{\"deployments\": {}}");
    krops_in(&sb, "deep/er", &["eval"])
        .code(2)
        .stderr_has(&format!("{}: defines no deployments", sb.path("deep/krops.json").display()));
    std::fs::remove_file(sb.path("deep/krops.json")).unwrap();
    sb.write("krops.nix", "throw \"not this one\"");
    krops_in(&sb, "deep", &["eval", "--names"]).success().stdout_has("site").stderr_has(&format!(
        "warning: using {} and not {} beside it",
        sb.path("krops.toml").display(),
        sb.path("krops.nix").display()
    ));
    let nowhere = tempfile::tempdir().unwrap();
    let mut command = Command::new(krops_bin());
    command.current_dir(nowhere.path()).args(["eval"]);
    Outcome::of(command).code(2).stderr_has("or a directory above it; name a file with -f");
}

/// `,` union, `&` intersection, `!` all but; a name as written wins.
#[test]
fn selection_by_union_intersection_and_negation() {
    let sb = Sandbox::new();
    let mut toml = String::new();
    for (name, tags) in [
        ("web-eu", "\"web\", \"eu\""),
        ("web-us", "\"web\", \"us\""),
        ("db-eu", "\"db\", \"eu\""),
        ("a,b", ""),
    ] {
        toml.push_str(&format!(
            "[deployments.{name:?}]\ntarget = \"/tmp/krops-{}\"\ntags = [{tags}]\n",
            name.replace(',', "-")
        ));
    }
    sb.write("krops.toml", &toml);
    let names = |selection: &str| {
        let out = sb.krops(&["eval", "--names", selection]);
        out.success();
        out.stdout.lines().map(str::to_owned).collect::<Vec<_>>()
    };
    assert_eq!(names("@web,@db"), ["web-eu", "web-us", "db-eu"]);
    assert_eq!(names("@web&@eu"), ["web-eu"]);
    assert_eq!(names("!@eu"), ["a,b", "web-us"]);
    assert_eq!(names("@eu&!db-*"), ["web-eu"]);
    assert_eq!(names("a,b"), ["a,b"]);
    sb.krops(&["eval", "--names", "@web&@db"]).code(2).stderr_has("selects no deployment");
    sb.krops(&["eval", "--names", "@web&@asia"]).code(2).stderr_has("no deployment matches \"@asia\"");
}
