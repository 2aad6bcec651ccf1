//! krops.nix files in the styles real users write (tests/fixtures/krops-nix/), each evaluated
//! with krops's builtins-only stand-ins and with a `<nixpkgs/lib>` on the search path, and the
//! kinds of their writers honoured by a real deploy.

use std::process::Command;

use crate::support::{krops_bin, Kind, Outcome, Sandbox, Site};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/krops-nix");
const STUB_NIXPKGS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/nix/stub-nixpkgs");
const NIXPKGS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/nix/nixpkgs");

/// `krops eval -f FILE ARGS…` with `NIX_PATH` as given (`None`: no nixpkgs at all).
fn eval(sb: &Sandbox, file: &str, nix_path: Option<&str>, args: &[&str], env: &[(&str, &str)]) -> Outcome {
    let mut command = Command::new(krops_bin());
    command
        .current_dir(sb.path(""))
        .env_remove("KROPS_PLUGIN_PATH")
        .args(["-f", &format!("{CORPUS}/{file}")]);
    command.args(args).arg("eval");
    match nix_path {
        Some(path) => command.env("NIX_PATH", path),
        None => command.env_remove("NIX_PATH"),
    };
    command.envs(env.iter().copied());
    Outcome::of(command)
}

/// The deployments `eval --json` printed, evaluated both ways; the two must agree (but for
/// `tags`, which 04 uses to say which lib it got).
fn deployments(sb: &Sandbox, file: &str, args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let plain = eval(sb, file, None, args, env);
    plain.success();
    let stub = eval(sb, file, Some(&format!("nixpkgs={STUB_NIXPKGS}")), args, env);
    stub.success();
    let parse = |out: &Outcome| -> serde_json::Value { serde_json::from_str(&out.stdout).unwrap() };
    let (mut plain, mut stub) = (parse(&plain)["deployments"].clone(), parse(&stub)["deployments"].clone());
    for value in [&mut plain, &mut stub] {
        for deployment in value.as_object_mut().unwrap().values_mut() {
            deployment.as_object_mut().unwrap().remove("tags");
        }
    }
    assert_eq!(plain, stub, "{file}: with and without <nixpkgs/lib> differ");
    plain
}

/// One way to evaluate a corpus file (`NN-name.expect.json` holds a list of them) and what it
/// must give: each deployment's kind ("" for none), target (`user@host[:port]/path`, `$LOCAL` for this
/// machine as the invoking user) and source names; values at JSON pointers into the
/// deployments; the members each group selects; what selecting a broken attribute says; or the
/// error of the whole file. `$CORPUS` stands for the corpus directory. An env value of null
/// unsets the variable.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: std::collections::BTreeMap<String, Option<String>>,
    #[serde(default)]
    deployments: std::collections::BTreeMap<String, Expected>,
    #[serde(default)]
    fields: std::collections::BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    groups: std::collections::BTreeMap<String, Vec<String>>,
    #[serde(default)]
    errors: std::collections::BTreeMap<String, String>,
    error: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    kind: String,
    target: String,
    sources: Vec<String>,
}

/// The invoking user krops sees in the corpus tests (LOGNAME), so that targets read the same
/// on every machine.
const USER: &str = "corpus-user";

