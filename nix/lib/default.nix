# krops's Nix library, as `import "${<krops>}/lib"`: the original's `lib`, that is nixpkgs'
# lib (when <nixpkgs/lib> is on the search path) // builtins // krops's own functions. Without
# nixpkgs, builtins and stand-ins for the nixpkgs functions krops.nix files use most (listed in
# the README) take its place.
let
  # Whether <nixpkgs/lib> can be imported, without failing when it cannot: the search path's
  # entries are looked at directly.
  inNixPath = relative: builtins.any
    (entry:
      let absolute = builtins.substring 0 1 entry.path == "/"; in
      absolute && (
        (entry.prefix == "nixpkgs" && builtins.pathExists "${entry.path}/${relative}")
        || (entry.prefix == "" && builtins.pathExists "${entry.path}/nixpkgs/${relative}")))
    builtins.nixPath;

  nixpkgsLib = if inNixPath "lib" then import <nixpkgs/lib> else standIns;

  standIns = import ./stand-ins.nix;

  # The module system's merge, as the original's evalSource gets it from `lib.evalModules`
  # over its `source` options, for the forms krops.nix files use: at every attribute of the
  # definitions, mkIf and mkMerge are unfolded, only the definitions of the highest priority
  # (mkOverride: mkForce 50, plain 100, mkDefault 1000) count, sets are merged attribute by
  # attribute, lists are concatenated in mkOrder's order (mkBefore, plain, mkAfter), and other
  # values must agree. The mk* functions of nixpkgs' lib and of the stand-ins make the same
  # values, so this holds with and without nixpkgs.
  unfold = priority: order: v:
    let type = if builtins.isAttrs v then v._type or null else null; in
    if type == "if" then (if v.condition then unfold priority order v.content else [ ])
    else if type == "merge" then builtins.concatMap (unfold priority order) v.contents
    else if type == "override" then unfold v.priority order v.content
    else if type == "order" then unfold priority v.priority v.content
    else [{ inherit priority order; value = v; }];
  isMergeableSet = v: builtins.isAttrs v && !(v ? _type) && (v.type or null) != "derivation" && !(v ? outPath);
  mergeDefinitions = where: definitions:
    let
      unfolded = map (d: d // { value = expandShorthand where d.value; }) (builtins.concatMap (unfold 100 1000) definitions);
      highest = builtins.foldl' (p: d: if d.priority < p then d.priority else p) 1500 unfolded;
      chosen = builtins.filter (d: d.priority == highest) unfolded;
      values = map (d: d.value) chosen;
      ordered = builtins.sort (a: b: a.order < b.order) chosen;
      first = builtins.head values;
    in
    if chosen == [ ] then null
    else if builtins.all isMergeableSet values then
      let names = builtins.attrNames (builtins.foldl' (a: b: a // b) { } values); in
      builtins.listToAttrs (builtins.filter (a: a.value != null) (map
        (name: { inherit name; value = mergeDefinitions (where ++ [ name ]) (builtins.concatMap (v: if v ? ${name} then [ v.${name} ] else [ ]) values); })
        names))
    else if builtins.all builtins.isList values then builtins.concatMap (d: d.value) ordered
    else if builtins.all (v: v == first) values then first
    else throw "krops: evalSource: ${builtins.concatStringsSep "." where} has conflicting definitions (${builtins.concatStringsSep ", " (map (v: builtins.toJSON (if builtins.isPath v then toString v else v)) values)}); choose one with lib.mkForce";

  # A source's shorthand (`file = "/x"`, `pipe = "cmd"`), at `source.NAME.TYPE`, as the set it
  # stands for, so that other definitions can add attributes to it.
  shorthands = { file = "path"; derivation = "text"; pipe = "command"; symlink = "target"; passage = "dir"; };
  expandShorthand = where: value:
    let type = builtins.elemAt where 2; in
    if builtins.length where == 3 && shorthands ? ${type}
      && (builtins.isString value || builtins.isPath value || (builtins.isAttrs value && (value.type or null) == "derivation"))
    then { ${shorthands.${type}} = if builtins.isPath value then toString value else value; }
    else value;

  # `/etc/hostname`, as the original reads it (the kernel's host name is not visible to nix).
  hostName = default:
    let
      lines = builtins.filter (l: builtins.isString l && builtins.match "[A-Za-z0-9][A-Za-z0-9.-]*" l != null)
        (builtins.split "\n" (builtins.readFile /etc/hostname));
    in
    if builtins.pathExists /etc/hostname && builtins.length lines == 1 then builtins.head lines else default;

  getEnvOr = name: default: let value = builtins.getEnv name; in if value == "" then default else value;

  kropsLib = rec {
    # Merges a list of source sets source by source and attribute by attribute, with the
    # module system's rules (see mergeDefinitions); attributes left null are dropped, as the
    # original's `sanitize` does.
    evalSource = sources:
      let merged = mergeDefinitions [ "source" ] (if builtins.isList sources then sources else [ sources ]); in
      if merged == null then { } else merged;

    # The original's target: `[[USER]@]HOST[:PORT][/PATH]` (IPv6 hosts in brackets) or a set,
    # with every default filled in.
    mkTarget = s:
      let
        bracketed = builtins.match "(([^@]*)@)?\\[([^]]*)](:([^/]*))?(/.*)?" s;
        plain = builtins.match "(([^@]*)@)?([^:/]*)(:([^/]*))?(/.*)?" s;
        parts =
          if bracketed != null then bracketed
          else if plain != null then plain
          else throw "krops: mkTarget: cannot parse target ${builtins.toJSON s}";
        part = i: builtins.elemAt parts i;
        given = name: value: if value == null || value == "" && name != "user" then { } else { ${name} = value; };
      in
      {
        # As the original (`maybeEnv "LOGNAME" null`): without LOGNAME (cron, systemd units,
        # CI containers) the user is null, ssh's choice, and `isLocalTarget` still holds.
        user = getEnvOr "LOGNAME" null;
        host = getEnvOr "HOSTNAME" (hostName "localhost");
        port = null;
        path = "/var/src";
        sudo = false;
        extraOptions = [ ];
      } // (if builtins.isString s then
        given "user" (part 1) // given "host" (part 2) // given "port" (part 4) // given "path" (part 5)
      else s);

    # The path `command` functions receive: the target's, else krops's default.
    targetPath = target: (mkTarget target).path;

    firstWord = s: builtins.head (builtins.match "^([^[:space:]]*).*" s);

    # The original's other helpers.
    maybeHostName = hostName;
    isLocalTarget = target:
      let origin = mkTarget ""; in
      target.user == origin.user && builtins.elem target.host [ origin.host "localhost" ];
    mkUserPortSSHOpts = target:
      (if target.user != null then [ "-l" target.user ] else [ ])
      ++ (if target.port != null then [ "-p" target.port ] else [ ]);
    testString = re: x: builtins.match re x != null;
    test = re: x: builtins.isString x && testString re x;
    shell.quote = x:
      if x == "" then "''"
      else builtins.concatStringsSep "" (map
        (c: if builtins.match "[-+./0-9:=A-Z_a-z]" c != null then c else if c == "\n" then "'\n'" else "\\${c}")
        (builtins.genList (i: builtins.substring i 1 x) (builtins.stringLength x)));
  };
in
nixpkgsLib // builtins // kropsLib
