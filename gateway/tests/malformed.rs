//! Hostile and broken input over WebSocket: every bad frame ends in a close
//! (1007 for malformed messages and invalid UTF-8, 1002 for broken framing,
//! 1009 for oversize ones) or an error reply,
//! never a panic, and a second client connected all along keeps working.
//! Also the idle timeout.

use gateway::protocol::Vsn;
use gateway::{AcceptAll, SocketConfig};
use serde_json::json;
use std::time::{Duration, Instant};
use test_support::{room, PhxClient, Received, TestServer, Wire};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;

const MALFORMED: u16 = 1007;
const PROTOCOL_ERROR: u16 = 1002;
const TOO_BIG: u16 = 1009;
const MAX: usize = 1024;

/// Something to send on a fresh connection.
enum Bad {
    Text(String),
    Binary(Vec<u8>),
    /// Raw frames: (opcode, data, fin).
    Frames(Vec<(Data, Vec<u8>, bool)>),
}

fn text(s: &str) -> Bad {
    Bad::Text(s.to_owned())
}

/// A server with a small `max_frame_size` and a V2 bystander joined to
/// `room:lobby` the whole time.
struct Setup {
    server: TestServer,
    bystander: Wire,
    checks: u32,
}

impl Setup {
    async fn new() -> Setup {
        let config = SocketConfig {
            max_frame_size: MAX,
            ..Default::default()
        };
        let server = TestServer::spawn(room::endpoint_with(AcceptAll, config)).await;
        let bystander = Wire::joined(&server, Vsn::V2).await;
        Setup {
            server,
            bystander,
            checks: 0,
        }
    }

    /// The bystander joins a new topic, gets a server push and a reply there,
    /// and its first channel still answers.
    async fn bystander_works(&mut self) {
        self.checks += 1;
        let (topic, jr) = (
            format!("room:check{}", self.checks),
            format!("c{}", self.checks),
        );
        let b = &mut self.bystander;
        b.send(json!([jr, jr, topic, "phx_join", {}])).await;
        b.expect(json!([jr, jr, topic, "phx_reply", {"status": "ok", "response": {}}]))
            .await;
        b.send(json!([jr, "p", topic, "push_me", {}])).await;
        b.expect(json!([jr, null, topic, "pushed", {"n": 1}])).await;
        b.expect(json!([jr, "p", topic, "phx_reply", {"status": "ok", "response": {}}]))
            .await;
        b.ping_next("room:lobby", "1", "lobby").await;
    }

    /// Sends `bad` on a fresh connection joined to `room:lobby` and returns
    /// what the server answered first.
    async fn send(&mut self, vsn: Vsn, bad: Bad) -> Received {
        let mut c = Wire::joined(&self.server, vsn).await;
        match bad {
            Bad::Text(t) => c.client.send_text(&t).await,
            Bad::Binary(b) => c.client.send_binary(b).await,
            Bad::Frames(frames) => {
                for (data, bytes, fin) in frames {
                    c.client
                        .send_frame(WsFrame::message(bytes, OpCode::Data(data), fin))
                        .await;
                }
            }
        }
        c.client.next().await
    }

    /// Asserts `bad` closes its connection with `code` and harms no one else.
    async fn closes(&mut self, vsn: Vsn, bad: Bad, code: u16, what: &str) {
        let got = self.send(vsn, bad).await;
        assert_eq!(got, Received::Close(Some(code)), "{vsn:?}: {what}");
        self.bystander_works().await;
    }

    async fn closes_text(&mut self, vsn: Vsn, frames: &[&str]) {
        for f in frames {
            self.closes(vsn, text(f), MALFORMED, f).await;
        }
    }
}

#[tokio::test]
async fn invalid_json_closes() {
    let mut s = Setup::new().await;
    let frames = [
        "{not json",
        "[",
        "",
        "   ",
        r#"[null,"1","phoenix","heartbeat",{}] trailing"#,
        r#"[null,"1","phoenix","heartbeat",{]"#,
        r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1""#,
    ];
    for vsn in Vsn::ALL {
        s.closes_text(vsn, &frames).await;
    }
}

