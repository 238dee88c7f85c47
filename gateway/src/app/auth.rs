//! Connect-time authentication of the `gateway` binary: JWTs verified with
//! HS*, RS* or ES*, whose claims become the socket assigns.

use crate::config::{JwtConfig, SocketSection};
use crate::protocol::Payload;
use crate::socket::{Assigns, ConnectError, ConnectInfo, Params, SocketHandler};
use async_trait::async_trait;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Verifies tokens for one socket.
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
    leeway: Duration,
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl TokenVerifier {
    /// Builds a verifier. Errors carry the `jwt.*` key at fault.
    ///
    /// # Errors
    /// An unknown algorithm, a missing secret or an unreadable key file.
    pub fn from_config(cfg: &JwtConfig) -> Result<Self, (&'static str, String)> {
        let alg: Algorithm = cfg.algorithm.to_ascii_uppercase().parse().map_err(|_| {
            (
                "algorithm",
                format!("{:?} is not a supported algorithm", cfg.algorithm),
            )
        })?;
        let key = match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                let secret = cfg.secret.as_deref().filter(|s| !s.is_empty()).ok_or((
                    "secret",
                    "missing: set jwt.secret or GATEWAY_JWT_SECRET".to_owned(),
                ))?;
                DecodingKey::from_secret(secret.as_bytes())
            }
            _ => {
                let path = cfg.public_key_file.as_ref().ok_or((
                    "public_key_file",
                    format!("missing: {} needs a PEM public key", cfg.algorithm),
                ))?;
                let pem = std::fs::read(path)
                    .map_err(|e| ("public_key_file", format!("{}: {e}", path.display())))?;
                let key = match alg {
                    Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
                    Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                    _ => DecodingKey::from_rsa_pem(&pem),
                };
                key.map_err(|e| ("public_key_file", format!("{}: {e}", path.display())))?
            }
        };
        let mut validation = Validation::new(alg);
        validation.leeway = cfg.leeway_secs;
        validation.validate_nbf = true;
        validation.required_spec_claims.clear();
        validation.validate_aud = cfg.audience.is_some();
        if let Some(aud) = &cfg.audience {
            validation.set_audience(&[aud]);
        }
        if let Some(iss) = &cfg.issuer {
            validation.set_issuer(&[iss]);
        }
        Ok(TokenVerifier {
            key,
            validation,
            leeway: Duration::from_secs(cfg.leeway_secs),
        })
    }

    /// The token's claims, if it is valid now.
    ///
    /// # Errors
    /// Why not: expired, not yet valid, claims not accepted, or invalid.
    pub fn verify(&self, token: &str) -> Result<Assigns, Refusal> {
        let invalid = Refusal::invalid;
        match jsonwebtoken::decode::<Assigns>(token, &self.key, &self.validation) {
            Ok(data) if data.claims.is_empty() => Err(invalid("token has no claims")),
            // jsonwebtoken skips `exp`/`nbf` it cannot parse (strings,
            // negatives): such a token would be accepted and never expire.
            Ok(data)
                if ["exp", "nbf"].iter().any(|c| {
                    data.claims
                        .get(*c)
                        .is_some_and(|v| numeric_date(v).is_none())
                }) =>
            {
                Err(invalid("invalid token time claim"))
            }
            Ok(data) => Ok(data.claims),
            Err(e) => Err(match e.kind() {
                ErrorKind::ExpiredSignature => Refusal {
                    label: "expired",
                    message: "token expired",
                },
                ErrorKind::ImmatureSignature => Refusal {
                    label: "not_yet_valid",
                    message: "token not yet valid",
                },
                ErrorKind::InvalidSignature => invalid("bad token signature"),
                ErrorKind::InvalidAlgorithm => invalid("token algorithm not accepted"),
                ErrorKind::InvalidAudience => Refusal::claims("token audience not accepted"),
                ErrorKind::InvalidIssuer => Refusal::claims("token issuer not accepted"),
                _ => invalid("invalid token"),
            }),
        }
    }
}

/// Why a token was refused: a sentence for logs and replies, and the
/// `reason` label of `gateway_auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// `missing_token`, `invalid_token`, `expired`, `not_yet_valid` or `claims`.
    pub label: &'static str,
    /// What went wrong, in words.
    pub message: &'static str,
}

/// The labels a [`Refusal`] may carry.
const REFUSAL_LABELS: [&str; 5] = [
    "missing_token",
    "invalid_token",
    "expired",
    "not_yet_valid",
    "claims",
];

impl Refusal {
    fn invalid(message: &'static str) -> Self {
        Refusal {
            label: "invalid_token",
            message,
        }
    }

    fn claims(message: &'static str) -> Self {
        Refusal {
            label: "claims",
            message,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message)
    }
}

/// Whether a claim is a NumericDate: seconds since the epoch, possibly
/// fractional (RFC 7519 §2).
fn numeric_date(v: &Value) -> Option<f64> {
    v.as_f64().filter(|n| n.is_finite() && *n >= 0.0)
}

