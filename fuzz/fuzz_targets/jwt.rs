//! JWT verification (`auth.rs`, `TokenVerifier`) and claim templates
//! (`socket_id = "users_socket:{sub}"`, `user:{sub}` topic patterns).
//!
//! Input: a recipe: verifier settings, claims (often `exp`, `nbf`, `iss`,
//! `aud`, `sub`), whether to tamper with the signed token, and a template.
//!
//! Checks:
//! - an untampered token we signed verifies exactly when RFC 7519 and the
//!   settings say it should: claims present, `exp`/`nbf` NumericDates with
//!   `exp` not past and `nbf` not future (beyond the leeway), the required
//!   `iss` and `aud` present and equal; and then to exactly its claims;
//! - a token changed anywhere, or signed with another key or algorithm,
//!   never verifies; arbitrary strings never do;
//! - templates render as a plain reference renderer does, and a rendered
//!   socket id matches the template read as a topic pattern.
#![no_main]

use arbitrary::Unstructured;
use gateway::auth::{Algorithm, DecodingKey, JwtSettings, TokenVerifier};
use gateway::channel::TopicPattern;
use gateway::fuzzing::{claim_str, render};
use gateway_fuzz::{json, word};
use jsonwebtoken::{EncodingKey, Header};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SECRET: &[u8] = b"fuzz-jwt-secret";

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let _ = run(&mut u);
});

fn run(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    let algorithm = *u.choose(&[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512])?;
    let leeway = *u.choose(&[0u64, 5, 60, 3600])?;
    let issuer = u.arbitrary::<bool>()?.then(|| "issuer-a".to_owned());
    let audience = u.arbitrary::<bool>()?.then(|| "aud-a".to_owned());
    let verifier = TokenVerifier::new(JwtSettings {
        algorithm,
        key: DecodingKey::from_secret(SECRET),
        leeway: Duration::from_secs(leeway),
        issuer: issuer.clone(),
        audience: audience.clone(),
    });

    let mut claims = Map::new();
    for _ in 0..u.int_in_range(0..=6)? {
        let key = u
            .choose(&["sub", "exp", "nbf", "iss", "aud", "team", "x"])?
            .to_string();
        let value = match key.as_str() {
            "exp" | "nbf" => time(u, now)?,
            "iss" | "aud" => match u.int_in_range(0..=3)? {
                0 => Value::from(if key == "iss" { "issuer-a" } else { "aud-a" }),
                1 => Value::from("other"),
                2 => Value::from(vec![
                    Value::from("other"),
                    Value::from("aud-a"),
                    Value::from("issuer-a"),
                ]),
                _ => json(u, 1)?,
            },
            _ => json(u, 2)?,
        };
        claims.insert(key, value);
    }
    // Signed with this verifier's algorithm and key, or not.
    let (sign_alg, key) = match u.int_in_range(0..=7)? {
        0 => (Algorithm::HS256, &b"another-key"[..]),
        1 => (
            *u.choose(&[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512])?,
            SECRET,
        ),
        _ => (algorithm, SECRET),
    };
    let token = jsonwebtoken::encode(
        &Header::new(sign_alg),
        &claims,
        &EncodingKey::from_secret(key),
    )
    .unwrap();
    let result = verifier.verify(&token);
    let ours = sign_alg == algorithm && key == SECRET;
    if !ours {
        assert!(
            result.is_err(),
            "a token of another key or algorithm verifies"
        );
    } else if let Some(want) = expected(&claims, now, leeway, &issuer, &audience) {
        match &result {
            // As the token's JSON reads back (serde_json's float parsing
            // may differ from the value written in the last digit).
            Ok(got) => {
                let signed: Map<String, Value> =
                    serde_json::from_str(&serde_json::to_string(&claims).unwrap()).unwrap();
                assert!(
                    want && *got == signed,
                    "verified to {got:?}, signed {claims:?}"
                )
            }
            Err(e) => assert!(!want, "refused ({e}) a valid token: {claims:?} at {now}"),
        }
    }

    // Any change to the token's text.
    let mut bytes = token.clone().into_bytes();
    let at = u.choose_index(bytes.len())?;
    match u.int_in_range(0..=2)? {
        0 => bytes[at] = u.arbitrary()?,
        1 => bytes.truncate(at),
        _ => bytes.insert(at, u.arbitrary()?),
    }
    let changed = String::from_utf8_lossy(&bytes);
    if changed != token {
        assert!(
            verifier.verify(&changed).is_err(),
            "a changed token verifies: {changed}"
        );
    }
    let junk: String = u.arbitrary()?;
    assert!(verifier.verify(&junk).is_err());

    templates(u, &claims)
}

