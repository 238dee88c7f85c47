//! The seam between a joining client's replay and the live messages of its
//! topic.
//!
//! A channel with history subscribes before it reads the topic's history, so
//! nothing published in between is missed; what arrives live meanwhile is
//! held here. Once the join reply and the replay are queued, the seam opens:
//! held messages the replay already covered are dropped, the rest follow in
//! order, and from then on only duplicates of the replay (same epoch, offset
//! at or below the top it read) are filtered.

use super::history::Position;
use crate::conn::{ConnHandle, Disconnect, Kind, Out};
use crate::protocol::Frame;
use parking_lot::Mutex;
use std::sync::Arc;

#[derive(Debug)]
enum State {
    /// Live messages wait for the replay.
    Holding(Vec<(Option<Position>, Frame, Kind)>),
    /// Replay done: messages at or below `floor` in `epoch` were in it.
    Open { epoch: Arc<str>, floor: u64 },
}

/// One subscriber's seam; the hub offers it the topic's messages.
#[derive(Debug)]
pub(crate) struct Seam {
    state: Mutex<State>,
    /// Most messages held before the connection is closed as a slow
    /// consumer: its outbound queue's frame budget.
    max_held: usize,
}

impl Seam {
    /// A closed seam that holds at most `max_held` messages.
    pub(crate) fn new(max_held: usize) -> Arc<Self> {
        Arc::new(Seam {
            state: Mutex::new(State::Holding(Vec::new())),
            max_held,
        })
    }

    /// Holds or queues one live message for `conn`; false if it was not
    /// queued (a duplicate, or the connection is closing).
    pub(crate) fn offer(
        &self,
        conn: &ConnHandle,
        position: Option<&Position>,
        frame: &Frame,
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
                held.push((position.cloned(), frame.clone(), kind));
                true
            }
            State::Open { epoch, floor } => {
                if covered(position, epoch, *floor) {
                    return false;
                }
                conn.enqueue(Out::Data(frame.clone(), kind))
            }
        }
    }

    /// Opens the seam after the replay up to `top` was queued: held messages
    /// beyond it follow, in the order they arrived.
    pub(crate) fn open(&self, conn: &ConnHandle, top: &Position) {
        let mut state = self.state.lock();
        let held = match std::mem::replace(
            &mut *state,
            State::Open {
                epoch: top.epoch.clone(),
                floor: top.offset,
            },
        ) {
            State::Holding(held) => held,
            State::Open { .. } => return,
        };
        // Under the lock, so a message the hub offers now comes after these.
        for (position, frame, kind) in held {
            if !covered(position.as_ref(), &top.epoch, top.offset) {
                conn.enqueue(Out::Data(frame, kind));
            }
        }
    }
}

/// Whether a message at `position` was already replayed up to `floor`.
fn covered(position: Option<&Position>, epoch: &str, floor: u64) -> bool {
    position.is_some_and(|p| &*p.epoch == epoch && p.offset <= floor)
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
        let conn = ConnHandle::new(
            Vsn::V2,
            Budget {
                frames: 16,
                bytes: 1 << 20,
            },
        );
        let seam = Seam::new(8);
        assert!(seam.offer(&conn, Some(&pos("e", 4)), &frame("4"), Kind::Push));
        assert!(seam.offer(&conn, Some(&pos("e", 6)), &frame("6"), Kind::Push));
        assert!(seam.offer(&conn, None, &frame("plain"), Kind::Push));
        assert!(seam.offer(&conn, Some(&pos("f", 1)), &frame("f1"), Kind::Push));
        conn.enqueue(Out::Data(frame("replay5"), Kind::Push));
        seam.open(&conn, &pos("e", 5));
        assert!(!seam.offer(&conn, Some(&pos("e", 5)), &frame("dup"), Kind::Push));
        assert!(seam.offer(&conn, Some(&pos("e", 7)), &frame("7"), Kind::Push));
        assert_eq!(drain(&conn).await, ["replay5", "6", "plain", "f1", "7"]);
    }

    #[tokio::test]
    async fn too_much_held_closes_the_connection() {
        let conn = ConnHandle::new(
            Vsn::V2,
            Budget {
                frames: 16,
                bytes: 1 << 20,
            },
        );
        let seam = Seam::new(2);
        for i in 0..2 {
            assert!(seam.offer(&conn, Some(&pos("e", i)), &frame("x"), Kind::Push));
        }
        assert!(!seam.offer(&conn, Some(&pos("e", 3)), &frame("x"), Kind::Push));
        assert_eq!(conn.reason(), Some(Disconnect::SlowConsumer));
    }
}
