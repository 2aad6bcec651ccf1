//! Credentials never reach the user's screen, logs or JSON: every line krops prints passes
//! through [`credentials`], which hides the user and password of URLs
//! (`https://deploy:TOKEN@host/…` → `https://***@host/…`), wherever they come from (a
//! configuration value, a plugin's error, git's own stderr). JSON goes through [`json`], which
//! hides them string by string.

use std::borrow::Cow;

use serde_json::Value;

/// `text` with the user-information part of every `scheme://user[:password]@host` replaced by
/// `***`: everything from the `://` to the last `@` of the URL's authority.
///
/// Passwords are written as they come, not as URLs should be: a `#`, `?` or `@` in one does not
/// end the authority (git and curl would take them for a fragment, a query or the host, and
/// print the URL whole in their errors). Only a `/` starts the path, so `https://host/p@x`
/// stays, and a `/` in a password must be written `%2F`. A URL's end is its line's end; for a
/// URL that starts the text or follows a quote (as krops's and git's messages quote them), its
/// closing quote, so a user or password may hold spaces; otherwise the first white space, so
/// that prose after a URL (`see https://example.org or ask admin@example.org`) stays.
pub fn credentials(text: &str) -> Cow<'_, str> {
    if !text.contains("://") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find("://") {
        let authority = search + found + 3;
        search = authority;
        if let Some(at) = userinfo_length(&text[authority..], delimiter(&text[..search - 3])) {
            out.push_str(&text[copied..authority]);
            out.push_str("***");
            copied = authority + at;
            search = copied;
        }
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// What a URL's text is enclosed in, judged by what precedes its scheme (`before` ends just
/// before the `://`).
#[derive(Clone, Copy, PartialEq)]
enum Delimiter {
    /// Nothing: the text is the URL, or begins with it.
    Start,
    /// This quote, which closes it.
    Quote(char),
    /// Prose.
    None,
}

fn delimiter(before: &str) -> Delimiter {
    let scheme = before.trim_end_matches(|c: char| c.is_ascii_alphanumeric() || "+-.".contains(c));
    match scheme.chars().next_back() {
        None => Delimiter::Start,
        Some(quote @ ('"' | '\'' | '`')) => Delimiter::Quote(quote),
        Some(_) => Delimiter::None,
    }
}

/// Where the user information of the authority that begins `after` ends: the position of
/// its last `@`, if it has one.
fn userinfo_length(after: &str, delimiter: Delimiter) -> Option<usize> {
    let mut chars = after.char_indices().peekable();
    let mut end = after.len();
    while let Some((i, c)) = chars.next() {
        let ends = match c {
            '/' | '\n' | '\r' => true,
            c if c.is_whitespace() => delimiter == Delimiter::None,
            // A quote inside a password is followed by more of it, a closing one is not.
            c if delimiter == Delimiter::Quote(c) => {
                chars.peek().is_none_or(|&(_, next)| next.is_whitespace() || ",.;:)]}\"'`".contains(next))
            }
            _ => false,
        };
        if ends {
            end = i;
            break;
        }
    }
    let authority = &after[..end];
    let at = authority.rfind('@')?;
    // Spaces in the user information, but also after the `@`: prose, not a URL's host. Only
    // the first word can be the URL.
    if authority[..at].contains(char::is_whitespace) && authority[at..].contains(char::is_whitespace) {
        let word = &authority[..authority.find(char::is_whitespace).unwrap_or(end)];
        return word.rfind('@');
    }
    Some(at)
}

/// `value` with [`credentials`] hidden in each of its strings and keys. Never on the
/// serialized text: there a URL's start in one string and an `@` in a later one would make
/// the redaction swallow the quotes, keys and fields between them.
pub fn json(value: Value) -> Value {
    match value {
        Value::String(text) => Value::String(credentials(&text).into_owned()),
        Value::Array(items) => Value::Array(items.into_iter().map(json).collect()),
        Value::Object(fields) => {
            Value::Object(fields.into_iter().map(|(k, v)| (credentials(&k).into_owned(), json(v))).collect())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::{credentials, json};

    #[test]
    fn hides_user_and_password_of_urls() {
        assert_eq!(
            credentials("cannot list the refs of https://deploy:TOKEN@git.example.org/r.git: 401"),
            "cannot list the refs of https://***@git.example.org/r.git: 401"
        );
        assert_eq!(
            credentials("fatal: 'http://u@h:8080/x' and ssh://git@h/y"),
            "fatal: 'http://***@h:8080/x' and ssh://***@h/y"
        );
        assert_eq!(credentials("url = \"https://a:b@c\""), "url = \"https://***@c\"");
        assert_eq!(credentials("http://user:ab'S3\"CR<ET@127.0.0.1:9/x"), "http://***@127.0.0.1:9/x");
        assert_eq!(
            credentials("root@web1:/var/src and https://host/p@x"),
            "root@web1:/var/src and https://host/p@x"
        );
        assert_eq!(credentials("no urls here"), "no urls here");
    }

    #[test]
    fn hides_passwords_with_hashes_question_marks_spaces_and_ats() {
        let hidden = "https://***@host/repo";
        for url in [
            "https://user:p#ss@host/repo",
            "https://user:p?ss@host/repo",
            "https://us er:p ss@host/repo",
            "https://user:p@ss@host/repo",
            "https://tok#en@host/repo",
        ] {
            // The text itself, and quoted as krops's, git's and gix's messages quote it.
            assert_eq!(credentials(url), hidden);
            assert_eq!(
                credentials(&format!("git url {url:?} is not a URL git can use: …, input={url:?}")),
                format!("git url \"{hidden}\" is not a URL git can use: …, input=\"{hidden}\"")
            );
            assert_eq!(
                credentials(&format!("fatal: unable to access '{url}/': error")),
                format!("fatal: unable to access '{hidden}/': error")
            );
            // Debug-formatted twice: the quotes escaped.
            assert_eq!(
                credentials(&format!("{:?}", format!("url = {url:?}"))),
                format!("{:?}", format!("url = {hidden:?}"))
            );
        }
        assert_eq!(credentials("see https://user:p#ss@host:8080 now"), "see https://***@host:8080 now");
        assert_eq!(credentials("'https://us er:it's@host/'"), "'https://***@host/'");
        assert_eq!(credentials("ssh://u:p#w@h"), "ssh://***@h");
    }

    #[test]
    fn prose_after_a_url_is_left_alone() {
        for text in [
            "see https://example.org and ask admin@example.org",
            "'https://example.org' on root@web1:/var/src",
            "\"https://example.org\", user root@web1",
            "https://example.org is down, ask admin@example.org about it",
            "https://example.org\nroot@web1",
            "fetched https://host/path?from=me@example.org",
        ] {
            assert_eq!(credentials(text), text);
        }
    }

    #[test]
    fn hides_credentials_string_by_string_in_json() {
        let value = serde_json::json!({
            "a": "see https://x", "b@c": ["https://u:p@h/r", 1, null], "d": { "https://u:p@h": "@" },
        });
        assert_eq!(
            json(value),
            serde_json::json!({
                "a": "see https://x", "b@c": ["https://***@h/r", 1, null], "d": { "https://***@h": "@" },
            })
        );
    }
}