/// A time claim: near now, far, fractional, negative, or not a number.
fn time(u: &mut Unstructured<'_>, now: f64) -> arbitrary::Result<Value> {
    let delta = *u.choose(&[-86_400.0, -3_600.0, -100.0, 100.0, 3_600.0, 1e9])?;
    Ok(match u.int_in_range(0..=4)? {
        0 => Value::from((now + delta) as i64),
        1 => Value::from(now + delta + 0.25),
        2 => Value::from(u.arbitrary::<i64>()?),
        3 => Value::from(u.arbitrary::<f64>()?),
        _ => json(u, 1)?,
    })
}

/// Whether the token should verify, or `None` when the times sit too close
/// to now to say.
fn expected(
    c: &Map<String, Value>,
    now: f64,
    leeway: u64,
    iss: &Option<String>,
    aud: &Option<String>,
) -> Option<bool> {
    // jsonwebtoken refuses a token whose `sub`, `iss` or `aud` is an array
    // or object it cannot read (RFC 7519 wants strings, `aud` a list of
    // them), or accepts it when nothing checks that claim: either is fine.
    let readable = |k: &str, list: bool| match c.get(k) {
        None | Some(Value::String(_) | Value::Number(_) | Value::Bool(_) | Value::Null) => true,
        Some(Value::Array(a)) => list && a.iter().all(Value::is_string),
        Some(Value::Object(_)) => false,
    };
    if !readable("sub", false) || !readable("iss", true) || !readable("aud", true) {
        return None;
    }
    let leeway = leeway as f64;
    let date = |k: &str| {
        c.get(k)
            .map(|v| v.as_f64().filter(|n| n.is_finite() && *n >= 0.0))
    };
    let mut ok = !c.is_empty();
    match date("exp") {
        Some(None) => ok = false,
        Some(Some(exp)) if (exp - (now - leeway)).abs() < 5.0 => return None,
        Some(Some(exp)) => ok &= exp >= now - leeway,
        None => {}
    }
    match date("nbf") {
        Some(None) => ok = false,
        Some(Some(nbf)) if (nbf - (now + leeway)).abs() < 5.0 => return None,
        Some(Some(nbf)) => ok &= nbf <= now + leeway,
        None => {}
    }
    let names = |k: &str, want: &str| match c.get(k) {
        Some(Value::String(s)) => s == want,
        Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(want)),
        _ => false,
    };
    if let Some(want) = iss {
        ok &= names("iss", want);
    }
    if let Some(want) = aud {
        ok &= names("aud", want);
    }
    Some(ok)
}

fn templates(u: &mut Unstructured<'_>, claims: &Map<String, Value>) -> arbitrary::Result<()> {
    let mut template = String::new();
    for _ in 0..u.int_in_range(0..=5)? {
        match u.int_in_range(0..=3)? {
            0 => template.push_str(&format!(
                "{{{}}}",
                u.choose(&["sub", "team", "x", "exp", "nope"])?
            )),
            1 => template.push_str(u.choose(&[":", "users_socket:", "-", "{", "}"])?),
            _ => template.push_str(&word(u)?),
        }
    }
    let got = render(&template, claims);
    assert_eq!(
        got,
        reference_render(&template, claims),
        "template {template:?}"
    );
    // A socket id (or a `user:{sub}` topic) built from claims is matched by
    // its template read as a pattern, when every value fits a placeholder.
    if let (Some(id), Ok(pattern)) = (&got, TopicPattern::parse(&template)) {
        let fits = pattern.placeholders().all(|p| {
            claims
                .get(p)
                .and_then(claim_str)
                .is_some_and(|v| !v.is_empty() && !v.contains(':'))
        });
        if fits && !template.ends_with('*') {
            assert!(
                pattern.matches(id),
                "{template:?} rendered {id:?}, which it does not match"
            );
        }
    }
    Ok(())
}

fn reference_render(template: &str, claims: &Map<String, Value>) -> Option<String> {
    let mut out = String::new();
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '{' {
            out.push(c);
            continue;
        }
        let mut name = String::new();
        loop {
            match chars.next()? {
                '}' => break,
                c => name.push(c),
            }
        }
        out.push_str(&match claims.get(&name)? {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => return None,
        });
    }
    Some(out)
}
