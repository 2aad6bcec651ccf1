# The writers a krops.nix calls: each returns a deployment that remembers its writer's kind
# (writeDeploy → deploy, writeTest → build, writeCommand → run), so that `krops deploy` never
# activates a deployment written for testing or for a command.
{ lib }:
let
  deployment = kind: name: config: { _type = "krops-deployment"; inherit name; config = config // { inherit kind; }; };
  # Arguments the original accepted that have no meaning here.
  withoutObsolete = args: builtins.removeAttrs args [ "fast" ];
in
{
  writeDeploy = name: args: deployment "deploy" name (withoutObsolete args);

  writeTest = name: args: deployment "build" name args;

  writeCommand = name: args:
    let command = args.command or (path: "echo ${path}"); in
    deployment "run" name (args // {
      command = if builtins.isFunction command then command (lib.targetPath args.target) else command;
    });
}
