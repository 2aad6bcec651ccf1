# How krops reads a FILE.nix, as `nix-build FILE -A NAME` would: import it (calling it with
# --arg/--argstr and its defaults when it is a function), find the deployments in whatever
# shape the original's files take, and write them as JSON from a derivation, so that every
# store path the configuration refers to (derivation outputs, builtins.toFile, paths) is
# realised before krops uses it.
#
# `request` (JSON) says how much to evaluate:
# - `{ "select": [NAME …] }`: only the attributes NAME names (`servers.web` is the attribute
#   path servers → web, as `-A` reads it; an attribute named "servers.web" when there is no
#   such path); errors there are nix's own, as with `nix-build -A`. Names that are no
#   attribute path are listed as `missing`, attributes that hold nothing as `empty`.
# - `{ "resolve": [NAME …] }`: the attribute path of each NAME (null: none), evaluating only
#   the sets on the way.
# - `{ "under": [ATTR …], "only": [NAME …]? }`: every deployment at or below that attribute
#   path (of the set there, only the attributes `only` names), each attribute under
#   `tryEval`: one that throws is listed in `failed` and the others still count.
# - `{ "children": [ATTR …] }`: the attribute names of the set at that path (krops's way round
#   errors `tryEval` cannot catch: it evaluates parts of the set in processes of their own).
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

  lib = import ./lib;
  identity = import ./identity.nix { inherit lib; };
  inherit (identity) isDerivation plain;

  isDeployment = v: builtins.isAttrs v && (v._type or null) == "krops-deployment";
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
  # `web`, as the TOML shape does; there, a set with `target` or `source` is a deployment
  # written as data (the TOML shape in Nix).
  inDeployments = isPlainSet value && value ? deployments;
  root = if inDeployments then called value.deployments else value;
  isData = path: v: inDeployments && builtins.length path == 1 && isPlainSet v && (v ? target || v ? source);

  # A deployment's configuration as JSON data, forced whole (so that `tryEval` catches what
  # throws inside it).
  settled = config: let json = identity.data config; in builtins.deepSeq json json;

  # The deployments and group scripts a text (a script's, a string's) refers to: deployments
  # by their tokens (a deployment used as a string is `krops-deployment:TOKEN:`), scripts by
  # their store paths.
  referred = text: {
    tokens = map builtins.head (builtins.filter builtins.isList (builtins.split "krops-deployment:([0-9a-f]{64}):" text));
    paths = map builtins.head (builtins.filter builtins.isList (builtins.split "(${builtins.storeDir}/[0-9a-z]{32}-[-+._?=0-9A-Za-z]*)" text));
  };

  # What one value holds, as a list of entries:
  #   { deployment = NAME; token; config; fromList; }   a deployment
  #   { group = NAME; members = [NAME …]; … }           a list or set of deployments
  #   { group = NAME; tokens; paths; script; }          a script or string that runs some
  #   { failed = NAME; }                                an attribute that throws
  # `path` names the value; deployments in lists are named PATH.WRITER (at the top, WRITER).
  # The search stops at a depth of 6; `lib`, `pkgs` and the like are not looked into.
  skipped = [ "lib" "pkgs" "builtins" "krops" "nixpkgs" ];
  deploymentEntry = path: fromList: d: {
    deployment = if path == [ ] then d.name else join path;
    token = identity.token d.name d.config;
    config = settled d.config;
    inherit fromList;
  };
  scriptEntry = path: text: outPath:
    let refers = referred text; in
    if refers.tokens == [ ] && refers.paths == [ ] then [ ] else [ ({ group = join path; script = outPath; } // refers) ];
  contents = depth: path: v:
    if isDeployment v then [ (deploymentEntry path false v) ]
    else if isData path v then [{
      deployment = join path;
      token = identity.token (join path) v;
      config = settled v;
      fromList = false;
    }]
    else if builtins.isList v then
      let
        members = builtins.concatMap
          (d: if isDeployment d then [ (deploymentEntry (path ++ [ d.name ]) (path != [ ]) d) ] else [ ])
          v;
        scripts = map (d: d.outPath) (builtins.filter isDerivation v);
      in
      members ++ (if path != [ ] && (members != [ ] || scripts != [ ])
        then [{ group = join path; members = map (m: m.deployment) members; paths = scripts; }] else [ ])
    else if isDerivation v && v ? text && path != [ ] then scriptEntry path (toString v.text) v.outPath
    else if builtins.isString v && path != [ ] then scriptEntry path v null
    else if isPlainSet v && depth < 6 then
      let
        names = builtins.filter (name: !builtins.elem name skipped) (builtins.attrNames v);
        inside = builtins.concatMap (name: guarded depth (path ++ [ name ]) v.${name}) names;
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

  # `name` as an attribute path below `set`, as `-A` reads it: split at the first dot whose
  # prefix is an attribute, else the whole name as one attribute. Each attribute on the way
  # is evaluated, nothing beside it. `null` when there is none.
  resolve = set: name:
    let
      length = builtins.stringLength name;
      dots = builtins.filter (i: builtins.substring i 1 name == ".") (builtins.genList (i: i) length);
      viaPrefix = i:
        let prefix = builtins.substring 0 i name; rest = builtins.substring (i + 1) (-1) name; in
        if set ? ${prefix} && isPlainSet (called set.${prefix})
        then let found = resolve (called set.${prefix}) rest; in if found == null then null else [ prefix ] ++ found
        else null;
      candidates = builtins.filter (p: p != null) (map viaPrefix dots);
    in
    if !isPlainSet set then null
    else if candidates != [ ] then builtins.head candidates
    else if set ? ${name} then [ name ]
    else null;
  at = path: builtins.foldl' (v: name: called v.${name}) root path;

  entries =
    if wanted ? select then
      builtins.concatMap
        (name:
          let path = resolve root name; found = if path == null then [ ] else contents 0 path (at path); in
          if path == null then [{ missing = name; }]
          else if found == [ ] then [{ empty = name; }]
          else found)
        wanted.select
    else if wanted ? under then
      let base = wanted.under; in
      if wanted ? only then
        builtins.concatMap (name: guarded (builtins.length base) (base ++ [ name ]) (at base).${name}) wanted.only
      else if base == [ ] then contents 0 [ ] root
      else guarded (builtins.length base - 1) base (at base)
    else [ ];

  pick = key: builtins.filter (e: e ? ${key}) entries;
  document =
    if wanted ? children then
      let v = at wanted.children; in { children = if isPlainSet v then builtins.filter (n: !builtins.elem n skipped) (builtins.attrNames v) else [ ]; }
    else if wanted ? resolve then
      { paths = map (resolve root) wanted.resolve; }
    else {
      deployments = builtins.listToAttrs (map (e: { name = e.deployment; value = e.config; }) (pick "deployment"));
      tokens = builtins.listToAttrs (map (e: { name = e.deployment; value = e.token; }) (pick "deployment"));
      fromLists = map (e: e.deployment) (builtins.filter (e: e.fromList) (pick "deployment"));
      groups = builtins.listToAttrs (map (e: { name = e.group; value = builtins.removeAttrs e [ "group" ]; }) (pick "group"));
      failed = map (e: e.failed) (pick "failed");
      missing = map (e: e.missing) (pick "missing");
      empty = map (e: e.empty) (pick "empty");
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
