# How krops reads a FILE.nix: import it, accept every shape the original's files take, apply
# `command` functions to the target path, and write the result as JSON from a derivation, so
# that every store path the configuration refers to (derivation outputs, builtins.toFile,
# paths) is realised before krops uses it.
{ file }:
let
  lib = import ./lib;
  value = import file;
  isDeployment = v: builtins.isAttrs v && (v._type or null) == "krops-deployment";
  byName = list: builtins.listToAttrs (map (d: { inherit (d) name; value = d.config; }) list);
  deployments =
    if isDeployment value then byName [ value ]
    else if builtins.isList value then byName (builtins.filter isDeployment value)
    else if builtins.isAttrs value && value ? deployments then value.deployments
    else if builtins.isAttrs value && builtins.any isDeployment (builtins.attrValues value)
    then byName (builtins.filter isDeployment (builtins.attrValues value))
    else throw "krops: ${toString file} must evaluate to a deployment (writeDeploy, writeTest, writeCommand), a list or set of them, or { deployments = { NAME = { ... }; }; }";
  finalise = d:
    if d ? command && builtins.isFunction d.command
    then d // { command = d.command (lib.targetPath (d.target or "")); }
    else d;
in
derivation {
  name = "krops-configuration.json";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  json = builtins.toJSON { deployments = builtins.mapAttrs (_: finalise) deployments; };
  passAsFile = [ "json" ];
  args = [ "-c" "IFS= read -r json < \"$jsonPath\"; printf '%s' \"$json\" > \"$out\"" ];
}
