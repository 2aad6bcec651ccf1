//! Credentials never reach the user's screen, logs or JSON: every line krops prints passes
//! through [`credentials`], which hides the user and password of URLs
//! (`https://deploy:TOKEN@host/…` → `https://***@host/…`), wherever they come from (a
//! configuration value, a plugin's error, git's own stderr).

use std::borrow::Cow;

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

#[cfg(test)]
mod tests {
    use super::credentials;

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
}
