# How krops reads a FILE.nix, as `nix-build FILE -A NAME` would: import it (calling it with
# --arg/--argstr and its defaults when it is a function), find the deployments in whatever
# shape the original's files take, and write them as JSON from a derivation, so that every
# store path the configuration refers to (derivation outputs, builtins.toFile, paths) is
# realised before krops uses it.
#
# `request` (JSON) says how much to evaluate:
# - `{ "select": [NAME …] }`: only the attributes NAME names (`servers.web` is the attribute
#   path servers → web, or an attribute named "servers.web"); errors there are nix's own, as
#   with `nix-build -A`. Names that are no attribute path are listed as `missing`.
# - `{ "under": [ATTR …] }`: every deployment at or below that attribute path, each attribute
#   under `tryEval`: one that throws is listed in `failed` and the others still count.
# - `{ "children": [ATTR …] }`: the attribute names of the set at that path (krops's way round
#   errors `tryEval` cannot catch: it evaluates each child in a process of its own).
{ file, args, argstrs, request }:
let
  userArgs = import args // builtins.fromJSON (builtins.readFile argstrs);
  wanted = builtins.fromJSON (builtins.readFile request);
  imported = import file;
  value =
    if builtins.isFunction imported then
      let formals = builtins.functionArgs imported; in
      imported (if formals == { } then userArgs else builtins.intersectAttrs formals userArgs)
    else imported;

  isDeployment = v: builtins.isAttrs v && (v._type or null) == "krops-deployment";
  isDerivation = v: builtins.isAttrs v && (v.type or null) == "derivation";
  # A set to look into for deployments: not a derivation, a deployment or another typed value.
  isPlainSet = v: builtins.isAttrs v && !isDerivation v && !(v ? _type) && !(v ? __functor);
  join = builtins.concatStringsSep ".";

  # What `nix-build -A` does with a function it reaches: call it with the --arg/--argstr it
  # names, its defaults for the rest. Functions without named arguments (`host: …`, helpers a
  # file keeps beside its deployments) are left alone.
  called = v:
    if !builtins.isFunction v then v
    else
      let
        formals = builtins.functionArgs v;
        missing = builtins.filter (n: !formals.${n} && !(userArgs ? ${n})) (builtins.attrNames formals);
      in
      if formals == { } then v
      else if missing != [ ] then throw "krops: a function of ${builtins.concatStringsSep ", " missing} without defaults; give them with --arg or --argstr"
      else v (builtins.intersectAttrs formals userArgs);

  # Where a file keeps its deployments: `{ deployments = { web = writeDeploy …; }; }` names them
  # `web`, as the TOML shape does.
  root = if isPlainSet value && value ? deployments then called value.deployments else value;

  # `{ deployments = { NAME = { target = …; source = …; }; }; }`: the TOML shape, written in Nix.
  rawShape = isPlainSet value && value ? deployments && isPlainSet root
    && !builtins.any (v: isDeployment v || builtins.isFunction v) (builtins.attrValues root);

  # Nix paths become their strings (a path in a set is not copied into the world-readable
  # store, as `builtins.toJSON` would); derivations become their output paths.
  plain = v:
    if builtins.isPath v then toString v
    else if isDerivation v then v.outPath
    else if builtins.isAttrs v then builtins.mapAttrs (_: plain) v
    else if builtins.isList v then map plain v
    else v;

  lib = import ./lib;
  finalise = d:
    if d ? command && builtins.isFunction d.command
    then d // { command = d.command (lib.targetPath (d.target or "")); }
    else d;
  # A deployment's configuration as JSON data, forced whole (so that `tryEval` catches what
  # throws inside it).
  settled = d: let json = plain (finalise d.config); in builtins.deepSeq json json;

  # A group script's members: the deployments its text refers to (a deployment used as a string
  # is `krops-deployment:WRITER-NAME:`, see pkgs/krops.nix), by their writers' names.
  referredWriters = text:
    map builtins.head (builtins.filter builtins.isList (builtins.split "krops-deployment:([^:]*):" text));

  # What one value holds, as a list of entries:
  #   { deployment = NAME; writer; config; fromList; }  a deployment
  #   { group = NAME; members = [NAME …]; }               a list or set of deployments
  #   { group = NAME; writers = [WRITER …]; }            a script that runs deployments
  #   { failed = NAME; }                                 an attribute that throws
  # `path` names the value; deployments in lists are named PATH.WRITER (at the top, WRITER).
  # The search stops at a depth of 6; `lib`, `pkgs` and the like are not looked into.
  skipped = [ "lib" "pkgs" "builtins" "krops" "nixpkgs" ];
  deploymentEntry = path: fromList: d: {
    deployment = if path == [ ] then d.name else join path;
    writer = d.name;
    config = settled d;
    inherit fromList;
  };
  contents = depth: path: v:
    if isDeployment v then [ (deploymentEntry path false v) ]
    else if builtins.isList v then
      let
        members = builtins.concatMap
          (d: if isDeployment d then [ (deploymentEntry (path ++ [ d.name ]) (path != [ ]) d) ] else [ ])
          v;
      in
      members ++ (if path != [ ] && members != [ ] then [{ group = join path; members = map (m: m.deployment) members; }] else [ ])
    else if isDerivation v && v ? text && path != [ ] then
      let writers = referredWriters (toString v.text); in
      if writers == [ ] then [ ] else [{ group = join path; inherit writers; }]
    else if isPlainSet v && depth < 6 then
      let
        inside = builtins.concatMap (name: if builtins.elem name skipped then [ ] else guarded depth (path ++ [ name ]) v.${name})
          (builtins.attrNames v);
        # `servers` selects `servers.web` and `servers.db`.
        deployments = map (e: e.deployment) (builtins.filter (e: e ? deployment) inside);
      in
      inside ++ (if path != [ ] && deployments != [ ] then [{ group = join path; members = deployments; }] else [ ])
    else [ ];
  # One attribute's entries, or `failed` when it throws (nix's message is had by selecting it).
  guarded = depth: path: v:
    let
      found = contents (depth + 1) path (called v);
      tried = builtins.tryEval (builtins.deepSeq found found);
    in
    if tried.success then tried.value else [{ failed = join path; }];

  # `name` as an attribute path below `set`, trying the longest attribute names first: each
  # attribute on the way is evaluated, nothing beside it. `null` when there is none.
  resolve = set: name:
    let
      dots = builtins.filter (i: builtins.substring i 1 name == ".") (builtins.genList (i: builtins.stringLength name - 1 - i) (builtins.stringLength name));
      viaPrefix = i:
        let prefix = builtins.substring 0 i name; rest = builtins.substring (i + 1) (-1) name; in
        if set ? ${prefix} && isPlainSet (called set.${prefix})
        then let found = resolve (called set.${prefix}) rest; in if found == null then null else [ prefix ] ++ found
        else null;
      candidates = builtins.filter (p: p != null) (map viaPrefix dots);
    in
    if !isPlainSet set then null
    else if set ? ${name} then [ name ]
    else if candidates != [ ] then builtins.head candidates
    else null;
  at = path: builtins.foldl' (v: name: called v.${name}) root path;

  entries =
    if wanted ? select then
      builtins.concatMap
        (name:
          let path = resolve root name; in
          if path == null then [{ missing = name; }]
          else contents 0 path (at path))
        wanted.select
    else if wanted ? under then
      if wanted.under == [ ] then contents 0 [ ] root
      else guarded (builtins.length wanted.under - 1) wanted.under (at wanted.under)
    else [ ];

  pick = key: builtins.filter (e: e ? ${key}) entries;
  document =
    if wanted ? children then
      let v = at wanted.children; in { children = if isPlainSet v then builtins.filter (n: !builtins.elem n skipped) (builtins.attrNames v) else [ ]; }
    else if rawShape then { deployments = builtins.mapAttrs (_: plain) root; }
    else {
      deployments = builtins.listToAttrs (map (e: { name = e.deployment; value = e.config; }) (pick "deployment"));
      writers = builtins.listToAttrs (map (e: { name = e.deployment; value = e.writer; }) (pick "deployment"));
      fromLists = map (e: e.deployment) (builtins.filter (e: e.fromList) (pick "deployment"));
      groups = builtins.listToAttrs (map (e: { name = e.group; value = builtins.removeAttrs e [ "group" ]; }) (pick "group"));
      failed = map (e: e.failed) (pick "failed");
      missing = map (e: e.missing) (pick "missing");
      # Two deployments of one name: the file's own mistake, said as such.
      duplicates =
        let names = map (e: e.deployment) (pick "deployment"); in
        builtins.filter (n: builtins.length (builtins.filter (m: m == n) names) > 1) names;
    };
in
derivation {
  name = "krops-configuration.json";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  json = builtins.toJSON document;
  passAsFile = [ "json" ];
  args = [ "-c" "IFS= read -r json < \"$jsonPath\"; printf '%s' \"$json\" > \"$out\"" ];
}
