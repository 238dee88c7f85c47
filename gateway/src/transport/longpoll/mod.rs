//! The long-poll transport at `{path}/longpoll`, without sticky sessions.
//!
//! A session lives on the pod that created it (its owner) and runs the same
//! [`Connection`] state machine as a WebSocket. Its token, signed with the
//! shared long-poll secret, names the owner and the session, so a GET or
//! POST may land on any pod: a pod that does not own the session relays the
//! request to the owner through the broker ([`Broker::send_to`], a Redis
//! channel per pod) and answers with the owner's reply. An owner that is
//! gone (nobody receives the relayed request) means the session is gone:
//! the client gets the 410 it expects and starts over.
//!
//! # Layout
//! - `http`: requests and the Phoenix JSON envelope, CORS.
//! - `session`: a session on its owner (buffer, acknowledged delivery, POSTs).
//! - `relay`: the messages between pods.
//! - `token`: the signed session token.
//! - `ticket`: what a session holds against the pod's and its source's limits.
//!
//! [`Broker::send_to`]: crate::pubsub::Broker::send_to

pub(crate) mod http;
pub(super) mod relay;
pub(super) mod session;
mod ticket;
pub(crate) mod token;

use super::admission::Admitted;
use super::drain::Drain;
use super::source::SourcePermit;
use crate::channel::Services;
use crate::conn::ConnHandle;
use crate::protocol::Transport;
use crate::pubsub::{Broker, BrokerError, NodeInbox};
use crate::socket::connection::Connection;
use crate::socket::{LongPollConfig, Socket};
use bytes::Bytes;
use parking_lot::Mutex;
use relay::Message;
use session::{Poll, Session};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use ticket::Ticket;
use token::{SessionToken, Signer};
use tokio::sync::{mpsc, oneshot};

/// At most one warning about badly sealed relay messages per this interval.
const BAD_SEAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// POSTs queued for one session; the client sends one at a time.
const POST_QUEUE: usize = 8;

/// What a GET is answered with.
#[derive(Debug)]
pub(crate) enum Answer {
    /// 200 with messages, or 204 without; the token to return.
    Poll { token: String, messages: Vec<Bytes> },
    /// 410: the session is gone.
    Gone,
    /// The owner could not be asked (Redis down): a bare 503.
    Unavailable,
}

/// The long-poll sessions this pod owns and the requests it relays.
pub(crate) struct LongPoll {
    /// This pod's id in tokens: random per process start, so a restarted
    /// pod never claims its predecessor's sessions.
    node: String,
    signer: Signer,
    /// How long an owner may take to pick up a relayed request.
    relay_timeout: Duration,
    services: Arc<Services>,
    drain: Drain,
    sessions: Mutex<HashMap<u128, Arc<Session>>>,
    /// Relayed requests waiting for the owner's reply, by request id.
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    next_id: AtomicU64,
    /// To hand out `Arc`s of itself to tasks it spawns from the inbox.
    this: Weak<LongPoll>,
    /// Set once the broker delivers this pod's relay inbox: sessions are
    /// only opened after that, so other pods can always reach them.
    listening: tokio::sync::OnceCell<()>,
    /// When a bad relay message was last logged.
    last_bad_seal: Mutex<Option<std::time::Instant>>,
    /// Owners probed lately: when, and whether anyone received the probe.
    /// At most one probe per owner per relay timeout, however many GETs
    /// wait on it.
    probes: Mutex<HashMap<String, (std::time::Instant, bool)>>,
}

impl std::fmt::Debug for LongPoll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LongPoll")
            .field("node", &self.node)
            .field("sessions", &self.sessions.lock().len())
            .finish_non_exhaustive()
    }
}

/// An owner's reply to a relayed request.
#[derive(Debug)]
struct Reply {
    status: u16,
    ack: u64,
    messages: Vec<String>,
}

impl LongPoll {
    /// The long-poll state of an endpoint.
    pub(crate) fn new(
        secret: &[u8],
        relay_timeout: Duration,
        services: Arc<Services>,
        drain: Drain,
    ) -> Arc<Self> {
        let node = format!("{:016x}", u64::from_le_bytes(token::random_bytes::<8>()));
        Arc::new_cyclic(|this| LongPoll {
            node,
            signer: Signer::new(secret),
            relay_timeout,
            services,
            drain,
            sessions: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            this: this.clone(),
            listening: tokio::sync::OnceCell::new(),
            last_bad_seal: Mutex::new(None),
            probes: Mutex::new(HashMap::new()),
        })
    }

    /// Makes sure other pods can relay requests here.
    async fn listen(&self) -> Result<(), BrokerError> {
        self.listening
            .get_or_try_init(|| async {
                let inbox: Arc<dyn NodeInbox> = Arc::new(Inbox(self.this.clone()));
                self.broker().listen(&self.node, inbox).await
            })
            .await
            .map(|_| ())
    }

    /// This pod's id in tokens.
    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    /// The broker that carries relayed requests between pods.
    fn broker(&self) -> &Arc<dyn Broker> {
        self.services.pubsub.broker()
    }

