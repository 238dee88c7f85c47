//! The seam between a joining client's replay and the live messages of its
//! topic.
//!
//! A channel with history subscribes before it reads the topic's history, so
//! nothing published in between is missed; what arrives live meanwhile is
//! held here. Once the join reply and the replay are queued, the seam opens:
//! held messages the replay already covered are dropped, the rest follow in
//! order. From then on the seam follows the offsets: a duplicate of the
//! replay is dropped, and a gap (messages lost while the pod's Redis
//! subscriber reconnected) or another epoch ends the channel with an error,
//! so phoenix.js rejoins from the last position its client saw and the
//! join recovers what was missed, or says it cannot.

use super::history::Position;
use crate::conn::{ConnHandle, Disconnect, Kind, Out};
use crate::protocol::Frame;
use parking_lot::Mutex;
use std::fmt;
use std::sync::Arc;

/// Ends the channel whose client missed messages, so that it rejoins from
/// the last position it saw and recovers them (phoenix.js rejoins a
/// channel that errored, with its params function). Called under the hub's
/// lock: it must only queue.
pub(crate) trait Broken: Send + Sync + fmt::Debug {
    /// The live messages skipped some offsets (a Redis reconnect lost
    /// them), or the topic's epoch changed under the channel.
    fn broken(&self);
}

/// A held message: its position, and its frame unless a channel's
/// `handle_out` took it (it still counts for the offsets).
type Held = (Option<Position>, Option<Frame>, Kind);

#[derive(Debug)]
enum State {
    /// Live messages wait for the replay.
    Holding(Vec<Held>),
    /// Replay done; `last` is the last position the client got.
    Open { last: Position },
    /// Messages were missed: the channel is ending.
    Broken,
}

/// What to do with a message at some position, once the seam is open.
enum Next {
    Deliver,
    Duplicate,
    Gap,
}

/// One subscriber's seam; the hub offers it the topic's messages.
#[derive(Debug)]
pub(crate) struct Seam {
    state: Mutex<State>,
    /// Most messages held before the connection is closed as a slow
    /// consumer: its outbound queue's frame budget.
    max_held: usize,
    on_broken: Box<dyn Broken>,
}

impl Seam {
    /// A closed seam that holds at most `max_held` messages.
    pub(crate) fn new(max_held: usize, on_broken: Box<dyn Broken>) -> Arc<Self> {
        Arc::new(Seam {
            state: Mutex::new(State::Holding(Vec::new())),
            max_held,
            on_broken,
        })
    }

    /// Holds or queues one live message for `conn` (`frame` is `None` for
    /// one a channel's `handle_out` takes). Returns whether the message
    /// goes on: false for a duplicate of the replay, a message past a gap
    /// (the channel is then told, once), or a closing connection.
    pub(crate) fn offer(
        &self,
        conn: &ConnHandle,
        position: Option<&Position>,
        frame: Option<&Frame>,
        kind: Kind,
    ) -> bool {
        let mut state = self.state.lock();
        match &mut *state {
            State::Holding(held) => {
                if held.len() >= self.max_held {
                    drop(state);
                    conn.close(Disconnect::SlowConsumer);
                    return false;
                }
                held.push((position.cloned(), frame.cloned(), kind));
                true
            }
            State::Open { last } => match next(last, position) {
                Next::Duplicate => false,
                Next::Gap => {
                    *state = State::Broken;
                    self.on_broken.broken();
                    false
                }
                Next::Deliver => {
                    if let Some(p) = position {
                        *last = p.clone();
                    }
                    frame.is_none_or(|f| conn.enqueue(Out::Data(f.clone(), kind)))
                }
            },
            State::Broken => false,
        }
    }

    /// Opens the seam after the replay up to `top` was queued: held messages
    /// beyond it follow, in the order they arrived.
    pub(crate) fn open(&self, conn: &ConnHandle, top: &Position) {
        let mut state = self.state.lock();
        let State::Holding(held) = std::mem::replace(&mut *state, State::Broken) else {
            return;
        };
        let mut last = top.clone();
        // Under the lock, so a message the hub offers now comes after these.
        for (position, frame, kind) in held {
            match next(&last, position.as_ref()) {
                Next::Duplicate => {}
                Next::Gap => {
                    self.on_broken.broken();
                    return;
                }
                Next::Deliver => {
                    if let Some(p) = position {
                        last = p;
                    }
                    if let Some(f) = frame {
                        conn.enqueue(Out::Data(f, kind));
                    }
                }
            }
        }
        *state = State::Open { last };
    }
}