fn check_corpus_file(stem: &str) {
    krops_tests::hosts::prepare_machine();
    let sb = Sandbox::new();
    let file = format!("{stem}.nix");
    let cases: Vec<Case> =
        serde_json::from_str(&std::fs::read_to_string(format!("{CORPUS}/{stem}.expect.json")).unwrap())
            .unwrap();
    // The kernel's host name: what krops takes for this machine.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_owned();
    for case in cases {
        // Without LOGNAME, krops takes the user from the system.
        let user = match case.env.get("LOGNAME") {
            Some(None) => String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap(),
            _ => USER.to_owned(),
        };
        let local = format!("{}@{host}", user.trim());
        let expand = |text: &str| text.replace("$CORPUS", CORPUS).replace("$LOCAL", &local);
        let args: Vec<&str> = case.args.iter().map(String::as_str).collect();
        let env = |command: &mut Command| {
            command.env("LOGNAME", USER);
            for (name, value) in &case.env {
                match value {
                    Some(value) => command.env(name, value),
                    None => command.env_remove(name),
                };
            }
        };
        let run = |extra: &[&str], nix_path: Option<&str>| {
            let mut command = Command::new(krops_bin());
            command
                .current_dir(sb.path(""))
                .env_remove("KROPS_PLUGIN_PATH")
                .args(["-f", &format!("{CORPUS}/{file}")]);
            command.args(&args).args(extra);
            match nix_path {
                Some(path) => command.env("NIX_PATH", path),
                None => command.env_remove("NIX_PATH"),
            };
            env(&mut command);
            Outcome::of(command)
        };
        let stub = format!("nixpkgs={STUB_NIXPKGS}");
        if let Some(error) = &case.error {
            for nix_path in [None, Some(stub.as_str())] {
                run(&["eval"], nix_path).code(2).stderr_has(error);
            }
            continue;
        }
        let evaluated: Vec<serde_json::Value> = [None, Some(stub.as_str())]
            .into_iter()
            .map(|nix_path| {
                let out = run(&["--json", "eval"], nix_path);
                out.success();
                let line = out
                    .stdout
                    .lines()
                    .find(|l| l.contains(r#""event":"eval""#))
                    .unwrap_or_else(|| panic!("{out}"));
                serde_json::from_str::<serde_json::Value>(line).unwrap()["deployments"].clone()
            })
            .collect();
        let without_tags = |mut value: serde_json::Value| {
            for deployment in value.as_object_mut().unwrap().values_mut() {
                deployment.as_object_mut().unwrap().remove("tags");
            }
            value
        };
        assert_eq!(
            without_tags(evaluated[0].clone()),
            without_tags(evaluated[1].clone()),
            "{file} {args:?}: with and without <nixpkgs/lib> differ"
        );
        let found = &evaluated[0];
        let names: Vec<&String> = found.as_object().unwrap().keys().collect();
        let wanted: Vec<&String> = case.deployments.keys().collect();
        assert_eq!(names, wanted, "{file} {args:?}: deployments");
        for (name, expected) in &case.deployments {
            let deployment = &found[name];
            let target = &deployment["target"];
            let port = target["port"].as_u64().map_or(String::new(), |p| format!(":{p}"));
            let shown = format!(
                "{}@{}{port}{}",
                target["user"].as_str().unwrap(),
                target["host"].as_str().unwrap(),
                target["path"].as_str().unwrap()
            );
            let mut sources: Vec<&String> = deployment["source"].as_object().unwrap().keys().collect();
            sources.sort();
            let mut wanted_sources: Vec<&String> = expected.sources.iter().collect();
            wanted_sources.sort();
            assert_eq!(
                (deployment["kind"].as_str().unwrap_or_default(), shown, sources),
                (expected.kind.as_str(), expand(&expected.target), wanted_sources),
                "{file} {args:?}: deployment {name}"
            );
        }
        for (pointer, value) in &case.fields {
            let value: serde_json::Value = serde_json::from_str(&expand(&value.to_string())).unwrap();
            assert_eq!(found.pointer(pointer), Some(&value), "{file} {args:?}: {pointer}");
        }
        for (group, members) in &case.groups {
            let out = run(&["eval", "--names", group], None);
            out.success();
            assert_eq!(
                out.stdout.lines().collect::<Vec<_>>(),
                *members,
                "{file} {args:?}: group {group}\n{out}"
            );
        }
        for (attribute, message) in &case.errors {
            run(&["eval", attribute], None)
                .code(2)
                .stderr_has(&format!("attribute \"{attribute}\" does not evaluate"))
                .stderr_has(message);
        }
    }
}

/// A test per corpus file, so that one failure hides no other.
macro_rules! corpus {
    ($($test:ident: $stem:literal,)*) => {
        $(#[test] fn $test() { check_corpus_file($stem); })*

        /// Every file of the corpus has its test.
        #[test]
        fn every_corpus_file_is_tested() {
            let tested = [$($stem),*];
            let mut files: Vec<String> = std::fs::read_dir(CORPUS)
                .unwrap()
                .filter_map(|e| e.unwrap().file_name().into_string().ok())
                .filter_map(|n| n.strip_suffix(".nix").map(str::to_owned))
                .collect();
            files.sort();
            assert_eq!(files, tested);
            assert!(files.len() >= 25);
        }
    };
}

corpus! {
    corpus_01_minimal: "01-minimal",
    corpus_02_mapattrs_hosts: "02-mapattrs-hosts",
    corpus_03_function: "03-function",
    corpus_04_getenv_and_friends: "04-getenv-and-friends",
    corpus_05_evalsource_merge: "05-evalsource-merge",
    corpus_06_mktarget_sudo: "06-mktarget-sudo",
    corpus_07_writecommand_function: "07-writecommand-function",
    corpus_08_nested: "08-nested",
    corpus_09_writers: "09-writers",
    corpus_10_filter_without_type: "10-filter-without-type",
    corpus_11_list_of_kinds: "11-list-of-kinds",
    corpus_12_duplicate_names: "12-duplicate-names",
    corpus_13_stockholm_style: "13-stockholm-style",
    corpus_14_paths_and_deployments_key: "14-paths-and-deployments-key",
    corpus_15_function_attributes: "15-function-attributes",
    corpus_16_required_argument: "16-required-argument",
    corpus_17_mkif_mkforce: "17-mkif-mkforce",
    corpus_18_mkmerge_order: "18-mkmerge-order",
    corpus_19_conflicting_definitions: "19-conflicting-definitions",
    corpus_20_fleet_broken_entries: "20-fleet-broken-entries",
    corpus_21_group_script: "21-group-script",
    corpus_22_group_list: "22-group-list",
    corpus_23_slash_names: "23-slash-names",
    corpus_24_populate_unused: "24-populate-unused",
    corpus_25_unsupported_pkgs: "25-unsupported-pkgs",
    corpus_26_recursion: "26-recursion",
    corpus_27_mktarget_local: "27-mktarget-local",
    corpus_28_shared_sources_module: "28-shared-sources-module",
    corpus_29_element_mkforce: "29-element-mkforce",
    corpus_30_deployments_key_functions: "30-deployments-key-functions",
    corpus_31_groups_by_identity: "31-groups-by-identity",
    corpus_32_data_shape_broken_entries: "32-data-shape-broken-entries",
}

/// The scripts 09's writers build run; 04 says which lib it got.
#[test]
fn writers_build_scripts_and_the_lib_is_nixpkgs_when_there_is_one() {
    krops_tests::hosts::prepare_machine();
    let sb = Sandbox::new();
    let d = deployments(&sb, "09-writers.nix", &[], &[]);
    let generate = d["deploy"]["source"]["generated"]["pipe"]["command"].as_str().unwrap().to_owned();
    let output = Command::new(&generate).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "generated by dash\n", "{generate}");
    let script = d["deploy"]["source"]["script"]["pipe"]["command"].as_str().unwrap().to_owned();
    assert_eq!(
        String::from_utf8_lossy(&Command::new(&script).output().unwrap().stdout),
        "from writeScript\n"
    );
    let tags = |nix_path| {
        let out = eval(&sb, "04-getenv-and-friends.nix", nix_path, &[], &[]);
        let value: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        value["deployments"]["host-one"]["tags"][0].as_str().unwrap().to_owned()
    };
    assert_eq!(tags(None), "stand-ins");
    assert_eq!(tags(Some(&format!("nixpkgs={STUB_NIXPKGS}"))), "nixpkgs-lib");
}

/// `krops deploy` with no NAME activates only the writeDeploy deployment of a file that also
/// has a writeTest and a writeCommand; naming those for deploy is a usage error.
#[test]
fn deploy_never_activates_a_test_or_command_deployment() {
    krops_tests::hosts::prepare_machine();
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Root);
    let options = krops_tests::hosts::quoted(&krops_tests::hosts::TestHost::extra_options());
    sb.write("configuration.nix", "{ ... }: { krops-test.marker = \"kinds\"; }\n");
    sb.write(
        "krops.nix",
        &format!(
            r#"let
  lib = import "${{<krops>}}/lib";
  pkgs = import "${{<krops>}}/pkgs" {{}};
  source = lib.evalSource [{{ nixpkgs.file = "{NIXPKGS}"; nixos-config.file = toString ./configuration.nix; }}];
  target = lib.mkTarget "root@127.0.0.1:{port}" // {{ extraOptions = [ {options} ]; }};
in [
  (pkgs.krops.writeDeploy "deploy" {{ inherit source target; }})
  (pkgs.krops.writeTest "test" {{ inherit source target; }})
  (pkgs.krops.writeCommand "cmd" {{ inherit source target; command = p: "touch ${{p}}/command-ran"; }})
]
"#,
            port = site.host().unwrap().port,
            options = options.join(" ")
        ),
    );
    sb.krops(&["deploy"]).success();
    let activations = std::fs::read_to_string(site.host().unwrap().state().join("activations")).unwrap();
    assert_eq!(activations.lines().count(), 1, "{activations}");
    assert!(!site.path("command-ran").exists());
    sb.krops(&["deploy", "test"]).code(2).stderr_has("use `krops build test`");
    sb.krops(&["deploy", "cmd"]).code(2).stderr_has("use `krops run cmd`");
    sb.krops(&["run"]).success();
    assert!(site.path("command-ran").exists());
}

/// A file missing on this machine for one deployment does not stop another.
#[test]
fn a_missing_file_in_an_unselected_deployment_does_not_matter() {
    let sb = Sandbox::new();
    sb.target_dir("here");
    sb.write("conf/a", "a");
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.here]\ntarget = {:?}\nsource.a.file = \"conf/a\"\n\
             [deployments.elsewhere]\ntarget = \"root@elsewhere.example.org\"\nsource.b.file = \"/nonexistent/on/this/laptop\"\n",
            sb.path("here").display().to_string()
        ),
    );
    sb.krops(&["populate", "here"]).success();
    assert_eq!(sb.read("here/a"), "a");
    sb.krops(&["eval", "here"]).success();
    sb.krops(&["populate", "elsewhere"]).code(2).stderr_has("/nonexistent/on/this/laptop does not exist");
}

