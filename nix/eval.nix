# How krops reads a FILE.nix: import it (calling it with --arg/--argstr and its defaults when it
# is a function), find the deployments in whatever shape the original's files take, and write
# them as JSON from a derivation, so that every store path the configuration refers to
# (derivation outputs, builtins.toFile, paths) is realised before krops uses it.
{ file, args, argstrs }:
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
  # a deployment in a list, or the file's value itself, by its writer's name. Derivations,
  # functions, other typed sets and what a krops.nix keeps around besides its deployments
  # (`lib`, `pkgs`, `builtins`, `krops`) are not looked into, nor is anything that fails to
  # evaluate; the search stops at a depth of 6.
  skipped = [ "lib" "pkgs" "builtins" "krops" "nixpkgs" ];
  safely = v: let tried = builtins.tryEval v; in if tried.success then tried.value else null;
  collect = depth: path: v:
    let join = names: builtins.concatStringsSep "." names; in
    if depth > 6 then [ ]
    else if isDeployment v then [{ name = if path == [ ] then v.name else join path; inherit (v) config; }]
    else if builtins.isList v then
      builtins.concatMap (d: if isDeployment d then [{ name = join (path ++ [ d.name ]); inherit (d) config; }] else collect (depth + 1) path d) v
    else if builtins.isAttrs v && !isDerivation v && !(v ? _type) && !(v ? __functor) then
      builtins.concatMap
        (name: if builtins.elem name skipped then [ ] else collect (depth + 1) (path ++ [ name ]) (safely v.${name}))
        (builtins.attrNames v)
    else [ ];

  # Nix paths become their strings (a path in a set is not copied into the world-readable
  # store, as `builtins.toJSON` would); derivations become their output paths.
  plain = v:
    if builtins.isPath v then toString v
    else if isDerivation v then v.outPath
    else if builtins.isAttrs v then builtins.mapAttrs (_: plain) v
    else if builtins.isList v then map plain v
    else v;

  rawShape = builtins.isAttrs value && value ? deployments && !isDeployment value
    && builtins.isAttrs value.deployments && !builtins.any isDeployment (builtins.attrValues value.deployments);

  found =
    if rawShape
    then value.deployments
    else
      let
        # `{ deployments = { web = writeDeploy …; }; }` names them `web`, as the TOML shape does.
        list = collect 0 [ ] (if builtins.isAttrs value && value ? deployments && !isDeployment value then value.deployments else value);
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
  json = builtins.toJSON { deployments = builtins.mapAttrs (_: d: plain (finalise d)) found; };
  passAsFile = [ "json" ];
  args = [ "-c" "IFS= read -r json < \"$jsonPath\"; printf '%s' \"$json\" > \"$out\"" ];
}
