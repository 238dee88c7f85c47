//! The messages pods exchange when a long-poll request lands on a pod that
//! does not own its session: the request goes to the owner's inbox, the
//! answer to the relaying pod's inbox (see [`Broker::send_to`]).
//!
//! Every message is sealed with an HMAC under the long-poll secret, so only
//! pods that share it can ask an owner for a session's messages or answer a
//! relaying pod, whatever else can publish to Redis channels.
//!
//! [`Broker::send_to`]: crate::pubsub::Broker::send_to

use super::token::Signer;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// One relay message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
pub(crate) enum Message {
    /// A GET for `session`, whose client has received `ack` messages.
    Get {
        id: u64,
        from: String,
        session: String,
        ack: u64,
    },
    /// A POST's lines for `session`, in order.
    Post {
        id: u64,
        from: String,
        session: String,
        lines: Vec<String>,
    },
    /// Is this pod still there? Sent to an owner while a relayed GET waits
    /// on it; only whether anyone received it matters, so it is ignored.
    Probe,
    /// The owner's answer to request `id`: the JSON status, and for a GET
    /// the new ack count and the messages.
    Reply {
        id: u64,
        status: u16,
        #[serde(default)]
        ack: u64,
        #[serde(default)]
        messages: Vec<String>,
    },
}

#[derive(Deserialize)]
struct Sealed<'a> {
    mac: &'a str,
    #[serde(borrow)]
    msg: &'a RawValue,
}

/// Encodes and seals `msg`.
pub(crate) fn seal(signer: &Signer, msg: &Message) -> Bytes {
    // Serializing these plain structs cannot fail.
    let body = serde_json::to_string(msg).unwrap_or_default();
    let mac = signer.mac(body.as_bytes());
    Bytes::from(format!("{{\"mac\":\"{mac}\",\"msg\":{body}}}"))
}

/// Checks the seal and decodes; `None` for anything forged or malformed.
pub(crate) fn open(signer: &Signer, data: &[u8]) -> Option<Message> {
    let sealed: Sealed<'_> = serde_json::from_slice(data).ok()?;
    if !signer.check_mac(sealed.msg.get().as_bytes(), sealed.mac) {
        return None;
    }
    serde_json::from_str(sealed.msg.get()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_round_trip_and_forgery() {
        let s = Signer::new(b"secret");
        let msg = Message::Post {
            id: 3,
            from: "n1".into(),
            session: "ab".into(),
            lines: vec!["[\"1\",\"1\",\"room:a\",\"phx_join\",{}]".into()],
        };
        let sealed = seal(&s, &msg);
        assert_eq!(open(&s, &sealed), Some(msg));
        assert_eq!(open(&Signer::new(b"other"), &sealed), None);
        let tampered = String::from_utf8(sealed.to_vec())
            .unwrap()
            .replace("room:a", "room:b");
        assert_eq!(open(&s, tampered.as_bytes()), None);
        assert_eq!(open(&s, b"{}"), None);
        assert_eq!(open(&s, b"nope"), None);
    }
}
