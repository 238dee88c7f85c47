//! Test helpers: a gateway on a free port and a raw Phoenix protocol client.
#![allow(dead_code, unreachable_pub)]

use futures_util::{SinkExt, StreamExt};
use gateway::protocol::Vsn;
use gateway::Endpoint;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Response as WsResponse;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any expected event may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// A gateway serving `endpoint` on 127.0.0.1 with a port picked by the OS.
pub struct TestServer {
    pub addr: SocketAddr,
    pub endpoint: Arc<Endpoint>,
}

impl TestServer {
    pub async fn spawn(endpoint: Arc<Endpoint>) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ep = endpoint.clone();
        tokio::spawn(async move { gateway::server::serve(listener, ep).await });
        TestServer { addr, endpoint }
    }

    /// `ws://addr/socket/websocket?{query}`.
    pub fn url(&self, query: &str) -> String {
        format!("ws://{}/socket/websocket?{}", self.addr, query)
    }

    /// Connects with the V2 serializer.
    pub async fn v2(&self) -> PhxClient {
        PhxClient::connect(&self.url("vsn=2.0.0")).await
    }

    /// Connects with the V1 serializer.
    pub async fn v1(&self) -> PhxClient {
        PhxClient::connect(&self.url("vsn=1.0.0")).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.endpoint.shutdown();
    }
}

/// What the server sent.
#[derive(Debug, PartialEq)]
pub enum Received {
    Text(Value),
    Binary(Vec<u8>),
    Close(Option<u16>),
}

/// A bare WebSocket client that speaks frames, so tests see exactly what the
/// server sends.
pub struct PhxClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The server closed the connection (or it broke) and that was reported
    /// once; see [`PhxClient::next_within`].
    ended: bool,
}

