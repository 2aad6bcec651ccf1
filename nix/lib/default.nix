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

  # Attribute sets merged attribute by attribute, at every depth; lists are concatenated and
  # anything else is taken from the later set: how the original's module-based evalSource
  # combines source definitions.
  deepMerge = a: b:
    if builtins.isAttrs a && builtins.isAttrs b then
      a // builtins.mapAttrs (name: value: if a ? ${name} then deepMerge a.${name} value else value) b
    else if builtins.isList a && builtins.isList b then a ++ b
    else b;

  # A source's shorthand (`file = "./x"`) as the table it stands for, so that later
  # definitions can add attributes to it.
  shorthands = { file = "path"; derivation = "text"; pipe = "command"; symlink = "target"; passage = "dir"; };
  expandSource = builtins.mapAttrs (type: value:
    if builtins.isString value && shorthands ? ${type} then { ${shorthands.${type}} = value; }
    else if builtins.isPath value && shorthands ? ${type} then { ${shorthands.${type}} = toString value; }
    else value);

  # `/etc/hostname`, as the original reads it (the kernel's host name is not visible to nix).
  hostName = default:
    let
      lines = builtins.filter (l: builtins.isString l && builtins.match "[A-Za-z0-9][A-Za-z0-9.-]*" l != null)
        (builtins.split "\n" (builtins.readFile /etc/hostname));
    in
    if builtins.pathExists /etc/hostname && builtins.length lines == 1 then builtins.head lines else default;

  getEnvOr = name: default: let value = builtins.getEnv name; in if value == "" then default else value;

  kropsLib = rec {
    # Merges a list of source sets source by source and attribute by attribute.
    evalSource = sources:
      let list = if builtins.isList sources then sources else [ sources ]; in
      builtins.foldl' (merged: set: deepMerge merged (builtins.mapAttrs (_: expandSource) set)) { } list;

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
        # As the original: `getEnv` gives "" when LOGNAME is unset.
        user = builtins.getEnv "LOGNAME";
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
