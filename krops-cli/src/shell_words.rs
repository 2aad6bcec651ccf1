//! Shell words: quoting for a POSIX shell, and the run's marker, the `$0` of every shell krops
//! starts on a target (how the lock holder finds a killed run's processes), kept out of what
//! users read. Below both `exec` (which shows commands) and `transport` (which builds them).

/// Quotes one word for a POSIX shell.
pub fn quote(word: &str) -> String {
    // shlex refuses only NUL bytes, which no argv element can carry anyway.
    shlex::try_quote(word).map(|q| q.into_owned()).unwrap_or_else(|_| "''".to_owned())
}

/// Quotes and joins words into one shell command line.
pub fn join<S: AsRef<str>>(words: &[S]) -> String {
    words.iter().map(|w| quote(w.as_ref())).collect::<Vec<_>>().join(" ")
}

/// `krops-run-PID-NANOS`: names this run's shells on every target (as their `$0`).
pub fn run_marker() -> &'static str {
    static MARKER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    MARKER.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        format!("krops-run-{}-{nanos}", std::process::id())
    })
}

/// `line` without the run marker a shell puts before its own errors (`krops-run-…: 1:
/// nixos-rebuild: not found` from dash, `…: line 1: …` from bash): users read the program's
/// words, not the name of krops's script.
pub fn unmarked(line: &str) -> String {
    let marker = format!("{}: ", run_marker());
    let Some(at) = line.find(&marker) else { return line.to_owned() };
    let rest = &line[at + marker.len()..];
    let after_number = |text: &str| -> Option<usize> {
        let digits = text.bytes().take_while(u8::is_ascii_digit).count();
        (digits > 0 && text[digits..].starts_with(": ")).then_some(digits + 2)
    };
    let skip = after_number(rest)
        .or_else(|| rest.strip_prefix("line ").and_then(after_number).map(|n| n + "line ".len()))
        .unwrap_or(0);
    format!("{}{}", &line[..at], &rest[skip..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_errors_lose_the_run_marker() {
        let marker = run_marker();
        assert_eq!(unmarked(&format!("{marker}: 1: nixos-rebuild: not found")), "nixos-rebuild: not found");
        assert_eq!(unmarked(&format!("{marker}: line 3: nom: command not found")), "nom: command not found");
        assert_eq!(unmarked(&format!("sudo: {marker}: x")), "sudo: x");
        assert_eq!(unmarked("error: nothing of ours"), "error: nothing of ours");
    }
}
