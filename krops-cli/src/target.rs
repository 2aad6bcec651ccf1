//! Targets: where sources go and where commands run. Parses SPEC's string form
//! `[[USER]@]HOST[:PORT][/PATH]` (plus bracketed IPv6 literals) and the table form, fills in
//! defaults, rejects anything that ssh could read as an option, and decides locality.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// Where sources go unless the target names a path.
pub const DEFAULT_PATH: &str = "/var/src";

/// A normalised target.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// The login user; empty leaves it to ssh's configuration.
    pub user: String,
    pub host: String,
    pub port: Option<u16>,
    pub path: String,
    pub sudo: bool,
    pub extra_options: Vec<String>,
}

/// A target that could not be parsed or is unsafe to use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid target {input:?}: {reason}")]
pub struct TargetError {
    pub input: String,
    pub reason: String,
}

/// The invoking user and this machine's host name, which fill in and classify targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub user: String,
    pub host: String,
}

impl Origin {
    pub fn current() -> Self {
        let user = std::env::var("LOGNAME").ok().filter(|u| !u.is_empty()).unwrap_or_else(whoami::username);
        let host = whoami::fallible::hostname().unwrap_or_else(|_| "localhost".to_owned());
        Origin { user, host }
    }
}

impl Target {
    /// Parses the string form, filling defaults from `origin`.
    pub fn parse(input: &str, origin: &Origin) -> Result<Target, TargetError> {
        let fail = |reason: &str| TargetError { input: input.to_owned(), reason: reason.to_owned() };
        let (authority, path) = match input.find('/') {
            Some(i) => (&input[..i], Some(&input[i..])),
            None => (input, None),
        };
        let (user, host_port) = match authority.split_once('@') {
            Some((user, rest)) => (Some(user), rest),
            None => (None, authority),
        };
        let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
            let (host, rest) = bracketed.split_once(']').ok_or_else(|| fail("unclosed '[' in host"))?;
            let port = match rest {
                "" => None,
                _ => Some(rest.strip_prefix(':').ok_or_else(|| fail("expected ':' after ']'"))?),
            };
            (host, port)
        } else {
            match host_port.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (host_port, None),
            }
        };
        let port = port.map(|p| parse_port(p).map_err(|r| fail(&r))).transpose()?;
        let spec = TargetTable {
            user: user.map(str::to_owned),
            host: (!host.is_empty()).then(|| host.to_owned()),
            port,
            path: path.map(str::to_owned),
            sudo: false,
            extra_options: Vec::new(),
        };
        spec.normalise(origin).map_err(|reason| TargetError { input: input.to_owned(), reason })
    }

    /// Local targets are served without ssh: this machine, as the invoking user, no port.
    pub fn is_local(&self, origin: &Origin) -> bool {
        (self.host == "localhost" || self.host == origin.host)
            && self.user == origin.user
            && self.port.is_none()
    }

    /// `HOST` as shown in messages; `[::1]` for IPv6 literals.
    pub fn display_host(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }

    /// `user@host` as nixos-rebuild's `--target-host`/`--build-host` want it.
    pub fn user_at_host(&self) -> String {
        if self.user.is_empty() {
            self.host.clone()
        } else {
            format!("{}@{}", self.user, self.host)
        }
    }
}

fn parse_port(port: &str) -> Result<u16, String> {
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("port {port:?} is not a number from 1 to 65535")),
    }
}

/// The table form, also the intermediate of the string form.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TargetTable {
    user: Option<String>,
    host: Option<String>,
    #[serde(default, deserialize_with = "port_number_or_string")]
    port: Option<u16>,
    path: Option<String>,
    #[serde(default)]
    sudo: bool,
    #[serde(default)]
    extra_options: Vec<String>,
}

impl TargetTable {
    fn normalise(self, origin: &Origin) -> Result<Target, String> {
        let user = self.user.unwrap_or_else(|| origin.user.clone());
        let host = self.host.filter(|h| !h.is_empty()).unwrap_or_else(|| origin.host.clone());
        let path = self.path.unwrap_or_else(|| DEFAULT_PATH.to_owned());
        check_user(&user)?;
        check_host(&host)?;
        check_path(&path)?;
        let path = match path.trim_end_matches('/') {
            "" => "/".to_owned(),
            trimmed => trimmed.to_owned(),
        };
        Ok(Target { user, host, port: self.port, path, sudo: self.sudo, extra_options: self.extra_options })
    }
}

