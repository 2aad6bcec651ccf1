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

/// The deployments `eval` printed, evaluated both ways; the two must agree (but for `tags`,
/// which 04 uses to say which lib it got).
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

#[test]
fn the_corpus_evaluates_as_its_authors_meant() {
    krops_tests::hosts::prepare_machine();
    let sb = Sandbox::new();

    let d = deployments(&sb, "01-minimal.nix", &[], &[]);
    assert_eq!(d["deploy"]["kind"], "deploy");
    assert_eq!(d["deploy"]["target"]["host"], "server01.example.org");
    assert_eq!(d["deploy"]["source"]["nixpkgs"]["git"]["url"], "https://github.com/NixOS/nixpkgs");

    let d = deployments(&sb, "02-mapattrs-hosts.nix", &[], &[]);
    assert_eq!(d.as_object().unwrap().keys().collect::<Vec<_>>(), ["db", "web"]);
    assert_eq!(d["db"]["target"]["host"], "10.0.0.2");

    let d = deployments(&sb, "03-function.nix", &[], &[]);
    assert_eq!(d["web"]["target"]["host"], "web.example.org");
    let d = deployments(&sb, "03-function.nix", &["--argstr", "name", "db", "--arg", "sudo", "true"], &[]);
    assert_eq!(d["db"]["target"]["host"], "db.example.org");
    assert_eq!(d["db"]["target"]["sudo"], true);

    let d = deployments(&sb, "04-getenv-and-friends.nix", &[], &[]);
    assert_eq!(d["host-one"]["source"]["names"]["pipe"]["command"], "echo alpha,beta");
    assert!(d["host-one"]["source"].get("motd").is_none());
    let d = deployments(&sb, "04-getenv-and-friends.nix", &[], &[("KROPS_TEST_MOTD", "1")]);
    assert!(d["host-one"]["source"]["motd"]["file"].is_object());
    let tags = |nix_path| {
        let out = eval(&sb, "04-getenv-and-friends.nix", nix_path, &[], &[]);
        let value: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        value["deployments"]["host-one"]["tags"][0].as_str().unwrap().to_owned()
    };
    assert_eq!(tags(None), "stand-ins");
    assert_eq!(tags(Some(&format!("nixpkgs={STUB_NIXPKGS}"))), "nixpkgs-lib");

    let d = deployments(&sb, "05-evalsource-merge.nix", &[], &[]);
    let git = &d["merged"]["source"]["nixpkgs"]["git"];
    assert_eq!(
        (git["url"].as_str(), git["ref"].as_str()),
        (Some("https://github.com/NixOS/nixpkgs"), Some("nixos-24.05"))
    );
    assert_eq!(git["clean"]["exclude"], serde_json::json!(["/.version-suffix"]));
    assert_eq!(d["merged"]["source"]["nixos-config"]["file"]["useChecksum"], true);

    let d = deployments(&sb, "06-mktarget-sudo.nix", &[], &[]);
    let target = &d["deploy"]["target"];
    assert_eq!(
        (target["user"].as_str(), target["host"].as_str()),
        (Some("deploy"), Some("web1.example.org"))
    );
    assert_eq!((target["port"].as_u64(), target["path"].as_str()), (Some(2222), Some("/srv/src")));
    assert_eq!(target["sudo"], true);
    assert_eq!(target["extraOptions"], serde_json::json!(["-o", "ConnectTimeout=5"]));

    let d = deployments(&sb, "07-writecommand-function.nix", &[], &[]);
    assert_eq!(d["switch"]["kind"], "run");
    assert_eq!(d["switch"]["command"], "nixos-rebuild -I /opt/src switch");

    let d = deployments(&sb, "08-nested.nix", &[], &[]);
    assert_eq!(
        d.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["checks.web", "servers.db", "servers.web"]
    );
    assert_eq!(d["checks.web"]["kind"], "build");

    let d = deployments(&sb, "09-writers.nix", &[], &[]);
    let generate = d["deploy"]["source"]["generated"]["pipe"]["command"].as_str().unwrap().to_owned();
    let output = Command::new(&generate).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "generated by dash\n", "{generate}");
    let script = d["deploy"]["source"]["script"]["pipe"]["command"].as_str().unwrap().to_owned();
    assert_eq!(
        String::from_utf8_lossy(&Command::new(&script).output().unwrap().stdout),
        "from writeScript\n"
    );

    let d = deployments(&sb, "10-filter-without-type.nix", &[], &[]);
    assert_eq!(
        d["deploy"]["source"]["modules"]["file"]["filters"],
        serde_json::json!([{ "type": "exclude", "pattern": "*.bak" }])
    );

    let d = deployments(&sb, "11-list-of-kinds.nix", &[], &[]);
    let kinds: Vec<&str> =
        ["deploy", "test", "cmd"].iter().map(|n| d[*n]["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["deploy", "build", "run"]);

    eval(&sb, "12-duplicate-names.nix", None, &[], &[])
        .code(2)
        .stderr_has("two deployments are named \"deploy\"");

    // lib, pkgs and krops kept beside the deployments are not searched (builtins.builtins …).
    let d = deployments(&sb, "13-stockholm-style.nix", &["--argstr", "name", "beta"], &[]);
    assert_eq!(d.as_object().unwrap().keys().collect::<Vec<_>>(), ["deploy", "test"]);
    assert_eq!(d["deploy"]["target"]["host"], "beta.example.org");
    assert_eq!(d["test"]["kind"], "build");

    // Paths stay paths on this machine; a `deployments` set may hold writer results.
    let d = deployments(&sb, "14-paths-and-deployments-key.nix", &[], &[]);
    assert_eq!(d["web"]["source"]["modules"]["file"]["path"], format!("{CORPUS}/files/modules"));
    assert_eq!(d["web"]["target"]["extraOptions"], serde_json::json!(["-i", format!("{CORPUS}/files/motd")]));
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
