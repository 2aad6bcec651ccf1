//! Credentials never reach the user's screen, logs or JSON: every line krops prints passes
//! through [`credentials`], which hides the user and password of URLs
//! (`https://deploy:TOKEN@host/…` → `https://***@host/…`), wherever they come from (a
//! configuration value, a plugin's error, git's own stderr). JSON goes through [`json`], which
//! hides them string by string.

use std::borrow::Cow;

use serde_json::Value;

/// `text` with the user-information part of every `scheme://user[:password]@host` replaced by
/// `***`.
pub fn credentials(text: &str) -> Cow<'_, str> {
    if !text.contains("://") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        // Quotes and the like may be part of a password: the authority ends only where a URL's
        // does (the path, query or fragment) or at white space.
        let authority_end =
            after.find(|c: char| c == '/' || c.is_whitespace() || "?#".contains(c)).unwrap_or(after.len());
        let authority = &after[..authority_end];
        match authority.rfind('@') {
            Some(user_end) => {
                out.push_str("***");
                out.push_str(&authority[user_end..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[authority_end..];
    }
    out.push_str(rest);
    Cow::Owned(out)
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
