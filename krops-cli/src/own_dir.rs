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
pub const FUNCTIONS: &str = include_str!("sh/own_dir_functions.sh");

/// `script` with [`FUNCTIONS`] (and `sdk::PRIVATE_DIR_FUNCTIONS`, which they use) defined
/// before it.
pub fn with_functions(script: &str) -> String {
    format!("{}\n{FUNCTIONS}\n{script}", krops_core::sdk::PRIVATE_DIR_FUNCTIONS)
}
