# How krops reads a FILE.nix: import it (calling it with --arg/--argstr and its defaults when it
# is a function), find the deployments in whatever shape the original's files take, and write
# them as JSON from a derivation, so that every store path the configuration refers to
# (derivation outputs, builtins.toFile, paths) is realised before krops uses it.
{ file, args ? ./args.nix, argstrs ? ./argstrs.json }:
let
  userArgs = import args // builtins.fromJSON (builtins.readFile argstrs);
  imported = import file;
  value =
    if builtins.isFunction imported then
      let formals = builtins.functionArgs imported; in
      imported (if formals == { } then userArgs else builtins.intersectAttrs formals userArgs)
    else imported;

  isDeployment = v: builtins.isAttrs v && (v._type or null) == "krops-deployment";
  isDerivation = v: builtins.isAttrs v && (v.type or null) == "derivation";

  # Deployments at any depth of attribute sets, named by their attribute path (`servers.web`);
  # a deployment in a list, or the file's value itself, by its writer's name. Derivations and
  # functions are not looked into.
  collect = path: v:
    let join = names: builtins.concatStringsSep "." names; in
    if isDeployment v then [{ name = if path == [ ] then v.name else join path; inherit (v) config; }]
    else if builtins.isList v then
      builtins.concatMap (d: if isDeployment d then [{ name = join (path ++ [ d.name ]); inherit (d) config; }] else collect path d) v
    else if builtins.isAttrs v && !isDerivation v then
      builtins.concatMap (name: collect (path ++ [ name ]) v.${name}) (builtins.attrNames v)
    else [ ];

  found =
    if builtins.isAttrs value && value ? deployments && !isDeployment value
    then builtins.mapAttrs (_: config: config) value.deployments
    else
      let
        list = collect [ ] value;
        names = map (d: d.name) list;
        duplicates = builtins.filter (n: builtins.length (builtins.filter (m: m == n) names) > 1) names;
      in
      if list == [ ] then throw "krops: ${toString file} holds no deployment (writeDeploy, writeTest, writeCommand), nor { deployments = { NAME = { ... }; }; }"
      else if duplicates != [ ] then throw "krops: ${toString file}: two deployments are named ${builtins.toJSON (builtins.head duplicates)}; give them distinct names or attribute paths"
      else builtins.listToAttrs (map (d: { inherit (d) name; value = d.config; }) list);

  lib = import ./lib;
  finalise = d:
    if d ? command && builtins.isFunction d.command
    then d // { command = d.command (lib.targetPath (d.target or "")); }
    else d;
in
derivation {
  name = "krops-configuration.json";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  json = builtins.toJSON { deployments = builtins.mapAttrs (_: finalise) found; };
  passAsFile = [ "json" ];
  args = [ "-c" "IFS= read -r json < \"$jsonPath\"; printf '%s' \"$json\" > \"$out\"" ];
}