    fn sign(&self, session: u128, ack: u64) -> String {
        self.signer.sign(&SessionToken {
            node: self.node.clone(),
            session,
            ack,
        })
    }

    /// What a session token says, if it is genuine.
    pub(crate) fn verify(&self, token: &str) -> Option<SessionToken> {
        self.signer.verify(token)
    }

    /// Opens a session for an accepted client; returns its first token.
    ///
    /// # Errors
    /// When the relay inbox or the socket id cannot be subscribed (the
    /// broker is down).
    pub(crate) async fn create(
        &self,
        socket: Arc<Socket>,
        config: &LongPollConfig,
        admitted: Admitted,
        ticket: impl FnOnce(SourcePermit) -> Ticket,
    ) -> Result<String, BrokerError> {
        let Admitted {
            vsn,
            assigns,
            source,
            permit,
        } = admitted;
        self.listen().await?;
        let conn = ConnHandle::new(vsn, socket.config.longpoll_budget(config));
        let max_frame = socket.config.max_frame_size;
        let connection = Connection::open(
            Transport::LongPoll,
            conn.clone(),
            socket,
            self.services.clone(),
            assigns,
            source,
        )
        .await?;
        let id = token::random_u128();
        let (tx, rx) = mpsc::channel(POST_QUEUE);
        let session = Arc::new(Session::new(conn, config.clone(), tx, ticket(permit)));
        self.sessions.lock().insert(id, session.clone());
        let drain = self.drain.clone();
        let this = self.this.clone();
        self.drain.clone().spawn(async move {
            session::run(session, connection, rx, max_frame, drain).await;
            if let Some(lp) = this.upgrade() {
                lp.sessions.lock().remove(&id);
            }
        });
        Ok(self.sign(id, 0))
    }

    fn local(&self, id: u128) -> Option<Arc<Session>> {
        self.sessions.lock().get(&id).cloned()
    }

    /// Serves a GET for the session `t` names, here or on its owner.
    ///
    /// # Cancel safety
    /// Cancel-safe: messages the answer would have carried stay buffered on
    /// the owner until a later GET confirms them.
    pub(crate) async fn get(&self, t: &SessionToken, window: Duration) -> Answer {
        if t.node == self.node {
            let Some(s) = self.local(t.session) else {
                return Answer::Gone;
            };
            return match s.poll(t.ack).await {
                Poll::Messages { ack, messages } => Answer::Poll {
                    token: self.sign(t.session, ack),
                    messages,
                },
                Poll::Empty { ack } => Answer::Poll {
                    token: self.sign(t.session, ack),
                    messages: Vec::new(),
                },
                Poll::Gone => Answer::Gone,
            };
        }
        let same = || Answer::Poll {
            token: self.signer.sign(t),
            messages: Vec::new(),
        };
        let ask = |id, from| Message::Get {
            id,
            from,
            session: format!("{:032x}", t.session),
            ack: t.ack,
        };
        match self.relay(&t.node, ask, window + self.relay_timeout).await {
            Relayed::Reply(r) if r.status == 410 => Answer::Gone,
            Relayed::Reply(r) => Answer::Poll {
                token: self.signer.sign(&SessionToken {
                    node: t.node.clone(),
                    session: t.session,
                    ack: r.ack,
                }),
                messages: r.messages.into_iter().map(Bytes::from).collect(),
            },
            Relayed::Gone => Answer::Gone,
            // The owner may still hold the messages; the client polls again
            // with the token it has, so nothing is lost.
            Relayed::TimedOut => same(),
            Relayed::Unavailable => Answer::Unavailable,
        }
    }

    /// Serves a POST for the session `t` names; the JSON status.
    ///
    /// # Cancel safety
    /// Once handed to the owner, the lines are applied even if this future is
    /// dropped; the client, lacking an answer, starts a new session.
    pub(crate) async fn post(&self, t: &SessionToken, lines: Vec<String>, window: Duration) -> u16 {
        if t.node == self.node {
            return match self.local(t.session) {
                Some(s) => s.post(lines).await,
                None => 410,
            };
        }
        let ask = |id, from| Message::Post {
            id,
            from,
            session: format!("{:032x}", t.session),
            lines,
        };
        match self.relay(&t.node, ask, window + self.relay_timeout).await {
            Relayed::Reply(r) => r.status,
            Relayed::Gone => 410,
            Relayed::TimedOut => 408,
            Relayed::Unavailable => 503,
        }
    }

