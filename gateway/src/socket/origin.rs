//! `check_origin`, as Phoenix does it: off, or a list of allowed origins
//! whose scheme, host and port are compared when given; `//*.example.com`
//! allows `example.com` and all its subdomains.

/// One allowed origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginRule {
    scheme: Option<String>,
    /// Lowercase; a leading `*.` allows subdomains.
    host: String,
    port: Option<u16>,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// Splits `scheme://host:port` (scheme optional as `//host`) into parts.
fn split(s: &str) -> Option<(Option<String>, String, Option<u16>)> {
    let (scheme, rest) = match s.split_once("://") {
        Some((scheme, rest)) => (Some(scheme.to_ascii_lowercase()), rest),
        None => (None, s.strip_prefix("//").unwrap_or(s)),
    };
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() {
        return None;
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
            (h, Some(p.parse().ok()?))
        }
        _ => (authority, None),
    };
    if host.is_empty() {
        return None;
    }
    let port = port.or_else(|| scheme.as_deref().and_then(default_port));
    Some((scheme, host.to_ascii_lowercase(), port))
}

impl OriginRule {
    /// Parses `https://example.com`, `//example.com:8080` or `//*.example.com`.
    ///
    /// # Errors
    /// When the entry has no host or a bad port.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (scheme, host, port) =
            split(s.trim()).ok_or_else(|| format!("invalid origin {s:?}"))?;
        Ok(OriginRule { scheme, host, port })
    }

    fn allows(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        let scheme_ok = self.scheme.as_deref().is_none_or(|s| s == scheme);
        let port_ok = self.port.is_none() || self.port == port;
        let host_ok = match self.host.strip_prefix("*.") {
            Some(base) => host == base || host.ends_with(&format!(".{base}")),
            None => host == self.host,
        };
        scheme_ok && port_ok && host_ok
    }
}

/// Which browser origins may open connections.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CheckOrigin {
    /// Any origin (the default; set a list in production).
    #[default]
    Off,
    /// Only these origins. Requests without an `Origin` header (non-browser
    /// clients) are allowed, as in Phoenix.
    Allow(Vec<OriginRule>),
}

impl CheckOrigin {
    /// Whether a request with this `Origin` header may connect.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        let CheckOrigin::Allow(rules) = self else {
            return true;
        };
        let Some(origin) = origin else { return true };
        let Some((Some(scheme), host, port)) = split(origin) else {
            return false; // "null", file://, garbage
        };
        rules.iter().any(|r| r.allows(&scheme, &host, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(rules: &[&str]) -> CheckOrigin {
        CheckOrigin::Allow(
            rules
                .iter()
                .map(|r| OriginRule::parse(r).unwrap())
                .collect(),
        )
    }

    #[test]
    fn phoenix_semantics() {
        let c = list(&["https://example.com", "//another.com:888", "//*.other.com"]);
        assert!(c.allows(None));
        assert!(c.allows(Some("https://example.com")));
        assert!(c.allows(Some("https://example.com:443")));
        assert!(!c.allows(Some("http://example.com")));
        assert!(!c.allows(Some("https://example.com:8443")));
        assert!(c.allows(Some("http://another.com:888")));
        assert!(!c.allows(Some("http://another.com")));
        assert!(c.allows(Some("https://other.com")));
        assert!(c.allows(Some("https://a.b.other.com")));
        assert!(!c.allows(Some("https://evilother.com")));
        assert!(!c.allows(Some("null")));
        assert!(!c.allows(Some("https://evil.example")));
        assert!(CheckOrigin::Off.allows(Some("null")));
    }

    #[test]
    fn bad_rules() {
        assert!(OriginRule::parse("https://").is_err());
        assert!(OriginRule::parse("//host:notaport").is_err());
    }
}
