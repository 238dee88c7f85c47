//! `raw-writer`: the raw delivery ceiling for `make bench` (part of the
//! benchmarks, not the product).
//!
//! Speaks just enough of the gateway's surface for `loadtest fanout --via api`
//! to drive it unchanged:
//!
//! - `GET /socket/websocket?vsn=2.0.0` (any path under `/socket`): a WebSocket
//!   upgrade done by hand. Every client text frame `[jr,ref,topic,event,_]` is
//!   answered with `[jr,ref,topic,"phx_reply",{"status":"ok","response":{}}]`;
//!   a `phx_join` also subscribes the socket to the topic. Nothing is checked.
//! - `POST /api/broadcast` with `{"topic":..,"event":..,"payload":..}`: the
//!   frame `[null,null,topic,event,payload]` is encoded once (WebSocket header
//!   included) and the same bytes are queued to every socket joined to the
//!   topic; answers `200 {}`. No auth, no protocol work.
//! - `GET /healthz`: `200`.
//!
//! Each socket has one writer task that drains everything queued for it and
//! writes it with a single `writev`, so frames that pile up for a connection
//! cost one syscall. What loadtest measures against this is this machine's
//! practical limit for delivery; `make bench` reports the gateway as a ratio
//! to it.

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::Parser;
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::io::IoSlice;
use std::sync::Arc;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

#[derive(Debug, Parser)]
#[command(
    name = "raw-writer",
    about = "Raw-socket fan-out ceiling for loadtest (WebSocket + POST /api/broadcast)"
)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:4000")]
    listen: String,
    /// Runtime worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

/// Frames queued to one socket; an empty `Bytes` asks the writer to stop.
type Tx = UnboundedSender<Bytes>;

/// Subscribers per topic. Closed sockets are dropped lazily, on the next
/// publish to the topic.
#[derive(Debug, Default)]
struct Topics(Mutex<HashMap<String, Vec<Tx>>>);

impl Topics {
    fn join(&self, topic: String, tx: Tx) {
        self.0.lock().entry(topic).or_default().push(tx);
    }

    /// Queues `frame` to every subscriber of `topic`; returns how many.
    fn publish(&self, topic: &str, frame: &Bytes) -> usize {
        let mut map = self.0.lock();
        let Some(subs) = map.get_mut(topic) else {
            return 0;
        };
        subs.retain(|tx| tx.send(frame.clone()).is_ok());
        subs.len()
    }
}

/// A server (unmasked) WebSocket frame header for a final frame of `len` bytes.
fn ws_header(out: &mut Vec<u8>, opcode: u8, len: usize) {
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if len <= u16::MAX as usize {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

fn ws_frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(payload.len() + 10);
    ws_header(&mut out, opcode, payload.len());
    out.extend_from_slice(payload);
    out.into()
}

/// The broadcast frame, encoded once: `[null,null,topic,event,payload]`.
fn broadcast_frame(topic: &str, event: &str, payload: &str) -> anyhow::Result<Bytes> {
    let text = format!(
        "[null,null,{},{},{payload}]",
        serde_json::to_string(topic)?,
        serde_json::to_string(event)?
    );
    Ok(ws_frame(0x1, text.as_bytes()))
}

#[derive(Deserialize)]
struct Broadcast<'a> {
    #[serde(borrow)]
    topic: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    event: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    payload: &'a RawValue,
}

/// A client V2 frame `[join_ref, ref, topic, event, payload]`.
#[derive(Deserialize)]
struct ClientFrame<'a>(
    #[serde(borrow)] &'a RawValue,
    #[serde(borrow)] &'a RawValue,
    #[serde(borrow)] &'a RawValue,
    #[serde(borrow)] std::borrow::Cow<'a, str>,
    serde::de::IgnoredAny,
);

