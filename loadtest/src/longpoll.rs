//! One Phoenix V2 JSON client connection over long-poll (`{path}/longpoll`),
//! as phoenix.js' `LongPoll` speaks it: a first GET opens a session (answer
//! `{"status":410,"token":T}`); then GETs with the latest token each wait up
//! to the poll window for messages (`200` with `messages`, or `204`), and
//! frames go up as newline-separated POST bodies, one POST at a time.
//!
//! Polls and POSTs use two keep-alive HTTP/1.1 connections, both from the
//! connection's `--source-ips` address. What the client sends and makes of
//! what it receives is [`conn::Client`], shared with WebSocket.
//!
//! Like `conn`, it must not know the command line or the scenario; besides
//! the transport it owns only the mapping between WebSocket and long-poll
//! URLs.

use crate::conn::{self, Client, Phase, Spec, Target};
use crate::http;
use crate::stats::{record, Stats};
use anyhow::{bail, Context as _};
use serde::Deserialize;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A GET waits up to the poll window (10 s by default), a relayed one up to
/// the window plus the relay timeout (12 s): past this, the request failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of one POST the gateway applies (as Phoenix); more go in the next.
const MAX_LINES: usize = 100;

/// Errors printed so far (the first few only).
static PRINTED: AtomicU64 = AtomicU64::new(0);

fn report(idx: u64, e: &anyhow::Error) {
    if PRINTED.fetch_add(1, Relaxed) < 3 {
        eprintln!("long-poll connection {idx}: {e:#}");
    }
}

/// The JSON body of every long-poll answer.
#[derive(Debug, Deserialize)]
struct Envelope {
    status: u16,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    messages: Vec<String>,
}

/// `ws://host/socket/websocket?q` → `http://host/socket/longpoll?q`; an
/// `http://` URL is taken as it is.
pub(crate) fn longpoll_url(url: &str) -> anyhow::Result<String> {
    if url.starts_with("http://") {
        return Ok(url.to_string());
    }
    let rest = url
        .strip_prefix("ws://")
        .with_context(|| format!("--url {url:?} must start with ws:// or http://"))?;
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    let path = path.trim_end_matches('/');
    let base = path.strip_suffix("/websocket").unwrap_or(path);
    let mut out = format!("http://{base}/longpoll");
    if let Some(q) = query {
        out += "?";
        out += q;
    }
    Ok(out)
}

/// `http://host/socket/longpoll?q` → `ws://host/socket/websocket?q` (for the
/// fan-out push publisher, which always uses WebSocket); `ws://` as it is.
pub(crate) fn websocket_url(url: &str) -> anyhow::Result<String> {
    if url.starts_with("ws://") {
        return Ok(url.to_string());
    }
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("--url {url:?} must start with ws:// or http://"))?;
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    let path = path.trim_end_matches('/');
    let base = path.strip_suffix("/longpoll").unwrap_or(path);
    let mut out = format!("ws://{base}/websocket");
    if let Some(q) = query {
        out += "?";
        out += q;
    }
    Ok(out)
}

/// `path` with `token=T` added to its query (percent-encoding what is not
/// URL-safe; the gateway's tokens are base64url with a dot).
fn with_token(path: &str, token: &str) -> String {
    let mut out = String::with_capacity(path.len() + token.len() + 8);
    out += path;
    out.push(if path.contains('?') { '&' } else { '?' });
    out += "token=";
    for b in token.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out += &format!("%{b:02X}");
        }
    }
    out
}

fn envelope(status: u16, body: &[u8]) -> anyhow::Result<Envelope> {
    if status != 200 {
        bail!("HTTP {status}: {}", String::from_utf8_lossy(body));
    }
    serde_json::from_slice(body).context("bad long-poll answer")
}

/// One request on a connection the future owns and gives back, so that a GET
/// can wait in a `select!` beside a POST.
async fn send(
    mut c: http::Conn,
    method: &'static str,
    path: String,
    body: String,
) -> (http::Conn, anyhow::Result<Envelope>) {
    let headers = if method == "POST" {
        "Content-Type: application/x-ndjson\r\n"
    } else {
        ""
    };
    let r = tokio::time::timeout(
        REQUEST_TIMEOUT,
        c.request(method, &path, headers, body.as_bytes()),
    )
    .await;
    let r = match r {
        Ok(Ok((status, body))) => envelope(status, &body),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(anyhow::anyhow!("{method} timed out")),
    };
    (c, r)
}

