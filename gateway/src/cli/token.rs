//! `gateway token`: a JWT signed with a socket's configured HS* secret, for
//! development and tests.

use super::Failure;
use gateway::config::Config;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Reads `1h`, `30m`, `90s`, `2d` or a number of seconds.
pub(super) fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit, such as 1h, 30m, 90s or 2d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        other => return Err(format!("{other:?}: use s, m, h or d")),
    };
    if secs == 0 {
        return Err("the time to live must be more than 0".into());
    }
    Ok(Duration::from_secs(secs))
}

/// Reads `name=value`; the value as JSON if it parses (`admin=true`,
/// `n=3`, `topics=["a"]`), else as a string.
pub(super) fn parse_claim(s: &str) -> Result<(String, Value), String> {
    let (name, value) = s
        .split_once('=')
        .filter(|(n, _)| !n.is_empty())
        .ok_or_else(|| format!("{s:?}: expected name=value"))?;
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    Ok((name.to_owned(), value))
}

/// The token for `sub`, valid for `ttl`, with `claims`, signed for the
/// socket at `socket` (the first with an HS* secret when `None`).
pub(super) fn mint(
    config: &Config,
    socket: Option<&str>,
    sub: &str,
    ttl: Duration,
    claims: Vec<(String, Value)>,
) -> Result<String, Failure> {
    let hs = |s: &&gateway::config::SocketSection| {
        s.jwt
            .as_ref()
            .is_some_and(|j| j.algorithm.to_ascii_uppercase().starts_with("HS"))
    };
    let section = match socket {
        Some(path) => config
            .sockets
            .iter()
            .find(|s| s.path.trim_end_matches('/') == path.trim_end_matches('/'))
            .ok_or_else(|| Failure::Usage(format!("no [[socket]] at {path}")))?,
        None => config.sockets.iter().find(hs).ok_or_else(|| {
            Failure::Usage("no [[socket]] has an HS256/384/512 [socket.jwt]".into())
        })?,
    };
    let jwt = section
        .jwt
        .as_ref()
        .filter(|_| hs(&section))
        .ok_or_else(|| {
            Failure::Usage(format!(
                "the socket at {} has no HS256/384/512 [socket.jwt]: only shared secrets can be used here",
                section.path
            ))
        })?;
    let algorithm = match jwt.algorithm.to_ascii_uppercase().as_str() {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        other => return Err(Failure::Usage(format!("algorithm {other} is not HS*"))),
    };
    let secret = jwt
        .secret
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            Failure::Usage(format!(
                "the socket at {} has no secret (set GATEWAY_JWT_SECRET)",
                section.path
            ))
        })?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut body = Map::new();
    body.insert("sub".into(), Value::String(sub.to_owned()));
    body.insert("iat".into(), now.into());
    body.insert("exp".into(), now.saturating_add(ttl.as_secs()).into());
    if let Some(iss) = &jwt.issuer {
        body.insert("iss".into(), Value::String(iss.clone()));
    }
    if let Some(aud) = &jwt.audience {
        body.insert("aud".into(), Value::String(aud.clone()));
    }
    for (name, value) in claims {
        body.insert(name, value);
    }
    jsonwebtoken::encode(
        &Header::new(algorithm),
        &body,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| Failure::Usage(format!("cannot sign: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_and_claims_parse() {
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("h").is_err());
        assert_eq!(
            parse_claim("admin=true"),
            Ok(("admin".into(), Value::Bool(true)))
        );
        assert_eq!(
            parse_claim("name=ann"),
            Ok(("name".into(), Value::String("ann".into())))
        );
        assert!(parse_claim("=x").is_err());
        assert!(parse_claim("x").is_err());
    }
}
