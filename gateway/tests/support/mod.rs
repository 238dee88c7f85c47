//! Test helpers: a gateway on a free port and a raw Phoenix protocol client.
#![allow(dead_code, unreachable_pub)]

use futures_util::{SinkExt, StreamExt};
use gateway::Endpoint;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
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
#[derive(Debug)]
pub enum Received {
    Text(Value),
    Binary(Vec<u8>),
    Close(Option<u16>),
}

/// A bare WebSocket client that speaks frames, so tests see exactly what the
/// server sends.
pub struct PhxClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl PhxClient {
    pub async fn connect(url: &str) -> PhxClient {
        let (ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timed out")
            .expect("connect failed");
        PhxClient { ws }
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
                None => return Received::Close(None),
                Some(Err(_)) => return Received::Close(None),
                Some(Ok(WsMessage::Text(t))) => {
                    return Received::Text(serde_json::from_str(t.as_str()).unwrap())
                }
                Some(Ok(WsMessage::Binary(b))) => return Received::Binary(b.to_vec()),
                Some(Ok(WsMessage::Close(c))) => {
                    return Received::Close(c.map(|c| u16::from(c.code)))
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
        self.send(serde_json::json!([jr, jr, topic, "phx_join", {}]))
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
