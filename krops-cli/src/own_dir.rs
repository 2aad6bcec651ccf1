//! krops's own directory on a target, `<path>/.krops`: the lock (the directory itself, under
//! `flock`), who holds it, the deploy record and the confirm watchdog's files.
//!
//! Another account may be able to write `<path>` and rename or replace any name in it at any
//! moment. A name that krops created can then point anywhere by the time krops uses it, so its
//! scripts never use a name in `<path>` for their own state: they enter this directory and
//! check what they entered (a directory of their own user, mode 0700, whose parent is `<path>`
//! itself), then use names relative to it. No one else can open it (so no stranger can hold the
//! lock), nor add, replace or link anything inside it; moving it out of `<path>` takes write
//! permission on it, which only its owner has. A rename within `<path>` is caught by the next
//! run, which makes a fresh one.

/// `enter_own_dir PATH [create]` enters `PATH/.krops`, making it first with `create` (whatever
/// else stands there, a link or a directory without krops's mark `own`, makes way: another
/// of krops's own 0700 directories, renamed there, is no state directory); it fails, at `/`, when
/// the directory is not there or not krops's own. `own_dir_here PATH` says whether the working
/// directory is it (also when entered another way, through `/proc/PID/cwd`).
pub const FUNCTIONS: &str = r#"own_dir_here() {
  [ "$(stat -c '%u %a %F' .)" = "$(id -u) 700 directory" ] &&
  [ "$(stat -c %d:%i ..)" = "$(stat -L -c %d:%i -- "$1")" ] && [ -f own ]
}
enter_own_dir() {
  for _ in 1 2 3; do
    if cd -- "$1/.krops" 2> /dev/null && own_dir_here "$1"; then return 0; fi
    cd /
    [ "${2-}" = create ] || return 1
    if [ -e "$1/.krops" ] || [ -L "$1/.krops" ]; then rm -rf -- "$1/.krops"; fi
    # Made whole under another name, then renamed into place: a run racing this one never
    # sees it without its mark, which only krops can put there.
    made=$(mktemp -d -- "$1/.krops-new.XXXXXX") || break
    if (cd -- "$made" && private_here "$1" && : > own); then
      mv -T -- "$made" "$1/.krops" 2> /dev/null || rm -rf -- "$made"
    else
      rm -rf -- "$made"
    fi
  done
  echo "error: cannot make krops's own directory $1/.krops (does another account write to $1?)" >&2
  return 1
}"#;

/// `script` with [`FUNCTIONS`] (and `sdk::PRIVATE_DIR_FUNCTIONS`, which they use) defined
/// before it.
pub fn with_functions(script: &str) -> String {
    format!("{}\n{FUNCTIONS}\n{script}", krops_core::sdk::PRIVATE_DIR_FUNCTIONS)
}
