//! `PhxClient`, the Phoenix client over WebSocket: a bare client that speaks
//! frames (JSON text of either serializer, V2 binary frames, raw and
//! fragmented frames, close codes), so tests see exactly what the server
//! sends; the protocol steps tests repeat (join, leave, heartbeat); and the
//! frames a server sends (`reply`, `broadcast`).

use crate::wait::{START_TIMEOUT, TIMEOUT};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::{
    Request as WsRequest, Response as WsResponse,
};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// `[jr, r, topic, "phx_reply", {"status": status, "response": response}]`.
pub fn reply(jr: Option<&str>, r: &str, topic: &str, status: &str, response: Value) -> Value {
    json!([jr, r, topic, "phx_reply", {"status": status, "response": response}])
}

/// The frame every subscriber gets for a broadcast.
pub fn broadcast(topic: &str, event: &str, payload: Value) -> Value {
    json!([null, null, topic, event, payload])
}

/// A handshake request to `url` carrying `token` as phoenix.js 1.8's
/// `authToken` does: `Sec-WebSocket-Protocol: phoenix, base64url.bearer.phx.…`
/// with the standard base64 of the token, `=` removed.
pub fn auth_token_request(url: &str, token: &str) -> WsRequest {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD
        .encode(token)
        .replace('=', "");
    header_request(
        url,
        "Sec-WebSocket-Protocol",
        &format!("phoenix, base64url.bearer.phx.{encoded}"),
    )
}

/// A handshake request to `url` with one more header (`Origin`, …).
pub fn header_request(url: &str, name: &'static str, value: &str) -> WsRequest {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert(name, HeaderValue::from_str(value).unwrap());
    req
}

/// What the server sent.
#[derive(Debug, PartialEq)]
pub enum Received {
    Text(Value),
    Binary(Vec<u8>),
    /// A close frame with its code, or `None` for the end of the stream.
    Close(Option<u16>),
}

/// A bare WebSocket client.
#[derive(Debug)]
pub struct PhxClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The connection ended (closed by the server, or broken) and that was
    /// reported once; see [`PhxClient::next_within`].
    ended: bool,
    /// The code and reason of the server's close frame, once one came.
    close_frame: Option<(u16, String)>,
}

impl PhxClient {
    fn new(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> PhxClient {
        PhxClient {
            ws,
            ended: false,
            close_frame: None,
        }
    }

    pub async fn connect(url: &str) -> PhxClient {
        let (c, _) = PhxClient::try_connect(url)
            .await
            .unwrap_or_else(|e| panic!("connect to {url} failed: {e}"));
        c
    }

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
        Ok((PhxClient::new(ws), resp))
    }

    /// Connects over a TCP stream the test set up itself (socket options).
    pub async fn connect_stream(url: &str, stream: TcpStream) -> PhxClient {
        let stream = MaybeTlsStream::Plain(stream);
        let (ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::client_async(url, stream))
            .await
            .expect("handshake timed out")
            .unwrap_or_else(|e| panic!("handshake with {url} failed: {e}"));
        PhxClient::new(ws)
    }

    /// Connects to `addr` with a kernel receive buffer of `rcvbuf` bytes, so
    /// the server's writes stall soon after the client stops reading: the
    /// slow consumer of the abuse tests.
    pub async fn connect_small_rcvbuf(
        url: &str,
        addr: std::net::SocketAddr,
        rcvbuf: u32,
    ) -> PhxClient {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(rcvbuf).unwrap();
        let stream = tokio::time::timeout(TIMEOUT, socket.connect(addr))
            .await
            .expect("connect timed out")
            .unwrap();
        PhxClient::connect_stream(url, stream).await
    }