fn check_user(user: &str) -> Result<(), String> {
    if user.starts_with('-') {
        return Err(format!("user {user:?} begins with '-' and would be read as an ssh option"));
    }
    if let Some(c) = user.chars().find(|c| !(c.is_ascii_alphanumeric() || "._-$".contains(*c))) {
        return Err(format!(
            "user {user:?} contains {c:?}; user names are letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

fn check_host(host: &str) -> Result<(), String> {
    if host.starts_with('-') {
        return Err(format!("host {host:?} begins with '-' and would be read as an ssh option"));
    }
    if let Some(c) = host.chars().find(|c| !(c.is_ascii_alphanumeric() || ".-_:%".contains(*c))) {
        return Err(format!(
            "host {host:?} contains {c:?}; host names are letters, digits, '.', '-' and '_' (IPv6 literals go in brackets)"
        ));
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("path {path:?} is not absolute"));
    }
    if path.chars().any(char::is_control) {
        return Err(format!("path {path:?} contains a control character"));
    }
    if path.split('/').any(|part| part == "..") {
        return Err(format!("path {path:?} contains '..'"));
    }
    Ok(())
}

fn port_number_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Port {
        Number(i64),
        Text(String),
    }
    match Option::<Port>::deserialize(d)? {
        None => Ok(None),
        Some(Port::Number(n)) => parse_port(&n.to_string()).map(Some).map_err(de::Error::custom),
        Some(Port::Text(s)) => parse_port(&s).map(Some).map_err(de::Error::custom),
    }
}

/// A target as written in a configuration file: a string or a table. Deserialising it
/// validates and normalises it against the current [`Origin`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec(pub Target);

impl<'de> Deserialize<'de> for TargetSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SpecVisitor;
        impl<'de> Visitor<'de> for SpecVisitor {
            type Value = TargetSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a target string \"[[USER]@]HOST[:PORT][/PATH]\" or a table")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TargetSpec, E> {
                Target::parse(v, &Origin::current()).map(TargetSpec).map_err(E::custom)
            }
            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<TargetSpec, M::Error> {
                let table = TargetTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                table
                    .normalise(&Origin::current())
                    .map(TargetSpec)
                    .map_err(|reason| de::Error::custom(format!("invalid target: {reason}")))
            }
        }
        d.deserialize_any(SpecVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin {
        Origin { user: "alice".into(), host: "deployer".into() }
    }

    fn parse(s: &str) -> Target {
        Target::parse(s, &origin()).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn target(user: &str, host: &str, port: Option<u16>, path: &str) -> Target {
        Target {
            user: user.into(),
            host: host.into(),
            port,
            path: path.into(),
            sudo: false,
            extra_options: vec![],
        }
    }

    #[test]
    fn every_string_form() {
        assert_eq!(parse("root@web1:2222/srv/src"), target("root", "web1", Some(2222), "/srv/src"));
        assert_eq!(parse("root@web1/srv"), target("root", "web1", None, "/srv"));
        assert_eq!(parse("root@web1:22"), target("root", "web1", Some(22), "/var/src"));
        assert_eq!(parse("root@web1"), target("root", "web1", None, "/var/src"));
        assert_eq!(parse("web1"), target("alice", "web1", None, "/var/src"));
        assert_eq!(parse("web1:2222"), target("alice", "web1", Some(2222), "/var/src"));
        assert_eq!(parse("web1/x/y/"), target("alice", "web1", None, "/x/y"));
        assert_eq!(parse("@web1"), target("", "web1", None, "/var/src"));
        assert_eq!(parse("@web1:1/p"), target("", "web1", Some(1), "/p"));
        assert_eq!(parse("/tmp/site"), target("alice", "deployer", None, "/tmp/site"));
        assert_eq!(parse(""), target("alice", "deployer", None, "/var/src"));
        assert_eq!(parse("bob@"), target("bob", "deployer", None, "/var/src"));
        assert_eq!(parse(":2222"), target("alice", "deployer", Some(2222), "/var/src"));
        assert_eq!(parse("root@[::1]:2222/srv/src"), target("root", "::1", Some(2222), "/srv/src"));
        assert_eq!(parse("[fe80::1%eth0]"), target("alice", "fe80::1%eth0", None, "/var/src"));
        assert_eq!(parse("web1/path/with@at"), target("alice", "web1", None, "/path/with@at"));
    }

    #[test]
    fn locality() {
        let o = origin();
        assert!(parse("/tmp/site").is_local(&o));
        assert!(parse("localhost/tmp").is_local(&o));
        assert!(parse("alice@deployer").is_local(&o));
        assert!(!parse("alice@deployer:22").is_local(&o));
        assert!(!parse("root@localhost").is_local(&o));
        assert!(!parse("@localhost").is_local(&o));
        assert!(!parse("web1").is_local(&o));
    }

    #[test]
    fn rejects_option_like_and_hostile_parts() {
        for bad in [
            "-oProxyCommand=touch /tmp/x",
            "root@-oProxyCommand=x",
            "-l@host",
            "root@host:abc",
            "root@host:0",
            "root@host:70000",
            "root@ho st",
            "root@$(touch x)",
            "root@`id`",
            "ro'ot@host",
            "root@host\n",
            "root@[::1",
            "root@[::1]x",
            "a@b@c",
            "root@::1",
            "host/../etc",
            "host/a\nb",
        ] {
            assert!(Target::parse(bad, &origin()).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn table_form() {
        let t: TargetSpec = serde_json::from_str(
            r#"{"host":"h","port":"2222","user":"","sudo":true,"extraOptions":["-o","A=b"]}"#,
        )
        .unwrap();
        assert_eq!(t.0.port, Some(2222));
        assert_eq!(t.0.user, "");
        assert!(t.0.sudo);
        assert_eq!(t.0.path, "/var/src");
        assert_eq!(t.0.extra_options, ["-o", "A=b"]);
        assert!(serde_json::from_str::<TargetSpec>(r#"{"host":"h","bogus":1}"#).is_err());
        assert!(serde_json::from_str::<TargetSpec>(r#"{"host":"-x"}"#).is_err());
        assert!(serde_json::from_str::<TargetSpec>(r#"{"port":2222}"#).unwrap().0.port == Some(2222));
    }
}
