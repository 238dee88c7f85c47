//! The `gateway` binary's config (`config/`): TOML parsing, then
//! `validate()`, on arbitrary text.
//!
//! Checks:
//! - neither panics, whatever the text (public key files are pointed at
//!   the keys in fuzz/keys/ rather than at whatever path the text names);
//! - what parses serializes to TOML that parses to the same config (a
//!   fixpoint) and validates the same way, error for error;
//! - lowering `max_connections` to an fd limit never breaks validation of
//!   a config that validated;
//! - what validates can run: each socket's token verifier verifies a token
//!   (the `exp`/`nbf` arithmetic with its leeway) without panicking.
#![no_main]

use gateway::config::Config;
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut config) = Config::parse(text, "fuzz") else {
        return;
    };
    for (i, s) in config.sockets.iter_mut().enumerate() {
        if let Some(jwt) = s.jwt.as_mut().filter(|j| j.public_key_file.is_some()) {
            let key = ["rsa.pem", "ec.pem", "ed.pem", "missing.pem"][i % 4];
            jwt.public_key_file =
                Some(PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/keys")).join(key));
        }
    }
    let validated = config.validate();

    if let Ok(written) = toml::to_string(&config) {
        let again = Config::parse(&written, "fuzz").expect("a written config parses");
        assert_eq!(
            toml::to_string(&again).ok().as_deref(),
            Some(written.as_str()),
            "not a fixpoint"
        );
        let revalidated = again.validate();
        assert_eq!(
            validated.as_ref().map(|_| ()).map_err(ToString::to_string),
            revalidated
                .as_ref()
                .map(|_| ())
                .map_err(ToString::to_string),
            "validates differently once written"
        );
    }

    let Ok(settings) = validated else { return };
    for open_files in [0, 1, 64, 1024, 1 << 20] {
        let mut lowered = config.clone();
        lowered.fit_to_fd_limit(open_files);
        if let Err(e) = lowered.validate() {
            panic!("valid config invalid once fit to {open_files} files: {e}");
        }
    }
    for (s, section) in settings.sockets.iter().zip(&config.sockets) {
        let (Some(v), Some(jwt)) = (&s.auth.verifier, &section.jwt) else {
            continue;
        };
        // A token this socket accepts, so its time checks run.
        let Ok(alg) = jwt
            .algorithm
            .to_ascii_uppercase()
            .parse::<jsonwebtoken::Algorithm>()
        else {
            continue;
        };
        let secret = jwt.secret.as_deref().unwrap_or("");
        let claims = serde_json::json!({
            "sub": "1", "exp": 4_000_000_000u64, "nbf": 1, "iss": jwt.issuer, "aud": jwt.audience,
        });
        if let Ok(token) = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(alg),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        ) {
            let _ = v.verify(&token);
        }
    }
});
