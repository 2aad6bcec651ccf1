# What the original's `import "${krops}/pkgs" {}` offered a krops.nix: nixpkgs (when <nixpkgs>
# is on the search path) with `krops.writeDeploy`, `krops.writeTest`, `krops.writeCommand`,
# `krops.rebuild`, `krops.runShell` and `populate`; without nixpkgs, krops's builtins-only
# writers: `writeText` (builtins.toFile), and `writeScript`, `writeDash`, `writers.writeDash`
# (executable files built with /bin/sh).
{ ... }@args:
let
  lib = import ../lib;
  writers = import ./writers.nix;
  nixpkgs =
    let found = builtins.any (e: e.prefix == "nixpkgs" && builtins.substring 0 1 e.path == "/"
      && builtins.pathExists "${e.path}/default.nix") builtins.nixPath;
    in if found then import <nixpkgs> (builtins.removeAttrs args [ "krops" ]) else writers;
  krops = import ./krops.nix { inherit lib; };
in
nixpkgs // {
  inherit krops;
  inherit (krops) populate;
}