    /// The HTTP status of a handshake that must be refused.
    pub async fn refused_status<R: IntoClientRequest + Unpin>(req: R) -> u16 {
        match PhxClient::try_connect(req).await {
            Err(WsError::Http(resp)) => resp.status().as_u16(),
            Err(e) => panic!("expected an HTTP refusal, got {e}"),
            Ok(_) => panic!("expected an HTTP refusal, got an upgrade"),
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(WsMessage::text(text)).await.unwrap();
    }

    /// Sends text, returning the error once the connection is gone (an
    /// abusive client keeps sending until the server closes it).
    pub async fn try_send_text(&mut self, text: &str) -> Result<(), WsError> {
        self.ws.send(WsMessage::text(text)).await
    }

    pub async fn send(&mut self, frame: Value) {
        self.send_text(&frame.to_string()).await;
    }

    pub async fn send_binary(&mut self, data: Vec<u8>) {
        self.ws.send(WsMessage::binary(data)).await.unwrap();
    }

    /// Sends one raw frame as given (fragments, invalid UTF-8 text, …).
    pub async fn send_frame(&mut self, frame: WsFrame) {
        self.ws.send(WsMessage::Frame(frame)).await.unwrap();
    }

    /// The next data or close frame within `within`; `None` on timeout.
    /// Pings and pongs are skipped.
    ///
    /// The end of the connection (a close frame, EOF or an error) is reported
    /// once, as `Close`. After that no frame can come, so a later call waits
    /// out `within` and returns `None`: a loop that does not stop on `Close`
    /// polls at the caller's pace instead of spinning without yielding (which
    /// starves the runtime and can hang its shutdown).
    pub async fn next_within(&mut self, within: Duration) -> Option<Received> {
        let deadline = tokio::time::Instant::now() + within;
        if self.ended {
            tokio::time::sleep_until(deadline).await;
            return None;
        }
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            return Some(match msg {
                None | Some(Err(_)) => {
                    self.ended = true;
                    Received::Close(None)
                }
                Some(Ok(WsMessage::Text(t))) => {
                    Received::Text(serde_json::from_str(t.as_str()).unwrap())
                }
                Some(Ok(WsMessage::Binary(b))) => Received::Binary(b.to_vec()),
                Some(Ok(WsMessage::Close(c))) => {
                    self.ended = true;
                    self.close_frame = c.map(|c| (u16::from(c.code), c.reason.to_string()));
                    Received::Close(self.close_frame.as_ref().map(|c| c.0))
                }
                Some(Ok(_)) => continue,
            });
        }
    }

    /// The next data or close frame, within [`TIMEOUT`].
    pub async fn next(&mut self) -> Received {
        assert!(!self.ended, "no frame can come: the connection has ended");
        self.next_within(TIMEOUT)
            .await
            .expect("timed out waiting for a frame")
    }

    /// The code and reason of the server's close frame, once one came.
    pub fn close_frame(&self) -> Option<(u16, &str)> {
        self.close_frame.as_ref().map(|(c, r)| (*c, r.as_str()))
    }

