//! The fan-out publisher: Redis PUBLISH, the HTTP API, or client pushes, on
//! a thread of its own.
//!
//! It publishes and counts what it published; it must not receive for the
//! subscribers nor work out what they should have received (`cli` does).

use crate::conn::{self, payload, Frame, Reply, Target};
use crate::http;
use crate::stats::Stats;
use anyhow::{bail, Context as _};
use futures_util::{SinkExt as _, StreamExt as _};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

/// How the fan-out publisher publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Via {
    Redis,
    /// `FCALL gateway_publish 1 {prefix}{topic} <envelope>`: stored in the
    /// topic's history and published with a position, as backends do.
    Fcall,
    Api,
    Push,
}

#[derive(Debug)]
pub(crate) struct PublishSpec {
    pub(crate) via: Via,
    pub(crate) topics: Vec<String>,
    pub(crate) rate: f64,
    pub(crate) duration: Duration,
    pub(crate) pad: usize,
    pub(crate) redis_url: String,
    pub(crate) prefix: String,
    pub(crate) api_url: String,
    pub(crate) api_key: String,
}

/// POST /api/broadcast over one keep-alive connection.
struct Api {
    path: String,
    headers: String,
    conn: http::Conn,
}

impl Api {
    async fn connect(url: &str, key: &str) -> anyhow::Result<Api> {
        let (host, path) = http::split_url(url).context("--api-url")?;
        let path = if path == "/" { "/api/broadcast" } else { path };
        let stream = TcpStream::connect(host)
            .await
            .context("connect to the API")?;
        stream.set_nodelay(true)?;
        Ok(Api {
            path: path.to_string(),
            headers: format!("Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"),
            conn: http::Conn::new(stream, host),
        })
    }

    async fn post(&mut self, body: &str) -> anyhow::Result<u16> {
        let (status, _) = self
            .conn
            .request("POST", &self.path, &self.headers, body.as_bytes())
            .await?;
        Ok(status)
    }
}

enum Sink {
    Redis(redis::aio::MultiplexedConnection),
    Api(Box<Api>),
    Push(Box<conn::Ws>),
}