/// A claim as text, for comparison with topic segments and templates.
pub(crate) fn claim_str(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Fills `{claim}` placeholders from the claims; `None` if one is missing.
pub(crate) fn render(template: &str, claims: &Assigns) -> Option<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}')? + open;
        out.push_str(&claim_str(claims.get(&rest[open + 1..close])?)?);
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// The socket handler built from a `[[socket]]` section.
#[derive(Debug)]
pub struct TokenSocket {
    verifier: Option<TokenVerifier>,
    require_token: bool,
    token_param: String,
    socket_id: Option<String>,
    require_claims: Assigns,
    /// The socket's path, the `socket` label of its auth failures.
    path: String,
}

impl TokenSocket {
    /// Builds the handler; the section was validated with the config.
    ///
    /// # Errors
    /// The `jwt.*` key at fault.
    pub fn new(s: &SocketSection) -> Result<Self, (&'static str, String)> {
        let require_claims = match serde_json::to_value(&s.require_claims) {
            Ok(Value::Object(m)) => m,
            _ => Assigns::new(),
        };
        if let Some(template) = &s.socket_id {
            crate::metrics::register_pattern(template);
        }
        let path = s.path.trim_end_matches('/').to_owned();
        crate::metrics::metrics().init_auth(&path, &REFUSAL_LABELS);
        Ok(TokenSocket {
            verifier: s.jwt.as_ref().map(TokenVerifier::from_config).transpose()?,
            require_token: s.require_token,
            token_param: s.token_param.clone(),
            socket_id: s.socket_id.clone(),
            require_claims,
            path,
        })
    }

    /// The claims of a valid token; a refusal is counted in the metrics.
    fn check(&self, token: &str) -> Result<Assigns, &'static str> {
        self.verify(token).map_err(|r| self.refused(r))
    }

    fn verify(&self, token: &str) -> Result<Assigns, Refusal> {
        let verifier = self
            .verifier
            .as_ref()
            .ok_or(Refusal::invalid("tokens are not enabled on this socket"))?;
        let claims = verifier.verify(token)?;
        for (k, want) in &self.require_claims {
            if claims.get(k) != Some(want) {
                return Err(Refusal::claims("token lacks a required claim"));
            }
        }
        Ok(claims)
    }

    fn refused(&self, r: Refusal) -> &'static str {
        crate::metrics::metrics().auth_failure(&self.path, r.label);
        r.message
    }
}

#[async_trait]
impl SocketHandler for TokenSocket {
    async fn connect(&self, params: &Params, info: &ConnectInfo) -> Result<Assigns, ConnectError> {
        let token = info
            .auth_token
            .as_deref()
            .or_else(|| params.get(&self.token_param));
        match token.filter(|t| !t.is_empty()) {
            None if self.require_token => Err(ConnectError::forbidden(self.refused(Refusal {
                label: "missing_token",
                message: "token required",
            }))),
            None => Ok(Assigns::new()),
            // A token that fails verification is refused even where tokens are
            // optional: silently downgrading to anonymous would hide the error.
            Some(t) => self.check(t).map_err(ConnectError::forbidden),
        }
    }

    fn id(&self, assigns: &Assigns) -> Option<String> {
        render(self.socket_id.as_deref()?, assigns)
    }

    fn expires_at(&self, assigns: &Assigns) -> Option<SystemTime> {
        let exp = Duration::try_from_secs_f64(numeric_date(assigns.get("exp")?)?).ok()?;
        let leeway = self.verifier.as_ref().map_or(Duration::ZERO, |v| v.leeway);
        // Beyond what the clock can represent: never expires (and no overflow panic).
        UNIX_EPOCH.checked_add(exp)?.checked_add(leeway)
    }

    fn refresh(&self, payload: &Payload, current: &Assigns) -> Option<Result<Assigns, String>> {
        self.verifier.as_ref()?;
        let Some(Value::String(token)) = payload.get("access_token") else {
            return Some(Err("access_token must be a string".into()));
        };
        Some(match self.check(&token) {
            Err(reason) => Err(reason.into()),
            // The socket id (and its `disconnect` subscription) is fixed at
            // connect, so a refresh may not change it, not even from none.
            Ok(claims) if self.id(&claims) != self.id(current) => {
                Err("token belongs to another socket id".into())
            }
            Ok(claims) => Ok(claims),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_templates() {
        let claims = json!({"sub": 42, "team": "a"})
            .as_object()
            .cloned()
            .unwrap();
        assert_eq!(
            render("users_socket:{sub}", &claims).as_deref(),
            Some("users_socket:42")
        );
        assert_eq!(render("t:{team}:{sub}", &claims).as_deref(), Some("t:a:42"));
        assert_eq!(render("x:{missing}", &claims), None);
        assert_eq!(render("plain", &claims).as_deref(), Some("plain"));
    }
}