/// Waits for `f` if there is one, forever otherwise.
async fn maybe<F: Future + Unpin>(f: &mut Option<F>) -> F::Output {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Opens the two connections and the session: (poll conn, post conn, path, token).
async fn open(
    target: &Target,
    idx: u64,
) -> anyhow::Result<(http::Conn, http::Conn, String, String)> {
    let fut = async {
        let (s1, url) = conn::tcp(target, idx).await?;
        let (host, path) = http::split_url(url)?;
        let (host, path) = (host.to_string(), path.to_string());
        let (s2, _) = conn::tcp(target, idx).await?;
        let mut get = http::Conn::new(s1, &host);
        let (status, body) = get.request("GET", &path, "", b"").await?;
        let e = envelope(status, &body)?;
        let token = match (e.status, e.token) {
            (410, Some(t)) => t,
            (s, _) => bail!("the first GET answered status {s}, not 410 with a token"),
        };
        anyhow::Ok((get, http::Conn::new(s2, &host), path, token))
    };
    tokio::time::timeout(conn::CONNECT_TIMEOUT, fut)
        .await
        .context("connect timed out")?
}

/// Runs one long-poll client until the phase is Stop; counts everything in `stats`.
pub(crate) async fn run(
    target: Arc<Target>,
    stats: Arc<Stats>,
    spec: Spec,
    mut phase: watch::Receiver<Phase>,
) {
    let t0 = Instant::now();
    let (get_conn, post_conn, path, mut token) = match open(&target, spec.idx).await {
        Ok(x) => x,
        Err(e) => return conn::connect_failed(&stats, &e),
    };
    record(&mut stats.connect.lock(), t0.elapsed().as_micros() as u64);
    let mut c = Client::new(stats, &spec);

    // Frames waiting for the next POST; the joins go first.
    let mut outbox: Vec<String> = spec
        .topics
        .iter()
        .enumerate()
        .map(|(i, t)| c.join(i, t))
        .collect();
    let mut polling = Box::pin(send(
        get_conn,
        "GET",
        with_token(&path, &token),
        String::new(),
    ));
    let mut idle_post = Some(post_conn);
    let mut posting = None;

    let mut heartbeat = tokio::time::interval_at(
        tokio::time::Instant::now() + conn::HEARTBEAT,
        conn::HEARTBEAT,
    );
    let push_every = spec.push_every.unwrap_or(Duration::from_secs(3600));
    let mut push = tokio::time::interval(push_every);
    push.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let pushing = spec.push_every.is_some();
    let mut cur = *phase.borrow();
    let mut failed: Option<anyhow::Error> = None;

    while failed.is_none() && cur != Phase::Stop {
        // One POST at a time, carrying everything queued (up to MAX_LINES).
        if !outbox.is_empty() {
            if let Some(pc) = idle_post.take() {
                let n = outbox.len().min(MAX_LINES);
                let body = outbox.drain(..n).collect::<Vec<_>>().join("\n");
                posting = Some(Box::pin(send(pc, "POST", with_token(&path, &token), body)));
            }
        }
        tokio::select! {
            (gc, r) = &mut polling => {
                match r {
                    Ok(Envelope { status: 200 | 204, token: Some(t), messages }) => {
                        for m in &messages {
                            c.handle(m);
                        }
                        // The next GET carries this token: it acknowledges these messages.
                        token = t;
                        polling = Box::pin(send(gc, "GET", with_token(&path, &token), String::new()));
                    }
                    Ok(e) => {
                        let why = if e.status == 410 { "session gone" } else { "unexpected" };
                        failed = Some(anyhow::anyhow!(
                            "poll answered status {} ({why}, token {})",
                            e.status,
                            if e.token.is_some() { "present" } else { "missing" }
                        ));
                    }
                    Err(e) => failed = Some(e.context("poll")),
                }
            }
            (pc, r) = maybe(&mut posting) => {
                posting = None;
                match r {
                    Ok(Envelope { status: 200, .. }) => idle_post = Some(pc),
                    Ok(e) => failed = Some(anyhow::anyhow!("POST answered status {}", e.status)),
                    Err(e) => failed = Some(e.context("POST")),
                }
            }
            _ = heartbeat.tick() => outbox.push(c.heartbeat()),
            _ = push.tick(), if pushing && cur == Phase::Go && c.unsettled == 0 => {
                outbox.push(c.push(&spec.topics[0]));
            }
            ch = phase.changed() => {
                if ch.is_err() { break; }
                cur = *phase.borrow();
            }
        }
    }
    if let Some(e) = &failed {
        report(spec.idx, e);
    }
    // Dropping the connections ends the requests; the gateway ends the
    // session after its session timeout.
    c.finish(cur == Phase::Stop);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_map_between_websocket_and_longpoll() {
        assert_eq!(
            longpoll_url("ws://127.0.0.1:4000/socket/websocket?vsn=2.0.0").unwrap(),
            "http://127.0.0.1:4000/socket/longpoll?vsn=2.0.0"
        );
        assert_eq!(
            longpoll_url("http://h:1/s/longpoll?vsn=2.0.0").unwrap(),
            "http://h:1/s/longpoll?vsn=2.0.0"
        );
        assert_eq!(
            websocket_url("http://h:1/s/longpoll?vsn=2.0.0").unwrap(),
            "ws://h:1/s/websocket?vsn=2.0.0"
        );
        assert_eq!(websocket_url("ws://h/x").unwrap(), "ws://h/x");
        assert!(longpoll_url("wss://h/socket/websocket").is_err());
    }

    #[test]
    fn tokens_go_in_the_query() {
        assert_eq!(
            with_token("/l?vsn=2.0.0", "a.b-_"),
            "/l?vsn=2.0.0&token=a.b-_"
        );
        assert_eq!(with_token("/l", "a+b="), "/l?token=a%2Bb%3D");
    }

    #[test]
    fn answers_parse_and_non_200_is_an_error() {
        let e = envelope(200, br#"{"status":204,"token":"t","messages":[]}"#).unwrap();
        assert_eq!((e.status, e.token.as_deref()), (204, Some("t")));
        let e = envelope(200, br#"{"status":200}"#).unwrap();
        assert!(e.token.is_none() && e.messages.is_empty());
        assert!(envelope(503, b"broker unavailable").is_err());
        assert!(envelope(200, b"not json").is_err());
    }
}
