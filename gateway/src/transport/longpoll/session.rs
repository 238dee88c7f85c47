//! A long-poll session on the pod that owns it: the same [`Connection`]
//! state machine a WebSocket runs, fed by POSTed lines, and an outbound
//! buffer that GETs drain.
//!
//! Delivery is acknowledged: a GET answers with every message the client has
//! not confirmed yet, and the token it returns counts them. The client's next
//! GET echoes that token, and only then are those messages dropped. A
//! response lost on its way (a relaying pod or proxy gave up on it) is
//! therefore sent again, and none is sent twice to a client that got it.

use super::ticket::Ticket;
use crate::conn::{ConnHandle, Disconnect, Out};
use crate::metrics::metrics;
use crate::protocol::{Frame, Message, Transport, Vsn};
use crate::socket::connection::Connection;
use crate::socket::LongPollConfig;
use crate::transport::drain::Drain;
use crate::transport::{decode, Data};
use base64::Engine;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Lines of one POST, in order, waiting for the session to apply them.
#[derive(Debug)]
pub(crate) struct Post {
    pub(crate) lines: Vec<String>,
    pub(crate) done: oneshot::Sender<u16>,
}

/// What a GET gets.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Poll {
    /// Messages the client has not confirmed; `ack` counts them in.
    Messages { ack: u64, messages: Vec<Bytes> },
    /// Nothing within the window, or a newer GET took over.
    Empty { ack: u64 },
    /// The session has ended.
    Gone,
}

/// Sent but not yet confirmed messages.
#[derive(Debug, Default)]
struct Delivery {
    /// How many messages the client has confirmed.
    acked: u64,
    /// The next ones, sent at least once, kept until confirmed.
    unacked: VecDeque<Bytes>,
}

impl Delivery {
    fn confirm(&mut self, ack: u64) {
        if ack > self.acked {
            let n = usize::try_from(ack - self.acked)
                .unwrap_or(usize::MAX)
                .min(self.unacked.len());
            self.unacked.drain(..n);
            self.acked += n as u64;
        }
    }

    fn sent(&self) -> u64 {
        self.acked + self.unacked.len() as u64
    }
}

#[derive(Debug)]
struct Activity {
    /// GETs being served now.
    polling: usize,
    /// When the last GET started or ended.
    last: Instant,
}

/// One long-poll client's state on its owner pod.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) conn: ConnHandle,
    config: LongPollConfig,
    posts: mpsc::Sender<Post>,
    delivery: tokio::sync::Mutex<Delivery>,
    /// The GET being served; a newer GET cancels it (it answers 204), as
    /// Phoenix hands new data to the newest poll.
    poller: Mutex<CancellationToken>,
    activity: Mutex<Activity>,
    /// Its place in the pod's and its source's limits.
    ticket: Ticket,
}

struct Polling<'a>(&'a Session);

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        let mut a = self.0.activity.lock();
        a.polling -= 1;
        a.last = Instant::now();
    }
}

impl Session {
    /// A session whose buffer is `conn` and whose POSTs go to `posts`.
    pub(crate) fn new(
        conn: ConnHandle,
        config: LongPollConfig,
        posts: mpsc::Sender<Post>,
        ticket: Ticket,
    ) -> Self {
        Session {
            conn,
            config,
            posts,
            delivery: tokio::sync::Mutex::new(Delivery::default()),
            poller: Mutex::new(CancellationToken::new()),
            activity: Mutex::new(Activity {
                polling: 0,
                last: Instant::now(),
            }),
            ticket,
        }
    }

