# krops's Nix library, builtins only (no nixpkgs needed): the original's familiar functions,
# producing what `krops -f FILE.nix` reads. Import it as `import "${<krops>}/lib"`.
let
  # The original's target string, `[[USER]@]HOST[:PORT][/PATH]` (IPv6 hosts in brackets), as a
  # table holding only the parts given: krops fills in the defaults and checks the values.
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
    if builtins.isAttrs s then s
    else
      given "user" (part 1)
      // given "host" (part 2)
      // given "port" (part 4)
      // given "path" (part 5);

  # Merges a list of source sets (later ones win), as the original's evalSource; krops checks
  # and normalises each source.
  evalSource = sources:
    builtins.foldl' (merged: set: merged // set) { } (if builtins.isList sources then sources else [ sources ]);

  # The path `command` functions receive: the target's, else krops's default.
  targetPath = target: (mkTarget target).path or "/var/src";

  deployment = name: config: { _type = "krops-deployment"; inherit name config; };

  # Drops the arguments the original accepted that have no meaning here.
  withoutObsolete = args: builtins.removeAttrs args [ "fast" ];
in
{
  inherit mkTarget evalSource targetPath;

  writeDeploy = name: args: deployment name (withoutObsolete args);

  writeTest = name: args: deployment name args;

  writeCommand = name: args:
    let
      command = args.command or (path: "echo ${path}");
    in
    deployment name (args // {
      command = if builtins.isFunction command then command (targetPath args.target) else command;
    });
}