/// Without LOGNAME (cron, systemd units, CI containers), `lib.mkTarget "/path"` and
/// `"localhost/path"` are this machine: deployed locally, without ssh (an ssh that fails
/// loudly is first on PATH).
#[test]
fn mktarget_targets_deploy_locally_without_logname() {
    krops_tests::hosts::prepare_machine();
    let sb = Sandbox::new();
    sb.target_dir("plain");
    sb.target_dir("named");
    sb.write("bin/ssh", "#!/bin/sh\necho ssh was called >&2\nexit 99\n");
    std::fs::set_permissions(sb.path("bin/ssh"), std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .unwrap();
    sb.write("configuration.nix", "{ ... }: { }\n");
    sb.write(
        "krops.nix",
        &format!(
            r#"let
  lib = import "${{<krops>}}/lib";
  pkgs = import "${{<krops>}}/pkgs" {{}};
  source = lib.evalSource [{{ nixos-config.file = toString ./configuration.nix; }}];
in {{
  plain = pkgs.krops.writeCommand "plain" {{
    inherit source;
    target = lib.mkTarget "{plain}";
    command = path: "touch ${{path}}/ran";
  }};
  named = pkgs.krops.writeCommand "named" {{
    inherit source;
    target = lib.mkTarget "localhost{named}";
    command = path: "touch ${{path}}/ran";
  }};
}}
"#,
            plain = sb.path("plain").display(),
            named = sb.path("named").display()
        ),
    );
    let path = format!("{}:{}", sb.path("bin").display(), std::env::var("PATH").unwrap());
    for name in ["plain", "named"] {
        let mut command = Command::new(krops_bin());
        command
            .current_dir(sb.path(""))
            .env_remove("LOGNAME")
            .env_remove("KROPS_PLUGIN_PATH")
            .env("PATH", &path);
        command.args(["run", name]);
        let out = Outcome::of(command);
        out.success();
        assert!(!out.stderr.contains("ssh was called"), "{out}");
        assert!(sb.path(&format!("{name}/ran")).exists(), "{out}");
        assert_eq!(sb.read(&format!("{name}/nixos-config")), "{ ... }: { }\n");
    }
}