    /// Serves a GET from a client that has received `ack` messages.
    ///
    /// # Cancel safety
    /// Cancel-safe: messages taken from the buffer are kept until confirmed.
    pub(crate) async fn poll(&self, ack: u64) -> Poll {
        self.ticket.polled();
        let me = CancellationToken::new();
        std::mem::replace(&mut *self.poller.lock(), me.clone()).cancel();
        let _polling = {
            let mut a = self.activity.lock();
            a.polling += 1;
            a.last = Instant::now();
            Polling(self)
        };
        let mut d = tokio::select! {
            d = self.delivery.lock() => d,
            _ = me.cancelled() => return Poll::Empty { ack },
        };
        d.confirm(ack);
        if d.unacked.is_empty() {
            // Only now, with every message confirmed: taking a batch
            // releases the bytes of the previous one from the budget.
            let mut batch = Vec::new();
            tokio::select! {
                biased;
                open = self.conn.next_batch(&mut batch) => if !open { return Poll::Gone },
                _ = me.cancelled() => return Poll::Empty { ack: d.acked },
                _ = tokio::time::sleep(self.config.window) => return Poll::Empty { ack: d.acked },
            }
            metrics().sent(Transport::LongPoll, batch.iter().filter_map(Out::sent));
            for out in batch {
                match out {
                    Out::Data(Frame::Text(text), _) => d.unacked.push_back(text),
                    Out::Data(Frame::Binary(_), _) => tracing::warn!(
                        conn = self.conn.id(),
                        "dropping a binary frame: long-poll carries text frames only"
                    ),
                    Out::Pong(_) => {}
                }
            }
            if d.unacked.is_empty() {
                return Poll::Empty { ack: d.acked };
            }
        }
        Poll::Messages {
            ack: d.sent(),
            messages: d.unacked.iter().cloned().collect(),
        }
    }

    /// Applies POSTed lines in order; the JSON status to answer: 200 once
    /// all were applied, 410 if the session ended, 408 if it did not get to
    /// them within the poll window.
    ///
    /// # Cancel safety
    /// Lines already queued are applied even if this future is dropped.
    pub(crate) async fn post(&self, lines: Vec<String>) -> u16 {
        let (done, rx) = oneshot::channel();
        let apply = async {
            self.posts.send(Post { lines, done }).await.ok()?;
            rx.await.ok()
        };
        match tokio::time::timeout(self.config.window, apply).await {
            Ok(Some(status)) => status,
            Ok(None) => 410,
            Err(_) => 408,
        }
    }

    /// When the session expires unless a GET starts; `None` while one runs.
    /// A session that never polled expires sooner: it is not a user yet.
    fn expires(&self) -> Option<Instant> {
        let timeout = if self.ticket.has_polled() {
            self.config.session_timeout
        } else {
            self.config.unpolled_timeout
        };
        let a = self.activity.lock();
        (a.polling == 0).then_some(a.last + timeout)
    }
}

/// Runs a session until it ends: applies POSTs, expires it when polls stop,
/// ends it at its turn in a drain. Returns once the connection is closed.
pub(crate) async fn run(
    session: Arc<Session>,
    mut connection: Connection,
    mut posts: mpsc::Receiver<Post>,
    max_frame_size: usize,
    drain: Drain,
) {
    let conn = session.conn.clone();
    loop {
        let expires = session.expires();
        tokio::select! {
            biased;
            _ = conn.closed() => break,
            _ = drain.turn() => {
                conn.close(Disconnect::ServerShutdown);
                break;
            }
            post = posts.recv() => {
                let Some(post) = post else { break };
                let status = match apply(&mut connection, &post.lines, max_frame_size) {
                    Ok(()) => 200,
                    Err(reason) => {
                        conn.close(reason);
                        410
                    }
                };
                let _ = post.done.send(status);
            }
            _ = sleep_until(expires) => {
                if session.expires().is_some_and(|at| at <= Instant::now()) {
                    conn.close(Disconnect::IdleTimeout);
                    break;
                }
            }
        }
    }
    // Dropping `connection` logs "connection closed" and counts it.
}

/// Hands each line to the connection. Empty lines are skipped.
fn apply(connection: &mut Connection, lines: &[String], max: usize) -> Result<(), Disconnect> {
    for line in lines {
        let (vsn, id) = (connection.conn().vsn(), connection.conn().id());
        if let Some(msg) = line_message(vsn, id, line, max)? {
            connection.handle(msg);
        }
    }
    Ok(())
}

