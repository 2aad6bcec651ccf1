# Writers that need no nixpkgs: a text file, or an executable script run by /bin/sh or dash.
# Builders of this kind run /bin/sh with the system's cat and chmod (no nixpkgs, so no
# coreutils of its own): they need a build sandbox that lets them reach those, as the
# builtins-only derivations of krops's library do.
let
  executable = name: interpreter: text: derivation {
    inherit name text;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    PATH = "/run/current-system/sw/bin:/usr/bin:/bin";
    passAsFile = [ "text" ];
    args = [ "-c" "{ ${if interpreter == null then "" else "echo '#!${interpreter}'; "}cat \"$textPath\"; } > \"$out\" && chmod 755 \"$out\"" ];
  };
in
rec {
  writeText = name: text: builtins.toFile name text;
  writeScript = name: text: executable name null text;
  writeDash = name: text: executable name "/bin/sh" text;
  writers = { inherit writeDash; writeBash = name: text: executable name "/bin/bash" text; };
}
