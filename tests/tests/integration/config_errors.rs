//! Bad configurations: exit status 2, file and line:column named, no target touched.

use crate::support::Sandbox;

/// Writes `krops.<ext>` whose deployment targets `<sandbox>/site` (with a sentinel), runs
/// `krops deploy`, and checks exit 2, the message, the position, and an untouched target.
fn rejects(ext: &str, body: impl Fn(&str) -> String, position: &str, message: &str) {
    let sb = Sandbox::new();
    sb.target_dir("site");
    sb.write("conf/a.nix", "a");
    let file = format!("krops.{ext}");
    sb.write(&file, &body(&sb.path("site").display().to_string()));
    sb.krops(&["deploy"])
        .code(2)
        .stderr_has(&format!("{}:{position}", sb.path(&file).display()))
        .stderr_has(message);
    assert_eq!(sb.listing("site"), [".populate"], "the target was touched");
}

fn toml(lines: &'static str) -> impl Fn(&str) -> String {
    move |target| format!("[deployments.site]\ntarget = {target:?}\n{lines}\n")
}

#[test]
fn unknown_key() {
    rejects("toml", toml("sourc.a.file = \"conf/a.nix\""), "3:1: ", "unknown field `sourc`");
    rejects(
        "json",
        |t| format!("{{\"deployments\": {{\"site\": {{\n  \"target\": {t:?},\n  \"bakup\": true}}}}}}"),
        "3:9: ",
        "unknown field `bakup`",
    );
}

#[test]
fn unknown_attribute_of_a_builtin_type() {
    rejects(
        "toml",
        toml("source.a.file = { path = \"conf/a.nix\", usechecksum = true }"),
        "3:",
        "unknown field `usechecksum`",
    );
}

#[test]
fn two_type_keys() {
    rejects(
        "toml",
        toml("[deployments.site.source.a]\nfile = \"conf/a.nix\"\npipe = \"echo\""),
        "3:",
        "has 2 type keys (file, pipe)",
    );
}

#[test]
fn wrong_value_type() {
    rejects("toml", toml("backup = \"yes\""), "3:10: ", "invalid type: string \"yes\", expected a boolean");
    rejects(
        "json",
        |t| format!("{{\"deployments\": {{\"site\": {{\"target\": {t:?},\n \"force\": 1}}}}}}"),
        "2:",
        "invalid type: integer `1`, expected a boolean",
    );
}

#[test]
fn file_path_that_does_not_exist() {
    rejects("toml", toml("source.a.file = \"conf/missing.nix\""), "3:", "conf/missing.nix does not exist");
}

#[test]
fn unknown_source_type_lists_the_available_ones() {
    rejects(
        "toml",
        toml("source.a.gti = { url = \"x\" }"),
        "3:",
        "unknown source type \"gti\"; available types: derivation, file, git, pass, passage, pipe, symlink",
    );
}

#[test]
fn bad_source_name_and_target() {
    rejects(
        "toml",
        toml("source.\"..\".file = \"conf/a.nix\""),
        "3:",
        "every part between '/' must be a name",
    );
    rejects(
        "toml",
        |_| "[deployments.site]\ntarget = \"-oProxyCommand=touch /tmp/x\"\n".to_owned(),
        "2:",
        "would be read as an ssh option",
    );
}

#[test]
fn unknown_deployment_name_and_bad_flags() {
    let sb = Sandbox::new();
    sb.target_dir("site");
    sb.write(
        "krops.toml",
        &format!("[deployments.site]\ntarget = {:?}\n", sb.path("site").display().to_string()),
    );
    sb.krops(&["populate", "nope"]).code(2).stderr_has("no deployment matches \"nope\"; deployments: site");
    sb.krops(&["deploy", "--operation", "--flake"]).code(2);
    sb.krops(&["deploy", "--operation=-x"]).code(2).stderr_has("invalid value '-x' for '--operation <OP>'");
    sb.krops(&["deploy", "--operation", "swtich"]).code(2).stderr_has("a similar value exists: 'switch'");
    sb.krops(&["deplyo"]).code(2).stderr_has("a similar subcommand exists: 'deploy'");
    sb.krops(&["populate", "--jobs", "0"]).code(2);
    sb.krops(&["frobnicate"]).code(2);
    assert_eq!(sb.listing("site"), [".populate"]);
}

#[test]
fn no_configuration_file() {
    let sb = Sandbox::new();
    sb.krops(&["populate"]).code(2).stderr_has("no krops.toml, krops.nix, krops.json in");
}

#[test]
fn health_checks_rollback_and_confirm_timeout() {
    let cases: [(&'static str, &str); 9] = [
        (
            "healthChecks = [{ command = \"true\", url = \"http://h/\" }]",
            "exactly one of `command` and `url`",
        ),
        ("healthChecks = [{ timeout = 3 }]", "exactly one of `command` and `url`"),
        ("healthChecks = [{ command = \"true\", status = 200 }]", "`status` goes with `url`"),
        ("healthChecks = [{ url = \"https://h/\" }]", "must start with http://"),
        ("healthChecks = [{ url = \"http://h:99999/\" }]", "no valid port"),
        ("healthChecks = [{ url = \"http://h/\", status = 999 }]", "no HTTP status"),
        ("healthChecks = [{ command = \"true\", timeout = 0 }]", "`timeout` must be 1 to 86400 seconds"),
        ("healthChecks = [{ command = \"true\", retry = 2 }]", "unknown field `retry`"),
        ("confirmTimeout = 100000", "confirmTimeout must be at most 86400 seconds"),
    ];
    for (line, message) in cases {
        rejects("toml", toml(line), "3:", message);
    }
    rejects("toml", toml("rollback = \"yes\""), "3:12: ", "expected a boolean");
}

#[test]
fn an_unknown_attribute_is_placed_at_its_key() {
    rejects(
        "toml",
        toml("[deployments.site.source.a.file]\npath = \"conf/a.nix\"\nuseChecksun = true"),
        "5:1: ",
        "unknown field `useChecksun`",
    );
    rejects(
        "json",
        |t| {
            format!("{{\"deployments\": {{\"site\": {{\"target\": {t:?},\n \"source\": {{\"a\": {{\"file\": {{\"path\": \"conf/a.nix\",\n   \"zzz\": 1}}}}}}}}}}}}")
        },
        "3:5: ",
        "unknown field `zzz`",
    );
}