/// One POSTed line as a message: a JSON text frame, or the base64 of a
/// binary one; `None` for an empty line.
pub(crate) fn line_message(
    vsn: Vsn,
    id: u64,
    line: &str,
    max: usize,
) -> Result<Option<Message>, Disconnect> {
    let line = line.trim_end_matches('\r');
    if line.is_empty() {
        return Ok(None);
    }
    if line.len() > max {
        return Err(Disconnect::FrameTooLarge);
    }
    let msg = if line.starts_with(['[', '{']) {
        decode(
            vsn,
            id,
            Data::Text(&Bytes::copy_from_slice(line.as_bytes())),
        )?
    } else {
        let data = base64::engine::general_purpose::STANDARD
            .decode(line)
            .map_err(|_| Disconnect::Malformed)?;
        decode(vsn, id, Data::Binary(&Bytes::from(data)))?
    };
    Ok(Some(msg))
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::Budget;
    use crate::protocol::{Payload, Vsn};
    use std::time::Duration;

    fn session(window_ms: u64) -> (Arc<Session>, mpsc::Receiver<Post>) {
        let (tx, rx) = mpsc::channel(4);
        let config = LongPollConfig {
            window: Duration::from_millis(window_ms),
            ..Default::default()
        };
        let budget = Budget {
            frames: 8,
            bytes: 1 << 20,
        };
        let conn = ConnHandle::new(Vsn::V2, budget);
        (
            Arc::new(Session::new(conn, config, tx, Ticket::detached())),
            rx,
        )
    }

    fn push(s: &Session, topic: &str) {
        s.conn.push(topic, None, "e", &Payload::empty());
    }

    #[tokio::test(start_paused = true)]
    async fn unconfirmed_messages_are_sent_again_until_acked() {
        let (s, _rx) = session(10_000);
        push(&s, "a");
        push(&s, "b");
        let Poll::Messages { ack, messages } = s.poll(0).await else {
            panic!("expected messages")
        };
        assert_eq!((ack, messages.len()), (2, 2));
        // The response was lost: the client polls again with its old token.
        push(&s, "c");
        let Poll::Messages { ack, messages } = s.poll(0).await else {
            panic!("expected messages")
        };
        assert_eq!((ack, messages.len()), (2, 2), "the same two again");
        // Confirmed: only the new one.
        let Poll::Messages { ack, messages } = s.poll(2).await else {
            panic!("expected messages")
        };
        assert_eq!((ack, messages.len()), (3, 1));
        assert!(std::str::from_utf8(&messages[0]).unwrap().contains("\"c\""));
        assert_eq!(s.poll(3).await, Poll::Empty { ack: 3 });
    }

    #[tokio::test(start_paused = true)]
    async fn a_newer_poll_ends_the_older_one() {
        let (s, _rx) = session(10_000);
        let s2 = s.clone();
        let old = tokio::spawn(async move { s2.poll(0).await });
        tokio::task::yield_now().await;
        let s3 = s.clone();
        let new = tokio::spawn(async move { s3.poll(0).await });
        assert_eq!(old.await.unwrap(), Poll::Empty { ack: 0 });
        push(&s, "x");
        assert!(matches!(new.await.unwrap(), Poll::Messages { ack: 1, .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn overflow_ends_the_session() {
        let (s, _rx) = session(10_000);
        for _ in 0..9 {
            push(&s, "t");
        }
        assert_eq!(s.conn.reason(), Some(Disconnect::SlowConsumer));
        assert_eq!(s.poll(0).await, Poll::Gone);
    }

    #[tokio::test(start_paused = true)]
    async fn unconfirmed_bytes_count_until_acked() {
        let (s, _rx) = session(10_000);
        let big = Payload::json(&serde_json::json!({ "data": "x".repeat(400 << 10) }));
        s.conn.push("a", None, "e", &big);
        s.conn.push("a", None, "e", &big);
        let Poll::Messages { ack, .. } = s.poll(0).await else {
            panic!("expected messages")
        };
        // Sent, not confirmed: still held, so a third overflows 1 MiB.
        s.conn.push("a", None, "e", &big);
        assert_eq!(s.conn.reason(), Some(Disconnect::SlowConsumer));
        assert_eq!(ack, 2);
    }
}
