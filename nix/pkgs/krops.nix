# The original's `pkgs.krops` and `pkgs.populate`. Its writers build shell scripts; here each
# returns a deployment that remembers its writer's kind (writeDeploy → deploy, writeTest →
# build, writeCommand → run, populate → populate), so that `krops deploy` never activates a
# deployment written for testing, for a command or for populating alone.
#
# A deployment used as a string (`"${deploy-web}"`, `concatStringsSep "\n" [ a b ]` in a
# script that runs several) is `krops-deployment:TOKEN:` (see identity.nix): how krops finds a
# group script's members.
{ lib }:
let
  identity = import ../identity.nix { inherit lib; };
  deployment = kind: name: config:
    let withKind = config // { inherit kind; }; in
    {
      _type = "krops-deployment";
      inherit name;
      config = withKind;
      __toString = _: "krops-deployment:${identity.token name withKind}:";
    };
  # Arguments the original accepted that have no meaning here.
  withoutObsolete = args: builtins.removeAttrs args [ "fast" ];
  # What builds a shell script in the original, which krops does not run as one.
  unsupported = what: instead: throw "krops: ${what} is not supported (krops runs no scripts the file builds); ${instead}";
in
{
  writeDeploy = name: args: deployment "deploy" name (withoutObsolete args);

  writeTest = name: args: deployment "build" name args;

  writeCommand = name: args:
    let command = args.command or (path: "echo ${path}"); in
    deployment "run" name (args // {
      command = if builtins.isFunction command then command (lib.targetPath args.target) else command;
    });

  # `populate { source; target; force ? false; backup ? false; }`: the sources on the target,
  # no activation (`krops populate`).
  populate = args: deployment "populate" "populate" (builtins.intersectAttrs { source = 0; target = 0; force = 0; backup = 0; } args);

  rebuild = _: _: _: unsupported "pkgs.krops.rebuild" "use writeDeploy (operation = \"…\") or `krops deploy --operation`";
  runShell = _: _: _: unsupported "pkgs.krops.runShell" "use writeCommand { command = …; } or `krops run NAME -- COMMAND`";
  withNixOutputMonitor = _: _: _: unsupported "pkgs.krops.withNixOutputMonitor" "use useNixOutputMonitor = \"…\" in writeDeploy";
}