impl PhxClient {
    pub async fn connect(url: &str) -> PhxClient {
        let (ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timed out")
            .expect("connect failed");
        PhxClient { ws, ended: false }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(WsMessage::text(text.to_owned()))
            .await
            .unwrap();
    }

    pub async fn send(&mut self, frame: Value) {
        self.send_text(&frame.to_string()).await;
    }

    pub async fn send_binary(&mut self, data: Vec<u8>) {
        self.ws.send(WsMessage::binary(data)).await.unwrap();
    }

    /// The next data or close frame; pings and pongs are skipped.
    pub async fn next(&mut self) -> Received {
        loop {
            let msg = tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .expect("timed out waiting for a frame");
            match msg {
                None | Some(Err(_)) => {
                    self.ended = true;
                    return Received::Close(None);
                }
                Some(Ok(WsMessage::Text(t))) => {
                    return Received::Text(serde_json::from_str(t.as_str()).unwrap())
                }
                Some(Ok(WsMessage::Binary(b))) => return Received::Binary(b.to_vec()),
                Some(Ok(WsMessage::Close(c))) => {
                    self.ended = true;
                    return Received::Close(c.map(|c| u16::from(c.code)));
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next frame, which must be JSON text.
    pub async fn recv(&mut self) -> Value {
        match self.next().await {
            Received::Text(v) => v,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Asserts the next frame equals `expected`.
    pub async fn expect(&mut self, expected: Value) {
        let got = self.recv().await;
        assert_eq!(got, expected);
    }

    /// Asserts the server closes the connection, returning the close code.
    pub async fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.next().await {
                Received::Close(code) => return code,
                Received::Text(_) | Received::Binary(_) => continue,
            }
        }
    }

    /// Joins `topic` with `jr` as join_ref and ref, expecting `ok`.
    pub async fn join(&mut self, topic: &str, jr: &str) -> Value {
        self.join_with(topic, jr, serde_json::json!({})).await
    }

    /// Joins with join params, expecting `ok`.
    pub async fn join_with(&mut self, topic: &str, jr: &str, params: Value) -> Value {
        self.send(serde_json::json!([jr, jr, topic, "phx_join", params]))
            .await;
        let reply = self.recv().await;
        assert_eq!(reply[3], "phx_reply", "{reply}");
        assert_eq!(reply[4]["status"], "ok", "{reply}");
        reply
    }

    /// Sends a heartbeat and waits for its reply: everything the socket had
    /// queued before it has been received by then.
    pub async fn heartbeat(&mut self, r: &str) {
        self.send(serde_json::json!([null, r, "phoenix", "heartbeat", {}]))
            .await;
        self.expect(
            serde_json::json!([null, r, "phoenix", "phx_reply", {"status": "ok", "response": {}}]),
        )
        .await;
    }

    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
    }
}

/// Connecting with a prepared request, sending raw frames.
impl PhxClient {
    /// Connects with any client request (extra headers, subprotocols),
    /// returning the handshake response, or the error (an HTTP refusal is
    /// `Error::Http` with the response).
    pub async fn try_connect<R>(req: R) -> Result<(PhxClient, WsResponse), WsError>
    where
        R: IntoClientRequest + Unpin,
    {
        let (ws, resp) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(req))
            .await
            .expect("connect timed out")?;
        Ok((PhxClient { ws, ended: false }, resp))
    }

    /// The HTTP status of a handshake that must be refused.
    pub async fn refused_status(url: &str) -> u16 {
        match PhxClient::try_connect(url).await {
            Err(WsError::Http(resp)) => resp.status().as_u16(),
            Err(e) => panic!("expected an HTTP refusal, got {e}"),
            Ok(_) => panic!("expected an HTTP refusal, got an upgrade"),
        }
    }

    /// Sends one raw frame as given (fragments, invalid UTF-8 text, …).
    pub async fn send_frame(&mut self, frame: WsFrame) {
        self.ws.send(WsMessage::Frame(frame)).await.unwrap();
    }
}

/// The fixture of the spec's conformance vectors: `RoomChannel`.
pub mod room {
    use async_trait::async_trait;
    use gateway::channel::{Channel, ChannelContext, HandleIn, JoinResult, Router, StopReason};
    use gateway::{AcceptAll, Endpoint, Payload, Socket, SocketConfig, SocketHandler};
    use serde_json::json;
    use std::sync::Arc;

    /// `room:lobby` ok `{}`, `room:welcome` ok `{"msg":"hi"}`, `room:secret`
    /// refused, `room:boom` panics; any other `room:*` topic joins ok `{}`.
    #[derive(Debug)]
    pub struct RoomChannel;

    #[async_trait]
    impl Channel for RoomChannel {
        type Info = ();

        async fn join(
            &mut self,
            topic: &str,
            _payload: Payload,
            _ctx: &mut ChannelContext<()>,
        ) -> JoinResult {
            match topic {
                "room:welcome" => Ok(json!({"msg": "hi"}).into()),
                "room:secret" => Err(json!({"reason": "unauthorized"}).into()),
                "room:boom" => panic!("RoomChannel: join crash (expected by the test)"),
                _ => Ok(Payload::empty()),
            }
        }

        async fn handle_in(
            &mut self,
            event: &str,
            payload: Payload,
            ctx: &mut ChannelContext<()>,
        ) -> HandleIn {
            match event {
                "ping" => HandleIn::ok(json!({"pong": payload.value()})),
                "noop" => HandleIn::NoReply,
                "fail" => HandleIn::error(json!({"reason": "nope"})),
                "stop" => HandleIn::Stop(
                    StopReason::Normal,
                    Some(("ok".into(), json!({"bye": true}).into())),
                ),
                "crash" => panic!("RoomChannel: crash (expected by the test)"),
                "shout" => {
                    ctx.broadcast("shout", payload).await.unwrap();
                    HandleIn::NoReply
                }
                "push_me" => {
                    ctx.push("pushed", json!({"n": 1}).into());
                    HandleIn::ok(Payload::empty())
                }
                "echo_bin" => HandleIn::Reply("ok".into(), payload),
                other => HandleIn::error(json!({"reason": format!("unknown event {other}")})),
            }
        }
    }

    /// `/socket` with `room:*` → `RoomChannel`, admitted by `handler`.
    pub fn endpoint_with(handler: impl SocketHandler, config: SocketConfig) -> Arc<Endpoint> {
        let router = Router::new().channel("room:*", || RoomChannel);
        Endpoint::builder()
            .socket(Socket::new("/socket", handler, router).config(config))
            .build()
    }

    /// The fixture endpoint with `AcceptAll` and the default config.
    pub fn endpoint() -> Arc<Endpoint> {
        endpoint_with(AcceptAll, SocketConfig::default())
    }
}

/// The V1 object a client sends for the V2 array `frame`.
pub fn v1_in(frame: &Value) -> Value {
    serde_json::json!({
        "join_ref": frame[0], "ref": frame[1], "topic": frame[2],
        "event": frame[3], "payload": frame[4],
    })
}

/// The V1 object the server sends for the V2 array `frame`: no join_ref.
pub fn v1_out(frame: &Value) -> Value {
    serde_json::json!({
        "ref": frame[1], "topic": frame[2], "event": frame[3], "payload": frame[4],
    })
}

/// A client on either serializer, driven with V2 arrays: on V1 they are
/// turned into V1 objects both ways.
pub struct Wire {
    pub client: PhxClient,
    pub vsn: Vsn,
}

impl Wire {
    pub async fn connect(server: &TestServer, vsn: Vsn) -> Wire {
        let client = PhxClient::connect(&server.url(&format!("vsn={}", vsn.as_str()))).await;
        Wire { client, vsn }
    }

    /// Connects and joins `room:lobby` with join_ref and ref `"1"`.
    pub async fn joined(server: &TestServer, vsn: Vsn) -> Wire {
        let mut w = Wire::connect(server, vsn).await;
        w.send(serde_json::json!(["1", "1", "room:lobby", "phx_join", {}]))
            .await;
        w.expect(
            serde_json::json!(["1", "1", "room:lobby", "phx_reply", {"status": "ok", "response": {}}]),
        )
        .await;
        w
    }

    /// The frame as this client's serializer writes `frame` (client → server).
    pub fn outgoing(&self, frame: &Value) -> Value {
        match self.vsn {
            Vsn::V1 => v1_in(frame),
            Vsn::V2 => frame.clone(),
        }
    }

    /// The frame as the server must write `frame` for this client.
    pub fn incoming(&self, frame: &Value) -> Value {
        match self.vsn {
            Vsn::V1 => v1_out(frame),
            Vsn::V2 => frame.clone(),
        }
    }

    pub async fn send(&mut self, frame: Value) {
        let out = self.outgoing(&frame);
        self.client.send(out).await;
    }

    /// Asserts the next frame is `frame` (written as V2).
    pub async fn expect(&mut self, frame: Value) {
        let want = self.incoming(&frame);
        match self.client.next().await {
            Received::Text(got) => assert_eq!(got, want, "serializer {:?}", self.vsn),
            other => panic!("serializer {:?}: expected {want}, got {other:?}", self.vsn),
        }
    }

    /// Pings `topic` with `jr` and `r`, asserting the `pong` reply is the very
    /// next frame: nothing was sent before it.
    pub async fn ping_next(&mut self, topic: &str, jr: &str, r: &str) {
        self.send(serde_json::json!([jr, r, topic, "ping", {"r": r}]))
            .await;
        self.expect(serde_json::json!(
            [jr, r, topic, "phx_reply", {"status": "ok", "response": {"pong": {"r": r}}}]
        ))
        .await;
    }

    /// Sends a heartbeat and asserts its reply is the very next frame.
    pub async fn heartbeat_next(&mut self, r: &str) {
        self.send(serde_json::json!([null, r, "phoenix", "heartbeat", {}]))
            .await;
        self.expect(
            serde_json::json!([null, r, "phoenix", "phx_reply", {"status": "ok", "response": {}}]),
        )
        .await;
    }
}

pub mod presence;
/// Real redis-server and gateway processes for the multi-pod tests.
pub mod redis;

/// A raw HTTP long-poll client.
pub mod longpoll;
