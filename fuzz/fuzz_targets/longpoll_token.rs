//! The long-poll session token and the relay seal
//! (`transport/longpoll/token.rs`, `relay.rs`): what a client echoes back
//! on every request, and what pods read from each other's Redis inboxes.
//!
//! Input: one byte choosing the mode, then its data.
//!
//! Checks:
//! - any string: a token that verifies is exactly the one we would sign for
//!   what it says (nothing verifies that we did not sign);
//! - sign then verify gives back node, session and ack; any change to a
//!   signed token fails, or verifies only as a token we signed; every token
//!   we sign has a session token's shape (so another pod's is answered 410),
//!   and a JWT never has it;
//! - a relay MAC checks only for its own data, and only written as we write it
//!   (hex, any case); a sealed relay message opens to itself, under the
//!   same secret only, and any change to it fails or opens to the same message.
#![no_main]

use arbitrary::Unstructured;
use gateway::fuzzing::{RelayMessage, Signer};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

static OURS: LazyLock<Signer> = LazyLock::new(|| Signer::new(b"fuzz-longpoll-secret"));
static OTHER: LazyLock<Signer> = LazyLock::new(|| Signer::new(b"another-pod's-secret"));

fuzz_target!(|input: &[u8]| {
    let Some((&mode, data)) = input.split_first() else {
        return;
    };
    let mut u = Unstructured::new(data);
    let _ = match mode % 4 {
        0 => Ok(arbitrary_token(data)),
        1 => tampered_token(&mut u),
        2 => macs(&mut u),
        _ => relay(&mut u),
    };
});

fn arbitrary_token(data: &[u8]) {
    let token = String::from_utf8_lossy(data);
    if let Some((node, session, ack)) = OURS.verify(&token) {
        assert_eq!(
            OURS.sign(&node, session, ack),
            token,
            "a token we did not sign verifies"
        );
        assert!(Signer::is_session_token(&token));
    }
    if token.starts_with("eyJ") {
        assert!(
            !Signer::is_session_token(&token),
            "a JWT taken for a session token"
        );
    }
    if let Ok(m) = std::str::from_utf8(data) {
        // Relay messages from anyone who can publish to Redis.
        if let Some(msg) = OURS.open(m.as_bytes()) {
            assert_eq!(OURS.open(&OURS.seal(&msg)), Some(msg));
        }
    }
}

fn tampered_token(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let node: String = u.arbitrary()?;
    let (session, ack): (u128, u64) = (u.arbitrary()?, u.arbitrary()?);
    let token = OURS.sign(&node, session, ack);
    let said = OURS.verify(&token);
    // Tokens over 512 bytes are refused unread (real node ids are 16 hex digits).
    if !node.is_empty() && !node.contains('.') && token.len() <= 512 {
        assert_eq!(said, Some((node.clone(), session, ack)), "round trip");
    }
    if let Some((n, s, a)) = said {
        assert_eq!(OURS.sign(&n, s, a), token);
    }
    assert_eq!(
        OTHER.verify(&token),
        None,
        "another secret's token verifies"
    );
    // Another pod's token is still told apart from a JWT (answered 410).
    assert_eq!(Signer::is_session_token(&token), token.len() <= 512);
    let mut bytes = token.clone().into_bytes();
    let at = u.choose_index(bytes.len().max(1))?;
    match u.int_in_range(0..=3)? {
        0 if !bytes.is_empty() => {
            let flip: u8 = u.int_in_range(1..=255)?;
            let at = at % bytes.len();
            bytes[at] ^= flip;
        }
        1 => bytes.truncate(at),
        2 => bytes.insert(at.min(bytes.len()), u.arbitrary()?),
        _ => bytes.extend_from_slice(u.arbitrary::<&[u8]>()?),
    }
    let changed = String::from_utf8_lossy(&bytes);
    if changed != token {
        if let Some((n, s, a)) = OURS.verify(&changed) {
            assert_eq!(
                OURS.sign(&n, s, a),
                changed,
                "a changed token verifies: {changed:?}"
            );
        }
    }
    Ok(())
}

fn macs(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let data: &[u8] = u.arbitrary()?;
    let mac = OURS.mac(data);
    assert!(OURS.check_mac(data, &mac));
    assert!(OURS.check_mac(data, &mac.to_ascii_uppercase()));
    assert!(!OTHER.check_mac(data, &mac));
    let other: &[u8] = u.arbitrary()?;
    if other != data {
        assert!(!OURS.check_mac(other, &mac));
    }
    let guess: String = u.arbitrary()?;
    if OURS.check_mac(data, &guess) {
        assert!(
            guess.eq_ignore_ascii_case(&mac),
            "MAC {guess:?} accepted for {mac:?}"
        );
    }
    // The real MAC, one character changed.
    let mut m = mac.into_bytes();
    let at = u.choose_index(m.len())?;
    m[at] = u.arbitrary()?;
    let m = String::from_utf8_lossy(&m);
    if OURS.check_mac(data, &m) {
        assert!(
            m.eq_ignore_ascii_case(&OURS.mac(data)),
            "MAC {m:?} accepted"
        );
    }
    Ok(())
}

fn relay(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let text: String = u.arbitrary()?;
    let msg = RelayMessage::from_json(&text).or_else(|| {
        let kind = ["get", "post", "probe", "reply"][usize::from(text.len() as u8 % 4)];
        RelayMessage::from_json(&format!(
            r#"{{"t":"{kind}","id":{},"from":{f},"session":{f},"ack":{},"lines":[{f}],"status":200,"messages":[{f}]}}"#,
            text.len(),
            text.len() * 7,
            f = serde_json::to_string(&text).unwrap()
        ))
    });
    let Some(msg) = msg else { return Ok(()) };
    let sealed = OURS.seal(&msg);
    assert_eq!(OURS.open(&sealed), Some(msg.clone()));
    assert_eq!(OTHER.open(&sealed), None, "another secret's seal opens");
    let mut bytes = sealed.to_vec();
    let at = u.choose_index(bytes.len())?;
    bytes[at] ^= u.int_in_range(1..=255)?;
    if let Some(opened) = OURS.open(&bytes) {
        assert_eq!(opened, msg, "a changed seal opens to another message");
    }
    Ok(())
}
