# What krops keeps of a deployment, and how it tells deployments apart where a file has only
# their strings (a script that runs several): a token of the writer's name and the
# configuration as JSON data.
{ lib }:
rec {
  isDerivation = v: builtins.isAttrs v && (v.type or null) == "derivation";

  # Nix paths become their strings (a path in a set is not copied into the world-readable
  # store, as `builtins.toJSON` would); derivations become their output paths.
  plain = v:
    if builtins.isPath v then toString v
    else if isDerivation v then v.outPath
    else if builtins.isAttrs v then builtins.mapAttrs (_: plain) v
    else if builtins.isList v then map plain v
    else v;

  # A `command` that is a function of the target path, called.
  finalise = config:
    if config ? command && builtins.isFunction config.command
    then config // { command = config.command (lib.targetPath (config.target or "")); }
    else config;

  # The configuration krops reads.
  data = config: plain (finalise config);

  token = name: config:
    builtins.hashString "sha256" (builtins.unsafeDiscardStringContext (name + "\n" + builtins.toJSON (data config)));
}
