# The original krops README's Minimal Example. The only change: krops is imported from the
# search path entry krops provides while evaluating (`<krops>`), not fetched with nixpkgs.
# (The original wrote nixos-config inline with pkgs.writeText, which works too; a file keeps
# `krops eval` identical to krops.toml's.)
let
  krops = <krops>;

  lib = import "${krops}/lib";
  pkgs = import "${krops}/pkgs" {};

  source = lib.evalSource [{
    nixpkgs.git = {
      clean.exclude = ["/.version-suffix"];
      ref = "4b4bbce199d3b3a8001ee93495604289b01aaad3";
      url = https://github.com/NixOS/nixpkgs;
    };
    nixos-config.file = toString ./configuration.nix;
  }];
in
  pkgs.krops.writeDeploy "deploy" {
    source = source;
    target = "root@YOUR_IP_ADDRESS_OR_HOST_NAME_HERE";
  }
