# examples/local/krops.toml in Nix, in the style of the original krops: same deployment,
# same `krops eval` output.
let
  krops = <krops>;
  lib = import "${krops}/lib";
  pkgs = import "${krops}/pkgs" {};
in
  pkgs.krops.writeCommand "example" {
    target = "/tmp/krops-example/src";
    force = true;
    backup = true;
    command = targetPath: "cd \"$KROPS_TARGET_PATH\" && find . -path ./.populate -prune -o -print | sort && cat build-info";
    source = lib.evalSource [{
      nixos-config.file = toString ./configuration.nix;
      current.symlink = "nixos-config";
      build-info.pipe = "echo \"deployed by krops from $(hostname) at $(date -u +%Y-%m-%dT%H:%M:%SZ)\"";
      modules.file = {
        path = toString ./modules;
        filters = [{ type = "exclude"; pattern = "*.bak"; }];
      };
    }];
  }
