# What the original's `import "${krops}/pkgs" {}` offered a krops.nix: `krops.writeDeploy`,
# `krops.writeTest`, `krops.writeCommand`, and `writeText` (as builtins.toFile), without
# nixpkgs.
{ ... }:
let
  lib = import ../lib;
in
{
  krops = { inherit (lib) writeDeploy writeTest writeCommand; };
  writeText = name: text: builtins.toFile name text;
}
