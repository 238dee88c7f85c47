//! `LpClient`, the long-poll client: one socket's session over raw HTTP/1.1
//! requests to `{path}/longpoll`, holding its session token as phoenix.js
//! does, so tests see exactly the status and JSON the gateway answers.

use crate::http::Request;
use crate::wait::TIMEOUT;
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// A long-poll client of one socket. `addr` can change between requests
/// (another pod behind a balancer).
#[derive(Debug, Clone)]
pub struct LpClient {
    pub addr: SocketAddr,
    /// The query before the session token, e.g. `vsn=2.0.0`.
    pub query: String,
    pub token: Option<String>,
    /// Longest a GET may take (the server's poll window plus slack).
    pub within: Duration,
    /// The local address requests come from (another loopback address is
    /// another client to per-source limits); `None`: the system's choice.
    pub from: Option<IpAddr>,
}

impl LpClient {
    pub fn new(addr: SocketAddr, query: &str) -> LpClient {
        LpClient {
            addr,
            query: query.to_owned(),
            token: None,
            within: TIMEOUT + Duration::from_secs(12),
            from: None,
        }
    }

    /// `/socket/longpoll?{query}` with the token, if any.
    pub fn target(&self) -> String {
        match &self.token {
            Some(t) => format!("/socket/longpoll?{}&token={t}", self.query),
            None => format!("/socket/longpoll?{}", self.query),
        }
    }

    /// A GET with the current token; stores the token it returns (when a
    /// string), as phoenix.js does. Returns the JSON body.
    pub async fn get(&mut self) -> Value {
        let r = self.send(Request::get(&self.target())).await;
        assert_eq!(r.status, 200, "{r:?}");
        let v = r.json();
        if let Some(t) = v["token"].as_str() {
            self.token = Some(t.to_owned());
        }
        v
    }

    async fn send(&self, r: Request) -> crate::http::Response {
        match self.from {
            Some(from) => r.send_from(self.addr, from, self.within).await,
            None => r.send_within(self.addr, self.within).await,
        }
    }

    /// Opens a session: the first GET must answer 410 with a token.
    pub async fn open(&mut self) {
        let v = self.get().await;
        assert_eq!(v["status"], 410, "{v}");
        assert!(v["token"].is_string(), "{v}");
        assert_eq!(v["messages"], serde_json::json!([]));
    }

    /// POSTs frames as phoenix.js does (ndjson); returns the JSON status.
    pub async fn post(&self, frames: &[Value]) -> u64 {
        let body = frames
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        self.post_raw(body.as_bytes()).await
    }

    /// POSTs a raw ndjson body; returns the JSON status.
    pub async fn post_raw(&self, body: &[u8]) -> u64 {
        let r = Request::post(&self.target())
            .header("Content-Type", "application/x-ndjson")
            .body(body);
        let r = self.send(r).await;
        assert_eq!(r.status, 200, "{r:?}");
        r.json()["status"].as_u64().unwrap()
    }

    /// GETs until `n` messages arrived (204s are polled again); returns them
    /// decoded.
    pub async fn messages(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::new();
        while out.len() < n {
            let v = self.get().await;
            match v["status"].as_u64() {
                Some(200) => out.extend(decode(&v)),
                Some(204) => {}
                _ => panic!("expected messages, got {v}"),
            }
        }
        assert_eq!(out.len(), n, "more messages than expected: {out:?}");
        out
    }

    /// Sends `frames` and expects exactly `replies` back.
    pub async fn call(&mut self, frames: &[Value], replies: &[Value]) {
        assert_eq!(self.post(frames).await, 200);
        assert_eq!(self.messages(replies.len()).await, replies);
    }
}

/// The frames of a poll answer: each message is a JSON string holding one.
pub fn decode(answer: &Value) -> Vec<Value> {
    answer["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| serde_json::from_str(m.as_str().unwrap()).unwrap())
        .collect()
}
