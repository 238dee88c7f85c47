//! The V2 binary frame decoder and encoder (`protocol/binary.rs`, spec
//! §2.3) on arbitrary binary frames.
//!
//! Checks:
//! - a frame decodes exactly when it is kind 0 with four in-bounds UTF-8
//!   fields, to those fields (empty refs as none) and the rest as payload;
//! - V1 connections refuse every binary frame;
//! - decode(encode_client(message)) == message; the server's push, reply and
//!   broadcast frames read back (as phoenix.js reads them) to what was
//!   encoded; a field over 255 bytes is an encode error, never a bad frame.
#![no_main]

use bytes::Bytes;
use gateway::protocol::{EncodeError, Message, Outbound, Payload, Vsn};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let frame = Bytes::copy_from_slice(data);
    assert!(Vsn::V1.decode_binary(&frame).is_err());
    let decoded = Vsn::V2.decode_binary(&frame);
    let want = reference(data);
    match (&decoded, &want) {
        (Ok(m), Some(w)) => assert_eq!(m, w),
        (Err(_), None) => {}
        _ => panic!("decoder {decoded:?} but reference {want:?}"),
    }
    let Ok(m) = decoded else { return };
    let Payload::Binary(bytes) = &m.payload else {
        panic!("binary frames carry binary payloads");
    };
    assert_eq!(Vsn::V2.decode_binary(&client_push(&m)).as_ref(), Ok(&m));

    let s = |o: &Option<String>| o.clone().unwrap_or_default();
    // A push on a joined channel: kind 0, no ref.
    let push = Outbound::Message {
        join_ref: Some(m.join_ref.as_deref().unwrap_or("")),
        ref_: m.ref_.as_deref(),
        topic: &m.topic,
        event: &m.event,
        payload: &m.payload,
    };
    let got = read_server(Vsn::V2.encode(&push).unwrap().bytes());
    assert_eq!(
        got,
        (
            0,
            s(&m.join_ref),
            String::new(),
            m.topic.clone(),
            m.event.clone(),
            bytes.to_vec()
        )
    );
    // A broadcast: kind 2, no refs.
    let broadcast = Outbound::Message {
        join_ref: None,
        ref_: None,
        topic: &m.topic,
        event: &m.event,
        payload: &m.payload,
    };
    let got = read_server(Vsn::V2.encode(&broadcast).unwrap().bytes());
    assert_eq!(
        got,
        (
            2,
            String::new(),
            String::new(),
            m.topic.clone(),
            m.event.clone(),
            bytes.to_vec()
        )
    );
    // A reply, its status in the event's place.
    let reply = Outbound::Reply {
        join_ref: m.join_ref.as_deref(),
        ref_: m.ref_.as_deref(),
        topic: &m.topic,
        status: &m.event,
        response: &m.payload,
    };
    let got = read_server(Vsn::V2.encode(&reply).unwrap().bytes());
    assert_eq!(
        got,
        (
            1,
            s(&m.join_ref),
            s(&m.ref_),
            m.topic.clone(),
            m.event.clone(),
            bytes.to_vec()
        )
    );
    // V1 cannot carry it; a field over 255 bytes cannot be framed.
    assert_eq!(Vsn::V1.encode(&reply), Err(EncodeError::BinaryOnV1));
    let long = "x".repeat(256);
    let too_long = Outbound::Message {
        join_ref: None,
        ref_: None,
        topic: &long,
        event: &m.event,
        payload: &m.payload,
    };
    assert!(matches!(
        Vsn::V2.encode(&too_long),
        Err(EncodeError::FieldTooLong(_))
    ));
});

/// Spec §2.3, kind 0 from a client, read plainly.
fn reference(d: &[u8]) -> Option<Message> {
    if d.len() < 5 || d[0] != 0 {
        return None;
    }
    let mut at = 5;
    let mut fields = Vec::new();
    for &len in &d[1..5] {
        let end = at + usize::from(len);
        fields.push(std::str::from_utf8(d.get(at..end)?).ok()?.to_owned());
        at = end;
    }
    let opt = |s: &String| (!s.is_empty()).then(|| s.clone());
    Some(Message {
        join_ref: opt(&fields[0]),
        ref_: opt(&fields[1]),
        topic: fields[2].clone(),
        event: fields[3].clone(),
        payload: Payload::Binary(Bytes::copy_from_slice(&d[at..])),
    })
}

/// The frame phoenix.js sends for this push.
fn client_push(m: &Message) -> Bytes {
    let jr = m.join_ref.as_deref().unwrap_or("");
    let r = m.ref_.as_deref().unwrap_or("");
    let Payload::Binary(p) = &m.payload else {
        unreachable!()
    };
    let mut f = vec![
        0u8,
        jr.len() as u8,
        r.len() as u8,
        m.topic.len() as u8,
        m.event.len() as u8,
    ];
    for s in [jr, r, &m.topic, &m.event] {
        f.extend_from_slice(s.as_bytes());
    }
    f.extend_from_slice(p);
    f.into()
}

/// A server frame as phoenix.js' serializer reads it: (kind, join_ref, ref,
/// topic, event or status, payload).
fn read_server(d: &[u8]) -> (u8, String, String, String, String, Vec<u8>) {
    let kind = d[0];
    let (lens, mut at): (Vec<usize>, usize) = match kind {
        0 => (
            vec![usize::from(d[1]), 0, usize::from(d[2]), usize::from(d[3])],
            4,
        ),
        1 => (d[1..5].iter().map(|&l| usize::from(l)).collect(), 5),
        2 => (vec![0, 0, usize::from(d[1]), usize::from(d[2])], 3),
        k => panic!("server frame of kind {k}"),
    };
    let mut f = Vec::new();
    for len in lens {
        f.push(String::from_utf8(d[at..at + len].to_vec()).expect("fields are UTF-8"));
        at += len;
    }
    (
        kind,
        f[0].clone(),
        f[1].clone(),
        f[2].clone(),
        f[3].clone(),
        d[at..].to_vec(),
    )
}