#[tokio::test]
async fn json_that_is_not_a_message_closes() {
    let mut s = Setup::new().await;
    for vsn in Vsn::ALL {
        s.closes_text(vsn, &["null", "42", r#""heartbeat""#, "true"])
            .await;
    }
}

#[tokio::test]
async fn wrong_arity_closes() {
    let mut s = Setup::new().await;
    s.closes_text(
        Vsn::V2,
        &["[]", r#"["1","2"]"#, r#"["1","1","room:lobby","ping"]"#],
    )
    .await;
    s.closes_text(
        Vsn::V1,
        &[
            "{}",
            r#"{"topic":"room:lobby"}"#,
            r#"{"topic":"room:lobby","event":"ping","ref":"1"}"#,
            r#"{"event":"ping","payload":{},"ref":"1"}"#,
        ],
    )
    .await;
}

#[tokio::test]
async fn extra_elements_are_ignored() {
    // Phoenix reads the first five elements of a V2 array.
    let mut s = Setup::new().await;
    let mut c = Wire::joined(&s.server, Vsn::V2).await;
    c.client
        .send_text(r#"["1","2","room:lobby","ping",{},"extra",{"x":[1]}]"#)
        .await;
    c.expect(
        json!(["1", "2", "room:lobby", "phx_reply", {"status": "ok", "response": {"pong": {}}}]),
    )
    .await;
    s.bystander_works().await;
}

#[tokio::test]
async fn wrong_types_close() {
    let mut s = Setup::new().await;
    s.closes_text(
        Vsn::V2,
        &[
            r#"[{},"1","room:lobby","ping",{}]"#,
            r#"["1",["2"],"room:lobby","ping",{}]"#,
            r#"[1.5,"1","room:lobby","ping",{}]"#,
            r#"[true,"1","room:lobby","ping",{}]"#,
            r#"["1","1",42,"ping",{}]"#,
            r#"["1","1",null,"ping",{}]"#,
            r#"["1","1","room:lobby",7,{}]"#,
            r#"["1","1","room:lobby",{},{}]"#,
            r#"[null,"1",{"t":1},"heartbeat",{}]"#,
        ],
    )
    .await;
    s.closes_text(
        Vsn::V1,
        &[
            r#"{"topic":1,"event":"ping","payload":{},"ref":"1"}"#,
            r#"{"topic":"room:lobby","event":{},"payload":{},"ref":"1"}"#,
            r#"{"topic":"room:lobby","event":"ping","payload":{},"ref":{}}"#,
            r#"{"topic":"room:lobby","event":"ping","payload":{},"ref":"1","join_ref":[1]}"#,
            r#"{"topic":null,"event":"ping","payload":{},"ref":"1"}"#,
        ],
    )
    .await;
}

#[tokio::test]
async fn integer_refs_are_accepted_as_text() {
    // A leniency for third-party clients: integer refs become their decimal
    // text, so the reply carries strings.
    let s = Setup::new().await;
    let mut c = Wire::joined(&s.server, Vsn::V2).await;
    c.client.send_text(r#"[1,2,"room:lobby","ping",{}]"#).await;
    c.expect(
        json!(["1", "2", "room:lobby", "phx_reply", {"status": "ok", "response": {"pong": {}}}]),
    )
    .await;
}

#[tokio::test]
async fn frames_of_the_other_serializer_close() {
    let mut s = Setup::new().await;
    let v1 = r#"{"topic":"room:lobby","event":"ping","payload":{},"ref":"2","join_ref":"1"}"#;
    s.closes_text(Vsn::V2, &[v1]).await;
    // V1 messages are objects, not positional arrays of any order.
    let arrays = [
        r#"["1","2","room:lobby","ping",{}]"#,
        r#"["room:lobby","ping",{},"2","1"]"#,
    ];
    s.closes_text(Vsn::V1, &arrays).await;
}

#[tokio::test]
async fn unknown_vsn_is_refused() {
    let mut s = Setup::new().await;
    for vsn in [
        "3.0.0", "2.1.0", "1.1.0", "2", "2.0", "x.y.z", "", "2.0.0.0",
    ] {
        let url = s.server.url(&format!("vsn={vsn}"));
        assert_eq!(PhxClient::refused_status(&url).await, 403, "vsn={vsn}");
    }
    s.bystander_works().await;
}

/// A heartbeat padded with spaces to exactly `len` bytes.
fn padded_heartbeat(len: usize) -> Vec<u8> {
    let mut hb = br#"[null,"big","phoenix","heartbeat",{}]"#.to_vec();
    hb.resize(len, b' ');
    hb
}

#[tokio::test]
async fn oversize_frames_close_with_1009() {
    let mut s = Setup::new().await;
    for vsn in Vsn::ALL {
        let big = String::from_utf8(padded_heartbeat(MAX + 1)).unwrap();
        s.closes(vsn, Bad::Text(big), TOO_BIG, "one text frame")
            .await;
        s.closes(vsn, Bad::Binary(vec![0; 2 * MAX]), TOO_BIG, "binary")
            .await;
        let halves = Bad::Frames(vec![
            (Data::Text, padded_heartbeat(600), false),
            (Data::Continue, vec![b' '; 600], true),
        ]);
        s.closes(vsn, halves, TOO_BIG, "two fragments").await;
        let mut many = vec![(Data::Binary, vec![0u8; 300], false)];
        many.extend((0..3).map(|i| (Data::Continue, vec![0u8; 300], i == 2)));
        s.closes(vsn, Bad::Frames(many), TOO_BIG, "four fragments")
            .await;
    }
}

#[tokio::test]
async fn messages_up_to_the_limit_are_served() {
    let s = Setup::new().await;
    let reply = json!([null, "big", "phoenix", "phx_reply", {"status": "ok", "response": {}}]);
    let mut c = Wire::joined(&s.server, Vsn::V2).await;
    c.client
        .send_text(std::str::from_utf8(&padded_heartbeat(MAX)).unwrap())
        .await;
    c.expect(reply.clone()).await;
    let first = padded_heartbeat(MAX / 2);
    for (data, bytes, fin) in [
        (Data::Text, first, false),
        (Data::Continue, vec![b' '; MAX / 2], true),
    ] {
        c.client
            .send_frame(WsFrame::message(bytes, OpCode::Data(data), fin))
            .await;
    }
    c.expect(reply).await;
}

#[tokio::test]
async fn binary_garbage_closes() {
    let mut s = Setup::new().await;
    let mut bad_utf8_field = vec![0u8, 1, 1, 10, 4, 0xff, b'2'];
    bad_utf8_field.extend_from_slice(b"room:lobbyping");
    let garbage: [(&str, Vec<u8>); 8] = [
        ("empty", vec![]),
        ("one byte", vec![0xff]),
        ("short header", vec![0, 1]),
        ("field past the end", vec![0, 9, 0, 0, 0, b'x']),
        ("reply kind", vec![1, 0, 0, 0, 0]),
        ("broadcast kind", vec![2, 1, 1, b't', b'e']),
        ("unknown kind", vec![7, 0, 0, 0, 0]),
        ("invalid utf-8 field", bad_utf8_field),
    ];
    for (what, bytes) in garbage {
        s.closes(Vsn::V2, Bad::Binary(bytes), MALFORMED, what).await;
    }
    // V1 has no binary frames at all, even well-formed V2 ones.
    let mut push = vec![0u8, 1, 1, 10, 4];
    push.extend_from_slice(b"12room:lobbyping");
    s.closes(Vsn::V1, Bad::Binary(push), MALFORMED, "binary on V1")
        .await;
}

#[tokio::test]
async fn invalid_utf8_text_closes() {
    let mut s = Setup::new().await;
    let bad = |at: &[u8]| {
        let mut f = br#"["1","2","room:lobby","ping",{"a":""#.to_vec();
        f.extend_from_slice(at);
        f.extend_from_slice(br#""}]"#);
        f
    };
    for vsn in Vsn::ALL {
        let single = Bad::Frames(vec![(Data::Text, bad(&[0xff]), true)]);
        s.closes(vsn, single, MALFORMED, "one frame").await;
        let overlong = Bad::Frames(vec![(Data::Text, bad(&[0xc0, 0x80]), true)]);
        s.closes(vsn, overlong, MALFORMED, "overlong encoding")
            .await;
        // Invalid anywhere, even in an element the decoder skips.
        let mut skipped = br#"[null,"1","phoenix","heartbeat",{},""#.to_vec();
        skipped.extend_from_slice(&[0xed, 0xa0, 0x80]); // a surrogate
        skipped.extend_from_slice(br#""]"#);
        let skipped = Bad::Frames(vec![(Data::Text, skipped, true)]);
        s.closes(vsn, skipped, MALFORMED, "skipped element").await;
        let fragments = Bad::Frames(vec![
            (Data::Text, bad(&[]), false),
            (Data::Continue, vec![0xfe], true),
        ]);
        s.closes(vsn, fragments, MALFORMED, "fragmented").await;
    }
}

#[tokio::test]
async fn utf8_split_across_fragments_is_fine() {
    let s = Setup::new().await;
    let mut c = Wire::joined(&s.server, Vsn::V2).await;
    let frame = r#"["1","2","room:lobby","ping",{"a":"é"}]"#.as_bytes();
    let split = frame.iter().position(|&b| b == 0xc3).unwrap() + 1; // inside "é"
    for (data, bytes, fin) in [
        (Data::Text, frame[..split].to_vec(), false),
        (Data::Continue, frame[split..].to_vec(), true),
    ] {
        c.client
            .send_frame(WsFrame::message(bytes, OpCode::Data(data), fin))
            .await;
    }
    c.expect(json!(["1", "2", "room:lobby", "phx_reply", {"status": "ok", "response": {"pong": {"a": "é"}}}]))
        .await;
}

#[tokio::test]
async fn broken_fragmentation_closes() {
    let mut s = Setup::new().await;
    let hb = br#"[null,"1","phoenix","heartbeat",{}]"#.to_vec();
    let stray = Bad::Frames(vec![(Data::Continue, hb.clone(), true)]);
    s.closes(Vsn::V2, stray, PROTOCOL_ERROR, "continuation first")
        .await;
    let interleaved = Bad::Frames(vec![
        (Data::Text, hb[..5].to_vec(), false),
        (Data::Text, hb.clone(), true),
    ]);
    s.closes(Vsn::V2, interleaved, PROTOCOL_ERROR, "new message mid-way")
        .await;
}

async fn idle_server() -> TestServer {
    let config = SocketConfig {
        idle_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    TestServer::spawn(room::endpoint_with(AcceptAll, config)).await
}

#[tokio::test]
async fn silent_client_is_closed_as_idle() {
    let s = idle_server().await;
    for vsn in Vsn::ALL {
        let mut c = Wire::joined(&s, vsn).await;
        let since = Instant::now();
        assert_eq!(c.client.next().await, Received::Close(Some(1001)));
        assert!(since.elapsed() >= Duration::from_millis(250));
    }
}

#[tokio::test]
async fn heartbeats_keep_a_client_open() {
    let s = idle_server().await;
    let mut c = Wire::joined(&s, Vsn::V2).await;
    // Twelve heartbeats 100 ms apart span four idle timeouts.
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for i in 0..12 {
        tick.tick().await;
        c.heartbeat_next(&i.to_string()).await;
    }
    c.ping_next("room:lobby", "1", "last").await;
}