/// Where a message at `position` stands after `last`: messages without one
/// (a plain `PUBLISH`) always go on.
fn next(last: &Position, position: Option<&Position>) -> Next {
    let Some(p) = position else {
        return Next::Deliver;
    };
    if p.epoch != last.epoch {
        // Continuity is lost: what the client holds may be gone.
        return Next::Gap;
    }
    match p.offset {
        o if o <= last.offset => Next::Duplicate,
        o if o == last.offset + 1 => Next::Deliver,
        _ => Next::Gap,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::Budget;
    use crate::protocol::Vsn;
    use bytes::Bytes;

    fn pos(e: &str, o: u64) -> Position {
        Position {
            epoch: Arc::from(e),
            offset: o,
        }
    }

    #[derive(Debug, Default, Clone)]
    struct Count(Arc<std::sync::atomic::AtomicUsize>);

    impl Count {
        fn count(&self) -> usize {
            self.0.load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    impl Broken for Count {
        fn broken(&self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn new_seam(max: usize) -> (Arc<Seam>, Count) {
        let count = Count::default();
        (Seam::new(max, Box::new(count.clone())), count)
    }

    fn conn() -> ConnHandle {
        ConnHandle::new(
            Vsn::V2,
            Budget {
                frames: 16,
                bytes: 1 << 20,
            },
        )
    }

    fn frame(s: &'static str) -> Frame {
        Frame::Text(Bytes::from_static(s.as_bytes()))
    }

    async fn drain(conn: &ConnHandle) -> Vec<String> {
        let mut batch = Vec::new();
        conn.next_batch(&mut batch).await;
        batch
            .iter()
            .map(|o| match o {
                Out::Data(f, _) => String::from_utf8_lossy(f.bytes()).into_owned(),
                Out::Pong(_) => String::new(),
            })
            .collect()
    }

    #[tokio::test]
    async fn holds_until_open_then_drops_what_the_replay_covered() {
        let conn = conn();
        let (seam, broken) = new_seam(8);
        let f = |s| Some(frame(s));
        assert!(seam.offer(&conn, Some(&pos("e", 4)), f("4").as_ref(), Kind::Push));
        assert!(seam.offer(&conn, Some(&pos("e", 6)), f("6").as_ref(), Kind::Push));
        assert!(seam.offer(&conn, None, f("plain").as_ref(), Kind::Push));
        // Taken by handle_out: counts, is not queued.
        assert!(seam.offer(&conn, Some(&pos("e", 7)), None, Kind::Push));
        conn.enqueue(Out::Data(frame("replay5"), Kind::Push));
        seam.open(&conn, &pos("e", 5));
        assert!(!seam.offer(&conn, Some(&pos("e", 5)), f("dup").as_ref(), Kind::Push));
        assert!(seam.offer(&conn, Some(&pos("e", 8)), f("8").as_ref(), Kind::Push));
        assert_eq!(drain(&conn).await, ["replay5", "6", "plain", "8"]);
        assert_eq!(broken.count(), 0);
    }

    #[tokio::test]
    async fn a_gap_or_another_epoch_breaks_the_channel_once() {
        let conn = conn();
        let (seam, broken) = new_seam(8);
        seam.open(&conn, &pos("e", 5));
        assert!(seam.offer(&conn, Some(&pos("e", 6)), Some(&frame("6")), Kind::Push));
        assert!(!seam.offer(&conn, Some(&pos("e", 9)), Some(&frame("9")), Kind::Push));
        assert!(!seam.offer(&conn, Some(&pos("e", 10)), Some(&frame("10")), Kind::Push));
        assert_eq!(broken.count(), 1);
        assert_eq!(drain(&conn).await, ["6"]);

        let (seam, broken) = new_seam(8);
        seam.open(&conn, &pos("e", 5));
        assert!(!seam.offer(&conn, Some(&pos("f", 1)), Some(&frame("f1")), Kind::Push));
        assert_eq!(broken.count(), 1);

        // A gap among the held messages breaks it at the opening.
        let (seam, broken) = new_seam(8);
        assert!(seam.offer(&conn, Some(&pos("e", 8)), Some(&frame("8")), Kind::Push));
        seam.open(&conn, &pos("e", 5));
        assert_eq!(broken.count(), 1);
        assert!(!seam.offer(&conn, Some(&pos("e", 9)), Some(&frame("9")), Kind::Push));
    }

    #[tokio::test]
    async fn too_much_held_closes_the_connection() {
        let conn = conn();
        let (seam, _) = new_seam(2);
        for i in 0..2 {
            assert!(seam.offer(&conn, Some(&pos("e", i)), Some(&frame("x")), Kind::Push));
        }
        assert!(!seam.offer(&conn, Some(&pos("e", 3)), Some(&frame("x")), Kind::Push));
        assert_eq!(conn.reason(), Some(Disconnect::SlowConsumer));
    }
}
