//! A bare long-poll client: raw HTTP/1.1 requests to `{path}/longpoll`, so
//! tests see exactly the status, headers and JSON body the gateway answers.

use super::TIMEOUT;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An HTTP answer: status, headers (names lowercased) and body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?} (HTTP {})", self.body, self.status))
    }
}

/// One request with `Connection: close`, bounded by `within`.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    within: Duration,
) -> HttpResponse {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut head =
            format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        parse(&raw)
    };
    tokio::time::timeout(within, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {target} to {addr}: no answer within {within:?}"))
}

fn parse(raw: &[u8]) -> HttpResponse {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect::<Vec<_>>();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A long-poll client of one socket, holding its session token as
/// phoenix.js does. `addr` can change between requests (another pod).
pub struct LpClient {
    pub addr: SocketAddr,
    /// The query before the session token, e.g. `vsn=2.0.0`.
    pub query: String,
    pub token: Option<String>,
    /// Longest a GET may take (the server's poll window plus slack).
    pub within: Duration,
}

impl LpClient {
    pub fn new(addr: SocketAddr, query: &str) -> LpClient {
        LpClient {
            addr,
            query: query.to_owned(),
            token: None,
            within: TIMEOUT + Duration::from_secs(12),
        }
    }

    pub fn target(&self) -> String {
        match &self.token {
            Some(t) => format!("/socket/longpoll?{}&token={t}", self.query),
            None => format!("/socket/longpoll?{}", self.query),
        }
    }

    /// A GET with the current token; stores the token it returns (when a
    /// string), as phoenix.js does. Returns the JSON body.
    pub async fn get(&mut self) -> Value {
        let r = request(self.addr, "GET", &self.target(), &[], b"", self.within).await;
        assert_eq!(r.status, 200, "{r:?}");
        let v = r.json();
        if let Some(t) = v["token"].as_str() {
            self.token = Some(t.to_owned());
        }
        v
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
        let r = request(
            self.addr,
            "POST",
            &self.target(),
            &[("Content-Type", "application/x-ndjson")],
            body,
            self.within,
        )
        .await;
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
                Some(200) => {
                    for m in v["messages"].as_array().unwrap() {
                        out.push(serde_json::from_str(m.as_str().unwrap()).unwrap());
                    }
                }
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