/// One parsed HTTP request head.
struct Head {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one request head from `stream`, keeping what follows it in `buf`.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<Option<Head>> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = std::str::from_utf8(&buf[..end]).context("non-UTF-8 request head")?;
            let mut lines = text.split("\r\n");
            let mut first = lines.next().unwrap_or("").split_whitespace();
            let method = first.next().unwrap_or("").to_string();
            let path = first.next().unwrap_or("").to_string();
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect();
            buf.drain(..end + 4);
            return Ok(Some(Head {
                method,
                path,
                headers,
            }));
        }
        if buf.len() > 64 * 1024 {
            bail!("request head too large");
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn respond(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let r = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(r.as_bytes()).await
}

async fn serve(mut stream: TcpStream, topics: Arc<Topics>) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(4096);
    while let Some(head) = read_head(&mut stream, &mut buf).await? {
        let path = head.path.split('?').next().unwrap_or("");
        match (head.method.as_str(), path) {
            ("GET", p) if p.starts_with("/socket") => {
                let key = head
                    .header("sec-websocket-key")
                    .context("no Sec-WebSocket-Key")?;
                let accept =
                    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
                let r = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                );
                stream.write_all(r.as_bytes()).await?;
                return websocket(stream, buf, topics).await;
            }
            ("POST", "/api/broadcast") => {
                let len: usize = head
                    .header("content-length")
                    .and_then(|v| v.parse().ok())
                    .context("no Content-Length")?;
                while buf.len() < len {
                    let mut chunk = vec![0u8; (len - buf.len()).max(4096)];
                    let n = stream.read(&mut chunk).await?;
                    if n == 0 {
                        bail!("connection closed in a request body");
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body: Vec<u8> = buf.drain(..len).collect();
                let parsed = serde_json::from_slice::<Broadcast>(&body)
                    .map_err(anyhow::Error::from)
                    .and_then(|b| {
                        let event = b.event.as_deref().unwrap_or("new_msg");
                        Ok((
                            broadcast_frame(&b.topic, event, b.payload.get())?,
                            b.topic.into_owned(),
                        ))
                    });
                match parsed {
                    Ok((frame, topic)) => {
                        topics.publish(&topic, &frame);
                        respond(&mut stream, "200 OK", "{}").await?;
                    }
                    Err(e) => {
                        let msg = serde_json::to_string(&format!("{e}"))?;
                        respond(
                            &mut stream,
                            "400 Bad Request",
                            &format!("{{\"error\":{msg}}}"),
                        )
                        .await?;
                    }
                }
            }
            ("GET", "/healthz") => respond(&mut stream, "200 OK", "{\"status\":\"ok\"}").await?,
            _ => respond(&mut stream, "404 Not Found", "{}").await?,
        }
    }
    Ok(())
}

/// Runs one WebSocket connection: a reader here, a writer task draining the queue.
async fn websocket(stream: TcpStream, buf: Vec<u8>, topics: Arc<Topics>) -> anyhow::Result<()> {
    let (rd, wr) = stream.into_split();
    let (tx, rx) = unbounded_channel();
    let writer = tokio::spawn(write_loop(wr, rx));
    let res = read_loop(rd, buf, &tx, &topics).await;
    let _ = tx.send(Bytes::new());
    drop(tx);
    let _ = writer.await;
    res
}

async fn read_loop(
    mut rd: OwnedReadHalf,
    mut buf: Vec<u8>,
    tx: &Tx,
    topics: &Topics,
) -> anyhow::Result<()> {
    loop {
        // Parse every complete frame in `buf`.
        let mut at = 0;
        loop {
            let b = &buf[at..];
            if b.len() < 2 {
                break;
            }
            let opcode = b[0] & 0x0f;
            let masked = b[1] & 0x80 != 0;
            let (len, mut hl) = match b[1] & 0x7f {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into()?) as usize, 10),
                126 | 127 => break,
                n => (n as usize, 2),
            };
            if masked {
                hl += 4;
            }
            if b.len() < hl + len {
                break;
            }
            let mut payload = b[hl..hl + len].to_vec();
            if masked {
                let mask = &b[hl - 4..hl];
                for (i, x) in payload.iter_mut().enumerate() {
                    *x ^= mask[i & 3];
                }
            }
            at += hl + len;
            match opcode {
                0x1 => on_text(&payload, tx, topics),
                0x8 => {
                    let _ = tx.send(ws_frame(0x8, &payload[..payload.len().min(2)]));
                    return Ok(());
                }
                0x9 => {
                    let _ = tx.send(ws_frame(0xA, &payload));
                }
                _ => {}
            }
        }
        buf.drain(..at);
        let mut chunk = [0u8; 4096];
        let n = rd.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Answers every client message with an ok reply; joins subscribe.
fn on_text(text: &[u8], tx: &Tx, topics: &Topics) {
    let Ok(ClientFrame(jr, r, topic, event, _)) = serde_json::from_slice::<ClientFrame>(text)
    else {
        return;
    };
    let reply = format!(
        r#"[{},{},{},"phx_reply",{{"status":"ok","response":{{}}}}]"#,
        jr.get(),
        r.get(),
        topic.get()
    );
    if event == "phx_join" {
        if let Ok(name) = serde_json::from_str::<String>(topic.get()) {
            // Reply first, so the join reply precedes any broadcast.
            let _ = tx.send(ws_frame(0x1, reply.as_bytes()));
            topics.join(name, tx.clone());
            return;
        }
    }
    let _ = tx.send(ws_frame(0x1, reply.as_bytes()));
}

/// Drains the queue and writes everything queued in one `writev`.
async fn write_loop(mut wr: OwnedWriteHalf, mut rx: UnboundedReceiver<Bytes>) {
    const MAX_BATCH: usize = 512;
    let mut batch: Vec<Bytes> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(b) => batch.push(b),
                Err(_) => break,
            }
        }
        let stop = batch.iter().position(Bytes::is_empty);
        if let Some(i) = stop {
            batch.truncate(i);
        }
        if write_all_vectored(&mut wr, &batch).await.is_err() || stop.is_some() {
            break;
        }
        batch.clear();
    }
    let _ = wr.shutdown().await;
}