    /// Sends a request to `owner` and waits up to `wait` for its reply.
    async fn relay(
        &self,
        owner: &str,
        ask: impl FnOnce(u64, String) -> Message,
        wait: Duration,
    ) -> Relayed {
        // The owner answers to this pod's inbox.
        if let Err(e) = self.listen().await {
            tracing::warn!(error = %e, "cannot relay a long-poll request: no inbox");
            return Relayed::Unavailable;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(id, tx);
        let _forget = Forget(self, id);
        let body = relay::seal(&self.signer, &ask(id, self.node.clone()));
        match self.broker().send_to(owner, body).await {
            Ok(true) => {}
            Ok(false) => return Relayed::Gone,
            Err(e) => {
                tracing::warn!(error = %e, owner, "cannot relay a long-poll request");
                return Relayed::Unavailable;
            }
        }
        // A GET may wait a whole poll window on a healthy owner; check every
        // relay timeout that the owner is still there, so a dead owner's
        // client hears 410 in seconds rather than after the window.
        let deadline = tokio::time::Instant::now() + wait;
        tokio::pin!(rx);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Relayed::TimedOut;
            }
            match tokio::time::timeout(left.min(self.relay_timeout), &mut rx).await {
                Ok(Ok(reply)) => return Relayed::Reply(reply),
                Ok(Err(_)) => return Relayed::TimedOut,
                Err(_) => {
                    if !self.owner_alive(owner).await {
                        return Relayed::Gone;
                    }
                }
            }
        }
    }

    /// Whether a pod still listens for relayed requests: a probe nobody
    /// received means it is gone. Broker errors count as alive (a Redis
    /// outage is not the owner's death).
    async fn owner_alive(&self, owner: &str) -> bool {
        let fresh = |at: &std::time::Instant| at.elapsed() < self.relay_timeout;
        if let Some((_, alive)) = self.probes.lock().get(owner).filter(|(at, _)| fresh(at)) {
            return *alive;
        }
        let probe = relay::seal(&self.signer, &Message::Probe);
        let alive = !matches!(self.broker().send_to(owner, probe).await, Ok(false));
        let mut probes = self.probes.lock();
        probes.retain(|_, (at, _)| fresh(at));
        probes.insert(owner.to_owned(), (std::time::Instant::now(), alive));
        alive
    }

    /// Serves a request another pod relayed here and sends the reply back.
    async fn serve(&self, msg: Message) {
        let (id, from, reply) = match msg {
            Message::Get {
                id,
                from,
                session,
                ack,
            } => {
                let poll = match self.session_named(&session) {
                    Some(s) => s.poll(ack).await,
                    None => Poll::Gone,
                };
                let reply = match poll {
                    Poll::Messages { ack, messages } => Message::Reply {
                        id,
                        status: 200,
                        ack,
                        messages: messages
                            .iter()
                            .filter_map(|m| std::str::from_utf8(m).ok().map(str::to_owned))
                            .collect(),
                    },
                    Poll::Empty { ack } => Message::Reply {
                        id,
                        status: 204,
                        ack,
                        messages: Vec::new(),
                    },
                    Poll::Gone => gone(id),
                };
                (id, from, reply)
            }
            Message::Post {
                id,
                from,
                session,
                lines,
            } => {
                let status = match self.session_named(&session) {
                    Some(s) => s.post(lines).await,
                    None => 410,
                };
                let reply = Message::Reply {
                    id,
                    status,
                    ack: 0,
                    messages: Vec::new(),
                };
                (id, from, reply)
            }
            Message::Reply { .. } | Message::Probe => return,
        };
        let body = relay::seal(&self.signer, &reply);
        match self.broker().send_to(&from, body).await {
            Ok(true) => {}
            // Unconfirmed messages stay buffered; the client's next GET
            // gets them again.
            Ok(false) => tracing::debug!(request = id, from, "relaying pod is gone"),
            Err(e) => tracing::warn!(error = %e, request = id, "cannot answer a relayed request"),
        }
    }

    fn session_named(&self, hex: &str) -> Option<Arc<Session>> {
        u128::from_str_radix(hex, 16)
            .ok()
            .and_then(|id| self.local(id))
    }

    fn received(&self, body: Bytes) {
        let Some(msg) = relay::open(&self.signer, &body) else {
            // At most one line per interval: anyone who can publish to Redis
            // can send these.
            let now = std::time::Instant::now();
            let mut last = self.last_bad_seal.lock();
            if last.is_none_or(|t| now.duration_since(t) >= BAD_SEAL_LOG_EVERY) {
                *last = Some(now);
                tracing::warn!(
                    "dropping relay messages with a bad seal: is longpoll.secret the same on every pod?"
                );
            }
            return;
        };
        match msg {
            Message::Reply {
                id,
                status,
                ack,
                messages,
            } => {
                if let Some(tx) = self.pending.lock().remove(&id) {
                    let _ = tx.send(Reply {
                        status,
                        ack,
                        messages,
                    });
                }
            }
            Message::Probe => {}
            request => {
                if let Some(lp) = self.this.upgrade() {
                    tokio::spawn(async move { lp.serve(request).await });
                }
            }
        }
    }
}

fn gone(id: u64) -> Message {
    Message::Reply {
        id,
        status: 410,
        ack: 0,
        messages: Vec::new(),
    }
}

enum Relayed {
    Reply(Reply),
    Gone,
    TimedOut,
    Unavailable,
}

/// Removes a pending request however its wait ends.
struct Forget<'a>(&'a LongPoll, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.pending.lock().remove(&self.1);
    }
}

/// The broker's handle on this pod's long-poll state.
struct Inbox(Weak<LongPoll>);

impl NodeInbox for Inbox {
    fn deliver(&self, body: Bytes) {
        if let Some(lp) = self.0.upgrade() {
            lp.received(body);
        }
    }
}