/// Publishes at `rate` msgs/s round-robin over the topics for `duration`;
/// returns how many messages were published to each topic.
pub(crate) async fn run(
    spec: &PublishSpec,
    target: &Target,
    stats: &Stats,
) -> anyhow::Result<Vec<u64>> {
    let live = &stats.live;
    let mut sink = match spec.via {
        Via::Redis | Via::Fcall => {
            let client = redis::Client::open(spec.redis_url.as_str())?;
            Sink::Redis(client.get_multiplexed_async_connection().await?)
        }
        Via::Api => Sink::Api(Box::new(Api::connect(&spec.api_url, &spec.api_key).await?)),
        Via::Push => {
            let mut ws = conn::connect(target, u64::MAX / 2).await?;
            for (i, t) in spec.topics.iter().enumerate() {
                let r = i + 1;
                ws.send(Message::text(format!(
                    r#"["{r}","{r}","{t}","phx_join",{{}}]"#
                )))
                .await?;
            }
            let mut joined = 0;
            while joined < spec.topics.len() {
                let Some(m) = ws.next().await else {
                    bail!("publisher connection closed while joining")
                };
                if let Message::Text(t) = m? {
                    if let Ok(Frame(_, _, _, "phx_reply", p)) = serde_json::from_str(t.as_str()) {
                        let r: Reply = serde_json::from_str(p.get())?;
                        if r.status != "ok" {
                            bail!("publisher could not join: {}", p.get());
                        }
                        joined += 1;
                    }
                }
            }
            Sink::Push(Box::new(ws))
        }
    };
    let pad = "x".repeat(spec.pad);
    let nt = spec.topics.len();
    let mut seqs = vec![0u64; nt];
    let start = Instant::now();
    let mut sent = 0u64;
    let mut next_ref = 1000u64;
    while start.elapsed() < spec.duration {
        let due = (start.elapsed().as_secs_f64() * spec.rate) as u64;
        while sent < due {
            let t = (sent % nt as u64) as usize;
            let topic = &spec.topics[t];
            let p = payload(seqs[t], t as u32, &pad);
            let res: anyhow::Result<()> = match &mut sink {
                Sink::Redis(c) if spec.via == Via::Fcall => {
                    let ch = format!("{}{}", spec.prefix, topic);
                    let msg = format!(r#"{{"event":"new_msg","payload":{p}}}"#);
                    fcall_publish(c, &ch, &msg).await.map(|_| ())
                }
                Sink::Redis(c) => {
                    let ch = format!("{}{}", spec.prefix, topic);
                    let msg = format!(r#"{{"event":"new_msg","payload":{p}}}"#);
                    redis::cmd("PUBLISH")
                        .arg(ch)
                        .arg(msg)
                        .query_async::<u64>(c)
                        .await
                        .map(|n| {
                            live.redis_receivers.fetch_add(n, Relaxed);
                        })
                        .map_err(Into::into)
                }
                Sink::Api(a) => {
                    let body = format!(r#"{{"topic":"{topic}","event":"new_msg","payload":{p}}}"#);
                    match a.post(&body).await {
                        Ok(200) => Ok(()),
                        Ok(s) => Err(anyhow::anyhow!("API answered {s}")),
                        Err(e) => Err(e),
                    }
                }
                Sink::Push(ws) => {
                    next_ref += 1;
                    let f = format!(r#"["{}","{next_ref}","{topic}","new_msg",{p}]"#, t + 1);
                    // Drain what arrived (replies, our own copies) without waiting.
                    while let Some(Some(m)) = futures_util::FutureExt::now_or_never(ws.next()) {
                        if let Ok(Message::Text(txt)) = m {
                            if let Ok(Frame(_, Some(_), _, "phx_reply", p)) =
                                serde_json::from_str(txt.as_str())
                            {
                                match serde_json::from_str::<Reply>(p.get()) {
                                    Ok(r) if r.status == "ok" => {
                                        live.pushes_ok.fetch_add(1, Relaxed)
                                    }
                                    _ => live.push_errors.fetch_add(1, Relaxed),
                                };
                            }
                        }
                    }
                    ws.send(Message::text(f)).await.map_err(Into::into)
                }
            };
            sent += 1;
            match res {
                Ok(()) => {
                    seqs[t] += 1;
                    live.published.fetch_add(1, Relaxed);
                }
                Err(e) => {
                    if live.publish_errors.fetch_add(1, Relaxed) < 3 {
                        eprintln!("publish error: {e:#}");
                    }
                    // keep sequence numbers contiguous: nothing was published
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    if let Sink::Push(mut ws) = sink {
        // Keep reading briefly so the gateway does not see a slow consumer, then close.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
        let _ = conn::Ws::close(&mut ws, None).await;
    }
    Ok(seqs)
}

/// `FCALL gateway_publish 1 <channel> <envelope>`: the position the
/// message got (the function answers `[position, 1]`, or `[position, 0]` for
/// a repeated idempotency key).
pub(crate) async fn fcall_publish(
    c: &mut redis::aio::MultiplexedConnection,
    channel: &str,
    envelope: &str,
) -> anyhow::Result<String> {
    let (pos, _): (String, i64) = redis::cmd("FCALL")
        .arg("gateway_publish")
        .arg(1)
        .arg(channel)
        .arg(envelope)
        .query_async(c)
        .await
        .context("FCALL gateway_publish (do the gateway's pods run on this Redis?)")?;
    Ok(pos)
}

/// Runs [`run`] on a thread and runtime of its own, so that a busy receiving
/// side (the parent's runtime, or an in-process worker) does not delay its
/// sends and skew the latencies; the answer arrives on the returned channel.
pub(crate) fn spawn_thread(
    spec: PublishSpec,
    target: Target,
    stats: Arc<Stats>,
) -> std::io::Result<oneshot::Receiver<anyhow::Result<Vec<u64>>>> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("publisher".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from);
            let r = rt.and_then(|rt| rt.block_on(run(&spec, &target, &stats)));
            let _ = tx.send(r);
        })?;
    Ok(rx)
}
