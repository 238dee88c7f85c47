//! Connect-time JWT authentication: tokens verified with HS*, RS* or ES*,
//! whose claims become the socket assigns, and the [`SocketHandler`] that
//! admits a socket's connections by them.
//!
//! It takes its settings as plain values ([`JwtSettings`], [`SocketAuth`])
//! and knows nothing of the config file: reading key files and naming the
//! config key at fault is the config's job.

use crate::protocol::Payload;
use crate::socket::{Assigns, ConnectError, ConnectInfo, Params, SocketHandler};
use async_trait::async_trait;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::Validation;
use serde_json::Value;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use jsonwebtoken::{Algorithm, DecodingKey};

/// The largest leeway on `exp` and `nbf`. jsonwebtoken subtracts the leeway
/// from the current time in u64 seconds: a leeway past the epoch panicked
/// there (debug builds) or made every token expired (release).
pub const MAX_LEEWAY: Duration = Duration::from_secs(86_400);

/// How one socket's tokens are verified.
#[derive(Clone)]
pub struct JwtSettings {
    /// The only `alg` accepted; `none` never is.
    pub algorithm: Algorithm,
    /// The HS* secret or the RS*/ES* public key.
    pub key: DecodingKey,
    /// Clock skew allowed on `exp` and `nbf`; at most [`MAX_LEEWAY`].
    pub leeway: Duration,
    /// Required `iss`, if any.
    pub issuer: Option<String>,
    /// Required `aud`, if any.
    pub audience: Option<String>,
}

impl fmt::Debug for JwtSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSettings")
            .field("algorithm", &self.algorithm)
            .field("leeway", &self.leeway)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// Verifies tokens for one socket.
#[derive(Clone)]
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
    /// A verifier with these settings.
    pub fn new(settings: JwtSettings) -> Self {
        let leeway = settings.leeway.min(MAX_LEEWAY);
        let mut validation = Validation::new(settings.algorithm);
        validation.leeway = leeway.as_secs();
        validation.validate_nbf = true;
        validation.required_spec_claims.clear();
        validation.validate_aud = settings.audience.is_some();
        // A required `iss` or `aud` must be there: jsonwebtoken only checks
        // those present (and of its types), so without these a token with
        // no `aud`, or `"aud": false`, passed an audience check.
        if let Some(aud) = &settings.audience {
            validation.set_audience(&[aud]);
            validation.required_spec_claims.insert("aud".into());
        }
        if let Some(iss) = &settings.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        TokenVerifier {
            key: settings.key,
            validation,
            leeway,
        }
    }

    /// The token's claims, if it is valid now.
    ///
    /// # Errors
    /// Why not: expired, not yet valid, claims not accepted, or invalid.
    pub fn verify(&self, token: &str) -> Result<Assigns, TokenError> {
        let invalid = TokenError::invalid;
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
            // Nor an `nbf` beyond u64 seconds: `1e30` passed as valid now.
            Ok(data)
                if data
                    .claims
                    .get("nbf")
                    .and_then(numeric_date)
                    .is_some_and(|nbf| nbf > now_secs() + self.leeway.as_secs_f64()) =>
            {
                Err(TokenError::NOT_YET_VALID)
            }
            Ok(data) => Ok(data.claims),
            Err(e) => Err(match e.kind() {
                ErrorKind::ExpiredSignature => TokenError {
                    label: "expired",
                    message: "token expired",
                },
                ErrorKind::ImmatureSignature => TokenError::NOT_YET_VALID,
                ErrorKind::InvalidSignature => invalid("bad token signature"),
                ErrorKind::InvalidAlgorithm => invalid("token algorithm not accepted"),
                ErrorKind::InvalidAudience => TokenError::claims("token audience not accepted"),
                ErrorKind::InvalidIssuer => TokenError::claims("token issuer not accepted"),
                ErrorKind::MissingRequiredClaim(c) if c == "aud" => {
                    TokenError::claims("token audience not accepted")
                }
                ErrorKind::MissingRequiredClaim(c) if c == "iss" => {
                    TokenError::claims("token issuer not accepted")
                }
                _ => invalid("invalid token"),
            }),
        }
    }
}

/// Why a token was refused: a sentence for logs and replies, and the
/// `reason` label of `gateway_auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenError {
    /// `missing_token`, `invalid_token`, `expired`, `not_yet_valid` or `claims`.
    pub label: &'static str,
    /// What went wrong, in words.
    pub message: &'static str,
}

/// The labels a [`TokenError`] may carry.
const TOKEN_ERROR_LABELS: [&str; 5] = [
    "missing_token",
    "invalid_token",
    "expired",
    "not_yet_valid",
    "claims",
];

impl TokenError {
    const NOT_YET_VALID: TokenError = TokenError {
        label: "not_yet_valid",
        message: "token not yet valid",
    };

    fn invalid(message: &'static str) -> Self {
        TokenError {
            label: "invalid_token",
            message,
        }
    }

    fn claims(message: &'static str) -> Self {
        TokenError {
            label: "claims",
            message,
        }
    }
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message)
    }
}