    /// The next frame, which must be JSON text.
    pub async fn recv(&mut self) -> Value {
        match self.next().await {
            Received::Text(v) => v,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The next frame within `within`, which must be JSON text.
    pub async fn recv_within(&mut self, within: Duration) -> Value {
        match self.next_within(within).await {
            Some(Received::Text(v)) => v,
            Some(other) => panic!("expected a text frame, got {other:?}"),
            None => panic!("no frame within {within:?}"),
        }
    }

    /// Asserts the next frame equals `expected`.
    pub async fn expect(&mut self, expected: Value) {
        let got = self.recv().await;
        assert_eq!(got, expected);
    }

    /// Receives `expected.len()` frames and asserts they are `expected`, in
    /// any order (frames from different tasks may interleave).
    pub async fn expect_unordered(&mut self, expected: Vec<Value>) {
        let mut got = Vec::new();
        for _ in 0..expected.len() {
            got.push(self.recv().await);
        }
        for e in &expected {
            let i = got
                .iter()
                .position(|g| g == e)
                .unwrap_or_else(|| panic!("expected {e} among {got:?}"));
            got.remove(i);
        }
    }

    /// Reads until `want`, asserting that everything before it is an event
    /// named `skip` on `want`'s topic (probes, messages that may or may not
    /// arrive).
    pub async fn recv_skipping(&mut self, want: &Value, skip: &str) {
        loop {
            let f = self.recv().await;
            if &f == want {
                return;
            }
            assert!(
                f[0].is_null() && f[1].is_null() && f[2] == want[2] && f[3] == skip,
                "expected {want} (after {skip:?} events only), got {f}"
            );
        }
    }

    /// Asserts the server closes the connection, returning the close code.
    pub async fn expect_close(&mut self) -> Option<u16> {
        loop {
            if let Received::Close(code) = self.next().await {
                return code;
            }
        }
    }

    /// Joins `topic` with `jr` as join_ref and ref, expecting `ok`.
    pub async fn join(&mut self, topic: &str, jr: &str) -> Value {
        self.join_with(topic, jr, json!({})).await
    }

    /// Joins with join params, expecting `ok`.
    pub async fn join_with(&mut self, topic: &str, jr: &str, params: Value) -> Value {
        self.send(json!([jr, jr, topic, "phx_join", params])).await;
        let reply = self.recv().await;
        assert_eq!(reply[3], "phx_reply", "{reply}");
        assert_eq!(reply[4]["status"], "ok", "{reply}");
        reply
    }

    /// Sends `phx_join` and returns its reply (ok or error), which must be
    /// the next frame, with the join's ref.
    pub async fn try_join(&mut self, topic: &str, jr: &str) -> Value {
        self.send(json!([jr, jr, topic, "phx_join", {}])).await;
        let reply = self.recv().await;
        assert_eq!(reply[3], "phx_reply", "{reply}");
        assert_eq!(reply[1], jr, "{reply}");
        reply
    }

    /// Joins `topic`, retrying (bounded) while it is refused because the
    /// pod's Redis bus is not connected yet, as right after a pod started.
    /// Returns the join_ref that succeeded (`{jr}.{attempt}`).
    pub async fn join_retrying(&mut self, topic: &str, jr: &str) -> String {
        let deadline = Instant::now() + START_TIMEOUT;
        for attempt in 0.. {
            let jr = format!("{jr}.{attempt}");
            let reply = self.try_join(topic, &jr).await;
            assert_eq!(reply[0], jr, "{reply}");
            if reply[4]["status"] == "ok" {
                return jr;
            }
            assert_eq!(
                reply[4],
                json!({"status": "error", "response": {"reason": "subscription failed, try again"}})
            );
            assert!(Instant::now() < deadline, "join {topic}: still refused");
            tokio::time::sleep(crate::wait::POLL).await;
        }
        unreachable!()
    }

    /// Asserts a join is refused with `reason`; the reply echoes the join_ref.
    pub async fn join_refused(&mut self, topic: &str, jr: &str, reason: &str) {
        self.send(json!([jr, jr, topic, "phx_join", {}])).await;
        let refusal = reply(Some(jr), jr, topic, "error", json!({"reason": reason}));
        self.expect(refusal).await;
    }

    /// Leaves `topic` (joined with `jr`) and waits for the ok and `phx_close`,
    /// skipping broadcasts that were already on their way.
    pub async fn leave(&mut self, topic: &str, jr: &str, r: &str) {
        self.send(json!([jr, r, topic, "phx_leave", {}])).await;
        loop {
            let f = self.recv().await;
            if f[2] == topic && f[3] == "phx_close" {
                return;
            }
            assert!(
                f[0].is_null() || (f[1] == r && f[4]["status"] == "ok"),
                "unexpected frame while leaving: {f}"
            );
        }
    }

    /// Leaves every `(topic, join_ref)`; returns once each leave was answered
    /// `ok` and followed by its `phx_close` (channels answer in any order).
    pub async fn leave_all(&mut self, joined: &[(String, String)]) {
        let mut pending = Vec::new();
        for (i, (topic, jr)) in joined.iter().enumerate() {
            let r = format!("leave{i}");
            self.send(json!([jr, r, topic, "phx_leave", {}])).await;
            pending.push(reply(Some(jr), &r, topic, "ok", json!({})));
            pending.push(json!([jr, jr, topic, "phx_close", {}]));
        }
        while !pending.is_empty() {
            let f = self.recv().await;
            let at = pending.iter().position(|p| *p == f);
            let at = at.unwrap_or_else(|| panic!("unexpected {f}; waiting for {pending:?}"));
            pending.swap_remove(at);
        }
    }

    /// Sends a heartbeat and waits for its reply, which must be the next
    /// frame: everything the socket had queued before it was received.
    pub async fn heartbeat(&mut self, r: &str) {
        self.send(json!([null, r, "phoenix", "heartbeat", {}]))
            .await;
        self.expect(reply(None, r, "phoenix", "ok", json!({})))
            .await;
    }

    /// Closes with 1000 (normal).
    pub async fn close(mut self) {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let _ = self.ws.close(Some(frame)).await;
    }
}
