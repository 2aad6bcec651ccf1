# Stand-ins for the nixpkgs lib functions that krops.nix files use most, for machines without
# nixpkgs on the search path. Each behaves as its nixpkgs namesake for the inputs krops.nix
# files give it. (builtins — getEnv, mapAttrs, concatStringsSep, attrNames, … — come with
# `lib` anyway.)
rec {
  id = x: x;
  const = x: _: x;
  optional = cond: x: if cond then [ x ] else [ ];
  optionals = cond: xs: if cond then xs else [ ];
  optionalString = cond: s: if cond then s else "";
  optionalAttrs = cond: set: if cond then set else { };
  singleton = x: [ x ];
  toList = x: if builtins.isList x then x else [ x ];
  flatten = x: if builtins.isList x then builtins.concatMap flatten x else [ x ];
  last = xs: builtins.elemAt xs (builtins.length xs - 1);
  init = xs: builtins.genList (builtins.elemAt xs) (builtins.length xs - 1);
  range = first: last: builtins.genList (n: first + n) (last - first + 1);
  unique = builtins.foldl' (acc: x: if builtins.elem x acc then acc else acc ++ [ x ]) [ ];
  nameValuePair = name: value: { inherit name value; };
  mapAttrs' = f: set: builtins.listToAttrs (map (name: f name set.${name}) (builtins.attrNames set));
  mapAttrsToList = f: set: map (name: f name set.${name}) (builtins.attrNames set);
  filterAttrs = pred: set:
    builtins.listToAttrs (builtins.concatMap
      (name: if pred name set.${name} then [ (nameValuePair name set.${name}) ] else [ ])
      (builtins.attrNames set));
  genAttrs = names: f: builtins.listToAttrs (map (name: nameValuePair name (f name)) names);
  recursiveUpdate = a: b:
    a // builtins.mapAttrs
      (name: value:
        if builtins.isAttrs value && a ? ${name} && builtins.isAttrs a.${name}
        then recursiveUpdate a.${name} value else value)
      b;
  attrByPath = path: default: set:
    if path == [ ] then set
    else if builtins.isAttrs set && set ? ${builtins.head path}
    then attrByPath (builtins.tail path) default set.${builtins.head path}
    else default;
  concatMapStringsSep = sep: f: list: builtins.concatStringsSep sep (map f list);
  concatStrings = builtins.concatStringsSep "";
  hasPrefix = prefix: s: builtins.substring 0 (builtins.stringLength prefix) s == prefix;
  hasSuffix = suffix: s:
    let n = builtins.stringLength s; m = builtins.stringLength suffix; in
    n >= m && builtins.substring (n - m) m s == suffix;
  removePrefix = prefix: s:
    if hasPrefix prefix s
    then builtins.substring (builtins.stringLength prefix) (builtins.stringLength s) s else s;
  removeSuffix = suffix: s:
    if hasSuffix suffix s
    then builtins.substring 0 (builtins.stringLength s - builtins.stringLength suffix) s else s;
  splitString = sep: s: builtins.filter builtins.isString (builtins.split (escapeRegex sep) s);
  escapeRegex = builtins.replaceStrings
    [ "\\" "[" "]" "{" "}" "(" ")" "." "*" "+" "?" "^" "$" "|" ]
    [ "\\\\" "\\[" "\\]" "\\{" "\\}" "\\(" "\\)" "\\." "\\*" "\\+" "\\?" "\\^" "\\$" "\\|" ];
  escapeShellArg = arg: "'${builtins.replaceStrings [ "'" ] [ "'\\''" ] (toString arg)}'";
  escapeShellArgs = args: builtins.concatStringsSep " " (map escapeShellArg args);
  fileContents = file: removeSuffix "\n" (builtins.readFile file);
  maybeEnv = name: default: let value = builtins.getEnv name; in if value == "" then default else value;
  fix = f: let x = f x; in x;
  importJSON = file: builtins.fromJSON (builtins.readFile file);
  concatMapStrings = f: list: concatStrings (map f list);
  hasInfix = infix: s: builtins.match ".*${escapeRegex infix}.*" s != null;
  toUpper = builtins.replaceStrings lowerChars upperChars;
  toLower = builtins.replaceStrings upperChars lowerChars;
  chars = s: builtins.genList (i: builtins.substring i 1 s) (builtins.stringLength s);
  lowerChars = chars "abcdefghijklmnopqrstuvwxyz";
  upperChars = chars "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
  foldr = op: nul: list: builtins.foldl' (acc: x: op x acc) nul (reverseList list);
  reverseList = xs: builtins.genList (i: builtins.elemAt xs (builtins.length xs - 1 - i)) (builtins.length xs);
  take = n: xs: builtins.genList (builtins.elemAt xs) (if n < builtins.length xs then n else builtins.length xs);
  drop = n: xs: builtins.genList (i: builtins.elemAt xs (i + n)) (if n < builtins.length xs then builtins.length xs - n else 0);
  imap0 = f: xs: builtins.genList (i: f i (builtins.elemAt xs i)) (builtins.length xs);
  isDerivation = x: builtins.isAttrs x && (x.type or null) == "derivation";
  traceIf = cond: message: x: if cond then builtins.trace message x else x;
  warn = message: builtins.trace "warning: ${message}";
  # The module system's properties, as nixpkgs' lib makes them (krops's evalSource reads them).
  mkIf = condition: content: { _type = "if"; inherit condition content; };
  mkMerge = contents: { _type = "merge"; inherit contents; };
  mkOverride = priority: content: { _type = "override"; inherit priority content; };
  mkOptionDefault = mkOverride 1500;
  mkDefault = mkOverride 1000;
  mkImageMediaOverride = mkOverride 60;
  mkForce = mkOverride 50;
  mkVMOverride = mkOverride 10;
  mkOrder = priority: content: { _type = "order"; inherit priority content; };
  mkBefore = mkOrder 500;
  mkAfter = mkOrder 1500;
}
