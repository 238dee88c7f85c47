//! The long-poll session token: which pod owns the session, which session,
//! and how many of its messages the client has received, signed with
//! HMAC-SHA256 so any pod that shares the secret can trust it and nobody
//! else can forge or alter it.
//!
//! Format: `base64url("v1.{node}.{session:032x}.{ack}") "." base64url(mac)`.
//! phoenix.js treats the token as opaque and echoes the last one it got, so
//! the `ack` it carries tells the owner which buffered messages arrived.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;

/// What a valid token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SessionToken {
    /// The owning pod's id.
    pub(crate) node: String,
    /// The session, unique on its pod.
    pub(crate) session: u128,
    /// How many messages of the session the client has received.
    pub(crate) ack: u64,
}

/// Signs and verifies tokens with one secret.
#[derive(Clone)]
pub(crate) struct Signer {
    key: hmac::Key,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

/// Longest token accepted, so a huge query parameter costs nothing.
const MAX_TOKEN: usize = 512;

impl Signer {
    /// A signer for `secret` (any length; HMAC hashes long keys).
    pub(crate) fn new(secret: &[u8]) -> Self {
        Signer {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// The token for `t`.
    pub(crate) fn sign(&self, t: &SessionToken) -> String {
        let body = URL_SAFE_NO_PAD.encode(format!("v1.{}.{:032x}.{}", t.node, t.session, t.ack));
        let mac = URL_SAFE_NO_PAD.encode(hmac::sign(&self.key, body.as_bytes()).as_ref());
        format!("{body}.{mac}")
    }

    /// What `token` says, if this secret signed it.
    pub(crate) fn verify(&self, token: &str) -> Option<SessionToken> {
        if token.len() > MAX_TOKEN {
            return None;
        }
        let (body, mac) = token.split_once('.')?;
        let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
        hmac::verify(&self.key, body.as_bytes(), &mac).ok()?;
        let text = String::from_utf8(URL_SAFE_NO_PAD.decode(body).ok()?).ok()?;
        let mut parts = text.split('.');
        if parts.next()? != "v1" {
            return None;
        }
        let node = parts.next()?.to_owned();
        let session = u128::from_str_radix(parts.next()?, 16).ok()?;
        let ack = parts.next()?.parse().ok()?;
        if parts.next().is_some() || node.is_empty() {
            return None;
        }
        Some(SessionToken { node, session, ack })
    }

    /// A MAC over `data`, hex, for pod-to-pod relay messages.
    pub(crate) fn mac(&self, data: &[u8]) -> String {
        hex(hmac::sign(&self.key, data).as_ref())
    }

    /// Whether `mac` (hex) is the MAC of `data`, in constant time.
    pub(crate) fn check_mac(&self, data: &[u8], mac: &str) -> bool {
        match unhex(mac) {
            Some(m) => hmac::verify(&self.key, data, &m).is_ok(),
            None => false,
        }
    }
}

/// Whether `token` has the shape of a session token, whoever signed it:
/// its first part decodes to `v1.…`. A JWT's decodes to `{…`.
pub(crate) fn is_session_token(token: &str) -> bool {
    token.len() <= MAX_TOKEN
        && token
            .split_once('.')
            .and_then(|(body, _)| URL_SAFE_NO_PAD.decode(body).ok())
            .is_some_and(|text| text.starts_with(b"v1."))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    // Hex digits only: `from_str_radix` also takes a sign, so "+f" read as
    // "0f" and a MAC had several spellings (found by the fuzz target).
    if s.len() % 2 != 0 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// `n` random bytes from the system's secure generator.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut buf = [0u8; N];
    if ring::rand::SystemRandom::new().fill(&mut buf).is_err() {
        // The OS generator does not fail on supported systems; fall back to
        // per-process random hashing rather than abort a request.
        use std::hash::{BuildHasher, RandomState};
        for (i, chunk) in buf.chunks_mut(8).enumerate() {
            let v = RandomState::new().hash_one((i, std::time::SystemTime::now()));
            chunk.copy_from_slice(&v.to_le_bytes()[..chunk.len()]);
        }
    }
    buf
}

/// A fresh random id.
pub(crate) fn random_u128() -> u128 {
    u128::from_le_bytes(random_bytes::<16>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> SessionToken {
        SessionToken {
            node: "3f2a".into(),
            session: 0xdead_beef,
            ack: 7,
        }
    }

    #[test]
    fn round_trip() {
        let s = Signer::new(b"k");
        let tok = s.sign(&t());
        assert_eq!(s.verify(&tok), Some(t()));
        assert!(!tok.contains(['+', '/', '=', '&']), "{tok}");
    }

    #[test]
    fn refuses_forged_tampered_and_foreign_tokens() {
        let s = Signer::new(b"k");
        let tok = s.sign(&t());
        assert_eq!(Signer::new(b"other").verify(&tok), None);
        let (body, mac) = tok.split_once('.').unwrap();
        let forged_body = URL_SAFE_NO_PAD.encode("v1.3f2a.00000000000000000000000000000001.7");
        assert_eq!(s.verify(&format!("{forged_body}.{mac}")), None);
        let mut bad_mac = mac.to_owned();
        bad_mac.replace_range(0..1, if mac.starts_with('A') { "B" } else { "A" });
        assert_eq!(s.verify(&format!("{body}.{bad_mac}")), None);
        for garbage in ["", ".", "garbage", "a.b.c", &"x".repeat(4096)] {
            assert_eq!(s.verify(garbage), None, "{garbage}");
        }
    }

    #[test]
    fn session_tokens_are_told_from_jwts_whoever_signed_them() {
        assert!(is_session_token(&Signer::new(b"other").sign(&t())));
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln";
        for not in [jwt, "", "garbage", "a.b", &"x".repeat(4096)] {
            assert!(!is_session_token(not), "{not}");
        }
    }

    #[test]
    fn relay_macs() {
        let s = Signer::new(b"k");
        let m = s.mac(b"hello");
        assert!(s.check_mac(b"hello", &m));
        assert!(!s.check_mac(b"hellO", &m));
        assert!(!s.check_mac(b"hello", "zz"));
        assert!(s.check_mac(b"hello", &m.to_ascii_uppercase()));
        // A sign is not a hex digit: "+f" must not stand for "0f".
        let zero_led = (0u32..)
            .map(|i| i.to_string())
            .find(|d| s.mac(d.as_bytes()).starts_with('0'))
            .unwrap();
        let mac = s.mac(zero_led.as_bytes());
        assert!(!s.check_mac(zero_led.as_bytes(), &format!("+{}", &mac[1..])));
        assert!(!Signer::new(b"j").check_mac(b"hello", &m));
    }
}
