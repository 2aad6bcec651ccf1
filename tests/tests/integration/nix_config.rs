//! Configuration in Nix, evaluated by the real nix: the examples read the same as their TOML
//! twins, a krops.nix in the original's style deploys, and mistakes explain themselves.

use crate::support::{Kind, Sandbox, Site};

const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const NIXPKGS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/nix/nixpkgs");

#[test]
fn examples_in_nix_and_toml_evaluate_identically() {
    krops_tests::hosts::prepare_machine();
    let sb = Sandbox::new();
    for example in ["minimal", "local"] {
        let toml = sb.krops(&["eval", "-f", &format!("{WORKSPACE}/examples/{example}/krops.toml")]);
        let nix = sb.krops(&["eval", "-f", &format!("{WORKSPACE}/examples/{example}/krops.nix")]);
        toml.success();
        nix.success();
        assert!(toml.stdout.contains("\"deployments\""), "{toml}");
        assert_eq!(toml.stdout, nix.stdout, "examples/{example}: TOML and Nix differ");
    }
}

/// The original's style: evalSource over a list, pkgs.writeText, mkTarget with `//`
/// overrides, writeDeploy and writeCommand (whose command is a function of the target path),
/// several deployments in a list.
fn original_style(site: &Site, options: &str, sudo: bool) -> String {
    format!(
        r#"let
  krops = <krops>;
  lib = import "${{krops}}/lib";
  pkgs = import "${{krops}}/pkgs" {{}};
  source = lib.evalSource [
    {{ nixpkgs.file = "{NIXPKGS}"; }}
    {{
      nixos-config.file = toString (pkgs.writeText "nixos-config" ''
        {{ ... }}: {{ krops-test.marker = "from-nix"; }}
      '');
    }}
  ];
  target = lib.mkTarget "{user}@127.0.0.1:{port}/var/src" // {{
    sudo = {sudo};
    extraOptions = {options};
  }};
in [
  (pkgs.krops.writeDeploy "deploy" {{ inherit source target; fast = true; }})
  (pkgs.krops.writeCommand "cmd" {{
    inherit source target;
    command = targetPath: "echo ran in ${{targetPath}} > ${{targetPath}}/ran";
  }})
]
"#,
        user = if sudo { krops_tests::hosts::SUDO_USER } else { "root" },
        port = site.host().unwrap().port,
    )
}

#[test]
fn a_krops_nix_in_the_original_style_deploys_to_a_test_host() {
    for kind in [Kind::Root, Kind::Sudo] {
        let sb = Sandbox::new();
        let site = Site::ready(&sb, kind);
        let options = krops_tests::hosts::quoted(&krops_tests::hosts::TestHost::extra_options());
        sb.write(
            "krops.nix",
            &original_style(&site, &format!("[ {} ]", options.join(" ")), kind == Kind::Sudo),
        );
        sb.krops(&["deploy", "deploy"]).success();
        let activations = std::fs::read_to_string(site.host().unwrap().state().join("activations")).unwrap();
        assert!(activations.trim_end().ends_with("-nixos-system-from-nix"), "{activations}");
        assert!(site.path("nixos-config").is_file());

        sb.krops(&["run", "cmd"]).success();
        assert_eq!(site.read("ran"), "ran in /var/src\n");
    }
}

#[test]
fn evaluation_errors_exit_2_with_nix_message() {
    krops_tests::hosts::prepare_machine();
    let sb = Sandbox::new();
    sb.target_dir("site");
    sb.write("krops.nix", "{ deployments = { broken = ");
    sb.krops(&["populate"]).code(2).stderr_has("krops.nix: nix evaluation failed").stderr_has("syntax error");
    sb.write("krops.nix", "throw \"my own words\"");
    sb.krops(&["eval"]).code(2).stderr_has("my own words");
    sb.write("krops.nix", "42");
    sb.krops(&["eval"])
        .code(2)
        .stderr_has("holds no deployment (writeDeploy, writeTest, writeCommand, populate)");
    assert_eq!(sb.listing("site"), [".populate"]);
}

#[test]
fn usual_mistakes_explain_themselves() {
    krops_tests::hosts::prepare_machine();
    let sb = Sandbox::new();
    let site = sb.path("site").display().to_string();
    for (source, message) in [
        ("nixpkgs.git = { ref = \"main\"; }", "source \"nixpkgs\": git source: missing field `url`"),
        (
            "cfg.file = 3",
            "source \"cfg\": file must be a string (shorthand for file.path) or a table, not a number",
        ),
        ("cfg.git = \"x\"", "source \"cfg\": git must be a table of attributes, not a string"),
        ("cfg.fiel = \"x\"", "unknown source type \"fiel\"; available types: derivation, file, git, pass"),
    ] {
        sb.write(
            "krops.nix",
            &format!("{{ deployments.x = {{ target = \"{site}\"; source = {{ {source}; }}; }}; }}"),
        );
        sb.krops(&["eval"]).code(2).stderr_has(message);
    }
}
