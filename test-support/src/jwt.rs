//! Tokens for the tests: HS256 with the shared test secret or another,
//! RS256/ES256 with keypairs the `openssl` CLI makes, and hand-crafted
//! unsigned (`alg: none`) ones; and the clock they are checked against.

use crate::temp::TempDir;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The HS256 secret of test configs and of gateway processes.
pub const SECRET: &str = "test-secret-0123456789abcdef0123456789";

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The instant a JWT `exp` (seconds) stands for.
pub fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// A JWT signed with `alg` and `key`.
pub fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

/// An HS256 JWT signed with `secret`.
pub fn hs256_with(secret: &str, claims: &Value) -> String {
    let key = EncodingKey::from_secret(secret.as_bytes());
    sign(Algorithm::HS256, &key, claims)
}

/// An HS256 JWT signed with [`SECRET`].
pub fn hs256(claims: &Value) -> String {
    hs256_with(SECRET, claims)
}

/// An HS256 token for `sub`, valid for an hour, signed with [`SECRET`].
pub fn token(sub: &str) -> String {
    hs256(&json!({"sub": sub, "exp": now() + 3600}))
}

/// An unsigned `alg: none` JWT, crafted by hand.
pub fn alg_none(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.")
}

/// Key types the `openssl` CLI makes for the tests.
#[derive(Clone, Copy, Debug)]
pub enum KeyKind {
    /// RSA 2048 for RS256.
    Rsa,
    /// P-256 for ES256.
    Ec,
}

/// A private key to sign with and the PEM file of its public key.
#[allow(missing_debug_implementations)] // EncodingKey has no Debug
pub struct KeyPair {
    pub private: EncodingKey,
    pub public_pem: PathBuf,
}

fn openssl(args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("the openssl CLI is needed to make test keys: {e}"));
    {
        let mut input = child.stdin.take().unwrap();
        if let Some(data) = stdin {
            input.write_all(data).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Generates a PKCS#8 private key and its SPKI public key in `dir`.
pub fn keypair(dir: &TempDir, name: &str, kind: KeyKind) -> KeyPair {
    let private_pem = match kind {
        KeyKind::Rsa => openssl(
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ],
            None,
        ),
        KeyKind::Ec => {
            let sec1 = openssl(
                &["ecparam", "-genkey", "-name", "prime256v1", "-noout"],
                None,
            );
            openssl(&["pkcs8", "-topk8", "-nocrypt"], Some(&sec1))
        }
    };
    let private_path = dir.write(&format!("{name}.key.pem"), &private_pem);
    let public_pem = openssl(
        &["pkey", "-pubout", "-in", private_path.to_str().unwrap()],
        None,
    );
    let public_pem = dir.write(&format!("{name}.pub.pem"), public_pem);
    let private = match kind {
        KeyKind::Rsa => EncodingKey::from_rsa_pem(&private_pem).unwrap(),
        KeyKind::Ec => EncodingKey::from_ec_pem(&private_pem).unwrap(),
    };
    KeyPair {
        private,
        public_pem,
    }
}