async fn write_all_vectored(wr: &mut OwnedWriteHalf, bufs: &[Bytes]) -> std::io::Result<()> {
    let (mut idx, mut off) = (0usize, 0usize);
    while idx < bufs.len() {
        let slices: Vec<IoSlice<'_>> = std::iter::once(IoSlice::new(&bufs[idx][off..]))
            .chain(bufs[idx + 1..].iter().map(|b| IoSlice::new(b)))
            .collect();
        let mut n = wr.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let rem = bufs[idx].len() - off;
            if n >= rem {
                n -= rem;
                idx += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&cli.listen)
        .await
        .with_context(|| format!("listen on {}", cli.listen))?;
    eprintln!("raw-writer listening on {}", listener.local_addr()?);
    let topics = Arc::new(Topics::default());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // e.g. out of file descriptors: back off instead of spinning
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let topics = topics.clone();
        tokio::spawn(async move {
            let _ = serve(stream, topics).await;
        });
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cli.threads {
        rt.worker_threads(n.max(1));
    }
    rt.enable_all().build()?.block_on(run(cli))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_frames_are_v2_text_frames() {
        let f = broadcast_frame("room:1", "new_msg", r#"{"seq":1,"ts":2,"s":0}"#).unwrap();
        let text = br#"[null,null,"room:1","new_msg",{"seq":1,"ts":2,"s":0}]"#;
        assert_eq!(f[0], 0x81);
        assert_eq!(f[1] as usize, text.len());
        assert_eq!(&f[2..], text);
        let big = ws_frame(0x1, &[b'x'; 300]);
        assert_eq!((big[1], u16::from_be_bytes([big[2], big[3]])), (126, 300));
    }
}