/// Whether a claim is a NumericDate: seconds since the epoch, possibly
/// fractional (RFC 7519 §2).
fn numeric_date(v: &Value) -> Option<f64> {
    v.as_f64().filter(|n| n.is_finite() && *n >= 0.0)
}

/// Seconds since the epoch, now.
fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
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

/// Who one socket admits: the settings of its [`TokenSocket`].
#[derive(Debug, Clone)]
pub struct SocketAuth {
    /// Verifies tokens; without one, any token is refused (and only
    /// anonymous connections are possible).
    pub verifier: Option<TokenVerifier>,
    /// Refuse connections without a valid token.
    pub require_token: bool,
    /// The connect param that carries the token (beside phoenix.js'
    /// `authToken`, always accepted).
    pub token_param: String,
    /// Socket id template such as `users_socket:{sub}`.
    pub socket_id: Option<String>,
    /// Claims a token must carry with exactly these values.
    pub require_claims: Assigns,
}

/// The socket handler of a socket whose connections authenticate with JWTs.
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
    /// The handler of the socket at `path`; registers its metrics labels.
    pub fn new(path: &str, auth: SocketAuth) -> Self {
        if let Some(template) = &auth.socket_id {
            crate::metrics::register_pattern(template);
        }
        let path = path.trim_end_matches('/').to_owned();
        crate::metrics::metrics().init_auth(&path, &TOKEN_ERROR_LABELS);
        TokenSocket {
            verifier: auth.verifier,
            require_token: auth.require_token,
            token_param: auth.token_param,
            socket_id: auth.socket_id,
            require_claims: auth.require_claims,
            path,
        }
    }

    /// The claims of a valid token; a refusal is counted in the metrics.
    fn check(&self, token: &str) -> Result<Assigns, &'static str> {
        self.verify(token).map_err(|r| self.refused(r))
    }

    fn verify(&self, token: &str) -> Result<Assigns, TokenError> {
        let verifier = self
            .verifier
            .as_ref()
            .ok_or(TokenError::invalid("tokens are not enabled on this socket"))?;
        let claims = verifier.verify(token)?;
        for (k, want) in &self.require_claims {
            if claims.get(k) != Some(want) {
                return Err(TokenError::claims("token lacks a required claim"));
            }
        }
        Ok(claims)
    }

    fn refused(&self, r: TokenError) -> &'static str {
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
            None if self.require_token => Err(ConnectError::forbidden(self.refused(TokenError {
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

    /// Found by the `jwt` fuzz target: with `audience`/`issuer` set, a token
    /// without the claim, or with one of another type, was accepted.
    #[test]
    fn required_claims_and_not_before_are_enforced() {
        let verifier = TokenVerifier::new(JwtSettings {
            algorithm: Algorithm::HS256,
            key: DecodingKey::from_secret(b"k"),
            leeway: Duration::from_secs(5),
            issuer: Some("me".into()),
            audience: Some("gw".into()),
        });
        let token = |claims: Value| {
            jsonwebtoken::encode(
                &jsonwebtoken::Header::default(),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(b"k"),
            )
            .unwrap()
        };
        let ok = verifier.verify(&token(json!({"sub": "1", "iss": "me", "aud": "gw"})));
        assert!(ok.is_ok(), "{ok:?}");
        let ok = verifier.verify(&token(json!({"sub": "1", "iss": "me", "aud": ["x", "gw"]})));
        assert!(ok.is_ok(), "{ok:?}");
        for claims in [
            json!({"sub": "1", "iss": "me"}),
            json!({"sub": "1", "iss": "me", "aud": false}),
            json!({"sub": "1", "iss": "me", "aud": "other"}),
            json!({"sub": "1", "aud": "gw"}),
            json!({"sub": "1", "iss": 7, "aud": "gw"}),
            json!({"sub": "1", "iss": "you", "aud": "gw"}),
        ] {
            let err = verifier.verify(&token(claims.clone())).unwrap_err();
            assert_eq!(err.label, "claims", "{claims}: {err}");
        }
        // A leeway past the epoch is capped: jsonwebtoken's `now - leeway`
        // panicked (debug) or expired every token (release).
        let lenient = TokenVerifier::new(JwtSettings {
            algorithm: Algorithm::HS256,
            key: DecodingKey::from_secret(b"k"),
            leeway: Duration::from_secs(u64::MAX),
            issuer: None,
            audience: None,
        });
        assert!(lenient
            .verify(&token(json!({"exp": 4_000_000_000u64})))
            .is_ok());
        let err = lenient.verify(&token(json!({"exp": 1}))).unwrap_err();
        assert_eq!(err.label, "expired");
        // Found by the same target: an `nbf` beyond u64 seconds, which
        // jsonwebtoken does not read, made a not-yet-valid token valid.
        for nbf in [json!(1e30), json!(4_000_000_000u64)] {
            let claims = json!({"sub": "1", "iss": "me", "aud": "gw", "nbf": nbf});
            let err = verifier.verify(&token(claims.clone())).unwrap_err();
            assert_eq!(err.label, "not_yet_valid", "{claims}: {err}");
        }
    }
}
